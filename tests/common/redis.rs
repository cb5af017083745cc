//! A throwaway Redis Cluster of three masters on loopback, one per test, so a test may
//! kill and restart a master without touching another test. Started from the
//! `redis-server` binary (`scripts/deps` installs it), joined with `redis-cli --cluster
//! create`, killed with its files when dropped. Each master keeps an append-only file
//! synced on every write, so a killed and restarted master comes back with every write
//! it acknowledged. [`RedisCluster::start_with_password`] starts one that requires AUTH
//! (`requirepass`).

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
    /// The `requirepass` of every node, if any.
    password: Option<String>,
    dir: TempDir,
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

fn redis_cli(port: u16, password: Option<&str>, args: &[&str]) -> Option<String> {
    let mut command = Command::new("redis-cli");
    command.args(["-h", "127.0.0.1", "-p", &port.to_string()]);
    if let Some(password) = password {
        command.args(["-a", password, "--no-auth-warning"]);
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

fn spawn_server(dir: &Path, port: u16, password: Option<&str>) -> Child {
    let data = dir.join(port.to_string());
    std::fs::create_dir_all(&data).expect("node dir");
    let mut command = Command::new("redis-server");
    if let Some(password) = password {
        command.args(["--requirepass", password, "--masterauth", password]);
    }
    command
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
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
fn spawn_pinging(dir: &Path, password: Option<&str>) -> (u16, Child) {
    for _ in 0..10 {
        let port = free_port_pair();
        let mut server = spawn_server(dir, port, password);
        let mut exited = false;
        wait_until(&format!("redis-server on {port}"), || {
            exited = matches!(server.try_wait(), Ok(Some(_)));
            exited || redis_cli(port, password, &["ping"]).is_some_and(|r| r.trim() == "PONG")
        });
        if !exited {
            return (port, server);
        }
    }
    panic!("redis-server exited at start on 10 ports in a row")
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        Self::start_on(None)
    }

    /// A cluster whose nodes require AUTH with `password` (the default user's).
    pub fn start_with_password(password: &str) -> RedisCluster {
        Self::start_on(Some(password.to_string()))
    }

    fn start_on(password: Option<String>) -> RedisCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut ports = Vec::new();
        let mut servers = Vec::new();
        for _ in 0..3 {
            let (port, server) = spawn_pinging(dir.path(), password.as_deref());
            ports.push(port);
            servers.push(Some(server));
        }
        let cluster = RedisCluster {
            nodes: ports.iter().map(|p| format!("127.0.0.1:{p}")).collect(),
            ports,
            servers,
            password,
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
                redis_cli(*port, self.password.as_deref(), &["cluster", "info"])
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
        let password = self.password.as_deref();
        self.servers[index] = Some(spawn_server(self.dir.path(), port, password));
        wait_until(&format!("redis-server on {port} again"), || {
            redis_cli(port, password, &["ping"]).is_some_and(|reply| reply.trim() == "PONG")
        });
        self.wait_healthy();
    }

    /// Runs a command on master `index` with redis-cli (for checks outside the client
    /// under test).
    pub fn cli(&self, index: usize, args: &[&str]) -> Option<String> {
        redis_cli(self.ports[index], self.password.as_deref(), args)
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for index in 0..self.servers.len() {
            self.kill(index);
        }
    }
}
