//! The after-commit pass (`after_commit_action`): once a campaign is committed, the action runs
//! on every node of the fleet under the same rules, as a pass of its own, and the campaign ends
//! committed whatever happens to that pass.

use baton_core::campaign::{Back, Command, Event, Notice, Pass, Phase};
use baton_core::{load_campaign, load_fleet, Campaign, CampaignError, NodeState};
use std::sync::Arc;

const S: u64 = 1000;
const M: u64 = 60 * S;

/// Three nodes behind one service that allows one down; `c` is at the target already, so the
/// forward pass skips it, but the after-commit pass takes it too.
const FLEET: &str = r#"
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
version = "2"
[[service]]
name = "web"
nodes = ["a", "b", "c"]
max_unavailable = 1
"#;

fn campaign_in(fleet: &str, extra: &str) -> Result<Campaign, baton_core::plan::Infeasible> {
    let fleet = load_fleet("f.toml", fleet).unwrap();
    let text = format!(
        "name = \"c1\"\ntarget_version = \"2\"\nmax_parallel = 3\nreboot_timeout = \"10m\"\nhealth_wait = \"10s\"\n\
         health_stable = \"1m\"\nready_timeout = \"5m\"\nafter_commit_action = \"config-version\"\n{extra}"
    );
    let spec = load_campaign("c.toml", &text, &fleet).unwrap();
    Ok(Campaign::new("c1", Arc::new(fleet), spec)?.with_prechecks(false).with_holds(false))
}

fn by() -> String {
    "op".into()
}

fn ok(node: &str, step: &str) -> Event {
    Event::StepOk { node: node.into(), step: step.into(), reboot: false, boot_id: None, version: None }
}

fn drains(cmds: &[Command]) -> Vec<(String, String)> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::Drain { node, step, .. } => Some((node.clone(), step.clone())),
            _ => None,
        })
        .collect()
}

/// Journals every event it hands to the campaign, so that the test can replay it.
struct Run {
    c: Campaign,
    journal: Vec<(u64, Event)>,
}

impl Run {
    fn new(c: Campaign) -> Run {
        let journal = vec![(0, c.planned_event())];
        Run { c, journal }
    }
    fn on(&mut self, t: u64, e: Event) -> Result<Vec<Command>, CampaignError> {
        let r = self.c.handle(t, e.clone());
        if r.is_ok() {
            self.journal.push((t, e));
        }
        r
    }
    /// Drives node `n` of pass `pass` ("" forward, "ac" after commit) from Draining to Done,
    /// starting at `t`; the update asks no reboot. Returns the commands of the last event and
    /// the Update command the node was sent.
    fn walk(&mut self, n: &str, pass: &str, t: u64) -> (Vec<Command>, Command) {
        let cmds = self.on(t, ok(n, &format!("c1/{n}/{pass}0/drain"))).unwrap();
        let update = cmds
            .iter()
            .find(|c| matches!(c, Command::Update { node, .. } if node == n))
            .cloned()
            .expect("the drain is followed by the node's update");
        self.on(
            t + S,
            Event::StepOk {
                node: n.into(),
                step: format!("c1/{n}/{pass}0/update"),
                reboot: false,
                boot_id: None,
                version: Some("2".into()),
            },
        )
        .unwrap();
        self.on(t + 2 * S, Event::Health { node: n.into(), healthy: true, version: None, detail: None })
            .unwrap();
        let due = self.c.next_deadline().unwrap();
        assert_eq!(due, t + S + 10 * S + M, "healthy from health_wait for health_stable");
        let cmds = self.on(due, Event::Tick).unwrap();
        let step = format!("c1/{n}/{pass}0/restore");
        assert!(cmds.iter().any(|x| matches!(x, Command::Restore { step: s, .. } if *s == step)));
        (self.on(due + S, ok(n, &step)).unwrap(), update)
    }
}

fn completed() -> Run {
    let mut run = Run::new(campaign_in(FLEET, "").unwrap());
    let cmds = run.on(0, Event::Start { by: by() }).unwrap();
    assert_eq!(drains(&cmds), vec![("a".to_string(), "c1/a/0/drain".to_string())]);
    let (_, update) = run.walk("a", "", 0);
    assert!(matches!(update, Command::Update { action, .. } if action == "upgrade"));
    run.walk("b", "", 100 * S);
    assert_eq!(run.c.phase, Phase::Completed);
    assert!(matches!(run.c.nodes[2].state, NodeState::Skipped { .. }), "c was at the target already");
    run
}

#[test]
fn the_commit_runs_the_after_commit_action_on_every_node_then_ends_committed() {
    let mut run = completed();
    let cmds = run.on(300 * S, Event::Commit { by: by() }).unwrap();
    // The level is raised at once: the pass runs committed.
    assert_eq!(run.c.level.as_deref(), Some("2"));
    assert_eq!(run.c.phase, Phase::AfterCommit);
    assert_eq!(run.c.pass, Pass::AfterCommit);
    assert!(cmds.iter().any(|x| matches!(
        x,
        Command::Notify {
            notice: Notice::Phase { from: Phase::Completed, to: Phase::AfterCommit, by: Some(_) }
        }
    )));
    // Every node is queued again, the one the forward pass skipped too; one at a time (web).
    assert!(run.c.nodes.iter().all(|r| r.pass == Pass::AfterCommit));
    let first = drains(&cmds);
    assert_eq!(first.len(), 1, "web allows one down: {first:?}");
    assert!(first[0].1.starts_with(&format!("c1/{}/ac0/", first[0].0)), "a step id of its own: {first:?}");
    // Nothing undoes the commit.
    assert_eq!(
        run.on(301 * S, Event::Rollback { by: by() }),
        Err(CampaignError::NotAllowed { action: "roll back", phase: Phase::Committed })
    );
    assert_eq!(
        run.on(301 * S, Event::Commit { by: by() }),
        Err(CampaignError::NotAllowed { action: "commit", phase: Phase::AfterCommit })
    );
    let mut done = Vec::new();
    let mut next = first[0].0.clone();
    let mut t = 400 * S;
    loop {
        let (cmds, update) = run.walk(&next, "ac", t);
        // The after-commit action, at the level: the node's version is not changed.
        assert!(
            matches!(&update, Command::Update { action, version, .. } if action == "config-version" && version == "2"),
            "{update:?}"
        );
        done.push(next.clone());
        t += 100 * S;
        match drains(&cmds).first() {
            Some((n, _)) => next = n.clone(),
            None => break,
        }
    }
    done.sort();
    assert_eq!(done, vec!["a", "b", "c"], "every node of the fleet, once");
    assert_eq!(run.c.phase, Phase::Committed);
    assert!(run.c.nodes.iter().all(|r| r.state == NodeState::Done { back: Back::In }));
    assert!(!run.c.holds_fleet());
    // The journal replays to the same state.
    let again = Campaign::replay(run.c.fleet.clone(), run.c.spec.clone(), &run.journal).unwrap();
    assert_eq!(again.nodes, run.c.nodes);
    assert_eq!(again.phase, Phase::Committed);
    assert_eq!(again.level, run.c.level);
    // Committed, its fencing holds as before: a node seen back at 1 is fenced.
    let cmds = run.on(t, Event::Observed { node: "b".into(), up: true, version: Some("1".into()) }).unwrap();
    assert!(matches!(&cmds[0], Command::Fence { node, .. } if node == "b"));
}

#[test]
fn an_after_commit_pass_pauses_halts_and_aborts_but_stays_committed() {
    let mut run = completed();
    let cmds = run.on(300 * S, Event::Commit { by: by() }).unwrap();
    let (first, _) = drains(&cmds)[0].clone();
    // Paused: nothing new starts; it resumes into its own pass.
    run.on(301 * S, Event::Pause { by: by() }).unwrap();
    assert_eq!(run.c.phase, Phase::Paused);
    assert_eq!(
        run.on(302 * S, Event::Rollback { by: by() }),
        Err(CampaignError::NotAllowed { action: "roll back", phase: Phase::Committed })
    );
    let (cmds, _) = run.walk(&first, "ac", 400 * S);
    assert!(drains(&cmds).is_empty(), "paused: no new start");
    let cmds = run.on(500 * S, Event::Resume { by: by() }).unwrap();
    assert_eq!(run.c.phase, Phase::AfterCommit);
    let (second, _) = drains(&cmds)[0].clone();
    // The action fails twice (max_retries_per_node 1): the node fails, more than
    // max_failed_nodes 0, so the pass halts.
    run.on(501 * S, ok(&second, &format!("c1/{second}/ac0/drain"))).unwrap();
    for attempt in 0..2 {
        run.on(
            502 * S + attempt * S,
            Event::StepFailed {
                node: second.clone(),
                step: format!("c1/{second}/ac{attempt}/update"),
                reason: "exit 1".into(),
            },
        )
        .unwrap();
    }
    assert!(matches!(
        run.c.nodes[run.c.fleet.node_id(&second).unwrap() as usize].state,
        NodeState::Failed { .. }
    ));
    assert_eq!(run.c.phase, Phase::Halted);
    // Aborted: the node not reached is skipped, and the campaign ends committed (the level
    // stays raised; an abort cannot lower it).
    let cmds = run.on(510 * S, Event::Abort { by: by() }).unwrap();
    assert_eq!(run.c.phase, Phase::Committed);
    assert_eq!(run.c.level.as_deref(), Some("2"));
    assert!(cmds.iter().any(|x| matches!(
        x,
        Command::Notify { notice: Notice::Phase { from: Phase::Halted, to: Phase::Committed, by: Some(_) } }
    )));
    let skipped: Vec<_> = run.c.nodes.iter().filter(|r| matches!(&r.state, NodeState::Skipped { reason } if reason.contains("after-commit pass aborted"))).collect();
    assert_eq!(skipped.len(), 1);
    let again = Campaign::replay(run.c.fleet.clone(), run.c.spec.clone(), &run.journal).unwrap();
    assert_eq!(again.nodes, run.c.nodes);
    assert_eq!(again.phase, Phase::Committed);
}

#[test]
fn a_campaign_whose_after_commit_pass_could_never_run_is_refused_before_it_starts() {
    // `c` is at the target, so the forward pass never takes `db` down; its after-commit pass
    // would have to, and `db` allows none down.
    let fleet = format!("{FLEET}[[service]]\nname = \"db\"\nnodes = [\"c\"]\nmax_unavailable = 0\n");
    let Err(err) = campaign_in(&fleet, "") else { panic!("refused") };
    assert!(err.message.contains("after_commit_action config-version on every node"), "{}", err.message);
    assert!(err.message.contains("db"), "{}", err.message);
}

#[test]
fn a_campaign_without_an_after_commit_action_ends_at_its_commit() {
    let fleet = load_fleet("f.toml", FLEET).unwrap();
    let spec = load_campaign("c.toml", "name = \"c1\"\ntarget_version = \"2\"\n", &fleet).unwrap();
    let c = Campaign::new("c1", Arc::new(fleet), spec).unwrap();
    let Event::Planned { plan, .. } = c.planned_event() else { panic!("first event") };
    assert!(plan.after_commit.is_none());
    // And the journaled plan of one that has it names every node.
    let run = completed();
    let Event::Planned { plan, .. } = &run.journal[0].1 else { panic!("first event") };
    let a = plan.after_commit.as_ref().expect("planned with the campaign");
    assert_eq!(a.action, "config-version");
    let mut every: Vec<&String> = a.waves.iter().flatten().collect();
    every.sort();
    assert_eq!(every, ["a", "b", "c"]);
}

#[test]
fn a_node_seen_back_older_than_the_level_during_the_pass_is_fenced_and_not_taken_through_it() {
    let mut run = completed();
    let cmds = run.on(300 * S, Event::Commit { by: by() }).unwrap();
    let (first, _) = drains(&cmds)[0].clone();
    // Another node, queued for the pass, comes back at 1 (an old image) while the pass runs.
    let old = ["a", "b", "c"].into_iter().find(|n| *n != first).unwrap();
    let cmds =
        run.on(301 * S, Event::Observed { node: old.into(), up: true, version: Some("1".into()) }).unwrap();
    assert!(
        matches!(&cmds[..], [Command::Fence { node, step, .. }, ..] if node == old && step.ends_with("/f0/fence")),
        "{cmds:?}"
    );
    let i = run.c.fleet.node_id(old).unwrap() as usize;
    assert!(
        matches!(&run.c.nodes[i].state, NodeState::Skipped { reason } if reason.starts_with("fenced: node is at 1"))
    );
    assert!(run.c.is_fenced(i as u32));
    // The node in flight is not fenced (its verification judges it). The fenced node counts as
    // down: web allows one, so the last node waits for it.
    let (cmds, _) = run.walk(&first, "ac", 400 * S);
    assert!(drains(&cmds).is_empty(), "web is at its allowance with the fenced node out: {cmds:?}");
    assert_eq!(run.c.phase, Phase::AfterCommit);
    // An operator lets it back in as it is: the pass goes on without it and ends committed.
    let cmds = run.on(500 * S, Event::Unfence { node: old.into(), by: by() }).unwrap();
    assert!(matches!(&cmds[0], Command::Unfence { node, .. } if node == old), "{cmds:?}");
    let last = drains(&cmds);
    assert_eq!(last.len(), 1, "{cmds:?}");
    run.walk(&last[0].0, "ac", 600 * S);
    assert_eq!(run.c.phase, Phase::Committed);
    assert!(matches!(&run.c.nodes[i].state, NodeState::Skipped { .. }));
    assert!(!run.c.is_fenced(i as u32));
    assert!(!run.c.holds_fleet());
    let again = Campaign::replay(run.c.fleet.clone(), run.c.spec.clone(), &run.journal).unwrap();
    assert_eq!(again.nodes, run.c.nodes);
}
