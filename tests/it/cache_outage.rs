//! Redis is a helper, never a dependency of correctness (SPEC 4): with a test-owned
//! `redis-server` killed, paused or absent, reads and writes go on against the database
//! within the Redis timeout, `/ready` says degraded, and when Redis returns the cache is
//! used again without a restart. A write acknowledged while Redis was unreachable is never
//! hidden by the older entry Redis still holds when it comes back.

use std::time::{Duration, Instant};

use crate::helpers::redis::{StoreKind, Target};
use crate::helpers::{Backend, Role, TestApp, eventually, json_of, token};
use reqwest::Method;
use serde_json::{Value, json};
use user_api::config::Config;
use user_api::domain::UserId;

/// Longest a request may take while Redis is down (the database answers in milliseconds;
/// the Redis timeout is 50 ms).
const PATIENCE: Duration = Duration::from_millis(500);

async fn timed_read(app: &TestApp, id: UserId) -> (u16, Value, Duration) {
    let start = Instant::now();
    let (s, b) = app.read_profile(id).await;
    (s, b, start.elapsed())
}

async fn timed_put(app: &TestApp, id: UserId, name: &str) -> Duration {
    let start = Instant::now();
    let res = app
        .send_json(
            Method::PUT,
            &format!("/api/profiles/{id}"),
            &token(id, Role::User),
            &json!({"name": name}),
        )
        .await;
    let took = start.elapsed();
    assert_eq!(res.status(), 200, "PUT while redis is down");
    took
}

async fn ready(app: &TestApp) -> (u16, Value) {
    json_of(app.get_anonymous("/ready").await).await
}

/// The production Redis timeout and a short breaker cooldown, so that an outage is
/// noticed, and its end, within a test's patience.
fn outage_timeouts(c: &mut Config) {
    c.redis.breaker_cooldown_ms = 300;
    c.redis.timeout_ms = 50;
}

/// A service on a test-owned node with [`outage_timeouts`], connected.
async fn outage_app() -> (Target, TestApp) {
    let target = Target::new(StoreKind::Own).await;
    let app = TestApp::builder()
        .with_store(&target)
        .with(outage_timeouts)
        .spawn()
        .await;
    (target, app)
}

async fn hit_again(app: &TestApp, id: UserId, what: &str) {
    eventually(Duration::from_secs(10), what, || async {
        app.read_profile(id).await;
        app.read_profile(id).await.1["cached"] == true
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_run_then_restarted() {
    let (mut target, app) = outage_app().await;
    let id = UserId::random();
    app.create_profile(id, json!({"name": "before"})).await;
    app.read_profile(id).await;
    assert_eq!(app.read_profile(id).await.1["cached"], true);
    let (s, r) = ready(&app).await;
    assert_eq!(
        (s, r["status"].clone(), r["redis"].clone()),
        (200, json!("ok"), json!("ok"))
    );

    target.server().kill();
    let start = Instant::now();
    let mut i = 0;
    while start.elapsed() < Duration::from_secs(2) {
        i += 1;
        let name = format!("during-{i}");
        let took = timed_put(&app, id, &name).await;
        assert!(took < PATIENCE, "PUT took {took:?} with redis down");
        let (s, b, took) = timed_read(&app, id).await;
        assert_eq!(s, 200);
        assert!(took < PATIENCE, "GET took {took:?} with redis down");
        assert_eq!(b["profile"]["name"], name, "reads see the writes");
        assert_eq!(b["cached"], false);
    }
    let (s, r) = ready(&app).await;
    assert_eq!(s, 200, "redis down is degraded, not dead: {r}");
    assert_eq!(
        (
            r["status"].clone(),
            r["redis"].clone(),
            r["database"].clone()
        ),
        (json!("degraded"), json!("down"), json!("ok"))
    );

    target.server().restart().await;
    hit_again(&app, id, "the cache is used again after redis returns").await;
    let (_, b) = app.read_profile(id).await;
    assert_eq!(b["profile"]["name"], format!("during-{i}"));
    eventually(Duration::from_secs(5), "/ready ok again", || async {
        ready(&app).await.1["status"] == "ok"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_while_unreachable_is_never_hidden_by_the_old_entry() {
    let (mut target, app) = outage_app().await;
    let id = UserId::random();
    let key = format!("cache:profile:{id}");
    app.create_profile(id, json!({"name": "old"})).await;
    app.read_profile(id).await;
    assert_eq!(
        app.read_profile(id).await.1["cached"],
        true,
        "the old entry is cached"
    );

    // Redis goes away with the old entry on disk, the write is acknowledged meanwhile, and
    // Redis comes back with the old entry (TTL 300 s) still in it.
    target.server().save();
    target.server().kill();
    let took = timed_put(&app, id, "new").await;
    assert!(took < PATIENCE, "{took:?}");
    target.server().restart().await;
    let back = Instant::now();
    let mut direct = target.server().conn().await;
    let old: Option<String> = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut direct)
        .await
        .unwrap();
    assert!(
        old.as_deref().is_some_and(|v| v.contains("\"old\"")),
        "the restarted redis holds the old entry: {old:?}"
    );

    let mut invalidated_after = None;
    while back.elapsed() < Duration::from_secs(6) {
        let (s, b) = app.read_profile(id).await;
        assert_eq!(s, 200);
        assert_eq!(
            b["profile"]["name"], "new",
            "served the entry older than an acknowledged write: {b}"
        );
        if invalidated_after.is_none() {
            let v: Option<String> = redis::cmd("GET")
                .arg(&key)
                .query_async(&mut direct)
                .await
                .unwrap();
            if !v.as_deref().is_some_and(|v| v.contains("\"old\"")) {
                invalidated_after = Some(back.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = invalidated_after.expect("the old entry was never invalidated");
    assert!(
        after <= Duration::from_secs(5),
        "invalidated {after:?} after redis returned"
    );
    hit_again(&app, id, "cache used again").await;
    assert_eq!(app.read_profile(id).await.1["profile"]["name"], "new");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_redis_never_holds_a_request() {
    let (target, app) = outage_app().await;
    let Target::Own(server) = &target else {
        unreachable!()
    };
    let id = UserId::random();
    app.create_profile(id, json!({"name": "a"})).await;
    app.read_profile(id).await;

    let out = server.cli(&["CLIENT", "PAUSE", "2500", "ALL"]);
    assert!(out.contains("OK"), "{out}");
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < Duration::from_secs(2) {
        n += 1;
        let (s, b, took) = timed_read(&app, id).await;
        assert_eq!(s, 200);
        assert!(took < PATIENCE, "GET took {took:?} with redis paused");
        if n > 1 {
            assert_eq!(b["profile"]["name"], format!("p{}", n - 1));
        }
        let took = timed_put(&app, id, &format!("p{n}")).await;
        assert!(took < PATIENCE, "PUT took {took:?} with redis paused");
    }
    assert_eq!(ready(&app).await.1["status"], "degraded");
    hit_again(&app, id, "cache used again after the pause").await;
    assert_eq!(
        app.read_profile(id).await.1["profile"]["name"],
        format!("p{n}")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_and_serves_while_redis_is_down() {
    let mut target = Target::new(StoreKind::Own).await;
    target.server().kill();
    let c = TestApp::builder()
        .with_store(&target)
        .with(outage_timeouts)
        .config()
        .await;
    let start = Instant::now();
    let app = TestApp::spawn_now(c).await;
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "start-up does not wait for redis"
    );
    let id = UserId::random();
    app.create_profile(id, json!({"name": "x"})).await;
    for _ in 0..5 {
        let (s, _, took) = timed_read(&app, id).await;
        assert_eq!(s, 200);
        assert!(took < PATIENCE, "{took:?}");
    }
    eventually(Duration::from_secs(5), "/ready degraded", || async {
        ready(&app).await.1["redis"] == "down"
    })
    .await;
    target.server().restart().await;
    hit_again(&app, id, "the cache is used once redis is up").await;
}

/// The index of the cluster node holding `key` (asked directly: only the owner answers
/// `EXISTS` with a number, the others with `MOVED`).
fn owner_of(cluster: &crate::helpers::redis::RedisCluster, key: &str) -> Option<usize> {
    cluster
        .nodes
        .iter()
        .position(|n| n.cli(&["EXISTS", key]).trim() == "1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_node_killed_mid_run_then_restarted() {
    // Well under a second, with up to a few Redis calls of at most `timeout_ms` each.
    const CLUSTER_PATIENCE: Duration = Duration::from_millis(800);
    let mut target = Target::new(StoreKind::Cluster).await;
    let app = TestApp::builder()
        .with_backend(Backend::Postgres)
        .with_store(&target)
        .with(|c| {
            c.redis.breaker_cooldown_ms = 300;
            c.redis.timeout_ms = 200;
        })
        .spawn()
        .await;

    let ids: Vec<UserId> = (0..6).map(|_| UserId::random()).collect();
    let mut last: Vec<String> = Vec::new();
    for (n, id) in ids.iter().enumerate() {
        let name = format!("before-{n}");
        app.create_profile(*id, json!({"name": name})).await;
        app.read_profile(*id).await;
        assert_eq!(
            app.read_profile(*id).await.1["cached"],
            true,
            "cached before"
        );
        last.push(name);
    }
    let owners: Vec<usize> = ids
        .iter()
        .map(|id| {
            owner_of(target.cluster(), &format!("cache:profile:{id}"))
                .unwrap_or_else(|| panic!("no node holds the entry of {id}"))
        })
        .collect();
    let victim = owners[0];
    assert_eq!(ready(&app).await.1["status"], "ok");

    target.cluster_mut().node_mut(victim).kill();
    let killed = Instant::now();
    let mut round = 0;
    let mut seen_down = false;
    // At least 2 s, and until `/ready` has said degraded (the breaker opened). The node
    // comes back before the survivors mark it FAIL (cluster-node-timeout 5 s): once they
    // have, Redis itself takes ~10 s more to clear the flag and report `cluster_state:ok`.
    while !(seen_down && killed.elapsed() >= Duration::from_secs(2)) {
        assert!(
            killed.elapsed() < Duration::from_secs(4),
            "/ready never said redis down while a master was dead"
        );
        round += 1;
        for (n, id) in ids.iter().enumerate() {
            let name = format!("during-{round}-{n}");
            let took = timed_put(&app, *id, &name).await;
            assert!(
                took < CLUSTER_PATIENCE,
                "PUT took {took:?} with a master down (entry on node {}, dead {victim})",
                owners[n]
            );
            last[n] = name;
            let (s, b, took) = timed_read(&app, *id).await;
            assert_eq!(s, 200, "GET with a master down: {b}");
            assert!(
                took < CLUSTER_PATIENCE,
                "GET took {took:?} with a master down (entry on node {}, dead {victim})",
                owners[n]
            );
            assert_eq!(b["profile"]["name"], last[n], "reads see the writes: {b}");
        }
        let (s, r) = ready(&app).await;
        assert_eq!(s, 200, "a master down is degraded, not dead: {r}");
        if r["redis"] == "down" {
            assert_eq!(r["status"], "degraded", "{r}");
            seen_down = true;
        }
    }

    target.cluster_mut().node_mut(victim).restart().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while !target
        .cluster()
        .nodes
        .iter()
        .all(|n| n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok"))
    {
        assert!(Instant::now() < deadline, "the cluster did not heal");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let back = Instant::now();
    loop {
        let mut all_cached = true;
        for (n, id) in ids.iter().enumerate() {
            let (s, b) = app.read_profile(*id).await;
            assert_eq!(s, 200);
            assert_eq!(
                b["profile"]["name"], last[n],
                "served a value older than the last acknowledged PUT: {b}"
            );
            all_cached &= b["cached"] == true;
        }
        let ready_ok = ready(&app).await.1["status"] == "ok";
        if all_cached && ready_ok {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(15),
            "15 s after the cluster healed: /ready ok: {ready_ok}, every read a hit: {all_cached}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
