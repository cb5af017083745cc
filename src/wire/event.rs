//! An event on the wire and in the domain: the protobuf `Event` (gRPC ingest, Kafka's
//! protobuf records) and [`RawEvent`] hold the same fields, moved, not copied.

use super::pb;
use crate::events::RawEvent;

impl From<pb::Event> for RawEvent {
    fn from(event: pb::Event) -> Self {
        RawEvent {
            event_id: event.event_id,
            event_type: event.event_type,
            event_time_ms: event.event_time_ms,
            entities: event.entities,
            numbers: event.numbers,
            strings: event.strings,
        }
    }
}

impl From<RawEvent> for pb::Event {
    fn from(event: RawEvent) -> Self {
        pb::Event {
            event_id: event.event_id,
            event_type: event.event_type,
            event_time_ms: event.event_time_ms,
            entities: event.entities,
            numbers: event.numbers,
            strings: event.strings,
        }
    }
}
