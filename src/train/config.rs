//! A training config file: what to predict, how to label and hold out, the threshold
//! rule, and one or several model families with their hyper-parameters. Parsed strictly
//! (unknown keys are errors) and checked before any history is read, so a typo fails in
//! a second rather than after a long replay.

use std::path::Path;

use serde::Deserialize;

use super::dataset::{DatasetSpec, Target};
use super::error::TrainError;
use super::evaluate::{Metric, metric, metrics_for};
use super::kernel_svm::KernelSvmParams;
use super::linear::LinearParams;
use super::logistic::LogisticParams;
use super::pipeline::{FamilyParams, Holdout};
use super::split::Split;
use super::svm::SvmParams;
use super::thresholds::{CheckedThresholdRule, ThresholdRule};
use super::tree::TreeParams;
use super::weight::PositiveWeight;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Model name: artifacts go to `<models-dir>/<name>/<name>-v<N>.json`.
    pub name: String,
    /// fraud, purchase or order_value (from event history), or binary or regression
    /// (a table's `label` column).
    pub target: String,
    /// The table column holding the label (`--table` only).
    #[serde(default = "default_label")]
    pub label: String,
    /// Fraud: a chargeback within this window; purchase: an order within it.
    #[serde(default = "default_label_window")]
    pub label_window: String,
    /// Share of the rows held out for validation.
    #[serde(default = "default_holdout")]
    pub holdout: f64,
    /// Which rows: time (the latest), random, or stratified (random within each class).
    #[serde(default)]
    pub split: Split,
    /// Seed of the random and stratified splits and folds.
    #[serde(default)]
    pub seed: u64,
    /// Cross-validation folds whose metrics' mean and spread the report shows (0: none).
    #[serde(default)]
    pub cv_folds: usize,
    #[serde(default)]
    pub thresholds: ThresholdRule,
    /// The hold-out metric a new version is compared with the serving one by (printed
    /// by `train`, read by `if_better` promotion); unset: roc_auc, or rmse for
    /// order_value.
    #[serde(default)]
    pub compare_by: Option<String>,
    /// The families to train, each into its own version.
    #[serde(rename = "family")]
    pub families: Vec<FamilySpec>,
}

fn default_label_window() -> String {
    "60d".into()
}

fn default_label() -> String {
    super::table::LABEL.into()
}

fn default_holdout() -> f64 {
    0.25
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FamilySpec {
    Logistic(LogisticParams),
    Tree(TreeParams),
    Svm(SvmParams),
    KernelSvm(KernelSvmParams),
    Linear(LinearParams),
}

impl FamilySpec {
    pub fn kind(&self) -> &'static str {
        match self {
            FamilySpec::Logistic(_) => "logistic",
            FamilySpec::Tree(_) => "tree",
            FamilySpec::Svm(_) => "svm",
            FamilySpec::KernelSvm(_) => "kernel_svm",
            FamilySpec::Linear(_) => "linear",
        }
    }

    pub fn check(self) -> Result<FamilyParams, TrainError> {
        Ok(match self {
            FamilySpec::Logistic(p) => FamilyParams::Logistic(p.check()?),
            FamilySpec::Tree(p) => FamilyParams::Tree(p.check()?),
            FamilySpec::Svm(p) => FamilyParams::LinearSvm(p.check()?),
            FamilySpec::KernelSvm(p) => FamilyParams::KernelSvm(p.check()?),
            FamilySpec::Linear(p) => FamilyParams::Linear(p.check()?),
        })
    }
}

/// Settings given as `train` flags. With `--config` a flag wins over the config's value
/// (for every family that has the key); without one, flags fill in the defaults. A flag
/// that no family of the run takes is an error rather than silently ignored.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    pub name: Option<String>,
    pub target: Option<String>,
    pub label: Option<String>,
    pub label_window: Option<String>,
    pub holdout: Option<f64>,
    pub split: Option<Split>,
    pub seed: Option<u64>,
    pub cv_folds: Option<usize>,
    pub l2: Option<f64>,
    pub max_iterations: Option<u64>,
    pub max_depth: Option<usize>,
    pub c: Option<f64>,
    pub gamma: Option<f64>,
    pub sample_size: Option<usize>,
    pub positive_weight: Option<PositiveWeight>,
}

/// Replaces `slot` by `flag` when given, noting what changed in `changes`.
fn take<T: PartialEq + std::fmt::Debug>(
    slot: &mut T,
    flag: Option<T>,
    key: &str,
    changes: &mut Vec<String>,
) {
    let Some(value) = flag else { return };
    if *slot != value {
        changes.push(format!("{key}: {value:?} (flag) over {slot:?}"));
    }
    *slot = value;
}

impl TrainConfig {
    /// A config of one family of `kind` with every value at its default.
    pub fn defaults(kind: &str) -> Result<TrainConfig, ConfigError> {
        let family = match kind {
            "logistic" => FamilySpec::Logistic(Default::default()),
            "tree" => FamilySpec::Tree(Default::default()),
            "svm" => FamilySpec::Svm(Default::default()),
            "kernel_svm" => FamilySpec::KernelSvm(Default::default()),
            "linear" => FamilySpec::Linear(Default::default()),
            other => {
                return Err(ConfigError::Invalid(format!(
                    "family: unknown family '{other}' (known: logistic, tree, svm, kernel_svm, linear)"
                )));
            }
        };
        Ok(TrainConfig {
            name: "fraud".into(),
            target: "fraud".into(),
            label: default_label(),
            label_window: default_label_window(),
            holdout: default_holdout(),
            split: Split::default(),
            seed: 0,
            cv_folds: 0,
            thresholds: ThresholdRule::default(),
            compare_by: None,
            families: vec![family],
        })
    }

    /// Applies flags over this config; returns what they changed (`key: new over old`),
    /// which the report and the artifact record.
    pub fn apply(&mut self, flags: &Overrides) -> Result<Vec<String>, ConfigError> {
        let mut changes = Vec::new();
        take(&mut self.name, flags.name.clone(), "name", &mut changes);
        take(
            &mut self.target,
            flags.target.clone(),
            "target",
            &mut changes,
        );
        take(&mut self.label, flags.label.clone(), "label", &mut changes);
        take(
            &mut self.label_window,
            flags.label_window.clone(),
            "label_window",
            &mut changes,
        );
        take(&mut self.holdout, flags.holdout, "holdout", &mut changes);
        take(&mut self.split, flags.split, "split", &mut changes);
        take(&mut self.seed, flags.seed, "seed", &mut changes);
        take(&mut self.cv_folds, flags.cv_folds, "cv_folds", &mut changes);
        // Each hyper-parameter flag, as the value a config would hold.
        let given: [(&str, Option<serde_json::Value>); 7] = [
            ("l2", flags.l2.map(Into::into)),
            ("max_iterations", flags.max_iterations.map(Into::into)),
            ("max_depth", flags.max_depth.map(Into::into)),
            ("c", flags.c.map(Into::into)),
            ("gamma", flags.gamma.map(Into::into)),
            ("sample_size", flags.sample_size.map(Into::into)),
            (
                "positive_weight",
                flags
                    .positive_weight
                    .and_then(|w| serde_json::to_value(w).ok()),
            ),
        ];
        let mut used = std::collections::BTreeSet::new();
        for family in &mut self.families {
            // A family's keys are its serialised fields: a flag sets the key wherever a
            // family has it, and the result is read back (and checked) as a family.
            let mut table = serde_json::to_value(*family)
                .map_err(|e| ConfigError::Invalid(format!("family: {e}")))?;
            let kind = family.kind();
            for (key, value) in &given {
                let (Some(value), Some(slot)) = (value, table.get_mut(*key)) else {
                    continue;
                };
                used.insert(*key);
                if slot != value {
                    changes.push(format!("{kind}.{key}: {value} (flag) over {slot}"));
                }
                *slot = value.clone();
            }
            *family = serde_json::from_value(table).map_err(|e| {
                ConfigError::Invalid(format!("a flag does not fit family {kind}: {e}"))
            })?;
        }
        let kinds: Vec<&str> = self.families.iter().map(|f| f.kind()).collect();
        match given
            .iter()
            .find(|(key, value)| value.is_some() && !used.contains(key))
        {
            Some((key, _)) => Err(ConfigError::Invalid(format!(
                "--{}: no family of this run takes {key} (it trains: {})",
                key.replace('_', "-"),
                kinds.join(", ")
            ))),
            None => Ok(changes),
        }
    }
}

/// A config with every part checked.
#[derive(Debug, Clone)]
pub struct CheckedTrainConfig {
    pub name: String,
    /// The table column holding the label.
    pub label: String,
    pub spec: DatasetSpec,
    pub holdout: Holdout,
    pub rule: CheckedThresholdRule,
    pub compare_by: Option<&'static Metric>,
    pub families: Vec<(&'static str, FamilyParams)>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read training config {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("training config {path}: {message}")]
    Parse { path: String, message: String },
    #[error("training config: {0}")]
    Invalid(String),
    #[error("training config: {0}")]
    Param(#[from] TrainError),
}

impl TrainConfig {
    pub fn load(path: &Path) -> Result<TrainConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.display().to_string(),
            message: e.to_string(),
        })
    }

    pub fn check(self) -> Result<CheckedTrainConfig, ConfigError> {
        let window = crate::time::parse_duration_ms(&self.label_window)
            .map_err(|e| ConfigError::Invalid(format!("label_window: {e}")))?;
        let spec = match self.target.as_str() {
            "fraud" => DatasetSpec::fraud(window),
            "purchase" => DatasetSpec::purchase(window),
            "order_value" => DatasetSpec::order_value(),
            "binary" => DatasetSpec::table(Target::Binary),
            "regression" => DatasetSpec::table(Target::Regression),
            other => {
                return Err(ConfigError::Invalid(format!(
                    "target: unknown target '{other}' (known: fraud, purchase, order_value from event history; binary, regression for a table's label column)"
                )));
            }
        };
        if self.families.is_empty() {
            return Err(ConfigError::Invalid(
                "no [[family]] to train: add at least one".into(),
            ));
        }
        if self.name.is_empty() || self.name.contains(['/', '\\', '@']) {
            return Err(ConfigError::Invalid(format!(
                "name: '{}' must be non-empty without '/', '\\' or '@'",
                self.name
            )));
        }
        let classifier = spec.target.classifier();
        let compare_by = match &self.compare_by {
            None => None,
            Some(name) => {
                let known: Vec<&str> = metrics_for(classifier).map(|m| m.name).collect();
                match metric(name) {
                    Some(m) if m.classifier == classifier => Some(m),
                    _ => {
                        return Err(ConfigError::Invalid(format!(
                            "compare_by: '{name}' is not a metric of the {} target (known: {})",
                            self.target,
                            known.join(", ")
                        )));
                    }
                }
            }
        };
        if !(self.holdout > 0.0 && self.holdout < 1.0) {
            return Err(ConfigError::Invalid(format!(
                "holdout: must be a share between 0 and 1 (exclusive), got {}",
                self.holdout
            )));
        }
        if self.split == Split::Stratified && !classifier {
            return Err(ConfigError::Invalid(
                "split: stratified needs classes; the target is a number (use random or time)"
                    .into(),
            ));
        }
        if self.cv_folds == 1 || self.cv_folds > 20 {
            return Err(ConfigError::Invalid(format!(
                "cv_folds: 0 (none) or 2 to 20, got {}",
                self.cv_folds
            )));
        }
        let families = self
            .families
            .iter()
            .map(|f| Ok((f.kind(), f.check()?)))
            .collect::<Result<Vec<_>, TrainError>>()?;
        Ok(CheckedTrainConfig {
            label: self.label,
            name: self.name,
            spec,
            holdout: Holdout {
                share: self.holdout,
                split: self.split,
                seed: self.seed,
                cv_folds: self.cv_folds,
            },
            rule: self.thresholds.check()?,
            compare_by,
            families,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_configs_parse_and_check() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("training");
        for name in ["fraud", "purchase", "order_value"] {
            let config = TrainConfig::load(&dir.join(format!("{name}.toml")))
                .unwrap()
                .check()
                .unwrap();
            assert_eq!(config.name, name);
        }
    }

    #[test]
    fn mistakes_are_named() {
        let parse = |text: &str| {
            toml::from_str::<TrainConfig>(text)
                .map_err(|e| e.to_string())
                .and_then(|c| c.check().map_err(|e| e.to_string()))
                .unwrap_err()
        };
        let unknown_key =
            parse("name = 'f'\ntarget = 'fraud'\n[[family]]\nkind = 'logistic'\nl3 = 1.0\n");
        assert!(unknown_key.contains("l3"), "{unknown_key}");
        let bad_value =
            parse("name = 'f'\ntarget = 'fraud'\n[[family]]\nkind = 'tree'\nmax_depth = 0\n");
        assert!(bad_value.contains("max_depth"), "{bad_value}");
        let unknown_kind = parse("name = 'f'\ntarget = 'fraud'\n[[family]]\nkind = 'forest'\n");
        assert!(unknown_kind.contains("forest"), "{unknown_kind}");
        let no_family = parse("name = 'f'\ntarget = 'fraud'\nfamily = []\n");
        assert!(no_family.contains("[[family]]"), "{no_family}");
        let bad_target = parse("name = 'f'\ntarget = 'churn'\n[[family]]\nkind = 'linear'\n");
        assert!(bad_target.contains("churn"), "{bad_target}");
        let bad_metric =
            parse("name = 'f'\ntarget = 'fraud'\ncompare_by = 'rmse'\n[[family]]\nkind = 'tree'\n");
        assert!(
            bad_metric.contains("compare_by") && bad_metric.contains("pr_auc"),
            "{bad_metric}"
        );
    }

    #[test]
    fn the_readme_lists_every_key_with_its_default() {
        use crate::readme_blocks::{assert_documents, block, fields};
        let block = block("training-defaults");
        let parsed: TrainConfig = toml::from_str(&block).expect("the README block parses");
        assert_eq!(parsed.label_window, default_label_window());
        assert_eq!(parsed.holdout, default_holdout());
        assert_eq!(parsed.thresholds, ThresholdRule::default());
        let defaults = ["logistic", "tree", "svm", "kernel_svm", "linear"]
            .map(|kind| TrainConfig::defaults(kind).unwrap().families[0]);
        assert_eq!(
            parsed.families, defaults,
            "the README's family defaults differ"
        );
        let mut every = fields(&serde_json::json!({
            "name": "", "target": "", "label": "", "label_window": "", "holdout": 0,
            "split": "", "seed": 0, "cv_folds": 0, "compare_by": "",
            // `review_rate` has no default (unset: review by recall); the README shows it
            // commented out.
            "thresholds": ThresholdRule { review_rate: Some(0.02), ..ThresholdRule::default() },
        }));
        for family in defaults {
            every.extend(fields(&serde_json::json!({ "family": family })));
        }
        assert_documents(&block, &every);
    }
}
