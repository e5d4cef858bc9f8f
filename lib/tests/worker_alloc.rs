//! No heap allocation per datagram on an established flow (DESIGN §3, §7):
//! a counting global allocator watches the whole process while datagrams
//! go both ways through a worker. Its own test binary (the allocator is
//! process-wide), run without the libtest harness so no harness thread
//! allocates while it counts.

mod worker_common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

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
    COUNTING.store(true, Ordering::SeqCst);
    for _ in 0..2_000 {
        round_trip(&mut buf);
    }
    COUNTING.store(false, Ordering::SeqCst);
    let allocations = ALLOCATIONS.load(Ordering::SeqCst);
    assert_eq!(
        allocations, 0,
        "{allocations} allocations for 2,000 datagrams each way"
    );
}

/// Runs without the libtest harness (see `lib/Cargo.toml`): the only threads
/// are this one and the ones the proof starts itself.
fn main() {
    established_flow_datagrams_allocate_nothing_either_way();
    println!("test established_flow_datagrams_allocate_nothing_either_way ... ok");
}
