//! Library-level tests of `user_api::auth`: claim rules, algorithm confusion, key
//! sources (PEM, JWKS served by a local axum server, dev keys).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use user_api::auth::{
    self, AuthError, AuthSetupError, Authenticator, Caller, KeyMode, Role, dev,
    generate_rsa_keypair, public_jwk, sign_rs256,
};
use user_api::config::JwtConfig;
use user_api::domain::UserId;

// ---------------------------------------------------------------- helpers

struct Pair {
    private: String,
    public: String,
}

/// Key generation costs tens of milliseconds; share a few pairs across tests.
fn pair(i: usize) -> &'static Pair {
    static PAIRS: OnceLock<Vec<Pair>> = OnceLock::new();
    &PAIRS.get_or_init(|| {
        (0..3)
            .map(|_| {
                let (private, public) = generate_rsa_keypair().expect("keygen");
                Pair { private, public }
            })
            .collect()
    })[i]
}

const USER: &str = "550e8400-e29b-41d4-a716-446655440000";
const OTHER: &str = "6ba7b810-9dad-11d1-80b4-00c04fd430c8";

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn uid(s: &str) -> UserId {
    s.parse().expect("uuid")
}

fn base_claims() -> Value {
    json!({"sub": USER, "role": "user", "iat": now(), "exp": now() + 600})
}

fn with(mut claims: Value, extra: Value) -> Value {
    for (k, v) in extra.as_object().expect("object") {
        if v.is_null() {
            claims.as_object_mut().expect("object").remove(k);
        } else {
            claims[k] = v.clone();
        }
    }
    claims
}

fn sign(pair: &Pair, kid: Option<&str>, claims: &Value) -> String {
    sign_rs256(pair.private.as_bytes(), kid, claims).expect("sign")
}

fn cfg() -> JwtConfig {
    JwtConfig::default()
}

fn pem_auth(cfg: &JwtConfig) -> Authenticator {
    Authenticator::from_pem(pair(0).public.as_bytes(), cfg).expect("authenticator")
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "user-api-auth-{name}-{}-{}",
        std::process::id(),
        chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

async fn verify(auth: &Authenticator, token: &str) -> Result<Caller, AuthError> {
    auth.verify(token).await
}

fn assert_invalid(r: Result<Caller, AuthError>, what: &str) {
    match r {
        Err(AuthError::Invalid(_)) => {}
        other => panic!("{what}: expected Invalid, got {other:?}"),
    }
}

// ---------------------------------------------------------------- claims

#[tokio::test]
async fn valid_user_token() {
    let auth = pem_auth(&cfg());
    assert_eq!(auth.mode(), KeyMode::Pem);
    let iat = now() - 10;
    let token = sign(pair(0), None, &with(base_claims(), json!({"iat": iat})));
    let caller = verify(&auth, &token).await.expect("valid");
    assert_eq!(caller.user_id, uid(USER));
    assert!(!caller.is_admin);
    assert_eq!(caller.issued_at.map(|t| t.timestamp()), Some(iat));
    assert!(caller.may_access(uid(USER)));
    assert!(!caller.may_access(uid(OTHER)));

    // No iat: accepted, issued_at unknown; a kid is ignored in PEM mode.
    let token = sign(
        pair(0),
        Some("whatever"),
        &with(base_claims(), json!({"iat": null})),
    );
    let caller = verify(&auth, &token).await.expect("valid");
    assert_eq!(caller.issued_at, None);
}

#[tokio::test]
async fn admin_roles() {
    let auth = pem_auth(&cfg());
    let cases = [
        (json!({"role": "admin"}), true),
        (json!({"role": "super_admin"}), true),
        (json!({"role": null, "roles": ["user", "admin"]}), true),
        (json!({"role": null, "roles": ["super_admin"]}), true),
        (json!({"role": "user", "roles": ["user"]}), false),
        (json!({"role": "administrator"}), false),
        (json!({"role": null}), false),
        (json!({"role": ["admin"]}), false),
        (json!({"role": null, "roles": [1, {"admin": true}]}), false),
    ];
    for (extra, admin) in cases {
        let token = sign(pair(0), None, &with(base_claims(), extra.clone()));
        let caller = verify(&auth, &token).await.expect("valid");
        assert_eq!(caller.is_admin, admin, "{extra}");
        assert!(caller.may_access(uid(OTHER)) == admin, "{extra}");
    }
}

#[tokio::test]
async fn expiry_and_leeway() {
    let auth = pem_auth(&cfg());
    let expired = sign(
        pair(0),
        None,
        &with(base_claims(), json!({"exp": now() - 120})),
    );
    assert_eq!(verify(&auth, &expired).await, Err(AuthError::Expired));
    assert_eq!(AuthError::Expired.to_string(), "Token expired");

    let within = sign(
        pair(0),
        None,
        &with(base_claims(), json!({"exp": now() - 30})),
    );
    verify(&auth, &within)
        .await
        .expect("within the 60 s leeway");

    let strict = pem_auth(&JwtConfig {
        leeway_secs: 0,
        ..cfg()
    });
    let just_expired = sign(
        pair(0),
        None,
        &with(base_claims(), json!({"exp": now() - 5})),
    );
    assert_eq!(
        verify(&strict, &just_expired).await,
        Err(AuthError::Expired)
    );

    for (extra, what) in [
        (json!({"exp": null}), "no exp"),
        (json!({"exp": "tomorrow"}), "string exp"),
        (json!({"exp": -5}), "negative exp"),
        (json!({"nbf": now() + 600}), "nbf in the future"),
        (json!({"iat": now() + 600}), "iat in the future"),
        (json!({"iat": "yesterday"}), "string iat"),
    ] {
        let token = sign(pair(0), None, &with(base_claims(), extra));
        assert_invalid(verify(&auth, &token).await, what);
    }
    // nbf and iat slightly ahead (clock skew) are fine.
    let skewed = sign(
        pair(0),
        None,
        &with(base_claims(), json!({"nbf": now() + 30, "iat": now() + 30})),
    );
    verify(&auth, &skewed).await.expect("skew within leeway");
}

#[tokio::test]
async fn token_type() {
    let auth = pem_auth(&cfg());
    for (tt, ok) in [
        (json!("access"), true),
        (Value::Null, true),
        (json!("refresh"), false),
        (json!("id"), false),
        (json!("Access"), false),
        (json!(1), false),
    ] {
        let token = sign(
            pair(0),
            None,
            &with(base_claims(), json!({ "token_type": tt })),
        );
        let r = verify(&auth, &token).await;
        if ok {
            r.expect("accepted");
        } else {
            assert_invalid(r, &format!("token_type {tt}"));
        }
    }
}

#[tokio::test]
async fn subject_rules() {
    let auth = pem_auth(&cfg());
    for (sub, what) in [
        (Value::Null, "missing sub"),
        (json!(""), "empty sub"),
        (json!("alice"), "non-UUID sub"),
        (
            json!("550e8400e29b41d4a716446655440000"),
            "simple-form UUID",
        ),
        (
            json!("{550e8400-e29b-41d4-a716-446655440000}"),
            "braced UUID",
        ),
        (json!(12345), "numeric sub"),
        (json!("'; DROP TABLE profiles; --"), "SQL-ish sub"),
    ] {
        let token = sign(pair(0), None, &with(base_claims(), json!({ "sub": sub })));
        assert_invalid(verify(&auth, &token).await, what);
    }
    // Upper case is the same UUID; it comes out canonical.
    let token = sign(
        pair(0),
        None,
        &with(base_claims(), json!({"sub": USER.to_uppercase()})),
    );
    let caller = verify(&auth, &token).await.expect("upper-case UUID");
    assert_eq!(caller.user_id.to_string(), USER);
}

#[tokio::test]
async fn issuer_and_audience() {
    let auth = pem_auth(&JwtConfig {
        iss: Some("https://auth.example".into()),
        aud: Some("user-api".into()),
        ..cfg()
    });
    let good = json!({"iss": "https://auth.example", "aud": "user-api"});
    let token = sign(
        pair(0),
        None,
        &with(with(base_claims(), good.clone()), json!({})),
    );
    verify(&auth, &token).await.expect("matching iss/aud");

    let aud_array = with(
        with(base_claims(), good.clone()),
        json!({"aud": ["other", "user-api"]}),
    );
    verify(&auth, &sign(pair(0), None, &aud_array))
        .await
        .expect("aud as an array containing ours");

    for (extra, what) in [
        (json!({"iss": "https://evil.example"}), "wrong iss"),
        (json!({"iss": null}), "missing iss"),
        (json!({"aud": "other"}), "wrong aud"),
        (
            json!({"aud": ["other", "another"]}),
            "aud array without ours",
        ),
        (json!({"aud": null}), "missing aud"),
        (json!({"aud": []}), "empty aud array"),
    ] {
        let claims = with(with(base_claims(), good.clone()), extra);
        assert_invalid(verify(&auth, &sign(pair(0), None, &claims)).await, what);
    }

    // Nothing configured: iss and aud are whatever the auth service put there.
    let open = pem_auth(&cfg());
    let claims = with(base_claims(), json!({"iss": "anyone", "aud": ["x", "y"]}));
    verify(&open, &sign(pair(0), None, &claims))
        .await
        .expect("no iss/aud configured");
}

// ---------------------------------------------------------------- algorithms and keys

#[tokio::test]
async fn wrong_key_is_refused() {
    let auth = pem_auth(&cfg());
    let token = sign(pair(1), None, &base_claims());
    assert_invalid(verify(&auth, &token).await, "signed by another key");

    // A valid signature over other claims does not carry over.
    let good = sign(pair(0), None, &base_claims());
    let evil = sign(
        pair(0),
        None,
        &with(base_claims(), json!({"role": "admin"})),
    );
    let g: Vec<&str> = good.split('.').collect();
    let e: Vec<&str> = evil.split('.').collect();
    let spliced = format!("{}.{}.{}", g[0], e[1], g[2]);
    assert_invalid(verify(&auth, &spliced).await, "spliced payload");
}

#[tokio::test]
async fn alg_none_is_refused() {
    let auth = pem_auth(&cfg());
    let payload = URL_SAFE_NO_PAD.encode(base_claims().to_string().as_bytes());
    let valid_sig = sign(pair(0), None, &base_claims())
        .rsplit('.')
        .next()
        .expect("sig")
        .to_owned();
    for header in [
        json!({"alg": "none"}),
        json!({"alg": "none", "typ": "JWT"}),
        json!({"alg": "None"}),
        json!({"alg": "NONE", "typ": "JWT"}),
        json!({"typ": "JWT"}),
        json!({"alg": ""}),
    ] {
        let h = URL_SAFE_NO_PAD.encode(header.to_string().as_bytes());
        assert_invalid(
            verify(&auth, &format!("{h}.{payload}.")).await,
            &format!("{header} unsigned"),
        );
        assert_invalid(
            verify(&auth, &format!("{h}.{payload}")).await,
            &format!("{header} two parts"),
        );
        assert_invalid(
            verify(&auth, &format!("{h}.{payload}.{valid_sig}")).await,
            &format!("{header} with a stolen signature"),
        );
    }
}

#[tokio::test]
async fn hs256_with_the_public_key_is_refused() {
    let auth = pem_auth(&cfg());
    let public = pair(0).public.as_bytes();
    for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
        // The classic confusion attack: HMAC keyed with the verifier's own public key bytes.
        let token = jsonwebtoken::encode(
            &Header::new(alg),
            &base_claims(),
            &EncodingKey::from_secret(public),
        )
        .expect("hmac");
        let r = verify(&auth, &token).await;
        assert_eq!(
            r,
            Err(AuthError::Invalid("Unsupported token algorithm")),
            "{alg:?}"
        );
    }
    // Also with the PKCS#1 DER and with a trailing-newline-less PEM.
    let trimmed = pair(0).public.trim_end().as_bytes().to_vec();
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &base_claims(),
        &EncodingKey::from_secret(&trimmed),
    )
    .expect("hmac");
    assert_invalid(verify(&auth, &token).await, "HS256 with trimmed PEM");
}

#[tokio::test]
async fn other_asymmetric_algorithms_are_refused() {
    let auth = pem_auth(&cfg());
    let key = EncodingKey::from_rsa_pem(pair(0).private.as_bytes()).expect("key");
    for alg in [
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS512,
    ] {
        // Correct key, correct signature for that algorithm: still not RS256.
        let token = jsonwebtoken::encode(&Header::new(alg), &base_claims(), &key).expect("sign");
        assert_eq!(
            verify(&auth, &token).await,
            Err(AuthError::Invalid("Unsupported token algorithm")),
            "{alg:?}"
        );
    }

    // ES256 with a real EC key.
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let pkcs8 = aws_lc_rs::signature::EcdsaKeyPair::generate_pkcs8(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &rng,
    )
    .expect("ec key");
    let ec = EncodingKey::from_ec_der(pkcs8.as_ref());
    let token =
        jsonwebtoken::encode(&Header::new(Algorithm::ES256), &base_claims(), &ec).expect("sign");
    assert_invalid(verify(&auth, &token).await, "ES256");

    // A valid RS256 token whose header is rewritten to claim RS512.
    let good = sign(pair(0), None, &base_claims());
    let (_, rest) = good.split_once('.').expect("parts");
    let forged = format!(
        "{}.{rest}",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"RS512","typ":"JWT"}"#)
    );
    assert_invalid(verify(&auth, &forged).await, "header rewritten to RS512");
}

#[tokio::test]
async fn garbage_is_refused_without_panicking() {
    let auth = pem_auth(&cfg());
    assert_eq!(verify(&auth, "").await, Err(AuthError::Missing));
    assert_eq!(verify(&auth, "   ").await, Err(AuthError::Missing));
    let huge = "a".repeat(100_000);
    let huge_dots = format!("{0}.{0}.{0}", "e".repeat(40_000));
    let garbage = [
        "abc",
        "a.b",
        "a.b.c",
        "a.b.c.d",
        "..",
        "...",
        "eyJhbGciOiJSUzI1NiJ9",
        "eyJhbGciOiJSUzI1NiJ9..",
        "eyJhbGciOiJSUzI1NiJ9.e30.",
        "eyJhbGciOiJSUzI1NiJ9.e30.AAAA",
        "eyJhbGciOiJSUzI1NiJ9.%%%.AAAA",
        "Bearer eyJhbGciOiJSUzI1NiJ9.e30.AAAA",
        "null",
        "{}",
        "日本語.トークン.です",
        "\0\0\0",
        &huge,
        &huge_dots,
    ];
    for g in garbage {
        let r = verify(&auth, g).await;
        let shown: String = g.chars().take(40).collect();
        assert!(
            matches!(r, Err(AuthError::Invalid(_))),
            "{shown:?} -> {r:?}"
        );
    }
    // Payload that is not a JSON object, correctly signed.
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT"}"#);
    for payload in ["[]", "\"sub\"", "12", "not json"] {
        let p = URL_SAFE_NO_PAD.encode(payload.as_bytes());
        let msg = format!("{header}.{p}");
        let pair0 = aws_lc_rs::rsa::KeyPair::from_pkcs8(
            pem::parse(pair(0).private.as_bytes())
                .expect("pem")
                .contents(),
        )
        .expect("key");
        let mut sig = vec![0; pair0.public_modulus_len()];
        pair0
            .sign(
                &aws_lc_rs::signature::RSA_PKCS1_SHA256,
                &aws_lc_rs::rand::SystemRandom::new(),
                msg.as_bytes(),
                &mut sig,
            )
            .expect("sign");
        let token = format!("{msg}.{}", URL_SAFE_NO_PAD.encode(&sig));
        assert_invalid(verify(&auth, &token).await, payload);
    }
}

#[test]
fn authenticator_is_shareable() {
    fn send_sync_clone<T: Send + Sync + Clone + 'static>() {}
    fn send<F: std::future::Future + Send>(_: F) {}
    send_sync_clone::<Authenticator>();
    let auth = pem_auth(&cfg());
    // Axum middleware needs the verification future itself to be Send.
    send(auth.verify("x"));
}

#[test]
fn error_messages_are_generic() {
    assert_eq!(AuthError::Missing.to_string(), "Missing bearer token");
    assert_eq!(AuthError::Expired.to_string(), "Token expired");
    assert_eq!(
        AuthError::Invalid("Invalid token").to_string(),
        "Invalid token"
    );
}

#[test]
fn bearer_header_parsing() {
    assert_eq!(
        auth::parse_authorization("Bearer abc.def.ghi"),
        Ok("abc.def.ghi")
    );
    assert_eq!(auth::parse_authorization("bearer   abc "), Ok("abc"));
    assert_eq!(auth::parse_authorization("BEARER abc"), Ok("abc"));
    for bad in [
        "",
        "Bearer",
        "Bearer ",
        "Basic dXNlcjpwYXNz",
        "abc.def.ghi",
        "Token abc",
    ] {
        assert_eq!(
            auth::parse_authorization(bad),
            Err(AuthError::Missing),
            "{bad:?}"
        );
    }
}

#[test]
fn role_parsing() {
    assert_eq!("admin".parse::<Role>(), Ok(Role::Admin));
    assert_eq!("USER".parse::<Role>(), Ok(Role::User));
    assert!("root".parse::<Role>().is_err());
    assert_eq!(Role::Admin.to_string(), "admin");
}

#[tokio::test]
async fn pem_formats() {
    // PKCS#1 "RSA PUBLIC KEY" is accepted as well as SPKI "PUBLIC KEY".
    let spki = pem::parse(pair(0).public.as_bytes()).expect("pem");
    let public = aws_lc_rs::rsa::PublicKey::from_der(spki.contents()).expect("rsa");
    let pkcs1 = pem::encode(&pem::Pem::new("RSA PUBLIC KEY", public.as_ref()));
    let auth = Authenticator::from_pem(pkcs1.as_bytes(), &cfg()).expect("pkcs1 accepted");
    verify(&auth, &sign(pair(0), None, &base_claims()))
        .await
        .expect("verifies with PKCS#1 key");

    let private = Authenticator::from_pem(pair(0).private.as_bytes(), &cfg());
    let msg = private.expect_err("private key refused").to_string();
    assert!(msg.contains("private key"), "{msg}");
    assert!(!msg.contains("BEGIN"), "must not echo key material: {msg}");

    for bad in [
        &b"not a pem"[..],
        b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
    ] {
        assert!(Authenticator::from_pem(bad, &cfg()).is_err());
    }

    // An EC public key is not an RSA key.
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let ec = aws_lc_rs::signature::EcdsaKeyPair::generate_pkcs8(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &rng,
    )
    .expect("ec");
    let ec = aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        ec.as_ref(),
    )
    .expect("ec");
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::signature::KeyPair as _;
    let ec_spki = ec.public_key().as_der().expect("der");
    let ec_pem = pem::encode(&pem::Pem::new("PUBLIC KEY", ec_spki.as_ref()));
    assert!(Authenticator::from_pem(ec_pem.as_bytes(), &cfg()).is_err());
}

#[tokio::test]
async fn public_key_file_setting() {
    let dir = temp_dir("pemfile");
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("jwt.pub");
    std::fs::write(&file, &pair(0).public).expect("write");
    let auth = Authenticator::from_config(&JwtConfig {
        public_key_file: Some(file.clone()),
        ..cfg()
    })
    .await
    .expect("from file");
    assert_eq!(auth.mode(), KeyMode::Pem);
    verify(&auth, &sign(pair(0), None, &base_claims()))
        .await
        .expect("valid");

    let missing = dir.join("nope.pem");
    let err = Authenticator::from_config(&JwtConfig {
        public_key_file: Some(missing.clone()),
        ..cfg()
    })
    .await
    .expect_err("missing file");
    assert!(matches!(err, AuthSetupError::ReadFile { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("nope.pem") && msg.contains("JWT_PUBLIC_KEY_FILE"),
        "{msg}"
    );

    std::fs::write(&file, "garbage").expect("write");
    let err = Authenticator::from_config(&JwtConfig {
        public_key_file: Some(file.clone()),
        ..cfg()
    })
    .await
    .expect_err("bad file");
    assert!(
        matches!(err, AuthSetupError::InvalidKeyFile { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("jwt.pub"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn jwk_export() {
    let jwk = public_jwk(pair(0).public.as_bytes(), "k1").expect("jwk");
    assert_eq!(jwk["kty"], "RSA");
    assert_eq!(jwk["kid"], "k1");
    assert_eq!(jwk["alg"], "RS256");
    assert_eq!(jwk["use"], "sig");
    assert_eq!(jwk["e"], "AQAB");
    let n = jwk["n"].as_str().expect("n");
    // 2048-bit modulus, no leading zero: 256 bytes -> 342 base64url chars.
    assert_eq!(n.len(), 342, "{n}");
    assert!(jwk.get("d").is_none());
}

// ---------------------------------------------------------------- JWKS

struct ServerState {
    doc: Mutex<Value>,
    up: AtomicBool,
    hits: AtomicUsize,
    delay_ms: AtomicU64,
}

struct JwksServer {
    state: Arc<ServerState>,
    url: String,
}

impl JwksServer {
    async fn start(doc: Value) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        Self::serve_on(listener, addr, doc)
    }

    fn serve_on(listener: tokio::net::TcpListener, addr: SocketAddr, doc: Value) -> Self {
        let state = Arc::new(ServerState {
            doc: Mutex::new(doc),
            up: AtomicBool::new(true),
            hits: AtomicUsize::new(0),
            delay_ms: AtomicU64::new(0),
        });
        let app = axum::Router::new()
            .route("/.well-known/jwks.json", get(jwks_handler))
            .with_state(Arc::clone(&state));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            state,
            url: format!("http://{addr}/.well-known/jwks.json"),
        }
    }

    fn set(&self, doc: Value) {
        *self.state.doc.lock().expect("lock") = doc;
    }

    fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    fn cfg(&self) -> JwtConfig {
        JwtConfig {
            // The mock auth service: plain http on loopback, allowed as an internal host.
            jwks_url: Some(self.url.clone()),
            jwks_min_refetch_secs: 0,
            jwks_timeout_ms: 2000,
            ..cfg()
        }
    }
}

async fn jwks_handler(State(state): State<Arc<ServerState>>) -> Response {
    state.hits.fetch_add(1, Ordering::SeqCst);
    let delay = state.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if !state.up.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "down").into_response();
    }
    let doc = state.doc.lock().expect("lock").clone();
    Json(doc).into_response()
}

fn jwks(keys: &[(usize, &str)]) -> Value {
    let keys: Vec<Value> = keys
        .iter()
        .map(|(i, kid)| public_jwk(pair(*i).public.as_bytes(), kid).expect("jwk"))
        .collect();
    json!({ "keys": keys })
}

#[tokio::test]
async fn jwks_rotation() {
    let server = JwksServer::start(jwks(&[(0, "A")])).await;
    let auth = Authenticator::from_config(&server.cfg())
        .await
        .expect("auth");
    assert_eq!(auth.mode(), KeyMode::Jwks);
    assert_eq!(server.hits(), 1, "fetched at start");

    let token_a = sign(pair(0), Some("A"), &base_claims());
    verify(&auth, &token_a).await.expect("kid A");
    verify(&auth, &token_a).await.expect("kid A again");
    assert_eq!(server.hits(), 1, "served from cache");

    // The auth service rotates to key B and drops A.
    server.set(jwks(&[(1, "B")]));
    let token_b = sign(pair(1), Some("B"), &base_claims());
    let caller = verify(&auth, &token_b).await.expect("kid B after refetch");
    assert_eq!(caller.user_id, uid(USER));
    assert_eq!(server.hits(), 2, "one refetch for the unknown kid");

    // A is gone from the new set.
    assert_invalid(verify(&auth, &token_a).await, "retired kid A");

    // Unknown kid, even signed by a known key.
    let token_z = sign(pair(1), Some("zzz"), &base_claims());
    assert_eq!(
        verify(&auth, &token_z).await,
        Err(AuthError::Invalid("Unknown token signing key"))
    );

    // A token claiming kid B but signed by another key.
    let forged = sign(pair(2), Some("B"), &base_claims());
    assert_invalid(verify(&auth, &forged).await, "kid B, wrong key");
}

#[tokio::test]
async fn jwks_kidless_tokens() {
    let server = JwksServer::start(jwks(&[(0, "A")])).await;
    let auth = Authenticator::from_config(&server.cfg())
        .await
        .expect("auth");
    verify(&auth, &sign(pair(0), None, &base_claims()))
        .await
        .expect("no kid, exactly one key");

    server.set(jwks(&[(0, "A"), (1, "B")]));
    // Force the new set in through an unknown kid.
    let _ = verify(&auth, &sign(pair(0), Some("new"), &base_claims())).await;
    assert_eq!(server.hits(), 2);
    assert_invalid(
        verify(&auth, &sign(pair(0), None, &base_claims())).await,
        "no kid, two keys",
    );
    verify(&auth, &sign(pair(1), Some("B"), &base_claims()))
        .await
        .expect("kid B");
}

#[tokio::test]
async fn jwks_ignores_non_rsa_and_non_sig_keys() {
    let mut enc = public_jwk(pair(1).public.as_bytes(), "E").expect("jwk");
    enc["use"] = json!("enc");
    let doc = json!({"keys": [
        {"kty": "oct", "k": URL_SAFE_NO_PAD.encode(pair(0).public.as_bytes()), "kid": "H", "alg": "HS256"},
        {"kty": "EC", "crv": "P-256", "kid": "EC", "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
        enc,
        public_jwk(pair(0).public.as_bytes(), "A").expect("jwk"),
    ]});
    let server = JwksServer::start(doc).await;
    let auth = Authenticator::from_config(&server.cfg())
        .await
        .expect("auth");
    verify(&auth, &sign(pair(0), Some("A"), &base_claims()))
        .await
        .expect("the one RSA sig key");
    // No kid: the only usable key is A, so it is accepted.
    verify(&auth, &sign(pair(0), None, &base_claims()))
        .await
        .expect("only one usable key");
    // The encryption key is not usable for signatures.
    assert_invalid(
        verify(&auth, &sign(pair(1), Some("E"), &base_claims())).await,
        "use=enc key",
    );
    // The oct key with the public PEM as secret: HS256 is refused before any lookup.
    let hs = jsonwebtoken::encode(
        &Header {
            kid: Some("H".into()),
            ..Header::new(Algorithm::HS256)
        },
        &base_claims(),
        &EncodingKey::from_secret(pair(0).public.as_bytes()),
    )
    .expect("hmac");
    assert_eq!(
        verify(&auth, &hs).await,
        Err(AuthError::Invalid("Unsupported token algorithm"))
    );
    // Refused before any key lookup: an unknown kid on a non-RS256 token fetches nothing.
    let fetches = server.hits();
    let hs_unknown = jsonwebtoken::encode(
        &Header {
            kid: Some("never-seen".into()),
            ..Header::new(Algorithm::HS256)
        },
        &base_claims(),
        &EncodingKey::from_secret(b"secret"),
    )
    .expect("hmac");
    assert_invalid(verify(&auth, &hs_unknown).await, "HS256 with unknown kid");
    assert_eq!(server.hits(), fetches);
}

#[tokio::test]
async fn jwks_stale_set_survives_an_outage() {
    let server = JwksServer::start(jwks(&[(0, "A")])).await;
    let auth = Authenticator::from_config(&server.cfg())
        .await
        .expect("auth");
    let token_a = sign(pair(0), Some("A"), &base_claims());
    verify(&auth, &token_a).await.expect("kid A");

    server.state.up.store(false, Ordering::SeqCst);
    // An unknown kid forces a refetch, which fails; the old set must survive it.
    let token_b = sign(pair(1), Some("B"), &base_claims());
    assert_invalid(verify(&auth, &token_b).await, "unknown kid while down");
    assert_eq!(server.hits(), 2, "the refetch was attempted");
    verify(&auth, &token_a)
        .await
        .expect("stale set still works");

    // A broken document (no usable key) does not replace the set either.
    server.state.up.store(true, Ordering::SeqCst);
    server.set(json!({"keys": []}));
    assert_invalid(
        verify(&auth, &token_b).await,
        "unknown kid, empty set served",
    );
    verify(&auth, &token_a).await.expect("still the old set");

    // Back with the rotated key: picked up.
    server.set(jwks(&[(0, "A"), (1, "B")]));
    verify(&auth, &token_b).await.expect("kid B after recovery");
}

#[tokio::test]
async fn jwks_unreachable_at_start() {
    // Reserve a port, then free it so nothing listens there.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let cfg = JwtConfig {
        jwks_url: Some(format!("http://{addr}/.well-known/jwks.json")),
        jwks_min_refetch_secs: 0,
        jwks_timeout_ms: 500,
        ..cfg()
    };
    let auth = Authenticator::from_config(&cfg)
        .await
        .expect("starts without the auth service");
    let token = sign(pair(0), Some("A"), &base_claims());
    assert_eq!(verify(&auth, &token).await, Err(AuthError::KeysUnavailable));

    // The auth service comes up on that address: the first use fetches.
    let listener = tokio::net::TcpListener::bind(addr).await.expect("rebind");
    let server = JwksServer::serve_on(listener, addr, jwks(&[(0, "A")]));
    verify(&auth, &token).await.expect("fetched on first use");
    assert_eq!(server.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jwks_unknown_kid_flood_is_throttled() {
    let server = JwksServer::start(jwks(&[(0, "A")])).await;
    let auth = Authenticator::from_config(&JwtConfig {
        jwks_min_refetch_secs: 60,
        ..server.cfg()
    })
    .await
    .expect("auth");
    assert_eq!(server.hits(), 1);
    let tokens: Vec<String> = (0..50)
        .map(|i| sign(pair(0), Some(&format!("random-{i}")), &base_claims()))
        .collect();
    let results = futures::future::join_all(tokens.iter().map(|t| {
        let auth = auth.clone();
        async move { auth.verify(t).await }
    }))
    .await;
    assert!(
        results
            .iter()
            .all(|r| matches!(r, Err(AuthError::Invalid(_))))
    );
    assert_eq!(
        server.hits(),
        1,
        "no refetch within jwks_min_refetch_secs of the last fetch"
    );
    verify(&auth, &sign(pair(0), Some("A"), &base_claims()))
        .await
        .expect("known kid unaffected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jwks_concurrent_refetches_coalesce() {
    let server = JwksServer::start(jwks(&[(0, "A")])).await;
    let auth = Authenticator::from_config(&server.cfg())
        .await
        .expect("auth");
    assert_eq!(server.hits(), 1);
    server.set(jwks(&[(0, "A"), (1, "B")]));
    server.state.delay_ms.store(300, Ordering::SeqCst);

    let token_b = sign(pair(1), Some("B"), &base_claims());
    let handles: Vec<_> = (0..20)
        .map(|_| {
            let auth = auth.clone();
            let token = token_b.clone();
            tokio::spawn(async move { auth.verify(&token).await })
        })
        .collect();
    for h in handles {
        h.await.expect("join").expect("kid B verifies");
    }
    assert_eq!(server.hits(), 2, "twenty callers, one fetch");
}

#[tokio::test]
async fn jwks_expired_cache_refreshes_in_background() {
    let server = JwksServer::start(jwks(&[(0, "A")])).await;
    let auth = Authenticator::from_config(&JwtConfig {
        jwks_cache_secs: 1,
        ..server.cfg()
    })
    .await
    .expect("auth");
    let token_a = sign(pair(0), Some("A"), &base_claims());
    verify(&auth, &token_a).await.expect("kid A");
    server.set(jwks(&[(1, "B")]));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // Expired but still served at once; a refresh starts behind it.
    verify(&auth, &token_a)
        .await
        .expect("stale set answers immediately");
    for _ in 0..50 {
        if server.hits() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(server.hits(), 2, "background refresh happened");
    tokio::time::sleep(Duration::from_millis(50)).await;
    verify(&auth, &sign(pair(1), Some("B"), &base_claims()))
        .await
        .expect("new key without an unknown-kid refetch");
    assert_eq!(server.hits(), 2);
}

#[tokio::test]
async fn jwks_bad_url_is_a_setup_error() {
    let err = Authenticator::from_config(&JwtConfig {
        jwks_url: Some("not a url".into()),
        ..cfg()
    })
    .await
    .expect_err("bad url");
    assert!(err.to_string().contains("jwks_url"), "{err}");
}

/// SPEC 7: plain http to an internal host (here the auth service on 127.0.0.1) needs no
/// flag; a public host needs https whatever `jwks_allow_http` says.
#[tokio::test]
async fn jwks_over_plain_http_only_to_internal_hosts() {
    let server = JwksServer::start(jwks(&[(0, "A")])).await;
    let auth = Authenticator::from_config(&JwtConfig {
        jwks_allow_http: false,
        ..server.cfg()
    })
    .await
    .expect("plain http to loopback is allowed");
    let token = sign(pair(0), Some("A"), &base_claims());
    verify(&auth, &token)
        .await
        .expect("verified with the fetched key");
    assert!(server.hits() >= 1, "fetched over plain http");
    for allow_http in [false, true] {
        let err = Authenticator::from_config(&JwtConfig {
            jwks_url: Some("http://auth.example.com/.well-known/jwks.json".into()),
            jwks_allow_http: allow_http,
            ..cfg()
        })
        .await
        .expect_err("plain http to a public host is refused");
        let msg = err.to_string();
        assert!(
            msg.contains("https") && msg.contains("auth.example.com"),
            "{msg}"
        );
    }
    for url in ["ftp://auth.example/jwks.json", "file:///etc/jwks.json"] {
        let err = Authenticator::from_config(&JwtConfig {
            jwks_url: Some(url.into()),
            jwks_allow_http: true,
            ..cfg()
        })
        .await
        .expect_err("not http(s)");
        assert!(err.to_string().contains("https"), "{url}: {err}");
    }
}

#[tokio::test]
async fn jwks_redirects_are_not_followed() {
    // The real set is served, but only behind a redirect: it must not be used.
    let server = JwksServer::start(jwks(&[(0, "A")])).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let target = server.url.clone();
    let app = axum::Router::new().route(
        "/jwks.json",
        get(move || {
            let target = target.clone();
            async move { axum::response::Redirect::temporary(&target) }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let auth = Authenticator::from_config(&JwtConfig {
        jwks_url: Some(format!("http://user:s3cret@{addr}/jwks.json")),
        ..server.cfg()
    })
    .await
    .expect("starts; the fetch fails");
    let token = sign(pair(0), Some("A"), &base_claims());
    assert_eq!(verify(&auth, &token).await, Err(AuthError::KeysUnavailable));
    assert_eq!(server.hits(), 0, "the redirect was followed");
}

// ---------------------------------------------------------------- dev mode

#[tokio::test]
async fn dev_keys_are_created_once_and_reused() {
    let dir = temp_dir("dev");
    let first = dev::ensure_keys(&dir).expect("generate");
    assert!(first.generated);
    assert!(first.private_key_path.is_file() && first.public_key_path.is_file());
    assert!(
        !format!("{first:?}").contains("PRIVATE"),
        "Debug must not show the key"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&first.private_key_path)
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "private key mode {mode:o}");
    }
    let second = dev::ensure_keys(&dir).expect("reuse");
    assert!(!second.generated);
    assert_eq!(first.public_pem, second.public_pem);
    assert_eq!(first.private_pem(), second.private_pem());

    // The public file is derived: deleted or tampered with, it comes back right.
    std::fs::remove_file(&first.public_key_path).expect("rm");
    let third = dev::ensure_keys(&dir).expect("reuse");
    assert_eq!(
        std::fs::read_to_string(&third.public_key_path).expect("read"),
        first.public_pem
    );
    std::fs::write(&first.public_key_path, &pair(1).public).expect("write");
    dev::ensure_keys(&dir).expect("reuse");
    assert_eq!(
        std::fs::read_to_string(&third.public_key_path).expect("read"),
        first.public_pem
    );

    // sign_token round-trips through a dev-mode Authenticator.
    let cfg = JwtConfig {
        dev_keys_dir: dir.clone(),
        ..cfg()
    };
    let auth = Authenticator::from_config(&cfg).await.expect("dev mode");
    assert_eq!(auth.mode(), KeyMode::Dev);
    let token =
        dev::sign_token(&dir, uid(OTHER), Role::Admin, Duration::from_secs(3600)).expect("sign");
    let header = jsonwebtoken::decode_header(&token).expect("header");
    assert_eq!(header.alg, Algorithm::RS256);
    assert_eq!(header.kid.as_deref(), Some(dev::DEV_KID));
    let caller = verify(&auth, &token).await.expect("dev token");
    assert_eq!(caller.user_id, uid(OTHER));
    assert!(caller.is_admin);
    assert!(caller.issued_at.is_some());
    let claims: Value = jsonwebtoken::dangerous::insecure_decode_claims(&token).expect("claims");
    assert_eq!(claims["token_type"], "access");
    assert_eq!(claims["role"], "admin");

    let user = dev::sign_token(&dir, uid(USER), Role::User, Duration::from_secs(60)).expect("sign");
    assert!(!verify(&auth, &user).await.expect("user token").is_admin);

    // A token from some other key pair is still refused in dev mode.
    assert_invalid(
        verify(&auth, &sign(pair(0), Some(dev::DEV_KID), &base_claims())).await,
        "foreign key in dev mode",
    );

    // With iss/aud configured, sign_token_for produces tokens that pass them.
    let strict = JwtConfig {
        iss: Some("dev-issuer".into()),
        aud: Some("user-api".into()),
        ..cfg.clone()
    };
    let auth = Authenticator::from_config(&strict).await.expect("dev mode");
    let token =
        dev::sign_token_for(&strict, uid(USER), Role::User, Duration::from_secs(60)).expect("sign");
    verify(&auth, &token).await.expect("iss/aud set");
    assert_invalid(verify(&auth, &user).await, "plain dev token lacks iss/aud");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn dev_keys_concurrent_first_run_agree() {
    let dir = temp_dir("dev-race");
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let dir = dir.clone();
            std::thread::spawn(move || dev::ensure_keys(&dir).expect("ensure").public_pem)
        })
        .collect();
    let pems: Vec<String> = handles
        .into_iter()
        .map(|h| h.join().expect("join"))
        .collect();
    assert!(
        pems.windows(2).all(|w| w[0] == w[1]),
        "all processes use one key"
    );
    let on_disk = dev::ensure_keys(&dir).expect("ensure");
    assert_eq!(on_disk.public_pem, pems[0]);
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .expect("dir")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temp files left behind");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn dev_keys_corrupt_private_key_is_reported() {
    let dir = temp_dir("dev-corrupt");
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join(dev::PRIVATE_KEY_FILE), "garbage").expect("write");
    let err = dev::ensure_keys(&dir).expect_err("corrupt key");
    let msg = err.to_string();
    assert!(msg.contains(dev::PRIVATE_KEY_FILE), "{msg}");
    let _ = std::fs::remove_dir_all(&dir);
}
