//! Choosing decision thresholds on validation scores by a rule from the training config:
//! block where precision reaches `block_precision` (the lowest such threshold, so as
//! much fraud as possible is blocked at that precision), review from where recall
//! reaches `review_recall`. Review always lies strictly below block: when the recall
//! point is at or above the block threshold, review moves down to the next lower
//! validation score (so some payments are reviewed rather than none), or to half the
//! block threshold when no validation score lies below it.
//!
//! With `review_rate` set, review is instead sized by workload: the highest-scored
//! `review_rate` share of validation rows below block are reviewed (what a review team
//! can staff for), so the band is never empty by accident of the recall point.

use super::error::TrainError;
use crate::model::decision::Thresholds;

#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ThresholdRule {
    pub block_precision: f64,
    pub review_recall: f64,
    /// Review this share of payments (those scored highest below block), in place of
    /// `review_recall`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub review_rate: Option<f64>,
}

impl Default for ThresholdRule {
    fn default() -> Self {
        ThresholdRule {
            block_precision: 0.9,
            review_recall: 0.8,
            review_rate: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CheckedThresholdRule(ThresholdRule);

impl ThresholdRule {
    pub fn check(self) -> Result<CheckedThresholdRule, TrainError> {
        if let Some(rate) = self.review_rate
            && !(rate > 0.0 && rate < 1.0)
        {
            return Err(TrainError::InvalidParam {
                name: "review_rate",
                reason: format!("must be a share in (0, 1), e.g. 0.02, got {rate}"),
            });
        }
        for (name, value) in [
            ("block_precision", self.block_precision),
            ("review_recall", self.review_recall),
        ] {
            if !(value > 0.0 && value <= 1.0) {
                return Err(TrainError::InvalidParam {
                    name,
                    reason: format!("must be in (0, 1], got {value}"),
                });
            }
        }
        Ok(CheckedThresholdRule(self))
    }
}

/// Thresholds from validation `scores` and 0/1 `labels`; `None` without positives.
pub fn choose(scores: &[f64], labels: &[f64], rule: CheckedThresholdRule) -> Option<Thresholds> {
    let rule = rule.0;
    let positives = labels.iter().filter(|l| **l > 0.5).count() as f64;
    if positives == 0.0 {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|a, b| scores[*b].total_cmp(&scores[*a]));
    let (mut hits, mut block, mut review) = (0.0, None, None);
    let mut seen = 0usize;
    let mut index = 0;
    while index < order.len() {
        // All rows with the same score fall on the same side of a threshold.
        let score = scores[order[index]];
        while index < order.len() && scores[order[index]] == score {
            hits += labels[order[index]];
            seen += 1;
            index += 1;
        }
        if hits / seen as f64 >= rule.block_precision {
            block = Some(score);
        }
        if review.is_none() && hits / positives >= rule.review_recall {
            review = Some(score);
        }
    }
    if let Some(rate) = rule.review_rate {
        let review = by_rate(scores, block, rate);
        return Some(Thresholds { review, block });
    }
    // Recall reaches 1 at the lowest score, so `review` is always found.
    let review = review.unwrap_or(0.0);
    let review = match block {
        Some(block) if review >= block => scores
            .iter()
            .copied()
            .filter(|s| *s < block)
            .max_by(f64::total_cmp)
            .unwrap_or(block / 2.0),
        _ => review,
    };
    Some(Thresholds { review, block })
}

/// The review threshold that puts the `rate` share of `scores` (the highest below
/// `block`) in the review band; rows tied at the threshold all fall inside it.
fn by_rate(scores: &[f64], block: Option<f64>, rate: f64) -> f64 {
    let mut below: Vec<f64> = scores
        .iter()
        .copied()
        .filter(|s| block.is_none_or(|block| *s < block))
        .collect();
    below.sort_by(|a, b| b.total_cmp(a));
    let wanted = (rate * scores.len() as f64).ceil() as usize;
    match below.get(wanted.clamp(1, below.len().max(1)) - 1) {
        Some(score) => *score,
        // Nothing scored below block: nothing to review.
        None => block.map_or(0.0, |block| block / 2.0),
    }
}

/// The review band on `scores`: how many rows a model with `thresholds` would review.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct ReviewBand {
    pub rows: usize,
    /// `rows` over all scored rows.
    pub share: f64,
    /// Of them, how many were positive (fraud).
    pub positives: usize,
}

impl ReviewBand {
    pub fn measure(scores: &[f64], labels: &[f64], thresholds: &Thresholds) -> ReviewBand {
        let in_band: Vec<usize> = (0..scores.len())
            .filter(|i| thresholds.decide(scores[*i]) == crate::model::decision::Decision::Review)
            .collect();
        ReviewBand {
            rows: in_band.len(),
            share: in_band.len() as f64 / scores.len().max(1) as f64,
            positives: in_band.iter().filter(|i| labels[**i] > 0.5).count(),
        }
    }

    /// Fewer than one row in a thousand: a review team would see next to nothing.
    pub fn nearly_empty(&self) -> bool {
        self.share < 0.001
    }
}

impl std::fmt::Display for ReviewBand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "review band: {} hold-out rows ({:.2}%), {} of them positive",
            self.rows,
            self.share * 100.0,
            self.positives
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::decision::Decision;

    #[test]
    fn thresholds_follow_the_rule() {
        // Scores descending: 0.9(+) 0.8(+) 0.7(-) 0.6(+) 0.5(-) 0.4(+) 0.3(-)...
        let scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2];
        let labels = [1.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0];
        let rule = ThresholdRule {
            block_precision: 0.75,
            review_recall: 0.75,
            review_rate: None,
        }
        .check()
        .unwrap();
        let thresholds = choose(&scores, &labels, rule).unwrap();
        // Precision at 0.6 is 3/4: the lowest cut with precision >= 0.75.
        assert_eq!(thresholds.block, Some(0.6));
        // Recall reaches 3/4 at 0.6 too: review moves to the next lower score.
        assert_eq!(thresholds.review, 0.5);
        let rule = ThresholdRule {
            block_precision: 1.0,
            review_recall: 1.0,
            review_rate: None,
        }
        .check()
        .unwrap();
        let thresholds = choose(&scores, &labels, rule).unwrap();
        assert_eq!((thresholds.block, thresholds.review), (Some(0.8), 0.4));
        assert_eq!(thresholds.decide(0.85), Decision::Block);
        assert_eq!(thresholds.decide(0.5), Decision::Review);
        assert_eq!(thresholds.decide(0.1), Decision::Allow);
        assert!(choose(&scores, &[0.0; 8], rule).is_none());
        assert!(
            ThresholdRule {
                block_precision: 1.5,
                ..ThresholdRule::default()
            }
            .check()
            .is_err()
        );
    }

    #[test]
    fn a_review_rate_reviews_that_share_below_block() {
        // 100 rows scored 0.00..0.99, the top ten positive: block at precision 1 is 0.90.
        let scores: Vec<f64> = (0..100).map(|i| f64::from(i) / 100.0).collect();
        let labels: Vec<f64> = (0..100).map(|i| f64::from(u8::from(i >= 90))).collect();
        let rule = ThresholdRule {
            block_precision: 1.0,
            review_recall: 0.8,
            review_rate: Some(0.05),
        }
        .check()
        .unwrap();
        let thresholds = choose(&scores, &labels, rule).unwrap();
        assert_eq!(thresholds.block, Some(0.9));
        // The five highest below 0.90: 0.85..0.89.
        assert_eq!(thresholds.review, 0.85);
        let band = ReviewBand::measure(&scores, &labels, &thresholds);
        assert_eq!((band.rows, band.positives), (5, 0));
        assert!(!band.nearly_empty());
        // Without a rate, recall 0.8 is reached inside the block band: review moves to
        // the next lower score and reviews a single row.
        let rule = ThresholdRule {
            review_rate: None,
            ..ThresholdRule::default()
        };
        let rule = ThresholdRule {
            block_precision: 1.0,
            ..rule
        }
        .check()
        .unwrap();
        let thresholds = choose(&scores, &labels, rule).unwrap();
        let band = ReviewBand::measure(&scores, &labels, &thresholds);
        assert_eq!(band.rows, 1);
        for rate in [0.0, 1.0, -0.1, f64::NAN] {
            let rule = ThresholdRule {
                review_rate: Some(rate),
                ..ThresholdRule::default()
            };
            let error = rule.check().unwrap_err().to_string();
            assert!(error.contains("review_rate"), "{error}");
        }
    }
}
