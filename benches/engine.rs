//! Criterion benches of the feature engine in process: events applied per second
//! (validation + dedup + every feature of every entity touched), and one entity's reads.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use streamscore::definitions::Definitions;
use streamscore::events::{Limits, RawEvent, validate};
use streamscore::features::{Admission, Engine, EngineSettings};
use streamscore::simulate::{SimConfig, Simulator};

const SETTINGS: EngineSettings = EngineSettings {
    allowed_lateness_ms: 3_600_000,
    dedup_horizon_ms: 86_400_000,
};
const LIMITS: Limits = Limits {
    max_future_skew_ms: 300_000,
    max_id_bytes: 128,
};

fn apply_all(engine: &mut Engine, definitions: &Definitions, events: &[RawEvent]) {
    for raw in events {
        let Ok(event) = validate(definitions, &LIMITS, raw, None) else {
            continue;
        };
        if engine.admit(&event) == Admission::Apply {
            engine.apply(&event, 0);
        }
    }
}

fn engine_benches(c: &mut Criterion) {
    let definitions = Arc::new(Definitions::default_shop());
    let events: Vec<RawEvent> = Simulator::new(SimConfig::default()).take(200_000).collect();

    let mut group = c.benchmark_group("engine");
    group.throughput(Throughput::Elements(events.len() as u64));
    group.sample_size(10);
    group.bench_function("apply 200k simulated events", |b| {
        b.iter_batched(
            || Engine::new(Arc::clone(&definitions), SETTINGS),
            |mut engine| {
                apply_all(&mut engine, &definitions, &events);
                engine
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();

    let mut engine = Engine::new(Arc::clone(&definitions), SETTINGS);
    apply_all(&mut engine, &definitions, &events);
    let at = events.last().map(|e| e.event_time_ms).unwrap_or(0);
    let busy_user = events
        .iter()
        .rev()
        .find(|e| e.event_type == "payment")
        .and_then(|e| e.entities.get("user"))
        .cloned()
        .unwrap_or_default();
    let (user, features) = engine.resolve("user", &[]).expect("user features");
    c.bench_function("read all user features of one user", |b| {
        b.iter(|| {
            black_box(
                engine
                    .view()
                    .read(user, black_box(&busy_user), &features, at),
            )
        })
    });
}

criterion_group!(benches, engine_benches);
criterion_main!(benches);
