//! The router's admission state (its dedup set and watermark) across restarts and
//! rebalances. Every transaction writes, per input partition, a checkpoint record to
//! `<prefix>.routed`: the newest input offset routed and the events it admitted (the
//! hash of each id and its event time). A router that takes an input partition over,
//! after its own restart or another router's, reads that partition's checkpoints back
//! over the dedup horizon and admits those events again before it routes anything:
//! a producer's duplicate sent across the restart is refused as a duplicate, and the
//! watermark is where it was, so a late event is still refused as late.
//!
//! Only committed transactions are read (`read_committed`), so an aborted batch's
//! admissions are not restored and its events are admitted again when it is retried.

use std::time::Duration;

use rdkafka::consumer::BaseConsumer;
use serde::{Deserialize, Serialize};

use crate::kafka::resume::{self, ResumeError};

/// What one transaction routed of one input partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// (input topic, partition, newest offset routed).
    pub source: (String, i32, i64),
    /// (event id hash as 32 hex digits, event time in ms) of each event admitted.
    /// Absent in checkpoints written before admissions were kept.
    #[serde(default)]
    pub admitted: Vec<(String, i64)>,
}

impl Checkpoint {
    pub fn new(topic: &str, partition: i32, offset: i64, admitted: &[(u128, i64)]) -> Self {
        Checkpoint {
            source: (topic.to_string(), partition, offset),
            admitted: admitted
                .iter()
                .map(|(hash, time_ms)| (format!("{hash:032x}"), *time_ms))
                .collect(),
        }
    }

    /// The admitted events; an entry whose hash does not parse is left out (it was
    /// not written by us).
    fn admissions(&self) -> impl Iterator<Item = (u128, i64)> + '_ {
        self.admitted
            .iter()
            .filter_map(|(hash, time_ms)| Some((u128::from_str_radix(hash, 16).ok()?, *time_ms)))
    }
}

/// An input partition's routing state, read back from its checkpoints.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Restored {
    /// The newest input offset routed (`None`: none yet).
    pub newest_offset: Option<i64>,
    /// The events admitted within the reach back from the newest, oldest first.
    pub admitted: Vec<(u128, i64)>,
}

/// One look-back window's checkpoints of the partition, in the order written.
#[derive(Default)]
struct Window {
    checkpoints: Vec<Checkpoint>,
}

impl Window {
    /// The newest event time admitted in the window.
    fn newest_time(&self) -> Option<i64> {
        self.checkpoints
            .iter()
            .flat_map(Checkpoint::admissions)
            .map(|(_, time_ms)| time_ms)
            .max()
    }

    /// Whether the window reaches `reach_back_ms` before its newest event time: its
    /// oldest checkpoint admitted nothing newer than that, so older ones (which admitted
    /// still older events, up to the allowed lateness) are outside the dedup horizon.
    fn reaches_back(&self, reach_back_ms: i64) -> bool {
        let Some(newest) = self.newest_time() else {
            return false;
        };
        let oldest = self
            .checkpoints
            .iter()
            .find_map(|checkpoint| checkpoint.admissions().map(|(_, t)| t).max());
        oldest.is_some_and(|oldest| oldest < newest.saturating_sub(reach_back_ms))
    }
}

/// Reads the checkpoints of `topic`/`partition` back from the end of their checkpoint
/// partition until they reach `reach_back_ms` (the dedup horizon plus the allowed
/// lateness) before the newest event they admitted, or the partition's start.
/// Blocking, for at most `timeout`.
pub fn restore(
    reader: &BaseConsumer,
    checkpoints: &str,
    checkpoint_partitions: i32,
    topic: &str,
    partition: i32,
    reach_back_ms: i64,
    timeout: Duration,
) -> Result<Restored, ResumeError> {
    let window = resume::look_back(
        reader,
        checkpoints,
        resume::output_partition(partition, checkpoint_partitions),
        timeout,
        |window: &mut Window, payload| {
            // A record that is not a checkpoint of this partition says nothing of it.
            if let Ok(checkpoint) = serde_json::from_slice::<Checkpoint>(payload)
                && checkpoint.source.0 == topic
                && checkpoint.source.1 == partition
            {
                window.checkpoints.push(checkpoint);
            }
        },
        |window| window.reaches_back(reach_back_ms),
    )?;
    let newest_offset = window.checkpoints.iter().map(|c| c.source.2).max();
    let horizon_start = window
        .newest_time()
        .map_or(i64::MIN, |newest| newest.saturating_sub(reach_back_ms));
    let admitted = window
        .checkpoints
        .iter()
        .flat_map(Checkpoint::admissions)
        .filter(|(_, time_ms)| *time_ms >= horizon_start)
        .collect();
    Ok(Restored {
        newest_offset,
        admitted,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_keeps_its_admissions_through_json() {
        let hash = u128::MAX - 12_345;
        let written = Checkpoint::new("events", 3, 77, &[(hash, 1_000), (1, -5)]);
        let json = serde_json::to_vec(&written).expect("json");
        let read: Checkpoint = serde_json::from_slice(&json).expect("read back");
        assert_eq!(read, written);
        assert_eq!(
            read.admissions().collect::<Vec<_>>(),
            vec![(hash, 1_000), (1, -5)]
        );
    }

    #[test]
    fn a_checkpoint_written_before_admissions_were_kept_still_reads() {
        let read: Checkpoint =
            serde_json::from_str(r#"{"source":["events",0,9]}"#).expect("old checkpoint");
        assert_eq!(read.source, ("events".to_string(), 0, 9));
        assert_eq!(read.admissions().count(), 0);
    }

    #[test]
    fn a_window_reaches_back_once_its_oldest_checkpoint_is_beyond_the_horizon() {
        let at = |times: &[i64]| {
            let admitted: Vec<(u128, i64)> = times.iter().map(|t| (*t as u128, *t)).collect();
            Checkpoint::new("events", 0, 0, &admitted)
        };
        let window = |checkpoints: Vec<Checkpoint>| Window { checkpoints };
        assert!(!window(vec![]).reaches_back(100));
        assert!(!window(vec![at(&[])]).reaches_back(100));
        assert!(!window(vec![at(&[950]), at(&[1_000])]).reaches_back(100));
        assert!(window(vec![at(&[850, 890]), at(&[1_000])]).reaches_back(100));
        // The oldest checkpoint admitted one event inside the horizon: not yet.
        assert!(!window(vec![at(&[850, 950]), at(&[1_000])]).reaches_back(100));
    }
}
