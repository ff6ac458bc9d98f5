//! The events a write records in its outbox row (SPEC 7), published after the commit by
//! `crate::service` (events out). Built here, in the write's transaction, so the payload's
//! `timestamp` is the write's own time and the row commits (or rolls back) with it.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::json;

use crate::domain::{NewProfile, ProfilePatch, UserId};

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

/// The fields a create sets (those it has a value for), in declaration order.
pub fn created_fields(new: &NewProfile) -> Vec<&'static str> {
    [
        ("first_name", new.first_name.is_some()),
        ("last_name", new.last_name.is_some()),
        ("name", new.name.is_some()),
        ("email", new.email.is_some()),
        ("phone", new.phone.is_some()),
        ("address", new.address.is_some()),
        ("date_of_birth", new.date_of_birth.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, set)| set.then_some(name))
    .collect()
}

/// The fields a patch sets (a value, or `null` to clear), in declaration order.
pub fn patched_fields(patch: &ProfilePatch) -> Vec<&'static str> {
    [
        ("first_name", patch.first_name.changes()),
        ("last_name", patch.last_name.changes()),
        ("name", patch.name.changes()),
        ("email", patch.email.changes()),
        ("phone", patch.phone.changes()),
        ("address", patch.address.changes()),
        ("date_of_birth", patch.date_of_birth.changes()),
    ]
    .into_iter()
    .filter_map(|(name, set)| set.then_some(name))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::FieldChange;

    #[test]
    fn updated_fields_are_the_fields_set_in_declaration_order() {
        let patch = ProfilePatch {
            phone: FieldChange::Clear,
            name: FieldChange::Set("n".into()),
            ..ProfilePatch::default()
        };
        assert_eq!(patched_fields(&patch), ["name", "phone"]);
        assert!(patched_fields(&ProfilePatch::default()).is_empty());
        let new = NewProfile {
            address: Some("a".into()),
            first_name: Some("f".into()),
            ..NewProfile::default()
        };
        assert_eq!(created_fields(&new), ["first_name", "address"]);
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
