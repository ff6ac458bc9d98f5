//! Logging and the metrics recorder, each installed once per process.
//!
//! Reference: `docs/metrics.md`.

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
    let json = resolve_log_format(format, stderr) == "json";
    let _ = JSON_LINES.set(json);
    // stderr, so that `TOKEN=$(user-api token …)` captures the token and nothing else.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(stderr == Stderr::Terminal)
        .with_writer(writer);
    let _ = if json {
        builder
            .json()
            .flatten_event(true)
            // The current span (the request's id) is enough: the list would repeat it on
            // every line, at a cost paid on every request.
            .with_span_list(false)
            .try_init()
    } else {
        builder.try_init()
    };
    guard
}

/// The log's non-blocking writer, for text that must stay in order with the log lines.
static LOG_WRITER: OnceLock<NonBlocking> = OnceLock::new();
/// True when the log is JSON lines.
static JSON_LINES: OnceLock<bool> = OnceLock::new();

/// One request's `Request completed` line (SPEC 7; docs/operations.md).
pub struct Completed<'a> {
    /// The request id (`A-Za-z0-9._:-`, or a UUID).
    pub request_id: &'a str,
    /// The method.
    pub method: &'a str,
    /// The route template, or `unmatched`.
    pub path: &'a str,
    /// The status answered (499 when the client went away first).
    pub status_code: u16,
    /// Milliseconds, two decimals.
    pub duration_ms: f64,
}

/// Writes the `Request completed` line at `info`, when the log filter lets `info` through.
///
/// In JSON (the deployed format) the line is formatted here, in the shape tracing's JSON
/// formatter gives every other line (`timestamp`, `level`, `message`, then the fields),
/// and handed to the same non-blocking writer: tracing's formatter spends about 20,000
/// instructions on it (a `Debug` visitor per field, serde over `fmt::Write`), a tenth of a
/// cached read (docs/benchmarks.md). Elsewhere (pretty logs, tests) it goes through
/// tracing as usual.
pub fn request_completed(line: &Completed<'_>) {
    if !tracing::enabled!(tracing::Level::INFO) {
        return;
    }
    match (JSON_LINES.get(), LOG_WRITER.get()) {
        (Some(true), Some(writer)) => {
            let text = json_line(line, chrono::Utc::now());
            let _ = writer.clone().write_all(text.as_bytes());
        }
        _ => tracing::info!(
            request_id = line.request_id,
            method = line.method,
            path = line.path,
            status_code = line.status_code,
            duration_ms = line.duration_ms,
            "Request completed"
        ),
    }
}

fn json_line(line: &Completed<'_>, now: chrono::DateTime<chrono::Utc>) -> String {
    use chrono::{Datelike, Timelike};
    use std::fmt::Write as _;
    let mut out = String::with_capacity(256);
    let _ = write!(
        out,
        "{{\"timestamp\":\"{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z\",\"level\":\"INFO\",\
         \"message\":\"Request completed\",\"request_id\":",
        now.year(),
        now.month(),
        now.day(),
        now.hour(),
        now.minute(),
        now.second(),
        now.timestamp_subsec_micros().min(999_999),
    );
    json_string(&mut out, line.request_id);
    out.push_str(",\"method\":");
    json_string(&mut out, line.method);
    out.push_str(",\"path\":");
    json_string(&mut out, line.path);
    let _ = write!(
        out,
        ",\"status_code\":{},\"duration_ms\":",
        line.status_code
    );
    // As serde_json writes a float: always with a fraction.
    let ms = line.duration_ms;
    if ms.is_finite() && ms.fract() == 0.0 {
        let _ = write!(out, "{ms:.1}");
    } else if ms.is_finite() {
        let _ = write!(out, "{ms}");
    } else {
        out.push_str("null");
    }
    out.push_str("}\n");
    out
}

/// A JSON string: the values are tokens and templates, but nothing is assumed.
fn json_string(out: &mut String, s: &str) {
    use std::fmt::Write as _;
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_fast_line_is_the_line_tracing_writes() {
        let buffer = Buffer::default();
        let sink = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_target(false)
            .with_writer(move || sink.clone())
            .json()
            .flatten_event(true)
            .with_span_list(false)
            .finish();
        let line = Completed {
            request_id: "lb-7f3a.42",
            method: "GET",
            path: "/api/profiles/{user_id}",
            status_code: 200,
            duration_ms: 1.37,
        };
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(
                request_id = line.request_id,
                method = line.method,
                path = line.path,
                status_code = line.status_code,
                duration_ms = line.duration_ms,
                "Request completed"
            );
        });
        let theirs = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let ours = json_line(&line, chrono::Utc::now());
        let parse = |s: &str| serde_json::from_str::<serde_json::Value>(s.trim()).unwrap();
        let (mut t, mut o) = (parse(&theirs), parse(&ours));
        let (tt, ot) = (t["timestamp"].take(), o["timestamp"].take());
        assert_eq!(o, t, "ours: {ours}\ntheirs: {theirs}");
        assert_eq!(
            tt.as_str().unwrap().len(),
            ot.as_str().unwrap().len(),
            "{tt} {ot}"
        );
        assert!(chrono::DateTime::parse_from_rfc3339(ot.as_str().unwrap()).is_ok());
        // Key order as tracing writes it, a whole millisecond as a float, one line.
        assert!(ours.starts_with("{\"timestamp\":"), "{ours}");
        assert!(ours.ends_with("}\n") && ours.matches('\n').count() == 1);
        let whole = json_line(
            &Completed {
                duration_ms: 2.0,
                ..line
            },
            chrono::Utc::now(),
        );
        assert!(whole.contains("\"duration_ms\":2.0}"), "{whole}");
        let mut odd = String::new();
        json_string(&mut odd, "a\"b\\c\n");
        assert_eq!(odd, r#""a\"b\\c\u000a""#);
    }
}
