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
