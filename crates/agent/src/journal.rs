//! The agent's own journal: one JSON line per record, synced to disk before the step it
//! describes runs, and again when it ends. After a crash or a reboot the agent reads it back,
//! reports every step's outcome, and never runs a step id it has seen again.
//!
//! Two rules keep that promise when a write is cut short (a crash, a full disk):
//! - on open, whatever follows the last newline is a torn record that never completed: the file
//!   is cut back to the end of the last complete record, so the next record starts on a line
//!   of its own instead of being glued to the fragment (and lost on the next replay);
//! - a failed append is undone (the file is cut back to its length before the write) and
//!   reported, so a record is either whole on disk or not there, and the caller knows which.

use baton_proto::{StepKind, StepState, StepStatus};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "lowercase")]
pub enum Record {
    Start {
        id: String,
        kind: StepKind,
        boot_id: String,
        #[serde(default)]
        action: Option<String>,
        #[serde(default)]
        version: Option<String>,
    },
    End {
        id: String,
        state: StepState,
        #[serde(default)]
        reboot: bool,
        #[serde(default)]
        version: Option<String>,
        #[serde(default)]
        error: Option<String>,
        #[serde(default)]
        tail: String,
    },
}

/// How every record begins on disk (the tag is serialized first). Inside a JSON string a quote
/// is escaped, so this text marks the start of a record and nothing else.
const RECORD_START: &[u8] = br#"{"t":"#;

/// Why the journal cannot be opened. The agent does not start without its history: a step it
/// has forgotten it would run again.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "journal {}, line {line}: not a journal record ({reason}). The agent does not guess what \
         a damaged record said: repair the line, or move the file aside to start with an empty \
         history; steps recorded in it could then run again",
        path.display()
    )]
    Corrupt {
        path: PathBuf,
        line: usize,
        #[source]
        reason: serde_json::Error,
    },
}

pub struct Journal {
    out: Appender<File>,
    pub path: PathBuf,
}

/// Steps read back from the journal, and the id of the last one.
pub struct Replayed {
    pub steps: HashMap<String, StepStatus>,
    pub last: Option<String>,
}

impl Journal {
    /// Opens (or creates) `dir/journal.jsonl`, cuts off a torn last record, and replays it.
    pub fn open(dir: &Path) -> Result<(Journal, Replayed), JournalError> {
        let path = dir.join("journal.jsonl");
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |source| JournalError::Io { path: p, source }
        };
        let dir_existed = dir.try_exists().map_err(io(dir))?;
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        if !dir_existed {
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(parent).map_err(io(parent))?;
            }
        }
        let existed = path.try_exists().map_err(io(&path))?;
        // Append mode: every write lands at the end, also after the file was cut back.
        let mut file =
            OpenOptions::new().read(true).append(true).create(true).open(&path).map_err(io(&path))?;
        if !existed {
            // The file's directory entry must survive a crash as well as its records.
            sync_dir(dir).map_err(io(dir))?;
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io(&path))?;

        // Everything after the last newline is a record whose write never completed (its step
        // never started, or its end was never recorded). Cut it off, durably, before anything
        // is appended behind it.
        let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        if complete < bytes.len() {
            tracing::warn!(
                journal = %path.display(),
                bytes = bytes.len() - complete,
                "cutting off a torn last record (a crash or a full disk during a write)"
            );
            file.set_len(complete as u64).map_err(io(&path))?;
            file.sync_all().map_err(io(&path))?;
        }

        let replayed = replay(&path, &bytes[..complete])?;
        let out = Appender { file, undo_to: None };
        Ok((Journal { out, path }, replayed))
    }

    /// Appends a record and waits until it is on disk. On an error nothing of the record is
    /// left in the file (as far as the disk lets the agent undo it), and it is not done.
    pub fn append(&mut self, rec: &Record) -> io::Result<()> {
        let mut line = serde_json::to_vec(rec).map_err(io::Error::other)?;
        line.push(b'\n');
        self.out.append(&line)
    }
}

/// The steps a journal's complete records (`complete`: up to and including its last newline)
/// tell of. A step that started and never ended is reported failed, never run again; a damaged
/// record stops the replay with its line.
pub fn replay(path: &Path, complete: &[u8]) -> Result<Replayed, JournalError> {
    let mut steps: HashMap<String, StepStatus> = HashMap::new();
    let mut last = None;
    for (n, line) in complete.split(|&b| b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue; // no record (and the empty piece after the last newline)
        }
        let (rec, dropped) = parse_line(line).map_err(|reason| JournalError::Corrupt {
            path: path.to_path_buf(),
            line: n + 1,
            reason,
        })?;
        if dropped > 0 {
            tracing::warn!(
                journal = %path.display(),
                line = n + 1,
                dropped,
                "a record glued behind a torn fragment (by an older agent): the record is \
                 kept, the fragment dropped"
            );
        }
        match rec {
            Record::Start { id, kind, boot_id, version, .. } => {
                let e = steps.entry(id.clone()).or_insert_with(|| StepStatus {
                    id: id.clone(),
                    kind,
                    state: StepState::Running,
                    reboot: false,
                    boot_id,
                    version,
                    error: None,
                    output_tail: String::new(),
                    executions: 0,
                });
                e.executions += 1;
                last = Some(id);
            }
            Record::End { id, state, reboot, version, error, tail } => {
                if let Some(s) = steps.get_mut(&id) {
                    s.state = state;
                    s.reboot = reboot;
                    s.version = version.or(s.version.take());
                    s.error = error;
                    s.output_tail = tail;
                } else {
                    tracing::warn!(
                        journal = %path.display(),
                        line = n + 1,
                        step = %id,
                        "the end of a step whose start is not in the journal; ignored"
                    );
                }
            }
        }
    }
    // A step that started and never ended was cut short by a crash or a reboot. It is not
    // run again; it is reported as failed, and the orchestrator decides what comes next.
    for s in steps.values_mut() {
        if s.state == StepState::Running {
            s.state = StepState::Failed;
            s.error =
                Some("the agent stopped while this step ran (crash or reboot); it was not run again".into());
        }
    }
    Ok(Replayed { steps, last })
}

/// Parses one complete line into its record and the number of bytes dropped before it.
///
/// A line that does not parse may be a record that an older agent glued behind a torn fragment
/// (it did not cut the fragment off): the record is the text from the last record start on,
/// and the fragment is dropped (its write never completed). Anything else is an error.
fn parse_line(line: &[u8]) -> Result<(Record, usize), serde_json::Error> {
    let err = match serde_json::from_slice::<Record>(line) {
        Ok(r) => return Ok((r, 0)),
        Err(e) => e,
    };
    let glued = line.windows(RECORD_START.len()).rposition(|w| w == RECORD_START).filter(|&at| at > 0);
    if let Some(at) = glued {
        if let Ok(r) = serde_json::from_slice::<Record>(&line[at..]) {
            return Ok((r, at));
        }
    }
    Err(err)
}

/// Makes a directory's entries (a file just created in it) durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// What appending needs of a file. The journal uses a [`File`]; tests put one behind a writer
/// that fails the way a full or broken disk does.
pub(crate) trait Sink: Write {
    fn len(&self) -> io::Result<u64>;
    fn set_len(&self, len: u64) -> io::Result<()>;
    fn sync(&self) -> io::Result<()>;
}

impl Sink for File {
    fn len(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }
    fn sync(&self) -> io::Result<()> {
        self.sync_data()
    }
}

/// Appends whole records or nothing.
pub(crate) struct Appender<F: Sink> {
    file: F,
    /// Set when undoing a failed append failed too: the length to cut back to before the next
    /// record is written, so it is never glued to what is left of the failed one.
    undo_to: Option<u64>,
}

impl<F: Sink> Appender<F> {
    fn append(&mut self, line: &[u8]) -> io::Result<()> {
        if let Some(len) = self.undo_to {
            self.file.set_len(len)?;
            self.file.sync()?;
            self.undo_to = None;
        }
        let before = self.file.len()?;
        let Err(e) = self.file.write_all(line).and_then(|()| self.file.sync()) else {
            return Ok(());
        };
        // Part of the record (or all of it, unsynced) may be in the file: take it out, so that
        // the record is not done, neither now nor after a restart.
        if let Err(undo) = self.file.set_len(before).and_then(|()| self.file.sync()) {
            self.undo_to = Some(before);
            return Err(io::Error::new(
                e.kind(),
                format!(
                    "{e} (and cutting the partial record off failed: {undo}; retried before the next write)"
                ),
            ));
        }
        Err(e)
    }
}

#[cfg(test)]
#[path = "../tests/common/records.rs"]
mod records;

#[cfg(test)]
mod tests {
    use super::records::{assert_file, end, start};
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    static N: AtomicUsize = AtomicUsize::new(0);

    /// A fresh, empty directory for one test.
    fn fresh_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "baton-agent-journal-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn line(r: &Record) -> Vec<u8> {
        let mut l = serde_json::to_vec(r).unwrap();
        l.push(b'\n');
        l
    }

    fn file(dir: &Path) -> PathBuf {
        dir.join("journal.jsonl")
    }

    /// The records every test starts from: two steps done, the second with multi-byte text.
    fn history() -> Vec<Record> {
        vec![
            start("s1"),
            end("s1", StepState::Ok, "installed"),
            start("s2"),
            end("s2", StepState::Failed, "sortie: é✓ ünïcødé ✓✓"),
        ]
    }

    #[test]
    fn a_record_torn_at_any_byte_is_cut_off_and_the_next_one_is_kept() {
        let whole: Vec<u8> = history().iter().flat_map(line).collect();
        let last = line(history().last().unwrap());
        let before = whole.len() - last.len();
        assert!(std::str::from_utf8(&last).unwrap().contains('✓'));
        // Every cut inside the last record, from its first byte to just before its newline
        // (inside multi-byte characters too).
        for cut in before..whole.len() {
            let dir = fresh_dir("torn");
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(file(&dir), &whole[..cut]).unwrap();

            let (mut j, r) = Journal::open(&dir).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
            assert_file(&file(&dir), &whole[..before], &format!("cut at {cut}"));
            assert_eq!(r.steps["s1"].state, StepState::Ok, "cut at {cut}");
            // s2's end never completed: it is reported failed, not run again.
            let s2 = &r.steps["s2"];
            assert_eq!((s2.state, s2.executions), (StepState::Failed, 1), "cut at {cut}");
            assert!(s2.error.as_deref().unwrap().contains("not run again"), "cut at {cut}");

            j.append(&start("s3")).unwrap();
            j.append(&end("s3", StepState::Ok, "é✓")).unwrap();
            drop(j);
            let (_, r) = Journal::open(&dir).unwrap();
            let s3 = &r.steps["s3"];
            assert_eq!((s3.state, s3.executions, s3.output_tail.as_str()), (StepState::Ok, 1, "é✓"));
            assert_eq!(r.last.as_deref(), Some("s3"));
            assert_eq!(r.steps.len(), 3, "cut at {cut}");
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }

    #[test]
    fn a_new_journal_is_created_and_replays_what_was_appended() {
        let dir = fresh_dir("new").join("state");
        let (mut j, r) = Journal::open(&dir).unwrap();
        assert!(r.steps.is_empty() && r.last.is_none());
        for rec in history() {
            j.append(&rec).unwrap();
        }
        j.append(&start("s3")).unwrap(); // never ended
        drop(j);
        let (_, r) = Journal::open(&dir).unwrap();
        assert_eq!(r.steps["s1"].state, StepState::Ok);
        assert_eq!(r.steps["s2"].output_tail, "sortie: é✓ ünïcødé ✓✓");
        assert_eq!(r.steps["s2"].error.as_deref(), Some("exit 1: é✓"));
        assert_eq!(r.steps["s3"].state, StepState::Failed);
        assert_eq!(r.last.as_deref(), Some("s3"));
        std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
    }

    #[test]
    fn a_record_glued_behind_a_torn_fragment_by_an_older_agent_is_recovered() {
        let dir = fresh_dir("glued");
        std::fs::create_dir_all(&dir).unwrap();
        let mut bytes: Vec<u8> = history().iter().flat_map(line).collect();
        // The old bug: s3's start torn mid-character, then s4's start and end glued behind it.
        let torn = line(&end("s3", StepState::Ok, "é✓"));
        let at = torn.iter().position(|&b| b == 0xc3).unwrap() + 1;
        bytes.extend_from_slice(&torn[..at]);
        bytes.extend(line(&start("s4")));
        bytes.extend(line(&end("s4", StepState::Ok, "done")));
        std::fs::write(file(&dir), &bytes).unwrap();
        let (_, r) = Journal::open(&dir).unwrap();
        let s4 = &r.steps["s4"];
        assert_eq!((s4.state, s4.executions), (StepState::Ok, 1));
        assert_eq!(r.last.as_deref(), Some("s4"));
        assert!(!r.steps.contains_key("s3"));
        // Nothing was cut: every line was complete.
        assert_file(&file(&dir), &bytes, "nothing to cut");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_damaged_line_in_the_middle_refuses_to_open_and_names_it() {
        for garbage in [&b"this is not json"[..], b"{\"t\":\"start\",\"id\":", b"\xff\xfe{\"t\":", b"{}"] {
            let dir = fresh_dir("garbage");
            std::fs::create_dir_all(&dir).unwrap();
            let h = history();
            let mut bytes = line(&h[0]);
            bytes.extend(line(&h[1]));
            bytes.extend_from_slice(garbage);
            bytes.push(b'\n');
            bytes.extend(line(&h[2]));
            std::fs::write(file(&dir), &bytes).unwrap();
            let e = Journal::open(&dir).err().expect("a damaged journal must not open");
            let JournalError::Corrupt { line, .. } = &e else { panic!("{e}") };
            assert_eq!(*line, 3);
            let msg = e.to_string();
            assert!(msg.contains("journal.jsonl, line 3"), "{msg}");
            assert!(msg.contains("move the file aside"), "{msg}");
            // The refusal changed nothing.
            assert_file(&file(&dir), &bytes, "the refusal changed the file");
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }

    #[test]
    fn a_journal_that_cannot_be_read_is_an_io_error_naming_it() {
        let dir = fresh_dir("io");
        std::fs::create_dir_all(file(&dir)).unwrap(); // a directory where the file should be
        let e = Journal::open(&dir).err().expect("must not open");
        assert!(matches!(e, JournalError::Io { .. }), "{e}");
        assert!(e.to_string().contains("journal.jsonl"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A real file behind a disk that fails: it takes `room` more bytes, then says it is full;
    /// or it fails the next sync (once: as Linux reports a writeback error); or it cannot cut
    /// the file back.
    struct Flaky {
        file: File,
        room: usize,
        fail_sync: std::cell::Cell<bool>,
        undo_fails: bool,
    }

    impl Write for Flaky {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            let n = self.file.write(&buf[..buf.len().min(self.room)])?;
            self.room -= n;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Sink for Flaky {
        fn len(&self) -> io::Result<u64> {
            Sink::len(&self.file)
        }
        fn set_len(&self, len: u64) -> io::Result<()> {
            if self.undo_fails {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            Sink::set_len(&self.file, len)
        }
        fn sync(&self) -> io::Result<()> {
            if self.fail_sync.replace(false) {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            self.file.sync_data()
        }
    }

    /// A journal with the history in it, and an appender on its file that fails as told.
    fn flaky(
        name: &str,
        room: usize,
        fail_sync: bool,
        undo_fails: bool,
    ) -> (PathBuf, Appender<Flaky>, Vec<u8>) {
        let dir = fresh_dir(name);
        let (mut j, _) = Journal::open(&dir).unwrap();
        for r in history() {
            j.append(&r).unwrap();
        }
        drop(j);
        let before = std::fs::read(file(&dir)).unwrap();
        let f = OpenOptions::new().append(true).open(file(&dir)).unwrap();
        (
            dir,
            Appender {
                file: Flaky { file: f, room, fail_sync: fail_sync.into(), undo_fails },
                undo_to: None,
            },
            before,
        )
    }

    #[test]
    fn a_failed_append_leaves_the_file_as_it_was() {
        let rec = line(&end("s3", StepState::Ok, "é✓ a long enough output tail"));
        // No room at all, room for part of the record, room for all but its newline, room for
        // all of it but the sync fails.
        for (room, fail_sync) in [(0, false), (10, false), (rec.len() - 1, false), (rec.len(), true)] {
            let (dir, mut a, before) = flaky("fail", room, fail_sync, false);
            let e = a.append(&rec).expect_err("the disk is full");
            assert!(e.raw_os_error().is_some(), "{e}");
            assert_file(&file(&dir), &before, &format!("room {room}, sync fails {fail_sync}"));
            // The disk has room again: the next record is whole, on a line of its own.
            a.file.room = usize::MAX;
            a.append(&line(&start("s4"))).unwrap();
            let (_, r) = Journal::open(&dir).unwrap();
            assert!(!r.steps.contains_key("s3"));
            assert_eq!(r.steps["s4"].executions, 1);
            assert_eq!(r.steps.len(), 3);
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }

    #[test]
    fn a_partial_record_that_could_not_be_cut_off_is_cut_before_the_next_append() {
        let (dir, mut a, before) = flaky("undo", 10, false, true);
        let e = a.append(&line(&start("s3"))).expect_err("the disk is full");
        assert!(e.to_string().contains("cutting the partial record off failed"), "{e}");
        // The fragment is still there...
        assert_eq!(std::fs::read(file(&dir)).unwrap().len(), before.len() + 10);
        // ...and is cut off before the next record is written, not glued to it.
        a.file.room = usize::MAX;
        a.file.undo_fails = false;
        a.append(&line(&start("s4"))).unwrap();
        let mut want = before.clone();
        want.extend(line(&start("s4")));
        assert_file(&file(&dir), &want, "the fragment was not cut off first");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
