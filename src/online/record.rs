//! One entity's record in the online store, and the key it lives under.

use super::cut::Sealed;
use crate::features::EntityState;

/// The key of an entity's record under the definitions whose state fingerprint is
/// `fingerprint`: `ss:<fingerprint, 16 hex digits>:{<entity type>:<id>}`. The braces
/// are Redis Cluster's hash tag, so a record and anything stored beside it later
/// (per-entity side keys) land in the same slot.
///
/// The fingerprint is in the key so that two sets of definitions never share a record:
/// during a definitions change the old and the new aggregators each keep their own
/// records (each group rebuilding from the entity topics), and a scorer reads only what
/// was computed with its own definitions. Before, both wrote one key and a record of
/// the other definitions was an error: aggregators retried the batch forever and
/// scorers answered INTERNAL for that entity until its key expired.
pub fn entity_key(fingerprint: u64, entity_type: &str, id: &str) -> String {
    format!("ss:{fingerprint:016x}:{{{entity_type}:{id}}}")
}

/// The key of the watermark of the aggregators running the definitions whose state
/// fingerprint is `fingerprint` (a group rebuilding after a change has its own, behind).
pub fn watermark_key(fingerprint: u64) -> String {
    format!("ss:{fingerprint:016x}:{{meta}}:watermark")
}

/// The key of the hash in which the aggregators running the definitions whose state
/// fingerprint is `fingerprint` publish, per entity partition and lane, how far their
/// records are (see [`super::cut`]).
pub fn progress_key(fingerprint: u64) -> String {
    format!("ss:{fingerprint:016x}:{{meta}}:progress")
}

/// The key of the tier's cut, folded from [`progress_key`]'s hash (same slot).
pub fn cut_key(fingerprint: u64) -> String {
    format!("ss:{fingerprint:016x}:{{meta}}:cut")
}

/// The key of the kept answer of a recorded call with event id `event_id` (already in
/// its caller's namespace). Not per fingerprint: a retry that lands on a scorer already
/// rolled to new definitions still gets the first answer, never a second scoring.
pub fn answer_key(event_id: &str) -> String {
    format!("ss:answer:{{{event_id}}}")
}

/// The entity type named in a key made by [`entity_key`].
pub fn entity_type_of(key: &str) -> Option<&str> {
    let (_, tagged) = key.split_once('{')?;
    Some(tagged.split_once(':')?.0)
}

/// An entity's state as stored: the state, the sequence number of the newest event in
/// it, the fingerprint of the definitions it was computed with, and per lane the
/// newest event it sealed into its tiles (see [`super::cut`]).
#[derive(Debug, Clone, PartialEq)]
pub struct EntityRecord {
    /// Source partition offset + 1 of the newest event applied (0: none).
    pub seq: u64,
    pub fingerprint: u64,
    pub state: EntityState,
    pub sealed: Sealed,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RecordError {
    #[error("record of {key} lacks its {field} field")]
    Missing { key: String, field: &'static str },
    #[error("record of {key} has an unreadable {field} field")]
    Unreadable { key: String, field: &'static str },
    #[error(
        "record of {key} was computed with other feature definitions (fingerprint {found:016x}, running {running:016x})"
    )]
    OtherDefinitions {
        key: String,
        found: u64,
        running: u64,
    },
    #[error("record of {key}: its sealed-events field is unreadable")]
    Sealed { key: String },
    #[error("record of {key}: state undecodable: {reason}")]
    Undecodable { key: String, reason: String },
}

impl EntityRecord {
    /// The state's bytes as stored (postcard: compact, and floats kept bit for bit).
    pub fn encode_state(&self) -> Result<Vec<u8>, postcard::Error> {
        postcard::to_allocvec(&self.state)
    }

    /// A record from the stored fields (`None` for a field the hash lacks), checked
    /// against the running definitions.
    pub fn decode(
        key: &str,
        seq: Option<&[u8]>,
        fingerprint: Option<&[u8]>,
        state: Option<&[u8]>,
        sealed: Option<&[u8]>,
        running: u64,
    ) -> Result<EntityRecord, RecordError> {
        let number = |field: &'static str, bytes: Option<&[u8]>| -> Result<u64, RecordError> {
            let bytes = bytes.ok_or_else(|| RecordError::Missing {
                key: key.to_string(),
                field,
            })?;
            std::str::from_utf8(bytes)
                .ok()
                .and_then(|text| text.parse().ok())
                .ok_or_else(|| RecordError::Unreadable {
                    key: key.to_string(),
                    field,
                })
        };
        let seq = number("sequence", seq)?;
        let found = number("fingerprint", fingerprint)?;
        if found != running {
            return Err(RecordError::OtherDefinitions {
                key: key.to_string(),
                found,
                running,
            });
        }
        let bytes = state.ok_or_else(|| RecordError::Missing {
            key: key.to_string(),
            field: "state",
        })?;
        let state = postcard::from_bytes(bytes).map_err(|e| RecordError::Undecodable {
            key: key.to_string(),
            reason: e.to_string(),
        })?;
        // Absent in records written before cuts: nothing sealed is known.
        let sealed = match sealed {
            None => Sealed::default(),
            Some(bytes) => std::str::from_utf8(bytes)
                .ok()
                .and_then(Sealed::decode)
                .ok_or_else(|| RecordError::Sealed {
                    key: key.to_string(),
                })?,
        };
        Ok(EntityRecord {
            seq,
            fingerprint: found,
            state,
            sealed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> EntityRecord {
        EntityRecord {
            seq: 42,
            fingerprint: 7,
            state: EntityState {
                last_seen_ms: 1_700_000_000_123,
                applied_seq: 42,
                ..EntityState::default()
            },
            sealed: Sealed {
                through: [(1, 9)].into_iter().collect(),
                newest_ms: 1_700_000_000_000,
            },
        }
    }

    #[test]
    fn keys_carry_the_fingerprint_and_the_entity_as_hash_tag() {
        assert_eq!(entity_key(7, "card", "c2"), "ss:0000000000000007:{card:c2}");
        assert_eq!(
            entity_key(u64::MAX, "user_product", "u1|p9"),
            "ss:ffffffffffffffff:{user_product:u1|p9}"
        );
        assert_ne!(entity_key(1, "card", "c2"), entity_key(2, "card", "c2"));
        assert_ne!(watermark_key(1), watermark_key(2));
        assert_eq!(
            entity_type_of(&entity_key(9, "user_product", "u:1|p")),
            Some("user_product")
        );
        assert_eq!(entity_type_of("ss:no-tag"), None);
    }

    #[test]
    fn a_record_decodes_to_what_was_encoded() {
        let original = record();
        let bytes = original.encode_state().expect("encodes");
        let decoded = EntityRecord::decode(
            "k",
            Some(b"42"),
            Some(b"7"),
            Some(&bytes),
            Some(b"1700000000000;1:9"),
            7,
        )
        .expect("decodes");
        assert_eq!(
            format!("{decoded:?}"),
            format!("{original:?}"),
            "bit for bit (Debug: NaN != NaN)"
        );
    }

    #[test]
    fn a_damaged_sealed_field_is_refused_by_name() {
        let bytes = record().encode_state().expect("encodes");
        for damaged in [
            &b"12"[..],
            b"x;1:9",
            b"1;1:",
            b"1;a:9",
            b"1;1:9:9",
            b"\xff;1:9",
        ] {
            let decoded = EntityRecord::decode(
                "ss:{card:c2}",
                Some(b"1"),
                Some(b"7"),
                Some(&bytes),
                Some(damaged),
                7,
            );
            assert!(
                matches!(&decoded, Err(RecordError::Sealed { key }) if key == "ss:{card:c2}"),
                "{damaged:?}: {decoded:?}"
            );
        }
    }

    #[test]
    fn damaged_or_foreign_records_are_refused_by_name() {
        let bytes = record().encode_state().expect("encodes");
        let decode = |seq: Option<&[u8]>, fp: Option<&[u8]>, state: Option<&[u8]>| {
            EntityRecord::decode("ss:{card:c2}", seq, fp, state, None, 7).map(|_| ())
        };
        assert!(matches!(
            decode(None, Some(b"7"), Some(&bytes)),
            Err(RecordError::Missing {
                field: "sequence",
                ..
            })
        ));
        assert!(matches!(
            decode(Some(b"x"), Some(b"7"), Some(&bytes)),
            Err(RecordError::Unreadable {
                field: "sequence",
                ..
            })
        ));
        assert!(matches!(
            decode(Some(b"1"), Some(b"8"), Some(&bytes)),
            Err(RecordError::OtherDefinitions {
                found: 8,
                running: 7,
                ..
            })
        ));
        assert!(matches!(
            decode(Some(b"1"), Some(b"7"), Some(&bytes[..bytes.len() / 2])),
            Err(RecordError::Undecodable { .. })
        ));
        assert!(matches!(
            decode(Some(b"1"), Some(b"7"), None),
            Err(RecordError::Missing { field: "state", .. })
        ));
        assert!(matches!(
            EntityRecord::decode("k", Some(b"1"), Some(b"7"), Some(&bytes), Some(b"1;1:x"), 7),
            Err(RecordError::Sealed { .. })
        ));
    }
}
