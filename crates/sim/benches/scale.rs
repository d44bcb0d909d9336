//! Planner, loader and simulator at scale, on generated fleets with 10 service memberships per
//! node (services of 100 members, 10% of each may be down; max_parallel 10%).
//!
//! cargo bench -p baton-sim --bench scale

use baton_core::{load_campaign, load_fleet, plan};
use baton_sim::gen::{campaign_toml, fleet_json, GenOptions};
use baton_sim::SimOptions;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

fn fleet_text(nodes: usize) -> String {
    fleet_json(&GenOptions { nodes, ..Default::default() })
}

fn planner(c: &mut Criterion) {
    let mut g = c.benchmark_group("plan");
    g.sample_size(10).measurement_time(Duration::from_secs(8));
    for nodes in [1_000usize, 10_000, 100_000] {
        let text = fleet_text(nodes);
        let fleet = load_fleet("gen.json", &text).unwrap();
        let spec = load_campaign("c.toml", &campaign_toml("10%"), &fleet).unwrap();
        // Baseline in the same run: merely parsing the same text into a JSON tree.
        g.bench_with_input(BenchmarkId::new("baseline-parse-json", nodes), &nodes, |b, _| {
            b.iter(|| black_box(serde_json::from_str::<serde_json::Value>(black_box(&text)).unwrap()))
        });
        g.bench_with_input(BenchmarkId::new("waves", nodes), &nodes, |b, _| {
            b.iter(|| black_box(plan(&fleet, &spec).unwrap()))
        });
        g.bench_with_input(BenchmarkId::new("load+waves", nodes), &nodes, |b, _| {
            b.iter(|| {
                let f = load_fleet("gen.json", black_box(&text)).unwrap();
                let s = load_campaign("c.toml", &campaign_toml("10%"), &f).unwrap();
                black_box(plan(&f, &s).unwrap())
            })
        });
    }
    g.finish();
}

fn simulator(c: &mut Criterion) {
    let mut g = c.benchmark_group("simulate");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    for nodes in [1_000usize, 10_000] {
        let fleet = Arc::new(load_fleet("gen.json", &fleet_text(nodes)).unwrap());
        let spec = load_campaign("c.toml", &campaign_toml("10%"), &fleet).unwrap();
        let opts = SimOptions { duration: (10 * 60_000, 20 * 60_000), ..Default::default() };
        g.bench_with_input(BenchmarkId::new("continuous", nodes), &nodes, |b, _| {
            b.iter(|| {
                let r = baton_sim::run(fleet.clone(), spec.clone(), &opts, &[]).unwrap();
                assert!(r.violations.is_empty());
                black_box(r.makespan)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, planner, simulator);
criterion_main!(benches);
