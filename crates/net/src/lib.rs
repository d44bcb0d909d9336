//! How baton's agent and API accept connections, so that anyone who can open TCP connections to
//! them cannot make them unreachable:
//!
//! - a cap on the connections one peer address holds at once, and one on all connections (kept
//!   below the process's open-files limit); a connection over either is closed at once;
//! - a TLS handshake must finish within [`Limits::handshake`];
//! - a request's headers must arrive within [`Limits::header_read`] of the connection opening or
//!   of the previous answer, so neither a silent connection nor half-sent headers are held open;
//! - a connection on which no byte moves, either way, for [`Limits::idle`] is closed: a body
//!   that stops coming, or answers that are never read;
//! - over TLS, a connection made under a configuration that has since been replaced (a new
//!   revocation list) finishes its request under way and closes, so a revoked certificate does
//!   not keep a connection it already had.
//!
//! Only HTTP/1.1 is served (the agent's TLS offers only `http/1.1` by ALPN).

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::io;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// How much one server accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections one peer address may hold at once.
    pub per_peer: usize,
    /// Connections in all.
    pub total: usize,
    /// From a connection's start, or the end of its last answer, to a request's last header byte.
    pub header_read: Duration,
    /// For the TLS handshake, from the connection's start.
    pub handshake: Duration,
    /// With no byte moving either way (longer than the longest long poll, 60 s).
    pub idle: Duration,
    /// How long a stop waits for requests under way (streams never end by themselves).
    pub drain: Duration,
}

/// Connections one peer may hold: enough for the orchestrator's pool to an agent, or for an
/// operator's browsers and scripts against the API.
pub const PER_PEER: usize = 128;
/// Connections in all, at most.
pub const TOTAL: usize = 4096;

impl Limits {
    /// The defaults, with the total kept to half of this process's open-files limit (the other
    /// half is for its files, its journal and what its actions open).
    pub fn for_this_process() -> Limits {
        let total = open_files_limit().map(|n| (n / 2) as usize).unwrap_or(512).clamp(16, TOTAL);
        Limits {
            per_peer: PER_PEER.min(total),
            total,
            header_read: Duration::from_secs(10),
            handshake: Duration::from_secs(10),
            idle: Duration::from_secs(120),
            drain: Duration::from_secs(5),
        }
    }
}

fn open_files_limit() -> Option<u64> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit on this process with a valid pointer to a local.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0;
    ok.then_some(lim.rlim_cur)
}

/// Counts connections per peer and in all; a [`Permit`] is one connection, returned on drop.
#[derive(Debug, Default)]
struct Gate {
    per_peer: usize,
    total: usize,
    held: Mutex<Held>,
}

#[derive(Debug, Default)]
struct Held {
    all: usize,
    by_peer: HashMap<IpAddr, usize>,
}

struct Permit {
    gate: Arc<Gate>,
    peer: IpAddr,
}

/// Why a connection was closed at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    Peer,
    Total,
}

/// Whom a peer address counts as: an IPv4 address (also written IPv4-mapped), or an IPv6 /64,
/// since one host commonly holds a whole /64.
fn peer_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        },
    }
}

impl Gate {
    fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Permit, Refusal> {
        let peer = peer_key(peer);
        let mut h = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if h.all >= self.total {
            return Err(Refusal::Total);
        }
        let mine = h.by_peer.entry(peer).or_default();
        if *mine >= self.per_peer {
            return Err(Refusal::Peer);
        }
        *mine += 1;
        h.all += 1;
        Ok(Permit { gate: self.clone(), peer })
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut h = self.gate.held.lock().unwrap_or_else(|p| p.into_inner());
        h.all -= 1;
        if let Some(n) = h.by_peer.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                h.by_peer.remove(&self.peer);
            }
        }
    }
}

/// Serves `app` on `listener` (over TLS when `tls` is given: each new connection takes the
/// configuration in the channel then, so a sender can swap certificates or revocation lists
/// without a restart) within `limits`, until `stop` resolves; then stops accepting, asks every
/// connection to finish its request under way, and waits for them up to [`Limits::drain`].
pub async fn serve(
    listener: TcpListener,
    tls: Option<watch::Receiver<Arc<rustls::ServerConfig>>>,
    app: axum::Router,
    limits: Limits,
    stop: impl Future<Output = ()>,
) {
    let gate = Arc::new(Gate { per_peer: limits.per_peer, total: limits.total, ..Default::default() });
    let (closing, _) = watch::channel(false);
    let mut conns = tokio::task::JoinSet::new();
    let (mut refused, mut failed) = (0u64, 0u64);
    let mut stop = std::pin::pin!(stop);
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors (or a connection reset before it was taken): what is
                    // held frees up as connections end or time out; try again shortly.
                    failed += 1;
                    if failed % 1000 == 1 {
                        tracing::warn!("accepting a connection: {e} (failed so far: {failed})");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        while conns.try_join_next().is_some() {}
        let permit = match gate.admit(peer.ip()) {
            Ok(p) => p,
            Err(why) => {
                refused += 1;
                // The first, then every thousandth: a flood must not flood the log too.
                if refused % 1000 == 1 {
                    match why {
                        Refusal::Peer => tracing::warn!(
                            %peer, "closing a connection: this address already holds {} (refused so far: {refused})",
                            limits.per_peer
                        ),
                        Refusal::Total => tracing::warn!(
                            %peer, "closing a connection: {} are open (refused so far: {refused})",
                            limits.total
                        ),
                    }
                }
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let (app, tls, closing) = (app.clone(), tls.clone(), closing.subscribe());
        conns.spawn(async move {
            let _permit = permit;
            let Some(mut tls) = tls else {
                return http(tcp, app, limits, closing, None).await;
            };
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.borrow_and_update().clone());
            match tokio::time::timeout(limits.handshake, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => http(stream, app, limits, closing, Some(tls)).await,
                Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                Err(_) => tracing::debug!(%peer, "TLS handshake not finished within {:?}", limits.handshake),
            }
        });
    }
    drop(listener);
    closing.send_replace(true);
    let all = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(limits.drain, all).await.is_err() {
        tracing::info!("stopped with requests still under way after {:?}", limits.drain);
        conns.abort_all();
    }
}

/// Serves one connection until it ends; asks it to finish and close when the server stops or
/// the TLS configuration it was made under is replaced.
async fn http<I>(
    io: I,
    app: axum::Router,
    limits: Limits,
    mut closing: watch::Receiver<bool>,
    mut tls: Option<watch::Receiver<Arc<rustls::ServerConfig>>>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read)
        .serve_connection(TokioIo::new(Idle::new(io, limits.idle)), TowerToHyperService::new(app));
    let mut conn = std::pin::pin!(conn);
    // A sender that is gone never changes again: that is not a reason to close.
    let stops = async {
        if closing.wait_for(|c| *c).await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let replaced = async {
        let changed = match &mut tls {
            Some(rx) => rx.changed().await.is_ok(),
            None => false,
        };
        if !changed {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!("connection ended: {e}");
            }
            return;
        }
        _ = stops => {}
        _ = replaced => {}
    }
    conn.as_mut().graceful_shutdown();
    if let Err(e) = conn.await {
        tracing::debug!("connection ended: {e}");
    }
}

/// A connection's bytes, failing with `TimedOut` once none has moved either way for `limit`.
struct Idle<I> {
    io: I,
    limit: Duration,
    timer: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl<I> Idle<I> {
    fn new(io: I, limit: Duration) -> Self {
        Idle { io, limit, timer: Box::pin(tokio::time::sleep(limit)) }
    }

    fn moved(&mut self) {
        let next = tokio::time::Instant::now() + self.limit;
        self.timer.as_mut().reset(next);
    }

    /// For a side that has nothing to do: an error once the limit is up (the timer wakes the
    /// task then).
    fn pending<T>(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<io::Result<T>> {
        use std::future::Future as _;
        match self.timer.as_mut().poll(cx) {
            std::task::Poll::Ready(()) => std::task::Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no byte moved for {:?}", self.limit),
            ))),
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Idle<I> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match std::pin::Pin::new(&mut this.io).poll_read(cx, buf) {
            std::task::Poll::Pending => this.pending(cx),
            ready => {
                if buf.filled().len() > before {
                    this.moved();
                }
                ready
            }
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Idle<I> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        let this = self.get_mut();
        match std::pin::Pin::new(&mut this.io).poll_write(cx, buf) {
            std::task::Poll::Pending => this.pending(cx),
            ready => {
                if matches!(ready, std::task::Poll::Ready(Ok(n)) if n > 0) {
                    this.moved();
                }
                ready
            }
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        let this = self.get_mut();
        match std::pin::Pin::new(&mut this.io).poll_flush(cx) {
            std::task::Poll::Pending => this.pending(cx),
            ready => ready,
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_caps_each_peer_and_the_total_and_gives_back_on_drop() {
        let gate = Arc::new(Gate { per_peer: 2, total: 3, ..Default::default() });
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        let a1 = gate.admit(a).unwrap();
        let _a2 = gate.admit(a).unwrap();
        assert_eq!(gate.admit(a).err(), Some(Refusal::Peer));
        let _b1 = gate.admit(b).unwrap();
        assert_eq!(gate.admit(b).err(), Some(Refusal::Total));
        drop(a1);
        assert!(gate.admit(a).is_ok(), "a dropped permit is given back");
        let h = gate.held.lock().unwrap();
        assert_eq!((h.all, h.by_peer.len()), (2, 2), "the permit admitted in the assert was dropped too");
    }

    #[test]
    fn an_ipv6_host_counts_as_its_64_and_a_mapped_ipv4_as_itself() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(peer_key(a), peer_key(b));
        assert_ne!(peer_key(a), peer_key(c));
        let mapped: IpAddr = "::ffff:10.0.0.7".parse().unwrap();
        assert_eq!(peer_key(mapped), "10.0.0.7".parse::<IpAddr>().unwrap());
    }

    /// A server with short limits on a free loopback port, answering `POST /echo` with its body.
    async fn small() -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let app = axum::Router::new().route("/echo", axum::routing::post(|body: String| async move { body }));
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let limits = Limits {
            per_peer: 4,
            total: 8,
            header_read: Duration::from_secs(1),
            handshake: Duration::from_secs(1),
            idle: Duration::from_secs(1),
            drain: Duration::from_secs(1),
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(serve(l, None, app, limits, async {
            let _ = rx.await;
        }));
        (addr, tx)
    }

    /// Reads until the server closes; how long that took, or `None` if not within `within`.
    async fn closed_after(s: &mut tokio::net::TcpStream, within: Duration) -> Option<Duration> {
        use tokio::io::AsyncReadExt;
        let t = tokio::time::Instant::now();
        let mut buf = [0u8; 1024];
        loop {
            match tokio::time::timeout_at(t + within, s.read(&mut buf)).await {
                Err(_) => return None,
                Ok(Ok(0)) | Ok(Err(_)) => return Some(t.elapsed()),
                Ok(Ok(_)) => {}
            }
        }
    }

    #[tokio::test]
    async fn a_body_that_stops_coming_is_closed_after_the_idle_time_and_a_whole_one_is_answered() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (addr, _stop) = small().await;
        // Headers whole, then 10 bytes of the 100 the body announced, then nothing: before, the
        // header-read time no longer applied and the connection was held for good.
        let mut stalled = tokio::net::TcpStream::connect(addr).await.unwrap();
        stalled
            .write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
            .await
            .unwrap();
        let took = closed_after(&mut stalled, Duration::from_secs(5)).await;
        assert!(took.is_some_and(|t| t >= Duration::from_millis(900)), "closed after {took:?}");
        // A body that comes whole is answered.
        let mut ok = tokio::net::TcpStream::connect(addr).await.unwrap();
        ok.write_all(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
        )
        .await
        .unwrap();
        let mut answer = String::new();
        ok.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("hello"), "{answer}");
    }

    #[tokio::test]
    async fn a_stop_closes_idle_connections_and_answers_no_more() {
        let (addr, stop) = small().await;
        // Taken by the server or still in the listen queue: either way it is closed at the stop.
        let mut held = tokio::net::TcpStream::connect(addr).await.unwrap();
        stop.send(()).unwrap();
        let took = closed_after(&mut held, Duration::from_secs(3)).await;
        assert!(took.is_some_and(|t| t < Duration::from_millis(900)), "closed after {took:?}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            assert!(tokio::time::Instant::now() < deadline, "still accepting after the stop");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[test]
    fn the_total_follows_the_open_files_limit() {
        let l = Limits::for_this_process();
        let n = open_files_limit().unwrap() as usize;
        assert!(l.total <= (n / 2).max(16) && l.total <= TOTAL && l.per_peer <= l.total, "{l:?} for {n}");
    }
}
