//! The middleware, one layer per file, in the order a request meets them:
//!
//! 1. [`observe`]: request id, early 413, deadline, metrics, the `Request completed` line;
//! 2. [`panic`]: a panic becomes a JSON 500 (inside `observe`, so it is counted and logged);
//! 3. [`cors`]: only when `CORS_ORIGINS` names origins (a preflight carries no token);
//! 4. axum's `DefaultBodyLimit`: a body that turns out longer than declared stops at 64 KiB;
//! 5. routing, then on the authenticated routes [`admit`]: the token, then one admission
//!    step (revocation, rate limit, cache look: `crate::admission`).
//!
//! Every layer but `admit` is applied with `Router::layer`, so it runs after routing and
//! sees the route template (`MatchedPath`) that metrics and the log line are labelled by.

pub mod admit;
pub mod cors;
pub mod observe;
pub mod panic;

use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;

use super::extract::MAX_BODY_BYTES;
use crate::config::Config;

/// `router` under every layer but `admit` (which the authenticated routes carry).
pub fn around<S: Clone + Send + Sync + 'static>(router: Router<S>, config: &Config) -> Router<S> {
    let router = router.layer(DefaultBodyLimit::max(MAX_BODY_BYTES));
    let router = match cors::layer(config) {
        Some(cors) => router.layer(cors),
        None => router,
    };
    router
        .layer(panic::layer())
        .layer(observe::ObserveLayer::new(Duration::from_millis(
            config.server.request_timeout_ms,
        )))
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
        let app = around(
            Router::new().route(
                "/boom/{n}",
                axum::routing::get(|| async {
                    if true {
                        panic!("deliberate");
                    }
                }),
            ),
            &Config::default(),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let res = reqwest::get(format!("http://{addr}/boom/1")).await.unwrap();
        assert_eq!(res.status(), 500);
        assert!(res.headers().contains_key(observe::REQUEST_ID));
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
