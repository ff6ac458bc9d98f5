//! The accept loop: a connection slot (the connection cap) before each accept, the
//! per-address cap, one task per connection, and a backing-off answer to failed accepts.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper_util::rt::TokioTimer;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::per_address::{Exempt, PerAddress, refuse};
use super::watchdog::serve_connection;
use super::{ConnLimits, MAX_HEAD_BYTES, shutdown};
use crate::ratelimit::address::limited_unit;

/// Failed accepts (out of descriptors, and friends): each backs off before the next try,
/// and they are logged at most once per [`AcceptFailures::LOG_EVERY`], with a count,
/// instead of once per failure (which was 20 lines a second under `ulimit -n 64`).
#[derive(Debug, Default)]
pub struct AcceptFailures {
    /// Failures not yet logged.
    unlogged: u64,
    last_log: Option<Instant>,
    delay: Duration,
}

impl AcceptFailures {
    /// The first pause after a failure; each further failure in a row doubles it.
    pub const FIRST_DELAY: Duration = Duration::from_millis(10);
    /// The longest pause.
    pub const MAX_DELAY: Duration = Duration::from_secs(1);
    /// At most one log line per this long.
    pub const LOG_EVERY: Duration = Duration::from_secs(10);

    /// Notes a failure at `now`: how long to pause, and the count to log now, if any.
    pub fn failed(&mut self, now: Instant) -> (Duration, Option<u64>) {
        self.unlogged += 1;
        self.delay = (self.delay * 2).clamp(Self::FIRST_DELAY, Self::MAX_DELAY);
        (self.delay, self.take_due(now))
    }

    /// Notes an accept that worked at `now`: the pause starts over, and failures not yet
    /// logged are, once their interval is over (the count to log, if any).
    pub fn succeeded(&mut self, now: Instant) -> Option<u64> {
        self.delay = Duration::ZERO;
        if self.unlogged == 0 {
            return None;
        }
        self.take_due(now)
    }

    fn take_due(&mut self, now: Instant) -> Option<u64> {
        let due = self
            .last_log
            .is_none_or(|at| now.duration_since(at) >= Self::LOG_EVERY);
        if !due {
            return None;
        }
        self.last_log = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }
}

/// Serves `router` on `listener` until `shutdown` is cancelled and every connection has
/// finished its in-flight request, or until `abort` is cancelled, which closes every
/// connection at once (requests in flight are dropped).
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    limits: ConnLimits,
    exempt: Exempt,
    shutdown: CancellationToken,
    abort: CancellationToken,
) -> io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut accept_failures = AcceptFailures::default();
    let per_address = PerAddress::new(limits.max_per_address);
    let tracker = TaskTracker::new();
    let epoch = Instant::now();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // Our own watchdog below times heads and idle connections (hyper's timer starts at
        // the end of the previous response, so it cannot tell an idle connection from a
        // slow head); hyper's stays off.
        .header_read_timeout(None)
        // The head limit is ours (`HeadScan`, which answers 431 in JSON); hyper's, exact
        // too, covers a head it parses from bytes read with the previous request. Its read
        // buffer cap alone overshoots (a read may land past it before the check), which
        // once let an 80 KiB header through.
        .max_header_size(MAX_HEAD_BYTES)
        .max_buf_size(MAX_HEAD_BYTES)
        .keep_alive(true);
    let builder = Arc::new(builder);
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => {
                    if let Some(failed) = accept_failures.succeeded(Instant::now()) {
                        tracing::warn!(failed, "accepting again after failed accepts");
                    }
                    a
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning, and say so once
                    // per interval, with a count, not once per try.
                    metrics::counter!("http_accept_errors_total").increment(1);
                    let (pause, log) = accept_failures.failed(Instant::now());
                    if let Some(failed) = log {
                        tracing::warn!(
                            error = %e,
                            failed,
                            pausing_ms = pause.as_millis() as u64,
                            "accept failed {failed} time(s) since the last report \
                             (at most one report per {}s); backing off",
                            AcceptFailures::LOG_EVERY.as_secs()
                        );
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(pause) => continue,
                    }
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let slot = if limits.max_per_address == 0 || exempt.covers(peer.ip()) {
            None
        } else {
            match per_address.take(limited_unit(peer.ip())) {
                Some(slot) => Some(slot),
                None => {
                    metrics::counter!("http_connections_refused_total", "reason" => "per_address")
                        .increment(1);
                    tracing::debug!("connection refused: its address holds its cap already");
                    let linger = limits.header_read_timeout.min(Duration::from_secs(1));
                    tracker.spawn(async move {
                        refuse(stream, linger).await;
                        drop(permit);
                    });
                    continue;
                }
            }
        };
        let router = router.clone();
        let builder = builder.clone();
        let (shutdown, abort) = (shutdown.clone(), abort.clone());
        tracker.spawn(async move {
            metrics::gauge!("http_connections_open").increment(1.0);
            tokio::select! {
                _ = serve_connection(stream, peer, router, &builder, limits, epoch, shutdown) => {}
                // Dropping the connection drops its request, and what the request held
                // (a pooled database connection goes back to its pool).
                _ = abort.cancelled() => {}
            }
            metrics::gauge!("http_connections_open").decrement(1.0);
            drop(slot);
            drop(permit);
        });
    }
    drop(listener);
    shutdown::wait_for_connections(tracker, &abort).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_failures_back_off_and_are_logged_once_per_interval_with_a_count() {
        let start = Instant::now();
        let mut f = AcceptFailures::default();
        let mut now = start;
        let mut logged = Vec::new();
        let mut pauses = Vec::new();
        // Twenty seconds of failing accepts, each retried after its pause.
        while now.duration_since(start) < Duration::from_secs(20) {
            let (pause, log) = f.failed(now);
            logged.extend(log);
            pauses.push(pause);
            now += pause;
        }
        let failures = pauses.len() as u64;
        assert_eq!(pauses[0], AcceptFailures::FIRST_DELAY);
        assert!(pauses.windows(2).all(|w| w[1] >= w[0]), "{pauses:?}");
        assert_eq!(*pauses.last().unwrap(), AcceptFailures::MAX_DELAY);
        // One line at the first failure, then one per ten seconds: three, not hundreds.
        assert!(logged.len() <= 3, "{logged:?}");
        // An accept that works starts the pause over, and reports what was not yet logged.
        now += AcceptFailures::LOG_EVERY;
        let rest = f.succeeded(now).expect("the unlogged failures");
        assert_eq!(logged.iter().sum::<u64>() + rest, failures);
        assert_eq!(f.failed(now).0, AcceptFailures::FIRST_DELAY);
    }
}
