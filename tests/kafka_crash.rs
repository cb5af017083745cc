//! Crash test of the Kafka parts (cargo feature `kafka`): the real binary, consuming
//! from librdkafka's mock cluster, is SIGKILLed at random points, ten times while it
//! applies events and ten times while it scores payments, and restarted on the same
//! data dir. Every record is applied exactly once (features equal the naive model), and
//! the decisions topic, read with `read_committed`, holds exactly one decision per
//! payment, each equal to what `Score` answers for the same history and moment.
#![cfg(feature = "kafka")]

mod common;

use std::collections::BTreeMap;
use std::process::Child;

use common::kafka::{Committed, DistinctKeys, produce, read_committed, wait_for, write_config};
use common::{assert_matches_naive, read_all_remote, sample_entities, spawn_server_configured};
use rand::{Rng, SeedableRng};
use rdkafka::mocking::MockCluster;
use streamscore::api::pb::scoring_client::ScoringClient;
use streamscore::api::{client, pb};
use streamscore::definitions::Definitions;
use streamscore::events::RawEvent;
use streamscore::simulate::{SimConfig, Simulator};

const EVENTS: &str = "shop-events";
const PAYMENTS: &str = "payments";
const DECISIONS: &str = "decisions";
const PARTITIONS: i32 = 4;
const ROUNDS: usize = 10;
/// Payments per scoring transaction.
const SCORING_BATCH: usize = 10;

/// SIGKILLs the server; returns `progress` right after the kill.
fn kill(mut child: Child, progress: &impl Fn() -> i64) -> i64 {
    child.kill().expect("SIGKILL the server");
    child.wait().expect("reap the server");
    progress()
}

/// Starts the server, lets it get a random share of what is left done, SIGKILLs it;
/// `ROUNDS` times, so each kill lands while it is working.
fn kill_rounds(
    what: &str,
    rng: &mut impl Rng,
    total: i64,
    start: impl Fn() -> Child,
    progress: impl Fn() -> i64,
) {
    for round in 0..ROUNDS {
        let before = progress();
        let share = ((total - before) / (ROUNDS - round) as i64).max(1);
        let target = (before + rng.random_range(1..=share)).min(total);
        let child = start();
        wait_for(what, target, &progress);
        let at_kill = kill(child, &progress);
        eprintln!("{what}: killed at {at_kill} of {total} (from {before}, target {target})");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_apply_once_and_every_payment_is_decided_once_across_sigkills() {
    let seed: u64 = rand::random();
    eprintln!("kill points seed {seed}");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let cluster = MockCluster::new(1).expect("mock cluster");
    for topic in [EVENTS, PAYMENTS, DECISIONS, "refused"] {
        cluster.create_topic(topic, PARTITIONS, 1).expect("topic");
    }
    let brokers = cluster.bootstrap_servers();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let config = write_config(
        dir.path(),
        "",
        &format!(
            r#"brokers = "{brokers}"
topics = ["{EVENTS}"]
dead_letter_topic = "refused"
batch_records = 100
[kafka.scoring]
input_topic = "{PAYMENTS}"
output_topic = "{DECISIONS}"
model = "fraud"
batch_records = {SCORING_BATCH}
"#
        ),
    );

    let stream: Vec<RawEvent> = Simulator::new(SimConfig {
        seed: 21,
        users: 800,
        ..SimConfig::default()
    })
    .take(60_000)
    .collect();
    let (history, later) = stream.split_at(40_000);
    let payments: Vec<RawEvent> = later
        .iter()
        .filter(|e| e.event_type == "payment")
        .cloned()
        .collect();
    assert!(payments.len() > 100, "{} payments", payments.len());

    // Applying: killed at random numbers of committed records.
    produce(&brokers, EVENTS, history).await;
    let committed = Committed::new(&brokers, "streamscore", EVENTS, PARTITIONS);
    let applied = || committed.total();
    let start = || spawn_server_configured(&data, &config).0;
    kill_rounds(
        "records committed",
        &mut rng,
        history.len() as i64,
        start,
        applied,
    );
    let (child, url) = spawn_server_configured(&data, &config);
    wait_for("records committed", history.len() as i64, &applied);

    let definitions = Definitions::default_shop();
    let naive = common::naive::over_default_shop(history);
    let at = naive.watermark_ms();
    let samples = sample_entities(&definitions, history, 15);
    let reads = read_all_remote(&url, &samples, at).await;
    assert_matches_naive(&definitions, &naive, &samples, &reads, at);

    // Scoring: killed at random numbers of committed decisions.
    produce(&brokers, PAYMENTS, &payments).await;
    let counter = DistinctKeys::new(&brokers, DECISIONS, PARTITIONS);
    let decided = || counter.count();
    kill(child, &|| 0);
    kill_rounds(
        "decisions committed",
        &mut rng,
        payments.len() as i64,
        start,
        decided,
    );
    let (mut child, url) = spawn_server_configured(&data, &config);
    wait_for("decisions committed", payments.len() as i64, &decided);

    let decisions = read_committed(&brokers, DECISIONS, PARTITIONS);
    let mut by_id: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    for (key, value) in &decisions {
        let record: serde_json::Value = serde_json::from_slice(value).expect("decision JSON");
        assert_eq!(record["event_id"].as_str(), Some(key.as_str()));
        by_id.entry(key.clone()).or_default().push(record);
    }
    assert_eq!(by_id.len(), payments.len(), "a decision for every payment");
    // librdkafka's mock broker (2.12.1) stores no transactional offsets and hides no
    // aborted transaction, so every restart reads the payments from the start and a
    // decision of a killed transaction stays visible. Exactly one decision each holds
    // because the stream resumes after the newest payment the decisions topic already
    // decided (`kafka::resume`); on a real broker the offsets say the same.
    let twice: Vec<(&String, usize)> = by_id
        .iter()
        .filter(|(_, found)| found.len() > 1)
        .map(|(id, found)| (id, found.len()))
        .collect();
    assert!(
        twice.is_empty(),
        "{} payments decided more than once: {:?}",
        twice.len(),
        &twice[..twice.len().min(5)]
    );
    let channel = client::connect(&url).await.expect("connect");
    for payment in &payments {
        let record = &by_id[&payment.event_id][0];
        let answer = ScoringClient::new(channel.clone())
            .score(pb::ScoreRequest {
                model: "fraud".into(),
                event: Some(pb::Event::from(payment.clone())),
                reasons: Some(3),
                ..Default::default()
            })
            .await
            .expect("score")
            .into_inner();
        let decision = pb::Decision::try_from(answer.decision).expect("decision");
        assert_eq!(
            record["decision"].as_str(),
            Some(
                decision
                    .as_str_name()
                    .trim_start_matches("DECISION_")
                    .to_lowercase()
                    .as_str()
            ),
            "{record}"
        );
        assert_eq!(
            record["score"].as_f64().map(f64::to_bits),
            Some(answer.score.to_bits()),
            "{record}"
        );
        let reasons: Vec<(&str, f64)> = record["reasons"]
            .as_array()
            .expect("reasons")
            .iter()
            .map(|r| {
                (
                    r["feature"].as_str().unwrap_or_default(),
                    r["contribution"].as_f64().unwrap_or(f64::NAN),
                )
            })
            .collect();
        let expected: Vec<(&str, f64)> = answer
            .reasons
            .iter()
            .map(|r| (r.feature.as_str(), r.contribution))
            .collect();
        assert_eq!(reasons, expected, "{record}");
    }
    child.kill().expect("stop the server");
    child.wait().expect("reap");
}
