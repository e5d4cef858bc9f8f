//! Drivers shared by the fuzz targets and their stable replay tests.
//!
//! Owns the byte-to-action interpretation only: every action goes through
//! the UDP flow manager's public API, and the checks here are the promises a
//! shell relies on (no panic, bounded flow count, a deadline strictly after
//! each timeout, everything gone after a final long tick).
//!
//! The command-side targets live in their own modules, which the normal
//! suite's stable replay (`command/tests/fuzz_replay.rs`) includes by path:
//! [`channel_decoder`] (command socket frames → orders → state) and
//! [`config_loader`] (configuration text → orders → state); and the HTTP
//! request path, [`http_request`] (replayed by `lib/tests/http_fuzz_replay.rs`);
//! and the TLS-to-HTTP hand-off, [`tls_http`] (replayed by
//! `lib/tests/tls_fuzz_replay.rs`).

pub mod channel_decoder;
pub mod dns_id;
pub mod config_loader;
pub mod http_request;
pub mod tls_http;

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    num::{NonZeroU32, NonZeroUsize},
    time::{Duration, Instant},
};

use sozu_lib::protocol::udp::{
    BackendId, CloseReason, ClusterConfig, ClusterId, FlowId, FlowKeyExtractor, Output,
    QuicConnectionIdExtractor, UdpFlowManager, UdpFlowManagerConfig,
};

/// Reads the fuzz input as a stream of small numbers.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (first, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*first)
    }

    fn take(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }
}

fn client(i: u8) -> SocketAddr {
    if i & 1 == 0 {
        SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, i >> 4)),
            1000 + u16::from(i & 0xf),
        )
    } else {
        SocketAddr::new(
            IpAddr::V6(Ipv6Addr::new(
                0x2001,
                0xdb8,
                0,
                0,
                0,
                0,
                0,
                u16::from(i >> 4),
            )),
            1000 + u16::from(i & 0xf),
        )
    }
}

/// Interprets `data` as actions on one manager (source-address keys, or QUIC
/// connection-ID keys when the first byte is odd). Panics only if a promise
/// breaks.
pub fn drive_udp_manager(data: &[u8]) {
    let mut input = Bytes(data);
    let Some(mode) = input.byte() else {
        return;
    };
    let mut cfg = UdpFlowManagerConfig::new(
        "[2001:db8::53]:53"
            .parse()
            .unwrap_or_else(|_| SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 53)),
    );
    cfg.max_flows = usize::from(mode >> 3);
    cfg.max_rx_datagram_size = 256;
    cfg.max_pending_datagrams =
        NonZeroUsize::new(usize::from(mode >> 5) + 1).unwrap_or(NonZeroUsize::MIN);
    cfg.max_pending_bytes = NonZeroUsize::new(600).unwrap_or(NonZeroUsize::MIN);
    if mode & 1 == 1 {
        let cid_len = (mode >> 1) & 0x3;
        let m = UdpFlowManager::with_extractor(
            cfg,
            u64::from(mode),
            QuicConnectionIdExtractor {
                short_header_cid_len: cid_len + 1,
            },
        );
        run(m, input);
    } else {
        run(UdpFlowManager::new(cfg, u64::from(mode)), input);
    }
}

fn run<E: FlowKeyExtractor>(mut m: UdpFlowManager<E>, mut input: Bytes<'_>) {
    #[allow(clippy::disallowed_methods)]
    let mut now = Instant::now();
    let mut highest = m.config().max_flows;
    let mut created = 0u64;
    let mut closed = 0u64;
    let mut seen: Vec<FlowId> = Vec::new();
    m.set_cluster(now, Some(ClusterConfig::new(ClusterId::new("fuzz"))));
    while let Some(op) = input.byte() {
        let arg = input.byte().unwrap_or(0);
        let mut timed_out_at = None;
        match op % 12 {
            0..=3 => {
                let len = usize::from(input.byte().unwrap_or(0));
                let payload = input.take(len).to_vec();
                let _ = m.handle_client_datagram(now, client(arg), &payload);
            }
            4 | 5 => {
                let flow = seen.get(usize::from(arg) % seen.len().max(1)).copied();
                let len = usize::from(input.byte().unwrap_or(0)) * 2;
                if let Some(flow) = flow {
                    let _ = m.handle_backend_datagram(now, flow, &vec![0; len]);
                }
            }
            6 => {
                if let Some(flow) = seen.get(usize::from(arg) % seen.len().max(1)).copied() {
                    let backend = BackendId::new(if arg & 1 == 0 { "a" } else { "b" });
                    let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, arg & 1)), 53);
                    let _ = m.backend_resolved(now, flow, backend, addr);
                }
            }
            7 => {
                now += Duration::from_millis(u64::from(arg) * 40);
                m.handle_timeout(now);
                timed_out_at = Some(now);
            }
            8 => {
                let mut c = ClusterConfig::new(ClusterId::new("fuzz"));
                c.requests = NonZeroU32::new(u32::from(arg & 3));
                c.responses = NonZeroU32::new(u32::from((arg >> 2) & 3));
                c.front_timeout = Some(Duration::from_millis(u64::from(arg) * 20));
                c.back_timeout = Some(Duration::from_millis(u64::from(arg >> 4) * 300));
                c.send_proxy_protocol = arg & 0x10 != 0;
                c.proxy_protocol_every_datagram = arg & 0x20 != 0;
                // QUIC connection-ID keys on the cluster (migrations).
                c.quic_cid_length = (arg & 0x40 != 0).then_some((arg & 0x3) + 1);
                m.set_cluster(now, (arg != 0xff).then_some(c));
            }
            9 => {
                highest = highest.max(usize::from(arg % 32));
                m.set_max_flows(usize::from(arg % 32));
            }
            10 => match arg % 4 {
                0 => m.drain(now),
                1 => m.close_all(now),
                2 => m.abort_backend(now, &BackendId::new("a"), CloseReason::BackendRemoved),
                _ => m.set_max_rx_datagram_size(usize::from(arg)),
            },
            _ => {
                if let Some(flow) = seen.get(usize::from(arg) % seen.len().max(1)).copied() {
                    if arg & 0x80 == 0 {
                        m.abort_flow(now, flow, CloseReason::Aborted);
                    } else if let Some(h) = m.hand_over(now, flow) {
                        // Re-adopt (an upgrade into the same table); the close
                        // of the handed-over flow is drained below.
                        while let Some(o) = m.poll_output() {
                            if let Output::CloseFlow { .. } = o {
                                closed += 1;
                            }
                        }
                        if let Ok(id) = m.adopt(now, h) {
                            created += 1;
                            seen.push(id);
                        }
                    }
                }
            }
        }
        while let Some(o) = m.poll_output() {
            match o {
                Output::SelectBackend { flow, .. } => {
                    created += 1;
                    seen.push(flow);
                }
                Output::CloseFlow { .. } => closed += 1,
                _ => {}
            }
        }
        assert!(
            m.active_flows() <= highest,
            "flow count above the highest cap"
        );
        assert_eq!(
            created - closed,
            m.active_flows() as u64,
            "created − closed ≠ live"
        );
        if let Some(t) = timed_out_at {
            assert!(
                m.poll_timeout().is_none_or(|next| next > t),
                "deadline not after timeout"
            );
        }
    }
    now += Duration::from_secs(24 * 3600);
    m.handle_timeout(now);
    while let Some(o) = m.poll_output() {
        if let Output::CloseFlow { .. } = o {
            closed += 1;
        }
    }
    assert_eq!(m.active_flows(), 0, "flows left after the final tick");
    assert!(
        m.poll_timeout().is_none(),
        "timer left after the final tick"
    );
    assert_eq!(created, closed, "created ≠ closed");
}

#[cfg(test)]
mod tests {
    use super::drive_udp_manager;

    /// Replays pseudo-random inputs through the driver on stable.
    #[test]
    fn driver_survives_pseudo_random_inputs() {
        let mut state = 0x1234_5678_9abc_def0u64;
        for _ in 0..2_000 {
            let mut data = Vec::with_capacity(512);
            for _ in 0..512 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                data.push(state as u8);
            }
            drive_udp_manager(&data);
        }
    }
}
