use std::fmt;

use email_address::{EmailAddress, Options};
use serde::{Deserialize, Serialize};

use super::ValidationError;

/// A syntactically valid e-mail address, kept as the client wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Email(String);

/// The `email_address` crate's RFC 5322/6531 rules, narrowed to what a profile should hold:
/// a bare address (no display name), a domain name with at least two labels (no
/// `[192.0.2.1]` literal), a local part of at most 64 bytes.
const RULES: Options = Options {
    minimum_sub_domains: 2,
    allow_domain_literal: false,
    allow_display_text: false,
    allow_long_local_parts: false,
};

/// Longest address accepted, in bytes (RFC 5321's path limit, less the brackets).
const MAX_BYTES: usize = 254;

impl Email {
    /// Validates an address (see [`RULES`]); refused ones are a 422 naming `email`.
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let valid = raw.len() <= MAX_BYTES
            && !raw.chars().any(char::is_control)
            && EmailAddress::parse_with_options(raw, RULES).is_ok();
        if !valid {
            return Err(ValidationError::new(
                "email",
                "must be a valid e-mail address",
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    /// An address read back from storage. It was checked when written, perhaps under
    /// older rules, and reading it back must not fail because the rules changed since.
    pub fn from_stored(stored: String) -> Self {
        Self(stored)
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
            "o'brien+1@example.com",
            "first.last@xn--bcher-kva.example",
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
            "a@example.com-",
            "a@[192.0.2.1]",
            "Taro <taro@example.com>",
            "a\u{7}b@example.com",
            "tab\t@example.com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad} accepted");
        }
    }
}
