use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::ValidationError;

/// A user's id: always a UUID, printed in canonical lowercase hyphenated form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UserId(Uuid);

impl UserId {
    /// Wraps an already-parsed UUID.
    pub fn from_uuid(id: Uuid) -> Self {
        Self(id)
    }

    /// A fresh random id (v4).
    pub fn random() -> Self {
        Self(Uuid::new_v4())
    }

    /// The inner UUID.
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl FromStr for UserId {
    type Err = ValidationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Only the canonical 36-character form: one id, one spelling, one cache key.
        if s.len() != 36 {
            return Err(ValidationError::new("user_id", "must be a UUID"));
        }
        Uuid::try_parse(s)
            .map(Self)
            .map_err(|_| ValidationError::new("user_id", "must be a UUID"))
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_canonical_and_normalizes_case() {
        let id: UserId = "550E8400-E29B-41D4-A716-446655440000".parse().unwrap();
        assert_eq!(id.to_string(), "550e8400-e29b-41d4-a716-446655440000");
    }

    #[test]
    fn refuses_other_spellings_and_garbage() {
        for bad in [
            "",
            "123",
            "550e8400e29b41d4a716446655440000",
            "{550e8400-e29b-41d4-a716-446655440000}",
            "550e8400-e29b-41d4-a716-44665544000g",
            "'; DROP TABLE profiles; --",
        ] {
            assert!(bad.parse::<UserId>().is_err(), "{bad} accepted");
        }
    }
}
