//! Inputs found by the `http_request` fuzz target (`fuzz/`, see "Fuzzing"
//! in `doc/testing.md`), kept as ordinary tests.
//!
//! Found 2026-11-29: a header named in `Connection` was stripped from the
//! forwarded head even when it was `Host`, `Content-Length` or
//! `Transfer-Encoding`. The proxy routed and framed the message with those
//! headers and the backend received it without them: another host (or
//! none), and a body the backend would read as the next request (request
//! smuggling). Those three are now always forwarded.

use std::net::SocketAddr;

use sozu_lib::protocol::http::body::BodyKind;
use sozu_lib::protocol::http::head::{parse_request, parse_response, ForwardInfo};

fn info() -> ForwardInfo {
    ForwardInfo {
        client: SocketAddr::from(([192, 0, 2, 7], 40_000)),
        listener: SocketAddr::from(([127, 0, 0, 1], 8080)),
        tls: false,
    }
}

fn forwarded_request(head: &str) -> (sozu_lib::protocol::http::head::Request, String) {
    let request = parse_request(head.as_bytes(), &info())
        .expect("a valid head")
        .expect("a complete head");
    let text = String::from_utf8(request.forwarded.clone()).unwrap();
    (request, text)
}

#[test]
fn a_host_named_in_connection_still_reaches_the_backend() {
    let (request, text) =
        forwarded_request("GET /x HTTP/1.1\r\nConnection: close, host\r\nHost: a\r\n\r\n");
    assert_eq!(request.host, "a");
    assert!(text.contains("\r\nHost: a\r\n"), "{text}");
    let again = parse_request(&request.forwarded, &info()).unwrap().unwrap();
    assert_eq!(again.host, "a");
}

#[test]
fn a_content_length_named_in_connection_keeps_framing_the_body_for_the_backend() {
    let (request, text) = forwarded_request(
        "POST /x HTTP/1.1\r\nHost: a\r\nConnection: content-length\r\nContent-Length: 5\r\n\r\n",
    );
    assert_eq!(request.body, BodyKind::Length(5));
    assert!(text.contains("\r\nContent-Length: 5\r\n"), "{text}");
    let again = parse_request(&request.forwarded, &info()).unwrap().unwrap();
    assert_eq!(
        again.body,
        BodyKind::Length(5),
        "the backend would read the body as a request"
    );
}

#[test]
fn a_transfer_encoding_named_in_connection_keeps_framing_the_body_for_the_backend() {
    let (request, text) = forwarded_request(
        "POST /x HTTP/1.1\r\nHost: a\r\nConnection: transfer-encoding\r\nTransfer-Encoding: chunked\r\n\r\n",
    );
    assert_eq!(request.body, BodyKind::Chunked);
    assert!(
        text.contains("\r\nTransfer-Encoding: chunked\r\n"),
        "{text}"
    );
    let again = parse_request(&request.forwarded, &info()).unwrap().unwrap();
    assert_eq!(again.body, BodyKind::Chunked);
}

#[test]
fn a_response_content_length_named_in_connection_reaches_the_client() {
    let head = b"HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 2\r\n\r\n";
    let response = parse_response(head, "GET", true).unwrap().unwrap();
    assert_eq!(response.body, BodyKind::Length(2));
    let text = String::from_utf8(response.forwarded).unwrap();
    assert!(text.contains("\r\nContent-Length: 2\r\n"), "{text}");
}
