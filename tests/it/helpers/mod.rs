//! The harness every test module shares: the real service on port 0 over a fresh
//! database, real tokens, real HTTP. A test starts its service with
//! [`TestApp::builder`], the one way to configure one; [`db`], [`redis`] and
//! [`ratelimit`] hold the databases, Redis servers and proxies, and the suite-specific
//! checks; [`raw_http`] is the raw HTTP/1.1 client and response reader.

pub mod db;
pub mod ratelimit;
pub mod raw_http;
pub mod redis;

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use user_api::App;
pub use user_api::auth::Role;
use user_api::config::{Config, RateLimitConfig};
use user_api::domain::UserId;

use self::redis::Target;

/// Which database backend a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// A test RSA key pair, made once per test process.
pub struct TestKeys {
    pub private_pem: String,
    pub public_pem: String,
    pub public_file: PathBuf,
}

/// The process-wide test key pair.
pub fn keys() -> &'static TestKeys {
    static KEYS: OnceLock<TestKeys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let (private_pem, public_pem) =
            user_api::auth::generate_rsa_keypair().expect("generate test key pair");
        let dir = std::env::temp_dir().join(format!("user-api-keys-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("key dir");
        let public_file = dir.join("public.pem");
        std::fs::write(&public_file, &public_pem).expect("write public key");
        TestKeys {
            private_pem,
            public_pem,
            public_file,
        }
    })
}

/// Signs arbitrary claims with the test key (RS256).
pub fn sign(claims: &Value) -> String {
    user_api::auth::sign_rs256(keys().private_pem.as_bytes(), None, claims).expect("sign")
}

/// An access token for `sub` with `role`, valid for an hour. It has no `iat`, so the
/// service records no login from it: nothing in the background invalidates the cache
/// under a test that counts hits, commands or invalidations.
pub fn token(sub: UserId, role: Role) -> String {
    let now = chrono::Utc::now().timestamp();
    sign(&json!({
        "sub": sub.to_string(),
        "role": role.as_str(),
        "exp": now + 3600,
        "token_type": "access",
    }))
}

/// [`token`] with `iat` (now), as the auth service issues them: the service records a
/// login from it, off the request's path, and so invalidates the cached profile.
pub fn token_with_login(sub: UserId, role: Role) -> String {
    let now = chrono::Utc::now().timestamp();
    sign(&json!({
        "sub": sub.to_string(),
        "role": role.as_str(),
        "iat": now,
        "exp": now + 3600,
        "token_type": "access",
    }))
}

/// The Redis the tests share (`TEST_REDIS_URL`, else the standard local port).
pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// The rate limits a test runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limits {
    /// Every policy at 1,000,000: the limiter out of the way of suites about other things
    /// (many test processes send bad tokens from 127.0.0.1 to one shared Redis).
    Quiet,
    /// The production policies, for the rate-limit suites.
    Production,
}

/// Where the service finds Redis.
#[derive(Debug, Clone)]
enum RedisAt {
    /// Nowhere: the in-process store.
    Nowhere,
    Node(String),
    Cluster(Vec<String>),
}

/// A configuration change a test asks for.
type Tweak = Box<dyn FnOnce(&mut Config) + Send>;

/// How a test's service is set up. [`TestApp::builder`] starts from what every suite
/// shares: SQLite, no Redis (the in-process store), quiet limits, prewarm off, the test
/// key, five database connections.
pub struct TestAppBuilder {
    backend: Backend,
    redis: RedisAt,
    limits: Limits,
    tweaks: Vec<Tweak>,
}

impl TestAppBuilder {
    /// The database backend (a fresh database or file either way).
    pub fn with_backend(mut self, backend: Backend) -> Self {
        self.backend = backend;
        self
    }

    /// Cache and rate limits on `target`: the shared Redis, a test-owned node or cluster,
    /// or the in-process store. The Redis timeout is a generous second: many test
    /// processes share two cores, and a timeout missed under that load would turn an
    /// expected hit into a miss (the outage tests put the production one back).
    pub fn with_store(mut self, target: &Target) -> Self {
        self.redis = match target {
            Target::Shared(url) => RedisAt::Node(url.clone()),
            Target::Own(server) => RedisAt::Node(server.url()),
            Target::Cluster(cluster) => RedisAt::Cluster(cluster.urls()),
            Target::Memory => RedisAt::Nowhere,
        };
        self
    }

    /// Redis reached at `url` instead of the store's own address: a proxy in front of it.
    pub fn with_proxy(mut self, url: String) -> Self {
        self.redis = RedisAt::Node(url);
        self
    }

    /// The rate limits.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Any other setting, applied last, in the order given.
    pub fn with(mut self, tweak: impl FnOnce(&mut Config) + Send + 'static) -> Self {
        self.tweaks.push(Box::new(tweak));
        self
    }

    /// The configuration, for tests that start several instances of it (they share the
    /// database) or start one themselves.
    pub async fn config(self) -> Config {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let mut c = Config {
            addr: "127.0.0.1:0".parse().unwrap(),
            database_url: match self.backend {
                Backend::Postgres => db::fresh_postgres_url().await,
                Backend::Sqlite => db::fresh_sqlite_url(),
            },
            ..Config::default()
        };
        c.jwt.public_key_file = Some(keys().public_file.clone());
        c.prewarm.enabled = false;
        c.server.log_format = "pretty".into();
        c.database.max_connections = 5;
        c.rate_limits = match self.limits {
            Limits::Production => RateLimitConfig::default(),
            Limits::Quiet => RateLimitConfig {
                profiles_read: 1_000_000,
                profiles_update: 1_000_000,
                profiles_batch: 1_000_000,
                default: 1_000_000,
                per_address: 1_000_000,
                ..RateLimitConfig::default()
            },
        };
        match self.redis {
            RedisAt::Nowhere => {}
            RedisAt::Node(url) => c.redis_url = Some(url),
            RedisAt::Cluster(urls) => c.redis_cluster_urls = urls,
        }
        if !c.uses_embedded_store() {
            c.redis.timeout_ms = 1_000;
        }
        for tweak in self.tweaks {
            tweak(&mut c);
        }
        c
    }

    /// Starts the service; see [`TestApp::spawn_with`].
    pub async fn spawn(self) -> TestApp {
        TestApp::spawn_with(self.config().await).await
    }
}

/// A running service.
pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub config: Config,
    pub state: user_api::state::AppState,
    shutdown: CancellationToken,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl TestApp {
    /// A service to configure; see [`TestAppBuilder`].
    pub fn builder() -> TestAppBuilder {
        TestAppBuilder {
            backend: Backend::Sqlite,
            redis: RedisAt::Nowhere,
            limits: Limits::Quiet,
            tweaks: Vec::new(),
        }
    }

    /// Starts the service with `config` and, when it has a Redis, waits until it is
    /// connected (several instances of one configuration share its database).
    pub async fn spawn_with(config: Config) -> Self {
        let app = Self::spawn_now(config).await;
        if app.state.redis.is_some() {
            app.wait_for_redis().await;
        }
        app
    }

    /// Starts the service with `config` without waiting for its Redis, which may be down.
    pub async fn spawn_now(config: Config) -> Self {
        let app = App::build(config.clone()).await.expect("app builds");
        let base = format!("http://{}", app.local_addr());
        let state = app.state().clone();
        let shutdown = app.shutdown_token();
        tokio::spawn(app.run_until_stopped());
        Self {
            base,
            client: reqwest::Client::new(),
            config,
            state,
            shutdown,
        }
    }

    /// Waits until the service's Redis client is connected and answers (it connects
    /// lazily; a cluster client first learns the slots).
    pub async fn wait_for_redis(&self) {
        let redis = self.state.redis.as_ref().expect("redis configured");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !redis.is_connected() || redis.query::<String>(&::redis::cmd("PING")).await.is_err() {
            assert!(Instant::now() < deadline, "the app never reached Redis");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    /// Starts a graceful shutdown (as SIGTERM does in the binary).
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// A URL on this instance.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// `GET path` with a bearer token.
    pub async fn get(&self, path: &str, token: &str) -> reqwest::Response {
        self.send(reqwest::Method::GET, path, token).await
    }

    /// `GET path` without any `Authorization` header.
    pub async fn get_anonymous(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request")
    }

    /// The Prometheus exposition (`GET /metrics`) as text.
    pub async fn metrics(&self) -> String {
        self.get_anonymous("/metrics")
            .await
            .text()
            .await
            .expect("metrics text")
    }

    /// `method path` with a bearer token and no body.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
    ) -> reqwest::Response {
        self.client
            .request(method, self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("request")
    }

    /// `method path` with a bearer token and a JSON body.
    pub async fn send_json(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: &Value,
    ) -> reqwest::Response {
        self.client
            .request(method, self.url(path))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .expect("request")
    }

    /// `DELETE path` with a bearer token.
    pub async fn delete(&self, path: &str, token: &str) -> reqwest::Response {
        self.send(reqwest::Method::DELETE, path, token).await
    }

    /// Creates a profile for `id` as an admin would (works whatever iss/aud the app requires).
    pub async fn create_profile_with_claims(&self, id: UserId) {
        let now = chrono::Utc::now().timestamp();
        let mut claims =
            json!({"sub": UserId::random().to_string(), "role": "admin", "exp": now + 600});
        if let Some(iss) = &self.config.jwt.iss {
            claims["iss"] = json!(iss);
        }
        if let Some(aud) = &self.config.jwt.aud {
            claims["aud"] = json!(aud);
        }
        let res = self
            .send_json(
                reqwest::Method::POST,
                "/api/profiles",
                &sign(&claims),
                &json!({"user_id": id.to_string()}),
            )
            .await;
        assert_eq!(res.status(), 201);
    }

    /// Creates a profile for `id` with `fields`, as its owner (a token without `iat`);
    /// returns the created profile JSON.
    pub async fn create_profile(&self, id: UserId, fields: Value) -> Value {
        self.create_profile_as(&token(id, Role::User), &fields)
            .await
    }

    /// `POST /api/profiles` of `body` with `token`, which must answer 201; returns the
    /// created profile JSON.
    pub async fn create_profile_as(&self, token: &str, body: &Value) -> Value {
        let res = self
            .send_json(reqwest::Method::POST, "/api/profiles", token, body)
            .await;
        assert_eq!(
            res.status(),
            201,
            "create failed: {}",
            res.text().await.unwrap_or_default()
        );
        res.json::<Value>().await.expect("json")["profile"].clone()
    }

    /// `GET /api/profiles/{id}` as an admin: (status, body).
    pub async fn read_profile(&self, id: UserId) -> (u16, Value) {
        json_of(
            self.get(
                &format!("/api/profiles/{id}"),
                &token(UserId::random(), Role::Admin),
            )
            .await,
        )
        .await
    }

    /// `method path` with `body` as an admin: (status, body).
    pub async fn as_admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &Value,
    ) -> (u16, Value) {
        json_of(
            self.send_json(method, path, &token(UserId::random(), Role::Admin), body)
                .await,
        )
        .await
    }

    /// A counter of the Prometheus exposition, e.g. `db_queries_total{op="fetch"}`.
    pub async fn prom_counter(&self, series: &str) -> u64 {
        self.metrics()
            .await
            .lines()
            .find_map(|l| {
                l.strip_prefix(series)
                    .and_then(|rest| rest.trim().parse::<f64>().ok())
            })
            .map(|v| v as u64)
            .unwrap_or(0)
    }
}

/// Polls `check` until it returns true or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Reads a JSON body and the status together.
pub async fn json_of(res: reqwest::Response) -> (u16, Value) {
    let status = res.status().as_u16();
    let text = res.text().await.expect("body");
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("status {status}: body is not JSON: {text:?}"));
    (status, body)
}
