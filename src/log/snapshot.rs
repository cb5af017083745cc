//! Engine snapshots: `magic | len: u64 | crc32: u32 | payload`, written to a temporary
//! file, fsynced and renamed into place, so a crash leaves either the old or the new one.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::{LogError, io_error, sync_dir};

// 002: entity states carry recent lists (`recent_distinct`); a 001 snapshot is skipped
// with that reason and the log replayed.
const MAGIC: &[u8; 8] = b"SSNAP002";
const HEADER_BYTES: usize = 8 + 8 + 4;

fn snapshot_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("snapshot-{seq:020}.snap"))
}

fn list(dir: &Path) -> Result<Vec<(u64, PathBuf)>, LogError> {
    let mut found = Vec::new();
    if !dir.exists() {
        return Ok(found);
    }
    for entry in std::fs::read_dir(dir).map_err(io_error(dir))? {
        let path = entry.map_err(io_error(dir))?.path();
        let seq = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("snapshot-")?.strip_suffix(".snap"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(seq) = seq {
            found.push((seq, path));
        }
    }
    found.sort();
    Ok(found)
}

/// Writes a snapshot covering the log up to `seq` and keeps only the newest `keep`.
pub fn write_snapshot(
    dir: &Path,
    seq: u64,
    payload: &[u8],
    keep: usize,
) -> Result<PathBuf, LogError> {
    std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    let path = snapshot_path(dir, seq);
    let temporary = path.with_extension("tmp");
    let mut file = std::fs::File::create(&temporary).map_err(io_error(&temporary))?;
    let mut header = Vec::with_capacity(HEADER_BYTES);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    header.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    file.write_all(&header).map_err(io_error(&temporary))?;
    file.write_all(payload).map_err(io_error(&temporary))?;
    file.sync_all().map_err(io_error(&temporary))?;
    std::fs::rename(&temporary, &path).map_err(io_error(&path))?;
    sync_dir(dir)?;
    let all = list(dir)?;
    for (_, old) in all.iter().take(all.len().saturating_sub(keep.max(1))) {
        if let Err(error) = std::fs::remove_file(old) {
            tracing::warn!(path = %old.display(), %error, "could not remove an old snapshot");
        }
    }
    Ok(path)
}

/// Removes temp files of snapshots a crash interrupted (call at start, before any
/// snapshot is written); returns how many.
pub fn remove_stale_temporaries(dir: &Path) -> Result<usize, LogError> {
    if !dir.exists() {
        return Ok(0);
    }
    let mut removed = 0;
    for entry in std::fs::read_dir(dir).map_err(io_error(dir))? {
        let path = entry.map_err(io_error(dir))?.path();
        if path.extension().is_some_and(|e| e == "tmp") {
            std::fs::remove_file(&path).map_err(io_error(&path))?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Tries snapshots newest first; `restore` turns a payload into the caller's state or
/// says why it cannot. Damaged or refused snapshots are skipped with a warning.
pub fn load_newest_snapshot<T>(
    dir: &Path,
    mut restore: impl FnMut(&[u8]) -> Result<T, String>,
) -> Result<Option<(u64, T)>, LogError> {
    for (seq, path) in list(dir)?.into_iter().rev() {
        let bytes = std::fs::read(&path).map_err(io_error(&path))?;
        match check(&bytes).and_then(&mut restore) {
            Ok(state) => return Ok(Some((seq, state))),
            Err(reason) => {
                tracing::warn!(snapshot = %path.display(), %reason, "skipping unusable snapshot")
            }
        }
    }
    Ok(None)
}

fn check(bytes: &[u8]) -> Result<&[u8], String> {
    if bytes.len() < HEADER_BYTES || &bytes[..8] != MAGIC {
        return Err("not a snapshot file (bad header)".into());
    }
    let mut length = [0u8; 8];
    length.copy_from_slice(&bytes[8..16]);
    let length = u64::from_le_bytes(length) as usize;
    let mut crc = [0u8; 4];
    crc.copy_from_slice(&bytes[16..20]);
    let payload = &bytes[HEADER_BYTES..];
    if payload.len() != length {
        return Err(format!(
            "truncated: {} of {length} payload bytes",
            payload.len()
        ));
    }
    if crc32fast::hash(payload) != u32::from_le_bytes(crc) {
        return Err("checksum mismatch".into());
    }
    Ok(payload)
}
