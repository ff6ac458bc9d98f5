//! The in-process store, used when no Redis is configured: the same operations with the
//! same semantics (expiry, guarded fill, NX), so the cache protocol is the one tested on Redis.
//! Per instance only: several instances without Redis do not see each other's invalidations.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::store::{CacheStore, Fill};
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
}

/// Cache entries and counters in this process.
pub struct MemoryStore {
    map: Mutex<Map>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
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

    fn fill_locked(map: &mut Map, fill: &Fill, now: Instant) -> bool {
        let current = map.live(&fill.key, now).map(String::as_str).unwrap_or("");
        if current == fill.expected.as_deref().unwrap_or("") {
            map.insert(&fill.key, &fill.value, fill.ttl, now);
            true
        } else {
            false
        }
    }
}

#[async_trait]
impl CacheStore for MemoryStore {
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

    async fn mget(&self, keys: &[String]) -> Result<Vec<Option<String>>, StoreError> {
        let now = Instant::now();
        let mut map = self.lock();
        Ok(keys.iter().map(|k| map.live(k, now).cloned()).collect())
    }

    async fn set_many(
        &self,
        entries: &[(String, String)],
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let now = Instant::now();
        let mut map = self.lock();
        for (k, v) in entries {
            map.insert(k, v, ttl, now);
        }
        Ok(())
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

    async fn fill(&self, fill: &Fill) -> Result<bool, StoreError> {
        Ok(Self::fill_locked(&mut self.lock(), fill, Instant::now()))
    }

    async fn fill_many(&self, fills: &[Fill]) -> Result<usize, StoreError> {
        let now = Instant::now();
        let mut map = self.lock();
        Ok(fills
            .iter()
            .filter(|f| Self::fill_locked(&mut map, f, now))
            .count())
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

    fn fill(key: &str, expected: Option<&str>, value: &str) -> Fill {
        Fill {
            key: key.into(),
            expected: expected.map(Into::into),
            value: value.into(),
            ttl: Duration::from_secs(10),
        }
    }

    #[tokio::test]
    async fn guarded_fill_and_expiry() {
        let s = MemoryStore::new();
        assert!(s.fill(&fill("k", None, "v1")).await.unwrap());
        assert!(
            !s.fill(&fill("k", None, "v2")).await.unwrap(),
            "only into an absent key"
        );
        s.set_many(&[("k".into(), "inv:a".into())], Duration::from_millis(30))
            .await
            .unwrap();
        assert!(
            !s.fill(&fill("k", Some("v1"), "v3")).await.unwrap(),
            "marker wins"
        );
        assert!(s.fill(&fill("k", Some("inv:a"), "v4")).await.unwrap());
        assert_eq!(s.get("k").await.unwrap().as_deref(), Some("v4"));
        assert!(s.set_nx("l", "1", Duration::from_millis(20)).await.unwrap());
        assert!(!s.set_nx("l", "1", Duration::from_millis(20)).await.unwrap());
        tokio::time::sleep(Duration::from_millis(25)).await;
        assert!(
            s.set_nx("l", "1", Duration::from_millis(20)).await.unwrap(),
            "expired"
        );
    }
}
