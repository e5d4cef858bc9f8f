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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::udp::ServerId;

    fn counter(registry: &mut MetricsRegistry, listener: SocketAddr, name: &str) -> i64 {
        let handle = registry
            .register(name, Scope::Listener(listener), MetricKind::Counter)
            .expect("counter");
        registry.counter(handle).unwrap_or(0)
    }

    fn backends() -> BackendMap {
        let mut map = BackendMap::new(7);
        for (id, port, sid) in [("b1", 5001, 1u8), ("b2", 5002, 2)] {
            map.add_from_order(&command::AddBackend {
                cluster_id: "q".into(),
                backend_id: id.into(),
                address: SocketAddr::from(([127, 0, 0, 1], port)).into(),
                backup: Some(id == "b2"),
                quic_lb_server_id: Some(vec![sid]),
                ..Default::default()
            })
            .expect("backend");
        }
        map
    }

    #[test]
    fn a_server_id_routes_past_the_policy_and_misses_fall_back_counted() {
        let mut map = backends();
        let mut registry = MetricsRegistry::new();
        let listener: SocketAddr = "127.0.0.1:443".parse().unwrap();
        let sid = |b: u8| Some(QuicLbRoute::ServerId(ServerId::new(&[b]).unwrap()));
        // b2 is a backup: only its server ID brings flows to it.
        for _ in 0..3 {
            let (picked, _) =
                select(&mut map, &mut registry, listener, "q", 1, sid(2)).expect("b2");
            assert_eq!(picked.as_str(), "b2");
        }
        assert_eq!(counter(&mut registry, listener, ROUTED), 3);
        // Unknown server ID: the policy (the primary), counted.
        let (picked, _) = select(&mut map, &mut registry, listener, "q", 1, sid(9)).unwrap();
        assert_eq!(picked.as_str(), "b1");
        let unknown = fallback_name(QuicLbFallback::UnknownServerId);
        assert_eq!(counter(&mut registry, listener, unknown), 1);
        // A down server: fallback, counted as such.
        map.set_status("q", "b2", crate::backends::BackendStatus::Down);
        let (picked, _) = select(&mut map, &mut registry, listener, "q", 1, sid(2)).unwrap();
        assert_eq!(picked.as_str(), "b1");
        let down = fallback_name(QuicLbFallback::ServerDown);
        assert_eq!(counter(&mut registry, listener, down), 1);
        // A core fallback reason is counted as it comes; no route counts nothing.
        let mismatch = Some(QuicLbRoute::Fallback(QuicLbFallback::ConfigMismatch));
        select(&mut map, &mut registry, listener, "q", 1, mismatch).unwrap();
        let name = fallback_name(QuicLbFallback::ConfigMismatch);
        assert_eq!(counter(&mut registry, listener, name), 1);
        select(&mut map, &mut registry, listener, "q", 1, None).unwrap();
        assert_eq!(counter(&mut registry, listener, ROUTED), 3);
    }

    #[test]
    fn duplicate_or_oversized_server_ids_are_refused() {
        let mut map = backends();
        let mut order = command::AddBackend {
            cluster_id: "q".into(),
            backend_id: "b3".into(),
            address: SocketAddr::from(([127, 0, 0, 1], 5003)).into(),
            quic_lb_server_id: Some(vec![1]),
            ..Default::default()
        };
        let e = map.add_from_order(&order).expect_err("taken").to_string();
        assert!(e.contains("01") && e.contains("b1"), "{e}");
        order.quic_lb_server_id = Some(vec![0; 16]);
        let e = map
            .add_from_order(&order)
            .expect_err("too long")
            .to_string();
        assert!(e.contains("quic_lb_server_id") && e.contains("16"), "{e}");
        order.quic_lb_server_id = Some(vec![]);
        assert!(map.add_from_order(&order).is_err());
        // Re-adding b1 with its own id is an update, not a clash.
        order.backend_id = "b1".into();
        order.quic_lb_server_id = Some(vec![1]);
        assert!(map.add_from_order(&order).is_ok());
    }

    #[test]
    fn cluster_knobs_are_checked_naming_the_field() {
        use sozu_command_lib::command::{UdpClusterConfig, UdpFlowKey};
        let udp = |sid: u32, config: Option<u32>, nonce: Option<u32>| UdpClusterConfig {
            flow_key: Some(UdpFlowKey::QuicConnectionId as i32),
            quic_lb_server_id_length: Some(sid),
            quic_lb_config_id: config,
            quic_lb_nonce_length: nonce,
            ..Default::default()
        };
        let ok = cluster_config(&udp(2, Some(3), None), Some(8))
            .unwrap()
            .unwrap();
        assert_eq!(
            (ok.config_id(), ok.server_id_len(), ok.nonce_len()),
            (3, 2, 5)
        );
        assert_eq!(
            cluster_config(&UdpClusterConfig::default(), Some(8)).unwrap(),
            None
        );
        for (wire, cid, field, value) in [
            (
                udp(2, None, None),
                None,
                "udp.quic_lb_server_id_length",
                "2",
            ),
            (udp(2, Some(7), None), Some(8), "udp.quic_lb_config_id", "7"),
            (
                udp(0, None, None),
                Some(8),
                "udp.quic_lb_server_id_length",
                "0",
            ),
            (udp(4, None, None), Some(8), "udp.quic_lb_nonce_length", "3"),
            (
                udp(2, None, Some(9)),
                Some(8),
                "udp.quic_lb_nonce_length",
                "9",
            ),
        ] {
            let text = cluster_config(&wire, cid).expect_err("refused").to_string();
            assert!(text.contains(field) && text.contains(value), "{text}");
        }
    }
}
