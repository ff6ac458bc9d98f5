//! The few storage operations the cache protocol needs, so that one protocol runs over
//! Redis, Redis Cluster and the in-process store alike.

use std::time::Duration;

use async_trait::async_trait;

use crate::redis::StoreError;

/// Redis key of the shared hit counter.
pub const HITS_KEY: &str = "metrics:cache:hits";
/// Redis key of the shared miss counter.
pub const MISSES_KEY: &str = "metrics:cache:misses";

/// One guarded fill: store `value` under `key` for `ttl` only while the key still holds
/// exactly `expected` (`None`: the key is absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fill {
    /// The cache key.
    pub key: String,
    /// The raw value the reader saw before reading the database.
    pub expected: Option<String>,
    /// The value to store.
    pub value: String,
    /// Its time to live.
    pub ttl: Duration,
}

/// Where cache entries live: Redis (single node or cluster) or this process.
#[async_trait]
pub trait CacheStore: Send + Sync + 'static {
    /// "redis", "redis-cluster" or "embedded" (for `/ready`).
    fn kind(&self) -> &'static str;
    /// False while calls would be refused at once (breaker open): callers skip the store.
    fn is_available(&self) -> bool;
    /// False while the store is known to be failing (for `/ready`).
    fn is_healthy(&self) -> bool;
    /// True once a connection exists (the in-process store always has one).
    fn is_connected(&self) -> bool {
        true
    }
    /// A cheap round trip that keeps the health view current while the cache is idle.
    async fn ping(&self) -> Result<(), StoreError>;

    /// `GET key`.
    async fn get(&self, key: &str) -> Result<Option<String>, StoreError>;
    /// Remaining life of `key` (`PTTL`): `None` when absent; `Duration::MAX` when it has
    /// no expiry (never the case for keys the cache writes). For diagnostics and tests.
    async fn ttl(&self, key: &str) -> Result<Option<Duration>, StoreError>;
    /// `MGET keys` (split by slot on a cluster); one answer per key, in order.
    async fn mget(&self, keys: &[String]) -> Result<Vec<Option<String>>, StoreError>;
    /// `SET key value PX ttl` for each entry (one round trip on a single node; one
    /// command per slot, concurrently, on a cluster). Fails if any one failed.
    async fn set_many(&self, entries: &[(String, String)], ttl: Duration)
    -> Result<(), StoreError>;
    /// `SET key value NX PX ttl`: true when this call created the key.
    async fn set_nx(&self, key: &str, value: &str, ttl: Duration) -> Result<bool, StoreError>;
    /// The guarded fill; true when stored.
    async fn fill(&self, fill: &Fill) -> Result<bool, StoreError>;
    /// Many guarded fills in one pipeline (per slot on a cluster); how many were stored.
    async fn fill_many(&self, fills: &[Fill]) -> Result<usize, StoreError>;

    /// `INCRBY` of the shared hit and miss counters (zero amounts are not sent).
    async fn add_counters(&self, hits: u64, misses: u64) -> Result<(), StoreError>;
    /// The shared hit and miss counters.
    async fn counters(&self) -> Result<(u64, u64), StoreError>;
    /// Deletes the shared counters.
    async fn reset_counters(&self) -> Result<(), StoreError>;
}
