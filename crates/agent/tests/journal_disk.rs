//! The agent's journal on a real full disk (a small tmpfs), and real agent processes whose
//! journal is torn by a crash or whose disk fills during a step: a step id never runs twice,
//! and an outcome the disk did not take is never reported done.
//!
//! The tmpfs tests need root to mount; without it they say so and pass (CI runs them as root).
//! The agent processes are this test binary started again as an agent (see [`agent_process`]),
//! serving mutual TLS on loopback like `baton agent`.

use baton_agent::journal::{Journal, Record};
use baton_proto::{ApiError, StepKind, StepRequest, StepState, StepStatus};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[path = "common/records.rs"]
mod records;
use records::{assert_file, end, start};

static N: AtomicUsize = AtomicUsize::new(0);

/// The environment variable that makes this binary an agent (the path of its agent.toml).
const AGENT_ENV: &str = "BATON_TEST_AGENT_CONFIG";

fn fresh_dir(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("journal_disk").join(format!(
        "{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Whether this test can mount a tmpfs; if not, it says so (a skipped test must not look like
/// a passed one in the output).
fn root_or_skip(test: &str) -> bool {
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    println!("SKIPPED {test}: it mounts a tmpfs to fill a real disk, which needs root (CI runs it as root)");
    false
}

/// A small tmpfs mounted on a fresh directory. Unmounted when dropped, also when the test
/// panics, so that no mount outlives a test run.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(name: &str, size: &str) -> Tmpfs {
        let dir = fresh_dir(name);
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .expect("run mount");
        assert!(ok.success(), "mount -t tmpfs on {} failed", dir.display());
        Tmpfs { dir }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount").arg(&self.dir).status().is_ok_and(|s| s.success());
        if !ok {
            // Busy (a process still holds a file): detach it now, it goes when they close.
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Fills the file system holding `dir` until it says it is full; returns the filler file.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = File::create(&path).unwrap();
    let chunk = [b'f'; 4096];
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    path
}

fn line_len(r: &Record) -> usize {
    serde_json::to_vec(r).unwrap().len() + 1
}

/// Reopens the journal in `state` and checks that it holds exactly `records`, each once, each
/// on a line of its own.
fn assert_holds(state: &Path, records: &[Record]) -> baton_agent::journal::Replayed {
    let text = std::fs::read_to_string(state.join("journal.jsonl")).unwrap();
    assert!(text.ends_with('\n'), "the journal does not end with a whole record");
    let want: Vec<String> = records.iter().map(|r| serde_json::to_string(r).unwrap()).collect();
    assert_eq!(text.lines().collect::<Vec<_>>(), want);
    let (_, r) = Journal::open(state).unwrap();
    r
}

#[test]
fn a_record_that_does_not_fit_on_a_full_disk_leaves_the_journal_as_it_was() {
    if !root_or_skip("a_record_that_does_not_fit_on_a_full_disk_leaves_the_journal_as_it_was") {
        return;
    }
    let fs = Tmpfs::mount("no-room", "256k");
    let state = fs.dir.join("state");
    let journal = state.join("journal.jsonl");
    let (mut j, _) = Journal::open(&state).unwrap();
    let mut done = vec![start("s1"), end("s1", StepState::Ok, "installed é✓"), start("s2")];
    for r in &done {
        j.append(r).unwrap();
    }
    let before = std::fs::read(&journal).unwrap();
    let filler = fill(&fs.dir);

    // s2's end with more output than a page: there is no room for it anywhere.
    let big = end("s2", StepState::Ok, &"é✓ sortie ".repeat(1000));
    assert!(line_len(&big) > 4096);
    let e = j.append(&big).expect_err("the disk is full");
    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
    assert_file(&journal, &before, "a failed append left bytes behind");

    // Room again: the same record goes in whole, on a line of its own.
    std::fs::remove_file(&filler).unwrap();
    j.append(&big).unwrap();
    done.push(big);
    drop(j);
    let r = assert_holds(&state, &done);
    for id in ["s1", "s2"] {
        let s = &r.steps[id];
        assert_eq!((s.state, s.executions), (StepState::Ok, 1), "{id}");
    }
    assert_eq!(r.steps["s2"].output_tail, "é✓ sortie ".repeat(1000));
}

#[test]
fn a_record_that_partly_fits_on_a_full_disk_is_not_left_half_written() {
    if !root_or_skip("a_record_that_partly_fits_on_a_full_disk_is_not_left_half_written") {
        return;
    }
    let fs = Tmpfs::mount("part-room", "256k");
    let state = fs.dir.join("state");
    let journal = state.join("journal.jsonl");
    let (mut j, _) = Journal::open(&state).unwrap();
    let mut done = vec![start("s1"), end("s1", StepState::Ok, "installed é✓")];
    for r in &done {
        j.append(r).unwrap();
    }
    let len = std::fs::metadata(&journal).unwrap().len() as usize;
    // tmpfs gives out whole pages: a full disk still takes what fits in the journal's one page.
    assert!(len > 0 && len < 2048, "the journal should fill part of one page: {len}");
    let room = 4096 - len;
    let filler = fill(&fs.dir);
    let before = std::fs::read(&journal).unwrap();

    // Show that this disk really takes part of a write: one write() of more than fits.
    let mut raw = std::fs::OpenOptions::new().append(true).open(&journal).unwrap();
    match raw.write(&vec![b'x'; room + 100]) {
        Ok(n) => println!("a write of {} bytes on the full disk wrote {n}", room + 100),
        Err(e) => println!("a write of {} bytes on the full disk failed: {e}", room + 100),
    }
    raw.set_len(len as u64).unwrap();
    drop(raw);

    // A record 100 bytes larger than the room: its first part goes in, then the disk is full.
    let pad = (room + 100).saturating_sub(line_len(&start("s2")));
    let big = start(&format!("s2-{}", "p".repeat(pad)));
    let e = j.append(&big).expect_err("the disk is full");
    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
    assert_file(&journal, &before, "a failed append left part of its record");

    // A record that fits the room goes in, whole, although the disk is still full.
    let small = start("s3");
    assert!(line_len(&small) < room);
    j.append(&small).unwrap();
    done.push(small);

    std::fs::remove_file(&filler).unwrap();
    j.append(&big).unwrap();
    done.push(big);
    drop(j);
    let r = assert_holds(&state, &done);
    assert_eq!(r.steps.len(), 3);
    assert!(r.steps.values().all(|s| s.executions == 1));
}

// ---- Real agent processes ----

/// Not a test of its own: the agent processes the tests below start are this binary run again
/// with [`AGENT_ENV`] set to their agent.toml. Run without it, it does nothing.
#[test]
fn agent_process() {
    let Ok(file) = std::env::var(AGENT_ENV) else { return };
    let text = std::fs::read_to_string(&file).unwrap();
    let cfg = baton_agent::config::load(&file, &text).unwrap_or_else(|d| panic!("{d}"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    // As `baton agent` does: an error that stops the agent is printed, and it exits with 1.
    let code = rt.block_on(baton_agent::serve(cfg)).unwrap_or_else(|e| {
        eprintln!("agent stopped: {e}");
        1
    });
    std::process::exit(code);
}

/// One node: its certificates, agent.toml and the agent process (killed when dropped).
struct Node {
    dir: PathBuf,
    state: PathBuf,
    config: PathBuf,
    /// Every run of the node's action adds a line here (outside the state dir, which may be
    /// full).
    runs: PathBuf,
    addr: String,
    http: reqwest::Client,
    child: Option<Child>,
}

impl Node {
    /// `script` is the `upgrade` action, run by sh with $0 = the state dir, $1 = the runs file.
    fn new(dir: PathBuf, state: PathBuf, script: &str, reboot: &str) -> Node {
        let pki = dir.join("pki");
        baton_pki::init_ca(&pki, "test").unwrap();
        // This test talks to the agent by its address, so its certificate names that too.
        baton_pki::issue(&pki, "node1", baton_pki::Role::Agent, &["127.0.0.1".into()]).unwrap();
        baton_pki::issue(&pki, "orchestrator", baton_pki::Role::Orchestrator, &[]).unwrap();
        std::fs::write(dir.join("boot_id"), "boot-1\n").unwrap();
        let runs = dir.join("runs");
        let port = baton_agent::local::free_port().unwrap();
        let tls = baton_pki::TlsFiles::in_dir(&pki, "node1");
        let config = dir.join("agent.toml");
        let text = format!(
            r#"node = "node1"
listen = "127.0.0.1:{port}"
state_dir = "{state}"
boot_id_file = "boot_id"
reboot_required_file = "reboot-required"
reboot_via = "supervisor-exit"
check_interval = "1s"

[tls]
ca = "{ca}"
cert = "{cert}"
key = "{key}"

[[action]]
name = "upgrade"
argv = ["/bin/sh", "-c", '{script}', "{{state_dir}}", "{runs}"]
timeout = "1m"
reboot = "{reboot}"
"#,
            state = state.display(),
            ca = tls.ca.display(),
            cert = tls.cert.display(),
            key = tls.key.display(),
            runs = runs.display(),
        );
        std::fs::write(&config, text).unwrap();
        baton_pki::install_default_provider();
        let client_tls = baton_pki::TlsFiles::in_dir(&pki, "orchestrator").client_config().unwrap();
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(client_tls)
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        Node { dir, state, config, runs, addr: format!("127.0.0.1:{port}"), http, child: None }
    }

    /// Starts the agent and waits until it answers; fails the test if it exits instead.
    async fn start(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log()).unwrap();
        let child = Command::new(std::env::current_exe().unwrap())
            .args(["agent_process", "--exact", "--nocapture", "--test-threads=1"])
            .env(AGENT_ENV, &self.config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                let log = std::fs::read_to_string(self.log()).unwrap_or_default();
                panic!("the agent did not start, it exited with {status}:\n{log}");
            }
            if self.http.get(self.url("/v1/status")).send().await.is_ok_and(|r| r.status().is_success()) {
                return;
            }
            assert!(Instant::now() < deadline, "the agent did not come up; see {}", self.log().display());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A crash: SIGKILL, no chance to finish anything.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn alive(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    fn log(&self) -> PathBuf {
        self.dir.join("agent.log")
    }

    fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }

    fn journal(&self) -> PathBuf {
        self.state.join("journal.jsonl")
    }

    /// How many times the action ran.
    fn runs(&self) -> usize {
        std::fs::read_to_string(&self.runs).map(|s| s.lines().count()).unwrap_or(0)
    }

    /// Asks for an upgrade step: its HTTP status and body.
    async fn post(&self, id: &str) -> (u16, serde_json::Value) {
        let mut req = StepRequest::new(id.into(), StepKind::Action);
        req.action = Some("upgrade".into());
        req.version = Some("1.1".into());
        let r = self.http.post(self.url("/v1/steps")).json(&req).send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }

    /// The step's status once it is no longer running.
    async fn finished(&self, id: &str) -> StepStatus {
        let r = self
            .http
            .get(self.url("/v1/step"))
            .query(&[("id", id), ("wait_ms", "30000")])
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "step {id}: {}", r.status());
        let s: StepStatus = r.json().await.unwrap();
        assert_ne!(s.state, StepState::Running, "step {id} still runs");
        s
    }

    /// Runs a new step to its end.
    async fn run(&self, id: &str) -> StepStatus {
        let (code, body) = self.post(id).await;
        assert_eq!(code, 202, "step {id} did not start: {body}");
        self.finished(id).await
    }

    /// Asks again for a step the agent knows: it answers with the outcome, runs nothing.
    async fn again(&self, id: &str) -> StepStatus {
        let runs = self.runs();
        let (code, body) = self.post(id).await;
        assert_eq!(code, 200, "step {id} asked again: {body}");
        assert_eq!(self.runs(), runs, "step {id} ran again");
        serde_json::from_value(body).unwrap()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Bug 1, end to end: an agent killed while writing a step's end leaves a torn line (here cut
/// inside a multi-byte character). The agent must start again (not crash-loop), report that
/// step failed without running it again, and record the next step on a line of its own, so
/// that after another crash it answers with that step's outcome instead of running it twice.
#[tokio::test]
async fn a_real_agent_with_a_torn_journal_starts_and_never_runs_a_step_twice() {
    let dir = fresh_dir("agent-torn");
    let state = dir.join("state");
    let mut n = Node::new(dir, state, r#"echo run >> "$1"; printf "é✓ installed\n""#, "never");
    n.start().await;
    assert_eq!(n.run("c1-s1").await.state, StepState::Ok);
    let s2 = n.run("c1-s2").await;
    assert_eq!((s2.state, s2.output_tail.as_str()), (StepState::Ok, "é✓ installed\n"));
    n.kill();

    // The crash came in the middle of writing s2's end: cut it inside the "é" of its output.
    let bytes = std::fs::read(n.journal()).unwrap();
    let last = bytes[..bytes.len() - 1].iter().rposition(|&b| b == b'\n').unwrap() + 1;
    assert!(bytes[last..].starts_with(br#"{"t":"end","id":"c1-s2""#));
    let cut = last + bytes[last..].iter().position(|&b| b == 0xc3).unwrap() + 1;
    File::options().write(true).open(n.journal()).unwrap().set_len(cut as u64).unwrap();

    n.start().await;
    let s2 = n.finished("c1-s2").await;
    assert_eq!((s2.state, s2.executions), (StepState::Failed, 1));
    assert!(s2.error.as_deref().unwrap_or_default().contains("not run again"), "{s2:?}");
    assert_eq!(n.again("c1-s2").await.state, StepState::Failed);
    assert_eq!(n.runs(), 2);
    // The next step: before the fix its start was glued to the torn line and lost.
    assert_eq!(n.run("c1-s3").await.state, StepState::Ok);
    assert_eq!(n.runs(), 3);
    n.kill();

    n.start().await;
    let s3 = n.again("c1-s3").await;
    assert_eq!((s3.state, s3.executions), (StepState::Ok, 1), "{s3:?}");
    assert_eq!(n.again("c1-s1").await.state, StepState::Ok);
    assert_eq!(n.runs(), 3);
    let text = std::fs::read_to_string(n.journal()).unwrap();
    assert_eq!(text.lines().count(), 5, "{text}");
}

/// Bug 2, end to end: the disk fills while an update runs, so its end cannot be recorded. The
/// agent must report the step failed (as it will after a restart, where the step reads as
/// started and never ended) and must not reboot; a new step is refused with 503 while the
/// journal cannot take it; after a restart the step is still failed and is not run again.
#[tokio::test]
async fn a_real_agent_whose_disk_fills_during_a_step_does_not_count_it_done_or_reboot() {
    if !root_or_skip("a_real_agent_whose_disk_fills_during_a_step_does_not_count_it_done_or_reboot") {
        return;
    }
    let dir = fresh_dir("agent-full");
    let fs = Tmpfs::mount("agent-full-state", "256k");
    // The action prints more than a page of output (its tail goes into the end record), then
    // fills the state dir's disk, and succeeds; it asks for a reboot.
    let script = r#"echo run >> "$1"; head -c 6000 /dev/zero | tr "\0" x; cat /dev/zero > "$0/filler" 2>/dev/null; true"#;
    let mut n = Node::new(dir, fs.dir.clone(), script, "always");
    n.start().await;
    let s1 = n.run("c1-s1").await;
    assert_eq!((s1.state, s1.reboot), (StepState::Failed, false), "{s1:?}");
    let err = s1.error.clone().unwrap_or_default();
    assert!(err.contains("cannot record the outcome in the journal"), "{err}");
    assert!(err.contains("os error 28"), "{err}");
    // No reboot: the agent would have exited (for its supervisor) within 300 ms.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(n.alive(), "the agent exited (rebooted) after a step whose end was not recorded");

    // A step whose start does not fit is refused, as a condition of the node, and not run.
    // The journal's last page on the full tmpfs still has room (tmpfs counts whole pages), and
    // step ids are short (at most 256): take that room first with a complete record no step of
    // this test uses (an end without a start is ignored on replay), so the next start needs a
    // page the disk does not have.
    let len = std::fs::metadata(n.journal()).unwrap().len() as usize;
    let skeleton = r#"{"t":"end","id":"pad","state":"ok","tail":""}"#.len() + 1;
    let room = 4096 - len % 4096;
    let padded = room > skeleton + 8;
    if padded {
        let pad = format!(
            "{{\"t\":\"end\",\"id\":\"pad\",\"state\":\"ok\",\"tail\":\"{}\"}}\n",
            "x".repeat(room - 8 - skeleton)
        );
        std::io::Write::write_all(
            &mut File::options().append(true).open(n.journal()).unwrap(),
            pad.as_bytes(),
        )
        .unwrap();
    }
    let (code, body) = n.post("c1-s2").await;
    assert_eq!(code, 503, "{body}");
    let refusal: ApiError = serde_json::from_value(body).unwrap();
    assert_eq!(refusal.code, "journal");
    assert!(refusal.message.contains("os error 28"), "{}", refusal.message);
    assert_eq!(n.runs(), 1);

    std::fs::remove_file(fs.dir.join("filler")).unwrap();
    n.kill();
    n.start().await;
    let s1 = n.again("c1-s1").await;
    assert_eq!((s1.state, s1.executions), (StepState::Failed, 1), "{s1:?}");
    assert_eq!(n.runs(), 1);
    let text = std::fs::read_to_string(n.journal()).unwrap();
    assert_eq!(text.lines().count(), 1 + usize::from(padded), "only s1's start (and the pad): {text}");
    assert!(text.ends_with('\n'));
    n.kill();
}
