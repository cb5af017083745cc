//! The load generator behind `streamscore loadtest` and the scoring bench: drives
//! `Score`, `ScoreCandidates`, `Recommend` or `IngestBatch` against a running server at a fixed
//! concurrency (closed loop) or a fixed total rate (each worker paced), for a bounded
//! time, and reports requests/s, latency percentiles and errors. Requests are built
//! from a seeded simulated shop, so a server fed the same simulation knows their
//! entities.

use std::time::{Duration, Instant};

use crate::api::client::{ClientOptions, Connection};

use crate::api::pb::{self, ingest_client::IngestClient, scoring_client::ScoringClient};
use crate::api::v2pb::{
    self, grpc_inference_service_client::GrpcInferenceServiceClient,
    model_infer_request::InferInputTensor,
};
use crate::events::RawEvent;
use crate::simulate::{SimConfig, Simulator};
use crate::time::now_ms;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Score,
    Candidates,
    Ingest,
    /// One payment through the Open Inference Protocol's `ModelInfer` over gRPC.
    V2,
    /// One payment through the protocol's REST `infer` (the URL is the REST listener's).
    Rest,
    /// `Recommend` for a user with one product in the cart (the model is the rule set).
    Recommend,
}

impl std::str::FromStr for Call {
    type Err = String;

    fn from_str(text: &str) -> Result<Call, String> {
        match text {
            "score" => Ok(Call::Score),
            "candidates" => Ok(Call::Candidates),
            "ingest" => Ok(Call::Ingest),
            "v2" => Ok(Call::V2),
            "rest" => Ok(Call::Rest),
            "recommend" => Ok(Call::Recommend),
            other => Err(format!(
                "unknown call '{other}' (known: score, candidates, ingest, v2, rest, recommend)"
            )),
        }
    }
}

#[derive(Debug, Clone)]
pub struct LoadSpec {
    pub call: Call,
    /// Requests in flight at once (one worker each).
    pub concurrency: usize,
    /// HTTP/2 connections the workers share (a connection carries many calls at once,
    /// as a service's client pool would).
    pub connections: usize,
    pub duration: Duration,
    /// Total requests per second over all workers; `None` = as fast as answered.
    pub rate: Option<f64>,
    pub model: String,
    /// Candidates per `ScoreCandidates` call, events per `IngestBatch` call.
    pub batch: usize,
    /// The simulation the requests are drawn from.
    pub sim: SimConfig,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LoadReport {
    pub requests: u64,
    pub errors: u64,
    /// The first error seen, to say what went wrong.
    pub first_error: Option<String>,
    pub seconds: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl LoadReport {
    pub fn per_second(&self) -> f64 {
        self.requests as f64 / self.seconds.max(1e-9)
    }

    /// The report as the benches' markdown table row after the `labels` cells
    /// (requests/s, p50, p99, p99.9, errors), then the first error on its own line.
    pub fn table_row(&self, labels: &[&str]) -> String {
        let mut row = format!(
            "| {} | {:.0} | {} us | {} us | {} us | {} |",
            labels.join(" | "),
            self.per_second(),
            self.p50_us,
            self.p99_us,
            self.p999_us,
            self.errors
        );
        if let Some(error) = &self.first_error {
            row.push_str(&format!("\nfirst error: {error}"));
        }
        row
    }
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} requests in {:.1} s = {:.0}/s; latency p50 {} us, p99 {} us, p99.9 {} us, max {} us; {} errors",
            self.requests,
            self.seconds,
            self.per_second(),
            self.p50_us,
            self.p99_us,
            self.p999_us,
            self.max_us,
            self.errors
        )?;
        if let Some(error) = &self.first_error {
            write!(f, " (first: {error})")?;
        }
        Ok(())
    }
}

/// Payments and page views of the simulation, to draw requests from.
struct Pool {
    payments: Vec<RawEvent>,
    products: Vec<String>,
    users: Vec<String>,
    events: Vec<RawEvent>,
}

fn pool(sim: &SimConfig, call: Call) -> Pool {
    let events: Vec<RawEvent> = Simulator::new(sim.clone()).take(60_000).collect();
    let payments = events
        .iter()
        .filter(|e| e.event_type == "payment")
        .cloned()
        .collect();
    let mut products: Vec<String> = events
        .iter()
        .filter_map(|e| e.entities.get("product").cloned())
        .collect();
    products.sort();
    products.dedup();
    let mut users: Vec<String> = events
        .iter()
        .filter_map(|e| e.entities.get("user").cloned())
        .collect();
    users.sort();
    users.dedup();
    Pool {
        payments,
        products,
        users,
        events: if call == Call::Ingest {
            events
        } else {
            Vec::new()
        },
    }
}

enum Client {
    Scoring(ScoringClient<Connection>),
    Ingest(IngestClient<Connection>),
    Inference(GrpcInferenceServiceClient<Connection>),
    Rest(rest::RestClient),
}

/// A payment as the fraud model's V2 input tensors: (name, BYTES values) and (name,
/// FP64 value) per field.
pub fn payment_tensors(event: &RawEvent) -> Vec<InferInputTensor> {
    let bytes = |name: &str, value: &str| InferInputTensor {
        name: name.to_string(),
        datatype: "BYTES".into(),
        shape: vec![1],
        contents: Some(v2pb::InferTensorContents {
            bytes_contents: vec![bytes::Bytes::copy_from_slice(value.as_bytes())],
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut tensors: Vec<InferInputTensor> = event
        .entities
        .iter()
        .chain(&event.strings)
        .map(|(name, value)| bytes(name, value))
        .collect();
    tensors.extend(event.numbers.iter().map(|(name, value)| InferInputTensor {
        name: name.clone(),
        datatype: "FP64".into(),
        shape: vec![1],
        contents: Some(v2pb::InferTensorContents {
            fp64_contents: vec![*value],
            ..Default::default()
        }),
        ..Default::default()
    }));
    tensors
}

/// One request of the spec's kind; `n` picks what it is about.
async fn send(
    client: &mut Client,
    spec: &LoadSpec,
    pool: &Pool,
    n: usize,
    worker: usize,
) -> Result<(), tonic::Status> {
    match client {
        Client::Scoring(scoring) if spec.call == Call::Score => {
            let mut event = pool.payments[n % pool.payments.len().max(1)].clone();
            event.event_id.clear();
            event.event_time_ms = now_ms();
            scoring
                .score(pb::ScoreRequest {
                    model: spec.model.clone(),
                    event: Some(event.into()),
                    include_features: false,
                    record: false,
                    reasons: None,
                })
                .await
                .map(|_| ())
        }
        Client::Scoring(scoring) if spec.call == Call::Recommend => {
            let user = &pool.users[n % pool.users.len().max(1)];
            let product = &pool.products[(n * 31) % pool.products.len().max(1)];
            scoring
                .recommend(pb::RecommendRequest {
                    rules: spec.model.clone(),
                    user: user.clone(),
                    cart: vec![product.clone()],
                    top_n: 10,
                    ..Default::default()
                })
                .await
                .map(|_| ())
        }
        Client::Inference(inference) => {
            let event = &pool.payments[n % pool.payments.len().max(1)];
            inference
                .model_infer(v2pb::ModelInferRequest {
                    model_name: spec.model.clone(),
                    inputs: payment_tensors(event),
                    ..Default::default()
                })
                .await
                .map(|_| ())
        }
        Client::Rest(rest) => {
            let event = &pool.payments[n % pool.payments.len().max(1)];
            let body = rest::payment_json(event);
            rest.post(&format!("/v2/models/{}/infer", spec.model), &body)
                .await
                .map_err(tonic::Status::unknown)
        }
        Client::Scoring(scoring) => {
            let user = &pool.users[n % pool.users.len().max(1)];
            let candidates = (0..spec.batch)
                .map(|k| pb::Candidate {
                    product: pool.products[(n * 31 + k) % pool.products.len().max(1)].clone(),
                    numbers: Default::default(),
                })
                .collect();
            scoring
                .score_candidates(pb::ScoreCandidatesRequest {
                    model: spec.model.clone(),
                    context: Some(pb::Event {
                        entities: [("user".to_string(), user.clone())].into(),
                        ..Default::default()
                    }),
                    candidates,
                    top_n: 10,
                })
                .await
                .map(|_| ())
        }
        Client::Ingest(ingest) => {
            let now = now_ms();
            let events = (0..spec.batch)
                .map(|k| {
                    let mut event =
                        pool.events[(n * spec.batch + k) % pool.events.len().max(1)].clone();
                    // Fresh ids and times: a repeat would only be acked as a duplicate.
                    event.event_id = format!("load-{worker}-{n}-{k}");
                    event.event_time_ms = now;
                    event.into()
                })
                .collect();
            ingest
                .ingest_batch(pb::IngestRequest {
                    batch_id: n as u64,
                    events,
                })
                .await
                .map(|_| ())
        }
    }
}

fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((sorted.len() as f64) * q).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Runs the load against `url` and reports. Workers share `spec.connections`
/// connections round-robin.
pub async fn run(
    url: &str,
    options: &ClientOptions,
    spec: &LoadSpec,
) -> Result<LoadReport, crate::api::client::ConnectError> {
    let pool = std::sync::Arc::new(pool(&spec.sim, spec.call));
    let mut channels = Vec::new();
    // REST workers each keep their own HTTP/1.1 connection.
    if spec.call != Call::Rest {
        for _ in 0..spec.connections.clamp(1, spec.concurrency.max(1)) {
            channels.push(crate::api::client::connect_with(url, options).await?);
        }
    }
    let mut workers = Vec::new();
    let started = Instant::now();
    let deadline = started + spec.duration;
    for worker in 0..spec.concurrency.max(1) {
        let channel = channels.get(worker % channels.len().max(1)).cloned();
        let spec = spec.clone();
        let pool = std::sync::Arc::clone(&pool);
        let rest_target = url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        workers.push(tokio::spawn(async move {
            let mut client = match (spec.call, channel) {
                (Call::Rest, _) | (_, None) => Client::Rest(rest::RestClient::new(rest_target)),
                (Call::Ingest, Some(channel)) => Client::Ingest(IngestClient::new(channel)),
                (Call::V2, Some(channel)) => {
                    Client::Inference(GrpcInferenceServiceClient::new(channel))
                }
                (_, Some(channel)) => Client::Scoring(ScoringClient::new(channel)),
            };
            let mut pacing = spec.rate.map(|rate| {
                let per_worker = rate / spec.concurrency.max(1) as f64;
                let mut ticks =
                    tokio::time::interval(Duration::from_secs_f64(1.0 / per_worker.max(1e-3)));
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                ticks
            });
            let mut latencies = Vec::new();
            let (mut errors, mut first_error) = (0u64, None);
            let mut n = worker * 7919;
            while Instant::now() < deadline {
                if let Some(ticks) = &mut pacing {
                    ticks.tick().await;
                }
                let sent = Instant::now();
                match send(&mut client, &spec, &pool, n, worker).await {
                    Ok(()) => latencies.push(sent.elapsed().as_micros() as u64),
                    Err(status) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| status.to_string());
                    }
                }
                n += 1;
            }
            (latencies, errors, first_error)
        }));
    }
    let mut latencies = Vec::new();
    let (mut errors, mut first_error) = (0, None);
    for worker in workers {
        if let Ok((mine, failed, first)) = worker.await {
            latencies.extend(mine);
            errors += failed;
            if first_error.is_none() {
                first_error = first;
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    Ok(LoadReport {
        requests: latencies.len() as u64,
        errors,
        first_error,
        seconds,
        p50_us: percentile(&latencies, 0.5),
        p99_us: percentile(&latencies, 0.99),
        p999_us: percentile(&latencies, 0.999),
        max_us: latencies.last().copied().unwrap_or(0),
    })
}

mod rest {
    //! A minimal keep-alive HTTP/1.1 client for the REST load: one connection per
    //! worker, a request at a time, reconnecting after an error.

    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufStream};
    use tokio::net::TcpStream;

    use crate::events::RawEvent;

    pub struct RestClient {
        target: String,
        stream: Option<BufStream<TcpStream>>,
    }

    /// A payment as a V2 JSON infer request, one row.
    pub fn payment_json(event: &RawEvent) -> String {
        let mut inputs: Vec<serde_json::Value> = event
            .entities
            .iter()
            .chain(&event.strings)
            .map(|(name, value)| {
                serde_json::json!({ "name": name, "datatype": "BYTES", "shape": [1], "data": [value] })
            })
            .collect();
        inputs.extend(event.numbers.iter().map(|(name, value)| {
            serde_json::json!({ "name": name, "datatype": "FP64", "shape": [1], "data": [value] })
        }));
        serde_json::json!({ "inputs": inputs }).to_string()
    }

    impl RestClient {
        pub fn new(target: String) -> RestClient {
            RestClient {
                target,
                stream: None,
            }
        }

        /// POSTs `body` to `path`; an answer other than 200 is an error.
        pub async fn post(&mut self, path: &str, body: &str) -> Result<(), String> {
            let result = self.exchange(path, body).await;
            if result.is_err() {
                self.stream = None;
            }
            result
        }

        async fn exchange(&mut self, path: &str, body: &str) -> Result<(), String> {
            if self.stream.is_none() {
                let stream = TcpStream::connect(&self.target)
                    .await
                    .map_err(|e| format!("connect {}: {e}", self.target))?;
                let _ = stream.set_nodelay(true);
                self.stream = Some(BufStream::new(stream));
            }
            let Some(stream) = self.stream.as_mut() else {
                return Err("no connection".into());
            };
            let head = format!(
                "POST {path} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                self.target,
                body.len()
            );
            let io = |e: std::io::Error| e.to_string();
            stream.write_all(head.as_bytes()).await.map_err(io)?;
            stream.write_all(body.as_bytes()).await.map_err(io)?;
            stream.flush().await.map_err(io)?;
            let mut line = String::new();
            stream.read_line(&mut line).await.map_err(io)?;
            let status = line.split_whitespace().nth(1).unwrap_or("").to_string();
            let mut length = 0usize;
            loop {
                line.clear();
                if stream.read_line(&mut line).await.map_err(io)? == 0 {
                    return Err("connection closed in the headers".into());
                }
                let header = line.trim_end();
                if header.is_empty() {
                    break;
                }
                if let Some((name, value)) = header.split_once(':')
                    && name.eq_ignore_ascii_case("content-length")
                {
                    length = value.trim().parse().map_err(|_| "bad content-length")?;
                }
            }
            let mut answer = vec![0u8; length];
            stream.read_exact(&mut answer).await.map_err(io)?;
            if status == "200" {
                Ok(())
            } else {
                Err(format!(
                    "HTTP {status}: {}",
                    String::from_utf8_lossy(&answer)
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_take_the_rank_above() {
        let sorted: Vec<u64> = (1..=1000).collect();
        assert_eq!(percentile(&sorted, 0.5), 500);
        assert_eq!(percentile(&sorted, 0.99), 990);
        assert_eq!(percentile(&sorted, 0.999), 999);
        assert_eq!(percentile(&[], 0.5), 0);
    }
}
