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
    // The positive signal: the client's next query opens a new flow, and
    // its answer is the next datagram the client gets (a late "late" would
    // come first).
    client.send_to(b"again", listener).unwrap();
    let (payload, upstream2) = recv(&backend);
    assert_eq!(payload, b"again");
    assert_ne!(upstream2, upstream);
    backend.send_to(b"answer 2", upstream2).unwrap();
    assert_eq!(recv(&client).0, b"answer 2");
    assert_eq!(worker.metric(&format!("udp.datagrams.out@{listener}")), 2);
}

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use sozu_command_lib::command::{
    request::RequestType, response_content::ContentType, HardStop, QueryMetricsOptions,
    RemoveBackend, ResponseStatus, SoftStop, Status, UdpHealthConfig, UdpHealthMode,
    UpdateUdpListenerConfig,
};
use sozu_lib::server::ServerExit;

const SHORT: Duration = Duration::from_millis(300);

#[test]
fn one_way_syslog_like_flow_delivers_every_datagram_on_one_upstream_and_expires() {
    let mut worker = Worker::start();
    let (listener, backend) = simple_setup(&mut worker, UdpClusterConfig::default());
    let client = udp_socket("127.0.0.1");
    let mut upstreams = Vec::new();
    for i in 0..5u8 {
        client.send_to(&[b'l', i], listener).unwrap();
        let (payload, from) = recv(&backend);
        assert_eq!(payload, [b'l', i]);
        upstreams.push(from);
    }
    upstreams.dedup();
    assert_eq!(upstreams.len(), 1, "one flow, one upstream source port");
    assert_eq!(worker.metric(&format!("udp.active_flows@{listener}")), 1);
    assert_eq!(worker.metric(&format!("udp.datagrams.in@{listener}")), 5);
    assert_eq!(worker.metric(&format!("udp.bytes.in@{listener}")), 10);
    assert_eq!(worker.metric("c/udp.datagrams.in"), 5);
    assert_eq!(worker.metric("c/b1/udp.datagrams.in"), 5);
    // No reply ever: the flow ends on its 1 s idle timeout.
    worker.wait_metric(&format!("udp.active_flows@{listener}"), |v| v == 0);
    assert_eq!(worker.metric(&format!("udp.flows.evicted@{listener}")), 1);
}

#[test]
fn sticky_flows_keep_their_backend_for_many_datagrams_both_ways() {
    let mut worker = Worker::start();
    let (listener, b1) = simple_setup(&mut worker, UdpClusterConfig::default());
    let b2 = udp_socket("127.0.0.1");
    worker.ok(RequestType::AddBackend(backend(
        "c",
        "b2",
        b2.local_addr().unwrap(),
    )));
    let first = udp_socket("127.0.0.1");
    let second = udp_socket("127.0.0.1");
    first.send_to(b"hello", listener).unwrap();
    // Round robin: whichever backend got the first flow, the second flow
    // goes to the other one.
    let (first_backend, other) = match try_recv(&b1, WAIT) {
        Some(_) => (&b1, &b2),
        None => (&b2, &b1),
    };
    second.send_to(b"hello", listener).unwrap();
    recv(other);
    for round in 0..10u8 {
        first.send_to(&[round], listener).unwrap();
        let (payload, upstream) = recv(first_backend);
        assert_eq!(payload, [round], "the first flow stays on its backend");
        first_backend.send_to(&[round, round], upstream).unwrap();
        let (reply, from) = recv(&first);
        assert_eq!(reply, [round, round]);
        assert_eq!(from, listener);
    }
    assert!(try_recv(other, SHORT).is_none());
    // The positive signal: exactly the 12 datagrams seen above were
    // forwarded (2 hellos, 10 rounds all received by the first backend).
    assert_eq!(worker.metric(&format!("udp.datagrams.in@{listener}")), 12);
    assert_eq!(worker.metric(&format!("udp.flows.created@{listener}")), 2);
    assert_eq!(worker.metric(&format!("udp.datagrams.out@{listener}")), 10);
}

#[test]
fn requests_cap_closes_the_flow_and_the_next_datagram_opens_a_new_one() {
    let mut worker = Worker::start();
    let (listener, backend) = simple_setup(
        &mut worker,
        UdpClusterConfig {
            requests: Some(2),
            ..Default::default()
        },
    );
    let client = udp_socket("127.0.0.1");
    client.send_to(b"1", listener).unwrap();
    let (_, first) = recv(&backend);
    client.send_to(b"2", listener).unwrap();
    let (_, same) = recv(&backend);
    assert_eq!(first, same);
    client.send_to(b"3", listener).unwrap();
    let (payload, next) = recv(&backend);
    assert_eq!(payload, b"3");
    assert_ne!(next, first, "a new flow, a new upstream socket");
    assert_eq!(worker.metric(&format!("udp.flows.created@{listener}")), 2);
}

#[test]
fn a_burst_of_32_on_a_new_flow_arrives_whole_and_in_order() {
    let mut worker = Worker::start();
    let (listener, backend) = simple_setup(&mut worker, UdpClusterConfig::default());
    let client = udp_socket("127.0.0.1");
    for i in 0..32u8 {
        client.send_to(&[i; 8], listener).unwrap();
    }
    for i in 0..32u8 {
        let (payload, _) = recv(&backend);
        assert_eq!(payload, [i; 8], "datagram {i} in order");
    }
    assert_eq!(worker.metric(&format!("udp.flows.created@{listener}")), 1);
}

#[test]
fn the_source_beyond_max_flows_is_shed_and_counted() {
    let mut worker = Worker::start();
    let listener = free_udp_addr("127.0.0.1");
    let backend_socket = udp_socket("127.0.0.1");
    let mut config = udp_listener(listener);
    config.max_flows = 2;
    worker.ok(RequestType::AddUdpListener(config));
    worker.ok(RequestType::AddCluster(udp_cluster(
        "c",
        Default::default(),
    )));
    worker.ok(RequestType::AddBackend(backend(
        "c",
        "b1",
        backend_socket.local_addr().unwrap(),
    )));
    worker.ok(RequestType::AddUdpFrontend(frontend("c", listener)));
    let clients: Vec<UdpSocket> = (0..3).map(|_| udp_socket("127.0.0.1")).collect();
    for client in &clients[..2] {
        client.send_to(b"in", listener).unwrap();
        recv(&backend_socket);
    }
    clients[2].send_to(b"shed", listener).unwrap();
    worker.wait_metric(&format!("udp.datagrams.dropped.shed@{listener}"), |v| {
        v == 1
    });
    assert!(try_recv(&backend_socket, SHORT).is_none());
    assert_eq!(
        worker.metric(&format!("udp.datagrams.dropped.shed@{listener}")),
        1
    );
    assert_eq!(worker.metric(&format!("udp.active_flows@{listener}")), 2);
    // Raising max_flows in place admits it (no re-bind).
    worker.ok(RequestType::UpdateUdpListener(UpdateUdpListenerConfig {
        address: listener.into(),
        max_flows: Some(3),
        ..Default::default()
    }));
    clients[2].send_to(b"now", listener).unwrap();
    assert_eq!(recv(&backend_socket).0, b"now");
}

#[test]
fn removing_a_backend_closes_its_flows_unless_the_cluster_keeps_them() {
    for keep in [false, true] {
        let mut worker = Worker::start();
        let (listener, b1) = simple_setup(
            &mut worker,
            UdpClusterConfig {
                keep_flows_on_backend_removal: Some(keep),
                ..Default::default()
            },
        );
        let client = udp_socket("127.0.0.1");
        client.send_to(b"a", listener).unwrap();
        let (_, upstream) = recv(&b1);
        worker.ok(RequestType::RemoveBackend(RemoveBackend {
            cluster_id: "c".into(),
            backend_id: "b1".into(),
            address: b1.local_addr().unwrap().into(),
        }));
        let active = worker.metric(&format!("udp.active_flows@{listener}"));
        if keep {
            assert_eq!(active, 1);
            b1.send_to(b"still", upstream).unwrap();
            assert_eq!(recv(&client).0, b"still");
        } else {
            assert_eq!(active, 0);
            // The flow was closed (counted), so its reply reaches nobody.
            assert_eq!(worker.metric(&format!("udp.flows.evicted@{listener}")), 1);
            b1.send_to(b"gone", upstream).unwrap();
            assert!(try_recv(&client, SHORT).is_none());
            // With no backend left, a new source is dropped, and counted.
            client.send_to(b"b", listener).unwrap();
            worker.wait_metric(
                &format!("udp.datagrams.dropped.flow_closed@{listener}"),
                |v| v == 1,
            );
            assert!(try_recv(&b1, SHORT).is_none());
            assert_eq!(worker.metric(&format!("udp.datagrams.out@{listener}")), 0);
        }
    }
}

/// Parses a PROXY v2 header for UDP over IPv4: (client, destination, rest).
fn parse_proxy_v2(datagram: &[u8]) -> Option<(SocketAddr, SocketAddr, &[u8])> {
    const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
    if datagram.len() < 28 || datagram[..12] != SIGNATURE {
        return None;
    }
    assert_eq!(datagram[12], 0x21, "version 2, PROXY");
    assert_eq!(datagram[13], 0x12, "IPv4 / DGRAM");
    assert_eq!(u16::from_be_bytes([datagram[14], datagram[15]]), 12);
    let ip = |b: &[u8]| std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]);
    let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
    let src = SocketAddr::from((ip(&datagram[16..20]), port(&datagram[24..26])));
    let dst = SocketAddr::from((ip(&datagram[20..24]), port(&datagram[26..28])));
    Some((src, dst, &datagram[28..]))
}

#[test]
fn proxy_protocol_v2_on_the_first_datagram_only_or_on_every_one() {
    for every in [false, true] {
        let mut worker = Worker::start();
        let (listener, backend) = simple_setup(
            &mut worker,
            UdpClusterConfig {
                send_proxy_protocol: Some(true),
                proxy_protocol_every_datagram: Some(every),
                ..Default::default()
            },
        );
        let client = udp_socket("127.0.0.1");
        for i in 0..3u8 {
            client.send_to(&[i; 4], listener).unwrap();
            let (datagram, _) = recv(&backend);
            match parse_proxy_v2(&datagram) {
                Some((src, dst, rest)) => {
                    assert!(every || i == 0, "header on datagram {i} (every = {every})");
                    assert_eq!(src, client.local_addr().unwrap());
                    assert_eq!(dst, listener);
                    assert_eq!(rest, [i; 4]);
                }
                None => {
                    assert!(
                        !every && i > 0,
                        "no header on datagram {i} (every = {every})"
                    );
                    assert_eq!(datagram, [i; 4]);
                }
            }
        }
    }
}

#[test]
fn ipv6_listener_and_backend() {
    let mut worker = Worker::start();
    let listener = free_udp_addr("::1");
    let backend_socket = udp_socket("::1");
    worker.ok(RequestType::AddUdpListener(udp_listener(listener)));
    worker.ok(RequestType::AddCluster(udp_cluster(
        "c",
        Default::default(),
    )));
    worker.ok(RequestType::AddBackend(backend(
        "c",
        "b1",
        backend_socket.local_addr().unwrap(),
    )));
    worker.ok(RequestType::AddUdpFrontend(frontend("c", listener)));
    let client = udp_socket("::1");
    client.send_to(b"six", listener).unwrap();
    let (payload, upstream) = recv(&backend_socket);
    assert_eq!(payload, b"six");
    assert!(upstream.is_ipv6());
    backend_socket.send_to(b"back", upstream).unwrap();
    let (reply, from) = recv(&client);
    assert_eq!(reply, b"back");
    assert_eq!(from, listener);
}

#[test]
fn an_oversized_datagram_is_dropped_and_counted() {
    let mut worker = Worker::start();
    let listener = free_udp_addr("127.0.0.1");
    let backend_socket = udp_socket("127.0.0.1");
    let mut config = udp_listener(listener);
    config.max_rx_datagram_size = 100;
    worker.ok(RequestType::AddUdpListener(config));
    worker.ok(RequestType::AddCluster(udp_cluster(
        "c",
        Default::default(),
    )));
    worker.ok(RequestType::AddBackend(backend(
        "c",
        "b1",
        backend_socket.local_addr().unwrap(),
    )));
    worker.ok(RequestType::AddUdpFrontend(frontend("c", listener)));
    let client = udp_socket("127.0.0.1");
    client.send_to(&[1; 101], listener).unwrap();
    client.send_to(&[2; 100], listener).unwrap();
    let (payload, upstream) = recv(&backend_socket);
    assert_eq!(payload, [2; 100], "the 101-byte datagram never arrives");
    worker.wait_metric(
        &format!("udp.datagrams.dropped.truncated@{listener}"),
        |v| v == 1,
    );
    // An oversized reply is dropped too.
    backend_socket.send_to(&[3; 500], upstream).unwrap();
    backend_socket.send_to(&[4; 10], upstream).unwrap();
    assert_eq!(recv(&client).0, [4; 10]);
    assert_eq!(
        worker.metric(&format!("udp.datagrams.dropped.truncated@{listener}")),
        2
    );
}

#[test]
fn a_reply_on_an_unknown_flow_is_ignored_and_service_goes_on() {
    let mut worker = Worker::start();
    let (listener, backend) = simple_setup(
        &mut worker,
        UdpClusterConfig {
            responses: Some(1),
            ..Default::default()
        },
    );
    let client = udp_socket("127.0.0.1");
    client.send_to(b"q1", listener).unwrap();
    let (_, upstream) = recv(&backend);
    backend.send_to(b"a1", upstream).unwrap();
    assert_eq!(recv(&client).0, b"a1");
    worker.wait_metric(&format!("udp.active_flows@{listener}"), |v| v == 0);
    // The flow is gone (its socket closed): a late reply reaches nobody.
    backend.send_to(b"stale", upstream).unwrap();
    assert!(try_recv(&client, SHORT).is_none());
    // The next query is a new flow and is answered.
    client.send_to(b"q2", listener).unwrap();
    let (payload, upstream2) = recv(&backend);
    assert_eq!(payload, b"q2");
    backend.send_to(b"a2", upstream2).unwrap();
    assert_eq!(recv(&client).0, b"a2");
}

#[test]
fn a_silent_backend_is_marked_down_by_its_probe_and_comes_back_up() {
    let mut worker = Worker::start();
    let (listener, backend_socket) = simple_setup(
        &mut worker,
        UdpClusterConfig {
            health: Some(UdpHealthConfig {
                mode: Some(UdpHealthMode::UdpProbe as i32),
                rise: Some(1),
                fall: Some(1),
                fail_open: Some(false),
                udp_probe_payload: Some(b"probe".to_vec()),
                probe_interval_seconds: Some(1),
                probe_timeout_seconds: Some(1),
                tcp_port: None,
            }),
            ..Default::default()
        },
    );
    // The backend stays silent: its probe times out.
    worker.wait_metric_present("c/b1/udp.backend.up", 0);
    let client = udp_socket("127.0.0.1");
    client.send_to(b"data", listener).unwrap();
    // fail_open = false: no flow reaches a down backend. Probes may still
    // arrive; data must not.
    for _ in 0..3 {
        if let Some((payload, _)) = try_recv(&backend_socket, SHORT) {
            assert_eq!(payload, b"probe");
        }
    }
    // The backend answers probes again: it comes back up.
    let answered = (0..POLL_ROUNDS).find_map(|_| {
        let (payload, from) = try_recv(&backend_socket, SHORT)?;
        assert_eq!(payload, b"probe");
        backend_socket.send_to(b"pong", from).unwrap();
        (worker.metric("c/b1/udp.backend.up") == 1).then_some(())
    });
    assert!(answered.is_some(), "the backend never came back up");
    client.send_to(b"data2", listener).unwrap();
    loop {
        let (payload, _) = recv(&backend_socket);
        if payload != b"probe" {
            assert_eq!(payload, b"data2");
            break;
        }
    }
}

#[test]
fn soft_stop_serves_the_live_flow_refuses_new_sources_and_exits_when_drained() {
    let mut worker = Worker::start();
    let (listener, backend) = simple_setup(&mut worker, UdpClusterConfig::default());
    let live = udp_socket("127.0.0.1");
    live.send_to(b"before", listener).unwrap();
    let (_, upstream) = recv(&backend);
    let stop = worker.send(RequestType::SoftStop(SoftStop {}));
    // Status is answered at once; soft-stop only when drained.
    worker.ok(RequestType::Status(Status {}));
    live.send_to(b"during", listener).unwrap();
    let (payload, same) = recv(&backend);
    assert_eq!(payload, b"during");
    assert_eq!(same, upstream);
    backend.send_to(b"reply", upstream).unwrap();
    assert_eq!(recv(&live).0, b"reply");
    let newcomer = udp_socket("127.0.0.1");
    newcomer.send_to(b"new", listener).unwrap();
    // The refusal is counted (the positive signal), and nothing reached
    // the backend meanwhile.
    worker.wait_metric(&format!("udp.datagrams.dropped.shed@{listener}"), |v| {
        v == 1
    });
    assert!(
        try_recv(&backend, SHORT).is_none(),
        "a new source is refused"
    );
    // The live flow idles out (1 s), then the worker answers and exits.
    let answer = worker.answer(&stop);
    assert_eq!(answer.status, ResponseStatus::Ok as i32);
    assert_eq!(worker.join(), ServerExit::SoftStopped);
}

#[test]
fn hard_stop_answers_and_exits() {
    let mut worker = Worker::start();
    let (listener, backend) = simple_setup(&mut worker, UdpClusterConfig::default());
    let client = udp_socket("127.0.0.1");
    client.send_to(b"x", listener).unwrap();
    recv(&backend);
    worker.ok(RequestType::HardStop(HardStop {}));
    assert_eq!(worker.join(), ServerExit::HardStopped);
}

#[test]
fn refused_orders_answer_failure_with_the_reason_and_change_nothing() {
    let mut worker = Worker::start();
    let listener = free_udp_addr("127.0.0.1");
    let response = worker.order(RequestType::AddUdpFrontend(frontend("nope", listener)));
    assert_eq!(response.status, ResponseStatus::Failure as i32);
    assert!(!response.message.is_empty());
    worker.ok(RequestType::AddUdpListener(udp_listener(listener)));
    let twice = worker.order(RequestType::AddUdpListener(udp_listener(listener)));
    assert_eq!(twice.status, ResponseStatus::Failure as i32);
    // A bind failure is rolled back: the address is taken by a plain socket
    // without SO_REUSEPORT.
    let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap();
    let failed = worker.order(RequestType::AddUdpListener(udp_listener(busy)));
    assert_eq!(failed.status, ResponseStatus::Failure as i32);
    assert!(failed.message.contains("bind"), "{}", failed.message);
    // The state does not hold it: adding it again fails the same way, not
    // as a duplicate.
    let again = worker.order(RequestType::AddUdpListener(udp_listener(busy)));
    assert!(again.message.contains("bind"), "{}", again.message);
}

#[test]
fn query_metrics_answers_this_worker_under_its_id() {
    let mut worker = Worker::start();
    let (listener, backend) = simple_setup(&mut worker, UdpClusterConfig::default());
    let client = udp_socket("127.0.0.1");
    client.send_to(b"abc", listener).unwrap();
    recv(&backend);
    let response = worker.order(RequestType::QueryMetrics(QueryMetricsOptions::default()));
    let Some(ContentType::Metrics(metrics)) = response.content.and_then(|c| c.content_type) else {
        panic!("no metrics");
    };
    let mine = &metrics.workers["1"];
    assert!(mine.proxy.contains_key("udp.datagrams.in"));
    assert!(mine
        .proxy
        .contains_key(&format!("udp.active_flows@{listener}")));
    assert!(mine.clusters["c"]
        .backends
        .iter()
        .any(|b| b.backend_id == "b1"));
}

#[test]
fn a_refused_datagram_aborts_the_flow_and_counts_it() {
    let mut worker = Worker::start();
    // A backend address with nothing listening: ICMP port unreachable.
    let dead = free_udp_addr("127.0.0.1");
    let listener = free_udp_addr("127.0.0.1");
    worker.ok(RequestType::AddUdpListener(udp_listener(listener)));
    worker.ok(RequestType::AddCluster(udp_cluster(
        "c",
        Default::default(),
    )));
    worker.ok(RequestType::AddBackend(backend("c", "b1", dead)));
    worker.ok(RequestType::AddUdpFrontend(frontend("c", listener)));
    let client = udp_socket("127.0.0.1");
    client.send_to(b"x", listener).unwrap();
    worker.wait_metric(&format!("udp.flows.created@{listener}"), |v| v == 1);
    // The refusal shows on the next operation on the upstream socket.
    client.send_to(b"y", listener).unwrap();
    worker.wait_metric(&format!("udp.backend.refused@{listener}"), |v| v >= 1);
    worker.wait_metric(&format!("udp.active_flows@{listener}"), |v| v == 0);
}

#[test]
fn a_wildcard_listener_replies_from_the_address_the_client_sent_to() {
    let mut worker = Worker::start();
    let port = free_udp_addr("0.0.0.0").port();
    let listener = SocketAddr::from(([0, 0, 0, 0], port));
    let backend_socket = udp_socket("127.0.0.1");
    worker.ok(RequestType::AddUdpListener(udp_listener(listener)));
    worker.ok(RequestType::AddCluster(udp_cluster(
        "c",
        Default::default(),
    )));
    worker.ok(RequestType::AddBackend(backend(
        "c",
        "b1",
        backend_socket.local_addr().unwrap(),
    )));
    worker.ok(RequestType::AddUdpFrontend(frontend("c", listener)));
    let client = udp_socket("127.0.0.1");
    let target = SocketAddr::from(([127, 0, 0, 2], port));
    client.send_to(b"hi", target).unwrap();
    let (_, upstream) = recv(&backend_socket);
    backend_socket.send_to(b"yo", upstream).unwrap();
    let (reply, from) = recv(&client);
    assert_eq!(reply, b"yo");
    assert_eq!(from, target);
}

#[test]
fn a_listener_added_inactive_serves_once_activated() {
    use sozu_command_lib::command::ActivateListener;
    let mut worker = Worker::start();
    let listener = free_udp_addr("127.0.0.1");
    let backend_socket = udp_socket("127.0.0.1");
    let mut config = udp_listener(listener);
    config.active = false;
    worker.ok(RequestType::AddUdpListener(config));
    worker.ok(RequestType::AddCluster(udp_cluster(
        "c",
        Default::default(),
    )));
    worker.ok(RequestType::AddBackend(backend(
        "c",
        "b1",
        backend_socket.local_addr().unwrap(),
    )));
    worker.ok(RequestType::AddUdpFrontend(frontend("c", listener)));
    worker.ok(RequestType::ActivateListener(ActivateListener {
        address: listener.into(),
        proxy: sozu_command_lib::command::ListenerType::Udp as i32,
        from_scm: false,
    }));
    let client = udp_socket("127.0.0.1");
    client.send_to(b"on", listener).unwrap();
    assert_eq!(recv(&backend_socket).0, b"on");
}

#[test]
fn changed_cluster_knobs_apply_to_new_flows_only() {
    let mut worker = Worker::start();
    let (listener, backend) = simple_setup(&mut worker, UdpClusterConfig::default());
    let old = udp_socket("127.0.0.1");
    old.send_to(b"o", listener).unwrap();
    let (_, old_upstream) = recv(&backend);
    // Now one response per flow (DNS-like) for new flows.
    worker.ok(RequestType::AddCluster(udp_cluster(
        "c",
        UdpClusterConfig {
            responses: Some(1),
            ..Default::default()
        },
    )));
    let new = udp_socket("127.0.0.1");
    new.send_to(b"n", listener).unwrap();
    let (_, new_upstream) = recv(&backend);
    for _ in 0..2 {
        backend.send_to(b"r", old_upstream).unwrap();
        assert_eq!(recv(&old).0, b"r", "the old flow keeps unlimited responses");
    }
    backend.send_to(b"r", new_upstream).unwrap();
    assert_eq!(recv(&new).0, b"r");
    backend.send_to(b"r2", new_upstream).unwrap();
    assert!(
        try_recv(&new, SHORT).is_none(),
        "the new flow closed after one"
    );
    // The positive signal: the flow was closed (counted), and the client's
    // next datagram opens another flow whose reply is the next thing the
    // client receives (a late "r2" would come first).
    worker.wait_metric(&format!("udp.flows.evicted@{listener}"), |v| v >= 1);
    new.send_to(b"n2", listener).unwrap();
    let (payload, next_upstream) = recv(&backend);
    assert_eq!(payload, b"n2");
    assert_ne!(
        next_upstream, new_upstream,
        "a new flow, a new upstream socket"
    );
    backend.send_to(b"r3", next_upstream).unwrap();
    assert_eq!(recv(&new).0, b"r3");
}

#[test]
fn tcp_and_http_orders_are_kept_in_the_state_and_answered_ok() {
    use sozu_command_lib::command::{RequestTcpFrontend, TcpListenerConfig};
    let mut worker = Worker::start();
    let address = free_udp_addr("127.0.0.1");
    worker.ok(RequestType::AddTcpListener(TcpListenerConfig {
        address: address.into(),
        public_address: None,
        expect_proxy: false,
        front_timeout: 60,
        back_timeout: 30,
        connect_timeout: 3,
        active: false,
    }));
    worker.ok(RequestType::AddCluster(udp_cluster(
        "t",
        Default::default(),
    )));
    worker.ok(RequestType::AddTcpFrontend(RequestTcpFrontend {
        cluster_id: "t".into(),
        address: address.into(),
        tags: Default::default(),
    }));
    // The state saw it: a second identical listener is refused.
    let twice = worker.order(RequestType::AddTcpListener(TcpListenerConfig {
        address: address.into(),
        public_address: None,
        expect_proxy: false,
        front_timeout: 60,
        back_timeout: 30,
        connect_timeout: 3,
        active: false,
    }));
    assert_eq!(twice.status, ResponseStatus::Failure as i32);
}

#[test]
fn a_burst_of_replies_larger_than_a_batch_returns_whole_and_in_order() {
    let mut worker = Worker::start();
    let (listener, backend) = simple_setup(&mut worker, UdpClusterConfig::default());
    let client = udp_socket("127.0.0.1");
    client.send_to(b"subscribe", listener).unwrap();
    let (_, upstream) = recv(&backend);
    // More than one sendmmsg batch and more than one wake-up budget.
    let count = 150u16;
    for i in 0..count {
        backend.send_to(&i.to_be_bytes(), upstream).unwrap();
    }
    for i in 0..count {
        let (reply, from) = recv(&client);
        assert_eq!(reply, i.to_be_bytes(), "reply {i} in order");
        assert_eq!(from, listener);
    }
    assert_eq!(
        worker.metric(&format!("udp.datagrams.out@{listener}")),
        i64::from(count)
    );
}

#[test]
fn a_tcp_probe_takes_the_backend_down_when_its_port_refuses_and_up_when_it_listens() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut worker = Worker::start();
    let (listener, backend_socket) = simple_setup(
        &mut worker,
        UdpClusterConfig {
            health: Some(UdpHealthConfig {
                mode: Some(UdpHealthMode::TcpProbe as i32),
                tcp_port: Some(u32::from(port)),
                rise: Some(1),
                fall: Some(1),
                fail_open: Some(false),
                udp_probe_payload: None,
                probe_interval_seconds: Some(1),
                probe_timeout_seconds: Some(1),
            }),
            ..Default::default()
        },
    );
    // Nothing listens on the companion port: refused, down.
    worker.wait_metric_present("c/b1/udp.backend.up", 0);
    let client = udp_socket("127.0.0.1");
    client.send_to(b"lost", listener).unwrap();
    assert!(
        try_recv(&backend_socket, SHORT).is_none(),
        "fail_open = false"
    );
    assert_eq!(
        worker.metric(&format!("udp.datagrams.dropped.flow_closed@{listener}")),
        1
    );
    let _companion = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    worker.wait_metric_present("c/b1/udp.backend.up", 1);
    client.send_to(b"served", listener).unwrap();
    assert_eq!(recv(&backend_socket).0, b"served");
}

/// Receives from every backend socket until `total` datagrams arrived (or
/// nothing arrived on any of them for about 5 s); returns the distinct
/// upstream sources (flows) each backend saw.
fn flows_per_backend(backends: &[UdpSocket], total: usize) -> Vec<usize> {
    let mut sources: Vec<std::collections::HashSet<SocketAddr>> =
        vec![Default::default(); backends.len()];
    let mut received = 0;
    let mut quiet_passes = 0;
    while received < total && quiet_passes < 1_000 / backends.len().max(1) {
        quiet_passes += 1;
        for (i, b) in backends.iter().enumerate() {
            while let Some((_, from)) = try_recv(b, Duration::from_millis(5)) {
                sources[i].insert(from);
                received += 1;
                quiet_passes = 0;
            }
        }
    }
    assert_eq!(received, total, "every datagram reached a backend");
    sources.iter().map(|s| s.len()).collect()
}

#[test]
fn least_loaded_splits_bursts_of_new_flows_evenly() {
    use sozu_command_lib::command::LoadBalancingAlgorithms;
    let mut worker = Worker::start();
    let listener = free_udp_addr("127.0.0.1");
    let mut config = udp_listener(listener);
    // No flow may expire during the test: the split is of live flows.
    config.front_timeout = 60;
    config.back_timeout = 60;
    worker.ok(RequestType::AddUdpListener(config));
    let mut cluster = udp_cluster("c", Default::default());
    cluster.load_balancing = LoadBalancingAlgorithms::LeastLoaded as i32;
    worker.ok(RequestType::AddCluster(cluster));
    let backends: Vec<UdpSocket> = (0..3).map(|_| udp_socket("127.0.0.1")).collect();
    for (i, b) in backends.iter().enumerate() {
        worker.ok(RequestType::AddBackend(backend(
            "c",
            &format!("b{i}"),
            b.local_addr().unwrap(),
        )));
    }
    worker.ok(RequestType::AddUdpFrontend(frontend("c", listener)));
    // 300 new sources in 6 bursts of 50, each burst sent back to back so the
    // worker selects its flows in one batch, before any is resolved; the
    // next burst waits until the worker took this one (the listener's
    // receive buffer holds one burst, not all 300).
    let clients: Vec<UdpSocket> = (0..300).map(|_| udp_socket("127.0.0.1")).collect();
    let created = format!("udp.flows.created@{listener}");
    for (k, burst) in clients.chunks(50).enumerate() {
        for c in burst {
            c.send_to(b"q", listener).unwrap();
        }
        let want = 50 * (k as i64 + 1);
        worker.wait_metric(&created, |v| v >= want);
    }
    let split = flows_per_backend(&backends, 300);
    assert_eq!(split, vec![100, 100, 100], "flows per backend");
    assert_eq!(
        worker.metric(&format!("udp.active_flows@{listener}")),
        300,
        "all flows still live"
    );
}

#[test]
fn a_wildcard_listener_puts_the_address_the_client_hit_in_the_proxy_header() {
    let mut worker = Worker::start();
    let port = free_udp_addr("0.0.0.0").port();
    let listener = SocketAddr::from(([0, 0, 0, 0], port));
    let backend_socket = udp_socket("127.0.0.1");
    worker.ok(RequestType::AddUdpListener(udp_listener(listener)));
    worker.ok(RequestType::AddCluster(udp_cluster(
        "c",
        UdpClusterConfig {
            send_proxy_protocol: Some(true),
            proxy_protocol_every_datagram: Some(true),
            ..Default::default()
        },
    )));
    worker.ok(RequestType::AddBackend(backend(
        "c",
        "b1",
        backend_socket.local_addr().unwrap(),
    )));
    worker.ok(RequestType::AddUdpFrontend(frontend("c", listener)));
    for ip in [[127, 0, 0, 2], [127, 0, 0, 3]] {
        let client = udp_socket("127.0.0.1");
        let target = SocketAddr::from((ip, port));
        // The first datagram is flushed from the pending queue when the
        // backend is chosen, the second forwarded directly: both carry it.
        for i in 0..2u8 {
            client.send_to(&[i], target).unwrap();
            let (datagram, _) = recv(&backend_socket);
            let (src, dst, rest) = parse_proxy_v2(&datagram).expect("a PROXY v2 header");
            assert_eq!(src, client.local_addr().unwrap());
            assert_eq!(dst, target, "datagram {i}: the address the client hit");
            assert_eq!(rest, [i]);
        }
    }
}
