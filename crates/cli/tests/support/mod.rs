//! What the tests with real processes share: `baton serve` as a child process, local fleets of
//! supervised agents, and checks over their journals.
#![allow(dead_code, unused_imports)]

pub use baton_agent::local::{LocalFleet, LocalOptions};
pub use baton_core::campaign::Event;
pub use baton_core::{load_campaign, load_fleet, Campaign};
pub use baton_proto::{CampaignView, JournalEntry, Phase, StepKind, StepRequest};
pub use baton_server::client::AgentClient;
pub use std::path::{Path, PathBuf};
pub use std::process::{Child, Command, Stdio};
pub use std::sync::atomic::{AtomicUsize, Ordering};
pub use std::sync::Arc;
pub use std::time::{Duration, Instant};

pub static N: AtomicUsize = AtomicUsize::new(0);

pub fn exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_baton"))
}

pub fn fresh_dir(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("live").join(format!(
        "{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// `baton serve` as a child process on a free port.
pub struct Serve {
    pub child: Child,
    pub url: String,
    pub token: String,
    pub http: reqwest::Client,
}

/// The `baton serve` command line for a local fleet, its journal at `db`.
pub fn serve_command(fleet: &LocalFleet, port: u16, db: &Path) -> Command {
    let token_file = fleet.dir.join("operator.token");
    baton_pki::write_private(&token_file, Serve::TOKEN.as_bytes()).unwrap();
    let mut cmd = Command::new(exe());
    cmd.args(["serve", "--fleet"])
        .arg(&fleet.fleet_file)
        .arg("--db")
        .arg(format!("sqlite:{}", db.display()))
        .args(["--listen", &format!("127.0.0.1:{port}"), "--pki"])
        .arg(&fleet.pki)
        .arg("--token-file")
        .arg(&token_file);
    cmd
}

impl Serve {
    pub const TOKEN: &'static str = "test-token-0123456789";

    pub async fn start(fleet: &LocalFleet, port: u16) -> Serve {
        Serve::start_on(fleet, port, &fleet.dir.join("baton.db")).await
    }

    /// As `start`, with the journal at `db`.
    pub async fn start_on(fleet: &LocalFleet, port: u16, db: &Path) -> Serve {
        Serve::start_with(fleet, port, db, &[]).await
    }

    /// As `start_on`, with more flags.
    pub async fn start_with(fleet: &LocalFleet, port: u16, db: &Path, flags: &[&str]) -> Serve {
        let mut cmd = serve_command(fleet, port, db);
        cmd.args(flags);
        Serve::spawn(cmd, port, &fleet.dir).await
    }

    /// Runs a `baton serve` command line that listens on `port` with [`Serve::TOKEN`], its log
    /// in `dir`, and waits until it answers.
    pub async fn spawn(mut cmd: Command, port: u16, dir: &Path) -> Serve {
        baton_pki::install_default_provider();
        let token = Serve::TOKEN;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("serve.log")).unwrap();
        let child = cmd.stdout(Stdio::null()).stderr(log).spawn().unwrap();
        let s = Serve {
            child,
            url: format!("http://127.0.0.1:{port}"),
            token: token.into(),
            // Reads need the token too: every request of this client carries it.
            http: reqwest::Client::builder()
                .default_headers(
                    [(reqwest::header::AUTHORIZATION, format!("Bearer {token}").parse().unwrap())]
                        .into_iter()
                        .collect(),
                )
                .build()
                .unwrap(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while s.http.get(format!("{}/healthz", s.url)).send().await.is_err() {
            assert!(
                Instant::now() < deadline,
                "baton serve did not come up; see {}",
                dir.join("serve.log").display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        s
    }

    pub fn sigkill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub async fn post<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<T, (u16, String)> {
        let mut r = self.http.post(format!("{}{path}", self.url)).bearer_auth(&self.token);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let r = r.send().await.map_err(|e| (0, e.to_string()))?;
        let code = r.status().as_u16();
        if r.status().is_success() {
            Ok(r.json().await.unwrap())
        } else {
            Err((code, r.text().await.unwrap_or_default()))
        }
    }

    pub async fn create_and_start(&self, toml: String) -> CampaignView {
        let v: CampaignView =
            self.post("/v1/campaigns", Some(serde_json::json!({"toml": toml}))).await.expect("create");
        let _: CampaignView = self.post(&format!("/v1/campaigns/{}/start", v.id), None).await.expect("start");
        v
    }

    pub async fn view(&self, id: i64) -> Option<CampaignView> {
        let r = self.http.get(format!("{}/v1/campaigns/{id}", self.url)).send().await.ok()?;
        r.json().await.ok()
    }

    /// The campaign's run report.
    pub async fn report(&self, id: i64) -> baton_proto::Report {
        self.get_json(&format!("/v1/campaigns/{id}/report")).await
    }

    /// A GET of the API that must work, its body as JSON.
    pub async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> T {
        self.http.get(format!("{}{path}", self.url)).send().await.unwrap().json().await.unwrap()
    }

    pub async fn events(&self, id: i64) -> Vec<JournalEntry> {
        self.get_json(&format!("/v1/campaigns/{id}/events")).await
    }

    /// Waits, long-polling the journal, until the campaign's view satisfies `done`.
    pub async fn wait(
        &self,
        id: i64,
        within: Duration,
        done: impl Fn(&CampaignView) -> bool,
    ) -> CampaignView {
        let deadline = Instant::now() + within;
        let mut after = 0;
        loop {
            if let Some(v) = self.view(id).await {
                if done(&v) {
                    return v;
                }
                assert!(Instant::now() < deadline, "timed out waiting; last view: {v:#?}");
                after = v.events;
            }
            let _ = self
                .http
                .get(format!("{}/v1/campaigns/{id}/events?after={after}&wait_ms=2000", self.url))
                .send()
                .await;
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.sigkill();
    }
}

pub fn client(fleet: &LocalFleet) -> AgentClient {
    AgentClient::new(&baton_pki::TlsFiles::in_dir(&fleet.pki, "orchestrator")).unwrap()
}

/// A port for `baton serve`, which a test may restart on the same port after killing it.
/// Starts a created fleet's agents (after a test changed their configs) and waits until every
/// one answers.
pub async fn start_and_wait(f: &mut LocalFleet, reboot_ms: u64) {
    f.start(&exe(), reboot_ms);
    let c = client(f);
    let deadline = Instant::now() + Duration::from_secs(20);
    for n in &f.nodes {
        while c.status(&n.name, &n.addr, None, 0).await.is_err() {
            assert!(Instant::now() < deadline, "agent {} did not come up; see {}", n.name, n.dir.display());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

pub fn port() -> u16 {
    baton_agent::local::free_port().unwrap()
}

pub async fn local(name: &str, o: LocalOptions) -> LocalFleet {
    let mut f = LocalFleet::create(&fresh_dir(name), &o).unwrap();
    start_and_wait(&mut f, o.reboot_ms).await;
    f
}

/// Every step every agent ran, with how many times; asserts none ran twice.
pub async fn steps_ran_once(f: &LocalFleet) -> usize {
    let c = client(f);
    let mut total = 0;
    for n in &f.nodes {
        for s in c.steps(&n.name, &n.addr).await.unwrap() {
            assert_eq!(s.executions, 1, "{}: step {} ran {} times", n.name, s.id, s.executions);
            total += 1;
        }
    }
    total
}

/// A journal entry's event, read as the orchestrator stored it (any schema version).
pub fn decoded(e: &JournalEntry) -> Event {
    baton_core::journal::decode_value(e.event.clone()).expect("a journal entry baton can read")
}

/// Replays the journal through the core and checks the services' budgets after every event.
pub fn budgets_kept(fleet: &LocalFleet, campaign_toml: &str, journal: &[JournalEntry]) {
    if let Err(e) = budget_violation(fleet, campaign_toml, journal) {
        panic!("{e}");
    }
}

/// The first moment, replaying the journal through the core, at which a service had more
/// members down than its allowance or more nodes were active than max_parallel.
pub fn budget_violation(
    fleet: &LocalFleet,
    campaign_toml: &str,
    journal: &[JournalEntry],
) -> Result<(), String> {
    budget_violation_in(&fleet.fleet_text, campaign_toml, journal)
}

/// As [`budget_violation`], for any fleet file's text.
pub fn budget_violation_in(
    fleet_text: &str,
    campaign_toml: &str,
    journal: &[JournalEntry],
) -> Result<(), String> {
    let fl = load_fleet("fleet.toml", fleet_text).unwrap();
    let spec = load_campaign("campaign.toml", campaign_toml, &fl).unwrap();
    let events: Vec<(u64, Event)> = journal.iter().map(|e| (e.at_ms, decoded(e))).collect();
    let (mut c, taken) = Campaign::begin(Arc::new(fl), spec, events.first().map(|e| &e.1)).unwrap();
    for (e, (at, event)) in journal.iter().zip(&events).skip(taken) {
        c.handle(*at, event.clone())
            .map_err(|err| format!("journal entry {} does not replay: {err}", e.seq))?;
        for (s, svc) in c.fleet.services.iter().enumerate() {
            if c.down(s) > svc.allowance {
                return Err(format!("service {} has {} down after event {}", svc.name, c.down(s), e.seq));
            }
        }
        if c.active() > c.max_parallel {
            return Err(format!(
                "{} nodes active after event {}, max_parallel {}",
                c.active(),
                e.seq,
                c.max_parallel
            ));
        }
    }
    Ok(())
}
