//! The axum side of the limiter: the per-user layer that runs after authentication, the
//! per-address helpers that `authenticate` calls, and the client address.

use std::net::IpAddr;

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::Response;
use axum::middleware::Next;
use axum::response::IntoResponse;

use super::{LimitError, Limiter, Policy, headers};
use crate::auth::Caller;
use crate::domain::UserId;
use crate::error::ApiError;
use crate::state::AppState;

// Moved to `super::address` (trusted proxies); re-exported for existing callers.
pub use super::address::{client_address, limited_unit};

/// The answer to a request that failed authentication, counted against its address:
/// `unauthorized` (the 401) with the per-address headers, or a 429 once the address is
/// over its limit (from then on [`Limiter::blocked`] refuses it before any signature check).
pub async fn failed_auth(
    limiter: &Limiter,
    address: IpAddr,
    unauthorized: Response<Body>,
) -> Response<Body> {
    let decision = limiter.count_failed_auth(address).await;
    if !decision.allowed() {
        return headers::rejection(&decision);
    }
    let mut res = unauthorized;
    headers::apply(res.headers_mut(), &decision);
    res
}

/// The cache key a read is about, when the request is one the cache can serve from the
/// same round trip as the count: a profile (`GET /api/profiles/{user_id}`, `/me`, `GET
/// /profile`) or a document (`…/settings`, `…/preferences`) with a well-formed id the caller
/// may read.
fn prefetch_key(req: &Request, template: &str, caller: &Caller) -> Option<String> {
    use crate::cache::{document_key, profile_key};
    use crate::domain::DocumentKind;
    let path_id = || -> Option<UserId> {
        let rest = req.uri().path().strip_prefix("/api/profiles/")?;
        let id = rest.split('/').next()?.parse::<UserId>().ok()?;
        caller.may_access(id).then_some(id)
    };
    match template {
        "/api/profiles/me" | "/profile" => Some(profile_key(caller.user_id)),
        "/api/profiles/{user_id}" => path_id().map(profile_key),
        "/api/profiles/{user_id}/settings" => {
            path_id().map(|id| document_key(DocumentKind::Settings, id))
        }
        "/api/profiles/{user_id}/preferences" => {
            path_id().map(|id| document_key(DocumentKind::Preferences, id))
        }
        _ => None,
    }
}

/// Rate-limits an authenticated request by its caller and route (after `authenticate`),
/// and puts the rate-limit headers on whatever the handler answers.
pub async fn enforce(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response<Body> {
    // Without a caller the handler's extractor answers 401; nothing to count per user.
    let Some(caller) = req.extensions().get::<Caller>().cloned() else {
        return next.run(req).await;
    };
    let Some(template) = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
    else {
        return next.run(req).await;
    };
    let Some((policy, endpoint)) = Policy::classify(req.method(), &template) else {
        return next.run(req).await;
    };
    let limiter = &state.limiter;
    let prefetch = if policy == Policy::ProfilesRead && limiter.uses_redis() {
        prefetch_key(&req, &template, &caller)
    } else {
        None
    };
    let outcome = match prefetch {
        Some(key) => {
            limiter
                .check_and_get(caller.user_id, policy, &endpoint, &key)
                .await
        }
        None => limiter
            .check(caller.user_id, policy, &endpoint)
            .await
            .map(|d| (d, None)),
    };
    let (decision, prefetched) = match outcome {
        Ok(v) => v,
        Err(LimitError::Unavailable) => {
            return ApiError::Unavailable("Rate limiter").into_response();
        }
    };
    if !decision.allowed() {
        return headers::rejection(&decision);
    }
    if let Some(value) = prefetched {
        // Only an admitted request may use what was read alongside its count.
        req.extensions_mut().insert(crate::cache::Prefetched(value));
    }
    let mut res = next.run(req).await;
    headers::apply(res.headers_mut(), &decision);
    res
}
