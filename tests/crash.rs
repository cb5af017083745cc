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
