//! Lab hosts as network namespaces on one bridge, in a subnet the lab owns. The namespaces get
//! an address on the bridge's subnet and no default route, and nothing forwards or NATs out
//! of it: lab traffic stays between the hosts and this machine.

use crate::error::LabError;
use std::process::Command;
use std::time::{Duration, Instant};

pub const BRIDGE: &str = "btl0";
pub const PREFIX: &str = "btl-";
/// The lab's subnet: the bridge is .1, host i is .(10 + i).
pub const SUBNET: &str = "10.213.0";

pub fn host_ip(i: usize) -> String {
    format!("{SUBNET}.{}", 10 + i)
}

pub fn ns_name(host: &str) -> String {
    format!("{PREFIX}{host}")
}

fn owned(argv: &[&str]) -> Vec<String> {
    argv.iter().map(|s| s.to_string()).collect()
}

/// Runs a command; its failure is an error naming it and what it printed.
pub fn sh(argv: &[&str]) -> Result<String, LabError> {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .map_err(|source| LabError::Run { argv: owned(argv), source })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(LabError::Command {
            argv: owned(argv),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// The bridge, with the orchestrator's side of the lab subnet.
pub fn bridge_up() -> Result<(), LabError> {
    sh(&["ip", "link", "add", BRIDGE, "type", "bridge"])?;
    sh(&["ip", "addr", "add", &format!("{SUBNET}.1/24"), "dev", BRIDGE])?;
    sh(&["ip", "link", "set", BRIDGE, "up"])?;
    Ok(())
}

/// One host: a namespace with loopback and eth0 on the bridge.
pub fn host_up(host: &str, i: usize) -> Result<(), LabError> {
    let ns = ns_name(host);
    let (outer, inner) = (format!("{PREFIX}{host}"), format!("{PREFIX}{host}p"));
    sh(&["ip", "netns", "add", &ns])?;
    sh(&["ip", "link", "add", &outer, "type", "veth", "peer", "name", &inner])?;
    sh(&["ip", "link", "set", &outer, "master", BRIDGE])?;
    sh(&["ip", "link", "set", &outer, "up"])?;
    sh(&["ip", "link", "set", &inner, "netns", &ns])?;
    let x = |args: &[&str]| {
        let mut v = vec!["ip", "netns", "exec", &ns];
        v.extend_from_slice(args);
        sh(&v)
    };
    x(&["ip", "link", "set", &inner, "name", "eth0"])?;
    x(&["ip", "addr", "add", &format!("{}/24", host_ip(i)), "dev", "eth0"])?;
    x(&["ip", "link", "set", "eth0", "up"])?;
    x(&["ip", "link", "set", "lo", "up"])?;
    Ok(())
}

/// The pids of every process in the namespace.
pub fn ns_pids(ns: &str) -> Vec<i32> {
    sh(&["ip", "netns", "pids", ns])
        .map(|s| s.split_whitespace().filter_map(|p| p.parse().ok()).collect())
        .unwrap_or_default()
}

/// Stops every process of the namespace as a shutdown does: SIGTERM, a grace, then SIGKILL.
pub fn kill_all(ns: &str, grace: Duration) {
    for p in ns_pids(ns) {
        unsafe { libc::kill(p, libc::SIGTERM) };
    }
    let t = Instant::now();
    while !ns_pids(ns).is_empty() && t.elapsed() < grace {
        std::thread::sleep(Duration::from_millis(50));
    }
    let t = Instant::now();
    loop {
        let left = ns_pids(ns);
        if left.is_empty() || t.elapsed() > Duration::from_secs(5) {
            break;
        }
        for p in left {
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kills the host's agent alone (SIGKILL), as a crash of the agent: its services go on, and the
/// lab's supervisor starts it again in the same boot.
pub fn kill_agent(ns: &str) -> bool {
    let mut killed = false;
    for p in ns_pids(ns) {
        let cmdline = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if args.iter().any(|a| *a == b"agent") && args.iter().any(|a| *a == b"--config") {
            killed |= unsafe { libc::kill(p, libc::SIGKILL) } == 0;
        }
    }
    killed
}

/// Cuts the host's agent off from the orchestrator: packets to and from its port are dropped
/// (not refused), as a network partition does; connections already open hang too.
pub fn cut_agent(host: &str, port: u16) -> Result<(), LabError> {
    filter(host, port, "-I")
}

pub fn heal_agent(host: &str, port: u16) -> Result<(), LabError> {
    filter(host, port, "-D")
}

fn filter(host: &str, port: u16, op: &str) -> Result<(), LabError> {
    let (ns, p) = (ns_name(host), port.to_string());
    sh(&["ip", "netns", "exec", &ns, "iptables", op, "INPUT", "-p", "tcp", "--dport", &p, "-j", "DROP"])?;
    sh(&["ip", "netns", "exec", &ns, "iptables", op, "OUTPUT", "-p", "tcp", "--sport", &p, "-j", "DROP"])?;
    Ok(())
}

/// Removes every namespace, link and process of a lab, this one's or one left by a crash.
pub fn teardown() {
    let list = sh(&["ip", "netns", "list"]).unwrap_or_default();
    for ns in list.lines().filter_map(|l| l.split_whitespace().next()).filter(|n| n.starts_with(PREFIX)) {
        kill_all(ns, Duration::from_secs(2));
        let _ = sh(&["ip", "netns", "del", ns]);
    }
    let links = sh(&["ip", "-o", "link", "show"]).unwrap_or_default();
    for l in links.lines() {
        if let Some(name) = l.split(':').nth(1).map(|s| s.trim().split('@').next().unwrap_or("")) {
            if name == BRIDGE || name.starts_with(PREFIX) {
                let _ = sh(&["ip", "link", "del", name]);
            }
        }
    }
}
