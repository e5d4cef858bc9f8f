//! A worker given a large state (20,000 orders, as the master replays to a
//! new worker at boot, restart or upgrade) applies all of it, serves, and
//! still takes back an order its sockets refuse, whatever the size of the
//! state. The linear cost per order is proven where the undo point is made
//! (`command/src/state/property_tests.rs`, no whole-state snapshot during a
//! replay); this test proves the worker end to end.
//!
//! `SOZU_BOOT_ORDERS=N` changes the number of orders; the time the worker
//! took to apply them is printed (`--nocapture`) for doc/benchmark.md's
//! "Control plane" section, never asserted.

mod worker_common;

use std::net::UdpSocket;
use std::time::Instant;

use sozu_command_lib::command::{
    request::RequestType, response_content::ContentType, ListClusters, ListListeners,
    ResponseStatus, UdpClusterConfig,
};
use worker_common::*;

/// Orders sent before their answers are read: enough to keep the worker
/// busy, few enough that neither side's buffers fill.
const BATCH: usize = 256;

fn orders_wanted() -> usize {
    std::env::var("SOZU_BOOT_ORDERS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000)
}

fn cluster_count(worker: &mut Worker) -> usize {
    let answer = worker.order(RequestType::ListClusters(ListClusters {}));
    match answer.content.and_then(|c| c.content_type) {
        Some(ContentType::Clusters(clusters)) => clusters.vec.len(),
        other => panic!("list_clusters answered {other:?}"),
    }
}

fn udp_listener_count(worker: &mut Worker) -> usize {
    let answer = worker.order(RequestType::ListListeners(ListListeners {}));
    match answer.content.and_then(|c| c.content_type) {
        Some(ContentType::ListenersList(list)) => list.udp_listeners.len(),
        other => panic!("list_listeners answered {other:?}"),
    }
}

#[test]
fn a_worker_boots_from_a_large_state_serves_and_still_rolls_back() {
    let wanted = orders_wanted();
    let mut worker = Worker::start();
    // Half clusters, half backends: what a large fleet's state is made of.
    let mut orders = Vec::with_capacity(wanted);
    for i in 0..wanted / 2 {
        let cluster = format!("bulk{i}");
        orders.push(RequestType::AddCluster(udp_cluster(
            &cluster,
            UdpClusterConfig::default(),
        )));
        let address = format!("127.0.0.1:{}", 20_000 + i % 20_000);
        orders.push(RequestType::AddBackend(backend(
            &cluster,
            "b",
            address.parse().unwrap(),
        )));
    }
    // A test that reports a duration reads the clock (printed, never
    // asserted).
    #[allow(clippy::disallowed_methods)]
    let started = Instant::now();
    for batch in orders.chunks(BATCH) {
        let ids: Vec<String> = batch.iter().map(|o| worker.send(o.clone())).collect();
        for id in ids {
            let answer = worker.answer(&id);
            assert_eq!(
                answer.status,
                ResponseStatus::Ok as i32,
                "{id}: {}",
                answer.message
            );
        }
    }
    eprintln!(
        "worker applied {} orders in {:?}",
        orders.len(),
        started.elapsed()
    );
    assert_eq!(cluster_count(&mut worker), wanted / 2);

    // It serves: a listener, a cluster and a real backend on top.
    let (listener, backend_socket) = simple_setup(&mut worker, UdpClusterConfig::default());
    let client = udp_socket("127.0.0.1");
    client.send_to(b"hello", listener).unwrap();
    let (payload, _) = recv(&backend_socket);
    assert_eq!(payload, b"hello");

    // An order the state accepts and the sockets refuse (the address is
    // held by a socket without SO_REUSEPORT) is taken back: the error names
    // the listener, the state holds what it held, and traffic still flows.
    let clusters = cluster_count(&mut worker);
    let listeners = udp_listener_count(&mut worker);
    let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap();
    let refused = worker.order(RequestType::AddUdpListener(udp_listener(busy)));
    assert_eq!(refused.status, ResponseStatus::Failure as i32);
    assert!(
        refused.message.contains("bind") && refused.message.contains(&busy.to_string()),
        "{}",
        refused.message
    );
    assert_eq!(udp_listener_count(&mut worker), listeners);
    assert_eq!(cluster_count(&mut worker), clusters);
    client.send_to(b"again", listener).unwrap();
    let (payload, _) = recv(&backend_socket);
    assert_eq!(payload, b"again");
}
