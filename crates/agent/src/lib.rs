//! The node agent. It runs only the actions its own config lists, as argv with typed
//! placeholders, answers only clients with a certificate from the fleet CA, keeps its own
//! journal, and reports its node's version, boot id, health and current step.

pub mod config;
pub mod hollow;
pub mod host;
pub mod journal;
pub mod local;
pub mod run;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use baton_proto::{AgentStatus, ApiError, CheckResult, StepKind, StepRequest, StepState, StepStatus};
use config::Config;
use host::Host;
use journal::{Journal, Record};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// The longest step id the agent takes.
pub const MAX_STEP_ID: usize = 256;

/// Where a drain's workload moves are written for its hooks (`$BATON_MOVES_FILE`), in the state
/// directory.
pub const MOVES_FILE: &str = "drain-moves.json";
/// Where a restore's failback moves (workloads going back to their preferred nodes) are written
/// for its hooks, in the state directory.
pub const RESTORE_MOVES_FILE: &str = "restore-moves.json";
/// Moves up to this size also reach hooks in `$BATON_MOVES`; larger ones only in the file, since
/// Linux refuses to start a program with one environment string over 128 KiB.
pub const MOVES_ENV_MAX: usize = 64 * 1024;
/// `$BATON_MOVES` when the moves are larger: not JSON, and it says where they are.
pub const MOVES_TOO_LARGE: &str = "too large for the environment: read $BATON_MOVES_FILE";

/// Exit code with which the agent asks its supervisor to restart it as a new boot.
pub const EXIT_REBOOT: i32 = 75;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    Tls(#[from] baton_pki::PkiError),
    #[error("cannot listen on {0}: {1}")]
    Listen(String, std::io::Error),
    /// The journal cannot be read back: the agent does not start without its history.
    #[error("{0}")]
    Journal(#[from] journal::JournalError),
}

struct Inner {
    steps: HashMap<String, StepStatus>,
    running: Option<String>,
    last: Option<String>,
    version: Option<String>,
    healthy: bool,
    checks: Vec<CheckResult>,
    journal: Journal,
    generation: u64,
}

pub struct Agent {
    cfg: Config,
    host: Arc<dyn Host>,
    boot_id: String,
    inner: Mutex<Inner>,
    changed: watch::Sender<u64>,
    exit: mpsc::Sender<i32>,
}

type Shared = Arc<Agent>;

/// A refused request: its HTTP status, a stable code and what to do.
struct Refusal {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.status, Json(ApiError { code: self.code.into(), message: self.message })).into_response()
    }
}

fn api_error(status: StatusCode, code: &'static str, message: impl Into<String>) -> Refusal {
    Refusal { status, code, message: message.into() }
}

impl Agent {
    fn bump(&self, inner: &mut Inner) {
        inner.generation += 1;
        self.changed.send_replace(inner.generation);
    }

    fn status(&self) -> AgentStatus {
        let i = self.inner.lock().expect("agent lock");
        AgentStatus {
            node: self.cfg.node.clone(),
            version: i.version.clone(),
            boot_id: self.boot_id.clone(),
            healthy: i.healthy,
            checks: i.checks.clone(),
            step: i.running.as_ref().or(i.last.as_ref()).and_then(|id| i.steps.get(id).cloned()),
            generation: i.generation,
            fenced: self.host.fenced(),
        }
    }

    /// Reads the installed version again, unless a step is running (the version is in flux
    /// then; the step's end reads it).
    async fn refresh_version(&self) {
        if self.inner.lock().expect("agent lock").running.is_some() {
            return;
        }
        let v = self.host.version().await;
        let mut i = self.inner.lock().expect("agent lock");
        if i.running.is_none() && i.version != v {
            i.version = v;
            self.bump(&mut i);
        }
    }

    /// Starts a step, or answers with what the journal knows of it.
    fn start_step(self: &Arc<Self>, req: StepRequest) -> Result<StepStatus, Refusal> {
        // A step id is journaled and kept for the agent's life: it is short and plain (the
        // orchestrator's are `CAMPAIGN-ID/NODE/PASS-ATTEMPT/STEP`).
        if req.id.is_empty()
            || req.id.len() > MAX_STEP_ID
            || !req.id.chars().all(|c| c.is_ascii_alphanumeric() || "._/-".contains(c))
        {
            let shown: String = req.id.chars().take(80).collect();
            return Err(api_error(
                StatusCode::BAD_REQUEST,
                "bad-step-id",
                format!(
                    "step id `{shown}`{} is not 1 to {MAX_STEP_ID} characters of letters, digits, '.', '_', '/' and '-'",
                    if req.id.chars().count() > 80 { "..." } else { "" }
                ),
            ));
        }
        if req.kind == StepKind::Action && req.version.is_none() {
            return Err(api_error(
                StatusCode::BAD_REQUEST,
                "missing-version",
                "an action step names the version it installs (its {version})",
            ));
        }
        let mut i = self.inner.lock().expect("agent lock");
        if let Some(s) = i.steps.get(&req.id) {
            return Ok(s.clone());
        }
        if let Some(r) = &i.running {
            return Err(api_error(StatusCode::CONFLICT, "busy", format!("step {r} is running")));
        }
        if req.kind == StepKind::Action {
            let Some(name) = &req.action else {
                return Err(api_error(
                    StatusCode::BAD_REQUEST,
                    "missing-action",
                    "an action step names its action",
                ));
            };
            let Some(action) = self.cfg.action(name) else {
                let known: Vec<&str> = self.cfg.actions.iter().map(|a| a.name.as_str()).collect();
                return Err(api_error(
                    StatusCode::FORBIDDEN,
                    "unknown-action",
                    format!("action {name} is not in this agent's config (it allows: {})", known.join(", ")),
                ));
            };
            if let Some(why) = req.version.as_deref().and_then(|v| config::version_problem(action.kind, v)) {
                return Err(api_error(
                    StatusCode::BAD_REQUEST,
                    "bad-version",
                    format!(
                        "`{}` is not a version for action {name}: {why}",
                        req.version.as_deref().unwrap_or("")
                    ),
                ));
            }
        }
        if let Some(v) = &req.version {
            if !config::valid_version(v) {
                return Err(api_error(
                    StatusCode::BAD_REQUEST,
                    "bad-version",
                    format!("`{v}` is not a version"),
                ));
            }
        }
        let rec = Record::Start {
            id: req.id.clone(),
            kind: req.kind,
            boot_id: self.boot_id.clone(),
            action: req.action.clone(),
            version: req.version.clone(),
        };
        // No step runs that the journal does not know of: a full or broken disk refuses it, as
        // a condition of this node that may pass (503), not as a bug (500).
        if let Err(e) = i.journal.append(&rec) {
            return Err(api_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "journal",
                format!(
                    "cannot write the journal {}: {e}; the step was not started",
                    i.journal.path.display()
                ),
            ));
        }
        let st = StepStatus {
            id: req.id.clone(),
            kind: req.kind,
            state: StepState::Running,
            reboot: false,
            boot_id: self.boot_id.clone(),
            version: None,
            error: None,
            output_tail: String::new(),
            executions: 1,
        };
        i.steps.insert(req.id.clone(), st.clone());
        i.running = Some(req.id.clone());
        i.last = Some(req.id.clone());
        self.bump(&mut i);
        drop(i);
        tracing::info!(step = %req.id, kind = ?req.kind, "step started");
        let me = self.clone();
        tokio::spawn(async move { me.execute(req).await });
        Ok(st)
    }

    async fn execute(self: Arc<Self>, req: StepRequest) {
        let tail = self.cfg.output_tail_bytes;
        let host::Effects { failure, output: outputs, reboot, version } = self.host.execute(&req).await;
        let bytes = outputs.as_bytes();
        let tail_text = String::from_utf8_lossy(&bytes[bytes.len().saturating_sub(tail)..]).into_owned();
        let state = if failure.is_none() { StepState::Ok } else { StepState::Failed };
        let rec = Record::End {
            id: req.id.clone(),
            state,
            reboot,
            version: version.clone(),
            error: failure.clone(),
            tail: tail_text.clone(),
        };
        let (state, reboot) = {
            let mut i = self.inner.lock().expect("agent lock");
            // An outcome the journal does not hold is not an outcome: after a restart this step
            // reads as started and never ended, that is failed. Say so now too, and do not
            // reboot on an update that will not count as done.
            let (state, reboot, failure) = match i.journal.append(&rec) {
                Ok(()) => (state, reboot, failure),
                Err(e) => {
                    let mut msg = format!(
                        "cannot record the outcome in the journal: {e}; the step is not counted done"
                    );
                    if let Some(f) = &failure {
                        msg.push_str(&format!(" (the step itself failed: {f})"));
                    }
                    tracing::error!(step = %req.id, "{msg}");
                    (StepState::Failed, false, Some(msg))
                }
            };
            if let Some(s) = i.steps.get_mut(&req.id) {
                s.state = state;
                s.reboot = reboot;
                s.version = version.clone();
                s.error = failure;
                s.output_tail = tail_text;
            }
            if version.is_some() {
                i.version = version;
            }
            i.running = None;
            self.bump(&mut i);
            (state, reboot)
        };
        tracing::info!(step = %req.id, ?state, reboot, "step finished");
        if reboot {
            self.reboot().await;
        }
    }

    async fn reboot(&self) {
        // Give the orchestrator a moment to read the outcome; it is in the journal either way.
        tokio::time::sleep(Duration::from_millis(300)).await;
        if self.host.reboot().await == host::Reboot::Exit {
            let _ = self.exit.send(EXIT_REBOOT).await;
        }
    }

    async fn check_health(&self) {
        let results = self.host.check().await;
        // A check judged only at verification (the journal's) does not make the node unhealthy.
        let healthy = results.iter().all(|r| r.ok || r.verify_only);
        let mut i = self.inner.lock().expect("agent lock");
        let changed = i.healthy != healthy || i.checks.iter().map(|c| c.ok).ne(results.iter().map(|c| c.ok));
        i.healthy = healthy;
        i.checks = results;
        if changed {
            self.bump(&mut i);
        }
    }
}

#[derive(Deserialize)]
struct WaitQuery {
    #[serde(default)]
    after: Option<u64>,
    #[serde(default)]
    wait_ms: Option<u64>,
    /// Read the installed version again now (`version_command`) instead of answering with the
    /// one read at start and after each action: what the orchestrator asks before a commit.
    #[serde(default)]
    fresh: bool,
}

#[derive(Deserialize)]
struct StepQuery {
    id: String,
    #[serde(default)]
    wait_ms: Option<u64>,
}

/// Waits (at most `wait_ms`, capped at 60 s) until `done` holds or the state changes.
async fn wait_until(a: &Agent, wait_ms: Option<u64>, done: impl Fn() -> bool) {
    let Some(ms) = wait_ms else { return };
    let mut rx = a.changed.subscribe();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(ms.min(60_000));
    while !done() {
        if tokio::time::timeout_at(deadline, rx.changed()).await.is_err() {
            break;
        }
    }
}

async fn get_status(State(a): State<Shared>, Query(q): Query<WaitQuery>) -> Json<AgentStatus> {
    let after = q.after.unwrap_or(0);
    wait_until(&a, q.wait_ms.filter(|_| q.after.is_some()), || {
        a.inner.lock().expect("agent lock").generation > after
    })
    .await;
    if q.fresh {
        a.refresh_version().await;
    }
    Json(a.status())
}

/// What the node lacks: its version read now, and its `scan` action's updates.
async fn get_scan(State(a): State<Shared>) -> Json<baton_proto::AgentScan> {
    a.refresh_version().await;
    let scanned = a.host.scan().await;
    let version = a.inner.lock().expect("agent lock").version.clone();
    let (updates, error) = match &scanned {
        Some(Ok(u)) => (u.clone(), None),
        Some(Err(e)) => (Vec::new(), Some(e.clone())),
        None => (Vec::new(), None),
    };
    Json(baton_proto::AgentScan {
        node: a.cfg.node.clone(),
        version,
        updates,
        scanned: scanned.is_some(),
        error,
    })
}

async fn post_step(State(a): State<Shared>, Json(req): Json<StepRequest>) -> Response {
    match a.start_step(req) {
        Ok(s) => {
            let code = if s.state == StepState::Running { StatusCode::ACCEPTED } else { StatusCode::OK };
            (code, Json(s)).into_response()
        }
        Err(r) => r.into_response(),
    }
}

async fn get_step(State(a): State<Shared>, Query(q): Query<StepQuery>) -> Response {
    let running = |a: &Agent| {
        a.inner
            .lock()
            .expect("agent lock")
            .steps
            .get(&q.id)
            .map(|s| s.state == StepState::Running)
            .unwrap_or(false)
    };
    wait_until(&a, q.wait_ms, || !running(&a)).await;
    match a.inner.lock().expect("agent lock").steps.get(&q.id) {
        Some(s) => Json(s.clone()).into_response(),
        None => api_error(StatusCode::NOT_FOUND, "unknown-step", format!("no step {} on this node", q.id))
            .into_response(),
    }
}

async fn list_steps(State(a): State<Shared>) -> Json<Vec<StepStatus>> {
    let i = a.inner.lock().expect("agent lock");
    let mut v: Vec<StepStatus> = i.steps.values().cloned().collect();
    v.sort_by(|x, y| x.id.cmp(&y.id));
    Json(v)
}

pub fn router(a: Shared) -> Router {
    Router::new()
        .route("/v1/status", get(get_status))
        .route("/v1/steps", post(post_step).get(list_steps))
        .route("/v1/step", get(get_step))
        .route("/v1/scan", get(get_scan))
        .with_state(a)
}

/// Runs the agent until it is stopped (exit code 0) or asks to be restarted as a new boot
/// ([`EXIT_REBOOT`]).
pub async fn serve(cfg: Config) -> Result<i32, AgentError> {
    // First: until a handler is in place, SIGHUP (`systemctl reload`) would end the agent.
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    baton_pki::install_default_provider();
    let host = Arc::new(host::System::new(&cfg));
    host.reassert_hold().await;
    host.reassert_fence().await;
    let run = Run { hup: Some(hup), limits: baton_net::Limits::for_this_process() };
    run_on(cfg, host, run, shutdown_signal()).await
}

/// How [`run_on`] runs an agent.
pub struct Run {
    /// SIGHUP's stream: each one reads the TLS files again. `None`: they are read at start only
    /// (hollow agents, many in one process).
    pub hup: Option<std::io::Result<tokio::signal::unix::Signal>>,
    /// The limits of its listener.
    pub limits: baton_net::Limits,
}

/// Runs an agent for `host` until `stop` resolves (exit code 0) or the host reboots by exiting
/// ([`EXIT_REBOOT`]): the real agent, whatever the host is.
pub async fn run_on(
    cfg: Config,
    host: Arc<dyn Host>,
    run: Run,
    stop: impl std::future::Future<Output = ()>,
) -> Result<i32, AgentError> {
    let tls = cfg.tls.server_config()?;
    let (journal, replayed) = Journal::open(&cfg.state_dir)?;
    let (changed, _) = watch::channel(0u64);
    let (exit_tx, mut exit_rx) = mpsc::channel(1);
    let addr: std::net::SocketAddr =
        cfg.listen.parse().map_err(|e| AgentError::Listen(cfg.listen.clone(), std::io::Error::other(e)))?;
    let agent = Arc::new(Agent {
        boot_id: host.boot_id(),
        inner: Mutex::new(Inner {
            steps: replayed.steps,
            running: None,
            last: replayed.last,
            version: None,
            healthy: !host.has_checks(),
            checks: Vec::new(),
            journal,
            generation: 1,
        }),
        changed,
        exit: exit_tx,
        host,
        cfg,
    });
    let v = agent.host.version().await;
    agent.inner.lock().expect("agent lock").version = v;
    if agent.host.has_checks() {
        agent.check_health().await;
    }
    // With no checks the node is healthy, and nothing needs to run every interval.
    let health = agent.host.has_checks().then(|| {
        let checker = agent.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(checker.cfg.check_interval_ms));
            loop {
                tick.tick().await;
                checker.check_health().await;
            }
        })
    });
    let listener = std::net::TcpListener::bind(addr).map_err(|e| AgentError::Listen(addr.to_string(), e))?;
    listener.set_nonblocking(true).map_err(|e| AgentError::Listen(addr.to_string(), e))?;
    let listener =
        tokio::net::TcpListener::from_std(listener).map_err(|e| AgentError::Listen(addr.to_string(), e))?;
    let limits = run.limits;
    let (stop_tx, stopped) = tokio::sync::oneshot::channel::<()>();
    // SIGHUP reads the TLS files again (a new revocation list, a renewed certificate); new
    // connections use them, and the old ones stay in force when they do not load.
    let (tls_tx, tls_rx) = watch::channel(tls);
    let files = agent.cfg.tls.clone();
    let reload = run.hup.map(|hup| {
        tokio::spawn(async move {
            let mut hup = match hup {
                Ok(h) => h,
                Err(e) => {
                    tracing::warn!("no SIGHUP handler ({e}): TLS files are read at start only");
                    return std::future::pending::<()>().await;
                }
            };
            while hup.recv().await.is_some() {
                match files.server_config() {
                    Ok(c) => {
                        tls_tx.send_replace(c);
                        tracing::info!("SIGHUP: TLS files read again");
                    }
                    Err(e) => {
                        tracing::error!("SIGHUP: keeping the TLS files in use, the new ones do not load: {e}")
                    }
                }
            }
        })
    });
    let server =
        tokio::spawn(baton_net::serve(listener, Some(tls_rx), router(agent.clone()), limits, async {
            let _ = stopped.await;
        }));
    tracing::info!(node = %agent.cfg.node, %addr, boot_id = %agent.boot_id, ?limits, "agent listening (mutual TLS)");
    match agent.cfg.tls.crl_file() {
        Some(f) => tracing::info!("revocation list in force: {}", f.display()),
        None => tracing::info!("no revocation list (none named, no crl.pem beside the CA)"),
    }
    let code = tokio::select! {
        c = exit_rx.recv() => c.unwrap_or(0),
        _ = stop => 0,
    };
    let _ = stop_tx.send(());
    let _ = server.await;
    if let Some(r) = reload {
        r.abort();
    }
    if let Some(h) = health {
        h.abort();
    }
    Ok(code)
}

async fn shutdown_signal() {
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
