//! Producing events to a topic (`simulate --kafka-brokers`): keyed by user, so each
//! user's events stay in order in one partition; idempotent and compressed.

use prost::Message as _;
use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};

use crate::api::pb;
use crate::config::KafkaFormat;
use crate::events::RawEvent;

#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("an event as JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// Deliveries awaited at most at once: bounds memory, keeps the pipe full.
const IN_FLIGHT: usize = 10_000;

/// Sends `events` to `topic` and waits until the broker has each; returns how many.
/// `progress` is told the count every [`IN_FLIGHT`] events.
pub async fn produce(
    brokers: &str,
    topic: &str,
    format: KafkaFormat,
    events: impl Iterator<Item = RawEvent>,
    mut progress: impl FnMut(u64),
) -> Result<u64, ProduceError> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("compression.type", "lz4")
        .set("linger.ms", "5")
        .create()?;
    let mut pending = Vec::with_capacity(IN_FLIGHT);
    let mut sent = 0u64;
    for event in events {
        let key = event.entities.get("user").cloned().unwrap_or_default();
        let payload = match format {
            KafkaFormat::Json => serde_json::to_vec(&event)?,
            KafkaFormat::Protobuf => pb::Event::from(event).encode_to_vec(),
        };
        let record = FutureRecord::to(topic).key(&key).payload(&payload);
        // At most IN_FLIGHT queued, well under librdkafka's queue of 100k: no QueueFull.
        let delivery = producer.send_result(record).map_err(|(error, _)| error)?;
        pending.push(delivery);
        if pending.len() >= IN_FLIGHT {
            sent += drain(&mut pending).await?;
            progress(sent);
        }
    }
    sent += drain(&mut pending).await?;
    Ok(sent)
}

async fn drain(pending: &mut Vec<DeliveryFuture>) -> Result<u64, KafkaError> {
    let mut delivered = 0;
    for delivery in pending.drain(..) {
        match delivery.await {
            Ok(Ok(_)) => delivered += 1,
            Ok(Err((error, _))) => return Err(error),
            Err(_cancelled) => return Err(KafkaError::Canceled),
        }
    }
    Ok(delivered)
}
