//! The agent's own journal: one JSON line per record, synced to disk before the step it
//! describes runs, and again when it ends. After a crash or a reboot the agent reads it back,
//! reports every step's outcome, and never runs a step id it has seen again.

use baton_proto::{StepKind, StepState, StepStatus};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
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

pub struct Journal {
    file: File,
    pub path: PathBuf,
}

/// Steps read back from the journal, and the id of the last one.
pub struct Replayed {
    pub steps: HashMap<String, StepStatus>,
    pub last: Option<String>,
}

impl Journal {
    pub fn open(dir: &Path) -> std::io::Result<(Journal, Replayed)> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("journal.jsonl");
        let mut steps: HashMap<String, StepStatus> = HashMap::new();
        let mut last = None;
        if let Ok(f) = File::open(&path) {
            for line in BufReader::new(f).lines() {
                let line = line?;
                // A torn last line (crash mid-write) is ignored: its step never started.
                let Ok(rec) = serde_json::from_str::<Record>(&line) else { continue };
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
                        }
                    }
                }
            }
        }
        // A step that started and never ended was cut short by a crash or a reboot. It is not
        // run again; it is reported as failed, and the orchestrator decides what comes next.
        for s in steps.values_mut() {
            if s.state == StepState::Running {
                s.state = StepState::Failed;
                s.error = Some(
                    "the agent stopped while this step ran (crash or reboot); it was not run again".into(),
                );
            }
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        Ok((Journal { file, path }, Replayed { steps, last }))
    }

    /// Appends a record and waits until it is on disk.
    pub fn append(&mut self, rec: &Record) -> std::io::Result<()> {
        let mut line = serde_json::to_string(rec).map_err(std::io::Error::other)?;
        line.push('\n');
        self.file.write_all(line.as_bytes())?;
        self.file.sync_data()
    }
}
