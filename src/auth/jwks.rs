//! The auth service's JWKS, fetched over HTTP and cached.
//!
//! - A fetched set is trusted for `jwks_cache_secs`; after that it keeps serving while
//!   one background task fetches a fresh one (requests never wait on a routine refresh).
//! - A token naming an unknown `kid` triggers a refetch (the auth service may have
//!   rotated its key), at most once per `jwks_min_refetch_secs` so that a flood of
//!   made-up `kid`s cannot hammer the auth service.
//! - Fetches are single-flight: callers that queue behind a fetch in progress take its
//!   result instead of starting their own.
//! - A failed fetch keeps the previous set; only when no set was ever fetched does a
//!   token get [`AuthError::KeysUnavailable`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, KeyAlgorithm, KeyOperations, PublicKeyUse};
use jsonwebtoken::{DecodingKey, DecodingKeyKind};
use serde::Deserialize;

use super::keys::MIN_RSA_MODULUS_BYTES;
use super::{AuthError, AuthSetupError};
use crate::config::{JwtConfig, redact_url};

/// Largest JWKS document read; a real one is a few KiB.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// While no set was ever fetched, retry at most this often (or `jwks_min_refetch_secs`
/// if shorter), so an auth-service outage at start-up costs requests little.
const MISSING_SET_RETRY: Duration = Duration::from_secs(1);

/// The usable keys of one fetched set.
struct KeySet {
    by_kid: HashMap<String, DecodingKey>,
    /// Keys published without a `kid`: usable only by tokens without one.
    unnamed: Vec<DecodingKey>,
    fetched_at: Instant,
}

enum KeyMatch {
    Found(DecodingKey),
    UnknownKid,
    /// No `kid` in the token and more than one key to choose from.
    Ambiguous,
}

impl KeySet {
    fn len(&self) -> usize {
        self.by_kid.len() + self.unnamed.len()
    }

    fn find(&self, kid: Option<&str>) -> KeyMatch {
        match kid {
            Some(kid) => match self.by_kid.get(kid) {
                Some(key) => KeyMatch::Found(key.clone()),
                // Issuers that publish one key without a `kid` still stamp one on tokens;
                // the signature check decides, so trying that lone key is safe.
                None if self.by_kid.is_empty() && self.unnamed.len() == 1 => {
                    KeyMatch::Found(self.unnamed[0].clone())
                }
                None => KeyMatch::UnknownKid,
            },
            None if self.len() == 1 => match (self.by_kid.values().next(), self.unnamed.first()) {
                (Some(key), _) | (None, Some(key)) => KeyMatch::Found(key.clone()),
                (None, None) => KeyMatch::Ambiguous,
            },
            None => KeyMatch::Ambiguous,
        }
    }
}

/// The cached JWKS and the machinery to refresh it.
pub(crate) struct JwksCache {
    url: String,
    /// `url` with any credentials hidden, for logs.
    shown_url: String,
    client: reqwest::Client,
    timeout: Duration,
    cache_ttl: Duration,
    min_refetch: Duration,
    current: RwLock<Option<Arc<KeySet>>>,
    /// Held for the whole of a fetch (single-flight); holds when the last one started.
    fetch_lock: tokio::sync::Mutex<Option<Instant>>,
    /// Completed fetch attempts, so a queued caller can tell that one finished meanwhile.
    attempts: AtomicU64,
    background_refresh: AtomicBool,
    /// Bumped whenever a fetched set replaces the current one.
    generation: AtomicU64,
}

impl JwksCache {
    /// Sets up the HTTP client; fetches nothing yet.
    pub(crate) fn new(url: &str, cfg: &JwtConfig) -> Result<Self, AuthSetupError> {
        let parsed =
            reqwest::Url::parse(url).map_err(|e| AuthSetupError::Jwks(format!("bad URL ({e})")))?;
        if cfg.jwks_allow_http {
            tracing::warn!(
                "jwt.jwks_allow_http is ignored: plain http is allowed for internal hosts only, \
                 whatever it says (docs/operations.md)"
            );
        }
        match parsed.scheme() {
            "https" => {}
            "http" if plain_http_allowed(&parsed) => {
                tracing::info!(url = %redact_url(url), "JWKS over plain http to an internal host");
            }
            "http" => {
                return Err(AuthSetupError::Jwks(format!(
                    "JWKS_URL must be https for `{}`: plain http is allowed only to a loopback, \
                     private or link-local address, a name without dots (a compose service) \
                     or host.docker.internal",
                    parsed.host_str().unwrap_or_default()
                )));
            }
            _ => return Err(AuthSetupError::Jwks("must be an https URL".into())),
        }
        let timeout = Duration::from_millis(cfg.jwks_timeout_ms.max(1));
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("user-api/", env!("CARGO_PKG_VERSION")))
            // A redirect could lead anywhere, https to http included: none are followed.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| AuthSetupError::Jwks(format!("HTTP client: {e}")))?;
        Ok(Self {
            url: url.to_owned(),
            shown_url: redact_url(url),
            client,
            timeout,
            cache_ttl: Duration::from_secs(cfg.jwks_cache_secs),
            min_refetch: Duration::from_secs(cfg.jwks_min_refetch_secs),
            current: RwLock::new(None),
            fetch_lock: tokio::sync::Mutex::new(None),
            attempts: AtomicU64::new(0),
            background_refresh: AtomicBool::new(false),
            generation: AtomicU64::new(0),
        })
    }

    /// The start-up fetch: a failure is logged, not fatal.
    pub(crate) async fn initial_fetch(&self) {
        if self.refresh(Duration::ZERO).await.is_none() {
            tracing::warn!(
                url = %self.shown_url,
                "JWKS could not be fetched at start; the service starts anyway and will \
                 fetch it on first use (requests get 503 until then)"
            );
        }
    }

    /// The key a token with this `kid` must be verified with.
    pub(crate) async fn key_for(
        self: &Arc<Self>,
        kid: Option<&str>,
    ) -> Result<DecodingKey, AuthError> {
        let set = match self.snapshot() {
            Some(set) => {
                if set.fetched_at.elapsed() >= self.cache_ttl {
                    self.refresh_in_background();
                }
                set
            }
            None => self
                .refresh(self.min_refetch.min(MISSING_SET_RETRY))
                .await
                .ok_or(AuthError::KeysUnavailable)?,
        };
        match set.find(kid) {
            KeyMatch::Found(key) => Ok(key),
            KeyMatch::Ambiguous => Err(AuthError::Invalid("Token has no key id")),
            KeyMatch::UnknownKid => {
                tracing::debug!(kid, "unknown kid; refetching the JWKS");
                let fresh = self.refresh(self.min_refetch).await.unwrap_or(set);
                match fresh.find(kid) {
                    KeyMatch::Found(key) => Ok(key),
                    _ => Err(AuthError::Invalid("Unknown token signing key")),
                }
            }
        }
    }

    fn snapshot(&self) -> Option<Arc<KeySet>> {
        // A poisoned lock only means a panic elsewhere; the Arc inside is still sound.
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn store(&self, set: KeySet) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(set));
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Starts a background refresh when the set has outlived its cache time (as a key
    /// lookup does), for callers that answer without one.
    pub(crate) fn refresh_if_stale(self: &Arc<Self>) {
        if self
            .snapshot()
            .is_some_and(|set| set.fetched_at.elapsed() >= self.cache_ttl)
        {
            self.refresh_in_background();
        }
    }

    /// Which key set is current: tokens verified under an older one are checked afresh.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Starts one background refresh of an expired set, unless one is already running.
    fn refresh_in_background(self: &Arc<Self>) {
        if self
            .background_refresh
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime to run it on: the stale set serves; an unknown kid still refetches.
            self.background_refresh.store(false, Ordering::Release);
            return;
        };
        let this = Arc::clone(self);
        runtime.spawn(async move {
            this.refresh(this.min_refetch.max(MISSING_SET_RETRY)).await;
            this.background_refresh.store(false, Ordering::Release);
        });
    }

    /// Fetches the set unless a fetch finished while we queued or one started less
    /// than `throttle` ago; returns the set current afterwards.
    async fn refresh(&self, throttle: Duration) -> Option<Arc<KeySet>> {
        let seen = self.attempts.load(Ordering::Acquire);
        let mut last_start = self.fetch_lock.lock().await;
        if self.attempts.load(Ordering::Acquire) != seen {
            return self.snapshot();
        }
        if let Some(started) = *last_start
            && started.elapsed() < throttle
        {
            return self.snapshot();
        }
        let started = Instant::now();
        match self.fetch().await {
            Ok(set) => {
                tracing::info!(url = %self.shown_url, keys = set.len(), "JWKS fetched");
                self.store(set);
            }
            Err(reason) => {
                let stale = self.snapshot().is_some();
                tracing::warn!(url = %self.shown_url, %reason, keeping_previous_set = stale, "JWKS fetch failed");
            }
        }
        // Recorded only once the fetch completed: a cancelled fetch must not throttle the next.
        *last_start = Some(started);
        self.attempts.fetch_add(1, Ordering::AcqRel);
        self.snapshot()
    }

    async fn fetch(&self) -> Result<KeySet, String> {
        let work = async {
            let mut resp = self
                .client
                .get(&self.url)
                .header(reqwest::header::ACCEPT, "application/json")
                .send()
                .await
                .map_err(|e| format!("request failed: {}", e.without_url()))?;
            let status = resp.status();
            if status.is_redirection() {
                return Err(format!("HTTP status {status}: redirects are not followed"));
            }
            if !status.is_success() {
                return Err(format!("HTTP status {status}"));
            }
            let mut body = Vec::new();
            while let Some(chunk) = resp
                .chunk()
                .await
                .map_err(|e| format!("reading body: {}", e.without_url()))?
            {
                if body.len() + chunk.len() > MAX_JWKS_BYTES {
                    return Err(format!("document larger than {MAX_JWKS_BYTES} bytes"));
                }
                body.extend_from_slice(&chunk);
            }
            parse_jwks(&body)
        };
        // reqwest's own timeout already covers this; the outer one is a backstop.
        tokio::time::timeout(self.timeout + Duration::from_millis(100), work)
            .await
            .map_err(|_| "timed out".to_owned())?
    }
}

/// Keeps the RSA signature keys usable with RS256; one odd entry never spoils the set.
fn parse_jwks(body: &[u8]) -> Result<KeySet, String> {
    #[derive(Deserialize)]
    struct RawSet {
        keys: Vec<serde_json::Value>,
    }
    let raw: RawSet = serde_json::from_slice(body).map_err(|_| "not a JWKS document".to_owned())?;
    let mut by_kid = HashMap::new();
    let mut unnamed = Vec::new();
    let mut ignored = 0usize;
    for value in raw.keys {
        match usable_key(value) {
            Some((Some(kid), key)) => {
                by_kid.entry(kid).or_insert(key);
            }
            Some((None, key)) => unnamed.push(key),
            None => ignored += 1,
        }
    }
    if ignored > 0 {
        tracing::debug!(
            ignored,
            "JWKS entries ignored (not RSA signature keys for RS256)"
        );
    }
    if by_kid.is_empty() && unnamed.is_empty() {
        // Most likely a broken response; keeping the previous set is safer than emptying it.
        return Err("no usable RS256 signature key in the set".into());
    }
    Ok(KeySet {
        by_kid,
        unnamed,
        fetched_at: Instant::now(),
    })
}

fn usable_key(value: serde_json::Value) -> Option<(Option<String>, DecodingKey)> {
    let jwk: Jwk = serde_json::from_value(value).ok()?;
    if jwk
        .common
        .public_key_use
        .as_ref()
        .is_some_and(|u| *u != PublicKeyUse::Signature)
    {
        return None;
    }
    if jwk
        .common
        .key_operations
        .as_ref()
        .is_some_and(|ops| !ops.contains(&KeyOperations::Verify))
    {
        return None;
    }
    if jwk
        .common
        .key_algorithm
        .is_some_and(|alg| alg != KeyAlgorithm::RS256)
    {
        return None;
    }
    let AlgorithmParameters::RSA(params) = &jwk.algorithm else {
        return None;
    };
    let key = DecodingKey::from_rsa_components(&params.n, &params.e).ok()?;
    if let DecodingKeyKind::RsaModulusExponent { n, e } = key.kind() {
        let significant = n.iter().skip_while(|b| **b == 0).count();
        if significant < MIN_RSA_MODULUS_BYTES || e.iter().all(|b| *b == 0) {
            return None;
        }
    }
    Some((jwk.common.key_id.clone(), key))
}

/// Whether a JWKS may be fetched over plain http from `url`'s host (SPEC 7): only where
/// the traffic stays inside the machine or the stack's network, so no one on the way can
/// swap the keys. Loopback, private (RFC 1918, fc00::/7) and link-local addresses, a name
/// without dots (`auth`, `localhost`: a compose service or a local name) and
/// `host.docker.internal`; every other name and address needs https.
pub(crate) fn plain_http_allowed(url: &reqwest::Url) -> bool {
    use std::net::{IpAddr, Ipv4Addr};
    fn internal_v4(ip: Ipv4Addr) -> bool {
        ip.is_loopback() || ip.is_private() || ip.is_link_local()
    }
    let Some(host) = url.host_str() else {
        return false;
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => internal_v4(ip),
        Ok(IpAddr::V6(ip)) => {
            let first = ip.segments()[0];
            ip.is_loopback()
                || first & 0xfe00 == 0xfc00 // unique local, fc00::/7
                || first & 0xffc0 == 0xfe80 // link-local, fe80::/10
                || ip.to_ipv4_mapped().is_some_and(internal_v4)
        }
        Err(_) => {
            let name = host.to_ascii_lowercase();
            !name.contains('.') || name == "host.docker.internal"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{generate_rsa_keypair, public_jwk};
    use serde_json::json;

    #[test]
    fn keeps_only_rs256_signature_keys() {
        let (_, public) = generate_rsa_keypair().expect("keygen");
        let good = public_jwk(public.as_bytes(), "a").expect("jwk");
        let mut enc = good.clone();
        enc["use"] = json!("enc");
        enc["kid"] = json!("enc");
        let mut rs512 = good.clone();
        rs512["alg"] = json!("RS512");
        rs512["kid"] = json!("rs512");
        let mut no_kid = good.clone();
        no_kid.as_object_mut().map(|o| o.remove("kid"));
        let body = json!({"keys": [
            good, enc, rs512, no_kid,
            {"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA", "kid": "ec"},
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            {"kty": "RSA", "n": "AQAB", "e": "AQAB", "kid": "tiny"},
            "garbage", 42
        ]});
        let set = parse_jwks(body.to_string().as_bytes()).expect("set");
        assert_eq!(set.by_kid.keys().collect::<Vec<_>>(), vec!["a"]);
        assert_eq!(set.unnamed.len(), 1);
        assert!(matches!(set.find(None), KeyMatch::Ambiguous));
        assert!(matches!(set.find(Some("a")), KeyMatch::Found(_)));
        assert!(matches!(set.find(Some("ec")), KeyMatch::UnknownKid));
    }

    #[test]
    fn lone_kidless_key_serves_any_kid() {
        let (_, public) = generate_rsa_keypair().expect("keygen");
        let mut jwk = public_jwk(public.as_bytes(), "x").expect("jwk");
        jwk.as_object_mut().map(|o| o.remove("kid"));
        let set = parse_jwks(json!({"keys": [jwk]}).to_string().as_bytes()).expect("set");
        assert!(matches!(set.find(Some("anything")), KeyMatch::Found(_)));
        assert!(matches!(set.find(None), KeyMatch::Found(_)));
    }

    #[test]
    fn plain_http_only_to_internal_hosts() {
        #[rustfmt::skip]
        let cases = [
            ("http://127.0.0.1:8002/.well-known/jwks.json", true),
            ("http://127.8.9.10/jwks.json",                true),
            ("http://[::1]:8002/jwks.json",                true),
            ("http://10.0.0.7/jwks.json",                  true),
            ("http://172.16.0.1/jwks.json",                true),
            ("http://172.31.255.254/jwks.json",            true),
            ("http://192.168.1.20/jwks.json",              true),
            ("http://169.254.169.254/jwks.json",           true),
            ("http://[fd12:3456::1]/jwks.json",            true),
            ("http://[fc00::1]/jwks.json",                 true),
            ("http://[fe80::1]/jwks.json",                 true),
            ("http://[::ffff:10.1.2.3]/jwks.json",         true),
            ("http://auth:8002/.well-known/jwks.json",     true),
            ("http://ai-micro-api-auth/jwks.json",         true),
            ("http://localhost:8002/jwks.json",            true),
            ("http://host.docker.internal:8002/jwks.json", true),
            ("http://HOST.DOCKER.INTERNAL/jwks.json",      true),
            ("http://auth.example.com/jwks.json",          false),
            ("http://auth./jwks.json",                     false),
            ("http://evil.host.docker.internal/jwks.json", false),
            ("http://8.8.8.8/jwks.json",                   false),
            ("http://172.32.0.1/jwks.json",                false),
            ("http://192.169.0.1/jwks.json",               false),
            ("http://100.64.0.1/jwks.json",                false),
            ("http://[2001:db8::1]/jwks.json",             false),
            ("http://[::ffff:8.8.8.8]/jwks.json",          false),
            ("http://0.0.0.0/jwks.json",                   false),
        ];
        for (url, allowed) in cases {
            let parsed = reqwest::Url::parse(url).expect(url);
            assert_eq!(plain_http_allowed(&parsed), allowed, "{url}");
        }
    }

    #[test]
    fn refuses_sets_without_usable_keys() {
        assert!(parse_jwks(b"{\"keys\": []}").is_err());
        assert!(parse_jwks(b"not json").is_err());
        assert!(parse_jwks(b"{\"keys\": [{\"kty\": \"oct\", \"k\": \"AA\"}]}").is_err());
    }
}
