//! `/api/profiles`: read, create, update, delete, and the caller's own profile.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::dto::{ErrorBody, ProfileCreated, ProfileRead, ProfileUpdated};
use super::extract::{AdmittedRead, JsonBody, Subject, authorize};
use crate::auth::Caller;
use crate::domain::{ProfileInput, ProfilePatchInput, UserId};
use crate::error::ApiError;
use crate::service::ProfileJson;
use crate::state::AppState;

/// Routes of this resource.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_profile))
        .routes(routes!(get_me, update_me, patch_me))
        .routes(routes!(get_me_v1, update_me_v1))
        .routes(routes!(
            get_profile,
            update_profile,
            patch_profile,
            delete_profile
        ))
}

async fn read(state: &AppState, read: AdmittedRead) -> Result<Response, ApiError> {
    match state.profiles.get_json(read.id, read.look).await? {
        // The cached entry is the profile object of a hit, `cached_at` included.
        Some(ProfileJson::Cached { entry, cached_at }) => {
            let mut body = String::with_capacity(entry.len() + cached_at.len() + 48);
            body.push_str("{\"profile\":");
            body.push_str(&entry);
            body.push_str(",\"cached\":true,\"cached_at\":\"");
            body.push_str(&cached_at);
            body.push_str("\"}");
            Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
        }
        Some(ProfileJson::Read(lookup)) => Ok(Json(ProfileRead::from(lookup)).into_response()),
        None => Err(ApiError::NotFound("Profile not found")),
    }
}

/// Reads a profile (cache-aside).
#[utoipa::path(get, path = "/api/profiles/{user_id}", tag = "profiles",
    params(("user_id" = String, Path, format = Uuid)),
    security(("bearer" = [])),
    responses((status = 200, body = ProfileRead), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn get_profile(
    State(state): State<AppState>,
    admitted: AdmittedRead,
) -> Result<Response, ApiError> {
    read(&state, admitted).await
}

/// Reads the caller's own profile.
#[utoipa::path(get, path = "/api/profiles/me", tag = "profiles",
    security(("bearer" = [])),
    responses((status = 200, body = ProfileRead), (status = 404, body = ErrorBody)))]
pub async fn get_me(
    State(state): State<AppState>,
    admitted: AdmittedRead,
) -> Result<Response, ApiError> {
    read(&state, admitted).await
}

/// Reads the caller's own profile: `/api/profiles/me` under the path the stack's other
/// services call.
#[utoipa::path(get, path = "/api/v1/profiles/me", tag = "profiles",
    security(("bearer" = [])),
    responses((status = 200, body = ProfileRead), (status = 404, body = ErrorBody)))]
pub async fn get_me_v1(
    State(state): State<AppState>,
    admitted: AdmittedRead,
) -> Result<Response, ApiError> {
    read(&state, admitted).await
}

/// Creates a profile; `user_id` defaults to the caller's.
#[utoipa::path(post, path = "/api/profiles", tag = "profiles",
    request_body = ProfileInput,
    security(("bearer" = [])),
    responses((status = 201, body = ProfileCreated), (status = 403, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn create_profile(
    State(state): State<AppState>,
    caller: Caller,
    body: JsonBody,
) -> Result<impl IntoResponse, ApiError> {
    let (id, new) = body.parse_object::<ProfileInput>()?.validate()?;
    let id = id.unwrap_or(caller.user_id);
    authorize(&caller, id)?;
    let profile = state.profiles.create(id, &new).await?;
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&format!("/api/profiles/{id}")) {
        headers.insert(header::LOCATION, v);
    }
    Ok((
        StatusCode::CREATED,
        headers,
        Json(ProfileCreated { profile }),
    ))
}

// The update handlers below repeat one shape on purpose (documented boilerplate): utoipa
// documents one method and path per function, and each operation needs its own id and
// summary in the OpenAPI document, so each route gets a one-line function over this one.
async fn apply_update(
    state: &AppState,
    id: UserId,
    body: &JsonBody,
) -> Result<Json<ProfileUpdated>, ApiError> {
    let patch = body.parse_object::<ProfilePatchInput>()?.validate()?;
    let profile = state
        .profiles
        .update(id, &patch)
        .await?
        .ok_or(ApiError::NotFound("Profile not found"))?;
    Ok(Json(ProfileUpdated {
        message: "Profile updated successfully",
        profile,
    }))
}

/// Updates the fields sent (`null` clears one).
#[utoipa::path(put, path = "/api/profiles/{user_id}", tag = "profiles",
    params(("user_id" = String, Path, format = Uuid)),
    request_body = ProfilePatchInput,
    security(("bearer" = [])),
    responses((status = 200, body = ProfileUpdated), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn update_profile(
    State(state): State<AppState>,
    Subject(id): Subject,
    body: JsonBody,
) -> Result<Json<ProfileUpdated>, ApiError> {
    apply_update(&state, id, &body).await
}

/// Same as `PUT`: a partial update.
#[utoipa::path(patch, path = "/api/profiles/{user_id}", tag = "profiles",
    params(("user_id" = String, Path, format = Uuid)),
    request_body = ProfilePatchInput,
    security(("bearer" = [])),
    responses((status = 200, body = ProfileUpdated), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn patch_profile(
    State(state): State<AppState>,
    Subject(id): Subject,
    body: JsonBody,
) -> Result<Json<ProfileUpdated>, ApiError> {
    apply_update(&state, id, &body).await
}

/// Updates the caller's own profile: the fields sent (`null` clears one).
#[utoipa::path(put, path = "/api/profiles/me", tag = "profiles",
    request_body = ProfilePatchInput,
    security(("bearer" = [])),
    responses((status = 200, body = ProfileUpdated), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn update_me(
    State(state): State<AppState>,
    Subject(me): Subject,
    body: JsonBody,
) -> Result<Json<ProfileUpdated>, ApiError> {
    apply_update(&state, me, &body).await
}

/// Same as `PUT /api/profiles/me`.
#[utoipa::path(patch, path = "/api/profiles/me", tag = "profiles",
    request_body = ProfilePatchInput,
    security(("bearer" = [])),
    responses((status = 200, body = ProfileUpdated), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn patch_me(
    State(state): State<AppState>,
    Subject(me): Subject,
    body: JsonBody,
) -> Result<Json<ProfileUpdated>, ApiError> {
    apply_update(&state, me, &body).await
}

/// `PUT /api/profiles/me` under the path the stack's other services call.
#[utoipa::path(put, path = "/api/v1/profiles/me", tag = "profiles",
    request_body = ProfilePatchInput,
    security(("bearer" = [])),
    responses((status = 200, body = ProfileUpdated), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn update_me_v1(
    State(state): State<AppState>,
    Subject(me): Subject,
    body: JsonBody,
) -> Result<Json<ProfileUpdated>, ApiError> {
    apply_update(&state, me, &body).await
}

/// Deletes a profile with its settings and preferences.
#[utoipa::path(delete, path = "/api/profiles/{user_id}", tag = "profiles",
    params(("user_id" = String, Path, format = Uuid)),
    security(("bearer" = [])),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete_profile(
    State(state): State<AppState>,
    Subject(id): Subject,
) -> Result<StatusCode, ApiError> {
    if state.profiles.delete(id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound("Profile not found"))
    }
}
