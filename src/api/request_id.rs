//! Request ids: every request gets one (the client's `X-Request-Id` when it is a sane
//! token, else a new UUID), the response carries it back, and every log line written
//! while the request is handled carries it (in the request's span), so one request can
//! be followed across the load balancer, the instances and their logs. The one
//! `Request completed` line per request is written with the metrics (`layers::record_metrics`).

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, Response};
use axum::middleware::Next;
use tracing::Span;

/// The header, as load balancers and most services spell it.
pub const HEADER: &str = "x-request-id";
/// Longest client-supplied id kept; longer or odder ones are replaced (they go into logs).
const MAX_LEN: usize = 128;

/// True for an id safe to log and echo: short, and only `A-Za-z0-9._:-`.
fn acceptable(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= MAX_LEN
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// Keeps the client's id when acceptable, otherwise sets a new one; echoes it on the answer.
pub async fn assign(mut req: Request, next: Next) -> Response<Body> {
    let id = match req.headers().get(HEADER) {
        Some(v) if acceptable(v.as_bytes()) => v.clone(),
        _ => {
            // From the thread's generator, not the OS: no system call per request.
            let fresh = uuid::Builder::from_random_bytes(rand::random())
                .into_uuid()
                .simple()
                .to_string();
            let value = HeaderValue::from_str(&fresh).expect("a UUID is a valid header value");
            req.headers_mut().insert(HEADER, value.clone());
            value
        }
    };
    let mut res = next.run(req).await;
    res.headers_mut().insert(HEADER, id);
    res
}

/// The span every log line of a request is written in: method, path (never the query,
/// which may carry personal data) and the request id.
pub fn span_for(req: &Request) -> Span {
    let id = req
        .headers()
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    tracing::info_span!(
        "request",
        request_id = %id,
        method = %req.method(),
        path = %req.uri().path(),
    )
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
        assert!(!acceptable("x".repeat(MAX_LEN + 1).as_bytes()));
    }
}
