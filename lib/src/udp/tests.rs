//! Shell tests that need to look inside one wake-up: the per-socket budget
//! and the automatic `max_flows` formula.

use std::net::{SocketAddr, UdpSocket};
use std::time::Instant;

use mio::Poll;
use sozu_command_lib::command::{filtered_metrics::Inner, QueryMetricsOptions, UdpListenerConfig};

use super::socket::parse_port_range;
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
