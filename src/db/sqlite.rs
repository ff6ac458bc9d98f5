//! Embedded SQLite (the default when no PostgreSQL URL is given): the pool, and what this
//! dialect does its own way.
//!
//! Values are stored as readable text (see [`super::codec`] and `migrations/sqlite`).
//! Lists are bound as one JSON array and unpacked with `json_each`, so every statement is
//! static whatever the list's length. Writes use `BEGIN IMMEDIATE` so they take the write
//! lock up front and wait in the busy handler, instead of failing when a read transaction
//! cannot be upgraded.

use std::str::FromStr;

use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{Value, json};
use sqlx::error::BoxDynError;
use sqlx::sqlite::{SqliteArguments, SqliteConnectOptions, SqliteConnection, SqliteJournalMode};
use sqlx::types::Json;
use sqlx::{Arguments, Pool, Sqlite, Transaction};

use super::codec::DbTime;
use super::sql::{self, Sql};
use super::sql_repo::{Dialect, SqlRepo};
use super::{DbError, InvalidationScope, PoolOptions};
use crate::domain::{DocumentKind, FieldSpec, FieldType, FieldVisitor, Profile, UserId};

/// The SQLite repository.
pub type SqliteRepo = SqlRepo<Sqlite>;

/// Name of the unique index on `lower(email)`; SQLite names it in the constraint message.
const EMAIL_INDEX: &str = "profiles_email_lower_key";
/// What SQLite's message names for a primary-key conflict.
const PK_COLUMN: &str = "profiles.user_id";

/// $1 a JSON array of ids.
static FETCH_MANY: Sql = Sql::new(|| {
    format!(
        "SELECT {} FROM profiles WHERE user_id IN (SELECT value FROM json_each($1))",
        sql::select_list()
    )
});

/// $1 a JSON array of outbox row ids.
const CLEAR_INVALIDATIONS: &str =
    "DELETE FROM cache_invalidations WHERE id IN (SELECT value FROM json_each($1))";

/// $1 a JSON array of outbox row ids: those that still exist (the write lock, taken by
/// `BEGIN IMMEDIATE`, keeps every other writer out until the transaction ends).
const CLAIM_ROWS: &str = "SELECT id FROM cache_invalidations \
     WHERE id IN (SELECT value FROM json_each($1)) ORDER BY id";

/// $1 id, $2 the login time, $3 an hour before it.
const RECORD_LOGIN: &str = "UPDATE profiles SET last_login = $2 \
     WHERE user_id = $1 AND (last_login IS NULL OR last_login < $3) RETURNING user_id";

/// $1 a JSON array of rows, each an array of the columns as stored. `WHERE true` keeps
/// SQLite from reading `ON CONFLICT` as part of the `SELECT`.
static INSERT_MANY: Sql = Sql::new(|| {
    let values: Vec<String> = (0..sql::columns().count())
        .map(|i| format!("value->>{i}"))
        .collect();
    format!(
        "INSERT INTO profiles ({}) SELECT {} FROM json_each($1) WHERE true \
         ON CONFLICT DO NOTHING",
        sql::column_list(),
        values.join(", ")
    )
});

/// A row of the batch insert: each field's JSON form, which is the text SQLite stores
/// (see [`FieldType`]).
struct JsonRow(Vec<Value>);

impl FieldVisitor for JsonRow {
    fn field<T: FieldType>(&mut self, _: &'static FieldSpec, value: Option<&T>) {
        self.0
            .push(serde_json::to_value(value).unwrap_or(Value::Null));
    }
}

/// The database holds personal data: a directory created here is 0700 and a new file
/// 0600 (SQLite gives its `-wal` and `-shm` files the mode of the database file). An
/// existing file or directory is left as it is, with a warning when others can read it.
fn prepare_private_file(path: &std::path::Path) -> std::io::Result<()> {
    if path.as_os_str().is_empty() || path.to_str() == Some(":memory:") {
        return Ok(());
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            builder.mode(0o700);
        }
        builder.create(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    match options.open(path) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                if let Ok(meta) = std::fs::metadata(path)
                    && meta.permissions().mode() & 0o077 != 0
                {
                    tracing::warn!(
                        path = %path.display(),
                        "the SQLite database (personal data) is readable by other users; `chmod 600` it"
                    );
                }
            }
        }
        Err(e) => return Err(e),
    }
    Ok(())
}

impl SqlRepo<Sqlite> {
    /// Opens (creating it and its directory when missing, private to this user) the database file named by a
    /// `sqlite://path` or `sqlite:path` URL.
    pub async fn connect(url: &str, opts: &PoolOptions) -> Result<Self, DbError> {
        let connect = SqliteConnectOptions::from_str(url)
            .map_err(DbError::Other)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(opts.statement_timeout)
            .foreign_keys(true);
        prepare_private_file(connect.get_filename())
            .map_err(|e| DbError::Other(sqlx::Error::Io(e)))?;
        Self::open(connect, opts, |pool| pool).await
    }
}

#[async_trait]
impl Dialect for Sqlite {
    const BACKEND: &'static str = "sqlite";

    async fn migrate(pool: &Pool<Self>) -> Result<(), DbError> {
        sqlx::migrate!("./migrations/sqlite")
            .run(pool)
            .await
            .map_err(Self::map_migrate_err)
    }

    fn add_field<T: FieldType>(
        args: &mut SqliteArguments,
        value: Option<&T>,
    ) -> Result<(), BoxDynError> {
        args.add(value)
    }

    async fn begin_write(pool: &Pool<Self>) -> Result<Transaction<'static, Self>, sqlx::Error> {
        pool.begin_with("BEGIN IMMEDIATE").await
    }

    async fn before_create(tx: &mut SqliteConnection, id: UserId) -> Result<(), DbError> {
        // The write lock is held, so this cannot race; it makes an existing id win over an
        // e-mail conflict whatever order SQLite checks its indexes in.
        let existing: Option<Profile> = sqlx::query_as(sql::FETCH_PROFILE.get())
            .bind(id)
            .fetch_optional(tx)
            .await
            .map_err(Self::map_err)?;
        match existing {
            Some(_) => Err(DbError::AlreadyExists),
            None => Ok(()),
        }
    }

    async fn before_delete(tx: &mut SqliteConnection, id: UserId) -> Result<(), DbError> {
        // Explicit, not only ON DELETE CASCADE: a connection opened elsewhere without
        // `PRAGMA foreign_keys` must not leave documents behind.
        for kind in [DocumentKind::Settings, DocumentKind::Preferences] {
            sqlx::query(sql::delete_document(kind))
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(Self::map_err)?;
        }
        Ok(())
    }

    // Mirrors `postgres.rs` on purpose (one trait, two dialects): only the bound id array
    // differs (a JSON array here, a typed `uuid[]` there).
    async fn fetch_many(pool: &Pool<Self>, ids: &[UserId]) -> Result<Vec<Profile>, DbError> {
        sqlx::query_as(FETCH_MANY.get())
            .bind(Json(ids))
            .fetch_all(pool)
            .await
            .map_err(Self::map_err)
    }

    async fn record_logins(
        pool: &Pool<Self>,
        logins: &[(UserId, DateTime<Utc>)],
        now: DateTime<Utc>,
    ) -> Result<Vec<(i64, UserId)>, DbError> {
        // One transaction for the batch (SQLite is in process: statements are cheap).
        let mut tx = Self::begin_write(pool).await.map_err(Self::map_err)?;
        let mut written = Vec::new();
        for &(id, at) in logins {
            let changed: Option<UserId> = sqlx::query_scalar(RECORD_LOGIN)
                .bind(id)
                .bind(DbTime(at))
                .bind(DbTime(at - TimeDelta::hours(1)))
                .fetch_optional(&mut *tx)
                .await
                .map_err(Self::map_err)?;
            if changed.is_some() {
                let outbox_id: i64 = sqlx::query_scalar(sql::INSERT_INVALIDATION)
                    .bind(id)
                    .bind(InvalidationScope::Profile.as_str())
                    .bind(DbTime(now))
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(Self::map_err)?;
                written.push((outbox_id, id));
            }
        }
        tx.commit().await.map_err(Self::map_err)?;
        Ok(written)
    }

    async fn insert_many(pool: &Pool<Self>, profiles: &[Profile]) -> Result<u64, DbError> {
        let time = |t: &DateTime<Utc>| DbTime(*t).sqlite_text();
        let rows: Vec<Value> = profiles
            .iter()
            .map(|p| {
                let mut row = JsonRow(vec![json!(p.id), json!(p.user_id)]);
                p.visit_fields(&mut row);
                row.0.extend([
                    json!(p.last_login.as_ref().map(time)),
                    json!(time(&p.created_at)),
                    json!(time(&p.updated_at)),
                ]);
                Value::Array(row.0)
            })
            .collect();
        // One statement in one transaction: one fsync, not one per row.
        let done = sqlx::query(INSERT_MANY.get())
            .bind(Json(rows))
            .execute(pool)
            .await
            .map_err(Self::map_err)?;
        Ok(done.rows_affected())
    }

    async fn clear_invalidations(pool: &Pool<Self>, ids: &[i64]) -> Result<(), DbError> {
        sqlx::query(CLEAR_INVALIDATIONS)
            .bind(Json(ids))
            .execute(pool)
            .await
            .map_err(Self::map_err)?;
        Ok(())
    }

    async fn claim_rows(conn: &mut SqliteConnection, ids: &[i64]) -> Result<Vec<i64>, DbError> {
        sqlx::query_scalar(CLAIM_ROWS)
            .bind(Json(ids))
            .fetch_all(conn)
            .await
            .map_err(Self::map_err)
    }

    async fn delete_rows(conn: &mut SqliteConnection, ids: &[i64]) -> Result<(), DbError> {
        sqlx::query(CLEAR_INVALIDATIONS)
            .bind(Json(ids))
            .execute(conn)
            .await
            .map_err(Self::map_err)?;
        Ok(())
    }

    /// Unique violations become the domain conflicts (SQLite names the column or index in
    /// its message), a lock wait that outlasted the busy timeout `Unavailable`.
    fn classify(e: sqlx::Error) -> DbError {
        if let sqlx::Error::Database(db) = &e {
            if db.is_unique_violation() {
                let msg = db.message();
                if msg.contains(EMAIL_INDEX) {
                    return DbError::EmailTaken;
                }
                if msg.contains(PK_COLUMN) {
                    return DbError::AlreadyExists;
                }
            }
            // SQLITE_BUSY (5) and SQLITE_LOCKED (6), including their extended codes.
            let primary = db
                .code()
                .and_then(|c| c.parse::<i32>().ok())
                .map(|c| c & 0xff);
            if matches!(primary, Some(5 | 6)) {
                return DbError::Unavailable(e);
            }
        }
        DbError::from_sqlx(e)
    }
}
