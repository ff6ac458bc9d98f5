//! The two limits `bench/run.sh` measures the service against, in the same run, with the
//! same load generator and request shape (path with a user id, `Authorization` header):
//!
//! * `GET /bare/{id}`: a bare axum handler answering a fixed profile-sized JSON body
//!   (about 500 bytes): the HTTP limit of this machine, stack and load generator.
//! * `GET /redis/{id}`: one Redis `GET cache:profile:{id}` per request, answered with the
//!   stored bytes: the one-round-trip floor. It goes through the service's own
//!   `user_api::redis::RedisClient` built from the same configuration (`REDIS_URL`,
//!   `USER_API__REDIS__*`): a multiplexed `ConnectionManager`, the per-call timeout and the
//!   circuit breaker. A missing entry answers 404, so the benchmark sees it as non-2xx.
//!
//! Usage: `REDIS_URL=redis://127.0.0.1:PORT limits 127.0.0.1:PORT`

use std::net::SocketAddr;
use std::process::ExitCode;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use user_api::config::Config;
use user_api::domain::UserId;
use user_api::redis::RedisClient;

/// A profile-sized answer in the service's shape (`{"profile": {…}, "cached": true, …}`).
const BARE_BODY: &str = concat!(
    r#"{"profile":{"user_id":"550e8400-e29b-41d4-a716-446655440000","first_name":"太郎","#,
    r#""last_name":"山田","name":"山田太郎","email":"taro.yamada@example.com","#,
    r#""phone":"555-0142","address":"東京都渋谷区神南1-2-3 サンプルビル4階","#,
    r#""date_of_birth":"1990-01-01","last_login":"2026-11-30T09:15:00Z","#,
    r#""created_at":"2025-09-01T10:00:00Z","updated_at":"2025-09-30T10:00:00Z","#,
    r#""cached_at":"2026-12-01T00:00:00Z"},"cached":true,"#,
    r#""cached_at":"2026-12-01T00:00:00Z"}"#
);

async fn bare(Path(_id): Path<String>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], BARE_BODY).into_response()
}

async fn one_get(State(redis): State<RedisClient>, Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse::<UserId>() else {
        return StatusCode::UNPROCESSABLE_ENTITY.into_response();
    };
    let key = user_api::cache::profile_key(id);
    match redis
        .query::<Option<Vec<u8>>>(::redis::cmd("GET").arg(&key))
        .await
    {
        Ok(Some(bytes)) => ([(header::CONTENT_TYPE, "application/json")], bytes).into_response(),
        Ok(None) => StatusCode::NOT_FOUND.into_response(),
        Err(_) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let Some(addr) = std::env::args()
        .nth(1)
        .and_then(|a| a.parse::<SocketAddr>().ok())
    else {
        eprintln!("usage: REDIS_URL=redis://host:port limits <listen-addr>");
        return ExitCode::from(2);
    };
    let config = match Config::load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("limits: {e}");
            return ExitCode::from(2);
        }
    };
    let redis = match RedisClient::from_config(&config) {
        Ok(Some(r)) if !r.is_cluster() => r,
        Ok(_) => {
            eprintln!("limits: set REDIS_URL (a single node)");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("limits: {e}");
            return ExitCode::from(2);
        }
    };
    redis.connect_in_background();
    let app = Router::new()
        .route("/bare/{id}", get(bare))
        .route("/redis/{id}", get(one_get))
        .with_state(redis);
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("limits: cannot listen on {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!("limits: listening on {addr}");
    if let Err(e) = axum::serve(listener, app).await {
        eprintln!("limits: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
