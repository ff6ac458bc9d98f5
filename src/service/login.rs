//! `last_login` recording, off the request path: batched and bounded, so a burst of first
//! requests from many users (a new instance, a Monday morning) never takes the database
//! connections that reads need.
//!
//! A request only offers `(user, iat)` to a bounded queue (a map lookup and a channel
//! send). One task writes the queue in batches: one statement per batch (every
//! `logins.flush_ms`, or as soon as `logins.batch_size` users wait), inside the background
//! share of the pool, and the batch's invalidations go out in one pipeline. When the queue
//! is full the record is dropped and counted (`login_records_dropped_total`); the user's
//! next request offers it again.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::ProfileService;
use crate::config::LoginsConfig;
use crate::domain::UserId;

/// Users seen within the last hour on this instance (they skip the queue entirely).
const RECENT_CAPACITY: u64 = 100_000;

/// Records `last_login` from token `iat`s, at most once an hour per user and instance.
#[derive(Clone)]
pub struct LoginRecorder {
    queue: mpsc::Sender<(UserId, DateTime<Utc>)>,
    recent: moka::sync::Cache<UserId, ()>,
}

impl LoginRecorder {
    /// A recorder writing through `service`, and its writer task (which flushes what is
    /// queued and ends once `shutdown` is cancelled).
    pub fn start(
        service: ProfileService,
        config: &LoginsConfig,
        shutdown: CancellationToken,
    ) -> (Self, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(config.queue_capacity);
        let recent = moka::sync::Cache::builder()
            .max_capacity(RECENT_CAPACITY)
            .time_to_live(Duration::from_secs(3600))
            .build();
        let writer = Writer {
            service,
            recent: recent.clone(),
            batch_size: config.batch_size,
            flush_every: Duration::from_millis(config.flush_ms),
        };
        let task = tokio::spawn(writer.run(rx, shutdown));
        (Self { queue: tx, recent }, task)
    }

    /// Notes a token issued at `iat` for `user`; never waits.
    pub fn observe(&self, user: UserId, iat: DateTime<Utc>) {
        if self.recent.contains_key(&user) {
            return;
        }
        match self.queue.try_send((user, iat)) {
            Ok(()) => self.recent.insert(user, ()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                metrics::counter!("login_records_dropped_total").increment(1);
            }
            // The writer has stopped (shutdown): nothing more is recorded.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

struct Writer {
    service: ProfileService,
    recent: moka::sync::Cache<UserId, ()>,
    batch_size: usize,
    flush_every: Duration,
}

impl Writer {
    async fn run(self, mut rx: mpsc::Receiver<(UserId, DateTime<Utc>)>, stop: CancellationToken) {
        let mut batch: HashMap<UserId, DateTime<Utc>> = HashMap::new();
        loop {
            // Wait for the first record of a batch, then fill it until it is full or old.
            let first = tokio::select! {
                r = rx.recv() => r,
                _ = stop.cancelled() => None,
            };
            let Some((user, at)) = first else { break };
            batch.insert(user, at);
            let deadline = tokio::time::Instant::now() + self.flush_every;
            while batch.len() < self.batch_size {
                tokio::select! {
                    r = rx.recv() => match r {
                        Some((user, at)) => {
                            let e = batch.entry(user).or_insert(at);
                            *e = (*e).max(at);
                        }
                        None => break,
                    },
                    _ = tokio::time::sleep_until(deadline) => break,
                    _ = stop.cancelled() => break,
                }
            }
            self.flush(&mut batch).await;
            if stop.is_cancelled() {
                break;
            }
        }
        // Shutting down: write what was offered before the stop, then end.
        rx.close();
        while let Ok((user, at)) = rx.try_recv() {
            batch.insert(user, at);
            if batch.len() >= self.batch_size {
                self.flush(&mut batch).await;
            }
        }
        self.flush(&mut batch).await;
    }

    async fn flush(&self, batch: &mut HashMap<UserId, DateTime<Utc>>) {
        if batch.is_empty() {
            return;
        }
        let logins: Vec<(UserId, DateTime<Utc>)> = batch.drain().collect();
        match self.service.record_logins(&logins).await {
            Ok(changed) => {
                metrics::counter!("login_records_written_total").increment(changed as u64);
            }
            Err(e) => {
                // Not remembered as recorded: each user's next request offers it again.
                for (user, _) in &logins {
                    self.recent.invalidate(user);
                }
                metrics::counter!("login_records_dropped_total").increment(logins.len() as u64);
                tracing::warn!(error = %e, users = logins.len(), "could not record last_login");
            }
        }
    }
}
