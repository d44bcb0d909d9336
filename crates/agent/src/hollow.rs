//! Hollow agents: many real agents in one process, on a simulated host, so that one machine can
//! stand up thousands of nodes for the orchestrator (as Kubernetes' kubemark does with hollow
//! nodes). Each is the real agent: its own port, mutual TLS with its own certificate from the
//! fleet CA, its own journal on disk, step ids, long polls. Only the host is simulated: an
//! action takes a random time in a range and installs the version it names, a drain or restore
//! takes a short random time, a reboot takes the agent down for a while and brings it back with
//! a new boot id. Health checks: none (the node is healthy when its agent answers).

use crate::config::{self, Config};
use crate::host::{BoxFuture, Effects, Host, Reboot};
use crate::local::{free_port, random_hex};
use baton_proto::{CheckResult, StepKind, StepRequest};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The simulated host's timings, in milliseconds (each a range `lo..=hi`, drawn uniformly).
#[derive(Debug, Clone)]
pub struct Timings {
    pub action_ms: (u64, u64),
    pub drain_ms: (u64, u64),
    pub reboot_ms: (u64, u64),
}

impl Default for Timings {
    fn default() -> Self {
        Timings { action_ms: (2_000, 4_000), drain_ms: (0, 50), reboot_ms: (200, 400) }
    }
}

/// What outlives a reboot: the installed version, and where the random draws are.
struct Disk {
    version: Mutex<String>,
    rng: AtomicU64,
}

impl Disk {
    /// SplitMix64: a draw that needs no lock and no crate.
    fn next(&self) -> u64 {
        let mut z =
            self.rng.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed).wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn draw(&self, (lo, hi): (u64, u64)) -> Duration {
        let span = hi.saturating_sub(lo);
        Duration::from_millis(lo + if span == 0 { 0 } else { self.next() % (span + 1) })
    }
}

/// One boot of a simulated node.
pub struct Hollow {
    disk: Arc<Disk>,
    boot_id: String,
    timings: Arc<Timings>,
}

impl Hollow {
    async fn run_step(&self, req: &StepRequest) -> Effects {
        match req.kind {
            StepKind::Precheck | StepKind::Hold | StepKind::Release => Effects::default(),
            StepKind::Drain | StepKind::Restore | StepKind::Fence => {
                tokio::time::sleep(self.disk.draw(self.timings.drain_ms)).await;
                Effects::default()
            }
            StepKind::Action => {
                tokio::time::sleep(self.disk.draw(self.timings.action_ms)).await;
                let Some(v) = req.version.clone() else {
                    return Effects {
                        failure: Some("an action names its version".into()),
                        ..Effects::default()
                    };
                };
                *self.disk.version.lock().unwrap_or_else(|p| p.into_inner()) = v.clone();
                Effects { failure: None, output: format!("installed {v}\n"), reboot: true, version: Some(v) }
            }
        }
    }
}

impl Host for Hollow {
    fn boot_id(&self) -> String {
        self.boot_id.clone()
    }
    fn version(&self) -> BoxFuture<'_, Option<String>> {
        let v = self.disk.version.lock().unwrap_or_else(|p| p.into_inner()).clone();
        Box::pin(async move { Some(v) })
    }
    fn execute<'a>(&'a self, req: &'a StepRequest) -> BoxFuture<'a, Effects> {
        Box::pin(self.run_step(req))
    }
    fn has_checks(&self) -> bool {
        false
    }
    fn check(&self) -> BoxFuture<'_, Vec<CheckResult>> {
        Box::pin(async { Vec::new() })
    }
    fn scan(&self) -> BoxFuture<'_, Option<Result<Vec<String>, String>>> {
        Box::pin(async { None })
    }
    fn reboot(&self) -> BoxFuture<'_, Reboot> {
        Box::pin(async { Reboot::Exit })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HollowError {
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("{0}")]
    Pki(#[from] baton_pki::PkiError),
    #[error("the generated agent config does not load: {0}")]
    Config(String),
    #[error("{0}")]
    Agent(#[from] crate::AgentError),
}

/// What a hollow fleet is made of.
#[derive(Debug, Clone)]
pub struct HollowOptions {
    pub nodes: usize,
    /// Update domains the nodes are dealt into (round robin).
    pub update_domains: u32,
    /// Nodes per service; each service may have 10% of its members down.
    pub service_size: usize,
    pub timings: Timings,
    pub seed: u64,
}

/// A hollow fleet written to a directory: the CA, one certificate, config and state directory
/// per node, and the fleet file the orchestrator reads.
pub struct HollowFleet {
    pub dir: PathBuf,
    pub pki: PathBuf,
    pub fleet_file: PathBuf,
    /// The agents this process runs, each with its place in the whole fleet.
    configs: Vec<(usize, Config)>,
    opts: HollowOptions,
}

fn io(p: &Path) -> impl FnOnce(std::io::Error) -> HollowError + '_ {
    move |e| HollowError::Io(p.display().to_string(), e)
}

impl HollowFleet {
    /// Writes the fleet under `dir`: certificates, agent configs (loaded back through the real
    /// config loader), the fleet file. `progress` is told how many nodes are written.
    pub fn create(
        dir: &Path,
        opts: HollowOptions,
        progress: impl Fn(usize),
    ) -> Result<HollowFleet, HollowError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let pki = dir.join("pki");
        baton_pki::init_ca(&pki, "hollow")?;
        baton_pki::issue(&pki, "orchestrator", baton_pki::Role::Orchestrator, &[])?;
        let mut fleet = String::from("name = \"hollow\"\nversions = [\"1.0\", \"1.1\"]\n");
        let mut configs = Vec::with_capacity(opts.nodes);
        let width = opts.nodes.to_string().len();
        let names: Vec<String> = (0..opts.nodes).map(|i| format!("h{i:0width$}")).collect();
        for (i, name) in names.iter().enumerate() {
            baton_pki::issue(&pki, name, baton_pki::Role::Agent, &[])?;
            let nd = dir.join("nodes").join(name);
            std::fs::create_dir_all(&nd).map_err(io(&nd))?;
            let port = free_port().map_err(io(dir))?;
            // The real loader reads it: a hollow agent is configured as a real one is. Its
            // action is never run (the host is simulated); it names what may be asked.
            let text = format!(
                "node = \"{name}\"\nlisten = \"127.0.0.1:{port}\"\nstate_dir = \"{nd}\"\n\
                 [tls]\nca = \"{pki}/ca.pem\"\ncert = \"{pki}/{name}.pem\"\nkey = \"{pki}/{name}.key\"\n\
                 [[action]]\nname = \"upgrade\"\nkind = \"script\"\nargv = [\"/bin/true\", \"{{version}}\"]\n",
                nd = nd.display(),
                pki = pki.display(),
            );
            let file = nd.join("agent.toml");
            std::fs::write(&file, &text).map_err(io(&file))?;
            let cfg = config::load(&file.display().to_string(), &text)
                .map_err(|d| HollowError::Config(d.to_string()))?;
            configs.push((i, cfg));
            let _ = write!(
                fleet,
                "\n[[node]]\nname = \"{name}\"\naddress = \"127.0.0.1:{port}\"\nupdate_domain = {}\nversion = \"1.0\"\n",
                i as u32 % opts.update_domains.max(1)
            );
            if (i + 1) % 500 == 0 {
                progress(i + 1);
            }
        }
        for (k, chunk) in names.chunks(opts.service_size.max(2)).enumerate() {
            let members: Vec<String> = chunk.iter().map(|n| format!("\"{n}\"")).collect();
            let _ = write!(
                fleet,
                "\n[[service]]\nname = \"svc{k}\"\nnodes = [{}]\nmax_unavailable = \"10%\"\n",
                members.join(", ")
            );
        }
        let fleet_file = dir.join("fleet.toml");
        std::fs::write(&fleet_file, &fleet).map_err(io(&fleet_file))?;
        progress(opts.nodes);
        Ok(HollowFleet { dir: dir.to_path_buf(), pki, fleet_file, configs, opts })
    }

    /// Part `part` of `parts` (from 0) of a fleet [`HollowFleet::create`] wrote under `dir`,
    /// to run in this process: a process has one open-files limit, and each agent holds a
    /// listener, its journal and its connections.
    pub fn open_part(
        dir: &Path,
        opts: HollowOptions,
        part: usize,
        parts: usize,
    ) -> Result<HollowFleet, HollowError> {
        let nodes = dir.join("nodes");
        let mut names: Vec<String> = std::fs::read_dir(&nodes)
            .map_err(io(&nodes))?
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect();
        names.sort();
        let mut configs = Vec::new();
        for (i, name) in names.iter().enumerate().filter(|(i, _)| i % parts.max(1) == part) {
            let file = nodes.join(name).join("agent.toml");
            let text = std::fs::read_to_string(&file).map_err(io(&file))?;
            let cfg = config::load(&file.display().to_string(), &text)
                .map_err(|d| HollowError::Config(d.to_string()))?;
            configs.push((i, cfg));
        }
        Ok(HollowFleet {
            dir: dir.to_path_buf(),
            pki: dir.join("pki"),
            fleet_file: dir.join("fleet.toml"),
            configs,
            opts,
        })
    }

    /// Where each of this process's agents listens.
    pub fn addrs(&self) -> Vec<String> {
        self.configs.iter().map(|(_, c)| c.listen.clone()).collect()
    }

    /// Runs every agent until `stop` is set, each under a supervisor that "reboots" it: the
    /// agent stops serving, stays down for a random reboot time, and starts again (same port,
    /// same journal) with a new boot id. Returns how many reboots there were.
    pub async fn run(self, stop: tokio::sync::watch::Receiver<bool>) -> Result<usize, HollowError> {
        baton_pki::install_default_provider();
        let timings = Arc::new(self.opts.timings.clone());
        let reboots = Arc::new(AtomicUsize::new(0));
        // One process holds every agent's listener and connections: its open-files limit is
        // shared, so each listener gets its share of the process's connections.
        let mut limits = baton_net::Limits::for_this_process();
        limits.total = (limits.total / self.configs.len().max(1)).max(16);
        limits.per_peer = limits.per_peer.min(limits.total);
        let mut tasks = tokio::task::JoinSet::new();
        for (i, cfg) in self.configs {
            let disk = Arc::new(Disk {
                version: Mutex::new("1.0".into()),
                rng: AtomicU64::new(self.opts.seed ^ (i as u64).wrapping_mul(0x2545_f491_4f6c_dd1d)),
            });
            let (timings, reboots, mut stop) = (timings.clone(), reboots.clone(), stop.clone());
            tasks.spawn(async move {
                loop {
                    let host = Arc::new(Hollow {
                        disk: disk.clone(),
                        boot_id: random_hex(),
                        timings: timings.clone(),
                    });
                    let run = crate::Run { hup: None, limits };
                    let mut until = stop.clone();
                    let code = crate::run_on(cfg.clone(), host, run, async move {
                        let _ = until.wait_for(|s| *s).await;
                    })
                    .await?;
                    if code != crate::EXIT_REBOOT || *stop.borrow() {
                        return Ok::<(), HollowError>(());
                    }
                    reboots.fetch_add(1, Ordering::Relaxed);
                    tokio::select! {
                        _ = tokio::time::sleep(disk.draw(timings.reboot_ms)) => {}
                        _ = stop.wait_for(|s| *s) => return Ok(()),
                    }
                }
            });
        }
        while let Some(r) = tasks.join_next().await {
            match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tasks.abort_all();
                    return Err(e);
                }
                Err(e) if e.is_cancelled() => {}
                Err(e) => {
                    tasks.abort_all();
                    return Err(HollowError::Io(
                        "a hollow agent".into(),
                        std::io::Error::other(e.to_string()),
                    ));
                }
            }
        }
        Ok(reboots.load(Ordering::Relaxed))
    }
}
