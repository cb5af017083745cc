//! gRPC ingest load generator: starts the real server in process on loopback (durable
//! acks, fsync always), streams pre-generated simulated events over several concurrent
//! `IngestStream` calls, and prints events/s.
//!
//! `cargo bench --bench ingest_load` (env: EVENTS=1000000 STREAMS=4 BATCH=1000).

use std::sync::Arc;
use std::time::Instant;

use streamscore::api::client;
use streamscore::api::pb::{self, ingest_client::IngestClient};
use streamscore::config::Settings;
use streamscore::events::RawEvent;
use streamscore::simulate::{SimConfig, Simulator};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return; // nothing to list or smoke-test under `cargo test --benches`
    }
    let (events, streams, batch) = (
        env("EVENTS", 1_000_000),
        env("STREAMS", 4),
        env("BATCH", 1_000),
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut settings = Settings { data_dir: dir.path().to_path_buf(), ..Settings::default() };
        // Concurrent streams drift apart in event time; a wide lateness keeps the bench
        // about throughput rather than about which stream ran ahead.
        settings.ingest.allowed_lateness = streamscore::time::Millis(30 * streamscore::time::DAY_MS);
        settings.ingest.dedup_horizon = settings.ingest.allowed_lateness;
        settings.metrics.listen = None;
        settings.http.listen = None;
        let store = streamscore::server::open_store(&settings).await.expect("store");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server_settings = settings.clone();
        let server = tokio::spawn(async move {
            streamscore::server::run(listener, store, &server_settings, async {
                let _ = stopped.await;
            })
            .await
        });

        eprintln!("generating {events} simulated events...");
        let all: Vec<RawEvent> = Simulator::new(SimConfig::default()).take(events).collect();
        // Requests are built before the clock starts, so the generator spends its share of
        // the two cores on sending, not on building messages. Batch i goes to stream
        // i % streams, so the streams stay close in event time.
        let mut shares: Vec<Vec<pb::IngestRequest>> = vec![Vec::new(); streams];
        for (index, chunk) in all.chunks(batch).enumerate() {
            let events = chunk.iter().cloned().map(pb::Event::from).collect();
            shares[index % streams].push(pb::IngestRequest { batch_id: index as u64, events });
        }
        drop(all);
        let started = Instant::now();
        let mut tasks = Vec::new();
        for share in shares {
            let channel = client::connect(&url).await.expect("connect");
            tasks.push(tokio::spawn(async move {
                let mut ingest = IngestClient::new(channel).max_encoding_message_size(usize::MAX);
                let mut acks = ingest.ingest_stream(tokio_stream::iter(share)).await?.into_inner();
                let (mut accepted, mut refused) = (0u64, 0usize);
                while let Some(ack) = acks.message().await? {
                    accepted += u64::from(ack.accepted);
                    refused += ack.refused.len();
                }
                Ok::<_, tonic::Status>((accepted, refused))
            }));
        }
        let (mut accepted, mut refused) = (0u64, 0usize);
        for task in tasks {
            let (stream_accepted, stream_refused) = task.await.expect("task").expect("stream");
            accepted += stream_accepted;
            refused += stream_refused;
        }
        let elapsed = started.elapsed().as_secs_f64();
        println!(
            "ingest over gRPC, durable acks (fsync always): {accepted} accepted, {refused} refused in {elapsed:.2} s = {:.0} events/s ({streams} streams, batches of {batch})",
            accepted as f64 / elapsed
        );
        let _ = stop.send(());
        let _ = Arc::new(server.await);
    });
}
