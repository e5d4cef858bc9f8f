//! HTTP proxy on loopback: routing, keep-alive reuse, 10 MB chunked
//! bodies both ways, default answers (400, 404, 503, 504), forwarding
//! headers, `Expect: 100-continue`, `Connection: close`, idle timeout and
//! soft-stop. Runs the proxy in the small loop of `tcp_support`.

#[macro_use]
mod tcp_support;

use std::io::Write;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tcp_support::http_backend::*;
use tcp_support::*;

#[test]
fn hosts_and_paths_route_to_their_clusters() {
    let (a, b, w) = (http_backend("a"), http_backend("b"), http_backend("w"));
    let lp = LoopHandle::start();
    lp.cluster("a", &[a.address], None);
    lp.cluster("b", &[b.address], None);
    lp.cluster("w", &[w.address], None);
    let front = lp.http_listener(30, 30);
    lp.http_route(front, "example.com", "/", "a");
    lp.http_route(front, "example.com", "/api", "b");
    lp.http_route(front, "*.example.com", "/", "w");
    let (mut s, mut r) = http_client(front);
    let cases = [
        ("example.com", "/", "backend=a"),
        ("example.com:8080", "/index.html", "backend=a"),
        ("EXAMPLE.com", "/api/users?x=1", "backend=b"),
        ("www.example.com", "/api", "backend=w"),
    ];
    for (host, path, expected) in cases {
        let m = get(&mut s, &mut r, host, path).unwrap();
        assert_eq!(m.status, 200, "{host}{path}");
        assert!(m.text().starts_with(expected), "{host}{path}: {}", m.text());
    }
    let m = get(&mut s, &mut r, "other.org", "/").unwrap();
    assert_eq!(m.status, 404);
    lp.stop();
}

#[test]
fn keep_alive_reuses_one_backend_connection() {
    let a = http_backend("a");
    let lp = LoopHandle::start();
    lp.cluster("a", &[a.address], None);
    let front = lp.http_listener(30, 30);
    lp.http_route(front, "h", "/", "a");
    let (mut s, mut r) = http_client(front);
    for i in 0..5 {
        let m = get(&mut s, &mut r, "h", &format!("/r{i}")).unwrap();
        assert_eq!(m.status, 200);
        assert!(m.text().contains(&format!("path=/r{i}")));
        assert_eq!(m.header("connection"), None, "kept alive");
    }
    assert_eq!(a.connections.load(Ordering::SeqCst), 1);
    assert_eq!(lp.apply(|l| l.http.active_sessions()), 1);
    assert_eq!(lp.apply(|l| cluster_count(l, "a", "http.requests")), 5);
    assert_eq!(lp.apply(|l| cluster_count(l, "a", "http.status.2xx")), 5);
    lp.stop();
}

#[test]
fn forwarding_headers_reach_the_backend() {
    let a = http_backend("a");
    let lp = LoopHandle::start();
    lp.cluster("a", &[a.address], None);
    let front = lp.http_listener(30, 30);
    lp.http_route(front, "h", "/", "a");
    let (mut s, mut r) = http_client(front);
    write!(s, "GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 10.1.1.1\r\nX-Forwarded-Proto: https\r\n\r\n").unwrap();
    let m = read_response(&mut r).unwrap();
    let text = m.text();
    assert!(text.contains("xff=10.1.1.1, 127.0.0.1 "), "{text}");
    assert!(text.contains("proto=http "), "{text}");
    assert!(
        text.contains("forwarded=for=127.0.0.1;by=127.0.0.1;proto=http"),
        "{text}"
    );
    lp.stop();
}

#[test]
fn ten_megabyte_chunked_upload_and_download_are_intact() {
    let a = http_backend("a");
    let lp = LoopHandle::start();
    lp.cluster("a", &[a.address], None);
    let front = lp.http_listener(30, 30);
    lp.http_route(front, "h", "/", "a");
    let (mut s, mut r) = http_client(front);
    let data = payload(10 << 20, 5);
    let mut writer = s.try_clone().unwrap();
    let upload = data.clone();
    let t = std::thread::spawn(move || {
        write!(
            writer,
            "POST /upload HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        .unwrap();
        for part in upload.chunks(100_000) {
            write!(writer, "{:x}\r\n", part.len()).unwrap();
            writer.write_all(part).unwrap();
            writer.write_all(b"\r\n").unwrap();
        }
        writer.write_all(b"0\r\n\r\n").unwrap();
    });
    let m = read_response(&mut r).unwrap();
    t.join().unwrap();
    assert_eq!(m.status, 200);
    assert_eq!(m.text(), upload_answer(&data));

    let m = get(&mut s, &mut r, "h", &format!("/download/{}", 10 << 20)).unwrap();
    assert_eq!(m.status, 200);
    assert_eq!(m.header("transfer-encoding"), Some("chunked"));
    assert_eq!(m.body.len(), 10 << 20);
    assert!(m.body == payload(10 << 20, 9), "downloaded bytes differ");
    // Same connection, same backend connection throughout.
    assert_eq!(a.connections.load(Ordering::SeqCst), 1);
    lp.stop();
}

#[test]
fn sized_upload_with_expect_continue_gets_the_interim_answer() {
    let a = http_backend("a");
    let lp = LoopHandle::start();
    lp.cluster("a", &[a.address], None);
    let front = lp.http_listener(30, 30);
    lp.http_route(front, "h", "/", "a");
    let (mut s, mut r) = http_client(front);
    let data = payload(300_000, 1);
    write!(
        s,
        "PUT /upload HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        data.len()
    )
    .unwrap();
    let interim = read_response(&mut r).unwrap();
    assert_eq!(interim.status, 100);
    s.write_all(&data).unwrap();
    let m = read_response(&mut r).unwrap();
    assert_eq!(m.status, 200);
    assert_eq!(m.text(), upload_answer(&data));
    lp.stop();
}

#[test]
fn backend_down_answers_503_then_a_live_backend_serves() {
    let live = http_backend("live");
    let lp = LoopHandle::start();
    lp.cluster("c", &[dead_address()], None);
    let front = lp.http_listener(30, 30);
    lp.http_route(front, "h", "/", "c");
    let (mut s, mut r) = http_client(front);
    let m = get(&mut s, &mut r, "h", "/").unwrap();
    assert_eq!(m.status, 503);
    assert_eq!(m.header("connection"), Some("close"));
    let address = live.address;
    lp.apply(move |l| {
        l.backends.add_backend("c", "live".into(), address, 100);
        l.backends.remove_backend("c", "b0").unwrap();
    });
    let (mut s, mut r) = http_client(front);
    let m = get(&mut s, &mut r, "h", "/").unwrap();
    assert_eq!(m.status, 200);
    assert!(m.text().starts_with("backend=live"));
    assert_eq!(lp.apply(|l| cluster_count(l, "c", "http.status.5xx")), 1);
    lp.stop();
}

#[test]
fn a_dead_backend_beside_a_live_one_is_retried_transparently() {
    let live = http_backend("live");
    let lp = LoopHandle::start();
    lp.cluster("c", &[dead_address(), live.address], None);
    let front = lp.http_listener(30, 30);
    lp.http_route(front, "h", "/", "c");
    for _ in 0..4 {
        let (mut s, mut r) = http_client(front);
        write!(s, "GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n").unwrap();
        let m = read_response(&mut r).unwrap();
        assert_eq!(m.status, 200);
        assert_eq!(m.header("connection"), Some("close"));
        assert!(read_response(&mut r).is_none(), "closed after the answer");
    }
    lp.stop();
}

#[test]
fn malformed_requests_get_400_and_the_proxy_keeps_serving() {
    let a = http_backend("a");
    let lp = LoopHandle::start();
    lp.cluster("a", &[a.address], None);
    let front = lp.http_listener(30, 30);
    lp.http_route(front, "h", "/", "a");
    for garbage in [
        &b"NOT HTTP AT ALL\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ] {
        let (mut s, mut r) = http_client(front);
        s.write_all(garbage).unwrap();
        let m = read_response(&mut r).unwrap();
        assert_eq!(m.status, 400, "{:?}", String::from_utf8_lossy(garbage));
    }
    // An oversized head is refused too.
    let (mut s, mut r) = http_client(front);
    let big = format!(
        "GET / HTTP/1.1\r\nHost: h\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let _ = s.write_all(big.as_bytes());
    assert_eq!(read_response(&mut r).unwrap().status, 431);
    let (mut s, mut r) = http_client(front);
    assert_eq!(get(&mut s, &mut r, "h", "/").unwrap().status, 200);
    lp.stop();
}

#[test]
fn a_silent_backend_gets_504() {
    let a = http_backend("a");
    let lp = LoopHandle::start();
    lp.cluster("a", &[a.address], None);
    let front = lp.http_listener(30, 1);
    lp.http_route(front, "h", "/", "a");
    let (mut s, mut r) = http_client(front);
    let m = get(&mut s, &mut r, "h", "/never").unwrap();
    assert_eq!(m.status, 504);
    lp.stop();
}

#[test]
fn an_idle_keep_alive_client_is_closed_by_the_front_timeout() {
    let a = http_backend("a");
    let lp = LoopHandle::start();
    lp.cluster("a", &[a.address], None);
    let front = lp.http_listener(1, 30);
    lp.http_route(front, "h", "/", "a");
    let (mut s, mut r) = http_client(front);
    assert_eq!(get(&mut s, &mut r, "h", "/").unwrap().status, 200);
    // Then silence: the proxy closes the connection (EOF, no answer).
    assert!(read_response(&mut r).is_none());
    assert_eq!(lp.apply(|l| l.http.active_sessions()), 0);
    lp.stop();
}

#[test]
fn soft_stop_lets_an_in_flight_request_finish() {
    let a = http_backend("a");
    let lp = LoopHandle::start();
    lp.cluster("a", &[a.address], None);
    let front = lp.http_listener(30, 30);
    lp.http_route(front, "h", "/", "a");
    let (mut idle, mut idle_r) = http_client(front);
    assert_eq!(get(&mut idle, &mut idle_r, "h", "/").unwrap().status, 200);
    let (mut s, mut r) = http_client(front);
    write!(s, "GET /hold HTTP/1.1\r\nHost: h\r\n\r\n").unwrap();
    a.held
        .lock()
        .unwrap()
        .recv_timeout(Duration::from_secs(10))
        .expect("the request reached the backend");
    lp.apply(|l| {
        let t = now();
        l.http.soft_stop(t, &mut ctx!(l));
    });
    // The idle keep-alive connection is closed, new connections refused.
    assert!(read_response(&mut idle_r).is_none());
    assert!(std::net::TcpStream::connect(front).is_err());
    assert!(!lp.apply(|l| l.http.is_drained()));
    a.release.send(()).unwrap();
    let m = read_response(&mut r).unwrap();
    assert_eq!(m.status, 200);
    assert_eq!(m.text(), "released");
    assert_eq!(m.header("connection"), Some("close"));
    assert!(read_response(&mut r).is_none());
    // Bounded wait for the loop to notice the client's close.
    let mut drained = false;
    for _ in 0..200 {
        if lp.apply(|l| l.http.is_drained()) {
            drained = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(drained);
    lp.stop();
}

/// A backend that answers the first request of each connection (without
/// saying it will close), then closes the connection when the next request
/// arrives, as a backend whose keep-alive timeout just expired would.
fn one_answer_per_connection_backend() -> std::net::SocketAddr {
    use std::io::{BufRead, BufReader};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                stream
                    .set_read_timeout(Some(Duration::from_secs(10)))
                    .unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                for request in 0.. {
                    let mut line = String::new();
                    // Read one head.
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                    }
                    if request > 0 {
                        return; // close without answering
                    }
                    let body = format!("connection {n}");
                    write!(
                        stream,
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    )
                    .unwrap();
                }
            });
        }
    });
    address
}

#[test]
fn a_kept_backend_connection_closed_by_the_backend_is_retried_once() {
    let lp = LoopHandle::start();
    lp.cluster("c", &[one_answer_per_connection_backend()], None);
    let front = lp.http_listener(30, 30);
    lp.http_route(front, "h", "/", "c");
    let (mut s, mut r) = http_client(front);
    for i in 0..3 {
        let m = get(&mut s, &mut r, "h", "/").unwrap();
        assert_eq!(m.status, 200, "request {i}");
        assert!(m.text().starts_with("connection "));
    }
    lp.stop();
}

#[test]
fn a_backend_that_never_answers_the_connect_is_skipped_after_connect_timeout() {
    use sozu_command_lib::command::HttpListenerConfig;
    let live = http_backend("live");
    let (hanging, _keep) = hanging_backend();
    let lp = LoopHandle::start();
    lp.cluster("c", &[hanging, live.address], None);
    let front = lp.apply(|l| {
        let address = free_port();
        let config = HttpListenerConfig {
            address: address.into(),
            front_timeout: 30,
            back_timeout: 30,
            connect_timeout: 1,
            request_timeout: 10,
            active: true,
            ..Default::default()
        };
        l.http.add_listener(&config, &mut ctx!(l)).unwrap();
        address
    });
    lp.http_route(front, "h", "/", "c");
    let (mut s, mut r) = http_client(front);
    let m = get(&mut s, &mut r, "h", "/").unwrap();
    assert_eq!(m.status, 200);
    assert!(m.text().starts_with("backend=live"));
    assert_eq!(
        lp.apply(|l| cluster_count(l, "c", "http.connect.failed")),
        1
    );
    lp.stop();
}

#[test]
fn an_incomplete_request_head_gets_408_after_the_request_timeout() {
    use sozu_command_lib::command::HttpListenerConfig;
    let a = http_backend("a");
    let lp = LoopHandle::start();
    lp.cluster("a", &[a.address], None);
    let front = lp.apply(|l| {
        let address = free_port();
        let config = HttpListenerConfig {
            address: address.into(),
            front_timeout: 30,
            back_timeout: 30,
            connect_timeout: 3,
            request_timeout: 1,
            active: true,
            ..Default::default()
        };
        l.http.add_listener(&config, &mut ctx!(l)).unwrap();
        address
    });
    lp.http_route(front, "h", "/", "a");
    let (mut s, mut r) = http_client(front);
    s.write_all(b"GET / HTTP/1.1\r\nHost: h\r\n").unwrap();
    let m = read_response(&mut r).unwrap();
    assert_eq!(m.status, 408);
    assert!(read_response(&mut r).is_none());
    lp.stop();
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let a = http_backend("a");
    let lp = LoopHandle::start();
    lp.cluster("a", &[a.address], None);
    let front = lp.http_listener(30, 30);
    lp.http_route(front, "h", "/", "a");
    let (mut s, mut r) = http_client(front);
    let batch: String = (0..5)
        .map(|i| format!("GET /p{i} HTTP/1.1\r\nHost: h\r\n\r\n"))
        .collect();
    s.write_all(batch.as_bytes()).unwrap();
    for i in 0..5 {
        let m = read_response(&mut r).unwrap();
        assert_eq!(m.status, 200);
        assert!(m.text().contains(&format!("path=/p{i} ")), "{}", m.text());
    }
    lp.stop();
}

#[test]
fn a_response_without_length_ends_with_the_backend_close_and_closes_the_client() {
    use std::io::{BufRead, BufReader};
    let backend = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = backend.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut stream, _) = backend.accept().unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap() > 2 {
            line.clear();
        }
        stream
            .write_all(b"HTTP/1.1 200 OK\r\n\r\nstreamed until close")
            .unwrap();
    });
    let lp = LoopHandle::start();
    lp.cluster("c", &[address], None);
    let front = lp.http_listener(30, 30);
    lp.http_route(front, "h", "/", "c");
    let (mut s, mut r) = http_client(front);
    let m = get(&mut s, &mut r, "h", "/").unwrap();
    assert_eq!(m.status, 200);
    assert_eq!(m.header("connection"), Some("close"));
    // `read_response` read the body to EOF: the proxy closed after it.
    assert_eq!(m.text(), "streamed until close");
    lp.stop();
}

#[test]
fn a_storm_of_garbage_connections_leaves_the_proxy_serving() {
    let a = http_backend("a");
    let lp = LoopHandle::start();
    lp.cluster("a", &[a.address], None);
    let front = lp.http_listener(30, 30);
    lp.http_route(front, "h", "/", "a");
    let prefixes: [&[u8]; 4] = [
        b"",
        b"GET / HTTP/1.1\r\nHost: h\r\n",
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\n",
    ];
    for i in 0..60u8 {
        let (mut s, mut r) = http_client(front);
        let mut bytes = prefixes[usize::from(i) % prefixes.len()].to_vec();
        bytes.extend(payload(usize::from(i) * 37 % 700 + 1, i));
        bytes.extend_from_slice(b"\r\n\r\n");
        let _ = s.write_all(&bytes);
        let _ = s.shutdown(std::net::Shutdown::Write);
        // Whatever the answer (400, 200 for a lucky body, nothing), the
        // connection ends.
        while read_response(&mut r).is_some() {}
    }
    let (mut s, mut r) = http_client(front);
    assert_eq!(get(&mut s, &mut r, "h", "/").unwrap().status, 200);
    lp.stop();
}
