//! The examples in `examples/`: their plans (snapshots and the JSON contract) and what the
//! simulator says of them. These run the real `baton` binary from the repository root.

use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;

const EXAMPLES: [&str; 3] = ["hyperv-cluster", "azure-fleet", "etcd-quorum"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn baton(args: &[&str]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_baton")).args(args).current_dir(root()).output().unwrap();
    assert!(o.status.success(), "baton {args:?} failed:\n{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

fn files(ex: &str) -> (String, String) {
    (format!("examples/{ex}/fleet.toml"), format!("examples/{ex}/campaign.toml"))
}

#[test]
fn plan_text_snapshots() {
    for ex in EXAMPLES {
        let (f, c) = files(ex);
        let text = baton(&["plan", "--fleet", &f, "--campaign", &c]);
        insta::assert_snapshot!(format!("plan-{ex}"), text);
    }
}

/// Checks the plan JSON contract; returns (waves, lower bound).
fn check_plan(fleet: &str, campaign: &str) -> (Vec<Vec<String>>, u64) {
    let j: Value =
        serde_json::from_str(&baton(&["plan", "--fleet", fleet, "--campaign", campaign, "--format", "json"]))
            .unwrap();
    let keys: HashSet<&str> = j.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, HashSet::from(["campaign", "strategy", "waves", "skipped", "lower_bound", "binding"]));
    let waves: Vec<Vec<String>> = serde_json::from_value(j["waves"].clone()).unwrap();
    let mut seen = HashSet::new();
    for n in waves.iter().flatten() {
        assert!(seen.insert(n.clone()), "{n} is in two waves");
    }
    for s in j["skipped"].as_array().unwrap() {
        assert!(seen.insert(s["node"].as_str().unwrap().to_string()), "skipped node also planned");
        assert!(!s["reason"].as_str().unwrap().is_empty());
    }
    // Every node of these examples is targeted.
    let text = std::fs::read_to_string(root().join(fleet)).unwrap();
    assert_eq!(seen.len(), text.matches("[[node]]").count());
    (waves, j["lower_bound"].as_u64().unwrap())
}

#[test]
fn plans_cover_every_node_once_and_meet_the_bound() {
    for ex in EXAMPLES {
        let (f, c) = files(ex);
        let (waves, lb) = check_plan(&f, &c);
        assert_eq!(waves.len() as u64, lb, "{ex}: waves vs lower bound");
    }
}

#[test]
fn domain_walk_gives_one_wave_per_update_domain_on_the_azure_fleet() {
    let (f, c) = files("azure-fleet");
    let text = std::fs::read_to_string(root().join(&c)).unwrap().replace("\"continuous\"", "\"domain-walk\"");
    let dw = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("azure-domain-walk.toml");
    std::fs::write(&dw, text).unwrap();
    let (waves, _) = check_plan(&f, dw.to_str().unwrap());
    let ud_of = |n: &str| n.split('-').nth(1).unwrap().to_string();
    let uds: Vec<String> = waves
        .iter()
        .map(|w| {
            let set: HashSet<String> = w.iter().map(|n| ud_of(n)).collect();
            assert_eq!(set.len(), 1, "wave spans domains: {w:?}");
            set.into_iter().next().unwrap()
        })
        .collect();
    assert_eq!(uds, ["u0", "u1", "u2", "u3", "u4"]);
}

#[test]
fn simulate_compare_is_safe_and_continuous_is_fastest() {
    for ex in EXAMPLES {
        let (f, c) = files(ex);
        let out = baton(&[
            "simulate",
            "--fleet",
            &f,
            "--campaign",
            &c,
            "--compare",
            "--duration",
            "10m..20m",
            "--format",
            "json",
        ]);
        let j: Value = serde_json::from_str(&out).unwrap();
        let runs = j["runs"].as_array().unwrap();
        let by: HashMap<&str, &Value> = runs.iter().map(|r| (r["strategy"].as_str().unwrap(), r)).collect();
        assert_eq!(by.len(), 4, "{ex}: one run per strategy");
        for r in runs {
            assert_eq!(r["violations"], 0, "{ex}: {r}");
            assert_eq!(r["outcome"], "completed", "{ex}: {r}");
            assert_eq!(r["failed"], 0);
            for key in ["makespan_s", "lower_bound_s", "updated", "skipped", "peak_down"] {
                assert!(r.get(key).is_some(), "{key} missing");
            }
        }
        let cont = by["continuous"];
        let m = cont["makespan_s"].as_f64().unwrap();
        for r in runs {
            assert!(m <= r["makespan_s"].as_f64().unwrap(), "{ex}: continuous slower than {}", r["strategy"]);
        }
        let ratio = m / cont["lower_bound_s"].as_f64().unwrap();
        assert!(ratio <= 1.10, "{ex}: continuous is {ratio:.3} times its lower bound");
    }
}

#[test]
fn simulate_text_ends_with_a_summary_line() {
    let (f, c) = files("azure-fleet");
    let out = baton(&["simulate", "--fleet", &f, "--campaign", &c, "--compare", "--duration", "10m..20m"]);
    let last = out.lines().last().unwrap();
    assert!(last.starts_with("continuous: updated 29 nodes in "), "{last}");
    assert!(last.contains("no safety rule was broken"), "{last}");
}

/// The monthly, CAU-like schedule in `examples/hyperv-cluster/patch-tuesday.toml` reads and
/// plans (its `schedule`, `timezone` and `windows` included).
#[test]
fn the_patch_tuesday_schedule_example_plans() {
    let text = baton(&[
        "plan",
        "--fleet",
        "examples/hyperv-cluster/fleet.toml",
        "--campaign",
        "examples/hyperv-cluster/patch-tuesday.toml",
    ]);
    assert!(text.contains("hv1") && text.contains("hv3"), "{text}");
    let fleet = std::fs::read_to_string(root().join("examples/hyperv-cluster/fleet.toml")).unwrap();
    let fleet = baton_core::load_fleet("fleet.toml", &fleet).unwrap();
    let c = std::fs::read_to_string(root().join("examples/hyperv-cluster/patch-tuesday.toml")).unwrap();
    let spec = baton_core::load_campaign("patch-tuesday.toml", &c, &fleet).unwrap();
    let s = spec.schedule.expect("a schedule");
    // 2026-11-30T12:00Z: the next Patch Tuesday is 8 December, 03:00 CET (02:00 UTC).
    assert_eq!(s.next_after(1_796_040_000_000), Some(1_796_695_200_000));
}

/// Issue 13: `examples/azure-fleet/scale-set.toml` takes the web tier only (`select`), walks
/// fault domains (`walk`), and reads its percentages of the targeted nodes.
#[test]
fn the_scale_set_example_walks_fault_domains_over_the_web_tier() {
    let (f, _) = files("azure-fleet");
    let j: Value = serde_json::from_str(&baton(&[
        "plan",
        "--fleet",
        &f,
        "--campaign",
        "examples/azure-fleet/scale-set.toml",
        "--format",
        "json",
    ]))
    .unwrap();
    let waves: Vec<Vec<String>> = serde_json::from_value(j["waves"].clone()).unwrap();
    let text = std::fs::read_to_string(root().join(&f)).unwrap();
    let fleet = baton_core::load_fleet("fleet.toml", &text).unwrap();
    let c = std::fs::read_to_string(root().join("examples/azure-fleet/scale-set.toml")).unwrap();
    let spec = baton_core::load_campaign("scale-set.toml", &c, &fleet).unwrap();
    let web: HashSet<&str> = fleet
        .nodes
        .iter()
        .filter(|n| n.labels.get("role").map(String::as_str) == Some("web"))
        .map(|n| n.name.as_str())
        .collect();
    // Planned or skipped (one is at 1.1 already): every web node, and only those.
    let mut taken: HashSet<&str> = waves.iter().flatten().map(String::as_str).collect();
    for s in j["skipped"].as_array().unwrap() {
        taken.insert(s["node"].as_str().unwrap());
    }
    assert_eq!(taken, web, "every web node, and only those");
    let mut fds = Vec::new();
    for w in &waves {
        let set: HashSet<Option<u32>> =
            w.iter().map(|n| fleet.nodes[fleet.node_id(n).unwrap() as usize].fault_domain).collect();
        assert_eq!(set.len(), 1, "wave spans fault domains: {w:?}");
        fds.push(set.into_iter().next().unwrap());
    }
    assert!(fds.windows(2).all(|p| p[0] <= p[1]), "fault domains out of order: {fds:?}");
    let n = web.len() as u32;
    assert_eq!((spec.max_failed_nodes, spec.max_unhealthy), (n / 10, Some(n / 5)));
}
