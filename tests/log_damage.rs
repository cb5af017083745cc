//! A damaged event log is never cut silently: single-byte flips anywhere in the newest
//! segment either leave every acknowledged event in place or stop the start naming the
//! segment and offset (and the file is left as it was); a deleted segment stops the
//! start; `repair` moves the damage aside and loses exactly the damaged records.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::{Rng, SeedableRng};
use streamscore::config::Settings;
use streamscore::definitions::Definitions;
use streamscore::events::RawEvent;
use streamscore::log::{segments_dir, snapshots_dir};
use streamscore::simulate::{SimConfig, Simulator};
use streamscore::store::{FeatureStore, StoreError};

const EVENTS: usize = 3_000;

fn settings(dir: &Path) -> Settings {
    let mut settings = Settings {
        data_dir: dir.to_path_buf(),
        ..Settings::default()
    };
    // Several segments from a few thousand events.
    settings.log.segment_bytes = 128 << 10;
    settings
}

fn open(dir: &Path) -> Result<FeatureStore, StoreError> {
    FeatureStore::open(&settings(dir), Arc::new(Definitions::default_shop())).map(|(s, _)| s)
}

fn events() -> Vec<RawEvent> {
    Simulator::new(SimConfig {
        seed: 3,
        users: 300,
        ..SimConfig::default()
    })
    .take(EVENTS)
    .collect()
}

/// A data dir holding `events`, all acknowledged, with or without its snapshots.
async fn logged(events: &[RawEvent], keep_snapshots: bool) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).unwrap();
    for batch in events.chunks(250) {
        let outcome = store.ingest(batch).await.unwrap();
        assert_eq!(outcome.accepted as usize, batch.len());
    }
    store.close().unwrap();
    drop(store);
    if !keep_snapshots {
        std::fs::remove_dir_all(snapshots_dir(dir.path())).unwrap();
    }
    dir
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

/// Non-empty segments, oldest first.
fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut segments: Vec<PathBuf> = std::fs::read_dir(segments_dir(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .filter(|p| std::fs::metadata(p).unwrap().len() > 0)
        .collect();
    segments.sort();
    segments
}

/// Every acknowledged event is present: sent again, each is a duplicate.
async fn all_present(store: &FeatureStore, events: &[RawEvent]) -> u32 {
    let mut duplicates = 0;
    for batch in events.chunks(500) {
        duplicates += store.ingest(batch).await.unwrap().duplicates;
    }
    duplicates
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_byte_flips_in_the_newest_segment_never_cut_acknowledged_events() {
    let events = events();
    let template = logged(&events, false).await;
    let newest = segments(template.path()).pop().unwrap();
    let length = std::fs::metadata(&newest).unwrap().len() as usize;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(42);
    let (mut refused, mut started) = (0, 0);
    for round in 0..100 {
        let work = tempfile::tempdir().unwrap();
        copy_dir(template.path(), work.path());
        let segment = segments_dir(work.path()).join(newest.file_name().unwrap());
        let mut bytes = std::fs::read(&segment).unwrap();
        let at = rng.random_range(0..length);
        bytes[at] ^= rng.random_range(1..=255u8);
        std::fs::write(&segment, &bytes).unwrap();

        match open(work.path()) {
            Ok(store) => {
                started += 1;
                assert_eq!(
                    all_present(&store, &events).await as usize,
                    EVENTS,
                    "round {round}: started after a flip at byte {at} but lost events"
                );
                store.close().unwrap();
            }
            Err(error) => {
                refused += 1;
                let message = error.to_string();
                let name = segment.file_name().unwrap().to_string_lossy().to_string();
                assert!(
                    message.contains(&name) && message.contains("byte"),
                    "round {round}: flip at {at}: {message}"
                );
                assert_eq!(
                    std::fs::read(&segment).unwrap(),
                    bytes,
                    "round {round}: the damaged segment must be left as it was"
                );
            }
        }
    }
    assert_eq!(refused + started, 100);
    assert!(refused > 0, "a flip must be noticed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_segment_stops_the_start() {
    let events = events();
    for keep_snapshots in [false, true] {
        let dir = logged(&events, keep_snapshots).await;
        let all = segments(dir.path());
        assert!(all.len() >= 3, "several segments: {all:?}");
        // A middle segment: a gap in the sequence.
        let middle = tempfile::tempdir().unwrap();
        copy_dir(dir.path(), middle.path());
        std::fs::remove_file(segments_dir(middle.path()).join(all[1].file_name().unwrap()))
            .unwrap();
        let error = open(middle.path()).err().expect("a gap stops the start");
        assert!(error.to_string().contains("missing"), "{error}");

        // The newest: only a snapshot beyond the log can tell.
        if keep_snapshots {
            std::fs::remove_file(all.last().unwrap()).unwrap();
            let error = open(dir.path()).err().expect("a snapshot ahead of the log");
            assert!(error.to_string().contains("missing"), "{error}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_in_a_segment_the_snapshot_covers_is_found() {
    let events = events();
    let dir = logged(&events, true).await;
    let oldest = segments(dir.path()).remove(0);
    let mut bytes = std::fs::read(&oldest).unwrap();
    bytes[100] ^= 0x10;
    std::fs::write(&oldest, &bytes).unwrap();
    let error = open(dir.path())
        .err()
        .expect("covered damage is still found");
    assert!(error.to_string().contains("byte"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_moves_the_damage_aside_and_loses_exactly_the_damaged_record() {
    let events = events();
    let dir = logged(&events, false).await;
    let segment = segments(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    let original = bytes.len();
    // Inside the second record's payload: that record alone is damaged.
    let first_len = u32::from_le_bytes(bytes[0..4].try_into().unwrap()) as usize;
    bytes[16 + first_len + 20] ^= 0x01;
    std::fs::write(&segment, &bytes).unwrap();
    assert!(open(dir.path()).is_err());

    let report = streamscore::log::repair::repair(&segments_dir(dir.path()), 0).unwrap();
    assert_eq!(report.lost(), 1, "{report:?}");
    assert_eq!(report.moved.len(), 1, "{report:?}");
    let (aside, moved) = &report.moved[0];
    assert!(aside.exists());
    assert_eq!(
        std::fs::metadata(&segment).unwrap().len() as usize + moved,
        original,
        "every byte is either kept or moved aside"
    );

    let store = open(dir.path()).expect("starts after repair");
    assert_eq!(all_present(&store, &events).await as usize, EVENTS - 1);
    store.close().unwrap();
    // A second repair finds nothing more to do.
    let again = streamscore::log::repair::repair(&segments_dir(dir.path()), 0).unwrap();
    assert_eq!((again.lost(), again.moved.len()), (0, 0), "{again:?}");
}
