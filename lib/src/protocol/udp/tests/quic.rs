//! Flows keyed by QUIC connection ID (a cluster with `quic_cid_length`):
//! the handshake on the client's address, 1-RTT packets on their connection
//! ID, migration of the reply destination, and what is not QUIC.

use super::*;

const CID: [u8; 4] = [1, 2, 3, 4];

/// A short-header (1-RTT) packet for `CID`.
fn short(extra: u8) -> [u8; 6] {
    [0x41, CID[0], CID[1], CID[2], CID[3], extra]
}

fn quic_manager() -> UdpFlowManager {
    let mut c = cluster();
    c.quic_cid_length = Some(4);
    manager_with(c)
}

/// Admits a flow for `pkt` from `src` and resolves it to backend b1.
fn establish(m: &mut UdpFlowManager, now: Instant, src: SocketAddr, pkt: &[u8]) -> FlowId {
    let d = m.handle_client_datagram(now, src, pkt);
    let ClientDecision::Queued { flow } = d else {
        panic!("expected Queued, got {d:?}");
    };
    m.backend_resolved(now, flow, BackendId::new("b1"), backend_addr());
    outputs(m);
    flow
}

fn migrations(out: &[Output]) -> Vec<FlowId> {
    out.iter()
        .filter_map(|o| match o {
            Output::Metric(MetricEvent::FlowMigrated { flow }) => Some(*flow),
            _ => None,
        })
        .collect()
}

#[test]
fn quic_client_migration_keeps_its_flow_and_replies_follow() {
    let t0 = origin();
    let mut m = quic_manager();
    let old = addr("192.0.2.1:1000");
    let flow = establish(&mut m, t0, old, &short(0xff));
    // Same connection id from a new IP and port: the same flow, counted once.
    let new = addr("198.51.100.7:2000");
    assert_eq!(
        m.handle_client_datagram(t0, new, &short(1)),
        ClientDecision::Forward {
            flow,
            proxy_header: None
        }
    );
    assert_eq!(migrations(&outputs(&mut m)), vec![flow]);
    assert_eq!(m.flow_client(flow), Some(new));
    assert_eq!(
        m.flow_backend(flow).map(|(b, _)| b.as_str().to_owned()),
        Some("b1".to_owned())
    );
    // Replies go to the latest source.
    assert_eq!(
        m.handle_backend_datagram(t0, flow, b"r"),
        BackendDecision::Return { dst: new }
    );
    // Further datagrams from the same new address are not migrations.
    m.handle_client_datagram(t0, new, &short(2));
    assert!(migrations(&outputs(&mut m)).is_empty());
    // A port-only change (NAT rebinding) is one.
    let rebound = addr("198.51.100.7:2001");
    m.handle_client_datagram(t0, rebound, &short(3));
    assert_eq!(migrations(&outputs(&mut m)), vec![flow]);
    assert_eq!(
        m.handle_backend_datagram(t0, flow, b"r"),
        BackendDecision::Return { dst: rebound }
    );
    assert_eq!(m.active_flows(), 1);
}

#[test]
fn quic_migration_while_awaiting_backend_redirects_replies() {
    let t0 = origin();
    let mut m = quic_manager();
    let d = m.handle_client_datagram(t0, addr("192.0.2.1:1000"), &short(0));
    let ClientDecision::Queued { flow } = d else {
        panic!("{d:?}")
    };
    outputs(&mut m);
    let new = addr("192.0.2.1:1001");
    assert_eq!(
        m.handle_client_datagram(t0, new, &short(1)),
        ClientDecision::Queued { flow }
    );
    assert_eq!(migrations(&outputs(&mut m)), vec![flow]);
    m.backend_resolved(t0, flow, BackendId::new("b1"), backend_addr());
    let flushed = outputs(&mut m)
        .into_iter()
        .filter(|o| matches!(o, Output::Transmit { .. }))
        .count();
    assert_eq!(flushed, 2, "both queued datagrams reach the backend");
    assert_eq!(
        m.handle_backend_datagram(t0, flow, b"r"),
        BackendDecision::Return { dst: new }
    );
}

#[test]
fn the_connection_id_joins_its_handshake_flow() {
    let t0 = origin();
    let mut m = quic_manager();
    let client = addr("192.0.2.1:1000");
    // Initial then Handshake (different DCIDs): one flow, the address's.
    let initial = [0xc0, 0, 0, 0, 1, 8, 9, 9, 9, 9, 9, 9, 9, 9, 0];
    let flow = establish(&mut m, t0, client, &initial);
    let handshake = [0xe0, 0, 0, 0, 1, 4, 1, 2, 3, 4, 0];
    let forward = ClientDecision::Forward {
        flow,
        proxy_header: None,
    };
    assert_eq!(m.handle_client_datagram(t0, client, &handshake), forward);
    // The first 1-RTT packet from that address joins the same flow: one
    // upstream socket for the whole connection, no new SelectBackend.
    assert_eq!(m.handle_client_datagram(t0, client, &short(0)), forward);
    assert!(outputs(&mut m).is_empty(), "no new flow, no migration");
    let cid = FlowKey::ConnectionId(ConnectionId::new(&CID).unwrap());
    assert_eq!(m.flow_for_key(&FlowKey::Source(client)), Some(flow));
    assert_eq!(m.flow_for_key(&cid), Some(flow));
    assert_eq!(m.active_flows(), 1);

    // A second connection from the same socket: its handshake shares the
    // flow (same address), its connection ID gets a flow of its own.
    let other_cid = [0x41, 5, 6, 7, 8, 0];
    let d = m.handle_client_datagram(t0, client, &other_cid);
    assert!(
        matches!(d, ClientDecision::Queued { flow: f } if f != flow),
        "{d:?}"
    );
    outputs(&mut m);

    // The client migrates: the flow follows, and leaves its old address.
    let moved = addr("198.51.100.7:2000");
    assert_eq!(m.handle_client_datagram(t0, moved, &short(1)), forward);
    assert_eq!(migrations(&outputs(&mut m)), vec![flow]);
    assert_eq!(m.flow_for_key(&cid), Some(flow));
    assert_eq!(m.flow_for_key(&FlowKey::Source(client)), None);
    assert_eq!(
        m.handle_backend_datagram(t0, flow, b"r"),
        BackendDecision::Return { dst: moved }
    );
    // A newcomer on the old address (a NAT reusing the port) is a new flow,
    // never the migrated one.
    let d = m.handle_client_datagram(t0, client, &initial);
    assert!(
        matches!(d, ClientDecision::Queued { flow: f } if f != flow),
        "{d:?}"
    );
    assert_eq!(m.flow_client(flow), Some(moved));
}

#[test]
fn closing_a_joined_flow_frees_both_keys() {
    let t0 = origin();
    let mut m = quic_manager();
    let client = addr("192.0.2.1:1000");
    let flow = establish(&mut m, t0, client, &[0xc0, 0, 0, 0, 1, 0, 0]);
    m.handle_client_datagram(t0, client, &short(0));
    m.abort_flow(t0, flow, CloseReason::Aborted);
    assert_eq!(m.active_flows(), 0);
    assert_eq!(m.flow_for_key(&FlowKey::Source(client)), None);
    assert_eq!(
        m.flow_for_key(&FlowKey::ConnectionId(ConnectionId::new(&CID).unwrap())),
        None
    );
    // Both keys admit afresh.
    outputs(&mut m);
    assert!(matches!(
        m.handle_client_datagram(t0, client, &short(0)),
        ClientDecision::Queued { .. }
    ));
}

#[test]
fn a_connection_id_from_an_unknown_address_gets_the_address_affinity() {
    // Several workers: a migrated client can reach a worker that does not
    // know its ID; the new flow is placed by the source IP, as its
    // handshake was.
    let t0 = origin();
    let mut m = quic_manager();
    let hash_of = |out: Vec<Output>| {
        out.into_iter().find_map(|o| match o {
            Output::SelectBackend { affinity_hash, .. } => Some(affinity_hash),
            _ => None,
        })
    };
    m.handle_client_datagram(t0, addr("192.0.2.1:1000"), &[0xc0, 0, 0, 0, 1, 0, 0]);
    let handshake = hash_of(outputs(&mut m));
    m.handle_client_datagram(t0, addr("192.0.2.1:1001"), &short(0));
    let one_rtt = hash_of(outputs(&mut m));
    assert!(handshake.is_some());
    assert_eq!(handshake, one_rtt, "SOURCE_IP affinity: one backend");
}

#[test]
fn not_quic_is_dropped_invalid_on_a_quic_cluster() {
    let t0 = origin();
    let mut m = quic_manager();
    let client = addr("192.0.2.1:1000");
    // A short header shorter than the 4-byte connection id.
    assert_eq!(
        m.handle_client_datagram(t0, client, &[0x40, 1, 2]),
        ClientDecision::Dropped(DropReason::Invalid)
    );
    assert_eq!(
        m.handle_client_datagram(t0, client, b""),
        ClientDecision::Dropped(DropReason::Invalid)
    );
    assert_eq!(m.active_flows(), 0);
    assert!(outputs(&mut m).is_empty());
    // The same bytes on a source-address cluster are a flow.
    let mut plain = manager();
    assert!(matches!(
        plain.handle_client_datagram(t0, client, &[0x40, 1, 2]),
        ClientDecision::Queued { .. }
    ));
}

#[test]
fn source_address_flows_never_migrate() {
    let t0 = origin();
    let mut m = manager();
    let a = establish(&mut m, t0, addr("192.0.2.1:1000"), &short(0));
    let b = establish(&mut m, t0, addr("192.0.2.1:1001"), &short(0));
    assert_ne!(a, b);
    assert!(migrations(&outputs(&mut m)).is_empty());
}

#[test]
fn reconfiguring_the_key_applies_to_new_datagrams() {
    let t0 = origin();
    let mut m = manager();
    let client = addr("192.0.2.1:1000");
    let by_source = establish(&mut m, t0, client, &short(0));
    let mut c = cluster();
    c.quic_cid_length = Some(4);
    m.set_cluster(t0, Some(c));
    // Now keyed by connection id: from another address, a new flow …
    let by_cid = establish(&mut m, t0, addr("192.0.2.2:1000"), &short(1));
    assert_ne!(by_source, by_cid);
    assert_eq!(m.active_flows(), 2);
    // … and a new id from the first address joins that address's flow.
    let d = m.handle_client_datagram(t0, client, &[0x41, 9, 9, 9, 9]);
    assert_eq!(
        d,
        ClientDecision::Forward {
            flow: by_source,
            proxy_header: None
        }
    );
}

// ----- QUIC-LB -----

fn select_routes(out: &[Output]) -> Vec<Option<QuicLbRoute>> {
    out.iter()
        .filter_map(|o| match o {
            Output::SelectBackend { quic_lb, .. } => Some(*quic_lb),
            _ => None,
        })
        .collect()
}

#[test]
fn quic_lb_cluster_names_the_server_of_each_new_flow_and_only_new_ones() {
    let mut c = cluster();
    c.quic_cid_length = Some(6);
    c.quic_lb = Some(QuicLbConfig::new(1, 1, None, 6).unwrap());
    let mut m = manager_with(c);
    let now = origin();
    // A 1-RTT packet whose connection id is (codepoint 1, server 0x07, nonce).
    let routable = [0x40, 0x20 | 5, 0x07, 9, 9, 9, 9, 0xff];
    m.handle_client_datagram(now, addr("192.0.2.1:1000"), &routable);
    assert_eq!(
        select_routes(&outputs(&mut m)),
        [Some(QuicLbRoute::ServerId(ServerId::new(&[0x07]).unwrap()))]
    );
    // The same connection id from another address: tracked, nothing decoded.
    m.handle_client_datagram(now, addr("203.0.113.9:4000"), &routable);
    assert!(select_routes(&outputs(&mut m)).is_empty());
    // Another codepoint: a new flow, placed by the policy, with its reason.
    let other = [0x40, 0x40 | 5, 0x07, 1, 1, 1, 1];
    m.handle_client_datagram(now, addr("192.0.2.1:1000"), &other);
    assert_eq!(
        select_routes(&outputs(&mut m)),
        [Some(QuicLbRoute::Fallback(QuicLbFallback::ConfigMismatch))]
    );
}

#[test]
fn clusters_without_quic_lb_select_without_a_route() {
    let mut m = quic_manager();
    m.handle_client_datagram(origin(), addr("192.0.2.1:1000"), &short(0));
    assert_eq!(select_routes(&outputs(&mut m)), [None]);
}
