//! Server settings: one typed struct with defaults, then an optional TOML file, then
//! `STREAMSCORE__SECTION__KEY` environment variables (e.g.
//! `STREAMSCORE__INGEST__ALLOWED_LATENESS=2h`), then command-line flags. The result is
//! passed into constructors; nothing reads settings globally.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::time::{DAY_MS, HOUR_MS, MINUTE_MS, Millis};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// Where the event log and snapshots live.
    pub data_dir: PathBuf,
    /// Feature definitions file; unset = the built-in shop definitions.
    pub definitions: Option<PathBuf>,
    pub ingest: IngestSettings,
    pub log: LogSettings,
    pub snapshot: SnapshotSettings,
    pub models: ModelSettings,
    pub metrics: MetricsSettings,
    pub shutdown: ShutdownSettings,
    pub tls: TlsSettings,
    pub auth: AuthSettings,
    pub admin: AdminSettings,
    pub kafka: KafkaSettings,
    pub cluster: ClusterSettings,
    pub samples: SampleSettings,
    pub drift: DriftSettings,
    pub http: HttpSettings,
    pub limits: LimitSettings,
    /// Allow listening beyond loopback without TLS and tokens (`serve --insecure`).
    pub insecure: bool,
}

/// The REST door (the Open Inference Protocol as JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    /// REST listen address; unset = no REST listener. Loopback only without
    /// `--insecure` (no TLS on this listener).
    pub listen: Option<SocketAddr>,
    /// A connection whose request headers take longer is closed; an idle keep-alive
    /// connection too (hyper's header timer runs while it waits for the next request).
    pub header_timeout: Millis,
    /// A request whose body and answer take longer gets 408 and its connection closed.
    pub request_timeout: Millis,
    /// Most REST connections open at once (also at most a quarter of the process's
    /// open-file limit, so the log and gRPC keep descriptors); more wait to be accepted.
    pub max_connections: usize,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 8080))),
            header_timeout: Millis(10_000),
            request_timeout: Millis(30_000),
            max_connections: 256,
        }
    }
}

/// The server-wide budget for work in flight (gRPC and REST together).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitSettings {
    /// Calls in flight at once; more get RESOURCE_EXHAUSTED (REST: 429).
    pub inflight_calls: usize,
    /// Bytes the calls in flight may hold: bodies (times their decoding cost), answers
    /// being built and sent, IngestStream batches and acks in waiting. A call that does
    /// not fit gets RESOURCE_EXHAUSTED (REST: 429).
    pub inflight_bytes: usize,
    /// Largest answer one call may ask for (estimated from its rows, outputs and
    /// reasons before any work); larger asks get RESOURCE_EXHAUSTED.
    pub max_answer_bytes: u64,
}

impl Default for LimitSettings {
    fn default() -> Self {
        LimitSettings {
            inflight_calls: 1024,
            inflight_bytes: 256 << 20,
            max_answer_bytes: 16 << 20,
        }
    }
}

/// The score sample log that `streamscore skew` checks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SampleSettings {
    /// One `Score` in this many is written to `<data_dir>/scores/` (0: none).
    pub every: u64,
    /// The sample file is rotated past this size (one older file is kept).
    pub max_file_bytes: u64,
}

impl Default for SampleSettings {
    fn default() -> Self {
        SampleSettings {
            every: 100,
            max_file_bytes: 64 << 20,
        }
    }
}

/// Live features against the serving model's training data (see `scoring::drift`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DriftSettings {
    /// One `Score` in this many adds its input vector to its model's window (0: off).
    pub every: u64,
    /// Vectors per check.
    pub window: u64,
    /// A column whose live mean moved further than this many training standard
    /// deviations from its training mean is drift (logged, counted).
    pub threshold: f64,
}

impl Default for DriftSettings {
    fn default() -> Self {
        DriftSettings {
            every: 10,
            window: 500,
            threshold: 3.0,
        }
    }
}

/// What one `serve` process is in a deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ServeRole {
    /// Everything in one process: ingest, features, scoring (the default).
    #[default]
    Embedded,
    /// Routes the events topics to the entity topics and aggregates entity state into
    /// Redis Cluster (cargo feature `cluster`).
    Aggregator,
    /// Scores from the entity state in Redis Cluster; holds none itself (cargo feature
    /// `cluster`).
    Scorer,
}

/// Scale-out (cargo feature `cluster`): the role of this process and where the shared
/// state lives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterSettings {
    pub role: ServeRole,
    /// Redis Cluster nodes, `host:port` (some are enough; the rest are discovered).
    pub redis: Vec<String>,
    /// Entity topics are `<topic_prefix>.<entity type>`.
    pub topic_prefix: String,
    /// The routers' consumer group over `kafka.topics`.
    pub route_group: String,
    /// The aggregators' consumer group over the entity topics; joined as
    /// `<aggregate_group>.<state fingerprint>`, one group per set of definitions.
    pub aggregate_group: String,
    /// The router's transactional id: unique per aggregator process and kept across its
    /// restarts (a restarted router fences its old self). Empty (the default): the
    /// route group and an instance id kept in the data dir, which the role holds.
    pub transactional_id: String,
    /// A scorer may answer from entity states fetched up to this long ago (0: off,
    /// every request reads Redis).
    pub scorer_cache: Millis,
    /// Most entity states a scorer's cache holds.
    pub scorer_cache_entries: usize,
    /// The Redis ACL user to log in as; empty: the default user.
    pub redis_username: String,
    /// A file holding the Redis password (`requirepass`, or the ACL user's): kept out of
    /// the config and the environment. None: no AUTH.
    pub redis_password_file: Option<PathBuf>,
    /// TLS to every node (`rediss`, rustls; the nodes' `tls-port`s).
    pub redis_tls: bool,
    /// The CA (PEM) that signed the nodes' certificates; None: the system's roots.
    pub redis_tls_ca_file: Option<PathBuf>,
    /// A client certificate and key (PEM) for nodes that require one
    /// (`tls-auth-clients yes`): both or neither.
    pub redis_tls_cert_file: Option<PathBuf>,
    pub redis_tls_key_file: Option<PathBuf>,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            role: ServeRole::Embedded,
            redis: Vec::new(),
            topic_prefix: "ss".into(),
            route_group: "streamscore-route".into(),
            aggregate_group: "streamscore-aggregate".into(),
            transactional_id: String::new(),
            scorer_cache: Millis(0),
            scorer_cache_entries: 100_000,
            redis_username: String::new(),
            redis_password_file: None,
            redis_tls: false,
            redis_tls_ca_file: None,
            redis_tls_cert_file: None,
            redis_tls_key_file: None,
        }
    }
}

/// Where admin calls (LoadModel, SetAlias, RetireModel) are answered.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminSettings {
    /// A separate listener for admin calls (with the same TLS and callers); the main
    /// port then refuses them. Unset = the main port, admin role required.
    pub listen: Option<SocketAddr>,
}

/// TLS on the gRPC port (rustls). Both `cert` and `key` turn it on; `client_ca` then
/// also requires every client to present a certificate signed by it (mTLS).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM certificate chain of the server.
    pub cert: Option<PathBuf>,
    /// PEM private key of the server.
    pub key: Option<PathBuf>,
    /// PEM CA certificate(s) client certificates must chain to.
    pub client_ca: Option<PathBuf>,
}

/// The Kafka source (with the `kafka` cargo feature): records of `topics` are applied
/// like `IngestBatch` events; a record's offset is committed only once it is durable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaSettings {
    /// Bootstrap brokers, `host:port,...`; empty: no Kafka at all.
    pub brokers: String,
    /// The consumer group: partitions are shared among the servers of one group.
    pub group: String,
    /// Topics of events; empty: no source (the scoring stream may still run).
    pub topics: Vec<String>,
    pub format: KafkaFormat,
    /// Where records that cannot be applied go, with the reason in headers.
    pub dead_letter_topic: String,
    /// Records applied per batch at most (one durable append and one commit each).
    pub batch_records: usize,
    /// Extra librdkafka properties for every client (`security.protocol`,
    /// `sasl.mechanism`, ...).
    pub client: BTreeMap<String, String>,
    /// Extra librdkafka properties for our consumers only, after `client`
    /// (`session.timeout.ms`, `max.poll.interval.ms`, ...): producers warn about
    /// consumer properties.
    pub consumer: BTreeMap<String, String>,
    pub scoring: KafkaScoringSettings,
}

/// How a record's payload encodes its event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum KafkaFormat {
    /// The JSON-lines shape `export` writes and `train --events` reads.
    #[default]
    Json,
    /// The API's `Event` message.
    Protobuf,
}

/// The scoring stream: payments of `input_topic` are scored like `Score` and their
/// decisions written to `output_topic` in transactions with the input offsets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaScoringSettings {
    /// Empty: no scoring stream.
    pub input_topic: String,
    pub output_topic: String,
    /// The model name or alias, resolved like `Score`'s.
    pub model: String,
    /// Also apply each payment to the features (like `Score` with `record`).
    pub record: bool,
    /// The scoring stream's own consumer group.
    pub group: String,
    /// Payments scored per transaction at most.
    pub batch_records: usize,
}

impl Default for KafkaScoringSettings {
    fn default() -> Self {
        KafkaScoringSettings {
            input_topic: String::new(),
            output_topic: "decisions".into(),
            model: "fraud".into(),
            record: false,
            group: "streamscore-scoring".into(),
            batch_records: 500,
        }
    }
}

impl Default for KafkaSettings {
    fn default() -> Self {
        KafkaSettings {
            brokers: String::new(),
            group: "streamscore".into(),
            topics: vec!["shop-events".into()],
            format: KafkaFormat::Json,
            dead_letter_topic: "shop-events-refused".into(),
            batch_records: 1000,
            client: BTreeMap::new(),
            consumer: BTreeMap::new(),
            scoring: KafkaScoringSettings::default(),
        }
    }
}

impl TlsSettings {
    pub fn enabled(&self) -> bool {
        self.cert.is_some() || self.key.is_some()
    }
}

/// What a caller may do. `Score` with `record` needs `ingest` too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// IngestStream, IngestBatch.
    Ingest,
    /// Score, ScoreCandidates.
    Score,
    /// GetFeatures, ListModels, GetModel.
    Read,
    /// LoadModel, SetAlias, RetireModel.
    Admin,
}

/// A caller identified by a bearer token; only the token's SHA-256 is stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenCaller {
    pub name: String,
    /// Hex SHA-256 of the token (`printf %s "$TOKEN" | sha256sum`).
    pub sha256: String,
    pub roles: Vec<Role>,
}

/// A caller identified by its TLS client certificate (needs `tls.client_ca`): the
/// SHA-256 of the certificate (DER), as `openssl x509 -noout -fingerprint -sha256`
/// prints it (colons optional).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateCaller {
    pub name: String,
    pub sha256: String,
    pub roles: Vec<Role>,
}

/// Callers and their roles. With none configured, every caller may do everything
/// (fine on loopback; `serve` refuses other addresses without them).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    pub tokens: Vec<TokenCaller>,
    pub certificates: Vec<CertificateCaller>,
}

impl AuthSettings {
    pub fn enabled(&self) -> bool {
        !self.tokens.is_empty() || !self.certificates.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownSettings {
    /// After SIGTERM, how long open `IngestStream`s may go on before they are ended with
    /// UNAVAILABLE; then the log is flushed, a snapshot written and the process exits.
    pub drain_timeout: Millis,
}

impl Default for ShutdownSettings {
    fn default() -> Self {
        ShutdownSettings {
            drain_timeout: Millis(10_000),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSettings {
    /// Where model artifacts live: `<dir>/<name>/<name>-v<N>.json`.
    pub dir: PathBuf,
    /// How often the directory is checked for new or changed files.
    pub watch_interval: Millis,
    /// Largest artifact file read; larger ones are refused unread.
    pub max_artifact_bytes: u64,
    /// Key file for HMAC-SHA256 artifact signatures (at least 32 bytes; keep it outside
    /// the models directory). With it, signatures present are verified.
    pub signing_key: Option<PathBuf>,
    /// Refuse artifacts without a valid signature (needs `signing_key`).
    pub require_signature: bool,
    /// What a newly found version does: `manual` (stays a candidate until promoted) or
    /// `if_better` (promoted when it beat the serving version on the same hold-out).
    pub promotion: Promotion,
    /// Score candidates beside the serving version on live traffic (answers not
    /// returned) and count agreement and score differences per candidate.
    pub shadow: bool,
    /// Which candidates to shadow, as `name@N`; empty: the newest
    /// [`DEFAULT_SHADOWED`] of each serving model. At most [`MAX_SHADOWED`].
    pub shadow_candidates: Vec<String>,
}

/// What happens when a new version is loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Promotion {
    /// It stays a candidate until someone promotes it.
    #[default]
    Manual,
    /// It is promoted when its artifact shows it beat the version serving now on the
    /// same hold-out (`train` evaluates the serving version on the new hold-out), or
    /// when nothing of that name serves yet.
    IfBetter,
}

/// Largest artifact read by default (`models.max_artifact_bytes`).
pub const DEFAULT_MAX_ARTIFACT_BYTES: u64 = 64 << 20;

/// Candidates shadowed per serving model when `models.shadow_candidates` is empty.
pub const DEFAULT_SHADOWED: usize = 2;
/// Most candidates `models.shadow_candidates` may name: each is a score per call.
pub const MAX_SHADOWED: usize = 8;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsSettings {
    /// Prometheus scrape address (`GET /metrics`); unset = no metrics endpoint.
    pub listen: Option<SocketAddr>,
}

impl Default for ModelSettings {
    fn default() -> Self {
        ModelSettings {
            dir: PathBuf::from("models"),
            watch_interval: Millis(2_000),
            max_artifact_bytes: DEFAULT_MAX_ARTIFACT_BYTES,
            signing_key: None,
            require_signature: false,
            promotion: Promotion::Manual,
            shadow: false,
            shadow_candidates: Vec::new(),
        }
    }
}

impl Default for MetricsSettings {
    fn default() -> Self {
        MetricsSettings {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 9464))),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestSettings {
    /// How far ahead of the server clock an event may be stamped.
    pub max_future_skew: Millis,
    /// How far behind the newest event time an event may arrive and still be applied.
    pub allowed_lateness: Millis,
    /// Event ids are remembered this long (event time) to drop duplicates.
    pub dedup_horizon: Millis,
    /// Longest id or string field, in bytes.
    pub max_id_bytes: usize,
    /// Largest gRPC message accepted; larger ones get RESOURCE_EXHAUSTED.
    pub max_message_bytes: usize,
    /// Most events in one batch.
    pub max_batch_events: usize,
    /// Answers of recorded `Score` calls kept (newest first) so that a retry with the
    /// same event id gets the first answer; 0 keeps none (a retry is then refused).
    pub recorded_answers: usize,
    /// CPUs (0-based) the ingest threads (the engine's writer, the log writer and the
    /// decoder of large batches) run on; empty: any. Set it to keep heavy ingest off
    /// the cores that answer `Score`.
    pub cpus: Vec<usize>,
}

/// When an append counts as durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncPolicy {
    /// After the record is written and fsynced (the default: an ack survives power loss).
    #[default]
    Always,
    /// After the record is handed to the OS (survives a process crash, not power loss).
    Never,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// `always` (ack after fsync) or `never` (ack after the OS has the bytes).
    pub fsync: FsyncPolicy,
    /// A new segment file is started past this size.
    pub segment_bytes: u64,
    /// Threads that apply the log at start beside the one reading it (each owns a part
    /// of the entity shards) when no snapshot is usable. None: one per core, at most
    /// [`MAX_REPLAY_THREADS`]; 0 applies it on the reading thread. The tail after a
    /// snapshot is always applied on the reading thread (see `FeatureStore::open`).
    pub replay_threads: Option<usize>,
}

/// Past a few threads the one reading and checking the log is the limit.
pub const MAX_REPLAY_THREADS: usize = 8;

impl LogSettings {
    /// How many threads apply the log at start: nothing else runs yet, so by default
    /// all the cores are the replay's.
    pub fn replay_threads(&self) -> usize {
        self.replay_threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map_or(1, |cores| cores.get())
                .min(MAX_REPLAY_THREADS)
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SnapshotSettings {
    /// How often the engine is snapshotted (if events arrived since the last one).
    pub interval: Millis,
    /// Also snapshot once this many events arrived since the last one, which bounds the
    /// replay after a hard kill (at a few hundred thousand events/s replayed).
    pub every_events: u64,
    /// How many snapshots to keep.
    pub keep: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            data_dir: PathBuf::from("streamscore-data"),
            definitions: None,
            ingest: IngestSettings::default(),
            log: LogSettings::default(),
            snapshot: SnapshotSettings::default(),
            models: ModelSettings::default(),
            metrics: MetricsSettings::default(),
            shutdown: ShutdownSettings::default(),
            tls: TlsSettings::default(),
            auth: AuthSettings::default(),
            admin: AdminSettings::default(),
            kafka: KafkaSettings::default(),
            cluster: ClusterSettings::default(),
            samples: SampleSettings::default(),
            drift: DriftSettings::default(),
            http: HttpSettings::default(),
            limits: LimitSettings::default(),
            insecure: false,
        }
    }
}

impl Default for IngestSettings {
    fn default() -> Self {
        IngestSettings {
            max_future_skew: Millis(5 * MINUTE_MS),
            allowed_lateness: Millis(HOUR_MS),
            dedup_horizon: Millis(DAY_MS),
            max_id_bytes: 128,
            max_message_bytes: 4 << 20,
            max_batch_events: 10_000,
            recorded_answers: 100_000,
            cpus: Vec::new(),
        }
    }
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            fsync: FsyncPolicy::Always,
            segment_bytes: 64 << 20,
            replay_threads: None,
        }
    }
}

impl Default for SnapshotSettings {
    fn default() -> Self {
        SnapshotSettings {
            interval: Millis(5 * MINUTE_MS),
            every_events: 1_000_000,
            keep: 2,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid settings: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("invalid settings: {0}")]
    Invalid(String),
}

/// `STREAMSCORE_...` variables with single underscores (`STREAMSCORE_MODELS_SHADOW`),
/// which the settings never read, each with the name it was probably meant as.
fn misspelt_variables(variables: impl Iterator<Item = (String, String)>) -> Vec<(String, String)> {
    // Read by the command line itself (clap's `env`).
    const COMMAND_LINE: &[&str] = &["STREAMSCORE_TOKEN"];
    variables
        .filter_map(|(name, _)| {
            let rest = name.strip_prefix("STREAMSCORE_")?;
            if rest.starts_with('_') || COMMAND_LINE.contains(&name.as_str()) {
                return None;
            }
            // The first part is the section when it names one, as in the README.
            let meant = match rest.split_once('_') {
                Some((section, key)) if SECTIONS.contains(&section.to_lowercase().as_str()) => {
                    format!("STREAMSCORE__{section}__{key}")
                }
                _ => format!("STREAMSCORE__{rest}"),
            };
            Some((name, meant))
        })
        .collect()
}

/// The settings' sections (tables), for [`misspelt_variables`].
const SECTIONS: &[&str] = &[
    "ingest", "log", "snapshot", "models", "metrics", "shutdown", "tls", "auth", "admin", "kafka",
    "cluster", "samples", "http", "limits",
];

/// A settings error with the key as the user wrote it (`models.watch_intervall`, or
/// the variable `STREAMSCORE__MODELS__WATCH_INTERVALL`) and where it came from (the
/// file's absolute path), without figment's profile prefix (`default.`).
fn describe(error: figment::Error) -> String {
    error
        .into_iter()
        .map(|error| {
            let key = match (&error.metadata, &error.profile) {
                (Some(metadata), Some(profile))
                    if !matches!(metadata.source, Some(figment::Source::File(_))) =>
                {
                    metadata.interpolate(profile, &error.path)
                }
                _ => error.path.join("."),
            };
            let origin = match error.metadata.as_ref().map(|m| (&m.source, &m.name)) {
                Some((Some(figment::Source::File(path)), _)) => format!(" in {}", path.display()),
                Some((_, name)) => format!(" in {name}"),
                None => String::new(),
            };
            match key.is_empty() {
                true => format!("{}{origin}", error.kind),
                false => format!("{key}: {}{origin}", error.kind),
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

impl Settings {
    /// Defaults, then `file` (if given), then `STREAMSCORE__...` environment variables.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        let settings = Settings::load_unchecked(file)?;
        settings.validate()?;
        Ok(settings)
    }

    /// Defaults, the file and the environment, not yet validated: for a command whose
    /// flags come last (`serve --insecure` must be able to allow a public `listen` the
    /// file sets), which validates once its flags are applied.
    pub fn load_unchecked(file: Option<&Path>) -> Result<Settings, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(file) = file {
            if !file.exists() {
                return Err(ConfigError::Invalid(format!(
                    "config file {} does not exist",
                    file.display()
                )));
            }
            // Absolute, so an error names the file wherever the command ran.
            let file = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_path_buf());
            figment = figment.merge(Toml::file(file));
        }
        for (name, meant) in misspelt_variables(std::env::vars()) {
            tracing::warn!(
                "{name} is not read: settings take two underscores before and between their parts ({meant})"
            );
        }
        let settings: Settings = figment
            .merge(Env::prefixed("STREAMSCORE__").split("__"))
            .extract()
            .map_err(|error| ConfigError::Invalid(describe(error)))?;
        Ok(settings)
    }

    fn validate_kafka(&self) -> Result<(), ConfigError> {
        let kafka = &self.kafka;
        if kafka.brokers.is_empty() {
            return Ok(());
        }
        let invalid = |message: String| Err(ConfigError::Invalid(message));
        if !cfg!(feature = "kafka") {
            return invalid(
                "kafka.brokers is set, but this build has no Kafka support: build with `--features kafka`".into(),
            );
        }
        if !kafka.topics.is_empty()
            && (kafka.group.is_empty() || kafka.dead_letter_topic.is_empty())
        {
            return invalid("kafka: group and dead_letter_topic must be given with topics".into());
        }
        if kafka.batch_records == 0 || kafka.batch_records > self.ingest.max_batch_events {
            return invalid(format!(
                "kafka.batch_records must be 1 to ingest.max_batch_events ({}), got {}",
                self.ingest.max_batch_events, kafka.batch_records
            ));
        }
        let scoring = &kafka.scoring;
        if !scoring.input_topic.is_empty() {
            if scoring.output_topic.is_empty()
                || scoring.model.is_empty()
                || scoring.group.is_empty()
            {
                return invalid(
                    "kafka.scoring: output_topic, model and group must be given with input_topic"
                        .into(),
                );
            }
            if scoring.group == kafka.group {
                return invalid(format!(
                    "kafka.scoring.group must differ from kafka.group ({:?}): the two consume different topics",
                    kafka.group
                ));
            }
            if scoring.batch_records == 0 || scoring.batch_records > 10_000 {
                return invalid(format!(
                    "kafka.scoring.batch_records must be 1 to 10000, got {}",
                    scoring.batch_records
                ));
            }
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_kafka()?;
        self.validate_redis_nodes()?;
        self.validate_drift()?;
        self.validate_shadowing()?;
        self.validate_redis_tls()?;
        self.validate_ingest()?;
        self.validate_models()?;
        self.validate_exposure()?;
        self.validate_limits()?;
        self.validate_recovery()?;
        Ok(())
    }

    /// Cluster nodes as `host:port`, never with a login in them.
    fn validate_redis_nodes(&self) -> Result<(), ConfigError> {
        // A node written as a URL with a login would carry the password into every
        // error and log line naming it: refused, without repeating it.
        if let Some(index) = self
            .cluster
            .redis
            .iter()
            .position(|node| node.contains('@') || node.contains("://"))
        {
            return Err(ConfigError::Invalid(format!(
                "cluster.redis[{index}]: give a node as host:port; a login goes in cluster.redis_username and cluster.redis_password_file"
            )));
        }
        Ok(())
    }

    /// The drift check's window and threshold.
    fn validate_drift(&self) -> Result<(), ConfigError> {
        if self.drift.every > 0
            && (self.drift.window < 10
                || !(self.drift.threshold.is_finite() && self.drift.threshold > 0.0))
        {
            return Err(ConfigError::Invalid(format!(
                "drift.window must be at least 10 and drift.threshold a positive number of standard deviations, got window {} and threshold {}",
                self.drift.window, self.drift.threshold
            )));
        }
        Ok(())
    }

    /// Which candidates are shadowed, and how many.
    fn validate_shadowing(&self) -> Result<(), ConfigError> {
        let shadowed = &self.models.shadow_candidates;
        if shadowed.len() > MAX_SHADOWED {
            return Err(ConfigError::Invalid(format!(
                "models.shadow_candidates: at most {MAX_SHADOWED} (each is one more score per call), got {}",
                shadowed.len()
            )));
        }
        if let Some(bad) = shadowed.iter().find(|reference| {
            !reference.split_once('@').is_some_and(|(name, version)| {
                !name.is_empty() && version.parse::<u32>().is_ok_and(|v| v > 0)
            })
        }) {
            return Err(ConfigError::Invalid(format!(
                "models.shadow_candidates: '{bad}' is not name@N (e.g. \"fraud@2\")"
            )));
        }
        Ok(())
    }

    /// TLS to Redis: its files only with it on, a client certificate with its key.
    fn validate_redis_tls(&self) -> Result<(), ConfigError> {
        let cluster = &self.cluster;
        let tls_files = [
            &cluster.redis_tls_ca_file,
            &cluster.redis_tls_cert_file,
            &cluster.redis_tls_key_file,
        ];
        if !cluster.redis_tls && tls_files.iter().any(|file| file.is_some()) {
            return Err(ConfigError::Invalid(
            "cluster.redis_tls_*_file is set but cluster.redis_tls is false: set redis_tls = true to use TLS".into(),
        ));
        }
        if cluster.redis_tls_cert_file.is_some() != cluster.redis_tls_key_file.is_some() {
            return Err(ConfigError::Invalid(
            "cluster.redis_tls_cert_file and cluster.redis_tls_key_file go together: give both or neither".into(),
        ));
        }
        Ok(())
    }

    /// Ingest: dedup outlasts lateness, sizes positive, CPUs this machine has.
    fn validate_ingest(&self) -> Result<(), ConfigError> {
        let ingest = &self.ingest;
        if ingest.dedup_horizon.0 < ingest.allowed_lateness.0 {
            return Err(ConfigError::Invalid(
            "ingest.dedup_horizon must be at least ingest.allowed_lateness, or a late duplicate could be applied twice".into(),
        ));
        }
        if ingest.max_id_bytes == 0
            || ingest.max_batch_events == 0
            || ingest.max_message_bytes < 1024
        {
            return Err(ConfigError::Invalid(
            "ingest.max_id_bytes and max_batch_events must be positive, max_message_bytes at least 1024".into(),
        ));
        }
        check_cpus(&ingest.cpus)
            .map_err(|reason| ConfigError::Invalid(format!("ingest.cpus: {reason}")))?;
        Ok(())
    }

    /// The models directory: its watch, signatures and artifact size.
    fn validate_models(&self) -> Result<(), ConfigError> {
        if self.models.watch_interval.0 < 10 {
            return Err(ConfigError::Invalid(
                "models.watch_interval must be at least 10ms".into(),
            ));
        }
        if self.models.require_signature && self.models.signing_key.is_none() {
            return Err(ConfigError::Invalid(
                "models.require_signature needs models.signing_key".into(),
            ));
        }
        if self.models.max_artifact_bytes < 1024 {
            return Err(ConfigError::Invalid(
                "models.max_artifact_bytes must be at least 1024".into(),
            ));
        }
        Ok(())
    }

    /// What is exposed: TLS and callers go together, and no listener off loopback without
    /// them (unless `--insecure`).
    fn validate_exposure(&self) -> Result<(), ConfigError> {
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return Err(ConfigError::Invalid(
                "tls.cert and tls.key go together: set both, or neither".into(),
            ));
        }
        if self.tls.client_ca.is_some() && !self.tls.enabled() {
            return Err(ConfigError::Invalid(
                "tls.client_ca needs tls.cert and tls.key".into(),
            ));
        }
        if !self.auth.certificates.is_empty() && self.tls.client_ca.is_none() {
            return Err(ConfigError::Invalid(
            "auth.certificates needs tls.client_ca (client certificates are only asked for with it)".into(),
        ));
        }
        let protected = self.tls.enabled() && self.auth.enabled();
        for listen in std::iter::once(self.listen).chain(self.admin.listen) {
            if !(listen.ip().is_loopback() || protected || self.insecure) {
                return Err(ConfigError::Invalid(format!(
                    "refusing to listen on {listen} without TLS and callers: anyone who can reach it could move aliases and switch fraud checks off. Set [tls] cert/key and [[auth.tokens]], listen on 127.0.0.1, or pass --insecure"
                )));
            }
        }
        if let Some(listen) = self.http.listen
            && !(listen.ip().is_loopback() || self.insecure)
        {
            return Err(ConfigError::Invalid(format!(
                "http.listen: refusing to serve REST on {listen}: the HTTP listener has no TLS, so tokens and payments would cross the network in clear. Listen on 127.0.0.1 (behind a TLS proxy), or pass --insecure"
            )));
        }
        // The metrics endpoint has no TLS and no callers either, and says much about
        // traffic and models.
        if let Some(listen) = self.metrics.listen
            && !(listen.ip().is_loopback() || self.insecure)
        {
            return Err(ConfigError::Invalid(format!(
                "metrics.listen: refusing to serve metrics on {listen}: the metrics endpoint has no TLS and no callers. Listen on 127.0.0.1 (and let the scraper reach it through a proxy or tunnel), or pass --insecure"
            )));
        }
        Ok(())
    }

    /// The in-flight budget and the REST door's bounds.
    fn validate_limits(&self) -> Result<(), ConfigError> {
        let limits = &self.limits;
        if limits.inflight_calls == 0
            || limits.inflight_bytes < self.ingest.max_message_bytes
            || limits.max_answer_bytes < 1024
        {
            return Err(ConfigError::Invalid(format!(
                "limits: inflight_calls must be positive, inflight_bytes at least ingest.max_message_bytes ({}), max_answer_bytes at least 1024",
                self.ingest.max_message_bytes
            )));
        }
        if self.http.max_connections == 0
            || self.http.header_timeout.0 < 100
            || self.http.request_timeout.0 < 100
        {
            return Err(ConfigError::Invalid(
            "http: max_connections must be positive, header_timeout and request_timeout at least 100ms".into(),
        ));
        }
        Ok(())
    }

    /// Replay threads and the snapshot interval.
    fn validate_recovery(&self) -> Result<(), ConfigError> {
        if self
            .log
            .replay_threads
            .is_some_and(|threads| threads > MAX_REPLAY_THREADS)
        {
            return Err(ConfigError::Invalid(format!(
                "log.replay_threads must be at most {MAX_REPLAY_THREADS} (0 replays on the reading thread; leave it out for one per core)"
            )));
        }
        if self.snapshot.interval.0 < 1000 {
            return Err(ConfigError::Invalid(
                "snapshot.interval must be at least 1s".into(),
            ));
        }
        Ok(())
    }
}

/// CPU numbers an affinity mask can name (`CPU_SETSIZE`).
pub const MAX_CPUS: usize = 1024;

/// Checks `ingest.cpus`: numbers this machine has, no repeats. Listing every CPU the
/// process may use is allowed but keeps nothing apart.
fn check_cpus(cpus: &[usize]) -> Result<(), String> {
    let available = std::thread::available_parallelism().map_or(1, usize::from);
    if let Some(&cpu) = cpus.iter().find(|&&cpu| cpu >= available.min(MAX_CPUS)) {
        return Err(format!(
            "CPU {cpu} does not exist here: this machine has CPUs 0 to {}",
            available - 1
        ));
    }
    let mut sorted = cpus.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.len() != cpus.len() {
        return Err("a CPU is listed twice".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail fixes the closure's error type
    fn public_listeners_need_insecure_and_flags_come_after_the_file() {
        // In a jail: another test sets STREAMSCORE__ variables for a while.
        figment::Jail::expect_with(|jail| {
            jail.create_file("public.toml", "listen = \"0.0.0.0:50051\"\n")?;
            let file = Path::new("public.toml");
            // Refused by `load`, which validates the file as it is...
            let refused = Settings::load(Some(file)).expect_err("public listen refused");
            assert!(refused.to_string().contains("--insecure"), "{refused}");
            // ...but a flag applied after the file can allow it.
            let mut settings = Settings::load_unchecked(Some(file)).map_err(|e| e.to_string())?;
            assert!(settings.validate().is_err());
            settings.insecure = true;
            settings.validate().map_err(|e| e.to_string())?;
            Ok(())
        });

        // The metrics endpoint is guarded like the REST one.
        let mut settings = Settings::default();
        settings.metrics.listen = Some(SocketAddr::from(([0, 0, 0, 0], 9464)));
        let refused = settings.validate().expect_err("public metrics refused");
        assert!(refused.to_string().contains("metrics.listen"), "{refused}");
        settings.insecure = true;
        settings.validate().expect("allowed with --insecure");
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail fixes the closure's error type
    fn file_then_env_override_defaults() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "server.toml",
                "data_dir = \"/tmp/x\"\n[ingest]\nallowed_lateness = \"2h\"\n",
            )?;
            jail.set_env("STREAMSCORE__INGEST__MAX_ID_BYTES", "64");
            let settings =
                Settings::load(Some(Path::new("server.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(settings.data_dir, PathBuf::from("/tmp/x"));
            assert_eq!(settings.ingest.allowed_lateness, Millis(2 * HOUR_MS));
            assert_eq!(settings.ingest.max_id_bytes, 64);
            assert_eq!(settings.ingest.dedup_horizon, Millis(DAY_MS));
            jail.set_env("STREAMSCORE__INGEST__DEDUP_HORIZON", "1m");
            let error = Settings::load(Some(Path::new("server.toml")))
                .unwrap_err()
                .to_string();
            assert!(error.contains("dedup_horizon"), "{error}");
            Ok(())
        });
    }

    #[test]
    fn single_underscore_variables_are_named_with_what_they_meant() {
        let variables = [
            ("STREAMSCORE_MODELS_SHADOW", "true"),
            ("STREAMSCORE__MODELS__SHADOW", "true"),
            ("STREAMSCORE_TOKEN", "secret"),
            ("STREAMSCORE_LISTEN", "0.0.0.0:1"),
            ("HOME", "/root"),
        ]
        .map(|(name, value)| (name.to_string(), value.to_string()));
        assert_eq!(
            misspelt_variables(variables.into_iter()),
            [
                (
                    "STREAMSCORE_MODELS_SHADOW".to_string(),
                    "STREAMSCORE__MODELS__SHADOW".to_string()
                ),
                (
                    "STREAMSCORE_LISTEN".to_string(),
                    "STREAMSCORE__LISTEN".to_string()
                ),
            ]
        );
    }

    #[test]
    fn ingest_cpus_must_exist_and_be_listed_once() {
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        let mut settings = Settings::default();
        settings.ingest.cpus = vec![cpus];
        let refused = settings
            .validate()
            .expect_err("a CPU past the last refused");
        assert!(
            refused.to_string().contains("ingest.cpus: CPU"),
            "{refused}"
        );
        settings.ingest.cpus = vec![0, 0];
        let refused = settings.validate().expect_err("a repeat refused");
        assert!(refused.to_string().contains("twice"), "{refused}");
        settings.ingest.cpus = vec![cpus - 1];
        settings.validate().expect("the last CPU is fine");
    }

    #[test]
    fn replay_threads_are_bounded_and_zero_means_the_reading_thread() {
        let mut settings = Settings::default();
        assert!((1..=MAX_REPLAY_THREADS).contains(&settings.log.replay_threads()));
        settings.log.replay_threads = Some(0);
        settings.validate().expect("0 is the reading thread alone");
        assert_eq!(settings.log.replay_threads(), 0);
        settings.log.replay_threads = Some(MAX_REPLAY_THREADS + 1);
        let refused = settings.validate().expect_err("too many threads refused");
        assert!(
            refused.to_string().contains("log.replay_threads"),
            "{refused}"
        );
    }

    #[test]
    fn a_redis_node_with_a_login_in_it_is_refused_without_repeating_it() {
        let mut settings = Settings::default();
        settings.cluster.redis = vec![
            "10.0.0.1:6379".into(),
            "redis://app:s3cret@10.0.0.2:6379".into(),
        ];
        let refused = settings.validate().expect_err("a login in a node refused");
        let message = refused.to_string();
        assert!(message.contains("cluster.redis[1]"), "{message}");
        assert!(!message.contains("s3cret"), "{message}");
        settings.cluster.redis.truncate(1);
        settings.validate().expect("host:port is fine");
    }

    #[test]
    fn shadow_candidates_are_name_at_version_and_few() {
        let mut settings = Settings::default();
        for bad in ["fraud", "fraud@", "@2", "fraud@0", "fraud@two"] {
            settings.models.shadow_candidates = vec![bad.into()];
            let message = settings.validate().expect_err(bad).to_string();
            assert!(
                message.contains(&format!("'{bad}' is not name@N")),
                "{message}"
            );
        }
        settings.models.shadow_candidates = (1..=MAX_SHADOWED + 1)
            .map(|v| format!("fraud@{v}"))
            .collect();
        let message = settings.validate().expect_err("too many").to_string();
        assert!(message.contains("at most 8"), "{message}");
        settings.models.shadow_candidates.truncate(2);
        settings.validate().expect("two named candidates");
    }

    #[test]
    fn redis_tls_files_need_redis_tls_and_a_certificate_its_key() {
        let mut settings = Settings::default();
        settings.cluster.redis_tls_ca_file = Some("ca.pem".into());
        let message = settings.validate().expect_err("TLS off").to_string();
        assert!(message.contains("cluster.redis_tls is false"), "{message}");
        settings.cluster.redis_tls = true;
        settings.validate().expect("TLS with a CA");
        settings.cluster.redis_tls_cert_file = Some("client.pem".into());
        let message = settings.validate().expect_err("no key").to_string();
        assert!(message.contains("give both or neither"), "{message}");
        settings.cluster.redis_tls_key_file = Some("client.key".into());
        settings.validate().expect("a certificate and its key");
    }

    #[test]
    fn the_readme_lists_every_key_with_its_default() {
        use crate::readme_blocks::{assert_documents, block, fields};
        let block = block("settings-defaults");
        let parsed: Settings = toml::from_str(&block).expect("the README block parses");
        assert_eq!(parsed, Settings::default(), "the README's defaults differ");
        let every = fields(&serde_json::to_value(Settings::default()).unwrap());
        assert_documents(&block, &every);
    }
}
