//! Taking over the Python service's database in place (SPEC 7), and the profile `id`:
//! a real PostgreSQL database made with the Python service's exact DDL and rows, the real
//! service started on it and read over HTTP; a foreign shape refused with nothing changed;
//! this service's own 0001-only databases (PostgreSQL and SQLite) migrated forward.

use std::collections::BTreeMap;
use std::path::Path;

use reqwest::Method;
use rstest::rstest;
use serde_json::{Value, json};
use sqlx::{Connection, Executor, PgConnection, Row};
use user_api::db::{BASELINE_VERSION, DbError, SchemaDifference};
use user_api::domain::UserId;
use user_api::{App, StartError};

use crate::helpers::redis::{StoreKind, Target};
use crate::helpers::{Backend, Role, TestApp, db, json_of, token};

/// The Python service's table, exactly as SPEC 7 gives it.
const PYTHON_DDL: &str = "CREATE TABLE profiles (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  user_id uuid UNIQUE NOT NULL,
  first_name varchar, last_name varchar, name varchar,
  address varchar, phone varchar,
  created_at timestamptz DEFAULT CURRENT_TIMESTAMP,
  updated_at timestamptz DEFAULT CURRENT_TIMESTAMP
);";

/// What the Python service's deployments also have: Alembic's bookkeeping (left alone).
const ALEMBIC_DDL: &str = "CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY);
INSERT INTO alembic_version VALUES ('4f2e9c1a7b3d');";

/// Rows the Python service left: `(id, user_id)` of each, in insertion order.
struct PythonRows {
    full: (uuid::Uuid, UserId),
    defaults: (uuid::Uuid, UserId),
    no_created_at: (uuid::Uuid, UserId),
    no_timestamps: (uuid::Uuid, UserId),
}

async fn pg(url: &str) -> PgConnection {
    PgConnection::connect(url).await.expect("connect")
}

/// A fresh database holding `ddl` (the Python table unless a test changes it).
async fn database_with(ddl: &str) -> String {
    let url = db::fresh_postgres_url().await;
    let mut conn = pg(&url).await;
    conn.execute(sqlx::AssertSqlSafe(ddl.to_owned()))
        .await
        .expect("DDL");
    conn.close().await.ok();
    url
}

/// The Python rows: one with every field, one with the table's defaults, one without
/// `created_at`, one without either timestamp.
async fn insert_python_rows(url: &str) -> PythonRows {
    let mut conn = pg(url).await;
    let full_user = UserId::random();
    let full_id = uuid::Uuid::new_v4();
    sqlx::query(
        "INSERT INTO profiles (id, user_id, first_name, last_name, name, address, phone, \
         created_at, updated_at) VALUES ($1, $2, '太郎', '山田', '山田太郎', '東京都渋谷区', \
         '090-1234-5678', '2024-01-02T03:04:05Z', '2024-02-03T04:05:06Z')",
    )
    .bind(full_id)
    .bind(full_user.as_uuid())
    .execute(&mut conn)
    .await
    .unwrap();
    let defaults = insert_returning_id(
        &mut conn,
        "INSERT INTO profiles (user_id, name) VALUES ($1, 'Python defaults') RETURNING id",
    )
    .await;
    let no_created_at = insert_returning_id(
        &mut conn,
        "INSERT INTO profiles (user_id, name, created_at, updated_at) \
         VALUES ($1, 'no created_at', NULL, '2024-05-06T07:08:09Z') RETURNING id",
    )
    .await;
    let no_timestamps = insert_returning_id(
        &mut conn,
        "INSERT INTO profiles (user_id, name, created_at, updated_at) \
         VALUES ($1, 'no timestamps', NULL, NULL) RETURNING id",
    )
    .await;
    conn.close().await.ok();
    PythonRows {
        full: (full_id, full_user),
        defaults,
        no_created_at,
        no_timestamps,
    }
}

/// Runs `sql` ($1 a new user id, the id left to the table's default): `(id, user_id)`.
async fn insert_returning_id(conn: &mut PgConnection, sql: &'static str) -> (uuid::Uuid, UserId) {
    let user = UserId::random();
    let id = sqlx::query_scalar(sql)
        .bind(user.as_uuid())
        .fetch_one(conn)
        .await
        .unwrap();
    (id, user)
}

/// Everything a start could change, table by table: columns, indexes, constraints,
/// triggers, the migration history and every row with its `xmin` (a row rewritten, even to
/// the same values, gets a new one).
async fn snapshot(url: &str) -> BTreeMap<String, Vec<String>> {
    let mut conn = pg(url).await;
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let catalog = [
        "SELECT table_name::text, format('column %s %s null=%s default=%s', column_name, \
         data_type, is_nullable, column_default) FROM information_schema.columns \
         WHERE table_schema = 'public' ORDER BY 1, ordinal_position",
        "SELECT tablename::text, 'index ' || indexdef FROM pg_indexes \
         WHERE schemaname = 'public' ORDER BY 1, 2",
        "SELECT conrelid::regclass::text, format('constraint %s %s', conname, \
         pg_get_constraintdef(oid)) FROM pg_constraint \
         WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2",
        "SELECT tgrelid::regclass::text, 'trigger ' || tgname FROM pg_trigger \
         WHERE NOT tgisinternal ORDER BY 1, 2",
    ];
    for sql in catalog {
        for row in sqlx::query(sql).fetch_all(&mut conn).await.unwrap() {
            out.entry(row.get(0)).or_default().push(row.get(1));
        }
    }
    let has_history: bool =
        sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    if has_history {
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT format('%s|%s|%s|%s|%s|%s', version, description, success, \
             encode(checksum, 'hex'), execution_time, installed_on) \
             FROM _sqlx_migrations ORDER BY version",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap();
        out.insert("history".into(), rows);
    }
    let rows: Vec<String> = sqlx::query_scalar(
        "SELECT xmin::text || ' ' || to_jsonb(p)::text FROM profiles p ORDER BY user_id",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    out.insert("profiles rows".into(), rows);
    conn.close().await.ok();
    out
}

/// A service on the database at `url` (in-process cache, quiet limits).
async fn config_on(url: &str) -> user_api::config::Config {
    let url = url.to_owned();
    TestApp::builder()
        .with(move |c| c.database_url = url)
        .config()
        .await
}

async fn get_profile(app: &TestApp, user: UserId) -> Value {
    let (status, body) = json_of(
        app.get(&format!("/api/profiles/{user}"), &token(user, Role::User))
            .await,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["profile"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_database_is_taken_over_in_place_and_served() {
    let url = database_with(&format!("{PYTHON_DDL}\n{ALEMBIC_DDL}")).await;
    let rows = insert_python_rows(&url).await;
    let before_start = chrono::Utc::now();
    let app = TestApp::spawn_with(config_on(&url).await).await;

    // Every row is served, with its id kept.
    let p = get_profile(&app, rows.full.1).await;
    assert_eq!(p["id"], rows.full.0.to_string());
    assert_eq!(p["user_id"], rows.full.1.to_string());
    assert_eq!(p["first_name"], "太郎");
    assert_eq!(p["last_name"], "山田");
    assert_eq!(p["name"], "山田太郎");
    assert_eq!(p["address"], "東京都渋谷区");
    assert_eq!(p["phone"], "090-1234-5678");
    assert_eq!(p["email"], Value::Null);
    assert_eq!(p["date_of_birth"], Value::Null);
    assert_eq!(p["last_login"], Value::Null);
    assert_eq!(p["created_at"], "2024-01-02T03:04:05Z");
    assert_eq!(p["updated_at"], "2024-02-03T04:05:06Z");
    let p = get_profile(&app, rows.defaults.1).await;
    assert_eq!(p["id"], rows.defaults.0.to_string());
    assert_eq!(p["name"], "Python defaults");
    // A missing created_at takes updated_at; with neither, the time of the takeover.
    let p = get_profile(&app, rows.no_created_at.1).await;
    assert_eq!(p["id"], rows.no_created_at.0.to_string());
    assert_eq!(p["created_at"], "2024-05-06T07:08:09Z");
    assert_eq!(p["updated_at"], "2024-05-06T07:08:09Z");
    let p = get_profile(&app, rows.no_timestamps.1).await;
    assert_eq!(p["id"], rows.no_timestamps.0.to_string());
    let created: chrono::DateTime<chrono::Utc> = p["created_at"].as_str().unwrap().parse().unwrap();
    assert!(
        created >= before_start - chrono::TimeDelta::seconds(5),
        "{created}"
    );
    assert_eq!(p["created_at"], p["updated_at"]);

    // The added columns work, e-mail uniqueness included, and the new tables.
    let owner = token(rows.full.1, Role::User);
    let (status, body) = json_of(
        app.send_json(
            Method::PATCH,
            &format!("/api/profiles/{}", rows.full.1),
            &owner,
            &json!({"email": "taro@example.com", "date_of_birth": "1990-01-01"}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["profile"]["id"], rows.full.0.to_string());
    assert_eq!(body["profile"]["email"], "taro@example.com");
    let (status, _) = json_of(
        app.send_json(
            Method::PATCH,
            &format!("/api/profiles/{}", rows.defaults.1),
            &token(rows.defaults.1, Role::User),
            &json!({"email": "TARO@example.com"}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 409, "the e-mail index exists on the adopted table");
    let (status, body) = json_of(
        app.send_json(
            Method::PUT,
            &format!("/api/profiles/{}/settings", rows.full.1),
            &owner,
            &json!({"theme": "dark"}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200, "{body}");

    // A create generates a new id; a delete takes the documents with it.
    let new_user = UserId::random();
    let created = app.create_profile(new_user, json!({"name": "new"})).await;
    let new_id: uuid::Uuid = created["id"].as_str().unwrap().parse().unwrap();
    assert_eq!(get_profile(&app, new_user).await["id"], new_id.to_string());
    let res = app
        .delete(&format!("/api/profiles/{}", rows.full.1), &owner)
        .await;
    assert_eq!(res.status(), 204);

    // The Python service's readers and writers of the old columns still work, and a row it
    // writes now with NULL timestamps is still served.
    let mut conn = pg(&url).await;
    let python_user = UserId::random();
    sqlx::query(
        "INSERT INTO profiles (user_id, first_name, created_at, updated_at) \
         VALUES ($1, 'late', NULL, NULL)",
    )
    .bind(python_user.as_uuid())
    .execute(&mut conn)
    .await
    .expect("the Python service's insert");
    let names: Vec<Option<String>> = sqlx::query_scalar(
        "SELECT name FROM (SELECT id, user_id, first_name, last_name, name, address, phone, \
         created_at, updated_at FROM profiles) p WHERE user_id = $1",
    )
    .bind(rows.defaults.1.as_uuid())
    .fetch_all(&mut conn)
    .await
    .expect("the Python service's read");
    assert_eq!(names, vec![Some("Python defaults".to_owned())]);
    let p = get_profile(&app, python_user).await;
    assert_eq!(p["first_name"], "late");
    assert_eq!(p["created_at"], "1970-01-01T00:00:00Z");
    let alembic: String = sqlx::query_scalar("SELECT version_num FROM alembic_version")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(alembic, "4f2e9c1a7b3d", "other tables are left alone");

    // The history is the one a fresh database gets, checksums included: migrations up to
    // the baseline recorded (not run: execution_time -1), every later one run.
    let adopted: Vec<(i64, Vec<u8>, bool, i64)> = sqlx::query_as(
        "SELECT version, checksum, success, execution_time FROM _sqlx_migrations ORDER BY version",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    conn.close().await.ok();
    let fresh_url = db::fresh_postgres_url().await;
    user_api::db::connect(&fresh_url, &user_api::pool_options(&app.config))
        .await
        .unwrap()
        .migrate()
        .await
        .unwrap();
    let mut fresh = pg(&fresh_url).await;
    let expected: Vec<(i64, Vec<u8>)> =
        sqlx::query_as("SELECT version, checksum FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&mut fresh)
            .await
            .unwrap();
    fresh.close().await.ok();
    assert_eq!(
        adopted
            .iter()
            .map(|(v, c, _, _)| (*v, c.clone()))
            .collect::<Vec<_>>(),
        expected
    );
    for (version, _, success, execution_time) in &adopted {
        assert!(success);
        if *version <= BASELINE_VERSION {
            assert_eq!(
                *execution_time, -1,
                "version {version} is recorded, not run"
            );
        } else {
            assert!(*execution_time >= 0, "version {version} ran");
        }
    }
}

/// The first try: a version without the takeover, started on the Python database,
/// failed on 0001 after sqlx had made its (empty) history table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_history_left_by_a_failed_first_try_is_no_history() {
    let url = database_with(&format!(
        "{PYTHON_DDL}
         CREATE TABLE _sqlx_migrations (version BIGINT PRIMARY KEY, description TEXT NOT NULL,
           installed_on TIMESTAMPTZ NOT NULL DEFAULT now(), success BOOLEAN NOT NULL,
           checksum BYTEA NOT NULL, execution_time BIGINT NOT NULL);"
    ))
    .await;
    let rows = insert_python_rows(&url).await;
    let app = TestApp::spawn_with(config_on(&url).await).await;
    assert_eq!(
        get_profile(&app, rows.full.1).await["id"],
        rows.full.0.to_string()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_start_changes_nothing() {
    let url = database_with(PYTHON_DDL).await;
    let rows = insert_python_rows(&url).await;
    let config = config_on(&url).await;
    let first = TestApp::spawn_with(config.clone()).await;
    assert_eq!(
        get_profile(&first, rows.full.1).await["id"],
        rows.full.0.to_string()
    );
    first.shutdown();
    drop(first);
    let adopted = snapshot(&url).await;
    assert!(adopted.contains_key("history"));

    let second = TestApp::spawn_with(config).await;
    assert_eq!(
        snapshot(&url).await,
        adopted,
        "the second start changed the database"
    );
    for (id, user) in [
        rows.full,
        rows.defaults,
        rows.no_created_at,
        rows.no_timestamps,
    ] {
        assert_eq!(get_profile(&second, user).await["id"], id.to_string());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn instances_starting_together_take_over_once() {
    let url = database_with(PYTHON_DDL).await;
    let rows = insert_python_rows(&url).await;
    let config = config_on(&url).await;
    let (a, b) = tokio::join!(App::build(config.clone()), App::build(config));
    let (a, b) = (a.expect("first instance"), b.expect("second instance"));
    drop((a, b));
    let app = TestApp::spawn_with(config_on(&url).await).await;
    assert_eq!(
        get_profile(&app, rows.no_timestamps.1).await["id"],
        rows.no_timestamps.0.to_string()
    );
}

/// What a takeover leaves when it stops after its first step (columns and tables added,
/// no history), with an index build that died half-way (an invalid index).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_takeover_is_resumed() {
    let url = database_with(PYTHON_DDL).await;
    let rows = insert_python_rows(&url).await;
    let mut conn = pg(&url).await;
    conn.execute(
        "ALTER TABLE profiles ADD COLUMN email text, ADD COLUMN date_of_birth date, \
         ADD COLUMN last_login timestamptz;
         CREATE TABLE settings (user_id uuid NOT NULL PRIMARY KEY REFERENCES profiles (user_id) \
           ON DELETE CASCADE, data jsonb NOT NULL DEFAULT '{}'::jsonb \
           CHECK (jsonb_typeof(data) = 'object'), updated_at timestamptz NOT NULL);
         CREATE TABLE preferences (user_id uuid NOT NULL PRIMARY KEY REFERENCES profiles (user_id) \
           ON DELETE CASCADE, data jsonb NOT NULL DEFAULT '{}'::jsonb \
           CHECK (jsonb_typeof(data) = 'object'), updated_at timestamptz NOT NULL);
         CREATE TABLE cache_invalidations (id bigserial PRIMARY KEY, user_id uuid NOT NULL, \
           scope text NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
         CREATE UNIQUE INDEX profiles_email_lower_key ON profiles (lower(email));
         UPDATE pg_index SET indisvalid = false \
           WHERE indexrelid = 'profiles_email_lower_key'::regclass;",
    )
    .await
    .expect("a half-done takeover");
    conn.close().await.ok();

    let app = TestApp::spawn_with(config_on(&url).await).await;
    assert_eq!(
        get_profile(&app, rows.full.1).await["id"],
        rows.full.0.to_string()
    );
    let mut conn = pg(&url).await;
    let valid: bool = sqlx::query_scalar(
        "SELECT indisvalid FROM pg_index WHERE indexrelid = 'profiles_email_lower_key'::regclass",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert!(valid, "the invalid index was rebuilt");
    let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(recorded >= BASELINE_VERSION);
    conn.close().await.ok();
}

/// The adopted schema is the one a fresh database gets, but for the Python service's own
/// column definitions and keys, which are kept (docs/database.md lists them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_adopted_schema_is_the_fresh_one_but_for_the_kept_python_columns() {
    let url = database_with(PYTHON_DDL).await;
    let config = config_on(&url).await;
    drop(App::build(config.clone()).await.expect("takeover"));
    let fresh_url = db::fresh_postgres_url().await;
    user_api::db::connect(&fresh_url, &user_api::pool_options(&config))
        .await
        .unwrap()
        .migrate()
        .await
        .unwrap();
    let (mut adopted, mut fresh) = (snapshot(&url).await, snapshot(&fresh_url).await);
    for s in [&mut adopted, &mut fresh] {
        s.remove("profiles rows");
        // installed_on and execution_time differ by nature.
        for row in s.get_mut("history").unwrap() {
            *row = row.split('|').take(4).collect::<Vec<_>>().join("|");
        }
    }
    let adopted_profiles = adopted.remove("profiles").unwrap();
    let fresh_profiles = fresh.remove("profiles").unwrap();
    assert_eq!(
        adopted, fresh,
        "tables other than profiles, and the history"
    );
    let only = |a: &[String], b: &[String]| -> Vec<String> {
        a.iter().filter(|x| !b.contains(x)).cloned().collect()
    };
    assert_eq!(
        only(&adopted_profiles, &fresh_profiles),
        [
            "column first_name character varying null=YES default=",
            "column last_name character varying null=YES default=",
            "column name character varying null=YES default=",
            "column address character varying null=YES default=",
            "column phone character varying null=YES default=",
            "column created_at timestamp with time zone null=YES default=CURRENT_TIMESTAMP",
            "column updated_at timestamp with time zone null=YES default=CURRENT_TIMESTAMP",
            "index CREATE UNIQUE INDEX profiles_pkey ON public.profiles USING btree (id)",
            "index CREATE UNIQUE INDEX profiles_user_id_key ON public.profiles USING btree (user_id)",
            "constraint profiles_pkey PRIMARY KEY (id)",
            "constraint profiles_user_id_key UNIQUE (user_id)",
        ],
        "what the adopted table has that a fresh one has not"
    );
    assert_eq!(
        only(&fresh_profiles, &adopted_profiles),
        [
            "column first_name text null=YES default=",
            "column last_name text null=YES default=",
            "column name text null=YES default=",
            "column phone text null=YES default=",
            "column address text null=YES default=",
            "column created_at timestamp with time zone null=NO default=",
            "column updated_at timestamp with time zone null=NO default=",
            "index CREATE UNIQUE INDEX profiles_id_key ON public.profiles USING btree (id)",
            "index CREATE UNIQUE INDEX profiles_pkey ON public.profiles USING btree (user_id)",
            "constraint profiles_pkey PRIMARY KEY (user_id)",
        ],
        "what a fresh table has that the adopted one has not"
    );
}

#[rstest]
#[case::missing_column(
    PYTHON_DDL.replace(", phone varchar", ""),
    SchemaDifference::MissingColumn { column: "phone".into(), expected_type: "character varying".into() },
    "column `phone` (character varying) is missing"
)]
#[case::wrong_type(
    PYTHON_DDL.replace("phone varchar", "phone integer"),
    SchemaDifference::WrongType { column: "phone".into(), found: "integer".into(), expected: "character varying".into() },
    "column `phone` is integer, expected character varying"
)]
#[case::unknown_column(
    PYTHON_DDL.replace("phone varchar,", "phone varchar, nickname text,"),
    SchemaDifference::UnknownColumn { column: "nickname".into(), found_type: "text".into() },
    "column `nickname` (text) is not in the Python service's table"
)]
#[case::nullable_user_id(
    PYTHON_DDL.replace("user_id uuid UNIQUE NOT NULL", "user_id uuid UNIQUE"),
    SchemaDifference::Nullability { column: "user_id".into(), expected_not_null: true },
    "column `user_id` is nullable, expected NOT NULL"
)]
#[case::table_in_the_way(
    format!("{PYTHON_DDL}\nCREATE TABLE settings (user_id uuid);"),
    SchemaDifference::TableExists { table: "settings".into() },
    "table `settings` already exists"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_shape_is_refused_naming_the_difference_and_nothing_changes(
    #[case] ddl: String,
    #[case] difference: SchemaDifference,
    #[case] message: &str,
) {
    let url = database_with(&ddl).await;
    insert_some_row(&url).await;
    let before = snapshot(&url).await;
    let err = match App::build(config_on(&url).await).await {
        Ok(_) => panic!("a foreign shape was taken over"),
        Err(e) => e,
    };
    let text = err.to_string();
    match err {
        StartError::Db(DbError::ForeignSchema(f)) => {
            assert_eq!(f.differences, vec![difference], "{text}");
        }
        other => panic!("not a refusal: {other}"),
    }
    assert!(text.contains(message), "{text}");
    assert!(text.contains("nothing was changed"), "{text}");
    assert_eq!(
        snapshot(&url).await,
        before,
        "the refusal changed the database"
    );
}

async fn insert_some_row(url: &str) {
    let mut conn = pg(url).await;
    sqlx::query("INSERT INTO profiles (user_id, name) VALUES ($1, 'kept')")
        .bind(uuid::Uuid::new_v4())
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.ok();
}

/// A database of this service made before profiles had ids: only migration 0001 applied,
/// rows and documents in it. The new binary migrates it forward; every row is kept and
/// gets its own id.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_own_database_from_before_ids_migrates_forward(
    #[values(Backend::Postgres, Backend::Sqlite)] backend: Backend,
) {
    let users: Vec<UserId> = (0..3).map(|_| UserId::random()).collect();
    let url = match backend {
        Backend::Postgres => {
            let url = db::fresh_postgres_url().await;
            let mut conn = pg(&url).await;
            only_0001("./migrations/postgres", &mut conn).await;
            for (i, u) in users.iter().enumerate() {
                sqlx::query(
                    "INSERT INTO profiles (user_id, name, email, created_at, updated_at) \
                     VALUES ($1, $2, $3, now(), now())",
                )
                .bind(u.as_uuid())
                .bind(format!("user {i}"))
                .bind(format!("u{i}.{u}@example.com"))
                .execute(&mut conn)
                .await
                .unwrap();
                sqlx::query(
                    "INSERT INTO settings (user_id, data, updated_at) VALUES ($1, '{\"n\": 1}', now())",
                )
                .bind(u.as_uuid())
                .execute(&mut conn)
                .await
                .unwrap();
            }
            url
        }
        Backend::Sqlite => {
            let url = db::fresh_sqlite_url();
            let opts: sqlx::sqlite::SqliteConnectOptions = url.parse().unwrap();
            let mut conn = sqlx::SqliteConnection::connect_with(&opts.create_if_missing(true))
                .await
                .unwrap();
            only_0001("./migrations/sqlite", &mut conn).await;
            for (i, u) in users.iter().enumerate() {
                sqlx::query(
                    "INSERT INTO profiles (user_id, name, email, created_at, updated_at) \
                     VALUES ($1, $2, $3, '2025-01-01T00:00:00.000000Z', '2025-01-01T00:00:00.000000Z')",
                )
                .bind(u.to_string())
                .bind(format!("user {i}"))
                .bind(format!("u{i}.{u}@example.com"))
                .execute(&mut conn)
                .await
                .unwrap();
                sqlx::query(
                    "INSERT INTO settings (user_id, data, updated_at) \
                     VALUES ($1, '{\"n\": 1}', '2025-01-01T00:00:00.000000Z')",
                )
                .bind(u.to_string())
                .execute(&mut conn)
                .await
                .unwrap();
            }
            conn.close().await.ok();
            url
        }
    };
    let app = TestApp::spawn_with(config_on(&url).await).await;
    let mut ids = std::collections::HashSet::new();
    for (i, u) in users.iter().enumerate() {
        let p = get_profile(&app, *u).await;
        assert_eq!(p["name"], format!("user {i}"));
        let id: uuid::Uuid = p["id"].as_str().expect("an id").parse().expect("a UUID");
        assert_eq!(id.get_version_num(), 4);
        ids.insert(id);
        assert_eq!(
            get_profile(&app, *u).await["id"],
            id.to_string(),
            "the id is stored, not made up per read"
        );
        let (status, body) = json_of(
            app.get(
                &format!("/api/profiles/{u}/settings"),
                &token(*u, Role::User),
            )
            .await,
        )
        .await;
        assert_eq!((status, &body["settings"]), (200, &json!({"n": 1})));
    }
    assert_eq!(ids.len(), users.len(), "ids are unique");
    let created = app
        .create_profile(UserId::random(), json!({"name": "after"}))
        .await;
    let new_id: uuid::Uuid = created["id"].as_str().unwrap().parse().unwrap();
    assert!(!ids.contains(&new_id));

    if backend == Backend::Sqlite {
        // Another writer's insert without an id still gets one; NULL cannot be stored.
        let opts: sqlx::sqlite::SqliteConnectOptions = url.parse().unwrap();
        let mut conn = sqlx::SqliteConnection::connect_with(&opts).await.unwrap();
        let other = UserId::random();
        sqlx::query(
            "INSERT INTO profiles (user_id, created_at, updated_at) \
             VALUES ($1, '2025-01-01T00:00:00.000000Z', '2025-01-01T00:00:00.000000Z')",
        )
        .bind(other.to_string())
        .execute(&mut conn)
        .await
        .unwrap();
        let id: String = sqlx::query_scalar("SELECT id FROM profiles WHERE user_id = $1")
            .bind(other.to_string())
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(uuid::Uuid::parse_str(&id).unwrap().get_version_num(), 4);
        let cleared = sqlx::query("UPDATE profiles SET id = NULL WHERE user_id = $1")
            .bind(other.to_string())
            .execute(&mut conn)
            .await;
        assert!(cleared.is_err(), "a NULL id was stored");
        conn.close().await.ok();
        assert_eq!(get_profile(&app, other).await["id"], id);
    }
}

/// Applies migration 0001 of `dir` alone, as a deployment made before 0002 has it.
async fn only_0001<C>(dir: &str, conn: &mut C)
where
    C: sqlx::migrate::Migrate,
{
    let migrator = sqlx::migrate::Migrator::new(Path::new(dir))
        .await
        .expect("migrations");
    migrator
        .run_direct(Some(1), conn, false)
        .await
        .expect("0001");
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_id_is_in_the_json_the_cache_the_batch_and_the_openapi_document_and_read_only(
    #[values(Backend::Postgres, Backend::Sqlite)] backend: Backend,
) {
    let target = Target::new(StoreKind::Shared).await;
    let app = TestApp::builder()
        .with_backend(backend)
        .with_store(&target)
        .spawn()
        .await;
    let user = UserId::random();
    let created = app.create_profile(user, json!({"name": "with id"})).await;
    let id = created["id"]
        .as_str()
        .expect("id in the create answer")
        .to_owned();
    uuid::Uuid::parse_str(&id).expect("a UUID");

    let (_, miss) = app.read_profile(user).await;
    assert_eq!(
        (&miss["cached"], &miss["profile"]["id"]),
        (&json!(false), &json!(id))
    );
    let (_, hit) = app.read_profile(user).await;
    assert_eq!(
        (&hit["cached"], &hit["profile"]["id"]),
        (&json!(true), &json!(id))
    );
    let mut redis = crate::helpers::redis::connect(&target.node_urls()[0]).await;
    let raw: String = ::redis::AsyncCommands::get(&mut redis, format!("cache:profile:{user}"))
        .await
        .expect("the cache entry");
    let entry: Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(entry["id"], id);

    let (status, batch) = app
        .as_admin(
            Method::POST,
            "/api/profiles/batch",
            &json!([user.to_string()]),
        )
        .await;
    assert_eq!(status, 200, "{batch}");
    assert_eq!(batch["profiles"][0]["id"], id);
    let (status, me) = json_of(app.get("/profile", &token(user, Role::User)).await).await;
    assert_eq!((status, &me["id"]), (200, &json!(id)));

    // A client may not set it, on any write route.
    let owner = token(user, Role::User);
    let other_id = uuid::Uuid::new_v4().to_string();
    for (method, path) in [
        (Method::POST, "/api/profiles".to_owned()),
        (Method::PUT, format!("/api/profiles/{user}")),
        (Method::PATCH, format!("/api/profiles/{user}")),
        (Method::POST, "/profile".to_owned()),
        (Method::PUT, "/profile".to_owned()),
    ] {
        let (status, body) = json_of(
            app.send_json(method.clone(), &path, &owner, &json!({"id": other_id}))
                .await,
        )
        .await;
        assert_eq!(status, 422, "{method} {path}: {body}");
        assert!(body["detail"].as_str().unwrap().contains("id"), "{body}");
    }
    assert_eq!(app.read_profile(user).await.1["profile"]["id"], id);

    let doc: Value = app
        .get_anonymous("/openapi.json")
        .await
        .json()
        .await
        .unwrap();
    let profile = &doc["components"]["schemas"]["Profile"];
    assert_eq!(profile["properties"]["id"]["format"], "uuid", "{profile}");
    assert_eq!(profile["properties"]["id"]["readOnly"], true, "{profile}");
    assert!(
        profile["required"]
            .as_array()
            .unwrap()
            .contains(&json!("id")),
        "{profile}"
    );
    for input in ["ProfileInput", "ProfilePatchInput"] {
        let schema = &doc["components"]["schemas"][input];
        assert!(
            schema["properties"].get("id").is_none(),
            "{input}: {schema}"
        );
    }
}

/// The steps docs/database.md gives for adding the id to a large deployment of this
/// service online, before the new binary starts (one statement each, as psql sends them).
const ONLINE_ID_STEPS: [&str; 8] = [
    "ALTER TABLE profiles ADD COLUMN id uuid",
    "ALTER TABLE profiles ALTER COLUMN id SET DEFAULT gen_random_uuid()",
    "UPDATE profiles SET id = gen_random_uuid() \
     WHERE user_id IN (SELECT user_id FROM profiles WHERE id IS NULL LIMIT 10000)",
    "CREATE UNIQUE INDEX CONCURRENTLY profiles_id_key ON profiles (id)",
    "ALTER TABLE profiles ADD CONSTRAINT profiles_id_not_null CHECK (id IS NOT NULL) NOT VALID",
    "ALTER TABLE profiles VALIDATE CONSTRAINT profiles_id_not_null",
    "ALTER TABLE profiles ALTER COLUMN id SET NOT NULL",
    "ALTER TABLE profiles DROP CONSTRAINT profiles_id_not_null",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_online_id_steps_leave_migration_0002_only_to_record_itself() {
    let url = db::fresh_postgres_url().await;
    let mut conn = pg(&url).await;
    only_0001("./migrations/postgres", &mut conn).await;
    let user = UserId::random();
    sqlx::query(
        "INSERT INTO profiles (user_id, name, created_at, updated_at) VALUES ($1, 'x', now(), now())",
    )
    .bind(user.as_uuid())
    .execute(&mut conn)
    .await
    .unwrap();
    for step in ONLINE_ID_STEPS {
        conn.execute(step)
            .await
            .unwrap_or_else(|e| panic!("{step}: {e}"));
    }
    let id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM profiles")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    conn.close().await.ok();

    let config = config_on(&url).await;
    let app = TestApp::spawn_with(config.clone()).await;
    assert_eq!(get_profile(&app, user).await["id"], id.to_string());
    let fresh_url = db::fresh_postgres_url().await;
    user_api::db::connect(&fresh_url, &user_api::pool_options(&config))
        .await
        .unwrap()
        .migrate()
        .await
        .unwrap();
    let (mut online, mut fresh) = (snapshot(&url).await, snapshot(&fresh_url).await);
    for s in [&mut online, &mut fresh] {
        s.remove("profiles rows");
        for row in s.get_mut("history").unwrap() {
            *row = row.split('|').take(4).collect::<Vec<_>>().join("|");
        }
    }
    assert_eq!(online, fresh, "the online steps made the schema 0002 makes");
}

/// A long transaction on `profiles` (the Python service's, say) when the takeover starts:
/// the catalog step gives up its lock wait after 2 s, so readers never queue behind it for
/// longer, and tries again until the transaction is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_takeover_waits_out_a_long_transaction_without_queueing_readers_for_long() {
    let url = database_with(PYTHON_DDL).await;
    let rows = insert_python_rows(&url).await;
    let mut long = pg(&url).await;
    long.execute("BEGIN").await.unwrap();
    long.execute("SELECT count(*) FROM profiles").await.unwrap();
    let config = config_on(&url).await;
    let build = tokio::spawn(App::build(config.clone()));

    // While the takeover waits for its lock, a reader waits at most its lock timeout.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let mut reader = pg(&url).await;
    for _ in 0..3 {
        let read =
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM profiles").fetch_one(&mut reader);
        let n = tokio::time::timeout(std::time::Duration::from_millis(2_800), read)
            .await
            .expect("a reader queued behind the takeover for longer than its lock timeout")
            .unwrap();
        assert_eq!(n, 4);
    }
    assert!(
        !build.is_finished(),
        "the takeover did not wait for the transaction"
    );
    let columns: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.columns WHERE table_name = 'profiles'",
    )
    .fetch_one(&mut reader)
    .await
    .unwrap();
    assert_eq!(
        columns, 9,
        "nothing is changed while the lock cannot be had"
    );
    reader.close().await.ok();

    long.execute("COMMIT").await.unwrap();
    long.close().await.ok();
    drop(
        build
            .await
            .unwrap()
            .expect("the takeover once the transaction is over"),
    );
    let app = TestApp::spawn_with(config).await;
    assert_eq!(
        get_profile(&app, rows.full.1).await["id"],
        rows.full.0.to_string()
    );
}
