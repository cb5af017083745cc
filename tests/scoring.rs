//! `Score` and `ScoreCandidates` on the real server with the shipped models: a fraud
//! pattern scores above an ordinary payment for the right reasons, `record` moves the
//! next score's velocity features by exactly the recorded payment, the server's score
//! equals the offline pipeline's for the same history and moment (golden), and bad
//! requests get clear errors.

mod common;

use std::sync::Arc;

use common::TestServer;
use streamscore::api::client;
use streamscore::api::pb::{self, scoring_client::ScoringClient};
use streamscore::definitions::Definitions;
use streamscore::events::RawEvent;
use streamscore::model::artifact;
use streamscore::simulate::{SimConfig, Simulator};
use streamscore::time::{HOUR_MS, MINUTE_MS, SECOND_MS, now_ms};
use streamscore::train::{Dataset, DatasetSpec};
use tonic::Code;

/// Simulated history that ends a minute ago, so scoring "now" follows it.
fn recent_history(seed: u64) -> Vec<RawEvent> {
    let end = now_ms() - MINUTE_MS;
    Simulator::new(SimConfig {
        seed,
        users: 3_000,
        start_ms: end - 4 * HOUR_MS,
        ..SimConfig::default()
    })
    .take_while(|e| e.event_time_ms <= end)
    .collect()
}

async fn started_with_history(events: Vec<RawEvent>) -> TestServer {
    let server = TestServer::start(|_| {}).await;
    let summary = client::stream_events(
        server.channel().await,
        events.clone().into_iter(),
        1_000,
        8,
        |_| {},
    )
    .await
    .expect("history streams");
    assert_eq!(summary.accepted as usize, events.len());
    server
}

struct Payment<'a> {
    id: &'a str,
    user: &'a str,
    card: &'a str,
    device: &'a str,
    ip: &'a str,
    amount: f64,
    billing: &'a str,
    ip_country: &'a str,
    time_ms: i64,
}

fn payment(p: &Payment) -> pb::Event {
    pb::Event {
        event_id: p.id.into(),
        event_type: "payment".into(),
        event_time_ms: p.time_ms,
        entities: [
            ("user", p.user),
            ("card", p.card),
            ("device", p.device),
            ("ip", p.ip),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
        numbers: [("amount".to_string(), p.amount)].into(),
        strings: [
            ("billing_country".to_string(), p.billing.to_string()),
            ("ip_country".to_string(), p.ip_country.to_string()),
        ]
        .into(),
    }
}

fn score_request(event: pb::Event, record: bool) -> pb::ScoreRequest {
    pb::ScoreRequest {
        model: "fraud".into(),
        event: Some(event),
        include_features: true,
        record,
        reasons: Some(8),
    }
}

fn feature(response: &pb::ScoreResponse, name: &str) -> f64 {
    response
        .features
        .iter()
        .find(|f| f.name == name)
        .and_then(|f| f.value)
        .unwrap_or_else(|| panic!("no value for {name}"))
}

/// An ordinary payment of a user of the history: their own card, device and ip (no
/// other card paid from that ip or device, and the user paid with no other card: a
/// device or ip cycling through cards is a fraud pattern of the simulator), by a
/// customer who last paid more than an hour ago (paying again within the hour is
/// velocity the model rightly weighs).
fn ordinary_payer(events: &[RawEvent]) -> RawEvent {
    use std::collections::{BTreeMap, BTreeSet};
    let mut cards: BTreeMap<(&str, &str), BTreeSet<&str>> = BTreeMap::new();
    let mut last_paid: BTreeMap<&str, i64> = BTreeMap::new();
    for event in events.iter().filter(|e| e.event_type == "payment") {
        if let Some(user) = event.entities.get("user") {
            last_paid.insert(user, event.event_time_ms);
        }
        let Some(card) = event.entities.get("card") else {
            continue;
        };
        for entity in ["user", "device", "ip"] {
            if let Some(id) = event.entities.get(entity) {
                cards.entry((entity, id)).or_default().insert(card);
            }
        }
    }
    let own = |event: &RawEvent, entity: &'static str| {
        event
            .entities
            .get(entity)
            .and_then(|id| cards.get(&(entity, id.as_str())))
            .is_some_and(|set| set.len() == 1)
    };
    events
        .iter()
        .rev()
        .find(|e| {
            e.event_type == "payment"
                && e.strings.get("billing_country") == e.strings.get("ip_country")
                && ["user", "device", "ip"].iter().all(|entity| own(e, entity))
                && e.entities
                    .get("user")
                    .and_then(|u| last_paid.get(u.as_str()))
                    < Some(&(now_ms() - 70 * MINUTE_MS))
        })
        .expect("an ordinary payment in the history")
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fraud_pattern_scores_higher_for_its_velocity_and_record_counts_once() {
    let events = recent_history(11);
    let server = started_with_history(events.clone()).await;
    let mut scoring = ScoringClient::new(server.channel().await);
    let now = now_ms();

    let usual = ordinary_payer(&events);
    let ordinary = scoring
        .score(score_request(
            payment(&Payment {
                id: "ordinary",
                user: &usual.entities["user"],
                card: &usual.entities["card"],
                device: &usual.entities["device"],
                ip: &usual.entities["ip"],
                amount: usual.numbers["amount"],
                billing: &usual.strings["billing_country"],
                ip_country: &usual.strings["ip_country"],
                time_ms: now,
            }),
            false,
        ))
        .await
        .expect("ordinary payment scores")
        .into_inner();

    // Card testing from a new device: a burst of tiny payments, each scored and recorded
    // in one round trip, then the real one.
    for i in 0..10 {
        let id = format!("burst-{i}");
        let response = scoring
            .score(score_request(
                payment(&Payment {
                    id: &id,
                    user: "u-thief",
                    card: "c-stolen",
                    device: "d-new",
                    ip: "ip-new",
                    amount: 1.0 + i as f64 * 0.3,
                    billing: "DE",
                    ip_country: "NG",
                    time_ms: now - (10 - i) * 20 * SECOND_MS,
                }),
                true,
            ))
            .await
            .expect("burst payment scores")
            .into_inner();
        assert_eq!(response.recorded.expect("recorded").accepted, 1);
    }
    let pattern = Payment {
        id: "big-one",
        user: "u-thief",
        card: "c-stolen",
        device: "d-new",
        ip: "ip-new",
        amount: 900.0,
        billing: "DE",
        ip_country: "NG",
        time_ms: now,
    };
    let fraud = scoring
        .score(score_request(payment(&pattern), true))
        .await
        .expect("fraud pattern scores")
        .into_inner();
    assert!(
        fraud.score > ordinary.score + 0.3,
        "fraud pattern {} vs ordinary {}",
        fraud.score,
        ordinary.score
    );
    assert_eq!(
        pb::Decision::try_from(fraud.decision),
        Ok(pb::Decision::Block),
        "{fraud:?}"
    );
    assert_eq!(
        pb::Decision::try_from(ordinary.decision),
        Ok(pb::Decision::Allow),
        "{ordinary:?}"
    );
    assert_eq!((fraud.model.as_str(), fraud.version), ("fraud", 1));
    // The velocity features that drove it are among the reasons, pushing up.
    let velocity: Vec<&pb::Reason> = fraud
        .reasons
        .iter()
        .filter(|r| r.contribution > 0.0 && r.feature.contains("payments_"))
        .collect();
    assert!(
        !velocity.is_empty(),
        "no velocity feature among the reasons: {:?}",
        fraud.reasons
    );
    assert_eq!(feature(&fraud, "card_payments_10m"), 10.0);

    // `record` applied the big payment: the next score sees exactly one more payment of
    // exactly its amount, and nothing else moved.
    let next = scoring
        .score(score_request(
            payment(&Payment {
                id: "after",
                time_ms: now + SECOND_MS,
                ..pattern
            }),
            false,
        ))
        .await
        .expect("next payment scores")
        .into_inner();
    for name in [
        "card_payments_10m",
        "card_payments_1h",
        "device_payments_1h",
        "user_payments_10m",
        "ip_payments_1h",
    ] {
        assert_eq!(
            feature(&next, name),
            feature(&fraud, name) + 1.0,
            "{name} moves by one"
        );
    }
    for name in ["card_amount_1h", "device_amount_1h", "ip_amount_1h"] {
        assert_eq!(
            feature(&next, name),
            feature(&fraud, name) + 900.0,
            "{name} moves by the amount"
        );
    }
    assert_eq!(
        feature(&next, "device_cards_24h"),
        feature(&fraud, "device_cards_24h"),
        "the same card is not a new card"
    );
    // A brand-new device is reported as unknown; the thief's entities were recorded.
    assert!(ordinary.unknown_entities.is_empty(), "{ordinary:?}");
    let first_glance = scoring
        .score(score_request(
            payment(&Payment {
                id: "fresh",
                device: "d-never-seen",
                time_ms: now,
                ..pattern
            }),
            false,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first_glance.unknown_entities, ["device"]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_score_equals_the_offline_pipelines() {
    let events = recent_history(12);
    let server = started_with_history(events.clone()).await;
    let mut scoring = ScoringClient::new(server.channel().await);
    let definitions = Arc::new(Definitions::default_shop());
    let shipped = artifact::load(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("models/fraud/fraud-v1.json")
            .as_path(),
        &definitions,
    )
    .expect("shipped fraud model");
    let at = events.last().expect("history").event_time_ms + SECOND_MS;

    // A few payers of the history, one traveller and one stranger.
    let mut payers: Vec<RawEvent> = events
        .iter()
        .filter(|e| e.event_type == "payment")
        .step_by(97)
        .take(12)
        .cloned()
        .collect();
    let mut stranger = payers[0].clone();
    stranger.entities.insert("card".into(), "c-unknown".into());
    stranger.entities.remove("device");
    payers.push(stranger);
    for (index, payer) in payers.iter_mut().enumerate() {
        payer.event_id = format!("golden-{index}");
        payer.event_time_ms = at;
        payer
            .numbers
            .insert("amount".into(), 17.0 + index as f64 * 31.0);
    }
    for payer in &payers {
        let served = scoring
            .score(pb::ScoreRequest {
                model: "fraud@1".into(),
                event: Some(pb::Event::from(payer.clone())),
                include_features: true,
                record: false,
                reasons: Some(0),
            })
            .await
            .expect("scores")
            .into_inner();

        // Offline: the training pipeline over the same history with this payment as its
        // last observation (a later event makes its one-minute label known).
        let mut history = events.clone();
        history.push(payer.clone());
        let mut end = payer.clone();
        end.event_id = "end".into();
        end.event_type = "login".into();
        end.event_time_ms = at + 2 * MINUTE_MS;
        end.numbers.clear();
        end.strings.clear();
        end.entities.retain(|k, _| k == "user");
        history.push(end);
        let dataset = Dataset::build(
            Arc::clone(&definitions),
            streamscore::features::EngineSettings {
                allowed_lateness_ms: HOUR_MS,
                dedup_horizon_ms: 24 * HOUR_MS,
            },
            || history.clone().into_iter(),
            &DatasetSpec::fraud(MINUTE_MS),
            |_| {},
        )
        .expect("dataset");
        let row = dataset
            .rows
            .iter()
            .find(|r| r.event_id == payer.event_id)
            .expect("the payment is observed");
        assert_eq!(dataset.columns, shipped.model.columns);
        let served_values: Vec<Option<f64>> = served.features.iter().map(|f| f.value).collect();
        assert_eq!(served_values, row.values, "{}", payer.event_id);
        let offline = shipped.model.predict(&row.values);
        assert_eq!(
            served.score.to_bits(),
            offline.to_bits(),
            "{}: served {} offline {offline}",
            payer.event_id,
            served.score
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn candidates_are_ranked_in_one_call() {
    let events = recent_history(13);
    let server = started_with_history(events.clone()).await;
    let mut scoring = ScoringClient::new(server.channel().await);
    let user = ordinary_payer(&events).entities["user"].clone();
    let products: Vec<String> = events
        .iter()
        .filter_map(|e| e.entities.get("product").cloned())
        .take(300)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .take(100)
        .collect();
    // One moment for every call, so time-since features agree.
    let at = now_ms();
    let request = |top_n: u32, candidates: &[String]| pb::ScoreCandidatesRequest {
        model: String::new(),
        context: Some(pb::Event {
            event_time_ms: at,
            entities: [("user".to_string(), user.clone())].into(),
            ..Default::default()
        }),
        candidates: candidates
            .iter()
            .map(|p| pb::Candidate {
                product: p.clone(),
                numbers: Default::default(),
            })
            .collect(),
        top_n,
    };
    let all = scoring
        .score_candidates(request(0, &products))
        .await
        .expect("ranks")
        .into_inner();
    assert_eq!(all.model, "purchase");
    assert_eq!(all.candidates.len(), products.len());
    assert!(
        all.candidates.windows(2).all(|w| w[0].score >= w[1].score),
        "sorted best first"
    );
    assert!(
        all.candidates
            .iter()
            .all(|c| c.score > 0.0 && c.score < 1.0)
    );
    // Each candidate's score is the one `Score` gives for a view of it.
    for candidate in all.candidates.iter().step_by(17) {
        let single = scoring
            .score(pb::ScoreRequest {
                model: "purchase".into(),
                event: Some(pb::Event {
                    event_type: "page_view".into(),
                    event_time_ms: at,
                    entities: [
                        ("user".to_string(), user.clone()),
                        ("product".to_string(), candidate.product.clone()),
                    ]
                    .into(),
                    ..Default::default()
                }),
                include_features: false,
                record: false,
                reasons: Some(0),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(single.score, candidate.score, "{}", candidate.product);
    }
    let top = scoring
        .score_candidates(request(5, &products))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(top.candidates, all.candidates[..5]);
    assert!(
        all.unknown_products.is_empty(),
        "{:?}",
        all.unknown_products
    );

    // A product the store never saw is reported, not silently ranked on defaults.
    let mut with_new = products[..3].to_vec();
    with_new.push("never-seen-product".into());
    let ranked = scoring
        .score_candidates(request(0, &with_new))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        ranked.unknown_products,
        vec!["never-seen-product".to_string()]
    );
    // ... and ranked after every known one, whatever its score on defaults.
    assert_eq!(
        ranked.candidates.last().map(|c| c.product.as_str()),
        Some("never-seen-product")
    );

    // Only a purchase-probability model ranks: not fraud (payments), not a value.
    for (model, says) in [
        ("fraud", "classifier of payments"),
        ("order_value", "regression"),
    ] {
        let mut call = request(0, &products[..3]);
        call.model = model.into();
        let status = scoring.score_candidates(call).await.expect_err("refused");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{model}");
        assert!(
            status.message().contains("purchase-probability") && status.message().contains(says),
            "{model}: {status:?}"
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_scoring_requests_get_clear_errors() {
    let server = TestServer::start(|_| {}).await;
    let mut scoring = ScoringClient::new(server.channel().await);
    let now = now_ms();
    let good = payment(&Payment {
        id: "p",
        user: "u1",
        card: "c1",
        device: "d1",
        ip: "ip1",
        amount: 10.0,
        billing: "DE",
        ip_country: "DE",
        time_ms: now,
    });
    let refused = |result: Result<tonic::Response<pb::ScoreResponse>, tonic::Status>| {
        result.expect_err("refused")
    };

    let mut unknown = score_request(good.clone(), false);
    unknown.model = "no-such-model".into();
    let status = refused(scoring.score(unknown).await);
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert!(status.message().contains("no-such-model"));

    let mut no_card = good.clone();
    no_card.entities.remove("card");
    let status = refused(scoring.score(score_request(no_card, false)).await);
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("entities.card"), "{status:?}");

    let mut no_amount = good.clone();
    no_amount.numbers.clear();
    let status = refused(scoring.score(score_request(no_amount, false)).await);
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("numbers.amount"), "{status:?}");

    for bad in [f64::NAN, f64::INFINITY, -5.0] {
        let mut event = good.clone();
        event.numbers.insert("amount".into(), bad);
        let status = refused(scoring.score(score_request(event, false)).await);
        assert_eq!(status.code(), Code::InvalidArgument, "{bad}");
        assert!(status.message().contains("numbers.amount"), "{status:?}");
    }

    let mut no_id = good.clone();
    no_id.event_id.clear();
    let status = refused(scoring.score(score_request(no_id, true)).await);
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("event_id"), "{status:?}");

    for count in [0usize, 10_000] {
        let status = scoring
            .score_candidates(pb::ScoreCandidatesRequest {
                model: "purchase".into(),
                context: Some(pb::Event {
                    entities: [("user".to_string(), "u1".to_string())].into(),
                    ..Default::default()
                }),
                candidates: (0..count)
                    .map(|i| pb::Candidate {
                        product: format!("p{i}"),
                        numbers: Default::default(),
                    })
                    .collect(),
                top_n: 0,
            })
            .await
            .expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{count}");
        assert!(
            status.message().contains("candidates") && status.message().contains("1 to 1000"),
            "{status:?}"
        );
    }
    // Nothing of this was recorded, and the server still scores.
    assert!(scoring.score(score_request(good, false)).await.is_ok());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_generator_drives_every_call_without_errors() {
    use std::time::Duration;
    use streamscore::loadtest::{self, Call, LoadSpec};

    let sim = SimConfig {
        seed: 14,
        users: 500,
        start_ms: now_ms() - HOUR_MS,
        ..SimConfig::default()
    };
    let server = TestServer::start(|_| {}).await;
    for (call, model, batch) in [
        (Call::Score, "fraud", 1),
        (Call::Candidates, "purchase", 100),
        (Call::Ingest, "", 50),
    ] {
        let report = loadtest::run(
            &server.url,
            &Default::default(),
            &LoadSpec {
                call,
                concurrency: 4,
                connections: 2,
                duration: Duration::from_millis(300),
                rate: None,
                model: model.into(),
                batch,
                sim: sim.clone(),
            },
        )
        .await
        .expect("load runs");
        assert_eq!(report.errors, 0, "{call:?}: {report}");
        assert!(report.requests > 0, "{call:?}: {report}");
        assert!(report.p50_us <= report.p99_us && report.p99_us <= report.max_us);
    }
    // The ingest run's events were applied.
    let metrics = server.scrape().await;
    assert!(
        !metrics.contains("streamscore_events_applied 0\n"),
        "{metrics}"
    );
    server.stop().await;
}
