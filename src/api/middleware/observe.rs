//! The outermost layer of every request, one hand-written tower service (no `from_fn`
//! boxing per concern): the request id, the early 413, the deadline, the metrics and the
//! one `Request completed` line (SPEC 7; docs/operations.md).
//!
//! Not tower-http's `SetRequestId`, `TimeoutLayer` or `RequestBodyLimitLayer`: they keep
//! any client id (ids go into logs, so odd ones are replaced), and their refusals are
//! bodiless 408/413s, where every error of this service is a JSON `{"detail": …}`.
//!
//! Per request: one span holding only the request id (so every line written while the
//! request runs carries it; the `Request completed` line carries it as a field), one
//! deadline timer, the counter and histogram of its
//! (method, route, status), and the log line, written through the non-blocking writer.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{LazyLock, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderValue, Method, Response, header};
use axum::response::IntoResponse;
use futures::future::BoxFuture;
use tower::{Layer, Service};
use tracing::Instrument;

use super::super::edge::method_label;
use super::super::extract::MAX_BODY_BYTES;
use super::panic::Panicked;
use crate::error::ApiError;

/// The header, as load balancers and most services spell it.
pub const REQUEST_ID: &str = "x-request-id";
/// Longest client-supplied id kept; longer or odder ones are replaced (they go into logs).
const MAX_ID_LEN: usize = 128;

/// The layer: `timeout` bounds a whole request (every dependency has its own, shorter
/// timeout, so this is the last resort).
#[derive(Clone, Copy, Debug)]
pub struct ObserveLayer {
    timeout: Duration,
}

impl ObserveLayer {
    /// Requests answered 503 once they run longer than `timeout`.
    pub fn new(timeout: Duration) -> Self {
        Self { timeout }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            timeout: self.timeout,
        }
    }
}

/// The service of [`ObserveLayer`].
#[derive(Clone, Debug)]
pub struct Observe<S> {
    inner: S,
    timeout: Duration,
}

impl<S> Service<Request> for Observe<S>
where
    S: Service<Request, Response = Response<Body>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let id = request_id(&mut req);
        let mut done = Completion {
            start: Instant::now(),
            method: req.method().clone(),
            route: req.extensions().get::<MatchedPath>().cloned(),
            status: None,
            request_id: id.clone(),
        };
        IN_PROGRESS.increment(1.0);
        let span = tracing::info_span!("request", request_id = id.to_str().unwrap_or("-"));
        // A declared body over the limit is refused at once, instead of waiting for a
        // body that may never come (the connection layer adds `Connection: close`).
        let early = declared_length(&req)
            .is_some_and(|n| n > MAX_BODY_BYTES as u64)
            .then(|| ApiError::PayloadTooLarge.into_response());
        // The ready clone goes with the future; `self` keeps the fresh one (tower's rule).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let timeout = self.timeout;
        Box::pin(
            async move {
                let mut res = match early {
                    Some(res) => res,
                    None => match tokio::time::timeout(timeout, inner.call(req)).await {
                        Ok(Ok(res)) => res,
                        Err(_) => {
                            tracing::warn!(
                                timeout_ms = timeout.as_millis() as u64,
                                "request timed out"
                            );
                            ApiError::Unavailable("The service").into_response()
                        }
                    },
                };
                done.finish(&res);
                res.headers_mut().insert(REQUEST_ID, id);
                Ok(res)
            }
            .instrument(span),
        )
    }
}

/// The request's id: the client's (or the load balancer's) when it is a sane token, else
/// a new one; set on the request, so handlers and the panic answer see the same.
fn request_id(req: &mut Request) -> HeaderValue {
    match req.headers().get(REQUEST_ID) {
        Some(v) if acceptable(v.as_bytes()) => v.clone(),
        _ => {
            // From the thread's generator, not the OS: no system call per request.
            let fresh = uuid::Builder::from_random_bytes(rand::random())
                .into_uuid()
                .simple()
                .to_string();
            let value = HeaderValue::from_str(&fresh).expect("a UUID is a valid header value");
            req.headers_mut().insert(REQUEST_ID, value.clone());
            value
        }
    }
}

/// True for an id safe to log and echo: short, and only `A-Za-z0-9._:-`.
fn acceptable(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

fn declared_length(req: &Request) -> Option<u64> {
    req.headers()
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// `http_requests_in_progress`, looked up once.
static IN_PROGRESS: LazyLock<metrics::Gauge> =
    LazyLock::new(|| metrics::gauge!("http_requests_in_progress"));

/// What the `Request completed` line says; written when the request ends, also when it
/// is abandoned (the client went away, the server stopped waiting): then with 499, as
/// nginx logs a request its client closed.
struct Completion {
    start: Instant,
    request_id: HeaderValue,
    method: Method,
    route: Option<MatchedPath>,
    status: Option<u16>,
}

impl Completion {
    /// Books the answer in the request series and the exception counter.
    fn finish(&mut self, res: &Response<Body>) {
        let status = res.status().as_u16();
        self.status = Some(status);
        let route = self.route.as_ref().map_or("unmatched", |m| m.as_str());
        // Bounded: made-up methods share the label "other"; routes are templates.
        let (requests, duration) = request_series(method_label(&self.method), route, status);
        requests.increment(1);
        duration.record(self.start.elapsed().as_secs_f64());
        if res.status().is_server_error() {
            static SERVER_ERROR: LazyLock<metrics::Counter> = LazyLock::new(
                || metrics::counter!("http_exceptions_total", "kind" => "server_error"),
            );
            static PANIC: LazyLock<metrics::Counter> =
                LazyLock::new(|| metrics::counter!("http_exceptions_total", "kind" => "panic"));
            match res.extensions().get::<Panicked>() {
                Some(_) => PANIC.increment(1),
                None => SERVER_ERROR.increment(1),
            }
        }
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        IN_PROGRESS.decrement(1.0);
        let elapsed_ms = self.start.elapsed().as_secs_f64() * 1000.0;
        crate::telemetry::request_completed(&crate::telemetry::Completed {
            request_id: self.request_id.to_str().unwrap_or("-"),
            method: self.method.as_str(),
            path: self.route.as_ref().map_or("unmatched", |m| m.as_str()),
            status_code: self.status.unwrap_or(499),
            duration_ms: (elapsed_ms * 100.0).round() / 100.0,
        });
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_short_plain_ids_are_kept() {
        assert!(acceptable(b"req-42_a.b:c"));
        assert!(acceptable(uuid::Uuid::new_v4().to_string().as_bytes()));
        assert!(!acceptable(b""));
        assert!(!acceptable(b"two words"));
        assert!(!acceptable(b"line\nbreak"));
        assert!(!acceptable("x".repeat(MAX_ID_LEN + 1).as_bytes()));
    }
}
