//! The model registry under load: `Score` calls run while the fraud model is swapped
//! twice and rolled back once; none fails, and each answer names a version that was live
//! during the call and carries exactly that version's score. Then files dropped in the
//! models directory: a corrupt one and one with an unknown feature are refused (and
//! counted in the metrics) while the old version keeps serving; a good one is loaded
//! without a restart.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use common::TestServer;
use streamscore::api::pb::{self, models_client::ModelsClient, scoring_client::ScoringClient};
use streamscore::definitions::Definitions;
use streamscore::model::Family;
use streamscore::model::artifact::{self, ArtifactBody};
use streamscore::time::Millis;
use tokio::sync::mpsc;
use tonic::Code;

fn shipped_fraud() -> ArtifactBody {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fraud/fraud-v1.json");
    artifact::load(&path, &Definitions::default_shop()).expect("shipped fraud model")
}

/// The shipped model as `version`, its intercept moved so every version scores apart.
fn version_of(body: &ArtifactBody, version: u32) -> ArtifactBody {
    let mut body = body.clone();
    body.version = version;
    if let Family::LogisticRegression(linear) = &mut body.model.family {
        linear.intercept += f64::from(version) * 0.7;
    }
    body
}

fn write_version(dir: &Path, body: ArtifactBody) -> PathBuf {
    let path = dir.join(format!("fraud/fraud-v{}.json", body.version));
    artifact::save(&path, body).expect("artifact written");
    path
}

/// Serves `fraud@version` under the name (promote, or roll back).
async fn promote(admin: &mut ModelsClient<streamscore::api::client::Connection>, version: u32) {
    admin
        .set_alias(pb::SetAliasRequest {
            alias: "fraud".into(),
            target: format!("fraud@{version}"),
        })
        .await
        .expect("promote");
}

fn request() -> pb::ScoreRequest {
    // Every call reads the same (empty) features: nothing is recorded.
    let mut request = common::fraud_payment(120.0);
    if let Some(event) = request.event.as_mut() {
        event.entities.insert("ip".into(), "ip1".into());
    }
    request.reasons = Some(0);
    request
}

/// One answered call: when it ran (seconds since the test start) and what it said.
struct Observation {
    started: f64,
    ended: f64,
    version: u32,
    score: f64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scores_never_fail_while_models_swap_and_roll_back() {
    let models = tempfile::tempdir().unwrap();
    let base = shipped_fraud();
    write_version(models.path(), version_of(&base, 1));
    let models_dir = models.path().to_path_buf();
    let server = TestServer::start(|settings| {
        settings.models.dir = models_dir;
        settings.models.watch_interval = Millis(20);
    })
    .await;
    let mut admin = ModelsClient::new(server.channel().await);
    promote(&mut admin, 1).await;
    let clock = Instant::now();
    let since = move || clock.elapsed().as_secs_f64();

    // Four callers in a loop; each answer's version goes to `seen` as it arrives.
    let stop = Arc::new(AtomicBool::new(false));
    let (seen_tx, mut seen) = mpsc::unbounded_channel::<u32>();
    let mut callers = Vec::new();
    for _ in 0..4 {
        let channel = server.channel().await;
        let stop = Arc::clone(&stop);
        let seen_tx = seen_tx.clone();
        callers.push(tokio::spawn(async move {
            let mut client = ScoringClient::new(channel);
            let mut observations = Vec::new();
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let started = since();
                match client.score(request()).await {
                    Ok(response) => {
                        let response = response.into_inner();
                        let _ = seen_tx.send(response.version);
                        observations.push(Observation {
                            started,
                            ended: since(),
                            version: response.version,
                            score: response.score,
                        });
                    }
                    Err(status) => failures.push(status),
                }
            }
            (observations, failures)
        }));
    }
    drop(seen_tx);
    // Waits until the callers have been answered by `version` a few times.
    async fn until_served(seen: &mut mpsc::UnboundedReceiver<u32>, version: u32) {
        let mut count = 0;
        while count < 20 {
            if seen.recv().await == Some(version) {
                count += 1;
            }
        }
    }

    until_served(&mut seen, 1).await;
    // Each change: (live from, live until) for the versions it swaps.
    let mut changes = Vec::new();
    for (version, action) in [(2, "promote"), (3, "promote"), (2, "rollback")] {
        let before = since();
        match action {
            "promote" => {
                let path = write_version(models.path(), version_of(&base, version));
                let detail = admin
                    .load_model(pb::LoadModelRequest {
                        path: path.display().to_string(),
                    })
                    .await
                    .expect("load")
                    .into_inner();
                let summary = detail.summary.unwrap();
                assert_eq!(summary.version, version);
                assert!(!summary.serving, "a loaded version is a candidate");
                promote(&mut admin, version).await;
            }
            _ => promote(&mut admin, version).await,
        }
        changes.push((before, since(), version));
        until_served(&mut seen, version).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut observations = Vec::new();
    for caller in callers {
        let (mine, failures) = caller.await.unwrap();
        assert!(failures.is_empty(), "failed calls: {failures:?}");
        observations.extend(mine);
    }

    // A version is live from the start of the change that made it serve until the end
    // of the change that replaced it.
    let mut intervals = vec![(1, 0.0, changes[0].1)];
    for (index, (begin, _, version)) in changes.iter().enumerate() {
        let until = changes.get(index + 1).map_or(f64::INFINITY, |next| next.1);
        intervals.push((*version, *begin, until));
    }
    let live = |version: u32, from: f64, to: f64| {
        intervals
            .iter()
            .any(|(v, begin, until)| *v == version && *begin <= to && *until >= from)
    };
    let mut score_of_version: HashMap<u32, f64> = HashMap::new();
    for observation in &observations {
        assert!(
            live(observation.version, observation.started, observation.ended),
            "v{} answered a call at {:.4}-{:.4} s, when it was not live (changes: {changes:?})",
            observation.version,
            observation.started,
            observation.ended
        );
        // A call is answered wholly by one version: its score is that version's.
        let first = *score_of_version
            .entry(observation.version)
            .or_insert(observation.score);
        assert_eq!(observation.score, first, "v{}", observation.version);
    }
    assert_eq!(score_of_version.len(), 3, "all three versions answered");
    assert!(score_of_version[&1] < score_of_version[&2]);
    assert!(score_of_version[&2] < score_of_version[&3]);

    // The rollback pinned `fraud` to v2; v3 stays loaded and addressable.
    let list = admin
        .list_models(pb::ListModelsRequest {})
        .await
        .unwrap()
        .into_inner();
    let serving: Vec<u32> = list
        .models
        .iter()
        .filter(|m| m.serving)
        .map(|m| m.version)
        .collect();
    assert_eq!(serving, [2]);
    assert_eq!(list.aliases[0].target, "fraud@2");

    // Files dropped in the directory: a corrupt one and one needing an unknown feature
    // are refused and counted; v2 keeps serving.
    std::fs::write(models.path().join("fraud/fraud-v4.json"), b"{ not json").unwrap();
    let mut unknown_feature = version_of(&base, 5);
    unknown_feature.model.columns[0] = "card_payments_99m".into();
    let unknown_path = write_version(models.path(), unknown_feature);
    loop {
        let metrics = server.scrape().await;
        if metrics.contains("streamscore_model_files_refused 2") {
            break;
        }
        tokio::task::yield_now().await;
    }
    let mut scoring = ScoringClient::new(server.channel().await);
    let answer = scoring.score(request()).await.unwrap().into_inner();
    assert_eq!(answer.version, 2);
    let status = admin
        .load_model(pb::LoadModelRequest {
            path: unknown_path.display().to_string(),
        })
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("card_payments_99m"), "{status:?}");

    // A good file dropped in is loaded without a restart; the pinned alias holds.
    write_version(models.path(), version_of(&base, 6));
    let mut scoring_v6 = ScoringClient::new(server.channel().await);
    let six = loop {
        let mut by_version = request();
        by_version.model = "fraud@6".into();
        match scoring_v6.score(by_version).await {
            Ok(answer) => break answer.into_inner(),
            Err(status) => assert_eq!(status.code(), Code::NotFound),
        }
        tokio::task::yield_now().await;
    };
    assert_eq!(six.version, 6);
    assert_eq!(
        scoring.score(request()).await.unwrap().into_inner().version,
        2
    );

    let metrics = server.scrape().await;
    assert!(
        metrics.contains("streamscore_model_swaps 3"),
        "two promotions and a rollback: {metrics}"
    );
    assert!(metrics.contains(
        "streamscore_grpc_requests_total{method=\"Score\",status=\"OK\",caller=\"anonymous\"}"
    ));
    assert!(
        metrics.contains("streamscore_decisions_total{model=\"fraud\",decision="),
        "{metrics}"
    );
    assert!(metrics.contains(
        "streamscore_score_seconds_bucket{method=\"Score\",model=\"fraud\",le=\"+Inf\"}"
    ));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_says_not_serving_until_a_model_is_loaded() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

    let models = tempfile::tempdir().unwrap();
    let models_dir = models.path().to_path_buf();
    let server = TestServer::start(|settings| {
        settings.models.dir = models_dir;
        settings.models.watch_interval = Millis(20);
    })
    .await;
    let mut health = HealthClient::new(server.channel().await);
    let status = |service: &str| HealthCheckRequest {
        service: service.into(),
    };
    let scoring = health
        .check(status("streamscore.v1.Scoring"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(scoring.status(), ServingStatus::NotServing);
    let ingest = health
        .check(status("streamscore.v1.Ingest"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ingest.status(), ServingStatus::Serving);

    // A model dropped in the directory is loaded, and scoring is then served.
    write_version(models.path(), version_of(&shipped_fraud(), 1));
    loop {
        let scoring = health
            .check(status("streamscore.v1.Scoring"))
            .await
            .unwrap()
            .into_inner();
        if scoring.status() == ServingStatus::Serving {
            break;
        }
        tokio::task::yield_now().await;
    }
    let mut client = ScoringClient::new(server.channel().await);
    let status = client.score(request()).await.unwrap_err();
    assert_eq!(
        status.code(),
        Code::FailedPrecondition,
        "a candidate: {status:?}"
    );
    assert!(
        status.message().contains("no promoted version"),
        "{status:?}"
    );
    promote(&mut ModelsClient::new(server.channel().await), 1).await;
    assert_eq!(
        client.score(request()).await.unwrap().into_inner().version,
        1
    );
    server.stop().await;
}
