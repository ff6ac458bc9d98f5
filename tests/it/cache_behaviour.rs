//! The profile cache's behaviour over HTTP (SPEC 4), on three stores: the shared Redis
//! (with PostgreSQL), a test-owned 3-master Redis Cluster and the in-process store (with
//! SQLite). Keys are inspected through the app's own store, so every assertion holds on
//! all three.

use std::time::Duration;

use rstest::rstest;

use crate::helpers::redis::{
    StoreKind, Target, is_invalidated, is_tombstoned, missing_key, raw, raw_ttl,
};
use crate::helpers::{Backend, Role, TestApp, eventually, json_of, token};
use reqwest::Method;
use serde_json::{Value, json};
use user_api::config::Config;
use user_api::domain::{Profile, UserId};

/// The database each store is tested with: the shared Redis with PostgreSQL, the others
/// with SQLite, so that both backends meet the cache.
fn backend_for(kind: StoreKind) -> Backend {
    match kind {
        StoreKind::Shared => Backend::Postgres,
        _ => Backend::Sqlite,
    }
}

/// A service on `kind`'s store (and database), with `tweak` applied to its configuration.
async fn setup(
    kind: StoreKind,
    tweak: impl FnOnce(&mut Config) + Send + 'static,
) -> (Target, TestApp) {
    let target = Target::new(kind).await;
    let app = TestApp::builder()
        .with_backend(backend_for(kind))
        .with_store(&target)
        .with(tweak)
        .spawn()
        .await;
    (target, app)
}

fn key(id: UserId) -> String {
    format!("cache:profile:{id}")
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hit_and_miss_shapes(
    #[values(StoreKind::Shared, StoreKind::Cluster, StoreKind::Memory)] kind: StoreKind,
) {
    let (_t, app) = setup(kind, |_| {}).await;
    let id = UserId::random();
    let created = app
        .create_profile(
            id,
            json!({"name": "山田太郎", "email": format!("{id}@example.com")}),
        )
        .await;

    let (s, miss) = app.read_profile(id).await;
    assert_eq!(s, 200);
    assert_eq!(miss["cached"], false, "{miss}");
    assert!(
        miss.get("cached_at").is_none(),
        "a miss has no cached_at: {miss}"
    );
    assert!(miss["profile"].get("cached_at").is_none());
    assert_eq!(miss["profile"], created);

    let (s, hit) = app.read_profile(id).await;
    assert_eq!(s, 200);
    assert_eq!(hit["cached"], true, "{hit}");
    let at = hit["cached_at"].as_str().expect("cached_at on a hit");
    assert!(at.ends_with('Z'));
    assert_eq!(hit["profile"]["cached_at"], at);
    let mut p = hit["profile"].clone();
    p.as_object_mut().unwrap().remove("cached_at");
    assert_eq!(p, created, "a hit serves the full profile");

    // The entry is the full profile JSON plus cached_at.
    let entry: Value = serde_json::from_str(&raw(&app, &key(id)).await.expect("entry")).unwrap();
    assert_eq!(entry["cached_at"], at);
    assert_eq!(entry["name"], "山田太郎");
    assert_eq!(entry["user_id"], id.to_string());

    // /me shares the cache.
    let (s, me) = json_of(app.get("/api/profiles/me", &token(id, Role::User)).await).await;
    assert_eq!(s, 200);
    assert_eq!(me["cached"], true);
}

/// Warms the cache for `id` and checks the entry is there.
async fn warm(app: &TestApp, id: UserId) {
    app.read_profile(id).await;
    let (_, b) = app.read_profile(id).await;
    assert_eq!(b["cached"], true, "warm: {b}");
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_invalidates(
    #[values(StoreKind::Shared, StoreKind::Cluster, StoreKind::Memory)] kind: StoreKind,
) {
    let (_t, app) = setup(kind, |_| {}).await;
    let id = UserId::random();
    let owner = token(id, Role::User);
    app.create_profile(id, json!({"name": "v0"})).await;
    let path = format!("/api/profiles/{id}");

    let writes: Vec<(&str, Method, String, Value)> = vec![
        ("PUT", Method::PUT, path.clone(), json!({"name": "v1"})),
        ("PATCH", Method::PATCH, path.clone(), json!({"name": "v2"})),
        (
            "POST /profile",
            Method::POST,
            "/profile".into(),
            json!({"name": "v3"}),
        ),
        (
            "PUT /profile",
            Method::PUT,
            "/profile".into(),
            json!({"name": "v4"}),
        ),
    ];
    for (what, method, p, body) in writes {
        warm(&app, id).await;
        let res = app.send_json(method, &p, &owner, &body).await;
        assert_eq!(res.status(), 200, "{what}");
        assert!(is_invalidated(&app, &key(id)).await, "{what} invalidates");
        let (_, after) = app.read_profile(id).await;
        assert_eq!(
            after["cached"], false,
            "{what}: first read after a write is a miss"
        );
        assert_eq!(after["profile"]["name"], body["name"], "{what}");
        let (_, again) = app.read_profile(id).await;
        assert_eq!(again["cached"], true);
        assert_eq!(again["profile"]["name"], body["name"]);
    }

    // last_login updates (recorded off the request path) invalidate too.
    warm(&app, id).await;
    app.state
        .profiles
        .record_login(id, chrono::Utc::now())
        .await
        .unwrap();
    assert!(
        is_invalidated(&app, &key(id)).await,
        "record_login invalidates"
    );
    let (_, after) = app.read_profile(id).await;
    assert_eq!(after["cached"], false);
    assert!(after["profile"]["last_login"].is_string());

    // GET /profile reads through the same cache.
    let (s, own) = json_of(app.get("/profile", &owner).await).await;
    assert_eq!(s, 200);
    assert_eq!(own["name"], "v4");
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_and_admin_invalidate_remove_all_keys(
    #[values(StoreKind::Shared, StoreKind::Cluster, StoreKind::Memory)] kind: StoreKind,
) {
    let (_t, app) = setup(kind, |_| {}).await;
    let keys = |id: UserId| {
        [
            key(id),
            format!("cache:settings:{id}"),
            format!("cache:preferences:{id}"),
        ]
    };
    for how in ["delete", "admin"] {
        let id = UserId::random();
        let owner = token(id, Role::User);
        app.create_profile(id, json!({})).await;
        warm(&app, id).await;
        for doc in ["settings", "preferences"] {
            let p = format!("/api/profiles/{id}/{doc}");
            app.get(&p, &owner).await;
            let (_, b) = json_of(app.get(&p, &owner).await).await;
            assert_eq!(b["cached"], true, "{doc} cached");
        }
        for k in keys(id) {
            let v = raw(&app, &k).await;
            assert!(
                v.as_deref().is_some_and(|v| v.contains("cached_at")),
                "{k} filled: {v:?}"
            );
        }
        if how == "delete" {
            let res = app.delete(&format!("/api/profiles/{id}"), &owner).await;
            assert_eq!(res.status(), 204);
        } else {
            let (s, body) = app
                .as_admin(
                    Method::POST,
                    &format!("/api/admin/cache/invalidate/{id}"),
                    &json!({}),
                )
                .await;
            assert_eq!(s, 200, "{body}");
            assert_eq!(body["invalidated"].as_array().unwrap().len(), 3);
        }
        for k in keys(id) {
            assert!(is_invalidated(&app, &k).await, "{how}: {k} invalidated");
        }
        let (s, _) = app.read_profile(id).await;
        assert_eq!(s, if how == "delete" { 404 } else { 200 }, "{how}");
    }
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tombstones_are_short_and_create_removes_them(
    #[values(StoreKind::Shared, StoreKind::Cluster, StoreKind::Memory)] kind: StoreKind,
) {
    let (_t, app) = setup(kind, |_| {}).await;
    let id = UserId::random();
    let (s, _) = app.read_profile(id).await;
    assert_eq!(s, 404);
    assert!(is_tombstoned(&app, &key(id)).await, "a tombstone");
    let ttl = raw_ttl(&app, &missing_key(&key(id))).await;
    assert!(
        ttl <= Duration::from_secs(30) && ttl > Duration::from_secs(25),
        "{ttl:?}"
    );
    let (s, _) = app.read_profile(id).await;
    assert_eq!(s, 404, "the tombstone answers");
    // Documents of a missing profile are remembered too…
    let (s, _) = json_of(
        app.get(
            &format!("/api/profiles/{id}/settings"),
            &token(UserId::random(), Role::Admin),
        )
        .await,
    )
    .await;
    assert_eq!(s, 404);
    assert!(is_tombstoned(&app, &format!("cache:settings:{id}")).await);
    // …and a create removes every tombstone of the user at once.
    app.create_profile(id, json!({"name": "born"})).await;
    assert!(is_invalidated(&app, &key(id)).await);
    assert!(!is_tombstoned(&app, &format!("cache:settings:{id}")).await);
    let (s, b) = app.read_profile(id).await;
    assert_eq!(s, 200);
    assert_eq!(b["profile"]["name"], "born");
    let (s, b) = json_of(
        app.get(
            &format!("/api/profiles/{id}/settings"),
            &token(UserId::random(), Role::Admin),
        )
        .await,
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["settings"], json!({}));

    // A configured shorter negative TTL is honoured.
    let mut c = app.config.clone();
    c.cache.negative_ttl_secs = 2;
    let app2 = TestApp::spawn_with(c).await;
    let other = UserId::random();
    app2.read_profile(other).await;
    let ttl = raw_ttl(&app2, &missing_key(&key(other))).await;
    assert!(ttl <= Duration::from_secs(2), "{ttl:?}");
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_never_exceeds_the_configured_one(
    #[values(StoreKind::Shared, StoreKind::Cluster, StoreKind::Memory)] kind: StoreKind,
) {
    let (_t, app) = setup(kind, |c| {
        c.cache.ttl_secs = 60;
        c.cache.refresh_ahead_secs = 5;
        c.cache.jitter_percent = 20;
    })
    .await;
    let mut ttls = Vec::new();
    for _ in 0..12 {
        let id = UserId::random();
        app.create_profile(id, json!({})).await;
        app.read_profile(id).await;
        let ttl = raw_ttl(&app, &key(id)).await;
        assert!(
            ttl <= Duration::from_secs(60),
            "{ttl:?} above the configured TTL"
        );
        assert!(
            ttl >= Duration::from_secs(47),
            "{ttl:?}: jitter takes at most 20 %"
        );
        ttls.push(ttl.as_millis() / 100);
    }
    ttls.sort();
    ttls.dedup();
    assert!(ttls.len() > 1, "jitter spreads expiries: {ttls:?}");
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_are_cached(
    #[values(StoreKind::Shared, StoreKind::Cluster, StoreKind::Memory)] kind: StoreKind,
) {
    let (_t, app) = setup(kind, |_| {}).await;
    let id = UserId::random();
    let owner = token(id, Role::User);
    app.create_profile(id, json!({})).await;
    for doc in ["settings", "preferences"] {
        let p = format!("/api/profiles/{id}/{doc}");
        let (s, b) = json_of(app.get(&p, &owner).await).await;
        assert_eq!(
            (s, b["cached"].clone(), b[doc].clone()),
            (200, json!(false), json!({}))
        );
        let (_, b) = json_of(app.get(&p, &owner).await).await;
        assert_eq!(b["cached"], true);
        let entry: Value =
            serde_json::from_str(&raw(&app, &format!("cache:{doc}:{id}")).await.unwrap()).unwrap();
        assert_eq!(entry["data"], json!({}));
        assert!(entry["cached_at"].is_string());
        // A PUT invalidates only that document.
        let body = json!({"theme": "dark", "n": [1, 2]});
        let (s, _) = json_of(app.send_json(Method::PUT, &p, &owner, &body).await).await;
        assert_eq!(s, 200);
        assert!(is_invalidated(&app, &format!("cache:{doc}:{id}")).await);
        let (_, b) = json_of(app.get(&p, &owner).await).await;
        assert_eq!(
            (b["cached"].clone(), b[doc].clone()),
            (json!(false), body.clone())
        );
        let (_, b) = json_of(app.get(&p, &owner).await).await;
        assert_eq!((b["cached"].clone(), b[doc].clone()), (json!(true), body));
    }
    // The profile entry was never touched by the document writes.
    app.read_profile(id).await;
    let (_, b) = app.read_profile(id).await;
    assert_eq!(b["cached"], true);
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_counts_and_write_back(
    #[values(StoreKind::Shared, StoreKind::Cluster, StoreKind::Memory)] kind: StoreKind,
) {
    let (_t, app) = setup(kind, |_| {}).await;
    let ids: Vec<UserId> = (0..6).map(|_| UserId::random()).collect();
    for id in &ids[..5] {
        app.create_profile(*id, json!({"name": id.to_string()}))
            .await;
    }
    for id in &ids[..2] {
        warm(&app, *id).await;
    }
    let unknown = ids[5];
    // Duplicates are counted once; order of first appearance is kept.
    let mut sent: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
    sent.push(ids[0].to_string());
    sent.push(ids[3].to_string());
    let app = &app;
    let post = |body: Value| async move {
        app.as_admin(Method::POST, "/api/profiles/batch", &body)
            .await
    };
    let (s, b) = post(json!(sent)).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["count"], 5);
    assert_eq!(b["cache_hits"], 2, "{b}");
    assert_eq!(b["cache_misses"], 4, "3 uncached + 1 unknown: {b}");
    assert_eq!(b["not_found"], json!([unknown.to_string()]));
    let order: Vec<String> = b["profiles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["user_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(order, sent[..5].to_vec());
    assert!(
        b["profiles"][0].get("cached_at").is_none(),
        "batch profiles are plain profiles"
    );

    // The write-back stored full profiles for the misses and a tombstone for the unknown id.
    for id in &ids[2..5] {
        let v = raw(app, &key(*id)).await.expect("written back");
        let entry: Value = serde_json::from_str(&v).unwrap();
        assert_eq!(entry["name"], id.to_string());
        assert!(entry["created_at"].is_string() && entry["cached_at"].is_string());
        serde_json::from_value::<Profile>(entry).expect("a full profile");
    }
    assert!(is_tombstoned(app, &key(unknown)).await);

    let (_, b) = post(json!({"user_ids": sent})).await;
    assert_eq!(b["cache_hits"], 5, "{b}");
    assert_eq!(
        b["cache_misses"], 1,
        "the unknown id is a miss, served by its tombstone"
    );
    assert_eq!(b["not_found"], json!([unknown.to_string()]));

    // A single read after a batch fill is a hit.
    let (_, r) = app.read_profile(ids[4]).await;
    assert_eq!(r["cached"], true);
}

fn profile_with_login(at: chrono::DateTime<chrono::Utc>) -> Profile {
    let now = chrono::Utc::now();
    Profile {
        first_name: Some("seeded".into()),
        last_login: Some(at),
        ..Profile::blank(UserId::random(), now)
    }
}

/// Inserts `n` profiles that logged in recently, most recent first (seeding path: no
/// invalidation markers).
async fn seed_recent(app: &TestApp, n: usize) -> Vec<UserId> {
    let now = chrono::Utc::now();
    let profiles: Vec<Profile> = (0..n)
        .map(|i| profile_with_login(now - chrono::Duration::minutes(i as i64)))
        .collect();
    app.state
        .profiles
        .repo()
        .insert_many(&profiles)
        .await
        .unwrap();
    profiles.iter().map(|p| p.user_id).collect()
}

/// `POST /api/admin/cache/prewarm` as an admin.
async fn prewarm(app: &TestApp) -> (u16, Value) {
    app.as_admin(Method::POST, "/api/admin/cache/prewarm", &json!({}))
        .await
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prewarm_via_admin_route(
    #[values(StoreKind::Shared, StoreKind::Cluster, StoreKind::Memory)] kind: StoreKind,
) {
    let (_t, app) = setup(kind, |c| {
        c.prewarm.max = 7;
        c.prewarm.batch_size = 3;
    })
    .await;
    let ids = seed_recent(&app, 9).await;
    // One of the candidates is already cached: prewarm leaves it alone.
    warm(&app, ids[0]).await;
    let before = raw(&app, &key(ids[0])).await;
    // An old login is not a candidate.
    let stale = profile_with_login(chrono::Utc::now() - chrono::Duration::days(30));
    app.state
        .profiles
        .repo()
        .insert_many(std::slice::from_ref(&stale))
        .await
        .unwrap();

    let (s, b) = prewarm(&app).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        b,
        json!({"prewarmed": 6}),
        "7 most recent, one already cached"
    );
    assert_eq!(
        raw(&app, &key(ids[0])).await,
        before,
        "an existing entry is kept"
    );
    for id in &ids[..7] {
        assert!(
            raw(&app, &key(*id))
                .await
                .is_some_and(|v| v.contains("cached_at"))
        );
    }
    for id in ids[7..].iter().chain([&stale.user_id]) {
        assert_eq!(raw(&app, &key(*id)).await, None, "not a prewarm candidate");
    }
    let (_, r) = app.read_profile(ids[3]).await;
    assert_eq!(r["cached"], true);
    let (_, b) = prewarm(&app).await;
    assert_eq!(b, json!({"prewarmed": 0}), "nothing left to store");
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prewarm_at_start(
    #[values(StoreKind::Shared, StoreKind::Cluster, StoreKind::Memory)] kind: StoreKind,
) {
    let backend = backend_for(kind);
    let target = Target::new(kind).await;
    let c = TestApp::builder()
        .with_backend(backend)
        .with_store(&target)
        .config()
        .await;
    // A first instance (prewarm off, as in every test config) creates the schema and data.
    let first = TestApp::spawn_with(c.clone()).await;
    let ids = seed_recent(&first, 5).await;
    drop(first);
    let mut c = c;
    c.prewarm.enabled = true;
    let app = TestApp::spawn_with(c).await;
    let store = app.state.cache.store().clone();
    eventually(Duration::from_secs(10), "prewarm at start", || {
        let store = store.clone();
        let ids = ids.clone();
        async move {
            for id in ids {
                if store.get(&key(id)).await.ok().flatten().is_none() {
                    return false;
                }
            }
            true
        }
    })
    .await;
    let (_, r) = app.read_profile(ids[4]).await;
    assert_eq!(r["cached"], true);
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_routes_are_admin_only(
    #[values(StoreKind::Shared, StoreKind::Cluster, StoreKind::Memory)] kind: StoreKind,
) {
    let (_t, app) = setup(kind, |_| {}).await;
    let user = token(UserId::random(), Role::User);
    let id = UserId::random();
    for (m, p) in [
        (Method::GET, "/api/admin/cache/metrics".to_owned()),
        (Method::DELETE, "/api/admin/cache/metrics".to_owned()),
        (Method::POST, format!("/api/admin/cache/invalidate/{id}")),
        (Method::POST, "/api/admin/cache/prewarm".to_owned()),
    ] {
        let res = app
            .client
            .request(m.clone(), app.url(&p))
            .bearer_auth(&user)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 403, "{m} {p}");
        let res = app
            .client
            .request(m.clone(), app.url(&p))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 401, "{m} {p}");
    }
    let res = app
        .client
        .post(app.url("/api/admin/cache/invalidate/not-a-uuid"))
        .bearer_auth(token(UserId::random(), Role::Admin))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 422);
    let (s, m) = json_of(
        app.get(
            "/api/admin/cache/metrics",
            &token(UserId::random(), Role::Admin),
        )
        .await,
    )
    .await;
    assert_eq!(s, 200);
    for f in ["hits", "misses", "total", "hit_rate"] {
        assert!(m[f].is_number(), "{m}");
    }
}
