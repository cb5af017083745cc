//! Rebalance test of the Kafka source (cargo feature `kafka`): two servers consume one
//! topic in one consumer group; the second joins while the first is consuming (the
//! first hands partitions over mid-stream), then the first is stopped (SIGTERM) and the
//! second takes the rest. Each user's events are in one partition, so each user's
//! counts on the two servers add up to the naive model's when every record was applied
//! exactly once by one of them, and not when one was lost or applied by both.
#![cfg(feature = "kafka")]

mod common;

use common::kafka::{Committed, produce, wait_for, write_config};
use common::naive::{Naive, Outcome};
use common::spawn_server_configured;
use rdkafka::mocking::MockCluster;
use streamscore::api::client;
use streamscore::definitions::{Aggregation, Definitions};
use streamscore::events::RawEvent;
use streamscore::simulate::{SimConfig, Simulator};

const TOPIC: &str = "shop-events";
const PARTITIONS: i32 = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_member_hands_its_partitions_over_without_loss_or_double_apply() {
    handover(false).await;
}

/// Stopped while the group rebalances, the member's commits are refused (a new
/// generation) until it has joined it: its last commit must still get through, or its
/// partitions' next owner applies again what it applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_stopped_during_a_rebalance_still_commits_what_it_applied() {
    handover(true).await;
}

async fn handover(stop_in_rebalance: bool) {
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic(TOPIC, PARTITIONS, 1).expect("topic");
    cluster.create_topic("refused", 1, 1).expect("topic");
    let brokers = cluster.bootstrap_servers();
    let events: Vec<RawEvent> = Simulator::new(SimConfig {
        seed: 5,
        users: 300,
        ..SimConfig::default()
    })
    .take(60_000)
    .collect();
    let (early, late) = events.split_at(if stop_in_rebalance {
        events.len()
    } else {
        events.len() / 2
    });
    produce(&brokers, TOPIC, early).await;

    let dir = tempfile::tempdir().expect("tempdir");
    // Small batches: the stop lands mid-stream and the handover has work to do. The
    // backlog is read thousands of times faster than it was written, so while the
    // stopped member's partitions wait for the rebalance, the other member's run hours
    // ahead in event time; a month of lateness keeps their records from being refused
    // as late (in a live stream the gap is the few seconds of the rebalance).
    let lateness = "[ingest]\nallowed_lateness = \"30d\"\ndedup_horizon = \"31d\"\n";
    let config = write_config(
        dir.path(),
        lateness,
        &format!(
            "brokers = \"{brokers}\"\ntopics = [\"{TOPIC}\"]\ndead_letter_topic = \"refused\"\nbatch_records = 20\n"
        ),
    );
    let committed = Committed::new(&brokers, "streamscore", TOPIC, PARTITIONS);
    let total = events.len() as i64;
    // The second joins while the first is consuming: the first hands over partitions
    // with batches in flight (the revoke waits until they are applied and committed).
    let (mut first, first_url) = spawn_server_configured(&dir.path().join("a"), &config);
    wait_for("committed before the second joins", total / 8, &|| {
        committed.total()
    });
    let (mut second, second_url) = spawn_server_configured(&dir.path().join("b"), &config);
    if !stop_in_rebalance {
        // The group settles with the first half read (the mock broker takes seconds
        // per rebalance, and the first member reads on meanwhile); the second half
        // comes while both consume, and the first is stopped in the middle of it.
        wait_for("the first half committed", early.len() as i64, &|| {
            committed.total()
        });
        produce(&brokers, TOPIC, late).await;
        wait_for("committed before the stop", total * 5 / 8, &|| {
            committed.total()
        });
    } else {
        // The second's join takes the mock broker two rounds of seconds; meanwhile
        // the first reads on and its commits are refused. Stopped now, it is in the
        // middle of the rebalance.
        wait_for("committed before the stop", total / 4, &|| {
            committed.total()
        });
    }
    // SIGTERM: the first drains, commits what it applied and leaves the group.
    let pid = i32::try_from(first.id()).expect("pid");
    // SAFETY: kill(2) with a pid we spawned and have not reaped, and a valid signal.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = first.wait().expect("the first server exits");
    assert!(status.success(), "first server: {status}");
    let at_stop = committed.total();
    eprintln!("stopped the first server at {at_stop} of {total} committed");
    // Stopped in a rebalance, the first may have read everything meanwhile: what
    // matters there is that its last commit got through.
    assert!(
        stop_in_rebalance || at_stop < total,
        "the stop came after the end: nothing handed over"
    );
    wait_for("committed after the handover", total, &|| committed.total());

    // Restarted read-only on its data dir (no Kafka), the first server shows what it
    // applied; the second is still running.
    let (mut first, first_url) = {
        let empty = write_config(&dir.path().join("a"), lateness, "");
        drop(first_url);
        spawn_server_configured(&dir.path().join("a"), &empty)
    };
    let definitions = Definitions::default_shop();
    let mut naive = Naive::new(
        definitions.clone(),
        30 * streamscore::time::DAY_MS,
        31 * streamscore::time::DAY_MS,
    );
    for event in &events {
        assert_eq!(naive.offer(event), Outcome::Applied);
    }
    let at = naive.watermark_ms();
    let user = definitions
        .entities
        .iter()
        .position(|e| e.name == "user")
        .expect("user entity");
    let counts: Vec<_> = definitions
        .features
        .iter()
        .enumerate()
        .filter(|(_, f)| f.entity == user && matches!(f.aggregation, Aggregation::Count))
        .collect();
    assert!(counts.len() >= 3, "user count features: {}", counts.len());
    let users: std::collections::BTreeSet<&String> = events
        .iter()
        .filter_map(|e| e.entities.get("user"))
        .collect();
    let (a, b) = (
        client::connect(&first_url).await.expect("connect a"),
        client::connect(&second_url).await.expect("connect b"),
    );
    let (mut on_both, mut compared) = (0, 0);
    for id in users {
        let read = |channel: client::Connection| async move {
            client::get_features(channel, "user", id, Some(at))
                .await
                .expect("features")
        };
        let (from_a, from_b) = (read(a.clone()).await, read(b.clone()).await);
        if from_a.known && from_b.known {
            on_both += 1;
        }
        for (_, feature) in &counts {
            let value = |response: &streamscore::api::pb::GetFeaturesResponse| {
                response
                    .values
                    .iter()
                    .find(|v| v.name == feature.name)
                    .and_then(|v| v.value)
                    .unwrap_or(0.0)
            };
            let (_, expected) = naive.read(feature, id, at);
            let sum = value(&from_a) + value(&from_b);
            assert_eq!(
                sum,
                expected.unwrap_or(0.0),
                "user {id} {}: {} on the first + {} on the second",
                feature.name,
                value(&from_a),
                value(&from_b)
            );
            compared += 1;
        }
    }
    eprintln!("{compared} counts compared; {on_both} users have events on both servers");
    assert!(
        stop_in_rebalance || on_both > 0,
        "no partition changed hands mid-stream"
    );
    for child in [&mut first, &mut second] {
        child.kill().expect("stop");
        child.wait().expect("reap");
    }
}
