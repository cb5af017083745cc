//! Shared test support: starting the real server on port 0, and the naive reference
//! model of the feature semantics.
#![allow(dead_code)]

pub mod naive;

use std::net::SocketAddr;
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
    pub store: Arc<FeatureStore>,
    pub dir: TempDir,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), streamscore::server::ServerError>>,
}

impl TestServer {
    /// Starts the real server on 127.0.0.1:0 with a fresh data dir; `adjust` may change
    /// the settings first.
    pub async fn start(adjust: impl FnOnce(&mut Settings)) -> TestServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut settings = Settings { data_dir: dir.path().to_path_buf(), ..Settings::default() };
        adjust(&mut settings);
        let store = streamscore::server::open_store(&settings).await.expect("store opens");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
        let addr = listener.local_addr().expect("local addr");
        let (shutdown, signal) = oneshot::channel::<()>();
        let server_store = Arc::clone(&store);
        let task = tokio::spawn(async move {
            streamscore::server::run(listener, server_store, &settings, async {
                let _ = signal.await;
            })
            .await
        });
        TestServer { url: format!("http://{addr}"), addr, store, dir, shutdown: Some(shutdown), task }
    }

    pub async fn channel(&self) -> tonic::transport::Channel {
        streamscore::api::client::connect(&self.url).await.expect("connect to test server")
    }

    /// Stops the server gracefully and returns its data dir.
    pub async fn stop(mut self) -> TempDir {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        self.task.await.expect("server task").expect("server ran cleanly");
        self.dir
    }
}
