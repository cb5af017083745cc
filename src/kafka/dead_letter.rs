//! The dead-letter topic: a record that cannot be applied (undecodable, invalid or
//! late) is written there unchanged, with where it came from and why in headers, so
//! nothing is dropped silently and an operator can fix and replay it. A record the
//! topic will not take as it is (larger than the topic's limit) is written as a stub:
//! the same headers, its size, and the start of its value.

use std::time::Duration;

use rdkafka::Message;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};

/// Why a record was refused: the field and reason of the validation that refused it,
/// and its kind (`undecodable`, `invalid`, `late`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub field: String,
    pub reason: String,
    pub kind: &'static str,
}

/// Header names, also read by tests and operators' tools.
pub const SOURCE_TOPIC: &str = "streamscore.source";
pub const PARTITION: &str = "streamscore.partition";
pub const OFFSET: &str = "streamscore.offset";
pub const FIELD: &str = "streamscore.field";
pub const REASON: &str = "streamscore.reason";
pub const KIND: &str = "streamscore.kind";
/// On a stub only: the refused record's value size in bytes, and why it was cut.
pub const ORIGINAL_SIZE: &str = "streamscore.original_size";
pub const STUB: &str = "streamscore.stub";

/// Bytes of the original value a stub keeps, enough to recognise the record.
pub const STUB_VALUE_BYTES: usize = 1024;

/// Writes every refused record to `topic` and waits until the broker has them, or
/// they failed: returns the ones that failed (by index in `refused`) and why. Their
/// offsets are committed only after every one is written.
pub async fn send_all(
    producer: &FutureProducer,
    topic: &str,
    refused: &[(&OwnedMessage, Refused)],
) -> Vec<(usize, KafkaError)> {
    // Polled together, so every record is queued before any is awaited: one round trip
    // for the batch, not one per record.
    let deliveries = refused
        .iter()
        .map(|(message, why)| send(producer, topic, message, why));
    futures_util::future::join_all(deliveries)
        .await
        .into_iter()
        .enumerate()
        .filter_map(|(index, delivered)| delivered.err().map(|error| (index, error)))
        .collect()
}

async fn send(
    producer: &FutureProducer,
    topic: &str,
    message: &OwnedMessage,
    why: &Refused,
) -> Result<(), KafkaError> {
    match produce(producer, topic, message, why, None).await {
        Err(error) if not_takeable_as_is(&error) => {
            tracing::warn!(
                %error,
                source_topic = message.topic(),
                partition = message.partition(),
                offset = message.offset(),
                size = message.payload().map_or(0, <[u8]>::len),
                "the dead-letter topic refused a record as it is: writing a stub"
            );
            produce(producer, topic, message, why, Some(&error)).await
        }
        sent => sent,
    }
}

/// Errors about the record itself, which a smaller record does not meet.
fn not_takeable_as_is(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::InvalidRecord
        )
    )
}

/// Writes `message` whole, or as a stub cut for `stub_because`.
async fn produce<'a>(
    producer: &FutureProducer,
    topic: &str,
    message: &'a OwnedMessage,
    why: &'a Refused,
    stub_because: Option<&KafkaError>,
) -> Result<(), KafkaError> {
    let partition = message.partition().to_string();
    let offset = message.offset().to_string();
    let payload = message.payload();
    let original_size = payload.map_or(0, <[u8]>::len).to_string();
    let stub_reason = stub_because.map(ToString::to_string);
    // A reason may quote the record (an unknown value, say): a stub's is cut too.
    let cut = |text: &'a str| match stub_reason {
        Some(_) => prefix(text, STUB_VALUE_BYTES / 4),
        None => text,
    };
    let mut headers = vec![
        (SOURCE_TOPIC, message.topic()),
        (PARTITION, &partition),
        (OFFSET, &offset),
        (FIELD, cut(&why.field)),
        (REASON, cut(&why.reason)),
        (KIND, why.kind),
    ];
    if let Some(stub_reason) = &stub_reason {
        headers.push((ORIGINAL_SIZE, &original_size));
        headers.push((STUB, stub_reason));
    }
    let headers = headers
        .into_iter()
        .fold(OwnedHeaders::new(), |headers, (key, value)| {
            headers.insert(Header {
                key,
                value: Some(value),
            })
        });
    let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).headers(headers);
    // A stub leaves out the key too: a key can be as large as the value.
    if stub_reason.is_none()
        && let Some(key) = message.key()
    {
        record = record.key(key);
    }
    if let Some(payload) = payload {
        record = record.payload(match stub_reason {
            Some(_) => &payload[..payload.len().min(STUB_VALUE_BYTES)],
            None => payload,
        });
    }
    producer
        .send(record, Duration::from_secs(30))
        .await
        .map(|_| ())
        .map_err(|(error, _)| error)
}

/// The longest prefix of `text` of at most `max` bytes that ends on a character.
fn prefix(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_ends_on_a_character() {
        assert_eq!(prefix("abc", 10), "abc");
        assert_eq!(prefix("abc", 2), "ab");
        // 'é' is two bytes: a cut inside it steps back.
        assert_eq!(prefix("aé", 2), "a");
        assert_eq!(prefix("", 0), "");
    }
}
