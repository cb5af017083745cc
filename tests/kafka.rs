//! Kafka as a source (cargo feature `kafka`), against librdkafka's mock cluster (in
//! process, real TCP): 100k simulated events produced to a 4-partition topic are
//! consumed by `serve` and applied exactly like `IngestStream` events (`GetFeatures`
//! equals the naive model), and bad records land on the dead-letter topic with their
//! reasons while the consumer keeps going.
#![cfg(feature = "kafka")]

mod common;

use std::time::Duration;

use common::TestServer;

use common::naive::same_value;
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Headers;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use streamscore::api::client;
use streamscore::api::pb::{self, scoring_client::ScoringClient};
use streamscore::definitions::Definitions;
use streamscore::events::RawEvent;
use streamscore::simulate::{SimConfig, Simulator};

const TOPIC: &str = "shop-events";
const DEAD: &str = "shop-events-refused";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_from_kafka_are_applied_like_ingested_events() {
    let (_cluster, brokers) = source_cluster(4);

    let events: Vec<RawEvent> = Simulator::new(SimConfig {
        users: 2_000,
        ..SimConfig::default()
    })
    .take(100_000)
    .collect();
    // Keyed by user, so each user's events stay in order in one partition.
    common::kafka::produce(&brokers, TOPIC, &events).await;
    let producer = plain_producer(&brokers);
    let mut pending = Vec::new();
    // Bad records among them: not JSON, an unknown event type, a payment without amount.
    let bad: [&[u8]; 3] = [
        b"{not json",
        br#"{"event_id":"x1","event_type":"teleport","event_time_ms":1}"#,
        br#"{"event_id":"x2","event_type":"payment","event_time_ms":1,"entities":{"user":"u","card":"c"}}"#,
    ];
    for payload in bad {
        pending.push(
            producer
                .send_result(FutureRecord::<[u8], [u8]>::to(TOPIC).payload(payload))
                .expect("queue"),
        );
    }
    for delivery in pending.drain(..) {
        delivery.await.expect("delivered").expect("stored");
    }

    // The whole backlog is there before the server starts, so its partitions are read
    // at uneven speeds: without alignment in event time, a fifth of it came late.
    let server = source_server(&brokers).await;
    // The same events through the gRPC path, to compare with.
    let grpc = TestServer::start(|_| {}).await;
    client::stream_events(
        grpc.channel().await,
        events.clone().into_iter(),
        1_000,
        8,
        |_| {},
    )
    .await
    .expect("ingest over gRPC");

    wait_applied(&server, events.len() as u64).await;

    // Every feature of a sample of every entity type: equal to the naive model, and to
    // what the gRPC path gives for the same events.
    let definitions = Definitions::default_shop();
    let naive = common::naive::over_default_shop(&events);
    let at = naive.watermark_ms();
    let samples = common::sample_entities(&definitions, &events, 20);
    let from_kafka = common::read_all_remote(&server.url, &samples, at).await;
    common::assert_matches_naive(&definitions, &naive, &samples, &from_kafka, at);
    let over_grpc = common::read_all_remote(&grpc.url, &samples, at).await;
    for ((sample, kafka), grpc) in samples.iter().zip(&from_kafka).zip(&over_grpc) {
        assert_eq!(kafka.0, grpc.0, "{sample:?} known");
        for (k, g) in kafka.1.iter().zip(&grpc.1) {
            assert!(
                same_value(*k, *g),
                "{sample:?}: from kafka {k:?}, over gRPC {g:?}"
            );
        }
    }
    assert!(samples.len() > 100, "only {} samples", samples.len());

    // The three bad records are on the dead-letter topic, each with its reason.
    let dead: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "dead-letter-reader")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    dead.subscribe(&[DEAD]).expect("subscribe");
    let mut reasons = Vec::new();
    while reasons.len() < 3 {
        let message = tokio::time::timeout(Duration::from_secs(30), dead.recv())
            .await
            .expect("a dead letter within 30 s")
            .expect("receive");
        let headers = message.headers().expect("headers");
        let header = |name: &str| {
            headers
                .iter()
                .find(|h| h.key == name)
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        };
        reasons.push(format!(
            "{} {}: {}",
            header("streamscore.kind"),
            header("streamscore.field"),
            header("streamscore.reason")
        ));
    }
    reasons.sort();
    assert!(
        reasons[0].starts_with("invalid event_type") && reasons[0].contains("teleport"),
        "{reasons:?}"
    );
    assert!(
        reasons[1].starts_with("invalid numbers.amount"),
        "{reasons:?}"
    );
    assert!(reasons[2].starts_with("undecodable payload"), "{reasons:?}");
    // And counted, by why.
    let metrics = server.scrape().await;
    for line in [
        "streamscore_kafka_dead_lettered{kind=\"invalid\"} 2",
        "streamscore_kafka_dead_lettered{kind=\"undecodable\"} 1",
        "streamscore_kafka_dead_lettered{kind=\"late\"} 0",
        "streamscore_kafka_applied 100000",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line:?} in\n{metrics}"
        );
    }
    server.stop().await;
    grpc.stop().await;
}

/// The health answer for `service`.
async fn kafka_health(server: &TestServer, service: &str) -> i32 {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    HealthClient::new(server.channel().await)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .map(|r| r.into_inner().status)
        .unwrap_or(-1)
}

async fn wait_health(server: &TestServer, want: tonic_health::ServingStatus, what: &str) {
    wait_service(server, "streamscore.kafka.Source", want, what).await;
}

async fn wait_service(
    server: &TestServer,
    service: &str,
    want: tonic_health::ServingStatus,
    what: &str,
) {
    let want = tonic_health::pb::health_check_response::ServingStatus::from(want) as i32;
    tokio::time::timeout(Duration::from_secs(60), async {
        while kafka_health(server, service).await != want {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what} within a minute"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_the_brokers_and_the_source_recovers_without_restart() {
    let (cluster, brokers) = source_cluster(1);
    let server_brokers = brokers.clone();
    let server = TestServer::start(move |settings| {
        settings.kafka.brokers = server_brokers;
        settings.kafka.topics = vec![TOPIC.into()];
        settings.kafka.dead_letter_topic = DEAD.into();
        for (key, value) in [
            ("session.timeout.ms", "6000"),
            ("heartbeat.interval.ms", "500"),
            ("max.poll.interval.ms", "7000"),
        ] {
            settings.kafka.consumer.insert(key.into(), value.into());
        }
    })
    .await;
    let events: Vec<RawEvent> = Simulator::new(SimConfig::default()).take(200).collect();
    common::kafka::produce(&brokers, TOPIC, &events[..100]).await;
    wait_health(&server, tonic_health::ServingStatus::Serving, "SERVING").await;
    // The broker goes down while the consumer may still be joining its group: the
    // short group timeouts above let the group settle again in seconds (with the
    // defaults, a member lost mid-join holds the group up to max.poll.interval.ms).

    cluster.broker_down(1).expect("broker down");
    wait_health(
        &server,
        tonic_health::ServingStatus::NotServing,
        "NOT_SERVING with the broker down",
    )
    .await;
    assert!(
        server
            .scrape()
            .await
            .contains("streamscore_kafka_brokers_reachable 0")
    );
    cluster.broker_up(1).expect("broker up");
    wait_health(
        &server,
        tonic_health::ServingStatus::Serving,
        "SERVING again with the broker up",
    )
    .await;

    // And it consumes again, without a restart.
    common::kafka::produce(&brokers, TOPIC, &events[100..]).await;
    wait_applied(&server, events.len() as u64).await;
    server.stop().await;
}

async fn wait_applied(server: &TestServer, count: u64) {
    let applied = tokio::time::timeout(Duration::from_secs(60), async {
        while server.store.counters().applied < count {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        applied.is_ok(),
        "{count} records applied within a minute: {:?}\n{}",
        server.store.counters(),
        server.scrape().await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulate_produces_to_kafka_in_both_formats() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic("sim-json", 2, 1).expect("topic");
    cluster.create_topic("sim-proto", 2, 1).expect("topic");
    let brokers = cluster.bootstrap_servers();
    for (topic, format) in [("sim-json", "json"), ("sim-proto", "protobuf")] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_streamscore"))
            .args(["simulate", "--events", "300", "--kafka-brokers", &brokers])
            // Long past, so no event is held back for being in the future.
            .args(["--start-ms", "1767225600000"])
            .args(["--topic", topic, "--format", format])
            .output()
            .expect("run simulate");
        assert!(output.status.success(), "{output:?}");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(stdout.contains("produced 300 events"), "{stdout}");
        let records = common::kafka::read_committed(&brokers, topic, 2);
        assert_eq!(records.len(), 300);
        let format = if format == "json" {
            streamscore::config::KafkaFormat::Json
        } else {
            streamscore::config::KafkaFormat::Protobuf
        };
        for (key, payload) in &records {
            let event = streamscore::kafka::decode::event(Some(payload), format).expect("an event");
            assert_eq!(event.entities.get("user"), Some(key), "keyed by user");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protobuf_records_are_applied_and_a_nan_amount_is_dead_lettered() {
    use prost::Message as _;
    let (_cluster, brokers) = source_cluster(1);
    let events: Vec<RawEvent> = Simulator::new(SimConfig::default()).take(400).collect();
    let mut nan = events
        .iter()
        .find(|e| e.event_type == "payment")
        .expect("a payment")
        .clone();
    nan.event_id = "nan-amount".into();
    nan.numbers.insert("amount".into(), f64::NAN);
    let sent = streamscore::kafka::produce::produce(
        &brokers,
        TOPIC,
        streamscore::config::KafkaFormat::Protobuf,
        events.iter().cloned().chain([nan.clone()]),
        |_| {},
    )
    .await
    .expect("produce");
    assert_eq!(sent, 401);
    assert!(
        streamscore::api::pb::Event::decode(
            &*streamscore::api::pb::Event::from(nan).encode_to_vec()
        )
        .is_ok_and(|e| e.numbers["amount"].is_nan()),
        "protobuf carries the NaN"
    );
    let server_brokers = brokers.clone();
    let server = TestServer::start(move |settings| {
        settings.kafka.brokers = server_brokers;
        settings.kafka.topics = vec![TOPIC.into()];
        settings.kafka.dead_letter_topic = DEAD.into();
        settings.kafka.format = streamscore::config::KafkaFormat::Protobuf;
    })
    .await;
    wait_applied(&server, 400).await;
    let dead = common::kafka::read_committed(&brokers, DEAD, 1);
    assert_eq!(dead.len(), 1, "one dead letter");
    let metrics = server.scrape().await;
    assert!(
        metrics
            .lines()
            .any(|l| l == "streamscore_kafka_dead_lettered{kind=\"invalid\"} 1"),
        "{metrics}"
    );
    server.stop().await;
}

/// A mock cluster with the source topic (`partitions` of them) and its dead-letter
/// topic, and its bootstrap address.
fn source_cluster(
    partitions: i32,
) -> (
    MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    String,
) {
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic(TOPIC, partitions, 1).expect("topic");
    cluster.create_topic(DEAD, 1, 1).expect("dead-letter topic");
    let brokers = cluster.bootstrap_servers();
    (cluster, brokers)
}

/// A server whose Kafka source reads `TOPIC` and dead-letters to `DEAD`.
async fn source_server(brokers: &str) -> TestServer {
    let brokers = brokers.to_string();
    TestServer::start(move |settings| {
        settings.kafka.brokers = brokers;
        settings.kafka.topics = vec![TOPIC.into()];
        settings.kafka.dead_letter_topic = DEAD.into();
    })
    .await
}

/// A producer with librdkafka's defaults, as a shop's might be.
fn plain_producer(brokers: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("producer")
}

/// Sends `events` as JSON to `TOPIC`'s partition `partition`, in order.
async fn send_json(producer: &FutureProducer, partition: i32, events: &[RawEvent]) {
    for event in events {
        let payload = serde_json::to_vec(event).expect("json");
        let record = FutureRecord::<[u8], [u8]>::to(TOPIC)
            .partition(partition)
            .payload(&payload);
        store(producer, record).await;
    }
}

/// Sends `record` and waits until the broker has it.
async fn store(producer: &FutureProducer, record: FutureRecord<'_, [u8], [u8]>) {
    producer
        .send(record, Duration::from_secs(5))
        .await
        .expect("record stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_partition_headed_by_a_tombstone_and_garbage_does_not_stall_the_others() {
    let (_cluster, brokers) = source_cluster(2);
    let producer = plain_producer(&brokers);
    // Partition 1 holds only a tombstone (no payload) and a record that is not JSON,
    // and then stays quiet; every event goes to partition 0.
    let tombstone = FutureRecord::<[u8], [u8]>::to(TOPIC)
        .partition(1)
        .key(b"gone");
    store(&producer, tombstone).await;
    let garbage = FutureRecord::<[u8], [u8]>::to(TOPIC)
        .partition(1)
        .payload(b"{not json");
    store(&producer, garbage).await;
    let events: Vec<RawEvent> = Simulator::new(SimConfig::default()).take(400).collect();
    send_json(&producer, 0, &events).await;
    let server = source_server(&brokers).await;
    // Before the fix nothing was ever applied: the quiet lane's garbage kept it busy
    // without an event time, which held every lane.
    wait_applied(&server, 400).await;
    let dead = common::kafka::read_committed(&brokers, DEAD, 1);
    assert_eq!(
        dead.len(),
        2,
        "the tombstone and the garbage are dead letters"
    );
    let metrics = server.scrape().await;
    for line in [
        "streamscore_kafka_dead_lettered{kind=\"undecodable\"} 2",
        "streamscore_kafka_dead_lettered{kind=\"late\"} 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line}\n{metrics}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_too_large_for_the_dead_letter_topic_goes_there_as_a_stub_and_ingest_goes_on() {
    use streamscore::kafka::dead_letter::STUB_VALUE_BYTES;
    let (_cluster, brokers) = source_cluster(1);
    // The shop's producer allows larger records than the server's dead-letter producer
    // (librdkafka's default limit, 1,000,000 bytes): a 1.2 MB record that is not JSON.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("message.max.bytes", "5000000")
        .create()
        .expect("producer");
    let big = format!("{{not json {}", "x".repeat(1_200_000)).into_bytes();
    store(&producer, FutureRecord::to(TOPIC).payload(&big)).await;
    let events: Vec<RawEvent> = Simulator::new(SimConfig::default()).take(800).collect();
    send_json(&producer, 0, &events[..400]).await;
    let server = source_server(&brokers).await;
    wait_applied(&server, 400).await;
    // Before the fix the source stopped at the dead letter it could not write, and
    // nothing after it was ever applied.
    send_json(&producer, 0, &events[400..]).await;
    wait_applied(&server, 800).await;
    let dead = common::kafka::read_committed(&brokers, DEAD, 1);
    assert_eq!(dead.len(), 1, "one dead letter");
    let (_, stub) = &dead[0];
    assert!(
        !stub.is_empty() && stub.len() <= STUB_VALUE_BYTES && big.starts_with(stub),
        "the stub keeps the start of the record: {} bytes",
        stub.len()
    );
    let metrics = server.scrape().await;
    let line = "streamscore_kafka_dead_lettered{kind=\"undecodable\"} 1";
    assert!(metrics.lines().any(|l| l == line), "{line}\n{metrics}");
    server.stop().await;
}

/// The Kafka source's applied-records counter, from the metrics.
async fn source_applied(server: &TestServer) -> u64 {
    let metrics = server.scrape().await;
    metrics
        .lines()
        .find_map(|line| line.strip_prefix("streamscore_kafka_applied "))
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no streamscore_kafka_applied in\n{metrics}"))
}

async fn wait_source_applied(server: &TestServer, count: u64) {
    let applied = tokio::time::timeout(Duration::from_secs(60), async {
        while source_applied(server).await < count {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        applied.is_ok(),
        "{count} records applied from kafka within a minute:\n{}",
        server.scrape().await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_ingest_waits_out_a_full_disk_and_resumes_without_a_restart() {
    use common::disk::SmallDisk;
    use streamscore::api::pb::ingest_client::IngestClient;
    let Some(disk) = SmallDisk::mount("kafka", 512 << 10) else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (not root?)");
        return;
    };
    let (_cluster, brokers) = source_cluster(1);
    let (server_brokers, data_dir) = (brokers.clone(), disk.path().to_path_buf());
    let server = TestServer::start(move |settings| {
        settings.data_dir = data_dir;
        settings.kafka.brokers = server_brokers;
        settings.kafka.topics = vec![TOPIC.into()];
        settings.kafka.dead_letter_topic = DEAD.into();
    })
    .await;
    wait_health(&server, tonic_health::ServingStatus::Serving, "SERVING").await;
    // gRPC ingest fills the disk: the log stalls, and its pending batch waits.
    let filler = {
        let mut ingest = IngestClient::new(server.channel().await);
        tokio::spawn(async move {
            for k in 0..40 {
                ingest
                    .ingest_batch(common::view_batch(k * 500, 500))
                    .await
                    .expect("a batch taken is acked in the end");
            }
        })
    };
    tokio::time::timeout(Duration::from_secs(60), async {
        while !server.store.log_stalled() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the log stalls on the full disk");
    // Records arrive while the log cannot write: the source waits, NOT_SERVING. They
    // are recent, as the gRPC events are (or they would be late).
    let events: Vec<RawEvent> = Simulator::new(SimConfig {
        start_ms: streamscore::time::now_ms() - 600_000,
        mean_session_gap_ms: 100.0,
        ..SimConfig::default()
    })
    .take(300)
    .collect();
    common::kafka::produce(&brokers, TOPIC, &events).await;
    wait_health(
        &server,
        tonic_health::ServingStatus::NotServing,
        "the source NOT_SERVING while the log cannot write",
    )
    .await;
    disk.grow(64 << 20);
    // Before the fix the source stopped for good here, and applied nothing more.
    wait_health(
        &server,
        tonic_health::ServingStatus::Serving,
        "the source SERVING again",
    )
    .await;
    wait_source_applied(&server, 300).await;
    filler.await.expect("the gRPC batches are acked");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_topic_that_refuses_writes_pauses_the_source_and_loses_nothing() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let (cluster, brokers) = source_cluster(1);
    let producer = plain_producer(&brokers);
    let events: Vec<RawEvent> = Simulator::new(SimConfig::default()).take(600).collect();
    store(&producer, FutureRecord::to(TOPIC).payload(b"{not json")).await;
    send_json(&producer, 0, &events[..300]).await;
    // From now on the broker refuses every write (the server's dead letters only):
    // the topic's ACL was taken away, say.
    let refusals = [RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 10_000];
    cluster.request_errors(RDKafkaApiKey::Produce, &refusals);
    let server = source_server(&brokers).await;
    wait_health(
        &server,
        tonic_health::ServingStatus::NotServing,
        "the source NOT_SERVING while the dead-letter topic refuses writes",
    )
    .await;
    cluster.clear_request_errors(RDKafkaApiKey::Produce);
    // Before the fix the source stopped for good at the first dead letter it could not
    // write.
    wait_health(
        &server,
        tonic_health::ServingStatus::Serving,
        "the source SERVING again",
    )
    .await;
    send_json(&producer, 0, &events[300..]).await;
    wait_source_applied(&server, 600).await;
    let dead = common::kafka::read_committed(&brokers, DEAD, 1);
    assert!(
        !dead.is_empty() && dead.iter().all(|(_, value)| value == b"{not json"),
        "the garbage record is a dead letter (at least once): {dead:?}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoring_with_a_model_it_cannot_resolve_decides_nothing_and_says_not_serving() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic("payments", 1, 1).expect("topic");
    cluster.create_topic("decisions", 1, 1).expect("topic");
    let brokers = cluster.bootstrap_servers();
    let payments: Vec<RawEvent> = Simulator::new(SimConfig::default())
        .take(2_000)
        .filter(|e| e.event_type == "payment")
        .take(5)
        .collect();
    common::kafka::produce(&brokers, "payments", &payments).await;
    let server_brokers = brokers.clone();
    let server = TestServer::start(move |settings| {
        settings.kafka.brokers = server_brokers;
        settings.kafka.topics = Vec::new();
        settings.kafka.scoring.input_topic = "payments".into();
        settings.kafka.scoring.model = "no-such-model".into();
    })
    .await;
    wait_service(
        &server,
        "streamscore.kafka.Scoring",
        tonic_health::ServingStatus::NotServing,
        "NOT_SERVING while the model cannot be resolved",
    )
    .await;
    assert!(
        common::kafka::read_committed(&brokers, "decisions", 1).is_empty(),
        "no decision without a model"
    );
    server.stop().await;
}

/// `count` simulated payments, all on `card`, a second apart from a minute ago, so each
/// one's velocity features count those before it.
fn payments_on_one_card(card: &str, count: usize) -> Vec<RawEvent> {
    let now = streamscore::time::now_ms() - 60_000;
    let mut payments: Vec<RawEvent> = Simulator::new(SimConfig {
        start_ms: now - 3_600_000,
        ..SimConfig::default()
    })
    .take(5_000)
    .filter(|e| e.event_type == "payment")
    .take(count)
    .collect();
    for (k, payment) in payments.iter_mut().enumerate() {
        payment.entities.insert("card".into(), card.into());
        payment.event_time_ms = now + k as i64 * 1_000;
    }
    payments
}

/// A server whose Kafka scoring stream records what it scores, from topic `payments`.
async fn recorded_scoring(brokers: &str, batch_records: usize) -> TestServer {
    let brokers = brokers.to_string();
    TestServer::start(move |settings| {
        settings.kafka.brokers = brokers;
        settings.kafka.topics = Vec::new();
        settings.kafka.scoring.input_topic = "payments".into();
        settings.kafka.scoring.record = true;
        settings.kafka.scoring.batch_records = batch_records;
    })
    .await
}

/// The committed decisions, once there are at least `count` (a minute at most).
async fn decisions(brokers: &str, count: usize) -> Vec<(String, serde_json::Value)> {
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let decided = common::kafka::read_committed(brokers, "decisions", 1);
            if decided.len() >= count {
                return decided
                    .iter()
                    .map(|(key, value)| {
                        (
                            key.clone(),
                            serde_json::from_slice(value).expect("decision JSON"),
                        )
                    })
                    .collect();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("every delivery decided within a minute")
}

fn card_payments_1h(server: &TestServer, card: &str) -> Option<f64> {
    server
        .store
        .read("card", card, &["card_payments_1h".to_string()], None)
        .expect("read")
        .values[0]
        .1
}

/// A payment delivered twice to the scoring stream with `record = true` (a producer's
/// retry upstream; an aborted transaction's batch is scored again the same way): the
/// second delivery gets the first decision, and the payment counts once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_delivered_twice_to_recorded_scoring_is_decided_alike_and_counted_once() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic("payments", 1, 1).expect("topic");
    cluster.create_topic("decisions", 1, 1).expect("topic");
    let brokers = cluster.bootstrap_servers();
    let payments = payments_on_one_card("twice-card", 20);
    // Each payment, then each again.
    let mut sent = payments.clone();
    sent.extend(payments.iter().cloned());
    common::kafka::produce(&brokers, "payments", &sent).await;
    let server = recorded_scoring(&brokers, 7).await;
    let mut by_id: std::collections::BTreeMap<String, Vec<serde_json::Value>> = Default::default();
    for (key, record) in decisions(&brokers, sent.len()).await {
        by_id.entry(key).or_default().push(record);
    }
    assert_eq!(by_id.len(), payments.len());
    for (id, records) in &by_id {
        assert_eq!(records.len(), 2, "{id}: {records:?}");
        let (first, again) = (&records[0], &records[1]);
        assert_ne!(first["decision"], "error", "{first}");
        for field in ["decision", "score", "reasons", "version"] {
            assert_eq!(first[field], again[field], "{id}: {field}");
        }
    }
    assert_eq!(
        card_payments_1h(&server, "twice-card"),
        Some(20.0),
        "counted once"
    );
    server.stop().await;
}

/// A transaction of the recorded scoring stream that aborts (its decisions could not be
/// written) is scored again, and each payment gets the answer its first attempt got:
/// the same as a server that scored the payments once each, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_scoring_after_an_aborted_transaction_answers_as_the_first_attempt() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic("payments", 1, 1).expect("topic");
    cluster.create_topic("decisions", 1, 1).expect("topic");
    let brokers = cluster.bootstrap_servers();
    let payments = payments_on_one_card("aborted-card", 20);
    // What scoring each once, in order, answers.
    let reference = TestServer::start(|_| {}).await;
    let mut scoring = ScoringClient::new(reference.channel().await);
    let mut expected = std::collections::BTreeMap::new();
    for payment in &payments {
        let answer = scoring
            .score(pb::ScoreRequest {
                model: "fraud".into(),
                event: Some(pb::Event::from(payment.clone())),
                record: true,
                reasons: Some(5),
                ..Default::default()
            })
            .await
            .expect("reference score")
            .into_inner();
        expected.insert(payment.event_id.clone(), answer.score.to_bits());
    }
    reference.stop().await;

    common::kafka::produce(&brokers, "payments", &payments).await;
    // The stream's first decisions cannot be written: that transaction aborts.
    cluster.request_errors(
        rdkafka::types::RDKafkaApiKey::Produce,
        &[rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE],
    );
    let server = recorded_scoring(&brokers, 20).await;
    let decided = decisions(&brokers, payments.len()).await;
    let scrape = server.scrape().await;
    assert!(
        common::metric(&scrape, "streamscore_kafka_scoring_aborts").unwrap_or(0.0) >= 1.0,
        "a transaction aborted:\n{scrape}"
    );
    for (key, record) in &decided {
        assert_eq!(
            record["score"].as_f64().map(f64::to_bits),
            expected.get(key).copied(),
            "{key}: {record}"
        );
    }
    assert_eq!(
        card_payments_1h(&server, "aborted-card"),
        Some(20.0),
        "counted once"
    );
    server.stop().await;
}
