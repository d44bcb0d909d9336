//! The HAProxy drain driver against a real HAProxy (Debian's package; `scripts/test.sh`
//! installs it) on loopback, in front of two real HTTP servers.

use baton_core::model::Haproxy;
use baton_server::haproxy;
use std::time::{Duration, Instant};
use tokio::process::Command;

/// An HTTP server answering its name; `/slow` takes `slow_ms`.
async fn backend(name: &'static str, slow_ms: u64) -> u16 {
    let app = axum::Router::new().route("/", axum::routing::get(move || async move { name })).route(
        "/slow",
        axum::routing::get(move || async move {
            tokio::time::sleep(Duration::from_millis(slow_ms)).await;
            name
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    port
}

fn free_port() -> u16 {
    baton_agent::local::free_port().unwrap()
}

struct Proxy {
    _child: tokio::process::Child,
    front: String,
    lb: Haproxy,
}

async fn proxy(name: &str, slow_ms: u64, drain_timeout: u64) -> Proxy {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("haproxy-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (a, b) = (backend("a", slow_ms).await, backend("b", slow_ms).await);
    let front = format!("127.0.0.1:{}", free_port());
    let sock = dir.join("admin.sock");
    let cfg = format!(
        "global\n    stats socket {} mode 600 level admin\n\
         defaults\n    mode http\n    timeout connect 1s\n    timeout client 10s\n    timeout server 10s\n    retries 0\n    option http-server-close\n\
         frontend fe\n    bind {front}\n    default_backend web\n\
         backend web\n    balance roundrobin\n    option httpchk GET /\n    default-server inter 200ms fall 2 rise 1\n\
         \x20   server a 127.0.0.1:{a} check\n    server b 127.0.0.1:{b} check\n",
        sock.display()
    );
    std::fs::write(dir.join("haproxy.cfg"), cfg).unwrap();
    let child = Command::new("haproxy")
        .arg("-db")
        .arg("-q")
        .arg("-f")
        .arg(dir.join("haproxy.cfg"))
        .kill_on_drop(true)
        .spawn()
        .expect("haproxy is installed (scripts/test.sh installs it)");
    let lb = Haproxy {
        socket: sock.display().to_string(),
        backend: "web".into(),
        server: "{node}".into(),
        drain_timeout,
    };
    // Until HAProxy answers and sees both servers up.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let a = haproxy::stat(&lb, "a").await.map(|s| s.status).unwrap_or_default();
        let b = haproxy::stat(&lb, "b").await.map(|s| s.status).unwrap_or_default();
        if a.starts_with("UP") && b.starts_with("UP") {
            break;
        }
        assert!(Instant::now() < deadline, "haproxy did not come up: a {a}, b {b}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Proxy { _child: child, front, lb }
}

async fn get(front: &str, path: &str) -> Result<String, String> {
    let r = reqwest::get(format!("http://{front}{path}")).await.map_err(|e| e.to_string())?;
    if !r.status().is_success() {
        return Err(r.status().to_string());
    }
    r.text().await.map_err(|e| e.to_string())
}

#[tokio::test]
async fn drain_waits_for_sessions_then_maint_and_ready_waits_for_up() {
    baton_pki::install_default_provider();
    let p = proxy("drain", 800, 10_000).await;
    // Two slow requests, one on each server (round robin).
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let f = p.front.clone();
            tokio::spawn(async move { get(&f, "/slow").await })
        })
        .collect();
    // Wait until a has its session, then drain it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while haproxy::stat(&p.lb, "a").await.unwrap().sessions == 0 {
        assert!(Instant::now() < deadline, "the slow request never reached a");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let t = Instant::now();
    let left = haproxy::drain(&p.lb, "a").await.unwrap();
    assert_eq!(left, 0, "drain returned with sessions left");
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "drain did not wait for the session: {:?}",
        t.elapsed()
    );
    assert!(haproxy::stat(&p.lb, "a").await.unwrap().status.starts_with("MAINT"));
    for s in slow {
        let answer = s.await.unwrap();
        assert!(answer.is_ok(), "a request was cut by the drain: {answer:?}");
    }
    // In maintenance: every request goes to b.
    for _ in 0..10 {
        assert_eq!(get(&p.front, "/").await.unwrap(), "b");
    }
    haproxy::ready(&p.lb, "a", Duration::from_secs(10)).await.unwrap();
    assert!(haproxy::stat(&p.lb, "a").await.unwrap().status.starts_with("UP"));
    let mut seen = std::collections::HashSet::new();
    for _ in 0..10 {
        seen.insert(get(&p.front, "/").await.unwrap());
    }
    assert!(seen.contains("a"), "a gets no traffic after ready: {seen:?}");
    // Idempotent: again, as after an orchestrator restart.
    haproxy::ready(&p.lb, "a", Duration::from_secs(10)).await.unwrap();
    // A server that is not in the backend is an error that says so.
    let e = haproxy::drain(&p.lb, "c").await.unwrap_err();
    assert!(e.to_string().contains("not in HAProxy backend web"), "{e}");
}

#[tokio::test]
async fn drain_gives_up_waiting_at_drain_timeout() {
    baton_pki::install_default_provider();
    let p = proxy("timeout", 3_000, 500).await;
    let f = p.front.clone();
    let slow = tokio::spawn(async move { get(&f, "/slow").await });
    let deadline = Instant::now() + Duration::from_secs(5);
    let busy = loop {
        let a = haproxy::stat(&p.lb, "a").await.unwrap().sessions;
        let b = haproxy::stat(&p.lb, "b").await.unwrap().sessions;
        if a + b > 0 {
            break if a > 0 { "a" } else { "b" };
        }
        assert!(Instant::now() < deadline, "the slow request never arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let t = Instant::now();
    let left = haproxy::drain(&p.lb, busy).await.unwrap();
    assert_eq!(left, 1, "one session left at the timeout");
    assert!(t.elapsed() < Duration::from_millis(2_000), "drain waited past its timeout: {:?}", t.elapsed());
    assert!(haproxy::stat(&p.lb, busy).await.unwrap().status.starts_with("MAINT"));
    // Maintenance does not cut the session in flight.
    assert!(slow.await.unwrap().is_ok());
}
