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
use super::activity::{Activity, BUSY, HEAD, IDLE};
use super::drain::handle;
use super::head::{HeadScan, Refusal};

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
struct Watched {
    inner: TcpStream,
    state: Arc<Activity>,
    /// The request head being read, measured.
    head: HeadScan,
    /// Set once the head passed [`MAX_HEAD_BYTES`]: our 431 is being sent.
    refusal: Option<Refusal>,
}

impl Watched {
    /// Our 431, once the head is over the limit (see `head.rs`).
    fn poll_refusal(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        (self.refusal.get_or_insert_with(Refusal::default)).poll(&mut self.inner, cx)
    }
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
