//! Association rules as a served artifact family: the rules `mine rules` kept, with
//! product ids for items, and the most popular products (the fill when rules give too
//! few). A rule set is not a scorer: it turns what a user has seen into candidate
//! products, each with the rule that proposed it. The by-item index is built on first
//! use, never stored.

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use super::validate::{Invalid, invalid};

/// Popular products kept in an artifact for the fill.
pub const POPULAR_KEPT: usize = 1_000;

/// Longest product id an artifact may hold.
pub const MAX_PRODUCT_BYTES: usize = 256;

/// One rule over product ids, with mlxtend's measures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AssociationRule {
    pub antecedent: Vec<String>,
    pub consequent: Vec<String>,
    pub support: f64,
    pub confidence: f64,
    pub lift: f64,
    pub leverage: f64,
    /// `None` when infinite (confidence 1): JSON has no infinity.
    pub conviction: Option<f64>,
}

/// A product and the share of baskets holding it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Popular {
    pub product: String,
    pub support: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RuleSet {
    /// How many baskets the rules were mined from.
    pub baskets: u64,
    /// Strongest lift first.
    pub rules: Vec<AssociationRule>,
    /// Most popular first.
    pub popular: Vec<Popular>,
    /// Rule indices by each product of their antecedent.
    #[serde(skip)]
    by_item: OnceLock<HashMap<String, Vec<u32>>>,
}

/// A product a rule proposes, and the rule (the most confident one proposing it).
#[derive(Debug, Clone, PartialEq)]
pub struct Proposal<'a> {
    pub product: &'a str,
    pub rule: &'a AssociationRule,
}

impl RuleSet {
    pub fn new(baskets: u64, rules: Vec<AssociationRule>, popular: Vec<Popular>) -> RuleSet {
        RuleSet {
            baskets,
            rules,
            popular,
            by_item: OnceLock::new(),
        }
    }

    fn by_item(&self) -> &HashMap<String, Vec<u32>> {
        self.by_item.get_or_init(|| {
            let mut index: HashMap<String, Vec<u32>> = HashMap::new();
            for (at, rule) in self.rules.iter().enumerate() {
                for item in &rule.antecedent {
                    index.entry(item.clone()).or_default().push(at as u32);
                }
            }
            index
        })
    }

    /// The products proposed by rules whose whole antecedent is in `seen`, skipping
    /// `excluded` ones (a product only viewed may be proposed again): one per product,
    /// by its most confident rule (then the higher lift), most confident first.
    pub fn propose<'a>(
        &'a self,
        seen: &HashSet<&str>,
        excluded: &HashSet<&str>,
    ) -> Vec<Proposal<'a>> {
        let index = self.by_item();
        let mut matched: Vec<u32> = seen
            .iter()
            .filter_map(|item| index.get(*item))
            .flatten()
            .copied()
            .collect();
        matched.sort_unstable();
        matched.dedup();
        let mut best: HashMap<&str, &AssociationRule> = HashMap::new();
        for at in matched {
            let rule = &self.rules[at as usize];
            if !rule
                .antecedent
                .iter()
                .all(|item| seen.contains(item.as_str()))
            {
                continue;
            }
            for product in &rule.consequent {
                let product = product.as_str();
                if excluded.contains(product) {
                    continue;
                }
                best.entry(product)
                    .and_modify(|held| {
                        if stronger(rule, held) {
                            *held = rule;
                        }
                    })
                    .or_insert(rule);
            }
        }
        let mut proposals: Vec<Proposal<'a>> = best
            .into_iter()
            .map(|(product, rule)| Proposal { product, rule })
            .collect();
        // Strongest evidence first; the id only makes equal evidence deterministic.
        proposals.sort_by(|a, b| evidence(b.rule, a.rule).then(a.product.cmp(b.product)));
        proposals
    }

    /// Structure an artifact must have to serve.
    pub fn validate(&self) -> Result<(), Invalid> {
        let share = |what: &str, at: usize, value: f64| {
            if value.is_finite() && value > 0.0 && value <= 1.0 {
                Ok(())
            } else {
                invalid(format!("{what}[{at}] must be in (0, 1]"))
            }
        };
        for (at, rule) in self.rules.iter().enumerate() {
            if rule.antecedent.is_empty() || rule.consequent.is_empty() {
                return invalid(format!("rules[{at}] has an empty side"));
            }
            if rule
                .antecedent
                .iter()
                .chain(&rule.consequent)
                .any(|p| p.is_empty() || p.len() > MAX_PRODUCT_BYTES)
            {
                return invalid(format!("rules[{at}] names an empty or overlong product"));
            }
            if rule.consequent.iter().any(|p| rule.antecedent.contains(p)) {
                return invalid(format!("rules[{at}] has a product on both sides"));
            }
            share("rules.support", at, rule.support)?;
            share("rules.confidence", at, rule.confidence)?;
            if !(rule.lift.is_finite() && rule.lift > 0.0) {
                return invalid(format!("rules[{at}].lift must be positive and finite"));
            }
            if !rule.leverage.is_finite() || rule.conviction.is_some_and(|c| !c.is_finite()) {
                return invalid(format!("rules[{at}] has a non-finite measure"));
            }
        }
        for (at, popular) in self.popular.iter().enumerate() {
            if popular.product.is_empty() || popular.product.len() > MAX_PRODUCT_BYTES {
                return invalid(format!("popular[{at}] names an empty or overlong product"));
            }
            share("popular.support", at, popular.support)?;
        }
        Ok(())
    }
}

/// Whether `a` is the better reason to propose a product than `b`.
fn stronger(a: &AssociationRule, b: &AssociationRule) -> bool {
    evidence(a, b).is_gt()
}

/// How `a`'s evidence compares with `b`'s: confidence, then lift, then support (a rule
/// seen in more baskets is the surer of two otherwise equal ones).
pub fn evidence(a: &AssociationRule, b: &AssociationRule) -> std::cmp::Ordering {
    a.confidence
        .total_cmp(&b.confidence)
        .then(a.lift.total_cmp(&b.lift))
        .then(a.support.total_cmp(&b.support))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(
        antecedent: &[&str],
        consequent: &[&str],
        confidence: f64,
        lift: f64,
    ) -> AssociationRule {
        AssociationRule {
            antecedent: antecedent.iter().map(|s| s.to_string()).collect(),
            consequent: consequent.iter().map(|s| s.to_string()).collect(),
            support: 0.1,
            confidence,
            lift,
            leverage: 0.01,
            conviction: None,
        }
    }

    #[test]
    fn proposals_need_the_whole_antecedent_and_keep_the_most_confident_rule() {
        let set = RuleSet::new(
            10,
            vec![
                rule(&["a", "b"], &["c"], 0.9, 3.0),
                rule(&["a"], &["c"], 0.5, 2.0),
                rule(&["a"], &["d", "e"], 0.6, 1.5),
                rule(&["x"], &["y"], 0.99, 9.0),
                rule(&["a"], &["b"], 0.7, 1.1),
            ],
            vec![],
        );
        let seen: HashSet<&str> = ["a", "b"].into();
        let excluded: HashSet<&str> = ["e"].into();
        let proposals = set.propose(&seen, &excluded);
        let got: Vec<(&str, f64)> = proposals
            .iter()
            .map(|p| (p.product, p.rule.confidence))
            .collect();
        // c by its two-item rule; b (seen, not excluded) by a -> b; d by a -> {d, e};
        // e excluded; y's antecedent was not seen.
        assert_eq!(got, vec![("c", 0.9), ("b", 0.7), ("d", 0.6)]);
        let only_a: HashSet<&str> = ["a"].into();
        let got: Vec<&str> = set
            .propose(&only_a, &HashSet::new())
            .iter()
            .map(|p| p.product)
            .collect();
        assert_eq!(got, vec!["b", "d", "e", "c"]);
    }

    #[test]
    fn validation_names_the_broken_rule() {
        let mut set = RuleSet::new(10, vec![rule(&["a"], &["b"], 0.5, 1.2)], vec![]);
        assert!(set.validate().is_ok());
        set.rules[0].confidence = 1.5;
        assert!(format!("{:?}", set.validate()).contains("rules.confidence[0]"));
        set.rules[0] = rule(&["a"], &["a"], 0.5, 1.2);
        assert!(format!("{:?}", set.validate()).contains("both sides"));
    }
}
