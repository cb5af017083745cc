//! A history replayed through a fresh engine, as the offline tools see the store:
//! each event checked as ingest checks it (without the clock: a history is in the
//! past), admitted (duplicates and late events refused) and applied in order, with
//! expired entities evicted as the server evicts them, so memory follows the live set.

use std::sync::Arc;

use super::{Admission, Engine, EngineSettings};
use crate::definitions::Definitions;
use crate::events::{Limits, RawEvent, Refusal, validate};

/// Events between two evictions of expired entities (eviction never changes a value:
/// expiry is decided by event time alone).
const EVICT_EVERY_EVENTS: u64 = 200_000;

pub struct Replay {
    engine: Engine,
    limits: Limits,
    applied: u64,
    /// Events refused (invalid, duplicate or late).
    pub refused: u64,
    /// The newest event time applied.
    pub newest_ms: i64,
}

impl Replay {
    pub fn new(definitions: Arc<Definitions>, settings: EngineSettings, limits: Limits) -> Replay {
        Replay {
            engine: Engine::new(definitions, settings),
            limits,
            applied: 0,
            refused: 0,
            newest_ms: i64::MIN,
        }
    }

    /// Applies `raw`; false when it is refused.
    pub fn apply(&mut self, raw: &RawEvent) -> bool {
        let Ok(event) = validate(self.engine.definitions(), &self.limits, raw, None) else {
            self.refused += 1;
            return false;
        };
        if self.engine.admit(&event) != Admission::Apply {
            self.refused += 1;
            return false;
        }
        self.applied += 1;
        if self.applied.is_multiple_of(EVICT_EVERY_EVENTS) {
            self.engine.evict_expired();
        }
        self.newest_ms = self.newest_ms.max(raw.event_time_ms);
        self.engine.apply(&event, self.applied);
        true
    }

    /// Checks a read's event as ingest would, without the clock.
    pub fn check(&self, raw: &RawEvent) -> Result<(), Refusal> {
        validate(self.engine.definitions(), &self.limits, raw, None).map(|_| ())
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The engine, evicted of what expired as of the last event.
    pub fn finish(self) -> Engine {
        self.engine.evict_expired();
        self.engine
    }
}
