//! The in-process store, used when no Redis is configured: the same operations with the
//! same semantics (expiry, guarded fill, atomic invalidation, NX), so the cache protocol is
//! the one tested on Redis. Per instance only: several instances without Redis do not see
//! each other's invalidations.
//!
//! An entry and its companions are one value of a [`moka`] cache, under the entry key:
//! Redis keeps them in one hash slot so a script can change them together, and here they
//! share one moka entry so `and_compute_with` (serialized per key) changes them together.
//! Each part carries its own deadline, checked on every read; moka expires the whole value
//! at the latest of them (per-entry expiry through [`Expiry`]). No size bound: evicting a
//! write's state early would let a stale fill through, as on Redis under an evicting policy.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use moka::Expiry;
use moka::ops::compute::Op;
use moka::sync::Cache;

use super::keys::EntryKeys;
use super::store::{CacheStore, Fill, FillContent, Observed};
use crate::store::StoreError;

/// Which of an entry's keys a key is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    /// The entry itself (or any key that is not a companion).
    Entry = 0,
    /// `{<entry>}:state`.
    State = 1,
    /// `{<entry>}:missing`.
    Missing = 2,
    /// `{<entry>}:refresh`.
    Refresh = 3,
}

/// The group a key belongs to (its entry key) and its part in it.
fn locate(key: &str) -> (&str, Part) {
    if let Some((entry, suffix)) = key.strip_prefix('{').and_then(|k| k.split_once("}:")) {
        let part = match suffix {
            "state" => Some(Part::State),
            "missing" => Some(Part::Missing),
            "refresh" => Some(Part::Refresh),
            _ => None,
        };
        if let Some(part) = part {
            return (entry, part);
        }
    }
    (key, Part::Entry)
}

/// An entry and its companions: each part's value and deadline.
#[derive(Debug, Clone, Default)]
struct Group([Option<(String, Instant)>; 4]);

impl Group {
    fn live(&self, part: Part, now: Instant) -> Option<&(String, Instant)> {
        self.0[part as usize]
            .as_ref()
            .filter(|(_, deadline)| *deadline > now)
    }

    fn value(&self, part: Part, now: Instant) -> Option<String> {
        self.live(part, now).map(|(v, _)| v.clone())
    }

    fn set(&mut self, part: Part, value: &str, ttl: Duration, now: Instant) {
        self.0[part as usize] = Some((value.to_owned(), now + ttl));
    }

    fn clear(&mut self, part: Part) {
        self.0[part as usize] = None;
    }

    /// When the last live part expires; `None` when none is live.
    fn deadline(&self, now: Instant) -> Option<Instant> {
        self.0
            .iter()
            .flatten()
            .map(|(_, deadline)| *deadline)
            .filter(|deadline| *deadline > now)
            .max()
    }

    fn observe(&self, now: Instant) -> Observed {
        Observed {
            entry: self.value(Part::Entry, now),
            state: self.value(Part::State, now),
            missing: self.live(Part::Missing, now).is_some(),
        }
    }

    fn fill(&mut self, fill: &Fill, now: Instant) -> bool {
        if self.value(Part::State, now) != fill.seen_state {
            return false;
        }
        let (stored, removed, value) = match &fill.content {
            FillContent::Entry(v) => (Part::Entry, Part::Missing, v.as_str()),
            FillContent::Missing => (Part::Missing, Part::Entry, "1"),
        };
        self.set(stored, value, fill.ttl, now);
        self.clear(removed);
        true
    }
}

/// Expires a group when its last part does.
struct LastPart;

impl Expiry<String, Group> for LastPart {
    fn expire_after_create(&self, _: &String, group: &Group, at: Instant) -> Option<Duration> {
        group.deadline(at).map(|d| d - at)
    }

    fn expire_after_update(
        &self,
        _: &String,
        group: &Group,
        at: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        group.deadline(at).map(|d| d - at)
    }
}

/// Cache entries and counters in this process.
pub struct MemoryCacheStore {
    groups: Cache<String, Group>,
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
            groups: Cache::builder().expire_after(LastPart).build(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    fn read(&self, entry: &str) -> Group {
        self.groups.get(entry).unwrap_or_default()
    }

    /// Changes the group of `entry` in one atomic step; answers what `change` answers.
    fn change<T>(&self, entry: &str, change: impl FnOnce(&mut Group, Instant) -> T) -> T {
        let now = Instant::now();
        let mut answer = None;
        self.groups
            .entry(entry.to_owned())
            .and_compute_with(|current| {
                let mut group = current.map(|e| e.into_value()).unwrap_or_default();
                answer = Some(change(&mut group, now));
                match group.deadline(now) {
                    Some(_) => Op::Put(group),
                    None => Op::Remove,
                }
            });
        answer.expect("and_compute_with runs its closure")
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
        Ok(self.read(&keys.entry).observe(Instant::now()))
    }

    async fn observe_many(&self, keys: &[EntryKeys]) -> Result<Vec<Observed>, StoreError> {
        let now = Instant::now();
        Ok(keys
            .iter()
            .map(|k| self.read(&k.entry).observe(now))
            .collect())
    }

    async fn invalidate(&self, keys: &[EntryKeys], ttl: Duration) -> Result<(), StoreError> {
        for k in keys {
            let token = uuid::Uuid::new_v4().simple().to_string();
            self.change(&k.entry, |group, now| {
                group.set(Part::State, &token, ttl, now);
                group.clear(Part::Entry);
                group.clear(Part::Missing);
            });
        }
        Ok(())
    }

    async fn fill(&self, fill: &Fill) -> Result<bool, StoreError> {
        Ok(self.change(&fill.keys.entry, |group, now| group.fill(fill, now)))
    }

    async fn fill_many(&self, fills: &[Fill]) -> Result<Vec<bool>, StoreError> {
        Ok(fills
            .iter()
            .map(|f| self.change(&f.keys.entry, |group, now| group.fill(f, now)))
            .collect())
    }

    async fn set_nx(&self, key: &str, value: &str, ttl: Duration) -> Result<bool, StoreError> {
        let (entry, part) = locate(key);
        Ok(self.change(entry, |group, now| {
            if group.live(part, now).is_some() {
                return false;
            }
            group.set(part, value, ttl, now);
            true
        }))
    }

    async fn get(&self, key: &str) -> Result<Option<String>, StoreError> {
        let (entry, part) = locate(key);
        Ok(self.read(entry).value(part, Instant::now()))
    }

    async fn ttl(&self, key: &str) -> Result<Option<Duration>, StoreError> {
        let (entry, part) = locate(key);
        let now = Instant::now();
        Ok(self
            .read(entry)
            .live(part, now)
            .map(|(_, deadline)| *deadline - now))
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

    #[tokio::test]
    async fn companions_are_read_by_their_own_keys() {
        let s = MemoryCacheStore::new();
        let k = EntryKeys::new("cache:profile:y".into());
        assert_eq!(locate(&k.state), ("cache:profile:y", Part::State));
        assert_eq!(
            locate(&k.refresh_lock()),
            ("cache:profile:y", Part::Refresh)
        );
        assert_eq!(locate("{odd}:other"), ("{odd}:other", Part::Entry));
        s.invalidate(std::slice::from_ref(&k), Duration::from_secs(30))
            .await
            .unwrap();
        let token = s.get(&k.state).await.unwrap().expect("a state");
        let ttl = s.ttl(&k.state).await.unwrap().expect("with a deadline");
        assert!(ttl <= Duration::from_secs(30) && ttl > Duration::from_secs(29));
        let entry = FillContent::Entry("v".into());
        assert!(s.fill(&fill(&k, Some(&token), entry)).await.unwrap());
        assert_eq!(s.get(&k.entry).await.unwrap().as_deref(), Some("v"));
        assert_eq!(s.get(&k.missing).await.unwrap(), None);
        assert!(
            s.set_nx(&k.refresh_lock(), "1", Duration::from_secs(10))
                .await
                .unwrap()
        );
        assert_eq!(
            s.observe(&k).await.unwrap().entry.as_deref(),
            Some("v"),
            "the lock is a part of its own"
        );
        assert_eq!(s.get("cache:profile:none").await.unwrap(), None);
        assert_eq!(s.ttl("cache:profile:none").await.unwrap(), None);
    }
}
