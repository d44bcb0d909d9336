//! Issue 11, item 6: the API's contract, checked by a client no one here wrote. schemathesis
//! `--checks all` against a real `baton serve` with real agents, after a campaign ran (so ids
//! lead somewhere). It needs schemathesis: `scripts/schemathesis.sh` installs it in a venv and
//! runs this test, and CI runs that script; `cargo test` alone leaves it out.

mod support;

use support::*;

/// Fixed, so that a failure in CI can be replayed (`st run ... --seed`).
const SEED: &str = "272812257074884137934476687696523422854";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs schemathesis: scripts/schemathesis.sh installs it and runs this"]
async fn schemathesis_finds_no_failure() {
    let st = std::env::var("BATON_SCHEMATHESIS")
        .expect("BATON_SCHEMATHESIS: the path of schemathesis' `st` (scripts/schemathesis.sh sets it)");
    let mut f = local(
        "contract",
        LocalOptions { nodes: 2, action_seconds: "0.2".into(), reboot_ms: 200, ..Default::default() },
    )
    .await;
    let serve = Serve::start(&f, port()).await;
    let v = serve.create_and_start(LocalFleet::campaign_toml("")).await;
    serve
        .wait(v.id, Duration::from_secs(60), |v| {
            v.phase == Phase::Completed && v.active == 0 && !v.holds_fleet
        })
        .await;
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/schemathesis.toml");
    let mut cmd = tokio::process::Command::new(&st);
    cmd.args(["--no-color", "--config-file", config, "run", &format!("{}/openapi.json", serve.url)]).args([
        "-H",
        &format!("Authorization: Bearer {}", serve.token),
        "--checks",
        "all",
        "--seed",
        SEED,
    ]);
    // Fewer cases per operation for a shorter run (CI's; schemathesis' default is 100).
    if let Ok(n) = std::env::var("BATON_SCHEMATHESIS_MAX_EXAMPLES") {
        cmd.args(["--max-examples", &n]);
    }
    let out = cmd.output().await.unwrap_or_else(|e| panic!("cannot run {st}: {e}"));
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "schemathesis found failures (its report is above)");
    // It really tested: "N generated, N passed".
    let generated: u64 = text
        .lines()
        .find_map(|l| l.trim().split_once(" generated, ").and_then(|(n, _)| n.parse().ok()))
        .expect("schemathesis' summary names how many cases it generated");
    assert!(generated >= 500, "only {generated} cases generated");
    drop(serve);
    f.stop().await;
}
