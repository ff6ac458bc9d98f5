//! The head size limit: a request line and headers over [`MAX_HEAD_BYTES`] are answered
//! 431 with a JSON `detail`, by us, before hyper sees the bytes.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::MAX_HEAD_BYTES;

/// Measures a request head as its bytes arrive: its end is the first empty line after some
/// content (leading empty lines are skipped, as the parser skips them).
#[derive(Debug, Default)]
pub(super) struct HeadScan {
    len: usize,
    content: bool,
    last: [u8; 2],
    done: bool,
}

impl HeadScan {
    /// Feeds bytes read; false once the head is over [`MAX_HEAD_BYTES`] and not complete.
    pub(super) fn feed(&mut self, bytes: &[u8]) -> bool {
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
pub(super) struct Refusal {
    written: usize,
    shut: bool,
    drained: usize,
}

/// The body of the 431.
const HEAD_TOO_LARGE: &str = r#"{"detail":"Request header fields too large: the request line and headers may take at most 64 KiB."}"#;

/// Most bytes read and discarded after the 431 before the connection is simply closed.
const REFUSAL_DRAIN_MAX: usize = 1 << 20;

impl Refusal {
    /// Sends the 431 on `socket`, half-closes, and drains; then tells hyper the stream
    /// ended (it closes the connection without an answer of its own, its head being
    /// incomplete).
    pub(super) fn poll(
        &mut self,
        socket: &mut TcpStream,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        let answer = format!(
            "HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n\
             connection: close\r\ncontent-length: {}\r\n\r\n{HEAD_TOO_LARGE}",
            HEAD_TOO_LARGE.len()
        );
        let refusal = self;
        while refusal.written < answer.len() {
            match Pin::new(&mut *socket).poll_write(cx, &answer.as_bytes()[refusal.written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(n)) => refusal.written += n,
                Poll::Ready(Err(_)) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
        if !refusal.shut {
            match Pin::new(&mut *socket).poll_shutdown(cx) {
                Poll::Ready(_) => refusal.shut = true,
                Poll::Pending => return Poll::Pending,
            }
        }
        let mut sink = [0u8; 8192];
        while refusal.drained < REFUSAL_DRAIN_MAX {
            let mut scratch = ReadBuf::new(&mut sink);
            match Pin::new(&mut *socket).poll_read(cx, &mut scratch) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
