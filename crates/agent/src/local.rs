//! A fleet of real agents on loopback, for `baton demo` and the tests: a fleet CA and
//! certificates, one agent config per node whose `upgrade` action is a script that "installs"
//! the version into the node's state dir and asks for a reboot, and a supervisor per node that
//! restarts its agent as a new boot (fresh boot id) when the agent exits for a reboot.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::process::Command;

const INSTALL: &str = r#"#!/bin/sh
# The demo's upgrade action: "installs" a version into the node's state dir, asks for a reboot.
set -eu
version="$1"
state="$2"
seconds="$3"
# A node can be made slower than the rest (tests of learned times).
if [ -f "$state/action_seconds" ]; then seconds=$(cat "$state/action_seconds"); fi
echo "installing $version"
sleep "$seconds"
printf '%s\n' "$version" > "$state/version"
touch "$state/reboot-required"
echo "installed $version; reboot required"
"#;

#[derive(Debug, Clone)]
pub struct LocalOptions {
    pub nodes: usize,
    /// How long the upgrade action takes, in seconds (a decimal such as "0.3").
    pub action_seconds: String,
    /// How long a "reboot" keeps the node down.
    pub reboot_ms: u64,
    pub campaign_extra: String,
}

impl Default for LocalOptions {
    fn default() -> Self {
        LocalOptions { nodes: 5, action_seconds: "1".into(), reboot_ms: 700, campaign_extra: String::new() }
    }
}

pub struct LocalNode {
    pub name: String,
    pub dir: PathBuf,
    pub port: u16,
    pub addr: String,
    /// The running agent's pid (0 when none).
    pub pid: Arc<AtomicU32>,
    /// Set to keep the supervisor from restarting the agent after it dies.
    pub no_restart: Arc<AtomicBool>,
}

pub struct LocalFleet {
    pub dir: PathBuf,
    pub pki: PathBuf,
    pub fleet_file: PathBuf,
    pub fleet_text: String,
    pub nodes: Vec<LocalNode>,
    pub reboots: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    tasks: tokio::task::JoinSet<()>,
}

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("{0}")]
    Pki(#[from] baton_pki::PkiError),
}

fn write(path: &Path, text: &str) -> Result<(), LocalError> {
    std::fs::write(path, text).map_err(|e| LocalError::Io(path.display().to_string(), e))
}

/// A random 128-bit id in hex (boot ids, tokens).
pub fn random_hex() -> String {
    use std::io::Read;
    let mut b = [0u8; 16];
    let _ = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A port free on loopback now, for a server that may stop and start again on it (an agent
/// that reboots, an orchestrator restarted after a crash).
///
/// Two things make the kernel's own choice (`bind` to port 0) unsafe for that: it may hand out
/// the same port again to the next caller once the probe socket is closed, so two agents of one
/// fleet could be given one port; and it picks from the ephemeral range, where any outgoing
/// connection may take the port while its server is down, so the server cannot bind it again.
/// So: a random port below the ephemeral range, never one this process handed out before, and
/// only if it can be bound now.
pub fn free_port() -> std::io::Result<u16> {
    use std::collections::HashSet;
    use std::sync::Mutex;
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|p| p.parse::<u16>().ok()))
        .unwrap_or(32768);
    let (from, to) = if low > 20_000 { (10_000, low) } else { (low.saturating_sub(10_000).max(1024), low) };
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    let given = given.get_or_insert_with(HashSet::new);
    for _ in 0..1000 {
        let r = u64::from_str_radix(&random_hex()[..8], 16).unwrap_or(0);
        let port = from + (r % u64::from(to - from)) as u16;
        if given.contains(&port) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.insert(port);
            return Ok(port);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        format!("no free port on loopback between {from} and {to} after 1000 tries"),
    ))
}

impl LocalFleet {
    /// Writes everything under `dir` (which should be empty). Starts nothing.
    pub fn create(dir: &Path, o: &LocalOptions) -> Result<LocalFleet, LocalError> {
        let io = |p: &Path| {
            let p = p.display().to_string();
            move |e| LocalError::Io(p, e)
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let pki = dir.join("pki");
        baton_pki::init_ca(&pki, "local")?;
        baton_pki::issue(&pki, "orchestrator", baton_pki::Role::Orchestrator, &[])?;
        let script = dir.join("install.sh");
        write(&script, INSTALL)?;
        let mut fleet =
            String::from("name = \"local\"\nversions = [\"1.0\", \"1.1\"]\nfunctional_level = \"1.0\"\n");
        let mut nodes = Vec::new();
        for i in 1..=o.nodes {
            let name = format!("node{i}");
            baton_pki::issue(&pki, &name, baton_pki::Role::Agent, &[])?;
            let nd = dir.join(&name);
            std::fs::create_dir_all(nd.join("state")).map_err(io(&nd))?;
            write(&nd.join("state/version"), "1.0\n")?;
            write(&nd.join("boot_id"), &random_hex())?;
            let port = free_port().map_err(io(dir))?;
            // Updating and rolling back run the same script, to the version they are given.
            let actions: String = ["upgrade", "rollback"]
                .iter()
                .map(|a| {
                    format!(
                        "[[action]]\nname = \"{a}\"\nkind = \"script\"\nargv = [\"/bin/sh\", \"{script}\", \"{{version}}\", \"{{state_dir}}\", \"{secs}\"]\ntimeout = \"2m\"\nreboot = \"if-required\"\n\n",
                        script = script.display(),
                        secs = o.action_seconds,
                    )
                })
                .collect();
            // The demo's after-commit work (a configuration version raised once the level is):
            // it records that it ran, changes no version and asks no reboot.
            let actions = format!(
                "{actions}[[action]]\nname = \"config-version\"\nkind = \"script\"\nargv = [\"/bin/sh\", \"-c\", \"echo \\\"$1\\\" >> \\\"$2\\\"/after-commit.log\", \"config-version\", \"{{version}}\", \"{{state_dir}}\"]\ntimeout = \"1m\"\nreboot = \"if-required\"\n\n"
            );
            let cfg = format!(
                r#"node = "{name}"
listen = "127.0.0.1:{port}"
state_dir = "state"
version_command = ["cat", "{{state_dir}}/version"]
boot_id_file = "boot_id"
reboot_required_file = "state/reboot-required"
reboot_via = "supervisor-exit"
check_interval = "200ms"

[tls]
ca = "{pki}/ca.pem"
cert = "{pki}/{name}.pem"
key = "{pki}/{name}.key"

{actions}
[[check]]
name = "version-file"
kind = "command"
argv = ["test", "-s", "{{state_dir}}/version"]
"#,
                pki = pki.display(),
            );
            write(&nd.join("agent.toml"), &cfg)?;
            let _ = write!(
                fleet,
                "\n[[node]]\nname = \"{name}\"\naddress = \"127.0.0.1:{port}\"\nupdate_domain = {}\nversion = \"1.0\"\n",
                (i - 1) % 3
            );
            nodes.push(LocalNode {
                name,
                dir: nd,
                port,
                addr: format!("127.0.0.1:{port}"),
                pid: Arc::new(AtomicU32::new(0)),
                no_restart: Arc::new(AtomicBool::new(false)),
            });
        }
        let members: Vec<String> = nodes.iter().map(|n| format!("\"{}\"", n.name)).collect();
        let _ = write!(
            fleet,
            "\n[[service]]\nname = \"web\"\nnodes = [{}]\nmax_unavailable = \"40%\"\n",
            members.join(", ")
        );
        let fleet_file = dir.join("fleet.toml");
        write(&fleet_file, &fleet)?;
        Ok(LocalFleet {
            dir: dir.to_path_buf(),
            pki,
            fleet_file,
            fleet_text: fleet,
            nodes,
            reboots: Arc::new(AtomicUsize::new(0)),
            stop: Arc::new(AtomicBool::new(false)),
            tasks: tokio::task::JoinSet::new(),
        })
    }

    /// The demo's campaign: 1.0 → 1.1, two at a time, short health windows.
    pub fn campaign_toml(extra: &str) -> String {
        format!(
            "name = \"demo-1.1\"\ntarget_version = \"1.1\"\nmax_parallel = 2\nmax_failed_nodes = 0\n\
             reboot_timeout = \"1m\"\nhealth_wait = \"1s\"\nhealth_stable = \"2s\"\nready_timeout = \"1m\"\nstop_grace = \"10s\"\n{extra}"
        )
    }

    /// Starts every agent under a supervisor; `exe` is the `baton` binary.
    pub fn start(&mut self, exe: &Path, reboot_ms: u64) {
        for n in &self.nodes {
            let sup = Supervisor {
                exe: exe.to_path_buf(),
                dir: n.dir.clone(),
                name: n.name.clone(),
                pid: n.pid.clone(),
                no_restart: n.no_restart.clone(),
                stop: self.stop.clone(),
                reboots: self.reboots.clone(),
                reboot_ms,
            };
            self.tasks.spawn(sup.run());
        }
    }

    /// Kills a node's agent with SIGKILL; with `restart` false it stays dead.
    pub fn kill_agent(&self, i: usize, restart: bool) -> bool {
        let n = &self.nodes[i];
        n.no_restart.store(!restart, Ordering::SeqCst);
        let pid = n.pid.load(Ordering::SeqCst);
        pid != 0 && unsafe { libc::kill(pid as i32, libc::SIGKILL) } == 0
    }

    /// Stops every agent and waits for the supervisors.
    pub async fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for n in &self.nodes {
            let pid = n.pid.load(Ordering::SeqCst);
            if pid != 0 {
                unsafe { libc::kill(pid as i32, libc::SIGTERM) };
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        self.tasks.abort_all();
    }
}

struct Supervisor {
    exe: PathBuf,
    dir: PathBuf,
    name: String,
    pid: Arc<AtomicU32>,
    no_restart: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    reboots: Arc<AtomicUsize>,
    reboot_ms: u64,
}

impl Supervisor {
    async fn run(self) {
        loop {
            let log = match std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.join("agent.log"))
            {
                Ok(f) => f,
                Err(_) => return,
            };
            let mut cmd = Command::new(&self.exe);
            cmd.arg("agent").arg("--config").arg(self.dir.join("agent.toml"));
            cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::from(log)).kill_on_drop(true);
            // If the supervising process dies, its agents die with it.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                    Ok(())
                });
            }
            let Ok(mut child) = cmd.spawn() else { return };
            self.pid.store(child.id().unwrap_or(0), Ordering::SeqCst);
            let status = child.wait().await;
            self.pid.store(0, Ordering::SeqCst);
            if self.stop.load(Ordering::SeqCst) || self.no_restart.load(Ordering::SeqCst) {
                return;
            }
            match status.ok().and_then(|s| s.code()) {
                Some(crate::EXIT_REBOOT) => {
                    self.reboots.fetch_add(1, Ordering::SeqCst);
                    // The machine "reboots": down a moment, then up with a new boot id.
                    tokio::time::sleep(Duration::from_millis(self.reboot_ms)).await;
                    let _ = std::fs::remove_file(self.dir.join("state/reboot-required"));
                    let _ = std::fs::write(self.dir.join("boot_id"), random_hex());
                }
                None => {
                    // Killed by a signal (a crash): restart, same boot.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Some(code) => {
                    // Say why where a test's or CI's output shows it: the log's last lines.
                    let log = self.dir.join("agent.log");
                    let text = std::fs::read_to_string(&log).unwrap_or_default();
                    let lines: Vec<&str> = text.lines().collect();
                    eprintln!(
                        "{}: agent exited with {code}; the end of {}:\n{}",
                        self.name,
                        log.display(),
                        lines[lines.len().saturating_sub(10)..].join("\n")
                    );
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn free_ports_are_distinct_and_outside_the_ephemeral_range() {
        let low: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let ports: Vec<u16> = (0..500).map(|_| super::free_port().unwrap()).collect();
        let distinct: std::collections::HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len(), "a port was handed out twice");
        assert!(ports.iter().all(|&p| p < low && p >= 1024), "{ports:?}");
        // And each can be bound.
        for p in &ports[..20] {
            std::net::TcpListener::bind(("127.0.0.1", *p)).unwrap();
        }
    }
}
