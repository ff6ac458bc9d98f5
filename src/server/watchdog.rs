//! The watchdog: a connection's header read timeout and idle keep-alive timeout, timed
//! from what its socket and its requests say it is doing.
//!
//! Why our own: hyper 1 has no separate idle timeout (its `header_read_timeout` starts at
//! the end of the previous response, so it cannot tell an idle connection from a slow
//! head), and `axum::serve` runs hyper without a timer at all.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::http::Request;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::ConnLimits;
use super::drain::handle;
use super::head::{HeadScan, Refusal};

/// Where a connection is in its life, for the watchdog.
const HEAD: u8 = 0;
const BUSY: u8 = 1;
const IDLE: u8 = 2;

/// Shared between a connection's socket wrapper, its requests and its watchdog.
struct Activity {
    epoch: Instant,
    /// `HEAD`: reading a request head; `BUSY`: a request in flight; `IDLE`: between requests.
    phase: AtomicU8,
    /// When the current phase began, in ms since `epoch`.
    since_ms: AtomicU64,
    /// Requests (and drains) still in flight.
    in_flight: AtomicUsize,
    changed: Notify,
}

impl Activity {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn enter(&self, phase: u8) {
        self.since_ms.store(self.now_ms(), Ordering::Release);
        self.phase.store(phase, Ordering::Release);
        self.changed.notify_one();
    }

    /// Bytes arrived: an idle connection starts reading a head.
    fn on_bytes(&self) {
        if self.phase.load(Ordering::Acquire) == IDLE {
            self.enter(HEAD);
        }
    }

    /// A request head is complete: busy until the returned guard (and its clones) drop.
    fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.enter(BUSY);
        Busy(Arc::new(BusyInner(self.clone())))
    }
}

/// Keeps a connection busy (no idle or head timeout) while alive.
#[derive(Clone)]
pub(super) struct Busy(#[allow(dead_code)] Arc<BusyInner>);

struct BusyInner(Arc<Activity>);

impl Drop for BusyInner {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.enter(IDLE);
        }
    }
}

pub(super) async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: axum::Router,
    builder: &hyper::server::conn::http1::Builder,
    limits: ConnLimits,
    epoch: Instant,
    shutdown: CancellationToken,
) {
    let state = Arc::new(Activity {
        epoch,
        phase: AtomicU8::new(HEAD),
        since_ms: AtomicU64::new(0),
        in_flight: AtomicUsize::new(0),
        changed: Notify::new(),
    });
    state.since_ms.store(state.now_ms(), Ordering::Release);
    let io = TokioIo::new(Watched {
        inner: stream,
        state: state.clone(),
        head: HeadScan::default(),
        refusal: None,
    });
    let drain_within = limits.header_read_timeout;
    let svc_state = state.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let busy = svc_state.begin();
        handle(router.clone(), req, peer, busy, drain_within)
    });
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let mut shutting_down = false;
    loop {
        let phase = state.phase.load(Ordering::Acquire);
        let since = state.since_ms.load(Ordering::Acquire);
        let limit = match phase {
            HEAD => Some(limits.header_read_timeout),
            IDLE => Some(limits.keep_alive_timeout),
            _ => None,
        };
        let deadline =
            limit.map(|l| tokio::time::Instant::from_std(epoch + Duration::from_millis(since) + l));
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = state.changed.notified() => {}
            _ = shutdown.cancelled(), if !shutting_down => {
                shutting_down = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = sleep_until(deadline) => {
                // Still the same phase, begun at the same time: the limit has passed.
                if state.phase.load(Ordering::Acquire) == phase
                    && state.since_ms.load(Ordering::Acquire) == since
                {
                    let which = if phase == HEAD { "header" } else { "idle" };
                    metrics::counter!("http_connections_timed_out_total", "phase" => which)
                        .increment(1);
                    tracing::debug!(phase = which, "closing a slow or idle connection");
                    // No request is in flight: dropping the connection closes the socket.
                    return;
                }
            }
        }
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// The socket, noting when bytes arrive on an idle connection.
pub(super) struct Watched {
    pub(super) inner: TcpStream,
    state: Arc<Activity>,
    /// The request head being read, measured.
    pub(super) head: HeadScan,
    /// Set once the head passed [`MAX_HEAD_BYTES`]: our 431 is being sent.
    pub(super) refusal: Option<Refusal>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.refusal.is_some() {
            return self.poll_refusal(cx);
        }
        let before = buf.filled().len();
        let phase_before = self.state.phase.load(Ordering::Acquire);
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(res, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.state.on_bytes();
            // Bytes on an idle connection begin a new head; bytes while a request is in
            // flight are its body (hyper's own limit covers a pipelined head).
            match phase_before {
                IDLE => self.head = HeadScan::default(),
                BUSY => return res,
                _ => {}
            }
            if !self.head.feed(&buf.filled()[before..]) {
                // Hyper never sees these bytes: our answer says what the limit is, in
                // JSON, where hyper's own 431 has no body.
                buf.set_filled(before);
                metrics::counter!("http_heads_too_large_total").increment(1);
                return self.poll_refusal(cx);
            }
        }
        res
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
