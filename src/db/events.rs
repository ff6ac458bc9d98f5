//! The events a write records in its outbox row (SPEC 7), published after the commit by
//! `crate::service` (events out). Built here, in the write's transaction, so the payload's
//! `timestamp` is the write's own time and the row commits (or rolls back) with it.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::json;

use crate::domain::UserId;

/// Channel of a committed create or change of a profile.
pub const PROFILE_UPDATED: &str = "profile:updated";
/// Channel of a committed delete.
pub const PROFILE_DELETED: &str = "profile:deleted";

/// An event as recorded in an outbox row: where it goes and what it says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEvent {
    /// The pub/sub channel.
    pub channel: String,
    /// The JSON payload, as published.
    pub payload: String,
}

impl OutboxEvent {
    /// `profile:updated {"user_id", "updated_fields", "timestamp"}`.
    pub fn profile_updated(id: UserId, fields: &[&str], at: DateTime<Utc>) -> Self {
        Self {
            channel: PROFILE_UPDATED.to_owned(),
            payload: json!({
                "user_id": id.to_string(),
                "updated_fields": fields,
                "timestamp": timestamp(at),
            })
            .to_string(),
        }
    }

    /// `profile:deleted {"user_id", "timestamp"}`.
    pub fn profile_deleted(id: UserId, at: DateTime<Utc>) -> Self {
        Self {
            channel: PROFILE_DELETED.to_owned(),
            payload: json!({"user_id": id.to_string(), "timestamp": timestamp(at)}).to_string(),
        }
    }
}

/// RFC 3339 UTC with microseconds (what the database keeps of the write's time).
fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{FieldChange, NewProfile, ProfilePatch};

    #[test]
    fn updated_fields_are_the_fields_set_in_declaration_order() {
        let patch = ProfilePatch {
            phone: FieldChange::Clear,
            name: FieldChange::Set("n".into()),
            ..ProfilePatch::default()
        };
        assert_eq!(patch.set_fields(), ["name", "phone"]);
        assert!(ProfilePatch::default().set_fields().is_empty());
        let new = NewProfile {
            address: Some("a".into()),
            first_name: Some("f".into()),
            ..NewProfile::default()
        };
        assert_eq!(new.set_fields(), ["first_name", "address"]);
    }

    #[test]
    fn payloads_have_the_stack_shape() {
        let id = UserId::random();
        let at = DateTime::parse_from_rfc3339("2026-12-01T10:00:00.5Z")
            .unwrap()
            .with_timezone(&Utc);
        let e = OutboxEvent::profile_updated(id, &["email"], at);
        let v: serde_json::Value = serde_json::from_str(&e.payload).unwrap();
        assert_eq!(
            v,
            json!({"user_id": id.to_string(), "updated_fields": ["email"],
                   "timestamp": "2026-12-01T10:00:00.500000Z"})
        );
        let d = OutboxEvent::profile_deleted(id, at);
        assert_eq!(d.channel, "profile:deleted");
        let v: serde_json::Value = serde_json::from_str(&d.payload).unwrap();
        assert_eq!(
            v,
            json!({"user_id": id.to_string(), "timestamp": "2026-12-01T10:00:00.500000Z"})
        );
    }
}
