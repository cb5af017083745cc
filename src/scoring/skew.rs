//! The consistency check behind `streamscore skew` (as Chronon's): take recent sampled
//! scores, replay the event history through a fresh embedded engine up to the events
//! each read saw, re-compute the vector and the score with the same model version, and
//! report every feature that differs. Serving and training share the engine, so a
//! difference means a bug, or (for scorers) events that arrived after the read.
//!
//! Which events a read saw: for the embedded server the log position (`through_seq`),
//! so the replay is exact. A scorer reads entity states written from many partitions;
//! its cut is the history's longest prefix with no event newer than the watermark it
//! read with, exact when events arrive in time order (late events show as skew).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use crate::definitions::Definitions;
use crate::events::{Limits, RawEvent, validate};
use crate::features::{Admission, Engine, EngineSettings};
use crate::registry::Registry;

use super::samples::ScoreSample;
use super::score_on;

/// Examples of differing features kept for the report.
const EXAMPLES: usize = 10;

/// One feature (or the score) that came out differently on replay.
#[derive(Debug, Clone, PartialEq)]
pub struct Difference {
    pub event_id: String,
    pub model: String,
    /// A feature's name, or `score`.
    pub what: String,
    pub served: Option<f64>,
    pub replayed: Option<f64>,
}

/// What the check found.
#[derive(Debug, Default, Clone)]
pub struct SkewReport {
    /// Samples re-computed.
    pub checked: usize,
    /// Of those, samples with any difference.
    pub differing: usize,
    /// Differences per feature name (`score` for the score).
    pub by_feature: BTreeMap<String, usize>,
    /// The first few differences.
    pub examples: Vec<Difference>,
    /// Samples that could not be checked, and why.
    pub skipped: Vec<(String, String)>,
    /// Events of the history replayed.
    pub replayed: u64,
}

impl std::fmt::Display for SkewReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "skew: {} sampled scores re-computed from {} events of history: {} differ",
            self.checked, self.replayed, self.differing
        )?;
        for (feature, count) in &self.by_feature {
            writeln!(f, "  {feature}: {count} samples differ")?;
        }
        for d in &self.examples {
            writeln!(
                f,
                "  e.g. event {} ({}): {} served {:?}, replayed {:?}",
                d.event_id, d.model, d.what, d.served, d.replayed
            )?;
        }
        if !self.skipped.is_empty() {
            writeln!(f, "  {} samples not checked:", self.skipped.len())?;
            for (sample, why) in self.skipped.iter().take(EXAMPLES) {
                writeln!(f, "    {sample}: {why}")?;
            }
        }
        Ok(())
    }
}

/// The check in progress: feed the history in order with [`SkewCheck::event`], then
/// [`SkewCheck::finish`].
pub struct SkewCheck<'a> {
    definitions: Arc<Definitions>,
    limits: Limits,
    registry: &'a Registry,
    engine: Engine,
    /// The history is raw (an events topic or file): admit as the router does. A log
    /// holds admitted events only, applied as recovery does.
    admit: bool,
    by_seq: VecDeque<ScoreSample>,
    by_watermark: VecDeque<ScoreSample>,
    last_seq: u64,
    report: SkewReport,
}

impl<'a> SkewCheck<'a> {
    pub fn new(
        definitions: Arc<Definitions>,
        settings: EngineSettings,
        registry: &'a Registry,
        samples: Vec<ScoreSample>,
        admit: bool,
    ) -> SkewCheck<'a> {
        let (mut by_seq, mut by_watermark): (Vec<_>, Vec<_>) = samples
            .into_iter()
            .partition(|sample| sample.cut.through_seq.is_some());
        by_seq.sort_by_key(|sample| sample.cut.through_seq);
        by_watermark.sort_by_key(|sample| sample.cut.watermark_ms);
        SkewCheck {
            engine: Engine::new(Arc::clone(&definitions), settings),
            definitions,
            limits: Limits {
                // As recovery: the clock of the event's arrival is not known now.
                max_future_skew_ms: i64::MAX / 4,
                max_id_bytes: usize::MAX,
            },
            registry,
            admit,
            by_seq: by_seq.into(),
            by_watermark: by_watermark.into(),
            last_seq: 0,
            report: SkewReport::default(),
        }
    }

    /// The next event of the history (`seq`: its log sequence number, or its line).
    pub fn event(&mut self, seq: u64, raw: &RawEvent) {
        // Reads that saw the history up to just before this event.
        while self
            .by_seq
            .front()
            .is_some_and(|s| s.cut.through_seq.is_some_and(|through| through < seq))
        {
            if let Some(sample) = self.by_seq.pop_front() {
                self.recompute(sample);
            }
        }
        while self
            .by_watermark
            .front()
            .is_some_and(|s| s.cut.watermark_ms < raw.event_time_ms)
        {
            if let Some(sample) = self.by_watermark.pop_front() {
                self.recompute(sample);
            }
        }
        self.last_seq = seq;
        let Ok(event) = validate(&self.definitions, &self.limits, raw, None) else {
            return;
        };
        if !self.admit || self.engine.admit(&event) == Admission::Apply {
            self.engine.apply(&event, seq);
            self.report.replayed += 1;
        }
    }

    /// Checks the samples whose reads saw the whole history, and reports.
    pub fn finish(mut self) -> SkewReport {
        while let Some(sample) = self.by_seq.pop_front() {
            match sample.cut.through_seq {
                Some(through) if through > self.last_seq => {
                    let why = format!(
                        "read through log sequence {through}, the history ends at {}",
                        self.last_seq
                    );
                    self.report.skipped.push((describe(&sample), why));
                }
                _ => self.recompute(sample),
            }
        }
        while let Some(sample) = self.by_watermark.pop_front() {
            self.recompute(sample);
        }
        self.report
    }

    fn recompute(&mut self, sample: ScoreSample) {
        let model = match self.registry.resolve(&sample.model) {
            Ok(model) => model,
            Err(error) => {
                self.report
                    .skipped
                    .push((describe(&sample), error.to_string()));
                return;
            }
        };
        // The read's watermark decides what has expired; the replay's may be behind it.
        self.engine.advance_watermark(sample.cut.watermark_ms);
        let replayed = match score_on(
            &self.definitions,
            &self.engine.view(),
            model,
            &sample.event,
            0,
            true,
        ) {
            Ok(replayed) => replayed,
            Err(error) => {
                self.report
                    .skipped
                    .push((describe(&sample), error.to_string()));
                return;
            }
        };
        self.report.checked += 1;
        let columns = &replayed.model.body.model.columns;
        let mut differences = Vec::new();
        if sample.vector.len() != replayed.vector.len() {
            differences.push(Difference {
                event_id: sample.event.event_id.clone(),
                model: sample.model.clone(),
                what: format!(
                    "vector length ({} served, {} replayed)",
                    sample.vector.len(),
                    replayed.vector.len()
                ),
                served: None,
                replayed: None,
            });
        }
        for ((name, served), replayed) in columns.iter().zip(&sample.vector).zip(&replayed.vector) {
            if !same(*served, *replayed) {
                differences.push(Difference {
                    event_id: sample.event.event_id.clone(),
                    model: sample.model.clone(),
                    what: name.clone(),
                    served: *served,
                    replayed: *replayed,
                });
            }
        }
        if sample.score.to_bits() != replayed.score.to_bits() {
            differences.push(Difference {
                event_id: sample.event.event_id.clone(),
                model: sample.model.clone(),
                what: "score".into(),
                served: Some(sample.score),
                replayed: Some(replayed.score),
            });
        }
        if differences.is_empty() {
            return;
        }
        self.report.differing += 1;
        for difference in differences {
            *self
                .report
                .by_feature
                .entry(difference.what.clone())
                .or_default() += 1;
            if self.report.examples.len() < EXAMPLES {
                self.report.examples.push(difference);
            }
        }
    }
}

/// Bit for bit (NaN equals NaN with the same bits; None equals None).
fn same(a: Option<f64>, b: Option<f64>) -> bool {
    a.map(f64::to_bits) == b.map(f64::to_bits)
}

fn describe(sample: &ScoreSample) -> String {
    format!("event {} ({})", sample.event.event_id, sample.model)
}
