//! The loading rules, end to end through `Config::load_from`.

use super::*;
use std::collections::HashMap;

fn load(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Config::load_from(|k| map.get(k).cloned())
}

#[test]
fn defaults_are_valid() {
    let c = load(&[]).unwrap();
    assert_eq!(c.addr.port(), 8001);
    assert!(
        c.addr.ip().is_loopback(),
        "dev mode listens on loopback by default"
    );
    assert!(c.uses_embedded_store());
    assert!(c.jwt_dev_mode());
    assert_eq!(c.rate_limits.profiles_read, 100);
    assert_eq!(c.server.log_format, "auto");
}

#[test]
fn log_format_is_auto_json_or_pretty() {
    let mut c = Config::default();
    for f in ["auto", "json", "pretty"] {
        c.server.log_format = f.into();
        assert!(c.validate().is_ok(), "{f}");
    }
    c.server.log_format = "text".into();
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("server.log_format"), "{e}");
}

#[test]
fn plain_env_overrides() {
    let c = load(&[
        ("DATABASE_URL", "postgres://localhost/test"),
        ("REDIS_CLUSTER_URLS", "redis://a:1, redis://b:2"),
        ("PREWARM", "0"),
        ("RATE_LIMIT_FAIL", "closed"),
    ])
    .unwrap();
    assert_eq!(c.redis_cluster_urls.len(), 2);
    assert!(!c.prewarm.enabled);
    assert_eq!(c.rate_limits.fail, FailMode::Closed);
}

#[test]
fn bad_values_name_their_key() {
    let e = load(&[("RATE_LIMIT_FAIL", "sometimes")])
        .unwrap_err()
        .to_string();
    assert!(e.contains("fail"), "{e}");
    let e = load(&[("DATABASE_URL", "mysql://x")])
        .unwrap_err()
        .to_string();
    assert!(e.contains("database_url"), "{e}");
    let e = load(&[
        ("REDIS_URL", "redis://x"),
        ("REDIS_CLUSTER_URLS", "redis://y"),
    ])
    .unwrap_err()
    .to_string();
    assert!(e.contains("redis_url"), "{e}");
}

#[test]
fn each_check_names_its_key() {
    type Mutation = fn(&mut Config);
    let cases: [(Mutation, &str); 8] = [
        (
            |c| c.logins.batch_size = 0,
            "`logins.batch_size` must be at least 1",
        ),
        (|c| c.logins.queue_capacity = 0, "`logins.queue_capacity`"),
        (
            |c| c.rate_limits.window_secs = 0,
            "`rate_limits.window_secs` must be at least 1",
        ),
        (
            |c| c.rate_limits.window_secs = 7,
            "`rate_limits.window_secs` must divide 3600",
        ),
        (
            |c| c.cache.refresh_ahead_secs = 300,
            "`cache.refresh_ahead_secs`",
        ),
        (
            |c| c.database.min_connections = 99,
            "`database.min_connections`",
        ),
        (
            |c| c.jwt.jwks_url = Some("ftp://x".into()),
            "`jwt.jwks_url`",
        ),
        (
            |c| c.redis.timeout_ms = 0,
            "`redis.timeout_ms` must be positive",
        ),
    ];
    for (mutate, expected) in cases {
        let mut c = Config::default();
        assert!(c.validate().is_ok());
        mutate(&mut c);
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains(expected), "{e} lacks {expected}");
    }
}

#[test]
fn config_file_is_read_and_checked() {
    let dir = std::env::temp_dir().join(format!("user-api-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("c.toml");
    std::fs::write(&f, "[cache]\nttl_secs = 120\nrefresh_ahead_secs = 10\n").unwrap();
    let c = load(&[("USER_API_CONFIG", f.to_str().unwrap())]).unwrap();
    assert_eq!(c.cache.ttl_secs, 120);
    std::fs::write(&f, "[cache]\nttl_secs = \"soon\"\n").unwrap();
    let e = load(&[("USER_API_CONFIG", f.to_str().unwrap())])
        .unwrap_err()
        .to_string();
    assert!(e.contains("ttl_secs"), "{e}");
    std::fs::write(&f, "[cache]\nttl = 5\n").unwrap();
    assert!(load(&[("USER_API_CONFIG", f.to_str().unwrap())]).is_err());
}

#[test]
fn dev_mode_needs_loopback_sqlite_or_an_explicit_yes() {
    // A key source: the documented 0.0.0.0 default, nothing to check.
    let c = load(&[("JWT_PUBLIC_KEY_FILE", "/k.pem")]).unwrap();
    assert_eq!(c.addr.to_string(), "0.0.0.0:8001");
    assert!(c.check_serve().is_ok());
    // No key source: loopback by default, and that may serve.
    let c = load(&[]).unwrap();
    assert_eq!(c.addr.to_string(), "127.0.0.1:8001");
    assert!(c.check_serve().is_ok());
    // An address chosen explicitly is kept, and refused unless dev mode is asked for.
    let c = load(&[("USER_API_ADDR", "0.0.0.0:9000")]).unwrap();
    assert_eq!(c.addr.to_string(), "0.0.0.0:9000");
    let e = c.check_serve().unwrap_err().to_string();
    assert!(e.contains("addr") && e.contains("USER_API_DEV_MODE"), "{e}");
    let c = load(&[
        ("USER_API_ADDR", "0.0.0.0:9000"),
        ("USER_API_DEV_MODE", "1"),
    ])
    .unwrap();
    assert!(c.check_serve().is_ok());
    // PostgreSQL without a key source is refused too.
    let c = load(&[("DATABASE_URL", "postgres://h/db")]).unwrap();
    let e = c.check_serve().unwrap_err().to_string();
    assert!(e.contains("database_url"), "{e}");
    let c = load(&[
        ("DATABASE_URL", "postgres://h/db"),
        ("USER_API_DEV_MODE", "yes"),
    ])
    .unwrap();
    assert!(c.check_serve().is_ok());
    let c = load(&[("USER_API_ADDR", "[::1]:9000")]).unwrap();
    assert!(c.check_serve().is_ok());
}

#[test]
fn connection_limits_are_checked() {
    let with = |f: fn(&mut ServerConfig)| {
        let mut c = Config::default();
        f(&mut c.server);
        c.validate().unwrap_err().to_string()
    };
    let e = with(|s| s.header_read_timeout_ms = 0);
    assert!(e.contains("server.header_read_timeout_ms"), "{e}");
    let e = with(|s| s.keep_alive_timeout_ms = 0);
    assert!(e.contains("server.keep_alive_timeout_ms"), "{e}");
    let e = with(|s| s.max_connections = 0);
    assert!(e.contains("server.max_connections"), "{e}");
    let e = with(|s| s.max_connections = usize::MAX);
    assert!(e.contains("server.max_connections"), "{e}");
}

#[test]
fn an_empty_key_source_is_an_error_not_dev_mode() {
    for var in ["JWT_PUBLIC_KEY_FILE", "JWKS_URL"] {
        for v in ["", "  "] {
            let e = load(&[(var, v)]).unwrap_err().to_string();
            assert!(e.contains(var) && e.contains("empty"), "{var}={v:?}: {e}");
        }
    }
}

#[test]
fn trusted_proxies_parse_from_env_and_name_the_key() {
    let c = load(&[("TRUSTED_PROXIES", "10.0.0.0/8, 2001:db8::/32,192.0.2.1")]).unwrap();
    assert_eq!(c.rate_limits.trusted_proxies.len(), 3);
    let e = load(&[("TRUSTED_PROXIES", "10.0.0.0/99")])
        .unwrap_err()
        .to_string();
    assert!(e.contains("trusted_proxies"), "{e}");
}

#[test]
fn port_and_host_apply_when_no_address_is_chosen() {
    let key = [("JWT_PUBLIC_KEY_FILE", "/k.pem")];
    let with = |vars: &[(&str, &str)]| load(&[vars, &key[..]].concat()).unwrap().addr;
    assert_eq!(with(&[("PORT", "8005")]).to_string(), "0.0.0.0:8005");
    assert_eq!(with(&[("HOST", "10.1.2.3")]).to_string(), "10.1.2.3:8001");
    assert_eq!(
        with(&[("HOST", "::"), ("PORT", "9000")]).to_string(),
        "[::]:9000"
    );
    // USER_API_ADDR wins over both.
    let chosen = [("USER_API_ADDR", "127.0.0.1:7000"), ("PORT", "9000")];
    assert_eq!(with(&chosen).to_string(), "127.0.0.1:7000");
    // Dev mode: PORT alone keeps the loopback default; HOST is a choice, checked as one.
    let c = load(&[("PORT", "8005")]).unwrap();
    assert_eq!(c.addr.to_string(), "127.0.0.1:8005");
    assert!(c.check_serve().is_ok());
    let c = load(&[("HOST", "0.0.0.0")]).unwrap();
    assert_eq!(c.addr.to_string(), "0.0.0.0:8001");
    assert!(c.check_serve().is_err(), "dev mode refuses a public HOST");
}

#[test]
fn stack_variables_set_but_empty_or_bad_name_themselves() {
    for var in [
        "PORT",
        "HOST",
        "PROFILE_CACHE_TTL_SEC",
        "LOG_LEVEL",
        "CORS_ORIGINS",
    ] {
        let e = load(&[(var, " ")]).unwrap_err().to_string();
        assert!(
            e.contains(&format!("`{var}`")) && e.contains("empty"),
            "{e}"
        );
    }
    #[rustfmt::skip]
    let bad = [
        ("PORT", "80a"), ("PORT", "70000"), ("HOST", "example.com"),
        ("PROFILE_CACHE_TTL_SEC", "5m"), ("PROFILE_CACHE_TTL_SEC", "0"),
        ("LOG_LEVEL", "verbose"), ("CORS_ORIGINS", "*"),
        ("CORS_ORIGINS", "http://a.example,ftp://b.example"),
        ("CORS_ORIGINS", "https://a.example/app"), ("CORS_ORIGINS", ","),
    ];
    for (var, value) in bad {
        let e = load(&[(var, value)]).unwrap_err().to_string();
        // A TTL of 0 parses and is refused by the check of the key it sets.
        let named = if value == "0" { "cache.ttl_secs" } else { var };
        assert!(e.contains(named), "{var}={value}: {e}");
    }
}

#[test]
fn profile_cache_ttl_wins_over_the_file() {
    let dir = std::env::temp_dir().join(format!("user-api-ttl-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("c.toml");
    std::fs::write(&f, "[cache]\nttl_secs = 120\nrefresh_ahead_secs = 10\n").unwrap();
    let file = ("USER_API_CONFIG", f.to_str().unwrap());
    assert_eq!(load(&[file]).unwrap().cache.ttl_secs, 120);
    let c = load(&[file, ("PROFILE_CACHE_TTL_SEC", "600")]).unwrap();
    assert_eq!(c.cache.ttl_secs, 600);
    assert_eq!(
        load(&[("PROFILE_CACHE_TTL_SEC", "900")])
            .unwrap()
            .cache
            .ttl_secs,
        900
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn log_level_takes_the_stack_names() {
    #[rustfmt::skip]
    let cases = [
        ("debug", "debug"), ("INFO", "info"), ("warning", "warn"), ("Warn", "warn"),
        ("error", "error"), ("critical", "error"),
    ];
    for (given, directive) in cases {
        let c = load(&[("LOG_LEVEL", given)]).unwrap();
        assert_eq!(
            log_directive(c.server.log_level.as_deref().unwrap()),
            Some(directive)
        );
    }
    let mut c = Config::default();
    c.server.log_level = Some("loud".into());
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("server.log_level"), "{e}");
}

#[test]
fn cors_origins_are_normalised_origins() {
    let c = load(&[(
        "CORS_ORIGINS",
        "http://localhost:3000, https://App.Example.com:443/ ,http://[::1]:8080",
    )])
    .unwrap();
    assert_eq!(
        c.server.cors_origins,
        [
            "http://localhost:3000",
            "https://app.example.com",
            "http://[::1]:8080"
        ]
    );
    assert!(
        load(&[]).unwrap().server.cors_origins.is_empty(),
        "none by default"
    );
    let mut c = Config::default();
    c.server.cors_origins = vec!["not an origin".into()];
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("server.cors_origins"), "{e}");
}

#[test]
fn debug_hides_passwords() {
    let c = load(&[
        (
            "DATABASE_URL",
            "postgres://app:s3cret@db:5432/users?password=other",
        ),
        ("REDIS_URL", "redis://:r3dispw@cache:6379/0"),
        ("JWT_PUBLIC_KEY_FILE", "/k.pem"),
    ])
    .unwrap();
    let shown = format!("{c:?}");
    for secret in ["s3cret", "r3dispw", "other"] {
        assert!(!shown.contains(secret), "{shown}");
    }
    assert!(
        shown.contains("postgres://app:***@db:5432/users"),
        "{shown}"
    );
    assert_eq!(redact_url("redis://u@h/0"), "redis://***@h/0");
    assert_eq!(redact_url("sqlite://data/x.db"), "sqlite://data/x.db");
    assert_eq!(redact_url("https://tok3n@h/x"), "https://***@h/x");
    assert_eq!(redact_url("no url:s3cret@h"), "***");
}

#[test]
fn background_periods_are_checked_here_not_clamped_by_the_cache() {
    for (key, set) in [
        (
            "redis.metrics_flush_ms",
            (|c| c.redis.metrics_flush_ms = 0) as fn(&mut Config),
        ),
        ("redis.outbox_poll_ms", |c| c.redis.outbox_poll_ms = 9),
    ] {
        let mut c = Config::default();
        set(&mut c);
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains(key) && e.contains("at least 10"), "{e}");
    }
}
