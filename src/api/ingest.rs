//! The `Ingest` service: a unary batch call and a bidirectional stream with one ack per
//! batch, in order, each sent once the batch's events are durable.

use std::pin::Pin;
use std::sync::Arc;

use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::budget::Budget;
use super::convert::ack;
use super::encoded::{EncodedIngest, IngestDecoder, server::ingest_server::Ingest};
use super::pb;
use crate::events::RawEvent;
use crate::store::{BatchOutcome, FeatureStore, StoreError, Submitted};

/// Batches a stream may have in flight (applied, waiting to be durable) before the server
/// stops reading more from it.
const STREAM_WINDOW: usize = 64;
/// Acks a stream may have waiting for a client that does not read them.
const ACK_WINDOW: usize = 4;
/// Bytes one stream may hold for batches read but not yet acked: each batch while it
/// is decoded and applied, then its ack (which can be 10x the batch's encoding: a reason
/// per refused event) until the ack is handed to the connection. A producer that never reads its acks stops being
/// read once this is taken (HTTP/2 flow control then holds it back). Over all streams
/// together the server-wide budget (`limits.inflight_bytes`) bounds them.
pub const STREAM_PENDING_BYTES: usize = 2 << 20;

/// Room taken for a batch before it is read and decoded (more is taken once its size is
/// known).
const READ_ALLOWANCE: usize = 512 << 10;

/// Bytes an ack holds in memory per refused event, beyond its field and reason text.
const ACK_BYTES_PER_REFUSAL: usize = 96;

/// Bytes a decoded event holds beyond its encoding (its struct, maps and allocations):
/// a batch of small events takes 20x its encoded size once decoded.
const DECODED_EVENT_BYTES: usize = std::mem::size_of::<pb::Event>() + 64;

pub struct IngestService {
    store: Arc<FeatureStore>,
    drain: Drain,
    pending_bytes: Arc<Semaphore>,
    decoder: Arc<IngestDecoder>,
}

impl IngestService {
    /// Streams take their bytes from `budget`'s pool. Starts the thread that decodes
    /// large batches, on `cpus` (empty: any).
    pub fn new(
        store: Arc<FeatureStore>,
        drain: Drain,
        budget: Arc<Budget>,
        cpus: &[usize],
    ) -> std::io::Result<IngestService> {
        Ok(IngestService {
            store,
            drain,
            pending_bytes: Arc::clone(budget.bytes()),
            decoder: Arc::new(IngestDecoder::start(cpus)?),
        })
    }
}

/// What the ack of `outcome` holds in memory, about.
fn ack_bytes(outcome: &BatchOutcome) -> usize {
    outcome
        .refused
        .iter()
        .map(|(_, refusal)| refusal.field.len() + refusal.reason.len() + ACK_BYTES_PER_REFUSAL)
        .sum::<usize>()
        + ACK_BYTES_PER_REFUSAL
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

/// Submits a batch on the writer thread and has the decoder free it afterwards.
async fn submit(
    store: &Arc<FeatureStore>,
    decoder: &IngestDecoder,
    events: Vec<RawEvent>,
) -> Result<Submitted, StoreError> {
    let (submitted, events) = store.submit_handing_back(events).await?;
    decoder.dispose(events);
    submitted
}

type AckStream = Pin<Box<dyn Stream<Item = Result<pb::IngestAck, Status>> + Send>>;

#[tonic::async_trait]
impl Ingest for IngestService {
    async fn ingest_batch(
        &self,
        request: Request<EncodedIngest>,
    ) -> Result<Response<pb::IngestAck>, Status> {
        let (batch_id, events) = self.decoder.decode(request.into_inner(), to_raw).await?;
        let submitted = submit(&self.store, &self.decoder, events).await?;
        let outcome = self.store.wait_durable(submitted).await?;
        Ok(Response::new(ack(batch_id, outcome)))
    }

    type IngestStreamStream = AckStream;

    async fn ingest_stream(
        &self,
        request: Request<Streaming<EncodedIngest>>,
    ) -> Result<Response<Self::IngestStreamStream>, Status> {
        let mut inbound = request.into_inner();
        let (sender, receiver) =
            mpsc::channel::<(Result<pb::IngestAck, Status>, Option<Held>)>(ACK_WINDOW);
        let budget = Arc::clone(&self.pending_bytes);
        let stream_budget = Arc::new(Semaphore::new(STREAM_PENDING_BYTES));
        let store = Arc::clone(&self.store);
        let decoder = Arc::clone(&self.decoder);
        let deadline = self.drain.clone().deadline();
        // Batches are applied in arrival order and their durability waits run
        // concurrently, so one fsync can cover many batches of the same stream; the acks
        // still leave in order because each waits for the one before it.
        let (pending_tx, mut pending_rx) = mpsc::channel(STREAM_WINDOW);
        tokio::spawn(async move {
            tokio::pin!(deadline);
            loop {
                // A batch is decoded as it is read, so room for one is taken first: a
                // stream whose acks are not taken stops being read here.
                let reading = async {
                    let reading = Held::take(&stream_budget, &budget, READ_ALLOWANCE).await;
                    (reading, inbound.next().await)
                };
                let (reading, next) = tokio::select! {
                    next = reading => next,
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
                let (Some(reading), Some(next)) = (reading, next) else {
                    break;
                };
                let decoded = match next {
                    Ok(request) => {
                        let encoded = request.len();
                        let decoded = decoder.decode(request, to_raw).await;
                        decoded.map(|decoded| (encoded, decoded))
                    }
                    Err(status) => Err(super::limits::normalise(status)),
                };
                let (encoded, (batch_id, events)) = match decoded {
                    Ok(decoded) => decoded,
                    Err(status) => {
                        let _ = pending_tx
                            .send((tokio::spawn(async move { Err(status) }), None))
                            .await;
                        break;
                    }
                };
                let cost = (encoded + events.len() * DECODED_EVENT_BYTES).min(STREAM_PENDING_BYTES);
                let Some(decoding) =
                    Held::take(&stream_budget, &budget, cost.saturating_sub(READ_ALLOWANCE)).await
                else {
                    break;
                };
                let submitted = submit(&store, &decoder, events).await;
                // The batch is applied and gone; what waits now is its ack, whose refusal
                // reasons are known: they are what counts until the ack is taken.
                drop((reading, decoding));
                let ack_cost = match &submitted {
                    Ok(submitted) => ack_bytes(FeatureStore::outcome_of(submitted)),
                    Err(_) => 0,
                };
                let Some(held) =
                    Held::take(&stream_budget, &budget, ack_cost.min(STREAM_PENDING_BYTES)).await
                else {
                    break;
                };
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
                if pending_tx.send((done, Some(held))).await.is_err() {
                    break;
                }
            }
        });
        tokio::spawn(async move {
            while let Some((done, held)) = pending_rx.recv().await {
                let result = done.await.unwrap_or_else(|join| {
                    Err(Status::internal(format!("ingest task failed: {join}")))
                });
                let failed = result.is_err();
                // The batch's bytes count until its ack is taken by the connection.
                if sender.send((result, held)).await.is_err() || failed {
                    break;
                }
            }
        });
        // An ack's bytes count until the next ack is taken: by then hyper has handed the
        // encoded ack to HTTP/2 within the client's window (it asks for the next frame
        // only once the previous one is sent).
        let mut previous: Option<Held> = None;
        let acks = ReceiverStream::new(receiver).map(move |(ack, held)| {
            drop(std::mem::replace(&mut previous, held));
            ack
        });
        Ok(Response::new(Box::pin(acks)))
    }
}

/// Bytes a stream holds of its own budget and of the server's.
struct Held {
    _stream: OwnedSemaphorePermit,
    _server: OwnedSemaphorePermit,
}

impl Held {
    /// Waits for `bytes` of both budgets; `None` once either is closed.
    async fn take(stream: &Arc<Semaphore>, server: &Arc<Semaphore>, bytes: usize) -> Option<Held> {
        let bytes = u32::try_from(bytes).ok()?;
        Some(Held {
            _stream: Arc::clone(stream).acquire_many_owned(bytes).await.ok()?,
            _server: Arc::clone(server).acquire_many_owned(bytes).await.ok()?,
        })
    }
}
