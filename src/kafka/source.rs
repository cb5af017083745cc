//! The consumer loop of the Kafka source: receive, align partitions in event time,
//! apply through the store (validation, dedup, lateness, engine, durable log), write
//! refused records to the dead-letter topic, and only then commit offsets.
//!
//! Two stages run side by side: a reader thread (poll, decode, align) hands released
//! batches to the applier task (store, dead letters, commit) through a channel one
//! batch deep, so the next batch is read and decoded while the last one is applied.
//! A partition taken from us waits in the revoke callback until every batch handed
//! over before it is applied and its offsets are committed: its next owner starts
//! exactly after our last applied record.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::OwnedMessage;
use rdkafka::producer::FutureProducer;
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};

use super::align::{Aligner, Flow};
use super::commits::{CommitLedger, partitions};
use super::dead_letter::{self, Refused};
use super::{SourceCounters, SourceError, client_config, consumer_config, lock};
use crate::config::KafkaSettings;
use crate::events::{RawEvent, RefusalKind};
use crate::store::{BatchOutcome, FeatureStore};

pub use super::commits::Partition;

/// How long a batch waits for more records after its first.
const BATCH_WAIT: Duration = Duration::from_millis(5);
/// How long the loop waits for a record before looking at idle lanes again.
const RECEIVE_WAIT: Duration = Duration::from_millis(100);
/// How often applied offsets not yet confirmed committed are committed again.
const RECOMMIT_AFTER: Duration = Duration::from_secs(1);
/// A lane with nothing received for this long stops holding back the others.
const IDLE_AFTER: Duration = Duration::from_secs(2);
/// Released batches waiting for the applier beyond the one it applies.
const PIPELINE_BATCHES: usize = 1;

/// Assignments and revocations seen by librdkafka's rebalance callbacks, applied to
/// the aligner by the loop before the next record.
#[derive(Default)]
struct Changes {
    assigned: Vec<Partition>,
    revoked: Vec<Partition>,
}

/// Batches handed from the reader to the applier and not finished yet; the revoke
/// callback waits for them.
#[derive(Default)]
struct InFlight {
    /// (handed over, finished, the applier stopped)
    state: Mutex<(u64, u64, bool)>,
    finished: Condvar,
}

impl InFlight {
    fn handed_over(&self) {
        lock(&self.state).0 += 1;
    }

    /// A batch applied and committed (`ok`), or the applier stopped on an error.
    fn finish(&self, ok: bool) {
        let mut state = lock(&self.state);
        state.1 += 1;
        state.2 |= !ok;
        self.finished.notify_all();
    }

    /// The applier stopped: nothing handed over will finish.
    fn stopped(&self) {
        lock(&self.state).2 = true;
        self.finished.notify_all();
    }

    /// Blocks until every batch handed over is finished, or the applier stopped.
    fn wait_all(&self) {
        let mut state = lock(&self.state);
        while state.1 < state.0 && !state.2 {
            state = self
                .finished
                .wait(state)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }
}

struct SourceContext {
    changes: Mutex<Changes>,
    in_flight: InFlight,
    commits: CommitLedger,
    counters: Arc<SourceCounters>,
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

impl ConsumerContext for SourceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            let revoked = partitions(list);
            tracing::info!(?revoked, "kafka partitions revoked");
            // Records of them may be in a batch the applier holds: applied and
            // committed before they go, or the next owner would apply them too.
            self.in_flight.wait_all();
            // Committed before they go, synchronously: the next owner starts after the
            // last record we applied, not at an older commit still in flight.
            let offsets = self.commits.offsets(Some(&revoked));
            if offsets.count() > 0
                && let Err(error) = consumer.commit(&offsets, CommitMode::Sync)
            {
                tracing::warn!(%error, "commit of revoked partitions failed; their next owner reads again what we applied since the last commit");
            }
            self.commits.forget(&revoked);
            lock(&self.changes).revoked.extend(revoked);
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        self.commits.confirm(result, offsets);
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            let assigned = partitions(list);
            tracing::info!(?assigned, "kafka partitions assigned");
            lock(&self.changes).assigned.extend(assigned);
        }
    }
}

type SourceConsumer = BaseConsumer<SourceContext>;

/// A received record with its decoded event (or why it could not be decoded).
type Received = (OwnedMessage, Result<RawEvent, String>);

/// Consumes until `shutdown` turns true. Broker errors are retried by librdkafka, a
/// log that cannot write for a while (a full disk) and a dead-letter topic that cannot
/// be written are waited out, the same batch tried again; each turns the source's
/// health NOT_SERVING meanwhile. An error of the store it cannot get past (the log
/// writer failed) stops the source with the batch's offsets uncommitted, so its
/// records are read again by whoever consumes next.
pub async fn run(
    store: Arc<FeatureStore>,
    settings: KafkaSettings,
    slack_ms: i64,
    counters: Arc<SourceCounters>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<(), SourceError> {
    let context = SourceContext {
        changes: Mutex::new(Changes::default()),
        in_flight: InFlight::default(),
        commits: CommitLedger::default(),
        counters: Arc::clone(&counters),
    };
    let consumer: Arc<SourceConsumer> = Arc::new(
        consumer_config(&settings)
            .set("group.id", &settings.group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("enable.partition.eof", "true")
            .set("statistics.interval.ms", STATISTICS_INTERVAL_MS)
            .create_with_context(context)?,
    );
    let topics: Vec<&str> = settings.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    let dead_letters: FutureProducer = client_config(&settings)
        .set("enable.idempotence", "true")
        .create()?;
    tracing::info!(brokers = %settings.brokers, group = %settings.group, topics = ?settings.topics, "kafka source started");

    let (batches, mut incoming) = tokio::sync::mpsc::channel(PIPELINE_BATCHES);
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (consumer, settings, counters, stop) = (
            Arc::clone(&consumer),
            settings.clone(),
            Arc::clone(&counters),
            Arc::clone(&stop),
        );
        std::thread::Builder::new()
            .name("kafka-source".into())
            .spawn(move || read(&consumer, &settings, slack_ms, &counters, &batches, &stop))
            .map_err(SourceError::Thread)?
    };
    let mut applied = Ok(Applied::Committed);
    loop {
        let batch = tokio::select! {
            batch = incoming.recv() => batch,
            _ = shutdown.changed(), if !stop.load(Relaxed) => {
                // The reader stops; what it handed over is still applied.
                stop.store(true, Relaxed);
                continue;
            }
        };
        // `None`: the reader stopped and everything it handed over is applied.
        let Some(batch) = batch else { break };
        applied = apply(
            &store,
            &settings,
            &consumer,
            &dead_letters,
            &counters,
            batch,
            &mut shutdown.clone(),
        )
        .await;
        let committed = matches!(applied, Ok(Applied::Committed));
        consumer.context().in_flight.finish(committed);
        if !committed {
            break;
        }
    }
    stop.store(true, Relaxed);
    consumer.context().in_flight.stopped();
    // The reader's next hand-over fails now, and it ends.
    drop(incoming);
    let read = tokio::task::spawn_blocking(move || reader.join())
        .await
        .map_err(|_| SourceError::ReaderPanicked)?
        .map_err(|_| SourceError::ReaderPanicked)?;
    applied?;
    read?;
    let consumer = Arc::clone(&consumer);
    tokio::task::spawn_blocking(move || final_commit(&consumer))
        .await
        .map_err(|_| SourceError::ReaderPanicked)??;
    tracing::info!("kafka source stopped");
    Ok(())
}

/// How long a stopping source keeps trying to commit what it applied.
const FINAL_COMMIT_FOR: Duration = Duration::from_secs(15);

/// A last synchronous commit, so the group's next owner starts exactly after us. A
/// group in the middle of a rebalance refuses commits (a new generation, a rebalance
/// in progress) until this member has polled and joined the new generation: poll
/// (the records it returns are not applied, and so not committed either) and try
/// again, for [`FINAL_COMMIT_FOR`]. Blocking.
fn final_commit(consumer: &SourceConsumer) -> Result<(), SourceError> {
    let deadline = Instant::now() + FINAL_COMMIT_FOR;
    loop {
        let offsets = consumer.context().commits.offsets(None);
        if offsets.count() == 0 {
            return Ok(());
        }
        match consumer.commit(&offsets, CommitMode::Sync) {
            Ok(()) => return Ok(()),
            Err(error) if Instant::now() < deadline => {
                tracing::info!(%error, "kafka final commit refused; polling the group and trying again");
                let until = Instant::now() + Duration::from_millis(200);
                while Instant::now() < until {
                    let _unapplied = consumer.poll(Duration::from_millis(50));
                }
            }
            Err(error) => return Err(error.into()),
        }
    }
}

/// The reader stage (its own thread): polls, decodes and aligns records, hands the
/// batches that may go to the applier, pauses and resumes partitions, and commits
/// again what the broker has not confirmed. Ends when `stop` turns true or the applier
/// is gone.
fn read(
    consumer: &SourceConsumer,
    settings: &KafkaSettings,
    slack_ms: i64,
    counters: &SourceCounters,
    batches: &tokio::sync::mpsc::Sender<Vec<(Partition, Received)>>,
    stop: &AtomicBool,
) -> Result<(), SourceError> {
    let pause_at = settings.batch_records.saturating_mul(10).max(1_000);
    let mut aligner: Aligner<Partition, Received> = Aligner::new(slack_ms, IDLE_AFTER, pause_at);
    let topics: Vec<Arc<str>> = settings
        .topics
        .iter()
        .map(|t| Arc::from(t.as_str()))
        .collect();
    let mut last_report = Instant::now();
    let mut last_commit_check = Instant::now();
    while !stop.load(Relaxed) {
        // The first record waits up to RECEIVE_WAIT, the rest of a batch BATCH_WAIT.
        let mut wait = RECEIVE_WAIT;
        let mut taken = 0;
        while taken < settings.batch_records {
            let polled = consumer.poll(wait);
            // Assignments and revocations the poll's callbacks saw come first: a record
            // is only taken from a partition that is ours now.
            take_changes(consumer, &mut aligner);
            match polled {
                Some(Ok(message)) => {
                    counters.health.received();
                    let key = (interned(&topics, message.topic()), message.partition());
                    if !aligner.holds(&key) {
                        // Fetched before its partition was taken from us: its new
                        // owner reads it from the offset we committed.
                        counters.not_ours();
                        continue;
                    }
                    let message = message.detach();
                    let event = super::decode::event(message.payload(), settings.format);
                    let time = event.as_ref().ok().map(|e| e.event_time_ms);
                    aligner.push(key, time, (message, event), Instant::now());
                    taken += 1;
                }
                Some(Err(KafkaError::PartitionEOF(partition))) => {
                    counters.health.received();
                    // librdkafka names only the partition number: every topic's lane
                    // of that number is treated as caught up until it receives again.
                    for topic in &topics {
                        aligner.reached_end(&(Arc::clone(topic), partition));
                    }
                }
                Some(Err(error)) => {
                    tracing::warn!(%error, "kafka receive failed; librdkafka retries");
                    break;
                }
                None => break,
            }
            wait = BATCH_WAIT;
        }
        // Revocations seen in the last poll leave the aligner before anything goes.
        take_changes(consumer, &mut aligner);
        // Everything that may go now, one durable batch at a time.
        loop {
            let (released, flow) = aligner.release(settings.batch_records, Instant::now());
            apply_flow(consumer, flow)?;
            if released.is_empty() {
                break;
            }
            consumer.context().in_flight.handed_over();
            if batches.blocking_send(released).is_err() {
                // The applier stopped (an error, or shutdown): nothing more goes.
                return Ok(());
            }
        }
        counters.set_buffered(aligner.buffered());
        // A commit that failed (the group was rebalancing, the coordinator moved) is
        // made again, or the group's next owner would apply those records a second time.
        if last_commit_check.elapsed() >= RECOMMIT_AFTER {
            last_commit_check = Instant::now();
            if consumer.context().commits.behind() {
                let offsets = consumer.context().commits.offsets(None);
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
    Ok(())
}

/// The shared name of `topic` (no allocation per record).
fn interned(topics: &[Arc<str>], topic: &str) -> Arc<str> {
    topics
        .iter()
        .find(|known| ***known == *topic)
        .map_or_else(|| Arc::from(topic), Arc::clone)
}

fn take_changes(consumer: &SourceConsumer, aligner: &mut Aligner<Partition, Received>) {
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

fn apply_flow(consumer: &SourceConsumer, flow: Flow<Partition>) -> Result<(), KafkaError> {
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
    store: &Arc<FeatureStore>,
    settings: &KafkaSettings,
    consumer: &SourceConsumer,
    dead_letters: &FutureProducer,
    counters: &SourceCounters,
    released: Vec<(Partition, Received)>,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
) -> Result<Applied, SourceError> {
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
    let Some(outcome) = ingest_through_stalls(store, events, counters, shutdown).await? else {
        return Ok(Applied::Stopped);
    };
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
    if !dead_letter_all(dead_letters, settings, counters, &refused, shutdown).await {
        return Ok(Applied::Stopped);
    }
    counters.count(records, outcome.accepted, outcome.duplicates, &refused);
    commit(consumer, next)?;
    Ok(Applied::Committed)
}

/// How far [`apply`] got with a batch.
#[derive(Debug, PartialEq, Eq)]
enum Applied {
    /// Applied, dead letters written, offsets committed.
    Committed,
    /// The source was told to stop while it waited (for the log, or the dead-letter
    /// topic): the batch's offsets are not committed, its records are read again by
    /// whoever consumes next, and the engine's dedup keeps what was applied once.
    Stopped,
}

/// The first pause before the dead-letter topic is tried again; it doubles up to
/// [`MAX_DEAD_LETTER_PAUSE`].
const FIRST_DEAD_LETTER_PAUSE: Duration = Duration::from_millis(200);
const MAX_DEAD_LETTER_PAUSE: Duration = Duration::from_secs(10);

/// Applies `events` through the store; while the log cannot write (a full disk) the
/// batch waits, with the source NOT_SERVING, and is submitted again, as gRPC ingest
/// resumes by itself. `None`: told to stop while waiting.
async fn ingest_through_stalls(
    store: &Arc<FeatureStore>,
    mut events: Vec<RawEvent>,
    counters: &SourceCounters,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
) -> Result<Option<BatchOutcome>, SourceError> {
    loop {
        match store.ingest_unless_stalled(events).await? {
            Ok(outcome) => return Ok(Some(outcome)),
            Err(refused_whole) => events = refused_whole,
        }
        tracing::warn!(
            events = events.len(),
            "kafka source paused: the event log cannot write; the batch is submitted again when it can"
        );
        counters.health.set_waiting(true);
        let writable = tokio::select! {
            writable = store.wait_writable() => writable,
            _ = shutdown.wait_for(|stop| *stop) => return Ok(None),
        };
        counters.health.set_waiting(false);
        writable?;
        tracing::info!("kafka source resumed: the event log writes again");
    }
}

/// Writes every refused record to the dead-letter topic. While the topic cannot be
/// written (unreachable, not authorised, missing) the source pauses, NOT_SERVING, and
/// tries the failed ones again: a record is never dropped and the source never stops
/// for good. A record may reach the topic twice if a failed delivery was in fact
/// stored. `false`: told to stop while waiting.
async fn dead_letter_all(
    producer: &FutureProducer,
    settings: &KafkaSettings,
    counters: &SourceCounters,
    refused: &[(&OwnedMessage, Refused)],
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
) -> bool {
    // Copied only once some failed: most batches go at the first try.
    let mut pending: Option<Vec<(&OwnedMessage, Refused)>> = None;
    let mut pause = FIRST_DEAD_LETTER_PAUSE;
    loop {
        let sending = pending.as_deref().unwrap_or(refused);
        let failed = dead_letter::send_all(producer, &settings.dead_letter_topic, sending).await;
        let Some((_, error)) = failed.first() else {
            counters.health.set_waiting(false);
            return true;
        };
        tracing::warn!(
            %error,
            failed = failed.len(),
            topic = %settings.dead_letter_topic,
            retry_ms = pause.as_millis() as u64,
            "kafka source paused: cannot write to the dead-letter topic; trying again"
        );
        counters.health.set_waiting(true);
        pending = Some(
            failed
                .into_iter()
                .map(|(index, _)| sending[index].clone())
                .collect(),
        );
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            _ = shutdown.wait_for(|stop| *stop) => return false,
        }
        pause = (pause * 2).min(MAX_DEAD_LETTER_PAUSE);
    }
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
fn commit(consumer: &SourceConsumer, next: BTreeMap<Partition, i64>) -> Result<(), KafkaError> {
    let mut offsets = TopicPartitionList::new();
    for ((topic, partition), offset) in &next {
        offsets.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
    }
    consumer.context().commits.applied(next);
    // Async: a lost commit only means records already applied are read again, and the
    // engine's dedup turns them into duplicates.
    consumer.commit(&offsets, CommitMode::Async)
}
