//! What runs inside a lab host: its services (started, stopped and killed by pidfile, as an
//! init system would), the web workload, and the update action.
//!
//! A host's directory holds `svc/NAME.json` (the service's argv), `svc/NAME.pid`, `version`,
//! and fault markers the lab writes: `fail-update` (the update action fails),
//! `unhealthy-version` (the workload is broken at that version), `update-delay-ms`.

use crate::error::LabError;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn pidfile(dir: &Path, name: &str) -> PathBuf {
    dir.join("svc").join(format!("{name}.pid"))
}

/// Alive and not a zombie.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s.rsplit_once(')').map(|(_, rest)| !rest.trim_start().starts_with('Z')).unwrap_or(false),
        Err(_) => false,
    }
}

/// Whether the service runs now.
pub fn is_running(dir: &Path, name: &str) -> bool {
    running(dir, name).is_some()
}

fn running(dir: &Path, name: &str) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(pidfile(dir, name)).ok()?.trim().parse().ok()?;
    alive(pid).then_some(pid)
}

pub fn start(dir: &Path, name: &str) -> Result<(), LabError> {
    use std::os::unix::process::CommandExt;
    if running(dir, name).is_some() {
        return Ok(());
    }
    let spec = dir.join("svc").join(format!("{name}.json"));
    let text =
        std::fs::read_to_string(&spec).map_err(|source| LabError::ReadFile { path: spec.clone(), source })?;
    let argv: Vec<String> =
        serde_json::from_str(&text).map_err(|source| LabError::ServiceSpec { path: spec.clone(), source })?;
    let log_path = dir.join("svc").join(format!("{name}.log"));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|source| LabError::OpenFile { path: log_path.clone(), source })?;
    let err = log.try_clone().map_err(|source| LabError::OpenFile { path: log_path.clone(), source })?;
    let child = std::process::Command::new(&argv[0])
        .args(&argv[1..])
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(|source| LabError::StartService { name: name.into(), program: argv[0].clone(), source })?;
    let pid_path = pidfile(dir, name);
    std::fs::write(&pid_path, child.id().to_string())
        .map_err(|source| LabError::WriteFile { path: pid_path, source })?;
    println!("started {name} (pid {})", child.id());
    Ok(())
}

/// Sends `signal` and waits until the service is gone (the agent bounds the wait with
/// `stop_grace`, then kills).
pub fn stop(dir: &Path, name: &str, signal: i32) -> Result<(), LabError> {
    if let Some(pid) = running(dir, name) {
        unsafe { libc::kill(pid, signal) };
        while alive(pid) {
            std::thread::sleep(Duration::from_millis(20));
        }
        println!("stopped {name} (pid {pid})");
    }
    let _ = std::fs::remove_file(pidfile(dir, name));
    Ok(())
}

/// The update action: installs `version` (writes it), unless the lab made it fail.
pub fn set_version(dir: &Path, version: &str) -> Result<(), LabError> {
    let delay = std::fs::read_to_string(dir.join("update-delay-ms"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(300);
    std::thread::sleep(Duration::from_millis(delay));
    use std::io::Write;
    let log_path = dir.join("updates.log");
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|source| LabError::OpenFile { path: log_path, source })?;
    let _ = writeln!(log, "{version}");
    if dir.join("fail-update").exists() {
        return Err(LabError::UpdateFailed { version: version.into() });
    }
    let path = dir.join("version");
    std::fs::write(&path, format!("{version}\n")).map_err(|source| LabError::WriteFile { path, source })?;
    println!("installed {version}");
    Ok(())
}

/// The web workload: answers with its host and version; broken at the version named in
/// `unhealthy-version`. Finishes the requests it has on SIGTERM.
pub async fn web(listen: &str, dir: &Path, host: &str) -> Result<(), LabError> {
    use axum::http::StatusCode;
    let version = std::fs::read_to_string(dir.join("version")).unwrap_or_default().trim().to_string();
    let broken =
        std::fs::read_to_string(dir.join("unhealthy-version")).map(|v| v.trim() == version).unwrap_or(false);
    let body = format!("{host} {version}\n");
    let status = if broken { StatusCode::INTERNAL_SERVER_ERROR } else { StatusCode::OK };
    let b = body.clone();
    let app = axum::Router::new()
        .route("/", axum::routing::get(move || async move { (status, b) }))
        .route("/healthz", axum::routing::get(move || async move { (status, body) }));
    let l = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| LabError::Listen { addr: listen.into(), source })?;
    println!("web on {listen}, version {version}{}", if broken { " (broken)" } else { "" });
    axum::serve(l, app)
        .with_graceful_shutdown(async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal");
            term.recv().await;
        })
        .await
        .map_err(|source| LabError::Serve { source })
}
