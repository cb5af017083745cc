//! The embedded feature store: the feature engine, fed through the durable event log.
//! `ingest` validates a batch, then, as the engine's one writer, logs and applies the
//! accepted events in one order, then waits, no longer the writer, until they are
//! durable. Reads go on meanwhile, each entity under its shard's lock, and see only
//! durable events. `open` recovers from the newest valid snapshot plus the log after it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::config::Settings;
use crate::definitions::Definitions;
use crate::events::{Event, Limits, RawEvent, Refusal, validate};
use crate::features::recovery::replay_logged;
use crate::features::{
    Admission, Counters, DEDUP_SHARDS, Engine, EngineSettings, EngineView, EngineWriter,
    FeatureRead, ReadError, SHARDS,
};
use crate::log::{self, EventLog, LogError};
use crate::time::now_ms;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Lock(#[from] crate::datadir::LockError),
    #[error("batch has {got} events; at most {max} are allowed")]
    BatchTooLarge { got: usize, max: usize },
    /// The writer thread could not start, or stopped (a batch panicked on it).
    #[error("applying the batch failed: {0}")]
    Task(String),
}

/// The ack of one batch: what was applied, what was a repeat, what was refused and why.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BatchOutcome {
    pub accepted: u32,
    pub duplicates: u32,
    pub refused: Vec<(usize, Refusal)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RecoveryReport {
    pub snapshot_seq: Option<u64>,
    pub replayed: u64,
    /// Threads that applied the replayed events (0: the one reading the log).
    pub replay_threads: usize,
    pub truncated_bytes: u64,
    pub elapsed: Duration,
}

/// Feature values by name for one entity.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedFeatures {
    pub known: bool,
    pub as_of_ms: i64,
    pub values: Vec<(String, Option<f64>)>,
    /// The values of the list features read, newest first, by name.
    pub lists: Vec<(String, Vec<String>)>,
}

/// Whether a recorded call's events are new or were all admitted before (a retry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    First,
    Repeat,
}

/// A batch applied and logged but maybe not durable yet.
#[derive(Debug)]
pub struct Submitted {
    outcome: BatchOutcome,
    wait_for: Option<u64>,
}

pub struct FeatureStore {
    /// Shared, not behind a lock of ours: the engine locks each shard it touches and
    /// lets one writer at a time admit and apply (see [`Engine::writer`]).
    engine: Engine,
    log: EventLog,
    definitions: Arc<Definitions>,
    limits: Limits,
    max_batch_events: usize,
    data_dir: PathBuf,
    snapshot_keep: usize,
    /// Serialises snapshot writers; remembers the sequence of the last one.
    last_snapshot_seq: Mutex<u64>,
    /// Events refused as invalid since start (late ones are counted by the engine).
    invalid_events: std::sync::atomic::AtomicU64,
    /// This process owns the data dir while the store is open.
    _lock: crate::datadir::DataDirLock,
    /// Answers of recorded calls by event id, for their retries.
    answers: crate::answers::RecentAnswers,
    /// Whose turn it is at the engine writer, among async callers: they wait here
    /// (yielding) rather than on the writer's mutex (blocking a runtime thread while a
    /// 10,000-event batch is applied).
    writer_turn: tokio::sync::Mutex<()>,
    /// Where batches are validated and applied: a thread of its own, off the request
    /// runtime.
    writer_thread: crate::background::Background,
}

/// The batch writer's priority. Normal: at nice 10 the Score p99 beside two producers
/// of 10,000-event batches did not move (7.6-8.8x alone either way: what remains on the
/// runtime is decoding their messages), and durable IngestBatch x100 fell to 0.6 of the
/// build before (`cargo bench --bench score_load`, same run).
const WRITER_NICE: i32 = 0;

impl FeatureStore {
    pub fn open(
        settings: &Settings,
        definitions: Arc<Definitions>,
    ) -> Result<(FeatureStore, RecoveryReport), StoreError> {
        let started = Instant::now();
        // Before anything is read: a second writer would interleave its records with ours.
        let lock = crate::datadir::DataDirLock::acquire(&settings.data_dir)?;
        let engine_settings = EngineSettings::from(&settings.ingest);
        let limits = Limits::from(&settings.ingest);
        let snapshots = log::snapshots_dir(&settings.data_dir);
        let stale = log::remove_stale_temporaries(&snapshots)?;
        if stale > 0 {
            tracing::info!(stale, "removed temp files of interrupted snapshots");
        }
        let restored = log::load_newest_snapshot(&snapshots, |payload| {
            Engine::restore(Arc::clone(&definitions), engine_settings, payload)
        })?;
        let snapshot_seq = restored.as_ref().map(|(seq, _)| *seq);
        let mut engine = match restored {
            Some((_, engine)) => engine,
            None => Engine::new(Arc::clone(&definitions), engine_settings),
        };

        let segments = log::segments_dir(&settings.data_dir);
        // Threads only for a replay from the start. After a snapshot the entities were
        // allocated by this thread, and workers growing them move each into their own
        // malloc arena: measured with 10M logged events and a snapshot 1M back (`cargo
        // bench --bench restart`), the 1M-event tail took 1.6-2x longer on two threads.
        let threads = match snapshot_seq {
            Some(_) => 0,
            None => settings.log.replay_threads(),
        };
        let (replay, replayed) = replay_logged(&engine, &limits, threads, |apply| {
            log::replay(
                &segments,
                engine.applied_seq(),
                log::TailDamage::Truncate,
                apply,
            )
        })?;
        if replayed.skipped > 0 {
            tracing::warn!(
                skipped = replayed.skipped,
                "logged events no longer valid under the current definitions were skipped"
            );
        }
        let next_seq = replay
            .last_seq
            .max(engine.applied_seq())
            .max(replay.acked_seq)
            + 1;
        let log = EventLog::open(
            &segments,
            next_seq,
            settings.log.segment_bytes,
            settings.log.fsync,
            &settings.ingest.cpus,
        )?;
        // Replayed events are durable; from here on reads see only what the log has made
        // durable, so an event is never visible before it is acknowledged.
        engine.hide_undurable(log.durable_seq());
        let report = RecoveryReport {
            snapshot_seq,
            replayed: replay.replayed,
            replay_threads: threads,
            truncated_bytes: replay.truncated_bytes,
            elapsed: started.elapsed(),
        };
        let store = FeatureStore {
            engine,
            log,
            definitions,
            limits,
            max_batch_events: settings.ingest.max_batch_events,
            data_dir: settings.data_dir.clone(),
            snapshot_keep: settings.snapshot.keep,
            last_snapshot_seq: Mutex::new(snapshot_seq.unwrap_or(0)),
            invalid_events: Default::default(),
            _lock: lock,
            answers: crate::answers::RecentAnswers::new(settings.ingest.recorded_answers),
            writer_turn: tokio::sync::Mutex::new(()),
            writer_thread: crate::background::Background::start_on(
                "streamscore-writer",
                WRITER_NICE,
                &settings.ingest.cpus,
            )
            .map_err(|error| {
                StoreError::Task(format!("cannot start the writer thread: {error}"))
            })?,
        };
        Ok((store, report))
    }

    pub fn definitions(&self) -> &Arc<Definitions> {
        &self.definitions
    }

    /// Validates, applies and logs a batch; returns once every accepted event is durable.
    pub async fn ingest(&self, events: &[RawEvent]) -> Result<BatchOutcome, StoreError> {
        let submitted = self.submit(events)?;
        self.wait_durable(submitted).await
    }

    /// [`FeatureStore::ingest`] off the runtime, for a source that must neither drop a batch
    /// nor stop (Kafka): while the log cannot write (a full disk) the batch is refused
    /// whole and handed back (`Err`), to be submitted again after
    /// [`FeatureStore::wait_writable`].
    pub async fn ingest_unless_stalled(
        self: &Arc<Self>,
        events: Vec<RawEvent>,
    ) -> Result<Result<BatchOutcome, Vec<RawEvent>>, StoreError> {
        let (submitted, events) = self.submit_handing_back(events).await?;
        match submitted {
            Err(StoreError::Log(LogError::Stalled)) => Ok(Err(events)),
            submitted => self.wait_durable(submitted?).await.map(Ok),
        }
    }

    /// Waits until the log takes events again (see [`FeatureStore::log_stalled`]).
    pub async fn wait_writable(&self) -> Result<(), StoreError> {
        Ok(self.log.wait_writable().await?)
    }

    /// [`FeatureStore::submit`] on the writer thread, in turn with the other async
    /// submitters (so batches of one caller keep their order), so a `Score` never waits
    /// behind a batch it does not read. The events come back with the result: freeing
    /// a 10,000-event batch (a map per event) takes milliseconds that neither the writer
    /// (measured: 20% of large-batch ingest) nor a runtime thread should spend, so the
    /// caller chooses where (see `IngestDecoder::dispose`).
    pub async fn submit_handing_back(
        self: &Arc<Self>,
        events: Vec<RawEvent>,
    ) -> Result<(Result<Submitted, StoreError>, Vec<RawEvent>), StoreError> {
        let _turn = self.writer_turn.lock().await;
        let store = Arc::clone(self);
        self.writer_thread
            .run(move || (store.submit(&events), events))
            .await
            .map_err(|stopped| StoreError::Task(stopped.to_string()))
    }

    /// The outcome a submitted batch will be acked with, before it is durable.
    pub fn outcome_of(submitted: &Submitted) -> &BatchOutcome {
        &submitted.outcome
    }

    /// Waits until a submitted batch is durable and returns its outcome (the ack).
    pub async fn wait_durable(&self, submitted: Submitted) -> Result<BatchOutcome, StoreError> {
        if let Some(seq) = submitted.wait_for {
            self.log.wait_durable(seq).await?;
        }
        Ok(submitted.outcome)
    }

    /// The synchronous half of [`FeatureStore::ingest`]: validates, applies and logs the
    /// batch now, so batches of one stream are applied in the order they arrived even
    /// while earlier ones still wait for the disk.
    pub fn submit(&self, events: &[RawEvent]) -> Result<Submitted, StoreError> {
        let validated = self.validate_batch(events)?;
        let mut writer = self.engine.writer();
        self.submit_locked(&mut writer, events, validated)
    }

    /// Runs `read` on the engine, then submits `events`, both as the one writer, so
    /// the read sees every event submitted before it and none of those after (a recorded
    /// score: the k-th of N parallel scores for one card sees the k-1 before it).
    /// Nothing is submitted when `read` fails.
    ///
    /// A retry (every event already admitted) is not read again: its features would
    /// count its first attempt. `read` is told so ([`Attempt::Repeat`]) and answers from
    /// [`FeatureStore::recall_answer`], or fails.
    ///
    /// Async callers wait for their turn at the writer without holding a runtime
    /// thread; the read and the one event's apply are short and run inline.
    pub async fn read_then_submit<T, E>(
        &self,
        events: &[RawEvent],
        read: impl FnOnce(&EngineView<'_>, Attempt) -> Result<T, E>,
    ) -> Result<Result<(T, Submitted), E>, StoreError> {
        let _turn = self.writer_turn.lock().await;
        let validated = self.validate_batch(events)?;
        let mut writer = self.engine.writer();
        let repeat = !validated.is_empty()
            && validated
                .iter()
                .all(|event| event.as_ref().is_ok_and(|event| writer.is_duplicate(event)));
        let attempt = if repeat {
            Attempt::Repeat
        } else {
            Attempt::First
        };
        let value = match read(&writer.view_unacked(), attempt) {
            Ok(value) => value,
            Err(error) => return Ok(Err(error)),
        };
        let submitted = self.submit_locked(&mut writer, events, validated)?;
        Ok(Ok((value, submitted)))
    }

    /// Keeps the answer to the recorded call for `event_id`; call it from inside
    /// [`FeatureStore::read_then_submit`]'s `read`, so a retry can never find the event
    /// admitted and its answer not yet kept.
    pub fn remember_answer(&self, event_id: &str, answer: crate::answers::Answer) {
        self.answers.remember(event_id, answer);
    }

    /// The answer kept for a recorded call's event id.
    pub fn recall_answer(&self, event_id: &str) -> Option<crate::answers::Answer> {
        self.answers.recall(event_id)
    }

    /// Checks a batch before the lock is taken (validation needs no engine).
    fn validate_batch<'a>(
        &self,
        events: &'a [RawEvent],
    ) -> Result<Vec<Result<Event<'a>, Refusal>>, StoreError> {
        if events.len() > self.max_batch_events {
            return Err(StoreError::BatchTooLarge {
                got: events.len(),
                max: self.max_batch_events,
            });
        }
        let now = now_ms();
        Ok(events
            .iter()
            .map(|raw| validate(&self.definitions, &self.limits, raw, Some(now)))
            .collect())
    }

    fn submit_locked(
        &self,
        engine: &mut EngineWriter<'_>,
        events: &[RawEvent],
        validated: Vec<Result<Event<'_>, Refusal>>,
    ) -> Result<Submitted, StoreError> {
        // Checked once per batch, so a batch is either taken whole (and acked once the
        // log writes again) or refused whole while the log cannot write.
        if self.log.stalled() {
            return Err(LogError::Stalled.into());
        }
        let mut outcome = BatchOutcome::default();
        let mut last_seq = None;
        for (index, (raw, checked)) in events.iter().zip(validated).enumerate() {
            let event = match checked {
                Ok(event) => event,
                Err(refusal) => {
                    self.invalid_events
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    outcome.refused.push((index, refusal));
                    continue;
                }
            };
            match engine.admit(&event) {
                Admission::Apply => {
                    let seq = match self.log.append(raw) {
                        Ok(seq) => seq,
                        Err(error) => {
                            // What this batch appended before stays whole on disk.
                            self.log.flush();
                            return Err(error.into());
                        }
                    };
                    engine.apply(&event, seq);
                    outcome.accepted += 1;
                    last_seq = Some(seq);
                }
                Admission::Duplicate => outcome.duplicates += 1,
                Admission::Refused(refusal) => outcome.refused.push((index, refusal)),
            }
        }
        // One flush per batch: the log writer commits it (and whatever else arrived
        // meanwhile) with one fsync.
        self.log.flush();
        // A duplicate's original may still be on its way to disk in another batch; its
        // ack must not run ahead of that.
        if outcome.duplicates > 0 {
            last_seq = Some(self.log.last_seq());
        }
        Ok(Submitted {
            outcome,
            wait_for: last_seq,
        })
    }

    /// Reads features of one entity by name (all of the entity type's when `names` is
    /// empty) as of `as_of_ms`, or now.
    pub fn read(
        &self,
        entity_type: &str,
        id: &str,
        names: &[String],
        as_of_ms: Option<i64>,
    ) -> Result<NamedFeatures, ReadError> {
        let engine = self.engine.view();
        let (entity, ids) = engine.resolve(entity_type, names)?;
        let FeatureRead {
            known,
            as_of_ms,
            values,
        } = engine.read(entity, id, &ids, as_of_ms.unwrap_or_else(now_ms))?;
        let values = values
            .into_iter()
            .map(|(id, value)| (self.definitions.features[id].name.clone(), value))
            .collect();
        let lists =
            crate::features::list_items(&engine, &self.definitions, entity, id, &ids, as_of_ms)?;
        Ok(NamedFeatures {
            known,
            as_of_ms,
            values,
            lists,
        })
    }

    /// Checks `raw` as ingest would (definitions, limits, time), without applying it.
    pub fn check(&self, raw: &RawEvent) -> Result<(), Refusal> {
        validate(&self.definitions, &self.limits, raw, Some(now_ms())).map(|_| ())
    }

    /// A copy of one entity's state as held now, or `None` when it is not held (what
    /// an aggregator would write to the online store for it).
    pub fn entity_state(
        &self,
        entity: crate::definitions::EntityTypeId,
        id: &str,
    ) -> Option<crate::features::EntityState> {
        self.engine.entity_state(entity, id)
    }

    /// The newest event time applied.
    pub fn watermark_ms(&self) -> i64 {
        self.engine.watermark_ms()
    }

    /// Runs `f` on a view of what is acknowledged now (for reads that need several
    /// entities: they are read at one cut of the log).
    pub fn with_engine<T>(&self, f: impl FnOnce(&EngineView<'_>) -> T) -> T {
        f(&self.engine.view())
    }

    /// Events refused as invalid since start.
    pub fn invalid_events(&self) -> u64 {
        self.invalid_events
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn counters(&self) -> Counters {
        self.engine.counters()
    }

    /// Frees expired entities and dedup ids past the horizon; returns how many entities.
    /// One shard at a time, each under its own write lock, so reads and ingest go on
    /// beside it. Blocking: call from a blocking thread.
    pub fn evict_expired(&self) -> usize {
        self.engine.evict_expired()
    }

    /// Events applied since the last snapshot.
    pub fn events_since_snapshot(&self) -> u64 {
        let last = *self.last_snapshot_seq.lock();
        self.engine.applied_seq().saturating_sub(last)
    }

    /// Snapshots the engine if anything was applied since the last snapshot. Blocking:
    /// call from a blocking thread. The engine is copied one shard at a time, each under
    /// its own read lock, so ingest and scoring go on beside it.
    pub fn snapshot(&self) -> Result<Option<PathBuf>, StoreError> {
        let mut last = self.last_snapshot_seq.lock();
        if self.engine.applied_seq() == *last {
            return Ok(None);
        }
        let mut payload = Vec::new();
        let seq = self
            .engine
            .snapshot_header(&mut payload)
            .map_err(LogError::Encode)?;
        let mut scratch = Vec::new();
        for table in 0..self.engine.table_count() {
            for shard in 0..SHARDS {
                // Encoded into a small buffer under the lock, appended after: growing
                // the gigabyte payload can copy all of it, and must not hold the lock.
                scratch.clear();
                self.engine
                    .snapshot_shard(table, shard, &mut scratch)
                    .map_err(LogError::Encode)?;
                payload.extend_from_slice(&scratch);
                // Background work: let scoring and ingest threads run between shards.
                std::thread::yield_now();
            }
        }
        for shard in 0..DEDUP_SHARDS {
            scratch.clear();
            self.engine
                .snapshot_dedup_shard(shard, &mut scratch)
                .map_err(LogError::Encode)?;
            payload.extend_from_slice(&scratch);
        }
        // Shards copied late may hold events up to the last one logged (an event is
        // logged before it is applied): the snapshot must never be ahead of the durable
        // log it summarises.
        let copied_to = self.log.last_seq();
        self.log.wait_durable_blocking(copied_to)?;
        let path = log::write_snapshot(
            &log::snapshots_dir(&self.data_dir),
            seq,
            &payload,
            self.snapshot_keep,
        )?;
        *last = seq;
        tracing::info!(seq, copied_to, bytes = payload.len(), path = %path.display(), "engine snapshot written");
        Ok(Some(path))
    }

    /// Whether the log cannot write right now and is retrying (ingest is refused).
    pub fn log_stalled(&self) -> bool {
        self.log.stalled()
    }

    /// Group commits of the log since start (one write and fsync each).
    pub fn log_commits(&self) -> u64 {
        self.log.commits()
    }

    /// Flushes the log, writes a final snapshot and stops the log writer. A log that
    /// cannot write is not waited for: what it holds was never acknowledged.
    pub fn close(&self) -> Result<(), StoreError> {
        if self.log.stalled() {
            tracing::error!(
                "closing while the event log cannot write: unacknowledged events in its buffer are dropped, no final snapshot"
            );
            self.log.close();
            return Err(LogError::Stalled.into());
        }
        self.log.wait_durable_blocking(self.log.last_seq())?;
        self.snapshot()?;
        self.log.close();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::log::FsyncPolicy;

    fn payment(n: usize, user: &str, card: &str, time_ms: i64) -> RawEvent {
        RawEvent {
            event_id: format!("p{n}"),
            event_type: "payment".into(),
            event_time_ms: time_ms,
            entities: BTreeMap::from([
                ("user".into(), user.to_string()),
                ("card".into(), card.to_string()),
            ]),
            numbers: BTreeMap::from([("amount".into(), 10.0)]),
            strings: BTreeMap::new(),
        }
    }

    /// Every payment names user uK and card cK together, so at any one cut of the log
    /// both have counted the same payments. The writer applies an event to the user's
    /// shard and then the card's, each under its own lock; a reader between the two
    /// must not see the event in one and not the other. Each pair has fewer payments
    /// than an entity keeps apart ([`crate::features::MAX_PENDING_EVENTS`]), so none is
    /// folded into tiles before it is durable.
    const PAIRS: usize = 500;

    #[test]
    fn entities_read_through_one_view_see_the_same_events() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut settings = Settings {
            data_dir: dir.path().to_path_buf(),
            ..Settings::default()
        };
        settings.log.fsync = FsyncPolicy::Never;
        let (store, _) =
            FeatureStore::open(&settings, Arc::new(Definitions::default_shop())).expect("store");
        let names = |name: &str| vec![format!("{name}_7d")];
        let (user, user_count) = store
            .engine
            .resolve("user", &names("user_payments"))
            .expect("user_payments_7d");
        let (card, card_count) = store
            .engine
            .resolve("card", &names("card_payments"))
            .expect("card_payments_7d");
        let done = AtomicBool::new(false);
        let start = now_ms();
        let (reads, mismatches) = std::thread::scope(|scope| {
            scope.spawn(|| {
                for batch in 0..200 {
                    let events: Vec<RawEvent> = (0..20)
                        .map(|k| {
                            let n = batch * 20 + k;
                            let pair = n % PAIRS;
                            payment(
                                n,
                                &format!("u{pair}"),
                                &format!("c{pair}"),
                                start + n as i64,
                            )
                        })
                        .collect();
                    let submitted = store.submit(&events).expect("ingest");
                    assert_eq!(submitted.outcome.accepted, 20);
                }
                store
                    .log
                    .wait_durable_blocking(store.log.last_seq())
                    .expect("durable");
                done.store(true, Ordering::Release);
            });
            let (mut reads, mut mismatches) = (0u64, Vec::new());
            loop {
                let finished = done.load(Ordering::Acquire);
                let (u, c, v) = store.with_engine(|view| {
                    // After every event: no read is refused for events after it.
                    let at = start + 3_600_000;
                    let read = |entity, id, features: &[usize]| {
                        view.read(entity, id, features, at)
                            .expect("readable")
                            .values[0]
                            .1
                    };
                    let pair = reads as usize % PAIRS;
                    (
                        read(user, &format!("u{pair}"), &user_count),
                        read(card, &format!("c{pair}"), &card_count),
                        (view.visible_through(), view.applied_seq(), at),
                    )
                });
                reads += 1;
                if u != c {
                    mismatches.push((u, c, v));
                }
                if finished {
                    break (reads, mismatches);
                }
            }
        });
        assert!(
            mismatches.is_empty(),
            "{} of {reads} reads, the first: {:?}",
            mismatches.len(),
            &mismatches[..mismatches.len().min(3)]
        );
        let last = store.with_engine(|view| {
            (0..PAIRS)
                .map(|pair| {
                    view.read(user, &format!("u{pair}"), &user_count, start + 3_600_000)
                        .expect("readable")
                        .values[0]
                        .1
                        .unwrap_or(0.0)
                })
                .sum::<f64>()
        });
        assert_eq!(
            last, 4000.0,
            "after the writer is done, every payment is seen"
        );
    }
}
