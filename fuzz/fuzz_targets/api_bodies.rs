//! What the API and the agent take from the network or the journal: a create-campaign body
//! (then its campaign file, against a fixed fleet), a step request, and a stored journal event.
//! Each is parsed or refused, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

const FLEET: &str = include_str!("../../examples/azure-fleet/fleet.toml");

fn fleet() -> &'static baton_core::Fleet {
    static F: OnceLock<baton_core::Fleet> = OnceLock::new();
    F.get_or_init(|| baton_core::load_fleet("fleet.toml", FLEET).expect("the example fleet loads"))
}

fuzz_target!(|data: &[u8]| {
    if let Ok(body) = serde_json::from_slice::<baton_proto::CreateCampaign>(data) {
        let _ =
            baton_core::load_campaign(body.file.as_deref().unwrap_or("campaign.toml"), &body.toml, fleet());
    }
    let _ = serde_json::from_slice::<baton_proto::StepRequest>(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = baton_core::journal::decode(text);
    }
});
