//! Configuration: defaults, then the TOML file named by `USER_API_CONFIG`, then
//! `USER_API__<TABLE>__<KEY>` variables, then the documented plain variables
//! (`DATABASE_URL`, `REDIS_URL`, …). Validated once, at load, naming the bad key.
//!
//! One file per table (`[server]` is `server.rs`, …), each struct with its defaults and
//! its checks; [`env`] holds the plain variables' table and its rule, `stack_env.rs` the
//! stack's names (`PORT`, `LOG_LEVEL`, …), `load.rs` the order of the layers.
//!
//! Reference: `docs/configuration.md`.

mod auth;
mod cache;
mod database;
mod env;
mod events;
mod jwt;
mod load;
mod logins;
mod prewarm;
mod rate_limits;
mod redis;
mod server;
mod stack_env;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

pub use auth::{AuthConfig, RevocationUnavailable};
pub use cache::CacheConfig;
pub use database::DatabaseConfig;
pub use env::{ENV_VARS, EnvKind, EnvVar, KEY_PREFIX, parse_bool};
pub use events::EventsConfig;
pub use jwt::JwtConfig;
pub use logins::LoginsConfig;
pub use prewarm::PrewarmConfig;
pub use rate_limits::{FailMode, RateLimitConfig, parse_proxy};
pub use redis::RedisConfig;
pub use server::{ServerConfig, cors_origin, log_directive};

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A key has a value of the wrong type or shape (figment names the key).
    #[error("invalid configuration: {0}")]
    Parse(#[from] Box<figment::Error>),
    /// A key parsed but its value is not acceptable.
    #[error("invalid configuration: `{key}` {reason}")]
    Invalid { key: &'static str, reason: String },
    /// An environment variable is set to something unusable (named, value not shown).
    #[error("invalid configuration: `{name}` {reason}")]
    Variable { name: String, reason: String },
}

impl ConfigError {
    fn variable(name: &str, reason: &str) -> Self {
        Self::Variable {
            name: name.to_owned(),
            reason: reason.to_owned(),
        }
    }
}

/// Everything the service reads at start-up. Its `Debug` form hides the passwords in
/// the database and Redis URLs.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `USER_API_ADDR`. Default `0.0.0.0:8001`, or `127.0.0.1:8001` in dev mode.
    pub addr: SocketAddr,
    /// `USER_API_DEV_MODE=1`: dev mode (no key source) is wanted even on a non-loopback
    /// address or with PostgreSQL.
    pub dev_mode: bool,
    /// `DATABASE_URL`: `postgres://…` or `sqlite://path`.
    pub database_url: String,
    /// `REDIS_URL`: a single Redis node.
    pub redis_url: Option<String>,
    /// `REDIS_CLUSTER_URLS`: seed nodes of a Redis Cluster.
    pub redis_cluster_urls: Vec<String>,
    pub jwt: JwtConfig,
    pub auth: AuthConfig,
    pub database: DatabaseConfig,
    pub cache: CacheConfig,
    pub rate_limits: RateLimitConfig,
    pub redis: RedisConfig,
    pub prewarm: PrewarmConfig,
    pub server: ServerConfig,
    pub logins: LoginsConfig,
    pub events: EventsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            addr: "0.0.0.0:8001".parse().expect("static address"),
            dev_mode: false,
            database_url: "sqlite://data/user-api.db".into(),
            redis_url: None,
            redis_cluster_urls: Vec::new(),
            jwt: JwtConfig::default(),
            auth: AuthConfig::default(),
            database: DatabaseConfig::default(),
            cache: CacheConfig::default(),
            rate_limits: RateLimitConfig::default(),
            redis: RedisConfig::default(),
            prewarm: PrewarmConfig::default(),
            logins: LoginsConfig::default(),
            server: ServerConfig::default(),
            events: EventsConfig::default(),
        }
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cluster: Vec<String> = self
            .redis_cluster_urls
            .iter()
            .map(|u| redact_url(u))
            .collect();
        f.debug_struct("Config")
            .field("addr", &self.addr)
            .field("dev_mode", &self.dev_mode)
            .field("database_url", &redact_url(&self.database_url))
            .field("redis_url", &self.redis_url.as_deref().map(redact_url))
            .field("redis_cluster_urls", &cluster)
            .field("jwt", &self.jwt)
            .field("auth", &self.auth)
            .field("database", &self.database)
            .field("cache", &self.cache)
            .field("rate_limits", &self.rate_limits)
            .field("redis", &self.redis)
            .field("prewarm", &self.prewarm)
            .field("server", &self.server)
            .field("events", &self.events)
            .finish()
    }
}

/// `url` with the password of its user-info (and any `password=`/`pass=` query value)
/// replaced by `***`, for logs and `Debug`: `postgres://app:***@db/x`. A user name with no
/// password may be a token (`https://<token>@host`), so it is hidden too. What does not
/// parse as a URL is hidden whole, since where its secret sits is unknown.
pub fn redact_url(raw: &str) -> String {
    const HIDDEN: &str = "***";
    let Ok(mut url) = url::Url::parse(raw) else {
        return HIDDEN.to_owned();
    };
    let secret_query =
        |k: &str| k.eq_ignore_ascii_case("password") || k.eq_ignore_ascii_case("pass");
    let query_secret = url.query_pairs().any(|(k, _)| secret_query(&k));
    if url.password().is_none() && url.username().is_empty() && !query_secret {
        return raw.to_owned();
    }
    // Neither fails on a URL with an authority, which is the only kind with user-info.
    if url.password().is_some() {
        let _ = url.set_password(Some(HIDDEN));
    } else if !url.username().is_empty() {
        let _ = url.set_username(HIDDEN);
    }
    if query_secret {
        let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        let mut query = url.query_pairs_mut();
        query.clear();
        for (k, v) in &pairs {
            query.append_pair(k, if secret_query(k) { HIDDEN } else { v });
        }
    }
    url.to_string()
}

/// One check of a value that parses but may make no sense: (key, holds, else).
type Check = (&'static str, bool, &'static str);

const AT_LEAST_1: &str = "must be at least 1";
const POSITIVE: &str = "must be positive";

impl Config {
    /// Checks the values that parse but make no sense, table by table; the first that
    /// fails is reported, naming its key.
    #[rustfmt::skip]
    pub fn validate(&self) -> Result<(), ConfigError> {
        let known_database = ["postgres://", "postgresql://", "sqlite://", "sqlite:"]
            .iter()
            .any(|scheme| self.database_url.starts_with(scheme));
        let redis_schemes = (self.redis_url.iter().chain(&self.redis_cluster_urls))
            .all(|u| u.starts_with("redis://") || u.starts_with("rediss://"));
        let one_redis = self.redis_url.is_none() || self.redis_cluster_urls.is_empty();
        let own: [Check; 3] = [
            ("database_url", known_database, "must start with postgres:// or sqlite://"),
            ("redis_url",    one_redis,      "and redis_cluster_urls are both set; set only one"),
            ("redis_url",    redis_schemes,  "must start with redis:// or rediss://"),
        ];
        let checks = own.into_iter()
            .chain(self.jwt.checks())
            .chain(self.database.checks())
            .chain(self.logins.checks())
            .chain(self.events.checks())
            .chain(self.cache.checks())
            .chain(self.rate_limits.checks())
            .chain(self.redis.checks())
            .chain(self.prewarm.checks())
            .chain(self.server.checks());
        match checks.into_iter().find(|&(_, holds, _)| !holds) {
            Some((key, _, reason)) => Err(ConfigError::Invalid {
                key,
                reason: reason.to_owned(),
            }),
            None => Ok(()),
        }
    }

    /// True when no Redis is configured and the in-process store serves.
    pub fn uses_embedded_store(&self) -> bool {
        self.redis_url.is_none() && self.redis_cluster_urls.is_empty()
    }

    /// True when no key source is configured: dev mode.
    pub fn jwt_dev_mode(&self) -> bool {
        self.jwt.public_key_file.is_none() && self.jwt.jwks_url.is_none()
    }

    /// Whether the server may start as configured: dev mode (no key source, so anyone
    /// who can read `data/dev-keys/` can mint admin tokens) is refused on a non-loopback
    /// address or with PostgreSQL (a shared, real database) unless it is asked for
    /// explicitly (`USER_API_DEV_MODE=1`).
    pub fn check_serve(&self) -> Result<(), ConfigError> {
        if !self.jwt_dev_mode() {
            return Ok(());
        }
        if self.dev_mode {
            return Ok(());
        }
        if !self.addr.ip().is_loopback() {
            return Err(ConfigError::Invalid {
                key: "addr",
                reason: format!(
                    "is {}, not loopback, and no key source (JWT_PUBLIC_KEY_FILE or JWKS_URL) \
                     is set: dev mode refuses to listen there; set a key source, listen on \
                     127.0.0.1, or set USER_API_DEV_MODE=1 to mean it",
                    self.addr
                ),
            });
        }
        if !self.database_url.starts_with("sqlite:") {
            return Err(ConfigError::Invalid {
                key: "database_url",
                reason: "is PostgreSQL and no key source (JWT_PUBLIC_KEY_FILE or JWKS_URL) \
                         is set: dev mode refuses a real database; set a key source, or \
                         USER_API_DEV_MODE=1 to mean it"
                    .into(),
            });
        }
        Ok(())
    }
}
