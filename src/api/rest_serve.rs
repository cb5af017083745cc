//! The REST listener's accept loop: hyper's HTTP/1 driven by hand, because `axum::serve`
//! gives hyper no timer (a client that never finishes its headers held its connection,
//! and a descriptor, forever) and no connection cap.
//!
//! - At most `max_connections` connections at once (and never more than a quarter of
//!   the process's open-file limit, so the log, snapshots and gRPC keep theirs); the
//!   loop waits for a free slot before it accepts (mini-redis's pattern), so the extra
//!   callers wait in the kernel's backlog and cost no descriptor.
//! - Headers must be complete within `header_timeout`, which also closes a keep-alive
//!   connection idle that long (hyper's header timer runs while it waits).
//! - A request's body read and answer must finish within `request_timeout` (408).
//! - A request with both Content-Length and Transfer-Encoding is refused (400) and its
//!   connection closed: behind a proxy that frames by the other header, that shape
//!   smuggles a second request. hyper drops the length before any service sees it, so
//!   the connection's bytes are watched for it (see `framing.rs`).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::response::IntoResponse;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

use super::framing::Watched;
use crate::config::HttpSettings;

/// Accept errors (out of descriptors) pause the loop this long instead of spinning.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// How the REST door treats its connections.
#[derive(Debug, Clone, Copy)]
pub struct Doors {
    pub header_timeout: Duration,
    pub request_timeout: Duration,
    pub max_connections: usize,
}

impl Doors {
    /// The settings' limits, the connection cap lowered to a quarter of the open-file
    /// limit.
    pub fn from_settings(http: &HttpSettings) -> Doors {
        Doors {
            header_timeout: http.header_timeout.as_duration(),
            request_timeout: http.request_timeout.as_duration(),
            max_connections: http
                .max_connections
                .min(open_file_limit().map_or(usize::MAX, |limit| limit / 4))
                .max(1),
        }
    }
}

/// The soft limit on open files, when it can be read.
fn open_file_limit() -> Option<usize> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only into the struct it is given.
    let read = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    (read == 0 && limit.rlim_cur != libc::RLIM_INFINITY)
        .then(|| usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX))
}

/// Serves `router` on `listener` until `shutdown` resolves; open connections are then
/// asked to finish their request in flight and close.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    doors: Doors,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(doors.max_connections));
    let (closing, closed) = tokio::sync::watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "REST accept failed; pausing the accept loop");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot turn off Nagle's algorithm");
        }
        let router = router.clone();
        let mut closed = closed.clone();
        let ambiguous = Arc::new(AtomicBool::new(false));
        let stream = Watched::new(stream, Arc::clone(&ambiguous));
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let framing_ambiguous = ambiguous.load(Ordering::Acquire);
                answer(
                    router.clone(),
                    doors.request_timeout,
                    framing_ambiguous,
                    request,
                )
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(doors.header_timeout)
                .max_buf_size(64 << 10)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            let served = tokio::select! {
                served = connection.as_mut() => served,
                () = async { let _ = closed.wait_for(|closing| *closing).await; } => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = served {
                tracing::debug!(%peer, %error, "REST connection ended");
            }
            drop(slot);
        });
    }
    let _ = closing.send(true);
    Ok(())
}

/// One request: refused when its connection carried an ambiguous framing, else routed
/// within the time allowed.
async fn answer(
    router: Router,
    timeout: Duration,
    framing_ambiguous: bool,
    request: http::Request<hyper::body::Incoming>,
) -> Result<axum::response::Response, std::convert::Infallible> {
    if framing_ambiguous {
        return Ok(closing(
            http::StatusCode::BAD_REQUEST,
            "a request may carry Content-Length or Transfer-Encoding, not both (RFC 9112 6.1); this connection is closed".into(),
        ));
    }
    let request = request.map(axum::body::Body::new);
    match tokio::time::timeout(timeout, router.oneshot(request)).await {
        Ok(response) => response,
        Err(_) => Ok(closing(
            http::StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request's body and answer took longer than http.request_timeout ({} ms)",
                timeout.as_millis()
            ),
        )),
    }
}

/// A JSON error answer after which the connection is closed.
fn closing(status: http::StatusCode, error: String) -> axum::response::Response {
    let mut response = (status, axum::Json(serde_json::json!({ "error": error }))).into_response();
    response.headers_mut().insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
    response
}
