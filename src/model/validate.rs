//! Structural checks of a model before it may serve. An artifact is input from a file
//! anyone with write access to the models directory could have made: a checksum says it
//! was not damaged, not that it is sane. Scoring indexes arrays by the model's own
//! numbers and walks its tree, so every length, index and number is checked here once,
//! and scoring can then trust them.

use super::tree::{Node, Tree};
use super::{Family, Model};

/// Deepest tree that may serve; training caps depth far below this. It bounds the walk
/// of one `Score` whatever the file says.
pub const MAX_TREE_DEPTH: usize = 64;

/// Why a model cannot serve; the text names the part and the problem.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

pub(crate) fn invalid<T>(message: impl Into<String>) -> Result<T, Invalid> {
    Err(Invalid(message.into()))
}

fn finite(what: &str, values: &[f64]) -> Result<(), Invalid> {
    match values.iter().position(|v| !v.is_finite()) {
        Some(index) => invalid(format!("{what}[{index}] is not a finite number")),
        None => Ok(()),
    }
}

fn length(what: &str, values: &[f64], expected: usize) -> Result<(), Invalid> {
    if values.len() != expected {
        return invalid(format!(
            "{what} has {} values for {expected} columns",
            values.len()
        ));
    }
    finite(what, values)
}

fn number(what: &str, value: f64) -> Result<(), Invalid> {
    if value.is_finite() {
        Ok(())
    } else {
        invalid(format!("{what} is not a finite number"))
    }
}

impl Model {
    /// Checks that the model can score any row of its columns without indexing out of
    /// range, looping, or computing from a non-finite parameter.
    pub fn validate(&self) -> Result<(), Invalid> {
        if let Family::AssociationRules(rules) = &self.family {
            if !self.columns.is_empty() || self.inputs.is_some() {
                return invalid("a rule set reads no columns");
            }
            return rules.validate();
        }
        let columns = self.columns.len();
        if columns == 0 {
            return invalid("the model has no input columns");
        }
        if let Some(inputs) = &self.inputs
            && super::inputs::column_names(inputs) != self.columns
        {
            return invalid("its inputs do not encode into its columns");
        }
        length("preprocessing.means", &self.preprocessing.means, columns)?;
        length("preprocessing.scales", &self.preprocessing.scales, columns)?;
        if let Some(ranges) = &self.preprocessing.ranges {
            if ranges.len() != columns {
                return invalid(format!(
                    "preprocessing.ranges has {} values for {columns} columns",
                    ranges.len()
                ));
            }
            if let Some(index) = ranges
                .iter()
                .position(|(low, high)| !(low.is_finite() && high.is_finite() && low <= high))
            {
                return invalid(format!(
                    "preprocessing.ranges[{index}] is not a finite [low, high]"
                ));
            }
        }
        if let Some(index) = self.preprocessing.scales.iter().position(|s| *s <= 0.0) {
            return invalid(format!("preprocessing.scales[{index}] is not positive"));
        }
        match &self.family {
            Family::LogisticRegression(linear) | Family::LinearRegression(linear) => {
                length("weights", &linear.weights, columns)?;
                number("intercept", linear.intercept)
            }
            Family::LinearSvm(svm) => {
                length("weights", &svm.weights, columns)?;
                number("intercept", svm.intercept)?;
                number("platt_a", svm.platt_a)?;
                number("platt_b", svm.platt_b)
            }
            Family::KernelSvm(svm) => {
                if !(svm.gamma.is_finite() && svm.gamma > 0.0) {
                    return invalid("gamma must be a positive finite number");
                }
                if svm.coefficients.is_empty() {
                    return invalid("the kernel SVM has no support vectors");
                }
                if Some(svm.support.len()) != svm.coefficients.len().checked_mul(columns) {
                    return invalid(format!(
                        "support holds {} values, not {} support vectors x {columns} columns",
                        svm.support.len(),
                        svm.coefficients.len()
                    ));
                }
                finite("support", &svm.support)?;
                finite("coefficients", &svm.coefficients)?;
                number("intercept", svm.intercept)?;
                number("platt_a", svm.platt_a)?;
                number("platt_b", svm.platt_b)
            }
            Family::DecisionTree(tree) => tree.validate(columns),
            Family::AssociationRules(_) => Ok(()),
            Family::KMeans(segments) => segments.validate(columns),
        }
    }
}

impl Tree {
    /// A tree in the strict sense: every node reached from the root exactly once (no
    /// cycle, no shared child), every node reachable, children and features in range,
    /// depth at most [`MAX_TREE_DEPTH`], rates in [0, 1].
    pub fn validate(&self, columns: usize) -> Result<(), Invalid> {
        if self.nodes.is_empty() {
            return invalid("the tree has no nodes");
        }
        let mut reached = vec![false; self.nodes.len()];
        let mut stack = vec![(0usize, 0usize)];
        reached[0] = true;
        while let Some((index, depth)) = stack.pop() {
            if depth > MAX_TREE_DEPTH {
                return invalid(format!(
                    "the tree is deeper than {MAX_TREE_DEPTH} (node {index})"
                ));
            }
            let rate = match &self.nodes[index] {
                Node::Leaf { positive_rate, .. } => *positive_rate,
                Node::Split {
                    feature,
                    threshold,
                    left,
                    right,
                    positive_rate,
                } => {
                    if *feature >= columns {
                        return invalid(format!(
                            "node {index} splits on feature {feature} of {columns} columns"
                        ));
                    }
                    if threshold.is_nan() {
                        return invalid(format!("node {index} has a NaN threshold"));
                    }
                    for child in [*left, *right] {
                        if child >= self.nodes.len() {
                            return invalid(format!(
                                "node {index} points at node {child} of {}",
                                self.nodes.len()
                            ));
                        }
                        if std::mem::replace(&mut reached[child], true) {
                            return invalid(format!(
                                "node {child} is reached twice (from node {index}): a cycle or a shared child"
                            ));
                        }
                        stack.push((child, depth + 1));
                    }
                    *positive_rate
                }
            };
            if !(0.0..=1.0).contains(&rate) {
                return invalid(format!(
                    "node {index} has positive_rate {rate}, not in [0, 1]"
                ));
            }
        }
        match reached.iter().position(|r| !r) {
            Some(index) => invalid(format!("node {index} is not reachable from the root")),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{LinearWeights, Preprocessing};

    fn leaf(rate: f64) -> Node {
        Node::Leaf {
            positive_rate: rate,
            rows: 1,
        }
    }

    fn split(left: usize, right: usize) -> Node {
        Node::Split {
            feature: 0,
            threshold: 0.0,
            left,
            right,
            positive_rate: 0.5,
        }
    }

    fn tree(nodes: Vec<Node>) -> Result<(), Invalid> {
        Tree { nodes }.validate(1)
    }

    #[test]
    fn trees_must_be_trees() {
        assert_eq!(tree(vec![split(1, 2), leaf(0.1), leaf(0.9)]), Ok(()));
        let cycle = tree(vec![split(1, 2), split(0, 2), leaf(0.9)]).unwrap_err();
        assert!(cycle.0.contains("reached twice"), "{cycle}");
        let self_loop = tree(vec![split(0, 1), leaf(0.1)]).unwrap_err();
        assert!(self_loop.0.contains("reached twice"), "{self_loop}");
        let out = tree(vec![split(1, 7), leaf(0.1)]).unwrap_err();
        assert!(out.0.contains("points at node 7"), "{out}");
        assert!(tree(vec![]).unwrap_err().0.contains("no nodes"));
        let orphan = tree(vec![leaf(0.1), leaf(0.2)]).unwrap_err();
        assert!(orphan.0.contains("not reachable"), "{orphan}");
        let rate = tree(vec![leaf(f64::NAN)]).unwrap_err();
        assert!(rate.0.contains("positive_rate"), "{rate}");
    }

    #[test]
    fn deep_chains_are_refused() {
        // A chain: each split has a leaf on the left and the next split on the right.
        let splits = MAX_TREE_DEPTH + 1;
        let mut nodes = Vec::new();
        for level in 0..splits {
            let base = 2 * level;
            nodes.push(split(base + 1, base + 2));
            nodes.push(leaf(0.5));
        }
        nodes.push(leaf(0.5));
        let deep = tree(nodes).unwrap_err();
        assert!(deep.0.contains("deeper than"), "{deep}");
    }

    #[test]
    fn linear_models_need_one_finite_weight_per_column() {
        let model = |means: Vec<f64>, weights: Vec<f64>| Model {
            inputs: None,
            columns: vec!["a".into(), "b".into()],
            preprocessing: Preprocessing {
                means,
                scales: vec![1.0, 1.0],
                ranges: None,
            },
            family: Family::LogisticRegression(LinearWeights {
                weights,
                intercept: 0.0,
            }),
        };
        assert_eq!(model(vec![0.0, 0.0], vec![1.0, 2.0]).validate(), Ok(()));
        let short = model(vec![0.0], vec![1.0, 2.0]).validate().unwrap_err();
        assert!(
            short.0.contains("preprocessing.means has 1 values"),
            "{short}"
        );
        let nan = model(vec![0.0, 0.0], vec![1.0, f64::NAN])
            .validate()
            .unwrap_err();
        assert!(nan.0.contains("weights[1]"), "{nan}");
    }
}
