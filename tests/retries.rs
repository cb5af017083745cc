//! Retries are safe: a checkout that retries `Score(record = true)` with the same event id
//! (after a timeout it cannot tell from a failure) gets the first attempt's answer, and
//! the payment counts once. Scored again, the retry would read velocity features that
//! already count its first attempt, and could flip allow to block.

mod common;

use common::TestServer;
use streamscore::api::pb::{self, scoring_client::ScoringClient};
use streamscore::time::{SECOND_MS, now_ms};
use tonic::Code;

fn payment(id: &str, card: &str, amount: f64, time_ms: i64) -> pb::ScoreRequest {
    pb::ScoreRequest {
        model: "fraud".into(),
        event: Some(pb::Event {
            event_id: id.into(),
            event_type: "payment".into(),
            event_time_ms: time_ms,
            entities: [
                ("user", "retrying-user"),
                ("card", card),
                ("device", "retrying-device"),
                ("ip", "retrying-ip"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            numbers: [("amount".to_string(), amount)].into(),
            strings: [
                ("billing_country".to_string(), "DE".to_string()),
                ("ip_country".to_string(), "DE".to_string()),
            ]
            .into(),
        }),
        record: true,
        include_features: true,
        reasons: Some(5),
    }
}

fn feature(response: &pb::ScoreResponse, name: &str) -> Option<f64> {
    response
        .features
        .iter()
        .find(|f| f.name == name)
        .and_then(|f| f.value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_recorded_score_gets_the_first_answer_and_counts_once() {
    let server = TestServer::start(|_| {}).await;
    let channel = server.channel().await;
    let start = now_ms() - 300 * SECOND_MS;
    let mut firsts = Vec::new();
    // 100 payments on 10 cards; each sent, then retried (sometimes without its time,
    // as a client that lets the server stamp it would), then retried again at once
    // from another task.
    for n in 0..100i64 {
        let mut scoring = ScoringClient::new(channel.clone());
        let card = format!("retry-card-{}", n % 10);
        let request = payment(
            &format!("pay-{n}"),
            &card,
            20.0 + n as f64,
            start + n * 1_000,
        );
        let first = scoring
            .score(request.clone())
            .await
            .expect("first")
            .into_inner();
        assert_eq!(first.recorded.as_ref().map(|r| r.accepted), Some(1));
        let mut retried = request.clone();
        if n % 2 == 1
            && let Some(event) = retried.event.as_mut()
        {
            event.event_time_ms = 0;
        }
        let (mut one, mut two) = (
            ScoringClient::new(channel.clone()),
            ScoringClient::new(channel.clone()),
        );
        let (a, b) = tokio::join!(one.score(retried.clone()), two.score(retried));
        for again in [a, b] {
            let again = again.expect("retry").into_inner();
            assert_eq!(
                again.recorded.as_ref().map(|r| (r.accepted, r.duplicates)),
                Some((0, 1)),
                "payment {n}: a retry is a duplicate"
            );
            assert_eq!(again.score.to_bits(), first.score.to_bits(), "payment {n}");
            assert_eq!(again.decision, first.decision, "payment {n}");
            assert_eq!(again.reasons, first.reasons, "payment {n}");
            assert_eq!(again.features, first.features, "payment {n}");
            assert_eq!((again.model.as_str(), again.version), ("fraud", 1));
        }
        firsts.push((card, first));
    }
    // Each payment counted once: a fresh unrecorded read of each card sees its ten.
    let mut scoring = ScoringClient::new(channel.clone());
    for k in 0..10 {
        let card = format!("retry-card-{k}");
        let mut probe = payment("", &card, 1.0, start + 100 * 1_000);
        probe.record = false;
        let read = scoring.score(probe).await.expect("probe").into_inner();
        assert_eq!(feature(&read, "card_payments_1h"), Some(10.0), "{card}");
    }
    // The k-th payment on a card read the k-1 before it, never itself.
    for (n, (_, first)) in firsts.iter().enumerate() {
        assert_eq!(
            feature(first, "card_payments_1h"),
            Some((n / 10) as f64),
            "payment {n}"
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_whose_answer_is_forgotten_is_refused_not_scored_twice() {
    // No answers kept: a retry cannot be answered as the first was.
    let server = TestServer::start(|settings| settings.ingest.recorded_answers = 0).await;
    let mut scoring = ScoringClient::new(server.channel().await);
    let request = payment("once", "forgetful-card", 40.0, now_ms() - SECOND_MS);
    scoring.score(request.clone()).await.expect("first");
    let status = scoring.score(request).await.expect_err("retry refused");
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    assert!(status.message().contains("event_id"), "{status:?}");
    server.stop().await;
}
