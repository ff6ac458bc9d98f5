//! The invalidation outbox: writes record a row in their own transaction; a row whose
//! invalidation could not be applied on the write's path is applied here, and a pass that
//! empties the outbox lets this instance read the cache again.

use super::{ProfileService, dedupe};
use crate::db::DbError;
use crate::domain::UserId;
use crate::redis::StoreError;

/// Outbox rows applied per drain round, and rounds per pass.
const DRAIN_BATCH: u32 = 200;
const DRAIN_ROUNDS: usize = 20;

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
        let mut applied = 0;
        for _ in 0..DRAIN_ROUNDS {
            let rows = self.repo.pending_invalidations(DRAIN_BATCH).await?;
            if !rows.is_empty() {
                let users: Vec<UserId> =
                    dedupe(&rows.iter().map(|r| r.user_id).collect::<Vec<_>>());
                self.cache.invalidate_users(&users).await?;
                let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
                self.repo.clear_invalidations(&ids).await?;
                applied += rows.len();
            }
            if rows.len() < DRAIN_BATCH as usize {
                self.cache.mark_clean(generation);
                return Ok(applied);
            }
        }
        Ok(applied)
    }
}
