//! Where the scoring stream picks a payments partition up: after the newest payment of
//! that partition that already has a decision. The decisions topic is its own
//! checkpoint.
//!
//! Committing the input offsets inside the decisions' transaction is enough on a broker
//! that stores transactional offsets. It is not enough when those offsets are lost or
//! never stored (librdkafka's mock broker stores none): every restart would score the
//! payments again and write a second decision for each. So every decision of input
//! partition `p` goes to output partition `p mod n`, in offset order (the producer is
//! idempotent, so a partition's records keep their order). The newest decision of `p`
//! in that partition then says how far `p` got, and everything before it is decided.
//! A `read_committed` scan does not see aborted transactions, so their payments are
//! scored again.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::Deserialize;

use super::client_config;
use crate::config::KafkaSettings;

/// Records read in the first look back from the end; each further look reads four
/// times as many.
const FIRST_WINDOW: i64 = 1024;

/// The output partition of every decision of input partition `input`.
pub fn output_partition(input: i32, output_partitions: i32) -> i32 {
    input.rem_euclid(output_partitions.max(1))
}

/// What a decision record says of where its payment was read (the rest of the record
/// is not needed here).
#[derive(Deserialize)]
struct Source {
    source: (String, i32, i64),
}

/// Why the scan could not say where a partition got to: the stream waits and tries
/// again rather than guess (a guess too early decides payments twice, too late never).
#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error(
        "the decisions topic '{topic}' partition {partition} was not read to its end within {timeout:?}"
    )]
    Timeout {
        topic: String,
        partition: i32,
        timeout: Duration,
    },
}

/// A reader of the decisions topic for [`last_decided`]; one serves many look backs.
pub fn reader(settings: &KafkaSettings) -> Result<BaseConsumer, KafkaError> {
    client_config(settings)
        // Never joins or commits: partitions are assigned by hand.
        .set("group.id", format!("{}-resume", settings.scoring.group))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        .create()
}

/// The newest offset of `input_topic`/`input_partition` with a committed decision in
/// `output_topic`, or `None` when it has none. Reads the output partition back from
/// its end in growing windows until one holds a decision of the partition. Blocking.
pub fn last_decided(
    reader: &BaseConsumer,
    output_topic: &str,
    output_partitions: i32,
    input_topic: &str,
    input_partition: i32,
    timeout: Duration,
) -> Result<Option<i64>, ResumeError> {
    let partition = output_partition(input_partition, output_partitions);
    look_back(
        reader,
        output_topic,
        partition,
        timeout,
        |newest: &mut Option<i64>, payload| {
            // A record that is not ours says nothing of our progress.
            if let Ok(Source {
                source: (topic, partition, offset),
            }) = serde_json::from_slice(payload)
                && topic == input_topic
                && partition == input_partition
            {
                *newest = (*newest).max(Some(offset));
            }
        },
        Option::is_some,
    )
}

/// Reads `topic`/`partition` back from its end in growing windows (the last
/// [`FIRST_WINDOW`] records, then four times as many each time), each window whole and
/// in order into a fresh `W` through `take`, until `enough` is true of a window or the
/// window starts at the partition's start; returns that window's `W`. Blocking, for at
/// most `timeout` in all.
pub fn look_back<W: Default>(
    reader: &BaseConsumer,
    topic: &str,
    partition: i32,
    timeout: Duration,
    mut take: impl FnMut(&mut W, &[u8]),
    mut enough: impl FnMut(&W) -> bool,
) -> Result<W, ResumeError> {
    let deadline = Instant::now() + timeout;
    let (low, high) = reader.fetch_watermarks(topic, partition, timeout)?;
    let mut window = FIRST_WINDOW;
    loop {
        let start = (high - window).max(low);
        let mut read = W::default();
        if start < high {
            let mut assignment = TopicPartitionList::new();
            assignment.add_partition_offset(topic, partition, Offset::Offset(start))?;
            reader.assign(&assignment)?;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(ResumeError::Timeout {
                        topic: topic.to_string(),
                        partition,
                        timeout,
                    });
                }
                match reader.poll(left.min(Duration::from_millis(200))) {
                    Some(Ok(message)) => {
                        if let Some(payload) = message.payload() {
                            take(&mut read, payload);
                        }
                    }
                    Some(Err(KafkaError::PartitionEOF(_))) => break,
                    Some(Err(error)) => return Err(error.into()),
                    None => {}
                }
            }
        }
        if start <= low || enough(&read) {
            return Ok(read);
        }
        window = window.saturating_mul(4);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_input_partition_has_one_output_partition_in_range() {
        for outputs in 1..8 {
            for input in 0..32 {
                let out = output_partition(input, outputs);
                assert!((0..outputs).contains(&out), "{input} -> {out} of {outputs}");
                assert_eq!(out, output_partition(input, outputs), "stable");
            }
        }
        assert_eq!(output_partition(5, 0), 0, "no partitions yet: partition 0");
    }
}
