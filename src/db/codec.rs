//! How domain values are stored, per backend, as sqlx types: rows then decode with
//! `FromRow` and statements bind domain values directly, on either backend.
//!
//! | value | PostgreSQL | SQLite (see `migrations/sqlite`) |
//! | --- | --- | --- |
//! | [`UserId`], [`ProfileId`] | `uuid` | lowercase hyphenated text |
//! | [`Email`] | `text` (arrays: `text[]`) | `TEXT` |
//! | [`DbTime`] (written) | `timestamptz` | fixed-width RFC 3339 UTC text, `…SS.ffffffZ`, so text order is time order |
//! | `DateTime<Utc>` (read) | `timestamptz` | any RFC 3339 text (sqlx) |
//! | `NaiveDate` | `date` | `YYYY-MM-DD` (sqlx) |
//! | JSON documents | `jsonb` | JSON text (sqlx `Json`) |

use chrono::{DateTime, SubsecRound, Utc};
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArgumentBuffer, PgHasArrayType, PgTypeInfo, PgValueRef};
use sqlx::sqlite::{SqliteArgumentsBuffer, SqliteTypeInfo, SqliteValueRef};
use sqlx::types::uuid::fmt::Hyphenated;
use sqlx::{Database, Decode, Encode, Postgres, Sqlite, Type};
use uuid::Uuid;

use crate::domain::{Email, ProfileId, UserId};

/// The stored form of a UUID newtype: `uuid` in PostgreSQL, lowercase hyphenated text in
/// SQLite (sqlx's own `Uuid` is a blob there, which `sqlite3` users could not read).
macro_rules! uuid_codec {
    ($ty:ty) => {
        impl Type<Postgres> for $ty {
            fn type_info() -> PgTypeInfo {
                <Uuid as Type<Postgres>>::type_info()
            }
        }

        impl PgHasArrayType for $ty {
            fn array_type_info() -> PgTypeInfo {
                <Uuid as PgHasArrayType>::array_type_info()
            }
        }

        impl Encode<'_, Postgres> for $ty {
            fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
                <Uuid as Encode<Postgres>>::encode_by_ref(&self.as_uuid(), buf)
            }
        }

        impl Decode<'_, Postgres> for $ty {
            fn decode(value: PgValueRef<'_>) -> Result<Self, BoxDynError> {
                <Uuid as Decode<Postgres>>::decode(value).map(<$ty>::from_uuid)
            }
        }

        impl Type<Sqlite> for $ty {
            fn type_info() -> SqliteTypeInfo {
                <Hyphenated as Type<Sqlite>>::type_info()
            }
        }

        impl Encode<'_, Sqlite> for $ty {
            fn encode_by_ref(
                &self,
                buf: &mut SqliteArgumentsBuffer,
            ) -> Result<IsNull, BoxDynError> {
                <Hyphenated as Encode<Sqlite>>::encode_by_ref(&self.as_uuid().hyphenated(), buf)
            }
        }

        impl Decode<'_, Sqlite> for $ty {
            fn decode(value: SqliteValueRef<'_>) -> Result<Self, BoxDynError> {
                <Hyphenated as Decode<Sqlite>>::decode(value)
                    .map(|h| <$ty>::from_uuid(h.into_uuid()))
            }
        }
    };
}

uuid_codec!(UserId);
uuid_codec!(ProfileId);

/// A timestamp as it is written: microseconds (what PostgreSQL keeps), and on SQLite the
/// fixed-width text the schema's ordering relies on (sqlx's own text form varies in width).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DbTime(pub DateTime<Utc>);

impl Type<Postgres> for DbTime {
    fn type_info() -> PgTypeInfo {
        <DateTime<Utc> as Type<Postgres>>::type_info()
    }
}

impl Encode<'_, Postgres> for DbTime {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        <DateTime<Utc> as Encode<Postgres>>::encode_by_ref(&self.0.trunc_subsecs(6), buf)
    }
}

impl Type<Sqlite> for DbTime {
    fn type_info() -> SqliteTypeInfo {
        <String as Type<Sqlite>>::type_info()
    }
}

impl Encode<'_, Sqlite> for DbTime {
    fn encode_by_ref(&self, buf: &mut SqliteArgumentsBuffer) -> Result<IsNull, BoxDynError> {
        <String as Encode<Sqlite>>::encode(self.sqlite_text(), buf)
    }
}

impl DbTime {
    /// The SQLite form: `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
    pub fn sqlite_text(&self) -> String {
        self.0.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
    }
}

// Text on both backends; addresses were validated when written, so reading one back never
// fails on it.
impl<DB: Database> Type<DB> for Email
where
    String: Type<DB>,
{
    fn type_info() -> DB::TypeInfo {
        <String as Type<DB>>::type_info()
    }

    fn compatible(ty: &DB::TypeInfo) -> bool {
        <String as Type<DB>>::compatible(ty)
    }
}

impl<'r, DB: Database> Decode<'r, DB> for Email
where
    String: Decode<'r, DB>,
{
    fn decode(value: DB::ValueRef<'r>) -> Result<Self, BoxDynError> {
        Ok(Email::from_stored(String::decode(value)?))
    }
}

impl<'q, DB: Database> Encode<'q, DB> for Email
where
    for<'a> &'a str: Encode<'q, DB>,
{
    fn encode_by_ref(
        &self,
        buf: &mut <DB as Database>::ArgumentBuffer,
    ) -> Result<IsNull, BoxDynError> {
        self.as_str().encode_by_ref(buf)
    }
}

impl PgHasArrayType for Email {
    fn array_type_info() -> PgTypeInfo {
        <String as PgHasArrayType>::array_type_info()
    }
}
