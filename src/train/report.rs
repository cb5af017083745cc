//! The report of a training run, written beside the artifact as JSON and Markdown:
//! data sizes, hold-out metrics, thresholds, calibration and what the model leans on.

use std::path::Path;

use serde::Serialize;

use super::evaluate::CalibrationBin;
use crate::model::Model;
use crate::model::decision::Thresholds;

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub name: String,
    pub version: u32,
    pub family: String,
    pub train_rows: usize,
    pub validation_rows: usize,
    pub train_positives: usize,
    pub unlabelled: usize,
    pub fit_seconds: f64,
    pub metrics: Vec<(String, f64)>,
    pub thresholds: Option<Thresholds>,
    pub calibration: Vec<CalibrationBin>,
    /// Mean absolute contribution per feature on (a sample of) the validation rows.
    pub importance: Vec<(String, f64)>,
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
        let mut text = format!("# {} v{} ({})\n\n", self.name, self.version, self.family);
        text += &format!(
            "{} training rows ({} positive), {} validation rows (the latest, a cut in time), {} observations left out for want of a label; fit in {:.2} s.\n\n",
            self.train_rows,
            self.train_positives,
            self.validation_rows,
            self.unlabelled,
            self.fit_seconds
        );
        text += "## Hold-out metrics\n\n| metric | value |\n|---|---|\n";
        for (metric, value) in &self.metrics {
            text += &format!("| {metric} | {value:.4} |\n");
        }
        if let Some(thresholds) = &self.thresholds {
            text += &format!("\n## Decisions\n\n{thresholds}\n");
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
        text
    }

    /// Writes `<stem>.report.json` and `<stem>.report.md` beside `artifact`.
    pub fn write_beside(&self, artifact: &Path) -> std::io::Result<()> {
        let json = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(artifact.with_extension("report.json"), json)?;
        std::fs::write(artifact.with_extension("report.md"), self.markdown())
    }
}
