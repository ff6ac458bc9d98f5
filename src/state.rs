//! What every handler can reach.

use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;

use crate::admission::Admission;
use crate::auth::Authenticator;
use crate::cache::Cache;
use crate::config::Config;
use crate::ratelimit::Limiter;
use crate::redis::RedisClient;
use crate::service::{LoginRecorder, ProfileService};

/// Shared application state: one `Arc`, so the several clones a request makes (router,
/// layers, handlers) cost one reference count each.
#[derive(Clone)]
pub struct AppState(Arc<Services>);

impl AppState {
    /// Shares `services` with every handler.
    pub fn new(services: Services) -> Self {
        Self(Arc::new(services))
    }
}

impl std::ops::Deref for AppState {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.0
    }
}

/// What every handler can reach, built once at start.
pub struct Services {
    /// The validated configuration.
    pub config: Arc<Config>,
    /// Profile use cases (cache-aside over the repository).
    pub profiles: ProfileService,
    /// Bearer-token verification.
    pub auth: Authenticator,
    /// Off-path `last_login` recording.
    pub logins: LoginRecorder,
    /// The Prometheus recorder, for `/metrics`.
    pub metrics: PrometheusHandle,
    /// The profile cache (also reachable through `profiles`): admin routes and health.
    pub cache: Cache,
    /// The shared Redis connection; `None` with the embedded store.
    pub redis: Option<RedisClient>,
    /// Per-user and per-address rate limits (over the same Redis client).
    pub limiter: Limiter,
    /// The one step that admits an authenticated request (revocation, limit, cache look).
    pub admission: Admission,
}

impl Services {
    /// Which store serves the cache and limiter, and whether it answers.
    /// Down while the breaker is open or a write's invalidation is still pending.
    pub fn store_health(&self) -> (&'static str, bool) {
        self.cache.health()
    }
}
