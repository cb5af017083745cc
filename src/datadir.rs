//! One owner per data dir. Whatever writes a data dir (`serve`, `repair`) first takes an
//! exclusive lock on `<data_dir>/LOCK`, before it reads anything, and holds it until it
//! exits. A second process is refused, naming the holder (pid, host, start time) that
//! the holder wrote into the file.
//!
//! The lock is `flock(2)` on the open file, so the kernel drops it when its holder dies
//! (kill -9 included): a dead holder's lock is taken over by the next start with no
//! stale-file clean-up, and a live holder's can never be.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// The lock file's name inside the data dir.
pub const LOCK_FILE: &str = "LOCK";

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "data dir {dir} is in use by another streamscore process ({holder}); two writers on one data dir would interleave and lose acknowledged events. Stop that process, or give this one its own --data-dir"
    )]
    Held { dir: PathBuf, holder: String },
    #[error("cannot lock data dir {dir}: {source}")]
    Io {
        dir: PathBuf,
        source: std::io::Error,
    },
}

/// The held lock; dropping it (or exiting) lets the next owner in.
#[derive(Debug)]
pub struct DataDirLock {
    // Kept open: closing the file would release the lock.
    _file: File,
    path: PathBuf,
}

impl DataDirLock {
    /// Takes the lock on `dir` (created if missing), or says who holds it.
    pub fn acquire(dir: &Path) -> Result<DataDirLock, LockError> {
        let io = |source| LockError::Io {
            dir: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        // SAFETY: flock only reads the descriptor, which `file` keeps open.
        let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if locked != 0 {
            let error = std::io::Error::last_os_error();
            if error.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(io(error));
            }
            let mut holder = String::new();
            // The holder's description is best effort: the refusal stands without it.
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            return Err(LockError::Held {
                dir: dir.to_path_buf(),
                holder: if holder.is_empty() {
                    "holder unknown".to_string()
                } else {
                    holder.to_string()
                },
            });
        }
        let description = format!(
            "pid {} on host {}, started {}",
            std::process::id(),
            hostname(),
            crate::time::format_utc(crate::time::now_ms())
        );
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        file.write_all(description.as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)?;
        Ok(DataDirLock { _file: file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn hostname() -> String {
    let mut buffer = [0u8; 256];
    // SAFETY: the buffer is writable for its whole length, which is what is passed.
    let status = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) };
    if status != 0 {
        return "unknown".to_string();
    }
    let end = buffer.iter().position(|b| *b == 0).unwrap_or(buffer.len());
    String::from_utf8_lossy(&buffer[..end]).into_owned()
}

/// The file in the data dir that keeps [`instance_id`].
const INSTANCE_ID_FILE: &str = "kafka-instance-id";

/// This process's stable id, for every transactional producer it runs: made at random
/// the first time and kept in the data dir, so it is the same after a restart (the new
/// producer fences the dead one's transaction at once) and different for every data
/// dir, so two hosts left on the default settings never fence each other. Two processes
/// cannot share one: the data dir's owner holds its [`DataDirLock`].
pub fn instance_id(data_dir: &Path) -> std::io::Result<String> {
    let path = data_dir.join(INSTANCE_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_string()),
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    let id = format!("{:016x}", rand::random::<u64>());
    crate::durable::replace_file(&path, id.as_bytes())?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_instance_id_is_kept_per_data_dir() {
        let one = tempfile::tempdir().expect("tempdir");
        let other = tempfile::tempdir().expect("tempdir");
        let first = instance_id(one.path()).expect("id");
        assert_eq!(instance_id(one.path()).expect("id again"), first);
        assert_ne!(instance_id(other.path()).expect("other id"), first);
    }

    #[test]
    fn a_second_owner_is_refused_naming_the_first_and_gets_in_once_it_is_gone() {
        let dir = tempfile::tempdir().expect("temp dir");
        let first = DataDirLock::acquire(dir.path()).expect("first owner");
        let refused = DataDirLock::acquire(dir.path()).expect_err("second owner refused");
        let message = refused.to_string();
        assert!(
            message.contains(&format!("pid {}", std::process::id())),
            "{message}"
        );
        assert!(message.contains("in use by another"), "{message}");
        drop(first);
        let again = DataDirLock::acquire(dir.path()).expect("taken over once released");
        assert!(again.path().ends_with(LOCK_FILE));
    }

    #[test]
    fn a_lock_left_by_a_dead_process_is_taken_over() {
        let dir = tempfile::tempdir().expect("temp dir");
        // A file left behind with another holder's description, but no live flock.
        std::fs::write(
            dir.path().join(LOCK_FILE),
            "pid 1 on host gone, started long ago",
        )
        .expect("stale lock file");
        let lock = DataDirLock::acquire(dir.path()).expect("stale lock taken over");
        let text = std::fs::read_to_string(lock.path()).expect("lock file");
        assert!(
            text.starts_with(&format!("pid {} ", std::process::id())),
            "{text}"
        );
    }
}
