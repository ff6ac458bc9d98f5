//! The Redis connection layer shared by the cache and the rate limiter.
//!
//! One [`RedisClient`] per process talks to a single node (`REDIS_URL`, through a
//! `ConnectionManager`) or a cluster (`REDIS_CLUSTER_URLS`, through the async cluster
//! connection). The connection is made lazily, on the first call, so the service starts
//! while Redis is down. Every call runs under `tokio::time::timeout` (redis-rs' own
//! timeouts have gaps during outages) and a circuit breaker: after `breaker_failures`
//! consecutive timeouts or I/O errors every call fails at once with
//! [`StoreError::CircuitOpen`] for `breaker_cooldown_ms`, then one probe goes through and
//! its success closes the breaker. Logical errors (WRONGTYPE, NOSCRIPT, …) prove Redis is
//! answering and never open it.
//!
//! Scripts: [`RedisClient::run_script`] sends `EVALSHA` and, on `NOSCRIPT`, loads the
//! script and retries, inside the same timeout. Inside a pipeline use
//! [`RedisClient::add_script`] (or register the script with
//! [`RedisClient::register_script`] and use `Pipeline::invoke_script`, which alone does not
//! handle `NOSCRIPT`): [`RedisClient::query_pipeline`] then loads the pipeline's scripts and
//! replays the pipeline once when the server answers `NOSCRIPT`. Because the replay re-runs
//! the pipeline's other commands too, pipelines that carry scripts must otherwise hold only
//! idempotent commands (GET, SET with a fixed value, …). A script that failed with
//! `NOSCRIPT` did not run, so the script itself is never applied twice.
//!
//! On a cluster a pipeline must address a single slot (group keys with redis-rs'
//! `cluster_routing::Slot::for_key`).

mod breaker;
pub mod cache_store;
pub mod counters;
pub mod pubsub;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use ::redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use ::redis::cluster::ClusterClient;
use ::redis::cluster_async::ClusterConnection;
use ::redis::{
    Cmd, ErrorKind, FromRedisValue, Pipeline, RedisError, RedisFuture, Script, ServerErrorKind,
    Value,
};
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};

use crate::config::Config;
use breaker::Breaker;

pub use cache_store::RedisCacheStore;
pub use counters::RedisCounters;
pub use pubsub::{Incoming, Subscriber};

pub use crate::store::StoreError;

impl From<RedisError> for StoreError {
    fn from(e: RedisError) -> Self {
        Self::Redis {
            unreachable: is_transport(&e),
            message: e.to_string(),
        }
    }
}

/// A Redis setting the client cannot use (a URL that does not parse). Nothing is
/// connected at start, so this is the only Redis error start-up can meet.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SetupError(#[from] RedisError);

/// A live connection of either kind; both multiplex, so clones share one socket set.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// What to connect to (boxed: the cluster client is large and built once).
enum Target {
    Single(Box<::redis::Client>),
    Cluster(Box<ClusterClient>),
}

type ConnectFuture = Shared<BoxFuture<'static, Result<Conn, RedisError>>>;

/// The lazily made connection; reset to `Empty` when a connection attempt fails.
enum ConnState {
    Empty,
    Connecting(ConnectFuture),
    Ready(Conn),
}

struct ClientInner {
    target: Target,
    conn: Mutex<ConnState>,
    breaker: Breaker,
    timeout: Duration,
    connect_timeout: Duration,
    /// Scripts that may appear in pipelines, by SHA1, so `NOSCRIPT` can be repaired.
    scripts: Mutex<HashMap<String, Script>>,
    /// Where the event subscriber connects: the node, or each cluster seed in turn.
    pubsub_targets: Vec<::redis::Client>,
}

/// A lazily connected Redis (single node or cluster) behind a per-call timeout and a circuit breaker.
#[derive(Clone)]
pub struct RedisClient {
    inner: Arc<ClientInner>,
}

impl std::fmt::Debug for RedisClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the URL: it may carry a password.
        f.debug_struct("RedisClient")
            .field("cluster", &self.is_cluster())
            .finish_non_exhaustive()
    }
}

impl RedisClient {
    /// `None` when neither REDIS_URL nor REDIS_CLUSTER_URLS is set. Never connects here (the
    /// service must start while Redis is down); invalid URLs are an error.
    pub fn from_config(config: &Config) -> Result<Option<Self>, SetupError> {
        let mut pubsub_targets = Vec::new();
        let target = if let Some(url) = &config.redis_url {
            let client = ::redis::Client::open(url.as_str())?;
            pubsub_targets.push(client.clone());
            Target::Single(Box::new(client))
        } else if !config.redis_cluster_urls.is_empty() {
            // Cluster PUBLISH reaches every node, so a plain connection to any seed hears
            // every message.
            for url in &config.redis_cluster_urls {
                pubsub_targets.push(::redis::Client::open(url.as_str())?);
            }
            let redis = &config.redis;
            let client =
                ClusterClient::builder(config.redis_cluster_urls.iter().map(String::as_str))
                    .connection_timeout(Duration::from_millis(redis.connect_timeout_ms))
                    .response_timeout(Duration::from_millis(redis.connect_timeout_ms))
                    // Our own timeout bounds every call; long internal retries would only
                    // keep failed requests queued inside the client.
                    .retries(2)
                    .min_retry_wait(10)
                    .max_retry_wait(100)
                    .build()?;
            Target::Cluster(Box::new(client))
        } else {
            return Ok(None);
        };
        let redis = &config.redis;
        Ok(Some(Self {
            inner: Arc::new(ClientInner {
                target,
                conn: Mutex::new(ConnState::Empty),
                breaker: Breaker::new(
                    redis.breaker_failures,
                    Duration::from_millis(redis.breaker_cooldown_ms),
                    redis.timeout(),
                ),
                timeout: redis.timeout(),
                connect_timeout: Duration::from_millis(redis.connect_timeout_ms.max(1)),
                scripts: Mutex::new(HashMap::new()),
                pubsub_targets,
            }),
        }))
    }

    /// `PUBLISH channel payload` under the timeout and breaker (on a cluster any node
    /// takes it and broadcasts it); answers how many subscribers received it.
    pub async fn publish(&self, channel: &str, payload: &str) -> Result<u64, StoreError> {
        self.query(::redis::cmd("PUBLISH").arg(channel).arg(payload))
            .await
    }

    /// A subscriber with a connection of its own (never the shared one: a subscribed
    /// connection can send nothing else).
    pub fn subscriber(&self) -> Subscriber {
        Subscriber::new(
            self.inner.pubsub_targets.clone(),
            self.inner.connect_timeout,
        )
    }

    /// True for a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.inner.target, Target::Cluster(_))
    }

    /// False while the breaker is open (callers skip Redis entirely).
    pub fn is_available(&self) -> bool {
        self.inner.breaker.is_available()
    }

    /// True while the breaker is open or probing (for `/ready`).
    pub fn breaker_open(&self) -> bool {
        self.inner.breaker.is_open()
    }

    /// Starts connecting now, without waiting (start-up warms the connection so the first
    /// requests need not pay for it; a failure is retried on first use).
    pub fn connect_in_background(&self) {
        let attempt = self.inner.connection();
        tokio::spawn(async move {
            let _ = attempt.await;
        });
    }

    /// True once a connection has been established (it may have failed since).
    pub fn is_connected(&self) -> bool {
        let conn = self.inner.conn.lock().unwrap_or_else(|p| p.into_inner());
        matches!(*conn, ConnState::Ready(_))
    }

    /// The per-call timeout.
    pub fn timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// `PING` under the timeout and breaker: true when Redis answered.
    pub async fn ping(&self) -> bool {
        self.query::<String>(&::redis::cmd("PING")).await.is_ok()
    }

    /// One command under the timeout and breaker.
    pub async fn query<T: FromRedisValue + Send>(&self, cmd: &Cmd) -> Result<T, StoreError> {
        self.call(|mut c| async move { cmd.query_async(&mut c).await })
            .await
    }

    /// The server's `maxmemory-policy` (`CONFIG GET`); `None` when it cannot be read
    /// (Redis down, or `CONFIG` disabled as on some managed services).
    pub async fn eviction_policy(&self) -> Option<String> {
        let reply: HashMap<String, String> = self
            .query(::redis::cmd("CONFIG").arg("GET").arg("maxmemory-policy"))
            .await
            .ok()?;
        reply.get("maxmemory-policy").cloned()
    }

    /// One pipeline (one round trip on a single node) under the timeout and breaker. When the
    /// server answers `NOSCRIPT` for a registered script (see [`Self::add_script`]), the
    /// scripts are loaded and the pipeline replayed once, within the same timeout.
    pub async fn query_pipeline<T: FromRedisValue + Send>(
        &self,
        pipe: &Pipeline,
    ) -> Result<T, StoreError> {
        self.call(|mut c| async move {
            match pipe.query_async::<T>(&mut c).await {
                Err(e) if is_noscript(&e) => {
                    let scripts = self.scripts_in(pipe);
                    if scripts.is_empty() {
                        return Err(e);
                    }
                    for s in &scripts {
                        s.load_async(&mut c).await?;
                    }
                    pipe.query_async::<T>(&mut c).await
                }
                other => other,
            }
        })
        .await
    }

    /// EVALSHA of a script loaded once; on NOSCRIPT it loads it and retries (also within the timeout).
    pub async fn run_script<T: FromRedisValue + Send>(
        &self,
        script: &Script,
        keys: &[String],
        args: &[String],
    ) -> Result<T, StoreError> {
        let mut invocation = script.prepare_invoke();
        for k in keys {
            invocation.key(k);
        }
        for a in args {
            invocation.arg(a);
        }
        let invocation = &invocation;
        self.call(|mut c| async move { invocation.invoke_async(&mut c).await })
            .await
    }

    /// Remembers `script` so that [`Self::query_pipeline`] can load it when a pipeline that
    /// invokes it (`Pipeline::invoke_script`) meets `NOSCRIPT`.
    pub fn register_script(&self, script: &Script) {
        let mut map = self.inner.scripts.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(script.get_hash().to_owned())
            .or_insert_with(|| script.clone());
    }

    /// Appends `EVALSHA script keys args` to `pipe` (and registers the script): the way to
    /// put a script into a pipeline sent with [`Self::query_pipeline`].
    pub fn add_script<'p>(
        &self,
        pipe: &'p mut Pipeline,
        script: &Script,
        keys: &[String],
        args: &[String],
    ) -> &'p mut Pipeline {
        self.register_script(script);
        pipe.cmd("EVALSHA")
            .arg(script.get_hash())
            .arg(keys.len())
            .arg(keys)
            .arg(args)
    }

    /// The registered scripts that `pipe` invokes by SHA.
    fn scripts_in(&self, pipe: &Pipeline) -> Vec<Script> {
        let map = self.inner.scripts.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<Script> = Vec::new();
        for cmd in pipe.cmd_iter() {
            let mut args = cmd.args_iter();
            let is_evalsha = matches!(args.next(),
                Some(::redis::Arg::Simple(name)) if name.eq_ignore_ascii_case(b"EVALSHA"));
            if !is_evalsha {
                continue;
            }
            if let Some(::redis::Arg::Simple(sha)) = args.next() {
                let sha = String::from_utf8_lossy(sha);
                if let Some(s) = map.get(sha.as_ref())
                    && !out.iter().any(|o| o.get_hash() == s.get_hash())
                {
                    out.push(s.clone());
                }
            }
        }
        out
    }

    /// Runs `f` on a connection under the breaker and the timeout, and books the outcome.
    async fn call<'a, T, F, Fut>(&'a self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(Conn) -> Fut + 'a,
        Fut: Future<Output = Result<T, RedisError>> + 'a,
    {
        if self.inner.breaker.admit().is_none() {
            metrics::counter!("redis_errors_total", "kind" => "circuit_open").increment(1);
            return Err(StoreError::CircuitOpen);
        }
        let inner = &self.inner;
        let outcome = tokio::time::timeout(inner.timeout, async {
            let conn = inner.connection().await?;
            f(conn).await
        })
        .await;
        match outcome {
            Ok(Ok(v)) => {
                inner.breaker.on_success();
                Ok(v)
            }
            Ok(Err(e)) if is_transport(&e) => {
                metrics::counter!("redis_errors_total", "kind" => "io").increment(1);
                self.on_transport_failure();
                Err(StoreError::from(e))
            }
            Ok(Err(e)) => {
                // Redis answered: it is up, whatever it thinks of the command.
                metrics::counter!("redis_errors_total", "kind" => "logical").increment(1);
                inner.breaker.on_success();
                Err(StoreError::from(e))
            }
            Err(_) => {
                metrics::counter!("redis_errors_total", "kind" => "timeout").increment(1);
                self.on_transport_failure();
                Err(StoreError::Timeout)
            }
        }
    }

    fn on_transport_failure(&self) {
        self.inner.breaker.on_failure();
        // A cluster connection that lost every node may not find its way back on its own;
        // once the breaker is open, the next probe builds a fresh one. (The single-node
        // ConnectionManager reconnects by itself.)
        if self.is_cluster() && self.inner.breaker.is_open() {
            let mut conn = self.inner.conn.lock().unwrap_or_else(|p| p.into_inner());
            if matches!(*conn, ConnState::Ready(_)) {
                *conn = ConnState::Empty;
            }
        }
    }
}

impl ClientInner {
    /// The current connection, starting a connection attempt when there is none. The
    /// attempt runs in its own task, so a caller that gives up (timeout) does not cancel
    /// it and the next caller finds it done.
    fn connection(self: &Arc<Self>) -> impl Future<Output = Result<Conn, RedisError>> + use<> {
        let fut = {
            let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
            match &*conn {
                ConnState::Ready(c) => {
                    return futures::future::Either::Left(std::future::ready(Ok(c.clone())));
                }
                ConnState::Connecting(f) => f.clone(),
                ConnState::Empty => {
                    let f = self.connect_future();
                    *conn = ConnState::Connecting(f.clone());
                    let driver = f.clone();
                    let weak: Weak<ClientInner> = Arc::downgrade(self);
                    tokio::spawn(async move {
                        let result = driver.await;
                        let Some(inner) = weak.upgrade() else { return };
                        let mut conn = inner.conn.lock().unwrap_or_else(|p| p.into_inner());
                        if matches!(*conn, ConnState::Connecting(_)) {
                            *conn = match result {
                                Ok(c) => ConnState::Ready(c),
                                Err(_) => ConnState::Empty,
                            };
                        }
                    });
                    f
                }
            }
        };
        futures::future::Either::Right(fut)
    }

    fn connect_future(&self) -> ConnectFuture {
        let connect_timeout = self.connect_timeout;
        let fut: BoxFuture<'static, Result<Conn, RedisError>> = match &self.target {
            Target::Single(client) => {
                let client = (**client).clone();
                async move {
                    let config = ConnectionManagerConfig::new()
                        .set_connection_timeout(Some(connect_timeout))
                        .set_number_of_retries(1)
                        .set_min_delay(Duration::from_millis(20))
                        .set_max_delay(Duration::from_millis(200));
                    let attempt = ConnectionManager::new_with_config(client, config);
                    match tokio::time::timeout(connect_timeout * 2, attempt).await {
                        Ok(r) => r.map(Conn::Single),
                        Err(_) => Err(connect_timed_out()),
                    }
                }
                .boxed()
            }
            Target::Cluster(client) => {
                let client = (**client).clone();
                async move {
                    match tokio::time::timeout(connect_timeout * 2, client.get_async_connection())
                        .await
                    {
                        Ok(r) => r.map(Conn::Cluster),
                        Err(_) => Err(connect_timed_out()),
                    }
                }
                .boxed()
            }
        };
        fut.shared()
    }
}

fn connect_timed_out() -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "redis connection attempt timed out",
    ))
}

/// True for failures that mean Redis is unreachable or unable to serve: these feed the
/// breaker. Logical errors (wrong type, unknown script, bad arguments) do not.
pub fn is_transport(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || matches!(
            e.kind(),
            ErrorKind::ClusterConnectionNotFound
                | ErrorKind::AuthenticationFailed
                | ErrorKind::Server(
                    ServerErrorKind::ClusterDown
                        | ServerErrorKind::MasterDown
                        | ServerErrorKind::TryAgain
                        | ServerErrorKind::BusyLoading
                        | ServerErrorKind::ReadOnly
                )
        )
}

/// True when the server did not know a script's SHA (in a single reply or a pipeline).
fn is_noscript(e: &RedisError) -> bool {
    e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) || e.to_string().contains("NOSCRIPT")
}
