//! Kafka in and out (cargo feature `kafka`, librdkafka through `rdkafka`).
//!
//! The source ([`source::run`]) is a consumer group over `kafka.topics` whose records
//! (one event each, JSON or protobuf) go through the same validation, dedup, lateness
//! and engine path as `IngestBatch`. Offsets follow durability: a batch's offsets are
//! committed only after its events are durable in the local log and its refused
//! records are on the dead-letter topic. A crash between the two redelivers the batch,
//! and the engine's dedup (by event id, within `ingest.dedup_horizon`) turns the
//! redelivery into duplicates: every record is applied once.
//!
//! The scoring stream ([`scoring::run`]) reads payments, scores them like `Score` and
//! writes decisions inside Kafka transactions together with the input offsets.

pub mod align;
pub mod batch;
pub mod commits;
pub mod dead_letter;
pub mod decode;
pub mod produce;
pub mod resume;
pub mod scoring;
pub mod serve;
pub mod source;
pub mod transaction;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

use crate::config::KafkaSettings;
use crate::store::StoreError;

pub use source::run;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("kafka source: {0}")]
    Store(#[from] StoreError),
    #[error("kafka source: cannot start its reader thread: {0}")]
    Thread(std::io::Error),
    #[error("kafka source: its reader thread panicked")]
    ReaderPanicked,
}

/// A poisoned lock only means another thread panicked while holding it; the maps and
/// lists behind ours are whole after every statement.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// librdkafka postpones a partition's next fetch by `fetch.queue.backoff.ms` (1 s by
/// default) whenever its local queue is over the prefetch thresholds. Reading a
/// backlog, the queue is over them all the time, and the source stood still for half
/// a second at a time: `cargo bench --features kafka --bench kafka_load` read 135-140k
/// events/s with the default, 200-255k with 10 ms. Our consumers use 10 ms unless
/// `kafka.client` or `kafka.consumer` says otherwise; `kafka.consumer` goes to our
/// consumers only.
pub(crate) fn consumer_config(settings: &KafkaSettings) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &settings.brokers);
    config.set(FETCH_QUEUE_BACKOFF, "10");
    for (key, value) in settings.client.iter().chain(&settings.consumer) {
        config.set(key, value);
    }
    config
}

const FETCH_QUEUE_BACKOFF: &str = "fetch.queue.backoff.ms";

/// The settings every client of ours shares.
pub(crate) fn client_config(settings: &KafkaSettings) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &settings.brokers);
    for (key, value) in &settings.client {
        config.set(key, value);
    }
    config
}

/// Whether the brokers answer, as the source sees it: NOT_SERVING after librdkafka
/// reports every broker down, SERVING again at the next record or partition end.
#[derive(Debug)]
pub struct Health {
    reachable: AtomicBool,
    /// The part stopped on an error it cannot get past (the log cannot write).
    failed: AtomicBool,
    /// The part waits on something other than the brokers (the model cannot be
    /// resolved) and gets nothing done meanwhile.
    waiting: AtomicBool,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            reachable: AtomicBool::new(true),
            failed: AtomicBool::new(false),
            waiting: AtomicBool::new(false),
        }
    }
}

impl Health {
    pub fn reachable(&self) -> bool {
        self.reachable.load(Relaxed)
    }

    /// Serving: the brokers answer, and the part neither stopped on an error nor
    /// waits for something else.
    pub fn serving(&self) -> bool {
        self.reachable() && !self.failed.load(Relaxed) && !self.waiting.load(Relaxed)
    }

    /// Sets whether the part waits for something other than the brokers.
    pub fn set_waiting(&self, waiting: bool) {
        self.waiting.store(waiting, Relaxed);
    }

    pub fn fail(&self) {
        self.failed.store(true, Relaxed);
    }

    /// Asks the brokers for metadata (blocking, up to `timeout`); on an answer they
    /// are reachable again. Used while unreachable and no record comes to say so.
    pub fn probe(&self, settings: &KafkaSettings, timeout: std::time::Duration) {
        use rdkafka::consumer::Consumer as _;
        let client: Result<rdkafka::consumer::BaseConsumer, _> = client_config(settings).create();
        let answered = client.is_ok_and(|client| client.fetch_metadata(None, timeout).is_ok());
        if answered {
            self.received();
        }
    }

    fn received(&self) {
        if !self.reachable.swap(true, Relaxed) {
            tracing::info!("kafka brokers reachable again");
        }
    }

    fn broker_error(&self, error: &KafkaError, reason: &str) {
        let down = matches!(
            error.rdkafka_error_code(),
            Some(RDKafkaErrorCode::AllBrokersDown | RDKafkaErrorCode::BrokerTransportFailure)
        );
        if down && self.reachable.swap(false, Relaxed) {
            tracing::warn!(%error, reason, "kafka brokers unreachable; librdkafka retries with backoff");
        }
    }
}

/// What the source did since start, for metrics and tests.
#[derive(Debug, Default)]
pub struct SourceCounters {
    pub records: AtomicU64,
    pub applied: AtomicU64,
    pub duplicates: AtomicU64,
    pub invalid: AtomicU64,
    pub late: AtomicU64,
    pub undecodable: AtomicU64,
    pub buffered: AtomicU64,
    /// Records received for a partition no longer ours (left to its new owner).
    pub not_ours: AtomicU64,
    pub health: std::sync::Arc<Health>,
    /// Per partition: records behind its end, as librdkafka last reported.
    lag: Mutex<BTreeMap<(String, i32), i64>>,
}

impl SourceCounters {
    fn count(
        &self,
        records: usize,
        accepted: u32,
        duplicates: u32,
        refused: &[(&rdkafka::message::OwnedMessage, dead_letter::Refused)],
    ) {
        self.records.fetch_add(records as u64, Relaxed);
        self.applied.fetch_add(u64::from(accepted), Relaxed);
        self.duplicates.fetch_add(u64::from(duplicates), Relaxed);
        for (_, why) in refused {
            let counter = match why.kind {
                "late" => &self.late,
                "invalid" => &self.invalid,
                _ => &self.undecodable,
            };
            counter.fetch_add(1, Relaxed);
        }
    }

    fn not_ours(&self) {
        self.not_ours.fetch_add(1, Relaxed);
    }

    fn set_buffered(&self, buffered: usize) {
        self.buffered.store(buffered as u64, Relaxed);
    }

    fn set_lag(&self, topic: &str, partition: i32, lag: i64) {
        self.lag
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert((topic.to_string(), partition), lag);
    }

    /// The source's metrics in Prometheus text format.
    pub fn prometheus(&self) -> String {
        let mut out = String::new();
        for (name, help, value) in [
            ("records", "records received since start", &self.records),
            (
                "applied",
                "records applied to the features since start",
                &self.applied,
            ),
            (
                "duplicates",
                "records already applied (redelivered) since start",
                &self.duplicates,
            ),
            (
                "not_ours",
                "records received after their partition was taken from us, left to its new owner, since start",
                &self.not_ours,
            ),
        ] {
            let name = format!("streamscore_kafka_{name}");
            crate::prometheus_text::single(&mut out, &name, "counter", help, value.load(Relaxed));
        }
        let dead = "streamscore_kafka_dead_lettered";
        crate::prometheus_text::header(
            &mut out,
            dead,
            "counter",
            "records written to the dead-letter topic since start, by why",
        );
        for (kind, value) in [
            ("invalid", &self.invalid),
            ("late", &self.late),
            ("undecodable", &self.undecodable),
        ] {
            crate::prometheus_text::sample(&mut out, dead, &[("kind", kind)], value.load(Relaxed));
        }
        crate::prometheus_text::single(
            &mut out,
            "streamscore_kafka_buffered",
            "gauge",
            "records held back to align partitions in event time",
            self.buffered.load(Relaxed),
        );
        crate::prometheus_text::single(
            &mut out,
            "streamscore_kafka_brokers_reachable",
            "gauge",
            "1 while the brokers answer",
            u8::from(self.health.reachable()),
        );
        let lag = "streamscore_kafka_consumer_lag";
        crate::prometheus_text::header(
            &mut out,
            lag,
            "gauge",
            "records behind the partition's end",
        );
        let lags = self
            .lag
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for ((topic, partition), value) in lags.iter() {
            let partition = partition.to_string();
            crate::prometheus_text::sample(
                &mut out,
                lag,
                &[("topic", topic), ("partition", &partition)],
                value,
            );
        }
        out
    }
}
