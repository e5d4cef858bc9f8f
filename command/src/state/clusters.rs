//! Cluster orders: add (or replace) and remove.
//!
//! `add_cluster` on an id that exists replaces that cluster's configuration
//! (load balancing, UDP knobs…) and keeps its backends and frontends: this is
//! how knobs are changed at runtime. `remove_cluster` cascades: the cluster's
//! frontends (UDP, TCP, HTTP) and backends go with it, so no frontend ever
//! points to a missing cluster.

use crate::command::{
    Cluster, LoadBalancingAlgorithms, LoadMetric, ProxyProtocolConfig, UdpAffinityKey,
    UdpClusterConfig, UdpFlowKey, UdpHealthMode,
};
use crate::state::{validation, ConfigState, StateError};

fn non_zero(
    field: &'static str,
    value: Option<u32>,
    reason: &'static str,
) -> Result<(), StateError> {
    if value == Some(0) {
        return Err(StateError::InvalidValue {
            field,
            value: "0".to_owned(),
            reason,
        });
    }
    Ok(())
}

fn check_udp_knobs(udp: &UdpClusterConfig) -> Result<(), StateError> {
    validation::optional_enum::<UdpAffinityKey>("udp.affinity_key", udp.affinity_key)?;
    validation::optional_enum::<UdpFlowKey>("udp.flow_key", udp.flow_key)?;
    non_zero(
        "udp.max_pending_datagrams",
        udp.max_pending_datagrams,
        "a new flow must be able to hold at least its first datagram",
    )?;
    non_zero(
        "udp.max_pending_bytes",
        udp.max_pending_bytes,
        "a new flow must be able to hold at least its first datagram",
    )?;
    if let Some(health) = &udp.health {
        validation::optional_enum::<UdpHealthMode>("udp.health.mode", health.mode)?;
        if let Some(port) = health.tcp_port {
            validation::port("udp.health.tcp_port", port)?;
        }
        let at_least_one = "must be at least 1";
        non_zero("udp.health.rise", health.rise, at_least_one)?;
        non_zero("udp.health.fall", health.fall, at_least_one)?;
        non_zero(
            "udp.health.probe_interval_seconds",
            health.probe_interval_seconds,
            at_least_one,
        )?;
        non_zero(
            "udp.health.probe_timeout_seconds",
            health.probe_timeout_seconds,
            at_least_one,
        )?;
    }
    Ok(())
}

/// Checks every field of a cluster order.
fn check_cluster(cluster: &Cluster) -> Result<(), StateError> {
    validation::id("cluster_id", &cluster.cluster_id)?;
    validation::known_enum::<LoadBalancingAlgorithms>("load_balancing", cluster.load_balancing)?;
    validation::optional_enum::<ProxyProtocolConfig>("proxy_protocol", cluster.proxy_protocol)?;
    validation::optional_enum::<LoadMetric>("load_metric", cluster.load_metric)?;
    if let Some(port) = cluster.https_redirect_port {
        validation::port("https_redirect_port", port)?;
    }
    if let Some(udp) = &cluster.udp {
        check_udp_knobs(udp)?;
    }
    Ok(())
}

impl ConfigState {
    /// Adds the cluster, or replaces the configuration of the cluster with
    /// that id (keeping its backends and frontends).
    pub(super) fn add_cluster(&mut self, cluster: &Cluster) -> Result<(), StateError> {
        check_cluster(cluster)?;
        self.clusters
            .insert(cluster.cluster_id.clone(), cluster.clone());
        Ok(())
    }

    /// Removes the cluster with its frontends and backends.
    pub(super) fn remove_cluster(&mut self, cluster_id: &str) -> Result<(), StateError> {
        if self.clusters.remove(cluster_id).is_none() {
            return Err(StateError::UnknownCluster {
                cluster_id: cluster_id.to_owned(),
            });
        }
        self.backends.remove(cluster_id);
        self.udp_frontends.retain(|_, f| f.cluster_id != cluster_id);
        self.tcp_frontends.retain(|_, f| f.cluster_id != cluster_id);
        self.http_frontends
            .retain(|_, f| f.cluster_id.as_deref() != Some(cluster_id));
        Ok(())
    }

    /// Refuses an order naming a cluster that does not exist.
    pub(super) fn require_cluster(&self, cluster_id: &str) -> Result<(), StateError> {
        if self.clusters.contains_key(cluster_id) {
            Ok(())
        } else {
            Err(StateError::UnknownCluster {
                cluster_id: cluster_id.to_owned(),
            })
        }
    }
}
