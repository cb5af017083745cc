//! A hot entity: one IP behind a carrier NAT with 1,000,000 distinct users in the last
//! 24 hours (page views and logins), then `Score` of a payment naming that IP (fraud
//! model, 5 reasons), in process. Target: under 1 ms. Before distinct counts were
//! bounded, each event shifted a sorted vector of a million entries and each read sorted
//! a million hashes.
//!
//! `cargo bench --bench hot_entity`

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};

mod support;
use streamscore::events::RawEvent;
use streamscore::scoring;
use streamscore::time::{HOUR_MS, now_ms};

const USERS: usize = 1_000_000;
const HOT_IP: &str = "carrier-nat-1";

fn event(i: usize, time_ms: i64) -> RawEvent {
    let mut event = RawEvent {
        event_id: format!("e{i}"),
        event_type: if i.is_multiple_of(2) {
            "page_view"
        } else {
            "login"
        }
        .into(),
        event_time_ms: time_ms,
        ..RawEvent::default()
    };
    event.entities.insert("user".into(), format!("u{i}"));
    event.entities.insert("ip".into(), HOT_IP.into());
    event
}

fn hot_entity(c: &mut Criterion) {
    let (_dir, store, definitions) = support::store();
    let end = now_ms() - 1_000;
    let start = end - 20 * HOUR_MS;
    let started = Instant::now();
    let mut batch = Vec::with_capacity(1_000);
    for i in 0..USERS {
        let time = start + (i as i64) * (end - start) / USERS as i64;
        batch.push(event(i, time));
        if batch.len() == 1_000 {
            store.submit(&batch).expect("applies");
            batch.clear();
        }
    }
    println!(
        "{USERS} distinct users on one IP applied in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let users = store
        .read("ip", HOT_IP, &["ip_users_24h".to_string()], None)
        .expect("read");
    println!("ip_users_24h = {:?} (true {USERS})", users.values[0].1);

    let fraud = support::model(&definitions, "fraud");
    let mut payment = RawEvent {
        event_id: "pay".into(),
        event_type: "payment".into(),
        ..RawEvent::default()
    };
    for (entity, id) in [("user", "u7"), ("card", "c7"), ("ip", HOT_IP)] {
        payment.entities.insert(entity.into(), id.into());
    }
    payment.numbers.insert("amount".into(), 25.0);
    c.bench_function("score a payment naming an IP with 1M distinct users", |b| {
        b.iter(|| {
            payment.event_time_ms = now_ms();
            let scored = scoring::score_with(&store, Arc::clone(&fraud), &payment, 5, false)
                .expect("scores");
            black_box(scored.score)
        })
    });
}

criterion_group!(benches, hot_entity);
criterion_main!(benches);
