//! One task per campaign drives the core against the agents. It is event-driven: it waits on
//! its inbox (agent reports, operator actions) or the core's next deadline. Each event is
//! appended to the journal before the commands that follow from it are sent. Talking to an
//! agent happens in a per-node job that reports back through the inbox.

use crate::client::{AgentClient, ClientError};
use crate::haproxy;
use crate::metrics::{KindLabel, StepLabel, Telemetry};
use crate::store::Store;
use baton_core::campaign::{Back, Command, Event, Hold, Notice, Stage};
use baton_core::model::Haproxy;
use baton_core::{Campaign, CampaignError, Millis, NodeState};
use baton_proto::{CampaignView, NodeView, ServiceView, StepKind, StepRequest, StepState};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::AbortHandle;

pub fn now_ms() -> Millis {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as Millis).unwrap_or(0)
}

/// Only a test clock can be moved.
#[derive(Debug, thiserror::Error)]
#[error("this orchestrator runs on the system clock; only `baton serve --test-clock` lets a test move it")]
pub struct FixedClock;

/// The orchestrator's clock: the system's, plus an offset that only `baton serve --test-clock`
/// lets a test move forward (`POST /v1/clock`), so that a maintenance window two minutes away
/// can be reached without waiting two minutes. Moving it wakes every driver.
#[derive(Clone)]
pub struct Clock {
    offset: Arc<std::sync::atomic::AtomicU64>,
    moved: watch::Sender<u64>,
    settable: bool,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Clock {
        Clock::new(false)
    }

    /// The system clock, which a test may move forward.
    pub fn settable() -> Clock {
        Clock::new(true)
    }

    fn new(settable: bool) -> Clock {
        Clock { offset: Default::default(), moved: watch::channel(0).0, settable }
    }

    pub fn now(&self) -> Millis {
        now_ms().saturating_add(self.offset.load(std::sync::atomic::Ordering::Relaxed))
    }

    pub fn is_settable(&self) -> bool {
        self.settable
    }

    /// Moves the clock forward by `by` (never back) and wakes whoever waits on it. Refused by a
    /// system clock.
    pub fn advance(&self, by: Millis) -> Result<Millis, FixedClock> {
        if !self.settable {
            return Err(FixedClock);
        }
        use std::sync::atomic::Ordering::Relaxed;
        let _ = self.offset.fetch_update(Relaxed, Relaxed, |o| Some(o.saturating_add(by)));
        self.moved.send_modify(|n| *n += 1);
        Ok(self.now())
    }

    /// Changes each time the clock is moved.
    pub fn moves(&self) -> watch::Receiver<u64> {
        self.moved.subscribe()
    }
}

pub enum Msg {
    /// `sent`: when it was sent, so that a decision's time includes its wait in the inbox.
    Event { event: Event, reply: Option<oneshot::Sender<Result<(), Refused>>>, sent: std::time::Instant },
}

/// Why an event was not taken.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// The core refused it in the campaign's state.
    #[error(transparent)]
    Campaign(#[from] CampaignError),
    /// The journal could not record it, so it did not happen (disk full, I/O error). The
    /// driver sends again what the campaign waits on once it can write.
    #[error("the journal could not record it, so nothing was done: {0}")]
    Journal(String),
}

/// The API's phase for the core's.
pub fn phase_of(p: baton_core::Phase) -> baton_proto::Phase {
    use baton_core::Phase as C;
    use baton_proto::Phase as W;
    match p {
        C::Planned => W::Planned,
        C::Running => W::Running,
        C::Paused => W::Paused,
        C::Halted => W::Halted,
        C::Completed => W::Completed,
        C::AfterCommit => W::AfterCommit,
        C::Committed => W::Committed,
        C::RollingBack => W::RollingBack,
        C::RolledBack => W::RolledBack,
        C::Aborted => W::Aborted,
    }
}

/// Report from a job: an event for the campaign.
#[derive(Clone)]
struct Reporter(mpsc::Sender<Msg>);

impl Reporter {
    async fn send(&self, event: Event) {
        let _ = self.0.send(Msg::Event { event, reply: None, sent: std::time::Instant::now() }).await;
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum JobKind {
    Step,
    Boot,
    Health,
    Watch,
}

pub struct Driver {
    pub id: i64,
    pub campaign: Campaign,
    store: Arc<Store>,
    /// Where the journal is written, off the async runtime.
    writer: crate::store::Writer,
    /// The runtime the jobs, the census and the estimates run on. The driver itself runs on a
    /// thread of its own: thousands of jobs talking to agents do not delay its decisions.
    main: tokio::runtime::Handle,
    client: AgentClient,
    inbox: mpsc::Sender<Msg>,
    jobs: HashMap<String, (JobKind, AbortHandle)>,
    /// Hold and release steps of nodes' auto-updaters: beside a node's other job (its watch
    /// goes on meanwhile, so a node that dies while it is being held is seen down).
    hold_jobs: HashMap<String, AbortHandle>,
    /// The view the API reads, kept up to date in place.
    shown: Arc<Shown>,
    _closer: Closer,
    /// Each node's wave in the plan (it does not change).
    wave: Vec<Option<usize>>,
    events: i64,
    last_now: Millis,
    /// Time from an agent's report to the commands it led to being handed to jobs, in µs.
    pub overhead_us: Arc<std::sync::Mutex<Vec<u64>>>,
    telemetry: Arc<Telemetry>,
    /// Views and journal entries for live subscribers (the dashboard).
    stream: tokio::sync::broadcast::Sender<crate::StreamItem>,
    /// Where the campaign's webhooks go (when its file lists any).
    hooks: Option<mpsc::UnboundedSender<crate::webhook::Hook>>,
    /// What they are sent with.
    webhooks: reqwest::Client,
    /// What the estimate of the end is made from, for its own task; and when it was last sent.
    eta: watch::Sender<Option<EtaInput>>,
    eta_sent: Option<std::time::Instant>,
    /// The step each node is in for the metrics, and since when.
    entered: HashMap<String, (&'static str, std::time::Instant)>,
    /// After a failed journal append: when to send again what the campaign waits on, and the
    /// wait before the next try if that fails too.
    resume_at: Option<(tokio::time::Instant, Duration)>,
    /// The campaign in memory may hold an event the journal refused (it could not be read back
    /// to undo it): no event is taken until a rebuild from the journal works.
    stale: bool,
    clock: Clock,
    /// Set once a newer campaign of the fleet exists: a committed campaign guards the fleet
    /// (watches its nodes, fences one that comes back older than the level) only until then.
    superseded: watch::Receiver<bool>,
    /// Fence jobs under way (stopped when the campaign is superseded).
    fence_jobs: Vec<AbortHandle>,
}

pub fn view_of(id: i64, c: &Campaign, events: i64) -> CampaignView {
    let wave = waves_of(c);
    let mut v = head_of(id, c, events);
    v.nodes = (0..c.nodes.len()).map(|i| node_view(c, i, wave[i])).collect();
    let states: Vec<String> = v.nodes.iter().map(|n| n.state.clone()).collect();
    for st in &states {
        count(&mut v, st, 1);
    }
    v
}

/// The campaign's view without its nodes (and with their counts at 0).
fn head_of(id: i64, c: &Campaign, events: i64) -> CampaignView {
    CampaignView {
        id,
        name: c.spec.name.clone(),
        fleet: c.fleet.name.clone(),
        target_version: c.spec.target_version.clone(),
        strategy: c.spec.strategy.as_str().into(),
        phase: phase_of(c.phase),
        pass: c.pass.as_str().into(),
        after_commit_action: c.spec.after_commit_action.clone(),
        holds_fleet: c.holds_fleet(),
        nodes: Vec::new(),
        services: (0..c.fleet.services.len()).map(|s| service_view(c, s)).collect(),
        waves: c.plan.waves.len(),
        updated: 0,
        failed: 0,
        skipped: 0,
        pending: c.pending(),
        active: c.active() as usize,
        events,
        eta_ms: None,
        window_opens_at_ms: c.window_opens_at(),
        started_at_ms: c.started_at,
        mixed_mode_limit_ms: c.spec.mixed_mode_limit,
        lower_bound: c.plan.lower_bound,
        binding: c.plan.binding.clone(),
    }
}

fn service_view(c: &Campaign, s: usize) -> ServiceView {
    let svc = &c.fleet.services[s];
    ServiceView {
        name: svc.name.clone(),
        members: svc.members.len(),
        allowance: svc.allowance,
        down: c.down(s),
    }
}

/// Each node's wave in the plan.
fn waves_of(c: &Campaign) -> Vec<Option<usize>> {
    let mut wave = vec![None; c.nodes.len()];
    for (w, nodes) in c.plan.waves.iter().enumerate() {
        for &n in nodes {
            wave[n as usize] = Some(w);
        }
    }
    wave
}

fn node_view(c: &Campaign, i: usize, wave: Option<usize>) -> NodeView {
    let r = &c.nodes[i];
    let reason = match &r.state {
        NodeState::Failed { reason, .. } | NodeState::Skipped { reason } => Some(reason.clone()),
        _ if r.observed_down => {
            Some("seen down: its agent does not answer as this node, or is unhealthy".into())
        }
        _ => None,
    };
    NodeView {
        name: c.fleet.nodes[i].name.clone(),
        state: r.state.name().into(),
        update_domain: c.fleet.nodes[i].update_domain,
        fault_domain: c.fleet.nodes[i].fault_domain,
        wave,
        version: r.version.clone(),
        reason,
        out_of_service: c.out_of_service(i as baton_core::NodeId),
        from_version: r.from_version.clone(),
        fenced: c.is_fenced(i as baton_core::NodeId),
    }
}

/// Counts a node in (`by` 1) or out of (`by` -1) the view's totals by its state's name.
fn count(v: &mut CampaignView, state: &str, by: isize) {
    let n = match state {
        "done" => &mut v.updated,
        "failed" => &mut v.failed,
        "skipped" => &mut v.skipped,
        _ => return,
    };
    *n = n.saturating_add_signed(by);
}

/// A campaign's view, kept up to date in place by its driver (what changed, not the whole
/// fleet, after each event) and read by the API.
pub struct Shown {
    view: std::sync::Mutex<CampaignView>,
    /// Bumped after each change: long polls wait on it.
    changed: watch::Sender<u64>,
    /// Set when the driver is gone (it ended or panicked): nothing will change any more.
    closed: std::sync::atomic::AtomicBool,
}

/// Held by the driver: when it is dropped (the driver ended, or panicked), the view is closed
/// and whoever waits on it is told.
struct Closer(Arc<Shown>);

impl Drop for Closer {
    fn drop(&mut self) {
        self.0.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        self.0.changed.send_modify(|g| *g += 1);
    }
}

impl Shown {
    fn new(v: CampaignView) -> Shown {
        Shown {
            view: std::sync::Mutex::new(v),
            changed: watch::channel(0).0,
            closed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Whether the driver is gone.
    pub fn closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CampaignView> {
        self.view.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The whole view, now.
    pub fn get(&self) -> CampaignView {
        self.lock().clone()
    }

    /// The view, if it satisfies `f` now (copied only then).
    pub fn get_if(&self, f: impl Fn(&CampaignView) -> bool) -> Option<CampaignView> {
        let v = self.lock();
        f(&v).then(|| v.clone())
    }

    /// Changes each time the view does.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn update<R>(&self, f: impl FnOnce(&mut CampaignView) -> R) -> R {
        let r = f(&mut self.lock());
        self.changed.send_modify(|g| *g += 1);
        r
    }
}

/// What changed in a campaign's view with one event: its totals, and the nodes and services
/// that changed, each with its place in the view's lists. The live stream's `delta`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ViewDelta {
    pub campaign: i64,
    pub phase: baton_proto::Phase,
    pub holds_fleet: bool,
    pub updated: usize,
    pub failed: usize,
    pub skipped: usize,
    pub pending: usize,
    pub active: usize,
    pub events: i64,
    pub eta_ms: Option<u64>,
    pub window_opens_at_ms: Option<u64>,
    pub started_at_ms: Option<u64>,
    pub nodes: Vec<Indexed<NodeView>>,
    pub services: Vec<Indexed<ServiceView>>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Indexed<T> {
    pub index: usize,
    #[serde(flatten)]
    pub item: T,
}

impl ViewDelta {
    fn of(v: &CampaignView, nodes: Vec<Indexed<NodeView>>, services: Vec<Indexed<ServiceView>>) -> ViewDelta {
        ViewDelta {
            campaign: v.id,
            phase: v.phase,
            holds_fleet: v.holds_fleet,
            updated: v.updated,
            failed: v.failed,
            skipped: v.skipped,
            pending: v.pending,
            active: v.active,
            events: v.events,
            eta_ms: v.eta_ms,
            window_opens_at_ms: v.window_opens_at_ms,
            started_at_ms: v.started_at_ms,
            nodes,
            services,
        }
    }
}

/// Events taken from the inbox at once, at most: they share one journal transaction.
const MAX_BATCH: usize = 256;

/// How often the estimate of the end is redone, at most.
const ETA_EVERY: Duration = Duration::from_secs(3);

/// An event the campaign took, waiting for the journal before its commands go out.
struct Taken {
    now: Millis,
    event: Event,
    cmds: Vec<Command>,
    reply: Option<oneshot::Sender<Result<(), Refused>>>,
    sent: std::time::Instant,
}

type Reply = Option<oneshot::Sender<Result<(), Refused>>>;

fn answer(replies: Vec<(Reply, Result<(), Refused>)>) {
    for (reply, r) in replies {
        if let Some(tx) = reply {
            let _ = tx.send(r);
        }
    }
}

/// What an estimate of the campaign's end is made from.
#[derive(Clone)]
struct EtaInput {
    fleet: Arc<baton_core::model::Fleet>,
    /// The campaign over the nodes still to start, with no health windows (they are in `mean`).
    spec: baton_core::CampaignSpec,
    /// The mean out-of-service time seen so far.
    mean: Millis,
    /// When the nodes in flight will be done, at that mean.
    from: Millis,
}

/// Estimates the campaign's end on its own task, off the driver's: the simulator over the nodes
/// still to start takes a while on a large fleet. Each estimate goes into the view and the stream.
async fn eta_task(
    id: i64,
    mut input: watch::Receiver<Option<EtaInput>>,
    shown: Arc<Shown>,
    stream: tokio::sync::broadcast::Sender<crate::StreamItem>,
) {
    while input.changed().await.is_ok() {
        let Some(i) = input.borrow_and_update().clone() else { continue };
        let rest = if i.spec.nodes.as_ref().is_some_and(|n| n.is_empty()) {
            0
        } else {
            // Simulated from when the nodes in flight are done, in wall-clock time: the closed
            // hours of maintenance windows count.
            let opts =
                baton_sim::SimOptions { duration: (i.mean, i.mean), start: i.from, ..Default::default() };
            tokio::task::spawn_blocking(move || baton_sim::makespan(i.fleet, i.spec, &opts).unwrap_or(0))
                .await
                .unwrap_or(0)
        };
        shown.update(|v| {
            // The campaign may have ended while this ran: an ended one has no estimate.
            let live = matches!(
                v.phase,
                baton_proto::Phase::Running | baton_proto::Phase::Paused | baton_proto::Phase::RollingBack
            );
            if live {
                v.eta_ms = Some(i.from + rest);
                // Under the view's lock, as the driver's own deltas are: never out of order.
                let _ =
                    stream.send(crate::StreamItem::Delta(Box::new(ViewDelta::of(v, Vec::new(), Vec::new()))));
            }
        });
    }
    tracing::debug!(campaign = id, "estimates end");
}

/// Once committed, aborted or rolled back, nothing the nodes do matters to the campaign.
/// Whether the campaign watches nodes no more: it was aborted or rolled back, or a newer
/// campaign superseded it. A committed campaign still watches the fleet until then, so that a
/// node coming back at a version older than the level is seen and fenced.
fn watch_ended(c: &Campaign, superseded: bool) -> bool {
    use baton_core::Phase;
    superseded || matches!(c.phase, Phase::Aborted | Phase::RolledBack)
}

/// Restored while seen down: only its watch can tell the campaign it is up again (and so let it
/// back into its load balancers), whatever the campaign's phase.
fn waits_to_be_seen(r: &baton_core::campaign::NodeRun) -> bool {
    matches!(r.state, NodeState::Restoring { stage: Stage::Waiting { .. } })
        || matches!(r.state.back(), Some(Back::Restoring { stage: Stage::Waiting { .. } }))
}

/// Whether the campaign still waits on something from this node's agent.
/// (A hold or release step runs beside it, in `hold_jobs`: the node's watch goes on meanwhile.)
fn needs_job(r: &baton_core::campaign::NodeRun) -> bool {
    let st = &r.state;
    // Restored while seen down: its watch tells the campaign when it is up again.
    if waits_to_be_seen(r) {
        return false;
    }
    st.is_active()
        || matches!(
            st,
            NodeState::Done { back: Back::Checking { .. } | Back::Restoring { .. } }
                | NodeState::Failed { back: Back::Checking { .. } | Back::Restoring { .. }, .. }
        )
}

/// What every campaign's driver shares with the others.
#[derive(Clone)]
pub struct With {
    pub store: Arc<Store>,
    pub writer: crate::store::Writer,
    pub client: AgentClient,
    pub telemetry: Arc<Telemetry>,
    pub stream: tokio::sync::broadcast::Sender<crate::StreamItem>,
    pub webhooks: reqwest::Client,
    pub clock: Clock,
    /// Set when a newer campaign of the fleet is created.
    pub superseded: watch::Receiver<bool>,
}

impl Driver {
    pub fn new(
        id: i64,
        campaign: Campaign,
        events: i64,
        with: With,
    ) -> (Driver, mpsc::Receiver<Msg>, Arc<Shown>) {
        let With { store, writer, client, telemetry, stream, webhooks, clock, superseded } = with;
        let (tx, rx) = mpsc::channel(1024);
        let shown = Arc::new(Shown::new(view_of(id, &campaign, events)));
        let d = Driver {
            id,
            wave: waves_of(&campaign),
            campaign,
            store,
            writer,
            main: tokio::runtime::Handle::current(),
            client,
            inbox: tx,
            jobs: HashMap::new(),
            hold_jobs: HashMap::new(),
            shown: shown.clone(),
            _closer: Closer(shown.clone()),
            events,
            last_now: 0,
            overhead_us: Arc::new(std::sync::Mutex::new(Vec::new())),
            telemetry,
            stream,
            hooks: None,
            webhooks,
            eta: watch::channel(None).0,
            eta_sent: None,
            entered: HashMap::new(),
            resume_at: None,
            stale: false,
            clock,
            superseded,
            fence_jobs: Vec::new(),
        };
        (d, rx, shown)
    }

    pub fn inbox(&self) -> mpsc::Sender<Msg> {
        self.inbox.clone()
    }

    pub async fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        if !self.campaign.spec.webhooks.is_empty() {
            let _main = self.main.enter();
            self.hooks =
                Some(crate::webhook::start(self.campaign.spec.webhooks.clone(), self.webhooks.clone()));
        }
        // After a restart: ask every agent the campaign waits on about its step again, then
        // every other node how it is (before any event: see `census`), then watch those.
        self.main.spawn(eta_task(self.id, self.eta.subscribe(), self.shown.clone(), self.stream.clone()));
        self.resend();
        self.census().await;
        self.guard();
        let mut moves = self.clock.moves();
        let mut superseded = self.superseded.clone();
        loop {
            let deadline = self.campaign.next_deadline();
            let wait = deadline.map(|d| Duration::from_millis(d.saturating_sub(self.clock.now())));
            let resume_at = self.resume_at.map(|r| r.0);
            tokio::select! {
                m = rx.recv() => match m {
                    Some(m) => {
                        // Group commit: what else is waiting goes into the same journal
                        // transaction (one fsync), each event still applied in order and
                        // journaled before any of their commands go out.
                        let mut batch = vec![m];
                        while batch.len() < MAX_BATCH {
                            match rx.try_recv() {
                                Ok(m) => batch.push(m),
                                Err(_) => break,
                            }
                        }
                        self.apply_all(batch).await;
                    }
                    None => break,
                },
                _ = tokio::time::sleep(wait.unwrap_or(Duration::from_secs(3600))), if wait.is_some() && resume_at.is_none() => {
                    self.apply(Event::Tick).await
                }
                // A test moved the clock: what is due now is due.
                Ok(()) = moves.changed(), if resume_at.is_none() => {
                    self.apply(Event::Tick).await
                }
                // A newer campaign is being created: this one's watches and fences stop (or
                // start again, when that creation was refused).
                Ok(()) = superseded.changed() => {
                    if *superseded.borrow_and_update() {
                        for h in self.fence_jobs.drain(..) {
                            h.abort();
                        }
                        self.reap(&[], true);
                    } else {
                        self.guard();
                    }
                }
                _ = tokio::time::sleep_until(resume_at.unwrap_or_else(tokio::time::Instant::now)), if resume_at.is_some() => {
                    tracing::info!(campaign = self.id, "trying the journal again: sending again what the campaign waits on");
                    // A tick is journaled like any event: if the journal works again, that
                    // sends everything the campaign waits on again; else the next try is
                    // scheduled, twice as late.
                    self.apply(Event::Tick).await;
                }
            }
        }
    }

    /// Sends every step and watch the campaign waits on, with the same step ids (an agent that
    /// ran a step answers with its recorded outcome), and watches every other node.
    fn resume(&mut self) {
        self.resend();
        self.watch_all();
    }

    fn resend(&mut self) {
        for cmd in self.campaign.resume_commands() {
            self.dispatch(cmd);
        }
    }

    /// Watches every node and, while no newer campaign exists, carries out again the fences and
    /// unfences a committed campaign decided (after a restart, or a refused creation).
    fn guard(&mut self) {
        self.watch_all();
        if !*self.superseded.borrow() {
            for cmd in self.campaign.fence_commands() {
                self.dispatch(cmd);
            }
        }
    }

    /// Watches every node the campaign has no job on.
    fn watch_all(&mut self) {
        for i in 0..self.campaign.nodes.len() {
            let node = self.campaign.fleet.node_name(i as baton_core::NodeId).to_string();
            self.watch(&node);
        }
    }

    /// The journal refused an append: what the campaign did in memory is undone (rebuilt from
    /// the journal), every job stops (their reports would be refused too, and lost), and all
    /// that the campaign waits on is sent again after a backoff, so no report is lost.
    fn journal_failed(&mut self, event: &Event, e: &dyn std::fmt::Display) {
        tracing::error!(campaign = self.id, "cannot journal {event:?}: {e}");
        self.rebuild();
        for (_, (_, h)) in self.jobs.drain() {
            h.abort();
        }
        for (_, h) in self.hold_jobs.drain() {
            h.abort();
        }
        let wait =
            self.resume_at.map_or(Duration::from_millis(500), |(_, w)| (w * 2).min(Duration::from_secs(30)));
        self.resume_at = Some((tokio::time::Instant::now() + wait, wait));
        self.telemetry.journal_failures.inc();
    }

    /// Applies one event of the driver's own (a tick, what the census saw).
    async fn apply(&mut self, event: Event) {
        self.apply_all(vec![Msg::Event { event, reply: None, sent: std::time::Instant::now() }]).await
    }

    /// Applies events in order, journals those the campaign took in one transaction, and only
    /// then sends the commands that follow from them, updates the view and answers. Every
    /// answer waits for the journal: a refusal reasoned on an event the journal then refused
    /// would give a false reason.
    async fn apply_all(&mut self, batch: Vec<Msg>) {
        if self.stale && !self.rebuild() {
            let e = "the journal cannot be read back to the campaign's last recorded state";
            if let Some(Msg::Event { event, .. }) = batch.first() {
                self.journal_failed(event, &e);
            }
            for Msg::Event { reply, .. } in batch {
                if let Some(r) = reply {
                    let _ = r.send(Err(Refused::Journal(e.into())));
                }
            }
            return;
        }
        let phase = self.campaign.phase;
        let mut taken = Vec::with_capacity(batch.len());
        let mut refused = Vec::new();
        let mut touched = Vec::new();
        for Msg::Event { event, reply, sent } in batch {
            let now = self.clock.now().max(self.last_now);
            match self.campaign.handle_changes(now, event.clone()) {
                Ok((cmds, t)) => {
                    self.last_now = now;
                    touched.extend(t);
                    taken.push(Taken { now, event, cmds, reply, sent });
                }
                Err(e) => {
                    tracing::debug!(campaign = self.id, "event not applied: {e}");
                    refused.push((reply, Err(Refused::from(e))));
                }
            }
        }
        if taken.is_empty() {
            answer(refused);
            return;
        }
        // Off the async runtime: the sync to disk blocks the writer's thread, not the API or
        // the jobs.
        let write = std::time::Instant::now();
        let entries: Vec<(Millis, Event)> = taken.iter().map(|t| (t.now, t.event.clone())).collect();
        let appended = self.writer.append_all(self.id, entries).await;
        self.telemetry.journal_write_seconds.observe(write.elapsed().as_secs_f64());
        if let Err(e) = appended {
            // Not journaled: none of them happened. Go back to the journal's state, send
            // nothing, and try again later. What was refused was refused in a state that did
            // not happen either.
            self.journal_failed(&taken[0].event, &e);
            let why = || Refused::Journal(e.to_string());
            let replies = taken.into_iter().map(|t| t.reply).chain(refused.into_iter().map(|r| r.0));
            answer(replies.map(|r| (r, Err(why()))).collect());
            return;
        }
        // The journal works again: whatever reached it first, everything the campaign waits on
        // is asked again now (the failure stopped every job).
        if self.resume_at.take().is_some() {
            self.resume();
        }
        let mut replies = Vec::with_capacity(taken.len());
        for Taken { now, event, cmds, reply, sent } in taken {
            self.events += 1;
            let from_agent = matches!(
                event,
                Event::StepOk { .. } | Event::StepFailed { .. } | Event::Booted { .. } | Event::Health { .. }
            );
            let entry = baton_proto::JournalEntry {
                seq: self.events,
                at_ms: now,
                event: baton_core::journal::to_value(&event),
            };
            let _ = self.stream.send(crate::StreamItem::Entry { campaign: self.id, entry });
            let had_commands = cmds.iter().any(|c| !matches!(c, Command::Notify { .. }));
            for (k, c) in cmds.into_iter().enumerate() {
                if let (Some(tx), Command::Notify { notice }) = (&self.hooks, &c) {
                    if let Some(crate::webhook::What { event, node, reason, by }) =
                        crate::webhook::event_of(notice)
                    {
                        let _ = tx.send(crate::webhook::Hook {
                            delivery: format!("{}-{}-{k}", self.id, self.events),
                            campaign_id: self.id,
                            campaign: self.campaign.spec.name.clone(),
                            fleet: self.campaign.fleet.name.clone(),
                            event,
                            node,
                            reason,
                            by,
                            at_ms: now,
                        });
                    }
                }
                self.dispatch(c);
            }
            if from_agent && had_commands {
                let took = sent.elapsed();
                self.telemetry.decision_seconds.observe(took.as_secs_f64());
                self.overhead_us.lock().unwrap_or_else(|p| p.into_inner()).push(took.as_micros() as u64);
            }
            replies.push((reply, Ok(())));
        }
        // Once for the batch: the campaign is at its end state already, and the view then
        // matches the journal's length.
        touched.sort_unstable();
        touched.dedup();
        let phase_changed = phase != self.campaign.phase;
        self.reap(&touched, phase_changed);
        self.show(&touched, phase_changed);
        answer(replies);
        answer(refused);
        self.estimate(self.last_now);
    }

    /// Brings the view up to date with the nodes an event changed (all of them after a phase
    /// change: cheap next to what a phase change does) and tells the stream what changed.
    fn show(&mut self, touched: &[baton_core::NodeId], all: bool) {
        if all {
            // A commit may have begun the after-commit pass, with a plan of its own.
            self.wave = waves_of(&self.campaign);
        }
        let c = &self.campaign;
        let ended = !matches!(
            c.phase,
            baton_core::Phase::Running | baton_core::Phase::Paused | baton_core::Phase::RollingBack
        );
        let nodes: Vec<usize> =
            if all { (0..c.nodes.len()).collect() } else { touched.iter().map(|&n| n as usize).collect() };
        let mut services: Vec<usize> = if all {
            (0..c.fleet.services.len()).collect()
        } else {
            nodes.iter().flat_map(|&n| c.fleet.memberships[n].iter().map(|&s| s as usize)).collect()
        };
        services.sort_unstable();
        services.dedup();
        let (wave, stream) = (&self.wave, &self.stream);
        self.shown.update(|v| {
            let mut changed = Vec::new();
            for &i in &nodes {
                let nv = node_view(c, i, wave[i]);
                if v.nodes[i] != nv {
                    let old = std::mem::replace(&mut v.nodes[i], nv);
                    count(v, &old.state, -1);
                    let state = v.nodes[i].state.clone();
                    count(v, &state, 1);
                    changed.push(Indexed { index: i, item: v.nodes[i].clone() });
                }
            }
            let mut svc = Vec::new();
            for &s in &services {
                let sv = service_view(c, s);
                if v.services[s] != sv {
                    v.services[s] = sv.clone();
                    svc.push(Indexed { index: s, item: sv });
                }
            }
            v.phase = phase_of(c.phase);
            // A new pass (the after-commit pass, with a plan of its own) goes out as a whole
            // view: a delta carries no plan.
            let new_pass = all && v.pass != c.pass.as_str();
            if new_pass {
                v.pass = c.pass.as_str().into();
                v.waves = c.plan.waves.len();
                v.lower_bound = c.plan.lower_bound;
                v.binding.clone_from(&c.plan.binding);
            }
            v.holds_fleet = c.holds_fleet();
            v.pending = c.pending();
            v.active = c.active() as usize;
            v.events = self.events;
            v.window_opens_at_ms = c.window_opens_at();
            v.started_at_ms = c.started_at;
            if ended {
                v.eta_ms = None;
            }
            // Sent under the view's lock: deltas reach the stream in the order they were made.
            if new_pass {
                let _ = stream.send(crate::StreamItem::View(Box::new(v.clone())));
            } else {
                let _ = stream.send(crate::StreamItem::Delta(Box::new(ViewDelta::of(v, changed, svc))));
            }
        });
    }

    /// Rebuilds the whole view (after the campaign was rebuilt from its journal).
    fn show_all(&mut self) {
        let mut v = view_of(self.id, &self.campaign, self.events);
        let stream = &self.stream;
        self.shown.update(|old| {
            v.eta_ms = old.eta_ms;
            let _ = stream.send(crate::StreamItem::View(Box::new(v.clone())));
            *old = v;
        });
    }

    /// Hands what the estimate of the end is made from to its task: the nodes still to start,
    /// to be simulated with the mean out-of-service time observed so far, after the nodes in
    /// flight have had that time. At most every few seconds (it runs the simulator).
    fn estimate(&mut self, now: Millis) {
        use baton_core::Phase;
        let c = &self.campaign;
        // Not for the after-commit pass: the simulator plans updates, and its nodes are all at
        // the target already.
        if !matches!(c.phase, Phase::Running | Phase::Paused | Phase::RollingBack)
            || c.pass == baton_core::campaign::Pass::AfterCommit
        {
            return;
        }
        if self.eta_sent.is_some_and(|at| at.elapsed() < ETA_EVERY) {
            return;
        }
        let took: Vec<Millis> = c
            .nodes
            .iter()
            .filter(|r| matches!(r.state, NodeState::Done { .. }))
            .filter_map(|r| Some(r.finished_at?.saturating_sub(r.started_at?)))
            .collect();
        if took.is_empty() {
            return;
        }
        let mean = took.iter().sum::<Millis>() / took.len() as Millis;
        let in_flight = c
            .nodes
            .iter()
            .filter(|r| r.state.is_active())
            .filter_map(|r| r.started_at)
            .map(|s| (s + mean).saturating_sub(now))
            .max()
            .unwrap_or(0);
        let pending: Vec<baton_core::NodeId> = (0..c.nodes.len() as baton_core::NodeId)
            .filter(|&n| matches!(c.nodes[n as usize].state, NodeState::Pending { .. }))
            .collect();
        let mut spec = c.spec.clone();
        spec.after_commit_action = None;
        spec.nodes = Some(pending);
        spec.order.clear();
        spec.health_wait = 0;
        spec.health_stable = 0;
        self.eta.send_replace(Some(EtaInput { fleet: c.fleet.clone(), spec, mean, from: now + in_flight }));
        self.eta_sent = Some(std::time::Instant::now());
    }

    /// Rebuilds the campaign from its journal (after a failed append).
    /// Returns whether it could: until it can, the campaign in memory may hold an event the
    /// journal does not, and the driver takes no event (`stale`).
    fn rebuild(&mut self) -> bool {
        let c = &self.campaign;
        let journal = match self.store.events(self.id, 0) {
            Ok(j) => j.into_iter().map(|e| (e.at_ms, e.event)).collect::<Vec<_>>(),
            Err(e) => {
                tracing::error!(campaign = self.id, "cannot read the journal back: {e}");
                self.stale = true;
                return false;
            }
        };
        match Campaign::replay(c.fleet.clone(), c.spec.clone(), &journal) {
            Ok(r) => {
                self.campaign = r;
                self.stale = false;
                self.show_all();
                true
            }
            Err(e) => {
                tracing::error!(campaign = self.id, "the journal does not replay: {e}");
                self.stale = true;
                false
            }
        }
    }

    /// Stops jobs for nodes the campaign no longer waits on; those nodes are watched instead.
    /// Only the nodes an event changed can need that, unless the phase changed (an ended
    /// campaign watches nothing).
    fn reap(&mut self, touched: &[baton_core::NodeId], phase_changed: bool) {
        let c = &self.campaign;
        let ended = watch_ended(c, *self.superseded.borrow());
        let keep = |kind: JobKind, n: baton_core::NodeId| {
            let needed = needs_job(&c.nodes[n as usize]);
            if kind == JobKind::Watch {
                !needed && (!ended || waits_to_be_seen(&c.nodes[n as usize]))
            } else {
                needed
            }
        };
        let mut freed = Vec::new();
        if phase_changed {
            self.jobs.retain(|node, (kind, h)| {
                let k = c.fleet.node_id(node).is_some_and(|n| keep(*kind, n));
                if !k {
                    h.abort();
                    if *kind != JobKind::Watch {
                        freed.push(node.clone());
                    }
                }
                k
            });
        } else {
            for &n in touched {
                let node = c.fleet.node_name(n);
                let Some(&(kind, _)) = self.jobs.get(node) else { continue };
                if !keep(kind, n) {
                    if let Some((_, h)) = self.jobs.remove(node) {
                        h.abort();
                    }
                    if kind != JobKind::Watch {
                        freed.push(node.to_string());
                    }
                }
            }
        }
        for node in freed {
            self.watch(&node);
        }
        // A hold job ends with its step; one the campaign no longer waits on is stopped.
        let c = &self.campaign;
        self.hold_jobs.retain(|node, h| {
            let waiting = c.fleet.node_id(node).is_some_and(|n| {
                matches!(c.nodes[n as usize].hold, Hold::Holding { .. } | Hold::Releasing { .. })
            });
            if !waiting {
                h.abort();
            }
            waiting
        });
    }

    fn addr(&self, node: &str) -> String {
        self.campaign
            .fleet
            .node_id(node)
            .and_then(|n| self.campaign.fleet.nodes[n as usize].address.clone())
            .unwrap_or_default()
    }

    fn job<F>(&mut self, node: &str, kind: JobKind, fut: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        if let Some((_, h)) = self.jobs.remove(node) {
            h.abort();
        }
        let h = self.main.spawn(fut).abort_handle();
        self.jobs.insert(node.to_string(), (kind, h));
    }

    /// The node enters a step: the previous one's time goes to the metrics.
    fn enter(&mut self, node: &str, step: &'static str) {
        self.leave(node);
        self.entered.insert(node.to_string(), (step, std::time::Instant::now()));
    }

    fn leave(&mut self, node: &str) -> Option<&'static str> {
        let (step, since) = self.entered.remove(node)?;
        self.telemetry
            .step_seconds
            .get_or_create(&StepLabel { step: step.into() })
            .observe(since.elapsed().as_secs_f64());
        Some(step)
    }

    /// Sends a step to the node's agent in a job that reports how it ended.
    fn step(&mut self, node: String, req: StepRequest, rep: Reporter) {
        let addr = self.addr(&node);
        let out = (self.writer.clone(), self.id);
        // A campaign created before the core ordered the load balancers' steps has its drain
        // and restore steps tell them, as it ran.
        let lbs = if self.campaign.balancer_steps() { Vec::new() } else { self.balancers(&node) };
        let job = step_job(self.client.clone(), addr, node.clone(), req, rep, out, lbs);
        self.job(&node, JobKind::Step, job);
    }

    fn hold_step(&mut self, node: String, req: StepRequest, rep: Reporter) {
        let addr = self.addr(&node);
        let out = (self.writer.clone(), self.id);
        let job = step_job(self.client.clone(), addr, node.clone(), req, rep, out, Vec::new());
        let h = self.main.spawn(job).abort_handle();
        if let Some(old) = self.hold_jobs.insert(node, h) {
            old.abort();
        }
    }

    /// Runs a fence or unfence job, kept to be stopped when a newer campaign comes.
    fn fence_job(&mut self, job: impl std::future::Future<Output = ()> + Send + 'static) {
        self.fence_jobs.retain(|h| !h.is_finished());
        self.fence_jobs.push(self.main.spawn(job).abort_handle());
    }

    /// The load balancers in front of the node's services.
    fn balancers(&self, node: &str) -> Vec<Haproxy> {
        let f = &self.campaign.fleet;
        let Some(n) = f.node_id(node) else { return Vec::new() };
        f.memberships[n as usize].iter().filter_map(|&s| f.services[s as usize].haproxy.clone()).collect()
    }

    /// Watches a node the campaign has no step or watch on, so that a node lost outside the
    /// campaign counts against its services' allowances (and one that comes back stops counting).
    fn watch(&mut self, node: &str) {
        let c = &self.campaign;
        let Some(n) = c.fleet.node_id(node) else { return };
        if (watch_ended(c, *self.superseded.borrow()) && !waits_to_be_seen(&c.nodes[n as usize]))
            || self.jobs.contains_key(node)
            || c.fleet.nodes[n as usize].address.is_none()
        {
            return;
        }
        let down = c.nodes[n as usize].observed_down;
        let stable = Duration::from_millis(c.spec.health_stable);
        let job = watch_job(
            self.client.clone(),
            self.addr(node),
            node.to_string(),
            (down, stable),
            Reporter(self.inbox.clone()),
        );
        self.job(node, JobKind::Watch, job);
    }

    /// Asks every node the campaign has no job on how it is, before any event is handled: a
    /// node already down when the campaign is created (or when the orchestrator restarts) must
    /// count against its services' allowances before the first node is taken out, not a moment
    /// after. Without this, a 3-member quorum service with one member dead would have a second
    /// taken down by the campaign's first start. Bounded: an agent that does not answer within
    /// the client's timeouts is down.
    async fn census(&mut self) {
        let c = &self.campaign;
        if watch_ended(c, *self.superseded.borrow()) {
            return;
        }
        let targets: Vec<(String, String)> = (0..c.nodes.len())
            .map(|i| c.fleet.node_name(i as baton_core::NodeId).to_string())
            .filter(|node| !self.jobs.contains_key(node))
            .filter_map(|node| {
                let addr = c.fleet.node_id(&node).and_then(|n| c.fleet.nodes[n as usize].address.clone())?;
                Some((node, addr))
            })
            .collect();
        let client = self.client.clone();
        let all = targets.clone();
        let seen = match self.main.spawn(async move { probe(&client, targets, false).await }).await {
            Ok(seen) => seen,
            // The census did not finish: no node is known to be up, so each counts as down
            // until its watch sees it (a node down before the start must count, rule 1).
            Err(e) => {
                tracing::error!(
                    campaign = self.id,
                    "the census did not finish ({e}): every node counts as down until seen"
                );
                all.into_iter().map(|(node, _)| Seen { node, up: false, version: None }).collect()
            }
        };
        for Seen { node, up, version } in seen {
            let Some(n) = self.campaign.fleet.node_id(&node) else { continue };
            if self.campaign.nodes[n as usize].observed_down == up {
                self.apply(Event::Observed { node, up, version }).await;
            }
        }
    }

    fn dispatch(&mut self, cmd: Command) {
        match &cmd {
            Command::Precheck { node, .. } => self.enter(node, "prechecking"),
            Command::LbOut { node, .. } => self.enter(node, "draining"),
            // After its own load balancer step, the drain goes on.
            Command::Drain { node, .. } if self.entered.get(node).map(|e| e.0) != Some("draining") => {
                self.enter(node, "draining")
            }
            Command::Update { node, .. } => self.enter(node, "updating"),
            Command::WatchBoot { node, .. } => self.enter(node, "rebooting"),
            Command::WatchHealth { node } if self.entered.contains_key(node) => self.enter(node, "verifying"),
            Command::Restore { node, .. } if self.entered.contains_key(node) => self.enter(node, "restoring"),
            Command::Notify { notice: Notice::NodeDone { node } } => {
                self.leave(node);
            }
            Command::Notify { notice: Notice::NodeFailed { node, .. } } => {
                let kind = self.leave(node).unwrap_or("unknown");
                self.telemetry.failures.get_or_create(&KindLabel { kind: kind.into() }).inc();
            }
            _ => {}
        }
        let rep = Reporter(self.inbox.clone());
        let client = self.client.clone();
        match cmd {
            Command::Hold { node, step } => self.hold_step(node, StepRequest::new(step, StepKind::Hold), rep),
            Command::Release { node, step } => {
                self.hold_step(node, StepRequest::new(step, StepKind::Release), rep)
            }
            Command::Precheck { node, step } => {
                self.step(node, StepRequest::new(step, StepKind::Precheck), rep)
            }
            Command::Drain { node, step, stop_grace, moves } => {
                let req = StepRequest {
                    stop_grace_ms: Some(stop_grace),
                    moves: wire_moves(moves),
                    ..StepRequest::new(step, StepKind::Drain)
                };
                self.step(node, req, rep);
            }
            Command::LbOut { node, step } => {
                let lbs = self.balancers(&node);
                self.job(&node.clone(), JobKind::Step, balancer_job(node, step, lbs, false, rep));
            }
            Command::LbIn { node, step } => {
                let lbs = self.balancers(&node);
                self.job(&node.clone(), JobKind::Step, balancer_job(node, step, lbs, true, rep));
            }
            Command::Update { node, step, action, version } => {
                let req = StepRequest {
                    action: Some(action),
                    version: Some(version),
                    ..StepRequest::new(step, StepKind::Action)
                };
                self.step(node, req, rep);
            }
            Command::Restore { node, step, moves } => {
                let req =
                    StepRequest { moves: wire_moves(moves), ..StepRequest::new(step, StepKind::Restore) };
                self.step(node, req, rep)
            }
            Command::WatchBoot { node, old_boot, .. } => {
                let addr = self.addr(&node);
                self.job(&node.clone(), JobKind::Boot, boot_job(client, addr, node, old_boot, rep));
            }
            Command::WatchHealth { node } => {
                if self.jobs.get(&node).map(|j| j.0) != Some(JobKind::Health) {
                    let addr = self.addr(&node);
                    self.job(&node.clone(), JobKind::Health, health_job(client, addr, node, rep));
                }
            }
            Command::Fence { node, .. } | Command::Unfence { node, .. } if *self.superseded.borrow() => {
                tracing::warn!(campaign = self.id, %node, "not fenced or unfenced: a newer campaign has the fleet");
            }
            Command::Fence { node, step, stop_grace, reason } => {
                tracing::warn!(campaign = self.id, %node, "fencing: {reason}");
                let (addr, lbs) = (self.addr(&node), self.balancers(&node));
                let req = StepRequest {
                    stop_grace_ms: Some(stop_grace),
                    ..StepRequest::new(step, StepKind::Fence)
                };
                let job =
                    fence_job(self.client.clone(), addr, node, req, lbs, (self.writer.clone(), self.id));
                self.fence_job(job);
            }
            Command::Unfence { node, step } => {
                tracing::warn!(campaign = self.id, %node, "unfencing: back into service at its version");
                let (addr, lbs) = (self.addr(&node), self.balancers(&node));
                let req = StepRequest::new(step, StepKind::Restore);
                let job =
                    unfence_job(self.client.clone(), addr, node, req, lbs, (self.writer.clone(), self.id));
                self.fence_job(job);
            }
            Command::Notify { notice } => match notice {
                Notice::Phase { from, to, by } => {
                    tracing::info!(campaign = self.id, %from, %to, by = by.as_deref().unwrap_or("baton"), "phase");
                }
                Notice::NodeDone { node } => tracing::info!(campaign = self.id, %node, "node done"),
                Notice::NodeFailed { node, reason } => {
                    tracing::warn!(campaign = self.id, %node, "node failed: {reason}")
                }
                Notice::HoldNotReleased { node, reason } => {
                    tracing::error!(campaign = self.id, %node, "auto-updaters not released (they may still be stopped and masked): {reason}")
                }
            },
        }
    }
}

struct Backoff(Duration);

impl Backoff {
    fn new() -> Self {
        Backoff(Duration::from_millis(100))
    }
    /// Waits before trying an agent again: there is no channel across a reboot or an outage.
    async fn wait(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Duration::from_secs(2));
    }
}

/// Tracks whether the agent answers, and tells the campaign when that changes.
struct Reach {
    lost: bool,
}

impl Reach {
    async fn ok(&mut self, rep: &Reporter, node: &str) {
        if self.lost {
            self.lost = false;
            rep.send(Event::Reachable { node: node.into() }).await;
        }
    }
    async fn lost(&mut self, rep: &Reporter, node: &str, why: &str) {
        if !self.lost {
            self.lost = true;
            tracing::warn!(%node, "agent unreachable: {why}");
            rep.send(Event::Unreachable { node: node.into() }).await;
        }
    }
}

/// Workload moves as the agent's wire type has them.
fn wire_moves(moves: Vec<baton_core::campaign::WorkloadMove>) -> Vec<baton_proto::WorkloadMove> {
    moves
        .into_iter()
        .map(|m| baton_proto::WorkloadMove { workload: m.workload, to: m.to, live: m.live })
        .collect()
}

/// A node's load balancer step, as the core ordered it: out of every backend it is in (drained
/// of sessions, then in maintenance) or back into them (ready, until HAProxy's own check sees it
/// up), reported to the campaign as a step.
async fn balancer_job(node: String, step: String, lbs: Vec<Haproxy>, into: bool, rep: Reporter) {
    for lb in &lbs {
        // Asked again a few times (a socket refused during a reload), then the step fails.
        let mut backoff = Backoff::new();
        let mut tries = 0;
        loop {
            tries += 1;
            let done = if into {
                haproxy::ready(lb, &node, Duration::from_secs(60)).await
            } else {
                match haproxy::drain(lb, &node).await {
                    Ok(0) => Ok(()),
                    Ok(left) => {
                        tracing::warn!(%node, backend = %lb.backend, "drain timeout with {left} sessions left");
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            };
            match done {
                Ok(()) => break,
                Err(e) if tries < 3 => {
                    tracing::warn!(%node, backend = %lb.backend, tries, "load balancer: {e}");
                    backoff.wait().await;
                }
                Err(e) => {
                    rep.send(Event::StepFailed { node, step, reason: format!("{}: {e}", lb.backend) }).await;
                    return;
                }
            }
        }
    }
    rep.send(Event::StepOk { node, step, reboot: false, boot_id: None, version: None }).await;
}

/// Sends a step (idempotent by its id) and reports how it ended. While the agent does not
/// answer, nothing is assumed: the campaign hears `Unreachable`, then `Reachable` and the
/// outcome the agent recorded.
async fn step_job(
    client: AgentClient,
    addr: String,
    node: String,
    req: StepRequest,
    rep: Reporter,
    (writer, campaign): (crate::store::Writer, i64),
    lbs: Vec<Haproxy>,
) {
    // Out of the load balancers first: the node's services stop only once no request is
    // sent to them.
    if req.kind == StepKind::Drain {
        for lb in &lbs {
            match haproxy::drain(lb, &node).await {
                Ok(0) => {}
                Ok(left) => {
                    tracing::warn!(%node, backend = %lb.backend, "drain timeout with {left} sessions left")
                }
                Err(e) => {
                    rep.send(Event::StepFailed { node, step: req.id, reason: format!("load balancer: {e}") })
                        .await;
                    return;
                }
            }
        }
    }
    let mut backoff = Backoff::new();
    let mut reach = Reach { lost: false };
    let mut agent = client.conn(&node, &addr);
    let mut st = loop {
        match agent.start_step(&req).await {
            Ok(st) => {
                reach.ok(&rep, &node).await;
                break st;
            }
            Err(ClientError::Unreachable(why)) => {
                reach.lost(&rep, &node, &why).await;
                backoff.wait().await;
            }
            Err(ClientError::Refused(e)) if e.code == "busy" => {
                reach.ok(&rep, &node).await;
                backoff.wait().await;
            }
            // The agent cannot write its journal (a full disk): it cannot run the step now. As
            // for an agent that does not answer, nothing is assumed; after reboot_timeout the
            // node fails.
            Err(ClientError::Refused(e)) if e.code == "journal" => {
                reach.lost(&rep, &node, &e.message).await;
                backoff.wait().await;
            }
            // An agent older than prechecks and holds does not know the step: it has none to run.
            Err(ClientError::Refused(e))
                if matches!(req.kind, StepKind::Precheck | StepKind::Hold | StepKind::Release)
                    && e.message.contains("unknown variant") =>
            {
                reach.ok(&rep, &node).await;
                tracing::warn!(%node, "the agent does not know prechecks (an older baton): none run: {}", e.message);
                rep.send(Event::StepOk { node, step: req.id, reboot: false, boot_id: None, version: None })
                    .await;
                return;
            }
            Err(ClientError::Refused(e)) => {
                reach.ok(&rep, &node).await;
                rep.send(Event::StepFailed { node, step: req.id, reason: e.message }).await;
                return;
            }
        }
    };
    while st.state == StepState::Running {
        match agent.step(&req.id, 5_000).await {
            Ok(s) => {
                reach.ok(&rep, &node).await;
                backoff = Backoff::new();
                st = s;
            }
            Err(ClientError::Unreachable(why)) => {
                reach.lost(&rep, &node, &why).await;
                backoff.wait().await;
            }
            Err(ClientError::Refused(e)) => {
                rep.send(Event::StepFailed { node, step: req.id, reason: e.message }).await;
                return;
            }
        }
    }
    // The output's tail goes to the run report; the journal keeps only the outcome.
    writer.put_output(campaign, req.id.clone(), st.output_tail.clone());
    // Back into the load balancers only when the node's services are started again (the
    // restore step runs after the health gate passed).
    if req.kind == StepKind::Restore && st.state == StepState::Ok {
        for lb in &lbs {
            if let Err(e) = haproxy::ready(lb, &node, Duration::from_secs(60)).await {
                rep.send(Event::StepFailed { node, step: req.id, reason: format!("load balancer: {e}") })
                    .await;
                return;
            }
        }
    }
    let ev = match st.state {
        StepState::Ok => Event::StepOk {
            node,
            step: req.id,
            reboot: st.reboot,
            boot_id: Some(st.boot_id),
            version: st.version,
        },
        _ => Event::StepFailed { node, step: req.id, reason: st.error.unwrap_or_else(|| "failed".into()) },
    };
    rep.send(ev).await;
}

/// Runs one step on a node's agent to its end, asking again while the agent does not answer
/// or is busy, for a job whose outcome the campaign does not wait on (fence, unfence). Its
/// output goes to the run report. None: the agent refused it (logged).
async fn agent_step(
    client: AgentClient,
    addr: String,
    node: &str,
    req: &StepRequest,
    (writer, campaign): (crate::store::Writer, i64),
) -> Option<baton_proto::StepStatus> {
    let mut backoff = Backoff::new();
    let mut agent = client.conn(node, &addr);
    let mut st = loop {
        match agent.start_step(req).await {
            Ok(st) => break st,
            Err(ClientError::Unreachable(_)) => backoff.wait().await,
            Err(ClientError::Refused(e)) if e.code == "busy" || e.code == "journal" => backoff.wait().await,
            Err(ClientError::Refused(e)) => {
                tracing::error!(%node, step = %req.id, "refused by the agent: {}", e.message);
                return None;
            }
        }
    };
    while st.state == StepState::Running {
        match agent.step(&req.id, 5_000).await {
            Ok(s) => st = s,
            Err(ClientError::Unreachable(_)) => backoff.wait().await,
            Err(ClientError::Refused(e)) => {
                tracing::error!(%node, step = %req.id, "{}", e.message);
                return None;
            }
        }
    }
    writer.put_output(campaign, req.id.clone(), st.output_tail.clone());
    Some(st)
}

/// Fences a node: out of its load balancers (drained, then in maintenance), then its agent's
/// fence step (its services stopped, and kept stopped until it is updated or unfenced). An agent
/// that does not answer is asked again until it does, or until the job is stopped (a newer
/// campaign). Nothing is reported to the campaign: it counts the node as down from the moment
/// it decided to fence it.
async fn fence_job(
    client: AgentClient,
    addr: String,
    node: String,
    req: StepRequest,
    lbs: Vec<Haproxy>,
    out: (crate::store::Writer, i64),
) {
    for lb in &lbs {
        let mut backoff = Backoff::new();
        for attempt in 1..=5 {
            match haproxy::drain(lb, &node).await {
                Ok(_) => break,
                Err(e) => {
                    tracing::error!(%node, backend = %lb.backend, attempt, "fence: load balancer: {e}");
                    backoff.wait().await;
                }
            }
        }
    }
    match agent_step(client, addr, &node, &req, out).await {
        Some(st) if st.state == StepState::Ok => {
            tracing::warn!(%node, "fenced: out of the load balancers, services kept stopped")
        }
        Some(st) => tracing::error!(%node, "fence step failed: {}", st.error.unwrap_or_default()),
        None => {}
    }
}

/// Lets a fenced node back in: its agent's restore step (the fence ends, services started), then
/// back into its load balancers once HAProxy sees it up. Asked until the agent answers, or the
/// job is stopped (a newer campaign).
async fn unfence_job(
    client: AgentClient,
    addr: String,
    node: String,
    req: StepRequest,
    lbs: Vec<Haproxy>,
    out: (crate::store::Writer, i64),
) {
    match agent_step(client, addr, &node, &req, out).await {
        Some(st) if st.state == StepState::Ok => {}
        Some(st) => {
            tracing::error!(%node, "unfence: the restore step failed: {}", st.error.unwrap_or_default());
            return;
        }
        None => return,
    }
    for lb in &lbs {
        if let Err(e) = haproxy::ready(lb, &node, Duration::from_secs(60)).await {
            tracing::error!(%node, backend = %lb.backend, "unfence: load balancer: {e}");
        }
    }
    tracing::warn!(%node, "unfenced: back into service");
}

/// Waits for the node to answer with a new boot id.
async fn boot_job(client: AgentClient, addr: String, node: String, old: Option<String>, rep: Reporter) {
    let mut backoff = Backoff::new();
    let mut agent = client.conn(&node, &addr);
    loop {
        if let Ok(s) = agent.status(None, 0).await {
            if Some(&s.boot_id) != old.as_ref() {
                rep.send(Event::Booted { node, boot_id: s.boot_id, version: s.version }).await;
                return;
            }
        }
        backoff.wait().await;
    }
}

/// Reports the node's health whenever it changes (long polls on the agent's status).
async fn health_job(client: AgentClient, addr: String, node: String, rep: Reporter) {
    let mut last: Option<(bool, Option<String>, Option<String>)> = None;
    let mut after = None;
    let mut backoff = Backoff::new();
    let mut watch = client.conn(&node, &addr);
    loop {
        match watch.status(after, 20_000).await {
            Ok(s) => {
                backoff = Backoff::new();
                // Verification also judges the checks kept for it (the journal's).
                let healthy = s.healthy && s.checks.iter().all(|c| c.ok);
                let detail = (!healthy).then(|| failing_checks(&s.checks));
                let now = (healthy, s.version, detail);
                if last.as_ref() != Some(&now) {
                    let (healthy, version, detail) = now.clone();
                    last = Some(now);
                    rep.send(Event::Health { node: node.clone(), healthy, version, detail }).await;
                }
                after = Some(s.generation);
            }
            Err(e) => {
                if last.as_ref().map(|l| l.0) != Some(false) {
                    let detail = Some(format!("its agent does not answer: {e}"));
                    last = Some((false, None, detail.clone()));
                    rep.send(Event::Health { node: node.clone(), healthy: false, version: None, detail })
                        .await;
                }
                after = None;
                backoff.wait().await;
            }
        }
    }
}

/// What a node's failing health checks said, for the reason a node fails verification. Each
/// detail is cut to 2,000 characters, the whole to 4,000: the reason is journaled.
fn failing_checks(checks: &[baton_proto::CheckResult]) -> String {
    let cut = |t: &str, n: usize| match t.char_indices().nth(n) {
        Some((i, _)) => format!("{}...", &t[..i]),
        None => t.to_string(),
    };
    let all: Vec<String> = checks
        .iter()
        .filter(|c| !c.ok)
        .map(|c| format!("check {} failed: {}", c.name, cut(&c.detail, 2000)))
        .collect();
    cut(&all.join("; "), 4000)
}

/// Reports a node seen down (agent unreachable or unhealthy) or up again, outside of what the
/// campaign does to it. Short long-polls, so that a lost node is noticed within seconds.
///
/// A node lost outside the campaign counts as up again only once it has been healthy for
/// `health_stable`, as a node the campaign updated must be: a load balancer puts a server back
/// only after its own checks pass again (HAProxy's `rise`), and until then the node is still out
/// for the service, so the campaign must not take another member down in its place.
async fn watch_job(
    client: AgentClient,
    addr: String,
    node: String,
    (down, stable): (bool, Duration),
    rep: Reporter,
) {
    let mut up = !down;
    let mut after = None;
    let mut healthy_since: Option<std::time::Instant> = None;
    let mut watch = client.conn(&node, &addr);
    loop {
        let seen = watch.status(after, 2_000).await;
        let now_up = matches!(&seen, Ok(s) if s.healthy);
        healthy_since = if now_up { healthy_since.or_else(|| Some(std::time::Instant::now())) } else { None };
        let report =
            if now_up && !up { healthy_since.is_some_and(|t| t.elapsed() >= stable) } else { now_up != up };
        if report {
            up = now_up;
            let version = seen.as_ref().ok().and_then(|s| s.version.clone());
            rep.send(Event::Observed { node: node.clone(), up, version }).await;
        }
        match seen {
            Ok(s) => after = Some(s.generation),
            Err(_) => {
                after = None;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// What a probe of one node's agent saw.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Seen {
    pub node: String,
    /// The agent answered as this node and its health checks pass.
    pub up: bool,
    pub version: Option<String>,
}

/// Asks each (node, address) how it is, 64 at a time, each bounded by the client's timeouts (an
/// agent that does not answer is down). Sorted by node, so what follows is deterministic. With
/// `fresh`, each agent reads its installed version again before it answers.
pub async fn probe(client: &AgentClient, targets: Vec<(String, String)>, fresh: bool) -> Vec<Seen> {
    let limit = Arc::new(tokio::sync::Semaphore::new(64));
    let mut probes = tokio::task::JoinSet::new();
    for (node, addr) in targets {
        let (client, limit) = (client.clone(), limit.clone());
        probes.spawn(async move {
            let _permit = limit.acquire_owned().await;
            // Not pooled: a census of 10,000 agents would otherwise keep 10,000 connections.
            let seen = client.conn(&node, &addr).once(fresh).await;
            if let Err(e) = &seen {
                tracing::warn!(%node, "agent does not answer: {e}");
            }
            let up = matches!(&seen, Ok(s) if s.healthy);
            Seen { node, up, version: seen.ok().and_then(|s| s.version) }
        });
    }
    let mut seen = Vec::new();
    while let Some(r) = probes.join_next().await {
        if let Ok(r) = r {
            seen.push(r);
        }
    }
    seen.sort();
    seen
}
