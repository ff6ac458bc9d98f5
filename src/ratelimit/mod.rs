//! Rate limits (SPEC 5): per user and policy, per client address for requests that fail
//! authentication, in fixed UTC windows.
//!
//! The [`Limiter`] counts in the shared store when one is configured (a [`CounterStore`]:
//! Redis, one atomic step per count, exact across any number of instances) and in process
//! otherwise ([`memory`]). On the request path the count rides in the admission round
//! trip (`crate::admission`), which hands the reply back through [`Limiter::decide`]. While Redis is unreachable it either falls back to its in-process
//! counters (`fail = "open"`, the default: each instance still enforces the policy on its
//! own traffic rather than admitting everything) or refuses (`fail = "closed"`). Every
//! call to Redis is bounded by the client's timeout and circuit breaker, so the limiter
//! never holds a request longer than that.
//!
//! Addresses that keep failing authentication are remembered in process once over their
//! limit, so their next requests are refused before any signature is checked: a
//! token-guessing flood costs a map lookup, not an RSA verification or a Redis call.
//!
//! The HTTP side is three files: [`address`] (the client address, from the peer and
//! `X-Forwarded-For`), [`headers`] (the response headers and the 429) and [`middleware`]
//! (the answer to a failed authentication). Everything else here knows nothing of HTTP.
//!
//! Reference: `docs/rate-limits.md`.

pub mod address;
pub mod headers;
pub mod memory;
pub mod middleware;
pub mod policy;
pub mod window;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::config::{FailMode, RateLimitConfig};
use crate::domain::UserId;
use async_trait::async_trait;

use crate::store::StoreError;

pub use memory::LocalCounters;
pub use policy::Policy;
pub use window::Window;

/// Where counters live when they are shared by every instance (Redis).
#[async_trait]
pub trait CounterStore: Send + Sync + 'static {
    /// "redis" or "redis-cluster".
    fn name(&self) -> &'static str;
    /// Counts one more request against `key`, which expires `ttl_ms` from now when it has
    /// no expiry yet, in one atomic step; the count including this one.
    async fn hit(&self, key: &str, ttl_ms: u64) -> Result<u64, StoreError>;
}

/// The counter of one request, as the shared store is asked for it.
#[derive(Debug, Clone)]
pub struct CounterKey {
    /// `rate:<user>:<endpoint>:<window>` (SPEC 5).
    pub key: String,
    /// The expiry a new counter gets: the rest of the window plus a margin.
    pub ttl_ms: u64,
    /// The window counted in.
    pub window: Window,
    /// When the count was asked (Unix ms).
    pub now_ms: u64,
}

/// A counter after one more request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Count {
    /// Requests counted in the window, this one included.
    pub count: u64,
    /// Milliseconds until the window ends.
    pub reset_ms: u64,
}

/// The verdict on one request, with everything the headers need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// The policy counted against.
    pub policy: Policy,
    /// Requests allowed per window.
    pub limit: u64,
    /// Requests counted in the window, this one included (may pass the limit).
    pub count: u64,
    /// Whole seconds until the window ends (at least 1).
    pub reset_secs: u64,
    /// The window length in seconds.
    pub window_secs: u64,
}

impl Decision {
    /// True when the request is admitted.
    pub fn allowed(&self) -> bool {
        self.count <= self.limit
    }

    /// Requests left in the window.
    pub fn remaining(&self) -> u64 {
        self.limit.saturating_sub(self.count)
    }
}

/// Why the limiter could not decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// The store is unreachable and `fail = "closed"`.
    #[error("rate limiter unavailable")]
    Unavailable,
}

/// Whether a count may fall back to the in-process counters while Redis is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fallback {
    /// As `fail` says: open falls back, closed refuses.
    PerFailMode,
    /// Always (the request is refused anyway; the count only protects signature checks).
    Always,
}

/// Most addresses remembered as over their limit before expired ones are swept.
const MAX_BLOCKED: usize = 100_000;
/// Most per-address counters kept in process (with no Redis, or while it is down).
const MAX_ADDRESS_COUNTERS: usize = 100_000;
/// Store failures are logged at most this often (every one is counted in metrics).
const LOG_EVERY_MS: u64 = 10_000;

struct LimiterInner {
    config: RateLimitConfig,
    /// `None`: no shared store configured, `local` is the store.
    redis: Option<std::sync::Arc<dyn CounterStore>>,
    /// The store without Redis; the fallback while Redis is unreachable.
    local: LocalCounters,
    /// The in-process per-address counters: bounded, since clients choose addresses.
    local_addresses: LocalCounters,
    /// Addresses over their per-address limit → end of their window (Unix ms).
    blocked: RwLock<HashMap<IpAddr, u64>>,
    last_error_log_ms: AtomicU64,
}

/// The rate limiter shared by every request of an instance.
#[derive(Clone)]
pub struct Limiter {
    inner: Arc<LimiterInner>,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("store", &self.store_name())
            .field("fail", &self.inner.config.fail)
            .finish_non_exhaustive()
    }
}

impl Limiter {
    /// A limiter over `shared` (the app's Redis) or, without it, in process.
    pub fn new(config: &RateLimitConfig, shared: Option<Arc<dyn CounterStore>>) -> Self {
        Self {
            inner: Arc::new(LimiterInner {
                config: config.clone(),
                redis: shared,
                local: LocalCounters::default(),
                local_addresses: LocalCounters::bounded(MAX_ADDRESS_COUNTERS),
                blocked: RwLock::new(HashMap::new()),
                last_error_log_ms: AtomicU64::new(0),
            }),
        }
    }

    /// The configuration the limiter runs with.
    pub fn config(&self) -> &RateLimitConfig {
        &self.inner.config
    }

    /// "redis", "redis-cluster" or "embedded".
    pub fn store_name(&self) -> &'static str {
        match &self.inner.redis {
            Some(r) => r.name(),
            None => "embedded",
        }
    }

    /// True when counters live in Redis (so a cache read can share the round trip).
    pub fn uses_redis(&self) -> bool {
        self.inner.redis.is_some()
    }

    /// The in-process counters (tests inspect them).
    pub fn local_counters(&self) -> &LocalCounters {
        &self.inner.local
    }

    /// Counts a request of `user` under `policy` (`endpoint` is the key's endpoint part),
    /// on its own (the request path counts through `crate::admission` instead).
    pub async fn check(
        &self,
        user: UserId,
        policy: Policy,
        endpoint: &str,
    ) -> Result<Decision, LimitError> {
        let ask = self.counter_for(user, endpoint);
        let count = self
            .count(&ask.key, &ask.window, ask.now_ms, Fallback::PerFailMode)
            .await?;
        Ok(self.decide(policy, count))
    }

    /// The counter a request of `user` on `endpoint` is counted in, now.
    pub fn counter_for(&self, user: UserId, endpoint: &str) -> CounterKey {
        let (now, window) = self.now();
        CounterKey {
            key: window.user_key(user, endpoint),
            ttl_ms: window.remaining_ms(now) + window::EXPIRY_MARGIN_MS,
            window,
            now_ms: now,
        }
    }

    /// The count of `ask` once the shared store answered it with `count`.
    pub fn counted(&self, ask: &CounterKey, count: u64) -> Count {
        Count {
            count,
            reset_ms: ask.window.remaining_ms(ask.now_ms),
        }
    }

    /// The count of `ask` in the in-process counters (the store without Redis).
    pub fn check_local(&self, ask: &CounterKey) -> Result<Count, LimitError> {
        Ok(self.inner.local.hit(&ask.key, &ask.window, ask.now_ms))
    }

    /// The count of `ask` when the shared store could not answer: `failure` is noted, and
    /// the in-process counters decide (`fail = "open"`) or the request is refused.
    pub fn count_without_store(
        &self,
        ask: &CounterKey,
        failure: &StoreError,
    ) -> Result<Count, LimitError> {
        self.note_store_error(failure);
        if self.inner.config.fail == FailMode::Closed {
            return Err(LimitError::Unavailable);
        }
        metrics::counter!("ratelimit_fallback_total").increment(1);
        Ok(self
            .inner
            .local
            .hit(&ask.key, &ask.window, window::now_ms()))
    }

    /// The refusal for `address` when it is remembered as over its per-address limit.
    /// This is the only cost that unblocked traffic pays: one read-locked map lookup.
    pub fn blocked(&self, address: IpAddr) -> Option<Decision> {
        let now = window::now_ms();
        let until = {
            let map = self.inner.blocked.read().unwrap_or_else(|p| p.into_inner());
            *map.get(&address)?
        };
        if until <= now {
            let mut map = self
                .inner
                .blocked
                .write()
                .unwrap_or_else(|p| p.into_inner());
            if map.get(&address).is_some_and(|u| *u <= now) {
                map.remove(&address);
            }
            return None;
        }
        let limit = self.inner.config.per_address;
        Some(Decision {
            policy: Policy::PerAddress,
            limit,
            count: limit.saturating_add(1),
            reset_secs: window::ceil_secs(until - now),
            window_secs: self.inner.config.window_secs,
        })
    }

    /// Counts a request from `address` that failed authentication; once the address is
    /// over its limit it is remembered (until its window ends) by [`Self::blocked`].
    ///
    /// Never fails: with the store unreachable the in-process counter decides, even when
    /// `fail = "closed"`, because the request is refused either way and the count only
    /// protects the signature check.
    pub async fn count_failed_auth(&self, address: IpAddr) -> Decision {
        let (now, window) = self.now();
        let key = window.address_key(address);
        let count = match self.count(&key, &window, now, Fallback::Always).await {
            Ok(c) => c,
            // Unreachable with `Fallback::Always`; decide locally all the same.
            Err(LimitError::Unavailable) => self.inner.local_addresses.hit(&key, &window, now),
        };
        let decision = self.decide(Policy::PerAddress, count);
        if !decision.allowed() {
            let until = now + count.reset_ms;
            let mut map = self
                .inner
                .blocked
                .write()
                .unwrap_or_else(|p| p.into_inner());
            if map.len() >= MAX_BLOCKED {
                map.retain(|_, u| *u > now);
            }
            if map.len() < MAX_BLOCKED {
                map.insert(address, until);
            }
        }
        decision
    }

    fn now(&self) -> (u64, Window) {
        let now = window::now_ms();
        (now, Window::at(now, self.inner.config.window_secs))
    }

    /// The verdict on a request counted `count` under `policy`.
    pub fn decide(&self, policy: Policy, count: Count) -> Decision {
        Decision {
            policy,
            limit: policy.limit(&self.inner.config),
            count: count.count,
            reset_secs: window::ceil_secs(count.reset_ms),
            window_secs: self.inner.config.window_secs,
        }
    }

    /// One count in the configured store, falling back to the in-process one when Redis
    /// is unreachable and `fallback` allows it.
    async fn count(
        &self,
        key: &str,
        window: &Window,
        now: u64,
        fallback: Fallback,
    ) -> Result<Count, LimitError> {
        // Per-address counting is the only caller that always falls back.
        let local = match fallback {
            Fallback::Always => &self.inner.local_addresses,
            Fallback::PerFailMode => &self.inner.local,
        };
        let Some(redis) = &self.inner.redis else {
            return Ok(local.hit(key, window, now));
        };
        match redis
            .hit(key, window.remaining_ms(now) + window::EXPIRY_MARGIN_MS)
            .await
        {
            Ok(count) => Ok(Count {
                count,
                reset_ms: window.remaining_ms(now),
            }),
            Err(e) => {
                self.note_store_error(&e);
                if self.inner.config.fail == FailMode::Closed && fallback == Fallback::PerFailMode {
                    return Err(LimitError::Unavailable);
                }
                metrics::counter!("ratelimit_fallback_total").increment(1);
                // The local counter starts from zero: each instance enforces the policy
                // on its own traffic until Redis answers again.
                Ok(local.hit(key, window, window::now_ms()))
            }
        }
    }

    fn note_store_error(&self, e: &StoreError) {
        // An open breaker is not a new failure: Redis was not even tried.
        if matches!(e, StoreError::CircuitOpen) {
            return;
        }
        metrics::counter!("ratelimit_store_errors_total").increment(1);
        let now = window::now_ms();
        let last = self.inner.last_error_log_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= LOG_EVERY_MS
            && self
                .inner
                .last_error_log_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            // Only the error: keys carry user ids and addresses.
            tracing::warn!(error = %e, fail = ?self.inner.config.fail, "rate-limit store unreachable");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(read: u64, per_address: u64) -> RateLimitConfig {
        RateLimitConfig {
            profiles_read: read,
            per_address,
            ..RateLimitConfig::default()
        }
    }

    #[tokio::test]
    async fn in_memory_limits_per_user_and_policy() {
        let limiter = Limiter::new(&config(3, 10), None);
        let (a, b) = (UserId::random(), UserId::random());
        for n in 1..=3 {
            let d = limiter
                .check(a, Policy::ProfilesRead, "/api/profiles")
                .await
                .unwrap();
            assert!(d.allowed());
            assert_eq!(d.remaining(), 3 - n);
        }
        let d = limiter
            .check(a, Policy::ProfilesRead, "/api/profiles")
            .await
            .unwrap();
        assert!(!d.allowed());
        assert_eq!(d.remaining(), 0);
        assert!(d.reset_secs >= 1 && d.reset_secs <= 3600);
        assert!(
            limiter
                .check(b, Policy::ProfilesRead, "/api/profiles")
                .await
                .unwrap()
                .allowed()
        );
        let d = limiter
            .check(a, Policy::ProfilesUpdate, "/api/profiles/update")
            .await
            .unwrap();
        assert_eq!((d.allowed(), d.limit, d.count), (true, 10, 1));
    }

    #[tokio::test]
    async fn addresses_are_blocked_once_over() {
        let limiter = Limiter::new(&config(3, 2), None);
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        assert!(limiter.blocked(ip).is_none());
        assert!(limiter.count_failed_auth(ip).await.allowed());
        assert!(limiter.count_failed_auth(ip).await.allowed());
        assert!(limiter.blocked(ip).is_none());
        assert!(!limiter.count_failed_auth(ip).await.allowed());
        let d = limiter.blocked(ip).expect("remembered");
        assert_eq!((d.policy, d.remaining()), (Policy::PerAddress, 0));
        assert!(limiter.blocked("192.0.2.8".parse().unwrap()).is_none());
    }
}
