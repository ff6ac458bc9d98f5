//! The rate-limit policies and the `<endpoint>` part of their keys. Which route counts
//! under which policy is the route table's business (`crate::api::routes`).

use std::fmt;

use crate::config::RateLimitConfig;

/// The rate-limit policies of SPEC 5.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Policy {
    /// Profile, settings and preferences reads, `/me`, `GET /profile`.
    ProfilesRead,
    /// Every profile write (create, update, delete, documents, `/profile` writes).
    ProfilesUpdate,
    /// `POST /api/profiles/batch`.
    ProfilesBatch,
    /// Any other authenticated `/api` route, one counter per route template.
    Default,
    /// Requests that failed authentication, per client address.
    PerAddress,
}

/// Endpoint of the read policy (the key part, as SPEC 5 names it).
const READ_ENDPOINT: &str = "/api/profiles";
/// Endpoint of the write policy.
const UPDATE_ENDPOINT: &str = "/api/profiles/update";
/// Endpoint of the batch policy.
const BATCH_ENDPOINT: &str = "/api/profiles/batch";

impl Policy {
    /// The name used in headers and documentation.
    pub fn name(self) -> &'static str {
        match self {
            Self::ProfilesRead => "profiles-read",
            Self::ProfilesUpdate => "profiles-update",
            Self::ProfilesBatch => "profiles-batch",
            Self::Default => "default",
            Self::PerAddress => "per-address",
        }
    }

    /// Requests allowed per window under `config`.
    pub fn limit(self, config: &RateLimitConfig) -> u64 {
        match self {
            Self::ProfilesRead => config.profiles_read,
            Self::ProfilesUpdate => config.profiles_update,
            Self::ProfilesBatch => config.profiles_batch,
            Self::Default => config.default,
            Self::PerAddress => config.per_address,
        }
    }

    /// The fixed `<endpoint>` of a named policy (the default policy uses the route template).
    pub fn endpoint(self) -> &'static str {
        match self {
            Self::ProfilesRead => READ_ENDPOINT,
            Self::ProfilesUpdate => UPDATE_ENDPOINT,
            Self::ProfilesBatch => BATCH_ENDPOINT,
            Self::Default | Self::PerAddress => "",
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
