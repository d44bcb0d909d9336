//! The campaign loader against a fixed fleet, and the planner behind `Campaign::new` for every
//! campaign file that loads: a campaign, an infeasibility or a diagnostic, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};

const FLEET: &str = include_str!("../../examples/azure-fleet/fleet.toml");

fn fleet() -> &'static Arc<baton_core::Fleet> {
    static F: OnceLock<Arc<baton_core::Fleet>> = OnceLock::new();
    F.get_or_init(|| Arc::new(baton_core::load_fleet("fleet.toml", FLEET).expect("the example fleet loads")))
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(spec) = baton_core::load_campaign("campaign.toml", text, fleet()) {
            let _ = baton_core::Campaign::new("fuzz", fleet().clone(), spec);
        }
    }
});
