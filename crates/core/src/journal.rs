//! The stored form of a campaign's journal: each event as one JSON object carrying the schema
//! version it was written in (`"v"`). baton reads every version it ever wrote, so a journal
//! replays the same way after baton itself is upgraded; it refuses one written by a newer baton
//! rather than guess.
//!
//! Versions:
//! - 1 (baton before 0.2): no `"v"` key; no `planned` event (the plan was made again on replay
//!   and step ids carried the campaign's name).
//! - 2: `"v": 2`; the first event is `planned`, with the campaign's unique id and its plan.
//! - 3: `"v": 3`; `planned` may carry `start`, the order `continuous` starts nodes in (an
//!   older baton would ignore it and start them in the waves' order, so it must refuse).
//! - 4: `"v": 4`; `planned` may carry `prechecks` and `holds` (an older baton would drain nodes
//!   without prechecking them or holding their auto-updaters), and there are `hook` events and
//!   hold and release steps.

use crate::campaign::Event;
use serde_json::Value;

/// The schema version this baton writes.
pub const SCHEMA: u32 = 4;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("journal entry is not JSON: {0}")]
    Json(String),
    #[error("journal entry is not an object with an \"event\" key")]
    Shape,
    #[error(
        "journal entry has schema version {0}, newer than this baton's {SCHEMA}: upgrade baton to read it"
    )]
    Newer(u64),
    #[error("journal entry (schema version {version}) is not an event baton knows: {message}")]
    Event { version: u64, message: String },
}

/// The stored text of an event, in the current schema.
pub fn encode(event: &Event) -> String {
    // Event is an internally tagged enum of plain data: it always serializes to a non-empty
    // object (it has at least its "event" tag), so the version goes first inside it.
    let text = serde_json::to_string(event).unwrap_or_else(|_| r#"{"event":"tick"}"#.into());
    format!("{{\"v\":{SCHEMA},{}", &text[1..])
}

/// Reads a stored event of any schema version this baton knows.
pub fn decode(text: &str) -> Result<Event, DecodeError> {
    let value: Value = serde_json::from_str(text).map_err(|e| DecodeError::Json(e.to_string()))?;
    decode_value(value)
}

/// As [`decode`], from parsed JSON.
pub fn decode_value(value: Value) -> Result<Event, DecodeError> {
    let Value::Object(mut obj) = value else { return Err(DecodeError::Shape) };
    let version = match obj.remove("v") {
        None => 1,
        Some(v) => v.as_u64().ok_or(DecodeError::Shape)?,
    };
    if version > SCHEMA as u64 {
        return Err(DecodeError::Newer(version));
    }
    if !obj.contains_key("event") {
        return Err(DecodeError::Shape);
    }
    // Versions 1 to 3 have the same shape; 2 only added `planned` and optional fields
    // (`version` on health and boot reports) that default when absent, 3 the optional `start`. A later schema change
    // converts here, oldest first.
    let event: Event = serde_json::from_value(Value::Object(obj))
        .map_err(|e| DecodeError::Event { version, message: e.to_string() })?;
    if version == 1 && matches!(event, Event::Planned { .. }) {
        return Err(DecodeError::Event { version, message: "version 1 had no planned event".into() });
    }
    Ok(event)
}

/// The stored event as JSON, for readers outside baton (the API's journal listing).
pub fn to_value(event: &Event) -> Value {
    serde_json::from_str(&encode(event)).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_current_schema_round_trips_and_names_its_version() {
        let e = Event::Pause { by: "ana".into() };
        let text = encode(&e);
        assert!(text.starts_with(r#"{"v":4,"event":"pause""#), "{text}");
        assert_eq!(decode(&text), Ok(e));
    }

    #[test]
    fn version_one_entries_without_v_still_read() {
        let e = decode(r#"{"event":"step-ok","node":"n1","step":"up/n1/0/drain","reboot":false,"boot_id":null,"version":null}"#)
            .unwrap();
        assert!(matches!(e, Event::StepOk { node, .. } if node == "n1"));
        let e = decode(r#"{"event":"health","node":"n1","healthy":true}"#).unwrap();
        assert!(matches!(e, Event::Health { healthy: true, version: None, .. }));
    }

    #[test]
    fn version_two_and_three_entries_still_read() {
        let e = decode(r#"{"v":2,"event":"pause","by":"ana"}"#).unwrap();
        assert_eq!(e, Event::Pause { by: "ana".into() });
        let e = decode(r#"{"v":3,"event":"pause","by":"ana"}"#).unwrap();
        assert_eq!(e, Event::Pause { by: "ana".into() });
    }

    #[test]
    fn newer_and_broken_entries_are_typed_errors() {
        assert_eq!(decode(r#"{"v":9,"event":"tick"}"#), Err(DecodeError::Newer(9)));
        assert!(matches!(decode("{"), Err(DecodeError::Json(_))));
        assert_eq!(decode("[1]"), Err(DecodeError::Shape));
        assert!(matches!(decode(r#"{"v":2,"event":"launch"}"#), Err(DecodeError::Event { version: 2, .. })));
    }
}
