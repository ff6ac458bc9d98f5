//! PostgreSQL backend.
//!
//! Every write runs in one transaction together with its outbox row, and every call is
//! bounded on the client side as well, so that a database that vanishes from the network
//! (no RST, no FIN) yields `DbError::Unavailable` instead of a request hanging on a socket.

use std::future::Future;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, SubsecRound, Utc};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::types::Json;
use sqlx::{AssertSqlSafe, Row};
use uuid::Uuid;

use super::{
    DbError, InvalidationScope, LoginsWritten, PendingInvalidation, PoolOptions, PoolStats,
    ProfileRepo, Written,
};
use crate::domain::{
    Document, DocumentKind, Email, JsonObject, NewProfile, Profile, ProfilePatch, UserId,
};

/// Name of the primary key of `profiles` (see the migration).
const PK_CONSTRAINT: &str = "profiles_pkey";
/// Name of the unique index on `lower(email)` (see the migration).
const EMAIL_INDEX: &str = "profiles_email_lower_key";
/// Rows per `INSERT … SELECT FROM UNNEST(…)`: arrays are bound as 11 parameters whatever
/// the row count, so only statement size and duration limit this.
const INSERT_CHUNK: usize = 5_000;

const COLUMNS: &str = "user_id, first_name, last_name, name, email, phone, address, \
                       date_of_birth, last_login, created_at, updated_at";

/// The PostgreSQL implementation of [`ProfileRepo`].
#[derive(Debug, Clone)]
pub struct PostgresRepo {
    pool: PgPool,
    max_connections: u32,
    /// Client-side ceiling per call; `None` when no statement timeout is configured.
    call_timeout: Option<Duration>,
}

impl PostgresRepo {
    /// Opens the pool and one connection, failing with `Unavailable` within `acquire_timeout`
    /// when the server cannot be reached.
    pub async fn connect(url: &str, opts: &PoolOptions) -> Result<Self, DbError> {
        let mut connect = PgConnectOptions::from_str(url).map_err(DbError::Other)?;
        if connect.get_application_name().is_none() {
            connect = connect.application_name("user-api");
        }
        let stmt_ms = opts.statement_timeout.as_millis();
        if stmt_ms > 0 {
            // Sent in the startup packet, so it holds for every pooled connection with no
            // extra round trip.
            connect = connect.options([("statement_timeout", format!("{stmt_ms}ms"))]);
        }
        let pool = PgPoolOptions::new()
            .max_connections(opts.max_connections.max(1))
            .min_connections(opts.min_connections.min(opts.max_connections.max(1)))
            .acquire_timeout(opts.acquire_timeout)
            // A connection killed by a server restart is caught by the ping and replaced.
            .test_before_acquire(true)
            .connect_with(connect)
            .await
            .map_err(DbError::from_sqlx)?;
        let call_timeout = (!opts.statement_timeout.is_zero())
            .then(|| opts.acquire_timeout + opts.statement_timeout * 2 + Duration::from_secs(1));
        Ok(Self {
            pool,
            max_connections: opts.max_connections.max(1),
            call_timeout,
        })
    }

    /// Runs one repository call under the client-side ceiling.
    async fn bounded<T>(
        &self,
        fut: impl Future<Output = Result<T, DbError>>,
    ) -> Result<T, DbError> {
        match self.call_timeout {
            None => fut.await,
            Some(limit) => match tokio::time::timeout(limit, fut).await {
                Ok(r) => r,
                Err(_) => Err(DbError::Unavailable(sqlx::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "database call timed out",
                )))
                .record_metric()),
            },
        }
    }

    async fn fetch_inner(&self, id: UserId) -> Result<Option<Profile>, DbError> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM profiles WHERE user_id = $1"
        )))
        .bind(id.as_uuid())
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        row.as_ref()
            .map(profile_from_row)
            .transpose()
            .map_err(map_err)
    }

    async fn fetch_many_inner(&self, ids: &[UserId]) -> Result<Vec<Profile>, DbError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let uuids: Vec<Uuid> = ids.iter().map(UserId::as_uuid).collect();
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM profiles WHERE user_id = ANY($1)"
        )))
        .bind(uuids)
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter()
            .map(profile_from_row)
            .collect::<Result<_, _>>()
            .map_err(map_err)
    }

    async fn create_inner(
        &self,
        id: UserId,
        new: &NewProfile,
    ) -> Result<Written<Profile>, DbError> {
        let now = now_micros();
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        // ON CONFLICT on the key only: an existing id is reported as such even when its
        // row also holds the same e-mail; an e-mail held by another row still raises.
        let row = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO profiles ({COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL, $9, $9) \
             ON CONFLICT (user_id) DO NOTHING RETURNING {COLUMNS}"
        )))
        .bind(id.as_uuid())
        .bind(new.first_name.as_deref())
        .bind(new.last_name.as_deref())
        .bind(new.name.as_deref())
        .bind(new.email.as_ref().map(Email::as_str))
        .bind(new.phone.as_deref())
        .bind(new.address.as_deref())
        .bind(new.date_of_birth)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await
        .map_err(map_err)?;
        let Some(row) = row else {
            return Err(DbError::AlreadyExists);
        };
        let profile = profile_from_row(&row).map_err(map_err)?;
        let outbox_id = outbox(&mut tx, id, InvalidationScope::Profile, now).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(Written {
            value: profile,
            outbox_id,
        })
    }

    async fn update_inner(
        &self,
        id: UserId,
        patch: &ProfilePatch,
    ) -> Result<Option<Written<Profile>>, DbError> {
        let now = now_micros();
        let mut tx = self.pool.begin().await.map_err(map_err)?;
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

    async fn upsert_inner(
        &self,
        id: UserId,
        patch: &ProfilePatch,
    ) -> Result<Written<(Profile, bool)>, DbError> {
        let now = now_micros();
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        // Update first, insert if absent; a concurrent insert of the same id makes our
        // insert a no-op (it waits for that transaction), after which the update finds it.
        let mut result = None;
        for _ in 0..3 {
            if let Some(p) = apply_patch(&mut tx, id, patch, now).await? {
                result = Some((p, false));
                break;
            }
            let row = sqlx::query(AssertSqlSafe(format!(
                "INSERT INTO profiles ({COLUMNS}) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL, $9, $9) \
                 ON CONFLICT (user_id) DO NOTHING RETURNING {COLUMNS}"
            )))
            .bind(id.as_uuid())
            .bind(patch.first_name.new_value())
            .bind(patch.last_name.new_value())
            .bind(patch.name.new_value())
            .bind(patch.email.new_value().map(Email::as_str))
            .bind(patch.phone.new_value())
            .bind(patch.address.new_value())
            .bind(patch.date_of_birth.new_value().copied())
            .bind(now)
            .fetch_optional(&mut *tx)
            .await
            .map_err(map_err)?;
            if let Some(row) = row {
                result = Some((profile_from_row(&row).map_err(map_err)?, true));
                break;
            }
        }
        // Three lost races in a row means the row keeps appearing and vanishing.
        let Some(value) = result else {
            return Err(DbError::Other(sqlx::Error::Protocol(
                "upsert kept racing with concurrent deletes".into(),
            )));
        };
        let outbox_id = outbox(&mut tx, id, InvalidationScope::Profile, now).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(Written { value, outbox_id })
    }

    async fn delete_inner(&self, id: UserId) -> Result<Option<Written<()>>, DbError> {
        let now = now_micros();
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        // Documents go by ON DELETE CASCADE.
        let done = sqlx::query("DELETE FROM profiles WHERE user_id = $1")
            .bind(id.as_uuid())
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

    async fn fetch_document_inner(
        &self,
        kind: DocumentKind,
        id: UserId,
    ) -> Result<Option<Document>, DbError> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT d.data, d.updated_at FROM profiles p \
             LEFT JOIN {} d ON d.user_id = p.user_id WHERE p.user_id = $1",
            kind.as_str()
        )))
        .bind(id.as_uuid())
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let data: Option<Json<JsonObject>> = row.try_get("data").map_err(map_err)?;
        let updated_at: Option<DateTime<Utc>> = row.try_get("updated_at").map_err(map_err)?;
        Ok(Some(Document {
            data: data.map(|j| j.0).unwrap_or_default(),
            updated_at,
        }))
    }

    async fn replace_document_inner(
        &self,
        kind: DocumentKind,
        id: UserId,
        data: &JsonObject,
    ) -> Result<Option<Written<Document>>, DbError> {
        let now = now_micros();
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        // The foreign key decides "no such profile", race-free against a concurrent delete.
        let row = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {} (user_id, data, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (user_id) DO UPDATE SET data = EXCLUDED.data, updated_at = EXCLUDED.updated_at \
             RETURNING data, updated_at",
            kind.as_str()
        )))
        .bind(id.as_uuid())
        .bind(Json(data))
        .bind(now)
        .fetch_one(&mut *tx)
        .await;
        let row = match row {
            Ok(row) => row,
            Err(sqlx::Error::Database(db)) if db.is_foreign_key_violation() => return Ok(None),
            Err(e) => return Err(map_err(e)),
        };
        // Return what jsonb stored (it normalizes numbers and duplicate keys), so a later
        // read sees exactly this.
        let stored: Json<JsonObject> = row.try_get("data").map_err(map_err)?;
        let updated_at: DateTime<Utc> = row.try_get("updated_at").map_err(map_err)?;
        let outbox_id = outbox(&mut tx, id, InvalidationScope::Document(kind), now).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(Some(Written {
            value: Document {
                data: stored.0,
                updated_at: Some(updated_at),
            },
            outbox_id,
        }))
    }

    async fn record_logins_inner(
        &self,
        logins: &[(UserId, DateTime<Utc>)],
    ) -> Result<LoginsWritten, DbError> {
        if logins.is_empty() {
            return Ok(LoginsWritten::default());
        }
        let ids: Vec<uuid::Uuid> = logins.iter().map(|(id, _)| id.as_uuid()).collect();
        let ats: Vec<DateTime<Utc>> = logins.iter().map(|(_, at)| at.trunc_subsecs(6)).collect();
        // One statement for the whole batch: update, and one outbox row per changed profile.
        let rows: Vec<(i64, uuid::Uuid)> = sqlx::query_as(RECORD_LOGINS)
            .bind(&ids)
            .bind(&ats)
            .bind(InvalidationScope::Profile.as_str())
            .bind(now_micros())
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(LoginsWritten {
            users: rows.iter().map(|(_, u)| UserId::from_uuid(*u)).collect(),
            outbox_ids: rows.iter().map(|(id, _)| *id).collect(),
        })
    }

    async fn recent_logins_inner(
        &self,
        since: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Profile>, DbError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM profiles WHERE last_login > $1 \
             ORDER BY last_login DESC, user_id LIMIT $2"
        )))
        .bind(since)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter()
            .map(profile_from_row)
            .collect::<Result<_, _>>()
            .map_err(map_err)
    }

    async fn insert_chunk(&self, chunk: &[Profile]) -> Result<u64, DbError> {
        let mut ids = Vec::with_capacity(chunk.len());
        let mut first = Vec::with_capacity(chunk.len());
        let mut last = Vec::with_capacity(chunk.len());
        let mut name = Vec::with_capacity(chunk.len());
        let mut email = Vec::with_capacity(chunk.len());
        let mut phone = Vec::with_capacity(chunk.len());
        let mut address = Vec::with_capacity(chunk.len());
        let mut dob: Vec<Option<NaiveDate>> = Vec::with_capacity(chunk.len());
        let mut login: Vec<Option<DateTime<Utc>>> = Vec::with_capacity(chunk.len());
        let mut created = Vec::with_capacity(chunk.len());
        let mut updated = Vec::with_capacity(chunk.len());
        for p in chunk {
            ids.push(p.user_id.as_uuid());
            first.push(p.first_name.clone());
            last.push(p.last_name.clone());
            name.push(p.name.clone());
            email.push(p.email.as_ref().map(|e| e.as_str().to_owned()));
            phone.push(p.phone.clone());
            address.push(p.address.clone());
            dob.push(p.date_of_birth);
            login.push(p.last_login.map(|t| t.trunc_subsecs(6)));
            created.push(p.created_at.trunc_subsecs(6));
            updated.push(p.updated_at.trunc_subsecs(6));
        }
        // One statement, eleven array parameters: far below the 65535-parameter limit
        // whatever the chunk size. Conflicts (id or e-mail) skip the row.
        let done = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO profiles ({COLUMNS}) \
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], \
                                  $6::text[], $7::text[], $8::date[], $9::timestamptz[], \
                                  $10::timestamptz[], $11::timestamptz[]) \
             ON CONFLICT DO NOTHING"
        )))
        .bind(ids)
        .bind(first)
        .bind(last)
        .bind(name)
        .bind(email)
        .bind(phone)
        .bind(address)
        .bind(dob)
        .bind(login)
        .bind(created)
        .bind(updated)
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(done.rows_affected())
    }

    async fn pending_inner(&self, limit: u32) -> Result<Vec<PendingInvalidation>, DbError> {
        let rows =
            sqlx::query("SELECT id, user_id, scope FROM cache_invalidations ORDER BY id LIMIT $1")
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await
                .map_err(map_err)?;
        rows.iter()
            .map(|r| {
                Ok(PendingInvalidation {
                    id: r.try_get("id")?,
                    user_id: UserId::from_uuid(r.try_get("user_id")?),
                    scope: InvalidationScope::parse(r.try_get("scope")?),
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(map_err)
    }

    async fn clear_inner(&self, ids: &[i64]) -> Result<(), DbError> {
        if ids.is_empty() {
            return Ok(());
        }
        sqlx::query("DELETE FROM cache_invalidations WHERE id = ANY($1)")
            .bind(ids)
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(())
    }
}

#[async_trait]
impl ProfileRepo for PostgresRepo {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn migrate(&self) -> Result<(), DbError> {
        // No client-side ceiling: a large migration may legitimately take long.
        sqlx::migrate!("./migrations/postgres")
            .run(&self.pool)
            .await
            .map_err(|e| match e {
                sqlx::migrate::MigrateError::Execute(e) => DbError::from_sqlx(e),
                other => DbError::Migrate(other),
            })
    }

    async fn ping(&self) -> Result<(), DbError> {
        self.bounded(async {
            sqlx::query("SELECT 1")
                .execute(&self.pool)
                .await
                .map_err(map_err)?;
            Ok(())
        })
        .await
    }

    fn pool_stats(&self) -> PoolStats {
        PoolStats {
            size: self.pool.size(),
            idle: u32::try_from(self.pool.num_idle()).unwrap_or(u32::MAX),
            max: self.max_connections,
        }
    }

    async fn fetch(&self, id: UserId) -> Result<Option<Profile>, DbError> {
        self.bounded(self.fetch_inner(id)).await
    }

    async fn fetch_many(&self, ids: &[UserId]) -> Result<Vec<Profile>, DbError> {
        self.bounded(self.fetch_many_inner(ids)).await
    }

    async fn create(&self, id: UserId, new: &NewProfile) -> Result<Written<Profile>, DbError> {
        self.bounded(self.create_inner(id, new)).await
    }

    async fn update(
        &self,
        id: UserId,
        patch: &ProfilePatch,
    ) -> Result<Option<Written<Profile>>, DbError> {
        self.bounded(self.update_inner(id, patch)).await
    }

    async fn upsert(
        &self,
        id: UserId,
        patch: &ProfilePatch,
    ) -> Result<Written<(Profile, bool)>, DbError> {
        self.bounded(self.upsert_inner(id, patch)).await
    }

    async fn delete(&self, id: UserId) -> Result<Option<Written<()>>, DbError> {
        self.bounded(self.delete_inner(id)).await
    }

    async fn fetch_document(
        &self,
        kind: DocumentKind,
        id: UserId,
    ) -> Result<Option<Document>, DbError> {
        self.bounded(self.fetch_document_inner(kind, id)).await
    }

    async fn replace_document(
        &self,
        kind: DocumentKind,
        id: UserId,
        data: &JsonObject,
    ) -> Result<Option<Written<Document>>, DbError> {
        self.bounded(self.replace_document_inner(kind, id, data))
            .await
    }

    async fn record_logins(
        &self,
        logins: &[(UserId, DateTime<Utc>)],
    ) -> Result<LoginsWritten, DbError> {
        self.bounded(self.record_logins_inner(logins)).await
    }

    async fn recent_logins(
        &self,
        since: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Profile>, DbError> {
        self.bounded(self.recent_logins_inner(since, limit)).await
    }

    async fn insert_many(&self, profiles: &[Profile]) -> Result<u64, DbError> {
        let mut inserted = 0;
        // Each chunk is its own statement and its own ceiling, so big seeds are not cut off.
        for chunk in profiles.chunks(INSERT_CHUNK) {
            inserted += self.bounded(self.insert_chunk(chunk)).await?;
        }
        Ok(inserted)
    }

    async fn pending_invalidations(&self, limit: u32) -> Result<Vec<PendingInvalidation>, DbError> {
        self.bounded(self.pending_inner(limit)).await
    }

    async fn clear_invalidations(&self, ids: &[i64]) -> Result<(), DbError> {
        self.bounded(self.clear_inner(ids)).await
    }
}

/// The write timestamp: PostgreSQL keeps microseconds, so anything finer would make the
/// value returned by a write differ from the one read back later.
fn now_micros() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// Applies `patch` (only the fields sent) and bumps `updated_at`; `None` when no such row.
async fn apply_patch(
    tx: &mut PgConnection,
    id: UserId,
    patch: &ProfilePatch,
    now: DateTime<Utc>,
) -> Result<Option<Profile>, DbError> {
    // One static statement whatever the patch (flag + value per column), so it is prepared
    // once per connection instead of once per combination of fields.
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
    .bind(id.as_uuid())
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
    .bind(patch.date_of_birth.new_value().copied())
    .bind(now)
    .fetch_optional(&mut *tx)
    .await
    .map_err(map_err)?;
    row.as_ref()
        .map(profile_from_row)
        .transpose()
        .map_err(map_err)
}

/// Records the cache invalidation that must follow this write, in the write's transaction.
/// $1 user ids, $2 login times (unique users), $3 the outbox scope, $4 now.
const RECORD_LOGINS: &str = "\
    WITH input AS (SELECT * FROM unnest($1::uuid[], $2::timestamptz[]) AS i(user_id, at)), \
    changed AS ( \
        UPDATE profiles p SET last_login = i.at FROM input i \
        WHERE p.user_id = i.user_id \
          AND (p.last_login IS NULL OR p.last_login < i.at - interval '1 hour') \
        RETURNING p.user_id) \
    INSERT INTO cache_invalidations (user_id, scope, created_at) \
    SELECT user_id, $3, $4 FROM changed RETURNING id, user_id";

async fn outbox(
    tx: &mut PgConnection,
    id: UserId,
    scope: InvalidationScope,
    now: DateTime<Utc>,
) -> Result<i64, DbError> {
    sqlx::query_scalar(
        "INSERT INTO cache_invalidations (user_id, scope, created_at) VALUES ($1, $2, $3) \
         RETURNING id",
    )
    .bind(id.as_uuid())
    .bind(scope.as_str())
    .bind(now)
    .fetch_one(tx)
    .await
    .map_err(map_err)
}

fn profile_from_row(row: &PgRow) -> Result<Profile, sqlx::Error> {
    let email: Option<String> = row.try_get("email")?;
    let email = email
        .map(|e| {
            Email::parse(&e).map_err(|err| sqlx::Error::ColumnDecode {
                index: "email".into(),
                source: Box::new(err),
            })
        })
        .transpose()?;
    Ok(Profile {
        user_id: UserId::from_uuid(row.try_get("user_id")?),
        first_name: row.try_get("first_name")?,
        last_name: row.try_get("last_name")?,
        name: row.try_get("name")?,
        email,
        phone: row.try_get("phone")?,
        address: row.try_get("address")?,
        date_of_birth: row.try_get("date_of_birth")?,
        last_login: row.try_get("last_login")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// Classifies a driver error (see `classify`) and counts failures in `/metrics`.
fn map_err(e: sqlx::Error) -> DbError {
    classify(e).record_metric()
}

/// Turns unique violations into the domain conflicts (told apart by constraint name) and a
/// cancelled statement (our `statement_timeout`) into `Unavailable`; the rest as usual.
fn classify(e: sqlx::Error) -> DbError {
    if let sqlx::Error::Database(db) = &e {
        if db.is_unique_violation() {
            match db.constraint() {
                Some(PK_CONSTRAINT) => return DbError::AlreadyExists,
                Some(EMAIL_INDEX) => return DbError::EmailTaken,
                _ => {}
            }
        }
        if db.code().as_deref() == Some("57014") {
            return DbError::Unavailable(e);
        }
    }
    DbError::from_sqlx(e)
}
