//! A lab: N hosts (network namespaces), each with a baton agent and the web workload, etcd on
//! the first three, real HAProxy in front of the web servers, and `baton serve` driving them.

use crate::error::LabError;
use crate::net;
use baton_agent::local::random_hex;
use baton_proto::{CampaignView, CreateCampaign, JournalEntry, Report};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::process::{Child, Command};
use tokio::sync::Notify;

pub const AGENT_PORT: u16 = 7701;
pub const WEB_PORT: u16 = 8080;
pub const ETCD_MEMBERS: usize = 3;

#[derive(Debug, Clone)]
pub struct Options {
    pub hosts: usize,
    /// How long a reboot keeps a host down.
    pub reboot_ms: u64,
    /// Campaign keys that replace the lab's defaults, as TOML values.
    pub campaign: Vec<(&'static str, String)>,
    /// Keep the lab's directory (logs) after teardown.
    pub keep: bool,
}

/// A host's power, as the lab's supervisor sees it.
pub struct Host {
    pub name: String,
    pub ip: String,
    pub dir: PathBuf,
    pub etcd: bool,
    /// Off: killed by the lab, waiting for `power_on`.
    off: AtomicBool,
    /// Never comes back from its next reboot.
    pub dead_on_reboot: AtomicBool,
    pub boots: AtomicU32,
    on: Notify,
    /// Down (rebooting, off or dead), as the lab knows it.
    pub down: AtomicBool,
}

impl Host {
    pub fn ns(&self) -> String {
        net::ns_name(&self.name)
    }
    pub fn agent_addr(&self) -> String {
        format!("{}:{AGENT_PORT}", self.ip)
    }
    pub fn etcd_url(&self) -> String {
        format!("http://{}:2379", self.ip)
    }
    pub fn updates(&self) -> usize {
        std::fs::read_to_string(self.dir.join("updates.log")).map(|s| s.lines().count()).unwrap_or(0)
    }
    pub fn version(&self) -> String {
        std::fs::read_to_string(self.dir.join("version")).unwrap_or_default().trim().to_string()
    }
}

pub struct Lab {
    pub dir: PathBuf,
    pub hosts: Vec<Arc<Host>>,
    pub haproxy_socket: PathBuf,
    pub frontend: String,
    pub api: String,
    pub fleet_file: PathBuf,
    baton: PathBuf,
    lab_exe: PathBuf,
    token: String,
    serve: Option<Child>,
    haproxy: Option<Child>,
    stopping: Arc<AtomicBool>,
    tasks: tokio::task::JoinSet<()>,
    http: reqwest::Client,
    keep: bool,
    pub o: Options,
}

fn write(p: &Path, text: &str) -> Result<(), LabError> {
    std::fs::write(p, text).map_err(|source| LabError::WriteFile { path: p.to_path_buf(), source })
}

fn free_port() -> Result<u16, LabError> {
    baton_agent::local::free_port().map_err(|source| LabError::NoFreePort { source })
}

/// Opens `p` for appending, creating it.
fn append(p: &Path) -> Result<std::fs::File, LabError> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(p)
        .map_err(|source| LabError::OpenFile { path: p.to_path_buf(), source })
}

fn quote(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

/// The lab's child processes die with it, whatever ends it.
fn die_with_parent(cmd: &mut Command) {
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

impl Lab {
    /// Builds and starts everything; on any failure what was made is torn down.
    pub async fn up(o: Options, baton: PathBuf, lab_exe: PathBuf) -> Result<Lab, LabError> {
        net::teardown();
        let dir = std::env::temp_dir().join(format!("baton-lab.{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|source| LabError::CreateDir { path: dir.clone(), source })?;
        let mut hosts = Vec::new();
        for i in 1..=o.hosts {
            let name = format!("h{i}");
            let hd = dir.join(&name);
            let svc = hd.join("svc");
            std::fs::create_dir_all(&svc).map_err(|source| LabError::CreateDir { path: svc, source })?;
            hosts.push(Arc::new(Host {
                ip: net::host_ip(i),
                dir: hd,
                etcd: i <= ETCD_MEMBERS,
                name,
                off: AtomicBool::new(false),
                dead_on_reboot: AtomicBool::new(false),
                boots: AtomicU32::new(0),
                on: Notify::new(),
                down: AtomicBool::new(true),
            }));
        }
        let mut lab = Lab {
            haproxy_socket: dir.join("haproxy.sock"),
            frontend: String::new(),
            api: String::new(),
            fleet_file: dir.join("fleet.toml"),
            dir,
            hosts,
            baton,
            lab_exe,
            token: random_hex(),
            serve: None,
            haproxy: None,
            stopping: Arc::new(AtomicBool::new(false)),
            tasks: tokio::task::JoinSet::new(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .map_err(|source| LabError::HttpClient { source })?,
            keep: o.keep,
            o,
        };
        match lab.start().await {
            Ok(()) => Ok(lab),
            Err(e) => {
                lab.down().await;
                Err(e)
            }
        }
    }

    async fn start(&mut self) -> Result<(), LabError> {
        net::bridge_up()?;
        for (i, h) in self.hosts.iter().enumerate() {
            net::host_up(&h.name, i + 1)?;
        }
        self.write_files()?;
        for h in self.hosts.clone() {
            let sup = Supervisor {
                host: h,
                baton: self.baton.clone(),
                lab_exe: self.lab_exe.clone(),
                stopping: self.stopping.clone(),
                reboot_ms: self.o.reboot_ms,
            };
            self.tasks.spawn(sup.run());
        }
        self.start_haproxy()?;
        self.start_serve()?;
        self.wait_ready().await
    }

    fn write_files(&mut self) -> Result<(), LabError> {
        let pki = self.dir.join("pki");
        let issued = |name: &str| {
            let name = name.to_string();
            move |source: baton_pki::PkiError| LabError::IssueCert { name, source }
        };
        baton_pki::init_ca(&pki, "lab").map_err(|source| LabError::InitCa { source })?;
        baton_pki::issue(&pki, "orchestrator", baton_pki::Role::Orchestrator, &[])
            .map_err(issued("orchestrator"))?;
        let cluster: Vec<String> = self
            .hosts
            .iter()
            .filter(|h| h.etcd)
            .map(|h| format!("{}=http://{}:2380", h.name, h.ip))
            .collect();
        let lab = self.lab_exe.display().to_string();
        let mut fleet = String::from(
            "name = \"lab\"\nversions = [\"1.0\", \"1.1\", \"1.2\"]\nfunctional_level = \"1.0\"\n",
        );
        for (i, h) in self.hosts.iter().enumerate() {
            baton_pki::issue(&pki, &h.name, baton_pki::Role::Agent, std::slice::from_ref(&h.ip))
                .map_err(issued(&h.name))?;
            let d = &h.dir;
            write(&d.join("version"), "1.0\n")?;
            write(&d.join("boot_id"), &random_hex())?;
            let dq = d.display().to_string();
            let web: Vec<String> = vec![
                lab.clone(),
                "web".into(),
                "--listen".into(),
                format!("{}:{WEB_PORT}", h.ip),
                "--dir".into(),
                dq.clone(),
                "--host".into(),
                h.name.clone(),
            ];
            write(&d.join("svc/web.json"), &serde_json::to_string(&web).unwrap_or_default())?;
            let mut services = vec!["\"web\""];
            let mut checks =
                format!("[[check]]\nname = \"web\"\nkind = \"http\"\nurl = \"http://{}:{WEB_PORT}/healthz\"\ntimeout = \"1s\"\n", h.ip);
            if h.etcd {
                let etcd: Vec<String> = [
                    "etcd",
                    "--name",
                    &h.name,
                    "--data-dir",
                    &format!("{dq}/etcd"),
                    "--listen-client-urls",
                    &h.etcd_url(),
                    "--advertise-client-urls",
                    &h.etcd_url(),
                    "--listen-peer-urls",
                    &format!("http://{}:2380", h.ip),
                    "--initial-advertise-peer-urls",
                    &format!("http://{}:2380", h.ip),
                    "--initial-cluster",
                    &cluster.join(","),
                    "--initial-cluster-state",
                    "new",
                    "--initial-cluster-token",
                    "baton-lab",
                    "--heartbeat-interval",
                    "100",
                    "--election-timeout",
                    "1000",
                    // A member back from a reboot asks before it campaigns, so it cannot depose
                    // a working leader with a higher term (etcd 3.5's default; 3.4 needs it).
                    "--pre-vote=true",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect();
                write(&d.join("svc/etcd.json"), &serde_json::to_string(&etcd).unwrap_or_default())?;
                services.push("\"etcd\"");
                // etcd's own endpoint health: the member answers a quorum read.
                checks.push_str(&format!(
                    "\n[[check]]\nname = \"etcd\"\nkind = \"command\"\nargv = [\"etcdctl\", \"--endpoints={}\", \"--dial-timeout=1s\", \"--command-timeout=1s\", \"endpoint\", \"health\"]\ntimeout = \"3s\"\n",
                    h.etcd_url()
                ));
                // And its peer port takes connections (a TCP check).
                checks.push_str(&format!(
                    "\n[[check]]\nname = \"etcd-peer\"\nkind = \"tcp\"\naddress = \"{}:2380\"\ntimeout = \"1s\"\n",
                    h.ip
                ));
            }
            let agent = format!(
                r#"node = "{name}"
listen = "{ip}:{AGENT_PORT}"
state_dir = "state"
version_command = ["cat", "{dq}/version"]
boot_id_file = "boot_id"
reboot_via = "supervisor-exit"
check_interval = "250ms"

[tls]
ca = "{pki}/ca.pem"
cert = "{pki}/{name}.pem"
key = "{pki}/{name}.key"

[[action]]
name = "upgrade"
kind = "script"
argv = ["{lab}", "set-version", "--dir", "{dq}", "{{version}}"]
timeout = "1m"
reboot = "always"

# A rollback installs the version it is given, as the upgrade does.
[[action]]
name = "rollback"
kind = "script"
argv = ["{lab}", "set-version", "--dir", "{dq}", "{{version}}"]
timeout = "1m"
reboot = "always"

# The after-commit work: it records that it ran, changes no version and asks no reboot.
[[action]]
name = "config-version"
kind = "script"
argv = ["/bin/sh", "-c", "echo ran >> \"$1\"/after-commit.log", "config-version", "{dq}"]
timeout = "1m"
reboot = "never"

{checks}
# Before each drain: room on the host's disk (the lab's campaign halts if not).
[[precheck]]
name = "disk"
kind = "disk"
path = "/"
min_free = "1MB"

[drain]
services = [{services}]
stop_command = ["{lab}", "svc", "stop", "--dir", "{dq}", "{{service}}"]
kill_command = ["{lab}", "svc", "kill", "--dir", "{dq}", "{{service}}"]
start_command = ["{lab}", "svc", "start", "--dir", "{dq}", "{{service}}"]
"#,
                name = h.name,
                ip = h.ip,
                pki = pki.display(),
                services = services.join(", "),
            );
            write(&d.join("agent.toml"), &agent)?;
            fleet.push_str(&format!(
                "\n[[node]]\nname = \"{}\"\naddress = \"{}\"\nupdate_domain = {}\nversion = \"1.0\"\nlabels = {{ role = \"web\" }}\n",
                h.name,
                h.agent_addr(),
                i % 3
            ));
        }
        let etcd: Vec<String> =
            self.hosts.iter().filter(|h| h.etcd).map(|h| format!("\"{}\"", h.name)).collect();
        fleet.push_str(&format!(
            r#"
[[service]]
name = "web"
selector = "role=web"
max_unavailable = 2

[service.haproxy]
socket = {sock}
backend = "web"
drain_timeout = "10s"

[[service]]
name = "etcd"
nodes = [{etcd}]
quorum = true
"#,
            sock = quote(&self.haproxy_socket),
            etcd = etcd.join(", ")
        ));
        write(&self.fleet_file, &fleet)?;
        // The operator token is a secret: private, as `baton serve` requires.
        let token_file = self.dir.join("token");
        baton_pki::write_private(&token_file, self.token.as_bytes()).map_err(|e| LabError::WriteFile {
            path: token_file.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
        // HAProxy: retries and redispatch off, so only correct draining keeps requests whole.
        let port = free_port()?;
        self.frontend = format!("127.0.0.1:{port}");
        let mut cfg = format!(
            r#"global
    stats socket {sock} mode 600 level admin
    maxconn 4096

defaults
    mode http
    timeout connect 1s
    timeout client 10s
    timeout server 10s
    retries 0
    no option redispatch
    option http-server-close

frontend fe
    bind {fe}
    default_backend web

backend web
    balance roundrobin
    option httpchk GET /healthz
    default-server inter 300ms fall 2 rise 2
"#,
            sock = self.haproxy_socket.display(),
            fe = self.frontend
        );
        for h in &self.hosts {
            cfg.push_str(&format!("    server {} {}:{WEB_PORT} check\n", h.name, h.ip));
        }
        write(&self.dir.join("haproxy.cfg"), &cfg)?;
        Ok(())
    }

    fn log(&self, name: &str) -> Result<std::process::Stdio, LabError> {
        Ok(append(&self.dir.join(name))?.into())
    }

    fn start_haproxy(&mut self) -> Result<(), LabError> {
        let mut cmd = Command::new("haproxy");
        cmd.arg("-db").arg("-f").arg(self.dir.join("haproxy.cfg"));
        cmd.stdout(self.log("haproxy.log")?).stderr(self.log("haproxy.log")?).kill_on_drop(true);
        die_with_parent(&mut cmd);
        self.haproxy = Some(cmd.spawn().map_err(|source| LabError::StartHaproxy { source })?);
        Ok(())
    }

    /// Starts (or restarts) the orchestrator on the same journal.
    pub fn start_serve(&mut self) -> Result<(), LabError> {
        if self.api.is_empty() {
            self.api = format!("127.0.0.1:{}", free_port()?);
        }
        let mut cmd = Command::new(&self.baton);
        cmd.arg("serve")
            .arg("--fleet")
            .arg(&self.fleet_file)
            .arg("--db")
            .arg(format!("sqlite:{}", self.dir.join("baton.db").display()))
            .arg("--listen")
            .arg(&self.api)
            .arg("--pki")
            .arg(self.dir.join("pki"))
            .arg("--token-file")
            .arg(self.dir.join("token"));
        cmd.stdout(self.log("serve.log")?).stderr(self.log("serve.log")?).kill_on_drop(true);
        die_with_parent(&mut cmd);
        self.serve = Some(
            cmd.spawn()
                .map_err(|source| LabError::StartOrchestrator { baton: self.baton.clone(), source })?,
        );
        Ok(())
    }

    /// SIGKILLs the orchestrator and waits until it is gone.
    pub async fn kill_serve(&mut self) {
        if let Some(mut c) = self.serve.take() {
            let _ = c.start_kill();
            let _ = c.wait().await;
        }
    }

    /// Until the orchestrator answers, HAProxy sees every web server up and etcd is healthy.
    async fn wait_ready(&self) -> Result<(), LabError> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let api = self.http.get(format!("http://{}/healthz", self.api)).send().await.is_ok();
            let lb = self
                .web_status()
                .await
                .map(|s| s.iter().all(|(_, st)| st.starts_with("UP")))
                .unwrap_or(false);
            let etcd = self.etcd_healthy().await == ETCD_MEMBERS.min(self.hosts.len());
            if api && lb && etcd {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(LabError::NotUp { api, lb, etcd, dir: self.dir.clone() });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Each web server's status in HAProxy.
    pub async fn web_status(&self) -> Result<Vec<(String, String)>, LabError> {
        web_status(&self.lb(), &self.hosts).await
    }

    pub fn lb(&self) -> baton_core::model::Haproxy {
        baton_core::model::Haproxy {
            socket: self.haproxy_socket.display().to_string(),
            backend: "web".into(),
            server: "{node}".into(),
            drain_timeout: 0,
        }
    }

    /// How many etcd members answer etcd's own health endpoint.
    pub async fn etcd_healthy(&self) -> usize {
        let mut n = 0;
        for h in self.hosts.iter().filter(|h| h.etcd) {
            let r = self
                .http
                .get(format!("{}/health", h.etcd_url()))
                .timeout(Duration::from_millis(800))
                .send()
                .await;
            if let Ok(r) = r {
                if r.text().await.map(|t| t.contains("\"true\"")).unwrap_or(false) {
                    n += 1;
                }
            }
        }
        n
    }

    fn req(&self, r: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        r.bearer_auth(&self.token).header("x-baton-operator", "lab")
    }

    async fn read<T: serde::de::DeserializeOwned>(&self, r: reqwest::RequestBuilder) -> Result<T, LabError> {
        let r = self.req(r).send().await.map_err(|source| LabError::Orchestrator { source })?;
        let status = r.status();
        if !status.is_success() {
            return Err(LabError::OrchestratorStatus { status, body: r.text().await.unwrap_or_default() });
        }
        r.json().await.map_err(|source| LabError::OrchestratorBody { source })
    }

    /// Creates and starts the campaign; returns its id.
    pub async fn start_campaign(&self) -> Result<i64, LabError> {
        self.start_campaign_with(&[]).await
    }

    /// As [`Lab::start_campaign`], with these keys replacing the lab's and the case's.
    pub async fn start_campaign_with(&self, extra: &[(&'static str, String)]) -> Result<i64, LabError> {
        let mut keys: Vec<(&str, String)> = [
            ("name", "\"lab-1.1\""),
            ("target_version", "\"1.1\""),
            ("action", "\"upgrade\""),
            ("strategy", "\"continuous\""),
            ("max_parallel", "2"),
            ("max_failed_nodes", "0"),
            ("max_retries_per_node", "1"),
            ("reboot_timeout", "\"30s\""),
            ("health_wait", "\"1s\""),
            ("health_stable", "\"2s\""),
            ("ready_timeout", "\"20s\""),
            ("on_ready_timeout", "\"halt\""),
            ("stop_grace", "\"5s\""),
            ("on_precheck_fail", "\"halt\""),
            ("timezone", "\"Europe/Berlin\""),
        ]
        .into_iter()
        .map(|(k, v)| (k, v.to_string()))
        .collect();
        // A maintenance window open now, in Berlin time: from five minutes ago, for two hours
        // (the campaign runs inside it; the zero-downtime proof holds with windows on).
        let now = jiff::Timestamp::now();
        let opened = jiff::Timestamp::from_second(now.as_second() - 300).unwrap_or(now);
        let berlin = jiff::tz::TimeZone::get("Europe/Berlin").unwrap_or(jiff::tz::TimeZone::UTC);
        let opened = opened.to_zoned(berlin);
        keys.push((
            "windows",
            format!(
                "[{{ days = \"*\", start = \"{:02}:{:02}\", length = \"2h\" }}]",
                opened.hour(),
                opened.minute()
            ),
        ));
        for (k, v) in self.o.campaign.iter().chain(extra) {
            keys.retain(|(key, _)| key != k);
            keys.push((k, v.clone()));
        }
        let toml: String = keys.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
        write(&self.dir.join("campaign.toml"), &toml)?;
        let body = CreateCampaign { toml, file: Some("campaign.toml".into()) };
        let v: CampaignView =
            self.read(self.http.post(format!("http://{}/v1/campaigns", self.api)).json(&body)).await?;
        let _: CampaignView =
            self.read(self.http.post(format!("http://{}/v1/campaigns/{}/start", self.api, v.id))).await?;
        Ok(v.id)
    }

    /// An operator action on a campaign (`commit`, `rollback`, ...).
    pub async fn act(&self, id: i64, action: &str) -> Result<CampaignView, LabError> {
        self.read(self.http.post(format!("http://{}/v1/campaigns/{id}/{action}", self.api))).await
    }

    pub async fn fleet(&self) -> Result<baton_proto::FleetView, LabError> {
        self.read(self.http.get(format!("http://{}/v1/fleet", self.api))).await
    }

    pub async fn view(&self, id: i64) -> Result<CampaignView, LabError> {
        self.read(self.http.get(format!("http://{}/v1/campaigns/{id}", self.api))).await
    }

    pub async fn report(&self, id: i64) -> Result<Report, LabError> {
        self.read(self.http.get(format!("http://{}/v1/campaigns/{id}/report", self.api))).await
    }

    pub async fn events(&self, id: i64) -> Result<Vec<JournalEntry>, LabError> {
        self.read(self.http.get(format!("http://{}/v1/campaigns/{id}/events", self.api))).await
    }

    /// Waits until `pred` holds of the campaign's view.
    pub async fn wait_for(
        &self,
        id: i64,
        within: Duration,
        what: &str,
        pred: impl Fn(&CampaignView) -> bool,
    ) -> Result<CampaignView, LabError> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Ok(v) = self.view(id).await {
                if pred(&v) {
                    return Ok(v);
                }
            }
            if tokio::time::Instant::now() > deadline {
                return Err(LabError::Timeout { what: what.into() });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn host(&self, name: &str) -> &Arc<Host> {
        self.hosts.iter().find(|h| h.name == name).expect("a lab host")
    }

    /// Kills every process of the host (a crash or power loss); it stays off until `power_on`.
    pub fn power_off(&self, name: &str) {
        let h = self.host(name);
        h.off.store(true, Ordering::SeqCst);
        h.down.store(true, Ordering::SeqCst);
        net::kill_all(&h.ns(), Duration::ZERO);
    }

    pub fn power_on(&self, name: &str) {
        let h = self.host(name);
        h.off.store(false, Ordering::SeqCst);
        h.on.notify_one();
    }

    /// Tears everything down: processes, namespaces, links, and the directory unless kept.
    pub async fn down(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        for h in &self.hosts {
            h.on.notify_one();
        }
        self.kill_serve().await;
        if let Some(mut c) = self.haproxy.take() {
            let _ = c.start_kill();
            let _ = c.wait().await;
        }
        tokio::task::spawn_blocking(net::teardown).await.ok();
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        self.tasks.abort_all();
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Drop for Lab {
    /// Interrupted before `down`: the orchestrator and HAProxy die with their handles, the
    /// hosts' processes and namespaces go in `net::teardown`, the files here.
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Each host's web server status in HAProxy (UP, DRAIN, MAINT, DOWN, ...).
pub async fn web_status(
    lb: &baton_core::model::Haproxy,
    hosts: &[Arc<Host>],
) -> Result<Vec<(String, String)>, LabError> {
    let mut out = Vec::new();
    for h in hosts {
        let st = baton_server::haproxy::stat(lb, &h.name)
            .await
            .map_err(|source| LabError::HaproxyStat { host: h.name.clone(), source })?;
        out.push((h.name.clone(), st.status));
    }
    Ok(out)
}

/// Boots a host and keeps it running: its services start at boot, its agent is supervised,
/// and an agent exiting for a reboot reboots the whole host (every process of the namespace
/// stopped, down for a while, a new boot id, everything started again).
struct Supervisor {
    host: Arc<Host>,
    baton: PathBuf,
    lab_exe: PathBuf,
    stopping: Arc<AtomicBool>,
    reboot_ms: u64,
}

impl Supervisor {
    fn boot(&self) -> Result<Child, LabError> {
        let h = &self.host;
        let ns = h.ns();
        let mut services = vec!["web"];
        if h.etcd {
            services.push("etcd");
        }
        for s in services {
            let dir = h.dir.display().to_string();
            let lab = self.lab_exe.display().to_string();
            net::sh(&["ip", "netns", "exec", &ns, &lab, "svc", "start", "--dir", &dir, s])?;
        }
        let log = append(&h.dir.join("agent.log"))?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns])
            .arg(&self.baton)
            .arg("agent")
            .arg("--config")
            .arg(h.dir.join("agent.toml"))
            .current_dir(&h.dir)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .kill_on_drop(true);
        die_with_parent(&mut cmd);
        let child = cmd.spawn().map_err(|source| LabError::StartAgent { host: h.name.clone(), source })?;
        h.boots.fetch_add(1, Ordering::SeqCst);
        h.down.store(false, Ordering::SeqCst);
        Ok(child)
    }

    async fn run(self) {
        let h = self.host.clone();
        loop {
            if self.stopping.load(Ordering::SeqCst) {
                return;
            }
            let mut agent = match self.boot() {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{}: {e}", h.name);
                    return;
                }
            };
            let status = agent.wait().await;
            if self.stopping.load(Ordering::SeqCst) {
                return;
            }
            let reboot = status.ok().and_then(|s| s.code()) == Some(75);
            if reboot || h.off.load(Ordering::SeqCst) {
                h.down.store(true, Ordering::SeqCst);
                let ns = h.ns();
                let _ = tokio::task::spawn_blocking(move || net::kill_all(&ns, Duration::from_secs(3))).await;
                if reboot && h.dead_on_reboot.load(Ordering::SeqCst) {
                    return;
                }
                if h.off.load(Ordering::SeqCst) {
                    h.on.notified().await;
                } else {
                    tokio::time::sleep(Duration::from_millis(self.reboot_ms)).await;
                }
                let _ = std::fs::write(h.dir.join("boot_id"), random_hex());
            } else {
                // The agent crashed: restarted, same boot.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}
