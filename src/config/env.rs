//! The plain environment variables: the table of every documented one ([`ENV_VARS`]),
//! how each kind of value is read, and the one rule for a variable that is set but empty.

use super::ConfigError;

/// How a plain variable's value becomes configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvKind {
    /// The value as it is, for the key's own type to parse (a URL, an address, a name).
    Text,
    /// A boolean: `true`/`false`, `1`/`0`, `yes`/`no`, `on`/`off` (any case), nothing else.
    Flag,
    /// Comma-separated; blank items are skipped.
    List,
    /// Read by its own code (the config file's name, the log filter): only the rule for
    /// set-but-empty values applies here.
    Own,
}

/// One documented plain environment variable (`docs/configuration.md`).
#[derive(Debug, Clone, Copy)]
pub struct EnvVar {
    /// The variable, e.g. `JWT_ISS`.
    pub name: &'static str,
    /// The configuration key it sets (`jwt.iss`); empty for [`EnvKind::Own`].
    pub key: &'static str,
    /// How its value is read.
    pub kind: EnvKind,
    /// What a set-but-blank value means, when `docs/configuration.md` documents it; `None` (nearly
    /// every variable): set but blank is an error that names the variable.
    pub when_empty: Option<&'static str>,
}

impl EnvVar {
    const fn new(name: &'static str, key: &'static str, kind: EnvKind) -> Self {
        Self {
            name,
            key,
            kind,
            when_empty: None,
        }
    }

    /// A variable whose value the key's type parses.
    pub const fn text(name: &'static str, key: &'static str) -> Self {
        Self::new(name, key, EnvKind::Text)
    }

    /// A boolean variable.
    pub const fn flag(name: &'static str, key: &'static str) -> Self {
        Self::new(name, key, EnvKind::Flag)
    }

    /// A comma-separated list.
    pub const fn list(name: &'static str, key: &'static str) -> Self {
        Self::new(name, key, EnvKind::List)
    }

    /// A variable read by its own code, checked here only for emptiness.
    pub const fn own(name: &'static str) -> Self {
        Self::new(name, "", EnvKind::Own)
    }

    /// Documents what a set-but-blank value means (`docs/configuration.md` must say the same).
    pub const fn empty_means(mut self, meaning: &'static str) -> Self {
        self.when_empty = Some(meaning);
        self
    }
}

/// Every documented plain variable, in the order they are applied (later wins). Adding
/// one is one line here plus its row in `docs/configuration.md`'s table (`tests/it/settings.rs` checks
/// that the two agree and that set-but-blank fails naming it).
pub const ENV_VARS: &[EnvVar] = &[
    EnvVar::own("USER_API_CONFIG"),
    EnvVar::text("USER_API_ADDR", "addr"),
    EnvVar::flag("USER_API_DEV_MODE", "dev_mode"),
    EnvVar::text("DATABASE_URL", "database_url"),
    EnvVar::text("REDIS_URL", "redis_url"),
    EnvVar::list("REDIS_CLUSTER_URLS", "redis_cluster_urls"),
    EnvVar::text("JWT_PUBLIC_KEY_FILE", "jwt.public_key_file"),
    EnvVar::text("JWKS_URL", "jwt.jwks_url"),
    EnvVar::text("JWT_ISS", "jwt.iss"),
    EnvVar::text("JWT_AUD", "jwt.aud"),
    EnvVar::flag("PREWARM", "prewarm.enabled"),
    EnvVar::text("RATE_LIMIT_FAIL", "rate_limits.fail"),
    EnvVar::list("TRUSTED_PROXIES", "rate_limits.trusted_proxies")
        .empty_means("no proxy is trusted"),
    EnvVar::own("RUST_LOG"),
    // The stack's names (SPEC 7), read by `StackEnv`.
    EnvVar::own("PORT"),
    EnvVar::own("HOST"),
    EnvVar::own("PROFILE_CACHE_TTL_SEC"),
    EnvVar::own("LOG_LEVEL"),
    EnvVar::own("CORS_ORIGINS"),
];

/// Prefix of the `USER_API__<TABLE>__<KEY>` variables, one per configuration key.
pub const KEY_PREFIX: &str = "USER_API__";

/// The one rule for a variable that is set: a blank value is an error naming it, unless
/// `empty_means` documents what blank means (then `""`, for its kind to read).
pub(super) fn set_value<'v>(
    name: &str,
    value: &'v str,
    empty_means: Option<&str>,
) -> Result<&'v str, ConfigError> {
    if !value.trim().is_empty() {
        return Ok(value);
    }
    match empty_means {
        Some(_) => Ok(""),
        None => Err(ConfigError::variable(
            name,
            "is set but empty; unset it for the default, or give it a value",
        )),
    }
}

/// The strict boolean every flag accepts: `true`/`false`, `1`/`0`, `yes`/`no`, `on`/`off`
/// (any case, surrounding blanks ignored); anything else is an error naming `name`.
pub fn parse_bool(name: &str, value: &str) -> Result<bool, ConfigError> {
    const TRUE: [&str; 4] = ["true", "1", "yes", "on"];
    const FALSE: [&str; 4] = ["false", "0", "no", "off"];
    let v = value.trim();
    if TRUE.iter().any(|t| t.eq_ignore_ascii_case(v)) {
        Ok(true)
    } else if FALSE.iter().any(|f| f.eq_ignore_ascii_case(v)) {
        Ok(false)
    } else {
        Err(ConfigError::variable(
            name,
            "must be one of true/false, 1/0, yes/no, on/off",
        ))
    }
}

pub(super) fn split_list(v: &str) -> Vec<String> {
    v.split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// The configuration key of a `USER_API__<TABLE>__<KEY>` variable (`server.max_connections`).
pub(super) fn prefixed_key(name: &str) -> Option<String> {
    let rest = name.strip_prefix(KEY_PREFIX)?;
    let parts: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
    (!parts.iter().any(String::is_empty)).then(|| parts.join("."))
}
