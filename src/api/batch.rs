//! `POST /api/profiles/batch`: many profiles in one call, for admins.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::dto::ErrorBody;
use super::extract::{Admin, JsonBody};
use crate::domain::{Profile, UserId, ValidationError};
use crate::error::ApiError;
use crate::state::AppState;

/// Most ids one batch may carry, counted as sent (before removing duplicates).
pub const MAX_BATCH_IDS: usize = 100;

/// Routes of this resource.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(batch_profiles))
}

/// Either a bare array of ids or `{"user_ids": [...]}`.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
pub enum BatchRequest {
    List(Vec<String>),
    Wrapped(WrappedIds),
}

/// `{"user_ids": [...]}`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WrappedIds {
    pub user_ids: Vec<String>,
}

/// The answer of a batch read.
#[derive(Serialize, ToSchema)]
pub struct BatchResponse {
    pub profiles: Vec<Profile>,
    pub count: usize,
    pub cache_hits: usize,
    pub cache_misses: usize,
    #[schema(value_type = Vec<String>)]
    pub not_found: Vec<UserId>,
}

/// Reads up to 100 profiles: one cache round trip, one database query for the misses.
#[utoipa::path(post, path = "/api/profiles/batch", tag = "profiles",
    request_body = BatchRequest,
    security(("bearer" = [])),
    responses((status = 200, body = BatchResponse), (status = 403, body = ErrorBody),
              (status = 422, body = ErrorBody)))]
pub async fn batch_profiles(
    State(state): State<AppState>,
    _: Admin,
    body: JsonBody,
) -> Result<Json<BatchResponse>, ApiError> {
    let raw = match body.parse::<BatchRequest>() {
        Ok(BatchRequest::List(ids)) | Ok(BatchRequest::Wrapped(WrappedIds { user_ids: ids })) => {
            ids
        }
        Err(ApiError::Unprocessable(_)) => {
            return Err(ApiError::Unprocessable(
                "body must be an array of user ids or {\"user_ids\": [...]}".into(),
            ));
        }
        Err(e) => return Err(e),
    };
    if raw.len() > MAX_BATCH_IDS {
        return Err(ValidationError::new(
            "user_ids",
            format!("at most {MAX_BATCH_IDS} ids per batch (got {})", raw.len()),
        )
        .into());
    }
    let ids = raw
        .iter()
        .enumerate()
        .map(|(i, s)| {
            s.parse::<UserId>()
                .map_err(|_| ValidationError::new(format!("user_ids[{i}]"), "must be a UUID"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let out = state.profiles.batch(&ids).await?;
    Ok(Json(BatchResponse {
        count: out.profiles.len(),
        profiles: out.profiles,
        cache_hits: out.cache_hits,
        cache_misses: out.cache_misses,
        not_found: out.not_found,
    }))
}
