//! The Prometheus scrape endpoint: `GET /metrics` on its own HTTP port, answering what
//! a [`Render`] writes at scrape time: for the embedded server the call metrics of
//! [`super::metrics`] plus gauges read from the store and the registry ([`Sources`]),
//! for the scaled-out roles their own. A few lines of HTTP/1.1 (one request per connection) instead of a
//! web framework: a scraper needs nothing more.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::metrics::Metrics;
use crate::registry::Registry;
use crate::store::FeatureStore;

/// More metrics, already in Prometheus text (the Kafka parts').
pub type Extra = Arc<dyn Fn() -> String + Send + Sync>;

/// Writes a whole scrape in Prometheus text.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// What a scrape reads besides the call metrics.
#[derive(Clone)]
pub struct Sources {
    pub metrics: Arc<Metrics>,
    pub store: Arc<FeatureStore>,
    pub registry: Arc<Registry>,
    pub extra: Vec<Extra>,
}

impl Sources {
    /// This server's scrape.
    pub fn into_render(self) -> Render {
        Arc::new(move || self.render())
    }

    pub fn render(&self) -> String {
        let counters = self.store.counters();
        let entities: usize = self
            .store
            .with_engine(|engine| engine.entity_counts().iter().map(|(_, n)| *n).sum());
        let catalog = self.registry.catalog();
        let mut text = self.metrics.render(&[
            (
                "streamscore_events_applied",
                "events applied to the features since start",
                counters.applied as f64,
            ),
            (
                "streamscore_events_duplicate",
                "events acknowledged as duplicates since start",
                counters.duplicates as f64,
            ),
            (
                "streamscore_events_late",
                "events refused as too late since start",
                counters.late as f64,
            ),
            (
                "streamscore_events_invalid",
                "events refused as invalid since start",
                self.store.invalid_events() as f64,
            ),
            (
                "streamscore_scores_non_finite",
                "scores refused since start because the model gave NaN or an infinity",
                crate::scoring::NON_FINITE_SCORES.load(std::sync::atomic::Ordering::Relaxed) as f64,
            ),
            (
                "streamscore_log_commits",
                "group commits of the event log since start (a write and its fsyncs each)",
                self.store.log_commits() as f64,
            ),
            (
                "streamscore_entities",
                "entities held in memory",
                entities as f64,
            ),
            (
                "streamscore_models_loaded",
                "model versions in the registry",
                catalog.models().len() as f64,
            ),
            (
                "streamscore_model_files_refused",
                "model artifact files refused since start",
                self.registry.refused() as f64,
            ),
            (
                "streamscore_model_swaps",
                "changes of the version a model name serves, since start",
                self.registry.swaps() as f64,
            ),
        ]);
        for extra in &self.extra {
            text.push_str(&extra());
        }
        text
    }
}

async fn answer(
    mut stream: TcpStream,
    render: Render,
    renders: Arc<tokio::sync::Semaphore>,
) -> std::io::Result<()> {
    let mut request = Vec::with_capacity(512);
    let mut buffer = [0u8; 512];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 8192 {
        let read = stream.read(&mut buffer).await?;
        if read == 0 {
            break;
        }
        request.extend_from_slice(&buffer[..read]);
    }
    let line = String::from_utf8_lossy(&request);
    let (status, body) = if line.starts_with("GET /metrics ") {
        // A render walks every shard's lock (about 100k of them at 1M entities): on a
        // blocking thread, one at a time, so scrapes never hold the request runtime and
        // many at once cost no more than one after another.
        let _one_at_a_time = renders
            .acquire_owned()
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let body = tokio::task::spawn_blocking(move || render())
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        ("200 OK", body)
    } else {
        ("404 Not Found", "try GET /metrics\n".to_string())
    };
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

/// A scrape that has not sent its request and read the answer by then is dropped, so a
/// half-sent request cannot hold a connection open forever.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);
/// Accept errors (EMFILE when out of descriptors) are retried after a pause that doubles
/// up to this, instead of spinning and logging in a tight loop.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// Serves scrapes on `listener` until `shutdown` resolves.
pub async fn serve(listener: TcpListener, render: Render, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    let mut backoff = Duration::ZERO;
    let renders = Arc::new(tokio::sync::Semaphore::new(1));
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    backoff = Duration::ZERO;
                    let render = Arc::clone(&render);
                    let renders = Arc::clone(&renders);
                    tokio::spawn(async move {
                        match tokio::time::timeout(SCRAPE_TIMEOUT, answer(stream, render, renders)).await {
                            Ok(Ok(())) => {}
                            Ok(Err(error)) => tracing::debug!(%error, "metrics scrape failed"),
                            Err(_) => tracing::debug!("metrics scrape timed out"),
                        }
                    });
                }
                Err(error) => {
                    backoff = (backoff * 2).clamp(Duration::from_millis(10), MAX_ACCEPT_BACKOFF);
                    tracing::warn!(%error, backoff_ms = backoff.as_millis() as u64, "metrics listener accept failed; pausing");
                    tokio::select! {
                        _ = &mut shutdown => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                }
            },
        }
    }
}
