//! `baton hollow`: many real agents on simulated hosts, for scale tests. One process holds
//! as many as its open-files limit allows; beyond that, the fleet is spread over child
//! processes (`--part I/K`), each running every K-th node.

use crate::Failure;
use baton_agent::hollow::HollowFleet;
use std::time::Duration;
use tokio::io::AsyncBufReadExt;

/// Runs `f`'s agents in this process; prints `ready FLEET-FILE` once each takes connections,
/// then runs until Ctrl-C or SIGTERM.
pub async fn run_here(f: HollowFleet, fleet: String) -> Result<(), Failure> {
    let addrs = f.addrs();
    let (tx, rx) = tokio::sync::watch::channel(false);
    let mut run = tokio::spawn(f.run(rx));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Failure::Internal(format!("no SIGTERM handler: {e}")))?;
    // Ready when every agent takes connections.
    let all = async {
        for a in &addrs {
            while tokio::net::TcpStream::connect(a).await.is_err() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    tokio::select! {
        _ = all => {}
        r = &mut run => return Err(stopped("did not start", r)),
        _ = tokio::signal::ctrl_c() => return Ok(()),
        _ = term.recv() => return Ok(()),
    }
    println!("ready {fleet}");
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        // The agents stopping by themselves is an error (a port taken, a journal not readable).
        r = &mut run => return Err(stopped("stopped", r)),
    }
    let _ = tx.send(true);
    Ok(())
}

fn stopped(
    what: &str,
    r: Result<Result<usize, baton_agent::hollow::HollowError>, tokio::task::JoinError>,
) -> Failure {
    let why = match r {
        Ok(Ok(_)) => "no agent is left".to_string(),
        Ok(Err(e)) => e.to_string(),
        Err(e) => e.to_string(),
    };
    Failure::Internal(format!("the hollow agents {what}: {why}"))
}

/// Runs the fleet as `k` child processes of this binary (`args` plus `--part I/K`); prints
/// `ready FLEET-FILE` once each is ready, and stops them all when stopped or when one ends.
pub async fn run_parts(args: Vec<String>, k: usize, fleet: String) -> Result<(), Failure> {
    let exe =
        std::env::current_exe().map_err(|e| Failure::Internal(format!("cannot find this program: {e}")))?;
    let mut children = Vec::new();
    let mut ready = tokio::task::JoinSet::new();
    for i in 0..k {
        let mut cmd = tokio::process::Command::new(&exe);
        cmd.arg("hollow").args(&args).arg("--part").arg(format!("{i}/{k}"));
        cmd.stdout(std::process::Stdio::piped()).kill_on_drop(true);
        // If this process dies, its parts die with it.
        // SAFETY: prctl in the child before exec; it touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|e| Failure::Internal(format!("cannot start part {i}: {e}")))?;
        let out = child.stdout.take().expect("piped");
        ready.spawn(async move {
            let mut line = String::new();
            let n = tokio::io::BufReader::new(out).read_line(&mut line).await.unwrap_or(0);
            (i, n > 0 && line.starts_with("ready "))
        });
        children.push(child);
    }
    while let Some(r) = ready.join_next().await {
        match r {
            Ok((_, true)) => {}
            Ok((i, false)) => {
                return Err(Failure::Internal(format!("part {i} of the hollow agents did not start")))
            }
            Err(e) => return Err(Failure::Internal(e.to_string())),
        }
    }
    eprintln!("hollow: {k} processes");
    println!("ready {fleet}");
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Failure::Internal(format!("no SIGTERM handler: {e}")))?;
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let mut waits = tokio::task::JoinSet::new();
    for (i, mut c) in children.into_iter().enumerate() {
        let mut stopping = stopping.clone();
        waits.spawn(async move {
            tokio::select! {
                r = c.wait() => (i, r),
                _ = stopping.changed() => {
                    // `id` is None once the child is reaped: a pid is never signalled after it
                    // may have been reused.
                    if let Some(pid) = c.id() {
                        // SAFETY: a signal to a child of this process that is not reaped yet.
                        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
                    }
                    (i, c.wait().await)
                }
            }
        });
    }
    let ended = tokio::select! {
        _ = tokio::signal::ctrl_c() => None,
        _ = term.recv() => None,
        Some(r) = waits.join_next() => r.ok(),
    };
    let _ = stop.send(true);
    let _ =
        tokio::time::timeout(Duration::from_secs(10), async { while waits.join_next().await.is_some() {} })
            .await;
    match ended {
        None => Ok(()),
        Some((i, r)) => Err(Failure::Internal(format!("part {i} of the hollow agents ended: {r:?}"))),
    }
}
