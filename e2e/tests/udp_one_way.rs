//! One-way clusters through the real binary (`cluster add … --one-way`):
//! syslog-like load from many source ports reaches the backends split by
//! the policy, the worker holds one socket per backend whatever the number
//! of sources (its fd count stays flat), backends come and go live, the
//! backends' answers are read and dropped (counted, never returned), and
//! with `--send-proxy-protocol` every datagram carries its PROXY v2 header.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use sozu_e2e::ports::{free_v4, V4};
use sozu_e2e::procfs::fd_count;
use sozu_e2e::wait::wait_until;
use sozu_e2e::{Sozu, SozuConfig, UdpBackend, UdpClient, UdpListener};

const WAIT: Duration = Duration::from_secs(20);

/// One worker with one UDP listener and no cluster yet.
fn start() -> (Sozu, SocketAddr) {
    let front = free_v4();
    let config = SozuConfig {
        worker_count: 1,
        udp_listeners: vec![UdpListener::new(front)],
        ..SozuConfig::default()
    };
    (Sozu::start(config), front)
}

/// `sozu cluster add -i logs --one-way …`, its backends and its frontend,
/// all through the CLI.
fn one_way_cluster(sozu: &Sozu, front: SocketAddr, extra: &[&str], backends: &[&UdpBackend]) {
    let mut args = vec!["cluster", "add", "-i", "logs", "--one-way"];
    args.extend_from_slice(extra);
    sozu.cli_ok(&args);
    for b in backends {
        add_backend(sozu, b);
    }
    sozu.cli_ok(&[
        "udp",
        "frontend",
        "add",
        "-i",
        "logs",
        "-a",
        &front.to_string(),
    ]);
}

fn add_backend(sozu: &Sozu, b: &UdpBackend) {
    sozu.backend_add("logs", b.name(), &b.addr().to_string());
}

fn worker(sozu: &Sozu) -> i32 {
    let pids = sozu.worker_pids();
    assert_eq!(pids.len(), 1, "one worker: {pids:?}");
    pids[0]
}

/// Sends one datagram from each of `count` fresh sources (a socket bound,
/// used once and closed: a new source port each time), in chunks, waiting
/// after each chunk until the backends got everything sent so far (so no
/// socket buffer overflows on a loaded machine).
fn syslog_load(front: SocketAddr, backends: &[&UdpBackend], tag: &str, count: usize) {
    let start: usize = backends.iter().map(|b| b.datagrams()).sum();
    let mut sent = 0;
    while sent < count {
        let chunk = (count - sent).min(100);
        for i in sent..sent + chunk {
            let socket = UdpSocket::bind(SocketAddr::new(V4, 0)).expect("bind a source");
            socket
                .send_to(format!("<13>{tag} {i}").as_bytes(), front)
                .expect("send a log line");
        }
        sent += chunk;
        wait_until(
            &format!("{sent} {tag} datagrams at the backends"),
            WAIT,
            || {
                let got: usize = backends.iter().map(|b| b.datagrams()).sum();
                (got >= start + sent).then_some(())
            },
        );
    }
}

/// Datagrams each backend got whose payload starts with `<13>{tag} `.
fn tagged(backends: &[&UdpBackend], tag: &str) -> BTreeMap<String, usize> {
    let prefix = format!("<13>{tag} ");
    backends
        .iter()
        .map(|b| {
            let n = b
                .received()
                .iter()
                .filter(|r| r.payload.starts_with(prefix.as_bytes()))
                .count();
            (b.name().to_owned(), n)
        })
        .collect()
}

#[test]
fn syslog_load_from_thousands_of_ports_is_split_round_robin_with_flat_fds() {
    let a = UdpBackend::v4("a");
    let b = UdpBackend::v4("b");
    let (sozu, front) = start();
    one_way_cluster(&sozu, front, &[], &[&a, &b]);
    let listed = sozu.cli_ok(&["cluster", "list", "-i", "logs"]).stdout;
    assert!(listed.contains("one_way=true"), "{listed}");
    let pid = worker(&sozu);
    // Warm up: each backend's one-way socket opens with its first datagram.
    syslog_load(front, &[&a, &b], "warm", 2);
    let fds = fd_count(pid);
    syslog_load(front, &[&a, &b], "load", 2_000);
    assert_eq!(fd_count(pid), fds, "no descriptor per source");
    // Round robin per datagram, one worker: an exact half each.
    let split = tagged(&[&a, &b], "load");
    assert_eq!(
        split.values().copied().collect::<Vec<_>>(),
        vec![1_000, 1_000]
    );
    // The echo backends answered every datagram: each answer was read and
    // dropped (the positive signal), none reached a client.
    let m = sozu.wait_metrics("every answer dropped", WAIT, |m| {
        m.proxy_or_zero(&format!("udp.datagrams.dropped.one_way_reply@{front}")) >= 2_002
    });
    assert_eq!(m.proxy_or_zero(&format!("udp.datagrams.in@{front}")), 2_002);
    assert_eq!(m.proxy_or_zero(&format!("udp.datagrams.out@{front}")), 0);
    assert_eq!(m.proxy_or_zero(&format!("udp.flows.created@{front}")), 0);
    assert_eq!(m.backend("logs", "a", "udp.datagrams.in"), Some(1_001));
    assert_eq!(m.backend("logs", "b", "udp.datagrams.in"), Some(1_001));
    // A client that waits for an answer gets none (the answers were counted
    // above, so they did come back to the proxy).
    let client = UdpClient::new(front);
    client.send(b"<13>anyone there?");
    client.expect_silence(Duration::from_millis(300));
}

#[test]
fn hrw_keeps_sources_and_backends_come_and_go_live() {
    let a = UdpBackend::v4("a");
    let b = UdpBackend::v4("b");
    let c = UdpBackend::v4("c");
    let (sozu, front) = start();
    one_way_cluster(
        &sozu,
        front,
        // Every client is 127.0.0.1: the port tells them apart.
        &[
            "--load-balancing-policy",
            "hrw",
            "--affinity-key",
            "source-ip-port",
        ],
        &[&a, &b],
    );
    let pid = worker(&sozu);
    // 32 clients, each from one source port, 4 datagrams each.
    let clients: Vec<UdpClient> = (0..32).map(|_| UdpClient::new(front)).collect();
    let round = |tag: &str| {
        let before: usize = [&a, &b, &c].iter().map(|x| x.datagrams()).sum();
        for (i, client) in clients.iter().enumerate() {
            for k in 0..4 {
                client.send(format!("{tag}:{i}:{k}").as_bytes());
            }
        }
        wait_until(&format!("{tag} datagrams at the backends"), WAIT, || {
            let got: usize = [&a, &b, &c].iter().map(|x| x.datagrams()).sum();
            (got >= before + 128).then_some(())
        });
    };
    // Which clients each backend saw in one round.
    let owners = |tag: &str| -> BTreeMap<String, BTreeSet<String>> {
        [&a, &b, &c]
            .iter()
            .map(|x| {
                let seen = x
                    .received()
                    .iter()
                    .filter_map(|r| {
                        let text = String::from_utf8_lossy(&r.payload).to_string();
                        let mut parts = text.split(':');
                        (parts.next() == Some(tag)).then(|| parts.next().unwrap_or("").to_owned())
                    })
                    .collect();
                (x.name().to_owned(), seen)
            })
            .collect()
    };
    round("two");
    let two = owners("two");
    assert!(two["a"].is_disjoint(&two["b"]), "a source on both: {two:?}");
    assert_eq!(two["a"].len() + two["b"].len(), 32);
    assert!(!two["a"].is_empty() && !two["b"].is_empty(), "{two:?}");
    let fds = fd_count(pid);

    // Remove b: its socket closes, its sources move to a, a's stay.
    sozu.backend_remove("logs", "b", &b.addr().to_string());
    assert_eq!(
        fd_count(pid),
        fds - 1,
        "the removed backend's socket closed"
    );
    round("one");
    let one = owners("one");
    assert_eq!(one["a"].len(), 32, "all to a: {one:?}");
    assert!(one["b"].is_empty());

    // Add c: a new socket; HRW moves only some sources to c, none from a
    // to anything but c.
    add_backend(&sozu, &c);
    round("three");
    assert_eq!(fd_count(pid), fds, "one socket per backend again");
    let three = owners("three");
    assert_eq!(three["a"].len() + three["c"].len(), 32, "{three:?}");
    assert!(three["a"].is_subset(&two["a"].union(&two["b"]).cloned().collect()));
    assert!(
        three["a"].is_superset(&two["a"].difference(&three["c"]).cloned().collect()),
        "a source of a moved elsewhere than c: {three:?}"
    );
    assert!(!three["c"].is_empty(), "c got no source: {three:?}");
}

#[test]
fn every_one_way_datagram_carries_the_proxy_v2_header() {
    let a = UdpBackend::v4("a");
    let (sozu, front) = start();
    one_way_cluster(&sozu, front, &["--send-proxy-protocol"], &[&a]);
    let client = UdpClient::new(front);
    for k in 0..3 {
        client.send(format!("line {k}").as_bytes());
    }
    let got = a.wait_datagrams(3, WAIT);
    for (k, r) in got.iter().enumerate() {
        let header = r
            .proxy
            .as_ref()
            .expect("a PROXY v2 header on each datagram");
        assert_eq!(header.version_command, 0x21, "v2, PROXY");
        assert_eq!(header.family, 0x12, "IPv4 / DGRAM");
        assert_eq!(header.source, client.local_addr());
        assert_eq!(header.destination, front);
        assert_eq!(r.payload, format!("line {k}").as_bytes());
    }
    drop(sozu);
}
