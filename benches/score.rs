//! Criterion benches of scoring in process, without the network: one `Score` (request
//! validation, the input vector read from the store, the model, five reasons) with the
//! shipped fraud model, and one `ScoreCandidates` of 100 products with the purchase
//! model. The store holds a few hours of simulated traffic, so entities are warm.
//!
//! `cargo bench --bench score`

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

mod support;
use streamscore::events::RawEvent;
use streamscore::registry::Registry;
use streamscore::scoring::{self, CandidateInput};
use streamscore::simulate::{SimConfig, Simulator};
use streamscore::time::{HOUR_MS, MINUTE_MS, now_ms};

fn score_benches(c: &mut Criterion) {
    let (_dir, store, definitions) = support::store();
    let end = now_ms() - MINUTE_MS;
    let events: Vec<RawEvent> = Simulator::new(SimConfig {
        start_ms: end - 3 * HOUR_MS,
        ..SimConfig::default()
    })
    .take_while(|e| e.event_time_ms <= end)
    .collect();
    for batch in events.chunks(1_000) {
        store.submit(batch).expect("history applies");
    }
    let registry = Registry::new(
        Arc::clone(&definitions),
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models"),
    );
    assert!(registry.scan().expect("models dir").is_empty());
    let fraud = registry.resolve("fraud").expect("fraud model");

    let mut payments: Vec<RawEvent> = events
        .iter()
        .filter(|e| e.event_type == "payment")
        .cloned()
        .collect();
    for payment in &mut payments {
        payment.event_time_ms = now_ms();
    }
    println!(
        "{} events of history, {} payments to score",
        events.len(),
        payments.len()
    );

    let mut group = c.benchmark_group("score");
    group.throughput(Throughput::Elements(1));
    let mut next = 0;
    group.bench_function("one payment, fraud model, 5 reasons", |b| {
        b.iter(|| {
            next = (next + 1) % payments.len();
            let scored = scoring::score_with(&store, Arc::clone(&fraud), &payments[next], 5, false)
                .expect("scores");
            black_box(scored.score)
        })
    });

    let products: Vec<String> = {
        let mut all: Vec<String> = events
            .iter()
            .filter_map(|e| e.entities.get("product").cloned())
            .collect();
        all.sort();
        all.dedup();
        all.truncate(100);
        all
    };
    let candidates: Vec<CandidateInput> = products
        .iter()
        .map(|p| CandidateInput {
            product: p.clone(),
            numbers: Default::default(),
        })
        .collect();
    group.throughput(Throughput::Elements(candidates.len() as u64));
    group.bench_function("100 candidates, purchase model", |b| {
        b.iter(|| {
            next = (next + 1) % payments.len();
            let mut context = RawEvent::default();
            context
                .entities
                .insert("user".into(), payments[next].entities["user"].clone());
            let ranking =
                scoring::score_candidates(&store, &registry, "purchase", context, &candidates, 10)
                    .expect("ranks");
            black_box(ranking.candidates.len())
        })
    });
    group.finish();
}

criterion_group!(benches, score_benches);
criterion_main!(benches);
