//! Unit tests of the UDP flow manager: one per admission step, phase
//! transition, teardown reason, idempotency case, reconfiguration capture,
//! drain and cap shrink, plus quickcheck properties.

use std::{
    net::SocketAddr,
    num::{NonZeroU32, NonZeroUsize},
    time::{Duration, Instant},
};

use super::*;

mod affinity;
mod dns_id;
mod one_way;
mod quic;
mod responses;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn config() -> UdpFlowManagerConfig {
    let mut c = UdpFlowManagerConfig::new(addr("10.0.0.1:53"));
    c.max_flows = 4;
    c.max_rx_datagram_size = 100;
    c.front_timeout = Duration::from_secs(10);
    c.back_timeout = Duration::from_secs(5);
    c
}

fn cluster() -> ClusterConfig {
    ClusterConfig::new(ClusterId::new("dns"))
}

fn manager() -> UdpFlowManager {
    let mut m = UdpFlowManager::new(config(), 42);
    m.set_cluster(origin(), Some(cluster()));
    m
}

/// An arbitrary time origin: tests only use offsets from it.
#[allow(clippy::disallowed_methods)]
fn origin() -> Instant {
    Instant::now()
}

fn outputs<E: FlowKeyExtractor>(m: &mut UdpFlowManager<E>) -> Vec<Output> {
    std::iter::from_fn(|| m.poll_output()).collect()
}

#[test]
fn first_datagram_admits_and_selects_backend() {
    let t0 = origin();
    let mut m = manager();
    let client = addr("192.0.2.1:4000");
    let d = m.handle_client_datagram(t0, client, b"query");
    let ClientDecision::Queued { flow } = d else {
        panic!("expected Queued, got {d:?}");
    };
    let out = outputs(&mut m);
    assert_eq!(out.len(), 2);
    assert!(
        matches!(&out[0], Output::Metric(MetricEvent::FlowCreated { flow: f, .. }) if *f == flow)
    );
    let Output::SelectBackend {
        flow: f,
        cluster,
        affinity_hash: h,
        quic_lb: None,
    } = &out[1]
    else {
        panic!("expected SelectBackend, got {:?}", out[1]);
    };
    assert_eq!(*f, flow);
    assert_eq!(cluster.as_str(), "dns");
    assert_eq!(
        *h,
        affinity_hash(DEFAULT_HASH_SEED, AffinityKey::SourceIp, client)
    );
    assert_eq!(m.poll_timeout(), Some(t0 + Duration::from_secs(10)));

    let backend = addr("10.1.0.1:53");
    assert_eq!(
        m.backend_resolved(t0, flow, BackendId::new("b1"), backend),
        ResolveOutcome::Established
    );
    let out = outputs(&mut m);
    assert_eq!(out.len(), 2);
    assert!(matches!(&out[0], Output::OpenUpstream { addr, .. } if *addr == backend));
    assert_eq!(
        out[1],
        Output::Transmit {
            via: Via::Upstream(flow),
            dst: backend,
            proxy_header: None,
            payload: b"query".to_vec()
        }
    );
    assert_eq!(
        m.handle_client_datagram(t0, client, b"again"),
        ClientDecision::Forward {
            flow,
            proxy_header: None
        }
    );
    assert_eq!(
        m.handle_backend_datagram(t0, flow, b"answer"),
        BackendDecision::Return { dst: client }
    );
}

// ----- helpers -----

fn manager_with(cluster: ClusterConfig) -> UdpFlowManager {
    let mut m = UdpFlowManager::new(config(), 42);
    m.set_cluster(origin(), Some(cluster));
    m
}

fn backend_addr() -> SocketAddr {
    addr("10.1.0.1:5300")
}

/// Admits a flow for `client` and resolves it; returns its id with the
/// output queue drained.
fn established(m: &mut UdpFlowManager, now: Instant, client: SocketAddr) -> FlowId {
    let ClientDecision::Queued { flow } = m.handle_client_datagram(now, client, b"first") else {
        panic!("admission failed");
    };
    assert_eq!(
        m.backend_resolved(now, flow, BackendId::new("b1"), backend_addr()),
        ResolveOutcome::Established
    );
    outputs(m);
    flow
}

fn closes(out: &[Output]) -> Vec<(FlowId, CloseReason)> {
    out.iter()
        .filter_map(|o| match o {
            Output::CloseFlow { flow, reason, .. } => Some((*flow, *reason)),
            _ => None,
        })
        .collect()
}

fn nz(n: u32) -> Option<NonZeroU32> {
    NonZeroU32::new(n)
}

// ----- admission order -----

#[test]
fn oversize_datagram_is_truncated_before_anything_else() {
    let mut m = UdpFlowManager::new(config(), 1);
    // No cluster either: the size check comes first.
    let big = [1u8; 101];
    assert_eq!(
        m.handle_client_datagram(origin(), addr("192.0.2.1:1"), &big),
        ClientDecision::Dropped(DropReason::Truncated)
    );
    assert_eq!(m.active_flows(), 0);
    assert!(outputs(&mut m).is_empty(), "a drop emits nothing");
}

#[test]
fn datagram_of_exactly_max_size_is_admitted() {
    let mut m = manager();
    let d = m.handle_client_datagram(origin(), addr("192.0.2.1:1"), &[1u8; 100]);
    assert!(matches!(d, ClientDecision::Queued { .. }));
}

#[test]
fn no_cluster_drops_no_backend_without_flow() {
    let mut m = UdpFlowManager::new(config(), 1);
    // Even an empty datagram: the cluster check precedes the key check.
    assert_eq!(
        m.handle_client_datagram(origin(), addr("192.0.2.1:1"), b""),
        ClientDecision::Dropped(DropReason::NoBackend)
    );
    assert_eq!(m.active_flows(), 0);
    assert!(outputs(&mut m).is_empty());
    assert_eq!(m.poll_timeout(), None);
}

#[test]
fn empty_datagram_is_invalid_without_flow() {
    let mut m = manager();
    assert_eq!(
        m.handle_client_datagram(origin(), addr("192.0.2.1:1"), b""),
        ClientDecision::Dropped(DropReason::Invalid)
    );
    assert_eq!(m.active_flows(), 0);
    assert!(outputs(&mut m).is_empty());
}

#[test]
fn tracked_key_is_sticky_and_each_port_gets_its_own_flow() {
    let t0 = origin();
    let mut m = manager();
    let a = established(&mut m, t0, addr("192.0.2.1:1000"));
    assert_eq!(
        m.handle_client_datagram(t0, addr("192.0.2.1:1000"), b"x"),
        ClientDecision::Forward {
            flow: a,
            proxy_header: None
        }
    );
    let ClientDecision::Queued { flow: b } =
        m.handle_client_datagram(t0, addr("192.0.2.1:2000"), b"x")
    else {
        panic!("another port is another flow");
    };
    assert_ne!(a, b);
    assert_eq!(m.active_flows(), 2);
    // SOURCE_IP affinity: both ports hash alike, so the same backend is chosen.
    let hashes: Vec<u64> = outputs(&mut m)
        .into_iter()
        .filter_map(|o| match o {
            Output::SelectBackend {
                affinity_hash: h, ..
            } => Some(h),
            _ => None,
        })
        .collect();
    assert_eq!(
        hashes,
        vec![affinity_hash(
            DEFAULT_HASH_SEED,
            AffinityKey::SourceIp,
            addr("192.0.2.1:1000")
        )]
    );
}

#[test]
fn source_ip_port_affinity_hashes_the_port() {
    let mut c = cluster();
    c.affinity_key = AffinityKey::SourceIpPort;
    let mut m = manager_with(c);
    m.handle_client_datagram(origin(), addr("192.0.2.1:1000"), b"x");
    let out = outputs(&mut m);
    assert!(out.iter().any(|o| matches!(o,
        Output::SelectBackend { affinity_hash: h, .. }
            if *h == affinity_hash(DEFAULT_HASH_SEED, AffinityKey::SourceIpPort, addr("192.0.2.1:1000")))));
}

#[test]
fn draining_sheds_new_keys_without_flow_metric_but_serves_tracked() {
    let t0 = origin();
    let mut m = manager();
    let a = established(&mut m, t0, addr("192.0.2.1:1"));
    m.drain(t0);
    assert!(m.is_draining());
    assert!(!m.is_drained());
    assert_eq!(
        m.handle_client_datagram(t0, addr("192.0.2.2:1"), b"x"),
        ClientDecision::Dropped(DropReason::Shed)
    );
    assert!(outputs(&mut m).is_empty(), "drain shed emits no FlowShed");
    assert!(matches!(
        m.handle_client_datagram(t0, addr("192.0.2.1:1"), b"x"),
        ClientDecision::Forward { flow, .. } if flow == a
    ));
    m.handle_timeout(t0 + Duration::from_secs(10));
    assert_eq!(closes(&outputs(&mut m)), vec![(a, CloseReason::Idle)]);
    assert!(m.is_drained());
    assert_eq!(m.poll_timeout(), None);
}

#[test]
fn full_table_sheds_without_allocating_a_flow() {
    let t0 = origin();
    let mut m = manager();
    for port in 1..=4 {
        m.handle_client_datagram(t0, SocketAddr::new(addr("192.0.2.1:0").ip(), port), b"x");
    }
    outputs(&mut m);
    assert_eq!(m.active_flows(), 4);
    assert_eq!(
        m.handle_client_datagram(t0, addr("192.0.2.9:9"), b"x"),
        ClientDecision::Dropped(DropReason::Shed)
    );
    assert_eq!(m.active_flows(), 4);
    assert_eq!(
        outputs(&mut m),
        vec![Output::Metric(MetricEvent::FlowShed {
            cluster: ClusterId::new("dns")
        })]
    );
}

// ----- phases -----

#[test]
fn burst_on_new_flow_is_flushed_in_order_and_counted_at_flush() {
    let t0 = origin();
    let mut m = manager();
    let client = addr("192.0.2.1:1");
    let mut flow = None;
    for i in 0..5u8 {
        let d = m.handle_client_datagram(t0, client, &[i; 3]);
        let ClientDecision::Queued { flow: f } = d else {
            panic!("awaiting flow queues, got {d:?}");
        };
        assert!(flow.is_none() || flow == Some(f));
        flow = Some(f);
    }
    let flow = flow.unwrap();
    assert_eq!(m.flow_phase(flow), Some(Phase::AwaitingBackend));
    outputs(&mut m);
    m.backend_resolved(t0, flow, BackendId::new("b1"), backend_addr());
    let out = outputs(&mut m);
    assert!(
        matches!(out[0], Output::OpenUpstream { .. }),
        "open before transmit"
    );
    let payloads: Vec<Vec<u8>> = out[1..]
        .iter()
        .map(|o| match o {
            Output::Transmit {
                via, dst, payload, ..
            } => {
                assert_eq!(*via, Via::Upstream(flow));
                assert_eq!(*dst, backend_addr());
                payload.clone()
            }
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(payloads, (0..5u8).map(|i| vec![i; 3]).collect::<Vec<_>>());
    assert_eq!(m.flow_phase(flow), Some(Phase::Established));
    m.abort_flow(t0, flow, CloseReason::Aborted);
    let out = outputs(&mut m);
    let Some(Output::CloseFlow { record, .. }) = out.last() else {
        panic!("close expected");
    };
    assert_eq!(record.datagrams_in, 5);
    assert_eq!(record.bytes_in, 15);
    assert_eq!(record.datagrams_dropped, 0);
}

#[test]
fn queued_datagrams_do_not_count_as_requests_before_flush() {
    let t0 = origin();
    let mut c = cluster();
    c.requests = nz(2);
    let mut m = manager_with(c);
    let client = addr("192.0.2.1:1");
    for _ in 0..2 {
        m.handle_client_datagram(t0, client, b"x");
    }
    // Two queued datagrams with requests = 2: still alive while awaiting.
    assert_eq!(m.active_flows(), 1);
    let flow = m.flow_ids().next().unwrap();
    outputs(&mut m);
    m.backend_resolved(t0, flow, BackendId::new("b1"), backend_addr());
    let out = outputs(&mut m);
    let transmits = out
        .iter()
        .filter(|o| matches!(o, Output::Transmit { .. }))
        .count();
    assert_eq!(transmits, 2);
    assert_eq!(closes(&out), vec![(flow, CloseReason::RequestsReached)]);
}

#[test]
fn full_pending_fifo_drops_oldest_and_counts_it() {
    let t0 = origin();
    let mut c = cluster();
    c.max_pending_datagrams = NonZeroUsize::new(3);
    let mut m = manager_with(c);
    let client = addr("192.0.2.1:1");
    for i in 0..5u8 {
        m.handle_client_datagram(t0, client, &[i]);
    }
    let flow = m.flow_ids().next().unwrap();
    let drops: Vec<Output> = outputs(&mut m)
        .into_iter()
        .filter(|o| matches!(o, Output::Dropped { .. }))
        .collect();
    assert_eq!(
        drops,
        vec![
            Output::Dropped {
                flow,
                reason: DropReason::PendingOverflow,
                datagrams: 1,
                bytes: 1
            };
            2
        ]
    );
    m.backend_resolved(t0, flow, BackendId::new("b1"), backend_addr());
    let sent: Vec<Vec<u8>> = outputs(&mut m)
        .into_iter()
        .filter_map(|o| match o {
            Output::Transmit { payload, .. } => Some(payload),
            _ => None,
        })
        .collect();
    assert_eq!(sent, vec![vec![2], vec![3], vec![4]]);
}

#[test]
fn pending_bound_of_one_is_newest_wins() {
    let t0 = origin();
    let mut c = cluster();
    c.max_pending_datagrams = NonZeroUsize::new(1);
    let mut m = manager_with(c);
    let client = addr("192.0.2.1:1");
    m.handle_client_datagram(t0, client, b"old");
    m.handle_client_datagram(t0, client, b"new");
    let flow = m.flow_ids().next().unwrap();
    outputs(&mut m);
    m.backend_resolved(t0, flow, BackendId::new("b1"), backend_addr());
    let sent: Vec<Vec<u8>> = outputs(&mut m)
        .into_iter()
        .filter_map(|o| match o {
            Output::Transmit { payload, .. } => Some(payload),
            _ => None,
        })
        .collect();
    assert_eq!(sent, vec![b"new".to_vec()]);
}

#[test]
fn pending_byte_bound_drops_oldest() {
    let t0 = origin();
    let mut cfg = config();
    cfg.max_pending_bytes = NonZeroUsize::new(10).unwrap();
    let mut m = UdpFlowManager::new(cfg, 1);
    m.set_cluster(t0, Some(cluster()));
    let client = addr("192.0.2.1:1");
    m.handle_client_datagram(t0, client, &[1; 6]);
    m.handle_client_datagram(t0, client, &[2; 6]);
    let out = outputs(&mut m);
    assert!(out.iter().any(|o| matches!(
        o,
        Output::Dropped {
            reason: DropReason::PendingOverflow,
            datagrams: 1,
            bytes: 6,
            ..
        }
    )));
}

#[test]
fn duplicate_resolution_is_ignored_and_late_one_is_unknown() {
    let t0 = origin();
    let mut m = manager();
    let flow = established(&mut m, t0, addr("192.0.2.1:1"));
    assert_eq!(
        m.backend_resolved(t0, flow, BackendId::new("b2"), addr("10.9.9.9:1")),
        ResolveOutcome::Ignored
    );
    assert!(outputs(&mut m).is_empty());
    assert_eq!(m.flow_backend(flow).map(|(_, a)| a), Some(backend_addr()));
    m.abort_flow(t0, flow, CloseReason::Aborted);
    outputs(&mut m);
    assert_eq!(
        m.backend_resolved(t0, flow, BackendId::new("b1"), backend_addr()),
        ResolveOutcome::UnknownFlow
    );
    assert!(outputs(&mut m).is_empty());
}

#[test]
fn stale_id_never_reaches_a_flow_reusing_its_slot() {
    let t0 = origin();
    let mut m = manager();
    let old = established(&mut m, t0, addr("192.0.2.1:1"));
    m.abort_flow(t0, old, CloseReason::Aborted);
    let ClientDecision::Queued { flow: new } =
        m.handle_client_datagram(t0, addr("192.0.2.1:1"), b"x")
    else {
        panic!()
    };
    assert_ne!(old, new);
    outputs(&mut m);
    assert_eq!(
        m.backend_resolved(t0, old, BackendId::new("b1"), backend_addr()),
        ResolveOutcome::UnknownFlow
    );
    assert_eq!(m.flow_phase(new), Some(Phase::AwaitingBackend));
    assert_eq!(
        m.handle_backend_datagram(t0, old, b"x"),
        BackendDecision::Dropped(DropReason::UnknownFlow)
    );
}

#[test]
fn backend_datagram_on_awaiting_or_unknown_flow_is_dropped() {
    let t0 = origin();
    let mut m = manager();
    let ClientDecision::Queued { flow } = m.handle_client_datagram(t0, addr("192.0.2.1:1"), b"x")
    else {
        panic!()
    };
    assert_eq!(
        m.handle_backend_datagram(t0, flow, b"x"),
        BackendDecision::Dropped(DropReason::UnknownFlow)
    );
    assert_eq!(
        m.handle_backend_datagram(t0, FlowId::from_u64(999), b"x"),
        BackendDecision::Dropped(DropReason::UnknownFlow)
    );
}

#[test]
fn oversize_backend_datagram_is_truncated() {
    let t0 = origin();
    let mut m = manager();
    let flow = established(&mut m, t0, addr("192.0.2.1:1"));
    assert_eq!(
        m.handle_backend_datagram(t0, flow, &[0; 101]),
        BackendDecision::Dropped(DropReason::Truncated)
    );
}

// ----- timers -----

#[test]
fn client_datagram_pushes_deadline_by_front_timeout() {
    let t0 = origin();
    let mut m = manager();
    let flow = established(&mut m, t0, addr("192.0.2.1:1"));
    m.handle_client_datagram(t0 + Duration::from_secs(9), addr("192.0.2.1:1"), b"x");
    // The armed entry still says t0+10: it fires, finds the flow refreshed.
    m.handle_timeout(t0 + Duration::from_secs(10));
    assert!(
        closes(&outputs(&mut m)).is_empty(),
        "a stale expiry never closes a refreshed flow"
    );
    assert_eq!(m.poll_timeout(), Some(t0 + Duration::from_secs(19)));
    m.handle_timeout(t0 + Duration::from_secs(19));
    assert_eq!(closes(&outputs(&mut m)), vec![(flow, CloseReason::Idle)]);
    assert_eq!(m.poll_timeout(), None);
}

#[test]
fn backend_datagram_moves_deadline_earlier_with_short_back_timeout() {
    let t0 = origin();
    let mut m = manager();
    let flow = established(&mut m, t0, addr("192.0.2.1:1"));
    let t1 = t0 + Duration::from_secs(1);
    m.handle_backend_datagram(t1, flow, b"r");
    assert_eq!(m.poll_timeout(), Some(t1 + Duration::from_secs(5)));
    m.handle_timeout(t1 + Duration::from_secs(5));
    assert_eq!(closes(&outputs(&mut m)), vec![(flow, CloseReason::Idle)]);
}

#[test]
fn awaiting_flow_idles_out_and_drops_its_pending() {
    let t0 = origin();
    let mut m = manager();
    let ClientDecision::Queued { flow } = m.handle_client_datagram(t0, addr("192.0.2.1:1"), b"abc")
    else {
        panic!()
    };
    outputs(&mut m);
    m.handle_timeout(t0 + Duration::from_secs(10));
    let out = outputs(&mut m);
    assert_eq!(
        out[0],
        Output::Dropped {
            flow,
            reason: DropReason::FlowClosed,
            datagrams: 1,
            bytes: 3
        }
    );
    assert!(matches!(
        &out[1],
        Output::Metric(MetricEvent::FlowEvicted {
            reason: CloseReason::Idle,
            backend: None,
            ..
        })
    ));
    let Output::CloseFlow { record, .. } = &out[2] else {
        panic!()
    };
    assert_eq!(record.datagrams_dropped, 1);
    assert_eq!(record.backend, None);
}

#[test]
fn timeout_before_any_deadline_does_nothing() {
    let t0 = origin();
    let mut m = manager();
    established(&mut m, t0, addr("192.0.2.1:1"));
    m.handle_timeout(t0 + Duration::from_millis(9_999));
    assert!(outputs(&mut m).is_empty());
    assert_eq!(m.active_flows(), 1);
}

#[test]
fn one_timeout_closes_every_flow_due_and_next_deadline_is_later() {
    let t0 = origin();
    let mut m = manager();
    let a = established(&mut m, t0, addr("192.0.2.1:1"));
    let b = established(&mut m, t0 + Duration::from_secs(1), addr("192.0.2.1:2"));
    let c = established(&mut m, t0 + Duration::from_secs(5), addr("192.0.2.1:3"));
    let t = t0 + Duration::from_secs(11);
    m.handle_timeout(t);
    assert_eq!(
        closes(&outputs(&mut m)),
        vec![(a, CloseReason::Idle), (b, CloseReason::Idle)]
    );
    assert!(m.poll_timeout().unwrap() > t);
    assert_eq!(m.flow_phase(c), Some(Phase::Established));
}

// ----- teardown reasons -----

#[test]
fn responses_cap_returns_the_answer_then_closes() {
    let t0 = origin();
    let mut c = cluster();
    c.responses = nz(1);
    let mut m = manager_with(c);
    let client = addr("192.0.2.1:1");
    let flow = established(&mut m, t0, client);
    assert_eq!(
        m.handle_backend_datagram(t0, flow, b"answer"),
        BackendDecision::Return { dst: client }
    );
    let out = outputs(&mut m);
    assert!(matches!(
        &out[0],
        Output::Metric(MetricEvent::FlowEvicted {
            reason: CloseReason::ResponsesReached,
            ..
        })
    ));
    let Output::CloseFlow {
        flow: f,
        reason,
        record,
    } = &out[1]
    else {
        panic!()
    };
    assert_eq!((*f, *reason), (flow, CloseReason::ResponsesReached));
    assert_eq!((record.datagrams_in, record.bytes_in), (1, 5));
    assert_eq!((record.datagrams_out, record.bytes_out), (1, 6));
    assert_eq!(record.client, client);
    assert_eq!(record.backend_addr, Some(backend_addr()));
    assert_eq!(m.active_flows(), 0);
    assert_eq!(m.poll_timeout(), None);
}

#[test]
fn requests_cap_without_responses_cap_closes_after_forwarding() {
    let t0 = origin();
    let mut c = cluster();
    c.requests = nz(2);
    let mut m = manager_with(c);
    let client = addr("192.0.2.1:1");
    let flow = established(&mut m, t0, client);
    assert!(matches!(
        m.handle_client_datagram(t0, client, b"two"),
        ClientDecision::Forward { .. }
    ));
    assert_eq!(
        closes(&outputs(&mut m)),
        vec![(flow, CloseReason::RequestsReached)]
    );
    // The next datagram starts a new flow.
    assert!(matches!(
        m.handle_client_datagram(t0, client, b"three"),
        ClientDecision::Queued { flow: f } if f != flow
    ));
}

#[test]
fn requests_cap_with_pending_responses_waits_for_the_answer() {
    let t0 = origin();
    let mut c = cluster();
    c.requests = nz(1);
    c.responses = nz(1);
    let mut m = manager_with(c);
    let client = addr("192.0.2.1:1");
    let flow = established(&mut m, t0, client);
    assert_eq!(m.active_flows(), 1, "the query's answer is still expected");
    assert_eq!(
        m.handle_client_datagram(t0, client, b"retry"),
        ClientDecision::Dropped(DropReason::RequestsExhausted)
    );
    assert_eq!(
        m.handle_backend_datagram(t0, flow, b"answer"),
        BackendDecision::Return { dst: client }
    );
    let out = outputs(&mut m);
    assert_eq!(closes(&out), vec![(flow, CloseReason::ResponsesReached)]);
    let Some(Output::CloseFlow { record, .. }) = out.last() else {
        panic!()
    };
    assert_eq!(record.datagrams_dropped, 1);
}

#[test]
fn requests_cap_reached_mid_flush_drops_the_rest() {
    let t0 = origin();
    let mut c = cluster();
    c.requests = nz(2);
    let mut m = manager_with(c);
    let client = addr("192.0.2.1:1");
    for _ in 0..4 {
        m.handle_client_datagram(t0, client, b"x");
    }
    let flow = m.flow_ids().next().unwrap();
    outputs(&mut m);
    m.backend_resolved(t0, flow, BackendId::new("b1"), backend_addr());
    let out = outputs(&mut m);
    assert_eq!(
        out.iter()
            .filter(|o| matches!(o, Output::Transmit { .. }))
            .count(),
        2
    );
    assert_eq!(
        out.iter()
            .filter(|o| matches!(
                o,
                Output::Dropped {
                    reason: DropReason::RequestsExhausted,
                    ..
                }
            ))
            .count(),
        2
    );
    assert_eq!(closes(&out), vec![(flow, CloseReason::RequestsReached)]);
}

#[test]
fn close_all_closes_every_flow_with_drain() {
    let t0 = origin();
    let mut m = manager();
    let a = established(&mut m, t0, addr("192.0.2.1:1"));
    let ClientDecision::Queued { flow: b } =
        m.handle_client_datagram(t0, addr("192.0.2.1:2"), b"x")
    else {
        panic!()
    };
    outputs(&mut m);
    m.close_all(t0);
    let out = outputs(&mut m);
    assert_eq!(
        closes(&out),
        vec![(a, CloseReason::Drain), (b, CloseReason::Drain)]
    );
    assert_eq!(m.active_flows(), 0);
    assert_eq!(m.poll_timeout(), None);
}

#[test]
fn abort_backend_closes_only_its_flows() {
    let t0 = origin();
    let mut m = manager();
    let a = established(&mut m, t0, addr("192.0.2.1:1"));
    let ClientDecision::Queued { flow: b } =
        m.handle_client_datagram(t0, addr("192.0.2.1:2"), b"x")
    else {
        panic!()
    };
    m.backend_resolved(t0, b, BackendId::new("b2"), addr("10.1.0.2:53"));
    outputs(&mut m);
    m.abort_backend(t0, &BackendId::new("b1"), CloseReason::BackendRemoved);
    assert_eq!(
        closes(&outputs(&mut m)),
        vec![(a, CloseReason::BackendRemoved)]
    );
    assert_eq!(m.flow_phase(b), Some(Phase::Established));
}

#[test]
fn abort_flow_closes_with_the_given_reason() {
    let t0 = origin();
    let mut m = manager();
    let a = established(&mut m, t0, addr("192.0.2.1:1"));
    m.abort_flow(t0, a, CloseReason::Aborted);
    let out = outputs(&mut m);
    assert_eq!(closes(&out), vec![(a, CloseReason::Aborted)]);
    assert!(matches!(
        &out[0],
        Output::Metric(MetricEvent::FlowEvicted { flow, reason: CloseReason::Aborted, backend: Some(b), .. })
            if *flow == a && b.as_str() == "b1"
    ));
}

// ----- idempotency -----

#[test]
fn closing_twice_emits_nothing_the_second_time() {
    let t0 = origin();
    let mut m = manager();
    let a = established(&mut m, t0, addr("192.0.2.1:1"));
    m.abort_flow(t0, a, CloseReason::Aborted);
    assert_eq!(outputs(&mut m).len(), 2);
    m.abort_flow(t0, a, CloseReason::Aborted);
    m.abort_flow(t0, FlowId::from_u64(12345), CloseReason::Aborted);
    m.close_all(t0);
    m.abort_backend(t0, &BackendId::new("b1"), CloseReason::BackendRemoved);
    m.handle_timeout(t0 + Duration::from_secs(3600));
    assert!(outputs(&mut m).is_empty());
}

#[test]
fn close_all_on_empty_manager_emits_nothing() {
    let mut m = manager();
    m.close_all(origin());
    assert!(outputs(&mut m).is_empty());
}

// ----- reconfiguration -----

#[test]
fn reconfig_applies_to_new_flows_only() {
    let t0 = origin();
    let mut c = cluster();
    c.responses = nz(1);
    c.front_timeout = Some(Duration::from_secs(2));
    let mut m = manager_with(c);
    let old = established(&mut m, t0, addr("192.0.2.1:1"));
    let mut c2 = ClusterConfig::new(ClusterId::new("dns2"));
    c2.send_proxy_protocol = true;
    m.set_cluster(t0, Some(c2));
    let new = established(&mut m, t0, addr("192.0.2.1:2"));
    assert_eq!(m.flow_cluster(old).map(ClusterId::as_str), Some("dns"));
    assert_eq!(m.flow_cluster(new).map(ClusterId::as_str), Some("dns2"));
    // Old flow keeps no PROXY header, responses = 1, front timeout 2 s.
    assert_eq!(
        m.handle_client_datagram(t0, addr("192.0.2.1:1"), b"x"),
        ClientDecision::Forward {
            flow: old,
            proxy_header: None
        }
    );
    m.handle_timeout(t0 + Duration::from_secs(2));
    assert_eq!(closes(&outputs(&mut m)), vec![(old, CloseReason::Idle)]);
    // New flow: no responses cap.
    for _ in 0..3 {
        m.handle_backend_datagram(t0, new, b"r");
    }
    assert_eq!(m.flow_phase(new), Some(Phase::Established));
}

#[test]
fn removing_the_cluster_drops_no_backend_even_for_tracked_keys() {
    let t0 = origin();
    let mut m = manager();
    let a = established(&mut m, t0, addr("192.0.2.1:1"));
    m.set_cluster(t0, None);
    assert_eq!(
        m.handle_client_datagram(t0, addr("192.0.2.1:1"), b"x"),
        ClientDecision::Dropped(DropReason::NoBackend)
    );
    // Replies still go back until the flow idles out.
    assert!(matches!(
        m.handle_backend_datagram(t0, a, b"r"),
        BackendDecision::Return { .. }
    ));
}

#[test]
fn default_timeouts_change_for_new_flows_only() {
    let t0 = origin();
    let mut m = manager();
    let a = established(&mut m, t0, addr("192.0.2.1:1"));
    m.set_default_timeouts(Duration::from_secs(100), Duration::from_secs(100));
    let b = established(&mut m, t0, addr("192.0.2.1:2"));
    m.handle_timeout(t0 + Duration::from_secs(10));
    assert_eq!(closes(&outputs(&mut m)), vec![(a, CloseReason::Idle)]);
    assert_eq!(m.poll_timeout(), Some(t0 + Duration::from_secs(100)));
    assert_eq!(m.flow_phase(b), Some(Phase::Established));
}

#[test]
fn lowering_max_rx_size_drops_larger_datagrams() {
    let t0 = origin();
    let mut m = manager();
    let a = established(&mut m, t0, addr("192.0.2.1:1"));
    m.set_max_rx_datagram_size(4);
    assert_eq!(
        m.handle_client_datagram(t0, addr("192.0.2.1:1"), b"12345"),
        ClientDecision::Dropped(DropReason::Truncated)
    );
    assert_eq!(
        m.handle_backend_datagram(t0, a, b"12345"),
        BackendDecision::Dropped(DropReason::Truncated)
    );
    assert!(matches!(
        m.handle_client_datagram(t0, addr("192.0.2.1:1"), b"1234"),
        ClientDecision::Forward { .. }
    ));
}

#[test]
fn cap_shrink_below_live_count_only_sheds_new_flows() {
    let t0 = origin();
    let mut m = manager();
    let flows: Vec<FlowId> = (1..=4)
        .map(|p| established(&mut m, t0, SocketAddr::new(addr("192.0.2.1:0").ip(), p)))
        .collect();
    m.set_max_flows(2);
    assert_eq!(m.active_flows(), 4, "shrinking closes nothing");
    assert!(outputs(&mut m).is_empty());
    assert_eq!(
        m.handle_client_datagram(t0, addr("192.0.2.9:9"), b"x"),
        ClientDecision::Dropped(DropReason::Shed)
    );
    for f in &flows[..3] {
        m.abort_flow(t0, *f, CloseReason::Aborted);
    }
    outputs(&mut m);
    assert!(matches!(
        m.handle_client_datagram(t0, addr("192.0.2.9:9"), b"x"),
        ClientDecision::Queued { .. }
    ));
    assert!(matches!(
        m.handle_client_datagram(t0, addr("192.0.2.9:10"), b"x"),
        ClientDecision::Dropped(DropReason::Shed)
    ));
    assert_eq!(m.active_flows(), 2);
}

#[test]
fn max_flows_zero_admits_nothing() {
    let mut m = manager();
    m.set_max_flows(0);
    assert_eq!(
        m.handle_client_datagram(origin(), addr("192.0.2.1:1"), b"x"),
        ClientDecision::Dropped(DropReason::Shed)
    );
}

#[test]
fn huge_timeouts_from_an_order_do_not_overflow() {
    let t0 = origin();
    let mut c = cluster();
    c.front_timeout = Some(Duration::MAX);
    c.back_timeout = Some(Duration::MAX);
    let mut m = manager_with(c);
    let flow = established(&mut m, t0, addr("192.0.2.1:1"));
    m.handle_backend_datagram(t0, flow, b"r");
    m.handle_client_datagram(t0, addr("192.0.2.1:1"), b"q");
    assert!(m.poll_timeout().unwrap() > t0 + Duration::from_secs(365 * 86_400));
    m.close_all(t0);
    assert_eq!(m.active_flows(), 0);
}

// ----- PROXY protocol -----

#[test]
fn proxy_header_on_first_datagram_only_by_default() {
    let t0 = origin();
    let mut c = cluster();
    c.send_proxy_protocol = true;
    let mut m = manager_with(c);
    let client = addr("192.0.2.1:4000");
    let ClientDecision::Queued { flow } = m.handle_client_datagram(t0, client, b"a") else {
        panic!()
    };
    m.handle_client_datagram(t0, client, b"b");
    outputs(&mut m);
    m.backend_resolved(t0, flow, BackendId::new("b1"), backend_addr());
    let headers: Vec<Option<ProxyHeader>> = outputs(&mut m)
        .into_iter()
        .filter_map(|o| match o {
            Output::Transmit { proxy_header, .. } => Some(proxy_header),
            _ => None,
        })
        .collect();
    let expected = ProxyHeader::new(client, addr("10.0.0.1:53"));
    assert_eq!(headers, vec![Some(expected), None]);
    assert_eq!(expected.as_bytes()[13], proxy_protocol::FAMILY_UDP4);
    assert_eq!(
        m.handle_client_datagram(t0, client, b"c"),
        ClientDecision::Forward {
            flow,
            proxy_header: None
        }
    );
}

#[test]
fn proxy_header_on_every_datagram_when_asked() {
    let t0 = origin();
    let mut c = cluster();
    c.send_proxy_protocol = true;
    c.proxy_protocol_every_datagram = true;
    let mut m = manager_with(c);
    let client = addr("192.0.2.1:4000");
    let flow = established(&mut m, t0, client);
    let expected = ProxyHeader::new(client, addr("10.0.0.1:53"));
    for _ in 0..3 {
        assert_eq!(
            m.handle_client_datagram(t0, client, b"x"),
            ClientDecision::Forward {
                flow,
                proxy_header: Some(expected)
            }
        );
    }
}

#[test]
fn proxy_header_for_ipv6_and_mixed_families() {
    let t0 = origin();
    let mut c = cluster();
    c.send_proxy_protocol = true;
    c.proxy_protocol_every_datagram = true;
    let mut cfg = config();
    cfg.listener = addr("[2001:db8::53]:53");
    let mut m = UdpFlowManager::new(cfg, 1);
    m.set_cluster(t0, Some(c));
    let v6 = addr("[2001:db8::1]:1");
    let f6 = established(&mut m, t0, v6);
    let ClientDecision::Forward {
        proxy_header: Some(h),
        ..
    } = m.handle_client_datagram(t0, v6, b"x")
    else {
        panic!()
    };
    assert_eq!(&h.as_bytes()[12..16], &[0x21, 0x22, 0x00, 0x24]);
    assert_eq!(
        &h.as_bytes()[16..32],
        &addr("[2001:db8::1]:1")
            .ip()
            .to_string()
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets()
    );
    let v4 = addr("192.0.2.1:1");
    established(&mut m, t0, v4);
    let ClientDecision::Forward {
        proxy_header: Some(h),
        ..
    } = m.handle_client_datagram(t0, v4, b"x")
    else {
        panic!()
    };
    assert_eq!(
        &h.as_bytes()[12..],
        &[0x21, 0x00, 0x00, 0x00],
        "AF_UNSPEC, no addresses"
    );
    assert_ne!(m.flow_client(f6), None);
}

#[test]
fn handle_input_dispatches_like_the_named_methods() {
    let t0 = origin();
    let mut m = UdpFlowManager::new(config(), 3);
    m.handle_input(t0, Input::SetCluster(Some(cluster())));
    let ClientDecision::Queued { flow } = m.handle_client_datagram(t0, addr("192.0.2.1:1"), b"x")
    else {
        panic!()
    };
    m.handle_input(
        t0,
        Input::BackendResolved {
            flow,
            backend: BackendId::new("b1"),
            addr: backend_addr(),
        },
    );
    assert_eq!(m.flow_phase(flow), Some(Phase::Established));
    m.handle_input(t0, Input::SetMaxRxDatagramSize(1));
    assert_eq!(m.config().max_rx_datagram_size, 1);
    m.handle_input(
        t0,
        Input::SetDefaultTimeouts {
            front: Duration::from_secs(1),
            back: Duration::from_secs(2),
        },
    );
    assert_eq!(m.config().front_timeout, Duration::from_secs(1));
    m.handle_input(t0, Input::SetMaxFlows(9));
    assert_eq!(m.config().max_flows, 9);
    m.handle_input(
        t0,
        Input::AbortBackend {
            backend: BackendId::new("other"),
            reason: CloseReason::BackendRemoved,
        },
    );
    assert_eq!(m.active_flows(), 1);
    m.handle_input(
        t0,
        Input::AbortFlow {
            flow,
            reason: CloseReason::Aborted,
        },
    );
    assert_eq!(m.active_flows(), 0);
    m.handle_input(t0, Input::Drain);
    assert!(m.is_drained());
    m.handle_input(t0, Input::CloseAll);
    let out = outputs(&mut m);
    assert_eq!(closes(&out), vec![(flow, CloseReason::Aborted)]);
    assert_eq!(m.flow_for_key(&FlowKey::Source(addr("192.0.2.1:1"))), None);
}

// ----- handover (binary upgrade) -----

#[test]
fn handed_over_flow_keeps_backend_counters_and_deadline() {
    let t0 = origin();
    let mut c = cluster();
    c.send_proxy_protocol = true;
    c.responses = nz(2);
    let mut old = manager_with(c);
    let client = addr("192.0.2.1:1");
    let flow = established(&mut old, t0, client);
    old.handle_backend_datagram(t0, flow, b"r1");
    let t1 = t0 + Duration::from_secs(2);
    let h = old
        .hand_over(t1, flow)
        .expect("established flow hands over");
    assert_eq!(h.backend_addr, backend_addr());
    assert_eq!((h.datagrams_in, h.datagrams_out), (1, 1));
    assert_eq!(
        h.idle_remaining,
        Duration::from_secs(3),
        "back timeout 5 s set at t0"
    );
    assert!(h.proxy_header_sent);
    let out = outputs(&mut old);
    assert_eq!(closes(&out), vec![(flow, CloseReason::HandedOver)]);
    assert_eq!(old.active_flows(), 0);
    assert_eq!(old.hand_over(t1, flow), None, "idempotent");

    // The new worker: another manager, another seed, no cluster knobs needed.
    let mut new = UdpFlowManager::new(config(), 777);
    new.set_cluster(t1, Some(cluster()));
    let id = new.adopt(t1, h).expect("adopted");
    assert!(matches!(
        outputs(&mut new).as_slice(),
        [Output::Metric(MetricEvent::FlowCreated { .. })]
    ));
    assert_eq!(new.flow_phase(id), Some(Phase::Established));
    assert_eq!(
        new.handle_client_datagram(t1, client, b"q"),
        ClientDecision::Forward {
            flow: id,
            proxy_header: None
        },
        "first PROXY header already sent by the old worker"
    );
    assert_eq!(
        new.handle_backend_datagram(t1, id, b"r2"),
        BackendDecision::Return { dst: client }
    );
    // Captured responses = 2 per request, 2 requests: the fourth reply
    // closes it, counters carried.
    new.handle_backend_datagram(t1, id, b"r3");
    assert_eq!(new.active_flows(), 1, "one answer still owed");
    new.handle_backend_datagram(t1, id, b"r4");
    let out = outputs(&mut new);
    let Some(Output::CloseFlow { reason, record, .. }) = out.last() else {
        panic!("closed by the carried cap")
    };
    assert_eq!(*reason, CloseReason::ResponsesReached);
    assert_eq!((record.datagrams_in, record.datagrams_out), (2, 4));
    assert_eq!(record.duration(), Duration::from_secs(2));
}

#[test]
fn awaiting_flow_cannot_be_handed_over() {
    let t0 = origin();
    let mut m = manager();
    let ClientDecision::Queued { flow } = m.handle_client_datagram(t0, addr("192.0.2.1:1"), b"x")
    else {
        panic!()
    };
    outputs(&mut m);
    assert_eq!(m.hand_over(t0, flow), None);
    assert!(outputs(&mut m).is_empty());
    assert_eq!(m.flow_phase(flow), Some(Phase::AwaitingBackend));
}

#[test]
fn adoption_honours_key_cap_and_drain() {
    let t0 = origin();
    let mut old = manager();
    let a = established(&mut old, t0, addr("192.0.2.1:1"));
    let b = established(&mut old, t0, addr("192.0.2.1:2"));
    let ha = old.hand_over(t0, a).unwrap();
    let hb = old.hand_over(t0, b).unwrap();
    let mut new = manager();
    let existing = established(&mut new, t0, addr("192.0.2.1:1"));
    assert_eq!(
        new.adopt(t0, ha.clone()),
        Err(AdoptError::KeyTaken {
            key: FlowKey::Source(addr("192.0.2.1:1")),
            existing
        })
    );
    new.set_max_flows(1);
    assert_eq!(
        new.adopt(t0, hb.clone()),
        Err(AdoptError::AtCapacity { max_flows: 1 })
    );
    new.set_max_flows(4);
    new.drain(t0);
    assert_eq!(new.adopt(t0, hb), Err(AdoptError::Draining));
    assert_eq!(new.active_flows(), 1);
}

// ----- quickcheck properties -----

mod properties {
    use std::collections::HashMap;

    use quickcheck::{Arbitrary, Gen, QuickCheck};

    use super::*;

    #[derive(Clone, Debug)]
    enum Step {
        Client {
            client: u8,
            len: u8,
        },
        Backend {
            flow: u8,
            len: u8,
        },
        Resolve {
            flow: u8,
            backend: u8,
        },
        Advance {
            ms: u16,
        },
        Timeout,
        SetMaxFlows(u8),
        Reconfig {
            requests: u8,
            responses: u8,
            front_ms: u16,
            back_ms: u16,
            quic: bool,
        },
        Drain,
        Abort(u8),
        AbortBackend(u8),
        CloseAll,
    }

    impl Arbitrary for Step {
        fn arbitrary(g: &mut Gen) -> Self {
            // Weighted: datagrams and time dominate, reconfiguration is rarer.
            match u8::arbitrary(g) % 20 {
                0..=5 => Step::Client {
                    client: u8::arbitrary(g) % 24,
                    len: u8::arbitrary(g),
                },
                6..=8 => Step::Backend {
                    flow: u8::arbitrary(g),
                    len: u8::arbitrary(g),
                },
                9..=11 => Step::Resolve {
                    flow: u8::arbitrary(g),
                    backend: u8::arbitrary(g) % 3,
                },
                12..=13 => Step::Advance {
                    ms: u16::arbitrary(g) % 5_000,
                },
                14 => Step::Timeout,
                15 => Step::SetMaxFlows(u8::arbitrary(g) % 12),
                16 => Step::Reconfig {
                    requests: u8::arbitrary(g) % 4,
                    responses: u8::arbitrary(g) % 3,
                    front_ms: u16::arbitrary(g) % 8_000,
                    back_ms: u16::arbitrary(g) % 8_000,
                    quic: bool::arbitrary(g),
                },
                17 => {
                    if u8::arbitrary(g) % 8 == 0 {
                        Step::Drain
                    } else {
                        Step::CloseAll
                    }
                }
                18 => Step::Abort(u8::arbitrary(g)),
                _ => Step::AbortBackend(u8::arbitrary(g) % 3),
            }
        }
    }

    /// Runs the steps, checking after each one; returns false on a breach.
    struct Run {
        m: UdpFlowManager,
        now: Instant,
        max_flows: usize,
        highest: usize,
        created: usize,
        closed: usize,
        /// Model of each live flow's idle deadline and captured timeouts.
        deadlines: HashMap<FlowId, (Instant, Duration, Duration)>,
        cluster: ClusterConfig,
        stale: Vec<FlowId>,
    }

    impl Run {
        fn new() -> Self {
            let mut cfg = config();
            cfg.max_flows = 6;
            let mut m = UdpFlowManager::new(cfg, 7);
            let cluster = cluster();
            let now = origin();
            m.set_cluster(now, Some(cluster.clone()));
            Run {
                m,
                now,
                max_flows: 6,
                highest: 6,
                created: 0,
                closed: 0,
                deadlines: HashMap::new(),
                cluster,
                stale: Vec::new(),
            }
        }

        fn pick(&self, i: u8) -> Option<FlowId> {
            let live: Vec<FlowId> = self.m.flow_ids().collect();
            // One pick in four names a closed flow (stale id).
            if i.is_multiple_of(4) && !self.stale.is_empty() {
                return Some(self.stale[usize::from(i) % self.stale.len()]);
            }
            (!live.is_empty()).then(|| live[usize::from(i) % live.len()])
        }

        fn touch(&mut self, flow: FlowId, front: bool) {
            if let Some((deadline, f, b)) = self.deadlines.get_mut(&flow) {
                *deadline = self.now + if front { *f } else { *b };
            }
        }

        /// Drains outputs, updating the model; false if a property breaks.
        fn drain(&mut self, timeout_at: Option<Instant>) -> Result<(), Breach> {
            let front = self
                .cluster
                .front_timeout
                .unwrap_or(Duration::from_secs(10));
            let back = self.cluster.back_timeout.unwrap_or(Duration::from_secs(5));
            while let Some(o) = self.m.poll_output() {
                match o {
                    Output::Metric(MetricEvent::FlowCreated { flow, .. }) => {
                        self.created += 1;
                        self.deadlines.insert(flow, (self.now + front, front, back));
                    }
                    Output::CloseFlow { flow, reason, .. } => {
                        self.closed += 1;
                        let Some((deadline, ..)) = self.deadlines.remove(&flow) else {
                            return Err(Breach::Counts); // closed twice or never created
                        };
                        if reason == CloseReason::Idle
                            && (timeout_at.is_none() || deadline > self.now)
                        {
                            return Err(Breach::StaleExpiry);
                        }
                        self.stale.push(flow);
                    }
                    _ => {}
                }
            }
            Ok(())
        }

        fn step(&mut self, step: &Step) -> Result<(), Breach> {
            let before = self.m.active_flows();
            let mut timeout_at = None;
            match *step {
                Step::Client { client, len } => {
                    let src = SocketAddr::new(addr("192.0.2.0:0").ip(), 1000 + u16::from(client));
                    // A short header (a long one for some clients) whose
                    // connection id, under QUIC keys, several clients share.
                    let mut payload = vec![1u8; usize::from(len) % 120];
                    if let Some(first) = payload.first_mut() {
                        *first = if client & 4 != 0 { 0xc1 } else { 0x41 };
                    }
                    if let Some(id) = payload.get_mut(1) {
                        *id = client % 3;
                    }
                    match self.m.handle_client_datagram(self.now, src, &payload) {
                        ClientDecision::Forward { flow, .. } | ClientDecision::Queued { flow } => {
                            self.drain(None)?;
                            self.touch(flow, true);
                        }
                        ClientDecision::Dropped(_) => {}
                        // This run's cluster is never one-way nor DNS_ID.
                        ClientDecision::OneWay { .. } | ClientDecision::DnsQuery { .. } => {
                            return Err(Breach::Counts)
                        }
                    }
                }
                Step::Backend { flow, len } => {
                    if let Some(flow) = self.pick(flow) {
                        let payload = vec![2u8; usize::from(len) % 120];
                        if let BackendDecision::Return { .. } =
                            self.m.handle_backend_datagram(self.now, flow, &payload)
                        {
                            self.touch(flow, false);
                        }
                    }
                }
                Step::Resolve { flow, backend } => {
                    if let Some(flow) = self.pick(flow) {
                        let id = BackendId::new(&format!("b{backend}"));
                        self.m.backend_resolved(self.now, flow, id, backend_addr());
                    }
                }
                Step::Advance { ms } => self.now += Duration::from_millis(u64::from(ms)),
                Step::Timeout => {
                    if let Some(t) = self.m.poll_timeout() {
                        self.now = self.now.max(t);
                    }
                    self.m.handle_timeout(self.now);
                    timeout_at = Some(self.now);
                }
                Step::SetMaxFlows(n) => {
                    self.max_flows = usize::from(n);
                    self.highest = self.highest.max(self.max_flows);
                    self.m.set_max_flows(self.max_flows);
                }
                Step::Reconfig {
                    requests,
                    responses,
                    front_ms,
                    back_ms,
                    quic,
                } => {
                    let mut c = cluster();
                    // QUIC keys: shared connection ids, joins, migrations.
                    c.quic_cid_length = quic.then_some(2);
                    c.requests = NonZeroU32::new(u32::from(requests));
                    c.responses = NonZeroU32::new(u32::from(responses));
                    c.front_timeout = Some(Duration::from_millis(u64::from(front_ms)));
                    c.back_timeout = Some(Duration::from_millis(u64::from(back_ms)));
                    self.cluster = c.clone();
                    self.m.set_cluster(self.now, Some(c));
                }
                Step::Drain => self.m.drain(self.now),
                Step::Abort(i) => {
                    if let Some(flow) = self.pick(i) {
                        self.m.abort_flow(self.now, flow, CloseReason::Aborted);
                    }
                }
                Step::AbortBackend(b) => {
                    let id = BackendId::new(&format!("b{b}"));
                    self.m
                        .abort_backend(self.now, &id, CloseReason::BackendRemoved);
                }
                Step::CloseAll => self.m.close_all(self.now),
            }
            self.drain(timeout_at)?;
            let after = self.m.active_flows();
            // The cap is never exceeded by an admission.
            if (after > before && after > self.max_flows) || after > self.highest {
                return Err(Breach::Cap);
            }
            if after != self.created - self.closed {
                return Err(Breach::Counts);
            }
            if let Some(t) = timeout_at {
                // Every flow due at t is gone, the next deadline is later.
                if self.m.poll_timeout().is_some_and(|next| next <= t)
                    || self.deadlines.values().any(|(d, ..)| *d <= t)
                {
                    return Err(Breach::Timer);
                }
            }
            Ok(())
        }

        /// A final long tick: every flow gone, no timer, created == closed.
        fn finish(&mut self) -> Result<(), Breach> {
            self.now += Duration::from_secs(24 * 3600);
            self.m.handle_timeout(self.now);
            self.drain(Some(self.now))?;
            if self.m.active_flows() == 0
                && self.m.poll_timeout().is_none()
                && self.created == self.closed
                && self.deadlines.is_empty()
            {
                Ok(())
            } else {
                Err(Breach::FinalTick)
            }
        }
    }

    /// Which promise a step sequence broke.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Breach {
        /// An admission above `max_flows`, or more flows than the highest cap.
        Cap,
        /// An `Idle` close of a flow whose (refreshed) deadline had not passed.
        StaleExpiry,
        /// After `handle_timeout(t)`: a flow due at `t` alive, or a deadline
        /// not later than `t`.
        Timer,
        /// created − closed ≠ live, or a close of an unknown flow.
        Counts,
        /// After a final long tick: a flow, a timer, or created ≠ closed.
        FinalTick,
    }

    fn run(steps: &[Step]) -> Result<(), Breach> {
        let mut r = Run::new();
        for s in steps {
            r.step(s)?;
        }
        r.finish()
    }

    fn never(breach: Breach) -> impl Fn(Vec<Step>) -> bool {
        move |steps| run(&steps) != Err(breach)
    }

    fn check(prop: fn(Vec<Step>) -> bool) {
        QuickCheck::new()
            .tests(300)
            .rng(Gen::new(200))
            .quickcheck(prop);
    }

    #[test]
    fn cap_is_never_exceeded() {
        check(|s| never(Breach::Cap)(s));
    }

    #[test]
    fn final_long_tick_leaves_no_flow_no_timer_and_created_equals_closed() {
        check(|s| never(Breach::FinalTick)(s));
    }

    #[test]
    fn stale_expiry_never_closes_a_refreshed_flow() {
        check(|s| never(Breach::StaleExpiry)(s));
    }

    #[test]
    fn every_promise_holds_for_any_step_sequence() {
        check(|s| run(&s).is_ok());
    }
}
