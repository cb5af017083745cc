//! PNG plots beside a training report: ROC and precision-recall curves and a
//! calibration plot for classifiers, predicted against actual for regression, and the
//! features the model leans on for both. Text is drawn with a font compiled into the
//! binary (DejaVu Sans, shipped in training/fonts) so no system font is needed.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::prelude::*;

use super::evaluate::{CalibrationBin, pr_auc, roc_auc};
use crate::model::decision::Thresholds;

pub(crate) const FONT: &str = "sans-serif";
pub(crate) const SIZE: (u32, u32) = (800, 600);

pub(crate) fn register_font() -> Result<(), PlotError> {
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

pub(crate) fn failed<E: std::fmt::Display>(error: E) -> PlotError {
    PlotError(error.to_string())
}

/// Points of a curve through (x, y), from the scores sorted high to low: each distinct
/// score is a threshold. About 500 points are kept, and always the points of the
/// `marked` thresholds, so a marked threshold lies on the curve drawn (a precision-recall
/// curve is not straight between two kept points: its marks were drawn off it).
fn sweep(
    scores: &[f64],
    labels: &[f64],
    marked: &[f64],
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
        // The last row at or above a marked threshold: its point is the mark's.
        let marks = marked.iter().any(|t| {
            scores[*index] >= *t && order.get(rank + 1).is_none_or(|next| scores[*next] < *t)
        });
        if boundary && (due || marks) {
            points.push(point(true_positives, false_positives, positives, negatives));
            last_kept = Some(rank);
        }
    }
    points
}

/// A chart on the unit square: curve pieces, an optional grey baseline with its
/// legend label, and labelled dots.
struct UnitChart<'a> {
    title: String,
    axes: (&'a str, &'a str),
    /// Each piece is drawn as its own line (so gaps stay gaps).
    pieces: Vec<Vec<(f64, f64)>>,
    baseline: Option<(Vec<(f64, f64)>, String)>,
    /// Threshold marks: a dot each in its own colour, named in the legend rather than
    /// beside the dot (two close thresholds wrote their labels over each other's dots).
    marks: Vec<Mark>,
    /// Dots with a short text beside them (a calibration bin and its row count).
    counted: Vec<Counted>,
}

/// A threshold's point on a curve.
#[derive(Debug, Clone, PartialEq)]
struct Mark {
    at: (f64, f64),
    label: String,
    colour: RGBColor,
}

/// A dot sized by its weight, with its text.
#[derive(Debug, Clone, PartialEq)]
struct Counted {
    at: (f64, f64),
    radius: i32,
    text: String,
}

/// Where a dot's text goes, in pixels from the dot: to its right, or to its left near
/// the right edge (it was cut off there), and below it near the top (it ran into the
/// title).
fn text_offset((x, y): (f64, f64), radius: i32, text: &str) -> (i32, i32) {
    // DejaVu Sans at 14 px: about 8 px per character.
    let width = 8 * text.chars().count() as i32;
    let dx = if x > 0.8 {
        -radius - 4 - width
    } else {
        radius + 4
    };
    let dy = if y > 0.9 { radius + 4 } else { -radius - 14 };
    (dx, dy)
}

fn draw_unit_chart(path: &Path, chart_spec: &UnitChart) -> Result<(), PlotError> {
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(failed)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(&chart_spec.title, (FONT, 22))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..1.0, 0.0..1.0)
        .map_err(failed)?;
    chart
        .configure_mesh()
        .x_desc(chart_spec.axes.0)
        .y_desc(chart_spec.axes.1)
        .label_style((FONT, 14))
        .draw()
        .map_err(failed)?;
    if let Some((line, label)) = &chart_spec.baseline {
        chart
            .draw_series(LineSeries::new(line.iter().copied(), BLACK.mix(0.4)))
            .map_err(failed)?
            .label(label)
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK.mix(0.4)));
    }
    for piece in &chart_spec.pieces {
        chart
            .draw_series(LineSeries::new(piece.iter().copied(), BLUE.stroke_width(2)))
            .map_err(failed)?;
    }
    chart
        .draw_series(chart_spec.counted.iter().map(|dot| {
            EmptyElement::at(dot.at)
                + Circle::new((0, 0), dot.radius, RED.filled())
                + Text::new(
                    dot.text.clone(),
                    text_offset(dot.at, dot.radius, &dot.text),
                    (FONT, 14),
                )
        }))
        .map_err(failed)?;
    for mark in &chart_spec.marks {
        let colour = mark.colour;
        chart
            .draw_series(std::iter::once(Circle::new(mark.at, 6, colour.filled())))
            .map_err(failed)?
            .label(&mark.label)
            .legend(move |(x, y)| Circle::new((x + 10, y), 6, colour.filled()));
    }
    if chart_spec.baseline.is_some() || !chart_spec.marks.is_empty() {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK.mix(0.3))
            .label_font((FONT, 14))
            .draw()
            .map_err(failed)?;
    }
    root.present().map_err(failed)
}

/// True and false positives at or above `threshold`, with the class totals.
fn counts_at(scores: &[f64], labels: &[f64], threshold: f64) -> (f64, f64, f64, f64) {
    let (mut tp, mut fp, mut p) = (0.0, 0.0, 0.0);
    for (score, label) in scores.iter().zip(labels) {
        let positive = *label > 0.5;
        p += f64::from(u8::from(positive));
        if *score >= threshold {
            if positive {
                tp += 1.0;
            } else {
                fp += 1.0;
            }
        }
    }
    (tp, fp, p, labels.len() as f64 - p)
}

fn cut_colour(name: &str) -> RGBColor {
    match name {
        "block" => RGBColor(200, 0, 0),
        _ => RGBColor(240, 150, 0),
    }
}

/// The chosen thresholds as named cut points.
fn cuts(thresholds: Option<&Thresholds>) -> Vec<(&'static str, f64)> {
    let mut cuts = Vec::new();
    if let Some(t) = thresholds {
        cuts.push(("review", t.review));
        if let Some(block) = t.block {
            cuts.push(("block", block));
        }
    }
    cuts
}

fn calibration_plot(path: &Path, title: &str, bins: &[CalibrationBin]) -> Result<(), PlotError> {
    // Only neighbouring bins are joined: a line across an empty bin would claim a
    // calibration nobody measured.
    let mut pieces: Vec<Vec<(f64, f64)>> = Vec::new();
    let mut previous_upper = None;
    for bin in bins {
        let at = (bin.mean_predicted, bin.observed_rate);
        match pieces.last_mut() {
            Some(piece) if previous_upper == Some(bin.lower) => piece.push(at),
            _ => pieces.push(vec![at]),
        }
        previous_upper = Some(bin.upper);
    }
    // Bigger dots for bins with more rows, each with its count: a bin of 5 rows says little.
    let counted = bins
        .iter()
        .map(|b| Counted {
            at: (b.mean_predicted, b.observed_rate),
            radius: 3 + ((b.count as f64).log10().max(0.0) * 2.0) as i32,
            text: format!("n={}", b.count),
        })
        .collect();
    draw_unit_chart(
        path,
        &UnitChart {
            title: title.to_string(),
            axes: ("mean predicted probability", "observed positive rate"),
            pieces,
            baseline: Some((vec![(0.0, 0.0), (1.0, 1.0)], "perfectly calibrated".into())),
            marks: Vec::new(),
            counted,
        },
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

/// The ROC curve with the thresholds marked on it.
fn roc_chart(inputs: &PlotInputs) -> UnitChart<'static> {
    let (scores, truth) = (inputs.scores, inputs.truth);
    let marks = cuts(inputs.thresholds);
    let at: Vec<f64> = marks.iter().map(|(_, t)| *t).collect();
    let mut roc = vec![(0.0, 0.0)];
    roc.extend(sweep(scores, truth, &at, |tp, fp, p, n| {
        (fp / n.max(1.0), tp / p.max(1.0))
    }));
    UnitChart {
        title: format!(
            "{}: ROC (hold-out), AUC {:.4}",
            inputs.title,
            roc_auc(scores, truth)
        ),
        axes: ("false positive rate", "true positive rate"),
        pieces: vec![roc],
        baseline: Some((vec![(0.0, 0.0), (1.0, 1.0)], "chance (AUC 0.5)".into())),
        marks: marks
            .iter()
            .map(|(name, t)| {
                let (tp, fp, p, n) = counts_at(scores, truth, *t);
                let (x, y) = (fp / n.max(1.0), tp / p.max(1.0));
                Mark {
                    at: (x, y),
                    label: format!("{name} >= {t:.3}: FPR {x:.4}, TPR {y:.4}"),
                    colour: cut_colour(name),
                }
            })
            .collect(),
        counted: Vec::new(),
    }
}

/// The precision-recall curve with the thresholds marked on it.
fn pr_chart(inputs: &PlotInputs) -> UnitChart<'static> {
    let (scores, truth) = (inputs.scores, inputs.truth);
    let marks = cuts(inputs.thresholds);
    let at: Vec<f64> = marks.iter().map(|(_, t)| *t).collect();
    let prevalence = counts_at(scores, truth, f64::NEG_INFINITY).2 / truth.len().max(1) as f64;
    UnitChart {
        title: format!(
            "{}: precision-recall (hold-out), AP {:.4}",
            inputs.title,
            pr_auc(scores, truth)
        ),
        axes: ("recall", "precision"),
        pieces: vec![sweep(scores, truth, &at, |tp, fp, p, _| {
            (tp / p.max(1.0), tp / (tp + fp))
        })],
        baseline: Some((
            vec![(0.0, prevalence), (1.0, prevalence)],
            format!("chance (positive rate {prevalence:.4})"),
        )),
        marks: marks
            .iter()
            .map(|(name, t)| {
                let (tp, fp, p, _) = counts_at(scores, truth, *t);
                let precision = if tp + fp > 0.0 { tp / (tp + fp) } else { 1.0 };
                let recall = tp / p.max(1.0);
                Mark {
                    at: (recall, precision),
                    label: format!(
                        "{name} >= {t:.3}: recall {recall:.4}, precision {precision:.4}"
                    ),
                    colour: cut_colour(name),
                }
            })
            .collect(),
        counted: Vec::new(),
    }
}

/// What a report's plots are drawn from.
pub struct PlotInputs<'a> {
    pub title: &'a str,
    pub classifier: bool,
    pub scores: &'a [f64],
    pub truth: &'a [f64],
    pub calibration: &'a [CalibrationBin],
    pub importance: &'a [(String, f64)],
    /// Marked on the ROC and precision-recall curves.
    pub thresholds: Option<&'a Thresholds>,
}

/// Draws the plots as `<stem>.<kind>.png` beside `artifact`; returns their paths.
pub fn draw_beside(artifact: &Path, inputs: &PlotInputs) -> Result<Vec<PathBuf>, PlotError> {
    register_font()?;
    let path = |kind: &str| artifact.with_extension(format!("{kind}.png"));
    let mut written = Vec::new();
    if inputs.classifier {
        draw_unit_chart(&path("roc"), &roc_chart(inputs))?;
        written.push(path("roc"));
        draw_unit_chart(&path("pr"), &pr_chart(inputs))?;
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
        let points = sweep(&scores, &labels, &[], |tp, fp, p, n| (fp / n, tp / p));
        // Ties (the two 0.8s) make one point, not two.
        assert_eq!(
            points,
            vec![(0.0, 1.0 / 3.0), (0.5, 2.0 / 3.0), (0.5, 1.0), (1.0, 1.0)]
        );
    }

    #[test]
    fn threshold_marks_count_rows_at_or_above() {
        let scores = [0.9, 0.8, 0.8, 0.3, 0.1];
        let labels = [1.0, 1.0, 0.0, 1.0, 0.0];
        // At 0.8: two positives and one negative flagged, of three and two.
        assert_eq!(counts_at(&scores, &labels, 0.8), (2.0, 1.0, 3.0, 2.0));
        assert_eq!(counts_at(&scores, &labels, 0.95), (0.0, 0.0, 3.0, 2.0));
        let both = cuts(Some(&Thresholds {
            review: 0.2,
            block: Some(0.7),
        }));
        assert_eq!(both, vec![("review", 0.2), ("block", 0.7)]);
        assert!(cuts(None).is_empty());
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
                thresholds: Some(&Thresholds {
                    review: 0.4,
                    block: Some(0.8),
                }),
            },
        )
        .unwrap();
        assert_eq!(written.len(), 4);
        for path in written {
            let bytes = std::fs::read(&path).unwrap();
            assert_eq!(&bytes[1..4], b"PNG", "{}", path.display());
        }
    }

    /// The marks are points of the curve drawn, even where the curve keeps one point
    /// in many (5,000 rows: every 10th); before, precision-recall marks lay off it.
    #[test]
    fn threshold_marks_lie_on_the_curves() {
        // A deterministic jumble: scores spread over (0, 1), positives likelier high.
        let scores: Vec<f64> = (0..5000u32)
            .map(|i| f64::from((i * 7919) % 5000) / 5000.0)
            .collect();
        let truth: Vec<f64> = scores
            .iter()
            .enumerate()
            .map(|(i, s)| f64::from(u8::from(*s > 0.9 || (*s > 0.5 && i % 7 == 0))))
            .collect();
        let thresholds = Thresholds {
            review: 0.6123,
            block: Some(0.6131),
        };
        let inputs = PlotInputs {
            title: "t",
            classifier: true,
            scores: &scores,
            truth: &truth,
            calibration: &[],
            importance: &[],
            thresholds: Some(&thresholds),
        };
        for chart in [roc_chart(&inputs), pr_chart(&inputs)] {
            assert_eq!(chart.marks.len(), 2);
            for mark in &chart.marks {
                assert!(
                    chart.pieces[0].contains(&mark.at),
                    "{}: {mark:?} is not on the curve",
                    chart.title
                );
            }
            // Close thresholds: told apart in the legend, with their own colours.
            assert_ne!(chart.marks[0].colour, chart.marks[1].colour);
            assert!(chart.marks[0].label.starts_with("review >= 0.612"));
            assert!(chart.marks[1].label.starts_with("block >= 0.613"));
        }
    }

    /// Dot texts stay inside the plot: left of a dot near the right edge, below one
    /// near the top (the calibration plot's `n=` labels ran into the title and off the
    /// edge).
    #[test]
    fn dot_texts_turn_away_from_the_edges() {
        let (dx, dy) = text_offset((0.95, 0.97), 5, "n=1234");
        assert!(dx < -40 && dy > 0, "{dx} {dy}");
        let (dx, dy) = text_offset((0.2, 0.3), 5, "n=12");
        assert!(dx > 0 && dy < 0, "{dx} {dy}");
    }
}
