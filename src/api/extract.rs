//! Request extractors that turn every bad input into an `ApiError` with a JSON body.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, MatchedPath, Path, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::auth::{AuthError, Caller};
use crate::cache::Look;
use crate::domain::{UserId, ValidationError};
use crate::error::ApiError;

/// Largest request body accepted (SPEC 6).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// A JSON request body, read (size and content type checked) but parsed only when the
/// handler asks — after it has checked the id and the caller's rights.
pub struct JsonBody(Bytes);

impl JsonBody {
    /// Parses a body of any JSON shape: malformed JSON is 400, a well-formed body of the
    /// wrong shape 422.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        serde_json::from_slice(&self.0).map_err(|e| {
            use serde_json::error::Category;
            match e.classify() {
                Category::Data => ApiError::Unprocessable(describe(&e)),
                Category::Syntax | Category::Eof | Category::Io => {
                    ApiError::BadRequest(format!("Malformed JSON body: {e}"))
                }
            }
        })
    }

    /// Parses a body that must be a JSON object. An array or a scalar is 422, whatever the
    /// target type would make of it (serde reads an array as a struct's fields in order).
    pub fn parse_object<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        let first = self.0.iter().find(|b| !b.is_ascii_whitespace());
        if first != Some(&b'{') {
            // Well-formed but not an object: 422; not JSON at all: 400, as for any body.
            self.parse::<serde::de::IgnoredAny>()?;
            return Err(ValidationError::new("body", "must be a JSON object").into());
        }
        self.parse()
    }
}

/// serde's explanation without the Rust type names it may carry.
fn describe(e: &serde_json::Error) -> String {
    let text = e.to_string();
    [
        "expected struct ",
        "expected enum ",
        "expected tuple struct ",
    ]
    .iter()
    .fold(text, |text, marker| match text.find(marker) {
        Some(at) => {
            let rest = &text[at + marker.len()..];
            let name_end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            format!("{}expected a JSON object{}", &text[..at], &rest[name_end..])
        }
        None => text,
    })
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

/// The user a request is about, parsed and authorized once per request: the `{user_id}`
/// of the path (anything but a UUID is 422 before it reaches a store; a caller who is
/// neither its owner nor an admin gets 403), or the caller itself on routes without one.
/// The rate-limit layer and the handler both extract it; the answer is kept in the
/// request's extensions, so the work happens once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subject(pub UserId);

/// Why a request has no subject (kept, like the subject, for the second extraction).
#[derive(Debug, Clone, Copy)]
enum NoSubject {
    Unauthenticated,
    InvalidId,
    Forbidden,
}

impl From<NoSubject> for ApiError {
    fn from(e: NoSubject) -> Self {
        match e {
            NoSubject::Unauthenticated => ApiError::Unauthorized(AuthError::Missing),
            NoSubject::InvalidId => ValidationError::new("user_id", "must be a UUID").into(),
            NoSubject::Forbidden => ApiError::Forbidden,
        }
    }
}

#[derive(Clone, Copy)]
struct ResolvedSubject(Result<UserId, NoSubject>);

impl<S: Send + Sync> FromRequestParts<S> for Subject {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        if let Some(ResolvedSubject(r)) = parts.extensions.get::<ResolvedSubject>() {
            return r.map(Self).map_err(Into::into);
        }
        let resolved = resolve_subject(parts, state).await;
        parts.extensions.insert(ResolvedSubject(resolved));
        resolved.map(Self).map_err(Into::into)
    }
}

async fn resolve_subject<S: Send + Sync>(
    parts: &mut Parts,
    state: &S,
) -> Result<UserId, NoSubject> {
    let caller = parts
        .extensions
        .get::<Caller>()
        .cloned()
        .ok_or(NoSubject::Unauthenticated)?;
    let has_id = parts
        .extensions
        .get::<MatchedPath>()
        .is_some_and(|m| m.as_str().contains("{user_id}"));
    if !has_id {
        return Ok(caller.user_id);
    }
    // A segment that is not even UTF-8 (`%FF`) fails here: the same 422 as any non-UUID.
    let id = Path::<String>::from_request_parts(parts, state)
        .await
        .ok()
        .and_then(|Path(raw)| raw.parse::<UserId>().ok())
        .ok_or(NoSubject::InvalidId)?;
    if caller.may_access(id) {
        Ok(id)
    } else {
        Err(NoSubject::Forbidden)
    }
}

/// A read the admission layer let through: the user it is about (see [`Subject`]) and the
/// look at its cache entry made in the admission round trip, when there was one.
pub struct AdmittedRead {
    /// The user read.
    pub id: UserId,
    /// What admission saw of the entry; the read serves from it or fills after it.
    pub look: Option<Look>,
}

impl<S: Send + Sync> FromRequestParts<S> for AdmittedRead {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Subject(id) = Subject::from_request_parts(parts, state).await?;
        Ok(Self {
            id,
            look: parts.extensions.remove::<Look>(),
        })
    }
}

/// An admin caller; anyone else gets 403 (before any other part of the request is read).
pub struct Admin;

impl<S: Send + Sync> FromRequestParts<S> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let caller = Caller::from_request_parts(parts, state).await?;
        if caller.is_admin {
            Ok(Self)
        } else {
            Err(ApiError::Forbidden)
        }
    }
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

/// Refuses a caller who is neither the owner of `id` nor an admin (for ids that come
/// from a body rather than the path).
pub fn authorize(caller: &Caller, id: UserId) -> Result<(), ApiError> {
    if caller.may_access(id) {
        Ok(())
    } else {
        Err(ApiError::Forbidden)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(text: &str) -> JsonBody {
        JsonBody(Bytes::from(text.to_owned()))
    }

    #[test]
    fn only_objects_pass_and_no_type_names_leak() {
        for text in ["[]", "[\"a\",\"b\"]", "1", "\"x\"", "null", " [1] "] {
            let e = body(text).parse_object::<serde_json::Value>().unwrap_err();
            assert_eq!(e.to_string(), "body: must be a JSON object", "{text}");
        }
        assert!(matches!(
            body("[1").parse_object::<serde_json::Value>(),
            Err(ApiError::BadRequest(_))
        ));
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Nested {
            a: u8,
        }
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Outer {
            inner: Nested,
        }
        let e = body(r#"{"inner": 5}"#).parse_object::<Outer>().unwrap_err();
        assert!(!e.to_string().contains("Nested"), "{e}");
    }
}
