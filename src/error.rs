//! The one place where failures become HTTP answers.
//!
//! Every handler returns `Result<_, ApiError>`. Client mistakes carry a message written
//! for the client; internal causes (database, Redis, bugs) are logged here with their
//! source chain and answered with a generic text, so nothing internal — and no personal
//! data — ever reaches a response or a log line by accident.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::auth::AuthError;
use crate::db::DbError;
use crate::domain::ValidationError;

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the body is not well-formed JSON.
    #[error("{0}")]
    BadRequest(String),
    /// 401: missing, invalid or expired token.
    #[error(transparent)]
    Unauthorized(#[from] AuthError),
    /// 403: authenticated but not the owner nor an admin.
    #[error("Not allowed to access this profile")]
    Forbidden,
    /// 404.
    #[error("{0}")]
    NotFound(&'static str),
    /// 405.
    #[error("Method not allowed")]
    MethodNotAllowed,
    /// 409.
    #[error("{0}")]
    Conflict(&'static str),
    /// 413.
    #[error("Request body too large (limit 64 KiB)")]
    PayloadTooLarge,
    /// 415.
    #[error("Content-Type must be application/json")]
    UnsupportedMediaType,
    /// 422: a field or id that fails validation.
    #[error(transparent)]
    Validation(#[from] ValidationError),
    /// 422: a body of the wrong shape (unknown field, wrong type), with serde's explanation.
    #[error("{0}")]
    Unprocessable(String),
    /// 429; the rate-limit layer adds the headers.
    #[error("Rate limit exceeded. Try again in {retry_after_secs} seconds.")]
    RateLimited {
        /// Seconds until the window ends.
        retry_after_secs: u64,
    },
    /// 503: a dependency needed right now is down.
    #[error("{0} is unavailable, try again shortly")]
    Unavailable(&'static str),
    /// 500: a bug or an unexpected failure; the cause is logged, not sent.
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ApiError {
    /// Wraps an unexpected failure.
    pub fn internal(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::Internal(e.into())
    }

    /// The status code this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(AuthError::KeysUnavailable) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Validation(_) | Self::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::AlreadyExists => Self::Conflict("Profile already exists"),
            DbError::EmailTaken => Self::Conflict("Email already in use"),
            DbError::Unavailable(cause) => {
                tracing::warn!(error = %cause, "database unavailable");
                Self::Unavailable("Database")
            }
            other => Self::internal(other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let detail = match &self {
            Self::Internal(cause) => {
                // Display only: driver errors' Debug forms can carry row values (PII).
                let mut chain = cause.to_string();
                let mut next = std::error::Error::source(&**cause);
                while let Some(e) = next {
                    chain.push_str(": ");
                    chain.push_str(&e.to_string());
                    next = e.source();
                }
                tracing::error!(error = %chain, "request failed");
                "Internal server error".to_owned()
            }
            Self::Unauthorized(AuthError::KeysUnavailable) => {
                "Token keys are unavailable, try again shortly".to_owned()
            }
            other => other.to_string(),
        };
        let mut res = (status, Json(json!({ "detail": detail }))).into_response();
        match &self {
            Self::Unauthorized(AuthError::Missing) => {
                res.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Self::Unauthorized(AuthError::KeysUnavailable) => {}
            Self::Unauthorized(_) => {
                res.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer error=\"invalid_token\""),
                );
            }
            Self::RateLimited { retry_after_secs } => {
                res.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            _ => {}
        }
        res
    }
}
