//! `[rate_limits]`: the policies, what to do without the shared store, and the proxies
//! whose `X-Forwarded-For` is believed.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize};

use super::{AT_LEAST_1, Check};

/// What the limiter does when its store is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    /// Fall back to an in-process limiter.
    Open,
    /// Answer 503.
    Closed,
}

/// Rate-limit policies, requests per window and caller.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    pub profiles_read: u64,
    pub profiles_update: u64,
    pub profiles_batch: u64,
    pub default: u64,
    pub per_address: u64,
    /// `RATE_LIMIT_FAIL`.
    pub fail: FailMode,
    /// Treat every peer as a trusted proxy (the client is then the right-most
    /// `X-Forwarded-For` entry not in `trusted_proxies`). Prefer `trusted_proxies`.
    pub trust_forwarded_for: bool,
    /// `TRUSTED_PROXIES`: proxies (CIDRs or single addresses) whose `X-Forwarded-For`
    /// entries are believed.
    #[serde(deserialize_with = "trusted_proxies")]
    pub trusted_proxies: Vec<IpNet>,
    /// Window length; an hour in production, shorter only in tests.
    pub window_secs: u64,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            profiles_read: 100,
            profiles_update: 10,
            profiles_batch: 20,
            default: 100,
            per_address: 1000,
            fail: FailMode::Open,
            trust_forwarded_for: false,
            trusted_proxies: Vec::new(),
            window_secs: 3600,
        }
    }
}

impl RateLimitConfig {
    #[rustfmt::skip]
    pub(super) fn checks(&self) -> [Check; 7] {
        let window_divides_hour = self.window_secs == 0 || 3600 % self.window_secs == 0;
        [
            ("rate_limits.profiles_read",   self.profiles_read > 0,   AT_LEAST_1),
            ("rate_limits.profiles_update", self.profiles_update > 0, AT_LEAST_1),
            ("rate_limits.profiles_batch",  self.profiles_batch > 0,  AT_LEAST_1),
            ("rate_limits.default",         self.default > 0,         AT_LEAST_1),
            ("rate_limits.per_address",     self.per_address > 0,     AT_LEAST_1),
            ("rate_limits.window_secs",     self.window_secs > 0,     AT_LEAST_1),
            ("rate_limits.window_secs",     window_divides_hour,      "must divide 3600"),
        ]
    }
}

/// A `trusted_proxies` entry: a CIDR block (`10.0.0.0/8`) or a single address
/// (`192.0.2.1`, as a /32 or /128), which `IpNet` alone does not read.
pub fn parse_proxy(entry: &str) -> Result<IpNet, String> {
    let entry = entry.trim();
    entry
        .parse::<IpNet>()
        .or_else(|_| {
            entry
                .parse::<IpAddr>()
                .map(|ip| IpNet::from(ip.to_canonical()))
        })
        .map_err(|_| format!("`{entry}` is not an address or CIDR block (e.g. 10.0.0.0/8)"))
}

fn trusted_proxies<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
    (Vec::<String>::deserialize(d)?.iter())
        .map(|entry| parse_proxy(entry).map_err(serde::de::Error::custom))
        .collect()
}
