use std::collections::HashSet;

use chrono::{DateTime, Utc};

use crate::db::{DbError, InvalidationScope, Repo, Written};
use crate::domain::{
    Document, DocumentKind, JsonObject, NewProfile, Profile, ProfilePatch, UserId,
};

/// A value read for a client, and whether it came from the cache.
#[derive(Debug, Clone)]
pub struct Lookup<T> {
    pub value: T,
    /// When the entry was cached; `None` when read from the database.
    pub cached_at: Option<DateTime<Utc>>,
}

/// The answer of a batch read.
#[derive(Debug, Clone, Default)]
pub struct BatchOutcome {
    /// Found profiles, in the order their ids were first sent.
    pub profiles: Vec<Profile>,
    pub cache_hits: usize,
    pub cache_misses: usize,
    /// Ids with no profile, in the order sent.
    pub not_found: Vec<UserId>,
}

/// Profile reads and writes.
#[derive(Clone)]
pub struct ProfileService {
    repo: Repo,
}

impl ProfileService {
    /// Builds the service over a repository.
    pub fn new(repo: Repo) -> Self {
        Self { repo }
    }

    /// The repository, for health checks.
    pub fn repo(&self) -> &Repo {
        &self.repo
    }

    /// One profile.
    pub async fn get(&self, id: UserId) -> Result<Option<Lookup<Profile>>, DbError> {
        count_query("fetch");
        Ok(self.repo.fetch(id).await?.map(|p| Lookup {
            value: p,
            cached_at: None,
        }))
    }

    /// Many profiles; `ids` as sent (duplicates allowed).
    pub async fn batch(&self, ids: &[UserId]) -> Result<BatchOutcome, DbError> {
        let unique = dedupe(ids);
        count_query("fetch_many");
        let found = self.repo.fetch_many(&unique).await?;
        Ok(assemble(&unique, found, 0))
    }

    /// Creates a profile.
    pub async fn create(&self, id: UserId, new: &NewProfile) -> Result<Profile, DbError> {
        count_query("create");
        let w = self.repo.create(id, new).await?;
        Ok(self.after_write(w, id, InvalidationScope::Profile).await)
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
        Ok(self.after_write(w, id, InvalidationScope::Profile).await)
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

    /// A settings or preferences document; `None` when there is no profile.
    pub async fn document(
        &self,
        kind: DocumentKind,
        id: UserId,
    ) -> Result<Option<Lookup<JsonObject>>, DbError> {
        count_query("fetch_document");
        Ok(self.repo.fetch_document(kind, id).await?.map(|d| Lookup {
            value: d.data,
            cached_at: None,
        }))
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

    /// Applies the write's cache invalidation and retires its outbox row.
    async fn after_write<T>(&self, w: Written<T>, _id: UserId, _scope: InvalidationScope) -> T {
        // Without a cache there is nothing to invalidate; the row is retired at once.
        if let Err(e) = self.repo.clear_invalidations(&[w.outbox_id]).await {
            tracing::warn!(error = %e, "could not clear outbox row; it will be retried");
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

/// Orders found profiles as requested and lists the missing ids.
pub(crate) fn assemble(unique: &[UserId], found: Vec<Profile>, cache_hits: usize) -> BatchOutcome {
    let mut by_id: std::collections::HashMap<UserId, Profile> =
        found.into_iter().map(|p| (p.user_id, p)).collect();
    let mut out = BatchOutcome {
        cache_hits,
        cache_misses: unique.len() - cache_hits,
        ..Default::default()
    };
    for id in unique {
        match by_id.remove(id) {
            Some(p) => out.profiles.push(p),
            None => out.not_found.push(*id),
        }
    }
    out
}
