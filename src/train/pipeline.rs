//! One training run: point-in-time dataset, time-based hold-out (train on the earlier
//! rows, validate on the later ones), fit, evaluate, and write a versioned artifact.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use super::dataset::{Dataset, DatasetError, DatasetSpec, Row};
use super::decisions;
use super::error::TrainError;
use super::evaluate::{Metric, calibration, metrics_for};
use super::kernel_svm::{self, CheckedKernelSvmParams};
use super::linear::{self, CheckedLinearParams};
use super::logistic::{self, CheckedLogisticParams};
use super::plots;
use super::report::{CrossValidated, Report, importance};
use super::split::{self, Split};
use super::svm::{self, CheckedSvmParams};
use super::thresholds::{self, CheckedThresholdRule};
use super::tree::{self, CheckedTreeParams};
use crate::definitions::{Definitions, fnv64};
use crate::events::RawEvent;
use crate::features::EngineSettings;
use crate::model::artifact::{
    self, ArtifactBody, ArtifactError, Comparison, Provenance, SigningKey,
};

/// Where a run is, for progress display.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Progress {
    /// Events of the history replayed so far.
    Replayed(u64),
    Fitting {
        rows: usize,
    },
    Evaluating {
        rows: usize,
    },
}

/// The family to train, with checked hyper-parameters; serialises as the training
/// config's `[[family]]` table with every value after defaults.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FamilyParams {
    Logistic(CheckedLogisticParams),
    Tree(CheckedTreeParams),
    Linear(CheckedLinearParams),
    #[serde(rename = "svm")]
    LinearSvm(CheckedSvmParams),
    KernelSvm(CheckedKernelSvmParams),
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error(transparent)]
    Train(#[from] TrainError),
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
    #[error("hold-out share must be in (0, 1), got {0}")]
    Holdout(f64),
    #[error("family {family} cannot learn the {target} target ({hint})")]
    FamilyTarget {
        family: &'static str,
        target: &'static str,
        hint: &'static str,
    },
    #[error(
        "compare_by: the metric does not fit this target (classifiers: roc_auc, pr_auc, log_loss, brier; order_value: rmse, mae, r2)"
    )]
    CompareBy,
    #[error(transparent)]
    Plot(#[from] plots::PlotError),
    #[error("cannot write the training report or dataset: {0}")]
    Report(#[from] std::io::Error),
}

#[derive(Debug, Clone)]
pub struct TrainOutcome {
    pub artifact: PathBuf,
    /// The serving version on the same hold-out, when there is one to compare with.
    pub comparison: Option<Comparison>,
    pub plots: Vec<PathBuf>,
    pub thresholds: Option<crate::model::decision::Thresholds>,
    /// How many hold-out rows the thresholds review (classifiers).
    pub review_band: Option<thresholds::ReviewBand>,
    pub version: u32,
    pub train_rows: usize,
    pub validation_rows: usize,
    pub positives: usize,
    pub fit_seconds: f64,
    pub metrics: Vec<(String, f64)>,
    /// Mean and spread of each metric over the cross-validation folds, if asked for.
    pub cross_validation: Vec<CrossValidated>,
    /// The fit equals an existing version (same model, data, definitions and
    /// thresholds): nothing new was written, and `version`/`artifact` are that one's.
    pub unchanged: bool,
}

/// An existing version of `name` in `dir` that `candidate` would only repeat: the same
/// model, fitted on the same data under the same definitions, with the same thresholds.
fn same_as_existing(dir: &Path, name: &str, candidate: &ArtifactBody) -> Option<(u32, PathBuf)> {
    (1..next_version(dir, name)).rev().find_map(|version| {
        let path = dir.join(format!("{name}-v{version}.json"));
        let existing = artifact::read_unchecked(&path).ok()?;
        let same = existing.model == candidate.model
            && existing.data_fingerprint == candidate.data_fingerprint
            && existing.definitions_fingerprint == candidate.definitions_fingerprint
            && existing.thresholds == candidate.thresholds;
        same.then_some((version, path))
    })
}

/// The next free version number in `dir` for files named `<name>-v<N>.json`, retired
/// versions (`dir/retired/`) counted: a number once used never names another model.
pub(crate) fn next_version(dir: &Path, name: &str) -> u32 {
    let prefix = format!("{name}-v");
    let highest_in = |dir: &Path| {
        std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .filter_map(|e| {
                        let file = e.file_name().to_string_lossy().to_string();
                        file.strip_prefix(&prefix)?
                            .strip_suffix(".json")?
                            .parse::<u32>()
                            .ok()
                    })
                    .max()
                    .unwrap_or(0)
            })
            .unwrap_or(0)
    };
    highest_in(dir).max(highest_in(&dir.join(crate::registry::RETIRED_DIR))) + 1
}

/// Where the run's output goes and what it is called.
#[derive(Debug, Clone, Copy)]
pub struct Output<'a> {
    pub models_dir: &'a Path,
    pub name: &'a str,
    pub created_at_ms: i64,
    /// The event type the model scores (its target's observation), if known.
    pub scored_event: Option<&'a str>,
    /// Signs the artifact (HMAC-SHA256) when given.
    pub signing_key: Option<&'a SigningKey>,
    /// What `train` flags changed over the config or the defaults (see
    /// `TrainConfig::apply`), recorded in the artifact and the report.
    pub flags: &'a [String],
    /// The metric the new version is compared with the serving one by (what
    /// `if_better` promotion reads); `None`: ROC-AUC for classifiers, RMSE otherwise.
    pub compare_by: Option<&'static Metric>,
}

/// The version serving `name` in `models_dir` (its pin in `aliases.json`), scored on
/// this training run's hold-out next to the new model: what `train` prints and what
/// `if_better` promotion reads. `None` when nothing serves, or the serving version was
/// trained against other definitions or reads columns this set lacks.
fn compare_with_serving(
    models_dir: &Path,
    name: &str,
    definitions_fingerprint: u64,
    columns: &[String],
    validation: &[&Row],
    compare_by: &Metric,
    metrics: &[(String, f64)],
) -> Option<Comparison> {
    let aliases: std::collections::BTreeMap<String, String> =
        serde_json::from_slice(&std::fs::read(models_dir.join("aliases.json")).ok()?).ok()?;
    let serving = aliases.get(name)?;
    let version = serving.split_once('@')?.1;
    let path = models_dir
        .join(name)
        .join(format!("{name}-v{version}.json"));
    let body = artifact::read_unchecked(&path).ok()?;
    if body.definitions_fingerprint != definitions_fingerprint {
        return None;
    }
    let positions: Option<Vec<usize>> = body
        .model
        .columns
        .iter()
        .map(|c| columns.iter().position(|d| d == c))
        .collect();
    let positions = positions?;
    let scores: Vec<f64> = validation
        .iter()
        .map(|row| {
            let values: Vec<Option<f64>> = positions.iter().map(|p| row.values[*p]).collect();
            body.model.predict(&values)
        })
        .collect();
    let truth: Vec<f64> = validation.iter().map(|r| r.label).collect();
    let candidate_value = metrics.iter().find(|(m, _)| m == compare_by.name)?.1;
    Some(Comparison {
        serving: serving.clone(),
        metric: compare_by.name.into(),
        higher_is_better: compare_by.higher_is_better,
        candidate_value,
        serving_value: (compare_by.compute)(&scores, &truth),
    })
}

/// How rows are held out (see `train::split`), and how many cross-validation folds
/// to report (0: none).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Holdout {
    pub share: f64,
    pub split: Split,
    pub seed: u64,
    pub cv_folds: usize,
}

impl Holdout {
    /// The latest `share` of rows, no cross-validation.
    pub fn time(share: f64) -> Holdout {
        Holdout {
            share,
            split: Split::Time,
            seed: 0,
            cv_folds: 0,
        }
    }
}

/// Fits one family on rows and labels.
fn fit(
    family: FamilyParams,
    columns: &[String],
    rows: &[Vec<Option<f64>>],
    labels: &[f64],
    name: &str,
) -> Result<crate::model::Model, TrainError> {
    let warn = |converged: bool, what: &str| {
        if !converged {
            tracing::warn!(
                name,
                "{what} stopped at its iteration limit before converging"
            );
        }
    };
    Ok(match family {
        FamilyParams::Logistic(params) => {
            let (model, converged) = logistic::fit(columns, rows, labels, params)?;
            warn(converged, "logistic regression");
            model
        }
        FamilyParams::Tree(params) => tree::fit(columns, rows, labels, params)?,
        FamilyParams::Linear(params) => linear::fit(columns, rows, labels, params)?,
        FamilyParams::LinearSvm(params) => {
            let (model, converged) = svm::fit(columns, rows, labels, params)?;
            warn(converged, "linear SVM");
            model
        }
        FamilyParams::KernelSvm(params) => {
            let (model, converged) = kernel_svm::fit(columns, rows, labels, params)?;
            warn(converged, "kernel SVM");
            model
        }
    })
}

/// Each metric's mean and standard deviation over `folds` folds: every fold held out
/// once while the others train.
fn cross_validate(
    dataset: &Dataset,
    classifier: bool,
    family: FamilyParams,
    (folds, split, seed): (usize, Split, u64),
    name: &str,
) -> Result<Vec<CrossValidated>, PipelineError> {
    let fold_of = split::folds(&dataset.rows, folds, split, seed);
    let mut values: Vec<Vec<f64>> = vec![Vec::new(); metrics_for(classifier).count()];
    for fold in 0..folds {
        let (mut held, mut kept): (Vec<&Row>, Vec<&Row>) = (Vec::new(), Vec::new());
        for (row, f) in dataset.rows.iter().zip(&fold_of) {
            if *f == fold {
                held.push(row);
            } else {
                kept.push(row);
            }
        }
        let rows: Vec<Vec<Option<f64>>> = kept.iter().map(|r| r.values.clone()).collect();
        let labels: Vec<f64> = kept.iter().map(|r| r.label).collect();
        let model = fit(family, &dataset.columns, &rows, &labels, name)?;
        let scores: Vec<f64> = held.iter().map(|r| model.predict(&r.values)).collect();
        let truth: Vec<f64> = held.iter().map(|r| r.label).collect();
        for (slot, metric) in values.iter_mut().zip(metrics_for(classifier)) {
            slot.push((metric.compute)(&scores, &truth));
        }
    }
    Ok(metrics_for(classifier)
        .zip(values)
        .map(|(metric, values)| {
            let mean = values.iter().sum::<f64>() / values.len() as f64;
            let variance =
                values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / values.len() as f64;
            CrossValidated {
                metric: metric.name.to_string(),
                mean,
                std: variance.sqrt(),
                folds: values,
            }
        })
        .collect())
}

/// Refuses a family that cannot learn the target before any work is done.
pub fn check_family(classifier: bool, family: FamilyParams) -> Result<(), PipelineError> {
    match (classifier, family) {
        (true, FamilyParams::Linear(_)) => Err(PipelineError::FamilyTarget {
            family: "linear",
            target: "fraud/purchase",
            hint: "use logistic, tree, svm or kernel_svm",
        }),
        (
            false,
            FamilyParams::Logistic(_)
            | FamilyParams::Tree(_)
            | FamilyParams::LinearSvm(_)
            | FamilyParams::KernelSvm(_),
        ) => Err(PipelineError::FamilyTarget {
            family: "logistic/tree/svm/kernel_svm",
            target: "order_value",
            hint: "use linear",
        }),
        _ => Ok(()),
    }
}

/// Builds the point-in-time set from `history` and trains on it (see [`train_on`]).
#[allow(clippy::too_many_arguments)]
pub fn train<I: Iterator<Item = RawEvent>>(
    definitions: Arc<Definitions>,
    settings: EngineSettings,
    history: impl Fn() -> I,
    spec: &DatasetSpec,
    family: FamilyParams,
    rule: CheckedThresholdRule,
    holdout: f64,
    models_dir: &Path,
    name: &str,
    created_at_ms: i64,
    export_dataset: Option<&Path>,
    mut progress: impl FnMut(Progress),
) -> Result<TrainOutcome, PipelineError> {
    let classifier = spec.target.classifier();
    check_family(classifier, family)?;
    let dataset = Dataset::build(Arc::clone(&definitions), settings, history, spec, |done| {
        progress(Progress::Replayed(done))
    })?;
    if let Some(path) = export_dataset {
        export(&dataset, path)?;
    }
    train_on(
        &dataset,
        classifier,
        definitions.fingerprint,
        family,
        rule,
        Holdout::time(holdout),
        Output {
            models_dir,
            name,
            created_at_ms,
            scored_event: spec.target.observed_event(),
            signing_key: None,
            flags: &[],
            compare_by: None,
        },
        progress,
    )
}

/// Writes the training set as Parquet (a `.parquet` path) or CSV (any other), the formats
/// `train --table` reads back.
pub fn export(dataset: &Dataset, path: &Path) -> Result<(), PipelineError> {
    if super::table::is_parquet(path) {
        super::table::parquet::write(dataset, path)?;
        return Ok(());
    }
    let file = std::fs::File::create(path)?;
    dataset
        .write_csv(std::io::BufWriter::new(file))
        .map_err(std::io::Error::other)?;
    Ok(())
}

/// Time-based hold-out, fit, evaluation, artifact, report and plots for one family on
/// a built training set (from history or a table).
#[allow(clippy::too_many_arguments)]
pub fn train_on(
    dataset: &Dataset,
    classifier: bool,
    definitions_fingerprint: u64,
    family: FamilyParams,
    rule: CheckedThresholdRule,
    holdout: Holdout,
    output: Output,
    mut progress: impl FnMut(Progress),
) -> Result<TrainOutcome, PipelineError> {
    let Output {
        models_dir,
        name,
        created_at_ms,
        scored_event,
        signing_key,
        flags,
        compare_by,
    } = output;
    let compare_by = compare_by
        .or_else(|| metrics_for(classifier).next())
        .filter(|m| m.classifier == classifier)
        .ok_or(PipelineError::CompareBy)?;
    let Holdout {
        share: holdout,
        split,
        seed,
        cv_folds,
    } = holdout;
    if !(holdout > 0.0 && holdout < 1.0) {
        return Err(PipelineError::Holdout(holdout));
    }
    check_family(classifier, family)?;
    let cross_validation = if cv_folds >= 2 {
        cross_validate(dataset, classifier, family, (cv_folds, split, seed), name)?
    } else {
        Vec::new()
    };
    let (train_at, validation_at) = split::holdout(&dataset.rows, holdout, split, seed);
    let train: Vec<&Row> = train_at.iter().map(|i| &dataset.rows[*i]).collect();
    let validation: Vec<&Row> = validation_at.iter().map(|i| &dataset.rows[*i]).collect();
    let rows: Vec<Vec<Option<f64>>> = train.iter().map(|r| r.values.clone()).collect();
    let labels: Vec<f64> = train.iter().map(|r| r.label).collect();
    progress(Progress::Fitting { rows: rows.len() });
    let started = Instant::now();
    let mut model = fit(family, &dataset.columns, &rows, &labels, name)?;
    // A table model keeps the encoding of its inputs, so serving encodes requests
    // exactly as the table was encoded.
    model.inputs = dataset.inputs.clone();
    let fit_seconds = started.elapsed().as_secs_f64();
    progress(Progress::Evaluating {
        rows: validation.len(),
    });

    let scores: Vec<f64> = validation
        .iter()
        .map(|r| model.predict(&r.values))
        .collect();
    let truth: Vec<f64> = validation.iter().map(|r| r.label).collect();
    let metrics: Vec<(String, f64)> = metrics_for(classifier)
        .map(|m| (m.name.to_string(), (m.compute)(&scores, &truth)))
        .collect();

    let chosen = if classifier {
        thresholds::choose(&scores, &truth, rule)
    } else {
        None
    };
    let review_band = chosen.map(|t| thresholds::ReviewBand::measure(&scores, &truth, &t));
    let comparison = compare_with_serving(
        models_dir,
        name,
        definitions_fingerprint,
        &dataset.columns,
        &validation,
        compare_by,
        &metrics,
    );
    let mut fingerprint_bytes = Vec::new();
    for row in &dataset.rows {
        fingerprint_bytes.extend_from_slice(row.event_id.as_bytes());
        fingerprint_bytes.extend_from_slice(&row.label.to_le_bytes());
    }
    let positives =
        |rows: &[&Row]| classifier.then(|| rows.iter().filter(|r| r.label > 0.5).count());
    let provenance = Provenance {
        hyperparameters: serde_json::to_value(family).unwrap_or_default(),
        flags: flags.to_vec(),
        holdout,
        train_rows: train.len(),
        validation_rows: validation.len(),
        train_positives: positives(&train),
        validation_positives: positives(&validation),
        split: split.name().to_string(),
        seed,
        row_order: dataset.row_order,
        validated_from_ms: validation.first().map(|r| r.time_ms).unwrap_or(0),
        validated_to_ms: validation.last().map(|r| r.time_ms).unwrap_or(0),
    };
    let dir = models_dir.join(name);
    let version = next_version(&dir, name);
    let path = dir.join(format!("{name}-v{version}.json"));
    let body = ArtifactBody {
        name: name.to_string(),
        version,
        created_at_ms,
        definitions_fingerprint,
        trained_from_ms: train.first().map(|r| r.time_ms).unwrap_or(0),
        trained_to_ms: train.last().map(|r| r.time_ms).unwrap_or(0),
        data_fingerprint: fnv64(&fingerprint_bytes),
        metrics: metrics.clone(),
        thresholds: chosen,
        scored_event: scored_event.map(str::to_string),
        comparison: comparison.clone(),
        provenance: Some(provenance.clone()),
        model: model.clone(),
    };
    // Retraining on the same data with the same settings fits the same model: a new
    // version would only be a copy to promote by mistake.
    let outcome = TrainOutcome {
        artifact: path.clone(),
        comparison: comparison.clone(),
        plots: Vec::new(),
        thresholds: chosen,
        review_band,
        version,
        train_rows: train.len(),
        validation_rows: validation.len(),
        positives: if classifier {
            labels.iter().filter(|l| **l > 0.5).count()
        } else {
            0
        },
        fit_seconds,
        metrics: metrics.clone(),
        cross_validation: cross_validation.clone(),
        unchanged: false,
    };
    if let Some((version, artifact)) = same_as_existing(&dir, name, &body) {
        return Ok(TrainOutcome {
            artifact,
            version,
            unchanged: true,
            ..outcome
        });
    }
    artifact::save_signed(&path, body, signing_key)?;
    let report = Report {
        name: name.to_string(),
        version,
        family: model.family_name().to_string(),
        created_at_ms,
        trained_from_ms: train.first().map(|r| r.time_ms).unwrap_or(0),
        trained_to_ms: train.last().map(|r| r.time_ms).unwrap_or(0),
        provenance,
        unlabelled: dataset.unlabelled,
        fit_seconds,
        metrics: metrics.clone(),
        thresholds: chosen,
        review_band,
        operating_points: if classifier {
            decisions::operating_points(&scores, &truth, chosen.as_ref())
        } else {
            Vec::new()
        },
        cross_validation: cross_validation.clone(),
        segments: chosen
            .map(|t| {
                let rows: Vec<&[Option<f64>]> =
                    validation.iter().map(|r| r.values.as_slice()).collect();
                decisions::segment_rates(&dataset.columns, &rows, &scores, &truth, &t)
            })
            .unwrap_or_default(),
        calibration: if classifier {
            calibration(&scores, &truth, 10)
        } else {
            Vec::new()
        },
        importance: importance(
            &model,
            &validation
                .iter()
                .step_by(validation.len().div_ceil(2000).max(1))
                .map(|r| r.values.as_slice())
                .collect::<Vec<_>>(),
            15,
        ),
        comparison: comparison.clone(),
        plots: Vec::new(),
    };
    let plots = plots::draw_beside(
        &path,
        &plots::PlotInputs {
            title: &format!("{name} v{version} ({})", model.family_name()),
            classifier,
            scores: &scores,
            truth: &truth,
            calibration: &report.calibration,
            importance: &report.importance,
            thresholds: chosen.as_ref(),
        },
    )?;
    let report = Report {
        plots: plots
            .iter()
            .filter_map(|p| p.file_name().map(|f| f.to_string_lossy().into_owned()))
            .collect(),
        ..report
    };
    report.write_beside(&path)?;
    Ok(TrainOutcome { plots, ..outcome })
}
