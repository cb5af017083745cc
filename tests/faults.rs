//! Trust under hostile input, on the real server: as-of reads never see a later event and
//! refuse what they cannot answer exactly; amounts that would make state overflow are
//! refused; a score is never an OK ALLOW unless it is a number.

mod common;

use common::TestServer;
use streamscore::api::pb::{
    self, features_client::FeaturesClient, ingest_client::IngestClient,
    scoring_client::ScoringClient,
};
use streamscore::time::{HOUR_MS, MINUTE_MS, SECOND_MS, now_ms};
use tonic::Code;

fn event(id: &str, kind: &str, time_ms: i64, entities: &[(&str, &str)]) -> pb::Event {
    pb::Event {
        event_id: id.into(),
        event_type: kind.into(),
        event_time_ms: time_ms,
        entities: entities
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    }
}

fn payment(id: &str, time_ms: i64, card: &str, amount: f64) -> pb::Event {
    let mut payment = event(id, "payment", time_ms, &[("user", "u1"), ("card", card)]);
    payment.numbers.insert("amount".into(), amount);
    payment
        .strings
        .insert("billing_country".into(), "DE".into());
    payment.strings.insert("ip_country".into(), "DE".into());
    payment
}

async fn ingest(server: &TestServer, events: Vec<pb::Event>) -> pb::IngestAck {
    IngestClient::new(server.channel().await)
        .ingest_batch(pb::IngestRequest {
            batch_id: 1,
            events,
        })
        .await
        .expect("batch is answered")
        .into_inner()
}

async fn features_as_of(
    server: &TestServer,
    entity_type: &str,
    id: &str,
    as_of_ms: i64,
) -> Result<Vec<(String, Option<f64>)>, tonic::Status> {
    let response = FeaturesClient::new(server.channel().await)
        .get_features(pb::GetFeaturesRequest {
            entity_type: entity_type.into(),
            entity_id: id.into(),
            feature_names: Vec::new(),
            as_of_ms: Some(as_of_ms),
        })
        .await?
        .into_inner();
    Ok(response
        .values
        .into_iter()
        .map(|v| (v.name, v.value))
        .collect())
}

fn value(values: &[(String, Option<f64>)], name: &str) -> Option<f64> {
    values
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no feature {name}"))
        .1
}

fn score_request(event: pb::Event) -> pb::ScoreRequest {
    pb::ScoreRequest {
        model: "fraud".into(),
        event: Some(event),
        include_features: false,
        record: false,
        reasons: Some(0),
    }
}

/// The case: a login at t2 and a payment at t1 < t2, read as of t1 + 1 s, gave
/// `user_seconds_since_last_event = -299`: the read saw the later login.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_as_of_read_leaves_out_every_later_event() {
    let server = TestServer::start(|_| {}).await;
    let t2 = now_ms() - MINUTE_MS;
    let t1 = t2 - 300 * SECOND_MS;
    let mut login = event("login-1", "login", t2, &[("user", "u1")]);
    login.numbers.insert("success".into(), 1.0);
    let ack = ingest(&server, vec![login, payment("pay-1", t1, "c1", 20.0)]).await;
    assert_eq!(ack.accepted, 2, "{ack:?}");

    let before = features_as_of(&server, "user", "u1", t1 + SECOND_MS)
        .await
        .expect("a read within the lateness is answered");
    assert_eq!(value(&before, "user_seconds_since_last_event"), Some(1.0));
    assert_eq!(value(&before, "user_age_seconds"), Some(1.0));
    assert_eq!(value(&before, "user_payments_10m"), Some(1.0));
    assert_eq!(value(&before, "user_last_amount"), Some(20.0));

    let before_any = features_as_of(&server, "user", "u1", t1 - SECOND_MS)
        .await
        .expect("answered");
    assert_eq!(value(&before_any, "user_seconds_since_last_event"), None);
    assert_eq!(value(&before_any, "user_age_seconds"), None);
    assert_eq!(value(&before_any, "user_payments_10m"), Some(0.0));

    let after = features_as_of(&server, "user", "u1", t2 + SECOND_MS)
        .await
        .expect("answered");
    assert_eq!(value(&after, "user_seconds_since_last_event"), Some(1.0));
    assert_eq!(value(&after, "user_age_seconds"), Some(301.0));
    server.stop().await;
}

/// A read older than `watermark - allowed_lateness` could see pruned windows: it is
/// refused, naming the field, never answered with counts that are too low.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_older_than_the_lateness_are_refused_by_name() {
    let server = TestServer::start(|_| {}).await;
    let now = now_ms();
    let ack = ingest(&server, vec![payment("pay-1", now - MINUTE_MS, "c1", 20.0)]).await;
    assert_eq!(ack.accepted, 1, "{ack:?}");

    let status = features_as_of(&server, "card", "c1", now - 3 * HOUR_MS)
        .await
        .expect_err("3 h back is beyond the 1 h lateness");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(status.message().contains("as_of_ms"), "{status:?}");

    let mut scoring = ScoringClient::new(server.channel().await);
    let status = scoring
        .score(score_request(payment("", now - 3 * HOUR_MS, "c1", 10.0)))
        .await
        .expect_err("a score 3 h in the past cannot be answered exactly");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(status.message().contains("event_time_ms"), "{status:?}");
    server.stop().await;
}

/// Two payments of 1e308 made the stored sums infinite and the next score NaN, decided
/// ALLOW with status OK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_or_non_finite_amounts_never_yield_an_ok_allow() {
    let server = TestServer::start(|_| {}).await;
    let now = now_ms();
    let ack = ingest(
        &server,
        vec![
            payment("big-1", now - 2 * SECOND_MS, "c9", 1e308),
            payment("big-2", now - SECOND_MS, "c9", 1e308),
            payment("ok-1", now - SECOND_MS, "c9", 25.0),
        ],
    )
    .await;
    assert_eq!(ack.accepted, 1, "{ack:?}");
    let refused: Vec<u32> = ack.refused.iter().map(|r| r.index).collect();
    assert_eq!(refused, [0, 1]);
    assert!(
        ack.refused.iter().all(|r| r.field == "numbers.amount"),
        "{ack:?}"
    );

    let mut scoring = ScoringClient::new(server.channel().await);
    for amount in [1e308, f64::MAX, f64::INFINITY, f64::NEG_INFINITY, f64::NAN] {
        let answer = scoring
            .score(score_request(payment("", now, "c9", amount)))
            .await;
        match answer {
            Ok(response) => panic!(
                "amount {amount} was scored: {:?}",
                response.into_inner().decision
            ),
            Err(status) => {
                assert_eq!(status.code(), Code::InvalidArgument, "{amount}: {status:?}");
                assert!(status.message().contains("amount"), "{status:?}");
            }
        }
    }
    // The card's state stayed finite: the largest amount allowed twice still scores a
    // number.
    let ack = ingest(
        &server,
        vec![
            payment("max-1", now, "c9", 1e12),
            payment("max-2", now, "c9", 1e12),
        ],
    )
    .await;
    assert_eq!(ack.accepted, 2, "{ack:?}");
    let response = scoring
        .score(score_request(payment("", now, "c9", 1e12)))
        .await
        .expect("bounded amounts score")
        .into_inner();
    assert!(response.score.is_finite(), "{response:?}");
    server.stop().await;
}

/// A card-testing burst sent in parallel: each recorded score must see the payments
/// recorded before it, so the velocity feature climbs 0, 1, ..., 31.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_recorded_scores_on_one_card_each_see_the_ones_before() {
    let server = TestServer::start(|_| {}).await;
    let now = now_ms();
    let channel = server.channel().await;
    let calls = (0..32).map(|k| {
        let mut scoring = ScoringClient::new(channel.clone());
        tokio::spawn(async move {
            let mut request = score_request(payment(&format!("burst-{k}"), now, "c-burst", 1.0));
            request.record = true;
            request.include_features = true;
            let response = scoring.score(request).await.expect("scored").into_inner();
            let seen = response
                .features
                .iter()
                .find(|f| f.name == "card_payments_10m")
                .and_then(|f| f.value)
                .expect("the fraud model reads card_payments_10m");
            assert_eq!(response.recorded.map(|r| r.accepted), Some(1));
            seen
        })
    });
    let mut seen = Vec::new();
    for call in calls.collect::<Vec<_>>() {
        seen.push(call.await.expect("call task"));
    }
    seen.sort_by(f64::total_cmp);
    let expected: Vec<f64> = (0..32).map(f64::from).collect();
    assert_eq!(seen, expected);
    server.stop().await;
}

/// A half-sent request on the metrics port used to hold its connection open forever;
/// now the server closes it (after its scrape timeout) and keeps answering scrapes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_sent_scrape_is_closed_by_the_server() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start(|_| {}).await;
    let mut stalled = tokio::net::TcpStream::connect(server.metrics_addr)
        .await
        .unwrap();
    stalled.write_all(b"GET /metr").await.unwrap();
    let mut rest = Vec::new();
    // Returns only when the server closes the connection; a hang is the bug.
    let _ = stalled.read_to_end(&mut rest).await;
    assert!(rest.is_empty(), "no answer to half a request");
    assert!(
        server
            .scrape()
            .await
            .contains("streamscore_scores_non_finite")
    );
    server.stop().await;
}
