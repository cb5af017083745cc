//! Data mining of the event history, into artifacts the registry serves like models:
//! association rules (baskets from the history, frequent itemsets by FP-growth, rules
//! with support, confidence, lift, leverage and conviction: pure functions over integer
//! item ids; `mine` writes the rule set, `evaluate` replays a time split and asks the
//! served `Recommend` code at each later basket) and customer segments (k-means on entities' features, `segments`).

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

pub use baskets::{Baskets, BasketsBuilder, ClosedCart, baskets, closed_carts};
pub use fpgrowth::{Itemset, frequent_itemsets, frequent_itemsets_within, min_count};
pub use rules::{Rule, RuleLimits, rules, rules_within};
