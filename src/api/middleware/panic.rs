//! Panic containment: tower-http's `CatchPanicLayer` with a JSON 500 that says nothing
//! internal, marked so the outer layer counts it as `http_exceptions_total{kind="panic"}`.

use std::any::Any;

use axum::body::Body;
use axum::http::Response;
use axum::response::IntoResponse;
use tower_http::catch_panic::CatchPanicLayer;

use crate::error::ApiError;

/// Marks the 500 a panic was turned into.
#[derive(Clone, Copy)]
pub(super) struct Panicked;

/// What a panic hands the catcher.
type Payload = Box<dyn Any + Send + 'static>;

/// The catcher: the process keeps serving, the request gets a JSON 500.
pub fn layer() -> CatchPanicLayer<fn(Payload) -> Response<Body>> {
    CatchPanicLayer::custom(answer as fn(_) -> _)
}

fn answer(_: Payload) -> Response<Body> {
    let mut res = ApiError::internal("handler panicked").into_response();
    res.extensions_mut().insert(Panicked);
    res
}
