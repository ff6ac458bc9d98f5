use std::fmt;

use serde::{Deserialize, Serialize};

use super::ValidationError;

/// A syntactically valid e-mail address, kept as the client wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Email(String);

impl Email {
    /// Validates an address: one `@`, a non-empty local part, a dotted domain, no spaces.
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let bad = || ValidationError::new("email", "must be a valid e-mail address");
        if raw.len() > 254 || raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad());
        }
        let (local, domain) = raw.split_once('@').ok_or_else(bad)?;
        if local.is_empty() || local.len() > 64 || domain.contains('@') {
            return Err(bad());
        }
        let labels: Vec<&str> = domain.split('.').collect();
        let label_ok = |l: &&str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_alphanumeric() || c == '-')
        };
        if labels.len() < 2 || !labels.iter().all(label_ok) {
            return Err(bad());
        }
        if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
            return Err(bad());
        }
        Ok(Self(raw.to_owned()))
    }

    /// The address as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_addresses() {
        for ok in [
            "taro@example.com",
            "a.b+tag@sub.example.co.jp",
            "太郎@例え.jp",
        ] {
            assert!(Email::parse(ok).is_ok(), "{ok} refused");
        }
    }

    #[test]
    fn refuses_malformed_addresses() {
        for bad in [
            "",
            "plain",
            "@example.com",
            "a@",
            "a@b",
            "a b@example.com",
            "a@@example.com",
            "a@example..com",
            ".a@example.com",
            "a@-example.com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad} accepted");
        }
    }
}
