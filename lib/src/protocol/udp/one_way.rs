//! The one-way decision path of [`UdpFlowManager`]: a client datagram of a
//! cluster with `one_way` set becomes a [`ClientDecision::OneWay`] — "send
//! these bytes to a backend chosen with this hash" — with no flow, no table
//! entry, no timer and no output queued.
//!
//! Owns nothing: it reads the listener's configuration and cluster and
//! returns a `Copy` decision. Must never allocate, touch a socket or read a
//! clock. Its shell twin is `crate::udp::one_way` (one connected socket per
//! backend, replies read and dropped).

use std::net::SocketAddr;

use super::{
    key::{affinity_hash, FlowKeyExtractor},
    manager::UdpFlowManager,
    ppv2::ProxyHeader,
    types::{ClientDecision, ClusterConfig, DropReason},
};

impl<E: FlowKeyExtractor> UdpFlowManager<E> {
    /// Whether the listener's cluster is one-way (client datagrams become
    /// [`ClientDecision::OneWay`]).
    pub fn is_one_way(&self) -> bool {
        self.cluster.as_ref().is_some_and(|c| c.one_way)
    }

    /// The one-way verdict on a datagram already checked for size and
    /// cluster: an empty datagram is `Invalid` (as on the flow path), any
    /// other is forwarded. Draining does not shed it: with no flow to
    /// admit, soft-stop has nothing to refuse (the worker exits once its
    /// flows are gone, and during an upgrade the listener stops being read).
    pub(super) fn on_one_way_datagram(
        &self,
        cluster: &ClusterConfig,
        src: SocketAddr,
        payload: &[u8],
    ) -> ClientDecision {
        if payload.is_empty() {
            return ClientDecision::Dropped(DropReason::Invalid);
        }
        let proxy_header = cluster
            .send_proxy_protocol
            .then(|| ProxyHeader::new(src, self.config.listener));
        ClientDecision::OneWay {
            affinity_hash: affinity_hash(self.config.hash_seed, cluster.affinity_key, src),
            proxy_header,
        }
    }
}
