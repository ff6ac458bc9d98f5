//! The HTTP edge against slow, odd and hostile clients, over raw TCP sockets to the real
//! service: header and idle timeouts, the connection cap, early answers that keep (or
//! honestly close) the connection, declared-oversized bodies, metric labels that clients
//! cannot mint, error series present from the start, and the client address behind
//! trusted proxies.
//!
//! The timeouts are configured short (about a second), so each test runs in seconds.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::helpers::raw_http::{Resp, read_response};
use crate::helpers::{Backend, Role, TestApp, token};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use user_api::config::Config;
use user_api::domain::UserId;

const HEADER_TIMEOUT_MS: u64 = 1000;
const IDLE_TIMEOUT_MS: u64 = 1500;

async fn edge_config() -> Config {
    let mut c = TestApp::builder()
        .with_backend(Backend::Sqlite)
        .config()
        .await;
    c.server.header_read_timeout_ms = HEADER_TIMEOUT_MS;
    c.server.keep_alive_timeout_ms = IDLE_TIMEOUT_MS;
    c
}

fn addr(app: &TestApp) -> SocketAddr {
    app.base.trim_start_matches("http://").parse().unwrap()
}

async fn connect(app: &TestApp) -> TcpStream {
    TcpStream::connect(addr(app)).await.expect("connect")
}

/// Whether the server has closed `s` (EOF or reset), waiting at most `wait`.
async fn closed_within(s: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            // Data (a response): keep reading until EOF or the deadline.
            Ok(Ok(_)) => continue,
        }
    }
}

const HEALTH: &[u8] = b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_trickled_one_byte_at_a_time_are_cut_off() {
    let app = TestApp::spawn_with(edge_config().await).await;
    let mut s = connect(&app).await;
    let started = Instant::now();
    let head = b"GET /health HTTP/1.1\r\nHost: t\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
    let mut closed_after = None;
    for byte in head.iter().cycle().take(100) {
        if s.write_all(&[*byte]).await.is_err()
            || closed_within(&mut s, Duration::from_millis(200)).await
        {
            closed_after = Some(started.elapsed());
            break;
        }
    }
    let after = closed_after.expect("a trickling client is never cut off");
    assert!(
        after >= Duration::from_millis(HEADER_TIMEOUT_MS - 100)
            && after < Duration::from_millis(HEADER_TIMEOUT_MS + 1500),
        "closed after {after:?}, expected about {HEADER_TIMEOUT_MS} ms"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_head_then_silence_and_a_silent_connection_are_closed() {
    let app = TestApp::spawn_with(edge_config().await).await;
    let mut partial = connect(&app).await;
    partial
        .write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n")
        .await
        .unwrap();
    let mut silent = connect(&app).await;
    let started = Instant::now();
    assert!(
        closed_within(
            &mut partial,
            Duration::from_millis(HEADER_TIMEOUT_MS + 1500)
        )
        .await
    );
    assert!(closed_within(&mut silent, Duration::from_millis(500)).await);
    assert!(started.elapsed() >= Duration::from_millis(HEADER_TIMEOUT_MS - 100));
    let m = app.metrics().await;
    assert!(
        m.lines().any(
            |l| l.starts_with("http_connections_timed_out_total{phase=\"header\"}")
                && !l.ends_with(" 0")
        ),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let app = TestApp::spawn_with(edge_config().await).await;
    let mut s = connect(&app).await;
    s.write_all(HEALTH).await.unwrap();
    let r = read_response(&mut s, Duration::from_secs(2)).await.unwrap();
    assert_eq!(r.status, 200);
    assert!(!r.closes());
    // Reused within the idle timeout: still served.
    tokio::time::sleep(Duration::from_millis(IDLE_TIMEOUT_MS / 2)).await;
    s.write_all(HEALTH).await.unwrap();
    let r = read_response(&mut s, Duration::from_secs(2)).await.unwrap();
    assert_eq!(r.status, 200);
    let idle_from = Instant::now();
    assert!(
        !closed_within(&mut s, Duration::from_millis(IDLE_TIMEOUT_MS - 400)).await,
        "closed before the idle timeout"
    );
    assert!(
        closed_within(&mut s, Duration::from_millis(1500)).await,
        "an idle connection stays open"
    );
    let idle = idle_from.elapsed();
    assert!(
        idle >= Duration::from_millis(IDLE_TIMEOUT_MS - 100),
        "{idle:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_connections_holding_8_kib_heads_are_all_closed() {
    let mut c = edge_config().await;
    // All from one address: the header timeout is under test here, not the per-address cap.
    c.server.max_connections_per_address = 0;
    let app = TestApp::spawn_with(c).await;
    let mut conns = Vec::new();
    let filler = format!(
        "GET /health HTTP/1.1\r\nHost: t\r\nX-Fill: {}\r\n",
        "a".repeat(8 * 1024)
    );
    for _ in 0..1000 {
        let mut s = connect(&app).await;
        s.write_all(filler.as_bytes()).await.unwrap();
        conns.push(s);
    }
    // Meanwhile an honest client is served.
    let res = app.get_anonymous("/health").await;
    assert_eq!(res.status(), 200);
    let deadline = Duration::from_millis(HEADER_TIMEOUT_MS + 3000);
    let started = Instant::now();
    let mut open = 0;
    for s in &mut conns {
        let left = deadline.saturating_sub(started.elapsed());
        if !closed_within(s, left.max(Duration::from_millis(10))).await {
            open += 1;
        }
    }
    assert_eq!(open, 0, "connections still open after {deadline:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_connection_cap_new_clients_wait_for_a_free_slot() {
    let mut c = edge_config().await;
    c.server.max_connections = 3;
    c.server.header_read_timeout_ms = 5000;
    let app = TestApp::spawn_with(c).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = connect(&app).await;
        // Each holds its slot with a half-sent head.
        s.write_all(b"GET /health HTTP/1.1\r\n").await.unwrap();
        held.push(s);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut waiting = connect(&app).await; // queued in the kernel's backlog
    waiting.write_all(HEALTH).await.unwrap();
    assert!(
        read_response(&mut waiting, Duration::from_millis(700))
            .await
            .is_none(),
        "a fourth connection was served past the cap of 3"
    );
    drop(held.pop());
    let r = read_response(&mut waiting, Duration::from_secs(3))
        .await
        .expect("served once a slot is free");
    assert_eq!(r.status, 200);
}

/// A `GET /health` whose head (request line, headers, final blank line) is exactly
/// `size` bytes, padded by one `X-Pad` header.
fn head_of_size(size: usize) -> Vec<u8> {
    let fixed = "GET /health HTTP/1.1\r\nHost: t\r\nX-Pad: \r\n\r\n".len();
    let head = format!(
        "GET /health HTTP/1.1\r\nHost: t\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(size - fixed)
    );
    assert_eq!(head.len(), size);
    head.into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_over_64_kib_is_431_to_the_byte() {
    let app = TestApp::spawn_with(edge_config().await).await;
    // The issue's probe: one 80 KiB header (answered 200 before).
    for (size, status) in [
        (80 * 1024, 431),
        (64 * 1024 + 1, 431),
        (64 * 1024, 200),
        (1000, 200),
    ] {
        let mut s = connect(&app).await;
        s.write_all(&head_of_size(size)).await.unwrap();
        let r = read_response(&mut s, Duration::from_secs(3))
            .await
            .unwrap_or_else(|| panic!("no answer to a {size}-byte head"));
        assert_eq!(r.status, status, "a head of {size} bytes");
        if status == 431 {
            assert_too_large(&r);
            assert!(closed_within(&mut s, Duration::from_secs(2)).await);
        }
    }
    // Many headers adding up past the limit are one head too.
    let mut head = b"GET /health HTTP/1.1\r\nHost: t\r\n".to_vec();
    for i in 0..20 {
        head.extend_from_slice(format!("X-Pad-{i}: {}\r\n", "b".repeat(4000)).as_bytes());
    }
    head.extend_from_slice(b"\r\n");
    let mut s = connect(&app).await;
    s.write_all(&head).await.unwrap();
    let r = read_response(&mut s, Duration::from_secs(3)).await.unwrap();
    assert_too_large(&r);
    // A head sent a byte at a time past the limit: the same answer.
    let mut s = connect(&app).await;
    let head = head_of_size(64 * 1024 + 10);
    let (first, rest) = head.split_at(64 * 1024 - 2);
    s.write_all(first).await.unwrap();
    for b in rest.iter().take(6) {
        tokio::time::sleep(Duration::from_millis(5)).await;
        s.write_all(&[*b]).await.unwrap();
    }
    let r = read_response(&mut s, Duration::from_secs(3)).await.unwrap();
    assert_too_large(&r);
}

/// A 431 that says why, in JSON, and closes.
fn assert_too_large(r: &Resp) {
    assert_eq!(r.status, 431);
    assert!(r.closes(), "{}", r.head);
    let body: serde_json::Value = serde_json::from_slice(&r.body).expect("a JSON body");
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("64 KiB"), "{body}");
}

/// A connection from the local address `from` (any of 127.0.0.0/8).
async fn connect_from(app: &TestApp, from: &str) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    socket.connect(addr(app)).await.expect("connect")
}

/// A `GET /health` on `s`, kept alive: its status.
async fn health_on(s: &mut TcpStream) -> u16 {
    s.write_all(HEALTH).await.unwrap();
    read_response(s, Duration::from_secs(3))
        .await
        .map_or(0, |r| r.status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_hold_every_connection_slot_but_a_trusted_proxy_may() {
    let mut c = edge_config().await;
    c.server.max_connections = 8;
    c.server.max_connections_per_address = 3;
    c.server.keep_alive_timeout_ms = 20_000;
    c.rate_limits.trusted_proxies = vec!["127.0.0.3/32".parse().unwrap()];
    let app = TestApp::spawn_with(c).await;
    // A client keeps three keep-alive connections open (polling, as in the issue).
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = connect_from(&app, "127.0.0.1").await;
        assert_eq!(health_on(&mut s).await, 200);
        held.push(s);
    }
    // Its fourth is refused at once with 429, and closed.
    let mut fourth = connect_from(&app, "127.0.0.1").await;
    fourth.write_all(HEALTH).await.unwrap();
    let r = read_response(&mut fourth, Duration::from_secs(3))
        .await
        .expect("an answer, not a wait in the backlog");
    assert_eq!(r.status, 429);
    assert!(r.closes(), "{}", r.head);
    assert!(String::from_utf8_lossy(&r.body).contains("\"detail\""));
    assert!(closed_within(&mut fourth, Duration::from_secs(2)).await);
    // Another client is served meanwhile.
    let mut other = connect_from(&app, "127.0.0.2").await;
    assert_eq!(health_on(&mut other).await, 200);
    // A trusted proxy carries many clients: four connections, all served.
    let mut proxy = Vec::new();
    for _ in 0..4 {
        let mut s = connect_from(&app, "127.0.0.3").await;
        assert_eq!(health_on(&mut s).await, 200, "a trusted proxy is exempt");
        proxy.push(s);
    }
    // A slot given back is a slot again, and the held ones still work.
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut again = connect_from(&app, "127.0.0.1").await;
    assert_eq!(health_on(&mut again).await, 200);
    assert_eq!(health_on(&mut held[0]).await, 200);
}

/// Sends `head` (a request whose body is not sent yet), reads the early answer, then
/// sends the body and a second request on the same connection: the second must be
/// answered unless the first said `Connection: close`.
async fn early_answer_then_reuse(app: &TestApp, head: String, body: &[u8]) -> Resp {
    let mut s = connect(app).await;
    s.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let first = read_response(&mut s, Duration::from_secs(3))
        .await
        .expect("answered before the body is sent");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the early answer waited for the body"
    );
    let sent = s.write_all(body).await.is_ok() && s.write_all(HEALTH).await.is_ok();
    if first.closes() {
        // Honest: the client was told not to reuse the connection.
        assert!(closed_within(&mut s, Duration::from_secs(3)).await);
    } else {
        assert!(sent, "writing the body and the next request failed");
        let second = read_response(&mut s, Duration::from_secs(3))
            .await
            .unwrap_or_else(|| {
                panic!(
                    "status {} without Connection: close, but the connection was not reusable",
                    first.status
                )
            });
        assert_eq!(second.status, 200);
    }
    first
}

fn post(path: &str, token: Option<&str>, content_type: &str, len: usize) -> String {
    request("POST", path, token, content_type, len)
}

fn request(
    method: &str,
    path: &str,
    token: Option<&str>,
    content_type: &str,
    len: usize,
) -> String {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    format!(
        "{method} {path} HTTP/1.1\r\nHost: t\r\n{auth}Content-Type: {content_type}\r\nContent-Length: {len}\r\n\r\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_rejections_keep_the_connection_usable() {
    let mut c = edge_config().await;
    c.rate_limits.profiles_update = 2;
    let app = TestApp::spawn_with(c).await;
    let id = UserId::random();
    let t = token(id, Role::User);
    // Write 1 of 2 in this window.
    app.create_profile(id, serde_json::json!({})).await;
    let body = br#"{"name": "early answer test"}"#;
    // 401: no token.
    let r = early_answer_then_reuse(
        &app,
        post("/api/profiles", None, "application/json", body.len()),
        body,
    )
    .await;
    assert_eq!(r.status, 401);
    assert!(!r.closes(), "a small body is drained, the connection kept");
    // 415: wrong content type, decided before the body is read (write 2 of 2).
    let r = early_answer_then_reuse(
        &app,
        post("/api/profiles", Some(&t), "text/plain", body.len()),
        body,
    )
    .await;
    assert_eq!(r.status, 415);
    assert!(!r.closes());
    // 429: the writes of the window are used up.
    let r = early_answer_then_reuse(
        &app,
        request(
            "PATCH",
            &format!("/api/profiles/{id}"),
            Some(&t),
            "application/json",
            body.len(),
        ),
        body,
    )
    .await;
    assert_eq!(r.status, 429);
    assert!(!r.closes());
    // 403 and 422 about the path id are decided before the body is read (the Subject
    // extractor runs before the body's): early too, and the connection stays usable.
    let stranger = token(UserId::random(), Role::User);
    let r = early_answer_then_reuse(
        &app,
        request(
            "PATCH",
            &format!("/api/profiles/{id}"),
            Some(&stranger),
            "application/json",
            body.len(),
        ),
        body,
    )
    .await;
    assert_eq!(r.status, 403);
    assert!(!r.closes());
    let r = early_answer_then_reuse(
        &app,
        request(
            "PATCH",
            "/api/profiles/not-a-uuid",
            Some(&stranger),
            "application/json",
            body.len(),
        ),
        body,
    )
    .await;
    assert_eq!(r.status, 422);
    assert!(!r.closes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_bodies_that_cannot_be_drained_get_connection_close() {
    let app = TestApp::spawn_with(edge_config().await).await;
    // Chunked: the length is unknown, so the connection is closed, and says so.
    let head = "POST /api/profiles HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".to_owned();
    let r = early_answer_then_reuse(&app, head, b"2\r\n{}\r\n0\r\n\r\n").await;
    assert_eq!(r.status, 401);
    assert!(r.closes(), "{}", r.head);
    // Expect: 100-continue: the client has not sent the body and will not; close.
    let head = "POST /api/profiles HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n".to_owned();
    let r = early_answer_then_reuse(&app, head, b"{}").await;
    assert_eq!(r.status, 401);
    assert!(r.closes(), "{}", r.head);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_huge_body_is_413_at_once() {
    let app = TestApp::spawn_with(edge_config().await).await;
    let t = token(UserId::random(), Role::User);
    for (path, auth) in [("/api/profiles", Some(t.as_str())), ("/api/profiles", None)] {
        let mut s = connect(&app).await;
        s.write_all(post(path, auth, "application/json", 100_000_000).as_bytes())
            .await
            .unwrap();
        let started = Instant::now();
        let r = read_response(&mut s, Duration::from_secs(3))
            .await
            .expect("answered without the body");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(r.status, 413, "{}", r.head);
        assert!(
            r.closes(),
            "the unread body makes the connection unusable: {}",
            r.head
        );
        let detail: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert!(detail["detail"].is_string());
        assert!(closed_within(&mut s, Duration::from_secs(2)).await);
    }
}

fn method_labels(metrics: &str) -> std::collections::BTreeSet<String> {
    metrics
        .lines()
        .filter(|l| l.starts_with("http_requests_total{"))
        .filter_map(|l| {
            let i = l.find("method=\"")? + 8;
            Some(l[i..i + l[i..].find('"')?].to_owned())
        })
        .collect()
}

fn series(metrics: &str) -> String {
    metrics
        .lines()
        .filter(|l| l.starts_with("http_requests_total{"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn series_count(metrics: &str) -> usize {
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("http_requests_total{")
                || l.starts_with("http_request_duration_seconds_count{")
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invented_methods_mint_no_metric_series() {
    let app = TestApp::spawn_with(edge_config().await).await;
    let paths = ["/health", "/api/profiles/me", "/nowhere"];
    let send = |method: String, path: &'static str| {
        let app_addr = addr(&app);
        async move {
            let mut s = TcpStream::connect(app_addr).await.unwrap();
            let req = format!("{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
            s.write_all(req.as_bytes()).await.unwrap();
            read_response(&mut s, Duration::from_secs(3))
                .await
                .map(|r| r.status)
        }
    };
    // One invented method first, so the "other" series exist.
    for p in paths {
        send("WARMUP".into(), p).await;
    }
    app.metrics().await; // the scrape's own series
    let before = app.metrics().await;
    for i in 0..100 {
        for p in paths {
            let status = send(format!("FLOOD{i}"), p).await;
            assert!(status.is_none_or(|s| s < 500), "{status:?}");
        }
    }
    for p in paths {
        send("M".repeat(4000), p).await;
    }
    let after = app.metrics().await;
    assert_eq!(
        series_count(&before),
        series_count(&after),
        "the flood added series:\nbefore:\n{}\nafter:\n{}",
        series(&before),
        series(&after)
    );
    let labels = method_labels(&after);
    assert!(labels.contains("other"), "{labels:?}");
    for l in &labels {
        assert!(
            [
                "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT",
                "other"
            ]
            .contains(&l.as_str()),
            "a client-made label: {l}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_series_are_zero_right_after_start() {
    let app = TestApp::spawn_with(edge_config().await).await;
    let m = app.metrics().await;
    for series in [
        "db_errors_total{kind=\"unavailable\"} 0",
        "db_errors_total{kind=\"other\"} 0",
        "redis_errors_total{kind=\"timeout\"} 0",
        "redis_errors_total{kind=\"io\"} 0",
        "ratelimit_store_errors_total 0",
        "ratelimit_fallback_total 0",
        "ratelimit_rejections_total{policy=\"per-address\"} 0",
        "http_connections_timed_out_total{phase=\"idle\"} 0",
    ] {
        assert!(
            m.lines().any(|l| l == series),
            "missing `{series}` in:\n{m}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn methods_a_route_lacks_count_against_the_address() {
    let mut c = edge_config().await;
    c.rate_limits.per_address = 3;
    let app = TestApp::spawn_with(c).await;
    let mut statuses = Vec::new();
    for method in ["OPTIONS", "TRACE", "BREW", "OPTIONS", "TRACE"] {
        let mut s = connect(&app).await;
        let req =
            format!("{method} /api/profiles/me HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        statuses.push(
            read_response(&mut s, Duration::from_secs(3))
                .await
                .unwrap()
                .status,
        );
    }
    assert_eq!(statuses, [405, 405, 405, 429, 429]);
    // Unprotected routes are not counted.
    let mut s = connect(&app).await;
    s.write_all(b"TRACE /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        read_response(&mut s, Duration::from_secs(3))
            .await
            .unwrap()
            .status,
        405
    );
}

/// A request with `X-Forwarded-For` and a bad token, so it counts against an address.
async fn bad_token_from(app: &TestApp, xff: &str) -> Resp {
    let mut s = connect(app).await;
    let req = format!(
        "GET /api/profiles/me HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer nope\r\nX-Forwarded-For: {xff}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    read_response(&mut s, Duration::from_secs(3)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_a_spoofed_first_entry_changes_nothing() {
    let mut c = edge_config().await;
    c.rate_limits.per_address = 2;
    // The test client (127.0.0.1) plays the proxy.
    c.rate_limits.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
    let app = TestApp::spawn_with(c).await;
    // The client 203.0.113.9 rotates the first entry; the proxy appends the real address.
    let mut statuses = Vec::new();
    for i in 0..4 {
        let r = bad_token_from(&app, &format!("198.51.100.{i}, 203.0.113.9")).await;
        statuses.push(r.status);
    }
    assert_eq!(
        statuses,
        [401, 401, 429, 429],
        "the spoofed entries escaped the limit"
    );
    // Another real client behind the same proxy is not affected.
    assert_eq!(bad_token_from(&app, "203.0.113.10").await.status, 401);
    // A chain through a second trusted hop still finds the client.
    assert_eq!(
        bad_token_from(&app, "203.0.113.9, 127.0.0.2").await.status,
        429
    );
}

/// [`bad_token_from`] with raw header bytes (which need not be ASCII).
async fn bad_token_from_bytes(app: &TestApp, xff: &[u8]) -> Resp {
    let mut s = connect(app).await;
    let mut req = b"GET /api/profiles/me HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer nope\r\nX-Forwarded-For: ".to_vec();
    req.extend_from_slice(xff);
    req.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
    s.write_all(&req).await.unwrap();
    read_response(&mut s, Duration::from_secs(3)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stray_byte_in_x_forwarded_for_spoils_only_its_entry_never_the_proxys_limit() {
    let mut c = edge_config().await;
    c.rate_limits.per_address = 2;
    c.rate_limits.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
    let app = TestApp::spawn_with(c).await;
    // Five clients behind the proxy, each sending one non-ASCII byte in front of its own
    // (proxy-appended) address: each is counted as itself, twice, within its limit of 2.
    for i in 0..5 {
        for _ in 0..2 {
            let mut raw = b"\xff".to_vec();
            raw.extend_from_slice(format!(", 198.51.100.6{i}").as_bytes());
            assert_eq!(
                bad_token_from_bytes(&app, &raw).await.status,
                401,
                "client {i}"
            );
        }
    }
    // Forwarded requests with nothing usable share one bucket of their own...
    let statuses = [
        bad_token_from_bytes(&app, b"\xff").await.status,
        bad_token_from_bytes(&app, b"not-an-address").await.status,
        bad_token_from_bytes(&app, b"\xfe\xff, ").await.status,
    ];
    assert_eq!(statuses, [401, 401, 429], "the malformed-forwarding bucket");
    // ...and the proxy's own requests (no X-Forwarded-For) are still within its limit.
    let mut s = connect(&app).await;
    s.write_all(b"GET /api/profiles/me HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer nope\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let r = read_response(&mut s, Duration::from_secs(3)).await.unwrap();
    assert_eq!(
        r.status, 401,
        "the proxy's own address was spent by its clients"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_peer_cannot_choose_its_address() {
    let mut c = edge_config().await;
    c.rate_limits.per_address = 2;
    c.rate_limits.trusted_proxies = vec!["10.0.0.0/8".parse().unwrap()];
    let app = TestApp::spawn_with(c).await;
    let mut statuses = Vec::new();
    for i in 0..3 {
        statuses.push(
            bad_token_from(&app, &format!("198.51.100.{i}"))
                .await
                .status,
        );
    }
    assert_eq!(
        statuses,
        [401, 401, 429],
        "X-Forwarded-For from an untrusted peer was believed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_the_request_in_flight_and_closes_idle_ones() {
    let app = TestApp::spawn_with(edge_config().await).await;
    let mut idle = connect(&app).await;
    idle.write_all(HEALTH).await.unwrap();
    assert_eq!(
        read_response(&mut idle, Duration::from_secs(2))
            .await
            .unwrap()
            .status,
        200
    );
    // A request whose body is still coming when shutdown starts.
    let t = token(UserId::random(), Role::User);
    let body = br#"{"name": "in flight"}"#;
    let mut busy = connect(&app).await;
    busy.write_all(post("/api/profiles", Some(&t), "application/json", body.len()).as_bytes())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    app.shutdown();
    tokio::time::sleep(Duration::from_millis(200)).await;
    busy.write_all(body).await.unwrap();
    let r = read_response(&mut busy, Duration::from_secs(3))
        .await
        .unwrap();
    assert_eq!(r.status, 201);
    assert!(closed_within(&mut idle, Duration::from_millis(500)).await);
    assert!(closed_within(&mut busy, Duration::from_secs(2)).await);
    // And nothing new is accepted.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(TcpStream::connect(addr(&app)).await.is_err());
}

/// Issue 17: under `ulimit -n 64` the release binary logged "accept failed: Too many open
/// files" 20 times a second, and never compared the limit with `max_connections` (10,000
/// by default). Now it raises the soft limit to the hard one, lowers its connection cap to
/// fit what is left (saying so), and a crowd of connections neither floods the log nor
/// stops it from serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_ulimit_n_64_the_cap_fits_the_limit_and_the_log_is_not_flooded() {
    let dir = std::env::temp_dir().join(format!("user-api-nofile-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("stderr.log");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg("ulimit -n 64 && exec \"$0\" serve")
        .arg(env!("CARGO_BIN_EXE_user-api"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env(
            "DATABASE_URL",
            format!("sqlite://{}", dir.join("db.sqlite").display()),
        )
        .env("JWT_PUBLIC_KEY_FILE", &crate::helpers::keys().public_file)
        .env("USER_API_ADDR", format!("127.0.0.1:{port}"))
        .env("PREWARM", "0")
        .env("USER_API__DATABASE__MAX_CONNECTIONS", "2")
        .env("USER_API__SERVER__HEADER_READ_TIMEOUT_MS", "1000")
        .env("USER_API__SERVER__MAX_CONNECTIONS_PER_ADDRESS", "0")
        .env("USER_API__SERVER__LOG_FORMAT", "json")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start user-api under ulimit -n 64");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let health = || async move {
        let mut s = TcpStream::connect(addr).await.ok()?;
        s.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        read_response(&mut s, Duration::from_secs(2))
            .await
            .map(|r| r.status)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while health().await != Some(200) {
        assert!(Instant::now() < deadline, "the service did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    let start = logs();
    assert!(
        start.contains("file-descriptor limit is below")
            && start.contains("\"limit\":64")
            && start.contains("\"serving_at_most\":"),
        "no warning about the descriptor limit at start:\n{start}"
    );
    // A crowd of 150 connections, each holding half a head until the header timeout.
    let mut crowd = Vec::new();
    for _ in 0..150 {
        if let Ok(mut s) = TcpStream::connect(addr).await {
            let _ = s.write_all(b"GET /health HTTP/1.1\r\n").await;
            crowd.push(s);
        }
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = logs();
    let accept_lines = during.matches("accept failed").count();
    assert!(
        accept_lines <= 1,
        "{accept_lines} accept-failure lines in 3 s:\n{during}"
    );
    drop(crowd);
    let deadline = Instant::now() + Duration::from_secs(10);
    while health().await != Some(200) {
        assert!(
            Instant::now() < deadline,
            "not serving after the crowd left:\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
