use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::ValidationError;

/// A JSON object as stored in a settings or preferences document.
pub type JsonObject = serde_json::Map<String, serde_json::Value>;

/// Largest serialized settings or preferences document, in bytes.
pub const MAX_DOCUMENT_BYTES: usize = 16 * 1024;

/// Which per-user JSON document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DocumentKind {
    Settings,
    Preferences,
}

impl DocumentKind {
    /// The table name and the JSON key of the response.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Settings => "settings",
            Self::Preferences => "preferences",
        }
    }
}

/// A settings or preferences document of one user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Document {
    pub data: JsonObject,
    /// `None` when the document was never written.
    pub updated_at: Option<DateTime<Utc>>,
}

impl Document {
    /// Checks the size limit and refuses NUL characters anywhere (PostgreSQL jsonb cannot store them).
    pub fn validate(data: &JsonObject) -> Result<(), ValidationError> {
        let text = serde_json::to_string(data).unwrap_or_default();
        if text.len() > MAX_DOCUMENT_BYTES {
            return Err(ValidationError::new(
                "body",
                format!("must serialize to at most {MAX_DOCUMENT_BYTES} bytes"),
            ));
        }
        if text.contains("\\u0000") {
            return Err(ValidationError::new(
                "body",
                "must not contain NUL characters",
            ));
        }
        Ok(())
    }
}
