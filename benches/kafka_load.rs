//! Kafka load (cargo feature `kafka`): records/s from a topic through the source
//! (decode, event-time alignment, validation, dedup, engine, durable log with fsync,
//! offset commits) and payments/s through the scoring stream (score, produce the
//! decision, commit the transaction), against librdkafka's mock cluster in this process.
//! In the same run, the same events straight into the store (no Kafka) for the ratio.
//!
//! `cargo bench --features kafka --bench kafka_load` (env: EVENTS=200000
//! PAYMENTS=20000 PARTITIONS=4 BATCH=1000). The mock broker shares the 2 cores.

mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use rdkafka::mocking::MockCluster;
use streamscore::config::{KafkaFormat, Settings};
use streamscore::events::RawEvent;
use streamscore::kafka::SourceCounters;
use streamscore::kafka::scoring::{ScoringCounters, Stream};
use streamscore::simulate::{SimConfig, Simulator};
use support::env_usize;

/// Waits until `done()` reaches `total`; the rate counts from the first progress, so
/// the group join (seconds on the mock broker) is left out. Returns (per second,
/// seconds).
async fn rate(total: u64, done: impl Fn() -> u64) -> (f64, f64) {
    let mut first: Option<(Instant, u64)> = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let now = done();
        if first.is_none() && now > 0 {
            first = Some((Instant::now(), now));
        }
        if now >= total {
            let (start, at_start) = first.unwrap_or((Instant::now(), 0));
            let seconds = start.elapsed().as_secs_f64().max(1e-9);
            return ((total - at_start) as f64 / seconds, seconds);
        }
        assert!(Instant::now() < deadline, "{now} of {total} in 10 minutes");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn settings(dir: &std::path::Path, brokers: &str, batch: usize) -> Settings {
    let mut settings = Settings {
        data_dir: dir.to_path_buf(),
        ..Settings::default()
    };
    settings.metrics.listen = None;
    settings.http.listen = None;
    settings.kafka.brokers = brokers.to_string();
    settings.kafka.batch_records = batch;
    settings
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return; // nothing to list or smoke-test under `cargo test --benches`
    }
    let events = env_usize("EVENTS", 200_000);
    let payments_wanted = env_usize("PAYMENTS", 20_000);
    let partitions = env_usize("PARTITIONS", 4) as i32;
    let batch = env_usize("BATCH", 1_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        eprintln!("generating simulated events...");
        let all: Vec<RawEvent> = Simulator::new(SimConfig::default())
            .take(events + payments_wanted * 20)
            .collect();
        let (history, later) = all.split_at(events);
        let payments: Vec<RawEvent> = later
            .iter()
            .filter(|e| e.event_type == "payment")
            .take(payments_wanted)
            .cloned()
            .collect();

        // The same events straight into a store: the engine and the log alone.
        let direct = {
            let dir = tempfile::tempdir().expect("temp dir");
            let store = streamscore::server::open_store(&settings(dir.path(), "", batch))
                .await
                .expect("store");
            let start = Instant::now();
            for chunk in history.chunks(batch) {
                store.ingest(chunk).await.expect("ingest");
            }
            history.len() as f64 / start.elapsed().as_secs_f64()
        };
        println!("store.ingest directly, {batch}-event batches: {direct:.0} events/s");

        for format in [KafkaFormat::Json, KafkaFormat::Protobuf] {
            let cluster = MockCluster::new(1).expect("mock cluster");
            let brokers = cluster.bootstrap_servers();
            cluster
                .create_topic("shop-events", partitions, 1)
                .expect("topic");
            cluster.create_topic("shop-events-refused", 1, 1).expect("topic");
            let produced = Instant::now();
            streamscore::kafka::produce::produce(
                &brokers,
                "shop-events",
                format,
                history.iter().cloned(),
                |_| {},
            )
            .await
            .expect("produce");
            eprintln!("{format:?}: produced {} in {:.1?}", history.len(), produced.elapsed());
            let dir = tempfile::tempdir().expect("temp dir");
            let mut settings = settings(dir.path(), &brokers, batch);
            settings.kafka.format = format;
            let store = streamscore::server::open_store(&settings).await.expect("store");
            let counters = Arc::new(SourceCounters::default());
            let (stop, stopped) = tokio::sync::watch::channel(false);
            let source = tokio::spawn(streamscore::kafka::run(
                Arc::clone(&store),
                settings.kafka.clone(),
                settings.ingest.allowed_lateness.0 / 2,
                Arc::clone(&counters),
                stopped,
            ));
            let (per_second, seconds) =
                rate(history.len() as u64, || counters.applied.load(Relaxed)).await;
            println!(
                "kafka source ({format:?}, {partitions} partitions, batches of {batch}): {per_second:.0} events/s ({seconds:.1} s), {:.2} of store.ingest",
                per_second / direct
            );
            let _ = stop.send(true);
            source.await.expect("join").expect("source");

            if format == KafkaFormat::Json {
                // Scoring: the fraud model on the history just applied.
                cluster.create_topic("payments", partitions, 1).expect("topic");
                cluster.create_topic("decisions", partitions, 1).expect("topic");
                streamscore::kafka::produce::produce(
                    &brokers,
                    "payments",
                    KafkaFormat::Json,
                    payments.iter().cloned(),
                    |_| {},
                )
                .await
                .expect("produce payments");
                let registry = streamscore::server::open_registry(
                    &settings,
                    Arc::clone(store.definitions()),
                )
                .await
                .expect("registry (run from the repository root, for models/)");
                let mut kafka = settings.kafka.clone();
                kafka.scoring.input_topic = "payments".into();
                let counters = Arc::new(ScoringCounters::default());
                let (stop, stopped) = tokio::sync::watch::channel(false);
                let scoring = tokio::spawn(streamscore::kafka::scoring::run(
                    Stream {
                        store: Arc::clone(&store),
                        registry,
                        settings: kafka.clone(),
                        transactional_id: "bench".into(),
                        counters: Arc::clone(&counters),
                    },
                    stopped,
                ));
                let (per_second, seconds) = rate(payments.len() as u64, || {
                    counters.scored.load(Relaxed) + counters.errors.load(Relaxed)
                })
                .await;
                println!(
                    "kafka scoring stream ({} payments, {} per transaction): {per_second:.0} payments/s ({seconds:.1} s), {} transactions, {} aborted, {} errors",
                    payments.len(),
                    kafka.scoring.batch_records,
                    counters.transactions.load(Relaxed),
                    counters.aborts.load(Relaxed),
                    counters.errors.load(Relaxed)
                );
                let _ = stop.send(true);
                scoring.await.expect("join");
            }
        }
    });
}
