//! The gRPC load bench for scoring: starts the real server (its own runtime, on
//! loopback), feeds it three hours of simulated traffic, then runs the load generator
//! of `streamscore loadtest` (a second runtime, same 2 cores) for the README's
//! targets: `Score` at 32 in flight, the same payment through the Open Inference
//! Protocol (gRPC `ModelInfer` and REST `infer`) beside it, one client in a loop,
//! `ScoreCandidates` with 100 candidates, and durable ingest of 100-event batches; then
//! `Score` p99 alone and beside 2 clients sending 10,000-event batches back to back,
//! on this server and on a second one whose ingest threads keep to the last CPU
//! (`ingest.cpus`).
//!
//! `cargo bench --bench score_load` (env: SECONDS=10 per run; BESIDE_ONLY=1 for the
//! last table alone).

use std::time::Duration;

use streamscore::api::client;
use streamscore::config::Settings;
use streamscore::loadtest::{self, Call, LoadSpec};
use streamscore::simulate::{SimConfig, Simulator};
use streamscore::time::{HOUR_MS, MINUTE_MS, now_ms};

mod support;

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let seconds: u64 = std::env::var("SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut settings = Settings {
        data_dir: dir.path().to_path_buf(),
        ..Settings::default()
    };
    settings.metrics.listen = None;
    settings.http.listen = None;
    settings.models.dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models");

    let served = support::serve(&settings, support::env_usize("SERVER_WORKERS", 2));
    let (url, rest_url) = (served.url.clone(), served.rest_url.clone());

    let client_runtime = support::runtime("score-client", 2);
    let end = now_ms() - MINUTE_MS;
    let sim = SimConfig {
        start_ms: end - 3 * HOUR_MS,
        ..SimConfig::default()
    };
    client_runtime.block_on(async {
        let count = feed_history(&url, &sim, end).await;
        println!("server fed {count} simulated events (3 hours of traffic)\n");

        // The standard protocol beside native Score, twice, so the ratio is seen in one
        // run on the same machine state.
        let runs = [
            ("Score, 32 in flight", Call::Score, 32, "fraud", 1),
            (
                "V2 ModelInfer (gRPC), 32 in flight",
                Call::V2,
                32,
                "fraud",
                1,
            ),
            (
                "V2 REST infer (JSON), 32 in flight",
                Call::Rest,
                32,
                "fraud",
                1,
            ),
            ("Score, 32 in flight (again)", Call::Score, 32, "fraud", 1),
            (
                "V2 ModelInfer (gRPC), 32 in flight (again)",
                Call::V2,
                32,
                "fraud",
                1,
            ),
            ("Score, 1 client in a loop", Call::Score, 1, "fraud", 1),
            (
                "ScoreCandidates x100, 8 in flight",
                Call::Candidates,
                8,
                "purchase",
                100,
            ),
            (
                "IngestBatch x100 (durable), 8 in flight",
                Call::Ingest,
                8,
                "",
                100,
            ),
        ];
        // BESIDE_ONLY=1: only the last table (Score beside heavy ingest).
        let runs = if std::env::var_os("BESIDE_ONLY").is_some() {
            &runs[..0]
        } else {
            &runs[..]
        };
        println!("| run | requests/s | p50 | p99 | p99.9 | errors |");
        println!("|---|---|---|---|---|---|");
        for &(name, call, concurrency, model, batch) in runs {
            let spec = LoadSpec {
                call,
                concurrency,
                connections: 4,
                duration: Duration::from_secs(seconds),
                rate: None,
                model: model.to_string(),
                batch,
                sim: sim.clone(),
            };
            let target = if call == Call::Rest { &rest_url } else { &url };
            let report = loadtest::run(target, &Default::default(), &spec)
                .await
                .expect("load runs");
            println!("{}", report.table_row(&[name]));
        }

        beside_heavy_ingest(&url, &sim, seconds, "ingest threads on any CPU").await;
    });
    served.stop();

    // The same beside a server whose ingest threads keep to the last CPU
    // (`ingest.cpus`), with its own copy of the history.
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    if cpus < 2 {
        println!("\none CPU: no run with the ingest threads on a CPU of their own");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    settings.data_dir = dir.path().to_path_buf();
    settings.ingest.cpus = vec![cpus - 1];
    let served = support::serve(&settings, support::env_usize("SERVER_WORKERS", 2));
    let url = served.url.clone();
    client_runtime.block_on(async {
        feed_history(&url, &sim, end).await;
        let label = format!("ingest threads on CPU {} (ingest.cpus)", cpus - 1);
        beside_heavy_ingest(&url, &sim, seconds, &label).await;
    });
    served.stop();
}

/// Streams the simulated history up to `end` into the server at `url`.
async fn feed_history(url: &str, sim: &SimConfig, end: i64) -> usize {
    let history: Vec<_> = Simulator::new(sim.clone())
        .take_while(|e| e.event_time_ms <= end)
        .collect();
    let count = history.len();
    let channel = client::connect(url).await.expect("connect");
    client::stream_events(channel, history.into_iter(), 1_000, 8, |_| {})
        .await
        .expect("history streams");
    count
}

/// Score p99 beside heavy ingest: 2 clients sending 10,000-event IngestBatch calls back
/// to back, against Score alone before and after (the same run). The ingest clients
/// are other machines in life: here a runtime of their own on the last CPU, so building
/// their 10,000-event messages neither delays the Score client nor moves between runs.
async fn beside_heavy_ingest(url: &str, sim: &SimConfig, seconds: u64, label: &str) {
    let spec = |call, concurrency, rate, model: &str, batch| LoadSpec {
        call,
        concurrency,
        connections: 2,
        duration: Duration::from_secs(seconds),
        rate,
        model: model.to_string(),
        batch,
        sim: sim.clone(),
    };
    let score = spec(Call::Score, 8, Some(2_000.0), "fraud", 1);
    let ingest = spec(Call::Ingest, 2, None, "", 10_000);
    let options = Default::default();
    let alone = loadtest::run(url, &options, &score)
        .await
        .expect("load runs");
    let ingest_url = url.to_string();
    let ingesting = std::thread::spawn(move || {
        let last_cpu = std::thread::available_parallelism().map_or(1, usize::from) - 1;
        tokio::runtime::Builder::new_multi_thread()
            .thread_name("ingest-client")
            .worker_threads(2)
            .on_thread_start(move || streamscore::background::pin_current_thread(&[last_cpu]))
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(async { loadtest::run(&ingest_url, &Default::default(), &ingest).await })
    });
    let beside = loadtest::run(url, &options, &score)
        .await
        .expect("load runs");
    let ingesting = ingesting
        .join()
        .expect("ingest clients")
        .expect("load runs");
    let again = loadtest::run(url, &options, &score)
        .await
        .expect("load runs");
    println!("\n{label}:\n");
    println!("| run | requests/s | p50 | p99 | p99.9 | errors |");
    println!("|---|---|---|---|---|---|");
    println!("{}", alone.table_row(&["Score at 2,000/s, alone"]));
    println!(
        "{}",
        beside.table_row(&["Score at 2,000/s, beside 2 IngestBatch x10,000 clients"])
    );
    println!(
        "{}",
        ingesting.table_row(&["IngestBatch x10,000 (durable), 2 clients back to back"])
    );
    println!("{}", again.table_row(&["Score at 2,000/s, alone (again)"]));
    println!(
        "\nScore p99 beside heavy ingest / alone (the worse of the two), {label}: {:.2}x (target: within 2x)",
        beside.p99_us as f64 / alone.p99_us.max(again.p99_us).max(1) as f64
    );
}
