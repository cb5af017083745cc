//! PNG plots beside a training report: ROC and precision-recall curves and a
//! calibration plot for classifiers, predicted against actual for regression, and the
//! features the model leans on for both. Text is drawn with a font compiled into the
//! binary (DejaVu Sans, shipped in training/fonts) so no system font is needed.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::prelude::*;

use super::evaluate::CalibrationBin;

const FONT: &str = "sans-serif";
const SIZE: (u32, u32) = (800, 600);

fn register_font() -> Result<(), PlotError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let registered = *REGISTERED.get_or_init(|| {
        let bytes = include_bytes!("../../training/fonts/DejaVuSans.ttf");
        plotters::style::register_font(FONT, FontStyle::Normal, bytes).is_ok()
    });
    if registered {
        Ok(())
    } else {
        Err(PlotError("the built-in font did not load".into()))
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot draw the report plots: {0}")]
pub struct PlotError(String);

fn failed<E: std::fmt::Display>(error: E) -> PlotError {
    PlotError(error.to_string())
}

/// Points of a curve through (x, y), from the scores sorted high to low: each distinct
/// score is a threshold. At most ~500 points are kept.
fn sweep(
    scores: &[f64],
    labels: &[f64],
    point: impl Fn(f64, f64, f64, f64) -> (f64, f64),
) -> Vec<(f64, f64)> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|a, b| scores[*b].total_cmp(&scores[*a]));
    let positives = labels.iter().filter(|l| **l > 0.5).count() as f64;
    let negatives = labels.len() as f64 - positives;
    let step = (order.len() / 500).max(1);
    let (mut true_positives, mut false_positives) = (0.0, 0.0);
    let mut points = Vec::new();
    let mut last_kept: Option<usize> = None;
    for (rank, index) in order.iter().enumerate() {
        if labels[*index] > 0.5 {
            true_positives += 1.0;
        } else {
            false_positives += 1.0;
        }
        let boundary = order
            .get(rank + 1)
            .is_none_or(|next| scores[*next] != scores[*index]);
        let due = last_kept.is_none_or(|kept| rank - kept >= step) || rank + 1 == order.len();
        if boundary && due {
            points.push(point(true_positives, false_positives, positives, negatives));
            last_kept = Some(rank);
        }
    }
    points
}

/// A line through `series` on the unit square, optionally with the diagonal and with
/// dots of given radii.
fn curve(
    path: &Path,
    title: &str,
    axes: (&str, &str),
    series: &[(f64, f64)],
    diagonal: bool,
    dots: &[((f64, f64), i32)],
) -> Result<(), PlotError> {
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(failed)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT, 24))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..1.0, 0.0..1.0)
        .map_err(failed)?;
    chart
        .configure_mesh()
        .x_desc(axes.0)
        .y_desc(axes.1)
        .label_style((FONT, 14))
        .draw()
        .map_err(failed)?;
    if diagonal {
        chart
            .draw_series(LineSeries::new([(0.0, 0.0), (1.0, 1.0)], BLACK.mix(0.3)))
            .map_err(failed)?;
    }
    chart
        .draw_series(LineSeries::new(
            series.iter().copied(),
            BLUE.stroke_width(2),
        ))
        .map_err(failed)?;
    chart
        .draw_series(
            dots.iter()
                .map(|(at, radius)| Circle::new(*at, *radius, BLUE.filled())),
        )
        .map_err(failed)?;
    root.present().map_err(failed)
}

fn calibration_plot(path: &Path, title: &str, bins: &[CalibrationBin]) -> Result<(), PlotError> {
    let points: Vec<(f64, f64)> = bins
        .iter()
        .map(|b| (b.mean_predicted, b.observed_rate))
        .collect();
    // Bigger dots for bins with more rows: a bin of 5 rows says little.
    let dots: Vec<((f64, f64), i32)> = bins
        .iter()
        .zip(&points)
        .map(|(b, at)| (*at, 3 + ((b.count as f64).log10().max(0.0) * 2.0) as i32))
        .collect();
    curve(
        path,
        title,
        ("mean predicted probability", "observed positive rate"),
        &points,
        true,
        &dots,
    )
}

fn scatter(path: &Path, title: &str, predicted: &[f64], actual: &[f64]) -> Result<(), PlotError> {
    let high = predicted
        .iter()
        .chain(actual)
        .copied()
        .filter(|v| v.is_finite())
        .fold(1.0f64, f64::max);
    let low = predicted
        .iter()
        .chain(actual)
        .copied()
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::min);
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(failed)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT, 24))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(70)
        .build_cartesian_2d(low..high, low..high)
        .map_err(failed)?;
    chart
        .configure_mesh()
        .x_desc("predicted")
        .y_desc("actual")
        .label_style((FONT, 14))
        .draw()
        .map_err(failed)?;
    chart
        .draw_series(LineSeries::new([(low, low), (high, high)], BLACK.mix(0.3)))
        .map_err(failed)?;
    let step = (predicted.len() / 5000).max(1);
    chart
        .draw_series(
            predicted
                .iter()
                .zip(actual)
                .step_by(step)
                .map(|(p, a)| Circle::new((*p, *a), 2, BLUE.mix(0.4).filled())),
        )
        .map_err(failed)?;
    root.present().map_err(failed)
}

fn importance_plot(path: &Path, title: &str, ranked: &[(String, f64)]) -> Result<(), PlotError> {
    let root =
        BitMapBackend::new(path, (SIZE.0, 120 + 28 * ranked.len() as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(failed)?;
    let high = ranked.iter().map(|(_, v)| v.abs()).fold(1e-12, f64::max);
    let rows = ranked.len().max(1) as i32;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT, 24))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(260)
        .build_cartesian_2d(0.0..high * 1.05, (0..rows).into_segmented())
        .map_err(failed)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(ranked.len().max(1))
        .y_label_formatter(&|segment| match segment {
            // Row 0 is at the bottom; the strongest feature goes on top.
            SegmentValue::CenterOf(row) => ranked
                .get((rows - 1 - row) as usize)
                .map(|(name, _)| name.clone())
                .unwrap_or_default(),
            _ => String::new(),
        })
        .x_desc("mean |contribution| on hold-out rows")
        .label_style((FONT, 14))
        .draw()
        .map_err(failed)?;
    chart
        .draw_series(ranked.iter().enumerate().map(|(rank, (_, value))| {
            let row = rows - 1 - rank as i32;
            let mut bar = Rectangle::new(
                [
                    (0.0, SegmentValue::Exact(row)),
                    (value.abs(), SegmentValue::Exact(row + 1)),
                ],
                BLUE.mix(0.7).filled(),
            );
            bar.set_margin(3, 3, 0, 0);
            bar
        }))
        .map_err(failed)?;
    root.present().map_err(failed)
}

/// What a report's plots are drawn from.
pub struct PlotInputs<'a> {
    pub title: &'a str,
    pub classifier: bool,
    pub scores: &'a [f64],
    pub truth: &'a [f64],
    pub calibration: &'a [CalibrationBin],
    pub importance: &'a [(String, f64)],
}

/// Draws the plots as `<stem>.<kind>.png` beside `artifact`; returns their paths.
pub fn draw_beside(artifact: &Path, inputs: &PlotInputs) -> Result<Vec<PathBuf>, PlotError> {
    register_font()?;
    let path = |kind: &str| artifact.with_extension(format!("{kind}.png"));
    let mut written = Vec::new();
    if inputs.classifier {
        let roc = sweep(inputs.scores, inputs.truth, |tp, fp, p, n| {
            (fp / n.max(1.0), tp / p.max(1.0))
        });
        let mut roc_points = vec![(0.0, 0.0)];
        roc_points.extend(roc);
        curve(
            &path("roc"),
            &format!("{}: ROC (hold-out)", inputs.title),
            ("false positive rate", "true positive rate"),
            &roc_points,
            true,
            &[],
        )?;
        written.push(path("roc"));
        let pr = sweep(inputs.scores, inputs.truth, |tp, fp, p, _| {
            (tp / p.max(1.0), tp / (tp + fp))
        });
        curve(
            &path("pr"),
            &format!("{}: precision-recall (hold-out)", inputs.title),
            ("recall", "precision"),
            &pr,
            false,
            &[],
        )?;
        written.push(path("pr"));
        calibration_plot(
            &path("calibration"),
            &format!("{}: calibration (hold-out)", inputs.title),
            inputs.calibration,
        )?;
        written.push(path("calibration"));
    } else {
        scatter(
            &path("predicted"),
            &format!("{}: predicted vs actual (hold-out)", inputs.title),
            inputs.scores,
            inputs.truth,
        )?;
        written.push(path("predicted"));
    }
    importance_plot(
        &path("importance"),
        &format!("{}: what the model leans on", inputs.title),
        inputs.importance,
    )?;
    written.push(path("importance"));
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roc_sweep_runs_from_the_strictest_threshold_to_everything() {
        let scores = [0.9, 0.8, 0.8, 0.3, 0.1];
        let labels = [1.0, 1.0, 0.0, 1.0, 0.0];
        let points = sweep(&scores, &labels, |tp, fp, p, n| (fp / n, tp / p));
        // Ties (the two 0.8s) make one point, not two.
        assert_eq!(
            points,
            vec![(0.0, 1.0 / 3.0), (0.5, 2.0 / 3.0), (0.5, 1.0), (1.0, 1.0)]
        );
    }

    #[test]
    fn plots_are_written_as_png() {
        let dir = tempfile::tempdir().unwrap();
        let artifact = dir.path().join("fraud-v1.json");
        let scores: Vec<f64> = (0..200).map(|i| f64::from(i) / 200.0).collect();
        let truth: Vec<f64> = (0..200).map(|i| f64::from(u8::from(i % 3 == 0))).collect();
        let calibration = super::super::evaluate::calibration(&scores, &truth, 10);
        let written = draw_beside(
            &artifact,
            &PlotInputs {
                title: "fraud v1",
                classifier: true,
                scores: &scores,
                truth: &truth,
                calibration: &calibration,
                importance: &[("a".into(), 0.5), ("b".into(), -0.2)],
            },
        )
        .unwrap();
        assert_eq!(written.len(), 4);
        for path in written {
            let bytes = std::fs::read(&path).unwrap();
            assert_eq!(&bytes[1..4], b"PNG", "{}", path.display());
        }
    }
}
