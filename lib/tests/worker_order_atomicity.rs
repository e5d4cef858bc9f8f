//! An order is all-or-nothing in a worker: when the worker's state accepts
//! it and a later part refuses it (the shared cluster checks, the UDP
//! shell, the sockets), nothing of it stays, neither in the state nor on
//! the UDP side, and the answer names the field and the value.

mod worker_common;

use std::time::Duration;

use sozu_command_lib::command::{
    request::RequestType, response_content::ContentType, Cluster, ListClusters, ResponseStatus,
    UdpClusterConfig, UdpFlowKey,
};
use worker_common::*;

fn cluster_config(worker: &mut Worker, id: &str) -> Cluster {
    let answer = worker.order(RequestType::ListClusters(ListClusters {}));
    let Some(ContentType::Clusters(clusters)) = answer.content.and_then(|c| c.content_type) else {
        panic!("list_clusters gave no clusters");
    };
    clusters
        .vec
        .into_iter()
        .filter_map(|c| c.configuration)
        .find(|c| c.cluster_id == id)
        .expect("the cluster is listed")
}

#[test]
fn a_cluster_order_refused_after_the_state_accepted_it_changes_nothing() {
    let mut worker = Worker::start();
    let (listener, backend) = simple_setup(&mut worker, UdpClusterConfig::default());
    let before = cluster_config(&mut worker, "c");

    // A live flow, routed to b1.
    let client = udp_socket("127.0.0.1");
    client.send_to(b"one", listener).unwrap();
    let (_, upstream) = recv(&backend);

    // The state takes a DNS_ID flow key on a one-way cluster; the
    // worker's cluster checks refuse the pair (DNS_ID answers). The same
    // order also asks for `responses = 1`, which must not reach the UDP
    // side.
    let refused = worker.order(RequestType::AddCluster(udp_cluster(
        "c",
        UdpClusterConfig {
            responses: Some(1),
            flow_key: Some(UdpFlowKey::DnsId as i32),
            one_way: Some(true),
            ..Default::default()
        },
    )));
    assert_eq!(refused.status, ResponseStatus::Failure as i32);
    assert!(
        refused.message.contains("udp.flow_key") && refused.message.contains("DNS_ID"),
        "{}",
        refused.message
    );

    // The state is as it was.
    assert_eq!(cluster_config(&mut worker, "c"), before);

    // The live flow still goes to the same backend through the same
    // upstream socket.
    client.send_to(b"two", listener).unwrap();
    let (payload, from) = recv(&backend);
    assert_eq!((payload.as_slice(), from), (&b"two"[..], upstream));

    // A new flow still has no response cap: two answers to one request
    // both reach the client (with `responses = 1` applied, the flow would
    // close after the first and drop the second).
    let fresh = udp_socket("127.0.0.1");
    fresh.send_to(b"ask", listener).unwrap();
    let (_, fresh_upstream) = recv(&backend);
    backend.send_to(b"answer 1", fresh_upstream).unwrap();
    backend.send_to(b"answer 2", fresh_upstream).unwrap();
    assert_eq!(recv(&fresh).0, b"answer 1");
    assert_eq!(recv(&fresh).0, b"answer 2");

    // And a valid order on the same cluster is still accepted and applied.
    worker.ok(RequestType::AddCluster(udp_cluster(
        "c",
        UdpClusterConfig {
            responses: Some(1),
            ..Default::default()
        },
    )));
    let capped = cluster_config(&mut worker, "c");
    assert_eq!(capped.udp.and_then(|u| u.responses), Some(1));
    let third = udp_socket("127.0.0.1");
    third.send_to(b"ask", listener).unwrap();
    let (_, third_upstream) = recv(&backend);
    backend.send_to(b"answer 1", third_upstream).unwrap();
    assert_eq!(recv(&third).0, b"answer 1");
    // The positive signal beside the "nothing more arrives" check: the
    // capped flow was closed (the counter moved).
    worker.wait_metric("udp.flows.evicted", |n| n >= 1);
    backend.send_to(b"answer 2", third_upstream).unwrap();
    assert!(try_recv(&third, Duration::from_millis(300)).is_none());
}
