//! Kafka as an event source (cargo feature `kafka`): a consumer group over
//! `kafka.topics`, whose records (one event each, the JSON-lines shape `export` writes)
//! go through the same validation, dedup, lateness and engine path as `IngestBatch`.
//!
//! Offsets follow durability: a batch's offsets are committed only after its events
//! are durable in the local log and its refused records are on the dead-letter topic.
//! A crash between the two redelivers the batch, and the engine's dedup (by event id,
//! within `ingest.dedup_horizon`) turns the redelivery into duplicates: every record is
//! applied once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use crate::config::KafkaSettings;
use crate::events::{RawEvent, RefusalKind};
use crate::store::{FeatureStore, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("kafka source: {0}")]
    Store(#[from] StoreError),
    #[error("kafka source: cannot write to the dead-letter topic: {0}")]
    DeadLetter(KafkaError),
}

/// How long a batch waits for more records after its first.
const BATCH_WAIT: Duration = Duration::from_millis(5);

/// Counts of what the source did, for metrics and tests.
#[derive(Debug, Default)]
pub struct SourceCounters {
    pub records: std::sync::atomic::AtomicU64,
    pub applied: std::sync::atomic::AtomicU64,
    pub duplicates: std::sync::atomic::AtomicU64,
    pub dead_lettered: std::sync::atomic::AtomicU64,
}

/// Why a record was not applied, as dead-letter headers.
struct Refused<'a> {
    field: &'a str,
    reason: &'a str,
    kind: &'a str,
}

fn consumer(settings: &KafkaSettings) -> Result<StreamConsumer, KafkaError> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &settings.brokers)
        .set("group.id", &settings.group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .create()?;
    let topics: Vec<&str> = settings.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    Ok(consumer)
}

fn producer(settings: &KafkaSettings) -> Result<FutureProducer, KafkaError> {
    ClientConfig::new()
        .set("bootstrap.servers", &settings.brokers)
        .set("enable.idempotence", "true")
        .create()
}

/// Decodes one record's payload as an event.
fn decode(message: &OwnedMessage) -> Result<RawEvent, String> {
    let payload = message.payload().ok_or("the record has no payload")?;
    serde_json::from_slice(payload).map_err(|e| format!("not an event in JSON: {e}"))
}

/// Consumes until `shutdown` turns true. Errors from the broker are retried by
/// librdkafka; an error of the store (the log cannot write) stops the source, with the
/// batch's offsets uncommitted.
pub async fn run(
    store: Arc<FeatureStore>,
    settings: KafkaSettings,
    counters: Arc<SourceCounters>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<(), SourceError> {
    use std::sync::atomic::Ordering::Relaxed;
    let consumer = consumer(&settings)?;
    let dead_letters = producer(&settings)?;
    tracing::info!(brokers = %settings.brokers, group = %settings.group, topics = ?settings.topics, "kafka source started");
    loop {
        let first = tokio::select! {
            received = consumer.recv() => match received {
                Ok(message) => message.detach(),
                Err(error) => {
                    tracing::warn!(%error, "kafka receive failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let received_first = std::time::Instant::now();
        let mut batch = vec![first];
        while batch.len() < settings.batch_records {
            match tokio::time::timeout(BATCH_WAIT, consumer.recv()).await {
                Ok(Ok(message)) => batch.push(message.detach()),
                _ => break,
            }
        }
        counters.records.fetch_add(batch.len() as u64, Relaxed);
        let collected = received_first.elapsed();
        let started = std::time::Instant::now();
        let mut events = Vec::with_capacity(batch.len());
        let mut origin = Vec::with_capacity(batch.len());
        let mut refused: Vec<(usize, String, String, &'static str)> = Vec::new();
        for (at, message) in batch.iter().enumerate() {
            match decode(message) {
                Ok(event) => {
                    events.push(event);
                    origin.push(at);
                }
                Err(reason) => refused.push((at, "payload".into(), reason, "undecodable")),
            }
        }
        let outcome = store.ingest(&events).await?;
        counters
            .applied
            .fetch_add(u64::from(outcome.accepted), Relaxed);
        counters
            .duplicates
            .fetch_add(u64::from(outcome.duplicates), Relaxed);
        for (index, refusal) in outcome.refused {
            let kind = match refusal.kind {
                RefusalKind::Invalid => "invalid",
                RefusalKind::Late => "late",
            };
            refused.push((origin[index], refusal.field, refusal.reason, kind));
        }
        // Sent together, then all awaited: the batch's offsets wait for every one.
        let sent: Vec<_> = refused
            .iter()
            .map(|(at, field, reason, kind)| {
                dead_letter(
                    &dead_letters,
                    &settings.dead_letter_topic,
                    &batch[*at],
                    Refused {
                        field,
                        reason,
                        kind,
                    },
                )
            })
            .collect();
        for delivery in sent {
            delivery.await?;
        }
        counters
            .dead_lettered
            .fetch_add(refused.len() as u64, Relaxed);
        commit(&consumer, &batch)?;
        if std::env::var("KAFKA_DEBUG").is_ok() && !refused.is_empty() {
            eprintln!(
                "refused: {:?}",
                refused
                    .iter()
                    .take(3)
                    .map(|r| (&r.1, &r.2))
                    .collect::<Vec<_>>()
            );
        }
        if std::env::var("KAFKA_DEBUG").is_ok() {
            eprintln!(
                "batch {} records, collected in {collected:?}, applied in {:?}",
                batch.len(),
                started.elapsed()
            );
        }
    }
    Ok(())
}

/// Commits, per partition, the offset after the batch's last record of it.
fn commit(consumer: &StreamConsumer, batch: &[OwnedMessage]) -> Result<(), KafkaError> {
    let mut next: BTreeMap<(String, i32), i64> = BTreeMap::new();
    for message in batch {
        let slot = next
            .entry((message.topic().to_string(), message.partition()))
            .or_insert(0);
        *slot = (*slot).max(message.offset() + 1);
    }
    let mut offsets = TopicPartitionList::new();
    for ((topic, partition), offset) in next {
        offsets.add_partition_offset(&topic, partition, Offset::Offset(offset))?;
    }
    consumer.commit(&offsets, CommitMode::Async)
}

/// Writes `message` to the dead-letter topic with why it was refused, and waits until
/// the broker has it (its offset is committed after this).
async fn dead_letter(
    producer: &FutureProducer,
    topic: &str,
    message: &OwnedMessage,
    refused: Refused<'_>,
) -> Result<(), SourceError> {
    let partition = message.partition().to_string();
    let offset = message.offset().to_string();
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "streamscore.source",
            value: Some(message.topic()),
        })
        .insert(Header {
            key: "streamscore.partition",
            value: Some(&partition),
        })
        .insert(Header {
            key: "streamscore.offset",
            value: Some(&offset),
        })
        .insert(Header {
            key: "streamscore.field",
            value: Some(refused.field),
        })
        .insert(Header {
            key: "streamscore.reason",
            value: Some(refused.reason),
        })
        .insert(Header {
            key: "streamscore.kind",
            value: Some(refused.kind),
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
