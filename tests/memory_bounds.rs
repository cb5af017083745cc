//! One request cannot take the server's memory: a ScoreCandidates call of nearly 4 MB
//! (a huge context and 1,000 candidates) raises the real server's peak RSS by less than
//! 64 MB. Before, the context was copied once per candidate (a 3.9 MB request peaked
//! at 3.7 GB).

mod common;

use common::spawn_server;
use streamscore::api::client;
use streamscore::api::pb::{self, scoring_client::ScoringClient};

/// Peak resident memory of a process so far (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmHWM")
        * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_four_megabyte_candidates_request_stays_within_64_mb() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, url) = spawn_server(dir.path());
    let channel = client::connect(&url).await.expect("connect");
    let mut scoring = ScoringClient::new(channel);
    let request = |session: String| pb::ScoreCandidatesRequest {
        model: "purchase".into(),
        context: Some(pb::Event {
            entities: [("user".to_string(), "u1".to_string())].into(),
            strings: [("session_id".to_string(), session)].into(),
            ..Default::default()
        }),
        candidates: (0..1_000)
            .map(|i| pb::Candidate {
                product: format!("p{i}"),
                numbers: Default::default(),
            })
            .collect(),
        top_n: 10,
    };
    // Warm up with a small request, so what is measured is the large one.
    let _ = scoring.score_candidates(request("s".into())).await;
    let before = peak_rss(child.id());
    let large = request("x".repeat(3_900_000));
    let answer = scoring.score_candidates(large).await;
    let after = peak_rss(child.id());
    child.kill().ok();
    child.wait().ok();
    eprintln!(
        "4 MB ScoreCandidates: {answer:?}; peak RSS {} MB -> {} MB",
        before >> 20,
        after >> 20
    );
    let answer = answer.map(|r| r.into_inner().candidates.len());
    assert!(
        matches!(answer, Ok(10)) || answer.is_err(),
        "answered or refused, never a crash"
    );
    assert!(
        after - before < 64 << 20,
        "peak RSS rose by {} MB",
        (after - before) >> 20
    );
}
