//! Proof that an established flow costs no heap allocation per datagram, in
//! either direction: a counting global allocator watches 10,000 client and
//! 10,000 backend datagrams on established flows (with and without a PROXY
//! header on every datagram, with `responses = 1` and requests in flight,
//! timers polled between them) and must see 0
//! allocations; and 100,000 one-way datagrams from as many sources must see
//! 0 too. This binary runs without the libtest harness so no other thread
//! allocates while counting.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use sozu_lib::protocol::udp::{
    BackendDecision, BackendId, ClientDecision, ClusterConfig, ClusterId, FlowId, UdpFlowManager,
    UdpFlowManagerConfig,
};

struct CountingAllocator;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: forwards the caller's layout to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: forwards a pointer and layout obtained from `System`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

const FLOWS: u16 = 64;
const DATAGRAMS: usize = 10_000;

fn client(i: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 10_000 + i)
}

/// Builds a manager with `FLOWS` established flows (allocations allowed).
/// With `responses_cap` the cluster has `responses = 1` and each flow keeps
/// one request more in flight than answered, so every datagram of the proof
/// goes through the per-request accounting without closing its flow.
fn setup(
    t0: Instant,
    proxy_every_datagram: bool,
    responses_cap: bool,
) -> (UdpFlowManager, Vec<FlowId>) {
    let mut cfg = UdpFlowManagerConfig::new("203.0.113.1:53".parse().unwrap());
    cfg.max_flows = 1_000;
    let mut m = UdpFlowManager::new(cfg, 99);
    let mut cluster = ClusterConfig::new(ClusterId::new("c"));
    cluster.send_proxy_protocol = proxy_every_datagram;
    cluster.proxy_protocol_every_datagram = proxy_every_datagram;
    if responses_cap {
        cluster.responses = std::num::NonZeroU32::new(1);
    }
    m.set_cluster(t0, Some(cluster));
    let mut flows = Vec::new();
    for i in 0..FLOWS {
        let ClientDecision::Queued { flow } = m.handle_client_datagram(t0, client(i), b"hello")
        else {
            panic!("admission failed");
        };
        flows.push(flow);
        while m.poll_output().is_some() {}
        m.backend_resolved(
            t0,
            flow,
            BackendId::new("b"),
            "10.0.0.1:53".parse().unwrap(),
        );
        while m.poll_output().is_some() {}
    }
    (m, flows)
}

/// Drives `DATAGRAMS` datagrams each way; returns allocations counted.
fn drive(m: &mut UdpFlowManager, flows: &[FlowId], t0: Instant, expect_header: bool) -> usize {
    let payload = [0x42u8; 512];
    let mut now = t0;
    ALLOCATIONS.store(0, Ordering::SeqCst);
    COUNTING.store(true, Ordering::SeqCst);
    for n in 0..DATAGRAMS {
        let i = n % flows.len();
        now += Duration::from_micros(100);
        let d = m.handle_client_datagram(now, client(i as u16), &payload);
        let ClientDecision::Forward { flow, proxy_header } = d else {
            COUNTING.store(false, Ordering::SeqCst);
            panic!("expected Forward, got {d:?}");
        };
        assert_eq!(flow, flows[i]);
        assert_eq!(proxy_header.is_some(), expect_header);
        let d = m.handle_backend_datagram(now, flows[i], &payload);
        assert!(matches!(d, BackendDecision::Return { .. }));
        if n % 100 == 0 {
            if let Some(t) = m.poll_timeout() {
                if t <= now {
                    m.handle_timeout(now);
                }
            }
            assert!(m.poll_output().is_none());
        }
    }
    COUNTING.store(false, Ordering::SeqCst);
    ALLOCATIONS.load(Ordering::SeqCst)
}

fn established_datagrams_allocate_nothing_either_way() {
    #[allow(clippy::disallowed_methods)]
    let t0 = Instant::now();
    let (mut m, flows) = setup(t0, false, false);
    assert_eq!(
        drive(&mut m, &flows, t0, false),
        0,
        "plain forwarding allocated"
    );
    let (mut m, flows) = setup(t0, true, false);
    assert_eq!(
        drive(&mut m, &flows, t0, true),
        0,
        "PROXY-header forwarding allocated"
    );
    assert_eq!(m.active_flows(), FLOWS as usize);
    let (mut m, flows) = setup(t0, false, true);
    assert_eq!(
        drive(&mut m, &flows, t0, false),
        0,
        "forwarding with `responses = 1` and requests in flight allocated"
    );
    assert_eq!(
        m.active_flows(),
        FLOWS as usize,
        "every flow still owes one answer"
    );
}

/// Runs without the libtest harness (see `lib/Cargo.toml`): the only threads
/// are this one and the ones the proof starts itself.
/// One-way cluster: 100,000 datagrams from 100,000 distinct sources, with a
/// PROXY header on each, allocate nothing and leave no flow.
fn one_way_datagrams_from_distinct_sources_allocate_nothing() {
    #[allow(clippy::disallowed_methods)]
    let t0 = Instant::now();
    let mut cfg = UdpFlowManagerConfig::new("203.0.113.1:514".parse().unwrap());
    cfg.max_flows = 1;
    let mut m = UdpFlowManager::new(cfg, 99);
    let mut cluster = ClusterConfig::new(ClusterId::new("logs"));
    cluster.one_way = true;
    cluster.send_proxy_protocol = true;
    m.set_cluster(t0, Some(cluster));
    let payload = [0x42u8; 256];
    ALLOCATIONS.store(0, Ordering::SeqCst);
    COUNTING.store(true, Ordering::SeqCst);
    let mut forwarded = 0usize;
    for n in 0..100_000u32 {
        let ip = Ipv4Addr::from(0x0a00_0000 | (n >> 4));
        let src = SocketAddr::new(IpAddr::V4(ip), 1024 + (n & 0xf) as u16);
        if let ClientDecision::OneWay {
            proxy_header: Some(_),
            ..
        } = m.handle_client_datagram(t0, src, &payload)
        {
            forwarded += 1;
        }
    }
    COUNTING.store(false, Ordering::SeqCst);
    let allocations = ALLOCATIONS.load(Ordering::SeqCst);
    assert_eq!(
        forwarded, 100_000,
        "every datagram one-way, with its header"
    );
    assert_eq!(allocations, 0, "{allocations} allocations");
    assert_eq!(m.active_flows(), 0);
    assert!(m.poll_output().is_none());
}

fn main() {
    established_datagrams_allocate_nothing_either_way();
    println!("test established_datagrams_allocate_nothing_either_way ... ok");
    one_way_datagrams_from_distinct_sources_allocate_nothing();
    println!("test one_way_datagrams_from_distinct_sources_allocate_nothing ... ok");
}
