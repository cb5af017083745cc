//! The score sample log: one `Score` in every `every` is written (its event, the input
//! vector, the score and which events the read saw) as a JSON line under
//! `<data_dir>/scores/`, so `streamscore skew` can later re-compute the same vectors
//! from the event history and report where serving and replay disagree.
//!
//! Off the request path: a request only counts and, for a sampled one, hands the
//! sample to a bounded channel; a writer thread appends. When the writer falls behind,
//! samples are dropped and counted, never waited for. The file is rotated at
//! `max_file_bytes` (one older file is kept), so the log's size is bounded.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

use serde::{Deserialize, Serialize};

use crate::events::RawEvent;
use crate::features::ReadCut;

use super::Scored;

/// Samples waiting for the writer at most.
const QUEUE: usize = 1_024;

/// The newest samples live here; the previous file is `scores.1.jsonl`.
pub const SAMPLES_FILE: &str = "scores.jsonl";
const ROTATED_FILE: &str = "scores.1.jsonl";

/// One sampled score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreSample {
    /// `name@version` of the model that answered.
    pub model: String,
    /// When it was scored (wall clock).
    pub scored_at_ms: i64,
    pub cut: ReadCut,
    pub event: RawEvent,
    pub vector: Vec<Option<f64>>,
    pub score: f64,
}

impl ScoreSample {
    pub fn of(scored: &Scored, event: &RawEvent, scored_at_ms: i64) -> ScoreSample {
        ScoreSample {
            model: scored.model.reference(),
            scored_at_ms,
            cut: scored.cut,
            event: event.clone(),
            vector: scored.vector.clone(),
            score: scored.score,
        }
    }
}

/// The directory of the sample log under a data directory.
pub fn samples_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("scores")
}

/// The sampling side of the log (see the module doc).
#[derive(Debug)]
pub struct SampleLog {
    every: u64,
    seen: AtomicU64,
    dropped: AtomicU64,
    sender: SyncSender<ScoreSample>,
}

impl SampleLog {
    /// Starts the writer thread appending to `dir/scores.jsonl`. `every` must be at
    /// least 1.
    pub fn open(dir: &Path, every: u64, max_file_bytes: u64) -> std::io::Result<SampleLog> {
        std::fs::create_dir_all(dir)?;
        let (sender, receiver) = sync_channel(QUEUE);
        let dir = dir.to_path_buf();
        let mut writer = Writer::open(dir, max_file_bytes)?;
        std::thread::Builder::new()
            .name("score-samples".into())
            .spawn(move || writer.run(receiver))?;
        Ok(SampleLog {
            every: every.max(1),
            seen: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            sender,
        })
    }

    /// Counts a score and says whether it is one to sample (every `every`-th), so a
    /// caller copies its event only then.
    pub fn due(&self) -> bool {
        self.seen
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(self.every)
    }

    /// Queues a sample for the writer, or drops it (counted) when the writer is behind.
    pub fn send(&self, sample: ScoreSample) {
        match self.sender.try_send(sample) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Samples dropped because the writer was behind or had failed.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

struct Writer {
    dir: PathBuf,
    max_file_bytes: u64,
    file: std::io::BufWriter<std::fs::File>,
    written: u64,
}

impl Writer {
    fn open(dir: PathBuf, max_file_bytes: u64) -> std::io::Result<Writer> {
        let path = dir.join(SAMPLES_FILE);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        let written = file.metadata()?.len();
        Ok(Writer {
            dir,
            max_file_bytes,
            file: std::io::BufWriter::new(file),
            written,
        })
    }

    /// Appends until every sender is gone; flushes whenever the queue is empty, so a
    /// reader sees what was sampled. A failed write ends the thread (later samples are
    /// counted as dropped).
    fn run(&mut self, receiver: Receiver<ScoreSample>) {
        while let Ok(sample) = receiver.recv() {
            let mut next = Some(sample);
            while let Some(sample) = next {
                if let Err(error) = self.append(&sample) {
                    tracing::error!(%error, dir = %self.dir.display(), "score samples: write failed; sampling stops");
                    return;
                }
                next = receiver.try_recv().ok();
            }
            if let Err(error) = self.file.flush() {
                tracing::error!(%error, "score samples: flush failed; sampling stops");
                return;
            }
        }
    }

    fn append(&mut self, sample: &ScoreSample) -> std::io::Result<()> {
        if self.written >= self.max_file_bytes {
            self.file.flush()?;
            std::fs::rename(self.dir.join(SAMPLES_FILE), self.dir.join(ROTATED_FILE))?;
            *self = Writer::open(self.dir.clone(), self.max_file_bytes)?;
        }
        let mut line = serde_json::to_vec(sample)?;
        line.push(b'\n');
        self.file.write_all(&line)?;
        self.written += line.len() as u64;
        Ok(())
    }
}

/// The newest `count` samples under `dir`, oldest first. A line that does not parse
/// (a torn last line of a running server) is skipped and counted.
pub fn newest_samples(dir: &Path, count: usize) -> std::io::Result<(Vec<ScoreSample>, usize)> {
    let mut samples = std::collections::VecDeque::with_capacity(count.min(1 << 16));
    let mut unreadable = 0;
    for name in [ROTATED_FILE, SAMPLES_FILE] {
        let path = dir.join(name);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(error) => return Err(error),
        };
        for line in text.lines().filter(|line| !line.trim().is_empty()) {
            match serde_json::from_str::<ScoreSample>(line) {
                Ok(sample) => {
                    if samples.len() == count {
                        samples.pop_front();
                    }
                    if count > 0 {
                        samples.push_back(sample);
                    }
                }
                Err(_) => unreadable += 1,
            }
        }
    }
    Ok((samples.into(), unreadable))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(i: u64) -> ScoreSample {
        ScoreSample {
            model: "fraud@1".into(),
            scored_at_ms: i as i64,
            cut: ReadCut {
                through_seq: Some(i),
                watermark_ms: 7,
            },
            event: RawEvent::default(),
            vector: vec![Some(i as f64), None],
            score: 0.5,
        }
    }

    /// Polls until `done` holds for the samples written (the writer flushes when idle).
    fn until(dir: &Path, done: impl Fn(&[ScoreSample]) -> bool) -> Vec<ScoreSample> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let (samples, _) = newest_samples(dir, usize::MAX).expect("reads");
            if done(&samples) {
                return samples;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "not written: {samples:?}"
            );
            std::thread::yield_now();
        }
    }

    #[test]
    fn one_in_every_is_written_and_read_back_newest_last() {
        let dir = tempfile::tempdir().expect("dir");
        let log = SampleLog::open(dir.path(), 3, 1 << 20).expect("opens");
        for i in 0..9 {
            if log.due() {
                log.send(sample(i));
            }
        }
        let samples = until(dir.path(), |samples| samples.len() >= 3);
        let kept: Vec<i64> = samples.iter().map(|s| s.scored_at_ms).collect();
        assert_eq!(kept, vec![0, 3, 6]);
        assert_eq!(samples[1], sample(3));
        let (newest, _) = newest_samples(dir.path(), 2).expect("reads");
        assert_eq!(newest, vec![sample(3), sample(6)]);
    }

    #[test]
    fn the_log_rotates_and_keeps_one_older_file() {
        let dir = tempfile::tempdir().expect("dir");
        let log = SampleLog::open(dir.path(), 1, 300).expect("opens");
        for i in 0..20 {
            if log.due() {
                log.send(sample(i));
            }
        }
        drop(log);
        // The writer ends when the log is dropped; wait for the last sample.
        until(dir.path(), |samples| {
            samples.last().map(|s| s.scored_at_ms) == Some(19)
        });
        let size = |name: &str| std::fs::metadata(dir.path().join(name)).map_or(0, |m| m.len());
        assert!(size(SAMPLES_FILE) > 0 && size(ROTATED_FILE) > 0);
        assert!(size(SAMPLES_FILE) < 300 + 200 && size(ROTATED_FILE) < 300 + 200);
        let (all, unreadable) = newest_samples(dir.path(), usize::MAX).expect("reads");
        assert_eq!(unreadable, 0);
        assert!(all.len() < 20, "the oldest were rotated away");
        let times: Vec<i64> = all.iter().map(|s| s.scored_at_ms).collect();
        assert!(times.windows(2).all(|w| w[0] + 1 == w[1]), "{times:?}");
    }

    #[test]
    fn a_torn_line_is_skipped_and_counted() {
        let dir = tempfile::tempdir().expect("dir");
        let mut text = serde_json::to_string(&sample(1)).expect("json");
        text.push('\n');
        text.push_str("{\"model\":\"fra");
        std::fs::write(dir.path().join(SAMPLES_FILE), text).expect("write");
        let (samples, unreadable) = newest_samples(dir.path(), 10).expect("reads");
        assert_eq!(samples, vec![sample(1)]);
        assert_eq!(unreadable, 1);
    }
}
