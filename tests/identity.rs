//! Identity outlives windows: when a user's window state expires, the first-seen time
//! (`age_since_first`) is kept for `identity_ttl` in a compact record, so a customer
//! back after a long absence is not read as new; after `identity_ttl` they are
//! forgotten whole. Checked against hand-computed values and the naive model, and
//! across eviction (compaction never changes a value).

mod common;

use std::sync::Arc;

use streamscore::definitions::Definitions;
use streamscore::events::{Limits, RawEvent, validate};
use streamscore::features::{Admission, Engine, EngineSettings};
use streamscore::time::{DAY_MS, HOUR_MS};

const DEFINITIONS: &str = r#"
[entities]
user = { ttl = "1h", identity_ttl = "2d" }

[events.payment]
entities = { user = "required" }
fields.amount = { type = "number", required = true, min = 0 }

[[features]]
name = "user_payments_1h"
entity = "user"
events = ["payment"]
aggregation = "count"
window = "1h"

[[features]]
name = "user_age"
entity = "user"
events = ["payment"]
aggregation = "age_since_first"
"#;

const LATENESS_MS: i64 = 60_000;
const T0: i64 = 1_767_225_600_000;

fn payment(id: &str, user: &str, at: i64) -> RawEvent {
    RawEvent {
        event_id: id.into(),
        event_type: "payment".into(),
        event_time_ms: at,
        entities: [("user".to_string(), user.to_string())].into(),
        numbers: [("amount".to_string(), 10.0)].into(),
        ..Default::default()
    }
}

struct Both {
    engine: Engine,
    naive: common::naive::Naive,
    definitions: Arc<Definitions>,
}

impl Both {
    fn new() -> Both {
        let definitions = Arc::new(Definitions::from_toml(DEFINITIONS).unwrap());
        Both {
            engine: Engine::new(
                Arc::clone(&definitions),
                EngineSettings {
                    allowed_lateness_ms: LATENESS_MS,
                    dedup_horizon_ms: LATENESS_MS,
                },
            ),
            naive: common::naive::Naive::new((*definitions).clone(), LATENESS_MS, LATENESS_MS),
            definitions,
        }
    }

    fn apply(&mut self, raw: &RawEvent) {
        let limits = Limits {
            max_future_skew_ms: i64::MAX,
            max_id_bytes: 128,
        };
        let event = validate(&self.definitions, &limits, raw, None).unwrap();
        assert_eq!(self.engine.admit(&event), Admission::Apply);
        self.engine.apply(&event, 0);
        self.naive.offer(raw);
    }

    /// (known, payments in the last hour, age in seconds) of `user` at `at`, checked
    /// against the naive model.
    fn read(&self, user: &str, at: i64) -> (bool, Option<f64>, Option<f64>) {
        let features: Vec<usize> = (0..self.definitions.features.len()).collect();
        let entity = self.definitions.entity_id("user").unwrap();
        let read = self
            .engine
            .view()
            .read(entity, user, &features, at)
            .unwrap();
        let values: Vec<Option<f64>> = read.values.iter().map(|(_, v)| *v).collect();
        for (feature, value) in self.definitions.features.iter().zip(&values) {
            let (known, expected) = self.naive.read(feature, user, at);
            assert_eq!(read.known, known, "{} known", feature.name);
            assert!(
                common::naive::same_value(*value, expected),
                "{}: engine {value:?}, naive {expected:?}",
                feature.name
            );
        }
        (read.known, values[0], values[1])
    }
}

#[test]
fn a_customer_back_after_the_window_expired_keeps_their_age() {
    let mut both = Both::new();
    both.apply(&payment("p1", "u1", T0));
    both.apply(&payment("p2", "u1", T0 + 10 * 60_000));
    assert_eq!(
        both.read("u1", T0 + 20 * 60_000),
        (true, Some(2.0), Some(1200.0))
    );

    // Five hours later the 1h window state has expired (another user moves time on).
    let later = T0 + 5 * HOUR_MS;
    both.apply(&payment("q1", "u2", later));
    let (known, _, age) = both.read("u1", later);
    assert!(!known, "the window state expired");
    assert_eq!(age, Some(5.0 * 3600.0), "the first-seen time is remembered");
    // Eviction compacts the record; no value changes.
    both.engine.evict_expired();
    assert_eq!(both.read("u1", later).2, Some(5.0 * 3600.0));

    // u1 comes back: counts start afresh, the age does not.
    both.apply(&payment("p3", "u1", later + 60_000));
    assert_eq!(
        both.read("u1", later + 60_000),
        (true, Some(1.0), Some(5.0 * 3600.0 + 60.0))
    );
}

#[test]
fn after_identity_ttl_a_customer_is_forgotten_whole() {
    let mut both = Both::new();
    both.apply(&payment("p1", "u1", T0));
    let much_later = T0 + 3 * DAY_MS;
    both.apply(&payment("q1", "u2", much_later));
    assert_eq!(both.read("u1", much_later), (false, Some(0.0), None));
    let dropped = both.engine.evict_expired();
    assert_eq!(dropped, 1, "u1 is gone whole");
    both.apply(&payment("p2", "u1", much_later + 1_000));
    assert_eq!(
        both.read("u1", much_later + 1_000),
        (true, Some(1.0), Some(0.0))
    );
}
