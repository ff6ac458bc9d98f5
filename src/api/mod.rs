//! The HTTP surface: one module per resource, merged here with the OpenAPI document,
//! the authentication layer and the cross-cutting layers.
//!
//! Reference: `docs/api.md`.

mod admin;
mod batch;
mod compat;
mod documents;
mod dto;
mod edge;
mod extract;
mod middleware;
mod openapi;
mod ops;
mod profiles;
pub mod routes;

use axum::Router;
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
        .layer(from_fn_with_state(state.clone(), middleware::admit::admit));
    let (api, mut openapi) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(protected)
        .merge(ops::router())
        .split_for_parts();
    openapi::add_common_responses(&mut openapi);

    let api = api
        .merge(SwaggerUi::new("/docs").url("/openapi.json", openapi))
        .fallback(|| async { ApiError::NotFound("Not found") })
        .method_not_allowed_fallback(edge::method_not_allowed);
    middleware::around(api, &state.config).with_state(state)
}
