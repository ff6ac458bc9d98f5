//! user-api: user profiles over PostgreSQL or SQLite, with a Redis cache and rate limits.
//!
//! `App::build` wires everything from a `Config` and binds the listener, so tests can
//! start the real service on port 0 and talk to it over HTTP.
//!
//! Reference: `docs/architecture.md`.

pub mod admission;
pub mod api;
pub mod auth;
pub mod cache;
pub mod config;
pub mod db;
pub mod domain;
pub mod error;
pub mod ratelimit;
pub mod redis;
pub mod seed;
pub mod server;
pub mod service;
pub mod state;
pub mod store;
pub mod telemetry;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::auth::Authenticator;
use crate::cache::{Cache, CacheSettings};
use crate::config::Config;
use crate::db::PoolOptions;
use crate::service::{EventsOut, LoginRecorder, ProfileService};
use crate::state::AppState;

/// Longest wait, once serving has ended, for the background tasks' last writes.
pub const BACKGROUND_GRACE: Duration = Duration::from_secs(5);
/// Longest wait for connections still busy after `server.shutdown_grace_secs` to close.
pub const ABORT_GRACE: Duration = Duration::from_secs(1);
/// Longest wait for the database pool to take its connections back and close them.
pub const POOL_CLOSE_GRACE: Duration = Duration::from_secs(3);

/// How a shutdown ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Every step finished within its bound: nothing was lost.
    Clean,
    /// A step passed its bound; what it still held was logged and left behind.
    Forced,
}

/// A built, bound, not yet serving instance.
pub struct App {
    listener: TcpListener,
    router: axum::Router,
    state: AppState,
    shutdown: CancellationToken,
    /// Stops the background tasks: cancelled only once serving has ended, so what the
    /// last requests counted and recorded is still written.
    background_stop: CancellationToken,
    /// Background tasks (flushers, drainer, login writer), joined at shutdown.
    background: Vec<service::Named>,
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration may not serve (dev mode where it is refused).
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Db(#[from] db::DbError),
    #[error(transparent)]
    Auth(#[from] auth::AuthSetupError),
    /// A Redis URL that does not parse (nothing is connected at start).
    #[error("invalid redis configuration: {0}")]
    Redis(#[from] redis::SetupError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Pool settings from the configuration.
pub fn pool_options(config: &Config) -> PoolOptions {
    PoolOptions {
        max_connections: config.database.max_connections,
        min_connections: config.database.min_connections,
        acquire_timeout: Duration::from_millis(config.database.acquire_timeout_ms),
        statement_timeout: Duration::from_millis(config.database.statement_timeout_ms),
    }
}

impl App {
    /// Connects the stores, runs migrations, loads keys and binds the listener.
    pub async fn build(config: Config) -> Result<Self, StartError> {
        config.check_serve()?;
        let config = Arc::new(config);
        let repo = db::connect(&config.database_url, &pool_options(&config)).await?;
        repo.migrate().await?;
        tracing::info!(backend = repo.backend(), "database ready");
        let auth = Authenticator::from_config(&config.jwt).await?;
        if config.uses_embedded_store() {
            tracing::warn!(
                "no REDIS_URL or REDIS_CLUSTER_URLS: using the in-process store; cache and rate limits are per instance"
            );
        }
        // Lazily connected: the service starts (and serves from the database) while Redis is down.
        let redis = redis::RedisClient::from_config(&config)?;
        if let Some(client) = &redis {
            client.connect_in_background();
        }
        // Each backend is chosen once, here: Redis (single or cluster) or in process.
        let cache_store: Arc<dyn cache::CacheStore> = match &redis {
            Some(client) => Arc::new(redis::RedisCacheStore::new(client.clone())),
            None => Arc::new(cache::MemoryCacheStore::new()),
        };
        let counters = redis.clone().map(|client| {
            Arc::new(redis::RedisCounters::new(client)) as Arc<dyn ratelimit::CounterStore>
        });
        let cache = Cache::new(cache_store, CacheSettings::from_config(&config));
        let limiter = ratelimit::Limiter::new(&config.rate_limits, counters);
        let admission = admission::Admission::new(
            redis.clone(),
            limiter.clone(),
            cache.clone(),
            config.auth.revocation_unavailable,
        );
        // Another instance takes over an event only well after its writer's own drain pass
        // would have retired it, so normal operation publishes each event once.
        let handoff = Duration::from_secs(config.events.handoff_secs)
            .max(Duration::from_millis(config.redis.outbox_poll_ms) * 3);
        let profiles = ProfileService::new(repo, cache.clone(), config.database.background_share())
            .with_events(EventsOut::new(redis.clone(), handoff));
        let shutdown = CancellationToken::new();
        let background_stop = CancellationToken::new();
        let (logins, login_writer) =
            LoginRecorder::start(profiles.clone(), &config.logins, background_stop.clone());
        let state = AppState::new(state::Services {
            logins,
            profiles,
            auth,
            metrics: {
                let handle = telemetry::metrics_handle();
                telemetry::register_known_series();
                handle
            },
            config: config.clone(),
            cache: cache.clone(),
            limiter,
            admission,
            redis,
        });
        let listener = TcpListener::bind(config.addr)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.addr,
                source,
            })?;
        // Invalidations left in the outbox by a crashed instance are applied before this
        // one reads the cache; bounded, and retried by the drainer when Redis is down.
        if let Err(e) = state.profiles.drain_outbox().await {
            tracing::warn!(error = %e, "pending cache invalidations not applied yet; reading the database until they are");
        }
        let mut background =
            service::spawn_background(&state.profiles, state.redis.as_ref(), &background_stop);
        background.push(("login writer", login_writer));
        Ok(Self {
            router: api::router(state.clone()),
            listener,
            state,
            shutdown,
            background_stop,
            background,
        })
    }

    /// The bound address (port 0 resolved).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.local_addr().port()
    }

    /// The shared state (tests inspect it).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Cancelling this token stops the server gracefully.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Serves until the shutdown token is cancelled. Then every step is bounded, so the
    /// process always ends on its own (an orchestrator's SIGKILL is never the way out):
    ///
    /// 1. no new connections; requests in flight finish (under the `[server]` connection
    ///    limits, see [`server`]) for at most `server.shutdown_grace_secs`, after which
    ///    their connections are closed (at most [`ABORT_GRACE`] more);
    /// 2. the background tasks write what they hold (hit/miss counts, login records, a
    ///    last outbox drain) and end, for at most [`BACKGROUND_GRACE`]; the rest are stopped;
    /// 3. the pool closes, for at most [`POOL_CLOSE_GRACE`].
    ///
    /// A step past its bound logs what is still held and the next step goes on; the
    /// answer says whether any did.
    pub async fn run_until_stopped(self) -> std::io::Result<Stopped> {
        let config = &self.state.config;
        let mut limits = server::ConnLimits::from_config(&config.server);
        // SQLite holds the database, its WAL and its shared memory per connection.
        let per_db_connection = if config.database_url.starts_with("sqlite") {
            3
        } else {
            1
        };
        let database_fds = u64::from(config.database.max_connections) * per_db_connection;
        limits.max_connections =
            server::fit_descriptor_limit(limits.max_connections, database_fds).max_connections;
        let grace = Duration::from_secs(config.server.shutdown_grace_secs);
        let shutdown = self.shutdown.clone();
        let abort = CancellationToken::new();
        let serving = server::serve(
            self.listener,
            self.router,
            limits,
            server::Exempt::from_config(&config.rate_limits),
            shutdown.clone(),
            abort.clone(),
        );
        tokio::pin!(serving);
        let mut stopped = Stopped::Clean;
        let served = tokio::select! {
            r = &mut serving => r,
            _ = shutdown.cancelled() => {
                match tokio::time::timeout(grace, &mut serving).await {
                    Ok(r) => r,
                    Err(_) => {
                        stopped = Stopped::Forced;
                        tracing::warn!(
                            grace_secs = grace.as_secs(),
                            "requests still in flight after the grace period; closing their connections"
                        );
                        abort.cancel();
                        match tokio::time::timeout(ABORT_GRACE, &mut serving).await {
                            Ok(r) => r,
                            Err(_) => {
                                tracing::warn!("connections still open after being closed; leaving them");
                                Ok(())
                            }
                        }
                    }
                }
            }
        };
        self.shutdown.cancel();
        self.background_stop.cancel();
        if !join_background(self.background).await {
            stopped = Stopped::Forced;
        }
        let repo = self.state.profiles.repo();
        if tokio::time::timeout(POOL_CLOSE_GRACE, repo.close())
            .await
            .is_err()
        {
            stopped = Stopped::Forced;
            let pool = repo.pool_stats();
            tracing::warn!(
                in_use = pool.size.saturating_sub(pool.idle),
                open = pool.size,
                bound_secs = POOL_CLOSE_GRACE.as_secs(),
                "database connections still in use when the pool had to close; leaving them"
            );
        }
        match stopped {
            Stopped::Clean => tracing::info!("stopped"),
            Stopped::Forced => {
                tracing::warn!("stopped, with the work logged above left unfinished")
            }
        }
        served.map(|()| stopped)
    }
}

/// Waits at most [`BACKGROUND_GRACE`] for the background tasks; stops and names those
/// still running then. True when all finished.
async fn join_background(tasks: Vec<service::Named>) -> bool {
    let deadline = tokio::time::Instant::now() + BACKGROUND_GRACE;
    let mut unfinished = Vec::new();
    for (name, mut task) in tasks {
        if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
            task.abort();
            unfinished.push(name);
        }
    }
    if !unfinished.is_empty() {
        tracing::warn!(
            tasks = ?unfinished,
            bound_secs = BACKGROUND_GRACE.as_secs(),
            "background tasks still running after their bound; stopped, what they held is lost"
        );
    }
    unfinished.is_empty()
}
