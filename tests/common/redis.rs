//! A throwaway Redis Cluster of three masters on loopback, one per test, so a test may
//! kill and restart a master without touching another test. Started from the
//! `redis-server` binary (`scripts/deps` installs it), joined with `redis-cli --cluster
//! create`, killed with its files when dropped. Each master keeps an append-only file
//! synced on every write, so a killed and restarted master comes back with every write
//! it acknowledged. [`RedisCluster::start_with_password`] starts one that requires AUTH
//! (`requirepass`), [`RedisCluster::start_secured`] one that also speaks only TLS
//! (`tls-port`, `tls-cluster`; certificates from [`super::pki::Pki`]).

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

pub struct RedisCluster {
    /// `127.0.0.1:port` of each master.
    pub nodes: Vec<String>,
    ports: Vec<u16>,
    servers: Vec<Option<Child>>,
    security: Security,
    dir: TempDir,
}

/// How the nodes are reached: AUTH and TLS, each if set.
#[derive(Clone, Default)]
pub struct Security {
    /// The `requirepass` of every node.
    pub password: Option<String>,
    /// A dir with `ca.pem`, `server.pem` and `server.key`: the nodes speak TLS only.
    pub tls: Option<std::path::PathBuf>,
    /// With `tls`: clients must present a certificate signed by `ca.pem` (the dir's
    /// `client.pem` and `client.key`).
    pub client_certificates: bool,
}

/// A port free for Redis and for its cluster bus (the port + 10000).
fn free_port_pair() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

fn redis_cli(port: u16, security: &Security, args: &[&str]) -> Option<String> {
    let mut command = Command::new("redis-cli");
    command.args(["-h", "127.0.0.1", "-p", &port.to_string()]);
    if let Some(password) = &security.password {
        command.args(["-a", password, "--no-auth-warning"]);
    }
    if let Some(tls) = &security.tls {
        command.arg("--tls").arg("--cacert").arg(tls.join("ca.pem"));
        if security.client_certificates {
            command
                .arg("--cert")
                .arg(tls.join("client.pem"))
                .arg("--key")
                .arg(tls.join("client.key"));
        }
    }
    let output = command.args(args).stdin(Stdio::null()).output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Polls `check` until it holds; panics naming `what` after a generous deadline (a
/// server that never comes up must fail the test, not hang it).
fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check() {
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn spawn_server(dir: &Path, port: u16, security: &Security) -> Child {
    let data = dir.join(port.to_string());
    std::fs::create_dir_all(&data).expect("node dir");
    let mut command = Command::new("redis-server");
    if let Some(password) = &security.password {
        command.args(["--requirepass", password, "--masterauth", password]);
    }
    match &security.tls {
        // TLS only: no plain port; the cluster bus and replication speak TLS too.
        Some(tls) => {
            command
                .args(["--port", "0", "--tls-port", &port.to_string()])
                .args(["--tls-cluster", "yes", "--tls-replication", "yes"])
                .args([
                    "--tls-auth-clients",
                    if security.client_certificates {
                        "yes"
                    } else {
                        "no"
                    },
                ])
                .arg("--tls-cert-file")
                .arg(tls.join("server.pem"))
                .arg("--tls-key-file")
                .arg(tls.join("server.key"))
                .arg("--tls-ca-cert-file")
                .arg(tls.join("ca.pem"));
        }
        None => {
            command.args(["--port", &port.to_string()]);
        }
    }
    command
        .args(["--bind", "127.0.0.1"])
        .args([
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
        ])
        .args(["--cluster-node-timeout", "2000"])
        .args([
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
        ])
        .args(["--protected-mode", "no", "--daemonize", "no"])
        .arg("--dir")
        .arg(&data)
        .arg("--logfile")
        .arg(data.join("redis.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server runs (scripts/deps installs it)")
}

/// Starts a node on a free port and waits until it answers; a node that exits first
/// (another process took the port between our check and its bind) is started again on
/// another port.
fn spawn_pinging(dir: &Path, security: &Security) -> (u16, Child) {
    for _ in 0..10 {
        let port = free_port_pair();
        let mut server = spawn_server(dir, port, security);
        let mut exited = false;
        wait_until(&format!("redis-server on {port}"), || {
            exited = matches!(server.try_wait(), Ok(Some(_)));
            exited || redis_cli(port, security, &["ping"]).is_some_and(|r| r.trim() == "PONG")
        });
        if !exited {
            return (port, server);
        }
    }
    panic!("redis-server exited at start on 10 ports in a row")
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        Self::start_secured(Security::default())
    }

    /// A cluster whose nodes require AUTH with `password` (the default user's).
    pub fn start_with_password(password: &str) -> RedisCluster {
        Self::start_secured(Security {
            password: Some(password.to_string()),
            ..Security::default()
        })
    }

    /// A cluster reached as `security` says.
    pub fn start_secured(security: Security) -> RedisCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut ports = Vec::new();
        let mut servers = Vec::new();
        for _ in 0..3 {
            let (port, server) = spawn_pinging(dir.path(), &security);
            ports.push(port);
            servers.push(Some(server));
        }
        let cluster = RedisCluster {
            nodes: ports.iter().map(|p| format!("127.0.0.1:{p}")).collect(),
            ports,
            servers,
            security,
            dir,
        };
        let mut create = vec!["--cluster", "create"];
        create.extend(cluster.nodes.iter().map(String::as_str));
        create.extend(["--cluster-replicas", "0", "--cluster-yes"]);
        let created = cluster.cli(0, &create);
        assert!(created.is_some(), "redis-cli --cluster create failed");
        cluster.wait_healthy();
        cluster
    }

    /// Waits until every master says the cluster is ok (all slots served).
    pub fn wait_healthy(&self) {
        for port in &self.ports {
            wait_until(&format!("cluster_state:ok on {port}"), || {
                redis_cli(*port, &self.security, &["cluster", "info"])
                    .is_some_and(|info| info.contains("cluster_state:ok"))
            });
        }
    }

    /// Kills master `index` with SIGKILL.
    pub fn kill(&mut self, index: usize) {
        if let Some(mut server) = self.servers[index].take() {
            let _ = server.kill();
            let _ = server.wait();
        }
    }

    /// Starts master `index` again on its port, with its node config and append-only
    /// file, and waits until the cluster is whole.
    pub fn restart(&mut self, index: usize) {
        assert!(self.servers[index].is_none(), "node {index} is running");
        let port = self.ports[index];
        self.servers[index] = Some(spawn_server(self.dir.path(), port, &self.security));
        wait_until(&format!("redis-server on {port} again"), || {
            redis_cli(port, &self.security, &["ping"]).is_some_and(|reply| reply.trim() == "PONG")
        });
        self.wait_healthy();
    }

    /// Runs a command on master `index` with redis-cli (for checks outside the client
    /// under test).
    pub fn cli(&self, index: usize, args: &[&str]) -> Option<String> {
        redis_cli(self.ports[index], &self.security, args)
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for index in 0..self.servers.len() {
            self.kill(index);
        }
    }
}
