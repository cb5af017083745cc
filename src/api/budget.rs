//! One budget for the work in flight, shared by every gRPC and REST call: how many
//! calls run at once (`limits.inflight_calls`) and how many bytes they may hold
//! (`limits.inflight_bytes`). A call is charged for what it brings (its body, times what
//! decoding it costs) as the bytes arrive, and for what it will produce (an answer's size
//! is estimated from the request's shape before any work). What does not fit is refused
//! at once with RESOURCE_EXHAUSTED (429 over REST) naming the limit, rather than queued:
//! a caller that retries later does better than one whose call waits on memory that is
//! not there. Everything charged is held until the answer has been handed to the
//! connection, then returned.
//!
//! `IngestStream` takes its bytes from the same pool, batch by batch (see `ingest.rs`);
//! the layer charges only its call slot.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::{Layer, Service};

/// Why a call was refused: which limit, and how far it was.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum Exhausted {
    #[error("server busy: {max} calls are in flight (limits.inflight_calls); retry with backoff")]
    Calls { max: usize },
    #[error(
        "server busy: this call needs {asked} bytes more of the in-flight budget, {free} of {max} are free (limits.inflight_bytes); retry with backoff"
    )]
    Bytes {
        asked: usize,
        free: usize,
        max: usize,
    },
    #[error(
        "the answer would take about {bytes} bytes, over limits.max_answer_bytes ({max}): ask for fewer rows, outputs or reasons per call"
    )]
    Answer { bytes: u64, max: u64 },
}

/// The server-wide pools.
#[derive(Debug)]
pub struct Budget {
    calls: Arc<Semaphore>,
    max_calls: usize,
    bytes: Arc<Semaphore>,
    max_bytes: usize,
    max_answer_bytes: u64,
    /// The most bytes charged at once since it was last taken.
    high_water: std::sync::atomic::AtomicUsize,
}

impl Budget {
    pub fn new(max_calls: usize, max_bytes: usize, max_answer_bytes: u64) -> Budget {
        let max_bytes = max_bytes.min(Semaphore::MAX_PERMITS);
        let max_calls = max_calls.min(Semaphore::MAX_PERMITS);
        Budget {
            calls: Arc::new(Semaphore::new(max_calls)),
            max_calls,
            bytes: Arc::new(Semaphore::new(max_bytes)),
            max_bytes,
            max_answer_bytes,
            high_water: Default::default(),
        }
    }

    /// The most bytes charged at once since the last call (at least those charged now).
    pub fn take_high_water(&self) -> usize {
        use std::sync::atomic::Ordering::Relaxed;
        self.high_water.swap(0, Relaxed).max(self.bytes_in_use())
    }

    pub fn from_settings(limits: &crate::config::LimitSettings) -> Budget {
        Budget::new(
            limits.inflight_calls,
            limits.inflight_bytes,
            limits.max_answer_bytes,
        )
    }

    /// The byte pool, for work that charges itself (a stream's batches and acks).
    pub fn bytes(&self) -> &Arc<Semaphore> {
        &self.bytes
    }

    /// Bytes now charged to calls in flight.
    pub fn bytes_in_use(&self) -> usize {
        self.max_bytes - self.bytes.available_permits()
    }

    /// `bytes` more from the pool, at once or not at all.
    pub fn try_bytes(&self, bytes: usize) -> Result<Option<OwnedSemaphorePermit>, Exhausted> {
        if bytes == 0 {
            return Ok(None);
        }
        let refused = || Exhausted::Bytes {
            asked: bytes,
            free: self.bytes.available_permits(),
            max: self.max_bytes,
        };
        let asked = u32::try_from(bytes).map_err(|_| refused())?;
        let permit = Arc::clone(&self.bytes)
            .try_acquire_many_owned(asked)
            .map_err(|_| refused())?;
        self.high_water
            .fetch_max(self.bytes_in_use(), std::sync::atomic::Ordering::Relaxed);
        Ok(Some(permit))
    }

    fn try_call(&self) -> Result<OwnedSemaphorePermit, Exhausted> {
        Arc::clone(&self.calls)
            .try_acquire_owned()
            .map_err(|_| Exhausted::Calls {
                max: self.max_calls,
            })
    }
}

/// What one call holds of the budget; handlers find it in the request's extensions to
/// charge the answer they are about to build.
#[derive(Debug, Clone)]
pub struct CallBudget(Arc<Charge>);

#[derive(Debug)]
struct Charge {
    budget: Arc<Budget>,
    held: Mutex<Option<OwnedSemaphorePermit>>,
    /// The first refusal, so a handler whose body read failed can say why.
    refused: Mutex<Option<Exhausted>>,
    _call: OwnedSemaphorePermit,
}

impl CallBudget {
    /// Charges `bytes` more to this call, or says which limit refuses them.
    pub fn charge(&self, bytes: usize) -> Result<(), Exhausted> {
        let charge = &self.0;
        match charge.budget.try_bytes(bytes) {
            Ok(None) => Ok(()),
            Ok(Some(permit)) => {
                let mut held = charge.held.lock();
                match held.as_mut() {
                    Some(held) => held.merge(permit),
                    None => *held = Some(permit),
                }
                Ok(())
            }
            Err(refusal) => {
                charge.refused.lock().get_or_insert_with(|| refusal.clone());
                Err(refusal)
            }
        }
    }

    /// Checks an answer estimated at `bytes` against `limits.max_answer_bytes`, then
    /// charges it (times `inflation`, what building it costs beyond its size).
    pub fn charge_answer(&self, bytes: u64, inflation: u64) -> Result<(), Exhausted> {
        let max = self.0.budget.max_answer_bytes;
        if bytes > max {
            return Err(Exhausted::Answer { bytes, max });
        }
        self.charge(usize::try_from(bytes.saturating_mul(inflation)).unwrap_or(usize::MAX))
    }

    /// Why a charge of this call was refused, if one was.
    pub fn refusal(&self) -> Option<Exhausted> {
        self.0.refused.lock().clone()
    }
}

/// A response carrying a refusal in the transport's own words.
pub trait Refusal: Sized {
    fn refusal(exhausted: &Exhausted) -> http::Response<Self>;
}

impl Refusal for tonic::body::Body {
    fn refusal(exhausted: &Exhausted) -> http::Response<Self> {
        tonic::Status::resource_exhausted(exhausted.to_string()).into_http()
    }
}

impl Refusal for axum::body::Body {
    fn refusal(exhausted: &Exhausted) -> http::Response<Self> {
        use axum::response::IntoResponse;
        (
            http::StatusCode::TOO_MANY_REQUESTS,
            axum::Json(serde_json::json!({ "error": exhausted.to_string() })),
        )
            .into_response()
    }
}

/// Charges every call of the wrapped service to `budget`.
#[derive(Clone)]
pub struct BudgetLayer {
    budget: Arc<Budget>,
    /// Bytes held per byte of body: decoding and converting a body costs a multiple of
    /// its size, measured per transport.
    inflation: usize,
    /// Paths whose calls charge their own bytes (long-lived streams).
    self_charging: fn(&str) -> bool,
}

impl BudgetLayer {
    pub fn new(budget: Arc<Budget>, inflation: usize, self_charging: fn(&str) -> bool) -> Self {
        BudgetLayer {
            budget,
            inflation,
            self_charging,
        }
    }
}

impl<S> Layer<S> for BudgetLayer {
    type Service = BudgetService<S>;
    fn layer(&self, inner: S) -> BudgetService<S> {
        BudgetService {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct BudgetService<S> {
    inner: S,
    layer: BudgetLayer,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for BudgetService<S>
where
    S: Service<http::Request<Charged<ReqBody>>, Response = http::Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Refusal + Send + 'static,
{
    type Response = http::Response<Held<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        let refuse = |exhausted: Exhausted| -> Self::Future {
            tracing::warn!(refusal = %exhausted, "call refused by the in-flight budget");
            let response = ResBody::refusal(&exhausted).map(|body| Held {
                inner: body,
                _charge: None,
            });
            Box::pin(std::future::ready(Ok(response)))
        };
        let layer = &self.layer;
        let call = match layer.budget.try_call() {
            Ok(call) => call,
            Err(exhausted) => return refuse(exhausted),
        };
        let charge = CallBudget(Arc::new(Charge {
            budget: Arc::clone(&layer.budget),
            held: Mutex::new(None),
            refused: Mutex::new(None),
            _call: call,
        }));
        let counted = !(layer.self_charging)(request.uri().path());
        // A declared length is charged whole before anything is read; a body without
        // one (chunked, or gRPC frames) is charged frame by frame as it arrives.
        let declared = request
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|length| length.to_str().ok()?.parse::<usize>().ok());
        let by_frame = match declared {
            Some(length) if counted => {
                if let Err(exhausted) = charge.charge(length.saturating_mul(layer.inflation)) {
                    return refuse(exhausted);
                }
                false
            }
            _ => counted,
        };
        request.extensions_mut().insert(charge.clone());
        let request = request.map(|body| Charged {
            inner: body,
            charge: by_frame.then(|| charge.clone()),
            inflation: layer.inflation,
        });
        // The clone that was made ready is the one called (tower's usual swap).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let response = inner.call(request).await?;
            Ok(response.map(|body| Held {
                inner: body,
                _charge: Some(charge),
            }))
        })
    }
}

/// A request body charged to its call as its frames arrive.
pub struct Charged<B> {
    inner: B,
    charge: Option<CallBudget>,
    inflation: usize,
}

impl<B> Body for Charged<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<tower::BoxError>,
{
    type Data = Bytes;
    type Error = tower::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            Poll::Ready(Some(Err(error))) => return Poll::Ready(Some(Err(error.into()))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => return Poll::Pending,
        };
        if let (Some(charge), Some(data)) = (&this.charge, frame.data_ref())
            && let Err(exhausted) = charge.charge(data.len().saturating_mul(this.inflation))
        {
            // tonic finds a Status in the error's chain and answers with its code.
            return Poll::Ready(Some(Err(Box::new(tonic::Status::resource_exhausted(
                exhausted.to_string(),
            )))));
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that holds its call's charge until the connection has taken it all
/// (or dropped it).
pub struct Held<B> {
    inner: B,
    _charge: Option<CallBudget>,
}

impl<B: Default> Default for Held<B> {
    fn default() -> Self {
        Held {
            inner: B::default(),
            _charge: None,
        }
    }
}

impl<B> Body for Held<B>
where
    B: Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(budget: &Arc<Budget>) -> Result<CallBudget, Exhausted> {
        Ok(CallBudget(Arc::new(Charge {
            budget: Arc::clone(budget),
            held: Mutex::new(None),
            refused: Mutex::new(None),
            _call: budget.try_call()?,
        })))
    }

    #[test]
    fn bytes_are_held_until_the_call_ends_and_refusals_name_the_limit() {
        let budget = Arc::new(Budget::new(2, 1000, 500));
        let first = call(&budget).unwrap();
        first.charge(600).unwrap();
        first.charge(300).unwrap();
        assert_eq!(budget.bytes_in_use(), 900);
        let second = call(&budget).unwrap();
        let refused = second.charge(200).unwrap_err();
        assert_eq!(
            refused,
            Exhausted::Bytes {
                asked: 200,
                free: 100,
                max: 1000
            }
        );
        assert!(refused.to_string().contains("limits.inflight_bytes"));
        assert_eq!(second.refusal(), Some(refused));
        assert!(matches!(call(&budget), Err(Exhausted::Calls { max: 2 })));
        drop(first);
        assert_eq!(budget.bytes_in_use(), 0);
        second.charge(200).unwrap();
        assert!(call(&budget).is_ok());
    }

    #[test]
    fn an_answer_over_the_cap_is_refused_before_it_is_charged() {
        let budget = Arc::new(Budget::new(2, 1000, 500));
        let call = call(&budget).unwrap();
        let refused = call.charge_answer(501, 1).unwrap_err();
        assert!(refused.to_string().contains("limits.max_answer_bytes"));
        assert_eq!(budget.bytes_in_use(), 0);
        call.charge_answer(400, 2).unwrap();
        assert_eq!(budget.bytes_in_use(), 800);
    }
}
