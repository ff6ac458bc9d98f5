//! Embedded SQLite backend (the default when no PostgreSQL URL is given).
//!
//! Values are stored as readable text: ids as lowercase hyphenated UUIDs, timestamps as
//! fixed-width RFC 3339 UTC (`YYYY-MM-DDTHH:MM:SS.ffffffZ`, so text order is time order and
//! `recent_logins` can use the index), dates as `YYYY-MM-DD`, documents as JSON text.
//! Writes use `BEGIN IMMEDIATE` so they take the write lock up front and wait in the busy
//! handler, instead of failing when a read transaction cannot be upgraded.

use std::str::FromStr;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, SubsecRound, TimeDelta, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow,
};
use sqlx::{AssertSqlSafe, Row};
use uuid::Uuid;

use super::{
    DbError, InvalidationScope, LoginsWritten, PendingInvalidation, PoolOptions, PoolStats,
    ProfileRepo, Written,
};
use crate::domain::{
    Document, DocumentKind, Email, JsonObject, NewProfile, Profile, ProfilePatch, UserId,
};

/// Name of the unique index on `lower(email)`; SQLite names it in the constraint message.
const EMAIL_INDEX: &str = "profiles_email_lower_key";
/// What SQLite's message names for a primary-key conflict.
const PK_COLUMN: &str = "profiles.user_id";
/// Rows per multi-row INSERT: 11 variables each, under SQLite's 32766-variable limit.
const INSERT_CHUNK: usize = 2_000;
/// Ids per `IN (…)` list, well under the variable limit.
const IN_CHUNK: usize = 10_000;

const COLUMNS: &str = "user_id, first_name, last_name, name, email, phone, address, \
                       date_of_birth, last_login, created_at, updated_at";

/// The SQLite implementation of [`ProfileRepo`].
#[derive(Debug, Clone)]
pub struct SqliteRepo {
    pool: SqlitePool,
    max_connections: u32,
}

impl SqliteRepo {
    /// Opens (creating it and its directory when missing) the database file named by a
    /// `sqlite://path` or `sqlite:path` URL.
    pub async fn connect(url: &str, opts: &PoolOptions) -> Result<Self, DbError> {
        let connect = SqliteConnectOptions::from_str(url)
            .map_err(DbError::Other)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(opts.statement_timeout)
            .foreign_keys(true);
        let parent = connect.get_filename().parent();
        if let Some(dir) = parent.filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| DbError::Other(sqlx::Error::Io(e)))?;
        }
        let max = opts.max_connections.max(1);
        let pool = SqlitePoolOptions::new()
            .max_connections(max)
            .min_connections(opts.min_connections.min(max))
            .acquire_timeout(opts.acquire_timeout)
            .connect_with(connect)
            .await
            .map_err(DbError::from_sqlx)?;
        Ok(Self {
            pool,
            max_connections: max,
        })
    }

    /// A write transaction holding the write lock from its first statement.
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, DbError> {
        self.pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(map_err)
    }
}

#[async_trait]
impl ProfileRepo for SqliteRepo {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn migrate(&self) -> Result<(), DbError> {
        sqlx::migrate!("./migrations/sqlite")
            .run(&self.pool)
            .await
            .map_err(|e| match e {
                sqlx::migrate::MigrateError::Execute(e) => map_err(e),
                other => DbError::Migrate(other),
            })
    }

    async fn ping(&self) -> Result<(), DbError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    fn pool_stats(&self) -> PoolStats {
        PoolStats {
            size: self.pool.size(),
            idle: u32::try_from(self.pool.num_idle()).unwrap_or(u32::MAX),
            max: self.max_connections,
        }
    }

    async fn fetch(&self, id: UserId) -> Result<Option<Profile>, DbError> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM profiles WHERE user_id = $1"
        )))
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        row.as_ref()
            .map(profile_from_row)
            .transpose()
            .map_err(map_err)
    }

    async fn fetch_many(&self, ids: &[UserId]) -> Result<Vec<Profile>, DbError> {
        let mut out = Vec::new();
        // One query for any realistic batch; chunking only guards the variable limit.
        for chunk in ids.chunks(IN_CHUNK) {
            let sql = format!(
                "SELECT {COLUMNS} FROM profiles WHERE user_id IN ({})",
                placeholders(chunk.len())
            );
            let mut q = sqlx::query(AssertSqlSafe(sql)).persistent(false);
            for id in chunk {
                q = q.bind(id.to_string());
            }
            let rows = q.fetch_all(&self.pool).await.map_err(map_err)?;
            for row in &rows {
                out.push(profile_from_row(row).map_err(map_err)?);
            }
        }
        Ok(out)
    }

    async fn create(&self, id: UserId, new: &NewProfile) -> Result<Written<Profile>, DbError> {
        let now = now_micros();
        let mut tx = self.begin_write().await?;
        // The write lock is held, so this check cannot race; it makes an existing id win
        // over an e-mail conflict whatever order SQLite checks its indexes in.
        if exists(&mut tx, id).await? {
            return Err(DbError::AlreadyExists);
        }
        let row = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO profiles ({COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL, $9, $9) RETURNING {COLUMNS}"
        )))
        .bind(id.to_string())
        .bind(new.first_name.as_deref())
        .bind(new.last_name.as_deref())
        .bind(new.name.as_deref())
        .bind(new.email.as_ref().map(Email::as_str))
        .bind(new.phone.as_deref())
        .bind(new.address.as_deref())
        .bind(new.date_of_birth.map(date_text))
        .bind(ts(now))
        .fetch_one(&mut *tx)
        .await
        .map_err(map_err)?;
        let profile = profile_from_row(&row).map_err(map_err)?;
        let outbox_id = outbox(&mut tx, id, InvalidationScope::Profile, now).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(Written {
            value: profile,
            outbox_id,
        })
    }

    async fn update(
        &self,
        id: UserId,
        patch: &ProfilePatch,
    ) -> Result<Option<Written<Profile>>, DbError> {
        let now = now_micros();
        let mut tx = self.begin_write().await?;
        let Some(profile) = apply_patch(&mut tx, id, patch, now).await? else {
            return Ok(None);
        };
        let outbox_id = outbox(&mut tx, id, InvalidationScope::Profile, now).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(Some(Written {
            value: profile,
            outbox_id,
        }))
    }

    async fn upsert(
        &self,
        id: UserId,
        patch: &ProfilePatch,
    ) -> Result<Written<(Profile, bool)>, DbError> {
        let now = now_micros();
        // The write lock makes update-else-insert atomic: no other writer can slip between.
        let mut tx = self.begin_write().await?;
        let value = match apply_patch(&mut tx, id, patch, now).await? {
            Some(p) => (p, false),
            None => {
                let row = sqlx::query(AssertSqlSafe(format!(
                    "INSERT INTO profiles ({COLUMNS}) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL, $9, $9) RETURNING {COLUMNS}"
                )))
                .bind(id.to_string())
                .bind(patch.first_name.new_value())
                .bind(patch.last_name.new_value())
                .bind(patch.name.new_value())
                .bind(patch.email.new_value().map(Email::as_str))
                .bind(patch.phone.new_value())
                .bind(patch.address.new_value())
                .bind(patch.date_of_birth.new_value().copied().map(date_text))
                .bind(ts(now))
                .fetch_one(&mut *tx)
                .await
                .map_err(map_err)?;
                (profile_from_row(&row).map_err(map_err)?, true)
            }
        };
        let outbox_id = outbox(&mut tx, id, InvalidationScope::Profile, now).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(Written { value, outbox_id })
    }

    async fn delete(&self, id: UserId) -> Result<Option<Written<()>>, DbError> {
        let now = now_micros();
        let mut tx = self.begin_write().await?;
        // Explicit, not only ON DELETE CASCADE: a connection opened elsewhere without
        // `PRAGMA foreign_keys` must not leave documents behind.
        for table in [DocumentKind::Settings, DocumentKind::Preferences] {
            sqlx::query(AssertSqlSafe(format!(
                "DELETE FROM {} WHERE user_id = $1",
                table.as_str()
            )))
            .bind(id.to_string())
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        }
        let done = sqlx::query("DELETE FROM profiles WHERE user_id = $1")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        if done.rows_affected() == 0 {
            return Ok(None);
        }
        let outbox_id = outbox(&mut tx, id, InvalidationScope::All, now).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(Some(Written {
            value: (),
            outbox_id,
        }))
    }

    async fn fetch_document(
        &self,
        kind: DocumentKind,
        id: UserId,
    ) -> Result<Option<Document>, DbError> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT d.data, d.updated_at FROM profiles p \
             LEFT JOIN {} d ON d.user_id = p.user_id WHERE p.user_id = $1",
            kind.as_str()
        )))
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let data: Option<String> = row.try_get("data").map_err(map_err)?;
        let updated_at: Option<String> = row.try_get("updated_at").map_err(map_err)?;
        let data = match data {
            Some(text) => parse_json(&text).map_err(map_err)?,
            None => JsonObject::new(),
        };
        let updated_at = updated_at
            .map(|t| parse_ts("updated_at", &t))
            .transpose()
            .map_err(map_err)?;
        Ok(Some(Document { data, updated_at }))
    }

    async fn replace_document(
        &self,
        kind: DocumentKind,
        id: UserId,
        data: &JsonObject,
    ) -> Result<Option<Written<Document>>, DbError> {
        let now = now_micros();
        let text = serde_json::to_string(data)
            .map_err(|e| DbError::Other(sqlx::Error::Encode(Box::new(e))))?;
        let mut tx = self.begin_write().await?;
        if !exists(&mut tx, id).await? {
            return Ok(None);
        }
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {} (user_id, data, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (user_id) DO UPDATE SET data = excluded.data, updated_at = excluded.updated_at",
            kind.as_str()
        )))
        .bind(id.to_string())
        .bind(text)
        .bind(ts(now))
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        let outbox_id = outbox(&mut tx, id, InvalidationScope::Document(kind), now).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(Some(Written {
            value: Document {
                data: data.clone(),
                updated_at: Some(now),
            },
            outbox_id,
        }))
    }

    async fn record_logins(
        &self,
        logins: &[(UserId, DateTime<Utc>)],
    ) -> Result<LoginsWritten, DbError> {
        let mut out = LoginsWritten::default();
        if logins.is_empty() {
            return Ok(out);
        }
        let now = now_micros();
        // One transaction for the batch (SQLite is in process: statements are cheap).
        let mut tx = self.begin_write().await?;
        for (id, at) in logins {
            let at = at.trunc_subsecs(6);
            let done = sqlx::query(
                "UPDATE profiles SET last_login = $2 \
                 WHERE user_id = $1 AND (last_login IS NULL OR last_login < $3)",
            )
            .bind(id.to_string())
            .bind(ts(at))
            .bind(ts(at - TimeDelta::hours(1)))
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
            if done.rows_affected() > 0 {
                out.outbox_ids
                    .push(outbox(&mut tx, *id, InvalidationScope::Profile, now).await?);
                out.users.push(*id);
            }
        }
        tx.commit().await.map_err(map_err)?;
        Ok(out)
    }

    async fn recent_logins(
        &self,
        since: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Profile>, DbError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM profiles WHERE last_login > $1 \
             ORDER BY last_login DESC, user_id LIMIT $2"
        )))
        .bind(ts(since.trunc_subsecs(6)))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter()
            .map(profile_from_row)
            .collect::<Result<_, _>>()
            .map_err(map_err)
    }

    async fn insert_many(&self, profiles: &[Profile]) -> Result<u64, DbError> {
        if profiles.is_empty() {
            return Ok(0);
        }
        let mut inserted = 0;
        // One transaction per call: one fsync instead of one per row.
        let mut tx = self.begin_write().await?;
        for chunk in profiles.chunks(INSERT_CHUNK) {
            let row = format!("({})", placeholders(11));
            let values = vec![row.as_str(); chunk.len()].join(", ");
            let sql =
                format!("INSERT INTO profiles ({COLUMNS}) VALUES {values} ON CONFLICT DO NOTHING");
            let mut q = sqlx::query(AssertSqlSafe(sql)).persistent(false);
            for p in chunk {
                q = q
                    .bind(p.user_id.to_string())
                    .bind(p.first_name.clone())
                    .bind(p.last_name.clone())
                    .bind(p.name.clone())
                    .bind(p.email.as_ref().map(|e| e.as_str().to_owned()))
                    .bind(p.phone.clone())
                    .bind(p.address.clone())
                    .bind(p.date_of_birth.map(date_text))
                    .bind(p.last_login.map(|t| ts(t.trunc_subsecs(6))))
                    .bind(ts(p.created_at.trunc_subsecs(6)))
                    .bind(ts(p.updated_at.trunc_subsecs(6)));
            }
            inserted += q.execute(&mut *tx).await.map_err(map_err)?.rows_affected();
        }
        tx.commit().await.map_err(map_err)?;
        Ok(inserted)
    }

    async fn pending_invalidations(&self, limit: u32) -> Result<Vec<PendingInvalidation>, DbError> {
        let rows =
            sqlx::query("SELECT id, user_id, scope FROM cache_invalidations ORDER BY id LIMIT $1")
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await
                .map_err(map_err)?;
        rows.iter()
            .map(|r| {
                let user: String = r.try_get("user_id")?;
                Ok(PendingInvalidation {
                    id: r.try_get("id")?,
                    user_id: parse_uuid(&user)?,
                    scope: InvalidationScope::parse(r.try_get("scope")?),
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(map_err)
    }

    async fn clear_invalidations(&self, ids: &[i64]) -> Result<(), DbError> {
        for chunk in ids.chunks(IN_CHUNK) {
            let sql = format!(
                "DELETE FROM cache_invalidations WHERE id IN ({})",
                placeholders(chunk.len())
            );
            let mut q = sqlx::query(AssertSqlSafe(sql)).persistent(false);
            for id in chunk {
                q = q.bind(*id);
            }
            q.execute(&self.pool).await.map_err(map_err)?;
        }
        Ok(())
    }
}

/// The write timestamp, at the precision both backends keep (microseconds).
fn now_micros() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// Fixed-width stored form of a timestamp, so string comparison orders by time.
fn ts(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

fn date_text(d: NaiveDate) -> String {
    d.format("%Y-%m-%d").to_string()
}

/// `?, ?, …` with `n` placeholders.
fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

async fn exists(tx: &mut SqliteConnection, id: UserId) -> Result<bool, DbError> {
    let row = sqlx::query("SELECT 1 FROM profiles WHERE user_id = $1")
        .bind(id.to_string())
        .fetch_optional(tx)
        .await
        .map_err(map_err)?;
    Ok(row.is_some())
}

/// Applies `patch` (only the fields sent) and bumps `updated_at`; `None` when no such row.
async fn apply_patch(
    tx: &mut SqliteConnection,
    id: UserId,
    patch: &ProfilePatch,
    now: DateTime<Utc>,
) -> Result<Option<Profile>, DbError> {
    // One static statement whatever the patch (flag + value per column), prepared once.
    let row = sqlx::query(AssertSqlSafe(format!(
        "UPDATE profiles SET \
           first_name    = CASE WHEN $2  THEN $3  ELSE first_name    END, \
           last_name     = CASE WHEN $4  THEN $5  ELSE last_name     END, \
           name          = CASE WHEN $6  THEN $7  ELSE name          END, \
           email         = CASE WHEN $8  THEN $9  ELSE email         END, \
           phone         = CASE WHEN $10 THEN $11 ELSE phone         END, \
           address       = CASE WHEN $12 THEN $13 ELSE address       END, \
           date_of_birth = CASE WHEN $14 THEN $15 ELSE date_of_birth END, \
           updated_at    = $16 \
         WHERE user_id = $1 RETURNING {COLUMNS}"
    )))
    .bind(id.to_string())
    .bind(patch.first_name.changes())
    .bind(patch.first_name.new_value())
    .bind(patch.last_name.changes())
    .bind(patch.last_name.new_value())
    .bind(patch.name.changes())
    .bind(patch.name.new_value())
    .bind(patch.email.changes())
    .bind(patch.email.new_value().map(Email::as_str))
    .bind(patch.phone.changes())
    .bind(patch.phone.new_value())
    .bind(patch.address.changes())
    .bind(patch.address.new_value())
    .bind(patch.date_of_birth.changes())
    .bind(patch.date_of_birth.new_value().copied().map(date_text))
    .bind(ts(now))
    .fetch_optional(&mut *tx)
    .await
    .map_err(map_err)?;
    row.as_ref()
        .map(profile_from_row)
        .transpose()
        .map_err(map_err)
}

/// Records the cache invalidation that must follow this write, in the write's transaction.
async fn outbox(
    tx: &mut SqliteConnection,
    id: UserId,
    scope: InvalidationScope,
    now: DateTime<Utc>,
) -> Result<i64, DbError> {
    sqlx::query_scalar(
        "INSERT INTO cache_invalidations (user_id, scope, created_at) VALUES ($1, $2, $3) \
         RETURNING id",
    )
    .bind(id.to_string())
    .bind(scope.as_str())
    .bind(ts(now))
    .fetch_one(tx)
    .await
    .map_err(map_err)
}

fn decode_err(column: &str, err: impl std::error::Error + Send + Sync + 'static) -> sqlx::Error {
    sqlx::Error::ColumnDecode {
        index: column.to_owned(),
        source: Box::new(err),
    }
}

fn parse_uuid(s: &str) -> Result<UserId, sqlx::Error> {
    Uuid::try_parse(s)
        .map(UserId::from_uuid)
        .map_err(|e| decode_err("user_id", e))
}

fn parse_ts(column: &str, s: &str) -> Result<DateTime<Utc>, sqlx::Error> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| decode_err(column, e))
}

fn parse_json(s: &str) -> Result<JsonObject, sqlx::Error> {
    serde_json::from_str(s).map_err(|e| decode_err("data", e))
}

fn profile_from_row(row: &SqliteRow) -> Result<Profile, sqlx::Error> {
    let user_id: String = row.try_get("user_id")?;
    let email: Option<String> = row.try_get("email")?;
    let dob: Option<String> = row.try_get("date_of_birth")?;
    let last_login: Option<String> = row.try_get("last_login")?;
    let created_at: String = row.try_get("created_at")?;
    let updated_at: String = row.try_get("updated_at")?;
    Ok(Profile {
        user_id: parse_uuid(&user_id)?,
        first_name: row.try_get("first_name")?,
        last_name: row.try_get("last_name")?,
        name: row.try_get("name")?,
        email: email
            .map(|e| Email::parse(&e).map_err(|err| decode_err("email", err)))
            .transpose()?,
        phone: row.try_get("phone")?,
        address: row.try_get("address")?,
        date_of_birth: dob
            .map(|d| {
                NaiveDate::parse_from_str(&d, "%Y-%m-%d")
                    .map_err(|e| decode_err("date_of_birth", e))
            })
            .transpose()?,
        last_login: last_login.map(|t| parse_ts("last_login", &t)).transpose()?,
        created_at: parse_ts("created_at", &created_at)?,
        updated_at: parse_ts("updated_at", &updated_at)?,
    })
}

/// Classifies a driver error (see `classify`) and counts failures in `/metrics`.
fn map_err(e: sqlx::Error) -> DbError {
    classify(e).record_metric()
}

/// Turns unique violations into the domain conflicts (SQLite names the column or index in
/// its message) and a lock wait that outlasted the busy timeout into `Unavailable`.
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
