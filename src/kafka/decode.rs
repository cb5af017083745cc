//! A record's payload as an event: JSON (the JSON-lines shape `export` writes and
//! `train --events` reads) or protobuf (the API's `Event` message).

use prost::Message as _;

use crate::config::KafkaFormat;
use crate::events::RawEvent;
use crate::wire::pb;

/// Decodes `payload`; the error says why in words fit for a dead-letter header.
pub fn event(payload: Option<&[u8]>, format: KafkaFormat) -> Result<RawEvent, String> {
    let payload = payload.ok_or("the record has no payload")?;
    match format {
        KafkaFormat::Json => {
            serde_json::from_slice(payload).map_err(|e| format!("not an event in JSON: {e}"))
        }
        KafkaFormat::Protobuf => pb::Event::decode(payload)
            .map(RawEvent::from)
            .map_err(|e| format!("not an Event message: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> RawEvent {
        serde_json::from_str(
            r#"{"event_id":"e1","event_type":"payment","event_time_ms":5,
                "entities":{"user":"u1","card":"c1"},"numbers":{"amount":12.5}}"#,
        )
        .expect("sample event")
    }

    #[test]
    fn both_formats_decode_to_the_same_event() {
        let json = serde_json::to_vec(&sample()).expect("json");
        let proto = pb::Event::from(sample()).encode_to_vec();
        assert_eq!(event(Some(&json), KafkaFormat::Json), Ok(sample()));
        assert_eq!(event(Some(&proto), KafkaFormat::Protobuf), Ok(sample()));
    }

    #[test]
    fn bad_payloads_say_why() {
        let json = event(Some(b"{not json"), KafkaFormat::Json).unwrap_err();
        assert!(json.starts_with("not an event in JSON"), "{json}");
        let proto = event(Some(&[0xff, 0xff]), KafkaFormat::Protobuf).unwrap_err();
        assert!(proto.starts_with("not an Event message"), "{proto}");
        assert_eq!(
            event(None, KafkaFormat::Json).unwrap_err(),
            "the record has no payload"
        );
    }
}
