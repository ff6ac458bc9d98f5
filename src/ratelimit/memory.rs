//! The in-process counter store: the only store when no Redis is configured, and the
//! fallback while Redis is unreachable. Exact for one process: every increment happens
//! under a shard's mutex (sections of a few hundred nanoseconds, never across an await).

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

use super::Count;
use super::window::Window;

/// Shards keep unrelated users from contending on one lock.
const SHARDS: usize = 16;
/// Expired windows are swept from a shard at most this often.
const SWEEP_EVERY_MS: u64 = 1_000;

#[derive(Default)]
struct Shard {
    /// Key (which names its window) → (count, window end in Unix ms).
    counters: HashMap<String, (u64, u64)>,
    last_sweep_ms: u64,
}

/// Windowed counters in process memory.
pub struct LocalCounters {
    shards: Vec<Mutex<Shard>>,
    /// Most live counters per shard; past it, new keys share one overflow counter.
    max_per_shard: usize,
}

impl Default for LocalCounters {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            max_per_shard: usize::MAX,
        }
    }
}

impl LocalCounters {
    /// A store holding at most about `max_keys` counters. Once full, a key it does not
    /// hold yet counts on its shard's shared overflow counter for the window: memory stays
    /// bounded whatever keys clients can make up (addresses), and the overflow is limited
    /// as one client, so a flood spread over more keys than fit is still refused.
    pub fn bounded(max_keys: usize) -> Self {
        Self {
            max_per_shard: max_keys.div_ceil(SHARDS).max(1),
            ..Self::default()
        }
    }

    /// Counts one request against `key` in `window` and returns the new count.
    pub fn hit(&self, key: &str, window: &Window, now_ms: u64) -> Count {
        let mut hasher = DefaultHasher::new();
        key.hash(&mut hasher);
        let shard = &self.shards[(hasher.finish() as usize) % SHARDS];
        let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
        if now_ms.saturating_sub(shard.last_sweep_ms) >= SWEEP_EVERY_MS {
            // Keys name their window, so an entry past its end can never be hit again.
            shard.counters.retain(|_, (_, end)| *end > now_ms);
            shard.last_sweep_ms = now_ms;
        }
        let mut key = key;
        let overflow;
        if !shard.counters.contains_key(key) && shard.counters.len() >= self.max_per_shard {
            shard.counters.retain(|_, (_, end)| *end > now_ms);
            shard.last_sweep_ms = now_ms;
            if shard.counters.len() >= self.max_per_shard {
                metrics::counter!("ratelimit_memory_overflow_total").increment(1);
                overflow = format!("\0overflow:{}", window.end_ms);
                key = &overflow;
            }
        }
        let count = match shard.counters.get_mut(key) {
            Some((count, _)) => {
                *count += 1;
                *count
            }
            None => {
                shard.counters.insert(key.to_owned(), (1, window.end_ms));
                1
            }
        };
        Count {
            count,
            reset_ms: window.remaining_ms(now_ms),
        }
    }

    /// Number of live counters (tests check eviction).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).counters.len())
            .sum()
    }

    /// True when no counter is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn counts_and_evicts_per_window() {
        let store = LocalCounters::default();
        let w = Window::at(10_000, 2);
        assert_eq!(store.hit("k", &w, 10_000).count, 1);
        assert_eq!(store.hit("k", &w, 10_500).count, 2);
        assert_eq!(store.hit("k", &w, 10_500).reset_ms, 1_500);
        let next = Window::at(12_000, 2);
        // The next window has its own key; the old one is swept.
        assert_eq!(store.hit("k2", &next, 13_100).count, 1);
        assert!(store.len() <= 2);
        for i in 0..64 {
            store.hit(&format!("x{i}"), &next, 13_200);
        }
        let later = Window::at(20_000, 2);
        for i in 0..64 {
            store.hit(&format!("y{i}"), &later, 20_000);
        }
        assert_eq!(store.len(), 64, "every counter of past windows is evicted");
    }

    #[test]
    fn a_bounded_store_overflows_into_one_counter() {
        let store = LocalCounters::bounded(SHARDS * 4);
        let w = Window::at(0, 3600);
        let mut counts = Vec::new();
        for i in 0..10_000 {
            counts.push(
                store
                    .hit(&format!("rate:ip:10.0.{}.{}:h", i / 256, i % 256), &w, 1)
                    .count,
            );
        }
        // Never more than the bound plus one overflow counter per shard.
        assert!(store.len() <= SHARDS * 5, "{}", store.len());
        // Keys past the bound share counters: the flood is counted, not forgotten.
        assert!(
            counts.iter().any(|c| *c > 100),
            "overflow counts accumulate"
        );
        // A key already held keeps its own count.
        let held = "rate:ip:10.0.0.0:h";
        assert_eq!(store.hit(held, &w, 1).count, 2);
        // Next window: old counters are swept and new keys fit again.
        let next = Window::at(3_600_000, 3600);
        assert_eq!(store.hit("fresh", &next, 3_600_001).count, 1);
    }

    #[test]
    fn exact_under_concurrency() {
        let store = Arc::new(LocalCounters::default());
        let w = Window::at(0, 3600);
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let store = store.clone();
                std::thread::spawn(move || {
                    (0..1000)
                        .filter(|_| store.hit("k", &w, 1).count <= 4000)
                        .count()
                })
            })
            .collect();
        let admitted: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(admitted, 4000);
    }
}
