//! Answers decided on the request head alone, before any handler runs.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{Response, header};
use axum::middleware::Next;
use axum::response::IntoResponse;

use super::extract::MAX_BODY_BYTES;
use crate::error::ApiError;

/// A request whose `Content-Length` is over the body limit gets 413 at once, instead of
/// waiting for a body that may never come (the connection layer adds `Connection: close`,
/// since the body is not read).
pub async fn refuse_oversized_body(req: Request, next: Next) -> Response<Body> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return ApiError::PayloadTooLarge.into_response();
    }
    next.run(req).await
}
