//! `[auth]`: what authentication does beyond the signature.

use serde::{Deserialize, Serialize};

/// What authentication does beyond the signature (`[auth]`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// When the revocation keys cannot be read (Redis unreachable): `allow` (default,
    /// counted in `auth_revocation_unchecked_total`) or `deny` (503).
    pub revocation_unavailable: RevocationUnavailable,
}

/// What to do with a request whose revocation cannot be checked (store unreachable).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RevocationUnavailable {
    /// Serve it (counted), as browsers soft-fail OCSP: access tokens are short-lived.
    #[default]
    Allow,
    /// Refuse it: a store outage becomes an outage of every authenticated route.
    Deny,
}
