//! The invalidation outbox: writes record a row in their own transaction; a row whose
//! invalidation could not be applied on the write's path is applied here, and a pass that
//! empties the outbox lets this instance read the cache again.

use super::{ProfileService, dedupe};
use crate::db::{DbError, InvalidationScope};
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
    /// Applies pending outbox invalidations (widened to every entry of each user) and
    /// removes their rows. A pass that empties the outbox clears the dirty state recorded
    /// before it started. Returns how many rows were applied.
    pub async fn drain_outbox(&self) -> Result<usize, DrainError> {
        let generation = self.cache.drain_generation();
        let _permit = self.background_permit().await;
        self.retire_applied().await?;
        let mut applied = 0;
        for _ in 0..DRAIN_ROUNDS {
            let all = self.repo.pending_invalidations(DRAIN_BATCH).await?;
            let fetched = all.len();
            let rows: Vec<_> = {
                let owned = self.owned.lock().unwrap_or_else(|p| p.into_inner());
                all.into_iter().filter(|r| !owned.contains(&r.id)).collect()
            };
            if !rows.is_empty() {
                let users: Vec<UserId> =
                    dedupe(&rows.iter().map(|r| r.user_id).collect::<Vec<_>>());
                self.cache
                    .invalidate_many(&users, InvalidationScope::All)
                    .await?;
                let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
                self.repo.clear_invalidations(&ids).await?;
                applied += rows.len();
            }
            if fetched < DRAIN_BATCH as usize {
                self.cache.mark_clean(generation);
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
