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
        common::copy_dir(template.path(), work.path());
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
        common::copy_dir(dir.path(), middle.path());
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

/// Byte offsets at which the records of a segment start.
fn record_starts(bytes: &[u8]) -> Vec<usize> {
    let mut starts = Vec::new();
    let mut offset = 0;
    while offset + 16 <= bytes.len() {
        starts.push(offset);
        let len = u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap()) as usize;
        offset += 16 + len;
    }
    starts
}

fn first_seq_of(segment: &Path) -> u64 {
    segment
        .file_stem()
        .unwrap()
        .to_string_lossy()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newest_segment_cut_at_any_record_boundary_or_deleted_is_found_with_its_range() {
    let events = events();
    let template = logged(&events, false).await;
    let newest = segments(template.path()).pop().unwrap();
    let first = first_seq_of(&newest);
    let bytes = std::fs::read(&newest).unwrap();
    let starts = record_starts(&bytes);
    assert!(starts.len() > 100, "{} records", starts.len());
    let last = EVENTS as u64;
    let refused = |dir: &Path, kept: u64| {
        let error = open(dir)
            .err()
            .expect("missing acknowledged records stop the start");
        let message = error.to_string();
        let range = format!("records {}..={last} are missing", first + kept);
        assert!(message.contains(&range), "kept {kept}: {message}");
    };
    // Every record boundary (the whole segment's records kept is no damage at all).
    for (kept, at) in starts.iter().enumerate() {
        let work = tempfile::tempdir().unwrap();
        common::copy_dir(template.path(), work.path());
        let segment = segments_dir(work.path()).join(newest.file_name().unwrap());
        std::fs::write(&segment, &bytes[..*at]).unwrap();
        refused(work.path(), kept as u64);
        assert_eq!(
            std::fs::read(&segment).unwrap(),
            &bytes[..*at],
            "the cut segment is left as it was"
        );
    }
    // Inside a record: a cut that looks like a torn write, but was acknowledged.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    for _ in 0..20 {
        let record = rng.random_range(0..starts.len());
        let at = starts[record] + rng.random_range(1..16);
        let work = tempfile::tempdir().unwrap();
        common::copy_dir(template.path(), work.path());
        let segment = segments_dir(work.path()).join(newest.file_name().unwrap());
        std::fs::write(&segment, &bytes[..at]).unwrap();
        assert!(open(work.path()).is_err(), "cut at {at}");
    }
    // The newest segment deleted, with no snapshot to tell.
    let work = tempfile::tempdir().unwrap();
    common::copy_dir(template.path(), work.path());
    std::fs::remove_file(segments_dir(work.path()).join(newest.file_name().unwrap())).unwrap();
    refused(work.path(), 0);

    // Repair records exactly that range; the server starts with the rest, and takes
    // the lost events again when they are sent again.
    let report = streamscore::log::repair::repair(&segments_dir(work.path()), 0).unwrap();
    assert_eq!(report.losses.len(), 1, "{report:?}");
    assert_eq!(
        (report.losses[0].from, report.losses[0].to),
        (first, last + 1),
        "{report:?}"
    );
    let store = open(work.path()).expect("starts after repair");
    let present = all_present(&store, &events).await as u64;
    assert_eq!(present, first - 1, "the records before the deleted segment");
    store.close().unwrap();
    drop(store);
    let again = streamscore::log::repair::repair(&segments_dir(work.path()), 0).unwrap();
    assert_eq!((again.lost(), again.moved.len()), (0, 0), "{again:?}");
    let store = open(work.path()).expect("starts again");
    assert_eq!(all_present(&store, &events).await as usize, EVENTS);
    store.close().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_untangles_two_writers_a_reversed_range_and_a_damaged_loss_record() {
    let events = events();
    let (shared, own) = events.split_at(2_000);
    let dir = logged(shared, false).await;
    let other = tempfile::tempdir().unwrap();
    common::copy_dir(dir.path(), other.path());
    // Two writers on copies of one data dir, each appending its own events.
    let theirs: Vec<RawEvent> = own
        .iter()
        .map(|event| RawEvent {
            event_id: format!("other-{}", event.event_id),
            ..event.clone()
        })
        .collect();
    for (path, batch) in [(dir.path(), own), (other.path(), &theirs[..])] {
        let store = open(path).unwrap();
        assert_eq!(
            store.ingest(batch).await.unwrap().accepted as usize,
            batch.len()
        );
        store.close().unwrap();
    }
    // Their newest segments, interleaved in one file as two processes appending to it
    // would leave them.
    let ours = segments(dir.path()).pop().unwrap();
    let mine = std::fs::read(&ours).unwrap();
    let yours = std::fs::read(segments_dir(other.path()).join(ours.file_name().unwrap())).unwrap();
    let chunks = |bytes: &[u8]| -> Vec<Vec<u8>> {
        let mut starts = record_starts(bytes);
        starts.push(bytes.len());
        starts
            .windows(2)
            .map(|w| bytes[w[0]..w[1]].to_vec())
            .collect::<Vec<_>>()
            .chunks(40)
            .map(|c| c.concat())
            .collect()
    };
    let (a, b) = (chunks(&mine), chunks(&yours));
    let mut mixed = Vec::new();
    for k in 0..a.len().max(b.len()) {
        for side in [&a, &b] {
            if let Some(chunk) = side.get(k) {
                mixed.extend_from_slice(chunk);
            }
        }
    }
    std::fs::write(&ours, &mixed).unwrap();
    // And a loss record no one can read: a reversed range and a garbled line.
    let losses = segments_dir(dir.path()).join("losses.txt");
    std::fs::write(&losses, "900 800 reversed\n\x01garbage\n").unwrap();
    let error = open(dir.path()).err().expect("refused");
    assert!(error.to_string().contains("losses.txt"), "{error}");

    let report = streamscore::log::repair::repair(&segments_dir(dir.path()), 0).unwrap();
    assert_eq!(report.lost(), 0, "nothing of ours is lost: {report:?}");
    assert_eq!(report.out_of_sequence as usize, own.len(), "{report:?}");
    assert!(report.losses.iter().all(|loss| loss.from < loss.to));
    let store = open(dir.path()).expect("serves after repair");
    assert_eq!(all_present(&store, &events).await as usize, EVENTS);
    store.close().unwrap();
    drop(store);
    let again = streamscore::log::repair::repair(&segments_dir(dir.path()), 0).unwrap();
    assert_eq!(
        (again.lost(), again.moved.len(), again.out_of_sequence),
        (0, 0, 0),
        "{again:?}"
    );
    assert!(open(dir.path()).is_ok(), "still serves");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_store_on_one_data_dir_is_refused_naming_the_first() {
    let events = events();
    let dir = tempfile::tempdir().unwrap();
    let first = open(dir.path()).unwrap();
    let refused = open(dir.path()).err().expect("a second owner is refused");
    let message = refused.to_string();
    assert!(
        message.contains("in use") && message.contains(&format!("pid {}", std::process::id())),
        "{message}"
    );
    assert_eq!(
        first.ingest(&events).await.unwrap().accepted as usize,
        EVENTS
    );
    first.close().unwrap();
    drop(first);
    let again = open(dir.path()).expect("the data dir is free once the first is gone");
    assert_eq!(all_present(&again, &events).await as usize, EVENTS);
    again.close().unwrap();
}
