//! The worker-wide flow pool, wired: a worker started under a small fd
//! limit sizes one pool for all its UDP listeners, a busy listener takes
//! all of it but the reserve, a quiet one still admits from the reserve,
//! an explicit `max_flows` caps its listener, and every shed source is
//! counted on its own listener. Its own test binary: it lowers the
//! process's fd limit while the worker starts.

mod worker_common;

use std::net::{SocketAddr, UdpSocket};

use sozu_command_lib::command::request::RequestType;
use sozu_command_lib::command::UdpClusterConfig;
use worker_common::*;

/// Sends one datagram from each of `n` new client sockets (kept open) and
/// waits until the listener accounted for all of them (created + shed).
fn new_sources(worker: &mut Worker, listener: SocketAddr, n: usize, before: i64) -> Vec<UdpSocket> {
    let clients: Vec<UdpSocket> = (0..n).map(|_| udp_socket("127.0.0.1")).collect();
    for client in &clients {
        client.send_to(b"x", listener).unwrap();
    }
    let want = before + n as i64;
    for _ in 0..200 {
        let m = worker.metrics();
        let seen = m
            .get(&format!("udp.flows.created@{listener}"))
            .unwrap_or(&0)
            + m.get(&format!("udp.flows.shed@{listener}")).unwrap_or(&0);
        if seen == want {
            return clients;
        }
        assert!(seen < want, "{seen} sources accounted, {want} sent");
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    panic!("{listener}: sources never all accounted for");
}

#[test]
fn one_pool_for_all_listeners_with_a_reserve_for_the_quiet_ones() {
    // Pool: (300 − 256) × 9/10 = 39 flows, read when the worker starts.
    let old = set_soft_limit(300);
    let mut worker = Worker::start();
    // SAFETY: valid in-pointer.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &old) };

    // Long timeouts: no flow ends during the test (the backend is silent).
    let long_lived = |address: SocketAddr, max_flows: u32| {
        let mut config = udp_listener(address);
        config.front_timeout = 300;
        config.back_timeout = 300;
        config.max_flows = max_flows;
        config
    };
    let backend_socket = udp_socket("127.0.0.1");
    worker.ok(RequestType::AddCluster(udp_cluster(
        "c",
        UdpClusterConfig::default(),
    )));
    worker.ok(RequestType::AddBackend(backend(
        "c",
        "b1",
        backend_socket.local_addr().unwrap(),
    )));
    let busy = free_udp_addr("127.0.0.1");
    let quiet = free_udp_addr("127.0.0.1");
    let capped = free_udp_addr("127.0.0.1");
    for (address, max_flows) in [(busy, 0), (quiet, 0), (capped, 2)] {
        worker.ok(RequestType::AddUdpListener(long_lived(address, max_flows)));
        worker.ok(RequestType::AddUdpFrontend(frontend("c", address)));
    }

    // Three listeners: fair share 13, reserve min(13, 39 / 8) = 4. The
    // busy one takes 39 − 4 = 35 (a static third would have been 13).
    let _busy_clients = new_sources(&mut worker, busy, 50, 0);
    assert_eq!(worker.metric(&format!("udp.active_flows@{busy}")), 35);
    assert_eq!(worker.metric(&format!("udp.flows.shed@{busy}")), 15);

    // The explicit cap holds even with the reserve free.
    let _capped_clients = new_sources(&mut worker, capped, 3, 0);
    assert_eq!(worker.metric(&format!("udp.active_flows@{capped}")), 2);
    assert_eq!(worker.metric(&format!("udp.flows.shed@{capped}")), 1);

    // The quiet listener, below its share, gets what the reserve has left.
    let _quiet_clients = new_sources(&mut worker, quiet, 4, 0);
    assert_eq!(worker.metric(&format!("udp.active_flows@{quiet}")), 2);
    assert_eq!(worker.metric(&format!("udp.flows.shed@{quiet}")), 2);
    assert_eq!(worker.metric("udp.active_flows"), 39);
    assert_eq!(worker.metric("udp.upstream.open_failed"), 0);
}
