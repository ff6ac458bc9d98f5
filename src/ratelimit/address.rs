//! The client address a request is limited as, and the proxies trusted to name it.
//!
//! Behind nginx or a cloud load balancer, `X-Forwarded-For` is a list that each proxy
//! *appends* to: whatever the client wrote comes first, so its first entry is the one
//! address a client can choose freely. The client is therefore taken from the right: the
//! right-most entry that is not itself a trusted proxy, and only when the TCP peer is a
//! trusted proxy (else the header is the client's own and is ignored).
//!
//! - `rate_limits.trusted_proxies = ["10.0.0.0/8", "2001:db8::/32"]` (or the plain
//!   variable `TRUSTED_PROXIES=10.0.0.0/8,2001:db8::/32`): the proxies, as CIDRs or single
//!   addresses. A peer in them is a proxy; entries in them are skipped.
//! - `rate_limits.trust_forwarded_for = true`: every peer counts as a proxy (for a proxy
//!   whose address you cannot list). With no `trusted_proxies` this takes the right-most
//!   entry — the address the one proxy in front of the service saw — and never the first.
//!
//! Entries that are not addresses (garbage, a stray non-ASCII byte) are skipped, never the
//! whole header. A forwarded request with no valid client entry at all is counted in one
//! bucket of its own, [`MALFORMED_FORWARDING`], never against the proxy's address (which
//! would let a few such clients get every client of that proxy refused).

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use axum::extract::{ConnectInfo, Request};
use axum::http::HeaderMap;
use ipnet::IpNet;

use crate::config::RateLimitConfig;

/// True when `ip` (IPv4-mapped IPv6 counts as IPv4) is inside one of `nets`.
pub fn in_any(nets: &[IpNet], ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    nets.iter().any(|net| net.contains(&ip))
}

/// The address `req` is limited as: its TCP peer, or, when the peer is a trusted proxy,
/// the right-most `X-Forwarded-For` entry that is not a trusted proxy (see the module
/// docs). `None` only when the peer is unknown (a request not from the server's loop).
pub fn client_address(req: &Request, config: &RateLimitConfig) -> Option<IpAddr> {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| peer.ip())?;
    Some(limited_unit(client_ip(peer, req.headers(), config)))
}

/// The bucket of requests from a trusted proxy whose `X-Forwarded-For` names no usable
/// client: `100::`, the discard-only prefix (RFC 6666), which no client can have. Such
/// requests share one limit among themselves and never spend the proxy's own.
pub const MALFORMED_FORWARDING: IpAddr = IpAddr::V6(Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0));

/// [`client_address`] before it is reduced to its [`limited_unit`].
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, config: &RateLimitConfig) -> IpAddr {
    let trusted = |ip: IpAddr| in_any(&config.trusted_proxies, ip);
    if !(config.trust_forwarded_for || trusted(peer)) {
        return peer.to_canonical();
    }
    let fields = headers.get_all("x-forwarded-for");
    if fields.iter().next().is_none() {
        // The proxy's own request (a health check): nothing was forwarded.
        return peer.to_canonical();
    }
    // Every field, in order, is one list. Entries are split as bytes: one byte that is not
    // ASCII spoils its own entry, never the rest of the header.
    let entries: Vec<Option<IpAddr>> = fields
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(parse_entry)
        .collect();
    // Walk from the nearest hop outwards: the first valid entry that is not a trusted
    // proxy is the client. Entries that do not parse are skipped: what a trusted proxy
    // appended is to the right of them, and whatever is left of it the client wrote.
    let mut farthest_proxy = None;
    for entry in entries.iter().rev() {
        match *entry {
            Some(ip) if trusted(ip) => farthest_proxy = Some(ip),
            Some(ip) => return ip,
            None => {}
        }
    }
    match farthest_proxy {
        // Only proxies: the request began inside the proxy tier.
        Some(ip) if entries.iter().all(Option::is_some) => ip,
        _ => {
            metrics::counter!("ratelimit_malformed_forwarding_total").increment(1);
            MALFORMED_FORWARDING
        }
    }
}

/// An `X-Forwarded-For` entry: an address, `addr:port`, or `[v6]:port`, blanks around it
/// ignored; `None` for anything else (including bytes that are not UTF-8).
fn parse_entry(raw: &[u8]) -> Option<IpAddr> {
    let entry = std::str::from_utf8(raw).ok()?.trim();
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .map(|ip| ip.to_canonical())
}

/// The unit an address is limited as: an IPv4 address (IPv4-mapped IPv6 included) as
/// itself, an IPv6 address as its /64, since one host usually holds a whole /64 and could
/// otherwise rotate through it to escape the per-address limit.
pub fn limited_unit(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn config(trust_all: bool, proxies: &[&str]) -> RateLimitConfig {
        RateLimitConfig {
            trust_forwarded_for: trust_all,
            trusted_proxies: proxies.iter().map(|p| p.parse().unwrap()).collect(),
            ..RateLimitConfig::default()
        }
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv6_is_limited_per_64_and_ipv4_per_address() {
        let a = ip("2001:db8:1:2:aaaa::1");
        let b = ip("2001:db8:1:2:ffff::9");
        let c = ip("2001:db8:1:3::1");
        assert_eq!(limited_unit(a), limited_unit(b));
        assert_ne!(limited_unit(a), limited_unit(c));
        assert_eq!(limited_unit(a).to_string(), "2001:db8:1:2::");
        let v4 = ip("192.0.2.7");
        assert_eq!(limited_unit(v4), v4);
        assert_eq!(limited_unit(ip("::ffff:192.0.2.7")), v4);
    }

    #[test]
    fn trusted_proxies_parse_and_match() {
        let parse = crate::config::parse_proxy;
        let c = [parse("10.0.0.0/8").unwrap()];
        assert!(in_any(&c, ip("10.200.1.1")));
        assert!(in_any(&c, ip("::ffff:10.1.1.1")));
        assert!(!in_any(&c, ip("11.0.0.1")));
        let one = [parse("192.0.2.1").unwrap()];
        assert!(in_any(&one, ip("192.0.2.1")) && !in_any(&one, ip("192.0.2.2")));
        let v6 = [parse("2001:db8::/32").unwrap()];
        assert!(in_any(&v6, ip("2001:db8:ffff::1")) && !in_any(&v6, ip("2001:db9::1")));
        let all = [parse("0.0.0.0/0").unwrap()];
        assert!(in_any(&all, ip("203.0.113.9")));
        for bad in ["10.0.0.0/33", "nope", "10.0.0.0/", "::/129", ""] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert_eq!(c[0].to_string(), "10.0.0.0/8");
    }

    #[test]
    fn untrusted_peers_cannot_name_an_address() {
        let h = xff(&["203.0.113.9"]);
        assert_eq!(
            client_ip(ip("198.51.100.1"), &h, &config(false, &[])),
            ip("198.51.100.1")
        );
        assert_eq!(
            client_ip(ip("198.51.100.1"), &h, &config(false, &["10.0.0.0/8"])),
            ip("198.51.100.1")
        );
    }

    #[test]
    fn the_right_most_untrusted_entry_is_the_client() {
        let c = config(false, &["10.0.0.0/8"]);
        // The client spoofed a first entry; the proxy appended the real one.
        let h = xff(&["1.2.3.4, 203.0.113.9"]);
        assert_eq!(client_ip(ip("10.0.0.5"), &h, &c), ip("203.0.113.9"));
        // Two proxy hops, over two header fields.
        let h = xff(&["1.2.3.4", "203.0.113.9, 10.1.1.1"]);
        assert_eq!(client_ip(ip("10.0.0.5"), &h, &c), ip("203.0.113.9"));
        // Ports and brackets are tolerated.
        let h = xff(&["[2001:db8::7]:5555"]);
        assert_eq!(client_ip(ip("10.0.0.5"), &h, &c), ip("2001:db8::7"));
        // Garbage between the client and a proxy is skipped.
        let h = xff(&["203.0.113.9, bogus, 10.1.1.1"]);
        assert_eq!(client_ip(ip("10.0.0.5"), &h, &c), ip("203.0.113.9"));
        // Only proxies: the farthest of them.
        let h = xff(&["10.2.2.2, 10.1.1.1"]);
        assert_eq!(client_ip(ip("10.0.0.5"), &h, &c), ip("10.2.2.2"));
        // No header: the proxy itself.
        assert_eq!(
            client_ip(ip("10.0.0.5"), &HeaderMap::new(), &c),
            ip("10.0.0.5")
        );
    }

    #[test]
    fn a_stray_byte_spoils_only_its_own_entry() {
        let c = config(false, &["10.0.0.0/8"]);
        let mut h = HeaderMap::new();
        h.append(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"\xff, 198.51.100.61").unwrap(),
        );
        assert_eq!(client_ip(ip("10.0.0.5"), &h, &c), ip("198.51.100.61"));
        // Nothing usable at all: the malformed bucket, never the proxy.
        for bad in [
            &b"\xff"[..],
            b"bogus, also bogus",
            b"",
            b" , ",
            b"10.1.1.1, \xfe",
        ] {
            let mut h = HeaderMap::new();
            h.append("x-forwarded-for", HeaderValue::from_bytes(bad).unwrap());
            assert_eq!(
                client_ip(ip("10.0.0.5"), &h, &c),
                MALFORMED_FORWARDING,
                "{bad:?}"
            );
        }
        assert_eq!(limited_unit(MALFORMED_FORWARDING), MALFORMED_FORWARDING);
    }

    #[test]
    fn trust_forwarded_for_takes_the_last_entry_not_the_first() {
        let c = config(true, &[]);
        let h = xff(&["1.2.3.4, 203.0.113.9"]);
        assert_eq!(client_ip(ip("198.51.100.1"), &h, &c), ip("203.0.113.9"));
    }
}
