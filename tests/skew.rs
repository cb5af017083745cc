//! `streamscore skew` on an embedded server's samples: scores made between ingest
//! batches (recorded and not) re-compute from the event log to the bit; a sample
//! whose vector was altered is reported with the feature named, and the command fails.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use streamscore::api::pb;
use streamscore::definitions::Definitions;
use streamscore::events::RawEvent;
use streamscore::scoring::samples::{SAMPLES_FILE, newest_samples, samples_dir};
use streamscore::simulate::{SimConfig, Simulator};

const STEPS: usize = 8;
const SCORES_PER_STEP: usize = 6;

fn skew(data_dir: &std::path::Path, extra: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_streamscore"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .arg("skew")
        .arg("--data-dir")
        .arg(data_dir)
        .args(extra)
        .output()
        .expect("runs skew");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampled_scores_replay_to_the_bit_and_an_altered_one_is_named() {
    let server = common::TestServer::start(|settings| settings.samples.every = 1).await;
    let events: Vec<RawEvent> = Simulator::new(SimConfig {
        users: 300,
        ..SimConfig::default()
    })
    .take(4_000)
    .collect();
    let definitions = Definitions::default_shop();
    let samples = common::sample_entities(&definitions, &events, 10);
    let of = |entity: &str| common::ids_of(&samples, entity);
    let (users, cards) = (of("user"), of("card"));
    let mut scoring = pb::scoring_client::ScoringClient::new(server.channel().await);
    let mut scored = 0;
    for (step, chunk) in events.chunks(events.len() / STEPS).enumerate() {
        // Owned: the stream sends from its own task.
        let batch: Vec<RawEvent> = chunk.to_vec();
        streamscore::api::client::stream_events(
            server.channel().await,
            batch.into_iter(),
            250,
            2,
            |_| {},
        )
        .await
        .expect("ingests");
        let now = chunk.iter().map(|e| e.event_time_ms).max().unwrap_or(0);
        for i in 0..SCORES_PER_STEP {
            let mut request = common::fraud_payment(3.0 + (step * 10 + i) as f64 * 4.1);
            let event = request.event.as_mut().expect("event");
            event.event_time_ms = now;
            event.entities = [
                ("user", users[(step + i) % users.len()].clone()),
                ("card", cards[(step * 3 + i) % cards.len()].clone()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
            // Every third is recorded: it reads the writer's view, then is applied.
            if i % 3 == 0 {
                request.record = true;
                event.event_id = format!("scored-{step}-{i}");
            }
            scoring.score(request).await.expect("scores");
            scored += 1;
        }
    }

    // The writer appends off the request path; wait until it has all of them.
    let dir = samples_dir(server.dir.path());
    let deadline = Instant::now() + Duration::from_secs(30);
    while newest_samples(&dir, usize::MAX).expect("reads").0.len() < scored {
        assert!(Instant::now() < deadline, "samples not written");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let (ok, report) = skew(server.dir.path(), &["--sample", &scored.to_string()]);
    eprintln!("{report}");
    assert!(ok, "{report}");
    assert!(
        report.contains(&format!("{scored} sampled scores re-computed"))
            && report.contains(": 0 differ"),
        "{report}"
    );

    // One sample altered, as a serving bug would: the check fails and names it.
    let path = dir.join(SAMPLES_FILE);
    let text = std::fs::read_to_string(&path).expect("samples");
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let mut sample: serde_json::Value = serde_json::from_str(&lines[5]).expect("sample");
    let column = sample["vector"]
        .as_array()
        .expect("vector")
        .iter()
        .position(|v| v.as_f64().is_some_and(|v| v > 0.0))
        .expect("a positive feature");
    let value = sample["vector"][column].as_f64().expect("number");
    sample["vector"][column] = serde_json::json!(value * 2.0);
    lines[5] = sample.to_string();
    std::fs::write(&path, lines.join("\n") + "\n").expect("rewrite");
    let fraud = streamscore::registry::Registry::new(
        std::sync::Arc::new(definitions.clone()),
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models"),
    );
    fraud.scan().expect("models");
    let model = fraud
        .resolve(sample["model"].as_str().expect("model"))
        .expect("the sampled version");
    let feature = &model.body.model.columns[column];
    let (ok, report) = skew(server.dir.path(), &["--sample", &scored.to_string()]);
    assert!(!ok, "{report}");
    assert!(report.contains(": 1 differ"), "{report}");
    assert!(
        report.contains(&format!("  {feature}: 1 samples differ")),
        "{report}"
    );
    assert!(report.contains("1 of"), "{report}");

    // No samples: a clear error.
    let empty = tempfile::tempdir().expect("dir");
    let (ok, report) = skew(empty.path(), &[]);
    assert!(!ok);
    assert!(report.contains("no score samples under"), "{report}");
    server.stop().await;
}
