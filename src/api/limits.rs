//! The codes of requests refused by tonic's decoder, as the API promises them: a message
//! over the decoding cap (tonic: OUT_OF_RANGE) is RESOURCE_EXHAUSTED, the gRPC code for
//! "too big"; bytes that are not the message (tonic: INTERNAL, "failed to decode
//! Protobuf message") are the caller's fault, INVALID_ARGUMENT. This tower layer rewrites
//! those statuses on their way out, and the streaming handler rewrites them where it
//! sees them in the request stream.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::HeaderValue;
use tonic::{Code, Status};
use tower::{Layer, Service};

fn is_size_refusal(code: Code, message: &str) -> bool {
    code == Code::OutOfRange
        && message
            .replace("%20", " ")
            .contains("message length too large")
}

fn is_decode_refusal(code: Code, message: &str) -> bool {
    code == Code::Internal
        && message
            .replace("%20", " ")
            .starts_with("failed to decode Protobuf message")
}

/// tonic's decoder refusals -> the codes the API promises.
pub fn normalise(status: Status) -> Status {
    if is_size_refusal(status.code(), status.message()) {
        Status::resource_exhausted(status.message().to_string())
    } else if is_decode_refusal(status.code(), status.message()) {
        Status::invalid_argument(status.message().to_string())
    } else {
        status
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct SizeRefusalLayer;

impl<S> Layer<S> for SizeRefusalLayer {
    type Service = SizeRefusal<S>;
    fn layer(&self, inner: S) -> SizeRefusal<S> {
        SizeRefusal { inner }
    }
}

#[derive(Debug, Clone)]
pub struct SizeRefusal<S> {
    inner: S,
}

impl<S, Request, Body> Service<Request> for SizeRefusal<S>
where
    S: Service<Request, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let response = self.inner.call(request);
        Box::pin(async move {
            let mut response = response.await?;
            let headers = response.headers_mut();
            let message = headers
                .get("grpc-message")
                .and_then(|m| m.to_str().ok())
                .unwrap_or_default();
            let rewrite = match headers.get("grpc-status").map(|code| code.as_bytes()) {
                Some(b"11") if is_size_refusal(Code::OutOfRange, message) => Some("8"),
                Some(b"13") if is_decode_refusal(Code::Internal, message) => Some("3"),
                _ => None,
            };
            if let Some(code) = rewrite {
                headers.insert("grpc-status", HeaderValue::from_static(code));
            }
            Ok(response)
        })
    }
}
