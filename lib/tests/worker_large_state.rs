//! A worker given a large state (20,000 orders, as the master replays to a
//! new worker at boot, restart or upgrade) applies all of it, serves, and
//! still takes back an order its sockets refuse, whatever the size of the
//! state. The linear cost per order is proven where the undo point is made
//! (`command/src/state/property_tests.rs`, no whole-state snapshot during a
//! replay); this test proves the worker end to end.
//!
//! An answer too large for the channel (a list of every cluster) is a
//! FAILURE naming the sizes, never silence.
//!
//! `SOZU_BOOT_ORDERS=N` changes the number of orders; the time the worker
//! took to apply them, and to answer the refused order after them, are
//! printed (`--nocapture`) for doc/benchmark.md's "Control plane" section,
//! never asserted.

mod worker_common;

use std::net::UdpSocket;
use std::time::Instant;

use sozu_command_lib::command::{
    request::RequestType, response_content::ContentType, ListClusters, ListListeners,
    ResponseStatus, Status, UdpClusterConfig,
};
use sozu_lib::server::ServerConfig;
use worker_common::*;

/// Orders sent before their answers are read: enough to keep the worker
/// busy, few enough that neither side's buffers fill.
const BATCH: usize = 256;

/// The channel's largest message here: room for `list_clusters` over
/// 25,000 clusters (50,000 orders), as a master configured for such a state
/// (`max_command_buffer_size`) gives its workers.
const LARGE_CHANNEL: usize = 16 << 20;

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

/// Sends `orders` in batches; every one must be accepted.
fn apply_all(worker: &mut Worker, orders: &[RequestType]) {
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
}

#[test]
fn a_worker_boots_from_a_large_state_serves_and_still_rolls_back() {
    let wanted = orders_wanted();
    let mut worker = Worker::start_with_channel_max(ServerConfig::default(), LARGE_CHANNEL);
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
    apply_all(&mut worker, &orders);
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
    #[allow(clippy::disallowed_methods)]
    let asked = Instant::now();
    let refused = worker.order(RequestType::AddUdpListener(udp_listener(busy)));
    eprintln!(
        "refused order answered in {:?} after {} orders",
        asked.elapsed(),
        orders.len()
    );
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

/// An answer larger than the channel carries (here `list_clusters` over
/// 4,000 clusters through a 64 KiB channel) used to be dropped with a log
/// line: the order got no answer at all and its sender waited until its
/// timeout (what a 50,000-order state did to the test above with a 1 MB
/// channel). The order gets a FAILURE naming the sizes, and the worker
/// answers the next order.
#[test]
fn an_answer_too_large_for_the_channel_is_a_failure_not_silence() {
    let max = 64 * 1024;
    let mut worker = Worker::start_with_channel_max(ServerConfig::default(), max);
    let orders: Vec<RequestType> = (0..4_000)
        .map(|i| {
            RequestType::AddCluster(udp_cluster(
                &format!("bulk{i}"),
                UdpClusterConfig::default(),
            ))
        })
        .collect();
    apply_all(&mut worker, &orders);
    let answer = worker.order(RequestType::ListClusters(ListClusters {}));
    assert_eq!(
        answer.status,
        ResponseStatus::Failure as i32,
        "{}",
        answer.message
    );
    assert!(
        answer
            .message
            .contains(&format!("exceeds the maximum of {max} bytes")),
        "{}",
        answer.message
    );
    assert_eq!(answer.content, None);
    let status = worker.order(RequestType::Status(Status {}));
    assert_eq!(
        status.status,
        ResponseStatus::Ok as i32,
        "{}",
        status.message
    );
}
