//! No heap allocation per datagram on an established flow (DESIGN §3, §7):
//! a counting global allocator watches the whole process while datagrams
//! go both ways through a worker: one at a time on one flow, then bursts
//! on many flows at once (batched receives and sends on the listener and
//! upstream sockets), with and without a PROXY header on every datagram.
//! Its own test binary (the allocator is process-wide), run without the
//! libtest harness so no harness thread allocates while it counts. Also
//! one-way clusters: datagrams from many sources and their dropped replies.
//! On a loaded machine a socket now and then stops at its per-wake-up
//! datagram budget and is read again on the next wake-up: a rare path, on
//! the counted datapath all the same (it once allocated the first time each
//! of the worker loop's two read-again lists was used).

mod worker_common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use sozu_command_lib::command::request::RequestType;
use sozu_command_lib::command::UdpClusterConfig;
use worker_common::*;

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: delegates to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn established_flow_datagrams_allocate_nothing_either_way() {
    one_flow_one_at_a_time();
    bursts_on_many_flows_with_and_without_proxy_headers();
}

fn one_flow_one_at_a_time() {
    let mut worker = Worker::start();
    // Long timeouts: nothing expires during the test.
    let knobs = UdpClusterConfig {
        front_timeout: Some(60),
        back_timeout: Some(60),
        ..UdpClusterConfig::default()
    };
    let (listener, backend) = simple_setup(&mut worker, knobs);
    let client = udp_socket("127.0.0.1");
    let mut buf = vec![0u8; 2048];
    client.send_to(b"open", listener).unwrap();
    let (_, upstream) = backend.recv_from(&mut buf).unwrap();
    let round_trip = |buf: &mut [u8]| {
        client.send_to(b"request-payload", listener).unwrap();
        let (n, _) = backend.recv_from(buf).unwrap();
        assert_eq!(n, 15);
        backend.send_to(b"response", upstream).unwrap();
        let (n, _) = client.recv_from(buf).unwrap();
        assert_eq!(n, 8);
    };
    // Warm up: timer heap, lazily registered tracing callsites, buffers.
    for _ in 0..5_000 {
        round_trip(&mut buf);
    }
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    COUNTING.store(true, Ordering::SeqCst);
    for _ in 0..2_000 {
        round_trip(&mut buf);
    }
    COUNTING.store(false, Ordering::SeqCst);
    let allocations = ALLOCATIONS.load(Ordering::SeqCst) - before;
    assert_eq!(
        allocations, 0,
        "{allocations} allocations for 2,000 datagrams each way"
    );
}

/// Clients on one listener, the backend behind it, and the length the
/// backend must see for each request (payload plus PROXY header, if any).
struct Bench {
    clients: Vec<UdpSocket>,
    listener: SocketAddr,
    backend: UdpSocket,
    forwarded_len: usize,
}

const REQUEST: &[u8] = b"request-payload";
const RESPONSE: &[u8] = b"response";
/// IPv4 PROXY v2 header: 16-byte preamble + 12 address bytes.
const PPV2_IPV4_LEN: usize = 28;

impl Bench {
    fn new(worker: &mut Worker, cluster: &str, flows: usize, udp: UdpClusterConfig) -> Bench {
        let listener = free_udp_addr("127.0.0.1");
        let backend_socket = udp_socket("127.0.0.1");
        let proxy = udp.send_proxy_protocol == Some(true);
        worker.ok(RequestType::AddUdpListener(udp_listener(listener)));
        worker.ok(RequestType::AddCluster(udp_cluster(cluster, udp)));
        worker.ok(RequestType::AddBackend(backend(
            cluster,
            &format!("{cluster}-b"),
            backend_socket.local_addr().unwrap(),
        )));
        worker.ok(RequestType::AddUdpFrontend(frontend(cluster, listener)));
        let clients = (0..flows).map(|_| udp_socket("127.0.0.1")).collect();
        Bench {
            clients,
            listener,
            backend: backend_socket,
            forwarded_len: REQUEST.len() + if proxy { PPV2_IPV4_LEN } else { 0 },
        }
    }

    /// Every client sends `burst` requests at once; the backend answers
    /// each on the upstream socket it came from; every client gets its
    /// `burst` responses. Allocates nothing in this test's own code.
    fn round(&self, burst: usize, buf: &mut [u8]) {
        for client in &self.clients {
            for _ in 0..burst {
                client.send_to(REQUEST, self.listener).unwrap();
            }
        }
        for _ in 0..self.clients.len() * burst {
            let (n, upstream) = self.backend.recv_from(buf).unwrap();
            assert_eq!(n, self.forwarded_len);
            assert_eq!(&buf[n - REQUEST.len()..n], REQUEST);
            self.backend.send_to(RESPONSE, upstream).unwrap();
        }
        for client in &self.clients {
            for _ in 0..burst {
                let (n, _) = client.recv_from(buf).unwrap();
                assert_eq!(&buf[..n], RESPONSE);
            }
        }
    }
}

fn bursts_on_many_flows_with_and_without_proxy_headers() {
    let mut worker = Worker::start();
    let knobs = UdpClusterConfig {
        front_timeout: Some(60),
        back_timeout: Some(60),
        ..UdpClusterConfig::default()
    };
    let plain = Bench::new(&mut worker, "plain", 16, knobs.clone());
    let proxied = Bench::new(
        &mut worker,
        "proxied",
        16,
        UdpClusterConfig {
            send_proxy_protocol: Some(true),
            proxy_protocol_every_datagram: Some(true),
            ..knobs
        },
    );
    let mut buf = vec![0u8; 2048];
    // Opens every flow, then warms up (timer heap, tracing callsites,
    // metric handles, write-queue capacity).
    for _ in 0..200 {
        plain.round(8, &mut buf);
        proxied.round(8, &mut buf);
    }
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    COUNTING.store(true, Ordering::SeqCst);
    for _ in 0..100 {
        plain.round(8, &mut buf);
        proxied.round(8, &mut buf);
    }
    COUNTING.store(false, Ordering::SeqCst);
    let allocations = ALLOCATIONS.load(Ordering::SeqCst) - before;
    // 2 listeners × 16 flows × 8 datagrams × 100 rounds, each way.
    assert_eq!(
        allocations, 0,
        "{allocations} allocations for 25,600 datagrams each way"
    );
}

/// One-way cluster (no flow): 64 distinct sources, two backends balanced
/// per datagram, a PROXY header on every datagram, and the backends'
/// replies read and dropped by the worker — nothing allocates once each
/// backend's socket is open.
fn one_way_datagrams_allocate_nothing() {
    let mut worker = Worker::start();
    let listener = free_udp_addr("127.0.0.1");
    worker.ok(RequestType::AddUdpListener(udp_listener(listener)));
    worker.ok(RequestType::AddCluster(udp_cluster(
        "oneway",
        UdpClusterConfig {
            one_way: Some(true),
            send_proxy_protocol: Some(true),
            ..UdpClusterConfig::default()
        },
    )));
    let backends: Vec<UdpSocket> = (0..2).map(|_| udp_socket("127.0.0.1")).collect();
    for (i, b) in backends.iter().enumerate() {
        worker.ok(RequestType::AddBackend(backend(
            "oneway",
            &format!("ow-{i}"),
            b.local_addr().unwrap(),
        )));
        b.set_nonblocking(true).unwrap();
    }
    worker.ok(RequestType::AddUdpFrontend(frontend("oneway", listener)));
    let clients: Vec<UdpSocket> = (0..64).map(|_| udp_socket("127.0.0.1")).collect();
    let mut buf = vec![0u8; 2048];
    // Every client sends 4; the backends read them all and answer each
    // (the answer goes to the proxy's one-way socket, which drops it).
    let round = |buf: &mut [u8]| {
        for client in &clients {
            for _ in 0..4 {
                client.send_to(REQUEST, listener).unwrap();
            }
        }
        let mut got = 0;
        let mut idle = 0u32;
        while got < clients.len() * 4 {
            let mut progress = false;
            for b in &backends {
                while let Ok((n, from)) = b.recv_from(buf) {
                    assert_eq!(n, REQUEST.len() + PPV2_IPV4_LEN);
                    b.send_to(RESPONSE, from).unwrap();
                    got += 1;
                    progress = true;
                }
            }
            if !progress {
                idle += 1;
                assert!(idle < 10_000, "one-way datagrams lost");
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
    };
    for _ in 0..100 {
        round(&mut buf);
    }
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    COUNTING.store(true, Ordering::SeqCst);
    for _ in 0..100 {
        round(&mut buf);
    }
    COUNTING.store(false, Ordering::SeqCst);
    let allocations = ALLOCATIONS.load(Ordering::SeqCst) - before;
    assert_eq!(
        allocations, 0,
        "{allocations} allocations for 25,600 one-way datagrams and their replies"
    );
    // The replies really went through the drop path.
    let dropped = worker.metric(&format!("udp.datagrams.dropped.one_way_reply@{listener}"));
    assert!(dropped > 0, "no backend reply was read");
    assert_eq!(worker.metric(&format!("udp.flows.created@{listener}")), 0);
}

/// `DNS_ID` cluster (no flow): 64 clients with 4 queries in flight each,
/// balanced per query over two backends' shared sockets, IDs rewritten
/// and restored, every answer mapped back — plus a duplicate answer per
/// query, dropped `dns_unknown_id` — and nothing allocates once the
/// pending tables have their working size.
fn dns_id_queries_and_answers_allocate_nothing() {
    let mut worker = Worker::start();
    let listener = free_udp_addr("127.0.0.1");
    worker.ok(RequestType::AddUdpListener(udp_listener(listener)));
    worker.ok(RequestType::AddCluster(udp_cluster(
        "dns",
        UdpClusterConfig {
            flow_key: Some(sozu_command_lib::command::UdpFlowKey::DnsId as i32),
            back_timeout: Some(60),
            ..UdpClusterConfig::default()
        },
    )));
    let backends: Vec<UdpSocket> = (0..2).map(|_| udp_socket("127.0.0.1")).collect();
    for (i, b) in backends.iter().enumerate() {
        worker.ok(RequestType::AddBackend(backend(
            "dns",
            &format!("dns-{i}"),
            b.local_addr().unwrap(),
        )));
        b.set_nonblocking(true).unwrap();
    }
    worker.ok(RequestType::AddUdpFrontend(frontend("dns", listener)));
    let clients: Vec<UdpSocket> = (0..64).map(|_| udp_socket("127.0.0.1")).collect();
    for c in &clients {
        c.set_nonblocking(true).unwrap();
    }
    // A query for "example.test" A IN: header then question (on the stack).
    let mut query = [0u8; 30];
    query[2] = 0x01;
    query[5] = 1;
    query[12] = 7;
    query[13..20].copy_from_slice(b"example");
    query[20] = 4;
    query[21..25].copy_from_slice(b"test");
    query[27] = 1;
    query[29] = 1;
    let mut buf = vec![0u8; 2048];
    let round = |buf: &mut [u8]| {
        let mut q = query;
        for client in &clients {
            for k in 0..4u8 {
                q[1] = k;
                client.send_to(&q, listener).unwrap();
            }
        }
        // The backends answer each query twice (QR set, same ID).
        let mut answered = 0;
        let mut idle = 0u32;
        while answered < clients.len() * 4 {
            let mut progress = false;
            for b in &backends {
                while let Ok((n, from)) = b.recv_from(buf) {
                    assert_eq!(n, query.len());
                    buf[2] |= 0x80;
                    b.send_to(&buf[..n], from).unwrap();
                    b.send_to(&buf[..n], from).unwrap();
                    answered += 1;
                    progress = true;
                }
            }
            if !progress {
                idle += 1;
                assert!(idle < 10_000, "DNS queries lost");
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        // Each client gets its four answers, with its own IDs.
        let mut got = 0;
        idle = 0;
        while got < clients.len() * 4 {
            let mut progress = false;
            for client in &clients {
                while let Ok((n, _)) = client.recv_from(buf) {
                    assert_eq!(n, query.len());
                    assert!(buf[0] == 0 && buf[1] < 4 && buf[2] & 0x80 != 0);
                    got += 1;
                    progress = true;
                }
            }
            if !progress {
                idle += 1;
                assert!(idle < 10_000, "DNS answers lost");
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
    };
    for _ in 0..100 {
        round(&mut buf);
    }
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    COUNTING.store(true, Ordering::SeqCst);
    for _ in 0..100 {
        round(&mut buf);
    }
    COUNTING.store(false, Ordering::SeqCst);
    let allocations = ALLOCATIONS.load(Ordering::SeqCst) - before;
    assert_eq!(
        allocations, 0,
        "{allocations} allocations for 25,600 DNS queries and 51,200 answers"
    );
    assert_eq!(
        worker.metric(&format!("udp.datagrams.out@{listener}")),
        51_200,
        "every query answered once"
    );
    assert!(worker.metric(&format!("udp.datagrams.dropped.dns_unknown_id@{listener}")) > 0);
    assert_eq!(worker.metric(&format!("udp.flows.created@{listener}")), 0);
}

/// Runs without the libtest harness (see `lib/Cargo.toml`): the only threads
/// are this one and the ones the proof starts itself.
fn main() {
    established_flow_datagrams_allocate_nothing_either_way();
    println!("test established_flow_datagrams_allocate_nothing_either_way ... ok");
    one_way_datagrams_allocate_nothing();
    println!("test one_way_datagrams_allocate_nothing ... ok");
    dns_id_queries_and_answers_allocate_nothing();
    println!("test dns_id_queries_and_answers_allocate_nothing ... ok");
}
