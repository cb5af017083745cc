//! The segments artifact and its report: the sweep of k (inertia and silhouette, as a
//! table and a plot) to help choose k, and each segment's size and feature means.

use std::path::{Path, PathBuf};

use plotters::prelude::*;
use serde::Serialize;

use super::MiningError;
use super::segments::{Fitted, Rows, SegmentsConfig, SweepPoint};
use crate::definitions::fnv64;
use crate::model::artifact::{self, ArtifactBody, Provenance, SigningKey};
use crate::train::plots::{FONT, PlotError, SIZE, failed, register_font};

#[derive(Debug, Clone, Serialize)]
pub struct SegmentsReport {
    pub name: String,
    pub version: u32,
    pub entity: String,
    pub rows: usize,
    pub as_of_ms: i64,
    pub config: SegmentsConfig,
    /// linfa's inertia of the chosen k: the mean squared distance of a row to its
    /// centroid, in standardised units.
    pub inertia: f64,
    pub sweep: Vec<SweepPoint>,
    /// Per segment: its size and each feature's mean in its own units.
    pub profiles: Vec<(usize, Vec<Option<f64>>)>,
    /// Entities idle past every window at the end (segmented on empty windows).
    pub idle: usize,
    /// What a reader should know before trusting the segments.
    pub warnings: Vec<String>,
}

/// The report's warnings about `rows`: features empty for most entities.
pub fn warnings(rows: &Rows, config: &SegmentsConfig) -> Vec<String> {
    super::segments::mostly_empty(rows, config)
        .into_iter()
        .map(|(feature, share)| {
            format!(
                "{feature} is missing or 0 for {:.0}% of the {} {} entities: it separates almost nothing (does the history hold its events?); consider leaving it out",
                share * 100.0,
                rows.rows.len(),
                config.entity
            )
        })
        .collect()
}

impl SegmentsReport {
    pub fn markdown(&self) -> String {
        let idle = match self.idle {
            0 => String::new(),
            idle => format!(
                " ({idle} of them idle past every window: empty windows, as the server reads them now)"
            ),
        };
        let mut text = format!(
            "# {} v{}: {} segments of {}\n\n{} {} entities{idle}, features as of {} ms; each clipped to its {} and {} quantiles; k-means (linfa, k-means++, seed {}, {} runs).\n\n",
            self.name,
            self.version,
            self.config.k,
            self.entity,
            self.rows,
            self.entity,
            self.as_of_ms,
            self.config.winsorize,
            1.0 - self.config.winsorize,
            self.config.seed,
            self.config.n_runs
        );
        if !self.warnings.is_empty() {
            text += "## Warnings\n\n";
            for warning in &self.warnings {
                text += &format!("- {warning}\n");
            }
            text += "\n";
        }
        text += "## Choosing k\n\nInertia: the mean squared distance of an entity to its segment's centre (standardised units; lower is tighter). Silhouette: how much nearer an entity is to its own segment than to the next (-1 to 1; higher is better separated).\n\n| k | inertia | silhouette |\n|---|---|---|\n";
        for point in &self.sweep {
            text += &format!(
                "| {} | {:.4} | {:.4} |\n",
                point.k, point.inertia, point.silhouette
            );
        }
        text += &format!(
            "\n## Segments (k = {}, inertia {:.4})\n\n| segment | size | {} |\n|---|---|{}\n",
            self.config.k,
            self.inertia,
            self.config.features.join(" | "),
            "---|".repeat(self.config.features.len())
        );
        for (segment, (size, means)) in self.profiles.iter().enumerate() {
            let cells: Vec<String> = means
                .iter()
                .map(|m| m.map_or("-".to_string(), |m| format!("{m:.3}")))
                .collect();
            text += &format!("| {segment} | {size} | {} |\n", cells.join(" | "));
        }
        text
    }
}

/// Writes the artifact (`<models_dir>/<name>/<name>-v<N>.json`), its report and the
/// sweep plot; returns the report and the files.
#[allow(clippy::too_many_arguments)]
pub fn write(
    rows: &Rows,
    fitted: &Fitted,
    config: &SegmentsConfig,
    models_dir: &Path,
    created_at_ms: i64,
    definitions_fingerprint: u64,
    signing_key: Option<&SigningKey>,
) -> Result<(SegmentsReport, Vec<PathBuf>), MiningError> {
    let dir = models_dir.join(&config.name);
    let version = crate::train::pipeline::next_version(&dir, &config.name);
    let path = dir.join(format!("{}-v{version}.json", config.name));
    let report = SegmentsReport {
        name: config.name.clone(),
        version,
        entity: config.entity.clone(),
        rows: rows.rows.len(),
        as_of_ms: rows.as_of_ms,
        config: config.clone(),
        inertia: fitted.inertia,
        sweep: fitted.sweep.clone(),
        profiles: fitted.profiles(rows, config.k),
        idle: rows.idle,
        warnings: warnings(rows, config),
    };
    let error = |path: &Path, reason: String| MiningError::Write {
        path: path.display().to_string(),
        reason,
    };
    std::fs::create_dir_all(&dir).map_err(|e| error(&dir, e.to_string()))?;
    let json = path.with_extension("report.json");
    let text = serde_json::to_string_pretty(&report).map_err(|e| error(&json, e.to_string()))?;
    std::fs::write(&json, text).map_err(|e| error(&json, e.to_string()))?;
    let markdown = path.with_extension("report.md");
    std::fs::write(&markdown, report.markdown()).map_err(|e| error(&markdown, e.to_string()))?;
    let plot = path.with_extension("sweep.png");
    sweep_plot(
        &plot,
        &format!("{} v{version}", config.name),
        &fitted.sweep,
        config.k,
    )
    .map_err(|e| error(&plot, e.to_string()))?;
    let mut fingerprint = Vec::new();
    for (id, row) in rows.ids.iter().zip(&rows.rows) {
        fingerprint.extend_from_slice(id.as_bytes());
        for value in row {
            fingerprint.extend_from_slice(&value.unwrap_or(f64::NAN).to_le_bytes());
        }
    }
    let body = ArtifactBody {
        name: config.name.clone(),
        version,
        created_at_ms,
        definitions_fingerprint,
        trained_from_ms: rows.as_of_ms,
        trained_to_ms: rows.as_of_ms,
        data_fingerprint: fnv64(&fingerprint),
        metrics: vec![
            ("inertia".into(), fitted.inertia),
            ("rows".into(), rows.rows.len() as f64),
        ],
        thresholds: None,
        scored_event: None,
        comparison: None,
        provenance: Some(Provenance {
            hyperparameters: serde_json::to_value(config).unwrap_or_default(),
            flags: Vec::new(),
            holdout: 0.0,
            split: "time".into(),
            seed: config.seed,
            row_order: false,
            train_rows: rows.rows.len(),
            validation_rows: 0,
            train_positives: None,
            validation_positives: None,
            validated_from_ms: rows.as_of_ms,
            validated_to_ms: rows.as_of_ms,
        }),
        model: fitted.model(config),
    };
    artifact::save_signed(&path, body, signing_key)?;
    Ok((report, vec![path, json, markdown, plot]))
}

/// Inertia (left axis) and silhouette (right axis) against k, with the k fitted marked
/// (before, nothing on the plot said which k the artifact holds).
fn sweep_plot(
    path: &Path,
    title: &str,
    sweep: &[SweepPoint],
    chosen: usize,
) -> Result<(), PlotError> {
    register_font()?;
    let (low, high) = (
        sweep.first().map_or(2, |p| p.k),
        sweep.last().map_or(2, |p| p.k),
    );
    let top = sweep.iter().map(|p| p.inertia).fold(1.0f64, f64::max) * 1.05;
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(failed)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("{title}: choosing k"), (FONT, 24))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(80)
        .right_y_label_area_size(60)
        .build_cartesian_2d(low as f64 - 0.5..high as f64 + 0.5, 0.0..top)
        .map_err(failed)?
        .set_secondary_coord(low as f64 - 0.5..high as f64 + 0.5, -1.0..1.0);
    chart
        .configure_mesh()
        .x_desc("k")
        .y_desc("inertia (blue)")
        .label_style((FONT, 14))
        .draw()
        .map_err(failed)?;
    chart
        .configure_secondary_axes()
        .y_desc("silhouette (red)")
        .label_style((FONT, 14))
        .draw()
        .map_err(failed)?;
    chart
        .draw_series(LineSeries::new(
            sweep.iter().map(|p| (p.k as f64, p.inertia)),
            BLUE.stroke_width(2),
        ))
        .map_err(failed)?;
    chart
        .draw_secondary_series(LineSeries::new(
            sweep.iter().map(|p| (p.k as f64, p.silhouette)),
            RED.stroke_width(2),
        ))
        .map_err(failed)?;
    let k = chosen as f64;
    chart
        .draw_series(std::iter::once(PathElement::new(
            [(k, 0.0), (k, top)],
            BLACK.mix(0.6).stroke_width(2),
        )))
        .map_err(failed)?;
    chart
        .draw_series(std::iter::once(Text::new(
            format!("chosen k = {chosen}"),
            (k + 0.1, top * 0.95),
            (FONT, 15),
        )))
        .map_err(failed)?;
    root.present().map_err(failed)
}
