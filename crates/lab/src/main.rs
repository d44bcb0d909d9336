//! `baton-lab`: proves a rollout keeps a real service whole. It builds a lab of hosts in
//! network namespaces (needs root), runs real HAProxy and a real etcd quorum on them, rolls an
//! update across them with baton under load, and prints one JSON object per line.

mod cases;
mod error;
mod lab;
mod load;
mod net;
mod svc;

use clap::{Parser, Subcommand};
use error::LabError;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "baton-lab", about = "baton's zero-downtime lab (needs root)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Roll 1.0 -> 1.1 across the lab under load; the last line is the summary.
    ZeroDowntime {
        #[arg(long, default_value_t = 6)]
        hosts: usize,
        /// The `baton` binary (default: next to this one).
        #[arg(long)]
        baton: Option<PathBuf>,
        /// Keep the lab's directory (configs, logs) after teardown.
        #[arg(long)]
        keep: bool,
    },
    /// Run each fault case on a fresh lab under load; the last line is the summary.
    Faults {
        /// Only these cases (default: all).
        #[arg(long = "case")]
        cases: Vec<String>,
        #[arg(long)]
        baton: Option<PathBuf>,
        #[arg(long)]
        keep: bool,
    },
    /// Remove what a lab left behind (namespaces, links, processes).
    Teardown,
    /// Inside a host: start, stop or kill one of its services.
    #[command(hide = true)]
    Svc {
        #[arg(value_parser = ["start", "stop", "kill"])]
        what: String,
        #[arg(long)]
        dir: PathBuf,
        name: String,
    },
    /// Inside a host: the update action.
    #[command(hide = true)]
    SetVersion {
        #[arg(long)]
        dir: PathBuf,
        version: String,
    },
    /// Inside a host: the web workload.
    #[command(hide = true)]
    Web {
        #[arg(long)]
        listen: String,
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        host: String,
    },
}

fn exes(baton: Option<PathBuf>) -> Result<cases::Exes, LabError> {
    let lab = std::env::current_exe().map_err(|source| LabError::CurrentExe { source })?;
    let baton = baton.unwrap_or_else(|| lab.with_file_name("baton"));
    if !baton.exists() {
        return Err(LabError::NoBaton { path: baton });
    }
    Ok(cases::Exes { baton, lab })
}

fn need_root() -> Result<(), LabError> {
    if unsafe { libc::geteuid() } != 0 {
        return Err(LabError::NotRoot);
    }
    for (cmd, pkg) in [
        ("haproxy", "haproxy"),
        ("etcd", "etcd-server"),
        ("etcdctl", "etcd-client"),
        ("iptables", "iptables"),
    ] {
        if net::sh(&["sh", "-c", &format!("command -v {cmd}")]).is_err() {
            return Err(LabError::MissingTool { command: cmd, package: pkg });
        }
    }
    Ok(())
}

/// Runs a lab command; Ctrl-C or SIGTERM tears the lab down before exiting.
fn lab_main<F: std::future::Future<Output = Result<bool, LabError>>>(f: impl FnOnce() -> F) -> ExitCode {
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let r = rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            r = f() => r,
            _ = tokio::signal::ctrl_c() => Err(LabError::Interrupted),
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => Err(LabError::Terminated),
        }
    });
    // Whatever happened, nothing of the lab stays behind.
    net::teardown();
    match r {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // reqwest's TLS needs a provider even for plain http clients.
    baton_pki::install_default_provider();
    let done = |r: Result<(), LabError>| match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    };
    match cli.cmd {
        Cmd::ZeroDowntime { hosts, baton, keep } => lab_main(|| async move {
            need_root()?;
            if hosts < 3 {
                return Err(LabError::TooFewHosts { hosts });
            }
            cases::zero_downtime(&exes(baton)?, hosts, keep).await
        }),
        Cmd::Faults { cases: chosen, baton, keep } => lab_main(|| async move {
            need_root()?;
            let exes = exes(baton)?;
            let list: Vec<String> =
                if chosen.is_empty() { cases::CASES.iter().map(|s| s.to_string()).collect() } else { chosen };
            let mut ok = 0;
            for c in &list {
                if cases::fault(&exes, c, keep).await? {
                    ok += 1;
                }
            }
            println!("{}", serde_json::json!({"cases": list.len(), "ok": ok}));
            Ok(ok == list.len())
        }),
        Cmd::Teardown => {
            net::teardown();
            ExitCode::SUCCESS
        }
        Cmd::Svc { what, dir, name } => done(match what.as_str() {
            "start" => svc::start(&dir, &name),
            "stop" => svc::stop(&dir, &name, libc::SIGTERM),
            _ => svc::stop(&dir, &name, libc::SIGKILL),
        }),
        Cmd::SetVersion { dir, version } => done(svc::set_version(&dir, &version)),
        Cmd::Web { listen, dir, host } => {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
            done(
                rt.map_err(|source| LabError::Runtime { source })
                    .and_then(|rt| rt.block_on(svc::web(&listen, &dir, &host))),
            )
        }
    }
}
