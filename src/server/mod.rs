//! The HTTP/1.1 edge: our own accept loop over hyper, so that slow, odd and hostile
//! clients are cut off instead of holding connections forever (`axum::serve` runs hyper
//! without a timer, so it has no header or idle timeouts at all).
//!
//! What a connection may do (all in `[server]`, see `docs/security.md`):
//!
//! - **Header read timeout** (`header_read_timeout_ms`): a request's head must be complete
//!   within this time of its first byte (for a connection's first request, of the accept).
//!   Trickling headers one byte at a time, or sending half a head and going quiet, is cut
//!   off there.
//! - **Idle keep-alive timeout** (`keep_alive_timeout_ms`): a connection with no request in
//!   flight and no new bytes is closed after this long.
//! - **Connection cap** (`max_connections`): at the cap the loop stops accepting until a
//!   connection ends; new clients wait in the kernel's backlog.
//! - **Per-address cap** (`max_connections_per_address`): one client address (an IPv6
//!   /64) holds at most this many connections; past it a new one is answered 429 and
//!   closed, so a few clients cannot hold every slot of the connection cap. Trusted
//!   proxies (`rate_limits.trusted_proxies`, or every peer under `trust_forwarded_for`)
//!   are exempt, since one proxy carries many clients.
//! - **Head size**: a request line and headers of more than 64 KiB (`MAX_HEAD_BYTES`, to
//!   the byte) are refused with 431 and a JSON `detail` rather than buffered, and the
//!   connection is closed.
//!
//! Early answers and unread bodies: when the application answers without reading the whole
//! request body (a 401, 403, 413, 415 or 429 decided on the head alone), hyper would close
//! the connection after the response without saying so, and a client that then sends its
//! body and reuses the connection gets a reset. Here the unread rest of a small body of
//! known length (at most [`DRAIN_MAX_BYTES`]) is read and discarded after the response,
//! within `header_read_timeout_ms`, so the connection stays usable; any other unread body
//! (chunked, larger, or behind `Expect: 100-continue`) gets `Connection: close` on the
//! response, so the client knows not to reuse the connection.
//!
//! Descriptors: [`fit_descriptor_limit`] raises the soft `RLIMIT_NOFILE` at start and fits
//! the connection cap to it; a failing accept backs off ([`AcceptFailures`]).
//!
//! The parts: `accept.rs` the loop and the connection cap, `per_address.rs` the
//! per-address cap, `descriptors.rs` the descriptor limit, `watchdog.rs` the header and
//! idle timeouts (over `activity.rs`, what each connection is doing), `head.rs` the head size, `drain.rs` early answers and unread bodies,
//! `shutdown.rs` the end of serving.
//!
//! Reference: `docs/security.md`.

mod accept;
mod activity;
mod descriptors;
mod drain;
mod head;
mod per_address;
mod shutdown;
mod watchdog;

use std::time::Duration;

use crate::config::ServerConfig;

pub use accept::{AcceptFailures, serve};
pub use descriptors::{Descriptors, fit_descriptor_limit};
pub use per_address::Exempt;

/// Largest unread request body drained after an early answer to keep the connection.
pub const DRAIN_MAX_BYTES: u64 = 64 * 1024;
/// Largest request head (request line and headers) buffered: hyper answers 431 past it.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// The limits one connection runs under.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    pub header_read_timeout: Duration,
    pub keep_alive_timeout: Duration,
    pub max_connections: usize,
    /// Connections one address may hold at once; 0: no cap.
    pub max_per_address: usize,
}

impl ConnLimits {
    /// The limits of the `[server]` table.
    pub fn from_config(c: &ServerConfig) -> Self {
        Self {
            header_read_timeout: Duration::from_millis(c.header_read_timeout_ms),
            keep_alive_timeout: Duration::from_millis(c.keep_alive_timeout_ms),
            max_connections: c.max_connections,
            max_per_address: c.max_connections_per_address,
        }
    }
}
