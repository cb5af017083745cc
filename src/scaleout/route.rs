//! The router: reads the events topics, admits each event once (validation, dedup,
//! lateness, against its own dedup set and watermark) and sends it to the topic of
//! every entity it names, keyed by the entity's id and stamped with the watermark, in
//! one Kafka transaction with the input offsets: an event is routed to all its entity
//! topics or to none, and exactly once. What it refuses goes to the dead-letter topic
//! in the same transaction.

use std::sync::Arc;

use rdkafka::Message;
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use rdkafka::consumer::{Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use super::{
    KAFKA_TIMEOUT, PROGRESS_HEADER, Pipeline, ScaleOutError, TAG_HEADER, WATERMARK_HEADER,
    admission, receive,
};
use crate::events::validate;
use crate::features::{Admission, Engine};
use crate::kafka::dead_letter::{self, Refused};
use crate::kafka::transaction;
use crate::kafka::{client_config, consumer_config, decode, resume};
use crate::online::cut::{self, Lanes};
use crate::time::now_ms;

/// Where each input partition got to: the offset of its newest routed record (`None`:
/// none routed yet). Looked up in the checkpoint topic when a partition is first seen
/// after a rebalance, kept up to date after each transaction.
#[derive(Default)]
struct RouterContext {
    routed: Mutex<HashMap<(String, i32), Option<i64>>>,
}

impl rdkafka::ClientContext for RouterContext {}

impl ConsumerContext for RouterContext {
    fn pre_rebalance(&self, _: &rdkafka::consumer::BaseConsumer<Self>, _: &Rebalance<'_>) {
        // A partition that comes back may have been routed further by someone else.
        self.routed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
    }
}

/// Routes until `shutdown` turns true. An error (a transaction that cannot commit)
/// ends the run; the caller starts it again, with a fresh dedup set.
pub async fn route(
    pipeline: Arc<Pipeline>,
    group: String,
    transactional_id: String,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<(), ScaleOutError> {
    let kafka = &pipeline.kafka;
    let consumer: StreamConsumer<RouterContext> = consumer_config(kafka)
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        // A rebalance moves only the partitions that change owner; the others keep
        // their state (every rebalance used to drop and rebuild all of it).
        .set("partition.assignment.strategy", "cooperative-sticky")
        .create_with_context(RouterContext::default())?;
    let mut topics = pipeline.entity_topics();
    let checkpoints = pipeline.checkpoint_topic();
    topics.push(checkpoints.clone());
    super::check_topics(&consumer, &topics)?;
    let checkpoint_partitions = super::partition_count(&consumer, &checkpoints)?;
    let outputs = Outputs {
        checkpoint_partitions,
        entity_partitions: super::entity_partitions(&consumer, &pipeline)?,
    };
    let inputs: Vec<&str> = kafka.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&inputs)?;
    let producer: FutureProducer = client_config(kafka)
        .set("transactional.id", &transactional_id)
        .set("compression.type", "lz4")
        .set("linger.ms", "5")
        .create()?;
    transaction::blocking(&producer, |p| p.init_transactions(KAFKA_TIMEOUT)).await?;
    tracing::info!(inputs = ?kafka.topics, outputs = ?topics, %transactional_id, "router started");
    // Admission state: the dedup set and the watermark (no entities are applied here).
    let engine = Engine::new(Arc::clone(&pipeline.definitions), pipeline.engine);
    loop {
        let batch = tokio::select! {
            batch = receive(&consumer, kafka.batch_records) => batch,
            _ = shutdown.changed() => return Ok(()),
        };
        if batch.is_empty() {
            continue;
        }
        tracing::debug!(records = batch.len(), "router: batch received");
        let batch = unrouted(&pipeline, &engine, &consumer, checkpoint_partitions, batch).await?;
        if batch.is_empty() {
            continue;
        }
        transact(&pipeline, &engine, &consumer, &producer, &outputs, &batch).await?;
        let mut routed = consumer
            .context()
            .routed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for message in &batch {
            let key = (message.topic().to_string(), message.partition());
            let newest = routed.entry(key).or_insert(None);
            *newest = (*newest).max(Some(message.offset()));
        }
        drop(routed);
        tracing::debug!(records = batch.len(), "router: batch routed");
    }
}

/// How long a router may read an input partition's checkpoints back when it takes the
/// partition over (a day of dedup horizon at a high rate is a long read).
const RESTORE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// The records of `batch` not routed yet. Committing the input offsets in the
/// transaction is enough on a broker that stores transactional offsets; librdkafka's
/// mock broker stores none, so a router taking over a partition would route it again
/// from the start. Each transaction therefore also writes, per input partition, its
/// newest offset to the checkpoint topic (`<prefix>.routed`, partition `p mod n`), and
/// a partition first seen since a rebalance starts after the newest checkpoint there,
/// with the admissions of its checkpoints over the dedup horizon taken into `engine`
/// (see [`super::admission`]).
async fn unrouted(
    pipeline: &Pipeline,
    engine: &Engine,
    consumer: &StreamConsumer<RouterContext>,
    checkpoint_partitions: i32,
    batch: Vec<OwnedMessage>,
) -> Result<Vec<OwnedMessage>, ScaleOutError> {
    let mut unknown: Vec<(String, i32)> = {
        let routed = consumer
            .context()
            .routed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        batch
            .iter()
            .map(|m| (m.topic().to_string(), m.partition()))
            .filter(|key| !routed.contains_key(key))
            .collect()
    };
    unknown.sort_unstable();
    unknown.dedup();
    if !unknown.is_empty() {
        let settings = pipeline.kafka.clone();
        let checkpoints = pipeline.checkpoint_topic();
        let reach_back_ms = pipeline
            .engine
            .dedup_horizon_ms
            .saturating_add(pipeline.engine.allowed_lateness_ms);
        let found = tokio::task::spawn_blocking(move || {
            let reader = resume::reader(&settings)?;
            unknown
                .into_iter()
                .map(|(topic, partition)| {
                    let restored = admission::restore(
                        &reader,
                        &checkpoints,
                        checkpoint_partitions,
                        &topic,
                        partition,
                        reach_back_ms,
                        RESTORE_TIMEOUT,
                    )
                    .map_err(|e| ScaleOutError::Transaction(e.to_string()))?;
                    Ok(((topic, partition), restored))
                })
                .collect::<Result<Vec<_>, ScaleOutError>>()
        })
        .await
        .map_err(|_| ScaleOutError::Panicked)??;
        {
            let mut writer = engine.writer();
            for (_, restored) in &found {
                for (id_hash, time_ms) in &restored.admitted {
                    writer.restore_admission(*id_hash, *time_ms);
                }
            }
        }
        let mut routed = consumer
            .context()
            .routed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (key, restored) in found {
            tracing::info!(
                topic = %key.0,
                partition = key.1,
                newest = ?restored.newest_offset,
                admissions = restored.admitted.len(),
                watermark_ms = engine.watermark_ms(),
                "router: input partition taken over: routed up to, admissions restored"
            );
            routed.insert(key, restored.newest_offset);
        }
    }
    let routed = consumer
        .context()
        .routed
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    Ok(batch
        .into_iter()
        .filter(|m| {
            let newest = routed
                .get(&(m.topic().to_string(), m.partition()))
                .copied()
                .flatten();
            newest.is_none_or(|newest| m.offset() > newest)
        })
        .collect())
}

/// Where a router writes besides the entity records' own partitions.
struct Outputs {
    checkpoint_partitions: i32,
    /// Every entity partition: each gets a progress marker per transaction.
    entity_partitions: Vec<(String, i32)>,
}

/// The tag of the input record `message` of `pipeline`'s input topics (see
/// [`crate::online::cut`]); 0 (untagged: always seen) where the numbers do not fit a
/// tag (more than 63 input topics, 16,384 partitions or 2^44 records).
fn tag_of(pipeline: &Pipeline, message: &OwnedMessage) -> u64 {
    let topic = pipeline
        .kafka
        .topics
        .iter()
        .position(|t| t == message.topic());
    topic
        .and_then(|topic| cut::lane(topic, message.partition()))
        .and_then(|lane| cut::tag(lane, message.offset()))
        .unwrap_or_else(|| {
            tracing::warn!(topic = message.topic(), partition = message.partition(), offset = message.offset(), "router: record routed untagged (its position does not fit a tag): scorers read it at no cut");
            0
        })
}

/// What admitting a batch decided: the records to route, what each input partition's
/// checkpoint names, what goes to the dead-letter topic, and how far each lane is.
struct Admitted<'b> {
    /// (entity topic, entity id, payload, watermark, tag) per record to route.
    routed: Vec<(String, String, &'b [u8], String, String)>,
    /// Per lane, how far this batch routes it: the progress markers'.
    progress: Lanes,
    /// Per input partition, the events admitted (id hash, time): its checkpoint's.
    admissions: BTreeMap<(&'b str, i32), Vec<(u128, i64)>>,
    /// Records refused (not duplicates): to the dead-letter topic, in the transaction.
    refused: Vec<(&'b OwnedMessage, Refused)>,
    admitted: u64,
    unrouted: u64,
}

/// Admits `batch` under the engine's writer (no await while it is held): validation,
/// dedup and lateness, each admitted event to every entity it names.
fn admit_batch<'b>(
    pipeline: &Pipeline,
    engine: &Engine,
    batch: &'b [OwnedMessage],
) -> Admitted<'b> {
    let mut out = Admitted {
        routed: Vec::new(),
        progress: Lanes::default(),
        admissions: BTreeMap::new(),
        refused: Vec::new(),
        admitted: 0,
        unrouted: 0,
    };
    let mut writer = engine.writer();
    let now = now_ms();
    for message in batch {
        let tag = tag_of(pipeline, message);
        out.progress.raise(tag);
        let payload = message.payload();
        let raw = match decode::event(payload, pipeline.kafka.format) {
            Ok(raw) => raw,
            Err(reason) => {
                tracing::debug!(%reason, topic = message.topic(), partition = message.partition(), offset = message.offset(), "router: record undecodable");
                out.unrouted += 1;
                let refused = Refused {
                    field: "payload".into(),
                    reason,
                    kind: "undecodable",
                };
                out.refused.push((message, refused));
                continue;
            }
        };
        let event = match validate(&pipeline.definitions, &pipeline.limits, &raw, Some(now)) {
            Ok(event) => event,
            Err(refusal) => {
                tracing::debug!(field = %refusal.field, reason = %refusal.reason, "router: event refused");
                out.unrouted += 1;
                out.refused.push((message, dead_letter_of(refusal)));
                continue;
            }
        };
        match writer.admit(&event) {
            Admission::Apply => {}
            Admission::Duplicate => {
                out.unrouted += 1;
                continue;
            }
            Admission::Refused(refusal) => {
                out.unrouted += 1;
                out.refused.push((message, dead_letter_of(refusal)));
                continue;
            }
        }
        writer.record_admission(&event);
        out.admissions
            .entry((message.topic(), message.partition()))
            .or_default()
            .push((event.id_hash, event.time_ms));
        out.admitted += 1;
        let watermark = engine.watermark_ms().to_string();
        let tag = tag.to_string();
        for (entity, id) in engine.entities_of(&event) {
            let topic = pipeline.entity_topic(&pipeline.definitions.entities[entity].name);
            let payload = payload.unwrap_or_default();
            out.routed
                .push((topic, id, payload, watermark.clone(), tag.clone()));
        }
    }
    out
}

/// Routes `batch` in one transaction: its records, the progress markers, its dead
/// letters and its checkpoints, with the input offsets. Aborted on any failure.
async fn transact(
    pipeline: &Pipeline,
    engine: &Engine,
    consumer: &StreamConsumer<RouterContext>,
    producer: &FutureProducer,
    outputs: &Outputs,
    batch: &[OwnedMessage],
) -> Result<(), ScaleOutError> {
    producer.begin_transaction().map_err(failed)?;
    let admitted = admit_batch(pipeline, engine, batch);
    pipeline
        .counters
        .unrouted
        .fetch_add(admitted.unrouted, std::sync::atomic::Ordering::Relaxed);
    let sent = send_batch(pipeline, producer, outputs, batch, &admitted).await;
    let committed = match sent {
        Ok(()) => Ok(transaction::commit_consumed(consumer, producer, batch, KAFKA_TIMEOUT).await?),
        Err(error) => Err(error),
    };
    match committed {
        Ok(()) => {
            pipeline
                .counters
                .routed
                .fetch_add(admitted.admitted, std::sync::atomic::Ordering::Relaxed);
            Ok(())
        }
        Err(error) => Err(abort(producer, error).await),
    }
}

fn failed(error: rdkafka::error::KafkaError) -> ScaleOutError {
    ScaleOutError::Transaction(error.to_string())
}

/// Sends everything the batch writes inside its transaction and waits until the broker
/// has it all.
async fn send_batch(
    pipeline: &Pipeline,
    producer: &FutureProducer,
    outputs: &Outputs,
    batch: &[OwnedMessage],
    admitted: &Admitted<'_>,
) -> Result<(), ScaleOutError> {
    let mut deliveries = Vec::with_capacity(admitted.routed.len());
    for (topic, id, payload, watermark, tag) in &admitted.routed {
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: WATERMARK_HEADER,
                value: Some(watermark.as_bytes()),
            })
            .insert(Header {
                key: TAG_HEADER,
                value: Some(tag.as_bytes()),
            });
        let record = FutureRecord::to(topic)
            .key(id)
            .payload(*payload)
            .headers(headers);
        deliveries.push(producer.send_result(record).map_err(|(e, _)| failed(e))?);
    }
    // After every record of the batch in each partition (one producer keeps a
    // partition's order): each entity partition learns how far each lane is routed,
    // those this batch sent nothing to included, so a quiet one never holds the cut.
    if !admitted.progress.is_empty() {
        let marker = admitted.progress.encode();
        for (topic, partition) in &outputs.entity_partitions {
            let headers = OwnedHeaders::new().insert(Header {
                key: PROGRESS_HEADER,
                value: Some(marker.as_bytes()),
            });
            let record = FutureRecord::<(), [u8]>::to(topic)
                .partition(*partition)
                .payload(&[])
                .headers(headers);
            deliveries.push(producer.send_result(record).map_err(|(e, _)| failed(e))?);
        }
    }
    // Dead letters in the same transaction: a refused record leaves the input exactly
    // when its dead letter is written.
    let dead_letter_topic = &pipeline.kafka.dead_letter_topic;
    if !admitted.refused.is_empty() && !dead_letter_topic.is_empty() {
        let failures = dead_letter::send_all(producer, dead_letter_topic, &admitted.refused).await;
        if let Some((_, error)) = failures.into_iter().next() {
            return Err(failed(error));
        }
    }
    // The checkpoints last: on a broker that shows unfinished transactions (the mock),
    // a checkpoint seen means the batch's records were all sent.
    let mut newest: BTreeMap<(&str, i32), i64> = BTreeMap::new();
    for message in batch {
        let slot = newest
            .entry((message.topic(), message.partition()))
            .or_insert(0);
        *slot = (*slot).max(message.offset());
    }
    let checkpoints = pipeline.checkpoint_topic();
    for ((topic, partition), offset) in newest {
        let admissions = admitted
            .admissions
            .get(&(topic, partition))
            .map_or(&[][..], Vec::as_slice);
        let checkpoint = admission::Checkpoint::new(topic, partition, offset, admissions);
        let payload = serde_json::to_string(&checkpoint)
            .map_err(|error| ScaleOutError::Transaction(error.to_string()))?;
        let record = FutureRecord::<str, str>::to(&checkpoints)
            .partition(resume::output_partition(
                partition,
                outputs.checkpoint_partitions,
            ))
            .payload(&payload);
        deliveries.push(producer.send_result(record).map_err(|(e, _)| failed(e))?);
    }
    for delivery in deliveries {
        match delivery.await {
            Ok(Ok(_)) => {}
            Ok(Err((error, _))) => return Err(failed(error)),
            Err(_cancelled) => {
                return Err(ScaleOutError::Transaction(
                    "a delivery was cancelled".into(),
                ));
            }
        }
    }
    Ok(())
}

/// A refused event's dead letter: the field and reason of the refusal, and its kind.
fn dead_letter_of(refusal: crate::events::Refusal) -> Refused {
    Refused {
        field: refusal.field,
        reason: refusal.reason,
        kind: match refusal.kind {
            crate::events::RefusalKind::Invalid => "invalid",
            crate::events::RefusalKind::Late => "late",
        },
    }
}

/// Aborts the open transaction and passes `error` on.
async fn abort(producer: &FutureProducer, error: ScaleOutError) -> ScaleOutError {
    if let Err(abort) = transaction::abort(producer, KAFKA_TIMEOUT).await {
        tracing::warn!(%abort, "router: abort failed");
    }
    error
}
