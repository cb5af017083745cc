//! What the engine keeps per entity: sparse tiles (only tiles that saw events are
//! stored, so a quiet entity costs little) in three sorted vectors, plus the lifetime
//! slots. Old tiles are dropped as new ones open, which bounds memory per entity and
//! window to the window's tiles.

use serde::{Deserialize, Serialize};
use thin_vec::ThinVec;

use crate::definitions::{Aggregation, FieldSource, fnv64};
use crate::events::Event;

use super::plan::{EntityPlan, Reader};
use super::sketch::Registers;
use crate::definitions::Window;

/// A count of events in one tile of one series.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(crate) struct CountTile {
    pub series: u16,
    pub tile: u32,
    pub count: u32,
}

/// Running statistics of one numeric field in one tile of one series.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(crate) struct StatsTile {
    pub series: u16,
    pub tile: u32,
    pub stats: Stats,
}

/// A distinct value (its 64-bit hash) seen in one tile of one series.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub(crate) struct DistinctTile {
    pub series: u16,
    pub tile: u32,
    pub hash: u64,
}

/// The HyperLogLog registers of one tile of a sketched distinct series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct SketchTile {
    pub series: u16,
    pub tile: u32,
    pub registers: Registers,
}

/// (value, tile) entries one distinct series of one entity holds exactly; past this its
/// tiles become HyperLogLog sketches (see `sketch`), which bounds the memory, the update
/// and the read of a hot entity. The series counts exactly again once its sketched tiles
/// have all aged out of its window.
pub const MAX_EXACT_DISTINCT: usize = 2_048;

/// Count, sum, min, max and the sum of squared deviations from the mean (Welford), which
/// merge exactly across tiles (Chan et al.) without the cancellation of a sum of squares.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(crate) struct Stats {
    pub count: u32,
    pub sum: f64,
    pub m2: f64,
    pub min: f64,
    pub max: f64,
}

impl Stats {
    pub const EMPTY: Stats = Stats {
        count: 0,
        sum: 0.0,
        m2: 0.0,
        min: f64::INFINITY,
        max: f64::NEG_INFINITY,
    };

    pub fn add(&mut self, value: f64) {
        let old_mean = if self.count == 0 {
            0.0
        } else {
            self.sum / f64::from(self.count)
        };
        self.count += 1;
        self.sum += value;
        let new_mean = self.sum / f64::from(self.count);
        self.m2 += (value - old_mean) * (value - new_mean);
        self.min = self.min.min(value);
        self.max = self.max.max(value);
    }

    pub fn merge(&mut self, other: &Stats) {
        if other.count == 0 {
            return;
        }
        if self.count == 0 {
            *self = *other;
            return;
        }
        let (n_a, n_b) = (f64::from(self.count), f64::from(other.count));
        let delta = other.sum / n_b - self.sum / n_a;
        self.m2 += other.m2 + delta * delta * n_a * n_b / (n_a + n_b);
        self.count += other.count;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    pub fn value(&self, aggregation: Aggregation) -> Option<f64> {
        let n = f64::from(self.count);
        match aggregation {
            Aggregation::Count => Some(n),
            Aggregation::Sum => Some(self.sum),
            _ if self.count == 0 => None,
            Aggregation::Mean => Some(self.sum / n),
            Aggregation::Min => Some(self.min),
            Aggregation::Max => Some(self.max),
            Aggregation::Stddev => Some((self.m2.max(0.0) / n).sqrt()),
            _ => None,
        }
    }
}

/// The newest matching event of a lifetime slot.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(crate) struct LastValue {
    pub time_ms: i64,
    pub value: f64,
}

/// One value of a recent list (`recent_distinct`) as applied. Values are kept in time
/// order until no allowed read can count them among the list's `k` newest (see
/// [`EntityState::compact_recent`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct RecentValue {
    pub list: u16,
    pub time_ms: i64,
    /// Log sequence number of its event (0 if unlogged): reads leave out what is not
    /// durable yet, as for pending contributions.
    pub seq: u64,
    pub value: Box<str>,
}

thread_local! {
    /// Where a distinct count sorts its values: kept per thread, so a read allocates
    /// only while it meets a series larger than any before (at most
    /// [`MAX_EXACT_DISTINCT`] values plus the pending ones, 16 KiB).
    static DISTINCT_SCRATCH: std::cell::RefCell<Vec<u64>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// How many values older than every allowed read a recent list of `k` may hold beyond
/// its `k` before it is compacted: compaction then runs once per that many new values.
pub(crate) fn recent_slack(k: usize) -> usize {
    (k / 2).max(8)
}

/// `time_ms` of a slot that has seen nothing.
pub(crate) const NEVER: i64 = i64::MIN;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EntityState {
    /// Newest event time of any event touching the entity; drives eviction.
    pub(crate) last_seen_ms: i64,
    /// Log sequence number of the last event applied to the entity (0 if unlogged):
    /// replay after a snapshot skips events the entity already holds.
    pub(crate) applied_seq: u64,
    // ThinVec keeps its length and capacity on the heap: 8 bytes per empty vector
    // instead of 24, which matters at millions of mostly quiet entities.
    pub(crate) counts: ThinVec<CountTile>,
    pub(crate) stats: ThinVec<StatsTile>,
    pub(crate) distinct: ThinVec<DistinctTile>,
    /// Distinct series past [`MAX_EXACT_DISTINCT`], by series then tile.
    pub(crate) sketches: ThinVec<SketchTile>,
    pub(crate) lasts: ThinVec<LastValue>,
    pub(crate) firsts: ThinVec<i64>,
    /// Contributions of the entity's newest events, by event time, not yet in the tiles
    /// and slots above. They stay here while a read may be older than they are (until
    /// `watermark - allowed_lateness` passes them), so a read as of a past moment leaves
    /// out what came later; at most [`MAX_PENDING_EVENTS`] events.
    pub(crate) recent: ThinVec<Pending>,
    /// Reads as of an earlier moment are refused: the newest event time sealed early
    /// (more than [`MAX_PENDING_EVENTS`] pending), which tiles can no longer tell apart
    /// from what a read before it may see. 0 when nothing was sealed early.
    pub(crate) exact_from_ms: i64,
    /// Values of the recent lists, by list, then time (ties in apply order).
    pub(crate) recents: ThinVec<RecentValue>,
}

impl EntityState {
    /// Log (or source partition) sequence number of the newest event applied to it.
    pub fn applied_seq(&self) -> u64 {
        self.applied_seq
    }

    /// The events still pending, as (tag, event time), in event time order: a tag is a
    /// log sequence number, or a scaled-out tier's input position.
    pub fn pending_events(&self) -> impl Iterator<Item = (u64, i64)> + '_ {
        self.recent.iter().filter_map(|pending| match pending.part {
            Part::Event(tag) => Some((tag, pending.time_ms)),
            _ => None,
        })
    }

    /// Leaves out the events whose tag `keep` refuses: their pending contributions and
    /// their values in the recent lists. Only pending events can be left out: a caller
    /// knows from elsewhere that none it refuses was sealed, and the newest time of
    /// those sealed (`sealed_newest_ms`), which with the pending ones kept says when
    /// the entity was last seen without the events left out (see `online::cut`).
    /// Returns false when nothing is left: the entity reads as never seen.
    pub fn leave_out(&mut self, keep: impl Fn(u64) -> bool, sealed_newest_ms: i64) -> bool {
        if self.pending_events().all(|(tag, _)| keep(tag))
            && self.recents.iter().all(|v| keep(v.seq))
        {
            return true;
        }
        let mut kept = true;
        let recent: ThinVec<Pending> = self
            .recent
            .iter()
            .filter(|pending| {
                if let Part::Event(tag) = pending.part {
                    kept = keep(tag);
                }
                kept
            })
            .copied()
            .collect();
        self.recent = recent;
        self.recents.retain(|value| keep(value.seq));
        self.last_seen_ms = self
            .pending_events()
            .map(|(_, time)| time)
            .fold(sealed_newest_ms, i64::max);
        !(self.recent.is_empty()
            && self.recents.is_empty()
            && self.counts.is_empty()
            && self.stats.is_empty()
            && self.distinct.is_empty()
            && self.sketches.is_empty()
            && self.lasts.is_empty()
            && self.firsts.is_empty())
    }

    /// What an expired entity keeps while it is remembered: its first-seen times,
    /// pending ones folded in (`slots` first-seen slots), and when it was last seen and
    /// applied, for expiry and replay.
    pub(crate) fn identity_only(&self, slots: usize) -> EntityState {
        let mut kept = EntityState {
            last_seen_ms: self.last_seen_ms,
            applied_seq: self.applied_seq,
            firsts: self.firsts.clone(),
            ..EntityState::default()
        };
        for pending in &self.recent {
            if let Part::First(slot) = pending.part {
                kept.observe_first(usize::from(slot), slots, pending.time_ms);
            }
        }
        kept
    }

    pub(crate) fn is_identity_only(&self) -> bool {
        self.counts.is_empty()
            && self.stats.is_empty()
            && self.distinct.is_empty()
            && self.sketches.is_empty()
            && self.lasts.is_empty()
            && self.recent.is_empty()
            && self.recents.is_empty()
    }
}

/// The index range of `series` in a vector sorted by series first.
fn series_range<T>(tiles: &[T], series: u16, key: impl Fn(&T) -> u16) -> std::ops::Range<usize> {
    let start = tiles.partition_point(|t| key(t) < series);
    let end = start + tiles[start..].partition_point(|t| key(t) == series);
    start..end
}

/// Removes the tiles of `range` older than `keep_from` (the range is sorted by tile).
fn prune<T>(
    tiles: &mut ThinVec<T>,
    range: std::ops::Range<usize>,
    keep_from: u32,
    tile: impl Fn(&T) -> u32,
) {
    let stale = tiles[range.clone()].partition_point(|t| tile(t) < keep_from);
    if stale > 0 {
        tiles.drain(range.start..range.start + stale);
    }
}

impl EntityState {
    pub(crate) fn add_count(&mut self, series: u16, tile: u32, keep_from: u32) {
        let range = series_range(&self.counts, series, |t| t.series);
        let within = self.counts[range.clone()].partition_point(|t| t.tile < tile);
        let at = range.start + within;
        if at < range.end && self.counts[at].tile == tile {
            self.counts[at].count += 1;
            return;
        }
        self.counts.insert(
            at,
            CountTile {
                series,
                tile,
                count: 1,
            },
        );
        prune(
            &mut self.counts,
            range.start..range.end + 1,
            keep_from,
            |t| t.tile,
        );
    }

    pub(crate) fn add_value(&mut self, series: u16, tile: u32, value: f64, keep_from: u32) {
        let range = series_range(&self.stats, series, |t| t.series);
        let within = self.stats[range.clone()].partition_point(|t| t.tile < tile);
        let at = range.start + within;
        if at < range.end && self.stats[at].tile == tile {
            self.stats[at].stats.add(value);
            return;
        }
        let mut stats = Stats::EMPTY;
        stats.add(value);
        self.stats.insert(
            at,
            StatsTile {
                series,
                tile,
                stats,
            },
        );
        prune(
            &mut self.stats,
            range.start..range.end + 1,
            keep_from,
            |t| t.tile,
        );
    }

    pub(crate) fn add_distinct(&mut self, series: u16, tile: u32, hash: u64, keep_from: u32) {
        if !series_range(&self.sketches, series, |t| t.series).is_empty() {
            self.add_to_sketch(series, tile, hash, keep_from);
            return;
        }
        let entry = DistinctTile { series, tile, hash };
        let at = self.distinct.partition_point(|t| *t < entry);
        if self.distinct.get(at) == Some(&entry) {
            return;
        }
        let new_tile = self
            .distinct
            .get(at.wrapping_sub(1))
            .is_none_or(|t| t.series != series || t.tile != tile)
            && self
                .distinct
                .get(at)
                .is_none_or(|t| t.series != series || t.tile != tile);
        self.distinct.insert(at, entry);
        if new_tile {
            let range = series_range(&self.distinct, series, |t| t.series);
            prune(&mut self.distinct, range, keep_from, |t| t.tile);
        }
        let range = series_range(&self.distinct, series, |t| t.series);
        if range.len() > MAX_EXACT_DISTINCT {
            let exact: Vec<DistinctTile> = self.distinct.drain(range).collect();
            self.distinct.shrink_to_fit();
            for entry in exact {
                self.add_to_sketch(series, entry.tile, entry.hash, keep_from);
            }
        }
    }

    fn add_to_sketch(&mut self, series: u16, tile: u32, hash: u64, keep_from: u32) {
        let range = series_range(&self.sketches, series, |t| t.series);
        let at = range.start + self.sketches[range.clone()].partition_point(|t| t.tile < tile);
        if at < range.end && self.sketches[at].tile == tile {
            self.sketches[at].registers.add(hash);
            return;
        }
        let mut registers = Registers::default();
        registers.add(hash);
        self.sketches.insert(
            at,
            SketchTile {
                series,
                tile,
                registers,
            },
        );
        prune(
            &mut self.sketches,
            range.start..range.end + 1,
            keep_from,
            |t| t.tile,
        );
    }

    pub(crate) fn observe_last(&mut self, slot: usize, slots: usize, time_ms: i64, value: f64) {
        if self.lasts.is_empty() {
            let never = LastValue {
                time_ms: NEVER,
                value: f64::NAN,
            };
            self.lasts = std::iter::repeat_n(never, slots).collect();
        }
        let last = &mut self.lasts[slot];
        // Ties go to the event applied later, so replay order decides, not hashing.
        if time_ms >= last.time_ms {
            *last = LastValue { time_ms, value };
        }
    }

    pub(crate) fn observe_first(&mut self, slot: usize, slots: usize, time_ms: i64) {
        if self.firsts.is_empty() {
            self.firsts = std::iter::repeat_n(i64::MAX, slots).collect();
        }
        self.firsts[slot] = self.firsts[slot].min(time_ms);
    }

    pub(crate) fn count(&self, series: u16, (oldest, newest): (u32, u32)) -> u32 {
        let range = series_range(&self.counts, series, |t| t.series);
        self.counts[range]
            .iter()
            .filter(|t| t.tile >= oldest && t.tile <= newest)
            .map(|t| t.count)
            .sum()
    }

    pub(crate) fn stats(&self, series: u16, (oldest, newest): (u32, u32)) -> Stats {
        let range = series_range(&self.stats, series, |t| t.series);
        let mut total = Stats::EMPTY;
        for tile in self.stats[range]
            .iter()
            .filter(|t| t.tile >= oldest && t.tile <= newest)
        {
            total.merge(&tile.stats);
        }
        total
    }

    pub(crate) fn distinct_count(
        &self,
        series: u16,
        (oldest, newest): (u32, u32),
        pending: impl Iterator<Item = u64>,
    ) -> usize {
        let sketched = series_range(&self.sketches, series, |t| t.series);
        if !sketched.is_empty() {
            let mut merged = Registers::default();
            for tile in self.sketches[sketched]
                .iter()
                .filter(|t| t.tile >= oldest && t.tile <= newest)
            {
                merged.merge(&tile.registers);
            }
            pending.for_each(|hash| merged.add(hash));
            return merged.estimate().round() as usize;
        }
        let range = series_range(&self.distinct, series, |t| t.series);
        let values = self.distinct[range]
            .iter()
            .filter(|t| t.tile >= oldest && t.tile <= newest)
            .map(|t| t.hash)
            .chain(pending);
        DISTINCT_SCRATCH.with_borrow_mut(|hashes| {
            hashes.clear();
            hashes.extend(values);
            hashes.sort_unstable();
            hashes.dedup();
            hashes.len()
        })
    }

    pub(crate) fn last(&self, slot: usize) -> Option<LastValue> {
        self.lasts.get(slot).copied().filter(|l| l.time_ms != NEVER)
    }

    pub(crate) fn first(&self, slot: usize) -> Option<i64> {
        self.firsts.get(slot).copied().filter(|t| *t != i64::MAX)
    }

    /// Bytes held on the heap by this state (for the memory figures).
    pub fn heap_bytes(&self) -> usize {
        self.counts.capacity() * size_of::<CountTile>()
            + self.stats.capacity() * size_of::<StatsTile>()
            + self.distinct.capacity() * size_of::<DistinctTile>()
            + self.sketches.capacity() * size_of::<SketchTile>()
            + self
                .sketches
                .iter()
                .map(|t| t.registers.heap_bytes())
                .sum::<usize>()
            + self.lasts.capacity() * size_of::<LastValue>()
            + self.firsts.capacity() * size_of::<i64>()
            + self.recent.capacity() * size_of::<Pending>()
            + self.recents.capacity() * size_of::<RecentValue>()
            + self.recents.iter().map(|r| r.value.len()).sum::<usize>()
    }

    /// Adds a value to a recent list, after the values of the same list not later than it.
    pub(crate) fn add_recent(&mut self, list: u16, time_ms: i64, seq: u64, value: &str) {
        let at = self
            .recents
            .partition_point(|r| (r.list, r.time_ms) <= (list, time_ms));
        self.recents.insert(
            at,
            RecentValue {
                list,
                time_ms,
                seq,
                value: value.into(),
            },
        );
    }

    /// Drops the values of recent lists that no read at or after `boundary` can list:
    /// of those older than `boundary` (which every such read sees whole), each list keeps
    /// only its `k` newest distinct values still inside the window of a read at
    /// `boundary`. Values at or after `boundary` all stay, so a read between them still
    /// leaves out what came later.
    ///
    /// A list is compacted only once more than `k` + [`recent_slack`] of its values are
    /// older than `boundary`: reads skip the extra ones anyway, and compacting on every
    /// event cost a fifth of the engine's time (k² string compares per page view).
    pub(crate) fn compact_recent(&mut self, plan: &EntityPlan, boundary: i64) {
        let mut keep: Vec<bool> = Vec::new();
        let mut start = 0;
        while start < self.recents.len() {
            let list = self.recents[start].list;
            let end = start + self.recents[start..].partition_point(|r| r.list == list);
            let definition = &plan.recent_lists[usize::from(list)];
            let sealed = start + self.recents[start..end].partition_point(|r| r.time_ms < boundary);
            if sealed - start <= definition.k + recent_slack(definition.k) {
                start = end;
                continue;
            }
            if keep.is_empty() {
                keep = vec![true; self.recents.len()];
            }
            let oldest_tile = definition.window.tiles_read_at(boundary).0;
            let mut kept: Vec<(u64, &str)> = Vec::with_capacity(definition.k);
            for at in (start..sealed).rev() {
                let value = &self.recents[at];
                let fresh = definition.window.tile_of(value.time_ms) >= oldest_tile;
                let hash = fnv64(value.value.as_bytes());
                let seen = kept.iter().any(|&(h, v)| h == hash && v == &*value.value);
                if fresh && kept.len() < definition.k && !seen {
                    kept.push((hash, &value.value));
                } else {
                    keep[at] = false;
                }
            }
            start = end;
        }
        if keep.is_empty() {
            return;
        }
        let mut flags = keep.into_iter();
        self.recents.retain(|_| flags.next().unwrap_or(true));
    }

    /// The `k` newest distinct values of `list` a read as of `at` sees (in `window`,
    /// not later than `at`, durable through `visible_through`), newest first, each with
    /// the time it was last seen.
    pub(crate) fn recent_values(
        &self,
        list: u16,
        window: Window,
        k: usize,
        at: i64,
        visible_through: u64,
    ) -> Vec<(&str, i64)> {
        let range = series_range(&self.recents, list, |r| r.list);
        let oldest_tile = window.tiles_read_at(at).0;
        let mut out: Vec<(&str, i64)> = Vec::with_capacity(k);
        // Hashes of `out`'s values, compared before the strings: a list holds up to
        // k + slack values, and k² string compares were most of a read's time.
        let mut hashes: smallvec::SmallVec<[u64; 64]> = smallvec::SmallVec::new();
        for value in self.recents[range].iter().rev() {
            if out.len() == k {
                break;
            }
            if value.time_ms > at || value.seq > visible_through {
                continue;
            }
            if window.tile_of(value.time_ms) < oldest_tile {
                break;
            }
            let hash = fnv64(value.value.as_bytes());
            let seen = hashes
                .iter()
                .zip(&out)
                .any(|(&h, (seen, _))| h == hash && *seen == &*value.value);
            if !seen {
                out.push((&value.value, value.time_ms));
                hashes.push(hash);
            }
        }
        out
    }
}

fn number_of(event: &Event<'_>, source: Option<FieldSource>) -> Option<f64> {
    match source {
        Some(FieldSource::Number(index)) => event.numbers[index],
        _ => None,
    }
}

fn text_of<'e>(event: &'e Event<'_>, source: Option<FieldSource>) -> Option<&'e str> {
    match source {
        Some(FieldSource::Text(index)) => event.strings[index].as_deref(),
        Some(FieldSource::Entity(index)) => event.entities[index],
        _ => None,
    }
}

fn present(event: &Event<'_>, source: Option<FieldSource>) -> bool {
    match source {
        None => true,
        Some(FieldSource::Number(index)) => event.numbers[index].is_some(),
        Some(FieldSource::Text(index)) => event.strings[index].is_some(),
        Some(FieldSource::Entity(index)) => event.entities[index].is_some(),
    }
}

/// Contributions of one event that a read may still have to leave out, kept per entity
/// until they are sealed into tiles (see [`EntityState::recent`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(crate) struct Pending {
    pub time_ms: i64,
    pub part: Part,
}

/// What one event adds to one series or slot; each event's parts follow an `Event`
/// that carries its log sequence number (0 if unlogged), so reads can leave out what is
/// not durable yet. (Kept there rather than in every part: 24 bytes a part, not 32.)
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(crate) enum Part {
    Event(u64),
    Count(u16),
    Value(u16, f64),
    Distinct(u16, u64),
    Last(u16, f64),
    First(u16),
}

/// At most this many events per entity are kept apart from the tiles; older ones are
/// sealed early and reads before them refused. Bounds the memory and the read cost of a
/// hot entity.
pub const MAX_PENDING_EVENTS: usize = 16;

/// Applies an event to an entity: its contributions join the pending ones (in event
/// time order, ties in apply order); pending contributions older than `seal_before`
/// (`watermark - allowed_lateness`: no read may be earlier) are sealed into tiles.
pub(crate) fn apply_to_state(
    plan: &EntityPlan,
    state: &mut EntityState,
    event: &Event<'_>,
    seq: u64,
    seal_before: i64,
) {
    state.last_seen_ms = state.last_seen_ms.max(event.time_ms);
    let routes = &plan.by_type[event.type_id];
    let mut parts: smallvec::SmallVec<[Part; 24]> = smallvec::smallvec![Part::Event(seq)];
    for &index in &routes.counts {
        let series = &plan.count_series[index];
        if !series.has_field || present(event, series.sources[event.type_id]) {
            parts.push(Part::Count(index as u16));
        }
    }
    for &index in &routes.stats {
        let series = &plan.stats_series[index];
        if let Some(value) = number_of(event, series.sources[event.type_id]) {
            parts.push(Part::Value(index as u16, value));
        }
    }
    for &index in &routes.distinct {
        let series = &plan.distinct_series[index];
        if let Some(value) = text_of(event, series.sources[event.type_id]) {
            parts.push(Part::Distinct(index as u16, fnv64(value.as_bytes())));
        }
    }
    for &index in &routes.lasts {
        let slot = &plan.last_slots[index];
        if !slot.has_field {
            parts.push(Part::Last(index as u16, f64::NAN));
        } else if let Some(value) = number_of(event, slot.sources[event.type_id]) {
            parts.push(Part::Last(index as u16, value));
        }
    }
    for &index in &routes.firsts {
        parts.push(Part::First(index as u16));
    }
    for &index in &routes.recents {
        let list = &plan.recent_lists[index];
        if let Some(value) = text_of(event, list.sources[event.type_id]) {
            state.add_recent(index as u16, event.time_ms, seq, value);
        }
    }
    let at = state.recent.partition_point(|p| p.time_ms <= event.time_ms);
    let added = parts.len();
    state.recent.extend(parts.into_iter().map(|part| Pending {
        time_ms: event.time_ms,
        part,
    }));
    state.recent[at..].rotate_right(added);
    let due = state.recent.partition_point(|p| p.time_ms < seal_before);
    seal(plan, state, due, seal_before);
    let mut starts = state
        .recent
        .iter()
        .enumerate()
        .filter(|(_, p)| matches!(p.part, Part::Event(_)))
        .map(|(index, _)| index);
    let pending_events = starts.clone().count();
    if pending_events > MAX_PENDING_EVENTS
        && let Some(keep_from) = starts.nth(pending_events - MAX_PENDING_EVENTS)
    {
        // Sealed early: a read before the newest of these would see it, so it is refused
        // (a read at its very time may see it: it is not later than the read).
        state.exact_from_ms = state.exact_from_ms.max(state.recent[keep_from - 1].time_ms);
        seal(plan, state, keep_from, seal_before);
    }
    // No read is earlier than either bound, so both bound the recent lists too.
    state.compact_recent(plan, seal_before.max(state.exact_from_ms));
}

/// Folds the `count` oldest pending contributions into tiles and slots.
fn seal(plan: &EntityPlan, state: &mut EntityState, count: usize, seal_before: i64) {
    if count == 0 {
        return;
    }
    let mut recent = std::mem::take(&mut state.recent);
    for pending in recent.drain(..count) {
        let time = pending.time_ms;
        match pending.part {
            Part::Event(_) => {}
            Part::Count(series) => {
                let window = plan.count_series[usize::from(series)].window;
                let keep_from = window.tiles_read_at(seal_before).0;
                state.add_count(series, window.tile_of(time), keep_from);
            }
            Part::Value(series, value) => {
                let window = plan.stats_series[usize::from(series)].window;
                let keep_from = window.tiles_read_at(seal_before).0;
                state.add_value(series, window.tile_of(time), value, keep_from);
            }
            Part::Distinct(series, hash) => {
                let window = plan.distinct_series[usize::from(series)].window;
                let keep_from = window.tiles_read_at(seal_before).0;
                state.add_distinct(series, window.tile_of(time), hash, keep_from);
            }
            Part::Last(slot, value) => {
                state.observe_last(usize::from(slot), plan.last_slots.len(), time, value);
            }
            Part::First(slot) => {
                state.observe_first(usize::from(slot), plan.first_slots.len(), time);
            }
        }
    }
    state.recent = recent;
}

fn seconds(ms: i64) -> f64 {
    ms as f64 / 1000.0
}

/// The pending contributions a read as of `at` sees, summed per series and slot in one
/// pass over them (a read then adds these to the sealed tiles).
/// Distinct values are not copied: a read walks the pending ones of its series (at
/// most [`MAX_PENDING_EVENTS`] events), so the overlay has a fixed size and a read of
/// an entity with many distinct values pending allocates nothing.
pub(crate) struct Overlay<'s> {
    counts: smallvec::SmallVec<[u32; 16]>,
    stats: smallvec::SmallVec<[Stats; 16]>,
    lasts: smallvec::SmallVec<[Option<LastValue>; 8]>,
    firsts: smallvec::SmallVec<[Option<i64>; 8]>,
    visible_through: u64,
    /// The pending contributions at or before the read.
    seen: &'s [Pending],
    plan: &'s EntityPlan,
    at: i64,
}

impl<'s> Overlay<'s> {
    /// `visible_through`: contributions of events with a higher log sequence number are
    /// left out (not durable yet).
    pub(crate) fn build(
        plan: &'s EntityPlan,
        state: &'s EntityState,
        at: i64,
        visible_through: u64,
    ) -> Overlay<'s> {
        let seen = &state.recent[..state.recent.partition_point(|p| p.time_ms <= at)];
        if seen.is_empty() {
            // The common case (nothing pending at or before the read): no sums to
            // lay out, and a read finds none (see the accessors below).
            return Overlay {
                counts: smallvec::SmallVec::new(),
                stats: smallvec::SmallVec::new(),
                lasts: smallvec::SmallVec::new(),
                firsts: smallvec::SmallVec::new(),
                visible_through,
                seen,
                plan,
                at,
            };
        }
        let mut overlay = Overlay {
            counts: smallvec::smallvec![0; plan.count_series.len()],
            stats: smallvec::smallvec![Stats::EMPTY; plan.stats_series.len()],
            lasts: smallvec::smallvec![None; plan.last_slots.len()],
            firsts: smallvec::smallvec![None; plan.first_slots.len()],
            visible_through,
            seen,
            plan,
            at,
        };
        let in_window =
            |window: Window, time: i64| window.tile_of(time) >= window.tiles_read_at(at).0;
        let mut visible = true;
        for pending in seen {
            let time = pending.time_ms;
            if let Part::Event(seq) = pending.part {
                visible = seq <= visible_through;
                continue;
            }
            if !visible {
                continue;
            }
            match pending.part {
                Part::Event(_) => {}
                Part::Count(s) => {
                    if in_window(plan.count_series[usize::from(s)].window, time) {
                        overlay.counts[usize::from(s)] += 1;
                    }
                }
                Part::Value(s, value) => {
                    if in_window(plan.stats_series[usize::from(s)].window, time) {
                        overlay.stats[usize::from(s)].add(value);
                    }
                }
                // Walked by each distinct read instead (see `pending_distinct`).
                Part::Distinct(..) => {}
                // In time order, ties in apply order: the later one is the last.
                Part::Last(s, value) => {
                    overlay.lasts[usize::from(s)] = Some(LastValue {
                        time_ms: time,
                        value,
                    });
                }
                Part::First(s) => {
                    overlay.firsts[usize::from(s)].get_or_insert(time);
                }
            }
        }
        overlay
    }

    fn count(&self, series: usize) -> u32 {
        self.counts.get(series).copied().unwrap_or(0)
    }

    fn stats(&self, series: usize) -> Option<&Stats> {
        self.stats.get(series)
    }

    fn last(&self, slot: usize) -> Option<LastValue> {
        self.lasts.get(slot).copied().flatten()
    }

    fn first(&self, slot: usize) -> Option<i64> {
        self.firsts.get(slot).copied().flatten()
    }

    /// Hashes of the pending values of distinct series `series` a read sees.
    fn pending_distinct(&self, series: u16) -> impl Iterator<Item = u64> + '_ {
        let window = self.plan.distinct_series[usize::from(series)].window;
        let oldest = window.tiles_read_at(self.at).0;
        let mut visible = true;
        self.seen
            .iter()
            .filter_map(move |pending| match pending.part {
                Part::Event(seq) => {
                    visible = seq <= self.visible_through;
                    None
                }
                Part::Distinct(s, hash)
                    if visible && s == series && window.tile_of(pending.time_ms) >= oldest =>
                {
                    Some(hash)
                }
                _ => None,
            })
    }
}

/// Reads one feature as of `at`: the sealed tiles (all older than any allowed read, so
/// never past `at`) plus the pending contributions at or before `at` (`overlay`).
pub(crate) fn read_one(
    state: &EntityState,
    overlay: &Overlay,
    reader: Reader,
    window: Window,
    at: i64,
) -> Option<f64> {
    let tiles = window.tiles_read_at(at);
    match reader {
        Reader::Count(series) => {
            Some(f64::from(state.count(series as u16, tiles)) + f64::from(overlay.count(series)))
        }
        Reader::Stats(series, aggregation) => {
            let mut stats = state.stats(series as u16, tiles);
            if let Some(pending) = overlay.stats(series) {
                stats.merge(pending);
            }
            stats.value(aggregation)
        }
        Reader::Distinct(series) => {
            let series = series as u16;
            let pending = overlay.pending_distinct(series);
            Some(state.distinct_count(series, tiles, pending) as f64)
        }
        Reader::Recent(list, k) => Some(
            state
                .recent_values(list as u16, window, k, at, overlay.visible_through)
                .len() as f64,
        ),
        Reader::Last(slot) => last_as_of(state, overlay, slot).map(|last| last.value),
        Reader::TimeSinceLast(slot) => {
            last_as_of(state, overlay, slot).map(|last| seconds(at - last.time_ms))
        }
        Reader::AgeSinceFirst(slot) => {
            let first = match (state.first(slot), overlay.first(slot)) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            first.map(|first| seconds(at - first))
        }
    }
}

/// The newest matching event at or before the read; a pending one wins a tie, since it
/// was applied after anything sealed.
fn last_as_of(state: &EntityState, overlay: &Overlay, slot: usize) -> Option<LastValue> {
    match (state.last(slot), overlay.last(slot)) {
        (Some(sealed), Some(pending)) if sealed.time_ms > pending.time_ms => Some(sealed),
        (sealed, pending) => pending.or(sealed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_relative_eq;

    #[test]
    fn merged_stats_equal_stats_of_all_values() {
        let values = [3.0, 7.5, 1.25, 100.0, 42.0, 0.5];
        let mut whole = Stats::EMPTY;
        values.iter().for_each(|v| whole.add(*v));
        let (mut left, mut right) = (Stats::EMPTY, Stats::EMPTY);
        values[..2].iter().for_each(|v| left.add(*v));
        values[2..].iter().for_each(|v| right.add(*v));
        left.merge(&right);
        let mean = values.iter().sum::<f64>() / 6.0;
        let variance = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 6.0;
        for stats in [whole, left] {
            assert_eq!(stats.count, 6);
            assert_relative_eq!(
                stats.value(Aggregation::Mean).unwrap(),
                mean,
                max_relative = 1e-12
            );
            assert_relative_eq!(
                stats.value(Aggregation::Stddev).unwrap(),
                variance.sqrt(),
                max_relative = 1e-12
            );
            assert_eq!(stats.value(Aggregation::Min), Some(0.5));
            assert_eq!(stats.value(Aggregation::Max), Some(100.0));
        }
        assert_eq!(Stats::EMPTY.value(Aggregation::Mean), None);
        assert_eq!(Stats::EMPTY.value(Aggregation::Sum), Some(0.0));
    }

    #[test]
    fn tiles_stay_sorted_and_old_ones_are_pruned() {
        let mut state = EntityState::default();
        state.add_count(1, 10, 0);
        state.add_count(0, 12, 0);
        state.add_count(1, 11, 0);
        state.add_count(1, 10, 0);
        assert_eq!(state.count(1, (0, 100)), 3);
        assert_eq!(state.count(1, (11, 11)), 1);
        assert_eq!(state.count(0, (0, 100)), 1);
        state.add_count(1, 40, 30);
        assert_eq!(
            state.count(1, (0, 100)),
            1,
            "tiles before 30 are dropped once tile 40 opens"
        );
        assert_eq!(state.count(0, (0, 100)), 1, "other series are untouched");
    }

    #[test]
    fn a_hot_distinct_series_turns_into_a_bounded_sketch() {
        let mut state = EntityState::default();
        let n = 200_000u64;
        for i in 0..n {
            let tile = (i % 10) as u32;
            state.add_distinct(3, tile, fnv64(format!("user-{i}").as_bytes()), 0);
        }
        assert!(
            state.distinct.is_empty(),
            "the exact entries became sketches"
        );
        assert_eq!(state.sketches.len(), 10);
        assert!(state.heap_bytes() < 64 << 10, "{}", state.heap_bytes());
        let estimate = state.distinct_count(3, (0, 9), std::iter::empty()) as f64;
        assert!((estimate - n as f64).abs() / (n as f64) < 0.1, "{estimate}");
        // Below the cap another series stays exact.
        for i in 0..MAX_EXACT_DISTINCT as u64 {
            state.add_distinct(4, 0, fnv64(&i.to_le_bytes()), 0);
        }
        assert_eq!(
            state.distinct_count(4, (0, 0), std::iter::empty()),
            MAX_EXACT_DISTINCT
        );
    }

    #[test]
    fn distinct_values_count_once_per_window() {
        let mut state = EntityState::default();
        for (tile, value) in [(5, "a"), (5, "a"), (6, "a"), (6, "b"), (9, "c")] {
            state.add_distinct(2, tile, fnv64(value.as_bytes()), 0);
        }
        assert_eq!(state.distinct_count(2, (0, 10), std::iter::empty()), 3);
        assert_eq!(state.distinct_count(2, (6, 6), std::iter::empty()), 2);
        assert_eq!(state.distinct_count(2, (7, 8), std::iter::empty()), 0);
    }
}
