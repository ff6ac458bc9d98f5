//! The binary as an operator uses it: dev-mode start, `token`, `migrate`, `seed`,
//! configuration errors, and logs that never carry personal data.

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_user-api");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn cmd(dir: &Path) -> Command {
    cmd_of(BIN, dir)
}

/// `program` in `dir`, with none of the outer environment's stores or key sources.
fn cmd_of(program: &str, dir: &Path) -> Command {
    let mut c = Command::new(program);
    c.current_dir(dir);
    for var in [
        "DATABASE_URL",
        "REDIS_URL",
        "REDIS_CLUSTER_URLS",
        "JWT_PUBLIC_KEY_FILE",
        "JWKS_URL",
        "USER_API_CONFIG",
        "USER_API__SERVER__LOG_FORMAT",
        "RUST_LOG",
        "USER_API_ADDR",
        "USER_API_DEV_MODE",
        "TRUSTED_PROXIES",
    ] {
        c.env_remove(var);
    }
    c.env("PREWARM", "0");
    c
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
    }
}

fn tempdir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("user-api-cli-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[tokio::test]
async fn dev_mode_quick_start_and_no_pii_in_logs() {
    let dir = tempdir();
    let port = free_port();
    let child = cmd(&dir)
        .env("USER_API_ADDR", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut server = Server(child);
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.get(format!("{base}/health")).send().await.is_err() {
        assert!(Instant::now() < deadline, "server did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        dir.join("data/user-api.db").exists(),
        "SQLite file created on first run"
    );
    assert!(dir.join("data/dev-keys/private.pem").exists());
    // The database holds personal data: only its owner may read it.
    assert_mode(&dir.join("data"), 0o700);
    assert_mode(&dir.join("data/user-api.db"), 0o600);

    // As the README and the start-up hint do it: `eval "$(user-api token)"` sets ID and TOKEN
    // (stdout carries only those lines; logs go to stderr).
    let (id, token) = eval_new_user(&dir, &[]);

    let pii = json!({"email": "pii.person@example.com", "phone": "090-9876-5432",
                     "address": "秘密の住所 1-2-3", "date_of_birth": "1985-05-17", "name": "N"});
    let res = client
        .post(format!("{base}/api/profiles"))
        .bearer_auth(&token)
        .json(&pii)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let res = client
        .get(format!("{base}/api/profiles/{id}"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    // A conflict and a validation error also must not echo personal data into the logs.
    let other = uuid::Uuid::new_v4().to_string();
    let out = cmd(&dir).args(["token", "--sub", &other]).output().unwrap();
    let other_token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let res = client
        .post(format!("{base}/api/profiles"))
        .bearer_auth(&other_token)
        .json(&json!({"email": "PII.person@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 409);
    let res = client
        .patch(format!("{base}/api/profiles/{id}"))
        .bearer_auth(&token)
        .json(&json!({"phone": null}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = client
        .delete(format!("{base}/api/profiles/{id}"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);

    for f in ["data/user-api.db-wal", "data/user-api.db-shm"] {
        if dir.join(f).exists() {
            assert_mode(&dir.join(f), 0o600);
        }
    }
    let _ = server.0.kill();
    let _ = server.0.wait();
    let mut logs = String::new();
    server
        .0
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    server
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    assert!(logs.contains("DEV MODE"), "dev mode is announced loudly");
    // The hint is the README's sequence: a new user from `token`, then a create; never a
    // `/me` that answers 404 on a fresh start, never a Linux-only uuid source.
    assert!(
        logs.contains("eval \"$(") && logs.contains(" token)\"   # sets ID"),
        "{logs}"
    );
    assert!(logs.contains(&format!("curl -X POST localhost:{port}/api/profiles")));
    assert!(logs.contains(&format!("curl localhost:{port}/api/profiles/$ID")));
    assert!(
        !logs.contains("/proc/sys") && !logs.contains("/api/profiles/me"),
        "{logs}"
    );
    assert!(
        logs.contains("The WARN lines above are expected in dev mode"),
        "the dev-mode warnings are explained: {logs}"
    );
    assert!(
        logs.contains("in-process store"),
        "embedded store is announced"
    );
    for secret in [
        "pii.person",
        "PII.person",
        "9876-5432",
        "秘密の住所",
        "1985-05-17",
        &token,
    ] {
        assert!(!logs.contains(secret), "log output contains {secret:?}");
    }
}

#[test]
fn token_refuses_when_a_key_source_is_configured() {
    let dir = tempdir();
    let pem = dir.join("k.pem");
    std::fs::write(&pem, "not used").unwrap();
    let out = cmd(&dir)
        .env("JWT_PUBLIC_KEY_FILE", &pem)
        .args(["token", "--sub", &uuid::Uuid::new_v4().to_string()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("dev-mode"));
    let out = cmd(&dir).args(["token", "--sub", "bob"]).output().unwrap();
    assert!(!out.status.success());
    assert!(!dir.join("data/dev-keys").exists() || out.stdout.is_empty());
}

#[test]
fn bad_configuration_names_the_key() {
    let dir = tempdir();
    for (var, val, key) in [
        ("RATE_LIMIT_FAIL", "maybe", "fail"),
        ("DATABASE_URL", "mysql://x", "database_url"),
        ("USER_API__CACHE__TTL_SECS", "0", "cache.ttl_secs"),
        ("USER_API_ADDR", "not-an-address", "addr"),
    ] {
        let out = cmd(&dir).env(var, val).arg("migrate").output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{var}={val}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(key), "{var}={val}: {err}");
    }
    // A bad key file stops the server at start, naming the setting.
    let out = cmd(&dir)
        .env("JWT_PUBLIC_KEY_FILE", dir.join("missing.pem"))
        .env("USER_API_ADDR", "127.0.0.1:0")
        .arg("serve")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("JWT_PUBLIC_KEY_FILE"), "{err}");
}

#[test]
fn migrate_and_seed() {
    let dir = tempdir();
    let out = cmd(&dir).arg("migrate").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cmd(&dir).args(["seed", "--count", "500"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text: Value = json!(String::from_utf8_lossy(&out.stdout));
    assert!(text.as_str().unwrap().contains("inserted 500"), "{text}");
}

#[test]
fn token_on_a_fresh_machine_prints_only_the_token() {
    let dir = tempdir();
    let out = cmd(&dir)
        .args([
            "token",
            "--sub",
            &uuid::Uuid::new_v4().to_string(),
            "--role",
            "admin",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert_eq!(stdout.trim().split('.').count(), 3, "{stdout}");
    assert!(dir.join("data/dev-keys/private.pem").exists());
}

/// Runs `eval "$(user-api token <args>)"` in a shell, as the README does, and returns the
/// `ID` and `TOKEN` it set.
fn eval_new_user(dir: &Path, args: &[&str]) -> (String, String) {
    let out = cmd_of("sh", dir)
        .args([
            "-c",
            r#"eval "$("$0" token "$@")" && printf '%s\n%s\n' "$ID" "$TOKEN""#,
            BIN,
        ])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let (id, token) = stdout.trim().split_once('\n').expect("two lines");
    (id.to_owned(), token.to_owned())
}

fn jwt_claims(token: &str) -> Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).expect("a JWT has three parts");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[test]
fn token_without_sub_prints_a_new_user_for_eval() {
    let dir = tempdir();
    let out = cmd(&dir)
        .args(["token", "--role", "admin"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    let id = lines[0].strip_prefix("ID=").expect(&stdout);
    let token = lines[1].strip_prefix("TOKEN=").expect(&stdout);
    let parsed = uuid::Uuid::parse_str(id).unwrap();
    assert_eq!(parsed.hyphenated().to_string(), id, "canonical lowercase");
    let claims = jwt_claims(token);
    assert_eq!(claims["sub"], id);
    assert_eq!(claims["role"], "admin");

    // Through a shell, as the README uses it; each call is a new user.
    let (id1, token1) = eval_new_user(&dir, &[]);
    let (id2, _) = eval_new_user(&dir, &["--role", "user"]);
    assert_ne!(id1, id2);
    assert_ne!(id1, id);
    assert_eq!(jwt_claims(&token1)["sub"], id1);
    assert_eq!(jwt_claims(&token1)["role"], "user");
}

/// Lines of `user-api token --sub …` on a fresh directory: it generates the dev key pair
/// and logs a WARN about it, so there is always a log line to look at.
fn first_token_logs(mut c: Command) -> String {
    let out = c
        .args(["token", "--sub", &uuid::Uuid::new_v4().to_string()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let mut text = String::from_utf8(out.stdout).unwrap();
    text.push_str(&String::from_utf8(out.stderr).unwrap());
    text
}

fn is_json_log_line(line: &str) -> bool {
    serde_json::from_str::<Value>(line.trim()).is_ok_and(|v| v["level"].is_string())
}

#[test]
fn logs_are_json_when_not_on_a_terminal_unless_configured() {
    // stderr is a pipe here: JSON, one object a line.
    let out = first_token_logs(cmd(&tempdir()));
    let warn = out
        .lines()
        .find(|l| l.contains("generated a new DEV MODE key pair"))
        .unwrap_or_else(|| panic!("no key-pair warning: {out}"));
    assert!(is_json_log_line(warn), "{warn}");
    // An explicit choice wins over the pipe.
    let mut c = cmd(&tempdir());
    c.env("USER_API__SERVER__LOG_FORMAT", "pretty");
    let out = first_token_logs(c);
    let warn = out
        .lines()
        .find(|l| l.contains("generated a new DEV MODE key pair"))
        .unwrap_or_else(|| panic!("no key-pair warning: {out}"));
    assert!(!is_json_log_line(warn) && warn.contains("WARN"), "{warn}");
    assert!(
        !warn.contains('\u{1b}'),
        "no colour codes into a pipe: {warn:?}"
    );
}

/// `script` (util-linux) runs the binary on a pseudo-terminal: what a person sees.
fn on_a_terminal(dir: &Path, env: &[(&str, &str)]) -> Option<Command> {
    let util_linux = Command::new("script")
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("util-linux"));
    if !util_linux {
        eprintln!("skipped: needs util-linux `script` to provide a terminal");
        return None;
    }
    let mut c = cmd_of("script", dir);
    for (k, v) in env {
        c.env(k, v);
    }
    // `script -c` runs a shell command (the binary's path passed in the environment).
    c.env("USER_API_BIN", BIN).args([
        "-q",
        "-e",
        "-c",
        r#""$USER_API_BIN" token --sub 6f1f4a8e-0b8e-4c55-9d1c-2f0a3c1b7e21"#,
        "/dev/null",
    ]);
    Some(c)
}

#[test]
fn logs_are_readable_on_a_terminal_unless_configured() {
    let Some(mut c) = on_a_terminal(&tempdir(), &[]) else {
        return;
    };
    let out = c.stdin(Stdio::null()).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let warn = text
        .lines()
        .find(|l| l.contains("generated a new DEV MODE key pair"))
        .unwrap_or_else(|| panic!("no key-pair warning: {text}"));
    assert!(!is_json_log_line(warn) && warn.contains("WARN"), "{warn}");

    let Some(mut c) = on_a_terminal(&tempdir(), &[("USER_API__SERVER__LOG_FORMAT", "json")]) else {
        return;
    };
    let out = c.stdin(Stdio::null()).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let warn = text
        .lines()
        .find(|l| l.contains("generated a new DEV MODE key pair"))
        .unwrap_or_else(|| panic!("no key-pair warning: {text}"));
    assert!(
        is_json_log_line(warn),
        "an explicit json wins on a terminal: {warn}"
    );
}

#[cfg(unix)]
fn assert_mode(path: &Path, want: u32) {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, want, "{}: {mode:o}, want {want:o}", path.display());
}

#[cfg(not(unix))]
fn assert_mode(_: &Path, _: u32) {}

/// Runs `serve` and returns its exit status and stderr (it must stop by itself).
fn serve_refused(c: &mut Command) -> (Option<i32>, String) {
    let mut child = c
        .arg("serve")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return (status.code(), err);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("serve started where it must refuse");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn dev_mode_refuses_a_public_address_unless_asked_for() {
    let dir = tempdir();
    let (code, err) = serve_refused(cmd(&dir).env("USER_API_ADDR", "0.0.0.0:0"));
    assert_ne!(code, Some(0));
    assert!(
        err.contains("addr") && err.contains("USER_API_DEV_MODE") && err.contains("loopback"),
        "{err}"
    );
    assert!(
        !dir.join("data").exists(),
        "refused before creating anything"
    );
}

#[test]
fn dev_mode_refuses_postgres_unless_asked_for() {
    let dir = tempdir();
    // Refused before any connection is tried, so no server needs to answer there.
    let (code, err) = serve_refused(
        cmd(&dir)
            .env("USER_API_ADDR", "127.0.0.1:0")
            .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none"),
    );
    assert_ne!(code, Some(0));
    assert!(
        err.contains("database_url") && err.contains("USER_API_DEV_MODE"),
        "{err}"
    );
}

#[test]
fn an_empty_key_variable_is_an_error_not_dev_mode() {
    let dir = tempdir();
    for var in ["JWT_PUBLIC_KEY_FILE", "JWKS_URL"] {
        let out = cmd(&dir)
            .env(var, "")
            .env("USER_API_ADDR", "127.0.0.1:0")
            .arg("serve")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{var}=");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(var) && err.contains("empty"), "{var}: {err}");
    }
    assert!(!dir.join("data/dev-keys").exists(), "no dev keys were made");
}

#[test]
fn dev_mode_listens_on_loopback_by_default() {
    let dir = tempdir();
    // No address given: 127.0.0.1:8001 (whether it is free on this machine or not, the
    // log names the address it binds or fails to bind).
    let mut child = cmd(&dir)
        .env("USER_API__SERVER__LOG_FORMAT", "pretty")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = String::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            if seen.contains(":8001") {
                break;
            }
        }
        let _ = tx.send(seen);
    });
    let seen = rx.recv_timeout(Duration::from_secs(20)).unwrap_or_default();
    let _ = child.kill();
    let _ = child.wait();
    assert!(seen.contains("127.0.0.1:8001"), "{seen}");
    assert!(!seen.contains("0.0.0.0:8001"), "{seen}");
}
