//! Restart time: logs N simulated events (default 10M), then measures recovery as after
//! a hard kill: (a) no snapshot, the whole log replayed; (b) from a snapshot taken at
//! 90% of the log, replaying the rest.
//!
//! `cargo bench --bench restart` (env: EVENTS=10000000).

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
    let dir = tempfile::tempdir().expect("temp dir");
    let mut settings = Settings {
        data_dir: dir.path().to_path_buf(),
        ..Settings::default()
    };
    settings.log.fsync = FsyncPolicy::Never; // setup speed only; recovery reads the same bytes
    let definitions = Arc::new(Definitions::default_shop());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");

    let started = Instant::now();
    {
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
    eprintln!(
        "logged {events} events in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let started = Instant::now();
    let (store, report) = FeatureStore::open(&settings, Arc::clone(&definitions)).expect("reopen");
    println!(
        "restart from snapshot at seq {:?} + replay of {} events: {:.2} s",
        report.snapshot_seq,
        report.replayed,
        started.elapsed().as_secs_f64()
    );
    drop(store);

    std::fs::remove_dir_all(snapshots_dir(dir.path())).expect("drop snapshots");
    let started = Instant::now();
    let (_store, report) = FeatureStore::open(&settings, definitions).expect("reopen");
    println!(
        "restart with no snapshot, full replay of {} events: {:.2} s",
        report.replayed,
        started.elapsed().as_secs_f64()
    );
}
