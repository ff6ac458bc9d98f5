use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use chrono::{DateTime, Utc};

use super::events_out::EventsOut;
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
    /// Database connections background work may hold at once (the rest serve requests).
    background: Arc<Semaphore>,
    /// Outbox rows whose invalidation was applied on the write's path, to delete.
    pub(super) retired: Arc<Mutex<Vec<i64>>>,
    /// Outbox rows this instance's writers are applying or have applied (until deleted):
    /// the drainer leaves them alone, so it never invalidates again an entry that a
    /// reader filled after the write.
    pub(super) owned: Arc<Mutex<HashSet<i64>>>,
    /// Where events out go, and the outbox rows whose events this instance's writers left
    /// to the drainer.
    pub(super) events: EventsOut,
}

impl ProfileService {
    /// Builds the service over a repository and its cache; background work holds at most
    /// `background_connections` database connections at once.
    pub fn new(repo: Repo, cache: Cache, background_connections: u32) -> Self {
        Self {
            repo,
            cache,
            flights: Arc::new(ReadFlights::new()),
            background: Arc::new(Semaphore::new(background_connections.max(1) as usize)),
            retired: Arc::new(Mutex::new(Vec::new())),
            owned: Arc::new(Mutex::new(HashSet::new())),
            events: EventsOut::default(),
        }
    }

    /// Publishes events out through `events` (see `events_out`); without it (the embedded
    /// store) an event is retired with its row, unpublished.
    pub fn with_events(mut self, events: EventsOut) -> Self {
        self.events = events;
        self
    }

    /// Waits for a background share of the pool (held while the permit lives).
    pub(super) async fn background_permit(&self) -> OwnedSemaphorePermit {
        self.background
            .clone()
            .acquire_owned()
            .await
            .expect("the background semaphore is never closed")
    }

    /// A background share of the pool if one is free now.
    pub(super) fn try_background_permit(&self) -> Option<OwnedSemaphorePermit> {
        self.background.clone().try_acquire_owned().ok()
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
        self.record_logins(&[(id, at)]).await.map(|_| ())
    }

    /// Records many login times in one statement (each throttled to once an hour per
    /// user), within the background share of the pool, and invalidates the changed
    /// profiles in one pipeline. Returns how many profiles changed.
    pub async fn record_logins(
        &self,
        logins: &[(UserId, DateTime<Utc>)],
    ) -> Result<usize, DbError> {
        if logins.is_empty() {
            return Ok(0);
        }
        let written = {
            let _permit = self.background_permit().await;
            count_query("record_logins");
            self.repo.record_logins(logins).await?
        };
        if written.users.is_empty() {
            return Ok(0);
        }
        self.own(&written.outbox_ids);
        match self
            .cache
            .invalidate_many(&written.users, InvalidationScope::Profile)
            .await
        {
            Ok(()) => self.applied(&written.outbox_ids),
            Err(e) => {
                self.cache.mark_dirty();
                self.disown(&written.outbox_ids);
                tracing::warn!(error = %e, "cache invalidation of login records failed; kept in the outbox, reading the database until it is applied");
            }
        }
        Ok(written.users.len())
    }

    /// Applies the write's cache invalidation, publishes its event, and notes its outbox
    /// row as applied. When the invalidation fails this instance stops reading the cache
    /// until it is applied, before the write is acknowledged; when either fails (or the
    /// event must wait behind an older one of the same user) the row stays for the drainer.
    pub(super) async fn after_write<T>(
        &self,
        w: Written<T>,
        id: UserId,
        scope: InvalidationScope,
    ) -> T {
        self.own(&[w.outbox_id]);
        let invalidated = match self.cache.invalidate(id, scope).await {
            Ok(()) => true,
            Err(e) => {
                self.cache.mark_dirty();
                tracing::warn!(error = %e, "cache invalidation failed; kept in the outbox, reading the database until it is applied");
                false
            }
        };
        let published = match &w.event {
            None => true,
            Some(_) if w.event_behind => false,
            Some(event) => self.events.publish(event, "writer").await,
        };
        if !published {
            // Before the row is disowned, so the drainer knows it need not wait for the
            // hand-off time.
            self.events.hand_off(w.outbox_id);
        }
        if invalidated && published {
            // Deleting the row is bookkeeping, not part of the write's promise: the next
            // drain pass deletes every applied row in one statement, off the response
            // path; meanwhile the drainer leaves the row alone.
            self.applied(&[w.outbox_id]);
        } else {
            self.disown(&[w.outbox_id]);
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
