//! The cache storage protocol for profiles and their settings/preferences documents, over a
//! [`CacheStore`] (Redis, Redis Cluster or in-process). It knows keys, entries, guards and
//! TTLs; the use cases that read the database and decide when to fill live in
//! `crate::service`.
//!
//! Keys (see [`keys`]): an entry key (`cache:profile:<id>`, …) holds the whole JSON entry
//! (the full profile plus `cached_at`, or `{"data": {...}, "cached_at": ...}`) or does not
//! exist. Companion keys in the entry's hash slot hold the rest: the last write's state
//! token, a tombstone for a missing profile, the refresh-ahead lock.
//!
//! * A write, after the database commit, runs one atomic step per entry: a fresh state
//!   token (`PX 30000`), and the entry and its tombstone deleted.
//! * A reader looks at the entry and its companions in one `MGET`. An entry is a hit; a
//!   tombstone answers "not found" without the database; otherwise the reader reads the
//!   database and fills with the guarded step "store only while the state still holds the
//!   token I saw". A write acknowledged after the look replaced that token, so a stale
//!   fill is refused, whoever deleted the entry meanwhile (a writer, an operator's `DEL`,
//!   an eviction). Fills are skipped more than 10 s after the look, so a state that
//!   expired (30 s) can never make one look valid.
//! * TTL jitter only shortens, and is a function of (id, cached_at), so the expiry of any
//!   entry can be recomputed from its `cached_at` (refresh-ahead needs no PTTL call).
//! * A write whose invalidation could not be applied makes this instance "dirty": it reads
//!   only the database until the outbox drain has applied every pending invalidation.
//!
//! Reference: `docs/cache.md`.

mod entry;
pub mod keys;
mod memory;
mod store;
mod totals;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::config::{Config, PrewarmConfig};
use crate::db::InvalidationScope;
use crate::domain::UserId;
use crate::store::StoreError;

pub use entry::{Cached, entry_ttl, now_millis, profile_entry};
pub use keys::{EntryKeys, Kind, document_key, keys_for, kinds_for, profile_key};
pub use memory::MemoryCacheStore;
pub use store::{CacheStore, Fill, FillContent, HITS_KEY, Look, MISSES_KEY, Observed};
pub use totals::CacheMetrics;

/// How long a write's state token lives.
pub const STATE_TTL: Duration = Duration::from_secs(30);
/// A fill later than this after the reader's look is skipped (well inside `STATE_TTL`).
pub const MAX_FILL_DELAY: Duration = Duration::from_secs(10);
/// How long the cross-instance refresh-ahead lock is held.
pub const REFRESH_LOCK_TTL: Duration = Duration::from_secs(10);

/// How long a read `maxmemory-policy` is trusted before it is read again.
pub const EVICTION_CHECK_EVERY: Duration = Duration::from_secs(60);
/// Eviction policies under which Redis never drops a key by itself (only TTLs end them).
const SAFE_EVICTION: &[&str] = &["noeviction"];

/// Cache tuning, from the configuration.
#[derive(Debug, Clone)]
pub struct CacheSettings {
    /// Longest life of an entry (jitter only shortens it).
    pub ttl: Duration,
    /// Refresh in the background when less than this is left (zero: never).
    pub refresh_ahead: Duration,
    /// Life of a tombstone (zero: no tombstones).
    pub negative_ttl: Duration,
    /// Largest share of the TTL jitter takes off, percent.
    pub jitter_percent: u64,
    /// Period of the hit/miss flush to the store.
    pub metrics_flush: Duration,
    /// Period of the outbox drain (and of the health ping).
    pub outbox_poll: Duration,
    /// Prewarm settings.
    pub prewarm: PrewarmConfig,
}

impl CacheSettings {
    /// Settings from the service configuration, taken as they are: their bounds are
    /// checked once, by `Config::validate` (`config/cache.rs`, `config/redis.rs`).
    pub fn from_config(config: &Config) -> Self {
        Self {
            ttl: Duration::from_secs(config.cache.ttl_secs),
            refresh_ahead: Duration::from_secs(config.cache.refresh_ahead_secs),
            negative_ttl: Duration::from_secs(config.cache.negative_ttl_secs),
            jitter_percent: config.cache.jitter_percent,
            metrics_flush: Duration::from_millis(config.redis.metrics_flush_ms),
            outbox_poll: Duration::from_millis(config.redis.outbox_poll_ms),
            prewarm: config.prewarm.clone(),
        }
    }
}

struct CacheInner {
    store: Arc<dyn CacheStore>,
    settings: CacheSettings,
    /// Hits and misses counted here since the last flush.
    hits: AtomicU64,
    misses: AtomicU64,
    /// Dirty while `dirty_gen > clean_gen`: bumped by failed invalidations, caught up by
    /// drain passes that started after the failure and emptied the outbox.
    dirty_gen: AtomicU64,
    clean_gen: AtomicU64,
    /// The last eviction-policy answer and when it was read: `/ready` is probed every few
    /// seconds, and `CONFIG GET` need not be (it may even be refused on managed Redis).
    eviction: std::sync::Mutex<Option<(std::time::Instant, EvictionCheck)>>,
}

/// The profile cache: cheap to clone, shared by the service, the admin routes and the
/// background tasks.
#[derive(Clone)]
pub struct Cache {
    inner: Arc<CacheInner>,
}

/// What `maxmemory-policy` means for the cache's companion keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EvictionCheck {
    /// No Redis, or Redis would not say (`CONFIG` disabled, or down).
    Unknown,
    /// Redis never evicts keys by itself.
    Safe(String),
    /// Redis may evict companion keys (write states), which reopens the stale-fill window.
    Unsafe(String),
}

impl Cache {
    /// A cache over `store`.
    pub fn new(store: Arc<dyn CacheStore>, settings: CacheSettings) -> Self {
        Self {
            inner: Arc::new(CacheInner {
                store,
                settings,
                hits: AtomicU64::new(0),
                misses: AtomicU64::new(0),
                dirty_gen: AtomicU64::new(0),
                clean_gen: AtomicU64::new(0),
                eviction: std::sync::Mutex::new(None),
            }),
        }
    }

    /// The store (health, kind, diagnostics).
    pub fn store(&self) -> &Arc<dyn CacheStore> {
        &self.inner.store
    }

    /// The settings.
    pub fn settings(&self) -> &CacheSettings {
        &self.inner.settings
    }

    /// True while a write's invalidation is known not to be applied.
    pub fn is_dirty(&self) -> bool {
        self.inner.dirty_gen.load(Ordering::SeqCst) > self.inner.clean_gen.load(Ordering::SeqCst)
    }

    /// Whether this instance may read (and fill) the store now.
    pub fn may_read(&self) -> bool {
        !self.is_dirty() && self.inner.store.is_available()
    }

    /// Records that an invalidation failed: reads bypass the store until the outbox is drained.
    pub fn mark_dirty(&self) {
        self.inner.dirty_gen.fetch_add(1, Ordering::SeqCst);
    }

    /// The dirty generation a drain pass starts from; pass it to [`Self::mark_clean`] once
    /// the pass has emptied the outbox.
    pub fn drain_generation(&self) -> u64 {
        self.inner.dirty_gen.load(Ordering::SeqCst)
    }

    /// Every failure up to `generation` has been made good by a drain pass.
    pub fn mark_clean(&self, generation: u64) {
        self.inner.clean_gen.fetch_max(generation, Ordering::SeqCst);
    }

    /// `("redis" | "redis-cluster" | "embedded", usable)`; not usable while the breaker
    /// is open or invalidations are pending.
    pub fn health(&self) -> (&'static str, bool) {
        let store = &self.inner.store;
        (store.kind(), store.is_healthy() && !self.is_dirty())
    }

    /// Counts `n` reads answered from the cache.
    pub fn count_hits(&self, n: u64) {
        if n > 0 {
            self.inner.hits.fetch_add(n, Ordering::Relaxed);
            metrics::counter!("cache_hits_total").increment(n);
            // The same count under the name the stack's dashboards use (SPEC 7).
            metrics::counter!("profile_cache_hits_total").increment(n);
        }
    }

    /// Counts `n` reads not answered from a cached entry.
    pub fn count_misses(&self, n: u64) {
        if n > 0 {
            self.inner.misses.fetch_add(n, Ordering::Relaxed);
            metrics::counter!("cache_misses_total").increment(n);
            metrics::counter!("profile_cache_misses_total").increment(n);
        }
    }

    /// Looks at an entry and its companions, by its keys.
    pub async fn observe_keys(&self, keys: &EntryKeys) -> Result<Observed, StoreError> {
        self.inner.store.observe(keys).await
    }

    /// Looks at an entry and its companions.
    pub async fn observe(&self, kind: Kind, id: UserId) -> Result<Observed, StoreError> {
        self.inner.store.observe(&kind.keys(id)).await
    }

    /// Looks at the profile entries of `ids` (one MGET per slot).
    pub async fn observe_profiles(&self, ids: &[UserId]) -> Result<Vec<Observed>, StoreError> {
        let keys: Vec<EntryKeys> = ids.iter().map(|id| Kind::Profile.keys(*id)).collect();
        self.inner.store.observe_many(&keys).await
    }

    /// The fill after a database read that followed a look which saw `seen_state`:
    /// the entry, a tombstone (when tombstones are on), or nothing.
    pub fn fill_for<V: Cached>(
        &self,
        kind: Kind,
        id: UserId,
        seen_state: Option<String>,
        found: Option<&V>,
    ) -> Option<Fill> {
        let s = &self.inner.settings;
        let (content, ttl) = match found {
            Some(v) => {
                let now = now_millis();
                (
                    FillContent::Entry(v.encode(now)?),
                    entry_ttl(s.ttl, s.jitter_percent, id, now),
                )
            }
            None if !s.negative_ttl.is_zero() => (FillContent::Missing, s.negative_ttl),
            None => return None,
        };
        Some(Fill {
            keys: kind.keys(id),
            seen_state,
            content,
            ttl,
        })
    }

    /// One guarded fill; true when stored.
    pub async fn fill(&self, fill: &Fill) -> Result<bool, StoreError> {
        self.inner.store.fill(fill).await
    }

    /// Many guarded fills (one pipeline per slot); which were stored.
    pub async fn fill_many(&self, fills: &[Fill]) -> Result<Vec<bool>, StoreError> {
        self.inner.store.fill_many(fills).await
    }

    /// True when an entry of `id` cached at `cached_at` is close enough to its expiry to
    /// be refreshed ahead.
    pub fn needs_refresh(&self, id: UserId, cached_at: DateTime<Utc>) -> bool {
        let s = &self.inner.settings;
        if s.refresh_ahead.is_zero() {
            return false;
        }
        let ttl = entry_ttl(s.ttl, s.jitter_percent, id, cached_at);
        let expires_at = cached_at + chrono::Duration::from_std(ttl).unwrap_or_default();
        let remaining = (expires_at - Utc::now()).to_std().unwrap_or_default();
        remaining < s.refresh_ahead
    }

    /// Takes the cross-instance refresh lock of an entry; true when this caller holds it.
    pub async fn take_refresh_lock(&self, kind: Kind, id: UserId) -> bool {
        let lock = kind.keys(id).refresh_lock();
        matches!(
            self.inner.store.set_nx(&lock, "1", REFRESH_LOCK_TTL).await,
            Ok(true)
        )
    }

    /// Invalidates the entries of `scope` for `id`: fresh states, entries deleted.
    pub async fn invalidate(&self, id: UserId, scope: InvalidationScope) -> Result<(), StoreError> {
        let keys: Vec<EntryKeys> = kinds_for(scope).into_iter().map(|k| k.keys(id)).collect();
        self.inner.store.invalidate(&keys, STATE_TTL).await
    }

    /// Invalidates the entries of `scope` for each of `users` (one pipeline per slot).
    pub async fn invalidate_many(
        &self,
        users: &[UserId],
        scope: InvalidationScope,
    ) -> Result<(), StoreError> {
        let keys: Vec<EntryKeys> = users
            .iter()
            .flat_map(|id| kinds_for(scope).into_iter().map(move |k| k.keys(*id)))
            .collect();
        self.inner.store.invalidate(&keys, STATE_TTL).await
    }

    /// Reads `maxmemory-policy` and says whether it can evict companion keys.
    /// A known answer is reused for [`EVICTION_CHECK_EVERY`].
    pub async fn check_eviction_policy(&self) -> EvictionCheck {
        let lock = || {
            self.inner
                .eviction
                .lock()
                .unwrap_or_else(|p| p.into_inner())
        };
        if let Some((at, check)) = lock().as_ref()
            && at.elapsed() < EVICTION_CHECK_EVERY
        {
            return check.clone();
        }
        let check = match self.inner.store.eviction_policy().await {
            None => EvictionCheck::Unknown,
            Some(p) if SAFE_EVICTION.contains(&p.as_str()) => EvictionCheck::Safe(p),
            Some(p) => EvictionCheck::Unsafe(p),
        };
        // An unknown answer (Redis down, CONFIG refused) is kept as long: a Redis that
        // refuses CONFIG would otherwise count an error on every probe.
        *lock() = Some((std::time::Instant::now(), check.clone()));
        check
    }

    /// Sends this instance's unflushed hit/miss counts to the store; kept for the next
    /// flush when that fails.
    pub async fn flush_metrics(&self) -> Result<(), StoreError> {
        let hits = self.inner.hits.swap(0, Ordering::Relaxed);
        let misses = self.inner.misses.swap(0, Ordering::Relaxed);
        if hits == 0 && misses == 0 {
            return Ok(());
        }
        let result = self.inner.store.add_counters(hits, misses).await;
        if result.is_err() {
            self.inner.hits.fetch_add(hits, Ordering::Relaxed);
            self.inner.misses.fetch_add(misses, Ordering::Relaxed);
        }
        result
    }

    /// Shared totals (every instance's flushed counts) plus this instance's unflushed ones.
    pub async fn metrics(&self) -> Result<CacheMetrics, StoreError> {
        let (hits, misses) = self.inner.store.counters().await?;
        Ok(CacheMetrics::from_counts(
            hits + self.inner.hits.load(Ordering::Relaxed),
            misses + self.inner.misses.load(Ordering::Relaxed),
        ))
    }

    /// Zeroes the shared totals and this instance's unflushed counts.
    pub async fn reset_metrics(&self) -> Result<(), StoreError> {
        self.inner.hits.store(0, Ordering::Relaxed);
        self.inner.misses.store(0, Ordering::Relaxed);
        self.inner.store.reset_counters().await
    }
}
