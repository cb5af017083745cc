//! Offline evaluation of `Recommend` on a cut in time, through the served path. Rules
//! are mined from the baskets closed before the cut. The history is then replayed
//! through a fresh feature engine, and at the moments a later basket was being filled
//! the very function the live call runs ([`recommend_on`]) is asked, with the
//! user's history as the store held it then:
//! - `rest` hidden: the moment the first product went into the cart, that product in
//!   the cart; the hidden products are the others the basket went on to hold;
//! - `last` hidden: the moment the last but one went in, all but the last in the cart;
//!   the hidden product is the last one.
//!
//! Each query is ranked three ways: as served (evidence first, the purchase model
//! within confidence bands), the same candidates by rule confidence alone, and the
//! popular products; hit rate at 1, 5 and `k`, recall and NDCG at `k` and coverage say
//! how well each found the hidden products.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::baskets::ClosedCart;
use crate::definitions::Definitions;
use crate::events::{Limits, RawEvent};
use crate::features::EngineSettings;
use crate::features::replay::Replay;
use crate::registry::Registry;
use crate::scoring::recommend::{RecentFeatures, RecommendInput, recommend_on};

/// Which of a basket's products a query hides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Hide {
    /// All but the first carted.
    Rest,
    /// The last carted.
    Last,
}

/// One query: the user, the moment, what is in the cart then and what they went on to
/// buy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Case {
    pub hide: Hide,
    pub user: String,
    pub at_ms: i64,
    pub cart: Vec<String>,
    pub hidden: Vec<String>,
}

impl Case {
    /// The query `hide` makes of a basket of two or more products (`None` for one).
    pub fn of(basket: &ClosedCart, hide: Hide) -> Option<Case> {
        let carted = &basket.carted;
        if carted.len() < 2 {
            return None;
        }
        let in_cart = match hide {
            Hide::Rest => 1,
            Hide::Last => carted.len() - 1,
        };
        let product = |(_, product): &(i64, String)| product.clone();
        Some(Case {
            hide,
            user: basket.user.clone(),
            at_ms: carted[in_cart - 1].0,
            cart: carted[..in_cart].iter().map(product).collect(),
            hidden: carted[in_cart..].iter().map(product).collect(),
        })
    }
}

/// A query and what each recommender named for it, best first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answered {
    #[serde(flatten)]
    pub case: Case,
    /// As `Recommend` answers with `top_n = k`.
    pub served: Vec<String>,
    /// The same candidates in the order proposed: strongest rule first, then the
    /// popular fill.
    pub by_confidence: Vec<String>,
    /// The most popular products not in the cart and not ordered in the window.
    pub popularity: Vec<String>,
}

/// What the replay asks with.
pub struct ServedPath<'a> {
    pub registry: &'a Registry,
    pub definitions: Arc<Definitions>,
    pub engine: EngineSettings,
    pub limits: Limits,
    pub features: RecentFeatures,
    /// The rule set's reference (`name@version`).
    pub rules: String,
    /// The ranking model's reference.
    pub model: String,
    pub k: usize,
}

/// Queries that failed, and the first reason.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Failures {
    pub count: usize,
    pub first: Option<String>,
}

/// Replays `history` (in time order) and answers every case at its moment: after
/// every event up to and including its time, before any later one.
pub fn replay(
    path: &ServedPath,
    history: impl Iterator<Item = RawEvent>,
    mut cases: Vec<Case>,
) -> (Vec<Answered>, Failures) {
    cases.sort_by_key(|case| case.at_ms);
    let rules = path.registry.resolve_rules(&path.rules).ok();
    let popular: Vec<&str> = rules
        .as_ref()
        .and_then(|model| model.rules())
        .map(|set| set.popular.iter().map(|p| p.product.as_str()).collect())
        .unwrap_or_default();
    let mut replay = Replay::new(Arc::clone(&path.definitions), path.engine, path.limits);
    let mut answered = Vec::with_capacity(cases.len());
    let mut failures = Failures::default();
    let mut pending = cases.into_iter().peekable();
    let mut answer = |replay: &Replay, case: Case| {
        let input = RecommendInput {
            rules: path.rules.clone(),
            model: path.model.clone(),
            user: case.user.clone(),
            cart: case.cart.clone(),
            top_n: path.k,
            event_time_ms: case.at_ms,
            ..RecommendInput::default()
        };
        let view = replay.engine().view();
        let mut proposed = Vec::new();
        match recommend_on(
            path.registry,
            &path.definitions,
            &view,
            |event| replay.check(event),
            &path.features,
            input,
            Some(&mut proposed),
        ) {
            Ok(recommended) => {
                let excluded: HashSet<&str> =
                    recommended.excluded.iter().map(String::as_str).collect();
                answered.push(Answered {
                    served: recommended.items.into_iter().map(|i| i.product).collect(),
                    by_confidence: proposed.into_iter().take(path.k).collect(),
                    popularity: popular
                        .iter()
                        .filter(|p| !excluded.contains(**p))
                        .take(path.k)
                        .map(|p| p.to_string())
                        .collect(),
                    case,
                });
            }
            Err(error) => {
                failures.count += 1;
                failures.first.get_or_insert_with(|| error.to_string());
            }
        }
    };
    for event in history {
        while let Some(case) = pending.next_if(|case| case.at_ms < event.event_time_ms) {
            answer(&replay, case);
        }
        replay.apply(&event);
    }
    for case in pending {
        answer(&replay, case);
    }
    (answered, failures)
}

/// Hit rates, recall, NDCG and coverage of one recommender over the same cases.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Scores {
    /// Share of cases with a hidden product among the first n, by n.
    pub hit_rate: BTreeMap<usize, f64>,
    /// Mean share of the hidden products found among the `k`.
    pub recall: f64,
    /// Mean normalised discounted cumulative gain at `k` (binary relevance).
    pub ndcg: f64,
    /// Distinct products named in any answer, over the distinct products the cases
    /// hid.
    pub coverage: f64,
}

/// Hit rate is reported at these n (and at `k`), where n <= k.
const HIT_AT: [usize; 2] = [1, 5];

/// Scores `ranked` (one list per case) against each case's hidden products.
pub fn score<'a>(lists: impl Iterator<Item = (&'a [String], &'a [String])>, k: usize) -> Scores {
    let mut cutoffs: Vec<usize> = HIT_AT.iter().copied().filter(|n| *n < k).collect();
    cutoffs.push(k);
    let mut hits = vec![0.0; cutoffs.len()];
    let (mut recall, mut ndcg, mut cases) = (0.0, 0.0, 0usize);
    let mut named: HashSet<&str> = HashSet::new();
    let mut hidden_products: HashSet<&str> = HashSet::new();
    let gain = |rank: usize| 1.0 / ((rank + 2) as f64).log2();
    for (ranked, hidden) in lists {
        cases += 1;
        let ranked = &ranked[..ranked.len().min(k)];
        named.extend(ranked.iter().map(String::as_str));
        hidden_products.extend(hidden.iter().map(String::as_str));
        let found: Vec<bool> = ranked.iter().map(|p| hidden.contains(p)).collect();
        for (at, n) in cutoffs.iter().enumerate() {
            if found.iter().take(*n).any(|f| *f) {
                hits[at] += 1.0;
            }
        }
        let hit_count = found.iter().filter(|f| **f).count();
        recall += hit_count as f64 / hidden.len().max(1) as f64;
        let dcg: f64 = (0..found.len()).filter(|r| found[*r]).map(gain).sum();
        let ideal: f64 = (0..hidden.len().min(k)).map(gain).sum();
        ndcg += if ideal > 0.0 { dcg / ideal } else { 0.0 };
    }
    let n = cases.max(1) as f64;
    Scores {
        hit_rate: cutoffs
            .into_iter()
            .zip(hits)
            .map(|(c, h)| (c, h / n))
            .collect(),
        recall: recall / n,
        ndcg: ndcg / n,
        coverage: named.intersection(&hidden_products).count() as f64
            / hidden_products.len().max(1) as f64,
    }
}

/// One way of hiding, evaluated.
#[derive(Debug, Clone, Serialize)]
pub struct ModeEvaluation {
    pub hide: Hide,
    pub cases: usize,
    pub served: Scores,
    pub by_confidence: Scores,
    pub popularity: Scores,
}

#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    pub k: usize,
    pub rules: String,
    pub model: String,
    pub train_baskets: usize,
    pub test_baskets: usize,
    pub modes: Vec<ModeEvaluation>,
    pub failed_queries: Failures,
}

/// The scores of every way of hiding in `answered`.
pub fn modes(answered: &[Answered], k: usize) -> Vec<ModeEvaluation> {
    [Hide::Rest, Hide::Last]
        .into_iter()
        .map(|hide| {
            let of = |pick: fn(&Answered) -> &[String]| {
                score(
                    answered
                        .iter()
                        .filter(|a| a.case.hide == hide)
                        .map(|a| (pick(a), a.case.hidden.as_slice())),
                    k,
                )
            };
            ModeEvaluation {
                hide,
                cases: answered.iter().filter(|a| a.case.hide == hide).count(),
                served: of(|a| &a.served),
                by_confidence: of(|a| &a.by_confidence),
                popularity: of(|a| &a.popularity),
            }
        })
        .collect()
}

impl Evaluation {
    pub fn markdown(&self) -> String {
        let mut out = format!(
            "Rules {} mined from {} earlier baskets; {} later baskets. Each query asks `Recommend` (ranked by {}, top {}) at the moment the basket was being filled, with the user's history as the store held it then.\n",
            self.rules, self.train_baskets, self.test_baskets, self.model, self.k
        );
        for mode in &self.modes {
            let what = match mode.hide {
                Hide::Rest => "first product carted, the rest hidden",
                Hide::Last => "all but the last carted, the last hidden",
            };
            let cutoffs: Vec<usize> = mode.served.hit_rate.keys().copied().collect();
            let hit_heads: String = cutoffs.iter().map(|n| format!(" hit@{n} |")).collect();
            out.push_str(&format!(
                "\n{} queries, {what}:\n\n| ranking |{hit_heads} recall@{k} | NDCG@{k} | coverage |\n|---|{}---|---|---|\n",
                mode.cases,
                "---|".repeat(cutoffs.len()),
                k = self.k
            ));
            for (name, scores) in [
                ("served (Recommend)", &mode.served),
                ("rules by confidence", &mode.by_confidence),
                ("popularity", &mode.popularity),
            ] {
                let hits: String = scores
                    .hit_rate
                    .values()
                    .map(|h| format!(" {h:.4} |"))
                    .collect();
                out.push_str(&format!(
                    "| {name} |{hits} {:.4} | {:.4} | {:.4} |\n",
                    scores.recall, scores.ndcg, scores.coverage
                ));
            }
        }
        if self.failed_queries.count > 0 {
            out.push_str(&format!(
                "\n{} queries failed; the first: {}\n",
                self.failed_queries.count,
                self.failed_queries.first.as_deref().unwrap_or("")
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn metrics_follow_their_definitions() {
        // Hidden b and d; d found at 0-based rank 1 of a, d, x. Then nothing found.
        let first = (strings(&["a", "d", "x"]), strings(&["b", "d"]));
        let second = (strings(&["x"]), strings(&["b"]));
        let cases = [first, second];
        let scores = score(cases.iter().map(|(r, h)| (r.as_slice(), h.as_slice())), 3);
        assert_eq!(scores.hit_rate[&1], 0.0);
        assert_eq!(scores.hit_rate[&3], 0.5);
        assert_eq!(scores.recall, 0.25);
        let ideal = 1.0 + 1.0 / 3f64.log2();
        assert!((scores.ndcg - (1.0 / 3f64.log2()) / ideal / 2.0).abs() < 1e-15);
        // Named a, d, x; hidden b, d: one of two hidden products was ever named.
        assert_eq!(scores.coverage, 0.5);
    }

    #[test]
    fn a_basket_makes_one_query_per_way_of_hiding() {
        let basket = ClosedCart {
            user: "u1".into(),
            order_ms: 100,
            carted: vec![(10, "p9".into()), (20, "p2".into()), (30, "p5".into())],
        };
        let rest = Case::of(&basket, Hide::Rest).expect("three products");
        assert_eq!(
            (rest.at_ms, rest.cart, rest.hidden),
            (10, strings(&["p9"]), strings(&["p2", "p5"]))
        );
        let last = Case::of(&basket, Hide::Last).expect("three products");
        assert_eq!(
            (last.at_ms, last.cart, last.hidden),
            (20, strings(&["p9", "p2"]), strings(&["p5"]))
        );
        let single = ClosedCart {
            carted: vec![(10, "p9".into())],
            ..basket
        };
        assert_eq!(Case::of(&single, Hide::Rest), None);
    }
}
