//! Rate limits on a real single-node Redis (SPEC 5): exactness across instances, TTLs,
//! headers, window rollover, isolation, per-address limits, the one-round-trip hot path,
//! and Redis outages. Counters of the shared Redis use fresh random ids (and addresses),
//! so runs never collide; tests that inspect server-wide statistics or kill Redis own
//! their `redis-server`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::helpers::ratelimit::{
    app_with_cached_profile, assert_ttls, counters, header, header_u64, next_window, window_room,
    within_one_window,
};
use crate::helpers::redis::{StoreKind, Target, connect};
use crate::helpers::{Limits, Role, TestApp, json_of, token};
use redis::AsyncCommands;
use reqwest::Method;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use user_api::config::FailMode;
use user_api::domain::UserId;
use user_api::ratelimit::Window;
use user_api::ratelimit::window::now_ms;

/// The shared Redis (`TEST_REDIS_URL`).
fn shared() -> Target {
    Target::Shared(crate::helpers::redis_url())
}

/// Every `<prefix>*` counter of the shared Redis with its value.
async fn shared_counters(prefix: &str) -> Vec<(String, i64)> {
    counters(&shared(), prefix)
        .await
        .into_iter()
        .map(|(k, v, _)| (k, v))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exact_across_three_instances() {
    crate::helpers::ratelimit::exact_across_three_instances(&shared()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_agree_with_each_other_and_the_key() {
    let app = TestApp::builder()
        .with_store(&shared())
        .with_limits(Limits::Production)
        .with(|c| c.rate_limits.profiles_read = 3)
        .spawn()
        .await;
    let id = UserId::random();
    let t = token(id, Role::User);
    app.create_profile(id, json!({})).await;
    window_room(3600, Duration::from_secs(10)).await;
    let mut conn = connect(&crate::helpers::redis_url()).await;
    let key = Window::current(3600).user_key(id, "/api/profiles");

    for n in 1..=3u64 {
        let res = app.get(&format!("/api/profiles/{id}"), &t).await;
        assert_eq!(res.status(), 200);
        let reset = header_u64(&res, "x-ratelimit-reset");
        assert_eq!(header_u64(&res, "x-ratelimit-limit"), 3);
        assert_eq!(header_u64(&res, "x-ratelimit-remaining"), 3 - n);
        assert_eq!(
            header(&res, "ratelimit-policy"),
            "\"profiles-read\";q=3;w=3600"
        );
        assert_eq!(
            header(&res, "ratelimit"),
            format!("\"profiles-read\";r={};t={reset}", 3 - n)
        );
        // The reset is the window's end: by our clock and by the key's TTL (which runs 5 s
        // past it, so that no instance with a slightly slow clock resets it early).
        let local = Window::current(3600).remaining_ms(now_ms()).div_ceil(1000);
        assert!(
            reset.abs_diff(local) <= 2,
            "reset {reset}, window ends in {local}"
        );
        let pttl: i64 = conn.pttl(&key).await.unwrap();
        let key_reset = (pttl as u64).saturating_sub(5_000).div_ceil(1000);
        assert!(
            reset.abs_diff(key_reset) <= 2,
            "reset {reset}, key says {key_reset}"
        );
        assert!((1..=3600).contains(&reset));
    }

    let res = app.get(&format!("/api/profiles/{id}"), &t).await;
    assert_eq!(res.status(), 429);
    let retry_after = header_u64(&res, "retry-after");
    let reset = header_u64(&res, "x-ratelimit-reset");
    assert_eq!(retry_after, reset);
    let to_end = Window::current(3600).remaining_ms(now_ms()) / 1000;
    assert!(
        retry_after >= to_end,
        "Retry-After {retry_after} before the window's end ({to_end} s)"
    );
    assert_eq!(header_u64(&res, "x-ratelimit-remaining"), 0);
    assert_eq!(
        header(&res, "ratelimit"),
        format!("\"profiles-read\";r=0;t={reset}")
    );
    let (_, body) = json_of(res).await;
    assert_eq!(
        body["detail"],
        format!("Rate limit exceeded. Try again in {retry_after} seconds.")
    );
    let count: i64 = conn.get(&key).await.unwrap();
    assert_eq!(count, 4);

    // Error answers carry the headers too (403: another user's profile; 422: a bad id).
    let other = UserId::random();
    let t2 = token(other, Role::User);
    let res = app.get(&format!("/api/profiles/{id}"), &t2).await;
    assert_eq!(res.status(), 403);
    assert_eq!(header_u64(&res, "x-ratelimit-remaining"), 2);
    let res = app.get("/api/profiles/not-a-uuid", &t2).await;
    assert_eq!(res.status(), 422);
    assert_eq!(header_u64(&res, "x-ratelimit-remaining"), 1);
    // Unlimited routes carry none.
    let res = app.get_anonymous("/health").await;
    assert!(res.headers().get("x-ratelimit-limit").is_none());
    let res = app.get_anonymous("/metrics").await;
    assert!(res.headers().get("ratelimit").is_none());
    assert_ttls(&shared(), &format!("rate:{id}:")).await;
    assert_ttls(&shared(), &format!("rate:{other}:")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counter_without_ttl_is_repaired() {
    let app = TestApp::builder()
        .with_store(&shared())
        .with_limits(Limits::Production)
        .spawn()
        .await;
    let id = UserId::random();
    window_room(3600, Duration::from_secs(10)).await;
    let key = Window::current(3600).user_key(id, "/api/profiles");
    let mut conn = connect(&crate::helpers::redis_url()).await;
    // As an older version (INCR, then a crash before EXPIRE) could have left it.
    let _: () = conn.set(&key, 5).await.unwrap();
    let res = app.get("/api/profiles/me", &token(id, Role::User)).await;
    assert_eq!(header_u64(&res, "x-ratelimit-remaining"), 94);
    let pttl: i64 = conn.pttl(&key).await.unwrap();
    assert!(pttl > 0, "PTTL {pttl}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_window_rolls_over() {
    let app = TestApp::builder()
        .with_store(&shared())
        .with_limits(Limits::Production)
        .with(|c| {
            c.rate_limits.window_secs = 2;
            c.rate_limits.profiles_read = 3;
        })
        .spawn()
        .await;
    let path = "/api/profiles/me";
    let (window, (id, t, statuses)) = within_one_window(2, || async {
        let id = UserId::random();
        let t = token(id, Role::User);
        let mut statuses = Vec::new();
        for _ in 0..4 {
            let res = app.get(path, &t).await;
            assert_eq!(
                header(&res, "ratelimit-policy"),
                "\"profiles-read\";q=3;w=2"
            );
            assert!(header_u64(&res, "x-ratelimit-reset") <= 2);
            statuses.push(res.status().as_u16());
        }
        (id, t, statuses)
    })
    .await;
    assert_eq!(statuses, [404, 404, 404, 429]);

    let mut conn = connect(&crate::helpers::redis_url()).await;
    let key = window.user_key(id, "/api/profiles");
    assert_eq!(
        key.rsplit(':').next().unwrap().len(),
        14,
        "yyyyMMddHHmmss: {key}"
    );
    let pttl: i64 = conn.pttl(&key).await.unwrap();
    assert!(pttl > 0 && pttl <= 7_000, "PTTL {pttl}");

    next_window(2).await;
    let res = app.get(path, &t).await;
    assert_eq!(res.status(), 404, "a new window starts from zero");
    assert_eq!(header_u64(&res, "x-ratelimit-remaining"), 2);
    assert_ttls(&shared(), &format!("rate:{id}:")).await;
}

async fn put(app: &TestApp, t: &str, id: UserId) -> reqwest::Response {
    app.send_json(
        Method::PUT,
        &format!("/api/profiles/{id}"),
        t,
        &json!({"name": "x"}),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_and_policies_are_isolated() {
    let app = TestApp::builder()
        .with_store(&shared())
        .with_limits(Limits::Production)
        .with(|c| c.rate_limits.profiles_update = 2)
        .spawn()
        .await;
    window_room(3600, Duration::from_secs(10)).await;
    let (a, b) = (UserId::random(), UserId::random());
    let (ta, tb) = (token(a, Role::User), token(b, Role::User));

    app.create_profile(a, json!({})).await; // update 1 of 2
    let res = put(&app, &ta, a).await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        header(&res, "ratelimit"),
        format!(
            "\"profiles-update\";r=0;t={}",
            header(&res, "x-ratelimit-reset")
        )
    );
    let res = put(&app, &ta, a).await;
    assert_eq!(res.status(), 429);
    assert_eq!(
        header(&res, "ratelimit-policy"),
        "\"profiles-update\";q=2;w=3600"
    );
    // Document writes share the update counter.
    let res = app
        .send_json(
            Method::PUT,
            &format!("/api/profiles/{a}/settings"),
            &ta,
            &json!({"k": 1}),
        )
        .await;
    assert_eq!(res.status(), 429);

    // Another user is not affected, nor are A's reads.
    app.create_profile(b, json!({})).await;
    assert_eq!(put(&app, &tb, b).await.status(), 200);
    let mut remaining = Vec::new();
    for path in [
        format!("/api/profiles/{a}"),
        format!("/api/profiles/{a}/settings"),
        format!("/api/profiles/{a}/preferences"),
        "/api/profiles/me".to_owned(),
        "/profile".to_owned(),
    ] {
        let res = app.get(&path, &ta).await;
        assert_eq!(res.status(), 200, "{path}");
        assert_eq!(
            header(&res, "ratelimit-policy"),
            "\"profiles-read\";q=100;w=3600"
        );
        remaining.push(header_u64(&res, "x-ratelimit-remaining"));
    }
    assert_eq!(
        remaining,
        [99, 98, 97, 96, 95],
        "every read shares one counter"
    );

    let keys = shared_counters(&format!("rate:{a}:")).await;
    let w = Window::current(3600);
    let mut expected = vec![
        (w.user_key(a, "/api/profiles"), 5),
        (w.user_key(a, "/api/profiles/update"), 4),
    ];
    expected.sort();
    assert_eq!(keys, expected);
    assert_ttls(&shared(), &format!("rate:{a}:")).await;
    assert_ttls(&shared(), &format!("rate:{b}:")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_share_one_counter_per_policy_and_template() {
    let app = TestApp::builder()
        .with_store(&shared())
        .with_limits(Limits::Production)
        .spawn()
        .await;
    window_room(3600, Duration::from_secs(10)).await;
    let admin = UserId::random();
    let t = token(admin, Role::Admin);
    for n in 1..=5u64 {
        let res = app
            .get(&format!("/api/profiles/{}", UserId::random()), &t)
            .await;
        assert_eq!(res.status(), 404);
        assert_eq!(header_u64(&res, "x-ratelimit-remaining"), 100 - n);
    }
    for _ in 0..2 {
        let path = format!("/api/admin/cache/invalidate/{}", UserId::random());
        let res = app.send_json(Method::POST, &path, &t, &json!({})).await;
        assert!(res.status().is_success(), "{}", res.status());
        assert_eq!(header(&res, "ratelimit-policy"), "\"default\";q=100;w=3600");
    }
    let res = app
        .send_json(
            Method::POST,
            "/api/profiles/batch",
            &t,
            &json!([UserId::random().to_string()]),
        )
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        header(&res, "ratelimit-policy"),
        "\"profiles-batch\";q=20;w=3600"
    );
    assert_eq!(header_u64(&res, "x-ratelimit-remaining"), 19);

    let keys = shared_counters(&format!("rate:{admin}:")).await;
    let w = Window::current(3600);
    let mut expected = vec![
        (w.user_key(admin, "/api/profiles"), 5),
        (
            w.user_key(admin, "/api/admin/cache/invalidate/{user_id}"),
            2,
        ),
        (w.user_key(admin, "/api/profiles/batch"), 1),
    ];
    expected.sort();
    assert_eq!(keys, expected, "ids in paths never mint counters");
    assert_ttls(&shared(), &format!("rate:{admin}:")).await;
}

/// An address nobody else uses, passed through a trusted `X-Forwarded-For`.
fn fresh_address() -> String {
    let u = uuid::Uuid::new_v4().as_u128();
    std::net::Ipv6Addr::from((0xfd00u128 << 112) | (u >> 16)).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_authentication_is_limited_per_address() {
    let app = TestApp::builder()
        .with_store(&shared())
        .with_limits(Limits::Production)
        .with(|c| {
            c.rate_limits.per_address = 5;
            // The test client (127.0.0.1) and 10.0.0.1 are the proxies; the client is the
            // right-most X-Forwarded-For entry that is not one of them.
            c.rate_limits.trusted_proxies = vec![
                "127.0.0.0/8".parse().unwrap(),
                "10.0.0.0/8".parse().unwrap(),
            ];
        })
        .spawn()
        .await;
    window_room(3600, Duration::from_secs(10)).await;
    let addr = fresh_address();
    let from = |addr: &str, auth: Option<&str>| {
        let mut req = app
            .client
            .get(app.url("/api/profiles/me"))
            .header("x-forwarded-for", format!("{addr}, 10.0.0.1"));
        if let Some(t) = auth {
            req = req.bearer_auth(t);
        }
        req.send()
    };
    let user = UserId::random();
    let known = token(user, Role::User);
    // A valid token never counts against its address.
    assert_eq!(from(&addr, Some(&known)).await.unwrap().status(), 404);

    for n in 1..=5u64 {
        let auth = if n % 2 == 0 {
            None
        } else {
            Some("not.a-valid.token")
        };
        let res = from(&addr, auth).await.unwrap();
        assert_eq!(res.status(), 401);
        assert_eq!(
            header(&res, "ratelimit-policy"),
            "\"per-address\";q=5;w=3600"
        );
        assert_eq!(header_u64(&res, "x-ratelimit-remaining"), 5 - n);
    }
    let res = from(&addr, Some("still.not-valid.token")).await.unwrap();
    assert_eq!(res.status(), 429);
    assert!(header_u64(&res, "retry-after") >= 1);
    assert_eq!(header(&res, "ratelimit").split(';').nth(1), Some("r=0"));

    // Blocked: refused before the signature is looked at: even a valid token never seen
    // from this address is refused (so guesses teach nothing), and nothing reaches Redis.
    let fresh = token(UserId::random(), Role::User);
    let res = from(&addr, Some(&fresh)).await.unwrap();
    assert_eq!(res.status(), 429);
    let (_, body) = json_of(res).await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .starts_with("Rate limit exceeded.")
    );
    for _ in 0..3 {
        assert_eq!(from(&addr, Some("x.y.z")).await.unwrap().status(), 429);
    }
    // The caller who was already using this address keeps working.
    let res = from(&addr, Some(&known)).await.unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(
        header(&res, "ratelimit-policy"),
        "\"profiles-read\";q=100;w=3600"
    );
    // Other addresses are unaffected.
    assert_eq!(from(&fresh_address(), None).await.unwrap().status(), 401);
    assert_eq!(
        from(&fresh_address(), Some(&fresh)).await.unwrap().status(),
        404
    );

    let mut conn = connect(&crate::helpers::redis_url()).await;
    // IPv6 addresses are limited per /64.
    let ip = user_api::ratelimit::address::limited_unit(addr.parse().unwrap());
    let key = Window::current(3600).address_key(ip);
    let count: i64 = conn.get(&key).await.unwrap();
    assert_eq!(
        count, 6,
        "requests refused in process are not sent to Redis"
    );
    assert_ttls(&shared(), &format!("rate:ip:{ip}:")).await;
}

/// A TCP proxy that counts request/response round trips: a burst of bytes from the client
/// after the server last answered is one round trip, whatever it contains.
struct RoundTrips {
    port: u16,
    count: Arc<AtomicU64>,
}

impl RoundTrips {
    async fn start(upstream: u16) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let count = Arc::new(AtomicU64::new(0));
        let total = count.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                else {
                    continue;
                };
                let waiting = Arc::new(AtomicBool::new(false));
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let (w, t) = (waiting.clone(), total.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n) = cr.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        // Counted before forwarding, so the answer cannot overtake it.
                        if !w.swap(true, Ordering::SeqCst) {
                            t.fetch_add(1, Ordering::SeqCst);
                        }
                        if sw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n) = sr.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        waiting.store(false, Ordering::SeqCst);
                        if cw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Self { port, count }
    }

    fn get(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_read_costs_one_round_trip() {
    let mut target = Target::new(StoreKind::Own).await;
    let proxy = RoundTrips::start(target.server().port).await;
    // The app reaches the node through the counting proxy.
    let (app, path, t) = app_with_cached_profile(
        TestApp::builder()
            .with_store(&target)
            .with_limits(Limits::Production)
            .with_proxy(format!("redis://127.0.0.1:{}", proxy.port)),
    )
    .await;
    // Settings too: cache them first (a miss, then a hit).
    let settings = format!("{path}/settings");
    let deadline = Instant::now() + Duration::from_secs(5);
    while json_of(app.get(&settings, &t).await).await.1["cached"] != true {
        assert!(Instant::now() < deadline, "settings never became cached");
    }
    // `GET /profile` reads the same entry as the profile route (a bare body: a miss would
    // show as an EVALSHA, the guarded fill).
    for read in [
        path.as_str(),
        settings.as_str(),
        "/api/profiles/me",
        "/profile",
    ] {
        let server = target.server();
        server.reset_stats();
        let before = proxy.get();
        let (s, body) = json_of(app.get(read, &t).await).await;
        assert_eq!(s, 200, "{read}: {body}");
        if body.get("cached").is_some() {
            assert_eq!(body["cached"], json!(true), "{read}: {body}");
        }
        let trips = proxy.get() - before;
        let calls = server.commandstats();
        let calls_of = |n: &str| calls.get(n).copied().unwrap_or(0);
        // The admission step: both revocation keys, the counter's transaction, the look.
        assert_eq!(calls_of("exists"), 1, "{read}: {calls:?}");
        assert_eq!(
            (
                calls_of("multi"),
                calls_of("incr"),
                calls_of("pexpire"),
                calls_of("exec")
            ),
            (1, 1, 1, 1),
            "{read}: {calls:?}"
        );
        assert_eq!(calls_of("mget"), 1, "{read}: {calls:?}");
        for name in calls.keys() {
            // The admission step's commands, and this test's INFO and CONFIG.
            assert!(
                [
                    "exists",
                    "multi",
                    "incr",
                    "pexpire",
                    "exec",
                    "mget",
                    "info",
                    "config|resetstat"
                ]
                .contains(&name.as_str()),
                "{read}: unexpected command {name} on the hot path: {calls:?}"
            );
        }
        assert_eq!(
            trips, 1,
            "{read}: revocation, the count and the cache look share one round trip: {trips} ({calls:?})"
        );
    }
}

/// `GET /api/profiles/me`, which must be answered within a second.
async fn get_me_promptly(app: &TestApp, t: &str) -> reqwest::Response {
    let start = Instant::now();
    let res = app.get("/api/profiles/me", t).await;
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "took {:?}",
        start.elapsed()
    );
    res
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_fails_open_to_local_limits() {
    // A test-owned node (to be killed); a Redis timeout short as in production, yet safe
    // from timeouts on a loaded machine before the outage.
    let mut target = Target::new(StoreKind::Own).await;
    let app = TestApp::builder()
        .with_store(&target)
        .with_limits(Limits::Production)
        .with(|c| {
            c.redis.timeout_ms = 250;
            c.rate_limits.profiles_read = 5;
        })
        .spawn()
        .await;
    let id = UserId::random();
    let t = token(id, Role::User);
    window_room(3600, Duration::from_secs(10)).await;
    for _ in 0..2 {
        assert_eq!(app.get("/api/profiles/me", &t).await.status(), 404);
    }
    let mut conn = target.server().conn().await;
    let count: i64 = conn
        .get(Window::current(3600).user_key(id, "/api/profiles"))
        .await
        .unwrap();
    assert_eq!(count, 2);
    target.server().kill();

    // The instance's own counter enforces the policy (for a caller it has never counted
    // locally, from zero; the Redis count is out of reach).
    let t = token(UserId::random(), Role::User);
    let mut statuses = Vec::new();
    for _ in 0..7 {
        let res = get_me_promptly(&app, &t).await;
        statuses.push(res.status().as_u16());
        if res.status() == 429 {
            assert_eq!(
                header(&res, "ratelimit-policy"),
                "\"profiles-read\";q=5;w=3600"
            );
        }
    }
    assert_eq!(statuses, [404, 404, 404, 404, 404, 429, 429]);
    // Per-address counting degrades the same way.
    let res = app.get("/api/profiles/me", "bad.token.here").await;
    assert_eq!(res.status(), 401);
    let metrics = app.metrics().await;
    assert!(metrics.contains("ratelimit_fallback_total"), "{metrics}");
    assert!(
        metrics.contains("ratelimit_store_errors_total"),
        "{metrics}"
    );
    assert!(metrics.contains("ratelimit_rejections_total{policy=\"profiles-read\"}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_fails_closed_with_503() {
    let mut target = Target::new(StoreKind::Own).await;
    let app = TestApp::builder()
        .with_store(&target)
        .with_limits(Limits::Production)
        .with(|c| {
            c.redis.timeout_ms = 250;
            c.rate_limits.fail = FailMode::Closed;
        })
        .spawn()
        .await;
    let id = UserId::random();
    let t = token(id, Role::User);
    assert_eq!(app.get("/api/profiles/me", &t).await.status(), 404);
    target.server().kill();
    for _ in 0..5 {
        let (status, body) = json_of(get_me_promptly(&app, &t).await).await;
        assert_eq!(status, 503);
        assert!(
            body["detail"].as_str().unwrap().contains("Rate limiter"),
            "{body}"
        );
    }
    // Unlimited routes still answer.
    let res = app.get_anonymous("/health").await;
    assert_eq!(res.status(), 200);
}
