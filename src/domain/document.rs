use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::ValidationError;

/// A JSON object as stored in a settings or preferences document.
pub type JsonObject = serde_json::Map<String, serde_json::Value>;

/// Largest serialized settings or preferences document, in bytes.
pub const MAX_DOCUMENT_BYTES: usize = 16 * 1024;
/// Deepest nesting of objects and arrays accepted in a document (the document itself is 1).
/// Well below serde_json's limit of 128, so a cached entry (one level more) still parses.
pub const MAX_DOCUMENT_DEPTH: usize = 64;

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
        if data.values().map(depth).max().unwrap_or(0) + 1 > MAX_DOCUMENT_DEPTH {
            return Err(ValidationError::new(
                "body",
                format!("must not nest deeper than {MAX_DOCUMENT_DEPTH} levels"),
            ));
        }
        Ok(())
    }
}

/// Nesting depth of a JSON value (scalars are 0).
fn depth(v: &serde_json::Value) -> usize {
    match v {
        serde_json::Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        serde_json::Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(levels: usize) -> JsonObject {
        let text = format!("{}{}", "[".repeat(levels - 1), "]".repeat(levels - 1));
        let mut doc = JsonObject::new();
        doc.insert("a".into(), serde_json::from_str(&text).unwrap());
        doc
    }

    #[test]
    fn depth_limit() {
        assert!(Document::validate(&nested(MAX_DOCUMENT_DEPTH)).is_ok());
        assert!(Document::validate(&nested(MAX_DOCUMENT_DEPTH + 1)).is_err());
    }
}
