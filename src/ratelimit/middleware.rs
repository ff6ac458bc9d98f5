//! The HTTP side of the per-address limit: the answer to a request that failed
//! authentication (the client address is [`super::address`]). The per-user layer lives
//! with the other layers in `crate::api`, which knows the routes.

use std::net::IpAddr;

use axum::body::Body;
use axum::http::Response;

use super::{Limiter, headers};

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
