//! Events (SPEC 7) over real Redis (test-owned nodes and a test-owned Cluster) and real
//! PostgreSQL/SQLite: events out with their exact payloads, none for a refused write,
//! delivery after Redis was down at commit time, one publish per write with two instances;
//! events in on every channel, idempotent across instances, malformed messages counted and
//! not fatal, and the subscriber coming back after its Redis restarts.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use reqwest::Method;
use rstest::rstest;
use serde_json::{Value, json};
use user_api::domain::UserId;

use crate::helpers::redis::{RedisServer, StoreKind, Target, connect, raw};
use crate::helpers::{Backend, Role, TestApp, eventually, token};

/// Long enough for a few drain passes (1 s apart): what would go out late has gone out.
const SETTLE: Duration = Duration::from_millis(2500);
/// Longest wait for something the service does by itself.
const PATIENCE: Duration = Duration::from_secs(20);

/// A test's own subscriber to `profile:*`, recording every message it receives.
struct Listener {
    seen: Arc<Mutex<Vec<(String, Value)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Listener {
    /// Subscribed (the subscription confirmed) when this returns.
    async fn start(url: &str) -> Self {
        let client = ::redis::Client::open(url).expect("url");
        let mut pubsub = client.get_async_pubsub().await.expect("pubsub connection");
        pubsub.psubscribe("profile:*").await.expect("psubscribe");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let task = tokio::spawn(async move {
            let mut stream = pubsub.into_on_message();
            while let Some(m) = stream.next().await {
                let payload: Value =
                    serde_json::from_slice(m.get_payload_bytes()).expect("payload is JSON");
                sink.lock()
                    .unwrap()
                    .push((m.get_channel_name().to_owned(), payload));
            }
        });
        Self { seen, task }
    }

    /// The messages about `id`, in the order received.
    fn of(&self, id: UserId) -> Vec<(String, Value)> {
        let id = id.to_string();
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, v)| v["user_id"] == json!(id))
            .cloned()
            .collect()
    }

    /// Waits until `n` messages about `id` have arrived, lets late duplicates arrive too,
    /// and returns them all.
    async fn settled(&self, id: UserId, n: usize) -> Vec<(String, Value)> {
        eventually(PATIENCE, "events about the user", || async {
            self.of(id).len() >= n
        })
        .await;
        tokio::time::sleep(SETTLE).await;
        self.of(id)
    }
}

/// `PUBLISH channel payload` on the node at `url` (on a cluster, any node broadcasts).
async fn publish(url: &str, channel: &str, payload: &str) {
    let mut c = connect(url).await;
    let _: i64 = ::redis::cmd("PUBLISH")
        .arg(channel)
        .arg(payload)
        .query_async(&mut c)
        .await
        .expect("publish");
}

/// How many clients hold pattern subscriptions on the nodes of `target` together.
async fn subscribers(target: &Target) -> usize {
    let mut total = 0;
    for url in target.node_urls() {
        let mut c = connect(&url).await;
        let list: String = ::redis::cmd("CLIENT")
            .arg("LIST")
            .query_async(&mut c)
            .await
            .unwrap_or_default();
        total += list
            .lines()
            .filter(|l| l.contains(" psub=") && !l.contains(" psub=0"))
            .count();
    }
    total
}

/// Waits until `n` clients hold pattern subscriptions (the services' subscribers are
/// connected; call it before a test's own [`Listener`]).
async fn wait_for_subscribers(target: &Target, n: usize) {
    eventually(PATIENCE, "the services' subscribers", || async {
        subscribers(target).await >= n
    })
    .await;
}

/// Sum of the Prometheus series `name` whose labels include `labels`.
async fn counter(app: &TestApp, name: &str, labels: &[(&str, &str)]) -> u64 {
    app.metrics()
        .await
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn email() -> String {
    format!("u{}@example.com", uuid::Uuid::new_v4().simple())
}

fn time_of(v: &Value) -> chrono::DateTime<chrono::Utc> {
    v.as_str()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&chrono::Utc))
        .unwrap_or_else(|| panic!("not an RFC 3339 time: {v}"))
}

/// The outbox rows of `id` that still carry an event.
async fn pending_events(app: &TestApp, id: UserId) -> Vec<String> {
    app.state
        .profiles
        .repo()
        .pending_invalidations(10_000)
        .await
        .expect("outbox")
        .into_iter()
        .filter(|r| r.user_id == id)
        .filter_map(|r| r.event)
        .collect()
}

#[rstest]
#[case::postgres(Backend::Postgres)]
#[case::sqlite(Backend::Sqlite)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_out_have_their_exact_payloads_and_none_for_a_refused_write(
    #[case] backend: Backend,
) {
    let target = Target::new(StoreKind::Own).await;
    let app = TestApp::builder()
        .with_backend(backend)
        .with_store(&target)
        .spawn()
        .await;
    let listener = Listener::start(&target.node_urls()[0]).await;
    let (id, other) = (UserId::random(), UserId::random());
    let taken = email();
    app.create_profile(other, json!({"email": taken})).await;
    let owner = token(id, Role::User);
    let path = format!("/api/profiles/{id}");

    let created = app
        .create_profile_as(&owner, &json!({"name": "山田太郎", "email": email()}))
        .await;
    let res = app
        .send_json(
            Method::PATCH,
            &path,
            &owner,
            &json!({"address": "東京都", "phone": null}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let updated = res.json::<Value>().await.unwrap()["profile"].clone();

    // Refused writes: a taken e-mail (409), an invalid one (422), an existing id (409).
    let refused = [
        (Method::PATCH, path.clone(), json!({"email": taken}), 409),
        (Method::PATCH, path.clone(), json!({"email": "nope"}), 422),
        (
            Method::POST,
            "/api/profiles".to_owned(),
            json!({"name": "again"}),
            409,
        ),
    ];
    for (method, p, body, status) in refused {
        let res = app.send_json(method, &p, &owner, &body).await;
        assert_eq!(res.status(), status, "{p} {body}");
    }
    // Settings are not profile fields: no profile:updated (docs/events.md).
    let res = app
        .send_json(
            Method::PUT,
            &format!("{path}/settings"),
            &owner,
            &json!({"theme": "dark"}),
        )
        .await;
    assert_eq!(res.status(), 200);

    assert_eq!(app.delete(&path, &owner).await.status(), 204);
    assert_eq!(app.delete(&path, &owner).await.status(), 404);

    let events = listener.settled(id, 3).await;
    let at = |i: usize| events[i].1["timestamp"].clone();
    assert_eq!(
        events,
        vec![
            (
                "profile:updated".to_owned(),
                json!({"user_id": id.to_string(), "updated_fields": ["name", "email"], "timestamp": at(0)})
            ),
            (
                "profile:updated".to_owned(),
                json!({"user_id": id.to_string(), "updated_fields": ["phone", "address"], "timestamp": at(1)})
            ),
            (
                "profile:deleted".to_owned(),
                json!({"user_id": id.to_string(), "timestamp": at(2)})
            ),
        ]
    );
    // The timestamp is the write's own time.
    assert_eq!(time_of(&at(0)), time_of(&created["updated_at"]));
    assert_eq!(time_of(&at(1)), time_of(&updated["updated_at"]));
    assert!(time_of(&at(2)) >= time_of(&at(1)));
    assert!(pending_events(&app, id).await.is_empty());
}

/// A TCP gate in front of a Redis node: while closed it drops every connection, so the
/// service cannot reach a restarted Redis before the test has subscribed to it.
struct Gate {
    port: u16,
    open: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Gate {
    async fn start(upstream_port: u16) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = Arc::new(AtomicBool::new(true));
        let is_open = open.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !is_open.load(Ordering::SeqCst) {
                    continue;
                }
                tokio::spawn(async move {
                    if let Ok(mut up) =
                        tokio::net::TcpStream::connect(("127.0.0.1", upstream_port)).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut up).await;
                    }
                });
            }
        });
        Self { port, open, task }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_committed_while_redis_was_down_is_published_when_it_returns() {
    let mut server = RedisServer::start().await;
    let gate = Gate::start(server.port).await;
    let app = TestApp::builder()
        .with_backend(Backend::Postgres)
        .with_proxy(gate.url())
        .with(|c| {
            c.redis.timeout_ms = 50;
            c.redis.breaker_cooldown_ms = 300;
        })
        .spawn()
        .await;
    let id = UserId::random();
    app.create_profile(id, json!({"name": "before"})).await;
    eventually(PATIENCE, "the create's row retired", || async {
        pending_events(&app, id).await.is_empty()
    })
    .await;

    server.kill();
    let res = app
        .send_json(
            Method::PATCH,
            &format!("/api/profiles/{id}"),
            &token(id, Role::User),
            &json!({"name": "during"}),
        )
        .await;
    assert_eq!(
        res.status(),
        200,
        "the write is acknowledged while Redis is down"
    );
    // Committed with the write, not published: still in the outbox.
    assert_eq!(pending_events(&app, id).await, ["profile:updated"]);

    gate.open.store(false, Ordering::SeqCst);
    server.restart().await;
    let listener = Listener::start(&server.url()).await;
    gate.open.store(true, Ordering::SeqCst);

    let events = listener.settled(id, 1).await;
    assert_eq!(events.len(), 1, "published once: {events:?}");
    assert_eq!(events[0].0, "profile:updated");
    assert_eq!(events[0].1["updated_fields"], json!(["name"]));
    eventually(PATIENCE, "the outbox row retired", || async {
        pending_events(&app, id).await.is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_publish_each_write_once() {
    let target = Target::new(StoreKind::Own).await;
    let config = TestApp::builder()
        .with_backend(Backend::Postgres)
        .with_store(&target)
        // Short, so the wait below also covers the other instance's hand-off time.
        .with(|c| c.events.handoff_secs = 3)
        .config()
        .await;
    let apps = [
        TestApp::spawn_with(config.clone()).await,
        TestApp::spawn_with(config).await,
    ];
    let listener = Listener::start(&target.node_urls()[0]).await;
    let users: Vec<UserId> = (0..6).map(|_| UserId::random()).collect();
    for (i, id) in users.iter().enumerate() {
        let (a, b) = (&apps[i % 2], &apps[(i + 1) % 2]);
        let owner = token(*id, Role::User);
        let path = format!("/api/profiles/{id}");
        a.create_profile_as(&owner, &json!({"first_name": "a"}))
            .await;
        let res = b
            .send_json(Method::PUT, &path, &owner, &json!({"last_name": "b"}))
            .await;
        assert_eq!(res.status(), 200);
        assert_eq!(a.delete(&path, &owner).await.status(), 204);
    }
    eventually(PATIENCE, "every event", || async {
        users.iter().all(|id| listener.of(*id).len() >= 3)
    })
    .await;
    // Past the hand-off time and several drain passes of both instances.
    tokio::time::sleep(Duration::from_secs(5)).await;
    for id in &users {
        let got: Vec<(String, Value)> = listener
            .of(*id)
            .into_iter()
            .map(|(c, v)| (c, v.get("updated_fields").cloned().unwrap_or(Value::Null)))
            .collect();
        assert_eq!(
            got,
            vec![
                ("profile:updated".to_owned(), json!(["first_name"])),
                ("profile:updated".to_owned(), json!(["last_name"])),
                ("profile:deleted".to_owned(), Value::Null),
            ],
            "user {id}"
        );
        assert!(pending_events(&apps[0], *id).await.is_empty());
    }
}

#[rstest]
#[case::node(StoreKind::Own)]
#[case::cluster(StoreKind::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn user_created_makes_the_profile_once_across_instances(#[case] kind: StoreKind) {
    let target = Target::new(kind).await;
    let config = TestApp::builder()
        .with_backend(Backend::Postgres)
        .with_store(&target)
        .config()
        .await;
    let apps = [
        TestApp::spawn_with(config.clone()).await,
        TestApp::spawn_with(config).await,
    ];
    wait_for_subscribers(&target, 2).await;
    let url = target.node_urls()[1 % target.node_urls().len()].clone();
    let listener = Listener::start(&url).await;

    let (id, holder, bad) = (UserId::random(), UserId::random(), UserId::random());
    let address = email();
    let created = |id: UserId, email: &str| {
        json!({"user_id": id.to_string(), "username": "taro", "email": email,
               "timestamp": "2026-12-01T10:00:00Z"})
        .to_string()
    };
    publish(&url, "user:created", &created(id, &address)).await;
    eventually(PATIENCE, "the profile", || async {
        apps[0].read_profile(id).await.0 == 200
    })
    .await;
    // Again: nothing changes, nothing fails.
    publish(&url, "user:created", &created(id, &address)).await;
    let events = listener.settled(id, 1).await;
    assert_eq!(
        events,
        vec![(
            "profile:updated".to_owned(),
            json!({"user_id": id.to_string(), "updated_fields": ["email"],
                   "timestamp": events[0].1["timestamp"]})
        )],
        "one create, one event, for two instances and two messages"
    );
    let (_, body) = apps[1].read_profile(id).await;
    assert_eq!(body["profile"]["email"], json!(address));
    assert_eq!(body["profile"]["name"], Value::Null, "the empty profile");

    // An e-mail another profile holds, and an invalid one: the profile without it.
    publish(&url, "user:created", &created(holder, &address)).await;
    publish(&url, "user:created", &created(bad, "not an address")).await;
    for who in [holder, bad] {
        eventually(PATIENCE, "the profile without e-mail", || async {
            let (status, body) = apps[0].read_profile(who).await;
            status == 200 && body["profile"]["email"].is_null()
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn user_updated_syncs_the_email_once_and_invalidates() {
    let target = Target::new(StoreKind::Own).await;
    let config = TestApp::builder()
        .with_backend(Backend::Postgres)
        .with_store(&target)
        .config()
        .await;
    let apps = [
        TestApp::spawn_with(config.clone()).await,
        TestApp::spawn_with(config).await,
    ];
    wait_for_subscribers(&target, 2).await;
    let url = target.node_urls()[0].clone();
    let (id, other) = (UserId::random(), UserId::random());
    let taken = email();
    apps[0].create_profile(other, json!({"email": taken})).await;
    apps[0].create_profile(id, json!({"email": email()})).await;
    let listener = Listener::start(&url).await;
    let key = format!("cache:profile:{id}");

    // Cached, then the auth service changes the address.
    apps[0].read_profile(id).await;
    assert!(raw(&apps[0], &key).await.is_some());
    let new = email();
    let msg = json!({"user_id": id.to_string(), "updated_fields": ["email"], "email": new});
    publish(&url, "user:updated", &msg.to_string()).await;
    eventually(PATIENCE, "the new address", || async {
        let (_, body) = apps[1].read_profile(id).await;
        body["profile"]["email"] == json!(new)
    })
    .await;
    let events = listener.settled(id, 1).await;
    assert_eq!(events.len(), 1, "one change for two instances: {events:?}");
    assert_eq!(events[0].1["updated_fields"], json!(["email"]));

    // An address another profile holds: counted, not stored; the caches still go.
    let before = counter(
        &apps[0],
        "events_in_notes_total",
        &[("channel", "user:updated"), ("what", "email_taken")],
    )
    .await;
    apps[0].read_profile(id).await;
    assert!(raw(&apps[0], &key).await.is_some());
    let msg = json!({"user_id": id.to_string(), "updated_fields": ["email"], "email": taken});
    publish(&url, "user:updated", &msg.to_string()).await;
    eventually(PATIENCE, "the conflict counted", || async {
        counter(
            &apps[0],
            "events_in_notes_total",
            &[("channel", "user:updated"), ("what", "email_taken")],
        )
        .await
            > before
    })
    .await;
    eventually(PATIENCE, "the entry invalidated", || async {
        raw(&apps[0], &key).await.is_none()
    })
    .await;
    let (_, body) = apps[0].read_profile(id).await;
    assert_eq!(body["profile"]["email"], json!(new));
    assert_eq!(listener.of(id).len(), 1, "no event for a refused change");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_deactivated_invalidates_every_entry_of_the_user() {
    let target = Target::new(StoreKind::Own).await;
    let app = TestApp::builder()
        .with_backend(Backend::Postgres)
        .with_store(&target)
        .spawn()
        .await;
    wait_for_subscribers(&target, 1).await;
    let id = UserId::random();
    app.create_profile(id, json!({"name": "n"})).await;
    let owner = token(id, Role::User);
    let base = format!("/api/profiles/{id}");
    let res = app
        .send_json(
            Method::PUT,
            &format!("{base}/settings"),
            &owner,
            &json!({"a": 1}),
        )
        .await;
    assert_eq!(res.status(), 200);
    for path in [
        base.clone(),
        format!("{base}/settings"),
        format!("{base}/preferences"),
    ] {
        assert_eq!(app.get(&path, &owner).await.status(), 200);
    }
    let keys: Vec<String> = ["profile", "settings", "preferences"]
        .iter()
        .map(|k| format!("cache:{k}:{id}"))
        .collect();
    for key in &keys {
        assert!(raw(&app, key).await.is_some(), "{key} cached");
    }
    let msg = json!({"user_id": id.to_string()}).to_string();
    publish(&target.node_urls()[0], "user:deactivated", &msg).await;
    eventually(PATIENCE, "every entry gone", || async {
        for key in &keys {
            if raw(&app, key).await.is_some() {
                return false;
            }
        }
        true
    })
    .await;
}

#[rstest]
#[case::postgres(Backend::Postgres)]
#[case::sqlite(Backend::Sqlite)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_are_counted_and_not_fatal(#[case] backend: Backend) {
    let target = Target::new(StoreKind::Own).await;
    let app = TestApp::builder()
        .with_backend(backend)
        .with_store(&target)
        .spawn()
        .await;
    wait_for_subscribers(&target, 1).await;
    let url = target.node_urls()[0].clone();
    let cases = [
        (
            "user:created",
            "{not json",
            "user:created",
            "malformed_json",
        ),
        (
            "user:updated",
            r#"{"username": "x"}"#,
            "user:updated",
            "missing_user_id",
        ),
        (
            "user:deactivated",
            r#"{"user_id": "nope"}"#,
            "user:deactivated",
            "invalid_user_id",
        ),
        ("user:created", "[1, 2]", "user:created", "not_an_object"),
        (
            "user:renamed",
            r#"{"user_id": "x"}"#,
            "other",
            "unknown_channel",
        ),
    ];
    let mut before = Vec::new();
    for (_, _, channel, reason) in &cases {
        let labels = [("channel", *channel), ("reason", *reason)];
        before.push(counter(&app, "events_in_rejected_total", &labels).await);
    }
    for (channel, payload, _, _) in &cases {
        publish(&url, channel, payload).await;
    }
    // Still subscribed and acting: a good message after the bad ones.
    let id = UserId::random();
    let good = json!({"user_id": id.to_string(), "username": "u", "email": email(),
                      "timestamp": "2026-12-01T10:00:00Z"});
    publish(&url, "user:created", &good.to_string()).await;
    eventually(PATIENCE, "the good message applied", || async {
        app.read_profile(id).await.0 == 200
    })
    .await;
    for ((_, _, channel, reason), before) in cases.iter().zip(before) {
        let labels = [("channel", *channel), ("reason", *reason)];
        assert_eq!(
            counter(&app, "events_in_rejected_total", &labels).await,
            before + 1,
            "{channel} {reason}"
        );
    }
}

#[rstest]
#[case::node(StoreKind::Own)]
#[case::cluster(StoreKind::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_subscriber_comes_back_after_its_redis_restarts(#[case] kind: StoreKind) {
    let mut target = Target::new(kind).await;
    let app = TestApp::builder()
        .with_backend(Backend::Postgres)
        .with_store(&target)
        .spawn()
        .await;
    wait_for_subscribers(&target, 1).await;
    let reconnects_before = counter(&app, "events_in_reconnects_total", &[]).await;
    // The subscriber's first seed (node 0) goes away and comes back.
    let url = target.node_urls()[0].clone();
    {
        let node = match kind {
            StoreKind::Cluster => target.cluster_mut().node_mut(0),
            _ => target.server(),
        };
        node.kill();
        tokio::time::sleep(Duration::from_millis(500)).await;
        node.restart().await;
    }
    let id = UserId::random();
    let msg = json!({"user_id": id.to_string(), "username": "u", "email": email(),
                     "timestamp": "2026-12-01T10:00:00Z"})
    .to_string();
    // Published until heard: what is published while it is away is lost (pub/sub keeps nothing).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        publish(&url, "user:created", &msg).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        if app.read_profile(id).await.0 == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the subscriber never came back"
        );
    }
    assert!(counter(&app, "events_in_reconnects_total", &[]).await > reconnects_before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_event_rows_retire_unpublished() {
    let app = TestApp::builder()
        .with_backend(Backend::Postgres)
        .with_store(&Target::Memory)
        .spawn()
        .await;
    let id = UserId::random();
    let owner = token(id, Role::User);
    let path = format!("/api/profiles/{id}");
    app.create_profile(id, json!({"name": "n"})).await;
    let res = app
        .send_json(Method::PATCH, &path, &owner, &json!({"name": "m"}))
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(app.delete(&path, &owner).await.status(), 204);
    // Nothing to publish to: the rows go with the applied invalidations, none piles up.
    eventually(PATIENCE, "the outbox empty", || async {
        app.state
            .profiles
            .repo()
            .pending_invalidations(100)
            .await
            .expect("outbox")
            .is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_the_subscriber() {
    let target = Target::new(StoreKind::Own).await;
    let app = TestApp::builder()
        .with_backend(Backend::Sqlite)
        .with_store(&target)
        .spawn()
        .await;
    wait_for_subscribers(&target, 1).await;
    app.shutdown();
    eventually(PATIENCE, "the subscription closed", || async {
        subscribers(&target).await == 0
    })
    .await;
}
