//! Promotion is a decision: a version dropped into the models directory is loaded as a
//! candidate and serves nothing until promoted; with `models.shadow` candidates are
//! scored beside the serving version on live traffic and counted; with
//! `models.promotion = "if_better"` a candidate is promoted only when its artifact shows
//! it beat the version serving now on the same hold-out.

mod common;

use std::path::Path;

use common::TestServer;
use streamscore::api::client::Connection;
use streamscore::api::pb::{self, models_client::ModelsClient, scoring_client::ScoringClient};
use streamscore::definitions::Definitions;
use streamscore::model::Family;
use streamscore::model::artifact::{self, ArtifactBody, Comparison};
use streamscore::registry::Promotion;
use streamscore::time::Millis;

fn version(v: u32, comparison: Option<Comparison>) -> ArtifactBody {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fraud/fraud-v1.json");
    let mut body = artifact::load(&path, &Definitions::default_shop()).unwrap();
    body.version = v;
    body.comparison = comparison;
    if let Family::LogisticRegression(linear) = &mut body.model.family {
        linear.intercept += f64::from(v) * 0.3;
    }
    body
}

fn drop_in(dir: &Path, body: ArtifactBody) {
    let path = dir.join(format!("fraud/fraud-v{}.json", body.version));
    artifact::save(&path, body).unwrap();
}

fn models_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    drop_in(dir.path(), version(1, None));
    std::fs::write(dir.path().join("aliases.json"), r#"{"fraud": "fraud@1"}"#).unwrap();
    dir
}

fn request() -> pb::ScoreRequest {
    common::fraud_payment(30.0)
}

/// Waits until the watcher has loaded `fraud@version` (polling ListModels).
async fn until_loaded(models: &mut ModelsClient<Connection>, version: u32) -> bool {
    loop {
        let list = models
            .list_models(pb::ListModelsRequest {})
            .await
            .unwrap()
            .into_inner();
        if let Some(model) = list
            .models
            .iter()
            .find(|m| m.name == "fraud" && m.version == version)
        {
            return model.serving;
        }
        tokio::task::yield_now().await;
    }
}

fn comparison(serving: &str, candidate_value: f64, serving_value: f64) -> Option<Comparison> {
    Some(Comparison {
        serving: serving.into(),
        metric: "roc_auc".into(),
        higher_is_better: true,
        candidate_value,
        serving_value,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_version_is_a_candidate_shadowed_until_promoted() {
    let models = models_dir();
    let dir = models.path().to_path_buf();
    let server = TestServer::start(move |settings| {
        settings.models.dir = dir;
        settings.models.watch_interval = Millis(20);
        settings.models.shadow = true;
    })
    .await;
    let mut admin = ModelsClient::new(server.channel().await);
    let mut scoring = ScoringClient::new(server.channel().await);
    drop_in(models.path(), version(2, comparison("fraud@1", 0.99, 0.5)));
    assert!(
        !until_loaded(&mut admin, 2).await,
        "v2 loaded as a candidate"
    );
    for _ in 0..20 {
        let answer = scoring.score(request()).await.unwrap().into_inner();
        assert_eq!(answer.version, 1, "the candidate does not answer");
    }
    // The candidate was scored beside v1 on those calls (in the background).
    let shadowed = "streamscore_shadow_scores_total{model=\"fraud\",candidate=\"2\"}";
    loop {
        let metrics = server.scrape().await;
        if let Some(line) = metrics.lines().find(|l| l.starts_with(shadowed)) {
            let count: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
            if count == 20 {
                assert!(
                    metrics.contains("streamscore_shadow_score_difference_count{model=\"fraud\",candidate=\"2\"} 20"),
                    "{metrics}"
                );
                break;
            }
        }
        tokio::task::yield_now().await;
    }
    admin
        .set_alias(pb::SetAliasRequest {
            alias: "fraud".into(),
            target: "fraud@2".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        scoring.score(request()).await.unwrap().into_inner().version,
        2
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn if_better_promotes_only_a_candidate_that_beat_the_serving_version() {
    let models = models_dir();
    let dir = models.path().to_path_buf();
    // Only a signed artifact's comparison is believed (tests/registry_security.rs
    // shows an unsigned one is not).
    let keys = tempfile::tempdir().unwrap();
    let key_file = keys.path().join("signing.key");
    std::fs::write(&key_file, [5u8; 32]).unwrap();
    let key = artifact::SigningKey::from_file(&key_file).unwrap();
    let drop_in = |dir: &Path, body: ArtifactBody| {
        let path = dir.join(format!("fraud/fraud-v{}.json", body.version));
        artifact::save_signed(&path, body, Some(&key)).unwrap();
    };
    let server = TestServer::start(move |settings| {
        settings.models.dir = dir;
        settings.models.watch_interval = Millis(20);
        settings.models.promotion = Promotion::IfBetter;
        settings.models.signing_key = Some(key_file);
    })
    .await;
    let mut admin = ModelsClient::new(server.channel().await);
    let mut scoring = ScoringClient::new(server.channel().await);

    // Worse than fraud@1 on its hold-out: stays a candidate.
    drop_in(models.path(), version(2, comparison("fraud@1", 0.90, 0.93)));
    assert!(!until_loaded(&mut admin, 2).await);
    // No comparison at all (e.g. trained where nothing served): stays a candidate.
    drop_in(models.path(), version(3, None));
    assert!(!until_loaded(&mut admin, 3).await);
    assert_eq!(
        scoring.score(request()).await.unwrap().into_inner().version,
        1
    );
    // Better than fraud@1: promoted, and the pin is saved.
    drop_in(models.path(), version(4, comparison("fraud@1", 0.95, 0.93)));
    assert!(until_loaded(&mut admin, 4).await, "v4 promoted");
    assert_eq!(
        scoring.score(request()).await.unwrap().into_inner().version,
        4
    );
    let saved = std::fs::read_to_string(models.path().join("aliases.json")).unwrap();
    assert!(saved.contains("fraud@4"), "{saved}");
    // Better than fraud@1, but fraud@4 serves now: not the same comparison.
    drop_in(models.path(), version(5, comparison("fraud@1", 0.99, 0.93)));
    assert!(!until_loaded(&mut admin, 5).await);
    assert_eq!(
        scoring.score(request()).await.unwrap().into_inner().version,
        4
    );
    server.stop().await;
}

/// A metric's value from a Prometheus scrape, 0 when absent.
fn metric(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// A model with versions but none promoted yet is how a new model starts (after `mine
/// segments`, say): logged as news on every start, not as an ERROR.
#[test]
fn a_model_waiting_for_promotion_is_logged_as_news_not_as_an_error() {
    let models = tempfile::tempdir().unwrap();
    drop_in(models.path(), version(1, None));
    let data = tempfile::tempdir().unwrap();
    let dir = models.path().display().to_string();
    let (mut server, lines) = common::spawn_server_lines(
        data.path(),
        &[("STREAMSCORE__MODELS__DIR", &dir)],
        &["model not serving", "streamscore listening"],
    );
    server.kill().ok();
    server.wait().ok();
    let line = &lines[0];
    assert!(line.contains("INFO") && !line.contains("ERROR"), "{line}");
    assert!(
        line.contains("streamscore models promote fraud@N"),
        "{line}"
    );
}

/// The shadow counts of each of `fraud@2..=4` after 5 recorded calls on a server with
/// those three candidates and `models.shadow_candidates = chosen`.
async fn shadow_counts(chosen: &[&str]) -> Vec<f64> {
    let models = models_dir();
    for v in 2..=4 {
        drop_in(models.path(), version(v, None));
    }
    let dir = models.path().to_path_buf();
    let chosen: Vec<String> = chosen.iter().map(|c| c.to_string()).collect();
    let server = TestServer::start(move |settings| {
        settings.models.dir = dir;
        settings.models.shadow = true;
        settings.models.shadow_candidates = chosen;
    })
    .await;
    let mut scoring = ScoringClient::new(server.channel().await);
    for i in 0..5 {
        let mut call = request();
        call.record = true;
        if let Some(event) = call.event.as_mut() {
            event.event_id = format!("p{i}");
        }
        scoring.score(call).await.unwrap();
    }
    let scrape = server.scrape().await;
    server.stop().await;
    (2..=4)
        .map(|v| {
            metric(
                &scrape,
                &format!("streamscore_shadow_scores_total{{model=\"fraud\",candidate=\"{v}\"}}"),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_candidates_shadowed_are_the_newest_two_or_those_chosen() {
    // Before `models.shadow_candidates`, the newest two were the only choice.
    assert_eq!(shadow_counts(&[]).await, [0.0, 5.0, 5.0]);
    assert_eq!(shadow_counts(&["fraud@2"]).await, [5.0, 0.0, 0.0]);
    assert_eq!(
        shadow_counts(&["fraud@2", "fraud@3", "fraud@4"]).await,
        [5.0, 5.0, 5.0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_call_shadows_its_candidates_on_the_features_the_serving_version_read() {
    let models = models_dir();
    // A candidate identical to the serving model: on the same features it must agree
    // exactly, so any difference means it read other features.
    let mut twin = version(1, None);
    twin.version = 2;
    drop_in(models.path(), twin);
    let dir = models.path().to_path_buf();
    let server = TestServer::start(move |settings| {
        settings.models.dir = dir;
        settings.models.shadow = true;
    })
    .await;
    let mut scoring = ScoringClient::new(server.channel().await);
    let mut admin = ModelsClient::new(server.channel().await);
    assert!(!until_loaded(&mut admin, 2).await, "v2 is a candidate");
    // Each recorded payment on one card changes its velocity features for the next.
    for i in 0..15 {
        let mut call = request();
        call.record = true;
        if let Some(event) = call.event.as_mut() {
            event.event_id = format!("p{i}");
            event
                .numbers
                .insert("amount".into(), 400.0 + f64::from(i) * 50.0);
        }
        let answer = scoring.score(call).await.unwrap().into_inner();
        assert_eq!(answer.version, 1);
        assert!(answer.recorded.is_some());
    }
    let scrape = server.scrape().await;
    let labels = "{model=\"fraud\",candidate=\"2\"}";
    assert_eq!(
        metric(&scrape, &format!("streamscore_shadow_scores_total{labels}")),
        15.0,
        "every recorded call was shadowed, in the call itself:\n{scrape}"
    );
    assert_eq!(
        metric(
            &scrape,
            &format!("streamscore_shadow_agreements_total{labels}")
        ),
        15.0
    );
    assert_eq!(
        metric(
            &scrape,
            &format!("streamscore_shadow_score_difference_sum{labels}")
        ),
        0.0,
        "the twin read features that differ from the serving version's"
    );
    server.stop().await;
}

/// `models retire`: a candidate's files move to `fraud/retired/`, it leaves the list
/// (and stays gone after a restart), and the audit log names who did it; the serving
/// version and a version an alias points at are refused. (Before, moving a file away by
/// hand left the version listed until a restart, with no record.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_candidate_is_retired_with_its_files_and_the_serving_version_is_refused() {
    let models = models_dir();
    drop_in(models.path(), version(2, None));
    drop_in(models.path(), version(3, None));
    std::fs::write(models.path().join("fraud/fraud-v2.report.md"), "# fraud v2").unwrap();
    let dir = models.path().to_path_buf();
    let start = move || {
        let dir = dir.clone();
        TestServer::start(move |settings| settings.models.dir = dir)
    };
    let server = start().await;
    let mut admin = ModelsClient::new(server.channel().await);
    let retire = |model: &str| pb::RetireModelRequest {
        model: model.into(),
    };
    let status = admin.retire_model(retire("fraud@1")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert!(
        status
            .message()
            .contains("it serves fraud; promote another version first"),
        "{status:?}"
    );
    admin
        .set_alias(pb::SetAliasRequest {
            alias: "canary".into(),
            target: "fraud@3".into(),
        })
        .await
        .unwrap();
    let status = admin.retire_model(retire("fraud@3")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("alias 'canary'"), "{status:?}");
    let status = admin.retire_model(retire("fraud")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("name@N"), "{status:?}");

    let retired = admin
        .retire_model(retire("fraud@2"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retired.model, "fraud@2");
    let listed = |list: pb::ListModelsResponse| -> Vec<u32> {
        list.models.iter().map(|m| m.version).collect()
    };
    let list = admin.list_models(pb::ListModelsRequest {}).await.unwrap();
    assert_eq!(listed(list.into_inner()), [1, 3]);
    let gone = models.path().join("fraud");
    assert!(!gone.join("fraud-v2.json").exists());
    assert!(gone.join("retired/fraud-v2.json").exists());
    assert!(gone.join("retired/fraud-v2.report.md").exists());
    let status = admin.retire_model(retire("fraud@2")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    let answer = ScoringClient::new(server.channel().await)
        .score(request())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.version, 1);
    let audit = std::fs::read_to_string(models.path().join("audit.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = audit
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{audit}");
    assert_eq!(
        (&lines[0]["action"], &lines[0]["model"], &lines[0]["alias"]),
        (&"alias".into(), &"fraud@3".into(), &"canary".into())
    );
    assert_eq!(
        (&lines[1]["action"], &lines[1]["model"], &lines[1]["by"]),
        (&"retire".into(), &"fraud@2".into(), &"anonymous".into())
    );
    server.stop().await;

    let server = start().await;
    let mut admin = ModelsClient::new(server.channel().await);
    let list = admin.list_models(pb::ListModelsRequest {}).await.unwrap();
    assert_eq!(listed(list.into_inner()), [1, 3], "retired stays retired");
    server.stop().await;
}
