//! The worker serving UDP end to end, in-process, on loopback sockets.

mod worker_common;

use sozu_command_lib::command::UdpClusterConfig;
use worker_common::*;

#[test]
fn dns_like_flow_with_one_response_closes_after_the_reply() {
    let mut worker = Worker::start();
    let (listener, backend) = simple_setup(
        &mut worker,
        UdpClusterConfig {
            responses: Some(1),
            ..Default::default()
        },
    );
    let client = udp_socket("127.0.0.1");
    client.send_to(b"query", listener).unwrap();
    let (payload, upstream) = recv(&backend);
    assert_eq!(payload, b"query");
    backend.send_to(b"answer", upstream).unwrap();
    let (reply, from) = recv(&client);
    assert_eq!(reply, b"answer");
    assert_eq!(from, listener, "the reply comes from the listener address");
    let key = format!("udp.active_flows@{listener}");
    worker.wait_metric(&key, |v| v == 0);
    assert_eq!(worker.metric(&format!("udp.flows.created@{listener}")), 1);
    assert_eq!(worker.metric(&format!("udp.flows.evicted@{listener}")), 1);
    // A second answer on the closed flow is not delivered.
    backend.send_to(b"late", upstream).unwrap();
    assert!(try_recv(&client, std::time::Duration::from_millis(200)).is_none());
}
