//! Cluster and backend orders, for every protocol at once: balancing
//! algorithm, fail-open and health checks on the shared backends and
//! checker, then what the UDP shell keeps per cluster (its knobs, its
//! flows). The stream proxies' part follows in `streams.rs`.
//!
//! Owns no state: the backends, the checker and the metrics are the
//! loop's. Everything that can refuse an order is checked before anything
//! changes, so a refused order leaves the worker as it was.

use std::time::Instant;

use sozu_command_lib::command::{self, AddBackend, Cluster, RemoveBackend};

use super::{io_context, Server};
use crate::backends::{BackendId, ClusterId};
use crate::health::prober::backend_health;
use crate::health::HealthConfig;
use crate::load_balancing::Algorithm;
use crate::metrics::Scope;
use crate::udp::{IoContext, UdpError};

impl Server {
    /// Adds or reconfigures a cluster: balancing algorithm, health checks
    /// and fail-open, then its UDP knobs (new flows only).
    pub(super) fn set_cluster(&mut self, now: Instant, cluster: &Cluster) -> Result<(), UdpError> {
        // Every knob, the health block and the algorithm, before any change.
        crate::udp::shell::check_cluster(cluster)?;
        let health = match cluster.udp.as_ref().and_then(|u| u.health.as_ref()) {
            Some(wire) => HealthConfig::try_from(wire).map_err(|source| UdpError::Health {
                cluster: cluster.cluster_id.clone(),
                source,
            })?,
            None => HealthConfig::default(),
        };
        let algorithm = command::LoadBalancingAlgorithms::try_from(cluster.load_balancing)
            .map(Algorithm::from)
            .map_err(|_| UdpError::InvalidValue {
                field: "load_balancing",
                value: cluster.load_balancing.to_string(),
                reason: "unknown algorithm",
            })?;
        let id = cluster.cluster_id.as_str();
        self.backends.set_algorithm(id, algorithm);
        self.backends.set_fail_open(id, health.fail_open);
        self.health.configure(now, ClusterId::from(id), health);
        let mut ctx = io_context!(self);
        self.udp.set_cluster(now, cluster, &mut ctx)
    }

    /// Removes a cluster: its backends and their probes go away, UDP flows
    /// to them close (unless the cluster kept them), its metrics go.
    pub(super) fn remove_cluster(&mut self, now: Instant, cluster_id: &str) {
        let removed = self.backends.remove_cluster(cluster_id);
        self.health.remove_cluster(cluster_id);
        let mut ctx = io_context!(self);
        self.udp.remove_cluster(now, cluster_id, &removed, &mut ctx);
        self.metrics
            .remove_scope(&Scope::Cluster(ClusterId::from(cluster_id)));
    }

    /// Adds (or updates) a backend and starts probing it.
    pub(super) fn add_backend(&mut self, now: Instant, order: &AddBackend) -> Result<(), UdpError> {
        self.udp.check_backend(order)?;
        self.backends.add_from_order(order)?;
        let address = super::orders::wire(&order.address)?;
        let cluster = ClusterId::from(order.cluster_id.as_str());
        let backend = BackendId::from(order.backend_id.as_str());
        self.health
            .add_backend(now, cluster.clone(), backend.clone(), address);
        // `udp.backend.up` exists from the backend's first moment, at what
        // the checker believes (up until `fall` failures), not only after a
        // first transition.
        let up = self
            .health
            .is_up(cluster.as_str(), backend.as_str())
            .unwrap_or(true);
        backend_health(&mut self.metrics, &cluster, &backend, up);
        self.udp.backend_added(&cluster, &backend);
        Ok(())
    }

    /// Removes a backend and its probes; UDP flows to it close unless the
    /// cluster keeps them.
    pub(super) fn remove_backend(
        &mut self,
        now: Instant,
        order: &RemoveBackend,
    ) -> Result<(), UdpError> {
        self.backends.remove_from_order(order)?;
        self.health
            .remove_backend(&order.cluster_id, &order.backend_id);
        let mut ctx = io_context!(self);
        self.udp.remove_backend(now, order, &mut ctx);
        Ok(())
    }
}
