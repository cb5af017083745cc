//! What several benches set up the same way: a store on a temp dir without fsync, the
//! shipped fraud model, and the payment that makes one user, card and device.
#![allow(dead_code)]

pub mod null_server;

use std::collections::BTreeMap;
use std::sync::Arc;

use streamscore::config::Settings;
use streamscore::definitions::Definitions;
use streamscore::events::RawEvent;
use streamscore::log::FsyncPolicy;
use streamscore::registry::{LoadedModel, Registry};
use streamscore::store::FeatureStore;

/// A number from the environment, or `default`.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A fresh store with the default definitions (no fsync: the benches measure reads).
pub fn store() -> (tempfile::TempDir, FeatureStore, Arc<Definitions>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut settings = Settings {
        data_dir: dir.path().to_path_buf(),
        ..Settings::default()
    };
    settings.log.fsync = FsyncPolicy::Never;
    let definitions = Arc::new(Definitions::default_shop());
    let (store, _) = FeatureStore::open(&settings, Arc::clone(&definitions)).expect("store");
    (dir, store, definitions)
}

/// The shipped models, and one of them resolved by name.
pub fn model(definitions: &Arc<Definitions>, name: &str) -> Arc<LoadedModel> {
    let registry = Registry::new(
        Arc::clone(definitions),
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models"),
    );
    assert!(registry.scan().expect("models dir").is_empty());
    registry.resolve(name).expect("shipped model")
}

/// Payment `i`: its own user, card and device.
pub fn payment(i: usize, time_ms: i64) -> RawEvent {
    RawEvent {
        event_id: format!("p{i}"),
        event_type: "payment".into(),
        event_time_ms: time_ms,
        entities: BTreeMap::from([
            ("user".into(), format!("u{i}")),
            ("card".into(), format!("c{i}")),
            ("device".into(), format!("d{i}")),
        ]),
        numbers: BTreeMap::from([("amount".into(), (i % 500) as f64 + 0.99)]),
        strings: BTreeMap::from([("ip_country".into(), "DE".into())]),
    }
}

/// The real server on loopback, on a runtime of its own (`workers` threads named
/// `server-worker`, so a profile tells them from the load generator's).
pub struct Served {
    pub runtime: tokio::runtime::Runtime,
    pub url: String,
    pub rest_url: String,
    stop: tokio::sync::oneshot::Sender<()>,
}

impl Served {
    /// Stops the server and ends its runtime.
    pub fn stop(self) {
        let _ = self.stop.send(());
        drop(self.runtime);
    }
}

/// A runtime of `workers` threads named `name` (a load generator's, a server's): the
/// names tell them apart in a profile.
pub fn runtime(name: &str, workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .thread_name(name)
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Starts the server of `settings` with a gRPC and a REST listener on loopback.
pub fn serve(settings: &Settings, workers: usize) -> Served {
    let runtime = runtime("server-worker", workers);
    let (grpc_addr, http_addr, stop) = runtime.block_on(async {
        let store = streamscore::server::open_store(settings)
            .await
            .expect("store opens");
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let http = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addrs = (
            grpc.local_addr().expect("addr"),
            http.local_addr().expect("addr"),
        );
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let settings = settings.clone();
        tokio::spawn(async move {
            let listeners = streamscore::server::Listeners {
                grpc,
                metrics: None,
                admin: None,
                http: Some(http),
            };
            streamscore::server::run_with(listeners, store, &settings, async {
                let _ = stopped.await;
            })
            .await
            .expect("server runs")
        });
        (addrs.0, addrs.1, stop)
    });
    Served {
        runtime,
        url: format!("http://{grpc_addr}"),
        rest_url: format!("http://{http_addr}"),
        stop,
    }
}
