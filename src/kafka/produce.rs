//! Producing events to a topic (`simulate --kafka-brokers`): keyed by user, so each
//! user's events stay in order in one partition; idempotent and compressed.

use prost::Message as _;
use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};

use crate::config::KafkaFormat;
use crate::events::RawEvent;
use crate::wire::pb;

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
        let (key, payload) = keyed(event, format)?;
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

/// An event's record key and payload: keyed by user, so each user's events stay in
/// order in one partition; the payload in `format`.
fn keyed(event: RawEvent, format: KafkaFormat) -> Result<(String, Vec<u8>), ProduceError> {
    let key = event.entities.get("user").cloned().unwrap_or_default();
    let payload = match format {
        KafkaFormat::Json => serde_json::to_vec(&event)?,
        KafkaFormat::Protobuf => pb::Event::from(event).encode_to_vec(),
    };
    Ok((key, payload))
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

/// The events of a scorer's recorded calls, sent to the first of `kafka.topics` one at
/// a time as calls come (idempotent, so a broker retry never writes one twice), each
/// call waiting until the broker has its event.
#[cfg(feature = "cluster")]
pub struct EventRecorder {
    producer: FutureProducer,
    topic: String,
    format: KafkaFormat,
}

/// How long a recorded call waits for the broker before it fails (its answer is kept
/// and a retry sends the event again).
#[cfg(feature = "cluster")]
const RECORD_TIMEOUT_MS: &str = "10000";

#[cfg(feature = "cluster")]
impl EventRecorder {
    /// A recorder for `settings`, or `None` when they name no brokers or no topic.
    pub fn from_settings(
        settings: &crate::config::KafkaSettings,
    ) -> Result<Option<EventRecorder>, KafkaError> {
        let Some(topic) = settings.topics.first() else {
            return Ok(None);
        };
        if settings.brokers.is_empty() {
            return Ok(None);
        }
        let producer: FutureProducer = super::client_config(settings)
            .set("enable.idempotence", "true")
            .set("linger.ms", "1")
            .set("message.timeout.ms", RECORD_TIMEOUT_MS)
            .create()?;
        Ok(Some(EventRecorder {
            producer,
            topic: topic.clone(),
            format: settings.format,
        }))
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }
}

#[cfg(feature = "cluster")]
impl crate::online::EventSink for EventRecorder {
    fn send(
        &self,
        event: RawEvent,
    ) -> futures_util::future::BoxFuture<'static, Result<(), String>> {
        let (key, payload) = match keyed(event, self.format) {
            Ok(keyed) => keyed,
            Err(error) => return Box::pin(async move { Err(error.to_string()) }),
        };
        let record = FutureRecord::to(&self.topic).key(&key).payload(&payload);
        let delivery = self
            .producer
            .send_result(record)
            .map_err(|(error, _)| error);
        Box::pin(async move {
            match delivery {
                Err(error) => Err(error.to_string()),
                Ok(delivery) => match delivery.await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err((error, _))) => Err(error.to_string()),
                    Err(_cancelled) => Err("the producer was shut down".into()),
                },
            }
        })
    }
}
