//! The stack's variable names (SPEC 7): PORT, HOST, PROFILE_CACHE_TTL_SEC, LOG_LEVEL,
//! CORS_ORIGINS. They are applied after every other layer, so each wins over the config
//! file and the `USER_API__…` form of the key it sets; PORT and HOST only apply while no
//! `addr` is chosen (USER_API_ADDR, USER_API__ADDR or the file), which wins over both.
//! Set but empty is an error naming the variable. docs/operations.md lists them.

use super::server::{LOG_LEVELS, cors_origin, log_directive};
use super::{Config, ConfigError};

/// What the stack's variables asked for, read before the other layers are merged.
#[derive(Default)]
pub(super) struct StackEnv {
    host: Option<std::net::IpAddr>,
    port: Option<u16>,
    cache_ttl_secs: Option<u64>,
    log_level: Option<String>,
    cors_origins: Option<Vec<String>>,
}

impl StackEnv {
    pub(super) fn read(env: &impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
            ConfigError::Invalid {
                key,
                reason: reason.into(),
            }
        }
        let get = |key: &'static str| match env(key) {
            Some(v) if v.trim().is_empty() => Err(invalid(key, "is set but empty; unset it")),
            other => Ok(other.map(|v| v.trim().to_owned())),
        };
        let mut out = Self::default();
        if let Some(v) = get("HOST")? {
            out.host = Some(v.parse().map_err(|_| {
                invalid(
                    "HOST",
                    format!("is `{v}`, not an IP address (e.g. 0.0.0.0)"),
                )
            })?);
        }
        if let Some(v) = get("PORT")? {
            out.port =
                Some(v.parse().map_err(|_| {
                    invalid("PORT", format!("is `{v}`, not a port number (0-65535)"))
                })?);
        }
        if let Some(v) = get("PROFILE_CACHE_TTL_SEC")? {
            out.cache_ttl_secs = Some(v.parse().map_err(|_| {
                invalid(
                    "PROFILE_CACHE_TTL_SEC",
                    format!("is `{v}`, not a number of seconds"),
                )
            })?);
        }
        if let Some(v) = get("LOG_LEVEL")? {
            if log_directive(&v).is_none() {
                return Err(invalid("LOG_LEVEL", format!("is `{v}`; {LOG_LEVELS}")));
            }
            out.log_level = Some(v);
        }
        if let Some(v) = get("CORS_ORIGINS")? {
            let origins = v
                .split(',')
                .map(str::trim)
                .filter(|o| !o.is_empty())
                .map(|o| cors_origin(o).map_err(|e| invalid("CORS_ORIGINS", e)))
                .collect::<Result<Vec<_>, _>>()?;
            if origins.is_empty() {
                return Err(invalid(
                    "CORS_ORIGINS",
                    "names no origin; unset it for none",
                ));
            }
            out.cors_origins = Some(origins);
        }
        Ok(out)
    }

    /// Applies what was asked for; true when the listening host was chosen (by `addr`
    /// or HOST), so dev mode's loopback default does not apply.
    pub(super) fn apply(self, config: &mut Config, addr_chosen: bool) -> bool {
        if !addr_chosen {
            if let Some(host) = self.host {
                config.addr.set_ip(host);
            }
            if let Some(port) = self.port {
                config.addr.set_port(port);
            }
        }
        if let Some(ttl) = self.cache_ttl_secs {
            config.cache.ttl_secs = ttl;
        }
        if let Some(level) = self.log_level {
            config.server.log_level = Some(level);
        }
        if let Some(origins) = self.cors_origins {
            config.server.cors_origins = origins;
        }
        addr_chosen || self.host.is_some()
    }
}
