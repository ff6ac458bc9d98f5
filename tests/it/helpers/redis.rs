//! Test-owned Redis for the cache suites: single nodes a test may kill, save and restart on
//! the same port (with their data), and 3-master clusters made with
//! `redis-cli --cluster create`. Each server lives in its own temporary directory and is
//! killed on drop. Binary: `$REDIS_SERVER_BIN`, else `redis-server` on `PATH`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `redis-server` binary.
pub fn server_bin() -> String {
    std::env::var("REDIS_SERVER_BIN").unwrap_or_else(|_| "redis-server".to_owned())
}

/// The `redis-cli` binary (next to the server when that is a path).
pub fn cli_bin() -> String {
    let server = PathBuf::from(server_bin());
    match server.parent() {
        Some(dir) if dir.join("redis-cli").is_file() => dir.join("redis-cli").display().to_string(),
        _ => "redis-cli".to_owned(),
    }
}

fn bindable(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// What a `redis-server` is started as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Node {
    Standalone,
    /// A cluster node: its cluster bus listens on port + 10000.
    InCluster,
}

/// A port that was free a moment ago (for a cluster node, port + 10000 too).
pub fn free_port(node: Node) -> u16 {
    for _ in 0..200 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        if node == Node::Standalone || (port < 55_000 && bindable(port + 10_000)) {
            return port;
        }
    }
    panic!("no free port pair found");
}

/// One `redis-server` child process.
pub struct RedisServer {
    child: Option<Child>,
    /// The client port.
    pub port: u16,
    node: Node,
    dir: PathBuf,
    extra: Vec<String>,
}

impl RedisServer {
    /// A standalone node, answering PING when this returns.
    pub async fn start() -> Self {
        Self::start_with(Node::Standalone, &[]).await
    }

    /// A standalone node with extra `redis-server` arguments (e.g. `--requirepass`).
    pub async fn start_args(extra: &[&str]) -> Self {
        Self::start_with(Node::Standalone, extra).await
    }

    async fn start_with(node: Node, extra: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "user-api-cache-redis-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).expect("redis dir");
        let mut server = Self {
            child: None,
            port: free_port(node),
            node,
            dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        server.launch().await;
        server
    }

    async fn launch(&mut self) {
        let mut cmd = Command::new(server_bin());
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--dbfilename",
                "dump.rdb",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if self.node == Node::InCluster {
            cmd.args(["--cluster-enabled", "yes", "--cluster-config-file"])
                .arg(self.dir.join("nodes.conf"))
                .args(["--cluster-node-timeout", "5000"]);
        }
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!("cannot start {} (set REDIS_SERVER_BIN): {e}", server_bin())
        });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.cli(&["PING"]).trim() == "PONG" || self.cli(&["PING"]).contains("NOAUTH") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on {} did not start",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Runs `redis-cli -p <port> args…` and returns its output (errors included).
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(cli_bin())
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .output();
        match out {
            Ok(o) => format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => format!("redis-cli failed: {e}"),
        }
    }

    /// A direct connection to this node (not through the app).
    pub async fn conn(&self) -> ::redis::aio::MultiplexedConnection {
        connect(&self.url()).await
    }

    /// Writes the dataset to disk (`SAVE`), so a restart brings it back.
    pub fn save(&self) {
        let out = self.cli(&["SAVE"]);
        assert!(out.contains("OK"), "SAVE failed: {out}");
    }

    /// Kills the server at once (SIGKILL): an outage, not a shutdown.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and directory (loading a saved dataset).
    pub async fn restart(&mut self) {
        self.kill();
        self.launch().await;
    }

    /// Zeroes the server's statistics (`CONFIG RESETSTAT`), e.g. before counting commands.
    pub fn reset_stats(&self) {
        let out = self.cli(&["CONFIG", "RESETSTAT"]);
        assert!(out.contains("OK"), "CONFIG RESETSTAT failed: {out}");
    }

    /// `INFO commandstats` as command → calls.
    pub fn commandstats(&self) -> HashMap<String, u64> {
        let info = self.cli(&["INFO", "commandstats"]);
        info.lines()
            .filter_map(|l| {
                let rest = l.strip_prefix("cmdstat_")?;
                let (name, fields) = rest.split_once(':')?;
                let calls = fields
                    .split(',')
                    .find_map(|f| f.strip_prefix("calls="))?
                    .parse()
                    .ok()?;
                Some((name.to_owned(), calls))
            })
            .collect()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A direct connection to the Redis at `url` (not through the app).
pub async fn connect(url: &str) -> ::redis::aio::MultiplexedConnection {
    ::redis::Client::open(url)
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("test connection to redis")
}

/// A Redis Cluster of three masters (no replicas).
pub struct RedisCluster {
    /// The nodes.
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts three cluster-enabled nodes, joins them with `redis-cli --cluster create`
    /// and waits until every node reports `cluster_state:ok`.
    pub async fn start() -> Self {
        let mut nodes = Vec::new();
        for _ in 0..3 {
            nodes.push(RedisServer::start_with(Node::InCluster, &[]).await);
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new(cli_bin())
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = nodes.iter().all(|n| {
                let info = n.cli(&["CLUSTER", "INFO"]);
                info.contains("cluster_state:ok") && info.contains("cluster_known_nodes:3")
            });
            if ok {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the test cluster did not converge"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self { nodes }
    }

    /// Node `i`, to kill or restart it (a restart keeps its port, directory and
    /// `nodes.conf`, so it rejoins the cluster).
    pub fn node_mut(&mut self, i: usize) -> &mut RedisServer {
        &mut self.nodes[i]
    }

    /// Seed URLs (`REDIS_CLUSTER_URLS`).
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// A cluster-aware connection, for tests that inspect keys.
    pub async fn conn(&self) -> ::redis::cluster_async::ClusterConnection {
        ::redis::cluster::ClusterClient::new(self.urls())
            .expect("cluster client")
            .get_async_connection()
            .await
            .expect("cluster connection")
    }

    /// Zeroes every node's statistics.
    pub fn reset_stats(&self) {
        for n in &self.nodes {
            n.reset_stats();
        }
    }

    /// Calls of `cmd` summed over the nodes.
    pub fn commandstats(&self) -> HashMap<String, u64> {
        let mut total = HashMap::new();
        for n in &self.nodes {
            for (k, v) in n.commandstats() {
                *total.entry(k).or_insert(0) += v;
            }
        }
        total
    }
}

// ---- Cache-suite support ------------------------------------------------------------

use user_api::config::Config;

use super::TestApp;

/// Which store a cache test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// The shared Redis (`TEST_REDIS_URL`).
    Shared,
    /// A test-owned single node.
    Own,
    /// A test-owned 3-master cluster.
    Cluster,
    /// No Redis: the in-process store.
    Memory,
}

/// The Redis a test runs on, kept alive for the test's duration.
pub enum Target {
    Shared(String),
    Own(RedisServer),
    Cluster(RedisCluster),
    Memory,
}

impl Target {
    /// Provisions `kind`.
    pub async fn new(kind: StoreKind) -> Self {
        match kind {
            StoreKind::Shared => Self::Shared(super::redis_url()),
            StoreKind::Own => Self::Own(RedisServer::start().await),
            StoreKind::Cluster => Self::Cluster(RedisCluster::start().await),
            StoreKind::Memory => Self::Memory,
        }
    }

    /// The test-owned single node.
    pub fn server(&mut self) -> &mut RedisServer {
        match self {
            Self::Own(s) => s,
            _ => panic!("not a test-owned single node"),
        }
    }

    /// The test-owned cluster.
    pub fn cluster(&self) -> &RedisCluster {
        match self {
            Self::Cluster(cl) => cl,
            _ => panic!("not a test-owned cluster"),
        }
    }

    /// The test-owned cluster, to kill or restart its nodes.
    pub fn cluster_mut(&mut self) -> &mut RedisCluster {
        match self {
            Self::Cluster(cl) => cl,
            _ => panic!("not a test-owned cluster"),
        }
    }

    /// The URL of every node that holds keys (one, but for a cluster).
    pub fn node_urls(&self) -> Vec<String> {
        match self {
            Self::Shared(url) => vec![url.clone()],
            Self::Own(s) => vec![s.url()],
            Self::Cluster(cl) => cl.urls(),
            Self::Memory => panic!("the in-process store has no Redis nodes"),
        }
    }
}

/// The raw value of a cache key, read through the app's own store.
pub async fn raw(app: &TestApp, key: &str) -> Option<String> {
    app.state.cache.store().get(key).await.expect("store get")
}

/// The remaining TTL of a cache key, read through the app's own store; it must have one.
pub async fn raw_ttl(app: &TestApp, key: &str) -> Duration {
    app.state
        .cache
        .store()
        .ttl(key)
        .await
        .expect("store ttl")
        .unwrap_or_else(|| panic!("{key} has no TTL"))
}

/// The write-state companion of an entry key (same hash slot).
pub fn state_key(key: &str) -> String {
    format!("{{{key}}}:state")
}

/// The tombstone companion of an entry key (same hash slot).
pub fn missing_key(key: &str) -> String {
    format!("{{{key}}}:missing")
}

/// True when `key` was invalidated: the entry is gone and a write state stands beside it.
pub async fn is_invalidated(app: &TestApp, key: &str) -> bool {
    raw(app, key).await.is_none() && raw(app, &state_key(key)).await.is_some()
}

/// True when a tombstone stands beside `key` and the entry key itself is absent.
pub async fn is_tombstoned(app: &TestApp, key: &str) -> bool {
    raw(app, key).await.is_none() && raw(app, &missing_key(key)).await.is_some()
}

/// Every cache-related command (`cache:*`, `{cache:*}:*` and `metrics:cache:*` keys) clients sent since
/// `slowlog_reset` (not those scripts ran inside), oldest first, as argument lists.
pub async fn cache_commands(server: &RedisServer) -> Vec<Vec<String>> {
    let mut c = server.conn().await;
    let entries: Vec<::redis::Value> = ::redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(-1)
        .query_async(&mut c)
        .await
        .expect("slowlog get");
    let mut out: Vec<Vec<String>> = entries
        .into_iter()
        .filter_map(|e| {
            let ::redis::Value::Array(fields) = e else {
                return None;
            };
            // Commands run inside a script are logged with client "?:0": not round trips.
            let client = fields
                .get(4)
                .cloned()
                .and_then(|v| ::redis::from_redis_value::<String>(v).ok());
            if client.as_deref() == Some("?:0") {
                return None;
            }
            let ::redis::Value::Array(args) = fields.get(3)?.clone() else {
                return None;
            };
            Some(
                args.into_iter()
                    .filter_map(|a| ::redis::from_redis_value::<String>(a).ok())
                    .collect::<Vec<_>>(),
            )
        })
        .filter(|args| {
            args.iter().any(|a| {
                a.starts_with("cache:")
                    || a.starts_with("{cache:")
                    || a.starts_with("metrics:cache:")
            })
        })
        .collect();
    out.reverse();
    out
}

/// Makes the server log every command (SLOWLOG) and forgets what it logged so far.
pub async fn slowlog_reset(server: &RedisServer) {
    let mut c = server.conn().await;
    for (name, value) in [("slowlog-log-slower-than", 0), ("slowlog-max-len", 100_000)] {
        let _: () = ::redis::cmd("CONFIG")
            .arg("SET")
            .arg(name)
            .arg(value)
            .query_async(&mut c)
            .await
            .expect("config set");
    }
    let _: () = ::redis::cmd("SLOWLOG")
        .arg("RESET")
        .query_async(&mut c)
        .await
        .expect("slowlog reset");
}

/// A TCP proxy that delays every chunk by a fixed time in each direction: a Redis far away
/// for one instance while another talks to it directly. Dropping it stops accepting.
pub struct DelayProxy {
    /// The local port to connect to.
    pub port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl DelayProxy {
    /// Proxies `127.0.0.1:<port>` to `upstream` (`host:port`) with `delay` each way.
    pub async fn start(upstream: String, delay: Duration) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let Ok(outbound) = tokio::net::TcpStream::connect(&upstream).await else {
                    continue;
                };
                let (ri, wi) = inbound.into_split();
                let (ro, wo) = outbound.into_split();
                tokio::spawn(pump(ri, wo, delay));
                tokio::spawn(pump(ro, wi, delay));
            }
        });
        Self { port, task }
    }

    /// A proxy with `delay` each way in front of the Redis node `config` uses, and a copy of
    /// `config` that reaches it through the proxy (another instance of the same service,
    /// with its Redis far away).
    pub async fn in_front_of(config: &Config, delay: Duration) -> (Self, Config) {
        let url = config.redis_url.as_deref().expect("a single Redis node");
        let proxy = Self::start(host_port(url), delay).await;
        let mut far = config.clone();
        far.redis_url = Some(proxy.url_for(url));
        (proxy, far)
    }

    /// `url` with its host and port replaced by this proxy's.
    fn url_for(&self, url: &str) -> String {
        let (scheme, rest) = url.split_once("://").expect("scheme");
        let (auth, hostpath) = match rest.rsplit_once('@') {
            Some((a, h)) => (format!("{a}@"), h),
            None => (String::new(), rest),
        };
        let path = hostpath.find('/').map(|i| &hostpath[i..]).unwrap_or("");
        format!("{scheme}://{auth}127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `host:port` of a redis URL.
fn host_port(url: &str) -> String {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let hostpath = rest.rsplit_once('@').map(|(_, h)| h).unwrap_or(rest);
    let hp = hostpath.split('/').next().unwrap_or(hostpath);
    if hp.contains(':') {
        hp.to_owned()
    } else {
        format!("{hp}:6379")
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    tokio::spawn(async move {
        while let Some((at, buf)) = rx.recv().await {
            tokio::time::sleep_until(at + delay).await;
            if to.write_all(&buf).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    });
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx
                    .send((tokio::time::Instant::now(), buf[..n].to_vec()))
                    .is_err()
                {
                    break;
                }
            }
        }
    }
}
