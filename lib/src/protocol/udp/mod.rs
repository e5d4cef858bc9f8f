//! The UDP flow manager: a sans-io core, one [`UdpFlowManager`] per UDP
//! listener (see `LIFECYCLE.md` beside this file for the state diagram).
//!
//! Owns the flow table, admission, phases, caps, idle timers, PROXY v2
//! headers and the per-flow access record. Must never touch a socket, read a
//! clock (`now` comes in on every entry point), draw randomness (the seed is
//! injected) or allocate on an established flow's datagram. Its twin, the I/O
//! shell, is [`crate::udp`] and owns the sockets.
//!
//! # How a shell drives it
//!
//! ```text
//! client datagram (src, buf[..n]) on the listener socket:
//!     match mgr.handle_client_datagram(now, src, &buf[..n]) {
//!         Forward { flow, proxy_header } => send [header?, payload] on upstream(flow)
//!                                           count udp.datagrams.in / bytes.in (n)
//!         OneWay { affinity_hash, proxy_header }
//!                                        => pick a backend with the hash, send
//!                                           [header?, payload] on its shared
//!                                           one-way socket (no flow exists)
//!         DnsQuery { affinity_hash, proxy_header }
//!                                        => pick a backend with the hash and a
//!                                           socket of it; DnsIdMux::on_query
//!                                           rewrites the ID; send; the answer
//!                                           goes through DnsIdMux::on_answer
//!         Queued { .. }                  => nothing (buffered in the core)
//!         Dropped(reason)                => count udp.datagrams.dropped{reason}
//!     }
//!     drain outputs; re-arm the timer from mgr.poll_timeout()
//! backend datagram (buf[..n]) on upstream socket of `flow`:
//!     match mgr.handle_backend_datagram(now, flow, &buf[..n]) {
//!         Return { dst }  => send payload to dst via the listener socket;
//!                            count udp.datagrams.out / bytes.out (n)
//!         Dropped(reason) => count udp.datagrams.dropped{reason}
//!     }
//!     drain outputs; re-arm timer
//! drain: while let Some(o) = mgr.poll_output() { match o {
//!     SelectBackend { flow, cluster, affinity_hash, quic_lb } => pick a backend
//!         (the one whose QUIC-LB server ID `quic_lb` names, if any); queue the
//!         input backend_resolved(flow, id, addr) — or abort_flow(flow, Aborted)
//!         if none — and feed it AFTER the drain loop;
//!     OpenUpstream { flow, backend, addr } => connect a UDP socket to addr,
//!         register token ↔ flow; on failure queue abort_flow(flow, Aborted);
//!     Transmit { via, dst, proxy_header, payload } => send (header, payload) on
//!         `via`; a Transmit via Upstream counts as udp.datagrams.in / bytes.in
//!         (payload.len(), header excluded);
//!     Metric(FlowCreated | FlowEvicted | FlowShed | FlowMigrated) => udp.flows.* counters;
//!     Dropped { reason, datagrams, .. } => udp.datagrams.dropped{reason} += datagrams;
//!     CloseFlow { flow, reason, record } => deregister and close the upstream
//!         socket, forget `flow`, write the access log line from `record`;
//! } }
//! timer fired: mgr.handle_timeout(now); drain; re-arm.
//! ```
//!
//! Act on a decision before draining the outputs: a datagram that reaches a
//! requests cap is `Forward`ed and its flow's `CloseFlow` is already queued,
//! so the shell sends first, then closes the socket. Prefer the named methods
//! over [`UdpFlowManager::handle_input`] where the return value matters
//! (`backend_resolved` returns its [`ResolveOutcome`]: `UnknownFlow` counts as
//! a drop).
//!
//! One fact, one channel: per-datagram facts (in / out / drops of the
//! datagram at hand) come from the decisions and `Transmit`s, per-flow facts
//! from `Output::Metric`, drops of buffered datagrams from `Output::Dropped`,
//! the deadline only from `poll_timeout`, the active-flow gauge from
//! [`UdpFlowManager::active_flows`].
//!
//! Upgrades: a worker upgrade moves the listening sockets and the live
//! flows. The core holds the two halves of a flow handover:
//! [`UdpFlowManager::hand_over`] releases an established flow as a portable
//! [`FlowHandover`] (closing it there with `HandedOver`), and
//! [`UdpFlowManager::adopt`] rebuilds it in another manager under a new id;
//! moving the upstream socket between workers is the shell's part
//! (`crate::udp::handover`; see `doc/architecture.md`, "Handing live flows
//! over").
//!
//! A `FlowId` is unique for the manager's life (slot + generation), but the
//! shell must forget it at `CloseFlow`; any later call with it is an unknown
//! flow. Backend datagrams larger than `max_rx_datagram_size` are dropped
//! `Truncated`: the shell should receive into a buffer at least one byte
//! larger than that size to notice truncation.

mod dns_id;
mod flow;
mod handover;
#[cfg(debug_assertions)]
mod invariants;
mod key;
mod manager;
mod one_way;
mod ppv2;
mod quic_lb;
mod timers;
mod types;

#[cfg(test)]
mod tests;

pub use dns_id::{
    AnswerDecision, DnsDrop, DnsIdMux, PendingQueries, QueryDecision,
    DEFAULT_MAX_PENDING_PER_SOCKET, DNS_HEADER_LEN, MAX_PENDING_PER_SOCKET,
};
pub use handover::{AdoptError, FlowHandover};
pub use key::{
    affinity_hash, ConnectionId, FlowKey, FlowKeyExtractor, QuicConnectionIdExtractor,
    SeededHasher, SeededState, SourceAddressExtractor, DEFAULT_HASH_SEED, MAX_CONNECTION_ID_LEN,
};
pub use manager::UdpFlowManager;
pub use ppv2::ProxyHeader;
pub use quic_lb::{
    QuicLbConfig, QuicLbConfigError, QuicLbFallback, QuicLbRoute, ServerId,
    MAX_SERVER_ID_AND_NONCE_LEN, MAX_SERVER_ID_LEN, MIN_NONCE_LEN, UNROUTABLE_CONFIG_ID,
};
pub use types::{
    AffinityKey, BackendDecision, BackendId, ClientDecision, CloseReason, ClusterConfig, ClusterId,
    DropReason, FlowId, FlowRecord, Input, MetricEvent, Output, Phase, ResolveOutcome,
    UdpFlowManagerConfig, Via, DEFAULT_MAX_PENDING_BYTES, DEFAULT_MAX_PENDING_DATAGRAMS,
};

/// PROXY protocol v2 constants (signature and family bytes).
pub mod proxy_protocol {
    pub use super::ppv2::{
        FAMILY_UDP4, FAMILY_UDP6, FAMILY_UNSPEC, MAX_LEN, SIGNATURE, VERSION_COMMAND_PROXY,
    };
}
