//! `streamscore export` writes the server's log back as the JSON lines that went in, and
//! leaves a damaged tail alone (it may be a live writer's).

use std::process::Command;
use std::sync::Arc;

use streamscore::config::Settings;
use streamscore::definitions::Definitions;
use streamscore::events::RawEvent;
use streamscore::simulate::{SimConfig, Simulator};
use streamscore::store::FeatureStore;

#[tokio::test]
async fn export_gives_back_every_logged_event_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings {
        data_dir: dir.path().to_path_buf(),
        ..Settings::default()
    };
    let events: Vec<RawEvent> = Simulator::new(SimConfig {
        seed: 3,
        ..SimConfig::default()
    })
    .take(3_000)
    .collect();
    let (store, _) = FeatureStore::open(&settings, Arc::new(Definitions::default_shop())).unwrap();
    for batch in events.chunks(1_000) {
        store.ingest(batch).await.unwrap();
    }
    store.close().unwrap();

    // Simulate a writer caught mid-append: garbage after the last record.
    let segment = std::fs::read_dir(dir.path().join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    let length = bytes.len();
    bytes.extend_from_slice(&[9, 0, 0, 0, 1, 2]);
    std::fs::write(&segment, &bytes).unwrap();

    let out = dir.path().join("history.jsonl");
    let status = Command::new(env!("CARGO_BIN_EXE_streamscore"))
        .args(["export", "--data-dir"])
        .arg(dir.path())
        .arg("--out")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let exported: Vec<RawEvent> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(exported, events);
    assert_eq!(
        std::fs::metadata(&segment).unwrap().len() as usize,
        length + 6,
        "export must not repair the log"
    );

    let missing = Command::new(env!("CARGO_BIN_EXE_streamscore"))
        .args(["export", "--data-dir", "/nonexistent"])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no event log"));
}
