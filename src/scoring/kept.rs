//! The answer of a recorded call as kept outside the process (a scorer keeps it in
//! the online store), so that a retry gets the first attempt's answer on any scorer:
//! scored again, the retry would read features that already count its first attempt.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{Reason, ScoreError, Scored};
use crate::features::ReadCut;
use crate::model::decision::Decision;
use crate::registry::{LoadedModel, Registry};
use crate::store::BatchOutcome;

/// What a retry answers: the first attempt's model version, score, decision, reasons,
/// unknown entities and (when asked) features. Encoded with postcard: floats bit for
/// bit, NaN included.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeptAnswer {
    /// `name@version` of the model that answered.
    pub model: String,
    pub score: f64,
    pub decision: Option<Decision>,
    /// Feature, value, contribution, clipped.
    pub reasons: Vec<(String, Option<f64>, f64, bool)>,
    pub unknown_entities: Vec<String>,
    pub features: Option<Vec<(String, Option<f64>)>>,
    /// The watermark the first attempt read at.
    pub watermark_ms: i64,
}

impl KeptAnswer {
    pub fn of(scored: &Scored) -> KeptAnswer {
        KeptAnswer {
            model: scored.model.reference(),
            score: scored.score,
            decision: scored.decision,
            reasons: scored
                .reasons
                .iter()
                .map(|r| (r.feature.clone(), r.value, r.contribution, r.clipped))
                .collect(),
            unknown_entities: scored.unknown_entities.clone(),
            features: scored.features.clone(),
            watermark_ms: scored.cut.watermark_ms,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        // Plain data of owned strings, floats and options: postcard cannot fail on it
        // (its only errors are a full fixed buffer and types serde cannot express).
        postcard::to_allocvec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Option<KeptAnswer> {
        postcard::from_bytes(bytes).ok()
    }

    /// The answer as the first attempt gave it, marked as a retry's (`recorded`: one
    /// duplicate). Its model version must still be in `registry`; if it was retired
    /// the call fails closed rather than score the event a second time.
    pub fn into_scored(self, registry: &Registry, event_id: &str) -> Result<Scored, ScoreError> {
        let model: Arc<LoadedModel> =
            registry
                .resolve(&self.model)
                .map_err(|_| ScoreError::RepeatForgotten {
                    event_id: event_id.to_string(),
                })?;
        Ok(Scored {
            model,
            score: self.score,
            decision: self.decision,
            reasons: self
                .reasons
                .into_iter()
                .map(|(feature, value, contribution, clipped)| Reason {
                    feature,
                    value,
                    contribution,
                    clipped,
                })
                .collect(),
            unknown_entities: self.unknown_entities,
            features: self.features,
            vector: Vec::new(),
            cut: ReadCut {
                through_seq: None,
                watermark_ms: self.watermark_ms,
            },
            recorded: Some(BatchOutcome {
                accepted: 0,
                duplicates: 1,
                refused: Vec::new(),
            }),
            shadowed: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_comes_back_bit_for_bit() {
        let kept = KeptAnswer {
            model: "fraud@3".into(),
            score: 0.1 + 0.2,
            decision: Some(Decision::Review),
            reasons: vec![("card_payments_1h".into(), Some(f64::NAN), -0.25, true)],
            unknown_entities: vec!["device".into()],
            features: Some(vec![("user_views_24h".into(), None)]),
            watermark_ms: 1_700_000_000_123,
        };
        let back = KeptAnswer::decode(&kept.encode()).expect("decodes");
        assert_eq!(
            format!("{back:?}"),
            format!("{kept:?}"),
            "NaN != NaN: Debug"
        );
        assert_eq!(back.score.to_bits(), kept.score.to_bits());
        assert!(KeptAnswer::decode(&kept.encode()[..5]).is_none());
    }
}
