use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{
    Email, MAX_ADDRESS_CHARS, MAX_TEXT_CHARS, ProfileId, UserId, ValidationError, check_text,
};

/// A stored profile, exactly as the API and the cache show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct Profile {
    /// The profile's own id, generated on create; read-only (a body that sends it is 422).
    #[schema(value_type = String, format = Uuid, read_only)]
    pub id: ProfileId,
    /// The owner's id (the `sub` of their tokens).
    #[schema(value_type = String, format = Uuid)]
    pub user_id: UserId,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    /// Display name.
    pub name: Option<String>,
    #[schema(value_type = Option<String>, format = Email)]
    pub email: Option<Email>,
    pub phone: Option<String>,
    pub address: Option<String>,
    pub date_of_birth: Option<NaiveDate>,
    /// Set by the service from the owner's token `iat`; read-only in the API.
    #[serde(with = "timestamp::option")]
    pub last_login: Option<DateTime<Utc>>,
    #[serde(with = "timestamp")]
    pub created_at: DateTime<Utc>,
    #[serde(with = "timestamp")]
    pub updated_at: DateTime<Utc>,
}

/// A validated create request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewProfile {
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub name: Option<String>,
    pub email: Option<Email>,
    pub phone: Option<String>,
    pub address: Option<String>,
    pub date_of_birth: Option<NaiveDate>,
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

/// A validated partial update.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProfilePatch {
    pub first_name: FieldChange<String>,
    pub last_name: FieldChange<String>,
    pub name: FieldChange<String>,
    pub email: FieldChange<Email>,
    pub phone: FieldChange<String>,
    pub address: FieldChange<String>,
    pub date_of_birth: FieldChange<NaiveDate>,
}

impl ProfilePatch {
    /// True when the patch changes nothing.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// The fields a patch sets (what an upsert inserts when there is no row yet): a kept or
/// cleared field is empty.
impl From<&ProfilePatch> for NewProfile {
    fn from(patch: &ProfilePatch) -> Self {
        NewProfile {
            first_name: patch.first_name.new_value().cloned(),
            last_name: patch.last_name.new_value().cloned(),
            name: patch.name.new_value().cloned(),
            email: patch.email.new_value().cloned(),
            phone: patch.phone.new_value().cloned(),
            address: patch.address.new_value().cloned(),
            date_of_birth: patch.date_of_birth.new_value().copied(),
        }
    }
}

/// The body of `POST /api/profiles` as sent.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfileInput {
    /// Must equal the caller's id unless the caller is an admin; defaults to it.
    #[schema(value_type = Option<String>, format = Uuid)]
    pub user_id: Option<String>,
    #[schema(value_type = Option<String>, max_length = 255, pattern = "^[^\\u0000]*$")]
    pub first_name: Option<String>,
    #[schema(value_type = Option<String>, max_length = 255, pattern = "^[^\\u0000]*$")]
    pub last_name: Option<String>,
    #[schema(value_type = Option<String>, max_length = 255, pattern = "^[^\\u0000]*$")]
    pub name: Option<String>,
    #[schema(value_type = Option<String>, format = Email, max_length = 255)]
    pub email: Option<String>,
    #[schema(value_type = Option<String>, max_length = 255, pattern = "^[^\\u0000]*$")]
    pub phone: Option<String>,
    #[schema(value_type = Option<String>, max_length = 1000, pattern = "^[^\\u0000]*$")]
    pub address: Option<String>,
    /// `YYYY-MM-DD`.
    #[schema(value_type = Option<String>, format = Date)]
    pub date_of_birth: Option<String>,
}

impl ProfileInput {
    /// Validates every field; the id is returned parsed when one was sent.
    pub fn validate(self) -> Result<(Option<UserId>, NewProfile), ValidationError> {
        let user_id = self.user_id.as_deref().map(str::parse).transpose()?;
        let profile = NewProfile {
            first_name: text("first_name", self.first_name, MAX_TEXT_CHARS)?,
            last_name: text("last_name", self.last_name, MAX_TEXT_CHARS)?,
            name: text("name", self.name, MAX_TEXT_CHARS)?,
            email: self.email.as_deref().map(Email::parse).transpose()?,
            phone: text("phone", self.phone, MAX_TEXT_CHARS)?,
            address: text("address", self.address, MAX_ADDRESS_CHARS)?,
            date_of_birth: self.date_of_birth.as_deref().map(parse_date).transpose()?,
        };
        Ok((user_id, profile))
    }
}

/// The body of `PUT`/`PATCH /api/profiles/{id}` as sent: absent leaves alone, `null` clears.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfilePatchInput {
    #[serde(default)]
    #[schema(value_type = Option<String>, max_length = 255, pattern = "^[^\\u0000]*$")]
    pub first_name: FieldChange<String>,
    #[serde(default)]
    #[schema(value_type = Option<String>, max_length = 255, pattern = "^[^\\u0000]*$")]
    pub last_name: FieldChange<String>,
    #[serde(default)]
    #[schema(value_type = Option<String>, max_length = 255, pattern = "^[^\\u0000]*$")]
    pub name: FieldChange<String>,
    #[serde(default)]
    #[schema(value_type = Option<String>, format = Email, max_length = 255)]
    pub email: FieldChange<String>,
    #[serde(default)]
    #[schema(value_type = Option<String>, max_length = 255, pattern = "^[^\\u0000]*$")]
    pub phone: FieldChange<String>,
    #[serde(default)]
    #[schema(value_type = Option<String>, max_length = 1000, pattern = "^[^\\u0000]*$")]
    pub address: FieldChange<String>,
    /// `YYYY-MM-DD`, or `null` to clear.
    #[serde(default)]
    #[schema(value_type = Option<String>, format = Date)]
    pub date_of_birth: FieldChange<String>,
}

impl ProfilePatchInput {
    /// Validates every field that was sent.
    pub fn validate(self) -> Result<ProfilePatch, ValidationError> {
        let t = |field: &'static str, max: usize| {
            move |s: String| check_text(field, &s, max).map(|()| s)
        };
        Ok(ProfilePatch {
            first_name: self.first_name.try_map(t("first_name", MAX_TEXT_CHARS))?,
            last_name: self.last_name.try_map(t("last_name", MAX_TEXT_CHARS))?,
            name: self.name.try_map(t("name", MAX_TEXT_CHARS))?,
            email: self.email.try_map(|s| Email::parse(&s))?,
            phone: self.phone.try_map(t("phone", MAX_TEXT_CHARS))?,
            address: self.address.try_map(t("address", MAX_ADDRESS_CHARS))?,
            date_of_birth: self.date_of_birth.try_map(|s| parse_date(&s))?,
        })
    }
}

impl From<NewProfile> for ProfilePatch {
    fn from(p: NewProfile) -> Self {
        // An upsert from a create-shaped body touches only the fields that were sent.
        ProfilePatch {
            first_name: FieldChange::set_if_some(p.first_name),
            last_name: FieldChange::set_if_some(p.last_name),
            name: FieldChange::set_if_some(p.name),
            email: FieldChange::set_if_some(p.email),
            phone: FieldChange::set_if_some(p.phone),
            address: FieldChange::set_if_some(p.address),
            date_of_birth: FieldChange::set_if_some(p.date_of_birth),
        }
    }
}

fn text(field: &str, v: Option<String>, max: usize) -> Result<Option<String>, ValidationError> {
    if let Some(s) = &v {
        check_text(field, s, max)?;
    }
    Ok(v)
}

/// Parses a strict `YYYY-MM-DD` date that is not in the future.
pub fn parse_date(s: &str) -> Result<NaiveDate, ValidationError> {
    let bad = || ValidationError::new("date_of_birth", "must be a date in the form YYYY-MM-DD");
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
        return Err(ValidationError::new(
            "date_of_birth",
            "must not be in the future",
        ));
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
