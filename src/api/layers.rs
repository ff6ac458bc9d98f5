//! Cross-cutting middleware: authentication, the per-user rate limit, request metrics,
//! panic containment.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{LazyLock, RwLock};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::Response;
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

/// Counts requests and their latency by route template and status.
pub async fn record_metrics(State(_): State<AppState>, req: Request, next: Next) -> Response<Body> {
    let start = Instant::now();
    // Bounded: made-up methods share the label "other" (routes are templates or "unmatched").
    let method = super::edge::method_label(req.method());
    let route = req.extensions().get::<MatchedPath>().cloned();
    let res = next.run(req).await;
    let route = route.as_ref().map_or("unmatched", |m| m.as_str());
    let (requests, duration) = request_series(method, route, res.status().as_u16());
    requests.increment(1);
    duration.record(start.elapsed().as_secs_f64());
    res
}

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
    ApiError::internal("handler panicked").into_response()
}
