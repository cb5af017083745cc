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
use streamscore::api::pb;
use streamscore::config::{KafkaSettings, Settings};
use streamscore::definitions::Definitions;
use streamscore::events::{RawEvent, validate};
use streamscore::features::{Admission, DetachedReads, Engine};
use streamscore::online::{RedisOnline, entity_key};
use streamscore::scaleout::{Pipeline, aggregate, aggregate_group, route};
use streamscore::simulate::{SimConfig, Simulator};

const EVENTS: usize = 20_000;

/// Consumer settings under which a member that left is replaced in seconds.
fn fast_group() -> BTreeMap<String, String> {
    [
        ("session.timeout.ms", "6000"),
        ("heartbeat.interval.ms", "500"),
        ("max.poll.interval.ms", "7000"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn pipeline(brokers: &str, redis: &RedisCluster) -> Pipeline {
    let mut settings = Settings {
        kafka: KafkaSettings {
            brokers: brokers.to_string(),
            topics: vec!["events".into()],
            batch_records: 500,
            consumer: fast_group(),
            ..KafkaSettings::default()
        },
        ..Settings::default()
    };
    settings.cluster.redis = redis.nodes.clone();
    Pipeline::new(&settings, Arc::new(Definitions::default_shop()))
}

#[test]
fn two_aggregators_build_what_the_embedded_engine_holds_to_the_bit() {
    if std::env::var_os("STREAMSCORE_TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("info,streamscore=debug")
            .try_init();
    }
    let redis = RedisCluster::start();
    let (_kafka, brokers) = mock_cluster(&redis);
    let pipeline = Arc::new(pipeline(&brokers, &redis));
    let events: Vec<RawEvent> = Simulator::new(SimConfig {
        users: 1_000,
        ..SimConfig::default()
    })
    .take(EVENTS)
    .collect();
    let (embedded, expected) = embedded(&pipeline, &events);

    let runtime = runtime();
    runtime.block_on(common::kafka::produce(&brokers, "events", &events));
    let members = [
        spawn_member(&runtime, &pipeline, Member::Router),
        spawn_member(&runtime, &pipeline, Member::Aggregator),
        spawn_member(&runtime, &pipeline, Member::Aggregator),
    ];
    // Done when every record the embedded engine would apply is applied (and written).
    wait_applied(
        &pipeline,
        expected,
        &members.iter().map(|m| &m.1).collect::<Vec<_>>(),
    );
    for (stop, task) in members {
        stop.send(true).expect("stop");
        runtime.block_on(task).expect("ran without error");
    }

    let online = runtime
        .block_on(RedisOnline::connect(&redis.nodes))
        .expect("connects");
    let naive = common::naive::over_default_shop(&events);
    let at = naive.watermark_ms();
    assert_eq!(at, embedded.watermark_ms());
    let (samples, reads) =
        assert_records_read_as_embedded(&runtime, &online, &pipeline, &embedded, &events);
    common::assert_matches_naive(&pipeline.definitions, &naive, &samples, &reads, at);
    assert!(samples.len() > 100, "only {} samples", samples.len());
}

/// The mock Kafka cluster of a scale-out test: the events topic (one partition), the
/// entity topics (four each) and the routers' checkpoint topic. Returns it and its
/// bootstrap address.
fn mock_cluster(
    redis: &RedisCluster,
) -> (
    MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    String,
) {
    let kafka = MockCluster::new(1).expect("mock cluster");
    kafka.create_topic("events", 1, 1).expect("events topic");
    let brokers = kafka.bootstrap_servers();
    let pipeline = pipeline(&brokers, redis);
    for topic in &pipeline.entity_topics() {
        kafka.create_topic(topic, 4, 1).expect("entity topic");
    }
    kafka
        .create_topic(&pipeline.checkpoint_topic(), 1, 1)
        .expect("checkpoint topic");
    (kafka, brokers)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("runtime")
}

#[derive(Clone, Copy)]
enum Member {
    Router,
    Aggregator,
}

/// A router or an aggregator of `pipeline` on `runtime`, stopped by its own signal (a
/// rolling restart stops them one by one); the task fails if the member ends in error.
fn spawn_member(
    runtime: &tokio::runtime::Runtime,
    pipeline: &Arc<Pipeline>,
    member: Member,
) -> (
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<()>,
) {
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let pipeline = Arc::clone(pipeline);
    let task = runtime.spawn(async move {
        let run = match member {
            Member::Router => route(pipeline, "route".into(), "route-0".into(), shutdown).await,
            Member::Aggregator => aggregate(pipeline, "aggregate".into(), shutdown).await,
        };
        run.expect("ran without error");
    });
    (stop, task)
}

/// The shop's definitions changed as a team changes them: a window added to a feature
/// and a new feature, on entity types that already had features (so the routers and
/// the entity topics are the same under both).
fn changed_shop() -> Definitions {
    let text = streamscore::definitions::DEFAULT_DEFINITIONS.replacen(
        r#"windows = ["10m", "1h", "24h", "7d"]"#,
        r#"windows = ["10m", "1h", "2h", "24h", "7d"]"#,
        1,
    ) + "\n[[features]]\nname = \"user_amount_min_30d\"\nentity = \"user\"\nevents = [\"payment\"]\naggregation = \"min\"\nfield = \"amount\"\nwindow = \"30d\"\n";
    let changed = Definitions::from_toml(&text).expect("changed definitions");
    assert!(changed.feature_id("card_payments_2h").is_some());
    assert_ne!(
        changed.state_fingerprint,
        Definitions::default_shop().state_fingerprint
    );
    changed
}

/// The embedded engine under `definitions` fed `events` in order, and how many entity
/// records the aggregators running them apply.
fn embedded(pipeline: &Pipeline, events: &[RawEvent]) -> (Engine, u64) {
    let definitions = &pipeline.definitions;
    let mut expected = 0u64;
    let mut engine = Engine::new(Arc::clone(definitions), pipeline.engine);
    for (seq, raw) in events.iter().enumerate() {
        let event = validate(definitions, &pipeline.limits, raw, None).expect("valid");
        if engine.admit(&event) == Admission::Apply {
            expected += engine.entities_of(&event).len() as u64;
            engine.apply(&event, seq as u64 + 1);
        }
    }
    (engine, expected)
}

/// Read from Redis: per sampled entity, whether it is known and its values.
type Reads = Vec<(bool, Vec<Option<f64>>)>;

/// Every sampled entity's record in Redis, under `pipeline`'s definitions, reads as the
/// embedded engine reads its own, and their watermarks are the same. Returns the
/// samples and what was read of them.
fn assert_records_read_as_embedded(
    runtime: &tokio::runtime::Runtime,
    online: &RedisOnline,
    pipeline: &Pipeline,
    embedded: &Engine,
    events: &[RawEvent],
) -> (Vec<(String, String)>, Reads) {
    let definitions = &pipeline.definitions;
    let fingerprint = definitions.state_fingerprint;
    let shared = runtime
        .block_on(online.watermark(fingerprint))
        .expect("watermark")
        .expect("written");
    assert_eq!(shared, embedded.watermark_ms());
    let scorer = Engine::new(Arc::clone(definitions), pipeline.engine);
    scorer.advance_watermark(shared);
    let samples = common::sample_entities(definitions, events, 25);
    let mut reads = Vec::new();
    for (entity, id) in &samples {
        let (entity_id, features) = embedded.resolve(entity, &[]).expect("resolves");
        let record = runtime
            .block_on(online.read(&[entity_key(fingerprint, entity, id)], fingerprint))
            .expect("reads")
            .remove(0);
        let states: std::collections::HashMap<_, _> = record
            .map(|record| ((entity_id, id.clone()), record.state))
            .into_iter()
            .collect();
        use streamscore::features::EntityReads;
        let from_redis = DetachedReads {
            engine: &scorer,
            states: &states,
        }
        .read_entity(entity_id, id, &features, shared)
        .expect("reads from Redis");
        let own = embedded
            .view()
            .read(entity_id, id, &features, shared)
            .expect("embedded reads");
        assert_eq!(
            format!("{from_redis:?}"),
            format!("{own:?}"),
            "{entity} {id}: from Redis, embedded ({fingerprint:016x})"
        );
        reads.push((
            from_redis.known,
            from_redis.values.into_iter().map(|(_, v)| v).collect(),
        ));
    }
    (samples, reads)
}

/// Waits until `pipeline`'s aggregators applied `expected` records, every task still
/// running.
fn wait_applied(pipeline: &Pipeline, expected: u64, tasks: &[&tokio::task::JoinHandle<()>]) {
    let deadline = Instant::now() + Duration::from_secs(180);
    while pipeline.counters.applied.load(Ordering::Relaxed) < expected {
        for task in tasks {
            assert!(!task.is_finished(), "a pipeline task ended early");
        }
        assert!(
            Instant::now() < deadline,
            "{} of {expected} records applied",
            pipeline.counters.applied.load(Ordering::Relaxed),
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A definitions change rolled out while events flow, as the README says to roll it:
/// the new aggregators start beside the old ones (their own group, from the entity
/// topics' first records), then the old ones stop one by one. Under both
/// definitions, every sampled entity's record reads as an embedded engine running
/// them reads its own, over the whole history, and each side applied exactly its
/// records (none twice, none dropped). A record the definitions refuse is counted.
///
/// Before records and groups carried the fingerprint, the first new aggregator joined
/// the old group, met an old record and ended with "computed with other feature
/// definitions" on every retry.
#[test]
fn a_definitions_change_rolled_out_while_events_flow_rebuilds_every_entity() {
    let redis = RedisCluster::start();
    let (_kafka, brokers) = mock_cluster(&redis);
    let old = Arc::new(pipeline(&brokers, &redis));
    let new = Arc::new(Pipeline {
        definitions: Arc::new(changed_shop()),
        ..pipeline(&brokers, &redis)
    });
    assert_eq!(old.entity_topics(), new.entity_topics());
    let events: Vec<RawEvent> = Simulator::new(SimConfig {
        users: 1_000,
        ..SimConfig::default()
    })
    .take(EVENTS)
    .collect();
    let (first, second) = events.split_at(EVENTS / 2);
    let (_, expected_old_first) = embedded(&old, first);
    let (embedded_old, expected_old) = embedded(&old, &events);
    let (embedded_new, expected_new) = embedded(&new, &events);

    let runtime = runtime();
    let spawn = |pipeline: &Arc<Pipeline>, member| spawn_member(&runtime, pipeline, member);
    let router = spawn(&old, Member::Router);
    let old_members = [
        spawn(&old, Member::Aggregator),
        spawn(&old, Member::Aggregator),
    ];
    runtime.block_on(common::kafka::produce(&brokers, "events", first));
    wait_applied(
        &old,
        expected_old_first,
        &[&router.1, &old_members[0].1, &old_members[1].1],
    );

    // The roll: a new member joins, an old one stops, the second half flows, the
    // second new member joins, the last old one stops.
    let first_new = spawn(&new, Member::Aggregator);
    let [old_a, old_b] = old_members;
    old_a.0.send(true).expect("stop");
    runtime.block_on(old_a.1).expect("stopped cleanly");
    runtime.block_on(common::kafka::produce(&brokers, "events", second));
    let second_new = spawn(&new, Member::Aggregator);
    wait_applied(&old, expected_old, &[&router.1, &old_b.1]);
    old_b.0.send(true).expect("stop");
    runtime.block_on(old_b.1).expect("stopped cleanly");
    wait_applied(
        &new,
        expected_new,
        &[&router.1, &first_new.1, &second_new.1],
    );

    // Applied exactly: no more than expected either, under both definitions.
    assert_eq!(old.counters.applied.load(Ordering::Relaxed), expected_old);
    assert_eq!(new.counters.applied.load(Ordering::Relaxed), expected_new);
    let online = runtime
        .block_on(RedisOnline::connect(&redis.nodes))
        .expect("connects");
    let (compared, _) =
        assert_records_read_as_embedded(&runtime, &online, &old, &embedded_old, &events);
    assert!(compared.len() > 100, "only {} samples", compared.len());
    assert_records_read_as_embedded(&runtime, &online, &new, &embedded_new, &events);

    // A record the new definitions cannot apply is skipped, counted, and the rest go on.
    let card_topic = new.entity_topic("card");
    let mut refused = events
        .iter()
        .find(|e| e.event_type == "payment")
        .expect("a payment")
        .clone();
    refused.event_id = "refused-amount".into();
    refused.numbers.insert("amount".into(), -5.0);
    runtime.block_on(common::kafka::produce(&brokers, &card_topic, &[refused]));
    let deadline = Instant::now() + Duration::from_secs(60);
    while new.counters.skipped.load(Ordering::Relaxed) == 0 {
        assert!(
            Instant::now() < deadline,
            "the refused record was not counted"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(new.counters.skipped.load(Ordering::Relaxed), 1);
    assert_eq!(new.counters.applied.load(Ordering::Relaxed), expected_new);
    let metrics = new.prometheus(streamscore::time::now_ms());
    assert!(
        metrics.contains("streamscore_aggregator_skipped_records_total 1"),
        "{metrics}"
    );

    for (stop, task) in [router, first_new, second_new] {
        stop.send(true).expect("stop");
        runtime.block_on(task).expect("stopped cleanly");
    }
}

/// Whether the aggregators committed every record of the entity topics: each
/// partition's committed offset is at its end, or just before the transaction marker
/// the router's last commit left there.
fn aggregated(brokers: &str, group: &str, topics: &[String]) -> bool {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let probe: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()
        .expect("probe");
    let mut list = rdkafka::TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for topic in topics {
        for partition in 0..4 {
            list.add_partition(topic, partition);
            let (_, end) = probe
                .fetch_watermarks(topic, partition, Duration::from_secs(10))
                .expect("watermarks");
            ends.insert((topic.clone(), partition), end);
        }
    }
    let committed = probe
        .committed_offsets(list, Duration::from_secs(10))
        .expect("committed");
    committed.elements().iter().all(|element| {
        let end = ends[&(element.topic().to_string(), element.partition())];
        let offset = element.offset().to_raw().unwrap_or(-1).max(0);
        end == 0 || offset >= end - 1
    })
}

fn write_role_config(
    dir: &std::path::Path,
    brokers: &str,
    redis: &RedisCluster,
    id: &str,
) -> std::path::PathBuf {
    let nodes: Vec<String> = redis.nodes.iter().map(|n| format!("\"{n}\"")).collect();
    // An empty id: the default, this process's instance id.
    let transactional_id = match id {
        "" => String::new(),
        id => format!("transactional_id = \"route-{id}\"\n"),
    };
    let top = format!(
        "[samples]\nevery = 1\n\n[cluster]\nredis = [{}]\n{transactional_id}route_group = \"route\"\naggregate_group = \"aggregate\"\n",
        nodes.join(", ")
    );
    common::kafka::write_config(
        dir,
        &top,
        &format!("brokers = \"{brokers}\"\ntopics = [\"events\"]\nbatch_records = 500\n"),
    )
}

/// The last input offset the routers checkpointed (-1 before any): the checkpoint is
/// written in the same transaction as the routed records, so every event up to it is
/// in the entity topics.
fn routed_through(brokers: &str, checkpoints: &str) -> i64 {
    common::kafka::read_committed(brokers, checkpoints, 1)
        .iter()
        .map(|(_, payload)| {
            let record: serde_json::Value = serde_json::from_slice(payload).expect("checkpoint");
            record["source"][2].as_i64().expect("offset")
        })
        .max()
        .unwrap_or(-1)
}

/// Waits until `fed` events of the events topic are routed, taken by the embedded
/// server's source, and every routed record aggregated by `group`.
async fn wait_taken(
    brokers: &str,
    checkpoints: &str,
    embedded: &common::kafka::Committed,
    group: &str,
    topics: &[String],
    fed: i64,
) {
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let routed = routed_through(brokers, checkpoints) + 1;
        if routed >= fed && embedded.total() >= fed && aggregated(brokers, group, topics) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{routed} of {fed} events routed, {} taken by the embedded server",
            embedded.total()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An aggregator and a scorer as separate processes, beside an embedded server whose
/// Kafka source reads the same events topic, `history` fed to all of them and taken.
struct Roles {
    brokers: String,
    topics: Vec<String>,
    group: String,
    checkpoints: String,
    embedded: common::TestServer,
    aggregator: std::process::Child,
    scorer: std::process::Child,
    scorer_url: String,
    /// What the embedded server's source committed.
    progress: common::kafka::Committed,
    /// Events produced to the events topic so far.
    fed: i64,
    _dirs: Vec<tempfile::TempDir>,
}

impl Roles {
    /// Starts them; `aggregator_login` (user, password) is the aggregator's Redis login.
    async fn start(
        redis: &RedisCluster,
        brokers: &str,
        history: &[RawEvent],
        aggregator_login: Option<(&str, &str)>,
    ) -> Roles {
        let embedded = embedded_on_events(brokers).await;
        let dirs: Vec<tempfile::TempDir> =
            (0..2).map(|_| tempfile::tempdir().expect("dir")).collect();
        let aggregator_config = write_role_config(dirs[0].path(), brokers, redis, "0");
        if let Some((user, password)) = aggregator_login {
            let file = dirs[0].path().join("redis-password");
            std::fs::write(&file, format!("{password}\n")).expect("password file");
            let text = std::fs::read_to_string(&aggregator_config).expect("config");
            let login = format!(
                "[cluster]\nredis_username = \"{user}\"\nredis_password_file = \"{}\"\n",
                file.display()
            );
            std::fs::write(&aggregator_config, text.replacen("[cluster]\n", &login, 1))
                .expect("config with login");
        }
        let (aggregator, _, _) = common::spawn_role(
            dirs[0].path(),
            "aggregator",
            &aggregator_config,
            "streamscore aggregator running",
        );
        let (scorer, scorer_url, _) = common::spawn_role(
            dirs[1].path(),
            "scorer",
            &write_role_config(dirs[1].path(), brokers, redis, "1"),
            "streamscore listening",
        );
        let pipeline = pipeline(brokers, redis);
        let mut roles = Roles {
            brokers: brokers.to_string(),
            topics: pipeline.entity_topics(),
            group: aggregate_group("aggregate", &Definitions::default_shop()),
            checkpoints: pipeline.checkpoint_topic(),
            embedded,
            aggregator,
            scorer,
            scorer_url,
            progress: common::kafka::Committed::new(brokers, "embedded", "events", 1),
            fed: 0,
            _dirs: dirs,
        };
        roles.feed(history).await;
        roles
    }

    /// Produces `events` to the events topic and waits until they are taken.
    async fn feed(&mut self, events: &[RawEvent]) {
        common::kafka::produce(&self.brokers, "events", events).await;
        self.fed += events.len() as i64;
        self.wait_taken().await;
    }

    /// Waits until every event produced so far is routed, taken by the embedded
    /// server and aggregated.
    async fn wait_taken(&self) {
        wait_taken(
            &self.brokers,
            &self.checkpoints,
            &self.progress,
            &self.group,
            &self.topics,
            self.fed,
        )
        .await;
    }

    /// A client of the embedded server and one of the scorer.
    async fn clients(
        &self,
    ) -> (
        pb::scoring_client::ScoringClient<streamscore::api::client::Connection>,
        pb::scoring_client::ScoringClient<streamscore::api::client::Connection>,
    ) {
        let client = |url: String| async move {
            let channel = streamscore::api::client::connect(&url)
                .await
                .expect("connect");
            pb::scoring_client::ScoringClient::new(channel)
        };
        (
            client(self.embedded.url.clone()).await,
            client(self.scorer_url.clone()).await,
        )
    }

    /// Stops everything before the mock cluster goes (see `embedded_on_events`).
    async fn stop(mut self) {
        for child in [&mut self.aggregator, &mut self.scorer] {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.embedded.stop().await;
    }
}

/// The newest event time of `history`, and its last payment.
fn newest_and_last_payment(history: &[RawEvent]) -> (i64, &RawEvent) {
    let newest = history
        .iter()
        .map(|e| e.event_time_ms)
        .max()
        .expect("events");
    let payment = history
        .iter()
        .rev()
        .find(|e| e.event_type == "payment")
        .expect("a payment");
    (newest, payment)
}

/// `record` on a scorer: ten payments of one shopper, each recorded on a scorer and
/// on an embedded server fed the same events topic, one after the other once the last
/// is aggregated. Each scorer answer equals the embedded one to the bit (features,
/// score, decision, reasons): both score before the payment counts. A retry gets the
/// first answer back marked as a duplicate, and nothing is counted twice: the
/// shopper's payment count on the scorer and on the embedded server is the history's
/// plus ten. Before, a scorer refused `record` with FAILED_PRECONDITION.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scorer_records_as_the_embedded_server_does_and_a_retry_gets_the_first_answer() {
    let redis = RedisCluster::start();
    let (_kafka, brokers) = mock_cluster(&redis);
    let history: Vec<RawEvent> = Simulator::new(SimConfig {
        users: 10_000,
        ..SimConfig::default()
    })
    .take(3_000)
    .collect();
    let mut roles = Roles::start(&redis, &brokers, &history, None).await;
    let (newest, shopper) = newest_and_last_payment(&history);
    let (user, card) = (&shopper.entities["user"], &shopper.entities["card"]);
    let (mut on_embedded, mut on_scorer) = roles.clients().await;
    // Bad input is refused by name before anything is scored or sent.
    let mut unnamed = common::fraud_payment(10.0);
    unnamed.record = true;
    let status = on_scorer.score(unnamed).await.expect_err("no event id");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("event_id"), "{status:?}");
    let mut negative = common::fraud_payment(-5.0);
    negative.record = true;
    negative.event.as_mut().expect("event").event_id = "negative".into();
    let status = on_scorer.score(negative).await.expect_err("amount below 0");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("amount"), "{status:?}");

    let payments_before = roles.embedded.store.counters().applied;
    for i in 0..10i64 {
        let mut request = common::fraud_payment(20.0 + i as f64 * 35.0);
        request.record = true;
        request.include_features = true;
        let event = request.event.as_mut().expect("event");
        event.event_id = format!("recorded-{i}");
        event.event_time_ms = newest + 1_000 * (i + 1);
        event.entities = [("user", user), ("card", card)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        let expected = on_embedded
            .score(request.clone())
            .await
            .expect("embedded")
            .into_inner();
        let got = on_scorer
            .score(request.clone())
            .await
            .expect("scorer records")
            .into_inner();
        assert_eq!(got.score.to_bits(), expected.score.to_bits(), "payment {i}");
        assert_eq!(got.decision, expected.decision, "payment {i}");
        assert_eq!(
            format!("{:?}", got.features),
            format!("{:?}", expected.features),
            "payment {i}"
        );
        assert_eq!(
            format!("{:?}", got.reasons),
            format!("{:?}", expected.reasons)
        );
        let recorded = got.recorded.expect("recorded");
        assert_eq!((recorded.accepted, recorded.duplicates), (1, 0));
        // A retry (the client timed out, say): the first answer, as a duplicate.
        let retried = on_scorer.score(request).await.expect("retry").into_inner();
        assert_eq!(retried.score.to_bits(), got.score.to_bits());
        assert_eq!(
            format!("{:?}", retried.features),
            format!("{:?}", got.features)
        );
        let again = retried.recorded.expect("recorded");
        assert_eq!((again.accepted, again.duplicates), (0, 1));
        // The scorer's event (sent twice) and the embedded server's own are one event.
        roles.fed += 2;
        roles.wait_taken().await;
    }
    // Each of the ten is counted once on both sides: the entities read the same, and
    // the embedded server applied ten payments more (their copies from the topic were
    // duplicates).
    assert_eq!(
        roles.embedded.store.counters().applied,
        payments_before + 10,
        "the embedded server applied each recorded payment once"
    );
    // As of the last recorded payment: both watermarks.
    let at = newest + 10_000;
    let card_samples = vec![
        ("card".to_string(), card.clone()),
        ("user".to_string(), user.clone()),
    ];
    let from_scorer = common::read_all_remote(&roles.scorer_url, &card_samples, at).await;
    let from_embedded = common::read_all_remote(&roles.embedded.url, &card_samples, at).await;
    assert_eq!(format!("{from_scorer:?}"), format!("{from_embedded:?}"));

    roles.stop().await;
}

/// An embedded server whose Kafka source reads the events topic (group `embedded`),
/// for the scale-out tier's answers to be compared with.
async fn embedded_on_events(brokers: &str) -> common::TestServer {
    let brokers = brokers.to_string();
    common::TestServer::start(move |settings| {
        settings.kafka.brokers = brokers;
        settings.kafka.topics = vec!["events".into()];
        settings.kafka.group = "embedded".into();
    })
    .await
}

/// Events fed per step: the mock broker keeps only about 5 MB per partition, so the
/// test feeds the next step once every consumer has taken the last one.
const STEP: usize = 20_000;

/// Two aggregators and two scorers as separate processes, 200k events fed in steps:
/// one aggregator killed with SIGKILL mid-stream; afterwards both scorers answer
/// `GetFeatures` as the naive model and `Score` as an embedded server fed the same
/// events, to the bit. A Redis master killed: the scorers answer UNAVAILABLE naming
/// the store meanwhile, and correctly after its restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn separate_processes_survive_a_killed_aggregator_and_a_killed_redis_master() {
    let mut redis = RedisCluster::start();
    let (_kafka, brokers) = mock_cluster(&redis);
    let topics = pipeline(&brokers, &redis).entity_topics();
    let shop = Definitions::default_shop();
    let (fingerprint, group) = (shop.state_fingerprint, aggregate_group("aggregate", &shop));
    let checkpoints = pipeline(&brokers, &redis).checkpoint_topic();
    let events: Vec<RawEvent> = Simulator::new(SimConfig {
        users: 10_000,
        ..SimConfig::default()
    })
    .take(EVENTS * 10)
    .collect();

    // The same events through an embedded server's Kafka source, as they come.
    let embedded = embedded_on_events(&brokers).await;
    let dirs: Vec<tempfile::TempDir> = (0..4).map(|_| tempfile::tempdir().expect("dir")).collect();
    let spawn = |index: usize, role: &str| {
        let config = write_role_config(dirs[index].path(), &brokers, &redis, &index.to_string());
        let ready = if role == "scorer" {
            "streamscore listening"
        } else {
            "streamscore aggregator running"
        };
        common::spawn_role(dirs[index].path(), role, &config, ready)
    };
    let (mut doomed, _, _) = spawn(0, "aggregator");
    let (mut survivor, _, survivor_metrics) = spawn(1, "aggregator");
    let (mut scorer_a, url_a, scorer_a_metrics) = spawn(2, "scorer");
    let (mut scorer_b, url_b, _) = spawn(3, "scorer");

    let online = RedisOnline::connect(&redis.nodes).await.expect("connects");
    let embedded_progress = common::kafka::Committed::new(&brokers, "embedded", "events", 1);
    let mut fed = 0i64;
    for (step, chunk) in events.chunks(STEP).enumerate() {
        common::kafka::produce(&brokers, "events", chunk).await;
        fed += chunk.len() as i64;
        if step == 2 {
            // Mid-stream: part of this step is in Redis, not all of it.
            let middle = chunk[chunk.len() / 2].event_time_ms;
            let deadline = Instant::now() + Duration::from_secs(120);
            while online
                .watermark(fingerprint)
                .await
                .expect("watermark")
                .unwrap_or(0)
                < middle
            {
                assert!(
                    Instant::now() < deadline,
                    "the aggregators made no progress"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            doomed.kill().expect("SIGKILL");
            doomed.wait().expect("reaped");
        }
        wait_taken(
            &brokers,
            &checkpoints,
            &embedded_progress,
            &group,
            &topics,
            fed,
        )
        .await;
    }
    let naive = common::naive::over_default_shop(&events);
    let at = naive.watermark_ms();
    assert_eq!(
        online.watermark(fingerprint).await.expect("watermark"),
        Some(at)
    );
    assert_eq!(embedded.store.counters().applied, events.len() as u64);

    // The survivor's freshness lag per partition: now - the newest event time it
    // applied there; it owns every partition since the kill, so the newest of all
    // (`at`) is among them.
    let before = streamscore::time::now_ms();
    let scraped = common::scrape(&survivor_metrics).await;
    let after = streamscore::time::now_ms();
    let lags: Vec<f64> = scraped
        .lines()
        .filter(|line| line.starts_with("streamscore_aggregator_freshness_lag_seconds{"))
        .filter_map(|line| line.rsplit(' ').next()?.parse().ok())
        .collect();
    assert_eq!(lags.len(), topics.len() * 4, "{scraped}");
    assert_eq!(
        common::metric(&scraped, "streamscore_aggregator_partitions"),
        Some(lags.len() as f64)
    );
    let freshest = lags.iter().copied().fold(f64::INFINITY, f64::min);
    let bounds = ((before - at) as f64 / 1000.0, (after - at) as f64 / 1000.0);
    assert!(
        freshest >= bounds.0 - 0.001 && freshest <= bounds.1 + 0.001,
        "freshest lag {freshest} s, expected within {bounds:?}"
    );
    assert!(
        common::metric(&scraped, "streamscore_aggregated_records_total").unwrap_or(0.0) > 0.0,
        "{scraped}"
    );

    let definitions = Definitions::default_shop();
    let samples = common::sample_entities(&definitions, &events, 20);
    for url in [&url_a, &url_b] {
        let reads = common::read_all_remote(url, &samples, at).await;
        common::assert_matches_naive(&definitions, &naive, &samples, &reads, at);
    }
    let of = |entity: &str| common::ids_of(&samples, entity);
    let (users, cards) = (of("user"), of("card"));
    let payments: Vec<pb::ScoreRequest> = (0..40)
        .map(|i| {
            let mut request = common::fraud_payment(5.0 + i as f64 * 7.5);
            let event = request.event.as_mut().expect("event");
            event.event_time_ms = at - i as i64 * 1_000;
            event.entities = [
                ("user", users[i % users.len()].clone()),
                ("card", cards[i * 7 % cards.len()].clone()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
            request.include_features = true;
            request
        })
        .collect();
    let score = |url: String, request: pb::ScoreRequest| async move {
        let channel = streamscore::api::client::connect(&url)
            .await
            .expect("connect");
        pb::scoring_client::ScoringClient::new(channel)
            .score(request)
            .await
            .map(tonic::Response::into_inner)
    };
    for request in &payments {
        let expected = score(embedded.url.clone(), request.clone())
            .await
            .expect("embedded");
        for url in [&url_a, &url_b] {
            let got = score(url.clone(), request.clone()).await.expect("scorer");
            assert_eq!(got.score.to_bits(), expected.score.to_bits(), "{request:?}");
            assert_eq!(
                format!("{:?}", got.features),
                format!("{:?}", expected.features)
            );
            assert_eq!(got.decision, expected.decision);
        }
    }

    // The Open Inference Protocol on a scorer: each payment through ModelInfer, as of
    // its own time, equals the embedded server's native answer.
    {
        use streamscore::api::v2pb::{self, model_infer_request::InferInputTensor};
        let tensor =
            |name: &str, datatype: &str, contents: v2pb::InferTensorContents| InferInputTensor {
                name: name.into(),
                datatype: datatype.into(),
                shape: vec![1],
                contents: Some(contents),
                ..Default::default()
            };
        let id = |event: &pb::Event, entity: &str| v2pb::InferTensorContents {
            bytes_contents: vec![bytes::Bytes::from(event.entities[entity].clone())],
            ..Default::default()
        };
        let channel = streamscore::api::client::connect(&url_a)
            .await
            .expect("connect");
        let mut v2 = v2pb::grpc_inference_service_client::GrpcInferenceServiceClient::new(channel);
        for (i, request) in payments.iter().enumerate() {
            let event = request.event.as_ref().expect("event");
            let amount = v2pb::InferTensorContents {
                fp64_contents: vec![event.numbers["amount"]],
                ..Default::default()
            };
            let time = v2pb::InferParameter {
                parameter_choice: Some(v2pb::infer_parameter::ParameterChoice::Int64Param(
                    event.event_time_ms,
                )),
            };
            let infer = v2pb::ModelInferRequest {
                model_name: "fraud".into(),
                parameters: [("event_time_ms".to_string(), time)].into(),
                inputs: vec![
                    tensor("user", "BYTES", id(event, "user")),
                    tensor("card", "BYTES", id(event, "card")),
                    tensor("amount", "FP64", amount),
                ],
                ..Default::default()
            };
            let answer = v2
                .model_infer(infer)
                .await
                .expect("V2 on a scorer")
                .into_inner();
            let probability = answer.outputs[0]
                .contents
                .as_ref()
                .expect("typed")
                .fp64_contents[0];
            let expected = score(embedded.url.clone(), request.clone())
                .await
                .expect("embedded");
            assert_eq!(
                probability.to_bits(),
                expected.score.to_bits(),
                "payment {i} over V2"
            );
        }
    }

    // ScoreCandidates over gRPC on a scorer: the same ranking as the embedded server,
    // to the bit. (Recommend's ranking is compared in tests/online_store.rs, with mined
    // rules; here no rule set is promoted and both refuse alike.)
    {
        let products = of("product");
        let rank = |url: String, request: pb::ScoreCandidatesRequest| async move {
            let channel = streamscore::api::client::connect(&url)
                .await
                .expect("connect");
            pb::scoring_client::ScoringClient::new(channel)
                .score_candidates(request)
                .await
                .map(tonic::Response::into_inner)
        };
        for user in users.iter().take(10) {
            let request = pb::ScoreCandidatesRequest {
                context: Some(pb::Event {
                    event_type: "page_view".into(),
                    event_time_ms: at,
                    entities: [("user".to_string(), user.clone())].into(),
                    ..Default::default()
                }),
                candidates: products
                    .iter()
                    .map(|product| pb::Candidate {
                        product: product.clone(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            };
            let expected = rank(embedded.url.clone(), request.clone())
                .await
                .expect("embedded ranks");
            let got = rank(url_a.clone(), request).await.expect("scorer ranks");
            let bits = |answer: &pb::ScoreCandidatesResponse| -> Vec<(String, u64)> {
                answer
                    .candidates
                    .iter()
                    .map(|c| (c.product.clone(), c.score.to_bits()))
                    .collect()
            };
            assert!(!expected.candidates.is_empty());
            assert_eq!(bits(&got), bits(&expected), "{user}");
        }
        let first_user = users[0].clone();
        let recommend = |url: String| {
            let user = first_user.clone();
            async move {
                let channel = streamscore::api::client::connect(&url)
                    .await
                    .expect("connect");
                pb::scoring_client::ScoringClient::new(channel)
                    .recommend(pb::RecommendRequest {
                        user,
                        event_time_ms: at,
                        ..Default::default()
                    })
                    .await
            }
        };
        let (expected, got) = (
            recommend(embedded.url.clone()).await,
            recommend(url_a.clone()).await,
        );
        let code =
            |answer: &Result<_, tonic::Status>| answer.as_ref().err().map(tonic::Status::code);
        assert_eq!(code(&got), code(&expected), "{got:?} / {expected:?}");
    }

    // `streamscore skew` on scorer A's sampled scores against the history as a file
    // (a scorer keeps no log): every vector re-computes to the bit.
    let samples = streamscore::scoring::samples::samples_dir(dirs[2].path());
    let deadline = Instant::now() + Duration::from_secs(30);
    while streamscore::scoring::samples::newest_samples(&samples, usize::MAX)
        .expect("samples")
        .0
        .len()
        < payments.len()
    {
        assert!(Instant::now() < deadline, "samples not written");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let history = dirs[2].path().join("history.jsonl");
    let lines: Vec<String> = events
        .iter()
        .map(|e| serde_json::to_string(e).expect("json"))
        .collect();
    std::fs::write(&history, lines.join("\n")).expect("history");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_streamscore"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .arg("skew")
        .arg("--data-dir")
        .arg(dirs[2].path())
        .arg("--events")
        .arg(&history)
        .args(["--sample", "1000"])
        .output()
        .expect("skew runs");
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        report.contains(&format!("{} sampled scores re-computed", payments.len()))
            && report.contains(": 0 differ"),
        "{report}"
    );

    // Every read noted its age: at least the 40 scores and the feature reads above.
    let scraped = common::scrape(&scorer_a_metrics).await;
    let reads = common::metric(&scraped, "streamscore_scorer_read_age_seconds_count");
    assert!(reads.unwrap_or(0.0) >= 40.0, "{scraped}");

    // A Redis master down: clear errors meanwhile, right answers after.
    redis.kill(1);
    let mut refused = 0;
    for request in &payments {
        if let Err(status) = score(url_a.clone(), request.clone()).await {
            assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
            assert!(status.message().contains("Redis Cluster"), "{status:?}");
            refused += 1;
        }
    }
    assert!(
        refused > 0,
        "with a master down, some payments cannot be scored"
    );
    redis.restart(1);
    let expected = score(embedded.url.clone(), payments[0].clone())
        .await
        .expect("embedded");
    let deadline = Instant::now() + Duration::from_secs(60);
    let got = loop {
        match score(url_a.clone(), payments[0].clone()).await {
            Ok(got) => break got,
            Err(status) => assert!(Instant::now() < deadline, "still failing: {status:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(got.score.to_bits(), expected.score.to_bits());

    for child in [&mut survivor, &mut scorer_a, &mut scorer_b] {
        let _ = child.kill();
        let _ = child.wait();
    }
    embedded.stop().await;
}

/// A router's pipeline with no Redis (the router writes Kafka only).
fn router_pipeline(brokers: &str) -> Arc<Pipeline> {
    let settings = Settings {
        kafka: KafkaSettings {
            brokers: brokers.to_string(),
            topics: vec!["events".into()],
            batch_records: 100,
            consumer: fast_group(),
            ..KafkaSettings::default()
        },
        ..Settings::default()
    };
    Arc::new(Pipeline::new(
        &settings,
        Arc::new(Definitions::default_shop()),
    ))
}

/// Runs a router until the checkpoints say input offset `through` is routed, then
/// stops it.
async fn route_through(pipeline: &Arc<Pipeline>, brokers: &str, through: i64) {
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let router = tokio::spawn(route(
        Arc::clone(pipeline),
        "route".into(),
        "route-0".into(),
        shutdown,
    ));
    let checkpoints = pipeline.checkpoint_topic();
    let deadline = Instant::now() + Duration::from_secs(60);
    while routed_through(brokers, &checkpoints) < through {
        assert!(!router.is_finished(), "the router ended early");
        assert!(
            Instant::now() < deadline,
            "offset {through} not routed in a minute"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.send(true).expect("stop");
    router
        .await
        .expect("router task")
        .expect("the router ran without error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_writes_what_it_refuses_to_the_dead_letter_topic_in_its_transaction() {
    let kafka = MockCluster::new(1).expect("mock cluster");
    kafka.create_topic("events", 1, 1).expect("events topic");
    let brokers = kafka.bootstrap_servers();
    let pipeline = router_pipeline(&brokers);
    for topic in pipeline.entity_topics() {
        kafka.create_topic(&topic, 4, 1).expect("entity topic");
    }
    kafka
        .create_topic(&pipeline.checkpoint_topic(), 1, 1)
        .expect("checkpoint topic");
    let dead_topic = pipeline.kafka.dead_letter_topic.clone();
    kafka
        .create_topic(&dead_topic, 1, 1)
        .expect("dead-letter topic");
    let events: Vec<RawEvent> = Simulator::new(SimConfig::default()).take(300).collect();
    common::kafka::produce(&brokers, "events", &events[..200]).await;
    // An invalid event (a type the definitions do not know), one far behind the
    // watermark, and a record that is not JSON at all.
    let invalid = RawEvent {
        event_id: "teleport-1".into(),
        event_type: "teleport".into(),
        ..events[199].clone()
    };
    let late = RawEvent {
        event_id: "straggler".into(),
        event_time_ms: events[199].event_time_ms - pipeline.engine.allowed_lateness_ms - 60_000,
        ..events[199].clone()
    };
    common::kafka::produce(&brokers, "events", &[invalid, late]).await;
    let garbage: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .expect("producer");
    garbage
        .send(
            rdkafka::producer::FutureRecord::<[u8], [u8]>::to("events").payload(b"{not json"),
            Duration::from_secs(5),
        )
        .await
        .expect("stored");
    common::kafka::produce(&brokers, "events", &events[200..]).await;
    route_through(&pipeline, &brokers, 302).await;

    let dead = common::kafka::read_committed(&brokers, &dead_topic, 1);
    let mut payloads: Vec<String> = dead
        .iter()
        .map(|(_, payload)| {
            let text = String::from_utf8_lossy(payload).into_owned();
            serde_json::from_str::<RawEvent>(&text).map_or(text, |event| event.event_id)
        })
        .collect();
    payloads.sort();
    // Before the fix the router logged and skipped them: the topic stayed empty.
    assert_eq!(payloads, ["straggler", "teleport-1", "{not json"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_sent_across_a_router_restart_is_routed_once_and_late_stays_late() {
    let kafka = MockCluster::new(1).expect("mock cluster");
    kafka.create_topic("events", 1, 1).expect("events topic");
    let brokers = kafka.bootstrap_servers();
    let pipeline = router_pipeline(&brokers);
    let user_topic = pipeline.entity_topic("user");
    for topic in pipeline.entity_topics() {
        kafka.create_topic(&topic, 4, 1).expect("entity topic");
    }
    kafka
        .create_topic(&pipeline.checkpoint_topic(), 1, 1)
        .expect("checkpoint topic");
    let events: Vec<RawEvent> = Simulator::new(SimConfig::default()).take(2_000).collect();
    let (first, second) = events.split_at(1_000);
    common::kafka::produce(&brokers, "events", first).await;
    route_through(&pipeline, &brokers, 999).await;

    // While no router runs, the producer re-sends its last 50 events (a retry after a
    // timeout), a straggler arrives far behind the watermark, then new events.
    let watermark = first.iter().map(|e| e.event_time_ms).max().expect("events");
    let late = RawEvent {
        event_id: "straggler".into(),
        event_time_ms: watermark - pipeline.engine.allowed_lateness_ms - 60_000,
        ..first[0].clone()
    };
    common::kafka::produce(&brokers, "events", std::slice::from_ref(&late)).await;
    common::kafka::produce(&brokers, "events", &first[950..]).await;
    common::kafka::produce(&brokers, "events", second).await;
    // A new router (a restart: its dedup set and watermark start empty in memory).
    route_through(&pipeline, &brokers, 1_000 + 1 + 50 + 1_000 - 1).await;

    let mut routed: BTreeMap<String, usize> = BTreeMap::new();
    for (_, payload) in common::kafka::read_committed(&brokers, &user_topic, 4) {
        // The routers' progress markers carry no event.
        if payload.is_empty() {
            continue;
        }
        let event: RawEvent = serde_json::from_slice(&payload).expect("routed event");
        *routed.entry(event.event_id).or_default() += 1;
    }
    let twice: Vec<&String> = routed
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, _)| id)
        .collect();
    // Before the fix the 50 re-sent events were routed twice, and the straggler once.
    assert!(twice.is_empty(), "routed twice: {twice:?}");
    assert!(!routed.contains_key("straggler"), "the straggler is late");
    let with_user = events
        .iter()
        .filter(|e| e.entities.contains_key("user"))
        .count();
    assert_eq!(routed.len(), with_user, "every event with a user routed");
    assert_eq!(pipeline.counters.routed.load(Ordering::Relaxed), 2_000);
}

#[test]
fn aggregators_left_on_the_default_settings_do_not_fence_each_other() {
    let redis = RedisCluster::start();
    let kafka = MockCluster::new(1).expect("mock cluster");
    kafka.create_topic("events", 1, 1).expect("events topic");
    let brokers = kafka.bootstrap_servers();
    let pipeline = pipeline(&brokers, &redis);
    for topic in pipeline.entity_topics() {
        kafka.create_topic(&topic, 4, 1).expect("entity topic");
    }
    kafka
        .create_topic(&pipeline.checkpoint_topic(), 1, 1)
        .expect("checkpoint topic");
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().expect("dir")).collect();
    let config = |dir: &tempfile::TempDir| write_role_config(dir.path(), &brokers, &redis, "");
    let field = |line: &str, name: &str| {
        line.split(&format!("{name}="))
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .map(str::to_string)
            .unwrap_or_else(|| panic!("no {name} in {line}"))
    };
    let mut ids = Vec::new();
    let mut children = Vec::new();
    for dir in &dirs {
        let (child, line) =
            common::spawn_role_line(dir.path(), "aggregator", &config(dir), "router started");
        ids.push(field(&line, "transactional_id"));
        children.push(child);
    }
    // Before the fix both were "route-127.0.0.1:0" (from the listen address, the same
    // on every host left on the default), and each start fenced the other's producer.
    assert_ne!(ids[0], ids[1], "two aggregators, two transactional ids");

    // A second process on the first one's data dir would share its id: it is refused.
    let mut second = std::process::Command::new(env!("CARGO_BIN_EXE_streamscore"))
        .args(["serve", "--role", "aggregator", "--listen", "127.0.0.1:0"])
        .arg("--config")
        .arg(config(&dirs[0]))
        .arg("--data-dir")
        .arg(dirs[0].path())
        .env("STREAMSCORE__METRICS__LISTEN", "127.0.0.1:0")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = second.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            second.kill().ok();
            panic!("a second aggregator on the same data dir was not refused");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    use std::io::Read as _;
    second
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    assert!(!status.success());
    assert!(stderr.contains("in use by another"), "{stderr}");
    for mut child in children {
        child.kill().ok();
        child.wait().ok();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scorer_serves_admin_calls_on_its_admin_listener_only_and_waits_for_a_model() {
    use streamscore::api::pb::{self, models_client::ModelsClient};
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let redis = RedisCluster::start();
    let dir = tempfile::tempdir().expect("dir");
    let models = dir.path().join("models");
    std::fs::create_dir_all(models.join("fraud")).expect("models dir");
    let nodes: Vec<String> = redis.nodes.iter().map(|n| format!("\"{n}\"")).collect();
    let config = dir.path().join("scorer.toml");
    std::fs::write(
        &config,
        format!(
            "[cluster]\nredis = [{}]\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[models]\ndir = \"{}\"\nwatch_interval = \"100ms\"\n",
            nodes.join(", "),
            models.display()
        ),
    )
    .expect("config");
    let (mut scorer, lines) = common::spawn_role_lines(
        dir.path(),
        "scorer",
        &config,
        &["admin calls listening", "streamscore listening"],
    );
    let addr_of = |line: &str| {
        let addr = line
            .split("addr=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no addr in {line}"));
        format!("http://{addr}")
    };
    let (admin_url, url) = (addr_of(&lines[0]), addr_of(&lines[1]));
    let public = streamscore::api::client::connect(&url)
        .await
        .expect("connect");
    let admin = streamscore::api::client::connect(&admin_url)
        .await
        .expect("connect admin");
    let scoring_health = || {
        let mut health = HealthClient::new(public.clone());
        async move {
            health
                .check(HealthCheckRequest {
                    service: "streamscore.v1.Scoring".into(),
                })
                .await
                .expect("health")
                .into_inner()
                .status
        }
    };
    use tonic_health::pb::health_check_response::ServingStatus;
    // Before the fix a scorer with no model said SERVING, and scored nothing.
    assert_eq!(scoring_health().await, ServingStatus::NotServing as i32);
    std::fs::copy(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fraud/fraud-v1.json"),
        models.join("fraud/fraud-v1.json"),
    )
    .expect("model file");
    let deadline = Instant::now() + Duration::from_secs(30);
    while scoring_health().await != ServingStatus::Serving as i32 {
        assert!(Instant::now() < deadline, "SERVING once the model loaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let alias = || pb::SetAliasRequest {
        alias: "checkout".into(),
        target: "fraud@1".into(),
    };
    // Before the fix the scorer ignored [admin] listen: admin calls on the public port.
    let refused = ModelsClient::new(public.clone())
        .set_alias(alias())
        .await
        .expect_err("no admin calls on the public port");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("admin listener"), "{refused:?}");
    let refused = ModelsClient::new(public.clone())
        .load_model(pb::LoadModelRequest {
            path: "fraud/fraud-v1.json".into(),
        })
        .await
        .expect_err("no admin calls on the public port");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    ModelsClient::new(admin)
        .set_alias(alias())
        .await
        .expect("an admin call on the admin listener");
    let listed = ModelsClient::new(public)
        .list_models(pb::ListModelsRequest {})
        .await
        .expect("list")
        .into_inner();
    assert!(
        listed.aliases.iter().any(|a| a.alias == "checkout"),
        "{listed:?}"
    );
    scorer.kill().ok();
    scorer.wait().ok();
}

/// Runs `ACL SETUSER aggregator <rules>` on every master (ACLs are per node).
fn set_aggregator_acl(redis: &RedisCluster, rules: &[&str]) {
    for node in 0..redis.nodes.len() {
        let mut args = vec!["ACL", "SETUSER", "aggregator"];
        args.extend_from_slice(rules);
        let reply = redis.cli(node, &args).expect("redis-cli runs");
        assert!(reply.trim() == "OK", "ACL SETUSER on node {node}: {reply}");
    }
}

/// A scorer's `Score` reads one cut. A payment names a card and its user, two records
/// two writes apart, and a scorer may read between them: here the aggregator writes
/// the card's and cannot write the user's (its Redis login lost write access to user
/// keys, as a write lost to a master down or a batch cut off mid-way leaves it). A
/// Score meanwhile reads both with the payment or neither: its features equal the
/// embedded server's before the payment or after it, whole. Once the user's record is
/// written, both reflect the payment, as on the embedded server.
///
/// Before, the scorer read the card with the payment and the user without it: an
/// answer no history gives.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scorer_reads_a_card_and_its_user_at_one_cut() {
    let redis = RedisCluster::start();
    set_aggregator_acl(&redis, &["on", ">aggregator-secret", "~*", "&*", "+@all"]);
    let (_kafka, brokers) = mock_cluster(&redis);
    let history: Vec<RawEvent> = Simulator::new(SimConfig {
        users: 2_000,
        ..SimConfig::default()
    })
    .take(3_000)
    .collect();
    let login = ("aggregator", "aggregator-secret");
    let mut roles = Roles::start(&redis, &brokers, &history, Some(login)).await;
    let (newest, shopper) = newest_and_last_payment(&history);
    let entities: BTreeMap<String, String> = ["user", "card"]
        .into_iter()
        .map(|kind| (kind.to_string(), shopper.entities[kind].clone()))
        .collect();
    let mut request = common::fraud_payment(80.0);
    request.include_features = true;
    let event = request.event.as_mut().expect("event");
    event.event_id = "scored".into();
    event.event_time_ms = newest + 2_000;
    event.entities = entities.clone().into_iter().collect();
    let (mut on_embedded, mut on_scorer) = roles.clients().await;
    let features = |response: pb::ScoreResponse| format!("{:?}", response.features);
    let before = features(
        on_embedded
            .score(request.clone())
            .await
            .expect("embedded")
            .into_inner(),
    );
    let scored = features(
        on_scorer
            .score(request.clone())
            .await
            .expect("scorer")
            .into_inner(),
    );
    assert_eq!(scored, before, "the scorer reads as the embedded server");

    // The aggregator may read every key, and write all but users'.
    set_aggregator_acl(
        &redis,
        &[
            "resetkeys",
            "%R~*",
            "~ss:*:{meta}*",
            "~ss:*:{card:*}",
            "~ss:*:{device:*}",
            "~ss:*:{ip:*}",
            "~ss:*:{product:*}",
            "~ss:*:{user_product:*}",
        ],
    );
    let online = RedisOnline::connect(&redis.nodes).await.expect("connects");
    let fingerprint = Definitions::default_shop().state_fingerprint;
    let card_key = entity_key(fingerprint, "card", &entities["card"]);
    let card_seq = |online: RedisOnline, key: String| async move {
        online.read(&[key], fingerprint).await.expect("reads")[0]
            .as_ref()
            .map_or(0, |record| record.seq)
    };
    let seq_before = card_seq(online.clone(), card_key.clone()).await;
    let payment = RawEvent {
        event_id: "between-the-writes".into(),
        event_type: "payment".into(),
        event_time_ms: newest + 1_000,
        entities: entities.clone(),
        numbers: [("amount".to_string(), 640.0)].into(),
        strings: BTreeMap::new(),
    };
    common::kafka::produce(&brokers, "events", &[payment]).await;
    roles.fed += 1;
    // The card's record has the payment; the user's cannot.
    let deadline = Instant::now() + Duration::from_secs(120);
    while card_seq(online.clone(), card_key.clone()).await == seq_before
        || roles.progress.total() < roles.fed
    {
        assert!(
            Instant::now() < deadline,
            "the card's record never took the payment"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = features(
        on_embedded
            .score(request.clone())
            .await
            .expect("embedded")
            .into_inner(),
    );
    assert_ne!(after, before, "the payment changes what Score reads");
    let between = features(
        on_scorer
            .score(request.clone())
            .await
            .expect("scorer")
            .into_inner(),
    );
    assert!(
        between == before || between == after,
        "a cut no history gives:\n{between}\nbefore the payment:\n{before}\nafter:\n{after}"
    );
    assert_eq!(
        between, before,
        "the user's record lacks the payment: neither reflects it"
    );

    // The user's record written at last (and the progress published before the
    // offsets were committed): both reflect the payment.
    set_aggregator_acl(&redis, &["allkeys"]);
    roles.wait_taken().await;
    let later = features(
        on_scorer
            .score(request.clone())
            .await
            .expect("scorer")
            .into_inner(),
    );
    assert_eq!(later, after, "both records reflect the payment");

    roles.stop().await;
}
