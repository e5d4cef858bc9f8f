//! A worker's side of a live-flow handover through its orders and its
//! fd-passing socket: `return_flows` passes a flow's upstream socket, and
//! the same flows given back (`adopt_listen_sockets` with `flows_follow`,
//! then `adopt_flows`) are served again from the same upstream port, with
//! the listeners read again (the master's give-back after a failed boot).

mod worker_common;

use std::os::fd::AsFd;

use sozu_command_lib::command::{
    request::RequestType, AdoptFlows, AdoptListenSockets, ListenSocketManifest, ResponseStatus,
    ReturnFlows, UdpClusterConfig,
};
use sozu_command_lib::scm::DEFAULT_MAX_FLOW_MANIFEST_SIZE;
use worker_common::*;

#[test]
fn flows_returned_then_given_back_keep_their_upstream_port_and_the_listener_is_read_again() {
    let mut worker = Worker::start_with_scm();
    let (listener, backend) = simple_setup(&mut worker, UdpClusterConfig::default());
    let client = udp_socket("127.0.0.1");
    client.send_to(b"one", listener).unwrap();
    let (payload, upstream) = recv(&backend);
    assert_eq!(payload, b"one");

    let answer = worker.order(RequestType::ReturnFlows(ReturnFlows {}));
    assert_eq!(
        answer.status,
        ResponseStatus::Ok as i32,
        "{}",
        answer.message
    );
    let scm = worker.scm.as_ref().unwrap();
    let (manifest, fds) = scm.receive_flows(DEFAULT_MAX_FLOW_MANIFEST_SIZE).unwrap();
    assert_eq!(manifest.flows.len(), 1);
    let passed = std::net::UdpSocket::from(fds[0].try_clone().unwrap());
    assert_eq!(
        passed.local_addr().unwrap(),
        upstream,
        "not the flow's socket"
    );
    worker.wait_metric("udp.flows.handed_over", |v| v == 1);
    assert_eq!(worker.metric("udp.active_flows"), 0);

    // Given back: the empty socket sequence, then the flows.
    let adopt_sockets = worker.send(RequestType::AdoptListenSockets(AdoptListenSockets {
        manifest: ListenSocketManifest::default(),
        flows_follow: Some(true),
    }));
    let scm = worker.scm.as_ref().unwrap();
    scm.send_listen_sockets(&ListenSocketManifest::default(), &[])
        .unwrap();
    let borrowed: Vec<_> = fds.iter().map(|fd| fd.as_fd()).collect();
    scm.send_flows(&manifest, &borrowed).unwrap();
    drop(borrowed);
    drop(fds);
    drop(passed);
    let answer = worker.answer(&adopt_sockets);
    assert_eq!(
        answer.status,
        ResponseStatus::Ok as i32,
        "{}",
        answer.message
    );
    let answer = worker.order(RequestType::AdoptFlows(AdoptFlows {}));
    assert_eq!(
        answer.status,
        ResponseStatus::Ok as i32,
        "{}",
        answer.message
    );
    assert!(
        answer.message.starts_with("1 flows adopted"),
        "{}",
        answer.message
    );
    assert_eq!(worker.metric("udp.flows.adopted"), 1);

    // The flow goes on from the same port, both ways.
    client.send_to(b"two", listener).unwrap();
    assert_eq!(recv(&backend), (b"two".to_vec(), upstream));
    backend.send_to(b"pong", upstream).unwrap();
    assert_eq!(recv(&client), (b"pong".to_vec(), listener));
    // The listener is read again: a new client gets a flow of its own.
    let newcomer = udp_socket("127.0.0.1");
    newcomer.send_to(b"hello", listener).unwrap();
    let (payload, other) = recv(&backend);
    assert_eq!(payload, b"hello");
    assert_ne!(other, upstream);
    assert_eq!(worker.metric("udp.flows.created"), 2);
}
