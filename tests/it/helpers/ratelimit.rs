//! Rate-limit suite support (`ratelimit_*`): windows, headers, bursts, the counters a Redis
//! holds, and the checks the single-node and cluster suites share. Their services run with
//! `Limits::Production`.

use std::time::{Duration, Instant};

use ::redis::AsyncCommands;
use ::redis::aio::MultiplexedConnection;
use serde_json::json;
use user_api::domain::UserId;
use user_api::ratelimit::Window;
use user_api::ratelimit::window::now_ms;

use super::redis::{Target, connect};
use super::{Limits, Role, TestApp, TestAppBuilder, token};

/// Waits until the current window has at least `room` left, so that a test's requests
/// all fall into one window (hourly windows: at most a few seconds, once an hour).
pub async fn window_room(window_secs: u64, room: Duration) {
    let left = Window::current(window_secs).remaining_ms(now_ms());
    if left < room.as_millis() as u64 {
        tokio::time::sleep(Duration::from_millis(left + 50)).await;
    }
}

/// Sleeps until just after the next window starts.
pub async fn next_window(window_secs: u64) {
    let left = Window::current(window_secs).remaining_ms(now_ms());
    tokio::time::sleep(Duration::from_millis(left + 50)).await;
}

/// Runs `burst` from the start of a fresh `window_secs` window, and again in the next
/// window (up to five times) when it did not fit in one: on a loaded machine a few
/// requests can outlast a two-second window, and these tests are about counting, not
/// speed. `burst` must start from zero each time (a new caller); its last result is
/// returned with the window it fitted in.
pub async fn within_one_window<T, F, Fut>(window_secs: u64, mut burst: F) -> (Window, T)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    for _ in 0..5 {
        next_window(window_secs).await;
        let window = Window::current(window_secs);
        let out = burst().await;
        if Window::current(window_secs) == window {
            return (window, out);
        }
    }
    panic!("five bursts in a row took longer than a {window_secs} s window");
}

/// The value of header `name`, which must be there.
pub fn header(res: &reqwest::Response, name: &str) -> String {
    res.headers()
        .get(name)
        .unwrap_or_else(|| panic!("{} has no {name} header", res.status()))
        .to_str()
        .unwrap()
        .to_owned()
}

/// The value of header `name` as a number.
pub fn header_u64(res: &reqwest::Response, name: &str) -> u64 {
    header(res, name).parse().unwrap()
}

/// Sends `n` concurrent GETs of `path`, spread round-robin over `apps`; returns statuses.
pub async fn burst(apps: &[TestApp], path: &str, token: &str, n: usize) -> Vec<u16> {
    let futures = (0..n).map(|i| {
        let app = &apps[i % apps.len()];
        async move { app.get(path, token).await.status().as_u16() }
    });
    futures::future::join_all(futures).await
}

/// How many of `statuses` are `status`.
pub fn tally(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|s| **s == status).count()
}

/// Every `<prefix>*` key on the node behind `conn`, sorted.
async fn keys_on(conn: &mut MultiplexedConnection, prefix: &str) -> Vec<String> {
    let mut keys: Vec<String> = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = ::redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await
            .unwrap();
        keys.extend(batch);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    keys.sort();
    keys.dedup();
    keys
}

/// Every `<prefix>*` key on every node of `target`, with its value and PTTL, sorted.
pub async fn counters(target: &Target, prefix: &str) -> Vec<(String, i64, i64)> {
    let mut out = Vec::new();
    for url in target.node_urls() {
        let mut conn = connect(&url).await;
        for k in keys_on(&mut conn, prefix).await {
            let v: i64 = conn.get(&k).await.unwrap();
            let pttl: i64 = conn.pttl(&k).await.unwrap();
            out.push((k, v, pttl));
        }
    }
    out.sort();
    out
}

/// No counter of `prefix` may live without a TTL (SPEC 5); there must be some.
pub async fn assert_ttls(target: &Target, prefix: &str) {
    let mut found = 0;
    for url in target.node_urls() {
        let mut conn = connect(&url).await;
        for k in keys_on(&mut conn, prefix).await {
            found += 1;
            let pttl: i64 = conn.pttl(&k).await.unwrap();
            assert!(pttl > 0, "{k} has PTTL {pttl}");
            let ttl: i64 = conn.ttl(&k).await.unwrap();
            assert!(ttl > 0 && ttl != -1, "{k} has TTL {ttl}");
        }
    }
    assert!(found > 0, "no counters under {prefix}");
}

/// 150 concurrent reads of one profile, round-robin over three instances on `target`:
/// exactly the policy's 100 pass and 50 are refused, the shared counter holds all 150
/// (rejected requests are counted too), and every counter of the caller has a TTL.
pub async fn exact_across_three_instances(target: &Target) {
    let started = Instant::now();
    let config = TestApp::builder()
        .with_store(target)
        .with_limits(Limits::Production)
        .config()
        .await;
    let apps = [
        TestApp::spawn_with(config.clone()).await,
        TestApp::spawn_with(config.clone()).await,
        TestApp::spawn_with(config).await,
    ];
    let id = UserId::random();
    apps[0].create_profile(id, json!({"name": "Exact"})).await;
    window_room(3600, Duration::from_secs(10)).await;
    let statuses = burst(
        &apps,
        &format!("/api/profiles/{id}"),
        &token(id, Role::User),
        150,
    )
    .await;
    assert_eq!(tally(&statuses, 200), 100, "{statuses:?}");
    assert_eq!(tally(&statuses, 429), 50, "{statuses:?}");

    let prefix = format!("rate:{id}:");
    let found = counters(target, &prefix).await;
    let read_key = Window::current(3600).user_key(id, "/api/profiles");
    let read = found
        .iter()
        .find(|(k, _, _)| *k == read_key)
        .unwrap_or_else(|| panic!("no read counter {read_key}: {found:?}"));
    assert_eq!(read.1, 150, "rejected requests are counted too");
    assert_ttls(target, &prefix).await;
    eprintln!("150 reads over three instances: {:?}", started.elapsed());
}

/// Starts the app `builder` describes with nothing in the background talking to Redis
/// (metrics flush, outbox poll), and makes it serve a new profile from the cache. Returns
/// the app, the profile's path and its owner's token (without `iat`, so that no login
/// record, and with it an invalidation, follows a read).
pub async fn app_with_cached_profile(builder: TestAppBuilder) -> (TestApp, String, String) {
    let app = builder
        .with(|c| {
            c.redis.metrics_flush_ms = 600_000;
            c.redis.outbox_poll_ms = 600_000;
        })
        .spawn()
        .await;
    let id = UserId::random();
    let t = token(id, Role::User);
    app.create_profile(id, json!({"name": "Hot"})).await;
    let path = format!("/api/profiles/{id}");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        assert!(Instant::now() < deadline, "the profile never became cached");
        let (s, body) = super::json_of(app.get(&path, &t).await).await;
        assert_eq!(s, 200);
        if body["cached"] == true {
            break;
        }
    }
    (app, path, t)
}
