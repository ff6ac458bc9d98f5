//! The machinery behind the one list of profile fields (the `profile_fields!` invocation
//! in `profile.rs`, see docs/profile-fields.md): what a field's Rust type must support, what
//! is known of each field at run time, and the macro that turns the list into the profile
//! types. Everything else that names fields (the SQL of both dialects, the batch paths, the
//! cache entry's check, the seed, the events) walks the generated [`FIELDS`] or visitors.
//!
//! [`FIELDS`]: super::profile::FIELDS

use std::fmt::Debug;

use chrono::NaiveDate;
use serde::de::{self, DeserializeOwned, Deserializer, Visitor};
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgHasArrayType;
use sqlx::{Decode, Encode, Postgres, Sqlite, Type};

use super::{Email, FieldChange, ValidationError};

/// A Rust type a profile field may have: stored by both backends (its sqlx impls; see
/// `db::codec`), bound as a PostgreSQL array by the batch insert, shown in JSON by serde.
/// Its JSON form is also the text the SQLite batch insert stores, so it must be the form
/// sqlx's SQLite encoding writes.
pub trait FieldType:
    Clone
    + Debug
    + Eq
    + Send
    + Sync
    + Serialize
    + DeserializeOwned
    + 'static
    + for<'q> Encode<'q, Postgres>
    + Type<Postgres>
    + for<'r> Decode<'r, Postgres>
    + PgHasArrayType
    + for<'q> Encode<'q, Sqlite>
    + Type<Sqlite>
    + for<'r> Decode<'r, Sqlite>
{
    /// What a cache entry may hold for a value of this type, checked without building one.
    type Json: DeserializeOwned;
}

impl FieldType for String {
    type Json = AnyString;
}

impl FieldType for Email {
    type Json = AnyString;
}

impl FieldType for NaiveDate {
    type Json = AnyString;
}

/// Any JSON string, kept nowhere: the type check of a cache entry's field.
#[derive(Debug, Clone, Copy)]
pub struct AnyString;

impl<'de> Deserialize<'de> for AnyString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = AnyString;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<AnyString, E> {
                Ok(AnyString)
            }
        }
        d.deserialize_str(V)
    }
}

/// What the seed puts in a field (`user-api seed`): one coherent fake person per profile,
/// each field showing one side of them. A kind is text the field's check then parses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fake {
    /// Given name, in the person's script.
    GivenName,
    /// Family name.
    FamilyName,
    /// Display name, written as the person's culture writes it.
    FullName,
    /// A unique address at an `example.*` domain.
    Email,
    /// A number reserved for fiction.
    Phone,
    /// A postal address.
    Address,
    /// A date between 1950 and 2007, `YYYY-MM-DD`.
    PastDate,
    /// A short made-up word.
    Word,
}

/// A field as the code sees it at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldSpec {
    /// Name in the API, the JSON, the events and the `profiles` column.
    pub name: &'static str,
    /// Its column type in PostgreSQL (the batch insert casts an array to `<type>[]`).
    pub postgres: &'static str,
    /// Its column type in SQLite.
    pub sqlite: &'static str,
    /// What the seed fills it with.
    pub fake: Fake,
}

/// Sees each field of a profile (or of a create) with its value.
pub trait FieldVisitor {
    /// One field; `None` when it is empty.
    fn field<T: FieldType>(&mut self, spec: &'static FieldSpec, value: Option<&T>);
}

/// Sees each field of a partial update with its change.
pub trait ChangeVisitor {
    /// One field's change.
    fn change<T: FieldType>(&mut self, spec: &'static FieldSpec, change: &FieldChange<T>);
}

/// Sees each field of many profiles as one column.
pub trait ColumnVisitor {
    /// One field's values, a row each.
    fn column<T: FieldType>(&mut self, spec: &'static FieldSpec, values: Vec<Option<&T>>);
}

/// Builds a value of each field from text (the seed's side of [`Fake`]).
pub trait FakeSource {
    /// Text of `kind` for the field, or `None` to leave it empty.
    fn fake(&mut self, spec: &'static FieldSpec) -> Option<String>;
}

/// The check of a free-text field: at most `max` characters, no NUL.
pub fn text(max: usize) -> impl Fn(&'static str, String) -> Result<String, ValidationError> {
    move |field, s| super::check_text(field, &s, max).map(|()| s)
}

/// The check of an e-mail field.
pub fn email(_field: &'static str, s: String) -> Result<Email, ValidationError> {
    Email::parse(&s)
}

/// The check of a date field: strict `YYYY-MM-DD`, not in the future.
pub fn past_date(field: &'static str, s: String) -> Result<NaiveDate, ValidationError> {
    super::profile::parse_date_of(field, &s)
}

/// Turns the list of fields into the profile types. Each entry:
///
/// ```text
/// /// Doc comment (the API field's description).
/// name: RustType {
///     postgres: "column type", sqlite: "column type",
///     check: fn(&'static str, String) -> Result<RustType, ValidationError>,
///     fake: Fake::Kind,
///     schema: (utoipa attributes of the stored field),
///     input: (utoipa attributes of the field as a client sends it, a string),
/// },
/// ```
///
/// Every field is optional (a client may leave it out, or clear it with `null`). The
/// service's own columns (`id`, `user_id`, `last_login`, `created_at`, `updated_at`) are
/// written here once, around the list: each has its own writer, so none is an entry.
macro_rules! profile_fields {
    ($(
        $(#[doc = $doc:literal])*
        $name:ident: $ty:ty {
            postgres: $pg:literal,
            sqlite: $lite:literal,
            check: $check:expr,
            fake: $fake:expr,
            schema: ($($schema:tt)*),
            input: ($($input:tt)*) $(,)?
        }
    ),* $(,)?) => {
        mod spec {
            use super::*;
            $(
                #[allow(non_upper_case_globals)]
                pub(super) const $name: FieldSpec =
                    FieldSpec { name: stringify!($name), postgres: $pg, sqlite: $lite, fake: $fake };
            )*
        }

        /// The fields a client may set, in the order of [`Profile`] (and of its JSON).
        pub static FIELDS: &[FieldSpec] = &[$(spec::$name),*];

        /// A stored profile, exactly as the API and the cache show it.
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
        pub struct Profile {
            /// The profile's own id, generated on create; read-only (a body that sends it is 422).
            #[schema(value_type = String, format = Uuid, read_only)]
            pub id: ProfileId,
            /// The owner's id (the `sub` of their tokens).
            #[schema(value_type = String, format = Uuid)]
            pub user_id: UserId,
            $(
                $(#[doc = $doc])*
                #[schema($($schema)*)]
                pub $name: Option<$ty>,
            )*
            /// Set by the service from the owner's token `iat`; read-only in the API.
            #[serde(with = "timestamp::option")]
            pub last_login: Option<DateTime<Utc>>,
            #[serde(with = "timestamp")]
            pub created_at: DateTime<Utc>,
            #[serde(with = "timestamp")]
            pub updated_at: DateTime<Utc>,
        }

        /// The shape of a whole cache entry of a profile (its JSON plus `cached_at`),
        /// checked without building a [`Profile`]: every field present with a JSON type
        /// the profile allows, nothing else. Made with `Profile` so the two cannot differ.
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct ProfileEntryShape<'a> {
            /// The profile id.
            #[serde(borrow)]
            pub id: Cow<'a, str>,
            /// The owner's id.
            #[serde(borrow)]
            pub user_id: Cow<'a, str>,
            $(
                #[allow(dead_code)] // Read only to check the type.
                $name: Option<<$ty as FieldType>::Json>,
            )*
            #[allow(dead_code)]
            #[serde(borrow)]
            last_login: Option<Cow<'a, str>>,
            #[allow(dead_code)]
            #[serde(borrow)]
            created_at: Cow<'a, str>,
            #[allow(dead_code)]
            #[serde(borrow)]
            updated_at: Cow<'a, str>,
            /// When the entry was stored, as written.
            #[serde(borrow)]
            pub cached_at: Cow<'a, str>,
        }

        /// A validated create request.
        #[derive(Debug, Clone, Default, PartialEq, Eq)]
        pub struct NewProfile {
            $(
                $(#[doc = $doc])*
                pub $name: Option<$ty>,
            )*
        }

        /// A validated partial update.
        #[derive(Debug, Clone, Default, PartialEq, Eq)]
        pub struct ProfilePatch {
            $(
                $(#[doc = $doc])*
                pub $name: FieldChange<$ty>,
            )*
        }

        /// The body of `POST /api/profiles` as sent.
        #[derive(Debug, Default, Deserialize, ToSchema)]
        #[serde(deny_unknown_fields)]
        pub struct ProfileInput {
            /// Must equal the caller's id unless the caller is an admin; defaults to it.
            #[schema(value_type = Option<String>, format = Uuid)]
            pub user_id: Option<String>,
            $(
                $(#[doc = $doc])*
                #[schema(value_type = Option<String>, $($input)*)]
                pub $name: Option<String>,
            )*
        }

        /// The body of `PUT`/`PATCH /api/profiles/{id}` as sent: absent leaves alone, `null` clears.
        #[derive(Debug, Default, Deserialize, ToSchema)]
        #[serde(deny_unknown_fields)]
        pub struct ProfilePatchInput {
            $(
                $(#[doc = $doc])*
                #[serde(default)]
                #[schema(value_type = Option<String>, $($input)*)]
                pub $name: FieldChange<String>,
            )*
        }

        impl Profile {
            /// A profile of `user_id` with a new id, every field empty, never logged in,
            /// created and updated `at`.
            pub fn blank(user_id: UserId, at: DateTime<Utc>) -> Self {
                Self::from_new(ProfileId::random(), user_id, NewProfile::default(), at)
            }

            /// The profile a create of `fields` makes, created and updated `at`.
            pub fn from_new(id: ProfileId, user_id: UserId, fields: NewProfile, at: DateTime<Utc>) -> Self {
                Self {
                    id,
                    user_id,
                    $($name: fields.$name,)*
                    last_login: None,
                    created_at: at,
                    updated_at: at,
                }
            }

            /// Shows each field and its value to `v`, in order.
            pub fn visit_fields(&self, v: &mut impl FieldVisitor) {
                $(v.field(&spec::$name, self.$name.as_ref());)*
            }

            /// Shows each field of `rows` to `v` as a column, in order.
            pub fn visit_columns(rows: &[Profile], v: &mut impl ColumnVisitor) {
                $(v.column(&spec::$name, rows.iter().map(|p| p.$name.as_ref()).collect());)*
            }
        }

        impl NewProfile {
            /// Shows each field and its value to `v`, in order.
            pub fn visit(&self, v: &mut impl FieldVisitor) {
                $(v.field(&spec::$name, self.$name.as_ref());)*
            }

            /// The fields this create sets (those it has a value for), in order.
            pub fn set_fields(&self) -> Vec<&'static str> {
                let mut set = Vec::new();
                $(if self.$name.is_some() { set.push(stringify!($name)); })*
                set
            }

            /// A create filled from `source`, each text parsed by its field's check (text
            /// that fails it leaves the field empty).
            pub fn fake(source: &mut impl FakeSource) -> Self {
                Self {
                    $($name: source.fake(&spec::$name).and_then(|s| ($check)(stringify!($name), s).ok()),)*
                }
            }
        }

        impl ProfilePatch {
            /// True when the patch changes nothing.
            pub fn is_empty(&self) -> bool {
                *self == Self::default()
            }

            /// Shows each field and its change to `v`, in order.
            pub fn visit(&self, v: &mut impl ChangeVisitor) {
                $(v.change(&spec::$name, &self.$name);)*
            }

            /// The fields this patch sets (a value, or `null` to clear), in order.
            pub fn set_fields(&self) -> Vec<&'static str> {
                let mut set = Vec::new();
                $(if self.$name.changes() { set.push(stringify!($name)); })*
                set
            }
        }

        /// The fields a patch sets (what an upsert inserts when there is no row yet): a kept or
        /// cleared field is empty.
        impl From<&ProfilePatch> for NewProfile {
            fn from(patch: &ProfilePatch) -> Self {
                NewProfile { $($name: patch.$name.new_value().cloned(),)* }
            }
        }

        impl From<NewProfile> for ProfilePatch {
            fn from(p: NewProfile) -> Self {
                // An upsert from a create-shaped body touches only the fields that were sent.
                ProfilePatch { $($name: FieldChange::set_if_some(p.$name),)* }
            }
        }

        impl ProfileInput {
            /// Validates every field; the id is returned parsed when one was sent.
            pub fn validate(self) -> Result<(Option<UserId>, NewProfile), ValidationError> {
                let user_id = self.user_id.as_deref().map(str::parse).transpose()?;
                let profile = NewProfile {
                    $($name: self.$name.map(|s| ($check)(stringify!($name), s)).transpose()?,)*
                };
                Ok((user_id, profile))
            }
        }

        impl ProfilePatchInput {
            /// Validates every field that was sent.
            pub fn validate(self) -> Result<ProfilePatch, ValidationError> {
                Ok(ProfilePatch {
                    $($name: self.$name.try_map(|s| ($check)(stringify!($name), s))?,)*
                })
            }
        }
    };
}
pub(crate) use profile_fields;
