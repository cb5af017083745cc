//! Point-in-time training sets: an observation never sees its own event or a later one,
//! late labels are honoured, and the vectors equal, to the bit, what the running server
//! returns for the same history at the same moments.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::TestServer;
use streamscore::api::client;
use streamscore::api::pb::{self, ingest_client::IngestClient};
use streamscore::config::Settings;
use streamscore::definitions::Definitions;
use streamscore::events::RawEvent;
use streamscore::features::EngineSettings;
use streamscore::features::request::{USER_MEAN_FEATURE, request_features};
use streamscore::simulate::{SimConfig, Simulator};
use streamscore::time::{DAY_MS, HOUR_MS, MINUTE_MS};
use streamscore::train::{Dataset, DatasetSpec};

fn engine_settings() -> EngineSettings {
    let defaults = Settings::default();
    EngineSettings {
        allowed_lateness_ms: defaults.ingest.allowed_lateness.0,
        dedup_horizon_ms: defaults.ingest.dedup_horizon.0,
    }
}

fn payment(id: &str, time: i64, amount: f64) -> RawEvent {
    RawEvent {
        event_id: id.into(),
        event_type: "payment".into(),
        event_time_ms: time,
        entities: BTreeMap::from([("user".into(), "u1".into()), ("card".into(), "c1".into())]),
        numbers: BTreeMap::from([("amount".into(), amount)]),
        strings: BTreeMap::from([
            ("billing_country".into(), "DE".into()),
            ("ip_country".into(), "DE".into()),
        ]),
    }
}

fn chargeback(id: &str, payment_id: &str, time: i64) -> RawEvent {
    RawEvent {
        event_id: id.into(),
        event_type: "chargeback".into(),
        event_time_ms: time,
        entities: BTreeMap::from([("card".into(), "c1".into())]),
        numbers: BTreeMap::from([("amount".into(), 1.0)]),
        strings: BTreeMap::from([("payment_id".into(), payment_id.into())]),
    }
}

#[test]
fn observations_see_only_the_past_and_labels_respect_the_window() {
    let t = 1_767_225_600_000;
    let mut history = vec![
        payment("p1", t, 10.0),
        payment("p2", t + 10 * MINUTE_MS, 20.0),
        payment("p3", t + 20 * MINUTE_MS, 30.0),
        chargeback("cb2", "p2", t + 5 * DAY_MS),
        chargeback("cb1", "p1", t + 45 * DAY_MS),
        payment("p4", t + 90 * DAY_MS, 40.0),
        RawEvent {
            event_id: "end".into(),
            event_type: "login".into(),
            event_time_ms: t + 100 * DAY_MS,
            entities: BTreeMap::from([("user".into(), "u9".into())]),
            ..RawEvent::default()
        },
    ];
    history.sort_by_key(|e| e.event_time_ms);
    let definitions = Arc::new(Definitions::default_shop());
    let spec = DatasetSpec::fraud(30 * DAY_MS);
    let dataset = Dataset::build(
        definitions,
        engine_settings(),
        || history.clone().into_iter(),
        &spec,
        |_| {},
    )
    .unwrap();

    let column = |name: &str| dataset.columns.iter().position(|c| c == name).unwrap();
    let ids: Vec<&str> = dataset.rows.iter().map(|r| r.event_id.as_str()).collect();
    assert_eq!(
        ids,
        ["p1", "p2", "p3"],
        "p4 is younger than the label window at the end: left out"
    );
    assert_eq!(dataset.unlabelled, 1);
    let labels: Vec<f64> = dataset.rows.iter().map(|r| r.label).collect();
    assert_eq!(
        labels,
        [0.0, 1.0, 0.0],
        "p1's chargeback came after 30 days; p2's within"
    );

    let value = |row: usize, name: &str| dataset.rows[row].values[column(name)];
    assert_eq!(
        value(0, "card_payments_1h"),
        Some(0.0),
        "p1 does not count itself"
    );
    assert_eq!(value(1, "card_payments_1h"), Some(1.0));
    assert_eq!(
        value(1, "card_amount_1h"),
        Some(10.0),
        "p2 sees p1's amount only"
    );
    assert_eq!(value(2, "card_amount_1h"), Some(30.0));
    assert_eq!(value(0, USER_MEAN_FEATURE), None);
    assert_eq!(value(2, USER_MEAN_FEATURE), Some(15.0));
    assert_eq!(value(2, "req_amount"), Some(30.0));
    assert_eq!(value(2, "req_amount_to_user_mean_30d"), Some(2.0));
    assert_eq!(value(1, "card_seconds_since_last_payment"), Some(600.0));

    // The same set as CSV: a header, one line per row, empty cells for missing values.
    let mut csv = Vec::new();
    dataset.write_csv(&mut csv).unwrap();
    let text = String::from_utf8(csv).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4);
    assert!(
        lines[0].starts_with("event_id,time_ms,card_payments_10m,") && lines[0].ends_with(",label")
    );
    assert!(
        lines[2].starts_with("p2,") && lines[2].ends_with(",1"),
        "{}",
        lines[2]
    );
    assert!(
        lines[1].contains(",,"),
        "p1 has missing values: {}",
        lines[1]
    );
}

fn event(id: &str, kind: &str, time: i64, user: &str) -> RawEvent {
    let mut event = RawEvent {
        event_id: id.into(),
        event_type: kind.into(),
        event_time_ms: time,
        ..RawEvent::default()
    };
    event.entities.insert("user".into(), user.into());
    if kind == "page_view" || kind == "add_to_cart" {
        event.entities.insert("product".into(), "p1".into());
    } else {
        event.numbers.insert("amount".into(), 10.0);
    }
    event
}

#[test]
fn purchase_labels_look_ahead_by_the_horizon_only() {
    let t = 1_767_225_600_000;
    let mut other_product = event("v5", "page_view", t + 2 * DAY_MS + MINUTE_MS, "u1");
    other_product.entities.insert("product".into(), "p2".into());
    let history = vec![
        event("v1", "page_view", t, "u1"),
        event("v2", "page_view", t + MINUTE_MS, "u2"),
        event("c1", "add_to_cart", t + 10 * MINUTE_MS, "u1"),
        event("c2", "add_to_cart", t + 11 * MINUTE_MS, "u2"),
        event("o1", "order", t + 30 * MINUTE_MS, "u1"),
        event("o2", "order", t + 3 * HOUR_MS, "u2"),
        event("v3", "page_view", t + 2 * DAY_MS, "u1"),
        other_product,
        event("c3", "add_to_cart", t + 2 * DAY_MS + 2 * MINUTE_MS, "u1"),
        event("o3", "order", t + 2 * DAY_MS + 3 * MINUTE_MS, "u1"),
        event("v4", "page_view", t + 3 * DAY_MS - 30 * MINUTE_MS, "u1"),
        event("end", "login", t + 3 * DAY_MS, "u9"),
    ];
    let definitions = Arc::new(Definitions::default_shop());
    // The closing login carries the helper's amount, which a login does not have: one
    // refused event of twelve is expected here.
    let spec = DatasetSpec {
        max_refused_share: 1.0,
        ..DatasetSpec::purchase(HOUR_MS)
    };
    let dataset = Dataset::build(
        definitions,
        engine_settings(),
        || history.clone().into_iter(),
        &spec,
        |_| {},
    )
    .unwrap();
    let labels: Vec<(&str, f64)> = dataset
        .rows
        .iter()
        .map(|r| (r.event_id.as_str(), r.label))
        .collect();
    // v1: carted, then ordered 30 min later; v2: carted, but ordered 3 h later, past the
    // 1 h horizon; v3: p1 carted and ordered within the hour; v5: the order came, but
    // p2 was never carted; v4: within an hour of the end, so its label is unknown.
    assert_eq!(labels, [("v1", 1.0), ("v2", 0.0), ("v3", 1.0), ("v5", 0.0)]);
    assert_eq!(dataset.unlabelled, 1);
    let views = dataset
        .columns
        .iter()
        .position(|c| c == "user_product_views_24h")
        .unwrap();
    assert_eq!(
        dataset.rows[2].values[views],
        Some(0.0),
        "v1 is older than 24h at v3"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn training_vectors_equal_the_servers_to_the_bit() {
    let events: Vec<RawEvent> = Simulator::new(SimConfig {
        seed: 5,
        users: 800,
        ..SimConfig::default()
    })
    .take(30_000)
    .collect();
    let definitions = Arc::new(Definitions::default_shop());
    // A short label window: the 30k events span only hours.
    let spec = DatasetSpec::fraud(HOUR_MS);
    let dataset = Dataset::build(
        Arc::clone(&definitions),
        engine_settings(),
        || events.clone().into_iter(),
        &spec,
        |_| {},
    )
    .unwrap();
    assert!(dataset.rows.len() > 300, "{} rows", dataset.rows.len());

    let server = TestServer::start(|_| {}).await;
    let mut ingest = IngestClient::new(server.channel().await);
    let checkpoints: Vec<usize> = events
        .iter()
        .enumerate()
        .filter(|(_, e)| e.event_type == "payment")
        .map(|(index, _)| index)
        .step_by(25)
        .collect();
    let mut sent = 0;
    let mut compared = 0;
    for index in checkpoints {
        for chunk in events[sent..index].chunks(5_000) {
            let request = pb::IngestRequest {
                batch_id: 0,
                events: chunk.iter().cloned().map(pb::Event::from).collect(),
            };
            let ack = ingest.ingest_batch(request).await.unwrap().into_inner();
            assert_eq!(ack.accepted as usize, chunk.len());
        }
        sent = index;
        let payment = &events[index];
        let Some(row) = dataset.rows.iter().find(|r| r.event_id == payment.event_id) else {
            continue;
        };

        let mut served: Vec<Option<f64>> = Vec::new();
        for entity in &spec.entities {
            // A payment without this entity (no device, no ip): its features are
            // missing, as the vector builder promises.
            let Some(id) = payment.entities.get(entity) else {
                let definitions = streamscore::definitions::Definitions::default_shop();
                let width = definitions
                    .features
                    .iter()
                    .filter(|f| definitions.entities[f.entity].name == *entity && !f.is_list())
                    .count();
                served.extend(std::iter::repeat_n(None, width));
                continue;
            };
            let response = client::get_features(
                server.channel().await,
                entity,
                id,
                Some(payment.event_time_ms),
            )
            .await
            .unwrap();
            // List features (recent products) are for Recommend, never model columns.
            let definitions = streamscore::definitions::Definitions::default_shop();
            served.extend(
                response
                    .values
                    .iter()
                    .filter(|v| {
                        definitions
                            .feature_id(&v.name)
                            .is_none_or(|id| !definitions.features[id].is_list())
                    })
                    .map(|v| v.value),
            );
        }
        let user_mean = dataset
            .columns
            .iter()
            .position(|c| c == USER_MEAN_FEATURE)
            .and_then(|i| served[i]);
        served.extend(request_features(payment, user_mean));

        assert_eq!(served.len(), row.values.len());
        for ((column, trained), online) in dataset.columns.iter().zip(&row.values).zip(&served) {
            assert_eq!(
                trained.map(f64::to_bits),
                online.map(f64::to_bits),
                "{column} of {}",
                payment.event_id
            );
        }
        compared += 1;
    }
    assert!(compared >= 30, "only {compared} payments compared");
    server.stop().await;
}
