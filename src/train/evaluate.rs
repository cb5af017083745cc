//! Classifier metrics on a hold-out set: ROC-AUC, PR-AUC (average precision), log loss
//! and Brier score.

/// Ties share their rank, so a constant score gets AUC 0.5.
pub fn roc_auc(scores: &[f64], labels: &[f64]) -> f64 {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|a, b| scores[*a].total_cmp(&scores[*b]));
    let positives = labels.iter().filter(|l| **l > 0.5).count() as f64;
    let negatives = labels.len() as f64 - positives;
    if positives == 0.0 || negatives == 0.0 {
        return f64::NAN;
    }
    let mut rank_sum = 0.0;
    let mut start = 0;
    while start < order.len() {
        let mut end = start;
        while end + 1 < order.len() && scores[order[end + 1]] == scores[order[start]] {
            end += 1;
        }
        let average_rank = (start + end) as f64 / 2.0 + 1.0;
        rank_sum += order[start..=end]
            .iter()
            .filter(|i| labels[**i] > 0.5)
            .count() as f64
            * average_rank;
        start = end + 1;
    }
    (rank_sum - positives * (positives + 1.0) / 2.0) / (positives * negatives)
}

/// Average precision: the mean of the precision at each positive, by descending score.
pub fn pr_auc(scores: &[f64], labels: &[f64]) -> f64 {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|a, b| scores[*b].total_cmp(&scores[*a]));
    let positives = labels.iter().filter(|l| **l > 0.5).count() as f64;
    if positives == 0.0 {
        return f64::NAN;
    }
    // Average precision as scikit-learn's `average_precision_score` defines it: the sum
    // over distinct thresholds of (recall step) x precision, where rows with equal
    // scores form one threshold (a tie is one step, not an order the sort made up).
    let (mut hits, mut seen, mut total, mut last_recall) = (0.0, 0.0, 0.0, 0.0);
    let mut index = 0;
    while index < order.len() {
        let score = scores[order[index]];
        while index < order.len() && scores[order[index]] == score {
            hits += f64::from(u8::from(labels[order[index]] > 0.5));
            seen += 1.0;
            index += 1;
        }
        let recall = hits / positives;
        total += (recall - last_recall) * (hits / seen);
        last_recall = recall;
    }
    total
}

pub fn log_loss(scores: &[f64], labels: &[f64]) -> f64 {
    let eps = 1e-15;
    let sum: f64 = scores
        .iter()
        .zip(labels)
        .map(|(p, y)| {
            let p = p.clamp(eps, 1.0 - eps);
            -(y * p.ln() + (1.0 - y) * (1.0 - p).ln())
        })
        .sum();
    sum / scores.len().max(1) as f64
}

pub fn brier(scores: &[f64], labels: &[f64]) -> f64 {
    scores
        .iter()
        .zip(labels)
        .map(|(p, y)| (p - y) * (p - y))
        .sum::<f64>()
        / scores.len().max(1) as f64
}

pub fn rmse(predictions: &[f64], targets: &[f64]) -> f64 {
    let n = predictions.len().max(1) as f64;
    (predictions
        .iter()
        .zip(targets)
        .map(|(p, y)| (p - y) * (p - y))
        .sum::<f64>()
        / n)
        .sqrt()
}

pub fn mae(predictions: &[f64], targets: &[f64]) -> f64 {
    predictions
        .iter()
        .zip(targets)
        .map(|(p, y)| (p - y).abs())
        .sum::<f64>()
        / predictions.len().max(1) as f64
}

/// Coefficient of determination: 1 - SS_residual / SS_total.
pub fn r2(predictions: &[f64], targets: &[f64]) -> f64 {
    let mean = targets.iter().sum::<f64>() / targets.len().max(1) as f64;
    let total: f64 = targets.iter().map(|y| (y - mean) * (y - mean)).sum();
    let residual: f64 = predictions
        .iter()
        .zip(targets)
        .map(|(p, y)| (p - y) * (p - y))
        .sum();
    1.0 - residual / total
}

/// One bin of a calibration table: predictions in `[lower, upper)` against what happened.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CalibrationBin {
    pub lower: f64,
    pub upper: f64,
    pub count: usize,
    pub mean_predicted: f64,
    pub observed_rate: f64,
}

/// A hold-out metric: its name in reports and configs, which way is better, and
/// whether it judges a classifier's probabilities or a regression's predictions.
#[derive(Debug)]
pub struct Metric {
    pub name: &'static str,
    pub higher_is_better: bool,
    pub classifier: bool,
    pub compute: fn(&[f64], &[f64]) -> f64,
}

/// Every metric a report shows, classifiers' first, in report order.
pub const METRICS: [Metric; 7] = [
    Metric {
        name: "roc_auc",
        higher_is_better: true,
        classifier: true,
        compute: roc_auc,
    },
    Metric {
        name: "pr_auc",
        higher_is_better: true,
        classifier: true,
        compute: pr_auc,
    },
    Metric {
        name: "log_loss",
        higher_is_better: false,
        classifier: true,
        compute: log_loss,
    },
    Metric {
        name: "brier",
        higher_is_better: false,
        classifier: true,
        compute: brier,
    },
    Metric {
        name: "rmse",
        higher_is_better: false,
        classifier: false,
        compute: rmse,
    },
    Metric {
        name: "mae",
        higher_is_better: false,
        classifier: false,
        compute: mae,
    },
    Metric {
        name: "r2",
        higher_is_better: true,
        classifier: false,
        compute: r2,
    },
];

/// The metric called `name`, if there is one.
pub fn metric(name: &str) -> Option<&'static Metric> {
    METRICS.iter().find(|m| m.name == name)
}

/// The metrics for a classifier's or a regression's hold-out, in report order.
pub fn metrics_for(classifier: bool) -> impl Iterator<Item = &'static Metric> {
    METRICS.iter().filter(move |m| m.classifier == classifier)
}

/// Equal-width bins over [0, 1]; empty bins are left out.
pub fn calibration(scores: &[f64], labels: &[f64], bins: usize) -> Vec<CalibrationBin> {
    let bins = bins.max(1);
    let mut sums = vec![(0usize, 0.0, 0.0); bins];
    for (score, label) in scores.iter().zip(labels) {
        let bin = ((score.clamp(0.0, 1.0) * bins as f64) as usize).min(bins - 1);
        sums[bin].0 += 1;
        sums[bin].1 += score;
        sums[bin].2 += label;
    }
    sums.iter()
        .enumerate()
        .filter(|(_, (count, _, _))| *count > 0)
        .map(|(bin, (count, predicted, observed))| CalibrationBin {
            lower: bin as f64 / bins as f64,
            upper: (bin + 1) as f64 / bins as f64,
            count: *count,
            mean_predicted: predicted / *count as f64,
            observed_rate: observed / *count as f64,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn average_precision_matches_scikit_learn_on_ties() {
        // Values printed by scikit-learn 1.9.1's average_precision_score(y, s).
        let cases: [(&[f64], &[f64], f64); 4] = [
            (
                &[0.9, 0.8, 0.8, 0.8, 0.5, 0.5, 0.3, 0.1],
                &[1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0],
                0.7916666666666666,
            ),
            (
                &[0.5; 6],
                &[1.0, 0.0, 0.0, 1.0, 0.0, 0.0],
                0.3333333333333333,
            ),
            (
                &[0.7, 0.7, 0.2, 0.2, 0.2, 0.9],
                &[0.0, 1.0, 1.0, 0.0, 0.0, 0.0],
                0.3333333333333333,
            ),
            (
                &[0.1, 0.4, 0.35, 0.8],
                &[0.0, 0.0, 1.0, 1.0],
                0.8333333333333333,
            ),
        ];
        for (scores, labels, sklearn) in cases {
            let ours = pr_auc(scores, labels);
            assert!(
                (ours - sklearn).abs() < 1e-9,
                "{scores:?}: {ours} vs {sklearn}"
            );
        }
    }
    use approx::assert_relative_eq;
    use proptest::prelude::*;

    /// The probability that a random positive outscores a random negative (ties half).
    fn naive_auc(scores: &[f64], labels: &[f64]) -> f64 {
        let (mut wins, mut pairs) = (0.0, 0.0);
        for (i, si) in scores.iter().enumerate() {
            for (j, sj) in scores.iter().enumerate() {
                if labels[i] > 0.5 && labels[j] < 0.5 {
                    pairs += 1.0;
                    wins += if si > sj {
                        1.0
                    } else if si == sj {
                        0.5
                    } else {
                        0.0
                    };
                }
            }
        }
        wins / pairs
    }

    proptest! {
        #[test]
        fn roc_auc_matches_pair_counting(pairs in proptest::collection::vec((0u8..6, any::<bool>()), 2..60)) {
            let scores: Vec<f64> = pairs.iter().map(|(s, _)| f64::from(*s) / 5.0).collect();
            let labels: Vec<f64> = pairs.iter().map(|(_, l)| f64::from(u8::from(*l))).collect();
            let positives = labels.iter().filter(|l| **l > 0.5).count();
            prop_assume!(positives > 0 && positives < labels.len());
            prop_assert!((roc_auc(&scores, &labels) - naive_auc(&scores, &labels)).abs() < 1e-12);
        }
    }

    #[test]
    fn metrics_of_known_cases() {
        let labels = [0.0, 0.0, 1.0, 1.0];
        assert_eq!(roc_auc(&[0.1, 0.2, 0.8, 0.9], &labels), 1.0);
        assert_eq!(roc_auc(&[0.5; 4], &labels), 0.5);
        assert_eq!(pr_auc(&[0.1, 0.2, 0.8, 0.9], &labels), 1.0);
        // Positives at ranks 2 and 4: precisions 1/2 and 2/4.
        assert_relative_eq!(pr_auc(&[0.9, 0.2, 0.8, 0.1], &labels), 0.5);
        assert_relative_eq!(brier(&[0.0, 0.0, 1.0, 0.5], &labels), 0.0625);
        assert_relative_eq!(log_loss(&[0.5; 4], &labels), std::f64::consts::LN_2);
        assert_relative_eq!(rmse(&[1.0, 3.0], &[2.0, 2.0]), 1.0);
        assert_relative_eq!(mae(&[1.0, 4.0], &[2.0, 2.0]), 1.5);
        assert_relative_eq!(r2(&[1.0, 2.0, 3.0], &[1.0, 2.0, 3.0]), 1.0);
        assert_relative_eq!(r2(&[2.0, 2.0, 2.0], &[1.0, 2.0, 3.0]), 0.0);
        let table = calibration(&[0.05, 0.15, 0.12, 0.95], &labels, 10);
        assert_eq!(table.len(), 3);
        assert_eq!((table[1].count, table[1].observed_rate), (2, 0.5));
        assert_relative_eq!(table[1].mean_predicted, 0.135);
    }
}
