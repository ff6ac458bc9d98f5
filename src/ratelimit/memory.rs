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
}

impl Default for LocalCounters {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
        }
    }
}

impl LocalCounters {
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
