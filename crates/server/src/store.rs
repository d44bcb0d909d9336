//! The journal store: SQLite in WAL mode with synchronous=FULL, so an appended event is on disk
//! before the commands that follow from it are sent.

use baton_core::campaign::Event;
use baton_core::Millis;
use baton_proto::JournalEntry;
use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;
use std::sync::Mutex;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("journal database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("journal entry is not readable: {0}")]
    Json(#[from] serde_json::Error),
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
}

impl Store {
    pub fn open(path: &Path) -> Result<Store, StoreError> {
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
                PRIMARY KEY (campaign, step));",
        )?;
        Ok(Store { db: Mutex::new(db) })
    }

    pub fn create(&self, name: &str, c: &StoredCampaign, now: Millis) -> Result<i64, StoreError> {
        let db = self.db.lock().expect("db lock");
        db.execute(
            "INSERT INTO campaigns (name, fleet_file, fleet_text, campaign_file, campaign_text, raised, created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![name, c.fleet_file, c.fleet_text, c.campaign_file, c.campaign_text, c.raised, now as i64],
        )?;
        Ok(db.last_insert_rowid())
    }

    /// Appends an event; returns its sequence number. Durable when this returns.
    pub fn append(&self, campaign: i64, at: Millis, event: &Event) -> Result<i64, StoreError> {
        let text = serde_json::to_string(event)?;
        let db = self.db.lock().expect("db lock");
        let seq: i64 = db.query_row(
            "SELECT COALESCE(MAX(seq), 0) + 1 FROM events WHERE campaign = ?1",
            [campaign],
            |r| r.get(0),
        )?;
        db.execute(
            "INSERT INTO events (campaign, seq, at_ms, event) VALUES (?1, ?2, ?3, ?4)",
            params![campaign, seq, at as i64, text],
        )?;
        Ok(seq)
    }

    pub fn events(&self, campaign: i64, after: i64) -> Result<Vec<JournalEntry>, StoreError> {
        let db = self.db.lock().expect("db lock");
        let mut st =
            db.prepare("SELECT seq, at_ms, event FROM events WHERE campaign = ?1 AND seq > ?2 ORDER BY seq")?;
        let rows = st.query_map(params![campaign, after], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, String>(2)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, at, text) = row?;
            out.push(JournalEntry { seq, at_ms: at as u64, event: serde_json::from_str(&text)? });
        }
        Ok(out)
    }

    /// Keeps the end of a step's output for reports.
    pub fn put_output(&self, campaign: i64, step: &str, tail: &str) -> Result<(), StoreError> {
        let db = self.db.lock().expect("db lock");
        db.execute(
            "INSERT OR REPLACE INTO outputs (campaign, step, tail) VALUES (?1, ?2, ?3)",
            params![campaign, step, tail],
        )?;
        Ok(())
    }

    pub fn outputs(&self, campaign: i64) -> Result<std::collections::HashMap<String, String>, StoreError> {
        let db = self.db.lock().expect("db lock");
        let mut st = db.prepare("SELECT step, tail FROM outputs WHERE campaign = ?1")?;
        let rows = st.query_map([campaign], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every stored campaign, oldest first.
    pub fn campaigns(&self) -> Result<Vec<StoredCampaign>, StoreError> {
        let db = self.db.lock().expect("db lock");
        let mut st = db.prepare(&format!("SELECT {COLUMNS} FROM campaigns ORDER BY id"))?;
        let rows = st.query_map([], stored)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn get(&self, id: i64) -> Result<Option<StoredCampaign>, StoreError> {
        let db = self.db.lock().expect("db lock");
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
