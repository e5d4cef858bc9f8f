//! Cluster and backend orders, for every protocol at once: balancing
//! algorithm, fail-open and health checks on the shared backends and
//! checker, then what the UDP shell keeps per cluster (its knobs, its
//! flows). The stream proxies' part follows in `streams.rs`.
//!
//! Owns no state: the backends, the checker and the metrics are the
//! loop's. Everything that can refuse an order is checked before anything
//! changes, so a refused order leaves the worker as it was. A refusal is a
//! [`ClusterOrderError`], whatever the protocols the cluster serves; only
//! its UDP knobs are refused by the UDP shell's own error.

use std::time::Instant;

use sozu_command_lib::command::{self, AddBackend, Cluster, RemoveBackend};
use sozu_command_lib::proto::convert::{wire_address, FieldAddressError};

use super::{io_context, Server};
use crate::backends::{BackendError, BackendId, ClusterId};
use crate::health::prober::backend_health;
use crate::health::{HealthConfig, HealthConfigError};
use crate::load_balancing::Algorithm;
use crate::metrics::Scope;
use crate::udp::{IoContext, UdpError};

/// A cluster or backend order a worker (or the master, before it changes
/// its state) refuses.
#[derive(Debug, thiserror::Error)]
pub enum ClusterOrderError {
    /// The cluster's UDP knobs.
    #[error(transparent)]
    Udp(#[from] UdpError),
    /// `load_balancing` names no algorithm.
    #[error("load_balancing = {0}: unknown algorithm")]
    Algorithm(i32),
    /// The cluster's health block is invalid.
    #[error("cluster {cluster}")]
    Health {
        /// The cluster.
        cluster: String,
        /// What is wrong in its health block.
        #[source]
        source: HealthConfigError,
    },
    /// A backend order could not be applied.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// A backend's address is not a socket address.
    #[error(transparent)]
    Address(#[from] FieldAddressError),
}

/// The cluster's health configuration and balancing algorithm, or why the
/// order is refused; its UDP knobs are checked too, so nothing is left to
/// refuse once this passes.
fn checked(cluster: &Cluster) -> Result<(HealthConfig, Algorithm), ClusterOrderError> {
    crate::udp::shell::check_cluster(cluster)?;
    let health = match cluster.udp.as_ref().and_then(|u| u.health.as_ref()) {
        Some(wire) => HealthConfig::try_from(wire).map_err(|source| ClusterOrderError::Health {
            cluster: cluster.cluster_id.clone(),
            source,
        })?,
        None => HealthConfig::default(),
    };
    let algorithm = command::LoadBalancingAlgorithms::try_from(cluster.load_balancing)
        .map(Algorithm::from)
        .map_err(|_| ClusterOrderError::Algorithm(cluster.load_balancing))?;
    Ok((health, algorithm))
}

/// What a cluster order may be refused for (UDP knobs, health block,
/// algorithm), checked without a worker: by the master before it changes
/// its state; the worker checks the same before it changes anything.
pub fn check_cluster(cluster: &Cluster) -> Result<(), ClusterOrderError> {
    checked(cluster).map(|_| ())
}

impl Server {
    /// Adds or reconfigures a cluster: balancing algorithm, health checks
    /// and fail-open, then its UDP knobs (new flows only).
    pub(super) fn set_cluster(
        &mut self,
        now: Instant,
        cluster: &Cluster,
    ) -> Result<(), ClusterOrderError> {
        // Every knob, the health block and the algorithm, before any change.
        let (health, algorithm) = checked(cluster)?;
        let id = cluster.cluster_id.as_str();
        self.backends.set_algorithm(id, algorithm);
        self.backends.set_fail_open(id, health.fail_open);
        self.health.configure(now, ClusterId::from(id), health);
        let mut ctx = io_context!(self);
        Ok(self.udp.set_cluster(now, cluster, &mut ctx)?)
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
    pub(super) fn add_backend(
        &mut self,
        now: Instant,
        order: &AddBackend,
    ) -> Result<(), ClusterOrderError> {
        self.udp.check_backend(order)?;
        self.backends.add_from_order(order)?;
        let address = wire_address("address", &order.address)?;
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
    ) -> Result<(), ClusterOrderError> {
        self.backends.remove_from_order(order)?;
        self.health
            .remove_backend(&order.cluster_id, &order.backend_id);
        let mut ctx = io_context!(self);
        self.udp.remove_backend(now, order, &mut ctx);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use sozu_command_lib::command::{Cluster, UdpClusterConfig, UdpHealthConfig};

    use super::{check_cluster, ClusterOrderError};

    /// The error and its sources, as a worker's answer spells them.
    fn answer(error: &ClusterOrderError) -> String {
        let mut text = error.to_string();
        let mut source = std::error::Error::source(error);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        text
    }

    #[test]
    fn a_cluster_order_is_refused_naming_the_field_and_value() {
        let plain = Cluster {
            cluster_id: "web".to_owned(),
            ..Default::default()
        };
        assert!(check_cluster(&plain).is_ok());

        let algorithm = Cluster {
            load_balancing: 99,
            ..plain.clone()
        };
        let error = check_cluster(&algorithm).expect_err("unknown algorithm");
        assert!(matches!(error, ClusterOrderError::Algorithm(99)));
        assert_eq!(answer(&error), "load_balancing = 99: unknown algorithm");

        let health = Cluster {
            udp: Some(UdpClusterConfig {
                health: Some(UdpHealthConfig {
                    rise: Some(0),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..plain.clone()
        };
        let error = check_cluster(&health).expect_err("rise = 0");
        assert_eq!(
            answer(&error),
            "cluster web: udp.health.rise: must be at least 1, got 0"
        );

        let knob = Cluster {
            udp: Some(UdpClusterConfig {
                affinity_key: Some(42),
                ..Default::default()
            }),
            ..plain
        };
        let error = check_cluster(&knob).expect_err("unknown affinity key");
        assert!(matches!(error, ClusterOrderError::Udp(_)), "{error:?}");
        assert!(answer(&error).contains("udp.affinity_key = 42"), "{error}");
    }
}
