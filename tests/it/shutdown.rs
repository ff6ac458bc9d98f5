//! SIGTERM mid-load (issue: shutdown that loses nothing): the real binary stops accepting,
//! finishes what is in flight, then writes what it holds in memory: the hit/miss counts
//! reach Redis and the pending `last_login` records reach the database, and it exits 0.
//! Both are held back on purpose (flushes every 10 minutes) so that only the shutdown
//! can have written them.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;

use crate::helpers::redis::RedisServer;
use ::redis::AsyncCommands;
use serde_json::{Value, json};
use sqlx::Connection;
use user_api::domain::UserId;

const USERS: usize = 40;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A token with `iat`, as the auth service issues them: its first use records a login.
fn login_token(id: UserId) -> String {
    let now = chrono::Utc::now().timestamp();
    crate::helpers::sign(
        &json!({"sub": id.to_string(), "role": "user", "iat": now, "exp": now + 3600}),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_mid_load_loses_no_counts_and_no_logins() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let redis = RedisServer::start().await;
    let db_url = crate::helpers::db::fresh_postgres_url().await;
    // The schema and the users, with no login recorded yet.
    let repo = user_api::db::connect(&db_url, &user_api::pool_options(&Default::default()))
        .await
        .unwrap();
    repo.migrate().await.unwrap();
    let mut profiles = user_api::seed::fake_profiles(USERS);
    for p in &mut profiles {
        p.last_login = None;
    }
    repo.insert_many(&profiles).await.unwrap();
    repo.close().await;
    let ids: Vec<UserId> = profiles.iter().map(|p| p.user_id).collect();

    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_user-api"))
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", &db_url)
        .env("REDIS_URL", redis.url())
        .env("JWT_PUBLIC_KEY_FILE", &crate::helpers::keys().public_file)
        .env("USER_API_ADDR", format!("127.0.0.1:{port}"))
        .env("PREWARM", "0")
        .env("USER_API__LOGINS__FLUSH_MS", "600000")
        .env("USER_API__LOGINS__BATCH_SIZE", "100000")
        .env("USER_API__REDIS__METRICS_FLUSH_MS", "600000")
        .env("USER_API__REDIS__TIMEOUT_MS", "1000")
        .env("USER_API__RATE_LIMITS__PROFILES_READ", "1000000")
        .env("USER_API__SERVER__SHUTDOWN_GRACE_SECS", "10")
        .env("USER_API__SERVER__LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start user-api");
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while client.get(format!("{base}/health")).send().await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the service did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Load: every user reads their own profile over and over; the client counts what the
    // server answered as hits and misses.
    let (hits, misses) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for (n, id) in ids.iter().copied().enumerate() {
        let (client, base, hits, misses, stop) = (
            client.clone(),
            base.clone(),
            hits.clone(),
            misses.clone(),
            stop.clone(),
        );
        workers.push(tokio::spawn(async move {
            let token = login_token(id);
            tokio::time::sleep(Duration::from_millis(n as u64 * 5)).await;
            while !stop.load(Ordering::SeqCst) {
                let Ok(res) = client
                    .get(format!("{base}/api/profiles/{id}"))
                    .bearer_auth(&token)
                    .send()
                    .await
                else {
                    break; // the server stopped accepting
                };
                if res.status() != 200 {
                    continue;
                }
                let Ok(body) = res.json::<Value>().await else {
                    break;
                };
                if body["cached"] == true {
                    hits.fetch_add(1, Ordering::SeqCst);
                } else {
                    misses.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(exit.code(), Some(0), "a clean exit after SIGTERM");

    let (hits, misses) = (hits.load(Ordering::SeqCst), misses.load(Ordering::SeqCst));
    assert!(
        hits > 0 && misses > 0,
        "the load ran: {hits} hits, {misses} misses"
    );
    let mut r = redis.conn().await;
    let counted: (Option<u64>, Option<u64>) = (
        r.get("metrics:cache:hits").await.unwrap(),
        r.get("metrics:cache:misses").await.unwrap(),
    );
    assert_eq!(
        counted,
        (Some(hits), Some(misses)),
        "every answered read counted in Redis"
    );
    let mut db = sqlx::PgConnection::connect(&db_url).await.unwrap();
    let recorded: i64 =
        sqlx::query_scalar("SELECT count(*) FROM profiles WHERE last_login IS NOT NULL")
            .fetch_one(&mut db)
            .await
            .unwrap();
    assert_eq!(recorded, USERS as i64, "every user's login recorded");
}

/// Holds `LOCK TABLE profiles` in an open transaction: every read of a profile waits.
async fn lock_profiles(db_url: &str) -> sqlx::PgConnection {
    let mut lock = sqlx::PgConnection::connect(db_url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut lock).await.unwrap();
    sqlx::query("LOCK TABLE profiles IN ACCESS EXCLUSIVE MODE")
        .execute(&mut lock)
        .await
        .unwrap();
    lock
}

/// Statements of this database waiting on a lock (excluding the asking connection).
async fn waiting_on_locks(db_url: &str) -> i64 {
    let mut conn = sqlx::PgConnection::connect(db_url).await.unwrap();
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
         AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap()
}

/// Sends `GET /api/profiles/{id}` for each id over raw sockets, waits until `expect_waiting`
/// of them are waiting in PostgreSQL, then hangs up on all of them (a client timing out).
async fn abandon_reads(addr: &str, db_url: &str, ids: &[UserId], expect_waiting: i64) {
    use tokio::io::AsyncWriteExt;
    let mut sockets = Vec::new();
    for id in ids {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let t = crate::helpers::token(*id, crate::helpers::Role::User);
        let req = format!(
            "GET /api/profiles/{id} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {t}\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        sockets.push(s);
    }
    crate::helpers::eventually(
        Duration::from_secs(10),
        "reads waiting on the lock",
        || async { waiting_on_locks(db_url).await >= expect_waiting },
    )
    .await;
    drop(sockets);
    // The server notices the hang-ups and drops those requests.
    tokio::time::sleep(Duration::from_millis(300)).await;
}

/// The leak behind issue 17's endless shutdown: a cache-miss read whose client hung up
/// while PostgreSQL was still answering. Its single flight stayed in the flight map,
/// unpolled, holding a pooled connection with the reply unread, for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_whose_client_hung_up_gives_its_connection_back() {
    use crate::helpers::redis::{StoreKind, Target};
    let target = Target::new(StoreKind::Shared).await;
    let app = crate::helpers::TestApp::builder()
        .with_backend(crate::helpers::Backend::Postgres)
        .with_store(&target)
        .with(|c| c.database.max_connections = 4)
        .spawn()
        .await;
    let db_url = app.config.database_url.clone();
    let addr = app.base.trim_start_matches("http://").to_owned();
    let ids: Vec<UserId> = (0..3).map(|_| UserId::random()).collect();
    let lock = lock_profiles(&db_url).await;
    abandon_reads(&addr, &db_url, &ids, 3).await;
    lock.close().await.unwrap();
    let repo = app.state.profiles.repo().clone();
    crate::helpers::eventually(
        Duration::from_secs(5),
        "every pooled connection back and idle",
        || {
            let stats = repo.pool_stats();
            async move { stats.idle == stats.size }
        },
    )
    .await;
    // And the pool serves: four reads at once, each on a connection of its own.
    let mut four = ids.clone();
    four.push(UserId::random());
    let reads = four.iter().map(|id| {
        let app = &app;
        async move { app.read_profile(*id).await.0 }
    });
    let statuses = futures::future::join_all(reads).await;
    assert_eq!(statuses, [404, 404, 404, 404]);
}

/// The release binary's shutdown bounds (lib.rs) plus a second for the runtime and the
/// exit: how long SIGTERM may take to end the process at most, beyond the grace period.
const BOUNDS_PAST_GRACE: Duration = Duration::from_secs(1 + 5 + 3 + 1);

/// The binary serving on a free port, its stderr (JSON logs) in a file.
struct Binary {
    child: Option<std::process::Child>,
    base: String,
    addr: String,
    log: std::path::PathBuf,
}

impl Binary {
    async fn start(db_url: &str, redis_url: &str, env: &[(&str, &str)]) -> Self {
        let port = free_port();
        let log =
            std::env::temp_dir().join(format!("user-api-shutdown-{}.log", uuid::Uuid::new_v4()));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_user-api"));
        cmd.arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", db_url)
            .env("REDIS_URL", redis_url)
            .env("JWT_PUBLIC_KEY_FILE", &crate::helpers::keys().public_file)
            .env("USER_API_ADDR", format!("127.0.0.1:{port}"))
            .env("PREWARM", "0")
            .env("USER_API__REDIS__TIMEOUT_MS", "1000")
            .env("USER_API__RATE_LIMITS__PROFILES_READ", "1000000")
            .env("USER_API__RATE_LIMITS__PROFILES_UPDATE", "1000000")
            .env("USER_API__SERVER__LOG_FORMAT", "json")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start user-api");
        let base = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while client.get(format!("{base}/health")).send().await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the service did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self {
            child: Some(child),
            addr: format!("127.0.0.1:{port}"),
            base,
            log,
        }
    }

    /// Sends SIGTERM; the exit status and how long the exit took, or a failure once
    /// `within` has passed (the process is killed then).
    async fn terminate(&mut self, within: Duration) -> (Option<i32>, Duration) {
        let mut child = self.child.take().unwrap();
        let pid = child.id();
        let started = std::time::Instant::now();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .unwrap()
                .success()
        );
        let waited = tokio::time::timeout(
            within,
            tokio::task::spawn_blocking(move || {
                let status = child.wait();
                (status, child)
            }),
        )
        .await;
        match waited {
            Ok(joined) => {
                let (status, _) = joined.unwrap();
                (status.unwrap().code(), started.elapsed())
            }
            Err(_) => {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
                panic!(
                    "SIGTERM did not end the process within {within:?}; its log:\n{}",
                    self.logs()
                );
            }
        }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

async fn seeded_postgres(users: usize) -> (String, Vec<UserId>) {
    let db_url = crate::helpers::db::fresh_postgres_url().await;
    let repo = user_api::db::connect(&db_url, &user_api::pool_options(&Default::default()))
        .await
        .unwrap();
    repo.migrate().await.unwrap();
    let mut profiles = user_api::seed::fake_profiles(users);
    for p in &mut profiles {
        p.last_login = None;
    }
    repo.insert_many(&profiles).await.unwrap();
    repo.close().await;
    (db_url, profiles.iter().map(|p| p.user_id).collect())
}

/// Issue 17's run: a login storm on a 4-connection pool (with reads abandoned mid-query,
/// as a load generator stopping does), then a 90/10 read/write mix, then SIGTERM. Before
/// the fix the abandoned reads held the pool's connections for ever: the storm got 503s
/// and the process never exited.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_after_a_login_storm_on_a_4_connection_pool_ends_within_its_bounds() {
    const STORM_USERS: usize = 300;
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let redis = RedisServer::start().await;
    let (db_url, ids) = seeded_postgres(STORM_USERS).await;
    let grace = Duration::from_secs(3);
    let mut bin = Binary::start(
        &db_url,
        &redis.url(),
        &[
            ("USER_API__DATABASE__MAX_CONNECTIONS", "4"),
            ("USER_API__LOGINS__FLUSH_MS", "200"),
            ("USER_API__SERVER__SHUTDOWN_GRACE_SECS", "3"),
        ],
    )
    .await;
    // Reads abandoned mid-query: one per pooled connection.
    let lock = lock_profiles(&db_url).await;
    let abandoned: Vec<UserId> = (0..4).map(|_| UserId::random()).collect();
    abandon_reads(&bin.addr, &db_url, &abandoned, 4).await;
    lock.close().await.unwrap();

    // The storm: every user's first request of the hour (a token with `iat`), 64 at once.
    let client = reqwest::Client::new();
    let statuses: Vec<u16> = futures::stream::iter(ids.iter().copied())
        .map(|id| {
            let (client, base) = (client.clone(), bin.base.clone());
            async move {
                client
                    .get(format!("{base}/api/profiles/{id}"))
                    .bearer_auth(login_token(id))
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0)
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let failed = statuses.iter().filter(|s| **s != 200).count();
    assert_eq!(failed, 0, "storm requests failed: {statuses:?}");

    // A second of 90/10 reads and writes over the first 50 users.
    let until = tokio::time::Instant::now() + Duration::from_secs(1);
    let mix = (0..16).map(|w| {
        let (client, base, ids) = (client.clone(), bin.base.clone(), ids.clone());
        tokio::spawn(async move {
            let mut n = w;
            while tokio::time::Instant::now() < until {
                let id = ids[n % 50];
                let req = if n % 10 == 0 {
                    client
                        .put(format!("{base}/api/profiles/{id}"))
                        .json(&json!({"first_name": format!("Mix{n}")}))
                } else {
                    client.get(format!("{base}/api/profiles/{id}"))
                };
                let status = req
                    .bearer_auth(login_token(id))
                    .send()
                    .await
                    .unwrap()
                    .status();
                assert!(status.is_success(), "{status}");
                n += 16;
            }
        })
    });
    for w in futures::future::join_all(mix).await {
        w.unwrap();
    }

    let within = grace + BOUNDS_PAST_GRACE;
    let (code, took) = bin.terminate(within + Duration::from_secs(5)).await;
    let logs = bin.logs();
    assert!(
        took <= within,
        "took {took:?}, bound {within:?}; log:\n{logs}"
    );
    // 0: every step finished within its bound, none was cut short.
    assert_eq!(code, Some(0), "a clean exit; log:\n{logs}");
    assert!(!logs.contains("left unfinished"), "{logs}");
    let mut db = sqlx::PgConnection::connect(&db_url).await.unwrap();
    let recorded: i64 =
        sqlx::query_scalar("SELECT count(*) FROM profiles WHERE last_login IS NOT NULL")
            .fetch_one(&mut db)
            .await
            .unwrap();
    assert_eq!(
        recorded, STORM_USERS as i64,
        "every login of the storm recorded"
    );
}

/// Every step of the shutdown is bounded: a request that can never finish (a read waiting
/// on a lock nobody releases, with no statement timeout) neither keeps the process alive
/// nor makes it hang; the log says what was left, and the exit status is not 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_that_never_finishes_does_not_keep_the_process_alive() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let redis = RedisServer::start().await;
    let (db_url, ids) = seeded_postgres(5).await;
    let grace = Duration::from_secs(1);
    let mut bin = Binary::start(
        &db_url,
        &redis.url(),
        &[
            ("USER_API__DATABASE__MAX_CONNECTIONS", "4"),
            // No statement limit, so no client-side ceiling either: only the shutdown's
            // own bounds can end this read.
            ("USER_API__DATABASE__STATEMENT_TIMEOUT_MS", "0"),
            ("USER_API__SERVER__SHUTDOWN_GRACE_SECS", "1"),
        ],
    )
    .await;
    let lock = lock_profiles(&db_url).await;
    let mut stuck = tokio::net::TcpStream::connect(&bin.addr).await.unwrap();
    let t = crate::helpers::token(ids[0], crate::helpers::Role::User);
    tokio::io::AsyncWriteExt::write_all(
        &mut stuck,
        format!(
            "GET /api/profiles/{} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {t}\r\n\r\n",
            ids[0]
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    crate::helpers::eventually(
        Duration::from_secs(10),
        "the read waiting on the lock",
        || async { waiting_on_locks(&db_url).await >= 1 },
    )
    .await;
    let within = grace + BOUNDS_PAST_GRACE;
    let (code, took) = bin.terminate(within + Duration::from_secs(5)).await;
    let logs = bin.logs();
    lock.close().await.unwrap();
    assert!(
        took <= within,
        "took {took:?}, bound {within:?}; log:\n{logs}"
    );
    assert_eq!(
        code,
        Some(1),
        "an exit that left work behind says so; log:\n{logs}"
    );
    for said in [
        "requests still in flight after the grace period",
        "database connections still in use",
        "\"in_use\":1",
    ] {
        assert!(logs.contains(said), "the log lacks {said:?}:\n{logs}");
    }
}
