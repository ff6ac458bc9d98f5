use std::collections::HashSet;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::reads::ReadFlights;
use crate::cache::Cache;
use crate::db::{DbError, InvalidationScope, Repo, Written};
use crate::domain::{
    Document, DocumentKind, JsonObject, NewProfile, Profile, ProfilePatch, UserId,
};

/// A value read for a client, and whether it came from the cache.
#[derive(Debug, Clone)]
pub struct Lookup<T> {
    /// The value itself.
    pub value: T,
    /// When the entry was cached; `None` when read from the database.
    pub cached_at: Option<DateTime<Utc>>,
}

/// The answer of a batch read.
#[derive(Debug, Clone, Default)]
pub struct BatchOutcome {
    /// Found profiles, in the order their ids were first sent.
    pub profiles: Vec<Profile>,
    /// Unique ids answered by a cached profile.
    pub cache_hits: usize,
    /// Every other unique id (read from the database, or known missing).
    pub cache_misses: usize,
    /// Ids with no profile, in the order sent.
    pub not_found: Vec<UserId>,
}

/// Every profile use case (reads, batch, documents, writes, prewarm, the outbox),
/// cache-aside over the repository.
#[derive(Clone)]
pub struct ProfileService {
    pub(super) repo: Repo,
    pub(super) cache: Cache,
    pub(super) flights: Arc<ReadFlights>,
}

impl ProfileService {
    /// Builds the service over a repository and its cache.
    pub fn new(repo: Repo, cache: Cache) -> Self {
        Self {
            repo,
            cache,
            flights: Arc::new(ReadFlights::new()),
        }
    }

    /// The cache (admin routes, health).
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// The repository, for health checks.
    pub fn repo(&self) -> &Repo {
        &self.repo
    }

    /// Creates a profile.
    pub async fn create(&self, id: UserId, new: &NewProfile) -> Result<Profile, DbError> {
        count_query("create");
        let w = self.repo.create(id, new).await?;
        // All three keys: the documents of a missing profile may hold tombstones too.
        Ok(self.after_write(w, id, InvalidationScope::All).await)
    }

    /// Partial update; `None` when there is no such profile.
    pub async fn update(
        &self,
        id: UserId,
        patch: &ProfilePatch,
    ) -> Result<Option<Profile>, DbError> {
        count_query("update");
        match self.repo.update(id, patch).await? {
            Some(w) => Ok(Some(
                self.after_write(w, id, InvalidationScope::Profile).await,
            )),
            None => Ok(None),
        }
    }

    /// Creates or updates; `true` when created.
    pub async fn upsert(
        &self,
        id: UserId,
        patch: &ProfilePatch,
    ) -> Result<(Profile, bool), DbError> {
        count_query("upsert");
        let w = self.repo.upsert(id, patch).await?;
        let scope = if w.value.1 {
            InvalidationScope::All
        } else {
            InvalidationScope::Profile
        };
        Ok(self.after_write(w, id, scope).await)
    }

    /// Deletes a profile and its documents; `false` when there was none.
    pub async fn delete(&self, id: UserId) -> Result<bool, DbError> {
        count_query("delete");
        match self.repo.delete(id).await? {
            Some(w) => {
                self.after_write(w, id, InvalidationScope::All).await;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Replaces a document; `None` when there is no profile.
    pub async fn replace_document(
        &self,
        kind: DocumentKind,
        id: UserId,
        data: &JsonObject,
    ) -> Result<Option<Document>, DbError> {
        count_query("replace_document");
        match self.repo.replace_document(kind, id, data).await? {
            Some(w) => Ok(Some(
                self.after_write(w, id, InvalidationScope::Document(kind))
                    .await,
            )),
            None => Ok(None),
        }
    }

    /// Records a login time (throttled in the database to once an hour).
    pub async fn record_login(&self, id: UserId, at: DateTime<Utc>) -> Result<(), DbError> {
        count_query("record_login");
        if let Some(w) = self.repo.record_login(id, at).await? {
            self.after_write(w, id, InvalidationScope::Profile).await;
        }
        Ok(())
    }

    /// Applies the write's cache invalidation (markers) and retires its outbox row. When the
    /// invalidation fails the row stays for the drainer and this instance stops reading the
    /// cache until it is applied, before the write is acknowledged.
    async fn after_write<T>(&self, w: Written<T>, id: UserId, scope: InvalidationScope) -> T {
        match self.cache.invalidate(id, scope).await {
            Ok(()) => {
                // Retiring the row is bookkeeping, not part of the write's promise: off the
                // response path. If it fails, the drainer applies the row again (harmless:
                // markers are idempotent) and retires it.
                let (repo, outbox_id) = (self.repo.clone(), w.outbox_id);
                tokio::spawn(async move {
                    if let Err(e) = repo.clear_invalidations(&[outbox_id]).await {
                        tracing::warn!(error = %e, "could not clear outbox row; it will be retried");
                    }
                });
            }
            Err(e) => {
                self.cache.mark_dirty();
                tracing::warn!(error = %e, "cache invalidation failed; kept in the outbox, reading the database until it is applied");
            }
        }
        w.value
    }
}

/// Counts a database round trip in `/metrics` (`db_queries_total{op}`).
pub(crate) fn count_query(op: &'static str) {
    metrics::counter!("db_queries_total", "op" => op).increment(1);
}

/// Unique ids in the order first sent.
pub(crate) fn dedupe(ids: &[UserId]) -> Vec<UserId> {
    let mut seen = HashSet::with_capacity(ids.len());
    ids.iter().copied().filter(|id| seen.insert(*id)).collect()
}
