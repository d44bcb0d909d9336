//! What can go wrong in the lab: one variant per failing operation, each with its cause.
//!
//! The messages are what the lab prints (`error: ...` on its last line, or a fault case's
//! `why`); each names what was being done and, when there is one, the error underneath.

use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    // --- Preconditions (main.rs)
    #[error("the lab makes network namespaces and needs root: run it with sudo")]
    NotRoot,
    #[error("{command} is missing: apt-get install {package} (lab/zero-downtime installs it)")]
    MissingTool { command: &'static str, package: &'static str },
    #[error("--hosts: the lab needs at least 3 hosts (etcd runs on three)")]
    TooFewHosts { hosts: usize },
    #[error("cannot find this program: {source}")]
    CurrentExe { source: io::Error },
    #[error("no baton binary at {}: build it (cargo build --release -p baton-cli) or pass --baton", path.display())]
    NoBaton { path: PathBuf },
    #[error("no fault case {name}; the cases are {}", crate::cases::CASES.join(", "))]
    UnknownCase { name: String },
    #[error("cannot start the async runtime: {source}")]
    Runtime { source: io::Error },
    /// Ctrl-C.
    #[error("interrupted")]
    Interrupted,
    /// SIGTERM.
    #[error("terminated")]
    Terminated,

    // --- Commands (net.rs) and processes
    #[error("cannot run {}: {source}", argv.join(" "))]
    Run { argv: Vec<String>, source: io::Error },
    /// The command ran and exited unsuccessfully; `stderr` is what it printed, trimmed.
    #[error("{} failed: {stderr}", argv.join(" "))]
    Command { argv: Vec<String>, status: ExitStatus, stderr: String },
    #[error("cannot start haproxy: {source}")]
    StartHaproxy { source: io::Error },
    #[error("cannot start {}: {source}", baton.display())]
    StartOrchestrator { baton: PathBuf, source: io::Error },
    #[error("cannot start the agent of {host}: {source}")]
    StartAgent { host: String, source: io::Error },
    /// A host's service (svc.rs); `program` is its argv[0].
    #[error("cannot start {name} ({program}): {source}")]
    StartService { name: String, program: String, source: io::Error },
    #[error("no free port on loopback: {source}")]
    NoFreePort { source: io::Error },

    // --- Files
    #[error("{}: {source}", path.display())]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("{}: {source}", path.display())]
    ReadFile { path: PathBuf, source: io::Error },
    #[error("{}: {source}", path.display())]
    WriteFile { path: PathBuf, source: io::Error },
    /// Opening (or duplicating the handle of) a log or other file kept open.
    #[error("{}: {source}", path.display())]
    OpenFile { path: PathBuf, source: io::Error },
    /// A service's `svc/NAME.json` is not a JSON list of strings.
    #[error("{}: {source}", path.display())]
    ServiceSpec { path: PathBuf, source: serde_json::Error },
    #[error("{source}")]
    InvalidFleet { path: PathBuf, source: Box<baton_core::Diagnostic> },
    #[error("creating the lab's CA: {source}")]
    InitCa { source: baton_pki::PkiError },
    #[error("issuing the certificate of {name}: {source}")]
    IssueCert { name: String, source: baton_pki::PkiError },

    // --- The update action and the web workload (svc.rs)
    /// The lab's `fail-update` marker made the update action fail.
    #[error("installing {version}: the package's post-install script failed")]
    UpdateFailed { version: String },
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: String, source: io::Error },
    #[error("the web workload stopped: {source}")]
    Serve { source: io::Error },

    // --- Talking to the orchestrator and HAProxy
    #[error("cannot build the HTTP client: {source}")]
    HttpClient { source: reqwest::Error },
    /// The request could not be sent or its answer not read.
    #[error("orchestrator: {source}")]
    Orchestrator { source: reqwest::Error },
    #[error("orchestrator answered {status}: {body}")]
    OrchestratorStatus { status: reqwest::StatusCode, body: String },
    /// The answer is not the JSON expected.
    #[error("orchestrator: {source}")]
    OrchestratorBody { source: reqwest::Error },
    #[error("{source}")]
    HaproxyStat { host: String, source: baton_server::haproxy::LbError },
    #[error("cannot print a result line: {source}")]
    PrintLine { source: serde_json::Error },

    // --- Waiting
    #[error("the lab did not come up within 60 s (orchestrator {api}, haproxy {lb}, etcd {etcd}); logs in {}", dir.display())]
    NotUp { api: bool, lb: bool, etcd: bool, dir: PathBuf },
    #[error("timed out waiting for {what}")]
    Timeout { what: String },
    #[error("campaign still {phase} after {secs} s")]
    CampaignTimeout { phase: String, secs: u64 },
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error;

    #[test]
    fn messages_name_the_operation_and_keep_the_cause() {
        let e = crate::net::sh(&["sh", "-c", "echo oops >&2; exit 3"]).unwrap_err();
        assert!(matches!(&e, LabError::Command { status, .. } if status.code() == Some(3)));
        assert_eq!(e.to_string(), "sh -c echo oops >&2; exit 3 failed: oops");
        let e = crate::net::sh(&["/nonexistent/baton-lab-test"]).unwrap_err();
        assert!(e.to_string().starts_with("cannot run /nonexistent/baton-lab-test: "));
        assert!(e.source().is_some());
        assert_eq!(
            LabError::NoBaton { path: "/x/baton".into() }.to_string(),
            "no baton binary at /x/baton: build it (cargo build --release -p baton-cli) or pass --baton"
        );
        assert!(LabError::UnknownCase { name: "nope".into() }
            .to_string()
            .starts_with("no fault case nope; the cases are reboot-never-returns, update-fails, "));
        assert_eq!(
            LabError::CampaignTimeout { phase: "running".into(), secs: 600 }.to_string(),
            "campaign still running after 600 s"
        );
    }
}
