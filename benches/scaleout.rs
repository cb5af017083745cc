//! Scale-out on this machine: librdkafka's mock cluster and a 3-master Redis Cluster on
//! loopback (started here, as the tests do). Three hours of simulated traffic go
//! through a router and two aggregators into Redis (aggregator throughput), and the
//! same events over gRPC into an embedded server; then `Score` at 32 in flight and one
//! client in a loop, against the embedded server and against one scorer reading Redis,
//! side by side in the same run; and Redis memory per entity.
//!
//! `cargo bench --features cluster --bench scaleout` (env: SECONDS=10 per run).

#[path = "../tests/common/redis.rs"]
#[allow(dead_code)]
mod redis;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rdkafka::mocking::MockCluster;
use streamscore::api::client;
use streamscore::config::{KafkaSettings, Settings};
use streamscore::events::validate;
use streamscore::features::{Admission, Engine};
use streamscore::loadtest::{self, Call, LoadSpec};
use streamscore::scaleout::{Pipeline, aggregate, route};
use streamscore::simulate::{SimConfig, Simulator};
use streamscore::time::{HOUR_MS, MINUTE_MS, now_ms};
use tokio::net::TcpListener;

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let seconds: u64 = std::env::var("SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let redis = redis::RedisCluster::start();
    let kafka = MockCluster::new(1).expect("mock cluster");
    let brokers = kafka.bootstrap_servers();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut settings = Settings {
        data_dir: dir.path().to_path_buf(),
        ..Settings::default()
    };
    settings.metrics.listen = None;
    settings.http.listen = None;
    settings.models.dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    settings.cluster.redis = redis.nodes.clone();
    settings.kafka = KafkaSettings {
        brokers: brokers.clone(),
        topics: vec!["events".into()],
        batch_records: 1_000,
        ..KafkaSettings::default()
    };
    let definitions = streamscore::server::load_definitions(&settings).expect("definitions");
    let pipeline = Arc::new(Pipeline::new(&settings, definitions));
    kafka.create_topic("events", 1, 1).expect("topic");
    for topic in pipeline.entity_topics() {
        kafka.create_topic(&topic, 4, 1).expect("entity topic");
    }
    kafka
        .create_topic(&pipeline.checkpoint_topic(), 1, 1)
        .expect("checkpoint topic");
    let baseline = redis_memory(&redis);

    let end = now_ms() - MINUTE_MS;
    let sim = SimConfig {
        start_ms: end - 3 * HOUR_MS,
        ..SimConfig::default()
    };
    let history: Vec<_> = Simulator::new(sim.clone())
        .take_while(|e| e.event_time_ms <= end)
        .collect();
    // What the aggregators must apply: one record per entity an admitted event names.
    let mut engine = Engine::new(Arc::clone(&pipeline.definitions), pipeline.engine);
    let mut expected = 0u64;
    for raw in &history {
        let event = validate(&pipeline.definitions, &pipeline.limits, raw, None).expect("valid");
        if engine.admit(&event) == Admission::Apply {
            expected += engine.entities_of(&event).len() as u64;
            engine.apply(&event, 0);
        }
    }

    let server_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("server runtime");
    server_runtime.block_on(async {
        streamscore::kafka::produce::produce(
            &brokers,
            "events",
            streamscore::config::KafkaFormat::Json,
            history.iter().cloned(),
            |_| {},
        )
        .await
        .expect("produce");
    });
    let (stop_pipeline, stopped) = tokio::sync::watch::channel(false);
    let started = Instant::now();
    {
        let (pipeline, stopped) = (Arc::clone(&pipeline), stopped.clone());
        server_runtime
            .spawn(async move { route(pipeline, "route".into(), "route-0".into(), stopped).await });
    }
    for _ in 0..2 {
        let (pipeline, stopped) = (Arc::clone(&pipeline), stopped.clone());
        server_runtime.spawn(async move { aggregate(pipeline, "aggregate".into(), stopped).await });
    }
    // Polled every millisecond: the first applied record marks the end of the start-up
    // (consumer groups joined, topics found), the rest is throughput.
    let mut first = None;
    loop {
        let applied = pipeline.counters.applied.load(Ordering::Relaxed);
        if applied > 0 && first.is_none() {
            first = Some((Instant::now(), applied));
        }
        if applied >= expected {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let took = started.elapsed().as_secs_f64();
    let (first_at, first_applied) = first.expect("something applied");
    let steady = first_at.elapsed().as_secs_f64();
    let _ = stop_pipeline.send(true);
    let keys = redis_keys(&redis);
    let memory = redis_memory(&redis).saturating_sub(baseline);
    println!(
        "router + 2 aggregators: {} events ({expected} entity records) in {took:.1} s with start-up, {steady:.2} s after the first record: {:.0} records/s, about {:.0} events/s",
        history.len(),
        (expected - first_applied) as f64 / steady,
        (expected - first_applied) as f64 / steady * history.len() as f64 / expected as f64,
    );
    println!(
        "Redis: {keys} keys, {memory} bytes over the baseline: {} bytes per entity",
        memory / keys.max(1)
    );

    let (embedded_url, scorer_url, cached_url, stop) = server_runtime.block_on(async {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let store = streamscore::server::open_store(&settings)
            .await
            .expect("store opens");
        let embedded = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let scorer = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let cached = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let urls = (
            format!("http://{}", embedded.local_addr().expect("addr")),
            format!("http://{}", scorer.local_addr().expect("addr")),
            format!("http://{}", cached.local_addr().expect("addr")),
        );
        {
            let (settings, mut stopped) = (settings.clone(), stopped.clone());
            tokio::spawn(async move {
                streamscore::server::run(embedded, store, &settings, async move {
                    let _ = stopped.changed().await;
                })
                .await
                .expect("embedded runs")
            });
        }
        {
            let (settings, mut stopped) = (settings.clone(), stopped.clone());
            tokio::spawn(async move {
                streamscore::server::run_scorer(scorer, &settings, async move {
                    let _ = stopped.changed().await;
                })
                .await
                .expect("scorer runs")
            });
        }
        {
            // The same scorer answering from states up to 1 s old.
            let (mut settings, mut stopped) = (settings.clone(), stopped.clone());
            settings.cluster.scorer_cache = streamscore::time::Millis(1_000);
            tokio::spawn(async move {
                streamscore::server::run_scorer(cached, &settings, async move {
                    let _ = stopped.changed().await;
                })
                .await
                .expect("cached scorer runs")
            });
        }
        (urls.0, urls.1, urls.2, stop)
    });

    let client_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("client runtime");
    client_runtime.block_on(async {
        let channel = client::connect(&embedded_url).await.expect("connect");
        client::stream_events(channel, history.into_iter(), 1_000, 8, |_| {})
            .await
            .expect("history streams");
        println!("\n| run | server | requests/s | p50 | p99 | p99.9 | errors |");
        println!("|---|---|---|---|---|---|---|");
        for (name, concurrency) in [
            ("Score, 32 in flight", 32),
            ("Score, 1 client in a loop", 1),
        ] {
            for (server, url) in [
                ("embedded", &embedded_url),
                ("scorer (Redis)", &scorer_url),
                ("scorer, 1 s cache", &cached_url),
            ] {
                let spec = LoadSpec {
                    call: Call::Score,
                    concurrency,
                    connections: 4,
                    duration: Duration::from_secs(seconds),
                    rate: None,
                    model: "fraud".into(),
                    batch: 1,
                    sim: sim.clone(),
                };
                let report = loadtest::run(url, &Default::default(), &spec)
                    .await
                    .expect("load runs");
                println!("{}", report.table_row(&[name, server]));
            }
        }
    });
    let _ = stop.send(true);
    drop(server_runtime);
}

/// Bytes used by all masters together.
fn redis_memory(redis: &redis::RedisCluster) -> u64 {
    (0..3)
        .map(|index| {
            redis
                .cli(index, &["info", "memory"])
                .and_then(|info| {
                    info.lines()
                        .find_map(|line| line.strip_prefix("used_memory:"))
                        .and_then(|value| value.trim().parse::<u64>().ok())
                })
                .unwrap_or(0)
        })
        .sum()
}

/// Keys over all masters.
fn redis_keys(redis: &redis::RedisCluster) -> u64 {
    (0..3)
        .map(|index| {
            redis
                .cli(index, &["dbsize"])
                .and_then(|reply| reply.trim().parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum()
}
