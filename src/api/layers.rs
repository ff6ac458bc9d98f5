//! Cross-cutting middleware: authentication, the per-user rate limit, request metrics
//! and the per-request log line, panic containment.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{LazyLock, RwLock};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, Response};
use axum::middleware::Next;
use axum::response::IntoResponse;

use crate::error::ApiError;
use crate::state::AppState;

/// Bounds a whole request by `server.request_timeout_ms`: a request stuck past it (every
/// dependency has its own, shorter timeout, so this is the last resort) gets a JSON 503
/// rather than holding the connection.
pub async fn bound_request(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response<Body> {
    let limit = std::time::Duration::from_millis(state.config.server.request_timeout_ms);
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(res) => res,
        Err(_) => {
            tracing::warn!(
                timeout_ms = state.config.server.request_timeout_ms,
                "request timed out"
            );
            ApiError::Unavailable("The service").into_response()
        }
    }
}

/// `router` under the panic catcher and, outside it, [`record_metrics`]: a panic is then
/// counted, logged and answered as a JSON 500.
pub fn observed<S: Clone + Send + Sync + 'static>(router: axum::Router<S>) -> axum::Router<S> {
    router
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            panic_response,
        ))
        .layer(axum::middleware::from_fn(record_metrics))
}

/// Counts requests and their latency by route template and status, the requests in
/// progress and the exceptions (a 5xx answer or a panic), and writes the one
/// `Request completed` line per request (SPEC 7; docs/operations.md). Runs outside the
/// panic catcher, so a panic is counted and logged as the 500 it is answered with.
pub async fn record_metrics(req: Request, next: Next) -> Response<Body> {
    // Bounded: made-up methods share the label "other" (routes are templates or "unmatched").
    let method = super::edge::method_label(req.method());
    let mut done = Completion {
        start: Instant::now(),
        request_id: req.headers().get(super::request_id::HEADER).cloned(),
        method: req.method().clone(),
        route: req.extensions().get::<MatchedPath>().cloned(),
        status: None,
    };
    IN_PROGRESS.increment(1.0);
    let res = next.run(req).await;
    let status = res.status().as_u16();
    done.status = Some(status);
    let route = done.route.as_ref().map_or("unmatched", |m| m.as_str());
    let (requests, duration) = request_series(method, route, status);
    requests.increment(1);
    duration.record(done.start.elapsed().as_secs_f64());
    if res.status().is_server_error() {
        static SERVER_ERROR: LazyLock<metrics::Counter> =
            LazyLock::new(|| metrics::counter!("http_exceptions_total", "kind" => "server_error"));
        static PANIC: LazyLock<metrics::Counter> =
            LazyLock::new(|| metrics::counter!("http_exceptions_total", "kind" => "panic"));
        match res.extensions().get::<Panicked>() {
            Some(_) => PANIC.increment(1),
            None => SERVER_ERROR.increment(1),
        }
    }
    res
}

/// `http_requests_in_progress`, looked up once.
static IN_PROGRESS: LazyLock<metrics::Gauge> =
    LazyLock::new(|| metrics::gauge!("http_requests_in_progress"));

/// What the `Request completed` line says; written when the request ends, also when it
/// is abandoned (the client went away, the server stopped waiting): then with 499, as
/// nginx logs a request its client closed.
struct Completion {
    start: Instant,
    request_id: Option<axum::http::HeaderValue>,
    method: Method,
    route: Option<MatchedPath>,
    status: Option<u16>,
}

impl Drop for Completion {
    fn drop(&mut self) {
        IN_PROGRESS.decrement(1.0);
        let elapsed_ms = self.start.elapsed().as_secs_f64() * 1000.0;
        tracing::info!(
            request_id = self
                .request_id
                .as_ref()
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-"),
            method = self.method.as_str(),
            path = self.route.as_ref().map_or("unmatched", |m| m.as_str()),
            status_code = self.status.unwrap_or(499),
            duration_ms = (elapsed_ms * 100.0).round() / 100.0,
            "Request completed"
        );
    }
}

/// Marks the 500 a panic was turned into, for `http_exceptions_total{kind="panic"}`.
#[derive(Clone, Copy)]
struct Panicked;

/// The request counter and latency histogram of one (method, route, status), registered
/// once: their labels are then not rebuilt and looked up on every request. Bounded, since
/// methods are a fixed set, routes are templates and statuses are few.
fn request_series(
    method: &'static str,
    route: &str,
    status: u16,
) -> (metrics::Counter, metrics::Histogram) {
    type Series = HashMap<(&'static str, u16), (metrics::Counter, metrics::Histogram)>;
    static SERIES: LazyLock<RwLock<HashMap<String, Series>>> = LazyLock::new(Default::default);
    if let Some(found) = SERIES
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .get(route)
        .and_then(|by| by.get(&(method, status)))
    {
        return found.clone();
    }
    let labels = [
        ("method", method.to_owned()),
        ("route", route.to_owned()),
        ("status", status.to_string()),
    ];
    let series = (
        metrics::counter!("http_requests_total", &labels),
        metrics::histogram!("http_request_duration_seconds", &labels),
    );
    SERIES
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .entry(route.to_owned())
        .or_default()
        .insert((method, status), series.clone());
    series
}

/// Turns a panic into a JSON 500 (the process keeps serving).
pub fn panic_response(_: Box<dyn Any + Send + 'static>) -> Response<Body> {
    let mut res = ApiError::internal("handler panicked").into_response();
    res.extensions_mut().insert(Panicked);
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No route of the service panics on purpose, so the catcher is checked on one here,
    /// over real HTTP.
    #[tokio::test]
    async fn a_panic_is_counted_and_answered_as_a_500() {
        let metrics = crate::telemetry::metrics_handle();
        crate::telemetry::register_known_series();
        let app = observed(axum::Router::new().route(
            "/boom/{n}",
            axum::routing::get(|| async {
                if true {
                    panic!("deliberate");
                }
            }),
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let res = reqwest::get(format!("http://{addr}/boom/1")).await.unwrap();
        assert_eq!(res.status(), 500);
        let body: serde_json::Value = res.json().await.unwrap();
        assert!(body["detail"].is_string(), "{body}");
        let text = metrics.render();
        assert!(
            text.contains("http_exceptions_total{kind=\"panic\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("http_exceptions_total{kind=\"server_error\"} 0"),
            "a panic is not also a plain 5xx: {text}"
        );
        assert!(
            text.contains("route=\"/boom/{n}\",status=\"500\""),
            "{text}"
        );
        assert!(text.contains("http_requests_in_progress 0"), "{text}");
    }
}
