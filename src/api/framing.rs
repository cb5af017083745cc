//! Watches the bytes of an HTTP/1 connection for a request head that carries both
//! Content-Length and Transfer-Encoding. hyper reads such a request as RFC 9112 says
//! (chunked wins, the length is dropped, the connection closes after the answer), but
//! drops the length before any service sees the request, so the service cannot refuse
//! it. Behind a proxy that frames by the other header, that shape smuggles a request;
//! the REST door refuses it (400) and every later request on that connection.
//!
//! The watcher follows the framing itself to find each head: a fixed-length body is
//! skipped by its length, a chunked one chunk by chunk. It only reads; hyper still
//! parses everything. Once it has seen the shape (or cannot follow the framing) it
//! stops and the connection is marked.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Longest head or chunk-size line followed; longer ones are hyper's to refuse.
const MAX_LINE: usize = 16 << 10;

/// What the watcher expects next.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// A head's lines; whether Content-Length, Transfer-Encoding (chunked or not) were
    /// seen, and the declared length.
    Head {
        length: Option<u64>,
        transfer_encoding: bool,
    },
    /// This many body bytes to skip.
    Body(u64),
    /// A chunk-size line.
    ChunkSize,
    /// This many bytes of chunk data, then its CRLF.
    ChunkData(u64),
    /// The CRLF after a chunk's data.
    ChunkEnd,
    /// Trailer lines after the last chunk, until an empty one.
    Trailers,
    /// Seen the shape, or lost the framing: nothing more to follow.
    Done,
}

/// Follows request framing over the bytes given to it.
#[derive(Debug)]
pub struct FramingWatch {
    state: State,
    line: Vec<u8>,
    /// Set once a head had both headers.
    ambiguous: Arc<AtomicBool>,
}

impl FramingWatch {
    pub fn new(ambiguous: Arc<AtomicBool>) -> FramingWatch {
        FramingWatch {
            state: State::Head {
                length: None,
                transfer_encoding: false,
            },
            line: Vec::new(),
            ambiguous,
        }
    }

    /// Follows `bytes`, the next ones read from the connection.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && self.state != State::Done {
            match &mut self.state {
                State::Body(left) | State::ChunkData(left) => {
                    let skip = (*left).min(bytes.len() as u64);
                    *left -= skip;
                    bytes = &bytes[skip as usize..];
                    if *left == 0 {
                        self.state = match self.state {
                            State::ChunkData(_) => State::ChunkEnd,
                            _ => Self::new_head(),
                        };
                    }
                }
                _ => {
                    let Some(end) = bytes.iter().position(|b| *b == b'\n') else {
                        self.push_line(bytes);
                        return;
                    };
                    self.push_line(&bytes[..end]);
                    bytes = &bytes[end + 1..];
                    let line = std::mem::take(&mut self.line);
                    self.line_done(trim_cr(&line));
                }
            }
        }
    }

    fn new_head() -> State {
        State::Head {
            length: None,
            transfer_encoding: false,
        }
    }

    fn push_line(&mut self, bytes: &[u8]) {
        if self.line.len() + bytes.len() > MAX_LINE {
            // Not a head we can follow: hyper refuses it; stop watching.
            self.state = State::Done;
            self.line.clear();
            return;
        }
        self.line.extend_from_slice(bytes);
    }

    fn line_done(&mut self, line: &[u8]) {
        self.state = match std::mem::replace(&mut self.state, State::Done) {
            State::Head {
                length,
                transfer_encoding,
            } if line.is_empty() => {
                if length.is_some() && transfer_encoding {
                    self.ambiguous.store(true, Ordering::Release);
                    State::Done
                } else if transfer_encoding {
                    State::ChunkSize
                } else {
                    match length {
                        Some(length) if length > 0 => State::Body(length),
                        _ => Self::new_head(),
                    }
                }
            }
            State::Head {
                mut length,
                mut transfer_encoding,
            } => {
                if let Some((name, value)) = split_header(line) {
                    if name.eq_ignore_ascii_case(b"content-length") {
                        match parse_decimal(value) {
                            Some(value) => length = Some(value),
                            // hyper refuses a bad length; nothing to follow.
                            None => return,
                        }
                    } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                        transfer_encoding = true;
                    }
                }
                State::Head {
                    length,
                    transfer_encoding,
                }
            }
            State::ChunkSize => {
                let size = line.split(|b| *b == b';').next().unwrap_or_default();
                match parse_hex(trim(size)) {
                    Some(0) => State::Trailers,
                    Some(size) => State::ChunkData(size),
                    None => State::Done,
                }
            }
            State::ChunkEnd if line.is_empty() => State::ChunkSize,
            State::Trailers if line.is_empty() => Self::new_head(),
            State::Trailers => State::Trailers,
            _ => State::Done,
        };
    }
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |end| end + 1);
    &bytes[start..end.max(start)]
}

fn split_header(line: &[u8]) -> Option<(&[u8], &[u8])> {
    let colon = line.iter().position(|b| *b == b':')?;
    Some((trim(&line[..colon]), trim(&line[colon + 1..])))
}

fn parse_decimal(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value).ok()?.parse().ok()
}

fn parse_hex(value: &[u8]) -> Option<u64> {
    u64::from_str_radix(std::str::from_utf8(value).ok()?, 16).ok()
}

/// A connection whose reads are shown to a [`FramingWatch`].
pub struct Watched<IO> {
    io: IO,
    watch: FramingWatch,
}

impl<IO> Watched<IO> {
    pub fn new(io: IO, ambiguous: Arc<AtomicBool>) -> Watched<IO> {
        Watched {
            io,
            watch: FramingWatch::new(ambiguous),
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Watched<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let read = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = read {
            this.watch.feed(&buf.filled()[before..]);
        }
        read
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Watched<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `stream`, fed in pieces of `step` bytes, shows the shape.
    fn ambiguous(stream: &[u8], step: usize) -> bool {
        let flag = Arc::new(AtomicBool::new(false));
        let mut watch = FramingWatch::new(Arc::clone(&flag));
        for piece in stream.chunks(step) {
            watch.feed(piece);
        }
        flag.load(Ordering::Acquire)
    }

    const BOTH: &[u8] = b"POST /v2/models/fraud/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";

    #[test]
    fn a_head_with_both_headers_is_seen_however_the_bytes_arrive() {
        for step in [1, 2, 7, 64, BOTH.len()] {
            assert!(ambiguous(BOTH, step), "step {step}");
        }
        let reversed =
            b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 10\r\n\r\n";
        assert!(ambiguous(reversed, 3));
    }

    #[test]
    fn ordinary_requests_are_followed_past_their_bodies() {
        // Bodies that look like heads must be skipped, not read as heads.
        let body = "Transfer-Encoding: chunked\r\n\r\n123456789\r\n";
        let length = format!(
            "POST /a HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let data = "Content-Length: 5\r\n\r\n12345678";
        let chunked = format!(
            "POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n{:x};ext=1\r\n{data}\r\n0\r\nx-trailer: 1\r\n\r\n",
            data.len()
        );
        let get = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n";
        let mut pipelined = Vec::new();
        pipelined.extend_from_slice(length.as_bytes());
        pipelined.extend_from_slice(chunked.as_bytes());
        pipelined.extend_from_slice(get);
        for step in [1, 5, 1000] {
            assert!(!ambiguous(&pipelined, step), "step {step}");
            // ...and a smuggling head after them is still found.
            let mut then = pipelined.clone();
            then.extend_from_slice(BOTH);
            assert!(ambiguous(&then, step), "step {step}");
        }
    }
}
