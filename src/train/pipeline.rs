//! One training run: point-in-time dataset, time-based hold-out (train on the earlier
//! rows, validate on the later ones), fit, evaluate, and write a versioned artifact.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use super::dataset::Target;
use super::dataset::{Dataset, DatasetError, DatasetSpec};
use super::decisions;
use super::evaluate::{Metric, calibration, metrics_for};
use super::kernel_svm::{self, CheckedKernelSvmParams};
use super::linear::{self, CheckedLinearParams};
use super::logistic::{self, CheckedLogisticParams, TrainError};
use super::plots;
use super::report::{Report, importance};
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
    pub version: u32,
    pub train_rows: usize,
    pub validation_rows: usize,
    pub positives: usize,
    pub fit_seconds: f64,
    pub metrics: Vec<(String, f64)>,
}

/// The next free version number in `dir` for files named `<name>-v<N>.json`.
fn next_version(dir: &Path, name: &str) -> u32 {
    let prefix = format!("{name}-v");
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
        + 1
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
    validation: &[super::dataset::Row],
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
    let classifier = spec.target != Target::OrderValue;
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
        holdout,
        Output {
            models_dir,
            name,
            created_at_ms,
            scored_event: Some(spec.target.observed_event()),
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
    holdout: f64,
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
    if !(holdout > 0.0 && holdout < 1.0) {
        return Err(PipelineError::Holdout(holdout));
    }
    check_family(classifier, family)?;
    // Rows come in event-time order, so the split is a cut in time.
    let cut = ((dataset.rows.len() as f64) * (1.0 - holdout)).round() as usize;
    let (train, validation) = dataset.rows.split_at(cut.min(dataset.rows.len()));
    let rows: Vec<Vec<Option<f64>>> = train.iter().map(|r| r.values.clone()).collect();
    let labels: Vec<f64> = train.iter().map(|r| r.label).collect();
    progress(Progress::Fitting { rows: rows.len() });
    let started = Instant::now();
    let model = match family {
        FamilyParams::Logistic(params) => {
            let (model, converged) = logistic::fit(&dataset.columns, &rows, &labels, params)?;
            if !converged {
                tracing::warn!(
                    name,
                    "logistic regression stopped at its iteration limit before converging"
                );
            }
            model
        }
        FamilyParams::Tree(params) => tree::fit(&dataset.columns, &rows, &labels, params)?,
        FamilyParams::Linear(params) => linear::fit(&dataset.columns, &rows, &labels, params)?,
        FamilyParams::LinearSvm(params) => {
            let (model, converged) = svm::fit(&dataset.columns, &rows, &labels, params)?;
            if !converged {
                tracing::warn!(
                    name,
                    "linear SVM stopped at its iteration limit before converging"
                );
            }
            model
        }
        FamilyParams::KernelSvm(params) => {
            let (model, converged) = kernel_svm::fit(&dataset.columns, &rows, &labels, params)?;
            if !converged {
                tracing::warn!(
                    name,
                    "kernel SVM stopped at its iteration limit before converging"
                );
            }
            model
        }
    };
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
    let comparison = compare_with_serving(
        models_dir,
        name,
        definitions_fingerprint,
        &dataset.columns,
        validation,
        compare_by,
        &metrics,
    );
    let mut fingerprint_bytes = Vec::new();
    for row in &dataset.rows {
        fingerprint_bytes.extend_from_slice(row.event_id.as_bytes());
        fingerprint_bytes.extend_from_slice(&row.label.to_le_bytes());
    }
    let positives = |rows: &[super::dataset::Row]| {
        classifier.then(|| rows.iter().filter(|r| r.label > 0.5).count())
    };
    let provenance = Provenance {
        hyperparameters: serde_json::to_value(family).unwrap_or_default(),
        flags: flags.to_vec(),
        holdout,
        train_rows: train.len(),
        validation_rows: validation.len(),
        train_positives: positives(train),
        validation_positives: positives(validation),
        validated_from_ms: validation.first().map(|r| r.time_ms).unwrap_or(0),
        validated_to_ms: validation.last().map(|r| r.time_ms).unwrap_or(0),
    };
    let dir = models_dir.join(name);
    let version = next_version(&dir, name);
    let path = dir.join(format!("{name}-v{version}.json"));
    artifact::save_signed(
        &path,
        ArtifactBody {
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
        },
        signing_key,
    )?;
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
        operating_points: if classifier {
            decisions::operating_points(&scores, &truth, chosen.as_ref())
        } else {
            Vec::new()
        },
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
    };
    report.write_beside(&path)?;
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
    Ok(TrainOutcome {
        artifact: path,
        comparison,
        plots,
        thresholds: chosen,
        version,
        train_rows: train.len(),
        validation_rows: validation.len(),
        positives: if classifier {
            labels.iter().filter(|l| **l > 0.5).count()
        } else {
            0
        },
        fit_seconds,
        metrics,
    })
}
