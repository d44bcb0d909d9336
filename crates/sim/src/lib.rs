//! A discrete-event simulator that drives baton's real campaign state machine in virtual time.
//!
//! The simulated world answers the core's commands after random but reproducible delays: every
//! draw is a hash of (seed, node, attempt, what), never a sequence, so `--compare` gives every
//! strategy the same durations and the same failures. An [`Observer`], independent of the core's
//! bookkeeping, watches the commands and checks DESIGN.md's safety rules as they happen.

pub mod gen;

use baton_core::campaign::{Command, Event, Notice, Phase, WorkloadMove};
use baton_core::plan::Infeasible;
use baton_core::{Campaign, CampaignSpec, Fleet, Millis, NodeId, NodeState};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::sync::Arc;

/// What the simulated world is like.
#[derive(Debug, Clone, PartialEq)]
pub struct SimOptions {
    pub seed: u64,
    /// Time a node is out of service, drawn uniformly from this range (inclusive).
    pub duration: (Millis, Millis),
    /// Chance that one update attempt fails.
    pub fail_rate: f64,
    /// Chance that a node never comes back from its reboot.
    pub stuck_reboot_rate: f64,
    /// Chance that a node never becomes healthy after its update.
    pub unhealthy_rate: f64,
    /// Chance that a node's prechecks fail (it is never touched).
    pub precheck_fail_rate: f64,
    /// Stop after this many events (a guard; a campaign never needs that many).
    pub max_events: usize,
    /// When the campaign starts, in ms since the Unix epoch: maintenance windows are wall-clock
    /// times. Injected events are timed from here.
    pub start: Millis,
    /// Load balancer steps and restores take time (up to 2 minutes and 30 s), so that steps in
    /// flight overlap, and restores fail as often as load balancer steps (`precheck_fail_rate`
    /// / 4). Off by default: the planner's figures count the update alone.
    pub slow_steps: bool,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            seed: 1,
            duration: (10 * 60_000, 10 * 60_000),
            fail_rate: 0.0,
            stuck_reboot_rate: 0.0,
            unhealthy_rate: 0.0,
            precheck_fail_rate: 0.0,
            max_events: 50_000_000,
            start: 0,
            slow_steps: false,
        }
    }
}

/// The outcome of one simulated campaign.
#[derive(Debug, Clone)]
pub struct SimReport {
    pub strategy: baton_core::Strategy,
    /// From start until the last node finished.
    pub makespan: Millis,
    /// max(total work / max_parallel, per service work / allowance, longest node).
    pub lower_bound: Millis,
    pub updated: usize,
    pub failed: usize,
    pub skipped: usize,
    pub outcome: Phase,
    /// Most members of each service down at once.
    pub peak_down: BTreeMap<String, u32>,
    pub violations: Vec<String>,
    /// Events the core refused (an operator action at the wrong time, for instance).
    pub refused: Vec<(Millis, Event, String)>,
    pub journal: Vec<(Millis, Event)>,
    /// Every command the core gave, in order.
    pub commands: Vec<(Millis, Command)>,
    pub campaign: Campaign,
    /// Executed steps (drain, update, restore) sent by the core.
    pub steps_sent: usize,
}

/// Reproducible draws: SplitMix64 over (seed, node, attempt, salt).
fn draw(seed: u64, node: u64, attempt: u64, salt: u64) -> u64 {
    splitmix(
        seed ^ node.wrapping_mul(GOLDEN)
            ^ attempt.wrapping_mul(0xC2B2_AE3D_27D4_EB4F)
            ^ salt.wrapping_mul(0x1656_67B1_9E37_79F9),
    )
}

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// One SplitMix64 output for state `z`: the state advanced by the golden ratio, then mixed. A
/// sequence advances its state by `GOLDEN` after each output.
fn splitmix(z: u64) -> u64 {
    let mut z = z.wrapping_add(GOLDEN);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn unit(seed: u64, node: u64, attempt: u64, salt: u64) -> f64 {
    (draw(seed, node, attempt, salt) >> 11) as f64 / (1u64 << 53) as f64
}

const SALT_DURATION: u64 = 1;
const SALT_FAIL: u64 = 2;
const SALT_STUCK: u64 = 3;
const SALT_UNHEALTHY: u64 = 4;
const SALT_LEARNED: u64 = 5;
const SALT_PRECHECK: u64 = 6;
const SALT_HOLD: u64 = 7;
const SALT_LB_OUT: u64 = 8;
const SALT_LB_IN: u64 = 9;
const SALT_RESTORE: u64 = 10;
const SALT_SLOW: u64 = 11;

/// A workload move as sent: (workload, from, to, what `from` held just after).
type Move = (usize, NodeId, NodeId, u64);

/// Checks DESIGN.md's safety rules from what the core commands, not from its own counters.
#[derive(Debug, Default)]
pub struct Observer {
    allowance: Vec<u32>,
    members: Vec<Vec<u32>>,
    max_parallel: u32,
    /// The after-commit pass's `max_parallel`, from the journaled plan (none: no such pass).
    after_max_parallel: Option<u32>,
    max_failed: u32,
    /// Out of service because of the campaign (drained, not yet restored).
    out: Vec<bool>,
    /// Down outside the campaign.
    lost: Vec<bool>,
    /// Started and not yet finished.
    active: HashSet<String>,
    down: Vec<u32>,
    pub peak: Vec<u32>,
    executed: HashSet<String>,
    phase: Option<Phase>,
    failed: u32,
    accepted: u32,
    window_open: bool,
    windows: Option<baton_core::window::Windows>,
    /// Hold steps sent and not yet answered, nodes whose auto-updaters are held, and whether
    /// the campaign holds them at all (journaled before holds existed: not).
    hold_steps: HashMap<String, String>,
    release_steps: HashMap<String, String>,
    pub held: HashSet<String>,
    /// Nodes whose auto-updaters may be held (a hold was answered) and were not released, nor
    /// given up on with a notice.
    pub to_release: HashSet<String>,
    holds: bool,
    /// Passes begun after the forward one (each rollback, the after-commit pass).
    passes: u32,
    closed_gates: HashSet<String>,
    /// Finishes per drain step (one per node and pass).
    finished: HashMap<String, u32>,
    last_drain: HashMap<String, String>,
    pub violations: Vec<String>,
    /// `max_unhealthy`, the nodes the campaign names, those failed (not done since), and those
    /// whose prechecks started a start that their drain continues.
    max_unhealthy: Option<u32>,
    in_scope: Vec<bool>,
    /// Handed over out of service by an earlier campaign (counted down until restored).
    left_out: Vec<bool>,
    finished_nodes: HashSet<NodeId>,
    prechecked: HashSet<String>,
    pub drained_at: HashMap<NodeId, Millis>,
    pub work: HashMap<NodeId, Millis>,
    /// Where each workload is, as the commands moved it, what each node holds, its capacity,
    /// and whether the core's failback is checked.
    wl_at: Vec<NodeId>,
    wl_used: Vec<u64>,
    capacity: Vec<Option<u64>>,
    /// Whether the campaign fails workloads back (journaled before failback: not).
    failback: bool,
    /// Load balancers: whether each node is behind one and the core orders their steps, whether
    /// it is in rotation now, whether its services run (stopped by a drain, started by a
    /// restore that worked), whether its last health report was healthy, and fenced nodes.
    balanced: Vec<bool>,
    in_rotation: Vec<bool>,
    services_up: Vec<bool>,
    healthy: Vec<bool>,
    fenced: Vec<bool>,
    /// Moves sent with a drain or restore step not yet answered, by step: (workload, from, to),
    /// and whether it is a restore's. Workloads a restore left away because they or their
    /// preferred node were busy with such moves.
    flying: HashMap<String, (bool, Vec<Move>)>,
    /// Nodes out of their load balancers whose drain (and its moves) is not sent yet: what is
    /// on them is about to leave.
    leaving: HashSet<NodeId>,
    /// Nodes the core holds room on for a drain not sent yet (the moves a node out of its load
    /// balancers will carry): set by the simulator from the core's states before each command,
    /// only to excuse a failback that waits for them.
    pub reserved: HashSet<NodeId>,
    excused: HashSet<usize>,
    /// Whether a restore step was sent yet, and the nodes back in service (or with room freed by
    /// a failed restore) since the last one.
    swept: bool,
    back_since_sweep: HashSet<NodeId>,
}

impl Observer {
    pub fn new(c: &Campaign) -> Self {
        let f = &c.fleet;
        Observer {
            allowance: f.services.iter().map(|s| s.allowance).collect(),
            members: f.memberships.clone(),
            max_parallel: c.max_parallel,
            after_max_parallel: match c.planned_event() {
                Event::Planned { plan, .. } => plan.after_commit.map(|a| a.max_parallel as u32),
                _ => None,
            },
            max_failed: c.spec.max_failed_nodes,
            out: vec![false; f.nodes.len()],
            lost: vec![false; f.nodes.len()],
            down: vec![0; f.services.len()],
            peak: vec![0; f.services.len()],
            phase: Some(Phase::Planned),
            window_open: true,
            windows: c.spec.windows.clone(),
            holds: c.holds_auto_updaters(),
            max_unhealthy: c.spec.max_unhealthy,
            in_scope: c.nodes.iter().map(|r| r.state != baton_core::NodeState::NotTargeted).collect(),
            left_out: c.nodes.iter().map(|r| r.left_out).collect(),
            wl_at: f.workloads.iter().map(|w| w.node).collect(),
            wl_used: {
                let mut u = vec![0; f.nodes.len()];
                for w in &f.workloads {
                    u[w.node as usize] += w.demand;
                }
                u
            },
            capacity: f.nodes.iter().map(|n| n.capacity).collect(),
            failback: c.fails_back(),
            balanced: (0..f.nodes.len())
                .map(|i| {
                    c.balancer_steps()
                        && f.memberships[i].iter().any(|&s| f.services[s as usize].haproxy.is_some())
                })
                .collect(),
            // A node handed over out of service is out of its load balancers (a failed or
            // fenced node), with its services perhaps stopped.
            in_rotation: c.nodes.iter().map(|r| !r.left_out).collect(),
            services_up: c.nodes.iter().map(|r| !r.left_out).collect(),
            healthy: vec![true; f.nodes.len()],
            fenced: vec![false; f.nodes.len()],
            ..Default::default()
        }
        .with_left_out(c)
    }

    /// Where workload `w` is now, as the commands moved it.
    pub fn workload_at(&self, w: usize) -> NodeId {
        self.wl_at[w]
    }

    /// Whether node `n` has room for `demand` more.
    pub fn has_room(&self, n: NodeId, demand: u64) -> bool {
        self.capacity[n as usize].is_none_or(|c| self.wl_used[n as usize] + demand <= c)
    }

    /// Whether node `n` is behind a load balancer whose steps the core orders.
    pub fn is_balanced(&self, n: NodeId) -> bool {
        self.balanced[n as usize]
    }

    /// A node out of its load balancers is counted down (by the campaign, or seen down): else
    /// a service would have fewer members serving than the rules count.
    fn check_rotation(&mut self, now: Millis, fleet: &Fleet, n: NodeId) {
        let i = n as usize;
        let counted = self.out[i] || self.lost[i] || self.fenced[i];
        if self.balanced[i] && !self.in_rotation[i] && !counted {
            self.violations.push(format!(
                "at {now}ms: {} is out of its load balancers but not counted down",
                fleet.node_name(n)
            ));
        }
    }

    /// Whether node `n` is out of service (the campaign's, or seen down) now.
    pub fn is_down(&self, n: NodeId) -> bool {
        self.out[n as usize] || self.lost[n as usize]
    }

    /// Whether a workload on its way back to node `n` may be waiting for the next restore
    /// step: no restore was sent yet, or `n` came back into service (or may have ended its
    /// prechecks untouched) since the last one.
    pub fn may_wait_for_failback(&self, fleet: &Fleet, n: NodeId, w: usize) -> bool {
        !self.swept
            || self.back_since_sweep.contains(&n)
            || self.prechecked.contains(fleet.node_name(n))
            || self.excused.contains(&w)
    }

    /// Whether node `n` is out of its load balancers with its drain not sent yet.
    pub fn is_leaving(&self, n: NodeId) -> bool {
        self.leaving.contains(&n)
    }

    fn moving(&self, w: usize) -> bool {
        self.flying.values().any(|(_, m)| m.iter().any(|x| x.0 == w))
    }

    fn node_busy(&self, n: NodeId) -> bool {
        self.flying.values().any(|(_, m)| m.iter().any(|x| x.1 == n || x.2 == n))
    }

    /// After a restore step's moves: no movable workload is left away from its preferred
    /// node while that node is in service (or the one restored) and has room for it.
    fn check_failback(&mut self, fleet: &Fleet, now: Millis, node: NodeId, step: &str) {
        self.excused.clear();
        for (w, wl) in fleet.workloads.iter().enumerate() {
            let p = wl.preferred;
            let eligible = p == node || !(self.is_down(p) || self.prechecked.contains(fleet.node_name(p)));
            if wl.movable == baton_core::model::Movable::None || self.wl_at[w] == p || !eligible {
                continue;
            }
            // On its way somewhere (by another step), or its node busy with other moves, or the
            // node restored seen down: the next restore takes it.
            let own = self.flying.get(step).is_some_and(|(_, m)| m.iter().any(|x| x.0 == w));
            let others_moving = self.flying.iter().any(|(k, (_, m))| k != step && m.iter().any(|x| x.0 == w))
                || self.leaving.contains(&self.wl_at[w]);
            let busy = |x: NodeId| {
                self.leaving.contains(&x)
                    || self.reserved.contains(&x)
                    || self
                        .flying
                        .iter()
                        .any(|(k, (_, m))| k != step && m.iter().any(|y| y.1 == x || y.2 == x))
            };
            let p_busy = busy(p) || busy(self.wl_at[w]);
            if !own && (others_moving || p_busy || (p == node && self.lost[node as usize])) {
                self.excused.insert(w);
                continue;
            }
            if self.has_room(p, wl.demand) {
                self.violations.push(format!(
                    "at {now}ms: restoring {} left {} on {} though its preferred {} has room",
                    fleet.node_name(node),
                    wl.name,
                    fleet.node_name(self.wl_at[w]),
                    fleet.node_name(p)
                ));
            }
        }
        self.swept = true;
        self.back_since_sweep.clear();
    }

    /// Workload moves a drain or restore step of `node` carries: never a workload that may
    /// not move, never beyond a node's capacity, and only onto nodes in service (or, for a
    /// restore, onto the node coming back itself).
    fn apply_moves(
        &mut self,
        fleet: &Fleet,
        now: Millis,
        (node, step): (NodeId, &str),
        moves: &[WorkloadMove],
        restore: bool,
    ) {
        let mut sent = Vec::new();
        for m in moves {
            let (Some(w), Some(to)) =
                (fleet.workloads.iter().position(|w| w.name == m.workload), fleet.node_id(&m.to))
            else {
                self.violations.push(format!("at {now}ms: a move names what the fleet has not: {m:?}"));
                continue;
            };
            let wl = &fleet.workloads[w];
            let from = self.wl_at[w];
            if wl.movable == baton_core::model::Movable::None {
                self.violations.push(format!("at {now}ms: {} moved, which may not move", wl.name));
            }
            if !restore && from != node {
                self.violations.push(format!(
                    "at {now}ms: draining {} moves {}, which is on {}",
                    fleet.node_name(node),
                    wl.name,
                    fleet.node_name(from)
                ));
            }
            if to == from || (to == node && !restore) || (to != node && self.is_down(to)) {
                self.violations.push(format!(
                    "at {now}ms: {} moved from {} to {}, which is out of service or where it is",
                    wl.name,
                    fleet.node_name(from),
                    m.to
                ));
            }
            if !self.has_room(to, wl.demand) {
                self.violations.push(format!(
                    "at {now}ms: moving {} takes {} over its capacity ({} + {} > {:?})",
                    wl.name, m.to, self.wl_used[to as usize], wl.demand, self.capacity[to as usize]
                ));
            }
            // One move at a time per workload, and none onto a node whose own moves are in
            // flight (that a move undone could not find its room again).
            if self.moving(w) || self.node_busy(to) {
                self.violations.push(format!(
                    "at {now}ms: {} moved to {} while a move of it or onto/off {} is in flight",
                    wl.name, m.to, m.to
                ));
            }
            self.move_workload(fleet, w, to);
            sent.push((w, from, to, self.wl_used[from as usize]));
        }
        if !sent.is_empty() {
            self.flying.insert(step.to_string(), (restore, sent));
        }
    }

    fn move_workload(&mut self, fleet: &Fleet, w: usize, to: NodeId) {
        let d = fleet.workloads[w].demand;
        let from = self.wl_at[w];
        self.wl_used[from as usize] -= d;
        self.wl_used[to as usize] += d;
        self.wl_at[w] = to;
    }

    /// A drain or restore step answered: its moves are no longer in flight. A restore that
    /// failed moved nothing (the simulated agent fails before its hooks).
    fn landed(&mut self, fleet: &Fleet, step: &str, ok: bool) {
        if let Some((restore, moves)) = self.flying.remove(step) {
            if restore && !ok {
                for (w, from, to, held) in moves.into_iter().rev() {
                    if self.wl_at[w] == to {
                        // Nothing took its room meanwhile (a node with moves in flight takes no
                        // other workload).
                        if self.wl_used[from as usize] > held {
                            self.violations.push(format!(
                                "a failed restore's move of {} back to {} finds no room there",
                                fleet.workloads[w].name,
                                fleet.node_name(from)
                            ));
                        }
                        self.move_workload(fleet, w, from);
                        // Room freed where it was to go: another may go there at the next restore.
                        self.excused.insert(w);
                        self.back_since_sweep.insert(to);
                    }
                }
            }
        }
    }

    /// Nodes handed over out of service count as down from the start.
    fn with_left_out(mut self, c: &Campaign) -> Self {
        for (i, r) in c.nodes.iter().enumerate() {
            if r.left_out {
                self.set(i as NodeId, Some(true), None);
            }
        }
        self
    }

    /// Targeted nodes unhealthy now: seen down, or finished (done or failed) and still out of
    /// service.
    fn unhealthy(&self) -> u32 {
        (0..self.in_scope.len())
            .filter(|&i| {
                self.in_scope[i]
                    && (self.lost[i] || (self.finished_nodes.contains(&(i as NodeId)) && self.out[i]))
            })
            .count() as u32
    }

    /// A node starts (its prechecks, or its drain when it had none): not while too many
    /// targeted nodes are unhealthy.
    fn check_unhealthy(&mut self, now: Millis, fleet: &Fleet, node: &str) {
        // A node handed over out of service may start however many are unhealthy.
        if fleet.node_id(node).is_some_and(|n| self.left_out[n as usize]) {
            return;
        }
        if let Some(limit) = self.max_unhealthy {
            let u = self.unhealthy();
            if u > limit {
                let which: Vec<String> = (0..self.in_scope.len())
                    .filter(|&i| {
                        self.in_scope[i]
                            && (self.lost[i] || (self.finished_nodes.contains(&(i as NodeId)) && self.out[i]))
                    })
                    .map(|i| format!("{} (lost {}, out {})", i, self.lost[i], self.out[i]))
                    .collect();
                self.violations.push(format!(
                    "at {now}ms: {node} started while {u} targeted nodes are unhealthy ({}), max_unhealthy {limit}",
                    which.join(", ")
                ));
            }
        }
    }

    fn set(&mut self, n: NodeId, out: Option<bool>, lost: Option<bool>) {
        let i = n as usize;
        let before = self.out[i] || self.lost[i];
        if let Some(o) = out {
            self.out[i] = o;
        }
        if let Some(l) = lost {
            self.lost[i] = l;
        }
        let after = self.out[i] || self.lost[i];
        if before && !after {
            self.back_since_sweep.insert(n);
        }
        if before != after {
            for &s in &self.members[i] {
                let d = &mut self.down[s as usize];
                if after {
                    *d += 1;
                } else {
                    *d -= 1;
                }
                let p = &mut self.peak[s as usize];
                *p = (*p).max(*d);
            }
        }
    }

    /// An event the core accepted.
    pub fn on_event(&mut self, fleet: &Fleet, ev: &Event) {
        match ev {
            // A hold that worked lets the node start; any hold may have done part of its work,
            // so the node's auto-updaters must be released at the end.
            Event::StepOk { step, .. } | Event::StepFailed { step, .. }
                if self.hold_steps.contains_key(step) =>
            {
                if let Some(node) = self.hold_steps.remove(step) {
                    if matches!(ev, Event::StepOk { .. }) {
                        self.held.insert(node.clone());
                    }
                    self.to_release.insert(node);
                }
            }
            Event::StepOk { step, .. } | Event::StepFailed { step, .. }
                if self.release_steps.contains_key(step) =>
            {
                if let Some(node) = self.release_steps.remove(step) {
                    self.held.remove(&node);
                    if matches!(ev, Event::StepOk { .. }) {
                        self.to_release.remove(&node);
                    }
                }
            }
            Event::Observed { node, up, .. } => {
                if let Some(n) = fleet.node_id(node) {
                    self.set(n, None, Some(!up));
                }
            }
            Event::StepOk { node, step, .. } if step.ends_with("/restore") => {
                self.landed(fleet, step, true);
                if let Some(n) = fleet.node_id(node) {
                    self.services_up[n as usize] = true;
                }
            }
            Event::StepFailed { node, step, .. } if step.ends_with("/lb-out") => {
                if let Some(n) = fleet.node_id(node) {
                    self.leaving.remove(&n);
                }
            }
            Event::StepOk { step, .. } | Event::StepFailed { step, .. } if self.flying.contains_key(step) => {
                self.landed(fleet, step, matches!(ev, Event::StepOk { .. }));
            }
            Event::Health { node, healthy, .. } => {
                if let Some(n) = fleet.node_id(node) {
                    self.healthy[n as usize] = *healthy;
                }
            }
            Event::Window { open } => self.window_open = *open,
            Event::Rollback { .. } => self.passes += 1,
            Event::Gate { name, open } => {
                if *open {
                    self.closed_gates.remove(name);
                } else {
                    self.closed_gates.insert(name.clone());
                }
            }
            _ => {}
        }
    }

    /// A restore step that completed (for a node behind a load balancer, the step that put it
    /// back into it): the node is back in service.
    pub fn on_restored(&mut self, n: NodeId) {
        self.set(n, Some(false), None);
        // Back in service: no longer handed over out of service (as the core has it).
        if let Some(l) = self.left_out.get_mut(n as usize) {
            *l = false;
        }
    }

    /// Rule 5: a step id is sent once (restarts resend through `Sim::restart`, not here).
    fn once(&mut self, now: Millis, step: &str) {
        if !self.executed.insert(step.to_string()) {
            self.violations.push(format!("at {now}ms: step {step} sent twice"));
        }
    }

    /// A node starts being taken out of service: the rules that hold for every start.
    fn start(&mut self, fleet: &Fleet, now: Millis, node: &str, step: &str) {
        if !self.prechecked.remove(node) {
            self.check_unhealthy(now, fleet, node);
        }
        if let Some(n) = fleet.node_id(node) {
            self.finished_nodes.remove(&n);
        }
        let n = fleet.node_id(node).expect("core names fleet nodes");
        if !matches!(self.phase, Some(Phase::Running | Phase::RollingBack | Phase::AfterCommit)) {
            self.violations
                .push(format!("at {now}ms: {node} started while the campaign is {:?}", self.phase));
        }
        let outside = self.windows.as_ref().is_some_and(|w| !w.contains(now));
        if !self.window_open || outside || !self.closed_gates.is_empty() {
            self.violations.push(format!("at {now}ms: {node} started while a window or gate is closed"));
        }
        if self.failed > self.max_failed + self.accepted {
            self.violations.push(format!("at {now}ms: {node} started after {} failures", self.failed));
        }
        // A node handed over out of service may start seen down: it adds nothing down.
        if self.lost[n as usize] && !self.left_out[n as usize] {
            self.violations.push(format!("at {now}ms: {node} started while it is down"));
        }
        self.active.insert(node.to_string());
        if self.active.len() as u32 > self.max_parallel {
            self.violations.push(format!(
                "at {now}ms: {} nodes active, max_parallel {}",
                self.active.len(),
                self.max_parallel
            ));
        }
        let was_down = self.out[n as usize] || self.lost[n as usize];
        self.set(n, Some(true), None);
        // A start that takes a service above its allowance breaks rule 1; a node that
        // was out of service already adds nothing.
        for &s in self.members[n as usize].iter().filter(|_| !was_down) {
            if self.down[s as usize] > self.allowance[s as usize] {
                self.violations.push(format!(
                    "at {now}ms: starting {node} takes service {} to {} down, allowance {}",
                    fleet.services[s as usize].name, self.down[s as usize], self.allowance[s as usize]
                ));
            }
        }
        self.drained_at.insert(n, now);
        self.last_drain.insert(node.to_string(), step.to_string());
    }

    pub fn on_command(&mut self, fleet: &Fleet, now: Millis, cmd: &Command) {
        if let Command::Precheck { node, .. } | Command::Drain { node, .. } | Command::LbOut { node, .. } =
            cmd
        {
            if self.holds && !self.held.contains(node) {
                self.violations
                    .push(format!("at {now}ms: {node} started while its auto-updaters are not held"));
            }
        }
        match cmd {
            Command::Hold { node, step } => {
                self.once(now, step);
                self.hold_steps.insert(step.clone(), node.clone());
            }
            Command::Release { node, step } => {
                self.once(now, step);
                if self.active.contains(node) {
                    self.violations
                        .push(format!("at {now}ms: {node}'s auto-updaters released while it is in flight"));
                }
                self.release_steps.insert(step.clone(), node.clone());
            }
            Command::LbOut { node, step } => {
                self.once(now, step);
                let n = fleet.node_id(node).expect("core names fleet nodes");
                if !self.balanced[n as usize] {
                    self.violations
                        .push(format!("at {now}ms: {node} taken out of load balancers it is not behind"));
                }
                // Out of rotation is where it starts: from now its services serve no one.
                self.start(fleet, now, node, step);
                self.leaving.insert(n);
                self.in_rotation[n as usize] = false;
                self.check_rotation(now, fleet, n);
            }
            Command::LbIn { node, step } => {
                self.once(now, step);
                let n = fleet.node_id(node).expect("core names fleet nodes");
                let i = n as usize;
                // Back in rotation only once its services run again and it is healthy.
                if !self.services_up[i] || !self.healthy[i] || self.lost[i] {
                    self.violations.push(format!(
                        "at {now}ms: {node} put back into its load balancers before it is ready \
                         (services up {}, healthy {}, seen down {})",
                        self.services_up[i], self.healthy[i], self.lost[i]
                    ));
                }
                self.in_rotation[i] = true;
            }
            Command::Drain { node, step, moves, .. } => {
                self.once(now, step);
                let n = fleet.node_id(node).expect("core names fleet nodes");
                self.leaving.remove(&n);
                self.apply_moves(fleet, now, (n, step), moves, false);
                // Nothing leaves or reaches it while it is taken apart.
                if self.flying.iter().any(|(k, (_, m))| k != step && m.iter().any(|x| x.1 == n || x.2 == n)) {
                    self.violations
                        .push(format!("at {now}ms: {node} drained while moves onto or off it are in flight"));
                }
                if self.balanced[n as usize] {
                    // Its services stop: only once no load balancer sends it anything.
                    if self.in_rotation[n as usize] {
                        self.violations
                            .push(format!("at {now}ms: {node}'s services stopped while it is in rotation"));
                    }
                } else {
                    self.start(fleet, now, node, step);
                }
                self.services_up[n as usize] = false;
            }
            Command::Precheck { node, step } => {
                self.once(now, step);
                self.check_unhealthy(now, fleet, node);
                self.prechecked.insert(node.clone());
            }
            Command::Update { step, .. } => self.once(now, step),
            Command::Restore { node, step, moves } => {
                self.once(now, step);
                if let Some(n) = fleet.node_id(node) {
                    self.apply_moves(fleet, now, (n, step), moves, true);
                    if self.failback {
                        self.check_failback(fleet, now, n, step);
                    }
                }
            }
            Command::Notify { notice } => match notice {
                Notice::HoldNotReleased { node, .. } => {
                    self.to_release.remove(node);
                }
                Notice::Phase { from, to, .. } => {
                    if *from == Phase::Halted
                        && matches!(to, Phase::Running | Phase::RollingBack | Phase::AfterCommit)
                    {
                        self.accepted = self.failed.saturating_sub(self.max_failed);
                    }
                    if *from == Phase::Completed && *to == Phase::AfterCommit {
                        // The after-commit pass: every node of the fleet, in a pass of its own,
                        // under its own plan's max_parallel.
                        self.accepted = self.failed.saturating_sub(self.max_failed);
                        self.passes += 1;
                        self.in_scope.iter_mut().for_each(|x| *x = true);
                        match self.after_max_parallel {
                            Some(p) => self.max_parallel = p,
                            None => self.violations.push(format!(
                                "at {now}ms: an after-commit pass began that the journaled plan does not have"
                            )),
                        }
                    }
                    if *to == Phase::RollingBack {
                        self.accepted = self.failed.saturating_sub(self.max_failed);
                    }
                    self.phase = Some(*to);
                }
                Notice::NodeDone { node } | Notice::NodeFailed { node, .. } => {
                    self.active.remove(node);
                    let n = fleet.node_id(node).expect("core names fleet nodes");
                    if let Some(t) = self.drained_at.get(&n) {
                        *self.work.entry(n).or_default() += now - t;
                    }
                    if matches!(notice, Notice::NodeFailed { .. }) {
                        self.failed += 1;
                    }
                    self.finished_nodes.insert(n);
                    // Failed in its prechecks: no drain follows.
                    self.prechecked.remove(node);
                    // A node that failed its prechecks or its hold was not drained in this pass: it
                    // finishes once per pass (the forward one, or each rollback's).
                    let undrained = matches!(notice, Notice::NodeFailed { reason, .. }
                        if reason.starts_with("precheck failed") || reason.starts_with("cannot hold"));
                    let run = match self.last_drain.get(node) {
                        Some(d) if !undrained => d.clone(),
                        _ => format!("{node}/not-drained/{}", self.passes),
                    };
                    let k = self.finished.entry(run).or_default();
                    *k += 1;
                    if *k > 1 {
                        self.violations.push(format!("at {now}ms: {node} finished twice in one pass"));
                    }
                }
            },
            // A fenced node is out of its load balancers, and the committed campaign counts it
            // down (as seen down) until it is unfenced.
            Command::Fence { node, .. } | Command::Unfence { node, .. } => {
                if let Some(n) = fleet.node_id(node) {
                    let fence = matches!(cmd, Command::Fence { .. });
                    self.fenced[n as usize] = fence;
                    self.in_rotation[n as usize] = !fence;
                    // Counted down from its fence (as seen down) until it is seen up at the
                    // level again or unfenced.
                    self.set(n, None, Some(fence));
                }
            }
            _ => {}
        }
    }
}

/// Runs a campaign to its end in virtual time. `inject` adds outside events (operator actions,
/// nodes lost outside the campaign, gates) at given times; the campaign is started at time 0.
/// A node's time out of service in the simulated world.
fn node_duration(opts: &SimOptions, n: NodeId) -> Millis {
    let (lo, hi) = opts.duration;
    if hi <= lo {
        return lo;
    }
    lo + (unit(opts.seed, n as u64, 0, SALT_DURATION) * (hi - lo + 1) as f64) as Millis
}

/// What an orchestrator would have learned of each node's time out of service from an earlier
/// campaign on the same world: the simulated time, off by up to 10% either way (a node is never
/// quite as fast twice), for `CampaignSpec::expected`.
pub fn learned_times(fleet: &Fleet, opts: &SimOptions) -> HashMap<NodeId, Millis> {
    (0..fleet.nodes.len() as NodeId)
        .map(|n| {
            let off = 0.9 + 0.2 * unit(opts.seed, n as u64, 0, SALT_LEARNED);
            (n, (node_duration(opts, n) as f64 * off) as Millis)
        })
        .collect()
}

pub fn run(
    fleet: Arc<Fleet>,
    spec: CampaignSpec,
    opts: &SimOptions,
    inject: &[(Millis, Event)],
) -> Result<SimReport, Infeasible> {
    let campaign = Campaign::new("sim", fleet.clone(), spec)?;
    let mut sim = Sim::new(campaign, opts.clone());
    sim.push(opts.start, Event::Start { by: "sim".into() });
    for (t, e) in inject {
        sim.push(opts.start + t, e.clone());
    }
    sim.run_to_end();
    Ok(sim.report())
}

/// Workload moves the commands sent: off drained nodes, and back to preferred nodes (failback).
pub fn moves_sent(commands: &[(Millis, Command)]) -> (usize, usize) {
    let mut sent = (0, 0);
    for (_, c) in commands {
        match c {
            Command::Drain { moves, .. } => sent.0 += moves.len(),
            Command::Restore { moves, .. } => sent.1 += moves.len(),
            _ => {}
        }
    }
    sent
}

/// When the campaign would end, simulated as [`run`] does but keeping only what that needs: no
/// journal, commands or step outcomes are kept (the orchestrator's estimate of the end runs this
/// on its own task every few seconds, and at 10,000 nodes the records of a whole run are tens of
/// MB). Without restarts nothing is sent twice, so the agents' recorded outcomes are not needed.
pub fn makespan(fleet: Arc<Fleet>, spec: CampaignSpec, opts: &SimOptions) -> Result<Millis, Infeasible> {
    let campaign = Campaign::new("sim", fleet, spec)?;
    let mut sim = Sim::new(campaign, opts.clone());
    sim.light = true;
    sim.push(opts.start, Event::Start { by: "sim".into() });
    sim.run_to_end();
    Ok(sim.last_finish - opts.start)
}

/// A step that went well and changed nothing the campaign reads (no reboot, no version).
fn done(node: &str, step: &str) -> Event {
    Event::StepOk {
        node: node.to_string(),
        step: step.to_string(),
        reboot: false,
        boot_id: None,
        version: None,
    }
}

/// Something due to happen in the simulated world.
enum Item {
    /// An event for the campaign. `gen` is the orchestrator incarnation an agent's answer is
    /// meant for: answers to an incarnation that crashed are lost with it.
    Deliver { event: Event, gen: Option<u64> },
    /// The orchestrator crashes and restarts from its journal.
    Restart,
}

/// The simulated world around one campaign.
pub struct Sim {
    pub campaign: Campaign,
    opts: SimOptions,
    queue: BinaryHeap<Reverse<(Millis, u64)>>,
    events: HashMap<u64, Item>,
    /// The orchestrator's incarnation; bumped by each restart.
    gen: u64,
    /// What each executed step will answer, and from when (agents' journals).
    outcomes: HashMap<String, (Millis, Event)>,
    /// Executions per step id, as the agents count them.
    pub executions: HashMap<String, u32>,
    pub restarts: usize,
    seq: u64,
    pub now: Millis,
    pub journal: Vec<(Millis, Event)>,
    pub commands: Vec<(Millis, Command)>,
    pub observer: Observer,
    refused: Vec<(Millis, Event, String)>,
    attempts: HashMap<NodeId, u64>,
    boots: HashMap<NodeId, u64>,
    /// The version each node's agent reports, once an update changed it.
    versions: HashMap<NodeId, String>,
    steps_sent: usize,
    last_finish: Millis,
    /// Check, for every event, that the core names every node whose record changed
    /// ([`Campaign::handle_changes`]); what it missed goes to `touch_misses`. Costs a copy of
    /// every node per event: for tests.
    pub check_touched: bool,
    pub touch_misses: Vec<String>,
    /// Keep no journal, commands, step outcomes or execution counts ([`makespan`]).
    light: bool,
}

impl Sim {
    /// The world around `campaign`; its journal opens with the campaign's plan, as a real
    /// orchestrator's does.
    pub fn new(campaign: Campaign, opts: SimOptions) -> Self {
        let observer = Observer::new(&campaign);
        let journal = vec![(opts.start, campaign.planned_event())];
        let start = opts.start;
        Sim {
            campaign,
            opts,
            queue: BinaryHeap::new(),
            events: HashMap::new(),
            gen: 0,
            outcomes: HashMap::new(),
            executions: HashMap::new(),
            restarts: 0,
            seq: 0,
            now: start,
            journal,
            commands: Vec::new(),
            observer,
            refused: Vec::new(),
            attempts: HashMap::new(),
            boots: HashMap::new(),
            versions: HashMap::new(),
            steps_sent: 0,
            last_finish: start,
            check_touched: false,
            touch_misses: Vec::new(),
            light: false,
        }
    }

    /// Queues an outside event (operator action, outage) for time `at`.
    pub fn push(&mut self, at: Millis, e: Event) {
        self.enqueue(at, Item::Deliver { event: e, gen: None });
    }

    /// Queues an orchestrator crash and restart for time `at`.
    pub fn push_restart(&mut self, at: Millis) {
        self.enqueue(at, Item::Restart);
    }

    /// An agent's answer to the current orchestrator.
    fn answer(&mut self, at: Millis, e: Event) {
        self.enqueue(at, Item::Deliver { event: e, gen: Some(self.gen) });
    }

    fn enqueue(&mut self, at: Millis, item: Item) {
        self.seq += 1;
        self.events.insert(self.seq, item);
        self.queue.push(Reverse((at, self.seq)));
    }

    /// The orchestrator crashes: answers in flight are lost. It restarts from its journal, which
    /// must give the very state it had, and sends the in-flight steps again with their ids; the
    /// agents answer those from their journals instead of running them again.
    pub fn restart(&mut self) {
        self.gen += 1;
        self.restarts += 1;
        let c = &self.campaign;
        match Campaign::replay(c.fleet.clone(), c.spec.clone(), &self.journal) {
            Ok(r) if r == self.campaign => {}
            Ok(_) => self
                .observer
                .violations
                .push(format!("at {}ms: the journal replays to another state", self.now)),
            Err(e) => {
                self.observer.violations.push(format!("at {}ms: the journal does not replay: {e}", self.now))
            }
        }
        for cmd in self.campaign.resume_commands() {
            self.carry_out(self.now, &cmd);
        }
    }

    /// A slow step's time for node `n`, up to `most`.
    fn slow(&self, n: NodeId, most: Millis) -> Millis {
        draw(self.opts.seed, n as u64, self.gen, SALT_SLOW) % (most + 1)
    }

    fn duration(&self, n: NodeId) -> Millis {
        node_duration(&self.opts, n)
    }

    fn chance(&self, n: NodeId, attempt: u64, salt: u64, p: f64) -> bool {
        p > 0.0 && unit(self.opts.seed, n as u64, attempt, salt) < p
    }

    /// Processes events until nothing is left to happen.
    pub fn run_to_end(&mut self) {
        let mut handled = 0usize;
        loop {
            let next_q = self.queue.peek().map(|r| r.0 .0);
            let next_d = self.campaign.next_deadline().map(|d| d.max(self.now));
            let (t, ev) = match (next_q, next_d) {
                (None, None) => break,
                (Some(q), Some(d)) if d < q => (d, Event::Tick),
                (None, Some(d)) => (d, Event::Tick),
                (Some(_), _) => {
                    let Reverse((t, id)) = self.queue.pop().expect("peeked");
                    match self.events.remove(&id).expect("queued item") {
                        Item::Deliver { event, gen } if gen.is_none_or(|g| g == self.gen) => (t, event),
                        Item::Deliver { .. } => continue, // lost with the crashed orchestrator
                        Item::Restart => {
                            self.now = self.now.max(t);
                            self.restart();
                            continue;
                        }
                    }
                }
            };
            handled += 1;
            if handled > self.opts.max_events {
                self.refused.push((t, ev, "event limit reached".into()));
                break;
            }
            self.step(t, ev);
        }
    }

    /// Feeds one event to the core at time `t` and carries out its commands.
    pub fn step(&mut self, t: Millis, ev: Event) {
        self.now = self.now.max(t);
        let now = self.now;
        // Back in service: for a node behind a load balancer, once back into it.
        let restored = match &ev {
            Event::StepOk { node, step, .. } if step.ends_with("/lb-in") => self.campaign.fleet.node_id(node),
            Event::StepOk { node, step, .. } if step.ends_with("/restore") => {
                self.campaign.fleet.node_id(node).filter(|&n| !self.observer.is_balanced(n))
            }
            _ => None,
        };
        let before = self.check_touched.then(|| self.campaign.nodes.clone());
        match self.campaign.handle_changes(now, ev.clone()) {
            Err(e) => self.refused.push((now, ev, e.to_string())),
            Ok((cmds, touched)) => {
                if let Some(before) = before {
                    for (i, (a, b)) in before.iter().zip(&self.campaign.nodes).enumerate() {
                        if a != b && touched.binary_search(&(i as NodeId)).is_err() {
                            self.touch_misses.push(format!(
                                "{ev:?} changed node {} ({a:?} -> {b:?}) without naming it",
                                self.campaign.fleet.node_name(i as NodeId)
                            ));
                        }
                    }
                }
                let fleet = self.campaign.fleet.clone();
                self.observer.on_event(&fleet, &ev);
                if let Some(n) = restored {
                    self.observer.on_restored(n);
                }
                if !self.light {
                    self.journal.push((now, ev));
                }
                if cmds.iter().any(|c| matches!(c, Command::Restore { .. })) {
                    self.observer.reserved = self
                        .campaign
                        .nodes
                        .iter()
                        .filter_map(|r| match &r.state {
                            NodeState::Draining { moves, stage: baton_core::campaign::Stage::Balancers } => {
                                Some(moves)
                            }
                            _ => None,
                        })
                        .flatten()
                        .filter_map(|m| fleet.node_id(&m.to))
                        .collect();
                }
                for c in &cmds {
                    self.observer.on_command(&fleet, now, c);
                    self.carry_out(now, c);
                }
                // Where the core believes each workload is, is where the steps took it.
                // (Not a workload on a node out of its load balancers whose drain is not sent: the
                // core holds its room already.)
                if let Some(w) = (0..fleet.workloads.len()).find(|&w| {
                    self.campaign.placement.at[w] != self.observer.workload_at(w)
                        && !self.observer.is_leaving(self.observer.workload_at(w))
                }) {
                    let v = format!(
                        "at {now}ms: the core has {} on {}, the steps took it to {}",
                        fleet.workloads[w].name,
                        fleet.node_name(self.campaign.placement.at[w]),
                        fleet.node_name(self.observer.workload_at(w))
                    );
                    if !self.observer.violations.contains(&v) {
                        self.observer.violations.push(v);
                    }
                }
                if !self.light {
                    self.commands.extend(cmds.into_iter().map(|c| (now, c)));
                }
            }
        }
    }

    /// A step's outcome, due at `at`: kept as the agent's journal would, and answered.
    fn record(&mut self, step: &str, at: Millis, e: Event) {
        if !self.light {
            self.outcomes.insert(step.to_string(), (at, e.clone()));
        }
        self.answer(at, e);
    }

    fn verify_time(&self) -> Millis {
        self.campaign.spec.health_wait + self.campaign.spec.health_stable
    }

    fn carry_out(&mut self, now: Millis, cmd: &Command) {
        let fleet = self.campaign.fleet.clone();
        let id = |name: &str| fleet.node_id(name).expect("core names fleet nodes");
        // An agent answers a step id it has seen with its recorded outcome.
        if let Command::Hold { step, .. }
        | Command::Release { step, .. }
        | Command::Precheck { step, .. }
        | Command::Drain { step, .. }
        | Command::Update { step, .. }
        | Command::Restore { step, .. }
        | Command::LbOut { step, .. }
        | Command::LbIn { step, .. } = cmd
        {
            if let Some((ready, ev)) = self.outcomes.get(step).cloned() {
                self.answer(now.max(ready), ev);
                return;
            }
            if !self.light {
                *self.executions.entry(step.clone()).or_default() += 1;
            }
        }
        match cmd {
            // Holding and releasing auto-updaters and prechecks take no simulated time; an agent
            // fails each as often as `precheck_fail_rate` says.
            Command::Hold { node, step }
            | Command::Release { node, step }
            | Command::Precheck { node, step } => {
                self.steps_sent += 1;
                let (attempt, salt, why) = if matches!(cmd, Command::Precheck { .. }) {
                    (0, SALT_PRECHECK, "disk /var: 1.2 GB free, 10 GB needed")
                } else {
                    let attempt =
                        step.rsplit('/').nth(1).and_then(|h| h.strip_prefix('h')?.parse().ok()).unwrap_or(0);
                    (attempt, SALT_HOLD, "systemctl: failed")
                };
                let e = if self.chance(id(node), attempt, salt, self.opts.precheck_fail_rate) {
                    Event::StepFailed { node: node.clone(), step: step.clone(), reason: why.into() }
                } else {
                    done(node, step)
                };
                self.record(step, now, e);
            }
            // A load balancer's step takes no simulated time; it fails a quarter as often as a
            // precheck (HAProxy's socket refusing, say).
            Command::LbOut { node, step } | Command::LbIn { node, step } => {
                let out = matches!(cmd, Command::LbOut { .. });
                let salt = if out { SALT_LB_OUT } else { SALT_LB_IN };
                let e = if self.chance(id(node), 0, salt, self.opts.precheck_fail_rate / 4.0) {
                    Event::StepFailed {
                        node: node.clone(),
                        step: step.clone(),
                        reason: "haproxy: socket refused".into(),
                    }
                } else {
                    done(node, step)
                };
                // Sessions drain for up to 2 minutes.
                let took = if self.opts.slow_steps && out { self.slow(id(node), 120_000) } else { 0 };
                self.record(step, now + took, e);
            }
            // Draining takes no simulated time and always works.
            Command::Drain { node, step, .. } => {
                self.steps_sent += 1;
                self.record(step, now, done(node, step));
            }
            // A restore migrates workloads back: with slow steps it takes up to 30 s and fails
            // now and then (a service that will not start).
            Command::Restore { node, step, .. } => {
                self.steps_sent += 1;
                let n = id(node);
                let (took, e) = if self.opts.slow_steps {
                    let e = if self.chance(n, 0, SALT_RESTORE, self.opts.precheck_fail_rate / 4.0) {
                        Event::StepFailed {
                            node: node.clone(),
                            step: step.clone(),
                            reason: "web: failed to start".into(),
                        }
                    } else {
                        done(node, step)
                    };
                    (self.slow(n, 30_000), e)
                } else {
                    (0, done(node, step))
                };
                self.record(step, now + took, e);
            }
            Command::Update { node, step, version, .. } => {
                self.steps_sent += 1;
                let n = id(node);
                let attempt = {
                    let a = self.attempts.entry(n).or_default();
                    *a += 1;
                    *a
                };
                let took = self.duration(n).saturating_sub(self.verify_time());
                let boot = *self.boots.entry(n).or_default();
                let e = if self.chance(n, attempt, SALT_FAIL, self.opts.fail_rate) {
                    Event::StepFailed {
                        node: node.clone(),
                        step: step.clone(),
                        reason: "simulated failure".into(),
                    }
                } else {
                    self.versions.insert(n, version.clone());
                    Event::StepOk {
                        node: node.clone(),
                        step: step.clone(),
                        reboot: true,
                        boot_id: Some(format!("{node}-boot{boot}")),
                        version: Some(version.clone()),
                    }
                };
                self.record(step, now + took, e);
            }
            Command::WatchBoot { node, .. } => {
                let n = id(node);
                if !self.chance(n, 0, SALT_STUCK, self.opts.stuck_reboot_rate) {
                    let b = self.boots.entry(n).or_default();
                    *b += 1;
                    let boot_id = format!("{node}-boot{b}");
                    self.answer(now, Event::Booted { node: node.clone(), boot_id, version: None });
                }
            }
            Command::WatchHealth { node } => {
                let n = id(node);
                // A node that failed before its reboot is still healthy on its old version.
                let updated = matches!(
                    self.campaign.nodes[n as usize].state,
                    NodeState::Verifying { .. } | NodeState::Done { .. }
                );
                let sick = updated && self.chance(n, 0, SALT_UNHEALTHY, self.opts.unhealthy_rate);
                if !sick {
                    let version =
                        self.versions.get(&n).cloned().or_else(|| fleet.nodes[n as usize].version.clone());
                    self.answer(
                        now,
                        Event::Health { node: node.clone(), healthy: true, version, detail: None },
                    );
                }
            }
            Command::Notify { notice: Notice::NodeDone { .. } | Notice::NodeFailed { .. } } => {
                self.last_finish = now;
            }
            Command::Fence { .. } | Command::Unfence { .. } | Command::Notify { .. } => {}
        }
    }

    pub fn report(self) -> SimReport {
        let c = &self.campaign;
        let f = &c.fleet;
        let (mut updated, mut failed, mut skipped) = (0, 0, 0);
        for r in &c.nodes {
            match r.state {
                NodeState::Done { .. } => updated += 1,
                NodeState::Failed { .. } => failed += 1,
                NodeState::Skipped { .. } => skipped += 1,
                _ => {}
            }
        }
        let lb = baton_core::plan::time_lower_bound(f, c.max_parallel, &self.observer.work);
        let peak_down =
            f.services.iter().zip(&self.observer.peak).map(|(s, p)| (s.name.clone(), *p)).collect();
        SimReport {
            strategy: c.spec.strategy,
            makespan: self.last_finish - self.opts.start,
            lower_bound: lb,
            updated,
            failed,
            skipped,
            outcome: c.phase,
            peak_down,
            violations: self.observer.violations.clone(),
            refused: self.refused,
            steps_sent: self.steps_sent,
            journal: self.journal,
            commands: self.commands,
            campaign: self.campaign,
        }
    }
}
