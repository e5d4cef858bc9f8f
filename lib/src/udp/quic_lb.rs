//! The shell side of QUIC-LB routable connection IDs: a new flow whose
//! first datagram names a server ID (decoded by the core, see
//! `crate::protocol::udp::QuicLbConfig`) goes to the backend with that ID;
//! otherwise the cluster's policy places it, and the reason is counted.
//!
//! Owns the per-listener counters `udp.quic_lb.routed` and
//! `udp.quic_lb.fallback.<reason>` and the check of a cluster's QUIC-LB
//! knobs from an order. Never decodes a datagram (the core does) and keeps
//! no per-connection state: the server ID alone routes, so every worker and
//! every instance with the same backends agrees.

use std::net::SocketAddr;

use sozu_command_lib::command;

use super::UdpError;
use crate::backends::{BackendId, BackendMap};
use crate::metrics::{MetricKind, MetricsRegistry, Scope};
use crate::protocol::udp::{QuicLbConfig, QuicLbFallback, QuicLbRoute};

/// New flows placed by the server ID of their connection ID.
pub(crate) const ROUTED: &str = "udp.quic_lb.routed";

/// The counter of new flows of a QUIC-LB cluster placed by the policy.
pub(crate) fn fallback_name(reason: QuicLbFallback) -> &'static str {
    match reason {
        QuicLbFallback::TooShort => "udp.quic_lb.fallback.too_short",
        QuicLbFallback::ConfigMismatch => "udp.quic_lb.fallback.config_mismatch",
        QuicLbFallback::Unroutable => "udp.quic_lb.fallback.unroutable",
        QuicLbFallback::UnknownServerId => "udp.quic_lb.fallback.unknown_server_id",
        QuicLbFallback::ServerDown => "udp.quic_lb.fallback.server_down",
    }
}

fn count(registry: &mut MetricsRegistry, listener: SocketAddr, name: &str) {
    match registry.register(name, Scope::Listener(listener), MetricKind::Counter) {
        Ok(handle) => registry.count(handle, 1),
        Err(error) => tracing::warn!(%error, name, "quic-lb metric not registered"),
    }
}

/// The backend for a new flow of `cluster`: the one whose server ID
/// `route` names when it has one that is not down, else the policy's pick
/// with `affinity_hash` (counted with its reason). `route` is `None` on a
/// cluster without QUIC-LB: the policy alone, nothing counted.
pub(super) fn select(
    backends: &mut BackendMap,
    registry: &mut MetricsRegistry,
    listener: SocketAddr,
    cluster: &str,
    affinity_hash: u64,
    route: Option<QuicLbRoute>,
) -> Option<(BackendId, SocketAddr)> {
    let fallback = match route {
        None => return backends.select(cluster, affinity_hash),
        Some(QuicLbRoute::ServerId(server_id)) => {
            match backends.select_by_server_id(cluster, &server_id) {
                Ok(picked) => {
                    tracing::trace!(cluster, %server_id, backend = %picked.0, "quic-lb routed");
                    count(registry, listener, ROUTED);
                    return Some(picked);
                }
                Err(reason) => reason,
            }
        }
        Some(QuicLbRoute::Fallback(reason)) => reason,
    };
    count(registry, listener, fallback_name(fallback));
    backends.select(cluster, affinity_hash)
}

/// A cluster order's QUIC-LB configuration (`None`: off), checked against
/// the draft's limits and the cluster's `quic_cid_length` (`cid_len`,
/// `None` when flows are not keyed by QUIC connection ID).
pub(super) fn cluster_config(
    udp: &command::UdpClusterConfig,
    cid_len: Option<u8>,
) -> Result<Option<QuicLbConfig>, UdpError> {
    let Some(server_id_len) = udp.quic_lb_server_id_length else {
        return Ok(None);
    };
    let Some(cid_len) = cid_len else {
        return Err(UdpError::InvalidValue {
            field: "udp.quic_lb_server_id_length",
            value: server_id_len.to_string(),
            reason: "QUIC-LB needs flow_key = QUIC_CONNECTION_ID",
        });
    };
    QuicLbConfig::new(
        udp.quic_lb_config_id.unwrap_or(0),
        server_id_len,
        udp.quic_lb_nonce_length,
        cid_len,
    )
    .map(Some)
    .map_err(|e| UdpError::InvalidValue {
        field: match e.field {
            "quic_lb_config_id" => "udp.quic_lb_config_id",
            "quic_lb_server_id_length" => "udp.quic_lb_server_id_length",
            _ => "udp.quic_lb_nonce_length",
        },
        value: e.value.to_string(),
        reason: e.reason,
    })
}
