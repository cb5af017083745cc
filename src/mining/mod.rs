//! Data mining for recommendations: frequent itemsets by FP-growth and the association
//! rules they give (support, confidence, lift, leverage, conviction), over baskets of
//! product ids: baskets from the event history, then pure functions over integer item
//! ids; `mine` writes them as a rule-set artifact the registry serves.

mod baskets;
pub mod config;
mod error;
pub mod evaluate;
mod fpgrowth;
pub mod mine;
pub mod report;
mod rules;
pub mod segments;
pub mod segments_report;

pub use error::MiningError;

pub use baskets::{Baskets, baskets};
pub use fpgrowth::{Itemset, frequent_itemsets, min_count};
pub use rules::{Rule, RuleLimits, rules};
