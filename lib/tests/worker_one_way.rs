//! One-way clusters through a real worker: distinct sources cost no flow
//! and no descriptor (one socket per backend), backends come and go live,
//! replies are read and dropped. Its own test binary, and every test holds
//! `FD_LOCK`, because threads of one binary share the fd table.

mod worker_common;

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Mutex;
use std::time::Duration;

use sozu_command_lib::command::{
    request::RequestType, LoadBalancingAlgorithms, RemoveBackend, UdpClusterConfig,
};
use worker_common::*;

static FD_LOCK: Mutex<()> = Mutex::new(());

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn one_way() -> UdpClusterConfig {
    UdpClusterConfig {
        one_way: Some(true),
        ..UdpClusterConfig::default()
    }
}

/// A listener on a one-way cluster `c` with `n` backends (`b0`…) balanced
/// by `policy`; returns the listener address and the backend sockets.
fn setup(
    worker: &mut Worker,
    udp: UdpClusterConfig,
    policy: LoadBalancingAlgorithms,
    n: usize,
) -> (SocketAddr, Vec<UdpSocket>) {
    let listener = free_udp_addr("127.0.0.1");
    worker.ok(RequestType::AddUdpListener(udp_listener(listener)));
    let mut cluster = udp_cluster("c", udp);
    cluster.load_balancing = policy as i32;
    worker.ok(RequestType::AddCluster(cluster));
    let backends: Vec<UdpSocket> = (0..n).map(|_| udp_socket("127.0.0.1")).collect();
    for (i, b) in backends.iter().enumerate() {
        worker.ok(RequestType::AddBackend(backend(
            "c",
            &format!("b{i}"),
            b.local_addr().unwrap(),
        )));
    }
    worker.ok(RequestType::AddUdpFrontend(frontend("c", listener)));
    (listener, backends)
}

/// The `i`-th distinct source: its own loopback address (127.1.0.0/16), so
/// no two sources share an IP whatever ports the kernel picks.
fn source(i: usize) -> UdpSocket {
    let ip = Ipv4Addr::new(127, 1, (i >> 8) as u8, i as u8);
    UdpSocket::bind(SocketAddr::new(IpAddr::V4(ip), 0)).unwrap()
}

/// Reads what the backends got until `want` datagrams arrived in all;
/// returns the count per backend and the sources the first backend saw
/// the datagrams from (the proxy's one-way socket addresses).
fn collect(backends: &[UdpSocket], want: usize) -> (Vec<usize>, HashSet<SocketAddr>) {
    let mut counts = vec![0; backends.len()];
    let mut senders = HashSet::new();
    let mut buf = [0u8; 2048];
    for b in backends {
        b.set_nonblocking(true).unwrap();
    }
    let mut idle_rounds = 0;
    while counts.iter().sum::<usize>() < want {
        let mut got = false;
        for (i, b) in backends.iter().enumerate() {
            while let Ok((_, from)) = b.recv_from(&mut buf) {
                counts[i] += 1;
                senders.insert(from);
                got = true;
            }
        }
        if got {
            idle_rounds = 0;
        } else {
            idle_rounds += 1;
            assert!(
                idle_rounds < POLL_ROUNDS,
                "only {counts:?} of {want} datagrams arrived"
            );
            std::thread::sleep(POLL_PAUSE);
        }
    }
    for b in backends {
        b.set_nonblocking(false).unwrap();
    }
    (counts, senders)
}

#[test]
fn ten_thousand_sources_cost_one_socket_per_backend_and_no_flow() {
    let _serial = FD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut worker = Worker::start();
    let (listener, backends) = setup(
        &mut worker,
        one_way(),
        LoadBalancingAlgorithms::RoundRobin,
        3,
    );
    // First datagrams: each backend's socket opens lazily.
    for i in 0..3 {
        source(i).send_to(b"warm", listener).unwrap();
    }
    collect(&backends, 3);
    let baseline = open_fds();
    const SOURCES: usize = 10_000;
    const CHUNK: usize = 100;
    let mut sent = 0;
    while sent < SOURCES {
        for i in sent..sent + CHUNK {
            // Opened, used once, closed: the test itself holds no fd per
            // source, so the fd count measures the worker.
            source(3 + i)
                .send_to(format!("<13>msg {i}").as_bytes(), listener)
                .unwrap();
        }
        sent += CHUNK;
        let (counts, _) = collect(&backends, CHUNK);
        assert_eq!(counts.iter().sum::<usize>(), CHUNK);
        assert_eq!(open_fds(), baseline, "no descriptor per source");
    }
    let m = worker.metrics();
    let at = |name: &str| m.get(&format!("{name}@{listener}")).copied().unwrap_or(0);
    assert_eq!(at("udp.datagrams.in"), (SOURCES + 3) as i64);
    assert_eq!(at("udp.flows.created"), 0, "no flow");
    assert_eq!(at("udp.active_flows"), 0);
    // ROUND_ROBIN balances per datagram: an exact third each.
    for b in 0..3 {
        let got = m.get(&format!("c/b{b}/udp.datagrams.in")).copied();
        assert!(
            got.is_some_and(|v| (3334..=3335).contains(&v)),
            "backend b{b} got {got:?}"
        );
    }
}

#[test]
fn hrw_keeps_each_source_on_one_backend() {
    let _serial = FD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut worker = Worker::start();
    let (listener, backends) = setup(&mut worker, one_way(), LoadBalancingAlgorithms::Hrw, 2);
    // 64 sources × 4 datagrams, each source from one socket.
    let sources: Vec<UdpSocket> = (0..64).map(source).collect();
    for (i, s) in sources.iter().enumerate() {
        for k in 0..4 {
            s.send_to(format!("{i}:{k}").as_bytes(), listener).unwrap();
        }
    }
    let mut seen: Vec<HashSet<String>> = vec![HashSet::new(), HashSet::new()];
    let mut buf = [0u8; 64];
    let mut total = 0;
    for b in &backends {
        b.set_nonblocking(true).unwrap();
    }
    let mut idle_rounds = 0;
    while total < 256 {
        let mut got = false;
        for (j, b) in backends.iter().enumerate() {
            while let Ok((n, _)) = b.recv_from(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).to_string();
                let src = text.split(':').next().unwrap().to_owned();
                seen[j].insert(src);
                total += 1;
                got = true;
            }
        }
        if !got {
            idle_rounds += 1;
            assert!(
                idle_rounds < POLL_ROUNDS,
                "only {total} of 256 datagrams arrived"
            );
            std::thread::sleep(POLL_PAUSE);
        }
    }
    assert!(
        seen[0].is_disjoint(&seen[1]),
        "a source reached both backends"
    );
    assert_eq!(seen[0].len() + seen[1].len(), 64);
    assert!(!seen[0].is_empty() && !seen[1].is_empty(), "both used");
    assert_eq!(worker.metric(&format!("udp.flows.created@{listener}")), 0);
}

#[test]
fn backend_removal_and_addition_take_effect_live() {
    let _serial = FD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut worker = Worker::start();
    let (listener, mut backends) = setup(
        &mut worker,
        one_way(),
        LoadBalancingAlgorithms::RoundRobin,
        2,
    );
    let client = udp_socket("127.0.0.1");
    // The backend added later, bound now so `before` counts its fd.
    let late = udp_socket("127.0.0.1");
    let before = open_fds();
    for _ in 0..4 {
        client.send_to(b"x", listener).unwrap();
    }
    assert_eq!(collect(&backends, 4).0, vec![2, 2]);
    assert_eq!(open_fds(), before + 2, "one socket per backend");
    // Remove b1: its socket closes; everything goes to b0.
    worker.ok(RequestType::RemoveBackend(RemoveBackend {
        cluster_id: "c".into(),
        backend_id: "b1".into(),
        address: backends[1].local_addr().unwrap().into(),
    }));
    assert_eq!(
        open_fds(),
        before + 1,
        "the removed backend's socket closed"
    );
    for _ in 0..4 {
        client.send_to(b"y", listener).unwrap();
    }
    assert_eq!(collect(&backends[..1], 4).0, vec![4]);
    assert!(try_recv(&backends[1], Duration::from_millis(200)).is_none());
    // Add b2: it gets its share at once, through a new socket.
    backends.push(late);
    worker.ok(RequestType::AddBackend(backend(
        "c",
        "b2",
        backends[2].local_addr().unwrap(),
    )));
    for _ in 0..4 {
        client.send_to(b"z", listener).unwrap();
    }
    let live = [&backends[0], &backends[2]];
    let (counts, _) = collect_refs(&live, 4);
    assert_eq!(counts, vec![2, 2]);
    assert_eq!(open_fds(), before + 2);
    assert_eq!(worker.metric(&format!("udp.active_flows@{listener}")), 0);
}

fn collect_refs(backends: &[&UdpSocket], want: usize) -> (Vec<usize>, HashSet<SocketAddr>) {
    let owned: Vec<UdpSocket> = backends.iter().map(|b| b.try_clone().unwrap()).collect();
    collect(&owned, want)
}

#[test]
fn backend_replies_are_read_and_counted_never_returned() {
    let _serial = FD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut worker = Worker::start();
    let (listener, backends) = setup(
        &mut worker,
        one_way(),
        LoadBalancingAlgorithms::RoundRobin,
        1,
    );
    let client = udp_socket("127.0.0.1");
    client.send_to(b"log line", listener).unwrap();
    let (_, senders) = collect(&backends, 1);
    let proxy_socket = *senders.iter().next().unwrap();
    for _ in 0..5 {
        backends[0].send_to(b"reply", proxy_socket).unwrap();
    }
    // The positive signal: the worker read and counted all five.
    worker.wait_metric(
        &format!("udp.datagrams.dropped.one_way_reply@{listener}"),
        |v| v == 5,
    );
    assert_eq!(worker.metric("c/b0/udp.datagrams.dropped.one_way_reply"), 5);
    assert!(try_recv(&client, Duration::from_millis(100)).is_none());
    assert_eq!(worker.metric(&format!("udp.datagrams.out@{listener}")), 0);
}

#[test]
fn every_datagram_carries_a_proxy_header_and_removal_of_the_listener_closes_the_sockets() {
    let _serial = FD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut worker = Worker::start();
    let (listener, backends) = setup(
        &mut worker,
        UdpClusterConfig {
            one_way: Some(true),
            send_proxy_protocol: Some(true),
            ..UdpClusterConfig::default()
        },
        LoadBalancingAlgorithms::RoundRobin,
        1,
    );
    let client = udp_socket("127.0.0.1");
    let before = open_fds();
    let client_addr = client.local_addr().unwrap();
    for k in 0..3u8 {
        client.send_to(&[k + 1; 5], listener).unwrap();
        let (bytes, _) = recv(&backends[0]);
        assert_eq!(bytes.len(), 28 + 5, "IPv4 PROXY v2 header + payload");
        assert_eq!(&bytes[..12], b"\r\n\r\n\0\r\nQUIT\n");
        assert_eq!(bytes[13], 0x12, "IPv4 / DGRAM");
        assert_eq!(&bytes[16..20], &[127, 0, 0, 1]);
        assert_eq!(
            u16::from_be_bytes([bytes[24], bytes[25]]),
            client_addr.port()
        );
        assert_eq!(u16::from_be_bytes([bytes[26], bytes[27]]), listener.port());
        assert_eq!(&bytes[28..], &[k + 1; 5]);
    }
    assert_eq!(open_fds(), before + 1);
    worker.ok(RequestType::RemoveListener(
        sozu_command_lib::command::RemoveListener {
            address: listener.into(),
            proxy: sozu_command_lib::command::ListenerType::Udp as i32,
        },
    ));
    // The listener socket and the backend's one-way socket are gone.
    assert_eq!(open_fds(), before - 1);
}

#[test]
fn a_refusing_backend_is_counted_and_marked_suspect() {
    let _serial = FD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut worker = Worker::start();
    let (listener, mut backends) = setup(
        &mut worker,
        one_way(),
        LoadBalancingAlgorithms::RoundRobin,
        2,
    );
    // b1's port closes: the kernel answers ICMP port unreachable, which the
    // one-way socket reports as ECONNREFUSED on its next send or read.
    drop(backends.pop());
    let client = udp_socket("127.0.0.1");
    // Until the refusal is seen, round robin still gives b1 every other
    // datagram (lost: UDP); send until it is counted.
    let mut sent = 0;
    let refused = format!("udp.backend.refused@{listener}");
    for _ in 0..POLL_ROUNDS {
        client.send_to(b"x", listener).unwrap();
        sent += 1;
        if worker.metric(&refused) > 0 {
            break;
        }
    }
    assert!(
        worker.metric(&refused) > 0,
        "no refusal after {sent} datagrams"
    );
    // Suspect: every new datagram goes to b0 while it is up.
    let (_, _) = collect(&backends, 1);
    let b0_before = worker.metric("c/b0/udp.datagrams.in");
    for _ in 0..10 {
        client.send_to(b"y", listener).unwrap();
    }
    worker.wait_metric("c/b0/udp.datagrams.in", |v| v >= b0_before + 10);
}
