//! The one rule for settings (issue 17), over every documented variable from one table
//! (`user_api::config::ENV_VARS`, which must list exactly docs/configuration.md's variables) and over
//! every configuration key's `USER_API__<TABLE>__<KEY>` form:
//!
//! - set but empty or blank is an error that names the variable, unless the docs say
//!   what empty means for it;
//! - booleans accept exactly true/false/1/0/yes/no/on/off (any case), nothing else.
//!
//! Before the fix `USER_API_DEV_MODE=` (or `=disabled`) turned dev mode ON, and a blank
//! `JWT_ISS`/`JWT_AUD` silently turned the issuer and audience checks off.

use std::collections::BTreeSet;
use std::process::Command;

use serde_json::Value;
use user_api::config::{Config, ENV_VARS, EnvKind, KEY_PREFIX};

const BLANKS: [&str; 3] = ["", "  ", "\t"];
const TRUE_WORDS: [&str; 6] = ["true", "1", "yes", "on", "TRUE", "Yes"];
const FALSE_WORDS: [&str; 6] = ["false", "0", "no", "off", "False", "OFF"];
const NOT_BOOLEANS: [&str; 8] = ["disabled", "enabled", "2", "-1", "y", "n", "truee", "none"];

/// The documented variable table (docs/configuration.md): every variable it names, with its row.
fn readme_variables() -> Vec<(String, String)> {
    let page = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/configuration.md"
    ))
    .expect("docs/configuration.md");
    let mut out = Vec::new();
    for line in page
        .lines()
        .skip_while(|l| !l.starts_with("| variable"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
    {
        let first_cell = line.split('|').nth(1).unwrap_or_default();
        for name in first_cell.split('`').skip(1).step_by(2) {
            out.push((name.to_owned(), line.to_owned()));
        }
    }
    assert!(
        !out.is_empty(),
        "no variable table found in docs/configuration.md"
    );
    out
}

/// Every configuration key (`server.max_connections`) with its default, as JSON.
fn config_keys() -> Vec<(String, Value)> {
    fn walk(prefix: &str, v: &Value, out: &mut Vec<(String, Value)>) {
        match v {
            Value::Object(map) => {
                for (k, v) in map {
                    let path = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&path, v, out);
                }
            }
            leaf => out.push((prefix.to_owned(), leaf.clone())),
        }
    }
    let mut out = Vec::new();
    walk(
        "",
        &serde_json::to_value(Config::default()).unwrap(),
        &mut out,
    );
    out
}

fn variable_of(key: &str) -> String {
    format!(
        "{KEY_PREFIX}{}",
        key.replace('.', "__").to_ascii_uppercase()
    )
}

fn load(vars: &[(&str, &str)]) -> Result<Config, String> {
    Config::load_from_vars(vars.iter().copied()).map_err(|e| e.to_string())
}

fn at(config: &Config, key: &str) -> Value {
    let mut v = serde_json::to_value(config).unwrap();
    for part in key.split('.') {
        v = v[part].take();
    }
    v
}

#[test]
fn the_variable_table_is_the_documented_table() {
    let documented: BTreeSet<String> = readme_variables().into_iter().map(|(n, _)| n).collect();
    let table: BTreeSet<String> = ENV_VARS.iter().map(|v| v.name.to_owned()).collect();
    assert_eq!(
        documented, table,
        "docs/configuration.md's variable table and config::ENV_VARS must list the same variables"
    );
}

#[test]
fn every_documented_variable_set_but_blank_fails_naming_it_unless_documented() {
    let readme = readme_variables();
    let mut documented_empty = 0;
    for var in ENV_VARS {
        for blank in BLANKS {
            let result = load(&[(var.name, blank)]);
            match var.when_empty {
                None => {
                    let e = result.expect_err(&format!("{}={blank:?} was accepted", var.name));
                    assert!(
                        e.contains(&format!("`{}`", var.name)) && e.contains("empty"),
                        "{}={blank:?}: the error must name it and say empty: {e}",
                        var.name
                    );
                }
                Some(meaning) => {
                    documented_empty += 1;
                    result.unwrap_or_else(|e| panic!("{}={blank:?}: {e}", var.name));
                    let (_, row) = readme.iter().find(|(n, _)| n == var.name).unwrap();
                    assert!(
                        row.contains("empty") && row.contains(meaning),
                        "{}: docs/configuration.md must say that empty means {meaning:?}: {row}",
                        var.name
                    );
                }
            }
        }
    }
    assert!(
        documented_empty > 0,
        "the documented exception is tested too"
    );
}

#[test]
fn every_configuration_key_set_but_blank_fails_naming_its_variable() {
    let keys = config_keys();
    assert!(keys.len() > 40, "every key found: {}", keys.len());
    for (key, _) in &keys {
        let name = variable_of(key);
        for blank in BLANKS {
            let e = load(&[(&name, blank)]).expect_err(&format!("{name}={blank:?} was accepted"));
            assert!(e.contains(&format!("`{name}`")), "{name}={blank:?}: {e}");
        }
    }
}

#[test]
fn booleans_accept_exactly_true_false_1_0_yes_no_on_off() {
    let mut flags: Vec<(String, String)> = ENV_VARS
        .iter()
        .filter(|v| v.kind == EnvKind::Flag)
        .map(|v| (v.name.to_owned(), v.key.to_owned()))
        .collect();
    flags.extend(
        config_keys()
            .into_iter()
            .filter(|(_, default)| default.is_boolean())
            .map(|(key, _)| (variable_of(&key), key)),
    );
    assert!(flags.len() >= 5, "{flags:?}");
    for (name, key) in &flags {
        for (words, expected) in [(TRUE_WORDS, true), (FALSE_WORDS, false)] {
            for word in words {
                let c = load(&[(name, word)]).unwrap_or_else(|e| panic!("{name}={word}: {e}"));
                assert_eq!(at(&c, key), Value::Bool(expected), "{name}={word}");
            }
        }
        for word in NOT_BOOLEANS {
            let e = load(&[(name, word)]).expect_err(&format!("{name}={word} was accepted"));
            assert!(e.contains(&format!("`{name}`")), "{name}={word}: {e}");
        }
    }
}

#[test]
fn an_empty_dev_mode_override_never_serves_dev_mode_on_every_address() {
    // The report: `USER_API_DEV_MODE=` with a public address served in dev mode.
    for value in ["", "disabled"] {
        let e = load(&[
            ("USER_API_DEV_MODE", value),
            ("USER_API_ADDR", "0.0.0.0:8001"),
        ])
        .expect_err(value);
        assert!(e.contains("USER_API_DEV_MODE"), "{e}");
    }
    let c = load(&[
        ("USER_API_DEV_MODE", "off"),
        ("USER_API_ADDR", "0.0.0.0:8001"),
    ])
    .unwrap();
    assert!(c.check_serve().is_err(), "off means off");
}

#[test]
fn a_blank_issuer_or_audience_in_the_file_is_refused_too() {
    let dir = std::env::temp_dir().join(format!("user-api-settings-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("c.toml");
    for (table, key) in [("jwt", "iss"), ("jwt", "aud")] {
        std::fs::write(&file, format!("[{table}]\n{key} = \" \"\n")).unwrap();
        let e = load(&[("USER_API_CONFIG", file.to_str().unwrap())]).unwrap_err();
        assert!(e.contains(&format!("{table}.{key}")), "{e}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_binary_refuses_a_blank_issuer_and_names_it() {
    let out = Command::new(env!("CARGO_BIN_EXE_user-api"))
        .arg("serve")
        .env_clear()
        .env("JWT_PUBLIC_KEY_FILE", &crate::helpers::keys().public_file)
        .env("JWT_ISS", " ")
        .env("DATABASE_URL", "sqlite::memory:")
        .output()
        .expect("run user-api");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("`JWT_ISS`"), "{stderr}");
}
