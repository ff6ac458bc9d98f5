//! The world the barrage runs in (users, tokens, markers, routes) and the promises every
//! answer must keep: below 500, every 4xx a JSON `{"detail": ...}`, no other user's data,
//! nothing unauthenticated on a protected route; then, after the junk, the service still
//! answers and the cache agrees with the database.

use std::net::SocketAddr;

use serde_json::{Value, json};
use user_api::domain::{DocumentKind, UserId};

use super::junk::junk_tokens;
use crate::helpers::raw_http::{self, Outcome, Resp, find, send, send_all};
use crate::helpers::redis::{StoreKind, Target};
use crate::helpers::{Backend, Role, TestApp, token};

/// Who sends a request: decides the token, which ids it aims at, and what it may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Who {
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

/// What the checks keep with each request.
#[derive(Debug, Clone, Copy)]
pub struct Meta {
    pub who: Who,
    /// The request aims at the victim's data (never done with an allowed token).
    pub at_victim: bool,
    /// Deliberately broken at the HTTP level: hyper may refuse it (empty-bodied 4xx or a
    /// closed connection) before the application sees it.
    pub wire_junk: bool,
}

impl From<Who> for Meta {
    fn from(who: Who) -> Self {
        Self {
            who,
            at_victim: false,
            wire_junk: false,
        }
    }
}

/// A request of the barrage.
pub type Req = raw_http::Req<Meta>;

pub struct World {
    pub app: TestApp,
    pub addr: SocketAddr,
    /// Nobody in the barrage may read or write this profile (admins never aim at it).
    pub victim: UserId,
    pub other: UserId,
    pub player: UserId,
    pub fresh: UserId,
    pub admin_token: String,
    pub other_token: String,
    pub player_token: String,
    pub fresh_token: String,
    pub junk_tokens: Vec<Vec<u8>>,
    /// (marker, who may see it in a response).
    pub markers: Vec<(String, &'static [Who])>,
    /// Route templates and their documented methods (upper case), from `/openapi.json`.
    pub routes: Vec<(String, Vec<String>)>,
    /// (template, method) of the operations that document a request body.
    pub body_routes: Vec<(String, String)>,
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
    pub async fn build(backend: Backend, store: StoreKind) -> Self {
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

    pub fn token(&self, who: Who) -> Option<&str> {
        match who {
            Who::Admin => Some(&self.admin_token),
            Who::Other => Some(&self.other_token),
            Who::Player => Some(&self.player_token),
            Who::Fresh => Some(&self.fresh_token),
            Who::Junk | Who::Anonymous => None,
        }
    }

    /// Profile, settings and preferences straight from the database.
    pub async fn stored(&self, id: UserId) -> Value {
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
pub fn problem(world: &World, req: &Req, out: &Outcome) -> Option<String> {
    let r = match out {
        Outcome::Resp(r) => r,
        Outcome::NoResponse(e) if req.tag.wire_junk && !e.contains("timed out") => return None,
        Outcome::NoResponse(e) => return Some(format!("no answer ({e})")),
    };
    if r.status >= 500 {
        return Some(format!("server error {}", r.status));
    }
    for (marker, allowed) in &world.markers {
        if find(&r.raw, marker.as_bytes()).is_some() && !allowed.contains(&req.tag.who) {
            return Some(format!("another user's data ({marker}) in the answer"));
        }
    }
    let content_type = r.header("content-type").unwrap_or("");
    let is_json = content_type.starts_with("application/json");
    let head = req.method == "HEAD";
    if r.status >= 400 {
        let hyper_level = r.body.is_empty() && content_type.is_empty();
        if head || (hyper_level && req.tag.wire_junk) {
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
        if matches!(req.tag.who, Who::Junk | Who::Anonymous) && protected(&path) {
            return Some(format!(
                "{} to an unauthenticated caller on a protected route",
                r.status
            ));
        }
        if req.tag.at_victim {
            return Some(format!(
                "{} on the victim's data for a caller who may not touch it",
                r.status
            ));
        }
        if path.starts_with("/api/admin") && req.tag.who != Who::Admin {
            return Some(format!("{} on an admin route for a non-admin", r.status));
        }
        if is_json && !head && !r.is_json() {
            return Some("2xx JSON answer that does not parse".into());
        }
    }
    None
}

/// Sends `reqs`, checks every answer, and returns the outcomes plus failure lines.
pub async fn run_checked(world: &World, reqs: &[Req]) -> (Vec<Outcome>, Vec<String>) {
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

pub fn histogram(outcomes: &[Outcome]) -> String {
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
pub fn report(what: &str, failures: &[String], extra: &str) {
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
// After-the-fact integrity checks.
// ---------------------------------------------------------------------------------------

/// Every known profile reads back through the API (cache) exactly as the database has it.
pub async fn cache_agrees_with_database(world: &World, ids: &[UserId]) -> Vec<String> {
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
pub async fn still_serving(world: &World) -> Vec<String> {
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

/// The checks are not vacuous: a real leak (an admin's read of the victim, labelled as
/// another user's), a 500, a text/plain 4xx, a 4xx without `detail` and an unauthenticated
/// 2xx on `/api` are all flagged.
pub async fn checks_catch_what_they_should(world: &World) {
    let mut leak = Req::new("GET", format!("/api/profiles/{}", world.victim), Who::Other)
        .auth(&world.admin_token);
    let out = send(world.addr, &leak).await;
    assert!(
        problem(world, &leak, &out).is_some_and(|p| p.contains("another user's data")),
        "the leak check missed {}",
        out.describe()
    );
    leak.tag.who = Who::Junk;
    for (status, ct, body) in [
        (500, "application/json", r#"{"detail":"x"}"#),
        (400, "text/plain", "bad"),
        (422, "application/json", r#"{"error":"x"}"#),
        (200, "application/json", "{}"),
    ] {
        let fake = Outcome::Resp(Resp {
            status,
            head: String::new(),
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

/// The answer holds `"<kind>": <expected>` (compared as text when too deep to parse here;
/// the service and this test serialize with the same serde_json, so the text is canonical).
pub fn carries(r: &Resp, kind: &str, expected: &Value) -> bool {
    match r.json() {
        Some(body) => body[kind] == *expected,
        None => {
            let text = format!("\"{kind}\":{}", serde_json::to_string(expected).unwrap());
            find(&r.body, text.as_bytes()).is_some()
        }
    }
}
