//! Health checker state machine on an injected clock, wire configuration,
//! and probes against loopback backends that answer, stop and come back.

use std::net::{SocketAddr, TcpListener, UdpSocket as StdUdpSocket};
use std::time::{Duration, Instant};

use mio::{Events, Poll, Token};

use super::probe::{ProbeOutcome, ProbeSocket};
use super::*;
use crate::backends::{BackendId, ClusterId};

/// The tests' fixed origin: the checker only compares instants, so any
/// instant will do; the clock is read once here.
#[allow(clippy::disallowed_methods)]
fn start() -> Instant {
    Instant::now()
}

fn config(mode: HealthMode) -> HealthConfig {
    HealthConfig {
        mode,
        udp_payload: Arc::from(&b"ping"[..]),
        ..HealthConfig::default()
    }
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn checker(mode: HealthMode, now: Instant) -> HealthChecker {
    let mut hc = HealthChecker::new();
    hc.configure(now, ClusterId::from("c"), config(mode));
    hc.add_backend(now, ClusterId::from("c"), BackendId::from("b"), addr(5300));
    hc
}

fn events(hc: &mut HealthChecker) -> Vec<HealthEvent> {
    std::iter::from_fn(|| hc.poll_event()).collect()
}

fn down() -> HealthEvent {
    HealthEvent::BackendDown {
        cluster: "c".into(),
        backend: "b".into(),
    }
}

fn up() -> HealthEvent {
    HealthEvent::BackendUp {
        cluster: "c".into(),
        backend: "b".into(),
    }
}

#[test]
fn tcp_probe_targets_the_companion_port_and_one_probe_at_a_time() {
    let t0 = start();
    let mut hc = HealthChecker::new();
    let cfg = HealthConfig {
        tcp_port: Some(8053),
        ..config(HealthMode::TcpProbe)
    };
    hc.configure(t0, "c".into(), cfg);
    hc.add_backend(t0, "c".into(), "b".into(), addr(53));
    assert_eq!(hc.poll_timeout(), Some(t0));
    let probe = hc.poll_probe(t0).unwrap();
    assert_eq!((probe.addr, &probe.kind), (addr(8053), &ProbeKind::Tcp));
    assert_eq!(probe.deadline, t0 + Duration::from_secs(2));
    assert_eq!(hc.poll_probe(t0), None);
    assert_eq!(hc.poll_timeout(), Some(probe.deadline));
    // Done early: the next probe waits for the interval from the start.
    assert!(hc.probe_succeeded(t0, probe.id));
    assert_eq!(hc.poll_timeout(), Some(t0 + Duration::from_secs(5)));
    assert_eq!(hc.poll_probe(t0 + Duration::from_secs(4)), None);
    assert!(hc.poll_probe(t0 + Duration::from_secs(5)).is_some());
}

#[test]
fn udp_probe_targets_the_data_port_with_the_payload() {
    let t0 = start();
    let mut hc = checker(HealthMode::UdpProbe, t0);
    let probe = hc.poll_probe(t0).unwrap();
    assert_eq!(probe.addr, addr(5300));
    assert_eq!(
        probe.kind,
        ProbeKind::Udp {
            payload: Arc::from(&b"ping"[..])
        }
    );
}

#[test]
fn fall_failures_take_it_down_and_rise_successes_bring_it_up() {
    let t0 = start();
    let mut hc = checker(HealthMode::UdpProbe, t0);
    let mut now = t0;
    let mut step = |hc: &mut HealthChecker, ok: bool| {
        let probe = hc.poll_probe(now).unwrap();
        assert!(if ok {
            hc.probe_succeeded(now, probe.id)
        } else {
            hc.probe_failed(now, probe.id)
        });
        now += Duration::from_secs(5);
        events(hc)
    };
    assert_eq!(step(&mut hc, false), vec![]);
    assert_eq!(step(&mut hc, false), vec![]);
    // A success in between resets the failure count.
    assert_eq!(step(&mut hc, true), vec![]);
    assert_eq!(step(&mut hc, false), vec![]);
    assert_eq!(step(&mut hc, false), vec![]);
    assert_eq!(step(&mut hc, false), vec![down()]);
    assert_eq!(hc.is_up("c", "b"), Some(false));
    assert_eq!(step(&mut hc, false), vec![]);
    assert_eq!(step(&mut hc, true), vec![]);
    assert_eq!(step(&mut hc, true), vec![up()]);
    assert_eq!(step(&mut hc, true), vec![]);
}

#[test]
fn silence_past_the_deadline_is_a_failure_and_late_answers_are_ignored() {
    let t0 = start();
    let mut hc = checker(HealthMode::UdpProbe, t0);
    let mut now = t0;
    let mut last = None;
    for round in 0..3 {
        let probe = hc.poll_probe(now).unwrap();
        hc.handle_timeout(probe.deadline - Duration::from_millis(1));
        assert_eq!(events(&mut hc), vec![], "round {round}: not yet late");
        hc.handle_timeout(probe.deadline);
        let mut expected = vec![HealthEvent::ProbeTimedOut {
            probe: probe.id,
            cluster: "c".into(),
            backend: "b".into(),
        }];
        if round == 2 {
            expected.push(down());
        }
        assert_eq!(events(&mut hc), expected);
        now += Duration::from_secs(5);
        last = Some(probe.id);
    }
    assert!(!hc.probe_succeeded(now, last.unwrap()));
    assert_eq!(hc.is_up("c", "b"), Some(false));
}

#[test]
fn passive_failures_count_toward_fall_only_when_probed() {
    let t0 = start();
    let mut hc = checker(HealthMode::TcpProbe, t0);
    assert!(hc.passive_failure(t0, "c", "b"));
    assert!(hc.passive_failure(t0, "c", "b"));
    assert_eq!(events(&mut hc), vec![]);
    assert!(hc.passive_failure(t0, "c", "b"));
    assert_eq!(events(&mut hc), vec![down()]);

    let mut off = checker(HealthMode::Off, t0);
    for _ in 0..5 {
        assert!(!off.passive_failure(t0, "c", "b"));
    }
    assert_eq!(events(&mut off), vec![]);
    assert_eq!(off.is_up("c", "b"), Some(true));
}

#[test]
fn mode_off_never_probes_and_turning_off_releases_down_backends() {
    let t0 = start();
    let mut off = checker(HealthMode::Off, t0);
    assert_eq!(off.poll_probe(t0 + Duration::from_secs(60)), None);
    assert_eq!(off.poll_timeout(), None);

    let mut hc = checker(HealthMode::TcpProbe, t0);
    for _ in 0..3 {
        hc.passive_failure(t0, "c", "b");
    }
    let in_flight = hc.poll_probe(t0).unwrap();
    events(&mut hc);
    hc.configure(t0, "c".into(), config(HealthMode::Off));
    assert_eq!(
        events(&mut hc),
        vec![
            HealthEvent::ProbeAbandoned {
                probe: in_flight.id
            },
            up()
        ]
    );
    assert_eq!(hc.poll_timeout(), None);
}

#[test]
fn removing_a_backend_or_cluster_abandons_its_probe() {
    let t0 = start();
    let mut hc = checker(HealthMode::UdpProbe, t0);
    let probe = hc.poll_probe(t0).unwrap();
    hc.remove_backend("c", "b");
    assert_eq!(
        events(&mut hc),
        vec![HealthEvent::ProbeAbandoned { probe: probe.id }]
    );
    assert!(!hc.probe_failed(t0, probe.id));
    assert_eq!(hc.is_up("c", "b"), None);

    let mut hc = checker(HealthMode::UdpProbe, t0);
    let probe = hc.poll_probe(t0).unwrap();
    hc.remove_cluster("c");
    assert_eq!(
        events(&mut hc),
        vec![HealthEvent::ProbeAbandoned { probe: probe.id }]
    );
    assert_eq!(hc.poll_timeout(), None);
}

#[test]
fn wire_config_defaults_and_errors_name_the_field() {
    let wire = command::UdpHealthConfig::default();
    let cfg = HealthConfig::try_from(&wire).unwrap();
    // The block exists without a mode: TCP_PROBE.
    assert_eq!(cfg.mode, HealthMode::TcpProbe);
    assert_eq!(
        (cfg.rise.get(), cfg.fall.get(), cfg.fail_open),
        (2, 3, true)
    );
    assert_eq!(
        (cfg.interval, cfg.timeout),
        (Duration::from_secs(5), Duration::from_secs(2))
    );
    assert_eq!(cfg.tcp_port, None);

    let udp = command::UdpHealthConfig {
        mode: Some(command::UdpHealthMode::UdpProbe as i32),
        fail_open: Some(false),
        udp_probe_payload: Some(b"x".to_vec()),
        ..Default::default()
    };
    let cfg = HealthConfig::try_from(&udp).unwrap();
    assert_eq!(
        (cfg.mode, cfg.fail_open, &*cfg.udp_payload),
        (HealthMode::UdpProbe, false, &b"x"[..])
    );

    let bad = |w: command::UdpHealthConfig| HealthConfig::try_from(&w).unwrap_err().to_string();
    assert_eq!(
        bad(command::UdpHealthConfig {
            mode: Some(9),
            ..Default::default()
        }),
        "udp.health.mode: unknown value 9"
    );
    assert_eq!(
        bad(command::UdpHealthConfig {
            tcp_port: Some(70_000),
            ..Default::default()
        }),
        "udp.health.tcp_port: 70000 is not a port (1..=65535)"
    );
    assert_eq!(
        bad(command::UdpHealthConfig {
            fall: Some(0),
            ..Default::default()
        }),
        "udp.health.fall: must be at least 1, got 0"
    );
    assert_eq!(
        bad(command::UdpHealthConfig {
            probe_timeout_seconds: Some(0),
            ..Default::default()
        }),
        "udp.health.probe_timeout_seconds: must be at least 1, got 0"
    );
}

// ---- probes on real loopback sockets -------------------------------------

/// Waits (bounded: 50 polls of at most 100 ms) for the probe's outcome.
fn wait_outcome(poll: &mut Poll, socket: &mut ProbeSocket) -> Option<ProbeOutcome> {
    let mut events = Events::with_capacity(8);
    for _ in 0..50 {
        if let Some(outcome) = socket.poll_outcome() {
            return Some(outcome);
        }
        poll.poll(&mut events, Some(Duration::from_millis(100)))
            .unwrap();
    }
    None
}

/// How the loopback backend behaves for one probe.
enum Backend<'a> {
    /// Receives the probe and replies.
    Answers(&'a StdUdpSocket),
    /// Receives the probe and says nothing.
    Silent(&'a StdUdpSocket),
    /// Nothing is listening (UDP refused) / TCP listener present or not.
    Other,
}

/// Runs the next due probe at `now` against the backend and reports the
/// result to the checker the way the worker does; returns the events.
fn probe_round(
    hc: &mut HealthChecker,
    poll: &mut Poll,
    now: Instant,
    backend: Backend<'_>,
) -> Vec<HealthEvent> {
    let probe = hc.poll_probe(now).expect("a probe is due");
    let mut socket = match ProbeSocket::open(&probe) {
        Ok(socket) => socket,
        Err(_) => {
            hc.probe_failed(now, probe.id);
            return events(hc);
        }
    };
    socket.register(poll.registry(), Token(1)).unwrap();
    let mut buf = [0u8; 16];
    match backend {
        Backend::Answers(b) => {
            let (n, from) = b.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], b"ping");
            b.send_to(b"pong", from).unwrap();
        }
        Backend::Silent(b) => {
            // The probe did go out; then the deadline passes in silence.
            let (n, _) = b.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], b"ping");
            assert!(socket.poll_outcome().is_none());
            hc.handle_timeout(probe.deadline);
            socket.deregister(poll.registry()).unwrap();
            return events(hc);
        }
        Backend::Other => {}
    }
    match wait_outcome(poll, &mut socket) {
        Some(ProbeOutcome::Success) => assert!(hc.probe_succeeded(now, probe.id)),
        Some(ProbeOutcome::Failure(_)) => assert!(hc.probe_failed(now, probe.id)),
        None => panic!("no outcome within 5 s"),
    }
    socket.deregister(poll.registry()).unwrap();
    events(hc)
}

fn udp_backend() -> StdUdpSocket {
    let b = StdUdpSocket::bind("127.0.0.1:0").unwrap();
    b.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    b
}

fn live_checker(mode: HealthMode, backend: SocketAddr, t0: Instant) -> HealthChecker {
    let mut hc = HealthChecker::new();
    hc.configure(t0, "c".into(), config(mode));
    hc.add_backend(t0, "c".into(), "b".into(), backend);
    hc
}

#[test]
fn udp_probe_backend_answers_goes_silent_and_comes_back() {
    let mut poll = Poll::new().unwrap();
    let backend = udp_backend();
    let t0 = start();
    let mut hc = live_checker(HealthMode::UdpProbe, backend.local_addr().unwrap(), t0);
    let tick = Duration::from_secs(5);
    let mut now = t0;
    let mut round = |hc: &mut HealthChecker, b| {
        let ev = probe_round(hc, &mut poll, now, b);
        now += tick;
        ev
    };
    assert_eq!(round(&mut hc, Backend::Answers(&backend)), vec![]);
    let silent: Vec<Vec<HealthEvent>> = (0..3)
        .map(|_| round(&mut hc, Backend::Silent(&backend)))
        .collect();
    assert!(
        matches!(silent[0].as_slice(), [HealthEvent::ProbeTimedOut { .. }]),
        "{silent:?}"
    );
    assert_eq!(silent[2].last(), Some(&down()));
    assert_eq!(round(&mut hc, Backend::Answers(&backend)), vec![]);
    assert_eq!(round(&mut hc, Backend::Answers(&backend)), vec![up()]);
}

#[test]
fn udp_probe_refused_when_the_backend_closes_and_up_when_it_rebinds() {
    let mut poll = Poll::new().unwrap();
    let backend = udp_backend();
    let address = backend.local_addr().unwrap();
    let t0 = start();
    let mut hc = live_checker(HealthMode::UdpProbe, address, t0);
    let tick = Duration::from_secs(5);
    assert_eq!(
        probe_round(&mut hc, &mut poll, t0, Backend::Answers(&backend)),
        vec![]
    );
    drop(backend);
    // ICMP port unreachable → ECONNREFUSED on the connected probe socket.
    let mut last = Vec::new();
    for i in 1..=3 {
        last = probe_round(&mut hc, &mut poll, t0 + tick * i, Backend::Other);
    }
    assert_eq!(last, vec![down()]);
    let backend = StdUdpSocket::bind(address).unwrap();
    backend
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert_eq!(
        probe_round(
            &mut hc,
            &mut poll,
            t0 + tick * 4,
            Backend::Answers(&backend)
        ),
        vec![]
    );
    assert_eq!(
        probe_round(
            &mut hc,
            &mut poll,
            t0 + tick * 5,
            Backend::Answers(&backend)
        ),
        vec![up()]
    );
}

#[test]
fn tcp_probe_connects_fails_when_closed_and_recovers() {
    let mut poll = Poll::new().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let t0 = start();
    let mut hc = live_checker(HealthMode::TcpProbe, address, t0);
    let tick = Duration::from_secs(5);
    // The kernel completes the handshake from the backlog: no accept needed.
    assert_eq!(probe_round(&mut hc, &mut poll, t0, Backend::Other), vec![]);
    drop(listener);
    let mut last = Vec::new();
    for i in 1..=3 {
        last = probe_round(&mut hc, &mut poll, t0 + tick * i, Backend::Other);
    }
    assert_eq!(last, vec![down()]);
    let _listener = TcpListener::bind(address).unwrap();
    assert_eq!(
        probe_round(&mut hc, &mut poll, t0 + tick * 4, Backend::Other),
        vec![]
    );
    assert_eq!(
        probe_round(&mut hc, &mut poll, t0 + tick * 5, Backend::Other),
        vec![up()]
    );
}

#[test]
fn udp_probe_over_ipv6_loopback() {
    let backend = match StdUdpSocket::bind("[::1]:0") {
        Ok(b) => b,
        // No IPv6 loopback in this sandbox: nothing to probe.
        Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => return,
        Err(e) => panic!("{e}"),
    };
    backend
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut poll = Poll::new().unwrap();
    let t0 = start();
    let mut hc = live_checker(HealthMode::UdpProbe, backend.local_addr().unwrap(), t0);
    let probe = hc.poll_probe(t0).unwrap();
    let mut socket = ProbeSocket::open(&probe).unwrap();
    socket.register(poll.registry(), Token(1)).unwrap();
    let mut buf = [0u8; 8];
    let (_, from) = backend.recv_from(&mut buf).unwrap();
    assert!(from.is_ipv6());
    backend.send_to(b"pong", from).unwrap();
    assert!(matches!(
        wait_outcome(&mut poll, &mut socket),
        Some(ProbeOutcome::Success)
    ));
}

/// What one cluster's life costs the checker, in targets visited: added
/// and probed, its backend's probe started, answered and timed out, a
/// passive failure, the deadline read after each step, then removed.
fn one_cluster_lifecycle(hc: &mut HealthChecker, t0: Instant) -> u64 {
    let before = hc.targets_visited();
    let cluster = ClusterId::from("measured");
    hc.configure(t0, cluster.clone(), config(HealthMode::UdpProbe));
    hc.add_backend(t0, cluster.clone(), "b".into(), addr(5300));
    assert_eq!(hc.poll_timeout(), Some(t0), "the new backend is due now");
    let probe = hc.poll_probe(t0).expect("the new backend is due");
    assert_eq!(probe.cluster, cluster);
    assert_eq!(hc.poll_probe(t0), None, "the others are not due");
    hc.poll_timeout();
    assert!(hc.probe_succeeded(t0, probe.id));
    hc.poll_timeout();
    let probe = hc.poll_probe(t0 + Duration::from_secs(5)).unwrap();
    hc.handle_timeout(probe.deadline);
    assert!(matches!(
        events(hc).as_slice(),
        [HealthEvent::ProbeTimedOut { .. }]
    ));
    hc.poll_timeout();
    assert!(hc.passive_failure(probe.deadline, "measured", "b"));
    hc.remove_backend("measured", "b");
    hc.remove_cluster("measured");
    hc.poll_timeout();
    hc.targets_visited() - before
}

/// The worker asks the checker for its next deadline after every cluster
/// and backend order: scanning every backend for it made replaying a state
/// of n orders O(n²) (50,000 orders: 1.7 s, two thirds of it there). What
/// one cluster's orders and probes cost must not depend on how many other
/// clusters the checker holds.
#[test]
fn one_cluster_costs_the_same_among_thousands() {
    let t0 = start();
    let checker_of = |clusters: usize| {
        let mut hc = HealthChecker::new();
        // Probed, with a probe in flight each, all due long after the
        // measure: their entries sit in the schedule beside the measured
        // cluster's.
        let slow = HealthConfig {
            interval: Duration::from_secs(86_400),
            timeout: Duration::from_secs(86_400),
            ..config(HealthMode::UdpProbe)
        };
        for i in 0..clusters {
            let cluster = ClusterId::from(format!("c{i}").as_str());
            hc.configure(t0, cluster.clone(), slow.clone());
            hc.add_backend(t0, cluster, "b".into(), addr(5300));
        }
        while hc.poll_probe(t0).is_some() {}
        hc
    };
    let small = one_cluster_lifecycle(&mut checker_of(2), t0);
    let large = one_cluster_lifecycle(&mut checker_of(3_000), t0);
    assert!(small > 0, "the lifecycle visits its own backend");
    assert_eq!(small, large, "the other clusters cost nothing");
}

mod model {
    //! quickcheck over random sequences of checker operations against a
    //! plain model (every backend's next work kept in a map and the minimum
    //! found by a scan): the schedule and the index of probes in flight
    //! agree with it on the next deadline, the probes issued and the
    //! results accepted. The checker's own invariant checks run after
    //! every step (debug builds).
    use super::*;
    use quickcheck::{Arbitrary, Gen, QuickCheck};
    use std::collections::BTreeMap;

    #[derive(Debug, Clone)]
    enum Step {
        Configure(u8, u8),
        Add(u8, u8, u8),
        RemoveBackend(u8, u8),
        RemoveCluster(u8),
        Advance(u8),
        Probes,
        Timeout,
        Result(u8, bool),
        Passive(u8, u8),
    }

    impl Arbitrary for Step {
        fn arbitrary(g: &mut Gen) -> Self {
            let cluster = u8::arbitrary(g) % 4;
            let backend = u8::arbitrary(g) % 3;
            match u8::arbitrary(g) % 9 {
                0 => Step::Configure(cluster, u8::arbitrary(g) % 3),
                1 => Step::Add(cluster, backend, u8::arbitrary(g) % 2),
                2 => Step::RemoveBackend(cluster, backend),
                3 => Step::RemoveCluster(cluster),
                4 => Step::Advance(u8::arbitrary(g) % 8),
                5 => Step::Probes,
                6 => Step::Timeout,
                7 => Step::Result(u8::arbitrary(g), bool::arbitrary(g)),
                _ => Step::Passive(cluster, backend),
            }
        }
    }

    /// Configurations 0 (off), 1 and 2 (probed, different timings).
    fn configuration(kind: u8) -> HealthConfig {
        match kind {
            0 => config(HealthMode::Off),
            1 => HealthConfig {
                interval: Duration::from_secs(5),
                timeout: Duration::from_secs(2),
                ..config(HealthMode::UdpProbe)
            },
            _ => HealthConfig {
                interval: Duration::from_secs(3),
                timeout: Duration::from_secs(3),
                ..config(HealthMode::TcpProbe)
            },
        }
    }

    #[derive(Debug, Default)]
    struct Model {
        /// cluster → (configuration kind, backend → (port, next due, in flight)).
        clusters: BTreeMap<u8, (u8, BTreeMap<u8, Backend>)>,
    }

    #[derive(Debug, Clone, Copy)]
    struct Backend {
        port: u8,
        next_due: Instant,
        in_flight: Option<(ProbeId, Instant)>,
    }

    impl Model {
        fn next_deadline(&self) -> Option<Instant> {
            self.clusters
                .values()
                .filter(|(kind, _)| *kind != 0)
                .flat_map(|(_, backends)| backends.values())
                .map(|b| b.in_flight.map_or(b.next_due, |(_, deadline)| deadline))
                .min()
        }

        fn backend_of(&mut self, probe: ProbeId) -> Option<&mut Backend> {
            self.clusters
                .values_mut()
                .flat_map(|(_, backends)| backends.values_mut())
                .find(|b| b.in_flight.is_some_and(|(id, _)| id == probe))
        }
    }

    fn checker_agrees_with_the_model(steps: Vec<Step>) -> bool {
        let t0 = start();
        let mut now = t0;
        let mut hc = HealthChecker::new();
        let mut model = Model::default();
        let mut issued: Vec<ProbeId> = Vec::new();
        let name = |c: u8| ClusterId::from(format!("c{c}").as_str());
        let backend_name = |b: u8| BackendId::from(format!("b{b}").as_str());
        for step in steps {
            match step {
                Step::Configure(c, kind) => {
                    hc.configure(now, name(c), configuration(kind));
                    let entry = model.clusters.entry(c).or_insert((0, BTreeMap::new()));
                    if kind == 0 {
                        for b in entry.1.values_mut() {
                            b.next_due = now;
                            b.in_flight = None;
                        }
                    } else if entry.0 != kind {
                        for b in entry.1.values_mut() {
                            b.next_due = now;
                        }
                    }
                    entry.0 = kind;
                }
                Step::Add(c, b, port) => {
                    hc.add_backend(now, name(c), backend_name(b), addr(5300 + u16::from(port)));
                    let entry = model.clusters.entry(c).or_insert((0, BTreeMap::new()));
                    let fresh = Backend {
                        port,
                        next_due: now,
                        in_flight: None,
                    };
                    let backend = entry.1.entry(b).or_insert(fresh);
                    if backend.port != port {
                        backend.port = port;
                        backend.next_due = now;
                    }
                }
                Step::RemoveBackend(c, b) => {
                    hc.remove_backend(&format!("c{c}"), &format!("b{b}"));
                    if let Some((_, backends)) = model.clusters.get_mut(&c) {
                        backends.remove(&b);
                    }
                }
                Step::RemoveCluster(c) => {
                    hc.remove_cluster(&format!("c{c}"));
                    model.clusters.remove(&c);
                }
                Step::Advance(seconds) => now += Duration::from_secs(seconds.into()),
                Step::Probes => {
                    while let Some(probe) = hc.poll_probe(now) {
                        let c: u8 = probe.cluster.as_str()[1..].parse().unwrap();
                        let b: u8 = probe.backend.as_str()[1..].parse().unwrap();
                        let (kind, backends) = model.clusters.get_mut(&c).unwrap();
                        let timing = configuration(*kind);
                        let backend = backends.get_mut(&b).unwrap();
                        // Due, probed, not in flight: what the model says.
                        if *kind == 0 || backend.in_flight.is_some() || backend.next_due > now {
                            return false;
                        }
                        backend.in_flight = Some((probe.id, now + timing.timeout));
                        backend.next_due = now + timing.interval;
                        issued.push(probe.id);
                    }
                    // Nothing due and idle is left behind.
                    let left = model
                        .clusters
                        .values()
                        .filter(|(kind, _)| *kind != 0)
                        .flat_map(|(_, backends)| backends.values())
                        .any(|b| b.in_flight.is_none() && b.next_due <= now);
                    if left {
                        return false;
                    }
                }
                Step::Timeout => {
                    hc.handle_timeout(now);
                    for (kind, backends) in model.clusters.values_mut() {
                        for b in backends.values_mut() {
                            if *kind != 0 && b.in_flight.is_some_and(|(_, d)| d <= now) {
                                b.in_flight = None;
                            }
                        }
                    }
                }
                Step::Result(pick, success) => {
                    let Some(&probe) = issued.get(usize::from(pick) % issued.len().max(1)) else {
                        continue;
                    };
                    let accepted = if success {
                        hc.probe_succeeded(now, probe)
                    } else {
                        hc.probe_failed(now, probe)
                    };
                    let expected = match model.backend_of(probe) {
                        Some(backend) => {
                            backend.in_flight = None;
                            true
                        }
                        None => false,
                    };
                    if accepted != expected {
                        return false;
                    }
                }
                Step::Passive(c, b) => {
                    let expected = model
                        .clusters
                        .get(&c)
                        .is_some_and(|(kind, backends)| *kind != 0 && backends.contains_key(&b));
                    if hc.passive_failure(now, &format!("c{c}"), &format!("b{b}")) != expected {
                        return false;
                    }
                }
            }
            while hc.poll_event().is_some() {}
            if hc.poll_timeout() != model.next_deadline() {
                return false;
            }
        }
        true
    }

    #[test]
    fn quickcheck_checker_agrees_with_the_model() {
        QuickCheck::new()
            .tests(500)
            .quickcheck(checker_agrees_with_the_model as fn(Vec<Step>) -> bool);
    }
}
