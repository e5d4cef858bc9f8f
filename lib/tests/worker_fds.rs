//! File-descriptor accounting of the worker: flows must give their upstream
//! socket back. Its own test binary, and every test holds `FD_LOCK`, because
//! threads of one binary share the fd table.

mod worker_common;

use std::net::UdpSocket;
use std::sync::Mutex;

use sozu_command_lib::command::{
    request::RequestType, DeactivateListener, ListenerType, UdpClusterConfig,
};
use worker_common::*;

static FD_LOCK: Mutex<()> = Mutex::new(());

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Polls until the fd count is back to `baseline` (bounded).
fn wait_fds(baseline: usize) {
    let mut now = open_fds();
    for _ in 0..POLL_ROUNDS {
        if now == baseline {
            return;
        }
        std::thread::sleep(POLL_PAUSE);
        now = open_fds();
    }
    assert_eq!(now, baseline, "fds not back to the idle baseline");
}

#[test]
fn idle_expiry_on_two_listeners_at_once_frees_every_upstream_fd() {
    let _serial = FD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut worker = Worker::start();
    let (first, backend) = simple_setup(&mut worker, UdpClusterConfig::default());
    let second = free_udp_addr("127.0.0.1");
    worker.ok(RequestType::AddUdpListener(udp_listener(second)));
    worker.ok(RequestType::AddUdpFrontend(frontend("c", second)));
    let clients: Vec<UdpSocket> = (0..8).map(|_| udp_socket("127.0.0.1")).collect();
    let baseline = open_fds();
    for (i, client) in clients.iter().enumerate() {
        let listener = if i % 2 == 0 { first } else { second };
        client.send_to(b"x", listener).unwrap();
        recv(&backend);
    }
    assert_eq!(open_fds(), baseline + 8, "one upstream socket per flow");
    // Both listeners' flows share the 1 s idle timeout and expire together.
    worker.wait_metric(&format!("udp.active_flows@{first}"), |v| v == 0);
    worker.wait_metric(&format!("udp.active_flows@{second}"), |v| v == 0);
    wait_fds(baseline);
    assert_eq!(worker.metric(&format!("udp.flows.evicted@{first}")), 4);
    assert_eq!(worker.metric(&format!("udp.flows.evicted@{second}")), 4);
}

#[test]
fn deactivate_closes_every_flow_and_upstream_fd_and_keeps_the_socket() {
    let _serial = FD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut worker = Worker::start();
    let (listener, backend) = simple_setup(&mut worker, UdpClusterConfig::default());
    let clients: Vec<UdpSocket> = (0..5).map(|_| udp_socket("127.0.0.1")).collect();
    let baseline = open_fds();
    for client in &clients {
        client.send_to(b"x", listener).unwrap();
        recv(&backend);
    }
    assert_eq!(worker.metric(&format!("udp.active_flows@{listener}")), 5);
    assert_eq!(open_fds(), baseline + 5);
    worker.ok(RequestType::DeactivateListener(DeactivateListener {
        address: listener.into(),
        proxy: ListenerType::Udp as i32,
        to_scm: false,
    }));
    assert_eq!(worker.metric(&format!("udp.active_flows@{listener}")), 0);
    // The listener socket stays open (deactivated, not removed).
    assert_eq!(open_fds(), baseline);
    clients[0].send_to(b"ignored", listener).unwrap();
    // The positive signal: the datagram sits unread in the listener
    // socket's receive queue (the kernel's count), and nothing was read.
    let queued = (0..200).any(|_| {
        if listener_rx_queue(listener) > 0 {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
        false
    });
    assert!(queued, "the datagram never reached the deactivated socket");
    assert!(try_recv(&backend, std::time::Duration::from_millis(300)).is_none());
    assert_eq!(worker.metric(&format!("udp.datagrams.in@{listener}")), 5);
}

/// Bytes queued unread on the unconnected UDP socket(s) bound to
/// `listener`'s port, from `/proc/net/udp`.
fn listener_rx_queue(listener: std::net::SocketAddr) -> u64 {
    let port = |field: &str| {
        field
            .rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok())
    };
    std::fs::read_to_string("/proc/net/udp")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || port(f[1]) != Some(listener.port()) || port(f[2]) != Some(0) {
                return None;
            }
            u64::from_str_radix(f[4].split(':').nth(1)?, 16).ok()
        })
        .sum()
}

#[test]
fn removing_a_listener_closes_its_socket_too() {
    let _serial = FD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut worker = Worker::start();
    let before = open_fds();
    let (listener, backend) = simple_setup(&mut worker, UdpClusterConfig::default());
    let client = udp_socket("127.0.0.1");
    client.send_to(b"x", listener).unwrap();
    recv(&backend);
    worker.ok(RequestType::RemoveListener(
        sozu_command_lib::command::RemoveListener {
            address: listener.into(),
            proxy: ListenerType::Udp as i32,
        },
    ));
    // Back to before the setup, plus the test's own client and backend.
    wait_fds(before + 2);
}
