//! Streams 100k simulated events through the real server's `IngestStream` and checks
//! that `GetFeatures` equals the naive reference for every feature of a sample of
//! entities of every type.

mod common;

use std::collections::BTreeSet;

use common::TestServer;
use common::naive::{Naive, Outcome, same_value};
use streamscore::api::client;
use streamscore::definitions::Definitions;
use streamscore::events::RawEvent;
use streamscore::simulate::{SimConfig, Simulator};
use streamscore::time::HOUR_MS;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn features_over_grpc_equal_the_naive_computation() {
    let server = TestServer::start(|_| {}).await;
    let events: Vec<RawEvent> = Simulator::new(SimConfig {
        users: 2_000,
        ..SimConfig::default()
    })
    .take(100_000)
    .collect();

    let summary = client::stream_events(
        server.channel().await,
        events.clone().into_iter(),
        1_000,
        8,
        |_| {},
    )
    .await
    .expect("stream succeeds");
    assert_eq!(summary.batches, 100);
    assert_eq!(
        summary.accepted,
        100_000,
        "refused: {:?}",
        summary.refused.first()
    );

    let definitions = Definitions::default_shop();
    let settings = streamscore::config::Settings::default();
    let mut naive = Naive::new(
        definitions.clone(),
        settings.ingest.allowed_lateness.0,
        settings.ingest.dedup_horizon.0,
    );
    for event in &events {
        assert_eq!(naive.offer(event), Outcome::Applied);
    }

    // A spread of ids per entity type: every one of the busiest, and a stride through
    // the rest, so both heavy and quiet entities are checked.
    let mut samples: Vec<(String, String)> = Vec::new();
    for entity in &definitions.entities {
        let ids: BTreeSet<String> = events
            .iter()
            .filter_map(|e| {
                if entity.parts.is_empty() {
                    e.entities.get(&entity.name).cloned()
                } else {
                    let parts: Option<Vec<&String>> = entity
                        .parts
                        .iter()
                        .map(|p| e.entities.get(&definitions.entities[*p].name))
                        .collect();
                    parts.map(|p| p.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("|"))
                }
            })
            .collect();
        assert!(!ids.is_empty(), "no {} in the stream", entity.name);
        let stride = (ids.len() / 40).max(1);
        samples.extend(
            ids.iter()
                .step_by(stride)
                .map(|id| (entity.name.clone(), id.clone())),
        );
    }
    samples.push(("card".into(), "never-seen".into()));

    let watermark = naive.watermark_ms();
    let mut compared = 0;
    let mut nonzero = 0;
    for as_of in [watermark, watermark + 3 * HOUR_MS] {
        for (entity_type, id) in &samples {
            let response =
                client::get_features(server.channel().await, entity_type, id, Some(as_of))
                    .await
                    .expect("get features");
            let expected_features: Vec<_> = definitions
                .features
                .iter()
                .filter(|f| definitions.entities[f.entity].name == *entity_type)
                .collect();
            assert_eq!(response.values.len(), expected_features.len());
            for (value, feature) in response.values.iter().zip(expected_features) {
                assert_eq!(value.name, feature.name);
                let (known, expected) = naive.read(feature, id, as_of);
                assert_eq!(response.known, known, "{entity_type} {id}");
                assert!(
                    same_value(value.value, expected),
                    "{entity_type} {id} {} at {as_of}: server {:?}, naive {:?}",
                    feature.name,
                    value.value,
                    expected
                );
                compared += 1;
                nonzero += usize::from(expected.is_some_and(|v| v != 0.0));
            }
        }
    }
    assert!(compared > 2_000, "only {compared} values compared");
    assert!(
        nonzero > compared / 4,
        "only {nonzero} of {compared} values are non-zero: the sample checks too little"
    );
    server.stop().await;
}
