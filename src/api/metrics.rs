//! Prometheus metrics, collected in one tower layer around every gRPC call: requests and
//! latency per method and status, and, for scoring calls, per model and decision (the
//! handler leaves a [`ScoredBy`] in the response's extensions). Gauges that belong to
//! the store and the registry (events, entities, swaps) are read when scraped.
//!
//! A small registry of our own rather than the `metrics` crate: that one records into a
//! process-wide recorder, and tests run several servers in one process.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use parking_lot::Mutex;
use tower::{Layer, Service};

use super::pb;

/// Which model answered a scoring call, and its decision (for `Score`).
#[derive(Debug, Clone)]
pub struct ScoredBy {
    pub model: String,
    pub decision: Option<pb::Decision>,
}

/// Latency buckets in seconds: 50 us to 1 s.
const BUCKETS: [f64; 14] = [
    0.00005, 0.0001, 0.00017, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
    1.0,
];

#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        if let Some(bucket) = BUCKETS.iter().position(|b| seconds <= *b) {
            self.counts[bucket] += 1;
        }
        self.count += 1;
        self.sum += seconds;
    }
}

type Labels = Vec<(&'static str, String)>;

#[derive(Debug, Default)]
struct Series {
    counters: BTreeMap<(&'static str, Labels), u64>,
    histograms: BTreeMap<(&'static str, Labels), Histogram>,
    gauges: BTreeMap<(&'static str, Labels), f64>,
}

/// Counters and histograms of the gRPC calls, shared by the layer and the scrape.
#[derive(Debug, Default)]
pub struct Metrics {
    series: Mutex<Series>,
}

fn labels_text(labels: &Labels, extra: Option<(&str, String)>) -> String {
    let mut parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    if let Some((k, v)) = extra {
        parts.push(format!("{k}=\"{v}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

impl Metrics {
    pub fn count(&self, name: &'static str, labels: Labels) {
        *self
            .series
            .lock()
            .counters
            .entry((name, labels))
            .or_default() += 1;
    }

    pub fn observe(&self, name: &'static str, labels: Labels, seconds: f64) {
        self.series
            .lock()
            .histograms
            .entry((name, labels))
            .or_default()
            .observe(seconds);
    }

    /// Sets a labelled gauge (a value that goes up and down, like a drift measure).
    pub fn set(&self, name: &'static str, labels: Labels, value: f64) {
        self.series.lock().gauges.insert((name, labels), value);
    }

    /// The Prometheus text format of everything recorded, then `gauges`.
    pub fn render(&self, gauges: &[(&str, &str, f64)]) -> String {
        let series = self.series.lock();
        let mut out = String::new();
        let mut last = "";
        for ((name, labels), value) in &series.counters {
            if *name != last {
                let _ = writeln!(out, "# TYPE {name} counter");
                last = name;
            }
            let _ = writeln!(out, "{name}{} {value}", labels_text(labels, None));
        }
        for ((name, labels), histogram) in &series.histograms {
            if *name != last {
                let _ = writeln!(out, "# TYPE {name} histogram");
                last = name;
            }
            let mut cumulative = 0;
            for (bound, count) in BUCKETS.iter().zip(&histogram.counts) {
                cumulative += count;
                let _ = writeln!(
                    out,
                    "{name}_bucket{} {cumulative}",
                    labels_text(labels, Some(("le", bound.to_string())))
                );
            }
            let _ = writeln!(
                out,
                "{name}_bucket{} {}",
                labels_text(labels, Some(("le", "+Inf".into()))),
                histogram.count
            );
            let _ = writeln!(
                out,
                "{name}_sum{} {}",
                labels_text(labels, None),
                histogram.sum
            );
            let _ = writeln!(
                out,
                "{name}_count{} {}",
                labels_text(labels, None),
                histogram.count
            );
        }
        for ((name, labels), value) in &series.gauges {
            if *name != last {
                let _ = writeln!(out, "# TYPE {name} gauge");
                last = name;
            }
            let _ = writeln!(out, "{name}{} {value}", labels_text(labels, None));
        }
        for (name, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
        out
    }
}

/// The tower layer that times and counts every call.
#[derive(Clone)]
pub struct MetricsLayer {
    metrics: Arc<Metrics>,
}

impl MetricsLayer {
    pub fn new(metrics: Arc<Metrics>) -> MetricsLayer {
        MetricsLayer { metrics }
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MetricsService {
            inner,
            metrics: Arc::clone(&self.metrics),
        }
    }
}

#[derive(Clone)]
pub struct MetricsService<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

/// The gRPC status of a response: in the headers for an error answered at once
/// (trailers-only), otherwise OK as far as the headers tell (a streaming call's final
/// status comes later, in trailers).
fn grpc_status<B>(response: &http::Response<B>) -> &str {
    match response.headers().get("grpc-status") {
        Some(value) => match value.to_str().unwrap_or("2") {
            "0" => "OK",
            "3" => "INVALID_ARGUMENT",
            "5" => "NOT_FOUND",
            "7" => "PERMISSION_DENIED",
            "8" => "RESOURCE_EXHAUSTED",
            "9" => "FAILED_PRECONDITION",
            "13" => "INTERNAL",
            "14" => "UNAVAILABLE",
            "16" => "UNAUTHENTICATED",
            _ => "OTHER",
        },
        None => "OK",
    }
}

/// The methods served; any other path is counted as `unknown`, so a caller cannot make
/// the label set (and the memory and scrape size) grow by calling made-up paths.
const METHODS: &[&str] = &[
    "IngestStream",
    "IngestBatch",
    "GetFeatures",
    "Score",
    "ScoreCandidates",
    "ListModels",
    "GetModel",
    "LoadModel",
    "SetAlias",
    "Check",
    "Watch",
    "ServerReflectionInfo",
];

fn method_label(path: &str) -> &'static str {
    let method = path.rsplit('/').next().unwrap_or("");
    METHODS
        .iter()
        .find(|known| **known == method)
        .copied()
        .unwrap_or("unknown")
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for MetricsService<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        // The ready service handles this call; a fresh clone waits for the next one.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let metrics = Arc::clone(&self.metrics);
        let method = method_label(request.uri().path()).to_string();
        let started = Instant::now();
        Box::pin(async move {
            let response = inner.call(request).await?;
            let seconds = started.elapsed().as_secs_f64();
            let status = grpc_status(&response).to_string();
            // Configured names only (or anonymous/unauthenticated): a bounded label.
            let caller = response
                .extensions()
                .get::<super::auth::Caller>()
                .map_or_else(|| "anonymous".to_string(), |c| c.name.to_string());
            metrics.count(
                "streamscore_grpc_requests_total",
                vec![
                    ("method", method.clone()),
                    ("status", status),
                    ("caller", caller),
                ],
            );
            metrics.observe(
                "streamscore_grpc_request_seconds",
                vec![("method", method.clone())],
                seconds,
            );
            if let Some(scored) = response.extensions().get::<ScoredBy>() {
                metrics.observe(
                    "streamscore_score_seconds",
                    vec![("method", method), ("model", scored.model.clone())],
                    seconds,
                );
                if let Some(decision) = scored.decision {
                    metrics.count(
                        "streamscore_decisions_total",
                        vec![
                            ("model", scored.model.clone()),
                            (
                                "decision",
                                decision
                                    .as_str_name()
                                    .trim_start_matches("DECISION_")
                                    .to_lowercase(),
                            ),
                        ],
                    );
                }
            }
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_labels_are_bounded() {
        assert_eq!(method_label("/streamscore.v1.Scoring/Score"), "Score");
        assert_eq!(method_label("/x.Y/MadeUp"), "unknown");
        assert_eq!(
            method_label(&format!("/a/{}", "z".repeat(10_000))),
            "unknown"
        );
    }

    #[test]
    fn renders_counters_histograms_and_gauges() {
        let metrics = Metrics::default();
        metrics.count("calls_total", vec![("method", "Score".into())]);
        metrics.count("calls_total", vec![("method", "Score".into())]);
        metrics.observe("latency_seconds", vec![("method", "Score".into())], 0.0003);
        let text = metrics.render(&[("entities", "entities held", 7.0)]);
        assert!(text.contains("calls_total{method=\"Score\"} 2"), "{text}");
        assert!(text.contains("latency_seconds_bucket{method=\"Score\",le=\"0.00025\"} 0"));
        assert!(text.contains("latency_seconds_bucket{method=\"Score\",le=\"0.0005\"} 1"));
        assert!(text.contains("latency_seconds_count{method=\"Score\"} 1"));
        assert!(text.contains("entities 7"));
    }
}
