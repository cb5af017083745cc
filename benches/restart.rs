//! Restart time: logs N simulated events (default 10M), then measures recovery as after
//! a hard kill: (a) no snapshot, the whole log replayed; (b) from a snapshot taken at
//! 90% of the log, replaying the rest.
//!
//! Each is measured with the log applied on the reading thread alone, then with the
//! default replay threads (one per core; the store uses them for a full replay only),
//! alternating in the same run.
//!
//! `cargo bench --bench restart` (env: EVENTS=10000000; LOG_DIR=path keeps the logged
//! events there and reuses them on the next run, which then measures recovery alone).

use std::sync::Arc;
use std::time::Instant;

use streamscore::config::Settings;
use streamscore::definitions::Definitions;
use streamscore::log::{FsyncPolicy, snapshots_dir};
use streamscore::simulate::{SimConfig, Simulator};
use streamscore::store::FeatureStore;

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let events: usize = std::env::var("EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    let scratch = tempfile::tempdir().expect("temp dir");
    let kept = std::env::var_os("LOG_DIR").map(std::path::PathBuf::from);
    let data_dir = kept.clone().unwrap_or_else(|| scratch.path().to_path_buf());
    let reuse = kept.is_some() && data_dir.join("log").exists();
    let mut settings = Settings {
        data_dir: data_dir.clone(),
        ..Settings::default()
    };
    settings.log.fsync = FsyncPolicy::Never; // setup speed only; recovery reads the same bytes
    let definitions = Arc::new(Definitions::default_shop());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");

    let started = Instant::now();
    if !reuse {
        let (store, _) = FeatureStore::open(&settings, Arc::clone(&definitions)).expect("open");
        let mut simulator = Simulator::new(SimConfig::default());
        let mut written = 0;
        while written < events {
            let batch: Vec<_> = simulator
                .by_ref()
                .take(10_000.min(events - written))
                .collect();
            written += batch.len();
            runtime.block_on(store.ingest(&batch)).expect("ingest");
            if written == events / 10 * 9 {
                store.snapshot().expect("snapshot");
            }
        }
        // Dropped without close(): no final snapshot, as after a kill.
    }
    if !reuse {
        eprintln!(
            "logged {events} events in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }

    // Each recovery twice, alternating: on the reading thread alone (as before replay
    // had threads), then with the default threads (one per core).
    let snapshots = snapshots_dir(&data_dir);
    let aside = data_dir.join("snapshots.aside");
    if aside.exists() && !snapshots.exists() {
        // An earlier run stopped while they were aside.
        std::fs::rename(&aside, &snapshots).expect("put the snapshots back");
    }
    for snapshot in [true, false] {
        if !snapshot {
            // Set aside rather than deleted, so a kept log dir has it on the next run.
            std::fs::rename(&snapshots, &aside).expect("set the snapshots aside");
        }
        for threads in [Some(0), None] {
            settings.log.replay_threads = threads;
            let started = Instant::now();
            let (store, report) =
                FeatureStore::open(&settings, Arc::clone(&definitions)).expect("reopen");
            let elapsed = started.elapsed().as_secs_f64();
            let what = match report.snapshot_seq {
                Some(seq) => format!("restart from snapshot at seq {seq} + replay of"),
                None => "restart with no snapshot, full replay of".to_string(),
            };
            println!(
                "{what} {} events, {} replay threads: {elapsed:.2} s",
                report.replayed, report.replay_threads
            );
            drop(store);
        }
    }
    let _ = std::fs::remove_dir_all(&snapshots);
    std::fs::rename(&aside, &snapshots).expect("put the snapshots back");
}
