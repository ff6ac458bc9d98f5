use std::borrow::Cow;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::profile_fields::{
    ChangeVisitor, ColumnVisitor, Fake, FakeSource, FieldSpec, FieldType, FieldVisitor, email,
    past_date, profile_fields, text,
};
use super::{Email, MAX_ADDRESS_CHARS, MAX_TEXT_CHARS, ProfileId, UserId, ValidationError};

// The one list of profile fields: adding a field is a migration per dialect and an entry
// here (docs/profile-fields.md). JSON, SQL, events and the seed follow this order.
// A table, one entry per field: its entries share a shape on purpose (duplicate finders
// see them as repeats; that is the point of the list).
profile_fields! {
    first_name: String {
        postgres: "text", sqlite: "TEXT", check: text(MAX_TEXT_CHARS), fake: Fake::GivenName,
        schema: (), input: (max_length = 255, pattern = "^[^\\u0000]*$"),
    },
    last_name: String {
        postgres: "text", sqlite: "TEXT", check: text(MAX_TEXT_CHARS), fake: Fake::FamilyName,
        schema: (), input: (max_length = 255, pattern = "^[^\\u0000]*$"),
    },
    /// Display name.
    name: String {
        postgres: "text", sqlite: "TEXT", check: text(MAX_TEXT_CHARS), fake: Fake::FullName,
        schema: (), input: (max_length = 255, pattern = "^[^\\u0000]*$"),
    },
    email: Email {
        postgres: "text", sqlite: "TEXT", check: email, fake: Fake::Email,
        schema: (value_type = Option<String>, format = Email),
        input: (format = Email, max_length = 255),
    },
    phone: String {
        postgres: "text", sqlite: "TEXT", check: text(MAX_TEXT_CHARS), fake: Fake::Phone,
        schema: (), input: (max_length = 255, pattern = "^[^\\u0000]*$"),
    },
    address: String {
        postgres: "text", sqlite: "TEXT", check: text(MAX_ADDRESS_CHARS), fake: Fake::Address,
        schema: (), input: (max_length = 1000, pattern = "^[^\\u0000]*$"),
    },
    /// `YYYY-MM-DD`.
    date_of_birth: NaiveDate {
        postgres: "date", sqlite: "TEXT", check: past_date, fake: Fake::PastDate,
        schema: (), input: (format = Date),
    },
}

/// One field of a partial update: left alone, cleared, or set to a value.
///
/// As a JSON field (with `#[serde(default)]`): absent is `Keep`, `null` is `Clear`, and a
/// value is `Set`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(from = "Option<T>")]
pub enum FieldChange<T> {
    /// Not sent: the stored value stays.
    #[default]
    Keep,
    /// Sent as `null`: the stored value is removed.
    Clear,
    /// Sent with a value: it replaces the stored one.
    Set(T),
}

/// A field that was sent: `null` clears, a value sets.
impl<T> From<Option<T>> for FieldChange<T> {
    fn from(sent: Option<T>) -> Self {
        sent.map_or(Self::Clear, Self::Set)
    }
}

impl<T> FieldChange<T> {
    /// `Set` for a value, `Keep` for none (a create-shaped body touches only what it has).
    pub fn set_if_some(value: Option<T>) -> Self {
        value.map_or(Self::Keep, Self::Set)
    }

    /// True unless the field is left alone.
    pub fn changes(&self) -> bool {
        !matches!(self, Self::Keep)
    }

    /// The value the field gets when it is set; `None` when it is kept or cleared.
    pub fn new_value(&self) -> Option<&T> {
        match self {
            Self::Set(v) => Some(v),
            Self::Keep | Self::Clear => None,
        }
    }

    /// Validates or converts a set value; `Keep` and `Clear` pass through.
    pub fn try_map<U, E>(self, f: impl FnOnce(T) -> Result<U, E>) -> Result<FieldChange<U>, E> {
        Ok(match self {
            Self::Keep => FieldChange::Keep,
            Self::Clear => FieldChange::Clear,
            Self::Set(v) => FieldChange::Set(f(v)?),
        })
    }
}

/// Parses a strict `YYYY-MM-DD` date that is not in the future.
pub fn parse_date(s: &str) -> Result<NaiveDate, ValidationError> {
    parse_date_of("date_of_birth", s)
}

/// [`parse_date`] for the field `field` (which a refusal names).
pub fn parse_date_of(field: &'static str, s: &str) -> Result<NaiveDate, ValidationError> {
    let bad = || ValidationError::new(field, "must be a date in the form YYYY-MM-DD");
    let b = s.as_bytes();
    let shape_ok = b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
    if !shape_ok {
        return Err(bad());
    }
    let date = NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|_| bad())?;
    if date > Utc::now().date_naive() {
        return Err(ValidationError::new(field, "must not be in the future"));
    }
    Ok(date)
}

/// RFC 3339 UTC timestamps with a `Z` suffix, fractions only when present.
pub mod timestamp {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    /// Formats a timestamp the way every response and cache entry shows it.
    pub fn format(t: &DateTime<Utc>) -> String {
        t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
    }

    /// Serde serializer for `DateTime<Utc>`.
    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(t))
    }

    /// Serde deserializer for `DateTime<Utc>`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        DateTime::<Utc>::deserialize(d)
    }

    /// The same for optional timestamps.
    pub mod option {
        use super::*;

        /// Serde serializer for `Option<DateTime<Utc>>`.
        pub fn serialize<S: Serializer>(
            t: &Option<DateTime<Utc>>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match t {
                Some(t) => s.serialize_str(&super::format(t)),
                None => s.serialize_none(),
            }
        }

        /// Serde deserializer for `Option<DateTime<Utc>>`.
        pub fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<DateTime<Utc>>, D::Error> {
            Option::<DateTime<Utc>>::deserialize(d)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_dates() {
        assert!(parse_date("1990-01-01").is_ok());
        for bad in [
            "1990-1-01",
            "1990-13-01",
            "1990-02-30",
            "19900101",
            "1990-01-01T00:00:00",
            "+1990-01-0",
            "3000-01-01",
        ] {
            assert!(parse_date(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn patch_distinguishes_null_from_absent() {
        let p: ProfilePatchInput = serde_json::from_str(r#"{"phone": null, "name": "x"}"#).unwrap();
        let p = p.validate().unwrap();
        assert_eq!(p.phone, FieldChange::Clear);
        assert_eq!(p.name, FieldChange::Set("x".into()));
        assert_eq!(p.email, FieldChange::Keep);
    }

    #[test]
    fn unknown_and_readonly_fields_are_refused() {
        assert!(serde_json::from_str::<ProfilePatchInput>(r#"{"nope": 1}"#).is_err());
        assert!(serde_json::from_str::<ProfilePatchInput>(r#"{"last_login": null}"#).is_err());
        assert!(serde_json::from_str::<ProfileInput>(r#"{"created_at": "x"}"#).is_err());
        let id = r#"{"id": "550e8400-e29b-41d4-a716-446655440000"}"#;
        assert!(serde_json::from_str::<ProfileInput>(id).is_err());
        assert!(serde_json::from_str::<ProfilePatchInput>(id).is_err());
    }

    #[test]
    fn length_limits_count_characters() {
        let ok = ProfileInput {
            name: Some("界".repeat(255)),
            ..Default::default()
        };
        assert!(ok.validate().is_ok());
        let long = ProfileInput {
            name: Some("a".repeat(256)),
            ..Default::default()
        };
        assert!(long.validate().is_err());
        let addr = ProfileInput {
            address: Some("a".repeat(1000)),
            ..Default::default()
        };
        assert!(addr.validate().is_ok());
    }
}
