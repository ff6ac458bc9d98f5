//! Test harness: the real service on port 0 over a fresh database, real tokens, real HTTP.
#![allow(dead_code)]

pub mod db;
pub mod ratelimit;
pub mod redis;

use std::path::PathBuf;
use std::sync::OnceLock;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use user_api::App;
use user_api::config::Config;
use user_api::domain::UserId;

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

/// A valid access token for `sub`.
pub fn token(sub: UserId, admin: bool) -> String {
    let now = chrono::Utc::now().timestamp();
    sign(&json!({
        "sub": sub.to_string(),
        "role": if admin { "admin" } else { "user" },
        "iat": now,
        "exp": now + 3600,
        "token_type": "access",
    }))
}

/// The Redis the tests share (`TEST_REDIS_URL`, else the standard local port).
pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A base configuration for tests on `backend`.
pub async fn test_config(backend: Backend) -> Config {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut c = Config {
        addr: "127.0.0.1:0".parse().unwrap(),
        database_url: match backend {
            Backend::Postgres => db::fresh_postgres_url().await,
            Backend::Sqlite => db::fresh_sqlite_url(),
        },
        ..Config::default()
    };
    c.jwt.public_key_file = Some(keys().public_file.clone());
    c.prewarm.enabled = false;
    c.server.log_format = "pretty".into();
    c.database.max_connections = 5;
    // Limits out of the way of suites about other things (tests/ratelimit_* set their
    // own), and many test binaries send bad tokens from 127.0.0.1 to one shared Redis.
    c.rate_limits = user_api::config::RateLimitConfig {
        profiles_read: 1_000_000,
        profiles_update: 1_000_000,
        profiles_batch: 1_000_000,
        default: 1_000_000,
        per_address: 1_000_000,
        ..c.rate_limits
    };
    c
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
    /// Starts the service on `backend` with the default test configuration.
    pub async fn spawn(backend: Backend) -> Self {
        Self::spawn_with(test_config(backend).await).await
    }

    /// Starts the service with `config`.
    pub async fn spawn_with(config: Config) -> Self {
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

    /// Creates a profile for `id` (as its owner) and returns the created profile JSON.
    pub async fn create_profile(&self, id: UserId, fields: Value) -> Value {
        self.create_profile_as(&token(id, false), &fields).await
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
}

/// Reads a JSON body and the status together.
pub async fn json_of(res: reqwest::Response) -> (u16, Value) {
    let status = res.status().as_u16();
    let text = res.text().await.expect("body");
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("status {status}: body is not JSON: {text:?}"));
    (status, body)
}

/// Generates `#[tokio::test]`s running each listed async fn against both backends.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() { super::$name($crate::common::Backend::Postgres).await }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() { super::$name($crate::common::Backend::Sqlite).await }
            )*
        }
    };
}
