//! The dead-letter topic: a record that cannot be applied (undecodable, invalid or
//! late) is written there unchanged, with where it came from and why in headers, so
//! nothing is dropped silently and an operator can fix and replay it.

use std::time::Duration;

use rdkafka::Message;
use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};

use super::SourceError;

/// Why a record was refused: the field and reason of the validation that refused it,
/// and its kind (`undecodable`, `invalid`, `late`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub field: String,
    pub reason: String,
    pub kind: &'static str,
}

/// Header names, also read by tests and operators' tools.
pub const SOURCE_TOPIC: &str = "streamscore.source";
pub const PARTITION: &str = "streamscore.partition";
pub const OFFSET: &str = "streamscore.offset";
pub const FIELD: &str = "streamscore.field";
pub const REASON: &str = "streamscore.reason";
pub const KIND: &str = "streamscore.kind";

/// Writes every refused record to `topic` and waits until the broker has them all
/// (their offsets are committed only after this returns).
pub async fn send_all(
    producer: &FutureProducer,
    topic: &str,
    refused: &[(&OwnedMessage, Refused)],
) -> Result<(), SourceError> {
    // Sent together, then awaited: one round trip for the batch, not one per record.
    let deliveries: Vec<_> = refused
        .iter()
        .map(|(message, why)| send(producer, topic, message, why))
        .collect();
    for delivery in deliveries {
        delivery.await?;
    }
    Ok(())
}

async fn send(
    producer: &FutureProducer,
    topic: &str,
    message: &OwnedMessage,
    why: &Refused,
) -> Result<(), SourceError> {
    let partition = message.partition().to_string();
    let offset = message.offset().to_string();
    let headers = [
        (SOURCE_TOPIC, message.topic()),
        (PARTITION, &partition),
        (OFFSET, &offset),
        (FIELD, &why.field),
        (REASON, &why.reason),
        (KIND, why.kind),
    ]
    .into_iter()
    .fold(OwnedHeaders::new(), |headers, (key, value)| {
        headers.insert(Header {
            key,
            value: Some(value),
        })
    });
    let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).headers(headers);
    if let Some(key) = message.key() {
        record = record.key(key);
    }
    if let Some(payload) = message.payload() {
        record = record.payload(payload);
    }
    producer
        .send(record, Duration::from_secs(30))
        .await
        .map(|_| ())
        .map_err(|(error, _)| SourceError::DeadLetter(error))
}
