//! Cross-cutting middleware: authentication, request metrics, panic containment.

use std::any::Any;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, Response, header};
use axum::middleware::Next;
use axum::response::IntoResponse;

use crate::auth::{self, AuthError};
use crate::error::ApiError;
use crate::ratelimit;
use crate::state::AppState;

/// Longest `Authorization` header considered; longer ones are refused unparsed.
const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// The bearer token of a request: the header must be visible ASCII and not oversized; the
/// scheme itself is parsed by [`auth::bearer_token`].
pub fn bearer_token(headers: &HeaderMap) -> Result<&str, AuthError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or(AuthError::Missing)?
        .to_str()
        .map_err(|_| AuthError::Missing)?;
    if value.len() > MAX_TOKEN_BYTES {
        return Err(AuthError::Missing);
    }
    auth::bearer_token(value)
}

/// Verifies the bearer token and hands the `Caller` to the handlers.
///
/// Requests that fail authentication count against their client address (SPEC 5); an
/// address over its limit is refused here, before any signature is checked, except for
/// tokens already verified from that address (so a flood does not lock out the honest
/// callers behind the same address, and a blocked address learns nothing new).
pub async fn authenticate(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response<Body> {
    let limiter = &state.limiter;
    let address = ratelimit::address::client_address(&req, limiter.config());
    let token = bearer_token(req.headers()).map(str::to_owned);
    if let Some(ip) = address
        && let Some(blocked) = limiter.blocked(ip)
    {
        match token
            .as_deref()
            .ok()
            .and_then(|t| limiter.known_caller(ip, t))
        {
            Some(caller) => {
                req.extensions_mut().insert(caller);
                return next.run(req).await;
            }
            None => return ratelimit::headers::rejection(&blocked),
        }
    }
    let caller = match &token {
        Ok(token) => state.auth.verify(token).await,
        Err(e) => Err(e.clone()),
    };
    match caller {
        Ok(caller) => {
            if let (Some(ip), Ok(token)) = (address, &token) {
                limiter.remember_caller(ip, token, &caller);
            }
            if let Some(iat) = caller.issued_at {
                state.logins.observe(caller.user_id, iat);
            }
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        // The key source is down: not the client's failure, so not counted against it.
        Err(e @ AuthError::KeysUnavailable) => ApiError::Unauthorized(e).into_response(),
        Err(e) => {
            let res = ApiError::Unauthorized(e).into_response();
            match address {
                Some(ip) => ratelimit::middleware::failed_auth(limiter, ip, res).await,
                None => res,
            }
        }
    }
}

/// Bounds a whole request by `server.request_timeout_ms`: a request stuck past it (every
/// dependency has its own, shorter timeout, so this is the last resort) gets a JSON 503
/// rather than holding the connection.
pub async fn bound_request(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response<Body> {
    let limit = std::time::Duration::from_millis(state.config.server.request_timeout_ms);
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(res) => res,
        Err(_) => {
            tracing::warn!(
                timeout_ms = state.config.server.request_timeout_ms,
                "request timed out"
            );
            ApiError::Unavailable("The service").into_response()
        }
    }
}

/// Counts requests and their latency by route template and status.
pub async fn record_metrics(State(_): State<AppState>, req: Request, next: Next) -> Response<Body> {
    let start = Instant::now();
    // Bounded: made-up methods share the label "other" (routes are templates or "unmatched").
    let method = super::edge::method_label(req.method());
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let res = next.run(req).await;
    let status = res.status().as_u16().to_string();
    let labels = [
        ("method", method.to_owned()),
        ("route", route),
        ("status", status),
    ];
    metrics::counter!("http_requests_total", &labels).increment(1);
    metrics::histogram!("http_request_duration_seconds", &labels)
        .record(start.elapsed().as_secs_f64());
    res
}

/// Turns a panic into a JSON 500 (the process keeps serving).
pub fn panic_response(_: Box<dyn Any + Send + 'static>) -> Response<Body> {
    ApiError::internal("handler panicked").into_response()
}
