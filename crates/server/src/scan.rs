//! Compliance: every node of the fleet asked what it runs and what it lacks, against a target
//! version (CAU's scan, VMM's baseline compliance). Read-only: nothing is journaled.

use crate::client::AgentClient;
use baton_core::Fleet;
use baton_proto::{ScanReport, ScanRow, ScanTotals};

/// Asks every node of the fleet (64 at a time) and sorts them into compliant, needs-update and
/// unreachable. A node without an address in the fleet file is unreachable.
pub async fn scan(client: &AgentClient, fleet: &Fleet, target: &str) -> ScanReport {
    let started = std::time::Instant::now();
    let limit = std::sync::Arc::new(tokio::sync::Semaphore::new(64));
    let mut asks = tokio::task::JoinSet::new();
    for (i, n) in fleet.nodes.iter().enumerate() {
        let Some(addr) = n.address.clone() else { continue };
        let (client, limit, name) = (client.clone(), limit.clone(), n.name.clone());
        asks.spawn(async move {
            let _permit = limit.acquire_owned().await;
            (i, client.conn(&name, &addr).scan().await)
        });
    }
    let mut rows: Vec<ScanRow> = fleet
        .nodes
        .iter()
        .map(|n| ScanRow {
            node: n.name.clone(),
            state: "unreachable".into(),
            version: None,
            updates: Vec::new(),
            reason: Some("no address in the fleet file".into()),
        })
        .collect();
    while let Some(r) = asks.join_next().await {
        let Ok((i, answer)) = r else { continue };
        let row = &mut rows[i];
        match answer {
            Ok(s) => {
                row.state =
                    if s.version.as_deref() == Some(target) { "compliant" } else { "needs-update" }.into();
                row.reason = match (&s.error, &s.version) {
                    (Some(e), _) => Some(format!("its scan action failed: {e}")),
                    (None, None) => Some("its agent reports no version".into()),
                    _ => None,
                };
                row.version = s.version;
                row.updates = s.updates;
            }
            Err(e) => row.reason = Some(format!("its agent does not answer: {e}")),
        }
    }
    let count = |st: &str| rows.iter().filter(|r| r.state == st).count();
    let totals = ScanTotals {
        compliant: count("compliant"),
        needs_update: count("needs-update"),
        unreachable: count("unreachable"),
    };
    ScanReport {
        target: target.to_string(),
        nodes: rows,
        totals,
        took_ms: started.elapsed().as_millis() as u64,
    }
}
