//! What a consumer applied and what the broker confirmed committed, per partition. An
//! asynchronous commit can be lost (refused while the group rebalances, the
//! coordinator moving) with no later record to carry a new one: the consumer commits
//! again what is behind, and commits a revoked partition's applied offsets before it
//! goes, so the group's committed offsets always reach what was applied.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use rdkafka::error::KafkaResult;
use rdkafka::{Offset, TopicPartitionList};

use super::lock;

/// A partition of a topic.
pub type Partition = (Arc<str>, i32);

/// The partitions of a librdkafka list.
pub fn partitions(list: &TopicPartitionList) -> Vec<Partition> {
    list.elements()
        .iter()
        .map(|e| (Arc::from(e.topic()), e.partition()))
        .collect()
}

#[derive(Debug, Default)]
pub struct CommitLedger {
    /// Per partition, the offset after its last applied record: what a commit says.
    applied: Mutex<BTreeMap<Partition, i64>>,
    /// Per partition, the offset the broker confirmed as committed.
    confirmed: Mutex<BTreeMap<Partition, i64>>,
}

impl CommitLedger {
    /// Notes `next` (per partition, the offset after its last applied record) as
    /// applied, about to be committed.
    pub fn applied(&self, next: impl IntoIterator<Item = (Partition, i64)>) {
        let mut applied = lock(&self.applied);
        for (partition, offset) in next {
            let slot = applied.entry(partition).or_insert(offset);
            *slot = (*slot).max(offset);
        }
    }

    /// Notes what a commit callback reports: the offsets the broker confirmed.
    pub fn confirm(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        if let Err(error) = result {
            tracing::debug!(%error, "kafka commit failed; it is made again");
            return;
        }
        let mut confirmed = lock(&self.confirmed);
        for element in offsets.elements() {
            if let (Offset::Offset(offset), Ok(())) = (element.offset(), element.error()) {
                let slot = confirmed
                    .entry((Arc::from(element.topic()), element.partition()))
                    .or_insert(offset);
                *slot = (*slot).max(offset);
            }
        }
    }

    /// Whether some applied offset is not confirmed committed yet (a commit failed, for
    /// example while the group was rebalancing, or is still in flight).
    pub fn behind(&self) -> bool {
        let applied = lock(&self.applied);
        let confirmed = lock(&self.confirmed);
        applied
            .iter()
            .any(|(partition, offset)| confirmed.get(partition) < Some(offset))
    }

    /// The applied offsets of `partitions` (all when `None`), as a commit list.
    pub fn offsets(&self, partitions: Option<&[Partition]>) -> TopicPartitionList {
        let applied = lock(&self.applied);
        let mut list = TopicPartitionList::new();
        for ((topic, partition), offset) in applied.iter() {
            let wanted = partitions.is_none_or(|p| p.contains(&(topic.clone(), *partition)));
            if wanted {
                // Only fails for an offset librdkafka cannot represent; ours are >= 0.
                let _ = list.add_partition_offset(topic, *partition, Offset::Offset(*offset));
            }
        }
        list
    }

    /// Forgets revoked partitions: their next owner commits them from now on.
    pub fn forget(&self, partitions: &[Partition]) {
        let (mut applied, mut confirmed) = (lock(&self.applied), lock(&self.confirmed));
        for partition in partitions {
            applied.remove(partition);
            confirmed.remove(partition);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[(&str, i32, i64)]) -> TopicPartitionList {
        let mut list = TopicPartitionList::new();
        for (topic, partition, offset) in entries {
            list.add_partition_offset(topic, *partition, Offset::Offset(*offset))
                .expect("an offset");
        }
        list
    }

    #[test]
    fn a_lost_commit_leaves_the_ledger_behind_until_one_is_confirmed() {
        let ledger = CommitLedger::default();
        let p0: Partition = (Arc::from("t"), 0);
        ledger.applied([(p0.clone(), 10)]);
        assert!(ledger.behind(), "in flight");
        // Refused while the group rebalanced: still behind, and the offsets to commit
        // again are the applied ones.
        ledger.confirm(
            Err(rdkafka::error::KafkaError::ConsumerCommit(
                rdkafka::types::RDKafkaErrorCode::RebalanceInProgress,
            )),
            &list(&[("t", 0, 10)]),
        );
        assert!(ledger.behind());
        let again = ledger.offsets(None);
        assert_eq!(again.elements().len(), 1);
        assert_eq!(again.elements()[0].offset(), Offset::Offset(10));
        ledger.confirm(Ok(()), &again);
        assert!(!ledger.behind());
        // An older confirmation never moves it back.
        ledger.confirm(Ok(()), &list(&[("t", 0, 4)]));
        assert!(!ledger.behind());
        ledger.applied([(p0.clone(), 12)]);
        assert!(ledger.behind());
        ledger.forget(&[p0]);
        assert!(!ledger.behind(), "a revoked partition is its next owner's");
        assert_eq!(ledger.offsets(None).count(), 0);
    }
}
