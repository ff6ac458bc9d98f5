//! `/api/admin/cache/*`: cache metrics, invalidation and prewarm, for admins.

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::dto::ErrorBody;
use super::extract::{Admin, Subject};
use crate::cache::{CacheMetrics, keys_for};
use crate::db::InvalidationScope;
use crate::error::ApiError;
use crate::state::AppState;
use crate::store::StoreError;

/// Routes of this resource.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_metrics, reset_metrics))
        .routes(routes!(invalidate_user))
        .routes(routes!(prewarm))
}

/// `GET`/`DELETE /api/admin/cache/metrics`: shared hit/miss totals.
#[derive(Debug, Serialize, ToSchema)]
pub struct MetricsBody {
    /// Reads answered with a cached profile or document.
    pub hits: u64,
    /// Every other read, including not-found answers.
    pub misses: u64,
    /// `hits + misses`.
    pub total: u64,
    /// Percent of reads that were hits, 2 decimals; 0.0 when there were none.
    pub hit_rate: f64,
}

impl From<CacheMetrics> for MetricsBody {
    fn from(m: CacheMetrics) -> Self {
        Self {
            hits: m.hits,
            misses: m.misses,
            total: m.total,
            hit_rate: m.hit_rate,
        }
    }
}

/// `POST /api/admin/cache/invalidate/{user_id}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Invalidated {
    /// The keys now holding invalidation markers.
    pub invalidated: Vec<String>,
}

/// `POST /api/admin/cache/prewarm`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Prewarmed {
    /// Entries actually stored (keys already holding a value are left alone).
    pub prewarmed: usize,
}

fn store_down(e: StoreError) -> ApiError {
    tracing::warn!(error = %e, "cache store unavailable for an admin request");
    ApiError::Unavailable("Cache store")
}

/// Hit/miss totals of all instances (flushed about once a second) plus this instance's unflushed ones.
#[utoipa::path(get, path = "/api/admin/cache/metrics", tag = "admin", security(("bearer" = [])),
    responses((status = 200, body = MetricsBody), (status = 403, body = ErrorBody),
              (status = 503, body = ErrorBody)))]
pub async fn get_metrics(
    State(state): State<AppState>,
    _: Admin,
) -> Result<Json<MetricsBody>, ApiError> {
    state
        .cache
        .metrics()
        .await
        .map(|m| Json(m.into()))
        .map_err(store_down)
}

/// Resets the shared totals; answers with the zeroed metrics.
#[utoipa::path(delete, path = "/api/admin/cache/metrics", tag = "admin", security(("bearer" = [])),
    responses((status = 200, body = MetricsBody), (status = 403, body = ErrorBody),
              (status = 503, body = ErrorBody)))]
pub async fn reset_metrics(
    State(state): State<AppState>,
    _: Admin,
) -> Result<Json<MetricsBody>, ApiError> {
    state.cache.reset_metrics().await.map_err(store_down)?;
    Ok(Json(CacheMetrics::from_counts(0, 0).into()))
}

/// Invalidates every cache entry of a user (profile, settings, preferences).
#[utoipa::path(post, path = "/api/admin/cache/invalidate/{user_id}", tag = "admin",
    params(("user_id" = String, Path, format = Uuid)), security(("bearer" = [])),
    responses((status = 200, body = Invalidated), (status = 403, body = ErrorBody),
              (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn invalidate_user(
    State(state): State<AppState>,
    _: Admin,
    Subject(id): Subject,
) -> Result<Json<Invalidated>, ApiError> {
    state
        .cache
        .invalidate(id, InvalidationScope::All)
        .await
        .map_err(store_down)?;
    Ok(Json(Invalidated {
        invalidated: keys_for(InvalidationScope::All, id),
    }))
}

/// Runs the prewarm now (also when start-up prewarm is off).
#[utoipa::path(post, path = "/api/admin/cache/prewarm", tag = "admin", security(("bearer" = [])),
    responses((status = 200, body = Prewarmed), (status = 403, body = ErrorBody)))]
pub async fn prewarm(State(state): State<AppState>, _: Admin) -> Result<Json<Prewarmed>, ApiError> {
    let prewarmed = state.profiles.prewarm().await?;
    Ok(Json(Prewarmed { prewarmed }))
}
