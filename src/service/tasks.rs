//! Background work: the hit/miss flusher, the outbox drainer (which also pings the store
//! so `/ready` and the breaker follow Redis while idle, and publishes the events left
//! behind), the event subscriber, the eviction-policy check and the start-up prewarm. All
//! stop when the shutdown token is cancelled.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::ProfileService;
use crate::cache::EvictionCheck;
use crate::redis::RedisClient;

/// Longest wait of the start-up prewarm for a usable cache store.
const PREWARM_WAIT: Duration = Duration::from_secs(10);

/// A background task and its name (for the shutdown's report of what did not finish).
pub type Named = (&'static str, JoinHandle<()>);

/// Starts the background tasks (the event subscriber when there is a Redis), and the
/// start-up prewarm once when `prewarm.enabled`.
pub fn spawn_background(
    service: &ProfileService,
    redis: Option<&RedisClient>,
    shutdown: &CancellationToken,
) -> Vec<Named> {
    let mut tasks = Vec::new();
    let cache = service.cache();

    match redis {
        Some(redis) => {
            let (svc, redis, stop) = (service.clone(), redis.clone(), shutdown.clone());
            tasks.push((
                "event subscriber",
                tokio::spawn(super::events_in::run_subscriber(svc, redis, stop)),
            ));
        }
        None => tracing::info!(
            "no Redis: no events (user:* are not received, profile:* are not published)"
        ),
    }

    let (c, stop) = (cache.clone(), shutdown.clone());
    tasks.push((
        "cache metrics flusher",
        tokio::spawn(async move {
            every(c.settings().metrics_flush, &stop, || async {
            if let Err(e) = c.flush_metrics().await {
                tracing::debug!(error = %e, "cache metrics flush failed; kept for the next one");
            }
        })
        .await;
            // Last counts of this instance, best effort.
            let _ = c.flush_metrics().await;
        }),
    ));

    let (svc, stop) = (service.clone(), shutdown.clone());
    tasks.push(("outbox drainer", tokio::spawn(async move {
        let c = svc.cache().clone();
        let failing = std::sync::atomic::AtomicBool::new(false);
        every(c.settings().outbox_poll, &stop, || async {
            match svc.drain_outbox().await {
                Ok(n) => {
                    if n > 0 {
                        tracing::info!(applied = n, "applied pending cache invalidations");
                    }
                    if failing.swap(false, Ordering::Relaxed) {
                        tracing::info!("cache invalidation outbox drained");
                    }
                }
                // Logged once per outage, not every second.
                Err(e) => {
                    if !failing.swap(true, Ordering::Relaxed) {
                        tracing::warn!(error = %e, "cannot drain the cache invalidation outbox; reading the database only");
                    }
                }
            }
            let _ = c.store().ping().await;
        })
        .await;
    })));

    let (c, stop) = (cache.clone(), shutdown.clone());
    tasks.push((
        "eviction-policy check",
        tokio::spawn(async move {
            // The connection is made lazily; give it a moment before asking.
            let deadline = tokio::time::Instant::now() + PREWARM_WAIT;
            while !c.store().is_connected() && tokio::time::Instant::now() < deadline {
                if stop.is_cancelled() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            warn_about_eviction(&c.check_eviction_policy().await);
        }),
    ));

    if cache.settings().prewarm.enabled {
        let (svc, stop) = (service.clone(), shutdown.clone());
        tasks.push((
            "prewarm",
            tokio::spawn(async move {
                let c = svc.cache().clone();
                // Give the lazy connection and the first drain pass a moment, so the
                // prewarm does not fail on a connection still being made.
                let deadline = tokio::time::Instant::now() + PREWARM_WAIT;
                while !(c.store().is_connected() && c.may_read())
                    && tokio::time::Instant::now() < deadline
                    && !stop.is_cancelled()
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                tokio::select! {
                    _ = stop.cancelled() => {}
                    r = svc.prewarm() => if let Err(e) = r {
                        tracing::warn!(error = %e, "cache prewarm failed");
                    },
                }
            }),
        ));
    }
    tasks
}

/// Runs `tick` every `period` until `stop` is cancelled (a tick in progress finishes).
async fn every<F, Fut>(period: Duration, stop: &CancellationToken, mut tick: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = interval.tick() => tick().await,
        }
    }
}

/// Logs loudly when Redis may evict the cache's companion keys.
pub fn warn_about_eviction(check: &EvictionCheck) {
    if let EvictionCheck::Unsafe(policy) = check {
        tracing::error!(
            maxmemory_policy = %policy,
            "Redis may evict keys by itself: a lost write state lets a read from before a write fill the cache for up to 10 s; set maxmemory-policy noeviction"
        );
    }
}
