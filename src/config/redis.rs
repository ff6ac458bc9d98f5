//! `[redis]`: the client's timeouts, its circuit breaker, and the periods of the work that
//! talks to Redis in the background.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{AT_LEAST_1, Check, POSITIVE};

/// Redis client behaviour.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// Longest wait for any one Redis call.
    pub timeout_ms: u64,
    pub connect_timeout_ms: u64,
    /// Consecutive failures that open the circuit breaker.
    pub breaker_failures: u32,
    /// How long the breaker stays open before probing again.
    pub breaker_cooldown_ms: u64,
    /// How often in-process hit/miss counts are flushed to Redis.
    pub metrics_flush_ms: u64,
    /// How often the invalidation outbox is drained.
    pub outbox_poll_ms: u64,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            timeout_ms: 50,
            connect_timeout_ms: 1000,
            breaker_failures: 3,
            breaker_cooldown_ms: 1000,
            metrics_flush_ms: 1000,
            outbox_poll_ms: 1000,
        }
    }
}

impl RedisConfig {
    /// The per-call timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// Shortest period of the background work (a zero period would spin).
    pub const MIN_PERIOD_MS: u64 = 10;

    #[rustfmt::skip]
    pub(super) fn checks(&self) -> [Check; 4] {
        const AT_LEAST_10: &str = "must be at least 10";
        [
            ("redis.timeout_ms",       self.timeout_ms > 0,                         POSITIVE),
            ("redis.breaker_failures", self.breaker_failures > 0,                   AT_LEAST_1),
            ("redis.metrics_flush_ms", self.metrics_flush_ms >= Self::MIN_PERIOD_MS, AT_LEAST_10),
            ("redis.outbox_poll_ms",   self.outbox_poll_ms >= Self::MIN_PERIOD_MS,   AT_LEAST_10),
        ]
    }
}
