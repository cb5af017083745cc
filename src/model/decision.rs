//! Decisions from scores: a model's thresholds, chosen on validation data at training
//! time and stored in its artifact.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    Allow,
    Review,
    Block,
}

/// The wire name of a decision: `allow`, `review`, `block`, or `none` for a model that
/// makes no decision (a regression). The one mapping every text door uses.
pub fn decision_name(decision: Option<Decision>) -> &'static str {
    match decision {
        Some(Decision::Allow) => "allow",
        Some(Decision::Review) => "review",
        Some(Decision::Block) => "block",
        None => "none",
    }
}

/// Scores at or above `block` are blocked, at or above `review` reviewed (`review <=
/// block`). No `block` when no threshold reached the rule's precision on validation:
/// such a model reviews but never blocks.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    pub review: f64,
    #[serde(default)]
    pub block: Option<f64>,
}

impl std::fmt::Display for Thresholds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "review at score >= {:.4}, ", self.review)?;
        match self.block {
            Some(block) => write!(f, "block at score >= {block:.4}"),
            None => write!(f, "never block (no threshold reached the block precision)"),
        }
    }
}

impl Thresholds {
    /// A score that is not a number never allows: NaN compares false with every
    /// threshold, so it is caught first and blocked.
    pub fn decide(&self, score: f64) -> Decision {
        if score.is_nan() || self.block.is_some_and(|block| score >= block) {
            Decision::Block
        } else if score >= self.review {
            Decision::Review
        } else {
            Decision::Allow
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_decision_is_named_none_never_allow() {
        assert_eq!(decision_name(None), "none");
        assert_eq!(decision_name(Some(Decision::Allow)), "allow");
        assert_eq!(decision_name(Some(Decision::Review)), "review");
        assert_eq!(decision_name(Some(Decision::Block)), "block");
    }
}
