//! Reading the log back at start: every segment is checked (checksums and one unbroken
//! run of sequence numbers, the segments a snapshot covers too), and the records after a
//! given sequence number are replayed in order.
//!
//! Only a *torn tail* is cut: a last record of the newest segment whose bytes end before
//! its declared length, with no valid record after it, no sign that only its length
//! field was damaged, and beyond the acked mark (`super::acked`). Such a record was
//! never fsynced, so never acknowledged; its bytes are kept aside in `log/damaged/`
//! before the cut. Records the acked mark counts that are missing from the end (a
//! segment cut at a record boundary, or deleted) stop the start with their range. Anything else (a bad checksum, valid
//! records after the damage, a missing segment, a sequence gap, a snapshot ahead of the
//! log) stops the start with the place and how many records follow, because going on
//! would drop acknowledged events; `streamscore repair` then moves the damage aside and
//! records the loss (see [`super::repair`]).

use std::path::Path;

use super::record::{Frame, HEADER_BYTES, decode_frame, resync};
use super::{LogError, io_error, list_segments, losses};
use crate::events::RawEvent;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplayStats {
    /// Records handed to the callback.
    pub replayed: u64,
    /// Highest sequence number found in the log (0 if empty).
    pub last_seq: u64,
    /// Bytes cut off a torn tail.
    pub truncated_bytes: u64,
    /// The highest sequence number ever acknowledged (the acked mark or the snapshot):
    /// new records are numbered after it, so a recorded loss is never reused.
    pub acked_seq: u64,
}

/// What to do with a torn tail of the newest segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TailDamage {
    /// Cut it off (at start-up, before appending again), keeping the bytes aside.
    Truncate,
    /// Stop reading there and leave the file alone (a reader beside a live server, whose
    /// writer may be mid-append).
    Stop,
}

/// Calls `apply` for each record with a sequence number above `after_seq`, after
/// checking the whole log.
pub fn replay(
    dir: &Path,
    after_seq: u64,
    tail: TailDamage,
    mut apply: impl FnMut(u64, RawEvent),
) -> Result<ReplayStats, LogError> {
    // Read before the segments: a live writer raises it only after its records are
    // written, so every record it counts is found below.
    let acked = super::acked::read(dir)?;
    let segments = list_segments(dir)?;
    let accepted = losses::read(dir)?;
    let mut stats = ReplayStats::default();
    let mut expected: Option<u64> = None;
    for (index, (first_seq, path)) in segments.iter().enumerate() {
        let is_newest = index + 1 == segments.len();
        let from = expected.unwrap_or(1);
        // The oldest segment may start later only where a snapshot covers the start.
        let start_covered = expected.is_none() && *first_seq <= after_seq + 1;
        if *first_seq != from && !start_covered && !accepted.covers(from, *first_seq) {
            return Err(LogError::Gap {
                path: path.clone(),
                expected: from,
                found: *first_seq,
            });
        }
        let bytes = std::fs::read(path).map_err(io_error(path))?;
        let mut offset = 0usize;
        let mut next = *first_seq;
        loop {
            match decode_frame(&bytes[offset..]) {
                Frame::End => break,
                Frame::Record {
                    seq,
                    payload,
                    bytes: used,
                } => {
                    if seq != next && !accepted.covers(next, seq) {
                        return Err(LogError::Gap {
                            path: path.clone(),
                            expected: next,
                            found: seq,
                        });
                    }
                    if seq > after_seq {
                        // Only records to replay are decoded; the rest are checksummed.
                        let event: RawEvent =
                            postcard::from_bytes(payload).map_err(|e| LogError::Damaged {
                                path: path.clone(),
                                offset: offset as u64,
                                reason: format!("undecodable payload: {e}"),
                                following: 0,
                            })?;
                        apply(seq, event);
                        stats.replayed += 1;
                    }
                    stats.last_seq = seq;
                    next = seq + 1;
                    offset += used;
                }
                Frame::Corrupt(reason) => {
                    let rest = &bytes[offset..];
                    let following = resync(rest, next).map_or(0, |(_, _, count)| count);
                    // A write cut short was never acknowledged; one the acked mark
                    // covers was, and is damage like any other.
                    let unacknowledged = acked.is_none_or(|acked| acked < next);
                    if is_newest && following == 0 && is_torn(rest) && unacknowledged {
                        if tail == TailDamage::Truncate {
                            stats.truncated_bytes += cut_torn_tail(dir, path, offset, rest)?;
                        }
                        break;
                    }
                    return Err(LogError::Damaged {
                        path: path.clone(),
                        offset: offset as u64,
                        reason,
                        following,
                    });
                }
            }
        }
        expected = Some(next);
    }
    if acked.is_none() && stats.last_seq > 0 {
        tracing::warn!(dir = %dir.display(), "no acked mark (log/acked) beside the segments (a data dir from an older version?): records missing from the end of the log cannot be detected this time; the mark is written from now on");
    }
    stats.acked_seq = check_end(dir, stats.last_seq, after_seq, acked, &accepted)?;
    Ok(stats)
}

/// The records the snapshot or the acked mark vouch for must all be in the log, unless
/// their loss was recorded by `repair`. Returns the highest acknowledged sequence number.
pub(crate) fn check_end(
    dir: &Path,
    last_seq: u64,
    snapshot_seq: u64,
    acked: Option<u64>,
    accepted: &losses::Losses,
) -> Result<u64, LogError> {
    let (required, witness) = required_end(snapshot_seq, acked);
    if required > last_seq && !accepted.covers(last_seq + 1, required + 1) {
        return Err(LogError::TailMissing {
            dir: dir.to_path_buf(),
            acked_seq: required,
            last_seq,
            witness,
        });
    }
    Ok(required)
}

/// The highest sequence number known to have been acknowledged, and what says so.
pub(crate) fn required_end(snapshot_seq: u64, acked: Option<u64>) -> (u64, &'static str) {
    match acked {
        Some(acked) if acked >= snapshot_seq => (acked, "the acked mark (log/acked)"),
        _ if snapshot_seq > 0 => (snapshot_seq, "the newest snapshot"),
        _ => (0, "nothing"),
    }
}

/// Whether damaged bytes at the end of a segment are a write cut short: a header or a
/// record shorter than it declares, unless the bytes that are there check out as one
/// whole record (then only its length field was damaged, and the record was written).
fn is_torn(rest: &[u8]) -> bool {
    if rest.len() < HEADER_BYTES {
        return true;
    }
    let declared = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
    let short = rest.len() < HEADER_BYTES.saturating_add(declared);
    let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
    short && crc32fast::hash(&rest[8..]) != crc
}

/// Moves a torn tail's bytes aside, then cuts them from the segment.
fn cut_torn_tail(dir: &Path, path: &Path, offset: usize, rest: &[u8]) -> Result<u64, LogError> {
    let aside = super::damaged::keep_aside(dir, path, offset, rest)?;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_error(path))?;
    file.set_len(offset as u64).map_err(io_error(path))?;
    file.sync_all().map_err(io_error(path))?;
    tracing::warn!(
        segment = %path.display(),
        offset,
        cut_bytes = rest.len(),
        kept_at = %aside.display(),
        "cut a torn last record (a write cut short by a crash, never acknowledged)"
    );
    Ok(rest.len() as u64)
}
