//! The `Ingest` service: a unary batch call and a bidirectional stream with one ack per
//! batch, in order, each sent once the batch's events are durable.

use std::pin::Pin;
use std::sync::Arc;

use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::convert::ack;
use super::pb::{self, ingest_server::Ingest};
use crate::events::RawEvent;
use crate::store::FeatureStore;

/// Batches a stream may have in flight (applied, waiting to be durable) before the server
/// stops reading more from it.
const STREAM_WINDOW: usize = 64;
/// Acks a stream may have waiting for a client that does not read them.
const ACK_WINDOW: usize = 4;
/// Bytes of batches read from one stream whose acks have not been handed on yet. A
/// producer that never reads its acks stops being read once this is taken (HTTP/2 flow
/// control then holds it back), so it pins at most this much plus [`ACK_WINDOW`] acks.
pub const STREAM_PENDING_BYTES: usize = 8 << 20;
/// The same, over all streams together.
pub const PENDING_BYTES: usize = 256 << 20;

pub struct IngestService {
    store: Arc<FeatureStore>,
    drain: Drain,
    pending_bytes: Arc<Semaphore>,
}

impl IngestService {
    pub fn new(store: Arc<FeatureStore>, drain: Drain) -> IngestService {
        IngestService {
            store,
            drain,
            pending_bytes: Arc::new(Semaphore::new(PENDING_BYTES)),
        }
    }
}

/// Shutdown as open streams see it: once `draining` turns true they may go on for
/// `timeout`, then they are ended with UNAVAILABLE.
#[derive(Clone)]
pub struct Drain {
    pub draining: watch::Receiver<bool>,
    pub timeout: Duration,
}

impl Drain {
    /// Resolves when a stream must end: `timeout` after draining began.
    async fn deadline(mut self) {
        if self.draining.wait_for(|draining| *draining).await.is_err() {
            // The server is gone without draining: nothing to wait for.
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(self.timeout).await;
    }
}

fn to_raw(request: pb::IngestRequest) -> (u64, Vec<RawEvent>) {
    (
        request.batch_id,
        request.events.into_iter().map(RawEvent::from).collect(),
    )
}

type AckStream = Pin<Box<dyn Stream<Item = Result<pb::IngestAck, Status>> + Send>>;

#[tonic::async_trait]
impl Ingest for IngestService {
    async fn ingest_batch(
        &self,
        request: Request<pb::IngestRequest>,
    ) -> Result<Response<pb::IngestAck>, Status> {
        let (batch_id, events) = to_raw(request.into_inner());
        let outcome = self.store.ingest(&events).await?;
        Ok(Response::new(ack(batch_id, outcome)))
    }

    type IngestStreamStream = AckStream;

    async fn ingest_stream(
        &self,
        request: Request<Streaming<pb::IngestRequest>>,
    ) -> Result<Response<Self::IngestStreamStream>, Status> {
        let mut inbound = request.into_inner();
        let (sender, receiver) = mpsc::channel::<Result<pb::IngestAck, Status>>(ACK_WINDOW);
        let budget = Arc::clone(&self.pending_bytes);
        let stream_budget = Arc::new(Semaphore::new(STREAM_PENDING_BYTES));
        let store = Arc::clone(&self.store);
        let deadline = self.drain.clone().deadline();
        // Batches are applied in arrival order and their durability waits run
        // concurrently, so one fsync can cover many batches of the same stream; the acks
        // still leave in order because each waits for the one before it.
        let (pending_tx, mut pending_rx) = mpsc::channel(STREAM_WINDOW);
        tokio::spawn(async move {
            tokio::pin!(deadline);
            loop {
                let next = tokio::select! {
                    next = inbound.next() => next,
                    () = &mut deadline => {
                        let status = Status::unavailable(
                            "the server is shutting down: this stream's drain time is over; reconnect to another server or retry later (every acked batch is durable)",
                        );
                        let _ = pending_tx
                            .send((tokio::spawn(async move { Err(status) }), None))
                            .await;
                        break;
                    }
                };
                let Some(next) = next else { break };
                let request = match next {
                    Ok(request) => request,
                    Err(status) => {
                        let status = super::limits::normalise(status);
                        let _ = pending_tx
                            .send((tokio::spawn(async move { Err(status) }), None))
                            .await;
                        break;
                    }
                };
                let cost =
                    prost::Message::encoded_len(&request).clamp(1, STREAM_PENDING_BYTES) as u32;
                let (Ok(stream_permit), Ok(permit)) = (
                    Arc::clone(&stream_budget).acquire_many_owned(cost).await,
                    Arc::clone(&budget).acquire_many_owned(cost).await,
                ) else {
                    break;
                };
                let (batch_id, events) = to_raw(request);
                let submitted = store.submit(&events);
                let store = Arc::clone(&store);
                let done = tokio::spawn(async move {
                    let outcome = match submitted {
                        Ok(submitted) => store.wait_durable(submitted).await,
                        Err(error) => Err(error),
                    };
                    outcome
                        .map(|outcome| ack(batch_id, outcome))
                        .map_err(Status::from)
                });
                if pending_tx
                    .send((done, Some((stream_permit, permit))))
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
        tokio::spawn(async move {
            while let Some((done, permit)) = pending_rx.recv().await {
                let result = done.await.unwrap_or_else(|join| {
                    Err(Status::internal(format!("ingest task failed: {join}")))
                });
                let failed = result.is_err();
                // The batch's bytes count until its ack is handed on.
                let sent = sender.send(result).await;
                drop(permit);
                if sent.is_err() || failed {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }
}
