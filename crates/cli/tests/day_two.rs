//! Day two, with real processes over loopback: the same campaign run again, two operators at
//! once, an abort followed at once by a new campaign, a second orchestrator on one journal, a
//! full disk under the journal, and what `baton run` exits with. Nothing here is mocked; the
//! full disk is a real size-limited tmpfs (root only, as CI runs).

mod support;

use support::*;

/// The local campaign with short health windows, so that a test runs in seconds.
fn quick(extra: &str) -> String {
    LocalFleet::campaign_toml(extra)
        .replace("health_stable = \"2s\"", "health_stable = \"300ms\"")
        .replace("health_wait = \"1s\"", "health_wait = \"0s\"")
}

/// What each node's agent reports as its version now.
async fn versions(f: &LocalFleet) -> Vec<Option<String>> {
    let c = client(f);
    let mut out = Vec::new();
    for n in &f.nodes {
        out.push(c.status(&n.name, &n.addr, None, 0).await.ok().and_then(|s| s.version));
    }
    out
}

/// Sets node `i`'s installed version behind the orchestrator's and the agent's back: the agent
/// still reports what it read after its last action until it is asked for a fresh reading.
fn set_version(f: &LocalFleet, i: usize, v: &str) {
    std::fs::write(f.nodes[i].dir.join("state/version"), format!("{v}\n")).unwrap();
}

fn settled(v: &CampaignView, phase: Phase) -> bool {
    v.phase == phase && v.active == 0 && !v.holds_fleet
}

/// Issue 10, item 1: step ids came from the campaign's name, so a campaign created again under
/// the same name after a rollback "completed" at once from the agents' old records, ran nothing,
/// and could be committed with every node still at 1.0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_run_again_under_its_name_runs_every_step_again() {
    let mut f = local(
        "rerun",
        LocalOptions { nodes: 2, action_seconds: "0.2".into(), reboot_ms: 200, ..Default::default() },
    )
    .await;
    let serve = Serve::start(&f, port()).await;
    let toml = quick("");
    let first = serve.create_and_start(toml.clone()).await;
    serve.wait(first.id, Duration::from_secs(60), |v| settled(v, Phase::Completed)).await;
    assert_eq!(versions(&f).await, vec![Some("1.1".into()), Some("1.1".into())]);
    let _: CampaignView = serve.post(&format!("/v1/campaigns/{}/rollback", first.id), None).await.unwrap();
    let back = serve.wait(first.id, Duration::from_secs(60), |v| settled(v, Phase::RolledBack)).await;
    assert_eq!(back.updated, 2, "{back:#?}");
    assert_eq!(versions(&f).await, vec![Some("1.0".into()), Some("1.0".into())]);

    // The same file again: the same name, a new campaign.
    let again = serve.create_and_start(toml.clone()).await;
    assert_eq!(again.name, first.name);
    let end = serve.wait(again.id, Duration::from_secs(60), |v| settled(v, Phase::Completed)).await;
    assert_eq!(end.updated, 2);
    assert_eq!(versions(&f).await, vec![Some("1.1".into()), Some("1.1".into())]);
    // Drain, update and restore: forward, back, and forward again, on each node, each once;
    // a precheck before each forward pass; a hold and a release of its auto-updaters around
    // each pass (the rollback came after the first campaign had completed and released them).
    assert_eq!(steps_ran_once(&f).await, 34);
    budgets_kept(&f, &toml, &serve.events(again.id).await);
    // Only the latest campaign can go back: the first one's nodes were moved on since.
    let (code, text) =
        serve.post::<CampaignView>(&format!("/v1/campaigns/{}/rollback", first.id), None).await.unwrap_err();
    assert_eq!(code, 409, "{text}");
    assert!(text.contains("not-latest"), "{text}");

    // Commit asks every agent for its version now: a node put back to 1.0 behind the
    // orchestrator's back (its agent not restarted, so it still says 1.1 unless asked afresh)
    // refuses it, naming the node.
    set_version(&f, 1, "1.0");
    let cached = client(&f).status("node2", &f.nodes[1].addr, None, 0).await.unwrap();
    assert_eq!(cached.version.as_deref(), Some("1.1"));
    let (code, text) =
        serve.post::<CampaignView>(&format!("/v1/campaigns/{}/commit", again.id), None).await.unwrap_err();
    assert_eq!(code, 409, "{text}");
    assert!(text.contains("commit-refused") && text.contains("node2 is at 1.0"), "{text}");
    set_version(&f, 1, "1.1");
    let c: CampaignView = serve.post(&format!("/v1/campaigns/{}/commit", again.id), None).await.unwrap();
    assert_eq!(c.phase, Phase::Committed);
    drop(serve);
    f.stop().await;
}

/// A commit begins an after-commit pass that takes nodes out again: found in review, an earlier
/// completed campaign could be committed while a later one held the fleet, and its pass would
/// have drained nodes beside the later campaign's. Now a commit, as a rollback, is refused while
/// another campaign holds the fleet, and for any campaign but the fleet's latest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_earlier_campaign_is_not_committed_beside_a_later_one() {
    let mut f = local(
        "commit-latest",
        LocalOptions { nodes: 2, action_seconds: "0.2".into(), reboot_ms: 200, ..Default::default() },
    )
    .await;
    let serve = Serve::start(&f, port()).await;
    let first = serve.create_and_start(quick("after_commit_action = \"config-version\"\n")).await;
    serve.wait(first.id, Duration::from_secs(60), |v| settled(v, Phase::Completed)).await;
    // A later campaign, created (it holds the fleet from its creation).
    let later: CampaignView =
        serve.post("/v1/campaigns", Some(serde_json::json!({ "toml": quick("") }))).await.unwrap();
    let commit = format!("/v1/campaigns/{}/commit", first.id);
    let (code, text) = serve.post::<CampaignView>(&commit, None).await.unwrap_err();
    assert_eq!(code, 409, "{text}");
    assert!(text.contains("fleet-locked"), "{text}");
    // Started (its plan is empty: both nodes are at 1.1), it ends at once and holds the fleet no
    // more; the earlier campaign is still not the latest.
    let _: CampaignView = serve.post(&format!("/v1/campaigns/{}/start", later.id), None).await.unwrap();
    serve.wait(later.id, Duration::from_secs(30), |v| !v.holds_fleet).await;
    let (code, text) = serve.post::<CampaignView>(&commit, None).await.unwrap_err();
    assert_eq!(code, 409, "{text}");
    assert!(text.contains("not-latest") && text.contains("can be committed"), "{text}");
    assert_eq!(serve.view(first.id).await.unwrap().phase, Phase::Completed);
    let passed = serve.events(first.id).await.iter().any(|e| format!("{:?}", decoded(e)).contains("/ac0/"));
    assert!(!passed, "no step of an after-commit pass was run");
    for n in &f.nodes {
        assert!(!n.dir.join("state/after-commit.log").exists(), "{}", n.name);
    }
    // One created by mistake and aborted before it started moved nothing: it does not keep the
    // latest that did from being committed.
    let mistake: CampaignView =
        serve.post("/v1/campaigns", Some(serde_json::json!({ "toml": quick("") }))).await.unwrap();
    let _: CampaignView = serve.post(&format!("/v1/campaigns/{}/abort", mistake.id), None).await.unwrap();
    serve.wait(mistake.id, Duration::from_secs(30), |v| !v.holds_fleet).await;
    let c: CampaignView = serve.post(&format!("/v1/campaigns/{}/commit", later.id), None).await.unwrap();
    assert!(c.committed(), "{c:#?}");
    drop(serve);
    f.stop().await;
}

/// Issue 10, item 2: two creations at the same instant both got 201 and both ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_campaigns_created_at_the_same_instant_exactly_one_is_accepted() {
    let mut f = local("twice", LocalOptions { nodes: 2, ..Default::default() }).await;
    let serve = Serve::start(&f, port()).await;
    let toml = quick("");
    let body = serde_json::json!({ "toml": toml });
    for rep in 0..20 {
        let barrier = tokio::sync::Barrier::new(2);
        let create = || async {
            barrier.wait().await;
            serve.post::<CampaignView>("/v1/campaigns", Some(body.clone())).await
        };
        let (a, b) = tokio::join!(create(), create());
        let (won, lost) = match (a, b) {
            (Ok(v), Err(e)) | (Err(e), Ok(v)) => (v, e),
            (a, b) => panic!("repetition {rep}: expected one 201 and one 409, got {a:?} and {b:?}"),
        };
        assert_eq!(lost.0, 409, "repetition {rep}: {}", lost.1);
        assert!(lost.1.contains("fleet-locked"), "{}", lost.1);
        assert!(won.holds_fleet);
        // Ends at once (nothing started), so the next repetition finds the fleet free.
        let v: CampaignView = serve.post(&format!("/v1/campaigns/{}/abort", won.id), None).await.unwrap();
        assert!(!v.holds_fleet, "{v:#?}");
    }
    let all: Vec<CampaignView> =
        serve.http.get(format!("{}/v1/campaigns", serve.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(all.len(), 20);
    drop(serve);
    f.stop().await;
}

/// Issue 10, item 2: an aborted campaign released the fleet while its nodes were mid-step, so
/// the next campaign drained alongside them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_created_after_an_abort_starts_only_once_the_aborted_nodes_are_back() {
    let mut f = local(
        "abort",
        LocalOptions { nodes: 3, action_seconds: "1.5".into(), reboot_ms: 200, ..Default::default() },
    )
    .await;
    let serve = Serve::start(&f, port()).await;
    let toml = quick("");
    let first = serve.create_and_start(toml.clone()).await;
    serve.wait(first.id, Duration::from_secs(30), |v| v.nodes.iter().any(|n| n.state == "updating")).await;
    let aborted: CampaignView = serve.post(&format!("/v1/campaigns/{}/abort", first.id), None).await.unwrap();
    assert_eq!(aborted.phase, Phase::Aborted);
    assert!(aborted.holds_fleet, "its node is still being updated");
    // Right after the abort: refused, and told why.
    let body = serde_json::json!({ "toml": toml });
    let (code, text) = serve.post::<CampaignView>("/v1/campaigns", Some(body.clone())).await.unwrap_err();
    assert_eq!(code, 409, "{text}");
    assert!(text.contains("not back in service yet"), "{text}");
    // Retried until the fleet is free, as an operator would.
    let deadline = Instant::now() + Duration::from_secs(60);
    let second = loop {
        match serve.post::<CampaignView>("/v1/campaigns", Some(body.clone())).await {
            Ok(v) => break v,
            Err((409, _)) => {
                assert!(Instant::now() < deadline, "the aborted campaign never released the fleet");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{e:?}"),
        }
    };
    let _: CampaignView = serve.post(&format!("/v1/campaigns/{}/start", second.id), None).await.unwrap();
    serve.wait(second.id, Duration::from_secs(60), |v| settled(v, Phase::Completed)).await;
    // Every node of the aborted campaign was back in service before the new one was created.
    let first_end = serve.view(first.id).await.unwrap();
    assert!(first_end.nodes.iter().all(|n| !n.out_of_service), "{first_end:#?}");
    let restored_at = serve
        .events(first.id)
        .await
        .iter()
        .filter(|e| matches!(decoded(e), Event::StepOk { step, .. } if step.ends_with("/restore")))
        .map(|e| e.at_ms)
        .max()
        .expect("the aborted campaign restored its node");
    let created_at = serve.events(second.id).await[0].at_ms;
    assert!(created_at >= restored_at, "created at {created_at}, aborted node restored at {restored_at}");
    // The aborted campaign's nodes ran their three steps once (and their prechecks, also one
    // that answered after the abort).
    let prechecked = serve
        .events(first.id)
        .await
        .iter()
        .filter(|e| {
            matches!(decoded(e), Event::StepOk { step, .. } | Event::StepFailed { step, .. } if step.ends_with("/precheck"))
        })
        .count();
    // Each campaign also held and released its nodes' auto-updaters; the new one targets only
    // the nodes whose agents still report 1.0 (those the abort left at 1.1 are skipped).
    assert_eq!(
        steps_ran_once(&f).await,
        3 * first_end.updated + prechecked + 2 * 3 + 6 * (3 - first_end.updated)
    );
    drop(serve);
    f.stop().await;
}

/// Issue 10, item 5: a second `baton serve` on the same database started and drove the same
/// campaigns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_orchestrator_on_the_same_journal_refuses_to_start() {
    let mut f = local("second", LocalOptions { nodes: 1, ..Default::default() }).await;
    let serve = Serve::start(&f, port()).await;
    let mut second = serve_command(&f, port(), &f.dir.join("baton.db"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = second.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = second.kill();
            panic!("a second baton serve started on the same journal and kept running");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "a second baton serve started: {err}");
    assert!(err.contains("in use by another baton serve") && err.contains("pid"), "{err}");
    // The first one is untouched, and once it is gone the journal can be opened again.
    assert!(serve.http.get(format!("{}/healthz", serve.url)).send().await.is_ok());
    drop(serve);
    let again = Serve::start(&f, port()).await;
    drop(again);
    f.stop().await;
}

/// A size-limited tmpfs, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: PathBuf, size: &str) -> Tmpfs {
        std::fs::create_dir_all(&dir).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs on {}", dir.display());
        Tmpfs(dir)
    }

    /// Writes a file until the disk is full; returns its path.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let p = self.0.join("filler");
        let mut f = std::fs::File::create(&p).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling {}: {e}", p.display()),
            }
        }
        // Single bytes, until not one more fits.
        while f.write(&[0]).is_ok_and(|n| n == 1) {}
        p
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

async fn metric(serve: &Serve, name: &str) -> f64 {
    let text = serve.http.get(format!("{}/metrics", serve.url)).send().await.unwrap().text().await.unwrap();
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Issue 10, item 4: with the disk under the journal full for a moment during an agent's
/// report, the report was dropped: the node stayed "updating" and drained until the
/// orchestrator was restarted, and the operator got a misleading 409.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_under_the_journal_loses_no_report() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: mounting a tmpfs needs root (CI runs as root)");
        return;
    }
    let mut f = local(
        "fulldisk",
        LocalOptions { nodes: 2, action_seconds: "2".into(), reboot_ms: 200, ..Default::default() },
    )
    .await;
    let disk = Tmpfs::mount(f.dir.join("journal-disk"), "8m");
    let serve = Serve::start_on(&f, port(), &disk.0.join("baton.db")).await;
    let toml = quick("").replace("max_parallel = 2", "max_parallel = 1");
    let v = serve.create_and_start(toml.clone()).await;
    serve.wait(v.id, Duration::from_secs(30), |v| v.nodes.iter().any(|n| n.state == "updating")).await;
    let filler = disk.fill();
    // The update ends while the disk is full: its report cannot be journaled.
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&serve, "baton_journal_append_failures_total").await < 1.0 {
        assert!(Instant::now() < deadline, "no append failed while the disk was full");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // An operator's action meanwhile is refused as what it is: 503, with the real cause.
    let (code, text) =
        serve.post::<CampaignView>(&format!("/v1/campaigns/{}/pause", v.id), None).await.unwrap_err();
    assert_eq!(code, 503, "{text}");
    assert!(text.contains("journal-unavailable") && text.contains("full"), "{text}");
    // Room again: without a restart, what the campaign waited on is asked again and it ends,
    // also when an operator's action is the first thing the journal takes again.
    std::fs::remove_file(&filler).unwrap();
    let _: CampaignView = serve.post(&format!("/v1/campaigns/{}/pause", v.id), None).await.unwrap();
    let _: CampaignView = serve.post(&format!("/v1/campaigns/{}/resume", v.id), None).await.unwrap();
    let end = serve.wait(v.id, Duration::from_secs(60), |v| settled(v, Phase::Completed)).await;
    assert_eq!(end.updated, 2, "{end:#?}");
    // A hold, precheck, drain, update, restore and release on each node, each once.
    assert_eq!(steps_ran_once(&f).await, 12);
    budgets_kept(&f, &toml, &serve.events(v.id).await);
    drop(serve);
    drop(disk);
    f.stop().await;
}

/// Issue 10, item 6: `baton run` exited 1 for every refusal; DESIGN.md gives 2 for a bad
/// campaign and 3 for an infeasible one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baton_run_exits_2_for_a_bad_campaign_and_3_for_an_infeasible_one() {
    let mut f = local("runexit", LocalOptions { nodes: 2, ..Default::default() }).await;
    let serve = Serve::start(&f, port()).await;
    let bad = baton_run(&f, &serve, "bad.toml", &quick("colour = \"blue\""));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(2), "{err}");
    assert!(err.contains("bad-campaign") && err.contains("colour"), "{err}");
    // A service that allows none of its members down can never be updated.
    let fleet = f.fleet_text.replace("max_unavailable = \"40%\"", "min_available = \"100%\"");
    std::fs::write(&f.fleet_file, &fleet).unwrap();
    drop(serve);
    let serve = Serve::start(&f, port()).await;
    let out = baton_run(&f, &serve, "ok.toml", &quick(""));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("infeasible") && err.contains("web"), "{err}");
    drop(serve);
    f.stop().await;
}

/// Issue 14: each node's watch keeps a lean connection of its own (a socket and a TLS session,
/// not a pooled HTTP client's buffers), so that 10,000 watches fit in the orchestrator's memory.
/// It must still be pinned to the node's identity, end its long poll when the node changes, keep
/// its connection from one poll to the next, and see the agent go and come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_watch_is_pinned_sees_changes_at_once_and_outlives_its_agent() {
    use baton_server::client::ClientError;
    let mut f = local("watch", LocalOptions { nodes: 2, ..Default::default() }).await;
    let c = client(&f);
    let addr = f.nodes[0].addr.clone();
    // At node1's address, node2 is refused in the handshake, and so is anything but node1.
    let e = c.conn("node2", &addr).status(None, 0).await.unwrap_err();
    assert!(matches!(&e, ClientError::Unreachable(m) if m.contains("is not node2")), "{e}");
    let mut w = c.conn("node1", &addr);
    let first = w.status(None, 0).await.unwrap();
    assert_eq!(first.node, "node1");
    let port = w.local_addr().expect("the connection is kept");
    // Nothing new: the poll ends at its wait, with the same generation, on the same connection.
    let t = Instant::now();
    let same = w.status(Some(first.generation), 500).await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(400), "{:?}", t.elapsed());
    assert_eq!(same.generation, first.generation);
    assert_eq!(w.local_addr(), Some(port), "a new connection for each poll");
    // A change ends a long poll at once: a step started while it waits.
    let poll = tokio::spawn(async move {
        let t = Instant::now();
        let s = w.status(Some(first.generation), 20_000).await;
        (w, s, t.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let req = StepRequest::new("x/node1/0/drain".into(), StepKind::Drain);
    c.start_step("node1", &addr, &req).await.unwrap();
    let (mut w, changed, took) = poll.await.unwrap();
    let changed = changed.unwrap();
    assert!(changed.generation > first.generation, "{changed:?}");
    assert!(took < Duration::from_secs(10), "the poll waited {took:?} for a change that had come");
    assert_eq!(w.local_addr(), Some(port));
    // The agent killed: the next poll fails at once, not after its wait; once the agent is back
    // the watch connects again by itself.
    let pid = f.nodes[0].pid.load(Ordering::SeqCst);
    assert!(f.kill_agent(0, true));
    let dead = Instant::now() + Duration::from_secs(10);
    let alive = || std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "));
    while alive() {
        assert!(Instant::now() < dead, "agent {pid} still alive after SIGKILL");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let t = Instant::now();
    let gone = w.status(Some(changed.generation), 20_000).await;
    assert!(gone.is_err(), "{gone:?}");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert_eq!(w.local_addr(), None);
    let deadline = Instant::now() + Duration::from_secs(30);
    let back = loop {
        match w.status(None, 0).await {
            Ok(s) => break s,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the watch did not reach the restarted agent: {e}"),
        }
    };
    assert_eq!(back.node, "node1");
    assert!(w.local_addr().is_some_and(|a| a != port));
    f.stop().await;
}

/// `baton run` of a campaign file with this text against `serve`.
fn baton_run(f: &LocalFleet, serve: &Serve, name: &str, text: &str) -> std::process::Output {
    let file = f.dir.join(name);
    std::fs::write(&file, text).unwrap();
    Command::new(exe())
        .args(["run", "--server", &serve.url, "--token-file"])
        .arg(f.dir.join("operator.token"))
        .arg(&file)
        .output()
        .unwrap()
}

/// Issue 11, item 2 (identity, with issue 10's "never a step on the wrong node"): the
/// orchestrator used to send the step first and check the certificate on the answer, so an
/// address leading to another node's agent ran the step there. Now the node's name is the TLS
/// server name: the wrong agent fails the handshake and is sent nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_at_another_nodes_address_is_sent_nothing() {
    let mut f = local("pinned", LocalOptions { nodes: 2, ..Default::default() }).await;
    let c = client(&f);
    let wrong = f.nodes[0].addr.clone();
    let req = StepRequest::new("x/node2/0/drain".into(), StepKind::Drain);
    let e = c.start_step("node2", &wrong, &req).await.unwrap_err();
    assert!(
        matches!(&e, baton_server::client::ClientError::Unreachable(m) if m.contains("is not node2")),
        "{e}"
    );
    assert!(c.status("node2", &wrong, None, 0).await.is_err());
    // node1's agent never saw the request; at its own name it answers as usual.
    assert!(c.steps("node1", &wrong).await.unwrap().is_empty());
    assert_eq!(c.status("node1", &wrong, None, 0).await.unwrap().node, "node1");
    f.stop().await;
}

/// Issue 11, item 4: a 1.9 MB step id was accepted and journaled; an action request without
/// a version ran with `{version}` empty. Both are refused now, and nothing is journaled or run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_refuses_huge_step_ids_and_actions_without_a_version() {
    let mut f = local("agentinput", LocalOptions { nodes: 1, ..Default::default() }).await;
    let c = client(&f);
    let (node, addr) = (f.nodes[0].name.clone(), f.nodes[0].addr.clone());
    let huge = StepRequest::new("x".repeat(1_900_000), StepKind::Drain);
    let odd = StepRequest::new("a b;c".into(), StepKind::Drain);
    let no_version = StepRequest {
        action: Some("upgrade".into()),
        ..StepRequest::new("x/node1/0/update".into(), StepKind::Action)
    };
    for (req, code) in [(huge, "bad-step-id"), (odd, "bad-step-id"), (no_version, "missing-version")] {
        match c.start_step(&node, &addr, &req).await {
            Err(baton_server::client::ClientError::Refused(e)) => assert_eq!(e.code, code, "{}", e.message),
            other => panic!("expected {code}, got {other:?}"),
        }
    }
    assert!(c.steps(&node, &addr).await.unwrap().is_empty());
    let journal = std::fs::read(f.nodes[0].dir.join("state/journal.jsonl")).unwrap_or_default();
    assert!(journal.is_empty(), "{} bytes journaled", journal.len());
    f.stop().await;
}

/// Issue 11, item 4: a dnf action given the version `devel` ran `dnf install myapp-devel`,
/// another package. A dnf version must start with a digit; `devel` is refused and nothing is
/// journaled or run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dnf_action_refuses_a_version_that_names_another_package() {
    let dir = fresh_dir("dnf");
    let mut f = LocalFleet::create(&dir, &LocalOptions { nodes: 1, ..Default::default() }).unwrap();
    let cfg = f.nodes[0].dir.join("agent.toml");
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str("\n[[action]]\nname = \"rpm\"\nkind = \"dnf\"\npackage = \"myapp\"\n");
    std::fs::write(&cfg, text).unwrap();
    start_and_wait(&mut f, 200).await;
    let c = client(&f);
    let (node, addr) = (f.nodes[0].name.clone(), f.nodes[0].addr.clone());
    let req = StepRequest {
        action: Some("rpm".into()),
        version: Some("devel".into()),
        ..StepRequest::new("x/node1/0/update".into(), StepKind::Action)
    };
    match c.start_step(&node, &addr, &req).await {
        Err(baton_server::client::ClientError::Refused(e)) => {
            assert_eq!(e.code, "bad-version", "{}", e.message);
            assert!(e.message.contains("starts with a digit"), "{}", e.message);
        }
        other => panic!("expected bad-version, got {other:?}"),
    }
    assert!(c.steps(&node, &addr).await.unwrap().is_empty());
    let journal = std::fs::read(f.nodes[0].dir.join("state/journal.jsonl")).unwrap();
    assert!(journal.is_empty(), "{} bytes journaled", journal.len());
    f.stop().await;
}

/// Issue 11, item 5: reports (with the output of commands run as root), events and the stream
/// needed no token, and any `Host` was answered, so a web page whose name was made to point at
/// 127.0.0.1 could read them through a browser (DNS rebinding). Reads need the token now unless
/// `--open-reads`, and a `Host` that is not an IP address, localhost or `--public-url` is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_need_the_token_and_the_host_must_name_the_api() {
    let mut f = local("reads", LocalOptions { nodes: 1, ..Default::default() }).await;
    let p1 = port();
    let serve = Serve::start(&f, p1).await;
    let v = serve.create_and_start(LocalFleet::campaign_toml("")).await;
    let bare = reqwest::Client::new();
    let url = |p: &str| format!("{}{p}", serve.url);
    let reads = [
        "/v1/campaigns".to_string(),
        format!("/v1/campaigns/{}", v.id),
        format!("/v1/campaigns/{}/events", v.id),
        format!("/v1/campaigns/{}/report", v.id),
        "/v1/stream".into(),
        "/metrics".into(),
    ];
    for p in &reads {
        let r = bare.get(url(p)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 401, "{p} without the token");
        let e: baton_proto::ApiError = r.json().await.unwrap();
        assert_eq!(e.code, "unauthorized", "{p}");
        let r = bare.get(url(p)).bearer_auth(&serve.token).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200, "{p} with the token");
    }
    for p in ["/", "/healthz", "/openapi.json"] {
        assert_eq!(bare.get(url(p)).send().await.unwrap().status().as_u16(), 200, "{p} is open");
    }
    // A name that is not this API's is refused, even with the token; an address or localhost is not.
    for (host, status) in [
        (format!("rebound.example:{p1}"), 421),
        (format!("localhost:{p1}"), 200),
        (format!("127.0.0.1:{p1}"), 200),
        (format!("[::1]:{p1}"), 200),
    ] {
        let r = bare
            .get(url("/v1/campaigns"))
            .bearer_auth(&serve.token)
            .header("host", &host)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), status, "Host: {host}");
        if status == 421 {
            let e: baton_proto::ApiError = r.json().await.unwrap();
            assert_eq!(e.code, "bad-host");
        }
    }
    drop(serve);

    // --open-reads: reads without the token, writes still with it; --public-url adds its name.
    let flags = ["--open-reads", "--public-url", "https://baton.example.com:8443/"];
    let serve = Serve::start_with(&f, port(), &f.dir.join("baton.db"), &flags).await;
    let url = |p: &str| format!("{}{p}", serve.url);
    assert_eq!(
        bare.get(url(&format!("/v1/campaigns/{}/report", v.id))).send().await.unwrap().status().as_u16(),
        200
    );
    let r = bare.post(url(&format!("/v1/campaigns/{}/pause", v.id))).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401, "writes still need the token");
    let r = bare.get(url("/v1/campaigns")).header("host", "BATON.example.com:8443").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200, "the --public-url name");
    let r = bare.get(url("/v1/campaigns")).header("host", "other.example.com").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 421);
    drop(serve);
    f.stop().await;
}

/// Issue 11, item 3: certificates could not be revoked. `baton ca revoke orchestrator` writes
/// `crl.pem` beside `ca.pem`; once the agents read it (SIGHUP), every one of them refuses the
/// revoked certificate, and the one issued in its place works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_orchestrator_certificate_is_refused_by_every_agent() {
    let mut f = local("revoke", LocalOptions { nodes: 3, ..Default::default() }).await;
    let before = client(&f);
    for n in &f.nodes {
        assert!(before.status(&n.name, &n.addr, None, 0).await.is_ok(), "{} answers before", n.name);
    }
    let pki = f.pki.display().to_string();
    let o = Command::new(exe()).args(["ca", "revoke", "orchestrator", "--dir", &pki]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let said = String::from_utf8_lossy(&o.stdout).to_string();
    let serial = said.split("(serial ").nth(1).and_then(|r| r.split(')').next()).unwrap().to_string();
    assert!(f.pki.join("crl.pem").exists());
    // The revoked pair, moved aside, as a stolen copy would be used.
    let stolen = baton_pki::TlsFiles {
        cert: f.pki.join(format!("orchestrator.pem.revoked-{serial}")),
        key: f.pki.join(format!("orchestrator.key.revoked-{serial}")),
        ..baton_pki::TlsFiles::in_dir(&f.pki, "orchestrator")
    };
    for n in &f.nodes {
        let pid = n.pid.load(Ordering::SeqCst);
        assert_ne!(pid, 0, "{} runs", n.name);
        // SAFETY: a signal to a child process this test started.
        assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGHUP) }, 0);
    }
    for n in &f.nodes {
        // A connection made before the revocation is closed too (after its request under
        // way), so the client that held one is refused as well.
        // (Within 4 s: less than the 5 s the client keeps an idle connection and the 10 s the
        // agent waits for a request's headers, so neither of those closes it first.)
        let deadline = Instant::now() + Duration::from_secs(4);
        while before.status(&n.name, &n.addr, None, 0).await.is_ok() {
            assert!(Instant::now() < deadline, "{} keeps a connection of the revoked certificate", n.name);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // New connections: a fresh client per try, so no pooled connection answers.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let c = baton_server::client::AgentClient::new(&stolen).unwrap();
            match c.status(&n.name, &n.addr, None, 0).await {
                Err(_) => break,
                Ok(_) => assert!(Instant::now() < deadline, "{} still takes the revoked certificate", n.name),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Revoking it again is refused; a new certificate under the same name works everywhere.
    let again = Command::new(exe()).args(["ca", "revoke", "orchestrator", "--dir", &pki]).output().unwrap();
    assert_eq!(again.status.code(), Some(2), "{}", String::from_utf8_lossy(&again.stderr));
    let o = Command::new(exe())
        .args(["ca", "issue", "orchestrator", "--role", "orchestrator", "--dir", &pki])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let after = client(&f);
    for n in &f.nodes {
        let st = after.status(&n.name, &n.addr, None, 0).await;
        assert!(st.is_ok(), "{} takes the new certificate: {st:?}", n.name);
    }
    f.stop().await;
}

/// Issue 11, item 6: the HTTP layer's own rejections (a path that does not parse, a body that
/// is not JSON, a wrong content type, no such route, a body too large) came as plain text with
/// statuses the document did not list. Each is JSON `{"code","message"}` now, and documented.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_layers_refusals_are_json_with_documented_statuses() {
    let mut f = local("httperrors", LocalOptions { nodes: 1, ..Default::default() }).await;
    let serve = Serve::start(&f, port()).await;
    let url = |p: &str| format!("{}{p}", serve.url);
    let h = &serve.http;
    let json = "application/json";
    // A client each: the server closes a connection after refusing a body it did not read,
    // and a pooled connection must not carry the next case.
    let fresh = reqwest::Client::new;
    let cases = [
        (
            "bad JSON",
            fresh().post(url("/v1/campaigns")).header("content-type", json).body("{"),
            400,
            "/v1/campaigns",
            "post",
        ),
        ("no content type", fresh().post(url("/v1/campaigns")).body("{}"), 415, "/v1/campaigns", "post"),
        (
            "too large",
            fresh().post(url("/v1/campaigns")).header("content-type", json).body(vec![b' '; 3 << 20]),
            413,
            "/v1/campaigns",
            "post",
        ),
        ("id not a number", fresh().get(url("/v1/campaigns/abc")), 400, "/v1/campaigns/{id}", "get"),
        (
            "after not a number",
            fresh().get(url("/v1/campaigns/1/events?after=x")),
            400,
            "/v1/campaigns/{id}/events",
            "get",
        ),
        ("no such route", fresh().get(url("/v2/nothing")), 404, "", ""),
    ];
    let doc: serde_json::Value = h.get(url("/openapi.json")).send().await.unwrap().json().await.unwrap();
    for (what, req, status, path, method) in cases {
        let r = req.bearer_auth(&serve.token).send().await.unwrap();
        assert_eq!(r.status().as_u16(), status, "{what}");
        let ct = r.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        assert!(ct.starts_with("application/json"), "{what}: content-type {ct}");
        let e: baton_proto::ApiError = r.json().await.unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(!e.code.is_empty() && !e.message.is_empty(), "{what}: {e:?}");
        if !path.is_empty() {
            let documented = &doc["paths"][path][method]["responses"][status.to_string()];
            assert!(documented.is_object(), "{what}: {status} not documented for {method} {path}");
        }
    }
    drop(serve);
    f.stop().await;
}

/// Issue 14: the orchestrator learns each node's time out of service from earlier campaigns in
/// its journal, and the next plan starts the longest first. node3's action takes seconds where
/// the others take a fifth of one; the first campaign knows nothing and starts in file order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_after_another_starts_the_node_that_took_longest() {
    let mut f = local(
        "learned",
        LocalOptions { nodes: 3, action_seconds: "0.2".into(), reboot_ms: 200, ..Default::default() },
    )
    .await;
    std::fs::write(f.nodes[2].dir.join("state/action_seconds"), "2\n").unwrap();
    let serve = Serve::start(&f, port()).await;
    let toml = quick("").replace("max_parallel = 2", "max_parallel = 1");
    let start_of = |journal: &[JournalEntry]| match decoded(&journal[0]) {
        Event::Planned { plan, .. } => plan.start,
        e => panic!("the journal opens with {e:?}"),
    };
    let first = serve.create_and_start(toml.clone()).await;
    let done = serve.wait(first.id, Duration::from_secs(60), |v| settled(v, Phase::Completed)).await;
    assert_eq!(done.updated, 3);
    assert_eq!(start_of(&serve.events(first.id).await), ["node1", "node2", "node3"]);
    let _: CampaignView = serve.post(&format!("/v1/campaigns/{}/rollback", first.id), None).await.unwrap();
    serve.wait(first.id, Duration::from_secs(60), |v| settled(v, Phase::RolledBack)).await;

    let again = serve.create_and_start(toml.clone()).await;
    let start = start_of(&serve.events(again.id).await);
    assert_eq!(start.first().map(String::as_str), Some("node3"), "{start:?}");
    let end = serve.wait(again.id, Duration::from_secs(60), |v| settled(v, Phase::Completed)).await;
    assert_eq!(end.updated, 3);
    budgets_kept(&f, &toml, &serve.events(again.id).await);
    drop(serve);
    f.stop().await;
}

/// The orchestrator's clock, and moves it forward (`--test-clock`).
async fn clock(serve: &Serve, advance_ms: Option<u64>) -> baton_proto::ClockView {
    match advance_ms {
        None => serve.http.get(format!("{}/v1/clock", serve.url)).send().await.unwrap().json().await.unwrap(),
        Some(ms) => serve.post("/v1/clock", Some(serde_json::json!({ "advance_ms": ms }))).await.unwrap(),
    }
}

fn started(v: &CampaignView) -> usize {
    v.nodes.iter().filter(|n| !matches!(n.state.as_str(), "pending" | "not-targeted" | "skipped")).count()
}

/// Issue 12, windows: a campaign whose window opens in two minutes starts no node before it
/// opens, lets the node in flight finish when it closes, and starts the next when it opens
/// again the next day. Real agents; the orchestrator's clock is moved forward by the test
/// (`--test-clock`) instead of waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_start_only_inside_the_maintenance_window() {
    const MIN: u64 = 60_000;
    let mut f = local(
        "window",
        LocalOptions { nodes: 3, action_seconds: "2".into(), reboot_ms: 200, ..Default::default() },
    )
    .await;
    let serve = Serve::start_with(&f, port(), &f.dir.join("baton.db"), &["--test-clock"]).await;
    let now = clock(&serve, None).await;
    assert!(now.settable);
    // A daily one-minute window that opens at the start of the minute after next (UTC, so the
    // test's arithmetic needs no time zone): between one and two minutes from now.
    let opens = (now.now_ms / MIN + 2) * MIN;
    let hm = (opens / MIN) % (24 * 60);
    let extra = format!(
        "timezone = \"UTC\"\nwindows = [{{ days = \"*\", start = \"{:02}:{:02}\", length = \"1m\" }}]\n",
        hm / 60,
        hm % 60
    );
    let toml = quick(&extra).replace("max_parallel = 2", "max_parallel = 1");
    let v = serve.create_and_start(toml.clone()).await;
    // The nodes' auto-updaters are held at the start, window or not; the clock moves on only
    // once their agents have answered (a hold not answered within reboot_timeout fails).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let held = serve
            .events(v.id)
            .await
            .iter()
            .filter(|e| matches!(decoded(e), Event::StepOk { ref step, .. } if step.ends_with("/hold")))
            .count();
        if held == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "{held} of 3 holds answered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Started, and waiting: nothing in flight, and the view says when the window opens.
    let v = serve.view(v.id).await.unwrap();
    assert_eq!(v.phase, Phase::Running);
    assert_eq!((started(&v), v.pending, v.window_opens_at_ms), (0, 3, Some(opens)), "{v:#?}");

    // To one second before it opens: still nothing.
    let t = clock(&serve, Some(opens - 1_000 - clock(&serve, None).await.now_ms)).await;
    assert!(t.now_ms < opens);
    let v = serve.view(v.id).await.unwrap();
    assert_eq!((started(&v), v.window_opens_at_ms), (0, Some(opens)), "{v:#?}");

    // Open: the first node starts (one at a time).
    clock(&serve, Some(2_000)).await;
    let v =
        serve.wait(v.id, Duration::from_secs(30), |v| v.nodes.iter().any(|n| n.state == "updating")).await;
    assert_eq!(started(&v), 1);
    assert_eq!(v.window_opens_at_ms, None);
    // Closed while it updates: it finishes, and nothing else starts.
    let t = clock(&serve, Some(MIN)).await;
    assert!(t.now_ms >= opens + MIN);
    let v = serve.wait(v.id, Duration::from_secs(60), |v| v.updated == 1 && v.active == 0).await;
    assert_eq!((started(&v), v.pending), (1, 2), "{v:#?}");
    let tomorrow = opens + 24 * 60 * MIN;
    assert_eq!(v.window_opens_at_ms, Some(tomorrow), "{v:#?}");
    // `baton status` says so too.
    let out = Command::new(exe())
        .args(["status", &v.id.to_string(), "--server", &serve.url])
        .env("BATON_TOKEN", Serve::TOKEN)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("waiting for its maintenance window"), "{text}");

    // The next day's window: the other two start, one after the other, inside it.
    clock(&serve, Some(tomorrow - clock(&serve, None).await.now_ms)).await;
    let end = serve.wait(v.id, Duration::from_secs(60), |v| settled(v, Phase::Completed)).await;
    assert_eq!(end.updated, 3);
    // Each node was drained inside a window: the journal's step reports are timed.
    let events = serve.events(v.id).await;
    let drained: Vec<u64> = events
        .iter()
        .filter(|e| matches!(decoded(e), Event::StepOk { ref step, .. } if step.ends_with("/drain")))
        .map(|e| e.at_ms)
        .collect();
    assert_eq!(drained.len(), 3);
    assert!(drained[0] >= opens && drained[0] < opens + MIN, "{drained:?}");
    assert!(drained[1..].iter().all(|&t| t >= tomorrow && t < tomorrow + MIN), "{drained:?} {tomorrow}");
    budgets_kept(&f, &toml, &events);
    drop(serve);
    f.stop().await;
}

/// Issue 12, prechecks: a node whose disk check fails (a real 4 MB tmpfs, 10 MB wanted) is never
/// drained, and ends as `on_precheck_fail` says: Skipped, Failed, or Failed with the campaign
/// halted. The other nodes' prechecks pass and they are updated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_precheck_fails_is_never_drained() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: mounting a tmpfs needs root (CI runs as root)");
        return;
    }
    let o = LocalOptions { nodes: 3, action_seconds: "0.2".into(), reboot_ms: 200, ..Default::default() };
    let mut f = LocalFleet::create(&fresh_dir("precheck"), &o).unwrap();
    let small = Tmpfs::mount(f.dir.join("small"), "4m");
    for (i, n) in f.nodes.iter().enumerate() {
        let (path, need) = if i == 1 { (small.0.clone(), "10MB") } else { (f.dir.clone(), "1KB") };
        let cfg = n.dir.join("agent.toml");
        let mut text = std::fs::read_to_string(&cfg).unwrap();
        text.push_str(&format!(
            "\n[[precheck]]\nname = \"var-space\"\nkind = \"disk\"\npath = \"{}\"\nmin_free = \"{need}\"\n",
            path.display()
        ));
        std::fs::write(&cfg, text).unwrap();
    }
    start_and_wait(&mut f, o.reboot_ms).await;
    let serve = Serve::start(&f, port()).await;

    let node2_drained = |events: &[JournalEntry]| {
        events.iter().any(|e| {
            matches!(decoded(e), Event::StepOk { ref node, ref step, .. } | Event::StepFailed { ref node, ref step, .. }
                if node == "node2" && step.ends_with("/drain"))
        })
    };
    // skip: the others are updated, node2 is skipped with the reason, untouched.
    let toml = quick("on_precheck_fail = \"skip\"\n");
    let v = serve.create_and_start(toml.clone()).await;
    let v = serve.wait(v.id, Duration::from_secs(60), |v| settled(v, Phase::Completed)).await;
    assert_eq!((v.updated, v.skipped, v.failed), (2, 1, 0), "{v:#?}");
    let n2 = &v.nodes[1];
    assert_eq!(n2.state, "skipped");
    let why = n2.reason.as_deref().unwrap_or_default();
    assert!(why.contains("precheck failed") && why.contains("10.0 MB needed"), "{why}");
    assert!(!n2.out_of_service);
    let events = serve.events(v.id).await;
    assert!(!node2_drained(&events));
    budgets_kept(&f, &toml, &events);
    assert_eq!(versions(&f).await, vec![Some("1.1".into()), Some("1.0".into()), Some("1.1".into())]);
    // The report has what the check saw.
    let report = serde_json::to_value(serve.report(v.id).await).unwrap();
    let text = report.to_string();
    assert!(text.contains("FAILED var-space") && text.contains("10.0 MB needed"), "{text}");

    // fail: node2 is Failed (counted), still in service.
    let toml = quick("on_precheck_fail = \"fail\"\nmax_failed_nodes = 1\nnodes = [\"node2\"]\n")
        .replace("max_failed_nodes = 0\n", "");
    let v = serve.create_and_start(toml).await;
    let v = serve.wait(v.id, Duration::from_secs(60), |v| settled(v, Phase::Completed)).await;
    assert_eq!((v.updated, v.failed), (0, 1), "{v:#?}");
    assert!(!v.nodes[1].out_of_service);
    assert!(!node2_drained(&serve.events(v.id).await));

    // halt: the campaign halts at once, whatever max_failed_nodes allows.
    let toml = quick("on_precheck_fail = \"halt\"\nmax_failed_nodes = 5\nnodes = [\"node2\"]\n")
        .replace("max_failed_nodes = 0\n", "");
    let v = serve.create_and_start(toml).await;
    let v = serve.wait(v.id, Duration::from_secs(60), |v| v.phase == Phase::Halted && v.active == 0).await;
    assert_eq!(v.nodes[1].state, "failed", "{v:#?}");
    assert!(!node2_drained(&serve.events(v.id).await));
    let _: CampaignView = serve.post(&format!("/v1/campaigns/{}/abort", v.id), None).await.unwrap();
    assert_eq!(versions(&f).await[1].as_deref(), Some("1.0"));
    drop(serve);
    f.stop().await;
    drop(small);
}

/// Issue 12: `require_all_up` refuses a start while an agent of the fleet does not answer
/// (a real agent, stopped with SIGSTOP), naming it; `before_start` runs on the orchestrator's
/// host with the campaign's name, and its failure refuses the start with what it printed, in
/// the journal and the report. Once both pass, the campaign runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_waits_for_every_node_up_and_for_before_start() {
    let mut f = local(
        "before-start",
        LocalOptions { nodes: 3, action_seconds: "0.2".into(), reboot_ms: 200, ..Default::default() },
    )
    .await;
    // The hook records its argument and fails until a file says otherwise.
    let hook = f.dir.join("backup.sh");
    let (ran, allow) = (f.dir.join("backup.ran"), f.dir.join("backup.ok"));
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\necho \"$1\" >> {ran}\nif [ -e {allow} ]; then echo backed up; else echo 'backup store unreachable' >&2; exit 3; fi\n",
            ran = ran.display(),
            allow = allow.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    let serve = Serve::start_with(
        &f,
        port(),
        &f.dir.join("baton.db"),
        &["--allow-hook", &hook.display().to_string()],
    )
    .await;
    // A program the orchestrator was not told to allow is refused at creation.
    let other = quick("before_start = [\"/bin/sh\", \"-c\", \"id\"]\n");
    let (code, text) = serve
        .post::<CampaignView>("/v1/campaigns", Some(serde_json::json!({ "toml": other })))
        .await
        .unwrap_err();
    assert_eq!(code, 422, "{text}");
    assert!(text.contains("hook-not-allowed") && text.contains("--allow-hook /bin/sh"), "{text}");
    let toml =
        quick(&format!("require_all_up = true\nbefore_start = [\"{}\", \"{{campaign}}\"]\n", hook.display()));
    let v: CampaignView =
        serve.post("/v1/campaigns", Some(serde_json::json!({ "toml": toml }))).await.unwrap();
    let start = format!("/v1/campaigns/{}/start", v.id);

    // node3's agent hangs: refused, naming it; the hook did not even run.
    let pid = f.nodes[2].pid.load(Ordering::SeqCst);
    assert!(pid != 0 && unsafe { libc::kill(pid as i32, libc::SIGSTOP) } == 0);
    let (code, text) = serve.post::<CampaignView>(&start, None).await.unwrap_err();
    unsafe { libc::kill(pid as i32, libc::SIGCONT) };
    assert_eq!(code, 409, "{text}");
    assert!(text.contains("start-refused") && text.contains("node3") && !text.contains("node1"), "{text}");
    assert!(!ran.exists());

    // All up, the hook fails: refused with its output, journaled, nothing started.
    let (code, text) = serve.post::<CampaignView>(&start, None).await.unwrap_err();
    assert_eq!(code, 409, "{text}");
    assert!(text.contains("before-start-failed") && text.contains("backup store unreachable"), "{text}");
    assert_eq!(std::fs::read_to_string(&ran).unwrap(), "demo-1.1\n");
    let v = serve.view(v.id).await.unwrap();
    assert_eq!((v.phase, started(&v)), (Phase::Planned, 0));
    let hooks: Vec<(bool, String)> = serve
        .events(v.id)
        .await
        .iter()
        .filter_map(|e| match decoded(e) {
            Event::Hook { ok, output, .. } => Some((ok, output)),
            _ => None,
        })
        .collect();
    assert_eq!(hooks.len(), 1);
    assert!(!hooks[0].0 && hooks[0].1.contains("backup store unreachable"), "{hooks:?}");

    // The hook passes: started and completed; the report has both runs of the hook.
    std::fs::write(&allow, "").unwrap();
    let _: CampaignView = serve.post(&start, None).await.unwrap();
    let end = serve.wait(v.id, Duration::from_secs(60), |v| settled(v, Phase::Completed)).await;
    assert_eq!(end.updated, 3);
    let r = serve.report(v.id).await;
    let runs: Vec<(bool, bool)> = r
        .hooks
        .iter()
        .map(|h| (h.ok, h.output.contains("backed up") || h.output.contains("unreachable")))
        .collect();
    assert_eq!(runs, vec![(false, true), (true, true)], "{:?}", r.hooks);
    drop(serve);
    f.stop().await;
}

/// Issue 12, the journal check: after its reboot, node2's system journal has an error line
/// (journalctl's recorded JSON output, printed only once the node has a new boot id, as
/// `journalctl -b` would: this machine runs no systemd journal), and it fails verification
/// with that line in its reason; an error the check ignores does not count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_errors_in_its_journal_after_the_reboot_fails_verification() {
    let o = LocalOptions { nodes: 3, action_seconds: "0.2".into(), reboot_ms: 200, ..Default::default() };
    let mut f = LocalFleet::create(&fresh_dir("journal-check"), &o).unwrap();
    let n2 = f.nodes[1].dir.clone();
    std::fs::write(
        n2.join("journal.json"),
        concat!(
            r#"{"PRIORITY":"3","SYSLOG_IDENTIFIER":"kernel","MESSAGE":"ACPI Error: AE_NOT_FOUND, While resolving a named reference"}"#,
            "\n",
            r#"{"PRIORITY":"3","_SYSTEMD_UNIT":"myapp.service","MESSAGE":"cannot open /var/lib/myapp/db: Permission denied"}"#,
            "\n"
        ),
    )
    .unwrap();
    let script = format!("cmp -s {d}/boot_id {d}/boot_id.first || cat {d}/journal.json", d = n2.display());
    let cfg = n2.join("agent.toml");
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(&format!(
        "\n[[check]]\nname = \"journal\"\nkind = \"journal\"\nignore = [\"ACPI Error\"]\ncommand = [\"/bin/sh\", \"-c\", \"{script}\"]\n"
    ));
    std::fs::write(&cfg, text).unwrap();
    start_and_wait(&mut f, o.reboot_ms).await;
    std::fs::copy(n2.join("boot_id"), n2.join("boot_id.first")).unwrap();
    let serve = Serve::start(&f, port()).await;
    let toml =
        quick("nodes = [\"node1\", \"node2\"]\n").replace("ready_timeout = \"1m\"", "ready_timeout = \"4s\"");
    let v = serve.create_and_start(toml).await;
    let end = serve.wait(v.id, Duration::from_secs(60), |v| v.phase == Phase::Halted && v.active == 0).await;
    let (n1, n2v) = (&end.nodes[0], &end.nodes[1]);
    assert_eq!((n1.state.as_str(), n2v.state.as_str()), ("done", "failed"), "{end:#?}");
    let why = n2v.reason.as_deref().unwrap_or_default();
    assert!(why.contains("not healthy within ready_timeout"), "{why}");
    assert!(why.contains("myapp.service: cannot open /var/lib/myapp/db: Permission denied"), "{why}");
    assert!(!why.contains("ACPI"), "{why}");
    // The report says so too.
    let r = serve.report(v.id).await;
    let failure =
        r.nodes.iter().find(|n| n.name == "node2").and_then(|n| n.failure.clone()).unwrap_or_default();
    assert!(failure.contains("cannot open /var/lib/myapp/db"), "{failure}");
    drop(serve);
    f.stop().await;
}

/// A stand-in for systemctl (this machine runs no systemd). As with systemd, a stop and a
/// runtime mask last until the next boot (their files are named by the boot id), and an enabled
/// unit runs at boot unless masked; every call is logged.
const FAKE_SYSTEMCTL: &str = r#"#!/bin/sh
here="$(dirname "$0")"; d="$here/units"; b="$(cat "$here/boot_id")"; mkdir -p "$d"
echo "$1 $2" >> "$here/systemctl.log"
case "$1" in
  is-active) if [ -e "$d/$2.enabled" ]; then ! test -e "$d/$2.stopped.$b"; else test -e "$d/$2.started.$b"; fi ;;
  stop) touch "$d/$2.stopped.$b"; rm -f "$d/$2.started.$b" ;;
  start) if [ -e "$d/$2.masked.$b" ]; then echo "$2 is masked" >&2; exit 1; fi; rm -f "$d/$2.stopped.$b"; touch "$d/$2.started.$b" ;;
  mask) touch "$d/$2.masked.$b" ;;
  unmask) rm -f "$d/$2.masked.$b" ;;
  *) exit 2 ;;
esac
"#;

/// What a node's two held units are in its current boot: (timer running, timer masked, service
/// running, service masked). The timer is enabled; the service is not.
fn units_of(node_dir: &Path) -> (bool, bool, bool, bool) {
    let u = node_dir.join("units");
    let b = std::fs::read_to_string(node_dir.join("boot_id")).unwrap_or_default().trim().to_string();
    let has = |f: String| u.join(f).exists();
    let t = "apt-daily-upgrade.timer";
    let s = "unattended-upgrades.service";
    (
        (has(format!("{t}.enabled")) && !has(format!("{t}.stopped.{b}"))) || has(format!("{t}.started.{b}")),
        has(format!("{t}.masked.{b}")),
        has(format!("{s}.started.{b}")),
        has(format!("{s}.masked.{b}")),
    )
}

/// Issue 12, auto-updaters held: while the campaign runs, every targeted node's held units are
/// stopped and masked; afterwards each is back as it was (the running timer runs again, the
/// stopped service stays stopped), also with the orchestrator SIGKILLed mid-campaign.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_updaters_are_held_during_a_campaign_and_given_back_after_a_crash() {
    let o = LocalOptions { nodes: 3, action_seconds: "1.5".into(), reboot_ms: 200, ..Default::default() };
    let mut f = LocalFleet::create(&fresh_dir("hold"), &o).unwrap();
    use std::os::unix::fs::PermissionsExt;
    for n in &f.nodes {
        let ctl = n.dir.join("fakectl");
        std::fs::write(&ctl, FAKE_SYSTEMCTL).unwrap();
        std::fs::set_permissions(&ctl, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::create_dir_all(n.dir.join("units")).unwrap();
        std::fs::write(n.dir.join("units/apt-daily-upgrade.timer.enabled"), "").unwrap();
        let c = ctl.display();
        let cfg = n.dir.join("agent.toml");
        let mut text = std::fs::read_to_string(&cfg).unwrap();
        text.push_str(&format!(
            "\n[hold]\nunits = [\"apt-daily-upgrade.timer\", \"unattended-upgrades.service\"]\n\
             is_active_command = [\"{c}\", \"is-active\", \"{{unit}}\"]\nstop_command = [\"{c}\", \"stop\", \"{{unit}}\"]\n\
             mask_command = [\"{c}\", \"mask\", \"{{unit}}\"]\nunmask_command = [\"{c}\", \"unmask\", \"{{unit}}\"]\n\
             start_command = [\"{c}\", \"start\", \"{{unit}}\"]\n"
        ));
        std::fs::write(&cfg, text).unwrap();
    }
    start_and_wait(&mut f, o.reboot_ms).await;
    let db = f.dir.join("baton.db");
    let api = port();
    let mut serve = Serve::start_on(&f, api, &db).await;
    let toml = quick("max_parallel = 1\n").replace("max_parallel = 2\n", "");
    let v = serve.create_and_start(toml.clone()).await;
    // Mid-campaign, one node rebooted and done, another in flight: held on every targeted node,
    // on the done one again after its reboot (its agent applies a hold not yet released when it
    // starts).
    let active = |st: &str| {
        ["prechecking", "draining", "updating", "rebooting", "verifying", "restoring"].contains(&st)
    };
    serve
        .wait(v.id, Duration::from_secs(30), |v| {
            v.nodes.iter().any(|n| n.state == "done") && v.nodes.iter().any(|n| active(&n.state))
        })
        .await;
    assert!(f.reboots.load(Ordering::SeqCst) >= 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f.nodes.iter().all(|n| units_of(&n.dir) == (false, true, false, true)) {
        assert!(
            Instant::now() < deadline,
            "{:?}",
            f.nodes.iter().map(|n| units_of(&n.dir)).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mid = serve.view(v.id).await.unwrap();
    assert!(mid.phase == Phase::Running && mid.updated < 3, "{mid:#?}");
    serve.sigkill();
    drop(serve);
    let serve = Serve::start_on(&f, api, &db).await;
    let end = serve.wait(v.id, Duration::from_secs(90), |v| settled(v, Phase::Completed)).await;
    assert_eq!(end.updated, 3);
    // Given back as they were: the timer runs again, the service stays stopped, nothing masked.
    for n in &f.nodes {
        assert_eq!(units_of(&n.dir), (true, false, false, false), "{}", n.name);
        assert!(!n.dir.join("state/held.json").exists(), "{}", n.name);
        let log = std::fs::read_to_string(n.dir.join("systemctl.log")).unwrap();
        assert!(
            log.contains("mask apt-daily-upgrade.timer") && log.contains("start apt-daily-upgrade.timer"),
            "{log}"
        );
        assert!(!log.contains("start unattended-upgrades.service"), "{log}");
    }
    budgets_kept(&f, &toml, &serve.events(v.id).await);
    // Each hold and release step ran once on each agent, the restart's resends answered from
    // their journals.
    steps_ran_once(&f).await;
    drop(serve);
    f.stop().await;
}

/// Issue 12, scan: `baton scan` against real agents at mixed versions reports each node (at the
/// target, behind with what its scan action lists, not answering), as JSON and text; the
/// orchestrator's `GET /v1/scan` agrees; and a campaign created afterwards skips the node
/// whose agent says it is at the target, although the fleet file says 1.0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_reports_each_node_and_a_campaign_skips_the_compliant_ones() {
    let o = LocalOptions { nodes: 3, action_seconds: "0.2".into(), reboot_ms: 200, ..Default::default() };
    let mut f = LocalFleet::create(&fresh_dir("scan"), &o).unwrap();
    let cfg = f.nodes[1].dir.join("agent.toml");
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(
        "\n[[action]]\nname = \"scan\"\nkind = \"script\"\nargv = [\"/bin/echo\", \"myapp 1.1\"]\n",
    );
    std::fs::write(&cfg, text).unwrap();
    set_version(&f, 0, "1.1");
    start_and_wait(&mut f, o.reboot_ms).await;
    assert!(f.kill_agent(2, false));
    let scan = |format: &str| {
        let o = Command::new(exe())
            .args(["scan", "--fleet", &f.fleet_file.display().to_string(), "--target", "1.1"])
            .args(["--pki", &f.pki.display().to_string(), "--format", format])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    let r: baton_proto::ScanReport = serde_json::from_str(&scan("json")).unwrap();
    let rows: Vec<(&str, &str, Option<&str>, Vec<String>)> = r
        .nodes
        .iter()
        .map(|n| (n.node.as_str(), n.state.as_str(), n.version.as_deref(), n.updates.clone()))
        .collect();
    assert_eq!(
        rows,
        vec![
            ("node1", "compliant", Some("1.1"), vec![]),
            ("node2", "needs-update", Some("1.0"), vec!["myapp 1.1".to_string()]),
            ("node3", "unreachable", None, vec![]),
        ]
    );
    assert_eq!((r.totals.compliant, r.totals.needs_update, r.totals.unreachable), (1, 1, 1));
    assert!(r.nodes[2].reason.as_deref().unwrap_or("").contains("does not answer"), "{:?}", r.nodes[2]);
    let text = scan("text");
    assert!(
        text.contains("node2") && text.contains("lacks: myapp 1.1") && text.contains("1 compliant, 1 need"),
        "{text}"
    );
    assert!(scan("html").contains("class=\"c unreachable\""));

    let serve = Serve::start(&f, port()).await;
    let api: baton_proto::ScanReport = serve
        .http
        .get(format!("{}/v1/scan?target=1.1", serve.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        api.nodes.iter().map(|n| n.state.as_str()).collect::<Vec<_>>(),
        ["compliant", "needs-update", "unreachable"]
    );
    // A campaign for node1 and node2: node1 is skipped on its agent's word.
    let toml = quick("nodes = [\"node1\", \"node2\"]\n");
    let v = serve.create_and_start(toml).await;
    let end = serve.wait(v.id, Duration::from_secs(60), |v| settled(v, Phase::Completed)).await;
    assert_eq!((end.updated, end.skipped), (1, 1), "{end:#?}");
    assert_eq!(end.nodes[0].reason.as_deref(), Some("already at 1.1"));
    drop(serve);
    f.stop().await;
}

/// Builds a Debian package `baton-testpkg` at `version` in `out`.
fn build_deb(work: &Path, out: &Path, version: &str) {
    let root = work.join(format!("pkg-{version}"));
    std::fs::create_dir_all(root.join("DEBIAN")).unwrap();
    std::fs::create_dir_all(root.join("usr/share/baton-testpkg")).unwrap();
    std::fs::write(
        root.join("DEBIAN/control"),
        format!(
            "Package: baton-testpkg\nVersion: {version}\nArchitecture: all\nMaintainer: baton tests <tests@baton.invalid>\nDescription: a package baton's tests install and roll back\n"
        ),
    )
    .unwrap();
    std::fs::write(root.join("usr/share/baton-testpkg/version"), format!("{version}\n")).unwrap();
    let deb = out.join(format!("baton-testpkg_{version}_all.deb"));
    let st = Command::new("dpkg-deb")
        .args(["--build", "--root-owner-group"])
        .arg(&root)
        .arg(&deb)
        .status()
        .unwrap();
    assert!(st.success(), "dpkg-deb --build {}", root.display());
}

/// Undoes what the apt test did to this machine, also when it fails half way.
struct AptCleanup {
    list: PathBuf,
}

impl Drop for AptCleanup {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", "baton-testpkg"]).output();
        let _ = std::fs::remove_file(&self.list);
        // The package lists apt fetched from the local repository (named after its path).
        if let Ok(dir) = std::fs::read_dir("/var/lib/apt/lists") {
            for e in dir.flatten() {
                if e.file_name().to_string_lossy().contains("baton-apt-repo") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
}

/// Through a real agent whose actions `upgrade`, `rollback` and `scan` are of `kind` for
/// `pkg` (installed at 1.0, 1.1 in a local repository), with `version_command` reading the
/// package manager's record: the scan lists `listed`, the upgrade installs 1.1, the scan then
/// lists nothing, and the rollback brings 1.0 back; the package's file says so each time.
async fn package_round_trip(
    f: &mut LocalFleet,
    reboot_ms: u64,
    kind: &str,
    pkg: &str,
    version_command: &str,
    listed: &str,
) {
    let cfg = f.nodes[0].dir.join("agent.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let head = &text[..text.find("[[action]]").unwrap()];
    let tail = &text[text.find("[[check]]").unwrap()..];
    let head = head.replace(
        "version_command = [\"cat\", \"{state_dir}/version\"]",
        &format!("version_command = {version_command}"),
    );
    let actions = ["upgrade", "rollback", "scan"]
        .map(|a| {
            format!(
                "[[action]]\nname = \"{a}\"\nkind = \"{kind}\"\npackage = \"{pkg}\"\nreboot = \"never\"\n\n"
            )
        })
        .concat();
    std::fs::write(&cfg, format!("{head}{actions}{tail}")).unwrap();
    start_and_wait(f, reboot_ms).await;
    let c = client(f);
    let (node, addr) = ("node1", f.nodes[0].addr.clone());
    let installed = || std::fs::read_to_string(format!("/usr/share/{pkg}/version")).unwrap();

    let before = c.conn(node, &addr).scan().await.unwrap();
    assert_eq!(
        (before.version.as_deref(), before.updates.clone()),
        (Some("1.0"), vec![listed.to_string()]),
        "{before:?}"
    );
    let run = |id: &str, action: &str, version: &str| {
        let req = StepRequest {
            action: Some(action.into()),
            version: Some(version.into()),
            ..StepRequest::new(format!("{kind}/node1/0/{id}"), StepKind::Action)
        };
        let (c, addr) = (c.clone(), addr.clone());
        async move {
            let mut conn = c.conn(node, &addr);
            let mut st = conn.start_step(&req).await.unwrap();
            while st.state == baton_proto::StepState::Running {
                st = conn.step(&req.id, 5_000).await.unwrap();
            }
            st
        }
    };
    let up = run("update", "upgrade", "1.1").await;
    assert_eq!((up.state, up.version.as_deref()), (baton_proto::StepState::Ok, Some("1.1")), "{up:?}");
    assert_eq!(installed(), "1.1\n");
    let after = c.conn(node, &addr).scan().await.unwrap();
    assert_eq!((after.version.as_deref(), after.updates.len()), (Some("1.1"), 0), "{after:?}");
    let back = run("rollback", "rollback", "1.0").await;
    assert_eq!((back.state, back.version.as_deref()), (baton_proto::StepState::Ok, Some("1.0")), "{back:?}");
    assert_eq!(installed(), "1.0\n");
}

/// Issue 12, real package managers: the agent's `apt` action had never run against apt. Two
/// versions of a package built with dpkg-deb are served as a local `file:` repository; through
/// a real agent, the scan lists 1.1 as missing, the upgrade installs it with the real apt-get
/// and dpkg (the version read from dpkg's record), the scan then lists nothing, and a rollback
/// brings back 1.0. Root only (CI runs as root); the machine's sources are restored after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apt_installs_scans_and_rolls_back_a_real_package_through_the_agent() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: installing packages with apt needs root (CI runs as root)");
        return;
    }
    let o = LocalOptions { nodes: 1, action_seconds: "0".into(), reboot_ms: 200, ..Default::default() };
    let mut f = LocalFleet::create(&fresh_dir("apt"), &o).unwrap();
    let repo = f.dir.join("baton-apt-repo");
    std::fs::create_dir_all(&repo).unwrap();
    build_deb(&f.dir, &repo, "1.0");
    build_deb(&f.dir, &repo, "1.1");
    let scan =
        Command::new("dpkg-scanpackages").args(["--multiversion", "."]).current_dir(&repo).output().unwrap();
    assert!(scan.status.success(), "{}", String::from_utf8_lossy(&scan.stderr));
    std::fs::write(repo.join("Packages"), &scan.stdout).unwrap();
    let list = PathBuf::from("/etc/apt/sources.list.d/baton-test.list");
    let _cleanup = AptCleanup { list: list.clone() };
    std::fs::write(&list, format!("deb [trusted=yes] file:{} ./\n", repo.display())).unwrap();
    // Only this source is fetched (no network).
    let up = Command::new("apt-get")
        .args(["update", "-q", "-o", &format!("Dir::Etc::SourceList={}", list.display())])
        .args(["-o", "Dir::Etc::SourceParts=-", "-o", "APT::Get::List-Cleanup=0"])
        .output()
        .unwrap();
    assert!(up.status.success(), "{}", String::from_utf8_lossy(&up.stderr));
    let i = Command::new("dpkg").arg("-i").arg(repo.join("baton-testpkg_1.0_all.deb")).output().unwrap();
    assert!(i.status.success(), "{}", String::from_utf8_lossy(&i.stderr));

    // The node's agent: apt actions for the package, its scan, and dpkg's record as its version.
    let version_command = "[\"dpkg-query\", \"-W\", \"-f=${Version}\", \"baton-testpkg\"]";
    package_round_trip(&mut f, o.reboot_ms, "apt", "baton-testpkg", version_command, "baton-testpkg 1.1")
        .await;
    f.stop().await;
}

/// Builds an rpm `baton-testrpm` at `version` (release 1, noarch) under `out` with rpmbuild.
fn build_rpm(work: &Path, out: &Path, version: &str) {
    let spec = work.join(format!("baton-testrpm-{version}.spec"));
    std::fs::write(
        &spec,
        format!(
            "Name: baton-testrpm\nVersion: {version}\nRelease: 1\nSummary: a package baton's tests install and roll back\n\
             License: MIT\nBuildArch: noarch\n%description\nbaton's dnf test package.\n%install\n\
             mkdir -p %{{buildroot}}/usr/share/baton-testrpm\necho {version} > %{{buildroot}}/usr/share/baton-testrpm/version\n\
             %files\n/usr/share/baton-testrpm/version\n"
        ),
    )
    .unwrap();
    let o = Command::new("rpmbuild")
        .arg("--define")
        .arg(format!("_topdir {}", work.join(format!("rpmbuild-{version}")).display()))
        .arg("--define")
        .arg(format!("_rpmdir {}", out.display()))
        .args(["--define", "_build_id_links none", "-bb"])
        .arg(&spec)
        .output()
        .unwrap();
    assert!(o.status.success(), "rpmbuild {}: {}", spec.display(), String::from_utf8_lossy(&o.stderr));
}

/// Undoes what the dnf test did to this machine, also when it fails half way.
struct DnfCleanup {
    repo: PathBuf,
}

impl Drop for DnfCleanup {
    fn drop(&mut self) {
        let _ = Command::new("rpm").args(["-e", "--nodeps", "baton-testrpm"]).output();
        let _ = std::fs::remove_file(&self.repo);
    }
}

/// Issue 12, real package managers: the same for `dnf` (Debian's dnf, rpm and createrepo-c
/// packages): two rpms built with rpmbuild served as a local repository (createrepo_c, a
/// `file://` baseurl); through a real agent, the scan (`dnf check-update`) lists 1.1, the
/// upgrade (`dnf install baton-testrpm-1.1`) installs it (the version read from rpm's record),
/// the scan then lists nothing, and a rollback (`dnf install baton-testrpm-1.0`, a downgrade)
/// brings back 1.0. Root only (CI runs as root); the repository file is removed after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dnf_installs_scans_and_rolls_back_a_real_package_through_the_agent() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: installing packages with dnf needs root (CI runs as root)");
        return;
    }
    let o = LocalOptions { nodes: 1, action_seconds: "0".into(), reboot_ms: 200, ..Default::default() };
    let mut f = LocalFleet::create(&fresh_dir("dnf"), &o).unwrap();
    let repo = f.dir.join("baton-dnf-repo");
    std::fs::create_dir_all(&repo).unwrap();
    build_rpm(&f.dir, &repo, "1.0");
    build_rpm(&f.dir, &repo, "1.1");
    let c = Command::new("createrepo_c").arg("-q").arg(&repo).output().unwrap();
    assert!(c.status.success(), "{}", String::from_utf8_lossy(&c.stderr));
    std::fs::create_dir_all("/etc/yum.repos.d").unwrap();
    let file = PathBuf::from("/etc/yum.repos.d/baton-test.repo");
    let _cleanup = DnfCleanup { repo: file.clone() };
    // Read afresh every time: a cache of an earlier run's repository must not be used.
    std::fs::write(
        &file,
        format!(
            "[baton-test]\nname=baton test\nbaseurl=file://{}\ngpgcheck=0\nmetadata_expire=0\n",
            repo.display()
        ),
    )
    .unwrap();
    let i = Command::new("dnf").args(["-y", "-q", "install", "baton-testrpm-1.0"]).output().unwrap();
    assert!(i.status.success(), "{}", String::from_utf8_lossy(&i.stderr));

    let version_command = "[\"rpm\", \"-q\", \"--qf\", \"%{VERSION}\", \"baton-testrpm\"]";
    package_round_trip(&mut f, o.reboot_ms, "dnf", "baton-testrpm", version_command, "baton-testrpm 1.1-1")
        .await;
    f.stop().await;
}

/// Two starts of a campaign with a `before_start` hook at the same instant: the hook runs once,
/// one start is taken and the other refused (the campaign is running by then).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_starts_at_once_run_the_hook_once() {
    let mut f = local(
        "two-starts",
        LocalOptions { nodes: 2, action_seconds: "0.2".into(), reboot_ms: 200, ..Default::default() },
    )
    .await;
    let hook = f.dir.join("hook.sh");
    let ran = f.dir.join("hook.ran");
    std::fs::write(&hook, format!("#!/bin/sh\necho run >> {}\nsleep 0.5\n", ran.display())).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    let serve = Serve::start_with(
        &f,
        port(),
        &f.dir.join("baton.db"),
        &["--allow-hook", &hook.display().to_string()],
    )
    .await;
    let toml = quick(&format!("before_start = [\"{}\"]\n", hook.display()));
    let v: CampaignView =
        serve.post("/v1/campaigns", Some(serde_json::json!({ "toml": toml }))).await.unwrap();
    let start = format!("/v1/campaigns/{}/start", v.id);
    let barrier = tokio::sync::Barrier::new(2);
    let go = || async {
        barrier.wait().await;
        serve.post::<CampaignView>(&start, None).await
    };
    let (a, b) = tokio::join!(go(), go());
    let codes: Vec<u16> = [&a, &b].iter().map(|r| r.as_ref().map(|_| 200).unwrap_or_else(|e| e.0)).collect();
    let mut sorted = codes.clone();
    sorted.sort();
    assert_eq!(sorted, vec![200, 409], "{a:?} {b:?}");
    assert_eq!(std::fs::read_to_string(&ran).unwrap(), "run\n");
    serve.wait(v.id, Duration::from_secs(60), |v| settled(v, Phase::Completed)).await;
    drop(serve);
    f.stop().await;
}

/// Runs `baton schedule ARGS...` against `serve`; its exit code and standard output.
fn schedule_cli(serve: &Serve, args: &[&str]) -> (i32, String, String) {
    let o = Command::new(exe())
        .arg("schedule")
        .args(args)
        .args(["--server", &serve.url])
        .env("BATON_TOKEN", Serve::TOKEN)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).to_string(),
        String::from_utf8_lossy(&o.stderr).to_string(),
    )
}

/// Waits until schedule `name` has journaled `n` runs; returns them.
async fn runs(serve: &Serve, name: &str, n: usize) -> Vec<baton_proto::ScheduleRun> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r: Vec<baton_proto::ScheduleRun> = serve.get_json(&format!("/v1/schedules/{name}/runs")).await;
        if r.len() >= n {
            return r;
        }
        assert!(Instant::now() < deadline, "schedule {name} ran {} times, not {n}: {r:#?}", r.len());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Moves the test clock to one second past the next whole minute (when "* * * * *" is due).
async fn to_next_minute(serve: &Serve) {
    const MIN: u64 = 60_000;
    let now = clock(serve, None).await.now_ms;
    clock(serve, Some((now / MIN + 1) * MIN + 1_000 - now)).await;
}

/// Issue 12, schedules: a schedule added for every minute creates and starts exactly one
/// campaign while the fleet is behind, none while that campaign holds the fleet, and none once
/// every node is at the target; each run journals what it did or why not. Real agents; the
/// orchestrator's clock is moved by the test (`--test-clock`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_for_every_minute_starts_one_campaign_while_behind_and_none_after() {
    let mut f = local(
        "schedule",
        LocalOptions { nodes: 3, action_seconds: "0.3".into(), reboot_ms: 200, ..Default::default() },
    )
    .await;
    let serve = Serve::start_with(&f, port(), &f.dir.join("baton.db"), &["--test-clock"]).await;
    // Timeouts far longer than the clock's jumps, so that moving it fails nothing.
    let toml = quick("schedule = \"* * * * *\"\ntimezone = \"Europe/Berlin\"\n")
        .replace("reboot_timeout = \"1m\"", "reboot_timeout = \"1h\"")
        .replace("ready_timeout = \"1m\"", "ready_timeout = \"1h\"")
        .replace("name = \"demo-1.1\"", "name = \"monthly\"");
    let file = f.dir.join("monthly.toml");
    std::fs::write(&file, &toml).unwrap();
    let (code, out, err) = schedule_cli(&serve, &["add", &file.display().to_string()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("schedule monthly added: * * * * * (Europe/Berlin)") && out.contains("next run"),
        "{out}"
    );
    // The same name again is refused; a file without `schedule` is bad input.
    let (code, _, err) = schedule_cli(&serve, &["add", &file.display().to_string()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("a schedule named monthly exists"), "{err}");
    let plain = f.dir.join("plain.toml");
    std::fs::write(&plain, quick("")).unwrap();
    let (code, _, err) = schedule_cli(&serve, &["add", &plain.display().to_string()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("has no `schedule`"), "{err}");
    let (_, out, _) = schedule_cli(&serve, &["list"]);
    assert!(out.contains("monthly") && out.contains("none yet"), "{out}");
    let list: Vec<baton_proto::ScheduleView> = serve.get_json("/v1/schedules").await;
    assert_eq!(list.len(), 1);
    let next = list[0].next_run_ms.unwrap();
    assert_eq!(next % 60_000, 0);

    // Due, and every node is behind: one campaign, created and started by the schedule.
    to_next_minute(&serve).await;
    let r = runs(&serve, "monthly", 1).await;
    assert_eq!((r[0].outcome.as_str(), r[0].due_ms), ("started", next), "{r:#?}");
    let id = r[0].campaign.unwrap();
    // Paused by an operator, it holds the fleet: the next run creates nothing, and says why.
    let _: CampaignView = serve.post(&format!("/v1/campaigns/{id}/pause"), None).await.unwrap();
    to_next_minute(&serve).await;
    let r = runs(&serve, "monthly", 2).await;
    assert_eq!(r[1].outcome, "skipped", "{r:#?}");
    assert!(r[1].reason.as_deref().unwrap().contains(&format!("(id {id}) holds fleet")), "{r:#?}");
    let _: CampaignView = serve.post(&format!("/v1/campaigns/{id}/resume"), None).await.unwrap();
    let end = serve.wait(id, Duration::from_secs(60), |v| settled(v, Phase::Completed)).await;
    assert_eq!(end.updated, 3);
    let start = serve.events(id).await.into_iter().find_map(|e| match decoded(&e) {
        Event::Start { by } => Some(by),
        _ => None,
    });
    assert_eq!(start.as_deref(), Some("schedule monthly"));

    // Every node at the target: due twice more, nothing created.
    for n in [3, 4] {
        to_next_minute(&serve).await;
        let r = runs(&serve, "monthly", n).await;
        assert_eq!(r[n - 1].outcome, "skipped", "{r:#?}");
        assert!(r[n - 1].reason.as_deref().unwrap().contains("no targeted node is behind"), "{r:#?}");
    }
    let all: Vec<CampaignView> = serve.get_json("/v1/campaigns").await;
    assert_eq!(all.len(), 1, "exactly one campaign: {all:#?}");
    let (code, out, _) = schedule_cli(&serve, &["runs", "monthly"]);
    assert_eq!(code, 0);
    assert!(
        out.contains(&format!("started campaign {id}")) && out.contains("skipped: no targeted node"),
        "{out}"
    );
    let (code, out, _) = schedule_cli(&serve, &["remove", "monthly"]);
    assert_eq!(code, 0, "{out}");
    let list: Vec<baton_proto::ScheduleView> = serve.get_json("/v1/schedules").await;
    assert!(list.is_empty());
    let (code, _, err) = schedule_cli(&serve, &["remove", "monthly"]);
    assert_eq!(code, 1);
    assert!(err.contains("no schedule monthly"), "{err}");
    drop(serve);
    f.stop().await;
}

/// Issue 12, schedules: a schedule outlives a restart of the orchestrator (it is in its
/// journal), and a run found late (missed while the orchestrator was down, here by a clock
/// moved five minutes at once) goes ahead only inside the campaign's window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_run_waits_for_the_window_and_schedules_survive_a_restart() {
    const MIN: u64 = 60_000;
    let mut f = local(
        "schedule-late",
        LocalOptions { nodes: 2, action_seconds: "0.3".into(), reboot_ms: 200, ..Default::default() },
    )
    .await;
    let db = f.dir.join("baton.db");
    let serve = Serve::start_with(&f, port(), &db, &["--test-clock"]).await;
    // Hourly, at the minute two minutes from now; a daily window that opened an hour ago and
    // closed 30 minutes ago (UTC).
    let now = clock(&serve, None).await.now_ms;
    let hm = ((now - 60 * MIN) / MIN) % (24 * 60);
    let at_minute = (now / MIN + 2) % 60;
    let extra = format!(
        "schedule = \"{at_minute} * * * *\"\ntimezone = \"UTC\"\nwindows = [{{ days = \"*\", start = \"{:02}:{:02}\", length = \"30m\" }}]\n",
        hm / 60,
        hm % 60
    );
    let toml = quick(&extra).replace("name = \"demo-1.1\"", "name = \"nightly\"");
    let added: Result<baton_proto::ScheduleView, _> =
        serve.post("/v1/schedules", Some(serde_json::json!({"toml": toml, "file": "nightly.toml"}))).await;
    assert_eq!(added.unwrap().name, "nightly");
    let port = serve.url.rsplit(':').next().unwrap().parse().unwrap();
    drop(serve);
    let serve = Serve::start_with(&f, port, &db, &["--test-clock"]).await;
    let list: Vec<baton_proto::ScheduleView> = serve.get_json("/v1/schedules").await;
    assert_eq!(list.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["nightly"]);
    // Five minutes at once: the run due two minutes from now is three minutes late, and the
    // window is closed.
    clock(&serve, Some(5 * MIN)).await;
    let r = runs(&serve, "nightly", 1).await;
    assert_eq!((r[0].outcome.as_str(), r[0].missed), ("skipped", 0), "{r:#?}");
    assert!(r[0].reason.as_deref().unwrap().contains("window is closed now"), "{r:#?}");
    let all: Vec<CampaignView> = serve.get_json("/v1/campaigns").await;
    assert!(all.is_empty(), "{all:#?}");
    drop(serve);
    f.stop().await;
}

/// Issue 12, schedules: an orchestrator killed (SIGKILL) while a schedule's campaign is being
/// started (its before_start still running) aborts that campaign when it comes back, so that it
/// does not hold the fleet, and the run says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_start_cut_by_a_crash_is_aborted_after_the_restart() {
    let mut f = local(
        "schedule-crash",
        LocalOptions { nodes: 2, action_seconds: "0.3".into(), reboot_ms: 200, ..Default::default() },
    )
    .await;
    let db = f.dir.join("baton.db");
    let flags = ["--test-clock", "--allow-hook", "/bin/sleep"];
    let mut serve = Serve::start_with(&f, port(), &db, &flags).await;
    let toml = quick("schedule = \"* * * * *\"\nbefore_start = [\"/bin/sleep\", \"120\"]\n")
        .replace("name = \"demo-1.1\"", "name = \"slow\"");
    let _: baton_proto::ScheduleView =
        serve.post("/v1/schedules", Some(serde_json::json!({"toml": toml}))).await.unwrap();
    to_next_minute(&serve).await;
    // The run created its campaign and is starting it: the hook sleeps.
    let deadline = Instant::now() + Duration::from_secs(60);
    let id = loop {
        let list: Vec<baton_proto::ScheduleView> = serve.get_json("/v1/schedules").await;
        if let Some(id) = list[0].starting {
            break id;
        }
        assert!(Instant::now() < deadline, "the run never started its campaign: {list:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(serve.view(id).await.unwrap().phase, Phase::Planned);
    serve.sigkill();
    let port = serve.url.rsplit(':').next().unwrap().parse().unwrap();
    drop(serve);
    let serve = Serve::start_with(&f, port, &db, &flags).await;
    let r = runs(&serve, "slow", 1).await;
    assert_eq!((r[0].outcome.as_str(), r[0].campaign), ("refused", Some(id)), "{r:#?}");
    assert!(r[0].reason.as_deref().unwrap().contains("stopped between creating and starting"), "{r:#?}");
    let v = serve.wait(id, Duration::from_secs(30), |v| v.phase == Phase::Aborted && !v.holds_fleet).await;
    assert_eq!(v.updated, 0);
    let list: Vec<baton_proto::ScheduleView> = serve.get_json("/v1/schedules").await;
    assert_eq!(list[0].starting, None);
    drop(serve);
    f.stop().await;
}

/// `baton ARGS` against `serve`, with `stdin` typed in; its exit code, stdout and stderr.
fn baton_typed(serve: &Serve, args: &[&str], stdin: &str) -> (i32, String, String) {
    use std::io::Write;
    let mut child = Command::new(exe())
        .args(args)
        .args(["--server", &serve.url])
        .env("BATON_TOKEN", Serve::TOKEN)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).unwrap();
    drop(input);
    let o = child.wait_with_output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).to_string(),
        String::from_utf8_lossy(&o.stderr).to_string(),
    )
}

async fn fleet_of(serve: &Serve) -> baton_proto::FleetView {
    serve.get_json("/v1/fleet").await
}

/// Waits until the fleet's view satisfies `ok`.
async fn wait_fleet(serve: &Serve, ok: impl Fn(&baton_proto::FleetView) -> bool) -> baton_proto::FleetView {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let f = fleet_of(serve).await;
        if ok(&f) {
            return f;
        }
        assert!(Instant::now() < deadline, "{f:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Issue 13, the lifecycle: an upgrade leaves the fleet in mixed mode, shown with its age; the
/// `mixed-mode-overdue` warning goes out once past the limit, then daily; `baton rollback` and
/// `baton commit` show what they will do and go ahead only once the campaign's name is typed;
/// commit is refused while a node is down and accepted once all are up, which raises the level
/// and ends mixed mode. Real agents; the orchestrator's clock is moved by the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_mode_is_shown_and_commit_and_rollback_ask_for_the_campaigns_name() {
    const DAY: u64 = 24 * 3_600_000;
    let mut f = local(
        "lifecycle",
        LocalOptions { nodes: 3, action_seconds: "0.2".into(), reboot_ms: 200, ..Default::default() },
    )
    .await;
    // A version after 1.1, for the campaign after the commit.
    let text = std::fs::read_to_string(&f.fleet_file)
        .unwrap()
        .replace("[\"1.0\", \"1.1\"]", "[\"1.0\", \"1.1\", \"1.2\"]");
    std::fs::write(&f.fleet_file, text).unwrap();
    let serve = Serve::start_with(&f, port(), &f.dir.join("baton.db"), &["--test-clock"]).await;
    let fl = fleet_of(&serve).await;
    assert_eq!(fl.versions, vec!["1.0", "1.1", "1.2"]);
    assert_eq!(
        (fl.functional_level.as_deref(), fl.mixed_mode, fl.mixed_since_ms),
        (Some("1.0"), false, None)
    );

    // Upgraded: mixed mode (all at 1.1, the level still 1.0), since the campaign started.
    // Once committed, the campaign runs its after-commit action (`config-version`, which records
    // that it ran and asks no reboot) on every node as a pass of its own.
    let toml = quick("mixed_mode_limit = \"2w\"\nafter_commit_action = \"config-version\"\n");
    let first = serve.create_and_start(toml.clone()).await;
    let done = serve.wait(first.id, Duration::from_secs(60), |v| settled(v, Phase::Completed)).await;
    let fl = wait_fleet(&serve, |f| f.mixed_mode).await;
    assert_eq!(fl.mixed_since_ms, done.started_at_ms);
    assert_eq!(fl.mixed_mode_limit_ms, 14 * DAY);
    assert!(!fl.mixed_mode_overdue && fl.overdue_warned_at_ms.is_none());
    let (code, out, err) = baton_typed(&serve, &["status"], "");
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("fleet local: functional level 1.0, mixed mode for") && out.contains("limit 14d"),
        "{out}"
    );

    // Past the limit: warned once, and again only a day later.
    clock(&serve, Some(14 * DAY + 60_000)).await;
    let fl = wait_fleet(&serve, |f| f.overdue_warned_at_ms.is_some()).await;
    assert!(fl.mixed_mode_overdue && fl.mixed_age_ms.unwrap() > 14 * DAY, "{fl:#?}");
    assert_eq!(metric(&serve, "baton_mixed_mode_overdue{").await, 1.0);
    assert_eq!(metric(&serve, "baton_mixed_mode_overdue_warnings_total").await, 1.0);
    // An hour on: the watcher looks again (it wakes when the clock moves) and warns no more.
    let t = clock(&serve, Some(3_600_000)).await.now_ms;
    let again = wait_fleet(&serve, |f| f.checked_at_ms >= Some(t)).await;
    assert_eq!(again.overdue_warned_at_ms, fl.overdue_warned_at_ms);
    assert_eq!(metric(&serve, "baton_mixed_mode_overdue_warnings_total").await, 1.0);
    clock(&serve, Some(DAY)).await;
    wait_fleet(&serve, |f| f.overdue_warned_at_ms > fl.overdue_warned_at_ms).await;
    assert_eq!(metric(&serve, "baton_mixed_mode_overdue_warnings_total").await, 2.0);
    let (_, out, _) = baton_typed(&serve, &["status"], "");
    assert!(out.contains("OVERDUE"), "{out}");

    // A rollback with the wrong name typed does nothing (exit 2); with the name, it goes back.
    let id = first.id.to_string();
    let (code, out, err) = baton_typed(&serve, &["rollback", &id], "to-1.2\n");
    assert_eq!(code, 2, "{out}{err}");
    assert!(out.contains("go back from 1.1 to 1.0") && err.contains("not done"), "{out}{err}");
    assert_eq!(serve.view(first.id).await.unwrap().phase, Phase::Completed);
    let (code, out, err) = baton_typed(&serve, &["rollback", &id], &format!("{}\n", first.name));
    assert_eq!(code, 0, "{out}{err}");
    serve.wait(first.id, Duration::from_secs(60), |v| settled(v, Phase::RolledBack)).await;
    assert_eq!(versions(&f).await, vec![Some("1.0".into()); 3]);
    let fl = wait_fleet(&serve, |f| !f.mixed_mode).await;
    assert_eq!((fl.mixed_since_ms, fl.mixed_mode_overdue), (None, false));

    // The upgrade again: a new spell of mixed mode, from its own start.
    let again = serve.create_and_start(toml.clone()).await;
    let done = serve.wait(again.id, Duration::from_secs(60), |v| settled(v, Phase::Completed)).await;
    let fl = wait_fleet(&serve, |f| f.mixed_mode).await;
    assert_eq!(fl.mixed_since_ms, done.started_at_ms);
    assert!(!fl.mixed_mode_overdue);

    // Commit with node2's agent hung: refused, naming it; nothing typed (stdin closed) first.
    let id = again.id.to_string();
    let (code, out, err) = baton_typed(&serve, &["commit", &id], "");
    assert_eq!(code, 2, "{out}{err}");
    assert!(out.contains("from 1.0 to 1.1") && out.contains("cannot be undone"), "{out}");
    assert!(err.contains("nothing was typed"), "{err}");
    let pid = f.nodes[1].pid.load(Ordering::SeqCst);
    assert!(pid != 0 && unsafe { libc::kill(pid as i32, libc::SIGSTOP) } == 0);
    let (code, out, err) = baton_typed(&serve, &["commit", &id, "--yes"], "");
    unsafe { libc::kill(pid as i32, libc::SIGCONT) };
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("commit-refused") && err.contains("node2"), "{err}");
    assert_eq!(serve.view(again.id).await.unwrap().phase, Phase::Completed);
    // All up: committed once its name is typed. The level is raised at once; mixed mode is
    // over; the after-commit pass runs.
    let reboots = f.reboots.load(Ordering::SeqCst);
    let (code, out, err) = baton_typed(&serve, &["commit", &id], &format!("{}\n", again.name));
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("Then after_commit_action config-version runs on every node of the fleet (3 nodes)"),
        "{out}"
    );
    assert!(
        out.contains("is after-commit") && out.contains("config-version now runs on every node"),
        "{out}"
    );
    let fl = wait_fleet(&serve, |f| f.functional_level.as_deref() == Some("1.1")).await;
    assert!(!fl.mixed_mode && fl.nodes.iter().all(|n| !n.fenced), "{fl:#?}");
    let v = serve.view(again.id).await.unwrap();
    assert_eq!(v.after_commit_action.as_deref(), Some("config-version"));
    assert!(v.committed(), "{v:#?}");
    // The pass ends committed, every node through it once, within the campaign's budgets; the
    // action asked no reboot, so none happened.
    let end = serve.wait(again.id, Duration::from_secs(60), |v| settled(v, Phase::Committed)).await;
    assert_eq!((end.pass.as_str(), end.updated, end.failed), ("after-commit", 3, 0), "{end:#?}");
    for n in &f.nodes {
        let log = std::fs::read_to_string(n.dir.join("state/after-commit.log")).unwrap_or_default();
        assert_eq!(log, "1.1\n", "{}: config-version ran once, at the level", n.name);
    }
    assert_eq!(f.reboots.load(Ordering::SeqCst), reboots, "the after-commit action asked no reboot");
    let journal = serve.events(again.id).await;
    budget_violation_in(&std::fs::read_to_string(&f.fleet_file).unwrap(), &toml, &journal).unwrap();
    let updates: Vec<String> = journal
        .iter()
        .filter_map(|e| match decoded(e) {
            Event::StepOk { step, .. } if step.contains("/ac0/update") => Some(step),
            _ => None,
        })
        .collect();
    assert_eq!(updates.len(), 3, "{updates:?}");
    let report: baton_proto::Report = serve.report(again.id).await;
    let a = report.after_commit.clone().expect("the report has the after-commit pass");
    assert_eq!((a.action.as_str(), a.done, a.failed, a.skipped), ("config-version", 3, 0, 0), "{a:?}");
    assert_eq!(report.updated, 3, "the forward pass's count");
    assert!(
        report.nodes.iter().all(|n| n.after_commit.as_deref() == Some("done")
            && n.steps.iter().any(|s| s.pass.as_deref() == Some("after-commit") && s.step == "updating")),
        "{report:#?}"
    );
    let (_, md, _) = baton_typed(&serve, &["report", &id], "");
    assert!(
        md.contains("After-commit pass: config-version on every node")
            && md.contains("after-commit: updating"),
        "{md}"
    );
    let text = serve.http.get(format!("{}/metrics", serve.url)).send().await.unwrap().text().await.unwrap();
    assert!(text.contains("baton_functional_level{fleet=\"local\",level=\"1.1\"} 1"), "{text}");
    // And a committed campaign cannot be rolled back.
    let (code, _, err) = baton_typed(&serve, &["rollback", &id, "--yes"], "");
    assert_ne!(code, 0);
    assert!(err.contains("not-allowed"), "{err}");

    // node3 comes back at 1.0 (restored from an old image): the committed campaign, still
    // watching the fleet, fences it. Its agent keeps its services stopped, across restarts.
    set_version(&f, 2, "1.0");
    assert!(f.kill_agent(2, true));
    let agents = client(&f);
    let deadline = Instant::now() + Duration::from_secs(30);
    let st = loop {
        if let Ok(st) = agents.status("node3", &f.nodes[2].addr, None, 0).await {
            if st.fenced && st.step.as_ref().is_some_and(|s| s.state == baton_proto::StepState::Ok) {
                break st;
            }
        }
        assert!(Instant::now() < deadline, "node3 was not fenced");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let step = st.step.clone().unwrap();
    assert!(step.kind == StepKind::Fence && step.id.ends_with("/node3/f0/fence"), "{step:?}");
    assert!(f.nodes[2].dir.join("state/fenced").exists());
    let fl = wait_fleet(&serve, |f| f.nodes[2].fenced).await;
    assert!(!fl.nodes[0].fenced && !fl.nodes[1].fenced, "{fl:#?}");
    let (_, out, _) = baton_typed(&serve, &["status"], "");
    assert!(out.contains("fenced (older than the level, kept out of service): node3 (1.0)"), "{out}");
    // Its agent restarted (a reboot): it comes back fenced.
    let pid = f.nodes[2].pid.load(Ordering::SeqCst);
    assert!(f.kill_agent(2, true));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = f.nodes[2].pid.load(Ordering::SeqCst);
        if now != 0 && now != pid {
            if let Ok(st) = agents.status("node3", &f.nodes[2].addr, None, 0).await {
                assert!(st.fenced, "{st:?}");
                break;
            }
        }
        assert!(Instant::now() < deadline, "node3's agent did not come back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Let back in by the operator (its name typed): services started, no longer fenced, and not
    // fenced again at 1.0 (its agent restarted once more).
    let (code, out, err) = baton_typed(&serve, &["unfence", "node3"], "node3\n");
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("Unfence node3: it is at 1.0, older than the committed level 1.1"), "{out}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = agents.status("node3", &f.nodes[2].addr, None, 0).await;
        if st.as_ref().is_ok_and(|s| !s.fenced) {
            break;
        }
        assert!(Instant::now() < deadline, "node3 still fenced: {st:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!f.nodes[2].dir.join("state/fenced").exists());
    wait_fleet(&serve, |f| !f.nodes[2].fenced).await;
    let (code, _, err) = baton_typed(&serve, &["unfence", "node3", "--yes"], "");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("node3 is not fenced"), "{err}");
    let pid = f.nodes[2].pid.load(Ordering::SeqCst);
    assert!(f.kill_agent(2, true));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = f.nodes[2].pid.load(Ordering::SeqCst);
        if now != 0 && now != pid && agents.status("node3", &f.nodes[2].addr, None, 0).await.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "node3's agent did not come back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Its watch sees it back up (health_stable), and leaves it in: wait for that, then look.
    let committed_id = again.id;
    let seen = |e: &JournalEntry| matches!(decoded(e), Event::Observed { ref node, up: true, .. } if node == "node3");
    let before = serve.events(committed_id).await.iter().filter(|e| seen(e)).count();
    let deadline = Instant::now() + Duration::from_secs(30);
    while serve.events(committed_id).await.iter().filter(|e| seen(e)).count() == before {
        assert!(Instant::now() < deadline, "node3 was not seen up again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!agents.status("node3", &f.nodes[2].addr, None, 0).await.unwrap().fenced);
    assert!(!fleet_of(&serve).await.nodes[2].fenced);

    // node2 comes back at 1.0 too, and is fenced (f0).
    set_version(&f, 1, "1.0");
    assert!(f.kill_agent(1, true));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if agents.status("node2", &f.nodes[1].addr, None, 0).await.is_ok_and(|s| s.fenced) {
            break;
        }
        assert!(Instant::now() < deadline, "node2 was not fenced");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The next campaign, 1.1 → 1.2: node2 counts as down until it updates it (from 1.0), which
    // ends its fence; node3, back in service at 1.0, is updated as any node.
    let to12 = quick("").replace("\"1.1\"", "\"1.2\"").replace("demo-1.1", "to-1.2");
    let next = serve.create_and_start(to12.clone()).await;
    let end = serve.wait(next.id, Duration::from_secs(60), |v| settled(v, Phase::Completed)).await;
    assert_eq!(end.updated, 3, "{end:#?}");
    assert_eq!(versions(&f).await, vec![Some("1.2".into()); 3]);
    assert!(!f.nodes[1].dir.join("state/fenced").exists());
    let journal = serve.events(next.id).await;
    assert!(
        matches!(decoded(&journal[0]), Event::Planned { ref plan, .. } if plan.left_out == vec!["node2".to_string()]),
        "{:?}",
        decoded(&journal[0])
    );
    // Replayed against the fleet as the commit left it (level 1.1).
    let committed = std::fs::read_to_string(&f.fleet_file)
        .unwrap()
        .replace("functional_level = \"1.0\"", "functional_level = \"1.1\"");
    budget_violation_in(&committed, &to12, &journal).unwrap();
    let fl = wait_fleet(&serve, |f| f.mixed_mode && f.nodes.iter().all(|n| !n.fenced)).await;
    assert_eq!(fl.functional_level.as_deref(), Some("1.1"));
    drop(serve);
    f.stop().await;
}
