//! Training the fraud model end to end on simulated history: a useful model, an artifact
//! that loads and scores the same, and clear refusals of a corrupted artifact or one
//! trained against other feature definitions.

use std::sync::Arc;

use streamscore::config::Settings;
use streamscore::definitions::Definitions;
use streamscore::events::RawEvent;
use streamscore::features::EngineSettings;
use streamscore::model::artifact::{self, ArtifactError};
use streamscore::simulate::{SimConfig, Simulator};
use streamscore::time::DAY_MS;
use streamscore::train::kernel_svm::KernelSvmParams;
use streamscore::train::linear::LinearParams;
use streamscore::train::logistic::LogisticParams;
use streamscore::train::thresholds::ThresholdRule;
use streamscore::train::tree::TreeParams;
use streamscore::train::{Dataset, DatasetSpec, pipeline};

#[test]
fn invalid_hyper_parameters_are_refused_before_training() {
    assert!(
        LogisticParams {
            l2: -1.0,
            ..LogisticParams::default()
        }
        .check()
        .unwrap_err()
        .to_string()
        .contains("l2")
    );
    assert!(
        LogisticParams {
            l2: f64::NAN,
            ..LogisticParams::default()
        }
        .check()
        .is_err()
    );
    let error = LogisticParams {
        max_iterations: 0,
        ..LogisticParams::default()
    }
    .check()
    .unwrap_err();
    assert!(error.to_string().contains("max_iterations"), "{error}");
}

#[test]
fn the_fraud_model_learns_and_its_artifact_round_trips() {
    let events: Vec<RawEvent> = Simulator::new(SimConfig {
        seed: 21,
        users: 8_000,
        // Sparse traffic: 700k events span about 140 days, so 60-day labels are known.
        mean_session_gap_ms: 150_000.0,
        ..SimConfig::default()
    })
    .take(700_000)
    .collect();
    let definitions = Arc::new(Definitions::default_shop());
    let defaults = Settings::default();
    let settings = EngineSettings {
        allowed_lateness_ms: defaults.ingest.allowed_lateness.0,
        dedup_horizon_ms: defaults.ingest.dedup_horizon.0,
    };
    let spec = DatasetSpec::fraud(60 * DAY_MS);
    let models = tempfile::tempdir().unwrap();
    // Every run: the same history, default thresholds, a quarter held out, a fixed time.
    let train = |spec: &DatasetSpec, family: pipeline::FamilyParams, name: &str| {
        pipeline::train(
            Arc::clone(&definitions),
            settings,
            || events.iter().cloned(),
            spec,
            family,
            ThresholdRule::default().check().unwrap(),
            0.25,
            models.path(),
            name,
            1_767_225_600_000,
            None,
            |_| {},
        )
    };
    let outcome = train(
        &spec,
        pipeline::FamilyParams::Logistic(LogisticParams::default().check().unwrap()),
        "fraud",
    )
    .expect("training succeeds");
    let auc = outcome
        .metrics
        .iter()
        .find(|(name, _)| name == "roc_auc")
        .unwrap()
        .1;
    assert!(
        outcome.positives >= 50,
        "only {} fraud rows",
        outcome.positives
    );
    assert!(auc > 0.8, "hold-out ROC-AUC {auc}");
    let plot_names: Vec<String> = outcome
        .plots
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().to_string())
        .collect();
    assert_eq!(
        plot_names,
        [
            "fraud-v1.roc.png",
            "fraud-v1.pr.png",
            "fraud-v1.calibration.png",
            "fraud-v1.importance.png"
        ]
    );
    for plot in &outcome.plots {
        let bytes = std::fs::read(plot).unwrap();
        assert!(
            bytes.len() > 1000 && &bytes[1..4] == b"PNG",
            "{}",
            plot.display()
        );
    }

    // The decision tree learns too, scoring with leaf frequencies.
    let tree = train(
        &spec,
        pipeline::FamilyParams::Tree(TreeParams::default().check().unwrap()),
        "fraud",
    )
    .expect("tree training succeeds");
    let tree_auc = tree
        .metrics
        .iter()
        .find(|(name, _)| name == "roc_auc")
        .unwrap()
        .1;
    assert!(tree_auc > 0.8, "tree hold-out ROC-AUC {tree_auc}");
    assert_eq!(
        tree.version, 2,
        "a second artifact of the same name gets the next version"
    );

    // The order-value model is a regression, and families that cannot learn it are refused.
    let order_value = train(
        &DatasetSpec::order_value(),
        pipeline::FamilyParams::Linear(LinearParams::default().check().unwrap()),
        "order_value",
    )
    .expect("order value training succeeds");
    let r2 = order_value
        .metrics
        .iter()
        .find(|(name, _)| name == "r2")
        .unwrap()
        .1;
    assert!(r2 > 0.05 && r2 < 0.99, "hold-out R^2 {r2}");
    assert!(order_value.thresholds.is_none());
    assert!(
        order_value.plots[0].ends_with("order_value-v1.predicted.png"),
        "{:?}",
        order_value.plots
    );

    // The kernel SVM trains on a stratified sample and scores probabilities.
    let kernel = train(
        &spec,
        pipeline::FamilyParams::KernelSvm(
            KernelSvmParams {
                sample_size: 3000,
                ..KernelSvmParams::default()
            }
            .check()
            .unwrap(),
        ),
        "fraud_kernel",
    )
    .expect("kernel SVM training succeeds");
    let kernel_auc = kernel
        .metrics
        .iter()
        .find(|(name, _)| name == "roc_auc")
        .unwrap()
        .1;
    assert!(kernel_auc > 0.8, "kernel SVM hold-out ROC-AUC {kernel_auc}");
    let loaded = artifact::load(&kernel.artifact, &definitions).unwrap();
    assert_eq!(loaded.model.family_name(), "kernel_svm");
    let refused = train(
        &DatasetSpec::order_value(),
        pipeline::FamilyParams::Logistic(LogisticParams::default().check().unwrap()),
        "order_value",
    )
    .unwrap_err();
    assert!(refused.to_string().contains("use linear"), "{refused}");

    // Thresholds and the report come with the artifact.
    let thresholds = outcome.thresholds.expect("thresholds chosen");
    assert!(
        thresholds
            .block
            .is_some_and(|block| thresholds.review <= block)
    );
    let report = std::fs::read_to_string(outcome.artifact.with_extension("report.md")).unwrap();
    assert!(
        report.contains("roc_auc") && report.contains("Calibration") && report.contains("block at"),
        "{report}"
    );

    // The artifact loads and scores exactly as the trained model did.
    let body = artifact::load(&outcome.artifact, &definitions).expect("artifact loads");
    assert_eq!(body.version, 1);
    let dataset = Dataset::build(
        Arc::clone(&definitions),
        settings,
        || events.iter().cloned(),
        &spec,
        |_| {},
    )
    .unwrap();
    // On average over the rows (one honest row may be a new customer who looks risky).
    let mean_score = |fraud: bool| {
        let scores: Vec<f64> = dataset
            .rows
            .iter()
            .filter(|r| (r.label > 0.5) == fraud)
            .map(|r| body.model.predict(&r.values))
            .collect();
        scores.iter().sum::<f64>() / scores.len() as f64
    };
    assert!(mean_score(true) > mean_score(false));

    // A flipped byte is refused, naming the checksum.
    let text = std::fs::read_to_string(&outcome.artifact).unwrap();
    let corrupted = models.path().join("corrupted.json");
    std::fs::write(&corrupted, text.replacen("\"roc_auc\"", "\"roc_aux\"", 1)).unwrap();
    let error = artifact::load(&corrupted, &definitions).unwrap_err();
    assert!(
        matches!(error, ArtifactError::Corrupt { .. }) && error.to_string().contains("checksum"),
        "{error}"
    );

    // Other definitions (here: without the card features) are refused, naming them.
    let mut other = (*definitions).clone();
    other.features.retain(|f| !f.name.starts_with("card_"));
    other.fingerprint ^= 1;
    let error = artifact::load(&outcome.artifact, &other).unwrap_err();
    assert!(
        error.to_string().contains("lack") && error.to_string().contains("card_payments_10m"),
        "{error}"
    );
    // Every feature is there, but a definition changed (say a window): refused too.
    let mut changed = (*definitions).clone();
    changed.fingerprint ^= 1;
    let error = artifact::load(&outcome.artifact, &changed).unwrap_err();
    assert!(
        error.to_string().contains("other feature definitions"),
        "{error}"
    );
}
