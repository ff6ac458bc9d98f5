//! Events out (SPEC 7): `profile:updated` and `profile:deleted`, published from the outbox
//! row each write commits with (see `crate::db::events`).
//!
//! * The writing instance publishes its row's event right after the commit and the cache
//!   invalidation, before answering, and retires the row with the applied ones: one
//!   publish per write in normal operation, however many instances run.
//! * A row whose event was not published (Redis down, breaker open, or an older event of
//!   the same user still pending at the commit) stays in the outbox. This instance's
//!   drainer publishes it on its next pass; the drainer of any other instance publishes
//!   an event row only once it is older than `events.handoff_secs` (its writer had its
//!   chance: it crashed, or its Redis failed). Drainers claim the rows they publish
//!   (PostgreSQL: `FOR UPDATE SKIP LOCKED`; SQLite: the write lock), publish them and delete
//!   them in that claim, so two drainers never publish one row at once.
//! * Per user, events go out in commit order: a write whose user still has an older event
//!   in the outbox leaves its own to the drainer, and the drainer publishes a user's rows
//!   oldest first, stopping at the first it may not or cannot publish.
//! * At least once: a crash between PUBLISH and the row's deletion publishes it again.
//!   With the embedded store (no Redis) nothing is published; rows retire as usual.
//!
//! Reference: `docs/events.md`.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;

use super::ProfileService;
use crate::db::{DbError, OutboxEvent, PendingInvalidation};
use crate::domain::UserId;
use crate::redis::RedisClient;

/// Hand-off time when none is configured.
const DEFAULT_HANDOFF: Duration = Duration::from_secs(10);

/// Where events out go, and which outbox rows this instance's writers left to its drainer.
#[derive(Clone)]
pub struct EventsOut {
    redis: Option<RedisClient>,
    handoff: Duration,
    handed_off: Arc<Mutex<HashSet<i64>>>,
}

impl Default for EventsOut {
    fn default() -> Self {
        Self::new(None, DEFAULT_HANDOFF)
    }
}

impl EventsOut {
    /// Events published on `redis` (none without it); an event row of another instance is
    /// taken over after `handoff`.
    pub fn new(redis: Option<RedisClient>, handoff: Duration) -> Self {
        Self {
            redis,
            handoff,
            handed_off: Arc::new(Mutex::new(HashSet::new())),
        }
    }

    /// Publishes `event`; true when Redis took it (or there is no Redis to publish to).
    pub(super) async fn publish(&self, event: &OutboxEvent, by: &'static str) -> bool {
        let Some(redis) = &self.redis else {
            return true;
        };
        match redis.publish(&event.channel, &event.payload).await {
            Ok(_) => {
                metrics::counter!("events_out_published_total", "channel" => event.channel.clone(), "by" => by)
                    .increment(1);
                true
            }
            Err(e) => {
                metrics::counter!("events_out_publish_errors_total").increment(1);
                tracing::debug!(error = %e, channel = %event.channel, "event not published; kept in the outbox");
                false
            }
        }
    }

    /// Notes an event row this instance's writer left to the drainer.
    pub(super) fn hand_off(&self, outbox_id: i64) {
        self.lock().insert(outbox_id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<i64>> {
        self.handed_off.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets handed-off rows that a complete drain pass no longer found (another
    /// instance published them), except those written after the pass looked.
    pub(super) fn prune(&self, seen: &HashSet<i64>, newest_seen: i64) {
        self.lock()
            .retain(|id| seen.contains(id) || *id > newest_seen);
    }
}

impl ProfileService {
    /// Publishes, in id order, the events among `rows` (pending rows with events, not
    /// owned by a writer of this instance) that this drainer may publish: its own
    /// handed-off rows, and any row older than the hand-off time. A user whose row is
    /// skipped (or held by another drainer) is added to `blocked` and none of its later
    /// rows go out this pass. Returns false when a publish failed (the pass publishes no
    /// more).
    pub(super) async fn publish_left_behind(
        &self,
        rows: &[&PendingInvalidation],
        blocked: &mut HashSet<UserId>,
    ) -> Result<bool, DbError> {
        let cutoff = Utc::now()
            - chrono::Duration::from_std(self.events.handoff).unwrap_or(chrono::Duration::MAX);
        let candidates: Vec<&PendingInvalidation> = {
            let handed_off = self.events.lock();
            let mut out = Vec::new();
            for row in rows {
                if blocked.contains(&row.user_id) {
                    continue;
                }
                if handed_off.contains(&row.id) || row.created_at <= cutoff {
                    out.push(*row);
                } else {
                    blocked.insert(row.user_id);
                }
            }
            out
        };
        if candidates.is_empty() {
            return Ok(true);
        }
        let ids: Vec<i64> = candidates.iter().map(|r| r.id).collect();
        let claim = self.repo.claim_events(&ids).await?;
        let held: HashSet<i64> = claim.ids().iter().copied().collect();
        let mut published = Vec::new();
        let mut ok = true;
        for row in candidates {
            if blocked.contains(&row.user_id) {
                continue;
            }
            if !held.contains(&row.id) {
                blocked.insert(row.user_id);
                continue;
            }
            let Some(event) = row.outbox_event() else {
                continue;
            };
            if !self.events.publish(&event, "drainer").await {
                ok = false;
                break;
            }
            published.push(row.id);
        }
        if let Err(e) = claim.finish(&published).await {
            // Published but still in the outbox: published again later (at least once).
            tracing::warn!(error = %e, "published events could not be retired; they will be published again");
            return Err(e);
        }
        let mut handed_off = self.events.lock();
        for id in &published {
            handed_off.remove(id);
        }
        Ok(ok)
    }
}
