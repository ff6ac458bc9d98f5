//! Which policy a request is counted under, and the `<endpoint>` part of its key.
//!
//! Classification works on the method and the axum route template (`MatchedPath`),
//! never on the raw path: ids in a path must not be able to mint new counters.

use std::fmt;

use axum::http::Method;

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

    /// The policy of an authenticated request and the `<endpoint>` of its key, or `None`
    /// for routes that are not limited (ops routes, docs).
    ///
    /// `HEAD` is a `GET` (axum serves it with the GET handler). A method a route does not
    /// serve (405) is counted under the policy that owns that template's key, so the
    /// default policy can never share a counter key with a named one.
    pub fn classify(method: &Method, template: &str) -> Option<(Policy, String)> {
        let read = *method == Method::GET || *method == Method::HEAD;
        let policy = match template {
            "/api/profiles/{user_id}"
            | "/api/profiles/me"
            | "/api/v1/profiles/me"
            | "/api/profiles/{user_id}/settings"
            | "/api/profiles/{user_id}/preferences"
            | "/profile" => {
                if read {
                    Self::ProfilesRead
                } else {
                    Self::ProfilesUpdate
                }
            }
            "/api/profiles" => {
                if *method == Method::POST {
                    Self::ProfilesUpdate
                } else {
                    // `/api/profiles` is the read policy's key: a stray method on it counts there.
                    Self::ProfilesRead
                }
            }
            "/api/profiles/batch" => Self::ProfilesBatch,
            t if t.starts_with("/api/") => return Some((Self::Default, t.to_owned())),
            _ => return None,
        };
        Some((policy, policy.endpoint().to_owned()))
    }

    /// The fixed `<endpoint>` of a named policy (the default policy uses the route template).
    fn endpoint(self) -> &'static str {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn class(m: Method, t: &str) -> Option<(&'static str, String)> {
        Policy::classify(&m, t).map(|(p, e)| (p.name(), e))
    }

    #[test]
    fn routes_map_to_their_policies() {
        let read = Some(("profiles-read", "/api/profiles".to_owned()));
        let update = Some(("profiles-update", "/api/profiles/update".to_owned()));
        assert_eq!(class(Method::GET, "/api/profiles/{user_id}"), read);
        assert_eq!(class(Method::HEAD, "/api/profiles/{user_id}"), read);
        assert_eq!(class(Method::GET, "/api/profiles/me"), read);
        assert_eq!(class(Method::GET, "/api/profiles/{user_id}/settings"), read);
        assert_eq!(
            class(Method::GET, "/api/profiles/{user_id}/preferences"),
            read
        );
        assert_eq!(class(Method::GET, "/profile"), read);
        assert_eq!(class(Method::GET, "/api/v1/profiles/me"), read);
        assert_eq!(class(Method::PUT, "/api/v1/profiles/me"), update);
        assert_eq!(class(Method::PUT, "/api/profiles/me"), update);
        assert_eq!(class(Method::PATCH, "/api/profiles/me"), update);
        assert_eq!(class(Method::DELETE, "/profile"), update);
        assert_eq!(class(Method::POST, "/api/profiles"), update);
        assert_eq!(class(Method::PUT, "/api/profiles/{user_id}"), update);
        assert_eq!(class(Method::PATCH, "/api/profiles/{user_id}"), update);
        assert_eq!(class(Method::DELETE, "/api/profiles/{user_id}"), update);
        assert_eq!(
            class(Method::PUT, "/api/profiles/{user_id}/settings"),
            update
        );
        assert_eq!(
            class(Method::PUT, "/api/profiles/{user_id}/preferences"),
            update
        );
        assert_eq!(class(Method::POST, "/profile"), update);
        assert_eq!(class(Method::PUT, "/profile"), update);
        assert_eq!(
            class(Method::POST, "/api/profiles/batch"),
            Some(("profiles-batch", "/api/profiles/batch".to_owned()))
        );
        assert_eq!(
            class(Method::POST, "/api/admin/cache/invalidate/{user_id}"),
            Some((
                "default",
                "/api/admin/cache/invalidate/{user_id}".to_owned()
            ))
        );
        assert_eq!(class(Method::GET, "/health"), None);
        assert_eq!(class(Method::GET, "/metrics"), None);
        assert_eq!(class(Method::GET, "/openapi.json"), None);
    }

    #[test]
    fn stray_methods_never_share_a_named_key_with_default() {
        assert_eq!(
            class(Method::GET, "/api/profiles").unwrap().0,
            "profiles-read"
        );
        assert_eq!(
            class(Method::GET, "/api/profiles/batch").unwrap().0,
            "profiles-batch"
        );
    }
}
