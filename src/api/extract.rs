//! Request extractors that turn every bad input into an `ApiError` with a JSON body.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::auth::{AuthError, Caller};
use crate::domain::UserId;
use crate::error::ApiError;

/// Largest request body accepted (SPEC 6).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// A JSON request body, read (size and content type checked) but parsed only when the
/// handler asks — after it has checked the id and the caller's rights.
pub struct JsonBody(Bytes);

impl JsonBody {
    /// Parses the body: malformed JSON is 400, a well-formed body of the wrong shape 422.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        serde_json::from_slice(&self.0).map_err(|e| {
            use serde_json::error::Category;
            match e.classify() {
                Category::Data => ApiError::Unprocessable(e.to_string()),
                Category::Syntax | Category::Eof | Category::Io => {
                    ApiError::BadRequest(format!("Malformed JSON body: {e}"))
                }
            }
        })
    }
}

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|mime| {
                let mime = mime.trim().to_ascii_lowercase();
                mime == "application/json"
                    || (mime.starts_with("application/") && mime.ends_with("+json"))
            })
            .unwrap_or(false);
        if !is_json {
            return Err(ApiError::UnsupportedMediaType);
        }
        match Bytes::from_request(req, state).await {
            Ok(b) => Ok(Self(b)),
            Err(BytesRejection::FailedToBufferBody(e))
                if e.body_text().to_ascii_lowercase().contains("length limit") =>
            {
                Err(ApiError::PayloadTooLarge)
            }
            Err(e) if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError::PayloadTooLarge)
            }
            Err(e) => Err(ApiError::BadRequest(format!(
                "Could not read body: {}",
                e.body_text()
            ))),
        }
    }
}

/// The `{user_id}` path segment, undecoded failures included: a segment that is not even
/// UTF-8 (`%FF`) must get the same 422 as any other non-UUID, and only after the caller's
/// rights are checked, so this extractor never rejects; `parse_user_id` decides.
pub struct RawId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for RawId {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(
            Path::<String>::from_request_parts(parts, state)
                .await
                .map(|Path(raw)| raw)
                .unwrap_or_default(),
        ))
    }
}

/// The `{user_id}` path segment, parsed: anything but a UUID is 422 before it reaches a store.
pub fn parse_user_id(raw: &str) -> Result<UserId, ApiError> {
    Ok(raw.parse::<UserId>()?)
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        // The authentication layer puts the caller here; its absence means the route
        // was mounted without that layer, which must fail closed.
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or(ApiError::Unauthorized(AuthError::Missing))
    }
}

/// Refuses a caller who is neither the owner of `id` nor an admin.
pub fn authorize(caller: &Caller, id: UserId) -> Result<(), ApiError> {
    if caller.may_access(id) {
        Ok(())
    } else {
        Err(ApiError::Forbidden)
    }
}

/// Refuses a caller who is not an admin.
pub fn require_admin(caller: &Caller) -> Result<(), ApiError> {
    if caller.is_admin {
        Ok(())
    } else {
        Err(ApiError::Forbidden)
    }
}
