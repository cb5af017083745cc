//! Data mining for recommendations: frequent itemsets by FP-growth and the association
//! rules they give (support, confidence, lift, leverage, conviction), over baskets of
//! product ids. Pure functions over integer item ids; building baskets from events,
//! artifacts and serving live elsewhere.

mod fpgrowth;
mod rules;

pub use fpgrowth::{Itemset, frequent_itemsets, min_count};
pub use rules::{Rule, RuleLimits, rules};
