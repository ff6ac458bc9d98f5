//! The cache's key contract (SPEC 4): `cache:profile:*`, `cache:settings:*` and
//! `cache:preferences:*` hold a whole JSON entry or do not exist, whatever runs (writers,
//! readers, batches, two instances), so other services and operators can read them; an
//! operator's `DEL` of an entry never brings back data older than an acknowledged write;
//! prewarm counts what it stored; the eviction policy is reported; bodies that must be
//! objects refuse every other JSON shape.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rstest::rstest;

use crate::helpers::redis::{DelayProxy, RedisServer, StoreKind, Target};
use crate::helpers::{Backend, Role, TestApp, json_of, token};
use ::redis::AsyncCommands;
use reqwest::Method;
use serde_json::{Value, json};
use user_api::domain::UserId;

const PROFILE_FIELDS: [&str; 13] = [
    "id",
    "user_id",
    "first_name",
    "last_name",
    "name",
    "email",
    "phone",
    "address",
    "date_of_birth",
    "last_login",
    "created_at",
    "updated_at",
    "cached_at",
];

/// A plain Redis client of the kind another service would use: `GET` by key.
enum PlainClient {
    Single(::redis::aio::MultiplexedConnection),
    Cluster(::redis::cluster_async::ClusterConnection),
}

impl PlainClient {
    async fn new(target: &Target) -> Self {
        match target {
            Target::Cluster(cl) => Self::Cluster(cl.conn().await),
            other => Self::Single(crate::helpers::redis::connect(&other.node_urls()[0]).await),
        }
    }

    async fn get(&mut self, key: &str) -> Option<String> {
        match self {
            Self::Single(c) => c.get(key).await.expect("GET"),
            Self::Cluster(c) => c.get(key).await.expect("GET"),
        }
    }

    async fn del(&mut self, key: &str) {
        let _: () = match self {
            Self::Single(c) => c.del(key).await.expect("DEL"),
            Self::Cluster(c) => c.del(key).await.expect("DEL"),
        };
    }
}

/// Why `value` is not a whole entry of `key`'s kind; `None` when it is one.
fn entry_problem(key: &str, value: &str) -> Option<String> {
    let Ok(v) = serde_json::from_str::<Value>(value) else {
        return Some(format!("{key} holds non-JSON: {value:.80}"));
    };
    let Some(obj) = v.as_object() else {
        return Some(format!("{key} holds a non-object: {value:.80}"));
    };
    if key.starts_with("cache:profile:") {
        for f in PROFILE_FIELDS {
            if !obj.contains_key(f) {
                return Some(format!("{key} lacks {f}: {value:.200}"));
            }
        }
        if obj["user_id"].as_str() != key.strip_prefix("cache:profile:") {
            return Some(format!("{key} holds another user's profile"));
        }
    } else if !(obj.get("data").is_some_and(Value::is_object) && obj["cached_at"].is_string()) {
        return Some(format!("{key} is not a document entry: {value:.200}"));
    }
    None
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_cache_key_holds_a_whole_entry(
    #[values(StoreKind::Shared, StoreKind::Cluster)] kind: StoreKind,
) {
    let target = Target::new(kind).await;
    let config = TestApp::builder()
        .with_backend(Backend::Postgres)
        .with_store(&target)
        .config()
        .await;
    let a = Arc::new(TestApp::spawn_with(config.clone()).await);
    let b = Arc::new(TestApp::spawn_with(config).await);
    let ids: Vec<UserId> = (0..4).map(|_| UserId::random()).collect();
    for id in &ids {
        a.create_profile(
            *id,
            json!({"name": "start", "email": format!("{id}@example.com")}),
        )
        .await;
    }
    let done = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    // Writers on both instances: profile, settings and preferences; a delete and re-create.
    for (n, app) in [a.clone(), b.clone()].into_iter().enumerate() {
        let (ids, done, writes) = (ids.clone(), done.clone(), writes.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !done.load(Ordering::SeqCst) {
                i += 1;
                let id = ids[(i as usize + n) % ids.len()];
                let owner = token(id, Role::User);
                let base = format!("/api/profiles/{id}");
                let (path, body) = match i % 4 {
                    0 => (base.clone(), json!({"first_name": format!("w{n}-{i}")})),
                    1 => (format!("{base}/settings"), json!({"theme": i})),
                    2 => (
                        format!("{base}/preferences"),
                        json!({"lang": format!("l{i}")}),
                    ),
                    _ => {
                        if i % 20 == 3 {
                            app.delete(&base, &owner).await;
                            app.create_profile(id, json!({"name": "again"})).await;
                        }
                        continue;
                    }
                };
                let res = app.send_json(Method::PUT, &path, &owner, &body).await;
                assert!(
                    res.status() == 200 || res.status() == 404,
                    "{path}: {}",
                    res.status()
                );
                writes.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    // Readers on both instances: every read kind, and batches.
    for app in [a.clone(), b.clone(), a.clone(), b.clone()] {
        let (ids, done) = (ids.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0usize;
            let admin = token(UserId::random(), Role::Admin);
            while !done.load(Ordering::SeqCst) {
                i += 1;
                let id = ids[i % ids.len()];
                let path = match i % 4 {
                    0 => format!("/api/profiles/{id}"),
                    1 => format!("/api/profiles/{id}/settings"),
                    2 => format!("/api/profiles/{id}/preferences"),
                    _ => {
                        let body = json!(ids.iter().map(|i| i.to_string()).collect::<Vec<_>>());
                        app.as_admin(Method::POST, "/api/profiles/batch", &body)
                            .await;
                        continue;
                    }
                };
                let s = app.get(&path, &admin).await.status();
                assert!(s == 200 || s == 404, "{path}: {s}");
            }
        }));
    }
    // Another service, reading every key of these users with a plain client.
    let mut client = PlainClient::new(&target).await;
    let (mut seen, mut problems) = (0u64, Vec::new());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(6);
    while tokio::time::Instant::now() < deadline {
        for id in &ids {
            for key in [
                format!("cache:profile:{id}"),
                format!("cache:settings:{id}"),
                format!("cache:preferences:{id}"),
            ] {
                if let Some(v) = client.get(&key).await {
                    seen += 1;
                    problems.extend(entry_problem(&key, &v));
                }
            }
        }
    }
    done.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.expect("worker");
    }
    let writes = writes.load(Ordering::Relaxed);
    eprintln!(
        "{writes} writes, {seen} entries decoded, {} problems",
        problems.len()
    );
    assert!(
        problems.is_empty(),
        "{} bad values, e.g. {:?}",
        problems.len(),
        &problems[..problems.len().min(3)]
    );
    assert!(writes > 40, "the writers did not run: {writes}");
    assert!(
        seen > 40,
        "the poller saw too few entries to mean anything: {seen}"
    );
}

/// GET (a miss that fills), write, an operator's `DEL` of the entry, GET: the last read
/// shows the write, every time. `reader` may reach Redis through a delaying proxy.
async fn del_after_write_never_brings_back_old_data(
    target: &Target,
    reader: &TestApp,
    writer: &TestApp,
) {
    let mut client = PlainClient::new(target).await;
    let id = UserId::random();
    writer
        .create_profile(id, json!({"first_name": "Start"}))
        .await;
    let owner = token(id, Role::User);
    let profile = format!("/api/profiles/{id}");
    let settings = format!("{profile}/settings");
    for i in 0..25 {
        let name = format!("Manual{i}");
        let (s, _) = json_of(reader.get(&profile, &owner).await).await;
        assert_eq!(s, 200);
        json_of(reader.get(&settings, &owner).await).await;
        let res = writer
            .send_json(Method::PUT, &profile, &owner, &json!({"first_name": name}))
            .await;
        assert_eq!(res.status(), 200);
        let res = writer
            .send_json(Method::PUT, &settings, &owner, &json!({"round": i}))
            .await;
        assert_eq!(res.status(), 200);
        client.del(&format!("cache:profile:{id}")).await;
        client.del(&format!("cache:settings:{id}")).await;
        let (_, body) = json_of(reader.get(&profile, &owner).await).await;
        assert_eq!(
            body["profile"]["first_name"],
            name.as_str(),
            "round {i}: {body}"
        );
        let (_, body) = json_of(reader.get(&settings, &owner).await).await;
        assert_eq!(body["settings"]["round"], i, "round {i}: {body}");
        // And the entry a later read may have stored is the new one.
        if let Some(v) = client.get(&format!("cache:profile:{id}")).await {
            assert!(v.contains(&format!("\"Manual{i}\"")), "round {i}: {v}");
        }
    }
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_del_after_a_write(
    #[values(StoreKind::Shared, StoreKind::Cluster)] kind: StoreKind,
) {
    let target = Target::new(kind).await;
    let app = TestApp::builder()
        .with_backend(Backend::Postgres)
        .with_store(&target)
        .spawn()
        .await;
    del_after_write_never_brings_back_old_data(&target, &app, &app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_del_after_a_write_through_a_delaying_proxy() {
    let target = Target::new(StoreKind::Shared).await;
    let config = TestApp::builder()
        .with_backend(Backend::Postgres)
        .with_store(&target)
        .config()
        .await;
    let (_proxy, far) = DelayProxy::in_front_of(&config, Duration::from_millis(15)).await;
    let reader = TestApp::spawn_with(far).await;
    let writer = TestApp::spawn_with(config).await;
    del_after_write_never_brings_back_old_data(&target, &reader, &writer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prewarm_counts_entries_stored_right_after_writes() {
    for kind in [StoreKind::Shared, StoreKind::Memory] {
        let target = Target::new(kind).await;
        let app = TestApp::builder()
            .with_backend(Backend::Postgres)
            .with_store(&target)
            .spawn()
            .await;
        let ids: Vec<UserId> = (0..3).map(|_| UserId::random()).collect();
        for id in &ids {
            app.create_profile(*id, json!({"name": "warm"})).await;
            // A recent login makes it eligible; the write invalidates its entry just now.
            app.state
                .profiles
                .record_login(*id, chrono::Utc::now())
                .await
                .unwrap();
        }
        let (s, body) = app
            .as_admin(Method::POST, "/api/admin/cache/prewarm", &json!({}))
            .await;
        assert_eq!((s, body), (200, json!({"prewarmed": 3})), "{kind:?}");
        for id in &ids {
            assert_eq!(
                app.read_profile(*id).await.1["cached"],
                true,
                "{kind:?}: {id} prewarmed"
            );
        }
        let (_, body) = app
            .as_admin(Method::POST, "/api/admin/cache/prewarm", &json!({}))
            .await;
        assert_eq!(
            body,
            json!({"prewarmed": 0}),
            "{kind:?}: entries already there are left alone"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_reports_an_eviction_policy_that_can_lose_write_states() {
    for (policy, warns) in [
        ("allkeys-lru", true),
        ("volatile-ttl", true),
        ("noeviction", false),
    ] {
        let target = Target::Own(RedisServer::start_args(&["--maxmemory-policy", policy]).await);
        let app = TestApp::builder().with_store(&target).spawn().await;
        let (s, body) = json_of(app.get_anonymous("/ready").await).await;
        assert_eq!(s, 200, "{body}");
        assert_eq!(body["redis_eviction_policy"], policy, "{body}");
        let warnings = body["warnings"].as_array().expect("warnings").clone();
        assert_eq!(!warnings.is_empty(), warns, "{policy}: {body}");
        if warns {
            assert!(
                warnings[0].as_str().unwrap().contains("noeviction"),
                "{body}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_that_are_not_objects_are_refused_and_change_nothing() {
    for backend in [Backend::Postgres, Backend::Sqlite] {
        let app = TestApp::builder().with_backend(backend).spawn().await;
        let id = UserId::random();
        let owner = token(id, Role::User);
        app.create_profile(id, json!({"first_name": "Alice", "last_name": "Liddell"}))
            .await;
        let profile = format!("/api/profiles/{id}");
        for (path, body) in [
            (format!("{profile}/settings"), json!({"theme": "dark"})),
            (format!("{profile}/preferences"), json!({"lang": "ja"})),
        ] {
            let res = app.send_json(Method::PUT, &path, &owner, &body).await;
            assert_eq!(res.status(), 200);
        }
        let before = snapshot(&app, &owner, &profile).await;
        let routes = [
            (Method::PUT, profile.clone()),
            (Method::PATCH, profile.clone()),
            (Method::POST, "/api/profiles".to_owned()),
            (Method::POST, "/profile".to_owned()),
            (Method::PUT, "/profile".to_owned()),
            (Method::PUT, format!("{profile}/settings")),
            (Method::PUT, format!("{profile}/preferences")),
        ];
        for (method, path) in &routes {
            for body in [
                "[]",
                r#"["Mallory","X"]"#,
                "1",
                r#""x""#,
                "null",
                r#"["Z"]"#,
            ] {
                let res = app
                    .client
                    .request(method.clone(), app.url(path))
                    .bearer_auth(&owner)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                let (s, b) = json_of(res).await;
                assert_eq!(
                    (s, b["detail"].as_str()),
                    (422, Some("body: must be a JSON object")),
                    "{method} {path} {body}: {b}"
                );
            }
        }
        assert_eq!(
            snapshot(&app, &owner, &profile).await,
            before,
            "{backend:?}: nothing changed"
        );
        let (s, _) = json_of(app.get("/profile", &owner).await).await;
        assert_eq!(s, 200);
    }
}

/// The profile, settings and preferences as their owner reads them (without cache fields).
async fn snapshot(app: &TestApp, owner: &str, profile: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for p in [
        profile.to_owned(),
        format!("{profile}/settings"),
        format!("{profile}/preferences"),
    ] {
        let (_, mut b) = json_of(app.get(&p, owner).await).await;
        if let Some(o) = b.as_object_mut() {
            o.remove("cached");
            o.remove("cached_at");
            if let Some(p) = o.get_mut("profile").and_then(Value::as_object_mut) {
                p.remove("cached_at");
            }
        }
        out.push(b);
    }
    out
}
