//! The Redis connection layer on test-owned servers: lazy connection, URLs with password
//! and database, the per-call timeout, the circuit breaker, scripts by SHA with NOSCRIPT
//! repaired (also inside pipelines), and the same on a cluster.

use std::time::{Duration, Instant};

use crate::helpers::eventually;
use crate::helpers::redis::{RedisCluster, RedisServer};
use redis::cluster_routing::Slot;
use redis::{Script, cmd, pipe};
use user_api::config::Config;
use user_api::redis::{RedisClient, StoreError};

fn config(url: &str) -> Config {
    let mut c = Config {
        redis_url: Some(url.to_owned()),
        ..Config::default()
    };
    c.redis.timeout_ms = 200;
    c.redis.breaker_failures = 3;
    c.redis.breaker_cooldown_ms = 300;
    c
}

fn client(c: &Config) -> RedisClient {
    RedisClient::from_config(c)
        .expect("valid")
        .expect("configured")
}

const ADD: &str = "return tonumber(ARGV[1]) + tonumber(redis.call('INCRBY', KEYS[1], 0))";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn none_without_redis_and_invalid_urls_refused() {
    assert!(
        RedisClient::from_config(&Config::default())
            .unwrap()
            .is_none()
    );
    let c = Config {
        redis_url: Some("redis://127.0.0.1:notaport".into()),
        ..Config::default()
    };
    assert!(RedisClient::from_config(&c).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_lazily_and_recovers_through_the_breaker() {
    // Installs the process' metrics recorder before anything is counted.
    let metrics = user_api::telemetry::metrics_handle();
    let mut server = RedisServer::start().await;
    server.kill();
    // Nothing listens: creating the client does not connect (or fail).
    let redis = client(&config(&server.url()));
    assert!(!redis.is_connected());
    // Three calls that really try (and fail: nothing listens), each within its timeout.
    let mut tried = 0;
    for _ in 0..3 {
        assert!(
            redis.is_available(),
            "the breaker opened after {tried} failures"
        );
        let start = Instant::now();
        let r = redis.query::<Option<String>>(cmd("GET").arg("k")).await;
        assert!(r.is_err());
        assert!(!matches!(r, Err(StoreError::CircuitOpen)), "{r:?}");
        assert!(start.elapsed() < Duration::from_millis(400));
        tried += 1;
    }
    assert!(
        !redis.is_available(),
        "the breaker opened after {tried} failures"
    );
    // An open breaker fails at once: Redis is not tried, so nothing is waited for (the
    // error says so; its speed is a property of the machine, not something to assert).
    let r = redis.query::<Option<String>>(cmd("GET").arg("k")).await;
    assert!(matches!(r, Err(StoreError::CircuitOpen)), "{r:?}");
    let text = metrics.render();
    assert!(
        text.contains("redis_errors_total{kind=\"circuit_open\"}"),
        "{text}"
    );
    assert!(text.contains("redis_breaker_open"), "{text}");

    server.restart().await;
    eventually(
        Duration::from_secs(5),
        "breaker closes once redis answers",
        || async {
            redis
                .query::<()>(cmd("SET").arg("k").arg("v"))
                .await
                .is_ok()
        },
    )
    .await;
    assert!(redis.is_available() && !redis.breaker_open());
    let v: Option<String> = redis.query(cmd("GET").arg("k")).await.unwrap();
    assert_eq!(v.as_deref(), Some("v"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_and_database_index() {
    let server = RedisServer::start_args(&["--requirepass", "s3cret"]).await;
    let url = format!("redis://:s3cret@127.0.0.1:{}/3", server.port);
    let redis = client(&config(&url));
    redis
        .query::<()>(cmd("SET").arg("in-db-3").arg("yes"))
        .await
        .unwrap();
    let out = server.cli(&[
        "-a",
        "s3cret",
        "--no-auth-warning",
        "-n",
        "3",
        "GET",
        "in-db-3",
    ]);
    assert_eq!(out.trim(), "yes");
    let out = server.cli(&[
        "-a",
        "s3cret",
        "--no-auth-warning",
        "-n",
        "0",
        "EXISTS",
        "in-db-3",
    ]);
    assert_eq!(out.trim(), "0");
    // A wrong password is an error, not a hang.
    let bad = client(&config(&format!(
        "redis://:wrong@127.0.0.1:{}/3",
        server.port
    )));
    assert!(bad.query::<()>(&cmd("PING")).await.is_err());
    assert!(
        !format!("{redis:?}").contains("s3cret"),
        "no secret in Debug output"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_bounds_every_call() {
    let server = RedisServer::start().await;
    let mut c = config(&server.url());
    c.redis.timeout_ms = 50;
    let redis = client(&c);
    redis.query::<()>(&cmd("PING")).await.unwrap();
    assert!(
        server
            .cli(&["CLIENT", "PAUSE", "1000", "ALL"])
            .contains("OK")
    );
    let start = Instant::now();
    let r = redis.query::<Option<String>>(cmd("GET").arg("x")).await;
    assert!(matches!(r, Err(StoreError::Timeout)), "{r:?}");
    let took = start.elapsed();
    // Never before the 50 ms timeout; the upper bound only has to show that the call did
    // not wait out the 1 s pause, so it is ten times the timeout (a loaded two-core
    // machine can delay a wake-up by tens of milliseconds).
    assert!(
        took >= Duration::from_millis(45) && took < Duration::from_millis(500),
        "{took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_survive_noscript_alone_and_in_pipelines() {
    let server = RedisServer::start().await;
    let redis = client(&config(&server.url()));
    let script = Script::new(ADD);
    let keys = vec!["n".to_owned()];
    for round in 0..2 {
        // EVALSHA alone: NOSCRIPT → SCRIPT LOAD → EVALSHA, inside the one call.
        let v: i64 = redis
            .run_script(&script, &keys, &["2".to_owned()])
            .await
            .unwrap();
        assert_eq!(v, 2, "round {round}");
        // In a pipeline with other commands.
        let mut p = pipe();
        p.cmd("SET").arg("n").arg(40).ignore();
        redis.add_script(&mut p, &script, &keys, &["2".to_owned()]);
        p.cmd("GET").arg("n");
        let (sum, n): (i64, String) = redis.query_pipeline(&p).await.unwrap();
        assert_eq!((sum, n.as_str()), (42, "40"), "round {round}");
        // A registered script invoked with redis-rs' own `invoke_script` is repaired too.
        let mut p = pipe();
        p.invoke_script(script.key("n").arg(1));
        let (sum,): (i64,) = redis.query_pipeline(&p).await.unwrap();
        assert_eq!(sum, 41);
        server.cli(&["SET", "n", "0"]);
        assert!(server.cli(&["SCRIPT", "FLUSH"]).contains("OK"));
    }
    // A logical error does not count towards the breaker.
    server.cli(&["RPUSH", "list", "x"]);
    for _ in 0..5 {
        let r = redis.query::<Option<String>>(cmd("GET").arg("list")).await;
        assert!(matches!(&r, Err(StoreError::Redis { .. })), "{r:?}");
    }
    assert!(redis.is_available(), "WRONGTYPE never opens the breaker");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_commands_pipelines_and_slots() {
    let cluster = RedisCluster::start().await;
    let mut c = Config {
        redis_cluster_urls: cluster.urls(),
        ..Config::default()
    };
    c.redis.timeout_ms = 1000;
    let redis = client(&c);
    assert!(redis.is_cluster());
    for k in [
        "cache:profile:a",
        "cache:settings:a",
        "metrics:cache:hits",
        "{tag}x",
        // The hash-tag edge cases: an empty `{}` hashes the whole key; the first `}` ends
        // the tag.
        "foo{}{bar}",
        "foo{{bar}}zap",
        "{}",
        "foo{",
    ] {
        let expect: u16 = cluster.nodes[0]
            .cli(&["CLUSTER", "KEYSLOT", k])
            .trim()
            .parse()
            .unwrap();
        // redis-rs' slot rule (which the cache store groups by) is the cluster's.
        assert_eq!(Some(Slot::for_key(k)), Slot::new(expect), "{k}");
    }
    let script = Script::new(ADD);
    for i in 0..20 {
        let key = format!("cache:profile:{i}");
        redis
            .query::<()>(cmd("SET").arg(&key).arg(i))
            .await
            .unwrap();
        let mut p = pipe();
        redis.add_script(
            &mut p,
            &script,
            std::slice::from_ref(&key),
            &["1".to_owned()],
        );
        p.cmd("GET").arg(&key);
        let (sum, v): (i64, String) = redis.query_pipeline(&p).await.unwrap();
        assert_eq!((sum, v), (i + 1, i.to_string()));
    }
}
