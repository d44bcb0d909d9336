//! The node agent. It runs only the actions its own config lists, as argv with typed
//! placeholders, answers only clients with a certificate from the fleet CA, keeps its own
//! journal, and reports its node's version, boot id, health and current step.

pub mod config;
pub mod journal;
pub mod local;
pub mod run;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use baton_proto::{AgentStatus, ApiError, CheckResult, StepKind, StepRequest, StepState, StepStatus};
use config::{CheckKind, Config, RebootPolicy, RebootVia};
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
    /// Set by a drain during this boot: the services' stop grace, and whether they are stopped
    /// now. An update runs with them stopped and starts them again when the node stays up
    /// (no reboot, or the update failed), so its health can be checked; a reboot starts them.
    drained: Option<(u64, bool)>,
}

pub struct Agent {
    cfg: Config,
    boot_id: String,
    inner: Mutex<Inner>,
    changed: watch::Sender<u64>,
    exit: mpsc::Sender<i32>,
    http: reqwest::Client,
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
        }
    }

    fn vars(&self) -> Vec<(&'static str, String)> {
        vec![("node", self.cfg.node.clone()), ("state_dir", self.cfg.state_dir.display().to_string())]
    }

    async fn read_version(&self) -> Option<String> {
        let argv = self.cfg.version_command.as_ref()?;
        let vars = self.vars();
        let v: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let out = run::run(&config::fill(argv, &v), 30_000, 4096).await;
        out.ok.then(|| out.tail.trim().to_string()).filter(|s| !s.is_empty())
    }

    /// Reads the installed version again, unless a step is running (the version is in flux
    /// then; the step's end reads it).
    async fn refresh_version(&self) {
        if self.inner.lock().expect("agent lock").running.is_some() {
            return;
        }
        let v = self.read_version().await;
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
        let vars = self.vars();
        let base: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut outputs = String::new();
        let mut failure: Option<String> = None;
        let mut reboot = false;
        let mut version = None;
        let mut step = |o: run::Outcome, what: &str| -> bool {
            outputs.push_str(&o.tail);
            if !o.ok && failure.is_none() {
                failure = Some(format!("{what}: {}", o.error.unwrap_or_default()));
            }
            o.ok
        };
        match req.kind {
            StepKind::Drain => {
                if !self.cfg.drain_hooks.is_empty() {
                    let moves = serde_json::to_string(&req.moves).unwrap_or_else(|_| "[]".into());
                    let file = self.cfg.state_dir.join(MOVES_FILE);
                    let path = file.display().to_string();
                    match tokio::fs::write(&file, &moves).await {
                        Ok(()) => {
                            let mut env = vec![("BATON_MOVES_FILE", path.as_str())];
                            // Within what one environment string may hold (128 KiB on Linux);
                            // beyond, a hook still reading $BATON_MOVES gets what is not JSON
                            // and fails, rather than an empty list it would take for "nothing
                            // to move".
                            env.push((
                                "BATON_MOVES",
                                if moves.len() <= MOVES_ENV_MAX { &moves } else { MOVES_TOO_LARGE },
                            ));
                            for h in &self.cfg.drain_hooks {
                                let o = run::run_with_env(&config::fill(h, &base), &env, 600_000, tail).await;
                                step(o, "drain hook");
                            }
                        }
                        Err(e) => {
                            let error = Some(format!("cannot write the moves to {path}: {e}"));
                            step(run::Outcome { ok: false, error, tail: String::new() }, "drain hook");
                        }
                    }
                }
                let grace = req.stop_grace_ms.unwrap_or(300_000);
                for (o, what) in self.stop_services(&base, grace).await {
                    step(o, &what);
                }
                self.inner.lock().expect("agent lock").drained = Some((grace, true));
            }
            StepKind::Restore => {
                for (o, what) in self.start_services(&base).await {
                    step(o, &what);
                }
                self.inner.lock().expect("agent lock").drained = None;
                for h in &self.cfg.restore_hooks {
                    step(run::run(&config::fill(h, &base), 600_000, tail).await, "restore hook");
                }
            }
            StepKind::Action => {
                let action = self
                    .cfg
                    .action(req.action.as_deref().unwrap_or_default())
                    .cloned()
                    .expect("checked at start");
                // Services a drain stopped and a failed attempt started again stop first.
                let drained = self.inner.lock().expect("agent lock").drained;
                if let Some((grace, false)) = drained {
                    for (o, what) in self.stop_services(&base, grace).await {
                        step(o, &what);
                    }
                }
                let mut v = base.clone();
                let ver = req.version.clone().unwrap_or_default();
                v.push(("version", &ver));
                let ok = step(
                    run::run(&config::fill(&action.argv, &v), action.timeout_ms, tail).await,
                    &action.name,
                );
                if ok {
                    version = self.read_version().await;
                    reboot = match action.reboot {
                        RebootPolicy::Never => false,
                        RebootPolicy::Always => true,
                        RebootPolicy::IfRequired => self.cfg.reboot_required_file.exists(),
                    };
                }
                if let (Some((grace, _)), false) = (drained, reboot) {
                    // The node stays up: its services run again, on whichever version it has.
                    for (o, what) in self.start_services(&base).await {
                        step(o, &what);
                    }
                    self.inner.lock().expect("agent lock").drained = Some((grace, false));
                }
            }
        }
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

    /// Stops each drained service within `grace`, else kills it. A stop that fails is not a
    /// failure if the kill works (its output is kept).
    async fn stop_services(&self, base: &[(&str, &str)], grace: u64) -> Vec<(run::Outcome, String)> {
        let tail = self.cfg.output_tail_bytes;
        let mut out = Vec::new();
        for svc in &self.cfg.services {
            let mut v = base.to_vec();
            v.push(("service", svc));
            let stop = run::run(&config::fill(&self.cfg.stop_command, &v), grace, tail).await;
            let stopped = stop.ok;
            out.push((run::Outcome { ok: true, ..stop }, "stop".to_string()));
            if !stopped {
                let kill = run::run(&config::fill(&self.cfg.kill_command, &v), 30_000, tail).await;
                out.push((kill, format!("kill {svc}")));
            }
        }
        out
    }

    async fn start_services(&self, base: &[(&str, &str)]) -> Vec<(run::Outcome, String)> {
        let tail = self.cfg.output_tail_bytes;
        let mut out = Vec::new();
        for svc in &self.cfg.services {
            let mut v = base.to_vec();
            v.push(("service", svc));
            let o = run::run(&config::fill(&self.cfg.start_command, &v), 120_000, tail).await;
            out.push((o, format!("start {svc}")));
        }
        out
    }

    async fn reboot(&self) {
        // Give the orchestrator a moment to read the outcome; it is in the journal either way.
        tokio::time::sleep(Duration::from_millis(300)).await;
        match self.cfg.reboot_via {
            RebootVia::SupervisorExit => {
                tracing::info!("rebooting: exiting for the supervisor to restart this node");
                let _ = self.exit.send(EXIT_REBOOT).await;
            }
            RebootVia::Command => {
                let argv = config::fill(&self.cfg.reboot_command, &[("node", &self.cfg.node)]);
                tracing::info!(?argv, "rebooting");
                let o = run::run(&argv, 60_000, 1024).await;
                if !o.ok {
                    tracing::error!("reboot command failed: {:?}", o.error);
                }
            }
        }
    }

    async fn check_health(&self) {
        let mut results = Vec::with_capacity(self.cfg.checks.len());
        let vars = self.vars();
        let base: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        for c in &self.cfg.checks {
            let t = Duration::from_millis(c.timeout_ms);
            let (ok, detail) = match &c.kind {
                CheckKind::Command(argv) => {
                    let o = run::run(&config::fill(argv, &base), c.timeout_ms, 512).await;
                    (o.ok, o.error.unwrap_or_else(|| "ok".into()))
                }
                CheckKind::Http(url) => match tokio::time::timeout(t, self.http.get(url).send()).await {
                    Ok(Ok(r)) if r.status().is_success() => (true, r.status().to_string()),
                    Ok(Ok(r)) => (false, r.status().to_string()),
                    Ok(Err(e)) => (false, e.to_string()),
                    Err(_) => (false, "timed out".into()),
                },
                CheckKind::Tcp(addr) => {
                    match tokio::time::timeout(t, tokio::net::TcpStream::connect(addr)).await {
                        Ok(Ok(_)) => (true, "connected".into()),
                        Ok(Err(e)) => (false, e.to_string()),
                        Err(_) => (false, "timed out".into()),
                    }
                }
            };
            results.push(CheckResult { name: c.name.clone(), ok, detail });
        }
        let healthy = results.iter().all(|r| r.ok);
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
        .with_state(a)
}

/// Runs the agent until it is stopped (exit code 0) or asks to be restarted as a new boot
/// ([`EXIT_REBOOT`]).
pub async fn serve(cfg: Config) -> Result<i32, AgentError> {
    // First: until a handler is in place, SIGHUP (`systemctl reload`) would end the agent.
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    baton_pki::install_default_provider();
    let tls = cfg.tls.server_config()?;
    let (journal, replayed) = Journal::open(&cfg.state_dir)?;
    let boot_id =
        std::fs::read_to_string(&cfg.boot_id_file).map(|s| s.trim().to_string()).unwrap_or_else(|e| {
            tracing::warn!("cannot read boot id from {}: {e}", cfg.boot_id_file.display());
            "unknown".into()
        });
    let (changed, _) = watch::channel(0u64);
    let (exit_tx, mut exit_rx) = mpsc::channel(1);
    let addr: std::net::SocketAddr =
        cfg.listen.parse().map_err(|e| AgentError::Listen(cfg.listen.clone(), std::io::Error::other(e)))?;
    let agent = Arc::new(Agent {
        boot_id,
        inner: Mutex::new(Inner {
            drained: None,
            steps: replayed.steps,
            running: None,
            last: replayed.last,
            version: None,
            healthy: cfg.checks.is_empty(),
            checks: Vec::new(),
            journal,
            generation: 1,
        }),
        changed,
        exit: exit_tx,
        http: reqwest::Client::new(),
        cfg,
    });
    let v = agent.read_version().await;
    agent.inner.lock().expect("agent lock").version = v;
    agent.check_health().await;
    let checker = agent.clone();
    let health = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(checker.cfg.check_interval_ms));
        loop {
            tick.tick().await;
            checker.check_health().await;
        }
    });
    let listener = std::net::TcpListener::bind(addr).map_err(|e| AgentError::Listen(addr.to_string(), e))?;
    listener.set_nonblocking(true).map_err(|e| AgentError::Listen(addr.to_string(), e))?;
    let listener =
        tokio::net::TcpListener::from_std(listener).map_err(|e| AgentError::Listen(addr.to_string(), e))?;
    let limits = baton_net::Limits::for_this_process();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    // SIGHUP reads the TLS files again (a new revocation list, a renewed certificate); new
    // connections use them, and the old ones stay in force when they do not load.
    let (tls_tx, tls_rx) = watch::channel(tls);
    let files = agent.cfg.tls.clone();
    let reload = tokio::spawn(async move {
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
        _ = shutdown_signal() => 0,
    };
    let _ = stop.send(());
    let _ = server.await;
    reload.abort();
    health.abort();
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
