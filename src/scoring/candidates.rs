//! Ranking candidate products for one user: one model resolution, one validation of
//! the user context, one hold of the engine's read lock and one pass of the model over
//! all candidates, so 100 candidates cost a fraction of 100 `Score` calls (no per-call
//! network round trip, decoding, lookup or lock).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{ScoreError, complete};
use crate::definitions::{Definitions, EntityTypeId};
use crate::events::{RawEvent, Refusal};
use crate::features::EntityReads;
use crate::registry::{LoadedModel, Registry};
use crate::store::FeatureStore;

/// Candidates one call may rank.
pub const MAX_CANDIDATES: usize = 1_000;

#[derive(Debug, Clone, PartialEq)]
pub struct CandidateInput {
    pub product: String,
    pub numbers: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RankedCandidate {
    pub product: String,
    pub score: f64,
}

#[derive(Debug, Clone)]
pub struct Ranking {
    pub model: Arc<LoadedModel>,
    /// Best first, at most `top_n` (in the order given, all, when unordered).
    pub candidates: Vec<RankedCandidate>,
    /// Entity types of the user context the store holds nothing for.
    pub unknown_entities: Vec<String>,
    /// Candidate products the store holds nothing for (their features are defaults).
    pub unknown_products: Vec<String>,
}

/// Orders `ranked` best first. A product the store knows nothing of comes after every
/// known one, whatever its score (its features are the model's defaults, not evidence).
/// Equal scores keep the caller's order, which is its own evidence (`Recommend` passes
/// its candidates strongest rule first): before, ties went by product id, and a purchase
/// model with no signal for the moment (all 24 h features empty) ranked the smallest ids
/// first.
fn best_first(ranked: &mut [RankedCandidate], unknown_products: &[String]) {
    let unknown = |candidate: &RankedCandidate| unknown_products.contains(&candidate.product);
    // A stable sort: ties stay in the order given.
    ranked.sort_by(|a, b| {
        unknown(a)
            .cmp(&unknown(b))
            .then(b.score.total_cmp(&a.score))
    });
}

/// Makes `event` the context with `candidate`'s product and numbers.
fn set_candidate(
    event: &mut RawEvent,
    context_numbers: &BTreeMap<String, f64>,
    candidate: &CandidateInput,
) {
    event
        .entities
        .insert("product".into(), candidate.product.clone());
    if !candidate.numbers.is_empty() || event.numbers.len() != context_numbers.len() {
        event.numbers.clone_from(context_numbers);
        event
            .numbers
            .extend(candidate.numbers.iter().map(|(k, v)| (k.clone(), *v)));
    }
}

/// A ranking call checked, its model resolved and its context completed: what either
/// backend (the embedded engine, or a scorer's fetched states) reads for.
pub struct CandidateCall<'c> {
    pub model: Arc<LoadedModel>,
    context: RawEvent,
    candidates: &'c [CandidateInput],
    top_n: usize,
    /// Whether [`CandidateCall::rank`] orders the candidates (best first).
    ordered: bool,
}

impl<'c> CandidateCall<'c> {
    pub fn new(
        registry: &Registry,
        model: &str,
        mut context: RawEvent,
        candidates: &'c [CandidateInput],
        top_n: usize,
    ) -> Result<CandidateCall<'c>, ScoreError> {
        let model = registry.resolve_ranker(model)?;
        if candidates.is_empty() || candidates.len() > MAX_CANDIDATES {
            return Err(ScoreError::Invalid {
                field: "candidates",
                reason: format!(
                    "give 1 to {MAX_CANDIDATES} candidates, got {}",
                    candidates.len()
                ),
            });
        }
        if context.event_type.is_empty() {
            context.event_type = "page_view".into();
        }
        complete(&mut context, false)?;
        Ok(CandidateCall {
            model,
            context,
            candidates,
            top_n,
            ordered: true,
        })
    }

    /// Leaves the candidates in the order given, all of them: for a caller that orders
    /// them by more than the probability (`Recommend`), so they are sorted once.
    pub fn unordered(self) -> CandidateCall<'c> {
        CandidateCall {
            ordered: false,
            top_n: 0,
            ..self
        }
    }

    /// Every entity the ranking reads (the context's and each candidate product), once
    /// each: what a scorer fetches before [`CandidateCall::rank`].
    pub fn entities(&self, definitions: &Definitions) -> Vec<(EntityTypeId, String)> {
        let mut event = self.context.clone();
        let context_numbers = self.context.numbers.clone();
        let mut entities = Vec::new();
        for candidate in self.candidates {
            set_candidate(&mut event, &context_numbers, candidate);
            entities.extend(self.model.plan.entities_of(definitions, &event));
        }
        entities.sort_unstable();
        entities.dedup();
        entities
    }

    /// Scores every candidate as a page view of it by the context's user (the purchase
    /// model's observation), each event checked by `check`, and keeps the best `top_n`
    /// (all when 0).
    pub fn rank(
        self,
        definitions: &Definitions,
        engine: &dyn EntityReads,
        check: impl Fn(&RawEvent) -> Result<(), Refusal>,
    ) -> Result<Ranking, ScoreError> {
        let CandidateCall {
            model,
            context,
            candidates,
            top_n,
            ordered,
        } = self;
        // One event is reused for every candidate: its product and numbers are set in
        // place, so a large context is never copied per candidate. The context's own
        // numbers are kept to restore between candidates.
        let context_numbers = context.numbers.clone();
        let mut event = context;
        let mut ranked = Vec::with_capacity(candidates.len());
        let mut vector = Vec::with_capacity(model.plan.width());
        let mut unknown = None;
        let mut unknown_products = Vec::new();
        let product_entity = definitions.entity_id("product");
        let mut reads = model.plan.cached_reads();
        for (index, candidate) in candidates.iter().enumerate() {
            set_candidate(&mut event, &context_numbers, candidate);
            check(&event).map_err(|refusal| {
                ScoreError::Refused(Refusal {
                    field: format!("candidates[{index}].{}", refusal.field),
                    ..refusal
                })
            })?;
            let source = reads.read(definitions, engine, &event, &mut vector)?;
            if source.unknown.iter().any(|e| Some(*e) == product_entity) {
                unknown_products.push(candidate.product.clone());
            }
            unknown.get_or_insert(source.unknown);
            ranked.push(RankedCandidate {
                product: candidate.product.clone(),
                score: super::finite(&model, model.body.model.predict(&vector))?,
            });
        }
        let unknown = unknown.unwrap_or_default();
        let mut context = event;
        context.entities.remove("product");
        if ordered {
            best_first(&mut ranked, &unknown_products);
        }
        if top_n > 0 {
            ranked.truncate(top_n);
        }
        // Only the context's entities are reported: an unknown candidate is the normal
        // case for a new product, not something the caller got wrong.
        let unknown_entities = unknown
            .iter()
            .map(|entity| definitions.entities[*entity].name.clone())
            .filter(|name| context.entities.contains_key(name))
            .collect();
        Ok(Ranking {
            model,
            candidates: ranked,
            unknown_entities,
            unknown_products,
        })
    }
}

/// Ranks `candidates` on the embedded engine, all read at one cut of the log.
pub fn score_candidates(
    store: &FeatureStore,
    registry: &Registry,
    model: &str,
    context: RawEvent,
    candidates: &[CandidateInput],
    top_n: usize,
) -> Result<Ranking, ScoreError> {
    let call = CandidateCall::new(registry, model, context, candidates, top_n)?;
    store.with_engine(|engine| call.rank(store.definitions(), engine, |event| store.check(event)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranked(pairs: &[(&str, f64)]) -> Vec<RankedCandidate> {
        pairs
            .iter()
            .map(|(product, score)| RankedCandidate {
                product: product.to_string(),
                score: *score,
            })
            .collect()
    }

    #[test]
    fn ties_keep_the_order_given_and_unknown_products_come_last() {
        // As Recommend passes them: strongest rule first, ids in no order.
        let mut all = ranked(&[
            ("p9", 0.4),
            ("p1", 0.4),
            ("p5", 0.7),
            ("new", 0.9),
            ("p3", 0.4),
        ]);
        best_first(&mut all, &["new".to_string()]);
        let order: Vec<&str> = all.iter().map(|c| c.product.as_str()).collect();
        // Before: ["new", "p5", "p1", "p3", "p9"].
        assert_eq!(order, ["p5", "p9", "p1", "p3", "new"]);
    }
}
