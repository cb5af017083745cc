//! Choosing decision thresholds on validation scores by a rule from the training config:
//! block where precision reaches `block_precision` (the lowest such threshold, so as
//! much fraud as possible is blocked at that precision), review from where recall
//! reaches `review_recall`. Review always lies strictly below block: when the recall
//! point is at or above the block threshold, review moves down to the next lower
//! validation score (so some payments are reviewed rather than none), or to half the
//! block threshold when no validation score lies below it.

use super::logistic::TrainError;
use crate::model::decision::Thresholds;

#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ThresholdRule {
    pub block_precision: f64,
    pub review_recall: f64,
}

impl Default for ThresholdRule {
    fn default() -> Self {
        ThresholdRule {
            block_precision: 0.9,
            review_recall: 0.8,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CheckedThresholdRule(ThresholdRule);

impl ThresholdRule {
    pub fn check(self) -> Result<CheckedThresholdRule, TrainError> {
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
}
