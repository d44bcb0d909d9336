//! `agent.toml`: read once at start, validated into typed settings. A bad file stops the agent
//! with an error naming the file, line and column, and what to do.

use baton_core::diag::{locate, Diagnostic, DocPath, Format};
use baton_core::units::{Dur, MINUTE, SECOND};
use serde::Deserialize;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RebootPolicy {
    Never,
    Always,
    IfRequired,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RebootVia {
    /// Run `reboot_command` (default `systemctl reboot`).
    Command,
    /// Exit with code 75 so that a supervisor restarts the agent as a new boot (the demo and
    /// the lab, where a "node" is a process or a namespace).
    SupervisorExit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActionKind {
    Script,
    Apt,
    Dnf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    node: String,
    listen: String,
    state_dir: PathBuf,
    tls: RawTls,
    #[serde(default)]
    version_command: Option<Vec<String>>,
    #[serde(default = "default_boot_id_file")]
    boot_id_file: PathBuf,
    #[serde(default = "default_reboot_required_file")]
    reboot_required_file: PathBuf,
    #[serde(default = "default_reboot_command")]
    reboot_command: Vec<String>,
    #[serde(default = "default_reboot_via")]
    reboot_via: RebootVia,
    #[serde(default = "default_tail")]
    output_tail_bytes: usize,
    #[serde(default = "default_interval")]
    check_interval: Dur,
    #[serde(default, rename = "action")]
    actions: Vec<RawAction>,
    #[serde(default, rename = "check")]
    checks: Vec<RawCheck>,
    #[serde(default, rename = "precheck")]
    prechecks: Vec<RawCheck>,
    #[serde(default)]
    drain: RawDrain,
    #[serde(default)]
    hold: RawHold,
}

/// `[hold]`: the node's own auto-updaters, kept from running while a campaign runs.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHold {
    #[serde(default)]
    units: Vec<String>,
    #[serde(default = "default_is_active")]
    is_active_command: Vec<String>,
    #[serde(default = "default_unit_stop")]
    stop_command: Vec<String>,
    #[serde(default = "default_mask")]
    mask_command: Vec<String>,
    #[serde(default = "default_unmask")]
    unmask_command: Vec<String>,
    #[serde(default = "default_unit_start")]
    start_command: Vec<String>,
}

impl Default for RawHold {
    fn default() -> Self {
        RawHold {
            units: Vec::new(),
            is_active_command: default_is_active(),
            stop_command: default_unit_stop(),
            mask_command: default_mask(),
            unmask_command: default_unmask(),
            start_command: default_unit_start(),
        }
    }
}

fn unit_cmd(args: &[&str]) -> Vec<String> {
    std::iter::once("systemctl").chain(args.iter().copied()).map(String::from).collect()
}
fn default_is_active() -> Vec<String> {
    unit_cmd(&["is-active", "--quiet", "{unit}"])
}
fn default_unit_stop() -> Vec<String> {
    unit_cmd(&["stop", "{unit}"])
}
fn default_mask() -> Vec<String> {
    unit_cmd(&["mask", "--runtime", "{unit}"])
}
fn default_unmask() -> Vec<String> {
    unit_cmd(&["unmask", "--runtime", "{unit}"])
}
fn default_unit_start() -> Vec<String> {
    unit_cmd(&["start", "{unit}"])
}

/// The commands a hold uses on each unit (`{unit}` filled in).
#[derive(Debug, Clone, Default)]
pub struct HoldConfig {
    pub units: Vec<String>,
    pub is_active_command: Argv,
    pub stop_command: Argv,
    pub mask_command: Argv,
    pub unmask_command: Argv,
    pub start_command: Argv,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    /// The fleet's revocation list (`baton ca revoke`); default: `crl.pem` beside `ca`, when
    /// there is one. Read again on SIGHUP.
    crl: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAction {
    name: String,
    #[serde(default = "default_kind")]
    kind: ActionKind,
    argv: Option<Vec<String>>,
    package: Option<String>,
    #[serde(default = "default_timeout")]
    timeout: Dur,
    #[serde(default = "default_reboot")]
    reboot: RebootPolicy,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCheck {
    name: String,
    kind: CheckKindName,
    argv: Option<Vec<String>>,
    url: Option<String>,
    address: Option<String>,
    /// `disk`: the file system holding this path, and the space it must have free.
    path: Option<PathBuf>,
    min_free: Option<String>,
    /// `journal`: error entries allowed, messages to ignore (substrings), and the command that
    /// prints this boot's error entries as JSON lines (default: journalctl).
    max_entries: Option<u32>,
    ignore: Option<Vec<String>>,
    command: Option<Vec<String>>,
    #[serde(default = "default_check_timeout")]
    timeout: Dur,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum CheckKindName {
    Command,
    Http,
    Tcp,
    Disk,
    Journal,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDrain {
    #[serde(default)]
    services: Vec<String>,
    #[serde(default = "default_stop")]
    stop_command: Vec<String>,
    #[serde(default = "default_kill")]
    kill_command: Vec<String>,
    #[serde(default = "default_start")]
    start_command: Vec<String>,
    #[serde(default)]
    drain_hooks: Vec<Vec<String>>,
    #[serde(default)]
    restore_hooks: Vec<Vec<String>>,
}

impl Default for RawDrain {
    fn default() -> Self {
        RawDrain {
            services: Vec::new(),
            stop_command: default_stop(),
            kill_command: default_kill(),
            start_command: default_start(),
            drain_hooks: Vec::new(),
            restore_hooks: Vec::new(),
        }
    }
}

fn default_boot_id_file() -> PathBuf {
    "/proc/sys/kernel/random/boot_id".into()
}
fn default_reboot_required_file() -> PathBuf {
    "/var/run/reboot-required".into()
}
fn default_reboot_command() -> Vec<String> {
    vec!["systemctl".into(), "reboot".into()]
}
fn default_reboot_via() -> RebootVia {
    RebootVia::Command
}
fn default_tail() -> usize {
    4096
}
fn default_interval() -> Dur {
    Dur(2 * SECOND)
}
fn default_kind() -> ActionKind {
    ActionKind::Script
}
fn default_timeout() -> Dur {
    Dur(30 * MINUTE)
}
fn default_check_timeout() -> Dur {
    Dur(5 * SECOND)
}
fn default_reboot() -> RebootPolicy {
    RebootPolicy::IfRequired
}
fn svc_cmd(verb: &str) -> Vec<String> {
    vec!["systemctl".into(), verb.into(), "{service}".into()]
}
fn default_stop() -> Vec<String> {
    svc_cmd("stop")
}
fn default_kill() -> Vec<String> {
    vec!["systemctl".into(), "kill".into(), "--signal=KILL".into(), "{service}".into()]
}
fn default_start() -> Vec<String> {
    svc_cmd("start")
}

/// An argv with placeholders (`{version}`, `{node}`, `{state_dir}`, `{service}`), checked at load.
pub type Argv = Vec<String>;

#[derive(Debug, Clone)]
pub struct Action {
    pub name: String,
    pub kind: ActionKind,
    pub argv: Argv,
    pub timeout_ms: u64,
    pub reboot: RebootPolicy,
}

#[derive(Debug, Clone)]
pub enum CheckKind {
    Command(Argv),
    Http(String),
    Tcp(String),
    /// At least `min_free` bytes free (for an unprivileged user) on the file system of `path`.
    Disk {
        path: PathBuf,
        min_free: u64,
    },
    /// At most `max_entries` error entries in this boot's system journal, besides those whose
    /// message holds one of `ignore`; `command` prints them as JSON lines.
    Journal {
        command: Argv,
        max_entries: u32,
        ignore: Vec<String>,
    },
}

/// What the journal check runs unless told otherwise: this boot's entries of priority err and
/// worse, one JSON object per line.
pub fn default_journal_command() -> Vec<String> {
    ["journalctl", "-b", "-p", "err", "-o", "json", "--no-pager"].map(String::from).to_vec()
}

#[derive(Debug, Clone)]
pub struct Check {
    pub name: String,
    pub kind: CheckKind,
    pub timeout_ms: u64,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub node: String,
    pub listen: String,
    pub state_dir: PathBuf,
    pub tls: baton_pki::TlsFiles,
    pub version_command: Option<Argv>,
    pub boot_id_file: PathBuf,
    pub reboot_required_file: PathBuf,
    pub reboot_command: Argv,
    pub reboot_via: RebootVia,
    pub output_tail_bytes: usize,
    pub check_interval_ms: u64,
    pub actions: Vec<Action>,
    pub checks: Vec<Check>,
    /// Run before the node is drained; a failure leaves it untouched.
    pub prechecks: Vec<Check>,
    pub services: Vec<String>,
    pub stop_command: Argv,
    pub kill_command: Argv,
    pub start_command: Argv,
    pub drain_hooks: Vec<Argv>,
    pub restore_hooks: Vec<Argv>,
    pub hold: HoldConfig,
    /// The `scan` action: what the node lacks (read-only, not a step).
    pub scan: Option<Scan>,
}

/// How a node is scanned: apt (`apt list --upgradable`), dnf (`dnf check-update`) or a
/// script whose stdout lines are the updates; `package` keeps only that package's line.
#[derive(Debug, Clone)]
pub struct Scan {
    pub kind: ActionKind,
    pub argv: Argv,
    pub package: Option<String>,
    pub timeout_ms: u64,
}

impl Scan {
    /// The updates in the command's output, one "package version" (or script line) each.
    pub fn updates(&self, out: &str) -> Vec<String> {
        let mut v = Vec::new();
        for line in out.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if matches!(self.kind, ActionKind::Dnf) && line.starts_with("Obsoleting") {
                break;
            }
            let item = match self.kind {
                ActionKind::Script => Some((line.split_whitespace().next().unwrap_or(""), line.to_string())),
                // "myapp/stable 1.1 all [upgradable from: 1.0]"
                ActionKind::Apt => line.contains("[upgradable from").then(|| {
                    let mut w = line.split_whitespace();
                    let pkg = w.next().unwrap_or("").split('/').next().unwrap_or("");
                    (pkg, format!("{pkg} {}", w.next().unwrap_or("?")))
                }),
                // "myapp.noarch   1.1-1   local" (after an empty line; "Obsoleting" ends it)
                ActionKind::Dnf => {
                    let w: Vec<&str> = line.split_whitespace().collect();
                    (w.len() == 3 && w[0].contains('.')).then(|| {
                        let pkg = w[0].rsplit_once('.').map_or(w[0], |(p, _)| p);
                        (pkg, format!("{pkg} {}", w[1]))
                    })
                }
            };
            if let Some((pkg, line)) = item {
                if self.package.as_deref().is_none_or(|p| p == pkg) {
                    v.push(line);
                }
            }
        }
        v
    }
}

impl Config {
    pub fn action(&self, name: &str) -> Option<&Action> {
        self.actions.iter().find(|a| a.name == name)
    }
}

/// What makes `v` wrong for an action of `kind`, beyond [`valid_version`]: dnf reads
/// `pkg-devel` as the package `pkg-devel`, so its versions must start with a digit (as RPM
/// versions and epochs do).
pub fn version_problem(kind: ActionKind, v: &str) -> Option<&'static str> {
    match kind {
        ActionKind::Dnf if !v.starts_with(|c: char| c.is_ascii_digit()) => {
            Some("a dnf version starts with a digit (`pkg-{version}` would name another package)")
        }
        _ => None,
    }
}

/// Checks that a version is safe to put into an argv: no option-like or path-like values.
pub fn valid_version(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 128
        && v.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && v.chars().all(|c| c.is_ascii_alphanumeric() || "._+:~-".contains(c))
}

const PLACEHOLDERS: [&str; 5] = ["version", "node", "state_dir", "service", "unit"];

/// Parses and validates `agent.toml`. Relative paths are relative to the file's directory.
pub fn load(file: &str, text: &str) -> Result<Config, Diagnostic> {
    let at = |path: DocPath| locate(text, Format::Toml, &path);
    let err =
        |path: DocPath, msg: String, help: &str| Diagnostic::at(file, text, at(path), msg).with_help(help);
    let raw: RawConfig = toml::from_str(text).map_err(|e| {
        let msg = e.message().trim().to_string();
        let help = if msg.starts_with("unknown field") {
            "remove it or fix its spelling; dist/agent.toml lists every key"
        } else {
            "fix agent.toml at this place"
        };
        Diagnostic::at(file, text, e.span(), msg).with_help(help)
    })?;
    let base = Path::new(file).parent().unwrap_or(Path::new("."));
    let abs = |p: &Path| if p.is_absolute() { p.to_path_buf() } else { base.join(p) };
    let root = DocPath::root;

    // Every argv: not empty, and only known placeholders.
    let check_argv = |path: DocPath, argv: &[String], allowed: &[&str]| -> Result<(), Diagnostic> {
        if argv.is_empty() || argv[0].is_empty() {
            return Err(err(
                path,
                "an empty command".into(),
                "give the program and its arguments, e.g. [\"/usr/local/bin/upgrade.sh\", \"{version}\"]",
            ));
        }
        for (i, a) in argv.iter().enumerate() {
            let mut rest = a.as_str();
            while let Some(open) = rest.find('{') {
                let Some(close) = rest[open..].find('}') else { break };
                let name = &rest[open + 1..open + close];
                // `${...}` and `%{...}` are the program's own (dpkg-query's `${Version}`, a
                // shell's, rpm's `%{VERSION}`), kept as is; but with one of baton's names
                // (`${version}`, `%{version}`) surely a slip for baton's `{version}`.
                if let Some(sigil) = rest[..open].chars().last().filter(|c| matches!(c, '$' | '%')) {
                    if PLACEHOLDERS.contains(&name) {
                        let help = match sigil {
                            '%' => format!(
                                "write {{{name}}} for baton's, or %{{{}}} for rpm's tag (the same tag in capitals)",
                                name.to_uppercase()
                            ),
                            _ => format!("write {{{name}}} without the `$`"),
                        };
                        return Err(err(
                            path.clone().idx(i),
                            format!("`{sigil}{{{name}}}` is kept as is; baton fills `{{{name}}}`"),
                            &help,
                        ));
                    }
                    rest = &rest[open + close + 1..];
                    continue;
                }
                if !allowed.contains(&name) {
                    let known = if PLACEHOLDERS.contains(&name) { "not available here" } else { "unknown" };
                    return Err(err(
                        path.clone().idx(i),
                        format!("placeholder {{{name}}} is {known}"),
                        &format!(
                            "use one of {}",
                            allowed.iter().map(|p| format!("{{{p}}}")).collect::<Vec<_>>().join(", ")
                        ),
                    ));
                }
                rest = &rest[open + close + 1..];
            }
        }
        Ok(())
    };

    if raw.node.trim().is_empty() {
        return Err(err(
            root().key("node"),
            "the node's name is empty".into(),
            "use the node's name from the fleet file",
        ));
    }
    let mut names = HashSet::new();
    let mut actions = Vec::new();
    let mut scan = None;
    for (i, a) in raw.actions.into_iter().enumerate() {
        let p = || root().key("action").idx(i);
        if !names.insert(a.name.clone()) {
            return Err(err(
                p().key("name"),
                format!("action {} is defined twice", a.name),
                "action names must be unique",
            ));
        }
        if a.name == "scan" {
            // Read-only: what the node lacks. apt and dnf build their own (listing) command.
            let argv = match (a.kind, a.argv) {
                (ActionKind::Script, Some(argv)) => argv,
                (ActionKind::Script, None) => {
                    return Err(err(
                        p().key("name"),
                        "a script scan has no argv".into(),
                        "add argv = [\"/path/to/program\"]: it prints one update per line",
                    ))
                }
                (ActionKind::Apt, None) => ["apt", "list", "--upgradable"].map(String::from).to_vec(),
                (ActionKind::Dnf, None) => ["dnf", "-q", "check-update"].map(String::from).to_vec(),
                (_, Some(_)) => {
                    return Err(err(
                        p().key("argv"),
                        "apt and dnf scans build their own command".into(),
                        "remove argv (package = \"name\" limits the scan to that package)",
                    ))
                }
            };
            if let Some(pkg) = a.package.as_deref().filter(|p| !valid_version(p)) {
                return Err(err(
                    p().key("package"),
                    format!("`{pkg}` is not a package name"),
                    "use the package's plain name",
                ));
            }
            check_argv(p().key("argv"), &argv, &["node", "state_dir"])?;
            scan = Some(Scan { kind: a.kind, argv, package: a.package, timeout_ms: a.timeout.ms() });
            continue;
        }
        let argv = match (a.kind, a.argv, a.package) {
            (ActionKind::Script, Some(argv), None) => argv,
            (ActionKind::Script, None, _) => {
                return Err(err(
                    p().key("name"),
                    format!("action {} has no argv", a.name),
                    "add argv = [\"/path/to/program\", \"{version}\"]",
                ))
            }
            (ActionKind::Script, Some(_), Some(_)) => {
                return Err(err(
                    p().key("package"),
                    "a script action has no package".into(),
                    "remove `package`, or use kind = \"apt\"",
                ))
            }
            (kind, None, Some(pkg)) => {
                if !valid_version(&pkg) {
                    return Err(err(
                        p().key("package"),
                        format!("`{pkg}` is not a package name"),
                        "use the package's plain name",
                    ));
                }
                match kind {
                    ActionKind::Apt => vec![
                        "apt-get".into(),
                        "install".into(),
                        "-y".into(),
                        "--allow-downgrades".into(),
                        format!("{pkg}={{version}}"),
                    ],
                    _ => vec!["dnf".into(), "-y".into(), "install".into(), format!("{pkg}-{{version}}")],
                }
            }
            (_, Some(_), _) => {
                return Err(err(
                    p().key("argv"),
                    "apt and dnf actions build their own command".into(),
                    "remove argv and set package = \"name\"",
                ))
            }
            (_, None, None) => {
                return Err(err(
                    p().key("name"),
                    format!("action {} has no package", a.name),
                    "add package = \"name\"",
                ))
            }
        };
        check_argv(p().key("argv"), &argv, &["version", "node", "state_dir"])?;
        actions.push(Action {
            name: a.name,
            kind: a.kind,
            argv,
            timeout_ms: a.timeout.ms(),
            reboot: a.reboot,
        });
    }
    let mut checks = build_checks(raw.checks, "check", &err, &check_argv)?;
    let mut prechecks = build_checks(raw.prechecks, "precheck", &err, &check_argv)?;
    for c in checks.iter_mut().chain(prechecks.iter_mut()) {
        if let CheckKind::Disk { path, .. } = &mut c.kind {
            *path = abs(path);
        }
    }
    let h = raw.hold;
    for (key, argv) in [
        ("is_active_command", &h.is_active_command),
        ("stop_command", &h.stop_command),
        ("mask_command", &h.mask_command),
        ("unmask_command", &h.unmask_command),
        ("start_command", &h.start_command),
    ] {
        check_argv(root().key("hold").key(key), argv, &["unit", "node", "state_dir"])?;
    }
    for (i, u) in h.units.iter().enumerate() {
        let ok = !u.is_empty()
            && !u.starts_with('-')
            && u.len() <= 256
            && u.chars().all(|c| c.is_ascii_alphanumeric() || ":_.@-\\".contains(c));
        if !ok {
            return Err(err(
                root().key("hold").key("units").idx(i),
                format!("`{u}` is not a systemd unit name"),
                "write unit names such as \"apt-daily-upgrade.timer\"",
            ));
        }
    }
    let hold = HoldConfig {
        units: h.units,
        is_active_command: h.is_active_command,
        stop_command: h.stop_command,
        mask_command: h.mask_command,
        unmask_command: h.unmask_command,
        start_command: h.start_command,
    };
    let d = raw.drain;
    for (key, argv) in [
        ("stop_command", &d.stop_command),
        ("kill_command", &d.kill_command),
        ("start_command", &d.start_command),
    ] {
        check_argv(root().key("drain").key(key), argv, &["service", "node", "state_dir"])?;
    }
    for (key, hooks) in [("drain_hooks", &d.drain_hooks), ("restore_hooks", &d.restore_hooks)] {
        for (i, h) in hooks.iter().enumerate() {
            check_argv(root().key("drain").key(key).idx(i), h, &["node", "state_dir"])?;
        }
    }
    if let Some(v) = &raw.version_command {
        check_argv(root().key("version_command"), v, &["node", "state_dir"])?;
    }
    if raw.reboot_via == RebootVia::Command {
        check_argv(root().key("reboot_command"), &raw.reboot_command, &["node"])?;
    }

    // TLS is not optional: the files must be there, and the key private.
    let tls = baton_pki::TlsFiles {
        ca: abs(&raw.tls.ca),
        cert: abs(&raw.tls.cert),
        key: abs(&raw.tls.key),
        crl: raw.tls.crl.as_deref().map(abs),
    };
    for (key, path) in [("ca", &tls.ca), ("cert", &tls.cert), ("key", &tls.key)] {
        if !path.is_file() {
            return Err(err(
                root().key("tls").key(key),
                format!("{} does not exist", path.display()),
                "create the fleet CA and this node's certificate with `baton ca init` and `baton ca issue NODE`",
            ));
        }
    }
    if let Err(e) = baton_pki::read_key_file(&tls.key) {
        return Err(err(
            root().key("tls").key("key"),
            e.to_string(),
            "the agent refuses a private key others can read",
        ));
    }
    Ok(Config {
        node: raw.node,
        listen: raw.listen,
        state_dir: abs(&raw.state_dir),
        tls,
        version_command: raw.version_command,
        boot_id_file: abs(&raw.boot_id_file),
        reboot_required_file: abs(&raw.reboot_required_file),
        reboot_command: raw.reboot_command,
        reboot_via: raw.reboot_via,
        output_tail_bytes: raw.output_tail_bytes.clamp(256, 1 << 20),
        check_interval_ms: raw.check_interval.ms().max(100),
        actions,
        checks,
        prechecks,
        services: d.services,
        stop_command: d.stop_command,
        kill_command: d.kill_command,
        start_command: d.start_command,
        drain_hooks: d.drain_hooks,
        restore_hooks: d.restore_hooks,
        hold,
        scan,
    })
}

/// Checks an argv's placeholders against those allowed where it is.
type ArgvCheck<'a> = dyn Fn(DocPath, &[String], &[&str]) -> Result<(), Diagnostic> + 'a;

/// The `[[check]]` or `[[precheck]]` tables (`key`), each with exactly the keys its kind needs.
fn build_checks(
    raw: Vec<RawCheck>,
    key: &str,
    err: &dyn Fn(DocPath, String, &str) -> Diagnostic,
    check_argv: &ArgvCheck<'_>,
) -> Result<Vec<Check>, Diagnostic> {
    let mut checks = Vec::new();
    for (i, c) in raw.into_iter().enumerate() {
        let p = || DocPath::root().key(key).idx(i);
        let journal_keys = [
            ("max_entries", c.max_entries.is_some()),
            ("ignore", c.ignore.is_some()),
            ("command", c.command.is_some()),
        ];
        if c.kind != CheckKindName::Journal {
            if let Some((k, _)) = journal_keys.iter().find(|k| k.1) {
                return Err(err(
                    p().key(k),
                    format!("{key} {}: `{k}` is a key of kind \"journal\" only", c.name),
                    "remove it, or use kind = \"journal\"",
                ));
            }
        }
        let kind = match (c.kind, c.argv, c.url, c.address, c.path, c.min_free) {
            (CheckKindName::Journal, None, None, None, None, None) => {
                let command = c.command.unwrap_or_else(default_journal_command);
                check_argv(p().key("command"), &command, &["node", "state_dir"])?;
                let ignore = c.ignore.unwrap_or_default();
                if let Some(j) = ignore.iter().position(|g| g.is_empty()) {
                    return Err(err(
                        p().key("ignore").idx(j),
                        format!("{key} {}: an empty ignore pattern would ignore every entry", c.name),
                        "remove it, or give part of the message to ignore",
                    ));
                }
                CheckKind::Journal { command, max_entries: c.max_entries.unwrap_or(0), ignore }
            }
            (CheckKindName::Command, Some(argv), None, None, None, None) => {
                check_argv(p().key("argv"), &argv, &["node", "state_dir"])?;
                CheckKind::Command(argv)
            }
            (CheckKindName::Http, None, Some(url), None, None, None) if url.starts_with("http://") => {
                CheckKind::Http(url)
            }
            (CheckKindName::Tcp, None, None, Some(addr), None, None) => CheckKind::Tcp(addr),
            (CheckKindName::Disk, None, None, None, Some(path), Some(min_free)) => {
                let min_free = parse_size(&min_free).map_err(|e| {
                    err(
                        p().key("min_free"),
                        format!("{key} {}: {e}", c.name),
                        "write a size such as \"10GB\", \"512MiB\" or a number of bytes",
                    )
                })?;
                CheckKind::Disk { path, min_free }
            }
            (k, ..) => {
                let need = match k {
                    CheckKindName::Command => "argv = [...]",
                    CheckKindName::Http => "url = \"http://127.0.0.1:8080/health\"",
                    CheckKindName::Tcp => "address = \"127.0.0.1:5432\"",
                    CheckKindName::Disk => "path = \"/var\" and min_free = \"10GB\"",
                    CheckKindName::Journal => {
                        "no argv, url, address, path or min_free (its keys: max_entries, ignore, command)"
                    }
                };
                return Err(err(
                    p().key("kind"),
                    format!("{key} {} needs exactly {need}", c.name),
                    "give the keys its kind needs, and no others",
                ));
            }
        };
        checks.push(Check { name: c.name, kind, timeout_ms: c.timeout.ms() });
    }
    Ok(checks)
}

/// A size like "10GB" (powers of 1000), "512MiB" (powers of 1024), "1.5TB" or "4096" bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = (&t[..split], t[split..].trim());
    let bad = || format!("`{s}` is not a size");
    if num.is_empty() || num.starts_with('.') || num.ends_with('.') {
        return Err(bad());
    }
    let n: f64 = num.parse().map_err(|_| bad())?;
    let mult: f64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" | "k" => 1e3,
        "mb" | "m" => 1e6,
        "gb" | "g" => 1e9,
        "tb" | "t" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => {
            return Err(format!(
                "`{s}` is not a size: unknown unit `{unit}` (use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB)"
            ))
        }
    };
    let bytes = n * mult;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes.round() as u64)
}

/// Bytes for people: "1.2 GB".
pub fn show_size(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Fills placeholders in an argv. Values were checked (versions by [`valid_version`]).
/// `${...}` and `%{...}` are left as is (the program's own syntax: dpkg-query's, rpm's); a
/// value is never read again for placeholders.
pub fn fill(argv: &[String], vars: &[(&str, &str)]) -> Vec<String> {
    argv.iter()
        .map(|a| {
            let mut out = String::with_capacity(a.len());
            let mut rest = a.as_str();
            while let Some(open) = rest.find('{') {
                let Some(close) = rest[open..].find('}') else { break };
                let name = &rest[open + 1..open + close];
                out.push_str(&rest[..open]);
                match vars.iter().find(|(k, _)| *k == name) {
                    Some((_, v)) if !rest[..open].ends_with(['$', '%']) => out.push_str(v),
                    _ => out.push_str(&rest[open..open + close + 1]),
                }
                rest = &rest[open + close + 1..];
            }
            out.push_str(rest);
            out
        })
        .collect()
}

#[cfg(test)]
mod fill_tests {
    use super::fill;

    #[test]
    fn placeholders_are_filled_once_and_dollar_braces_kept() {
        let argv =
            ["dpkg-query", "-W", "-f=${Version}", "{node}-{version}", "{unknown}", "a{b", "%{version}"]
                .map(String::from);
        let out = fill(&argv, &[("node", "n1"), ("version", "{node}")]);
        assert_eq!(out, ["dpkg-query", "-W", "-f=${Version}", "n1-{node}", "{unknown}", "a{b", "%{version}"]);
    }
}
