//! A bad agent.toml stops the agent at start with exit 2 and an error naming the file, line and
//! column, and the fix. The agent never starts without TLS.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

fn dir(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("agent-config").join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn pki(d: &Path) {
    baton_pki::init_ca(&d.join("pki"), "t").unwrap();
    baton_pki::issue(&d.join("pki"), "n1", baton_pki::Role::Agent, &[]).unwrap();
}

const GOOD: &str = r#"node = "n1"
listen = "127.0.0.1:1"
state_dir = "state"

[tls]
ca = "pki/ca.pem"
cert = "pki/n1.pem"
key = "pki/n1.key"

[[action]]
name = "upgrade"
argv = ["/usr/local/bin/upgrade", "{version}"]
"#;

fn agent(d: &Path, text: &str) -> (i32, String) {
    std::fs::write(d.join("agent.toml"), text).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["agent", "--config", "agent.toml"])
        .current_dir(d)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!err.contains("panicked"), "{err}");
    (o.status.code().unwrap_or(-1), err)
}

fn expect(d: &Path, text: &str, place: &str, words: &[&str]) {
    let (code, err) = agent(d, text);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains(place), "expected {place} in {err}");
    for w in words {
        assert!(err.contains(w), "expected `{w}` in {err}");
    }
}

#[test]
fn unknown_key() {
    let d = dir("unknown");
    pki(&d);
    expect(&d, &GOOD.replace("state_dir", "stat_dir"), "agent.toml:3:1", &["unknown field `stat_dir`"]);
}

#[test]
fn action_without_argv() {
    let d = dir("no-argv");
    pki(&d);
    expect(
        &d,
        &GOOD.replace("argv = [\"/usr/local/bin/upgrade\", \"{version}\"]\n", ""),
        "agent.toml:11:8",
        &["action upgrade has no argv", "argv ="],
    );
}

#[test]
fn unknown_placeholder() {
    let d = dir("placeholder");
    pki(&d);
    expect(
        &d,
        &GOOD.replace("{version}", "{shell}"),
        "agent.toml:12:35",
        &["placeholder {shell} is unknown", "{version}"],
    );
    // rpm's `%{VERSION}` is its own; `%{version}` reads as a slip for baton's `{version}`.
    expect(
        &d,
        &GOOD.replace("{version}", "%{version}"),
        "agent.toml:12:35",
        &["`%{version}` is kept as is; baton fills `{version}`", "%{VERSION}"],
    );
}

#[test]
fn missing_ca_or_key() {
    let d = dir("missing");
    pki(&d);
    std::fs::remove_file(d.join("pki/ca.pem")).unwrap();
    expect(&d, GOOD, "agent.toml:6:6", &["pki/ca.pem does not exist", "baton ca init"]);
    let d = dir("missing-key");
    pki(&d);
    expect(&d, &GOOD.replace("pki/n1.key", "pki/n2.key"), "agent.toml:8:7", &["n2.key does not exist"]);
}

#[test]
fn key_readable_by_others() {
    let d = dir("perm");
    pki(&d);
    std::fs::set_permissions(d.join("pki/n1.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    expect(&d, GOOD, "agent.toml:8:7", &["readable by others", "chmod 600"]);
}

#[test]
fn missing_config_file() {
    let d = dir("nofile");
    let o = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["agent", "--config", "nope.toml"])
        .current_dir(&d)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot read nope.toml"));
}

#[test]
fn the_sample_config_in_dist_loads() {
    let d = dir("sample");
    pki(&d);
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../dist/agent.toml")).unwrap();
    let text = text
        .replace("/etc/baton/pki/ca.pem", "pki/ca.pem")
        .replace("/etc/baton/pki/web-01.pem", "pki/n1.pem")
        .replace("/etc/baton/pki/web-01.key", "pki/n1.key");
    let cfg = baton_agent::config::load(&d.join("agent.toml").display().to_string(), &text)
        .expect("dist/agent.toml is valid");
    assert_eq!(cfg.actions.len(), 3);
    assert_eq!(cfg.action("upgrade").unwrap().argv.last().unwrap(), "myapp={version}");
    assert_eq!(cfg.checks.len(), 4);
    assert_eq!(cfg.prechecks.len(), 1);
    assert_eq!(cfg.services, ["myapp"]);
}

/// Issue 12: a precheck of an unknown kind, or whose `min_free` is not a size, stops the agent
/// at start with the place and the fix.
#[test]
fn bad_prechecks() {
    let d = dir("precheck");
    pki(&d);
    let disk = |min_free: &str| {
        format!("{GOOD}[[precheck]]\nname = \"var\"\nkind = \"disk\"\npath = \"/var\"\nmin_free = \"{min_free}\"\n")
    };
    expect(&d, &disk("ten gigs"), "agent.toml:17:12", &["precheck var: `ten gigs` is not a size", "10GB"]);
    expect(&d, &disk("10GX"), "agent.toml:17:12", &["unknown unit `GX`"]);
    let unknown = format!("{GOOD}[[precheck]]\nname = \"var\"\nkind = \"smart\"\n");
    expect(&d, &unknown, "agent.toml:15:8", &["unknown variant `smart`"]);
    let partial = format!("{GOOD}[[precheck]]\nname = \"var\"\nkind = \"disk\"\npath = \"/var\"\n");
    expect(&d, &partial, "agent.toml:15:8", &["precheck var needs exactly path = \"/var\" and min_free"]);
}

/// Issue 12: the journal check's keys belong to it alone; its ignore patterns are not empty.
#[test]
fn bad_journal_checks() {
    let d = dir("journal");
    pki(&d);
    let misplaced = format!(
        "{GOOD}[[check]]\nname = \"h\"\nkind = \"tcp\"\naddress = \"127.0.0.1:1\"\nmax_entries = 3\n"
    );
    expect(&d, &misplaced, "agent.toml:17:1", &["`max_entries` is a key of kind \"journal\" only"]);
    let empty = format!("{GOOD}[[check]]\nname = \"j\"\nkind = \"journal\"\nignore = [\"ok\", \"\"]\n");
    expect(&d, &empty, "agent.toml:16:17", &["an empty ignore pattern would ignore every entry"]);
}
