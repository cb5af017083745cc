//! Offline evaluation of recommendations on a cut in time: rules are mined from the
//! baskets before the cut; for every later basket of two or more products, its first
//! product (by id) is the cart and the others are what the user went on to buy. The
//! rule recommender (rules matched against the cart, most confident first, filled up
//! from popular products) and the popularity baseline each name `k` products; hit
//! rate, recall and NDCG at `k` say how many of the bought ones they found. The live
//! `Recommend` also matches the user's recent views and ranks by the purchase model;
//! this measures what the rules alone add.

use std::collections::HashSet;

use serde::Serialize;

use super::Baskets;
use crate::model::rules::RuleSet;

/// Hit rate, recall and NDCG at `k` of one recommender over the same cases.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Scores {
    /// Share of cases with at least one bought product among the `k`.
    pub hit_rate: f64,
    /// Mean share of the bought products found among the `k`.
    pub recall: f64,
    /// Mean normalised discounted cumulative gain (binary relevance).
    pub ndcg: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    pub k: usize,
    pub train_baskets: usize,
    pub test_baskets: usize,
    /// Later baskets of two or more products: the cases.
    pub cases: usize,
    pub rules: Scores,
    pub popularity: Scores,
}

/// Adds one case's gains to `sum`: `ranked` products against the `bought` ones.
fn score_case(ranked: &[&str], bought: &[&str], k: usize, sum: &mut Scores) {
    let found: Vec<bool> = ranked.iter().take(k).map(|p| bought.contains(p)).collect();
    let hits = found.iter().filter(|f| **f).count();
    sum.hit_rate += f64::from(u8::from(hits > 0));
    sum.recall += hits as f64 / bought.len().max(1) as f64;
    let gain = |rank: usize| 1.0 / ((rank + 2) as f64).log2();
    let dcg: f64 = found
        .iter()
        .enumerate()
        .filter(|(_, f)| **f)
        .map(|(rank, _)| gain(rank))
        .sum();
    let ideal: f64 = (0..bought.len().min(k)).map(gain).sum();
    sum.ndcg += if ideal > 0.0 { dcg / ideal } else { 0.0 };
}

fn mean(sum: Scores, cases: usize) -> Scores {
    let n = cases.max(1) as f64;
    Scores {
        hit_rate: sum.hit_rate / n,
        recall: sum.recall / n,
        ndcg: sum.ndcg / n,
    }
}

/// What the rules of `set` recommend for a cart of `carted`: proposals, most confident
/// first, filled up from the popular products.
pub fn recommend_offline<'a>(set: &'a RuleSet, carted: &'a str, k: usize) -> Vec<&'a str> {
    let seen: HashSet<&str> = [carted].into();
    let mut out: Vec<&str> = set
        .propose(&seen, &seen)
        .into_iter()
        .map(|p| p.product)
        .take(k)
        .collect();
    for popular in &set.popular {
        if out.len() >= k {
            break;
        }
        if popular.product != carted && !out.contains(&popular.product.as_str()) {
            out.push(&popular.product);
        }
    }
    out
}

/// Evaluates `set` (mined from the earlier baskets) and the popularity of its
/// `popular` list on the `later` baskets.
pub fn evaluate(set: &RuleSet, train_baskets: usize, later: &Baskets, k: usize) -> Evaluation {
    let (mut rules, mut popularity, mut cases) = (Scores::default(), Scores::default(), 0);
    for basket in later.baskets.iter().filter(|b| b.len() >= 2) {
        let products: Vec<&str> = basket
            .iter()
            .map(|i| later.products[*i as usize].as_str())
            .collect();
        let (carted, bought) = (products[0], &products[1..]);
        score_case(&recommend_offline(set, carted, k), bought, k, &mut rules);
        let popular: Vec<&str> = set
            .popular
            .iter()
            .map(|p| p.product.as_str())
            .filter(|p| *p != carted)
            .take(k)
            .collect();
        score_case(&popular, bought, k, &mut popularity);
        cases += 1;
    }
    Evaluation {
        k,
        train_baskets,
        test_baskets: later.baskets.len(),
        cases,
        rules: mean(rules, cases),
        popularity: mean(popularity, cases),
    }
}

impl Evaluation {
    pub fn markdown(&self) -> String {
        let row = |name: &str, s: &Scores| {
            format!(
                "| {name} | {:.4} | {:.4} | {:.4} |\n",
                s.hit_rate, s.recall, s.ndcg
            )
        };
        format!(
            "Rules mined from {} earlier baskets; {} later baskets, {} of two or more products (one carted, the rest bought).\n\n| recommender | hit rate@{k} | recall@{k} | NDCG@{k} |\n|---|---|---|---|\n{}{}",
            self.train_baskets,
            self.test_baskets,
            self.cases,
            row("rules + popular fill", &self.rules),
            row("popularity", &self.popularity),
            k = self.k
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_follow_their_definitions() {
        let mut sum = Scores::default();
        // Bought b and d; found d at rank 2 (0-based 1) of a, d, x.
        score_case(&["a", "d", "x"], &["b", "d"], 3, &mut sum);
        assert_eq!(sum.hit_rate, 1.0);
        assert_eq!(sum.recall, 0.5);
        let ideal = 1.0 + 1.0 / 3f64.log2();
        assert!((sum.ndcg - (1.0 / 3f64.log2()) / ideal).abs() < 1e-15);
        // Nothing found: all zero, and the mean halves the first case.
        score_case(&["x"], &["b"], 3, &mut sum);
        let averaged = mean(sum, 2);
        assert_eq!(averaged.hit_rate, 0.5);
        assert_eq!(averaged.recall, 0.25);
    }
}
