//! Batches of a stream consumer's records, shared by the scoring stream and the
//! scale-out router and aggregator: receiving one, and the offsets to commit after it.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::consumer::{ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::OwnedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};

/// How long a batch waits for more records after its first.
pub const BATCH_WAIT: Duration = Duration::from_millis(5);

/// Up to `max` records: waits for the first (up to a second), then takes what comes
/// within [`BATCH_WAIT`].
pub async fn receive<C: ConsumerContext + 'static>(
    consumer: &StreamConsumer<C>,
    max: usize,
) -> Vec<OwnedMessage> {
    let mut batch = Vec::new();
    let mut wait = Duration::from_secs(1);
    while batch.len() < max {
        match tokio::time::timeout(wait, consumer.recv()).await {
            Ok(Ok(message)) => batch.push(message.detach()),
            Ok(Err(error)) => {
                tracing::debug!(%error, "kafka receive failed; librdkafka retries");
                break;
            }
            Err(_elapsed) => break,
        }
        wait = BATCH_WAIT;
    }
    batch
}

/// Per partition, the offset after the batch's last record.
pub fn next_offsets(batch: &[OwnedMessage]) -> Result<TopicPartitionList, KafkaError> {
    let mut next: BTreeMap<(&str, i32), i64> = BTreeMap::new();
    for message in batch {
        let slot = next
            .entry((message.topic(), message.partition()))
            .or_insert(0);
        *slot = (*slot).max(message.offset() + 1);
    }
    let mut list = TopicPartitionList::new();
    for ((topic, partition), offset) in next {
        list.add_partition_offset(topic, partition, Offset::Offset(offset))?;
    }
    Ok(list)
}
