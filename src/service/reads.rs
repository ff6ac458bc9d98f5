//! The read use cases: one profile or document (cache-aside with single flight and
//! refresh-ahead), a batch, and the prewarm. Every fill is guarded by the write state
//! the reader saw before its database read (see `crate::cache`).

use std::collections::HashMap;
use std::time::Instant;

use futures::FutureExt;
use futures::future::BoxFuture;

use super::flight::Flights;
use super::{BatchOutcome, Lookup, ProfileService, count_query, dedupe};
use crate::cache::{Cached, Fill, FillContent, Kind, Look, MAX_FILL_DELAY, profile_entry};
use crate::db::{DbError, Repo};
use crate::domain::{JsonObject, Profile, UserId};

/// A profile as the profile routes answer it.
// Handed straight to the handler, never stored: boxing the profile would cost an
// allocation per read for nothing, and a field added to the list must not fail clippy.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum ProfileJson {
    /// A hit: the cached entry (the profile JSON with `cached_at`) and its `cached_at`.
    Cached { entry: String, cached_at: String },
    /// Decoded: read from the database, or a cached entry in another writer's format.
    Read(Lookup<Profile>),
}

/// The in-process single flights of database reads, one set per value kind.
pub(super) struct ReadFlights {
    profiles: Flights<Option<Profile>>,
    documents: Flights<Option<JsonObject>>,
}

impl ReadFlights {
    pub(super) fn new() -> Self {
        Self {
            profiles: Flights::new(),
            documents: Flights::new(),
        }
    }
}

/// A value the read use case serves: how it is loaded and whose flights it shares.
pub(super) trait Readable: Cached {
    fn load(
        repo: Repo,
        kind: Kind,
        id: UserId,
    ) -> BoxFuture<'static, Result<Option<Self>, DbError>>;
    fn flights(f: &ReadFlights) -> &Flights<Option<Self>>;
}

impl Readable for Profile {
    fn load(repo: Repo, _: Kind, id: UserId) -> BoxFuture<'static, Result<Option<Self>, DbError>> {
        async move {
            count_query("fetch");
            repo.fetch(id).await
        }
        .boxed()
    }

    fn flights(f: &ReadFlights) -> &Flights<Option<Self>> {
        &f.profiles
    }
}

impl Readable for JsonObject {
    fn load(
        repo: Repo,
        kind: Kind,
        id: UserId,
    ) -> BoxFuture<'static, Result<Option<Self>, DbError>> {
        async move {
            let Kind::Document(doc) = kind else {
                return Ok(None);
            };
            count_query("fetch_document");
            Ok(repo.fetch_document(doc, id).await?.map(|d| d.data))
        }
        .boxed()
    }

    fn flights(f: &ReadFlights) -> &Flights<Option<Self>> {
        &f.documents
    }
}

impl ProfileService {
    /// One profile, cache-aside; `look` is the one admission made.
    pub async fn get(
        &self,
        id: UserId,
        look: Option<Look>,
    ) -> Result<Option<Lookup<Profile>>, DbError> {
        self.read::<Profile>(Kind::Profile, id, look).await
    }

    /// The profile of `id`, created empty on first use (the existing front ends' `GET
    /// /profile`).
    pub async fn get_or_create(
        &self,
        id: UserId,
        look: Option<Look>,
    ) -> Result<Option<Profile>, DbError> {
        if let Some(found) = self.get(id, look).await? {
            return Ok(Some(found.value));
        }
        match self.create(id, &crate::domain::NewProfile::default()).await {
            Ok(p) => Ok(Some(p)),
            // Two first requests raced and the other one created it. Read the row itself:
            // the winner invalidates the cache only after its commit, so the cache may
            // still say "not found" for a moment.
            Err(DbError::AlreadyExists) => {
                count_query("fetch");
                self.repo.fetch(id).await
            }
            Err(e) => Err(e),
        }
    }

    /// One profile as the profile routes answer it: a hit is served as the cached JSON
    /// itself (checked, never decoded and encoded again), a miss as read.
    pub async fn get_json(
        &self,
        id: UserId,
        look: Option<Look>,
    ) -> Result<Option<ProfileJson>, DbError> {
        let cache = &self.cache;
        let look = match look {
            Some(p) => Some(p),
            None if cache.may_read() => match cache.observe(Kind::Profile, id).await {
                Ok(observed) => Some(Look {
                    observed,
                    at: Instant::now(),
                }),
                Err(e) => {
                    tracing::debug!(error = %e, "cache read failed; reading the database");
                    cache.count_misses(1);
                    count_query("fetch");
                    return Ok(self.repo.fetch(id).await?.map(|value| {
                        ProfileJson::Read(Lookup {
                            value,
                            cached_at: None,
                        })
                    }));
                }
            },
            None => None,
        };
        if let Some(p) = &look
            && cache.may_read()
            && let Some(raw) = &p.observed.entry
            && let Some((cached_at, cached_at_text)) = profile_entry(raw, id)
        {
            cache.count_hits(1);
            if cache.needs_refresh(id, cached_at) {
                self.refresh_ahead::<Profile>(Kind::Profile, id, p.observed.state.clone(), p.at);
            }
            return Ok(Some(ProfileJson::Cached {
                entry: raw.clone(),
                cached_at: cached_at_text,
            }));
        }
        Ok(self
            .read::<Profile>(Kind::Profile, id, look)
            .await?
            .map(ProfileJson::Read))
    }

    /// A settings or preferences document, cache-aside; `None` when there is no profile.
    pub async fn document(
        &self,
        kind: crate::domain::DocumentKind,
        id: UserId,
        look: Option<Look>,
    ) -> Result<Option<Lookup<JsonObject>>, DbError> {
        self.read::<JsonObject>(Kind::Document(kind), id, look)
            .await
    }

    async fn read<V: Readable>(
        &self,
        kind: Kind,
        id: UserId,
        look: Option<Look>,
    ) -> Result<Option<Lookup<V>>, DbError> {
        let cache = &self.cache;
        let from_db = |v: Option<V>| {
            v.map(|value| Lookup {
                value,
                cached_at: None,
            })
        };
        if !cache.may_read() {
            cache.count_misses(1);
            return Ok(from_db(V::load(self.repo.clone(), kind, id).await?));
        }
        let (observed, seen_at) = match look {
            Some(p) => (p.observed, p.at),
            None => match cache.observe(kind, id).await {
                Ok(o) => (o, Instant::now()),
                Err(e) => {
                    tracing::debug!(error = %e, "cache read failed; reading the database");
                    cache.count_misses(1);
                    return Ok(from_db(V::load(self.repo.clone(), kind, id).await?));
                }
            },
        };
        if let Some((value, cached_at)) = observed.entry.as_deref().and_then(V::decode) {
            cache.count_hits(1);
            if cache.needs_refresh(id, cached_at) {
                self.refresh_ahead::<V>(kind, id, observed.state, seen_at);
            }
            return Ok(Some(Lookup {
                value,
                cached_at: Some(cached_at),
            }));
        }
        cache.count_misses(1);
        if observed.missing {
            metrics::counter!("cache_tombstone_hits_total").increment(1);
            return Ok(None);
        }
        // Anything else in the entry key (another writer's format) is a miss too; the
        // guarded fill replaces it.
        let seen_state = observed.state;
        let flight_key = format!("{}\n{}", kind.key(id), seen_state.as_deref().unwrap_or(""));
        let this = self.clone();
        let shared = V::flights(&self.flights)
            .run(flight_key, move || {
                async move {
                    match V::load(this.repo.clone(), kind, id).await {
                        Ok(found) => {
                            this.fill_after_read(kind, id, seen_state, seen_at, found.as_ref())
                                .await;
                            Some(found)
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "database read for a cache miss failed");
                            None
                        }
                    }
                }
                .boxed()
            })
            .await;
        match shared {
            Some(found) => Ok(from_db(found)),
            // The shared read failed: read on our own, to return our own error.
            None => Ok(from_db(V::load(self.repo.clone(), kind, id).await?)),
        }
    }

    /// The guarded fill (or tombstone) after a database read that followed a look at
    /// `seen_at` which saw `seen_state`.
    async fn fill_after_read<V: Readable>(
        &self,
        kind: Kind,
        id: UserId,
        seen_state: Option<String>,
        seen_at: Instant,
        found: Option<&V>,
    ) -> bool {
        if seen_at.elapsed() > MAX_FILL_DELAY || !self.cache.may_read() {
            return false;
        }
        let Some(fill) = self.cache.fill_for(kind, id, seen_state, found) else {
            return false;
        };
        match self.cache.fill(&fill).await {
            Ok(stored) => stored,
            Err(e) => {
                tracing::debug!(error = %e, "cache fill failed");
                false
            }
        }
    }

    /// Refreshes an entry in the background, at most once per key across instances. The
    /// fill is guarded by the state seen with the hit: a write since then wins.
    fn refresh_ahead<V: Readable>(
        &self,
        kind: Kind,
        id: UserId,
        seen_state: Option<String>,
        seen_at: Instant,
    ) {
        // Background work keeps to its share of the pool: no free share, no refresh (the
        // entry is still served; a later hit tries again).
        let Some(permit) = self.try_background_permit() else {
            metrics::counter!("cache_refreshes_skipped_total").increment(1);
            return;
        };
        let this = self.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if !this.cache.take_refresh_lock(kind, id).await {
                return;
            }
            metrics::counter!("cache_refreshes_total").increment(1);
            match V::load(this.repo.clone(), kind, id).await {
                Ok(found) => {
                    this.fill_after_read(kind, id, seen_state, seen_at, found.as_ref())
                        .await;
                }
                Err(e) => tracing::debug!(error = %e, "refresh-ahead read failed"),
            }
        });
    }

    /// Many profiles; `ids` as sent (duplicates allowed). One look per slot, one database
    /// query for the misses, one pipelined write-back of guarded fills. Tombstoned ids are
    /// not found without the database; they count as misses, like every id not found.
    pub async fn batch(&self, ids: &[UserId]) -> Result<BatchOutcome, DbError> {
        let unique = dedupe(ids);
        let (out, _) = self.read_through(&unique).await?;
        self.cache.count_hits(out.cache_hits as u64);
        self.cache.count_misses(out.cache_misses as u64);
        Ok(out)
    }

    /// The batch read of unique ids, and how many entries it stored.
    async fn read_through(&self, unique: &[UserId]) -> Result<(BatchOutcome, usize), DbError> {
        let cache = &self.cache;
        let mut served: HashMap<UserId, Profile> = HashMap::new();
        // Ids to read from the database, with the state seen beside their entry.
        let mut to_load: Vec<(UserId, Option<String>)> = Vec::new();
        let mut seen_at = None;
        let observed = if cache.may_read() && !unique.is_empty() {
            match cache.observe_profiles(unique).await {
                Ok(o) => {
                    seen_at = Some(Instant::now());
                    Some(o)
                }
                Err(e) => {
                    tracing::debug!(error = %e, "cache batch read failed; reading the database");
                    None
                }
            }
        } else {
            None
        };
        match observed {
            Some(observed) => {
                for (id, o) in unique.iter().zip(observed) {
                    match o.entry.as_deref().and_then(Profile::decode) {
                        Some((p, cached_at)) => {
                            if cache.needs_refresh(*id, cached_at) {
                                self.refresh_ahead::<Profile>(
                                    Kind::Profile,
                                    *id,
                                    o.state,
                                    seen_at.unwrap_or_else(Instant::now),
                                );
                            }
                            served.insert(*id, p);
                        }
                        None if o.missing => {}
                        None => to_load.push((*id, o.state)),
                    }
                }
            }
            None => to_load = unique.iter().map(|id| (*id, None)).collect(),
        }
        let mut found: HashMap<UserId, Profile> = if to_load.is_empty() {
            HashMap::new()
        } else {
            count_query("fetch_many");
            let load: Vec<UserId> = to_load.iter().map(|(id, _)| *id).collect();
            self.repo
                .fetch_many(&load)
                .await?
                .into_iter()
                .map(|p| (p.user_id, p))
                .collect()
        };
        let mut stored = 0;
        // One pipelined write-back, only from a fresh look at the cache.
        if seen_at.is_some_and(|t| t.elapsed() <= MAX_FILL_DELAY) && cache.may_read() {
            let fills: Vec<Fill> = to_load
                .into_iter()
                .filter_map(|(id, seen)| cache.fill_for(Kind::Profile, id, seen, found.get(&id)))
                .collect();
            match cache.fill_many(&fills).await {
                Ok(done) => {
                    stored = fills
                        .iter()
                        .zip(done)
                        .filter(|(f, done)| *done && matches!(f.content, FillContent::Entry(_)))
                        .count();
                }
                Err(e) => tracing::debug!(error = %e, "cache batch write-back failed"),
            }
        }
        let mut out = BatchOutcome {
            cache_hits: served.len(),
            cache_misses: unique.len() - served.len(),
            ..Default::default()
        };
        for id in unique {
            match served.remove(id).or_else(|| found.remove(id)) {
                Some(p) => out.profiles.push(p),
                None => out.not_found.push(*id),
            }
        }
        Ok((out, stored))
    }

    /// Loads the profiles of recently active users (up to `prewarm.max` whose last login is
    /// within `prewarm.recent_days`, most recent first) in batches, through the same
    /// guarded fills as every read; returns how many entries were actually stored.
    pub async fn prewarm(&self) -> Result<usize, DbError> {
        let s = self.cache.settings().prewarm.clone();
        if s.max == 0 || !self.cache.may_read() {
            return Ok(0);
        }
        let since = chrono::Utc::now() - chrono::Duration::days(i64::from(s.recent_days));
        count_query("recent_logins");
        let ids: Vec<UserId> = self
            .repo
            .recent_logins(since, s.max)
            .await?
            .into_iter()
            .map(|p| p.user_id)
            .collect();
        let batch = usize::try_from(s.batch_size).unwrap_or(100).max(1);
        let mut stored = 0;
        for chunk in ids.chunks(batch) {
            if !self.cache.may_read() {
                tracing::warn!("prewarm stopped: the cache store is unavailable");
                break;
            }
            let _permit = self.background_permit().await;
            stored += self.read_through(chunk).await?.1;
        }
        tracing::info!(stored, candidates = ids.len(), "cache prewarm finished");
        Ok(stored)
    }
}
