//! The database: one `ProfileRepo` trait, implemented once over sqlx ([`SqlRepo`]) for
//! PostgreSQL and embedded SQLite, each a [`Dialect`] for what it does its own way.
//!
//! The backend is chosen once, from the URL scheme, in [`connect`], and wrapped in
//! [`Bounded`], the client-side ceiling on every call. Every mutating call also records a
//! pending cache invalidation (an outbox row) in the same transaction, so a write
//! acknowledged while Redis is unreachable is never hidden later by an older cache entry.
//!
//! * [`sql`]: the statements, written once where the dialects agree.
//! * [`codec`]: how domain values are stored on each backend (rows decode with `FromRow`).
//! * `sql_repo`: the repository; `postgres`, `sqlite`: the dialects and their pools.
//!
//! Reference: `docs/database.md`.

mod bounded;
pub mod codec;
pub mod events;
mod postgres;
pub mod sql;
mod sql_repo;
mod sqlite;
mod takeover;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::domain::{
    Document, DocumentKind, Email, JsonObject, NewProfile, Profile, ProfilePatch, UserId,
};

pub use bounded::Bounded;
pub use events::{OutboxEvent, PROFILE_DELETED, PROFILE_UPDATED};
pub use postgres::PostgresRepo;
pub use sql_repo::{Dialect, SqlRepo};
pub use sqlite::SqliteRepo;
pub use takeover::{BASELINE_VERSION, ForeignSchema, SchemaDifference};

/// Shared handle to the chosen backend.
pub type Repo = Arc<dyn ProfileRepo>;

/// Why a database call failed.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The database cannot be reached now (pool timeout, connection refused, shutdown).
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// A profile with this id already exists.
    #[error("profile already exists")]
    AlreadyExists,
    /// Another profile already uses this e-mail address.
    #[error("email already in use")]
    EmailTaken,
    /// Anything else; logged, never shown to clients.
    #[error("database error: {0}")]
    Other(#[source] sqlx::Error),
    /// Migration failure at start-up.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A database without migration history whose `profiles` table cannot be taken over.
    #[error(transparent)]
    ForeignSchema(#[from] ForeignSchema),
    /// The takeover could not lock `profiles` for its catalog change; nothing was changed.
    #[error(
        "could not take over the `profiles` table: {attempts} attempts waited over 2 s each for          its lock (a long transaction holds it); nothing was changed, start again"
    )]
    TakeoverBlocked { attempts: u32 },
}

impl DbError {
    /// Counts failures of the database itself in `db_errors_total{kind}` (conflicts are
    /// answers, not failures, and are not counted).
    pub fn record_metric(self) -> Self {
        let kind = match &self {
            Self::Unavailable(_) => "unavailable",
            Self::Other(_) | Self::Migrate(_) => "other",
            Self::AlreadyExists
            | Self::EmailTaken
            | Self::ForeignSchema(_)
            | Self::TakeoverBlocked { .. } => return self,
        };
        metrics::counter!("db_errors_total", "kind" => kind).increment(1);
        self
    }

    /// Classifies a driver error: connectivity problems become `Unavailable`.
    pub fn from_sqlx(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => Self::Unavailable(e),
            sqlx::Error::Database(db) => {
                // 57P01 admin shutdown, 57P03 cannot connect now, 08xxx connection exceptions.
                let code = db.code().unwrap_or_default();
                if code.starts_with("08") || code == "57P01" || code == "57P03" {
                    Self::Unavailable(e)
                } else {
                    Self::Other(e)
                }
            }
            _ => Self::Other(e),
        }
    }
}

/// What a pending invalidation must remove from the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidationScope {
    /// The cached profile only.
    Profile,
    /// One cached document.
    Document(DocumentKind),
    /// Profile, settings and preferences (delete).
    All,
}

impl InvalidationScope {
    /// Stored form in the outbox table.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Profile => "profile",
            Self::Document(DocumentKind::Settings) => "settings",
            Self::Document(DocumentKind::Preferences) => "preferences",
            Self::All => "all",
        }
    }

    /// Parses the stored form; unknown values widen to `All` (safe: removes more).
    pub fn parse(s: &str) -> Self {
        match s {
            "profile" => Self::Profile,
            "settings" => Self::Document(DocumentKind::Settings),
            "preferences" => Self::Document(DocumentKind::Preferences),
            _ => Self::All,
        }
    }
}

/// The stored form, as [`InvalidationScope::parse`] reads it.
impl From<String> for InvalidationScope {
    fn from(stored: String) -> Self {
        Self::parse(&stored)
    }
}

/// A cache invalidation recorded with a write and not yet confirmed applied (and, when
/// the row carries one, its event not yet confirmed published).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct PendingInvalidation {
    /// Outbox row id.
    pub id: i64,
    pub user_id: UserId,
    #[sqlx(try_from = "String")]
    pub scope: InvalidationScope,
    /// The event's channel, when the write publishes one.
    pub event: Option<String>,
    /// The event's JSON payload.
    pub payload: Option<String>,
    /// When the write committed (the writer's clock).
    pub created_at: DateTime<Utc>,
}

impl PendingInvalidation {
    /// The event this row carries, if any.
    pub fn outbox_event(&self) -> Option<OutboxEvent> {
        Some(OutboxEvent {
            channel: self.event.clone()?,
            payload: self.payload.clone().unwrap_or_default(),
        })
    }
}

/// The result of a write plus the id of the outbox row recorded with it.
#[derive(Debug, Clone)]
pub struct Written<T> {
    pub value: T,
    /// Delete this outbox row once the invalidation is applied (and its event published).
    pub outbox_id: i64,
    /// The event recorded in the row, published after the commit.
    pub event: Option<OutboxEvent>,
    /// True when an older event of the same user was still unpublished at the commit: this
    /// one must not overtake it, so it is left to the drainer, which publishes in order.
    pub event_behind: bool,
}

/// What [`ProfileRepo::sync_user`] changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserSync {
    /// The stored e-mail was replaced.
    EmailChanged,
    /// Nothing to change (no e-mail given, the same one, or no profile).
    Unchanged,
}

/// Outbox rows with events that one drainer holds while it publishes them: other drainers
/// skip them (PostgreSQL: `FOR UPDATE SKIP LOCKED`; SQLite: the write lock). Dropping it
/// without [`EventClaim::finish`] releases them unpublished.
#[async_trait]
pub trait EventClaim: Send {
    /// The rows held (those asked for that still exist and no other drainer holds), in id order.
    fn ids(&self) -> &[i64];
    /// Deletes the rows among `published` and releases the rest.
    async fn finish(self: Box<Self>, published: &[i64]) -> Result<(), DbError>;
}

/// What a batch of login records changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoginsWritten {
    /// Profiles whose `last_login` changed.
    pub users: Vec<UserId>,
    /// Their outbox rows.
    pub outbox_ids: Vec<i64>,
}

/// Connection pool figures for `/metrics`.
#[derive(Debug, Clone, Copy, Default)]
pub struct PoolStats {
    pub size: u32,
    pub idle: u32,
    pub max: u32,
}

/// Pool settings shared by both backends.
#[derive(Debug, Clone)]
pub struct PoolOptions {
    pub max_connections: u32,
    pub min_connections: u32,
    pub acquire_timeout: Duration,
    /// Server-side statement timeout (PostgreSQL) / busy timeout (SQLite).
    pub statement_timeout: Duration,
}

impl PoolOptions {
    /// The client-side ceiling of one call ([`Bounded`]): getting a connection, twice the
    /// statement limit and a second; `None` when no statement limit is configured.
    pub fn call_ceiling(&self) -> Option<Duration> {
        (!self.statement_timeout.is_zero())
            .then(|| self.acquire_timeout + self.statement_timeout * 2 + Duration::from_secs(1))
    }
}

/// Storage of profiles, their documents and the invalidation outbox.
#[async_trait]
pub trait ProfileRepo: Send + Sync + 'static {
    /// Which backend this is ("postgres" or "sqlite"), for logs.
    fn backend(&self) -> &'static str;
    /// Applies pending migrations.
    async fn migrate(&self) -> Result<(), DbError>;
    /// A trivial round trip, for `/ready`.
    async fn ping(&self) -> Result<(), DbError>;
    /// Pool figures.
    fn pool_stats(&self) -> PoolStats;
    /// Closes the pool: waits for connections in use to come back, then closes them all.
    async fn close(&self);

    /// One profile, if it exists.
    async fn fetch(&self, id: UserId) -> Result<Option<Profile>, DbError>;
    /// All existing profiles among `ids` (one query, any order).
    async fn fetch_many(&self, ids: &[UserId]) -> Result<Vec<Profile>, DbError>;
    /// Inserts a profile; `AlreadyExists` or `EmailTaken` on conflict.
    async fn create(&self, id: UserId, new: &NewProfile) -> Result<Written<Profile>, DbError>;
    /// Applies a partial update; `None` when there is no such profile.
    /// An empty patch still bumps `updated_at`.
    async fn update(
        &self,
        id: UserId,
        patch: &ProfilePatch,
    ) -> Result<Option<Written<Profile>>, DbError>;
    /// Creates the profile with the patch's fields, or updates it; `true` when created.
    async fn upsert(
        &self,
        id: UserId,
        patch: &ProfilePatch,
    ) -> Result<Written<(Profile, bool)>, DbError>;
    /// Deletes the profile and its documents; `None` when there was nothing to delete.
    async fn delete(&self, id: UserId) -> Result<Option<Written<()>>, DbError>;

    /// A user's document (`{}` when never written); `None` when there is no profile.
    async fn fetch_document(
        &self,
        kind: DocumentKind,
        id: UserId,
    ) -> Result<Option<Document>, DbError>;
    /// Replaces a user's document; `None` when there is no profile.
    async fn replace_document(
        &self,
        kind: DocumentKind,
        id: UserId,
        data: &JsonObject,
    ) -> Result<Option<Written<Document>>, DbError>;

    /// For each `(user, at)`, sets `last_login` to `at` unless it is already within an
    /// hour of it, leaving `updated_at` alone; one transaction, with one outbox row per
    /// profile changed. `users` are unique.
    async fn record_logins(
        &self,
        logins: &[(UserId, DateTime<Utc>)],
    ) -> Result<LoginsWritten, DbError>;

    /// [`Self::record_logins`] for one user; `None` when nothing changed.
    async fn record_login(
        &self,
        id: UserId,
        at: DateTime<Utc>,
    ) -> Result<Option<Written<()>>, DbError> {
        let w = self.record_logins(&[(id, at)]).await?;
        Ok(w.outbox_ids.first().map(|&outbox_id| Written {
            value: (),
            outbox_id,
            event: None,
            event_behind: false,
        }))
    }

    /// What the auth service's `user:updated` asks: one transaction that sets the stored
    /// e-mail when `email` is given and differs (with a `profile:updated` event), and
    /// records an invalidation of every cache entry of the user either way.
    /// `EmailTaken` (nothing written) when another profile holds the address.
    async fn sync_user(
        &self,
        id: UserId,
        email: Option<&Email>,
    ) -> Result<Written<UserSync>, DbError>;
    /// Up to `limit` profiles with `last_login` after `since`, most recent first.
    async fn recent_logins(
        &self,
        since: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Profile>, DbError>;
    /// Bulk insert of complete profiles (seeding); existing ids are skipped. Returns rows inserted.
    async fn insert_many(&self, profiles: &[Profile]) -> Result<u64, DbError>;

    /// Oldest pending invalidations first.
    async fn pending_invalidations(&self, limit: u32) -> Result<Vec<PendingInvalidation>, DbError> {
        self.pending_after(0, limit).await
    }
    /// Pending outbox rows with an id above `after`, oldest first.
    async fn pending_after(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<PendingInvalidation>, DbError>;
    /// Holds those of the outbox rows `ids` no other drainer holds, to publish their events.
    async fn claim_events(&self, ids: &[i64]) -> Result<Box<dyn EventClaim>, DbError>;
    /// Removes applied outbox rows.
    async fn clear_invalidations(&self, ids: &[i64]) -> Result<(), DbError>;
}

/// Opens the backend named by the URL scheme (`postgres://`/`postgresql://` or `sqlite://`),
/// under the call ceiling `opts` imply.
pub async fn connect(url: &str, opts: &PoolOptions) -> Result<Repo, DbError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(bounded(PostgresRepo::connect(url, opts).await?, opts))
    } else {
        Ok(bounded(SqliteRepo::connect(url, opts).await?, opts))
    }
}

fn bounded(repo: impl ProfileRepo, opts: &PoolOptions) -> Repo {
    match opts.call_ceiling() {
        Some(ceiling) => Arc::new(Bounded::new(repo, ceiling)),
        None => Arc::new(repo),
    }
}
