//! What decision thresholds do on the validation rows: precision, recall and flag rate
//! at each threshold (the chosen review and block thresholds and a grid around them),
//! and how often each segment of customers (new, without device, without ip, paying
//! from abroad, returning) is allowed, reviewed or blocked. A risk team reads these
//! before switching a version on.

use serde::Serialize;

use crate::model::decision::{Decision, Thresholds};

/// One threshold: rows scoring at or above it are flagged.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OperatingPoint {
    /// `review`, `block`, or empty for a grid point.
    pub label: String,
    pub threshold: f64,
    /// Share of flagged rows that are positive (`None` when nothing is flagged).
    pub precision: Option<f64>,
    /// Share of positive rows that are flagged.
    pub recall: f64,
    /// Share of all rows that are flagged.
    pub flag_rate: f64,
}

/// The chosen thresholds plus the grid 0.1, 0.2, ... 0.9, in ascending threshold order.
pub fn operating_points(
    scores: &[f64],
    labels: &[f64],
    thresholds: Option<&Thresholds>,
) -> Vec<OperatingPoint> {
    let mut cuts: Vec<(String, f64)> = (1..10).map(|i| (String::new(), i as f64 / 10.0)).collect();
    if let Some(t) = thresholds {
        cuts.push(("review".into(), t.review));
        if let Some(block) = t.block {
            cuts.push(("block".into(), block));
        }
    }
    cuts.sort_by(|a, b| a.1.total_cmp(&b.1).then_with(|| b.0.cmp(&a.0)));
    let positives = labels.iter().filter(|l| **l > 0.5).count();
    cuts.into_iter()
        .map(|(label, threshold)| {
            let (flagged, hits) = scores
                .iter()
                .zip(labels)
                .filter(|(s, _)| **s >= threshold)
                .fold((0usize, 0usize), |(f, h), (_, l)| {
                    (f + 1, h + usize::from(*l > 0.5))
                });
            OperatingPoint {
                label,
                threshold,
                precision: (flagged > 0).then(|| hits as f64 / flagged as f64),
                recall: if positives == 0 {
                    0.0
                } else {
                    hits as f64 / positives as f64
                },
                flag_rate: if scores.is_empty() {
                    0.0
                } else {
                    flagged as f64 / scores.len() as f64
                },
            }
        })
        .collect()
}

/// Decision rates of one segment of the validation rows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SegmentRates {
    pub segment: &'static str,
    pub rows: usize,
    pub positives: usize,
    pub allow: f64,
    pub review: f64,
    pub block: f64,
}

/// A segment: its name, the column it reads, and whether a row's value puts it in.
type SegmentRule = (&'static str, &'static str, fn(Option<f64>) -> bool);

/// Segments of payments by what the request and the history say about the customer.
/// Each is reported only when the model reads its column.
const SEGMENTS: [SegmentRule; 6] = [
    ("all", "", |_| true),
    ("new user (no history)", "user_age_seconds", |v| v.is_none()),
    ("returning user (has history)", "user_age_seconds", |v| {
        v.is_some()
    }),
    ("no device in the request", "req_has_device", |v| {
        v == Some(0.0)
    }),
    ("no ip in the request", "req_has_ip", |v| v == Some(0.0)),
    (
        "foreign ip (ip country differs from billing)",
        "req_country_mismatch",
        |v| v == Some(1.0),
    ),
];

/// Decision rates per segment, for rows whose values are in `columns` order.
pub fn segment_rates(
    columns: &[String],
    rows: &[&[Option<f64>]],
    scores: &[f64],
    labels: &[f64],
    thresholds: &Thresholds,
) -> Vec<SegmentRates> {
    SEGMENTS
        .iter()
        .filter_map(|(segment, column, belongs)| {
            let position = if column.is_empty() {
                None
            } else {
                Some(columns.iter().position(|c| c == column)?)
            };
            let mut counts = [0usize; 3];
            let (mut members, mut positives) = (0, 0);
            for ((row, score), label) in rows.iter().zip(scores).zip(labels) {
                if !belongs(position.and_then(|p| row[p])) {
                    continue;
                }
                members += 1;
                positives += usize::from(*label > 0.5);
                counts[match thresholds.decide(*score) {
                    Decision::Allow => 0,
                    Decision::Review => 1,
                    Decision::Block => 2,
                }] += 1;
            }
            let rate = |n: usize| {
                if members == 0 {
                    0.0
                } else {
                    n as f64 / members as f64
                }
            };
            Some(SegmentRates {
                segment,
                rows: members,
                positives,
                allow: rate(counts[0]),
                review: rate(counts[1]),
                block: rate(counts[2]),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operating_points_count_what_each_threshold_flags() {
        let scores = [0.95, 0.85, 0.55, 0.35, 0.15, 0.05];
        let labels = [1.0, 0.0, 1.0, 0.0, 1.0, 0.0];
        let thresholds = Thresholds {
            review: 0.5,
            block: Some(0.9),
        };
        let points = operating_points(&scores, &labels, Some(&thresholds));
        let block = points.iter().find(|p| p.label == "block").unwrap();
        // Only 0.95 (a positive) is at or above 0.9.
        assert_eq!(block.precision, Some(1.0));
        assert!((block.recall - 1.0 / 3.0).abs() < 1e-12);
        assert!((block.flag_rate - 1.0 / 6.0).abs() < 1e-12);
        let review = points.iter().find(|p| p.label == "review").unwrap();
        // 0.95, 0.85, 0.55: two of three positive, two of three positives found.
        assert!((review.precision.unwrap() - 2.0 / 3.0).abs() < 1e-12);
        assert!((review.recall - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(review.flag_rate, 0.5);
        assert_eq!(points.len(), 11);
        assert!(points.windows(2).all(|w| w[0].threshold <= w[1].threshold));
        let top = points.last().unwrap();
        assert_eq!((top.label.as_str(), top.precision), ("", Some(1.0)));
    }

    #[test]
    fn segments_follow_their_columns_and_skip_those_the_model_lacks() {
        let columns = vec!["user_age_seconds".to_string(), "req_has_ip".to_string()];
        let rows: Vec<Vec<Option<f64>>> = vec![
            vec![None, Some(1.0)],
            vec![None, Some(0.0)],
            vec![Some(5.0), Some(0.0)],
            vec![Some(9.0), Some(1.0)],
        ];
        let rows: Vec<&[Option<f64>]> = rows.iter().map(Vec::as_slice).collect();
        let scores = [0.1, 0.6, 0.95, 0.2];
        let labels = [0.0, 0.0, 1.0, 0.0];
        let thresholds = Thresholds {
            review: 0.5,
            block: Some(0.9),
        };
        let rates = segment_rates(&columns, &rows, &scores, &labels, &thresholds);
        let names: Vec<&str> = rates.iter().map(|r| r.segment).collect();
        assert_eq!(
            names,
            [
                "all",
                "new user (no history)",
                "returning user (has history)",
                "no ip in the request"
            ]
        );
        let new = &rates[1];
        assert_eq!(
            (new.rows, new.allow, new.review, new.block),
            (2, 0.5, 0.5, 0.0)
        );
        let no_ip = &rates[3];
        assert_eq!((no_ip.rows, no_ip.positives), (2, 1));
        assert_eq!((no_ip.review, no_ip.block), (0.5, 0.5));
        assert_eq!(rates[0].rows, 4);
    }
}
