//! Fixed windows aligned to the UTC clock, and the counter keys that name them.
//!
//! Production windows are UTC hours and keys end in `yyyyMMddHH`, as SPEC 5 says. Tests
//! may shorten the window (`rate_limits.window_secs`, a divisor of 3600); the suffix then
//! also carries the window start's minute and second, `yyyyMMddHHmmss`, so a short window
//! never shares a key with another one and hourly keys keep their documented shape.

use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Datelike, Timelike, Utc};

use crate::domain::UserId;

/// Extra life of a Redis counter past its window's end, so that an instance whose clock
/// runs slightly behind Redis' never recreates (and thus resets) a counter that Redis
/// has just expired.
pub const EXPIRY_MARGIN_MS: u64 = 5_000;

/// The window a moment falls in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Window length in seconds.
    pub secs: u64,
    /// Start, Unix milliseconds.
    pub start_ms: u64,
    /// End (exclusive), Unix milliseconds.
    pub end_ms: u64,
}

impl Window {
    /// The window of length `secs` containing `now_ms`.
    pub fn at(now_ms: u64, secs: u64) -> Self {
        let len = secs.max(1) * 1000;
        let start_ms = now_ms - now_ms % len;
        Self {
            secs,
            start_ms,
            end_ms: start_ms + len,
        }
    }

    /// The current window of length `secs`.
    pub fn current(secs: u64) -> Self {
        Self::at(now_ms(), secs)
    }

    /// The key suffix: `yyyyMMddHH` for hourly windows, `yyyyMMddHHmmss` for shorter ones.
    pub fn suffix(&self) -> String {
        let start =
            DateTime::<Utc>::from_timestamp_millis(self.start_ms as i64).unwrap_or_default();
        // Plain integer formatting: chrono's strftime parses its pattern on every call, and
        // this runs on every limited request.
        let (y, mo, d, h) = (start.year(), start.month(), start.day(), start.hour());
        if self.secs == 3600 {
            format!("{y:04}{mo:02}{d:02}{h:02}")
        } else {
            let (mi, s) = (start.minute(), start.second());
            format!("{y:04}{mo:02}{d:02}{h:02}{mi:02}{s:02}")
        }
    }

    /// Milliseconds from `now_ms` to the end of the window (0 once it is over).
    pub fn remaining_ms(&self, now_ms: u64) -> u64 {
        self.end_ms.saturating_sub(now_ms)
    }

    /// The Unix millisecond at which a Redis counter of this window expires.
    pub fn expire_at_ms(&self) -> u64 {
        self.end_ms + EXPIRY_MARGIN_MS
    }

    /// `rate:<user_id>:<endpoint>:<suffix>`.
    pub fn user_key(&self, user: UserId, endpoint: &str) -> String {
        format!("rate:{user}:{endpoint}:{}", self.suffix())
    }

    /// `rate:ip:<address>:<suffix>`.
    pub fn address_key(&self, address: IpAddr) -> String {
        format!("rate:ip:{address}:{}", self.suffix())
    }
}

/// Now, Unix milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Whole seconds covering `ms`, at least 1: a live window never reports 0 seconds left.
pub fn ceil_secs(ms: u64) -> u64 {
    ms.div_ceil(1000).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hourly_windows_use_the_utc_hour() {
        // 2025-09-30T10:05:00Z
        let now = 1_759_226_700_000;
        let w = Window::at(now, 3600);
        assert_eq!(w.suffix(), "2025093010");
        assert_eq!(w.start_ms, 1_759_226_400_000);
        assert_eq!(w.end_ms - w.start_ms, 3_600_000);
        assert_eq!(w.remaining_ms(now), 55 * 60 * 1000);
        let user: UserId = "550e8400-e29b-41d4-a716-446655440000".parse().unwrap();
        assert_eq!(
            w.user_key(user, "/api/profiles"),
            "rate:550e8400-e29b-41d4-a716-446655440000:/api/profiles:2025093010"
        );
        assert_eq!(
            w.address_key("10.1.2.3".parse().unwrap()),
            "rate:ip:10.1.2.3:2025093010"
        );
    }

    #[test]
    fn short_windows_add_minute_and_second() {
        let now = 1_759_226_700_000 + 7_500; // 10:05:07.5
        let w = Window::at(now, 5);
        assert_eq!(w.suffix(), "20250930100505");
        assert_eq!(w.remaining_ms(now), 2_500);
        assert_eq!(Window::at(w.end_ms, 5).suffix(), "20250930100510");
    }

    #[test]
    fn ceil_never_reports_zero() {
        assert_eq!(ceil_secs(0), 1);
        assert_eq!(ceil_secs(1), 1);
        assert_eq!(ceil_secs(1000), 1);
        assert_eq!(ceil_secs(1001), 2);
    }
}
