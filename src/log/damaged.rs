//! Where damaged log bytes go: `log/damaged/`, never deleted, each range in a file of
//! its own named after its segment and offset. Shared by replay (a torn tail cut at
//! start), repair and the losses file.

use std::path::{Path, PathBuf};

use super::{LogError, io_error};

/// The folder damaged bytes of the log in `segments` are kept in.
pub fn damaged_dir(segments: &Path) -> PathBuf {
    segments.join("damaged")
}

/// Writes `bytes` (damaged at `offset` of `segment`) to the damaged folder, durably.
pub(crate) fn keep_aside(
    dir: &Path,
    segment: &Path,
    offset: usize,
    bytes: &[u8],
) -> Result<PathBuf, LogError> {
    let folder = damaged_dir(dir);
    std::fs::create_dir_all(&folder).map_err(io_error(&folder))?;
    let name = segment
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("segment");
    let mut target = folder.join(format!("{name}.at-{offset}"));
    let mut copy = 1;
    while target.exists() {
        target = folder.join(format!("{name}.at-{offset}.{copy}"));
        copy += 1;
    }
    write_durably(&target, bytes)?;
    Ok(target)
}

/// Temp file, fsync, rename, fsync the folder.
pub(super) fn write_durably(target: &Path, bytes: &[u8]) -> Result<(), LogError> {
    crate::durable::replace_file(target, bytes).map_err(io_error(target))
}
