//! `[prewarm]`: filling the cache with recent users' profiles at start.

use serde::{Deserialize, Serialize};

use super::{AT_LEAST_1, Check};

/// Cache prewarm at start.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrewarmConfig {
    /// `PREWARM=0` turns it off.
    pub enabled: bool,
    pub max: u32,
    pub batch_size: u32,
    /// Only users whose last login is this recent.
    pub recent_days: u32,
}

impl Default for PrewarmConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max: 1000,
            batch_size: 100,
            recent_days: 7,
        }
    }
}

impl PrewarmConfig {
    pub(super) fn checks(&self) -> [Check; 1] {
        [("prewarm.batch_size", self.batch_size > 0, AT_LEAST_1)]
    }
}
