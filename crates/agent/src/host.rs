//! What an agent does to its node, behind one trait: the real system ([`System`]: commands,
//! services, hooks, the reboot command) or a simulated host for scale tests
//! ([`crate::hollow`]). The agent itself (its API, mutual TLS, journal, step ids, generations)
//! is the same for both.

use crate::config::{self, CheckKind, Config, RebootPolicy, RebootVia};
use crate::{run, MOVES_ENV_MAX, MOVES_FILE, MOVES_TOO_LARGE, RESTORE_MOVES_FILE};
use baton_proto::{CheckResult, StepKind, StepRequest};
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a step did to the node.
#[derive(Debug, Clone, Default)]
pub struct Effects {
    /// What failed first, in words; `None` when everything worked.
    pub failure: Option<String>,
    /// The output of what the step ran, in order (the agent keeps its tail).
    pub output: String,
    /// The node must reboot for the step to take effect.
    pub reboot: bool,
    /// The installed version after an action that worked.
    pub version: Option<String>,
}

/// How a reboot is carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reboot {
    /// The agent exits with [`crate::EXIT_REBOOT`] for its supervisor to start it again as a
    /// new boot.
    Exit,
    /// The host was asked to reboot (its command ran, or failed and said so in the log); the
    /// agent goes on until the machine stops it.
    Asked,
}

/// The node under an agent.
pub trait Host: Send + Sync + 'static {
    /// This boot's id: a reboot changes it.
    fn boot_id(&self) -> String;
    /// The installed version, when it can be read.
    fn version(&self) -> BoxFuture<'_, Option<String>>;
    /// Runs a step the agent has journaled as started. A step that cannot run fails with its
    /// reason in [`Effects::failure`]; nothing here panics.
    fn execute<'a>(&'a self, req: &'a StepRequest) -> BoxFuture<'a, Effects>;
    /// Whether the node has health checks (with none, it is healthy).
    fn has_checks(&self) -> bool;
    /// Whether the node is fenced (its services kept stopped until a restore step).
    fn fenced(&self) -> bool {
        false
    }
    /// Runs the health checks once.
    fn check(&self) -> BoxFuture<'_, Vec<CheckResult>>;
    /// Reboots the node.
    fn reboot(&self) -> BoxFuture<'_, Reboot>;
    /// What the node lacks, by its `scan` action: `None` without one, else the updates or why
    /// the scan failed.
    fn scan(&self) -> BoxFuture<'_, Option<Result<Vec<String>, String>>>;
}

/// The real node: every effect is a command from the agent's config, run as argv.
pub struct System {
    cfg: Config,
    http: reqwest::Client,
    boot_id: String,
    /// Set by a drain during this boot: the services' stop grace, and whether they are stopped
    /// now. An update runs with them stopped and starts them again when the node stays up
    /// (no reboot, or the update failed), so its health can be checked; a reboot starts them.
    drained: Mutex<Option<(u64, bool)>>,
}

impl System {
    pub fn new(cfg: &Config) -> System {
        let boot_id =
            std::fs::read_to_string(&cfg.boot_id_file).map(|s| s.trim().to_string()).unwrap_or_else(|e| {
                tracing::warn!("cannot read boot id from {}: {e}", cfg.boot_id_file.display());
                "unknown".into()
            });
        System { cfg: cfg.clone(), http: reqwest::Client::new(), boot_id, drained: Mutex::new(None) }
    }

    fn vars(&self) -> Vec<(&'static str, String)> {
        vec![("node", self.cfg.node.clone()), ("state_dir", self.cfg.state_dir.display().to_string())]
    }

    fn drained(&self) -> Option<(u64, bool)> {
        *self.drained.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_drained(&self, d: Option<(u64, bool)>) {
        *self.drained.lock().unwrap_or_else(|p| p.into_inner()) = d;
    }

    async fn read_version(&self) -> Option<String> {
        let argv = self.cfg.version_command.as_ref()?;
        let vars = self.vars();
        let v: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let out = run::run(&config::fill(argv, &v), 30_000, 4096).await;
        out.ok.then(|| out.tail.trim().to_string()).filter(|s| !s.is_empty())
    }

    async fn run_step(&self, req: &StepRequest) -> Effects {
        let tail = self.cfg.output_tail_bytes;
        let vars = self.vars();
        let base: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut output = String::new();
        let mut failure: Option<String> = None;
        let mut reboot = false;
        let mut version = None;
        let mut step = |o: run::Outcome, what: &str| -> bool {
            output.push_str(&o.tail);
            if !o.ok && failure.is_none() {
                failure = Some(format!("{what}: {}", o.error.unwrap_or_default()));
            }
            o.ok
        };
        match req.kind {
            StepKind::Hold => self.hold(&base, &mut output, &mut failure).await,
            StepKind::Release => self.release(&base, &mut output, &mut failure).await,
            StepKind::Precheck => {
                // Nothing is touched: the checks only look.
                let results = self.run_checks(&self.cfg.prechecks).await;
                for r in &results {
                    output.push_str(&format!(
                        "{} {}: {}\n",
                        if r.ok { "ok" } else { "FAILED" },
                        r.name,
                        r.detail
                    ));
                }
                let bad: Vec<String> =
                    results.iter().filter(|r| !r.ok).map(|r| format!("{}: {}", r.name, r.detail)).collect();
                if !bad.is_empty() {
                    failure = Some(bad.join("; "));
                }
            }
            StepKind::Drain => {
                for (o, what) in
                    self.hooks_with_moves(&self.cfg.drain_hooks, req, MOVES_FILE, &base, "drain hook").await
                {
                    step(o, what);
                }
                let grace = req.stop_grace_ms.unwrap_or(300_000);
                for (o, what) in self.stop_services(&base, grace).await {
                    step(o, &what);
                }
                self.set_drained(Some((grace, true)));
            }
            StepKind::Fence => {
                // Marked first: an agent that restarts half way stops the services again.
                let file = self.fenced_file();
                if let Err(e) = write_synced(&file, req.id.as_bytes()) {
                    let error = Some(format!("cannot write {}: {e}", file.display()));
                    step(run::Outcome { ok: false, error, tail: String::new() }, "fence");
                } else {
                    let grace = req.stop_grace_ms.unwrap_or(300_000);
                    for (o, what) in self.stop_services(&base, grace).await {
                        step(o, &what);
                    }
                    self.set_drained(Some((grace, true)));
                }
            }
            StepKind::Restore => {
                // No longer fenced before the services start: a restart half way starts them.
                match std::fs::remove_file(self.fenced_file()) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        let error = Some(format!("cannot remove {}: {e}", self.fenced_file().display()));
                        step(run::Outcome { ok: false, error, tail: String::new() }, "unfence");
                    }
                    _ => {}
                }
                let mut started = true;
                for (o, what) in self.start_services(&base).await {
                    started &= step(o, &what);
                }
                self.set_drained(None);
                // A node whose services did not start fails its restore and stays out: nothing
                // is moved onto it (the orchestrator takes the moves as not done).
                let hooks: &[config::Argv] = if started { &self.cfg.restore_hooks } else { &[] };
                if !started && !self.cfg.restore_hooks.is_empty() {
                    step(
                        run::Outcome {
                            ok: false,
                            error: Some("not run: a service did not start".into()),
                            tail: String::new(),
                        },
                        "restore hooks",
                    );
                }
                for (o, what) in
                    self.hooks_with_moves(hooks, req, RESTORE_MOVES_FILE, &base, "restore hook").await
                {
                    step(o, what);
                }
            }
            StepKind::Action => {
                let name = req.action.as_deref().unwrap_or_default();
                let Some(action) = self.cfg.action(name).cloned() else {
                    // The agent checks the name before it starts a step; this is a second
                    // guard, not a path a request can take.
                    let failure = Some(format!("action {name} is not in this agent's config"));
                    return Effects { failure, ..Effects::default() };
                };
                // Services a drain stopped and a failed attempt started again stop first.
                let drained = self.drained();
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
                    // Updated by a campaign: no longer fenced, so that its services run after a
                    // reboot and it can prove itself healthy (the campaign's restore follows).
                    if let Err(e) = std::fs::remove_file(self.fenced_file()) {
                        if e.kind() != std::io::ErrorKind::NotFound {
                            tracing::error!("cannot remove {}: {e}", self.fenced_file().display());
                        }
                    }
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
                    self.set_drained(Some((grace, false)));
                }
            }
        }
        Effects { failure, output, reboot, version }
    }

    /// Where a hold records which units were running, for the release to start them again.
    fn fenced_file(&self) -> std::path::PathBuf {
        self.cfg.state_dir.join("fenced")
    }

    /// Whether the node is fenced (a fence step ran and no restore since).
    pub fn is_fenced(&self) -> bool {
        self.fenced_file().exists()
    }

    /// At the agent's start (after a reboot, a crash): a fenced node's services, started by the
    /// machine's boot, are stopped again; it may not rejoin until it is updated or unfenced.
    pub async fn reassert_fence(&self) {
        if !self.is_fenced() {
            return;
        }
        let vars = self.vars();
        let base: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        for (o, what) in self.stop_services(&base, 30_000).await {
            if !o.ok {
                tracing::error!("fenced: {what} failed: {}", o.error.unwrap_or_default());
            }
        }
        tracing::warn!(
            "this node is fenced (older than the fleet's committed level): its services are kept stopped"
        );
    }

    fn held_file(&self) -> std::path::PathBuf {
        self.cfg.state_dir.join("held.json")
    }

    async fn unit_cmd(&self, argv: &[String], base: &[(&str, &str)], unit: &str) -> run::Outcome {
        let mut v = base.to_vec();
        v.push(("unit", unit));
        run::run(&config::fill(argv, &v), 120_000, self.cfg.output_tail_bytes).await
    }

    /// Records which held units are running (unless a hold not yet released already did: its
    /// record is what was running before any campaign), then stops and masks each.
    async fn hold(&self, base: &[(&str, &str)], output: &mut String, failure: &mut Option<String>) {
        let h = &self.cfg.hold;
        let file = self.held_file();
        if !file.exists() {
            let mut active = Vec::new();
            for u in &h.units {
                if self.unit_cmd(&h.is_active_command, base, u).await.ok {
                    active.push(u.clone());
                }
            }
            let record = serde_json::json!({ "active": active }).to_string();
            if let Err(e) = write_synced(&file, record.as_bytes()) {
                *failure = Some(format!("cannot record which units run in {}: {e}", file.display()));
                return;
            }
            output.push_str(&format!(
                "running before the hold: {}\n",
                if active.is_empty() { "none".into() } else { active.join(", ") }
            ));
        } else {
            output.push_str("held already (not released since): keeping that record\n");
        }
        for u in &h.units {
            for (argv, what) in [(&h.stop_command, "stop"), (&h.mask_command, "mask")] {
                let o = self.unit_cmd(argv, base, u).await;
                output.push_str(&o.tail);
                if !o.ok && failure.is_none() {
                    *failure = Some(format!("{what} {u}: {}", o.error.unwrap_or_default()));
                }
            }
        }
    }

    /// At the agent's start (after a reboot, a crash): a hold not yet released is applied
    /// again, since a runtime mask and a stop last only until the machine reboots, and the
    /// units would otherwise run (and patch, and reboot the node) while the campaign goes on.
    pub async fn reassert_hold(&self) {
        let h = &self.cfg.hold;
        if h.units.is_empty() || !self.held_file().exists() {
            return;
        }
        let vars = self.vars();
        let base: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        for u in &h.units {
            for (argv, what) in [(&h.stop_command, "stop"), (&h.mask_command, "mask")] {
                let o = self.unit_cmd(argv, &base, u).await;
                if !o.ok {
                    tracing::error!(unit = %u, "holding again after a restart: {what} failed: {}", o.error.unwrap_or_default());
                }
            }
        }
        tracing::info!(units = ?h.units, "auto-updaters held again after a restart (a campaign holds them)");
    }

    /// Unmasks every held unit and starts those that were running before the hold; the record
    /// is removed once all of it worked.
    async fn release(&self, base: &[(&str, &str)], output: &mut String, failure: &mut Option<String>) {
        let h = &self.cfg.hold;
        let file = self.held_file();
        let active: Vec<String> = match std::fs::read(&file) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                *failure = Some(format!("cannot read {}: {e}", file.display()));
                return;
            }
            Ok(b) => match serde_json::from_slice::<serde_json::Value>(&b)
                .ok()
                .and_then(|v| serde_json::from_value(v["active"].clone()).ok())
            {
                Some(a) => a,
                None => {
                    // Kept for a person to read: what ran before the hold is in it.
                    *failure = Some(format!("{} is not a hold record; it is kept", file.display()));
                    return;
                }
            },
        };
        for u in &h.units {
            let o = self.unit_cmd(&h.unmask_command, base, u).await;
            output.push_str(&o.tail);
            if !o.ok && failure.is_none() {
                *failure = Some(format!("unmask {u}: {}", o.error.unwrap_or_default()));
            }
        }
        for u in active.iter().filter(|u| h.units.contains(u)) {
            let o = self.unit_cmd(&h.start_command, base, u).await;
            output.push_str(&o.tail);
            if !o.ok && failure.is_none() {
                *failure = Some(format!("start {u}: {}", o.error.unwrap_or_default()));
            }
        }
        if failure.is_none() {
            if let Err(e) = std::fs::remove_file(&file) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    *failure = Some(format!("cannot remove {}: {e}", file.display()));
                }
            }
        }
        output.push_str(&format!(
            "started again: {}\n",
            if active.is_empty() { "none".into() } else { active.join(", ") }
        ));
    }

    /// Runs `hooks` in turn with the step's workload moves in `$BATON_MOVES_FILE` (written to
    /// `file` in the state directory) and, within what one environment string may hold (128 KiB
    /// on Linux), in `$BATON_MOVES`; beyond that, a hook still reading `$BATON_MOVES` gets what
    /// is not JSON and fails, rather than an empty list it would take for "nothing to move".
    async fn hooks_with_moves(
        &self,
        hooks: &[config::Argv],
        req: &StepRequest,
        file: &str,
        base: &[(&str, &str)],
        what: &'static str,
    ) -> Vec<(run::Outcome, &'static str)> {
        if hooks.is_empty() {
            return Vec::new();
        }
        let moves = serde_json::to_string(&req.moves).unwrap_or_else(|_| "[]".into());
        let file = self.cfg.state_dir.join(file);
        let path = file.display().to_string();
        if let Err(e) = tokio::fs::write(&file, &moves).await {
            let error = Some(format!("cannot write the moves to {path}: {e}"));
            return vec![(run::Outcome { ok: false, error, tail: String::new() }, what)];
        }
        let env = [
            ("BATON_MOVES_FILE", path.as_str()),
            ("BATON_MOVES", if moves.len() <= MOVES_ENV_MAX { &moves } else { MOVES_TOO_LARGE }),
        ];
        let mut out = Vec::new();
        for h in hooks {
            let o =
                run::run_with_env(&config::fill(h, base), &env, 600_000, self.cfg.output_tail_bytes).await;
            out.push((o, what));
        }
        out
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

    async fn run_checks(&self, checks: &[config::Check]) -> Vec<CheckResult> {
        let mut results = Vec::with_capacity(checks.len());
        let vars = self.vars();
        let base: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        for c in checks {
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
                CheckKind::Journal { command, max_entries, ignore } => {
                    let o = run::run_stdout(&config::fill(command, &base), c.timeout_ms, JOURNAL_READ_BYTES)
                        .await;
                    match o.error {
                        Some(e) if !o.ok => (false, format!("cannot read the journal: {e}")),
                        _ => journal_verdict(&o.tail, *max_entries, ignore),
                    }
                }
                CheckKind::Disk { path, min_free } => match disk_free(path, t).await {
                    Err(_) => (false, format!("reading the free space of {} timed out", path.display())),
                    Ok(Err(e)) => (false, format!("cannot read the free space of {}: {e}", path.display())),
                    Ok(Ok(r)) => match r {
                        Ok(free) if free >= *min_free => {
                            (true, format!("{} free on {}", config::show_size(free), path.display()))
                        }
                        Ok(free) => (
                            false,
                            format!(
                                "{} free on {}, {} needed",
                                config::show_size(free),
                                path.display(),
                                config::show_size(*min_free)
                            ),
                        ),
                        Err(e) => (false, format!("cannot read the free space of {}: {e}", path.display())),
                    },
                },
                CheckKind::Tcp(addr) => {
                    match tokio::time::timeout(t, tokio::net::TcpStream::connect(addr)).await {
                        Ok(Ok(_)) => (true, "connected".into()),
                        Ok(Err(e)) => (false, e.to_string()),
                        Err(_) => (false, "timed out".into()),
                    }
                }
            };
            let verify_only = matches!(c.kind, CheckKind::Journal { .. });
            results.push(CheckResult { name: c.name.clone(), ok, detail, verify_only });
        }
        results
    }

    async fn do_reboot(&self) -> Reboot {
        match self.cfg.reboot_via {
            RebootVia::SupervisorExit => {
                tracing::info!("rebooting: exiting for the supervisor to restart this node");
                Reboot::Exit
            }
            RebootVia::Command => {
                let argv = config::fill(&self.cfg.reboot_command, &[("node", &self.cfg.node)]);
                tracing::info!(?argv, "rebooting");
                let o = run::run(&argv, 60_000, 1024).await;
                if !o.ok {
                    tracing::error!("reboot command failed: {:?}", o.error);
                }
                Reboot::Asked
            }
        }
    }
}

impl Host for System {
    fn boot_id(&self) -> String {
        self.boot_id.clone()
    }
    fn version(&self) -> BoxFuture<'_, Option<String>> {
        Box::pin(self.read_version())
    }
    fn execute<'a>(&'a self, req: &'a StepRequest) -> BoxFuture<'a, Effects> {
        Box::pin(self.run_step(req))
    }
    fn has_checks(&self) -> bool {
        !self.cfg.checks.is_empty()
    }
    fn fenced(&self) -> bool {
        self.is_fenced()
    }
    fn check(&self) -> BoxFuture<'_, Vec<CheckResult>> {
        Box::pin(self.run_checks(&self.cfg.checks))
    }
    fn reboot(&self) -> BoxFuture<'_, Reboot> {
        Box::pin(self.do_reboot())
    }
    fn scan(&self) -> BoxFuture<'_, Option<Result<Vec<String>, String>>> {
        Box::pin(async move {
            let scan = self.cfg.scan.as_ref()?;
            let vars = self.vars();
            let base: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let o = run::run(&config::fill(&scan.argv, &base), scan.timeout_ms, 1 << 20).await;
            // `dnf check-update` exits 100 when there are updates.
            let dnf_found = matches!(scan.kind, config::ActionKind::Dnf)
                && o.error.as_deref().is_some_and(|e| e.ends_with("exit status: 100"));
            Some(if o.ok || dnf_found { Ok(scan.updates(&o.tail)) } else { Err(o.error.unwrap_or_default()) })
        })
    }
}

/// Paths whose statvfs has not returned yet: a hung mount gets one stuck thread, not one per
/// check interval.
static STATVFS_IN_FLIGHT: Mutex<Vec<std::path::PathBuf>> = Mutex::new(Vec::new());

/// [`free_bytes`] off the runtime (statvfs blocks on a hung network mount), within `t`; one at
/// a time per path.
async fn disk_free(
    path: &std::path::Path,
    t: Duration,
) -> Result<Result<std::io::Result<u64>, tokio::task::JoinError>, tokio::time::error::Elapsed> {
    {
        let mut busy = STATVFS_IN_FLIGHT.lock().unwrap_or_else(|p| p.into_inner());
        if busy.iter().any(|p| p == path) {
            let still = std::io::Error::other("an earlier reading of it has not returned (a hung mount?)");
            return Ok(Ok(Err(still)));
        }
        busy.push(path.to_path_buf());
    }
    let p = path.to_path_buf();
    tokio::time::timeout(
        t,
        tokio::task::spawn_blocking(move || {
            let r = free_bytes(&p);
            STATVFS_IN_FLIGHT.lock().unwrap_or_else(|e| e.into_inner()).retain(|x| x != &p);
            r
        }),
    )
    .await
}

/// Bytes free for an unprivileged user on the file system holding `path` (statvfs).
fn free_bytes(path: &std::path::Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "the path holds a NUL byte"))?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a writable statvfs for the call's duration.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// How much of the journal command's output is read: its last MiB.
const JOURNAL_READ_BYTES: usize = 1 << 20;

/// Judges this boot's error entries (JSON lines, as `journalctl -o json` prints them): at most
/// `max` of those whose message holds none of `ignore`. Lines that are not JSON objects are
/// not entries. The detail names the first entries found, unit and message.
pub fn journal_verdict(out: &str, max: u32, ignore: &[String]) -> (bool, String) {
    let mut found: Vec<String> = Vec::new();
    let mut count = 0u32;
    for line in out.lines() {
        let Ok(serde_json::Value::Object(e)) = serde_json::from_str::<serde_json::Value>(line.trim()) else {
            continue;
        };
        // journald gives a message that is not UTF-8 as an array of bytes.
        let msg = match e.get("MESSAGE") {
            Some(serde_json::Value::String(m)) => m.clone(),
            Some(serde_json::Value::Array(b)) => {
                let bytes: Vec<u8> = b.iter().filter_map(|x| x.as_u64()).map(|x| x as u8).collect();
                String::from_utf8_lossy(&bytes).into_owned()
            }
            _ => continue,
        };
        if ignore.iter().any(|g| msg.contains(g.as_str())) {
            continue;
        }
        count += 1;
        if found.len() < 5 {
            let unit = ["_SYSTEMD_UNIT", "SYSLOG_IDENTIFIER", "_COMM"]
                .iter()
                .find_map(|k| e.get(*k).and_then(|v| v.as_str()))
                .unwrap_or("?");
            let msg: String = msg.chars().take(300).collect();
            found.push(format!("{unit}: {msg}"));
        }
    }
    if count > max {
        let more = if count as usize > found.len() {
            format!(" (and {} more)", count as usize - found.len())
        } else {
            String::new()
        };
        (
            false,
            format!(
                "{count} error entries in this boot's journal, at most {max} allowed: {}{more}",
                found.join(" | ")
            ),
        )
    } else {
        (true, format!("{count} error entries in this boot's journal (at most {max})"))
    }
}

/// Writes a file whole or not at all: a temporary file, synced, renamed over it, the directory
/// synced.
fn write_synced(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::journal_verdict;

    /// What `journalctl -b -p err -o json` printed on a Debian host (trimmed to the fields read).
    const RECORDED: &str = r#"{"__REALTIME_TIMESTAMP":"1764500000000000","PRIORITY":"3","SYSLOG_IDENTIFIER":"kernel","MESSAGE":"ACPI Error: AE_NOT_FOUND, While resolving a named reference package element"}
{"__REALTIME_TIMESTAMP":"1764500001000000","PRIORITY":"3","_SYSTEMD_UNIT":"myapp.service","SYSLOG_IDENTIFIER":"myapp","MESSAGE":"cannot open /var/lib/myapp/db: Permission denied"}
{"__REALTIME_TIMESTAMP":"1764500002000000","PRIORITY":"2","_SYSTEMD_UNIT":"myapp.service","MESSAGE":[102,97,116,97,108,255]}
"#;

    #[test]
    fn error_entries_are_counted_except_the_ignored_and_named_in_the_detail() {
        let (ok, detail) = journal_verdict(RECORDED, 0, &["ACPI Error".into()]);
        assert!(!ok);
        assert!(detail.starts_with("2 error entries"), "{detail}");
        assert!(detail.contains("myapp.service: cannot open /var/lib/myapp/db"), "{detail}");
        assert!(detail.contains("fatal\u{fffd}"), "{detail}");
        assert!(!detail.contains("ACPI"), "{detail}");
        assert!(journal_verdict(RECORDED, 2, &["ACPI Error".into()]).0);
        assert!(!journal_verdict(RECORDED, 2, &[]).0);
        let (ok, detail) = journal_verdict("-- No entries --\n", 0, &[]);
        assert!(ok, "{detail}");
    }
}
