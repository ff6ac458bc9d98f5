//! Answers decided on the request head alone, before any handler runs: a body declared
//! too large, and a method a route does not have.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Method, Response, header};
use axum::middleware::Next;
use axum::response::IntoResponse;

use super::extract::MAX_BODY_BYTES;
use crate::error::ApiError;
use crate::ratelimit;
use crate::state::AppState;

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

/// True for the paths that need a token (`/api/*`, `/profile`).
pub fn is_protected(path: &str) -> bool {
    path.starts_with("/api/") || path == "/profile"
}

/// 405 for a method a route does not have. On the protected paths it is answered before
/// authentication (a token would not make the method exist), so it counts against the
/// client address like a failed authentication: a flood of `OPTIONS`, `TRACE` or made-up
/// methods is limited like a flood of bad tokens, and an address over its limit gets 429.
pub async fn method_not_allowed(State(state): State<AppState>, req: Request) -> Response<Body> {
    let res = ApiError::MethodNotAllowed.into_response();
    if !is_protected(req.uri().path()) {
        return res;
    }
    let limiter = &state.limiter;
    let Some(ip) = ratelimit::address::client_address(&req, limiter.config()) else {
        return res;
    };
    if let Some(blocked) = limiter.blocked(ip) {
        return ratelimit::headers::rejection(&blocked);
    }
    ratelimit::middleware::failed_auth(limiter, ip, res).await
}

/// The method as a metrics label: the standard methods by name, anything else "other",
/// so a client cannot mint series by inventing methods.
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_standard_methods_are_labels() {
        assert_eq!(method_label(&Method::PATCH), "PATCH");
        for m in ["FOO", "get", "BREW", &"X".repeat(4000)] {
            assert_eq!(
                method_label(&Method::from_bytes(m.as_bytes()).unwrap()),
                "other"
            );
        }
    }
}
