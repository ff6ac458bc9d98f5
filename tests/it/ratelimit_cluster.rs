//! Rate limits on a test-owned 3-master Redis Cluster: exact across instances, every
//! counter with a TTL, and the admission step (revocation, count, cache look) fanned out.

use std::time::Instant;

use crate::helpers::ratelimit::{app_with_cached_profile, exact_across_three_instances};
use crate::helpers::redis::{StoreKind, Target};
use crate::helpers::{Limits, TestApp, json_of};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exact_across_three_instances_on_a_cluster() {
    let started = Instant::now();
    let target = Target::new(StoreKind::Cluster).await;
    eprintln!("cluster up in {:?}", started.elapsed());
    exact_across_three_instances(&target).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_read_sends_one_admission_step_on_a_cluster() {
    let target = Target::new(StoreKind::Cluster).await;
    let (app, path, t) = app_with_cached_profile(
        TestApp::builder()
            .with_store(&target)
            .with_limits(Limits::Production),
    )
    .await;
    let cluster = target.cluster();
    cluster.reset_stats();
    let (s, body) = json_of(app.get(&path, &t).await).await;
    assert_eq!((s, &body["cached"]), (200, &json!(true)));
    let calls = cluster.commandstats();
    let calls_of = |n: &str| calls.get(n).copied().unwrap_or(0);
    assert_eq!(
        (
            calls_of("exists"),
            calls_of("incr"),
            calls_of("exec"),
            calls_of("mget"),
            calls_of("get"),
            calls_of("evalsha"),
        ),
        (2, 1, 1, 1, 0, 0),
        "both revocation keys, one counter transaction and one MGET (entry and companions) \
         for a cached read, no script: {calls:?}"
    );
}
