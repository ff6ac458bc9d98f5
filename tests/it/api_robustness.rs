//! Robustness of the HTTP surface (SPEC 3 and 6) under junk input.
//!
//! - A seeded pseudo-random barrage (`rand`'s `StdRng`) over every route of
//!   `GET /openapi.json` plus near-miss paths: random methods, content types, bodies (random
//!   bytes, truncated and 10 000-deep JSON, huge numbers, duplicate keys, wrong types, NUL and
//!   lone surrogates, sizes around 64 KiB), valid user/admin tokens and junk tokens. Every
//!   answer must be < 500, every 4xx a JSON `{"detail": "..."}`; then the service must still
//!   answer, a profile nobody may write is unchanged field by field, no response carries
//!   another user's data, and the cache agrees with the database.
//! - Deterministic sweeps: malformed path ids on every `{user_id}` route, query strings on
//!   every route, header and wire-level edge cases, bodies just under and over 64 KiB, and
//!   settings/preferences with extreme numbers and nesting (stored and read back exactly, or
//!   refused with a 4xx that leaves the old document in place).
//!
//! Requests go over a raw HTTP/1.1 client (one TCP connection each), so paths such as
//! `/api/profiles/..`, `%00` or invalid bytes reach the server exactly as written. Requests
//! broken at the HTTP level itself (control bytes in headers, over 100 headers, a URI over
//! 64 KiB) may be refused by hyper before the application runs: an empty-bodied 4xx or a
//! closed connection is accepted for those only, never a 5xx or a hang.
//! Reproduce a barrage failure with `ROBUSTNESS_SEED=<seed> cargo nextest run api_robustness::`
//! (the seed is printed in the failure message).

use std::net::SocketAddr;
use std::time::Duration;

use rstest::rstest;

use crate::helpers::redis::{StoreKind, Target};
use crate::helpers::{Backend, Role, TestApp, keys, sign, token};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures::StreamExt;
use rand::distr::{Alphanumeric, SampleString};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{RngExt, SeedableRng};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use user_api::domain::{DocumentKind, UserId};

/// Default seed of the barrage (override with `ROBUSTNESS_SEED`, decimal or `0x` hex).
const DEFAULT_SEED: u64 = 0x005E_ED0F_C0FF_EE42;
/// Requests in flight at once.
const CONCURRENCY: usize = 12;
/// Longest a single request may take before it counts as a hang.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// The body limit of SPEC 6.
const LIMIT: usize = 64 * 1024;

// ---------------------------------------------------------------------------------------
// Seeded choices.
// ---------------------------------------------------------------------------------------

/// The barrage's random choices, from a seeded generator so a failure can be replayed.
struct Rng(StdRng);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(StdRng::seed_from_u64(seed))
    }

    fn next(&mut self) -> u64 {
        self.0.random()
    }

    fn below(&mut self, n: usize) -> usize {
        self.0.random_range(0..n.max(1))
    }

    /// True with probability `percent`/100.
    fn chance(&mut self, percent: u32) -> bool {
        self.0.random_ratio(percent, 100)
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        items.choose(&mut self.0).expect("a choice among none")
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut out = vec![0; n];
        self.0.fill(&mut out[..]);
        out
    }

    fn alnum(&mut self, n: usize) -> String {
        Alphanumeric.sample_string(&mut self.0, n)
    }
}

fn seed() -> u64 {
    match std::env::var("ROBUSTNESS_SEED") {
        Ok(s) => {
            let s = s.trim();
            match s.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => s.parse(),
            }
            .unwrap_or_else(|_| panic!("ROBUSTNESS_SEED={s:?} is not a u64"))
        }
        Err(_) => DEFAULT_SEED,
    }
}

// ---------------------------------------------------------------------------------------
// A raw HTTP/1.1 client.
// ---------------------------------------------------------------------------------------

/// Who sends a request: decides the token, which ids it aims at, and what it may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    /// A valid admin token (a random admin without a profile).
    Admin,
    /// A valid user token of `other`, who has a profile.
    Other,
    /// A valid user token of `player`, who has a profile that admins may change too.
    Player,
    /// A valid user token of a user with no profile yet.
    Fresh,
    /// A forged, expired, malformed or otherwise invalid token.
    Junk,
    /// No `Authorization` header.
    Anonymous,
}

/// How the body is framed on the wire.
#[derive(Debug, Clone)]
enum Body {
    None,
    Sized(Vec<u8>),
    Chunked(Vec<u8>),
}

impl Body {
    fn bytes(&self) -> &[u8] {
        match self {
            Body::None => &[],
            Body::Sized(b) | Body::Chunked(b) => b,
        }
    }
}

#[derive(Debug, Clone)]
struct Req {
    method: String,
    /// The request-target exactly as written on the request line.
    target: Vec<u8>,
    headers: Vec<(String, Vec<u8>)>,
    body: Body,
    who: Who,
    /// The request aims at the victim's data (never done with an allowed token).
    at_victim: bool,
    /// Deliberately broken at the HTTP level: hyper may refuse it (empty-bodied 4xx or a
    /// closed connection) before the application sees it.
    wire_junk: bool,
    /// Skip the automatic `Host` header.
    no_host: bool,
    /// Send only this many body bytes, then half-close (a truncated upload).
    truncate_to: Option<usize>,
}

impl Req {
    fn new(method: &str, target: impl Into<Vec<u8>>, who: Who) -> Self {
        Self {
            method: method.to_owned(),
            target: target.into(),
            headers: Vec::new(),
            body: Body::None,
            who,
            at_victim: false,
            wire_junk: false,
            no_host: false,
            truncate_to: None,
        }
    }

    fn header(mut self, name: &str, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name.to_owned(), value.into()));
        self
    }

    fn json(self, body: impl Into<Vec<u8>>) -> Self {
        self.header("Content-Type", "application/json")
            .with_body(Body::Sized(body.into()))
    }

    fn with_body(mut self, body: Body) -> Self {
        self.body = body;
        self
    }

    fn auth(self, token: &str) -> Self {
        self.header("Authorization", format!("Bearer {token}"))
    }

    fn path(&self) -> String {
        let t = String::from_utf8_lossy(&self.target).into_owned();
        match t.split_once('?') {
            Some((p, _)) => p.to_owned(),
            None => t,
        }
    }

    /// One line describing the request, for failure reports (long parts elided).
    fn describe(&self) -> String {
        let ct = self
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
            .map(|(_, v)| preview(v, 60))
            .unwrap_or_else(|| "-".into());
        let framing = match &self.body {
            Body::None => "none",
            Body::Sized(_) => "sized",
            Body::Chunked(_) => "chunked",
        };
        format!(
            "{:?} {} {} [content-type {}] [{} headers] [body {} {} bytes: {}]",
            self.who,
            preview(self.method.as_bytes(), 40),
            preview(&self.target, 160),
            ct,
            self.headers.len(),
            framing,
            self.body.bytes().len(),
            preview(self.body.bytes(), 160),
        )
    }
}

/// A printable, shortened view of some bytes.
fn preview(b: &[u8], max: usize) -> String {
    let s = String::from_utf8_lossy(b);
    let s: String = s.chars().flat_map(char::escape_debug).collect();
    if s.chars().count() > max {
        let head: String = s.chars().take(max).collect();
        format!("{head}…(+{} bytes)", b.len().saturating_sub(max))
    } else {
        s
    }
}

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Head and body as received, for the data-leak search.
    raw: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// Well-formed JSON, also when nested deeper than serde_json's default recursion limit
    /// (a 127-deep document wrapped in `{"settings": …}` is valid, just unparsable here).
    fn is_json(&self) -> bool {
        match serde_json::from_slice::<serde::de::IgnoredAny>(&self.body) {
            Ok(_) => true,
            Err(e) => e.to_string().contains("recursion limit exceeded"),
        }
    }
}

#[derive(Debug)]
enum Outcome {
    Resp(Resp),
    /// The connection ended (or timed out) without a parsable response.
    NoResponse(String),
}

impl Outcome {
    fn describe(&self) -> String {
        match self {
            Outcome::Resp(r) => format!(
                "{} [content-type {}] {}",
                r.status,
                r.header("content-type").unwrap_or("-"),
                preview(&r.body, 300)
            ),
            Outcome::NoResponse(e) => format!("no response: {e}"),
        }
    }

    fn status(&self) -> Option<u16> {
        match self {
            Outcome::Resp(r) => Some(r.status),
            Outcome::NoResponse(_) => None,
        }
    }
}

fn encode(req: &Req, host: &str) -> (Vec<u8>, usize) {
    let mut out = Vec::with_capacity(req.body.bytes().len() + 512);
    out.extend_from_slice(req.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(&req.target);
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if !req.no_host {
        out.extend_from_slice(format!("Host: {host}\r\n").as_bytes());
    }
    out.extend_from_slice(b"Connection: close\r\n");
    for (k, v) in &req.headers {
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v);
        out.extend_from_slice(b"\r\n");
    }
    match &req.body {
        Body::None => out.extend_from_slice(b"\r\n"),
        Body::Sized(b) => {
            out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", b.len()).as_bytes());
            out.extend_from_slice(b);
        }
        Body::Chunked(b) => {
            out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
            for chunk in b.chunks(7919) {
                out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                out.extend_from_slice(chunk);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\n\r\n");
        }
    }
    let send = match req.truncate_to {
        Some(n) => out.len() - req.body.bytes().len() + n.min(req.body.bytes().len()),
        None => out.len(),
    };
    (out, send)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The data of a chunked body, up to its last chunk or as far as it arrived.
fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Ok(httparse::Status::Complete((start, size))) = httparse::parse_chunk_size(b) {
        if size == 0 {
            break;
        }
        let data = &b[start..];
        let size = usize::try_from(size).unwrap_or(usize::MAX).min(data.len());
        out.extend_from_slice(&data[..size]);
        // The chunk's data is followed by CRLF.
        b = &data[(size + 2).min(data.len())..];
    }
    out
}

/// The final response in `raw` (after any 1xx), its headers lower-cased.
fn parse_response(raw: &[u8]) -> Option<Resp> {
    let mut rest = raw;
    loop {
        let mut slots = [httparse::EMPTY_HEADER; 64];
        let mut head = httparse::Response::new(&mut slots);
        let httparse::Status::Complete(head_len) = head.parse(rest).ok()? else {
            return None;
        };
        let status = head.code?;
        let after = &rest[head_len..];
        if (100..200).contains(&status) {
            rest = after;
            continue;
        }
        let headers: Vec<(String, String)> = head
            .headers
            .iter()
            .map(|h| {
                let value = String::from_utf8_lossy(h.value).trim().to_owned();
                (h.name.to_ascii_lowercase(), value)
            })
            .collect();
        let chunked = headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked"));
        let length = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse::<usize>().ok());
        let body = if chunked {
            dechunk(after)
        } else if let Some(n) = length {
            after[..n.min(after.len())].to_vec()
        } else {
            after.to_vec()
        };
        return Some(Resp {
            status,
            headers,
            body,
            raw: raw.to_vec(),
        });
    }
}

/// Sends one request on its own connection and reads until the server closes it.
async fn send(addr: SocketAddr, req: &Req) -> Outcome {
    let (bytes, send_len) = encode(req, &addr.to_string());
    let half_close = req.truncate_to.is_some();
    let exchange = async move {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (mut rd, mut wr) = stream.into_split();
        // Written concurrently with the read, so an early answer (413) is never missed; the
        // write half is kept open (dropping it would half-close the connection).
        let writer = tokio::spawn(async move {
            let _ = wr.write_all(&bytes[..send_len]).await;
            let _ = wr.flush().await;
            if half_close {
                let _ = wr.shutdown().await;
            }
            wr
        });
        let mut raw = Vec::new();
        let mut buf = vec![0u8; 32 * 1024];
        let read_error = loop {
            match rd.read(&mut buf).await {
                Ok(0) => break None,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
                Err(e) => break Some(e.to_string()),
            }
        };
        writer.abort();
        let _ = writer.await;
        match parse_response(&raw) {
            Some(r) => Ok(r),
            None => Err(format!(
                "{} bytes received{}",
                raw.len(),
                read_error
                    .map(|e| format!(", then {e}"))
                    .unwrap_or_default()
            )),
        }
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
        Ok(Ok(r)) => Outcome::Resp(r),
        Ok(Err(e)) => Outcome::NoResponse(e),
        Err(_) => Outcome::NoResponse(format!("timed out after {REQUEST_TIMEOUT:?}")),
    }
}

/// Sends all requests, `CONCURRENCY` at a time; outcomes in request order.
async fn send_all(addr: SocketAddr, reqs: &[Req]) -> Vec<Outcome> {
    let mut out: Vec<(usize, Outcome)> = futures::stream::iter(reqs.iter().enumerate())
        .map(|(i, r)| async move { (i, send(addr, r).await) })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, o)| o).collect()
}

// ---------------------------------------------------------------------------------------
// The world the requests run in: users, tokens, markers, routes.
// ---------------------------------------------------------------------------------------

struct World {
    app: TestApp,
    addr: SocketAddr,
    /// Nobody in the barrage may read or write this profile (admins never aim at it).
    victim: UserId,
    other: UserId,
    player: UserId,
    fresh: UserId,
    admin_token: String,
    other_token: String,
    player_token: String,
    fresh_token: String,
    junk_tokens: Vec<Vec<u8>>,
    /// (marker, who may see it in a response).
    markers: Vec<(String, &'static [Who])>,
    /// Route templates and their documented methods (upper case), from `/openapi.json`.
    routes: Vec<(String, Vec<String>)>,
    /// (template, method) of the operations that document a request body.
    body_routes: Vec<(String, String)>,
    /// Keeps a test-owned Redis alive for the app's lifetime.
    _store: Target,
}

/// A profile whose every text field carries `marker`, so any leak of it is searchable.
fn marked_profile(id: UserId, marker: &str) -> Value {
    json!({
        "user_id": id.to_string(),
        "first_name": format!("{marker} 太郎"),
        "last_name": format!("{marker}-山田"),
        "name": format!("{marker} \"quoted\" 'x'"),
        "email": format!("{marker}@example.com"),
        "phone": format!("{marker}-090"),
        "address": format!("{marker} 東京都渋谷区 ; DROP TABLE profiles; --"),
        "date_of_birth": "1990-01-01",
    })
}

async fn admin_call(
    world_app: &TestApp,
    admin: &str,
    method: reqwest::Method,
    path: &str,
    body: Value,
) -> (u16, Value) {
    crate::helpers::json_of(world_app.send_json(method, path, admin, &body).await).await
}

impl World {
    async fn build(backend: Backend, store: StoreKind) -> Self {
        let target = Target::new(store).await;
        let app = TestApp::builder()
            .with_backend(backend)
            .with_store(&target)
            .spawn()
            .await;
        let addr: SocketAddr = app.base.trim_start_matches("http://").parse().unwrap();
        let (victim, other, player, fresh) = (
            UserId::random(),
            UserId::random(),
            UserId::random(),
            UserId::random(),
        );
        let admin_token = token(UserId::random(), Role::Admin);
        let tag = uuid::Uuid::new_v4().simple().to_string();
        let victim_marker = format!("mkvictim{}", &tag[..12]);
        let other_marker = format!("mkother{}", &tag[12..24]);
        let player_marker = format!("mkplayer{}", &tag[20..32]);
        for (id, marker) in [
            (victim, &victim_marker),
            (other, &other_marker),
            (player, &player_marker),
        ] {
            let (s, b) = admin_call(
                &app,
                &admin_token,
                reqwest::Method::POST,
                "/api/profiles",
                marked_profile(id, marker),
            )
            .await;
            assert_eq!(s, 201, "seed profile: {b}");
            for (kind, key) in [("settings", "secret"), ("preferences", "theme")] {
                let (s, b) = admin_call(
                    &app,
                    &admin_token,
                    reqwest::Method::PUT,
                    &format!("/api/profiles/{id}/{kind}"),
                    json!({key: format!("{marker}-{kind}"), "nested": {"n": [1, 2.5, null, true]}}),
                )
                .await;
                assert_eq!(s, 200, "seed {kind}: {b}");
            }
        }
        let other_token = token(other, Role::User);
        let junk_tokens = junk_tokens(victim, &other_token);
        let (routes, body_routes) = openapi_routes(&app).await;
        Self {
            addr,
            victim,
            other,
            player,
            fresh,
            admin_token,
            player_token: token(player, Role::User),
            fresh_token: token(fresh, Role::User),
            other_token,
            junk_tokens,
            markers: vec![
                (victim_marker, &[]),
                (other_marker, &[Who::Admin, Who::Other]),
                (player_marker, &[Who::Admin, Who::Player]),
            ],
            routes,
            body_routes,
            app,
            _store: target,
        }
    }

    fn token(&self, who: Who) -> Option<&str> {
        match who {
            Who::Admin => Some(&self.admin_token),
            Who::Other => Some(&self.other_token),
            Who::Player => Some(&self.player_token),
            Who::Fresh => Some(&self.fresh_token),
            Who::Junk | Who::Anonymous => None,
        }
    }

    /// Profile, settings and preferences straight from the database.
    async fn stored(&self, id: UserId) -> Value {
        let repo = self.app.state.profiles.repo();
        let profile = repo.fetch(id).await.expect("fetch");
        let settings = repo
            .fetch_document(DocumentKind::Settings, id)
            .await
            .expect("settings");
        let preferences = repo
            .fetch_document(DocumentKind::Preferences, id)
            .await
            .expect("preferences");
        json!({
            "profile": profile,
            "settings": settings.map(|d| json!({"data": d.data, "updated_at": d.updated_at})),
            "preferences": preferences.map(|d| json!({"data": d.data, "updated_at": d.updated_at})),
        })
    }
}

/// Tokens that must all be refused (401), several claiming to be the victim or an admin.
fn junk_tokens(victim: UserId, valid: &str) -> Vec<Vec<u8>> {
    let now = chrono::Utc::now().timestamp();
    let segment = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
    let admin_claims = json!({"sub": victim.to_string(), "role": "admin", "exp": now + 3600});
    let none = format!(
        "{}.{}.",
        segment(&json!({"alg": "none", "typ": "JWT"})),
        segment(&admin_claims)
    );
    let hs256 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &admin_claims,
        &jsonwebtoken::EncodingKey::from_secret(keys().public_pem.as_bytes()),
    )
    .expect("hs256 token");
    // A valid signature over other claims: the payload swapped for an admin one.
    let parts: Vec<&str> = valid.split('.').collect();
    let swapped = format!("{}.{}.{}", parts[0], segment(&admin_claims), parts[2]);
    // One flipped character in the middle of the signature.
    let mut flipped = valid.to_owned().into_bytes();
    let mid = valid.len() - parts[2].len() / 2;
    flipped[mid] = if flipped[mid] == b'A' { b'B' } else { b'A' };
    let signed = |claims: Value| sign(&claims);
    let v = victim.to_string();
    let mut out: Vec<Vec<u8>> = [
        String::new(),
        "Bearer".into(),
        "Bearer ".into(),
        "Bearer    \t ".into(),
        "Basic dXNlcjpwYXNz".into(),
        format!("Token {valid}"),
        format!("Bearer {none}"),
        format!("Bearer {hs256}"),
        format!("Bearer {swapped}"),
        format!("Bearer {}", String::from_utf8(flipped).unwrap()),
        format!("Bearer {valid}x"),
        format!("Bearer {valid} {valid}"),
        format!("Bearer {valid},Bearer {valid}"),
        "Bearer abc.def.ghi".into(),
        "Bearer null".into(),
        "Bearer ../../../../etc/passwd".into(),
        "Bearer %00%ff".into(),
        format!("Bearer {}", "A".repeat(9_000)),
        format!(
            "Bearer {}.{}.{}",
            "e".repeat(6_000),
            "e".repeat(6_000),
            "e".repeat(5_000)
        ),
        format!(
            "Bearer {}",
            signed(json!({"sub": v, "role": "admin", "exp": now - 7200, "iat": now - 9000}))
        ),
        format!(
            "Bearer {}",
            signed(json!({"sub": v, "role": "admin", "exp": now + 3600, "token_type": "refresh"}))
        ),
        format!("Bearer {}", signed(json!({"sub": v, "role": "admin"}))),
        format!(
            "Bearer {}",
            signed(json!({"sub": "admin", "role": "admin", "exp": now + 3600}))
        ),
        format!(
            "Bearer {}",
            signed(json!({"sub": 12345, "role": "admin", "exp": now + 3600}))
        ),
        format!(
            "Bearer {}",
            signed(json!({"sub": v.to_uppercase() + " ", "role": "admin", "exp": now + 3600}))
        ),
        format!(
            "Bearer {}",
            signed(json!({"sub": v, "role": "admin", "exp": now + 3600, "iat": now + 86_400}))
        ),
        format!(
            "Bearer {}",
            signed(json!({"sub": v, "role": "admin", "exp": "tomorrow"}))
        ),
    ]
    .into_iter()
    .map(String::into_bytes)
    .collect();
    out.push(b"Bearer \xff\xfe\xfd".to_vec());
    out.push("Bearer 日本語".as_bytes().to_vec());
    out
}

/// Route templates with their documented methods, and the operations that take a body,
/// from the OpenAPI document.
async fn openapi_routes(app: &TestApp) -> (Vec<(String, Vec<String>)>, Vec<(String, String)>) {
    let (s, doc) = crate::helpers::json_of(app.get_anonymous("/openapi.json").await).await;
    assert_eq!(s, 200);
    let paths = doc["paths"].as_object().expect("openapi paths");
    let routes: Vec<(String, Vec<String>)> = paths
        .iter()
        .map(|(p, ops)| {
            let methods = ops
                .as_object()
                .map(|o| {
                    o.keys()
                        .filter(|m| {
                            ["get", "put", "post", "delete", "patch", "head", "options"]
                                .contains(&m.as_str())
                        })
                        .map(|m| m.to_ascii_uppercase())
                        .collect()
                })
                .unwrap_or_default();
            (p.clone(), methods)
        })
        .collect();
    for expected in [
        "/api/profiles",
        "/api/profiles/me",
        "/api/profiles/{user_id}",
        "/api/profiles/batch",
        "/api/profiles/{user_id}/settings",
        "/api/profiles/{user_id}/preferences",
        "/api/admin/cache/metrics",
        "/api/admin/cache/invalidate/{user_id}",
        "/api/admin/cache/prewarm",
        "/profile",
        "/health",
        "/ready",
        "/metrics",
    ] {
        assert!(
            routes.iter().any(|(p, _)| p == expected),
            "{expected} missing from /openapi.json"
        );
    }
    let body_routes = paths
        .iter()
        .flat_map(|(p, ops)| {
            ops.as_object()
                .into_iter()
                .flatten()
                .filter(|(_, op)| op.get("requestBody").is_some())
                .map(|(m, _)| (p.clone(), m.to_ascii_uppercase()))
        })
        .collect();
    (routes, body_routes)
}

// ---------------------------------------------------------------------------------------
// The checks every answer must pass.
// ---------------------------------------------------------------------------------------

fn protected(path: &str) -> bool {
    path == "/api" || path.starts_with("/api/") || path == "/profile"
}

/// The first broken promise in this answer, if any.
fn problem(world: &World, req: &Req, out: &Outcome) -> Option<String> {
    let r = match out {
        Outcome::Resp(r) => r,
        Outcome::NoResponse(e) if req.wire_junk && !e.contains("timed out") => return None,
        Outcome::NoResponse(e) => return Some(format!("no answer ({e})")),
    };
    if r.status >= 500 {
        return Some(format!("server error {}", r.status));
    }
    for (marker, allowed) in &world.markers {
        if find(&r.raw, marker.as_bytes()).is_some() && !allowed.contains(&req.who) {
            return Some(format!("another user's data ({marker}) in the answer"));
        }
    }
    let content_type = r.header("content-type").unwrap_or("");
    let is_json = content_type.starts_with("application/json");
    let head = req.method == "HEAD";
    if r.status >= 400 {
        let hyper_level = r.body.is_empty() && content_type.is_empty();
        if head || (hyper_level && req.wire_junk) {
            return None;
        }
        if !is_json {
            return Some(format!(
                "{} answered with content-type {content_type:?}, not JSON",
                r.status
            ));
        }
        match r.json() {
            Some(Value::Object(o)) if o.get("detail").is_some_and(Value::is_string) => {}
            _ => return Some(format!("{} body is not {{\"detail\": string}}", r.status)),
        }
        if r.status == 401
            && !r
                .header("www-authenticate")
                .unwrap_or("")
                .starts_with("Bearer")
        {
            return Some("401 without WWW-Authenticate: Bearer".into());
        }
        return None;
    }
    if (200..300).contains(&r.status) {
        let path = req.path();
        if matches!(req.who, Who::Junk | Who::Anonymous) && protected(&path) {
            return Some(format!(
                "{} to an unauthenticated caller on a protected route",
                r.status
            ));
        }
        if req.at_victim {
            return Some(format!(
                "{} on the victim's data for a caller who may not touch it",
                r.status
            ));
        }
        if path.starts_with("/api/admin") && req.who != Who::Admin {
            return Some(format!("{} on an admin route for a non-admin", r.status));
        }
        if is_json && !head && !r.is_json() {
            return Some("2xx JSON answer that does not parse".into());
        }
    }
    None
}

/// Sends `reqs`, checks every answer, and returns the outcomes plus failure lines.
async fn run_checked(world: &World, reqs: &[Req]) -> (Vec<Outcome>, Vec<String>) {
    let outcomes = send_all(world.addr, reqs).await;
    let failures = reqs
        .iter()
        .zip(&outcomes)
        .enumerate()
        .filter_map(|(i, (req, out))| {
            problem(world, req, out).map(|p| {
                format!(
                    "{p}\n    #{i} request: {}\n       answer:  {}",
                    req.describe(),
                    out.describe()
                )
            })
        })
        .collect();
    (outcomes, failures)
}

fn histogram(outcomes: &[Outcome]) -> String {
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for o in outcomes {
        let key = o
            .status()
            .map_or_else(|| "none".to_owned(), |s| s.to_string());
        *counts.entry(key).or_default() += 1;
    }
    counts
        .iter()
        .map(|(k, v)| format!("{k}×{v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Fails with every broken promise, grouped by kind (first line), a few examples each.
fn report(what: &str, failures: &[String], extra: &str) {
    if failures.is_empty() {
        return;
    }
    let mut groups = std::collections::BTreeMap::<&str, Vec<&str>>::new();
    for f in failures {
        let (kind, detail) = f.split_once('\n').unwrap_or((f, ""));
        groups.entry(kind).or_default().push(detail);
    }
    let mut text = format!(
        "{what}: {} broken promise(s) of {} kind(s){extra}",
        failures.len(),
        groups.len()
    );
    for (kind, details) in &groups {
        text.push_str(&format!("\n\n[{}x] {kind}", details.len()));
        for d in details.iter().take(3).filter(|d| !d.is_empty()) {
            text.push('\n');
            text.push_str(d);
        }
        if details.len() > 3 {
            text.push_str("\n    ...");
        }
    }
    panic!("{text}");
}

// ---------------------------------------------------------------------------------------
// The junk generator.
// ---------------------------------------------------------------------------------------

const METHODS: &[&str] = &[
    "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "TRACE", "get", "FOO", "PROPFIND",
    "M-SEARCH",
];

const CONTENT_TYPES: &[&[u8]] = &[
    b"application/json",
    b"application/json; charset=utf-8",
    b"APPLICATION/JSON",
    b"application/merge-patch+json",
    b"application/json; charset=latin1; boundary=\"x\"",
    b" application/json ",
    b"text/plain",
    b"text/json",
    b"application/x-www-form-urlencoded",
    b"multipart/form-data; boundary=xyz",
    b"application/xml",
    b"",
    b";",
    b"application/jsonx",
    b"application/json\xff\xfe",
    b"*/*",
];

const FIELDS: &[&str] = &[
    "first_name",
    "last_name",
    "name",
    "email",
    "phone",
    "address",
    "date_of_birth",
    "user_id",
];

/// JSON values (as text) that are the wrong type for every field.
const WRONG_TYPES: &[&str] = &[
    "0",
    "-1",
    "1.5",
    "true",
    "false",
    "[]",
    "{}",
    "[\"x\"]",
    "{\"a\":1}",
    "[[[]]]",
    "1e308",
];

/// Numbers that stress parsers and stores.
const HUGE_NUMBERS: &[&str] = &[
    "1e400",
    "-1e400",
    "123456789012345678901234567890",
    "18446744073709551616",
    "-9223372036854775809",
    "1e308",
    "1.7976931348623157e308",
    "5e-324",
    "1e-400",
    "-0",
    "-0.0",
    "0.1e-999999",
    "1E+2",
    "NaN",
    "Infinity",
    "-Infinity",
    "0x10",
    "01",
    "1.",
    ".5",
];

/// String literals (JSON text, some invalid) with NULs, escapes and surrogates.
const NASTY_STRINGS: &[&[u8]] = &[
    br#""\u0000""#,
    br#""a\u0000b""#,
    br#""\ud800""#,
    br#""\udfff""#,
    br#""\ud800\u0041""#,
    br#""\udbff\udfff""#,
    br#""\ud83d\ude00""#,
    br#""\\u0000""#,
    br#""\"\\\/\b\f\n\r\t""#,
    b"\"\x01\x02\x1f\"",
    b"\"\x7f\"",
    br#""\u202e\u200b\ufeff""#,
    br#""'; DROP TABLE profiles; --""#,
    br#""<script>alert(1)</script>""#,
    br#""%00%ff%2e%2e""#,
    br#""\x41""#,
    br#""\u12""#,
    br#""\""#,
    "\"日本語🎌\"".as_bytes(),
    br#""""#,
    b"\"\xff\xfe\"",
    b"\"\xed\xa0\x80\"",
    b"\"\xc0\xaf\"",
    b"\"\xf4\x90\x80\x80\"",
];

struct Gen<'a> {
    rng: Rng,
    w: &'a World,
}

impl Gen<'_> {
    fn who(&mut self) -> Who {
        match self.rng.below(100) {
            0..=29 => Who::Admin,
            30..=49 => Who::Other,
            50..=61 => Who::Player,
            62..=71 => Who::Fresh,
            72..=87 => Who::Junk,
            _ => Who::Anonymous,
        }
    }

    /// A well-formed id this caller might aim at, and whether it is the victim's. Admins
    /// never aim at the victim (they would be allowed to); everybody else may try.
    fn some_id(&mut self, who: Who) -> (String, bool) {
        let w = self.w;
        let choices: Vec<UserId> = match who {
            Who::Admin => vec![w.player, w.other, w.fresh, UserId::random()],
            Who::Other => vec![w.other, w.victim, w.player, UserId::random()],
            Who::Player => vec![w.player, w.victim, w.other],
            Who::Fresh => vec![w.fresh, w.victim, UserId::random()],
            Who::Junk | Who::Anonymous => vec![w.victim, w.player, w.other, UserId::random()],
        };
        let id = *self.rng.pick(&choices);
        (id.to_string(), id == w.victim)
    }

    /// A path segment in place of `{user_id}`: (segment, aims at the victim, wire junk).
    fn id_segment(&mut self, who: Who) -> (String, bool, bool) {
        let (id, victim) = self.some_id(who);
        let variant = self.rng.below(40);
        // Only the spellings of the id (0..=22) aim at its owner; the rest replace it.
        let victim = victim && variant <= 22;
        let seg = match variant {
            0..=13 => id,
            14 => id.to_uppercase(),
            15 => id.replace('-', ""),
            16 => format!("%7B{id}%7D"),
            17 => format!("urn:uuid:{id}"),
            18 => id.bytes().map(|b| format!("%{b:02X}")).collect(),
            19 => format!("{id}%00"),
            20 => format!("{id}%20"),
            21 => format!("+{id}"),
            22 => format!("{id};x=1"),
            23 => "00000000-0000-0000-0000-000000000000".into(),
            24 => "ffffffff-ffff-ffff-ffff-ffffffffffff".into(),
            25 => {
                let (seg, wire) = self.rng.pick(NASTY_SEGMENTS).to_owned();
                return (seg.to_owned(), false, wire);
            }
            26 => "a".repeat(10 * 1024),
            27 => "%41".repeat(3500),
            28 => self.rng.alnum(36),
            29 => "%FF".into(),
            30 => "%00".into(),
            31 => "..".into(),
            32 => "%2e%2e".into(),
            33 => "%ED%A0%80".into(),
            34 => "%E6%97%A5%E6%9C%AC".into(),
            35 => "me".into(),
            36 => "batch".into(),
            37 => "%C0%AF".into(),
            38 => "%ZZ".into(),
            _ => "%".into(),
        };
        (seg, victim, false)
    }

    fn path(&mut self, template: &str, who: Who) -> (String, bool, bool) {
        let mut victim = false;
        let mut wire = false;
        let mut out = String::new();
        let mut rest = template;
        while let Some(start) = rest.find('{') {
            let end = rest[start..]
                .find('}')
                .map_or(rest.len(), |e| start + e + 1);
            out.push_str(&rest[..start]);
            let (seg, v, wj) = self.id_segment(who);
            out.push_str(&seg);
            victim |= v;
            wire |= wj;
            rest = &rest[end..];
        }
        out.push_str(rest);
        (out, victim, wire)
    }

    fn query(&mut self) -> String {
        let victim = self.w.victim;
        match self.rng.below(12) {
            0 => "?".into(),
            1 => "?a=1&a=2&&=&==".into(),
            2 => format!("?user_id={victim}"),
            3 => "?%FF=%00&%ZZ".into(),
            4 => format!("?q={}", "x".repeat(4000)),
            5 => "?role=admin&sub=00000000-0000-0000-0000-000000000000".into(),
            6 => "?x[]=1&x[]=2&__proto__[admin]=true".into(),
            7 => "?cached=true&fields=*&limit=99999999999999999999".into(),
            8 => "?json=%7B%22a%22%3A1%7D".into(),
            9 => "?%E6%97%A5=%F0%9F%98%80".into(),
            10 => format!("?id={victim}&user_id=../../{victim}"),
            _ => format!("?{}", self.rng.alnum(20)),
        }
    }

    fn field_value(&mut self, who: Who, field: &str) -> Value {
        if self.rng.chance(10) {
            return Value::Null;
        }
        match field {
            "email" => json!(match self.rng.below(8) {
                0 => "not-an-email".to_owned(),
                1 => "a@b".to_owned(),
                2 => "太郎@例え.jp".to_owned(),
                3 => String::new(),
                4 => format!("{}@{}.com", "x".repeat(64), "y".repeat(63)),
                5 => "PLAYER@EXAMPLE.COM".to_owned(),
                _ => format!("u{}@example.com", self.rng.alnum(10).to_lowercase()),
            }),
            "date_of_birth" => json!(*self.rng.pick(&[
                "1990-01-01",
                "2000-02-29",
                "1900-02-29",
                "0000-01-01",
                "9999-12-31",
                "1990-1-1",
                "2999-01-01",
                "",
                "1990-01-01T00:00:00Z",
                "１９９０-０１-０１",
                "-001-01-01",
                "1990-01-01\u{0}",
            ])),
            "user_id" => json!(self.some_id(who).0),
            _ => json!(match self.rng.below(10) {
                0 => "Taro".to_owned(),
                1 => "山田 太郎".to_owned(),
                2 => "Robert'); DROP TABLE profiles;--".to_owned(),
                3 => "😀\u{202e}\u{200b}".to_owned(),
                4 => String::new(),
                5 => "a".repeat(255),
                6 => "界".repeat(256),
                7 => "x".repeat(1001),
                8 => "<b>\"x\"</b>\\".to_owned(),
                _ => self.rng.alnum(12),
            }),
        }
    }

    fn profile_object(&mut self, who: Who) -> Value {
        let mut o = serde_json::Map::new();
        for f in FIELDS {
            if self.rng.chance(40) {
                o.insert((*f).to_owned(), self.field_value(who, f));
            }
        }
        if self.rng.chance(10) {
            let extra = *self.rng.pick(&[
                "last_login",
                "created_at",
                "cached_at",
                "is_admin",
                "__proto__",
                "",
            ]);
            o.insert(extra.to_owned(), json!("2020-01-01T00:00:00Z"));
        }
        Value::Object(o)
    }

    fn settings_object(&mut self) -> Value {
        let depth = self.rng.below(6);
        let mut v = match self.rng.below(5) {
            0 => json!(self.rng.alnum(8)),
            1 => json!(self.rng.next() as i64),
            2 => json!([1, "two", null, {"three": 3.5}]),
            3 => json!(f64::MAX),
            _ => json!({"k": true}),
        };
        for _ in 0..depth {
            v = json!({ self.rng.alnum(4): v });
        }
        json!({"theme": "dark", "lang": "日本語", "v": v})
    }

    fn batch_body(&mut self, who: Who) -> Vec<u8> {
        let n = *self.rng.pick(&[0usize, 1, 3, 10, 100, 101, 150]);
        let ids: Vec<Value> = (0..n)
            .map(|_| match self.rng.below(10) {
                0 => json!(42),
                1 => json!(null),
                2 => json!("not-a-uuid"),
                3 => json!("a".repeat(300)),
                _ => json!(self.some_id(who).0),
            })
            .collect();
        let v = match self.rng.below(5) {
            0 | 1 => json!(ids),
            2 => json!({"user_ids": ids}),
            3 => json!({"user_ids": ids, "extra": 1}),
            _ => json!({"ids": ids}),
        };
        serde_json::to_vec(&v).unwrap()
    }

    fn deep(&mut self) -> Vec<u8> {
        let n = *self.rng.pick(&[100usize, 126, 127, 128, 129, 200, 10_000]);
        match self.rng.below(5) {
            0 => "[".repeat(n).into_bytes(),
            1 => "{\"a\":".repeat(n).into_bytes(),
            2 => format!("{}{}", "[".repeat(n), "]".repeat(n)).into_bytes(),
            3 => format!("{{\"a\":{}{}}}", "[".repeat(n), "]".repeat(n)).into_bytes(),
            _ => format!("{}1{}", "{\"a\":".repeat(n), "}".repeat(n)).into_bytes(),
        }
    }

    fn sized(&mut self) -> Vec<u8> {
        let size = *self.rng.pick(&[
            LIMIT - 1,
            LIMIT,
            LIMIT + 1,
            LIMIT + 1000,
            16 * 1024,
            16 * 1024 + 1,
            200_000,
        ]);
        match self.rng.below(3) {
            0 => padded_object(size),
            1 => {
                let mut b = b"{}".to_vec();
                b.resize(size, b' ');
                b
            }
            _ => self.rng.bytes(size),
        }
    }

    fn body(&mut self, who: Who) -> Vec<u8> {
        match self.rng.below(20) {
            0 => Vec::new(),
            1 => {
                let n = self.rng.below(2000);
                self.rng.bytes(n)
            }
            2 => {
                let full = serde_json::to_vec(&self.profile_object(who)).unwrap();
                let cut = 1 + self.rng.below(full.len().max(2) - 1);
                full[..cut.min(full.len())].to_vec()
            }
            3 => self.deep(),
            4 => {
                let n = *self.rng.pick(HUGE_NUMBERS);
                let f = *self.rng.pick(FIELDS);
                match self.rng.below(3) {
                    0 => format!("{{\"{f}\":{n}}}"),
                    1 => format!("{{\"n\":{n},\"m\":[{n},{n}]}}"),
                    _ => format!("[{n}]"),
                }
                .into_bytes()
            }
            5 => {
                let f = *self.rng.pick(FIELDS);
                let (a, b) = (self.field_value(who, f), self.field_value(who, f));
                format!("{{\"{f}\":{a},\"{f}\":{b},\"user_ids\":[],\"user_ids\":[]}}").into_bytes()
            }
            6 => {
                let mut parts = Vec::new();
                for f in FIELDS {
                    if self.rng.chance(50) {
                        parts.push(format!("\"{f}\":{}", self.rng.pick(WRONG_TYPES)));
                    }
                }
                format!("{{{}}}", parts.join(",")).into_bytes()
            }
            7 => {
                let inner = serde_json::to_string(&self.profile_object(who)).unwrap();
                match self.rng.below(3) {
                    0 => format!("[{inner}]"),
                    1 => format!("[{inner},{inner}]"),
                    _ => "[\"name\",\"x\"]".to_owned(),
                }
                .into_bytes()
            }
            8 => {
                let f = *self.rng.pick(FIELDS);
                let s = *self.rng.pick(NASTY_STRINGS);
                let mut b = format!("{{\"{f}\":").into_bytes();
                b.extend_from_slice(s);
                if self.rng.chance(30) {
                    b.extend_from_slice(b",");
                    b.extend_from_slice(s);
                    b.extend_from_slice(b":1");
                }
                b.push(b'}');
                b
            }
            9 => self.sized(),
            10..=12 => serde_json::to_vec(&self.profile_object(who)).unwrap(),
            13 => serde_json::to_vec(&self.settings_object()).unwrap(),
            14 => self.batch_body(who),
            15 => (*self.rng.pick(&[
                "null",
                "true",
                "0",
                "\"str\"",
                "[]",
                "{}",
                "[{}]",
                "{\"\":null}",
            ]))
            .as_bytes()
            .to_vec(),
            16 => (*self.rng.pick(&[
                "\u{feff}{}",
                "{\"name\":\"x\",}",
                "{'name':'x'}",
                "{\"name\":\"x\"} // c",
                "/* c */ {}",
                "{\"name\":NaN}",
                "{\"name\" \"x\"}",
                "{}{}",
                "{\"name\":\"x\"}\u{0}",
                "\u{0}",
            ]))
            .as_bytes()
            .to_vec(),
            17 => {
                let f = *self.rng.pick(&["name", "address", "phone", "first_name"]);
                let n = *self.rng.pick(&[255usize, 256, 1000, 1001, 20_000]);
                format!("{{\"{f}\":\"{}\"}}", "é".repeat(n)).into_bytes()
            }
            18 => {
                let v = json!({"date_of_birth": self.field_value(who, "date_of_birth"),
                               "email": self.field_value(who, "email")});
                serde_json::to_vec(&v).unwrap()
            }
            _ => {
                let n = self.rng.below(30);
                self.rng.alnum(n).into_bytes()
            }
        }
    }

    fn request(&mut self) -> Req {
        let who = self.who();
        let w = self.w;
        let extra: &[&str] = &[
            "/",
            "/api",
            "/api/",
            "/api/profiles/",
            "/api/profiles/{user_id}/",
            "/api/profiles/{user_id}/unknown",
            "/api/profiles/{user_id}/settings/x",
            "/api//profiles/{user_id}",
            "/API/PROFILES/{user_id}",
            "/api/profiles/{user_id}/../../admin/cache/metrics",
            "/api/profiles/./me",
            "/api/admin/cache/invalidate/",
            "/profile/",
            "/health/",
            "/docs",
            "/docs/",
            "/openapi.json",
            "/nope%00",
        ];
        let (template, documented): (String, Vec<String>) = if self.rng.chance(85) {
            self.rng.pick(&w.routes).clone()
        } else {
            ((*self.rng.pick(extra)).to_owned(), Vec::new())
        };
        let method = if !documented.is_empty() && self.rng.chance(80) {
            self.rng.pick(&documented).clone()
        } else {
            (*self.rng.pick(METHODS)).to_owned()
        };
        let (mut target, at_victim, wire_junk) = self.path(&template, who);
        if self.rng.chance(20) {
            target.push_str(&self.query());
        }
        let mut req = Req::new(&method, target, who);
        req.at_victim = at_victim;
        req.wire_junk = wire_junk;
        match who {
            Who::Junk => {
                let t = self.rng.pick(&w.junk_tokens).clone();
                req = req.header("Authorization", t);
            }
            Who::Anonymous => {}
            _ => req = req.auth(w.token(who).unwrap()),
        }
        let wants_body = matches!(method.as_str(), "POST" | "PUT" | "PATCH") || self.rng.chance(15);
        if wants_body {
            if !self.rng.chance(8) {
                let ct = if self.rng.chance(75) {
                    CONTENT_TYPES[self.rng.below(6)]
                } else {
                    *self.rng.pick(CONTENT_TYPES)
                };
                req = req.header("Content-Type", ct);
            }
            let body = self.body(who);
            req.body = if self.rng.chance(15) {
                Body::Chunked(body)
            } else {
                Body::Sized(body)
            };
        }
        if self.rng.chance(15) {
            let (k, v): (&str, &[u8]) = *self.rng.pick(&[
                ("Accept", b"application/xml" as &[u8]),
                ("Accept", b"*/*;q=0.1, text/html"),
                ("Accept-Encoding", b"gzip, br, zstd"),
                ("Content-Encoding", b"gzip"),
                ("X-Forwarded-For", b"not-an-ip, 1.2.3.4"),
                ("X-Forwarded-For", b"::ffff:10.0.0.1"),
                ("X-Request-Id", b"\xff\xfe junk id"),
                ("Cookie", b"session=abc; role=admin"),
                ("Origin", b"http://evil.example"),
                ("Expect", b"100-continue"),
                ("X-HTTP-Method-Override", b"DELETE"),
                ("Range", b"bytes=0-10"),
                ("User-Agent", "日本語 agent".as_bytes()),
            ]);
            req = req.header(k, v);
        }
        req
    }
}

/// `{"pad":"aaa…"}` of exactly `size` bytes.
fn padded_object(size: usize) -> Vec<u8> {
    let mut b = b"{\"pad\":\"".to_vec();
    b.resize(size - 2, b'a');
    b.extend_from_slice(b"\"}");
    b
}

/// Path segments that are not ids at all: (segment, breaks the HTTP request line).
const NASTY_SEGMENTS: &[(&str, bool)] = &[
    ("", false),
    (".", false),
    ("%2e", false),
    ("%2F", false),
    ("..%2F..%2Fadmin", false),
    ("%5C..%5C", false),
    ("'%3B%20DROP%20TABLE%20profiles%3B--", false),
    ("%27%20OR%201%3D1--", false),
    ("%0D%0ASet-Cookie:%20x=1", false),
    ("%E2%80%AE", false),
    ("%F0%9F%98%80", false),
    ("%C3%28", false),
    ("%F8%88%80%80%80", false),
    ("%E2%82", false),
    ("%25", false),
    ("%%%", false),
    ("1", false),
    ("-1", false),
    ("0x10", false),
    ("null", false),
    ("undefined", false),
    ("*", false),
    ("$(reboot)", false),
    ("{user_id}", false),
    ("日本", true),
    ("\u{0}", true),
    ("a b", true),
];

// ---------------------------------------------------------------------------------------
// After-the-fact integrity checks.
// ---------------------------------------------------------------------------------------

/// Every known profile reads back through the API (cache) exactly as the database has it.
async fn cache_agrees_with_database(world: &World, ids: &[UserId]) -> Vec<String> {
    let mut failures = Vec::new();
    let get = |path: String| Req::new("GET", path, Who::Admin).auth(&world.admin_token);
    for &id in ids {
        let stored = world.stored(id).await;
        for round in 0..2 {
            let out = send(world.addr, &get(format!("/api/profiles/{id}"))).await;
            let served = match &out {
                Outcome::Resp(r) if r.status == 200 => r.json().map(|mut body| {
                    let mut p = body["profile"].take();
                    if let Some(o) = p.as_object_mut() {
                        o.remove("cached_at");
                    }
                    p
                }),
                Outcome::Resp(r) if r.status == 404 => Some(Value::Null),
                _ => None,
            };
            if served.as_ref() != Some(&stored["profile"]) {
                failures.push(format!(
                    "profile read {round} disagrees with the database\n    {id}: served {}\n    database holds {}",
                    out.describe(),
                    stored["profile"]
                ));
            }
            for kind in ["settings", "preferences"] {
                let out = send(world.addr, &get(format!("/api/profiles/{id}/{kind}"))).await;
                let held = &stored[kind]["data"];
                let agrees = match &out {
                    Outcome::Resp(r) if r.status == 200 => carries(r, kind, held),
                    Outcome::Resp(r) if r.status == 404 => held.is_null(),
                    _ => false,
                };
                if !agrees {
                    failures.push(format!(
                        "{kind} read {round} disagrees with the database\n    {id}: served {}\n    database holds {held}",
                        out.describe()
                    ));
                }
            }
        }
    }
    failures
}

/// The service still answers `/health` (and `/ready`, the database being up) after the junk.
async fn still_serving(world: &World) -> Vec<String> {
    let mut failures = Vec::new();
    for (path, want) in [
        ("/health", Some(json!({"status": "ok"}))),
        ("/healthz", None),
        ("/ready", None),
    ] {
        let out = send(world.addr, &Req::new("GET", path, Who::Anonymous)).await;
        let ok = match &out {
            Outcome::Resp(r) => {
                r.status == 200 && want.as_ref().is_none_or(|w| r.json().as_ref() == Some(w))
            }
            Outcome::NoResponse(_) => false,
        };
        if !ok {
            failures.push(format!("{path} after the junk answered {}", out.describe()));
        }
    }
    failures
}

// ---------------------------------------------------------------------------------------
// The tests.
// ---------------------------------------------------------------------------------------

/// The checks are not vacuous: a real leak (an admin's read of the victim, labelled as
/// another user's), a 500, a text/plain 4xx, a 4xx without `detail` and an unauthenticated
/// 2xx on `/api` are all flagged.
async fn checks_catch_what_they_should(world: &World) {
    let mut leak = Req::new("GET", format!("/api/profiles/{}", world.victim), Who::Other)
        .auth(&world.admin_token);
    let out = send(world.addr, &leak).await;
    assert!(
        problem(world, &leak, &out).is_some_and(|p| p.contains("another user's data")),
        "the leak check missed {}",
        out.describe()
    );
    leak.who = Who::Junk;
    for (status, ct, body) in [
        (500, "application/json", r#"{"detail":"x"}"#),
        (400, "text/plain", "bad"),
        (422, "application/json", r#"{"error":"x"}"#),
        (200, "application/json", "{}"),
    ] {
        let fake = Outcome::Resp(Resp {
            status,
            headers: vec![("content-type".into(), ct.into())],
            body: body.into(),
            raw: body.into(),
        });
        assert!(
            problem(world, &leak, &fake).is_some(),
            "the checks let {status} {ct} {body} through"
        );
    }
}

/// PostgreSQL with a Redis node of its own, and SQLite with the in-process store.
#[rstest]
#[case::postgres_with_redis(Backend::Postgres, StoreKind::Own, 700)]
#[case::sqlite(Backend::Sqlite, StoreKind::Memory, 300)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_barrage(#[case] backend: Backend, #[case] store: StoreKind, #[case] count: usize) {
    let seed = seed();
    let world = World::build(backend, store).await;
    let victim_before = world.stored(world.victim).await;

    let mut generator = Gen {
        rng: Rng::new(seed),
        w: &world,
    };
    let reqs: Vec<Req> = (0..count).map(|_| generator.request()).collect();
    checks_catch_what_they_should(&world).await;
    let started = std::time::Instant::now();
    let (outcomes, failures) = run_checked(&world, &reqs).await;
    let took = started.elapsed();
    eprintln!(
        "{backend:?} barrage: {count} requests in {took:?}, seed {seed:#x}; statuses: {}",
        histogram(&outcomes)
    );
    let mut failures = failures;
    failures.extend(still_serving(&world).await);

    // Nothing in the barrage was allowed to touch the victim: every field, the timestamps,
    // and both documents are exactly as before, in the database and as served.
    let victim_after = world.stored(world.victim).await;
    if victim_after != victim_before {
        failures.push(format!(
            "the victim's data changed during the barrage\n    before: {victim_before}\n    after:  {victim_after}"
        ));
    }

    // Profiles created during the barrage, plus the fixed cast: cache and database agree.
    let mut ids = vec![world.victim, world.other, world.player, world.fresh];
    for o in &outcomes {
        if let Outcome::Resp(r) = o
            && r.status == 201
            && let Some(id) = r
                .json()
                .and_then(|b| b["profile"]["user_id"].as_str().map(str::to_owned))
        {
            ids.push(id.parse().unwrap());
        }
    }
    failures.extend(cache_agrees_with_database(&world, &ids).await);
    report(
        &format!("{backend:?} barrage"),
        &failures,
        &format!(" (seed {seed:#x}; rerun with ROBUSTNESS_SEED={seed:#x})"),
    );
}

/// Ids that are not a canonical UUID once percent-decoded, but still one path segment:
/// SPEC 6 wants 422 for each (and they must never reach a store).
const NOT_UUIDS: &[&str] = &[
    "not-a-uuid",
    "1",
    "0x10",
    "null",
    "%00",
    "%FF",
    "%C0%AF",
    "%ED%A0%80",
    "%E2%82",
    "%F8%88%80%80%80",
    "%E6%97%A5%E6%9C%AC",
    "%F0%9F%98%80",
    "..",
    "%2e%2e",
    "%2F",
    "..%2F..%2Fadmin",
    "%27%3B%20DROP%20TABLE%20profiles%3B--",
    "%0D%0A",
    "%25",
    "%ZZ",
    "%",
    "550e8400e29b41d4a716446655440000",
    "%7B550e8400-e29b-41d4-a716-446655440000%7D",
    "urn:uuid:550e8400-e29b-41d4-a716-446655440000",
    "550e8400-e29b-41d4-a716-44665544000g",
    "550e8400-e29b-41d4-a716-446655440000%00",
    "%20550e8400-e29b-41d4-a716-446655440000",
];

/// Every `{user_id}` route and method, every malformed id, as an admin and as a user:
/// 422 JSON (403 for a user on an admin-only route), never anything else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_ids_on_every_route_are_422_json() {
    let world = World::build(Backend::Postgres, StoreKind::Memory).await;
    let long_ids = ["a".repeat(10 * 1024), "%41".repeat(3500)];
    let ids: Vec<&str> = NOT_UUIDS
        .iter()
        .copied()
        .chain(long_ids.iter().map(String::as_str))
        .collect();
    let mut reqs = Vec::new();
    let mut expected = Vec::new();
    for (template, methods) in world.routes.iter().filter(|(t, _)| t.contains("{user_id}")) {
        for method in methods {
            for id in &ids {
                for who in [Who::Admin, Who::Other] {
                    let target = template.replace("{user_id}", id);
                    let mut req = Req::new(method, target, who).auth(world.token(who).unwrap());
                    if method != "GET" && method != "DELETE" {
                        req = req.json("{}");
                    }
                    let admin_only = template.starts_with("/api/admin");
                    expected.push(if admin_only && who != Who::Admin {
                        403
                    } else {
                        422
                    });
                    reqs.push(req);
                }
            }
        }
    }
    let (outcomes, mut failures) = run_checked(&world, &reqs).await;
    for (i, ((req, out), want)) in reqs.iter().zip(&outcomes).zip(&expected).enumerate() {
        if out.status() != Some(*want) {
            failures.push(format!(
                "expected {want}, got {:?}\n    #{i} request: {}\n       answer:  {}",
                out.status(),
                req.describe(),
                out.describe()
            ));
        }
    }
    eprintln!(
        "{} malformed-id requests; statuses: {}",
        reqs.len(),
        histogram(&outcomes)
    );
    failures.extend(still_serving(&world).await);
    report("malformed path ids", &failures, "");
}

/// Query strings on every route and documented method are ignored (same status as without)
/// or refused with a 4xx; never a 5xx, never someone else's data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_strings_on_every_route() {
    let world = World::build(Backend::Postgres, StoreKind::Memory).await;
    let queries = [
        String::new(),
        "?".into(),
        "?a=1&a=2&&=&==".into(),
        format!("?user_id={}", world.victim),
        format!("?sub={}&role=admin", world.victim),
        "?%FF=%00&%ZZ&%".into(),
        format!("?q={}", "x".repeat(20_000)),
        "?x[]=1&x[]=2&__proto__[admin]=true".into(),
        "?%E6%97%A5=%F0%9F%98%80".into(),
        "?page=-1&limit=99999999999999999999&fields=*".into(),
    ];
    // `GET /profile` creates the caller's profile on first use: do that once, alone, so every
    // variant below compares against the same state (concurrent first uses race; that is
    // `concurrent_first_use_of_get_profile`'s business).
    for who in [Who::Admin, Who::Other] {
        let first = Req::new("GET", "/profile", who).auth(world.token(who).unwrap());
        assert_eq!(send(world.addr, &first).await.status(), Some(200));
    }
    // Reads only, with ids they may see, so the comparison against "no query" is exact.
    let mut reqs = Vec::new();
    for (template, methods) in &world.routes {
        for method in methods.iter().filter(|m| *m == "GET") {
            for who in [Who::Admin, Who::Other, Who::Anonymous] {
                for q in &queries {
                    let id = if who == Who::Admin {
                        world.player
                    } else {
                        world.other
                    };
                    let target = format!("{}{q}", template.replace("{user_id}", &id.to_string()));
                    let mut req = Req::new(method, target, who);
                    if let Some(t) = world.token(who) {
                        req = req.auth(t);
                    }
                    reqs.push(req);
                }
            }
        }
    }
    let (outcomes, mut failures) = run_checked(&world, &reqs).await;
    for (group, chunk) in outcomes.chunks(queries.len()).enumerate() {
        let base = chunk[0].status();
        for (j, o) in chunk.iter().enumerate().skip(1) {
            let s = o.status();
            let ignored = s == base || (base == Some(200) && s == Some(304));
            let refused = s.is_some_and(|s| (400..500).contains(&s));
            if !(ignored || refused) {
                let req = &reqs[group * queries.len() + j];
                failures.push(format!(
                    "a query string changed the answer from {base:?} to {s:?}\n    request: {}",
                    req.describe()
                ));
            }
        }
    }
    // Writes and admin actions with queries: never a 5xx (answers checked by `problem`).
    let mut writes = Vec::new();
    for (template, methods) in &world.routes {
        for method in methods.iter().filter(|m| *m != "GET") {
            for q in queries.iter().skip(1) {
                let target = format!(
                    "{}{q}",
                    template.replace("{user_id}", &UserId::random().to_string())
                );
                writes.push(
                    Req::new(method, target, Who::Other)
                        .auth(&world.other_token)
                        .json("{}"),
                );
            }
        }
    }
    let (write_outcomes, write_failures) = run_checked(&world, &writes).await;
    failures.extend(write_failures);
    eprintln!(
        "{} query-string reads ({}), {} writes ({})",
        reqs.len(),
        histogram(&outcomes),
        writes.len(),
        histogram(&write_outcomes)
    );
    failures.extend(still_serving(&world).await);
    report("query strings", &failures, "");
}

/// Bodies of exactly 64 KiB pass the size check on every body-taking route; one byte more
/// is 413 JSON, whether sized or chunked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_around_64_kib() {
    let world = World::build(Backend::Postgres, StoreKind::Memory).await;
    let mut reqs = Vec::new();
    let mut over = Vec::new();
    assert!(world.body_routes.len() >= 7, "{:?}", world.body_routes);
    for (template, method) in &world.body_routes {
        {
            let target = template.replace("{user_id}", &world.player.to_string());
            for size in [LIMIT - 1, LIMIT, LIMIT + 1, LIMIT + 4096, 1024 * 1024] {
                for chunked in [false, true] {
                    let body = padded_object(size);
                    let body = if chunked {
                        Body::Chunked(body)
                    } else {
                        Body::Sized(body)
                    };
                    reqs.push(
                        Req::new(method, target.clone(), Who::Admin)
                            .auth(&world.admin_token)
                            .header("Content-Type", "application/json")
                            .with_body(body),
                    );
                    over.push(size > LIMIT);
                }
            }
        }
    }
    let (outcomes, mut failures) = run_checked(&world, &reqs).await;
    for (i, ((req, out), over)) in reqs.iter().zip(&outcomes).zip(&over).enumerate() {
        let s = out.status();
        let bad = if *over {
            s != Some(413)
        } else {
            s == Some(413) || s.is_none()
        };
        if bad {
            failures.push(format!(
                "{} bytes answered {s:?}\n    #{i} request: {}\n       answer:  {}",
                if *over {
                    "over 64 KiB"
                } else {
                    "64 KiB or less"
                },
                req.describe(),
                out.describe()
            ));
        }
    }
    eprintln!(
        "{} sized bodies; statuses: {}",
        reqs.len(),
        histogram(&outcomes)
    );
    failures.extend(still_serving(&world).await);
    report("bodies around 64 KiB", &failures, "");
}

/// Huge and numerous headers, very long paths, several `Authorization` headers, and requests
/// broken at the HTTP level: never a 5xx, never a crash, never a privilege mix-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_and_wire_edge_cases() {
    let world = World::build(Backend::Postgres, StoreKind::Memory).await;
    let victim_before = world.stored(world.victim).await;
    let me = "/api/profiles/me";
    let other = world.other_token.as_str();
    let admin = world.admin_token.as_str();
    let mut reqs: Vec<Req> = Vec::new();
    let junk = |mut r: Req| {
        r.wire_junk = true;
        r
    };

    // Large headers: answered by the app (JSON) or refused by hyper (431), never a 5xx.
    for size in [8 * 1024, 16 * 1024, 64 * 1024, 100 * 1024, 1024 * 1024] {
        reqs.push(junk(
            Req::new("GET", me, Who::Other)
                .auth(other)
                .header("X-Junk", "j".repeat(size)),
        ));
        reqs.push(junk(
            Req::new("GET", me, Who::Junk)
                .header("Authorization", format!("Bearer {}", "t".repeat(size))),
        ));
    }
    // Many headers.
    for n in [50usize, 99, 100, 101, 500, 5000] {
        let mut r = Req::new("GET", me, Who::Other).auth(other);
        for i in 0..n {
            r = r.header(&format!("X-H{i}"), format!("v{i}"));
        }
        reqs.push(junk(r));
        let mut r = Req::new("GET", me, Who::Other).auth(other);
        for _ in 0..n {
            r = r.header("X-Same", "v");
        }
        reqs.push(junk(r));
    }
    // Several Authorization headers: a user's token first must not gain an admin's rights.
    reqs.push(
        Req::new("GET", "/api/admin/cache/metrics", Who::Other)
            .auth(other)
            .auth(admin),
    );
    let mut two = Req::new(
        "GET",
        &*format!("/api/profiles/{}", world.victim),
        Who::Other,
    )
    .auth(other)
    .auth(admin);
    two.at_victim = true;
    reqs.push(two);
    reqs.push(
        Req::new("GET", "/api/admin/cache/metrics", Who::Junk)
            .header("Authorization", "Bearer junk")
            .auth(admin),
    );
    // Long paths: 20 000 characters, on several routes; 70 000 (over hyper's URI limit).
    for (who, prefix) in [
        (Who::Anonymous, "/"),
        (Who::Other, "/api/profiles/"),
        (Who::Admin, "/api/profiles/"),
        (Who::Admin, "/api/admin/cache/invalidate/"),
        (Who::Other, "/profile/"),
    ] {
        for len in [20_000usize, 70_000] {
            let mut r = Req::new(
                "GET",
                format!("{prefix}{}", "a".repeat(len - prefix.len())),
                who,
            );
            if let Some(t) = world.token(who) {
                r = r.auth(t);
            }
            reqs.push(if len > 65_000 { junk(r) } else { r });
        }
    }
    let deep = format!("/api/profiles/{}/{}", world.other, "x/".repeat(10_000));
    reqs.push(Req::new("GET", deep, Who::Other).auth(other));
    let dots = format!("/api/profiles/{}", "../".repeat(6_000));
    reqs.push(Req::new("GET", dots, Who::Other).auth(other));
    // Broken at the HTTP level.
    let wire: Vec<Req> = vec![
        Req::new("GET", me, Who::Other)
            .auth(other)
            .header("X-Nul", b"a\0b".to_vec()),
        Req::new("GET", me, Who::Other)
            .auth(other)
            .header("X-Cr", b"a\rb".to_vec()),
        Req::new("GET", me, Who::Other)
            .auth(other)
            .header("Bad Name", "x"),
        Req::new("GET", me, Who::Other).auth(other).header("", "x"),
        Req::new("GET", me, Who::Other)
            .auth(other)
            .header("X-Fold", b"a\r\n\tfolded".to_vec()),
        Req::new("GET", "/api/profiles/日本", Who::Other).auth(other),
        Req::new("GET", b"/api/profiles/\xff\xfe".to_vec(), Who::Other).auth(other),
        Req::new("GET", "/api/profiles/a b", Who::Other).auth(other),
        Req::new("GET", "/api/profiles/a#frag", Who::Other).auth(other),
        Req::new("GET", "api/profiles/me", Who::Other).auth(other),
        Req::new("GET", "*", Who::Other).auth(other),
        Req::new("OPTIONS", "*", Who::Other).auth(other),
        Req::new("CONNECT", "127.0.0.1:80", Who::Other).auth(other),
        Req::new("CONNECT", me, Who::Other).auth(other),
        Req::new("GET", "http://evil.example/api/profiles/me", Who::Other).auth(other),
        Req::new("G\0T", me, Who::Other).auth(other),
        Req::new(&"A".repeat(5000), me, Who::Other).auth(other),
        Req::new("PUT", format!("/api/profiles/{}", world.other), Who::Other)
            .auth(other)
            .header("Content-Type", "application/json")
            .header("Content-Length", "5")
            .with_body(Body::Chunked(b"{}".to_vec())),
        Req::new("PUT", format!("/api/profiles/{}", world.other), Who::Other)
            .auth(other)
            .header("Content-Type", "application/json")
            .header("Content-Length", "-1"),
        Req::new("PUT", format!("/api/profiles/{}", world.other), Who::Other)
            .auth(other)
            .header("Content-Type", "application/json")
            .header("Content-Length", "2")
            .header("Content-Length", "3")
            .with_body(Body::None),
        Req::new("PUT", format!("/api/profiles/{}", world.other), Who::Other)
            .auth(other)
            .header("Transfer-Encoding", "gzip")
            .json("{}"),
        Req::new("PUT", format!("/api/profiles/{}", world.other), Who::Other)
            .auth(other)
            .header("Content-Type", "application/json")
            .header("Content-Length", "99999999999999999999999"),
        Req::new(
            "PUT",
            format!("/api/profiles/{}/settings", world.other),
            Who::Other,
        )
        .auth(other)
        .header("Content-Type", "application/json")
        .header("Expect", "100-continue")
        .with_body(Body::Sized(padded_object(LIMIT + 10))),
        {
            let mut r = Req::new("GET", me, Who::Other).auth(other);
            r.no_host = true;
            r
        },
        Req::new("GET", me, Who::Other)
            .auth(other)
            .header("Host", "evil.example:99999"),
        Req::new("GET", me, Who::Other)
            .auth(other)
            .header("Host", "a")
            .header("Host", "b"),
    ]
    .into_iter()
    .map(junk)
    .collect();
    reqs.extend(wire);
    // A body cut short: Content-Length says more than arrives before the client half-closes.
    for body in [padded_object(1000), padded_object(LIMIT)] {
        let mut r = Req::new("PUT", format!("/api/profiles/{}", world.other), Who::Other)
            .auth(other)
            .json(body);
        r.truncate_to = Some(100);
        reqs.push(junk(r));
    }

    let (outcomes, mut failures) = run_checked(&world, &reqs).await;
    eprintln!(
        "{} header/wire requests; statuses: {}",
        reqs.len(),
        histogram(&outcomes)
    );
    failures.extend(still_serving(&world).await);
    let after = send(world.addr, &Req::new("GET", me, Who::Other).auth(other)).await;
    if after.status() != Some(200) {
        failures.push(format!(
            "a normal request after the junk answered {}",
            after.describe()
        ));
    }
    if world.stored(world.victim).await != victim_before {
        failures.push("the victim's data changed".into());
    }
    report("header and wire edge cases", &failures, "");
}

/// The answer holds `"<kind>": <expected>` (compared as text when too deep to parse here;
/// the service and this test serialize with the same serde_json, so the text is canonical).
fn carries(r: &Resp, kind: &str, expected: &Value) -> bool {
    match r.json() {
        Some(body) => body[kind] == *expected,
        None => {
            let text = format!("\"{kind}\":{}", serde_json::to_string(expected).unwrap());
            find(&r.body, text.as_bytes()).is_some()
        }
    }
}

/// Settings and preferences holding extreme numbers and deep nesting: each write is stored
/// and read back exactly (database, cache and answer agree) or refused with a 4xx that
/// leaves the previous document in place; never a 5xx.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extreme_documents(#[values(Backend::Postgres, Backend::Sqlite)] backend: Backend) {
    let world = World::build(backend, StoreKind::Memory).await;
    let id = world.other;
    let token = world.other_token.as_str();
    let deep = |depth: usize| {
        format!(
            "{{\"a\":{}{}}}",
            "[".repeat(depth - 1),
            "]".repeat(depth - 1)
        )
    };
    let bodies: Vec<String> = [
        "{\"n\":1.7976931348623157e308}",
        "{\"n\":-1.7976931348623157e308}",
        "{\"n\":[1e308,-1e308,2.2250738585072014e-308,5e-324,-0.0,0.1,1e-7]}",
        "{\"n\":123456789012345678901234567890}",
        "{\"n\":1e-400}",
        "{\"n\":1.5e300,\"m\":{\"o\":[1.7976931348623155e308]}}",
        "{\"k\\u0000\":1}",
        "{\"k\":\"\\u0000\"}",
        "{\"k\":\"\\\\u0000\"}",
        "{\"k\":\"\\ud83d\\ude00 \\u202e \\uffff\"}",
        "{\"\":{\"\":[]}}",
    ]
    .into_iter()
    .map(str::to_owned)
    .chain([64, 120, 126, 127, 128, 129].into_iter().map(deep))
    .collect();
    let mut failures = Vec::new();
    let mut never_cached = Vec::new();
    for kind in ["settings", "preferences"] {
        let path = format!("/api/profiles/{id}/{kind}");
        for body in &bodies {
            let before = world.stored(id).await[kind]["data"].clone();
            let put = Req::new("PUT", &*path, Who::Other)
                .auth(token)
                .json(body.clone());
            let out = send(world.addr, &put).await;
            if let Some(p) = problem(&world, &put, &out) {
                failures.push(format!(
                    "{p}\n    request: {}\n    answer:  {}",
                    put.describe(),
                    out.describe()
                ));
                if world.stored(id).await[kind]["data"] != before {
                    failures.push(format!(
                        "a failed {kind} write changed the stored document\n    request: {}",
                        put.describe()
                    ));
                }
                continue;
            }
            let Outcome::Resp(r) = &out else { continue };
            let stored = world.stored(id).await[kind]["data"].clone();
            let expected = if r.status == 200 {
                if !carries(r, kind, &stored) {
                    failures.push(format!(
                        "{kind} answer differs from what was stored\n    request: {}\n    answer: {}\n    stored: {stored}",
                        put.describe(),
                        preview(&r.body, 300)
                    ));
                }
                stored
            } else {
                if stored != before {
                    failures.push(format!(
                        "a refused {kind} write changed the stored document\n    request: {}",
                        put.describe()
                    ));
                }
                before
            };
            let mut cached = false;
            for round in 0..2 {
                let get = Req::new("GET", &*path, Who::Other).auth(token);
                let out = send(world.addr, &get).await;
                let served = match &out {
                    Outcome::Resp(r) if r.status == 200 => r,
                    other => {
                        failures.push(format!(
                            "{kind} read {round} after a write answered {}\n    write: {}",
                            other.describe(),
                            put.describe()
                        ));
                        break;
                    }
                };
                cached |= find(&served.body, b"\"cached\":true").is_some();
                if !carries(served, kind, &expected) {
                    failures.push(format!(
                        "{kind} read {round} differs from the database\n    write: {}\n    served: {}\n    stored: {expected}",
                        put.describe(),
                        preview(&served.body, 300)
                    ));
                }
            }
            if r.status == 200 && !cached {
                never_cached.push(format!("{kind} {}", preview(body.as_bytes(), 60)));
            }
        }
    }
    if !never_cached.is_empty() {
        // Not a broken promise (the database answers), but worth knowing: these documents
        // never come from the cache.
        eprintln!("{backend:?}: documents never served from the cache: {never_cached:?}");
    }
    failures.extend(still_serving(&world).await);
    report(&format!("{backend:?} extreme documents"), &failures, "");
}

/// `GET /profile` creates the caller's profile on first use (SPEC 3). Many first requests at
/// once must all get it, the same one: none may answer 404 because a racing request created
/// it first.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_use_of_get_profile(
    #[values(Backend::Postgres, Backend::Sqlite)] backend: Backend,
) {
    let world = World::build(backend, StoreKind::Memory).await;
    let mut failures = Vec::new();
    for round in 0..50 {
        let user = UserId::random();
        let token = token(user, Role::User);
        let reqs: Vec<Req> = (0..CONCURRENCY)
            .map(|_| Req::new("GET", "/profile", Who::Fresh).auth(&token))
            .collect();
        let outcomes = send_all(world.addr, &reqs).await;
        let mut created = std::collections::BTreeSet::new();
        for out in &outcomes {
            match out {
                Outcome::Resp(r) if r.status == 200 => {
                    let body = r.json().unwrap_or_default();
                    if body["user_id"] != json!(user.to_string()) {
                        failures.push(format!("round {round}: someone else's profile: {body}"));
                    }
                    created.insert(body["created_at"].to_string());
                }
                other => failures.push(format!(
                    "a first-use GET /profile did not answer 200\n    round {round}, {} concurrent requests of one new user: {}",
                    reqs.len(),
                    other.describe()
                )),
            }
        }
        if created.len() > 1 {
            failures.push(format!(
                "round {round}: different profiles created: {created:?}"
            ));
        }
        let after = send(
            world.addr,
            &Req::new("GET", "/api/profiles/me", Who::Fresh).auth(&token),
        )
        .await;
        if after.status() != Some(200) {
            failures.push(format!(
                "the profile is not readable after its first use\n    round {round}: {}",
                after.describe()
            ));
        }
    }
    report(
        &format!("{backend:?} concurrent first use of GET /profile"),
        &failures,
        "",
    );
}
