//! The consumer loop of the Kafka source: receive, align partitions in event time,
//! apply through the store (validation, dedup, lateness, engine, durable log), write
//! refused records to the dead-letter topic, and only then commit offsets.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::OwnedMessage;
use rdkafka::producer::FutureProducer;
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};

use super::align::{Aligner, Flow};
use super::dead_letter::{self, Refused};
use super::{SourceCounters, SourceError, client_config, lock};
use crate::config::KafkaSettings;
use crate::events::{RawEvent, RefusalKind};
use crate::store::FeatureStore;

/// A partition of a topic.
pub type Partition = (Arc<str>, i32);

/// How long a batch waits for more records after its first.
const BATCH_WAIT: Duration = Duration::from_millis(5);
/// How long the loop waits for a record before looking at idle lanes again.
const RECEIVE_WAIT: Duration = Duration::from_millis(100);
/// How often applied offsets not yet confirmed committed are committed again.
const RECOMMIT_AFTER: Duration = Duration::from_secs(1);
/// A lane with nothing received for this long stops holding back the others.
const IDLE_AFTER: Duration = Duration::from_secs(2);

/// Assignments and revocations seen by librdkafka's rebalance callbacks, applied to
/// the aligner by the loop before the next record.
#[derive(Default)]
struct Changes {
    assigned: Vec<Partition>,
    revoked: Vec<Partition>,
}

struct SourceContext {
    changes: Mutex<Changes>,
    /// Per partition, the offset after its last applied record: what a commit says.
    applied: Mutex<BTreeMap<Partition, i64>>,
    /// Per partition, the offset the broker confirmed as committed.
    confirmed: Mutex<BTreeMap<Partition, i64>>,
    counters: Arc<SourceCounters>,
}

impl SourceContext {
    /// Whether some applied offset is not confirmed committed yet (a commit failed, for
    /// example while the group was rebalancing, or is still in flight).
    fn behind(&self) -> bool {
        let applied = lock(&self.applied);
        let confirmed = lock(&self.confirmed);
        applied
            .iter()
            .any(|(partition, offset)| confirmed.get(partition) < Some(offset))
    }

    /// The applied offsets of `partitions` (all when `None`), as a commit list.
    fn applied_offsets(&self, partitions: Option<&[Partition]>) -> TopicPartitionList {
        let applied = lock(&self.applied);
        let mut list = TopicPartitionList::new();
        for ((topic, partition), offset) in applied.iter() {
            let wanted = partitions.is_none_or(|p| p.contains(&(topic.clone(), *partition)));
            if wanted {
                // Only fails for an offset librdkafka cannot represent; ours are >= 0.
                let _ = list.add_partition_offset(topic, *partition, Offset::Offset(*offset));
            }
        }
        list
    }
}

impl ClientContext for SourceContext {
    fn error(&self, error: KafkaError, reason: &str) {
        self.counters.health.broker_error(&error, reason);
    }

    /// librdkafka's statistics (every [`STATISTICS_INTERVAL_MS`]): the consumer lag.
    fn stats(&self, statistics: Statistics) {
        for (topic, stats) in &statistics.topics {
            for (partition, stats) in &stats.partitions {
                // -1 is librdkafka's "internal" partition; -1 lag: not known yet.
                if *partition >= 0 && stats.consumer_lag >= 0 {
                    self.counters.set_lag(topic, *partition, stats.consumer_lag);
                }
            }
        }
    }
}

/// How often librdkafka reports statistics (the lag metrics' age at most).
const STATISTICS_INTERVAL_MS: &str = "5000";

fn partitions(list: &TopicPartitionList) -> Vec<Partition> {
    list.elements()
        .iter()
        .map(|e| (Arc::from(e.topic()), e.partition()))
        .collect()
}

impl ConsumerContext for SourceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            let revoked = partitions(list);
            tracing::info!(?revoked, "kafka partitions revoked");
            // Committed before they go, synchronously: the next owner starts after the
            // last record we applied, not at an older commit still in flight.
            let offsets = self.applied_offsets(Some(&revoked));
            if offsets.count() > 0
                && let Err(error) = consumer.commit(&offsets, CommitMode::Sync)
            {
                tracing::warn!(%error, "commit of revoked partitions failed; their next owner reads again what we applied since the last commit");
            }
            let (mut applied, mut confirmed) = (lock(&self.applied), lock(&self.confirmed));
            for partition in &revoked {
                applied.remove(partition);
                confirmed.remove(partition);
            }
            lock(&self.changes).revoked.extend(revoked);
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        if let Err(error) = result {
            tracing::debug!(%error, "kafka commit failed; it is made again");
            return;
        }
        let mut confirmed = lock(&self.confirmed);
        for element in offsets.elements() {
            if let (Offset::Offset(offset), Ok(())) = (element.offset(), element.error()) {
                let slot = confirmed
                    .entry((Arc::from(element.topic()), element.partition()))
                    .or_insert(offset);
                *slot = (*slot).max(offset);
            }
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            let assigned = partitions(list);
            tracing::info!(?assigned, "kafka partitions assigned");
            lock(&self.changes).assigned.extend(assigned);
        }
    }
}

type StreamConsumer = rdkafka::consumer::StreamConsumer<SourceContext>;

/// A received record with its decoded event (or why it could not be decoded).
type Received = (OwnedMessage, Result<RawEvent, String>);

/// Consumes until `shutdown` turns true. Broker errors are retried by librdkafka (and
/// turn the source's health NOT_SERVING meanwhile); an error of the store (the log
/// cannot write) or of the dead-letter topic stops the source with the batch's offsets
/// uncommitted, so its records are read again by whoever consumes next.
pub async fn run(
    store: Arc<FeatureStore>,
    settings: KafkaSettings,
    slack_ms: i64,
    counters: Arc<SourceCounters>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<(), SourceError> {
    let context = SourceContext {
        changes: Mutex::new(Changes::default()),
        applied: Mutex::new(BTreeMap::new()),
        confirmed: Mutex::new(BTreeMap::new()),
        counters: Arc::clone(&counters),
    };
    let consumer: StreamConsumer = client_config(&settings)
        .set("group.id", &settings.group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("enable.partition.eof", "true")
        .set("statistics.interval.ms", STATISTICS_INTERVAL_MS)
        .create_with_context(context)?;
    let topics: Vec<&str> = settings.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    let dead_letters: FutureProducer = client_config(&settings)
        .set("enable.idempotence", "true")
        .create()?;
    tracing::info!(brokers = %settings.brokers, group = %settings.group, topics = ?settings.topics, "kafka source started");

    let pause_at = settings.batch_records.saturating_mul(10).max(1_000);
    let mut aligner: Aligner<Partition, Received> = Aligner::new(slack_ms, IDLE_AFTER, pause_at);
    let mut last_report = Instant::now();
    let topics: Vec<Arc<str>> = settings
        .topics
        .iter()
        .map(|t| Arc::from(t.as_str()))
        .collect();
    let mut last_commit_check = Instant::now();
    loop {
        let first = tokio::select! {
            received = tokio::time::timeout(RECEIVE_WAIT, consumer.recv()) => received,
            _ = shutdown.changed() => break,
        };
        let mut next = first;
        let mut taken = 0;
        loop {
            take_changes(&consumer, &mut aligner);
            match next {
                Ok(Ok(message)) => {
                    counters.health.received();
                    let message = message.detach();
                    let event = super::decode::event(message.payload(), settings.format);
                    let time = event.as_ref().ok().map(|e| e.event_time_ms);
                    let key = (interned(&topics, message.topic()), message.partition());
                    aligner.push(key, time, (message, event), Instant::now());
                    taken += 1;
                }
                Ok(Err(KafkaError::PartitionEOF(partition))) => {
                    counters.health.received();
                    // librdkafka names only the partition number: every topic's lane
                    // of that number is treated as caught up until it receives again.
                    for topic in &topics {
                        aligner.reached_end(&(Arc::clone(topic), partition));
                    }
                }
                Ok(Err(error)) => {
                    tracing::warn!(%error, "kafka receive failed; librdkafka retries");
                    break;
                }
                Err(_elapsed) => break,
            }
            if taken >= settings.batch_records {
                break;
            }
            next = tokio::time::timeout(BATCH_WAIT, consumer.recv()).await;
        }
        // Everything that may go now, one durable batch at a time.
        loop {
            let (released, flow) = aligner.release(settings.batch_records, Instant::now());
            apply_flow(&consumer, flow)?;
            if released.is_empty() {
                break;
            }
            apply(
                &store,
                &settings,
                &consumer,
                &dead_letters,
                &counters,
                released,
            )
            .await?;
        }
        counters.set_buffered(aligner.buffered());
        // A commit that failed (the group was rebalancing, the coordinator moved) is
        // made again, or the group's next owner would apply those records a second time.
        if last_commit_check.elapsed() >= RECOMMIT_AFTER {
            last_commit_check = Instant::now();
            if consumer.context().behind() {
                let offsets = consumer.context().applied_offsets(None);
                if let Err(error) = consumer.commit(&offsets, CommitMode::Async) {
                    tracing::warn!(%error, "kafka commit failed; it is made again");
                }
            }
        }
        if last_report.elapsed() >= Duration::from_secs(1) {
            tracing::debug!(lanes = ?aligner.lanes(Instant::now()), "kafka source lanes");
            last_report = Instant::now();
        }
    }
    // A last synchronous commit, so the group's next owner starts exactly after us.
    let offsets = consumer.context().applied_offsets(None);
    if offsets.count() > 0 {
        consumer.commit(&offsets, CommitMode::Sync)?;
    }
    tracing::info!("kafka source stopped");
    Ok(())
}

/// The shared name of `topic` (no allocation per record).
fn interned(topics: &[Arc<str>], topic: &str) -> Arc<str> {
    topics
        .iter()
        .find(|known| ***known == *topic)
        .map_or_else(|| Arc::from(topic), Arc::clone)
}

fn take_changes(consumer: &StreamConsumer, aligner: &mut Aligner<Partition, Received>) {
    let changes = std::mem::take(&mut *lock(&consumer.context().changes));
    for partition in changes.revoked {
        let dropped = aligner.revoke(&partition);
        if dropped > 0 {
            tracing::info!(
                ?partition,
                dropped,
                "buffered records of a revoked partition left for its next owner"
            );
        }
    }
    let now = Instant::now();
    for partition in changes.assigned {
        aligner.assign(partition, now);
    }
}

fn apply_flow(consumer: &StreamConsumer, flow: Flow<Partition>) -> Result<(), KafkaError> {
    let list = |partitions: &[Partition]| {
        let mut list = TopicPartitionList::new();
        for (topic, partition) in partitions {
            list.add_partition(topic, *partition);
        }
        list
    };
    if !flow.pause.is_empty() {
        tracing::debug!(partitions = ?flow.pause, "kafka partitions paused: ahead in event time");
        consumer.pause(&list(&flow.pause))?;
    }
    if !flow.resume.is_empty() {
        consumer.resume(&list(&flow.resume))?;
    }
    Ok(())
}

/// Applies released records, dead-letters the refused ones, then commits.
async fn apply(
    store: &FeatureStore,
    settings: &KafkaSettings,
    consumer: &StreamConsumer,
    dead_letters: &FutureProducer,
    counters: &SourceCounters,
    released: Vec<(Partition, Received)>,
) -> Result<(), SourceError> {
    let records = released.len();
    let next = next_offsets(&released);
    let mut events = Vec::with_capacity(records);
    let mut messages = Vec::with_capacity(records);
    // (index in `messages`, why)
    let mut refused: Vec<(usize, Refused)> = Vec::new();
    let mut origin = Vec::with_capacity(records);
    for (_, (message, event)) in released {
        match event {
            Ok(event) => {
                events.push(event);
                origin.push(messages.len());
            }
            Err(reason) => refused.push((
                messages.len(),
                Refused {
                    field: "payload".into(),
                    reason,
                    kind: "undecodable",
                },
            )),
        }
        messages.push(message);
    }
    // Resolves once the accepted events are durable in the local log.
    let outcome = store.ingest(&events).await?;
    for (index, refusal) in outcome.refused {
        let kind = match refusal.kind {
            RefusalKind::Invalid => "invalid",
            RefusalKind::Late => "late",
        };
        refused.push((
            origin[index],
            Refused {
                field: refusal.field,
                reason: refusal.reason,
                kind,
            },
        ));
    }
    let refused: Vec<(&OwnedMessage, Refused)> = refused
        .into_iter()
        .map(|(at, why)| (&messages[at], why))
        .collect();
    dead_letter::send_all(dead_letters, &settings.dead_letter_topic, &refused).await?;
    counters.count(records, outcome.accepted, outcome.duplicates, &refused);
    commit(consumer, next)?;
    Ok(())
}

/// Per partition, the offset after the last released record of it (released records
/// of a partition are in offset order: the aligner keeps lane order).
fn next_offsets(released: &[(Partition, Received)]) -> BTreeMap<Partition, i64> {
    let mut next: BTreeMap<Partition, i64> = BTreeMap::new();
    for (partition, (message, _)) in released {
        let offset = message.offset() + 1;
        match next.get_mut(partition) {
            Some(slot) => *slot = (*slot).max(offset),
            None => {
                next.insert(partition.clone(), offset);
            }
        }
    }
    next
}

/// Commits `next` (per partition, the offset after its last applied record).
fn commit(consumer: &StreamConsumer, next: BTreeMap<Partition, i64>) -> Result<(), KafkaError> {
    let mut offsets = TopicPartitionList::new();
    for ((topic, partition), offset) in &next {
        offsets.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
    }
    lock(&consumer.context().applied).extend(next);
    // Async: a lost commit only means records already applied are read again, and the
    // engine's dedup turns them into duplicates.
    consumer.commit(&offsets, CommitMode::Async)
}
