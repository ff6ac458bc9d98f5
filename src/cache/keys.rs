//! The cache's keys: one per user and kind, so an invalidation knows exactly what to replace.

use crate::db::InvalidationScope;
use crate::domain::{DocumentKind, UserId};

/// The cache key of a profile.
pub fn profile_key(id: UserId) -> String {
    format!("cache:profile:{id}")
}

/// The cache key of a settings or preferences document.
pub fn document_key(kind: DocumentKind, id: UserId) -> String {
    format!("cache:{}:{id}", kind.as_str())
}

/// The keys an invalidation of `scope` replaces with markers.
pub fn keys_for(scope: InvalidationScope, id: UserId) -> Vec<String> {
    match scope {
        InvalidationScope::Profile => vec![profile_key(id)],
        InvalidationScope::Document(kind) => vec![document_key(kind, id)],
        InvalidationScope::All => vec![
            profile_key(id),
            document_key(DocumentKind::Settings, id),
            document_key(DocumentKind::Preferences, id),
        ],
    }
}

/// Which entry a key holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Profile,
    Document(DocumentKind),
}

impl Kind {
    /// This kind's key for `id`.
    pub(super) fn key(self, id: UserId) -> String {
        match self {
            Self::Profile => profile_key(id),
            Self::Document(k) => document_key(k, id),
        }
    }

    /// For logs and lock keys.
    pub(super) fn name(self) -> &'static str {
        match self {
            Self::Profile => "profile",
            Self::Document(k) => k.as_str(),
        }
    }
}
