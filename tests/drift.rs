//! The drift check over gRPC: payments by shoppers who look like the training history
//! (a few views and a cart in the minutes before) raise no warning; payments by shoppers
//! with hundreds of views and carts in a day (the tour's simulation once ran 15x denser
//! than the shipped model's training history, and every ordinary payment was blocked)
//! are counted as drift, with each feature's shift as a gauge.

mod common;

use common::TestServer;
use streamscore::api::pb::{self, ingest_client::IngestClient, scoring_client::ScoringClient};
use streamscore::config::DriftSettings;

const SHOPPERS: usize = 20;

fn event(id: String, kind: &str, user: &str, product: usize, at_ms: i64) -> pb::Event {
    let mut entities = vec![("user".to_string(), user.to_string())];
    entities.push(("product".to_string(), format!("p{product}")));
    pb::Event {
        event_id: id,
        event_type: kind.into(),
        event_time_ms: at_ms,
        entities: entities.into_iter().collect(),
        numbers: if kind == "add_to_cart" {
            [("price".to_string(), 20.0), ("quantity".to_string(), 1.0)].into()
        } else {
            Default::default()
        },
        ..Default::default()
    }
}

/// `views` page views and `carts` carts per shopper of `prefix`, spread over the last
/// `span_ms`.
fn shopping(prefix: &str, views: usize, carts: usize, span_ms: i64) -> Vec<pb::Event> {
    let now = streamscore::time::now_ms();
    let mut events = Vec::new();
    for shopper in 0..SHOPPERS {
        let user = format!("{prefix}{shopper}");
        for i in 0..views + carts {
            let kind = if i < views {
                "page_view"
            } else {
                "add_to_cart"
            };
            let at = now - span_ms + span_ms * i as i64 / (views + carts) as i64;
            events.push(event(format!("{user}-{i}"), kind, &user, i % 7, at));
        }
    }
    events
}

/// Sends `events` oldest first (the server refuses what is later than its lateness).
async fn ingest(server: &TestServer, mut events: Vec<pb::Event>) {
    events.sort_by_key(|e| e.event_time_ms);
    let mut ingest = IngestClient::new(server.channel().await);
    for (batch, chunk) in events.chunks(500).enumerate() {
        let ack = ingest
            .ingest_batch(pb::IngestRequest {
                batch_id: batch as u64,
                events: chunk.to_vec(),
            })
            .await
            .expect("ingest")
            .into_inner();
        assert!(ack.refused.is_empty(), "{:?}", ack.refused.first());
    }
}

async fn pay(server: &TestServer, prefix: &str) {
    let mut scoring = ScoringClient::new(server.channel().await);
    for shopper in 0..SHOPPERS {
        let mut request = common::fraud_payment(45.0);
        let event = request.event.as_mut().expect("an event");
        event
            .entities
            .insert("user".into(), format!("{prefix}{shopper}"));
        event
            .entities
            .insert("card".into(), format!("{prefix}-card{shopper}"));
        event.strings = [
            ("billing_country".to_string(), "DE".to_string()),
            ("ip_country".to_string(), "DE".to_string()),
        ]
        .into();
        scoring.score(request).await.expect("score");
    }
}

fn value(scrape: &str, series: &str) -> Option<f64> {
    scrape
        .lines()
        .find(|line| line.starts_with(series))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dense_traffic_is_drift_and_ordinary_traffic_is_not() {
    let server = TestServer::start(|settings| {
        settings.drift = DriftSettings {
            every: 1,
            window: SHOPPERS as u64,
            threshold: 3.0,
        };
    })
    .await;
    let labels = "{model=\"fraud\",version=\"1\"}";
    // Ordinary: three views and a cart in the ten minutes before paying. Dense: 300
    // views and 100 carts in the last day.
    let mut events = shopping("calm", 3, 1, 10 * 60_000);
    events.extend(shopping("busy", 300, 100, 20 * 3_600_000));
    ingest(&server, events).await;
    pay(&server, "calm").await;
    let scrape = server.scrape().await;
    assert_eq!(
        value(&scrape, &format!("streamscore_drift_checks_total{labels}")),
        Some(1.0),
        "{scrape}"
    );
    assert_eq!(
        value(
            &scrape,
            &format!("streamscore_drift_warnings_total{labels}")
        ),
        None,
        "{scrape}"
    );
    pay(&server, "busy").await;
    let scrape = server.scrape().await;
    assert_eq!(
        value(
            &scrape,
            &format!("streamscore_drift_warnings_total{labels}")
        ),
        Some(1.0),
        "{scrape}"
    );
    let views = value(
        &scrape,
        "streamscore_feature_drift_deviations{model=\"fraud\",version=\"1\",feature=\"user_views_24h\"}",
    )
    .expect("a gauge per feature");
    assert!(views > 3.0, "{scrape}");
    server.stop().await;
}
