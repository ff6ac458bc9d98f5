//! The behavioural suite of the HTTP contract (SPEC 3 and 6), run on PostgreSQL and SQLite.

use rstest::rstest;

use crate::helpers::{Backend, Role, TestApp, json_of, token};
use reqwest::Method;
use serde_json::{Value, json};
use user_api::domain::UserId;

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crud_round_trip(#[values(Backend::Postgres, Backend::Sqlite)] backend: Backend) {
    let app = TestApp::builder().with_backend(backend).spawn().await;
    let id = UserId::random();
    let t = token(id, Role::User);
    let created = app
        .create_profile(
            id,
            json!({"first_name": "太郎", "last_name": "山田", "name": "山田太郎",
                   "email": "taro@example.com", "phone": "090-1234-5678",
                   "address": "東京都渋谷区", "date_of_birth": "1990-01-01"}),
        )
        .await;
    assert_eq!(created["user_id"], id.to_string());
    assert_eq!(created["date_of_birth"], "1990-01-01");
    assert_eq!(created["last_login"], Value::Null);
    assert!(created["created_at"].as_str().unwrap().ends_with('Z'));

    let (s, body) = json_of(app.get(&format!("/api/profiles/{id}"), &t).await).await;
    assert_eq!(s, 200);
    assert_eq!(body["profile"]["name"], "山田太郎");
    assert!(body["cached"].is_boolean());

    let (s, body) = json_of(
        app.send_json(
            Method::PUT,
            &format!("/api/profiles/{id}"),
            &t,
            &json!({"name": "Taro"}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(body["message"], "Profile updated successfully");
    assert_eq!(body["profile"]["name"], "Taro");
    assert_eq!(body["profile"]["first_name"], "太郎");

    let (_, body) = json_of(app.get(&format!("/api/profiles/{id}"), &t).await).await;
    assert_eq!(
        body["profile"]["name"], "Taro",
        "a read after a write sees the write"
    );

    let res = app.delete(&format!("/api/profiles/{id}"), &t).await;
    assert_eq!(res.status(), 204);
    let (s, body) = json_of(app.get(&format!("/api/profiles/{id}"), &t).await).await;
    assert_eq!(s, 404);
    assert!(body["detail"].is_string());
    let (s, _) = json_of(app.delete(&format!("/api/profiles/{id}"), &t).await).await;
    assert_eq!(s, 404);
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn me_and_location(#[values(Backend::Postgres, Backend::Sqlite)] backend: Backend) {
    let app = TestApp::builder().with_backend(backend).spawn().await;
    let id = UserId::random();
    let t = token(id, Role::User);
    let (s, _) = json_of(app.get("/api/profiles/me", &t).await).await;
    assert_eq!(s, 404);
    let res = app
        .send_json(Method::POST, "/api/profiles", &t, &json!({"name": "me"}))
        .await;
    assert_eq!(res.status(), 201);
    assert_eq!(
        res.headers()["location"].to_str().unwrap(),
        format!("/api/profiles/{id}")
    );
    let (s, body) = json_of(app.get("/api/profiles/me", &t).await).await;
    assert_eq!(s, 200);
    assert_eq!(body["profile"]["user_id"], id.to_string());
    let (s, _) = json_of(
        app.send_json(Method::POST, "/api/profiles", &t, &json!({"name": "again"}))
            .await,
    )
    .await;
    assert_eq!(s, 409);
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_or_admin_only(#[values(Backend::Postgres, Backend::Sqlite)] backend: Backend) {
    let app = TestApp::builder().with_backend(backend).spawn().await;
    let (alice, bob, admin) = (UserId::random(), UserId::random(), UserId::random());
    app.create_profile(alice, json!({"name": "alice"})).await;
    let tb = token(bob, Role::User);
    let ta = token(admin, Role::Admin);
    let path = format!("/api/profiles/{alice}");
    assert_eq!(app.get(&path, &tb).await.status(), 403);
    assert_eq!(
        app.send_json(Method::PUT, &path, &tb, &json!({"name": "x"}))
            .await
            .status(),
        403
    );
    assert_eq!(app.delete(&path, &tb).await.status(), 403);
    assert_eq!(
        app.get(&format!("{path}/settings"), &tb).await.status(),
        403
    );
    // A user may not create someone else's profile; an admin may.
    let other = UserId::random();
    let res = app
        .send_json(
            Method::POST,
            "/api/profiles",
            &tb,
            &json!({"user_id": other.to_string()}),
        )
        .await;
    assert_eq!(res.status(), 403);
    let res = app
        .send_json(
            Method::POST,
            "/api/profiles",
            &ta,
            &json!({"user_id": other.to_string()}),
        )
        .await;
    assert_eq!(res.status(), 201);
    assert_eq!(app.get(&path, &ta).await.status(), 200);
    let (s, _) = json_of(
        app.send_json(Method::PATCH, &path, &ta, &json!({"name": "by admin"}))
            .await,
    )
    .await;
    assert_eq!(s, 200);
    // Batch is for admins.
    let (s, _) = json_of(
        app.send_json(
            Method::POST,
            "/api/profiles/batch",
            &tb,
            &json!([alice.to_string()]),
        )
        .await,
    )
    .await;
    assert_eq!(s, 403);
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_update_semantics(#[values(Backend::Postgres, Backend::Sqlite)] backend: Backend) {
    let app = TestApp::builder().with_backend(backend).spawn().await;
    let id = UserId::random();
    let t = token(id, Role::User);
    let before = app
        .create_profile(
            id,
            json!({"name": "n", "phone": "1", "email": "a@example.com"}),
        )
        .await;
    let path = format!("/api/profiles/{id}");
    let (s, body) = json_of(
        app.send_json(Method::PATCH, &path, &t, &json!({"phone": null}))
            .await,
    )
    .await;
    assert_eq!(s, 200);
    let p = &body["profile"];
    assert_eq!(p["phone"], Value::Null, "null clears");
    assert_eq!(p["name"], "n", "absent leaves alone");
    assert_eq!(p["email"], "a@example.com");
    assert_eq!(p["created_at"], before["created_at"]);
    assert!(p["updated_at"].as_str().unwrap() >= before["updated_at"].as_str().unwrap());
    let (s, _) = json_of(
        app.send_json(
            Method::PUT,
            &format!("/api/profiles/{}", UserId::random()),
            &token(UserId::random(), Role::Admin),
            &json!({"name": "x"}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 404);
    // Read-only and unknown fields are refused, not ignored.
    for body in [
        json!({"last_login": null}),
        json!({"user_id": id.to_string()}),
        json!({"no_such_field": "x"}),
    ] {
        let (s, b) = json_of(app.send_json(Method::PUT, &path, &t, &body).await).await;
        assert_eq!(s, 422, "{body}: {b}");
    }
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_conflicts(#[values(Backend::Postgres, Backend::Sqlite)] backend: Backend) {
    let app = TestApp::builder().with_backend(backend).spawn().await;
    let (a, b) = (UserId::random(), UserId::random());
    app.create_profile(a, json!({"email": "same@example.com"}))
        .await;
    let (s, body) = json_of(
        app.send_json(
            Method::POST,
            "/api/profiles",
            &token(b, Role::User),
            &json!({"email": "SAME@example.com"}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 409, "{body}");
    app.create_profile(b, json!({"email": "b@example.com"}))
        .await;
    let (s, _) = json_of(
        app.send_json(
            Method::PUT,
            &format!("/api/profiles/{b}"),
            &token(b, Role::User),
            &json!({"email": "same@example.com"}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 409);
    // Clearing frees the address.
    let (s, _) = json_of(
        app.send_json(
            Method::PUT,
            &format!("/api/profiles/{a}"),
            &token(a, Role::User),
            &json!({"email": null}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 200);
    let (s, _) = json_of(
        app.send_json(
            Method::PUT,
            &format!("/api/profiles/{b}"),
            &token(b, Role::User),
            &json!({"email": "same@example.com"}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 200);
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents(#[values(Backend::Postgres, Backend::Sqlite)] backend: Backend) {
    let app = TestApp::builder().with_backend(backend).spawn().await;
    let id = UserId::random();
    let t = token(id, Role::User);
    for kind in ["settings", "preferences"] {
        let path = format!("/api/profiles/{id}/{kind}");
        let (s, _) = json_of(app.get(&path, &t).await).await;
        assert_eq!(s, 404, "no profile yet");
        let (s, _) = json_of(
            app.send_json(Method::PUT, &path, &t, &json!({"a": 1}))
                .await,
        )
        .await;
        assert_eq!(s, 404, "no profile yet");
    }
    app.create_profile(id, json!({})).await;
    for kind in ["settings", "preferences"] {
        let path = format!("/api/profiles/{id}/{kind}");
        let (s, body) = json_of(app.get(&path, &t).await).await;
        assert_eq!(s, 200);
        assert_eq!(body[kind], json!({}));
        assert!(body["cached"].is_boolean());
        let doc = json!({"theme": "dark", "nested": {"list": [1, "二", null]}, "quote": "'\""});
        let (s, body) = json_of(app.send_json(Method::PUT, &path, &t, &doc).await).await;
        assert_eq!(s, 200);
        assert_eq!(body[kind], doc);
        let (_, body) = json_of(app.get(&path, &t).await).await;
        assert_eq!(body[kind], doc);
        // Replace, not merge.
        let (_, body) = json_of(
            app.send_json(Method::PUT, &path, &t, &json!({"b": 2}))
                .await,
        )
        .await;
        assert_eq!(body[kind], json!({"b": 2}));
        let (_, body) = json_of(app.get(&path, &t).await).await;
        assert_eq!(body[kind], json!({"b": 2}));
        // Not an object, too large, NUL: 422.
        for bad in [
            json!([1, 2]),
            json!("x"),
            json!({"big": "x".repeat(17 * 1024)}),
            json!({"nul": "a\u{0}b"}),
        ] {
            let (s, b) = json_of(app.send_json(Method::PUT, &path, &t, &bad).await).await;
            assert_eq!(s, 422, "{b}");
        }
    }
    // Deleting the profile deletes its documents.
    assert_eq!(
        app.delete(&format!("/api/profiles/{id}"), &t)
            .await
            .status(),
        204
    );
    app.create_profile(id, json!({})).await;
    let (_, body) = json_of(app.get(&format!("/api/profiles/{id}/settings"), &t).await).await;
    assert_eq!(body["settings"], json!({}));
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compat_routes(#[values(Backend::Postgres, Backend::Sqlite)] backend: Backend) {
    let app = TestApp::builder().with_backend(backend).spawn().await;
    let id = UserId::random();
    let t = token(id, Role::User);
    let (s, _) = json_of(
        app.send_json(Method::PUT, "/profile", &t, &json!({"name": "x"}))
            .await,
    )
    .await;
    assert_eq!(s, 404, "PUT /profile needs an existing profile");
    let (s, body) = json_of(app.get("/profile", &t).await).await;
    assert_eq!(s, 200);
    assert_eq!(body["user_id"], id.to_string(), "bare profile object");
    assert_eq!(body["name"], Value::Null);
    let (s, body) = json_of(
        app.send_json(Method::POST, "/profile", &t, &json!({"name": "compat"}))
            .await,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(body["name"], "compat");
    let (s, body) = json_of(
        app.send_json(Method::PUT, "/profile", &t, &json!({"phone": "1"}))
            .await,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(body["name"], "compat");
    assert_eq!(body["phone"], "1");
    let (_, body) = json_of(app.get(&format!("/api/profiles/{id}"), &t).await).await;
    assert_eq!(body["profile"]["phone"], "1", "same data as /api/profiles");
    // POST upserts for a new user too.
    let other = UserId::random();
    let (s, body) = json_of(
        app.send_json(
            Method::POST,
            "/profile",
            &token(other, Role::User),
            &json!({"name": "new"}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(body["name"], "new");
    let (s, _) = json_of(
        app.send_json(
            Method::POST,
            "/profile",
            &t,
            &json!({"user_id": other.to_string()}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 403);
    assert_eq!(app.get_anonymous("/profile").await.status(), 401);
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_reads(#[values(Backend::Postgres, Backend::Sqlite)] backend: Backend) {
    let app = TestApp::builder().with_backend(backend).spawn().await;
    let admin = token(UserId::random(), Role::Admin);
    let ids: Vec<UserId> = (0..5).map(|_| UserId::random()).collect();
    for (i, id) in ids.iter().enumerate() {
        app.create_profile(*id, json!({"name": format!("u{i}")}))
            .await;
    }
    let missing = UserId::random();
    let mut sent: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
    sent.push(ids[0].to_string());
    sent.push(missing.to_string());
    for body in [json!(sent), json!({"user_ids": sent})] {
        let (s, out) = json_of(
            app.send_json(Method::POST, "/api/profiles/batch", &admin, &body)
                .await,
        )
        .await;
        assert_eq!(s, 200, "{out}");
        assert_eq!(out["count"], 5);
        assert_eq!(out["profiles"].as_array().unwrap().len(), 5);
        assert_eq!(
            out["profiles"][0]["user_id"],
            ids[0].to_string(),
            "order as sent"
        );
        assert_eq!(out["not_found"], json!([missing.to_string()]));
        let hits = out["cache_hits"].as_u64().unwrap();
        let misses = out["cache_misses"].as_u64().unwrap();
        assert_eq!(
            hits + misses,
            6,
            "duplicates counted once; not-found counts as a miss"
        );
    }
    let hundred: Vec<String> = (0..100).map(|_| UserId::random().to_string()).collect();
    let (s, _) = json_of(
        app.send_json(Method::POST, "/api/profiles/batch", &admin, &json!(hundred))
            .await,
    )
    .await;
    assert_eq!(s, 200);
    // 101 as sent, even if they are duplicates.
    let too_many: Vec<String> = (0..101).map(|_| ids[0].to_string()).collect();
    let (s, _) = json_of(
        app.send_json(
            Method::POST,
            "/api/profiles/batch",
            &admin,
            &json!(too_many),
        )
        .await,
    )
    .await;
    assert_eq!(s, 422);
    for bad in [
        json!(["not-a-uuid"]),
        json!([1]),
        json!({"ids": []}),
        json!("x"),
    ] {
        let (s, b) = json_of(
            app.send_json(Method::POST, "/api/profiles/batch", &admin, &bad)
                .await,
        )
        .await;
        assert_eq!(s, 422, "{bad}: {b}");
    }
    let (s, out) = json_of(
        app.send_json(Method::POST, "/api/profiles/batch", &admin, &json!([]))
            .await,
    )
    .await;
    assert_eq!((s, out["count"].as_u64()), (200, Some(0)));
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_limits(#[values(Backend::Postgres, Backend::Sqlite)] backend: Backend) {
    let app = TestApp::builder().with_backend(backend).spawn().await;
    let id = UserId::random();
    let t = token(id, Role::User);
    app.create_profile(id, json!({})).await;
    let path = format!("/api/profiles/{id}");
    // Body over 64 KiB: 413.
    let big = json!({"name": "x".repeat(70 * 1024)});
    let (s, b) = json_of(app.send_json(Method::PUT, &path, &t, &big).await).await;
    assert_eq!(s, 413, "{b}");
    // Non-UUID ids: 422, on every route with an id.
    for bad in [
        "123",
        "not-a-uuid",
        "550e8400e29b41d4a716446655440000",
        "%27%3B%20DROP%20TABLE%20profiles",
    ] {
        for p in [
            format!("/api/profiles/{bad}"),
            format!("/api/profiles/{bad}/settings"),
            format!("/api/profiles/{bad}/preferences"),
        ] {
            let (s, b) = json_of(app.get(&p, &t).await).await;
            assert_eq!(s, 422, "{p}: {b}");
        }
        let (s, _) = json_of(app.delete(&format!("/api/profiles/{bad}"), &t).await).await;
        assert_eq!(s, 422);
    }
    // Field limits.
    let cases = [
        json!({"name": "x".repeat(256)}),
        json!({"first_name": "界".repeat(256)}),
        json!({"phone": "1".repeat(256)}),
        json!({"address": "a".repeat(1001)}),
        json!({"email": "not-an-email"}),
        json!({"email": "a@b"}),
        json!({"date_of_birth": "1990-1-1"}),
        json!({"date_of_birth": "1990-02-30"}),
        json!({"date_of_birth": "01/01/1990"}),
        json!({"name": 5}),
        json!({"name": "nul\u{0}byte"}),
        json!({"unknown": true}),
    ];
    for body in cases {
        let (s, b) = json_of(app.send_json(Method::PATCH, &path, &t, &body).await).await;
        assert_eq!(s, 422, "{body}: {b}");
        assert!(b["detail"].is_string());
        let (s, _) = json_of(
            app.send_json(
                Method::POST,
                "/api/profiles",
                &token(UserId::random(), Role::User),
                &body,
            )
            .await,
        )
        .await;
        assert_eq!(s, 422, "create {body}");
    }
    // At the limits: accepted.
    let ok = json!({"name": "界".repeat(255), "address": "a".repeat(1000), "date_of_birth": "2000-02-29"});
    let (s, b) = json_of(app.send_json(Method::PATCH, &path, &t, &ok).await).await;
    assert_eq!(s, 200, "{b}");
    // Nothing above changed the stored profile's other fields.
    let (_, b) = json_of(app.get(&path, &t).await).await;
    assert_eq!(b["profile"]["email"], Value::Null);
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verbatim_text(#[values(Backend::Postgres, Backend::Sqlite)] backend: Backend) {
    let app = TestApp::builder().with_backend(backend).spawn().await;
    let id = UserId::random();
    let t = token(id, Role::User);
    let texts = json!({
        "first_name": "Robert'); DROP TABLE profiles;--",
        "last_name": "\"quoted\" \\ backslash",
        "name": "🙂 emoji 山田 ñ é \u{200b}",
        "address": "1 OR 1=1; SELECT * FROM profiles WHERE '' = ''",
        "phone": "<script>alert(1)</script>",
    });
    let created = app.create_profile(id, texts.clone()).await;
    let (_, body) = json_of(app.get(&format!("/api/profiles/{id}"), &t).await).await;
    for k in ["first_name", "last_name", "name", "address", "phone"] {
        assert_eq!(created[k], texts[k]);
        assert_eq!(body["profile"][k], texts[k]);
    }
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_wrong_content_type(
    #[values(Backend::Postgres, Backend::Sqlite)] backend: Backend,
) {
    let app = TestApp::builder().with_backend(backend).spawn().await;
    let id = UserId::random();
    let t = token(id, Role::User);
    app.create_profile(id, json!({})).await;
    let path = format!("/api/profiles/{id}");
    for raw in [
        "{",
        "{\"name\": }",
        "",
        "nul\u{0}",
        "{\"name\": \"x\"} trailing",
    ] {
        let res = app
            .client
            .put(app.url(&path))
            .bearer_auth(&t)
            .header("content-type", "application/json")
            .body(raw.to_owned())
            .send()
            .await
            .unwrap();
        let (s, b) = json_of(res).await;
        assert_eq!(s, 400, "{raw:?}: {b}");
    }
    let res = app
        .client
        .put(app.url(&path))
        .bearer_auth(&t)
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(json_of(res).await.0, 415);
    let res = app
        .client
        .put(app.url(&path))
        .bearer_auth(&t)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(json_of(res).await.0, 415);
    // Invalid UTF-8 in a JSON body.
    let res = app
        .client
        .put(app.url(&path))
        .bearer_auth(&t)
        .header("content-type", "application/json")
        .body(vec![
            b'{', b'"', b'n', b'a', b'm', b'e', b'"', b':', b'"', 0xff, 0xfe, b'"', b'}',
        ])
        .send()
        .await
        .unwrap();
    let (s, _) = json_of(res).await;
    assert!(s == 400 || s == 422, "{s}");
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_and_methods_are_json(
    #[values(Backend::Postgres, Backend::Sqlite)] backend: Backend,
) {
    let app = TestApp::builder().with_backend(backend).spawn().await;
    let (s, b) = json_of(app.get_anonymous("/nope").await).await;
    assert_eq!(s, 404);
    assert!(b["detail"].is_string());
    let (s, _) = json_of(app.client.post(app.url("/health")).send().await.unwrap()).await;
    assert_eq!(s, 405);
    let (s, b) = json_of(app.get_anonymous("/health").await).await;
    assert_eq!((s, b), (200, json!({"status": "ok"})));
    let (s, b) = json_of(app.get_anonymous("/healthz").await).await;
    assert_eq!(
        (s, b),
        (
            200,
            json!({"status": "healthy", "database": "ok", "redis": "embedded"})
        )
    );
    let (s, b) = json_of(app.get_anonymous("/ready").await).await;
    assert_eq!(s, 200);
    assert_eq!(b["database"], "ok");
    let (s, doc) = json_of(app.get_anonymous("/openapi.json").await).await;
    assert_eq!(s, 200);
    for p in [
        "/api/profiles/{user_id}",
        "/api/profiles/me",
        "/api/profiles",
        "/api/profiles/batch",
        "/api/profiles/{user_id}/settings",
        "/api/profiles/{user_id}/preferences",
        "/profile",
        "/health",
        "/ready",
        "/metrics",
    ] {
        assert!(doc["paths"][p].is_object(), "{p} missing from OpenAPI");
    }
    let res = app.get_anonymous("/docs/").await;
    assert_eq!(res.status(), 200);
    assert!(res.text().await.unwrap().to_lowercase().contains("swagger"));
    let res = app.get_anonymous("/metrics").await;
    assert_eq!(res.status(), 200);
    let text = res.text().await.unwrap();
    assert!(text.contains("http_requests_total"), "{text}");
}
