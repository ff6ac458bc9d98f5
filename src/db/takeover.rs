//! PostgreSQL's schema step: taking over, in place, a database the Python service left
//! (SPEC 7), then the embedded migrations.
//!
//! A database with a `profiles` table and no `_sqlx_migrations` history (or an empty one)
//! is the Python service's. Its shape is checked before anything is written; any other shape is refused
//! with every difference named ([`ForeignSchema`]) and nothing changed. An accepted table
//! is adopted in three steps, each safe to interrupt and resume (docs/database.md says
//! which lock each takes and for how long):
//!
//! 1. One transaction adds the missing columns (no default, so no table rewrite) and the
//!    missing tables. After it the table has a second accepted shape, "adopted".
//! 2. Outside any transaction: NULL timestamps are backfilled and the indexes of the new
//!    columns are built `CONCURRENTLY`, so readers and writers are never blocked.
//! 3. One transaction records migrations 1..=[`BASELINE_VERSION`] as applied, with their
//!    real checksums (sqlx's own `skip`). Until then the history does not exist, so a start
//!    interrupted anywhere before finds "adopted" and resumes at step 2.
//!
//! sqlx then runs every later migration as on any other database. The whole step runs
//! under an advisory lock, so instances starting together adopt once.

use std::fmt;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::PgConnection;
use sqlx::{Connection, Executor, Postgres};

use super::DbError;
use super::sql_repo::Dialect;

/// The last migration whose end state the adoption produces: 0001 (the tables) and 0002
/// (`profiles.id`, which the Python table already has). Later ones run normally.
pub const BASELINE_VERSION: i64 = 2;

/// Advisory lock of the schema step ("user-api" in ASCII), apart from sqlx's own.
const LOCK_KEY: i64 = 0x7573_6572_2d61_7069;
/// How often a start polls for the lock another instance holds.
const LOCK_POLL: Duration = Duration::from_millis(200);
/// How long step 1 may queue for the table's lock before it gives up and retries: while it
/// queues, new readers of `profiles` queue behind it.
const DDL_LOCK_TIMEOUT: &str = "SET LOCAL lock_timeout = '2s'";
/// Attempts of step 1 before the start fails (nothing changed).
const DDL_ATTEMPTS: u32 = 5;
/// Pause between two attempts of step 1.
const DDL_RETRY_PAUSE: Duration = Duration::from_secs(1);

/// The tables the adoption creates (as migration 0001 creates them).
const NEW_TABLES: [&str; 3] = ["settings", "preferences", "cache_invalidations"];

/// Step 1: the columns and tables of migration 0001 the Python table lacks. Catalog
/// changes only: `ADD COLUMN` without a default writes no row, and the new tables are
/// empty, so the foreign keys are checked against nothing.
const ADOPT_DDL: &str = "\
ALTER TABLE profiles
    ADD COLUMN email         text,
    ADD COLUMN date_of_birth date,
    ADD COLUMN last_login    timestamptz;

CREATE TABLE settings (
    user_id    uuid        NOT NULL PRIMARY KEY REFERENCES profiles (user_id) ON DELETE CASCADE,
    data       jsonb       NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(data) = 'object'),
    updated_at timestamptz NOT NULL
);

CREATE TABLE preferences (
    user_id    uuid        NOT NULL PRIMARY KEY REFERENCES profiles (user_id) ON DELETE CASCADE,
    data       jsonb       NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(data) = 'object'),
    updated_at timestamptz NOT NULL
);

CREATE TABLE cache_invalidations (
    id         bigserial   PRIMARY KEY,
    user_id    uuid        NOT NULL,
    scope      text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);";

/// Step 2: rows the Python service left without timestamps get the other one, or now.
/// Row locks on those rows only; reads go on.
const BACKFILL_TIMESTAMPS: &str = "\
UPDATE profiles
   SET created_at = COALESCE(created_at, updated_at, now()),
       updated_at = COALESCE(updated_at, created_at, now())
 WHERE created_at IS NULL OR updated_at IS NULL";

/// An index of migration 0001 on a column the adoption added, built without blocking.
struct ConcurrentIndex {
    name: &'static str,
    create: &'static str,
    drop: &'static str,
}

/// Step 2: the indexes of 0001 on the new columns (as 0001 defines them).
const INDEXES: [ConcurrentIndex; 2] = [
    ConcurrentIndex {
        name: "profiles_email_lower_key",
        create: "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS profiles_email_lower_key \
                 ON profiles (lower(email))",
        drop: "DROP INDEX CONCURRENTLY IF EXISTS profiles_email_lower_key",
    },
    ConcurrentIndex {
        name: "profiles_last_login_idx",
        create: "CREATE INDEX CONCURRENTLY IF NOT EXISTS profiles_last_login_idx \
                 ON profiles (last_login DESC) WHERE last_login IS NOT NULL",
        drop: "DROP INDEX CONCURRENTLY IF EXISTS profiles_last_login_idx",
    },
];

/// A column as the catalog describes it: name, `format_type`, NOT NULL.
type ColumnSpec = (&'static str, &'static str, bool);

/// The Python service's `profiles` (SPEC 7). Defaults are not compared: this service
/// sends every value it writes.
const PYTHON_COLUMNS: [ColumnSpec; 9] = [
    ("id", "uuid", true),
    ("user_id", "uuid", true),
    ("first_name", "character varying", false),
    ("last_name", "character varying", false),
    ("name", "character varying", false),
    ("address", "character varying", false),
    ("phone", "character varying", false),
    ("created_at", "timestamp with time zone", false),
    ("updated_at", "timestamp with time zone", false),
];

/// The columns step 1 adds.
const ADDED_COLUMNS: [ColumnSpec; 3] = [
    ("email", "text", false),
    ("date_of_birth", "date", false),
    ("last_login", "timestamp with time zone", false),
];

/// A start refused to take over the existing database; nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "refusing to take over the existing `profiles` table (it has no migration history, so it \
     must be the Python service's, SPEC 7); nothing was changed. It differs: {}",
    join(.differences)
)]
pub struct ForeignSchema {
    /// Every way the table (or the database around it) differs from what can be adopted.
    pub differences: Vec<SchemaDifference>,
}

fn join(differences: &[SchemaDifference]) -> String {
    differences
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// One difference between an existing database and the Python service's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaDifference {
    /// `profiles` is a view, a partitioned table, …
    NotATable { relkind: String },
    /// A column the Python table has is not there.
    MissingColumn {
        column: String,
        expected_type: String,
    },
    /// A column the Python table does not have.
    UnknownColumn { column: String, found_type: String },
    /// A column of another type.
    WrongType {
        column: String,
        found: String,
        expected: String,
    },
    /// NOT NULL where the Python table has a nullable column, or the reverse.
    Nullability {
        column: String,
        expected_not_null: bool,
    },
    /// The primary key is not `(id)`.
    PrimaryKey { found: Option<String> },
    /// No unique constraint on `user_id` alone.
    UserIdNotUnique,
    /// A unique index the Python table does not have (it could refuse this service's writes).
    UnexpectedUniqueIndex { name: String, definition: String },
    /// A check, foreign-key or exclusion constraint the Python table does not have.
    UnexpectedConstraint { name: String, definition: String },
    /// A table this service would create is already there.
    TableExists { table: String },
    /// A half-done adoption whose tables are not all there.
    TableMissing { table: String },
}

impl fmt::Display for SchemaDifference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nullability = |not_null: bool| if not_null { "NOT NULL" } else { "nullable" };
        match self {
            Self::NotATable { relkind } => {
                write!(f, "`profiles` is not a plain table (relkind '{relkind}')")
            }
            Self::MissingColumn {
                column,
                expected_type,
            } => write!(f, "column `{column}` ({expected_type}) is missing"),
            Self::UnknownColumn { column, found_type } => write!(
                f,
                "column `{column}` ({found_type}) is not in the Python service's table"
            ),
            Self::WrongType {
                column,
                found,
                expected,
            } => write!(f, "column `{column}` is {found}, expected {expected}"),
            Self::Nullability {
                column,
                expected_not_null,
            } => write!(
                f,
                "column `{column}` is {}, expected {}",
                nullability(!expected_not_null),
                nullability(*expected_not_null)
            ),
            Self::PrimaryKey { found: Some(cols) } => {
                write!(f, "the primary key is ({cols}), expected (id)")
            }
            Self::PrimaryKey { found: None } => write!(f, "there is no primary key, expected (id)"),
            Self::UserIdNotUnique => write!(f, "`user_id` has no unique constraint"),
            Self::UnexpectedUniqueIndex { name, definition } => write!(
                f,
                "unique index `{name}` is not the Python service's ({definition})"
            ),
            Self::UnexpectedConstraint { name, definition } => write!(
                f,
                "constraint `{name}` is not the Python service's ({definition})"
            ),
            Self::TableExists { table } => write!(
                f,
                "table `{table}` already exists (the Python service has none; this service \
                 creates it)"
            ),
            Self::TableMissing { table } => write!(
                f,
                "table `{table}` is missing (the adoption's first step creates it with the new \
                 columns)"
            ),
        }
    }
}

/// What the catalog says about `profiles` and the tables around it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Shape {
    /// `pg_class.relkind` of `profiles`.
    pub relkind: String,
    /// Name, `format_type`, NOT NULL; in column order.
    pub columns: Vec<(String, String, bool)>,
    /// The primary key's columns, comma-separated.
    pub primary_key: Option<String>,
    /// Unique indexes: name, the single plain column it covers (if it is one), definition.
    pub unique_indexes: Vec<(String, Option<String>, String)>,
    /// Check, foreign-key, exclusion and trigger constraints: name and definition.
    pub constraints: Vec<(String, String)>,
    /// Which of [`NEW_TABLES`] exist.
    pub existing_tables: Vec<String>,
}

/// How far an existing `profiles` table has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The Python service's table, untouched.
    Python,
    /// Step 1 done (columns and tables added), history not yet recorded.
    Adopted,
}

/// Checks `shape` against the two shapes that can be adopted; every difference otherwise.
pub fn stage_of(shape: &Shape) -> Result<Stage, ForeignSchema> {
    use SchemaDifference as D;
    if shape.relkind != "r" {
        return Err(ForeignSchema {
            differences: vec![D::NotATable {
                relkind: shape.relkind.clone(),
            }],
        });
    }
    let has = |name: &str| shape.columns.iter().any(|(n, _, _)| n == name);
    // All of step 1's columns there: a resumed adoption. Only some: compared with the
    // Python table, so each is named as unknown.
    let stage = if ADDED_COLUMNS.iter().all(|(n, _, _)| has(n)) {
        Stage::Adopted
    } else {
        Stage::Python
    };
    let expected: Vec<ColumnSpec> = match stage {
        Stage::Python => PYTHON_COLUMNS.to_vec(),
        Stage::Adopted => PYTHON_COLUMNS
            .iter()
            .chain(&ADDED_COLUMNS)
            .copied()
            .collect(),
    };
    let mut differences = Vec::new();
    for &(name, ty, not_null) in &expected {
        match shape.columns.iter().find(|(n, _, _)| n == name) {
            None => differences.push(D::MissingColumn {
                column: name.into(),
                expected_type: ty.into(),
            }),
            Some((_, found, _)) if found != ty => differences.push(D::WrongType {
                column: name.into(),
                found: found.clone(),
                expected: ty.into(),
            }),
            Some((_, _, found_not_null)) if *found_not_null != not_null => {
                differences.push(D::Nullability {
                    column: name.into(),
                    expected_not_null: not_null,
                });
            }
            Some(_) => {}
        }
    }
    for (name, ty, _) in &shape.columns {
        if !expected.iter().any(|(n, _, _)| n == name) {
            differences.push(D::UnknownColumn {
                column: name.clone(),
                found_type: ty.clone(),
            });
        }
    }
    if shape.primary_key.as_deref() != Some("id") {
        differences.push(D::PrimaryKey {
            found: shape.primary_key.clone(),
        });
    }
    if !shape
        .unique_indexes
        .iter()
        .any(|(_, col, _)| col.as_deref() == Some("user_id"))
    {
        differences.push(D::UserIdNotUnique);
    }
    for (name, col, definition) in &shape.unique_indexes {
        let on_a_key = matches!(col.as_deref(), Some("id" | "user_id"));
        let ours = stage == Stage::Adopted && name == INDEXES[0].name;
        if !on_a_key && !ours {
            differences.push(D::UnexpectedUniqueIndex {
                name: name.clone(),
                definition: definition.clone(),
            });
        }
    }
    for (name, definition) in &shape.constraints {
        differences.push(D::UnexpectedConstraint {
            name: name.clone(),
            definition: definition.clone(),
        });
    }
    for table in NEW_TABLES {
        let exists = shape.existing_tables.iter().any(|t| t == table);
        match stage {
            Stage::Python if exists => differences.push(D::TableExists {
                table: table.into(),
            }),
            Stage::Adopted if !exists => differences.push(D::TableMissing {
                table: table.into(),
            }),
            _ => {}
        }
    }
    if differences.is_empty() {
        Ok(stage)
    } else {
        Err(ForeignSchema { differences })
    }
}

fn db_err(e: sqlx::Error) -> DbError {
    <Postgres as Dialect>::map_err(e)
}

/// Reads the shape of `profiles` (which exists) from the catalog.
async fn read_shape(conn: &mut PgConnection) -> Result<Shape, DbError> {
    let relkind: String =
        sqlx::query_scalar("SELECT relkind::text FROM pg_class WHERE oid = 'profiles'::regclass")
            .fetch_one(&mut *conn)
            .await
            .map_err(db_err)?;
    let columns: Vec<(String, String, bool)> = sqlx::query_as(
        "SELECT attname::text, format_type(atttypid, atttypmod), attnotnull FROM pg_attribute \
         WHERE attrelid = 'profiles'::regclass AND attnum > 0 AND NOT attisdropped \
         ORDER BY attnum",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(db_err)?;
    let primary_key: Option<String> = sqlx::query_scalar(
        "SELECT string_agg(a.attname::text, ', ' ORDER BY k.ord) \
         FROM pg_index i, unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord), pg_attribute a \
         WHERE i.indrelid = 'profiles'::regclass AND i.indisprimary \
           AND a.attrelid = i.indrelid AND a.attnum = k.attnum",
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(db_err)?;
    // A single plain column, whole table, valid: what `ON CONFLICT (user_id)` and the
    // documents' foreign keys can rely on.
    let unique_indexes: Vec<(String, Option<String>, String)> = sqlx::query_as(
        "SELECT c.relname::text, \
                CASE WHEN i.indnkeyatts = 1 AND i.indpred IS NULL AND i.indexprs IS NULL \
                          AND i.indisvalid \
                     THEN (SELECT attname::text FROM pg_attribute \
                           WHERE attrelid = i.indrelid AND attnum = i.indkey[0]) END, \
                pg_get_indexdef(i.indexrelid) \
         FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
         WHERE i.indrelid = 'profiles'::regclass AND i.indisunique ORDER BY c.relname",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(db_err)?;
    // Primary key and unique constraints are seen through their indexes; 'n' is a NOT
    // NULL constraint (PostgreSQL 18), already in the columns.
    let constraints: Vec<(String, String)> = sqlx::query_as(
        "SELECT conname::text, pg_get_constraintdef(oid) FROM pg_constraint \
         WHERE conrelid = 'profiles'::regclass AND contype NOT IN ('p', 'u', 'n') \
         ORDER BY conname",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(db_err)?;
    let existing_tables: Vec<String> = sqlx::query_scalar(
        "SELECT t FROM unnest($1::text[]) AS t WHERE to_regclass(t) IS NOT NULL",
    )
    .bind(NEW_TABLES.to_vec())
    .fetch_all(&mut *conn)
    .await
    .map_err(db_err)?;
    Ok(Shape {
        relkind,
        columns,
        primary_key,
        unique_indexes,
        constraints,
        existing_tables,
    })
}

/// The whole schema step on `conn` (a connection of its own, closed by the caller):
/// takes over a Python database when it finds one, then runs the embedded migrations.
pub async fn migrate(conn: &mut PgConnection, migrator: &Migrator) -> Result<(), DbError> {
    // This session only: index builds and migrations take as long as the table needs.
    conn.execute("SET statement_timeout = 0")
        .await
        .map_err(db_err)?;
    lock(conn).await?;
    adopt_if_python(conn, migrator).await?;
    // `run_direct` is `run` on a connection: sqlx's own way around `Acquire` lifetimes
    // that an `async_trait` future cannot name.
    migrator
        .run_direct(None, &mut *conn, false)
        .await
        .map_err(<Postgres as Dialect>::map_migrate_err)?;
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(LOCK_KEY)
        .execute(&mut *conn)
        .await
        .map_err(db_err)?;
    Ok(())
}

/// Waits for the step's advisory lock. Polled rather than waited for in one statement: a
/// statement waiting holds a snapshot, which the holder's `CREATE INDEX CONCURRENTLY`
/// would wait for in turn.
async fn lock(conn: &mut PgConnection) -> Result<(), DbError> {
    let mut logged = false;
    loop {
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(LOCK_KEY)
            .fetch_one(&mut *conn)
            .await
            .map_err(db_err)?;
        if got {
            return Ok(());
        }
        if !logged {
            tracing::info!("another instance is migrating the database; waiting for it");
            logged = true;
        }
        tokio::time::sleep(LOCK_POLL).await;
    }
}

/// Takes over a `profiles` table that has no migration history (see the module docs).
async fn adopt_if_python(conn: &mut PgConnection, migrator: &Migrator) -> Result<(), DbError> {
    let (history, profiles): (bool, bool) = sqlx::query_as(
        "SELECT to_regclass('_sqlx_migrations') IS NOT NULL, to_regclass('profiles') IS NOT NULL",
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(db_err)?;
    if !profiles {
        return Ok(());
    }
    // An empty history is no history: sqlx creates its table before it runs 0001, so a
    // version without the takeover, started once on the Python database, left one behind
    // when 0001 failed ("relation profiles already exists").
    if history {
        let recorded: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM _sqlx_migrations)")
            .fetch_one(&mut *conn)
            .await
            .map_err(db_err)?;
        if recorded {
            return Ok(());
        }
    }
    let shape = read_shape(conn).await?;
    let stage = stage_of(&shape)?;
    let started = std::time::Instant::now();
    if stage == Stage::Python {
        tracing::warn!(
            "found the Python service's `profiles` table with no migration history: taking it \
             over in place"
        );
        add_columns_and_tables(conn).await?;
    } else {
        tracing::warn!("resuming the takeover of the Python service's `profiles` table");
    }
    let backfilled = conn
        .execute(BACKFILL_TIMESTAMPS)
        .await
        .map_err(db_err)?
        .rows_affected();
    for index in &INDEXES {
        build_index(conn, index).await?;
    }
    let mut tx = conn.begin().await.map_err(db_err)?;
    // sqlx's `skip`: the migrations up to the baseline recorded as applied, with their
    // checksums, without running them.
    migrator
        .run_direct(Some(BASELINE_VERSION), &mut *tx, true)
        .await
        .map_err(<Postgres as Dialect>::map_migrate_err)?;
    tx.commit().await.map_err(db_err)?;
    tracing::warn!(
        backfilled_timestamps = backfilled,
        elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        baseline = BASELINE_VERSION,
        "took over the Python service's database; later migrations run as usual"
    );
    Ok(())
}

/// Step 1, retried while the table's lock cannot be had within the lock timeout.
async fn add_columns_and_tables(conn: &mut PgConnection) -> Result<(), DbError> {
    let mut attempt = 1;
    loop {
        let mut tx = conn.begin().await.map_err(db_err)?;
        tx.execute(DDL_LOCK_TIMEOUT).await.map_err(db_err)?;
        match tx.execute(ADOPT_DDL).await {
            Ok(_) => return tx.commit().await.map_err(db_err),
            // 55P03 lock_not_available: a long transaction holds `profiles`.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("55P03") => {
                drop(tx);
                if attempt == DDL_ATTEMPTS {
                    return Err(DbError::TakeoverBlocked { attempts: attempt });
                }
                tracing::warn!(
                    attempt,
                    "the `profiles` table is busy (a long transaction holds it); retrying the takeover"
                );
                attempt += 1;
                tokio::time::sleep(DDL_RETRY_PAUSE).await;
            }
            Err(e) => return Err(db_err(e)),
        }
    }
}

/// Builds `index` without blocking writes, first dropping what an interrupted build left
/// (an invalid index, which `IF NOT EXISTS` would otherwise keep).
async fn build_index(conn: &mut PgConnection, index: &ConcurrentIndex) -> Result<(), DbError> {
    let invalid: Option<bool> = sqlx::query_scalar(
        "SELECT NOT indisvalid FROM pg_index WHERE indexrelid = to_regclass($1)",
    )
    .bind(index.name)
    .fetch_optional(&mut *conn)
    .await
    .map_err(db_err)?;
    if invalid == Some(true) {
        conn.execute(index.drop).await.map_err(db_err)?;
    }
    conn.execute(index.create).await.map_err(db_err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn python() -> Shape {
        Shape {
            relkind: "r".into(),
            columns: PYTHON_COLUMNS
                .iter()
                .map(|&(n, t, nn)| (n.into(), t.into(), nn))
                .collect(),
            primary_key: Some("id".into()),
            unique_indexes: vec![
                ("profiles_pkey".into(), Some("id".into()), "…".into()),
                (
                    "profiles_user_id_key".into(),
                    Some("user_id".into()),
                    "…".into(),
                ),
            ],
            constraints: vec![],
            existing_tables: vec![],
        }
    }

    #[test]
    fn the_python_table_and_a_half_done_adoption_are_accepted() {
        assert_eq!(stage_of(&python()), Ok(Stage::Python));
        let mut adopted = python();
        adopted.columns.extend(
            ADDED_COLUMNS
                .iter()
                .map(|&(n, t, nn)| (n.into(), t.into(), nn)),
        );
        adopted.existing_tables = NEW_TABLES.iter().map(|t| t.to_string()).collect();
        adopted.unique_indexes.push((
            "profiles_email_lower_key".into(),
            None,
            "CREATE UNIQUE INDEX …".into(),
        ));
        assert_eq!(stage_of(&adopted), Ok(Stage::Adopted));
        adopted.existing_tables.pop();
        let refused = stage_of(&adopted).unwrap_err();
        assert_eq!(
            refused.differences,
            vec![SchemaDifference::TableMissing {
                table: "cache_invalidations".into()
            }]
        );
    }

    #[test]
    fn every_difference_is_named() {
        let mut s = python();
        s.columns.retain(|(n, _, _)| n != "phone");
        s.columns[2].1 = "integer".into(); // first_name
        s.columns[3].2 = true; // last_name NOT NULL
        s.columns.push(("nickname".into(), "text".into(), false));
        s.columns.push(("email".into(), "text".into(), false));
        s.primary_key = Some("user_id".into());
        s.unique_indexes
            .retain(|(n, _, _)| n != "profiles_user_id_key");
        s.unique_indexes
            .push(("name_key".into(), Some("name".into()), "CREATE …".into()));
        s.constraints
            .push(("name_check".into(), "CHECK (name <> '')".into()));
        s.existing_tables.push("settings".into());
        let message = stage_of(&s).unwrap_err().to_string();
        for part in [
            "nothing was changed",
            "column `phone` (character varying) is missing",
            "column `first_name` is integer, expected character varying",
            "column `last_name` is NOT NULL, expected nullable",
            "column `nickname` (text) is not in the Python service's table",
            "column `email` (text) is not in the Python service's table",
            "the primary key is (user_id), expected (id)",
            "`user_id` has no unique constraint",
            "unique index `name_key`",
            "constraint `name_check`",
            "table `settings` already exists",
        ] {
            assert!(message.contains(part), "{part:?} not in {message}");
        }
    }

    #[test]
    fn a_view_is_not_a_table() {
        let s = Shape {
            relkind: "v".into(),
            ..python()
        };
        assert!(
            stage_of(&s)
                .unwrap_err()
                .to_string()
                .contains("not a plain table")
        );
    }
}
