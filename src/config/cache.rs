//! `[cache]`: the profile cache's lifetimes. Its bounds are checked here, once; the cache
//! takes the values as they are.

use serde::{Deserialize, Serialize};

use super::{Check, POSITIVE};

/// Profile cache.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    pub ttl_secs: u64,
    /// Refresh in the background when less TTL than this is left.
    pub refresh_ahead_secs: u64,
    /// How long an unknown id is remembered as missing (at most 30).
    pub negative_ttl_secs: u64,
    /// Largest share of the TTL that jitter may take off, in percent.
    pub jitter_percent: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            ttl_secs: 300,
            refresh_ahead_secs: 60,
            negative_ttl_secs: 30,
            jitter_percent: 10,
        }
    }
}

impl CacheConfig {
    #[rustfmt::skip]
    pub(super) fn checks(&self) -> [Check; 4] {
        [
            ("cache.ttl_secs",           self.ttl_secs > 0,                       POSITIVE),
            ("cache.refresh_ahead_secs", self.refresh_ahead_secs < self.ttl_secs, "must be less than cache.ttl_secs"),
            ("cache.negative_ttl_secs",  self.negative_ttl_secs <= 30,            "must be at most 30"),
            ("cache.jitter_percent",     self.jitter_percent <= 50,               "must be at most 50"),
        ]
    }
}
