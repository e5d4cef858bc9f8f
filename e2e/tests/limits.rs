//! Limits of the TCP and HTTP proxies through the real binary, each filled:
//! `max_connections` (per worker, TCP and HTTP connections together).

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use sozu_e2e::ports::free_v4;
use sozu_e2e::stream::{
    read_answer, tcp_greeting, tcp_http_config, NamedHttpBackend, NamedTcpBackend, StreamBackend,
};
use sozu_e2e::{Sozu, SozuConfig};

const WAIT: Duration = Duration::from_secs(20);

/// One worker with `max_connections`, a TCP listener and an HTTP listener.
fn start(max_connections: usize) -> (Sozu, SocketAddr, SocketAddr) {
    let tcp_front = free_v4();
    let http_front = free_v4();
    let echo = NamedTcpBackend::start("echo");
    let web = NamedHttpBackend::start("web");
    let config = SozuConfig {
        worker_count: 1,
        extra: format!(
            "max_connections = {max_connections}\n{}",
            tcp_http_config(
                tcp_front,
                http_front,
                &[StreamBackend::new("echo-1", echo.addr())],
                &[StreamBackend::new("web-1", web.addr())],
            )
        ),
        ..SozuConfig::default()
    };
    (Sozu::start(config), tcp_front, http_front)
}

/// What a client of a refused connection sees: the proxy closes it at once
/// (end of stream, or a reset since the client's bytes were unread).
fn expect_closed_at_once(mut stream: TcpStream, what: &str) {
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Ok(n) => panic!("{what}: the refused connection got {n} bytes"),
        Err(e) => panic!("{what}: expected a close, got {e} ({:?})", e.kind()),
    }
}

const PARTIAL_HEAD: &str = "GET / HTTP/1.1\r\nHost: example.com\r\nX-Pad: ";

#[test]
fn connections_beyond_max_connections_are_closed_at_accept_and_counted() {
    let (sozu, tcp_front, http_front) = start(4);

    // Fill the budget: two relayed TCP sessions and two HTTP connections
    // each holding a partial request head (the attack).
    let mut tcp_held = Vec::new();
    for i in 0..2 {
        let (stream, name) = tcp_greeting(tcp_front).unwrap_or_else(|e| panic!("tcp {i}: {e}"));
        assert_eq!(name, "echo");
        tcp_held.push(stream);
    }
    let mut http_held = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(http_front).unwrap();
        stream.write_all(PARTIAL_HEAD.as_bytes()).unwrap();
        stream.write_all(&[b'a'; 8_192]).unwrap();
        http_held.push(stream);
    }
    sozu.wait_metrics("2 HTTP connections held", WAIT, |m| {
        m.proxy_or_zero("http.active_connections") == 2
    });

    // Over the budget, on either listener: closed at once, counted.
    let refused_tcp = TcpStream::connect(tcp_front).unwrap();
    expect_closed_at_once(refused_tcp, "5th connection (TCP)");
    let mut refused_http = TcpStream::connect(http_front).unwrap();
    // The write may already meet the close; what matters is the read.
    let _ = refused_http.write_all(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n");
    expect_closed_at_once(refused_http, "6th connection (HTTP)");
    let m = sozu.wait_metrics("one refusal counted per listener", WAIT, |m| {
        m.proxy_or_zero("tcp.connections_refused") == 1
            && m.proxy_or_zero("http.connections_refused") == 1
    });
    assert_eq!(m.proxy_or_zero("tcp.active_connections"), 2);
    assert_eq!(m.proxy_or_zero("http.active_connections"), 2);

    // The held connections are still served.
    let mut echo = BufReader::new(tcp_held[0].try_clone().unwrap());
    tcp_held[0].write_all(b"still here\n").unwrap();
    tcp_held[0].set_read_timeout(Some(WAIT)).unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut echo, &mut line).unwrap();
    assert_eq!(line, "still here\n");
    let head_end = http_held.pop().unwrap();
    let mut writer = head_end.try_clone().unwrap();
    writer.write_all(b"\r\n\r\n").unwrap();
    head_end.set_read_timeout(Some(WAIT)).unwrap();
    let answer = read_answer(&mut BufReader::new(head_end));
    assert_eq!(answer, Ok((200, "backend=web".to_owned())));

    // Closing one frees its slot: a new connection is served again.
    drop(writer);
    drop(tcp_held.pop());
    sozu.wait_metrics("a slot freed", WAIT, |m| {
        m.proxy_or_zero("tcp.active_connections") + m.proxy_or_zero("http.active_connections") <= 2
    });
    let (_again, name) = tcp_greeting(tcp_front).expect("a freed slot serves a new connection");
    assert_eq!(name, "echo");
    let m = sozu.metrics();
    assert_eq!(m.proxy_or_zero("tcp.connections_refused"), 1);
    drop(http_held);
}

#[test]
fn a_flood_of_partial_heads_is_held_to_max_connections_with_bounded_fds() {
    // The attack, scaled down: 300 connections each holding an
    // 8 KiB partial request head against max_connections = 50.
    let (sozu, _, http_front) = start(50);
    let worker = sozu.worker_pids()[0];
    let fds_before = sozu_e2e::procfs::fd_count(worker);
    let mut held = Vec::new();
    for _ in 0..300 {
        let mut stream = TcpStream::connect(http_front).unwrap();
        // A refused one may already be closed: its write may fail.
        let _ = stream.write_all(PARTIAL_HEAD.as_bytes());
        let _ = stream.write_all(&[b'a'; 8_192]);
        held.push(stream);
    }
    let m = sozu.wait_metrics("250 refused, 50 held", WAIT, |m| {
        m.proxy_or_zero("http.connections_refused") == 250
    });
    assert_eq!(m.proxy_or_zero("http.active_connections"), 50);
    assert_eq!(m.proxy_or_zero("http.connections"), 50);
    let fds = sozu_e2e::procfs::fd_count(worker);
    assert!(
        fds <= fds_before + 50 + 8,
        "worker fds {fds_before} -> {fds} with 50 connections held"
    );
    drop(held);
    sozu.wait_metrics("every slot freed", WAIT, |m| {
        m.proxy_or_zero("http.active_connections") == 0
    });
}

/// `(soft, hard)` "Max open files" of `pid`, from `/proc/<pid>/limits`.
fn open_files_limit(pid: i32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let mut fields = line["Max open files".len()..].split_whitespace();
    (
        fields.next().unwrap().to_owned(),
        fields.next().unwrap().to_owned(),
    )
}

#[test]
fn the_master_and_workers_raise_their_open_file_limit_to_the_hard_limit() {
    // Start sozu with a soft limit below the hard one (children inherit
    // it), so the raise is observable; restored once sozu runs.
    let mut saved = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut saved), 0);
        let lowered = libc::rlimit {
            rlim_cur: (saved.rlim_max / 2).clamp(64, 1024),
            rlim_max: saved.rlim_max,
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lowered), 0);
    }
    let (sozu, _, _) = start(10);
    // SAFETY: as above.
    unsafe {
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &saved), 0);
    }
    assert!(
        saved.rlim_max > 64,
        "the hard limit is too low to observe a raise"
    );
    let mut pids = vec![sozu.master_pid()];
    pids.extend(sozu.worker_pids());
    for pid in pids {
        let (soft, hard) = open_files_limit(pid);
        assert_eq!(soft, hard, "pid {pid}: soft {soft} below hard {hard}");
    }
}
