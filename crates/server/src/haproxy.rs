//! The HAProxy drain driver: takes a node's server out of a backend through HAProxy's runtime
//! API before the node is drained, and puts it back after the node proved healthy. Every call
//! is idempotent, so a step sent again after an orchestrator restart does no harm.

use baton_core::model::Haproxy;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

#[derive(Debug, thiserror::Error)]
pub enum LbError {
    #[error("cannot reach HAProxy's runtime API at {socket}: {error}")]
    Unreachable { socket: String, error: String },
    #[error("HAProxy refused `{command}`: {answer}")]
    Refused { command: String, answer: String },
    #[error("server {server} is not in HAProxy backend {backend}")]
    NoServer { backend: String, server: String },
    #[error("server {backend}/{server} did not come up in HAProxy within {secs} s (status {status})")]
    NotUp { backend: String, server: String, status: String, secs: u64 },
}

/// One command on the runtime API; the answer is what HAProxy wrote before closing.
async fn command(socket: &str, line: &str) -> Result<String, LbError> {
    let unreachable =
        |e: std::io::Error| LbError::Unreachable { socket: socket.into(), error: e.to_string() };
    let io = async {
        if socket.starts_with('/') {
            talk(tokio::net::UnixStream::connect(socket).await?, line).await
        } else {
            talk(tokio::net::TcpStream::connect(socket).await?, line).await
        }
    };
    match tokio::time::timeout(Duration::from_secs(10), io).await {
        Ok(r) => r.map_err(unreachable),
        Err(_) => Err(unreachable(std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in 10 s"))),
    }
}

async fn talk<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, line: &str) -> std::io::Result<String> {
    s.write_all(format!("{line}\n").as_bytes()).await?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).await?;
    Ok(answer)
}

async fn set_state(lb: &Haproxy, server: &str, state: &str) -> Result<(), LbError> {
    let line = format!("set server {}/{server} state {state}", lb.backend);
    let answer = command(&lb.socket, &line).await?;
    if answer.trim().is_empty() {
        Ok(())
    } else if answer.contains("No such") {
        Err(LbError::NoServer { backend: lb.backend.clone(), server: server.into() })
    } else {
        Err(LbError::Refused { command: line, answer: answer.trim().into() })
    }
}

/// The server's current sessions and status, from `show stat`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerStat {
    pub sessions: u64,
    pub status: String,
}

/// Reads one server's row of `show stat` (CSV with a `# pxname,svname,...` header).
pub fn parse_stat(csv: &str, backend: &str, server: &str) -> Option<ServerStat> {
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next()?.trim_start_matches("# ").split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name);
    let (px, sv, scur, status) = (col("pxname")?, col("svname")?, col("scur")?, col("status")?);
    lines
        .map(|l| l.split(',').collect::<Vec<_>>())
        .find(|f| f.get(px) == Some(&backend) && f.get(sv) == Some(&server))
        .map(|f| ServerStat {
            sessions: f.get(scur).and_then(|s| s.parse().ok()).unwrap_or(0),
            status: f.get(status).unwrap_or(&"").to_string(),
        })
}

pub async fn stat(lb: &Haproxy, server: &str) -> Result<ServerStat, LbError> {
    let csv = command(&lb.socket, "show stat").await?;
    parse_stat(&csv, &lb.backend, server)
        .ok_or_else(|| LbError::NoServer { backend: lb.backend.clone(), server: server.into() })
}

/// Out of the load balancer: no new request goes to the server, the ones it has finish (until
/// `drain_timeout`), then it is put in maintenance. Returns the sessions left at the timeout.
pub async fn drain(lb: &Haproxy, node: &str) -> Result<u64, LbError> {
    let server = lb.server_of(node);
    set_state(lb, &server, "drain").await?;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(lb.drain_timeout);
    let mut left = stat(lb, &server).await?.sessions;
    while left > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        left = stat(lb, &server).await?.sessions;
    }
    set_state(lb, &server, "maint").await?;
    Ok(left)
}

/// Back into the load balancer; done when HAProxy itself sees the server up (its own check
/// passed, or it has none), so the service is whole again before the next node leaves.
pub async fn ready(lb: &Haproxy, node: &str, within: Duration) -> Result<(), LbError> {
    let server = lb.server_of(node);
    set_state(lb, &server, "ready").await?;
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let st = stat(lb, &server).await?;
        if st.status.starts_with("UP") || st.status == "no check" {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(LbError::NotUp {
                backend: lb.backend.clone(),
                server,
                status: st.status,
                secs: within.as_secs(),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_servers_row() {
        let csv = "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,\n\
                   web,FRONTEND,,,3,5,,,,,,,,,,,,OPEN,\n\
                   web,h1,0,0,2,4,,,,,,,,,,0,0,DRAIN,\n\
                   web,h2,0,0,0,4,,,,,,,,,,0,0,UP,\n";
        assert_eq!(parse_stat(csv, "web", "h1"), Some(ServerStat { sessions: 2, status: "DRAIN".into() }));
        assert_eq!(parse_stat(csv, "web", "h2"), Some(ServerStat { sessions: 0, status: "UP".into() }));
        assert_eq!(parse_stat(csv, "web", "h3"), None);
        assert_eq!(parse_stat(csv, "db", "h1"), None);
    }
}
