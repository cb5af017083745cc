//! The disk fills up under the log: writes fail with ENOSPC. The writer refuses new
//! events (Ingest NOT_SERVING), retries, and resumes by itself once there is room again,
//! with every acknowledged event kept. The data dir is a small tmpfs mounted for the
//! test (root only; the test says so and passes over it where mounting is not allowed).

mod common;

use common::disk::SmallDisk;
use common::{IngestHealth, spawn_server_with, view_batch};
use streamscore::api::client;
use streamscore::api::pb::ingest_client::IngestClient;
use tonic_health::ServingStatus;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stalls_the_log_and_it_resumes_when_there_is_room() {
    let Some(disk) = SmallDisk::mount("grpc", 512 << 10) else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (not root?)");
        return;
    };
    let (mut child, url) = spawn_server_with(disk.path(), &[]);
    let channel = client::connect(&url).await.expect("connect");
    let mut health = IngestHealth::watch(channel.clone()).await;
    assert_eq!(health.next().await, ServingStatus::Serving);

    // About 1.5 MB of events into a 512 KiB disk: a write fails part way.
    let producer = {
        let mut ingest = IngestClient::new(channel.clone());
        tokio::spawn(async move {
            let mut acked = 0;
            for k in 0..30 {
                let ack = ingest.ingest_batch(view_batch(k * 500, 500)).await;
                acked += ack
                    .expect("a batch taken is acked in the end")
                    .into_inner()
                    .accepted;
            }
            acked
        })
    };
    assert_eq!(health.next().await, ServingStatus::NotServing);
    disk.grow(64 << 20);
    assert_eq!(health.next().await, ServingStatus::Serving);
    let acked = producer.await.unwrap();
    assert_eq!(acked, 15_000);

    let mut ingest = IngestClient::new(channel);
    let mut duplicates = 0;
    for k in 0..30 {
        duplicates += ingest
            .ingest_batch(view_batch(k * 500, 500))
            .await
            .unwrap()
            .into_inner()
            .duplicates;
    }
    assert_eq!(duplicates, acked, "every acknowledged event is kept");
    child.kill().ok();
    child.wait().ok();
}
