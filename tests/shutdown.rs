//! SIGTERM while producers keep `IngestStream`s open: the server used to keep acking and
//! never exit. Now open streams get the drain deadline, end with UNAVAILABLE, and the
//! process flushes, snapshots and exits 0.

mod common;

use std::process::Command;

use common::spawn_server_with;
use streamscore::api::client;
use streamscore::api::pb::{self, ingest_client::IngestClient};
use streamscore::time::now_ms;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

fn batch(id: u64) -> pb::IngestRequest {
    pb::IngestRequest {
        batch_id: id,
        events: vec![pb::Event {
            event_id: format!("view-{id}"),
            event_type: "page_view".into(),
            event_time_ms: now_ms(),
            entities: [("user".to_string(), "u1".to_string())].into(),
            ..Default::default()
        }],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_open_streams_ends_them_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, url) = spawn_server_with(
        dir.path(),
        &[("STREAMSCORE__SHUTDOWN__DRAIN_TIMEOUT", "1s")],
    );
    let channel = client::connect(&url).await.expect("connect");
    // Two producers whose streams stay open: their request side never ends.
    let mut producers = Vec::new();
    for producer in 0..2u64 {
        let (requests, outbound) = tokio::sync::mpsc::channel(4);
        requests.send(batch(producer * 100)).await.unwrap();
        let mut acks = IngestClient::new(channel.clone())
            .ingest_stream(ReceiverStream::new(outbound))
            .await
            .expect("stream opens")
            .into_inner();
        let first = acks.next().await.expect("an ack").expect("acked");
        assert_eq!(first.accepted, 1);
        producers.push((requests, acks));
    }

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());

    for (requests, mut acks) in producers {
        // The stream ends with a status, not silently and not never.
        let end = loop {
            match acks.next().await {
                Some(Ok(_)) => continue,
                Some(Err(status)) => break Some(status),
                None => break None,
            }
        };
        if let Some(status) = end {
            assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        }
        drop(requests);
    }
    // A hang here is the bug; the test harness's own timeout is the guard.
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "exit status {exit:?}");
    // The final snapshot was written.
    let snapshots = std::fs::read_dir(dir.path().join("snapshots"))
        .unwrap()
        .count();
    assert!(snapshots > 0);
}
