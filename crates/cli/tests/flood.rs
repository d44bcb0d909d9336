//! Issue 11, item 1: idle TCP connections from anyone who can reach the ports made the API stop
//! answering once the process was at the open-files limit systemd gives a service by default
//! (1024). Real processes, started at that limit; the flood comes from this test over loopback.
//! Its own test binary, since it changes the test process's limits (children inherit them).

mod support;

use support::*;

fn set_soft_nofile(soft: u64) -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit on this process with a valid pointer to a local.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        let hard = lim.rlim_max;
        lim.rlim_cur = soft.min(hard);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
        hard
    }
}

/// Opens `n` TCP connections to `addr` that never say anything.
fn idle(addr: &str, n: usize) -> Vec<std::net::TcpStream> {
    (0..n)
        .map(|i| {
            std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connection {i} to {addr}: {e}"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_idle_connections_per_port_do_not_stop_a_campaign() {
    const FLOOD: usize = 1_100;
    // The processes start at systemd's default soft limit; the test itself needs more after.
    let hard = set_soft_nofile(1024);
    if hard < 4 * FLOOD as u64 + 1024 {
        eprintln!("skipped: the hard open-files limit ({hard}) is too low for the flood");
        return;
    }
    let mut f = local(
        "flood",
        LocalOptions { nodes: 2, action_seconds: "0.2".into(), reboot_ms: 200, ..Default::default() },
    )
    .await;
    let port = port();
    let serve = Serve::start(&f, port).await;
    set_soft_nofile(hard);
    let api = format!("127.0.0.1:{port}");
    let mut held = idle(&api, FLOOD);
    for n in &f.nodes {
        held.extend(idle(&n.addr, FLOOD));
    }
    let toml = LocalFleet::campaign_toml("")
        .replace("health_stable = \"2s\"", "health_stable = \"300ms\"")
        .replace("health_wait = \"1s\"", "health_wait = \"0s\"");
    let created = tokio::time::timeout(Duration::from_secs(30), serve.create_and_start(toml.clone())).await;
    let v = created.expect("the API answered while flooded");
    let end =
        serve.wait(v.id, Duration::from_secs(60), |v| v.phase == Phase::Completed && v.active == 0).await;
    assert_eq!(end.updated, 2);
    assert_eq!(held.len(), 3 * FLOOD);
    budgets_kept(&f, &toml, &serve.events(v.id).await);
    drop(held);
    drop(serve);
    f.stop().await;
}
