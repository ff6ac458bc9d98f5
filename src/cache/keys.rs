//! The cache's keys. An entry key (`cache:profile:<id>`, `cache:settings:<id>`,
//! `cache:preferences:<id>`) holds a whole JSON entry or nothing: other services and
//! operators read it. Everything else the protocol needs lives in companion keys whose
//! hash tag is the entry key, so on a Redis Cluster they share the entry's slot and one
//! script can touch them together:
//!
//! * `{<entry>}:state`: the token of the last write (`SET … PX` by every invalidation);
//!   a fill is stored only while it still holds what the reader saw before its database read;
//! * `{<entry>}:missing`: a tombstone, "no such profile", for a short while;
//! * `{<entry>}:refresh`: the cross-instance refresh-ahead lock.

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

/// The entry keys an invalidation of `scope` removes.
pub fn keys_for(scope: InvalidationScope, id: UserId) -> Vec<String> {
    kinds_for(scope)
        .into_iter()
        .map(|kind| kind.key(id))
        .collect()
}

/// The entry kinds an invalidation of `scope` touches.
pub fn kinds_for(scope: InvalidationScope) -> Vec<Kind> {
    match scope {
        InvalidationScope::Profile => vec![Kind::Profile],
        InvalidationScope::Document(kind) => vec![Kind::Document(kind)],
        InvalidationScope::All => vec![
            Kind::Profile,
            Kind::Document(DocumentKind::Settings),
            Kind::Document(DocumentKind::Preferences),
        ],
    }
}

/// Which entry a key holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `cache:profile:<id>`.
    Profile,
    /// `cache:settings:<id>` or `cache:preferences:<id>`.
    Document(DocumentKind),
}

impl Kind {
    /// This kind's entry key for `id`.
    pub fn key(self, id: UserId) -> String {
        match self {
            Self::Profile => profile_key(id),
            Self::Document(k) => document_key(k, id),
        }
    }

    /// The entry key of `id` with its companions.
    pub fn keys(self, id: UserId) -> EntryKeys {
        EntryKeys::new(self.key(id))
    }

    /// For logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::Profile => "profile",
            Self::Document(k) => k.as_str(),
        }
    }
}

/// An entry key and its companion keys (all in the entry's hash slot).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EntryKeys {
    /// The entry itself: whole JSON or absent.
    pub entry: String,
    /// The last write's token.
    pub state: String,
    /// The "no such profile" tombstone.
    pub missing: String,
}

impl EntryKeys {
    /// The companions of `entry`.
    pub fn new(entry: String) -> Self {
        Self {
            state: format!("{{{entry}}}:state"),
            missing: format!("{{{entry}}}:missing"),
            entry,
        }
    }

    /// The refresh-ahead lock of this entry.
    pub fn refresh_lock(&self) -> String {
        format!("{{{}}}:refresh", self.entry)
    }

    /// The three keys in the order every script and MGET takes them.
    pub fn all(&self) -> [&str; 3] {
        [&self.entry, &self.state, &self.missing]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn companions_are_hash_tagged_by_their_entry() {
        // The slot itself is checked against the cluster's rule in `crate::redis`.
        let id = UserId::random();
        for kind in kinds_for(InvalidationScope::All) {
            let k = kind.keys(id);
            let tag = format!("{{{}}}", k.entry);
            assert!(k.state.starts_with(&tag) && k.missing.starts_with(&tag));
            assert!(k.refresh_lock().starts_with(&tag));
            assert!(k.state.starts_with('{') && !k.state.starts_with("cache:"));
        }
        assert_eq!(
            Kind::Profile.keys(id).state,
            format!("{{cache:profile:{id}}}:state")
        );
    }
}
