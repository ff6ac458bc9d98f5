//! Test-owned `redis-server` processes: a single node a test may stop mid-run, and a
//! 3-master Redis Cluster. Each lives in its own temporary directory on free ports and
//! is killed when dropped. The binary is `REDIS_SERVER_BIN` (set by scripts/test.sh),
//! else `redis-server` from `PATH`.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One `redis-server` child process.
pub struct RedisServer {
    child: Option<Child>,
    /// The client port.
    pub port: u16,
    /// The cluster bus port (cluster nodes only).
    pub bus_port: Option<u16>,
    dir: PathBuf,
}

/// A port that was free a moment ago (the kernel picks it; the race is harmless in tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn server_bin() -> String {
    std::env::var("REDIS_SERVER_BIN").unwrap_or_else(|_| "redis-server".to_owned())
}

impl RedisServer {
    /// Starts a standalone node and waits until it answers PING.
    pub async fn start() -> Self {
        Self::spawn(false).await
    }

    async fn spawn(cluster: bool) -> Self {
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("user-api-redis-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("redis dir");
        let mut cmd = Command::new(server_bin());
        cmd.args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        let bus_port = cluster.then(free_port);
        if let Some(bus) = bus_port {
            cmd.args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-port",
                &bus.to_string(),
                "--cluster-node-timeout",
                "5000",
            ]);
        }
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!("cannot start {} (set REDIS_SERVER_BIN): {e}", server_bin())
        });
        let server = Self {
            child: Some(child),
            port,
            bus_port,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut c) = server.connection().await
                && redis::cmd("PING")
                    .query_async::<String>(&mut c)
                    .await
                    .is_ok()
            {
                return server;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on {port} did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A direct connection to this node (not through the app).
    pub async fn connection(&self) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        redis::Client::open(self.url())?
            .get_multiplexed_async_connection()
            .await
    }

    /// Kills the server at once (SIGKILL): an outage, not a shutdown.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis Cluster of masters only, slots split evenly.
pub struct RedisCluster {
    /// The nodes, in slot order.
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `masters` nodes, assigns the slots, joins them and waits until every node
    /// reports `cluster_state:ok` and knows every slot range.
    pub async fn start(masters: usize) -> Self {
        let mut nodes = Vec::new();
        for _ in 0..masters {
            nodes.push(RedisServer::spawn(true).await);
        }
        let per = 16384 / masters;
        for (i, node) in nodes.iter().enumerate() {
            let first = i * per;
            let last = if i + 1 == masters {
                16383
            } else {
                (i + 1) * per - 1
            };
            let mut c = node.connection().await.expect("cluster node");
            redis::cmd("CLUSTER")
                .arg("ADDSLOTSRANGE")
                .arg(first)
                .arg(last)
                .query_async::<()>(&mut c)
                .await
                .expect("addslotsrange");
        }
        let mut first = nodes[0].connection().await.expect("cluster node");
        for node in &nodes[1..] {
            redis::cmd("CLUSTER")
                .arg("MEET")
                .arg("127.0.0.1")
                .arg(node.port)
                .arg(node.bus_port.expect("bus port"))
                .query_async::<()>(&mut first)
                .await
                .expect("cluster meet");
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        'wait: loop {
            assert!(
                Instant::now() < deadline,
                "the test cluster did not converge"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
            for node in &nodes {
                let Ok(mut c) = node.connection().await else {
                    continue 'wait;
                };
                let info: String = match redis::cmd("CLUSTER").arg("INFO").query_async(&mut c).await
                {
                    Ok(i) => i,
                    Err(_) => continue 'wait,
                };
                let ok = info.contains("cluster_state:ok")
                    && info.contains(&format!("cluster_known_nodes:{masters}\r"));
                let slots: Vec<redis::Value> =
                    match redis::cmd("CLUSTER").arg("SLOTS").query_async(&mut c).await {
                        Ok(s) => s,
                        Err(_) => continue 'wait,
                    };
                if !ok || slots.len() != masters {
                    continue 'wait;
                }
            }
            break;
        }
        Self { nodes }
    }

    /// The seed URLs (`REDIS_CLUSTER_URLS`).
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// A cluster-aware client connection, for tests that inspect keys.
    pub async fn connection(&self) -> redis::cluster_async::ClusterConnection {
        redis::cluster::ClusterClient::new(self.urls())
            .expect("cluster client")
            .get_async_connection()
            .await
            .expect("cluster connection")
    }
}
