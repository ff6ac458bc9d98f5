//! Configuration: defaults, then the TOML file named by `USER_API_CONFIG`, then
//! `USER_API__<TABLE>__<KEY>` variables, then the documented plain variables
//! (`DATABASE_URL`, `REDIS_URL`, …). Validated once, at load, naming the bad key.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use serde::{Deserialize, Deserializer, Serialize};

use ipnet::IpNet;

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

/// Events out (SPEC 7; see `docs/events.md`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventsConfig {
    /// An event its writing instance has not published after this long (it failed, or
    /// Redis did) is published by the outbox drainer of any instance.
    pub handoff_secs: u64,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self { handoff_secs: 10 }
    }
}

/// Token verification.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JwtConfig {
    /// `JWT_PUBLIC_KEY_FILE`: PEM RSA public key.
    pub public_key_file: Option<PathBuf>,
    /// `JWKS_URL`: the auth service's JWKS document: https, or plain http to an internal
    /// host (loopback, private, link-local, a name without dots, host.docker.internal).
    pub jwks_url: Option<String>,
    /// No longer used (the host decides whether plain http is allowed); still accepted,
    /// with a warning, so existing configuration files load.
    pub jwks_allow_http: bool,
    /// `JWT_ISS`: required issuer, when set.
    pub iss: Option<String>,
    /// `JWT_AUD`: required audience, when set.
    pub aud: Option<String>,
    pub leeway_secs: u64,
    /// How long a fetched JWKS is trusted before it is fetched again.
    pub jwks_cache_secs: u64,
    /// Shortest pause between two fetches triggered by unknown `kid`s.
    pub jwks_min_refetch_secs: u64,
    pub jwks_timeout_ms: u64,
    /// Where dev mode keeps its generated key pair.
    pub dev_keys_dir: PathBuf,
}

/// What authentication does beyond the signature (`[auth]`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// When the revocation keys cannot be read (Redis unreachable): `allow` (default,
    /// counted in `auth_revocation_unchecked_total`) or `deny` (503).
    pub revocation_unavailable: RevocationUnavailable,
}

/// What to do with a request whose revocation cannot be checked (store unreachable).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RevocationUnavailable {
    /// Serve it (counted), as browsers soft-fail OCSP: access tokens are short-lived.
    #[default]
    Allow,
    /// Refuse it: a store outage becomes an outage of every authenticated route.
    Deny,
}

/// Database pool.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    pub max_connections: u32,
    pub min_connections: u32,
    pub acquire_timeout_ms: u64,
    pub statement_timeout_ms: u64,
    /// Most connections background work (login records, the outbox, refresh-ahead,
    /// prewarm) holds at once, so reads always keep the rest; 0: a quarter of
    /// `max_connections`, at least 1.
    pub background_connections: u32,
}

impl DatabaseConfig {
    /// The connections background work may hold at once.
    pub fn background_share(&self) -> u32 {
        match self.background_connections {
            0 => (self.max_connections / 4).max(1),
            n => n.min(self.max_connections),
        }
    }
}

/// Recording `last_login` off the request path, in batches.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoginsConfig {
    /// Logins waiting to be written; beyond this they are dropped (and counted), and the
    /// user's next request records it.
    pub queue_capacity: usize,
    /// Most logins written by one statement.
    pub batch_size: usize,
    /// A partial batch is written after this long.
    pub flush_ms: u64,
}

impl Default for LoginsConfig {
    fn default() -> Self {
        Self {
            queue_capacity: 10_000,
            batch_size: 500,
            flush_ms: 1000,
        }
    }
}

/// Profile cache.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    pub ttl_secs: u64,
    /// Refresh in the background when less TTL than this is left.
    pub refresh_ahead_secs: u64,
    /// How long an unknown id is remembered as missing (at most 30).
    pub negative_ttl_secs: u64,
    /// Largest share of the TTL that jitter may take off, in percent.
    pub jitter_percent: u64,
}

/// What the limiter does when its store is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    /// Fall back to an in-process limiter.
    Open,
    /// Answer 503.
    Closed,
}

/// Rate-limit policies, requests per window and caller.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    pub profiles_read: u64,
    pub profiles_update: u64,
    pub profiles_batch: u64,
    pub default: u64,
    pub per_address: u64,
    /// `RATE_LIMIT_FAIL`.
    pub fail: FailMode,
    /// Treat every peer as a trusted proxy (the client is then the right-most
    /// `X-Forwarded-For` entry not in `trusted_proxies`). Prefer `trusted_proxies`.
    pub trust_forwarded_for: bool,
    /// `TRUSTED_PROXIES`: proxies (CIDRs or single addresses) whose `X-Forwarded-For`
    /// entries are believed.
    #[serde(deserialize_with = "trusted_proxies")]
    pub trusted_proxies: Vec<IpNet>,
    /// Window length; an hour in production, shorter only in tests.
    pub window_secs: u64,
}

/// A `trusted_proxies` entry: a CIDR block (`10.0.0.0/8`) or a single address
/// (`192.0.2.1`, as a /32 or /128), which `IpNet` alone does not read.
pub fn parse_proxy(entry: &str) -> Result<IpNet, String> {
    let entry = entry.trim();
    entry
        .parse::<IpNet>()
        .or_else(|_| entry.parse::<IpAddr>().map(|ip| IpNet::from(ip.to_canonical())))
        .map_err(|_| format!("`{entry}` is not an address or CIDR block (e.g. 10.0.0.0/8)"))
}

fn trusted_proxies<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
    (Vec::<String>::deserialize(d)?.iter())
        .map(|entry| parse_proxy(entry).map_err(serde::de::Error::custom))
        .collect()
}

/// Redis client behaviour.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// Longest wait for any one Redis call.
    pub timeout_ms: u64,
    pub connect_timeout_ms: u64,
    /// Consecutive failures that open the circuit breaker.
    pub breaker_failures: u32,
    /// How long the breaker stays open before probing again.
    pub breaker_cooldown_ms: u64,
    /// How often in-process hit/miss counts are flushed to Redis.
    pub metrics_flush_ms: u64,
    /// How often the invalidation outbox is drained.
    pub outbox_poll_ms: u64,
}

/// Cache prewarm at start.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrewarmConfig {
    /// `PREWARM=0` turns it off.
    pub enabled: bool,
    pub max: u32,
    pub batch_size: u32,
    /// Only users whose last login is this recent.
    pub recent_days: u32,
}

/// HTTP server.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Longest time from the accept (or a request's first byte) until its head is complete.
    pub header_read_timeout_ms: u64,
    /// Longest time a connection may sit idle between requests.
    pub keep_alive_timeout_ms: u64,
    /// Most connections open at once; at the cap, new ones wait in the backlog.
    pub max_connections: usize,
    /// Most connections one client address (an IPv6 /64) may hold at once; past it a new
    /// one is answered 429 and closed. Trusted proxies are exempt. 0: no such cap.
    pub max_connections_per_address: usize,
    /// Longest time a request may take once its head is in.
    pub request_timeout_ms: u64,
    /// `json` for machines, `pretty` for people, `auto` (the default): `pretty` when
    /// stderr is a terminal, `json` otherwise.
    pub log_format: String,
    pub shutdown_grace_secs: u64,
    /// `LOG_LEVEL`: `debug`, `info`, `warning`, `error` or `critical` (the stack's names);
    /// `RUST_LOG`, when set, wins. Unset: `info`.
    pub log_level: Option<String>,
    /// `CORS_ORIGINS`: browser origins allowed to call the API (`scheme://host[:port]`);
    /// empty (the default): no CORS headers at all.
    pub cors_origins: Vec<String>,
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
    let secret_query = |k: &str| k.eq_ignore_ascii_case("password") || k.eq_ignore_ascii_case("pass");
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

impl Default for JwtConfig {
    fn default() -> Self {
        Self {
            public_key_file: None,
            jwks_url: None,
            jwks_allow_http: false,
            iss: None,
            aud: None,
            leeway_secs: 60,
            jwks_cache_secs: 3600,
            jwks_min_refetch_secs: 10,
            jwks_timeout_ms: 2000,
            dev_keys_dir: "data/dev-keys".into(),
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            max_connections: 16,
            min_connections: 0,
            acquire_timeout_ms: 2000,
            statement_timeout_ms: 5000,
            background_connections: 0,
        }
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            ttl_secs: 300,
            refresh_ahead_secs: 60,
            negative_ttl_secs: 30,
            jitter_percent: 10,
        }
    }
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            profiles_read: 100,
            profiles_update: 10,
            profiles_batch: 20,
            default: 100,
            per_address: 1000,
            fail: FailMode::Open,
            trust_forwarded_for: false,
            trusted_proxies: Vec::new(),
            window_secs: 3600,
        }
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            timeout_ms: 50,
            connect_timeout_ms: 1000,
            breaker_failures: 3,
            breaker_cooldown_ms: 1000,
            metrics_flush_ms: 1000,
            outbox_poll_ms: 1000,
        }
    }
}

impl Default for PrewarmConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max: 1000,
            batch_size: 100,
            recent_days: 7,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            header_read_timeout_ms: 10_000,
            keep_alive_timeout_ms: 30_000,
            max_connections: 10_000,
            max_connections_per_address: 256,
            request_timeout_ms: 15_000,
            log_format: "auto".into(),
            shutdown_grace_secs: 10,
            log_level: None,
            cors_origins: Vec::new(),
        }
    }
}

/// How a plain variable's value becomes configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvKind {
    /// The value as it is, for the key's own type to parse (a URL, an address, a name).
    Text,
    /// A boolean: `true`/`false`, `1`/`0`, `yes`/`no`, `on`/`off` (any case), nothing else.
    Flag,
    /// Comma-separated; blank items are skipped.
    List,
    /// Read by its own code (the config file's name, the log filter): only the rule for
    /// set-but-empty values applies here.
    Own,
}

/// One documented plain environment variable (README, "Configuration").
#[derive(Debug, Clone, Copy)]
pub struct EnvVar {
    /// The variable, e.g. `JWT_ISS`.
    pub name: &'static str,
    /// The configuration key it sets (`jwt.iss`); empty for [`EnvKind::Own`].
    pub key: &'static str,
    /// How its value is read.
    pub kind: EnvKind,
    /// What a set-but-blank value means, when the README documents it; `None` (nearly
    /// every variable): set but blank is an error that names the variable.
    pub when_empty: Option<&'static str>,
}

impl EnvVar {
    const fn new(name: &'static str, key: &'static str, kind: EnvKind) -> Self {
        Self {
            name,
            key,
            kind,
            when_empty: None,
        }
    }

    /// A variable whose value the key's type parses.
    pub const fn text(name: &'static str, key: &'static str) -> Self {
        Self::new(name, key, EnvKind::Text)
    }

    /// A boolean variable.
    pub const fn flag(name: &'static str, key: &'static str) -> Self {
        Self::new(name, key, EnvKind::Flag)
    }

    /// A comma-separated list.
    pub const fn list(name: &'static str, key: &'static str) -> Self {
        Self::new(name, key, EnvKind::List)
    }

    /// A variable read by its own code, checked here only for emptiness.
    pub const fn own(name: &'static str) -> Self {
        Self::new(name, "", EnvKind::Own)
    }

    /// Documents what a set-but-blank value means (the README must say the same).
    pub const fn empty_means(mut self, meaning: &'static str) -> Self {
        self.when_empty = Some(meaning);
        self
    }
}

/// Every documented plain variable, in the order they are applied (later wins). Adding
/// one is one line here plus its row in the README's table (`tests/it/settings.rs` checks
/// that the two agree and that set-but-blank fails naming it).
pub const ENV_VARS: &[EnvVar] = &[
    EnvVar::own("USER_API_CONFIG"),
    EnvVar::text("USER_API_ADDR", "addr"),
    EnvVar::flag("USER_API_DEV_MODE", "dev_mode"),
    EnvVar::text("DATABASE_URL", "database_url"),
    EnvVar::text("REDIS_URL", "redis_url"),
    EnvVar::list("REDIS_CLUSTER_URLS", "redis_cluster_urls"),
    EnvVar::text("JWT_PUBLIC_KEY_FILE", "jwt.public_key_file"),
    EnvVar::text("JWKS_URL", "jwt.jwks_url"),
    EnvVar::text("JWT_ISS", "jwt.iss"),
    EnvVar::text("JWT_AUD", "jwt.aud"),
    EnvVar::flag("PREWARM", "prewarm.enabled"),
    EnvVar::text("RATE_LIMIT_FAIL", "rate_limits.fail"),
    EnvVar::list("TRUSTED_PROXIES", "rate_limits.trusted_proxies")
        .empty_means("no proxy is trusted"),
    EnvVar::own("RUST_LOG"),
    // The stack's names (SPEC 7), read by `StackEnv`.
    EnvVar::own("PORT"),
    EnvVar::own("HOST"),
    EnvVar::own("PROFILE_CACHE_TTL_SEC"),
    EnvVar::own("LOG_LEVEL"),
    EnvVar::own("CORS_ORIGINS"),
];

/// Prefix of the `USER_API__<TABLE>__<KEY>` variables, one per configuration key.
pub const KEY_PREFIX: &str = "USER_API__";

/// The one rule for a variable that is set: a blank value is an error naming it, unless
/// `empty_means` documents what blank means (then `""`, for its kind to read).
fn set_value<'v>(
    name: &str,
    value: &'v str,
    empty_means: Option<&str>,
) -> Result<&'v str, ConfigError> {
    if !value.trim().is_empty() {
        return Ok(value);
    }
    match empty_means {
        Some(_) => Ok(""),
        None => Err(ConfigError::variable(
            name,
            "is set but empty; unset it for the default, or give it a value",
        )),
    }
}

/// The strict boolean every flag accepts: `true`/`false`, `1`/`0`, `yes`/`no`, `on`/`off`
/// (any case, surrounding blanks ignored); anything else is an error naming `name`.
pub fn parse_bool(name: &str, value: &str) -> Result<bool, ConfigError> {
    const TRUE: [&str; 4] = ["true", "1", "yes", "on"];
    const FALSE: [&str; 4] = ["false", "0", "no", "off"];
    let v = value.trim();
    if TRUE.iter().any(|t| t.eq_ignore_ascii_case(v)) {
        Ok(true)
    } else if FALSE.iter().any(|f| f.eq_ignore_ascii_case(v)) {
        Ok(false)
    } else {
        Err(ConfigError::variable(
            name,
            "must be one of true/false, 1/0, yes/no, on/off",
        ))
    }
}

fn split_list(v: &str) -> Vec<String> {
    v.split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// The configuration key of a `USER_API__<TABLE>__<KEY>` variable (`server.max_connections`).
fn prefixed_key(name: &str) -> Option<String> {
    let rest = name.strip_prefix(KEY_PREFIX)?;
    let parts: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
    (!parts.iter().any(String::is_empty)).then(|| parts.join("."))
}

impl Config {
    /// Loads from the process environment (and the file it names), then validates.
    pub fn load() -> Result<Self, ConfigError> {
        let mut vars = Vec::new();
        for (k, v) in std::env::vars_os() {
            let Some(k) = k.to_str() else { continue };
            let ours = k.starts_with(KEY_PREFIX) || ENV_VARS.iter().any(|e| e.name == k);
            if !ours {
                continue;
            }
            match v.into_string() {
                Ok(v) => vars.push((k.to_owned(), v)),
                Err(_) => return Err(ConfigError::variable(k, "is not valid UTF-8")),
            }
        }
        Self::load_from_vars(vars)
    }

    /// Loads with `env` standing in for the process environment (testable).
    pub fn load_from(env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        Self::load_from_vars(
            ENV_VARS
                .iter()
                .filter_map(|e| env(e.name).map(|v| (e.name.to_owned(), v))),
        )
    }

    /// Loads from these variables alone (name, value), as if they were the environment.
    pub fn load_from_vars<K, V>(vars: impl IntoIterator<Item = (K, V)>) -> Result<Self, ConfigError>
    where
        K: Into<String>,
        V: Into<String>,
    {
        let vars: BTreeMap<String, String> = vars
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        let defaults = Figment::from(Serialized::defaults(Config::default()));
        let stack = StackEnv::read(&|name: &str| vars.get(name).cloned())?;
        // What the operator set, without the defaults (to tell a chosen address from the default).
        let mut fig = Figment::new();
        if let Some(path) = vars.get("USER_API_CONFIG") {
            set_value("USER_API_CONFIG", path, None)?;
            if !std::path::Path::new(path).is_file() {
                return Err(ConfigError::Invalid {
                    key: "USER_API_CONFIG",
                    reason: format!("names `{path}`, which is not a readable file"),
                });
            }
            fig = fig.merge(Toml::file_exact(path));
        }
        // `USER_API__<TABLE>__<KEY>`: every key, its value read as figment's `Env` reads it
        // (numbers, booleans, arrays); blank is an error like any other variable.
        for (name, value) in vars.range(KEY_PREFIX.to_owned()..) {
            if !name.starts_with(KEY_PREFIX) {
                break;
            }
            let Some(key) = prefixed_key(name) else {
                return Err(ConfigError::variable(
                    name,
                    "does not name a configuration key",
                ));
            };
            let value = set_value(name, value, None)?;
            fig = match defaults.find_value(&key) {
                // A boolean key takes the same strict words as every flag.
                Ok(figment::value::Value::Bool(..)) => fig.merge((key, parse_bool(name, value)?)),
                _ => fig.merge((
                    key,
                    value.parse::<figment::value::Value>().expect("infallible"),
                )),
            };
        }
        for var in ENV_VARS {
            let Some(raw) = vars.get(var.name) else {
                continue;
            };
            let value = set_value(var.name, raw, var.when_empty)?;
            fig = match var.kind {
                EnvKind::Text => fig.merge((var.key, value)),
                EnvKind::Flag => fig.merge((var.key, parse_bool(var.name, value)?)),
                EnvKind::List => fig.merge((var.key, split_list(value))),
                EnvKind::Own => fig,
            };
        }
        let addr_chosen = fig.find_value("addr").is_ok();
        // Lossy: booleans from exactly true/false/1/0/yes/no/on/off (any case) and numbers
        // from digits, whichever source they came from; anything else fails naming the key.
        let mut config: Config = defaults.merge(fig).extract_lossy().map_err(Box::new)?;
        let host_chosen = stack.apply(&mut config, addr_chosen);
        if !host_chosen && config.jwt_dev_mode() {
            // Dev mode listens on loopback unless told otherwise (SPEC 1).
            config.addr = SocketAddr::from(([127, 0, 0, 1], config.addr.port()));
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks the values that parse but make no sense; the first that fails is reported,
    /// naming its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        const AT_LEAST_1: &str = "must be at least 1";
        const POSITIVE: &str = "must be positive";
        let (db, cache, rl, logins) =
            (&self.database, &self.cache, &self.rate_limits, &self.logins);
        let known_database = ["postgres://", "postgresql://", "sqlite://", "sqlite:"]
            .iter()
            .any(|scheme| self.database_url.starts_with(scheme));
        let redis_schemes = (self.redis_url.iter().chain(&self.redis_cluster_urls))
            .all(|u| u.starts_with("redis://") || u.starts_with("rediss://"));
        let one_redis = self.redis_url.is_none() || self.redis_cluster_urls.is_empty();
        let one_key_source = self.jwt.public_key_file.is_none() || self.jwt.jwks_url.is_none();
        let jwks_http = (self.jwt.jwks_url.as_ref())
            .is_none_or(|u| u.starts_with("https://") || u.starts_with("http://"));
        let window_divides_hour = rl.window_secs == 0 || 3600 % rl.window_secs == 0;
        let key_file_named =
            (self.jwt.public_key_file.as_ref()).is_none_or(|p| !p.as_os_str().is_empty());
        let jwks_named = (self.jwt.jwks_url.as_ref()).is_none_or(|u| !u.trim().is_empty());
        // A blank issuer or audience must never mean "not checked" (issue 17).
        let named = |v: &Option<String>| v.as_ref().is_none_or(|v| !v.trim().is_empty());
        let srv = &self.server;
        let log_format = matches!(self.server.log_format.as_str(), "auto" | "json" | "pretty");
        let log_level = (srv.log_level.as_deref()).is_none_or(|l| log_directive(l).is_some());
        let cors = srv.cors_origins.iter().all(|o| cors_origin(o).is_ok());
        #[rustfmt::skip]
        let checks = [
            // key                          holds                                        else
            ("database_url",                known_database,                              "must start with postgres:// or sqlite://"),
            ("redis_url",                   one_redis,                                   "and redis_cluster_urls are both set; set only one"),
            ("redis_url",                   redis_schemes,                               "must start with redis:// or rediss://"),
            ("jwt.public_key_file",         key_file_named,                              "is empty; unset it or name a PEM file"),
            ("jwt.jwks_url",                jwks_named,                                  "is empty; unset it or name the JWKS URL"),
            ("jwt.iss",                     named(&self.jwt.iss),                        "is empty; remove it to accept any issuer, or name the issuer"),
            ("jwt.aud",                     named(&self.jwt.aud),                        "is empty; remove it to accept any audience, or name this service's audience"),
            ("jwt.public_key_file",         one_key_source,                              "and jwt.jwks_url are both set; set only one key source"),
            ("jwt.jwks_url",                jwks_http,                                   "must be an http(s) URL"),
            ("database.max_connections",    db.max_connections > 0,                      AT_LEAST_1),
            ("database.min_connections",    db.min_connections <= db.max_connections,    "must not exceed max_connections"),
            ("database.acquire_timeout_ms", db.acquire_timeout_ms > 0,                   POSITIVE),
            ("logins.queue_capacity",       logins.queue_capacity > 0,                   AT_LEAST_1),
            ("logins.batch_size",           logins.batch_size > 0,                       AT_LEAST_1),
            ("logins.flush_ms",             logins.flush_ms > 0,                         AT_LEAST_1),
            ("events.handoff_secs",         self.events.handoff_secs > 0,                AT_LEAST_1),
            ("cache.ttl_secs",              cache.ttl_secs > 0,                          POSITIVE),
            ("cache.refresh_ahead_secs",    cache.refresh_ahead_secs < cache.ttl_secs,   "must be less than cache.ttl_secs"),
            ("cache.negative_ttl_secs",     cache.negative_ttl_secs <= 30,               "must be at most 30"),
            ("cache.jitter_percent",        cache.jitter_percent <= 50,                  "must be at most 50"),
            ("rate_limits.profiles_read",   rl.profiles_read > 0,                        AT_LEAST_1),
            ("rate_limits.profiles_update", rl.profiles_update > 0,                      AT_LEAST_1),
            ("rate_limits.profiles_batch",  rl.profiles_batch > 0,                       AT_LEAST_1),
            ("rate_limits.default",         rl.default > 0,                              AT_LEAST_1),
            ("rate_limits.per_address",     rl.per_address > 0,                          AT_LEAST_1),
            ("rate_limits.window_secs",     rl.window_secs > 0,                          AT_LEAST_1),
            ("rate_limits.window_secs",     window_divides_hour,                         "must divide 3600"),
            ("redis.timeout_ms",            self.redis.timeout_ms > 0,                   POSITIVE),
            ("redis.breaker_failures",      self.redis.breaker_failures > 0,             AT_LEAST_1),
            ("prewarm.batch_size",          self.prewarm.batch_size > 0,                 AT_LEAST_1),
            ("server.header_read_timeout_ms", srv.header_read_timeout_ms > 0,          POSITIVE),
            ("server.keep_alive_timeout_ms", srv.keep_alive_timeout_ms > 0,            POSITIVE),
            ("server.max_connections",      srv.max_connections > 0,                     POSITIVE),
            ("server.max_connections",      srv.max_connections <= 1_000_000,            "must be at most 1000000"),
            ("server.request_timeout_ms",   srv.request_timeout_ms > 0,                  POSITIVE),
            ("server.log_format",           log_format,                                  "must be `auto`, `json` or `pretty`"),
            ("server.log_level",            log_level,                                   LOG_LEVELS),
            ("server.cors_origins",         cors,                                        "must be origins like https://app.example.com"),
        ];
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

// ---------------------------------------------------------------------------------------
// The stack's variable names (SPEC 7): PORT, HOST, PROFILE_CACHE_TTL_SEC, LOG_LEVEL,
// CORS_ORIGINS. They are applied after every other layer, so each wins over the config
// file and the `USER_API__…` form of the key it sets; PORT and HOST only apply while no
// `addr` is chosen (USER_API_ADDR, USER_API__ADDR or the file), which wins over both.
// Set but empty is an error naming the variable. docs/operations.md lists them.
// ---------------------------------------------------------------------------------------

/// The accepted `LOG_LEVEL` values, for errors.
const LOG_LEVELS: &str = "must be debug, info, warning, error or critical";

/// The tracing directive of a `LOG_LEVEL` value (the Python service's level names, any
/// case): tracing has no `critical`, so it means `error`.
pub fn log_directive(level: &str) -> Option<&'static str> {
    match level.trim().to_ascii_lowercase().as_str() {
        "debug" => Some("debug"),
        "info" => Some("info"),
        "warning" | "warn" => Some("warn"),
        "error" | "critical" => Some("error"),
        _ => None,
    }
}

/// A CORS origin in the form browsers send it (`scheme://host[:port]`, default port
/// left out), or why `value` is not one.
pub fn cors_origin(value: &str) -> Result<String, String> {
    let bad = |why: &str| Err(format!("`{value}` is not an origin ({why})"));
    if value.trim() == "*" {
        return bad("this is an allow-list: name each origin");
    }
    let url = match reqwest::Url::parse(value.trim()) {
        Ok(u) => u,
        Err(e) => return bad(&e.to_string()),
    };
    if !matches!(url.scheme(), "http" | "https") {
        return bad("the scheme must be http or https");
    }
    if !url.username().is_empty() || url.password().is_some() {
        return bad("no user name or password");
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return bad("no path, query or fragment");
    }
    Ok(url.origin().ascii_serialization())
}

/// What the stack's variables asked for, read before the other layers are merged.
#[derive(Default)]
struct StackEnv {
    host: Option<std::net::IpAddr>,
    port: Option<u16>,
    cache_ttl_secs: Option<u64>,
    log_level: Option<String>,
    cors_origins: Option<Vec<String>>,
}

impl StackEnv {
    fn read(env: &impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
            ConfigError::Invalid {
                key,
                reason: reason.into(),
            }
        }
        let get = |key: &'static str| match env(key) {
            Some(v) if v.trim().is_empty() => Err(invalid(key, "is set but empty; unset it")),
            other => Ok(other.map(|v| v.trim().to_owned())),
        };
        let mut out = Self::default();
        if let Some(v) = get("HOST")? {
            out.host = Some(v.parse().map_err(|_| {
                invalid(
                    "HOST",
                    format!("is `{v}`, not an IP address (e.g. 0.0.0.0)"),
                )
            })?);
        }
        if let Some(v) = get("PORT")? {
            out.port =
                Some(v.parse().map_err(|_| {
                    invalid("PORT", format!("is `{v}`, not a port number (0-65535)"))
                })?);
        }
        if let Some(v) = get("PROFILE_CACHE_TTL_SEC")? {
            out.cache_ttl_secs = Some(v.parse().map_err(|_| {
                invalid(
                    "PROFILE_CACHE_TTL_SEC",
                    format!("is `{v}`, not a number of seconds"),
                )
            })?);
        }
        if let Some(v) = get("LOG_LEVEL")? {
            if log_directive(&v).is_none() {
                return Err(invalid("LOG_LEVEL", format!("is `{v}`; {LOG_LEVELS}")));
            }
            out.log_level = Some(v);
        }
        if let Some(v) = get("CORS_ORIGINS")? {
            let origins = v
                .split(',')
                .map(str::trim)
                .filter(|o| !o.is_empty())
                .map(|o| cors_origin(o).map_err(|e| invalid("CORS_ORIGINS", e)))
                .collect::<Result<Vec<_>, _>>()?;
            if origins.is_empty() {
                return Err(invalid(
                    "CORS_ORIGINS",
                    "names no origin; unset it for none",
                ));
            }
            out.cors_origins = Some(origins);
        }
        Ok(out)
    }

    /// Applies what was asked for; true when the listening host was chosen (by `addr`
    /// or HOST), so dev mode's loopback default does not apply.
    fn apply(self, config: &mut Config, addr_chosen: bool) -> bool {
        if !addr_chosen {
            if let Some(host) = self.host {
                config.addr.set_ip(host);
            }
            if let Some(port) = self.port {
                config.addr.set_port(port);
            }
        }
        if let Some(ttl) = self.cache_ttl_secs {
            config.cache.ttl_secs = ttl;
        }
        if let Some(level) = self.log_level {
            config.server.log_level = Some(level);
        }
        if let Some(origins) = self.cors_origins {
            config.server.cors_origins = origins;
        }
        addr_chosen || self.host.is_some()
    }
}

impl RedisConfig {
    /// The per-call timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::load_from(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_are_valid() {
        let c = load(&[]).unwrap();
        assert_eq!(c.addr.port(), 8001);
        assert!(
            c.addr.ip().is_loopback(),
            "dev mode listens on loopback by default"
        );
        assert!(c.uses_embedded_store());
        assert!(c.jwt_dev_mode());
        assert_eq!(c.rate_limits.profiles_read, 100);
        assert_eq!(c.server.log_format, "auto");
    }

    #[test]
    fn log_format_is_auto_json_or_pretty() {
        let mut c = Config::default();
        for f in ["auto", "json", "pretty"] {
            c.server.log_format = f.into();
            assert!(c.validate().is_ok(), "{f}");
        }
        c.server.log_format = "text".into();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("server.log_format"), "{e}");
    }

    #[test]
    fn plain_env_overrides() {
        let c = load(&[
            ("DATABASE_URL", "postgres://localhost/test"),
            ("REDIS_CLUSTER_URLS", "redis://a:1, redis://b:2"),
            ("PREWARM", "0"),
            ("RATE_LIMIT_FAIL", "closed"),
        ])
        .unwrap();
        assert_eq!(c.redis_cluster_urls.len(), 2);
        assert!(!c.prewarm.enabled);
        assert_eq!(c.rate_limits.fail, FailMode::Closed);
    }

    #[test]
    fn bad_values_name_their_key() {
        let e = load(&[("RATE_LIMIT_FAIL", "sometimes")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("fail"), "{e}");
        let e = load(&[("DATABASE_URL", "mysql://x")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("database_url"), "{e}");
        let e = load(&[
            ("REDIS_URL", "redis://x"),
            ("REDIS_CLUSTER_URLS", "redis://y"),
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("redis_url"), "{e}");
    }

    #[test]
    fn each_check_names_its_key() {
        type Mutation = fn(&mut Config);
        let cases: [(Mutation, &str); 8] = [
            (
                |c| c.logins.batch_size = 0,
                "`logins.batch_size` must be at least 1",
            ),
            (|c| c.logins.queue_capacity = 0, "`logins.queue_capacity`"),
            (
                |c| c.rate_limits.window_secs = 0,
                "`rate_limits.window_secs` must be at least 1",
            ),
            (
                |c| c.rate_limits.window_secs = 7,
                "`rate_limits.window_secs` must divide 3600",
            ),
            (
                |c| c.cache.refresh_ahead_secs = 300,
                "`cache.refresh_ahead_secs`",
            ),
            (
                |c| c.database.min_connections = 99,
                "`database.min_connections`",
            ),
            (
                |c| c.jwt.jwks_url = Some("ftp://x".into()),
                "`jwt.jwks_url`",
            ),
            (
                |c| c.redis.timeout_ms = 0,
                "`redis.timeout_ms` must be positive",
            ),
        ];
        for (mutate, expected) in cases {
            let mut c = Config::default();
            assert!(c.validate().is_ok());
            mutate(&mut c);
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(expected), "{e} lacks {expected}");
        }
    }

    #[test]
    fn config_file_is_read_and_checked() {
        let dir = std::env::temp_dir().join(format!("user-api-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("c.toml");
        std::fs::write(&f, "[cache]\nttl_secs = 120\nrefresh_ahead_secs = 10\n").unwrap();
        let c = load(&[("USER_API_CONFIG", f.to_str().unwrap())]).unwrap();
        assert_eq!(c.cache.ttl_secs, 120);
        std::fs::write(&f, "[cache]\nttl_secs = \"soon\"\n").unwrap();
        let e = load(&[("USER_API_CONFIG", f.to_str().unwrap())])
            .unwrap_err()
            .to_string();
        assert!(e.contains("ttl_secs"), "{e}");
        std::fs::write(&f, "[cache]\nttl = 5\n").unwrap();
        assert!(load(&[("USER_API_CONFIG", f.to_str().unwrap())]).is_err());
    }

    #[test]
    fn dev_mode_needs_loopback_sqlite_or_an_explicit_yes() {
        // A key source: the documented 0.0.0.0 default, nothing to check.
        let c = load(&[("JWT_PUBLIC_KEY_FILE", "/k.pem")]).unwrap();
        assert_eq!(c.addr.to_string(), "0.0.0.0:8001");
        assert!(c.check_serve().is_ok());
        // No key source: loopback by default, and that may serve.
        let c = load(&[]).unwrap();
        assert_eq!(c.addr.to_string(), "127.0.0.1:8001");
        assert!(c.check_serve().is_ok());
        // An address chosen explicitly is kept, and refused unless dev mode is asked for.
        let c = load(&[("USER_API_ADDR", "0.0.0.0:9000")]).unwrap();
        assert_eq!(c.addr.to_string(), "0.0.0.0:9000");
        let e = c.check_serve().unwrap_err().to_string();
        assert!(e.contains("addr") && e.contains("USER_API_DEV_MODE"), "{e}");
        let c = load(&[
            ("USER_API_ADDR", "0.0.0.0:9000"),
            ("USER_API_DEV_MODE", "1"),
        ])
        .unwrap();
        assert!(c.check_serve().is_ok());
        // PostgreSQL without a key source is refused too.
        let c = load(&[("DATABASE_URL", "postgres://h/db")]).unwrap();
        let e = c.check_serve().unwrap_err().to_string();
        assert!(e.contains("database_url"), "{e}");
        let c = load(&[
            ("DATABASE_URL", "postgres://h/db"),
            ("USER_API_DEV_MODE", "yes"),
        ])
        .unwrap();
        assert!(c.check_serve().is_ok());
        let c = load(&[("USER_API_ADDR", "[::1]:9000")]).unwrap();
        assert!(c.check_serve().is_ok());
    }

    #[test]
    fn connection_limits_are_checked() {
        let with = |f: fn(&mut ServerConfig)| {
            let mut c = Config::default();
            f(&mut c.server);
            c.validate().unwrap_err().to_string()
        };
        let e = with(|s| s.header_read_timeout_ms = 0);
        assert!(e.contains("server.header_read_timeout_ms"), "{e}");
        let e = with(|s| s.keep_alive_timeout_ms = 0);
        assert!(e.contains("server.keep_alive_timeout_ms"), "{e}");
        let e = with(|s| s.max_connections = 0);
        assert!(e.contains("server.max_connections"), "{e}");
        let e = with(|s| s.max_connections = usize::MAX);
        assert!(e.contains("server.max_connections"), "{e}");
    }

    #[test]
    fn an_empty_key_source_is_an_error_not_dev_mode() {
        for var in ["JWT_PUBLIC_KEY_FILE", "JWKS_URL"] {
            for v in ["", "  "] {
                let e = load(&[(var, v)]).unwrap_err().to_string();
                assert!(e.contains(var) && e.contains("empty"), "{var}={v:?}: {e}");
            }
        }
    }

    #[test]
    fn trusted_proxies_parse_from_env_and_name_the_key() {
        let c = load(&[("TRUSTED_PROXIES", "10.0.0.0/8, 2001:db8::/32,192.0.2.1")]).unwrap();
        assert_eq!(c.rate_limits.trusted_proxies.len(), 3);
        let e = load(&[("TRUSTED_PROXIES", "10.0.0.0/99")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("trusted_proxies"), "{e}");
    }

    #[test]
    fn port_and_host_apply_when_no_address_is_chosen() {
        let key = [("JWT_PUBLIC_KEY_FILE", "/k.pem")];
        let with = |vars: &[(&str, &str)]| load(&[vars, &key[..]].concat()).unwrap().addr;
        assert_eq!(with(&[("PORT", "8005")]).to_string(), "0.0.0.0:8005");
        assert_eq!(with(&[("HOST", "10.1.2.3")]).to_string(), "10.1.2.3:8001");
        assert_eq!(
            with(&[("HOST", "::"), ("PORT", "9000")]).to_string(),
            "[::]:9000"
        );
        // USER_API_ADDR wins over both.
        let chosen = [("USER_API_ADDR", "127.0.0.1:7000"), ("PORT", "9000")];
        assert_eq!(with(&chosen).to_string(), "127.0.0.1:7000");
        // Dev mode: PORT alone keeps the loopback default; HOST is a choice, checked as one.
        let c = load(&[("PORT", "8005")]).unwrap();
        assert_eq!(c.addr.to_string(), "127.0.0.1:8005");
        assert!(c.check_serve().is_ok());
        let c = load(&[("HOST", "0.0.0.0")]).unwrap();
        assert_eq!(c.addr.to_string(), "0.0.0.0:8001");
        assert!(c.check_serve().is_err(), "dev mode refuses a public HOST");
    }

    #[test]
    fn stack_variables_set_but_empty_or_bad_name_themselves() {
        for var in [
            "PORT",
            "HOST",
            "PROFILE_CACHE_TTL_SEC",
            "LOG_LEVEL",
            "CORS_ORIGINS",
        ] {
            let e = load(&[(var, " ")]).unwrap_err().to_string();
            assert!(
                e.contains(&format!("`{var}`")) && e.contains("empty"),
                "{e}"
            );
        }
        #[rustfmt::skip]
        let bad = [
            ("PORT", "80a"), ("PORT", "70000"), ("HOST", "example.com"),
            ("PROFILE_CACHE_TTL_SEC", "5m"), ("PROFILE_CACHE_TTL_SEC", "0"),
            ("LOG_LEVEL", "verbose"), ("CORS_ORIGINS", "*"),
            ("CORS_ORIGINS", "http://a.example,ftp://b.example"),
            ("CORS_ORIGINS", "https://a.example/app"), ("CORS_ORIGINS", ","),
        ];
        for (var, value) in bad {
            let e = load(&[(var, value)]).unwrap_err().to_string();
            // A TTL of 0 parses and is refused by the check of the key it sets.
            let named = if value == "0" { "cache.ttl_secs" } else { var };
            assert!(e.contains(named), "{var}={value}: {e}");
        }
    }

    #[test]
    fn profile_cache_ttl_wins_over_the_file() {
        let dir = std::env::temp_dir().join(format!("user-api-ttl-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("c.toml");
        std::fs::write(&f, "[cache]\nttl_secs = 120\nrefresh_ahead_secs = 10\n").unwrap();
        let file = ("USER_API_CONFIG", f.to_str().unwrap());
        assert_eq!(load(&[file]).unwrap().cache.ttl_secs, 120);
        let c = load(&[file, ("PROFILE_CACHE_TTL_SEC", "600")]).unwrap();
        assert_eq!(c.cache.ttl_secs, 600);
        assert_eq!(
            load(&[("PROFILE_CACHE_TTL_SEC", "900")])
                .unwrap()
                .cache
                .ttl_secs,
            900
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn log_level_takes_the_stack_names() {
        #[rustfmt::skip]
        let cases = [
            ("debug", "debug"), ("INFO", "info"), ("warning", "warn"), ("Warn", "warn"),
            ("error", "error"), ("critical", "error"),
        ];
        for (given, directive) in cases {
            let c = load(&[("LOG_LEVEL", given)]).unwrap();
            assert_eq!(
                log_directive(c.server.log_level.as_deref().unwrap()),
                Some(directive)
            );
        }
        let mut c = Config::default();
        c.server.log_level = Some("loud".into());
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("server.log_level"), "{e}");
    }

    #[test]
    fn cors_origins_are_normalised_origins() {
        let c = load(&[(
            "CORS_ORIGINS",
            "http://localhost:3000, https://App.Example.com:443/ ,http://[::1]:8080",
        )])
        .unwrap();
        assert_eq!(
            c.server.cors_origins,
            [
                "http://localhost:3000",
                "https://app.example.com",
                "http://[::1]:8080"
            ]
        );
        assert!(
            load(&[]).unwrap().server.cors_origins.is_empty(),
            "none by default"
        );
        let mut c = Config::default();
        c.server.cors_origins = vec!["not an origin".into()];
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("server.cors_origins"), "{e}");
    }

    #[test]
    fn debug_hides_passwords() {
        let c = load(&[
            (
                "DATABASE_URL",
                "postgres://app:s3cret@db:5432/users?password=other",
            ),
            ("REDIS_URL", "redis://:r3dispw@cache:6379/0"),
            ("JWT_PUBLIC_KEY_FILE", "/k.pem"),
        ])
        .unwrap();
        let shown = format!("{c:?}");
        for secret in ["s3cret", "r3dispw", "other"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(
            shown.contains("postgres://app:***@db:5432/users"),
            "{shown}"
        );
        assert_eq!(redact_url("redis://u@h/0"), "redis://***@h/0");
        assert_eq!(redact_url("sqlite://data/x.db"), "sqlite://data/x.db");
        assert_eq!(redact_url("https://tok3n@h/x"), "https://***@h/x");
        assert_eq!(redact_url("no url:s3cret@h"), "***");
    }
}
