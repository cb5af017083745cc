//! Conversions between protobuf messages and domain types.

use super::pb;
use crate::events::RefusalKind;
use crate::model::decision::Decision;
use crate::store::{BatchOutcome, NamedFeatures};

pub(super) fn ack(batch_id: u64, outcome: BatchOutcome) -> pb::IngestAck {
    pb::IngestAck {
        batch_id,
        accepted: outcome.accepted,
        duplicates: outcome.duplicates,
        refused: outcome
            .refused
            .into_iter()
            .map(|(index, refusal)| pb::Refusal {
                index: index as u32,
                field: refusal.field,
                reason: refusal.reason,
                kind: match refusal.kind {
                    RefusalKind::Invalid => pb::RefusalKind::Invalid,
                    RefusalKind::Late => pb::RefusalKind::Late,
                } as i32,
            })
            .collect(),
    }
}

impl From<NamedFeatures> for pb::GetFeaturesResponse {
    fn from(features: NamedFeatures) -> Self {
        pb::GetFeaturesResponse {
            known: features.known,
            as_of_ms: features.as_of_ms,
            values: {
                let mut lists = features.lists;
                features
                    .values
                    .into_iter()
                    .map(|(name, value)| {
                        let items = lists
                            .iter()
                            .position(|(list, _)| *list == name)
                            .map(|at| lists.swap_remove(at).1)
                            .unwrap_or_default();
                        pb::FeatureValue { name, value, items }
                    })
                    .collect()
            },
        }
    }
}

pub(super) fn decision(decision: Option<Decision>) -> pb::Decision {
    match decision {
        Some(Decision::Allow) => pb::Decision::Allow,
        Some(Decision::Review) => pb::Decision::Review,
        Some(Decision::Block) => pb::Decision::Block,
        None => pb::Decision::None,
    }
}
