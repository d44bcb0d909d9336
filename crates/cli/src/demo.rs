//! `baton demo`: rolls 1.0 → 1.1 across N real agents on loopback.
//!
//! In a temporary directory it sets up a [`LocalFleet`]: a fleet CA and certificates, and one
//! agent process per node whose `upgrade` action "installs" the version and asks for a reboot;
//! a supervisor restarts an agent that exits for a reboot with a fresh boot id. The
//! orchestrator runs in this process on SQLite in the same directory; the campaign is created,
//! started and followed through its HTTP API, exactly as `baton run` does. Every process and
//! file is removed at the end, also on Ctrl-C.

use crate::ops;
use crate::Failure;
use baton_agent::local::{random_hex, LocalFleet, LocalOptions};
use std::io::IsTerminal;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Instant;

pub async fn run(count: usize, hold: bool) -> Result<(), Failure> {
    if count == 0 || count > 200 {
        return Err(crate::flag_error("--nodes", format!("{count} nodes"), "use 1 to 200"));
    }
    let tmp = std::env::temp_dir().join(format!("baton-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let opts = LocalOptions { nodes: count, ..Default::default() };
    let mut fleet = LocalFleet::create(&tmp, &opts).map_err(|e| Failure::Internal(e.to_string()))?;
    let exe = std::env::current_exe().map_err(|e| Failure::Internal(e.to_string()))?;
    fleet.start(&exe, opts.reboot_ms);
    let result = tokio::select! {
        r = demo(&tmp, &fleet, count, hold) => r,
        _ = interrupted() => Err(Failure::Interrupted),
    };
    fleet.stop().await;
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

/// Ctrl-C, SIGTERM or a closed terminal (SIGHUP): the demo cleans up either way.
async fn interrupted() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut hup)) = (signal(SignalKind::terminate()), signal(SignalKind::hangup())) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        _ = hup.recv() => {}
    }
}

async fn demo(tmp: &Path, fleet: &LocalFleet, count: usize, hold: bool) -> Result<(), Failure> {
    let t0 = Instant::now();
    let internal = |e: &dyn std::fmt::Display| Failure::Internal(e.to_string());
    let token = random_hex();
    let tls = baton_pki::TlsFiles::in_dir(&fleet.pki, "orchestrator");
    let settings = baton_server::Settings {
        fleet_file: fleet.fleet_file.display().to_string(),
        fleet_text: fleet.fleet_text.clone(),
        db: tmp.join("baton.db"),
        tls: tls.clone(),
        token: token.clone(),
        // A throwaway orchestrator on loopback: its dashboard opens without the token.
        open_reads: true,
        public_host: None,
        webhook_ca: None,
        test_clock: false,
        allowed_hooks: Vec::new(),
    };
    let hub = baton_server::Hub::start(settings).await.map_err(|e| internal(&e))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| internal(&e))?;
    let url = format!("http://{}", listener.local_addr().map_err(|e| internal(&e))?);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(baton_server::serve(hub.clone(), listener, async {
        let _ = stop_rx.await;
    }));
    println!(
        "baton demo: {count} agents on loopback (mutual TLS), orchestrator at {url}, files in {}",
        tmp.display()
    );
    println!("dashboard: {url}/");
    // Reads are open in the demo; pause, resume and abort on the dashboard need the token.
    let token_file = tmp.join("operator.token");
    baton_pki::write_private(&token_file, token.as_bytes()).map_err(|e| internal(&e))?;
    println!("operator token (for the dashboard's pause, resume and abort): {}", token_file.display());

    let api = ops::Api::new(&url, Some(token));
    let v = api.create("demo-campaign.toml", LocalFleet::campaign_toml("")).await.map_err(Failure::Api)?;
    println!(
        "campaign {} planned: {} waves, web allows {} down at once",
        v.name,
        v.waves,
        hub.fleet().services[0].allowance
    );
    api.act(v.id, "start").await.map_err(Failure::Api)?;
    let end = ops::follow(&api, v.id, std::io::stdout().is_terminal()).await.map_err(Failure::Api)?;

    // Ask the agents themselves which version they run.
    let client = baton_server::client::AgentClient::new(&tls).map_err(|e| internal(&e))?;
    let mut at_target = 0;
    let mut steps = 0;
    for n in &fleet.nodes {
        if let Ok(s) = client.status(&n.name, &n.addr, None, 0).await {
            at_target += usize::from(s.version.as_deref() == Some("1.1"));
        }
        steps += client.steps(&n.name, &n.addr).await.map(|s| s.len()).unwrap_or(0);
    }
    let report = format!(
        "summary: {at_target}/{count} nodes report 1.1; campaign {} in {:.1}s; {steps} steps run, {} reboots, {} journal events",
        end.phase,
        t0.elapsed().as_secs_f64(),
        fleet.reboots.load(Ordering::SeqCst),
        end.events
    );
    println!("{report}");
    if hold {
        println!("holding: the dashboard and API stay up at {url}/ until Ctrl-C");
        std::future::pending::<()>().await;
    }
    let _ = stop_tx.send(());
    let _ = server.await;
    if at_target != count || end.phase != baton_proto::Phase::Completed {
        return Err(Failure::Ended(format!(
            "the demo campaign ended {} with {at_target}/{count} nodes at 1.1",
            end.phase
        )));
    }
    Ok(())
}
