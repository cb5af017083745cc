//! Why a model gave a score: a signed contribution per feature, in the units of the
//! model's decision value (log-odds for logistic regression, margin for SVMs, the value
//! for linear regression, probability for trees).
//!
//! - Linear families: `w_j * z_j` on the standardised input, exact: the base (intercept)
//!   plus the contributions is the decision value.
//! - Trees: path contributions (each split's change in positive share is credited to
//!   its feature); also exact: root share plus contributions is the leaf's share.
//! - Kernel SVM: occlusion: the margin minus the margin with that feature set to its
//!   training mean (standardised 0). Not additive; it says which features the score
//!   depends on near this point.

use super::{Family, Model};

#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    /// The decision value with no feature information (intercept or root share).
    pub base: f64,
    /// One signed contribution per column, in model column order.
    pub contributions: Vec<f64>,
}

impl Model {
    pub fn explain(&self, row: &[Option<f64>]) -> Explanation {
        let mut standardised = vec![0.0; self.columns.len()];
        self.preprocessing.transform_into(row, &mut standardised);
        self.explain_standardised(&standardised)
    }

    pub fn explain_standardised(&self, standardised: &[f64]) -> Explanation {
        let linear = |weights: &[f64], intercept: f64| Explanation {
            base: intercept,
            contributions: weights
                .iter()
                .zip(standardised)
                .map(|(w, z)| w * z)
                .collect(),
        };
        match &self.family {
            Family::LogisticRegression(l) | Family::LinearRegression(l) => {
                linear(&l.weights, l.intercept)
            }
            Family::LinearSvm(svm) => linear(&svm.weights, svm.intercept),
            Family::DecisionTree(tree) => {
                let mut contributions = vec![0.0; standardised.len()];
                let base = tree.contributions(standardised, &mut contributions);
                Explanation {
                    base,
                    contributions,
                }
            }
            // A segment is not a sum of parts: no contributions.
            Family::KMeans(segments) => Explanation {
                base: segments.nearest(standardised) as f64,
                contributions: vec![0.0; standardised.len()],
            },
            Family::AssociationRules(_) => Explanation {
                base: f64::NAN,
                contributions: vec![0.0; standardised.len()],
            },
            Family::KernelSvm(svm) => {
                let full = svm.margin(standardised);
                let mut occluded = standardised.to_vec();
                let contributions = (0..standardised.len())
                    .map(|j| {
                        occluded[j] = 0.0;
                        let without = svm.margin(&occluded);
                        occluded[j] = standardised[j];
                        full - without
                    })
                    .collect();
                Explanation {
                    base: svm.margin(&vec![0.0; standardised.len()]),
                    contributions,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tree::{Node, Tree};
    use crate::model::{LinearWeights, Preprocessing};
    use approx::assert_relative_eq;

    fn unit(columns: usize) -> Preprocessing {
        Preprocessing {
            means: vec![0.0; columns],
            scales: vec![1.0; columns],
            ranges: None,
        }
    }

    #[test]
    fn linear_contributions_add_up_to_the_decision() {
        let model = Model {
            inputs: None,
            columns: vec!["a".into(), "b".into()],
            preprocessing: unit(2),
            family: Family::LogisticRegression(LinearWeights {
                weights: vec![2.0, -1.0],
                intercept: 0.5,
            }),
        };
        let row = [Some(1.5), Some(3.0)];
        let explanation = model.explain(&row);
        assert_eq!(explanation.contributions, vec![3.0, -3.0]);
        let total = explanation.base + explanation.contributions.iter().sum::<f64>();
        assert_relative_eq!(total, model.decision(&row));
    }

    #[test]
    fn tree_path_contributions_add_up_to_the_leaf() {
        let tree = Tree {
            nodes: vec![
                Node::Split {
                    feature: 1,
                    threshold: 0.0,
                    left: 1,
                    right: 2,
                    positive_rate: 0.1,
                },
                Node::Leaf {
                    positive_rate: 0.02,
                    rows: 90,
                },
                Node::Split {
                    feature: 0,
                    threshold: 1.0,
                    left: 3,
                    right: 4,
                    positive_rate: 0.5,
                },
                Node::Leaf {
                    positive_rate: 0.3,
                    rows: 5,
                },
                Node::Leaf {
                    positive_rate: 0.9,
                    rows: 5,
                },
            ],
        };
        let model = Model {
            inputs: None,
            columns: vec!["a".into(), "b".into()],
            preprocessing: unit(2),
            family: Family::DecisionTree(tree),
        };
        let row = [Some(2.0), Some(1.0)];
        let explanation = model.explain(&row);
        assert_relative_eq!(explanation.base, 0.1);
        assert_relative_eq!(explanation.contributions[1], 0.4);
        assert_relative_eq!(explanation.contributions[0], 0.4);
        let total = explanation.base + explanation.contributions.iter().sum::<f64>();
        assert_relative_eq!(total, model.predict(&row));
    }
}
