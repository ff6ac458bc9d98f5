//! Revocations this instance has seen, so they stay enforced while the store cannot be
//! asked (SPEC 7): each token seen revoked (by its own key or its user's), until its `exp`.
//! Bounded, and forgotten as soon as a check finds the keys deleted.

use std::sync::Arc;

use crate::auth::Caller;

/// Most revoked tokens remembered; beyond it the least recently seen go.
const CAPACITY: u64 = 100_000;

/// The revocations seen by this instance.
pub struct Revocations {
    /// Token id → its `exp` (Unix seconds).
    tokens: moka::sync::Cache<Arc<str>, i64>,
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
        }
    }

    /// Books what the store said about `caller`'s token. The common answer (not revoked,
    /// nothing remembered) costs one lookup in an empty map.
    pub fn record(&self, caller: &Caller, revoked: bool) {
        if revoked {
            self.tokens
                .insert(caller.token_id.clone(), caller.expires_at);
        } else if self.tokens.contains_key(&caller.token_id) {
            self.tokens.invalidate(&caller.token_id);
        }
    }

    /// True when `caller`'s token was seen revoked and has not expired.
    pub fn is_revoked(&self, caller: &Caller) -> bool {
        let now = chrono::Utc::now().timestamp();
        self.tokens
            .get(&caller.token_id)
            .is_some_and(|exp| exp > now)
    }
}
