//! Property test: every aggregation and window of the engine against the naive model,
//! on random event sequences with out-of-order events (within and beyond the allowed
//! lateness), duplicate ids, optional fields, composite keys and entity expiry.

mod common;

use std::sync::Arc;

use common::naive::{Naive, Outcome, Refused, same_value};
use proptest::prelude::*;
use streamscore::definitions::Definitions;
use streamscore::events::{Limits, RawEvent, validate};
use streamscore::features::{Admission, Engine, EngineSettings, ReadError};

const DEFINITIONS: &str = r#"
[entities]
user = {}
card = { ttl = "3m" }
user_card = { parts = ["user", "card"] }

[events.pay]
entities = { user = "required", card = "required" }
fields.amount = { type = "number", required = true, min = 0 }
fields.tip = { type = "number" }
fields.country = { type = "string" }

[events.view]
entities = { user = "required", card = "optional" }
fields.tip = { type = "number" }
fields.page = { type = "string", required = true }

[[features]]
name = "card_pays"
entity = "card"
events = ["pay"]
aggregation = "count"
windows = ["30s", "1m", "5m", "lifetime"]

[[features]]
name = "card_amount"
entity = "card"
events = ["pay"]
aggregation = "sum"
field = "amount"
windows = ["1m", "7m"]

[[features]]
name = "card_stats_mean"
entity = "card"
events = ["pay"]
aggregation = "mean"
field = "amount"
windows = ["2m", "lifetime"]

[[features]]
name = "card_min_2m"
entity = "card"
events = ["pay"]
aggregation = "min"
field = "amount"
window = "2m"

[[features]]
name = "card_max_2m"
entity = "card"
events = ["pay"]
aggregation = "max"
field = "amount"
window = "2m"

[[features]]
name = "card_stddev"
entity = "card"
events = ["pay"]
aggregation = "stddev"
field = "amount"
windows = ["2m", "lifetime"]

[[features]]
name = "card_countries_2m"
entity = "card"
events = ["pay"]
aggregation = "distinct_count"
field = "country"
window = "2m"

[[features]]
name = "card_users_90s"
entity = "card"
events = ["pay", "view"]
aggregation = "distinct_count"
field = "user"
window = "90s"

[[features]]
name = "card_last_amount"
entity = "card"
events = ["pay"]
aggregation = "last"
field = "amount"

[[features]]
name = "card_since_last"
entity = "card"
events = ["pay", "view"]
aggregation = "time_since_last"

[[features]]
name = "card_age"
entity = "card"
events = ["pay", "view"]
aggregation = "age_since_first"

[[features]]
name = "user_tipped"
entity = "user"
events = ["pay", "view"]
aggregation = "count"
field = "tip"
window = "1m"

[[features]]
name = "user_tip_sum_3m"
entity = "user"
events = ["pay", "view"]
aggregation = "sum"
field = "tip"
window = "3m"

[[features]]
name = "user_views"
entity = "user"
events = ["view"]
aggregation = "count"
windows = ["1m", "lifetime"]

[[features]]
name = "user_pages_1m"
entity = "user"
events = ["view"]
aggregation = "distinct_count"
field = "page"
window = "1m"

[[features]]
name = "user_last_tip"
entity = "user"
events = ["pay", "view"]
aggregation = "last"
field = "tip"

[[features]]
name = "user_card_pays_1m"
entity = "user_card"
events = ["pay"]
aggregation = "count"
window = "1m"
"#;

const LATENESS_MS: i64 = 20_000;
const HORIZON_MS: i64 = 60_000;
const BASE_MS: i64 = 1_700_000_000_000;

#[derive(Debug, Clone)]
struct Spec {
    id: u8,
    pay: bool,
    user: u8,
    card: Option<u8>,
    /// Step of the clock before this event, and how far back of it the event is stamped.
    step_ms: i64,
    back_ms: i64,
    amount: f64,
    tip: Option<f64>,
    label: u8,
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        0u8..60,
        any::<bool>(),
        0u8..3,
        proptest::option::of(0u8..3),
        prop_oneof![2 => Just(0i64), 4 => 0i64..8_000, 1 => 20_000i64..200_000],
        prop_oneof![3 => Just(0i64), 2 => 0i64..25_000],
        (0u32..10_000).prop_map(|c| f64::from(c) / 100.0),
        proptest::option::of((0u32..500).prop_map(|c| f64::from(c) / 10.0)),
        0u8..4,
    )
        .prop_map(
            |(id, pay, user, card, step_ms, back_ms, amount, tip, label)| Spec {
                id,
                pay,
                user,
                card,
                step_ms,
                back_ms,
                amount,
                tip,
                label,
            },
        )
}

fn to_events(specs: &[Spec]) -> Vec<RawEvent> {
    let mut clock = BASE_MS;
    specs
        .iter()
        .map(|s| {
            clock += s.step_ms;
            let mut event = RawEvent {
                event_id: format!("e{}", s.id),
                event_type: if s.pay { "pay" } else { "view" }.into(),
                event_time_ms: clock - s.back_ms,
                ..RawEvent::default()
            };
            event.entities.insert("user".into(), format!("u{}", s.user));
            let card = if s.pay {
                Some(s.card.unwrap_or(0))
            } else {
                s.card
            };
            if let Some(card) = card {
                event.entities.insert("card".into(), format!("c{card}"));
            }
            if s.pay {
                event.numbers.insert("amount".into(), s.amount);
                if s.label > 0 {
                    event
                        .strings
                        .insert("country".into(), format!("X{}", s.label));
                }
            } else {
                event.strings.insert("page".into(), format!("p{}", s.label));
            }
            if let Some(tip) = s.tip {
                event.numbers.insert("tip".into(), tip);
            }
            event
        })
        .collect()
}

/// Every feature of a few entities read as of `at`, engine against naive model: the same
/// value, or the same refusal.
fn check_reads(
    engine: &Engine,
    naive: &Naive,
    definitions: &Definitions,
    at: i64,
) -> Result<(), TestCaseError> {
    let ids = [
        "u0", "u1", "u2", "c0", "c1", "c2", "u0|c0", "u1|c2", "u2|c1",
    ];
    for (feature_id, feature) in definitions.features.iter().enumerate() {
        let entity_name = &definitions.entities[feature.entity].name;
        let of_entity = |id: &&&str| {
            id.contains('|') == (entity_name == "user_card") && id.starts_with(&entity_name[..1])
        };
        for id in ids.iter().filter(of_entity) {
            let read = engine.view().read(feature.entity, id, &[feature_id], at);
            let (read, (known, expected)) = match (read, naive.read_as_of(feature, id, at)) {
                (Ok(read), Ok(expected)) => (read, expected),
                (Err(ReadError::TooOld { .. }), Err(Refused::TooOld))
                | (Err(ReadError::TooOldForEntity { .. }), Err(Refused::TooOldForEntity)) => {
                    continue;
                }
                (got, want) => {
                    return Err(TestCaseError::fail(format!(
                        "{} {id} at {at}: engine {got:?}, naive {want:?}",
                        feature.name
                    )));
                }
            };
            prop_assert_eq!(read.known, known, "{} {} at {}", feature.name, id, at);
            prop_assert!(
                same_value(read.values[0].1, expected),
                "{} {} at {}: engine {:?}, naive {:?}",
                feature.name,
                id,
                at,
                read.values[0].1,
                expected
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn engine_matches_naive(specs in proptest::collection::vec(spec(), 1..120), read_offsets in proptest::collection::vec(-LATENESS_MS..400_000i64, 1..4), read_backs in proptest::collection::vec(-2_000..LATENESS_MS + 5_000, 120)) {
        run(&specs, &read_offsets, &read_backs)?;
    }

    /// Dense bursts on few entities: more events within the lateness than an entity
    /// keeps apart, so early sealing and its refusals are exercised.
    #[test]
    fn bursts_read_as_of_past_moments(specs in proptest::collection::vec(burst_spec(), 20..120), read_backs in proptest::collection::vec(-2_000..LATENESS_MS + 5_000, 120)) {
        run(&specs, &[0, -LATENESS_MS / 2], &read_backs)?;
    }
}

fn burst_spec() -> impl Strategy<Value = Spec> {
    (spec(), 0i64..1_500, 0u8..200).prop_map(|(spec, step_ms, id)| Spec {
        id,
        step_ms,
        card: Some(spec.card.unwrap_or(0) % 2),
        user: spec.user % 2,
        ..spec
    })
}

fn run(specs: &[Spec], read_offsets: &[i64], read_backs: &[i64]) -> Result<(), TestCaseError> {
    let definitions = Arc::new(Definitions::from_toml(DEFINITIONS).expect("test definitions"));
    let limits = Limits {
        max_future_skew_ms: 0,
        max_id_bytes: 64,
    };
    let mut engine = Engine::new(
        Arc::clone(&definitions),
        EngineSettings {
            allowed_lateness_ms: LATENESS_MS,
            dedup_horizon_ms: HORIZON_MS,
        },
    );
    let mut naive = Naive::new((*definitions).clone(), LATENESS_MS, HORIZON_MS);

    for (seq, raw) in to_events(specs).iter().enumerate() {
        let event = validate(&definitions, &limits, raw, None).expect("generated events are valid");
        let admission = engine.admit(&event);
        let expected = naive.offer(raw);
        match (&admission, expected) {
            (Admission::Apply, Outcome::Applied) => engine.apply(&event, seq as u64 + 1),
            (Admission::Duplicate, Outcome::Duplicate) => {}
            (Admission::Refused(_), Outcome::Late) => {}
            (got, want) => prop_assert!(false, "event {seq}: engine {got:?}, naive {want:?}"),
        }
        // Eviction timing must never change a value.
        if seq % 17 == 0 {
            engine.evict_expired();
        }
        // As-of reads in the past while the stream goes on: they must leave out every
        // event stamped after their moment, or be refused by the documented rule.
        if seq % 3 == 0 {
            check_reads(
                &engine,
                &naive,
                &definitions,
                naive.watermark_ms() - read_backs[seq],
            )?;
        }
    }

    for &offset in read_offsets {
        let at = naive.watermark_ms() + offset;
        check_reads(&engine, &naive, &definitions, at)?;
    }
    Ok(())
}
