//! Features a fraudster cannot game cheaply, against the shipped fraud model on the real
//! server. Card testers pay a tiny amount first: with the amount ratio unbounded, one
//! earlier payment of 1.00 (or 5e-324) made a risky 900 payment from a new card abroad
//! look ordinary (ALLOW), where the same payment with no history was blocked. Whatever
//! the warm-up amount, the risky payment must never be allowed.

mod common;

use common::TestServer;
use streamscore::api::pb::{self, ingest_client::IngestClient, scoring_client::ScoringClient};
use streamscore::time::now_ms;

fn payment(
    id: &str,
    time_ms: i64,
    user: &str,
    card: &str,
    device: &str,
    amount: f64,
    ip_country: &str,
) -> pb::Event {
    pb::Event {
        event_id: id.into(),
        event_type: "payment".into(),
        event_time_ms: time_ms,
        entities: [
            ("user", user),
            ("card", card),
            ("device", device),
            ("ip", &format!("{device}-ip")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
        numbers: [("amount".to_string(), amount)].into(),
        strings: [
            ("billing_country".to_string(), "DE".to_string()),
            ("ip_country".to_string(), ip_country.to_string()),
        ]
        .into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_up_payment_of_any_size_never_lets_a_risky_payment_through() {
    let server = TestServer::start(|_| {}).await;
    let mut ingest = IngestClient::new(server.channel().await);
    let mut scoring = ScoringClient::new(server.channel().await);
    let now = now_ms() - 120_000;
    let risky = |user: &str| pb::ScoreRequest {
        model: "fraud".into(),
        event: Some(payment(
            "",
            now + 60_000,
            user,
            &format!("{user}-new-card"),
            &format!("{user}-device"),
            900.0,
            "NG",
        )),
        include_features: true,
        ..Default::default()
    };

    let cold = scoring
        .score(risky("cold"))
        .await
        .expect("scored")
        .into_inner();
    eprintln!("no warm-up: {:.4} {:?}", cold.score, cold.decision());
    assert_ne!(cold.decision(), pb::Decision::Allow, "{cold:?}");

    let mut answers = Vec::new();
    for (k, warm_up) in [5e-324, 0.01, 1.0, 10.0].into_iter().enumerate() {
        let user = format!("warm{k}");
        let first = payment(
            &format!("warm-up-{k}"),
            now,
            &user,
            &format!("{user}-card"),
            &format!("{user}-device"),
            warm_up,
            "DE",
        );
        let ack = ingest
            .ingest_batch(pb::IngestRequest {
                batch_id: k as u64,
                events: vec![first],
            })
            .await
            .expect("ingested")
            .into_inner();
        assert_eq!(ack.accepted, 1, "{ack:?}");
        let scored = scoring
            .score(risky(&user))
            .await
            .expect("scored")
            .into_inner();
        let ratio = scored
            .features
            .iter()
            .find(|f| f.name == "req_amount_to_user_mean_30d")
            .and_then(|f| f.value);
        eprintln!(
            "warm-up {warm_up:e}: ratio {ratio:?}, score {:.4} {:?}, reasons {:?}",
            scored.score,
            scored.decision(),
            scored
                .reasons
                .iter()
                .map(|r| (r.feature.as_str(), r.contribution))
                .collect::<Vec<_>>()
        );
        assert!(ratio.is_some_and(f64::is_finite), "{ratio:?}");
        answers.push((warm_up, scored.score, scored.decision()));
    }
    let allowed: Vec<_> = answers
        .iter()
        .filter(|(_, _, decision)| *decision == pb::Decision::Allow)
        .collect();
    assert!(
        allowed.is_empty(),
        "risky payments allowed after a warm-up: {allowed:?} (all: {answers:?})"
    );

    // An amount far beyond any the model was trained on is clipped, and says so.
    let reason_for = |answer: &pb::ScoreResponse, feature: &str| {
        answer
            .reasons
            .iter()
            .find(|r| r.feature == feature)
            .cloned()
            .unwrap_or_else(|| panic!("no reason for {feature}: {answer:?}"))
    };
    let mut huge = risky("huge");
    huge.reasons = Some(100);
    if let Some(event) = huge.event.as_mut() {
        event.numbers.insert("amount".into(), 1e9);
    }
    let answer = scoring.score(huge).await.expect("scored").into_inner();
    assert!(reason_for(&answer, "req_amount").clipped, "{answer:?}");
    assert!(!reason_for(&answer, "req_country_mismatch").clipped);
    let mut usual = risky("usual");
    usual.reasons = Some(100);
    let answer = scoring.score(usual).await.expect("scored").into_inner();
    assert!(!reason_for(&answer, "req_amount").clipped, "{answer:?}");
    server.stop().await;
}
