//! The error of the shared store (Redis) as the rest of the service sees it: the cache,
//! the limiter and the services handle store failures without knowing Redis' types.

/// Why a call to the shared store did not produce an answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The breaker is open: the store was not tried.
    #[error("redis circuit open")]
    CircuitOpen,
    /// No answer within the configured per-call timeout.
    #[error("redis timed out")]
    Timeout,
    /// The store (or the connection to it) reported an error.
    #[error("redis: {message}")]
    Redis {
        /// The client's description of the error.
        message: String,
        /// True for I/O and connection errors, false for an answer Redis gave.
        unreachable: bool,
    },
}

impl StoreError {
    /// True when the store was unreachable (breaker open, timeout, I/O), as opposed to a
    /// logical error it answered with.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::CircuitOpen | Self::Timeout => true,
            Self::Redis { unreachable, .. } => *unreachable,
        }
    }
}
