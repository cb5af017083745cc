//! The durable event log and engine snapshots.
//!
//! Accepted events are appended as checksummed records to segment files
//! (`log/<first seq>.log`); a writer thread flushes and fsyncs them in groups, and an
//! ingest ack waits until its events are durable. Snapshots of the engine
//! (`snapshots/snapshot-<seq>.snap`) bound restart time: start = newest valid snapshot
//! plus a replay of the records after it. A torn or corrupted tail of the newest segment
//! is truncated with a warning; a bad snapshot falls back to an older one or to a full
//! replay. Segments are kept (the log is also the training history; see `export`).
//! The highest acknowledged sequence number is kept apart in `log/acked`, so a newest
//! segment cut short or deleted is found at start with the exact range it held.

mod acked;
mod damaged;
pub mod losses;
mod reader;
mod record;
pub mod repair;
mod snapshot;
mod writer;

pub use crate::config::FsyncPolicy;
pub use acked::read as read_acked_mark;
pub use damaged::damaged_dir;
pub use reader::{ReplayStats, TailDamage, replay};
pub use snapshot::{load_newest_snapshot, remove_stale_temporaries, write_snapshot};
pub use writer::EventLog;

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("event log I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot encode event for the log: {0}")]
    Encode(#[from] postcard::Error),
    #[error(
        "event log segment {path} is damaged at byte {offset} ({reason}); {following} valid records follow the damage. Refusing to start, since going on would drop acknowledged events: `streamscore repair --data-dir <dir>` moves the damage aside and reports what is lost"
    )]
    Damaged {
        path: PathBuf,
        offset: u64,
        reason: String,
        following: u64,
    },
    #[error(
        "event log {path}: sequence {found} where {expected} was expected; the records {expected}..{found} are missing (a deleted or damaged segment). Refusing to start: `streamscore repair --data-dir <dir>` records the loss after you have looked for them"
    )]
    Gap {
        path: PathBuf,
        expected: u64,
        found: u64,
    },
    #[error(
        "the event log in {dir} ends at sequence {last_seq}, but {witness} says records through {acked_seq} were acknowledged: records {first_missing}..={acked_seq} are missing (a newest segment cut short or deleted?). Refusing to start: look for them, then `streamscore repair --data-dir <dir>` records the loss",
        first_missing = last_seq + 1
    )]
    TailMissing {
        dir: PathBuf,
        acked_seq: u64,
        last_seq: u64,
        /// What recorded the higher sequence number: the acked mark or a snapshot.
        witness: &'static str,
    },
    #[error(
        "{path} is damaged at line {line} ({reason}). Refusing to start, since a loss record that cannot be read could hide a loss: `streamscore repair --data-dir <dir>` moves the bad line aside and checks the log again"
    )]
    LossesDamaged {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("the event log writer has failed; no further events can be made durable")]
    WriterFailed,
    #[error(
        "the event log cannot write right now (out of disk space or file descriptors?); it retries by itself, try again shortly"
    )]
    Stalled,
}

pub(crate) fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> LogError + '_ {
    move |source| LogError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub fn segments_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("log")
}

pub fn snapshots_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("snapshots")
}

/// The segment file whose first record is `first_seq`.
pub(crate) fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}.log"))
}

/// Segment files with their first sequence number, oldest first.
pub(crate) fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, LogError> {
    let mut segments = Vec::new();
    if !dir.exists() {
        return Ok(segments);
    }
    for entry in std::fs::read_dir(dir).map_err(io_error(dir))? {
        let path = entry.map_err(io_error(dir))?.path();
        let first = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".log"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(first) = first {
            segments.push((first, path));
        }
    }
    segments.sort();
    Ok(segments)
}

/// Makes a new or renamed file's directory entry durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), LogError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir))
}
