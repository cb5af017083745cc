//! No stalls while a snapshot is written: `Score` latency (fraud model, in process) while
//! ingest writes go on, first without, then during snapshots of an engine holding 1M
//! users + 1M cards + 1M devices. Target: p99 during a snapshot within 2x of p99 without
//! one. Before, a snapshot serialised the whole engine under the read lock, and the fair
//! lock made every `Score` behind a queued ingest writer wait for all of it.
//!
//! `cargo bench --bench snapshot_stall` (env: ENTITIES=1000000, SECONDS=6).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use streamscore::events::RawEvent;
use streamscore::scoring;
use streamscore::store::FeatureStore;
use streamscore::time::{DAY_MS, now_ms};
use support::payment;

mod support;

/// Scores in a loop for `seconds` while another thread ingests; returns the latencies
/// in microseconds, sorted.
fn measure(
    store: &Arc<FeatureStore>,
    fraud: &Arc<streamscore::registry::LoadedModel>,
    entities: usize,
    seconds: u64,
    next_id: &mut usize,
) -> Vec<u64> {
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let store = Arc::clone(store);
        let stop = Arc::clone(&stop);
        let mut id = *next_id;
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let batch: Vec<RawEvent> = (0..100).map(|k| payment(id + k, now_ms())).collect();
                id += 100;
                store.submit(&batch).expect("ingest");
            }
            id
        })
    };
    let mut latencies = Vec::new();
    let started = Instant::now();
    let mut i = 0usize;
    while started.elapsed() < Duration::from_secs(seconds) {
        let mut event = payment(i % entities, now_ms());
        event.event_id = "score".into();
        let began = Instant::now();
        let scored =
            scoring::score_with(store, Arc::clone(fraud), &event, 5, false).expect("scores");
        latencies.push(began.elapsed().as_micros() as u64);
        std::hint::black_box(scored.score);
        i += 7_919;
    }
    stop.store(true, Ordering::Relaxed);
    *next_id = writer.join().expect("writer");
    latencies.sort_unstable();
    latencies
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let entities: usize = std::env::var("ENTITIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let seconds: u64 = std::env::var("SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let (_dir, store, definitions) = support::store();
    let store = Arc::new(store);
    let end = now_ms() - 1_000;
    let built = Instant::now();
    for chunk in (0..entities).collect::<Vec<_>>().chunks(1_000) {
        let batch: Vec<RawEvent> = chunk
            .iter()
            .map(|&i| {
                payment(
                    i,
                    end - DAY_MS / 2 + (i as i64 * (DAY_MS / 2)) / entities as i64,
                )
            })
            .collect();
        store.submit(&batch).expect("history");
    }
    println!(
        "{entities} users + cards + devices applied in {:.1} s",
        built.elapsed().as_secs_f64()
    );
    let fraud = support::model(&definitions, "fraud");

    let mut next_id = entities;
    let quiet = measure(&store, &fraud, entities, seconds, &mut next_id);
    let ingested_quiet = next_id - entities;
    let snapshotting = Arc::new(AtomicBool::new(true));
    let snapshots = {
        let store = Arc::clone(&store);
        let running = Arc::clone(&snapshotting);
        std::thread::spawn(move || {
            // As the server runs them: on a lowest-priority thread.
            streamscore::background::lower_current_thread_priority();
            let mut written = Vec::new();
            while running.load(Ordering::Relaxed) {
                let began = Instant::now();
                if store.snapshot().expect("snapshot").is_some() {
                    written.push(began.elapsed().as_secs_f64());
                }
            }
            written
        })
    };
    let before_snapshots = next_id;
    let during = measure(&store, &fraud, entities, seconds, &mut next_id);
    let ingested_during = next_id - before_snapshots;
    snapshotting.store(false, Ordering::Relaxed);
    let written = snapshots.join().expect("snapshots");
    for (name, sorted) in [
        ("without a snapshot", &quiet),
        ("during snapshots", &during),
    ] {
        println!(
            "Score {name}: {} calls, p50 {} us, p99 {} us, p99.9 {} us, max {} us",
            sorted.len(),
            percentile(sorted, 0.5),
            percentile(sorted, 0.99),
            percentile(sorted, 0.999),
            sorted.last().copied().unwrap_or(0)
        );
    }
    println!(
        "events ingested meanwhile: {ingested_quiet} without a snapshot, {ingested_during} during snapshots"
    );
    println!(
        "{} snapshots written during the second phase, {:.2} s each on average; p99 ratio {:.2}",
        written.len(),
        written.iter().sum::<f64>() / written.len().max(1) as f64,
        percentile(&during, 0.99) as f64 / percentile(&quiet, 0.99).max(1) as f64
    );
}
