//! In-process single flight: concurrent misses on one entry share one database read.
//!
//! A flight is keyed by the entry key AND the write state the reader saw beside it (the
//! companion that every write replaces), never by what the entry key held. A reader may
//! only join a flight whose leader saw the same state, i.e. no write was acknowledged
//! between the two looks. A reader that started after a write was acknowledged sees that
//! write's state (or a newer one), so it can never join a flight that read the old row,
//! whoever deleted the entry in the meantime (a writer, an operator, an eviction).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};

/// Flights older than this are not joined (states live 30 s; fills are skipped after 10 s).
const MAX_JOIN_AGE: Duration = Duration::from_secs(5);
/// A finished flight still answers readers that saw the same value for this long: a reader
/// whose GET came before the leader's fill but who asks after the read finished would
/// otherwise start a second database read.
const DONE_GRACE: Duration = Duration::from_millis(500);

type Outcome<V> = Shared<BoxFuture<'static, Option<V>>>;

struct Flight<V: Clone> {
    id: u64,
    started: Instant,
    done: Option<Instant>,
    fut: Outcome<V>,
}

impl<V: Clone> Flight<V> {
    fn joinable(&self) -> bool {
        self.started.elapsed() < MAX_JOIN_AGE && self.done.is_none_or(|d| d.elapsed() < DONE_GRACE)
    }
}

/// Flights in progress, by key.
pub(crate) struct Flights<V: Clone> {
    map: Arc<Mutex<HashMap<String, Flight<V>>>>,
    next_id: AtomicU64,
}

impl<V: Clone + Send + Sync + 'static> Flights<V> {
    /// No flights.
    pub(crate) fn new() -> Self {
        Self {
            map: Arc::new(Mutex::new(HashMap::new())),
            next_id: AtomicU64::new(1),
        }
    }

    /// Runs `work` for `key` unless a young flight for the same key is in the air, in which
    /// case its outcome is shared. `None`: the flight failed; the caller reads on its own.
    ///
    /// The work runs as a task of its own, never inside a waiter. The map keeps every
    /// flight's shared outcome (for `DONE_GRACE`); were the work driven by its waiters, a
    /// flight whose waiters were all cancelled (a client that hung up, a request timeout)
    /// would stay in the map unpolled, holding its pooled database connection, with the
    /// reply unread, for ever: capacity lost while serving, and a shutdown that waits for
    /// that connection never ends (issue 17). As a task it runs to its end (every database
    /// call is bounded), whoever still waits.
    pub(crate) async fn run(
        &self,
        key: String,
        work: impl FnOnce() -> BoxFuture<'static, Option<V>>,
    ) -> Option<V> {
        let fut = {
            let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            match map.get(&key) {
                Some(f) if f.joinable() => {
                    metrics::counter!("cache_single_flight_joins_total").increment(1);
                    f.fut.clone()
                }
                _ => {
                    let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                    let task = tokio::spawn(work());
                    // A panicked flight is a failed one: its waiters read on their own.
                    let inner = async move { task.await.ok().flatten() };
                    let registry = Arc::downgrade(&self.map);
                    let done_key = key.clone();
                    let fut = async move {
                        let out = inner.await;
                        // Start the grace period; later readers that saw a newer value
                        // have a different key and never join.
                        if let Some(map) = registry.upgrade() {
                            let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
                            if let Some(f) = map.get_mut(&done_key).filter(|f| f.id == id) {
                                f.done = Some(Instant::now());
                            }
                        }
                        out
                    }
                    .boxed()
                    .shared();
                    if map.len() > 256 {
                        // Finished (or abandoned) flights are dropped in bulk, now and then.
                        map.retain(|_, f| f.joinable());
                    }
                    map.insert(
                        key,
                        Flight {
                            id,
                            started: Instant::now(),
                            done: None,
                            fut: fut.clone(),
                        },
                    );
                    fut
                }
            }
        };
        fut.await
    }
}
