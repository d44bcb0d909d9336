//! Talking to agents over mutual TLS.
//!
//! Identities are pinned: every request goes to `https://NODE:PORT/...`, with the node's name
//! as the TLS server name, and a resolver that takes NODE to the address the fleet file gives
//! it. So the agent must prove, in the handshake and before any request is sent, that its
//! certificate names the node the orchestrator means; an address that leads to another node's
//! agent (a typo, a reused IP, two nodes given one address) fails the handshake and runs
//! nothing.

use baton_proto::{AgentStatus, ApiError, StepRequest, StepStatus};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No answer (down, rebooting, cut off). Nothing can be concluded about the node.
    #[error("agent unreachable: {0}")]
    Unreachable(String),
    /// The agent answered with an error.
    #[error("agent refused: {} ({})", .0.message, .0.code)]
    Refused(ApiError),
}

#[derive(Clone)]
pub struct AgentClient {
    http: reqwest::Client,
    /// The same TLS configuration, for [`AgentConn`]s.
    tls: tokio_rustls::TlsConnector,
    /// [`AgentConn`]s making their TLS handshake at once, at most: a campaign watches all its nodes from its first
    /// moment, and 10,000 TLS handshakes under way together held more memory than the 10,000
    /// connections they made.
    connecting: Arc<tokio::sync::Semaphore>,
    /// Node name → the address to reach it by (`host:port`), as the fleet file says.
    book: Book,
}

/// Where each node is: read by the resolver, written by each call (the caller says which node
/// it means and at which address).
#[derive(Clone, Default)]
struct Book(Arc<RwLock<HashMap<String, String>>>);

impl reqwest::dns::Resolve for Book {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        // A name that is not a node of the book is not for this client: it fails.
        let addr = self.0.read().unwrap_or_else(|p| p.into_inner()).get(name.as_str()).cloned();
        Box::pin(async move {
            let Some(addr) = addr else {
                let e: Box<dyn std::error::Error + Send + Sync> =
                    format!("no address known for node {}", name.as_str()).into();
                return Err(e);
            };
            let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host(addr.as_str()).await?.collect();
            let addrs: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

impl AgentClient {
    pub fn new(tls: &baton_pki::TlsFiles) -> Result<Self, baton_pki::PkiError> {
        baton_pki::install_default_provider();
        let cfg = tls.client_config()?;
        let book = Book::default();
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(cfg.clone())
            .dns_resolver(Arc::new(book.clone()))
            // Straight to the fleet file's address: a proxy from the environment would resolve
            // node names itself (or not at all).
            .no_proxy()
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(90))
            // Below the agent's 10 s header-read time: a pooled connection is dropped here
            // before the agent closes it, not used as it does.
            .pool_idle_timeout(Duration::from_secs(5))
            .tls_info(true)
            .build()
            .map_err(|e| baton_pki::PkiError::Tls(e.to_string()))?;
        Ok(AgentClient {
            http,
            book,
            tls: tokio_rustls::TlsConnector::from(Arc::new(cfg)),
            connecting: Arc::new(tokio::sync::Semaphore::new(CONNECTING)),
        })
    }

    /// The URL of `path` on `node`'s agent, reached at `addr`: the node's name is the host (and
    /// so the TLS server name its certificate must carry); the book takes it to `addr`.
    fn url(&self, node: &str, addr: &str, path: &str) -> String {
        // Host names are case-insensitive: the URL parser lowers them before the resolver sees
        // them, so the book is kept in lower case.
        let key = node.to_ascii_lowercase();
        let (port, addr) = with_port(addr);
        let mut book = self.book.0.write().unwrap_or_else(|p| p.into_inner());
        if book.get(&key) != Some(&addr) {
            book.insert(key, addr);
        }
        format!("https://{node}:{port}{path}")
    }

    /// Reads an answer, but only from `node` itself: the certificate the agent at `addr`
    /// showed must name `node`. Any agent of the fleet holds a certificate from the fleet's CA,
    /// so without this an address pointing at the wrong machine (a typo in the fleet file, two
    /// nodes given one address, a reused IP) would have one node's steps run on another, and
    /// the campaign would count a node as updated that never was.
    async fn read<T: serde::de::DeserializeOwned>(
        node: &str,
        addr: &str,
        r: Result<reqwest::Response, reqwest::Error>,
    ) -> Result<T, ClientError> {
        let r = r.map_err(|e| ClientError::Unreachable(why(node, addr, &e)))?;
        let cert = r.extensions().get::<reqwest::tls::TlsInfo>().and_then(|t| t.peer_certificate());
        if !cert.is_some_and(|c| baton_pki::names(c, node)) {
            return Err(ClientError::Unreachable(wrong_agent(node, addr)));
        }
        if r.status().is_success() {
            r.json().await.map_err(|e| ClientError::Unreachable(e.to_string()))
        } else {
            let status = r.status();
            let e = r
                .json::<ApiError>()
                .await
                .unwrap_or(ApiError { code: "http".into(), message: status.to_string() });
            Err(ClientError::Refused(e))
        }
    }

    pub async fn start_step(
        &self,
        node: &str,
        addr: &str,
        req: &StepRequest,
    ) -> Result<StepStatus, ClientError> {
        let r = self.http.post(self.url(node, addr, "/v1/steps")).json(req).timeout(Duration::from_secs(10));
        Self::read(node, addr, r.send().await).await
    }

    /// The step's status, waiting up to `wait_ms` for it to finish.
    pub async fn step(
        &self,
        node: &str,
        addr: &str,
        id: &str,
        wait_ms: u64,
    ) -> Result<StepStatus, ClientError> {
        let q = [("id", id.to_string()), ("wait_ms", wait_ms.to_string())];
        let r = self.http.get(self.url(node, addr, "/v1/step")).query(&q).timeout(Self::patience(wait_ms));
        Self::read(node, addr, r.send().await).await
    }

    pub async fn steps(&self, node: &str, addr: &str) -> Result<Vec<StepStatus>, ClientError> {
        Self::read(node, addr, self.http.get(self.url(node, addr, "/v1/steps")).send().await).await
    }

    /// The agent's status; with `after`, waits up to `wait_ms` for a newer one. (Watches and a
    /// census use [`AgentClient::conn`], which keeps no pooled connection.)
    pub async fn status(
        &self,
        node: &str,
        addr: &str,
        after: Option<u64>,
        wait_ms: u64,
    ) -> Result<AgentStatus, ClientError> {
        let mut q = vec![("wait_ms", wait_ms.to_string())];
        if let Some(a) = after {
            q.push(("after", a.to_string()));
        }
        let r = self.http.get(self.url(node, addr, "/v1/status")).query(&q).timeout(Self::patience(wait_ms));
        let s: AgentStatus = Self::read(node, addr, r.send().await).await?;
        if s.node != node {
            return Err(ClientError::Unreachable(other_config(addr, node, &s.node)));
        }
        Ok(s)
    }

    /// How long to wait for an answer to a long poll of `wait_ms`: an agent cut off by a
    /// packet filter never answers, and that must show as unreachable within seconds.
    fn patience(wait_ms: u64) -> Duration {
        Duration::from_millis(wait_ms + 3_000)
    }
}

/// A connection of its own to one node's agent, kept from one request to the next: the
/// orchestrator's watch on each node (a long poll of its status), and each node's steps.
///
/// The orchestrator watches every node of a campaign at once, so what a watch holds is what the
/// fleet's size multiplies. A pooled `reqwest` connection holds, besides its TLS session, hyper's
/// read and write buffers (8 KB each), a dispatch channel (8 KB) and the request's futures: about
/// 35 KB per watch, measured with heaptrack against 2,000 hollow agents, so 10,000 watches held
/// 428 MiB. This holds the socket and the TLS session only. It sends a plain `GET /v1/status` and
/// reads an answer with one `Content-Length` (all the agent sends: the HTTP head parsed by
/// httparse), and closes on anything else. Steps go the same way (500 in flight at once at
/// 10,000 nodes and 5%): `POST /v1/steps`, then long polls of `GET /v1/step`.
///
/// Identity is pinned as for [`AgentClient`]: the node's name is the TLS server name and its
/// certificate must name it; an agent whose config says it is another node is refused.
pub struct AgentConn {
    node: String,
    /// `host:port` to connect to.
    addr: String,
    /// The `Host` header: the node's name and the port.
    host: String,
    tls: tokio_rustls::TlsConnector,
    connecting: Arc<tokio::sync::Semaphore>,
    /// The connection kept for the next poll (boxed, as is the connecting, so that a task
    /// waiting on a watch holds little), and when its last answer ended.
    conn: Option<(Box<Tls>, std::time::Instant)>,
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// How many [`AgentConn`]s make their TLS handshake at once.
const CONNECTING: usize = 64;
/// The longest a made TCP connection waits for its turn at the TLS handshake (the agent's own
/// limit, from accepting the connection to the handshake's end, is 10 s).
const TURN_WAIT: Duration = Duration::from_secs(5);
/// A kept connection idle for longer is not used again: the agent closes a connection that
/// sends no request within 10 s of its last answer (baton-net's header-read time).
const KEEP_IDLE: Duration = Duration::from_secs(5);
/// The longest answer head and body a status may have (an agent's status is under 1 KB).
const MAX_HEAD: usize = 16 * 1024;
/// (A status or a step carries the step's output tail, up to 1 MB, which JSON may escape.)
const MAX_BODY: usize = 8 << 20;

/// Why one poll failed.
enum Failed {
    /// A kept connection was closed before any byte of the answer came (the agent closed it
    /// while it was idle): asking again on a new one is safe, as every request here is (a status
    /// or a step's record is only read; a step id the agent has seen is not run again).
    Stale(ClientError),
    Other(ClientError),
}

impl AgentClient {
    /// A connection to `node`'s agent at `addr`, made on its first request.
    pub fn conn(&self, node: &str, addr: &str) -> AgentConn {
        let (port, addr) = with_port(addr);
        AgentConn {
            node: node.to_string(),
            host: format!("{}:{port}", node.to_ascii_lowercase()),
            addr,
            tls: self.tls.clone(),
            connecting: self.connecting.clone(),
            conn: None,
        }
    }
}

impl AgentConn {
    /// The agent's status; with `after`, waits up to `wait_ms` for a newer one. Unreachable
    /// when no connection is made within 3 s, or no answer comes within
    /// [`AgentClient::patience`] of `wait_ms`.
    pub async fn status(&mut self, after: Option<u64>, wait_ms: u64) -> Result<AgentStatus, ClientError> {
        self.get(after, wait_ms, false).await
    }

    /// The local address of the connection kept for the next poll, if one is.
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        self.conn.as_ref().and_then(|(c, _)| c.get_ref().0.local_addr().ok())
    }

    /// The node's status (with `fresh`, its installed version read again now), on a
    /// connection that is closed afterwards: for a census of many nodes, each asked once.
    pub async fn once(mut self, fresh: bool) -> Result<AgentStatus, ClientError> {
        self.get(None, 0, fresh).await
    }

    /// What the node lacks (its `scan` action) and its version read now; the connection is
    /// closed afterwards. A scan may take a while (apt or dnf read their package lists).
    pub async fn scan(mut self) -> Result<baton_proto::AgentScan, ClientError> {
        let s: baton_proto::AgentScan =
            self.request("GET", "/v1/scan".into(), None, Duration::from_secs(120)).await?;
        if s.node != self.node {
            return Err(ClientError::Unreachable(other_config(&self.addr, &self.node, &s.node)));
        }
        Ok(s)
    }

    /// Starts a step (the agent answers a step id it has seen with that step's record, so
    /// asking again is safe).
    pub async fn start_step(&mut self, req: &StepRequest) -> Result<StepStatus, ClientError> {
        let body = serde_json::to_vec(req).map_err(|e| ClientError::Unreachable(e.to_string()))?;
        self.request("POST", "/v1/steps".into(), Some(&body), Duration::from_secs(10)).await
    }

    /// The step's status, waiting up to `wait_ms` for it to finish.
    pub async fn step(&mut self, id: &str, wait_ms: u64) -> Result<StepStatus, ClientError> {
        let id: String = form_urlencoded::byte_serialize(id.as_bytes()).collect();
        let path = format!("/v1/step?id={id}&wait_ms={wait_ms}");
        self.request("GET", path, None, AgentClient::patience(wait_ms)).await
    }

    async fn get(
        &mut self,
        after: Option<u64>,
        wait_ms: u64,
        fresh: bool,
    ) -> Result<AgentStatus, ClientError> {
        let mut path = format!("/v1/status?wait_ms={wait_ms}");
        if let Some(a) = after {
            path.push_str(&format!("&after={a}"));
        }
        if fresh {
            path.push_str("&fresh=true");
        }
        let s: AgentStatus = self.request("GET", path, None, AgentClient::patience(wait_ms)).await?;
        if s.node != self.node {
            self.conn = None;
            return Err(ClientError::Unreachable(other_config(&self.addr, &self.node, &s.node)));
        }
        Ok(s)
    }

    /// One request; once more on a new connection when a kept one turns out closed before any
    /// byte of its answer came (every request here may be repeated).
    async fn request<T: serde::de::DeserializeOwned>(
        &mut self,
        method: &str,
        path: String,
        body: Option<&[u8]>,
        patience: Duration,
    ) -> Result<T, ClientError> {
        match self.once_on(method, &path, body, patience).await {
            Err(Failed::Stale(_)) => self.once_on(method, &path, body, patience).await,
            r => r,
        }
        .map_err(|(Failed::Stale(e) | Failed::Other(e))| e)
    }

    /// One request and its answer, on the kept connection (if it is fresh enough) or a new one.
    /// The answer must come within `patience`; the connection's making, and the wait for a
    /// turn at it, are bounded apart ([`AgentConn::connect`]).
    async fn once_on<T: serde::de::DeserializeOwned>(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        patience: Duration,
    ) -> Result<T, Failed> {
        let kept = self.conn.take().filter(|(_, at)| at.elapsed() < KEEP_IDLE).map(|(c, _)| c);
        let reused = kept.is_some();
        let conn = match kept {
            Some(c) => c,
            None => Box::new(Box::pin(self.connect()).await.map_err(Failed::Other)?),
        };
        match tokio::time::timeout(patience, self.exchange(conn, method, path, body)).await {
            Ok(Ok((answer, keep))) => {
                self.conn = keep.map(|c| (c, std::time::Instant::now()));
                Ok(answer)
            }
            Ok(Err((e, answered))) if reused && !answered => Err(Failed::Stale(e)),
            Ok(Err((e, _))) => Err(Failed::Other(e)),
            Err(_) => Err(Failed::Other(ClientError::Unreachable(format!(
                "{} at {} did not answer within {patience:?}",
                self.node, self.addr
            )))),
        }
    }

    /// A new connection: TCP within 3 s, then, once one of the [`CONNECTING`] turns is free,
    /// the TLS handshake within 3 s. The wait for a turn is not the agent's to answer for, and a
    /// host that does not answer holds no turn; but the agent drops a connection whose
    /// handshake has not ended 10 s after it accepted it, so a connection that waited
    /// [`TURN_WAIT`] for its turn is closed and made again, not used.
    async fn connect(&self) -> Result<Tls, ClientError> {
        let (node, addr) = (&self.node, &self.addr);
        let unreachable =
            |e: &dyn std::fmt::Display| ClientError::Unreachable(format!("{node} at {addr}: {e}"));
        let name = rustls::pki_types::ServerName::try_from(node.to_ascii_lowercase())
            .map_err(|e| unreachable(&format!("{node} is not a host name: {e}")))?;
        let (tcp, _turn) = loop {
            let tcp = match tokio::time::timeout(
                Duration::from_secs(3),
                tokio::net::TcpStream::connect(addr.as_str()),
            )
            .await
            {
                Ok(Ok(tcp)) => tcp,
                Ok(Err(e)) => return Err(unreachable(&e)),
                Err(_) => return Err(unreachable(&"no connection within 3s")),
            };
            tcp.set_nodelay(true).map_err(|e| unreachable(&e))?;
            if let Ok(turn) = tokio::time::timeout(TURN_WAIT, self.connecting.acquire()).await {
                break (tcp, turn.map_err(|e| unreachable(&e))?);
            }
        };
        let conn = match tokio::time::timeout(Duration::from_secs(3), self.tls.connect(name, tcp)).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                let mut text = e.to_string();
                if let Some(inner) = e.get_ref() {
                    text = format!("{text}: {inner:?}");
                }
                return Err(ClientError::Unreachable(not_node(node, addr, text)));
            }
            Err(_) => return Err(unreachable(&"no TLS handshake within 3s")),
        };
        let cert = conn.get_ref().1.peer_certificates().and_then(|c| c.first());
        if !cert.is_some_and(|c| baton_pki::names(c, node)) {
            return Err(ClientError::Unreachable(wrong_agent(node, addr)));
        }
        Ok(conn)
    }

    /// Sends one request on `conn` and reads its answer: the status, and the connection if it
    /// may carry the next request. On failure, whether any byte of an answer had come.
    async fn exchange<T: serde::de::DeserializeOwned>(
        &self,
        mut conn: Box<Tls>,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<(T, Option<Box<Tls>>), (ClientError, bool)> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (node, addr) = (&self.node, &self.addr);
        let lost = |e: &dyn std::fmt::Display| ClientError::Unreachable(format!("{node} at {addr}: {e}"));
        let mut req =
            format!("{method} {path} HTTP/1.1\r\nhost: {}\r\naccept: application/json\r\n", self.host);
        if let Some(b) = body {
            req.push_str(&format!("content-type: application/json\r\ncontent-length: {}\r\n", b.len()));
        }
        req.push_str("\r\n");
        let mut req = req.into_bytes();
        req.extend_from_slice(body.unwrap_or_default());
        conn.write_all(&req).await.map_err(|e| (lost(&e), false))?;
        drop(req);
        conn.flush().await.map_err(|e| (lost(&e), false))?;
        // Grown as the answer comes (64 bytes, then doubling): a long poll waits with next to
        // nothing allocated.
        let mut buf = Vec::new();
        let (head, code, length, close) = loop {
            let n = conn.read_buf(&mut buf).await.map_err(|e| (lost(&e), !buf.is_empty()))?;
            if n == 0 {
                return Err((lost(&"the agent closed the connection"), !buf.is_empty()));
            }
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut answer = httparse::Response::new(&mut headers);
            match answer.parse(&buf) {
                Ok(httparse::Status::Complete(head)) => {
                    let headers = &*answer.headers;
                    let named = |name: &'static str| {
                        headers.iter().filter(move |h| h.name.eq_ignore_ascii_case(name))
                    };
                    // One Content-Length of digits, and no other framing: anything else might
                    // be read differently by the agent's side, so it is not read at all.
                    let mut lengths = named("content-length");
                    let length = match (lengths.next(), lengths.next(), named("transfer-encoding").next()) {
                        (Some(v), None, None)
                            if !v.value.is_empty() && v.value.iter().all(u8::is_ascii_digit) =>
                        {
                            std::str::from_utf8(v.value).ok().and_then(|v| v.parse::<usize>().ok())
                        }
                        _ => None,
                    };
                    let close = answer.version != Some(1)
                        || named("connection").any(|h| h.value.eq_ignore_ascii_case(b"close"));
                    break (head, answer.code.unwrap_or(0), length, close);
                }
                Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
                Ok(httparse::Status::Partial) => return Err((lost(&"an answer head over 16 KB"), true)),
                Err(e) => return Err((lost(&format!("not an HTTP answer: {e}")), true)),
            }
        };
        let Some(length) = length.filter(|&l| l <= MAX_BODY) else {
            return Err((lost(&"an answer without one Content-Length of at most 8 MB"), true));
        };
        while buf.len() < head + length {
            if conn.read_buf(&mut buf).await.map_err(|e| (lost(&e), true))? == 0 {
                return Err((lost(&"the agent closed the connection within an answer"), true));
            }
        }
        // One request at a time: bytes beyond the answer are not for anything sent, and the
        // connection is not used again.
        let keep = (!close && buf.len() == head + length).then_some(conn);
        let body = &buf[head..head + length];
        if (200..300).contains(&code) {
            let answer = serde_json::from_slice(body)
                .map_err(|e| (lost(&format!("an answer that does not parse: {e}")), true))?;
            Ok((answer, keep))
        } else {
            let e = serde_json::from_slice::<ApiError>(body)
                .unwrap_or_else(|_| ApiError { code: "http".into(), message: format!("HTTP {code}") });
            Err((ClientError::Refused(e), true))
        }
    }
}

/// `addr` with the agent's default port if it has none: (the port, `host:port`).
fn with_port(addr: &str) -> (String, String) {
    match addr.rsplit_once(':') {
        Some((_, p)) if !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()) => {
            (p.to_string(), addr.to_string())
        }
        _ => ("7701".to_string(), format!("{addr}:7701")),
    }
}

fn other_config(addr: &str, node: &str, says: &str) -> String {
    format!(
        "the agent at {addr} has {node}'s certificate but its config says it is {says}: fix `node` \
         in that agent's config"
    )
}

fn wrong_agent(node: &str, addr: &str) -> String {
    format!(
        "the agent at {addr} is not {node}: its certificate does not name {node} (check {node}'s \
         address in the fleet file, and that the agent there has the certificate `baton ca issue \
         {node}` made)"
    )
}

/// `text`, or what to check when it says the agent at `addr` is not `node`.
fn not_node(node: &str, addr: &str, text: String) -> String {
    if text.contains("not valid for name") || text.contains("NotValidForName") {
        format!(
            "the agent at {addr} is not {node}: its certificate does not name {node}, so nothing \
             was sent to it (check {node}'s address in the fleet file, and that the agent there \
             has the certificate `baton ca issue {node}` made) [{text}]"
        )
    } else {
        text
    }
}

/// What went wrong reaching `node` at `addr`, with the causes (reqwest's own message says only
/// that sending failed), and what to check when the agent there is not `node`.
fn why(node: &str, addr: &str, e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        text.push_str(": ");
        text.push_str(&s.to_string());
        src = s.source();
    }
    not_node(node, addr, text)
}
