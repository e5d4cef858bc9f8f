//! HTTP/1.1 request and response heads: parse with `httparse`, decide the
//! body framing and keep-alive, and write the head sent on (hop-by-hop
//! headers removed, forwarding headers added).
//!
//! Pure: no sockets, no clock. Owns the header rules the proxy applies; the
//! session decides what to do with a refused head (a default answer).
//! Ambiguous framing (both `Transfer-Encoding` and `Content-Length`,
//! differing lengths, a transfer coding that does not end in `chunked`) is
//! refused rather than guessed, since two parsers guessing differently is
//! how request smuggling works.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use super::body::BodyKind;

/// Most header lines accepted in one head.
pub const MAX_HEADERS: usize = 100;

/// A request head the proxy refuses, with the status it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Not HTTP/1.x syntax.
    #[error("malformed request head: {0}")]
    Malformed(httparse::Error),
    /// More than [`MAX_HEADERS`] header lines.
    #[error("too many header lines")]
    TooManyHeaders,
    /// The head does not fit in the buffer.
    #[error("request head larger than the buffer")]
    TooLarge,
    /// HTTP/1.1 without a Host header, or several.
    #[error("missing or repeated Host header")]
    BadHost,
    /// A Content-Length that is not one non-negative integer.
    #[error("invalid Content-Length")]
    BadContentLength,
    /// Both Transfer-Encoding and Content-Length.
    #[error("both Transfer-Encoding and Content-Length")]
    ConflictingFraming,
    /// A Transfer-Encoding whose last coding is not chunked.
    #[error("unsupported Transfer-Encoding")]
    UnsupportedTransferEncoding,
    /// An `Upgrade` request with a body or on HTTP/1.0, which cannot be
    /// tunnelled safely (RFC 9110 §7.8: the switch happens after the
    /// request, body included).
    #[error("protocol upgrade not supported on this request")]
    Upgrade,
}

impl RequestError {
    /// The status answered to the client.
    pub fn status(&self) -> u16 {
        match self {
            RequestError::TooManyHeaders | RequestError::TooLarge => 431,
            RequestError::UnsupportedTransferEncoding | RequestError::Upgrade => 501,
            _ => 400,
        }
    }
}

/// A response head the proxy refuses (answered 502).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    /// Not an HTTP/1.x response head.
    #[error("malformed response head: {0}")]
    Malformed(httparse::Error),
    /// The head does not fit the buffer.
    #[error("response head larger than the buffer")]
    TooLarge,
    /// A Content-Length that is not one number.
    #[error("invalid Content-Length in response")]
    BadContentLength,
    /// A 101 answer to a request that asked for no upgrade.
    #[error("101 Switching Protocols without an upgrade request")]
    UnexpectedUpgrade,
}

/// What the proxy adds about the connection a request came on.
#[derive(Debug, Clone, Copy)]
pub struct ForwardInfo {
    /// The client (from the PROXY header when the listener expects one).
    pub client: SocketAddr,
    /// The local address the client connected to (`by=` and
    /// `X-Forwarded-Port`).
    pub listener: SocketAddr,
    /// The client spoke TLS (an HTTPS listener): `X-Forwarded-Proto:
    /// https` and `proto=https`.
    pub tls: bool,
}

/// A parsed request head and the head to send to the backend.
#[derive(Debug, Clone)]
pub struct Request {
    /// The method, as sent.
    pub method: String,
    /// The request target, as sent.
    pub target: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    /// The Host header value (or the authority of an absolute target);
    /// empty for an HTTP/1.0 request without one.
    pub host: String,
    /// How the request body is framed.
    pub body: BodyKind,
    /// The client wants the connection kept after this exchange.
    pub keep_alive: bool,
    /// `Expect: 100-continue` (forwarded: the backend sends the 100).
    pub expect_continue: bool,
    /// Bytes of the head in the input.
    pub head_len: usize,
    /// The head to send to the backend.
    pub forwarded: Vec<u8>,
    /// The values of its `Cookie` headers (sticky sessions read them).
    pub cookies: Vec<String>,
    /// The protocol an `Upgrade` request asks for (`websocket`…): its
    /// `Connection: upgrade` and `Upgrade` headers are forwarded, and a
    /// `101` answer turns the connection into a byte tunnel.
    pub upgrade: Option<String>,
}

/// A parsed response head and the head to send to the client.
#[derive(Debug, Clone)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// A 1xx interim answer (e.g. 100 Continue): forward it and wait for
    /// the final one.
    pub interim: bool,
    /// How the response body is framed.
    pub body: BodyKind,
    /// The backend keeps the connection open after this response.
    pub backend_keep_alive: bool,
    /// The client connection must close after this response.
    pub close_client: bool,
    /// Bytes of the head in the input.
    pub head_len: usize,
    /// The head to send to the client.
    pub forwarded: Vec<u8>,
    /// A `101 Switching Protocols` to an upgrade request: after this head
    /// the connection carries the new protocol's bytes both ways.
    pub upgraded: bool,
}

fn eq(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// Comma-separated tokens of a header value, trimmed, lowercased.
fn tokens(value: &[u8]) -> impl Iterator<Item = String> + '_ {
    value
        .split(|&b| b == b',')
        .map(|t| String::from_utf8_lossy(t).trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
}

/// One Content-Length from all its header values (`5`, `5, 5` and two
/// equal headers are one length; anything else is refused).
fn content_length<'a>(values: impl Iterator<Item = &'a [u8]>) -> Result<Option<u64>, ()> {
    let mut length = None;
    for value in values {
        for part in value.split(|&b| b == b',') {
            let part = std::str::from_utf8(part).map_err(|_| ())?.trim();
            if part.is_empty() || part.len() > 19 || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(());
            }
            let n: u64 = part.parse().map_err(|_| ())?;
            match length {
                Some(previous) if previous != n => return Err(()),
                _ => length = Some(n),
            }
        }
    }
    Ok(length)
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) plus those the proxy rewrites.
fn is_hop_by_hop(name: &str) -> bool {
    [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "upgrade",
    ]
    .iter()
    .any(|h| eq(name, h))
}

/// `for=` / `by=` node of a Forwarded element (RFC 7239 §6): IPv6 and
/// ports need quoting.
fn forwarded_node(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("\"[{v6}]\""),
    }
}

/// Parses a request head at the start of `input`. `Ok(None)`: incomplete.
pub fn parse_request(input: &[u8], info: &ForwardInfo) -> Result<Option<Request>, RequestError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(input) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(RequestError::TooManyHeaders),
        Err(e) => return Err(RequestError::Malformed(e)),
    };
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(RequestError::Malformed(httparse::Error::Token));
    };
    let headers = req.headers;
    let get = |name: &'static str| headers.iter().filter(move |h| eq(h.name, name));

    // Host: exactly one for HTTP/1.1; an absolute-form target overrides it.
    let hosts: Vec<&[u8]> = get("host").map(|h| h.value).collect();
    let absolute_authority = target
        .strip_prefix("http://")
        .map(|rest| rest.split('/').next().unwrap_or(rest).to_owned());
    let host = match (hosts.as_slice(), absolute_authority) {
        ([_, _, ..], _) => return Err(RequestError::BadHost),
        (_, Some(authority)) => authority,
        ([one], None) => String::from_utf8_lossy(one).trim().to_owned(),
        ([], None) if version == 0 => String::new(),
        ([], None) => return Err(RequestError::BadHost),
    };

    let connection: Vec<String> = get("connection").flat_map(|h| tokens(h.value)).collect();
    let upgrade = if connection.iter().any(|t| t == "upgrade") {
        get("upgrade")
            .next()
            .map(|h| String::from_utf8_lossy(h.value).trim().to_owned())
            .filter(|u| !u.is_empty())
    } else {
        None
    };
    let keep_alive = if version == 1 {
        !connection.iter().any(|t| t == "close")
    } else {
        // HTTP/1.0 clients are served one request per connection.
        false
    };
    let transfer_encodings: Vec<String> = get("transfer-encoding")
        .flat_map(|h| tokens(h.value))
        .collect();
    let length = content_length(get("content-length").map(|h| h.value))
        .map_err(|_| RequestError::BadContentLength)?;
    let body = match (transfer_encodings.last(), length) {
        (Some(_), Some(_)) => return Err(RequestError::ConflictingFraming),
        (Some(last), None) if last == "chunked" && version == 1 => BodyKind::Chunked,
        (Some(_), None) => return Err(RequestError::UnsupportedTransferEncoding),
        (None, Some(n)) => BodyKind::Length(n),
        (None, None) => BodyKind::Empty,
    };
    if upgrade.is_some() && (version == 0 || body != BodyKind::Empty) {
        return Err(RequestError::Upgrade);
    }
    let cookies: Vec<String> = get("cookie")
        .map(|h| String::from_utf8_lossy(h.value).into_owned())
        .collect();
    let expect_continue =
        version == 1 && get("expect").any(|h| h.value.eq_ignore_ascii_case(b"100-continue"));

    let mut out = Vec::with_capacity(head_len + 192);
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(if version == 1 {
        b" HTTP/1.1\r\n"
    } else {
        b" HTTP/1.0\r\n"
    });
    let mut xff = String::new();
    let mut forwarded = String::new();
    for h in headers.iter() {
        let lower = h.name.to_ascii_lowercase();
        if is_hop_by_hop(&lower)
            || (connection.contains(&lower)
                && !matches!(
                    lower.as_str(),
                    "host" | "content-length" | "transfer-encoding"
                ))
        {
            continue;
        }
        match lower.as_str() {
            "x-forwarded-for" => {
                push_list(&mut xff, h.value);
                continue;
            }
            "forwarded" => {
                push_list(&mut forwarded, h.value);
                continue;
            }
            // Ours replace whatever the client claimed.
            "x-forwarded-proto" | "x-forwarded-port" => continue,
            "expect" if version == 0 => continue,
            // One value however the client repeated it (`5, 5`, or two
            // headers): RFC 9112 §6.3 — sent once below.
            "content-length" => continue,
            _ => {}
        }
        out.extend_from_slice(h.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    if let Some(n) = length {
        let _ = write!(HeadWriter(&mut out), "Content-Length: {n}\r\n");
    }
    let client_ip = info.client.ip().to_canonical();
    let scheme = if info.tls { "https" } else { "http" };
    if !xff.is_empty() {
        xff.push_str(", ");
    }
    let _ = write!(xff, "{client_ip}");
    if !forwarded.is_empty() {
        forwarded.push_str(", ");
    }
    let _ = write!(
        forwarded,
        "for={};by={};proto={}",
        forwarded_node(client_ip),
        forwarded_node(info.listener.ip()),
        scheme
    );
    let _ = write!(
        HeadWriter(&mut out),
        "X-Forwarded-For: {xff}\r\nX-Forwarded-Proto: {scheme}\r\nX-Forwarded-Port: {}\r\nForwarded: {forwarded}\r\n",
        info.listener.port()
    );
    if let Some(protocol) = &upgrade {
        // Hop-by-hop, so removed above; an upgrade needs them on this hop.
        // `close` kept beside it, so the backend reads the same
        // keep-alive as the proxy did.
        let close = if keep_alive { "" } else { ", close" };
        let _ = write!(
            HeadWriter(&mut out),
            "Connection: upgrade{close}\r\nUpgrade: {protocol}\r\n"
        );
    } else if !keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(Some(Request {
        method: method.to_owned(),
        target: target.to_owned(),
        version,
        host,
        body,
        keep_alive,
        expect_continue,
        head_len,
        forwarded: out,
        cookies,
        upgrade,
    }))
}

fn push_list(list: &mut String, value: &[u8]) {
    let value = String::from_utf8_lossy(value);
    let value = value.trim();
    if value.is_empty() {
        return;
    }
    if !list.is_empty() {
        list.push_str(", ");
    }
    list.push_str(value);
}

/// `fmt::Write` into a byte vector.
struct HeadWriter<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for HeadWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// Parses a response head at the start of `input` for a request with
/// `method`. `client_keep_alive` says whether the client connection may be
/// kept. `Ok(None)`: incomplete.
pub fn parse_response(
    input: &[u8],
    method: &str,
    client_keep_alive: bool,
) -> Result<Option<Response>, ResponseError> {
    parse_response_to(input, method, client_keep_alive, false)
}

/// [`parse_response`] for a request that asked for an upgrade (or not):
/// a `101` to an upgrade request is the switch, forwarded with its
/// `Connection` and `Upgrade` headers; a `101` to any other request is
/// refused.
pub fn parse_response_to(
    input: &[u8],
    method: &str,
    client_keep_alive: bool,
    upgrade_requested: bool,
) -> Result<Option<Response>, ResponseError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut headers);
    let head_len = match res.parse(input) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(ResponseError::Malformed(e)),
    };
    let (Some(status), Some(version)) = (res.code, res.version) else {
        return Err(ResponseError::Malformed(httparse::Error::Status));
    };
    if status == 101 && !upgrade_requested {
        return Err(ResponseError::UnexpectedUpgrade);
    }
    if status == 101 {
        let mut out = Vec::with_capacity(head_len + 32);
        let _ = write!(
            HeadWriter(&mut out),
            "HTTP/1.1 101 {}\r\n",
            res.reason.unwrap_or("Switching Protocols")
        );
        for h in res.headers.iter() {
            let lower = h.name.to_ascii_lowercase();
            if lower == "connection" || lower == "keep-alive" || lower == "proxy-connection" {
                continue;
            }
            out.extend_from_slice(h.name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(h.value);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"Connection: upgrade\r\n\r\n");
        return Ok(Some(Response {
            status,
            interim: false,
            body: BodyKind::UntilClose,
            backend_keep_alive: false,
            close_client: true,
            head_len,
            forwarded: out,
            upgraded: true,
        }));
    }
    if (100..200).contains(&status) {
        return Ok(Some(Response {
            status,
            interim: true,
            body: BodyKind::Empty,
            backend_keep_alive: true,
            close_client: false,
            head_len,
            forwarded: input[..head_len].to_vec(),
            upgraded: false,
        }));
    }
    let headers = res.headers;
    let get = |name: &'static str| headers.iter().filter(move |h| eq(h.name, name));
    let connection: Vec<String> = get("connection").flat_map(|h| tokens(h.value)).collect();
    let backend_keep_alive = if version == 1 {
        !connection.iter().any(|t| t == "close")
    } else {
        connection.iter().any(|t| t == "keep-alive")
    };
    let transfer_encodings: Vec<String> = get("transfer-encoding")
        .flat_map(|h| tokens(h.value))
        .collect();
    let body = if method.eq_ignore_ascii_case("HEAD") || status == 204 || status == 304 {
        BodyKind::Empty
    } else if let Some(last) = transfer_encodings.last() {
        if last == "chunked" {
            BodyKind::Chunked
        } else {
            BodyKind::UntilClose
        }
    } else {
        match content_length(get("content-length").map(|h| h.value)) {
            Ok(Some(n)) => BodyKind::Length(n),
            Ok(None) => BodyKind::UntilClose,
            Err(()) => return Err(ResponseError::BadContentLength),
        }
    };
    let close_client = !client_keep_alive || body == BodyKind::UntilClose;
    // A valid Content-Length (repeated or not) is sent as one value
    // (RFC 9112 §6.3); an invalid one on a body-less or chunked answer is
    // passed as it came, since it frames nothing here.
    let single_length = content_length(get("content-length").map(|h| h.value))
        .ok()
        .flatten();
    let mut out = Vec::with_capacity(head_len + 32);
    let _ = write!(
        HeadWriter(&mut out),
        "HTTP/1.1 {status} {}\r\n",
        res.reason.unwrap_or("")
    );
    for h in headers.iter() {
        let lower = h.name.to_ascii_lowercase();
        if is_hop_by_hop(&lower)
            || (connection.contains(&lower)
                && !matches!(
                    lower.as_str(),
                    "host" | "content-length" | "transfer-encoding"
                ))
        {
            continue;
        }
        if lower == "content-length" && single_length.is_some() {
            continue;
        }
        out.extend_from_slice(h.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    if let Some(n) = single_length {
        let _ = write!(HeadWriter(&mut out), "Content-Length: {n}\r\n");
    }
    if close_client {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(Some(Response {
        status,
        interim: false,
        body,
        backend_keep_alive: backend_keep_alive && body != BodyKind::UntilClose,
        close_client,
        head_len,
        forwarded: out,
        upgraded: false,
    }))
}

#[cfg(test)]
mod tests;
