//! The HTTP side of the per-address limit: the client address, and the answer to a
//! request that failed authentication. (The per-user layer lives with the other layers
//! in `crate::api`, which knows the routes.)

use std::net::{IpAddr, SocketAddr};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::http::Response;

use super::{Limiter, headers};
use crate::config::RateLimitConfig;

/// Where the client address of a request comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressSource {
    /// The peer of the connection.
    Peer,
    /// The first `X-Forwarded-For` entry when it is an IP address, else the peer (only
    /// behind a trusted proxy: `rate_limits.trust_forwarded_for`).
    ForwardedFor,
}

impl AddressSource {
    /// The source `config` asks for.
    pub fn of(config: &RateLimitConfig) -> Self {
        if config.trust_forwarded_for {
            Self::ForwardedFor
        } else {
            Self::Peer
        }
    }
}

/// The client address: the peer of the connection, or, only when the service is told
/// it sits behind a trusted proxy (`rate_limits.trust_forwarded_for`), the first
/// `X-Forwarded-For` entry. An entry that is not an IP address is ignored (never put
/// into a key), and IPv4-mapped IPv6 addresses count as their IPv4 address.
pub fn client_address(req: &Request, source: AddressSource) -> Option<IpAddr> {
    if source == AddressSource::ForwardedFor {
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
