//! What every handler can reach.

use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;

use crate::auth::Authenticator;
use crate::config::Config;
use crate::service::{LoginRecorder, ProfileService};

/// Shared, cheaply cloned application state.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub profiles: ProfileService,
    pub auth: Authenticator,
    pub logins: LoginRecorder,
    pub metrics: PrometheusHandle,
}

impl AppState {
    /// Which store serves the cache and limiter, and whether it answers.
    pub fn store_health(&self) -> (&'static str, bool) {
        ("embedded", true)
    }
}
