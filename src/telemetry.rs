//! Logging and the metrics recorder, each installed once per process.

use std::io::{IsTerminal, Write};
use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_appender::non_blocking::{NonBlocking, WorkerGuard};
use tracing_subscriber::EnvFilter;

/// Installs the tracing subscriber on stderr, JSON or human-readable (`server.log_format`:
/// `json`, `pretty`, or `auto` for `pretty` on a terminal and `json` otherwise). The level:
/// `RUST_LOG` when set (finer-grained, e.g. `user_api=debug,sqlx=warn`), else `level` (a
/// tracing directive, from `LOG_LEVEL`), else `info`.
///
/// Lines go through a non-blocking writer: a request never waits on stderr (a slow pipe
/// or collector); lines past its buffer are dropped rather than block. Keep the returned
/// guard alive until the process ends: dropping it flushes what is buffered.
pub fn init_logging(format: &str, level: Option<&str>) -> WorkerGuard {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(level.unwrap_or("info")));
    let stderr = if std::io::stderr().is_terminal() {
        Stderr::Terminal
    } else {
        Stderr::Redirected
    };
    let (writer, guard) = tracing_appender::non_blocking(std::io::stderr());
    let _ = LOG_WRITER.set(writer.clone());
    // stderr, so that `TOKEN=$(user-api token …)` captures the token and nothing else.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(stderr == Stderr::Terminal)
        .with_writer(writer);
    let _ = if resolve_log_format(format, stderr) == "json" {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
    guard
}

/// The log's non-blocking writer, for text that must stay in order with the log lines.
static LOG_WRITER: OnceLock<NonBlocking> = OnceLock::new();

/// Writes `text` to stderr behind the log lines already queued (a plain `eprint!` could
/// overtake them), or straight to stderr when logging is not set up.
pub fn eprint_in_order(text: &str) {
    match LOG_WRITER.get() {
        Some(writer) => {
            let _ = writer.clone().write_all(text.as_bytes());
        }
        None => eprint!("{text}"),
    }
}

/// Where stderr, and so the log, goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stderr {
    /// A person is watching.
    Terminal,
    /// A file, a pipe or a log collector.
    Redirected,
}

/// The format `init_logging` uses: `auto` becomes `pretty` on a terminal, `json` elsewhere;
/// an explicit `json` or `pretty` always wins.
pub fn resolve_log_format(format: &str, stderr: Stderr) -> &str {
    match (format, stderr) {
        ("auto", Stderr::Terminal) => "pretty",
        ("auto", Stderr::Redirected) => "json",
        (other, _) => other,
    }
}

/// The process-wide Prometheus recorder (tests start several apps in one process).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let buckets = [
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ];
            let recorder = PrometheusBuilder::new()
                .set_buckets(&buckets)
                .expect("static buckets are valid")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (a host program); ours still renders.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Registers every error and rejection series at zero, so a dashboard or alert sees
/// `0` from the start rather than no series until the first failure (`rate()` and
/// `increase()` need the zero to see the first increment).
pub fn register_known_series() {
    for kind in ["unavailable", "other"] {
        metrics::counter!("db_errors_total", "kind" => kind).increment(0);
    }
    for kind in ["io", "timeout", "logical", "circuit_open"] {
        metrics::counter!("redis_errors_total", "kind" => kind).increment(0);
    }
    for policy in [
        "profiles-read",
        "profiles-update",
        "profiles-batch",
        "default",
        "per-address",
    ] {
        metrics::counter!("ratelimit_rejections_total", "policy" => policy).increment(0);
    }
    metrics::counter!("ratelimit_store_errors_total").increment(0);
    metrics::counter!("ratelimit_fallback_total").increment(0);
    metrics::counter!("ratelimit_memory_overflow_total").increment(0);
    for phase in ["header", "idle"] {
        metrics::counter!("http_connections_timed_out_total", "phase" => phase).increment(0);
    }
    metrics::gauge!("http_connections_open").increment(0.0);
    // The stack's names (SPEC 7): docs/operations.md.
    metrics::gauge!("http_requests_in_progress").increment(0.0);
    for kind in ["server_error", "panic"] {
        metrics::counter!("http_exceptions_total", "kind" => kind).increment(0);
    }
    metrics::gauge!("redis_breaker_open").increment(0.0);
    for name in [
        "cache_hits_total",
        "cache_misses_total",
        "cache_tombstone_hits_total",
        "cache_refreshes_total",
        "cache_single_flight_joins_total",
        "profile_cache_hits_total",
        "profile_cache_misses_total",
    ] {
        metrics::counter!(name).increment(0);
    }
}
