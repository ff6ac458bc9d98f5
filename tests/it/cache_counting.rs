//! What the cache costs, counted: database queries (`db_queries_total` in `/metrics`) and
//! Redis commands (the SLOWLOG of a test-owned server, set to log every command, filtered
//! to cache keys so the rate limiter's own commands do not count). Stampede protection,
//! refresh-ahead across instances, the batch's one MGET / one query / one write-back, the
//! hot path's single look (one MGET), and the shared hit/miss metrics.
//!
//! `db_queries_total` is process-wide and `cargo test` runs a binary's tests on threads
//! of one process, so the tests reading it take `COUNTING` (nextest runs each test in its
//! own process anyway).

use std::time::Duration;

use rstest::rstest;

use crate::helpers::redis::{
    DelayProxy, RedisServer, StoreKind, Target, cache_commands, raw, slowlog_reset,
};
use crate::helpers::{Backend, Role, TestApp, eventually, json_of, token};
use futures::future::join_all;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::sync::Mutex;
use user_api::domain::UserId;

static COUNTING: Mutex<()> = Mutex::const_new(());

const FETCH: &str = "db_queries_total{op=\"fetch\"}";
const FETCH_MANY: &str = "db_queries_total{op=\"fetch_many\"}";

/// The hot path's look at a profile entry: one MGET of the entry and its companions.
fn look(id: UserId) -> Vec<String> {
    let k = key(id);
    vec![
        "MGET".to_owned(),
        k.clone(),
        format!("{{{k}}}:state"),
        format!("{{{k}}}:missing"),
    ]
}

fn key(id: UserId) -> String {
    format!("cache:profile:{id}")
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stampede_costs_one_read(
    #[values(StoreKind::Shared, StoreKind::Memory, StoreKind::Cluster)] kind: StoreKind,
) {
    let _serial = COUNTING.lock().await;
    let target = Target::new(kind).await;
    let app = TestApp::builder()
        .with_backend(Backend::Sqlite)
        .with_store(&target)
        .spawn()
        .await;
    let id = UserId::random();
    app.create_profile(id, json!({"name": "popular"})).await;
    let before = app.prom_counter(FETCH).await;
    let answers = join_all((0..50).map(|_| app.read_profile(id))).await;
    let after = app.prom_counter(FETCH).await;
    assert!(
        answers
            .iter()
            .all(|(s, b)| *s == 200 && b["profile"]["name"] == "popular")
    );
    assert_eq!(
        after - before,
        1,
        "50 concurrent misses on one key cost one database read"
    );
    // Unknown ids are stampede-protected too, then answered by the tombstone.
    let unknown = UserId::random();
    let before = app.prom_counter(FETCH).await;
    let answers = join_all((0..30).map(|_| app.read_profile(unknown))).await;
    assert!(answers.iter().all(|(s, _)| *s == 404));
    app.read_profile(unknown).await;
    assert_eq!(app.prom_counter(FETCH).await - before, 1);
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_ahead_once_across_instances(
    #[values(StoreKind::Shared, StoreKind::Cluster, StoreKind::Memory)] kind: StoreKind,
) {
    let _serial = COUNTING.lock().await;
    let target = Target::new(kind).await;
    // TTL 10 s, jitter at most 1 s, refresh when < 7 s are left: an entry is fresh for its
    // first 2 s at least and near expiry from 3 s to at least 9 s of age, wide margins on
    // a loaded machine.
    let c = TestApp::builder()
        .with_store(&target)
        .with(|c| {
            c.cache.ttl_secs = 10;
            c.cache.refresh_ahead_secs = 7;
            c.cache.jitter_percent = 10;
        })
        .config()
        .await;
    // Two instances on the same Redis and database, each reaching Redis through a proxy
    // adding 25 ms each way: the refresh one of them starts (SET NX, read, fill) then
    // takes longer than the other's concurrent GETs, so both see the near-expiry entry
    // and both try to refresh it. (The in-process store is per instance: one instance; on
    // the cluster, whose nodes announce their own addresses, no proxy and one instance.)
    let mut proxies = Vec::new();
    let (a, b) = match &c.redis_url {
        Some(_) => {
            let mut instances = Vec::new();
            for _ in 0..2 {
                let (proxy, far) = DelayProxy::in_front_of(&c, Duration::from_millis(25)).await;
                proxies.push(proxy);
                instances.push(TestApp::spawn_with(far).await);
            }
            let b = instances.pop();
            (instances.pop().expect("two instances"), b)
        }
        None => (TestApp::spawn_with(c).await, None),
    };
    // Under heavy load one instance may only get to read after the refresh landed; then
    // that round cannot show two would-be refreshers, so it is run again with a new id.
    for round in 1..=3 {
        if refresh_round(&a, b.as_ref()).await {
            return;
        }
        eprintln!("round {round}: one instance never saw the near-expiry entry; again");
    }
    panic!("no round had both instances serve the near-expiry entry");
}

/// One near-expiry refresh; `false` when the second instance never saw the old entry.
async fn refresh_round(a: &TestApp, b: Option<&TestApp>) -> bool {
    let id = UserId::random();
    a.create_profile(id, json!({"name": "r"})).await;
    a.read_profile(id).await;
    let first = a.read_profile(id).await.1;
    let first_hit = std::time::Instant::now();
    assert_eq!(first["cached"], true);
    let cached_at = first["cached_at"].as_str().unwrap().to_owned();

    // Fresh: a hit far from expiry does not refresh.
    let before = a.prom_counter(FETCH).await;
    a.read_profile(id).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(a.prom_counter(FETCH).await, before);

    // Near expiry (< 7 s left of at most 10 s): a hit answers at once with the cached entry…
    tokio::time::sleep_until((first_hit + Duration::from_millis(3100)).into()).await;
    let before = a.prom_counter(FETCH).await;
    match b {
        None => {
            let (_, h) = a.read_profile(id).await;
            assert_eq!(h["cached"], true);
            assert_eq!(
                h["cached_at"],
                cached_at.as_str(),
                "served the near-expiry entry"
            );
        }
        Some(bb) => {
            // Both instances see the near-expiry entry, so both try to refresh it.
            let (on_a, on_b) = tokio::join!(
                join_all((0..4).map(|_| a.read_profile(id))),
                join_all((0..4).map(|_| bb.read_profile(id)))
            );
            for (s, h) in on_a.iter().chain(&on_b) {
                assert_eq!((*s, h["cached"].clone()), (200, json!(true)), "{h}");
            }
            let saw_old =
                |v: &Vec<(u16, Value)>| v.iter().any(|(_, h)| h["cached_at"] == cached_at.as_str());
            if !(saw_old(&on_a) && saw_old(&on_b)) {
                // Let this round's refresh settle so it is not counted in the next one.
                tokio::time::sleep(Duration::from_millis(500)).await;
                return false;
            }
        }
    }
    // …and the entry is replaced in the background, by one refresher across instances.
    let store = a.state.cache.store().clone();
    eventually(Duration::from_secs(2), "entry refreshed", || {
        let store = store.clone();
        let cached_at = cached_at.clone();
        async move {
            let v = store.get(&key(id)).await.ok().flatten().unwrap_or_default();
            v.contains("cached_at") && !v.contains(&cached_at)
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        a.prom_counter(FETCH).await - before,
        1,
        "exactly one refresh"
    );
    let ttl = store.ttl(&key(id)).await.unwrap().unwrap();
    assert!(
        ttl > Duration::from_millis(7000) && ttl <= Duration::from_secs(10),
        "a fresh TTL: {ttl:?}"
    );
    let (_, after) = a.read_profile(id).await;
    assert_eq!(after["cached"], true);
    assert_ne!(after["cached_at"], cached_at.as_str());
    true
}

/// An app on a test-owned node, with the metrics flush out of the way of command counts.
async fn counted_app() -> (Target, TestApp) {
    let target = Target::new(StoreKind::Own).await;
    let app = TestApp::builder()
        .with_backend(Backend::Sqlite)
        .with_store(&target)
        .with(|c| c.redis.metrics_flush_ms = 3_600_000)
        .spawn()
        .await;
    (target, app)
}

fn server(t: &Target) -> &RedisServer {
    match t {
        Target::Own(s) => s,
        _ => unreachable!(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_get_costs_one_redis_get() {
    let _serial = COUNTING.lock().await;
    let (t, app) = counted_app().await;
    // The fill script is loaded once per server (EVALSHA, SCRIPT LOAD on NOSCRIPT):
    // another miss first, so the counts below are those of every later request.
    let other = UserId::random();
    app.create_profile(other, json!({})).await;
    app.read_profile(other).await;
    let id = UserId::random();
    app.create_profile(id, json!({})).await;

    slowlog_reset(server(&t)).await;
    let before = app.prom_counter(FETCH).await;
    assert_eq!(app.read_profile(id).await.1["cached"], false);
    let miss = cache_commands(server(&t)).await;
    assert_eq!(app.prom_counter(FETCH).await - before, 1);
    assert_eq!(
        miss.len(),
        2,
        "a miss: one look and one guarded fill: {miss:?}"
    );
    assert_eq!(miss[0], look(id));
    assert_eq!(miss[1][0].to_uppercase(), "EVALSHA");

    let entry = raw(&app, &key(id)).await;
    slowlog_reset(server(&t)).await;
    let before = app.prom_counter(FETCH).await;
    assert_eq!(app.read_profile(id).await.1["cached"], true);
    let hit = cache_commands(server(&t)).await;
    assert_eq!(
        hit,
        vec![look(id)],
        "a hit costs exactly one look (an MGET of the entry and its companions)"
    );
    assert_eq!(
        app.prom_counter(FETCH).await,
        before,
        "and no database read"
    );
    assert_eq!(
        raw(&app, &key(id)).await,
        entry,
        "nothing rewritten on a hit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_costs_one_mget_one_query_one_write_back() {
    let _serial = COUNTING.lock().await;
    let (t, app) = counted_app().await;
    let ids: Vec<UserId> = (0..8).map(|_| UserId::random()).collect();
    for id in &ids[..6] {
        app.create_profile(*id, json!({})).await;
    }
    for id in &ids[..3] {
        app.read_profile(*id).await;
    }
    let body = json!(ids.iter().map(|i| i.to_string()).collect::<Vec<_>>());
    slowlog_reset(server(&t)).await;
    let before = app.prom_counter(FETCH_MANY).await;
    let fetch_before = app.prom_counter(FETCH).await;
    let (s, b) = app
        .as_admin(Method::POST, "/api/profiles/batch", &body)
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        (
            b["cache_hits"].clone(),
            b["cache_misses"].clone(),
            b["count"].clone()
        ),
        (json!(3), json!(5), json!(6))
    );
    assert_eq!(b["not_found"].as_array().unwrap().len(), 2);
    assert_eq!(
        app.prom_counter(FETCH_MANY).await - before,
        1,
        "one database query"
    );
    assert_eq!(
        app.prom_counter(FETCH).await,
        fetch_before,
        "no single reads"
    );
    let cmds = cache_commands(server(&t)).await;
    let names: Vec<String> = cmds.iter().map(|c| c[0].to_uppercase()).collect();
    assert_eq!(names[0], "MGET", "{cmds:?}");
    assert_eq!(
        cmds[0].len(),
        25,
        "one MGET of all eight entries and their companions"
    );
    assert_eq!(
        names[1..],
        vec!["EVALSHA"; 5],
        "one guarded fill per miss (3 profiles, 2 tombstones): {cmds:?}"
    );

    slowlog_reset(server(&t)).await;
    let before = app.prom_counter(FETCH_MANY).await;
    let (_, b) = app
        .as_admin(Method::POST, "/api/profiles/batch", &body)
        .await;
    assert_eq!(
        (b["cache_hits"].clone(), b["cache_misses"].clone()),
        (json!(6), json!(2))
    );
    assert_eq!(
        app.prom_counter(FETCH_MANY).await,
        before,
        "everything answered by the cache"
    );
    let cmds = cache_commands(server(&t)).await;
    assert_eq!(cmds.len(), 1, "just the MGET: {cmds:?}");
}

/// `DELETE /api/admin/cache/metrics` as an admin.
async fn reset_metrics(app: &TestApp) -> (u16, Value) {
    app.as_admin(Method::DELETE, "/api/admin/cache/metrics", &json!({}))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_shared_by_instances_and_reset() {
    let target = Target::new(StoreKind::Own).await;
    let c = TestApp::builder()
        .with_store(&target)
        .with(|c| c.redis.metrics_flush_ms = 200)
        .config()
        .await;
    let a = TestApp::spawn_with(c.clone()).await;
    let b = TestApp::spawn_with(c).await;
    let (s, m) = reset_metrics(&a).await;
    assert_eq!(s, 200);
    assert_eq!(
        m,
        json!({"hits": 0, "misses": 0, "total": 0, "hit_rate": 0.0})
    );

    let id = UserId::random();
    a.create_profile(id, json!({})).await;
    a.read_profile(id).await; // miss
    for _ in 0..3 {
        a.read_profile(id).await; // hits
    }
    for _ in 0..4 {
        b.read_profile(id).await; // hits
    }
    b.read_profile(UserId::random()).await; // miss (not found)
    let expect = json!({"hits": 7, "misses": 2, "total": 9, "hit_rate": 77.78});
    // Another instance's counts arrive with its next flush.
    eventually(Duration::from_secs(5), "both instances' counts", || async {
        json_of(
            a.get(
                "/api/admin/cache/metrics",
                &token(UserId::random(), Role::Admin),
            )
            .await,
        )
        .await
        .1 == expect
    })
    .await;
    // The counters live in Redis under the documented keys.
    let Target::Own(server) = &target else {
        unreachable!()
    };
    let mut conn = server.conn().await;
    eventually(Duration::from_secs(5), "flushed to redis", || {
        let mut conn = conn.clone();
        async move {
            let v: (Option<u64>, Option<u64>) = redis::cmd("MGET")
                .arg("metrics:cache:hits")
                .arg("metrics:cache:misses")
                .query_async(&mut conn)
                .await
                .unwrap();
            v == (Some(7), Some(2))
        }
    })
    .await;
    let (_, m) = json_of(
        b.get(
            "/api/admin/cache/metrics",
            &token(UserId::random(), Role::Admin),
        )
        .await,
    )
    .await;
    assert_eq!(m, expect, "every instance reports the shared totals");

    let (s, m) = reset_metrics(&b).await;
    assert_eq!((s, m["total"].clone()), (200, json!(0)));
    let (_, m) = json_of(
        a.get(
            "/api/admin/cache/metrics",
            &token(UserId::random(), Role::Admin),
        )
        .await,
    )
    .await;
    assert_eq!(
        m,
        json!({"hits": 0, "misses": 0, "total": 0, "hit_rate": 0.0})
    );
    let exists: u64 = redis::cmd("EXISTS")
        .arg("metrics:cache:hits")
        .arg("metrics:cache:misses")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(exists, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_in_process_without_redis() {
    let target = Target::new(StoreKind::Memory).await;
    let app = TestApp::builder()
        .with_backend(Backend::Sqlite)
        .with_store(&target)
        .spawn()
        .await;
    let id = UserId::random();
    app.create_profile(id, json!({})).await;
    for _ in 0..4 {
        app.read_profile(id).await;
    }
    let (_, m): (u16, Value) = json_of(
        app.get(
            "/api/admin/cache/metrics",
            &token(UserId::random(), Role::Admin),
        )
        .await,
    )
    .await;
    assert_eq!(
        m,
        json!({"hits": 3, "misses": 1, "total": 4, "hit_rate": 75.0})
    );
    reset_metrics(&app).await;
    let (_, m) = json_of(
        app.get(
            "/api/admin/cache/metrics",
            &token(UserId::random(), Role::Admin),
        )
        .await,
    )
    .await;
    assert_eq!(m["total"], 0);
}
