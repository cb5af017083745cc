//! Crash test: the real binary is SIGKILLed while batches are in flight, restarted on
//! the same data dir, and every acknowledged event is found applied exactly once.

mod common;

use std::sync::{Arc, Mutex};

use common::{sample_entities, spawn_server};
use streamscore::api::client;
use streamscore::definitions::Definitions;
use streamscore::events::RawEvent;
use streamscore::simulate::{SimConfig, Simulator};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_survive_sigkill_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let events: Vec<RawEvent> = Simulator::new(SimConfig {
        seed: 11,
        users: 1_000,
        ..SimConfig::default()
    })
    .take(60_000)
    .collect();
    const BATCH: usize = 250;

    let (child, url) = spawn_server(dir.path());
    let child = Arc::new(Mutex::new(child));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let (killer, record) = (Arc::clone(&child), Arc::clone(&acked));
    let result = client::stream_events(
        client::connect(&url).await.expect("connect"),
        events.clone().into_iter(),
        BATCH,
        32,
        move |ack| {
            record.lock().unwrap().push(ack.batch_id);
            if ack.batch_id == 60 {
                killer.lock().unwrap().kill().expect("SIGKILL the server");
            }
        },
    )
    .await;
    assert!(
        result.is_err(),
        "the stream must break when the server dies"
    );
    child.lock().unwrap().wait().unwrap();
    let acked = acked.lock().unwrap().clone();
    assert_eq!(
        acked,
        (1..=acked.len() as u64).collect::<Vec<_>>(),
        "acks arrive in order"
    );
    let acked_events = acked.len() * BATCH;
    assert!(
        acked_events < events.len(),
        "the kill must come before the end of the stream"
    );

    // Restart on the same data dir; read a sample of entities before anything else.
    let (mut child, url) = spawn_server(dir.path());
    let definitions = Definitions::default_shop();
    let samples = sample_entities(&definitions, &events, 15);
    let at = events.last().unwrap().event_time_ms;
    let recovered = common::read_all_remote(&url, &samples, at).await;

    // Send everything again: what survived is reported as duplicates, the rest applied.
    let summary = client::stream_events(
        client::connect(&url).await.unwrap(),
        events.clone().into_iter(),
        BATCH,
        8,
        |_| {},
    )
    .await
    .expect("second stream");
    assert_eq!(summary.refused.len(), 0, "{:?}", summary.refused.first());
    let survived = summary.duplicates as usize;
    assert_eq!(summary.accepted as usize + survived, events.len());
    assert!(
        survived >= acked_events,
        "{survived} events survived but {acked_events} were acknowledged"
    );

    // The log is applied in order, so what survived is a prefix of the stream: the
    // values right after restart are those of exactly that prefix, and after the resend
    // those of every event once.
    common::assert_matches_naive(
        &definitions,
        &common::naive::over_default_shop(&events[..survived]),
        &samples,
        &recovered,
        at,
    );
    let after = common::read_all_remote(&url, &samples, at).await;
    common::assert_matches_naive(
        &definitions,
        &common::naive::over_default_shop(&events),
        &samples,
        &after,
        at,
    );

    child.kill().unwrap();
    child.wait().unwrap();
}

/// The tour's accident: an operator starts a second server on the data dir a server is
/// already using (other ports), then restarts the first. The second is refused at once,
/// naming the first; after the restart every acknowledged event is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_a_data_dir_in_use_is_refused_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let events: Vec<RawEvent> = Simulator::new(SimConfig {
        seed: 12,
        users: 500,
        ..SimConfig::default()
    })
    .take(20_000)
    .collect();
    let (mut first, url) = spawn_server(dir.path());
    let (head, tail) = (events[..10_000].to_vec(), events[10_000..].to_vec());
    let summary = client::stream_events(
        client::connect(&url).await.unwrap(),
        head.clone().into_iter(),
        250,
        8,
        |_| {},
    )
    .await
    .expect("first half acknowledged");
    assert_eq!(summary.accepted as usize, head.len());

    let second = std::process::Command::new(env!("CARGO_BIN_EXE_streamscore"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("STREAMSCORE__METRICS__LISTEN", "127.0.0.1:0")
        .env("STREAMSCORE__HTTP__LISTEN", "127.0.0.1:0")
        .output()
        .expect("run a second server");
    let said = String::from_utf8_lossy(&second.stderr);
    assert!(
        !second.status.success(),
        "the second server must not start: {said}"
    );
    assert!(
        said.contains("in use") && said.contains(&format!("pid {}", first.id())),
        "{said}"
    );
    // The first never noticed: it goes on acknowledging.
    let summary = client::stream_events(
        client::connect(&url).await.unwrap(),
        tail.clone().into_iter(),
        250,
        8,
        |_| {},
    )
    .await
    .expect("second half acknowledged");
    assert_eq!(summary.accepted as usize, tail.len());
    first.kill().expect("stop the first server");
    first.wait().unwrap();

    let (mut restarted, url) = spawn_server(dir.path());
    let again = client::stream_events(
        client::connect(&url).await.unwrap(),
        events.clone().into_iter(),
        250,
        8,
        |_| {},
    )
    .await
    .expect("everything sent again");
    assert_eq!(
        (again.duplicates as usize, again.accepted),
        (events.len(), 0),
        "every acknowledged event is present once"
    );
    restarted.kill().unwrap();
    restarted.wait().unwrap();
}
