//! A throwaway Redis Cluster of three masters on loopback, one per test, so a test may
//! kill and restart a master without touching another test. Started from the
//! `redis-server` binary (`scripts/deps` installs it), joined with `redis-cli --cluster
//! create`, killed with its files when dropped. Each master keeps an append-only file
//! synced on every write, so a killed and restarted master comes back with every write
//! it acknowledged.

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

fn redis_cli(port: u16, args: &[&str]) -> Option<String> {
    let output = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .ok()?;
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

fn spawn_server(dir: &Path, port: u16) -> Child {
    let data = dir.join(port.to_string());
    std::fs::create_dir_all(&data).expect("node dir");
    Command::new("redis-server")
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

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let ports: Vec<u16> = (0..3).map(|_| free_port_pair()).collect();
        let servers = ports
            .iter()
            .map(|port| Some(spawn_server(dir.path(), *port)))
            .collect();
        let cluster = RedisCluster {
            nodes: ports.iter().map(|p| format!("127.0.0.1:{p}")).collect(),
            ports,
            servers,
            dir,
        };
        for port in &cluster.ports {
            wait_until(&format!("redis-server on {port}"), || {
                redis_cli(*port, &["ping"]).is_some_and(|reply| reply.trim() == "PONG")
            });
        }
        let mut create = vec!["--cluster", "create"];
        create.extend(cluster.nodes.iter().map(String::as_str));
        create.extend(["--cluster-replicas", "0", "--cluster-yes"]);
        let created = redis_cli(cluster.ports[0], &create);
        assert!(created.is_some(), "redis-cli --cluster create failed");
        cluster.wait_healthy();
        cluster
    }

    /// Waits until every master says the cluster is ok (all slots served).
    pub fn wait_healthy(&self) {
        for port in &self.ports {
            wait_until(&format!("cluster_state:ok on {port}"), || {
                redis_cli(*port, &["cluster", "info"])
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
        self.servers[index] = Some(spawn_server(self.dir.path(), port));
        wait_until(&format!("redis-server on {port} again"), || {
            redis_cli(port, &["ping"]).is_some_and(|reply| reply.trim() == "PONG")
        });
        self.wait_healthy();
    }

    /// Runs a command on master `index` with redis-cli (for checks outside the client
    /// under test).
    pub fn cli(&self, index: usize, args: &[&str]) -> Option<String> {
        redis_cli(self.ports[index], args)
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for index in 0..self.servers.len() {
            self.kill(index);
        }
    }
}
