//! A small gRPC client for the CLI, the tests and the benches: stream events in batches
//! and read features back.

use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use super::pb::{self, features_client::FeaturesClient, ingest_client::IngestClient};
use crate::events::RawEvent;

/// Totals over every ack of a stream.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StreamSummary {
    pub batches: u64,
    pub accepted: u64,
    pub duplicates: u64,
    pub refused: Vec<pb::Refusal>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("'{0}' is not a valid server URL (expected e.g. http://127.0.0.1:50051)")]
    InvalidUrl(String),
    #[error("cannot connect to {url}: {source}")]
    Transport {
        url: String,
        source: tonic::transport::Error,
    },
}

pub async fn connect(url: &str) -> Result<Channel, ConnectError> {
    let endpoint = Channel::from_shared(url.to_string())
        .map_err(|_| ConnectError::InvalidUrl(url.to_string()))?;
    endpoint
        .connect()
        .await
        .map_err(|source| ConnectError::Transport {
            url: url.to_string(),
            source,
        })
}

/// Streams `events` in batches of `batch_size` through `IngestStream`, with up to
/// `in_flight` unacknowledged batches, calling `on_ack` for each ack.
pub async fn stream_events(
    channel: Channel,
    events: impl Iterator<Item = RawEvent> + Send + 'static,
    batch_size: usize,
    in_flight: usize,
    mut on_ack: impl FnMut(&pb::IngestAck),
) -> Result<StreamSummary, tonic::Status> {
    let mut client = IngestClient::new(channel)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    let (sender, receiver) = mpsc::channel(in_flight.max(1));
    let producer = tokio::spawn(async move {
        let mut events = events.peekable();
        let mut batch_id = 0;
        while events.peek().is_some() {
            batch_id += 1;
            let batch: Vec<pb::Event> = events
                .by_ref()
                .take(batch_size.max(1))
                .map(pb::Event::from)
                .collect();
            if sender
                .send(pb::IngestRequest {
                    batch_id,
                    events: batch,
                })
                .await
                .is_err()
            {
                break;
            }
        }
    });
    let mut acks = client
        .ingest_stream(ReceiverStream::new(receiver))
        .await?
        .into_inner();
    let mut summary = StreamSummary::default();
    while let Some(ack) = acks.next().await {
        let ack = ack?;
        on_ack(&ack);
        summary.batches += 1;
        summary.accepted += u64::from(ack.accepted);
        summary.duplicates += u64::from(ack.duplicates);
        summary.refused.extend(ack.refused);
    }
    producer.abort();
    Ok(summary)
}

pub async fn get_features(
    channel: Channel,
    entity_type: &str,
    entity_id: &str,
    as_of_ms: Option<i64>,
) -> Result<pb::GetFeaturesResponse, tonic::Status> {
    let request = pb::GetFeaturesRequest {
        entity_type: entity_type.into(),
        entity_id: entity_id.into(),
        feature_names: Vec::new(),
        as_of_ms,
    };
    Ok(FeaturesClient::new(channel)
        .get_features(request)
        .await?
        .into_inner())
}
