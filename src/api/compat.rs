//! `/profile`: the caller's own profile, for the existing front ends that proxy it.
//! These answer with the bare profile object, as the service they replace did.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::dto::ErrorBody;
use super::extract::{AdmittedRead, JsonBody};
use crate::auth::Caller;
use crate::domain::{Profile, ProfileInput, ProfilePatch, ProfilePatchInput};
use crate::error::ApiError;
use crate::state::AppState;

/// Routes of this resource.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_own, upsert_own, update_own, delete_own))
}

/// The caller's profile, created empty on first use.
#[utoipa::path(get, path = "/profile", tag = "compat", security(("bearer" = [])),
    responses((status = 200, body = Profile)))]
pub async fn get_own(
    State(state): State<AppState>,
    admitted: AdmittedRead,
) -> Result<Json<Profile>, ApiError> {
    state
        .profiles
        .get_or_create(admitted.id, admitted.look)
        .await?
        .map(Json)
        .ok_or(ApiError::NotFound("Profile not found"))
}

/// Creates the caller's profile or updates the fields sent.
#[utoipa::path(post, path = "/profile", tag = "compat", security(("bearer" = [])),
    request_body = ProfileInput,
    responses((status = 200, body = Profile), (status = 409, body = ErrorBody),
              (status = 422, body = ErrorBody)))]
pub async fn upsert_own(
    State(state): State<AppState>,
    caller: Caller,
    body: JsonBody,
) -> Result<Json<Profile>, ApiError> {
    let (id, new) = body.parse_object::<ProfileInput>()?.validate()?;
    if id.is_some_and(|id| id != caller.user_id) {
        return Err(ApiError::Forbidden);
    }
    let patch = ProfilePatch::from(new);
    let (profile, _created) = state.profiles.upsert(caller.user_id, &patch).await?;
    Ok(Json(profile))
}

/// Updates the caller's profile (404 when there is none).
#[utoipa::path(put, path = "/profile", tag = "compat", security(("bearer" = [])),
    request_body = ProfilePatchInput,
    responses((status = 200, body = Profile), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn update_own(
    State(state): State<AppState>,
    caller: Caller,
    body: JsonBody,
) -> Result<Json<Profile>, ApiError> {
    let patch = body.parse_object::<ProfilePatchInput>()?.validate()?;
    state
        .profiles
        .update(caller.user_id, &patch)
        .await?
        .map(Json)
        .ok_or(ApiError::NotFound("Profile not found"))
}

/// Deletes the caller's profile with its settings and preferences (404 when there is
/// none), as `DELETE /api/profiles/{user_id}` does.
#[utoipa::path(delete, path = "/profile", tag = "compat", security(("bearer" = [])),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete_own(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<StatusCode, ApiError> {
    if state.profiles.delete(caller.user_id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound("Profile not found"))
    }
}
