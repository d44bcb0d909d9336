//! Agent memory and orchestrator overhead on real processes over loopback.
//!
//! cargo bench -p baton-cli --bench orchestrator
//!
//! - agent RSS at idle and while its action runs (from /proc/PID/status, VmRSS);
//! - orchestrator overhead per step: from the moment the driver takes an agent's report to the
//!   moment the commands that follow are handed to their jobs, which includes journaling the
//!   event to SQLite with synchronous=FULL; baseline in the same run: the journal append alone.

use baton_agent::local::{random_hex, LocalFleet, LocalOptions};
use baton_core::campaign::Event;
use baton_proto::Phase;
use baton_proto::{CreateCampaign, StepKind, StepState};
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
}

fn pct(v: &mut [u64], p: f64) -> u64 {
    v.sort_unstable();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    baton_pki::install_default_provider();
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_baton"));
    let runs = 3;
    let nodes = 10;
    let mut idle = Vec::new();
    let mut busy = Vec::new();
    let mut overhead = Vec::new();
    let mut baseline = Vec::new();
    for run in 0..runs {
        let dir = std::env::temp_dir().join(format!("baton-bench-{}-{run}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let o = LocalOptions { nodes, action_seconds: "1".into(), reboot_ms: 200, ..Default::default() };
        let mut f = LocalFleet::create(&dir, &o).unwrap();
        f.start(&exe, o.reboot_ms);
        let tls = baton_pki::TlsFiles::in_dir(&f.pki, "orchestrator");
        let client = baton_server::client::AgentClient::new(&tls).unwrap();
        for n in &f.nodes {
            let t = Instant::now();
            while client.status(&n.name, &n.addr, None, 0).await.is_err() {
                assert!(t.elapsed() < Duration::from_secs(20));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        for n in &f.nodes {
            idle.extend(rss_kib(n.pid.load(std::sync::atomic::Ordering::SeqCst)));
        }
        let hub = baton_server::Hub::start(baton_server::Settings {
            fleet_file: f.fleet_file.display().to_string(),
            fleet_text: f.fleet_text.clone(),
            db: dir.join("baton.db"),
            tls: tls.clone(),
            token: random_hex(),
            open_reads: false,
            public_host: None,
            webhook_ca: None,
            test_clock: false,
            allowed_hooks: Vec::new(),
        })
        .await
        .unwrap();
        let v = hub.create(CreateCampaign { toml: LocalFleet::campaign_toml(""), file: None }).await.unwrap();
        hub.act(v.id, "start", "bench".into()).await.unwrap();
        // Sample the agents whose action is running until the campaign settles.
        let samples = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sampler = {
            let samples = samples.clone();
            let addrs: Vec<(String, String, std::sync::Arc<std::sync::atomic::AtomicU32>)> =
                f.nodes.iter().map(|n| (n.name.clone(), n.addr.clone(), n.pid.clone())).collect();
            let client = client.clone();
            tokio::spawn(async move {
                loop {
                    for (node, addr, pid) in &addrs {
                        if let Ok(s) = client.status(node, addr, None, 0).await {
                            if s.step.is_some_and(|st| {
                                st.kind == StepKind::Action && st.state == StepState::Running
                            }) {
                                let r = rss_kib(pid.load(std::sync::atomic::Ordering::SeqCst));
                                samples.lock().unwrap().extend(r);
                            }
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        };
        let end = tokio::time::timeout(
            Duration::from_secs(300),
            hub.wait_view(v.id, |v| v.phase == Phase::Completed && v.active == 0),
        )
        .await
        .expect("campaign completes")
        .unwrap();
        assert_eq!(end.updated, nodes);
        sampler.abort();
        busy.extend(samples.lock().unwrap().iter().copied());
        overhead.extend(hub.overhead_us(v.id));
        // Baseline: the journal append alone, on the same disk, in the same run.
        let store = baton_server::store::Store::open(&dir.join("baseline.db")).unwrap();
        let c = store
            .create(
                "b",
                &baton_server::store::StoredCampaign {
                    id: 0,
                    fleet_file: String::new(),
                    fleet_text: String::new(),
                    campaign_file: String::new(),
                    campaign_text: String::new(),
                    raised: String::new(),
                },
                0,
                &Event::Tick,
                None,
            )
            .unwrap();
        for i in 0..50 {
            let t = Instant::now();
            store
                .append(
                    c,
                    i,
                    &Event::Health { node: "node1".into(), healthy: true, version: None, detail: None },
                )
                .unwrap();
            baseline.push(t.elapsed().as_micros() as u64);
        }
        f.stop().await;
        let _ = std::fs::remove_dir_all(&dir);
    }
    // Samples while the action runs are taken on agents the sampler caught running.
    println!("runs: {runs} campaigns of {nodes} real agents each");
    println!("agent RSS idle: median {} KiB over {} samples", pct(&mut idle, 0.5), idle.len());
    if !busy.is_empty() {
        println!(
            "agent RSS during an action: median {} KiB, max {} KiB over {} samples",
            pct(&mut busy, 0.5),
            pct(&mut busy, 1.0),
            busy.len()
        );
    }
    let n = overhead.len();
    println!(
        "report -> next command: median {} µs, p99 {} µs over {n} steps",
        pct(&mut overhead, 0.5),
        pct(&mut overhead, 0.99)
    );
    println!(
        "baseline, journal append alone: median {} µs, p99 {} µs over {} appends",
        pct(&mut baseline, 0.5),
        pct(&mut baseline, 0.99),
        baseline.len()
    );
}
