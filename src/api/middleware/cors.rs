//! CORS for the browser origins named in `CORS_ORIGINS` (`server.cors_origins`); none by
//! default, and then no CORS header is ever sent.

use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, Method, header};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::config::{Config, cors_origin};

/// The layer for the configured origins, `None` when there are none. The origins were
/// checked at load, so one that does not convert here is skipped.
pub fn layer(config: &Config) -> Option<CorsLayer> {
    let origins: Vec<HeaderValue> = config
        .server
        .cors_origins
        .iter()
        .filter_map(|o| cors_origin(o).ok())
        .filter_map(|o| HeaderValue::from_str(&o).ok())
        .collect();
    if origins.is_empty() {
        return None;
    }
    let name = HeaderName::from_static;
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_methods([
                Method::GET,
                Method::POST,
                Method::PUT,
                Method::PATCH,
                Method::DELETE,
            ])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                name(super::observe::REQUEST_ID),
            ])
            // What a browser script may read of an answer besides the safelisted headers.
            .expose_headers([
                name(super::observe::REQUEST_ID),
                header::LOCATION,
                header::RETRY_AFTER,
                name("x-ratelimit-limit"),
                name("x-ratelimit-remaining"),
                name("x-ratelimit-reset"),
                name("ratelimit"),
                name("ratelimit-policy"),
            ])
            .max_age(Duration::from_secs(600)),
    )
}
