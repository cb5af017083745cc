//! Message-size refusals as RESOURCE_EXHAUSTED. tonic reports a message over the
//! decoding cap as OUT_OF_RANGE; the API promises RESOURCE_EXHAUSTED (the gRPC code for
//! "too big"), so this tower layer rewrites that one status on its way out, and the
//! streaming handler rewrites it where it sees it in the request stream.

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

/// OUT_OF_RANGE "message too large" from tonic's decoder -> RESOURCE_EXHAUSTED.
pub fn normalise(status: Status) -> Status {
    if is_size_refusal(status.code(), status.message()) {
        Status::resource_exhausted(status.message().to_string())
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
            let refused = headers
                .get("grpc-status")
                .is_some_and(|code| code.as_bytes() == b"11")
                && headers
                    .get("grpc-message")
                    .and_then(|m| m.to_str().ok())
                    .is_some_and(|m| is_size_refusal(Code::OutOfRange, m));
            if refused {
                headers.insert("grpc-status", HeaderValue::from_static("8"));
            }
            Ok(response)
        })
    }
}
