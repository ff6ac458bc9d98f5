//! [`ProfileRepo`] written once over sqlx, for any backend that is a [`Dialect`]: every
//! write is one transaction with its outbox row, rows decode with `FromRow`, and the
//! statements come from [`super::sql`]. A dialect supplies what really differs: how to
//! connect and migrate, how a write transaction starts, list parameters (arrays or JSON),
//! the batch statements, and how driver errors are told apart.

use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, Utc};
use sqlx::error::BoxDynError;
use sqlx::types::Json;
use sqlx::{
    Arguments, Connection, Database, Encode, Executor, FromRow, IntoArguments, Pool, Transaction,
    Type,
};

use super::codec::DbTime;
use super::events::OutboxEvent;
use super::{
    DbError, EventClaim, InvalidationScope, LoginsWritten, PendingInvalidation, PoolOptions,
    PoolStats, ProfileRepo, UserSync, Written, sql,
};
use crate::domain::{
    ChangeVisitor, Document, DocumentKind, Email, FieldChange, FieldSpec, FieldType, FieldVisitor,
    JsonObject, NewProfile, Profile, ProfileId, ProfilePatch, UserId,
};

/// What one SQL backend does its own way.
#[async_trait]
pub trait Dialect: Database {
    /// "postgres" or "sqlite", for logs.
    const BACKEND: &'static str;

    /// Brings the schema up to date: the embedded migrations (after, on PostgreSQL, the
    /// takeover of a database the Python service left).
    async fn migrate(pool: &Pool<Self>) -> Result<(), DbError>;

    /// Adds a profile field's value to a statement's arguments (any [`FieldType`] is
    /// stored by both dialects, which generic code cannot see for itself).
    fn add_field<T: FieldType>(
        args: &mut Self::Arguments,
        value: Option<&T>,
    ) -> Result<(), BoxDynError>;

    /// Starts a write transaction.
    async fn begin_write(pool: &Pool<Self>) -> Result<Transaction<'static, Self>, sqlx::Error>;

    /// Runs in a create's transaction before the insert; fails with `AlreadyExists` where
    /// the insert alone could report an e-mail conflict for an id that exists.
    async fn before_create(tx: &mut Self::Connection, id: UserId) -> Result<(), DbError>;

    /// Runs in a delete's transaction before the profile goes: removes its documents where
    /// the foreign keys' cascade cannot be relied on.
    async fn before_delete(tx: &mut Self::Connection, id: UserId) -> Result<(), DbError>;

    /// The existing profiles among `ids` (not empty), in one statement.
    async fn fetch_many(pool: &Pool<Self>, ids: &[UserId]) -> Result<Vec<Profile>, DbError>;

    /// [`ProfileRepo::record_logins`] for a non-empty batch: `(outbox id, user)` per
    /// profile changed.
    async fn record_logins(
        pool: &Pool<Self>,
        logins: &[(UserId, DateTime<Utc>)],
        now: DateTime<Utc>,
    ) -> Result<Vec<(i64, UserId)>, DbError>;

    /// [`ProfileRepo::insert_many`] for a non-empty slice.
    async fn insert_many(pool: &Pool<Self>, profiles: &[Profile]) -> Result<u64, DbError>;

    /// Deletes the outbox rows `ids` (not empty).
    async fn clear_invalidations(pool: &Pool<Self>, ids: &[i64]) -> Result<(), DbError>;

    /// In a write transaction: those of the outbox rows `ids` (not empty) that exist and
    /// that no other transaction holds, now held by this one, in id order.
    async fn claim_rows(conn: &mut Self::Connection, ids: &[i64]) -> Result<Vec<i64>, DbError>;

    /// Deletes the outbox rows `ids` (not empty) in a transaction.
    async fn delete_rows(conn: &mut Self::Connection, ids: &[i64]) -> Result<(), DbError>;

    /// Tells conflicts (by constraint) and unavailability apart from other failures.
    fn classify(e: sqlx::Error) -> DbError;

    /// [`Self::classify`], counted in `db_errors_total`.
    fn map_err(e: sqlx::Error) -> DbError {
        Self::classify(e).record_metric()
    }

    /// A migration failure: the driver's own errors classified like any other call.
    fn map_migrate_err(e: sqlx::migrate::MigrateError) -> DbError {
        match e {
            sqlx::migrate::MigrateError::Execute(e) => Self::map_err(e),
            other => DbError::Migrate(other),
        }
    }
}

/// The repository over a pool of dialect `D`.
#[derive(Debug)]
pub struct SqlRepo<D: Dialect> {
    pool: Pool<D>,
    max_connections: u32,
}

impl<D: Dialect> SqlRepo<D> {
    /// Opens a pool of the size `opts` asks for on `connect`, and one connection, failing
    /// with `Unavailable` within `acquire_timeout` when the database cannot be reached;
    /// `tune` adds the backend's own pool settings.
    pub(super) async fn open(
        connect: <D::Connection as Connection>::Options,
        opts: &PoolOptions,
        tune: impl FnOnce(sqlx::pool::PoolOptions<D>) -> sqlx::pool::PoolOptions<D>,
    ) -> Result<Self, DbError> {
        let max_connections = opts.max_connections.max(1);
        let pool_options = sqlx::pool::PoolOptions::new()
            .max_connections(max_connections)
            .min_connections(opts.min_connections.min(max_connections))
            .acquire_timeout(opts.acquire_timeout);
        let pool = tune(pool_options)
            .connect_with(connect)
            .await
            .map_err(DbError::from_sqlx)?;
        Ok(Self {
            pool,
            max_connections,
        })
    }
}

/// A document row: NULLs when the profile has none.
#[derive(FromRow)]
struct StoredDocument {
    data: Option<Json<JsonObject>>,
    updated_at: Option<DateTime<Utc>>,
}

/// Outbox rows held by one drainer's transaction (see [`EventClaim`]).
struct SqlClaim<D: Dialect> {
    tx: Transaction<'static, D>,
    ids: Vec<i64>,
}

#[async_trait]
impl<D: Dialect> EventClaim for SqlClaim<D> {
    fn ids(&self) -> &[i64] {
        &self.ids
    }

    async fn finish(mut self: Box<Self>, published: &[i64]) -> Result<(), DbError> {
        if !published.is_empty() {
            D::delete_rows(&mut *self.tx, published).await?;
        }
        self.tx.commit().await.map_err(D::map_err)
    }
}

/// The outbox row a write recorded, before the commit.
struct Recorded {
    outbox_id: i64,
    event: Option<OutboxEvent>,
    event_behind: bool,
}

/// A statement's arguments, the fields among them added in the list's order; the first
/// encoding error is kept for [`Binder::finish`].
struct Binder<D: Dialect> {
    args: D::Arguments,
    error: Option<BoxDynError>,
}

impl<D: Dialect> Default for Binder<D> {
    fn default() -> Self {
        Self {
            args: D::Arguments::default(),
            error: None,
        }
    }
}

impl<D: Dialect> Binder<D> {
    fn add<T: for<'q> Encode<'q, D> + Type<D>>(&mut self, value: T) {
        if self.error.is_none() {
            self.error = self.args.add(value).err();
        }
    }

    fn finish(self) -> Result<D::Arguments, DbError> {
        match self.error {
            None => Ok(self.args),
            Some(e) => Err(D::map_err(sqlx::Error::Encode(e))),
        }
    }
}

impl<D: Dialect> FieldVisitor for Binder<D> {
    fn field<T: FieldType>(&mut self, _: &'static FieldSpec, value: Option<&T>) {
        if self.error.is_none() {
            self.error = D::add_field(&mut self.args, value).err();
        }
    }
}

// A flag (does the patch touch the field?) and the value it gets (`NULL` when cleared).
impl<D: Dialect> ChangeVisitor for Binder<D>
where
    for<'q> bool: Encode<'q, D> + Type<D>,
{
    fn change<T: FieldType>(&mut self, spec: &'static FieldSpec, change: &FieldChange<T>) {
        self.add(change.changes());
        self.field(spec, change.new_value());
    }
}

/// The write timestamp: PostgreSQL keeps microseconds, so anything finer would make the
/// value a write returns differ from the one read back later.
fn now_micros() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

// The bounds of this impl and the next: the types the statements bind and the rows they
// decode, which both backends have (see `codec`). Rust does not carry such bounds along
// from `D: Dialect`, so each generic impl states them.
impl<D> SqlRepo<D>
where
    D: Dialect,
    for<'c> &'c mut D::Connection: Executor<'c, Database = D>,
    D::Arguments: IntoArguments<D>,
    for<'q> UserId: Encode<'q, D> + Type<D>,
    for<'q> ProfileId: Encode<'q, D> + Type<D>,
    for<'q> DbTime: Encode<'q, D> + Type<D>,
    for<'q> bool: Encode<'q, D> + Type<D>,
    for<'q> &'q str: Encode<'q, D> + Type<D>,
    for<'q> Option<&'q str>: Encode<'q, D> + Type<D>,
    for<'q> i64: Encode<'q, D> + Type<D>,
    for<'r> Profile: FromRow<'r, D::Row>,
    for<'r> (i64,): FromRow<'r, D::Row>,
{
    /// Inserts a profile with `fields` under a new profile id; `None` when the user id
    /// exists.
    async fn insert(
        tx: &mut D::Connection,
        id: UserId,
        fields: &NewProfile,
        now: DateTime<Utc>,
    ) -> Result<Option<Profile>, DbError> {
        let mut binder = Binder::<D>::default();
        // Generated here, not by a column default: SQLite has no UUID function, and one
        // statement serves both backends.
        binder.add(ProfileId::random());
        binder.add(id);
        fields.visit(&mut binder);
        binder.add(DbTime(now));
        Self::profile_of(tx, sql::INSERT_PROFILE.get(), binder).await
    }

    /// Runs `statement` with the arguments bound so far: the profile it returns, if any.
    async fn profile_of(
        tx: &mut D::Connection,
        statement: &'static str,
        binder: Binder<D>,
    ) -> Result<Option<Profile>, DbError> {
        sqlx::query_as_with(statement, binder.finish()?)
            .fetch_optional(tx)
            .await
            .map_err(D::map_err)
    }

    /// Applies `patch` (only the fields it changes) and bumps `updated_at`; `None` when
    /// there is no such row.
    async fn apply_patch(
        tx: &mut D::Connection,
        id: UserId,
        patch: &ProfilePatch,
        now: DateTime<Utc>,
    ) -> Result<Option<Profile>, DbError> {
        let mut binder = Binder::<D>::default();
        binder.add(id);
        patch.visit(&mut binder);
        binder.add(DbTime(now));
        Self::profile_of(tx, sql::APPLY_PATCH.get(), binder).await
    }

    /// Records, in the write's transaction, the cache invalidation that must follow it and
    /// the event it publishes. Whether an older event of the user is still unpublished is
    /// read in the same transaction: after the profile row's lock, so every earlier write
    /// of this user has committed and its row, if unpublished, is seen.
    async fn record_invalidation(
        tx: &mut D::Connection,
        id: UserId,
        scope: InvalidationScope,
        now: DateTime<Utc>,
        event: Option<OutboxEvent>,
    ) -> Result<Recorded, DbError> {
        let event_behind = match &event {
            Some(_) => {
                let pending: i64 = sqlx::query_scalar(sql::EVENT_PENDING)
                    .bind(id)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(D::map_err)?;
                pending > 0
            }
            None => false,
        };
        let outbox_id = sqlx::query_scalar(sql::INSERT_OUTBOX_ROW)
            .bind(id)
            .bind(scope.as_str())
            .bind(DbTime(now))
            .bind(event.as_ref().map(|e| e.channel.as_str()))
            .bind(event.as_ref().map(|e| e.payload.as_str()))
            .fetch_one(&mut *tx)
            .await
            .map_err(D::map_err)?;
        Ok(Recorded {
            outbox_id,
            event,
            event_behind,
        })
    }

    /// Commits `tx` and answers `value` with the outbox row recorded in it.
    async fn commit<T>(
        tx: Transaction<'static, D>,
        value: T,
        recorded: Recorded,
    ) -> Result<Written<T>, DbError> {
        tx.commit().await.map_err(D::map_err)?;
        Ok(Written {
            value,
            outbox_id: recorded.outbox_id,
            event: recorded.event,
            event_behind: recorded.event_behind,
        })
    }
}

#[async_trait]
impl<D> ProfileRepo for SqlRepo<D>
where
    D: Dialect,
    for<'c> &'c mut D::Connection: Executor<'c, Database = D>,
    D::Arguments: IntoArguments<D>,
    for<'q> UserId: Encode<'q, D> + Type<D>,
    for<'q> ProfileId: Encode<'q, D> + Type<D>,
    for<'q> DbTime: Encode<'q, D> + Type<D>,
    for<'q> bool: Encode<'q, D> + Type<D>,
    for<'q> &'q str: Encode<'q, D> + Type<D>,
    for<'q> Option<&'q str>: Encode<'q, D> + Type<D>,
    for<'q> i64: Encode<'q, D> + Type<D>,
    for<'q> Json<&'q JsonObject>: Encode<'q, D> + Type<D>,
    for<'r> Profile: FromRow<'r, D::Row>,
    for<'r> StoredDocument: FromRow<'r, D::Row>,
    for<'r> PendingInvalidation: FromRow<'r, D::Row>,
    for<'r> (i64,): FromRow<'r, D::Row>,
{
    fn backend(&self) -> &'static str {
        D::BACKEND
    }

    async fn migrate(&self) -> Result<(), DbError> {
        D::migrate(&self.pool).await
    }

    async fn ping(&self) -> Result<(), DbError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(D::map_err)?;
        Ok(())
    }

    async fn close(&self) {
        self.pool.close().await;
    }

    fn pool_stats(&self) -> PoolStats {
        PoolStats {
            size: self.pool.size(),
            idle: u32::try_from(self.pool.num_idle()).unwrap_or(u32::MAX),
            max: self.max_connections,
        }
    }

    async fn fetch(&self, id: UserId) -> Result<Option<Profile>, DbError> {
        sqlx::query_as(sql::FETCH_PROFILE.get())
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(D::map_err)
    }

    async fn fetch_many(&self, ids: &[UserId]) -> Result<Vec<Profile>, DbError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        D::fetch_many(&self.pool, ids).await
    }

    async fn create(&self, id: UserId, new: &NewProfile) -> Result<Written<Profile>, DbError> {
        let now = now_micros();
        let mut tx = D::begin_write(&self.pool).await.map_err(D::map_err)?;
        D::before_create(&mut *tx, id).await?;
        // Only the id is a conflict target: an existing id is reported as such even when
        // its row also holds the same e-mail; an e-mail held by another row still raises.
        let Some(profile) = Self::insert(&mut *tx, id, new, now).await? else {
            return Err(DbError::AlreadyExists);
        };
        let event = OutboxEvent::profile_updated(id, &new.set_fields(), now);
        let recorded =
            Self::record_invalidation(&mut *tx, id, InvalidationScope::Profile, now, Some(event))
                .await?;
        Self::commit(tx, profile, recorded).await
    }

    async fn update(
        &self,
        id: UserId,
        patch: &ProfilePatch,
    ) -> Result<Option<Written<Profile>>, DbError> {
        let now = now_micros();
        let mut tx = D::begin_write(&self.pool).await.map_err(D::map_err)?;
        let Some(profile) = Self::apply_patch(&mut *tx, id, patch, now).await? else {
            return Ok(None);
        };
        let event = OutboxEvent::profile_updated(id, &patch.set_fields(), now);
        let recorded =
            Self::record_invalidation(&mut *tx, id, InvalidationScope::Profile, now, Some(event))
                .await?;
        Self::commit(tx, profile, recorded).await.map(Some)
    }

    async fn upsert(
        &self,
        id: UserId,
        patch: &ProfilePatch,
    ) -> Result<Written<(Profile, bool)>, DbError> {
        let now = now_micros();
        let fields = NewProfile::from(patch);
        let mut tx = D::begin_write(&self.pool).await.map_err(D::map_err)?;
        // Update first, insert if absent. A concurrent insert of the same id makes ours a
        // no-op (it waits for that transaction), after which the update finds the row;
        // where the write transaction holds a lock (SQLite) the first round decides.
        let mut result = None;
        for _ in 0..3 {
            if let Some(p) = Self::apply_patch(&mut *tx, id, patch, now).await? {
                result = Some((p, false));
                break;
            }
            if let Some(p) = Self::insert(&mut *tx, id, &fields, now).await? {
                result = Some((p, true));
                break;
            }
        }
        // Three lost races in a row means the row keeps appearing and vanishing.
        let Some(value) = result else {
            return Err(DbError::Other(sqlx::Error::Protocol(
                "upsert kept racing with concurrent deletes".into(),
            )));
        };
        // Created or changed, the fields set are the patch's (an upsert's insert takes
        // exactly the fields the patch sets).
        let event = OutboxEvent::profile_updated(id, &patch.set_fields(), now);
        let recorded =
            Self::record_invalidation(&mut *tx, id, InvalidationScope::Profile, now, Some(event))
                .await?;
        Self::commit(tx, value, recorded).await
    }

    async fn delete(&self, id: UserId) -> Result<Option<Written<()>>, DbError> {
        let now = now_micros();
        let mut tx = D::begin_write(&self.pool).await.map_err(D::map_err)?;
        D::before_delete(&mut *tx, id).await?;
        let deleted: Option<Profile> = sqlx::query_as(sql::DELETE_PROFILE.get())
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(D::map_err)?;
        if deleted.is_none() {
            return Ok(None);
        }
        let event = OutboxEvent::profile_deleted(id, now);
        let recorded =
            Self::record_invalidation(&mut *tx, id, InvalidationScope::All, now, Some(event))
                .await?;
        Self::commit(tx, (), recorded).await.map(Some)
    }

    async fn fetch_document(
        &self,
        kind: DocumentKind,
        id: UserId,
    ) -> Result<Option<Document>, DbError> {
        let row: Option<StoredDocument> = sqlx::query_as(sql::fetch_document(kind))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(D::map_err)?;
        Ok(row.map(|d| Document {
            data: d.data.map(|j| j.0).unwrap_or_default(),
            updated_at: d.updated_at,
        }))
    }

    async fn replace_document(
        &self,
        kind: DocumentKind,
        id: UserId,
        data: &JsonObject,
    ) -> Result<Option<Written<Document>>, DbError> {
        let now = now_micros();
        let mut tx = D::begin_write(&self.pool).await.map_err(D::map_err)?;
        let stored: Result<StoredDocument, _> = sqlx::query_as(sql::replace_document(kind))
            .bind(id)
            .bind(Json(data))
            .bind(DbTime(now))
            .fetch_one(&mut *tx)
            .await;
        let stored = match stored {
            Ok(row) => row,
            Err(sqlx::Error::Database(db)) if db.is_foreign_key_violation() => return Ok(None),
            Err(e) => return Err(D::map_err(e)),
        };
        let scope = InvalidationScope::Document(kind);
        // Settings and preferences are not profile fields: no `profile:updated`.
        let recorded = Self::record_invalidation(&mut *tx, id, scope, now, None).await?;
        // What the database stored (jsonb normalizes numbers and duplicate keys), so a
        // later read sees exactly this.
        let document = Document {
            data: stored.data.map(|j| j.0).unwrap_or_default(),
            updated_at: stored.updated_at,
        };
        Self::commit(tx, document, recorded).await.map(Some)
    }

    async fn record_logins(
        &self,
        logins: &[(UserId, DateTime<Utc>)],
    ) -> Result<LoginsWritten, DbError> {
        if logins.is_empty() {
            return Ok(LoginsWritten::default());
        }
        let rows = D::record_logins(&self.pool, logins, now_micros()).await?;
        Ok(LoginsWritten {
            users: rows.iter().map(|(_, u)| *u).collect(),
            outbox_ids: rows.iter().map(|(id, _)| *id).collect(),
        })
    }

    async fn recent_logins(
        &self,
        since: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Profile>, DbError> {
        sqlx::query_as(sql::RECENT_LOGINS.get())
            .bind(DbTime(since))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(D::map_err)
    }

    async fn insert_many(&self, profiles: &[Profile]) -> Result<u64, DbError> {
        if profiles.is_empty() {
            return Ok(0);
        }
        D::insert_many(&self.pool, profiles).await
    }

    async fn sync_user(
        &self,
        id: UserId,
        email: Option<&Email>,
    ) -> Result<Written<UserSync>, DbError> {
        let now = now_micros();
        let mut tx = D::begin_write(&self.pool).await.map_err(D::map_err)?;
        // Conditional, so that of the instances that all receive the message, only the
        // first changes the row (the others find it equal after its lock) and one event goes out.
        let changed: Option<Profile> = match email {
            Some(e) => sqlx::query_as(sql::SYNC_EMAIL.get())
                .bind(id)
                .bind(e.as_str())
                .bind(DbTime(now))
                .fetch_optional(&mut *tx)
                .await
                .map_err(D::map_err)?,
            None => None,
        };
        let event = changed
            .as_ref()
            .map(|_| OutboxEvent::profile_updated(id, &["email"], now));
        let recorded =
            Self::record_invalidation(&mut *tx, id, InvalidationScope::All, now, event).await?;
        let outcome = if changed.is_some() {
            UserSync::EmailChanged
        } else {
            UserSync::Unchanged
        };
        Self::commit(tx, outcome, recorded).await
    }

    async fn pending_after(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<PendingInvalidation>, DbError> {
        sqlx::query_as(sql::PENDING_AFTER)
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(D::map_err)
    }

    async fn claim_events(&self, ids: &[i64]) -> Result<Box<dyn EventClaim>, DbError> {
        let mut tx = D::begin_write(&self.pool).await.map_err(D::map_err)?;
        let held = if ids.is_empty() {
            Vec::new()
        } else {
            D::claim_rows(&mut *tx, ids).await?
        };
        Ok(Box::new(SqlClaim::<D> { tx, ids: held }))
    }

    async fn clear_invalidations(&self, ids: &[i64]) -> Result<(), DbError> {
        if ids.is_empty() {
            return Ok(());
        }
        D::clear_invalidations(&self.pool, ids).await
    }
}
