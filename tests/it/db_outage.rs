//! A database that goes away answers 503 with a JSON error quickly, never hangs, and the
//! service recovers by itself. PostgreSQL is reached through a TCP relay the test can cut.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::helpers::{Backend, Role, TestApp, json_of, token};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use user_api::domain::UserId;

/// A TCP relay to PostgreSQL that can be cut and restored on the same port, or stalled
/// (connections stay open but nothing is forwarded: a database that hangs).
struct Relay {
    addr: SocketAddr,
    upstream: String,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
    stalled: Arc<AtomicBool>,
}

/// Forwards one direction, holding data back while `stalled` is set.
async fn forward(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    stalled: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while stalled.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl Relay {
    async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let relay = Self {
            addr: listener.local_addr().unwrap(),
            upstream,
            tasks: Arc::default(),
            stalled: Arc::default(),
        };
        relay.serve(listener);
        relay
    }

    fn serve(&self, listener: TcpListener) {
        let (upstream, tasks) = (self.upstream.clone(), self.tasks.clone());
        let (inner, stalled) = (tasks.clone(), self.stalled.clone());
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (upstream, stalled) = (upstream.clone(), stalled.clone());
                let conn = tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(&upstream).await {
                        let (cr, cw) = client.into_split();
                        let (sr, sw) = server.into_split();
                        tokio::join!(forward(cr, sw, stalled.clone()), forward(sr, cw, stalled));
                    }
                });
                inner.lock().unwrap().push(conn);
            }
        });
        tasks.lock().unwrap().push(accept);
    }

    /// Drops the listener and every relayed connection.
    fn cut(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }

    async fn restore(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => return self.serve(l),
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(e) => panic!("cannot rebind relay: {e}"),
            }
        }
    }
}

/// An app on a fresh PostgreSQL database reached through a relay, with `tune` applied.
async fn app_via_relay(tune: impl FnOnce(&mut user_api::config::Config)) -> (Relay, TestApp) {
    let mut cfg = TestApp::builder()
        .with_backend(Backend::Postgres)
        .config()
        .await;
    let url = url::Url::parse(&cfg.database_url).unwrap();
    let relay = Relay::start(format!(
        "{}:{}",
        url.host_str().unwrap(),
        url.port().unwrap_or(5432)
    ))
    .await;
    let mut via = url.clone();
    via.set_port(Some(relay.addr.port())).unwrap();
    cfg.database_url = via.to_string();
    tune(&mut cfg);
    (relay, TestApp::spawn_with(cfg).await)
}

/// Retries `attempt` until it answers 200, for at most 10 s.
async fn until_ok<F, Fut>(mut attempt: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = reqwest::Response>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let res = attempt().await;
        if res.status() == 200 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "did not recover: {}",
            res.status()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_is_503_and_recovers() {
    let (relay, app) = app_via_relay(|cfg| {
        cfg.database.acquire_timeout_ms = 1000;
        cfg.database.statement_timeout_ms = 1000;
    })
    .await;

    let id = UserId::random();
    let t = token(id, Role::User);
    app.create_profile(id, json!({"name": "before"})).await;
    let path = format!("/api/profiles/{id}");

    relay.cut();
    for _ in 0..3 {
        let started = Instant::now();
        let (s, body) = json_of(
            app.send_json(reqwest::Method::PUT, &path, &t, &json!({"name": "during"}))
                .await,
        )
        .await;
        assert_eq!(s, 503, "{body}");
        assert!(
            body["detail"].as_str().unwrap().contains("Database"),
            "{body}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "took {:?}",
            started.elapsed()
        );
    }
    let (s, body) = json_of(app.get_anonymous("/ready").await).await;
    assert_eq!((s, body["database"].as_str()), (503, Some("down")));
    let (s, _) = json_of(app.get_anonymous("/health").await).await;
    assert_eq!(s, 200, "liveness does not depend on the database");
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("db_errors_total{kind=\"unavailable\"}"),
        "database failures are counted: {metrics}"
    );

    relay.restore().await;
    let after = json!({"name": "after"});
    until_ok(|| app.send_json(reqwest::Method::PUT, &path, &t, &after)).await;
    let (_, body) = json_of(app.get(&path, &t).await).await;
    assert_eq!(body["profile"]["name"], "after");
    let (s, _) = json_of(app.get_anonymous("/ready").await).await;
    assert_eq!(s, 200);
}

/// A database that hangs (connections open, no answers) cannot hold a request past
/// `server.request_timeout_ms`: the client gets a JSON 503, and the service recovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_database_is_bounded_by_the_request_timeout() {
    let (relay, app) = app_via_relay(|cfg| {
        // Database timeouts far longer than the request's own bound.
        cfg.database.acquire_timeout_ms = 20_000;
        cfg.database.statement_timeout_ms = 20_000;
        cfg.server.request_timeout_ms = 700;
    })
    .await;
    let id = UserId::random();
    let t = token(id, Role::User);
    app.create_profile(id, json!({"name": "x"})).await;
    let path = format!("/api/profiles/{id}");

    relay.stalled.store(true, Ordering::SeqCst);
    let started = Instant::now();
    let (s, body) = json_of(
        app.send_json(reqwest::Method::PUT, &path, &t, &json!({"name": "y"}))
            .await,
    )
    .await;
    assert_eq!(s, 503, "{body}");
    assert!(body["detail"].is_string());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );

    relay.stalled.store(false, Ordering::SeqCst);
    until_ok(|| app.get(&path, &t)).await;
}

/// `/healthz` (SPEC 7) reports a failed `SELECT 1` as 503 "unhealthy", and the 503s the
/// outage causes are counted in `http_exceptions_total`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_is_unhealthy_while_the_database_is_down() {
    let (relay, app) = app_via_relay(|cfg| {
        cfg.database.acquire_timeout_ms = 1000;
        cfg.database.statement_timeout_ms = 1000;
    })
    .await;
    let (s, body) = json_of(app.get_anonymous("/healthz").await).await;
    assert_eq!(
        (s, body),
        (
            200,
            json!({"status": "healthy", "database": "ok", "redis": "embedded"})
        )
    );
    let id = UserId::random();
    let t = token(id, Role::User);
    let exceptions = r#"http_exceptions_total{kind="server_error"} "#;
    let before = app.prom_counter(exceptions).await;

    relay.cut();
    let (s, body) = json_of(app.get_anonymous("/healthz").await).await;
    assert_eq!(
        (s, body),
        (
            503,
            json!({"status": "unhealthy", "database": "error", "redis": "embedded"})
        )
    );
    let (s, _) = json_of(app.get(&format!("/api/profiles/{id}"), &t).await).await;
    assert_eq!(s, 503);
    assert_eq!(
        app.prom_counter(exceptions).await - before,
        2,
        "the two 503s are exceptions"
    );
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(r#"route="/healthz",status="503""#),
        "the status label: {metrics}"
    );

    relay.restore().await;
    until_ok(|| app.get_anonymous("/healthz")).await;
}
