//! The admission layer of every authenticated route: the bearer token is verified (or
//! found among those verified before), then one admission step (`crate::admission`)
//! decides revocation and the rate limit and, for a read, looks at the cache entry, all in
//! one round trip. The handler runs only for an admitted request, with the caller and the
//! look in hand; the rate-limit headers go on whatever it answers.
//!
//! Requests that fail authentication count against their client address (SPEC 5); an
//! address over its limit is refused before any signature is checked, except for tokens
//! this instance already verified (so a flood does not lock out the honest callers behind
//! the same address, and a blocked address learns nothing new).

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Response, header};
use axum::middleware::Next;
use axum::response::IntoResponse;

use super::super::extract::Subject;
use super::super::routes;
use crate::admission::{Ask, Refusal};
use crate::auth::{self, AuthError, Caller};
use crate::error::ApiError;
use crate::ratelimit::{self, address};
use crate::state::AppState;

/// Longest `Authorization` header considered; longer ones are refused unparsed. The same
/// bound as the verifier's own (`auth::MAX_TOKEN_BYTES`), plus the scheme.
const MAX_AUTHORIZATION_BYTES: usize = auth::MAX_TOKEN_BYTES + 16;

/// The bearer token of a request: the header must be visible ASCII and not oversized; the
/// scheme itself is parsed by [`auth::parse_authorization`].
pub fn bearer_token(headers: &HeaderMap) -> Result<&str, AuthError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or(AuthError::Missing)?
        .to_str()
        .map_err(|_| AuthError::Missing)?;
    if value.len() > MAX_AUTHORIZATION_BYTES {
        return Err(AuthError::Missing);
    }
    auth::parse_authorization(value)
}

/// Authenticates and admits a request (see the module's doc).
pub async fn admit(State(state): State<AppState>, req: Request, next: Next) -> Response<Body> {
    let (mut parts, body) = req.into_parts();
    let caller = match authenticate(&state, &parts).await {
        Ok(caller) => caller,
        Err(res) => return res,
    };
    if let Some(iat) = caller.issued_at {
        state.logins.observe(caller.user_id, iat);
    }
    let template = parts.extensions.get::<MatchedPath>().cloned();
    let class = template
        .as_ref()
        .and_then(|t| routes::classify(&parts.method, t.as_str()));
    parts.extensions.insert(caller);
    let Some(class) = class else {
        return next.run(Request::from_parts(parts, body)).await;
    };
    // Only a read the caller may make looks at its entry; an id that is not a UUID or
    // not the caller's is answered by the handler (422/403), counted all the same.
    let look = match class.entry {
        Some(kind) => Subject::from_request_parts(&mut parts, &())
            .await
            .ok()
            .map(|Subject(id)| (kind, id)),
        None => None,
    };
    let caller = parts.extensions.get::<Caller>().expect("inserted above");
    let ask = Ask {
        caller,
        policy: class.policy,
        endpoint: class.endpoint,
        look,
    };
    let admitted = match state.admission.admit(ask).await {
        Ok(a) => a,
        Err(Refusal::Revoked) => return ApiError::Unauthorized(AuthError::Revoked).into_response(),
        Err(Refusal::Limited(decision)) => return ratelimit::headers::rejection(&decision),
        Err(Refusal::LimiterUnavailable) => {
            return ApiError::Unavailable("Rate limiter").into_response();
        }
        Err(Refusal::RevocationUnavailable) => {
            return ApiError::Unavailable("Token revocation check").into_response();
        }
    };
    if let Some(look) = admitted.look {
        // Only an admitted request may use what was read alongside its count.
        parts.extensions.insert(look);
    }
    let mut res = next.run(Request::from_parts(parts, body)).await;
    ratelimit::headers::apply(res.headers_mut(), &admitted.decision);
    res
}

/// The caller of a request, or the answer that refuses it (counted against its address).
async fn authenticate(state: &AppState, parts: &Parts) -> Result<Caller, Response<Body>> {
    let limiter = &state.limiter;
    let address = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| {
            address::limited_unit(address::client_ip(
                peer.ip(),
                &parts.headers,
                limiter.config(),
            ))
        });
    let token = bearer_token(&parts.headers);
    if let Some(ip) = address
        && let Some(blocked) = limiter.blocked(ip)
    {
        return match token.ok().and_then(|t| state.auth.remembered(t)) {
            Some(caller) => Ok(caller),
            None => Err(ratelimit::headers::rejection(&blocked)),
        };
    }
    let verified = match token {
        Ok(token) => state.auth.verify(token).await,
        Err(e) => Err(e),
    };
    match verified {
        Ok(caller) => Ok(caller),
        // The key source is down: not the client's failure, so not counted against it.
        Err(e @ AuthError::KeysUnavailable) => Err(ApiError::Unauthorized(e).into_response()),
        Err(e) => {
            let res = ApiError::Unauthorized(e).into_response();
            Err(match address {
                Some(ip) => ratelimit::middleware::failed_auth(limiter, ip, res).await,
                None => res,
            })
        }
    }
}
