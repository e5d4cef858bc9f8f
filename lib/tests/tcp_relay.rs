//! TCP proxy on loopback: relay integrity both ways, half-close, PROXY
//! headers sent and expected, backend retry on refusal, no backend, idle
//! timeout. Runs the proxy in the small loop of `tcp_support`.

#[macro_use]
mod tcp_support;

use std::io::{Read, Write};
use std::net::Shutdown;

use sozu_command_lib::command::ProxyProtocolConfig;
use sozu_lib::protocol::proxy_protocol::{self, StreamProxyHeader};
use tcp_support::*;

#[test]
fn one_megabyte_each_way_is_echoed_intact() {
    let lp = LoopHandle::start();
    lp.cluster("echo", &[echo_backend()], None);
    let front = lp.tcp_listener("echo", false, 30);
    let mut c = client(front);
    let data = payload(1 << 20, 3);
    let mut writer = c.try_clone().unwrap();
    let sent = data.clone();
    // Write from another thread: the echo comes back while we send, and
    // both directions must make progress through bounded buffers.
    let t = std::thread::spawn(move || {
        writer.write_all(&sent).unwrap();
        writer.shutdown(Shutdown::Write).unwrap();
    });
    let got = read_to_end(&mut c).unwrap();
    t.join().unwrap();
    assert_eq!(got.len(), data.len());
    assert!(got == data, "echoed bytes differ");
    let (bytes_in, bytes_out, connections) = lp.apply(|l| {
        (
            cluster_count(l, "echo", "tcp.bytes.in"),
            cluster_count(l, "echo", "tcp.bytes.out"),
            cluster_count(l, "echo", "tcp.connections"),
        )
    });
    assert_eq!(bytes_in, 1 << 20);
    assert_eq!(bytes_out, 1 << 20);
    assert_eq!(connections, 1);
    lp.stop();
}

#[test]
fn half_close_from_the_client_still_delivers_the_answer() {
    let (backend, received) = recording_backend(5, b"world");
    let lp = LoopHandle::start();
    lp.cluster("c", &[backend], None);
    let front = lp.tcp_listener("c", false, 30);
    let mut c = client(front);
    c.write_all(b"hello").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_end(&mut c).unwrap(), b"world");
    assert_eq!(received.recv().unwrap(), b"hello");
    lp.stop();
}

#[test]
fn send_header_clusters_get_a_proxy_v2_header_first() {
    let (backend, received) = recording_backend(28 + 4, b"ok");
    let lp = LoopHandle::start();
    lp.cluster(
        "pp",
        &[backend],
        Some(ProxyProtocolConfig::SendHeader as i32),
    );
    let front = lp.tcp_listener("pp", false, 30);
    let mut c = client(front);
    c.write_all(b"ping").unwrap();
    assert_eq!(read_to_end(&mut c).unwrap(), b"ok");
    let got = received.recv().unwrap();
    let header = proxy_protocol::parse(&got).unwrap().unwrap();
    assert_eq!(header.len, 28);
    assert_eq!(header.source, Some(c.local_addr().unwrap()));
    assert_eq!(header.destination, Some(front));
    assert_eq!(&got[28..], b"ping");
    lp.stop();
}

#[test]
fn expect_proxy_listeners_strip_the_header_and_relay_it_when_asked() {
    let (backend, received) = recording_backend(28 + 2, b"ok");
    let lp = LoopHandle::start();
    lp.cluster(
        "relay",
        &[backend],
        Some(ProxyProtocolConfig::RelayHeader as i32),
    );
    // The listener does not say expect_proxy: RELAY_HEADER on the cluster
    // is enough for the client's header to be expected.
    let front = lp.tcp_listener("relay", false, 30);
    let original: std::net::SocketAddr = "192.0.2.10:4000".parse().unwrap();
    let header = StreamProxyHeader::new(original, front);
    let mut c = client(front);
    c.write_all(header.as_bytes()).unwrap();
    c.write_all(b"hi").unwrap();
    assert_eq!(read_to_end(&mut c).unwrap(), b"ok");
    let got = received.recv().unwrap();
    assert_eq!(
        &got[..28],
        header.as_bytes(),
        "the client's header, as received"
    );
    assert_eq!(&got[28..], b"hi");

    // Without a header the connection is closed and nothing reaches the backend.
    let mut bad = client(front);
    bad.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!(read_to_end(&mut bad).unwrap_or_default(), b"");
    lp.stop();
}

#[test]
fn v1_header_from_the_client_is_stripped_before_the_backend() {
    let (backend, received) = recording_backend(3, b"ok");
    let lp = LoopHandle::start();
    lp.cluster("v1", &[backend], None);
    let front = lp.tcp_listener("v1", true, 30);
    let mut c = client(front);
    c.write_all(b"PROXY TCP4 192.0.2.1 192.0.2.2 1000 80\r\nabc")
        .unwrap();
    assert_eq!(read_to_end(&mut c).unwrap(), b"ok");
    assert_eq!(received.recv().unwrap(), b"abc");
    lp.stop();
}

#[test]
fn a_refused_backend_is_skipped_for_a_live_one() {
    let lp = LoopHandle::start();
    lp.cluster("mixed", &[dead_address(), echo_backend()], None);
    let front = lp.tcp_listener("mixed", false, 30);
    for round in 0..4u8 {
        let mut c = client(front);
        c.write_all(&[round; 10]).unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        assert_eq!(
            read_to_end(&mut c).unwrap(),
            vec![round; 10],
            "round {round}"
        );
    }
    lp.stop();
}

#[test]
fn no_live_backend_closes_the_client() {
    let lp = LoopHandle::start();
    lp.cluster("dead", &[dead_address()], None);
    lp.cluster("empty", &[], None);
    for cluster in ["dead", "empty"] {
        let front = lp.tcp_listener(cluster, false, 30);
        let mut c = client(front);
        let _ = c.write_all(b"x");
        let mut buf = [0u8; 8];
        let n = c.read(&mut buf).unwrap_or(0);
        assert_eq!(n, 0, "{cluster}: the proxy closes the connection");
    }
    let live = lp.apply(|l| l.tcp.active_sessions());
    assert_eq!(live, 0);
    lp.stop();
}

#[test]
fn an_idle_client_is_closed_by_the_front_timeout() {
    let (backend, _received) = recording_backend(1000, b"");
    let lp = LoopHandle::start();
    lp.cluster("idle", &[backend], None);
    let front = lp.tcp_listener("idle", false, 1);
    let mut c = client(front);
    c.write_all(b"x").unwrap();
    // The read returns when the proxy closes us (bounded by the client's
    // read timeout, far longer than the 1 s front timeout).
    let mut buf = [0u8; 8];
    let n = c.read(&mut buf).unwrap();
    assert_eq!(n, 0);
    assert_eq!(lp.apply(|l| l.tcp.active_sessions()), 0);
    lp.stop();
}

#[test]
fn a_backend_that_never_answers_the_connect_is_skipped_after_connect_timeout() {
    use sozu_command_lib::command::{RequestTcpFrontend, TcpListenerConfig};
    let (hanging_address, hanging) = hanging_backend();
    let lp = LoopHandle::start();
    lp.cluster("slow", &[hanging_address, echo_backend()], None);
    let front = lp.apply(|l| {
        let address = free_port();
        let config = TcpListenerConfig {
            address: address.into(),
            public_address: None,
            expect_proxy: false,
            front_timeout: 30,
            back_timeout: 30,
            connect_timeout: 1,
            active: true,
        };
        l.tcp.add_listener(&config, &mut ctx!(l)).unwrap();
        l.tcp
            .add_frontend(&RequestTcpFrontend {
                cluster_id: "slow".into(),
                address: address.into(),
                tags: Default::default(),
            })
            .unwrap();
        address
    });
    let mut c = client(front);
    c.write_all(b"still served").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_end(&mut c).unwrap(), b"still served");
    assert_eq!(
        lp.apply(|l| cluster_count(l, "slow", "tcp.connect.failed")),
        1
    );
    lp.stop();
    drop(hanging);
}

#[test]
fn a_backend_that_does_not_read_stalls_the_client_instead_of_filling_memory() {
    // The backend accepts and never reads.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_address = silent.local_addr().unwrap();
    let (held_tx, held_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        if let Ok((stream, _)) = silent.accept() {
            let _ = held_tx.send(stream);
        }
    });
    let lp = LoopHandle::start();
    lp.cluster("silent", &[silent_address], None);
    let front = lp.tcp_listener("silent", false, 30);
    let mut c = client(front);
    c.set_nonblocking(true).unwrap();
    let chunk = vec![7u8; 65_536];
    let mut total = 0usize;
    let mut idle_rounds = 0;
    // Bounded: stop when writes have been refused for 25 rounds in a row.
    for _ in 0..5_000 {
        match c.write(&chunk) {
            Ok(n) => {
                total += n;
                idle_rounds = 0;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                idle_rounds += 1;
                if idle_rounds == 25 {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("write failed: {e}"),
        }
    }
    assert_eq!(idle_rounds, 25, "the client was eventually held back");
    // Kernel socket buffers (a few MB each) plus the proxy's two bounded
    // buffers: far below what was offered.
    assert!(total < 64 << 20, "{total} bytes accepted");
    let _backend = held_rx.recv().unwrap();
    let in_proxy = lp.apply(|l| cluster_count(l, "silent", "tcp.bytes.in"));
    assert!(in_proxy as usize <= total);
    assert_eq!(
        lp.apply(|l| l.tcp.active_sessions()),
        1,
        "the session is alive, waiting"
    );
    lp.stop();
}

#[test]
fn more_connections_than_one_wake_up_accepts_are_all_served() {
    let lp = LoopHandle::start();
    lp.cluster("echo", &[echo_backend()], None);
    let front = lp.tcp_listener("echo", false, 30);
    // Hold the loop while the clients connect, so that far more than one
    // wake-up's accept budget waits in the listener's backlog at once: the
    // rest must be accepted on the following turns, not left waiting for
    // another client's event.
    const CLIENTS: usize = 150;
    let clients = lp.apply(move |_| (0..CLIENTS).map(|_| client(front)).collect::<Vec<_>>());
    for (i, mut c) in clients.into_iter().enumerate() {
        let byte = [i as u8];
        c.write_all(&byte).unwrap();
        let mut got = [0u8; 1];
        c.read_exact(&mut got).unwrap();
        assert_eq!(got, byte, "client {i}");
    }
    let connections = lp.apply(|l| cluster_count(l, "echo", "tcp.connections"));
    assert_eq!(connections, CLIENTS as i64);
    lp.stop();
}
