//! Shared test support: starting the real server on port 0, and the naive reference
//! model of the feature semantics.
#![allow(dead_code)]

pub mod disk;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod naive;
pub mod pki;
#[cfg(feature = "cluster")]
pub mod redis;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use streamscore::config::Settings;
use streamscore::store::FeatureStore;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub struct TestServer {
    pub url: String,
    pub addr: SocketAddr,
    /// The Prometheus endpoint (`GET /metrics`).
    pub metrics_addr: SocketAddr,
    /// The REST door (`/v2/...`).
    pub http_addr: SocketAddr,
    /// The admin listener's URL, when the settings ask for one (`admin.listen`).
    pub admin_url: Option<String>,
    pub store: Arc<FeatureStore>,
    pub dir: TempDir,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), streamscore::server::ServerError>>,
}

impl TestServer {
    /// Starts the real server with models from `models`, `alias` pointing at `target`
    /// (`name@version`).
    pub async fn start_promoted(models: &std::path::Path, alias: &str, target: &str) -> TestServer {
        use streamscore::api::pb::{self, models_client::ModelsClient};
        let models_dir = models.to_path_buf();
        let server = TestServer::start(|settings| settings.models.dir = models_dir).await;
        ModelsClient::new(server.channel().await)
            .set_alias(pb::SetAliasRequest {
                alias: alias.into(),
                target: target.into(),
            })
            .await
            .unwrap_or_else(|status| panic!("promote {target}: {status}"));
        server
    }

    /// Starts the real server on 127.0.0.1:0 with a fresh data dir; `adjust` may change
    /// the settings first.
    pub async fn start(adjust: impl FnOnce(&mut Settings)) -> TestServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut settings = Settings {
            data_dir: dir.path().to_path_buf(),
            ..Settings::default()
        };
        // Tests run side by side: no fixed metrics port (one on port 0 below).
        settings.metrics.listen = None;
        adjust(&mut settings);
        let store = streamscore::server::open_store(&settings)
            .await
            .expect("store opens");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
        let addr = listener.local_addr().expect("local addr");
        let metrics = TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
        let metrics_addr = metrics.local_addr().expect("local addr");
        let http = TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
        let http_addr = http.local_addr().expect("local addr");
        // Any admin address asked for becomes a free loopback port.
        let admin = match settings.admin.listen {
            Some(_) => Some(TcpListener::bind("127.0.0.1:0").await.expect("bind port 0")),
            None => None,
        };
        let admin_url = admin
            .as_ref()
            .map(|a| format!("http://{}", a.local_addr().expect("local addr")));
        let (shutdown, signal) = oneshot::channel::<()>();
        let server_store = Arc::clone(&store);
        let task = tokio::spawn(async move {
            let listeners = streamscore::server::Listeners {
                grpc: listener,
                metrics: Some(metrics),
                admin,
                http: Some(http),
            };
            streamscore::server::run_with(listeners, server_store, &settings, async {
                let _ = signal.await;
            })
            .await
        });
        TestServer {
            url: format!("http://{addr}"),
            addr,
            metrics_addr,
            http_addr,
            admin_url,
            store,
            dir,
            shutdown: Some(shutdown),
            task,
        }
    }

    pub async fn channel(&self) -> streamscore::api::client::Connection {
        streamscore::api::client::connect(&self.url)
            .await
            .expect("connect to test server")
    }

    /// One scrape of the metrics endpoint: the body of `GET /metrics`.
    pub async fn scrape(&self) -> String {
        scrape(&self.metrics_addr.to_string()).await
    }

    /// Stops the server gracefully and returns its data dir.
    pub async fn stop(mut self) -> TempDir {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        self.task
            .await
            .expect("server task")
            .expect("server ran cleanly");
        self.dir
    }
}

use std::collections::BTreeSet;

use streamscore::definitions::Definitions;
use streamscore::events::RawEvent;

/// The ids of `entity` among `samples` (from [`sample_entities`]).
pub fn ids_of(samples: &[(String, String)], entity: &str) -> Vec<String> {
    samples
        .iter()
        .filter(|(e, _)| e == entity)
        .map(|(_, id)| id.clone())
        .collect()
}

/// A spread of entity ids of every type found in `events`: a stride through the sorted
/// ids, so both busy and quiet entities are checked.
pub fn sample_entities(
    definitions: &Definitions,
    events: &[RawEvent],
    per_type: usize,
) -> Vec<(String, String)> {
    let mut samples = Vec::new();
    for entity in &definitions.entities {
        let ids: BTreeSet<String> = events
            .iter()
            .filter_map(|e| {
                let parts: Vec<&str> = if entity.parts.is_empty() {
                    vec![entity.name.as_str()]
                } else {
                    entity
                        .parts
                        .iter()
                        .map(|p| definitions.entities[*p].name.as_str())
                        .collect()
                };
                let ids: Option<Vec<&str>> = parts
                    .iter()
                    .map(|p| e.entities.get(*p).map(String::as_str))
                    .collect();
                ids.map(|ids| ids.join("|"))
            })
            .collect();
        let stride = (ids.len() / per_type).max(1);
        samples.extend(
            ids.iter()
                .step_by(stride)
                .map(|id| (entity.name.clone(), id.clone())),
        );
    }
    samples
}

/// Feature values of `samples` read from a store, in definition order.
pub fn read_all(
    store: &FeatureStore,
    samples: &[(String, String)],
    at_ms: i64,
) -> Vec<(bool, Vec<Option<f64>>)> {
    samples
        .iter()
        .map(|(entity_type, id)| {
            let read = store
                .read(entity_type, id, &[], Some(at_ms))
                .expect("read features");
            (
                read.known,
                read.values.into_iter().map(|(_, v)| v).collect(),
            )
        })
        .collect()
}

/// [`read_all`] from a server over gRPC.
pub async fn read_all_remote(
    url: &str,
    samples: &[(String, String)],
    at: i64,
) -> Vec<(bool, Vec<Option<f64>>)> {
    let channel = streamscore::api::client::connect(url)
        .await
        .expect("connect");
    let mut reads = Vec::new();
    for (entity_type, id) in samples {
        let response =
            streamscore::api::client::get_features(channel.clone(), entity_type, id, Some(at))
                .await
                .expect("features");
        reads.push((
            response.known,
            response.values.into_iter().map(|v| v.value).collect(),
        ));
    }
    reads
}

/// Asserts that `reads` (from [`read_all`]) equal the naive model's values.
pub fn assert_matches_naive(
    definitions: &Definitions,
    naive: &naive::Naive,
    samples: &[(String, String)],
    reads: &[(bool, Vec<Option<f64>>)],
    at_ms: i64,
) {
    for ((entity_type, id), (known, values)) in samples.iter().zip(reads) {
        let features: Vec<_> = definitions
            .features
            .iter()
            .filter(|f| definitions.entities[f.entity].name == *entity_type)
            .collect();
        assert_eq!(values.len(), features.len());
        for (value, feature) in values.iter().zip(features) {
            let (expected_known, expected) = naive.read(feature, id, at_ms);
            assert_eq!(*known, expected_known, "{entity_type} {id}");
            assert!(
                naive::same_value(*value, expected),
                "{entity_type} {id} {}: store {value:?}, naive {expected:?}",
                feature.name
            );
        }
    }
}

/// Starts `streamscore serve` on port 0 and returns it with the address it logged.
pub fn spawn_server(data_dir: &std::path::Path) -> (Child, String) {
    spawn_server_with(data_dir, &[])
}

/// [`spawn_server`] with extra environment settings (`STREAMSCORE__...`).
pub fn spawn_server_with(data_dir: &std::path::Path, env: &[(&str, &str)]) -> (Child, String) {
    spawn_server_args(data_dir, &[], env)
}

/// [`spawn_server`] with a config file.
pub fn spawn_server_configured(
    data_dir: &std::path::Path,
    config: &std::path::Path,
) -> (Child, String) {
    let config = config.to_string_lossy();
    spawn_server_args(data_dir, &["--config", &config], &[])
}

fn spawn_server_args(
    data_dir: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> (Child, String) {
    spawn_until(data_dir, args, env, "streamscore listening")
}

/// `streamscore serve --role <role> --config <config>`; returns once it logged `ready`
/// (its address, when the line has one, else "").
/// Starts `serve --role role`; returns the child, its gRPC URL (none for an
/// aggregator) and its metrics address (`host:port`, or `off`).
pub fn spawn_role(
    data_dir: &std::path::Path,
    role: &str,
    config: &std::path::Path,
    ready: &str,
) -> (Child, String, String) {
    let (child, line) = spawn_role_line(data_dir, role, config, ready);
    let field = |name: &str| {
        line.split(&format!(" {name}="))
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .map(str::to_string)
            .unwrap_or_default()
    };
    let addr = field("addr");
    let url = if addr.is_empty() {
        String::new()
    } else {
        format!("http://{addr}")
    };
    (child, url, field("metrics"))
}

/// Starts `serve --role role`; returns the child and the first log line containing
/// `ready`.
pub fn spawn_role_line(
    data_dir: &std::path::Path,
    role: &str,
    config: &std::path::Path,
    ready: &str,
) -> (Child, String) {
    let (child, mut lines) = spawn_role_lines(data_dir, role, config, &[ready]);
    (child, lines.remove(0))
}

/// Starts `serve --role role`; returns the child and, for each of `ready`, the first
/// log line containing it.
pub fn spawn_role_lines(
    data_dir: &std::path::Path,
    role: &str,
    config: &std::path::Path,
    ready: &[&str],
) -> (Child, Vec<String>) {
    let config = config.to_string_lossy();
    spawn_for_lines(data_dir, &["--role", role, "--config", &config], &[], ready)
}

fn spawn_until(
    data_dir: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
    ready: &str,
) -> (Child, String) {
    let (child, line) = spawn_for_line(data_dir, args, env, ready);
    let addr = line
        .split("addr=")
        .nth(1)
        .map(|addr| addr.trim().to_string())
        .unwrap_or_default();
    let url = if addr.is_empty() {
        String::new()
    } else {
        format!("http://{addr}")
    };
    (child, url)
}

/// [`spawn_server_with`], with its REST listener on a port of its own choosing:
/// (child, gRPC URL, REST address).
pub fn spawn_server_with_rest(
    data_dir: &std::path::Path,
    env: &[(&str, &str)],
) -> (Child, String, std::net::SocketAddr) {
    let (child, lines) = spawn_for_lines(
        data_dir,
        &[],
        env,
        &["REST (Open Inference Protocol)", "streamscore listening"],
    );
    let rest = lines[0]
        .split("addr=Some(")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .and_then(|addr| addr.parse().ok())
        .expect("the REST address in the log");
    let grpc = lines[1]
        .split("addr=")
        .nth(1)
        .map(|addr| format!("http://{}", addr.trim()))
        .expect("the gRPC address in the log");
    (child, grpc, rest)
}

/// Spawns `serve` and returns its first log line containing `ready`.
fn spawn_for_line(
    data_dir: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
    ready: &str,
) -> (Child, String) {
    let (child, mut lines) = spawn_for_lines(data_dir, args, env, &[ready]);
    (child, lines.remove(0))
}

/// `serve` with `args` and `env`; returns the child and, for each of `ready`, the
/// first log line containing it (once all have been logged).
pub fn spawn_server_args_lines(
    data_dir: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
    ready: &[&str],
) -> (Child, Vec<String>) {
    spawn_for_lines(data_dir, args, env, ready)
}

/// `serve` with `env`; returns the child and, for each of `ready`, the first log line
/// containing it.
pub fn spawn_server_lines(
    data_dir: &std::path::Path,
    env: &[(&str, &str)],
    ready: &[&str],
) -> (Child, Vec<String>) {
    spawn_for_lines(data_dir, &[], env, ready)
}

fn spawn_for_lines(
    data_dir: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
    ready: &[&str],
) -> (Child, Vec<String>) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_streamscore"));
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args(args)
        .env("RUST_LOG", "info");
    // Any free port unless the test chose one: a fixed one could be taken by another
    // server on the machine.
    for key in ["STREAMSCORE__METRICS__LISTEN", "STREAMSCORE__HTTP__LISTEN"] {
        command.env(key, "127.0.0.1:0");
    }
    let mut child = command
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn streamscore");
    let stderr = child.stderr.take().expect("stderr");
    // The log is read on a thread of its own for as long as the server runs (so it never
    // blocks on a full pipe; shown with STREAMSCORE_TEST_LOG=1, to debug a test), and
    // its lines come here until every marker is found, or a minute passes: a server
    // that never logs a marker fails the test rather than hanging it.
    let (sender, logged) = std::sync::mpsc::channel::<String>();
    let show = std::env::var_os("STREAMSCORE_TEST_LOG").is_some();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if show {
                eprintln!("[server] {line}");
            }
            // The test stops listening once it has what it waited for.
            let _ = sender.send(line);
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut found: Vec<Option<String>> = vec![None; ready.len()];
    while found.iter().any(Option::is_none) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = match logged.recv_timeout(left) {
            Ok(line) => line,
            Err(why) => {
                let _ = child.kill();
                let missing: Vec<&&str> = ready
                    .iter()
                    .zip(&found)
                    .filter(|(_, found)| found.is_none())
                    .map(|(marker, _)| marker)
                    .collect();
                panic!("the server never logged {missing:?} ({why:?})");
            }
        };
        for (marker, found) in ready.iter().zip(&mut found) {
            if found.is_none() && line.contains(marker) {
                *found = Some(line.clone());
            }
        }
    }
    let found: Vec<String> = found.into_iter().flatten().collect();
    (child, found)
}

/// Page views `first..first + count` by 50 users in turn, as one batch.
pub fn view_batch(first: usize, count: usize) -> streamscore::api::pb::IngestRequest {
    use streamscore::api::pb;
    pb::IngestRequest {
        batch_id: first as u64,
        events: (first..first + count)
            .map(|i| pb::Event {
                event_id: format!("view-{i}"),
                event_type: "page_view".into(),
                event_time_ms: streamscore::time::now_ms(),
                entities: [("user".to_string(), format!("u{}", i % 50))].into(),
                strings: [("session_id".to_string(), format!("session-{i}"))].into(),
                ..Default::default()
            })
            .collect(),
    }
}

/// The health of `Ingest` as the server reports its changes.
pub struct IngestHealth(tonic::Streaming<tonic_health::pb::HealthCheckResponse>);

impl IngestHealth {
    pub async fn watch(channel: streamscore::api::client::Connection) -> IngestHealth {
        let states = tonic_health::pb::health_client::HealthClient::new(channel)
            .watch(tonic_health::pb::HealthCheckRequest {
                service: "streamscore.v1.Ingest".into(),
            })
            .await
            .expect("health watch")
            .into_inner();
        IngestHealth(states)
    }

    /// The next state. One that never comes is the bug; the bound only turns a hang
    /// into a failure.
    pub async fn next(&mut self) -> tonic_health::ServingStatus {
        use tokio_stream::StreamExt;
        let next = tokio::time::timeout(std::time::Duration::from_secs(60), self.0.next())
            .await
            .expect("the Ingest health changes");
        let status = next.expect("stream open").expect("health").status;
        match tonic_health::pb::health_check_response::ServingStatus::try_from(status) {
            Ok(tonic_health::pb::health_check_response::ServingStatus::Serving) => {
                tonic_health::ServingStatus::Serving
            }
            Ok(tonic_health::pb::health_check_response::ServingStatus::NotServing) => {
                tonic_health::ServingStatus::NotServing
            }
            _ => tonic_health::ServingStatus::Unknown,
        }
    }
}

/// A `Score` request to the serving `fraud` model for a payment of `amount` by user
/// `u1` with card `c1`, a second ago.
pub fn fraud_payment(amount: f64) -> streamscore::api::pb::ScoreRequest {
    use streamscore::api::pb;
    pb::ScoreRequest {
        model: "fraud".into(),
        event: Some(pb::Event {
            event_type: "payment".into(),
            event_time_ms: streamscore::time::now_ms() - 1_000,
            entities: [("user", "u1"), ("card", "c1")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            numbers: [("amount".to_string(), amount)].into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// One scrape of a metrics endpoint at `addr` (`host:port`): the body of `GET /metrics`.
pub async fn scrape(addr: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to metrics");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .expect("send scrape");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("read scrape");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default()
}

/// The value of the sample `series` (name and labels as written) in a scrape.
pub fn metric(scrape: &str, series: &str) -> Option<f64> {
    scrape
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

/// A line of /proc/<pid>/status in bytes (VmHWM: peak resident, VmRSS: resident now).
pub fn status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("status field")
        * 1024
}

/// Peak resident memory of a process so far.
pub fn peak_rss(pid: u32) -> u64 {
    status_bytes(pid, "VmHWM:")
}

/// Resident memory of a process now.
pub fn rss(pid: u32) -> u64 {
    status_bytes(pid, "VmRSS:")
}

/// Writes `events` as JSON lines (what `simulate --out` and `export` write).
pub fn write_jsonl(path: &std::path::Path, events: &[streamscore::events::RawEvent]) {
    use std::io::Write;
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).expect("history file"));
    for event in events {
        serde_json::to_writer(&mut file, event).expect("event as JSON");
        file.write_all(b"\n").expect("write");
    }
    file.flush().expect("flush");
}

/// Runs `streamscore mine rules --config training/rules.toml` on `history` into
/// `models_dir`, asserting it succeeded.
pub fn mine_rules(history: &std::path::Path, models_dir: &std::path::Path) {
    let mined = Command::new(env!("CARGO_BIN_EXE_streamscore"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "mine",
            "rules",
            "--config",
            "training/rules.toml",
            "--events",
        ])
        .arg(history)
        .arg("--models-dir")
        .arg(models_dir)
        .output()
        .expect("runs mine rules");
    assert!(
        mined.status.success(),
        "{}",
        String::from_utf8_lossy(&mined.stderr)
    );
}

/// Copies the directory tree `from` into `to` (created if missing).
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("create the copy's folder");
    for entry in std::fs::read_dir(from).expect("read the folder") {
        let path = entry.expect("a folder entry").path();
        let target = to.join(path.file_name().expect("an entry has a name"));
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).expect("copy a file");
        }
    }
}
