//! The claims this service reads, and how a verified token becomes a [`Caller`].
//!
//! Every field is read as raw JSON so that an unexpected type (a numeric `role`, a
//! string `iat`) is judged here, with a precise refusal, rather than failing
//! deserialization with an opaque error.

use chrono::{DateTime, Utc};
use jsonwebtoken::errors::{Error as JwtError, ErrorKind};
use serde::Deserialize;
use serde_json::Value;

use super::{AuthError, Caller};
use crate::domain::UserId;

/// Roles that make a caller an administrator.
const ADMIN_ROLES: [&str; 2] = ["admin", "super_admin"];

/// The claims this service looks at; `exp`, `nbf`, `iss` and `aud` are checked by
/// jsonwebtoken's `Validation` and not repeated here.
#[derive(Debug, Deserialize)]
pub(crate) struct RawClaims {
    #[serde(default)]
    sub: Option<Value>,
    #[serde(default)]
    iat: Option<Value>,
    #[serde(default)]
    role: Option<Value>,
    #[serde(default)]
    roles: Option<Value>,
    #[serde(default)]
    token_type: Option<Value>,
    #[serde(default)]
    exp: Option<Value>,
    #[serde(default)]
    jti: Option<Value>,
}

impl RawClaims {
    /// `exp` in Unix seconds (jsonwebtoken has already checked it is there and numeric).
    pub(crate) fn exp_secs(&self) -> Option<i64> {
        self.exp
            .as_ref()
            .and_then(parse_numeric_date)
            .map(|d| d.timestamp())
    }

    /// Applies the rules jsonwebtoken does not know: `sub` a UUID, `token_type`,
    /// `iat` not in the future, and the role.
    pub(crate) fn into_caller(self, leeway_secs: u64, token: &str) -> Result<Caller, AuthError> {
        let user_id = match &self.sub {
            Some(Value::String(s)) => s
                .parse::<UserId>()
                .map_err(|_| AuthError::Invalid("Invalid token subject"))?,
            _ => return Err(AuthError::Invalid("Token has no subject")),
        };
        match &self.token_type {
            None => {}
            Some(Value::String(t)) if t == "access" => {}
            Some(_) => return Err(AuthError::Invalid("Not an access token")),
        }
        let issued_at = match &self.iat {
            None => None,
            Some(v) => Some(parse_numeric_date(v).ok_or(AuthError::Invalid("Invalid token"))?),
        };
        if let Some(iat) = issued_at {
            // Capped so that an absurd leeway setting cannot overflow the date arithmetic.
            let leeway = chrono::Duration::seconds(leeway_secs.min(1 << 31) as i64);
            let limit = Utc::now() + leeway;
            if iat > limit {
                return Err(AuthError::Invalid("Token not yet valid"));
            }
        }
        Ok(Caller {
            user_id,
            is_admin: is_admin(self.role.as_ref(), self.roles.as_ref()),
            issued_at,
            token_id: token_id(self.jti.as_ref(), token),
            expires_at: self.exp_secs().unwrap_or(0),
        })
    }
}

/// Length of the token prefix the auth service keys a revocation by when there is no `jti`.
const REVOCATION_PREFIX_CHARS: usize = 50;

/// The name a revocation uses for this token: its `jti` (a string, or a number as the
/// auth service would print it), else its first 50 characters (SPEC 7). A JWT is ASCII,
/// so characters and bytes agree; `get` keeps a malformed one from panicking anyway.
fn token_id(jti: Option<&Value>, token: &str) -> std::sync::Arc<str> {
    match jti {
        Some(Value::String(s)) if !s.is_empty() => s.as_str().into(),
        Some(Value::Number(n)) => n.to_string().into(),
        _ => token.get(..REVOCATION_PREFIX_CHARS).unwrap_or(token).into(),
    }
}

/// `role: "admin"` or `roles: [..., "admin", ...]`; any other shape means not admin.
fn is_admin(role: Option<&Value>, roles: Option<&Value>) -> bool {
    let single = matches!(role, Some(Value::String(r)) if ADMIN_ROLES.contains(&r.as_str()));
    let listed = match roles {
        Some(Value::Array(items)) => items
            .iter()
            .any(|v| matches!(v, Value::String(r) if ADMIN_ROLES.contains(&r.as_str()))),
        // Some issuers put a single role in `roles`.
        Some(Value::String(r)) => ADMIN_ROLES.contains(&r.as_str()),
        _ => false,
    };
    single || listed
}

/// A JWT NumericDate (seconds since the epoch, possibly fractional).
fn parse_numeric_date(v: &Value) -> Option<DateTime<Utc>> {
    let n = v.as_number()?;
    if let Some(secs) = n.as_i64() {
        return DateTime::from_timestamp(secs, 0);
    }
    let f = n.as_f64()?;
    if !f.is_finite() || f.abs() > 1e15 {
        return None;
    }
    let secs = f.floor();
    let nanos = ((f - secs) * 1e9) as u32;
    DateTime::from_timestamp(secs as i64, nanos.min(999_999_999))
}

/// Turns jsonwebtoken's refusal into the short, client-safe reason.
pub(crate) fn map_jwt_error(e: &JwtError) -> AuthError {
    match e.kind() {
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::Invalid("Token not yet valid"),
        ErrorKind::InvalidSignature => AuthError::Invalid("Invalid token signature"),
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            AuthError::Invalid("Unsupported token algorithm")
        }
        ErrorKind::InvalidIssuer => AuthError::Invalid("Invalid token issuer"),
        ErrorKind::InvalidAudience => AuthError::Invalid("Invalid token audience"),
        ErrorKind::MissingRequiredClaim(claim) => match claim.as_str() {
            "exp" => AuthError::Invalid("Token has no expiry"),
            "sub" => AuthError::Invalid("Token has no subject"),
            "iss" => AuthError::Invalid("Invalid token issuer"),
            "aud" => AuthError::Invalid("Invalid token audience"),
            _ => AuthError::Invalid("Invalid token"),
        },
        ErrorKind::InvalidClaimFormat(claim) if claim == "exp" => {
            AuthError::Invalid("Token has no expiry")
        }
        _ => AuthError::Invalid("Invalid token"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn roles_in_every_accepted_shape() {
        assert!(is_admin(Some(&json!("admin")), None));
        assert!(is_admin(Some(&json!("super_admin")), None));
        assert!(!is_admin(Some(&json!("user")), None));
        assert!(!is_admin(Some(&json!("Admin ")), None));
        assert!(!is_admin(Some(&json!(["admin"])), None));
        assert!(is_admin(None, Some(&json!(["user", "super_admin"]))));
        assert!(!is_admin(None, Some(&json!(["user", 1, null]))));
        assert!(!is_admin(None, None));
    }

    #[test]
    fn numeric_dates() {
        assert_eq!(
            parse_numeric_date(&json!(0)).map(|d| d.timestamp()),
            Some(0)
        );
        assert_eq!(
            parse_numeric_date(&json!(1_700_000_000.5)).map(|d| d.timestamp()),
            Some(1_700_000_000)
        );
        assert!(parse_numeric_date(&json!("1700000000")).is_none());
        assert!(parse_numeric_date(&json!(1e300)).is_none());
    }
}
