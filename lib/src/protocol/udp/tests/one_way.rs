//! One-way clusters: every datagram is a `OneWay` decision, no flow, no
//! output, no timer, whatever the number of sources.

use super::*;

fn one_way_cluster() -> ClusterConfig {
    let mut c = cluster();
    c.one_way = true;
    c
}

fn one_way_manager() -> UdpFlowManager {
    let mut m = UdpFlowManager::new(config(), 42);
    m.set_cluster(origin(), Some(one_way_cluster()));
    m
}

#[test]
fn one_way_datagram_is_forwarded_without_a_flow() {
    let t0 = origin();
    let mut m = one_way_manager();
    assert!(m.is_one_way());
    let client = addr("192.0.2.1:514");
    let d = m.handle_client_datagram(t0, client, b"<13>hello");
    let ClientDecision::OneWay {
        affinity_hash: hash,
        proxy_header,
    } = d
    else {
        panic!("expected OneWay, got {d:?}");
    };
    assert_eq!(
        hash,
        affinity_hash(DEFAULT_HASH_SEED, AffinityKey::SourceIp, client)
    );
    assert_eq!(proxy_header, None);
    assert_eq!(m.active_flows(), 0);
    assert!(outputs(&mut m).is_empty(), "no SelectBackend, no metric");
    assert_eq!(m.poll_timeout(), None, "no timer armed");
}

#[test]
fn many_sources_cost_no_flow_and_ignore_the_flow_cap() {
    let t0 = origin();
    let mut m = one_way_manager();
    m.set_max_flows(1);
    for port in 0..10_000u16 {
        let src = SocketAddr::new(addr("192.0.2.1:0").ip(), port);
        assert!(matches!(
            m.handle_client_datagram(t0, src, b"x"),
            ClientDecision::OneWay { .. }
        ));
    }
    assert_eq!(m.active_flows(), 0);
    assert!(outputs(&mut m).is_empty());
}

#[test]
fn one_way_affinity_follows_the_affinity_key() {
    let t0 = origin();
    let hash_of =
        |m: &mut UdpFlowManager, src: &str| match m.handle_client_datagram(t0, addr(src), b"x") {
            ClientDecision::OneWay { affinity_hash, .. } => affinity_hash,
            d => panic!("expected OneWay, got {d:?}"),
        };
    let mut m = one_way_manager();
    assert_eq!(
        hash_of(&mut m, "192.0.2.1:1000"),
        hash_of(&mut m, "192.0.2.1:2000"),
        "SOURCE_IP: one client, one hash"
    );
    let mut c = one_way_cluster();
    c.affinity_key = AffinityKey::SourceIpPort;
    m.set_cluster(t0, Some(c));
    assert_ne!(
        hash_of(&mut m, "192.0.2.1:1000"),
        hash_of(&mut m, "192.0.2.1:2000"),
        "SOURCE_IP_PORT: each port its own hash"
    );
}

#[test]
fn one_way_proxy_header_goes_on_every_datagram() {
    let t0 = origin();
    let mut m = UdpFlowManager::new(config(), 42);
    let mut c = one_way_cluster();
    c.send_proxy_protocol = true;
    m.set_cluster(t0, Some(c));
    let client = addr("192.0.2.7:5140");
    for _ in 0..3 {
        let d = m.handle_client_datagram(t0, client, b"x");
        let ClientDecision::OneWay { proxy_header, .. } = d else {
            panic!("expected OneWay, got {d:?}");
        };
        assert_eq!(
            proxy_header,
            Some(ProxyHeader::new(client, addr("10.0.0.1:53")))
        );
    }
}

#[test]
fn one_way_keeps_size_cluster_and_empty_checks() {
    let t0 = origin();
    let mut m = one_way_manager();
    assert_eq!(
        m.handle_client_datagram(t0, addr("192.0.2.1:1"), &[0u8; 101]),
        ClientDecision::Dropped(DropReason::Truncated)
    );
    assert_eq!(
        m.handle_client_datagram(t0, addr("192.0.2.1:1"), b""),
        ClientDecision::Dropped(DropReason::Invalid)
    );
    m.set_cluster(t0, None);
    assert!(!m.is_one_way());
    assert_eq!(
        m.handle_client_datagram(t0, addr("192.0.2.1:1"), b"x"),
        ClientDecision::Dropped(DropReason::NoBackend)
    );
}

#[test]
fn draining_does_not_shed_one_way_datagrams() {
    let t0 = origin();
    let mut m = one_way_manager();
    m.drain(t0);
    assert!(matches!(
        m.handle_client_datagram(t0, addr("192.0.2.1:1"), b"x"),
        ClientDecision::OneWay { .. }
    ));
    assert!(m.is_drained(), "no flow: drained at once");
}

#[test]
fn switching_to_one_way_leaves_live_flows_to_their_idle_timeout() {
    let t0 = origin();
    let mut m = manager();
    let client = addr("192.0.2.1:4000");
    let ClientDecision::Queued { flow } = m.handle_client_datagram(t0, client, b"q") else {
        panic!("expected a new flow");
    };
    outputs(&mut m);
    m.backend_resolved(t0, flow, BackendId::new("b"), addr("10.0.0.9:53"));
    outputs(&mut m);
    m.set_cluster(t0, Some(one_way_cluster()));
    // The same client's next datagram goes one-way, not to its flow.
    assert!(matches!(
        m.handle_client_datagram(t0, client, b"q2"),
        ClientDecision::OneWay { .. }
    ));
    // The flow still returns its backend's late reply, then idles out.
    assert_eq!(
        m.handle_backend_datagram(t0, flow, b"a"),
        BackendDecision::Return { dst: client }
    );
    m.handle_timeout(t0 + Duration::from_secs(11));
    assert_eq!(m.active_flows(), 0);
    let out = outputs(&mut m);
    assert!(out.iter().any(|o| matches!(
        o,
        Output::CloseFlow {
            reason: CloseReason::Idle,
            ..
        }
    )));
}

mod properties {
    use quickcheck::{Arbitrary, Gen, QuickCheck};

    use super::*;

    #[derive(Debug, Clone)]
    enum Step {
        /// A datagram from source number `client` of `len` bytes.
        Datagram { client: u16, len: u8 },
        /// The cluster switches one-way on or off.
        Toggle,
        /// Time passes and the timer fires.
        Tick { secs: u8 },
    }

    impl Arbitrary for Step {
        fn arbitrary(g: &mut Gen) -> Self {
            match u8::arbitrary(g) % 10 {
                0 => Step::Toggle,
                1 => Step::Tick {
                    secs: u8::arbitrary(g) % 20,
                },
                _ => Step::Datagram {
                    client: u16::arbitrary(g),
                    len: u8::arbitrary(g),
                },
            }
        }
    }

    /// While the cluster is one-way, no datagram creates a flow or an
    /// output, every non-empty datagram within size is `OneWay` with the
    /// affinity hash of its source, and the live-flow count never grows.
    fn one_way_never_creates_state(steps: Vec<Step>) -> bool {
        let t0 = origin();
        let mut m = UdpFlowManager::new(config(), 9);
        let mut one_way = true;
        let mut c = one_way_cluster();
        m.set_cluster(t0, Some(c.clone()));
        let mut now = t0;
        for step in &steps {
            match *step {
                Step::Toggle => {
                    one_way = !one_way;
                    c.one_way = one_way;
                    m.set_cluster(now, Some(c.clone()));
                }
                Step::Tick { secs } => {
                    now += Duration::from_secs(u64::from(secs));
                    m.handle_timeout(now);
                    outputs(&mut m);
                }
                Step::Datagram { client, len } => {
                    let src = SocketAddr::new(addr("198.51.100.1:0").ip(), client);
                    let payload = vec![7u8; usize::from(len)];
                    let before = m.active_flows();
                    let d = m.handle_client_datagram(now, src, &payload);
                    if !one_way {
                        // Flow path: resolve at once so flows are real.
                        for o in outputs(&mut m) {
                            if let Output::SelectBackend { flow, .. } = o {
                                m.backend_resolved(now, flow, BackendId::new("b"), backend());
                            }
                        }
                        outputs(&mut m);
                        continue;
                    }
                    let want = if payload.is_empty() {
                        ClientDecision::Dropped(DropReason::Invalid)
                    } else if payload.len() > 100 {
                        ClientDecision::Dropped(DropReason::Truncated)
                    } else {
                        ClientDecision::OneWay {
                            affinity_hash: affinity_hash(
                                DEFAULT_HASH_SEED,
                                AffinityKey::SourceIp,
                                src,
                            ),
                            proxy_header: None,
                        }
                    };
                    if d != want || m.active_flows() != before || m.poll_output().is_some() {
                        return false;
                    }
                }
            }
        }
        true
    }

    fn backend() -> SocketAddr {
        addr("10.0.0.9:514")
    }

    #[test]
    fn one_way_datagrams_never_create_state() {
        QuickCheck::new()
            .tests(300)
            .quickcheck(one_way_never_creates_state as fn(Vec<Step>) -> bool);
    }
}
