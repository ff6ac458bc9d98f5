//! Rate limits on a test-owned 3-master Redis Cluster: exact across instances, every
//! counter with a TTL, and the hot path's script and cache GET sent together.

mod common;
#[path = "common/redis_servers.rs"]
mod redis_servers;

use std::time::{Duration, Instant};

use common::{Backend, TestApp, json_of, token};
use redis_servers::RedisCluster;
use serde_json::json;
use user_api::config::{Config, RateLimitConfig};
use user_api::domain::UserId;
use user_api::ratelimit::Window;
use user_api::ratelimit::window::now_ms;

async fn config_on(cluster: &RedisCluster) -> Config {
    let mut c = common::test_config(Backend::Sqlite).await;
    c.redis_cluster_urls = cluster.urls();
    // The production policies (the shared harness relaxes them for other suites).
    c.rate_limits = RateLimitConfig::default();
    // Generous for a loaded CI machine: a timeout would (correctly) fall back to the
    // per-instance counter, which is not what these tests measure.
    c.redis.timeout_ms = 1_000;
    c
}

/// Waits until the app's Redis client answers (it connects lazily).
async fn wait_connected(app: &TestApp) {
    let redis = app.state.redis.as_ref().expect("redis configured");
    let deadline = Instant::now() + Duration::from_secs(20);
    while redis.query::<String>(&redis::cmd("PING")).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the app never reached the cluster"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn window_room(room: Duration) {
    let left = Window::current(3600).remaining_ms(now_ms());
    if left < room.as_millis() as u64 {
        tokio::time::sleep(Duration::from_millis(left + 50)).await;
    }
}

/// Every key matching `pattern` on every node, with its value and PTTL.
async fn keys_on_nodes(cluster: &RedisCluster, pattern: &str) -> Vec<(String, i64, i64)> {
    let mut out = Vec::new();
    for node in &cluster.nodes {
        let mut c = node.connection().await.unwrap();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(pattern)
            .query_async(&mut c)
            .await
            .unwrap();
        for k in keys {
            let v: i64 = redis::cmd("GET").arg(&k).query_async(&mut c).await.unwrap();
            let pttl: i64 = redis::cmd("PTTL")
                .arg(&k)
                .query_async(&mut c)
                .await
                .unwrap();
            out.push((k, v, pttl));
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exact_across_three_instances_on_a_cluster() {
    let started = Instant::now();
    let cluster = RedisCluster::start(3).await;
    eprintln!("cluster up in {:?}", started.elapsed());
    let config = config_on(&cluster).await;
    let apps = [
        TestApp::spawn_with(config.clone()).await,
        TestApp::spawn_with(config.clone()).await,
        TestApp::spawn_with(config).await,
    ];
    for app in &apps {
        wait_connected(app).await;
    }
    let id = UserId::random();
    apps[0].create_profile(id, json!({"name": "Cluster"})).await;
    window_room(Duration::from_secs(10)).await;
    let t = token(id, false);
    let path = format!("/api/profiles/{id}");
    let statuses = futures::future::join_all((0..150).map(|i| {
        let app = &apps[i % 3];
        let (path, t) = (&path, &t);
        async move { app.get(path, t).await.status().as_u16() }
    }))
    .await;
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!((ok, limited), (100, 50), "{statuses:?}");

    let keys = keys_on_nodes(&cluster, &format!("rate:{id}:*")).await;
    let read_key = Window::current(3600).user_key(id, "/api/profiles");
    assert!(
        keys.iter().any(|(k, v, _)| *k == read_key && *v == 150),
        "{keys:?}"
    );
    for (k, _, pttl) in &keys {
        assert!(*pttl > 0, "{k} has PTTL {pttl}");
    }
    eprintln!(
        "exact_across_three_instances_on_a_cluster: {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_read_sends_one_script_and_one_get_on_a_cluster() {
    let cluster = RedisCluster::start(3).await;
    let mut config = config_on(&cluster).await;
    config.redis.metrics_flush_ms = 600_000;
    config.redis.outbox_poll_ms = 600_000;
    let app = TestApp::spawn_with(config).await;
    wait_connected(&app).await;
    let id = UserId::random();
    let now = chrono::Utc::now().timestamp();
    // No `iat`: no last-login write (and invalidation) in the background.
    let t = common::sign(&json!({"sub": id.to_string(), "role": "user", "exp": now + 600}));
    app.create_profile(id, json!({"name": "Hot"})).await;
    let path = format!("/api/profiles/{id}");
    for _ in 0..2 {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            assert!(Instant::now() < deadline, "the profile never became cached");
            let (s, body) = json_of(app.get(&path, &t).await).await;
            assert_eq!(s, 200);
            if body["cached"] == true {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for node in &cluster.nodes {
        let mut c = node.connection().await.unwrap();
        let _: () = redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query_async(&mut c)
            .await
            .unwrap();
    }
    let (s, body) = json_of(app.get(&path, &t).await).await;
    assert_eq!((s, &body["cached"]), (200, &json!(true)));
    let (mut evalsha, mut get) = (0, 0);
    for node in &cluster.nodes {
        let mut c = node.connection().await.unwrap();
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut c)
            .await
            .unwrap();
        for line in info.lines() {
            let calls = |prefix: &str| {
                line.strip_prefix(prefix)
                    .and_then(|r| r.split(',').next())
                    .and_then(|n| n.parse::<u64>().ok())
            };
            evalsha += calls("cmdstat_evalsha:calls=").unwrap_or(0);
            get += calls("cmdstat_get:calls=").unwrap_or(0);
        }
    }
    assert_eq!(
        (evalsha, get),
        (1, 1),
        "one script and one GET for a cached read"
    );
}
