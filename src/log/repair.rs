//! `streamscore repair`: what an operator runs when start-up refuses a damaged log. Every
//! damaged byte range is moved to `log/damaged/` (never deleted), each segment is
//! rewritten with its valid records only (temp file, fsync, rename, fsync the folder),
//! and every missing run of sequence numbers is recorded in `log/losses.txt` with how it
//! was lost, so the next start accepts exactly those gaps and no others.

use std::path::{Path, PathBuf};

use super::damaged::{keep_aside, write_durably};
use super::losses::{self, Loss};
use super::record::{Frame, HEADER_BYTES, decode_frame, resync};
use super::{LogError, io_error, list_segments};

/// What a repair did.
#[derive(Debug, Default)]
pub struct RepairReport {
    /// Segments checked.
    pub segments: usize,
    /// Valid records kept.
    pub records: u64,
    /// Damaged byte ranges moved aside: where they went and how many bytes.
    pub moved: Vec<(PathBuf, usize)>,
    /// Runs of sequence numbers now recorded as lost (exact counts).
    pub losses: Vec<Loss>,
    /// Records numbered below the records before them (a second writer's), moved aside.
    pub out_of_sequence: u64,
    /// A damaged tail of the newest segment with nothing valid after it: how many
    /// records it held cannot be told from its bytes (segment, first missing sequence
    /// number, bytes).
    pub unknown_tail: Option<(PathBuf, u64, usize)>,
}

impl RepairReport {
    /// Records known to be lost (the unknown tail aside).
    pub fn lost(&self) -> u64 {
        self.losses.iter().map(|l| l.to - l.from).sum()
    }
}

/// Repairs the log in `dir`; `snapshot_seq` is what the newest snapshot covers.
/// Running it again on what it leaves changes nothing.
pub fn repair(dir: &Path, snapshot_seq: u64) -> Result<RepairReport, LogError> {
    let mut report = RepairReport::default();
    if let Some(aside) = losses::set_aside_damage(dir)? {
        tracing::warn!(kept_at = %aside.0.display(), lines = aside.1, "moved unreadable lines of the loss record aside");
        report.moved.push(aside);
    }
    let acked = super::acked::read(dir)?;
    let segments = list_segments(dir)?;
    let mut accepted = losses::read(dir)?;
    report.segments = segments.len();
    let lose = |accepted: &mut losses::Losses, from: u64, to: u64, note: String| {
        let loss = Loss { from, to, note };
        losses::record(dir, &loss)?;
        report_loss(&loss);
        *accepted = losses::read(dir)?;
        Ok::<Loss, LogError>(loss)
    };
    let mut expected: Option<u64> = None;
    for (index, (first_seq, path)) in segments.iter().enumerate() {
        let from = expected.unwrap_or(1);
        let start_covered = expected.is_none() && *first_seq <= snapshot_seq + 1;
        if *first_seq > from && !start_covered && !accepted.covers(from, *first_seq) {
            let note = format!("no segment holds them (before {})", path.display());
            report
                .losses
                .push(lose(&mut accepted, from, *first_seq, note)?);
        }
        let bytes = std::fs::read(path).map_err(io_error(path))?;
        let mut kept = Vec::with_capacity(bytes.len());
        let mut first_kept = None;
        // Records numbered below what came before them: another writer's (two servers
        // on one data dir). Moved aside together, never counted as a loss.
        let mut out_of_sequence = Vec::new();
        let mut offset = 0usize;
        let mut next = match expected {
            Some(expected) => expected.max(*first_seq),
            None => *first_seq,
        };
        let mut changed = false;
        loop {
            match decode_frame(&bytes[offset..]) {
                Frame::End => break,
                Frame::Record {
                    seq, bytes: used, ..
                } => {
                    let record = &bytes[offset..offset + used];
                    offset += used;
                    if seq < next {
                        out_of_sequence.extend_from_slice(record);
                        report.out_of_sequence += 1;
                        changed = true;
                        continue;
                    }
                    if seq != next && !accepted.covers(next, seq) {
                        let note = format!("sequence gap inside {}", path.display());
                        report.losses.push(lose(&mut accepted, next, seq, note)?);
                    }
                    first_kept.get_or_insert(seq);
                    kept.extend_from_slice(record);
                    report.records += 1;
                    next = seq + 1;
                }
                Frame::Corrupt(reason) => {
                    changed = true;
                    let rest = &bytes[offset..];
                    match resync(rest, next) {
                        Some((at, seq, _)) => {
                            let aside = keep_aside(dir, path, offset, &rest[..at])?;
                            report.moved.push((aside, at));
                            if seq > next {
                                let note =
                                    format!("{reason} at byte {offset} of {}", path.display());
                                report.losses.push(lose(&mut accepted, next, seq, note)?);
                            }
                            offset += at;
                        }
                        None => {
                            let aside = keep_aside(dir, path, offset, rest)?;
                            report.moved.push((aside, rest.len()));
                            let is_newest = index + 1 == segments.len();
                            if is_newest && rest.len() >= HEADER_BYTES {
                                report.unknown_tail = Some((path.clone(), next, rest.len()));
                            }
                            break;
                        }
                    }
                }
            }
        }
        if !out_of_sequence.is_empty() {
            let aside = keep_aside(dir, path, 0, &out_of_sequence)?;
            tracing::warn!(segment = %path.display(), kept_at = %aside.display(), "moved records numbered out of sequence aside (written by a second writer?)");
            report.moved.push((aside, out_of_sequence.len()));
        }
        if changed {
            rewrite_segment(dir, path, *first_seq, first_kept, &kept)?;
        }
        // A segment emptied of another writer's records is gone: what follows it
        // continues from before it.
        if !(changed && first_kept.is_none()) {
            expected = Some(next);
        }
    }
    let last = expected.map_or(0, |next| next - 1);
    let (required, witness) = super::reader::required_end(snapshot_seq, acked);
    if required > last && !accepted.covers(last + 1, required + 1) {
        let note =
            format!("missing from the end of the log ({witness} says they were acknowledged)");
        report
            .losses
            .push(lose(&mut accepted, last + 1, required + 1, note)?);
    }
    Ok(report)
}

/// Writes a segment's valid records back under the name of its first one (a segment
/// left with none is removed: its bytes are all aside).
fn rewrite_segment(
    dir: &Path,
    path: &Path,
    first_seq: u64,
    first_kept: Option<u64>,
    kept: &[u8],
) -> Result<(), LogError> {
    match first_kept {
        Some(first) if first != first_seq => {
            let target = super::segment_path(dir, first);
            write_durably(&target, kept)?;
            std::fs::remove_file(path).map_err(io_error(path))?;
            super::sync_dir(dir)
        }
        Some(_) => write_durably(path, kept),
        None => {
            std::fs::remove_file(path).map_err(io_error(path))?;
            super::sync_dir(dir)
        }
    }
}

fn report_loss(loss: &Loss) {
    tracing::warn!(
        from = loss.from,
        to = loss.to,
        lost = loss.to - loss.from,
        note = %loss.note,
        "recorded a loss of logged events"
    );
}
