//! Request and response head rules, without sockets.

use super::*;

fn info() -> ForwardInfo {
    ForwardInfo {
        client: "192.0.2.7:40000".parse().unwrap(),
        listener: "198.51.100.1:8080".parse().unwrap(),
        tls: false,
    }
}

fn req(input: &str) -> Result<Option<Request>, RequestError> {
    parse_request(input.as_bytes(), &info())
}

fn headers_of(head: &[u8]) -> Vec<(String, String)> {
    let text = std::str::from_utf8(head).unwrap();
    text.split("\r\n")
        .skip(1)
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (n, v) = l.split_once(": ").unwrap();
            (n.to_owned(), v.to_owned())
        })
        .collect()
}

fn header<'a>(h: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    h.iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

#[test]
fn partial_heads_ask_for_more() {
    assert!(req("GET / HTTP/1.1\r\nHost: a").unwrap().is_none());
}

#[test]
fn a_simple_request_gets_forwarding_headers_and_loses_hop_by_hop_ones() {
    let r = req("GET /x?y HTTP/1.1\r\nHost: example.com\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: 5\r\nAccept: */*\r\nX-Forwarded-Proto: https\r\n\r\nNEXT")
        .unwrap()
        .unwrap();
    assert_eq!(r.method, "GET");
    assert_eq!(r.target, "/x?y");
    assert_eq!(r.host, "example.com");
    assert_eq!(r.body, BodyKind::Empty);
    assert!(r.keep_alive);
    assert_eq!(r.head_len, r.head_len.min(200));
    assert!(r.forwarded.starts_with(b"GET /x?y HTTP/1.1\r\n"));
    assert!(r.forwarded.ends_with(b"\r\n\r\n"));
    let h = headers_of(&r.forwarded);
    assert_eq!(header(&h, "host"), ["example.com"]);
    assert_eq!(header(&h, "accept"), ["*/*"]);
    assert!(header(&h, "connection").is_empty());
    assert!(header(&h, "keep-alive").is_empty());
    assert!(
        header(&h, "x-secret").is_empty(),
        "named in Connection: hop-by-hop"
    );
    assert_eq!(header(&h, "x-forwarded-for"), ["192.0.2.7"]);
    assert_eq!(header(&h, "x-forwarded-proto"), ["http"]);
    assert_eq!(header(&h, "x-forwarded-port"), ["8080"]);
    assert_eq!(
        header(&h, "forwarded"),
        ["for=192.0.2.7;by=198.51.100.1;proto=http"]
    );
}

#[test]
fn existing_forwarding_chains_are_extended() {
    let r = req("GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-For: 10.0.0.2\r\nForwarded: for=10.0.0.1\r\n\r\n")
        .unwrap()
        .unwrap();
    let h = headers_of(&r.forwarded);
    assert_eq!(
        header(&h, "x-forwarded-for"),
        ["10.0.0.1, 10.0.0.2, 192.0.2.7"]
    );
    assert_eq!(
        header(&h, "forwarded"),
        ["for=10.0.0.1, for=192.0.2.7;by=198.51.100.1;proto=http"]
    );
}

#[test]
fn ipv6_clients_are_quoted_in_forwarded() {
    let info = ForwardInfo {
        client: "[2001:db8::1]:5".parse().unwrap(),
        listener: "[::1]:80".parse().unwrap(),
        tls: false,
    };
    let r = parse_request(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", &info)
        .unwrap()
        .unwrap();
    let h = headers_of(&r.forwarded);
    assert_eq!(header(&h, "x-forwarded-for"), ["2001:db8::1"]);
    assert_eq!(
        header(&h, "forwarded"),
        ["for=\"[2001:db8::1]\";by=\"[::1]\";proto=http"]
    );
}

#[test]
fn framing_is_decided_or_refused() {
    let cl = req("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n")
        .unwrap()
        .unwrap();
    assert_eq!(cl.body, BodyKind::Length(10));
    let same =
        req("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3, 3\r\nContent-Length: 3\r\n\r\n")
            .unwrap()
            .unwrap();
    assert_eq!(same.body, BodyKind::Length(3));
    let te = req("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n")
        .unwrap()
        .unwrap();
    assert_eq!(te.body, BodyKind::Chunked);
    let cases = [
        (
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            RequestError::BadContentLength,
        ),
        (
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n",
            RequestError::BadContentLength,
        ),
        (
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            RequestError::ConflictingFraming,
        ),
        (
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            RequestError::UnsupportedTransferEncoding,
        ),
        ("GET / HTTP/1.1\r\n\r\n", RequestError::BadHost),
        (
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            RequestError::BadHost,
        ),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nContent-Length: 2\r\n\r\n",
            RequestError::Upgrade,
        ),
    ];
    for (input, expected) in cases {
        assert_eq!(req(input).unwrap_err(), expected, "{input:?}");
    }
    assert!(matches!(
        req("GARBAGE\r\n\r\n"),
        Err(RequestError::Malformed(_))
    ));
    assert!(matches!(
        req("GET / HTTP/1.1\r\nBad Header\r\n\r\n"),
        Err(RequestError::Malformed(_))
    ));
    assert_eq!(RequestError::BadHost.status(), 400);
    assert_eq!(RequestError::TooManyHeaders.status(), 431);
}

#[test]
fn too_many_headers_is_431() {
    let mut input = String::from("GET / HTTP/1.1\r\nHost: h\r\n");
    for i in 0..MAX_HEADERS {
        input.push_str(&format!("X-{i}: v\r\n"));
    }
    input.push_str("\r\n");
    assert_eq!(req(&input).unwrap_err(), RequestError::TooManyHeaders);
}

#[test]
fn connection_close_and_http10_are_not_kept_alive() {
    let close = req("GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        .unwrap()
        .unwrap();
    assert!(!close.keep_alive);
    assert_eq!(
        header(&headers_of(&close.forwarded), "connection"),
        ["close"]
    );
    let old = req("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
    assert!(!old.keep_alive);
    assert_eq!(old.host, "");
    assert!(old.forwarded.starts_with(b"GET / HTTP/1.0\r\n"));
}

#[test]
fn expect_continue_is_seen_and_forwarded() {
    let r = req("PUT / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
        .unwrap()
        .unwrap();
    assert!(r.expect_continue);
    assert_eq!(
        header(&headers_of(&r.forwarded), "expect"),
        ["100-continue"]
    );
}

#[test]
fn absolute_targets_route_by_their_authority() {
    let r = req("GET http://example.com:81/p HTTP/1.1\r\nHost: other\r\n\r\n")
        .unwrap()
        .unwrap();
    assert_eq!(r.host, "example.com:81");
}

#[test]
fn response_framing_and_connection_rules() {
    let ok = parse_response(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nhi",
        "GET",
        true,
    )
    .unwrap()
    .unwrap();
    assert_eq!(ok.status, 200);
    assert_eq!(ok.body, BodyKind::Length(2));
    assert!(ok.backend_keep_alive && !ok.close_client);
    assert!(header(&headers_of(&ok.forwarded), "connection").is_empty());

    let chunked = parse_response(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        "GET",
        true,
    )
    .unwrap()
    .unwrap();
    assert_eq!(chunked.body, BodyKind::Chunked);
    assert_eq!(
        header(&headers_of(&chunked.forwarded), "transfer-encoding"),
        ["chunked"]
    );

    let until_close = parse_response(b"HTTP/1.1 200 OK\r\n\r\n", "GET", true)
        .unwrap()
        .unwrap();
    assert_eq!(until_close.body, BodyKind::UntilClose);
    assert!(until_close.close_client && !until_close.backend_keep_alive);
    assert_eq!(
        header(&headers_of(&until_close.forwarded), "connection"),
        ["close"]
    );

    let head = parse_response(
        b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n",
        "HEAD",
        true,
    )
    .unwrap()
    .unwrap();
    assert_eq!(head.body, BodyKind::Empty);
    let no_content = parse_response(b"HTTP/1.1 204 No Content\r\n\r\n", "GET", true)
        .unwrap()
        .unwrap();
    assert_eq!(no_content.body, BodyKind::Empty);

    let backend_close = parse_response(
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        "GET",
        true,
    )
    .unwrap()
    .unwrap();
    assert!(!backend_close.backend_keep_alive && !backend_close.close_client);

    let client_close = parse_response(
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        "GET",
        false,
    )
    .unwrap()
    .unwrap();
    assert!(client_close.close_client);

    let interim = parse_response(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200", "PUT", true)
        .unwrap()
        .unwrap();
    assert!(interim.interim);
    assert_eq!(interim.forwarded, b"HTTP/1.1 100 Continue\r\n\r\n");

    assert_eq!(
        parse_response(b"HTTP/1.1 101 Switching\r\n\r\n", "GET", true).unwrap_err(),
        ResponseError::UnexpectedUpgrade
    );
    assert_eq!(
        parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", "GET", true).unwrap_err(),
        ResponseError::BadContentLength
    );
    assert!(parse_response(b"HTTP/1.1 200 OK\r\n", "GET", true)
        .unwrap()
        .is_none());
    assert!(matches!(
        parse_response(b"NOPE\r\n\r\n", "GET", true),
        Err(ResponseError::Malformed(_))
    ));
}

/// Whatever a peer sends, parsing answers (complete, partial or refused)
/// without panicking, and a complete head never claims more bytes than
/// it was given.
#[test]
fn arbitrary_bytes_never_panic_the_head_parsers() {
    use quickcheck::{QuickCheck, TestResult};
    fn prop(prefix: u8, noise: Vec<u8>) -> TestResult {
        let starts: [&[u8]; 4] = [
            b"",
            b"GET / HTTP/1.1\r\nHost: h\r\n",
            b"POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: ",
            b"HTTP/1.1 200 OK\r\nContent-Length: ",
        ];
        let mut input = starts[usize::from(prefix) % starts.len()].to_vec();
        input.extend_from_slice(&noise);
        input.extend_from_slice(b"\r\n\r\n");
        if let Ok(Some(r)) = parse_request(&input, &info()) {
            if r.head_len > input.len() {
                return TestResult::failed();
            }
        }
        for method in ["GET", "HEAD"] {
            if let Ok(Some(r)) = parse_response(&input, method, true) {
                if r.head_len > input.len() {
                    return TestResult::failed();
                }
            }
        }
        TestResult::passed()
    }
    QuickCheck::new()
        .tests(2000)
        .quickcheck(prop as fn(u8, Vec<u8>) -> TestResult);
}

/// RFC 9112 §6.3: a repeated Content-Length (`5, 5`, or two headers) is
/// forwarded as one value, in requests and responses; differing values are
/// refused (`framing_is_decided_or_refused`).
#[test]
fn a_repeated_content_length_is_forwarded_once() {
    let r = req("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 5\r\nContent-Length: 5\r\n\r\n")
        .unwrap()
        .unwrap();
    assert_eq!(r.body, BodyKind::Length(5));
    assert_eq!(header(&headers_of(&r.forwarded), "content-length"), ["5"]);

    let plain = req("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 7\r\n\r\n")
        .unwrap()
        .unwrap();
    assert_eq!(
        header(&headers_of(&plain.forwarded), "content-length"),
        ["7"]
    );
    let none = req("GET / HTTP/1.1\r\nHost: h\r\n\r\n").unwrap().unwrap();
    assert!(header(&headers_of(&none.forwarded), "content-length").is_empty());

    let res = parse_response(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nhi",
        "GET",
        true,
    )
    .unwrap()
    .unwrap();
    assert_eq!(res.body, BodyKind::Length(2));
    assert_eq!(header(&headers_of(&res.forwarded), "content-length"), ["2"]);
}

#[test]
fn a_tls_client_is_forwarded_as_https() {
    let info = ForwardInfo {
        tls: true,
        ..info()
    };
    let r = parse_request(
        b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-Proto: http\r\n\r\n",
        &info,
    )
    .unwrap()
    .unwrap();
    let head = String::from_utf8(r.forwarded).unwrap();
    assert!(head.contains("X-Forwarded-Proto: https\r\n"), "{head}");
    assert!(!head.contains("X-Forwarded-Proto: http\r\n"), "{head}");
    assert!(head.contains(";proto=https"), "{head}");
}

#[test]
fn an_upgrade_request_keeps_its_upgrade_headers_and_a_101_switches() {
    let r = req("GET /chat HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: k\r\nCookie: a=1\r\n\r\n")
        .unwrap()
        .unwrap();
    assert_eq!(r.upgrade.as_deref(), Some("websocket"));
    assert_eq!(r.cookies, vec!["a=1".to_owned()]);
    let head = String::from_utf8(r.forwarded).unwrap();
    assert!(
        head.contains("\r\nConnection: upgrade\r\nUpgrade: websocket\r\n"),
        "{head}"
    );
    assert!(head.contains("Sec-WebSocket-Key: k\r\n"), "{head}");
    // Re-read by the backend, the head means the same: upgrade, keep-alive.
    let closing = req(
        "GET / HTTP/1.1\r\nHost: a\r\nConnection: close, Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .unwrap()
    .unwrap();
    let again = parse_request(&closing.forwarded, &info()).unwrap().unwrap();
    assert_eq!(again.upgrade.as_deref(), Some("websocket"));
    assert_eq!(again.keep_alive, closing.keep_alive);
    assert!(!again.keep_alive);
    // An Upgrade header without `Connection: upgrade` asks for nothing.
    let plain = req("GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n")
        .unwrap()
        .unwrap();
    assert_eq!(plain.upgrade, None);

    let switched = parse_response_to(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: x\r\n\r\nframe",
        "GET",
        true,
        true,
    )
    .unwrap()
    .unwrap();
    assert!(switched.upgraded && !switched.interim);
    assert_eq!(switched.body, BodyKind::UntilClose);
    let head = String::from_utf8(switched.forwarded).unwrap();
    assert!(
        head.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
        "{head}"
    );
    assert!(head.contains("Upgrade: websocket\r\n"), "{head}");
    assert!(head.ends_with("Connection: upgrade\r\n\r\n"), "{head}");
    // A refusal (no 101) is an ordinary response.
    let refused = parse_response_to(
        b"HTTP/1.1 400 No\r\nContent-Length: 0\r\n\r\n",
        "GET",
        true,
        true,
    )
    .unwrap()
    .unwrap();
    assert!(!refused.upgraded);
}
