//! Authentication over real HTTP: every refused token is a 401 with `WWW-Authenticate`,
//! and the accepted ones map to the right caller.

use std::sync::{Arc, Mutex};

use crate::helpers::{Role, TestApp, json_of, sign, token};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use user_api::domain::UserId;

/// A JWT header or payload segment.
fn segment(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

fn claims(sub: &str) -> Value {
    let now = chrono::Utc::now().timestamp();
    json!({"sub": sub, "role": "user", "iat": now, "exp": now + 600})
}

async fn status_with(
    app: &TestApp,
    path: &str,
    auth: Option<&str>,
) -> (u16, Option<String>, Value) {
    let mut req = app.client.get(app.url(path));
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let res = req.send().await.unwrap();
    let www = res
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned());
    let (s, body) = json_of(res).await;
    (s, www, body)
}

async fn assert_refused(app: &TestApp, token: &str, why: &str) {
    let (s, www, body) =
        status_with(app, "/api/profiles/me", Some(&format!("Bearer {token}"))).await;
    assert_eq!(s, 401, "{why}: {body}");
    assert!(
        www.unwrap_or_default().starts_with("Bearer"),
        "{why}: no WWW-Authenticate"
    );
    assert!(body["detail"].is_string());
    assert!(!body.to_string().contains(token), "{why}: token echoed");
}

#[tokio::test]
async fn missing_or_malformed_authorization() {
    let app = TestApp::builder().spawn().await;
    for auth in [
        None,
        Some(""),
        Some("Bearer"),
        Some("Bearer "),
        Some("Basic dXNlcjpwYXNz"),
        Some("bearer"),
    ] {
        let (s, www, body) = status_with(&app, "/api/profiles/me", auth).await;
        assert_eq!(s, 401, "{auth:?}");
        assert_eq!(www.as_deref(), Some("Bearer"), "{auth:?}");
        assert!(body["detail"].is_string());
    }
    let huge = format!("Bearer {}", "a".repeat(20_000));
    let (s, _, _) = status_with(&app, "/api/profiles/me", Some(&huge)).await;
    assert!(s == 401 || s == 431, "{s}");
}

#[tokio::test]
async fn refused_tokens() {
    let app = TestApp::builder().spawn().await;
    let sub = UserId::random().to_string();
    let now = chrono::Utc::now().timestamp();

    let mut expired = claims(&sub);
    expired["exp"] = json!(now - 120);
    assert_refused(&app, &sign(&expired), "expired beyond leeway").await;

    let mut no_exp = claims(&sub);
    no_exp.as_object_mut().unwrap().remove("exp");
    assert_refused(&app, &sign(&no_exp), "no exp").await;

    let (other_private, _) = user_api::auth::generate_rsa_keypair().unwrap();
    let wrong_key =
        user_api::auth::sign_rs256(other_private.as_bytes(), None, &claims(&sub)).unwrap();
    assert_refused(&app, &wrong_key, "wrong key").await;

    let none = format!(
        "{}.{}.",
        segment(&json!({"alg": "none", "typ": "JWT"})),
        segment(&claims(&sub))
    );
    assert_refused(&app, &none, "alg none").await;

    // HS256 keyed with the public key's bytes: the classic algorithm-confusion attack.
    let header = segment(&json!({"alg": "HS256", "typ": "JWT"}));
    let payload = segment(&claims(&sub));
    let signing_input = format!("{header}.{payload}");
    let key = aws_lc_rs::hmac::Key::new(
        aws_lc_rs::hmac::HMAC_SHA256,
        crate::helpers::keys().public_pem.as_bytes(),
    );
    let tag = aws_lc_rs::hmac::sign(&key, signing_input.as_bytes());
    let hs = format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()));
    assert_refused(&app, &hs, "HS256 with public key").await;

    let mut refresh = claims(&sub);
    refresh["token_type"] = json!("refresh");
    assert_refused(&app, &sign(&refresh), "refresh token").await;

    let mut no_sub = claims(&sub);
    no_sub.as_object_mut().unwrap().remove("sub");
    assert_refused(&app, &sign(&no_sub), "no sub").await;
    assert_refused(&app, &sign(&claims("alice")), "non-UUID sub").await;
    assert_refused(
        &app,
        &sign(&claims("550e8400e29b41d4a716446655440000")),
        "non-canonical sub",
    )
    .await;

    // Tampered payload.
    let good = token(UserId::random(), Role::User);
    let parts: Vec<&str> = good.split('.').collect();
    let mut admin_claims = claims(&sub);
    admin_claims["role"] = json!("admin");
    let tampered = format!("{}.{}.{}", parts[0], segment(&admin_claims), parts[2]);
    assert_refused(&app, &tampered, "tampered").await;
    assert_refused(&app, "not.a.jwt", "garbage").await;
    assert_refused(&app, "x", "garbage").await;
}

#[tokio::test]
async fn accepted_tokens_and_roles() {
    let app = TestApp::builder().spawn().await;
    let owner = UserId::random();
    app.create_profile(owner, json!({"name": "o"})).await;
    let path = format!("/api/profiles/{owner}");
    let now = chrono::Utc::now().timestamp();
    let other = UserId::random().to_string();
    let cases = [
        (json!({"sub": other, "exp": now + 60, "role": "admin"}), 200),
        (
            json!({"sub": other, "exp": now + 60, "roles": ["reader", "super_admin"]}),
            200,
        ),
        (
            json!({"sub": other, "exp": now + 60, "roles": ["admin"]}),
            200,
        ),
        (json!({"sub": other, "exp": now + 60, "role": "user"}), 403),
        (
            json!({"sub": other, "exp": now + 60, "roles": ["user"]}),
            403,
        ),
        (json!({"sub": other, "exp": now + 60}), 403),
        // No token_type is accepted; `access` is accepted; within the 60 s leeway is accepted.
        (json!({"sub": owner.to_string(), "exp": now + 60}), 200),
        (
            json!({"sub": owner.to_string(), "exp": now + 60, "token_type": "access"}),
            200,
        ),
        (json!({"sub": owner.to_string(), "exp": now - 30}), 200),
    ];
    for (c, want) in cases {
        let res = app.get(&path, &sign(&c)).await;
        assert_eq!(res.status().as_u16(), want, "{c}");
    }
}

#[tokio::test]
async fn issuer_and_audience_when_configured() {
    let app = TestApp::builder()
        .with(|c| {
            c.jwt.iss = Some("https://auth.example".into());
            c.jwt.aud = Some("user-api".into());
        })
        .spawn()
        .await;
    let sub = UserId::random();
    app.create_profile_with_claims(sub).await;
    let now = chrono::Utc::now().timestamp();
    let base = json!({"sub": sub.to_string(), "exp": now + 60});
    let with = |iss: Option<&str>, aud: Option<Value>| {
        let mut c = base.clone();
        if let Some(i) = iss {
            c["iss"] = json!(i);
        }
        if let Some(a) = aud {
            c["aud"] = a;
        }
        sign(&c)
    };
    let ok = with(Some("https://auth.example"), Some(json!("user-api")));
    assert_eq!(app.get("/api/profiles/me", &ok).await.status(), 200);
    let ok_array = with(
        Some("https://auth.example"),
        Some(json!(["other", "user-api"])),
    );
    assert_eq!(app.get("/api/profiles/me", &ok_array).await.status(), 200);
    assert_refused(
        &app,
        &with(Some("https://evil.example"), Some(json!("user-api"))),
        "wrong iss",
    )
    .await;
    assert_refused(&app, &with(None, Some(json!("user-api"))), "no iss").await;
    assert_refused(
        &app,
        &with(Some("https://auth.example"), Some(json!("other"))),
        "wrong aud",
    )
    .await;
    assert_refused(&app, &with(Some("https://auth.example"), None), "no aud").await;
}

/// A JWKS endpoint the test controls, for key rotation.
async fn jwks_server(keys: Arc<Mutex<Value>>) -> String {
    use axum::routing::get;
    let router = axum::Router::new().route(
        "/.well-known/jwks.json",
        get(move || {
            let keys = keys.clone();
            async move { axum::Json(keys.lock().unwrap().clone()) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{addr}/.well-known/jwks.json")
}

#[tokio::test]
async fn jwks_with_key_rotation() {
    let (priv_a, pub_a) = user_api::auth::generate_rsa_keypair().unwrap();
    let (priv_b, pub_b) = user_api::auth::generate_rsa_keypair().unwrap();
    let jwk_a = user_api::auth::public_jwk(pub_a.as_bytes(), "key-a").unwrap();
    let jwk_b = user_api::auth::public_jwk(pub_b.as_bytes(), "key-b").unwrap();
    let served = Arc::new(Mutex::new(json!({"keys": [jwk_a]})));
    let url = jwks_server(served.clone()).await;

    let app = TestApp::builder()
        .with(|c| {
            c.jwt.public_key_file = None;
            c.jwt.jwks_url = Some(url);
            c.jwt.jwks_allow_http = true;
            c.jwt.jwks_min_refetch_secs = 0;
        })
        .spawn()
        .await;
    let sub = UserId::random();
    let now = chrono::Utc::now().timestamp();
    let c = json!({"sub": sub.to_string(), "exp": now + 600, "iat": now});
    let tok_a = user_api::auth::sign_rs256(priv_a.as_bytes(), Some("key-a"), &c).unwrap();
    let tok_b = user_api::auth::sign_rs256(priv_b.as_bytes(), Some("key-b"), &c).unwrap();

    assert_eq!(
        app.get("/api/profiles/me", &tok_a).await.status(),
        404,
        "key A verifies (no profile yet)"
    );
    assert_refused(&app, &tok_b, "key B not published yet").await;
    // The auth service rotates: B is published next to A, then A is retired.
    *served.lock().unwrap() = json!({"keys": [jwk_b.clone()]});
    assert_eq!(
        app.get("/api/profiles/me", &tok_b).await.status(),
        404,
        "unknown kid triggers a refetch"
    );
    let tok_a_unknown = user_api::auth::sign_rs256(priv_a.as_bytes(), Some("key-zzz"), &c).unwrap();
    assert_refused(&app, &tok_a_unknown, "unknown kid").await;
    // A kid that claims to be B but is signed by A.
    let forged = user_api::auth::sign_rs256(priv_a.as_bytes(), Some("key-b"), &c).unwrap();
    assert_refused(&app, &forged, "kid B signed by A").await;
}
