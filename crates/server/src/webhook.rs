//! Webhooks: the campaign's events, as JSON, to the URLs its file lists. Delivery runs in its
//! own task behind an unbounded channel, so a slow or failing receiver never holds up the
//! campaign. Each event is retried with backoff until the receiver answers 2xx (or attempts run
//! out), in order, and carries a stable delivery id so a receiver can tell a retry apart.

use baton_core::campaign::{Notice, Phase};
use serde::Serialize;
use std::path::Path;
use std::time::Duration;
use tokio::sync::mpsc;

/// Why the webhook client could not be made.
#[derive(Debug, thiserror::Error)]
pub enum WebhookCaError {
    #[error("--webhook-ca {path}: {err}")]
    Read { path: String, err: std::io::Error },
    #[error("--webhook-ca {path}: {why}")]
    Bad { path: String, why: String },
}

/// The client webhooks are sent with: HTTPS receivers are verified against the system's trust
/// roots (`/etc/ssl/certs`, or `$SSL_CERT_FILE`), and against the certificates in `extra_ca`
/// (PEM) when given, for receivers behind a private CA.
pub fn client(extra_ca: Option<&Path>) -> Result<reqwest::Client, WebhookCaError> {
    let mut b = reqwest::Client::builder().timeout(Duration::from_secs(10)).tls_built_in_root_certs(true);
    if let Some(path) = extra_ca {
        let shown = path.display().to_string();
        let pem = std::fs::read(path).map_err(|err| WebhookCaError::Read { path: shown.clone(), err })?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| WebhookCaError::Bad { path: shown.clone(), why: e.to_string() })?;
        if certs.is_empty() {
            return Err(WebhookCaError::Bad { path: shown, why: "holds no PEM certificate".into() });
        }
        for c in certs {
            b = b.add_root_certificate(c);
        }
    }
    b.build().map_err(|e| WebhookCaError::Bad { path: "(system roots)".into(), why: e.to_string() })
}

#[derive(Debug, Clone, Serialize)]
pub struct Hook {
    /// Stable per event: `<campaign id>-<journal seq>-<index>`.
    pub delivery: String,
    pub campaign_id: i64,
    pub campaign: String,
    pub fleet: String,
    /// started, node-failed, halted, completed, committed, aborted, rolled-back
    pub event: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    pub at_ms: u64,
}

/// What a notice tells a webhook.
pub struct What {
    pub event: &'static str,
    pub node: Option<String>,
    pub reason: Option<String>,
    pub by: Option<String>,
}

/// The webhook event a notice is, if any.
pub fn event_of(n: &Notice) -> Option<What> {
    match n {
        Notice::NodeFailed { node, reason } => Some(What {
            event: "node-failed",
            node: Some(node.clone()),
            reason: Some(reason.clone()),
            by: None,
        }),
        Notice::Phase { from, to, by } => {
            let e = match (from, to) {
                (Phase::Planned, Phase::Running) => "started",
                (_, Phase::Halted) => "halted",
                (_, Phase::Completed) => "completed",
                // With an after_commit_action the commit starts its pass; its end (or its
                // abort, by an operator) commits the campaign for good.
                (Phase::Completed, Phase::AfterCommit | Phase::Committed) => "committed",
                (_, Phase::Committed) if by.is_some() => "after-commit-aborted",
                (_, Phase::Committed) => "after-commit-completed",
                (_, Phase::Aborted) => "aborted",
                (_, Phase::RolledBack) => "rolled-back",
                _ => return None,
            };
            Some(What { event: e, node: None, reason: None, by: by.clone() })
        }
        Notice::NodeDone { .. } => None,
        Notice::HoldNotReleased { node, reason } => Some(What {
            event: "hold-not-released",
            node: Some(node.clone()),
            reason: Some(reason.clone()),
            by: None,
        }),
    }
}

pub const ATTEMPTS: u32 = 12;

/// Starts the delivery task for these URLs, sending with `http` (see [`client`]); send hooks on
/// the returned channel.
pub fn start(urls: Vec<String>, http: reqwest::Client) -> mpsc::UnboundedSender<Hook> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Hook>();
    tokio::spawn(async move {
        while let Some(hook) = rx.recv().await {
            for url in &urls {
                let mut wait = Duration::from_millis(200);
                for attempt in 1..=ATTEMPTS {
                    match http.post(url).json(&hook).send().await {
                        Ok(r) if r.status().is_success() => break,
                        Ok(r) => {
                            tracing::warn!(%url, delivery = %hook.delivery, attempt, status = %r.status(), "webhook refused")
                        }
                        Err(e) => {
                            tracing::warn!(%url, delivery = %hook.delivery, attempt, "webhook failed: {e}")
                        }
                    }
                    if attempt == ATTEMPTS {
                        tracing::error!(%url, delivery = %hook.delivery, "webhook given up after {ATTEMPTS} attempts");
                        break;
                    }
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(30));
                }
            }
        }
    });
    tx
}
