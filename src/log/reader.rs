//! Replaying the log at start: every record after a given sequence number, in order.
//! A damaged tail of the newest segment (a torn write from a crash) is truncated with a
//! warning; damage anywhere else stops the start, because skipping it would lose
//! acknowledged events.

use std::fs::OpenOptions;
use std::path::Path;

use super::record::{Decoded, decode};
use super::{LogError, io_error, list_segments};
use crate::events::RawEvent;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplayStats {
    /// Records handed to the callback.
    pub replayed: u64,
    /// Highest sequence number found in the log (0 if empty).
    pub last_seq: u64,
    /// Bytes cut off a damaged tail.
    pub truncated_bytes: u64,
}

/// What to do with a damaged tail of the newest segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TailDamage {
    /// Cut it off (at start-up, before appending again).
    Truncate,
    /// Stop reading there and leave the file alone (a reader beside a live server, whose
    /// writer may be mid-append).
    Stop,
}

/// Calls `apply` for each record with a sequence number above `after_seq`.
pub fn replay(
    dir: &Path,
    after_seq: u64,
    tail: TailDamage,
    mut apply: impl FnMut(u64, &RawEvent),
) -> Result<ReplayStats, LogError> {
    let segments = list_segments(dir)?;
    let mut stats = ReplayStats::default();
    for (index, (first_seq, path)) in segments.iter().enumerate() {
        let is_newest = index + 1 == segments.len();
        // A segment whose successor starts at or before `after_seq + 1` holds nothing new.
        if let Some((next_first, _)) = segments.get(index + 1)
            && *next_first <= after_seq + 1
        {
            stats.last_seq = stats.last_seq.max(next_first - 1);
            continue;
        }
        let bytes = std::fs::read(path).map_err(io_error(path))?;
        let mut offset = 0usize;
        let mut expected = *first_seq;
        loop {
            match decode(&bytes[offset..]) {
                Decoded::End => break,
                Decoded::Record {
                    seq,
                    event,
                    bytes: used,
                } => {
                    if seq != expected {
                        let reason = format!("sequence {seq} where {expected} was expected");
                        handle_damage(path, offset, reason, is_newest, tail, &mut stats)?;
                        break;
                    }
                    if seq > after_seq {
                        apply(seq, &event);
                        stats.replayed += 1;
                    }
                    stats.last_seq = seq;
                    expected += 1;
                    offset += used;
                }
                Decoded::Corrupt(reason) => {
                    handle_damage(path, offset, reason, is_newest, tail, &mut stats)?;
                    break;
                }
            }
        }
    }
    Ok(stats)
}

fn handle_damage(
    path: &Path,
    offset: usize,
    reason: String,
    is_newest: bool,
    tail: TailDamage,
    stats: &mut ReplayStats,
) -> Result<(), LogError> {
    if !is_newest {
        return Err(LogError::CorruptSegment {
            path: path.to_path_buf(),
            offset: offset as u64,
            reason,
        });
    }
    if tail == TailDamage::Stop {
        return Ok(());
    }
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_error(path))?;
    let length = file.metadata().map_err(io_error(path))?.len();
    tracing::warn!(
        segment = %path.display(),
        offset,
        cut_bytes = length - offset as u64,
        %reason,
        "truncating a damaged log tail (an unacknowledged write cut short by a crash)"
    );
    file.set_len(offset as u64).map_err(io_error(path))?;
    file.sync_all().map_err(io_error(path))?;
    stats.truncated_bytes += length - offset as u64;
    Ok(())
}
