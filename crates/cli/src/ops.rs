//! Operator commands against a running orchestrator: run, status, pause, resume, abort, events.

use baton_proto::{
    ApiError, CampaignView, CreateCampaign, FleetView, JournalEntry, ScheduleRun, ScheduleView,
};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use std::collections::BTreeMap;
use std::time::Duration;

/// Why a call to the orchestrator failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiFailure {
    #[error("cannot reach the orchestrator at {base}: {err}")]
    Unreachable { base: String, err: reqwest::Error },
    /// The orchestrator refused, with its documented code.
    #[error("{message} ({code}, {status})")]
    Refused { status: u16, code: String, message: String },
    #[error("--server {base} is not a URL like http://127.0.0.1:7700: {err}")]
    BadServer { base: String, err: String },
    #[error("the orchestrator answered {0} without an error body")]
    Status(u16),
    #[error("unexpected answer from the orchestrator: {0}")]
    Answer(reqwest::Error),
}

impl ApiFailure {
    /// The exit code DESIGN.md gives what the orchestrator refuses: a bad campaign (or a bad
    /// token) is bad input, 2; rules that can never be met, 3; anything else, 1.
    pub fn exit_code(&self) -> u8 {
        match self {
            ApiFailure::Refused { code, .. }
                if ["bad-campaign", "no-schedule", "unauthorized"].contains(&code.as_str()) =>
            {
                2
            }
            ApiFailure::Refused { code, .. } if code == "infeasible" => 3,
            ApiFailure::BadServer { .. } => 2,
            _ => 1,
        }
    }
}

/// How to reach the orchestrator.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub token: Option<String>,
    http: reqwest::Client,
}

impl Api {
    pub fn new(base: &str, token: Option<String>) -> Api {
        // Idle connections are dropped before the API's 10 s header-read time closes them.
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(90))
            .pool_idle_timeout(Duration::from_secs(5))
            .build()
            .expect("http client");
        Api { base: base.trim_end_matches('/').to_string(), token, http }
    }

    async fn read<T: serde::de::DeserializeOwned>(
        &self,
        r: reqwest::RequestBuilder,
    ) -> Result<T, ApiFailure> {
        let r = match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        };
        let r = r
            .header("x-baton-operator", whoami())
            .send()
            .await
            .map_err(|err| ApiFailure::Unreachable { base: self.base.clone(), err })?;
        if r.status().is_success() {
            r.json().await.map_err(ApiFailure::Answer)
        } else {
            let status = r.status().as_u16();
            match r.json::<ApiError>().await {
                Ok(e) => Err(ApiFailure::Refused { status, code: e.code, message: e.message }),
                Err(_) => Err(ApiFailure::Status(status)),
            }
        }
    }

    pub async fn create(&self, file: &str, toml: String) -> Result<CampaignView, ApiFailure> {
        let body = CreateCampaign { toml, file: Some(file.to_string()) };
        self.read(self.http.post(format!("{}/v1/campaigns", self.base)).json(&body)).await
    }

    pub async fn act(&self, id: i64, action: &str) -> Result<CampaignView, ApiFailure> {
        let r = self.http.post(format!("{}/v1/campaigns/{id}/{action}", self.base));
        // A start runs the campaign's before_start first, for up to 30 minutes.
        let r = if action == "start" { r.timeout(Duration::from_secs(31 * 60)) } else { r };
        self.read(r).await
    }

    pub async fn add_schedule(&self, file: &str, toml: String) -> Result<ScheduleView, ApiFailure> {
        let body = CreateCampaign { toml, file: Some(file.to_string()) };
        self.read(self.http.post(format!("{}/v1/schedules", self.base)).json(&body)).await
    }

    pub async fn schedules(&self) -> Result<Vec<ScheduleView>, ApiFailure> {
        self.read(self.http.get(format!("{}/v1/schedules", self.base))).await
    }

    /// `/v1/schedules/NAME` and what follows, the name as one path segment whatever it holds.
    fn schedule_url(&self, name: &str, rest: &[&str]) -> Result<reqwest::Url, ApiFailure> {
        let mut u = reqwest::Url::parse(&format!("{}/v1/schedules", self.base))
            .map_err(|e| ApiFailure::BadServer { base: self.base.clone(), err: e.to_string() })?;
        match u.path_segments_mut() {
            Ok(mut p) => {
                p.push(name).extend(rest);
            }
            Err(()) => {
                return Err(ApiFailure::BadServer {
                    base: self.base.clone(),
                    err: "it cannot have a path".into(),
                })
            }
        }
        Ok(u)
    }

    pub async fn remove_schedule(&self, name: &str) -> Result<ScheduleView, ApiFailure> {
        self.read(self.http.delete(self.schedule_url(name, &[])?)).await
    }

    pub async fn schedule_runs(&self, name: &str) -> Result<Vec<ScheduleRun>, ApiFailure> {
        self.read(self.http.get(self.schedule_url(name, &["runs"])?)).await
    }

    pub async fn unfence(&self, node: &str) -> Result<FleetView, ApiFailure> {
        let mut u = reqwest::Url::parse(&format!("{}/v1/fleet/nodes", self.base))
            .map_err(|e| ApiFailure::BadServer { base: self.base.clone(), err: e.to_string() })?;
        u.path_segments_mut()
            .map_err(|()| ApiFailure::BadServer {
                base: self.base.clone(),
                err: "it cannot have a path".into(),
            })?
            .push(node)
            .push("unfence");
        self.read(self.http.post(u)).await
    }

    pub async fn fleet(&self) -> Result<FleetView, ApiFailure> {
        self.read(self.http.get(format!("{}/v1/fleet", self.base))).await
    }

    pub async fn view(&self, id: i64) -> Result<CampaignView, ApiFailure> {
        self.read(self.http.get(format!("{}/v1/campaigns/{id}", self.base))).await
    }

    pub async fn report(&self, id: i64) -> Result<baton_proto::Report, ApiFailure> {
        self.read(self.http.get(format!("{}/v1/campaigns/{id}/report", self.base))).await
    }

    pub async fn list(&self) -> Result<Vec<CampaignView>, ApiFailure> {
        self.read(self.http.get(format!("{}/v1/campaigns", self.base))).await
    }

    pub async fn events(
        &self,
        id: i64,
        after: i64,
        wait_ms: Option<u64>,
    ) -> Result<Vec<JournalEntry>, ApiFailure> {
        let mut q = vec![("after", after.to_string())];
        if let Some(w) = wait_ms {
            q.push(("wait_ms", w.to_string()));
        }
        self.read(self.http.get(format!("{}/v1/campaigns/{id}/events", self.base)).query(&q)).await
    }
}

fn whoami() -> String {
    std::env::var("USER").unwrap_or_else(|_| "operator".into())
}

pub fn settled(v: &CampaignView) -> bool {
    use baton_proto::Phase::*;
    match v.phase {
        Completed | Committed | RolledBack | Aborted | Halted => v.active == 0,
        _ => false,
    }
}

/// Follows a campaign until it settles, showing progress: bars per wave and overall in a
/// terminal, one line per change otherwise. Event-driven: long polls on the journal.
pub async fn follow(api: &Api, id: i64, tty: bool) -> Result<CampaignView, ApiFailure> {
    let mut v = api.view(id).await?;
    let total = v.nodes.iter().filter(|n| n.wave.is_some() || n.state == "skipped").count() as u64;
    let mp = MultiProgress::new();
    let mut bars: BTreeMap<usize, ProgressBar> = BTreeMap::new();
    let overall = if tty {
        let b = mp.add(ProgressBar::new(total));
        b.set_style(
            ProgressStyle::with_template("{prefix:>8} [{bar:30}] {pos}/{len} {msg}")
                .expect("style")
                .progress_chars("=> "),
        );
        b.set_prefix("overall");
        let mut waves: BTreeMap<usize, u64> = BTreeMap::new();
        for n in &v.nodes {
            if let Some(w) = n.wave {
                *waves.entry(w).or_default() += 1;
            }
        }
        for (w, len) in waves {
            let wb = mp.add(ProgressBar::new(len));
            wb.set_style(
                ProgressStyle::with_template("{prefix:>8} [{bar:30}] {pos}/{len} {msg}")
                    .expect("style")
                    .progress_chars("=> "),
            );
            wb.set_prefix(format!("wave {}", w + 1));
            bars.insert(w, wb);
        }
        Some(b)
    } else {
        None
    };
    let mut last_state: BTreeMap<String, String> = BTreeMap::new();
    let mut after = 0;
    loop {
        // Lines for what changed.
        let mut done_total = 0;
        let mut per_wave: BTreeMap<usize, (u64, Vec<String>)> = BTreeMap::new();
        let first = last_state.is_empty();
        for n in &v.nodes {
            let finished = matches!(n.state.as_str(), "done" | "failed" | "skipped");
            if finished {
                done_total += 1;
            }
            if let Some(w) = n.wave {
                let e = per_wave.entry(w).or_default();
                if finished {
                    e.0 += 1;
                }
                if n.state != "pending" && n.state != "done" {
                    e.1.push(format!("{} {}", n.name, n.state));
                }
            }
            if last_state.get(&n.name) != Some(&n.state) {
                // Plain lines: every change, but not the nodes still waiting at the start.
                let waiting = matches!(n.state.as_str(), "pending" | "not-targeted");
                if overall.is_none() && !(first && waiting) {
                    let extra = n.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default();
                    let ver = n.version.as_deref().map(|x| format!(" (at {x})")).unwrap_or_default();
                    println!("{} {}{ver}{extra}", n.name, n.state);
                }
                last_state.insert(n.name.clone(), n.state.clone());
            }
        }
        if let Some(b) = &overall {
            b.set_position(done_total);
            b.set_message(format!("{} · {} active · {} failed", v.phase, v.active, v.failed));
            for (w, wb) in &bars {
                let (pos, states) = per_wave.get(w).cloned().unwrap_or_default();
                wb.set_position(pos);
                wb.set_message(states.join(", "));
            }
        }
        if settled(&v) {
            break;
        }
        let evs = api.events(id, after, Some(20_000)).await?;
        if let Some(e) = evs.last() {
            after = e.seq;
        }
        v = api.view(id).await?;
    }
    if let Some(b) = overall {
        b.finish();
        for wb in bars.values() {
            wb.finish();
        }
    }
    Ok(v)
}

pub fn print_view(v: &CampaignView) {
    println!(
        "campaign {} (id {}) on fleet {}: {} → {}, strategy {}, {} waves",
        v.name, v.id, v.fleet, v.phase, v.target_version, v.strategy, v.waves
    );
    println!(
        "{} updated, {} failed, {} skipped, {} pending, {} active",
        v.updated, v.failed, v.skipped, v.pending, v.active
    );
    match (v.pass.as_str(), &v.after_commit_action) {
        ("after-commit", Some(a)) => println!(
            "committed at {}; after-commit pass: {a} on every node of the fleet (the counts above are this pass's)",
            v.target_version
        ),
        ("forward", Some(a)) => println!("once committed, {a} runs on every node of the fleet (after-commit pass)"),
        _ => {}
    }
    let at = |ms: u64| {
        jiff::Timestamp::from_millisecond(ms as i64).map(|t| t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string())
    };
    if let Some(Ok(open)) = v.window_opens_at_ms.map(at) {
        println!("waiting for its maintenance window: no node starts before {open}");
    }
    if let Some(Ok(eta)) = v.eta_ms.map(at) {
        println!("expected to end about {eta}");
    }
    for n in &v.nodes {
        let ud = n.update_domain.map(|u| format!("UD {u}")).unwrap_or_else(|| "no UD".into());
        let reason = n.reason.as_deref().map(|r| format!("  ({r})")).unwrap_or_default();
        println!(
            "  {:<16} {:<6} {:<12} {}{reason}",
            n.name,
            ud,
            n.state,
            n.version.as_deref().unwrap_or("?")
        );
    }
}

pub fn print_events(evs: &[JournalEntry]) {
    for e in evs {
        let t = e.at_ms;
        let secs = (t / 1000) % 86_400;
        let line = serde_json::to_string(&e.event).unwrap_or_default();
        println!(
            "{:>6} {:02}:{:02}:{:02}.{:03} {line}",
            e.seq,
            secs / 3600,
            secs / 60 % 60,
            secs % 60,
            t % 1000
        );
    }
}

fn utc(ms: u64) -> String {
    jiff::Timestamp::from_millisecond(ms as i64)
        .map(|t| t.strftime("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|_| format!("{ms} ms"))
}

/// A duration to the minute, largest units first: `3d4h`, `2h5m`, `under a minute`.
fn age(ms: u64) -> String {
    let m = ms / 60_000;
    if m == 0 {
        return "under a minute".into();
    }
    baton_core::units::format_duration(m * 60_000)
}

/// The fleet's level and mixed mode, in a line or two (`baton status`).
pub fn print_fleet(f: &FleetView) {
    let level = f.functional_level.as_deref().unwrap_or("not set");
    let mixed = match (f.mixed_mode, f.mixed_since_ms, f.mixed_age_ms) {
        (false, ..) => "not in mixed mode".to_string(),
        (true, Some(since), Some(a)) => format!(
            "mixed mode for {} (since {}; limit {}{})",
            age(a),
            utc(since),
            baton_core::units::format_duration(f.mixed_mode_limit_ms),
            if f.mixed_mode_overdue { ", OVERDUE: commit or roll back" } else { "" }
        ),
        (true, ..) => {
            "mixed mode (its nodes are at different versions, and no campaign started it)".to_string()
        }
    };
    println!("fleet {}: functional level {level}, {mixed}", f.name);
    let fenced: Vec<String> = f
        .nodes
        .iter()
        .filter(|n| n.fenced)
        .map(|n| format!("{} ({})", n.name, n.version.as_deref().unwrap_or("?")))
        .collect();
    if !fenced.is_empty() {
        println!("fenced (older than the level, kept out of service): {}", fenced.join(", "));
    }
}

/// What committing `v` does, for the operator to read before confirming.
pub fn commit_preview(v: &CampaignView, f: &FleetView) -> String {
    let from = f.functional_level.as_deref().unwrap_or("not set");
    let mut out = format!(
        "Commit campaign {} (id {}) on fleet {}: the functional level goes from {from} to {}.\n",
        v.name, v.id, v.fleet, v.target_version
    );
    let (at, not): (Vec<&baton_proto::FleetNode>, Vec<&baton_proto::FleetNode>) =
        f.nodes.iter().partition(|n| n.version.as_deref() == Some(v.target_version.as_str()));
    out += &format!("  {} of {} nodes are at {}", at.len(), f.nodes.len(), v.target_version);
    if !not.is_empty() {
        let list: Vec<String> = not
            .iter()
            .take(10)
            .map(|n| format!("{} at {}", n.name, n.version.as_deref().unwrap_or("?")))
            .collect();
        out += &format!(
            "; not: {} (the orchestrator refuses the commit while any node is down or behind)",
            list.join(", ")
        );
    }
    let down: Vec<&str> =
        v.nodes.iter().filter(|n| n.out_of_service || n.state == "failed").map(|n| n.name.as_str()).collect();
    if !down.is_empty() {
        out += &format!("\n  down or failed now: {}", down.join(", "));
    }
    out += "\nThis cannot be undone: after it, the campaign cannot be rolled back, and a node at an older \
            version is fenced (kept out of the load balancer, its services stopped) until it is updated.\n";
    if let Some(a) = &v.after_commit_action {
        out += &format!(
            "Then after_commit_action {a} runs on every node of the fleet ({} nodes), under the campaign's \
             rules and strategy: each node drained, the action, a reboot only if it asks, verified, restored.\n",
            f.nodes.len()
        );
    }
    out
}

/// What rolling `v` back does, for the operator to read before confirming.
pub fn rollback_preview(v: &CampaignView, _f: &FleetView) -> String {
    // The nodes the campaign updated go back (those in flight once they are done); nodes not
    // started, skipped or failed stay as they are.
    let back: Vec<&baton_proto::NodeView> = v
        .nodes
        .iter()
        .filter(|n| !["pending", "not-targeted", "skipped", "failed"].contains(&n.state.as_str()))
        .collect();
    let mut tos: Vec<&str> =
        back.iter().map(|n| n.from_version.as_deref().unwrap_or("its earlier version")).collect();
    tos.sort_unstable();
    tos.dedup();
    let list: Vec<String> = back
        .iter()
        .take(20)
        .map(|n| format!("{} → {}", n.name, n.from_version.as_deref().unwrap_or("its earlier version")))
        .collect();
    let more = if back.len() > 20 { format!(" and {} more", back.len() - 20) } else { String::new() };
    format!(
        "Roll back campaign {} (id {}) on fleet {}: {} node(s) go back from {} to {}, under the same \
         safety rules (one service's allowance at a time); nodes not started are left as they are.\n  {}{more}\n",
        v.name,
        v.id,
        v.fleet,
        back.len(),
        v.target_version,
        tos.join(" / "),
        if back.is_empty() { "no node was updated yet".to_string() } else { list.join(", ") }
    )
}
