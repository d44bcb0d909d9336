//! The orchestrator: drives campaigns against agents, keeps the journal, serves the REST API.

pub mod client;
pub mod driver;
pub mod fleet;
pub mod haproxy;
pub mod metrics;
pub mod report;
pub mod scan;
pub mod schedule;
pub mod store;
pub mod webhook;

use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use baton_core::campaign::Event;
use baton_core::{load_campaign, load_fleet, Campaign, CampaignError, Fleet, Millis, NodeId};
use baton_proto::{ApiError, CampaignView, CreateCampaign, JournalEntry, Phase, Report};
use client::AgentClient;
use driver::{Driver, Msg, Refused};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use store::{Store, StoredCampaign};
use tokio::sync::{mpsc, oneshot};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{0}")]
    Fleet(Box<baton_core::Diagnostic>),
    #[error("{0}")]
    Store(#[from] store::StoreError),
    #[error("{0}")]
    Tls(#[from] baton_pki::PkiError),
    #[error("campaign {id} in the journal no longer fits its files: {err}")]
    Replay { id: i64, err: RebuildError },
    #[error("cannot listen on {0}: {1}")]
    Listen(String, std::io::Error),
    #[error("cannot start the journal's writer thread: {0}")]
    Writer(std::io::Error),
    #[error("cannot start the drivers' thread: {0}")]
    Drivers(std::io::Error),
    #[error("{0}")]
    WebhookCa(#[from] webhook::WebhookCaError),
}

/// Settings read once at start.
#[derive(Debug, Clone)]
pub struct Settings {
    pub fleet_file: String,
    pub fleet_text: String,
    pub db: PathBuf,
    pub tls: baton_pki::TlsFiles,
    pub token: String,
    /// Reads (campaigns, their events and reports, the stream, metrics) without the token
    /// (`--open-reads`). Off by default: reports hold the output of commands run as root.
    pub open_reads: bool,
    /// The name operators reach the API by, besides an IP address or `localhost`
    /// (`--public-url`). Any other `Host` is refused, so a web page whose DNS name is made to
    /// point at this address cannot use a browser's access to it.
    pub public_host: Option<String>,
    /// More trust roots (PEM) for HTTPS webhooks, besides the system's (`--webhook-ca`).
    pub webhook_ca: Option<PathBuf>,
    /// Let `POST /v1/clock` move the orchestrator's clock forward (`--test-clock`): for tests
    /// of maintenance windows and schedules, never for a real fleet.
    pub test_clock: bool,
    /// The programs a campaign's `before_start` may run on this host (`--allow-hook PATH`):
    /// the operator's token alone must not be enough to run anything here.
    pub allowed_hooks: Vec<String>,
}

/// The host part of a URL (`https://baton.example.com:8443/x` → `baton.example.com`), lowercase.
pub fn url_host(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = host_name(authority.rsplit_once('@').map_or(authority, |(_, h)| h));
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

/// `Host` without its port; an IPv6 literal keeps its brackets.
fn host_name(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_inclusive(']').next().unwrap_or(host);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

struct Handle {
    inbox: mpsc::Sender<Msg>,
    shown: Arc<driver::Shown>,
    overhead_us: Arc<Mutex<Vec<u64>>>,
    /// What a start asks first: every node up (`require_all_up`), and `before_start` (filled).
    require_all_up: bool,
    before_start: Vec<String>,
    /// Set once a newer campaign exists: the driver stops guarding the fleet.
    superseded: tokio::sync::watch::Sender<bool>,
}

/// How long a campaign's creation waits for the agents' versions.
const PROBE_WITHIN: Duration = Duration::from_secs(20);

/// How long `before_start` may run before the start is refused.
const BEFORE_START_TIMEOUT_MS: u64 = 30 * 60 * 1000;

/// Why a stored campaign cannot be rebuilt from its files and journal.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error("{0}")]
    Files(Box<baton_core::Diagnostic>),
    #[error("what an earlier commit raised is not readable: {0}")]
    Raised(serde_json::Error),
    #[error("{0}")]
    Store(#[from] store::StoreError),
    #[error("{0}")]
    Replay(#[from] baton_core::campaign::ReplayError),
}

pub struct Hub {
    settings: Settings,
    fleet: Arc<Fleet>,
    store: Arc<Store>,
    writer: store::Writer,
    /// Where the campaigns' drivers run: one thread of their own (see [`Drivers`]).
    drivers: Drivers,
    client: AgentClient,
    /// What webhooks are sent with.
    webhooks: reqwest::Client,
    /// The time every driver reads.
    clock: driver::Clock,
    /// The API's document as this server answers (set when the router is made).
    openapi: std::sync::OnceLock<utoipa::openapi::OpenApi>,
    campaigns: Mutex<BTreeMap<i64, Handle>>,
    /// Taken by whatever may make a campaign hold the fleet (creating one, rolling one back),
    /// across the check that no other campaign holds it and the change itself, so that two
    /// operators at the same instant cannot both get it (safety rule 7).
    fleet_gate: tokio::sync::Mutex<()>,
    /// Taken across a start's checks and hook, so that two starts at once run it once.
    starting: tokio::sync::Mutex<()>,
    telemetry: Arc<metrics::Telemetry>,
    stream: tokio::sync::broadcast::Sender<StreamItem>,
    /// The schedules, as their journal leaves them (see [`schedule`]).
    schedules: Mutex<baton_core::schedule::Schedules>,
    /// Wakes the scheduler when a schedule is added or removed.
    schedule_changed: Arc<tokio::sync::Notify>,
    /// Taken across a schedule's check that its name is free and its journaling.
    schedule_gate: tokio::sync::Mutex<()>,
    /// The last `mixed-mode-overdue` warning: the start of its spell of mixed mode and when it
    /// went out (as journaled; read at start).
    overdue_warned: Mutex<Option<(Millis, Millis)>>,
    /// When the fleet's watcher last looked at mixed mode against its limit.
    fleet_checked: std::sync::atomic::AtomicU64,
}

/// The campaigns' drivers run on a thread and runtime of their own, so that a decision is not
/// queued behind thousands of tasks talking to agents, serving the API or streaming (their
/// jobs run on the main runtime). The thread ends with the hub.
struct Drivers {
    handle: tokio::runtime::Handle,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Drivers {
    fn start() -> std::io::Result<Drivers> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let handle = rt.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new().name("baton-drivers".into()).spawn(move || {
            let _ = rt.block_on(stopped);
        })?;
        Ok(Drivers { handle, _stop: stop })
    }

    fn spawn(&self, f: impl std::future::Future<Output = ()> + Send + 'static) {
        self.handle.spawn(f);
    }
}

/// What the live stream (`/v1/stream`) pushes.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum StreamItem {
    /// A campaign's whole view: first, and again for a subscriber that fell behind.
    View(Box<CampaignView>),
    /// What one event changed in a campaign's view.
    Delta(Box<driver::ViewDelta>),
    /// A new journal entry.
    Entry { campaign: i64, entry: JournalEntry },
    /// Every schedule, with its next run: first, and again whenever one is added, removed or
    /// runs.
    Schedules { schedules: Vec<baton_proto::ScheduleView> },
    /// The fleet's functional level, versions and mixed mode: first, and again when they change.
    Fleet(Box<baton_proto::FleetView>),
    /// A warning about the fleet (`mixed-mode-overdue`).
    Notice { notice: String, fleet: String, message: String, at_ms: u64 },
}

impl StreamItem {
    /// The Server-Sent Events name it goes out under.
    fn event(&self) -> &'static str {
        match self {
            StreamItem::View(_) => "view",
            StreamItem::Delta(_) => "delta",
            StreamItem::Entry { .. } => "entry",
            StreamItem::Schedules { .. } => "schedules",
            StreamItem::Fleet(_) => "fleet",
            StreamItem::Notice { .. } => "notice",
        }
    }
}

/// Marks every campaign superseded for as long as a creation is under way; when it is dropped
/// without a new campaign spawned (refused), the newest guards the fleet again.
struct Supersede<'a> {
    hub: &'a Hub,
    newest: Option<i64>,
}

impl<'a> Supersede<'a> {
    fn now(hub: &'a Hub) -> Supersede<'a> {
        let map = hub.campaigns();
        for h in map.values() {
            h.superseded.send_replace(true);
        }
        Supersede { hub, newest: map.keys().next_back().copied() }
    }
}

impl Drop for Supersede<'_> {
    fn drop(&mut self) {
        let map = self.hub.campaigns();
        // Still the newest: nothing was created.
        if let Some(id) = self.newest.filter(|id| map.keys().next_back() == Some(id)) {
            if let Some(h) = map.get(&id) {
                h.superseded.send_replace(false);
            }
        }
    }
}

/// What a committed campaign raised: the functional level, and the versions its nodes report;
/// with the versions the agents reported when a campaign was created. Later campaigns see the
/// fleet file with these applied.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct Raised {
    functional_level: Option<String>,
    versions: BTreeMap<String, String>,
}

impl Raised {
    fn of(v: &CampaignView) -> Raised {
        Raised {
            functional_level: Some(v.target_version.clone()),
            versions: v.nodes.iter().filter_map(|n| Some((n.name.clone(), n.version.clone()?))).collect(),
        }
    }

    fn apply(&self, fleet: &mut Fleet) {
        if let Some(l) = &self.functional_level {
            fleet.functional_level = Some(l.clone());
        }
        for (name, v) in &self.versions {
            if let Some(id) = fleet.node_id(name) {
                fleet.nodes[id as usize].version = Some(v.clone());
            }
        }
    }

    /// The fleet a stored campaign was created against.
    fn fleet_of(s: &StoredCampaign) -> Result<Fleet, RebuildError> {
        // Stored before the names rule, perhaps: it must still replay.
        let mut fleet = baton_core::load_stored_fleet(&s.fleet_file, &s.fleet_text)
            .map_err(|d| RebuildError::Files(Box::new(d)))?;
        if !s.raised.is_empty() {
            let r: Raised = serde_json::from_str(&s.raised).map_err(RebuildError::Raised)?;
            r.apply(&mut fleet);
        }
        Ok(fleet)
    }
}

#[derive(Debug)]
pub struct Fail {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl Fail {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Fail { status, code, message: message.into() }
    }

    /// A campaign file that does not read against the fleet (422 `bad-campaign`).
    fn bad_campaign(d: baton_core::Diagnostic) -> Self {
        Fail::new(StatusCode::UNPROCESSABLE_ENTITY, "bad-campaign", d.to_string())
    }

    /// Rules that can never be met (422 `infeasible`).
    fn infeasible(i: baton_core::Infeasible) -> Self {
        Fail::new(StatusCode::UNPROCESSABLE_ENTITY, "infeasible", format!("{} ({})", i.message, i.help))
    }
}

impl IntoResponse for Fail {
    fn into_response(self) -> Response {
        (self.status, Json(ApiError { code: self.code.into(), message: self.message })).into_response()
    }
}

fn stopped() -> Fail {
    Fail::new(StatusCode::SERVICE_UNAVAILABLE, "stopped", "the campaign's driver stopped")
}

impl Hub {
    /// Opens the journal, rebuilds every campaign from it and starts their drivers.
    pub async fn start(settings: Settings) -> Result<Arc<Hub>, ServerError> {
        let fleet = load_fleet(&settings.fleet_file, &settings.fleet_text)
            .map_err(|d| ServerError::Fleet(Box::new(d)))?;
        let store = Arc::new(Store::open(&settings.db)?);
        let writer = store::Writer::start(store.clone()).map_err(ServerError::Writer)?;
        let drivers = Drivers::start().map_err(ServerError::Drivers)?;
        let client = AgentClient::new(&settings.tls)?;
        let webhooks = webhook::client(settings.webhook_ca.as_deref())?;
        let clock = if settings.test_clock { driver::Clock::settable() } else { driver::Clock::system() };
        let schedules = schedule::replay(&store)?;
        let overdue_warned = store.last_overdue_warning()?;
        let hub = Arc::new(Hub {
            clock,
            webhooks,
            openapi: std::sync::OnceLock::new(),
            fleet: Arc::new(fleet),
            store,
            writer,
            drivers,
            client,
            campaigns: Mutex::new(BTreeMap::new()),
            fleet_gate: tokio::sync::Mutex::new(()),
            starting: tokio::sync::Mutex::new(()),
            telemetry: Arc::new(metrics::Telemetry::default()),
            stream: tokio::sync::broadcast::channel(16_384).0,
            schedules: Mutex::new(schedules),
            schedule_changed: Arc::new(tokio::sync::Notify::new()),
            schedule_gate: tokio::sync::Mutex::new(()),
            overdue_warned: Mutex::new(overdue_warned),
            fleet_checked: Default::default(),
            settings,
        });
        let stored = hub.store.campaigns()?;
        let newest = stored.last().map(|s| s.id);
        for stored in stored {
            let id = stored.id;
            let (c, n) = hub.rebuild(&stored).map_err(|err| ServerError::Replay { id, err })?;
            let mut map = hub.campaigns();
            // Only the newest guards the fleet: an older one must not watch (or fence) even
            // for a moment.
            hub.spawn(&mut map, id, c, n, Some(id) != newest);
        }
        // After the campaigns: a run missed while the orchestrator was down sees them.
        tokio::spawn(schedule::scheduler(Arc::downgrade(&hub)));
        tokio::spawn(fleet::watch(Arc::downgrade(&hub)));
        Ok(hub)
    }

    /// The campaign map. Its lock is never held across an await, and a panic elsewhere does
    /// not poison the orchestrator: the map is whole between statements.
    fn campaigns(&self) -> std::sync::MutexGuard<'_, BTreeMap<i64, Handle>> {
        self.campaigns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The stored campaign's fleet and spec.
    fn files(s: &StoredCampaign) -> Result<(Fleet, baton_core::CampaignSpec), RebuildError> {
        let fleet = Raised::fleet_of(s)?;
        let spec = baton_core::load_stored_campaign(&s.campaign_file, &s.campaign_text, &fleet)
            .map_err(|d| RebuildError::Files(Box::new(d)))?;
        Ok((fleet, spec))
    }

    /// The campaign as its journal leaves it, and how many entries the journal has.
    fn rebuild(&self, s: &StoredCampaign) -> Result<(Campaign, i64), RebuildError> {
        Hub::rebuild_from(&self.store, s)
    }

    fn rebuild_from(store: &Store, s: &StoredCampaign) -> Result<(Campaign, i64), RebuildError> {
        let (fleet, spec) = Hub::files(s)?;
        let journal: Vec<(u64, Event)> =
            store.events(s.id, 0)?.into_iter().map(|e| (e.at_ms, e.event)).collect();
        let n = journal.len() as i64;
        Ok((Campaign::replay(Arc::new(fleet), spec, &journal)?, n))
    }

    /// Each node's time out of service (drain to restored, wall clock) in the most recent of
    /// the last few campaigns that updated it, so the planner can start the longest first. The
    /// plan journals the order it made, so replay never needs these again. A journal that does
    /// not replay teaches nothing. Blocking (it reads and replays journals): run it off the
    /// async runtime. `ids` maps node names to the new campaign's node ids.
    fn learned_times(
        store: &Store,
        ids: &std::collections::HashMap<String, NodeId>,
    ) -> std::collections::HashMap<NodeId, baton_core::Millis> {
        const LOOK_BACK: usize = 5;
        let mut out = std::collections::HashMap::new();
        let Ok(stored) = store.recent(LOOK_BACK) else { return out };
        for s in &stored {
            let Ok((c, _)) = Hub::rebuild_from(store, s) else { continue };
            for (i, r) in c.nodes.iter().enumerate() {
                if let (baton_core::NodeState::Done { .. }, Some(from), Some(to)) =
                    (&r.state, r.started_at, r.finished_at)
                {
                    if let Some(&id) = ids.get(c.fleet.node_name(i as NodeId)) {
                        out.entry(id).or_insert(to.saturating_sub(from));
                    }
                }
            }
        }
        out
    }

    fn spawn(&self, map: &mut BTreeMap<i64, Handle>, id: i64, c: Campaign, events: i64, superseded: bool) {
        // Campaigns before it stop guarding the fleet.
        for (_, h) in map.range(..id) {
            h.superseded.send_replace(true);
        }
        let superseded = tokio::sync::watch::channel(superseded || map.range(id + 1..).next().is_some()).0;
        let with = driver::With {
            store: self.store.clone(),
            writer: self.writer.clone(),
            client: self.client.clone(),
            telemetry: self.telemetry.clone(),
            stream: self.stream.clone(),
            webhooks: self.webhooks.clone(),
            clock: self.clock.clone(),
            superseded: superseded.subscribe(),
        };
        let (d, rx, shown) = Driver::new(id, c, events, with);
        // The stream then sends what changes in it: its subscribers see the whole of it first.
        let _ = self.stream.send(StreamItem::View(Box::new(shown.get())));
        let h = Handle {
            inbox: d.inbox(),
            shown,
            overhead_us: d.overhead_us.clone(),
            require_all_up: d.campaign.spec.require_all_up,
            before_start: baton_core::load::fill_before_start(&d.campaign.spec, &d.campaign.fleet),
            superseded,
        };
        self.drivers.spawn(d.run(rx));
        map.insert(id, h);
    }

    pub fn fleet(&self) -> &Fleet {
        &self.fleet
    }

    /// Creates a campaign. Exactly one campaign holds the fleet at a time (safety rule 7): the
    /// check that none does and the insert happen under the fleet gate, so of two requests at
    /// the same instant one is created and the other refused.
    pub async fn create(&self, req: CreateCampaign) -> Result<CampaignView, Fail> {
        self.create_as(req, None).await
    }

    /// What the last commit raised (none without one), and the fleet as it left it: its level
    /// raised, its nodes at their versions.
    fn as_committed(&self, views: &[CampaignView]) -> (Option<Raised>, Fleet) {
        let raised = views.iter().filter(|v| v.committed()).max_by_key(|v| v.id).map(Raised::of);
        let mut fleet = (*self.fleet).clone();
        if let Some(r) = &raised {
            r.apply(&mut fleet);
        }
        (raised, fleet)
    }

    /// The fleet as the last commit left it.
    fn current_fleet(&self) -> Fleet {
        self.as_committed(&self.views()).1
    }

    /// As [`Hub::create`]; for a schedule's run due at `due_ms` (`by_schedule`), refused with 409
    /// `nothing-behind` when every targeted node is at the target already, and journaled as the
    /// schedule's (`Created`) with the campaign itself.
    async fn create_as(
        &self,
        req: CreateCampaign,
        by_schedule: Option<(&str, Millis)>,
    ) -> Result<CampaignView, Fail> {
        let file = req.file.unwrap_or_else(|| "campaign.toml".into());
        let _gate = self.fleet_gate.lock().await;
        if let Some(v) = self.views().into_iter().find(|v| v.holds_fleet) {
            let why = if matches!(
                v.phase,
                Phase::Aborted | Phase::Completed | Phase::RolledBack | Phase::Committed
            ) {
                format!(
                    "it is {} but some of its nodes are not back in service yet; try again when they are",
                    v.phase
                )
            } else {
                format!("it is {}; finish or abort it first", v.phase)
            };
            return Err(Fail::new(
                StatusCode::CONFLICT,
                "fleet-locked",
                format!("campaign {} (id {}) holds fleet {}: {why}", v.name, v.id, v.fleet),
            ));
        }
        // The campaigns before it stop guarding the fleet now, before its snapshot (no fence
        // from here on that the snapshot could miss); they guard it again if this is refused.
        let _supersede = Supersede::now(self);
        let views = self.views();
        let (committed, mut fleet) = self.as_committed(&views);
        let mut raised = committed.clone().unwrap_or_default();
        let spec = load_campaign(&file, &req.toml, &fleet).map_err(Fail::bad_campaign)?;
        // And at the versions their agents report now: a node already at the target is skipped
        // whatever the fleet file says (kept with the campaign, so that it replays the same).
        // Only the nodes it targets, and within PROBE_WITHIN: an agent that does not answer by
        // then is taken at the version on record.
        let targeted: Vec<(String, String)> = fleet
            .nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| spec.nodes.as_ref().is_none_or(|only| only.contains(&(*i as NodeId))))
            .filter_map(|(_, n)| Some((n.name.clone(), n.address.clone()?)))
            .collect();
        let seen = tokio::time::timeout(PROBE_WITHIN, driver::probe(&self.client, targeted, true)).await;
        for seen in seen.unwrap_or_default() {
            if let Some(v) = seen.version {
                raised.versions.insert(seen.node, v);
            }
        }
        raised.apply(&mut fleet);
        let mut spec = load_campaign(&file, &req.toml, &fleet).map_err(Fail::bad_campaign)?;
        if let Some(program) = spec.before_start.first() {
            self.hook_allowed(program, StatusCode::UNPROCESSABLE_ENTITY)?;
        }
        let (store, ids) = (self.store.clone(), fleet.by_name.clone());
        spec.expected =
            tokio::task::spawn_blocking(move || Hub::learned_times(&store, &ids)).await.unwrap_or_default();
        // Nodes the last campaign left out of service count as down until this one restores them.
        let left_out: Vec<NodeId> = views
            .iter()
            .max_by_key(|v| v.id)
            .map(|v| {
                v.nodes.iter().filter(|n| n.out_of_service).filter_map(|n| fleet.node_id(&n.name)).collect()
            })
            .unwrap_or_default();
        // And fenced nodes (older than the committed level): out of their load balancers, their
        // services stopped, until this campaign updates them.
        let mut left_out = left_out;
        for n in fleet::compute(&self.fleet, &views, 0, None).nodes.iter().filter(|n| n.fenced) {
            if let Some(id) = fleet.node_id(&n.name).filter(|id| !left_out.contains(id)) {
                left_out.push(id);
            }
        }
        let uid = store::random_id()
            .map_err(|e| Fail::new(StatusCode::SERVICE_UNAVAILABLE, "no-entropy", e.to_string()))?;
        let c = Campaign::create(uid, Arc::new(fleet), spec, &left_out).map_err(Fail::infeasible)?;
        if by_schedule.is_some() && c.plan.waves.iter().all(|w| w.is_empty()) {
            return Err(Fail::new(
                StatusCode::CONFLICT,
                "nothing-behind",
                format!("no targeted node is behind: every one is at {} or skipped", c.spec.target_version),
            ));
        }
        let stored = StoredCampaign {
            id: 0,
            fleet_file: self.settings.fleet_file.clone(),
            fleet_text: self.settings.fleet_text.clone(),
            campaign_file: file,
            campaign_text: req.toml,
            raised: if committed.is_some() || !raised.versions.is_empty() {
                serde_json::to_string(&raised).unwrap_or_default()
            } else {
                String::new()
            },
        };
        let now = self.clock.now();
        let id =
            self.store.create(&c.spec.name, &stored, now, &c.planned_event(), by_schedule).map_err(|e| {
                Fail::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "journal-unavailable",
                    format!("the campaign was not created: {e}"),
                )
            })?;
        if let Some((name, due_ms)) = by_schedule {
            let created =
                baton_core::schedule::ScheduleEvent::Created { name: name.into(), due_ms, campaign: id };
            self.schedules().apply(now, &created).ok();
        }
        let v = driver::view_of(id, &c, 1);
        let mut map = self.campaigns();
        self.spawn(&mut map, id, c, 1, false);
        Ok(v)
    }

    pub fn view(&self, id: i64) -> Option<CampaignView> {
        self.shown(id).map(|s| s.get())
    }

    fn shown(&self, id: i64) -> Option<Arc<driver::Shown>> {
        self.campaigns().get(&id).map(|h| h.shown.clone())
    }

    pub fn views(&self) -> Vec<CampaignView> {
        let shown: Vec<Arc<driver::Shown>> = self.campaigns().values().map(|h| h.shown.clone()).collect();
        shown.iter().map(|s| s.get()).collect()
    }

    /// Waits until the campaign's view satisfies `done` (or it is gone).
    pub async fn wait_view(&self, id: i64, done: impl Fn(&CampaignView) -> bool) -> Option<CampaignView> {
        let shown = self.shown(id)?;
        let mut rx = shown.subscribe();
        loop {
            rx.borrow_and_update();
            if let Some(v) = shown.get_if(&done) {
                return Some(v);
            }
            if shown.closed() {
                return None;
            }
            rx.changed().await.ok()?;
        }
    }

    /// An operator action, journaled with who did it.
    pub async fn act(&self, id: i64, action: &str, by: String) -> Result<CampaignView, Fail> {
        let event = match action {
            "start" => Event::Start { by },
            "pause" => Event::Pause { by },
            "resume" => Event::Resume { by },
            "abort" => Event::Abort { by },
            "rollback" => Event::Rollback { by },
            "commit" => Event::Commit { by },
            _ => {
                return Err(Fail::new(
                    StatusCode::NOT_FOUND,
                    "unknown-action",
                    format!("no campaign action {action}"),
                ))
            }
        };
        let (inbox, require_all_up, before_start) = self
            .campaigns()
            .get(&id)
            .map(|h| (h.inbox.clone(), h.require_all_up, h.before_start.clone()))
            .ok_or_else(|| {
                Fail::new(StatusCode::NOT_FOUND, "unknown-campaign", format!("no campaign {id}"))
            })?;
        // A rollback takes nodes out again, and so does a commit's after-commit pass: like a
        // creation, only while no other campaign holds the fleet, checked and done under the
        // fleet gate; and only for the fleet's latest campaign.
        let what = if matches!(event, Event::Commit { .. }) { "committed" } else { "rolled back" };
        let _gate = match event {
            Event::Rollback { .. } | Event::Commit { .. } => {
                let gate = self.fleet_gate.lock().await;
                let views = self.views();
                if let Some(v) = views.iter().find(|v| v.holds_fleet && v.id != id) {
                    return Err(Fail::new(
                        StatusCode::CONFLICT,
                        "fleet-locked",
                        format!(
                            "campaign {} (id {}, {}) holds fleet {}; it must end first",
                            v.name, v.id, v.phase, v.fleet
                        ),
                    ));
                }
                // Only the fleet's latest campaign goes back: a later one may have moved the
                // nodes on (or committed), and it is what hands its left-out nodes on. Nor is an
                // earlier one committed: the later one is what the fleet is at now.
                // A later campaign that never started (created, then aborted) moved nothing: it
                // does not keep an earlier one from being committed.
                let later = views
                    .iter()
                    .filter(|v| v.id > id)
                    .filter(|v| !matches!(event, Event::Commit { .. }) || v.started_at_ms.is_some())
                    .max_by_key(|v| v.id);
                if let Some(v) = later {
                    let way = if matches!(event, Event::Commit { .. }) {
                        "; to raise the level, commit the latest campaign, or run one to this target and commit it"
                    } else {
                        ""
                    };
                    return Err(Fail::new(
                        StatusCode::CONFLICT,
                        "not-latest",
                        format!(
                            "campaign {} (id {}) came after this one; only the latest campaign can be {what}{way}",
                            v.name, v.id
                        ),
                    ));
                }
                Some(gate)
            }
            _ => None,
        };
        if let Event::Commit { .. } = event {
            self.observe_all(id, &inbox, Phase::Completed, "commit").await?;
        }
        let _starting = match event {
            Event::Start { .. } => Some(self.starting.lock().await),
            _ => None,
        };
        if matches!(event, Event::Start { .. }) && self.view(id).is_some_and(|v| v.phase == Phase::Planned) {
            if require_all_up {
                self.observe_all(id, &inbox, Phase::Planned, "start").await?;
            }
            if let Some(program) = before_start.first() {
                // Allowed when the campaign was created, perhaps not by this orchestrator's flags.
                self.hook_allowed(program, StatusCode::CONFLICT)?;
                self.before_start(id, &inbox, &before_start).await?;
            }
        }
        match Hub::submit(&inbox, event).await? {
            Ok(()) => self.view(id).ok_or_else(stopped),
            Err(r) => Err(Hub::refusal(r)),
        }
    }

    /// Hands an event to the campaign's driver and waits until it is journaled, or refused.
    async fn submit(inbox: &mpsc::Sender<Msg>, event: Event) -> Result<Result<(), Refused>, Fail> {
        let (tx, rx) = oneshot::channel();
        inbox
            .send(Msg::Event { event, reply: Some(tx), sent: std::time::Instant::now() })
            .await
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())
    }

    /// A refusal as the API answers it.
    fn refusal(r: Refused) -> Fail {
        match r {
            Refused::Campaign(CampaignError::CommitRefused(m)) => {
                Fail::new(StatusCode::CONFLICT, "commit-refused", m)
            }
            Refused::Campaign(CampaignError::StartRefused(m)) => {
                Fail::new(StatusCode::CONFLICT, "start-refused", m)
            }
            Refused::Campaign(e) => Fail::new(StatusCode::CONFLICT, "not-allowed", e.to_string()),
            e @ Refused::Journal(_) => {
                Fail::new(StatusCode::SERVICE_UNAVAILABLE, "journal-unavailable", e.to_string())
            }
        }
    }

    /// Whether `before_start` may run `program` here (`--allow-hook`): the operator's token
    /// alone does not run anything on this host.
    fn hook_allowed(&self, program: &str, status: StatusCode) -> Result<(), Fail> {
        if self.settings.allowed_hooks.iter().any(|h| h == program) {
            return Ok(());
        }
        Err(Fail::new(
            status,
            "hook-not-allowed",
            format!(
                "before_start runs {program}, which this orchestrator does not allow; start `baton serve` with --allow-hook {program} to allow it"
            ),
        ))
    }

    /// Runs `before_start` on this host and journals how it went; a failure refuses the start
    /// with what it printed.
    async fn before_start(&self, id: i64, inbox: &mpsc::Sender<Msg>, argv: &[String]) -> Result<(), Fail> {
        tracing::info!(campaign = id, ?argv, "running before_start");
        let o = baton_agent::run::run(argv, BEFORE_START_TIMEOUT_MS, 8 * 1024).await;
        let output = match &o.error {
            Some(e) => format!("{}{e}\n", o.tail),
            None => o.tail.clone(),
        };
        let event = Event::Hook { hook: "before_start".into(), ok: o.ok, output };
        Hub::submit(inbox, event).await?.map_err(Hub::refusal)?;
        if o.ok {
            return Ok(());
        }
        let tail: String = {
            let t = o.tail.trim_end();
            let start = t.char_indices().rev().nth(999).map_or(0, |(i, _)| i);
            t[start..].to_string()
        };
        Err(Fail::new(
            StatusCode::CONFLICT,
            "before-start-failed",
            format!(
                "before_start failed ({}), so the campaign was not started; it printed: {}",
                o.error.unwrap_or_default(),
                if tail.is_empty() { "nothing".to_string() } else { tail }
            ),
        ))
    }

    /// Before a commit (or a start with `require_all_up`): asks every agent of the fleet, now,
    /// for its health and version, and journals what each says, so the action is judged on the
    /// nodes' live word and not on old records. An agent that does not answer is down, and the
    /// action is refused. Only in phase `phase`: in another the core refuses with the reason.
    async fn observe_all(
        &self,
        id: i64,
        inbox: &mpsc::Sender<Msg>,
        phase: Phase,
        what: &str,
    ) -> Result<(), Fail> {
        let Some(v) = self.view(id) else { return Err(stopped()) };
        if v.phase != phase {
            return Ok(()); // the core refuses the action with the reason
        }
        // Nodes without an address have no agent to ask (a fleet file for planning only); the
        // core judges them on what it knows.
        let targets: Vec<(String, String)> =
            self.fleet.nodes.iter().filter_map(|n| Some((n.name.clone(), n.address.clone()?))).collect();
        let seen = driver::probe(&self.client, targets, true).await;
        // A node that does not answer, or is unhealthy, refuses the commit here; it is not
        // journaled as down, since its watch (which reports changes) did not see it so.
        let down: Vec<&str> = seen.iter().filter(|s| !s.up).map(|s| s.node.as_str()).collect();
        if !down.is_empty() {
            let more = if down.len() > 5 { format!(" and {} more", down.len() - 5) } else { String::new() };
            let (code, need) = if what == "commit" {
                ("commit-refused", "every node must be up, healthy and at the target")
            } else {
                ("start-refused", "require_all_up is set: every node must be up and healthy")
            };
            return Err(Fail::new(
                StatusCode::CONFLICT,
                code,
                format!(
                    "{need}: {} did not answer healthy when asked just now{more}",
                    down[..down.len().min(5)].join(", ")
                ),
            ));
        }
        for seen in seen {
            let event = Event::Observed { node: seen.node, up: seen.up, version: seen.version };
            if let Err(e @ Refused::Journal(_)) = Hub::submit(inbox, event).await? {
                return Err(Hub::refusal(e));
            }
        }
        Ok(())
    }

    pub fn events(&self, id: i64, after: i64) -> Result<Vec<JournalEntry>, Fail> {
        if self.view(id).is_none() {
            return Err(Fail::new(StatusCode::NOT_FOUND, "unknown-campaign", format!("no campaign {id}")));
        }
        self.store
            .events(id, after)
            .map(|es| es.iter().map(store::Entry::to_wire).collect())
            .map_err(|e| Fail::new(StatusCode::SERVICE_UNAVAILABLE, "journal-unavailable", e.to_string()))
    }

    /// The campaign's run report, from its journal.
    pub fn report(&self, id: i64) -> Result<Report, Fail> {
        let internal = |e: String| Fail::new(StatusCode::INTERNAL_SERVER_ERROR, "journal", e);
        let stored = self.store.get(id).map_err(|e| internal(e.to_string()))?.ok_or_else(|| {
            Fail::new(StatusCode::NOT_FOUND, "unknown-campaign", format!("no campaign {id}"))
        })?;
        let (fleet, spec) = Hub::files(&stored).map_err(|e| internal(e.to_string()))?;
        // The journal up to its last entry now, and the step outputs after that: a step's output
        // is written before (or with) the entry of its outcome, so every outcome read has its
        // output, even while the campaign runs.
        let last = self.store.last_seq(id).map_err(|e| internal(e.to_string()))?;
        let outputs = self.store.outputs(id).map_err(|e| internal(e.to_string()))?;
        // A page of the journal at a time: never all of it in memory, and the journal's writer
        // waits for one page's read at most.
        let page = |after| {
            let mut entries =
                self.store.events_page(id, after, REPORT_PAGE).map_err(|e| internal(e.to_string()))?;
            entries.retain(|e| e.seq <= last);
            Ok::<_, Fail>(entries)
        };
        let mut entries = page(0)?;
        let (fresh, taken) = Campaign::begin(Arc::new(fleet), spec, entries.first().map(|e| &e.event))
            .map_err(|e| internal(e.to_string()))?;
        let mut report = report::Builder::new(id, fresh);
        let mut skip = taken;
        while let Some(last) = entries.last().map(|e| e.seq) {
            for e in &entries[skip..] {
                report.push(e, &outputs);
            }
            skip = 0;
            entries = page(last)?;
        }
        Ok(report.finish())
    }

    /// Report-to-command times recorded so far for a campaign, in µs.
    pub fn overhead_us(&self, id: i64) -> Vec<u64> {
        self.campaigns()
            .get(&id)
            .map(|h| h.overhead_us.lock().unwrap_or_else(|p| p.into_inner()).clone())
            .unwrap_or_default()
    }

    /// The Prometheus metrics page.
    pub fn metrics(&self) -> String {
        metrics::render(&self.views(), &self.fleet_view(), &self.telemetry)
    }

    /// Whether a request that names `host` is for this API: an IP address (DNS rebinding needs
    /// a name), `localhost`, or the `--public-url` name.
    fn host_ok(&self, host: &str) -> bool {
        let name = host_name(host);
        name.starts_with('[')
            || name.parse::<std::net::Ipv4Addr>().is_ok()
            || name.eq_ignore_ascii_case("localhost")
            || self.settings.public_host.as_deref().is_some_and(|p| name.eq_ignore_ascii_case(p))
    }

    fn authorize(&self, headers: &HeaderMap) -> Result<String, Fail> {
        let given = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let ok = given.is_some_and(|g| {
            let (a, b) = (g.as_bytes(), self.settings.token.as_bytes());
            a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
        });
        if !ok {
            return Err(Fail::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "this call needs the operator token (Authorization: Bearer ...)",
            ));
        }
        let who = headers.get("x-baton-operator").and_then(|v| v.to_str().ok()).unwrap_or("operator");
        Ok(who.chars().filter(|c| !c.is_control()).take(64).collect())
    }
}

type Shared = Arc<Hub>;

/// Journal entries a run report reads per lock of the store. Small in debug builds, so that
/// every test that fetches a report reads it over several pages.
const REPORT_PAGE: i64 = if cfg!(debug_assertions) { 5 } else { 4096 };

/// The API's document; the paths come from the handlers below as they are routed.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "baton orchestrator", description = "Rolling updates across a fleet: campaigns, their nodes and journal."),
    modifiers(&BearerToken),
    components(schemas(ApiError))
)]
struct ApiDoc;

struct BearerToken;

impl utoipa::Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let c = openapi.components.get_or_insert_with(Default::default);
        c.add_security_scheme(
            "token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The document as this server answers: every operation may be refused with `421 bad-host`
/// (see [`guard`]), and with `--open-reads` no read asks for the token.
fn as_served(mut doc: utoipa::openapi::OpenApi, open_reads: bool) -> utoipa::openapi::OpenApi {
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
    let refused = ResponseBuilder::new()
        .description(
            "the Host header names something other than this API (an IP address, localhost or --public-url)",
        )
        .content(
            "application/json",
            ContentBuilder::new().schema(Some(Ref::from_schema_name("ApiError"))).build(),
        )
        .build();
    for item in doc.paths.paths.values_mut() {
        for op in [&mut item.get, &mut item.post, &mut item.delete].into_iter().flatten() {
            op.responses.responses.entry("421".into()).or_insert_with(|| refused.clone().into());
        }
        if let (Some(op), true) = (&mut item.get, open_reads) {
            op.security = None;
            op.responses.responses.remove("401");
        }
    }
    doc
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "meta", responses((status = 200, description = "The OpenAPI document", content_type = "application/json")))]
async fn openapi_json(State(h): State<Shared>) -> Response {
    Json(h.openapi.get().cloned().unwrap_or_default()).into_response()
}

#[derive(Deserialize)]
struct ScanQuery {
    target: Option<String>,
}

/// The fleet's compliance against a target version: every agent asked, now, what it runs and
/// what it lacks.
#[utoipa::path(get, path = "/v1/scan", tag = "fleet", security(("token" = [])),
    params(("target" = Option<String>, Query, description = "the version to be at (default: the newest of the fleet's version chain)")),
    responses((status = 200, body = baton_proto::ScanReport),
              (status = 400, description = "no target given and the fleet file has no version chain", body = ApiError),
              (status = 401, description = "no token (reads need it unless --open-reads)", body = ApiError)))]
async fn scan_get(
    State(h): State<Shared>,
    Query(q): Query<ScanQuery>,
) -> Result<Json<baton_proto::ScanReport>, Fail> {
    let target =
        match q.target.filter(|t| !t.is_empty()).or_else(|| h.fleet.versions.last().cloned()) {
            Some(t) => t,
            None => return Err(Fail::new(
                StatusCode::BAD_REQUEST,
                "no-target",
                "name the version to scan against: /v1/scan?target=1.1 (the fleet file has no version chain)",
            )),
        };
    Ok(Json(scan::scan(&h.client, &h.fleet, &target).await))
}

/// The orchestrator's clock.
#[utoipa::path(get, path = "/v1/clock", tag = "meta", security(("token" = [])),
    responses((status = 200, body = baton_proto::ClockView),
              (status = 401, description = "no token (reads need it unless --open-reads)", body = ApiError)))]
async fn clock_get(State(h): State<Shared>) -> Json<baton_proto::ClockView> {
    Json(baton_proto::ClockView { now_ms: h.clock.now(), settable: h.clock.is_settable() })
}

/// Moves a test orchestrator's clock forward (only with `baton serve --test-clock`).
#[utoipa::path(post, path = "/v1/clock", tag = "meta", request_body = baton_proto::ClockMove, security(("token" = [])),
    responses((status = 200, body = baton_proto::ClockView),
              (status = 400, description = "the body is not JSON", body = ApiError),
              (status = 401, body = ApiError),
              (status = 409, description = "this orchestrator runs on the system clock (no --test-clock)", body = ApiError),
              (status = 413, description = "body over 2 MiB", body = ApiError), (status = 415, description = "not application/json", body = ApiError),
              (status = 422, description = "the body is not a clock move, or moves more than a year", body = ApiError)))]
async fn clock_post(
    State(h): State<Shared>,
    headers: HeaderMap,
    Json(m): Json<baton_proto::ClockMove>,
) -> Result<Json<baton_proto::ClockView>, Fail> {
    let by = h.authorize(&headers)?;
    const YEAR_MS: f64 = 366.0 * 24.0 * 3600.0 * 1000.0;
    if !(0.0..=YEAR_MS).contains(&m.advance_ms) {
        return Err(Fail::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "bad-body",
            format!(
                "advance_ms {} is not between 0 and a year; move the clock in smaller steps",
                m.advance_ms
            ),
        ));
    }
    let advance_ms = m.advance_ms.round() as u64;
    let now = h
        .clock
        .advance(advance_ms)
        .map_err(|e| Fail::new(StatusCode::CONFLICT, "fixed-clock", e.to_string()))?;
    tracing::warn!(by, advance_ms, now_ms = now, "test clock moved forward");
    Ok(Json(baton_proto::ClockView { now_ms: now, settable: true }))
}

/// Liveness.
#[utoipa::path(get, path = "/healthz", tag = "meta", responses((status = 200, description = "ok", body = String)))]
async fn healthz() -> &'static str {
    "ok"
}

/// Every campaign.
#[utoipa::path(get, path = "/v1/campaigns", tag = "campaigns", security(("token" = [])),
    responses((status = 200, body = Vec<CampaignView>), (status = 401, description = "no token (reads need it unless --open-reads)", body = ApiError)))]
async fn list(State(h): State<Shared>) -> Json<Vec<CampaignView>> {
    Json(h.views())
}

/// Creates a campaign from a campaign file's text; it starts with `start`.
#[utoipa::path(post, path = "/v1/campaigns", tag = "campaigns", request_body = CreateCampaign, security(("token" = [])),
    responses((status = 201, body = CampaignView), (status = 400, description = "the body is not JSON of this shape", body = ApiError),
              (status = 401, body = ApiError), (status = 409, description = "another campaign holds the fleet", body = ApiError),
              (status = 413, description = "body over 2 MiB", body = ApiError), (status = 415, description = "not application/json", body = ApiError),
              (status = 422, description = "bad campaign file, or rules that can never be met", body = ApiError),
              (status = 503, description = "the journal could not record the campaign (disk full, I/O error)", body = ApiError)))]
async fn create(
    State(h): State<Shared>,
    headers: HeaderMap,
    Json(req): Json<CreateCampaign>,
) -> Result<Response, Fail> {
    h.authorize(&headers)?;
    let v = h.create(req).await?;
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

/// A plan as DESIGN.md's plan JSON (**contract**): `POST /v1/plan` and `baton plan --format
/// json` both answer with it.
pub fn plan_view(fleet: &Fleet, plan: &baton_core::Plan) -> baton_proto::PlanView {
    let name = |n: &NodeId| fleet.node_name(*n).to_string();
    baton_proto::PlanView {
        campaign: plan.campaign.clone(),
        strategy: plan.strategy.as_str().into(),
        waves: plan.waves.iter().map(|w| w.iter().map(name).collect()).collect(),
        skipped: plan
            .skipped
            .iter()
            .map(|(n, r)| baton_proto::PlanSkip { node: name(n), reason: r.clone() })
            .collect(),
        lower_bound: plan.lower_bound,
        binding: plan.binding.clone(),
    }
}

/// Plans a campaign file against the fleet as the last commit left it, without creating it:
/// the waves, the nodes skipped and why, the lower bound and what binds (as `baton plan
/// --format json`). Nothing is journaled. A campaign created from the file is planned again then,
/// with each targeted agent's live version.
#[utoipa::path(post, path = "/v1/plan", tag = "campaigns", request_body = CreateCampaign, security(("token" = [])),
    responses((status = 200, body = baton_proto::PlanView), (status = 400, description = "the body is not JSON of this shape", body = ApiError),
              (status = 401, body = ApiError),
              (status = 413, description = "body over 2 MiB", body = ApiError), (status = 415, description = "not application/json", body = ApiError),
              (status = 422, description = "bad campaign file (`bad-campaign`), or rules that can never be met (`infeasible`)", body = ApiError),
              (status = 503, description = "the orchestrator is stopping", body = ApiError)))]
async fn plan_post(
    State(h): State<Shared>,
    headers: HeaderMap,
    Json(req): Json<CreateCampaign>,
) -> Result<Json<baton_proto::PlanView>, Fail> {
    h.authorize(&headers)?;
    let fleet = h.current_fleet();
    tokio::task::spawn_blocking(move || {
        let file = req.file.unwrap_or_else(|| "campaign.toml".into());
        let spec = load_campaign(&file, &req.toml, &fleet).map_err(Fail::bad_campaign)?;
        let plan = baton_core::plan(&fleet, &spec).map_err(Fail::infeasible)?;
        Ok(Json(plan_view(&fleet, &plan)))
    })
    .await
    .map_err(|_| stopped())?
}

/// One campaign: phase, nodes, service budgets.
#[utoipa::path(get, path = "/v1/campaigns/{id}", tag = "campaigns", params(("id" = i64, Path, description = "campaign id")),
    security(("token" = [])),
    responses((status = 200, body = CampaignView), (status = 400, description = "the id is not a number", body = ApiError),
              (status = 401, description = "no token (reads need it unless --open-reads)", body = ApiError), (status = 404, body = ApiError)))]
async fn get_one(State(h): State<Shared>, UrlPath(id): UrlPath<i64>) -> Result<Json<CampaignView>, Fail> {
    h.view(id)
        .map(Json)
        .ok_or_else(|| Fail::new(StatusCode::NOT_FOUND, "unknown-campaign", format!("no campaign {id}")))
}

/// An operator action: start, pause, resume, abort, rollback or commit. Journaled with who did it.
#[utoipa::path(post, path = "/v1/campaigns/{id}/{action}", tag = "campaigns", security(("token" = [])),
    params(("id" = i64, Path, description = "campaign id"), ("action" = String, Path, description = "start | pause | resume | abort | rollback | commit"),
           ("x-baton-operator" = Option<String>, Header, description = "who does it (journaled)")),
    responses((status = 200, body = CampaignView), (status = 400, description = "the id is not a number", body = ApiError),
              (status = 401, body = ApiError), (status = 404, body = ApiError),
              (status = 409, description = "not allowed in this phase, commit or start refused (nodes down, before_start failed), or another campaign holds the fleet", body = ApiError),
              (status = 503, description = "the journal could not record the action, so it was not done", body = ApiError)))]
async fn act(
    State(h): State<Shared>,
    headers: HeaderMap,
    UrlPath((id, action)): UrlPath<(i64, String)>,
) -> Result<Json<CampaignView>, Fail> {
    let by = h.authorize(&headers)?;
    // Carried out whole once received, also if the client goes away meanwhile: a start's
    // before_start is not killed half way, nor its outcome left unjournaled.
    let hub = h.clone();
    tokio::spawn(async move { hub.act(id, &action, by).await }).await.map_err(|_| stopped())?.map(Json)
}

/// The longest long poll (`wait_ms`).
const MAX_WAIT_MS: u64 = 60_000;

#[derive(Deserialize)]
struct EventsQuery {
    #[serde(default)]
    after: i64,
    #[serde(default)]
    wait_ms: Option<u64>,
}

/// The campaign's journal after `after`; with `wait_ms`, waits for a newer entry first.
#[utoipa::path(get, path = "/v1/campaigns/{id}/events", tag = "campaigns",
    params(("id" = i64, Path, description = "campaign id"), ("after" = Option<i64>, Query, description = "last seq seen"),
           ("wait_ms" = Option<u64>, Query, description = "long poll: wait up to this many ms for a newer entry", minimum = 0, maximum = 60000)),
    security(("token" = [])),
    responses((status = 200, body = Vec<JournalEntry>), (status = 400, description = "the id or a query parameter is not a number, or wait_ms is over 60000", body = ApiError),
              (status = 401, description = "no token (reads need it unless --open-reads)", body = ApiError), (status = 404, body = ApiError)))]
async fn events(
    State(h): State<Shared>,
    UrlPath(id): UrlPath<i64>,
    Query(q): Query<EventsQuery>,
) -> Result<Json<Vec<JournalEntry>>, Fail> {
    if let Some(ms) = q.wait_ms {
        if ms > MAX_WAIT_MS {
            return Err(Fail::new(
                StatusCode::BAD_REQUEST,
                "bad-query",
                format!("wait_ms is {ms}: at most {MAX_WAIT_MS} (ask again for longer)"),
            ));
        }
        let after = q.after;
        let _ = tokio::time::timeout(Duration::from_millis(ms), h.wait_view(id, |v| v.events > after)).await;
    }
    h.events(id, q.after).map(Json)
}

/// The campaign's run report: per node, steps with outcome, duration and output; totals.
#[utoipa::path(get, path = "/v1/campaigns/{id}/report", tag = "campaigns", params(("id" = i64, Path, description = "campaign id")),
    security(("token" = [])),
    responses((status = 200, body = Report), (status = 400, description = "the id is not a number", body = ApiError),
              (status = 401, description = "no token (reads need it unless --open-reads)", body = ApiError), (status = 404, body = ApiError)))]
async fn report_json(State(h): State<Shared>, UrlPath(id): UrlPath<i64>) -> Result<Json<Report>, Fail> {
    // Replaying a long journal takes a while (about a second at 10,000 nodes): not on a thread
    // the API's other requests are answered from.
    match tokio::task::spawn_blocking(move || h.report(id)).await {
        Ok(r) => r.map(Json),
        Err(e) => Err(Fail::new(StatusCode::INTERNAL_SERVER_ERROR, "report", e.to_string())),
    }
}

/// Server-Sent Events: every campaign's whole view at once (`view`), the schedules
/// (`schedules`) and the fleet (`fleet`, as `GET /v1/fleet`), then as it happens each journal
/// entry (`entry`) and what it changed in its campaign's view (`delta`: the totals, and the nodes
/// and services that changed, each with its `index` in the view's lists). A new campaign's whole
/// view comes when it is created; the schedules again when one is added, removed or runs; the
/// fleet when its level, versions or mixed mode change; a `notice` for a `mixed-mode-overdue`
/// warning. A subscriber that falls behind gets every whole view again.
#[utoipa::path(get, path = "/v1/stream", tag = "campaigns", security(("token" = [])),
    responses((status = 200, description = "text/event-stream of `view`, `delta`, `entry`, `schedules`, `fleet` and `notice` events", content_type = "text/event-stream"),
              (status = 401, description = "no token (reads need it unless --open-reads)", body = ApiError)))]
async fn stream(
    State(h): State<Shared>,
) -> axum::response::sse::Sse<
    impl futures_util::Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>>,
> {
    use axum::response::sse::{Event as Sse, KeepAlive};
    use futures_util::StreamExt;
    let rx = h.stream.subscribe();
    let hub = h.clone();
    let sse = |it: StreamItem| -> Result<Sse, std::convert::Infallible> {
        Ok(Sse::default()
            .event(it.event())
            .json_data(it)
            .unwrap_or_else(|e| Sse::default().comment(e.to_string())))
    };
    let snapshot = move |hub: &Hub| -> Vec<Result<Sse, std::convert::Infallible>> {
        hub.views()
            .into_iter()
            .map(|v| StreamItem::View(Box::new(v)))
            .chain([
                StreamItem::Schedules { schedules: hub.schedule_views() },
                StreamItem::Fleet(Box::new(hub.fleet_view())),
            ])
            .map(sse)
            .collect()
    };
    let first = futures_util::stream::iter(snapshot(&h));
    let live = tokio_stream::wrappers::BroadcastStream::new(rx).flat_map(move |item| {
        let out: Vec<Result<Sse, std::convert::Infallible>> = match item {
            Ok(it) => vec![sse(it)],
            Err(_) => snapshot(&hub),
        };
        futures_util::stream::iter(out)
    });
    axum::response::sse::Sse::new(first.chain(live)).keep_alive(KeepAlive::default())
}

/// The live dashboard.
#[utoipa::path(get, path = "/", tag = "meta", responses((status = 200, description = "HTML page", content_type = "text/html")))]
async fn dashboard() -> Response {
    ([(axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8")], include_str!("dashboard.html"))
        .into_response()
}

/// Prometheus metrics (OpenMetrics text), all named `baton_`.
#[utoipa::path(get, path = "/metrics", tag = "meta", security(("token" = [])),
    responses((status = 200, description = "metrics", content_type = "application/openmetrics-text"),
              (status = 401, description = "no token (reads need it unless --open-reads)", body = ApiError)))]
async fn metrics_page(State(h): State<Shared>) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        h.metrics(),
    )
        .into_response()
}

pub fn router(h: Shared) -> Router {
    use utoipa::OpenApi as _;
    use utoipa_axum::{router::OpenApiRouter, routes};
    // Every route is added with its documentation: the document cannot miss one.
    let (router, doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(dashboard))
        .routes(routes!(healthz))
        .routes(routes!(openapi_json))
        .routes(routes!(metrics_page))
        .routes(routes!(stream))
        .routes(routes!(list, create))
        .routes(routes!(get_one))
        .routes(routes!(events))
        .routes(routes!(report_json))
        .routes(routes!(act))
        .routes(routes!(clock_get, clock_post))
        .routes(routes!(scan_get))
        .routes(routes!(fleet::get))
        .routes(routes!(plan_post))
        .routes(routes!(fleet::unfence))
        .routes(routes!(schedule::list, schedule::add))
        .routes(routes!(schedule::remove))
        .routes(routes!(schedule::runs))
        .split_for_parts();
    let _ = h.openapi.set(as_served(doc, h.settings.open_reads));
    router
        .with_state(h.clone())
        .fallback(no_route)
        .layer(axum::middleware::from_fn(json_errors))
        .layer(axum::middleware::from_fn_with_state(h, guard))
}

/// Before any route: the `Host` must name this API, writes need the token, and reads too
/// unless `--open-reads`. (Writes check it again in their handlers, which journal who acted.)
async fn guard(
    State(h): State<Shared>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Some(host) = req.headers().get(axum::http::header::HOST) {
        let host = String::from_utf8_lossy(host.as_bytes());
        if !h.host_ok(&host) {
            return Fail::new(
                StatusCode::MISDIRECTED_REQUEST,
                "bad-host",
                format!(
                    "this API does not answer to the name `{}`: use its IP address, localhost, or the name given with --public-url",
                    host.chars().take(100).collect::<String>()
                ),
            )
            .into_response();
        }
    }
    // Writes are checked here too, before their body is read: a client without the token
    // cannot hold a connection open with a body it never finishes.
    let path = req.uri().path();
    let api = path.starts_with("/v1/") || path == "/metrics";
    let write = req.method() == axum::http::Method::POST || req.method() == axum::http::Method::DELETE;
    // A scan makes every agent run its scan action: never without the token.
    let costly = path == "/v1/scan";
    if api && (write || costly || !h.settings.open_reads) {
        if let Err(f) = h.authorize(req.headers()) {
            return f.into_response();
        }
    }
    next.run(req).await
}

/// No such route: a JSON 404 like every other refusal.
async fn no_route(uri: axum::http::Uri) -> Fail {
    Fail::new(StatusCode::NOT_FOUND, "no-route", format!("no route {}", uri.path()))
}

/// Every answer that is not 2xx is JSON `{"code", "message"}` (DESIGN.md §Formats), also what
/// the HTTP layer itself rejects before a handler runs (a path that does not parse, a body that
/// is not JSON or too large, a wrong content type, a method not allowed): axum answers those in
/// plain text, so they are rewritten here with a stable code and axum's words as the message.
async fn json_errors(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let res = next.run(req).await;
    let status = res.status();
    let json = res
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || json {
        return res;
    }
    // Its other headers stay (a 405's Allow); the body and its type are replaced.
    let (mut parts, body) = res.into_parts();
    parts.headers.remove(axum::http::header::CONTENT_TYPE);
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    let body = axum::body::to_bytes(body, 64 * 1024).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&body).trim().to_string();
    let code = match status {
        StatusCode::BAD_REQUEST => "bad-request",
        StatusCode::NOT_FOUND => "no-route",
        StatusCode::METHOD_NOT_ALLOWED => "method-not-allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "body-too-large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported-media-type",
        StatusCode::UNPROCESSABLE_ENTITY => "bad-body",
        _ => "http",
    };
    let message =
        if text.is_empty() { status.canonical_reason().unwrap_or("refused").to_string() } else { text };
    let mut out = Fail::new(status, code, message).into_response();
    for (k, v) in parts.headers.iter() {
        out.headers_mut().entry(k).or_insert_with(|| v.clone());
    }
    out
}

/// Serves the API on `listener` until `stop` resolves, within [`baton_net::Limits`].
pub async fn serve(
    hub: Arc<Hub>,
    listener: tokio::net::TcpListener,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = baton_net::Limits::for_this_process();
    tracing::debug!(?limits, "API connection limits");
    baton_net::serve(listener, None, router(hub), limits, stop).await;
    Ok(())
}
