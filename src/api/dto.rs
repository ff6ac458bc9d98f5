//! Response bodies shared by several resources, exactly as SPEC section 3 shows them.

use serde::Serialize;
use utoipa::ToSchema;

use crate::domain::{Profile, timestamp};
use crate::service::Lookup;

/// A profile, with `cached_at` when it was served from the cache.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProfileView {
    #[serde(flatten)]
    pub profile: Profile,
    /// RFC 3339; present only on cache hits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cached_at: Option<String>,
}

/// `GET /api/profiles/{id}` and `/me`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProfileRead {
    pub profile: ProfileView,
    /// True on a cache hit.
    pub cached: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cached_at: Option<String>,
}

impl From<Lookup<Profile>> for ProfileRead {
    fn from(l: Lookup<Profile>) -> Self {
        let cached_at = l.cached_at.as_ref().map(timestamp::format);
        Self {
            profile: ProfileView {
                profile: l.value,
                cached_at: cached_at.clone(),
            },
            cached: cached_at.is_some(),
            cached_at,
        }
    }
}

/// `POST /api/profiles`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProfileCreated {
    pub profile: Profile,
}

/// `PUT`/`PATCH /api/profiles/{id}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProfileUpdated {
    /// Always "Profile updated successfully".
    pub message: &'static str,
    pub profile: Profile,
}

/// The body of every error.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub detail: String,
}
