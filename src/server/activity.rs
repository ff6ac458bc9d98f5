//! What a connection is doing (reading a head, busy with a request, idle), shared by its
//! socket wrapper and watchdog (`watchdog.rs`) and its requests' bodies (`drain.rs`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use tokio::sync::Notify;

/// Where a connection is in its life, for the watchdog.
pub(super) const HEAD: u8 = 0;
pub(super) const BUSY: u8 = 1;
pub(super) const IDLE: u8 = 2;

/// Shared between a connection's socket wrapper, its requests and its watchdog.
pub(super) struct Activity {
    pub(super) epoch: Instant,
    /// `HEAD`: reading a request head; `BUSY`: a request in flight; `IDLE`: between requests.
    pub(super) phase: AtomicU8,
    /// When the current phase began, in ms since `epoch`.
    pub(super) since_ms: AtomicU64,
    /// Requests (and drains) still in flight.
    pub(super) in_flight: AtomicUsize,
    pub(super) changed: Notify,
}

impl Activity {
    pub(super) fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn enter(&self, phase: u8) {
        self.since_ms.store(self.now_ms(), Ordering::Release);
        self.phase.store(phase, Ordering::Release);
        self.changed.notify_one();
    }

    /// Bytes arrived: an idle connection starts reading a head.
    pub(super) fn on_bytes(&self) {
        if self.phase.load(Ordering::Acquire) == IDLE {
            self.enter(HEAD);
        }
    }

    /// A request head is complete: busy until the returned guard (and its clones) drop.
    pub(super) fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.enter(BUSY);
        Busy(Arc::new(BusyInner(self.clone())))
    }
}

/// Keeps a connection busy (no idle or head timeout) while alive.
#[derive(Clone)]
pub(super) struct Busy(#[allow(dead_code)] Arc<BusyInner>);

struct BusyInner(Arc<Activity>);

impl Drop for BusyInner {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.enter(IDLE);
        }
    }
}
