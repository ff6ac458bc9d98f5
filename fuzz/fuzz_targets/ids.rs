//! Ids and addresses from the request line and headers: user ids (path segments), e-mail
//! addresses, trusted-proxy CIDRs and X-Forwarded-For. Nothing may panic; an id has one
//! spelling; the client address is one of the listed entries or the malformed-forwarding
//! bucket (never the proxy), whatever bytes the header holds.
#![no_main]

use std::net::IpAddr;

use axum::http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use user_api::config::{RateLimitConfig, parse_proxy};
use user_api::domain::{Email, UserId};
use user_api::ratelimit::address::{MALFORMED_FORWARDING, client_ip, limited_unit};

fuzz_target!(|data: &[u8]| {
    forwarded_for(data);
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(id) = s.parse::<UserId>() {
        let canonical = id.to_string();
        assert_eq!(canonical, s.to_ascii_lowercase(), "one id, one spelling");
        assert_eq!(canonical.parse::<UserId>().unwrap(), id);
    }
    if let Ok(email) = Email::parse(s) {
        assert!(Email::parse(email.as_str()).is_ok());
        assert!(!email.as_str().contains('\0'));
    }
    if let Ok(net) = parse_proxy(s) {
        assert_eq!(parse_proxy(&net.to_string()).unwrap(), net);
    }
});

/// `data` as an `X-Forwarded-For` value (any bytes a header may carry) from a trusted proxy.
fn forwarded_for(data: &[u8]) {
    let Ok(value) = HeaderValue::from_bytes(data) else {
        return;
    };
    let mut headers = HeaderMap::new();
    headers.append("x-forwarded-for", value);
    let peer: IpAddr = "10.0.0.1".parse().unwrap();
    let config = RateLimitConfig {
        trusted_proxies: vec!["10.0.0.0/8".parse().unwrap()],
        ..RateLimitConfig::default()
    };
    let ip = client_ip(peer, &headers, &config);
    let listed = data.split(|b| *b == b',').any(|e| {
        let e = String::from_utf8_lossy(e);
        let e = e.trim();
        e.parse::<IpAddr>()
            .ok()
            .or_else(|| e.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
            .is_some_and(|a| a.to_canonical() == ip)
    });
    assert!(listed || ip == MALFORMED_FORWARDING, "{ip} from {data:?}");
    let _ = limited_unit(ip);
}
