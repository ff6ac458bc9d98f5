//! The in-process store, used when no Redis is configured: the same operations with the
//! same semantics (expiry, guarded fill, atomic invalidation, NX), so the cache protocol is
//! the one tested on Redis. Per instance only: several instances without Redis do not see
//! each other's invalidations.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::keys::EntryKeys;
use super::store::{CacheStore, Fill, FillContent, Observed};
use crate::redis::StoreError;

/// Fewest entries before expired ones are swept.
const MIN_SWEEP: usize = 1024;

struct Map {
    entries: HashMap<String, (String, Instant)>,
    /// Sweep expired entries when the map grows past this size.
    sweep_at: usize,
}

impl Map {
    fn live(&mut self, key: &str, now: Instant) -> Option<&String> {
        if self.entries.get(key).is_some_and(|(_, exp)| *exp <= now) {
            self.entries.remove(key);
        }
        self.entries.get(key).map(|(v, _)| v)
    }

    fn insert(&mut self, key: &str, value: &str, ttl: Duration, now: Instant) {
        self.entries
            .insert(key.to_owned(), (value.to_owned(), now + ttl));
        if self.entries.len() > self.sweep_at {
            // Amortized: a sweep at most every time the map doubles.
            self.entries.retain(|_, (_, exp)| *exp > now);
            self.sweep_at = (self.entries.len() * 2).max(MIN_SWEEP);
        }
    }

    fn observe(&mut self, keys: &EntryKeys, now: Instant) -> Observed {
        Observed {
            entry: self.live(&keys.entry, now).cloned(),
            state: self.live(&keys.state, now).cloned(),
            missing: self.live(&keys.missing, now).is_some(),
        }
    }

    fn fill(&mut self, fill: &Fill, now: Instant) -> bool {
        if self.live(&fill.keys.state, now).cloned() != fill.seen_state {
            return false;
        }
        match &fill.content {
            FillContent::Entry(v) => {
                self.insert(&fill.keys.entry, v, fill.ttl, now);
                self.entries.remove(&fill.keys.missing);
            }
            FillContent::Missing => {
                self.insert(&fill.keys.missing, "1", fill.ttl, now);
                self.entries.remove(&fill.keys.entry);
            }
        }
        true
    }
}

/// Cache entries and counters in this process.
pub struct MemoryCacheStore {
    map: Mutex<Map>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl Default for MemoryCacheStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryCacheStore {
    /// An empty store.
    pub fn new() -> Self {
        Self {
            map: Mutex::new(Map {
                entries: HashMap::new(),
                sweep_at: MIN_SWEEP,
            }),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Map> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl CacheStore for MemoryCacheStore {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    fn is_available(&self) -> bool {
        true
    }

    fn is_healthy(&self) -> bool {
        true
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn observe(&self, keys: &EntryKeys) -> Result<Observed, StoreError> {
        Ok(self.lock().observe(keys, Instant::now()))
    }

    async fn observe_many(&self, keys: &[EntryKeys]) -> Result<Vec<Observed>, StoreError> {
        let now = Instant::now();
        let mut map = self.lock();
        Ok(keys.iter().map(|k| map.observe(k, now)).collect())
    }

    async fn invalidate(&self, keys: &[EntryKeys], ttl: Duration) -> Result<(), StoreError> {
        let now = Instant::now();
        let mut map = self.lock();
        for k in keys {
            let token = uuid::Uuid::new_v4().simple().to_string();
            map.insert(&k.state, &token, ttl, now);
            map.entries.remove(&k.entry);
            map.entries.remove(&k.missing);
        }
        Ok(())
    }

    async fn fill(&self, fill: &Fill) -> Result<bool, StoreError> {
        Ok(self.lock().fill(fill, Instant::now()))
    }

    async fn fill_many(&self, fills: &[Fill]) -> Result<Vec<bool>, StoreError> {
        let now = Instant::now();
        let mut map = self.lock();
        Ok(fills.iter().map(|f| map.fill(f, now)).collect())
    }

    async fn set_nx(&self, key: &str, value: &str, ttl: Duration) -> Result<bool, StoreError> {
        let now = Instant::now();
        let mut map = self.lock();
        if map.live(key, now).is_some() {
            return Ok(false);
        }
        map.insert(key, value, ttl, now);
        Ok(true)
    }

    async fn get(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self.lock().live(key, Instant::now()).cloned())
    }

    async fn ttl(&self, key: &str) -> Result<Option<Duration>, StoreError> {
        let now = Instant::now();
        let mut map = self.lock();
        if map.live(key, now).is_none() {
            return Ok(None);
        }
        Ok(map
            .entries
            .get(key)
            .map(|(_, exp)| exp.saturating_duration_since(now)))
    }

    async fn add_counters(&self, hits: u64, misses: u64) -> Result<(), StoreError> {
        self.hits.fetch_add(hits, Ordering::Relaxed);
        self.misses.fetch_add(misses, Ordering::Relaxed);
        Ok(())
    }

    async fn counters(&self) -> Result<(u64, u64), StoreError> {
        Ok((
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        ))
    }

    async fn reset_counters(&self) -> Result<(), StoreError> {
        self.hits.store(0, Ordering::Relaxed);
        self.misses.store(0, Ordering::Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(keys: &EntryKeys, seen: Option<&str>, content: FillContent) -> Fill {
        Fill {
            keys: keys.clone(),
            seen_state: seen.map(Into::into),
            content,
            ttl: Duration::from_secs(10),
        }
    }

    #[tokio::test]
    async fn guarded_fill_invalidation_and_expiry() {
        let s = MemoryCacheStore::new();
        let k = EntryKeys::new("cache:profile:x".into());
        let entry = |v: &str| FillContent::Entry(v.into());
        assert!(s.fill(&fill(&k, None, entry("v1"))).await.unwrap());
        assert_eq!(s.observe(&k).await.unwrap().entry.as_deref(), Some("v1"));
        s.invalidate(std::slice::from_ref(&k), Duration::from_millis(30))
            .await
            .unwrap();
        let seen = s.observe(&k).await.unwrap();
        assert_eq!(seen.entry, None, "a write deletes the entry");
        let token = seen.state.clone().expect("and leaves a fresh state");
        assert!(
            !s.fill(&fill(&k, None, entry("old"))).await.unwrap(),
            "a read from before the write is refused"
        );
        assert!(
            s.fill(&fill(&k, Some(&token), FillContent::Missing))
                .await
                .unwrap()
        );
        let seen = s.observe(&k).await.unwrap();
        assert!(seen.missing && seen.entry.is_none());
        assert!(s.fill(&fill(&k, Some(&token), entry("v2"))).await.unwrap());
        let seen = s.observe(&k).await.unwrap();
        assert!(!seen.missing, "an entry replaces the tombstone");
        assert!(s.set_nx("l", "1", Duration::from_millis(20)).await.unwrap());
        assert!(!s.set_nx("l", "1", Duration::from_millis(20)).await.unwrap());
        tokio::time::sleep(Duration::from_millis(35)).await;
        assert!(
            s.set_nx("l", "1", Duration::from_millis(20)).await.unwrap(),
            "expired"
        );
        assert_eq!(
            s.observe(&k).await.unwrap().state,
            None,
            "the state expired"
        );
    }
}
