//! The acknowledged high-water mark: the highest sequence number the log has made durable
//! (and so may have acknowledged), kept in `log/acked`, outside the segments it speaks
//! of. A newest segment cut short at a record boundary, or deleted, leaves records that
//! check out and no gap between them; only this mark tells that acknowledged records
//! are missing from the end, and exactly which.
//!
//! The writer updates the mark after each group commit's fsync and before it
//! acknowledges anything, so the mark never runs ahead of the segments' durable records
//! and never behind an ack. The file holds two slots, written in turn, each with its own
//! checksum: a write torn by a crash damages one slot and the other still holds the
//! previous mark (lower, so it can only miss a loss, never invent one).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{FsyncPolicy, LogError, io_error};

const MAGIC: &[u8; 8] = b"SSACKED1";
/// Each slot on its own disk sector, so one torn write cannot touch both.
const SLOT_BYTES: u64 = 512;
const RECORD_BYTES: usize = 20;

pub fn path(segments: &Path) -> PathBuf {
    segments.join("acked")
}

/// The mark as the file holds it: `None` when there is no file (a data dir from before
/// the mark was kept) or neither slot checks out.
pub fn read(segments: &Path) -> Result<Option<u64>, LogError> {
    let file = path(segments);
    let bytes = match std::fs::read(&file) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(io_error(&file)(error)),
    };
    Ok((0..2)
        .filter_map(|slot| decode(bytes.get(slot * SLOT_BYTES as usize..)?))
        .max())
}

fn encode(seq: u64) -> [u8; RECORD_BYTES] {
    let mut record = [0u8; RECORD_BYTES];
    record[..8].copy_from_slice(MAGIC);
    record[8..16].copy_from_slice(&seq.to_le_bytes());
    let crc = crc32fast::hash(&record[..16]);
    record[16..].copy_from_slice(&crc.to_le_bytes());
    record
}

fn decode(bytes: &[u8]) -> Option<u64> {
    let record = bytes.get(..RECORD_BYTES)?;
    if &record[..8] != MAGIC {
        return None;
    }
    let crc = u32::from_le_bytes(record[16..20].try_into().ok()?);
    if crc32fast::hash(&record[..16]) != crc {
        return None;
    }
    Some(u64::from_le_bytes(record[8..16].try_into().ok()?))
}

/// The writer's handle on the mark.
pub(crate) struct AckedMark {
    file: File,
    path: PathBuf,
    fsync: FsyncPolicy,
    writes: u64,
    current: u64,
}

impl AckedMark {
    /// Opens the mark for writing and sets it to `seq` (what the log holds at open).
    pub(crate) fn open(segments: &Path, seq: u64, fsync: FsyncPolicy) -> Result<Self, LogError> {
        let path = path(segments);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_error(&path))?;
        let mut mark = AckedMark {
            file,
            path,
            fsync,
            writes: 0,
            current: 0,
        };
        // Both slots, so no older value from a previous run outranks this one.
        mark.write_slot(0, seq)?;
        mark.write_slot(1, seq)?;
        mark.current = seq;
        super::sync_dir(segments)?;
        Ok(mark)
    }

    /// Raises the mark to `seq`, durably when the log's policy is to fsync.
    pub(crate) fn raise(&mut self, seq: u64) -> Result<(), LogError> {
        if seq <= self.current {
            return Ok(());
        }
        let slot = self.writes % 2;
        self.write_slot(slot, seq)?;
        self.writes += 1;
        self.current = seq;
        Ok(())
    }

    fn write_slot(&mut self, slot: u64, seq: u64) -> Result<(), LogError> {
        self.file
            .write_all_at(&encode(seq), slot * SLOT_BYTES)
            .and_then(|()| match self.fsync {
                FsyncPolicy::Always => self.file.sync_data(),
                FsyncPolicy::Never => Ok(()),
            })
            .map_err(io_error(&self.path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mark_reads_back_as_raised_and_survives_a_torn_slot() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert_eq!(read(dir.path()).expect("no file"), None);
        let mut mark = AckedMark::open(dir.path(), 7, FsyncPolicy::Always).expect("open");
        assert_eq!(read(dir.path()).expect("read"), Some(7));
        for seq in [9, 12, 12, 30] {
            mark.raise(seq).expect("raise");
            assert_eq!(read(dir.path()).expect("read"), Some(seq.max(7)));
        }
        // Damage every byte of the newest slot in turn: the previous mark remains.
        let file = path(dir.path());
        let good = std::fs::read(&file).expect("bytes");
        let newest = ((mark.writes - 1) % 2) as usize * SLOT_BYTES as usize;
        for offset in newest..newest + RECORD_BYTES {
            let mut bad = good.clone();
            bad[offset] ^= 0x40;
            std::fs::write(&file, &bad).expect("write");
            assert_eq!(read(dir.path()).expect("read"), Some(12), "byte {offset}");
        }
    }

    #[test]
    fn opening_again_lowers_no_mark_it_is_given() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut mark = AckedMark::open(dir.path(), 0, FsyncPolicy::Never).expect("open");
        mark.raise(100).expect("raise");
        drop(mark);
        let _again = AckedMark::open(dir.path(), 100, FsyncPolicy::Never).expect("reopen");
        assert_eq!(read(dir.path()).expect("read"), Some(100));
    }
}
