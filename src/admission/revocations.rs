//! Revocations this instance has seen, so they stay enforced while the store cannot be
//! asked (SPEC 7): a revoked token until its `exp`, a revoked user until the store says
//! the key is gone. Bounded, and forgotten as soon as a check finds the key deleted.

use std::time::Duration;

use crate::auth::Caller;
use crate::domain::UserId;

/// Most revoked tokens and users remembered (each); beyond it the least recently seen go.
const CAPACITY: u64 = 100_000;
/// Longest a revoked user is remembered without a fresh answer from the store.
const USER_TTL: Duration = Duration::from_secs(24 * 3600);

/// The revocations seen by this instance.
pub struct Revocations {
    /// Token id → its `exp` (Unix seconds).
    tokens: moka::sync::Cache<std::sync::Arc<str>, i64>,
    users: moka::sync::Cache<UserId, ()>,
}

impl Default for Revocations {
    fn default() -> Self {
        Self::new()
    }
}

impl Revocations {
    /// Nothing seen yet.
    pub fn new() -> Self {
        Self {
            tokens: moka::sync::Cache::builder().max_capacity(CAPACITY).build(),
            users: moka::sync::Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_live(USER_TTL)
                .build(),
        }
    }

    /// Books what the store said about `caller`'s token and user. The common answer
    /// (neither revoked, nothing remembered) costs two lookups in empty maps.
    pub fn record(&self, caller: &Caller, token: bool, user: bool) {
        if token {
            self.tokens
                .insert(caller.token_id.clone(), caller.expires_at);
        } else if self.tokens.contains_key(&caller.token_id) {
            self.tokens.invalidate(&caller.token_id);
        }
        if user {
            self.users.insert(caller.user_id, ());
        } else if self.users.contains_key(&caller.user_id) {
            self.users.invalidate(&caller.user_id);
        }
    }

    /// True when `caller`'s token (before its `exp`) or user was seen revoked.
    pub fn is_revoked(&self, caller: &Caller) -> bool {
        let now = chrono::Utc::now().timestamp();
        self.tokens
            .get(&caller.token_id)
            .is_some_and(|exp| exp > now)
            || self.users.contains_key(&caller.user_id)
    }
}
