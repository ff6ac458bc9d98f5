//! The per-address cap: one client address (an IPv6 /64) holds at most
//! `server.max_connections_per_address` connections; past it a new one is answered 429
//! and closed. The proxies the rate limiter trusts are exempt.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipnet::IpNet;
use tokio::net::TcpStream;

use super::DRAIN_MAX_BYTES;
use crate::config::RateLimitConfig;
use crate::ratelimit::address::in_any;

/// Who is exempt from the per-address cap: the proxies the rate limiter trusts.
#[derive(Debug, Clone, Default)]
pub struct Exempt {
    /// Every peer (`rate_limits.trust_forwarded_for`).
    pub all: bool,
    /// `rate_limits.trusted_proxies`.
    pub proxies: Vec<IpNet>,
}

impl Exempt {
    /// The proxies of the `[rate_limits]` table.
    pub fn from_config(c: &RateLimitConfig) -> Self {
        Self {
            all: c.trust_forwarded_for,
            proxies: c.trusted_proxies.clone(),
        }
    }

    pub(super) fn covers(&self, ip: IpAddr) -> bool {
        self.all || in_any(&self.proxies, ip)
    }
}

/// Open connections per client address, for the per-address cap.
pub(super) struct PerAddress {
    max: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection counted against its address until dropped.
pub(super) struct AddressSlot {
    table: Arc<PerAddress>,
    addr: IpAddr,
}

impl PerAddress {
    /// A table for at most `max` connections per address.
    pub(super) fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for `addr`, or `None` when it already holds `max` connections.
    pub(super) fn take(self: &Arc<Self>, addr: IpAddr) -> Option<AddressSlot> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(addr).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(AddressSlot {
            table: self.clone(),
            addr,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.table.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.addr) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.addr);
            }
        }
    }
}

/// The body of the answer to a connection past its address's cap.
const PER_ADDRESS_DETAIL: &str = r#"{"detail":"Too many open connections from this address."}"#;

/// Answers 429 on a connection refused by the per-address cap, then closes it gently:
/// its request is read and discarded for a moment first, since closing a socket with
/// unread bytes resets it and the client could lose the answer.
pub(super) async fn refuse(mut stream: TcpStream, linger: Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tokio::time::timeout(linger, async {
        let answer = format!(
            "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\n\
             retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{PER_ADDRESS_DETAIL}",
            PER_ADDRESS_DETAIL.len()
        );
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        let mut left = DRAIN_MAX_BYTES as usize;
        while left > 0 {
            match stream.read(&mut sink).await? {
                0 => break,
                n => left = left.saturating_sub(n),
            }
        }
        io::Result::Ok(())
    })
    .await;
}
