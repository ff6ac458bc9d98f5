//! Operations: liveness, readiness, the stack's `/` and `/healthz`, Prometheus metrics.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::cache::EvictionCheck;
use crate::state::AppState;

/// Routes of this resource.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(root))
        .routes(routes!(health))
        .routes(routes!(healthz))
        .routes(routes!(ready))
        .routes(routes!(metrics))
}

/// Liveness body.
#[derive(Serialize, ToSchema)]
pub struct Health {
    /// Always "ok".
    pub status: &'static str,
}

/// `GET /` body, as the stack's other services expect it.
#[derive(Serialize, ToSchema)]
pub struct Root {
    /// Always "User Profile API is running".
    pub message: &'static str,
}

/// `/healthz` body, in the stack's shape (SPEC 7).
#[derive(Serialize, ToSchema)]
pub struct StackHealth {
    /// "healthy"; "degraded" when only Redis fails; "unhealthy" when the database fails.
    pub status: &'static str,
    /// "ok", or "error" when `SELECT 1` fails.
    pub database: &'static str,
    /// "ok", or "error" when `PING` fails; "embedded" without a Redis (the in-process
    /// store, nothing to check).
    pub redis: &'static str,
}

/// Readiness body.
#[derive(Serialize, ToSchema)]
pub struct Readiness {
    /// "ok", or "degraded" while Redis is down.
    pub status: &'static str,
    /// "ok" or "down".
    pub database: &'static str,
    /// "ok" or "down" (the embedded store is always "ok").
    pub redis: &'static str,
    /// Which cache and limiter store serves: "redis", "redis-cluster" or "embedded".
    pub store: &'static str,
    /// Redis' `maxmemory-policy`, when it can be read.
    pub redis_eviction_policy: Option<String>,
    /// Conditions an operator should fix, though the service still serves.
    pub warnings: Vec<String>,
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/health", tag = "ops", responses((status = 200, body = Health)))]
pub async fn health() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// The stack's "is it there" probe.
#[utoipa::path(get, path = "/", tag = "ops", responses((status = 200, body = Root)))]
pub async fn root() -> Json<Root> {
    Json(Root {
        message: "User Profile API is running",
    })
}

/// The stack's health check: `SELECT 1` on the database and `PING` to Redis, each
/// bounded. 503 when the database fails; Redis alone failing is "degraded" (200): the
/// service still serves from the database.
#[utoipa::path(get, path = "/healthz", tag = "ops",
    responses((status = 200, body = StackHealth), (status = 503, body = StackHealth)))]
pub async fn healthz(State(state): State<AppState>) -> impl IntoResponse {
    let ping = |ok: bool| if ok { "ok" } else { "error" };
    let database = ping(matches!(
        tokio::time::timeout(Duration::from_secs(2), state.profiles.repo().ping()).await,
        Ok(Ok(()))
    ));
    let redis = match &state.redis {
        // The client's own per-call timeout and circuit breaker bound this.
        Some(client) => ping(client.ping().await),
        None => "embedded",
    };
    let (status, code) = match (database, redis) {
        ("error", _) => ("unhealthy", StatusCode::SERVICE_UNAVAILABLE),
        (_, "error") => ("degraded", StatusCode::OK),
        _ => ("healthy", StatusCode::OK),
    };
    let body = StackHealth {
        status,
        database,
        redis,
    };
    (code, Json(body))
}

/// Readiness: 200 while the database answers (Redis down is only degraded), else 503.
#[utoipa::path(get, path = "/ready", tag = "ops",
    responses((status = 200, body = Readiness), (status = 503, body = Readiness)))]
pub async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    let db_ok = matches!(
        tokio::time::timeout(Duration::from_secs(2), state.profiles.repo().ping()).await,
        Ok(Ok(()))
    );
    let (store, redis_ok) = state.store_health();
    let eviction = state.cache.check_eviction_policy().await;
    let (redis_eviction_policy, warnings) = match eviction {
        EvictionCheck::Unknown => (None, Vec::new()),
        EvictionCheck::Safe(p) => (Some(p), Vec::new()),
        EvictionCheck::Unsafe(p) => (
            Some(p.clone()),
            vec![format!(
                "redis maxmemory-policy is {p}: Redis may evict the cache's write states; set noeviction"
            )],
        ),
    };
    let body = Readiness {
        status: if db_ok && redis_ok { "ok" } else { "degraded" },
        database: if db_ok { "ok" } else { "down" },
        redis: if redis_ok { "ok" } else { "down" },
        store,
        redis_eviction_policy,
        warnings,
    };
    let status = if db_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}

/// Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", tag = "ops",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let pool = state.profiles.repo().pool_stats();
    metrics::gauge!("db_pool_connections").set(pool.size as f64);
    metrics::gauge!("db_pool_idle_connections").set(pool.idle as f64);
    metrics::gauge!("db_pool_max_connections").set(pool.max as f64);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}
