//! Failback (issue 13): after a rolling update, each workload is back on its preferred node.
//! Before it, the hosts drained first ended empty and the last ones crowded.

use baton_core::{load_campaign, load_fleet, Campaign};
use baton_sim::{Sim, SimOptions};
use std::collections::BTreeMap;
use std::sync::Arc;

fn example(path: &str) -> String {
    std::fs::read_to_string(format!("{}/../../examples/hyperv-cluster/{path}", env!("CARGO_MANIFEST_DIR")))
        .expect("example file")
}

/// What each host holds at the end, by where the core placed every workload.
fn load(c: &Campaign) -> BTreeMap<String, u64> {
    let mut used = BTreeMap::new();
    for (w, wl) in c.fleet.workloads.iter().enumerate() {
        *used.entry(c.fleet.node_name(c.placement.at[w]).to_string()).or_default() += wl.demand;
    }
    used
}

#[test]
fn every_vm_of_the_hyperv_example_ends_on_its_own_host() {
    let fleet = Arc::new(load_fleet("fleet.toml", &example("fleet.toml")).expect("fleet"));
    let spec = load_campaign("campaign.toml", &example("campaign.toml"), &fleet).expect("campaign");
    let before = load(&Campaign::new("x", fleet.clone(), spec.clone()).expect("plans"));
    let campaign = Campaign::new("failback", fleet.clone(), spec).expect("plans");
    let mut sim = Sim::new(campaign, SimOptions { fail_rate: 0.0, ..SimOptions::default() });
    sim.push(sim.now, baton_core::campaign::Event::Start { by: "test".into() });
    sim.run_to_end();
    assert!(sim.observer.violations.is_empty(), "{:?}", sim.observer.violations);
    assert_eq!(sim.campaign.phase, baton_core::campaign::Phase::Completed);
    // Every workload where it started (its preferred node by default), nothing said displaced,
    // and the hosts hold what they held before.
    for (w, wl) in fleet.workloads.iter().enumerate() {
        assert_eq!(sim.campaign.placement.at[w], wl.node, "{} not back on its host", wl.name);
        assert_eq!(sim.observer.workload_at(w), wl.node, "{} was not moved back by a step", wl.name);
    }
    assert!(sim.campaign.displaced().is_empty(), "{:?}", sim.campaign.displaced());
    assert_eq!(load(&sim.campaign), before);
    // The moves back rode on restore steps: as many as the drains moved away (the pinned GPU
    // VM moved neither way).
    let (away, back) = baton_sim::moves_sent(&sim.commands);
    assert_eq!(away, fleet.workloads.len() - 1);
    assert_eq!(back, away);
}

/// A workload whose `preferred` names another node goes there once that node is back in
/// service (the property test covers one that cannot fit there).
#[test]
fn a_named_preferred_node_is_where_the_workload_ends_or_it_says_why() {
    let mut toml = example("fleet.toml");
    // app02 (24, on hv3) prefers hv1.
    toml = toml.replace(
        "name = \"app02\"\nnode = \"hv3\"\ndemand = 24\nmovable = \"live\"",
        "name = \"app02\"\nnode = \"hv3\"\ndemand = 24\nmovable = \"live\"\npreferred = \"hv1\"",
    );
    let fleet = Arc::new(load_fleet("fleet.toml", &toml).expect("fleet"));
    let spec = load_campaign("campaign.toml", &example("campaign.toml"), &fleet).expect("campaign");
    let campaign = Campaign::new("preferred", fleet.clone(), spec).expect("plans");
    let mut sim = Sim::new(campaign, SimOptions { fail_rate: 0.0, ..SimOptions::default() });
    sim.push(sim.now, baton_core::campaign::Event::Start { by: "test".into() });
    sim.run_to_end();
    assert!(sim.observer.violations.is_empty(), "{:?}", sim.observer.violations);
    let app02 = fleet.workloads.iter().position(|w| w.name == "app02").expect("app02");
    let hv1 = fleet.node_id("hv1").expect("hv1");
    // hv1 holds sql01 (24) and web01 (16): app02's 24 fits in its 64.
    assert_eq!(sim.campaign.placement.at[app02], hv1);
    assert_eq!(sim.observer.workload_at(app02), hv1);
    assert!(sim.campaign.displaced().is_empty(), "{:?}", sim.campaign.displaced());
}

#[test]
fn a_preferred_node_that_is_not_in_the_fleet_is_refused_with_where() {
    let toml = example("fleet.toml")
        .replace("name = \"dc01\"\nnode = \"hv3\"", "name = \"dc01\"\nnode = \"hv3\"\npreferred = \"hv9\"");
    let e = load_fleet("fleet.toml", &toml).expect_err("refused").to_string();
    assert!(e.contains("dc01 prefers hv9, which is not a node of this fleet"), "{e}");
}

/// A campaign journaled before failback replays as it ran: its restores carried nothing back,
/// and the workloads it left away say so.
#[test]
fn a_journal_from_before_failback_replays_as_it_ran() {
    let fleet = Arc::new(load_fleet("fleet.toml", &example("fleet.toml")).expect("fleet"));
    let spec = load_campaign("campaign.toml", &example("campaign.toml"), &fleet).expect("campaign");
    let campaign = Campaign::new("old", fleet.clone(), spec.clone()).expect("plans");
    let mut sim = Sim::new(campaign, SimOptions { fail_rate: 0.0, ..SimOptions::default() });
    sim.push(sim.now, baton_core::campaign::Event::Start { by: "test".into() });
    sim.run_to_end();
    let mut journal = sim.journal.clone();
    let baton_core::campaign::Event::Planned { plan, .. } = &mut journal[0].1 else { panic!("plan first") };
    assert!(plan.failback);
    plan.failback = false;
    let old = Campaign::replay(fleet.clone(), spec, &journal).expect("replays");
    assert!(!old.fails_back());
    let away = old.displaced();
    assert!(!away.is_empty());
    assert!(
        away.iter().all(|d| d.reason == "the campaign predates failback" || d.reason.starts_with("no room")),
        "{away:?}"
    );
    // The last host drained holds what the others moved to it: crowded, as before failback.
    assert_ne!(load(&old), load(&sim.campaign));
}
