//! `ConfigState`: the state that orders build. The master keeps one (the
//! truth it answers queries from and saves), and so does every worker.
//!
//! [`ConfigState::dispatch`] applies a state-changing order or refuses it with
//! a typed [`StateError`] and leaves the state unchanged; other orders are
//! reported as [`DispatchOutcome::NotAStateChange`]. The state never does I/O
//! except in [`file`] (state files), and never acts on sockets: workers act on
//! an order after their state accepted it.
//!
//! One file per object kind ([`listeners`], [`clusters`], [`backends`],
//! [`frontends`], [`https`] for HTTPS listeners, frontends and
//! certificates); [`diff`] turns one state into another (for `reload`) and
//! rebuilds a state from empty; [`queries`] answers the list / query orders;
//! [`undo`] takes one accepted order back at the cost of that order.
//!
//! Consistency kept by every order: a frontend always has its listener and
//! its cluster; a backend always has its cluster. Removing a listener or a
//! cluster removes what depends on it (see the per-kind modules).

mod backends;
mod clusters;
mod diff;
mod error;
pub mod file;
mod frontends;
mod https;
mod listeners;
mod queries;
mod undo;
mod validation;

#[cfg(test)]
mod https_tests;
#[cfg(test)]
mod property_tests;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::certificate::Fingerprint;
use crate::command::request::RequestType;
use crate::command::{
    AddBackend, Cluster, HttpListenerConfig, HttpsListenerConfig, Request, RequestHttpFrontend,
    RequestTcpFrontend, RequestUdpFrontend, TcpListenerConfig, UdpListenerConfig,
};

pub use error::{ListenerKind, StateError};
pub use file::StateFileError;
pub use frontends::HttpRoute;
/// The listener patches, shared with the worker so an update order changes a
/// listener's configuration the same way in the state and in the proxy.
pub use listeners::{
    patch_http as patch_http_listener, patch_tcp as patch_tcp_listener,
    patch_udp as patch_udp_listener,
};
pub use undo::{whole_state_snapshots, Undo};

/// The Sōzu 2.1 orders no worker of this proxy serves (HTTP health checks,
/// per-IP connection limits…; see doc/protocol.md), as a pattern: the state
/// leaves them alone and a worker refuses them by name. One list for both.
#[macro_export]
macro_rules! unserved_orders {
    () => {
        $crate::command::request::RequestType::LaunchWorker(_)
            | $crate::command::request::RequestType::SubscribeEvents(_)
            | $crate::command::request::RequestType::QueryClustersByDomain(_)
            | $crate::command::request::RequestType::QueryClustersHashes(_)
            | $crate::command::request::RequestType::QueryCertificatesFromTheState(_)
            | $crate::command::request::RequestType::CountRequests(_)
            | $crate::command::request::RequestType::SetMaxConnectionsPerIp(_)
            | $crate::command::request::RequestType::QueryMaxConnectionsPerIp(_)
            | $crate::command::request::RequestType::SetHealthCheck(_)
            | $crate::command::request::RequestType::RemoveHealthCheck(_)
            | $crate::command::request::RequestType::QueryHealthChecks(_)
            | $crate::command::request::RequestType::SetMetricDetail(_)
    };
}

/// What [`ConfigState::dispatch`] did with an order it accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DispatchOutcome {
    /// The order was applied to the state.
    Applied,
    /// The order does not change the state (status, list, query, metrics,
    /// stop, save/load, upgrade, socket passing); the state is untouched and
    /// the caller handles the order itself.
    NotAStateChange,
}

/// An order of a sequence that the state refused (see
/// [`ConfigState::from_requests`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("order #{index} ({order}) refused: {source}")]
pub struct OrderRefused {
    /// The order's 0-based position in the sequence.
    pub index: usize,
    /// The order's protocol name (`add_backend`…).
    pub order: &'static str,
    /// Why the state refused it.
    #[source]
    pub source: StateError,
}

/// The proxy configuration built by orders.
///
/// Maps are `BTreeMap`s so iteration (and thus [`ConfigState::generate_requests`],
/// diffs and state files) is deterministic, and two states built by
/// different histories compare equal when they hold the same objects.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConfigState {
    udp_listeners: BTreeMap<SocketAddr, UdpListenerConfig>,
    tcp_listeners: BTreeMap<SocketAddr, TcpListenerConfig>,
    http_listeners: BTreeMap<SocketAddr, HttpListenerConfig>,
    clusters: BTreeMap<String, Cluster>,
    /// cluster id → backend id → backend; a cluster without backends has no
    /// entry.
    backends: BTreeMap<String, BTreeMap<String, AddBackend>>,
    /// UDP listener address → its one frontend.
    udp_frontends: BTreeMap<SocketAddr, RequestUdpFrontend>,
    /// TCP listener address → its one frontend.
    tcp_frontends: BTreeMap<SocketAddr, RequestTcpFrontend>,
    http_frontends: BTreeMap<HttpRoute, RequestHttpFrontend>,
    https_listeners: BTreeMap<SocketAddr, HttpsListenerConfig>,
    https_frontends: BTreeMap<HttpRoute, RequestHttpFrontend>,
    /// HTTPS listener address → fingerprint → certificate; a listener
    /// without certificates has no entry.
    certificates: BTreeMap<SocketAddr, BTreeMap<Fingerprint, https::StoredCertificate>>,
}

impl ConfigState {
    /// An empty state.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies `request` if it changes the state, refuses it with a
    /// [`StateError`] (state unchanged), or reports that it is not a state
    /// change.
    pub fn dispatch(&mut self, request: &Request) -> Result<DispatchOutcome, StateError> {
        let Some(request_type) = &request.request_type else {
            return Err(StateError::InvalidValue {
                field: "request_type",
                value: "none".to_owned(),
                reason: "the request carries no order",
            });
        };
        let result = match request_type {
            RequestType::AddUdpListener(c) => self.add_udp_listener(c),
            RequestType::AddTcpListener(c) => self.add_tcp_listener(c),
            RequestType::AddHttpListener(c) => self.add_http_listener(c),
            RequestType::UpdateUdpListener(u) => self.update_udp_listener(u),
            RequestType::UpdateTcpListener(u) => self.update_tcp_listener(u),
            RequestType::UpdateHttpListener(u) => self.update_http_listener(u),
            RequestType::RemoveListener(r) => self.remove_listener(r),
            RequestType::ActivateListener(a) => self.activate_listener(a),
            RequestType::DeactivateListener(d) => self.deactivate_listener(d),
            RequestType::AddCluster(c) => self.add_cluster(c),
            RequestType::RemoveCluster(id) => self.remove_cluster(id),
            RequestType::AddBackend(b) => self.add_backend(b),
            RequestType::RemoveBackend(b) => self.remove_backend(b),
            RequestType::AddUdpFrontend(f) => self.add_udp_frontend(f),
            RequestType::RemoveUdpFrontend(f) => self.remove_udp_frontend(f),
            RequestType::AddTcpFrontend(f) => self.add_tcp_frontend(f),
            RequestType::RemoveTcpFrontend(f) => self.remove_tcp_frontend(f),
            RequestType::AddHttpFrontend(f) => self.add_http_frontend(f),
            RequestType::RemoveHttpFrontend(f) => self.remove_http_frontend(f),
            RequestType::AddHttpsListener(c) => self.add_https_listener(c),
            RequestType::UpdateHttpsListener(u) => self.update_https_listener(u),
            RequestType::AddHttpsFrontend(f) => self.add_https_frontend(f),
            RequestType::RemoveHttpsFrontend(f) => self.remove_https_frontend(f),
            RequestType::AddCertificate(c) => self.add_certificate(c),
            RequestType::ReplaceCertificate(c) => self.replace_certificate(c),
            RequestType::RemoveCertificate(c) => self.remove_certificate(c),
            RequestType::SaveState(_)
            | RequestType::LoadState(_)
            | RequestType::ListWorkers(_)
            | RequestType::ListFrontends(_)
            | RequestType::ListListeners(_)
            | RequestType::UpgradeMain(_)
            | RequestType::UpgradeWorker(_)
            | RequestType::ReloadConfiguration(_)
            | RequestType::PreviewReload(_)
            | RequestType::Status(_)
            | RequestType::QueryClusterById(_)
            | RequestType::QueryMetrics(_)
            | RequestType::SoftStop(_)
            | RequestType::HardStop(_)
            | RequestType::ListClusters(_)
            | RequestType::ReturnListenSockets(_)
            | RequestType::AdoptListenSockets(_)
            | RequestType::ReturnFlows(_)
            | RequestType::AdoptFlows(_)
            | RequestType::CheckState(_) => return Ok(DispatchOutcome::NotAStateChange),
            // Sōzu 2.1 orders this proxy answers without a state change, or
            // refuses by name (HTTP health checks, per-IP limits…; see
            // doc/protocol.md): the master decides, the state is untouched.
            crate::unserved_orders!()
            | RequestType::ConfigureMetrics(_)
            | RequestType::Logging(_)
            | RequestType::QueryCertificatesFromWorkers(_) => {
                return Ok(DispatchOutcome::NotAStateChange)
            }
        };
        match &result {
            Ok(()) => tracing::debug!(order = order_name(request_type), "state order applied"),
            Err(error) => {
                tracing::debug!(order = order_name(request_type), %error, "state order refused")
            }
        }
        #[cfg(debug_assertions)]
        if self.invariants_due() {
            self.check_invariants();
        }
        result.map(|()| DispatchOutcome::Applied)
    }

    /// Whether to run [`ConfigState::check_invariants`] after this order.
    /// The check walks the whole state, so running it after every order
    /// would make a debug build's replay of n orders O(n²) by itself: a
    /// small state (up to 1,024 objects per kind) is checked after every
    /// order, a larger one after every 256th order on this thread.
    #[cfg(debug_assertions)]
    fn invariants_due(&self) -> bool {
        thread_local! {
            static ORDERS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
        }
        let count = ORDERS.with(|n| {
            n.set(n.get().wrapping_add(1));
            n.get()
        });
        let largest = [
            self.udp_listeners.len(),
            self.tcp_listeners.len(),
            self.http_listeners.len(),
            self.https_listeners.len(),
            self.clusters.len(),
            self.backends.len(),
            self.udp_frontends.len(),
            self.tcp_frontends.len(),
            self.http_frontends.len(),
            self.https_frontends.len(),
            self.certificates.len(),
        ]
        .into_iter()
        .max()
        .unwrap_or(0);
        largest <= 1_024 || count.is_multiple_of(256)
    }

    /// The consistency every order keeps: objects are keyed by what they
    /// hold, frontends have their listener and cluster, backends their
    /// cluster, and no cluster has an empty backend map.
    #[cfg(debug_assertions)]
    fn check_invariants(&self) {
        let keyed_by = |key: &SocketAddr, wire: &crate::command::SocketAddress| {
            SocketAddr::try_from(wire).ok() == Some(*key)
        };
        assert!(
            self.udp_listeners
                .iter()
                .all(|(a, l)| keyed_by(a, &l.address)),
            "UDP listeners are keyed by their address"
        );
        assert!(
            self.tcp_listeners
                .iter()
                .all(|(a, l)| keyed_by(a, &l.address)),
            "TCP listeners are keyed by their address"
        );
        assert!(
            self.http_listeners
                .iter()
                .all(|(a, l)| keyed_by(a, &l.address)),
            "HTTP listeners are keyed by their address"
        );
        for (address, frontend) in &self.udp_frontends {
            assert!(
                keyed_by(address, &frontend.address),
                "a UDP frontend is keyed by its address"
            );
            assert!(
                self.udp_listeners.contains_key(address),
                "a UDP frontend has its listener"
            );
            assert!(
                self.clusters.contains_key(&frontend.cluster_id),
                "a UDP frontend has its cluster"
            );
        }
        for (address, frontend) in &self.tcp_frontends {
            assert!(
                keyed_by(address, &frontend.address),
                "a TCP frontend is keyed by its address"
            );
            assert!(
                self.tcp_listeners.contains_key(address),
                "a TCP frontend has its listener"
            );
            assert!(
                self.clusters.contains_key(&frontend.cluster_id),
                "a TCP frontend has its cluster"
            );
        }
        for (route, frontend) in &self.http_frontends {
            assert!(
                keyed_by(&route.address, &frontend.address),
                "an HTTP frontend is keyed by its address"
            );
            assert!(
                self.http_listeners.contains_key(&route.address),
                "an HTTP frontend has its listener"
            );
            assert!(
                frontend
                    .cluster_id
                    .as_ref()
                    .is_none_or(|id| self.clusters.contains_key(id)),
                "an HTTP frontend has its cluster"
            );
        }
        for (route, frontend) in &self.https_frontends {
            assert!(
                keyed_by(&route.address, &frontend.address)
                    && self.https_listeners.contains_key(&route.address),
                "an HTTPS frontend is keyed by its address and has its listener"
            );
        }
        for (address, certificates) in &self.certificates {
            assert!(
                self.https_listeners.contains_key(address) && !certificates.is_empty(),
                "certificates have their HTTPS listener, and no listener has an empty map"
            );
        }
        for (cluster_id, backends) in &self.backends {
            assert!(
                self.clusters.contains_key(cluster_id),
                "backends have their cluster"
            );
            assert!(
                !backends.is_empty(),
                "a cluster without backends has no backend map"
            );
            assert!(
                backends
                    .iter()
                    .all(|(id, b)| *id == b.backend_id && b.cluster_id == *cluster_id),
                "backends are keyed by their cluster and id"
            );
        }
    }

    /// Builds a state by dispatching `requests` in order (e.g. the orders a
    /// configuration file produces). Orders that are not state changes are
    /// skipped; the first refusal stops the build.
    pub fn from_requests<'a>(
        requests: impl IntoIterator<Item = &'a Request>,
    ) -> Result<ConfigState, OrderRefused> {
        let mut state = ConfigState::new();
        for (index, request) in requests.into_iter().enumerate() {
            state.dispatch(request).map_err(|source| OrderRefused {
                index,
                order: request.request_type.as_ref().map_or("none", order_name),
                source,
            })?;
        }
        Ok(state)
    }

    /// Whether the state holds nothing at all.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Whether `request` is an order [`ConfigState::dispatch`] applies or
/// refuses (as opposed to a query or a process-level order, or no order).
pub fn is_state_change(request: &Request) -> bool {
    // Dispatching on a scratch state keeps the one exhaustive match in
    // `dispatch` the only place that classifies orders.
    request.request_type.is_some()
        && ConfigState::new().dispatch(request) != Ok(DispatchOutcome::NotAStateChange)
}

/// The order's name as written in the protocol (`add_udp_listener`…), for
/// logs and error messages.
pub fn order_name(request_type: &RequestType) -> &'static str {
    match request_type {
        RequestType::SaveState(_) => "save_state",
        RequestType::LoadState(_) => "load_state",
        RequestType::ListWorkers(_) => "list_workers",
        RequestType::ListFrontends(_) => "list_frontends",
        RequestType::ListListeners(_) => "list_listeners",
        RequestType::UpgradeMain(_) => "upgrade_main",
        RequestType::UpgradeWorker(_) => "upgrade_worker",
        RequestType::ReloadConfiguration(_) => "reload_configuration",
        RequestType::PreviewReload(_) => "preview_reload",
        RequestType::Status(_) => "status",
        RequestType::AddCluster(_) => "add_cluster",
        RequestType::RemoveCluster(_) => "remove_cluster",
        RequestType::AddHttpFrontend(_) => "add_http_frontend",
        RequestType::RemoveHttpFrontend(_) => "remove_http_frontend",
        RequestType::AddTcpFrontend(_) => "add_tcp_frontend",
        RequestType::RemoveTcpFrontend(_) => "remove_tcp_frontend",
        RequestType::AddBackend(_) => "add_backend",
        RequestType::RemoveBackend(_) => "remove_backend",
        RequestType::AddHttpListener(_) => "add_http_listener",
        RequestType::AddTcpListener(_) => "add_tcp_listener",
        RequestType::RemoveListener(_) => "remove_listener",
        RequestType::ActivateListener(_) => "activate_listener",
        RequestType::DeactivateListener(_) => "deactivate_listener",
        RequestType::QueryClusterById(_) => "query_cluster_by_id",
        RequestType::QueryMetrics(_) => "query_metrics",
        RequestType::SoftStop(_) => "soft_stop",
        RequestType::HardStop(_) => "hard_stop",
        RequestType::UpdateHttpListener(_) => "update_http_listener",
        RequestType::UpdateTcpListener(_) => "update_tcp_listener",
        RequestType::AddUdpListener(_) => "add_udp_listener",
        RequestType::UpdateUdpListener(_) => "update_udp_listener",
        RequestType::AddUdpFrontend(_) => "add_udp_frontend",
        RequestType::RemoveUdpFrontend(_) => "remove_udp_frontend",
        RequestType::ListClusters(_) => "list_clusters",
        RequestType::ReturnListenSockets(_) => "return_listen_sockets",
        RequestType::AdoptListenSockets(_) => "adopt_listen_sockets",
        RequestType::ReturnFlows(_) => "return_flows",
        RequestType::AdoptFlows(_) => "adopt_flows",
        RequestType::LaunchWorker(_) => "launch_worker",
        RequestType::SubscribeEvents(_) => "subscribe_events",
        RequestType::AddHttpsFrontend(_) => "add_https_frontend",
        RequestType::RemoveHttpsFrontend(_) => "remove_https_frontend",
        RequestType::AddCertificate(_) => "add_certificate",
        RequestType::ReplaceCertificate(_) => "replace_certificate",
        RequestType::RemoveCertificate(_) => "remove_certificate",
        RequestType::AddHttpsListener(_) => "add_https_listener",
        RequestType::QueryClustersByDomain(_) => "query_clusters_by_domain",
        RequestType::QueryClustersHashes(_) => "query_clusters_hashes",
        RequestType::ConfigureMetrics(_) => "configure_metrics",
        RequestType::Logging(_) => "logging",
        RequestType::QueryCertificatesFromTheState(_) => "query_certificates_from_the_state",
        RequestType::QueryCertificatesFromWorkers(_) => "query_certificates_from_workers",
        RequestType::CountRequests(_) => "count_requests",
        RequestType::UpdateHttpsListener(_) => "update_https_listener",
        RequestType::SetMaxConnectionsPerIp(_) => "set_max_connections_per_ip",
        RequestType::QueryMaxConnectionsPerIp(_) => "query_max_connections_per_ip",
        RequestType::SetHealthCheck(_) => "set_health_check",
        RequestType::RemoveHealthCheck(_) => "remove_health_check",
        RequestType::QueryHealthChecks(_) => "query_health_checks",
        RequestType::SetMetricDetail(_) => "set_metric_detail",
        RequestType::CheckState(_) => "check_state",
    }
}
