//! Prewarm: load the profiles of recently active users into the cache, in pipelined
//! batches of guarded fills that only fill absent keys (an entry or a writer's marker
//! already there wins).

use std::time::Instant;

use super::{Cache, Fill, Kind, MAX_FILL_DELAY, entry_ttl, now_millis};
use crate::db::DbError;
use crate::domain::Profile;
use crate::service::count_query;

use super::Cached;

impl Cache {
    /// Loads up to `prewarm.max` profiles whose last login is within `prewarm.recent_days`
    /// (most recent first); returns how many entries were actually stored.
    pub async fn prewarm(&self) -> Result<usize, DbError> {
        let s = self.settings().clone();
        if s.prewarm.max == 0 || !self.may_read() {
            return Ok(0);
        }
        let since = chrono::Utc::now() - chrono::Duration::days(i64::from(s.prewarm.recent_days));
        let read_at = Instant::now();
        count_query("recent_logins");
        let profiles: Vec<Profile> = self.repo().recent_logins(since, s.prewarm.max).await?;
        let batch = usize::try_from(s.prewarm.batch_size).unwrap_or(100).max(1);
        let mut stored = 0;
        for chunk in profiles.chunks(batch) {
            // The rows must be fresher than any marker that could have expired since.
            if read_at.elapsed() > MAX_FILL_DELAY {
                tracing::warn!("prewarm stopped: its database read is too old to fill safely");
                break;
            }
            let now = now_millis();
            let fills: Vec<Fill> = chunk
                .iter()
                .filter_map(|p| {
                    Some(Fill {
                        key: Kind::Profile.key(p.user_id),
                        expected: None,
                        value: p.encode(now)?,
                        ttl: entry_ttl(s.ttl, s.jitter_percent, p.user_id, now),
                    })
                })
                .collect();
            match self.store().fill_many(&fills).await {
                Ok(n) => stored += n,
                Err(e) => {
                    tracing::warn!(error = %e, "prewarm stopped: cache store failed");
                    break;
                }
            }
        }
        tracing::info!(
            stored,
            candidates = profiles.len(),
            "cache prewarm finished"
        );
        Ok(stored)
    }
}
