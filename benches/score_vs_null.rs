//! `Score`, V2 `ModelInfer` and REST `infer` against do-nothing servers on the same
//! protos (`support/null_server.rs`), side by side in one run: the real server holds 200k
//! simulated events (warm features), the null servers answer a fixed answer captured
//! from it, and the project's load generator drives both in turn (null, real, null,
//! real) so the ratio is read on the same machine state. The targets: `Score` at
//! 32 in flight >= 0.90 of the null server, one client p50 <= 1.15x.
//!
//! `cargo bench --bench score_vs_null` (env: SECONDS=5 per run, EVENTS=200000).

use std::time::Duration;

use streamscore::api::{client, pb, v2pb};
use streamscore::config::Settings;
use streamscore::loadtest::{self, Call, LoadReport, LoadSpec};
use streamscore::simulate::{SimConfig, Simulator};
use streamscore::time::{HOUR_MS, MINUTE_MS, now_ms};
use tokio::net::TcpListener;

mod support;
use support::null_server::{self, Answers};

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let seconds = support::env_usize("SECONDS", 5) as u64;
    let events = support::env_usize("EVENTS", 200_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut settings = Settings {
        data_dir: dir.path().to_path_buf(),
        ..Settings::default()
    };
    settings.metrics.listen = None;
    settings.models.dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models");

    // Both servers on one runtime of 2 workers (the machine's cores); only one of them
    // is loaded at a time.
    let served = support::serve(&settings, 2);
    let real_url = served.url.clone();
    let real_rest_url = served.rest_url.clone();

    let client_runtime = support::runtime("load-client", 2);
    let end = now_ms() - MINUTE_MS;
    let sim = SimConfig {
        start_ms: end - 40 * HOUR_MS,
        ..SimConfig::default()
    };
    let history: Vec<_> = Simulator::new(sim.clone())
        .take_while(|e| e.event_time_ms <= end)
        .take(events)
        .collect();
    let (null_url, null_rest_url) = client_runtime.block_on(async {
        let count = history.len();
        let channel = client::connect(&real_url).await.expect("connect");
        client::stream_events(channel.clone(), history.into_iter(), 1_000, 8, |_| {})
            .await
            .expect("history streams");
        println!("real server fed {count} simulated events\n");
        let answers = capture_answers(channel, &sim).await;
        let grpc = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let http = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let urls = (
            format!("http://{}", grpc.local_addr().expect("addr")),
            format!("http://{}", http.local_addr().expect("addr")),
        );
        served
            .runtime
            .spawn(async move { null_server::spawn(answers, grpc, http) });
        urls
    });

    client_runtime.block_on(async {
        let spec = |call, concurrency, model: &str| LoadSpec {
            call,
            concurrency,
            connections: 4,
            duration: Duration::from_secs(seconds),
            rate: None,
            model: model.to_string(),
            batch: 1,
            sim: sim.clone(),
        };
        println!("| run | server | requests/s | p50 | p99 | p99.9 | errors |");
        println!("|---|---|---|---|---|---|---|");
        let mut summary = Vec::new();
        for (name, call, concurrency, null, real) in [
            ("Score, 32 in flight", Call::Score, 32, &null_url, &real_url),
            (
                "Score, 1 client in a loop",
                Call::Score,
                1,
                &null_url,
                &real_url,
            ),
            (
                "V2 ModelInfer, 32 in flight",
                Call::V2,
                32,
                &null_url,
                &real_url,
            ),
            (
                "REST infer, 32 in flight",
                Call::Rest,
                32,
                &null_rest_url,
                &real_rest_url,
            ),
        ] {
            let spec = spec(call, concurrency, "fraud");
            let mut runs: Vec<(LoadReport, LoadReport)> = Vec::new();
            for _ in 0..2 {
                let null_report = run(null, &spec).await;
                println!("{}", null_report.table_row(&[name, "null"]));
                let real_report = run(real, &spec).await;
                println!("{}", real_report.table_row(&[name, "streamscore"]));
                runs.push((null_report, real_report));
            }
            let throughput: Vec<String> = runs
                .iter()
                .map(|(null, real)| format!("{:.2}", real.per_second() / null.per_second()))
                .collect();
            let p50: Vec<String> = runs
                .iter()
                .map(|(null, real)| {
                    format!("{:.2}x", real.p50_us as f64 / null.p50_us.max(1) as f64)
                })
                .collect();
            summary.push(format!(
                "{name}: throughput {} of null, p50 {}",
                throughput.join(" / "),
                p50.join(" / ")
            ));
        }
        println!();
        for line in summary {
            println!("{line}");
        }
        println!("(targets: Score 32 in flight >= 0.90 of null; one client p50 <= 1.15x)");
    });
    served.stop();
}

async fn run(url: &str, spec: &LoadSpec) -> LoadReport {
    loadtest::run(url, &Default::default(), spec)
        .await
        .expect("load runs")
}

/// One real answer of each kind, for the null servers to give back.
async fn capture_answers(channel: client::Connection, sim: &SimConfig) -> Answers {
    let payment = Simulator::new(sim.clone())
        .find(|event| event.event_type == "payment")
        .expect("the simulation has payments");
    let mut scoring = pb::scoring_client::ScoringClient::new(channel.clone());
    let mut event = payment.clone();
    event.event_id.clear();
    event.event_time_ms = now_ms();
    let score = scoring
        .score(pb::ScoreRequest {
            model: "fraud".into(),
            event: Some(event.into()),
            ..Default::default()
        })
        .await
        .expect("the real server scores")
        .into_inner();
    let mut inference =
        v2pb::grpc_inference_service_client::GrpcInferenceServiceClient::new(channel);
    let infer = inference
        .model_infer(v2pb::ModelInferRequest {
            model_name: "fraud".into(),
            inputs: loadtest::payment_tensors(&payment),
            ..Default::default()
        })
        .await
        .expect("the real server infers")
        .into_inner();
    let rest_infer = rest_json(&infer);
    Answers {
        score,
        infer,
        rest_infer,
    }
}

/// The V2 REST answer with the same outputs as `infer`.
fn rest_json(infer: &v2pb::ModelInferResponse) -> String {
    let outputs: Vec<serde_json::Value> = infer
        .outputs
        .iter()
        .map(|output| {
            let contents = output.contents.clone().unwrap_or_default();
            let data: Vec<serde_json::Value> = if contents.bytes_contents.is_empty() {
                contents.fp64_contents.iter().map(|v| (*v).into()).collect()
            } else {
                contents
                    .bytes_contents
                    .iter()
                    .map(|b| String::from_utf8_lossy(b).into_owned().into())
                    .collect()
            };
            serde_json::json!({
                "name": output.name,
                "datatype": output.datatype,
                "shape": output.shape,
                "data": data,
            })
        })
        .collect();
    serde_json::json!({
        "model_name": infer.model_name,
        "model_version": infer.model_version,
        "outputs": outputs,
    })
    .to_string()
}
