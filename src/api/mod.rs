//! The HTTP surface: one module per resource, merged here with the OpenAPI document,
//! the authentication layer and the cross-cutting layers.

mod admin;
mod admit;
mod batch;
mod compat;
mod cors;
mod documents;
mod dto;
mod edge;
mod extract;
mod layers;
mod openapi;
mod ops;
mod profiles;
mod request_id;
pub mod routes;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware::from_fn_with_state;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_swagger_ui::SwaggerUi;

use crate::error::ApiError;
use crate::state::AppState;

pub use extract::MAX_BODY_BYTES;

#[derive(OpenApi)]
#[openapi(
    info(title = "user-api", description = "User profiles with a Redis cache and rate limits."),
    modifiers(&BearerAuth),
    tags((name = "profiles"), (name = "documents"), (name = "admin"), (name = "compat"), (name = "ops"))
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let mut scheme = Http::new(HttpAuthScheme::Bearer);
        scheme.bearer_format = Some("JWT (RS256)".into());
        components.add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// Builds the whole router over the shared state.
pub fn router(state: AppState) -> Router {
    let protected = OpenApiRouter::new()
        .merge(profiles::router())
        .merge(batch::router())
        .merge(documents::router())
        .merge(compat::router())
        .merge(admin::router())
        .layer(from_fn_with_state(state.clone(), admit::admit));
    let (api, mut openapi) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(protected)
        .merge(ops::router())
        .split_for_parts();
    openapi::add_common_responses(&mut openapi);

    let api = api
        .merge(SwaggerUi::new("/docs").url("/openapi.json", openapi))
        .fallback(|| async { ApiError::NotFound("Not found") })
        .method_not_allowed_fallback(edge::method_not_allowed);
    // Outside authentication: a preflight carries no token.
    let api = match cors::layer(&state.config) {
        Some(cors) => api.layer(cors),
        None => api,
    };
    let api = api
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(edge::refuse_oversized_body))
        .layer(from_fn_with_state(state.clone(), layers::bound_request));
    // The panic catcher inside the metrics and the log line, so a panic is counted and
    // logged as the 500 it is answered with.
    layers::observed(api)
        .layer(
            tower_http::trace::TraceLayer::new_for_http()
                .make_span_with(request_id::span_for)
                .on_request(())
                .on_response(()),
        )
        .layer(axum::middleware::from_fn(request_id::assign))
        .with_state(state)
}
