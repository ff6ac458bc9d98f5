//! Mints one dev-mode access token per user id, fast, for `bench/run.sh`.
//!
//! Calling `user-api token` once per user costs a process start and a key parse each time;
//! this signs them all in one process, on every core, with the same dev key the service
//! verifies (`USER_API__JWT__DEV_KEYS_DIR`, default `data/dev-keys/`, generated if missing)
//! and the same claims `user-api token` puts in (`sub`, `role`, `iat` = now, `exp`,
//! `token_type: access`, plus `iss`/`aud` when configured). The service records `last_login`
//! from `iat`, so a fresh file means every user's next request is a first login.
//!
//! Usage: mint [--role user|admin] [--ttl-secs N] < ids > users
//! Reads one user id per line; writes `<user_id> <token>` per line, in input order.

use std::io::{self, BufRead, BufWriter, Write};
use std::process::ExitCode;

use chrono::Utc;
use serde_json::json;
use user_api::auth::{self, Role};
use user_api::config::Config;

fn main() -> ExitCode {
    let mut role = Role::User;
    let mut ttl_secs: i64 = 3 * 3600;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next()) {
            ("--role", Some(r)) if r == "user" => role = Role::User,
            ("--role", Some(r)) if r == "admin" => role = Role::Admin,
            ("--ttl-secs", Some(n)) if n.parse::<i64>().is_ok_and(|n| n > 0) => {
                ttl_secs = n.parse().unwrap_or(ttl_secs);
            }
            _ => {
                eprintln!("usage: mint [--role user|admin] [--ttl-secs N] < ids > users");
                return ExitCode::from(2);
            }
        }
    }
    match run(role, ttl_secs) {
        Ok(n) => {
            eprintln!("mint: {n} tokens");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mint: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(role: Role, ttl_secs: i64) -> anyhow::Result<usize> {
    let config = Config::load()?;
    anyhow::ensure!(
        config.jwt_dev_mode(),
        "a key source (JWT_PUBLIC_KEY_FILE or JWKS_URL) is configured: mint signs with the dev key only"
    );
    let keys = auth::dev::ensure_keys(&config.jwt.dev_keys_dir)?;
    let private_pem = keys.private_pem().as_bytes();
    let iss = config
        .jwt
        .iss
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty());
    let aud = config
        .jwt
        .aud
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty());

    let ids: Vec<String> = io::stdin()
        .lock()
        .lines()
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect();
    for id in &ids {
        anyhow::ensure!(
            uuid::Uuid::parse_str(id).is_ok(),
            "not a UUID: {id:?} (one user id per line)"
        );
    }

    let now = Utc::now().timestamp();
    let sign = |id: &str| {
        let mut claims = json!({
            "sub": id,
            "role": role.as_str(),
            "iat": now,
            "exp": now + ttl_secs,
            "token_type": "access",
        });
        if let Some(iss) = iss {
            claims["iss"] = json!(iss);
        }
        if let Some(aud) = aud {
            claims["aud"] = json!(aud);
        }
        auth::sign_rs256(private_pem, Some(auth::dev::DEV_KID), &claims)
    };

    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = ids.len().div_ceil(workers).max(1);
    let tokens: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = ids
            .chunks(chunk)
            .map(|part| s.spawn(move || part.iter().map(|id| sign(id)).collect::<Vec<_>>()))
            .collect();
        let mut out = Vec::with_capacity(ids.len());
        for h in handles {
            out.extend(h.join().expect("signing thread panicked"));
        }
        out.into_iter().collect::<Result<Vec<_>, _>>()
    })?;

    let mut w = BufWriter::new(io::stdout().lock());
    for (id, token) in ids.iter().zip(&tokens) {
        writeln!(w, "{id} {token}")?;
    }
    w.flush()?;
    Ok(tokens.len())
}
