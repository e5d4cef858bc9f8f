//! UDP semantics real clients rely on, through the real binary (issue 17):
//! `responses = N` per client datagram (every query in flight on one socket
//! gets its answer), and affinity that is a function of the client and the
//! backends only (the same backend on every worker, after `sozu upgrade`,
//! and on another instance with the same configuration).

use std::collections::{BTreeMap, BTreeSet};
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use sozu_e2e::metrics::scalar;
use sozu_e2e::ports::free_v4;
use sozu_e2e::udp::parse_reply;
use sozu_e2e::wait::{poll_until, wait_until, Deadline};
use sozu_e2e::{ClusterConfig, Sozu, SozuConfig, UdpBackend, UdpListener};

const METRICS: Duration = Duration::from_secs(10);

/// Receives datagrams from `target` on `socket` until `want` arrived or the
/// bounded wait ends; returns them.
fn receive_from(socket: &UdpSocket, target: SocketAddr, want: usize) -> Vec<Vec<u8>> {
    let deadline = Deadline::after(Duration::from_secs(10));
    let mut buf = vec![0u8; 70_000];
    let mut got = Vec::new();
    while got.len() < want && !deadline.is_past() {
        socket
            .set_read_timeout(Some(deadline.remaining().max(Duration::from_millis(1))))
            .expect("set the read timeout");
        match socket.recv_from(&mut buf) {
            Ok((n, from)) if from == target => got.push(buf[..n].to_vec()),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => {}
            Err(e) => panic!("receive from {target}: {e}"),
        }
    }
    got
}

#[test]
fn thirty_two_queries_in_flight_on_one_socket_get_thirty_two_answers() {
    for workers in [1, 2] {
        let backend = UdpBackend::v4("a");
        let frontend = free_v4();
        let mut cluster = ClusterConfig::new("dns", frontend).backend("a", backend.addr());
        cluster.responses = 1;
        let sozu = Sozu::start(SozuConfig::udp(
            workers,
            UdpListener::new(frontend),
            cluster,
        ));
        let client = UdpSocket::bind("127.0.0.1:0").expect("bind a client");
        for i in 0..32 {
            client
                .send_to(format!("q{i}").as_bytes(), frontend)
                .expect("send a query");
        }
        let answers: BTreeSet<String> = receive_from(&client, frontend, 32)
            .iter()
            .map(|reply| {
                let (name, echoed) = parse_reply(reply);
                assert_eq!(name, "a");
                String::from_utf8_lossy(&echoed).into_owned()
            })
            .collect();
        let want: BTreeSet<String> = (0..32).map(|i| format!("q{i}")).collect();
        assert_eq!(
            answers, want,
            "{workers} worker(s): every query in flight gets its answer"
        );
        // Every flow closed once all its queries were answered (the idle
        // timeout, 30 s, is far away).
        sozu.wait_metrics("every flow answered and closed", METRICS, |m| {
            m.proxy_or_zero("udp.flows.created") >= 1
                && m.proxy_or_zero("udp.active_flows") == 0
                && m.proxy_or_zero("udp.datagrams.out") == 32
        });
        assert_eq!(backend.datagrams(), 32);
    }
}

/// The backend name answering a datagram sent from `ip` (ephemeral port) to
/// `target`, retried on a fresh socket until a reply comes (bounded).
fn backend_for(ip: Ipv4Addr, target: SocketAddr) -> String {
    wait_until(
        &format!("a reply from {target} to {ip}"),
        Duration::from_secs(15),
        || {
            let socket = UdpSocket::bind(SocketAddr::new(IpAddr::V4(ip), 0)).ok()?;
            socket.send_to(b"who", target).ok()?;
            let reply = receive_from(&socket, target, 1).pop()?;
            let (name, echoed) = parse_reply(&reply);
            (echoed == b"who").then_some(name)
        },
    )
}

/// Flows created by each worker (keyed by worker id), from the CLI metrics.
fn flows_per_worker(sozu: &Sozu) -> BTreeMap<String, i64> {
    sozu.metrics()
        .0
        .workers
        .iter()
        .map(|(id, w)| {
            let created = w.proxy.get("udp.flows.created").and_then(scalar);
            (id.clone(), created.unwrap_or(0))
        })
        .collect()
}

fn backends(n: usize) -> Vec<UdpBackend> {
    (0..n).map(|i| UdpBackend::v4(&format!("b{i}"))).collect()
}

fn affinity_cluster(
    id: &str,
    algorithm: &str,
    frontend: SocketAddr,
    backends: &[UdpBackend],
) -> ClusterConfig {
    let mut cluster = ClusterConfig::new(id, frontend);
    cluster.load_balancing = algorithm.to_owned();
    cluster.affinity_key = Some("SOURCE_IP".to_owned());
    for b in backends {
        cluster = cluster.backend(b.name(), b.addr());
    }
    cluster
}

#[test]
fn source_ip_affinity_gives_one_backend_to_48_ports_across_two_workers() {
    for algorithm in ["HRW", "MAGLEV"] {
        let pool = backends(4);
        let frontend = free_v4();
        let sozu = Sozu::start(SozuConfig::udp(
            2,
            UdpListener::new(frontend),
            affinity_cluster("c", algorithm, frontend, &pool),
        ));
        let chosen: BTreeSet<String> = (0..48)
            .map(|_| backend_for(Ipv4Addr::LOCALHOST, frontend))
            .collect();
        // Positive signal: the 48 sources really were spread over both
        // workers (SO_REUSEPORT hashes the source port), so agreement is
        // between workers, not within one.
        let both = poll_until(METRICS, || {
            let per_worker = flows_per_worker(&sozu);
            (per_worker.values().filter(|&&n| n > 0).count() == 2).then_some(per_worker)
        });
        assert!(
            both.is_some(),
            "{algorithm}: the 48 flows did not reach both workers: {:?}",
            flows_per_worker(&sozu)
        );
        assert_eq!(
            chosen.len(),
            1,
            "{algorithm}: one client IP, several backends: {chosen:?}"
        );
    }
}

/// The 12 client addresses 127.0.0.2 ..= 127.0.0.13.
fn client_ips() -> Vec<Ipv4Addr> {
    (2..=13).map(|i| Ipv4Addr::new(127, 0, 0, i)).collect()
}

/// One instance: an HRW and a MAGLEV listener over the same backends.
fn fleet_member(pool: &[UdpBackend], extra: &str) -> (Sozu, [SocketAddr; 2]) {
    let hrw = free_v4();
    let maglev = free_v4();
    let config = SozuConfig {
        worker_count: 2,
        udp_listeners: vec![UdpListener::new(hrw), UdpListener::new(maglev)],
        clusters: vec![
            affinity_cluster("hrw", "HRW", hrw, pool),
            affinity_cluster("maglev", "MAGLEV", maglev, pool),
        ],
        extra: extra.to_owned(),
        ..SozuConfig::default()
    };
    (Sozu::start(config), [hrw, maglev])
}

/// Which backend each client IP gets, per algorithm.
fn mapping(frontends: [SocketAddr; 2]) -> Vec<(String, Ipv4Addr, String)> {
    let mut map = Vec::new();
    for (algorithm, frontend) in ["HRW", "MAGLEV"].into_iter().zip(frontends) {
        for ip in client_ips() {
            map.push((algorithm.to_owned(), ip, backend_for(ip, frontend)));
        }
    }
    map
}

#[test]
fn twelve_client_ips_map_alike_after_upgrade_and_on_another_instance() {
    let pool = backends(4);
    let (a, a_frontends) = fleet_member(&pool, "");
    let before = mapping(a_frontends);
    for algorithm in ["HRW", "MAGLEV"] {
        let used: BTreeSet<&String> = before
            .iter()
            .filter(|(alg, ..)| alg == algorithm)
            .map(|(.., b)| b)
            .collect();
        assert!(
            used.len() >= 2,
            "{algorithm}: 12 clients all on one backend, the comparison would prove nothing: {before:?}"
        );
    }

    // `sozu upgrade`: new master, new workers, new per-process seeds.
    let old_pids = a.worker_pids();
    a.cli_ok(&["upgrade"]);
    let replaced = poll_until(Duration::from_secs(20), || {
        let pids = a.worker_pids();
        (pids.len() == 2 && pids.iter().all(|p| !old_pids.contains(p))).then_some(pids)
    });
    assert!(
        replaced.is_some(),
        "the workers {old_pids:?} were not replaced\n{}",
        a.log_tail(40)
    );
    assert_eq!(
        mapping(a_frontends),
        before,
        "the mapping changed across `sozu upgrade`"
    );

    // Another instance, same configuration (other listener ports: the
    // listener address does not enter the hash).
    let (b, b_frontends) = fleet_member(&pool, "");
    assert_eq!(mapping(b_frontends), before, "two instances disagree");
    drop(b);

    // A different `hash_seed` is honoured (the key reaches the workers).
    let (c, c_frontends) = fleet_member(&pool, "hash_seed = 7\n");
    assert_ne!(
        mapping(c_frontends),
        before,
        "hash_seed = 7 maps every client like the default key"
    );
    drop(c);
}

#[test]
fn a_wildcard_listener_sends_the_address_the_client_hit_as_proxy_destination() {
    let backend = UdpBackend::v4("a");
    let wildcard = sozu_e2e::ports::free_addr(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let mut cluster = ClusterConfig::new("c", wildcard).backend("a", backend.addr());
    cluster.send_proxy_protocol = true;
    let _sozu = Sozu::start(SozuConfig::udp(2, UdpListener::new(wildcard), cluster));
    let mut expected = Vec::new();
    for last in [2, 3] {
        let hit = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)), wildcard.port());
        let client = UdpSocket::bind("127.0.0.1:0").expect("bind a client");
        client.send_to(b"hello", hit).expect("send");
        let reply = receive_from(&client, hit, 1);
        assert_eq!(
            reply.len(),
            1,
            "a reply from {hit}, the address the client hit"
        );
        expected.push((client.local_addr().expect("client address"), hit));
    }
    let received = backend.wait_datagrams(2, METRICS);
    let seen: Vec<(SocketAddr, SocketAddr)> = received
        .iter()
        .map(|r| {
            let header = r
                .proxy
                .as_ref()
                .expect("a PROXY v2 header on a flow's first datagram");
            (header.source, header.destination)
        })
        .collect();
    assert_eq!(seen, expected, "PROXY v2 source and destination per flow");
}
