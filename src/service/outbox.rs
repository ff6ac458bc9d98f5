//! The invalidation outbox: writes record a row in their own transaction; a row whose
//! invalidation could not be applied on the write's path is applied here, and a pass that
//! has applied every pending invalidation lets this instance read the cache again. Rows
//! that carry an event stay until it is published (see `events_out`).

use std::collections::HashSet;

use super::{ProfileService, dedupe};
use crate::db::{DbError, InvalidationScope, PendingInvalidation};
use crate::domain::UserId;
use crate::store::StoreError;

/// Outbox rows applied per drain round, and rounds per pass.
const DRAIN_BATCH: u32 = 200;
const DRAIN_ROUNDS: usize = 20;
/// Applied rows deleted per statement.
const RETIRE_CHUNK: usize = 1000;

/// Why a drain pass stopped early.
#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    /// The outbox could not be read or cleared.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The invalidations could not be applied.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ProfileService {
    /// Applies pending outbox invalidations (widened to every entry of each user), publishes
    /// the events left behind that this instance may publish, and removes the rows done. A
    /// pass that reaches the end of the outbox clears the dirty state recorded before it
    /// started. Returns how many rows were applied.
    pub async fn drain_outbox(&self) -> Result<usize, DrainError> {
        let generation = self.cache.drain_generation();
        let _permit = self.background_permit().await;
        self.retire_applied().await?;
        let mut applied = 0;
        let mut after = 0;
        let mut seen = HashSet::new();
        // Users whose next event may not go out in this pass (an older one is not out).
        let mut blocked = HashSet::new();
        let mut publishing = true;
        for _ in 0..DRAIN_ROUNDS {
            let all = self.repo.pending_after(after, DRAIN_BATCH).await?;
            let fetched = all.len();
            after = all.last().map_or(after, |r| r.id);
            seen.extend(all.iter().map(|r| r.id));
            let (mine_in_flight, rows): (Vec<_>, Vec<_>) = {
                let owned = self.owned.lock().unwrap_or_else(|p| p.into_inner());
                all.into_iter().partition(|r| owned.contains(&r.id))
            };
            // A writer of this instance is publishing these now.
            blocked.extend(
                mine_in_flight
                    .iter()
                    .filter(|r| r.event.is_some())
                    .map(|r| r.user_id),
            );
            if !rows.is_empty() {
                let users: Vec<UserId> =
                    dedupe(&rows.iter().map(|r| r.user_id).collect::<Vec<_>>());
                self.cache
                    .invalidate_many(&users, InvalidationScope::All)
                    .await?;
                // A row with an event stays until the event is out.
                let plain: Vec<i64> = rows
                    .iter()
                    .filter(|r| r.event.is_none())
                    .map(|r| r.id)
                    .collect();
                self.repo.clear_invalidations(&plain).await?;
                applied += rows.len();
                let with_events: Vec<&PendingInvalidation> =
                    rows.iter().filter(|r| r.event.is_some()).collect();
                if publishing {
                    publishing = self.publish_left_behind(&with_events, &mut blocked).await?;
                }
            }
            if fetched < DRAIN_BATCH as usize {
                self.cache.mark_clean(generation);
                self.events.prune(&seen, after);
                return Ok(applied);
            }
        }
        Ok(applied)
    }
}

impl ProfileService {
    /// Notes an outbox row whose invalidation was applied on the write's path; the next
    /// drain pass deletes such rows in one statement, off every request's path.
    pub(super) fn applied(&self, outbox_ids: &[i64]) {
        let mut list = self.retired.lock().unwrap_or_else(|p| p.into_inner());
        list.extend_from_slice(outbox_ids);
    }

    /// Notes rows this instance's writers are applying now: the drainer skips them.
    pub(super) fn own(&self, outbox_ids: &[i64]) {
        let mut owned = self.owned.lock().unwrap_or_else(|p| p.into_inner());
        owned.extend(outbox_ids.iter().copied());
    }

    /// Hands rows whose invalidation failed to the drainer.
    pub(super) fn disown(&self, outbox_ids: &[i64]) {
        let mut owned = self.owned.lock().unwrap_or_else(|p| p.into_inner());
        for id in outbox_ids {
            owned.remove(id);
        }
    }

    /// Deletes the rows noted by [`Self::applied`] (kept for the next pass on failure).
    async fn retire_applied(&self) -> Result<(), DbError> {
        let ids = std::mem::take(&mut *self.retired.lock().unwrap_or_else(|p| p.into_inner()));
        if ids.is_empty() {
            return Ok(());
        }
        for chunk in ids.chunks(RETIRE_CHUNK) {
            if let Err(e) = self.repo.clear_invalidations(chunk).await {
                self.applied(chunk);
                return Err(e);
            }
            self.disown(chunk);
        }
        Ok(())
    }
}
