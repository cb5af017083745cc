//! Recovery: a torn final log record and a corrupted snapshot are survived, and the
//! recovered features equal the naive model over exactly the events that survived.

mod common;

use std::sync::Arc;

use common::{assert_matches_naive, read_all, sample_entities};
use streamscore::config::Settings;
use streamscore::definitions::Definitions;
use streamscore::events::RawEvent;
use streamscore::log::{segments_dir, snapshots_dir};
use streamscore::simulate::{SimConfig, Simulator};
use streamscore::store::FeatureStore;

fn settings(dir: &std::path::Path) -> Settings {
    Settings {
        data_dir: dir.to_path_buf(),
        ..Settings::default()
    }
}

fn open(settings: &Settings) -> (FeatureStore, streamscore::store::RecoveryReport) {
    FeatureStore::open(settings, Arc::new(Definitions::default_shop())).expect("store opens")
}

fn events(count: usize) -> Vec<RawEvent> {
    Simulator::new(SimConfig {
        seed: 7,
        users: 500,
        ..SimConfig::default()
    })
    .take(count)
    .collect()
}

async fn ingest(store: &FeatureStore, events: &[RawEvent]) {
    for batch in events.chunks(500) {
        let outcome = store.ingest(batch).await.expect("ingest");
        assert_eq!(
            outcome.accepted as usize,
            batch.len(),
            "{:?}",
            outcome.refused.first()
        );
    }
}

fn newest_segment(dir: &std::path::Path) -> std::path::PathBuf {
    let mut segments: Vec<_> = std::fs::read_dir(segments_dir(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .filter(|p| std::fs::metadata(p).unwrap().len() > 0)
        .collect();
    segments.sort();
    segments.pop().expect("a non-empty segment")
}

#[tokio::test]
async fn a_torn_final_record_is_truncated_and_the_rest_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let settings = settings(dir.path());
    let events = events(5_000);
    {
        let (store, _) = open(&settings);
        ingest(&store, &events).await;
        store.close().unwrap();
    }
    // Drop the snapshots so recovery must replay the log; then a crash in the middle of
    // writing a 5,001st record: its header and a few bytes of it reached the file, and
    // it was never acknowledged (the acked mark says 5,000).
    std::fs::remove_dir_all(snapshots_dir(dir.path())).unwrap();
    let segment = newest_segment(dir.path());
    let bytes = std::fs::read(&segment).unwrap();
    let last_len = {
        // The last whole record's bytes: walk the records from the start.
        let mut offset = 0;
        let mut last = 0;
        while offset < bytes.len() {
            last = offset;
            offset +=
                16 + u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap()) as usize;
        }
        bytes.len() - last
    };
    let mut torn = bytes[bytes.len() - last_len..].to_vec();
    torn[8..16].copy_from_slice(&5_001u64.to_le_bytes());
    torn.truncate(last_len - 7);
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&segment)
        .unwrap();
    std::io::Write::write_all(&mut file, &torn).unwrap();
    drop(file);

    let (store, report) = open(&settings);
    assert_eq!(report.replayed, 5_000);
    assert_eq!(report.truncated_bytes as usize, torn.len());
    assert_eq!(
        std::fs::read(&segment).unwrap(),
        bytes,
        "cut back to the acknowledged records"
    );
    let definitions = Definitions::default_shop();
    let samples = sample_entities(&definitions, &events, 20);
    let at = events[4_999].event_time_ms;
    assert_matches_naive(
        &definitions,
        &common::naive::over_default_shop(&events),
        &samples,
        &read_all(&store, &samples, at),
        at,
    );

    // The log keeps working after the cut, and nothing acknowledged was lost: every
    // event sent again is a duplicate.
    let again = store.ingest(&events[4_000..]).await.unwrap();
    assert_eq!((again.accepted, again.duplicates), (0, 1_000));
    store.close().unwrap();
    drop(store);
    let (store, _) = open(&settings);
    assert_matches_naive(
        &definitions,
        &common::naive::over_default_shop(&events),
        &samples,
        &read_all(&store, &samples, at),
        at,
    );
}

#[tokio::test]
async fn a_corrupted_snapshot_falls_back_to_an_older_one_or_a_full_replay() {
    let dir = tempfile::tempdir().unwrap();
    let settings = settings(dir.path());
    let events = events(6_000);
    for part in [&events[..3_000], &events[3_000..]] {
        let (store, _) = open(&settings);
        ingest(&store, part).await;
        store.close().unwrap();
    }
    let mut snapshots: Vec<_> = std::fs::read_dir(snapshots_dir(dir.path()))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    snapshots.sort();
    assert_eq!(snapshots.len(), 2);
    let mut bytes = std::fs::read(&snapshots[1]).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&snapshots[1], &bytes).unwrap();

    let definitions = Definitions::default_shop();
    let samples = sample_entities(&definitions, &events, 20);
    let naive = common::naive::over_default_shop(&events);
    let at = events[5_999].event_time_ms;

    let (store, report) = open(&settings);
    assert_eq!(
        report.snapshot_seq,
        Some(3_000),
        "fell back to the older snapshot"
    );
    assert_eq!(report.replayed, 3_000);
    assert_matches_naive(
        &definitions,
        &naive,
        &samples,
        &read_all(&store, &samples, at),
        at,
    );
    drop(store);

    // With every snapshot unreadable, the whole log is replayed.
    std::fs::write(&snapshots[0], b"garbage").unwrap();
    std::fs::write(&snapshots[1], &bytes).unwrap();
    let (store, report) = open(&settings);
    assert_eq!(report.snapshot_seq, None);
    assert_eq!(report.replayed, 6_000);
    assert_matches_naive(
        &definitions,
        &naive,
        &samples,
        &read_all(&store, &samples, at),
        at,
    );
}

/// Snapshots are copied one shard at a time while ingest goes on, so a snapshot holds
/// some entities as of its start and others with later events. Restoring it and
/// replaying the log after its start must apply every event to every entity exactly
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_taken_during_ingest_restores_every_event_once() {
    let dir = tempfile::tempdir().unwrap();
    let settings = settings(dir.path());
    let events = events(20_000);
    {
        let (store, _) = open(&settings);
        let store = Arc::new(store);
        let snapshotting = {
            let store = Arc::clone(&store);
            let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let stop = Arc::clone(&done);
            let thread = std::thread::spawn(move || {
                let mut taken = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if store.snapshot().unwrap().is_some() {
                        taken += 1;
                    }
                }
                taken
            });
            (done, thread)
        };
        for batch in events[..15_000].chunks(100) {
            let outcome = store.ingest(batch).await.expect("ingest");
            assert_eq!(outcome.accepted as usize, batch.len());
        }
        snapshotting
            .0
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let taken = snapshotting.1.join().unwrap();
        assert!(taken >= 1, "a snapshot was taken during ingest");
        ingest(&store, &events[15_000..]).await;
        // No final snapshot: the start below restores one taken mid-ingest.
    }
    let (store, report) = open(&settings);
    let snapshot_seq = report.snapshot_seq.expect("a snapshot");
    assert!(snapshot_seq <= 15_000, "{report:?}");
    let definitions = Definitions::default_shop();
    let samples = sample_entities(&definitions, &events, 40);
    let at = events[19_999].event_time_ms;
    assert_matches_naive(
        &definitions,
        &common::naive::over_default_shop(&events),
        &samples,
        &read_all(&store, &samples, at),
        at,
    );
}
