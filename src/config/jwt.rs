//! `[jwt]`: token verification (the key source, issuer, audience, JWKS fetching).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::Check;

/// Token verification.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JwtConfig {
    /// `JWT_PUBLIC_KEY_FILE`: PEM RSA public key.
    pub public_key_file: Option<PathBuf>,
    /// `JWKS_URL`: the auth service's JWKS document: https, or plain http to an internal
    /// host (loopback, private, link-local, a name without dots, host.docker.internal).
    pub jwks_url: Option<String>,
    /// No longer used (the host decides whether plain http is allowed); still accepted,
    /// with a warning, so existing configuration files load.
    pub jwks_allow_http: bool,
    /// `JWT_ISS`: required issuer, when set.
    pub iss: Option<String>,
    /// `JWT_AUD`: required audience, when set.
    pub aud: Option<String>,
    /// Clock skew allowed when checking `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
    /// How long a fetched JWKS is trusted before it is fetched again.
    pub jwks_cache_secs: u64,
    /// Shortest pause between two fetches triggered by unknown `kid`s.
    pub jwks_min_refetch_secs: u64,
    /// Longest wait for one JWKS fetch.
    pub jwks_timeout_ms: u64,
    /// Where dev mode keeps its generated key pair.
    pub dev_keys_dir: PathBuf,
}

impl Default for JwtConfig {
    fn default() -> Self {
        Self {
            public_key_file: None,
            jwks_url: None,
            jwks_allow_http: false,
            iss: None,
            aud: None,
            leeway_secs: 60,
            jwks_cache_secs: 3600,
            jwks_min_refetch_secs: 10,
            jwks_timeout_ms: 2000,
            dev_keys_dir: "data/dev-keys".into(),
        }
    }
}

impl JwtConfig {
    #[rustfmt::skip]
    pub(super) fn checks(&self) -> [Check; 6] {
        let one_key_source = self.public_key_file.is_none() || self.jwks_url.is_none();
        let jwks_http = (self.jwks_url.as_ref())
            .is_none_or(|u| u.starts_with("https://") || u.starts_with("http://"));
        let key_file_named =
            (self.public_key_file.as_ref()).is_none_or(|p| !p.as_os_str().is_empty());
        let jwks_named = (self.jwks_url.as_ref()).is_none_or(|u| !u.trim().is_empty());
        // A blank issuer or audience must never mean "not checked" (issue 17).
        let named = |v: &Option<String>| v.as_ref().is_none_or(|v| !v.trim().is_empty());
        [
            // key                  holds                 else
            ("jwt.public_key_file", key_file_named,       "is empty; unset it or name a PEM file"),
            ("jwt.jwks_url",        jwks_named,           "is empty; unset it or name the JWKS URL"),
            ("jwt.iss",             named(&self.iss),     "is empty; remove it to accept any issuer, or name the issuer"),
            ("jwt.aud",             named(&self.aud),     "is empty; remove it to accept any audience, or name this service's audience"),
            ("jwt.public_key_file", one_key_source,       "and jwt.jwks_url are both set; set only one key source"),
            ("jwt.jwks_url",        jwks_http,            "must be an http(s) URL"),
        ]
    }
}
