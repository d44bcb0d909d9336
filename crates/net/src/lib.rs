//! How baton's agent and API accept connections, so that anyone who can open TCP connections to
//! them cannot make them unreachable:
//!
//! - a cap on the connections one peer address holds at once, and one on all connections (kept
//!   below the process's open-files limit); a connection over either is closed at once;
//! - a TLS handshake must finish within [`Limits::handshake`];
//! - a request's headers must arrive within [`Limits::header_read`] of the connection opening or
//!   of the previous answer, so neither a silent connection nor a half-sent request is held open.
//!
//! Only HTTP/1.1 is served (the agent's TLS offers only `http/1.1` by ALPN).

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;

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

impl Gate {
    fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Permit, Refusal> {
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
/// without a restart) within `limits`, until `stop` resolves; then stops accepting and gives
/// requests under way up to [`Limits::drain`].
pub async fn serve(
    listener: TcpListener,
    tls: Option<tokio::sync::watch::Receiver<Arc<rustls::ServerConfig>>>,
    app: axum::Router,
    limits: Limits,
    stop: impl Future<Output = ()>,
) {
    let gate = Arc::new(Gate { per_peer: limits.per_peer, total: limits.total, ..Default::default() });
    let graceful = GracefulShutdown::new();
    let mut refused = 0u64;
    let mut stop = std::pin::pin!(stop);
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors (or a connection reset before it was taken): what is
                    // held frees up as connections end or time out; try again shortly.
                    tracing::warn!("accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
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
        let tls = tls.as_ref().map(|t| tokio_rustls::TlsAcceptor::from(t.borrow().clone()));
        let (app, watcher) = (app.clone(), graceful.watcher());
        tokio::spawn(async move {
            let _permit = permit;
            match tls {
                None => http(tcp, app, limits, watcher).await,
                Some(acceptor) => match tokio::time::timeout(limits.handshake, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => http(stream, app, limits, watcher).await,
                    Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake not finished within {:?}", limits.handshake)
                    }
                },
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.drain, graceful.shutdown()).await.is_err() {
        tracing::info!("stopped with requests still under way after {:?}", limits.drain);
    }
}

async fn http<I>(io: I, app: axum::Router, limits: Limits, watcher: hyper_util::server::graceful::Watcher)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read)
        .serve_connection(TokioIo::new(io), TowerToHyperService::new(app));
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!("connection ended: {e}");
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
    fn the_total_follows_the_open_files_limit() {
        let l = Limits::for_this_process();
        let n = open_files_limit().unwrap() as usize;
        assert!(l.total <= (n / 2).max(16) && l.total <= TOTAL && l.per_peer <= l.total, "{l:?} for {n}");
    }
}
