//! Loading: defaults, then the file named by `USER_API_CONFIG`, then the
//! `USER_API__<TABLE>__<KEY>` variables, then the plain ones, then the stack's; validated
//! once at the end.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};

use super::env::{ENV_VARS, EnvKind, KEY_PREFIX, parse_bool, prefixed_key, set_value, split_list};
use super::stack_env::StackEnv;
use super::{Config, ConfigError};

impl Config {
    /// Loads from the process environment (and the file it names), then validates.
    pub fn load() -> Result<Self, ConfigError> {
        let mut vars = Vec::new();
        for (k, v) in std::env::vars_os() {
            let Some(k) = k.to_str() else { continue };
            let ours = k.starts_with(KEY_PREFIX) || ENV_VARS.iter().any(|e| e.name == k);
            if !ours {
                continue;
            }
            match v.into_string() {
                Ok(v) => vars.push((k.to_owned(), v)),
                Err(_) => return Err(ConfigError::variable(k, "is not valid UTF-8")),
            }
        }
        Self::load_from_vars(vars)
    }

    /// Loads with `env` standing in for the process environment (testable).
    pub fn load_from(env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        Self::load_from_vars(
            ENV_VARS
                .iter()
                .filter_map(|e| env(e.name).map(|v| (e.name.to_owned(), v))),
        )
    }

    /// Loads from these variables alone (name, value), as if they were the environment.
    pub fn load_from_vars<K, V>(vars: impl IntoIterator<Item = (K, V)>) -> Result<Self, ConfigError>
    where
        K: Into<String>,
        V: Into<String>,
    {
        let vars: BTreeMap<String, String> = vars
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        let defaults = Figment::from(Serialized::defaults(Config::default()));
        let stack = StackEnv::read(&|name: &str| vars.get(name).cloned())?;
        // What the operator set, without the defaults (to tell a chosen address from the default).
        let mut fig = Figment::new();
        if let Some(path) = vars.get("USER_API_CONFIG") {
            set_value("USER_API_CONFIG", path, None)?;
            if !std::path::Path::new(path).is_file() {
                return Err(ConfigError::Invalid {
                    key: "USER_API_CONFIG",
                    reason: format!("names `{path}`, which is not a readable file"),
                });
            }
            fig = fig.merge(Toml::file_exact(path));
        }
        // `USER_API__<TABLE>__<KEY>`: every key, its value read as figment's `Env` reads it
        // (numbers, booleans, arrays); blank is an error like any other variable.
        for (name, value) in vars.range(KEY_PREFIX.to_owned()..) {
            if !name.starts_with(KEY_PREFIX) {
                break;
            }
            let Some(key) = prefixed_key(name) else {
                return Err(ConfigError::variable(
                    name,
                    "does not name a configuration key",
                ));
            };
            let value = set_value(name, value, None)?;
            fig = match defaults.find_value(&key) {
                // A boolean key takes the same strict words as every flag.
                Ok(figment::value::Value::Bool(..)) => fig.merge((key, parse_bool(name, value)?)),
                _ => fig.merge((
                    key,
                    value.parse::<figment::value::Value>().expect("infallible"),
                )),
            };
        }
        for var in ENV_VARS {
            let Some(raw) = vars.get(var.name) else {
                continue;
            };
            let value = set_value(var.name, raw, var.when_empty)?;
            fig = match var.kind {
                EnvKind::Text => fig.merge((var.key, value)),
                EnvKind::Flag => fig.merge((var.key, parse_bool(var.name, value)?)),
                EnvKind::List => fig.merge((var.key, split_list(value))),
                EnvKind::Own => fig,
            };
        }
        let addr_chosen = fig.find_value("addr").is_ok();
        // Lossy: booleans from exactly true/false/1/0/yes/no/on/off (any case) and numbers
        // from digits, whichever source they came from; anything else fails naming the key.
        let mut config: Config = defaults.merge(fig).extract_lossy().map_err(Box::new)?;
        let host_chosen = stack.apply(&mut config, addr_chosen);
        if !host_chosen && config.jwt_dev_mode() {
            // Dev mode listens on loopback unless told otherwise (SPEC 1).
            config.addr = SocketAddr::from(([127, 0, 0, 1], config.addr.port()));
        }
        config.validate()?;
        Ok(config)
    }
}
