//! Running out of file descriptors: the log writer cannot open its next segment. It used
//! to stay dead until a restart (and the metrics accept loop spun). Now it refuses new
//! events (UNAVAILABLE, Ingest health NOT_SERVING), retries with a pause, and resumes by
//! itself once descriptors are back, with every acknowledged event kept.

mod common;

use std::process::Command;

use common::{IngestHealth, spawn_server_with, view_batch};
use streamscore::api::client;
use streamscore::api::pb::ingest_client::IngestClient;
use tonic::Code;
use tonic_health::ServingStatus;

fn set_open_files(pid: u32, limit: &str) {
    let status = Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &format!("--nofile={limit}")])
        .status()
        .expect("prlimit runs");
    assert!(status.success());
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_the_log_stalls_and_resumes_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, url) =
        spawn_server_with(dir.path(), &[("STREAMSCORE__LOG__SEGMENT_BYTES", "1024")]);
    let pid = child.id();
    let channel = client::connect(&url).await.expect("connect");
    let mut ingest = IngestClient::new(channel.clone());
    let mut health = IngestHealth::watch(channel.clone()).await;
    assert_eq!(health.next().await, ServingStatus::Serving);
    let mut acked = 0;
    // Past the segment size, so the next write must open a new segment.
    let ack = ingest
        .ingest_batch(view_batch(0, 40))
        .await
        .unwrap()
        .into_inner();
    acked += ack.accepted as usize;
    let first_segment = dir.path().join("log/00000000000000000001.log");
    assert!(std::fs::metadata(&first_segment).unwrap().len() > 1024);

    // No descriptor to spare: the next segment cannot be opened.
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let (soft, hard) = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            (words[3].to_string(), words[4].to_string())
        })
        .unwrap();
    // Only the soft limit moves: raising a hard limit back needs a privilege.
    let original = format!("{soft}:{hard}");
    // 0, 1 and 2 are open, so no new descriptor can be had at all.
    set_open_files(pid, &format!("3:{hard}"));

    // This batch's write needs a new segment: its ack waits until the write can be made.
    let mut blocked = IngestClient::new(channel.clone());
    let waiting = tokio::spawn(async move { blocked.ingest_batch(view_batch(40, 20)).await });
    assert_eq!(health.next().await, ServingStatus::NotServing);
    let status = ingest.ingest_batch(view_batch(60, 5)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    // The held batch is applied but not durable: reads must not see it (u45 appears in
    // no other batch).
    let views = |channel| async move {
        let read = client::get_features(channel, "user", "u45", None)
            .await
            .expect("features");
        (
            read.known,
            read.values
                .iter()
                .find(|v| v.name == "user_views_1h")
                .and_then(|v| v.value),
        )
    };
    let (_, unacked) = views(channel.clone()).await;
    assert_eq!(unacked, Some(0.0), "an unacknowledged event is visible");
    // Reported, not asserted: CPU used while out of descriptors (a spinning loop would
    // use a whole core).
    let before = cpu_ticks(pid);
    let started = std::time::Instant::now();
    while started.elapsed() < std::time::Duration::from_secs(2) {
        let status = ingest.ingest_batch(view_batch(60, 5)).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    eprintln!(
        "CPU while out of descriptors: {} ticks (1/100 s) in {:?}",
        cpu_ticks(pid) - before,
        started.elapsed()
    );

    set_open_files(pid, &original);
    assert_eq!(health.next().await, ServingStatus::Serving);
    let ack = waiting.await.unwrap().expect("the held batch is acked");
    let (_, acked_views) = views(channel.clone()).await;
    assert_eq!(acked_views, Some(1.0), "once acknowledged it is visible");
    let ack = ack.into_inner();
    acked += ack.accepted as usize;
    let ack = ingest
        .ingest_batch(view_batch(60, 5))
        .await
        .unwrap()
        .into_inner();
    acked += ack.accepted as usize;
    assert_eq!(acked, 65);

    // Every acknowledged event is there: sent again, each is a duplicate.
    let again = ingest
        .ingest_batch(view_batch(0, 65))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.duplicates as usize, acked, "{again:?}");
    child.kill().ok();
    child.wait().ok();
}
