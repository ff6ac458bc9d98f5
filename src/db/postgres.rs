//! PostgreSQL: the pool, and what this dialect does its own way (arrays for lists, one
//! statement for a batch of logins, `UNNEST` for bulk inserts, errors by constraint name).

use std::str::FromStr;

use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, Utc};
use sqlx::error::BoxDynError;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgArguments, PgConnectOptions, PgConnection};
use sqlx::{Arguments, Connection, Pool, Postgres, Transaction};

use super::codec::DbTime;
use super::sql::{self, Sql};
use super::sql_repo::{Dialect, SqlRepo};
use super::{DbError, InvalidationScope, PoolOptions, takeover};
use crate::domain::{ColumnVisitor, FieldSpec, FieldType, Profile, UserId};

/// The PostgreSQL repository.
pub type PostgresRepo = SqlRepo<Postgres>;

/// Name of the primary key of `profiles` (see the migration): on `user_id` in this
/// service's own schema, on `id` in a table taken over from the Python service.
const PK_CONSTRAINT: &str = "profiles_pkey";
/// Name of the unique constraint on `user_id` in a table taken over from the Python service.
const USER_ID_KEY: &str = "profiles_user_id_key";
/// Name of the unique index on `lower(email)` (see the migration).
const EMAIL_INDEX: &str = "profiles_email_lower_key";
/// Rows per `INSERT … SELECT FROM UNNEST(…)`: arrays are bound as one parameter per column whatever
/// the row count, so only statement size and duration limit this.
const INSERT_CHUNK: usize = 5_000;

/// $1 ids.
static FETCH_MANY: Sql = Sql::new(|| {
    format!(
        "SELECT {} FROM profiles WHERE user_id = ANY($1)",
        sql::select_list()
    )
});

/// $1 outbox row ids.
const CLEAR_INVALIDATIONS: &str = "DELETE FROM cache_invalidations WHERE id = ANY($1)";

/// $1 outbox row ids: those no other drainer holds, held until the transaction ends.
const CLAIM_ROWS: &str =
    "SELECT id FROM cache_invalidations WHERE id = ANY($1) ORDER BY id FOR UPDATE SKIP LOCKED";

/// $1 user ids, $2 login times (unique users), $3 the outbox scope, $4 now. One statement
/// for the whole batch: the update, and one outbox row per changed profile.
const RECORD_LOGINS: &str = "\
    WITH input AS (SELECT * FROM unnest($1::uuid[], $2::timestamptz[]) AS i(user_id, at)), \
    changed AS ( \
        UPDATE profiles p SET last_login = i.at FROM input i \
        WHERE p.user_id = i.user_id \
          AND (p.last_login IS NULL OR p.last_login < i.at - interval '1 hour') \
        RETURNING p.user_id) \
    INSERT INTO cache_invalidations (user_id, scope, created_at) \
    SELECT user_id, $3, $4 FROM changed RETURNING id, user_id";

/// An array per column, cast to its type; conflicts (ids or e-mail) skip the row.
static INSERT_MANY: Sql = Sql::new(|| {
    let arrays: Vec<String> = sql::columns()
        .enumerate()
        .map(|(i, (_, ty))| format!("${}::{ty}[]", i + 1))
        .collect();
    format!(
        "INSERT INTO profiles ({}) SELECT * FROM UNNEST({}) ON CONFLICT DO NOTHING",
        sql::column_list(),
        arrays.join(", ")
    )
});

/// The batch insert's arguments: each field of a chunk as one array.
#[derive(Default)]
struct Columns {
    args: PgArguments,
    error: Option<BoxDynError>,
}

impl Columns {
    fn add<T: for<'q> sqlx::Encode<'q, Postgres> + sqlx::Type<Postgres>>(&mut self, value: T) {
        if self.error.is_none() {
            self.error = self.args.add(value).err();
        }
    }
}

impl ColumnVisitor for Columns {
    fn column<T: FieldType>(&mut self, _: &'static FieldSpec, values: Vec<Option<&T>>) {
        if self.error.is_none() {
            self.error = self.args.add(values).err();
        }
    }
}

/// The embedded migrations (their checksums are what the takeover records).
static MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

impl SqlRepo<Postgres> {
    /// Opens the pool, with the statement timeout set for every connection.
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
        // A connection killed by a server restart is caught by the ping and replaced.
        Self::open(connect, opts, |pool| pool.test_before_acquire(true)).await
    }
}

#[async_trait]
impl Dialect for Postgres {
    const BACKEND: &'static str = "postgres";

    async fn migrate(pool: &Pool<Self>) -> Result<(), DbError> {
        // A connection of its own, out of the pool: the pool's statement timeout must not
        // cut off an index build or a migration's rewrite, and the advisory lock the step
        // holds ends with the session however the step ends.
        let mut conn = pool.acquire().await.map_err(Self::map_err)?.detach();
        let result = takeover::migrate(&mut conn, &MIGRATOR).await;
        if let Err(e) = conn.close().await {
            tracing::debug!(error = %e, "closing the migration connection");
        }
        result
    }

    fn add_field<T: FieldType>(
        args: &mut PgArguments,
        value: Option<&T>,
    ) -> Result<(), BoxDynError> {
        args.add(value)
    }

    async fn begin_write(pool: &Pool<Self>) -> Result<Transaction<'static, Self>, sqlx::Error> {
        pool.begin().await
    }

    async fn before_create(_: &mut PgConnection, _: UserId) -> Result<(), DbError> {
        // `ON CONFLICT (user_id)` already reports an existing id before any e-mail conflict.
        Ok(())
    }

    async fn before_delete(_: &mut PgConnection, _: UserId) -> Result<(), DbError> {
        // Documents go by ON DELETE CASCADE, which also locks in a deadlock-free order
        // (profile first) against a concurrent document write.
        Ok(())
    }

    // Mirrors `sqlite.rs` on purpose (one trait, two dialects): only the bound id array
    // differs (a typed `uuid[]` here, a JSON array there).
    async fn fetch_many(pool: &Pool<Self>, ids: &[UserId]) -> Result<Vec<Profile>, DbError> {
        sqlx::query_as(FETCH_MANY.get())
            .bind(ids)
            .fetch_all(pool)
            .await
            .map_err(Self::map_err)
    }

    async fn record_logins(
        pool: &Pool<Self>,
        logins: &[(UserId, DateTime<Utc>)],
        now: DateTime<Utc>,
    ) -> Result<Vec<(i64, UserId)>, DbError> {
        let ids: Vec<UserId> = logins.iter().map(|(id, _)| *id).collect();
        let ats: Vec<DateTime<Utc>> = logins.iter().map(|(_, at)| at.trunc_subsecs(6)).collect();
        sqlx::query_as(RECORD_LOGINS)
            .bind(ids)
            .bind(ats)
            .bind(InvalidationScope::Profile.as_str())
            .bind(DbTime(now))
            .fetch_all(pool)
            .await
            .map_err(Self::map_err)
    }

    async fn insert_many(pool: &Pool<Self>, profiles: &[Profile]) -> Result<u64, DbError> {
        let mut inserted = 0;
        for chunk in profiles.chunks(INSERT_CHUNK) {
            let times = |f: &dyn Fn(&Profile) -> Option<DateTime<Utc>>| {
                chunk
                    .iter()
                    .map(|p| f(p).map(|t| t.trunc_subsecs(6)))
                    .collect::<Vec<_>>()
            };
            let mut columns = Columns::default();
            columns.add(chunk.iter().map(|p| p.id).collect::<Vec<_>>());
            columns.add(chunk.iter().map(|p| p.user_id).collect::<Vec<_>>());
            Profile::visit_columns(chunk, &mut columns);
            columns.add(times(&|p| p.last_login));
            columns.add(times(&|p| Some(p.created_at)));
            columns.add(times(&|p| Some(p.updated_at)));
            if let Some(e) = columns.error {
                return Err(Self::map_err(sqlx::Error::Encode(e)));
            }
            let done = sqlx::query_with(INSERT_MANY.get(), columns.args)
                .execute(pool)
                .await
                .map_err(Self::map_err)?;
            inserted += done.rows_affected();
        }
        Ok(inserted)
    }

    async fn clear_invalidations(pool: &Pool<Self>, ids: &[i64]) -> Result<(), DbError> {
        sqlx::query(CLEAR_INVALIDATIONS)
            .bind(ids)
            .execute(pool)
            .await
            .map_err(Self::map_err)?;
        Ok(())
    }

    async fn claim_rows(conn: &mut PgConnection, ids: &[i64]) -> Result<Vec<i64>, DbError> {
        sqlx::query_scalar(CLAIM_ROWS)
            .bind(ids)
            .fetch_all(conn)
            .await
            .map_err(Self::map_err)
    }

    async fn delete_rows(conn: &mut PgConnection, ids: &[i64]) -> Result<(), DbError> {
        sqlx::query(CLEAR_INVALIDATIONS)
            .bind(ids)
            .execute(conn)
            .await
            .map_err(Self::map_err)?;
        Ok(())
    }

    /// Unique violations become the domain conflicts (told apart by constraint name), a
    /// cancelled statement (our `statement_timeout`) `Unavailable`; the rest as usual.
    fn classify(e: sqlx::Error) -> DbError {
        if let sqlx::Error::Database(db) = &e {
            if db.is_unique_violation() {
                match db.constraint() {
                    Some(PK_CONSTRAINT | USER_ID_KEY) => return DbError::AlreadyExists,
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
}
