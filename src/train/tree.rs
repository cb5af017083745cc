//! Decision trees (CART, weighted Gini) grown on binned features: each standardised
//! column is cut into at most `max_bins` quantile bins once, and each node builds
//! per-bin histograms of its rows, so a level costs O(rows x columns) instead of a sort.
//! Leaves keep the weighted share of positives, so the tree scores with class
//! frequencies. Everything is in index order: the same data always gives the same tree
//! (linfa's tree is not deterministic, and neither it nor smartcore gives frequencies).

use super::weight::PositiveWeight;
use crate::model::tree::{Node, Tree};
use crate::model::{Family, Model};

use super::error::TrainError;

/// Unchecked hyper-parameters, as written in a training config.
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TreeParams {
    pub max_depth: usize,
    pub min_samples_leaf: usize,
    pub max_bins: usize,
    /// Weight of each positive row relative to a negative one.
    pub positive_weight: PositiveWeight,
}

impl Default for TreeParams {
    fn default() -> Self {
        TreeParams {
            max_depth: 10,
            min_samples_leaf: 20,
            max_bins: 64,
            positive_weight: PositiveWeight::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[serde(transparent)]
pub struct CheckedTreeParams(TreeParams);

impl TreeParams {
    pub fn check(self) -> Result<CheckedTreeParams, TrainError> {
        let invalid = |name, reason: String| Err(TrainError::InvalidParam { name, reason });
        if !(1..=32).contains(&self.max_depth) {
            return invalid(
                "max_depth",
                format!("must be 1..=32, got {}", self.max_depth),
            );
        }
        if self.min_samples_leaf == 0 {
            return invalid("min_samples_leaf", "must be at least 1".into());
        }
        if !(2..=256).contains(&self.max_bins) {
            return invalid(
                "max_bins",
                format!("must be 2..=256, got {}", self.max_bins),
            );
        }
        self.positive_weight.check()?;
        Ok(CheckedTreeParams(self))
    }
}

/// Columns cut into bins: `bins[column * rows + row]`, and per column the upper edge of
/// every bin but the last (bin `b` holds values `<= edges[b]`).
struct Binned {
    rows: usize,
    bins: Vec<u8>,
    edges: Vec<Vec<f64>>,
}

fn bin_columns(matrix: &[f64], rows: usize, columns: usize, max_bins: usize) -> Binned {
    let mut bins = vec![0u8; rows * columns];
    let mut edges = Vec::with_capacity(columns);
    for column in 0..columns {
        let mut values: Vec<f64> = (0..rows)
            .map(|row| matrix[row * columns + column])
            .collect();
        values.sort_by(f64::total_cmp);
        let mut cuts: Vec<f64> = (1..max_bins)
            .map(|q| values[(q * rows / max_bins).min(rows - 1)])
            .collect();
        cuts.dedup();
        // The largest value needs no edge: everything is <= it.
        if cuts.last() == values.last() {
            cuts.pop();
        }
        for row in 0..rows {
            let value = matrix[row * columns + column];
            bins[column * rows + row] = cuts.partition_point(|edge| *edge < value) as u8;
        }
        edges.push(cuts);
    }
    Binned { rows, bins, edges }
}

#[derive(Clone, Copy, Default)]
struct Tally {
    count: usize,
    weight: f64,
    positive: f64,
}

impl Tally {
    fn add(&mut self, other: &Tally) {
        self.count += other.count;
        self.weight += other.weight;
        self.positive += other.positive;
    }

    /// Weighted Gini impurity times weight: W * 2p(1-p).
    fn impurity(&self) -> f64 {
        if self.weight <= 0.0 {
            return 0.0;
        }
        let p = self.positive / self.weight;
        self.weight * 2.0 * p * (1.0 - p)
    }
}

struct Split {
    column: usize,
    bin: usize,
    gain: f64,
}

fn best_split(
    binned: &Binned,
    rows: &[u32],
    weights: &[f64],
    labels: &[f64],
    params: &TreeParams,
    total: &Tally,
) -> Option<Split> {
    let mut best: Option<Split> = None;
    let parent = total.impurity();
    let mut histogram = vec![Tally::default(); 256];
    for (column, edges) in binned.edges.iter().enumerate() {
        if edges.is_empty() {
            continue;
        }
        let used = edges.len() + 1;
        histogram[..used]
            .iter_mut()
            .for_each(|t| *t = Tally::default());
        let column_bins = &binned.bins[column * binned.rows..(column + 1) * binned.rows];
        for &row in rows {
            let row = row as usize;
            let tally = &mut histogram[column_bins[row] as usize];
            tally.count += 1;
            tally.weight += weights[row];
            tally.positive += weights[row] * labels[row];
        }
        let mut left = Tally::default();
        for (bin, tally) in histogram[..used - 1].iter().enumerate() {
            left.add(tally);
            let right = Tally {
                count: total.count - left.count,
                weight: total.weight - left.weight,
                positive: total.positive - left.positive,
            };
            if left.count < params.min_samples_leaf || right.count < params.min_samples_leaf {
                continue;
            }
            let gain = parent - left.impurity() - right.impurity();
            if gain > 1e-12 && best.as_ref().is_none_or(|b| gain > b.gain) {
                best = Some(Split { column, bin, gain });
            }
        }
    }
    best
}

/// Fits imputation (and scaling, which a tree ignores but keeps the input path shared)
/// and a decision tree on `rows` with 0/1 `labels`.
pub fn fit(
    columns: &[String],
    rows: &[Vec<Option<f64>>],
    labels: &[f64],
    params: CheckedTreeParams,
) -> Result<Model, TrainError> {
    let params = params.0;
    if rows.is_empty() {
        return Err(TrainError::BadData("0 rows".into()));
    }
    let width = columns.len();
    let (preprocessing, matrix) = super::objective::standardise(rows, width);
    let binned = bin_columns(&matrix, rows.len(), width, params.max_bins);
    let (targets, weights) = super::objective::weighted_targets(labels, params.positive_weight);

    let tally_of = |rows: &[u32]| {
        rows.iter().fold(Tally::default(), |mut t, r| {
            let r = *r as usize;
            t.count += 1;
            t.weight += weights[r];
            t.positive += weights[r] * targets[r];
            t
        })
    };
    let mut nodes = vec![Node::Leaf {
        positive_rate: 0.0,
        rows: 0,
    }];
    // (node index, its rows, depth), grown depth first.
    let mut pending: Vec<(usize, Vec<u32>, usize)> = vec![(0, (0..rows.len() as u32).collect(), 0)];
    while let Some((index, node_rows, depth)) = pending.pop() {
        let total = tally_of(&node_rows);
        let split = if depth < params.max_depth && total.count >= 2 * params.min_samples_leaf {
            best_split(&binned, &node_rows, &weights, &targets, &params, &total)
        } else {
            None
        };
        let positive_rate = if total.weight > 0.0 {
            total.positive / total.weight
        } else {
            0.0
        };
        let Some(split) = split else {
            nodes[index] = Node::Leaf {
                positive_rate,
                rows: total.count,
            };
            continue;
        };
        let column_bins =
            &binned.bins[split.column * binned.rows..(split.column + 1) * binned.rows];
        let (left_rows, right_rows): (Vec<u32>, Vec<u32>) = node_rows
            .iter()
            .partition(|row| (column_bins[**row as usize] as usize) <= split.bin);
        let (left, right) = (nodes.len(), nodes.len() + 1);
        nodes.push(Node::Leaf {
            positive_rate: 0.0,
            rows: 0,
        });
        nodes.push(Node::Leaf {
            positive_rate: 0.0,
            rows: 0,
        });
        nodes[index] = Node::Split {
            feature: split.column,
            threshold: binned.edges[split.column][split.bin],
            left,
            right,
            positive_rate,
        };
        pending.push((right, right_rows, depth + 1));
        pending.push((left, left_rows, depth + 1));
    }
    Ok(Model {
        inputs: None,
        columns: columns.to_vec(),
        preprocessing,
        family: Family::DecisionTree(Tree { nodes }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn columns(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("x{i}")).collect()
    }

    #[test]
    fn finds_a_clean_split_and_scores_with_frequencies() {
        // Label is 1 exactly when x1 > 5; x0 is noise.
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let rows: Vec<Vec<Option<f64>>> = (0..1_000)
            .map(|_| {
                vec![
                    Some(rng.random_range(0.0..10.0)),
                    Some(rng.random_range(0.0..10.0)),
                ]
            })
            .collect();
        let labels: Vec<f64> = rows
            .iter()
            .map(|r| f64::from(u8::from(r[1].unwrap() > 5.0)))
            .collect();
        let params = TreeParams {
            max_depth: 1,
            min_samples_leaf: 1,
            max_bins: 256,
            ..TreeParams::default()
        };
        let model = fit(&columns(2), &rows, &labels, params.check().unwrap()).unwrap();
        let Family::DecisionTree(tree) = &model.family else {
            panic!("a tree")
        };
        assert!(
            matches!(tree.nodes[0], Node::Split { feature: 1, .. }),
            "{:?}",
            tree.nodes[0]
        );
        let wrong = rows
            .iter()
            .zip(&labels)
            .filter(|(r, y)| (model.predict(r) > 0.5) != (**y > 0.5))
            .count();
        assert!(
            wrong <= 10,
            "{wrong} rows on the wrong side of a clean split"
        );

        // Leaves hold frequencies: a noisy region scores between 0 and 1.
        let noisy: Vec<f64> = rows
            .iter()
            .map(|r| {
                if r[0].unwrap() < 5.0 {
                    1.0
                } else {
                    f64::from(u8::from(r[1].unwrap() > 8.0))
                }
            })
            .collect();
        let model = fit(
            &columns(2),
            &rows,
            &noisy,
            TreeParams {
                max_depth: 1,
                ..TreeParams::default()
            }
            .check()
            .unwrap(),
        )
        .unwrap();
        let score = model.predict(&[Some(7.0), Some(1.0)]);
        assert!(score > 0.05 && score < 0.5, "{score}");
    }

    #[test]
    fn the_same_data_gives_the_same_tree_within_its_depth() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let rows: Vec<Vec<Option<f64>>> = (0..3_000)
            .map(|_| (0..5).map(|_| Some(rng.random_range(-1.0..1.0))).collect())
            .collect();
        let labels: Vec<f64> = rows
            .iter()
            .map(|r| f64::from(u8::from(r[0].unwrap() * r[1].unwrap() > 0.1)))
            .collect();
        let params = TreeParams {
            max_depth: 6,
            ..TreeParams::default()
        }
        .check()
        .unwrap();
        let first = fit(&columns(5), &rows, &labels, params).unwrap();
        let second = fit(&columns(5), &rows, &labels, params).unwrap();
        assert_eq!(first, second);
        let Family::DecisionTree(tree) = &first.family else {
            panic!("a tree")
        };
        assert!(tree.depth() <= 6 && tree.depth() >= 2);
    }

    #[test]
    fn invalid_parameters_are_refused() {
        assert!(
            TreeParams {
                max_depth: 0,
                ..TreeParams::default()
            }
            .check()
            .is_err()
        );
        assert!(
            TreeParams {
                max_bins: 1000,
                ..TreeParams::default()
            }
            .check()
            .unwrap_err()
            .to_string()
            .contains("max_bins")
        );
        assert!(
            TreeParams {
                min_samples_leaf: 0,
                ..TreeParams::default()
            }
            .check()
            .is_err()
        );
    }
}
