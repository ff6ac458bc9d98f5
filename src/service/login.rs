use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::domain::UserId;

use super::ProfileService;

/// Records `last_login` from token `iat`s off the request path, at most once an hour per user.
#[derive(Clone)]
pub struct LoginRecorder {
    service: ProfileService,
    /// Users recorded within the last hour on this instance: skips the database entirely.
    recent: moka::sync::Cache<UserId, ()>,
}

impl LoginRecorder {
    /// Builds a recorder over the profile service.
    pub fn new(service: ProfileService) -> Self {
        Self {
            service,
            recent: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(3600))
                .build(),
        }
    }

    /// Notes a token issued at `iat`; the write happens in a background task.
    pub fn observe(&self, user: UserId, iat: DateTime<Utc>) {
        if self.recent.contains_key(&user) {
            return;
        }
        self.recent.insert(user, ());
        let service = self.service.clone();
        tokio::spawn(async move {
            if let Err(e) = service.record_login(user, iat).await {
                tracing::warn!(error = %e, "could not record last_login");
            }
        });
    }
}
