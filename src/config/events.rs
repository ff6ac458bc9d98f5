//! `[events]`: events out (SPEC 7; see `docs/events.md`).

use serde::{Deserialize, Serialize};

use super::{AT_LEAST_1, Check};

/// Events out (SPEC 7; see `docs/events.md`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventsConfig {
    /// An event its writing instance has not published after this long (it failed, or
    /// Redis did) is published by the outbox drainer of any instance.
    pub handoff_secs: u64,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self { handoff_secs: 10 }
    }
}

impl EventsConfig {
    pub(super) fn checks(&self) -> [Check; 1] {
        [("events.handoff_secs", self.handoff_secs > 0, AT_LEAST_1)]
    }
}
