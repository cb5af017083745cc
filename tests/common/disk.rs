//! A small disk for tests that fill it: a tmpfs mounted at a fresh folder (root only;
//! `mount` returns `None` where mounting is not allowed, and the test says it skipped).

use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs mounted at a fresh folder, unmounted when dropped.
pub struct SmallDisk(PathBuf);

impl SmallDisk {
    /// `name` keeps the folders of tests running side by side apart.
    pub fn mount(name: &str, bytes: usize) -> Option<SmallDisk> {
        let dir = std::env::temp_dir().join(format!(
            "streamscore-disk-full-{name}-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).ok()?;
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(&dir)
            .status()
            .ok()?
            .success();
        mounted.then_some(SmallDisk(dir))
    }

    pub fn grow(&self, bytes: usize) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={bytes}")])
            .arg(&self.0)
            .status()
            .expect("run mount");
        assert!(status.success(), "remount {} larger", self.0.display());
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}
