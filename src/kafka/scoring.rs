//! The scoring stream (consume -> score -> produce): payments of
//! `kafka.scoring.input_topic` are scored exactly like `Score` (same vector, model
//! resolution, decision and reasons), and one decision record per payment is written
//! to `output_topic`, keyed by event id, inside a Kafka transaction that also commits
//! the input offsets. A `read_committed` reader of the decisions sees exactly one
//! decision per payment across crashes: a transaction that did not commit is aborted
//! (by us, or by the broker fencing our `transactional.id` when we come back) and its
//! payments are scored again, and a payment that already has a decision is never
//! scored again, even where the committed offsets are lost ([`super::resume`]).
//!
//! A payment that cannot be scored (undecodable, invalid) gets a decision record with
//! `"decision": "error"` and the reason, so its reader fails closed and knows why. While
//! the model cannot be resolved, nothing is scored or committed: the stream waits.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::OwnedMessage;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{ClientContext, Message, Offset};

use super::batch::receive;
use serde::Serialize;

use super::resume::{self, ResumeError};
use super::transaction::{self, TransactionError, blocking, commit_consumed};
use super::{Health, client_config, consumer_config, lock};
use crate::backoff::Backoff;
use crate::config::KafkaSettings;
use crate::model::decision::decision_name;
use crate::registry::Registry;
use crate::scoring::{self, ScoreError, ScoreInput};
use crate::store::FeatureStore;
use crate::time::now_ms;

/// Reasons given with each decision.
const REASONS: usize = 3;
/// Timeout of each transaction step (init, offsets, commit, abort), and of the look
/// back over the decisions topic for where a partition got to.
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(30);
/// Waits between attempts after a failure, doubling up to the last.
const BACKOFF: [Duration; 4] = [
    Duration::from_millis(200),
    Duration::from_secs(1),
    Duration::from_secs(5),
    Duration::from_secs(15),
];

/// What the scoring stream did since start, for metrics and tests.
#[derive(Debug, Default)]
pub struct ScoringCounters {
    pub scored: AtomicU64,
    pub errors: AtomicU64,
    pub transactions: AtomicU64,
    pub aborts: AtomicU64,
    pub restarts: AtomicU64,
    /// Payments read again that already had a decision, so were not scored again.
    pub already_decided: AtomicU64,
    pub health: Arc<Health>,
}

impl ScoringCounters {
    pub fn prometheus(&self) -> String {
        let mut out = String::new();
        for (name, help, value) in [
            ("scored", "payments scored since start", &self.scored),
            (
                "errors",
                "payments answered with an error decision since start",
                &self.errors,
            ),
            (
                "transactions",
                "transactions committed since start",
                &self.transactions,
            ),
            (
                "aborts",
                "transactions aborted (their payments are scored again) since start",
                &self.aborts,
            ),
            (
                "restarts",
                "restarts of the stream after a fatal error since start",
                &self.restarts,
            ),
            (
                "already_decided",
                "payments read again that already had a decision (not scored again) since start",
                &self.already_decided,
            ),
        ] {
            let name = format!("streamscore_kafka_scoring_{name}");
            crate::prometheus_text::single(&mut out, &name, "counter", help, value.load(Relaxed));
        }
        out
    }
}

/// One decision record, the value written to the output topic.
#[derive(Debug, Serialize)]
pub struct DecisionRecord {
    pub event_id: String,
    /// `allow`, `review`, `block`, `none` (a model without thresholds) or `error`.
    pub decision: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<ReasonRecord>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub event_time_ms: Option<i64>,
    pub scored_at_ms: i64,
    /// Where the payment was read: topic, partition, offset.
    pub source: (String, i32, i64),
}

#[derive(Debug, Serialize)]
pub struct ReasonRecord {
    pub feature: String,
    pub value: Option<f64>,
    pub contribution: f64,
    /// Outside the model's training range and clipped to it (left out when not).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub clipped: bool,
}

#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("the scoring stream's blocking task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error(transparent)]
    Transaction(#[from] TransactionError),
    #[error("where to resume is unknown: {0}")]
    Resume(#[from] ResumeError),
    #[error("the output topic '{0}' has no partitions (does it exist?)")]
    NoOutput(String),
}

struct ScoringContext {
    health: Arc<Health>,
    /// Per payments partition, the newest offset with a decision (`None`: none yet).
    /// Emptied at every rebalance: a partition that comes back may have been decided
    /// further by another member meanwhile, so it is looked up again.
    decided: Mutex<HashMap<i32, Option<i64>>>,
}

impl ClientContext for ScoringContext {
    fn error(&self, error: KafkaError, reason: &str) {
        self.health.broker_error(&error, reason);
    }
}

impl ConsumerContext for ScoringContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, _: &Rebalance<'_>) {
        lock(&self.decided).clear();
    }
}

/// Everything a run of the stream needs.
pub struct Stream {
    pub store: Arc<FeatureStore>,
    pub registry: Arc<Registry>,
    pub settings: KafkaSettings,
    /// Stable across restarts of this server, so a restart fences its own dead
    /// producer and aborts its open transaction at once.
    pub transactional_id: String,
    pub counters: Arc<ScoringCounters>,
}

/// Runs the scoring stream until `shutdown`, restarting it (new consumer and producer,
/// with backoff) after a fatal error such as being fenced.
pub async fn run(stream: Stream, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let mut backoff = Backoff::new(&BACKOFF);
    loop {
        let started = tokio::time::Instant::now();
        let attempt = run_once(&stream, &mut shutdown);
        match attempt.await {
            Ok(()) => break,
            Err(error) => {
                stream.counters.restarts.fetch_add(1, Relaxed);
                // A stream that ran well for a while starts the pauses over (they
                // used to keep growing over restarts days apart).
                let wait = backoff.failed_after(started.elapsed());
                tracing::warn!(%error, ?wait, "kafka scoring stream failed; starting again");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.changed() => break,
                }
            }
        }
    }
    tracing::info!("kafka scoring stream stopped");
}

async fn run_once(
    stream: &Stream,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
) -> Result<(), StreamError> {
    let settings = &stream.settings;
    let scoring = &settings.scoring;
    let consumer: Arc<StreamConsumer<ScoringContext>> = Arc::new(
        consumer_config(settings)
            .set("group.id", &scoring.group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            .set("partition.assignment.strategy", "cooperative-sticky")
            .create_with_context(ScoringContext {
                health: Arc::clone(&stream.counters.health),
                decided: Mutex::new(HashMap::new()),
            })?,
    );
    // Up to 30 s against an unreachable broker: on a blocking thread.
    let output_partitions = {
        let (consumer, output) = (Arc::clone(&consumer), scoring.output_topic.clone());
        tokio::task::spawn_blocking(move || {
            let metadata = consumer.fetch_metadata(Some(&output), TRANSACTION_TIMEOUT)?;
            let partitions = metadata
                .topics()
                .iter()
                .find(|t| t.name() == output)
                .map_or(0, |t| t.partitions().len());
            Ok::<i32, KafkaError>(i32::try_from(partitions).unwrap_or(i32::MAX))
        })
        .await??
    };
    if output_partitions == 0 {
        return Err(StreamError::NoOutput(scoring.output_topic.clone()));
    }
    consumer.subscribe(&[scoring.input_topic.as_str()])?;
    let producer: FutureProducer = client_config(settings)
        .set("transactional.id", &stream.transactional_id)
        .create()?;
    blocking(&producer, |p| p.init_transactions(TRANSACTION_TIMEOUT)).await?;
    tracing::info!(input = %scoring.input_topic, output = %scoring.output_topic, model = %scoring.model, transactional_id = %stream.transactional_id, "kafka scoring stream started");

    let mut backoff = Backoff::new(&BACKOFF);
    loop {
        let batch = tokio::select! {
            batch = receive(&consumer, scoring.batch_records) => batch,
            _ = shutdown.changed() => return Ok(()),
        };
        if batch.is_empty() {
            continue;
        }
        stream.counters.health.received();
        let batch = undecided(stream, &consumer, output_partitions, batch).await?;
        if batch.is_empty() {
            continue;
        }
        match transact(stream, &consumer, &producer, output_partitions, &batch).await {
            Ok(()) => {
                backoff.succeeded();
                stream.counters.health.set_waiting(false);
                let mut decided = lock(&consumer.context().decided);
                for message in &batch {
                    // Only partitions still held: one revoked meanwhile is looked up
                    // again when it comes back.
                    if let Some(newest) = decided.get_mut(&message.partition()) {
                        *newest = (*newest).max(Some(message.offset()));
                    }
                }
            }
            Err(Failure::Fatal(error)) => return Err(error),
            Err(Failure::Unresolved(why)) => {
                // Fails closed and says so: nothing is decided while the model cannot
                // be resolved, and health is NOT_SERVING until it can.
                stream.counters.health.set_waiting(true);
                let wait = backoff.failed();
                tracing::warn!(%why, ?wait, "kafka scoring waits: the model cannot be resolved");
                rewind(&consumer, &batch).await;
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.changed() => return Ok(()),
                }
            }
            Err(Failure::Retry(why)) => {
                stream.counters.aborts.fetch_add(1, Relaxed);
                let wait = backoff.failed();
                tracing::warn!(%why, ?wait, payments = batch.len(), "kafka scoring transaction aborted; scoring them again");
                rewind(&consumer, &batch).await;
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.changed() => return Ok(()),
                }
            }
        }
    }
}

/// The payments of `batch` that have no decision yet, in order. A partition seen for
/// the first time since the last rebalance is looked up in the decisions topic first.
async fn undecided(
    stream: &Stream,
    consumer: &StreamConsumer<ScoringContext>,
    output_partitions: i32,
    batch: Vec<OwnedMessage>,
) -> Result<Vec<OwnedMessage>, StreamError> {
    let scoring = &stream.settings.scoring;
    let mut unknown: Vec<i32> = {
        let decided = lock(&consumer.context().decided);
        batch
            .iter()
            .map(|m| m.partition())
            .filter(|p| !decided.contains_key(p))
            .collect()
    };
    unknown.sort_unstable();
    unknown.dedup();
    if !unknown.is_empty() {
        let settings = stream.settings.clone();
        let found = tokio::task::spawn_blocking(move || {
            let reader = resume::reader(&settings)?;
            let scoring = &settings.scoring;
            unknown
                .into_iter()
                .map(|partition| {
                    let newest = resume::last_decided(
                        &reader,
                        &scoring.output_topic,
                        output_partitions,
                        &scoring.input_topic,
                        partition,
                        TRANSACTION_TIMEOUT,
                    )?;
                    Ok((partition, newest))
                })
                .collect::<Result<Vec<_>, ResumeError>>()
        })
        .await??;
        for (partition, newest) in found {
            tracing::info!(input = %scoring.input_topic, partition, ?newest, "kafka scoring: newest payment already decided");
            lock(&consumer.context().decided).insert(partition, newest);
        }
    }
    let decided = lock(&consumer.context().decided);
    let before = batch.len();
    let left: Vec<OwnedMessage> = batch
        .into_iter()
        .filter(|m| {
            let newest = decided.get(&m.partition()).copied().flatten();
            newest.is_none_or(|newest| m.offset() > newest)
        })
        .collect();
    let skipped = (before - left.len()) as u64;
    if skipped > 0 {
        stream.counters.already_decided.fetch_add(skipped, Relaxed);
    }
    Ok(left)
}

enum Failure {
    /// The model cannot be resolved: nothing was sent; score the batch again later.
    Unresolved(String),
    /// The transaction was aborted: score the batch again later.
    Retry(String),
    /// The producer cannot go on (fenced, or a fatal error): start again.
    Fatal(StreamError),
}

/// Scores `batch` and writes its decisions and offsets in one transaction.
async fn transact(
    stream: &Stream,
    consumer: &StreamConsumer<ScoringContext>,
    producer: &FutureProducer,
    output_partitions: i32,
    batch: &[OwnedMessage],
) -> Result<(), Failure> {
    let mut records = Vec::with_capacity(batch.len());
    for message in batch {
        match score(stream, message).await {
            Ok(record) => records.push(record),
            Err(why) => return Err(Failure::Unresolved(why)),
        }
    }
    let fail = classify;
    producer.begin_transaction().map_err(fail)?;
    let output = &stream.settings.scoring.output_topic;
    let mut deliveries = Vec::with_capacity(records.len());
    for record in &records {
        let payload = serde_json::to_vec(record).map_err(|e| Failure::Retry(e.to_string()))?;
        let key = if record.event_id.is_empty() {
            format!(
                "{}/{}/{}",
                record.source.0, record.source.1, record.source.2
            )
        } else {
            record.event_id.clone()
        };
        // One output partition per payments partition, so the decisions topic says
        // how far each payments partition got (see `resume`).
        let partition = resume::output_partition(record.source.1, output_partitions);
        let queued = producer
            .send_result(
                FutureRecord::to(output)
                    .partition(partition)
                    .key(&key)
                    .payload(&payload),
            )
            .map_err(|(error, _)| error);
        match queued {
            Ok(delivery) => deliveries.push(delivery),
            Err(error) => return Err(abort(producer, fail(error)).await),
        }
    }
    for delivery in deliveries {
        let delivered = match delivery.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((error, _))) => Err(fail(error)),
            Err(_cancelled) => Err(Failure::Retry("a decision's delivery was cancelled".into())),
        };
        if let Err(failure) = delivered {
            return Err(abort(producer, failure).await);
        }
    }
    let committed = commit_consumed(consumer, producer, batch, TRANSACTION_TIMEOUT).await;
    match committed {
        Ok(()) => {
            let errors = records.iter().filter(|r| r.decision == "error").count() as u64;
            let counters = &stream.counters;
            counters.transactions.fetch_add(1, Relaxed);
            counters.errors.fetch_add(errors, Relaxed);
            counters
                .scored
                .fetch_add(records.len() as u64 - errors, Relaxed);
            Ok(())
        }
        Err(TransactionError::Kafka(error)) => Err(abort(producer, fail(error)).await),
        Err(error @ TransactionError::NoGroupMetadata) => {
            Err(abort(producer, Failure::Retry(error.to_string())).await)
        }
        Err(error) => Err(Failure::Fatal(error.into())),
    }
}

/// A fatal error (being fenced among them) ends this producer; anything else aborts
/// the transaction and retries.
fn classify(error: KafkaError) -> Failure {
    let fatal = matches!(&error, KafkaError::Transaction(rd) if rd.is_fatal());
    if fatal {
        Failure::Fatal(StreamError::Kafka(error))
    } else {
        Failure::Retry(error.to_string())
    }
}

async fn abort(producer: &FutureProducer, failure: Failure) -> Failure {
    if let Failure::Fatal(_) = failure {
        return failure;
    }
    match transaction::abort(producer, TRANSACTION_TIMEOUT).await {
        Ok(()) => failure,
        // An abort that fails leaves the producer unusable: start again.
        Err(error) => Failure::Fatal(error.into()),
    }
}

/// After an abort, the consumer goes back to the batch's first record of each
/// partition (a partition revoked meanwhile is read again by its new owner). `seek`
/// blocks up to 5 s per partition: it runs on a blocking thread, not the runtime.
async fn rewind(consumer: &Arc<StreamConsumer<ScoringContext>>, batch: &[OwnedMessage]) {
    let mut first: BTreeMap<(String, i32), i64> = BTreeMap::new();
    for message in batch {
        let slot = first
            .entry((message.topic().to_string(), message.partition()))
            .or_insert(i64::MAX);
        *slot = (*slot).min(message.offset());
    }
    let consumer = Arc::clone(consumer);
    let seeks = tokio::task::spawn_blocking(move || {
        for ((topic, partition), offset) in first {
            if let Err(error) = consumer.seek(
                &topic,
                partition,
                Offset::Offset(offset),
                Duration::from_secs(5),
            ) {
                tracing::info!(%error, topic, partition, "kafka scoring: no rewind (the partition moved on)");
            }
        }
    });
    if let Err(error) = seeks.await {
        tracing::error!(%error, "kafka scoring: the rewind task failed");
    }
}

/// One payment's decision record; `Err` only when the model cannot be resolved (the
/// batch waits and is scored again).
async fn score(stream: &Stream, message: &OwnedMessage) -> Result<DecisionRecord, String> {
    let scoring = &stream.settings.scoring;
    let source = (
        message.topic().to_string(),
        message.partition(),
        message.offset(),
    );
    let event = match super::decode::event(message.payload(), stream.settings.format) {
        Ok(event) => event,
        Err(reason) => return Ok(error_record(String::new(), None, reason, source)),
    };
    let (event_id, event_time) = (event.event_id.clone(), event.event_time_ms);
    let input = ScoreInput {
        model: scoring.model.clone(),
        event,
        include_features: false,
        record: scoring.record,
        reasons: REASONS,
        shadow: Vec::new(),
    };
    match scoring::score(&stream.store, &stream.registry, input).await {
        Ok(scored) => Ok(DecisionRecord {
            event_id,
            decision: decision_name(scored.decision),
            score: Some(scored.score),
            reasons: scored
                .reasons
                .into_iter()
                .map(|r| ReasonRecord {
                    feature: r.feature,
                    value: r.value,
                    contribution: r.contribution,
                    clipped: r.clipped,
                })
                .collect(),
            model: Some(scored.model.name().to_string()),
            version: Some(scored.model.version()),
            error: None,
            event_time_ms: Some(event_time),
            scored_at_ms: now_ms(),
            source,
        }),
        Err(ScoreError::Registry(error)) => Err(error.to_string()),
        Err(error) => Ok(error_record(
            event_id,
            Some(event_time),
            error.to_string(),
            source,
        )),
    }
}

fn error_record(
    event_id: String,
    event_time_ms: Option<i64>,
    error: String,
    source: (String, i32, i64),
) -> DecisionRecord {
    DecisionRecord {
        event_id,
        decision: "error",
        score: None,
        reasons: Vec::new(),
        model: None,
        version: None,
        error: Some(error),
        event_time_ms,
        scored_at_ms: now_ms(),
        source,
    }
}
