//! Event-time alignment of partitions. A consumer reads its partitions at uneven
//! speeds, so without care one partition runs hours ahead of another in event time and
//! the slow one's events arrive "late" (beyond `ingest.allowed_lateness`) although the
//! shop sent them on time. The aligner buffers each partition's records in its lane and
//! releases only those no more than `slack` ahead of the slowest lane's newest event
//! time (the frontier), so events reach the engine with a skew of at most `slack`. A
//! lane that has caught up with its partition (end reached, or nothing received for
//! `idle_after`) stops holding the frontier back until it receives again; a lane far
//! ahead is paused at the broker once it holds `pause_at` records, so memory is bounded.
//!
//! Per lane the order of records is kept, so committing "the offset after the last
//! released record" per partition never skips a record that was not applied.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// One partition's buffered records.
#[derive(Debug)]
struct Lane<R> {
    queue: VecDeque<(Option<i64>, R)>,
    /// Newest event time received on this lane.
    newest_ms: Option<i64>,
    /// The partition's end was reached with the queue empty.
    at_end: bool,
    last_received: Instant,
    paused: bool,
}

impl<R> Lane<R> {
    fn new(now: Instant) -> Self {
        Lane {
            queue: VecDeque::new(),
            newest_ms: None,
            at_end: false,
            last_received: now,
            paused: false,
        }
    }

    /// Whether the lane may hold the frontier back: it has nothing buffered and has
    /// either reached its partition's end or received nothing for a while.
    fn idle(&self, now: Instant, idle_after: Duration) -> bool {
        self.queue.is_empty()
            && (self.at_end || now.duration_since(self.last_received) >= idle_after)
    }
}

/// What the caller must tell the broker after a push or release.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Flow<K> {
    pub pause: Vec<K>,
    pub resume: Vec<K>,
}

#[derive(Debug)]
pub struct Aligner<K, R> {
    lanes: BTreeMap<K, Lane<R>>,
    slack_ms: i64,
    idle_after: Duration,
    pause_at: usize,
}

impl<K: Ord + Clone, R> Aligner<K, R> {
    pub fn new(slack_ms: i64, idle_after: Duration, pause_at: usize) -> Self {
        Aligner {
            lanes: BTreeMap::new(),
            slack_ms,
            idle_after,
            pause_at: pause_at.max(2),
        }
    }

    /// A partition assigned to us: until its first record or its end, it holds the
    /// frontier (it may hold events older than every other lane's).
    pub fn assign(&mut self, key: K, now: Instant) {
        self.lanes.entry(key).or_insert_with(|| Lane::new(now));
    }

    /// Whether `key` is ours (assigned and not revoked since).
    pub fn holds(&self, key: &K) -> bool {
        self.lanes.contains_key(key)
    }

    /// A partition taken from us: its buffered records are dropped unapplied (their
    /// offsets were never committed, so the new owner reads them).
    pub fn revoke(&mut self, key: &K) -> usize {
        self.lanes.remove(key).map_or(0, |lane| lane.queue.len())
    }

    /// A record of `key` with its event time (`None`: it could not be decoded, and goes
    /// out with the next release from its lane's front).
    pub fn push(&mut self, key: K, time_ms: Option<i64>, record: R, now: Instant) {
        let lane = self.lanes.entry(key).or_insert_with(|| Lane::new(now));
        if let Some(time) = time_ms {
            lane.newest_ms = Some(lane.newest_ms.map_or(time, |newest| newest.max(time)));
        }
        lane.queue.push_back((time_ms, record));
        lane.at_end = false;
        lane.last_received = now;
    }

    /// The partition's end was reached (nothing more to read for now).
    pub fn reached_end(&mut self, key: &K) {
        if let Some(lane) = self.lanes.get_mut(key) {
            lane.at_end = true;
        }
    }

    /// Each lane's state, for logs: (key, buffered, newest event time, paused, idle).
    pub fn lanes(&self, now: Instant) -> Vec<(K, usize, Option<i64>, bool, bool)> {
        self.lanes
            .iter()
            .map(|(key, lane)| {
                (
                    key.clone(),
                    lane.queue.len(),
                    lane.newest_ms,
                    lane.paused,
                    lane.idle(now, self.idle_after),
                )
            })
            .collect()
    }

    /// Records buffered in all lanes.
    pub fn buffered(&self) -> usize {
        self.lanes.values().map(|lane| lane.queue.len()).sum()
    }

    /// The slowest busy lane's newest event time; `None` when every lane is idle (then
    /// everything buffered may go).
    fn frontier(&self, now: Instant) -> Result<Option<i64>, ()> {
        let mut frontier: Option<i64> = None;
        for lane in self.lanes.values() {
            if lane.idle(now, self.idle_after) {
                continue;
            }
            // A busy lane that has not received an event time yet holds everything.
            let newest = lane.newest_ms.ok_or(())?;
            frontier = Some(frontier.map_or(newest, |f| f.min(newest)));
        }
        Ok(frontier)
    }

    /// Takes up to `max` records that may go to the engine now, in each lane's order,
    /// and says which lanes to pause or resume.
    pub fn release(&mut self, max: usize, now: Instant) -> (Vec<(K, R)>, Flow<K>) {
        let mut out = Vec::new();
        // Records without an event time (undecodable, tombstones) go to the dead
        // letters whatever the frontier: they have no place in event time, and left at
        // a lane's front they kept it busy, so a quiet partition whose head was garbage
        // held every other partition until it received a valid record.
        for (key, lane) in &mut self.lanes {
            while out.len() < max && matches!(lane.queue.front(), Some((None, _))) {
                if let Some((_, record)) = lane.queue.pop_front() {
                    out.push((key.clone(), record));
                }
            }
        }
        let limit = match self.frontier(now) {
            Ok(Some(frontier)) => Some(frontier.saturating_add(self.slack_ms)),
            Ok(None) => None,
            Err(()) => return (out, self.flow()),
        };
        let within = |time: Option<i64>| match (time, limit) {
            (Some(time), Some(limit)) => time <= limit,
            _ => true,
        };
        // Round by round, the oldest front first, so a batch interleaves lanes in
        // event-time order as far as their fronts allow.
        while out.len() < max {
            let mut oldest: Option<(i64, &K)> = None;
            for (key, lane) in &self.lanes {
                if let Some((time, _)) = lane.queue.front()
                    && within(*time)
                {
                    let time = time.unwrap_or(i64::MIN);
                    // Strictly older: on a tie the first lane (in key order) goes first.
                    if oldest.is_none_or(|(t, _)| time < t) {
                        oldest = Some((time, key));
                    }
                }
            }
            let Some((_, key)) = oldest else { break };
            let key = key.clone();
            let lane = self.lanes.get_mut(&key).expect("the key was just found");
            let (_, record) = lane.queue.pop_front().expect("the front was just seen");
            out.push((key, record));
        }
        (out, self.flow())
    }

    /// Pauses lanes holding `pause_at` records or more, resumes paused lanes that have
    /// drained to half of it.
    pub fn flow(&mut self) -> Flow<K> {
        let mut flow = Flow {
            pause: Vec::new(),
            resume: Vec::new(),
        };
        for (key, lane) in &mut self.lanes {
            if !lane.paused && lane.queue.len() >= self.pause_at {
                lane.paused = true;
                flow.pause.push(key.clone());
            } else if lane.paused && lane.queue.len() <= self.pause_at / 2 {
                lane.paused = false;
                flow.resume.push(key.clone());
            }
        }
        flow
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONG: Duration = Duration::from_secs(3600);

    fn times(released: &[(u8, i64)]) -> Vec<i64> {
        released.iter().map(|(_, t)| *t).collect()
    }

    fn push(aligner: &mut Aligner<u8, i64>, lane: u8, time: i64, now: Instant) {
        aligner.push(lane, Some(time), time, now);
    }

    #[test]
    fn a_lane_ahead_waits_for_the_slowest() {
        let now = Instant::now();
        let mut aligner = Aligner::new(10, LONG, 100);
        for time in [100, 200, 300] {
            push(&mut aligner, 0, time, now);
        }
        push(&mut aligner, 1, 5, now);
        // Lane 1's newest is 5: only times <= 15 may go.
        let (out, _) = aligner.release(100, now);
        assert_eq!(times(&out), vec![5]);
        push(&mut aligner, 1, 150, now);
        let (out, _) = aligner.release(100, now);
        assert_eq!(times(&out), vec![100, 150]);
        assert_eq!(aligner.buffered(), 2);
    }

    #[test]
    fn an_assigned_lane_without_records_holds_everything_until_its_end() {
        let now = Instant::now();
        let mut aligner = Aligner::new(10, LONG, 100);
        aligner.assign(1, now);
        push(&mut aligner, 0, 100, now);
        assert!(aligner.release(100, now).0.is_empty());
        aligner.reached_end(&1);
        assert_eq!(times(&aligner.release(100, now).0), vec![100]);
    }

    #[test]
    fn a_quiet_lane_stops_holding_after_idle_after() {
        let start = Instant::now();
        let mut aligner = Aligner::new(10, Duration::from_millis(50), 100);
        push(&mut aligner, 1, 1, start);
        push(&mut aligner, 0, 100, start);
        assert_eq!(times(&aligner.release(100, start).0), vec![1]);
        assert!(aligner.release(100, start).0.is_empty());
        let later = start + Duration::from_millis(60);
        assert_eq!(times(&aligner.release(100, later).0), vec![100]);
        // Receiving again makes it hold the frontier again.
        push(&mut aligner, 1, 50, later);
        push(&mut aligner, 0, 200, later);
        assert_eq!(times(&aligner.release(100, later).0), vec![50]);
    }

    #[test]
    fn released_records_interleave_in_event_time_and_keep_lane_order() {
        let now = Instant::now();
        let mut aligner = Aligner::new(1_000, LONG, 100);
        for time in [1, 4, 3, 9] {
            push(&mut aligner, 0, time, now);
        }
        for time in [2, 5, 8] {
            push(&mut aligner, 1, time, now);
        }
        let (out, _) = aligner.release(100, now);
        // Lane 0's 4 comes before its 3 (lane order), lanes merge by their fronts.
        assert_eq!(times(&out), vec![1, 2, 4, 3, 5, 8, 9]);
        let lanes: Vec<u8> = out.iter().map(|(k, _)| *k).collect();
        assert_eq!(lanes, vec![0, 1, 0, 0, 1, 1, 0]);
    }

    #[test]
    fn undecodable_records_go_at_once_and_max_is_kept() {
        let now = Instant::now();
        let mut aligner: Aligner<u8, &str> = Aligner::new(0, LONG, 100);
        aligner.push(0, None, "bad", now);
        aligner.push(0, Some(10), "a", now);
        aligner.push(0, Some(11), "b", now);
        let (out, _) = aligner.release(2, now);
        assert_eq!(out, vec![(0, "bad"), (0, "a")]);
        assert_eq!(aligner.release(2, now).0, vec![(0, "b")]);
    }

    #[test]
    fn a_quiet_lane_with_only_undecodable_records_does_not_hold_the_others() {
        let now = Instant::now();
        let mut aligner: Aligner<u8, &str> = Aligner::new(0, LONG, 100);
        // A tombstone and a garbage record at the head of a quiet partition, whose end
        // is then reached; the other partition flows.
        aligner.assign(1, now);
        aligner.push(1, None, "tombstone", now);
        aligner.push(1, None, "garbage", now);
        aligner.reached_end(&1);
        aligner.push(0, Some(10), "a", now);
        aligner.push(0, Some(11), "b", now);
        let (out, _) = aligner.release(100, now);
        assert_eq!(
            out,
            vec![(1, "tombstone"), (1, "garbage"), (0, "a"), (0, "b")]
        );
        // Not at its end yet: the lane holds the others only until `idle_after`, like
        // any lane that has received no event time.
        aligner.push(1, None, "more garbage", now);
        aligner.push(0, Some(12), "c", now);
        assert_eq!(aligner.release(100, now).0, vec![(1, "more garbage")]);
        let later = now + LONG;
        assert_eq!(aligner.release(100, later).0, vec![(0, "c")]);
    }

    #[test]
    fn a_full_lane_is_paused_and_resumed_when_half_drained() {
        let now = Instant::now();
        let mut aligner = Aligner::new(0, LONG, 4);
        push(&mut aligner, 1, 0, now);
        for time in 1..=4 {
            push(&mut aligner, 0, time, now);
        }
        let (_, flow) = aligner.release(100, now);
        assert_eq!(flow.pause, vec![0]);
        assert!(aligner.flow().pause.is_empty(), "paused once");
        push(&mut aligner, 1, 2, now);
        let (out, flow) = aligner.release(100, now);
        assert_eq!(times(&out), vec![1, 2, 2]);
        assert_eq!(flow.resume, vec![0]);
    }

    #[test]
    fn a_revoked_lane_drops_its_records_and_stops_holding() {
        let now = Instant::now();
        let mut aligner = Aligner::new(0, LONG, 100);
        push(&mut aligner, 0, 100, now);
        push(&mut aligner, 1, 1, now);
        push(&mut aligner, 1, 2, now);
        assert_eq!(aligner.revoke(&1), 2);
        assert_eq!(times(&aligner.release(100, now).0), vec![100]);
    }
}
