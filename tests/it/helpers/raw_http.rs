//! A raw HTTP/1.1 client: requests written byte for byte as given (so paths such as
//! `/api/profiles/..`, `%00` or invalid bytes reach the server exactly as written), one
//! connection each ([`send`]), and one reader of responses, also off a keep-alive
//! connection ([`read_response`]).

use std::net::SocketAddr;
use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Requests in flight at once in [`send_all`].
pub const CONCURRENCY: usize = 12;
/// Longest a single request may take before it counts as a hang.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// How the body is framed on the wire.
#[derive(Debug, Clone)]
pub enum Body {
    None,
    Sized(Vec<u8>),
    Chunked(Vec<u8>),
}

impl Body {
    pub fn bytes(&self) -> &[u8] {
        match self {
            Body::None => &[],
            Body::Sized(b) | Body::Chunked(b) => b,
        }
    }
}

/// One request on its own connection, written byte for byte as given; `tag` is what the
/// caller keeps with it (who sends it, what it expects).
#[derive(Debug, Clone)]
pub struct Req<T> {
    pub method: String,
    /// The request-target exactly as written on the request line.
    pub target: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Body,
    /// Skip the automatic `Host` header.
    pub no_host: bool,
    /// Send only this many body bytes, then half-close (a truncated upload).
    pub truncate_to: Option<usize>,
    pub tag: T,
}

impl<T: std::fmt::Debug> Req<T> {
    pub fn new(method: &str, target: impl Into<Vec<u8>>, tag: impl Into<T>) -> Self {
        Self {
            method: method.to_owned(),
            target: target.into(),
            headers: Vec::new(),
            body: Body::None,
            no_host: false,
            truncate_to: None,
            tag: tag.into(),
        }
    }

    pub fn header(mut self, name: &str, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name.to_owned(), value.into()));
        self
    }

    pub fn json(self, body: impl Into<Vec<u8>>) -> Self {
        self.header("Content-Type", "application/json")
            .with_body(Body::Sized(body.into()))
    }

    pub fn with_body(mut self, body: Body) -> Self {
        self.body = body;
        self
    }

    pub fn auth(self, token: &str) -> Self {
        self.header("Authorization", format!("Bearer {token}"))
    }

    pub fn path(&self) -> String {
        let t = String::from_utf8_lossy(&self.target).into_owned();
        match t.split_once('?') {
            Some((p, _)) => p.to_owned(),
            None => t,
        }
    }

    /// One line describing the request, for failure reports (long parts elided).
    pub fn describe(&self) -> String {
        let ct = self
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
            .map(|(_, v)| preview(v, 60))
            .unwrap_or_else(|| "-".into());
        let framing = match &self.body {
            Body::None => "none",
            Body::Sized(_) => "sized",
            Body::Chunked(_) => "chunked",
        };
        format!(
            "{:?} {} {} [content-type {}] [{} headers] [body {} {} bytes: {}]",
            self.tag,
            preview(self.method.as_bytes(), 40),
            preview(&self.target, 160),
            ct,
            self.headers.len(),
            framing,
            self.body.bytes().len(),
            preview(self.body.bytes(), 160),
        )
    }
}

/// A printable, shortened view of some bytes.
pub fn preview(b: &[u8], max: usize) -> String {
    let s = String::from_utf8_lossy(b);
    let s: String = s.chars().flat_map(char::escape_debug).collect();
    if s.chars().count() > max {
        let head: String = s.chars().take(max).collect();
        format!("{head}…(+{} bytes)", b.len().saturating_sub(max))
    } else {
        s
    }
}

/// A response as received.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    /// The final response's head (status line and headers), as text.
    pub head: String,
    /// Its headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Everything received (heads and body), for the data-leak search.
    pub raw: Vec<u8>,
}

impl Resp {
    /// The value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// True when the response says `Connection: close`.
    pub fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }

    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// Well-formed JSON, also when nested deeper than serde_json's default recursion limit
    /// (a 127-deep document wrapped in `{"settings": …}` is valid, just unparsable here).
    pub fn is_json(&self) -> bool {
        match serde_json::from_slice::<serde::de::IgnoredAny>(&self.body) {
            Ok(_) => true,
            Err(e) => e.to_string().contains("recursion limit exceeded"),
        }
    }
}

/// What came of a one-connection request.
#[derive(Debug)]
pub enum Outcome {
    Resp(Resp),
    /// The connection ended (or timed out) without a parsable response.
    NoResponse(String),
}

impl Outcome {
    pub fn describe(&self) -> String {
        match self {
            Outcome::Resp(r) => format!(
                "{} [content-type {}] {}",
                r.status,
                r.header("content-type").unwrap_or("-"),
                preview(&r.body, 300)
            ),
            Outcome::NoResponse(e) => format!("no response: {e}"),
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            Outcome::Resp(r) => Some(r.status),
            Outcome::NoResponse(_) => None,
        }
    }
}

fn encode<T>(req: &Req<T>, host: &str) -> (Vec<u8>, usize) {
    let mut out = Vec::with_capacity(req.body.bytes().len() + 512);
    out.extend_from_slice(req.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(&req.target);
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if !req.no_host {
        out.extend_from_slice(format!("Host: {host}\r\n").as_bytes());
    }
    out.extend_from_slice(b"Connection: close\r\n");
    for (k, v) in &req.headers {
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v);
        out.extend_from_slice(b"\r\n");
    }
    match &req.body {
        Body::None => out.extend_from_slice(b"\r\n"),
        Body::Sized(b) => {
            out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", b.len()).as_bytes());
            out.extend_from_slice(b);
        }
        Body::Chunked(b) => {
            out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
            for chunk in b.chunks(7919) {
                out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                out.extend_from_slice(chunk);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\n\r\n");
        }
    }
    let send = match req.truncate_to {
        Some(n) => out.len() - req.body.bytes().len() + n.min(req.body.bytes().len()),
        None => out.len(),
    };
    (out, send)
}

/// Where `needle` first stands in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The data of a chunked body, up to its last chunk or as far as it arrived.
fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Ok(httparse::Status::Complete((start, size))) = httparse::parse_chunk_size(b) {
        if size == 0 {
            break;
        }
        let data = &b[start..];
        let size = usize::try_from(size).unwrap_or(usize::MAX).min(data.len());
        out.extend_from_slice(&data[..size]);
        // The chunk's data is followed by CRLF.
        b = &data[(size + 2).min(data.len())..];
    }
    out
}

/// The final response in `raw` (after any 1xx), its headers lower-cased.
pub fn parse_response(raw: &[u8]) -> Option<Resp> {
    let mut rest = raw;
    loop {
        let mut slots = [httparse::EMPTY_HEADER; 64];
        let mut head = httparse::Response::new(&mut slots);
        let httparse::Status::Complete(head_len) = head.parse(rest).ok()? else {
            return None;
        };
        let status = head.code?;
        let head_text = String::from_utf8_lossy(&rest[..head_len])
            .trim_end()
            .to_owned();
        let after = &rest[head_len..];
        if (100..200).contains(&status) {
            rest = after;
            continue;
        }
        let headers: Vec<(String, String)> = head
            .headers
            .iter()
            .map(|h| {
                let value = String::from_utf8_lossy(h.value).trim().to_owned();
                (h.name.to_ascii_lowercase(), value)
            })
            .collect();
        let chunked = headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked"));
        let length = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse::<usize>().ok());
        let body = if chunked {
            dechunk(after)
        } else if let Some(n) = length {
            after[..n.min(after.len())].to_vec()
        } else {
            after.to_vec()
        };
        return Some(Resp {
            status,
            head: head_text,
            headers,
            body,
            raw: raw.to_vec(),
        });
    }
}

/// Sends one request on its own connection and reads until the server closes it.
pub async fn send<T>(addr: SocketAddr, req: &Req<T>) -> Outcome {
    let (bytes, send_len) = encode(req, &addr.to_string());
    let half_close = req.truncate_to.is_some();
    let exchange = async move {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (mut rd, mut wr) = stream.into_split();
        // Written concurrently with the read, so an early answer (413) is never missed; the
        // write half is kept open (dropping it would half-close the connection).
        let writer = tokio::spawn(async move {
            let _ = wr.write_all(&bytes[..send_len]).await;
            let _ = wr.flush().await;
            if half_close {
                let _ = wr.shutdown().await;
            }
            wr
        });
        let mut raw = Vec::new();
        let mut buf = vec![0u8; 32 * 1024];
        let read_error = loop {
            match rd.read(&mut buf).await {
                Ok(0) => break None,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
                Err(e) => break Some(e.to_string()),
            }
        };
        writer.abort();
        let _ = writer.await;
        match parse_response(&raw) {
            Some(r) => Ok(r),
            None => Err(format!(
                "{} bytes received{}",
                raw.len(),
                read_error
                    .map(|e| format!(", then {e}"))
                    .unwrap_or_default()
            )),
        }
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
        Ok(Ok(r)) => Outcome::Resp(r),
        Ok(Err(e)) => Outcome::NoResponse(e),
        Err(_) => Outcome::NoResponse(format!("timed out after {REQUEST_TIMEOUT:?}")),
    }
}

/// Sends all requests, `CONCURRENCY` at a time; outcomes in request order.
pub async fn send_all<T: Sync>(addr: SocketAddr, reqs: &[Req<T>]) -> Vec<Outcome> {
    let mut out: Vec<(usize, Outcome)> = futures::stream::iter(reqs.iter().enumerate())
        .map(|(i, r)| async move { (i, send(addr, r).await) })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, o)| o).collect()
}

/// Reads one response off `s` (a keep-alive connection) within `wait`: its head, then the
/// body its `Content-Length` announces (none without one); `None` if it does not arrive.
pub async fn read_response(s: &mut TcpStream, wait: Duration) -> Option<Resp> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        if let Some(r) = parse_response(&raw) {
            let len = (r.header("content-length")).map_or(Some(0), |v| v.parse::<usize>().ok())?;
            if r.body.len() >= len {
                return Some(r);
            }
        }
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => raw.extend_from_slice(&buf[..n]),
            _ => return None,
        }
    }
}
