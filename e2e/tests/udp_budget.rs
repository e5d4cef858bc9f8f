//! One flow budget per worker, through the real binary: every UDP listener
//! of a worker draws from one pool sized by the fd limit (and the worker's
//! share of the ephemeral ports), so one busy listener among eight is not
//! stopped at a static eighth, and under pressure shedding is counted per
//! listener while established flows and quiet listeners keep being served.
//!
//! The master is started with a chosen `RLIMIT_NOFILE` (soft and hard, its
//! workers inherit it), so the pool's size is known: `(limit − 256) × 9/10`
//! flows, the port range of any Linux host being far larger here.

use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use sozu_e2e::ports::{free_v4, V4};
use sozu_e2e::udp::parse_reply;
use sozu_e2e::wait::{now, Deadline};
use sozu_e2e::{ClusterConfig, Metrics, Sozu, SozuConfig, UdpBackend, UdpClient, UdpListener};

const METRICS: Duration = Duration::from_secs(20);

/// Eight listeners on one cluster with one echo backend, one worker, long
/// timeouts (no flow ends during a test).
fn eight_listeners(fd_limit: u64) -> (Sozu, UdpBackend, Vec<SocketAddr>) {
    let backend = UdpBackend::v4("a");
    let frontends: Vec<SocketAddr> = (0..8).map(|_| free_v4()).collect();
    let mut cluster = ClusterConfig::new("c", frontends[0]).backend("a", backend.addr());
    cluster.frontends = frontends.clone();
    let listeners = frontends
        .iter()
        .map(|&address| {
            let mut l = UdpListener::new(address);
            l.front_timeout = 300;
            l.back_timeout = 300;
            l
        })
        .collect();
    let config = SozuConfig {
        worker_count: 1,
        udp_listeners: listeners,
        clusters: vec![cluster],
        ..SozuConfig::default()
    };
    (
        Sozu::start_with_fd_limit(config, fd_limit),
        backend,
        frontends,
    )
}

/// `name` of the listener at `address` (`"<name>@<address>"`), 0 if absent.
fn per_listener(m: &Metrics, name: &str, address: SocketAddr) -> i64 {
    m.proxy_or_zero(&format!("{name}@{address}"))
}

/// Raises this test process's soft fd limit to its hard limit and returns
/// it: the busy test holds thousands of client sockets at once.
fn raise_own_fd_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid out-pointer.
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
        0
    );
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: `limit` is a valid in-pointer.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
    limit.rlim_cur
}

/// Client sockets, each its own flow (its own source port), non-blocking.
fn sockets(n: usize) -> Vec<UdpSocket> {
    (0..n)
        .map(|_| {
            let s = UdpSocket::bind(SocketAddr::new(V4, 0)).expect("bind a client socket");
            s.set_nonblocking(true).expect("non-blocking client");
            s
        })
        .collect()
}

/// Sends `"<tag>-<i>"` from each socket of `wave` to `target`.
fn send_wave(wave: &[UdpSocket], first: usize, tag: &str, target: SocketAddr) {
    for (i, s) in wave.iter().enumerate() {
        let payload = format!("{tag}-{}", first + i);
        // An ICMP error of an earlier datagram may surface once.
        if s.send_to(payload.as_bytes(), target).is_err() {
            s.send_to(payload.as_bytes(), target)
                .unwrap_or_else(|e| panic!("send from {:?}: {e}", s.local_addr()));
        }
    }
}

/// Waits until every socket of `wave` got the echo of its `"<tag>-<i>"`;
/// after `resend_after` without one, a socket sends its request once more
/// (a datagram the kernel dropped under load, not a proxy decision: the
/// shed counter is checked apart). Returns the number of resends.
fn collect_wave(
    wave: &[UdpSocket],
    first: usize,
    tag: &str,
    target: SocketAddr,
    timeout: Duration,
) -> usize {
    let deadline = Deadline::after(timeout);
    let resend_after = now() + Duration::from_secs(3);
    let mut waiting: BTreeSet<usize> = (0..wave.len()).collect();
    let mut resent = false;
    let mut resends = 0;
    let mut buf = [0u8; 2048];
    while !waiting.is_empty() {
        waiting.retain(|&i| loop {
            match wave[i].recv_from(&mut buf) {
                Ok((len, from)) if from == target => {
                    let (backend, echoed) = parse_reply(&buf[..len]);
                    assert_eq!(backend, "a");
                    assert_eq!(echoed, format!("{tag}-{}", first + i).as_bytes());
                    break false;
                }
                Ok(_) => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break true,
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => continue,
                Err(e) => panic!("receive on client {}: {e}", first + i),
            }
        });
        if waiting.is_empty() {
            break;
        }
        if !resent && now() >= resend_after {
            resent = true;
            for &i in &waiting {
                let payload = format!("{tag}-{}", first + i);
                let _ = wave[i].send_to(payload.as_bytes(), target);
                resends += 1;
            }
        }
        assert!(
            !deadline.is_past(),
            "{} of {} clients ({tag}) got no answer within {timeout:?}",
            waiting.len(),
            wave.len()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    resends
}

#[test]
fn one_busy_listener_of_eight_serves_5000_flows() {
    const FLOWS: usize = 5_000;
    const WAVE: usize = 100;
    let own = raise_own_fd_limit();
    assert!(
        own >= FLOWS as u64 + 512,
        "this test needs {} fds, the hard limit is {own}",
        FLOWS + 512
    );
    // Pool: (12,000 − 256) × 9/10 = 10,569 flows. A static share per
    // listener (the old automatic max_flows) was 1,321: far below 5,000.
    let (sozu, backend, frontends) = eight_listeners(12_000);
    let busy = frontends[0];
    // The quiet listeners carry a flow each.
    for &quiet in &frontends[1..] {
        UdpClient::new(quiet).echo_eventually(b"quiet", METRICS);
    }
    let clients = sockets(FLOWS);
    let mut resends = 0;
    for (w, wave) in clients.chunks(WAVE).enumerate() {
        let first = w * WAVE;
        send_wave(wave, first, "busy", busy);
        resends += collect_wave(wave, first, "busy", busy, METRICS);
    }
    let m = sozu.wait_metrics("5,000 live flows on the busy listener", METRICS, |m| {
        per_listener(m, "udp.active_flows", busy) == FLOWS as i64
    });
    assert_eq!(per_listener(&m, "udp.flows.created", busy), FLOWS as i64);
    assert_eq!(per_listener(&m, "udp.flows.shed", busy), 0);
    assert_eq!(m.proxy_or_zero("udp.flows.shed"), 0);
    assert_eq!(m.proxy_or_zero("udp.active_flows"), FLOWS as i64 + 7);
    // Each flow reached the backend from its own upstream socket.
    let sources: BTreeSet<SocketAddr> = backend.received().iter().map(|r| r.from).collect();
    assert_eq!(sources.len(), FLOWS + 7);
    // The established flows keep working: a second round trip on a sample.
    for (i, s) in clients.iter().enumerate().step_by(250) {
        send_wave(std::slice::from_ref(s), i, "again", busy);
        collect_wave(std::slice::from_ref(s), i, "again", busy, METRICS);
    }
    eprintln!("5,000 flows on one of 8 listeners: all answered, {resends} resends, 0 shed");
}

#[test]
fn a_small_pool_sheds_per_listener_and_spares_established_flows_and_quiet_listeners() {
    // Pool: (600 − 256) × 9/10 = 309 flows; 8 listeners: fair share 38,
    // reserve 38 (an eighth of the pool), so the busy listener stops at
    // 309 − 38 = 271 and the reserve stays for the others.
    const POOL: i64 = 309;
    const RESERVE: i64 = 38;
    const FLOOD: usize = 400;
    const WAVE: usize = 50;
    let (sozu, _backend, frontends) = eight_listeners(600);
    let busy = frontends[0];
    let quiet = frontends[1];
    let kept: Vec<UdpClient> = (0..5).map(|_| UdpClient::new(busy)).collect();
    kept[0].echo_eventually(b"kept", METRICS);
    for client in &kept[1..] {
        client.expect_echo(b"kept");
    }
    // The flood: one datagram per source, in waves, each accounted for
    // (admitted or shed) before the next, so no datagram is lost in a
    // socket buffer and the counts are exact.
    let flood = sockets(FLOOD);
    let mut sent = 0;
    for (w, wave) in flood.chunks(WAVE).enumerate() {
        send_wave(wave, w * WAVE, "flood", busy);
        sent += wave.len();
        let expected = (kept.len() + sent) as i64;
        sozu.wait_metrics("every flood source admitted or shed", METRICS, |m| {
            per_listener(m, "udp.flows.created", busy) + per_listener(m, "udp.flows.shed", busy)
                == expected
        });
    }
    let admitted = POOL - RESERVE;
    let m = sozu.metrics();
    assert_eq!(per_listener(&m, "udp.active_flows", busy), admitted);
    assert_eq!(
        per_listener(&m, "udp.flows.shed", busy),
        (kept.len() + FLOOD) as i64 - admitted
    );
    // Established flows keep working under pressure.
    for client in &kept {
        client.expect_echo(b"still served");
    }
    // A quiet listener, below its share, admits from the reserve.
    let newcomers: Vec<UdpClient> = (0..20).map(|_| UdpClient::new(quiet)).collect();
    for client in &newcomers {
        client.expect_echo(b"newcomer");
    }
    let m = sozu.wait_metrics("20 flows on the quiet listener", METRICS, |m| {
        per_listener(m, "udp.active_flows", quiet) == 20
    });
    assert_eq!(per_listener(&m, "udp.flows.shed", quiet), 0);
    // The busy listener, beyond its share, still may not take the rest of
    // the reserve: a new source there is shed and counted.
    let shed_before = per_listener(&m, "udp.flows.shed", busy);
    UdpClient::new(busy).send(b"one more");
    sozu.wait_metrics("one more shed on the busy listener", METRICS, |m| {
        per_listener(m, "udp.flows.shed", busy) == shed_before + 1
    });
}

#[test]
fn upstream_sockets_leave_from_the_configured_source_addresses_in_turn() {
    let backend = UdpBackend::v4("a");
    let frontend = free_v4();
    let cluster = ClusterConfig::new("c", frontend).backend("a", backend.addr());
    let mut config = SozuConfig::udp(1, UdpListener::new(frontend), cluster);
    config.extra = "upstream_source_addresses = [\"127.0.0.2\", \"127.0.0.3\"]\n".to_owned();
    let sozu = Sozu::start(config);
    let clients: Vec<UdpClient> = (0..10).map(|_| UdpClient::new(frontend)).collect();
    clients[0].echo_eventually(b"first", METRICS);
    for client in &clients[1..] {
        assert_eq!(client.expect_echo(b"hello"), "a");
    }
    let received = backend.received();
    let sources: BTreeSet<SocketAddr> = received.iter().map(|r| r.from).collect();
    assert_eq!(sources.len(), 10, "one upstream socket per flow");
    let per_ip = |ip: &str| sources.iter().filter(|s| s.ip().to_string() == ip).count();
    assert_eq!(per_ip("127.0.0.2"), 5, "{sources:?}");
    assert_eq!(per_ip("127.0.0.3"), 5, "{sources:?}");
    let m = sozu.metrics();
    assert_eq!(m.proxy_or_zero("udp.upstream.open_failed"), 0);
    assert_eq!(m.proxy_or_zero("udp.active_flows"), 10);
}
