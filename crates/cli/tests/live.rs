//! Real processes over loopback: `baton serve` as a child process, agents as supervised
//! `baton agent` processes with mutual TLS. Nothing here is mocked.

mod support;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_across_five_agents_completes() {
    let mut f = local(
        "five",
        LocalOptions { nodes: 5, action_seconds: "0.3".into(), reboot_ms: 300, ..Default::default() },
    )
    .await;
    let serve = Serve::start(&f, port()).await;
    let toml = LocalFleet::campaign_toml("");
    let v = serve.create_and_start(toml.clone()).await;
    // Once a node has finished, the campaign has an ETA: the rest simulated with what was seen
    // (on its own task, so a moment after).
    let mid = serve
        .wait(v.id, Duration::from_secs(120), |v| {
            v.updated >= 1 && (v.eta_ms.is_some() || v.phase != Phase::Running)
        })
        .await;
    let now = baton_server::driver::now_ms();
    if mid.phase == Phase::Running {
        let eta = mid.eta_ms.expect("an ETA once a node has finished");
        assert!(eta + 1000 >= now && eta < now + 600_000, "ETA {eta} vs now {now}");
    }
    let end = serve
        .wait(v.id, Duration::from_secs(120), |v| {
            v.phase == Phase::Completed && v.active == 0 && !v.holds_fleet
        })
        .await;
    let done = baton_server::driver::now_ms();
    if let Some(eta) = mid.eta_ms {
        eprintln!(
            "ETA after the first node: {:+.1}s off the actual end",
            (eta as f64 - done as f64) / 1000.0
        );
    }
    assert_eq!(end.eta_ms, None);
    assert_eq!(end.updated, 5);

    let c = client(&f);
    for n in &f.nodes {
        let s = c.status(&n.name, &n.addr, None, 0).await.unwrap();
        assert_eq!(s.version.as_deref(), Some("1.1"), "{} reports {:?}", n.name, s.version);
    }
    assert_eq!(f.reboots.load(Ordering::SeqCst), 5);
    // Hold, precheck, drain, update, restore and release on each node, each once.
    assert_eq!(steps_ran_once(&f).await, 30);
    budgets_kept(&f, &toml, &serve.events(v.id).await);
    metrics_parse(&serve).await;
    // Commit raises the functional level: the orchestrator holds the fleet at 1.1 from now on,
    // also after a restart, and refuses a campaign to the level it is at.
    let c: CampaignView = serve.post(&format!("/v1/campaigns/{}/commit", v.id), None).await.unwrap();
    assert_eq!(c.phase, Phase::Committed);
    report_has_every_node(&serve, v.id).await;
    let mut serve = serve;
    serve.sigkill();
    let serve = Serve::start(&f, port()).await;
    assert_eq!(serve.view(v.id).await.unwrap().phase, Phase::Committed);
    let (code, text) = serve
        .post::<CampaignView>("/v1/campaigns", Some(serde_json::json!({"toml": toml})))
        .await
        .unwrap_err();
    assert_eq!(code, 422);
    assert!(text.contains("already at functional level 1.1"), "{text}");
    drop(serve);
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_during_its_action_fails_the_node_and_halts_the_campaign() {
    let mut f = local(
        "killed",
        LocalOptions { nodes: 3, action_seconds: "4".into(), reboot_ms: 300, ..Default::default() },
    )
    .await;
    let serve = Serve::start(&f, port()).await;
    let hooks = receiver().await;
    let toml = LocalFleet::campaign_toml(&format!("webhooks = [\"{}\"]\n", hooks.url))
        .replace("reboot_timeout = \"1m\"", "reboot_timeout = \"3s\"")
        .replace("max_parallel = 2", "max_parallel = 1");
    let v = serve.create_and_start(toml.clone()).await;
    let upd =
        serve.wait(v.id, Duration::from_secs(30), |v| v.nodes.iter().any(|n| n.state == "updating")).await;
    let victim = upd.nodes.iter().position(|n| n.state == "updating").unwrap();
    // Make sure the action is running on the agent, then kill the agent for good.
    let c = client(&f);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = c.status(&f.nodes[victim].name, &f.nodes[victim].addr, None, 0).await.unwrap();
        if s.step
            .as_ref()
            .is_some_and(|st| st.kind == StepKind::Action && st.state == baton_proto::StepState::Running)
        {
            break;
        }
        assert!(Instant::now() < deadline, "the action never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let killed_at = Instant::now();
    assert!(f.kill_agent(victim, false));
    let end = serve.wait(v.id, Duration::from_secs(60), |v| v.phase == Phase::Halted && v.active == 0).await;
    let node = &end.nodes[victim];
    assert_eq!(node.state, "failed");
    assert!(node.reason.as_deref().unwrap_or("").contains("unreachable"), "{node:?}");
    // Not before reboot_timeout (3s) has passed.
    assert!(killed_at.elapsed() >= Duration::from_secs(3));
    // The campaign halted: no other node was started after the failure.
    let journal = serve.events(v.id).await;
    budgets_kept(&f, &toml, &journal);
    assert_eq!(end.failed, 1, "{end:#?}");
    let got = hooks.wait_for("halted").await;
    assert_eq!(events_of(&got), ["started", "node-failed", "halted"]);
    assert_eq!(got[1]["node"], f.nodes[victim].name.as_str());
    assert!(end.nodes.iter().filter(|n| n.state == "pending").count() >= 1);
    drop(serve);
    f.stop().await;
}

/// Two nodes given one address in the fleet file (as once happened here when two agents were
/// handed the same port): the orchestrator must not take node1's agent for node3, run node3's
/// steps on node1 and count node3 as updated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_address_leads_to_another_agent_is_never_counted_updated() {
    let mut f = local(
        "misaddressed",
        LocalOptions { nodes: 3, action_seconds: "0.2".into(), reboot_ms: 200, ..Default::default() },
    )
    .await;
    let (wrong, right) = (f.nodes[0].addr.clone(), f.nodes[2].addr.clone());
    f.fleet_text = f.fleet_text.replace(&right, &wrong);
    std::fs::write(&f.fleet_file, &f.fleet_text).unwrap();
    let serve = Serve::start(&f, port()).await;
    let toml = LocalFleet::campaign_toml("")
        .replace("reboot_timeout = \"1m\"", "reboot_timeout = \"3s\"")
        .replace("health_stable = \"2s\"", "health_stable = \"300ms\"")
        .replace("health_wait = \"1s\"", "health_wait = \"0s\"");
    let v = serve.create_and_start(toml.clone()).await;
    // node1 and node2 are updated; node3 either never starts (its address answers as
    // another node, so it is seen down) or fails as unreachable. Either way it is not done.
    // (The orchestrator asks every node before the first start, so node3 is counted down
    // from the beginning and the budget holds after every event.)
    let end = serve
        .wait(v.id, Duration::from_secs(60), |v| {
            v.active == 0
                && v.nodes[..2].iter().all(|n| n.state == "done")
                && ["pending", "failed"].contains(&v.nodes[2].state.as_str())
        })
        .await;
    assert_ne!(end.phase, Phase::Completed, "{end:#?}");
    assert_eq!(end.updated, 2, "{end:#?}");
    assert_ne!(end.nodes[2].version.as_deref(), Some("1.1"), "{end:#?}");
    // node1's agent ran node1's five steps (the hold of its auto-updaters, precheck, drain,
    // update, restore; the campaign has not ended, so nothing is released yet) and nothing of
    // node3's; node3's agent was never asked.
    let c = client(&f);
    let steps = c.steps("node1", &wrong).await.unwrap();
    let ids: Vec<&str> = steps.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids.len(), 5, "{ids:?}");
    assert!(ids.iter().all(|id| id.contains("/node1/")), "{ids:?}");
    assert!(c.steps("node3", &right).await.unwrap().is_empty());
    if end.nodes[2].state == "pending" {
        assert!(end.nodes[2].reason.as_deref().unwrap_or("").contains("seen down"), "{end:#?}");
    }
    budgets_kept(&f, &toml, &serve.events(v.id).await);
    drop(serve);
    f.stop().await;
}

/// The orchestrator SIGKILLed at random moments across real campaigns, restarted each time on
/// the same journal. Counts what must never happen (a step run twice, a budget broken, a
/// campaign not completed) and prints one summary line. `BATON_SIGKILL_RUNS` sets the number
/// of campaigns (default 20); `bench/sigkill.sh` runs enough of them for 100 kills and more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_orchestrator_survives_sigkill_at_random_points() {
    let runs: usize = std::env::var("BATON_SIGKILL_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let mut seed =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    eprintln!("seed {seed}");
    let mut rand = move |lo: u64, hi: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        lo + seed % (hi - lo)
    };
    let (mut kills, mut mid_flight, mut twice, mut violations, mut incomplete) = (0, 0, 0, 0, 0);
    let mut problems = Vec::new();
    let started = Instant::now();
    for run in 0..runs {
        let mut f = local(
            &format!("sigkill{run}"),
            LocalOptions { nodes: 3, action_seconds: "0.3".into(), reboot_ms: 200, ..Default::default() },
        )
        .await;
        let p = port();
        let mut serve = Serve::start(&f, p).await;
        let toml = LocalFleet::campaign_toml("")
            .replace("health_stable = \"2s\"", "health_stable = \"300ms\"")
            .replace("health_wait = \"1s\"", "health_wait = \"0s\"");
        let v = serve.create_and_start(toml.clone()).await;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            // Kill it at a random point, restart it on the same journal.
            tokio::time::sleep(Duration::from_millis(rand(50, 1500))).await;
            let before = serve.view(v.id).await;
            serve.sigkill();
            kills += 1;
            mid_flight += usize::from(before.is_some_and(|v| v.active > 0));
            serve = Serve::start(&f, p).await;
            let done = serve
                .view(v.id)
                .await
                .is_some_and(|v| v.phase == Phase::Completed && v.active == 0 && !v.holds_fleet);
            if done {
                break;
            }
            if rand(0, 3) == 0 {
                // Sometimes let it finish undisturbed.
                serve
                    .wait(v.id, Duration::from_secs(60), |v| {
                        v.phase == Phase::Completed && v.active == 0 && !v.holds_fleet
                    })
                    .await;
                break;
            }
            if Instant::now() > deadline {
                break;
            }
        }
        let end = serve.view(v.id).await.unwrap();
        if end.phase != Phase::Completed || end.updated != 3 {
            incomplete += 1;
            problems.push(format!("run {run}: ended {} with {} updated", end.phase, end.updated));
        }
        let c = client(&f);
        let mut steps = 0;
        for n in &f.nodes {
            for s in c.steps(&n.name, &n.addr).await.unwrap() {
                steps += 1;
                if s.executions != 1 {
                    twice += 1;
                    problems.push(format!("run {run}: {} ran step {} {} times", n.name, s.id, s.executions));
                }
            }
        }
        // Hold, precheck, drain, update, restore and release, on each of the three nodes.
        if steps != 18 {
            problems.push(format!(
                "run {run}: {steps} steps where each node is held, prechecked, drained, updated, restored and released once"
            ));
        }
        if let Err(e) = budget_violation(&f, &toml, &serve.events(v.id).await) {
            violations += 1;
            problems.push(format!("run {run}: {e}"));
        }
        drop(serve);
        f.stop().await;
        let _ = std::fs::remove_dir_all(&f.dir);
    }
    println!(
        "sigkill: {{\"runs\":{runs},\"kills\":{kills},\"kills_mid_flight\":{mid_flight},\"steps_run_twice\":{twice},\"budget_violations\":{violations},\"campaigns_not_completed\":{incomplete},\"wall_s\":{:.0}}}",
        started.elapsed().as_secs_f64()
    );
    assert!(problems.is_empty(), "{problems:#?}");
    assert!(kills >= runs);
    assert!(mid_flight * 2 >= kills, "most kills should land while nodes are in flight");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_unknown_actions_and_missing_tokens_are_refused() {
    let mut f = local("refuse", LocalOptions { nodes: 1, ..Default::default() }).await;
    let (name, addr) = (f.nodes[0].name.clone(), f.nodes[0].addr.clone());
    // No client certificate: the TLS handshake fails, no answer. It reaches the agent by its
    // node's name, which the agent's certificate names, so the only thing missing is its own
    // certificate (not a server certificate it could not verify).
    let sock: std::net::SocketAddr = addr.parse().unwrap();
    let anon = reqwest::Client::builder()
        .use_preconfigured_tls(rustls_client_without_cert(&f.pki.join("ca.pem")))
        .resolve(&name, sock)
        .build()
        .unwrap();
    let e = anon
        .get(format!("https://{name}:{}/v1/status", sock.port()))
        .send()
        .await
        .expect_err("a client without a certificate got an answer");
    let mut chain = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        chain.push_str(&format!(": {s}"));
        src = s.source();
    }
    assert!(!chain.contains("not valid for name") && !chain.contains("UnknownIssuer"), "{chain}");
    // A certificate from another CA: refused too.
    let other = f.dir.join("other-pki");
    baton_pki::init_ca(&other, "other").unwrap();
    baton_pki::issue(&other, "intruder", baton_pki::Role::Orchestrator, &[]).unwrap();
    let mut files = baton_pki::TlsFiles::in_dir(&other, "intruder");
    files.ca = f.pki.join("ca.pem"); // it trusts the agent, but the agent does not trust it
    let intruder = AgentClient::new(&files).unwrap();
    assert!(intruder.status(&name, &addr, None, 0).await.is_err(), "a client from another CA got an answer");
    // Another agent's certificate, from the fleet's own CA, cannot command this agent either.
    baton_pki::issue(&f.pki, "node9", baton_pki::Role::Agent, &[]).unwrap();
    let peer = AgentClient::new(&baton_pki::TlsFiles::in_dir(&f.pki, "node9")).unwrap();
    assert!(
        peer.status(&name, &addr, None, 0).await.is_err(),
        "an agent's certificate was accepted as a client"
    );
    // The fleet's own client gets answers, but only for configured actions.
    let c = client(&f);
    assert!(c.status(&name, &addr, None, 0).await.is_ok());
    // An address that leads to another node's agent is not that node: a fleet file with a
    // wrong or doubled address must not have one machine's steps run on another.
    match c.status("node2", &addr, None, 0).await {
        Err(baton_server::client::ClientError::Unreachable(e)) => {
            assert!(e.contains(&format!("the agent at {addr} is not node2")), "{e}")
        }
        other => panic!("node1's agent was taken for node2: {other:?}"),
    }
    assert!(c.steps("node2", &addr).await.is_err());
    assert!(
        c.status(&name, &addr, None, 0).await.is_ok(),
        "a pooled connection is still checked and accepted"
    );
    let req = StepRequest {
        id: "x/1".into(),
        kind: StepKind::Action,
        action: Some("rm-everything".into()),
        version: Some("1".into()),
        stop_grace_ms: None,
        moves: vec![],
    };
    match c.start_step(&name, &addr, &req).await {
        Err(baton_server::client::ClientError::Refused(e)) => assert_eq!(e.code, "unknown-action"),
        other => panic!("an unknown action was not refused: {other:?}"),
    }
    // A version that is not a version is refused before anything runs.
    let req = StepRequest {
        id: "x/2".into(),
        kind: StepKind::Action,
        action: Some("upgrade".into()),
        version: Some("--force".into()),
        stop_grace_ms: None,
        moves: vec![],
    };
    assert!(
        matches!(c.start_step(&name, &addr, &req).await, Err(baton_server::client::ClientError::Refused(e)) if e.code == "bad-version")
    );
    // The orchestrator: reading is open, changing needs the token.
    let serve = Serve::start(&f, port()).await;
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}/v1/campaigns", serve.url))
        .json(&serde_json::json!({"toml": LocalFleet::campaign_toml("")}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let body: baton_proto::ApiError = r.json().await.unwrap();
    assert_eq!(body.code, "unauthorized");
    let r = http
        .post(format!("{}/v1/campaigns", serve.url))
        .bearer_auth("wrong")
        .json(&serde_json::json!({"toml": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    // Reads need the token too (reports hold command output): 401 without, 200 with.
    assert_eq!(http.get(format!("{}/v1/campaigns", serve.url)).send().await.unwrap().status().as_u16(), 401);
    let r = http.get(format!("{}/v1/campaigns", serve.url)).bearer_auth(&serve.token).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    // Bad campaign text: 422 with the place; a second campaign while one holds the fleet: 409.
    let r: Result<CampaignView, _> = serve
        .post("/v1/campaigns", Some(serde_json::json!({"toml": "name = \"x\"\ntarget_version = \"9\"\n"})))
        .await;
    let (code, text) = r.unwrap_err();
    assert_eq!(code, 422);
    assert!(text.contains("campaign.toml:2:18"), "{text}");
    let _: CampaignView = serve
        .post("/v1/campaigns", Some(serde_json::json!({"toml": LocalFleet::campaign_toml("")})))
        .await
        .unwrap();
    let (code, text) = serve
        .post::<CampaignView>(
            "/v1/campaigns",
            Some(serde_json::json!({"toml": LocalFleet::campaign_toml("")})),
        )
        .await
        .unwrap_err();
    assert_eq!(code, 409);
    assert!(text.contains("fleet-locked") && text.contains("demo-1.1"), "{text}");
    drop(serve);
    f.stop().await;
}

fn rustls_client_without_cert(ca: &Path) -> rustls::ClientConfig {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    rustls::ClientConfig::builder_with_provider(baton_pki::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// chromedriver on a free port (Debian's chromium and chromium-driver; `scripts/test.sh`
/// installs them when missing).
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn browser(dir: &Path) -> (Driver, fantoccini::Client) {
    let port = port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect(
            "chromedriver is installed (apt-get install chromium chromium-driver; scripts/test.sh does it)",
        );
    let driver = Driver(child);
    let profile = dir.join("chromium-profile");
    let caps: serde_json::Map<String, serde_json::Value> = serde_json::from_value(serde_json::json!({
        "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--disable-dev-shm-usage", "--window-size=1400,900", format!("--user-data-dir={}", profile.display())]
        }
    }))
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut b = fantoccini::ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new());
        b.capabilities(caps.clone());
        match b.connect(&format!("http://127.0.0.1:{port}")).await {
            Ok(c) => return (driver, c),
            Err(e) => {
                assert!(Instant::now() < deadline, "cannot start a Chromium session: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Waits until `check` holds for the page, with a deadline.
async fn until(c: &fantoccini::Client, what: &str, within: Duration, check: &str) {
    let deadline = Instant::now() + within;
    loop {
        let v = c.execute(check, vec![]).await.unwrap();
        if v.as_bool() == Some(true) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_rollout_live_and_pauses_and_resumes_it() {
    let mut f = local(
        "dashboard",
        LocalOptions { nodes: 6, action_seconds: "1.5".into(), reboot_ms: 300, ..Default::default() },
    )
    .await;
    // Two fault domains across the three update domains, for the heatmap's columns.
    let mut k = 0;
    let text: String = std::fs::read_to_string(&f.fleet_file)
        .unwrap()
        .lines()
        .map(|l| {
            if l.starts_with("update_domain = ") {
                k += 1;
                format!("{l}\nfault_domain = {}\n", k % 2)
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(&f.fleet_file, text).unwrap();
    let serve = Serve::start(&f, port()).await;
    // A monthly schedule (Patch Tuesday, Berlin): the page shows when it runs next.
    let sched = LocalFleet::campaign_toml("schedule = \"0 3 * * TUE#2\"\ntimezone = \"Europe/Berlin\"\n")
        .replace("demo-1.1", "patch-tuesday");
    let sched: baton_proto::ScheduleView =
        serve.post("/v1/schedules", Some(serde_json::json!({"toml": sched}))).await.unwrap();
    let (_driver, c) = browser(&f.dir).await;
    c.goto(&format!("{}/", serve.url)).await.unwrap();
    // Reads need the token: the page shows nothing until it has it.
    until(
        &c,
        "the page to ask for the token",
        Duration::from_secs(20),
        "return document.getElementById('live').textContent === 'enter the operator token'",
    )
    .await;
    let cells = c.execute("return document.querySelectorAll('#heatmap .cell').length", vec![]).await.unwrap();
    assert_eq!(cells.as_u64(), Some(0), "nothing is shown without the token");
    c.find(fantoccini::Locator::Css("#token")).await.unwrap().send_keys(&serve.token).await.unwrap();
    c.execute("document.getElementById('token').dispatchEvent(new Event('change'))", vec![]).await.unwrap();
    // A campaign from the page: pasted, its plan previewed, then created (it is planned).
    let toml = LocalFleet::campaign_toml("after_commit_action = \"config-version\"\n");
    c.execute("document.getElementById('new-toml').value = arguments[0]", vec![serde_json::json!(toml)])
        .await
        .unwrap();
    c.find(fantoccini::Locator::Css("#preview")).await.unwrap().click().await.unwrap();
    until(
        &c,
        "the plan",
        Duration::from_secs(20),
        "return !!document.querySelector('[data-testid=plan-summary]')",
    )
    .await;
    let summary = c
        .execute("return document.querySelector('[data-testid=plan-summary]').textContent", vec![])
        .await
        .unwrap();
    assert!(summary.as_str().is_some_and(|t| t.starts_with("demo-1.1: 3 waves, lower bound 3")), "{summary}");
    let waves =
        c.execute("return document.querySelectorAll('#plan ol.waves li').length", vec![]).await.unwrap();
    assert_eq!(waves.as_u64(), Some(3));
    assert!(
        serve.get_json::<Vec<CampaignView>>("/v1/campaigns").await.is_empty(),
        "a preview creates nothing"
    );
    c.find(fantoccini::Locator::Css("#create")).await.unwrap().click().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let v = loop {
        let list: Vec<CampaignView> = serve.get_json("/v1/campaigns").await;
        if let Some(v) = list.into_iter().next() {
            break v;
        }
        assert!(Instant::now() < deadline, "the page created no campaign");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!((v.name.as_str(), v.phase), ("demo-1.1", Phase::Planned));
    let journal = serve.events(v.id).await;
    assert!(matches!(decoded(&journal[0]), Event::Planned { .. }));
    // Its plan before the start: waves and what binds.
    until(
        &c,
        "the selected campaign's plan",
        Duration::from_secs(10),
        "return document.querySelectorAll('#selected-plan ol.waves li').length === 3",
    )
    .await;
    // The heatmap: a row per update domain (the local fleet has 3) under a header of fault
    // domains (2), every node pending.
    until(
        &c,
        "the heatmap",
        Duration::from_secs(20),
        "return document.querySelectorAll('#heatmap .cell[data-state=pending]').length === 6",
    )
    .await;
    let rows = c
        .execute("return document.querySelectorAll('#heatmap [role=row][data-ud]').length", vec![])
        .await
        .unwrap();
    assert_eq!(rows.as_u64(), Some(3));
    let cols = c
        .execute("return document.querySelectorAll('#heatmap [role=columnheader][data-fd]').length", vec![])
        .await
        .unwrap();
    assert_eq!(cols.as_u64(), Some(2));
    // node1 is in UD 0 and FD 1: its cell is in that row, in that column.
    let placed = c
        .execute("const e = document.querySelector('#heatmap [data-node=node1]'); return e.parentElement.dataset.fd + '/' + e.closest('[data-ud]').dataset.ud", vec![])
        .await
        .unwrap();
    assert_eq!(placed.as_str(), Some("1/0"));
    until(
        &c,
        "the schedule",
        Duration::from_secs(10),
        "return !!document.querySelector('[data-testid=next-patch-tuesday]')",
    )
    .await;
    let next = c
        .execute("const e = document.querySelector('[data-testid=next-patch-tuesday]'); return [e.dataset.ms, e.textContent]", vec![])
        .await
        .unwrap();
    assert_eq!(next[0].as_str(), Some(sched.next_run_ms.unwrap().to_string().as_str()), "{next}");
    // In the schedule's own time zone (not the browser's, not UTC).
    assert!(next[1].as_str().is_some_and(|t| t.contains("03:00") && !t.contains('Z')), "{next}");
    // Started from outside the page: cells change state live, without a reload.
    c.execute("window.__marker = 'same page'", vec![]).await.unwrap();
    let _: CampaignView = serve.post(&format!("/v1/campaigns/{}/start", v.id), None).await.unwrap();
    until(
        &c,
        "a node to leave pending",
        Duration::from_secs(20),
        "return document.querySelectorAll('#heatmap .cell:not([data-state=pending])').length > 0",
    )
    .await;
    let same = c.execute("return window.__marker === 'same page'", vec![]).await.unwrap();
    assert_eq!(same.as_bool(), Some(true), "the page was reloaded");
    // Pause with a confirmation (the token is in the box already).
    until(
        &c,
        "Pause to be enabled",
        Duration::from_secs(10),
        "return !document.getElementById('pause').disabled",
    )
    .await;
    c.find(fantoccini::Locator::Css("#pause")).await.unwrap().click().await.unwrap();
    c.accept_alert().await.unwrap();
    let phase =
        format!("return document.querySelector('[data-testid=phase-{}]').textContent === 'paused'", v.id);
    until(&c, "the campaign to show paused", Duration::from_secs(10), &phase).await;
    assert_eq!(serve.view(v.id).await.unwrap().phase, Phase::Paused);
    let journal = serve.events(v.id).await;
    assert!(journal.iter().any(|e| matches!(decoded(e), Event::Pause { by } if by == "dashboard")));
    // The heatmap, mid-rollout, for the docs.
    c.execute("document.querySelector('section[aria-labelledby=h-heat]').scrollIntoView()", vec![])
        .await
        .unwrap();
    let heat = c.find(fantoccini::Locator::Css("section[aria-labelledby=h-heat]")).await.unwrap();
    let png = heat.screenshot().await.unwrap();
    std::fs::write(f.dir.join("heatmap.png"), &png).unwrap();
    if std::env::var_os("BATON_UPDATE_SCREENSHOT").is_some() {
        std::fs::write(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/heatmap.png"), &png).unwrap();
    }
    // Resume, and see it complete.
    until(
        &c,
        "Resume to be enabled",
        Duration::from_secs(10),
        "return !document.getElementById('resume').disabled",
    )
    .await;
    c.find(fantoccini::Locator::Css("#resume")).await.unwrap().click().await.unwrap();
    c.accept_alert().await.unwrap();
    let done =
        format!("return document.querySelector('[data-testid=phase-{}]').textContent === 'completed'", v.id);
    until(&c, "the campaign to complete", Duration::from_secs(120), &done).await;
    until(
        &c,
        "every cell done",
        Duration::from_secs(10),
        "return document.querySelectorAll('#heatmap .cell[data-state=done]').length === 6",
    )
    .await;
    // The timeline: a row per node, a bar per step in order, no failure marked.
    until(
        &c,
        "the timeline of all six",
        Duration::from_secs(20),
        "return new Set([...document.querySelectorAll('#timeline rect.step[data-step=restoring]')].map((r) => r.dataset.node)).size === 6",
    )
    .await;
    let steps = c
        .execute("return [...document.querySelectorAll('#timeline rect.step[data-node=node1]')].map((r) => r.dataset.step)", vec![])
        .await
        .unwrap();
    let steps: Vec<&str> = steps.as_array().unwrap().iter().filter_map(|s| s.as_str()).collect();
    assert_eq!(steps, ["prechecking", "draining", "updating", "rebooting", "verifying", "restoring"]);
    let failed =
        c.execute("return document.querySelectorAll('#timeline .failure').length", vec![]).await.unwrap();
    assert_eq!(failed.as_u64(), Some(0));
    c.execute("document.querySelector('section[aria-labelledby=h-timeline]').scrollIntoView()", vec![])
        .await
        .unwrap();
    let tl = c.find(fantoccini::Locator::Css("section[aria-labelledby=h-timeline]")).await.unwrap();
    let png = tl.screenshot().await.unwrap();
    std::fs::write(f.dir.join("timeline.png"), &png).unwrap();
    if std::env::var_os("BATON_UPDATE_SCREENSHOT").is_some() {
        std::fs::write(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/timeline.png"), &png).unwrap();
    }
    // Mixed mode, shown with its age in the header: every node at 1.1, the level still 1.0.
    until(
        &c,
        "mixed mode in the header",
        Duration::from_secs(10),
        "const m = document.querySelector('[data-testid=mixed]'); return !!m && m.textContent.startsWith('mixed mode for')",
    )
    .await;
    // Commit from the page: it says what it does, and a wrong name typed does nothing.
    until(
        &c,
        "Commit to be enabled",
        Duration::from_secs(10),
        "return !document.getElementById('commit').disabled",
    )
    .await;
    c.find(fantoccini::Locator::Css("#commit")).await.unwrap().click().await.unwrap();
    let asked = c.get_alert_text().await.unwrap();
    assert!(asked.contains("from 1.0 to 1.1") && asked.contains("cannot be undone"), "{asked}");
    assert!(asked.contains("Then config-version runs on every node of the fleet"), "{asked}");
    c.send_alert_text("not-the-name").await.unwrap();
    c.accept_alert().await.unwrap();
    until(
        &c,
        "the refusal",
        Duration::from_secs(10),
        "return document.getElementById('msg').textContent.startsWith('not done')",
    )
    .await;
    assert_eq!(serve.view(v.id).await.unwrap().phase, Phase::Completed);
    c.find(fantoccini::Locator::Css("#commit")).await.unwrap().click().await.unwrap();
    c.send_alert_text(&v.name).await.unwrap();
    c.accept_alert().await.unwrap();
    // The level is raised at once, and the after-commit pass (config-version on every node) runs
    // as a pass of its own before the campaign shows committed.
    let committed =
        format!("return document.querySelector('[data-testid=phase-{}]').textContent === 'committed'", v.id);
    until(&c, "the campaign to show committed", Duration::from_secs(90), &committed).await;
    let end = serve.view(v.id).await.unwrap();
    assert_eq!((end.pass.as_str(), end.updated), ("after-commit", 6), "{end:#?}");
    until(
        &c,
        "the after-commit pass in the plan line and the timeline",
        Duration::from_secs(20),
        "return document.querySelector('[data-testid=plan-line]').textContent.startsWith('After-commit pass (config-version') \
         && new Set([...document.querySelectorAll('#timeline rect.step[data-pass=after-commit][data-step=updating]')].map((r) => r.dataset.node)).size === 6",
    )
    .await;
    until(
        &c,
        "the raised level in the header",
        Duration::from_secs(10),
        "return document.getElementById('fleet').textContent.includes('functional level 1.1 · not in mixed mode')",
    )
    .await;
    let journal = serve.events(v.id).await;
    assert!(journal.iter().any(|e| matches!(decoded(e), Event::Commit { by } if by == "dashboard")));
    // Compliance from the page: every agent asked now; all six at 1.1.
    c.find(fantoccini::Locator::Css("#scan-target")).await.unwrap().send_keys("1.1").await.unwrap();
    c.find(fantoccini::Locator::Css("#scan")).await.unwrap().click().await.unwrap();
    until(
        &c,
        "the compliance heatmap",
        Duration::from_secs(30),
        "return document.querySelectorAll('#scanmap .cell.s-compliant').length === 6",
    )
    .await;
    let totals =
        c.execute("return document.getElementById('scan-totals').textContent", vec![]).await.unwrap();
    assert_eq!(totals.as_str(), Some("6 compliant, 0 need 1.1, 0 unreachable"));
    c.close().await.unwrap();
    drop(serve);
    f.stop().await;
}

/// `/metrics` parses as Prometheus text and has what an operator needs after a campaign.
async fn metrics_parse(serve: &Serve) {
    let r = serve.http.get(format!("{}/metrics", serve.url)).send().await.unwrap();
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("application/openmetrics-text"));
    let text = r.text().await.unwrap();
    assert_eq!(text.lines().last(), Some("# EOF"));
    let mut names = std::collections::HashSet::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        // name{labels} value
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("not a sample: {line}"));
        assert!(value.parse::<f64>().is_ok(), "value of {line}");
        let name = series.split('{').next().unwrap();
        assert!(name.starts_with("baton_"), "{name}");
        assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "{name}");
        if let Some(labels) = series.strip_prefix(name) {
            assert!(labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')), "{line}");
        }
        names.insert(name.to_string());
    }
    for want in [
        "baton_nodes",
        "baton_campaign_phase",
        "baton_budget_headroom",
        "baton_step_duration_seconds_bucket",
        "baton_step_duration_seconds_count",
        "baton_journal_write_seconds_count",
    ] {
        assert!(names.contains(want), "{want} missing from /metrics:\n{text}");
    }
    assert!(text.contains("baton_nodes{campaign=\"demo-1.1#1\",state=\"done\"} 5"), "{text}");
    assert!(text.contains("step=\"rebooting\""), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_covers_every_route() {
    let mut f = local("openapi", LocalOptions { nodes: 1, ..Default::default() }).await;
    let serve = Serve::start(&f, port()).await;
    let v: CampaignView = serve
        .post("/v1/campaigns", Some(serde_json::json!({"toml": LocalFleet::campaign_toml("")})))
        .await
        .unwrap();
    let doc: serde_json::Value =
        serve.http.get(format!("{}/openapi.json", serve.url)).send().await.unwrap().json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{doc}");
    let paths = doc["paths"].as_object().unwrap();
    let mut got: Vec<&str> = paths.keys().map(String::as_str).collect();
    got.sort();
    assert_eq!(
        got,
        [
            "/",
            "/healthz",
            "/metrics",
            "/openapi.json",
            "/v1/campaigns",
            "/v1/campaigns/{id}",
            "/v1/campaigns/{id}/events",
            "/v1/campaigns/{id}/report",
            "/v1/campaigns/{id}/{action}",
            "/v1/clock",
            "/v1/fleet",
            "/v1/fleet/nodes/{node}/unfence",
            "/v1/plan",
            "/v1/scan",
            "/v1/schedules",
            "/v1/schedules/{name}",
            "/v1/schedules/{name}/runs",
            "/v1/stream"
        ]
    );
    let sched = LocalFleet::campaign_toml("schedule = \"@monthly\"\n");
    let _: baton_proto::ScheduleView =
        serve.post("/v1/schedules", Some(serde_json::json!({"toml": sched}))).await.unwrap();
    // Every documented operation exists on the server (a 404 would mean drift) and has responses.
    for (path, ops) in paths {
        for (method, op) in ops.as_object().unwrap() {
            assert!(
                op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                "{method} {path} has no responses"
            );
            let url = format!(
                "{}{}",
                serve.url,
                path.replace("{id}", &v.id.to_string())
                    .replace("{action}", "pause")
                    .replace("{name}", "demo-1.1")
                    .replace("{node}", "node1")
            );
            let req = match method.as_str() {
                "get" => serve.http.get(&url),
                "post" => serve.http.post(&url).json(&serde_json::json!({"toml": ""})),
                "delete" => serve.http.delete(&url),
                m => panic!("unexpected method {m}"),
            };
            let r = req.send().await.unwrap();
            assert_ne!(r.status().as_u16(), 404, "{method} {path} is documented but not served");
            assert_ne!(r.status().as_u16(), 405, "{method} {path} is documented but not served");
        }
    }
    // Mutating calls declare the token; every schema reference resolves.
    assert!(doc["paths"]["/v1/campaigns"]["post"]["security"].is_array());
    assert!(doc["components"]["securitySchemes"]["token"].is_object());
    let text = doc.to_string();
    for r in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
        let name = r.split('"').next().unwrap();
        assert!(doc["components"]["schemas"][name].is_object(), "dangling $ref to {name}");
    }
    drop(serve);
    f.stop().await;
}

/// The run report of a finished campaign has every node, each step with its outcome, and the
/// action's real output; the CLI renders it in every format.
async fn report_has_every_node(serve: &Serve, id: i64) {
    let r = serve.report(id).await;
    assert_eq!((r.nodes_targeted, r.updated, r.failed, r.reboots, r.retries), (5, 5, 0, 5, 0));
    assert_eq!(r.phase, "committed");
    assert_eq!(r.nodes.len(), 5);
    for n in &r.nodes {
        let steps: Vec<&str> = n.steps.iter().map(|s| s.step.as_str()).collect();
        assert_eq!(
            steps,
            ["prechecking", "draining", "updating", "rebooting", "verifying", "restoring"],
            "{}",
            n.name
        );
        assert!(n.steps.iter().all(|s| s.outcome == "ok" && s.ended_ms.is_some()), "{n:?}");
        assert_eq!((n.version_before.as_deref(), n.version_after.as_deref()), (Some("1.0"), Some("1.1")));
        assert!(n.steps[2].output_tail.as_deref().unwrap_or("").contains("installed 1.1"), "{n:?}");
        assert!(n.started_ms <= n.ended_ms);
    }
    for (format, must) in [("md", "## node5"), ("html", "<h2>node5"), ("json", "\"name\": \"node5\"")] {
        let o = Command::new(exe())
            .args(["report", &id.to_string(), "--format", format, "--server", &serve.url])
            .env("BATON_TOKEN", &serve.token)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let text = String::from_utf8(o.stdout).unwrap();
        for node in ["node1", "node2", "node3", "node4", "node5"] {
            assert!(text.contains(node), "{format} report lacks {node}");
        }
        assert!(text.contains(must), "{format}: {must}");
        if format == "html" {
            // The timeline: six bars per node (one per step), none failed.
            assert_eq!(text.matches("<rect class=\"step\"").count(), 30, "{text}");
            assert!(
                text.contains("data-node=\"node5\" data-step=\"restoring\"")
                    && !text.contains("class=\"failure\"")
            );
        }
    }
}

/// A webhook receiver on loopback that refuses its first request.
struct Receiver {
    url: String,
    got: Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
    requests: Arc<AtomicUsize>,
}

async fn receiver() -> Receiver {
    receiver_over(None).await
}

/// As [`receiver`], over TLS with this configuration when given.
async fn receiver_over(tls: Option<Arc<rustls::ServerConfig>>) -> Receiver {
    let got = Arc::new(std::sync::Mutex::new(Vec::new()));
    let requests = Arc::new(AtomicUsize::new(0));
    let (g, r) = (got.clone(), requests.clone());
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(body): axum::Json<serde_json::Value>| {
            let (g, r) = (g.clone(), r.clone());
            async move {
                if r.fetch_add(1, Ordering::SeqCst) == 0 {
                    return axum::http::StatusCode::INTERNAL_SERVER_ERROR;
                }
                g.lock().unwrap().push(body);
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let url = match tls {
        Some(_) => format!("https://localhost:{port}/hook"),
        None => format!("http://127.0.0.1:{port}/hook"),
    };
    let limits = baton_net::Limits::for_this_process();
    let tls = tls.map(|c| tokio::sync::watch::channel(c).1);
    tokio::spawn(baton_net::serve(l, tls, app, limits, std::future::pending()));
    Receiver { url, got, requests }
}

impl Receiver {
    /// Waits until an event of this kind has been accepted; returns every accepted event.
    async fn wait_for(&self, event: &str) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = self.got.lock().unwrap().clone();
            if got.iter().any(|h| h["event"] == event) {
                return got;
            }
            assert!(Instant::now() < deadline, "no {event} webhook; got {got:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn events_of(got: &[serde_json::Value]) -> Vec<String> {
    let deliveries: std::collections::HashSet<&str> =
        got.iter().map(|h| h["delivery"].as_str().unwrap()).collect();
    assert_eq!(deliveries.len(), got.len(), "a webhook was delivered twice: {got:?}");
    got.iter().map(|h| h["event"].as_str().unwrap().to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_arrive_once_even_when_the_first_attempt_fails() {
    let hooks = receiver().await;
    let mut f = local(
        "webhooks",
        LocalOptions { nodes: 2, action_seconds: "0.2".into(), reboot_ms: 200, ..Default::default() },
    )
    .await;
    let serve = Serve::start(&f, port()).await;
    let toml = LocalFleet::campaign_toml(&format!("webhooks = [\"{}\"]\n", hooks.url));
    let v = serve.create_and_start(toml).await;
    serve
        .wait(v.id, Duration::from_secs(60), |v| {
            v.phase == Phase::Completed && v.active == 0 && !v.holds_fleet
        })
        .await;
    let got = hooks.wait_for("completed").await;
    assert_eq!(events_of(&got), ["started", "completed"]);
    assert_eq!(got[1]["campaign"], "demo-1.1");
    // The first attempt was refused and retried: one more request than events accepted.
    assert_eq!(hooks.requests.load(Ordering::SeqCst), got.len() + 1);
    drop(serve);
    f.stop().await;
}

/// Issue 11, item 5: the webhook client had no trust roots, so an HTTPS webhook could never
/// arrive. It trusts the system's roots now, and `--webhook-ca` adds a private CA: a receiver on
/// loopback with a certificate from its own CA gets the campaign's events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_webhook_with_its_own_ca_arrives() {
    use rustls::pki_types::pem::PemObject;
    let ca = fresh_dir("hook-ca");
    baton_pki::init_ca_days(&ca, "hooks", 30).unwrap();
    baton_pki::issue(&ca, "localhost", baton_pki::Role::Agent, &[]).unwrap();
    let certs: Vec<_> =
        rustls::pki_types::CertificateDer::pem_file_iter(baton_pki::cert_path(&ca, "localhost"))
            .unwrap()
            .map(|c| c.unwrap())
            .collect();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(baton_pki::key_path(&ca, "localhost")).unwrap();
    let tls = rustls::ServerConfig::builder_with_provider(baton_pki::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let hooks = receiver_over(Some(Arc::new(tls))).await;
    assert!(hooks.url.starts_with("https://localhost:"), "{}", hooks.url);
    let mut f = local(
        "https-hooks",
        LocalOptions { nodes: 1, action_seconds: "0.2".into(), reboot_ms: 200, ..Default::default() },
    )
    .await;
    let ca_pem = baton_pki::ca_cert_path(&ca).display().to_string();
    let serve = Serve::start_with(&f, port(), &f.dir.join("baton.db"), &["--webhook-ca", &ca_pem]).await;
    let toml = LocalFleet::campaign_toml(&format!("webhooks = [\"{}\"]\n", hooks.url));
    let v = serve.create_and_start(toml).await;
    serve
        .wait(v.id, Duration::from_secs(60), |v| {
            v.phase == Phase::Completed && v.active == 0 && !v.holds_fleet
        })
        .await;
    let got = hooks.wait_for("completed").await;
    assert_eq!(events_of(&got), ["started", "completed"]);
    drop(serve);
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_hooks_get_the_workload_moves() {
    let dir = fresh_dir("moves");
    let mut f = LocalFleet::create(&dir, &LocalOptions { nodes: 1, ..Default::default() }).unwrap();
    let hook = dir.join("hook.sh");
    std::fs::write(
        &hook,
        "#!/bin/sh\nprintf '%s' \"$BATON_MOVES\" > \"$1/moves.json\"\ncp \"$BATON_MOVES_FILE\" \"$1/moves-file.json\"\n",
    )
    .unwrap();
    let cfg = f.nodes[0].dir.join("agent.toml");
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(&format!(
        "\n[drain]\ndrain_hooks = [[\"/bin/sh\", \"{}\", \"{{state_dir}}\"]]\n",
        hook.display()
    ));
    std::fs::write(&cfg, text).unwrap();
    start_and_wait(&mut f, 200).await;
    let c = client(&f);
    let (name, addr) = (f.nodes[0].name.clone(), f.nodes[0].addr.clone());
    let moves = vec![baton_proto::WorkloadMove { workload: "vm1".into(), to: "hv2".into(), live: true }];
    let req = StepRequest {
        id: "c/node1/0/drain".into(),
        kind: StepKind::Drain,
        action: None,
        version: None,
        stop_grace_ms: Some(1000),
        moves,
    };
    c.start_step(&name, &addr, &req).await.unwrap();
    let st = c.step(&name, &addr, &req.id, 10_000).await.unwrap();
    assert_eq!(st.state, baton_proto::StepState::Ok, "{st:?}");
    let got = std::fs::read_to_string(f.nodes[0].dir.join("state/moves.json")).unwrap();
    assert_eq!(got, r#"[{"workload":"vm1","to":"hv2","live":true}]"#);
    let file = std::fs::read_to_string(f.nodes[0].dir.join("state/moves-file.json")).unwrap();
    assert_eq!(file, got);

    // Moves over what one environment string may hold (128 KiB) reach the hooks in the file.
    // Before: every hook failed to start ("Argument list too long").
    let moves: Vec<_> = (0..4000)
        .map(|i| baton_proto::WorkloadMove {
            workload: format!("vm-{i:05}"),
            to: format!("hv-{i:05}"),
            live: true,
        })
        .collect();
    let want = serde_json::to_string(&moves).unwrap();
    assert!(want.len() > 128 * 1024, "{}", want.len());
    let big = StepRequest { id: "c/node1/1/drain".into(), moves, ..req };
    c.start_step(&name, &addr, &big).await.unwrap();
    let st = c.step(&name, &addr, &big.id, 10_000).await.unwrap();
    assert_eq!(st.state, baton_proto::StepState::Ok, "{st:?}");
    let file = std::fs::read_to_string(f.nodes[0].dir.join("state/moves-file.json")).unwrap();
    assert_eq!(file, want);
    let env = std::fs::read_to_string(f.nodes[0].dir.join("state/moves.json")).unwrap();
    assert_eq!(env, baton_agent::MOVES_TOO_LARGE, "too large for the environment: not JSON, and says where");
    f.stop().await;
}

/// Failback end to end (issue 13): each node's drain moves its VM away and its restore step
/// brings it back, both in the moves its agent's hooks get; the report counts them and finds no
/// VM away from its preferred node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_hooks_get_the_workloads_coming_back() {
    let dir = fresh_dir("failback");
    let opts = LocalOptions { nodes: 3, action_seconds: "0.2".into(), reboot_ms: 200, ..Default::default() };
    let mut f = LocalFleet::create(&dir, &opts).unwrap();
    for (i, n) in f.nodes.iter().enumerate() {
        f.fleet_text.push_str(&format!(
            "\n[[workload]]\nname = \"vm{}\"\nnode = \"{}\"\ndemand = 8\nmovable = \"live\"\n",
            i + 1,
            n.name
        ));
    }
    std::fs::write(&f.fleet_file, &f.fleet_text).unwrap();
    let hook = dir.join("hook.sh");
    std::fs::write(&hook, "#!/bin/sh\nprintf '%s\\n' \"$BATON_MOVES\" >> \"$1/$2.log\"\n").unwrap();
    for n in &f.nodes {
        let cfg = n.dir.join("agent.toml");
        let mut text = std::fs::read_to_string(&cfg).unwrap();
        text.push_str(&format!(
            "\n[drain]\ndrain_hooks = [[\"/bin/sh\", \"{h}\", \"{{state_dir}}\", \"drain\"]]\n\
             restore_hooks = [[\"/bin/sh\", \"{h}\", \"{{state_dir}}\", \"restore\"]]\n",
            h = hook.display()
        ));
        std::fs::write(&cfg, text).unwrap();
    }
    start_and_wait(&mut f, opts.reboot_ms).await;
    let serve = Serve::start(&f, port()).await;
    // One node at a time, so that each drain moves its own VM only (with two, a node may drain
    // while a VM moved onto it has not gone back yet, and move it on).
    let toml = LocalFleet::campaign_toml("").replace("max_parallel = 2", "max_parallel = 1");
    let v = serve.create_and_start(toml).await;
    serve.wait(v.id, Duration::from_secs(120), |v| v.phase == Phase::Completed && v.active == 0).await;
    let moves = |node: &baton_agent::local::LocalNode, step: &str| -> Vec<baton_proto::WorkloadMove> {
        let text = std::fs::read_to_string(node.dir.join(format!("state/{step}.log"))).unwrap_or_default();
        text.lines()
            .flat_map(|l| serde_json::from_str::<Vec<baton_proto::WorkloadMove>>(l).unwrap())
            .collect()
    };
    let mut back = Vec::new();
    for (i, n) in f.nodes.iter().enumerate() {
        let vm = format!("vm{}", i + 1);
        let out = moves(n, "drain");
        assert_eq!(out.len(), 1, "{}'s drain moved {out:?}", n.name);
        assert_eq!(out[0].workload, vm);
        assert_ne!(out[0].to, n.name);
        back.extend(moves(n, "restore"));
    }
    // Every VM went back to its own node, each once, on restore steps.
    back.sort_by(|a, b| a.workload.cmp(&b.workload));
    let got: Vec<(String, String)> = back.iter().map(|m| (m.workload.clone(), m.to.clone())).collect();
    let want: Vec<(String, String)> =
        f.nodes.iter().enumerate().map(|(i, n)| (format!("vm{}", i + 1), n.name.clone())).collect();
    assert_eq!(got, want);
    let r = serve.report(v.id).await;
    assert_eq!((r.workloads_moved, r.workloads_returned), (3, 3));
    assert!(r.displaced.is_empty(), "{:?}", r.displaced);
    drop(serve);
    f.stop().await;
}

/// A restore whose service does not start fails, and its hooks are not run: nothing is moved
/// onto a node that stays out (the orchestrator takes the moves as not done).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_hooks_are_not_run_when_a_service_does_not_start() {
    let dir = fresh_dir("restore-fails");
    let mut f = LocalFleet::create(&dir, &LocalOptions { nodes: 1, ..Default::default() }).unwrap();
    let hook = dir.join("hook.sh");
    std::fs::write(&hook, "#!/bin/sh\nprintf '%s' \"$BATON_MOVES\" > \"$1/restored.json\"\n").unwrap();
    let cfg = f.nodes[0].dir.join("agent.toml");
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(&format!(
        "\n[drain]\nservices = [\"web\"]\nstart_command = [\"/bin/false\"]\n\
         restore_hooks = [[\"/bin/sh\", \"{}\", \"{{state_dir}}\"]]\n",
        hook.display()
    ));
    std::fs::write(&cfg, text).unwrap();
    start_and_wait(&mut f, 200).await;
    let c = client(&f);
    let (name, addr) = (f.nodes[0].name.clone(), f.nodes[0].addr.clone());
    let moves = vec![baton_proto::WorkloadMove { workload: "vm1".into(), to: name.clone(), live: true }];
    let req = StepRequest {
        id: "c/node1/0/restore".into(),
        kind: StepKind::Restore,
        action: None,
        version: None,
        stop_grace_ms: None,
        moves,
    };
    c.start_step(&name, &addr, &req).await.unwrap();
    let st = c.step(&name, &addr, &req.id, 10_000).await.unwrap();
    assert_eq!(st.state, baton_proto::StepState::Failed, "{st:?}");
    assert!(st.error.as_deref().unwrap_or_default().contains("web"), "{st:?}");
    assert!(!f.nodes[0].dir.join("state/restored.json").exists(), "a restore hook ran");
    f.stop().await;
}
