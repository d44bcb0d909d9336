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
            .use_preconfigured_tls(cfg)
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
        Ok(AgentClient { http, book })
    }

    /// The URL of `path` on `node`'s agent, reached at `addr`: the node's name is the host (and
    /// so the TLS server name its certificate must carry); the book takes it to `addr`.
    fn url(&self, node: &str, addr: &str, path: &str) -> String {
        // Host names are case-insensitive: the URL parser lowers them before the resolver sees
        // them, so the book is kept in lower case.
        let key = node.to_ascii_lowercase();
        let (port, addr) = match addr.rsplit_once(':') {
            Some((_, p)) if !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()) => {
                (p.to_string(), addr.to_string())
            }
            _ => ("7701".to_string(), format!("{addr}:7701")),
        };
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
            return Err(ClientError::Unreachable(format!(
                "the agent at {addr} is not {node}: its certificate does not name {node} (check \
                 {node}'s address in the fleet file, and that the agent there has the certificate \
                 `baton ca issue {node}` made)"
            )));
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

    /// The agent's status; with `after`, waits up to `wait_ms` for a newer one.
    pub async fn status(
        &self,
        node: &str,
        addr: &str,
        after: Option<u64>,
        wait_ms: u64,
    ) -> Result<AgentStatus, ClientError> {
        self.status_with(node, addr, after, wait_ms, false).await
    }

    /// The node's status, with its installed version read again now (not the one the agent
    /// read at start or after its last action).
    pub async fn status_fresh(&self, node: &str, addr: &str) -> Result<AgentStatus, ClientError> {
        self.status_with(node, addr, None, 0, true).await
    }

    async fn status_with(
        &self,
        node: &str,
        addr: &str,
        after: Option<u64>,
        wait_ms: u64,
        fresh: bool,
    ) -> Result<AgentStatus, ClientError> {
        let mut q = vec![("wait_ms", wait_ms.to_string())];
        if let Some(a) = after {
            q.push(("after", a.to_string()));
        }
        if fresh {
            q.push(("fresh", "true".into()));
        }
        let r = self.http.get(self.url(node, addr, "/v1/status")).query(&q).timeout(Self::patience(wait_ms));
        let s: AgentStatus = Self::read(node, addr, r.send().await).await?;
        if s.node != node {
            return Err(ClientError::Unreachable(format!(
                "the agent at {addr} has {node}'s certificate but its config says it is {}: \
                 fix `node` in that agent's config",
                s.node
            )));
        }
        Ok(s)
    }

    /// How long to wait for an answer to a long poll of `wait_ms`: an agent cut off by a
    /// packet filter never answers, and that must show as unreachable within seconds.
    fn patience(wait_ms: u64) -> Duration {
        Duration::from_millis(wait_ms + 3_000)
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
