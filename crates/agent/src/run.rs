//! Running a command: argv only (no shell), a timeout, and a bounded tail of its output.

use std::collections::VecDeque;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::process::Command;

#[derive(Debug, Clone)]
pub struct Outcome {
    pub ok: bool,
    /// What went wrong, in words, when not ok.
    pub error: Option<String>,
    /// The last bytes of stdout and stderr together.
    pub tail: String,
}

struct Tail {
    buf: VecDeque<u8>,
    cap: usize,
}

impl Tail {
    fn push(&mut self, b: &[u8]) {
        for &x in b {
            if self.buf.len() == self.cap {
                self.buf.pop_front();
            }
            self.buf.push_back(x);
        }
    }
}

pub async fn run(argv: &[String], timeout_ms: u64, tail_bytes: usize) -> Outcome {
    run_with_env(argv, &[], timeout_ms, tail_bytes).await
}

/// [`run`] keeping only standard output in the tail (for output that is parsed: a line written
/// to stderr meanwhile would split one of its lines); stderr is dropped.
pub async fn run_stdout(argv: &[String], timeout_ms: u64, tail_bytes: usize) -> Outcome {
    run_inner(argv, &[], timeout_ms, tail_bytes, false).await
}

/// [`run`] with extra environment variables.
pub async fn run_with_env(
    argv: &[String],
    env: &[(&str, &str)],
    timeout_ms: u64,
    tail_bytes: usize,
) -> Outcome {
    run_inner(argv, env, timeout_ms, tail_bytes, true).await
}

async fn run_inner(
    argv: &[String],
    env: &[(&str, &str)],
    timeout_ms: u64,
    tail_bytes: usize,
    stderr_too: bool,
) -> Outcome {
    let mut cmd = Command::new(&argv[0]);
    cmd.envs(env.iter().copied());
    cmd.args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(if stderr_too { Stdio::piped() } else { Stdio::null() })
        .env("DEBIAN_FRONTEND", "noninteractive")
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return Outcome {
                ok: false,
                error: Some(format!("cannot start {}: {e}", argv[0])),
                tail: String::new(),
            }
        }
    };
    let tail =
        Arc::new(Mutex::new(Tail { buf: VecDeque::with_capacity(tail_bytes), cap: tail_bytes.max(1) }));
    let mut readers = Vec::new();
    if let Some(out) = child.stdout.take() {
        readers.push(tokio::spawn(pump(out, tail.clone())));
    }
    if let Some(err) = child.stderr.take() {
        readers.push(tokio::spawn(pump(err, tail.clone())));
    }
    let status = tokio::time::timeout(Duration::from_millis(timeout_ms), child.wait()).await;
    let (ok, error) = match status {
        Ok(Ok(s)) if s.success() => (true, None),
        Ok(Ok(s)) => (false, Some(format!("{} exited with {s}", argv[0]))),
        Ok(Err(e)) => (false, Some(format!("waiting for {} failed: {e}", argv[0]))),
        Err(_) => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            (
                false,
                Some(format!(
                    "{} timed out after {} and was killed",
                    argv[0],
                    baton_core::units::format_duration(timeout_ms)
                )),
            )
        }
    };
    for r in readers {
        let _ = tokio::time::timeout(Duration::from_secs(2), r).await;
    }
    let bytes: Vec<u8> = tail.lock().expect("tail lock").buf.iter().copied().collect();
    Outcome { ok, error, tail: String::from_utf8_lossy(&bytes).into_owned() }
}

async fn pump(mut r: impl tokio::io::AsyncRead + Unpin, tail: Arc<Mutex<Tail>>) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = r.read(&mut buf).await {
        if n == 0 {
            break;
        }
        tail.lock().expect("tail lock").push(&buf[..n]);
    }
}
