//! The stack's operations (SPEC 7): `GET /`, `/healthz` in the stack's shape, the
//! stack's Prometheus series, one `Request completed` line per request, the stack's
//! setting names, CORS, and the routes the stack's other services call.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use user_api::domain::UserId;

use crate::helpers::redis::{StoreKind, Target, raw};
use crate::helpers::{
    Backend, Limits, Role, TestApp, db, eventually, json_of, keys, redis_url, token,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_and_healthz_answer_in_the_stacks_shape() {
    let mut target = Target::new(StoreKind::Own).await;
    let app = TestApp::builder()
        .with_backend(Backend::Postgres)
        .with_store(&target)
        .with_limits(Limits::Production)
        .spawn()
        .await;
    let (s, b) = json_of(app.get_anonymous("/").await).await;
    assert_eq!(
        (s, b),
        (200, json!({"message": "User Profile API is running"}))
    );
    let res = app.get_anonymous("/healthz").await;
    assert!(
        res.headers().get("x-ratelimit-limit").is_none(),
        "not rate limited"
    );
    let (s, b) = json_of(res).await;
    assert_eq!(
        (s, b),
        (
            200,
            json!({"status": "healthy", "database": "ok", "redis": "ok"})
        )
    );

    // Redis down: degraded, still 200 (the service serves from the database).
    target.server().kill();
    let (s, b) = json_of(app.get_anonymous("/healthz").await).await;
    assert_eq!(
        (s, b),
        (
            200,
            json!({"status": "degraded", "database": "ok", "redis": "error"})
        )
    );
    let (s, b) = json_of(app.get_anonymous("/health").await).await;
    assert_eq!((s, b), (200, json!({"status": "ok"})), "liveness unchanged");

    target.server().restart().await;
    eventually(Duration::from_secs(15), "healthy again", || async {
        json_of(app.get_anonymous("/healthz").await).await.1["status"] == "healthy"
    })
    .await;

    // Both are documented, under the ops tag.
    let (_, doc) = json_of(app.get_anonymous("/openapi.json").await).await;
    for p in ["/", "/healthz"] {
        assert_eq!(doc["paths"][p]["get"]["tags"], json!(["ops"]), "{p}");
    }
    assert!(doc["paths"]["/healthz"]["get"]["responses"]["503"].is_object());
}

#[tokio::test]
async fn healthz_with_the_embedded_store_says_so() {
    let app = TestApp::builder()
        .with_backend(Backend::Sqlite)
        .spawn()
        .await;
    let (s, b) = json_of(app.get_anonymous("/healthz").await).await;
    assert_eq!(
        (s, b),
        (
            200,
            json!({"status": "healthy", "database": "ok", "redis": "embedded"})
        )
    );
}

/// The value of the first series line starting with `series` (labels included).
fn series_value(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.trim().parse::<f64>().ok())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stacks_series_are_exported_beside_the_existing_ones() {
    let app = TestApp::builder()
        .with_backend(Backend::Postgres)
        .with_store(&Target::Shared(redis_url()))
        .spawn()
        .await;
    let before = app.metrics().await;
    // Present (at zero) before anything happened to them.
    for series in [
        "http_requests_in_progress ",
        "http_exceptions_total{kind=\"server_error\"} ",
        "http_exceptions_total{kind=\"panic\"} ",
        "profile_cache_hits_total ",
        "profile_cache_misses_total ",
    ] {
        assert!(
            series_value(&before, series).is_some(),
            "{series}missing: {before}"
        );
    }
    // The scrape itself is a request in progress.
    assert!(series_value(&before, "http_requests_in_progress ").unwrap() >= 1.0);

    let id = UserId::random();
    app.create_profile(id, json!({"name": "x"})).await;
    let t = token(id, Role::User);
    let path = format!("/api/profiles/{id}");
    let hits = || app.prom_counter("profile_cache_hits_total ");
    let misses = || app.prom_counter("profile_cache_misses_total ");
    let (h0, m0, old_h0) = (
        hits().await,
        misses().await,
        app.prom_counter("cache_hits_total ").await,
    );
    let (_, first) = json_of(app.get(&path, &t).await).await;
    let (_, second) = json_of(app.get(&path, &t).await).await;
    assert_eq!(
        (first["cached"].clone(), second["cached"].clone()),
        (json!(false), json!(true))
    );
    assert_eq!((hits().await - h0, misses().await - m0), (1, 1));
    assert_eq!(
        app.prom_counter("cache_hits_total ").await - old_h0,
        1,
        "the existing series counts the same"
    );

    let after = app.metrics().await;
    for existing in [
        "http_requests_total{method=\"GET\",route=\"/api/profiles/{user_id}\",status=\"200\"}",
        "http_request_duration_seconds_bucket",
        "cache_hits_total",
        "ratelimit_rejections_total",
        "db_errors_total",
        "redis_errors_total",
        "db_pool_connections",
    ] {
        assert!(after.contains(existing), "{existing} missing: {after}");
    }
}

// ---- The per-request log line, from the real binary -----------------------------------

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The service binary in `dir` on 127.0.0.1:`port` (through HOST and PORT), JSON logs
/// on a pipe, with `env` on top.
fn service(dir: &Path, port: u16, database_url: &str, env: &[(&str, &str)]) -> Child {
    let mut c = Command::new(env!("CARGO_BIN_EXE_user-api"));
    c.arg("serve")
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOST", "127.0.0.1")
        .env("PORT", port.to_string())
        .env("DATABASE_URL", database_url)
        .env("JWT_PUBLIC_KEY_FILE", &keys().public_file)
        .env("PREWARM", "0")
        .env("USER_API__SERVER__LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    c.spawn().unwrap()
}

fn tempdir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("user-api-ops-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn wait_until_up(base: &str) {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.get(format!("{base}/health")).send().await.is_err() {
        assert!(Instant::now() < deadline, "did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Stops `child` with SIGTERM and returns every line it wrote to stderr.
async fn stop_and_collect(mut child: Child) -> Vec<String> {
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(exit.code(), Some(0), "a clean exit after SIGTERM");
    reader.join().unwrap()
}

fn completed(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["message"] == "Request completed")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_completed_line_per_request_with_its_fields() {
    let dir = tempdir();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let database_url = db::fresh_postgres_url().await;
    let child = service(&dir, port, &database_url, &[("REDIS_URL", &redis_url())]);
    wait_until_up(&base).await;

    let id = UserId::random();
    let t = token(id, Role::User);
    let client = reqwest::Client::new();
    let send = |method: Method, path: &str, rid: &str| {
        client
            .request(method, format!("{base}{path}"))
            .header("x-request-id", rid)
            .bearer_auth(&t)
    };
    let res = send(Method::POST, "/api/profiles", "ops-create")
        .json(&json!({"name": "山田太郎", "email": "taro@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    assert_eq!(res.headers()["x-request-id"], "ops-create");
    let res = send(Method::GET, &format!("/api/profiles/{id}"), "ops-read")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = send(Method::GET, "/no/such/route", "ops-unmatched")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(res.headers()["x-request-id"], "ops-unmatched");
    let res = send(Method::PUT, "/api/profiles/me", "ops-bad")
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    // The last one right before SIGTERM: its line is still flushed at exit.
    let res = send(Method::GET, "/health", "ops-last")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let lines = stop_and_collect(child).await;

    let done = completed(&lines);
    #[rustfmt::skip]
    let expected = [
        ("ops-create",    "POST", "/api/profiles",           201),
        ("ops-read",      "GET",  "/api/profiles/{user_id}", 200),
        ("ops-unmatched", "GET",  "unmatched",               404),
        ("ops-bad",       "PUT",  "/api/profiles/me",        400),
        ("ops-last",      "GET",  "/health",                 200),
    ];
    for (rid, method, path, status) in expected {
        let ours: Vec<&Value> = done.iter().filter(|v| v["request_id"] == rid).collect();
        assert_eq!(ours.len(), 1, "one line for {rid}: {lines:#?}");
        let line = ours[0];
        assert_eq!(line["level"], "INFO", "{line}");
        assert_eq!(
            (
                line["method"].as_str(),
                line["path"].as_str(),
                line["status_code"].as_u64()
            ),
            (Some(method), Some(path), Some(status)),
            "{line}"
        );
        assert!(
            line["duration_ms"].as_f64().is_some_and(|d| d >= 0.0),
            "{line}"
        );
    }
    // Nothing personal: the path is the template, never the raw path or the body.
    let all = lines.join("\n");
    for pii in ["taro@example.com", "山田"] {
        assert!(!all.contains(pii), "{pii} logged: {all}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_level_silences_the_line_and_rust_log_wins() {
    for (env, logged) in [
        (&[("LOG_LEVEL", "warning")][..], false),
        (&[("LOG_LEVEL", "critical"), ("RUST_LOG", "info")][..], true),
        (&[("LOG_LEVEL", "INFO")][..], true),
    ] {
        let dir = tempdir();
        let port = free_port();
        let base = format!("http://127.0.0.1:{port}");
        let child = service(&dir, port, "sqlite://data/ops.db", env);
        wait_until_up(&base).await;
        let res = reqwest::Client::new()
            .get(format!("{base}/"))
            .header("x-request-id", "level-check")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let lines = stop_and_collect(child).await;
        let found = completed(&lines)
            .iter()
            .any(|v| v["request_id"] == "level-check");
        assert_eq!(found, logged, "{env:?}: {lines:#?}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn a_bad_stack_setting_stops_the_start_naming_it() {
    for (var, value) in [
        ("CORS_ORIGINS", "https://app.example.com/path"),
        ("CORS_ORIGINS", ""),
        ("PORT", "eighty"),
        ("LOG_LEVEL", "chatty"),
        ("PROFILE_CACHE_TTL_SEC", ""),
    ] {
        let dir = tempdir();
        let out = Command::new(env!("CARGO_BIN_EXE_user-api"))
            .arg("serve")
            .current_dir(&dir)
            .env_clear()
            .env("JWT_PUBLIC_KEY_FILE", &keys().public_file)
            .env(var, value)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{var}={value:?}: {stderr}");
        assert!(stderr.contains(var), "{var}={value:?}: {stderr}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

// ---- CORS ---------------------------------------------------------------------------

#[tokio::test]
async fn cors_answers_the_allowed_origins_only() {
    let app = TestApp::builder()
        .with_backend(Backend::Sqlite)
        .with(|c| c.server.cors_origins = vec!["http://localhost:3000".into()])
        .spawn()
        .await;
    let preflight = |origin: &'static str| {
        app.client
            .request(Method::OPTIONS, app.url("/api/profiles/me"))
            .header("origin", origin)
            .header("access-control-request-method", "PUT")
            .header(
                "access-control-request-headers",
                "authorization,content-type",
            )
            .send()
    };
    let res = preflight("http://localhost:3000").await.unwrap();
    assert_eq!(res.status(), 200);
    let h = res.headers();
    assert_eq!(h["access-control-allow-origin"], "http://localhost:3000");
    let methods = h["access-control-allow-methods"].to_str().unwrap();
    assert!(
        methods.contains("PUT") && methods.contains("DELETE"),
        "{methods}"
    );
    let allowed = h["access-control-allow-headers"].to_str().unwrap();
    assert!(allowed.contains("authorization"), "{allowed}");
    assert!(h.contains_key("x-request-id"), "a preflight gets an id too");

    let res = preflight("http://evil.example").await.unwrap();
    assert!(res.headers().get("access-control-allow-origin").is_none());

    // A real request from the allowed origin: its answer (a 401 here) may be read.
    let res = app
        .client
        .get(app.url("/api/profiles/me"))
        .header("origin", "http://localhost:3000")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(
        res.headers()["access-control-allow-origin"],
        "http://localhost:3000"
    );
    let exposed = res.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap();
    assert!(exposed.contains("x-request-id"), "{exposed}");
}

#[tokio::test]
async fn no_cors_headers_by_default() {
    let app = TestApp::builder()
        .with_backend(Backend::Sqlite)
        .spawn()
        .await;
    let res = app
        .client
        .get(app.url("/health"))
        .header("origin", "http://localhost:3000")
        .send()
        .await
        .unwrap();
    assert!(
        !res.headers()
            .keys()
            .any(|k| k.as_str().starts_with("access-control-")),
        "{:?}",
        res.headers()
    );
}

// ---- The routes the stack's services call --------------------------------------------

/// The policy a limited answer was counted under.
fn policy_of(res: &reqwest::Response) -> String {
    res.headers()["ratelimit-policy"]
        .to_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stacks_profile_routes_behave_as_their_counterparts() {
    let app = TestApp::builder()
        .with_backend(Backend::Postgres)
        .with_store(&Target::Shared(redis_url()))
        .spawn()
        .await;
    let id = UserId::random();
    let t = token(id, Role::User);
    // No profile yet: the own-profile update routes say so.
    for (method, path) in [
        (Method::PUT, "/api/v1/profiles/me"),
        (Method::PUT, "/api/profiles/me"),
        (Method::PATCH, "/api/profiles/me"),
    ] {
        let (s, b) = json_of(
            app.send_json(method.clone(), path, &t, &json!({"name": "x"}))
                .await,
        )
        .await;
        assert_eq!(
            (s, b["detail"].as_str()),
            (404, Some("Profile not found")),
            "{method} {path}"
        );
    }
    app.create_profile(id, json!({"name": "first"})).await;

    let res = app.get("/api/v1/profiles/me", &t).await;
    assert!(
        policy_of(&res).contains("profiles-read"),
        "{}",
        policy_of(&res)
    );
    let (s, v1) = json_of(res).await;
    let (_, plain) = json_of(app.get("/api/profiles/me", &t).await).await;
    assert_eq!(s, 200);
    let bare = |v: &Value| {
        let mut p = v["profile"].clone();
        p.as_object_mut().unwrap().remove("cached_at");
        p
    };
    assert_eq!(bare(&v1), bare(&plain), "the alias serves the same profile");

    for (method, path, name) in [
        (Method::PUT, "/api/v1/profiles/me", "v1"),
        (Method::PUT, "/api/profiles/me", "put"),
        (Method::PATCH, "/api/profiles/me", "patch"),
    ] {
        let res = app
            .send_json(method.clone(), path, &t, &json!({"name": name}))
            .await;
        assert!(
            policy_of(&res).contains("profiles-update"),
            "{method} {path}"
        );
        let (s, b) = json_of(res).await;
        assert_eq!(
            (s, b["message"].as_str(), b["profile"]["name"].as_str()),
            (200, Some("Profile updated successfully"), Some(name)),
            "{method} {path}: {b}"
        );
        // The cached copy was invalidated: the next read shows the write.
        let (_, read) = json_of(app.get("/api/v1/profiles/me", &t).await).await;
        assert_eq!(read["profile"]["name"], name, "{method} {path}");
    }
    let (s, _) = json_of(
        app.send_json(
            Method::PATCH,
            "/api/profiles/me",
            &t,
            &json!({"email": "not-an-email"}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 422);

    // DELETE /profile: the profile, its documents and every cache entry go.
    let settings = format!("/api/profiles/{id}/settings");
    let (s, _) = json_of(
        app.send_json(Method::PUT, &settings, &t, &json!({"theme": "dark"}))
            .await,
    )
    .await;
    assert_eq!(s, 200);
    let (s, _) = json_of(app.get(&settings, &t).await).await;
    assert_eq!(s, 200);
    json_of(app.get("/api/profiles/me", &t).await).await; // cached again
    let res = app.delete("/profile", &t).await;
    assert!(policy_of(&res).contains("profiles-update"));
    assert_eq!(res.status(), 204);
    for kind in ["profile", "settings"] {
        assert_eq!(
            raw(&app, &format!("cache:{kind}:{id}")).await,
            None,
            "{kind}"
        );
    }
    let (s, _) = json_of(app.get("/api/profiles/me", &t).await).await;
    assert_eq!(s, 404);
    let (s, _) = json_of(app.get(&settings, &t).await).await;
    assert_eq!(s, 404, "settings went with the profile");
    let (s, b) = json_of(app.delete("/profile", &t).await).await;
    assert_eq!((s, b["detail"].as_str()), (404, Some("Profile not found")));

    let (_, doc) = json_of(app.get_anonymous("/openapi.json").await).await;
    for (path, methods) in [
        ("/api/v1/profiles/me", &["get", "put"][..]),
        ("/api/profiles/me", &["get", "put", "patch"][..]),
        ("/profile", &["get", "post", "put", "delete"][..]),
    ] {
        for m in methods {
            assert!(
                doc["paths"][path][m].is_object(),
                "{m} {path} not documented"
            );
        }
    }
}
