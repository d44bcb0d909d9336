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

/// The address floods come from: "outside", not the orchestrator's or the operator's 127.0.0.1.
const OUTSIDE: &str = "127.0.0.2";

/// Opens `n` TCP connections to `addr` from [`OUTSIDE`] that never say anything.
async fn idle(addr: &str, n: usize) -> Vec<tokio::net::TcpStream> {
    let to: std::net::SocketAddr = addr.parse().unwrap();
    let mut held = Vec::with_capacity(n);
    for i in 0..n {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind(format!("{OUTSIDE}:0").parse().unwrap()).unwrap();
        held.push(s.connect(to).await.unwrap_or_else(|e| panic!("connection {i} to {addr}: {e}")));
    }
    held
}

/// Whether the other end closes `s` before `deadline` (a read ends or fails instead of waiting).
async fn closed_by(s: &mut tokio::net::TcpStream, deadline: Instant) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 512];
    loop {
        match tokio::time::timeout_at(deadline.into(), s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            // An answer (an error page) before the close: keep reading.
            Ok(Ok(_)) => continue,
        }
    }
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
    let mut held = idle(&api, FLOOD).await;
    for n in &f.nodes {
        held.extend(idle(&n.addr, FLOOD).await);
    }
    let toml = LocalFleet::campaign_toml("")
        .replace("health_stable = \"2s\"", "health_stable = \"300ms\"")
        .replace("health_wait = \"1s\"", "health_wait = \"0s\"");
    let created = tokio::time::timeout(Duration::from_secs(30), serve.create_and_start(toml.clone())).await;
    let v = created.expect("the API answered while flooded");
    let end = serve
        .wait(v.id, Duration::from_secs(60), |v| {
            v.phase == Phase::Completed && v.active == 0 && !v.holds_fleet
        })
        .await;
    assert_eq!(end.updated, 2);
    assert_eq!(held.len(), 3 * FLOOD);
    budgets_kept(&f, &toml, &serve.events(v.id).await);
    drop(held);
    drop(serve);
    f.stop().await;
}

/// A connection over the cap for its address is closed at once, while other addresses are still
/// served; a silent connection and a half-sent request are closed once the header-read time is
/// up. Before: `baton serve` held both for as long as the peer liked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_closes_what_is_over_its_caps_and_what_never_finishes_a_request() {
    use tokio::io::AsyncWriteExt;
    let mut f = local("api-caps", LocalOptions { nodes: 1, ..Default::default() }).await;
    let port = port();
    let serve = Serve::start(&f, port).await;
    let api = format!("127.0.0.1:{port}");
    let opened = Instant::now();
    let mut flood = idle(&api, baton_net::PER_PEER + 40).await;
    let mut half = tokio::net::TcpStream::connect(&api).await.unwrap();
    half.write_all(b"GET /v1/campaigns HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorizat").await.unwrap();

    // The 40 over the cap are closed at once (well before the header-read time).
    let soon = Instant::now() + Duration::from_secs(3);
    let mut closed_at_once = 0;
    for s in flood.iter_mut().skip(baton_net::PER_PEER) {
        closed_at_once += usize::from(closed_by(s, soon).await);
    }
    assert_eq!(closed_at_once, 40, "every connection over the per-address cap is closed at once");
    // This address is still served while the flood holds its cap.
    let r =
        serve.http.get(format!("{}/v1/campaigns", serve.url)).bearer_auth(&serve.token).send().await.unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    // The held ones, silent or half-sent, are closed once the header-read time (10 s) is up.
    let later = opened + Duration::from_secs(25);
    assert!(closed_by(&mut half, later).await, "a half-sent request is not held open");
    let mut closed_later = 0;
    for s in flood.iter_mut().take(baton_net::PER_PEER) {
        closed_later += usize::from(closed_by(s, later).await);
    }
    assert_eq!(
        closed_later,
        baton_net::PER_PEER,
        "every silent connection is closed after the header-read time"
    );
    assert!(opened.elapsed() >= Duration::from_secs(9), "not before the header-read time");
    drop(serve);
    f.stop().await;
}

/// The agent: a TCP connection that never starts TLS is closed after the handshake time, and one
/// that finishes mutual TLS with the orchestrator's own certificate and then sends half a request
/// is closed after the header-read time. Before: both were held indefinitely.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_closes_a_silent_connection_and_a_half_sent_request() {
    use std::io::{Read, Write};
    let mut f = local("agent-timeouts", LocalOptions { nodes: 1, ..Default::default() }).await;
    let node = &f.nodes[0];
    let opened = Instant::now();
    let mut silent = idle(&node.addr, 1).await.pop().unwrap();
    let files = baton_pki::TlsFiles::in_dir(&f.pki, "orchestrator");
    let cfg = std::sync::Arc::new(files.client_config().unwrap());
    let addr = node.addr.clone();
    let name = node.name.clone();
    let half = tokio::task::spawn_blocking(move || {
        let server = rustls::pki_types::ServerName::try_from(name.clone()).unwrap();
        let conn = rustls::ClientConnection::new(cfg, server).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, std::net::TcpStream::connect(&addr).unwrap());
        tls.write_all(format!("GET /v1/status HTTP/1.1\r\nHost: {name}\r\nX-Half: ").as_bytes()).unwrap();
        tls.flush().unwrap();
        tls.sock.set_read_timeout(Some(Duration::from_secs(25))).unwrap();
        let mut buf = [0u8; 256];
        let r = tls.read(&mut buf);
        // Closed: EOF, a reset or a TLS close; open at the deadline: WouldBlock/TimedOut.
        !matches!(&r, Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut))
    });
    assert!(
        closed_by(&mut silent, opened + Duration::from_secs(25)).await,
        "a connection without TLS is closed"
    );
    assert!(half.await.unwrap(), "a half-sent request after a valid handshake is closed");
    assert!(opened.elapsed() >= Duration::from_secs(9), "not before the handshake and header-read times");
    // The agent still answers the orchestrator.
    let st = client(&f).status(&node.name, &node.addr, None, 0).await;
    assert!(st.is_ok(), "{st:?}");
    f.stop().await;
}
