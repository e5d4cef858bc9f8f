//! The UDP scenarios of the worker issue, through the real binary: a master
//! with two workers (one where a count must be exact), loopback clients and
//! backends.

use std::time::Duration;

use sozu_e2e::ports::{free_addr, free_v4, V4, V6};
use sozu_e2e::procfs;
use sozu_e2e::udp::parse_reply;
use sozu_e2e::wait::{poll_until, wait_for, wait_until};
use sozu_e2e::{ClusterConfig, HealthConfig, Sozu, SozuConfig, UdpBackend, UdpClient, UdpListener};

const SHORT: Duration = Duration::from_millis(400);
const METRICS: Duration = Duration::from_secs(10);

fn one_backend(
    workers: u32,
    configure: impl FnOnce(&mut UdpListener, &mut ClusterConfig),
) -> (Sozu, UdpBackend, std::net::SocketAddr) {
    let backend = UdpBackend::v4("a");
    let frontend = free_v4();
    let mut listener = UdpListener::new(frontend);
    let mut cluster = ClusterConfig::new("c", frontend).backend("a", backend.addr());
    configure(&mut listener, &mut cluster);
    let sozu = Sozu::start(SozuConfig::udp(workers, listener, cluster));
    (sozu, backend, frontend)
}

#[test]
fn dns_like_flow_closes_after_one_response() {
    let (sozu, backend, frontend) = one_backend(2, |_, c| c.responses = 1);
    let client = UdpClient::new(frontend);
    assert_eq!(client.expect_echo(b"query-1"), "a");
    // The flow closed on its one response: the active-flows gauge is back
    // to 0 while the flow's 30 s idle timeout is far away.
    sozu.wait_metrics("one flow created and closed", METRICS, |m| {
        m.proxy_or_zero("udp.flows.created") == 1 && m.proxy_or_zero("udp.active_flows") == 0
    });
    // The same client's next query is a new flow from a new upstream socket.
    assert_eq!(client.expect_echo(b"query-2"), "a");
    sozu.wait_metrics("a second flow", METRICS, |m| {
        m.proxy_or_zero("udp.flows.created") == 2 && m.proxy_or_zero("udp.active_flows") == 0
    });
    let received = backend.received();
    assert_eq!(received.len(), 2);
    assert_ne!(
        received[0].from, received[1].from,
        "the second query reused a closed flow"
    );
}

#[test]
fn one_way_syslog_flow_delivers_everything_and_returns_nothing() {
    let (sozu, backend, frontend) = one_backend(2, |_, _| {});
    backend.set_silent(true);
    let client = UdpClient::new(frontend);
    for i in 0..5 {
        client.send(format!("<13>log line {i}").as_bytes());
    }
    let received = backend.wait_datagrams(5, METRICS);
    for (i, r) in received.iter().enumerate() {
        assert_eq!(r.payload, format!("<13>log line {i}").as_bytes());
        assert_eq!(r.from, received[0].from, "one flow, one upstream socket");
    }
    // Returns nothing: every datagram counted in, none out (counters, not a
    // wait that a slow proxy could pass).
    let m = sozu.wait_metrics("one live flow, 5 datagrams in", METRICS, |m| {
        m.proxy_or_zero("udp.flows.created") == 1
            && m.proxy_or_zero("udp.active_flows") == 1
            && m.proxy_or_zero("udp.datagrams.in") == 5
    });
    assert_eq!(m.proxy_or_zero("udp.datagrams.out"), 0);
    client.expect_silence(SHORT);
}

#[test]
fn sticky_multi_datagram_flow_keeps_its_backend_and_upstream_socket() {
    let a = UdpBackend::v4("a");
    let b = UdpBackend::v4("b");
    let (_sozu, frontend) = Sozu::start_udp(2, &[&a, &b]);
    for _ in 0..3 {
        let client = UdpClient::new(frontend);
        let first = client.expect_echo(b"0");
        for i in 1..10 {
            assert_eq!(
                client.expect_echo(format!("{i}").as_bytes()),
                first,
                "flow switched backend"
            );
        }
    }
    for backend in [&a, &b] {
        let received = backend.received();
        // Each client's datagrams come from one upstream socket per backend.
        let mut sources: Vec<_> = received.iter().map(|r| r.from).collect();
        sources.sort();
        sources.dedup();
        assert_eq!(
            received.len(),
            sources.len() * 10,
            "{}: {received:?}",
            backend.name()
        );
    }
}

#[test]
fn requests_cap_makes_the_next_datagram_open_a_new_flow() {
    let (sozu, backend, frontend) = one_backend(2, |_, c| c.requests = 2);
    backend.set_silent(true);
    let client = UdpClient::new(frontend);
    for i in 0..3 {
        client.send(format!("r{i}").as_bytes());
        backend.wait_datagrams(i + 1, METRICS);
    }
    let r = backend.received();
    assert_eq!(r[0].from, r[1].from, "the first two datagrams share a flow");
    assert_ne!(
        r[1].from, r[2].from,
        "the third datagram must open a new flow"
    );
    sozu.wait_metrics("two flows created", METRICS, |m| {
        m.proxy_or_zero("udp.flows.created") == 2
    });
}

#[test]
fn burst_of_32_datagrams_on_a_new_flow_arrives_whole_and_in_order() {
    let (_sozu, backend, frontend) = one_backend(2, |_, _| {});
    backend.set_silent(true);
    let client = UdpClient::new(frontend);
    for i in 0..32 {
        client.send(format!("burst-{i:02}").as_bytes());
    }
    let received = backend.wait_datagrams(32, METRICS);
    let payloads: Vec<String> = received
        .iter()
        .map(|r| String::from_utf8_lossy(&r.payload).into_owned())
        .collect();
    let expected: Vec<String> = (0..32).map(|i| format!("burst-{i:02}")).collect();
    assert_eq!(payloads, expected);
}

#[test]
fn idle_expiry_on_two_listeners_frees_every_upstream_fd() {
    let backend = UdpBackend::v4("a");
    let (f1, f2) = (free_v4(), free_v4());
    let mut config = SozuConfig::default();
    for f in [f1, f2] {
        let mut listener = UdpListener::new(f);
        listener.front_timeout = 1;
        listener.back_timeout = 1;
        config.udp_listeners.push(listener);
    }
    let mut cluster = ClusterConfig::new("c", f1).backend("a", backend.addr());
    cluster.frontends.push(f2);
    config.clusters.push(cluster);
    let sozu = Sozu::start(config);
    let workers = sozu.worker_pids();
    let fds = || workers.iter().map(|p| procfs::fd_count(*p)).sum::<usize>();
    let baseline = fds();

    let clients: Vec<UdpClient> = (0..20)
        .map(|i| UdpClient::new(if i % 2 == 0 { f1 } else { f2 }))
        .collect();
    for client in &clients {
        client.expect_echo(b"hello");
    }
    let during = fds();
    assert!(
        during >= baseline + 20,
        "20 live flows should hold 20 upstream fds: {baseline} → {during}"
    );
    wait_for(
        &format!("worker fds back to the baseline {baseline}"),
        Duration::from_secs(15),
        || fds() == baseline,
    );
    sozu.wait_metrics("every flow evicted", METRICS, |m| {
        m.proxy_or_zero("udp.active_flows") == 0 && m.proxy_or_zero("udp.flows.evicted") == 20
    });
}

#[test]
fn the_flow_beyond_max_flows_is_shed_and_counted() {
    // One worker: max_flows is per worker, so the count is exact.
    let (sozu, _backend, frontend) = one_backend(1, |l, _| l.max_flows = 3);
    let clients: Vec<UdpClient> = (0..3).map(|_| UdpClient::new(frontend)).collect();
    for client in &clients {
        client.expect_echo(b"in");
    }
    let extra = UdpClient::new(frontend);
    extra.send(b"shed me");
    extra.expect_silence(SHORT);
    sozu.wait_metrics("one shed flow", METRICS, |m| {
        m.proxy_or_zero("udp.flows.shed") == 1 && m.proxy_or_zero("udp.active_flows") == 3
    });
    // Live flows are still served.
    for client in &clients {
        client.expect_echo(b"still in");
    }
}

#[test]
fn removing_a_backend_moves_its_flows_and_spares_the_others() {
    let a = UdpBackend::v4("a");
    let b = UdpBackend::v4("b");
    let (sozu, frontend) = Sozu::start_udp(2, &[&a, &b]);
    // Find one live client flow on each backend.
    let mut on_a = None;
    let mut on_b = None;
    wait_for(
        "a client flow on each backend",
        Duration::from_secs(10),
        || {
            let client = UdpClient::new(frontend);
            match client.expect_echo(b"hi").as_str() {
                "a" if on_a.is_none() => on_a = Some(client),
                "b" if on_b.is_none() => on_b = Some(client),
                _ => {}
            }
            on_a.is_some() && on_b.is_some()
        },
    );
    let (on_a, on_b) = (on_a.unwrap(), on_b.unwrap());
    let b_before = b.datagrams();
    let b_addr = b.addr().to_string();
    sozu.backend_remove("c", "b", &b_addr);
    assert_eq!(
        on_b.expect_echo(b"after removal"),
        "a",
        "b's flow was not moved"
    );
    assert_eq!(on_a.expect_echo(b"after removal"), "a");
    for _ in 0..4 {
        assert_eq!(UdpClient::new(frontend).expect_echo(b"new"), "a");
    }
    assert_eq!(
        b.datagrams(),
        b_before,
        "the removed backend still got traffic"
    );
}

fn proxy_protocol_scenario(every_datagram: bool) {
    let (_sozu, backend, frontend) = one_backend(2, |_, c| {
        c.send_proxy_protocol = true;
        c.proxy_protocol_every_datagram = every_datagram;
    });
    let client = UdpClient::new(frontend);
    for i in 0..3 {
        client.expect_echo(format!("pp-{i}").as_bytes());
    }
    let received = backend.received();
    assert_eq!(received.len(), 3);
    for (i, r) in received.iter().enumerate() {
        assert_eq!(
            r.payload,
            format!("pp-{i}").as_bytes(),
            "payload after the header"
        );
        if i == 0 || every_datagram {
            let header = r
                .proxy
                .as_ref()
                .unwrap_or_else(|| panic!("datagram {i} has no PROXY v2 header"));
            assert_eq!(header.version_command, 0x21);
            assert_eq!(header.family, 0x12);
            assert_eq!(header.source, client.local_addr());
            assert_eq!(header.destination, frontend);
        } else {
            assert!(
                r.proxy.is_none(),
                "datagram {i} carries a header: {:?}",
                r.proxy
            );
        }
    }
}

#[test]
fn proxy_protocol_v2_on_the_first_datagram_only() {
    proxy_protocol_scenario(false);
}

#[test]
fn proxy_protocol_v2_on_every_datagram() {
    proxy_protocol_scenario(true);
}

#[test]
fn ipv6_listener_and_backend_with_a_proxy_header() {
    let backend = UdpBackend::start("v6", V6, None);
    let frontend = free_addr(V6);
    let mut cluster = ClusterConfig::new("c6", frontend).backend("v6", backend.addr());
    cluster.send_proxy_protocol = true;
    let _sozu = Sozu::start(SozuConfig::udp(2, UdpListener::new(frontend), cluster));
    let client = UdpClient::new(frontend);
    assert_eq!(client.expect_echo(b"over v6"), "v6");
    let received = backend.received();
    assert!(received[0].from.is_ipv6());
    let header = received[0].proxy.clone().expect("a PROXY v2 header");
    assert_eq!(header.family, 0x22);
    assert_eq!(header.source, client.local_addr());
    assert_eq!(header.destination, frontend);
}

#[test]
fn an_oversized_datagram_is_dropped_and_counted() {
    let (sozu, backend, frontend) = one_backend(2, |l, _| l.max_rx_datagram_size = 512);
    let client = UdpClient::new(frontend);
    client.send(&[b'x'; 1000]);
    client.expect_silence(SHORT);
    assert_eq!(client.expect_echo(&[b'y'; 100]), "a");
    let received = backend.received();
    assert_eq!(
        received.len(),
        1,
        "the oversized datagram reached the backend"
    );
    assert_eq!(received[0].payload, vec![b'y'; 100]);
    let m = sozu.wait_metrics("one truncated drop counted", METRICS, |m| {
        m.proxy_or_zero("udp.datagrams.dropped.truncated") == 1
    });
    assert_eq!(
        m.proxy_or_zero("udp.flows.created"),
        1,
        "the dropped datagram created a flow"
    );
}

#[test]
fn replies_on_a_closed_flow_are_ignored() {
    // responses = 1 closes the flow on the first reply; the backend sends
    // three, the client must see one and sozu must go on serving.
    let (sozu, backend, frontend) = one_backend(2, |_, c| c.responses = 1);
    backend.set_replies_per_datagram(3);
    let workers = sozu.worker_pids();
    let client = UdpClient::new(frontend);
    assert_eq!(client.expect_echo(b"once"), "a");
    client.expect_silence(SHORT);
    // Each echo below is the datagram that must come next: a late extra
    // reply of the previous flow would arrive first and fail it.
    assert_eq!(client.expect_echo(b"twice"), "a");
    client.expect_silence(SHORT);
    assert_eq!(client.expect_echo(b"thrice"), "a");
    let m = sozu.wait_metrics("three one-response flows closed", METRICS, |m| {
        m.proxy_or_zero("udp.flows.evicted") == 3
    });
    assert_eq!(m.proxy_or_zero("udp.flows.created"), 3);
    assert_eq!(m.proxy_or_zero("udp.datagrams.out"), 3);
    assert_eq!(sozu.worker_pids(), workers, "a worker died");
}

/// Asks fresh clients until `accept` is true for `needed` consecutive
/// answers; a silent backend costs a short timeout per try.
fn new_flows_settle_on(
    frontend: std::net::SocketAddr,
    what: &str,
    needed: usize,
    accept: impl Fn(&str) -> bool,
) {
    let mut streak = 0;
    wait_until(what, Duration::from_secs(20), || {
        let client = UdpClient::new(frontend);
        client.send(b"probe-traffic");
        let ok = client
            .recv_timeout(Duration::from_millis(300))
            .map(|reply| accept(&parse_reply(&reply).0))
            .unwrap_or(false);
        streak = if ok { streak + 1 } else { 0 };
        (streak >= needed).then_some(())
    });
}

#[test]
fn a_silent_backend_is_marked_down_by_its_probe_and_back_up() {
    let a = UdpBackend::start("a", V4, Some("ping"));
    let b = UdpBackend::start("b", V4, Some("ping"));
    let frontend = free_v4();
    let mut cluster = ClusterConfig::new("c", frontend)
        .backend("a", a.addr())
        .backend("b", b.addr());
    cluster.responses = 1;
    cluster.health = Some(HealthConfig::fast_udp_probe("ping"));
    let sozu = Sozu::start(SozuConfig::udp(2, UdpListener::new(frontend), cluster));
    wait_for(
        "probes reaching both backends",
        Duration::from_secs(10),
        || a.probes() > 0 && b.probes() > 0,
    );
    new_flows_settle_on(frontend, "both backends serving", 1, |name| name == "a");

    // `udp.backend.up` is 1 per worker that sees the backend up (set on
    // each health transition).
    let up = |m: &sozu_e2e::Metrics| m.backend("c", "a", "udp.backend.up");

    a.set_silent(true);
    sozu.wait_metrics(
        "a marked down on both workers",
        Duration::from_secs(15),
        |m| up(m) == Some(0),
    );
    new_flows_settle_on(frontend, "every new flow on b once a is down", 8, |name| {
        name == "b"
    });
    let a_before = a.datagrams();
    for _ in 0..4 {
        assert_eq!(
            UdpClient::new(frontend).expect_echo(b"while a is down"),
            "b"
        );
    }
    assert_eq!(a.datagrams(), a_before, "a got new flows while down");

    a.set_silent(false);
    sozu.wait_metrics("a back up on both workers", Duration::from_secs(15), |m| {
        up(m) == Some(2)
    });
    new_flows_settle_on(frontend, "a back up and chosen again", 1, |name| {
        name == "a"
    });
}

#[test]
fn soft_stop_keeps_a_live_flow_and_refuses_a_new_source() {
    let (sozu, _backend, frontend) = one_backend(2, |l, _| {
        l.front_timeout = 3;
        l.back_timeout = 3;
    });
    let live = sozu_e2e::SteadyTraffic::start(frontend, "live", Duration::from_millis(50));
    live.wait_more_answers(5, Duration::from_secs(10));
    // The answer to soft-stop may only come when the workers are gone, so
    // the order is sent without waiting for it.
    let mut channel = sozu.channel().expect("connect");
    channel
        .write_message(&sozu_command_lib::command::Request {
            request_type: Some(sozu_command_lib::command::request::RequestType::SoftStop(
                sozu_command_lib::command::SoftStop {},
            )),
        })
        .expect("send soft_stop");
    // The worker without the live flow has nothing to drain: it exits, and
    // its socket leaves the listener's SO_REUSEPORT group (the master
    // closed its own copies when the stop began). A newcomer hashed to it
    // meanwhile is refused too, but its count goes with that worker (or it
    // was left unread in its queue), so the counts are read once it is gone:
    // from then on the kernel hands every source to the draining worker.
    wait_for(
        "the idle worker to exit, leaving one socket in the group",
        Duration::from_secs(10),
        || procfs::udp_listener_inodes(frontend).len() == 1,
    );
    // Soft-stop reaches the draining worker asynchronously: a new source is
    // refused, and the refusal counted, once it has it (the count is the
    // positive signal; a newcomer answered before is a new flow, harmless).
    let refused = poll_until(Duration::from_secs(10), || {
        let client = UdpClient::new(frontend);
        client.send(b"newcomer");
        let silent = client.recv_timeout(SHORT).is_none();
        let shed = sozu.metrics().proxy_or_zero("udp.datagrams.dropped.shed");
        (silent && shed >= 1).then_some(shed)
    });
    let Some(shed) = refused else {
        panic!("new sources were still admitted 10 s after soft-stop, or never counted shed");
    };
    // From now on every newcomer is refused and counted once, exactly.
    const NEWCOMERS: i64 = 5;
    for _ in 0..NEWCOMERS {
        let client = UdpClient::new(frontend);
        client.send(b"newcomer");
        client.expect_silence(SHORT);
    }
    sozu.wait_metrics("every newcomer shed and counted", METRICS, |m| {
        m.proxy_or_zero("udp.datagrams.dropped.shed") == shed + NEWCOMERS
    });
    live.wait_more_answers(10, Duration::from_secs(10));
    let report = live.stop();
    assert!(
        report.lost.is_empty(),
        "the live flow lost replies: {:?}",
        report.lost
    );
    assert!(
        sozu.wait_master_exit(Duration::from_secs(15)).is_some(),
        "the master did not exit once flows ended"
    );
}

#[test]
fn metrics_count_each_datagram_once_at_every_scope() {
    let (sozu, _backend, frontend) = one_backend(2, |_, _| {});
    let client = UdpClient::new(frontend);
    let request = b"fifteen bytes!!";
    client.expect_echo(request);
    let reply_len = ("a|".len() + request.len()) as i64;
    let m = sozu.wait_metrics("the datagram counted", METRICS, |m| {
        m.backend("c", "a", "udp.datagrams.out").unwrap_or(0) >= 1
    });
    let expected = [
        ("udp.datagrams.in", 1),
        ("udp.bytes.in", request.len() as i64),
        ("udp.datagrams.out", 1),
        ("udp.bytes.out", reply_len),
        ("udp.flows.created", 1),
    ];
    for (name, value) in expected {
        if name != "udp.flows.created" {
            assert_eq!(m.backend("c", "a", name), Some(value), "backend a {name}");
        }
        assert_eq!(
            m.cluster("c", name),
            Some(value),
            "cluster c {name} (summed over its scope and backends)"
        );
        if let Some(proxy) = m.proxy(name) {
            assert_eq!(proxy, value, "worker-wide {name}");
        }
    }
}
