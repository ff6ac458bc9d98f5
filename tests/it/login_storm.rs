//! A login storm (SPEC 2): many users' first requests at once against a fresh instance
//! with a small pool. Recording `last_login` must never take the connections reads need:
//! no request fails, the login writes hold at most the background share of the pool
//! (watched from PostgreSQL's own `pg_stat_activity`), a full queue drops records (counted)
//! instead of waiting, and every login is recorded in the end.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use crate::helpers::redis::{StoreKind, Target};
use crate::helpers::{Backend, Role, TestApp, eventually, json_of, token_with_login};
use futures::StreamExt;
use sqlx::Connection;
use user_api::domain::UserId;

const USERS: usize = 600;

/// The storm's instance: 4 connections (so the background share is 1), a small queue.
async fn storm_app(queue_capacity: usize, batch_size: usize) -> (Target, TestApp, String) {
    let target = Target::new(StoreKind::Shared).await;
    let app = TestApp::builder()
        .with_backend(Backend::Postgres)
        .with_store(&target)
        .with(move |c| {
            c.database.max_connections = 4;
            c.database.acquire_timeout_ms = 2000;
            c.logins.queue_capacity = queue_capacity;
            c.logins.batch_size = batch_size;
            c.logins.flush_ms = 500;
        })
        .spawn()
        .await;
    let url = app.config.database_url.clone();
    (target, app, url)
}

async fn seed(app: &TestApp) -> Vec<UserId> {
    let profiles = user_api::seed::fake_profiles(USERS);
    let repo = app.state.profiles.repo();
    repo.insert_many(&profiles).await.expect("seed");
    profiles.iter().map(|p| p.user_id).collect()
}

/// Every user's first request (a token with `iat`), 64 at a time; the statuses.
async fn first_requests(app: &TestApp, ids: &[UserId]) -> Vec<u16> {
    futures::stream::iter(ids.iter().copied())
        .map(|id| async move {
            let res = app
                .get(
                    &format!("/api/profiles/{id}"),
                    &token_with_login(id, Role::User),
                )
                .await;
            res.status().as_u16()
        })
        .buffer_unordered(64)
        .collect()
        .await
}

/// Polls PostgreSQL for the most login-recording statements running at once.
fn watch_login_writes(
    db_url: String,
    stop: Arc<AtomicBool>,
) -> (tokio::task::JoinHandle<()>, Arc<AtomicI64>) {
    let most = Arc::new(AtomicI64::new(0));
    let seen = most.clone();
    let task = tokio::spawn(async move {
        let mut conn = sqlx::PgConnection::connect(&db_url).await.expect("watcher");
        while !stop.load(Ordering::SeqCst) {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                 AND state <> 'idle' AND query ILIKE '%SET last_login%' \
                 AND pid <> pg_backend_pid()",
            )
            .fetch_one(&mut conn)
            .await
            .expect("pg_stat_activity");
            seen.fetch_max(n, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    (task, most)
}

async fn recorded(db_url: &str) -> i64 {
    let mut conn = sqlx::PgConnection::connect(db_url).await.expect("db");
    sqlx::query_scalar("SELECT count(*) FROM profiles WHERE last_login > now() - interval '1 hour'")
        .fetch_one(&mut conn)
        .await
        .expect("count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_login_storm_never_starves_reads() {
    let (_t, app, db_url) = storm_app(10_000, 100).await;
    let ids = seed(&app).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (watcher, most) = watch_login_writes(db_url.clone(), stop.clone());
    let statuses = first_requests(&app, &ids).await;
    // Reads right after the storm, while its records are still being written.
    let again = first_requests(&app, &ids[..200]).await;
    eventually(Duration::from_secs(20), "every login recorded", || {
        let db_url = db_url.clone();
        async move { recorded(&db_url).await == USERS as i64 }
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    watcher.await.unwrap();
    let failed: Vec<&u16> = statuses
        .iter()
        .chain(&again)
        .filter(|s| **s != 200)
        .collect();
    assert!(
        failed.is_empty(),
        "{} requests failed: {failed:?}",
        failed.len()
    );
    let most = most.load(Ordering::SeqCst);
    assert!(
        most <= 1,
        "login writes held {most} connections at once; the share is 1"
    );
    assert!(
        app.prom_counter("db_queries_total{op=\"record_logins\"}")
            .await
            < USERS as u64 / 10,
        "records are written in batches, not one statement per user"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_login_queue_drops_and_counts_and_the_next_request_records() {
    // One record per statement, a queue of 1: the queue is full while each is written.
    let (_t, app, db_url) = storm_app(1, 1).await;
    let ids = seed(&app).await;
    let statuses = first_requests(&app, &ids).await;
    assert!(
        statuses.iter().all(|s| *s == 200),
        "no request waits on the queue"
    );
    let metrics = app.metrics().await;
    let dropped = app.prom_counter("login_records_dropped_total").await;
    assert!(
        dropped > 0,
        "a queue of 1 overflows in a storm of {USERS}: {metrics:.0}"
    );
    // Dropped users were not remembered as recorded: their next requests offer it again.
    for _ in 0..10 {
        if recorded(&db_url).await == USERS as i64 {
            break;
        }
        let statuses = first_requests(&app, &ids).await;
        assert!(statuses.iter().all(|s| *s == 200));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        recorded(&db_url).await,
        USERS as i64,
        "every login recorded in the end"
    );
    let (s, _) = json_of(app.get_anonymous("/ready").await).await;
    assert_eq!(s, 200);
}
