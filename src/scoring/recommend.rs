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

use super::candidates::{CandidateInput, Ranking, score_candidates};
use super::{ScoreError, complete};
use crate::definitions::{Definitions, EntityTypeId};
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
    definitions: &Definitions,
    engine: &dyn EntityReads,
    features: &RecentFeatures,
    user: &str,
    at: i64,
) -> Result<History, ScoreError> {
    // A feature the running definitions lack reads as an empty list.
    let list = |name: &str| -> Result<Vec<(String, i64)>, ScoreError> {
        match definitions.feature_id(name) {
            Some(id) if definitions.features[id].is_list() => {
                Ok(engine.read_recent(definitions.features[id].entity, user, id, at)?)
            }
            _ => Ok(Vec::new()),
        }
    };
    let seen = list(&features.products)?;
    let carts = list(&features.carts)?;
    let last_order = list(&features.last_order)?.first().map(|(_, time)| *time);
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
}

/// A `Recommend` call checked, its rule set resolved and its context built: what
/// either backend (the embedded engine, or a scorer's fetched states) reads for.
pub struct RecommendCall {
    input: RecommendInput,
    rules_model: Arc<LoadedModel>,
    context: RawEvent,
}

impl RecommendCall {
    pub fn new(registry: &Registry, mut input: RecommendInput) -> Result<Self, ScoreError> {
        input.check()?;
        let rules_model = registry.resolve_rules(&input.rules)?;
        if rules_model.rules().is_none() {
            return Err(invalid("rules", "not a rule set"));
        }
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
        Ok(RecommendCall {
            input,
            rules_model,
            context,
        })
    }

    /// The entities whose lists [`RecommendCall::propose`] reads: what a scorer fetches
    /// first.
    pub fn history_entities(
        &self,
        definitions: &Definitions,
        features: &RecentFeatures,
    ) -> Vec<(EntityTypeId, String)> {
        let mut entities: Vec<(EntityTypeId, String)> =
            [&features.products, &features.carts, &features.last_order]
                .into_iter()
                .filter_map(|name| definitions.feature_id(name))
                .map(|id| (definitions.features[id].entity, self.input.user.clone()))
                .collect();
        entities.sort_unstable();
        entities.dedup();
        entities
    }

    /// Reads the user's history through `engine` and proposes candidates: rule
    /// consequents first, popular products to fill up.
    pub fn propose(
        self,
        definitions: &Definitions,
        engine: &dyn EntityReads,
        features: &RecentFeatures,
    ) -> Result<Proposal, ScoreError> {
        let RecommendCall {
            input,
            rules_model,
            context,
        } = self;
        let history = read_history(
            definitions,
            engine,
            features,
            &input.user,
            context.event_time_ms,
        )?;
        let Some(rules) = rules_model.rules() else {
            return Err(invalid("rules", "not a rule set"));
        };
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
                .filter(|p| {
                    !left_out.contains(p.product.as_str()) && !proposed.contains(&p.product)
                })
                .take(input.top_n - why.len())
                .map(|p| (p.product.clone(), Why::Popular(p.support)))
                .collect();
            why.extend(fill);
        }
        let candidates = why
            .iter()
            .map(|(product, _)| CandidateInput {
                product: product.clone(),
                numbers: Default::default(),
            })
            .collect();
        Ok(Proposal {
            model: input.model,
            top_n: input.top_n,
            rules_model,
            context,
            why,
            candidates,
            context_products,
            excluded,
        })
    }
}

/// Candidates proposed for a `Recommend` call, to be ranked by the purchase model.
pub struct Proposal {
    /// The ranking model's reference.
    pub model: String,
    top_n: usize,
    rules_model: Arc<LoadedModel>,
    /// The page view the candidates are ranked as (the user, the device, the moment).
    pub context: RawEvent,
    why: Vec<(String, Why)>,
    pub candidates: Vec<CandidateInput>,
    context_products: Vec<String>,
    excluded: Vec<String>,
}

impl Proposal {
    /// The answer, given the candidates' ranking (`None` when none was proposed).
    pub fn finish(
        self,
        registry: &Registry,
        ranking: Option<Ranking>,
    ) -> Result<Recommended, ScoreError> {
        let Some(ranking) = ranking else {
            return Ok(Recommended {
                model: registry.resolve_ranker(&self.model)?,
                rules: self.rules_model,
                items: Vec::new(),
                context: self.context_products,
                excluded: self.excluded,
            });
        };
        let mut reasons: std::collections::HashMap<String, Why> = self.why.into_iter().collect();
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
            .take(self.top_n)
            .collect();
        Ok(Recommended {
            rules: self.rules_model,
            model: ranking.model,
            items,
            context: self.context_products,
            excluded: self.excluded,
        })
    }
}

/// Recommends products for `input`'s user (see the module doc) on the embedded engine.
pub fn recommend(
    store: &FeatureStore,
    registry: &Registry,
    features: &RecentFeatures,
    input: RecommendInput,
) -> Result<Recommended, ScoreError> {
    let call = RecommendCall::new(registry, input)?;
    let proposal =
        store.with_engine(|engine| call.propose(store.definitions(), engine, features))?;
    let ranking = match proposal.candidates.is_empty() {
        true => None,
        false => Some(score_candidates(
            store,
            registry,
            &proposal.model,
            proposal.context.clone(),
            &proposal.candidates,
            0,
        )?),
    };
    proposal.finish(registry, ranking)
}
