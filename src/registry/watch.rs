//! Watching the models directory: a file dropped (or rewritten) there is loaded without
//! a restart. Polling, not inotify: a few stat calls a second cost nothing, work on
//! every file system (network mounts included), and need no extra dependency. A file is
//! only tried again when its size or modification time changes, so a bad file is
//! logged once, not every tick.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::{Registry, artifact_files};

pub(super) type Stamp = (u64, Option<SystemTime>);

pub(super) fn stamps(registry: &Registry) -> HashMap<PathBuf, Stamp> {
    artifact_files(registry.dir())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|path| {
            let meta = std::fs::metadata(&path).ok()?;
            Some((path, (meta.len(), meta.modified().ok())))
        })
        .collect()
}

/// Polls the directory every `interval` until the task is dropped; files are compared
/// with what the directory held when [`Registry::scan`] began, so one dropped in
/// between the scan and this task's start is not missed.
pub async fn watch(registry: Arc<Registry>, interval: Duration) {
    let mut seen = registry.scanned_stamps();
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let registry_for_scan = Arc::clone(&registry);
        let Ok(now) = tokio::task::spawn_blocking(move || stamps(&registry_for_scan)).await else {
            continue;
        };
        for (path, stamp) in &now {
            if seen.get(path) == Some(stamp) {
                continue;
            }
            let registry = Arc::clone(&registry);
            let file = path.clone();
            let loaded = tokio::task::spawn_blocking(move || registry.load_file(&file)).await;
            match loaded {
                Ok(Ok(model)) => {
                    tracing::info!(model = %model.reference(), path = %path.display(), "new model file loaded")
                }
                Ok(Err(error)) => {
                    tracing::error!(path = %path.display(), %error, "model file refused; the models already loaded keep serving")
                }
                Err(error) => tracing::error!(%error, "model loading task failed"),
            }
        }
        seen = now;
    }
}
