//! Fuzzes the HTTP/1.1 request path the way a client connection drives it:
//! pipelined requests in one byte stream, each head parsed by
//! [`parse_request`], its body delimited by a [`BodyTracker`] fed in
//! arbitrary chunks, then the next request.
//!
//! Oracles: no panic; a head's length is within the input; the head the
//! proxy forwards re-parses to the same method, target, version, host,
//! keep-alive and, above all, the same body framing (a backend that frames
//! the body differently from the proxy is request smuggling); feeding a body
//! in chunks consumes exactly what feeding it at once does, with the same
//! error.
//!
//! Input layout: byte 0 picks the client/listener addresses (bit 0: IPv6)
//! and seeds the chunk sizes; the rest is the stream.

use std::net::SocketAddr;

use sozu_lib::protocol::http::body::{BodyKind, BodyTracker};
use sozu_lib::protocol::http::head::{parse_request, ForwardInfo, RequestError};

/// The fuzz entry point.
pub fn run(data: &[u8]) {
    let Some((&control, stream)) = data.split_first() else {
        return;
    };
    let info = if control & 1 == 0 {
        ForwardInfo {
            client: SocketAddr::from(([192, 0, 2, 7], 40_000)),
            listener: SocketAddr::from(([127, 0, 0, 1], 8080)),
            tls: control & 2 != 0,
        }
    } else {
        ForwardInfo {
            client: "[2001:db8::7]:40000".parse().expect("literal address"),
            listener: "[::1]:8080".parse().expect("literal address"),
            tls: control & 2 != 0,
        }
    };
    let mut pos = 0;
    // Each round consumes at least the head's bytes, so this terminates.
    while pos < stream.len() {
        let request = match parse_request(&stream[pos..], &info) {
            Ok(Some(request)) => request,
            // Incomplete (wait for more) or refused (answered 4xx/5xx and
            // closed): either way the connection reads no further here.
            Ok(None) | Err(_) => return,
        };
        assert!(
            request.head_len > 0 && request.head_len <= stream.len() - pos,
            "head length {} outside the {} bytes left",
            request.head_len,
            stream.len() - pos
        );
        check_forwarded(&request, &info);
        pos += request.head_len;
        let body = &stream[pos..];
        let whole = feed_whole(request.body, body);
        let chunked = feed_chunked(request.body, body, control);
        assert_eq!(
            whole, chunked,
            "chunked feeding disagrees ({:?})",
            request.body
        );
        match whole {
            Ok((used, true)) => pos += used,
            // Bad framing, or a body still waiting for bytes.
            Ok((_, false)) | Err(_) => return,
        }
    }
}

/// The forwarded head must mean to the backend what the proxy understood.
fn check_forwarded(request: &sozu_lib::protocol::http::head::Request, info: &ForwardInfo) {
    let again = match parse_request(&request.forwarded, info) {
        Ok(Some(again)) => again,
        // The proxy adds up to five header lines: a client head near the
        // header limit may not fit it any more; the backend refuses it, it
        // does not misread it.
        Err(RequestError::TooManyHeaders) => return,
        other => panic!(
            "the forwarded head does not re-parse: {other:?}\n{}",
            String::from_utf8_lossy(&request.forwarded)
        ),
    };
    assert_eq!(
        again.head_len,
        request.forwarded.len(),
        "trailing bytes after the forwarded head"
    );
    assert_eq!(again.method, request.method);
    assert_eq!(again.target, request.target);
    assert_eq!(again.version, request.version);
    assert_eq!(again.host, request.host, "the backend sees another host");
    assert_eq!(
        again.body, request.body,
        "the backend frames the body differently"
    );
    assert_eq!(again.keep_alive, request.keep_alive);
}

/// (bytes used, body complete) feeding everything at once.
fn feed_whole(
    kind: BodyKind,
    body: &[u8],
) -> Result<(usize, bool), sozu_lib::protocol::http::body::FramingError> {
    let mut tracker = BodyTracker::new(kind);
    let used = tracker.feed(body)?;
    assert!(
        used <= body.len(),
        "the tracker used more than it was given"
    );
    Ok((used, tracker.is_done()))
}

/// The same, in chunks whose sizes come from `seed`, stopping at the first
/// chunk the tracker does not use whole (the rest is the next message).
fn feed_chunked(
    kind: BodyKind,
    body: &[u8],
    seed: u8,
) -> Result<(usize, bool), sozu_lib::protocol::http::body::FramingError> {
    let mut tracker = BodyTracker::new(kind);
    let mut used = 0;
    let mut state = u32::from(seed) | 1;
    while used < body.len() && !tracker.is_done() {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let size = 1 + (state as usize % 13);
        let (start, end) = (used, (used + size).min(body.len()));
        let n = tracker.feed(&body[start..end])?;
        used += n;
        if n < end - start {
            break;
        }
    }
    Ok((used, tracker.is_done()))
}

/// Header lines the generator picks from: framing, hop-by-hop, forwarding
/// and host variants, including the ambiguous ones the parser must refuse.
const HEADERS: [&str; 16] = [
    "Host: example.com",
    "Host: other.example",
    "Content-Length: 5",
    "Content-Length: 0",
    "Content-Length: 5, 5",
    "Content-Length: 5, 6",
    "Transfer-Encoding: chunked",
    "Transfer-Encoding: gzip, chunked",
    "Transfer-Encoding: chunked, gzip",
    "Connection: close",
    "Connection: keep-alive, X-Secret",
    "X-Secret: hop",
    "X-Forwarded-For: 10.0.0.1",
    "Forwarded: for=10.0.0.1",
    "Expect: 100-continue",
    "Upgrade: websocket",
];
const BODIES: [&[u8]; 6] = [
    b"",
    b"hello",
    b"5\r\nhello\r\n0\r\n\r\n",
    b"5;ext=1\r\nhello\r\n0\r\nTrailer: x\r\n\r\n",
    b"zz\r\n",
    b"0\r\n\r\n",
];
const REQUEST_LINES: [&str; 5] = [
    "GET / HTTP/1.1",
    "POST /submit HTTP/1.1",
    "GET http://absolute.example/path HTTP/1.1",
    "HEAD /old HTTP/1.0",
    "PUT /x HTTP/1.1",
];

/// Builds a pipelined stream from generated `(line, headers, body)` parts,
/// so generated inputs reach the forwarded-head and body oracles.
pub fn stream_from_parts(control: u8, parts: &[(u8, Vec<u8>, u8)]) -> Vec<u8> {
    let mut stream = vec![control];
    for (line, headers, body) in parts {
        stream
            .extend_from_slice(REQUEST_LINES[usize::from(*line) % REQUEST_LINES.len()].as_bytes());
        stream.extend_from_slice(b"\r\n");
        for h in headers {
            stream.extend_from_slice(HEADERS[usize::from(*h) % HEADERS.len()].as_bytes());
            stream.extend_from_slice(b"\r\n");
        }
        stream.extend_from_slice(b"\r\n");
        stream.extend_from_slice(BODIES[usize::from(*body) % BODIES.len()]);
    }
    stream
}
