//! Replacing a file so that a crash leaves either the old content or the new, never a
//! mix or nothing: write a temp file beside it, fsync, rename over, fsync the folder
//! (without the last step the rename itself may be lost).

use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `target` durably and atomically; `target`'s folder must exist.
pub fn replace_file(target: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut name = target.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let temporary = target.with_file_name(name);
    {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&temporary, target)?;
    let parent = match target.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    std::fs::File::open(parent)?.sync_all()
}
