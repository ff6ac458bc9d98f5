//! `[database]`: the connection pool.

use serde::{Deserialize, Serialize};

use super::{AT_LEAST_1, Check, POSITIVE};

/// Database pool.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    pub max_connections: u32,
    pub min_connections: u32,
    pub acquire_timeout_ms: u64,
    pub statement_timeout_ms: u64,
    /// Most connections background work (login records, the outbox, refresh-ahead,
    /// prewarm) holds at once, so reads always keep the rest; 0: a quarter of
    /// `max_connections`, at least 1.
    pub background_connections: u32,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            max_connections: 16,
            min_connections: 0,
            acquire_timeout_ms: 2000,
            statement_timeout_ms: 5000,
            background_connections: 0,
        }
    }
}

impl DatabaseConfig {
    /// The connections background work may hold at once.
    pub fn background_share(&self) -> u32 {
        match self.background_connections {
            0 => (self.max_connections / 4).max(1),
            n => n.min(self.max_connections),
        }
    }

    #[rustfmt::skip]
    pub(super) fn checks(&self) -> [Check; 3] {
        [
            ("database.max_connections",    self.max_connections > 0,                    AT_LEAST_1),
            ("database.min_connections",    self.min_connections <= self.max_connections, "must not exceed max_connections"),
            ("database.acquire_timeout_ms", self.acquire_timeout_ms > 0,                 POSITIVE),
        ]
    }
}
