//! Request ids: the client's `X-Request-Id` (when sane) or a new one comes back on the
//! answer and is on every log line written while the request is handled.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::helpers::{Backend, TestApp};

#[tokio::test]
async fn ids_are_kept_generated_or_replaced_and_echoed() {
    let app = TestApp::builder()
        .with_backend(Backend::Sqlite)
        .spawn()
        .await;
    let get = |id: Option<&str>| {
        let mut r = app.client.get(app.url("/health"));
        if let Some(id) = id {
            r = r.header("x-request-id", id);
        }
        r.send()
    };
    let res = get(Some("lb-7f3a.42")).await.unwrap();
    assert_eq!(res.headers()["x-request-id"], "lb-7f3a.42", "kept");
    let a = get(None).await.unwrap().headers()["x-request-id"].clone();
    let b = get(None).await.unwrap().headers()["x-request-id"].clone();
    assert_eq!(a.len(), 32, "a new UUID: {a:?}");
    assert_ne!(a, b, "one per request");
    let odd = get(Some(&"x".repeat(500))).await.unwrap();
    assert_eq!(
        odd.headers()["x-request-id"].len(),
        32,
        "an oversized id is replaced"
    );
    let odd = get(Some("two words")).await.unwrap();
    assert_ne!(
        odd.headers()["x-request-id"],
        "two words",
        "an odd id is replaced"
    );
    // Error answers carry it too.
    let res = app
        .client
        .get(app.url("/api/profiles/me"))
        .header("x-request-id", "err-1")
        .send()
        .await
        .unwrap();
    assert_eq!(
        (res.status().as_u16(), &res.headers()["x-request-id"]),
        (401, &"err-1".parse().unwrap())
    );
}

#[tokio::test]
async fn every_log_line_of_a_request_carries_its_id() {
    let dir = std::env::temp_dir().join(format!("user-api-reqid-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_user-api"))
        .arg("serve")
        .current_dir(&dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("USER_API_ADDR", format!("127.0.0.1:{port}"))
        .env("JWT_PUBLIC_KEY_FILE", &crate::helpers::keys().public_file)
        .env("USER_API__SERVER__LOG_FORMAT", "json")
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while client.get(format!("{base}/health")).send().await.is_err() {
        assert!(std::time::Instant::now() < deadline, "did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A token signed by another key is refused with a debug line inside the request.
    let (other_private, _) = user_api::auth::generate_rsa_keypair().unwrap();
    let now = chrono::Utc::now().timestamp();
    let forged = user_api::auth::sign_rs256(
        other_private.as_bytes(),
        None,
        &serde_json::json!({"sub": uuid::Uuid::new_v4().to_string(), "exp": now + 60}),
    )
    .unwrap();
    let res = client
        .get(format!("{base}/api/profiles/me"))
        .header("x-request-id", "trace-me-123")
        .bearer_auth(&forged)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = child.kill();
    let _ = child.wait();
    let lines: Vec<String> = rx.try_iter().collect();
    let ours: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("trace-me-123"))
        .collect();
    assert!(
        ours.iter().any(|l| l.contains("token refused")),
        "the handler's own log line carries the id: {ours:#?}"
    );
    assert!(
        ours.iter().any(|l| l.contains("Request completed")),
        "{ours:#?}"
    );
    for l in &ours {
        let v: serde_json::Value = serde_json::from_str(l).expect("JSON log line");
        // Lines written while the request runs carry it in their span; the closing line
        // carries it as its own field (written after the span ended).
        let id = if v["message"] == "Request completed" {
            &v["request_id"]
        } else {
            &v["span"]["request_id"]
        };
        assert_eq!(id, "trace-me-123", "{l}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
