//! Run reports, as Cluster-Aware Updating gives for every updating run: per node, its steps
//! with outcome, duration and output, retries, reboots and failures; and the campaign's totals.
//! Built by replaying the journal.

use crate::store::Entry;
use baton_core::campaign::{Command, Event, Pass};
use baton_core::{Campaign, NodeState, Phase};
use baton_proto::{AfterCommitReport, DisplacedReport, HookReport, NodeReport, Report, StepReport};
use std::collections::HashMap;

/// The key that changes when a node moves to another step (an update retry is a new step).
fn key(st: &NodeState) -> String {
    match st {
        NodeState::Updating { attempt } => format!("updating#{attempt}"),
        NodeState::Prechecking { attempt } => format!("prechecking#{attempt}"),
        s => s.name().to_string(),
    }
}

/// A report built as the journal is read, one entry at a time (a campaign of 10,000 nodes has
/// some 60,000 entries: they are not all held at once).
pub struct Builder {
    id: i64,
    c: Campaign,
    nodes: Vec<NodeReport>,
    /// Each node's step key as last seen.
    keys: Vec<String>,
    started: Option<u64>,
    ended: Option<u64>,
    hooks: Vec<HookReport>,
    moved: u32,
    returned: u32,
    /// Per node, the output of the last step that ended within the report step still open (a
    /// restore's, before its load balancer step closes "restoring").
    tails: Vec<Option<String>>,
    /// Once a commit began the after-commit pass: when, each node's state at the end of the
    /// forward pass, and when the pass ended.
    after: Option<(u64, Vec<NodeState>)>,
}

impl Builder {
    pub fn new(id: i64, c: Campaign) -> Builder {
        let n = c.nodes.len();
        let nodes = (0..n)
            .map(|i| NodeReport {
                name: c.fleet.nodes[i].name.clone(),
                update_domain: c.fleet.nodes[i].update_domain,
                state: c.nodes[i].state.name().into(),
                version_before: c.nodes[i].from_version.clone(),
                version_after: None,
                started_ms: None,
                ended_ms: None,
                retries: 0,
                reboots: 0,
                failure: None,
                steps: Vec::new(),
                after_commit: None,
            })
            .collect();
        let keys = c.nodes.iter().map(|r| key(&r.state)).collect();
        let tails = vec![None; n];
        Builder {
            id,
            c,
            nodes,
            keys,
            started: None,
            ended: None,
            hooks: Vec::new(),
            moved: 0,
            returned: 0,
            tails,
            after: None,
        }
    }

    /// Replays one journal entry; only the nodes it changed are looked at.
    pub fn push(&mut self, e: &Entry, outputs: &HashMap<String, String>) {
        if matches!(e.event, Event::Start { .. }) {
            self.started = Some(e.at_ms);
        }
        let forward: Option<Vec<NodeState>> = matches!(e.event, Event::Commit { .. })
            .then(|| self.c.nodes.iter().map(|r| r.state.clone()).collect());
        let Ok((commands, touched)) = self.c.handle_changes(e.at_ms, e.event.clone()) else { return };
        if let (Some(states), Pass::AfterCommit) = (forward, self.c.pass) {
            self.after = Some((e.at_ms, states));
        }
        for c in &commands {
            match c {
                Command::Drain { moves, .. } => self.moved += moves.len() as u32,
                Command::Restore { moves, .. } => self.returned += moves.len() as u32,
                _ => {}
            }
        }
        if let Event::Hook { hook, ok, output } = &e.event {
            self.hooks.push(HookReport {
                hook: hook.clone(),
                at_ms: e.at_ms,
                ok: *ok,
                output: output.clone(),
            });
        }
        // The output of the step this event ends, if it is a step's outcome.
        let tail = match &e.event {
            Event::StepOk { step, .. } | Event::StepFailed { step, .. } => outputs.get(step).cloned(),
            _ => None,
        };
        if let (Some(t), Event::StepOk { node, .. } | Event::StepFailed { node, .. }) = (&tail, &e.event) {
            if let Some(n) = self.c.fleet.node_id(node) {
                self.tails[n as usize] = Some(t.clone()).filter(|t| !t.is_empty());
            }
        }
        for i in touched {
            let i = i as usize;
            let st = &self.c.nodes[i].state;
            let k = key(st);
            if k == self.keys[i] {
                continue;
            }
            let tail = self.tails[i].take();
            let r = &mut self.nodes[i];
            if let Some(open) = r.steps.last_mut().filter(|s| s.ended_ms.is_none()) {
                open.ended_ms = Some(e.at_ms);
                if let NodeState::Failed { reason, .. } = st {
                    open.outcome = "failed".into();
                    open.detail = Some(reason.clone());
                } else if let (NodeState::Skipped { reason }, "prechecking") = (st, open.step.as_str()) {
                    open.outcome = "failed".into();
                    open.detail = Some(reason.clone());
                } else {
                    open.outcome = "ok".into();
                }
                if open.output_tail.is_none()
                    && matches!(open.step.as_str(), "prechecking" | "draining" | "updating" | "restoring")
                {
                    open.output_tail = tail;
                }
            }
            if st.is_active() {
                r.started_ms.get_or_insert(e.at_ms);
                let pass = match self.c.nodes[i].pass {
                    Pass::Forward => None,
                    p => Some(p.as_str().to_string()),
                };
                r.steps.push(StepReport {
                    step: st.name().into(),
                    started_ms: e.at_ms,
                    ended_ms: None,
                    outcome: "running".into(),
                    detail: None,
                    output_tail: None,
                    pass,
                });
            }
            if st.is_terminal() {
                r.ended_ms = Some(e.at_ms);
                self.ended = Some(e.at_ms);
            }
            self.keys[i] = k;
        }
    }

    pub fn finish(self) -> Report {
        let Builder { id, c, mut nodes, started, ended, hooks, moved, returned, after, .. } = self;
        // The pass ended when its last node did, once the campaign is committed and lets go of
        // the fleet (after an abort, nodes in flight finish after it).
        let over = c.phase == Phase::Committed && !c.holds_fleet();
        let after_ended = nodes
            .iter()
            .flat_map(|n| n.steps.iter())
            .filter(|s| s.pass.as_deref() == Some("after-commit"))
            .filter_map(|s| s.ended_ms)
            .max()
            .or(after.as_ref().map(|a| a.0))
            .filter(|_| over);
        let (mut updated, mut failed, mut skipped, mut retries, mut reboots) = (0, 0, 0, 0, 0);
        let mut after_counts = (0, 0, 0);
        for (i, r) in nodes.iter_mut().enumerate() {
            // With an after-commit pass, the node's state is the forward pass's; how it ended
            // that pass is said apart.
            let st = match &after {
                Some((_, states)) => {
                    let end = &c.nodes[i].state;
                    r.after_commit = Some(match end {
                        NodeState::Done { .. } => {
                            after_counts.0 += 1;
                            "done".to_string()
                        }
                        NodeState::Failed { reason, .. } => {
                            after_counts.1 += 1;
                            format!("failed: {reason}")
                        }
                        NodeState::Skipped { reason } => {
                            after_counts.2 += 1;
                            format!("skipped: {reason}")
                        }
                        s => s.name().to_string(),
                    });
                    &states[i]
                }
                None => &c.nodes[i].state,
            };
            r.state = st.name().into();
            r.version_after = c.nodes[i].version.clone();
            // Retries per pass: each pass's first update is no retry.
            let mut updates: HashMap<Option<&str>, u32> = HashMap::new();
            for s in r.steps.iter().filter(|s| s.step == "updating") {
                *updates.entry(s.pass.as_deref()).or_default() += 1;
            }
            r.retries = updates.values().map(|k| k.saturating_sub(1)).sum();
            r.reboots = r.steps.iter().filter(|s| s.step == "rebooting").count() as u32;
            match st {
                NodeState::Done { .. } => updated += 1,
                NodeState::Failed { reason, .. } => {
                    failed += 1;
                    r.failure = Some(reason.clone());
                }
                NodeState::Skipped { reason } => {
                    skipped += 1;
                    r.failure = None;
                    // A node skipped after its prechecks failed keeps them: they say why.
                    if !r.steps.iter().any(|s| s.step == "prechecking" && s.pass.is_none()) {
                        r.steps.retain(|s| s.pass.is_some());
                    }
                    r.state = format!("skipped: {reason}");
                }
                _ => {}
            }
            retries += r.retries;
            reboots += r.reboots;
        }
        Report {
            id,
            name: c.spec.name.clone(),
            fleet: c.fleet.name.clone(),
            target_version: c.spec.target_version.clone(),
            strategy: c.spec.strategy.as_str().into(),
            phase: c.phase.as_str().into(),
            started_ms: started,
            ended_ms: ended,
            // The forward pass's, as the counts beside it.
            nodes_targeted: match &after {
                Some((_, states)) => states.iter().filter(|s| !matches!(s, NodeState::NotTargeted)).count(),
                None => c.nodes.iter().filter(|r| !matches!(r.state, NodeState::NotTargeted)).count(),
            },
            updated,
            failed,
            skipped,
            retries,
            reboots,
            nodes: nodes
                .into_iter()
                .filter(|r| r.state != "not-targeted" || r.after_commit.is_some())
                .collect(),
            hooks,
            workloads_moved: moved,
            workloads_returned: returned,
            displaced: c
                .displaced()
                .into_iter()
                .map(|d| DisplacedReport {
                    workload: d.workload,
                    at: d.at,
                    preferred: d.preferred,
                    reason: d.reason,
                })
                .collect(),
            after_commit: after.map(|(at, _)| AfterCommitReport {
                action: c.after_commit_action().unwrap_or_default().to_string(),
                started_ms: at,
                ended_ms: after_ended,
                done: after_counts.0,
                failed: after_counts.1,
                skipped: after_counts.2,
            }),
        }
    }
}
