//! Early answers and unread bodies: what is left of a small request body the application
//! did not read is drained after the response, so the connection stays usable; any other
//! unread body gets `Connection: close`. The response body keeps the connection busy (no
//! timeout) until hyper has written it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, Request, Response, header};
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::oneshot;
use tower::ServiceExt;

use super::DRAIN_MAX_BYTES;
use super::activity::Busy;

/// One request: the router's answer, then what to do about a body it left unread.
pub(super) async fn handle(
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
