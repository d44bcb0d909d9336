//! `baton demo`: rolls 1.0 → 1.1 across N real agents on loopback.
//!
//! In a temporary directory it creates a fleet CA and certificates, writes an agent config per
//! node whose `upgrade` action is a script that "installs" the version into the agent's state
//! dir and asks for a reboot, and starts the agents as child processes. A supervisor restarts
//! an agent that exits for a reboot with a fresh boot id, as a machine would come back. The
//! orchestrator runs in this process on SQLite in the same directory; the campaign is created,
//! started and followed through its HTTP API, exactly as `baton run` does. Every process and
//! file is removed at the end, also on Ctrl-C.

use crate::ops;
use crate::Failure;
use std::fmt::Write as _;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::process::Command;

const INSTALL: &str = r#"#!/bin/sh
# The demo's upgrade action: "installs" a version into the node's state dir, asks for a reboot.
set -eu
version="$1"
state="$2"
echo "installing $version"
sleep 1
printf '%s\n' "$version" > "$state/version"
touch "$state/reboot-required"
echo "installed $version; reboot required"
"#;

fn new_boot_id() -> String {
    use std::io::Read;
    let mut b = [0u8; 16];
    let _ = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

struct Node {
    name: String,
    dir: PathBuf,
    port: u16,
}

fn write(path: &Path, text: &str) -> Result<(), Failure> {
    std::fs::write(path, text).map_err(|e| Failure::Internal(format!("{}: {e}", path.display())))
}

fn setup(tmp: &Path, count: usize) -> Result<Vec<Node>, Failure> {
    let pki = tmp.join("pki");
    let err = |e: baton_pki::PkiError| Failure::Internal(e.to_string());
    baton_pki::init_ca(&pki, "demo").map_err(err)?;
    baton_pki::issue(&pki, "orchestrator", &[]).map_err(err)?;
    let script = tmp.join("install.sh");
    write(&script, INSTALL)?;
    let mut nodes = Vec::new();
    for i in 1..=count {
        let name = format!("node{i}");
        baton_pki::issue(&pki, &name, &[]).map_err(err)?;
        let dir = tmp.join(&name);
        std::fs::create_dir_all(dir.join("state")).map_err(|e| Failure::Internal(e.to_string()))?;
        write(&dir.join("state/version"), "1.0\n")?;
        write(&dir.join("boot_id"), &new_boot_id())?;
        let port = free_port().map_err(|e| Failure::Internal(e.to_string()))?;
        let cfg = format!(
            r#"node = "{name}"
listen = "127.0.0.1:{port}"
state_dir = "state"
version_command = ["cat", "{{state_dir}}/version"]
boot_id_file = "boot_id"
reboot_required_file = "state/reboot-required"
reboot_via = "supervisor-exit"
check_interval = "200ms"

[tls]
ca = "{pki}/ca.pem"
cert = "{pki}/{name}.pem"
key = "{pki}/{name}.key"

[[action]]
name = "upgrade"
kind = "script"
argv = ["/bin/sh", "{script}", "{{version}}", "{{state_dir}}"]
timeout = "2m"
reboot = "if-required"

[[check]]
name = "version-file"
kind = "command"
argv = ["test", "-s", "{{state_dir}}/version"]
"#,
            pki = pki.display(),
            script = script.display()
        );
        write(&dir.join("agent.toml"), &cfg)?;
        nodes.push(Node { name, dir, port });
    }
    Ok(nodes)
}

/// Keeps one agent running: restarts it as a new boot when it exits for a reboot.
async fn supervise(
    exe: PathBuf,
    node: Node,
    stop: Arc<AtomicBool>,
    reboots: Arc<std::sync::atomic::AtomicUsize>,
) {
    loop {
        let mut cmd = Command::new(&exe);
        cmd.arg("agent").arg("--config").arg(node.dir.join("agent.toml"));
        cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::from(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(node.dir.join("agent.log"))
                .expect("agent log"),
        ));
        cmd.kill_on_drop(true);
        // If this process dies, so do its agents.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let Ok(mut child) = cmd.spawn() else { return };
        let status = child.wait().await;
        if stop.load(Ordering::SeqCst) {
            return;
        }
        match status.ok().and_then(|s| s.code()) {
            Some(baton_agent::EXIT_REBOOT) => {
                reboots.fetch_add(1, Ordering::SeqCst);
                // The machine "reboots": a moment down, then a new boot id.
                tokio::time::sleep(Duration::from_millis(700)).await;
                let _ = std::fs::remove_file(node.dir.join("state/reboot-required"));
                let _ = std::fs::write(node.dir.join("boot_id"), new_boot_id());
            }
            other => {
                eprintln!(
                    "{}: agent exited ({other:?}); see {}",
                    node.name,
                    node.dir.join("agent.log").display()
                );
                return;
            }
        }
    }
}

pub async fn run(count: usize) -> Result<(), Failure> {
    if count == 0 || count > 200 {
        return Err(crate::flag_error("--nodes", format!("{count} nodes"), "use 1 to 200"));
    }
    let tmp = std::env::temp_dir().join(format!("baton-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| Failure::Internal(e.to_string()))?;
    let stop = Arc::new(AtomicBool::new(false));
    let result = tokio::select! {
        r = demo(&tmp, count, stop.clone()) => r,
        _ = tokio::signal::ctrl_c() => Err(Failure::Interrupted),
    };
    stop.store(true, Ordering::SeqCst);
    // Dropping the demo future killed the agents (kill_on_drop); remove the files.
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

async fn demo(tmp: &Path, count: usize, stop: Arc<AtomicBool>) -> Result<(), Failure> {
    let t0 = Instant::now();
    let nodes = setup(tmp, count)?;
    let exe = std::env::current_exe().map_err(|e| Failure::Internal(e.to_string()))?;
    let reboots = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut fleet =
        String::from("name = \"demo\"\nversions = [\"1.0\", \"1.1\"]\nfunctional_level = \"1.0\"\n");
    let mut tasks = tokio::task::JoinSet::new();
    for (i, n) in nodes.into_iter().enumerate() {
        let _ = write!(
            fleet,
            "\n[[node]]\nname = \"{}\"\naddress = \"127.0.0.1:{}\"\nupdate_domain = {}\nversion = \"1.0\"\n",
            n.name,
            n.port,
            i % 3
        );
        tasks.spawn(supervise(exe.clone(), n, stop.clone(), reboots.clone()));
    }
    let members: Vec<String> = (1..=count).map(|i| format!("\"node{i}\"")).collect();
    let _ = write!(
        fleet,
        "\n[[service]]\nname = \"web\"\nnodes = [{}]\nmax_unavailable = \"40%\"\n",
        members.join(", ")
    );
    let fleet_path = tmp.join("fleet.toml");
    write(&fleet_path, &fleet)?;

    let token = new_boot_id();
    let settings = baton_server::Settings {
        fleet_file: fleet_path.display().to_string(),
        fleet_text: fleet,
        db: tmp.join("baton.db"),
        tls: baton_pki::TlsFiles::in_dir(&tmp.join("pki"), "orchestrator"),
        token: token.clone(),
    };
    let hub = baton_server::Hub::start(settings).await.map_err(|e| Failure::Internal(e.to_string()))?;
    let listener =
        tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| Failure::Internal(e.to_string()))?;
    let url = format!("http://{}", listener.local_addr().map_err(|e| Failure::Internal(e.to_string()))?);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(baton_server::serve(hub.clone(), listener, async {
        let _ = stop_rx.await;
    }));
    println!(
        "baton demo: {count} agents on loopback (mutual TLS), orchestrator at {url}, files in {}",
        tmp.display()
    );

    let api = ops::Api::new(&url, Some(token));
    let campaign = "name = \"demo-1.1\"\ntarget_version = \"1.1\"\nmax_parallel = 2\nmax_failed_nodes = 0\n\
                    reboot_timeout = \"1m\"\nhealth_wait = \"1s\"\nhealth_stable = \"2s\"\nready_timeout = \"1m\"\nstop_grace = \"10s\"\n";
    let v = api.create("demo-campaign.toml", campaign.to_string()).await.map_err(Failure::Internal)?;
    println!(
        "campaign {} planned: {} waves, web allows {} down at once",
        v.name,
        v.waves,
        hub.fleet().services[0].allowance
    );
    api.act(v.id, "start").await.map_err(Failure::Internal)?;
    let end = ops::follow(&api, v.id, std::io::stdout().is_terminal()).await.map_err(Failure::Internal)?;

    // Ask the agents themselves which version they run.
    let client = baton_server::client::AgentClient::new(&baton_pki::TlsFiles::in_dir(
        &tmp.join("pki"),
        "orchestrator",
    ))
    .map_err(|e| Failure::Internal(e.to_string()))?;
    let mut at_target = 0;
    let mut steps = 0;
    for n in &hub.fleet().nodes {
        let addr = n.address.clone().unwrap_or_default();
        if let Ok(s) = client.status(&addr, None, 0).await {
            if s.version.as_deref() == Some("1.1") {
                at_target += 1;
            }
        }
        steps += client.steps(&addr).await.map(|s| s.len()).unwrap_or(0);
    }
    let _ = stop_tx.send(());
    let _ = server.await;
    stop.store(true, Ordering::SeqCst);
    tasks.abort_all();
    println!(
        "summary: {at_target}/{count} nodes report 1.1; campaign {} in {:.1}s; {steps} steps run, {} reboots, {} journal events",
        end.phase,
        t0.elapsed().as_secs_f64(),
        reboots.load(Ordering::SeqCst),
        end.events
    );
    if at_target != count || end.phase != baton_core::Phase::Completed {
        return Err(Failure::Ended(format!(
            "the demo campaign ended {} with {at_target}/{count} nodes at 1.1",
            end.phase
        )));
    }
    Ok(())
}
