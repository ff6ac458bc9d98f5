//! Revocation (SPEC 7): the auth service's `blacklist:<jti>`, `blacklist:<first 50 chars>`
//! and `blacklist:user:<sub>` keys refuse a token, also one this instance verified before;
//! deleting the key restores it; with Redis unreachable, revocations already seen stay
//! enforced and `auth.revocation_unavailable` decides the rest. On one node and on a
//! cluster (where the keys live in different slots).

use ::redis::AsyncCommands;
use rstest::rstest;
use serde_json::json;
use user_api::admission::RevocationUnavailable;
use user_api::domain::UserId;

use crate::helpers::redis::{StoreKind, Target, connect};
use crate::helpers::{TestApp, json_of, sign};

/// A user token as the auth service issues them, with a `jti` when given.
fn token_for(sub: UserId, jti: Option<&str>) -> String {
    let now = chrono::Utc::now().timestamp();
    let mut claims = json!({"sub": sub.to_string(), "role": "user", "exp": now + 900,
                            "token_type": "access"});
    if let Some(jti) = jti {
        claims["jti"] = json!(jti);
    }
    sign(&claims)
}

/// Sets (`Some`) or deletes (`None`) `key` on the target's Redis, as the auth service does.
async fn write(target: &Target, key: &str, value: Option<&str>) {
    match target {
        Target::Cluster(cluster) => {
            let mut c = cluster.conn().await;
            match value {
                Some(v) => c.set::<_, _, ()>(key, v).await.unwrap(),
                None => c.del::<_, ()>(key).await.unwrap(),
            }
        }
        _ => {
            let mut c = connect(&target.node_urls()[0]).await;
            match value {
                Some(v) => c.set::<_, _, ()>(key, v).await.unwrap(),
                None => c.del::<_, ()>(key).await.unwrap(),
            }
        }
    }
}

/// `GET /api/profiles/me` with `token`: the status, and the body when refused.
async fn me(app: &TestApp, token: &str) -> u16 {
    let res = app.get("/api/profiles/me", token).await;
    let status = res.status().as_u16();
    if status == 401 {
        assert_eq!(
            res.headers()["www-authenticate"],
            "Bearer error=\"invalid_token\""
        );
        let (_, body) = json_of(res).await;
        assert_eq!(body, json!({"detail": "Token has been revoked"}));
    }
    status
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_by_jti_by_prefix_and_by_user_until_the_key_is_deleted(
    #[values(StoreKind::Own, StoreKind::Cluster)] kind: StoreKind,
) {
    let target = Target::new(kind).await;
    let app = TestApp::builder().with_store(&target).spawn().await;
    let (alice, bob) = (UserId::random(), UserId::random());
    app.create_profile(alice, json!({})).await;
    app.create_profile(bob, json!({})).await;
    let jti = format!("jti-{}", UserId::random());
    let with_jti = token_for(alice, Some(&jti));
    let other = token_for(alice, Some("another-session"));
    let bobs = token_for(bob, Some("bobs-session"));

    // Verified (and remembered) before it is revoked: the revocation still applies.
    assert_eq!(me(&app, &with_jti).await, 200);
    write(&target, &format!("blacklist:{jti}"), Some("revoked")).await;
    assert_eq!(me(&app, &with_jti).await, 401);
    let put = app
        .send_json(
            reqwest::Method::PUT,
            &format!("/api/profiles/{alice}"),
            &with_jti,
            &json!({"first_name": "Mallory"}),
        )
        .await;
    assert_eq!(put.status(), 401, "a revoked token writes nothing");
    assert_eq!(me(&app, &other).await, 200, "another session of the user");
    write(&target, &format!("blacklist:{jti}"), None).await;
    assert_eq!(me(&app, &with_jti).await, 200, "works again once deleted");
    let (_, profile) = app.read_profile(alice).await;
    assert_ne!(profile["profile"]["first_name"], "Mallory");

    // The user: every token of theirs, none of anyone else's.
    let user_key = format!("blacklist:user:{alice}");
    write(&target, &user_key, Some("1")).await;
    assert_eq!(me(&app, &with_jti).await, 401);
    assert_eq!(me(&app, &other).await, 401);
    assert_eq!(me(&app, &token_for(alice, None)).await, 401);
    assert_eq!(me(&app, &bobs).await, 200);
    write(&target, &user_key, None).await;
    assert_eq!(me(&app, &other).await, 200, "a reactivated user");

    // No `jti`: the token's first 50 characters name it.
    let bare = token_for(bob, None);
    assert_eq!(me(&app, &bare).await, 200);
    let prefix_key = format!("blacklist:{}", &bare[..50]);
    write(&target, &prefix_key, Some("1")).await;
    assert_eq!(me(&app, &bare).await, 401);
    write(&target, &prefix_key, None).await;
    assert_eq!(me(&app, &bare).await, 200);
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_seen_revocations_hold_and_the_setting_decides_the_rest(
    #[values(RevocationUnavailable::Allow, RevocationUnavailable::Deny)]
    setting: RevocationUnavailable,
) {
    let mut target = Target::new(StoreKind::Own).await;
    let app = TestApp::builder()
        .with_store(&target)
        .with(move |c| {
            c.auth.revocation_unavailable = setting;
            // The production timeout: the outage is noticed quickly.
            c.redis.timeout_ms = 50;
        })
        .spawn()
        .await;
    let (alice, bob) = (UserId::random(), UserId::random());
    app.create_profile(alice, json!({})).await;
    app.create_profile(bob, json!({})).await;
    let revoked = token_for(alice, Some("stolen"));
    let honest = token_for(bob, Some("honest"));
    assert_eq!(me(&app, &honest).await, 200);
    write(&target, "blacklist:stolen", Some("1")).await;
    assert_eq!(me(&app, &revoked).await, 401);
    let unchecked_before = app.prom_counter("auth_revocation_unchecked_total").await;

    target.server().kill();
    for _ in 0..3 {
        assert_eq!(
            me(&app, &revoked).await,
            401,
            "a revocation seen stays enforced while Redis is down"
        );
    }
    let status = me(&app, &honest).await;
    match setting {
        RevocationUnavailable::Allow => assert_eq!(status, 200),
        RevocationUnavailable::Deny => assert_eq!(status, 503),
    }
    assert!(
        app.prom_counter("auth_revocation_unchecked_total").await > unchecked_before,
        "unchecked requests are counted"
    );

    // Back: the store answers again, and a deleted key is honoured.
    target.server().restart().await;
    write(&target, "blacklist:stolen", None).await;
    crate::helpers::eventually(
        std::time::Duration::from_secs(10),
        "the revoked token works again once Redis is back and the key is gone",
        || async { me(&app, &revoked).await == 200 },
    )
    .await;
}
