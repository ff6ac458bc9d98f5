//! A small circuit breaker: closed → open after N consecutive transport failures →
//! half-open after a cooldown (one probe) → closed on the probe's success.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The breaker's state.
#[derive(Debug, Clone, Copy)]
enum State {
    /// Calls go through; `failures` consecutive transport failures so far.
    Closed { failures: u32 },
    /// Calls fail at once until `until`.
    Open { until: Instant },
    /// One probe is in flight since `since`; others fail at once.
    HalfOpen { since: Instant },
}

/// Whether a call may go to Redis, and whether it is the half-open probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Normal call (breaker closed).
    Call,
    /// The single probe after the cooldown.
    Probe,
}

/// Consecutive-failure circuit breaker, shared by every call of one client.
#[derive(Debug)]
pub(crate) struct Breaker {
    state: Mutex<State>,
    threshold: u32,
    cooldown: Duration,
    /// A probe older than this is presumed lost (its caller was cancelled) and replaced.
    probe_deadline: Duration,
}

impl Breaker {
    /// A closed breaker.
    pub(crate) fn new(threshold: u32, cooldown: Duration, call_timeout: Duration) -> Self {
        Self {
            state: Mutex::new(State::Closed { failures: 0 }),
            threshold: threshold.max(1),
            cooldown,
            probe_deadline: call_timeout * 2 + Duration::from_millis(100),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the state half-written (it is Copy).
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// True unless the breaker is open (or half-open with its probe in flight).
    pub(crate) fn is_available(&self) -> bool {
        let now = Instant::now();
        match *self.lock() {
            State::Closed { .. } => true,
            State::Open { until } => now >= until,
            State::HalfOpen { since } => now.duration_since(since) >= self.probe_deadline,
        }
    }

    /// True while the breaker is not closed (for `/ready`).
    pub(crate) fn is_open(&self) -> bool {
        !matches!(*self.lock(), State::Closed { .. })
    }

    /// Decides whether a call may go out now.
    pub(crate) fn admit(&self) -> Option<Admit> {
        let now = Instant::now();
        let mut st = self.lock();
        match *st {
            State::Closed { .. } => Some(Admit::Call),
            State::Open { until } if now >= until => {
                *st = State::HalfOpen { since: now };
                Some(Admit::Probe)
            }
            State::HalfOpen { since } if now.duration_since(since) >= self.probe_deadline => {
                *st = State::HalfOpen { since: now };
                Some(Admit::Probe)
            }
            State::Open { .. } | State::HalfOpen { .. } => None,
        }
    }

    /// Redis answered (even with a logical error): the breaker closes.
    pub(crate) fn on_success(&self) {
        let mut st = self.lock();
        match *st {
            State::Closed { failures: 0 } => {}
            State::Closed { .. } => *st = State::Closed { failures: 0 },
            State::Open { .. } | State::HalfOpen { .. } => {
                *st = State::Closed { failures: 0 };
                drop(st);
                metrics::gauge!("redis_breaker_open").set(0.0);
                tracing::info!("redis circuit breaker closed: redis answers again");
            }
        }
    }

    /// A timeout or I/O failure: counts towards opening, or re-opens after a failed probe.
    pub(crate) fn on_failure(&self) {
        let now = Instant::now();
        let mut st = self.lock();
        let opened = match *st {
            State::Closed { failures } => {
                let failures = failures + 1;
                if failures >= self.threshold {
                    *st = State::Open {
                        until: now + self.cooldown,
                    };
                    true
                } else {
                    *st = State::Closed { failures };
                    false
                }
            }
            // A failed probe re-opens quietly: the open was already logged.
            State::HalfOpen { .. } => {
                *st = State::Open {
                    until: now + self.cooldown,
                };
                false
            }
            State::Open { .. } => false,
        };
        drop(st);
        if opened {
            metrics::gauge!("redis_breaker_open").set(1.0);
            tracing::warn!(
                cooldown_ms = self.cooldown.as_millis() as u64,
                "redis circuit breaker opened after {} consecutive failures; bypassing redis",
                self.threshold
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_probes_and_closes() {
        let b = Breaker::new(2, Duration::from_millis(30), Duration::from_millis(10));
        assert_eq!(b.admit(), Some(Admit::Call));
        b.on_failure();
        assert!(b.is_available());
        b.on_failure();
        assert!(!b.is_available());
        assert_eq!(b.admit(), None);
        std::thread::sleep(Duration::from_millis(35));
        assert_eq!(b.admit(), Some(Admit::Probe));
        assert_eq!(b.admit(), None, "only one probe at a time");
        b.on_failure();
        assert_eq!(b.admit(), None, "a failed probe re-opens");
        std::thread::sleep(Duration::from_millis(35));
        assert_eq!(b.admit(), Some(Admit::Probe));
        b.on_success();
        assert!(!b.is_open());
        assert_eq!(b.admit(), Some(Admit::Call));
    }

    #[test]
    fn success_resets_the_count() {
        let b = Breaker::new(2, Duration::from_secs(10), Duration::from_millis(10));
        b.on_failure();
        b.on_success();
        b.on_failure();
        assert!(b.is_available());
    }
}
