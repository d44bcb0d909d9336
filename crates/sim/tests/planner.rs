//! The planner reaches its lower bound on large generated fleets where the services leave room
//! (issue 14): with and without update domains, at 5% and 10% in parallel. The 100,000-node
//! version of the same runs in `bench/plan-100k.sh`.

use baton_core::{load_campaign, load_fleet};
use baton_sim::gen::{campaign_toml, fleet_json, GenOptions};

fn check(nodes: usize, update_domains: usize, max_parallel: &str) {
    let o = GenOptions { nodes, memberships: 10, service_size: 100, update_domains, fault_domains: 0 };
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
    assert_eq!(
        plan.waves.len(),
        plan.lower_bound,
        "{nodes} nodes, {update_domains} update domains, max_parallel {max_parallel}: {} waves, bound {} ({})",
        plan.waves.len(),
        plan.lower_bound,
        plan.binding
    );
}

#[test]
fn twenty_update_domains_at_five_percent() {
    check(20_000, 20, "5%");
}

#[test]
fn twenty_update_domains_at_ten_percent() {
    check(20_000, 20, "10%");
}

#[test]
fn no_update_domains_at_five_percent() {
    check(20_000, 0, "5%");
}

#[test]
fn no_update_domains_at_ten_percent() {
    check(20_000, 0, "10%");
}
