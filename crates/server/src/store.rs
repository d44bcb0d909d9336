//! The journal store: SQLite in WAL mode with synchronous=FULL, so an appended event is on disk
//! before the commands that follow from it are sent. Events are stored in the versioned form of
//! `baton_core::journal`. One `baton serve` at a time: the database is locked to the process
//! that opened it (`DB.lock`, an exclusive `flock` the kernel drops when the process dies).

use baton_core::campaign::Event;
use baton_core::journal::{decode, encode, DecodeError};
use baton_core::Millis;
use rusqlite::{params, Connection, OptionalExtension};
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("journal database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("journal entry {seq} of campaign {campaign} is not readable: {err}")]
    Decode { campaign: i64, seq: i64, err: DecodeError },
    #[error("the journal {db} is in use by another baton serve ({holder}); stop it first, or give this one its own --db")]
    Locked { db: String, holder: String },
    #[error("cannot lock the journal with {path}: {err}")]
    Lock { path: String, err: std::io::Error },
    #[error("cannot draw a random campaign id from /dev/urandom: {0}")]
    Random(std::io::Error),
    #[error("schedule journal entry {seq} is not readable: {err}")]
    ScheduleDecode { seq: i64, err: String },
    #[error("the journal's writer stopped: {0}")]
    Task(String),
}

/// A journal entry as stored: its sequence number, time and event.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub seq: i64,
    pub at_ms: Millis,
    pub event: Event,
}

impl Entry {
    /// The entry as the API shows it: the event in its stored, versioned JSON form.
    pub fn to_wire(&self) -> baton_proto::JournalEntry {
        baton_proto::JournalEntry {
            seq: self.seq,
            at_ms: self.at_ms,
            event: baton_core::journal::to_value(&self.event),
        }
    }
}

/// A random 128-bit campaign id in hex. Drawn, not counted: ids must not repeat even when an
/// operator starts over with a new database, since agents keep their step records.
pub fn random_id() -> Result<String, StoreError> {
    let mut b = [0u8; 16];
    File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b)).map_err(StoreError::Random)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// A stored campaign: the fleet and campaign files it was created from, so that it can be
/// rebuilt and its journal replayed after a restart.
#[derive(Debug, Clone)]
pub struct StoredCampaign {
    pub id: i64,
    pub fleet_file: String,
    pub fleet_text: String,
    pub campaign_file: String,
    pub campaign_text: String,
    /// What a commit before this campaign changed in the fleet file: the functional level and
    /// node versions, as JSON (see `Raised`), or empty.
    pub raised: String,
}

pub struct Store {
    db: Mutex<Connection>,
    /// Held for the life of the store: the kernel releases the lock when the process ends.
    _lock: File,
}

/// Takes the database's lock file, or says who holds it.
fn lock(db: &Path) -> Result<File, StoreError> {
    let mut name = db.as_os_str().to_owned();
    name.push(".lock");
    let path = PathBuf::from(name);
    let err = |err| StoreError::Lock { path: path.display().to_string(), err };
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(err)?;
    // SAFETY: flock on a file descriptor this function owns; no memory is shared.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            let mut holder = String::new();
            let _ = f.read_to_string(&mut holder);
            let holder = holder.trim();
            let holder = if holder.is_empty() { "holder unknown".to_string() } else { holder.to_string() };
            return Err(StoreError::Locked { db: db.display().to_string(), holder });
        }
        return Err(err(e));
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let me = format!("pid {} on {}", std::process::id(), host.trim());
    f.set_len(0).and_then(|_| f.rewind()).and_then(|_| f.write_all(me.as_bytes())).map_err(err)?;
    Ok(f)
}

impl Store {
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let lock = lock(path)?;
        let db = Connection::open(path)?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "synchronous", "FULL")?;
        db.busy_timeout(std::time::Duration::from_secs(10))?;
        db.execute_batch(
            "CREATE TABLE IF NOT EXISTS campaigns (
                id INTEGER PRIMARY KEY,
                name TEXT NOT NULL,
                fleet_file TEXT NOT NULL, fleet_text TEXT NOT NULL,
                campaign_file TEXT NOT NULL, campaign_text TEXT NOT NULL,
                raised TEXT NOT NULL DEFAULT '',
                created_ms INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS events (
                campaign INTEGER NOT NULL REFERENCES campaigns(id),
                seq INTEGER NOT NULL,
                at_ms INTEGER NOT NULL,
                event TEXT NOT NULL,
                PRIMARY KEY (campaign, seq));
             CREATE TABLE IF NOT EXISTS outputs (
                campaign INTEGER NOT NULL,
                step TEXT NOT NULL,
                tail TEXT NOT NULL,
                PRIMARY KEY (campaign, step));
             CREATE TABLE IF NOT EXISTS schedule_events (
                seq INTEGER PRIMARY KEY,
                at_ms INTEGER NOT NULL,
                event TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS overdue_warnings (
                seq INTEGER PRIMARY KEY,
                at_ms INTEGER NOT NULL,
                since_ms INTEGER NOT NULL);",
        )?;
        Ok(Store { db: Mutex::new(db), _lock: lock })
    }

    /// The connection. A panic elsewhere while it was held does not make it unusable: every
    /// write is one statement or one transaction, so SQLite's state is whole.
    fn db(&self) -> MutexGuard<'_, Connection> {
        self.db.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores a new campaign and its first journal event (its plan) in one transaction: a
    /// campaign is never stored without the plan it runs.
    pub fn create(
        &self,
        name: &str,
        c: &StoredCampaign,
        now: Millis,
        first: &Event,
        by_schedule: Option<(&str, Millis)>,
    ) -> Result<i64, StoreError> {
        let mut db = self.db();
        let tx = db.transaction()?;
        tx.execute(
            "INSERT INTO campaigns (name, fleet_file, fleet_text, campaign_file, campaign_text, raised, created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![name, c.fleet_file, c.fleet_text, c.campaign_file, c.campaign_text, c.raised, now as i64],
        )?;
        let id = tx.last_insert_rowid();
        tx.execute(
            "INSERT INTO events (campaign, seq, at_ms, event) VALUES (?1, 1, ?2, ?3)",
            params![id, now as i64, encode(first)],
        )?;
        // A schedule's campaign is known as its own from the instant it exists: a crash before
        // it is started leaves nothing the scheduler does not know of.
        if let Some((name, due_ms)) = by_schedule {
            let e = baton_core::schedule::ScheduleEvent::Created { name: name.into(), due_ms, campaign: id };
            tx.execute(
                "INSERT INTO schedule_events (at_ms, event) VALUES (?1, ?2)",
                params![now as i64, baton_core::schedule::encode(&e)],
            )?;
        }
        tx.commit()?;
        Ok(id)
    }

    /// Appends an event; returns its sequence number. Durable when this returns.
    pub fn append(&self, campaign: i64, at: Millis, event: &Event) -> Result<i64, StoreError> {
        self.append_all(campaign, &[(at, event.clone())])
    }

    /// Appends events in order, all or none, with one sync to disk (group commit); returns the
    /// last one's sequence number. Durable when this returns.
    pub fn append_all(&self, campaign: i64, events: &[(Millis, Event)]) -> Result<i64, StoreError> {
        self.append_with_outputs(campaign, events, &[])
    }

    /// As [`Store::append_all`], with step outputs in the same transaction (one sync to disk).
    pub fn append_with_outputs(
        &self,
        campaign: i64,
        events: &[(Millis, Event)],
        outputs: &[(i64, String, String)],
    ) -> Result<i64, StoreError> {
        let mut db = self.db();
        let tx = db.transaction()?;
        put_outputs(&tx, outputs)?;
        let mut seq: i64 =
            tx.query_row("SELECT COALESCE(MAX(seq), 0) FROM events WHERE campaign = ?1", [campaign], |r| {
                r.get(0)
            })?;
        {
            let mut insert = tx
                .prepare_cached("INSERT INTO events (campaign, seq, at_ms, event) VALUES (?1, ?2, ?3, ?4)")?;
            for (at, event) in events {
                seq += 1;
                insert.execute(params![campaign, seq, *at as i64, encode(event)])?;
            }
        }
        tx.commit()?;
        Ok(seq)
    }

    /// The sequence number of the campaign's last journal entry (0 when it has none).
    pub fn last_seq(&self, campaign: i64) -> Result<i64, StoreError> {
        let db = self.db();
        Ok(db.query_row("SELECT COALESCE(MAX(seq), 0) FROM events WHERE campaign = ?1", [campaign], |r| {
            r.get(0)
        })?)
    }

    pub fn events(&self, campaign: i64, after: i64) -> Result<Vec<Entry>, StoreError> {
        self.events_page(campaign, after, i64::MAX)
    }

    /// At most `limit` entries after `after`. Reading a long journal a page at a time holds
    /// neither all of it in memory nor the database from the journal's writer for long.
    pub fn events_page(&self, campaign: i64, after: i64, limit: i64) -> Result<Vec<Entry>, StoreError> {
        let db = self.db();
        let mut st = db.prepare_cached(
            "SELECT seq, at_ms, event FROM events WHERE campaign = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
        )?;
        let rows = st.query_map(params![campaign, after, limit], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, String>(2)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, at, text) = row?;
            let event = decode(&text).map_err(|err| StoreError::Decode { campaign, seq, err })?;
            out.push(Entry { seq, at_ms: at as u64, event });
        }
        Ok(out)
    }

    /// Keeps the ends of steps' outputs (campaign, step, tail), in one transaction.
    pub fn put_outputs(&self, outputs: &[(i64, String, String)]) -> Result<(), StoreError> {
        let mut db = self.db();
        let tx = db.transaction()?;
        put_outputs(&tx, outputs)?;
        tx.commit()?;
        Ok(())
    }

    pub fn outputs(&self, campaign: i64) -> Result<std::collections::HashMap<String, String>, StoreError> {
        let db = self.db();
        let mut st = db.prepare("SELECT step, tail FROM outputs WHERE campaign = ?1")?;
        let rows = st.query_map([campaign], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Appends to the orchestrator's schedule journal; on disk when this returns.
    pub fn append_schedule(
        &self,
        at: Millis,
        e: &baton_core::schedule::ScheduleEvent,
    ) -> Result<i64, StoreError> {
        let db = self.db();
        db.execute(
            "INSERT INTO schedule_events (at_ms, event) VALUES (?1, ?2)",
            params![at as i64, baton_core::schedule::encode(e)],
        )?;
        Ok(db.last_insert_rowid())
    }

    /// The schedule journal, oldest first: each entry's seq, and its time and event or why it
    /// does not read.
    #[allow(clippy::type_complexity)]
    pub fn schedule_events(
        &self,
    ) -> Result<Vec<(i64, Result<(Millis, baton_core::schedule::ScheduleEvent), StoreError>)>, StoreError>
    {
        let db = self.db();
        let mut st = db.prepare("SELECT seq, at_ms, event FROM schedule_events ORDER BY seq")?;
        let rows =
            st.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, String>(2)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, at, text) = row?;
            let e =
                baton_core::schedule::decode(&text).map_err(|err| StoreError::ScheduleDecode { seq, err });
            out.push((seq, e.map(|e| (at as Millis, e))));
        }
        Ok(out)
    }

    /// Records that a `mixed-mode-overdue` warning went out at `at` for the spell of mixed mode
    /// that began at `since`; on disk when this returns.
    pub fn record_overdue_warning(&self, at: Millis, since: Millis) -> Result<(), StoreError> {
        self.db().execute(
            "INSERT INTO overdue_warnings (at_ms, since_ms) VALUES (?1, ?2)",
            params![at as i64, since as i64],
        )?;
        Ok(())
    }

    /// The last warning: the start of its spell of mixed mode, and when it went out.
    pub fn last_overdue_warning(&self) -> Result<Option<(Millis, Millis)>, StoreError> {
        Ok(self
            .db()
            .query_row("SELECT since_ms, at_ms FROM overdue_warnings ORDER BY seq DESC LIMIT 1", [], |r| {
                Ok((r.get::<_, i64>(0)? as Millis, r.get::<_, i64>(1)? as Millis))
            })
            .optional()?)
    }

    /// Every stored campaign, oldest first.
    pub fn campaigns(&self) -> Result<Vec<StoredCampaign>, StoreError> {
        let db = self.db();
        let mut st = db.prepare(&format!("SELECT {COLUMNS} FROM campaigns ORDER BY id"))?;
        let rows = st.query_map([], stored)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The latest `limit` campaigns, newest first.
    pub fn recent(&self, limit: usize) -> Result<Vec<StoredCampaign>, StoreError> {
        let db = self.db();
        let mut st = db.prepare(&format!("SELECT {COLUMNS} FROM campaigns ORDER BY id DESC LIMIT ?1"))?;
        let rows = st.query_map([limit as i64], stored)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn get(&self, id: i64) -> Result<Option<StoredCampaign>, StoreError> {
        let db = self.db();
        Ok(db
            .query_row(&format!("SELECT {COLUMNS} FROM campaigns WHERE id = ?1"), [id], stored)
            .optional()?)
    }
}

const COLUMNS: &str = "id, fleet_file, fleet_text, campaign_file, campaign_text, raised";

fn stored(r: &rusqlite::Row) -> rusqlite::Result<StoredCampaign> {
    Ok(StoredCampaign {
        id: r.get(0)?,
        fleet_file: r.get(1)?,
        fleet_text: r.get(2)?,
        campaign_file: r.get(3)?,
        campaign_text: r.get(4)?,
        raised: r.get(5)?,
    })
}

/// A write for the [`Writer`].
enum Job {
    Events {
        campaign: i64,
        events: Vec<(Millis, Event)>,
        done: tokio::sync::oneshot::Sender<Result<i64, StoreError>>,
    },
    Output {
        campaign: i64,
        step: String,
        tail: String,
    },
}

/// Every write of the orchestrator's drivers goes through one thread: no async runtime thread
/// waits on a sync to disk, and no crowd of blocking threads waits on the database's lock.
/// What arrives together is written together: the events of one campaign's batch in one
/// transaction (the driver waits for it before any command goes out), the step outputs that
/// are waiting in another.
#[derive(Clone)]
pub struct Writer {
    tx: std::sync::mpsc::Sender<Job>,
}

impl Writer {
    /// Starts the writer thread for `store`; it ends when the last `Writer` is dropped.
    pub fn start(store: std::sync::Arc<Store>) -> std::io::Result<Writer> {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new().name("baton-journal".into()).spawn(move || {
            let flush = |outputs: &mut Vec<(i64, String, String)>| {
                if !outputs.is_empty() {
                    if let Err(e) = store.put_outputs(outputs) {
                        tracing::warn!("cannot keep {} steps' output: {e}", outputs.len());
                    }
                    outputs.clear();
                }
            };
            let mut outputs = Vec::new();
            while let Ok(first) = rx.recv() {
                let mut next = Some(first);
                while let Some(w) = next.take() {
                    match w {
                        Job::Events { campaign, events, done } => {
                            // A step's output was sent before its outcome: it is kept with it,
                            // in the same transaction.
                            let r = store.append_with_outputs(campaign, &events, &outputs);
                            if r.is_err() && !outputs.is_empty() {
                                tracing::warn!(
                                    "cannot keep {} steps' output: the journal refused",
                                    outputs.len()
                                );
                            }
                            outputs.clear();
                            let _ = done.send(r);
                        }
                        Job::Output { campaign, step, tail } => outputs.push((campaign, step, tail)),
                    }
                    if outputs.len() >= 1024 {
                        flush(&mut outputs);
                    }
                    next = rx.try_recv().ok();
                }
                flush(&mut outputs);
            }
        })?;
        Ok(Writer { tx })
    }

    /// Appends events to a campaign's journal, all or none; durable when this returns.
    pub async fn append_all(&self, campaign: i64, events: Vec<(Millis, Event)>) -> Result<i64, StoreError> {
        let (done, rx) = tokio::sync::oneshot::channel();
        self.tx
            .send(Job::Events { campaign, events, done })
            .map_err(|_| StoreError::Task("the journal's writer thread has ended".into()))?;
        rx.await.map_err(|_| StoreError::Task("the journal's writer thread has ended".into()))?
    }

    /// Keeps the end of a step's output for reports (written soon, not waited for).
    pub fn put_output(&self, campaign: i64, step: String, tail: String) {
        if self.tx.send(Job::Output { campaign, step, tail }).is_err() {
            tracing::warn!(campaign, "cannot keep a step's output: the journal's writer thread has ended");
        }
    }
}

/// Keeps the ends of steps' outputs for reports, within `tx`.
fn put_outputs(tx: &rusqlite::Transaction, outputs: &[(i64, String, String)]) -> Result<(), StoreError> {
    if outputs.is_empty() {
        return Ok(());
    }
    let mut put =
        tx.prepare_cached("INSERT OR REPLACE INTO outputs (campaign, step, tail) VALUES (?1, ?2, ?3)")?;
    for (campaign, step, tail) in outputs {
        put.execute(params![campaign, step, tail])?;
    }
    Ok(())
}
