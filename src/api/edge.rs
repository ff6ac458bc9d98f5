//! The answer to a method a route does not have, decided on the request head alone.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Method, Response};
use axum::response::IntoResponse;

use crate::error::ApiError;
use crate::ratelimit;
use crate::state::AppState;

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
