//! The registry as an attacker meets it: crafted artifacts (a cycle, an out-of-range
//! child, short preprocessing, a non-finite weight, an empty tree, a version that
//! disagrees with its file name, an unsigned impostor when signatures are required)
//! are refused at load with a named reason while the serving version keeps answering;
//! `LoadModel` never opens files outside the models directory (not `/etc/passwd`,
//! `/dev/zero`, a FIFO, or a symlink pointing out); an alias of one model cannot point
//! at another; and a lost `aliases.json` makes a pinned model NOT_SERVING instead of
//! silently serving its newest version.

mod common;

use std::path::{Path, PathBuf};

use common::TestServer;
use streamscore::api::pb::{self, models_client::ModelsClient, scoring_client::ScoringClient};
use streamscore::definitions::Definitions;
use streamscore::model::Family;
use streamscore::model::artifact::{self, ArtifactBody, SigningKey};
use streamscore::model::tree::{Node, Tree};
use streamscore::time::Millis;
use tonic::Code;

fn shipped(name: &str) -> ArtifactBody {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("models/{name}/{name}-v1.json"));
    artifact::load(&path, &Definitions::default_shop()).expect("shipped model")
}

fn artifact_path(dir: &Path, name: &str, version: u32) -> PathBuf {
    dir.join(format!("{name}/{name}-v{version}.json"))
}

/// A models dir holding the shipped fraud and order_value models, version 1, promoted.
fn models_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for name in ["fraud", "order_value"] {
        artifact::save(&artifact_path(dir.path(), name, 1), shipped(name)).unwrap();
    }
    std::fs::write(
        dir.path().join("aliases.json"),
        r#"{"fraud": "fraud@1", "order_value": "order_value@1"}"#,
    )
    .unwrap();
    dir
}

/// The version that answers `request`.
async fn served_version(
    scoring: &mut ScoringClient<streamscore::api::client::Connection>,
    request: pb::ScoreRequest,
) -> u32 {
    scoring.score(request).await.unwrap().into_inner().version
}

fn score_request() -> pb::ScoreRequest {
    common::fraud_payment(42.0)
}

/// Makes one bad artifact out of a good one.
type Craft = Box<dyn Fn(&mut ArtifactBody)>;

fn tree(nodes: Vec<Node>) -> Family {
    Family::DecisionTree(Tree { nodes })
}

fn split(left: usize, right: usize) -> Node {
    Node::Split {
        feature: 0,
        threshold: 0.0,
        left,
        right,
        positive_rate: 0.5,
    }
}

fn leaf() -> Node {
    Node::Leaf {
        positive_rate: 0.5,
        rows: 1,
    }
}

async fn start(
    models: &Path,
    adjust: impl FnOnce(&mut streamscore::config::Settings),
) -> TestServer {
    let dir = models.to_path_buf();
    TestServer::start(move |settings| {
        settings.models.dir = dir;
        settings.models.watch_interval = Millis(3_600_000);
        adjust(settings);
    })
    .await
}

/// Loads `path` through `LoadModel`; returns the refusal (the test fails on success).
async fn refused(
    models: &mut ModelsClient<streamscore::api::client::Connection>,
    path: &Path,
) -> tonic::Status {
    match models
        .load_model(pb::LoadModelRequest {
            path: path.display().to_string(),
        })
        .await
    {
        Ok(loaded) => panic!(
            "{} loaded: {:?}",
            path.display(),
            loaded.into_inner().summary
        ),
        Err(status) => status,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crafted_artifacts_are_refused_and_the_serving_version_keeps_answering() {
    let models = models_dir();
    let server = start(models.path(), |_| {}).await;
    let mut client = ModelsClient::new(server.channel().await);
    let mut scoring = ScoringClient::new(server.channel().await);
    let before = scoring.score(score_request()).await.unwrap().into_inner();
    assert_eq!(before.version, 1);

    let fraud = shipped("fraud");
    let crafted: Vec<(&str, Craft)> = vec![
        (
            "reached twice",
            Box::new(|b| b.model.family = tree(vec![split(1, 2), split(0, 2), leaf()])),
        ),
        (
            "points at node 9",
            Box::new(|b| b.model.family = tree(vec![split(1, 9), leaf()])),
        ),
        ("no nodes", Box::new(|b| b.model.family = tree(vec![]))),
        (
            "preprocessing.means has",
            Box::new(|b| {
                b.model.preprocessing.means.pop();
            }),
        ),
        (
            "weights[0] is not a finite number",
            Box::new(|b| {
                if let Family::LogisticRegression(linear) = &mut b.model.family {
                    linear.weights[0] = f64::INFINITY;
                }
            }),
        ),
        (
            "weights[1] is not a finite number",
            Box::new(|b| {
                if let Family::LogisticRegression(linear) = &mut b.model.family {
                    linear.weights[1] = f64::NAN;
                }
            }),
        ),
    ];
    for (version, (reason, craft)) in (2u32..).zip(&crafted) {
        let mut body = fraud.clone();
        body.version = version;
        craft(&mut body);
        let path = artifact_path(models.path(), "fraud", version);
        // Written as an attacker would: a valid (unkeyed) checksum over the bad body.
        // serde_json writes a non-finite number as null; the infinity is then spelled
        // 1e999 by hand, the NaN stays null (JSON has no NaN).
        artifact::save(&path, body).unwrap();
        if reason.starts_with("weights[") {
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(
                text.contains("null"),
                "the non-finite weight is written as null"
            );
            if reason.starts_with("weights[0]") {
                std::fs::write(&path, text.replacen("null", "1e999", 1)).unwrap();
            }
        }
        let status = refused(&mut client, &path).await;
        assert_eq!(
            status.code(),
            Code::FailedPrecondition,
            "{reason}: {status:?}"
        );
        let named = status.message().contains(reason)
            || (reason.starts_with("weights[")
                && (status.message().contains("not a model artifact")
                    || status.message().contains("not JSON")));
        assert!(named, "{reason}: {}", status.message());
    }

    // A file whose body says version 1 may not replace fraud@1.
    let mut impostor = fraud.clone();
    impostor.version = 1;
    if let Family::LogisticRegression(linear) = &mut impostor.model.family {
        linear.intercept = -50.0;
    }
    let path = artifact_path(models.path(), "fraud", 7);
    artifact::save(&path, impostor).unwrap();
    let status = refused(&mut client, &path).await;
    assert!(
        status
            .message()
            .contains("holds fraud@1, but its file name says"),
        "{status:?}"
    );

    let after = scoring.score(score_request()).await.unwrap().into_inner();
    assert_eq!(after.version, 1);
    assert_eq!(after.score, before.score, "fraud@1 still serves unchanged");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_model_opens_nothing_outside_the_models_dir() {
    let models = models_dir();
    let server = start(models.path(), |_| {}).await;
    let mut client = ModelsClient::new(server.channel().await);

    // A secret outside: its content must never come back in an error.
    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("secret.json");
    std::fs::write(&secret, "\"sk_live_do_not_echo\"").unwrap();
    // A FIFO inside the directory, named like an artifact: opening it for reading
    // would block forever.
    let fifo = artifact_path(models.path(), "fraud", 5);
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(status.success());
    let link = artifact_path(models.path(), "fraud", 6);
    std::os::unix::fs::symlink(&secret, &link).unwrap();

    for path in [
        PathBuf::from("/etc/passwd"),
        PathBuf::from("/dev/zero"),
        secret.clone(),
        models.path().join("../secret.json"),
        link.clone(),
        PathBuf::from("fraud/fraud-v6.json"),
    ] {
        let status = refused(&mut client, &path).await;
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{}: {status:?}",
            path.display()
        );
        assert!(
            status.message().contains("inside the models directory"),
            "{status:?}"
        );
        assert!(!status.message().contains("sk_live"), "{status:?}");
    }
    let status = refused(&mut client, &fifo).await;
    assert!(
        status.message().contains("not a regular file"),
        "{status:?}"
    );

    // Content is never quoted, even of an artifact-named file inside.
    let inside = artifact_path(models.path(), "fraud", 8);
    std::fs::write(&inside, "{\"checksum\": \"sk_live_do_not_echo\"}").unwrap();
    let status = refused(&mut client, &inside).await;
    assert!(!status.message().contains("sk_live"), "{status:?}");
    assert!(status.message().contains("line 1"), "{status:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aliases_stay_within_their_model_and_a_lost_pin_fails_closed() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

    let models = models_dir();
    let mut v2 = shipped("fraud");
    v2.version = 2;
    artifact::save(&artifact_path(models.path(), "fraud", 2), v2).unwrap();
    let server = start(models.path(), |_| {}).await;
    let mut client = ModelsClient::new(server.channel().await);
    let alias = |alias: &str, target: &str| pb::SetAliasRequest {
        alias: alias.into(),
        target: target.into(),
    };
    let status = client
        .set_alias(alias("fraud", "order_value@1"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("only point at its versions"),
        "{status:?}"
    );
    for bad in [
        "a\0b",
        "new\nline",
        "rtl\u{202e}",
        "UPPER",
        "",
        &"x".repeat(65),
    ] {
        let status = client.set_alias(alias(bad, "fraud@1")).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{bad:?}: {status:?}");
    }
    let mut scoring = ScoringClient::new(server.channel().await);
    assert_eq!(
        served_version(&mut scoring, score_request()).await,
        1,
        "v2 is a candidate until promoted"
    );
    client.set_alias(alias("fraud", "fraud@2")).await.unwrap();
    assert_eq!(served_version(&mut scoring, score_request()).await, 2);
    client.set_alias(alias("fraud", "fraud@1")).await.unwrap();
    assert_eq!(served_version(&mut scoring, score_request()).await, 1);
    server.stop().await;

    // The pin's file is lost: fraud must not come back as its newest version.
    std::fs::remove_file(models.path().join("aliases.json")).unwrap();
    let server = start(models.path(), |_| {}).await;
    let mut scoring = ScoringClient::new(server.channel().await);
    let status = scoring.score(score_request()).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("not serving"), "{status:?}");
    let mut health = HealthClient::new(server.channel().await);
    let check = |service: &str| HealthCheckRequest {
        service: service.into(),
    };
    let fraud = loop {
        // Health per name is published by a task that starts with the server.
        if let Ok(answer) = health.check(check("fraud")).await {
            break answer.into_inner();
        }
        tokio::task::yield_now().await;
    };
    assert_eq!(fraud.status(), ServingStatus::NotServing);
    // An explicit version still answers, and SetAlias restores the name.
    let mut request = score_request();
    request.model = "fraud@1".into();
    assert_eq!(
        scoring.score(request).await.unwrap().into_inner().version,
        1
    );
    let mut client = ModelsClient::new(server.channel().await);
    client.set_alias(alias("fraud", "fraud@1")).await.unwrap();
    assert_eq!(served_version(&mut scoring, score_request()).await, 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_signatures_required_only_signed_artifacts_load() {
    let keys = tempfile::tempdir().unwrap();
    let key_file = keys.path().join("signing.key");
    std::fs::write(&key_file, [7u8; 32]).unwrap();
    let key = SigningKey::from_file(&key_file).unwrap();
    let models = tempfile::tempdir().unwrap();
    artifact::save_signed(
        &artifact_path(models.path(), "fraud", 1),
        shipped("fraud"),
        Some(&key),
    )
    .unwrap();
    std::fs::write(
        models.path().join("aliases.json"),
        r#"{"fraud": "fraud@1"}"#,
    )
    .unwrap();
    let server = start(models.path(), |settings| {
        settings.models.signing_key = Some(key_file.clone());
        settings.models.require_signature = true;
    })
    .await;
    let mut client = ModelsClient::new(server.channel().await);
    let mut scoring = ScoringClient::new(server.channel().await);
    assert_eq!(served_version(&mut scoring, score_request()).await, 1);

    // v999 that never blocks: unsigned, then signed with another key.
    let mut impostor = shipped("fraud");
    impostor.version = 999;
    if let Family::LogisticRegression(linear) = &mut impostor.model.family {
        linear.intercept = -50.0;
    }
    let path = artifact_path(models.path(), "fraud", 999);
    artifact::save(&path, impostor.clone()).unwrap();
    let status = refused(&mut client, &path).await;
    assert!(status.message().contains("not signed"), "{status:?}");
    let other = SigningKey::from_bytes(&[9u8; 32]).unwrap();
    artifact::save_signed(&path, impostor, Some(&other)).unwrap();
    let status = refused(&mut client, &path).await;
    assert!(status.message().contains("does not verify"), "{status:?}");
    assert_eq!(served_version(&mut scoring, score_request()).await, 1);
    server.stop().await;
}

/// Polls the metrics until `streamscore_model_files_refused` reaches `count`.
async fn until_refused(server: &TestServer, count: f64) {
    loop {
        let scrape = server.scrape().await;
        if common::metric(&scrape, "streamscore_model_files_refused").unwrap_or(0.0) >= count {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewriting_the_serving_file_in_place_changes_no_answer() {
    let models = models_dir();
    let dir = models.path().to_path_buf();
    let server = TestServer::start(move |settings| {
        settings.models.dir = dir;
        settings.models.watch_interval = Millis(20);
    })
    .await;
    let mut client = ModelsClient::new(server.channel().await);
    let mut scoring = ScoringClient::new(server.channel().await);
    let before = scoring.score(score_request()).await.unwrap().into_inner();

    // The same name and version, other content: a model that never blocks, written
    // over the serving file (checksum and all, as anyone who can write the folder can).
    let mut swapped = shipped("fraud");
    if let Family::LogisticRegression(linear) = &mut swapped.model.family {
        linear.intercept = -50.0;
    }
    let path = artifact_path(models.path(), "fraud", 1);
    artifact::save(&path, swapped).unwrap();
    // The watcher sees the change and refuses it; so does an explicit load.
    until_refused(&server, 1.0).await;
    let status = refused(&mut client, &path).await;
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("in place"), "{status:?}");
    let after = scoring.score(score_request()).await.unwrap().into_inner();
    assert_eq!(
        (after.version, after.score.to_bits(), after.decision),
        (before.version, before.score.to_bits(), before.decision)
    );
    // Loading the file again as it was loaded is no change at all.
    artifact::save(&path, shipped("fraud")).unwrap();
    client
        .load_model(pb::LoadModelRequest {
            path: path.display().to_string(),
        })
        .await
        .expect("the original content loads as it is");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn if_better_trusts_no_comparison_an_unsigned_file_makes_of_itself() {
    let keys = tempfile::tempdir().unwrap();
    let key_file = keys.path().join("signing.key");
    std::fs::write(&key_file, [7u8; 32]).unwrap();
    let key = SigningKey::from_file(&key_file).unwrap();
    let models = models_dir();
    let server = start(models.path(), |settings| {
        settings.models.promotion = streamscore::registry::Promotion::IfBetter;
        settings.models.signing_key = Some(key_file.clone());
    })
    .await;
    let mut client = ModelsClient::new(server.channel().await);
    let mut scoring = ScoringClient::new(server.channel().await);
    let forged = |version: u32| {
        let mut body = shipped("fraud");
        body.version = version;
        if let Family::LogisticRegression(linear) = &mut body.model.family {
            linear.intercept = -50.0;
        }
        body.comparison = Some(streamscore::model::artifact::Comparison {
            serving: "fraud@1".into(),
            metric: "roc_auc".into(),
            higher_is_better: true,
            candidate_value: 0.999,
            serving_value: 0.5,
        });
        body
    };
    // Unsigned, claiming to beat fraud@1 by far: loaded as a candidate, not promoted.
    let path = artifact_path(models.path(), "fraud", 2);
    artifact::save(&path, forged(2)).unwrap();
    let loaded = client
        .load_model(pb::LoadModelRequest {
            path: path.display().to_string(),
        })
        .await
        .expect("a candidate")
        .into_inner();
    assert!(!loaded.summary.map(|m| m.serving).unwrap_or(true));
    assert_eq!(served_version(&mut scoring, score_request()).await, 1);
    // The same claim signed by the key holder is promoted.
    let path = artifact_path(models.path(), "fraud", 3);
    artifact::save_signed(&path, forged(3), Some(&key)).unwrap();
    client
        .load_model(pb::LoadModelRequest {
            path: path.display().to_string(),
        })
        .await
        .expect("loaded");
    assert_eq!(served_version(&mut scoring, score_request()).await, 3);
    server.stop().await;
}
