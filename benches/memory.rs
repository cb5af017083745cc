//! Memory: RSS of the engine holding 1M users + 1M cards + 1M devices with the default
//! features (one payment per user/card/device triple, plus a page view per user).
//!
//! `cargo bench --bench memory` (env: ENTITIES=1000000); with DEDUP_IDS=N it measures the
//! dedup set holding N ids instead.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use streamscore::definitions::Definitions;
use streamscore::events::{Limits, RawEvent, validate};
use streamscore::features::{Admission, Engine, EngineSettings};

mod support;

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let entities: usize = std::env::var("ENTITIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let definitions = Arc::new(Definitions::default_shop());
    let limits = Limits {
        max_future_skew_ms: 0,
        max_id_bytes: 128,
    };
    let settings = EngineSettings {
        allowed_lateness_ms: 3_600_000,
        dedup_horizon_ms: 3_600_000,
    };

    // The dedup set alone: ids of a day at a steady rate, all within the horizon.
    // Measured in a run of its own (freed memory stays in the process and would hide
    // what the engine takes after it): `DEDUP_IDS=10000000 cargo bench --bench memory`.
    if let Some(ids) = std::env::var("DEDUP_IDS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        let dedup_before = rss_mib();
        let mut dedup = streamscore::features::Dedup::default();
        for i in 0..ids {
            let id = streamscore::definitions::fnv128(format!("event-{i}").as_bytes());
            dedup.insert(id, 1_767_225_600_000 + i as i64, 0);
        }
        let dedup_after = rss_mib();
        println!(
            "dedup: {} ids held, {:.0} MiB, {:.1} bytes per id",
            dedup.len(),
            dedup_after - dedup_before,
            (dedup_after - dedup_before) * 1024.0 * 1024.0 / ids as f64
        );
        return;
    }

    let mut engine = Engine::new(Arc::clone(&definitions), settings);
    let before = rss_mib();
    let started = Instant::now();
    let start_ms = 1_767_225_600_000i64;
    for i in 0..entities {
        // Spread over a day so tiles and dedup behave as in real traffic.
        let time = start_ms + (i as i64 * 86_400_000) / entities as i64;
        let payment = support::payment(i, time);
        let view = RawEvent {
            event_id: format!("v{i}"),
            event_type: "page_view".into(),
            event_time_ms: time,
            entities: BTreeMap::from([("user".into(), format!("u{i}"))]),
            ..RawEvent::default()
        };
        for raw in [&payment, &view] {
            let event = validate(&definitions, &limits, raw, None).expect("valid");
            if engine.admit(&event) == Admission::Apply {
                engine.apply(&event, 0);
            }
        }
    }
    let after = rss_mib();
    println!(
        "memory: {:?} held, RSS {:.0} MiB (engine {:.0} MiB above a {:.0} MiB baseline), built in {:.1} s",
        engine.entity_counts(),
        after,
        after - before,
        before,
        started.elapsed().as_secs_f64()
    );
}
