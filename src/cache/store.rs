//! The storage operations of the cache protocol, so that one protocol runs over Redis,
//! Redis Cluster and the in-process store alike. Every operation on one entry touches the
//! entry and its companions only (one hash slot), and every write to them is one atomic
//! step (a Lua script on Redis, one lock on the in-process store).

use std::time::Duration;

use async_trait::async_trait;

use super::keys::EntryKeys;
use crate::store::StoreError;

/// Redis key of the shared hit counter.
pub const HITS_KEY: &str = "metrics:cache:hits";
/// Redis key of the shared miss counter.
pub const MISSES_KEY: &str = "metrics:cache:misses";

/// What one look at an entry and its companions found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// The entry's raw JSON, when present.
    pub entry: Option<String>,
    /// The last write's token, when one is still remembered.
    pub state: Option<String>,
    /// True when a tombstone says there is no such profile.
    pub missing: bool,
}

impl Observed {
    /// From the values of `MGET entry state missing`.
    pub fn from_values(mut values: Vec<Option<String>>) -> Option<Self> {
        if values.len() != 3 {
            return None;
        }
        let missing = values.pop()?.is_some();
        let state = values.pop()?;
        let entry = values.pop()?;
        Some(Self {
            entry,
            state,
            missing,
        })
    }
}

/// A look at an entry made ahead of the read (in the admission round trip), and when:
/// the read serves a hit from it, or fills after its database read guarded by the state
/// it saw. Fills are skipped once it is `MAX_FILL_DELAY` old.
#[derive(Debug, Clone)]
pub struct Look {
    /// What the look found.
    pub observed: Observed,
    /// When it was made.
    pub at: std::time::Instant,
}

/// What a fill stores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FillContent {
    /// A whole entry (JSON with `cached_at`).
    Entry(String),
    /// A tombstone: the profile does not exist.
    Missing,
}

/// One guarded fill: store `content` for `ttl` only while the entry's state still holds
/// exactly `seen_state` (`None`: absent), i.e. no write was acknowledged since the reader
/// looked, before its database read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fill {
    /// The entry and its companions.
    pub keys: EntryKeys,
    /// The state the reader saw before reading the database.
    pub seen_state: Option<String>,
    /// What to store.
    pub content: FillContent,
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
    /// The server's `maxmemory-policy`; `None` when there is no server or it will not say.
    async fn eviction_policy(&self) -> Option<String> {
        None
    }

    /// One look at an entry and its companions.
    async fn observe(&self, keys: &EntryKeys) -> Result<Observed, StoreError>;
    /// Looks at many entries: one `MGET` (one per slot on a cluster); answers in order.
    async fn observe_many(&self, keys: &[EntryKeys]) -> Result<Vec<Observed>, StoreError>;
    /// For each entry, atomically: its state becomes a fresh `token` for `ttl`, and the
    /// entry and its tombstone are deleted. One round trip on a single node; one pipeline
    /// per slot, concurrently, on a cluster. Fails if any one failed.
    async fn invalidate(&self, keys: &[EntryKeys], ttl: Duration) -> Result<(), StoreError>;
    /// The guarded fill; true when stored.
    async fn fill(&self, fill: &Fill) -> Result<bool, StoreError>;
    /// Many guarded fills in one pipeline (per slot on a cluster); which were stored.
    async fn fill_many(&self, fills: &[Fill]) -> Result<Vec<bool>, StoreError>;
    /// `SET key value NX PX ttl`: true when this call created the key.
    async fn set_nx(&self, key: &str, value: &str, ttl: Duration) -> Result<bool, StoreError>;

    /// `GET key`: for diagnostics and tests.
    async fn get(&self, key: &str) -> Result<Option<String>, StoreError>;
    /// Remaining life of `key` (`PTTL`): `None` when absent; `Duration::MAX` when it has
    /// no expiry (never the case for keys the cache writes). For diagnostics and tests.
    async fn ttl(&self, key: &str) -> Result<Option<Duration>, StoreError>;

    /// `INCRBY` of the shared hit and miss counters (zero amounts are not sent).
    async fn add_counters(&self, hits: u64, misses: u64) -> Result<(), StoreError>;
    /// The shared hit and miss counters.
    async fn counters(&self) -> Result<(u64, u64), StoreError>;
    /// Deletes the shared counters.
    async fn reset_counters(&self) -> Result<(), StoreError>;
}
