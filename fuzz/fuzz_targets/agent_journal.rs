//! The agent journal's replay, over any bytes (what a crash, a full disk or a damaged disk can
//! leave): the steps it tells of or the damaged line, never a panic; no step is left running.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // As `Journal::open` does: a torn tail (after the last newline) is cut off first.
    let complete = data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if let Ok(r) = baton_agent::journal::replay(std::path::Path::new("journal.jsonl"), &data[..complete]) {
        assert!(r.steps.values().all(|s| s.state != baton_proto::StepState::Running));
    }
});
