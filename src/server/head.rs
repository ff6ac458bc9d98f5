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
    /// Looks only at the line ends (`memchr`), not at every byte: this runs on every read
    /// of every request.
    pub(super) fn feed(&mut self, bytes: &[u8]) -> bool {
        if self.done {
            return true;
        }
        let mut from = 0;
        if !self.content {
            // Empty lines before the request line are not the end of a head.
            match bytes.iter().position(|&b| b != b'\r' && b != b'\n') {
                Some(p) => {
                    self.content = true;
                    from = p;
                }
                None => return self.count(bytes),
            }
        }
        for i in memchr::memchr_iter(b'\n', &bytes[from..]).map(|i| i + from) {
            let prev1 = if i >= 1 { bytes[i - 1] } else { self.last[1] };
            let prev2 = match i {
                0 => self.last[0],
                1 => self.last[1],
                _ => bytes[i - 2],
            };
            if prev1 == b'\n' || (prev1 == b'\r' && prev2 == b'\n') {
                self.done = true;
                self.len += i + 1;
                return self.len <= MAX_HEAD_BYTES;
            }
        }
        self.count(bytes)
    }

    /// Counts bytes that do not end the head.
    fn count(&mut self, bytes: &[u8]) -> bool {
        self.len += bytes.len();
        match bytes {
            [] => {}
            [b] => self.last = [self.last[1], *b],
            [.., a, b] => self.last = [*a, *b],
        }
        self.len < MAX_HEAD_BYTES
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

    /// The byte-at-a-time scan the line-end search replaced: the reference it must equal.
    fn reference(bytes: &[u8], chunk: usize) -> (bool, bool, usize) {
        let (mut len, mut content, mut last, mut done) = (0usize, false, [0u8; 2], false);
        for piece in bytes.chunks(chunk.max(1)) {
            for &b in piece {
                if done {
                    break;
                }
                len += 1;
                if b == b'\n' && content && (last[1] == b'\n' || last == *b"\n\r") {
                    done = true;
                } else if b != b'\r' && b != b'\n' {
                    content = true;
                }
                last = [last[1], b];
                if !done && len >= MAX_HEAD_BYTES {
                    return (false, done, len);
                }
            }
        }
        (true, done, len)
    }

    #[test]
    fn the_line_end_search_equals_the_byte_scan() {
        // Heads made of the bytes that matter (CR, LF, a letter), cut anywhere.
        let alphabet = [b'\r', b'\n', b'a'];
        for seed in 0..20_000u64 {
            let mut x = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let mut next = || {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x
            };
            let n = (next() % 24) as usize;
            let text: Vec<u8> = (0..n).map(|_| alphabet[(next() % 3) as usize]).collect();
            let chunk = 1 + (next() % 5) as usize;
            let mut scan = HeadScan::default();
            let fits = text.chunks(chunk).all(|c| scan.feed(c));
            let expect = reference(&text, chunk);
            assert_eq!(
                (fits, scan.done, scan.len),
                expect,
                "{text:?} in chunks of {chunk}"
            );
        }
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
}
