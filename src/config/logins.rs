//! `[logins]`: recording `last_login` off the request path, in batches.

use serde::{Deserialize, Serialize};

use super::{AT_LEAST_1, Check};

/// Recording `last_login` off the request path, in batches.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoginsConfig {
    /// Logins waiting to be written; beyond this they are dropped (and counted), and the
    /// user's next request records it.
    pub queue_capacity: usize,
    /// Most logins written by one statement.
    pub batch_size: usize,
    /// A partial batch is written after this long.
    pub flush_ms: u64,
}

impl Default for LoginsConfig {
    fn default() -> Self {
        Self {
            queue_capacity: 10_000,
            batch_size: 500,
            flush_ms: 1000,
        }
    }
}

impl LoginsConfig {
    pub(super) fn checks(&self) -> [Check; 3] {
        [
            ("logins.queue_capacity", self.queue_capacity > 0, AT_LEAST_1),
            ("logins.batch_size", self.batch_size > 0, AT_LEAST_1),
            ("logins.flush_ms", self.flush_ms > 0, AT_LEAST_1),
        ]
    }
}
