//! `[server]`: the HTTP edge's limits, logging, and CORS.

use serde::{Deserialize, Serialize};

use super::{Check, POSITIVE};

/// HTTP server.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Longest time from the accept (or a request's first byte) until its head is complete.
    pub header_read_timeout_ms: u64,
    /// Longest time a connection may sit idle between requests.
    pub keep_alive_timeout_ms: u64,
    /// Most connections open at once; at the cap, new ones wait in the backlog.
    pub max_connections: usize,
    /// Most connections one client address (an IPv6 /64) may hold at once; past it a new
    /// one is answered 429 and closed. Trusted proxies are exempt. 0: no such cap.
    pub max_connections_per_address: usize,
    /// Longest time a request may take once its head is in.
    pub request_timeout_ms: u64,
    /// `json` for machines, `pretty` for people, `auto` (the default): `pretty` when
    /// stderr is a terminal, `json` otherwise.
    pub log_format: String,
    pub shutdown_grace_secs: u64,
    /// `LOG_LEVEL`: `debug`, `info`, `warning`, `error` or `critical` (the stack's names);
    /// `RUST_LOG`, when set, wins. Unset: `info`.
    pub log_level: Option<String>,
    /// `CORS_ORIGINS`: browser origins allowed to call the API (`scheme://host[:port]`);
    /// empty (the default): no CORS headers at all.
    pub cors_origins: Vec<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            header_read_timeout_ms: 10_000,
            keep_alive_timeout_ms: 30_000,
            max_connections: 10_000,
            max_connections_per_address: 256,
            request_timeout_ms: 15_000,
            log_format: "auto".into(),
            shutdown_grace_secs: 10,
            log_level: None,
            cors_origins: Vec::new(),
        }
    }
}

impl ServerConfig {
    #[rustfmt::skip]
    pub(super) fn checks(&self) -> [Check; 8] {
        let log_format = matches!(self.log_format.as_str(), "auto" | "json" | "pretty");
        let log_level = (self.log_level.as_deref()).is_none_or(|l| log_directive(l).is_some());
        let cors = self.cors_origins.iter().all(|o| cors_origin(o).is_ok());
        [
            ("server.header_read_timeout_ms", self.header_read_timeout_ms > 0,      POSITIVE),
            ("server.keep_alive_timeout_ms",  self.keep_alive_timeout_ms > 0,       POSITIVE),
            ("server.max_connections",        self.max_connections > 0,             POSITIVE),
            ("server.max_connections",        self.max_connections <= 1_000_000,    "must be at most 1000000"),
            ("server.request_timeout_ms",     self.request_timeout_ms > 0,          POSITIVE),
            ("server.log_format",             log_format,                           "must be `auto`, `json` or `pretty`"),
            ("server.log_level",              log_level,                            LOG_LEVELS),
            ("server.cors_origins",           cors,                                 "must be origins like https://app.example.com"),
        ]
    }
}

/// The accepted `LOG_LEVEL` values, for errors.
pub(super) const LOG_LEVELS: &str = "must be debug, info, warning, error or critical";

/// The tracing directive of a `LOG_LEVEL` value (the Python service's level names, any
/// case): tracing has no `critical`, so it means `error`.
pub fn log_directive(level: &str) -> Option<&'static str> {
    match level.trim().to_ascii_lowercase().as_str() {
        "debug" => Some("debug"),
        "info" => Some("info"),
        "warning" | "warn" => Some("warn"),
        "error" | "critical" => Some("error"),
        _ => None,
    }
}

/// A CORS origin in the form browsers send it (`scheme://host[:port]`, default port
/// left out), or why `value` is not one.
pub fn cors_origin(value: &str) -> Result<String, String> {
    let bad = |why: &str| Err(format!("`{value}` is not an origin ({why})"));
    if value.trim() == "*" {
        return bad("this is an allow-list: name each origin");
    }
    let url = match reqwest::Url::parse(value.trim()) {
        Ok(u) => u,
        Err(e) => return bad(&e.to_string()),
    };
    if !matches!(url.scheme(), "http" | "https") {
        return bad("the scheme must be http or https");
    }
    if !url.username().is_empty() || url.password().is_some() {
        return bad("no user name or password");
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return bad("no path, query or fragment");
    }
    Ok(url.origin().ascii_serialization())
}
