//! Scaling out past one machine (cargo feature `cluster`): Kafka consumer groups own
//! the partitions, Redis Cluster holds the entity state, and no process of ours is
//! special.
//!
//! ```text
//!  events topic ──> router ──(one transaction)──> <prefix>.user, <prefix>.card, ...
//!                   admission once:                 keyed by entity id, each record
//!                   validation, dedup, lateness     stamped with the watermark
//!                                                        │
//!                             aggregators (one consumer group over the entity topics):
//!                             the engine on the entities of their partitions, each
//!                             touched entity written to Redis by compare-and-set on
//!                             its partition offset, then the offsets committed
//!                                                        │
//!                             scorers: fetch a request's entities from Redis, score
//!                             with the same state and vector code as `embedded`
//! ```
//!
//! Every event is applied to an entity with the watermark the router stamped on it,
//! which is the watermark the embedded engine has when it applies the same event in
//! the same order: the entity's tiles and pending events come out the same, bit for
//! bit, so a scorer's answer equals the embedded server's.

mod admission;
mod aggregate;
mod route;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::config::KafkaSettings;
use crate::definitions::{Definitions, EntityTypeId};
use crate::events::Limits;
use crate::features::EngineSettings;
use crate::online::{OnlineError, RedisAccess};
use crate::prometheus_text::{header, sample, single};

pub use aggregate::{aggregate, aggregate_group};
pub use route::route;

use crate::kafka::batch::{next_offsets, receive};

/// The header that carries the router's watermark after admitting the event.
pub const WATERMARK_HEADER: &str = "ss-watermark";

/// The header that carries a routed record's tag: its event's place in its input
/// partition (see [`crate::online::cut`]).
pub const TAG_HEADER: &str = "ss-tag";

/// The header of a router's progress marker (a record with an empty value written to
/// every entity partition after a transaction's records): per lane, the offset + 1
/// through which the lane is routed (see [`crate::online::cut`]).
pub const PROGRESS_HEADER: &str = "ss-progress";

/// Timeout of each transaction step and metadata request.
const KAFKA_TIMEOUT: Duration = Duration::from_secs(10);

/// What the router and the aggregators share.
pub struct Pipeline {
    pub kafka: KafkaSettings,
    pub definitions: Arc<Definitions>,
    pub engine: EngineSettings,
    pub limits: Limits,
    /// Entity topics are `<prefix>.<entity type>`.
    pub topic_prefix: String,
    /// The online store (nodes and login).
    pub redis: RedisAccess,
    pub counters: Counters,
}

/// What the routers and aggregators of this process did since start.
#[derive(Debug, Default)]
pub struct Counters {
    /// Events admitted and routed (in committed transactions).
    pub routed: AtomicU64,
    /// Records the router skipped: undecodable, invalid, duplicate or too late (counted
    /// when seen, so a batch retried after a failure counts again).
    pub unrouted: AtomicU64,
    /// Records applied to their entity and written to the online store (a redelivered
    /// record the entity already held is not counted).
    pub applied: AtomicU64,
    /// Entity writes the online store refused as older than what it holds.
    pub stale_writes: AtomicU64,
    /// Records the aggregator could not apply: undecodable, or refused by its
    /// definitions (routed under other ones during a definitions change).
    pub skipped: AtomicU64,
    /// Per owned entity-topic partition, the newest event time applied: the freshness
    /// of what scorers read from it.
    pub newest_applied_ms: parking_lot::Mutex<BTreeMap<(EntityTypeId, i32), i64>>,
}

impl Pipeline {
    /// The pipeline of a process started with `settings` (its `[kafka]`, `[ingest]`
    /// and `[cluster]` sections).
    pub fn new(settings: &crate::config::Settings, definitions: Arc<Definitions>) -> Pipeline {
        Pipeline {
            kafka: settings.kafka.clone(),
            definitions,
            engine: EngineSettings::from(&settings.ingest),
            limits: Limits::from(&settings.ingest),
            topic_prefix: settings.cluster.topic_prefix.clone(),
            redis: RedisAccess::from(&settings.cluster),
            counters: Default::default(),
        }
    }

    /// This process's router and aggregator metrics in Prometheus text, the freshness
    /// lag (now - newest event time applied) per owned partition among them.
    pub fn prometheus(&self, now_ms: i64) -> String {
        let mut out = String::new();
        let counters = &self.counters;
        for (name, help, value) in [
            (
                "streamscore_routed_events_total",
                "events admitted and routed to the entity topics",
                &counters.routed,
            ),
            (
                "streamscore_unrouted_events_total",
                "records the router skipped: undecodable, invalid, duplicate or too late",
                &counters.unrouted,
            ),
            (
                "streamscore_aggregated_records_total",
                "entity records applied and written to the online store",
                &counters.applied,
            ),
            (
                "streamscore_aggregator_skipped_records_total",
                "entity-topic records the aggregator could not apply: undecodable, or refused by its definitions",
                &counters.skipped,
            ),
            (
                "streamscore_online_stale_writes_total",
                "entity writes the online store refused as older than what it holds",
                &counters.stale_writes,
            ),
        ] {
            single(
                &mut out,
                name,
                "counter",
                help,
                value.load(Ordering::Relaxed),
            );
        }
        let newest = counters.newest_applied_ms.lock();
        let lag = "streamscore_aggregator_freshness_lag_seconds";
        header(
            &mut out,
            lag,
            "gauge",
            "age of the newest event applied from an owned partition (now - its event time)",
        );
        for ((entity, partition), newest_ms) in newest.iter() {
            let topic = self.entity_topic(&self.definitions.entities[*entity].name);
            let seconds = (now_ms - newest_ms).max(0) as f64 / 1000.0;
            sample(
                &mut out,
                lag,
                &[("topic", &topic), ("partition", &partition.to_string())],
                seconds,
            );
        }
        single(
            &mut out,
            "streamscore_aggregator_partitions",
            "gauge",
            "entity-topic partitions this process applied records from since its last rebalance",
            newest.len(),
        );
        out
    }

    /// The topic of an entity type's events.
    pub fn entity_topic(&self, entity: &str) -> String {
        format!("{}.{entity}", self.topic_prefix)
    }

    /// The routers' checkpoints: per input partition, how far it is routed.
    pub fn checkpoint_topic(&self) -> String {
        format!("{}.routed", self.topic_prefix)
    }

    /// Every entity topic: one per entity type that has features.
    pub fn entity_topics(&self) -> Vec<String> {
        let engine = crate::features::Engine::new(Arc::clone(&self.definitions), self.engine);
        self.definitions
            .entities
            .iter()
            .enumerate()
            .filter(|(id, _)| engine.retention_ms(*id).is_some())
            .map(|(_, entity)| self.entity_topic(&entity.name))
            .collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ScaleOutError {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    Online(#[from] OnlineError),
    #[error("entity topics missing (create them before starting): {0:?}")]
    MissingTopics(Vec<String>),
    #[error("kafka transaction: {0}")]
    Transaction(String),
    #[error("a blocking Kafka call panicked")]
    Panicked,
}

impl From<crate::kafka::transaction::TransactionError> for ScaleOutError {
    fn from(error: crate::kafka::transaction::TransactionError) -> Self {
        use crate::kafka::transaction::TransactionError;
        match error {
            TransactionError::Kafka(error) => ScaleOutError::Kafka(error),
            error @ TransactionError::NoGroupMetadata => {
                ScaleOutError::Transaction(error.to_string())
            }
            TransactionError::Blocking(_) => ScaleOutError::Panicked,
        }
    }
}

/// Checks that every topic exists; names the missing ones.
fn check_topics<C: rdkafka::consumer::ConsumerContext>(
    consumer: &impl rdkafka::consumer::Consumer<C>,
    topics: &[String],
) -> Result<(), ScaleOutError> {
    let metadata = consumer.fetch_metadata(None, KAFKA_TIMEOUT)?;
    let missing: Vec<String> = topics
        .iter()
        .filter(|topic| {
            !metadata
                .topics()
                .iter()
                .any(|t| t.name() == topic.as_str() && !t.partitions().is_empty())
        })
        .cloned()
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(ScaleOutError::MissingTopics(missing))
    }
}

/// Every entity topic's partitions, as `(topic, partition)`.
fn entity_partitions<C: rdkafka::consumer::ConsumerContext>(
    consumer: &impl rdkafka::consumer::Consumer<C>,
    pipeline: &Pipeline,
) -> Result<Vec<(String, i32)>, ScaleOutError> {
    let mut all = Vec::new();
    for topic in pipeline.entity_topics() {
        let count = partition_count(consumer, &topic)?;
        all.extend((0..count).map(|partition| (topic.clone(), partition)));
    }
    Ok(all)
}

/// How many partitions `topic` has.
fn partition_count<C: rdkafka::consumer::ConsumerContext>(
    consumer: &impl rdkafka::consumer::Consumer<C>,
    topic: &str,
) -> Result<i32, ScaleOutError> {
    let metadata = consumer.fetch_metadata(Some(topic), KAFKA_TIMEOUT)?;
    let count = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map_or(0, |t| t.partitions().len());
    match i32::try_from(count) {
        Ok(count) if count > 0 => Ok(count),
        _ => Err(ScaleOutError::MissingTopics(vec![topic.to_string()])),
    }
}
