//! The axum side of the limiter: the per-user layer that runs after authentication, the
//! per-address helpers that `authenticate` calls, and the client address.

use std::net::{IpAddr, SocketAddr};

use axum::body::Body;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::Response;
use axum::middleware::Next;
use axum::response::IntoResponse;

use super::{LimitError, Limiter, Policy, headers};
use crate::auth::Caller;
use crate::domain::UserId;
use crate::error::ApiError;
use crate::state::AppState;

/// The client address: the peer of the connection, or, only when the service is told
/// it sits behind a trusted proxy (`rate_limits.trust_forwarded_for`), the first
/// `X-Forwarded-For` entry. An entry that is not an IP address is ignored (never put
/// into a key), and IPv4-mapped IPv6 addresses count as their IPv4 address.
pub fn client_address(req: &Request, trust_forwarded_for: bool) -> Option<IpAddr> {
    if trust_forwarded_for {
        let forwarded = req
            .headers()
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(str::trim)
            .and_then(|first| {
                first
                    .parse::<IpAddr>()
                    .ok()
                    .or_else(|| first.parse::<SocketAddr>().ok().map(|s| s.ip()))
            });
        if let Some(ip) = forwarded {
            return Some(limited_unit(ip));
        }
    }
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| limited_unit(peer.ip()))
}

/// The unit an address is limited as: an IPv4 address (IPv4-mapped IPv6 included) as
/// itself, an IPv6 address as its /64, since one host usually holds a whole /64 and could
/// otherwise rotate through it to escape the per-address limit.
pub fn limited_unit(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(std::net::Ipv6Addr::from(prefix))
        }
        v4 => v4,
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_is_limited_per_64_and_ipv4_per_address() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(limited_unit(a), limited_unit(b));
        assert_ne!(limited_unit(a), limited_unit(c));
        assert_eq!(limited_unit(a).to_string(), "2001:db8:1:2::");
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(limited_unit(v4), v4);
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(limited_unit(mapped), v4);
    }
}
