//! Per-test databases: a fresh PostgreSQL database or a fresh SQLite file for each caller.

use std::sync::atomic::{AtomicU32, Ordering};

/// The PostgreSQL server tests create their databases on (`TEST_PG_ADMIN_URL`, else
/// `DATABASE_URL` when it is a postgres URL, else the standard local port).
pub fn pg_admin_url() -> String {
    std::env::var("TEST_PG_ADMIN_URL")
        .ok()
        .or_else(|| {
            std::env::var("DATABASE_URL")
                .ok()
                .filter(|u| u.starts_with("postgres"))
        })
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// Creates an empty PostgreSQL database and returns its URL; dropped by the next run's sweep.
pub async fn fresh_postgres_url() -> String {
    use sqlx::Connection;
    let admin = pg_admin_url();
    let name = format!("user_api_test_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .unwrap_or_else(|e| panic!("cannot reach test PostgreSQL at {admin}: {e}"));
    // The name is generated here from a UUID, never from input.
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("create test database");
    conn.close().await.ok();
    replace_db_name(&admin, &name)
}

fn replace_db_name(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

/// A SQLite file in a fresh temporary directory.
pub fn fresh_sqlite_url() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "user-api-test-{}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    format!("sqlite://{}", dir.join("test.db").display())
}
