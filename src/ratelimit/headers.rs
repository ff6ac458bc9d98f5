//! Response headers of a limited request: the de-facto `X-RateLimit-*` trio and the IETF
//! draft-11 structured fields, all computed from one [`Decision`] so they always agree.

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};

use super::Decision;
use crate::error::ApiError;

/// `X-RateLimit-Limit`: requests allowed per window.
pub const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
/// `X-RateLimit-Remaining`: requests left in the window.
pub const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
/// `X-RateLimit-Reset`: seconds until the window ends.
pub const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
/// `RateLimit-Policy` (draft-ietf-httpapi-ratelimit-headers-11).
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit` (draft-ietf-httpapi-ratelimit-headers-11).
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// Sets every rate-limit header of `decision` on `headers`.
pub fn apply(headers: &mut HeaderMap, decision: &Decision) {
    let name = decision.policy.name();
    headers.insert(X_RATELIMIT_LIMIT, HeaderValue::from(decision.limit));
    headers.insert(
        X_RATELIMIT_REMAINING,
        HeaderValue::from(decision.remaining()),
    );
    headers.insert(X_RATELIMIT_RESET, HeaderValue::from(decision.reset_secs));
    let policy = format!("\"{name}\";q={};w={}", decision.limit, decision.window_secs);
    let state = format!(
        "\"{name}\";r={};t={}",
        decision.remaining(),
        decision.reset_secs
    );
    // Policy names are fixed ASCII tokens and the rest digits: always valid values.
    if let Ok(v) = HeaderValue::from_str(&policy) {
        headers.insert(RATELIMIT_POLICY, v);
    }
    if let Ok(v) = HeaderValue::from_str(&state) {
        headers.insert(RATELIMIT, v);
    }
}

/// The 429 answer for a refused request: the JSON body and `Retry-After` of
/// [`ApiError::RateLimited`], plus the rate-limit headers.
pub fn rejection(decision: &Decision) -> Response {
    // Every 429 of the service is built here, so this is the one place to count them.
    metrics::counter!("ratelimit_rejections_total", "policy" => decision.policy.name())
        .increment(1);
    let mut res = ApiError::RateLimited {
        // The reset is rounded up, so this is never earlier than the window's end.
        retry_after_secs: decision.reset_secs,
    }
    .into_response();
    apply(res.headers_mut(), decision);
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::Policy;

    #[test]
    fn headers_follow_the_draft_syntax() {
        let d = Decision {
            policy: Policy::ProfilesRead,
            limit: 100,
            count: 58,
            reset_secs: 1234,
            window_secs: 3600,
        };
        let mut h = HeaderMap::new();
        apply(&mut h, &d);
        assert_eq!(h[&X_RATELIMIT_LIMIT], "100");
        assert_eq!(h[&X_RATELIMIT_REMAINING], "42");
        assert_eq!(h[&X_RATELIMIT_RESET], "1234");
        assert_eq!(h[&RATELIMIT_POLICY], "\"profiles-read\";q=100;w=3600");
        assert_eq!(h[&RATELIMIT], "\"profiles-read\";r=42;t=1234");
    }

    #[test]
    fn rejection_is_a_429_with_retry_after() {
        let d = Decision {
            policy: Policy::ProfilesUpdate,
            limit: 10,
            count: 12,
            reset_secs: 7,
            window_secs: 3600,
        };
        let res = rejection(&d);
        assert_eq!(res.status(), 429);
        assert_eq!(res.headers()["retry-after"], "7");
        assert_eq!(res.headers()[&X_RATELIMIT_REMAINING], "0");
        assert_eq!(res.headers()[&RATELIMIT], "\"profiles-update\";r=0;t=7");
    }
}
