//! Backends of every cluster, their health status and active-flow counts,
//! and backend selection for new flows. Shared by UDP, TCP and HTTP.
//!
//! Owns the cluster id → [`BackendList`] map. It never touches sockets or
//! flows: removing a backend returns it so the caller closes (or keeps) its
//! flows, and health transitions come from `crate::health` through
//! [`BackendMap::set_status`]. Protobuf types appear only at the edge
//! ([`BackendMap::add_from_order`], [`BackendMap::remove_from_order`]).

mod list;

#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sozu_command_lib::command;
use sozu_command_lib::proto::convert::AddressError;
use sozu_command_lib::proto::weight::effective_weight;

use crate::load_balancing::{mix64, stable_hash, Algorithm};
use crate::protocol::udp::{PendingQueries, QuicLbFallback, ServerId};

pub use crate::protocol::ids::{BackendId, ClusterId};
pub use list::{Backend, BackendList, BackendStatus, Upsert, DEFAULT_WEIGHT};

/// A bad backend order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// The order names a cluster that has no backends.
    #[error("unknown cluster {cluster:?}")]
    UnknownCluster {
        /// The cluster the order named.
        cluster: String,
    },
    /// The order names a backend the cluster does not have.
    #[error("cluster {cluster:?} has no backend {backend:?}")]
    UnknownBackend {
        /// The cluster the order named.
        cluster: String,
        /// The backend the order named.
        backend: String,
    },
    /// The backend exists but at another address than the order says.
    #[error("backend {backend:?} of cluster {cluster:?} is at {actual}, not {address}")]
    AddressMismatch {
        /// The cluster the order named.
        cluster: String,
        /// The backend the order named.
        backend: String,
        /// The address the order said.
        address: SocketAddr,
        /// The backend's address.
        actual: SocketAddr,
    },
    /// The order's QUIC-LB server ID is empty or longer than 15 octets.
    #[error(
        "backend {backend:?} of cluster {cluster:?}: quic_lb_server_id of {len} octets (1 to 15)"
    )]
    QuicLbServerIdLength {
        /// The cluster the order named.
        cluster: String,
        /// The backend the order named.
        backend: String,
        /// Its length.
        len: usize,
    },
    /// Another backend of the cluster has this QUIC-LB server ID.
    #[error("backend {backend:?} of cluster {cluster:?}: quic_lb_server_id {server_id} is already backend {other:?}'s")]
    QuicLbServerIdTaken {
        /// The cluster the order named.
        cluster: String,
        /// The backend the order named.
        backend: String,
        /// The server ID (hex).
        server_id: String,
        /// The backend that has it.
        other: String,
    },
    /// The order's address is not a socket address.
    #[error("backend {backend:?} of cluster {cluster:?}: invalid address")]
    InvalidAddress {
        /// The cluster the order named.
        cluster: String,
        /// The backend the order named.
        backend: String,
        /// Why it is not an address.
        #[source]
        source: AddressError,
    },
}

/// How long a backend that refused traffic (ECONNREFUSED) stays suspect,
/// i.e. out of selection while another backend is up, before it is tried
/// again. Health checks, when configured, decide sooner.
pub const SUSPECT_COOLDOWN: Duration = Duration::from_secs(10);

/// Every cluster's backends.
#[derive(Debug, Clone)]
pub struct BackendMap {
    clusters: HashMap<ClusterId, BackendList>,
    /// Clusters whose list a mutation left stale since the last
    /// [`BackendMap::refresh`].
    stale: HashSet<ClusterId>,
    seed: u64,
    /// The caller's clock, given by [`BackendMap::set_now`] (this module
    /// never reads one): stamps and expires suspicions.
    now: Option<Instant>,
}

impl BackendMap {
    /// An empty map; each cluster's RANDOM / POWER_OF_TWO generator is seeded
    /// from `seed` and the cluster id, so a run is reproducible.
    pub fn new(seed: u64) -> Self {
        BackendMap {
            clusters: HashMap::new(),
            stale: HashSet::new(),
            seed,
            now: None,
        }
    }

    /// Tells the map what time it is (the worker calls this once per
    /// wake-up): suspicions are stamped and expired against it.
    pub fn set_now(&mut self, now: Instant) {
        self.now = Some(now);
    }

    /// Rebuilds the selection tables of every list changed since the last
    /// call, once each however many orders changed it: the worker calls
    /// this after each batch of orders (and each wake-up), so applying n
    /// backend orders costs O(n), not a rebuild per order, and a pick finds
    /// its tables built. Costs nothing when nothing changed.
    pub fn refresh(&mut self) {
        // An empty set still has the capacity of its largest batch:
        // draining it would scan that capacity on every wake-up.
        if self.stale.is_empty() {
            return;
        }
        for id in self.stale.drain() {
            if let Some(list) = self.clusters.get_mut(&id) {
                list.refresh();
            }
        }
    }

    /// Notes that a mutation may have left `cluster`'s list stale.
    fn note_stale(&mut self, cluster: &str) {
        if let Some((id, list)) = self.clusters.get_key_value(cluster) {
            if list.is_stale() && !self.stale.contains(cluster) {
                self.stale.insert(id.clone());
            }
        }
    }

    /// The cluster's list, created empty (ROUND_ROBIN, fail-open) if absent.
    pub fn ensure_cluster(&mut self, cluster: &str) -> &mut BackendList {
        if !self.clusters.contains_key(cluster) {
            let seed = mix64(self.seed ^ stable_hash(cluster.as_bytes()));
            self.clusters.insert(
                ClusterId::from(cluster),
                BackendList::new(Algorithm::default(), seed),
            );
        }
        self.clusters
            .get_mut(cluster)
            .expect("invariant: the cluster was inserted just above")
    }

    /// The cluster's list, if it has one.
    pub fn cluster(&self, cluster: &str) -> Option<&BackendList> {
        self.clusters.get(cluster)
    }

    /// Ids of the clusters that have a list.
    pub fn cluster_ids(&self) -> impl Iterator<Item = &ClusterId> {
        self.clusters.keys()
    }

    /// Sets a cluster's algorithm (creating its list if needed).
    pub fn set_algorithm(&mut self, cluster: &str, algorithm: Algorithm) {
        self.ensure_cluster(cluster).set_algorithm(algorithm);
        self.note_stale(cluster);
    }

    /// Sets what a cluster does when all its backends are down.
    pub fn set_fail_open(&mut self, cluster: &str, fail_open: bool) {
        self.ensure_cluster(cluster).set_fail_open(fail_open);
        self.note_stale(cluster);
    }

    /// Adds a primary backend (or updates the one with the same id).
    pub fn add_backend(
        &mut self,
        cluster: &str,
        backend: BackendId,
        address: SocketAddr,
        weight: u32,
    ) -> Upsert {
        self.add_backend_with_role(cluster, backend, address, weight, false)
    }

    /// Adds a backend (or updates the one with the same id); a `backup`
    /// one gets new flows only while no primary of the cluster is
    /// available (removed, down or suspect).
    pub fn add_backend_with_role(
        &mut self,
        cluster: &str,
        backend: BackendId,
        address: SocketAddr,
        weight: u32,
        backup: bool,
    ) -> Upsert {
        let outcome =
            self.ensure_cluster(cluster)
                .upsert_with_role(backend.clone(), address, weight, backup);
        self.note_stale(cluster);
        tracing::debug!(cluster, backend = %backend, %address, weight, backup, ?outcome, "backend added");
        outcome
    }

    /// Applies an `AddBackend` order. Its weight follows Sōzu's rule
    /// ([`sozu_command_lib::proto::weight`]: none → [`DEFAULT_WEIGHT`], 0 or
    /// less → 1); `backup` (absent: false) makes it a backup; `sticky_id` is
    /// accepted and unused.
    pub fn add_from_order(&mut self, order: &command::AddBackend) -> Result<Upsert, BackendError> {
        let address = SocketAddr::try_from(&order.address).map_err(|source| {
            BackendError::InvalidAddress {
                cluster: order.cluster_id.clone(),
                backend: order.backend_id.clone(),
                source,
            }
        })?;
        let server_id = self.check_server_id(order)?;
        // Sōzu's weight rule: none → 100, 0 or less → 1.
        let weight = effective_weight(order.load_balancing_parameters.as_ref());
        let outcome = self.add_backend_with_role(
            &order.cluster_id,
            BackendId::from(order.backend_id.as_str()),
            address,
            weight,
            order.backup.unwrap_or(false),
        );
        self.ensure_cluster(&order.cluster_id)
            .set_quic_lb_server_id(&order.backend_id, server_id);
        Ok(outcome)
    }

    /// The order's QUIC-LB server ID: 1 to 15 octets, no other backend of
    /// the cluster has it.
    fn check_server_id(
        &self,
        order: &command::AddBackend,
    ) -> Result<Option<ServerId>, BackendError> {
        let Some(raw) = order.quic_lb_server_id.as_deref() else {
            return Ok(None);
        };
        let server_id = ServerId::new(raw).ok_or_else(|| BackendError::QuicLbServerIdLength {
            cluster: order.cluster_id.clone(),
            backend: order.backend_id.clone(),
            len: raw.len(),
        })?;
        let other = self
            .clusters
            .get(order.cluster_id.as_str())
            .and_then(|list| list.by_server_id(&server_id))
            .filter(|b| b.id().as_str() != order.backend_id);
        if let Some(other) = other {
            return Err(BackendError::QuicLbServerIdTaken {
                cluster: order.cluster_id.clone(),
                backend: order.backend_id.clone(),
                server_id: server_id.to_string(),
                other: other.id().to_string(),
            });
        }
        Ok(Some(server_id))
    }

    /// The backend of `cluster` with this QUIC-LB server ID, unless it is
    /// down: `Err(ServerDown)` then, `Err(UnknownServerId)` if none has it.
    pub fn select_by_server_id(
        &self,
        cluster: &str,
        server_id: &ServerId,
    ) -> Result<(BackendId, SocketAddr), QuicLbFallback> {
        let backend = self
            .clusters
            .get(cluster)
            .and_then(|list| list.by_server_id(server_id))
            .ok_or(QuicLbFallback::UnknownServerId)?;
        if backend.status() == BackendStatus::Down {
            return Err(QuicLbFallback::ServerDown);
        }
        Ok((backend.id().clone(), backend.address()))
    }

    /// Removes a backend and returns it (with its active-flow count) so the
    /// caller closes its flows with reason BackendRemoved, or keeps them.
    pub fn remove_backend(
        &mut self,
        cluster: &str,
        backend: &str,
    ) -> Result<Backend, BackendError> {
        let list = self
            .clusters
            .get_mut(cluster)
            .ok_or_else(|| BackendError::UnknownCluster {
                cluster: cluster.to_owned(),
            })?;
        let removed = list
            .remove(backend)
            .ok_or_else(|| BackendError::UnknownBackend {
                cluster: cluster.to_owned(),
                backend: backend.to_owned(),
            })?;
        self.note_stale(cluster);
        tracing::debug!(
            cluster,
            backend,
            flows = removed.active_flows(),
            "backend removed"
        );
        Ok(removed)
    }

    /// Applies a `RemoveBackend` order: the backend must match id and address.
    pub fn remove_from_order(
        &mut self,
        order: &command::RemoveBackend,
    ) -> Result<Backend, BackendError> {
        let address = SocketAddr::try_from(&order.address).map_err(|source| {
            BackendError::InvalidAddress {
                cluster: order.cluster_id.clone(),
                backend: order.backend_id.clone(),
                source,
            }
        })?;
        let actual = self
            .clusters
            .get(order.cluster_id.as_str())
            .and_then(|list| list.get(&order.backend_id))
            .map(Backend::address);
        match actual {
            None => {
                return Err(BackendError::UnknownBackend {
                    cluster: order.cluster_id.clone(),
                    backend: order.backend_id.clone(),
                })
            }
            Some(actual) if actual != address => {
                return Err(BackendError::AddressMismatch {
                    cluster: order.cluster_id.clone(),
                    backend: order.backend_id.clone(),
                    address,
                    actual,
                })
            }
            Some(_) => {}
        }
        self.remove_backend(&order.cluster_id, &order.backend_id)
    }

    /// Removes a cluster's list and returns its backends (their flows must
    /// be closed by the caller). Empty if the cluster had none.
    pub fn remove_cluster(&mut self, cluster: &str) -> Vec<Backend> {
        self.stale.remove(cluster);
        self.clusters
            .remove(cluster)
            .map(|mut list| list.drain())
            .unwrap_or_default()
    }

    /// Chooses a backend for a new flow of `cluster`.
    ///
    /// Prefers up primaries, then up backups, then suspect primaries, then
    /// suspect backups; skips down backends; when all are down, balances
    /// over the primaries (all backends if none is a primary) if the
    /// cluster fails open, else returns `None` (drop with NoBackend).
    /// Does not count the flow: call [`flow_opened`](Self::flow_opened) once
    /// the flow exists. No allocation (the id is an `Arc` clone).
    pub fn select(&mut self, cluster: &str, affinity_hash: u64) -> Option<(BackendId, SocketAddr)> {
        let backend = self.pick(cluster, affinity_hash)?;
        Some((backend.id().clone(), backend.address()))
    }

    /// Chooses a backend for one `DNS_ID` query of `cluster`, as
    /// [`select`](Self::select), with the handle of its pending-query count
    /// (the DNS mux moves it: a load for LEAST_LOADED / POWER_OF_TWO). No
    /// allocation (`Arc` clones).
    pub fn select_for_query(
        &mut self,
        cluster: &str,
        affinity_hash: u64,
    ) -> Option<(BackendId, SocketAddr, PendingQueries)> {
        let backend = self.pick(cluster, affinity_hash)?;
        Some((
            backend.id().clone(),
            backend.address(),
            backend.pending_queries_handle().clone(),
        ))
    }

    fn pick(&mut self, cluster: &str, affinity_hash: u64) -> Option<&Backend> {
        let list = self.clusters.get_mut(cluster)?;
        // The suspect count is the last refresh's.
        list.refresh();
        if let (true, Some(now)) = (list.has_suspects(), self.now) {
            list.expire_suspicions(now);
        }
        list.select(affinity_hash)
    }

    /// Counts a new flow on a backend (for LEAST_LOADED / POWER_OF_TWO).
    /// `false` if the cluster or backend is unknown.
    pub fn flow_opened(&mut self, cluster: &str, backend: &str) -> bool {
        self.clusters
            .get_mut(cluster)
            .is_some_and(|list| list.flow_opened(backend))
    }

    /// Counts a closed flow. `false` if the backend is gone (a kept flow of
    /// a removed backend), which is not an error.
    pub fn flow_closed(&mut self, cluster: &str, backend: &str) -> bool {
        self.clusters
            .get_mut(cluster)
            .is_some_and(|list| list.flow_closed(backend))
    }

    /// Sets a backend's status (from a health event). `Some(previous)` when
    /// it changed; `None` when unchanged or unknown.
    pub fn set_status(
        &mut self,
        cluster: &str,
        backend: &str,
        status: BackendStatus,
    ) -> Option<BackendStatus> {
        let previous = self
            .clusters
            .get_mut(cluster)?
            .set_status(backend, status)?;
        self.note_stale(cluster);
        tracing::info!(
            cluster,
            backend,
            from = previous.as_str(),
            to = status.as_str(),
            "backend status"
        );
        Some(previous)
    }

    /// Records a passive failure (the backend refused a datagram:
    /// ECONNREFUSED). An up backend becomes [`BackendStatus::Suspect`] for
    /// [`SUSPECT_COOLDOWN`] (no new flows while another backend is up); a
    /// suspect one has its suspicion extended; a down one stays down.
    /// Returns `true` when the backend is known, i.e. when the caller should
    /// also report the failure to the health checker
    /// (`HealthChecker::passive_failure`), which counts it toward `fall`.
    pub fn mark_suspect(&mut self, cluster: &str, backend: &str) -> bool {
        let Some(list) = self.clusters.get_mut(cluster) else {
            return false;
        };
        if list.get(backend).is_none() {
            return false;
        }
        // Without a clock yet (never in a running worker) the suspicion
        // lasts until the backend answers or a health check decides.
        let until = self.now.map(|now| now + SUSPECT_COOLDOWN);
        if list.suspect(backend, until) {
            tracing::debug!(cluster, backend, "backend suspect");
        }
        self.note_stale(cluster);
        true
    }

    /// Clears a suspicion once the backend answered (a suspect backend goes
    /// back up; a down one waits for its health check). `true` if it changed.
    pub fn mark_responsive(&mut self, cluster: &str, backend: &str) -> bool {
        let Some(list) = self.clusters.get_mut(cluster) else {
            return false;
        };
        if list.get(backend).map(Backend::status) == Some(BackendStatus::Suspect) {
            list.set_status(backend, BackendStatus::Up);
            self.note_stale(cluster);
            return true;
        }
        false
    }
}
