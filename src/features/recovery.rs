//! Replaying the log on several threads at start.
//!
//! An event changes each entity it names through that entity's state and the watermark
//! at the event alone, and the entities of one shard are never touched by another. So
//! each worker applies every event to the entities of its own shards (shard index modulo
//! the number of workers), keeping the watermark itself as it would have stood at each
//! event, in log order. The state built is the one a single thread would have built,
//! bit for bit. One thread reads and checks the log, keeps the dedup set, the counters
//! and the watermark, and hands the events to every worker in chunks.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, SyncSender, channel, sync_channel};

use crate::events::{Limits, RawEvent, validate};

use super::engine::{Engine, EngineWriter};

/// Events per chunk handed to the workers: large enough that the hand-over costs little
/// per event, small enough that the queues stay a few MiB.
const CHUNK_EVENTS: usize = 1024;
/// Chunks queued per worker: the reader runs at most this far ahead of the slowest.
const QUEUED_CHUNKS: usize = 4;

type Chunk = Arc<Vec<(u64, RawEvent)>>;

/// What a replay of logged events did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Replayed {
    /// Events handed to the workers.
    pub applied: u64,
    /// Logged events no longer valid under the current definitions, left out.
    pub skipped: u64,
}

/// Applies the events `read` hands over (sequence number and event, in log order) to
/// `engine` with `workers` threads besides the caller's, which runs `read` (0: all on
/// the caller's). Returns what `read` returned once every worker has finished.
pub fn replay_logged<T, E>(
    engine: &Engine,
    limits: &Limits,
    workers: usize,
    read: impl FnOnce(&mut dyn FnMut(u64, RawEvent)) -> Result<T, E>,
) -> Result<(T, Replayed), E> {
    let start_watermark = engine.watermark_ms();
    std::thread::scope(|scope| {
        // Chunks come back once applied, so their events are freed by the thread that
        // allocated them (a free into another thread's malloc arena takes its lock).
        let (done, applied_chunks) = channel::<Chunk>();
        let mut senders: Vec<SyncSender<Chunk>> = Vec::with_capacity(workers);
        let mut handles = Vec::with_capacity(workers);
        for part in 0..workers {
            let (sender, receiver) = sync_channel(QUEUED_CHUNKS);
            let done = done.clone();
            let worker = std::thread::Builder::new()
                .name(format!("replay-{part}"))
                .spawn_scoped(scope, move || {
                    let work = Part {
                        engine,
                        limits,
                        part: (part, workers),
                        // The first worker also keeps the dedup set, the counters and
                        // the watermark, as one thread would have in log order.
                        admits: part == 0,
                    };
                    work.apply(receiver, &done, start_watermark)
                });
            match worker {
                Ok(handle) => {
                    senders.push(sender);
                    handles.push(handle);
                }
                Err(error) => {
                    // Each worker owns a fixed part of the shards, so all start or none
                    // is used: those started end at once, and this thread applies all.
                    tracing::warn!(%error, "a replay thread could not start; replaying on one thread");
                    senders.clear();
                    // The scope joins them once their queues, closed here, are empty.
                    handles.clear();
                    break;
                }
            }
        }
        drop(done);
        let inline = senders.is_empty().then_some(Part {
            engine,
            limits,
            part: (0, 1),
            admits: true,
        });
        let mut inline_writer = inline.is_some().then(|| engine.writer());
        let mut inline_state = Progress::new(start_watermark);
        let mut chunk = Vec::with_capacity(CHUNK_EVENTS);
        let outcome = read(&mut |seq, raw| {
            if let Some(work) = &inline {
                work.apply_one(seq, &raw, inline_writer.as_mut(), &mut inline_state);
                return;
            }
            chunk.push((seq, raw));
            if chunk.len() == CHUNK_EVENTS {
                let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK_EVENTS));
                hand_out(&senders, full);
                // Free what the workers are done with.
                while applied_chunks.try_recv().is_ok() {}
            }
        });
        if !chunk.is_empty() {
            hand_out(&senders, chunk);
        }
        drop(inline_writer);
        // Closing the queues ends each worker once it has applied what it holds.
        drop(senders);
        while applied_chunks.recv().is_ok() {}
        let mut replayed = Replayed {
            applied: inline_state.applied,
            skipped: inline_state.skipped,
        };
        let mut last_seq = inline_state.last_seq;
        for handle in handles {
            // A worker's panic is passed on, as the scope would.
            let progress = handle
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            if let Some(progress) = progress {
                replayed = Replayed {
                    applied: progress.applied,
                    skipped: progress.skipped,
                };
                last_seq = progress.last_seq;
            }
        }
        outcome.map(|value| (value, replayed, last_seq))
    })
    .map(|(value, replayed, last_seq)| {
        engine.applied_through(last_seq);
        (value, replayed)
    })
}

fn hand_out(senders: &[SyncSender<Chunk>], chunk: Vec<(u64, RawEvent)>) {
    let chunk = Arc::new(chunk);
    for sender in senders {
        // A worker gone has panicked; joining it passes that on.
        let _ = sender.send(Arc::clone(&chunk));
    }
}

/// Where one applier stands in the log.
struct Progress {
    watermark_ms: i64,
    key: String,
    applied: u64,
    skipped: u64,
    last_seq: u64,
}

impl Progress {
    fn new(watermark_ms: i64) -> Progress {
        Progress {
            watermark_ms,
            key: String::new(),
            applied: 0,
            skipped: 0,
            last_seq: 0,
        }
    }
}

/// One applier: the entities of its part of the shards, and, for one of them, the
/// admission of every event.
struct Part<'e> {
    engine: &'e Engine,
    limits: &'e Limits,
    part: (usize, usize),
    admits: bool,
}

impl Part<'_> {
    /// Applies every chunk it is handed, handing each back when done. Returns what it
    /// counted if it admits.
    fn apply(
        &self,
        chunks: Receiver<Chunk>,
        done: &Sender<Chunk>,
        start_watermark: i64,
    ) -> Option<Progress> {
        let mut progress = Progress::new(start_watermark);
        let mut writer = self.admits.then(|| self.engine.writer());
        for chunk in chunks {
            for (seq, raw) in chunk.iter() {
                self.apply_one(*seq, raw, writer.as_mut(), &mut progress);
            }
            // The reader has gone only if it failed; the chunk is then freed here.
            let _ = done.send(chunk);
        }
        self.admits.then_some(progress)
    }

    fn apply_one(
        &self,
        seq: u64,
        raw: &RawEvent,
        writer: Option<&mut EngineWriter<'_>>,
        progress: &mut Progress,
    ) {
        let engine = self.engine;
        // Every logged event was admitted when it arrived; one the current definitions
        // refuse is left out, by every applier alike (the check is deterministic).
        let Ok(event) = validate(engine.definitions(), self.limits, raw, None) else {
            progress.skipped += 1;
            return;
        };
        if let Some(writer) = writer {
            writer.admit_logged(&event);
        }
        progress.applied += 1;
        progress.last_seq = seq;
        progress.watermark_ms = progress.watermark_ms.max(event.time_ms);
        engine.apply_part(
            &event,
            seq,
            progress.watermark_ms,
            &mut progress.key,
            self.part,
        );
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::IngestSettings;
    use crate::definitions::Definitions;
    use crate::features::EngineSettings;
    use crate::simulate::{SimConfig, Simulator};
    use crate::time::{DAY_MS, MINUTE_MS};

    /// The server's defaults (lateness 1 h: the out-of-order events below are within it).
    fn settings() -> EngineSettings {
        EngineSettings::from(&IngestSettings::default())
    }

    fn limits() -> Limits {
        Limits::from(&IngestSettings::default())
    }

    /// A logged history with what replay must get right: events up to 50 minutes out of
    /// order, shoppers gone quiet for 40 days (their windows expire, their first-seen
    /// times stay), and events the definitions no longer accept.
    fn logged_history() -> Vec<(u64, RawEvent)> {
        let config = SimConfig {
            users: 400,
            ..SimConfig::default()
        };
        Simulator::new(config)
            .take(30_000)
            .enumerate()
            .map(|(index, mut raw)| {
                if index >= 12_000 {
                    raw.event_time_ms += 40 * DAY_MS;
                }
                if index % 7 == 3 {
                    raw.event_time_ms -= 50 * MINUTE_MS;
                }
                if index % 997 == 5 {
                    raw.event_type = "retired_type".into();
                }
                (index as u64 + 1, raw)
            })
            .collect()
    }

    /// What the store did before replay had workers: one thread, in log order.
    fn replayed_on_one_thread(history: &[(u64, RawEvent)]) -> Engine {
        let definitions = Arc::new(Definitions::default_shop());
        let mut engine = Engine::new(Arc::clone(&definitions), settings());
        for (seq, raw) in history {
            if let Ok(event) = validate(&definitions, &limits(), raw, None) {
                engine.apply(&event, *seq);
            }
        }
        engine
    }

    fn assert_same_engine(expected: &Engine, got: &Engine, workers: usize) {
        assert_eq!(
            expected.watermark_ms(),
            got.watermark_ms(),
            "{workers} workers"
        );
        assert_eq!(
            expected.applied_seq(),
            got.applied_seq(),
            "{workers} workers"
        );
        assert_eq!(expected.counters(), got.counters(), "{workers} workers");
        for entity in 0..expected.table_count() {
            let ids = expected.entity_ids(entity);
            assert_eq!(ids, got.entity_ids(entity), "{workers} workers");
            for id in &ids {
                // Bytes, not `==`: a slot may hold NaN (a last value never set), and
                // the same bits are what "bit for bit" means.
                let bytes = |engine: &Engine| {
                    postcard::to_allocvec(&engine.entity_state(entity, id)).expect("encode")
                };
                assert_eq!(
                    bytes(expected),
                    bytes(got),
                    "entity {entity} '{id}' with {workers} workers"
                );
            }
        }
    }

    #[test]
    fn workers_build_the_state_one_thread_builds() {
        let history = logged_history();
        let expected = replayed_on_one_thread(&history);
        assert!(
            expected.entity_ids(0).len() > 100,
            "the history names too few users to compare"
        );
        for workers in [0, 1, 2, 3, 5] {
            let engine = Engine::new(Arc::new(Definitions::default_shop()), settings());
            let ((), replayed) = replay_logged(&engine, &limits(), workers, |apply| {
                for (seq, raw) in &history {
                    apply(*seq, raw.clone());
                }
                Ok::<_, ()>(())
            })
            .expect("replay");
            assert_eq!(replayed.applied + replayed.skipped, history.len() as u64);
            assert!(replayed.skipped >= 30, "{replayed:?}");
            assert_same_engine(&expected, &engine, workers);
        }
    }

    #[test]
    fn a_read_that_fails_midway_stops_the_workers_and_is_returned() {
        let history = logged_history();
        let engine = Engine::new(Arc::new(Definitions::default_shop()), settings());
        let outcome = replay_logged(&engine, &limits(), 2, |apply| {
            for (seq, raw) in history.iter().take(5_000) {
                apply(*seq, raw.clone());
            }
            Err::<(), _>("damaged at record 5001")
        });
        assert_eq!(outcome.err(), Some("damaged at record 5001"));
    }
}
