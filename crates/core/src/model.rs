//! The validated fleet and campaign: what the planner and the state machine work on.
//!
//! Values here are only built by [`crate::load`], which checks every rule of DESIGN.md §Formats,
//! so code downstream can rely on them (member ids are valid, allowances are computed, ...).

use crate::units::{Amount, Millis};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// Index of a node in [`Fleet::nodes`].
pub type NodeId = u32;

#[derive(Debug, Clone, PartialEq)]
pub struct Fleet {
    pub name: String,
    /// The version chain, oldest first (may be empty: then any target is accepted).
    pub versions: Vec<String>,
    pub functional_level: Option<String>,
    pub nodes: Vec<Node>,
    pub services: Vec<Service>,
    pub workloads: Vec<Workload>,
    /// For each node, the services it is a member of (indices into `services`).
    pub memberships: Vec<Vec<u32>>,
    pub by_name: HashMap<String, NodeId>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub name: String,
    pub address: Option<String>,
    pub update_domain: Option<u32>,
    pub fault_domain: Option<u32>,
    pub version: Option<String>,
    /// Abstract capacity units; `None` means unlimited.
    pub capacity: Option<u64>,
    pub labels: BTreeMap<String, String>,
}

/// How many members of a service may be down at once, as the operator wrote it.
#[derive(Debug, Clone, PartialEq)]
pub enum Rule {
    MaxUnavailable(Amount),
    MinAvailable(Amount),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    pub name: String,
    pub members: Vec<NodeId>,
    pub rule: Rule,
    pub quorum: bool,
    /// Members that may be down at once, computed from `rule`, `quorum` and the member count.
    pub allowance: u32,
    /// The load balancer that sends this service's traffic, when the orchestrator drains it.
    pub haproxy: Option<Haproxy>,
}

/// An HAProxy backend whose servers are this service's members, drained through the runtime
/// API: `drain`, wait until the server has no session (or `drain_timeout`), `maint`; back to
/// `ready` only after the node's health gate has passed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Haproxy {
    /// The runtime API: a unix socket path, or `host:port`.
    pub socket: String,
    pub backend: String,
    /// The server's name in the backend; `{node}` stands for the node's name.
    pub server: String,
    pub drain_timeout: Millis,
}

impl Haproxy {
    pub fn server_of(&self, node: &str) -> String {
        self.server.replace("{node}", node)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Movable {
    Live,
    Restart,
    None,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    pub name: String,
    pub node: NodeId,
    pub demand: u64,
    pub movable: Movable,
    /// The node it returns to once that node is back in service (failback): the fleet file's
    /// `preferred`, else the node it is on when the campaign starts.
    pub preferred: NodeId,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    Continuous,
    DomainWalk,
    OneAtATime,
    Batch,
}

/// What `domain-walk` walks, one domain at a time (`walk`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Walk {
    #[default]
    UpdateDomain,
    FaultDomain,
}

impl Strategy {
    pub const ALL: [Strategy; 4] =
        [Strategy::Continuous, Strategy::DomainWalk, Strategy::OneAtATime, Strategy::Batch];
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Continuous => "continuous",
            Strategy::DomainWalk => "domain-walk",
            Strategy::OneAtATime => "one-at-a-time",
            Strategy::Batch => "batch",
        }
    }
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not one of the [`Strategy`] names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown strategy `{name}`: use continuous, domain-walk, one-at-a-time or batch")]
pub struct UnknownStrategy {
    pub name: String,
}

impl std::str::FromStr for Strategy {
    type Err = UnknownStrategy;
    fn from_str(s: &str) -> Result<Self, UnknownStrategy> {
        Strategy::ALL.into_iter().find(|k| k.as_str() == s).ok_or_else(|| UnknownStrategy { name: s.into() })
    }
}

/// What a failed precheck does (`on_precheck_fail`): the node was not touched either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnPrecheckFail {
    /// The node is Skipped with the reason.
    Skip,
    /// The node is Failed (it counts toward `max_failed_nodes`).
    Fail,
    /// The node is Failed and the campaign halts.
    Halt,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnReadyTimeout {
    Halt,
    Proceed,
}

/// A validated campaign file.
#[derive(Debug, Clone, PartialEq)]
pub struct CampaignSpec {
    pub name: String,
    pub target_version: String,
    pub action: String,
    pub strategy: Strategy,
    pub max_parallel: Amount,
    pub max_failed_nodes: u32,
    pub max_retries_per_node: u32,
    pub reboot_timeout: Millis,
    pub health_wait: Millis,
    pub health_stable: Millis,
    pub ready_timeout: Millis,
    pub on_ready_timeout: OnReadyTimeout,
    pub on_precheck_fail: OnPrecheckFail,
    pub stop_grace: Millis,
    pub pause_between_waves: Millis,
    /// Only these nodes, when given.
    pub nodes: Option<Vec<NodeId>>,
    /// Start these first when the rules allow.
    pub order: Vec<NodeId>,
    /// URLs that receive the campaign's events (started, node failed, halted, completed, ...).
    pub webhooks: Vec<String>,
    /// Each node's expected time out of service, learned from earlier campaigns (not a file
    /// key: the orchestrator and the simulator fill it in). The planner starts the longest
    /// first; empty when nothing was learned.
    pub expected: HashMap<NodeId, Millis>,
    /// Refuse to start while any node of the fleet is down (`require_all_up`).
    pub require_all_up: bool,
    /// Run on the orchestrator's host before the campaign starts; a non-zero exit refuses the
    /// start (`before_start`, argv with `{campaign}`, `{fleet}`, `{target}`).
    pub before_start: Vec<String>,
    /// When nodes may start (`windows` in `timezone`); none: at any time.
    pub windows: Option<crate::window::Windows>,
    /// When the orchestrator creates and starts this campaign by itself (`schedule`, cron in
    /// `timezone`), once it is added with `baton schedule add`; none: only when asked.
    pub schedule: Option<crate::schedule::Schedule>,
    /// Warn (event, metric, webhook) when the fleet stays in mixed mode longer than this after
    /// the campaign started (`mixed_mode_limit`; none: the orchestrator's default, 4 weeks).
    pub mixed_mode_limit: Option<crate::units::Millis>,
    /// An agent action run on every node of the fleet once the campaign is committed, under the
    /// same rules and strategy (the after-commit pass: drained, the action, a reboot only if it
    /// asks, verified, restored); none: the commit ends the campaign.
    pub after_commit_action: Option<String>,
    /// What `domain-walk` walks (`walk`): update domains (the default) or fault domains.
    pub walk: Walk,
    /// No node starts while more targeted nodes than this are unhealthy: seen down (agent
    /// unreachable, health checks failing), or updated or failed and not back in service
    /// (`max_unhealthy`, a count or a percentage of the targeted nodes, rounded down); a node
    /// handed over out of service may start regardless.
    pub max_unhealthy: Option<u32>,
}

impl CampaignSpec {
    /// The domain `domain-walk` walks that node `n` is in.
    pub fn walk_domain(&self, fleet: &Fleet, n: NodeId) -> Option<u32> {
        let node = &fleet.nodes[n as usize];
        match self.walk {
            Walk::UpdateDomain => node.update_domain,
            Walk::FaultDomain => node.fault_domain,
        }
    }
}

impl Fleet {
    pub fn node_id(&self, name: &str) -> Option<NodeId> {
        self.by_name.get(name).copied()
    }
    pub fn node_name(&self, id: NodeId) -> &str {
        &self.nodes[id as usize].name
    }
    /// Workloads per node (indices into `workloads`).
    pub fn workloads_by_node(&self) -> Vec<Vec<u32>> {
        let mut v = vec![Vec::new(); self.nodes.len()];
        for (i, w) in self.workloads.iter().enumerate() {
            v[w.node as usize].push(i as u32);
        }
        v
    }
    /// Position of a version in the chain.
    pub fn version_rank(&self, v: &str) -> Option<usize> {
        self.versions.iter().position(|x| x == v)
    }
}

/// Members that may be down at once for a service with `n` members (DESIGN.md §Safety rules).
pub fn allowance(rule: &Rule, quorum: bool, n: usize) -> usize {
    let by_rule = match rule {
        Rule::MaxUnavailable(a) => a.of_ceil(n).min(n),
        Rule::MinAvailable(Amount::Count(m)) => n.saturating_sub(*m as usize),
        Rule::MinAvailable(p) => n.saturating_sub(p.of_ceil(n)),
    };
    if quorum {
        by_rule.min(n.saturating_sub(1) / 2)
    } else {
        by_rule
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowances_follow_design() {
        let mu = |a| Rule::MaxUnavailable(a);
        let ma = |a| Rule::MinAvailable(a);
        assert_eq!(allowance(&mu(Amount::Count(1)), false, 3), 1);
        assert_eq!(allowance(&mu(Amount::Percent(25.0)), false, 3), 1);
        assert_eq!(allowance(&mu(Amount::Percent(25.0)), false, 10), 3);
        assert_eq!(allowance(&ma(Amount::Count(2)), false, 3), 1);
        assert_eq!(allowance(&ma(Amount::Percent(50.0)), false, 5), 2);
        assert_eq!(allowance(&ma(Amount::Percent(100.0)), false, 5), 0);
        assert_eq!(allowance(&mu(Amount::Count(5)), true, 5), 2);
        assert_eq!(allowance(&mu(Amount::Count(1)), true, 5), 1);
        assert_eq!(allowance(&mu(Amount::Count(1)), true, 2), 0);
        assert_eq!(allowance(&mu(Amount::Count(9)), false, 3), 3);
    }

    #[test]
    fn strategies_parse_by_name() {
        for k in Strategy::ALL {
            assert_eq!(k.as_str().parse::<Strategy>(), Ok(k));
        }
        let e = "fastest".parse::<Strategy>().unwrap_err();
        assert_eq!(e, UnknownStrategy { name: "fastest".into() });
        assert_eq!(
            e.to_string(),
            "unknown strategy `fastest`: use continuous, domain-walk, one-at-a-time or batch"
        );
    }
}
