//! The cache-aside protocol for profiles and their settings/preferences documents, over a
//! [`CacheStore`] (Redis, Redis Cluster or in-process).
//!
//! Keys: `cache:profile:<id>`, `cache:settings:<id>`, `cache:preferences:<id>`. A key holds
//! an entry (the full profile JSON plus `cached_at`, or `{"data": {...}, "cached_at": ...}`),
//! an invalidation marker `inv:<random>`, or a tombstone `nf` (no such profile).
//!
//! * Writers, after the database commit, replace each affected key with a fresh marker
//!   (`SET key inv:<token> PX 30000`), never a DEL.
//! * Readers `GET` the key. An entry is a hit; a tombstone answers "not found" without the
//!   database; nil or a marker is a miss: the reader reads the database (one read per key
//!   and observed value per instance: single flight) and fills with the guarded script
//!   "set only if the key still holds exactly what I saw". A writer that committed after
//!   the read has put a new marker there, so a stale fill is refused. Fills are skipped
//!   more than 10 s after the GET, so an expired marker can never make one look valid.
//! * TTL jitter only shortens, and is a function of (id, cached_at), so the expiry of any
//!   entry can be recomputed from its `cached_at` (refresh-ahead needs no PTTL call).
//! * A write whose invalidation could not be applied stays in the outbox (a row written in
//!   the write's own transaction) and makes this instance "dirty": it reads only the
//!   database until a drain pass has applied every pending invalidation.

mod entry;
mod flight;
mod keys;
mod memory;
pub mod prewarm;
mod redis_store;
mod store;
mod tasks;
mod totals;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::FutureExt;

use crate::config::{Config, PrewarmConfig};
use crate::db::{DbError, InvalidationScope, Repo};
use crate::domain::{DocumentKind, JsonObject, Profile, UserId};
use crate::redis::{RedisClient, StoreError};
use crate::service::{BatchOutcome, Lookup, count_query, dedupe};
use flight::Flights;

pub use entry::entry_ttl;
pub use keys::{document_key, keys_for, profile_key};
pub use memory::MemoryStore;
pub use redis_store::RedisStore;
pub use store::{CacheStore, Fill, HITS_KEY, MISSES_KEY};
pub use tasks::spawn_background;
pub use totals::CacheMetrics;

use entry::{Cached, now_millis};
use keys::Kind;

/// How long an invalidation marker lives.
pub const MARKER_TTL: Duration = Duration::from_secs(30);
/// A fill later than this after the reader's GET is skipped (well inside `MARKER_TTL`).
pub const MAX_FILL_DELAY: Duration = Duration::from_secs(10);
/// How long the cross-instance refresh-ahead lock is held.
pub const REFRESH_LOCK_TTL: Duration = Duration::from_secs(10);
/// The value of a tombstone: the profile is known not to exist.
pub const TOMBSTONE: &str = "nf";
/// Prefix of invalidation markers.
pub const MARKER_PREFIX: &str = "inv:";

/// Outbox rows applied per drain round, and rounds per pass.
const DRAIN_BATCH: u32 = 200;
const DRAIN_ROUNDS: usize = 20;

/// The raw value a GET of the read's cache key (`profile_key` or `document_key`) returned,
/// fetched in the same round trip as the rate limiter's script (one Redis round trip).
#[derive(Clone, Debug)]
pub struct Prefetched(pub Option<String>);

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
    /// Settings from the service configuration.
    pub fn from_config(config: &Config) -> Self {
        Self {
            ttl: Duration::from_secs(config.cache.ttl_secs),
            refresh_ahead: Duration::from_secs(config.cache.refresh_ahead_secs),
            negative_ttl: Duration::from_secs(config.cache.negative_ttl_secs.min(30)),
            jitter_percent: config.cache.jitter_percent.min(100),
            metrics_flush: Duration::from_millis(config.redis.metrics_flush_ms.max(10)),
            outbox_poll: Duration::from_millis(config.redis.outbox_poll_ms.max(10)),
            prewarm: config.prewarm.clone(),
        }
    }
}

pub(super) struct Inner {
    store: Arc<dyn CacheStore>,
    repo: Repo,
    settings: CacheSettings,
    /// Hits and misses counted here since the last flush.
    hits: AtomicU64,
    misses: AtomicU64,
    /// Dirty while `dirty_gen > clean_gen`: bumped by failed invalidations, caught up by
    /// drain passes that started after the failure and emptied the outbox.
    dirty_gen: AtomicU64,
    clean_gen: AtomicU64,
    profile_flights: Flights<Option<Profile>>,
    document_flights: Flights<Option<JsonObject>>,
}

/// The profile cache: cheap to clone, shared by the service, the admin routes and the
/// background tasks.
#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

impl Cache {
    /// A cache over `store` and `repo`. It starts dirty: nothing is read from the store
    /// until a first drain pass has applied invalidations left by crashed instances.
    pub fn new(store: Arc<dyn CacheStore>, repo: Repo, settings: CacheSettings) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                repo,
                settings,
                hits: AtomicU64::new(0),
                misses: AtomicU64::new(0),
                dirty_gen: AtomicU64::new(1),
                clean_gen: AtomicU64::new(0),
                profile_flights: Flights::new(),
                document_flights: Flights::new(),
            }),
        }
    }

    /// The store for `redis` (or the in-process one when there is no Redis).
    pub fn store_for(redis: Option<&RedisClient>) -> Arc<dyn CacheStore> {
        match redis {
            Some(client) => Arc::new(RedisStore::new(client.clone())),
            None => Arc::new(MemoryStore::new()),
        }
    }

    /// The store (health and kind).
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

    /// `("redis" | "redis-cluster" | "embedded", usable)`; not usable while the breaker
    /// is open or invalidations are pending.
    pub fn health(&self) -> (&'static str, bool) {
        let store = &self.inner.store;
        (store.kind(), store.is_healthy() && !self.is_dirty())
    }

    fn count(&self, hit: bool, n: u64) {
        if n == 0 {
            return;
        }
        if hit {
            self.inner.hits.fetch_add(n, Ordering::Relaxed);
            metrics::counter!("cache_hits_total").increment(n);
        } else {
            self.inner.misses.fetch_add(n, Ordering::Relaxed);
            metrics::counter!("cache_misses_total").increment(n);
        }
    }

    /// One profile, cache-aside. `prefetched` is the raw GET the hot path already made.
    pub async fn profile(
        &self,
        id: UserId,
        prefetched: Option<Prefetched>,
    ) -> Result<Option<Lookup<Profile>>, DbError> {
        self.read::<Profile>(Kind::Profile, id, prefetched).await
    }

    /// One settings or preferences document, cache-aside; `None` when there is no profile.
    pub async fn document(
        &self,
        kind: DocumentKind,
        id: UserId,
        prefetched: Option<Prefetched>,
    ) -> Result<Option<Lookup<JsonObject>>, DbError> {
        self.read::<JsonObject>(Kind::Document(kind), id, prefetched)
            .await
    }

    async fn read<V: Cached>(
        &self,
        kind: Kind,
        id: UserId,
        prefetched: Option<Prefetched>,
    ) -> Result<Option<Lookup<V>>, DbError> {
        let from_db = |v: Option<V>| {
            v.map(|value| Lookup {
                value,
                cached_at: None,
            })
        };
        if !self.may_read() {
            self.count(false, 1);
            return Ok(from_db(V::load(self.inner.repo.clone(), kind, id).await?));
        }
        let key = kind.key(id);
        let raw = match prefetched {
            Some(Prefetched(raw)) => raw,
            None => match self.inner.store.get(&key).await {
                Ok(raw) => raw,
                Err(e) => {
                    tracing::debug!(error = %e, "cache read failed; reading the database");
                    self.count(false, 1);
                    return Ok(from_db(V::load(self.inner.repo.clone(), kind, id).await?));
                }
            },
        };
        let seen_at = Instant::now();
        match raw.as_deref() {
            Some(TOMBSTONE) => {
                self.count(false, 1);
                metrics::counter!("cache_tombstone_hits_total").increment(1);
                return Ok(None);
            }
            Some(s) if !s.starts_with(MARKER_PREFIX) => {
                if let Some((value, cached_at)) = V::decode(s) {
                    self.count(true, 1);
                    self.maybe_refresh::<V>(kind, id, s, cached_at);
                    return Ok(Some(Lookup {
                        value,
                        cached_at: Some(cached_at),
                    }));
                }
                // Unreadable (an older format): a miss; the guarded fill replaces it.
            }
            _ => {}
        }
        self.count(false, 1);
        let flight_key = format!("{key}\n{}", raw.as_deref().unwrap_or(""));
        let this = self.clone();
        let shared = V::flights(&self.inner)
            .run(flight_key, move || {
                async move {
                    match V::load(this.inner.repo.clone(), kind, id).await {
                        Ok(found) => {
                            this.fill_after_read(kind, id, raw, seen_at, found.as_ref())
                                .await;
                            Some(found)
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "database read for a cache miss failed");
                            None
                        }
                    }
                }
                .boxed()
            })
            .await;
        match shared {
            Some(found) => Ok(from_db(found)),
            // The shared read failed: read on our own, to return our own error.
            None => Ok(from_db(V::load(self.inner.repo.clone(), kind, id).await?)),
        }
    }

    /// The fill (or tombstone) after a miss, guarded by the value the reader saw.
    async fn fill_after_read<V: Cached>(
        &self,
        kind: Kind,
        id: UserId,
        seen: Option<String>,
        seen_at: Instant,
        found: Option<&V>,
    ) {
        if seen_at.elapsed() > MAX_FILL_DELAY || !self.may_read() {
            return;
        }
        let Some(fill) = self.fill_for(kind, id, seen, found) else {
            return;
        };
        if let Err(e) = self.inner.store.fill(&fill).await {
            tracing::debug!(error = %e, "cache fill failed");
        }
    }

    fn fill_for<V: Cached>(
        &self,
        kind: Kind,
        id: UserId,
        expected: Option<String>,
        found: Option<&V>,
    ) -> Option<Fill> {
        let s = &self.inner.settings;
        let (value, ttl) = match found {
            Some(v) => {
                let now = now_millis();
                (v.encode(now)?, entry_ttl(s.ttl, s.jitter_percent, id, now))
            }
            None if !s.negative_ttl.is_zero() => (TOMBSTONE.to_owned(), s.negative_ttl),
            None => return None,
        };
        Some(Fill {
            key: kind.key(id),
            expected,
            value,
            ttl,
        })
    }

    /// Starts a background refresh when the hit's remaining TTL is under the threshold; at
    /// most one per key across instances (`SET cache:refresh:<kind>:<id> NX`).
    fn maybe_refresh<V: Cached>(
        &self,
        kind: Kind,
        id: UserId,
        raw: &str,
        cached_at: DateTime<Utc>,
    ) {
        let s = &self.inner.settings;
        if s.refresh_ahead.is_zero() {
            return;
        }
        let ttl = entry_ttl(s.ttl, s.jitter_percent, id, cached_at);
        let expires_at = cached_at + chrono::Duration::from_std(ttl).unwrap_or_default();
        let remaining = (expires_at - Utc::now()).to_std().unwrap_or_default();
        if remaining >= s.refresh_ahead {
            return;
        }
        let this = self.clone();
        let raw = raw.to_owned();
        tokio::spawn(async move {
            let lock = format!("cache:refresh:{}:{id}", kind.name());
            match this.inner.store.set_nx(&lock, "1", REFRESH_LOCK_TTL).await {
                Ok(true) => {}
                _ => return,
            }
            metrics::counter!("cache_refreshes_total").increment(1);
            let seen_at = Instant::now();
            match V::load(this.inner.repo.clone(), kind, id).await {
                // Expected = the hit we saw: a write's marker since then wins.
                Ok(found) => {
                    this.fill_after_read(kind, id, Some(raw), seen_at, found.as_ref())
                        .await
                }
                Err(e) => tracing::debug!(error = %e, "refresh-ahead read failed"),
            }
        });
    }

    /// Many profiles: one MGET (per slot on a cluster), one database query for the misses,
    /// one pipelined write-back of guarded fills. Tombstoned ids are not found without the
    /// database; they count as misses, like every id not found.
    pub async fn batch(&self, ids: &[UserId]) -> Result<BatchOutcome, DbError> {
        let unique = dedupe(ids);
        let mut served: HashMap<UserId, Profile> = HashMap::new();
        let mut known_missing: HashSet<UserId> = HashSet::new();
        let mut to_load: Vec<(UserId, Option<String>)> = Vec::new();
        let mut seen_at = None;
        let raws = if self.may_read() && !unique.is_empty() {
            let keys: Vec<String> = unique.iter().map(|id| profile_key(*id)).collect();
            match self.inner.store.mget(&keys).await {
                Ok(raws) => {
                    seen_at = Some(Instant::now());
                    Some(raws)
                }
                Err(e) => {
                    tracing::debug!(error = %e, "cache batch read failed; reading the database");
                    None
                }
            }
        } else {
            None
        };
        match raws {
            Some(raws) => {
                for (id, raw) in unique.iter().zip(raws) {
                    match raw.as_deref() {
                        Some(TOMBSTONE) => {
                            known_missing.insert(*id);
                        }
                        Some(s) if !s.starts_with(MARKER_PREFIX) => match Profile::decode(s) {
                            Some((p, cached_at)) => {
                                self.maybe_refresh::<Profile>(Kind::Profile, *id, s, cached_at);
                                served.insert(*id, p);
                            }
                            None => to_load.push((*id, raw)),
                        },
                        _ => to_load.push((*id, raw)),
                    }
                }
            }
            None => to_load = unique.iter().map(|id| (*id, None)).collect(),
        }
        let mut found: HashMap<UserId, Profile> = if to_load.is_empty() {
            HashMap::new()
        } else {
            count_query("fetch_many");
            let load: Vec<UserId> = to_load.iter().map(|(id, _)| *id).collect();
            self.inner
                .repo
                .fetch_many(&load)
                .await?
                .into_iter()
                .map(|p| (p.user_id, p))
                .collect()
        };
        // One pipelined write-back, only from a fresh look at the cache.
        if seen_at.is_some_and(|t| t.elapsed() <= MAX_FILL_DELAY) && self.may_read() {
            let fills: Vec<Fill> = to_load
                .into_iter()
                .filter_map(|(id, seen)| self.fill_for(Kind::Profile, id, seen, found.get(&id)))
                .collect();
            if let Err(e) = self.inner.store.fill_many(&fills).await {
                tracing::debug!(error = %e, "cache batch write-back failed");
            }
        }
        let mut out = BatchOutcome {
            cache_hits: served.len(),
            cache_misses: unique.len() - served.len(),
            ..Default::default()
        };
        for id in &unique {
            match served.remove(id).or_else(|| found.remove(id)) {
                Some(p) => out.profiles.push(p),
                None => out.not_found.push(*id),
            }
        }
        self.count(true, out.cache_hits as u64);
        self.count(false, out.cache_misses as u64);
        Ok(out)
    }

    /// Replaces the keys of `scope` with fresh invalidation markers.
    pub async fn invalidate(&self, id: UserId, scope: InvalidationScope) -> Result<(), StoreError> {
        self.invalidate_keys(keys_for(scope, id)).await
    }

    async fn invalidate_keys(&self, keys: Vec<String>) -> Result<(), StoreError> {
        let entries: Vec<(String, String)> = keys
            .into_iter()
            .map(|k| {
                (
                    k,
                    format!("{MARKER_PREFIX}{}", uuid::Uuid::new_v4().simple()),
                )
            })
            .collect();
        self.inner.store.set_many(&entries, MARKER_TTL).await
    }

    /// Applies pending outbox invalidations (widened to all three keys of each user) and
    /// removes their rows. A pass that empties the outbox clears the dirty state recorded
    /// before it started. Returns how many rows were applied.
    pub async fn drain_outbox(&self) -> Result<usize, DrainError> {
        let generation = self.inner.dirty_gen.load(Ordering::SeqCst);
        let mut applied = 0;
        for _ in 0..DRAIN_ROUNDS {
            let rows = self.inner.repo.pending_invalidations(DRAIN_BATCH).await?;
            if !rows.is_empty() {
                let users: Vec<UserId> =
                    dedupe(&rows.iter().map(|r| r.user_id).collect::<Vec<_>>());
                let keys = users
                    .iter()
                    .flat_map(|id| keys_for(InvalidationScope::All, *id))
                    .collect();
                self.invalidate_keys(keys).await?;
                let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
                self.inner.repo.clear_invalidations(&ids).await?;
                applied += rows.len();
            }
            if rows.len() < DRAIN_BATCH as usize {
                self.inner.clean_gen.fetch_max(generation, Ordering::SeqCst);
                return Ok(applied);
            }
        }
        Ok(applied)
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

    /// The repository (prewarm).
    fn repo(&self) -> &Repo {
        &self.inner.repo
    }
}

/// Why a drain pass stopped early.
#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    /// The outbox could not be read or cleared.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The invalidations could not be applied.
    #[error(transparent)]
    Store(#[from] StoreError),
}
