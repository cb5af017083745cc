//! Scale-out on one machine: librdkafka's mock cluster, a throwaway 3-master Redis
//! Cluster, one router and two aggregators in one consumer group (in this process).
//! Every sampled entity's state in Redis reads as the naive model says, and as the
//! embedded engine fed the same events reads its own, bit for bit; the shared
//! watermark is the embedded engine's.
#![cfg(feature = "cluster")]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::redis::RedisCluster;
use rdkafka::mocking::MockCluster;
use streamscore::config::{KafkaSettings, Settings};
use streamscore::definitions::Definitions;
use streamscore::events::{Limits, RawEvent, validate};
use streamscore::features::{Admission, DetachedReads, Engine, EngineSettings};
use streamscore::online::{RedisOnline, entity_key};
use streamscore::scaleout::{Pipeline, aggregate, route};
use streamscore::simulate::{SimConfig, Simulator};

const EVENTS: usize = 20_000;

fn pipeline(brokers: &str, redis: &RedisCluster) -> Pipeline {
    let defaults = Settings::default();
    let consumer: BTreeMap<String, String> = [
        ("session.timeout.ms", "6000"),
        ("heartbeat.interval.ms", "500"),
        ("max.poll.interval.ms", "7000"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    Pipeline {
        kafka: KafkaSettings {
            brokers: brokers.to_string(),
            topics: vec!["events".into()],
            batch_records: 500,
            consumer,
            ..KafkaSettings::default()
        },
        definitions: Arc::new(Definitions::default_shop()),
        engine: EngineSettings {
            allowed_lateness_ms: defaults.ingest.allowed_lateness.0,
            dedup_horizon_ms: defaults.ingest.dedup_horizon.0,
        },
        limits: Limits {
            max_future_skew_ms: defaults.ingest.max_future_skew.0,
            max_id_bytes: defaults.ingest.max_id_bytes,
        },
        topic_prefix: "ss".into(),
        redis_nodes: redis.nodes.clone(),
        counters: Default::default(),
    }
}

#[test]
fn two_aggregators_build_what_the_embedded_engine_holds_to_the_bit() {
    if std::env::var_os("STREAMSCORE_TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("info,streamscore=debug")
            .try_init();
    }
    let redis = RedisCluster::start();
    let kafka = MockCluster::new(1).expect("mock cluster");
    kafka.create_topic("events", 1, 1).expect("events topic");
    let brokers = kafka.bootstrap_servers();
    let pipeline = Arc::new(pipeline(&brokers, &redis));
    let entity_topics = pipeline.entity_topics();
    for topic in &entity_topics {
        kafka.create_topic(topic, 4, 1).expect("entity topic");
    }
    let events: Vec<RawEvent> = Simulator::new(SimConfig {
        users: 1_000,
        ..SimConfig::default()
    })
    .take(EVENTS)
    .collect();

    // The embedded engine on the same events, in the same order.
    let definitions = Arc::clone(&pipeline.definitions);
    let mut expected = 0u64;
    let mut embedded = Engine::new(Arc::clone(&definitions), pipeline.engine);
    for (seq, raw) in events.iter().enumerate() {
        let event = validate(&definitions, &pipeline.limits, raw, None).expect("valid");
        if embedded.admit(&event) == Admission::Apply {
            expected += embedded.entities_of(&event).len() as u64;
            embedded.apply(&event, seq as u64 + 1);
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("runtime");
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    runtime.block_on(common::kafka::produce(&brokers, "events", &events));
    let mut tasks = Vec::new();
    {
        let pipeline = Arc::clone(&pipeline);
        let shutdown = shutdown.clone();
        tasks.push(
            runtime.spawn(async move { route(pipeline, "route".into(), "route-0".into(), shutdown).await }),
        );
    }
    for _ in 0..2 {
        let pipeline = Arc::clone(&pipeline);
        let shutdown = shutdown.clone();
        tasks.push(runtime.spawn(async move { aggregate(pipeline, "aggregate".into(), shutdown).await }));
    }

    // Done when every record the embedded engine would apply is applied (and written).
    let deadline = Instant::now() + Duration::from_secs(120);
    while pipeline.counters.applied.load(Ordering::Relaxed) < expected {
        for task in &tasks {
            assert!(!task.is_finished(), "a pipeline task ended early");
        }
        assert!(
            Instant::now() < deadline,
            "{} of {expected} records applied, {} events routed",
            pipeline.counters.applied.load(Ordering::Relaxed),
            pipeline.counters.routed.load(Ordering::Relaxed)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.send(true).expect("stop");
    for task in tasks {
        runtime
            .block_on(task)
            .expect("task")
            .expect("ran without error");
    }

    let online = runtime
        .block_on(RedisOnline::connect(&redis.nodes))
        .expect("connects");
    let shared = runtime
        .block_on(online.watermark())
        .expect("watermark")
        .expect("written");
    assert_eq!(shared, embedded.watermark_ms());

    let naive = common::naive::over_default_shop(&events);
    let at = naive.watermark_ms();
    assert_eq!(at, embedded.watermark_ms());
    let samples = common::sample_entities(&definitions, &events, 25);
    let scorer = Engine::new(Arc::clone(&definitions), pipeline.engine);
    scorer.advance_watermark(shared);
    let mut reads = Vec::new();
    for (entity, id) in &samples {
        let (entity_id, features) = embedded.resolve(entity, &[]).expect("resolves");
        let record = runtime
            .block_on(online.read(&[entity_key(entity, id)], definitions.fingerprint))
            .expect("reads")
            .remove(0);
        let mut states = std::collections::HashMap::new();
        if let Some(record) = record {
            states.insert((entity_id, id.clone()), record.state);
        }
        let reads_online = DetachedReads {
            engine: &scorer,
            states: &states,
        };
        use streamscore::features::EntityReads;
        let from_redis = reads_online
            .read_entity(entity_id, id, &features, at)
            .expect("reads from Redis");
        let own = embedded
            .view()
            .read(entity_id, id, &features, at)
            .expect("embedded reads");
        assert_eq!(
            format!("{:?}", from_redis),
            format!("{:?}", own),
            "{entity} {id}: from Redis, embedded"
        );
        reads.push((
            from_redis.known,
            from_redis.values.into_iter().map(|(_, v)| v).collect(),
        ));
    }
    common::assert_matches_naive(&definitions, &naive, &samples, &reads, at);
    assert!(samples.len() > 100, "only {} samples", samples.len());
}
