//! Answers decided on the request head alone, before any handler runs, and the method as
//! a metrics label.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{Method, Response, header};
use axum::middleware::Next;
use axum::response::IntoResponse;

use super::extract::MAX_BODY_BYTES;
use crate::error::ApiError;

/// A request whose `Content-Length` is over the body limit gets 413 at once, instead of
/// waiting for a body that may never come (the connection layer adds `Connection: close`,
/// since the body is not read).
pub async fn refuse_oversized_body(req: Request, next: Next) -> Response<Body> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return ApiError::PayloadTooLarge.into_response();
    }
    next.run(req).await
}

/// The method as a metrics label: the standard methods by name, anything else "other",
/// so a client cannot mint series by inventing methods.
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_standard_methods_are_labels() {
        assert_eq!(method_label(&Method::PATCH), "PATCH");
        for m in ["FOO", "get", "BREW", &"X".repeat(4000)] {
            assert_eq!(
                method_label(&Method::from_bytes(m.as_bytes()).unwrap()),
                "other"
            );
        }
    }
}
