//! `/api/profiles/{user_id}/settings` and `/preferences`: one JSON object each.

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::dto::ErrorBody;
use super::extract::{AdmittedRead, JsonBody, Subject};
use crate::domain::{Document, DocumentKind, JsonObject, UserId};
use crate::error::ApiError;
use crate::state::AppState;

/// Routes of this resource.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_settings, put_settings))
        .routes(routes!(get_preferences, put_preferences))
}

// The four handlers below repeat one shape on purpose (documented boilerplate): utoipa
// documents one method and path per function, and each document kind is its own path, so
// each gets a one-line function over `read` or `replace`.
async fn read(
    state: &AppState,
    kind: DocumentKind,
    read: AdmittedRead,
) -> Result<Json<Value>, ApiError> {
    let doc = state
        .profiles
        .document(kind, read.id, read.look)
        .await?
        .ok_or(ApiError::NotFound("Profile not found"))?;
    Ok(Json(
        json!({ kind.as_str(): doc.value, "cached": doc.cached_at.is_some() }),
    ))
}

async fn replace(
    state: &AppState,
    id: UserId,
    kind: DocumentKind,
    body: &JsonBody,
) -> Result<Json<Value>, ApiError> {
    let data = body.parse_object::<JsonObject>()?;
    Document::validate(&data)?;
    let doc = state
        .profiles
        .replace_document(kind, id, &data)
        .await?
        .ok_or(ApiError::NotFound("Profile not found"))?;
    Ok(Json(json!({ kind.as_str(): doc.data })))
}

/// The user's settings (`{}` when never set).
#[utoipa::path(get, path = "/api/profiles/{user_id}/settings", tag = "documents",
    params(("user_id" = String, Path, format = Uuid)), security(("bearer" = [])),
    responses((status = 200, description = "`{\"settings\": {…}, \"cached\": bool}`"),
              (status = 404, body = ErrorBody)))]
pub async fn get_settings(
    State(state): State<AppState>,
    admitted: AdmittedRead,
) -> Result<Json<Value>, ApiError> {
    read(&state, DocumentKind::Settings, admitted).await
}

/// Replaces the user's settings object (at most 16 KiB).
#[utoipa::path(put, path = "/api/profiles/{user_id}/settings", tag = "documents",
    params(("user_id" = String, Path, format = Uuid)), security(("bearer" = [])),
    request_body(content = Object, description = "any JSON object"),
    responses((status = 200, description = "`{\"settings\": {…}}`"),
              (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn put_settings(
    State(state): State<AppState>,
    Subject(id): Subject,
    body: JsonBody,
) -> Result<Json<Value>, ApiError> {
    replace(&state, id, DocumentKind::Settings, &body).await
}

/// The user's preferences (`{}` when never set).
#[utoipa::path(get, path = "/api/profiles/{user_id}/preferences", tag = "documents",
    params(("user_id" = String, Path, format = Uuid)), security(("bearer" = [])),
    responses((status = 200, description = "`{\"preferences\": {…}, \"cached\": bool}`"),
              (status = 404, body = ErrorBody)))]
pub async fn get_preferences(
    State(state): State<AppState>,
    admitted: AdmittedRead,
) -> Result<Json<Value>, ApiError> {
    read(&state, DocumentKind::Preferences, admitted).await
}

/// Replaces the user's preferences object (at most 16 KiB).
#[utoipa::path(put, path = "/api/profiles/{user_id}/preferences", tag = "documents",
    params(("user_id" = String, Path, format = Uuid)), security(("bearer" = [])),
    request_body(content = Object, description = "any JSON object"),
    responses((status = 200, description = "`{\"preferences\": {…}}`"),
              (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn put_preferences(
    State(state): State<AppState>,
    Subject(id): Subject,
    body: JsonBody,
) -> Result<Json<Value>, ApiError> {
    replace(&state, id, DocumentKind::Preferences, &body).await
}
