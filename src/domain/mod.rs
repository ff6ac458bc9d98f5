//! Domain types: parsed and validated values, so handlers and stores never see raw input.

mod document;
mod email;
mod profile;
mod profile_fields;
mod profile_id;
mod user_id;

pub use document::{Document, DocumentKind, JsonObject};
pub use email::Email;
pub use profile::{
    FIELDS, FieldChange, NewProfile, Profile, ProfileEntryShape, ProfileInput, ProfilePatch,
    ProfilePatchInput, parse_date, timestamp,
};
pub use profile_fields::{
    AnyString, ChangeVisitor, ColumnVisitor, Fake, FakeSource, FieldSpec, FieldType, FieldVisitor,
};
pub use profile_id::ProfileId;
pub use user_id::UserId;

/// A client-supplied value that fails validation; always answered with 422.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{field}: {reason}")]
pub struct ValidationError {
    /// The offending field, as the client named it.
    pub field: String,
    /// Why it was refused, phrased for the client.
    pub reason: String,
}

impl ValidationError {
    /// Builds an error for `field`.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Longest text field accepted, in characters (address has its own limit).
pub const MAX_TEXT_CHARS: usize = 255;
/// Longest address accepted, in characters.
pub const MAX_ADDRESS_CHARS: usize = 1000;

/// Checks a free-text field: length in characters and no NUL (PostgreSQL text cannot hold one).
pub fn check_text(field: &str, value: &str, max_chars: usize) -> Result<(), ValidationError> {
    if value.chars().count() > max_chars {
        return Err(ValidationError::new(
            field,
            format!("must be at most {max_chars} characters"),
        ));
    }
    if value.contains('\0') {
        return Err(ValidationError::new(
            field,
            "must not contain NUL characters",
        ));
    }
    Ok(())
}
