//! Data mining for recommendations: frequent itemsets by FP-growth and the association
//! rules they give (support, confidence, lift, leverage, conviction), over baskets of
//! product ids: baskets from the event history, then pure functions over integer item
//! ids. Artifacts and serving live elsewhere.

mod baskets;
mod fpgrowth;
mod rules;

pub use baskets::{Baskets, baskets};
pub use fpgrowth::{Itemset, frequent_itemsets, min_count};
pub use rules::{Rule, RuleLimits, rules};
