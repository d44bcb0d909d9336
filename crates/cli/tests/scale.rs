//! Issue 14: one orchestrator against hundreds of hollow agents (`baton hollow`: real agents in
//! one process, each with its own port, certificate and journal; only the host is simulated),
//! with the dashboard's stream open. `bench/orchestrator-scale.sh` runs the same at 1,000 and
//! 10,000 nodes and measures it; this checks what must hold at any size.

mod support;
use std::io::BufRead;
use support::*;

/// What the stream said, applied as the dashboard applies it.
#[derive(Default)]
struct Follower {
    views: std::collections::BTreeMap<i64, serde_json::Value>,
    bytes: usize,
    deltas: usize,
    entries: usize,
    snapshots: usize,
}

impl Follower {
    fn take(&mut self, event: &str, data: &str) {
        let item: serde_json::Value = serde_json::from_str(data).expect("stream data is JSON");
        match event {
            "view" => {
                self.snapshots += 1;
                let mut item = item;
                // `type` says what the item is; the rest is the view.
                item.as_object_mut().unwrap().remove("type");
                let id = item["id"].as_i64().unwrap();
                self.views.insert(id, item);
            }
            "delta" => {
                self.deltas += 1;
                let id = item["campaign"].as_i64().unwrap();
                let v = self.views.get_mut(&id).expect("a campaign's whole view comes before its deltas");
                for k in [
                    "phase",
                    "holds_fleet",
                    "updated",
                    "failed",
                    "skipped",
                    "pending",
                    "active",
                    "events",
                    "eta_ms",
                    "window_opens_at_ms",
                    "started_at_ms",
                ] {
                    v[k] = item[k].clone();
                }
                for (list, key) in [("nodes", "nodes"), ("services", "services")] {
                    for d in item[list].as_array().unwrap() {
                        let mut d = d.clone();
                        let i =
                            d.as_object_mut().unwrap().remove("index").unwrap().as_u64().unwrap() as usize;
                        v[key][i] = d;
                    }
                }
            }
            "entry" => self.entries += 1,
            _ => {}
        }
    }
}

/// A child process killed when dropped: a failing assertion leaves no agents behind.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_hollow_agents_with_the_stream_open() {
    let nodes = 300;
    let dir = fresh_dir("scale");
    std::fs::create_dir_all(&dir).unwrap();
    let mut hollow = Killed(
        Command::new(exe())
            .args(["hollow", "--dir"])
            .arg(dir.join("fleet"))
            .args(["--nodes", &nodes.to_string(), "--action", "300ms..800ms", "--reboot", "100ms..300ms"])
            .args(["--update-domains", "5", "--service-size", "30"])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.join("hollow.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    // `ready FLEET-FILE` once every agent's files are written and the agents are starting.
    let out = hollow.0.stdout.take().unwrap();
    let ready = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        std::io::BufReader::new(out).read_line(&mut line).map(|_| line)
    });
    let line = tokio::time::timeout(Duration::from_secs(120), ready)
        .await
        .expect("hollow agents ready")
        .unwrap()
        .unwrap();
    let fleet_file = line.strip_prefix("ready ").expect("a ready line").trim().to_string();
    let port = port();
    let token_file = dir.join("operator.token");
    baton_pki::write_private(&token_file, Serve::TOKEN.as_bytes()).unwrap();
    let mut cmd = Command::new(exe());
    cmd.args(["serve", "--fleet", &fleet_file, "--db"])
        .arg(format!("sqlite:{}", dir.join("baton.db").display()))
        .args(["--listen", &format!("127.0.0.1:{port}"), "--pki"])
        .arg(dir.join("fleet/pki"))
        .arg("--token-file")
        .arg(&token_file);
    let serve = Serve::spawn(cmd, port, &dir).await;

    // The dashboard's stream, open before the campaign exists.
    let mut stream = serve.http.get(format!("{}/v1/stream", serve.url)).send().await.unwrap();
    assert!(stream.status().is_success());
    let follower = Arc::new(std::sync::Mutex::new(Follower::default()));
    let reader = {
        let follower = follower.clone();
        tokio::spawn(async move {
            let mut buf = String::new();
            while let Ok(Some(chunk)) = stream.chunk().await {
                let mut f = follower.lock().unwrap();
                f.bytes += chunk.len();
                buf.push_str(std::str::from_utf8(&chunk).unwrap());
                while let Some(end) = buf.find("\n\n") {
                    let block: String = buf.drain(..end + 2).collect();
                    let mut event = "message";
                    let mut data = String::new();
                    for l in block.lines() {
                        if let Some(e) = l.strip_prefix("event:") {
                            event = e.trim();
                        } else if let Some(d) = l.strip_prefix("data:") {
                            data.push_str(d.trim_start());
                        }
                    }
                    if !data.is_empty() {
                        f.take(event, &data);
                    }
                }
            }
        })
    };

    let toml = "name = \"scale\"\ntarget_version = \"1.1\"\naction = \"upgrade\"\nstrategy = \"continuous\"\n\
                max_parallel = \"10%\"\nmax_failed_nodes = 0\nhealth_wait = \"0s\"\nhealth_stable = \"500ms\"\n\
                reboot_timeout = \"1m\"\nready_timeout = \"1m\"\nstop_grace = \"10s\"\n";
    let v = serve.create_and_start(toml.into()).await;
    let end =
        // Settled: completed, and every node's auto-updaters given back (the fleet let go).
        serve.wait(v.id, Duration::from_secs(600), |v| v.phase == Phase::Completed && v.active == 0 && !v.holds_fleet).await;
    assert_eq!((end.updated, end.failed, end.skipped), (nodes, 0, 0), "{end:#?}");
    assert!(end.nodes.iter().all(|n| n.version.as_deref() == Some("1.1") && n.state == "done"));

    // Every service's budget and max_parallel held after every event of the journal, and it
    // replays to every node done.
    let journal = serve.events(v.id).await;
    let fleet_text = std::fs::read_to_string(&fleet_file).unwrap();
    budget_violation_in(&fleet_text, toml, &journal).unwrap();
    let fleet = Arc::new(load_fleet("fleet.toml", &fleet_text).unwrap());
    let spec = load_campaign("campaign.toml", toml, &fleet).unwrap();
    let entries: Vec<(u64, Event)> = journal.iter().map(|e| (e.at_ms, decoded(e))).collect();
    let c = Campaign::replay(fleet, spec, &entries).expect("the journal replays");
    assert!(c.nodes.iter().all(|r| matches!(r.state, baton_core::NodeState::Done { .. })));

    // The stream's deltas, applied to the whole view it sent first, give the view the API shows.
    let deadline = Instant::now() + Duration::from_secs(20);
    let want = serde_json::to_value(serve.view(v.id).await.unwrap()).unwrap();
    loop {
        let same = follower.lock().unwrap().views.get(&v.id) == Some(&want);
        if same {
            break;
        }
        if Instant::now() > deadline {
            let f = follower.lock().unwrap();
            let got = f.views.get(&v.id).cloned().unwrap_or_default();
            let mut diff = Vec::new();
            for (k, w) in want.as_object().unwrap() {
                if k == "nodes" || k == "services" {
                    for (i, (a, b)) in
                        w.as_array().unwrap().iter().zip(got[k].as_array().unwrap()).enumerate()
                    {
                        if a != b {
                            diff.push(format!("{k}[{i}]: API {a}, stream {b}"));
                        }
                    }
                } else if got[k] != *w {
                    diff.push(format!("{k}: API {w}, stream {}", got[k]));
                }
            }
            panic!(
                "the stream's view never became the API's: {} differences, first {:?}",
                diff.len(),
                &diff[..diff.len().min(4)]
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    reader.abort();
    let f = follower.lock().unwrap();
    // Deltas, not the whole fleet after each event: a view of this fleet is ~45 KB, and there
    // were thousands of events.
    let per_event = f.bytes / journal.len();
    // Every entry but the plan (journaled at creation) was streamed; what they changed came as
    // deltas (one per batch of events journaled together).
    assert_eq!(f.entries, journal.len() - 1);
    assert!(f.deltas > 0 && f.deltas <= f.entries + 1000, "{} deltas for {} entries", f.deltas, f.entries);
    assert!(per_event < 2_000, "{per_event} bytes of stream per event: whole views, not what changed");
    assert_eq!(f.snapshots, 1, "the subscriber fell behind and was sent the whole view again");
    drop(f);
    drop(serve);
    drop(hollow);
}
