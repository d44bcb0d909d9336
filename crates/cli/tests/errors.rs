//! Every bad input gets exit 2 (infeasible rules: 3) and an error naming the file, line and
//! column, with what to do; none panics. These run the real `baton` binary.

use std::path::PathBuf;
use std::process::Command;

const FLEET: &str = r#"name = "t"
versions = ["1.0", "1.1", "1.2"]
functional_level = "1.0"

[[node]]
name = "n01"
version = "1.0"

[[node]]
name = "n02"
version = "1.0"

[[node]]
name = "n03"
version = "1.0"

[[service]]
name = "web"
nodes = ["n01", "n02", "n03"]
max_unavailable = 1
"#;

const CAMPAIGN: &str = r#"name = "to-1.1"
target_version = "1.1"
max_parallel = 2
reboot_timeout = "30m"
"#;

struct Out {
    code: i32,
    stderr: String,
}

fn dir(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("errors").join(name);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs `baton plan` on the given files (names decide the format) in a fresh directory.
fn plan(case: &str, fleet_name: &str, fleet: &str, campaign: &str) -> Out {
    let d = dir(case);
    std::fs::write(d.join(fleet_name), fleet).unwrap();
    std::fs::write(d.join("campaign.toml"), campaign).unwrap();
    run(&d, &["plan", "--fleet", fleet_name, "--campaign", "campaign.toml"])
}

fn run(d: &PathBuf, args: &[&str]) -> Out {
    let o = Command::new(env!("CARGO_BIN_EXE_baton")).args(args).current_dir(d).output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!stderr.contains("panicked"), "baton panicked: {stderr}");
    Out { code: o.status.code().expect("exited"), stderr }
}

fn expect(o: &Out, code: i32, place: &str, words: &[&str]) {
    assert_eq!(o.code, code, "exit code; stderr:\n{}", o.stderr);
    assert!(o.stderr.contains(place), "expected {place} in:\n{}", o.stderr);
    for w in words {
        assert!(o.stderr.contains(w), "expected `{w}` in:\n{}", o.stderr);
    }
}

#[test]
fn the_good_files_plan() {
    let o = plan("good", "fleet.toml", FLEET, CAMPAIGN);
    assert_eq!(o.code, 0, "{}", o.stderr);
}

#[test]
fn unknown_key() {
    let f = FLEET.replace("name = \"n02\"\n", "name = \"n02\"\nrakc = \"r1\"\n");
    let o = plan("unknown-key", "fleet.toml", &f, CAMPAIGN);
    expect(&o, 2, "fleet.toml:11:1", &["unknown field `rakc`", "help"]);
}

#[test]
fn unknown_key_in_campaign() {
    let c = format!("{CAMPAIGN}max_paralel = 3\n");
    let o = plan("unknown-key-campaign", "fleet.toml", FLEET, &c);
    expect(&o, 2, "campaign.toml:5:1", &["unknown field `max_paralel`"]);
}

#[test]
fn haproxy_backend_of_a_service() {
    let lb = "\n[service.haproxy]\nsocket = \"/run/haproxy/admin.sock\"\nbackend = \"web\"\ndrain_timeout = \"30s\"\n";
    let o = plan("haproxy-good", "fleet.toml", &format!("{FLEET}{lb}"), CAMPAIGN);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let bad = format!("{FLEET}{}", lb.replace("drain_timeout = \"30s\"", "drain_timeout = \"soon\""));
    let o = plan("haproxy-bad-duration", "fleet.toml", &bad, CAMPAIGN);
    expect(&o, 2, "fleet.toml:25:17", &["`soon` is not a duration"]);
    let typo = format!("{FLEET}{}", lb.replace("backend", "bakend"));
    let o = plan("haproxy-typo", "fleet.toml", &typo, CAMPAIGN);
    expect(&o, 2, "fleet.toml:24:1", &["unknown field `bakend`"]);
}

#[test]
fn duplicate_node_name() {
    let f = FLEET.replace("name = \"n03\"", "name = \"n01\"");
    let o = plan("dup-node", "fleet.toml", &f, CAMPAIGN);
    expect(&o, 2, "fleet.toml:14:8", &["node name n01 is used twice", "unique"]);
}

#[test]
fn member_that_is_not_a_node() {
    let f = FLEET.replace("[\"n01\", \"n02\", \"n03\"]", "[\"n01\", \"n02\", \"n04\"]");
    let o = plan("bad-member", "fleet.toml", &f, CAMPAIGN);
    expect(&o, 2, "fleet.toml:19:24", &["web lists n04, which is not a node"]);
}

#[test]
fn workload_on_a_node_that_does_not_exist() {
    let f = format!("{FLEET}\n[[workload]]\nname = \"vm1\"\nnode = \"n09\"\ndemand = 4\n");
    let o = plan("bad-workload", "fleet.toml", &f, CAMPAIGN);
    expect(&o, 2, "fleet.toml:24:8", &["workload vm1 is on n09, which is not a node"]);
}

#[test]
fn percentage_outside_range() {
    let f = FLEET.replace("max_unavailable = 1", "max_unavailable = \"120%\"");
    let o = plan("bad-percent", "fleet.toml", &f, CAMPAIGN);
    expect(&o, 2, "fleet.toml:20:19", &["outside 0%..100%"]);
    let c = CAMPAIGN.replace("max_parallel = 2", "max_parallel = \"-5%\"");
    let o = plan("bad-percent-campaign", "fleet.toml", FLEET, &c);
    expect(&o, 2, "campaign.toml:3:16", &["outside 0%..100%"]);
}

#[test]
fn bad_duration() {
    let c = CAMPAIGN.replace("\"30m\"", "\"30 minutes\"");
    let o = plan("bad-duration", "fleet.toml", FLEET, &c);
    expect(&o, 2, "campaign.toml:4:18", &["needs a unit after 30", "90s, 5m, 1h30m"]);
}

#[test]
fn version_not_in_chain() {
    let f = FLEET.replacen("version = \"1.0\"", "version = \"2.0\"", 1);
    let o = plan("bad-version", "fleet.toml", &f, CAMPAIGN);
    expect(&o, 2, "fleet.toml:7:11", &["n01 is at version 2.0, which is not in the version chain"]);
    let c = CAMPAIGN.replace("\"1.1\"", "\"1.9\"");
    let o = plan("target-not-in-chain", "fleet.toml", FLEET, &c);
    expect(&o, 2, "campaign.toml:2:18", &["1.9 is not in fleet t's version chain"]);
}

#[test]
fn target_that_skips_a_version() {
    let c = CAMPAIGN.replace("\"1.1\"", "\"1.2\"");
    let o = plan("skip-version", "fleet.toml", FLEET, &c);
    expect(&o, 2, "campaign.toml:2:18", &["1.0 → 1.1 → 1.2", "run a campaign to 1.1 first"]);
    let c = CAMPAIGN.replace("\"1.1\"", "\"1.0\"");
    let o = plan("same-version", "fleet.toml", FLEET, &c);
    expect(&o, 2, "campaign.toml:2:18", &["already at functional level 1.0"]);
}

#[test]
fn syntax_error() {
    let f = FLEET.replace("[[service]]", "[[service]");
    let o = plan("syntax", "fleet.toml", &f, CAMPAIGN);
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert!(o.stderr.contains("fleet.toml:17:"), "{}", o.stderr);
}

#[test]
fn missing_file() {
    let d = dir("missing");
    let o = run(&d, &["plan", "--fleet", "nope.toml", "--campaign", "campaign.toml"]);
    expect(&o, 2, "nope.toml", &["cannot read nope.toml"]);
}

#[test]
fn json_fleets_are_located_too() {
    let json = r#"{
  "name": "t",
  "node": [
    {"name": "n01"},
    {"name": "n01"}
  ]
}"#;
    let o = plan("json-dup", "fleet.json", json, "name = \"c\"\ntarget_version = \"x\"\n");
    expect(&o, 2, "fleet.json:5:14", &["node name n01 is used twice"]);
    let json = "{\n  \"name\": \"t\",\n  \"nodes\": []\n}";
    let o = plan("json-unknown", "fleet.json", json, "name = \"c\"\ntarget_version = \"x\"\n");
    expect(&o, 2, "fleet.json:3:", &["unknown field `nodes`"]);
    let json = "{\n  \"name\": \"t\",\n  \"node\": [{\"name\": 5}]\n}";
    let o = plan("json-type", "fleet.json", json, "name = \"c\"\ntarget_version = \"x\"\n");
    expect(&o, 2, "fleet.json:3:", &["invalid type"]);
}

#[test]
fn infeasible_service_exits_3_naming_it() {
    let f = FLEET.replace("max_unavailable = 1", "min_available = 3");
    let o = plan("infeasible-service", "fleet.toml", &f, CAMPAIGN);
    expect(&o, 3, "service web", &["none may be down", "relax the availability rule of service web"]);
    // Quorum of two members: losing one loses the majority.
    let f = FLEET
        .replace("[\"n01\", \"n02\", \"n03\"]", "[\"n01\", \"n02\"]")
        .replace("max_unavailable = 1", "quorum = true");
    let o = plan("infeasible-quorum", "fleet.toml", &f, CAMPAIGN);
    expect(&o, 3, "service web", &["none may be down"]);
}

#[test]
fn infeasible_workload_exits_3_naming_it() {
    let f = FLEET.replace("version = \"1.0\"\n", "version = \"1.0\"\ncapacity = 10\n")
        + "\n[[workload]]\nname = \"big\"\nnode = \"n01\"\ndemand = 9\n\n[[workload]]\nname = \"other\"\nnode = \"n02\"\ndemand = 8\n\n[[workload]]\nname = \"third\"\nnode = \"n03\"\ndemand = 8\n";
    let o = plan("infeasible-workload", "fleet.toml", &f, CAMPAIGN);
    expect(&o, 3, "workload big", &["fits on no other node"]);
}

#[test]
fn bad_flags_exit_2() {
    let d = dir("flags");
    std::fs::write(d.join("fleet.toml"), FLEET).unwrap();
    std::fs::write(d.join("campaign.toml"), CAMPAIGN).unwrap();
    let base = ["simulate", "--fleet", "fleet.toml", "--campaign", "campaign.toml"];
    let o = run(&d, &[&base[..], &["--duration", "20m..10m"]].concat());
    expect(&o, 2, "--duration", &["ends before it starts"]);
    let o = run(&d, &[&base[..], &["--fail-rate", "1.5"]].concat());
    expect(&o, 2, "--fail-rate", &["not a probability"]);
    let o = run(&d, &[&base[..], &["--format", "yaml"]].concat());
    assert_eq!(o.code, 2, "{}", o.stderr);
}

#[test]
fn webhook_that_is_not_a_url() {
    let c = format!("{CAMPAIGN}webhooks = [\"https://ok.example/hook\", \"ftp://files\"]\n");
    let o = plan("bad-webhook", "fleet.toml", FLEET, &c);
    expect(&o, 2, "campaign.toml:5:40", &["webhook `ftp://files` is not an http:// or https:// URL"]);
}

/// Issue 11, item 4: names took spaces, `;` (which separates commands on HAProxy's socket),
/// newlines and non-DNS unicode (a node that could never be reached by its certificate).
#[test]
fn names_follow_the_rule_and_node_names_are_dns_names() {
    let cases = [
        (
            "name-space",
            "name = \"n01\"",
            "name = \"web 01\"",
            "fleet.toml:6:8",
            "node name \"web 01\" has ' '",
        ),
        (
            "name-semicolon",
            "name = \"web\"",
            "name = \"web;disable server x\"",
            "fleet.toml:18:8",
            "service name",
        ),
        ("name-unicode", "name = \"n01\"", "name = \"nœud\"", "fleet.toml:6:8", "has 'œ'"),
        ("name-underscore", "name = \"n01\"", "name = \"n_01\"", "fleet.toml:6:8", "DNS name"),
        ("name-dash", "name = \"n01\"", "name = \"n01-\"", "fleet.toml:6:8", "not a DNS name"),
        (
            "name-dot-start",
            "name = \"n01\"",
            "name = \".n01\"",
            "fleet.toml:6:8",
            "must start with a letter or a digit",
        ),
        (
            "name-long",
            "name = \"n01\"",
            &format!("name = \"{}\"", "n".repeat(64)),
            "fleet.toml:6:8",
            "64 characters",
        ),
    ];
    for (case, from, to, place, words) in cases {
        let f = FLEET.replacen(from, to, 1);
        let o = plan(case, "fleet.toml", &f, CAMPAIGN);
        expect(&o, 2, place, &[words, "help"]);
    }
    // A service may have '_' (it is no DNS name); a campaign name may not have a newline.
    let o = plan(
        "name-service-underscore",
        "fleet.toml",
        &FLEET.replace("name = \"web\"", "name = \"web_tier\""),
        CAMPAIGN,
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    let c = CAMPAIGN.replace("name = \"to-1.1\"", "name = \"to\\n1.1\"");
    let o = plan("name-campaign-newline", "fleet.toml", FLEET, &c);
    expect(&o, 2, "campaign.toml:1:8", &["campaign name", "has '\\n'"]);
}

/// Issue 11, item 4: `--token-file` permissions were not checked and an empty token file was
/// accepted.
#[test]
fn the_token_file_must_be_private_and_not_empty() {
    use std::os::unix::fs::PermissionsExt;
    let d = dir("token-file");
    std::fs::write(d.join("fleet.toml"), FLEET).unwrap();
    for (name, text, mode, words) in [
        ("open.token", "secret-token", 0o644, "readable by others (mode 644)"),
        ("empty.token", "  \n", 0o600, "the token file is empty"),
    ] {
        let p = d.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        let o = run(
            &d,
            &[
                "serve",
                "--fleet",
                "fleet.toml",
                "--db",
                "sqlite:t.db",
                "--listen",
                "127.0.0.1:1",
                "--token-file",
                name,
            ],
        );
        expect(&o, 2, name, &[words, "help"]);
        let o = run(&d, &["status", "--server", "http://127.0.0.1:1", "--token-file", name]);
        expect(&o, 2, name, &[words]);
    }
}

/// From a review: node names the URL parser reads as addresses (a last label that is a number)
/// would skip the fleet file's address; `ca` and `orchestrator` are the PKI's; HAProxy's
/// backend and server names reach its command line, where `;` separates commands.
#[test]
fn node_names_that_read_as_addresses_or_are_reserved_and_bad_haproxy_names_are_refused() {
    for (case, to, words) in [
        ("name-ip", "name = \"10.0.0.5\"", "reads as an address"),
        ("name-label-number", "name = \"rack1.10\"", "reads as an address"),
        ("name-hex", "name = \"web.0x1f\"", "reads as an address"),
        ("name-ca", "name = \"ca\"", "reserved"),
        ("name-orchestrator", "name = \"Orchestrator\"", "reserved"),
    ] {
        let o = plan(case, "fleet.toml", &FLEET.replacen("name = \"n01\"", to, 1), CAMPAIGN);
        expect(&o, 2, "fleet.toml:6:8", &[words]);
    }
    // Upper case is a DNS name like any other.
    let f = FLEET.replace("\"n01\"", "\"HV01\"");
    assert_eq!(plan("name-upper", "fleet.toml", &f, CAMPAIGN).code, 0);
    let lb =
        "\n[service.haproxy]\nsocket = \"/run/haproxy/admin.sock\"\nbackend = \"web;disable frontend fe\"\n";
    let o = plan("haproxy-semicolon", "fleet.toml", &format!("{FLEET}{lb}"), CAMPAIGN);
    expect(&o, 2, "fleet.toml:24:11", &["HAProxy backend name", "has ';'"]);
    let lb = "\n[service.haproxy]\nsocket = \"/run/haproxy/admin.sock\"\nbackend = \"web\"\nserver = \"{node} x\"\n";
    let o = plan("haproxy-server-space", "fleet.toml", &format!("{FLEET}{lb}"), CAMPAIGN);
    expect(&o, 2, "fleet.toml:25:10", &["HAProxy server name"]);
}

/// Issue 12: a window that never opens, a cron rule that never fires or does not read, an
/// unknown time zone, a day or time that does not parse: each names file, line and column, exits 2, and starts nothing.
#[test]
fn bad_windows_and_time_zones_are_refused_where_they_are() {
    let cases = [
        ("tz", "timezone = \"Europe/Berln\"\n", "campaign.toml:5:12", "unknown time zone `Europe/Berln`"),
        (
            "days",
            "windows = [{ days = \"Sat,Funday\", start = \"02:00\", length = \"4h\" }]\n",
            "campaign.toml:5:21",
            "window 1: `Funday` is not a day of the week",
        ),
        (
            "start",
            "windows = [{ days = \"*\", start = \"25:00\", length = \"4h\" }]\n",
            "campaign.toml:5:34",
            "window 1: `25:00` is not a time of day",
        ),
        (
            "never",
            "windows = [{ days = \"Sun\", start = \"02:00\", length = \"4h\" }, { days = \"Sat\", start = \"02:00\", length = \"0s\" }]\n",
            "campaign.toml:5:104",
            "window 2 never opens: its length is 0",
        ),
        ("cron-never", "schedule = \"0 3 30 2 *\"\n", "campaign.toml:5:12", "schedule: the cron rule `0 3 30 2 *` never fires"),
        ("cron-fields", "schedule = \"0 3 * *\"\n", "campaign.toml:5:12", "a cron rule has 5 fields"),
        ("cron-nth", "schedule = \"0 3 * * TUE#6\"\n", "campaign.toml:5:12", "the number after `#` must be 1-5"),
        (
            "cron-tz",
            "timezone = \"Mars/Base\"\nschedule = \"0 3 * * *\"\n",
            "campaign.toml:5:12",
            "unknown time zone `Mars/Base`",
        ),
    ];
    for (name, extra, at, msg) in cases {
        let o = plan(&format!("window-{name}"), "fleet.toml", FLEET, &format!("{CAMPAIGN}{extra}"));
        expect(&o, 2, at, &[msg]);
    }
}

/// Issue 12: `before_start` with a placeholder it does not have names the place.
#[test]
fn before_start_placeholders_are_checked() {
    let c = format!("{CAMPAIGN}before_start = [\"/usr/local/bin/backup\", \"{{node}}\"]\n");
    let o = plan("before-start", "fleet.toml", FLEET, &c);
    expect(&o, 2, "campaign.toml:5:42", &["placeholder {node} is unknown in before_start"]);
}

/// Issue 13: `mixed_mode_limit` of 0 (overdue at once) or not a duration names the place.
#[test]
fn a_mixed_mode_limit_must_be_a_duration_over_zero() {
    let o = plan("mixed-zero", "fleet.toml", FLEET, &format!("{CAMPAIGN}mixed_mode_limit = \"0s\"\n"));
    expect(&o, 2, "campaign.toml:5:20", &["mixed_mode_limit is 0"]);
    let o = plan("mixed-bad", "fleet.toml", FLEET, &format!("{CAMPAIGN}mixed_mode_limit = \"4 weeks\"\n"));
    expect(&o, 2, "campaign.toml:5", &["weeks"]);
}

/// Issue 13: the scale-set keys name their place when they cannot be kept.
#[test]
fn select_and_walk_mistakes_name_their_place() {
    let o = plan("walk-continuous", "fleet.toml", FLEET, &format!("{CAMPAIGN}walk = \"fault_domain\"\n"));
    expect(&o, 2, "campaign.toml:5:8", &["walk is for strategy = \"domain-walk\""]);
    let o = plan(
        "walk-bad",
        "fleet.toml",
        FLEET,
        &format!("{CAMPAIGN}strategy = \"domain-walk\"\nwalk = \"rack\"\n"),
    );
    expect(&o, 2, "campaign.toml:6", &["rack"]);
    let o =
        plan("select-none", "fleet.toml", FLEET, &format!("{CAMPAIGN}select = {{ update_domain = [7] }}\n"));
    expect(&o, 2, "campaign.toml:5:10", &["select matches no node of fleet t"]);
    let o = plan("select-key", "fleet.toml", FLEET, &format!("{CAMPAIGN}select = {{ rack = [1] }}\n"));
    expect(&o, 2, "campaign.toml:5", &["rack"]);
}
