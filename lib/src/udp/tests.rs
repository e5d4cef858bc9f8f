//! Shell tests that need real sockets: the per-socket read budget of one
//! wake-up, the port-range file and upstream source addresses.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::Instant;

use mio::Poll;
use sozu_command_lib::command::{filtered_metrics::Inner, QueryMetricsOptions, UdpListenerConfig};

use super::socket::{parse_port_range, SourceAddresses};
use super::{IoContext, UdpShell, UdpToken, DATAGRAM_BUDGET};
use crate::backends::BackendMap;
use crate::health::HealthChecker;
use crate::metrics::MetricsRegistry;
use crate::server::tokens::Tokens;

fn counter(registry: &MetricsRegistry, name: &str) -> i64 {
    match registry
        .worker_metrics(&QueryMetricsOptions::default())
        .proxy
        .get(name)
        .and_then(|m| m.inner.clone())
    {
        Some(Inner::Count(v)) => v,
        _ => 0,
    }
}

#[test]
fn a_busy_listener_yields_at_its_budget_and_is_read_again_on_the_next_pass() {
    let poll = Poll::new().unwrap();
    let mut tokens = Tokens::new();
    let mut metrics = MetricsRegistry::new();
    let mut backends = BackendMap::new(1);
    let mut health = HealthChecker::new();
    let mut still_readable = Vec::new();
    let mut ctx = IoContext {
        registry: poll.registry(),
        tokens: &mut tokens,
        metrics: &mut metrics,
        backends: &mut backends,
        health: &mut health,
        still_readable: &mut still_readable,
    };
    let address: SocketAddr = {
        let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let mut shell = UdpShell::new(7, 1024, Vec::new(), 0);
    #[allow(clippy::disallowed_methods)]
    let now = Instant::now();
    let config = UdpListenerConfig {
        address: address.into(),
        public_address: None,
        front_timeout: 1,
        back_timeout: 1,
        max_rx_datagram_size: 1500,
        max_flows: 0,
        active: true,
        recv_buffer_size: Some(1 << 20),
        send_buffer_size: None,
    };
    shell.add_listener(now, &config, &mut ctx).unwrap();
    // Activation asks for one read pass (datagrams may already wait).
    assert_eq!(ctx.still_readable.len(), 1);
    ctx.still_readable.clear();
    // No frontend: every datagram is dropped `no_backend`, which counts
    // exactly how many the pass read.
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    let sent = DATAGRAM_BUDGET + 36;
    for i in 0..sent {
        client.send_to(&[i as u8 + 1], address).unwrap();
    }
    shell.on_ready(now, UdpToken::Listener(0), true, false, &mut ctx);
    assert_eq!(
        counter(ctx.metrics, "udp.datagrams.dropped.no_backend"),
        DATAGRAM_BUDGET as i64
    );
    assert_eq!(ctx.still_readable.len(), 1, "more to read: come back");
    ctx.still_readable.clear();
    shell.on_ready(now, UdpToken::Listener(0), true, false, &mut ctx);
    assert_eq!(
        counter(ctx.metrics, "udp.datagrams.dropped.no_backend"),
        sent as i64
    );
    assert!(ctx.still_readable.is_empty(), "drained to WouldBlock");
}

#[test]
fn the_port_range_file_is_parsed_as_the_kernel_writes_it() {
    assert_eq!(parse_port_range("32768\t60999\n"), Some(28_232));
    assert_eq!(parse_port_range("1024 1024"), Some(1));
    assert_eq!(parse_port_range("60999\t32768\n"), None);
    assert_eq!(parse_port_range("32768"), None);
    assert_eq!(parse_port_range("a b"), None);
    // The host's own file reads (Linux).
    assert!(super::socket::ephemeral_port_count().unwrap() >= 1);
}

#[test]
fn upstream_sockets_take_the_source_addresses_in_turn() {
    let backend = UdpSocket::bind("127.0.0.1:0").unwrap();
    let backend_addr = backend.local_addr().unwrap();
    let sources: Vec<IpAddr> = vec![
        "127.0.0.2".parse().unwrap(),
        "::1".parse().unwrap(),
        "127.0.0.3".parse().unwrap(),
    ];
    let mut turn = SourceAddresses::new(&sources);
    let locals: Vec<SocketAddr> = (0..4)
        .map(|_| turn.open(backend_addr).unwrap().local_addr().unwrap())
        .collect();
    let ips: Vec<String> = locals.iter().map(|a| a.ip().to_string()).collect();
    // IPv4 backend: the IPv6 address is skipped.
    assert_eq!(ips, ["127.0.0.2", "127.0.0.3", "127.0.0.2", "127.0.0.3"]);
    assert!(locals.iter().all(|a| a.port() != 0));
    // The connection is real: a datagram reaches the backend from there.
    let socket = turn.open(backend_addr).unwrap();
    socket.send(b"hello").unwrap();
    let mut buf = [0u8; 16];
    backend
        .set_read_timeout(Some(std::time::Duration::from_secs(2)))
        .unwrap();
    let (n, from) = backend.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"hello");
    assert_eq!(from, socket.local_addr().unwrap());
    // No address of the backend's family: the kernel picks one.
    let none_v6 = SourceAddresses::new(&sources[..1]);
    let v6_backend = UdpSocket::bind("[::1]:0").unwrap();
    let local = none_v6
        .clone()
        .open(v6_backend.local_addr().unwrap())
        .unwrap()
        .local_addr()
        .unwrap();
    assert!(local.is_ipv6());
}

#[test]
fn source_addresses_count_the_port_ranges_every_flow_can_use() {
    let ips = |list: &[&str]| -> Vec<IpAddr> { list.iter().map(|a| a.parse().unwrap()).collect() };
    assert_eq!(SourceAddresses::default().port_ranges(), 0);
    assert_eq!(
        SourceAddresses::new(&ips(&["10.0.0.1", "10.0.0.2", "10.0.0.3"])).port_ranges(),
        3
    );
    // Both families: a flow uses its own family's, so the smaller count.
    assert_eq!(
        SourceAddresses::new(&ips(&["10.0.0.1", "10.0.0.2", "2001:db8::1"])).port_ranges(),
        1
    );
}

#[test]
fn quic_cid_length_of_an_order_is_checked_by_the_worker() {
    use sozu_command_lib::command::{UdpClusterConfig, UdpFlowKey};

    use super::shell::quic_cid_length;

    let quic = |len: Option<u32>| UdpClusterConfig {
        flow_key: Some(UdpFlowKey::QuicConnectionId as i32),
        quic_cid_length: len,
        ..Default::default()
    };
    assert_eq!(quic_cid_length(&quic(None)).ok(), Some(Some(8)));
    assert_eq!(quic_cid_length(&quic(Some(1))).ok(), Some(Some(1)));
    assert_eq!(quic_cid_length(&quic(Some(20))).ok(), Some(Some(20)));
    for bad in [0, 21, 256, u32::MAX] {
        let err = quic_cid_length(&quic(Some(bad))).expect_err("refused");
        let text = err.to_string();
        assert!(
            text.contains("udp.quic_cid_length") && text.contains(&bad.to_string()),
            "{text}"
        );
    }
    // Source-address keys ignore the length, whatever it says.
    let plain = UdpClusterConfig {
        quic_cid_length: Some(0),
        ..Default::default()
    };
    assert_eq!(quic_cid_length(&plain).ok(), Some(None));
    let unknown = UdpClusterConfig {
        flow_key: Some(99),
        ..Default::default()
    };
    assert!(quic_cid_length(&unknown)
        .expect_err("unknown key")
        .to_string()
        .contains("udp.flow_key"));
}

#[test]
fn a_dns_id_cluster_cannot_be_one_way_and_the_worker_names_the_field() {
    use sozu_command_lib::command::{
        Cluster, LoadBalancingAlgorithms, UdpClusterConfig, UdpFlowKey,
    };

    use super::shell::check_cluster;

    let cluster = |one_way: bool| Cluster {
        cluster_id: "dns".to_owned(),
        load_balancing: LoadBalancingAlgorithms::RoundRobin as i32,
        udp: Some(UdpClusterConfig {
            flow_key: Some(UdpFlowKey::DnsId as i32),
            one_way: Some(one_way),
            ..Default::default()
        }),
        ..Default::default()
    };
    assert!(check_cluster(&cluster(false)).is_ok());
    let text = check_cluster(&cluster(true))
        .expect_err("refused")
        .to_string();
    assert!(
        text.contains("udp.flow_key") && text.contains("DNS_ID"),
        "{text}"
    );
}
