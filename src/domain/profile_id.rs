use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A profile's own id (`"id"` in the JSON): a UUID the service generates when it creates
/// the row, distinct from the owner's [`super::UserId`]. The Python service's table keys
/// its rows by it, so a database taken over keeps every row's id; clients never set it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ProfileId(Uuid);

impl ProfileId {
    /// Wraps an already-parsed UUID.
    pub fn from_uuid(id: Uuid) -> Self {
        Self(id)
    }

    /// A fresh random id (v4), as a create generates it.
    pub fn random() -> Self {
        Self(Uuid::new_v4())
    }

    /// The inner UUID.
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl fmt::Display for ProfileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}
