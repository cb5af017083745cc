//! `streamscore mine segments` end to end: users of a simulated history clustered by
//! k-means. A reference run of linfa's KMeans in this test, on the standardised rows
//! the command exported and with the config's seed, gives the same inertia and the same
//! assignment. Then the artifact, promoted like a model on a server that ingested the
//! same history, assigns every sampled user at the same moment to the segment training
//! gave it (`Score` on the segments model answers the segment).

mod common;

use std::io::Write;
use std::process::Command;

use linfa::DatasetBase;
use linfa::traits::{Fit, Predict};
use linfa_clustering::{KMeans, KMeansInit};
use ndarray::Array2;
use rand_xoshiro::Xoshiro256Plus;
use rand_xoshiro::rand_core::SeedableRng;
use streamscore::api::pb::{self, scoring_client::ScoringClient};
use streamscore::events::RawEvent;
use streamscore::simulate::{SimConfig, Simulator};

const CONFIG: &str = r#"
name = "segments"
entity = "user"
features = ["user_payments_7d", "user_amount_7d", "user_views_24h", "user_carts_24h", "user_orders_30d"]
k = 4
sweep = [2, 5]
seed = 11
n_runs = 3
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_equal_linfa_and_serving_assigns_as_training_did() {
    let events: Vec<RawEvent> = Simulator::new(SimConfig {
        users: 800,
        ..SimConfig::default()
    })
    .take(40_000)
    .collect();
    let work = tempfile::tempdir().expect("work dir");
    let history = work.path().join("history.jsonl");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&history).expect("file"));
    for event in &events {
        serde_json::to_writer(&mut file, event).expect("JSON");
        file.write_all(b"\n").expect("write");
    }
    drop(file);
    let config = work.path().join("segments.toml");
    std::fs::write(&config, CONFIG).expect("config");
    let models = work.path().join("models");
    let assignments = work.path().join("assignments.csv");
    let output = Command::new(env!("CARGO_BIN_EXE_streamscore"))
        .args(["mine", "segments", "--events"])
        .arg(&history)
        .arg("--config")
        .arg(&config)
        .arg("--models-dir")
        .arg(&models)
        .arg("--export-assignments")
        .arg(&assignments)
        .output()
        .expect("runs mine segments");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(models.join("segments/segments-v1.sweep.png").exists());

    // The reference: linfa on the exported rows, the config's seed and settings.
    let mut reader = csv::Reader::from_path(&assignments).expect("assignments");
    let (mut ids, mut segments, mut values) = (Vec::new(), Vec::new(), Vec::new());
    for record in reader.records() {
        let record = record.expect("record");
        ids.push(record[0].to_string());
        segments.push(record[1].parse::<usize>().expect("segment"));
        values.extend(
            record
                .iter()
                .skip(2)
                .map(|v| v.parse::<f64>().expect("value")),
        );
    }
    let rows = Array2::from_shape_vec((ids.len(), 5), values).expect("matrix");
    assert!(ids.len() > 500, "{} users", ids.len());
    let reference = KMeans::params_with_rng(4, Xoshiro256Plus::seed_from_u64(11))
        .init_method(KMeansInit::KMeansPlusPlus)
        .n_runs(3)
        .fit(&DatasetBase::from(rows.clone()))
        .expect("linfa fits");
    let report: serde_json::Value = serde_json::from_slice(
        &std::fs::read(models.join("segments/segments-v1.report.json")).expect("report"),
    )
    .expect("report JSON");
    let inertia = report["inertia"].as_f64().expect("inertia");
    assert_eq!(inertia, reference.inertia(), "inertia equals linfa's run");
    assert_eq!(
        reference.predict(&rows).to_vec(),
        segments,
        "every assignment equals linfa's"
    );
    let as_of = report["as_of_ms"].as_i64().expect("as_of_ms");

    // Served: the same history ingested, the segments model promoted.
    let server = common::TestServer::start_promoted(&models, "segments", "segments@1").await;
    let owned = events.clone();
    streamscore::api::client::stream_events(
        server.channel().await,
        owned.into_iter(),
        500,
        2,
        |_| {},
    )
    .await
    .expect("ingests");
    let mut scoring = ScoringClient::new(server.channel().await);
    let mut seen_segments = std::collections::BTreeSet::new();
    for (id, segment) in ids.iter().zip(&segments).step_by(ids.len() / 60) {
        let answer = scoring
            .score(pb::ScoreRequest {
                model: "segments".into(),
                event: Some(pb::Event {
                    event_type: "page_view".into(),
                    event_time_ms: as_of,
                    entities: [("user".to_string(), id.clone())].into(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .expect("scores")
            .into_inner();
        assert_eq!(answer.score, *segment as f64, "user {id}");
        seen_segments.insert(*segment);
    }
    assert!(
        seen_segments.len() >= 2,
        "the sample spans segments: {seen_segments:?}"
    );
    server.stop().await;
}
