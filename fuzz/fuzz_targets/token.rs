//! Token parsing: the `Authorization` header, raw tokens, and claims signed with the
//! real key. Nothing may panic; nothing unsigned may verify; whatever verifies must be
//! what the claims say (a UUID `sub`, a future `exp`, `token_type` absent or `access`,
//! admin only from `role`/`roles`).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use user_api::auth::{self, Authenticator};
use user_api::config::JwtConfig;

struct State {
    rt: tokio::runtime::Runtime,
    auth: Authenticator,
    private_pem: String,
}

fn state() -> &'static State {
    static S: OnceLock<State> = OnceLock::new();
    S.get_or_init(|| {
        let (private_pem, public_pem) = auth::generate_rsa_keypair().expect("keys");
        let auth = Authenticator::from_pem(public_pem.as_bytes(), &JwtConfig::default())
            .expect("authenticator");
        State {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime"),
            auth,
            private_pem,
        }
    })
}

fn admin_claimed(claims: &Value) -> bool {
    let is_admin = |v: &Value| matches!(v.as_str(), Some("admin" | "super_admin"));
    claims.get("role").is_some_and(is_admin)
        || claims
            .get("roles")
            .and_then(Value::as_array)
            .is_some_and(|roles| roles.iter().any(is_admin))
}

fuzz_target!(|data: &[u8]| {
    let s = state();
    if let Ok(text) = std::str::from_utf8(data) {
        // As an Authorization header value.
        if let Ok(token) = auth::parse_authorization(text) {
            assert!(!token.is_empty() && text.contains(token));
        }
        // As a token: forging one needs the private key.
        let verified = s.rt.block_on(s.auth.verify(text));
        assert!(verified.is_err(), "unsigned input verified: {text:?}");
    }
    // As claims, signed with the real key.
    let Ok(claims) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    if !claims.is_object() {
        return;
    }
    let Ok(token) = auth::sign_rs256(s.private_pem.as_bytes(), None, &claims) else {
        return;
    };
    if let Ok(caller) = s.rt.block_on(s.auth.verify(&token)) {
        let sub = claims["sub"]
            .as_str()
            .expect("a verified token has a string sub");
        assert_eq!(caller.user_id.to_string(), sub.to_ascii_lowercase());
        let exp = claims["exp"]
            .as_f64()
            .expect("a verified token has a numeric exp");
        assert!(
            exp + 61.0 >= chrono::Utc::now().timestamp() as f64,
            "expired: {exp}"
        );
        if let Some(t) = claims.get("token_type").filter(|t| !t.is_null()) {
            assert_eq!(t, "access", "token_type {t} accepted");
        }
        if caller.is_admin {
            assert!(
                admin_claimed(&claims),
                "admin without an admin role: {claims}"
            );
        }
    }
});
