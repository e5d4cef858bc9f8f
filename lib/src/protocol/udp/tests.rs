//! Unit tests of the UDP flow manager: one per admission step, phase
//! transition, teardown reason, idempotency case, reconfiguration capture,
//! drain and cap shrink, plus quickcheck properties.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use super::*;

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

fn outputs(m: &mut UdpFlowManager) -> Vec<Output> {
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
    } = &out[1]
    else {
        panic!("expected SelectBackend, got {:?}", out[1]);
    };
    assert_eq!(*f, flow);
    assert_eq!(cluster.as_str(), "dns");
    assert_eq!(*h, affinity_hash(42, AffinityKey::SourceIp, client));
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
