//! Bearer-token verification (SPEC §3): RS256 only, keys from a PEM file, a JWKS
//! endpoint or a locally generated dev key pair.
//!
//! The verifier is deliberately strict about the header (only `alg: RS256`, checked
//! before any key is looked up, so `none`, HS256-with-the-public-key and friends never
//! reach a signature routine) and deliberately lenient about what the auth service
//! may add to the claims. Every refusal is an [`AuthError`] whose text is safe to
//! send to the client: it never echoes the token or its contents.
//!
//! Reference: `docs/security.md`.

mod claims;
pub mod dev;
mod jwks;
mod keys;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use crate::config::JwtConfig;
use crate::domain::UserId;

pub use keys::{generate_rsa_keypair, public_jwk, public_pem_from_private, sign_rs256};

use jwks::JwksCache;

/// Longest token accepted; real access tokens are well under 2 KiB, so anything
/// bigger is refused before any parsing work is spent on it.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Most verified tokens remembered (by digest), so a client's next requests skip RS256.
const VERIFIED_CAPACITY: u64 = 100_000;
/// Longest a verified token is trusted without a fresh check: bounds how long a key
/// withdrawn from the JWKS keeps working for tokens already seen.
const VERIFIED_TTL: std::time::Duration = std::time::Duration::from_secs(300);

/// The authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's `sub`.
    pub user_id: UserId,
    /// `role`/`roles` named `admin` or `super_admin`.
    pub is_admin: bool,
    /// The token's `iat`, when it has one (drives `last_login`).
    pub issued_at: Option<DateTime<Utc>>,
    /// What the auth service names this token by when it revokes it: its `jti`, or the
    /// token's first 50 characters when it has none (SPEC 7).
    pub token_id: Arc<str>,
    /// The token's `exp` (Unix seconds): how long a revocation seen must be remembered.
    pub expires_at: i64,
}

impl Caller {
    /// Owners may touch their own data; admins may touch anyone's.
    pub fn may_access(&self, owner: UserId) -> bool {
        self.is_admin || self.user_id == owner
    }
}

/// The role a dev-mode token is minted with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// An ordinary user: only their own data.
    User,
    /// An administrator: everyone's data.
    Admin,
}

impl Role {
    /// The claim value the auth service uses for this role.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "user" => Ok(Role::User),
            "admin" | "super_admin" => Ok(Role::Admin),
            _ => Err(format!("unknown role `{s}` (expected `user` or `admin`)")),
        }
    }
}

/// Why a token was refused. Display is the client-facing message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization: Bearer …` at all (or an empty one).
    #[error("Missing bearer token")]
    Missing,
    /// Past `exp` by more than the leeway.
    #[error("Token expired")]
    Expired,
    /// Anything else wrong with the token; the text is generic on purpose.
    #[error("{0}")]
    Invalid(&'static str),
    /// The auth service revoked the token or its user (`blacklist:*`, SPEC 7).
    #[error("Token has been revoked")]
    Revoked,
    /// JWKS mode and no key set was ever fetched: the auth service is down (503, not 401).
    #[error("Token keys are unavailable")]
    KeysUnavailable,
}

/// Errors at start-up or in the `token` CLI, naming the file or setting at fault.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    /// A configured key file could not be read.
    #[error("cannot read {setting} `{path}`: {source}")]
    ReadFile {
        /// The setting that named the file.
        setting: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O failure.
        #[source]
        source: std::io::Error,
    },
    /// A configured key file was read but holds no usable key.
    #[error("{setting} `{path}` is not a usable RSA public key: {reason}")]
    InvalidKeyFile {
        /// The setting that named the file.
        setting: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A key given in memory (PEM bytes) is unusable.
    #[error("invalid key: {0}")]
    InvalidKey(String),
    /// The dev key directory could not be created, read or written.
    #[error("dev keys in `{path}`: {reason}")]
    DevKeys {
        /// The file or directory at fault.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The system could not generate an RSA key pair.
    #[error("RSA key generation failed")]
    KeyGeneration,
    /// A token could not be signed (bad private key or unserializable claims).
    #[error("token signing failed: {0}")]
    Signing(String),
    /// The JWKS client could not be set up (`jwt.jwks_url`).
    #[error("jwt.jwks_url: {0}")]
    Jwks(String),
}

/// Where the verification keys come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyMode {
    /// `JWT_PUBLIC_KEY_FILE`.
    Pem,
    /// `JWKS_URL`.
    Jwks,
    /// Neither: a generated local key pair.
    Dev,
}

impl fmt::Display for KeyMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyMode::Pem => "pem",
            KeyMode::Jwks => "jwks",
            KeyMode::Dev => "dev",
        })
    }
}

/// Verifies bearer tokens; cheap to clone, shareable across tasks.
#[derive(Clone)]
pub struct Authenticator {
    inner: Arc<AuthenticatorInner>,
}

struct AuthenticatorInner {
    mode: KeyMode,
    source: KeySource,
    validation: Validation,
    leeway_secs: u64,
    /// SHA-256 of tokens that passed a full check → their caller, `exp` (Unix s) and the
    /// key set they were checked with. Only successes are kept, and one is used only
    /// before its `exp` and while its key set is current: a later look gives the answer a
    /// full check would (a token past `exp`, or seen before a JWKS change, is checked
    /// afresh, leeway and all).
    verified: moka::sync::Cache<[u8; 32], Verified>,
}

/// A token that passed a full check.
#[derive(Clone)]
struct Verified {
    caller: Caller,
    exp: i64,
    key_generation: u64,
}

enum KeySource {
    /// One key, whatever `kid` the token names (PEM and dev modes).
    Static(DecodingKey),
    Jwks(Arc<JwksCache>),
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("mode", &self.inner.mode)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// Builds the verifier the configuration asks for: PEM file, JWKS URL or dev mode.
    ///
    /// In JWKS mode an unreachable auth service does not stop start-up: the first
    /// fetch failure is logged and the set is fetched again on first use.
    pub async fn from_config(cfg: &JwtConfig) -> Result<Self, AuthSetupError> {
        const SETTING: &str = "JWT_PUBLIC_KEY_FILE";
        if let Some(path) = &cfg.public_key_file {
            let pem = std::fs::read(path).map_err(|source| AuthSetupError::ReadFile {
                setting: SETTING,
                path: path.clone(),
                source,
            })?;
            let key = keys::decoding_key_from_public_pem(&pem).map_err(|reason| {
                AuthSetupError::InvalidKeyFile {
                    setting: SETTING,
                    path: path.clone(),
                    reason,
                }
            })?;
            tracing::info!(path = %path.display(), "JWT verification key loaded from PEM file");
            return Ok(Self::build(KeyMode::Pem, KeySource::Static(key), cfg));
        }
        if let Some(url) = &cfg.jwks_url {
            let cache = Arc::new(JwksCache::new(url, cfg)?);
            cache.initial_fetch().await;
            return Ok(Self::build(KeyMode::Jwks, KeySource::Jwks(cache), cfg));
        }
        let dev_keys = dev::ensure_keys(&cfg.dev_keys_dir)?;
        let key = keys::decoding_key_from_public_pem(dev_keys.public_pem.as_bytes()).map_err(
            |reason| AuthSetupError::InvalidKeyFile {
                setting: "jwt.dev_keys_dir",
                path: dev_keys.public_key_path.clone(),
                reason,
            },
        )?;
        tracing::warn!(
            dir = %cfg.dev_keys_dir.display(),
            "DEV MODE: no JWT_PUBLIC_KEY_FILE or JWKS_URL set; tokens are verified with a local \
             dev key pair and anyone with access to it can mint them with `user-api token`. \
             Never run like this in production."
        );
        Ok(Self::build(KeyMode::Dev, KeySource::Static(key), cfg))
    }

    /// A verifier for one RSA public key in PEM (SPKI `PUBLIC KEY` or PKCS#1 `RSA PUBLIC KEY`).
    pub fn from_pem(pem: &[u8], cfg: &JwtConfig) -> Result<Self, AuthSetupError> {
        let key = keys::decoding_key_from_public_pem(pem).map_err(AuthSetupError::InvalidKey)?;
        Ok(Self::build(KeyMode::Pem, KeySource::Static(key), cfg))
    }

    fn build(mode: KeyMode, source: KeySource, cfg: &JwtConfig) -> Self {
        ensure_jwt_crypto();
        let mut validation = Validation::new(Algorithm::RS256);
        validation.leeway = cfg.leeway_secs;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        // A configured issuer or audience is always checked, even a blank one (which then
        // matches no token: the configuration refuses blanks, so only a hand-built
        // `JwtConfig` gets here with one, and it fails closed, never open).
        if let Some(iss) = &cfg.iss {
            validation.set_issuer(&[iss.trim()]);
            required.push("iss");
        }
        if mode != KeyMode::Dev {
            for (setting, value) in [("JWT_ISS", &cfg.iss), ("JWT_AUD", &cfg.aud)] {
                if value.is_none() {
                    tracing::warn!(
                        setting,
                        "not set: tokens are accepted whatever their `{}` claim",
                        &setting[4..].to_ascii_lowercase()
                    );
                }
            }
        }
        match &cfg.aud {
            Some(aud) => {
                validation.set_audience(&[aud.trim()]);
                required.push("aud");
            }
            // Without a configured audience, a token naming one is still ours to accept
            // (jsonwebtoken would otherwise refuse every token that carries `aud`).
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        Self {
            inner: Arc::new(AuthenticatorInner {
                mode,
                source,
                validation,
                leeway_secs: cfg.leeway_secs,
                verified: moka::sync::Cache::builder()
                    .max_capacity(VERIFIED_CAPACITY)
                    .time_to_live(VERIFIED_TTL)
                    .build(),
            }),
        }
    }

    /// Where this verifier's keys come from.
    pub fn mode(&self) -> KeyMode {
        self.inner.mode
    }

    /// Verifies a bearer token (without the `Bearer ` prefix) and returns its caller.
    pub async fn verify(&self, token: &str) -> Result<Caller, AuthError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::Invalid("Invalid token"));
        }
        let digest = token_digest(token);
        if let Some(v) = self.inner.verified.get(&digest)
            && Utc::now().timestamp() < v.exp
            && v.key_generation == self.key_generation()
        {
            if let KeySource::Jwks(cache) = &self.inner.source {
                cache.refresh_if_stale();
            }
            return Ok(v.caller);
        }
        self.verify_fully(token, digest).await
    }

    /// The caller of a token that already passed a full check (before its `exp`, under
    /// the current keys), without checking a signature: what a blocked address may still
    /// use, since a token seen valid before is not a guess.
    pub fn remembered(&self, token: &str) -> Option<Caller> {
        let v = self.inner.verified.get(&token_digest(token.trim()))?;
        (Utc::now().timestamp() < v.exp && v.key_generation == self.key_generation())
            .then_some(v.caller)
    }

    /// Changes whenever the verification keys change (a JWKS refetch).
    fn key_generation(&self) -> u64 {
        match &self.inner.source {
            KeySource::Static(_) => 0,
            KeySource::Jwks(cache) => cache.generation(),
        }
    }

    /// The whole check: header, key, signature, standard claims, our claims. Remembers a
    /// success (by digest) for [`Self::verify`].
    async fn verify_fully(&self, token: &str, digest: [u8; 32]) -> Result<Caller, AuthError> {
        // Read before the key lookup: a refetch during this check makes the entry stale.
        let key_generation = self.key_generation();
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| AuthError::Invalid("Invalid token"))?;
        // Before any key lookup: an attacker-chosen algorithm must never pick the routine.
        if header.alg != Algorithm::RS256 {
            tracing::debug!(alg = ?header.alg, "token refused: algorithm not RS256");
            return Err(AuthError::Invalid("Unsupported token algorithm"));
        }
        let key = match &self.inner.source {
            KeySource::Static(key) => key.clone(),
            KeySource::Jwks(cache) => cache.key_for(header.kid.as_deref()).await?,
        };
        let data = jsonwebtoken::decode::<claims::RawClaims>(token, &key, &self.inner.validation)
            .map_err(|e| {
            let err = claims::map_jwt_error(&e);
            tracing::debug!(kid = header.kid.as_deref(), reason = %err, "token refused");
            err
        })?;
        let exp = data.claims.exp_secs();
        let caller = data
            .claims
            .into_caller(self.inner.leeway_secs, token)
            .inspect_err(|err| {
                tracing::debug!(kid = header.kid.as_deref(), reason = %err, "token refused");
            })?;
        tracing::debug!(kid = header.kid.as_deref(), sub = %caller.user_id, "token accepted");
        if let Some(exp) = exp {
            let verified = Verified {
                caller: caller.clone(),
                exp,
                key_generation,
            };
            self.inner.verified.insert(digest, verified);
        }
        Ok(caller)
    }
}

/// SHA-256 of a token: the cache key of a verified token (the token itself is not kept).
fn token_digest(token: &str) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Extracts the token from an `Authorization` header value (`Bearer <token>`, scheme
/// case-insensitive); anything else counts as a missing token.
pub fn parse_authorization(header_value: &str) -> Result<&str, AuthError> {
    let value = header_value.trim();
    let (scheme, rest) = value.split_once(' ').ok_or(AuthError::Missing)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Missing);
    }
    let token = rest.trim();
    if token.is_empty() {
        return Err(AuthError::Missing);
    }
    Ok(token)
}

/// Pins jsonwebtoken to aws-lc-rs: its automatic choice panics at first use if another
/// crate in the build ever enables its `rust_crypto` feature as well.
pub(crate) fn ensure_jwt_crypto() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err only means a provider is already installed, which is what we want.
        let _ = jsonwebtoken::crypto::CryptoProvider::install_default(
            &jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER,
        );
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verifier(private: &str, public: &str) -> (Authenticator, impl Fn(i64) -> String) {
        let cfg = JwtConfig {
            leeway_secs: 0,
            ..JwtConfig::default()
        };
        let auth = Authenticator::from_pem(public.as_bytes(), &cfg).unwrap();
        let private = private.to_owned();
        let sub = UserId::random();
        let mint = move |exp: i64| {
            sign_rs256(
                private.as_bytes(),
                None,
                &serde_json::json!({"sub": sub.to_string(), "exp": exp, "role": "admin"}),
            )
            .unwrap()
        };
        (auth, mint)
    }

    #[tokio::test]
    async fn a_remembered_token_answers_like_a_fresh_check_and_never_past_exp() {
        let (private, public) = generate_rsa_keypair().unwrap();
        let (auth, mint) = verifier(&private, &public);
        let token = mint(Utc::now().timestamp() + 2);
        let first = auth.verify(&token).await.unwrap();
        assert!(first.is_admin);
        assert!(auth.inner.verified.contains_key(&token_digest(&token)));
        assert_eq!(auth.verify(&token).await.unwrap(), first, "remembered");
        // A tampered copy shares no digest with the original: checked, and refused.
        let mut tampered = token.clone();
        tampered.pop();
        assert!(auth.verify(&tampered).await.is_err());
        tokio::time::sleep(std::time::Duration::from_millis(3100)).await;
        assert_eq!(
            auth.verify(&token).await,
            Err(AuthError::Expired),
            "past exp the token is checked afresh"
        );
    }
}
