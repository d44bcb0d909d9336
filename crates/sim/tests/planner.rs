//! The planner reaches its lower bound on large generated fleets where the services leave room
//! (issue 14): with and without update domains, at 5% and 10% in parallel. The 100,000-node
//! version of the same runs in `bench/plan-100k.sh`.

use baton_core::{load_campaign, load_fleet};
use baton_sim::gen::{campaign_toml, fleet_json, GenOptions};

/// Plans a generated fleet, checks the plan, and returns its waves and lower bound.
fn plan(nodes: usize, update_domains: usize, max_parallel: &str, shuffle: Option<u64>) -> (usize, usize) {
    let o =
        GenOptions { nodes, memberships: 10, service_size: 100, update_domains, fault_domains: 0, shuffle };
    let fleet = load_fleet("gen.json", &fleet_json(&o)).expect("generated fleet loads");
    let spec = load_campaign("gen.toml", &campaign_toml(max_parallel), &fleet).expect("campaign loads");
    let plan = baton_core::plan(&fleet, &spec).expect("plans");
    let mut seen = vec![false; nodes];
    for wave in &plan.waves {
        assert!(wave.len() <= plan.max_parallel);
        let mut down = vec![0u32; fleet.services.len()];
        for &n in wave {
            assert!(!std::mem::replace(&mut seen[n as usize], true), "node in two waves");
            for &s in &fleet.memberships[n as usize] {
                down[s as usize] += 1;
            }
        }
        for (s, d) in down.iter().enumerate() {
            assert!(
                *d <= fleet.services[s].allowance,
                "service {} over its allowance",
                fleet.services[s].name
            );
        }
    }
    assert!(seen.iter().all(|s| *s), "a node was left out of the plan");
    (plan.waves.len(), plan.lower_bound)
}

/// At 5% the services leave room (about 5 of a service's 100 members per wave, 10 allowed):
/// the bound is reached. Members are dealt at random, so services meet the update domains
/// unevenly: first fit put the last nodes into a 21st wave here.
#[test]
fn twenty_update_domains_at_five_percent() {
    assert_eq!(plan(20_000, 20, "5%", Some(1)), (20, 20));
}

#[test]
fn no_update_domains_at_five_percent() {
    assert_eq!(plan(20_000, 0, "5%", Some(1)), (20, 20));
}

/// At 10% the bound of 10 waves leaves a service no room at all: each must put exactly its
/// allowance, 10 members, in every wave. With members dealt evenly (gen-fleet's default) that
/// is reached; dealt at random it is not found (first fit gave 14, balanced placement 12), and
/// the plan says it is above the bound.
#[test]
fn ten_percent_reaches_the_bound_when_members_are_dealt_evenly() {
    assert_eq!(plan(20_000, 20, "10%", None), (10, 10));
    assert_eq!(plan(20_000, 0, "10%", None), (10, 10));
}

#[test]
fn ten_percent_with_members_at_random_stays_within_two_waves_of_the_bound() {
    for ud in [20, 0] {
        let (waves, bound) = plan(20_000, ud, "10%", Some(1));
        assert_eq!(bound, 10);
        assert!(waves <= 12, "{ud} update domains: {waves} waves");
    }
}

/// Issue 14: on two quorum services sharing an 11-node web tier (bench/fleets/quorum-web), with
/// each node's time learned, critical-first ran each quorum chain back to back and left the web
/// tier's third slot to the rest: 1.064 times the bound at the median over 50 seeds. The start
/// order is now searched by the list schedule it gives (1.043 over the same 50 seeds); over 20
/// seeds here the median is within 5% of the bound.
#[test]
fn a_searched_start_order_balances_quorum_chains_on_a_shared_tier() {
    use baton_sim::{learned_times, run, SimOptions};
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../bench/fleets/quorum-web");
    let read = |f: &str| std::fs::read_to_string(format!("{dir}/{f}")).unwrap();
    let fleet = std::sync::Arc::new(load_fleet("fleet.toml", &read("fleet.toml")).unwrap());
    let spec = load_campaign("campaign.toml", &read("campaign.toml"), &fleet).unwrap();
    let mut ratios = Vec::new();
    for seed in 1..=20 {
        let opts = SimOptions { seed, duration: (10 * 60_000, 20 * 60_000), ..Default::default() };
        let mut learned = spec.clone();
        learned.expected = learned_times(&fleet, &opts);
        let searched = run(fleet.clone(), learned, &opts, &[]).unwrap();
        assert!(searched.violations.is_empty(), "{:?}", searched.violations);
        assert_eq!(searched.updated, fleet.nodes.len());
        ratios.push(searched.makespan as f64 / searched.lower_bound as f64);
    }
    ratios.sort_by(f64::total_cmp);
    let median = (ratios[9] + ratios[10]) / 2.0;
    assert!(median <= 1.05, "median {median:.3} over its bound: {ratios:?}");
}

/// Issue 12: the simulator (and so the orchestrator's estimate of the end) counts the hours a
/// campaign's maintenance windows are closed. Three nodes of 10 minutes, one at a time, in a
/// daily 25-minute window: two fit in the first window, the third waits for the next day.
#[test]
fn the_simulated_makespan_counts_closed_windows() {
    use baton_sim::SimOptions;
    use std::sync::Arc;
    let fleet = "name = \"w\"\nversions = [\"1.0\", \"1.1\"]\nfunctional_level = \"1.0\"\n\
        [[node]]\nname = \"a\"\nversion = \"1.0\"\n[[node]]\nname = \"b\"\nversion = \"1.0\"\n[[node]]\nname = \"c\"\nversion = \"1.0\"\n";
    let fleet = Arc::new(load_fleet("w.toml", fleet).unwrap());
    let base = "name = \"c\"\ntarget_version = \"1.1\"\nhealth_wait = \"0s\"\nhealth_stable = \"0s\"\n";
    const MIN: u64 = 60_000;
    // 2026-12-05T02:00:00Z, when the window opens.
    let start = 1_796_436_000_000;
    let opts = SimOptions { duration: (10 * MIN, 10 * MIN), start, ..Default::default() };
    let open = load_campaign("c.toml", base, &fleet).unwrap();
    assert_eq!(baton_sim::makespan(fleet.clone(), open, &opts).unwrap(), 30 * MIN);
    let windowed = format!("{base}windows = [{{ days = \"*\", start = \"02:00\", length = \"25m\" }}]\n");
    let spec = load_campaign("c.toml", &windowed, &fleet).unwrap();
    // a at 02:00, b at 02:10; at 02:20 c may still start (the window is open until 02:25) and
    // ends at 02:30.
    assert_eq!(baton_sim::makespan(fleet.clone(), spec.clone(), &opts).unwrap(), 30 * MIN);
    // A window of 15 minutes: c waits for the next day's window, 02:00 + 24 h, ending 10 minutes on.
    let short = format!("{base}windows = [{{ days = \"*\", start = \"02:00\", length = \"15m\" }}]\n");
    let spec = load_campaign("c.toml", &short, &fleet).unwrap();
    assert_eq!(baton_sim::makespan(fleet, spec, &opts).unwrap(), 24 * 60 * MIN + 10 * MIN);
}
