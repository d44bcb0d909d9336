//! The campaign state machine, event-sourced and sans-IO.
//!
//! `state = fold(journal)`: [`Campaign::handle`] takes the time and one [`Event`] and returns the
//! [`Command`]s that follow from it. The driver (simulator or orchestrator) appends the event to
//! its journal before it sends those commands; replaying the journal through `handle` gives the
//! same state. An event that is not legal in the current state returns a [`CampaignError`] and
//! leaves the state untouched, so it is never journaled.

use crate::model::*;
use crate::plan::{plan, Infeasible, Placement, Plan};
use crate::units::{format_duration, Millis};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    Planned,
    Running,
    Paused,
    Halted,
    Completed,
    /// Committed (the level is raised), and `after_commit_action` runs on every node.
    AfterCommit,
    Committed,
    RollingBack,
    RolledBack,
    Aborted,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Planned => "planned",
            Phase::Running => "running",
            Phase::Paused => "paused",
            Phase::Halted => "halted",
            Phase::Completed => "completed",
            Phase::AfterCommit => "after-commit",
            Phase::Committed => "committed",
            Phase::RollingBack => "rolling-back",
            Phase::RolledBack => "rolled-back",
            Phase::Aborted => "aborted",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Forward (to the target), back (rollback to the version each node had), or after the commit
/// (`after_commit_action` on every node, at the level).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pass {
    Forward,
    Back,
    AfterCommit,
}

impl Pass {
    pub fn as_str(self) -> &'static str {
        match self {
            Pass::Forward => "forward",
            Pass::Back => "rollback",
            Pass::AfterCommit => "after-commit",
        }
    }
}

/// Whether a node that left the campaign's active states is back in service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "back")]
pub enum Back {
    /// In service.
    In,
    /// Out of service, and stays out until an operator acts.
    Out,
    /// Out of service; healthy since then (if at all) and to be restored once stable.
    Checking { healthy_since: Option<Millis> },
    /// Out of service; being put back (its agent's restore step, then its load balancers).
    Restoring {
        #[serde(default)]
        stage: Stage,
    },
}

/// Which half of a drain or a restore is in flight: the node's load balancers (out of them
/// first on a drain, back into them last on a restore) or the node's own step on its agent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    #[default]
    Agent,
    Balancers,
    /// Restored by its agent, but seen down since `since`: back into its load balancers once
    /// seen up, or given up on (kept out) after `ready_timeout`.
    Waiting {
        since: Millis,
    },
}

/// Hold or release steps a node's agent may fail before the campaign stops trying.
pub const HOLD_TRIES: u32 = 3;

/// Where a node's own auto-updaters stand (agent.toml `[hold]`): held (stopped and masked)
/// from the campaign's start until it ends, so that nothing on the node patches or reboots it
/// meanwhile; then released (unmasked, and started again if they were running).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "hold")]
pub enum Hold {
    /// Never held in this campaign.
    #[default]
    None,
    /// The hold step was sent; given up on at `deadline`.
    Holding {
        attempt: u32,
        deadline: Millis,
    },
    /// Held (or the hold failed part way): to be released.
    Held,
    /// The release step was sent; given up on at `deadline`.
    Releasing {
        attempt: u32,
        deadline: Millis,
    },
    Released,
}

/// A node's lifecycle in a campaign (DESIGN.md §Node lifecycle).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "state")]
pub enum NodeState {
    /// Not part of this campaign.
    NotTargeted,
    /// Waiting to start. `out_of_service` is set for a node queued for rollback that never got
    /// back into service after its update: it counts as down while it waits.
    Pending {
        #[serde(default)]
        out_of_service: bool,
    },
    /// The node's prechecks run before anything is touched: it is still in service, and its
    /// place (max_parallel, its services' allowances) is held for it.
    /// `attempt` counts the node's prechecks in this campaign: one that waited again (the
    /// campaign paused meanwhile) is prechecked afresh under a new step id.
    Prechecking {
        attempt: u32,
    },
    /// Being taken out of service; the workload moves are kept so that a resent drain is the
    /// same drain.
    Draining {
        moves: Vec<WorkloadMove>,
        #[serde(default)]
        stage: Stage,
    },
    Updating {
        attempt: u32,
    },
    Rebooting {
        deadline: Millis,
        old_boot: Option<String>,
    },
    Verifying {
        since: Millis,
        healthy_since: Option<Millis>,
    },
    /// Being put back into service: its agent's restore step, then its load balancers.
    Restoring {
        #[serde(default)]
        stage: Stage,
    },
    Done {
        back: Back,
    },
    Failed {
        reason: String,
        back: Back,
    },
    Skipped {
        reason: String,
    },
}

impl NodeState {
    pub fn name(&self) -> &'static str {
        match self {
            NodeState::NotTargeted => "not-targeted",
            NodeState::Pending { .. } => "pending",
            NodeState::Prechecking { .. } => "prechecking",
            NodeState::Draining { .. } => "draining",
            NodeState::Updating { .. } => "updating",
            NodeState::Rebooting { .. } => "rebooting",
            NodeState::Verifying { .. } => "verifying",
            NodeState::Restoring { .. } => "restoring",
            NodeState::Done { .. } => "done",
            NodeState::Failed { .. } => "failed",
            NodeState::Skipped { .. } => "skipped",
        }
    }
    /// In the campaign's active states (counted against `max_parallel`).
    pub fn is_active(&self) -> bool {
        matches!(
            self,
            NodeState::Prechecking { .. }
                | NodeState::Draining { .. }
                | NodeState::Updating { .. }
                | NodeState::Rebooting { .. }
                | NodeState::Verifying { .. }
                | NodeState::Restoring { .. }
        )
    }
    pub fn is_terminal(&self) -> bool {
        matches!(self, NodeState::Done { .. } | NodeState::Failed { .. } | NodeState::Skipped { .. })
    }
    pub fn back(&self) -> Option<&Back> {
        match self {
            NodeState::Done { back } | NodeState::Failed { back, .. } => Some(back),
            _ => None,
        }
    }
    /// Out of service because of the campaign.
    pub fn is_out(&self) -> bool {
        (self.is_active() && !matches!(self, NodeState::Prechecking { .. }))
            || self.back().map(|b| *b != Back::In).unwrap_or(false)
            || matches!(self, NodeState::Pending { out_of_service: true })
    }
}

/// Everything the campaign knows about one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRun {
    pub state: NodeState,
    pub pass: Pass,
    /// Last version known (from the fleet file, then from the agent).
    pub version: Option<String>,
    /// The version before the campaign: where a rollback takes the node.
    pub from_version: Option<String>,
    pub boot_id: Option<String>,
    /// Observed down outside the campaign (crashed, unreachable, ...).
    pub observed_down: bool,
    /// Since when the node's agent does not answer, while the campaign waits on one of its
    /// steps. Nothing is assumed about the step meanwhile; after `reboot_timeout` it fails.
    #[serde(default)]
    pub unreachable_since: Option<Millis>,
    pub started_at: Option<Millis>,
    pub finished_at: Option<Millis>,
    /// Left out of service by an earlier campaign of the fleet (failed and not put back): it
    /// counts as down until this campaign restores it.
    #[serde(default)]
    pub left_out: bool,
    /// Prechecks sent to the node in this campaign (each under its own step id).
    #[serde(default)]
    pub prechecks: u32,
    /// What the node's failing health checks said when it was last reported unhealthy.
    #[serde(default)]
    pub unhealthy: Option<String>,
    /// Its auto-updaters, and how many hold or release steps it was sent (each has its own id).
    #[serde(default)]
    pub hold: Hold,
    #[serde(default)]
    pub hold_steps: u32,
    /// Hold steps the agent failed in a row, and release steps.
    #[serde(default)]
    pub hold_failures: u32,
    #[serde(default)]
    pub release_failures: u32,
    /// Why its auto-updaters could not be released, when they could not.
    #[serde(default)]
    pub hold_error: Option<String>,
    /// Fence steps sent to the node (each has its own id); fenced since the last one.
    #[serde(default)]
    pub fences: u32,
    /// An operator let it back into service at its older version (`unfence`): this campaign
    /// does not fence it again.
    #[serde(default)]
    pub unfenced: bool,
}

/// The plan as journaled in the campaign's first event, by node name, so that a campaign
/// replays with the plan it ran even after baton's planner changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanRecord {
    pub waves: Vec<Vec<String>>,
    pub skipped: Vec<SkipRecord>,
    pub lower_bound: usize,
    pub binding: String,
    pub max_parallel: usize,
    /// Nodes an earlier campaign left out of service when this one was created.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub left_out: Vec<String>,
    /// `continuous`: the order nodes start in (absent: the waves' order, as before it existed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub start: Vec<String>,
    /// Whether each node's prechecks run before it is drained (absent: a campaign journaled
    /// before prechecks existed, which must replay as it ran).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub prechecks: bool,
    /// Whether nodes' auto-updaters are held for the campaign (absent: journaled before holds).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub holds: bool,
    /// Whether a node named in `order` whose hold is in flight keeps later nodes from starting
    /// (absent: journaled before, when they went ahead of it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub order_waits: bool,
    /// Whether a node older than the committed level is kept out of service rather than put
    /// back (a failed update of a fenced node), a rollback goes no lower than the level, and a
    /// node handed over out of service (`left_out`: fenced, say) may start while it is seen
    /// down (absent: journaled before, when none of that held).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fence_rules: bool,
    /// Whether a node's restore step carries its workloads back from where its drain (or an
    /// earlier one) moved them, to their preferred nodes (absent: journaled before failback,
    /// when workloads stayed where they were moved).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub failback: bool,
    /// Whether load balancers are told in steps of their own, ordered by the core (absent:
    /// journaled before, when the drain and restore steps did it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lb_steps: bool,
    /// The after-commit pass, planned with the campaign (absent: no `after_commit_action`, or
    /// journaled before the pass existed, when a commit ended the campaign).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_commit: Option<Box<AfterCommitRecord>>,
}

/// The plan of the after-commit pass, by node name: the action and the order every node of the
/// fleet takes it in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AfterCommitRecord {
    pub action: String,
    pub waves: Vec<Vec<String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub start: Vec<String>,
    pub lower_bound: usize,
    pub binding: String,
    pub max_parallel: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkipRecord {
    pub node: String,
    pub reason: String,
}

/// An input to the state machine. Operator actions carry who did them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "event")]
pub enum Event {
    /// The campaign's first event: its unique id (step ids derive from it, never from the
    /// name an operator reuses) and the plan it runs. Only ever first; `handle` refuses it.
    Planned {
        id: String,
        plan: PlanRecord,
    },
    Start {
        by: String,
    },
    Pause {
        by: String,
    },
    Resume {
        by: String,
    },
    Abort {
        by: String,
    },
    Rollback {
        by: String,
    },
    Commit {
        by: String,
    },
    /// An operator lets a fenced node back into service at its older version.
    Unfence {
        node: String,
        by: String,
    },
    /// Time passed; timers are due.
    Tick,
    /// A step finished well. For an update, `reboot` says the node must reboot, `boot_id` is the
    /// boot id before that reboot and `version` the version installed.
    StepOk {
        node: String,
        step: String,
        #[serde(default)]
        reboot: bool,
        #[serde(default)]
        boot_id: Option<String>,
        #[serde(default)]
        version: Option<String>,
    },
    StepFailed {
        node: String,
        step: String,
        reason: String,
    },
    /// The node's agent answered with this boot id (and the version it reports, if any).
    Booted {
        node: String,
        boot_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<String>,
    },
    /// The node's health checks, as of now, and the version its agent reports; when unhealthy,
    /// what its failing checks said.
    Health {
        node: String,
        healthy: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
    /// The node was seen up or down, outside of what the campaign did to it.
    Observed {
        node: String,
        up: bool,
        #[serde(default)]
        version: Option<String>,
    },
    /// The node's agent stopped answering / answers again.
    Unreachable {
        node: String,
    },
    Reachable {
        node: String,
    },
    /// The maintenance window opened or closed.
    Window {
        open: bool,
    },
    /// A named gate (alert, health policy, ...) opened or closed.
    Gate {
        name: String,
        open: bool,
    },
    /// A campaign hook ran on the orchestrator's host (`before_start`): whether it worked, and
    /// the tail of what it printed. Only before the start; a failed one refused the start.
    Hook {
        hook: String,
        ok: bool,
        #[serde(default)]
        output: String,
    },
}

/// A movable workload not on its preferred node, where it is and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Displaced {
    pub workload: String,
    pub at: String,
    pub preferred: String,
    pub reason: String,
}

/// A workload to move: off a node being drained, or back to its preferred node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadMove {
    pub workload: String,
    pub to: String,
    pub live: bool,
}

/// An output of the state machine, for the driver to carry out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "command")]
pub enum Command {
    /// Stop and mask the node's auto-updaters, recording which were running.
    Hold { node: String, step: String },
    /// Unmask the node's auto-updaters and start those that were running before the hold.
    Release { node: String, step: String },
    /// Run the node's prechecks; the node is not touched.
    Precheck { node: String, step: String },
    /// Take the node out of service: out of the load balancer, workloads moved, local services
    /// stopped with `stop_grace` then forced.
    Drain { node: String, step: String, stop_grace: Millis, moves: Vec<WorkloadMove> },
    /// Take the node out of every load balancer in front of its services (drained of sessions,
    /// then in maintenance), before its drain stops anything.
    LbOut { node: String, step: String },
    /// Put the node back into its load balancers, after its restore step (services started,
    /// health checks passed for `health_stable`).
    LbIn { node: String, step: String },
    /// Run the allow-listed `action` on the node's agent.
    Update { node: String, step: String, action: String, version: String },
    /// Report `Booted` when the node answers with a boot id other than `old_boot`.
    WatchBoot { node: String, old_boot: Option<String>, deadline: Millis },
    /// Report `Health` for the node until told otherwise.
    WatchHealth { node: String },
    /// Put the node back into service; `moves` are the workloads that go back to their
    /// preferred nodes with it (failback): onto this node, or onto others already back.
    Restore {
        node: String,
        step: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        moves: Vec<WorkloadMove>,
    },
    /// Keep the node out of service: out of its load balancers and its services kept stopped
    /// (the agent's fence step), since it may not rejoin (older than the committed level).
    Fence { node: String, step: String, stop_grace: Millis, reason: String },
    /// Let a fenced node back into service as it is (an operator's `unfence`): its agent's
    /// restore step (services started), then back into its load balancers.
    Unfence { node: String, step: String },
    /// Something worth telling people about (webhooks, logs).
    Notify { notice: Notice },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "notice")]
pub enum Notice {
    Phase {
        from: Phase,
        to: Phase,
        by: Option<String>,
    },
    NodeDone {
        node: String,
    },
    NodeFailed {
        node: String,
        reason: String,
    },
    /// A node's auto-updaters could not be released: they may still be stopped and masked.
    HoldNotReleased {
        node: String,
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CampaignError {
    #[error("cannot {action} a campaign that is {phase}")]
    NotAllowed { action: &'static str, phase: Phase },
    #[error("no node named {0} in this fleet")]
    UnknownNode(String),
    #[error("node {node} is not waiting for step {step} (it is {state})")]
    StaleStep { node: String, step: String, state: &'static str },
    #[error("commit refused: {0}")]
    CommitRefused(String),
    #[error("start refused: {0}")]
    StartRefused(String),
    #[error("node {0} is not fenced")]
    NotFenced(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Campaign {
    /// Unique for the life of the journal; step ids derive from it.
    id: String,
    /// Replayed from a schema-1 journal: an update reported without a version meant "at the
    /// target" then, and must mean it again for the journal to replay as it ran.
    legacy: bool,
    /// Nodes are prechecked before they are drained (on the forward pass): every campaign
    /// created now; not one journaled before prechecks existed.
    prechecks: bool,
    /// Nodes' auto-updaters are held for the campaign (every campaign created now).
    holds: bool,
    /// When the campaign was started (its first node may be updated from then on).
    pub started_at: Option<Millis>,
    /// A node named in `order` is not overtaken while its hold is in flight (every campaign
    /// created now; not one journaled before, which must replay as it ran).
    order_waits: bool,
    /// Nodes older than the committed level are not put back, rollbacks go no lower than it,
    /// and nodes handed over out of service may start while seen down (every campaign created
    /// now; not one journaled before).
    fence_rules: bool,
    /// Restore steps carry workloads back to their preferred nodes (every campaign created now).
    failback: bool,
    /// Load balancers are told in steps of their own (every campaign created now).
    lb_steps: bool,
    /// Per node, workload moves onto or off it that a drain or restore in flight carries: it
    /// neither starts (its drain would move what has not arrived, or what is still leaving) nor
    /// takes other workloads meanwhile (a move undone must find its room).
    busy: Vec<u32>,
    /// Per workload, moves of it in flight (one at most).
    in_flight: Vec<u32>,
    /// Workload index by name (the moves in node states name them).
    wl_index: std::collections::HashMap<String, u32>,
    /// The failback moves each node's restore step carries (so a resent restore is the same).
    /// As (workload, from, to).
    restore_moves: std::collections::BTreeMap<NodeId, Vec<(u32, NodeId, NodeId)>>,
    /// Whether each node is named in the campaign's `order` and still keeps its place while
    /// its hold is answered: one whose hold failed or was not answered in time loses it, so
    /// that an agent that never finishes a hold cannot keep the others waiting.
    in_order: Vec<bool>,
    /// Hold and release steps in flight, by when they are given up on.
    hold_timers: BTreeSet<(Millis, NodeId)>,
    /// Nodes whose auto-updaters are held and are to be released when the campaign ends.
    to_release: BTreeSet<NodeId>,
    pub spec: CampaignSpec,
    pub fleet: Arc<Fleet>,
    /// The plan of the pass that runs: the campaign's own, then the after-commit pass's.
    pub plan: Plan,
    /// The after-commit pass's action (journaled with the plan), and its plan until the commit
    /// starts it (then `plan`).
    after_action: Option<String>,
    after_plan: Option<Plan>,
    pub phase: Phase,
    pub pass: Pass,
    pub nodes: Vec<NodeRun>,
    /// The functional level (raised by commit).
    pub level: Option<String>,
    pub max_parallel: u32,
    /// Failed nodes, and how many of them an operator accepted by resuming.
    pub failed: u32,
    pub failed_accepted: u32,
    pub window_open: bool,
    /// When the campaign's next maintenance window opens, while starts wait for it.
    window_wait: Option<Millis>,
    pub closed_gates: BTreeSet<String>,
    pub placement: Placement,
    rank: Vec<u32>,
    by_rank: Vec<NodeId>,
    /// Barrier group per node: the wave (batch) or update domain (domain-walk); 0 otherwise.
    group: Vec<u32>,
    group_left: Vec<u32>,
    current_group: u32,
    group_open_at: Millis,
    pending: BTreeSet<u32>,
    /// Pending ranks that may be able to start. A pending node found blocked leaves this set and
    /// waits on what blocked it; it comes back only when that changes, so a start scan never
    /// re-examines a node that cannot have become startable.
    candidates: BTreeSet<u32>,
    /// Per service: pending ranks blocked because the service had no room.
    waiters: Vec<Vec<u32>>,
    /// Pending ranks blocked because their workloads did not fit.
    cap_waiters: Vec<u32>,
    /// Node timers (reboot, readiness, stability), soonest first; kept by `set_state`.
    timers: BTreeSet<(Millis, NodeId)>,
    active: u32,
    /// Members down per service, for any reason.
    down: Vec<u32>,
    /// Nodes whose record changed while the current event was handled, for views kept up to
    /// date in place ([`Campaign::handle_changes`]); empty between events.
    touched: Vec<NodeId>,
}

impl Campaign {
    /// Plans the campaign and sets it up in the Planned phase. `id` must be unique for the life
    /// of the journal and of the agents' journals (the orchestrator draws it at random): step
    /// ids derive from it, so a campaign re-run under the same name runs every step again.
    pub fn new(id: impl Into<String>, fleet: Arc<Fleet>, spec: CampaignSpec) -> Result<Campaign, Infeasible> {
        Campaign::create(id, fleet, spec, &[])
    }

    /// As [`Campaign::new`], with the nodes an earlier campaign left out of service: they count
    /// as down until this campaign restores them.
    pub fn create(
        id: impl Into<String>,
        fleet: Arc<Fleet>,
        spec: CampaignSpec,
        left_out: &[NodeId],
    ) -> Result<Campaign, Infeasible> {
        let plan = plan(&fleet, &spec)?;
        // The after-commit pass is planned now, so that a campaign that could never run it is
        // refused before it starts, and it replays with the order it ran.
        let after = match &spec.after_commit_action {
            Some(action) => {
                let p = crate::plan::plan_after_commit(&fleet, &spec).map_err(|e| Infeasible {
                    message: format!("after_commit_action {action} on every node: {}", e.message),
                    ..e
                })?;
                Some((action.clone(), p))
            }
            None => None,
        };
        let mut c = Campaign::from_plan(id.into(), fleet, spec, plan, left_out);
        (c.after_action, c.after_plan) = after.unzip();
        c.prechecks = true;
        c.holds = true;
        c.order_waits = true;
        c.fence_rules = true;
        c.failback = true;
        c.lb_steps = true;
        Ok(c)
    }

    /// Whether nodes' auto-updaters are held for the campaign (on by default). The choice is
    /// journaled with the plan.
    pub fn with_holds(mut self, on: bool) -> Campaign {
        self.holds = on;
        self
    }

    /// Whether nodes are prechecked before they are drained (on by default). A campaign without
    /// them drains a node as soon as it starts, as campaigns journaled before prechecks did;
    /// the choice is journaled with the plan, so a replay makes the same one.
    pub fn with_prechecks(mut self, on: bool) -> Campaign {
        self.prechecks = on;
        self
    }

    /// The event that opens the campaign's journal: its id and plan.
    pub fn planned_event(&self) -> Event {
        let name = |n: &NodeId| self.fleet.node_name(*n).to_string();
        Event::Planned {
            id: self.id.clone(),
            plan: PlanRecord {
                waves: self.plan.waves.iter().map(|w| w.iter().map(name).collect()).collect(),
                skipped: self
                    .plan
                    .skipped
                    .iter()
                    .map(|(n, reason)| SkipRecord { node: name(n), reason: reason.clone() })
                    .collect(),
                lower_bound: self.plan.lower_bound,
                binding: self.plan.binding.clone(),
                max_parallel: self.plan.max_parallel,
                left_out: (0..self.nodes.len() as NodeId)
                    .filter(|&n| self.nodes[n as usize].left_out)
                    .map(|n| name(&n))
                    .collect(),
                start: self.plan.start.iter().map(name).collect(),
                prechecks: self.prechecks,
                holds: self.holds,
                order_waits: self.order_waits,
                fence_rules: self.fence_rules,
                failback: self.failback,
                lb_steps: self.lb_steps,
                after_commit: self.after_action.clone().zip(self.after_plan.as_ref()).map(|(action, p)| {
                    Box::new(AfterCommitRecord {
                        action,
                        waves: p.waves.iter().map(|w| w.iter().map(name).collect()).collect(),
                        start: p.start.iter().map(name).collect(),
                        lower_bound: p.lower_bound,
                        binding: p.binding.clone(),
                        max_parallel: p.max_parallel,
                    })
                }),
            },
        }
    }

    /// The campaign as its journal begins: from the journaled plan when the first event is
    /// `planned`, else (a journal of schema 1) planned again, with the name as its id as then.
    /// Returns the campaign and how many events it took from the journal (1 or 0).
    pub fn begin(
        fleet: Arc<Fleet>,
        spec: CampaignSpec,
        first: Option<&Event>,
    ) -> Result<(Campaign, usize), ReplayError> {
        let Some(Event::Planned { id, plan: rec }) = first else {
            // Planned again exactly as baton did when it wrote schema 1.
            let id = spec.name.clone();
            let plan = crate::plan::plan_by(&fleet, &spec, crate::plan::Rules::V1)
                .map_err(ReplayError::Infeasible)?;
            let mut c = Campaign::from_plan(id, fleet, spec, plan, &[]);
            c.legacy = true;
            return Ok((c, 0));
        };
        let node = |name: &str| fleet.node_id(name).ok_or_else(|| ReplayError::UnknownNode(name.to_string()));
        // A journaled plan, by node name: each planned node once, and a start order (for
        // `continuous` only) that names each planned node once.
        let journaled = |waves: &[Vec<String>], start: &[String]| {
            let mut ids = Vec::with_capacity(waves.len());
            for w in waves {
                ids.push(w.iter().map(|n| node(n)).collect::<Result<Vec<_>, _>>()?);
            }
            let start = start.iter().map(|n| node(n)).collect::<Result<Vec<_>, _>>()?;
            let mut planned: Vec<NodeId> = ids.iter().flatten().copied().collect();
            planned.sort_unstable();
            planned.dedup();
            if planned.len() != ids.iter().map(Vec::len).sum::<usize>() {
                return Err(ReplayError::BadStart);
            }
            if !start.is_empty() {
                let mut named = start.clone();
                named.sort_unstable();
                if spec.strategy != Strategy::Continuous || planned != named {
                    return Err(ReplayError::BadStart);
                }
            }
            Ok((ids, start))
        };
        let (waves, start) = journaled(&rec.waves, &rec.start)?;
        let mut skipped = Vec::with_capacity(rec.skipped.len());
        for s in &rec.skipped {
            skipped.push((node(&s.node)?, s.reason.clone()));
        }
        let left_out = rec.left_out.iter().map(|n| node(n)).collect::<Result<Vec<_>, _>>()?;
        let after = match &rec.after_commit {
            Some(a) => {
                let (waves, start) = journaled(&a.waves, &a.start)?;
                let p = Plan {
                    campaign: spec.name.clone(),
                    strategy: spec.strategy,
                    waves,
                    skipped: Vec::new(),
                    lower_bound: a.lower_bound,
                    binding: a.binding.clone(),
                    max_parallel: a.max_parallel,
                    start,
                };
                Some((a.action.clone(), p))
            }
            None => None,
        };
        let plan = Plan {
            campaign: spec.name.clone(),
            strategy: spec.strategy,
            waves,
            skipped,
            lower_bound: rec.lower_bound,
            binding: rec.binding.clone(),
            max_parallel: rec.max_parallel,
            start,
        };
        let mut c = Campaign::from_plan(id.clone(), fleet, spec, plan, &left_out);
        (c.after_action, c.after_plan) = after.unzip();
        c.prechecks = rec.prechecks;
        c.holds = rec.holds;
        c.order_waits = rec.order_waits;
        c.fence_rules = rec.fence_rules;
        c.failback = rec.failback;
        c.lb_steps = rec.lb_steps;
        Ok((c, 1))
    }

    /// Whether the core orders the load balancers' steps (else the drain and restore steps do).
    pub fn balancer_steps(&self) -> bool {
        self.lb_steps
    }

    /// Whether restore steps carry workloads back to their preferred nodes (failback).
    pub fn fails_back(&self) -> bool {
        self.failback
    }

    /// Whether nodes' auto-updaters are held for this campaign.
    pub fn holds_auto_updaters(&self) -> bool {
        self.holds
    }

    /// The campaign's unique id.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn from_plan(
        id: String,
        fleet: Arc<Fleet>,
        spec: CampaignSpec,
        plan: Plan,
        left_out: &[NodeId],
    ) -> Campaign {
        let mut nodes: Vec<NodeRun> = fleet
            .nodes
            .iter()
            .map(|node| NodeRun {
                state: NodeState::NotTargeted,
                pass: Pass::Forward,
                version: node.version.clone(),
                from_version: node.version.clone(),
                boot_id: None,
                observed_down: false,
                unreachable_since: None,
                started_at: None,
                finished_at: None,
                left_out: false,
                prechecks: 0,
                unhealthy: None,
                hold: Hold::None,
                hold_steps: 0,
                hold_failures: 0,
                release_failures: 0,
                hold_error: None,
                fences: 0,
                unfenced: false,
            })
            .collect();
        for &n in left_out {
            if let Some(r) = nodes.get_mut(n as usize) {
                r.left_out = true;
            }
        }
        for (id, reason) in &plan.skipped {
            nodes[*id as usize].state = NodeState::Skipped { reason: reason.clone() };
        }
        let Order { rank, by_rank, group, group_left } = Order::of(&fleet, &spec, &plan);
        for &id in &by_rank {
            nodes[id as usize].state = NodeState::Pending { out_of_service: false };
        }
        let mut down = vec![0; fleet.services.len()];
        for (i, r) in nodes.iter().enumerate() {
            if r.left_out {
                for &s in &fleet.memberships[i] {
                    down[s as usize] += 1;
                }
            }
        }
        Campaign {
            id,
            legacy: false,
            prechecks: false,
            holds: false,
            started_at: None,
            order_waits: false,
            fence_rules: false,
            failback: false,
            lb_steps: false,
            busy: vec![0; fleet.nodes.len()],
            in_flight: vec![0; fleet.workloads.len()],
            wl_index: fleet.workloads.iter().enumerate().map(|(i, w)| (w.name.clone(), i as u32)).collect(),
            restore_moves: Default::default(),
            in_order: {
                let mut v = vec![false; fleet.nodes.len()];
                for &n in &spec.order {
                    if let Some(b) = v.get_mut(n as usize) {
                        *b = true;
                    }
                }
                v
            },
            hold_timers: BTreeSet::new(),
            to_release: BTreeSet::new(),
            max_parallel: plan.max_parallel as u32,
            level: fleet.functional_level.clone(),
            placement: Placement::initial(&fleet),
            down,
            touched: Vec::new(),
            pending: (0..by_rank.len() as u32).collect(),
            candidates: (0..by_rank.len() as u32).collect(),
            waiters: vec![Vec::new(); fleet.services.len()],
            cap_waiters: Vec::new(),
            spec,
            plan,
            after_action: None,
            after_plan: None,
            phase: Phase::Planned,
            pass: Pass::Forward,
            nodes,
            failed: 0,
            failed_accepted: 0,
            window_open: true,
            window_wait: None,
            closed_gates: BTreeSet::new(),
            rank,
            by_rank,
            group,
            group_left,
            current_group: 0,
            group_open_at: 0,
            timers: BTreeSet::new(),
            active: 0,
            fleet,
        }
    }

    /// Rebuilds a campaign from its journal.
    pub fn replay<'a>(
        fleet: Arc<Fleet>,
        spec: CampaignSpec,
        journal: impl IntoIterator<Item = &'a (Millis, Event)>,
    ) -> Result<Campaign, ReplayError> {
        let mut entries = journal.into_iter().peekable();
        let first = entries.peek().map(|(_, e)| e);
        let (mut c, taken) = Campaign::begin(fleet, spec, first)?;
        for (i, (t, e)) in entries.enumerate().skip(taken) {
            c.handle(*t, e.clone()).map_err(|err| ReplayError::Event { index: i, err })?;
        }
        Ok(c)
    }

    /// Whether the campaign holds its fleet (safety rule 7): from its creation until it has
    /// ended and none of its nodes is active, being brought back, or waiting out of service.
    /// Nodes it failed and left out stay counted as down by the next campaign instead.
    pub fn holds_fleet(&self) -> bool {
        let live = matches!(
            self.phase,
            Phase::Planned
                | Phase::Running
                | Phase::Paused
                | Phase::Halted
                | Phase::RollingBack
                | Phase::AfterCommit
        );
        live || self.nodes.iter().any(|r| {
            r.state.is_active()
                || matches!(r.state, NodeState::Pending { out_of_service: true })
                || matches!(r.state.back(), Some(Back::Checking { .. } | Back::Restoring { .. }))
                || matches!(r.hold, Hold::Holding { .. } | Hold::Held | Hold::Releasing { .. })
        })
    }

    /// Nodes out of service because of this campaign or an earlier one (what the next
    /// campaign must count as down).
    pub fn out_of_service(&self, n: NodeId) -> bool {
        let r = &self.nodes[n as usize];
        r.left_out || r.state.is_out()
    }

    /// While nodes wait for a maintenance window to start: when it opens.
    pub fn window_opens_at(&self) -> Option<Millis> {
        self.window_wait
    }

    /// Nodes in active states.
    pub fn active(&self) -> u32 {
        self.active
    }

    /// Members of service `s` down now, for any reason.
    pub fn down(&self, s: usize) -> u32 {
        self.down[s]
    }

    pub fn failure_threshold_passed(&self) -> bool {
        self.failed > self.spec.max_failed_nodes + self.failed_accepted
    }

    /// Nodes still to start.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// The next time at which [`Event::Tick`] would change something.
    pub fn next_deadline(&self) -> Option<Millis> {
        let mut best = self.timers.first().map(|t| t.0);
        if let Some(w) = self.window_wait {
            best = Some(best.map_or(w, |b| b.min(w)));
        }
        if let Some(&(h, _)) = self.hold_timers.first() {
            best = Some(best.map_or(h, |b| b.min(h)));
        }
        // A barrier pause that has not passed yet (it is cleared once it has).
        if matches!(self.phase, Phase::Running | Phase::AfterCommit)
            && self.group_open_at > 0
            && !self.pending.is_empty()
        {
            best = Some(best.map_or(self.group_open_at, |b| b.min(self.group_open_at)));
        }
        best
    }

    /// The fences and unfences this committed campaign decided, under their own step ids, to
    /// be carried out again (after a restart, or once a refused creation left it guarding the
    /// fleet again): an agent that ran one answers with what it recorded.
    pub fn fence_commands(&self) -> Vec<Command> {
        if !self.level_raised() {
            return Vec::new();
        }
        let mut out = Vec::new();
        for (i, r) in self.nodes.iter().enumerate() {
            let n = i as NodeId;
            let node = self.fleet.node_name(n).to_string();
            if self.is_fenced(n) {
                let step = self.fence_step(n, r.fences - 1, "fence");
                let reason = self.too_old(n).unwrap_or_default();
                out.push(Command::Fence { node, step, stop_grace: self.spec.stop_grace, reason });
            } else if r.unfenced {
                out.push(Command::Unfence { node, step: self.fence_step(n, r.fences, "unfence") });
            }
        }
        out
    }

    /// The commands to send again after the driver restarts: for every node the campaign waits
    /// on, the step it is on, with the same step id (an agent that ran it answers with the
    /// recorded outcome), or the watch it needs.
    pub fn resume_commands(&self) -> Vec<Command> {
        let mut out = Vec::new();
        for (i, r) in self.nodes.iter().enumerate() {
            let n = i as NodeId;
            let node = self.fleet.node_name(n).to_string();
            match &r.hold {
                Hold::Holding { attempt, .. } => {
                    out.push(Command::Hold { node: node.clone(), step: self.hold_step(n, *attempt, "hold") })
                }
                Hold::Releasing { attempt, .. } => out.push(Command::Release {
                    node: node.clone(),
                    step: self.hold_step(n, *attempt, "release"),
                }),
                _ => {}
            }
            match &r.state {
                NodeState::Prechecking { attempt } => {
                    out.push(Command::Precheck { node, step: self.step_id(n, *attempt, "precheck") })
                }
                NodeState::Draining { stage: Stage::Balancers, .. } => {
                    out.push(Command::LbOut { node, step: self.step_id(n, 0, "lb-out") })
                }
                NodeState::Draining { moves, stage: Stage::Agent } => out.push(Command::Drain {
                    node,
                    step: self.step_id(n, 0, "drain"),
                    stop_grace: self.spec.stop_grace,
                    moves: moves.clone(),
                }),
                NodeState::Updating { attempt } => out.push(Command::Update {
                    node,
                    step: self.step_id(n, *attempt, "update"),
                    action: self.action_for(n).to_string(),
                    version: self.target_for(n).to_string(),
                }),
                NodeState::Rebooting { deadline, old_boot } => {
                    out.push(Command::WatchBoot { node, old_boot: old_boot.clone(), deadline: *deadline })
                }
                NodeState::Verifying { .. }
                | NodeState::Done { back: Back::Checking { .. } }
                | NodeState::Failed { back: Back::Checking { .. }, .. } => {
                    out.push(Command::WatchHealth { node })
                }
                NodeState::Restoring { stage: Stage::Balancers }
                | NodeState::Done { back: Back::Restoring { stage: Stage::Balancers } }
                | NodeState::Failed { back: Back::Restoring { stage: Stage::Balancers }, .. } => {
                    out.push(Command::LbIn { node, step: self.step_id(n, 0, "lb-in") })
                }
                // Restored, waiting to be seen up (its watch reports it).
                NodeState::Restoring { stage: Stage::Waiting { .. } }
                | NodeState::Done { back: Back::Restoring { stage: Stage::Waiting { .. } } }
                | NodeState::Failed { back: Back::Restoring { stage: Stage::Waiting { .. } }, .. } => {}
                NodeState::Restoring { .. }
                | NodeState::Done { back: Back::Restoring { .. } }
                | NodeState::Failed { back: Back::Restoring { .. }, .. } => out.push(Command::Restore {
                    node,
                    step: self.step_id(n, 0, "restore"),
                    moves: self.restore_moves_out(n),
                }),
                _ => {}
            }
        }
        out
    }

    fn node(&self, name: &str) -> Result<NodeId, CampaignError> {
        self.fleet.node_id(name).ok_or_else(|| CampaignError::UnknownNode(name.to_string()))
    }

    /// The step id of a step: derived from the campaign's unique id, node, pass, attempt and
    /// step name, so a resent command carries the same id and an agent can answer with the
    /// recorded outcome, and a new campaign (even under a reused name) never matches an old one.
    pub fn step_id(&self, n: NodeId, attempt: u32, step: &str) -> String {
        let pass = match self.nodes[n as usize].pass {
            Pass::Forward => "",
            Pass::Back => "rb",
            Pass::AfterCommit => "ac",
        };
        format!("{}/{}/{pass}{attempt}/{step}", self.id, self.fleet.node_name(n))
    }

    /// Counted against its services' allowances: down, or held a place while its prechecks run.
    fn is_down(&self, n: NodeId) -> bool {
        let r = &self.nodes[n as usize];
        r.observed_down || r.left_out || r.state.is_out() || matches!(r.state, NodeState::Prechecking { .. })
    }

    /// The one place node state changes, so that the down counts stay right.
    fn set_state(&mut self, n: NodeId, state: NodeState) {
        let was_down = self.is_down(n);
        let was_active = self.nodes[n as usize].state.is_active();
        // An outage seen during one step says nothing about the next one.
        let lost = self.nodes[n as usize].unreachable_since;
        let same = std::mem::discriminant(&self.nodes[n as usize].state) == std::mem::discriminant(&state);
        let keep = if same { lost } else { None };
        if self.lb_steps {
            self.track_arrivals(n, &state);
        }
        let old = self.deadline_of(n, &self.nodes[n as usize].state, lost);
        let new = self.deadline_of(n, &state, keep);
        self.retime(n, old, new);
        self.nodes[n as usize].unreachable_since = keep;
        self.touch(n);
        // Back in service through this campaign: no longer left out by an earlier one.
        if state.back() == Some(&Back::In) {
            self.nodes[n as usize].left_out = false;
            self.touch(n);
        }
        self.nodes[n as usize].state = state;
        self.touch(n);
        self.recount(n, was_down, was_active);
    }

    fn set_unreachable(&mut self, n: NodeId, since: Option<Millis>) {
        let st = &self.nodes[n as usize].state;
        let (old, new) = (
            self.deadline_of(n, st, self.nodes[n as usize].unreachable_since),
            self.deadline_of(n, st, since),
        );
        self.retime(n, old, new);
        self.nodes[n as usize].unreachable_since = since;
        self.touch(n);
    }

    fn retime(&mut self, n: NodeId, old: Option<Millis>, new: Option<Millis>) {
        if old != new {
            if let Some(t) = old {
                self.timers.remove(&(t, n));
            }
            if let Some(t) = new {
                self.timers.insert((t, n));
            }
        }
    }

    /// When a node in this state next needs a look, if ever: reboot timeout, readiness timeout,
    /// the end of its stable-health period, or (a finished node waiting out of service to be
    /// healthy) when the campaign gives up waiting: `ready_timeout` after it finished.
    fn deadline_of(&self, n: NodeId, st: &NodeState, unreachable_since: Option<Millis>) -> Option<Millis> {
        let stable = self.spec.health_stable;
        match st {
            NodeState::Restoring { stage: Stage::Waiting { since } }
            | NodeState::Done { back: Back::Restoring { stage: Stage::Waiting { since } } }
            | NodeState::Failed { back: Back::Restoring { stage: Stage::Waiting { since } }, .. } => {
                Some(since + self.spec.ready_timeout)
            }
            NodeState::Prechecking { .. }
            | NodeState::Draining { .. }
            | NodeState::Updating { .. }
            | NodeState::Restoring { .. } => unreachable_since.map(|t| t + self.spec.reboot_timeout),
            NodeState::Done { back: Back::Restoring { stage: Stage::Agent } }
            | NodeState::Failed { back: Back::Restoring { stage: Stage::Agent }, .. }
                if self.lb_steps =>
            {
                unreachable_since.map(|t| t + self.spec.reboot_timeout)
            }
            NodeState::Rebooting { deadline, .. } => Some(*deadline),
            NodeState::Verifying { since, healthy_since } => {
                let ready = since + self.spec.ready_timeout;
                Some(healthy_since.map_or(ready, |h| ready.min(h + stable)))
            }
            NodeState::Done { back: Back::Checking { healthy_since: Some(h) } }
            | NodeState::Failed { back: Back::Checking { healthy_since: Some(h) }, .. } => Some(h + stable),
            NodeState::Done { back: Back::Checking { healthy_since: None } }
            | NodeState::Failed { back: Back::Checking { healthy_since: None }, .. } => {
                self.nodes[n as usize].finished_at.map(|f| f + self.spec.ready_timeout)
            }
            _ => None,
        }
    }

    fn set_observed_down(&mut self, n: NodeId, down: bool) {
        let was_down = self.is_down(n);
        let was_active = self.nodes[n as usize].state.is_active();
        self.nodes[n as usize].observed_down = down;
        self.touch(n);
        self.recount(n, was_down, was_active);
        if !down && self.pending.contains(&self.rank[n as usize]) {
            self.candidates.insert(self.rank[n as usize]);
        }
    }

    fn recount(&mut self, n: NodeId, was_down: bool, was_active: bool) {
        let is_down = self.is_down(n);
        if was_down != is_down {
            let fleet = self.fleet.clone();
            for &s in &fleet.memberships[n as usize] {
                if is_down {
                    self.down[s as usize] += 1;
                } else {
                    self.down[s as usize] -= 1;
                    let woken = std::mem::take(&mut self.waiters[s as usize]);
                    self.wake(woken);
                }
            }
            if !is_down && !self.cap_waiters.is_empty() {
                let woken = std::mem::take(&mut self.cap_waiters);
                self.wake(woken);
            }
        }
        let is_active = self.nodes[n as usize].state.is_active();
        if was_active && !is_active {
            self.active -= 1;
        } else if !was_active && is_active {
            self.active += 1;
        }
    }

    /// Workload moves node `n`'s state carries while the step carrying them is in flight: its
    /// drain's, or its restore's (failback).
    fn moves_in_flight(&self, n: NodeId, st: &NodeState) -> Vec<(u32, NodeId, NodeId)> {
        match st {
            NodeState::Draining { moves, .. } => moves
                .iter()
                .filter_map(|m| Some((*self.wl_index.get(&m.workload)?, n, self.fleet.node_id(&m.to)?)))
                .collect(),
            NodeState::Restoring { stage: Stage::Agent }
            | NodeState::Done { back: Back::Restoring { stage: Stage::Agent } }
            | NodeState::Failed { back: Back::Restoring { stage: Stage::Agent }, .. } => {
                self.restore_moves.get(&n).cloned().unwrap_or_default()
            }
            _ => Vec::new(),
        }
    }

    /// Counts the moves in flight onto and off each node, and of each workload, as node `n`
    /// goes to `state`; a node with none left may start again.
    fn track_arrivals(&mut self, n: NodeId, state: &NodeState) {
        let before = self.moves_in_flight(n, &self.nodes[n as usize].state);
        let after = self.moves_in_flight(n, state);
        if before == after {
            return;
        }
        for (w, from, to) in before {
            self.in_flight[w as usize] -= 1;
            for d in [from, to] {
                self.busy[d as usize] -= 1;
                if self.busy[d as usize] == 0 {
                    // It may start now, and others may move workloads onto it.
                    let mut woken = std::mem::take(&mut self.cap_waiters);
                    woken.push(self.rank[d as usize]);
                    self.wake(woken);
                }
            }
        }
        for (w, from, to) in after {
            self.in_flight[w as usize] += 1;
            self.busy[from as usize] += 1;
            self.busy[to as usize] += 1;
        }
    }

    /// A restore step that failed: its failback moves are taken as not done (their sources kept
    /// their room meanwhile: a node with moves in flight takes no other workload).
    fn undo_restore_moves(&mut self, n: NodeId) {
        let undo: Vec<(u32, NodeId)> = (self.restore_moves.get(&n).into_iter().flatten())
            .filter(|&&(w, _, to)| self.placement.at[w as usize] == to)
            .map(|&(w, from, _)| (w, from))
            .collect();
        self.placement.apply(&self.fleet, &undo);
    }

    /// A drain's moves not sent after all: its workloads are where they were, on `n`.
    fn undo_drain_moves(&mut self, n: NodeId, moves: &[WorkloadMove]) {
        let undo: Vec<(u32, NodeId)> =
            moves.iter().filter_map(|m| self.wl_index.get(&m.workload)).map(|&w| (w, n)).collect();
        self.placement.apply(&self.fleet, &undo);
    }

    /// The failback moves node `n`'s restore step carries, as sent.
    fn restore_moves_out(&self, n: NodeId) -> Vec<WorkloadMove> {
        let moves: Vec<(u32, NodeId)> =
            self.restore_moves.get(&n).into_iter().flatten().map(|&(w, _, to)| (w, to)).collect();
        self.moves_out(&moves)
    }

    /// Makes waiting pending nodes candidates again.
    fn wake(&mut self, ranks: Vec<u32>) {
        for r in ranks {
            if self.pending.contains(&r) {
                self.candidates.insert(r);
            }
        }
    }

    fn set_phase(&mut self, to: Phase, by: Option<&str>, out: &mut Vec<Command>) {
        if self.phase != to {
            out.push(Command::Notify {
                notice: Notice::Phase { from: self.phase, to, by: by.map(str::to_string) },
            });
            self.phase = to;
        }
    }

    /// Applies one event at time `now` and returns the commands that follow.
    pub fn handle(&mut self, now: Millis, event: Event) -> Result<Vec<Command>, CampaignError> {
        self.handle_changes(now, event).map(|(out, _)| out)
    }

    /// As [`Campaign::handle`], and which nodes' records changed (each once, in id order), so
    /// that a view of the fleet can be kept up to date without looking at every node.
    pub fn handle_changes(
        &mut self,
        now: Millis,
        event: Event,
    ) -> Result<(Vec<Command>, Vec<NodeId>), CampaignError> {
        self.touched.clear();
        let mut out = Vec::new();
        let applied = self.apply(now, event, &mut out);
        let mut touched = std::mem::take(&mut self.touched);
        applied?;
        self.advance(now, &mut out);
        touched.append(&mut self.touched);
        touched.sort_unstable();
        touched.dedup();
        Ok((out, touched))
    }

    fn touch(&mut self, n: NodeId) {
        self.touched.push(n);
    }

    fn not_allowed(&self, action: &'static str) -> CampaignError {
        CampaignError::NotAllowed { action, phase: self.phase }
    }

    /// Checks and applies the event itself. Every check comes before any change.
    fn apply(&mut self, now: Millis, event: Event, out: &mut Vec<Command>) -> Result<(), CampaignError> {
        match event {
            Event::Planned { .. } => return Err(self.not_allowed("plan again")),
            Event::Start { by } => {
                if self.phase != Phase::Planned {
                    return Err(self.not_allowed("start"));
                }
                if self.spec.require_all_up {
                    self.check_all_up()?;
                }
                self.started_at = Some(now);
                self.set_phase(Phase::Running, Some(&by), out);
                if self.holds {
                    // Every node the campaign will update: nothing of theirs patches or reboots
                    // them while the campaign runs.
                    for r in 0..self.by_rank.len() {
                        let n = self.by_rank[r];
                        self.send_hold(n, now, out);
                    }
                }
            }
            Event::Hook { .. } => {
                if self.phase != Phase::Planned {
                    return Err(self.not_allowed("run a start hook for"));
                }
            }
            Event::Pause { by } => {
                if !matches!(self.phase, Phase::Running | Phase::RollingBack | Phase::AfterCommit) {
                    return Err(self.not_allowed("pause"));
                }
                self.set_phase(Phase::Paused, Some(&by), out);
            }
            Event::Resume { by } => {
                if !matches!(self.phase, Phase::Paused | Phase::Halted) {
                    return Err(self.not_allowed("resume"));
                }
                if self.phase == Phase::Halted {
                    // Resuming a halted campaign accepts the failures so far.
                    self.failed_accepted = self.failed.saturating_sub(self.spec.max_failed_nodes);
                }
                self.set_phase(self.running_phase(), Some(&by), out);
            }
            Event::Abort { by } => {
                if matches!(
                    self.phase,
                    Phase::Completed | Phase::Committed | Phase::RolledBack | Phase::Aborted
                ) {
                    return Err(self.not_allowed("abort"));
                }
                if self.pass == Pass::AfterCommit {
                    // The level stays raised (a commit cannot be undone): the campaign ends
                    // committed, the nodes the pass had not reached skipped.
                    self.skip_pending(now, &format!("after-commit pass aborted by {by}"));
                    self.set_phase(Phase::Committed, Some(&by), out);
                    return Ok(());
                }
                self.skip_pending(now, &format!("campaign aborted by {by}"));
                self.set_phase(Phase::Aborted, Some(&by), out);
            }
            Event::Rollback { by } => {
                if self.pass == Pass::AfterCommit {
                    return Err(CampaignError::NotAllowed { action: "roll back", phase: Phase::Committed });
                }
                if !matches!(self.phase, Phase::Paused | Phase::Halted | Phase::Completed)
                    || self.pass == Pass::Back
                {
                    return Err(self.not_allowed("roll back"));
                }
                self.skip_pending(now, &format!("campaign rolled back by {by}"));
                self.pass = Pass::Back;
                self.failed_accepted = self.failed.saturating_sub(self.spec.max_failed_nodes);
                for n in 0..self.nodes.len() as NodeId {
                    self.repend_for_rollback(n);
                }
                self.set_phase(Phase::RollingBack, Some(&by), out);
            }
            Event::Commit { by } => {
                if self.phase != Phase::Completed {
                    return Err(self.not_allowed("commit"));
                }
                self.check_commit()?;
                self.level = Some(self.spec.target_version.clone());
                match self.after_plan.take() {
                    Some(plan) => {
                        self.set_phase(Phase::AfterCommit, Some(&by), out);
                        self.begin_after_commit(plan, now, out);
                    }
                    None => self.set_phase(Phase::Committed, Some(&by), out),
                }
            }
            Event::Unfence { node, by: _ } => {
                let n = self.node(&node)?;
                if !self.level_raised() {
                    return Err(self.not_allowed("unfence a node of"));
                }
                if !self.is_fenced(n) {
                    return Err(CampaignError::NotFenced(node));
                }
                self.nodes[n as usize].unfenced = true;
                let step = self.fence_step(n, self.nodes[n as usize].fences, "unfence");
                self.set_observed_down(n, false);
                out.push(Command::Unfence { node, step });
            }
            Event::Tick => {}
            Event::StepOk { node, step, reboot, boot_id, version } => {
                let n = self.node(&node)?;
                if self.hold_answer(n, now, &step, None, out) {
                    return Ok(());
                }
                let state = self.nodes[n as usize].state.clone();
                match state {
                    NodeState::Prechecking { attempt } if step == self.step_id(n, attempt, "precheck") => {
                        self.prechecked(n, now, out);
                    }
                    NodeState::Draining { moves, stage: Stage::Balancers }
                        if step == self.step_id(n, 0, "lb-out") =>
                    {
                        // Out of every load balancer: only now are its services stopped. Where a
                        // workload was to go went down meanwhile, its moves are found again.
                        let gone = moves.iter().any(|m| {
                            self.fleet.node_id(&m.to).is_some_and(|d| self.nodes[d as usize].observed_down)
                        });
                        let moves = if gone {
                            self.undo_drain_moves(n, &moves);
                            // Its own moves count in `busy` until its state changes below.
                            let mut own = vec![0u32; self.nodes.len()];
                            for m in &moves {
                                if let Some(d) = self.fleet.node_id(&m.to) {
                                    own[d as usize] += 1;
                                }
                            }
                            let found = self.placement.find_moves(
                                &self.fleet,
                                n,
                                |d| !self.is_down(d) && self.busy[d as usize] == own[d as usize],
                                |d| self.settled(d),
                            );
                            match found {
                                Ok(found) => {
                                    self.placement.apply(&self.fleet, &found);
                                    self.moves_out(&found)
                                }
                                Err(_) => {
                                    let why = "drain failed: a node its workloads were to move to went down, and no other has room";
                                    let back = Back::Checking { healthy_since: None };
                                    self.fail(n, now, why.to_string(), back, out);
                                    return Ok(());
                                }
                            }
                        } else {
                            moves
                        };
                        self.set_state(n, NodeState::Draining { moves: moves.clone(), stage: Stage::Agent });
                        out.push(Command::Drain {
                            node,
                            step: self.step_id(n, 0, "drain"),
                            stop_grace: self.spec.stop_grace,
                            moves,
                        });
                    }
                    NodeState::Draining { stage: Stage::Agent, .. }
                        if step == self.step_id(n, 0, "drain") =>
                    {
                        self.send_update(n, 0, out);
                    }
                    NodeState::Updating { attempt } if step == self.step_id(n, attempt, "update") => {
                        // Only the version the node reports counts; none reported changes nothing
                        // (but in a schema-1 journal, where it meant the target).
                        let version = match version {
                            None if self.legacy => Some(self.target_for(n).to_string()),
                            v => v,
                        };
                        if let Some(v) = version {
                            // Before a reboot the node may still run (and report) the old
                            // version; verification after the reboot checks it.
                            if !reboot && !self.at_target(n, &v) {
                                let why = format!(
                                    "{} reported success, but the node is at {v}, not {}",
                                    self.action_for(n),
                                    self.target_for(n)
                                );
                                self.nodes[n as usize].version = Some(v);
                                self.touch(n);
                                self.retry_or_fail(n, now, attempt, why, out);
                                return Ok(());
                            }
                            self.nodes[n as usize].version = Some(v);
                            self.touch(n);
                        }
                        if boot_id.is_some() {
                            self.nodes[n as usize].boot_id = boot_id;
                            self.touch(n);
                        }
                        if reboot {
                            let old_boot = self.nodes[n as usize].boot_id.clone();
                            let deadline = now + self.spec.reboot_timeout;
                            self.set_state(n, NodeState::Rebooting { deadline, old_boot: old_boot.clone() });
                            out.push(Command::WatchBoot { node, old_boot, deadline });
                        } else {
                            self.start_verify(n, now, out);
                        }
                    }
                    NodeState::Restoring { stage: Stage::Agent } if step == self.step_id(n, 0, "restore") => {
                        // Its services are started and it was healthy for health_stable: back
                        // into its load balancers last.
                        match self.rejoin_stage(n, now) {
                            None => self.finish(n, now, NodeState::Done { back: Back::In }, out),
                            Some(stage) => {
                                self.set_state(n, NodeState::Restoring { stage });
                                self.lb_in_if_sent(n, stage, out);
                            }
                        }
                    }
                    NodeState::Restoring { stage: Stage::Balancers }
                        if step == self.step_id(n, 0, "lb-in") =>
                    {
                        self.finish(n, now, NodeState::Done { back: Back::In }, out);
                    }
                    NodeState::Done { back: Back::Restoring { stage: Stage::Agent } }
                    | NodeState::Failed { back: Back::Restoring { stage: Stage::Agent }, .. }
                        if step == self.step_id(n, 0, "restore") =>
                    {
                        match self.rejoin_stage(n, now) {
                            None => self.set_back(n, Back::In),
                            Some(stage) => {
                                self.set_back(n, Back::Restoring { stage });
                                self.lb_in_if_sent(n, stage, out);
                            }
                        }
                    }
                    NodeState::Done { back: Back::Restoring { stage: Stage::Balancers } }
                    | NodeState::Failed { back: Back::Restoring { stage: Stage::Balancers }, .. }
                        if step == self.step_id(n, 0, "lb-in") =>
                    {
                        self.set_back(n, Back::In);
                    }
                    s => return Err(CampaignError::StaleStep { node, step, state: s.name() }),
                }
            }
            Event::StepFailed { node, step, reason } => {
                let n = self.node(&node)?;
                if self.hold_answer(n, now, &step, Some(reason.clone()), out) {
                    return Ok(());
                }
                let state = self.nodes[n as usize].state.clone();
                match state {
                    NodeState::Prechecking { attempt } if step == self.step_id(n, attempt, "precheck") => {
                        self.precheck_failed(n, now, format!("precheck failed: {reason}"), out);
                    }
                    NodeState::Draining { stage: Stage::Agent, .. }
                        if step == self.step_id(n, 0, "drain") =>
                    {
                        let back = Back::Checking { healthy_since: None };
                        self.fail(n, now, format!("drain failed: {reason}"), back, out);
                    }
                    NodeState::Draining { moves, stage: Stage::Balancers }
                        if step == self.step_id(n, 0, "lb-out") =>
                    {
                        // Its workloads never left (the drain that moves them was not sent).
                        self.undo_drain_moves(n, &moves);
                        // Perhaps out of some of them: put back once healthy, as any failed drain.
                        let back = Back::Checking { healthy_since: None };
                        self.fail(n, now, format!("drain failed: load balancer: {reason}"), back, out);
                    }
                    NodeState::Updating { attempt } if step == self.step_id(n, attempt, "update") => {
                        self.retry_or_fail(n, now, attempt, reason, out);
                    }
                    NodeState::Restoring { stage: Stage::Agent } if step == self.step_id(n, 0, "restore") => {
                        self.undo_restore_moves(n);
                        self.fail(n, now, format!("restore failed: {reason}"), Back::Out, out);
                    }
                    NodeState::Restoring { stage: Stage::Balancers }
                        if step == self.step_id(n, 0, "lb-in") =>
                    {
                        self.fail(n, now, format!("restore failed: load balancer: {reason}"), Back::Out, out);
                    }
                    NodeState::Done { back: Back::Restoring { stage: Stage::Agent } }
                    | NodeState::Failed { back: Back::Restoring { stage: Stage::Agent }, .. }
                        if step == self.step_id(n, 0, "restore") =>
                    {
                        self.undo_restore_moves(n);
                        self.set_back(n, Back::Out);
                    }
                    NodeState::Done { back: Back::Restoring { stage: Stage::Balancers } }
                    | NodeState::Failed { back: Back::Restoring { stage: Stage::Balancers }, .. }
                        if step == self.step_id(n, 0, "lb-in") =>
                    {
                        self.set_back(n, Back::Out);
                    }
                    s => return Err(CampaignError::StaleStep { node, step, state: s.name() }),
                }
            }
            Event::Booted { node, boot_id, version } => {
                let n = self.node(&node)?;
                if let Some(v) = version {
                    self.nodes[n as usize].version = Some(v);
                    self.touch(n);
                }
                if let NodeState::Rebooting { old_boot, .. } = &self.nodes[n as usize].state {
                    if old_boot.as_deref() != Some(boot_id.as_str()) {
                        self.nodes[n as usize].boot_id = Some(boot_id);
                        self.touch(n);
                        self.start_verify(n, now, out);
                        return Ok(());
                    }
                }
                self.nodes[n as usize].boot_id = Some(boot_id);
                self.touch(n);
            }
            Event::Health { node, healthy, version, detail } => {
                let n = self.node(&node)?;
                if let Some(v) = version {
                    self.nodes[n as usize].version = Some(v);
                    self.touch(n);
                }
                let why = if healthy { None } else { detail };
                if self.nodes[n as usize].unhealthy != why {
                    self.nodes[n as usize].unhealthy = why;
                    self.touch(n);
                }
                // A node being verified counts as healthy only at its target version: it is
                // never counted updated on the word of an old record.
                let verifying = matches!(self.nodes[n as usize].state, NodeState::Verifying { .. });
                let healthy = healthy && (!verifying || self.reports_target(n));
                // Healthy since when: unchanged while it stays healthy, cleared by a failing check.
                let since_now =
                    |h: Option<Millis>, from: Millis| if healthy { Some(h.unwrap_or(from)) } else { None };
                let wait = self.spec.health_wait;
                let next = match self.nodes[n as usize].state.clone() {
                    NodeState::Verifying { since, healthy_since } => Some(NodeState::Verifying {
                        since,
                        healthy_since: since_now(healthy_since, now.max(since + wait)),
                    }),
                    NodeState::Done { back: Back::Checking { healthy_since } } => Some(NodeState::Done {
                        back: Back::Checking { healthy_since: since_now(healthy_since, now) },
                    }),
                    NodeState::Failed { reason, back: Back::Checking { healthy_since } } => {
                        Some(NodeState::Failed {
                            reason,
                            back: Back::Checking { healthy_since: since_now(healthy_since, now) },
                        })
                    }
                    _ => None,
                };
                if let Some(st) = next {
                    self.set_state(n, st);
                }
            }
            Event::Observed { node, up, version } => {
                let n = self.node(&node)?;
                if let Some(v) = version {
                    self.nodes[n as usize].version = Some(v);
                    self.touch(n);
                }
                // Once the level is raised (its after-commit pass too), a node seen back older
                // than it is fenced; not one in flight in the pass, or being put back (its
                // verification, or the version it reports when restored, judges it).
                let in_flight = self.nodes[n as usize].state.is_active()
                    || matches!(self.nodes[n as usize].state.back(), Some(Back::Restoring { .. }));
                if up && self.level_raised() && !self.nodes[n as usize].unfenced && !in_flight {
                    if let Some(reason) = self.too_old(n) {
                        if self.pass == Pass::AfterCommit
                            && matches!(self.nodes[n as usize].state, NodeState::Pending { .. })
                        {
                            // Not taken through the pass: kept out until it is updated.
                            let r = self.rank[n as usize];
                            self.pending.remove(&r);
                            self.candidates.remove(&r);
                            self.skip_node(n, now, format!("fenced: {reason}"));
                        }
                        self.set_observed_down(n, true);
                        let step = self.fence_step(n, self.nodes[n as usize].fences, "fence");
                        self.nodes[n as usize].fences += 1;
                        self.touch(n);
                        out.push(Command::Fence { node, step, stop_grace: self.spec.stop_grace, reason });
                        return Ok(());
                    }
                }
                self.set_observed_down(n, !up);
                if up {
                    self.rejoin_if_waiting(n, out);
                }
            }
            Event::Unreachable { node } => {
                let n = self.node(&node)?;
                // It matters only while the campaign waits on one of the node's steps.
                let waiting = matches!(
                    self.nodes[n as usize].state,
                    NodeState::Prechecking { .. }
                        | NodeState::Draining { .. }
                        | NodeState::Updating { .. }
                        | NodeState::Restoring { .. }
                ) || (self.lb_steps
                    && matches!(
                        self.nodes[n as usize].state.back(),
                        Some(Back::Restoring { stage: Stage::Agent })
                    ));
                if waiting && self.nodes[n as usize].unreachable_since.is_none() {
                    self.set_unreachable(n, Some(now));
                }
            }
            Event::Reachable { node } => {
                let n = self.node(&node)?;
                self.set_unreachable(n, None);
            }
            Event::Window { open } => self.window_open = open,
            Event::Gate { name, open } => {
                if open {
                    self.closed_gates.remove(&name);
                } else {
                    self.closed_gates.insert(name);
                }
            }
        }
        Ok(())
    }

    /// `require_all_up`: every node of the fleet is up (none seen down, none left out of
    /// service by an earlier campaign).
    fn check_all_up(&self) -> Result<(), CampaignError> {
        let down: Vec<&str> = (0..self.nodes.len() as NodeId)
            .filter(|&n| self.nodes[n as usize].observed_down || self.nodes[n as usize].left_out)
            .map(|n| self.fleet.node_name(n))
            .collect();
        if down.is_empty() {
            return Ok(());
        }
        let more = if down.len() > 5 { format!(" and {} more", down.len() - 5) } else { String::new() };
        Err(CampaignError::StartRefused(format!(
            "require_all_up is set and {} of the fleet's nodes are down: {}{more}",
            down.len(),
            down[..down.len().min(5)].join(", ")
        )))
    }

    /// Whether node `n` is fenced now: seen back older than the committed level, fenced, and not
    /// let back in by an operator.
    pub fn is_fenced(&self, n: NodeId) -> bool {
        let r = &self.nodes[n as usize];
        self.level_raised() && r.fences > 0 && !r.unfenced && r.observed_down && self.too_old(n).is_some()
    }

    fn too_old(&self, n: NodeId) -> Option<String> {
        let level = self.level.as_deref()?;
        let v = self.nodes[n as usize].version.as_deref()?;
        let (rv, rl) = (self.fleet.version_rank(v)?, self.fleet.version_rank(level)?);
        (rv < rl).then(|| format!("node is at {v}, older than the committed level {level}"))
    }

    fn check_commit(&self) -> Result<(), CampaignError> {
        let target = &self.spec.target_version;
        let mut bad = Vec::new();
        for (i, r) in self.nodes.iter().enumerate() {
            let name = self.fleet.node_name(i as NodeId);
            let why = if r.observed_down {
                Some("down".to_string())
            } else if r.state.is_out() {
                Some(format!("out of service ({})", r.state.name()))
            } else if let NodeState::Failed { reason, .. } = &r.state {
                Some(format!("failed: {reason}"))
            } else if r.version.as_deref() != Some(target.as_str()) {
                Some(format!("at {}", r.version.as_deref().unwrap_or("an unknown version")))
            } else {
                None
            };
            if let Some(w) = why {
                bad.push(format!("{name} is {w}"));
            }
        }
        if bad.is_empty() {
            return Ok(());
        }
        let more = if bad.len() > 5 { format!(" and {} more", bad.len() - 5) } else { String::new() };
        bad.truncate(5);
        Err(CampaignError::CommitRefused(format!(
            "every node must be up, healthy and at {target}: {}{more}",
            bad.join("; ")
        )))
    }

    /// Whether `v` is the version node `n` is being taken to (any, when that is unknown: a
    /// rollback of a node whose earlier version the fleet file did not say).
    fn at_target(&self, n: NodeId, v: &str) -> bool {
        let t = self.target_for(n);
        t.is_empty() || t == v
    }

    /// Whether the node's last reported version is its target.
    fn reports_target(&self, n: NodeId) -> bool {
        match self.nodes[n as usize].version.as_deref() {
            Some(v) => self.at_target(n, v),
            None => self.target_for(n).is_empty(),
        }
    }

    /// An update attempt failed: another attempt if any is left, else the node fails (still in
    /// its old version's service if healthy: it is watched and restored).
    fn retry_or_fail(
        &mut self,
        n: NodeId,
        now: Millis,
        attempt: u32,
        reason: String,
        out: &mut Vec<Command>,
    ) {
        if attempt < self.spec.max_retries_per_node {
            self.send_update(n, attempt + 1, out);
        } else {
            let back = Back::Checking { healthy_since: None };
            let why = format!("{} failed after {} attempt(s): {reason}", self.action_for(n), attempt + 1);
            self.fail(n, now, why, back, out);
        }
    }

    fn target_for(&self, n: NodeId) -> &str {
        match self.nodes[n as usize].pass {
            Pass::Forward | Pass::AfterCommit => &self.spec.target_version,
            Pass::Back => {
                let from = self.nodes[n as usize].from_version.as_deref().unwrap_or("");
                // No lower than the committed level: a fenced node updated by this campaign goes
                // back to the level, not to the version it was fenced at.
                match (self.fence_rules, self.level.as_deref()) {
                    (true, Some(level)) => {
                        match (self.fleet.version_rank(from), self.fleet.version_rank(level)) {
                            (Some(rf), Some(rl)) if rf < rl => level,
                            _ => from,
                        }
                    }
                    _ => from,
                }
            }
        }
    }

    fn action_for(&self, n: NodeId) -> &str {
        match self.nodes[n as usize].pass {
            Pass::Forward => &self.spec.action,
            Pass::Back => "rollback",
            // The action journaled with the plan (the campaign file's `after_commit_action`).
            Pass::AfterCommit => self.after_action.as_deref().unwrap_or(&self.spec.action),
        }
    }

    fn send_update(&mut self, n: NodeId, attempt: u32, out: &mut Vec<Command>) {
        self.set_state(n, NodeState::Updating { attempt });
        out.push(Command::Update {
            node: self.fleet.node_name(n).to_string(),
            step: self.step_id(n, attempt, "update"),
            action: self.action_for(n).to_string(),
            version: self.target_for(n).to_string(),
        });
    }

    fn start_verify(&mut self, n: NodeId, now: Millis, out: &mut Vec<Command>) {
        self.set_state(n, NodeState::Verifying { since: now, healthy_since: None });
        out.push(Command::WatchHealth { node: self.fleet.node_name(n).to_string() });
    }

    fn set_back(&mut self, n: NodeId, back: Back) {
        let state = match self.nodes[n as usize].state.clone() {
            NodeState::Done { .. } => NodeState::Done { back: back.clone() },
            NodeState::Failed { reason, .. } => NodeState::Failed { reason, back: back.clone() },
            s => s,
        };
        self.set_state(n, state);
        if matches!(back, Back::In | Back::Out) {
            self.repend_for_rollback(n);
        }
    }

    /// Moves a node into a terminal state.
    fn finish(&mut self, n: NodeId, now: Millis, state: NodeState, out: &mut Vec<Command>) {
        let name = self.fleet.node_name(n).to_string();
        let failed = matches!(state, NodeState::Failed { .. });
        if let NodeState::Failed { reason, .. } = &state {
            out.push(Command::Notify {
                notice: Notice::NodeFailed { node: name.clone(), reason: reason.clone() },
            });
        } else {
            out.push(Command::Notify { notice: Notice::NodeDone { node: name.clone() } });
        }
        if let Some(Back::Checking { .. }) = state.back() {
            out.push(Command::WatchHealth { node: name });
        }
        // Before the state: a node left waiting to be healthy is given up on from this time.
        self.nodes[n as usize].finished_at = Some(now);
        self.touch(n);
        self.set_state(n, state);
        if failed {
            self.failed += 1;
        }
        self.settle_group(n);
        // A node that finishes its update while the campaign rolls back goes back too.
        self.repend_for_rollback(n);
    }

    /// Whether this campaign raised the fleet's level: committed, or in its after-commit pass
    /// (which no pause, halt or abort undoes). Nodes older than the level are fenced meanwhile.
    pub fn level_raised(&self) -> bool {
        self.phase == Phase::Committed || self.pass == Pass::AfterCommit
    }

    /// The action of the after-commit pass, as journaled with the plan.
    pub fn after_commit_action(&self) -> Option<&str> {
        self.after_action.as_deref()
    }

    /// The phase a resumed campaign runs in: its pass's.
    fn running_phase(&self) -> Phase {
        match self.pass {
            Pass::Forward => Phase::Running,
            Pass::Back => Phase::RollingBack,
            Pass::AfterCommit => Phase::AfterCommit,
        }
    }

    /// The commit starts the after-commit pass: every node of the fleet (all up, in service and
    /// at the level, as the commit checked) is queued again, in the pass's own order, under the
    /// same rules; their auto-updaters are held again before each starts.
    fn begin_after_commit(&mut self, plan: Plan, now: Millis, out: &mut Vec<Command>) {
        let Order { rank, by_rank, group, group_left } = Order::of(&self.fleet, &self.spec, &plan);
        self.pass = Pass::AfterCommit;
        self.max_parallel = plan.max_parallel as u32;
        self.plan = plan;
        self.failed_accepted = self.failed.saturating_sub(self.spec.max_failed_nodes);
        for &n in &by_rank {
            let r = &mut self.nodes[n as usize];
            r.pass = Pass::AfterCommit;
            r.started_at = None;
            r.finished_at = None;
            self.touch(n);
            self.set_state(n, NodeState::Pending { out_of_service: false });
        }
        self.pending = (0..by_rank.len() as u32).collect();
        self.candidates = self.pending.clone();
        self.waiters.iter_mut().for_each(Vec::clear);
        self.cap_waiters.clear();
        self.rank = rank;
        self.by_rank = by_rank;
        self.group = group;
        self.group_left = group_left;
        self.current_group = 0;
        self.group_open_at = 0;
        if self.holds {
            // As at the start: every node's auto-updaters held before any of them starts, so
            // that none patches or reboots a node while others are out (one whose release is
            // still in flight is held again once it is answered; one seen down once it is up).
            for r in 0..self.by_rank.len() {
                let n = self.by_rank[r];
                if matches!(self.nodes[n as usize].hold, Hold::None | Hold::Released)
                    && !self.nodes[n as usize].observed_down
                {
                    self.send_hold(n, now, out);
                }
            }
        }
    }

    /// During a rollback, queues an updated node (Done in the forward pass) to go back. A node
    /// whose restore is in flight waits for its answer; one that never got back into service
    /// stays counted as down while it waits.
    fn repend_for_rollback(&mut self, n: NodeId) {
        let r = &self.nodes[n as usize];
        // After an abort nothing new starts: a node that finishes then stays where it ended.
        if self.pass != Pass::Back || r.pass != Pass::Forward || self.phase == Phase::Aborted {
            return;
        }
        let out_of_service = match &r.state {
            NodeState::Done { back: Back::Restoring { .. } } => return,
            NodeState::Done { back } => *back != Back::In,
            _ => return,
        };
        self.nodes[n as usize].pass = Pass::Back;
        self.touch(n);
        self.set_state(n, NodeState::Pending { out_of_service });
        self.pending.insert(self.rank[n as usize]);
        self.candidates.insert(self.rank[n as usize]);
    }

    fn fail(&mut self, n: NodeId, now: Millis, reason: String, back: Back, out: &mut Vec<Command>) {
        self.finish(n, now, NodeState::Failed { reason, back }, out);
    }

    fn skip_pending(&mut self, now: Millis, reason: &str) {
        self.candidates.clear();
        let ranks: Vec<u32> = std::mem::take(&mut self.pending).into_iter().collect();
        for r in ranks {
            let n = self.by_rank[r as usize];
            if self.nodes[n as usize].state == (NodeState::Pending { out_of_service: true }) {
                // Queued to go back, but it never got back into service after its update: it
                // stays as it was, updated and out of service, and counts as down.
                self.nodes[n as usize].pass = Pass::Forward;
                self.touch(n);
                self.set_state(n, NodeState::Done { back: Back::Out });
                continue;
            }
            self.set_state(n, NodeState::Skipped { reason: reason.to_string() });
            self.nodes[n as usize].finished_at = Some(now);
            self.touch(n);
            self.settle_group(n);
        }
    }

    /// A targeted node is through its forward pass: one fewer for its barrier group to wait on.
    fn settle_group(&mut self, n: NodeId) {
        if self.nodes[n as usize].pass != Pass::Back && self.rank[n as usize] != u32::MAX {
            let g = self.group[n as usize] as usize;
            self.group_left[g] = self.group_left[g].saturating_sub(1);
        }
    }

    /// Timers, the failure threshold, barriers, new starts and completion.
    fn advance(&mut self, now: Millis, out: &mut Vec<Command>) {
        self.fire_timers(now, out);
        self.fire_hold_timers(now, out);
        if self.failure_threshold_passed()
            && matches!(self.phase, Phase::Running | Phase::RollingBack | Phase::AfterCommit)
        {
            self.set_phase(Phase::Halted, None, out);
        }
        self.advance_group(now);
        if self.group_open_at != 0 && now >= self.group_open_at {
            self.group_open_at = 0;
        }
        self.start_nodes(now, out);
        if self.pending.is_empty() && self.active == 0 {
            match (self.phase, self.pass) {
                (Phase::Running, Pass::Forward) => self.set_phase(Phase::Completed, None, out),
                (Phase::RollingBack, Pass::Back) => self.set_phase(Phase::RolledBack, None, out),
                (Phase::AfterCommit, Pass::AfterCommit) => self.set_phase(Phase::Committed, None, out),
                _ => {}
            }
        }
        self.release_holds(now, out);
    }

    fn fire_timers(&mut self, now: Millis, out: &mut Vec<Command>) {
        // Each due node is looked at once; what it moves to has a later deadline or none.
        let due: Vec<NodeId> = self.timers.range(..=(now, NodeId::MAX)).map(|t| t.1).collect();
        for n in due {
            let state = self.nodes[n as usize].state.clone();
            let lost_for =
                self.nodes[n as usize].unreachable_since.filter(|t| now >= t + self.spec.reboot_timeout);
            match state {
                NodeState::Prechecking { .. } if lost_for.is_some() => {
                    let why = format!(
                        "precheck failed: agent unreachable for reboot_timeout {}",
                        format_duration(self.spec.reboot_timeout)
                    );
                    self.set_unreachable(n, None);
                    self.precheck_failed(n, now, why, out);
                }
                NodeState::Draining { .. } | NodeState::Updating { .. } | NodeState::Restoring { .. }
                    if lost_for.is_some() =>
                {
                    let why = format!(
                        "agent unreachable for reboot_timeout {} while {}",
                        format_duration(self.spec.reboot_timeout),
                        state.name()
                    );
                    self.set_unreachable(n, None);
                    // A restore never answered: its failback moves are taken as not done (a drain
                    // hook asked to move a workload that is not there fails loudly; one that is
                    // there and not moved would go down with its node).
                    match &state {
                        NodeState::Restoring { stage: Stage::Agent } => self.undo_restore_moves(n),
                        NodeState::Draining { moves, stage: Stage::Balancers } => {
                            self.undo_drain_moves(n, moves)
                        }
                        _ => {}
                    }
                    self.fail(n, now, why, Back::Out, out);
                }
                NodeState::Done { back: Back::Restoring { stage: Stage::Agent } }
                | NodeState::Failed { back: Back::Restoring { stage: Stage::Agent }, .. }
                    if lost_for.is_some() =>
                {
                    // Its restore never answered: kept out, its failback moves taken as not done.
                    self.set_unreachable(n, None);
                    self.undo_restore_moves(n);
                    self.set_back(n, Back::Out);
                }
                NodeState::Restoring { stage: Stage::Waiting { since } }
                    if now >= since + self.spec.ready_timeout =>
                {
                    let why = format!(
                        "seen down since its restore, not up within ready_timeout {}: kept out of its load balancers",
                        format_duration(self.spec.ready_timeout)
                    );
                    self.fail(n, now, why, Back::Out, out);
                }
                NodeState::Done { back: Back::Restoring { stage: Stage::Waiting { since } } }
                | NodeState::Failed { back: Back::Restoring { stage: Stage::Waiting { since } }, .. }
                    if now >= since + self.spec.ready_timeout =>
                {
                    self.set_back(n, Back::Out);
                }
                NodeState::Rebooting { deadline, .. } if now >= deadline => {
                    let why = format!(
                        "no new boot id within reboot_timeout {}",
                        format_duration(self.spec.reboot_timeout)
                    );
                    self.fail(n, now, why, Back::Out, out);
                }
                NodeState::Verifying { since, healthy_since } => {
                    if healthy_since.is_some_and(|h| now >= h + self.spec.health_stable) {
                        let restore = self.restore(n);
                        self.set_state(n, NodeState::Restoring { stage: Stage::Agent });
                        out.push(restore);
                    } else if now >= since + self.spec.ready_timeout {
                        let mut late = format!(
                            "not healthy within ready_timeout {}",
                            format_duration(self.spec.ready_timeout)
                        );
                        let wrong_version = !self.reports_target(n);
                        if let Some(why) = &self.nodes[n as usize].unhealthy {
                            late = format!("{late}: {why}");
                        }
                        if wrong_version {
                            let at = self.nodes[n as usize].version.as_deref().unwrap_or("no version");
                            late = format!(
                                "{late}: its agent reports {at}, not the target {}",
                                self.target_for(n)
                            );
                        }
                        match self.spec.on_ready_timeout {
                            // Not at the target is never counted updated, whatever the policy.
                            _ if wrong_version => self.fail(n, now, late, Back::Out, out),
                            OnReadyTimeout::Halt => self.fail(n, now, late, Back::Out, out),
                            OnReadyTimeout::Proceed => {
                                // Counted unavailable; the campaign moves on and keeps watching.
                                let back = Back::Checking { healthy_since };
                                self.finish(n, now, NodeState::Done { back }, out);
                            }
                        }
                    }
                }
                NodeState::Done { back: Back::Checking { healthy_since: None } }
                | NodeState::Failed { back: Back::Checking { healthy_since: None }, .. }
                    if self.nodes[n as usize]
                        .finished_at
                        .is_some_and(|f| now >= f + self.spec.ready_timeout) =>
                {
                    // Not healthy within ready_timeout of its end: it stays out until an operator
                    // acts, and the campaign stops waiting on it (and so releases the fleet; the
                    // next campaign counts it as down).
                    self.set_back(n, Back::Out);
                }
                NodeState::Done { back: Back::Checking { healthy_since: Some(_) } }
                | NodeState::Failed { back: Back::Checking { healthy_since: Some(_) }, .. }
                    if self.fence_rules && self.too_old(n).is_some() =>
                {
                    // Older than the committed level (a fenced node whose update failed): it
                    // may not rejoin, so it stays out, counted down, until it is updated.
                    self.set_back(n, Back::Out);
                }
                NodeState::Done { back: Back::Checking { healthy_since: Some(h) } }
                | NodeState::Failed { back: Back::Checking { healthy_since: Some(h) }, .. }
                    if now >= h + self.spec.health_stable =>
                {
                    let restore = self.restore(n);
                    self.set_back(n, Back::Restoring { stage: Stage::Agent });
                    out.push(restore);
                }
                _ => {}
            }
        }
    }

    fn barriers(&self) -> bool {
        self.pass != Pass::Back && matches!(self.spec.strategy, Strategy::Batch | Strategy::DomainWalk)
    }

    fn advance_group(&mut self, now: Millis) {
        if !self.barriers() {
            return;
        }
        let mut moved = false;
        while (self.current_group as usize) + 1 < self.group_left.len()
            && self.group_left[self.current_group as usize] == 0
        {
            self.current_group += 1;
            moved = true;
        }
        if moved && self.spec.pause_between_waves > 0 {
            self.group_open_at = now + self.spec.pause_between_waves;
        }
    }

    /// Already updated in this pass, or never to be: where workloads prefer to go, to move once.
    fn settled(&self, d: NodeId) -> bool {
        match &self.nodes[d as usize].state {
            NodeState::NotTargeted | NodeState::Skipped { .. } => true,
            NodeState::Done { .. } => self.nodes[d as usize].pass == self.pass,
            _ => false,
        }
    }

    /// Whether `n` may start now without breaking a rule: the moves its workloads need, or
    /// what blocks it.
    fn may_start(&self, n: NodeId) -> Result<Vec<(u32, NodeId)>, Blocked> {
        if self.nodes[n as usize].observed_down && !self.starts_while_down(n) {
            return Err(Blocked::Down);
        }
        // A node already out of service adds nothing to any service's down count.
        let adds = u32::from(!self.is_down(n));
        for &s in &self.fleet.memberships[n as usize] {
            if self.down[s as usize] + adds > self.fleet.services[s as usize].allowance {
                return Err(Blocked::Service(s));
            }
        }
        if self.fleet.workloads.is_empty() {
            return Ok(Vec::new());
        }
        // Not while workloads are on their way to it: its drain would move what is not there yet.
        if self.busy[n as usize] > 0 {
            return Err(Blocked::Capacity);
        }
        self.placement
            .find_moves(
                &self.fleet,
                n,
                |d| !self.is_down(d) && self.busy[d as usize] == 0,
                |d| self.settled(d),
            )
            .map_err(|_| Blocked::Capacity)
    }

    /// Pending nodes that the rules would let start now, looked at afresh (not through the
    /// candidate sets a start scan uses): for tests, that a campaign with nothing in flight and
    /// nodes left pending is truly blocked, and no wake-up was missed.
    pub fn startable_now(&self, now: Millis) -> Vec<NodeId> {
        if !self.starts_allowed(now)
            || self.active >= self.max_parallel
            || self.barriers()
            || self.spec.max_unhealthy.is_some()
        {
            return Vec::new();
        }
        self.pending
            .iter()
            .map(|&r| self.by_rank[r as usize])
            .filter(|&n| self.may_start(n).is_ok())
            .collect()
    }

    fn start_nodes(&mut self, now: Millis, out: &mut Vec<Command>) {
        self.window_wait = None;
        if !matches!(self.phase, Phase::Running | Phase::RollingBack | Phase::AfterCommit)
            || !self.window_open
            || !self.closed_gates.is_empty()
            || self.failure_threshold_passed()
            || (self.barriers() && now < self.group_open_at)
            || self.pending.is_empty()
        {
            return;
        }
        if let Some(w) = &self.spec.windows {
            if !w.contains(now) {
                // Wait for it: the next deadline is when it opens (rule 4).
                self.window_wait = w.next_open(now);
                return;
            }
        }
        // `max_unhealthy`: no start while too many targeted nodes are unhealthy (but a node
        // handed over out of service, which starting takes nothing more down and which is how
        // it comes back). Looked at again on the next event (a node seen up, restored, failing).
        let too_unhealthy = self.spec.max_unhealthy.is_some_and(|limit| self.unhealthy() > limit);
        let mut cursor = 0u32;
        // A node named in `order` whose hold is in flight is not overtaken: nodes ranked after
        // it are held meanwhile but do not start (they stay candidates), so the order is kept
        // however fast agents answer.
        let mut wait_rank = if self.order_waits {
            self.spec
                .order
                .iter()
                .filter(|&&n| self.order_keeps_place(n))
                .map(|&n| self.rank[n as usize])
                .filter(|r| self.pending.contains(r))
                .min()
        } else {
            None
        };
        while self.active < self.max_parallel {
            let Some(&r) = self.candidates.range(cursor..).next() else {
                break;
            };
            cursor = r + 1;
            let n = self.by_rank[r as usize];
            if self.barriers() && self.group[n as usize] > self.current_group {
                break;
            }
            if wait_rank.is_some_and(|w| r > w) && self.nodes[n as usize].hold == Hold::Held {
                continue;
            }
            if too_unhealthy && !self.starts_while_down(n) {
                continue;
            }
            self.candidates.remove(&r);
            if self.holds && self.nodes[n as usize].hold != Hold::Held {
                // It waits for its hold (a candidate again once held); one released at the end
                // of the forward pass is held again for the rollback. A node seen down is held
                // once it is seen up (it is a candidate again then).
                if matches!(self.nodes[n as usize].hold, Hold::None | Hold::Released)
                    && (!self.nodes[n as usize].observed_down || self.starts_while_down(n))
                {
                    self.send_hold(n, now, out);
                }
                if self.order_keeps_place(n) {
                    wait_rank = Some(wait_rank.map_or(r, |w| w.min(r)));
                }
                continue;
            }
            let moves = match self.may_start(n) {
                Ok(moves) => moves,
                Err(b) => {
                    self.wait_on(r, b);
                    continue;
                }
            };
            self.pending.remove(&r);
            if self.pass != Pass::Back && self.prechecks {
                // Its place is held (it counts as down and active) while its prechecks run;
                // the workload moves are found again when it is drained.
                let attempt = self.nodes[n as usize].prechecks;
                self.nodes[n as usize].prechecks += 1;
                self.set_state(n, NodeState::Prechecking { attempt });
                out.push(Command::Precheck {
                    node: self.fleet.node_name(n).to_string(),
                    step: self.step_id(n, attempt, "precheck"),
                });
            } else {
                self.drain(n, now, moves, out);
            }
        }
    }

    /// Targeted nodes (those the campaign names, skipped ones too) that are unhealthy
    /// (`max_unhealthy`): seen down, or updated (or failed) and not back in service (not healthy
    /// after its update, say, with `on_ready_timeout = "proceed"`, or waiting out of service
    /// for its rollback).
    pub fn unhealthy(&self) -> u32 {
        self.nodes
            .iter()
            .filter(|r| {
                r.state != NodeState::NotTargeted
                    && (r.observed_down
                        || r.state.back().is_some_and(|b| *b != Back::In)
                        || r.state == NodeState::Pending { out_of_service: true })
            })
            .count() as u32
    }

    /// Whether node `n` may start although it is seen down: it was handed over out of service
    /// (a fenced node, whose health checks fail while its services are stopped), so starting it
    /// takes nothing more down, and updating it is how it comes back.
    fn starts_while_down(&self, n: NodeId) -> bool {
        self.fence_rules && self.nodes[n as usize].left_out
    }

    /// Whether node `n`, named in `order`, keeps later nodes waiting: its hold is in flight, it
    /// is not seen down, and no hold of it has failed or gone unanswered.
    fn order_keeps_place(&self, n: NodeId) -> bool {
        let r = &self.nodes[n as usize];
        self.order_waits
            && self.in_order[n as usize]
            && !r.observed_down
            && matches!(r.hold, Hold::Holding { .. })
    }

    /// The id of a node's `k`th fence (`f{k}/fence`) or of its unfence after `k` fences
    /// (`u{k}/unfence`).
    fn fence_step(&self, n: NodeId, k: u32, what: &str) -> String {
        let tag = if what == "fence" { "f" } else { "u" };
        format!("{}/{}/{tag}{k}/{what}", self.id, self.fleet.node_name(n))
    }

    fn hold_step(&self, n: NodeId, attempt: u32, what: &str) -> String {
        format!("{}/{}/h{attempt}/{what}", self.id, self.fleet.node_name(n))
    }

    /// The one place a node's hold changes, so that its timer and the release list stay right.
    fn set_hold(&mut self, n: NodeId, hold: Hold) {
        let deadline = |h: &Hold| match h {
            Hold::Holding { deadline, .. } | Hold::Releasing { deadline, .. } => Some(*deadline),
            _ => None,
        };
        if let Some(d) = deadline(&self.nodes[n as usize].hold) {
            self.hold_timers.remove(&(d, n));
        }
        if let Some(d) = deadline(&hold) {
            self.hold_timers.insert((d, n));
        }
        // Held, or a hold was sent that may have done part of its work.
        if hold == Hold::Held || (hold == Hold::None && self.nodes[n as usize].hold_steps > 0) {
            self.to_release.insert(n);
        } else {
            self.to_release.remove(&n);
        }
        self.nodes[n as usize].hold = hold;
        self.touch(n);
    }

    fn send_hold(&mut self, n: NodeId, now: Millis, out: &mut Vec<Command>) {
        self.send_hold_step(n, now, false, out);
    }

    /// A hold (or, with `release`, a release) step under the node's next hold step id, given up
    /// on after `reboot_timeout`.
    fn send_hold_step(&mut self, n: NodeId, now: Millis, release: bool, out: &mut Vec<Command>) {
        let attempt = self.nodes[n as usize].hold_steps;
        self.nodes[n as usize].hold_steps += 1;
        let deadline = now + self.spec.reboot_timeout;
        let node = self.fleet.node_name(n).to_string();
        if release {
            self.set_hold(n, Hold::Releasing { attempt, deadline });
            out.push(Command::Release { node, step: self.hold_step(n, attempt, "release") });
        } else {
            self.set_hold(n, Hold::Holding { attempt, deadline });
            out.push(Command::Hold { node, step: self.hold_step(n, attempt, "hold") });
        }
    }

    /// A hold or release step's answer (`failed` with the reason when it failed); false when
    /// `step` is neither.
    fn hold_answer(
        &mut self,
        n: NodeId,
        now: Millis,
        step: &str,
        failed: Option<String>,
        out: &mut Vec<Command>,
    ) -> bool {
        match self.nodes[n as usize].hold.clone() {
            Hold::Holding { attempt, .. } if step == self.hold_step(n, attempt, "hold") => {
                self.held(n, now, failed.map(|f| (f, false)), out);
                true
            }
            Hold::Releasing { attempt, .. } if step == self.hold_step(n, attempt, "release") => {
                self.released(n, failed.map(|f| (f, false)), out);
                true
            }
            _ => false,
        }
    }

    /// The hold step ended. Held, the node may start. A hold the agent did not answer (its node
    /// may be down) is sent again at once, or once the node is seen up again; one the agent
    /// failed is tried again (an agent that crashed mid-step answers "not run again"), and after
    /// [`HOLD_TRIES`] a node still waiting to start fails instead. Either way the node's
    /// auto-updaters are released at the end (part of a hold may have worked).
    fn held(&mut self, n: NodeId, now: Millis, failed: Option<(String, bool)>, out: &mut Vec<Command>) {
        let r = self.rank[n as usize];
        let waiting = r != u32::MAX && self.pending.contains(&r);
        let Some((why, timed_out)) = failed else {
            self.nodes[n as usize].hold_failures = 0;
            self.set_hold(n, Hold::Held);
            if waiting {
                self.candidates.insert(r);
            }
            return;
        };
        // It no longer keeps its place in `order` (see `start_nodes`).
        self.in_order[n as usize] = false;
        // Only failures the agent answered count: one it did not answer is its node's outage.
        if !timed_out {
            self.nodes[n as usize].hold_failures += 1;
        }
        let again = timed_out || self.nodes[n as usize].hold_failures < HOLD_TRIES;
        if again || !waiting {
            self.set_hold(n, Hold::None);
            if waiting {
                self.candidates.insert(r);
            }
            return;
        }
        self.set_hold(n, Hold::None);
        // It never starts: still in service, or (queued for a rollback out of service) left out
        // for an operator, as a node that cannot be drained would be.
        let back = match self.nodes[n as usize].state {
            NodeState::Pending { out_of_service: true } => Back::Out,
            _ => self.untouched(n),
        };
        self.pending.remove(&r);
        self.candidates.remove(&r);
        self.fail(n, now, format!("cannot hold its auto-updaters: {why}"), back, out);
    }

    /// The release step ended. One the agent failed is tried again, up to [`HOLD_TRIES`] (the
    /// agent keeps its record until a release works); one it did not answer within
    /// `reboot_timeout` is given up on, with a notice.
    fn released(&mut self, n: NodeId, failed: Option<(String, bool)>, out: &mut Vec<Command>) {
        let r = self.rank[n as usize];
        if let Some((why, timed_out)) = failed {
            if !timed_out {
                self.nodes[n as usize].release_failures += 1;
            }
            if !timed_out && self.nodes[n as usize].release_failures < HOLD_TRIES {
                // Still held: sent again once the campaign has ended; a node queued meanwhile
                // for a rollback may start as it is (held).
                self.set_hold(n, Hold::Held);
                if r != u32::MAX && self.pending.contains(&r) {
                    self.candidates.insert(r);
                }
                return;
            }
            self.nodes[n as usize].hold_error = Some(why.clone());
            out.push(Command::Notify {
                notice: Notice::HoldNotReleased { node: self.fleet.node_name(n).to_string(), reason: why },
            });
        }
        self.nodes[n as usize].release_failures = 0;
        self.set_hold(n, Hold::Released);
        // Queued again meanwhile (a rollback after the campaign completed): held again first.
        if r != u32::MAX && self.pending.contains(&r) {
            self.candidates.insert(r);
        }
    }

    fn fire_hold_timers(&mut self, now: Millis, out: &mut Vec<Command>) {
        let due: Vec<NodeId> = self.hold_timers.range(..=(now, NodeId::MAX)).map(|t| t.1).collect();
        let why = format!(
            "its agent did not answer within reboot_timeout {}",
            format_duration(self.spec.reboot_timeout)
        );
        for n in due {
            match self.nodes[n as usize].hold {
                Hold::Holding { .. } => self.held(n, now, Some((why.clone(), true)), out),
                Hold::Releasing { .. } => self.released(n, Some((why.clone(), true)), out),
                _ => {}
            }
        }
    }

    /// Once the campaign has ended, each node's auto-updaters are released as soon as nothing
    /// of the campaign is left to do on the node.
    fn release_holds(&mut self, now: Millis, out: &mut Vec<Command>) {
        if self.to_release.is_empty()
            || !matches!(self.phase, Phase::Completed | Phase::Committed | Phase::Aborted | Phase::RolledBack)
        {
            return;
        }
        let ready: Vec<NodeId> = self
            .to_release
            .iter()
            .copied()
            .filter(|&n| {
                let st = &self.nodes[n as usize].state;
                !st.is_active()
                    && !matches!(st, NodeState::Pending { .. })
                    && !matches!(st.back(), Some(Back::Checking { .. } | Back::Restoring { .. }))
            })
            .collect();
        for n in ready {
            self.send_hold_step(n, now, true, out);
        }
    }

    /// A pending node that cannot start waits on what blocks it.
    fn wait_on(&mut self, r: u32, b: Blocked) {
        match b {
            Blocked::Down => {} // back when it is seen up
            Blocked::Service(s) => self.waiters[s as usize].push(r),
            Blocked::Capacity => self.cap_waiters.push(r),
        }
    }

    /// Whether a node may start now, as far as the campaign goes (not the node's own rules).
    fn starts_allowed(&self, now: Millis) -> bool {
        matches!(self.phase, Phase::Running | Phase::RollingBack | Phase::AfterCommit)
            && self.window_open
            && self.closed_gates.is_empty()
            && !self.failure_threshold_passed()
            && !(self.barriers() && now < self.group_open_at)
            && self.spec.windows.as_ref().is_none_or(|w| w.contains(now))
    }

    /// A node restored while it was seen down, and now seen up: back into its load balancers.
    fn rejoin_if_waiting(&mut self, n: NodeId, out: &mut Vec<Command>) {
        let st = match &self.nodes[n as usize].state {
            NodeState::Restoring { stage: Stage::Waiting { .. } } => {
                NodeState::Restoring { stage: Stage::Balancers }
            }
            NodeState::Done { back: Back::Restoring { stage: Stage::Waiting { .. } } } => {
                NodeState::Done { back: Back::Restoring { stage: Stage::Balancers } }
            }
            NodeState::Failed { reason, back: Back::Restoring { stage: Stage::Waiting { .. } } } => {
                NodeState::Failed {
                    reason: reason.clone(),
                    back: Back::Restoring { stage: Stage::Balancers },
                }
            }
            _ => return,
        };
        self.set_state(n, st);
        self.lb_in_if_sent(n, Stage::Balancers, out);
    }

    /// After node `n`'s restore step worked: back into its load balancers now (`Balancers`),
    /// once seen up (`Waiting`), or at once in service when it is behind none (`None`).
    fn rejoin_stage(&self, n: NodeId, now: Millis) -> Option<Stage> {
        if !self.balanced(n) {
            None
        } else if self.nodes[n as usize].observed_down {
            Some(Stage::Waiting { since: now })
        } else {
            Some(Stage::Balancers)
        }
    }

    /// Node `n`'s `lb-in` step, when its restoring stage says it is to be sent now.
    fn lb_in_if_sent(&self, n: NodeId, stage: Stage, out: &mut Vec<Command>) {
        if stage == Stage::Balancers {
            out.push(Command::LbIn {
                node: self.fleet.node_name(n).to_string(),
                step: self.step_id(n, 0, "lb-in"),
            });
        }
    }

    /// Whether node `n`'s load balancers are told by steps of their own that the core orders
    /// (out before its drain, in after its restore): it is in a service behind one, and the
    /// campaign was created since those steps exist (before, the driver did both within the
    /// drain and restore steps, and such a campaign replays as it ran).
    fn balanced(&self, n: NodeId) -> bool {
        self.lb_steps
            && self.fleet.memberships[n as usize]
                .iter()
                .any(|&s| self.fleet.services[s as usize].haproxy.is_some())
    }

    /// Moves as the agent's steps carry them.
    fn moves_out(&self, moves: &[(u32, NodeId)]) -> Vec<WorkloadMove> {
        moves
            .iter()
            .map(|&(w, to)| WorkloadMove {
                workload: self.fleet.workloads[w as usize].name.clone(),
                to: self.fleet.node_name(to).to_string(),
                live: self.fleet.workloads[w as usize].movable == Movable::Live,
            })
            .collect()
    }

    /// Takes node `n` out of service, moving its workloads.
    fn drain(&mut self, n: NodeId, now: Millis, moves: Vec<(u32, NodeId)>, out: &mut Vec<Command>) {
        self.placement.apply(&self.fleet, &moves);
        let moves = self.moves_out(&moves);
        // Out of its load balancers first (its own step), so that no request reaches its
        // services once they stop.
        let stage = if self.balanced(n) { Stage::Balancers } else { Stage::Agent };
        self.set_state(n, NodeState::Draining { moves: moves.clone(), stage });
        self.nodes[n as usize].started_at = Some(now);
        self.touch(n);
        let node = self.fleet.node_name(n).to_string();
        out.push(match stage {
            Stage::Balancers => Command::LbOut { node, step: self.step_id(n, 0, "lb-out") },
            Stage::Agent | Stage::Waiting { .. } => Command::Drain {
                node,
                step: self.step_id(n, 0, "drain"),
                stop_grace: self.spec.stop_grace,
                moves,
            },
        });
    }

    /// The restore step of node `n`, whose state says it is being put back: with failback, it
    /// carries every movable workload that can go back to its preferred node now (this node,
    /// or one already back in service) within that node's capacity, applied to the placement
    /// as sent, as drains are.
    fn restore(&mut self, n: NodeId) -> Command {
        let mut found: Vec<(u32, NodeId, NodeId)> = Vec::new();
        if self.failback {
            // Each move puts a workload where it prefers to be, where it then stays: at most one
            // move per workload, and room made by one may let another go back. Not a workload
            // already on its way somewhere, nor onto or off a node with moves in flight (a move
            // undone must find its room), nor onto this node while it is seen down.
            loop {
                let mut moved = false;
                for (w, wl) in self.fleet.workloads.iter().enumerate() {
                    let (w, p) = (w as u32, wl.preferred);
                    let from = self.placement.at[w as usize];
                    if wl.movable == Movable::None
                        || from == p
                        || self.in_flight[w as usize] > 0
                        || (p == n && self.nodes[n as usize].observed_down)
                        || self.busy[p as usize] > 0
                        || (p != n && self.is_down(p))
                        || (from != n && self.busy[from as usize] > 0)
                        || !self.placement.fits(&self.fleet, p, wl.demand)
                    {
                        continue;
                    }
                    self.placement.apply(&self.fleet, &[(w, p)]);
                    found.push((w, from, p));
                    moved = true;
                }
                if !moved {
                    break;
                }
            }
            if !found.is_empty() {
                // Room made where they were: a node waiting for room may start.
                let woken = std::mem::take(&mut self.cap_waiters);
                self.wake(woken);
            }
            self.restore_moves.insert(n, found);
        }
        Command::Restore {
            node: self.fleet.node_name(n).to_string(),
            step: self.step_id(n, 0, "restore"),
            moves: self.restore_moves_out(n),
        }
    }

    /// Movable workloads away from their preferred node, and why each is still away.
    pub fn displaced(&self) -> Vec<Displaced> {
        let mut v = Vec::new();
        for (w, wl) in self.fleet.workloads.iter().enumerate() {
            let (at, p) = (self.placement.at[w], wl.preferred);
            if wl.movable == Movable::None || at == p {
                continue;
            }
            let r = &self.nodes[p as usize];
            let reason = if self.is_down(p) {
                let why = if r.observed_down { "seen down".to_string() } else { r.state.name().to_string() };
                format!("its preferred node {} is not back in service ({why})", self.fleet.node_name(p))
            } else if !self.placement.fits(&self.fleet, p, wl.demand) {
                format!(
                    "no room on its preferred node {}: {} of {} used, it needs {}",
                    self.fleet.node_name(p),
                    self.placement.used[p as usize],
                    self.fleet.nodes[p as usize].capacity.unwrap_or(u64::MAX),
                    wl.demand
                )
            } else if !self.failback {
                "the campaign predates failback".to_string()
            } else {
                format!(
                    "waiting for the next restore step to take it back to {} (in service, with room \
                     now; it was not free to go at the last one, or that one failed)",
                    self.fleet.node_name(p)
                )
            };
            v.push(Displaced {
                workload: wl.name.clone(),
                at: self.fleet.node_name(at).to_string(),
                preferred: self.fleet.node_name(p).to_string(),
                reason,
            });
        }
        v
    }

    /// Back to waiting, untouched.
    fn repend(&mut self, n: NodeId) {
        let r = self.rank[n as usize];
        self.set_state(n, NodeState::Pending { out_of_service: false });
        self.pending.insert(r);
        self.candidates.insert(r);
    }

    /// The node's prechecks passed: it is drained if the campaign still lets nodes start (else
    /// it waits again, untouched, or is skipped after an abort or a rollback).
    fn prechecked(&mut self, n: NodeId, now: Millis, out: &mut Vec<Command>) {
        if let Some(why) = self.stopped_starting() {
            self.skip_node(n, now, why);
            return;
        }
        if !self.starts_allowed(now) {
            self.repend(n);
            return;
        }
        match self.may_start(n) {
            Ok(moves) => self.drain(n, now, moves, out),
            Err(b) => {
                let r = self.rank[n as usize];
                self.repend(n);
                self.candidates.remove(&r);
                self.wait_on(r, b);
            }
        }
    }

    /// Why a node whose prechecks were running will never start in this pass, if so.
    fn stopped_starting(&self) -> Option<String> {
        match self.phase {
            Phase::Aborted => Some("campaign aborted before the node was drained".into()),
            // The after-commit pass ends committed only once every node is through it, or
            // when an operator aborted it.
            Phase::Committed => Some("after-commit pass aborted before the node was drained".into()),
            _ if self.pass == Pass::Back => Some("campaign rolled back before the node was drained".into()),
            _ => None,
        }
    }

    fn skip_node(&mut self, n: NodeId, now: Millis, reason: String) {
        self.set_state(n, NodeState::Skipped { reason });
        self.nodes[n as usize].finished_at = Some(now);
        self.touch(n);
        self.settle_group(n);
    }

    /// Where a node the campaign failed before draining it is: in service, unless an earlier
    /// campaign handed it over out of service (then it stays out, counted down).
    fn untouched(&self, n: NodeId) -> Back {
        if self.fence_rules && self.nodes[n as usize].left_out {
            Back::Out
        } else {
            Back::In
        }
    }

    /// The node's prechecks failed: it was never touched and stays in service; the campaign's
    /// `on_precheck_fail` decides.
    fn precheck_failed(&mut self, n: NodeId, now: Millis, why: String, out: &mut Vec<Command>) {
        if let Some(stopped) = self.stopped_starting() {
            self.skip_node(n, now, format!("{why} ({stopped})"));
            return;
        }
        match self.spec.on_precheck_fail {
            OnPrecheckFail::Skip => self.skip_node(n, now, why),
            OnPrecheckFail::Fail => self.fail(n, now, why, self.untouched(n), out),
            OnPrecheckFail::Halt => {
                self.fail(n, now, why, self.untouched(n), out);
                if matches!(self.phase, Phase::Running | Phase::AfterCommit) {
                    // Halted whatever the failure threshold: resuming accepts this failure.
                    self.set_phase(Phase::Halted, None, out);
                }
            }
        }
    }
}

/// The order nodes start in, by rank, and their barrier groups: the wave (batch) or walked
/// domain (domain-walk); one group otherwise.
struct Order {
    rank: Vec<u32>,
    by_rank: Vec<NodeId>,
    group: Vec<u32>,
    group_left: Vec<u32>,
}

impl Order {
    fn of(fleet: &Fleet, spec: &CampaignSpec, plan: &Plan) -> Order {
        let n = fleet.nodes.len();
        let mut rank = vec![u32::MAX; n];
        let mut by_rank = Vec::with_capacity(plan.to_update());
        let mut group = vec![0u32; n];
        let mut groups = 0u32;
        let mut last_ud = None;
        for (w, wave) in plan.waves.iter().enumerate() {
            for &id in wave {
                let ud = spec.walk_domain(fleet, id);
                let g = match spec.strategy {
                    Strategy::Batch => w as u32,
                    Strategy::DomainWalk => {
                        if by_rank.is_empty() || ud != last_ud {
                            groups += 1;
                        }
                        groups - 1
                    }
                    _ => 0,
                };
                last_ud = ud;
                group[id as usize] = g;
                rank[id as usize] = by_rank.len() as u32;
                by_rank.push(id);
            }
        }
        // Continuous starts in the plan's start order when it names each planned node once.
        if spec.strategy == Strategy::Continuous && plan.start.len() == by_rank.len() {
            let mut seen = vec![false; n];
            let whole = plan.start.iter().all(|&id| {
                (id as usize) < n
                    && rank[id as usize] != u32::MAX
                    && !std::mem::replace(&mut seen[id as usize], true)
            });
            if whole {
                for (r, &id) in plan.start.iter().enumerate() {
                    rank[id as usize] = r as u32;
                }
                by_rank.clone_from(&plan.start);
            }
        }
        let ngroups = match spec.strategy {
            Strategy::Batch => plan.waves.len(),
            Strategy::DomainWalk => groups as usize,
            _ => 1,
        };
        let mut group_left = vec![0u32; ngroups.max(1)];
        for &id in &by_rank {
            group_left[group[id as usize] as usize] += 1;
        }
        Order { rank, by_rank, group, group_left }
    }
}

/// Why a pending node cannot start now.
enum Blocked {
    Down,
    Service(u32),
    Capacity,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    #[error("the campaign cannot be planned: {0}")]
    Infeasible(Infeasible),
    #[error("the journaled plan names node {0}, which is not in the fleet file")]
    UnknownNode(String),
    #[error("the journaled plan names a node twice, or its start order does not name each planned node once, or the campaign is not continuous")]
    BadStart,
    #[error("journal entry {index} does not apply: {err}")]
    Event { index: usize, err: CampaignError },
}
