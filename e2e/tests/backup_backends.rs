//! Backup backends through the real binary, for UDP, TCP and HTTP: a backup
//! gets new flows (connections, requests) only while no primary backend of
//! its cluster is available — removed, down by its health check, or
//! suspect — and new traffic goes back to the primary once it returns.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use sozu_e2e::config::HealthConfig;
use sozu_e2e::ports::{free_v4, V4};
use sozu_e2e::stream::{
    http_get, tcp_greeting, tcp_http_config, NamedHttpBackend, NamedTcpBackend, StreamBackend,
};
use sozu_e2e::udp::parse_reply;
use sozu_e2e::{wait_until, ClusterConfig, Sozu, SozuConfig, UdpBackend, UdpClient, UdpListener};

const WAIT: Duration = Duration::from_secs(20);
const NEW_FLOWS: usize = 20;

/// Which backend each of `n` new flows reached, counted by name.
fn spread(n: usize, mut one: impl FnMut(usize) -> String) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for i in 0..n {
        *counts.entry(one(i)).or_default() += 1;
    }
    counts
}

fn all_to(counts: &BTreeMap<String, usize>, name: &str) -> bool {
    counts.len() == 1 && counts.get(name) == Some(&NEW_FLOWS)
}

/// New UDP flows from fresh source ports. Every client socket stays bound
/// for the whole test: a closed one's port could be handed to a later
/// client by the kernel, which would then join that earlier flow (still
/// live in the proxy, pinned to its backend) instead of making a new one.
#[derive(Default)]
struct FreshFlows {
    held: Vec<UdpClient>,
}

impl FreshFlows {
    /// A new flow: the backend that answered, if one did within 300 ms.
    fn one(&mut self, front: SocketAddr, payload: &str) -> Option<String> {
        let client = UdpClient::new(front);
        client.send(payload.as_bytes());
        let reply = client.recv_timeout(Duration::from_millis(300));
        self.held.push(client);
        let (backend, echoed) = parse_reply(&reply?);
        (echoed == payload.as_bytes()).then_some(backend)
    }

    /// `NEW_FLOWS` new flows, each of which must be answered.
    fn spread(&mut self, front: SocketAddr, tag: &str) -> BTreeMap<String, usize> {
        spread(NEW_FLOWS, |i| {
            let client = UdpClient::new(front);
            let backend = client.expect_echo(format!("{tag}-{i}").as_bytes());
            self.held.push(client);
            backend
        })
    }
}

#[test]
fn udp_backup_serves_only_while_the_primary_is_removed_or_down() {
    let primary = UdpBackend::start("primary", V4, Some("ping"));
    let backup = UdpBackend::start("backup", V4, Some("ping"));
    let front = free_v4();
    let mut cluster = ClusterConfig::new("dns", front).backend("primary", primary.addr());
    cluster.health = Some(HealthConfig::fast_udp_probe("ping"));
    // One worker: its health checker alone decides, so the test knows when.
    let sozu = Sozu::start(SozuConfig::udp(1, UdpListener::new(front), cluster));
    let mut flows = FreshFlows::default();
    let backup_addr = backup.addr().to_string();
    let primary_addr = primary.addr().to_string();
    sozu.cli_ok(&[
        "backend",
        "add",
        "-i",
        "dns",
        "--backend-id",
        "backup",
        "-a",
        &backup_addr,
        "--backup",
    ]);
    // The backup is listed as one.
    let listed = sozu.cli_ok(&["cluster", "list", "-i", "dns"]).stdout;
    assert!(
        listed
            .lines()
            .any(|l| l.contains("backup") && l.trim_end().ends_with("yes")),
        "{listed}"
    );

    let counts = flows.spread(front, "up");
    assert!(all_to(&counts, "primary"), "primary up: {counts:?}");

    sozu.backend_remove("dns", "primary", &primary_addr);
    let counts = flows.spread(front, "removed");
    assert!(all_to(&counts, "backup"), "primary removed: {counts:?}");

    sozu.backend_add("dns", "primary", &primary_addr);
    let counts = flows.spread(front, "re-added");
    assert!(all_to(&counts, "primary"), "primary re-added: {counts:?}");

    // Down by its health check: it stops answering (probes included).
    primary.set_silent(true);
    wait_until("the primary marked down", WAIT, || {
        (flows.one(front, "probe-down")? == "backup").then_some(())
    });
    let counts = flows.spread(front, "down");
    assert!(all_to(&counts, "backup"), "primary down: {counts:?}");
    // The positive signal beside "the primary got nothing": it was probed.
    assert!(primary.probes() > 0);

    primary.set_silent(false);
    wait_until("the primary back up", WAIT, || {
        (flows.one(front, "probe-up")? == "primary").then_some(())
    });
    let counts = flows.spread(front, "back");
    assert!(all_to(&counts, "primary"), "primary back up: {counts:?}");
}

/// One worker, a TCP and an HTTP listener; each cluster has a primary and a
/// backup declared in the configuration file (`backup = true`).
fn start_streams(
    tcp: (&NamedTcpBackend, &NamedTcpBackend),
    http: (&NamedHttpBackend, &NamedHttpBackend),
) -> (Sozu, SocketAddr, SocketAddr) {
    let tcp_front = free_v4();
    let http_front = free_v4();
    let config = SozuConfig {
        worker_count: 1,
        extra: tcp_http_config(
            tcp_front,
            http_front,
            &[
                StreamBackend::new("primary", tcp.0.addr()),
                StreamBackend::backup("backup", tcp.1.addr()),
            ],
            &[
                StreamBackend::new("primary", http.0.addr()),
                StreamBackend::backup("backup", http.1.addr()),
            ],
        ),
        ..SozuConfig::default()
    };
    (Sozu::start(config), tcp_front, http_front)
}

fn tcp_spread(front: SocketAddr) -> BTreeMap<String, usize> {
    spread(NEW_FLOWS, |i| {
        tcp_greeting(front)
            .unwrap_or_else(|e| panic!("connection {i}: {e}"))
            .1
    })
}

fn http_spread(front: SocketAddr) -> BTreeMap<String, usize> {
    spread(NEW_FLOWS, |i| match http_get(front, "example.com", "/") {
        Ok((200, body)) => body.trim_start_matches("backend=").to_owned(),
        other => panic!("request {i}: {other:?}"),
    })
}

/// The steps the TCP and HTTP tests share, on `cluster` whose primary
/// listens at `primary_addr`, `spread` sending a batch of new connections or
/// requests: every one goes to the primary while it is up, to the backup
/// once it is removed, to the primary again once re-added, and to the
/// backup while the primary is suspect (re-added at an address where
/// nothing listens). Returns that dead address, where the primary is left.
fn primary_then_backup(
    sozu: &Sozu,
    cluster: &str,
    primary_addr: &str,
    spread: impl Fn() -> BTreeMap<String, usize>,
) -> String {
    let counts = spread();
    assert!(all_to(&counts, "primary"), "primary up: {counts:?}");

    sozu.backend_remove(cluster, "primary", primary_addr);
    let counts = spread();
    assert!(all_to(&counts, "backup"), "primary removed: {counts:?}");

    sozu.backend_add(cluster, "primary", primary_addr);
    let counts = spread();
    assert!(all_to(&counts, "primary"), "primary re-added: {counts:?}");

    sozu.backend_remove(cluster, "primary", primary_addr);
    let dead = free_v4().to_string();
    sozu.backend_add(cluster, "primary", &dead);
    let counts = spread();
    assert!(all_to(&counts, "backup"), "primary suspect: {counts:?}");
    dead
}

#[test]
fn tcp_backup_serves_only_while_the_primary_is_removed_or_suspect() {
    let (primary, backup) = (
        NamedTcpBackend::start("primary"),
        NamedTcpBackend::start("backup"),
    );
    let (p, b) = (
        NamedHttpBackend::start("primary"),
        NamedHttpBackend::start("backup"),
    );
    let (sozu, front, _) = start_streams((&primary, &backup), (&p, &b));
    let primary_addr = primary.addr().to_string();
    // Suspect: the first connect to the dead address is refused, the
    // primary becomes suspect and that connection (retried) and the next
    // ones go to the backup.
    let dead = primary_then_backup(&sozu, "echo", &primary_addr, || tcp_spread(front));
    assert_eq!(
        backup.connections(),
        2 * NEW_FLOWS,
        "the backup served while the primary was removed, then suspect"
    );
    let m = sozu.metrics();
    assert!(
        m.backend("echo", "primary", "tcp.connect.failed")
            .unwrap_or(0)
            >= 1,
        "the refused connect is counted: {:?}",
        m.names()
    );

    // Back at its live address: new connections go to it again.
    sozu.backend_remove("echo", "primary", &dead);
    sozu.backend_add("echo", "primary", &primary_addr);
    let counts = tcp_spread(front);
    assert!(all_to(&counts, "primary"), "primary back: {counts:?}");
}

#[test]
fn http_backup_serves_only_while_the_primary_is_removed_or_suspect() {
    let (tp, tb) = (
        NamedTcpBackend::start("primary"),
        NamedTcpBackend::start("backup"),
    );
    let (primary, backup) = (
        NamedHttpBackend::start("primary"),
        NamedHttpBackend::start("backup"),
    );
    let (sozu, _, front) = start_streams((&tp, &tb), (&primary, &backup));
    let primary_addr = primary.addr().to_string();
    // Suspect: no request is answered by the proxy itself (503), the
    // backup answers every one.
    primary_then_backup(&sozu, "web", &primary_addr, || http_spread(front));
}
