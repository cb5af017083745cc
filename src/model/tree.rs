//! A fitted decision tree: splits on standardised inputs, leaves holding the weighted
//! share of positives seen there in training (a probability, not a hard label).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Node {
    /// Rows with `value <= threshold` go to `left`.
    Split {
        feature: usize,
        threshold: f64,
        left: usize,
        right: usize,
        /// The weighted share of positives among the training rows that reached it,
        /// so a path can be read as a sequence of changes (reasons).
        positive_rate: f64,
    },
    Leaf {
        positive_rate: f64,
        rows: usize,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tree {
    /// `nodes[0]` is the root.
    pub nodes: Vec<Node>,
}

impl Tree {
    pub fn predict(&self, standardised: &[f64]) -> f64 {
        let mut index = 0;
        loop {
            match &self.nodes[index] {
                Node::Leaf { positive_rate, .. } => return *positive_rate,
                Node::Split {
                    feature,
                    threshold,
                    left,
                    right,
                    ..
                } => {
                    index = if standardised[*feature] <= *threshold {
                        *left
                    } else {
                        *right
                    };
                }
            }
        }
    }

    /// Path contributions (Saabas): each split on the way to the leaf moves the score
    /// from the node's positive share to its child's, and that change is credited to the
    /// split's feature. Returns the root's share and the per-feature changes; they sum to
    /// the prediction exactly.
    pub fn contributions(&self, standardised: &[f64], out: &mut [f64]) -> f64 {
        let rate = |index: usize| match &self.nodes[index] {
            Node::Leaf { positive_rate, .. } | Node::Split { positive_rate, .. } => *positive_rate,
        };
        let mut index = 0;
        while let Node::Split {
            feature,
            threshold,
            left,
            right,
            positive_rate,
        } = &self.nodes[index]
        {
            let next = if standardised[*feature] <= *threshold {
                *left
            } else {
                *right
            };
            out[*feature] += rate(next) - positive_rate;
            index = next;
        }
        rate(0)
    }

    pub fn depth(&self) -> usize {
        fn depth_of(nodes: &[Node], index: usize) -> usize {
            match &nodes[index] {
                Node::Leaf { .. } => 0,
                Node::Split { left, right, .. } => {
                    1 + depth_of(nodes, *left).max(depth_of(nodes, *right))
                }
            }
        }
        depth_of(&self.nodes, 0)
    }
}
