//! `Recommend`: products for one user, found by the service itself. What the user has
//! looked at and carted lately (the `recent_distinct` lists the engine keeps), plus the
//! request's current product and cart, are matched against a mined rule set; each rule
//! whose whole antecedent was seen proposes its consequent. When the rules propose too
//! few, the most popular products fill up. The candidates are then ranked by the
//! purchase model through the same path as `ScoreCandidates`, and each answer says why
//! it is there: its rule, or popularity. What the user ordered in the lists' window,
//! and what is in the cart now, is never proposed.

use std::collections::HashSet;
use std::sync::Arc;

use super::candidates::{CandidateInput, score_candidates};
use super::{ScoreError, complete};
use crate::events::RawEvent;
use crate::features::EntityReads;
use crate::model::rules::{AssociationRule, MAX_PRODUCT_BYTES};
use crate::registry::{LoadedModel, Registry};
use crate::store::FeatureStore;

/// Most recommendations one call may ask for.
pub const MAX_RECOMMENDATIONS: usize = 100;
/// Recommendations when the request does not say.
pub const DEFAULT_RECOMMENDATIONS: usize = 10;
/// Most cart products a request may carry.
pub const MAX_CART: usize = 100;
/// Rule-proposed candidates ranked at most (the most confident).
pub const MAX_RULE_CANDIDATES: usize = 200;

/// Which features hold the user's recent products (see features.toml).
#[derive(Debug, Clone, PartialEq)]
pub struct RecentFeatures {
    /// Viewed and carted products: what the rules are matched against.
    pub products: String,
    /// Carted products with when: those carted before the last order were ordered.
    pub carts: String,
    /// The user's own id over their orders (k = 1): when they last ordered.
    pub last_order: String,
}

impl Default for RecentFeatures {
    fn default() -> Self {
        RecentFeatures {
            products: "user_recent_products".into(),
            carts: "user_recent_carts".into(),
            last_order: "user_last_order".into(),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct RecommendInput {
    /// The rule set: name, `name@version` or alias (default `rules`).
    pub rules: String,
    /// The model ranking the candidates (default `purchase`).
    pub model: String,
    pub user: String,
    pub device: Option<String>,
    /// The product being looked at, if any.
    pub product: Option<String>,
    pub cart: Vec<String>,
    /// 0: [`DEFAULT_RECOMMENDATIONS`].
    pub top_n: usize,
    /// As of when (0: now).
    pub event_time_ms: i64,
}

/// Why a product is recommended.
#[derive(Debug, Clone, PartialEq)]
pub enum Why {
    Rule(AssociationRule),
    /// Popular: the share of baskets holding it.
    Popular(f64),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Recommendation {
    pub product: String,
    /// The purchase model's probability for it.
    pub probability: f64,
    pub why: Why,
}

#[derive(Debug, Clone)]
pub struct Recommended {
    pub rules: Arc<LoadedModel>,
    pub model: Arc<LoadedModel>,
    /// Best first.
    pub items: Vec<Recommendation>,
    /// The products the rules were matched against, newest first.
    pub context: Vec<String>,
    /// Products left out: ordered in the window, or in the cart now.
    pub excluded: Vec<String>,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ScoreError {
    ScoreError::Invalid {
        field,
        reason: reason.into(),
    }
}

impl RecommendInput {
    fn check(&mut self) -> Result<(), ScoreError> {
        if self.rules.is_empty() {
            self.rules = "rules".into();
        }
        if self.model.is_empty() {
            self.model = "purchase".into();
        }
        if self.user.is_empty() {
            return Err(invalid("user", "must not be empty"));
        }
        if self.top_n == 0 {
            self.top_n = DEFAULT_RECOMMENDATIONS;
        }
        if self.top_n > MAX_RECOMMENDATIONS {
            return Err(invalid(
                "top_n",
                format!("at most {MAX_RECOMMENDATIONS}, got {}", self.top_n),
            ));
        }
        if self.cart.len() > MAX_CART {
            return Err(invalid(
                "cart",
                format!("at most {MAX_CART} products, got {}", self.cart.len()),
            ));
        }
        let bad = |product: &str| product.is_empty() || product.len() > MAX_PRODUCT_BYTES;
        if let Some(at) = self.cart.iter().position(|p| bad(p)) {
            return Err(invalid(
                "cart",
                format!("cart[{at}]: a product id must be 1 to {MAX_PRODUCT_BYTES} bytes"),
            ));
        }
        if self.product.as_deref().is_some_and(bad) {
            return Err(invalid(
                "product",
                format!("a product id must be 1 to {MAX_PRODUCT_BYTES} bytes"),
            ));
        }
        if self.user.len() > MAX_PRODUCT_BYTES {
            return Err(invalid(
                "user",
                format!("at most {MAX_PRODUCT_BYTES} bytes, got {}", self.user.len()),
            ));
        }
        Ok(())
    }
}

/// The user's recent products and those they ordered, as of `at`.
struct History {
    seen: Vec<String>,
    ordered: Vec<String>,
}

fn read_history(
    store: &FeatureStore,
    features: &RecentFeatures,
    user: &str,
    at: i64,
) -> Result<History, ScoreError> {
    let definitions = store.definitions();
    // A feature the running definitions lack reads as an empty list.
    let list = |engine: &dyn EntityReads, name: &str| -> Result<Vec<(String, i64)>, ScoreError> {
        match definitions.feature_id(name) {
            Some(id) if definitions.features[id].is_list() => {
                Ok(engine.read_recent(definitions.features[id].entity, user, id, at)?)
            }
            _ => Ok(Vec::new()),
        }
    };
    store.with_engine(|engine| {
        let seen = list(engine, &features.products)?;
        let carts = list(engine, &features.carts)?;
        let last_order = list(engine, &features.last_order)?
            .first()
            .map(|(_, time)| *time);
        let ordered = match last_order {
            Some(ordered_at) => carts
                .into_iter()
                .filter(|(_, time)| *time <= ordered_at)
                .map(|(product, _)| product)
                .collect(),
            None => Vec::new(),
        };
        Ok(History {
            seen: seen.into_iter().map(|(product, _)| product).collect(),
            ordered,
        })
    })
}

/// Recommends products for `input`'s user (see the module doc).
pub fn recommend(
    store: &FeatureStore,
    registry: &Registry,
    features: &RecentFeatures,
    mut input: RecommendInput,
) -> Result<Recommended, ScoreError> {
    input.check()?;
    let rules_model = registry.resolve_rules(&input.rules)?;
    let Some(rules) = rules_model.rules() else {
        return Err(invalid("rules", "not a rule set"));
    };
    let mut context = RawEvent {
        event_type: "page_view".into(),
        event_time_ms: input.event_time_ms,
        ..RawEvent::default()
    };
    context.entities.insert("user".into(), input.user.clone());
    if let Some(device) = &input.device {
        context.entities.insert("device".into(), device.clone());
    }
    complete(&mut context, false)?;
    let history = read_history(store, features, &input.user, context.event_time_ms)?;

    let mut context_products: Vec<String> = Vec::new();
    for product in input.product.iter().chain(&input.cart).chain(&history.seen) {
        if !context_products.contains(product) {
            context_products.push(product.clone());
        }
    }
    let mut excluded: Vec<String> = Vec::new();
    for product in input
        .product
        .iter()
        .chain(&input.cart)
        .chain(&history.ordered)
    {
        if !excluded.contains(product) {
            excluded.push(product.clone());
        }
    }
    let seen: HashSet<&str> = context_products.iter().map(String::as_str).collect();
    let left_out: HashSet<&str> = excluded.iter().map(String::as_str).collect();

    let mut why: Vec<(String, Why)> = rules
        .propose(&seen, &left_out)
        .into_iter()
        .take(MAX_RULE_CANDIDATES)
        .map(|proposal| {
            (
                proposal.product.to_string(),
                Why::Rule(proposal.rule.clone()),
            )
        })
        .collect();
    if why.len() < input.top_n {
        let proposed: HashSet<String> = why.iter().map(|(p, _)| p.clone()).collect();
        let fill: Vec<(String, Why)> = rules
            .popular
            .iter()
            .filter(|p| !left_out.contains(p.product.as_str()) && !proposed.contains(&p.product))
            .take(input.top_n - why.len())
            .map(|p| (p.product.clone(), Why::Popular(p.support)))
            .collect();
        why.extend(fill);
    }
    if why.is_empty() {
        return Ok(Recommended {
            model: registry.resolve_ranker(&input.model)?,
            rules: rules_model,
            items: Vec::new(),
            context: context_products,
            excluded,
        });
    }
    let candidates: Vec<CandidateInput> = why
        .iter()
        .map(|(product, _)| CandidateInput {
            product: product.clone(),
            numbers: Default::default(),
        })
        .collect();
    let ranking = score_candidates(store, registry, &input.model, context, &candidates, 0)?;
    let mut reasons: std::collections::HashMap<String, Why> = why.into_iter().collect();
    let items = ranking
        .candidates
        .into_iter()
        .filter_map(|ranked| {
            let why = reasons.remove(&ranked.product)?;
            Some(Recommendation {
                product: ranked.product,
                probability: ranked.score,
                why,
            })
        })
        .take(input.top_n)
        .collect();
    Ok(Recommended {
        rules: rules_model,
        model: ranking.model,
        items,
        context: context_products,
        excluded,
    })
}
