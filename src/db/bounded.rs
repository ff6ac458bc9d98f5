//! A client-side ceiling on every repository call, over any [`ProfileRepo`].
//!
//! The database's own limits (PostgreSQL's `statement_timeout`, SQLite's busy timeout)
//! bound the work; they do not bound a database that vanishes from the network (no RST,
//! no FIN), where a call would hang on its socket. Under [`Bounded`] such a call ends as
//! `DbError::Unavailable` once the ceiling passes.

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{
    DbError, EventClaim, LoginsWritten, PendingInvalidation, PoolStats, ProfileRepo, UserSync,
    Written,
};
use crate::domain::{
    Document, DocumentKind, Email, JsonObject, NewProfile, Profile, ProfilePatch, UserId,
};

/// Profiles per bounded `insert_many` call: a large seed is many calls, each with its own
/// ceiling, so it is not cut off as a whole.
const INSERT_CHUNK: usize = 5_000;

/// `R` with every call but `migrate` (which may legitimately take long) cut off at a
/// ceiling.
#[derive(Debug)]
pub struct Bounded<R> {
    inner: R,
    ceiling: Duration,
}

impl<R: ProfileRepo> Bounded<R> {
    /// `inner` with calls cut off after `ceiling`.
    pub fn new(inner: R, ceiling: Duration) -> Self {
        Self { inner, ceiling }
    }

    async fn run<T>(&self, call: impl Future<Output = Result<T, DbError>>) -> Result<T, DbError> {
        match tokio::time::timeout(self.ceiling, call).await {
            Ok(result) => result,
            Err(_) => Err(timed_out()),
        }
    }
}

/// A claim whose `finish` is cut off at the same ceiling (its rows are then released).
struct BoundedClaim {
    inner: Option<Box<dyn EventClaim>>,
    ceiling: Duration,
}

#[async_trait]
impl EventClaim for BoundedClaim {
    fn ids(&self) -> &[i64] {
        self.inner.as_ref().map_or(&[], |c| c.ids())
    }

    async fn finish(mut self: Box<Self>, published: &[i64]) -> Result<(), DbError> {
        let Some(inner) = self.inner.take() else {
            return Ok(());
        };
        match tokio::time::timeout(self.ceiling, inner.finish(published)).await {
            Ok(result) => result,
            Err(_) => Err(timed_out()),
        }
    }
}

fn timed_out() -> DbError {
    DbError::Unavailable(sqlx::Error::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "database call timed out",
    )))
    .record_metric()
}

#[async_trait]
impl<R: ProfileRepo> ProfileRepo for Bounded<R> {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    async fn migrate(&self) -> Result<(), DbError> {
        self.inner.migrate().await
    }

    async fn ping(&self) -> Result<(), DbError> {
        self.run(self.inner.ping()).await
    }

    async fn close(&self) {
        self.inner.close().await;
    }

    fn pool_stats(&self) -> PoolStats {
        self.inner.pool_stats()
    }

    async fn fetch(&self, id: UserId) -> Result<Option<Profile>, DbError> {
        self.run(self.inner.fetch(id)).await
    }

    async fn fetch_many(&self, ids: &[UserId]) -> Result<Vec<Profile>, DbError> {
        self.run(self.inner.fetch_many(ids)).await
    }

    async fn create(&self, id: UserId, new: &NewProfile) -> Result<Written<Profile>, DbError> {
        self.run(self.inner.create(id, new)).await
    }

    async fn update(
        &self,
        id: UserId,
        patch: &ProfilePatch,
    ) -> Result<Option<Written<Profile>>, DbError> {
        self.run(self.inner.update(id, patch)).await
    }

    async fn upsert(
        &self,
        id: UserId,
        patch: &ProfilePatch,
    ) -> Result<Written<(Profile, bool)>, DbError> {
        self.run(self.inner.upsert(id, patch)).await
    }

    async fn delete(&self, id: UserId) -> Result<Option<Written<()>>, DbError> {
        self.run(self.inner.delete(id)).await
    }

    async fn fetch_document(
        &self,
        kind: DocumentKind,
        id: UserId,
    ) -> Result<Option<Document>, DbError> {
        self.run(self.inner.fetch_document(kind, id)).await
    }

    async fn replace_document(
        &self,
        kind: DocumentKind,
        id: UserId,
        data: &JsonObject,
    ) -> Result<Option<Written<Document>>, DbError> {
        self.run(self.inner.replace_document(kind, id, data)).await
    }

    async fn record_logins(
        &self,
        logins: &[(UserId, DateTime<Utc>)],
    ) -> Result<LoginsWritten, DbError> {
        self.run(self.inner.record_logins(logins)).await
    }

    async fn recent_logins(
        &self,
        since: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Profile>, DbError> {
        self.run(self.inner.recent_logins(since, limit)).await
    }

    async fn insert_many(&self, profiles: &[Profile]) -> Result<u64, DbError> {
        let mut inserted = 0;
        for chunk in profiles.chunks(INSERT_CHUNK) {
            inserted += self.run(self.inner.insert_many(chunk)).await?;
        }
        Ok(inserted)
    }

    async fn sync_user(
        &self,
        id: UserId,
        email: Option<&Email>,
    ) -> Result<Written<UserSync>, DbError> {
        self.run(self.inner.sync_user(id, email)).await
    }

    async fn pending_after(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<PendingInvalidation>, DbError> {
        self.run(self.inner.pending_after(after, limit)).await
    }

    async fn claim_events(&self, ids: &[i64]) -> Result<Box<dyn EventClaim>, DbError> {
        let claim = self.run(self.inner.claim_events(ids)).await?;
        Ok(Box::new(BoundedClaim {
            inner: Some(claim),
            ceiling: self.ceiling,
        }))
    }

    async fn clear_invalidations(&self, ids: &[i64]) -> Result<(), DbError> {
        self.run(self.inner.clear_invalidations(ids)).await
    }
}
