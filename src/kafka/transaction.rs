//! The end of a consume-transform-produce transaction, shared by the scoring stream and
//! the scale-out router: the consumed batch's next offsets go into the transaction and
//! it commits, or it is aborted. librdkafka's transaction calls block (up to their
//! timeout), so each runs on a blocking thread, never on the async runtime.

use std::time::Duration;

use rdkafka::consumer::{Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::OwnedMessage;
use rdkafka::producer::{FutureProducer, Producer};

use super::batch::next_offsets;

#[derive(Debug, thiserror::Error)]
pub enum TransactionError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// The consumer has not joined its group yet: offsets cannot be committed.
    #[error("no consumer group metadata yet")]
    NoGroupMetadata,
    #[error("a blocking Kafka call failed: {0}")]
    Blocking(#[from] tokio::task::JoinError),
}

/// Runs a blocking producer call (a transaction call) off the async runtime.
pub async fn blocking<T: Send + 'static>(
    producer: &FutureProducer,
    call: impl FnOnce(&FutureProducer) -> Result<T, KafkaError> + Send + 'static,
) -> Result<T, TransactionError> {
    let producer = producer.clone();
    Ok(tokio::task::spawn_blocking(move || call(&producer)).await??)
}

/// Sends `batch`'s next offsets (as `consumer`'s group) into the open transaction and
/// commits it: what it produced and the input it consumed count together, or neither.
pub async fn commit_consumed<C: ConsumerContext>(
    consumer: &impl Consumer<C>,
    producer: &FutureProducer,
    batch: &[OwnedMessage],
    timeout: Duration,
) -> Result<(), TransactionError> {
    let offsets = next_offsets(batch)?;
    let group = consumer
        .group_metadata()
        .ok_or(TransactionError::NoGroupMetadata)?;
    blocking(producer, move |p| {
        p.send_offsets_to_transaction(&offsets, &group, timeout)?;
        p.commit_transaction(timeout)
    })
    .await
}

/// Aborts the open transaction: nothing it produced is read by a `read_committed`
/// consumer, and the batch is consumed again.
pub async fn abort(producer: &FutureProducer, timeout: Duration) -> Result<(), TransactionError> {
    blocking(producer, move |p| p.abort_transaction(timeout)).await
}
