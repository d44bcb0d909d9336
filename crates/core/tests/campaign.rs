//! Scripted scenarios of the campaign state machine: each drives the core by hand, event by
//! event, and checks the commands and states that follow.

use baton_core::campaign::{Back, Command, Event, Notice, Phase};
use baton_core::{load_campaign, load_fleet, Campaign, CampaignError, NodeState};
use std::sync::Arc;

const S: u64 = 1000;
const M: u64 = 60 * S;

fn fleet3() -> &'static str {
    r#"
name = "t"
versions = ["1", "2"]
functional_level = "1"
[[node]]
name = "a"
version = "1"
[[node]]
name = "b"
version = "1"
[[node]]
name = "c"
version = "1"
[[service]]
name = "web"
nodes = ["a", "b", "c"]
max_unavailable = 1
"#
}

fn campaign(extra: &str) -> Campaign {
    let fleet = load_fleet("f.toml", fleet3()).unwrap();
    let text = format!(
        "name = \"c1\"\ntarget_version = \"2\"\nmax_parallel = 3\nreboot_timeout = \"10m\"\nhealth_wait = \"10s\"\n\
         health_stable = \"1m\"\nready_timeout = \"5m\"\n{extra}"
    );
    let spec = load_campaign("c.toml", &text, &fleet).unwrap();
    // Nodes are drained as they start: prechecks have tests of their own.
    Campaign::new("c1", Arc::new(fleet), spec).unwrap().with_prechecks(false).with_holds(false)
}

fn by() -> String {
    "op".into()
}

fn drains(cmds: &[Command]) -> Vec<String> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::Drain { node, .. } => Some(node.clone()),
            _ => None,
        })
        .collect()
}

/// An update step that went well and left the node at the target version "2".
fn upd(node: &str, step: &str) -> Event {
    Event::StepOk {
        node: node.into(),
        step: step.into(),
        reboot: false,
        boot_id: None,
        version: Some("2".into()),
    }
}

fn ok(node: &str, step: &str) -> Event {
    Event::StepOk { node: node.into(), step: step.into(), reboot: false, boot_id: None, version: None }
}

/// Drives node `n` from Draining through a reboot and verification to Done, starting at `t`.
fn walk(c: &mut Campaign, n: &str, t: u64) -> Vec<Command> {
    c.handle(t, ok(n, &format!("c1/{n}/0/drain"))).unwrap();
    c.handle(
        t + S,
        Event::StepOk {
            node: n.into(),
            step: format!("c1/{n}/0/update"),
            reboot: true,
            boot_id: Some("b0".into()),
            version: Some("2".into()),
        },
    )
    .unwrap();
    c.handle(t + 2 * S, Event::Booted { node: n.into(), boot_id: "b1".into(), version: None }).unwrap();
    c.handle(t + 3 * S, Event::Health { node: n.into(), healthy: true, version: None, detail: None })
        .unwrap();
    // Healthy from health_wait (10s after verification began) for health_stable (1m).
    let due = c.next_deadline().unwrap();
    assert_eq!(due, t + 2 * S + 10 * S + M);
    let cmds = c.handle(due, Event::Tick).unwrap();
    assert!(cmds.iter().any(|x| matches!(x, Command::Restore { node, .. } if node == n)));
    c.handle(due + S, ok(n, &format!("c1/{n}/0/restore"))).unwrap()
}

#[test]
fn a_campaign_walks_one_node_at_a_time_and_completes() {
    let mut c = campaign("");
    let cmds = c.handle(0, Event::Start { by: by() }).unwrap();
    // web allows 1 down: only one node starts, although max_parallel is 3.
    assert_eq!(drains(&cmds), vec!["a"]);
    let cmds = walk(&mut c, "a", 0);
    assert_eq!(drains(&cmds), vec!["b"]);
    assert_eq!(c.nodes[0].state, NodeState::Done { back: Back::In });
    assert_eq!(c.nodes[0].version.as_deref(), Some("2"));
    walk(&mut c, "b", 100 * S);
    let cmds = walk(&mut c, "c", 200 * S);
    assert_eq!(c.phase, Phase::Completed);
    assert!(cmds
        .iter()
        .any(|x| matches!(x, Command::Notify { notice: Notice::Phase { to: Phase::Completed, .. } })));
    // Commit raises the level; afterwards rollback is refused.
    c.handle(300 * S, Event::Commit { by: by() }).unwrap();
    assert_eq!(c.level.as_deref(), Some("2"));
    assert_eq!(
        c.handle(301 * S, Event::Rollback { by: by() }),
        Err(CampaignError::NotAllowed { action: "roll back", phase: Phase::Committed })
    );
    // A node that comes back at an older version after commit is fenced.
    let cmds =
        c.handle(302 * S, Event::Observed { node: "b".into(), up: true, version: Some("1".into()) }).unwrap();
    assert!(matches!(&cmds[0], Command::Fence { node, step, .. } if node == "b" && step == "c1/b/f0/fence"));
    // Seen down and up again (a reboot): fenced again, under a new step id (the agent stops
    // its services again), and counted down meanwhile.
    c.handle(303 * S, Event::Observed { node: "b".into(), up: false, version: None }).unwrap();
    let cmds =
        c.handle(304 * S, Event::Observed { node: "b".into(), up: true, version: Some("1".into()) }).unwrap();
    assert!(matches!(&cmds[0], Command::Fence { step, .. } if step == "c1/b/f1/fence"));
    assert!(c.nodes[1].observed_down);
    // Updated meanwhile (at the level again): it rejoins.
    let cmds =
        c.handle(305 * S, Event::Observed { node: "b".into(), up: true, version: Some("2".into()) }).unwrap();
    assert!(cmds.is_empty() && !c.nodes[1].observed_down, "{cmds:?}");
}

#[test]
fn step_ids_are_deterministic_and_stale_reports_are_refused() {
    let mut c = campaign("");
    let cmds = c.handle(0, Event::Start { by: by() }).unwrap();
    assert!(matches!(&cmds[1], Command::Drain { step, .. } if step == "c1/a/0/drain"));
    // A report for a step the node is not on is a typed error, and changes nothing.
    let before = c.clone();
    let e = c.handle(S, upd("a", "c1/a/0/update")).unwrap_err();
    assert!(matches!(e, CampaignError::StaleStep { .. }));
    assert_eq!(c, before);
    assert_eq!(c.handle(S, ok("zz", "x")), Err(CampaignError::UnknownNode("zz".into())));
}

#[test]
fn failed_update_is_retried_then_fails_and_the_node_returns_if_healthy() {
    let mut c = campaign("max_retries_per_node = 1\nmax_failed_nodes = 0");
    c.handle(0, Event::Start { by: by() }).unwrap();
    let cmds = c.handle(S, ok("a", "c1/a/0/drain")).unwrap();
    assert!(matches!(&cmds[0], Command::Update { step, .. } if step == "c1/a/0/update"));
    let fail =
        |step: &str| Event::StepFailed { node: "a".into(), step: step.into(), reason: "dpkg error".into() };
    let cmds = c.handle(2 * S, fail("c1/a/0/update")).unwrap();
    assert!(matches!(&cmds[0], Command::Update { step, .. } if step == "c1/a/1/update"));
    let cmds = c.handle(3 * S, fail("c1/a/1/update")).unwrap();
    assert!(
        matches!(&c.nodes[0].state, NodeState::Failed { reason, back: Back::Checking { .. } } if reason.contains("2 attempt"))
    );
    // More failures than max_failed_nodes: the campaign halts and no other node starts.
    assert_eq!(c.phase, Phase::Halted);
    assert!(drains(&cmds).is_empty());
    // Still healthy on its old version: after health_stable it is restored.
    c.handle(4 * S, Event::Health { node: "a".into(), healthy: true, version: None, detail: None }).unwrap();
    let cmds = c.handle(4 * S + M, Event::Tick).unwrap();
    assert!(matches!(&cmds[0], Command::Restore { step, .. } if step == "c1/a/0/restore"));
    c.handle(5 * S + M, ok("a", "c1/a/0/restore")).unwrap();
    assert!(!c.nodes[0].state.is_out());
    // Resuming accepts the failure and goes on with the next node.
    let cmds = c.handle(6 * S + M, Event::Resume { by: by() }).unwrap();
    assert_eq!(drains(&cmds), vec!["b"]);
}

#[test]
fn a_node_that_never_reboots_fails_after_reboot_timeout_and_stays_out() {
    let mut c = campaign("max_failed_nodes = 1");
    c.handle(0, Event::Start { by: by() }).unwrap();
    c.handle(S, ok("a", "c1/a/0/drain")).unwrap();
    let cmds = c
        .handle(
            2 * S,
            Event::StepOk {
                node: "a".into(),
                step: "c1/a/0/update".into(),
                reboot: true,
                boot_id: Some("b0".into()),
                version: None,
            },
        )
        .unwrap();
    assert!(matches!(&cmds[0], Command::WatchBoot { deadline, .. } if *deadline == 2 * S + 10 * M));
    // The same boot id again is not a reboot.
    c.handle(3 * S, Event::Booted { node: "a".into(), boot_id: "b0".into(), version: None }).unwrap();
    assert!(matches!(c.nodes[0].state, NodeState::Rebooting { .. }));
    assert_eq!(c.next_deadline(), Some(2 * S + 10 * M));
    let cmds = c.handle(2 * S + 10 * M, Event::Tick).unwrap();
    assert!(matches!(&c.nodes[0].state, NodeState::Failed { back: Back::Out, .. }));
    // One failure is within max_failed_nodes = 1, but a is still down, so web has no room.
    assert_eq!(c.phase, Phase::Running);
    assert!(drains(&cmds).is_empty());
    assert_eq!(c.down(0), 1);
}

#[test]
fn ready_timeout_halts_or_proceeds() {
    for (policy, expect_failed) in [("halt", true), ("proceed", false)] {
        let mut c = campaign(&format!("on_ready_timeout = \"{policy}\"\nmax_failed_nodes = 3"));
        c.handle(0, Event::Start { by: by() }).unwrap();
        c.handle(S, ok("a", "c1/a/0/drain")).unwrap();
        c.handle(2 * S, upd("a", "c1/a/0/update")).unwrap();
        // Unhealthy: verification times out after ready_timeout (5m).
        c.handle(3 * S, Event::Health { node: "a".into(), healthy: false, version: None, detail: None })
            .unwrap();
        assert_eq!(c.next_deadline(), Some(2 * S + 5 * M));
        c.handle(2 * S + 5 * M, Event::Tick).unwrap();
        let st = &c.nodes[0].state;
        assert_eq!(matches!(st, NodeState::Failed { .. }), expect_failed, "{policy}: {st:?}");
        // Either way a stays out of service and counts against web.
        assert!(st.is_out());
        assert_eq!(c.down(0), 1);
        if !expect_failed {
            // proceed: counted unavailable; once healthy and stable it is restored.
            assert!(matches!(st, NodeState::Done { back: Back::Checking { .. } }));
            c.handle(6 * M, Event::Health { node: "a".into(), healthy: true, version: None, detail: None })
                .unwrap();
            let cmds = c.handle(7 * M, Event::Tick).unwrap();
            assert!(matches!(&cmds[0], Command::Restore { .. }));
            let cmds = c.handle(7 * M + S, ok("a", "c1/a/0/restore")).unwrap();
            assert_eq!(drains(&cmds), vec!["b"]);
        }
    }
}

#[test]
fn health_must_hold_for_health_stable() {
    let mut c = campaign("");
    c.handle(0, Event::Start { by: by() }).unwrap();
    c.handle(S, ok("a", "c1/a/0/drain")).unwrap();
    c.handle(2 * S, upd("a", "c1/a/0/update")).unwrap();
    c.handle(20 * S, Event::Health { node: "a".into(), healthy: true, version: None, detail: None }).unwrap();
    assert_eq!(c.next_deadline(), Some(20 * S + M));
    // A flap resets the clock.
    c.handle(30 * S, Event::Health { node: "a".into(), healthy: false, version: None, detail: None })
        .unwrap();
    c.handle(40 * S, Event::Health { node: "a".into(), healthy: true, version: None, detail: None }).unwrap();
    let cmds = c.handle(20 * S + M, Event::Tick).unwrap();
    assert!(cmds.is_empty());
    assert_eq!(c.next_deadline(), Some(40 * S + M));
}

#[test]
fn pause_resume_abort_and_illegal_transitions() {
    let mut c = campaign("");
    assert!(matches!(c.handle(0, Event::Pause { by: by() }), Err(CampaignError::NotAllowed { .. })));
    c.handle(0, Event::Start { by: by() }).unwrap();
    c.handle(S, Event::Pause { by: by() }).unwrap();
    // In-flight a finishes while paused; nothing new starts.
    let cmds = walk(&mut c, "a", 2 * S);
    assert!(drains(&cmds).is_empty());
    assert_eq!(c.phase, Phase::Paused);
    let cmds = c.handle(200 * S, Event::Resume { by: by() }).unwrap();
    assert_eq!(drains(&cmds), vec!["b"]);
    c.handle(201 * S, Event::Abort { by: by() }).unwrap();
    assert_eq!(c.phase, Phase::Aborted);
    assert!(matches!(&c.nodes[2].state, NodeState::Skipped { reason } if reason.contains("aborted by op")));
    // b, in flight, is finished and restored.
    walk(&mut c, "b", 202 * S);
    assert_eq!(c.nodes[1].state, NodeState::Done { back: Back::In });
    assert!(matches!(c.handle(400 * S, Event::Resume { by: by() }), Err(CampaignError::NotAllowed { .. })));
    assert!(matches!(c.handle(400 * S, Event::Commit { by: by() }), Err(CampaignError::NotAllowed { .. })));
}

#[test]
fn windows_gates_and_outside_losses_close_the_door() {
    let mut c = campaign("");
    c.handle(0, Event::Window { open: false }).unwrap();
    let cmds = c.handle(0, Event::Start { by: by() }).unwrap();
    assert!(drains(&cmds).is_empty());
    c.handle(S, Event::Gate { name: "alert".into(), open: false }).unwrap();
    assert!(drains(&c.handle(2 * S, Event::Window { open: true }).unwrap()).is_empty());
    // A node lost outside the campaign uses web's whole allowance.
    c.handle(3 * S, Event::Observed { node: "c".into(), up: false, version: None }).unwrap();
    assert!(drains(&c.handle(4 * S, Event::Gate { name: "alert".into(), open: true }).unwrap()).is_empty());
    let cmds = c.handle(5 * S, Event::Observed { node: "c".into(), up: true, version: None }).unwrap();
    assert_eq!(drains(&cmds), vec!["a"]);
}

#[test]
fn commit_is_refused_until_every_node_is_at_the_target() {
    let mut c = campaign("nodes = [\"a\"]");
    c.handle(0, Event::Start { by: by() }).unwrap();
    walk(&mut c, "a", 0);
    assert_eq!(c.phase, Phase::Completed);
    let e = c.handle(200 * S, Event::Commit { by: by() }).unwrap_err();
    assert!(
        matches!(&e, CampaignError::CommitRefused(m) if m.contains("b is at 1") && m.contains("c is at 1")),
        "{e}"
    );
    assert_eq!(c.phase, Phase::Completed);
}

#[test]
fn rollback_takes_updated_nodes_back_with_the_same_safety() {
    let mut c = campaign("");
    c.handle(0, Event::Start { by: by() }).unwrap();
    walk(&mut c, "a", 0);
    c.handle(100 * S, Event::Pause { by: by() }).unwrap();
    walk(&mut c, "b", 100 * S);
    let cmds = c.handle(200 * S, Event::Rollback { by: by() }).unwrap();
    assert_eq!(c.phase, Phase::RollingBack);
    // c was never started: skipped. a goes back first, alone (web allows 1).
    assert!(matches!(c.nodes[2].state, NodeState::Skipped { .. }));
    assert_eq!(drains(&cmds), vec!["a"]);
    let cmds = c.handle(201 * S, ok("a", "c1/a/rb0/drain")).unwrap();
    assert!(matches!(&cmds[0], Command::Update { action, version, step, .. }
        if action == "rollback" && version == "1" && step == "c1/a/rb0/update"));
}

#[test]
fn replay_gives_the_same_state() {
    let mut c = campaign("");
    let mut journal = vec![(0, c.planned_event())];
    let mut feed = |c: &mut Campaign, t: u64, e: Event| {
        c.handle(t, e.clone()).unwrap();
        journal.push((t, e));
    };
    feed(&mut c, 0, Event::Start { by: by() });
    feed(&mut c, S, ok("a", "c1/a/0/drain"));
    feed(&mut c, 2 * S, Event::Pause { by: by() });
    feed(&mut c, 3 * S, upd("a", "c1/a/0/update"));
    feed(&mut c, 4 * S, Event::Health { node: "a".into(), healthy: true, version: None, detail: None });
    let fleet = c.fleet.clone();
    let r = Campaign::replay(fleet, c.spec.clone(), &journal).unwrap();
    assert_eq!(r, c);
    // Events serialize for the journal and come back equal.
    let text = serde_json::to_string(&journal).unwrap();
    let back: Vec<(u64, Event)> = serde_json::from_str(&text).unwrap();
    assert_eq!(back, journal);
}

#[test]
fn an_unreachable_agent_is_given_reboot_timeout_and_nothing_is_assumed_meanwhile() {
    let mut c = campaign("max_failed_nodes = 1");
    c.handle(0, Event::Start { by: by() }).unwrap();
    c.handle(S, ok("a", "c1/a/0/drain")).unwrap();
    // Cut off during the update: no timer before, reboot_timeout (10m) after.
    assert_eq!(c.next_deadline(), None);
    c.handle(2 * S, Event::Unreachable { node: "a".into() }).unwrap();
    assert_eq!(c.next_deadline(), Some(2 * S + 10 * M));
    // It answers again, with the outcome it recorded: no timer, the update counts.
    c.handle(3 * M, Event::Reachable { node: "a".into() }).unwrap();
    assert_eq!(c.next_deadline(), None);
    c.handle(3 * M + S, upd("a", "c1/a/0/update")).unwrap();
    assert!(matches!(c.nodes[0].state, NodeState::Verifying { .. }));
    // An outage while it is not waiting on a step is not recorded.
    c.handle(4 * M, Event::Unreachable { node: "a".into() }).unwrap();
    assert_eq!(c.nodes[0].unreachable_since, None);
    // Cut off for good during its restore: Failed after reboot_timeout, and it stays out.
    c.handle(4 * M + S, Event::Health { node: "a".into(), healthy: true, version: None, detail: None })
        .unwrap();
    c.handle(c.next_deadline().unwrap(), Event::Tick).unwrap();
    assert!(matches!(c.nodes[0].state, NodeState::Restoring { .. }));
    c.handle(6 * M, Event::Unreachable { node: "a".into() }).unwrap();
    assert!(c.handle(6 * M + 10 * M - 1, Event::Tick).unwrap().is_empty());
    c.handle(6 * M + 10 * M, Event::Tick).unwrap();
    assert!(
        matches!(&c.nodes[0].state, NodeState::Failed { reason, back: Back::Out } if reason.contains("unreachable"))
    );
    assert_eq!(c.down(0), 1);
}

#[test]
fn step_ids_come_from_the_campaign_id_not_its_name() {
    let fleet = Arc::new(load_fleet("f.toml", fleet3()).unwrap());
    let text = "name = \"up\"\ntarget_version = \"2\"\n";
    let spec = load_campaign("c.toml", text, &fleet).unwrap();
    let first = Campaign::new("7f3a", fleet.clone(), spec.clone()).unwrap();
    let again = Campaign::new("91bc", fleet.clone(), spec).unwrap();
    let step = |c: &mut Campaign| match &c.handle(0, Event::Start { by: by() }).unwrap()[1] {
        Command::Hold { step, .. } => step.clone(),
        other => panic!("expected a hold, got {other:?}"),
    };
    let (a, b) = (step(&mut first.clone()), step(&mut again.clone()));
    assert_eq!(a, "7f3a/a/h0/hold");
    assert_eq!(b, "91bc/a/h0/hold");
}

#[test]
fn a_node_is_counted_updated_only_at_the_version_it_reports() {
    let mut c = campaign("max_retries_per_node = 1\nmax_failed_nodes = 3\non_ready_timeout = \"proceed\"");
    c.handle(0, Event::Start { by: by() }).unwrap();
    c.handle(S, ok("a", "c1/a/0/drain")).unwrap();
    // The action says ok but the node is still at 1: that attempt failed, the next one runs.
    let at1 = |step: &str| Event::StepOk {
        node: "a".into(),
        step: step.into(),
        reboot: false,
        boot_id: None,
        version: Some("1".into()),
    };
    let cmds = c.handle(2 * S, at1("c1/a/0/update")).unwrap();
    assert!(matches!(&cmds[0], Command::Update { step, .. } if step == "c1/a/1/update"), "{cmds:?}");
    // No version in the report: nothing is assumed; the node is verified but reports 1, so it
    // is never healthy enough to be restored, and fails at ready_timeout even with proceed.
    c.handle(3 * S, ok("a", "c1/a/1/update")).unwrap();
    assert!(matches!(c.nodes[0].state, NodeState::Verifying { .. }));
    assert_eq!(c.nodes[0].version.as_deref(), Some("1"));
    c.handle(
        4 * S,
        Event::Health { node: "a".into(), healthy: true, version: Some("1".into()), detail: None },
    )
    .unwrap();
    assert!(matches!(c.nodes[0].state, NodeState::Verifying { healthy_since: None, .. }));
    c.handle(3 * S + 5 * M, Event::Tick).unwrap();
    assert!(
        matches!(&c.nodes[0].state, NodeState::Failed { reason, .. } if reason.contains("reports 1, not the target 2")),
        "{:?}",
        c.nodes[0].state
    );
    // A node that reports the target after its reboot is verified as usual.
    let mut c = campaign("");
    c.handle(0, Event::Start { by: by() }).unwrap();
    c.handle(S, ok("a", "c1/a/0/drain")).unwrap();
    c.handle(
        2 * S,
        Event::StepOk {
            node: "a".into(),
            step: "c1/a/0/update".into(),
            reboot: true,
            boot_id: Some("b0".into()),
            version: None,
        },
    )
    .unwrap();
    c.handle(3 * S, Event::Booted { node: "a".into(), boot_id: "b1".into(), version: Some("2".into()) })
        .unwrap();
    c.handle(
        4 * S,
        Event::Health { node: "a".into(), healthy: true, version: Some("2".into()), detail: None },
    )
    .unwrap();
    assert!(matches!(c.nodes[0].state, NodeState::Verifying { healthy_since: Some(_), .. }));
}

/// Found by the property test at 199,479 cases: a pause, then a rollback and an abort at one
/// instant; the node in flight finished and was queued to go back by an aborted campaign.
#[test]
fn a_node_finishing_after_rollback_then_abort_ends_done_not_pending() {
    let mut c = campaign("");
    c.handle(0, Event::Start { by: by() }).unwrap();
    c.handle(S, Event::Pause { by: by() }).unwrap();
    c.handle(2 * S, Event::Rollback { by: by() }).unwrap();
    c.handle(2 * S, Event::Abort { by: by() }).unwrap();
    assert_eq!(c.phase, Phase::Aborted);
    assert!(c.holds_fleet(), "a is still in flight");
    walk(&mut c, "a", 3 * S);
    assert_eq!(c.nodes[0].state, NodeState::Done { back: Back::In });
    assert!(c.nodes.iter().all(|r| r.state.is_terminal()));
    assert!(!c.holds_fleet(), "an aborted campaign releases the fleet once its nodes are back");
}

#[test]
fn nodes_left_out_by_an_earlier_campaign_count_as_down() {
    let fleet = Arc::new(load_fleet("f.toml", fleet3()).unwrap());
    let spec = campaign("").spec;
    let c_node = fleet.node_id("c").unwrap();
    let mut c = Campaign::create("c1", fleet.clone(), spec.clone(), &[c_node])
        .unwrap()
        .with_prechecks(false)
        .with_holds(false);
    assert_eq!(c.down(0), 1);
    // web allows one down and c already is: only c may start (it adds nothing).
    let cmds = c.handle(0, Event::Start { by: by() }).unwrap();
    assert_eq!(drains(&cmds), vec!["c"]);
    // The journaled plan keeps it, so a replay agrees.
    let journal = vec![(0, c.planned_event()), (0, Event::Start { by: by() })];
    assert_eq!(Campaign::replay(fleet, spec, &journal).unwrap(), c);
    // Once this campaign restores c, it is in service again.
    let cmds = walk(&mut c, "c", S);
    assert!(!c.out_of_service(c_node));
    assert_eq!(drains(&cmds), vec!["a"]);
}

#[test]
fn the_journal_begins_with_the_plan_and_replays_from_it() {
    let mut c = campaign("");
    let mut journal = vec![(0, c.planned_event())];
    assert!(matches!(&journal[0].1, Event::Planned { id, plan } if id == "c1" && plan.waves.len() == 3));
    // It is only ever first.
    assert!(matches!(c.handle(0, journal[0].1.clone()), Err(CampaignError::NotAllowed { .. })));
    for (t, e) in [(0, Event::Start { by: by() }), (S, ok("a", "c1/a/0/drain"))] {
        c.handle(t, e.clone()).unwrap();
        journal.push((t, e));
    }
    let r = Campaign::replay(c.fleet.clone(), c.spec.clone(), &journal).unwrap();
    assert_eq!(r, c);
    // Stored and read back through the versioned encoding.
    let back: Vec<(u64, Event)> = journal
        .iter()
        .map(|(t, e)| (*t, baton_core::journal::decode(&baton_core::journal::encode(e)).unwrap()))
        .collect();
    assert_eq!(back, journal);
}

/// A journal as baton 0.1 wrote it (schema 1: no "v", no planned event, step ids from the
/// campaign's name) still replays, and resends its steps with the ids the agents recorded.
#[test]
fn a_schema_one_journal_still_replays() {
    let text = include_str!("fixtures/journal-v1.jsonl");
    let journal: Vec<(u64, Event)> = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i as u64 * S, baton_core::journal::decode(l).unwrap()))
        .collect();
    let fleet = Arc::new(load_fleet("f.toml", fleet3()).unwrap());
    let text = "name = \"c1\"\ntarget_version = \"2\"\nmax_parallel = 3\nreboot_timeout = \"10m\"\n\
                health_wait = \"10s\"\nhealth_stable = \"1m\"\nready_timeout = \"5m\"\n";
    let spec = load_campaign("c.toml", text, &fleet).unwrap();
    let c = Campaign::replay(fleet, spec, &journal).unwrap();
    assert_eq!(c.id(), "c1");
    assert_eq!(c.phase, Phase::Running);
    assert_eq!(c.nodes[0].state, NodeState::Done { back: Back::In });
    let resend = c.resume_commands();
    assert!(matches!(&resend[..], [Command::Update { step, .. }] if step == "c1/b/0/update"), "{resend:?}");
}

/// A node whose update failed and that never becomes healthy again is given up on
/// `ready_timeout` after it finished: it stays out, and the campaign stops holding the fleet.
#[test]
fn a_failed_node_that_never_heals_is_given_up_and_releases_the_fleet() {
    let mut c = campaign("nodes = [\"a\"]\nmax_retries_per_node = 0\nmax_failed_nodes = 1");
    c.handle(0, Event::Start { by: by() }).unwrap();
    c.handle(S, ok("a", "c1/a/0/drain")).unwrap();
    let fail = Event::StepFailed { node: "a".into(), step: "c1/a/0/update".into(), reason: "dpkg".into() };
    c.handle(2 * S, fail).unwrap();
    assert!(matches!(
        c.nodes[0].state,
        NodeState::Failed { back: Back::Checking { healthy_since: None }, .. }
    ));
    assert_eq!(c.phase, Phase::Completed);
    assert!(c.holds_fleet(), "a is still out and watched");
    c.handle(3 * S, Event::Health { node: "a".into(), healthy: false, version: None, detail: None }).unwrap();
    assert_eq!(c.next_deadline(), Some(2 * S + 5 * M));
    c.handle(2 * S + 5 * M, Event::Tick).unwrap();
    assert!(matches!(c.nodes[0].state, NodeState::Failed { back: Back::Out, .. }));
    assert!(!c.holds_fleet());
    assert!(c.out_of_service(0), "handed on as left out");
    assert_eq!(c.down(0), 1);
}

/// Before a reboot the node may report the version it still runs; the reboot is not taken for
/// a failed attempt, and verification after it needs the target.
#[test]
fn an_update_that_reboots_is_judged_on_the_version_after_the_reboot() {
    let mut c = campaign("");
    c.handle(0, Event::Start { by: by() }).unwrap();
    c.handle(S, ok("a", "c1/a/0/drain")).unwrap();
    let cmds = c
        .handle(
            2 * S,
            Event::StepOk {
                node: "a".into(),
                step: "c1/a/0/update".into(),
                reboot: true,
                boot_id: Some("b0".into()),
                version: Some("1".into()),
            },
        )
        .unwrap();
    assert!(matches!(&cmds[0], Command::WatchBoot { .. }), "{cmds:?}");
    c.handle(3 * S, Event::Booted { node: "a".into(), boot_id: "b1".into(), version: Some("1".into()) })
        .unwrap();
    c.handle(
        4 * S,
        Event::Health { node: "a".into(), healthy: true, version: Some("1".into()), detail: None },
    )
    .unwrap();
    assert!(matches!(c.nodes[0].state, NodeState::Verifying { healthy_since: None, .. }));
    c.handle(
        5 * S,
        Event::Health { node: "a".into(), healthy: true, version: Some("2".into()), detail: None },
    )
    .unwrap();
    assert!(matches!(c.nodes[0].state, NodeState::Verifying { healthy_since: Some(_), .. }));
}

/// A schema-1 journal holds no plan, so replay plans again: with the planner of the time (the
/// tightest service alone, waves' order), not today's, which starts x (in two chains of 2)
/// before y (in one chain of 3). Planned with today's rules, y's journaled drain would land on
/// a node still pending and the orchestrator would refuse to start.
#[test]
fn a_schema_one_journal_replays_with_the_planner_of_its_time() {
    let fleet_text = "name = \"f\"\nversions = [\"1\", \"2\"]\n\
        [[node]]\nname = \"x\"\nversion = \"1\"\n[[node]]\nname = \"y\"\nversion = \"1\"\n\
        [[node]]\nname = \"a\"\nversion = \"1\"\n[[node]]\nname = \"b\"\nversion = \"1\"\n\
        [[node]]\nname = \"c\"\nversion = \"1\"\n[[node]]\nname = \"d\"\nversion = \"1\"\n\
        [[service]]\nname = \"s1\"\nnodes = [\"x\", \"a\"]\nmax_unavailable = 1\n\
        [[service]]\nname = \"s2\"\nnodes = [\"x\", \"b\"]\nmax_unavailable = 1\n\
        [[service]]\nname = \"s3\"\nnodes = [\"y\", \"c\", \"d\"]\nmax_unavailable = 1\n";
    let fleet = Arc::new(load_fleet("f.toml", fleet_text).unwrap());
    let text = "name = \"c1\"\ntarget_version = \"2\"\nmax_parallel = 1\n";
    let spec = load_campaign("c.toml", text, &fleet).unwrap();
    // Today's planner starts x first.
    let today = baton_core::plan(&fleet, &spec).unwrap();
    assert_eq!(today.order().next().map(|n| fleet.node_name(n)), Some("x"));
    let journal: Vec<(u64, Event)> = [
        r#"{"event":"start","by":"op"}"#,
        r#"{"event":"step-ok","node":"y","step":"c1/y/0/drain","reboot":false,"boot_id":null,"version":null}"#,
    ]
    .iter()
    .enumerate()
    .map(|(i, l)| (i as u64 * S, baton_core::journal::decode(l).unwrap()))
    .collect();
    let c = Campaign::replay(fleet.clone(), spec, &journal).unwrap();
    assert!(matches!(c.nodes[1].state, NodeState::Updating { .. }), "{:?}", c.nodes[1].state);
    assert!(matches!(c.nodes[0].state, NodeState::Pending { .. }), "{:?}", c.nodes[0].state);
}

/// A journaled start order that is not the planned nodes, each once, is refused on replay.
#[test]
fn a_journaled_start_order_that_is_not_the_plan_is_refused() {
    let c = campaign("");
    let Event::Planned { id, mut plan } = c.planned_event() else { panic!("planned event") };
    assert!(!plan.start.is_empty(), "continuous journals its start order");
    plan.start.pop();
    let bad = Event::Planned { id, plan };
    let err = Campaign::begin(c.fleet.clone(), c.spec.clone(), Some(&bad)).unwrap_err();
    assert!(matches!(err, baton_core::campaign::ReplayError::BadStart), "{err:?}");
}

fn prechecks(cmds: &[Command]) -> Vec<String> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::Precheck { node, .. } => Some(node.clone()),
            _ => None,
        })
        .collect()
}

fn precheck_failed(node: &str) -> Event {
    Event::StepFailed {
        node: node.into(),
        step: format!("c1/{node}/0/precheck"),
        reason: "var-space: 1.2 GB free on /var, 10.0 GB needed".into(),
    }
}

/// A campaign with prechecks, as the orchestrator creates them.
fn prechecked(extra: &str) -> Campaign {
    campaign(extra).with_prechecks(true)
}

#[test]
fn a_node_is_drained_only_after_its_prechecks_pass_and_holds_its_place_meanwhile() {
    let mut c = prechecked("");
    let cmds = c.handle(0, Event::Start { by: by() }).unwrap();
    // web allows one down: a's precheck holds that place, so b and c wait.
    assert_eq!((prechecks(&cmds), drains(&cmds)), (vec!["a".to_string()], vec![]));
    assert_eq!(c.nodes[0].state, NodeState::Prechecking { attempt: 0 });
    assert_eq!(c.down(0), 1);
    assert!(!c.out_of_service(0), "a prechecking node is still in service");
    let cmds = c.handle(S, ok("a", "c1/a/0/precheck")).unwrap();
    assert_eq!(drains(&cmds), vec!["a"]);
    // Replaying gives the same, prechecks included.
    let mut journal = vec![(0, c.planned_event())];
    journal.push((0, Event::Start { by: by() }));
    journal.push((S, ok("a", "c1/a/0/precheck")));
    assert_eq!(Campaign::replay(c.fleet.clone(), c.spec.clone(), &journal).unwrap(), c);
}

#[test]
fn a_failed_precheck_skips_fails_or_halts_and_never_drains() {
    // skip: a is skipped, in service; b is prechecked next.
    let mut c = prechecked("on_precheck_fail = \"skip\"");
    c.handle(0, Event::Start { by: by() }).unwrap();
    let cmds = c.handle(S, precheck_failed("a")).unwrap();
    assert!(matches!(&c.nodes[0].state, NodeState::Skipped { reason } if reason.contains("10.0 GB needed")));
    // Its place went to b, whose prechecks now run.
    assert_eq!((&c.nodes[1].state, c.down(0)), (&NodeState::Prechecking { attempt: 0 }, 1));
    assert_eq!((prechecks(&cmds), drains(&cmds)), (vec!["b".to_string()], vec![]));
    assert_eq!(c.failed, 0);

    // fail: a is Failed but in service; with max_failed_nodes = 1 the campaign goes on.
    let mut c = prechecked("on_precheck_fail = \"fail\"\nmax_failed_nodes = 1");
    c.handle(0, Event::Start { by: by() }).unwrap();
    let cmds = c.handle(S, precheck_failed("a")).unwrap();
    assert_eq!(c.nodes[0].state.name(), "failed");
    assert_eq!(c.nodes[0].state.back(), Some(&Back::In));
    assert_eq!((c.failed, c.phase), (1, Phase::Running));
    assert_eq!(prechecks(&cmds), vec!["b"]);

    // halt: a is Failed and the campaign halts at once, although failures are allowed.
    let mut c = prechecked("on_precheck_fail = \"halt\"\nmax_failed_nodes = 5");
    c.handle(0, Event::Start { by: by() }).unwrap();
    let cmds = c.handle(S, precheck_failed("a")).unwrap();
    assert_eq!((c.failed, c.phase), (1, Phase::Halted));
    assert!(prechecks(&cmds).is_empty() && drains(&cmds).is_empty());
    assert_eq!(c.nodes[0].state.back(), Some(&Back::In));
    // Resuming accepts it and goes on with b.
    let cmds = c.handle(2 * S, Event::Resume { by: by() }).unwrap();
    assert_eq!(prechecks(&cmds), vec!["b"]);
}

#[test]
fn a_precheck_that_passes_after_a_pause_or_an_abort_drains_nothing() {
    // Paused meanwhile: a waits again, untouched, and is prechecked again after the resume.
    let mut c = prechecked("");
    c.handle(0, Event::Start { by: by() }).unwrap();
    c.handle(S, Event::Pause { by: by() }).unwrap();
    let cmds = c.handle(2 * S, ok("a", "c1/a/0/precheck")).unwrap();
    assert!(drains(&cmds).is_empty());
    assert_eq!(c.nodes[0].state, NodeState::Pending { out_of_service: false });
    assert_eq!((c.down(0), c.active()), (0, 0));
    let cmds = c.handle(3 * S, Event::Resume { by: by() }).unwrap();
    // Afresh, under a new step id (an agent answers a step id it has seen with its record).
    assert!(
        matches!(&cmds[..], [.., Command::Precheck { step, .. }] if step == "c1/a/1/precheck"),
        "{cmds:?}"
    );
    // Aborted meanwhile: a is skipped, and the campaign lets go of the fleet.
    let mut c = prechecked("");
    c.handle(0, Event::Start { by: by() }).unwrap();
    c.handle(S, Event::Abort { by: by() }).unwrap();
    assert!(c.holds_fleet());
    let cmds = c.handle(2 * S, ok("a", "c1/a/0/precheck")).unwrap();
    assert!(drains(&cmds).is_empty());
    assert!(matches!(&c.nodes[0].state, NodeState::Skipped { reason } if reason.contains("aborted")));
    assert!(!c.holds_fleet());
    // An agent that does not answer a precheck for reboot_timeout: the precheck failed.
    let mut c = prechecked("");
    c.handle(0, Event::Start { by: by() }).unwrap();
    c.handle(S, Event::Unreachable { node: "a".into() }).unwrap();
    let due = c.next_deadline().unwrap();
    assert_eq!(due, S + 10 * M);
    c.handle(due, Event::Tick).unwrap();
    assert!(matches!(&c.nodes[0].state, NodeState::Skipped { reason } if reason.contains("unreachable")));
}

#[test]
fn require_all_up_refuses_a_start_while_a_node_is_down_and_names_it() {
    let mut c = campaign("require_all_up = true");
    c.handle(0, Event::Observed { node: "c".into(), up: false, version: None }).unwrap();
    let before = c.clone();
    let e = c.handle(S, Event::Start { by: by() }).unwrap_err();
    assert!(matches!(&e, CampaignError::StartRefused(m) if m.contains(": c") && !m.contains("a,")), "{e}");
    assert_eq!(c, before);
    c.handle(2 * S, Event::Observed { node: "c".into(), up: true, version: None }).unwrap();
    c.handle(3 * S, Event::Start { by: by() }).unwrap();
    assert_eq!(c.phase, Phase::Running);
    // A start hook is journaled only before the start.
    let hook = Event::Hook { hook: "before_start".into(), ok: true, output: String::new() };
    assert!(matches!(c.handle(4 * S, hook), Err(CampaignError::NotAllowed { .. })));
}

fn holds_of(cmds: &[Command]) -> Vec<String> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::Hold { node, .. } => Some(node.clone()),
            _ => None,
        })
        .collect()
}

fn releases_of(cmds: &[Command]) -> Vec<String> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::Release { node, .. } => Some(node.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn auto_updaters_are_held_before_any_start_and_released_at_the_end() {
    let mut c = campaign("max_failed_nodes = 1").with_holds(true);
    let cmds = c.handle(0, Event::Start { by: by() }).unwrap();
    assert_eq!(holds_of(&cmds), vec!["a", "b", "c"]);
    assert!(drains(&cmds).is_empty(), "nothing starts before it is held");
    // b's agent fails its hold: tried again, and after the third failure b fails, still in
    // service; a is held and starts.
    for k in 0..3 {
        let step = format!("c1/b/h{k}/hold");
        let failed = Event::StepFailed { node: "b".into(), step, reason: "systemctl: no bus".into() };
        let cmds = c.handle(S, failed).unwrap();
        assert!(drains(&cmds).is_empty());
        assert_eq!(holds_of(&cmds).len(), usize::from(k < 2), "attempt {k}: {cmds:?}");
    }
    assert!(
        matches!(&c.nodes[1].state, NodeState::Failed { reason, back: Back::In } if reason.contains("cannot hold its auto-updaters"))
    );
    let cmds = c.handle(S, ok("a", "c1/a/h0/hold")).unwrap();
    assert_eq!(drains(&cmds), vec!["a"]);
    assert!(c.holds_fleet());
    // Aborted with a in flight: c (held meanwhile) is released at once, a once it is back; b's
    // failed holds may have done part of their work, so it is released too.
    c.handle(2 * S, ok("c", "c1/c/h0/hold")).unwrap();
    let cmds = c.handle(3 * S, Event::Abort { by: by() }).unwrap();
    let mut rel = releases_of(&cmds);
    rel.sort();
    assert_eq!(rel, vec!["b", "c"]);
    let cmds = walk(&mut c, "a", 4 * S);
    assert_eq!(releases_of(&cmds), vec!["a"]);
    assert!(c.holds_fleet(), "until every release is answered");
    c.handle(500 * S, ok("a", "c1/a/h1/release")).unwrap();
    c.handle(500 * S, ok("b", "c1/b/h3/release")).unwrap();
    // c's agent never answers: given up on after reboot_timeout, with a notice.
    let due = c.next_deadline().unwrap();
    let cmds = c.handle(due, Event::Tick).unwrap();
    assert!(cmds.iter().any(
        |x| matches!(x, Command::Notify { notice: Notice::HoldNotReleased { node, .. } } if node == "c")
    ));
    assert!(!c.holds_fleet());
}

#[test]
fn a_node_named_in_order_is_not_overtaken_while_its_hold_is_answered() {
    let mut c = campaign("order = [\"c\"]").with_holds(true);
    let cmds = c.handle(0, Event::Start { by: by() }).unwrap();
    let mut held = holds_of(&cmds);
    held.sort();
    assert_eq!(held, vec!["a", "b", "c"], "every node is held at once");
    // a and b answer first: they wait, c goes first as `order` says.
    for n in ["a", "b"] {
        let cmds = c.handle(S, ok(n, &format!("c1/{n}/h0/hold"))).unwrap();
        assert!(drains(&cmds).is_empty(), "{n} overtook c: {cmds:?}");
    }
    let cmds = c.handle(2 * S, ok("c", "c1/c/h0/hold")).unwrap();
    assert_eq!(drains(&cmds), vec!["c"]);
    // Journaled with the plan, so the replay keeps the order too.
    let planned = c.planned_event();
    assert!(matches!(&planned, Event::Planned { plan, .. } if plan.order_waits));
}

#[test]
fn an_ordered_node_whose_hold_fails_does_not_keep_the_others_waiting() {
    let mut c = campaign("order = [\"c\"]\nmax_failed_nodes = 1").with_holds(true);
    c.handle(0, Event::Start { by: by() }).unwrap();
    c.handle(S, ok("a", "c1/a/h0/hold")).unwrap();
    let mut started = Vec::new();
    for k in 0..3 {
        let step = format!("c1/c/h{k}/hold");
        let failed = Event::StepFailed { node: "c".into(), step, reason: "no bus".into() };
        started.extend(drains(&c.handle(2 * S, failed).unwrap()));
    }
    assert_eq!(started, vec!["a"], "a starts once c has failed");
}

#[test]
fn an_ordered_node_whose_agent_never_answers_its_hold_keeps_no_one_waiting() {
    let mut c = campaign("order = [\"c\"]\nmax_failed_nodes = 1").with_holds(true);
    c.handle(0, Event::Start { by: by() }).unwrap();
    assert!(drains(&c.handle(S, ok("a", "c1/a/h0/hold")).unwrap()).is_empty(), "a waits for c's hold");
    // c's hold is not answered within reboot_timeout: it is sent again, and a goes meanwhile.
    let due = c.next_deadline().unwrap();
    let cmds = c.handle(due, Event::Tick).unwrap();
    assert!(holds_of(&cmds).contains(&"c".to_string()), "{cmds:?}");
    assert_eq!(drains(&cmds), vec!["a"]);
}

#[test]
fn a_journal_from_before_order_waits_replays_as_it_ran() {
    // Journaled without `order_waits`: a was drained before c's hold was answered, as then.
    let mut c = campaign("order = [\"c\"]").with_holds(true);
    let Event::Planned { id, mut plan } = c.planned_event() else { panic!() };
    plan.order_waits = false;
    let journal = vec![
        (0, Event::Planned { id: id.clone(), plan }),
        (0, Event::Start { by: by() }),
        (S, ok("a", "c1/a/h0/hold")),
        (2 * S, ok("a", "c1/a/0/drain")),
    ];
    let old = Campaign::replay(c.fleet.clone(), c.spec.clone(), &journal).unwrap();
    assert!(matches!(old.nodes[0].state, NodeState::Updating { .. }), "{:?}", old.nodes[0].state);
    // With it, the same answers leave a waiting (its drain report is stale).
    c.handle(0, Event::Start { by: by() }).unwrap();
    c.handle(S, ok("a", "c1/a/h0/hold")).unwrap();
    assert!(matches!(c.nodes[0].state, NodeState::Pending { .. }), "{:?}", c.nodes[0].state);
}

/// Issue 13, scale-set policies: `select` by domains and labels, `walk = "fault_domain"`,
/// `max_failed_nodes` and `max_unhealthy` as percentages of the targeted nodes (rounded down).
#[test]
fn select_walk_and_percentages_of_the_targeted_nodes() {
    let mut text = String::from("name = \"s\"\nversions = [\"1\", \"2\"]\nfunctional_level = \"1\"\n");
    for i in 0..12 {
        let role = if i % 4 == 0 { "db" } else { "web" };
        text += &format!(
            "[[node]]\nname = \"n{i:02}\"\nversion = \"1\"\nupdate_domain = {}\nfault_domain = {}\nlabels = {{ role = \"{role}\" }}\n",
            i % 3,
            i % 2
        );
    }
    let fleet = load_fleet("f.toml", &text).unwrap();
    let base = "name = \"c\"\ntarget_version = \"2\"\nmax_parallel = 2\n";
    // Update domains 0 and 1, web only: 6 of the 8 nodes there (n00, n04, n08 are db... n00 is
    // UD 0 and db, n04 is UD 1 and db); plus n11 named in `nodes`.
    let spec = load_campaign(
        "c.toml",
        &format!("{base}nodes = [\"n11\"]\nselect = {{ update_domain = [0, 1], labels = {{ role = \"web\" }} }}\nmax_failed_nodes = \"25%\"\nmax_unhealthy = \"10%\"\n"),
        &fleet,
    )
    .unwrap();
    let mut names: Vec<&str> = spec.nodes.as_ref().unwrap().iter().map(|&n| fleet.node_name(n)).collect();
    names.sort();
    assert_eq!(names, vec!["n01", "n03", "n06", "n07", "n09", "n10", "n11"]);
    // 25% of 7 is 1.75, 10% is 0.7: rounded down.
    assert_eq!((spec.max_failed_nodes, spec.max_unhealthy), (1, Some(0)));
    // Domain-walk over fault domains: every wave within one fault domain, all of one before any
    // of the other.
    let spec = load_campaign(
        "c.toml",
        &format!("{base}strategy = \"domain-walk\"\nwalk = \"fault_domain\"\n"),
        &fleet,
    )
    .unwrap();
    let plan = baton_core::plan(&fleet, &spec).unwrap();
    let fds: Vec<u32> = plan
        .waves
        .iter()
        .map(|w| {
            let d: std::collections::BTreeSet<u32> =
                w.iter().map(|&n| fleet.nodes[n as usize].fault_domain.unwrap()).collect();
            assert_eq!(d.len(), 1, "a wave spans fault domains: {w:?}");
            *d.iter().next().unwrap()
        })
        .collect();
    assert!(fds.windows(2).all(|p| p[0] <= p[1]), "fault domains walked out of order: {fds:?}");
    assert_eq!(plan.waves.len(), 6, "{:?}", plan.waves);
}

#[test]
fn no_node_starts_while_more_targeted_nodes_than_max_unhealthy_are_unhealthy() {
    let text = "name = \"t\"\nversions = [\"1\", \"2\"]\nfunctional_level = \"1\"\n\
                [[node]]\nname = \"a\"\nversion = \"1\"\n[[node]]\nname = \"b\"\nversion = \"1\"\n\
                [[node]]\nname = \"d\"\nversion = \"1\"\n\
                [[service]]\nname = \"web\"\nnodes = [\"a\", \"b\", \"d\"]\nmax_unavailable = 2\n";
    let fleet = Arc::new(load_fleet("f.toml", text).unwrap());
    let campaign = |extra: &str| {
        let spec =
            load_campaign("c.toml", &format!("name = \"c1\"\ntarget_version = \"2\"\n{extra}"), &fleet)
                .unwrap();
        Campaign::new("c1", fleet.clone(), spec).unwrap().with_prechecks(false).with_holds(false)
    };
    // d is seen down: web has room for a (2 may be down), but max_unhealthy 0 keeps it waiting.
    let mut c = campaign("max_unhealthy = 0\n");
    c.handle(0, Event::Observed { node: "d".into(), up: false, version: None }).unwrap();
    assert!(drains(&c.handle(S, Event::Start { by: by() }).unwrap()).is_empty());
    assert_eq!(c.unhealthy(), 1);
    // Back up: a starts.
    let cmds = c.handle(2 * S, Event::Observed { node: "d".into(), up: true, version: None }).unwrap();
    assert_eq!(drains(&cmds), vec!["a"]);
    // Without the key, a starts at once, d down or not.
    let mut c = campaign("");
    c.handle(0, Event::Observed { node: "d".into(), up: false, version: None }).unwrap();
    assert_eq!(drains(&c.handle(S, Event::Start { by: by() }).unwrap()), vec!["a"]);
}

#[test]
fn an_operator_unfences_a_fenced_node_and_it_is_not_fenced_again_at_that_version() {
    let mut c = campaign("");
    c.handle(0, Event::Start { by: by() }).unwrap();
    walk(&mut c, "a", 0);
    walk(&mut c, "b", 100 * S);
    walk(&mut c, "c", 200 * S);
    c.handle(300 * S, Event::Commit { by: by() }).unwrap();
    let unfence = |c: &mut Campaign, t| c.handle(t, Event::Unfence { node: "b".into(), by: by() });
    assert_eq!(unfence(&mut c, 301 * S), Err(CampaignError::NotFenced("b".into())));
    c.handle(302 * S, Event::Observed { node: "b".into(), up: true, version: Some("1".into()) }).unwrap();
    assert!(c.is_fenced(1) && c.nodes[1].observed_down);
    let cmds = unfence(&mut c, 303 * S).unwrap();
    assert!(
        matches!(&cmds[..], [Command::Unfence { node, step }] if node == "b" && step == "c1/b/u1/unfence"),
        "{cmds:?}"
    );
    assert!(!c.is_fenced(1) && !c.nodes[1].observed_down);
    // Seen down and up again at 1: left in.
    c.handle(304 * S, Event::Observed { node: "b".into(), up: false, version: None }).unwrap();
    let cmds =
        c.handle(305 * S, Event::Observed { node: "b".into(), up: true, version: Some("1".into()) }).unwrap();
    assert!(cmds.is_empty() && !c.is_fenced(1), "{cmds:?}");
}

#[test]
fn a_rollback_goes_no_lower_than_the_committed_level() {
    // d was fenced at 0 under level 1; this campaign takes everyone to 2, then rolls back.
    let text = "name = \"t\"\nversions = [\"0\", \"1\", \"2\"]\nfunctional_level = \"1\"\n\
                [[node]]\nname = \"a\"\nversion = \"1\"\n[[node]]\nname = \"d\"\nversion = \"0\"\n";
    let fleet = Arc::new(load_fleet("f.toml", text).unwrap());
    let spec =
        load_campaign("c.toml", "name = \"c1\"\ntarget_version = \"2\"\nmax_parallel = 2\n", &fleet).unwrap();
    let mut c = Campaign::new("c1", fleet, spec).unwrap().with_prechecks(false).with_holds(false);
    let cmds = c.handle(0, Event::Start { by: by() }).unwrap();
    assert_eq!(drains(&cmds).len(), 2);
    for n in ["a", "d"] {
        c.handle(S, ok(n, &format!("c1/{n}/0/drain"))).unwrap();
        c.handle(2 * S, upd(n, &format!("c1/{n}/0/update"))).unwrap();
    }
    c.handle(3 * S, Event::Pause { by: by() }).unwrap();
    c.handle(4 * S, Event::Rollback { by: by() }).unwrap();
    for n in ["a", "d"] {
        c.handle(
            5 * S,
            Event::Health { node: n.into(), healthy: true, version: Some("2".into()), detail: None },
        )
        .unwrap();
    }
    let due = c.next_deadline().unwrap();
    let cmds = c.handle(due, Event::Tick).unwrap();
    for n in ["a", "d"] {
        if let Some(Command::Restore { step, .. }) =
            cmds.iter().find(|x| matches!(x, Command::Restore { node, .. } if node == n))
        {
            c.handle(due + S, ok(n, step)).unwrap();
        }
    }
    let mut all = Vec::new();
    for n in ["a", "d"] {
        all.extend(c.handle(due + 3 * S, ok(n, &format!("c1/{n}/rb0/drain"))).unwrap());
    }
    let to: Vec<(String, String)> = all
        .iter()
        .filter_map(|x| match x {
            Command::Update { node, version, .. } => Some((node.clone(), version.clone())),
            _ => None,
        })
        .collect();
    assert!(to.contains(&("a".into(), "1".into())), "{to:?}");
    assert!(to.contains(&("d".into(), "1".into())), "d goes back to the level, not to 0: {to:?}");
}

#[test]
fn a_node_handed_over_out_of_service_starts_though_unhealthy_nodes_hold_back_the_others() {
    let text = "name = \"t\"\nversions = [\"1\", \"2\"]\nfunctional_level = \"1\"\n\
                [[node]]\nname = \"a\"\nversion = \"1\"\n[[node]]\nname = \"b\"\nversion = \"1\"\n\
                [[node]]\nname = \"d\"\nversion = \"1\"\n\
                [[service]]\nname = \"web\"\nnodes = [\"a\", \"b\", \"d\"]\nmax_unavailable = 2\n";
    let fleet = Arc::new(load_fleet("f.toml", text).unwrap());
    let spec = load_campaign(
        "c.toml",
        "name = \"c1\"\ntarget_version = \"2\"\nmax_parallel = 3\nmax_unhealthy = 0\n",
        &fleet,
    )
    .unwrap();
    // d was fenced by the campaign before (handed over out of service) and is seen down (its
    // checks fail while its services are stopped): it is the one unhealthy node, and it starts.
    let mut c = Campaign::create("c1", fleet, spec, &[2]).unwrap().with_prechecks(false).with_holds(false);
    c.handle(0, Event::Observed { node: "d".into(), up: false, version: None }).unwrap();
    assert_eq!(c.unhealthy(), 1);
    let cmds = c.handle(S, Event::Start { by: by() }).unwrap();
    assert_eq!(drains(&cmds), vec!["d"], "only d: a waits on max_unhealthy");
}

fn lb_campaign() -> Campaign {
    let text = fleet3().replace(
        "max_unavailable = 1\n",
        "max_unavailable = 1\nhaproxy = { socket = \"/run/haproxy.sock\", backend = \"web\" }\n",
    );
    let fleet = load_fleet("f.toml", &text).unwrap();
    let spec = load_campaign(
        "c.toml",
        "name = \"c1\"\ntarget_version = \"2\"\nmax_parallel = 1\nhealth_wait = \"10s\"\nhealth_stable = \"1m\"\nready_timeout = \"5m\"\n",
        &fleet,
    )
    .unwrap();
    Campaign::new("c1", Arc::new(fleet), spec).unwrap().with_prechecks(false).with_holds(false)
}

fn names(cmds: &[Command]) -> Vec<String> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::LbOut { node, .. } => Some(format!("lb-out {node}")),
            Command::Drain { node, .. } => Some(format!("drain {node}")),
            Command::Update { node, .. } => Some(format!("update {node}")),
            Command::Restore { node, .. } => Some(format!("restore {node}")),
            Command::LbIn { node, .. } => Some(format!("lb-in {node}")),
            _ => None,
        })
        .collect()
}

/// Issue 13: the load balancers' steps are the core's: out of them before the drain stops the
/// node's services, back into them only after its restore (services started, healthy for
/// health_stable), and a node restored while seen down waits to be seen up.
#[test]
fn load_balancer_steps_are_ordered_by_the_core() {
    let mut c = lb_campaign();
    assert_eq!(names(&c.handle(0, Event::Start { by: by() }).unwrap()), ["lb-out a"]);
    assert!(c.nodes[0].state.is_out(), "counted out from the moment it leaves the load balancer");
    assert_eq!(names(&c.handle(S, ok("a", "c1/a/0/lb-out")).unwrap()), ["drain a"]);
    assert_eq!(names(&c.handle(2 * S, ok("a", "c1/a/0/drain")).unwrap()), ["update a"]);
    c.handle(3 * S, upd("a", "c1/a/0/update")).unwrap();
    let healthy = |n: &str| Event::Health { node: n.into(), healthy: true, version: None, detail: None };
    c.handle(13 * S, healthy("a")).unwrap();
    assert_eq!(names(&c.handle(13 * S + M, Event::Tick).unwrap()), ["restore a"]);
    // Seen down as its restore ends: not back into the load balancer until seen up.
    c.handle(14 * S + M, Event::Observed { node: "a".into(), up: false, version: None }).unwrap();
    assert!(names(&c.handle(15 * S + M, ok("a", "c1/a/0/restore")).unwrap()).is_empty());
    assert!(c.nodes[0].state.is_out());
    let back = c.handle(20 * S + M, Event::Observed { node: "a".into(), up: true, version: None }).unwrap();
    assert_eq!(names(&back), ["lb-in a"]);
    assert!(c.nodes[0].state.is_out(), "out until the load balancer has it back");
    // In service once back in the load balancer; only then does b start.
    assert_eq!(names(&c.handle(21 * S + M, ok("a", "c1/a/0/lb-in")).unwrap()), ["lb-out b"]);
    assert!(matches!(c.nodes[0].state, NodeState::Done { back: Back::In }));

    // A load balancer that refuses: b fails before anything stopped, and is put back (restore,
    // then the load balancer) once healthy for health_stable.
    let failed = c
        .handle(
            22 * S + M,
            Event::StepFailed {
                node: "b".into(),
                step: "c1/b/0/lb-out".into(),
                reason: "socket refused".into(),
            },
        )
        .unwrap();
    assert!(!names(&failed).contains(&"drain b".to_string()));
    assert!(
        matches!(&c.nodes[1].state, NodeState::Failed { reason, .. } if reason.contains("load balancer: socket refused"))
    );
    c.handle(23 * S + M, healthy("b")).unwrap();
    assert_eq!(names(&c.handle(23 * S + 2 * M, Event::Tick).unwrap()), ["restore b"]);
    assert_eq!(names(&c.handle(24 * S + 2 * M, ok("b", "c1/b/0/restore")).unwrap()), ["lb-in b"]);
    c.handle(25 * S + 2 * M, ok("b", "c1/b/0/lb-in")).unwrap();
    assert!(matches!(c.nodes[1].state, NodeState::Failed { back: Back::In, .. }));
}

/// A campaign journaled before the core ordered the load balancers replays as it ran: its
/// drain and restore steps told them (the driver did), and no load balancer step is sent.
#[test]
fn a_journal_from_before_load_balancer_steps_replays_as_it_ran() {
    let c = lb_campaign();
    let Event::Planned { id, mut plan } = c.planned_event() else { panic!() };
    assert!(plan.lb_steps);
    plan.lb_steps = false;
    let journal = vec![(0, Event::Planned { id, plan }), (0, Event::Start { by: by() })];
    let old = Campaign::replay(c.fleet.clone(), c.spec.clone(), &journal).unwrap();
    assert!(!old.balancer_steps());
    assert_eq!(names(&old.resume_commands()), ["drain a"]);
}
