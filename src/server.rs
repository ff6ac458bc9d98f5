//! The HTTP/1.1 edge: our own accept loop over hyper, so that slow, odd and hostile
//! clients are cut off instead of holding connections forever (`axum::serve` runs hyper
//! without a timer, so it has no header or idle timeouts at all).
//!
//! What a connection may do (all in `[server]`, see the README's "Running it safely"):
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
//! Graceful shutdown: cancelling the token stops the accept loop and asks every
//! connection to close after its in-flight request; [`serve`] returns once all have, or at
//! once when its `abort` token is cancelled (the caller's bound on the grace period), which
//! drops every connection with what its request held.
//!
//! Descriptors: [`fit_descriptor_limit`] raises the soft `RLIMIT_NOFILE` at start and fits
//! the connection cap to it; a failing accept backs off ([`AcceptFailures`]).

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, Request, Response, header};
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::config::{RateLimitConfig, ServerConfig};
use crate::ratelimit::address::{in_any, limited_unit};
use ipnet::IpNet;

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

/// Descriptors the process needs besides its HTTP connections and database connections:
/// standard streams, the listener, the runtime's own, Redis, the JWKS client, files.
const FD_RESERVE: u64 = 32;

/// What the file-descriptor limit allows, found at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descriptors {
    /// The soft limit in force after trying to raise it to the hard limit.
    pub limit: u64,
    /// The hard limit.
    pub hard: u64,
    /// What the configuration needs: `max_connections` plus the database's and a reserve.
    pub needed: u64,
    /// The connection cap to serve with: `max_connections`, or less when the limit is short.
    pub max_connections: usize,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and compares it with what the
/// configuration needs: `max_connections` connections, `database_fds` for the pool, and a
/// reserve. When the limit is still short, the connection cap is lowered to fit (logged
/// as a warning): running out of descriptors also fails database connections and Redis
/// reconnects, not just accepts.
pub fn fit_descriptor_limit(max_connections: usize, database_fds: u64) -> Descriptors {
    let reserve = FD_RESERVE + database_fds;
    let needed = max_connections as u64 + reserve;
    let unknown = Descriptors {
        limit: u64::MAX,
        hard: u64::MAX,
        needed,
        max_connections,
    };
    let Ok((soft, hard)) = rlimit::Resource::NOFILE.get() else {
        return unknown;
    };
    // An unlimited hard limit cannot be the soft one (the kernel caps it at nr_open):
    // ask for what is needed then.
    let target = if hard == rlimit::INFINITY {
        needed.max(soft)
    } else {
        hard
    };
    let limit = match rlimit::increase_nofile_limit(target) {
        Ok(limit) => limit,
        Err(e) => {
            tracing::debug!(error = %e, soft, hard, "could not raise the file-descriptor limit");
            soft
        }
    };
    if limit > soft {
        tracing::info!(
            from = soft,
            to = limit,
            "raised the file-descriptor limit (soft) to the hard limit"
        );
    }
    if limit >= needed {
        return Descriptors {
            limit,
            hard,
            needed,
            max_connections,
        };
    }
    let fit = usize::try_from(limit.saturating_sub(reserve))
        .unwrap_or(usize::MAX)
        .max(1);
    tracing::warn!(
        limit,
        hard,
        needed,
        max_connections,
        serving_at_most = fit,
        "the file-descriptor limit is below what server.max_connections needs: serving at \
         most {fit} connections at once; raise `ulimit -n` (LimitNOFILE= in systemd, \
         --ulimit nofile= in docker) to at least {needed}, or lower server.max_connections"
    );
    Descriptors {
        limit,
        hard,
        needed,
        max_connections: fit,
    }
}

/// Failed accepts (out of descriptors, and friends): each backs off before the next try,
/// and they are logged at most once per [`AcceptFailures::LOG_EVERY`], with a count,
/// instead of once per failure (which was 20 lines a second under `ulimit -n 64`).
#[derive(Debug, Default)]
pub struct AcceptFailures {
    /// Failures not yet logged.
    unlogged: u64,
    last_log: Option<Instant>,
    delay: Duration,
}

impl AcceptFailures {
    /// The first pause after a failure; each further failure in a row doubles it.
    pub const FIRST_DELAY: Duration = Duration::from_millis(10);
    /// The longest pause.
    pub const MAX_DELAY: Duration = Duration::from_secs(1);
    /// At most one log line per this long.
    pub const LOG_EVERY: Duration = Duration::from_secs(10);

    /// Notes a failure at `now`: how long to pause, and the count to log now, if any.
    pub fn failed(&mut self, now: Instant) -> (Duration, Option<u64>) {
        self.unlogged += 1;
        self.delay = (self.delay * 2).clamp(Self::FIRST_DELAY, Self::MAX_DELAY);
        (self.delay, self.take_due(now))
    }

    /// Notes an accept that worked at `now`: the pause starts over, and failures not yet
    /// logged are, once their interval is over (the count to log, if any).
    pub fn succeeded(&mut self, now: Instant) -> Option<u64> {
        self.delay = Duration::ZERO;
        if self.unlogged == 0 {
            return None;
        }
        self.take_due(now)
    }

    fn take_due(&mut self, now: Instant) -> Option<u64> {
        let due = self
            .last_log
            .is_none_or(|at| now.duration_since(at) >= Self::LOG_EVERY);
        if !due {
            return None;
        }
        self.last_log = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }
}

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

    fn covers(&self, ip: IpAddr) -> bool {
        self.all || in_any(&self.proxies, ip)
    }
}

/// Open connections per client address, for the per-address cap.
struct PerAddress {
    max: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection counted against its address until dropped.
struct AddressSlot {
    table: Arc<PerAddress>,
    addr: IpAddr,
}

impl PerAddress {
    /// A slot for `addr`, or `None` when it already holds `max` connections.
    fn take(self: &Arc<Self>, addr: IpAddr) -> Option<AddressSlot> {
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
async fn refuse(mut stream: TcpStream, linger: Duration) {
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

/// Serves `router` on `listener` until `shutdown` is cancelled and every connection has
/// finished its in-flight request, or until `abort` is cancelled, which closes every
/// connection at once (requests in flight are dropped).
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    limits: ConnLimits,
    exempt: Exempt,
    shutdown: CancellationToken,
    abort: CancellationToken,
) -> io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut accept_failures = AcceptFailures::default();
    let per_address = Arc::new(PerAddress {
        max: limits.max_per_address,
        open: Mutex::new(HashMap::new()),
    });
    let tracker = TaskTracker::new();
    let epoch = Instant::now();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // Our own watchdog below times heads and idle connections (hyper's timer starts at
        // the end of the previous response, so it cannot tell an idle connection from a
        // slow head); hyper's stays off.
        .header_read_timeout(None)
        // The head limit is ours (`HeadScan`, which answers 431 in JSON); hyper's, exact
        // too, covers a head it parses from bytes read with the previous request. Its read
        // buffer cap alone overshoots (a read may land past it before the check), which
        // once let an 80 KiB header through.
        .max_header_size(MAX_HEAD_BYTES)
        .max_buf_size(MAX_HEAD_BYTES)
        .keep_alive(true);
    let builder = Arc::new(builder);
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => {
                    if let Some(failed) = accept_failures.succeeded(Instant::now()) {
                        tracing::warn!(failed, "accepting again after failed accepts");
                    }
                    a
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning, and say so once
                    // per interval, with a count, not once per try.
                    metrics::counter!("http_accept_errors_total").increment(1);
                    let (pause, log) = accept_failures.failed(Instant::now());
                    if let Some(failed) = log {
                        tracing::warn!(
                            error = %e,
                            failed,
                            pausing_ms = pause.as_millis() as u64,
                            "accept failed {failed} time(s) since the last report \
                             (at most one report per {}s); backing off",
                            AcceptFailures::LOG_EVERY.as_secs()
                        );
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(pause) => continue,
                    }
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let slot = if limits.max_per_address == 0 || exempt.covers(peer.ip()) {
            None
        } else {
            match per_address.take(limited_unit(peer.ip())) {
                Some(slot) => Some(slot),
                None => {
                    metrics::counter!("http_connections_refused_total", "reason" => "per_address")
                        .increment(1);
                    tracing::debug!("connection refused: its address holds its cap already");
                    let linger = limits.header_read_timeout.min(Duration::from_secs(1));
                    tracker.spawn(async move {
                        refuse(stream, linger).await;
                        drop(permit);
                    });
                    continue;
                }
            }
        };
        let router = router.clone();
        let builder = builder.clone();
        let (shutdown, abort) = (shutdown.clone(), abort.clone());
        tracker.spawn(async move {
            metrics::gauge!("http_connections_open").increment(1.0);
            tokio::select! {
                _ = serve_connection(stream, peer, router, &builder, limits, epoch, shutdown) => {}
                // Dropping the connection drops its request, and what the request held
                // (a pooled database connection goes back to its pool).
                _ = abort.cancelled() => {}
            }
            metrics::gauge!("http_connections_open").decrement(1.0);
            drop(slot);
            drop(permit);
        });
    }
    drop(listener);
    tracker.close();
    tokio::select! {
        _ = tracker.wait() => {}
        _ = abort.cancelled() => {
            tracing::warn!(
                connections = tracker.len(),
                "closing connections whose requests are still in flight"
            );
            tracker.wait().await;
        }
    }
    Ok(())
}

/// Where a connection is in its life, for the watchdog.
const HEAD: u8 = 0;
const BUSY: u8 = 1;
const IDLE: u8 = 2;

/// Shared between a connection's socket wrapper, its requests and its watchdog.
struct ConnState {
    epoch: Instant,
    /// `HEAD`: reading a request head; `BUSY`: a request in flight; `IDLE`: between requests.
    phase: AtomicU8,
    /// When the current phase began, in ms since `epoch`.
    since_ms: AtomicU64,
    /// Requests (and drains) still in flight.
    in_flight: AtomicUsize,
    changed: Notify,
}

impl ConnState {
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
struct Busy(#[allow(dead_code)] Arc<BusyInner>);

struct BusyInner(Arc<ConnState>);

impl Drop for BusyInner {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.enter(IDLE);
        }
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: axum::Router,
    builder: &hyper::server::conn::http1::Builder,
    limits: ConnLimits,
    epoch: Instant,
    shutdown: CancellationToken,
) {
    let state = Arc::new(ConnState {
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

/// One request: the router's answer, then what to do about a body it left unread.
async fn handle(
    router: axum::Router,
    req: Request<Incoming>,
    peer: SocketAddr,
    busy: Busy,
    drain_within: Duration,
) -> Result<Response<Body>, Infallible> {
    let (parts, body) = req.into_parts();
    let expects_continue = parts.headers.contains_key(header::EXPECT);
    let (tx, mut rx) = oneshot::channel();
    let body = Body::new(ReturnUnread {
        inner: Some(body),
        back: Some(tx),
    });
    let mut req = Request::from_parts(parts, body);
    req.extensions_mut().insert(ConnectInfo(peer));
    let mut res = match router.oneshot(req).await {
        Ok(res) => res,
        Err(never) => match never {},
    };
    if let Ok(unread) = rx.try_recv() {
        let left = unread.size_hint().exact();
        match left {
            Some(n) if n <= DRAIN_MAX_BYTES && !expects_continue => {
                // Read and discard the rest after the response, so the client may reuse
                // the connection; a client too slow to send it loses the connection.
                let busy = busy.clone();
                tokio::spawn(drain(unread, drain_within, busy));
            }
            _ => {
                res.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
        }
    }
    Ok(res.map(|b| {
        Body::new(BusyBody {
            inner: b,
            _busy: busy,
        })
    }))
}

async fn drain(mut body: Incoming, within: Duration, _busy: Busy) {
    use http_body_util::BodyExt;
    let read = async {
        let mut total = 0u64;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => {
                    if let Some(d) = f.data_ref() {
                        total += d.len() as u64;
                        if total > DRAIN_MAX_BYTES {
                            return;
                        }
                    }
                }
                Err(_) => return,
            }
        }
    };
    let _ = tokio::time::timeout(within, read).await;
}

/// The request body as the application sees it; dropped before its end, it hands the
/// rest back to [`handle`] instead of letting hyper close the connection.
struct ReturnUnread {
    inner: Option<Incoming>,
    back: Option<oneshot::Sender<Incoming>>,
}

impl HttpBody for ReturnUnread {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.inner.as_mut() {
            Some(b) => Pin::new(b).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map(HttpBody::size_hint)
            .unwrap_or_else(|| SizeHint::with_exact(0))
    }
}

impl Drop for ReturnUnread {
    fn drop(&mut self) {
        if let (Some(body), Some(back)) = (self.inner.take(), self.back.take())
            && !body.is_end_stream()
        {
            let _ = back.send(body);
        }
    }
}

/// The response body, holding the connection busy until hyper has written it.
struct BusyBody {
    inner: Body,
    _busy: Busy,
}

impl HttpBody for BusyBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The socket, noting when bytes arrive on an idle connection.
struct Watched {
    inner: TcpStream,
    state: Arc<ConnState>,
    /// The request head being read, measured.
    head: HeadScan,
    /// Set once the head passed [`MAX_HEAD_BYTES`]: our 431 is being sent.
    refusal: Option<Refusal>,
}

/// Measures a request head as its bytes arrive: its end is the first empty line after some
/// content (leading empty lines are skipped, as the parser skips them).
#[derive(Debug, Default)]
struct HeadScan {
    len: usize,
    content: bool,
    last: [u8; 2],
    done: bool,
}

impl HeadScan {
    /// Feeds bytes read; false once the head is over [`MAX_HEAD_BYTES`] and not complete.
    fn feed(&mut self, bytes: &[u8]) -> bool {
        for &b in bytes {
            if self.done {
                return true;
            }
            self.len += 1;
            if b == b'\n' && self.content && (self.last[1] == b'\n' || self.last == *b"\n\r") {
                self.done = true;
            } else if b != b'\r' && b != b'\n' {
                self.content = true;
            }
            self.last = [self.last[1], b];
            if !self.done && self.len >= MAX_HEAD_BYTES {
                return false;
            }
        }
        true
    }
}

/// The 431 for a head over the limit, its bytes written so far, then what the client
/// still sends, read and discarded so that closing does not reset the connection (which
/// could lose the answer).
#[derive(Debug, Default)]
struct Refusal {
    written: usize,
    shut: bool,
    drained: usize,
}

/// The body of the 431.
const HEAD_TOO_LARGE: &str = r#"{"detail":"Request header fields too large: the request line and headers may take at most 64 KiB."}"#;

/// Most bytes read and discarded after the 431 before the connection is simply closed.
const REFUSAL_DRAIN_MAX: usize = 1 << 20;

impl Watched {
    /// Sends the 431, half-closes, and drains; then tells hyper the stream ended (it
    /// closes the connection without an answer of its own, its head being incomplete).
    fn poll_refusal(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let answer = format!(
            "HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n\
             connection: close\r\ncontent-length: {}\r\n\r\n{HEAD_TOO_LARGE}",
            HEAD_TOO_LARGE.len()
        );
        let refusal = self.refusal.get_or_insert_with(Refusal::default);
        while refusal.written < answer.len() {
            match Pin::new(&mut self.inner).poll_write(cx, &answer.as_bytes()[refusal.written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(n)) => refusal.written += n,
                Poll::Ready(Err(_)) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
        if !refusal.shut {
            match Pin::new(&mut self.inner).poll_shutdown(cx) {
                Poll::Ready(_) => refusal.shut = true,
                Poll::Pending => return Poll::Pending,
            }
        }
        let mut sink = [0u8; 8192];
        while refusal.drained < REFUSAL_DRAIN_MAX {
            let mut scratch = ReadBuf::new(&mut sink);
            match Pin::new(&mut self.inner).poll_read(cx, &mut scratch) {
                Poll::Ready(Ok(())) if !scratch.filled().is_empty() => {
                    refusal.drained += scratch.filled().len();
                }
                // The client closed (or failed): end of stream for hyper.
                Poll::Ready(_) => return Poll::Ready(Ok(())),
                // Bounded in time by the watchdog's header timeout, which is still running.
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_failures_back_off_and_are_logged_once_per_interval_with_a_count() {
        let start = Instant::now();
        let mut f = AcceptFailures::default();
        let mut now = start;
        let mut logged = Vec::new();
        let mut pauses = Vec::new();
        // Twenty seconds of failing accepts, each retried after its pause.
        while now.duration_since(start) < Duration::from_secs(20) {
            let (pause, log) = f.failed(now);
            logged.extend(log);
            pauses.push(pause);
            now += pause;
        }
        let failures = pauses.len() as u64;
        assert_eq!(pauses[0], AcceptFailures::FIRST_DELAY);
        assert!(pauses.windows(2).all(|w| w[1] >= w[0]), "{pauses:?}");
        assert_eq!(*pauses.last().unwrap(), AcceptFailures::MAX_DELAY);
        // One line at the first failure, then one per ten seconds: three, not hundreds.
        assert!(logged.len() <= 3, "{logged:?}");
        // An accept that works starts the pause over, and reports what was not yet logged.
        now += AcceptFailures::LOG_EVERY;
        let rest = f.succeeded(now).expect("the unlogged failures");
        assert_eq!(logged.iter().sum::<u64>() + rest, failures);
        assert_eq!(f.failed(now).0, AcceptFailures::FIRST_DELAY);
    }

    #[test]
    fn a_head_is_measured_to_its_first_empty_line() {
        let head = |text: &[u8]| {
            let mut scan = HeadScan::default();
            // Fed in pieces of 3 bytes, as reads may split it anywhere.
            let fits = text.chunks(3).all(|c| scan.feed(c));
            (fits, scan.done, scan.len)
        };
        assert_eq!(
            head(b"GET / HTTP/1.1\r\nA: b\r\n\r\nbody"),
            (true, true, 24)
        );
        assert_eq!(head(b"GET / HTTP/1.1\nA: b\n\n"), (true, true, 21));
        // Leading empty lines are not the end of a head.
        assert!(head(b"\r\n\r\nGET / HTTP/1.1\r\n\r\n").1);
        assert!(!head(b"\r\n\r\nGET / HTTP/1.1\r\n").1);
        let mut exact = b"GET / HTTP/1.1\r\nX: ".to_vec();
        exact.resize(MAX_HEAD_BYTES - 4, b'a');
        exact.extend_from_slice(b"\r\n\r\n");
        assert_eq!(head(&exact), (true, true, MAX_HEAD_BYTES));
        let mut over = b"GET / HTTP/1.1\r\nX: ".to_vec();
        over.resize(MAX_HEAD_BYTES - 3, b'a');
        over.extend_from_slice(b"\r\n\r\n");
        assert!(!head(&over).0);
    }

    #[test]
    fn the_descriptor_limit_is_raised_and_the_cap_fits_it() {
        let d = fit_descriptor_limit(10, 4);
        assert_eq!(d.needed, 10 + 4 + FD_RESERVE);
        if d.limit >= d.needed {
            assert_eq!(d.max_connections, 10);
        }
        let huge = fit_descriptor_limit(usize::MAX / 2, 0);
        assert!(huge.max_connections < usize::MAX / 2 || huge.limit == u64::MAX);
    }
}
