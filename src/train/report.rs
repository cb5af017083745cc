//! The report of a training run, written beside the artifact as JSON and Markdown:
//! data sizes, hold-out metrics, thresholds, calibration and what the model leans on.

use std::path::Path;

use serde::Serialize;

use super::decisions::{OperatingPoint, SegmentRates};
use super::evaluate::CalibrationBin;
use super::thresholds::ReviewBand;
use crate::model::Model;
use crate::model::artifact::{Comparison, Provenance};
use crate::model::decision::Thresholds;
use crate::time::format_utc;

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub name: String,
    pub version: u32,
    pub family: String,
    /// When the run happened (the artifact's `created_at_ms`).
    pub created_at_ms: i64,
    /// Event-time range of the training rows.
    pub trained_from_ms: i64,
    pub trained_to_ms: i64,
    /// Settings, flags, row and class counts, validation dates.
    pub provenance: Provenance,
    pub unlabelled: usize,
    pub fit_seconds: f64,
    pub metrics: Vec<(String, f64)>,
    pub thresholds: Option<Thresholds>,
    /// How many validation rows fall between review and block.
    pub review_band: Option<ReviewBand>,
    /// Precision, recall and flag rate at the chosen thresholds and a grid.
    pub operating_points: Vec<OperatingPoint>,
    /// Decision rates by customer segment on the validation rows.
    pub segments: Vec<SegmentRates>,
    /// Each metric over the cross-validation folds (empty without `cv_folds`).
    pub cross_validation: Vec<CrossValidated>,
    pub calibration: Vec<CalibrationBin>,
    /// Mean absolute contribution per feature on (a sample of) the validation rows.
    pub importance: Vec<(String, f64)>,
    /// The version serving when this one was trained, scored on the same hold-out.
    pub comparison: Option<Comparison>,
    /// The plots drawn beside the report (file names, in the same folder).
    pub plots: Vec<String>,
}

fn capitalised(text: &str) -> String {
    let mut chars = text.chars();
    chars
        .next()
        .map(|first| first.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

/// One metric over k cross-validation folds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CrossValidated {
    pub metric: String,
    pub mean: f64,
    /// Standard deviation over the folds.
    pub std: f64,
    pub folds: Vec<f64>,
}

/// Feature importance: the mean absolute contribution of each feature (see
/// `model::explain`) over `rows`, strongest first.
pub fn importance(model: &Model, rows: &[&[Option<f64>]], top: usize) -> Vec<(String, f64)> {
    let mut scores = vec![0.0; model.columns.len()];
    for row in rows {
        let explanation = model.explain(row);
        scores
            .iter_mut()
            .zip(&explanation.contributions)
            .for_each(|(s, c)| *s += c.abs() / rows.len() as f64);
    }
    let mut ranked: Vec<(String, f64)> = model.columns.iter().cloned().zip(scores).collect();
    ranked.sort_by(|a, b| b.1.abs().total_cmp(&a.1.abs()).then_with(|| a.0.cmp(&b.0)));
    ranked.truncate(top);
    ranked
}

impl Report {
    pub fn markdown(&self) -> String {
        let p = &self.provenance;
        let mut text = format!("# {} v{} ({})\n\n", self.name, self.version, self.family);
        let classes = |rows: usize, positives: Option<usize>| match positives {
            Some(pos) => format!("{rows} rows: {pos} positive, {} negative", rows - pos),
            None => format!("{rows} rows"),
        };
        text += &format!(
            "Trained {}. Fit in {:.2} s.\n\n## Data\n\n| part | from | to | rows |\n|---|---|---|---|\n",
            format_utc(self.created_at_ms),
            self.fit_seconds
        );
        let when = |ms: i64| {
            if p.row_order {
                format!("row {}", ms + 1)
            } else {
                format_utc(ms)
            }
        };
        text += &format!(
            "| training | {} | {} | {} |\n",
            when(self.trained_from_ms),
            when(self.trained_to_ms),
            classes(p.train_rows, p.train_positives)
        );
        let how = match p.split.as_str() {
            "time" => format!("the latest {:.0}%, a cut in time", p.holdout * 100.0),
            other => format!("{:.0}%, {other}, seed {}", p.holdout * 100.0, p.seed),
        };
        text += &format!(
            "| validation ({how}) | {} | {} | {} |\n\n",
            when(p.validated_from_ms),
            when(p.validated_to_ms),
            classes(p.validation_rows, p.validation_positives)
        );
        text += &format!(
            "{} observations were left out for want of a label.\n\n",
            self.unlabelled
        );
        text += "## Hyper-parameters (after defaults)\n\n| key | value |\n|---|---|\n";
        if let Some(map) = p.hyperparameters.as_object() {
            for (key, value) in map {
                text += &format!("| {key} | {value} |\n");
            }
        }
        if p.flags.is_empty() {
            text += "\nNo flag changed the config or the defaults.\n";
        } else {
            text += "\nGiven as flags, which win over the config and the defaults:\n\n";
            for flag in &p.flags {
                text += &format!("- {flag}\n");
            }
        }
        text += "\n## Hold-out metrics\n\n| metric | value |\n|---|---|\n";
        for (metric, value) in &self.metrics {
            text += &format!("| {metric} | {value:.4} |\n");
        }
        text += &self.against_serving();
        if !self.cross_validation.is_empty() {
            text += &format!(
                "\n## Cross-validation ({} folds, {} split)\n\n| metric | mean | std | folds |\n|---|---|---|---|\n",
                self.cross_validation[0].folds.len(),
                p.split
            );
            for cv in &self.cross_validation {
                let folds: Vec<String> = cv.folds.iter().map(|v| format!("{v:.4}")).collect();
                text += &format!(
                    "| {} | {:.4} | {:.4} | {} |\n",
                    cv.metric,
                    cv.mean,
                    cv.std,
                    folds.join(" ")
                );
            }
        }
        if let Some(thresholds) = &self.thresholds {
            text += &format!("\n## Decisions\n\n{thresholds}\n\n");
            if let Some(band) = &self.review_band {
                text += &format!("{}.\n\n", capitalised(&band.to_string()));
                if band.nearly_empty() {
                    text += "**The review band is (nearly) empty**: review and block almost meet, so next to nothing would be reviewed. Set `thresholds.review_rate` (e.g. 0.02) to review a stated share.\n\n";
                }
            }
            text += "| threshold | score >= | precision | recall | flag rate |\n|---|---|---|---|---|\n";
            for point in &self.operating_points {
                text += &format!(
                    "| {} | {:.4} | {} | {:.4} | {:.4} |\n",
                    point.label,
                    point.threshold,
                    point
                        .precision
                        .map_or_else(|| "-".to_string(), |v| format!("{v:.4}")),
                    point.recall,
                    point.flag_rate
                );
            }
            text += "\nDecision rates by segment (validation rows):\n\n| segment | rows | positive | allow | review | block |\n|---|---|---|---|---|---|\n";
            for s in &self.segments {
                text += &format!(
                    "| {} | {} | {} | {:.4} | {:.4} | {:.4} |\n",
                    s.segment, s.rows, s.positives, s.allow, s.review, s.block
                );
            }
        }
        text += "\n## Calibration\n\n| predicted | rows | mean predicted | observed |\n|---|---|---|---|\n";
        for bin in &self.calibration {
            text += &format!(
                "| {:.1}-{:.1} | {} | {:.4} | {:.4} |\n",
                bin.lower, bin.upper, bin.count, bin.mean_predicted, bin.observed_rate
            );
        }
        text += "\n## What the model leans on\n\n| feature | mean abs contribution |\n|---|---|\n";
        for (feature, score) in &self.importance {
            text += &format!("| {feature} | {score:.4} |\n");
        }
        if !self.plots.is_empty() {
            text += "\n## Plots\n\n";
            for plot in &self.plots {
                text += &format!("![{plot}]({plot})\n\n");
            }
        }
        text
    }

    /// The section comparing this version with the one serving when it was trained.
    fn against_serving(&self) -> String {
        let Some(c) = &self.comparison else {
            return "\nNothing of this name was serving to compare with (or it was trained on other definitions).\n".into();
        };
        let verdict = c.verdict();
        format!(
            "\n## Against the serving version\n\nOn this hold-out, by {} ({} is better): {} {:.4}, this version {:.4}: **{verdict}**. Promote it with `streamscore models promote {}@{}`.\n",
            c.metric,
            if c.higher_is_better {
                "higher"
            } else {
                "lower"
            },
            c.serving,
            c.serving_value,
            c.candidate_value,
            self.name,
            self.version
        )
    }

    /// Writes `<stem>.report.json` and `<stem>.report.md` beside `artifact`.
    pub fn write_beside(&self, artifact: &Path) -> std::io::Result<()> {
        let json = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(artifact.with_extension("report.json"), json)?;
        std::fs::write(artifact.with_extension("report.md"), self.markdown())
    }
}
