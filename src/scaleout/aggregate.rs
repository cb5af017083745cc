//! The aggregator: one member of a consumer group over the entity topics. For each
//! batch of its partitions' records it brings the entities it does not hold from Redis
//! (a partition may have been someone else's), applies every event to its entity with
//! the router's watermark and the record's offset + 1 as sequence number (an event the
//! entity already holds is skipped), writes each touched entity back by
//! compare-and-set, raises the shared watermark, and only then commits the offsets.
//! A crash anywhere redelivers records whose effect is either in Redis already (and
//! skipped by sequence number) or not at all: nothing lost, nothing applied twice.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaResult;
use rdkafka::message::{Headers, OwnedMessage};
use rdkafka::{ClientContext, Message, TopicPartitionList};

use super::{
    PROGRESS_HEADER, Pipeline, ScaleOutError, TAG_HEADER, WATERMARK_HEADER, next_offsets, receive,
};
use crate::definitions::EntityTypeId;
use crate::events::{Event, Limits, RawEvent, validate};
use crate::features::Engine;
use crate::kafka::commits::{CommitLedger, partitions};
use crate::kafka::{consumer_config, decode};
use crate::online::{
    EntityRecord, Lanes, RedisOnline, Sealed, Written, entity_key, entity_type_of,
};

/// How often expired entities are dropped from memory.
const EVICT_EVERY: Duration = Duration::from_secs(10);

/// Notes a revocation: what the aggregator holds may be older than what the
/// partition's next owner writes, so it drops everything before the next batch. Keeps
/// the commits: a revoked partition's applied offsets are committed before it goes,
/// and a commit lost in a rebalance is made again while the aggregator is idle (before,
/// the last batch's lost commit was never made again, and the group's committed offsets
/// stayed behind what was applied until more records came).
#[derive(Default)]
struct AggregatorContext {
    revoked: AtomicBool,
    commits: CommitLedger,
}

impl ClientContext for AggregatorContext {}

impl ConsumerContext for AggregatorContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            self.revoked.store(true, Ordering::Release);
            // Every batch received before this callback was applied and its commit
            // sent (the loop applies inline); committed now, synchronously, the next
            // owner starts after our last applied record.
            let revoked = partitions(list);
            let offsets = self.commits.offsets(Some(&revoked));
            if offsets.count() > 0
                && let Err(error) = consumer.commit(&offsets, CommitMode::Sync)
            {
                tracing::warn!(%error, "aggregator: commit of revoked partitions failed; their next owner skips what we applied by sequence number");
            }
            self.commits.forget(&revoked);
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        self.commits.confirm(result, offsets);
    }
}

/// How often, while idle, applied offsets not confirmed committed are committed again.
const RECOMMIT_AFTER: Duration = Duration::from_secs(1);

/// One record made ready: its entity, the event, the router's watermark, its sequence
/// number and its tag (see [`crate::online::cut`]).
struct Routed {
    entity: EntityTypeId,
    raw: RawEvent,
    watermark_ms: Option<i64>,
    seq: u64,
    tag: u64,
    partition: i32,
}

/// What an aggregator keeps besides its entities for the tier's cut (see
/// [`crate::online::cut`]).
struct CutState {
    /// Per entity partition (entity type, partition), how far each lane is in its
    /// records.
    progress: HashMap<EntityPartition, Lanes>,
    /// Per held entity, what it sealed.
    sealed: HashMap<(EntityTypeId, String), Sealed>,
    /// How many entity partitions the definitions have.
    partitions: usize,
}

/// An entity partition: its entity type (and so its topic) and its number. Kept as
/// numbers per record, named only when published.
type EntityPartition = (EntityTypeId, i32);

/// A header's value as text, if the record has it.
fn header<'m>(message: &'m OwnedMessage, key: &str) -> Option<&'m str> {
    let headers = message.headers()?;
    let found = headers.iter().find(|header| header.key == key)?;
    std::str::from_utf8(found.value?).ok()
}

/// The consumer group of the aggregators given `base` (`cluster.aggregate_group`) and
/// running `definitions`: `<base>.<state fingerprint, 16 hex digits>`.
///
/// One group per set of definitions: after a definitions change, the new aggregators
/// form a group of their own that starts at the entity topics' earliest records and
/// rebuilds every entity under the new definitions (in records of their own, see
/// [`entity_key`]) while the old group goes on serving the old scorers. Sharing one
/// group, the two would split the partitions between them and each set of records
/// would miss the other's events.
pub fn aggregate_group(base: &str, definitions: &crate::definitions::Definitions) -> String {
    format!("{base}.{:016x}", definitions.state_fingerprint)
}

/// Aggregates until `shutdown` turns true; an error ends the run (the caller starts it
/// again). `group` is the base name; the group joined is [`aggregate_group`]'s.
pub async fn aggregate(
    pipeline: Arc<Pipeline>,
    group: String,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<(), ScaleOutError> {
    let group = aggregate_group(&group, &pipeline.definitions);
    let online = RedisOnline::connect_with(&pipeline.redis).await?;
    let consumer: StreamConsumer<AggregatorContext> = consumer_config(&pipeline.kafka)
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        // A rebalance moves only the partitions that change owner; the others keep
        // their state (every rebalance used to drop and rebuild all of it).
        .set("partition.assignment.strategy", "cooperative-sticky")
        .create_with_context(AggregatorContext::default())?;
    let topics = pipeline.entity_topics();
    super::check_topics(&consumer, &topics)?;
    let mut cut = CutState {
        progress: HashMap::new(),
        sealed: HashMap::new(),
        partitions: super::entity_partitions(&consumer, &pipeline)?.len(),
    };
    let subscribed: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&subscribed)?;
    let by_topic: HashMap<String, EntityTypeId> = pipeline
        .definitions
        .entities
        .iter()
        .enumerate()
        .map(|(id, entity)| (pipeline.entity_topic(&entity.name), id))
        .collect();
    tracing::info!(topics = ?topics, %group, fingerprint = %format!("{:016x}", pipeline.definitions.state_fingerprint), "aggregator started");
    let engine = Arc::new(Engine::new(
        Arc::clone(&pipeline.definitions),
        pipeline.engine,
    ));
    let mut evicted_at = Instant::now();
    let mut recommitted_at = Instant::now();
    loop {
        let batch = tokio::select! {
            batch = receive(&consumer, pipeline.kafka.batch_records) => batch,
            _ = shutdown.changed() => return Ok(()),
        };
        if consumer.context().revoked.swap(false, Ordering::AcqRel) {
            engine.clear_entities();
            cut.sealed.clear();
            pipeline.counters.newest_applied_ms.lock().clear();
        }
        if batch.is_empty() {
            let commits = &consumer.context().commits;
            if recommitted_at.elapsed() >= RECOMMIT_AFTER && commits.behind() {
                recommitted_at = Instant::now();
                if let Err(error) = consumer.commit(&commits.offsets(None), CommitMode::Async) {
                    tracing::debug!(%error, "aggregator: commit failed; it is made again");
                }
            }
            continue;
        }
        tracing::debug!(records = batch.len(), "aggregator: batch received");
        let (routed, partitions) = prepare(&by_topic, &pipeline, &batch, &mut cut.progress);
        let outcome = apply(&pipeline, &engine, &online, &routed, &mut cut).await?;
        publish(&pipeline, &engine, &online, &cut, &partitions).await?;
        // Published and so readable at the cut: only now is it applied and fresh.
        outcome.count(&pipeline.counters);
        // As the embedded server does in the background: expired entities go, so memory
        // follows the live set (their state in Redis expires by its own TTL).
        if evicted_at.elapsed() >= EVICT_EVERY {
            evicted_at = Instant::now();
            let engine = Arc::clone(&engine);
            let dropped = {
                let engine = Arc::clone(&engine);
                tokio::task::spawn_blocking(move || engine.evict_expired())
                    .await
                    .map_err(|_| ScaleOutError::Panicked)?
            };
            cut.sealed
                .retain(|(entity, id), _| engine.holds(*entity, id));
            tracing::debug!(dropped, "aggregator: expired entities dropped");
        }
        let next = next_offsets(&batch)?;
        consumer
            .context()
            .commits
            .applied(next.elements().iter().filter_map(|e| match e.offset() {
                rdkafka::Offset::Offset(offset) => {
                    Some(((Arc::from(e.topic()), e.partition()), offset))
                }
                _ => None,
            }));
        consumer.commit(&next, CommitMode::Async)?;
    }
}

/// The batch's records made ready, and the entity partitions it came from. Each
/// record's tag and each progress marker (which is no event) move its partition's
/// progress on.
fn prepare(
    by_topic: &HashMap<String, EntityTypeId>,
    pipeline: &Pipeline,
    batch: &[OwnedMessage],
    progress: &mut HashMap<EntityPartition, Lanes>,
) -> (Vec<Routed>, BTreeSet<EntityPartition>) {
    let mut partitions = BTreeSet::new();
    let routed = batch
        .iter()
        .filter_map(|message| {
            let entity = *by_topic.get(message.topic())?;
            let partition = (entity, message.partition());
            let lanes = progress.entry(partition).or_default();
            partitions.insert(partition);
            if let Some(marker) = header(message, PROGRESS_HEADER) {
                match Lanes::decode(marker) {
                    Some(marked) => lanes.raise_all(&marked),
                    None => {
                        pipeline.counters.skipped.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(topic = message.topic(), offset = message.offset(), "aggregator: unreadable progress marker skipped");
                    }
                }
                return None;
            }
            let tag = header(message, TAG_HEADER)
                .and_then(|tag| tag.parse().ok())
                .unwrap_or(0);
            lanes.raise(tag);
            let raw = match decode::event(message.payload(), pipeline.kafka.format) {
                Ok(raw) => raw,
                Err(why) => {
                    pipeline.counters.skipped.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%why, topic = message.topic(), offset = message.offset(), "aggregator: undecodable record skipped");
                    return None;
                }
            };
            let watermark_ms =
                header(message, WATERMARK_HEADER).and_then(|watermark| watermark.parse().ok());
            Some(Routed {
                entity,
                raw,
                watermark_ms,
                seq: u64::try_from(message.offset()).ok()? + 1,
                tag,
                partition: message.partition(),
            })
        })
        .collect();
    (routed, partitions)
}

/// Publishes how far the batch's partitions are, and the watermark, once their records
/// are written.
async fn publish(
    pipeline: &Pipeline,
    engine: &Engine,
    online: &RedisOnline,
    cut: &CutState,
    partitions: &BTreeSet<EntityPartition>,
) -> Result<(), ScaleOutError> {
    let mut progress = Vec::new();
    for &(entity, partition) in partitions {
        let topic = pipeline.entity_topic(&pipeline.definitions.entities[entity].name);
        let name = format!("{topic}/{partition}");
        for (lane, through) in cut
            .progress
            .get(&(entity, partition))
            .into_iter()
            .flat_map(Lanes::iter)
        {
            progress.push((name.clone(), lane, through));
        }
    }
    online
        .publish_progress(
            pipeline.definitions.state_fingerprint,
            engine.watermark_ms(),
            cut.partitions,
            progress,
        )
        .await?;
    Ok(())
}

/// The entities a batch touches, by type and id.
type Touched = BTreeSet<(EntityTypeId, String)>;

/// Applies a batch and writes every entity it touched.
async fn apply(
    pipeline: &Pipeline,
    engine: &Engine,
    online: &RedisOnline,
    routed: &[Routed],
    cut: &mut CutState,
) -> Result<Outcome, ScaleOutError> {
    let (events, touched) = checked(pipeline, engine, routed);
    load_missing(pipeline, engine, online, &touched, cut).await?;
    // What each entity has pending before the batch, to learn what the batch seals.
    let mut pending: HashMap<(EntityTypeId, &str), Vec<(u64, i64)>> = touched
        .iter()
        .filter_map(|(entity, id)| {
            let events = engine.with_state(*entity, id, |s| s.pending_events().collect())?;
            Some(((*entity, id.as_str()), events))
        })
        .collect();
    let mut applied = 0u64;
    let mut newest: HashMap<(EntityTypeId, i32), i64> = HashMap::new();
    {
        let mut writer = engine.writer();
        for (record, event, id) in &events {
            engine.advance_watermark(record.watermark_ms.unwrap_or(event.time_ms));
            let done =
                writer.apply_to_entity_tagged(event, record.entity, id, record.seq, record.tag);
            if done {
                pending
                    .entry((record.entity, id.as_str()))
                    .or_default()
                    .push((record.tag, event.time_ms));
            }
            applied += u64::from(done);
            let slot = newest
                .entry((record.entity, record.partition))
                .or_insert(i64::MIN);
            *slot = (*slot).max(event.time_ms);
        }
    }
    let stale = write_touched(pipeline, engine, online, &touched, pending, cut).await?;
    Ok(Outcome {
        applied,
        stale,
        newest,
    })
}

/// The batch's events these definitions can apply, each with its record and entity
/// id, and the entities they touch. A record these definitions cannot apply was routed
/// under other ones (a router not yet rolled to them, or already rolled past them).
/// Skipping it is what these definitions say of that event; it is counted and logged,
/// never dropped silently.
fn checked<'r>(
    pipeline: &Pipeline,
    engine: &Engine,
    routed: &'r [Routed],
) -> (Vec<(&'r Routed, Event<'r>, String)>, Touched) {
    let definitions = &pipeline.definitions;
    // Admitted by the router already; only the shape is checked again.
    let limits = Limits {
        max_future_skew_ms: i64::MAX / 4,
        max_id_bytes: usize::MAX,
    };
    let mut events = Vec::with_capacity(routed.len());
    let mut touched = BTreeSet::new();
    let mut skipped = Vec::new();
    for record in routed {
        let event = match validate(definitions, &limits, &record.raw, None) {
            Ok(event) => event,
            Err(refusal) => {
                skipped.push((record, refusal.to_string()));
                continue;
            }
        };
        let Some((_, id)) = engine
            .entities_of(&event)
            .into_iter()
            .find(|(entity, _)| *entity == record.entity)
        else {
            let entity = &definitions.entities[record.entity].name;
            skipped.push((record, format!("the event does not name its {entity}")));
            continue;
        };
        touched.insert((record.entity, id.clone()));
        events.push((record, event, id));
    }
    if let Some((first, why)) = skipped.first() {
        pipeline
            .counters
            .skipped
            .fetch_add(skipped.len() as u64, Ordering::Relaxed);
        tracing::warn!(
            skipped = skipped.len(),
            first_event = %first.raw.event_id,
            %why,
            "aggregator: records these definitions cannot apply were skipped (routed under other definitions?)"
        );
    }
    (events, touched)
}

/// Brings the touched entities not held from Redis (their newest state, sequence and
/// what they sealed): a partition may have been someone else's.
async fn load_missing(
    pipeline: &Pipeline,
    engine: &Engine,
    online: &RedisOnline,
    touched: &Touched,
    cut: &mut CutState,
) -> Result<(), ScaleOutError> {
    let missing: Vec<(EntityTypeId, String)> = touched
        .iter()
        .filter(|(entity, id)| !engine.holds(*entity, id))
        .cloned()
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let records = online
        .read_entities(&pipeline.definitions, &missing)
        .await?;
    for ((entity, id), record) in missing.into_iter().zip(records) {
        if let Some(record) = record {
            engine.install_state(entity, &id, record.state);
            cut.sealed.insert((entity, id), record.sealed);
        }
    }
    Ok(())
}

/// Writes every touched entity by compare-and-set, with what it sealed: the events
/// `pending` before or applied in this batch that are pending no more. Returns how
/// many writes were stale (a newer record was there).
async fn write_touched(
    pipeline: &Pipeline,
    engine: &Engine,
    online: &RedisOnline,
    touched: &Touched,
    mut pending: HashMap<(EntityTypeId, &str), Vec<(u64, i64)>>,
    cut: &mut CutState,
) -> Result<u64, ScaleOutError> {
    let definitions = &pipeline.definitions;
    let mut records = Vec::with_capacity(touched.len());
    for (entity, id) in touched {
        let (entity, id) = (*entity, id.as_str());
        let Some(state) = engine.entity_state(entity, id) else {
            continue;
        };
        // Sealed by this batch (or dropped by an expiry, which no read can leave out
        // either).
        let still: Vec<(u64, i64)> = state.pending_events().collect();
        let was = pending.remove(&(entity, id)).unwrap_or_default();
        let sealed = cut.sealed.entry((entity, id.to_string())).or_default();
        for (tag, time_ms) in was.into_iter().filter(|event| !still.contains(event)) {
            sealed.add(tag, time_ms);
        }
        let record = EntityRecord {
            seq: state.applied_seq(),
            fingerprint: definitions.state_fingerprint,
            state,
            sealed: sealed.clone(),
        };
        let key = entity_key(
            definitions.state_fingerprint,
            &definitions.entities[entity].name,
            id,
        );
        records.push((key, record));
    }
    let retention: HashMap<&str, u64> = definitions
        .entities
        .iter()
        .enumerate()
        .filter_map(|(id, entity)| {
            let ms = engine.retention_ms(id)?;
            Some((entity.name.as_str(), u64::try_from(ms).unwrap_or(u64::MAX)))
        })
        .collect();
    let written = online
        .write(&records, |key| {
            entity_type_of(key)
                .and_then(|entity| retention.get(entity).copied())
                .unwrap_or(u64::MAX)
        })
        .await?;
    Ok(written.iter().filter(|w| **w == Written::Stale).count() as u64)
}

/// What a batch did, counted once it is published.
struct Outcome {
    applied: u64,
    stale: u64,
    /// Per (entity type, partition), the newest event time applied.
    newest: HashMap<(EntityTypeId, i32), i64>,
}

impl Outcome {
    fn count(self, counters: &super::Counters) {
        counters
            .stale_writes
            .fetch_add(self.stale, Ordering::Relaxed);
        counters.applied.fetch_add(self.applied, Ordering::Relaxed);
        let mut freshness = counters.newest_applied_ms.lock();
        for (partition, time_ms) in self.newest {
            let slot = freshness.entry(partition).or_insert(time_ms);
            *slot = (*slot).max(time_ms);
        }
    }
}
