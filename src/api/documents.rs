//! `/api/profiles/{user_id}/settings` and `/preferences`: one JSON object each.

use axum::extract::State;
use axum::{Extension, Json};
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::dto::ErrorBody;
use super::extract::{JsonBody, RawId, authorize, parse_user_id};
use crate::auth::Caller;
use crate::cache::Prefetched;
use crate::domain::{Document, DocumentKind, ValidationError};
use crate::error::ApiError;
use crate::state::AppState;

/// Routes of this resource.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_settings, put_settings))
        .routes(routes!(get_preferences, put_preferences))
}

async fn read(
    state: &AppState,
    caller: &Caller,
    raw: &str,
    kind: DocumentKind,
    prefetched: Option<Extension<Prefetched>>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_user_id(raw)?;
    authorize(caller, id)?;
    let doc = state
        .profiles
        .document(kind, id, prefetched.map(|Extension(p)| p))
        .await?
        .ok_or(ApiError::NotFound("Profile not found"))?;
    Ok(Json(
        json!({ kind.as_str(): doc.value, "cached": doc.cached_at.is_some() }),
    ))
}

async fn replace(
    state: &AppState,
    caller: &Caller,
    raw: &str,
    kind: DocumentKind,
    body: &JsonBody,
) -> Result<Json<Value>, ApiError> {
    let id = parse_user_id(raw)?;
    authorize(caller, id)?;
    let data = match body.parse::<Value>()? {
        Value::Object(map) => map,
        _ => return Err(ValidationError::new("body", "must be a JSON object").into()),
    };
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
    caller: Caller,
    RawId(raw): RawId,
    prefetched: Option<Extension<Prefetched>>,
) -> Result<Json<Value>, ApiError> {
    read(&state, &caller, &raw, DocumentKind::Settings, prefetched).await
}

/// Replaces the user's settings object (at most 16 KiB).
#[utoipa::path(put, path = "/api/profiles/{user_id}/settings", tag = "documents",
    params(("user_id" = String, Path, format = Uuid)), security(("bearer" = [])),
    request_body(content = Object, description = "any JSON object"),
    responses((status = 200, description = "`{\"settings\": {…}}`"),
              (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn put_settings(
    State(state): State<AppState>,
    caller: Caller,
    RawId(raw): RawId,
    body: JsonBody,
) -> Result<Json<Value>, ApiError> {
    replace(&state, &caller, &raw, DocumentKind::Settings, &body).await
}

/// The user's preferences (`{}` when never set).
#[utoipa::path(get, path = "/api/profiles/{user_id}/preferences", tag = "documents",
    params(("user_id" = String, Path, format = Uuid)), security(("bearer" = [])),
    responses((status = 200, description = "`{\"preferences\": {…}, \"cached\": bool}`"),
              (status = 404, body = ErrorBody)))]
pub async fn get_preferences(
    State(state): State<AppState>,
    caller: Caller,
    RawId(raw): RawId,
    prefetched: Option<Extension<Prefetched>>,
) -> Result<Json<Value>, ApiError> {
    read(&state, &caller, &raw, DocumentKind::Preferences, prefetched).await
}

/// Replaces the user's preferences object (at most 16 KiB).
#[utoipa::path(put, path = "/api/profiles/{user_id}/preferences", tag = "documents",
    params(("user_id" = String, Path, format = Uuid)), security(("bearer" = [])),
    request_body(content = Object, description = "any JSON object"),
    responses((status = 200, description = "`{\"preferences\": {…}}`"),
              (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn put_preferences(
    State(state): State<AppState>,
    caller: Caller,
    RawId(raw): RawId,
    body: JsonBody,
) -> Result<Json<Value>, ApiError> {
    replace(&state, &caller, &raw, DocumentKind::Preferences, &body).await
}
