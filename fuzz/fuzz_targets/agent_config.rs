//! The agent's config loader (`agent.toml`): a config or a diagnostic, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = baton_agent::config::load("/etc/baton/agent.toml", text);
    }
});
