//! Journal records and a byte-exact file check, shared by the journal's unit tests
//! (`src/journal.rs`, by path) and the full-disk tests (`tests/journal_disk.rs`). It uses the
//! names its parent module has in scope: `Record`, `StepKind`, `StepState`.
#![allow(dead_code)]

use super::*;

/// Checks that a file holds exactly `want`; on a difference it says where, not every byte.
pub fn assert_file(path: &std::path::Path, want: &[u8], what: &str) {
    let got = std::fs::read(path).unwrap();
    if got != want {
        let at = got.iter().zip(want).take_while(|(a, b)| a == b).count();
        panic!(
            "{what}: {} is {} bytes, expected {}; they differ from byte {at}: {:?}",
            path.display(),
            got.len(),
            want.len(),
            String::from_utf8_lossy(&got[at..got.len().min(at + 80)])
        );
    }
}

/// The start of an update step to 1.1.
pub fn start(id: &str) -> Record {
    Record::Start {
        id: id.into(),
        kind: StepKind::Action,
        boot_id: "b1".into(),
        action: Some("upgrade".into()),
        version: Some("1.1".into()),
    }
}

/// Its end, with an error when it failed.
pub fn end(id: &str, state: StepState, tail: &str) -> Record {
    Record::End {
        id: id.into(),
        state,
        reboot: false,
        version: Some("1.1".into()),
        error: (state == StepState::Failed).then(|| "exit 1: é✓".into()),
        tail: tail.into(),
    }
}
