//! Read-only views of the state: the answers to `list_listeners`,
//! `list_frontends`, `query_cluster_by_id`, `list_clusters`, and accessors the
//! master and workers use to find a listener, a cluster, its backends, or the
//! cluster a UDP/TCP listener forwards to.
//!
//! Nothing here mutates the state.

use std::net::SocketAddr;

use crate::command::{
    AddBackend, Cluster, ClusterInformation, ClusterInformations, FrontendFilters,
    HttpListenerConfig, ListedFrontends, ListenersList, RequestHttpFrontend, RequestTcpFrontend,
    RequestUdpFrontend, TcpListenerConfig, UdpListenerConfig,
};
use crate::state::ConfigState;

impl ConfigState {
    /// Every listener, keyed by its address as text (`127.0.0.1:53`,
    /// `[::1]:53`), as the `list_listeners` answer carries them.
    pub fn listeners_list(&self) -> ListenersList {
        ListenersList {
            http_listeners: self
                .http_listeners
                .iter()
                .map(|(addr, l)| (addr.to_string(), l.clone()))
                .collect(),
            https_listeners: Default::default(),
            tcp_listeners: self
                .tcp_listeners
                .iter()
                .map(|(a, l)| (a.to_string(), *l))
                .collect(),
            udp_listeners: self
                .udp_listeners
                .iter()
                .map(|(a, l)| (a.to_string(), *l))
                .collect(),
        }
    }

    /// The frontends selected by `filter`, as Sōzu answers `list_frontends`:
    /// with none of `http`/`https`/`tcp` set every protocol is listed
    /// (UDP included, since the filter has no UDP flag); `domain` keeps the
    /// HTTP frontends whose hostname contains it and leaves out the TCP and
    /// UDP frontends, which have no hostname.
    pub fn frontends(&self, filter: &FrontendFilters) -> ListedFrontends {
        let list_all = !filter.http && !filter.https && !filter.tcp;
        let domain = filter.domain.as_deref();
        let mut listed = ListedFrontends::default();
        if filter.http || list_all {
            listed.http_frontends = self
                .http_frontends
                .values()
                .filter(|f| domain.is_none_or(|d| f.hostname.contains(d)))
                .cloned()
                .collect();
        }
        if (filter.tcp || list_all) && domain.is_none() {
            listed.tcp_frontends = self.tcp_frontends.values().cloned().collect();
        }
        if list_all && domain.is_none() {
            listed.udp_frontends = self.udp_frontends.values().cloned().collect();
        }
        listed
    }

    /// A cluster with its frontends and backends, or `None` if unknown.
    pub fn cluster_information(&self, cluster_id: &str) -> Option<ClusterInformation> {
        let configuration = self.clusters.get(cluster_id)?;
        Some(ClusterInformation {
            configuration: Some(configuration.clone()),
            http_frontends: self
                .http_frontends
                .values()
                .filter(|f| f.cluster_id.as_deref() == Some(cluster_id))
                .cloned()
                .collect(),
            https_frontends: Vec::new(),
            tcp_frontends: self
                .tcp_frontends
                .values()
                .filter(|f| f.cluster_id == cluster_id)
                .cloned()
                .collect(),
            backends: self.backends(cluster_id).cloned().collect(),
            udp_frontends: self
                .udp_frontends
                .values()
                .filter(|f| f.cluster_id == cluster_id)
                .cloned()
                .collect(),
        })
    }

    /// Every cluster with its frontends and backends, ordered by id.
    pub fn clusters(&self) -> ClusterInformations {
        ClusterInformations {
            vec: self
                .clusters
                .keys()
                .filter_map(|id| self.cluster_information(id))
                .collect(),
        }
    }

    /// The cluster with this id.
    pub fn cluster(&self, cluster_id: &str) -> Option<&Cluster> {
        self.clusters.get(cluster_id)
    }

    /// Every cluster, ordered by id.
    pub fn cluster_configs(&self) -> impl Iterator<Item = &Cluster> + '_ {
        self.clusters.values()
    }

    /// The backends of a cluster, ordered by backend id (none if the cluster
    /// is unknown or has no backends).
    pub fn backends(&self, cluster_id: &str) -> impl Iterator<Item = &AddBackend> + '_ {
        self.backends
            .get(cluster_id)
            .into_iter()
            .flat_map(|b| b.values())
    }

    /// The UDP listener at this address.
    pub fn udp_listener(&self, address: &SocketAddr) -> Option<&UdpListenerConfig> {
        self.udp_listeners.get(address)
    }

    /// The TCP listener at this address.
    pub fn tcp_listener(&self, address: &SocketAddr) -> Option<&TcpListenerConfig> {
        self.tcp_listeners.get(address)
    }

    /// The HTTP listener at this address.
    pub fn http_listener(&self, address: &SocketAddr) -> Option<&HttpListenerConfig> {
        self.http_listeners.get(address)
    }

    /// Every UDP listener, ordered by address.
    pub fn udp_listeners(&self) -> impl Iterator<Item = (&SocketAddr, &UdpListenerConfig)> + '_ {
        self.udp_listeners.iter()
    }

    /// Every TCP listener, ordered by address.
    pub fn tcp_listeners(&self) -> impl Iterator<Item = (&SocketAddr, &TcpListenerConfig)> + '_ {
        self.tcp_listeners.iter()
    }

    /// Every HTTP listener, ordered by address.
    pub fn http_listeners(&self) -> impl Iterator<Item = (&SocketAddr, &HttpListenerConfig)> + '_ {
        self.http_listeners.iter()
    }

    /// The frontend of the UDP listener at this address (it names the one
    /// cluster the listener forwards to).
    pub fn udp_frontend(&self, listener: &SocketAddr) -> Option<&RequestUdpFrontend> {
        self.udp_frontends.get(listener)
    }

    /// The cluster the UDP listener at this address forwards to.
    pub fn udp_cluster(&self, listener: &SocketAddr) -> Option<&Cluster> {
        self.udp_frontends
            .get(listener)
            .and_then(|f| self.clusters.get(&f.cluster_id))
    }

    /// The frontend of the TCP listener at this address.
    pub fn tcp_frontend(&self, listener: &SocketAddr) -> Option<&RequestTcpFrontend> {
        self.tcp_frontends.get(listener)
    }

    /// Every HTTP frontend, ordered by route.
    pub fn http_frontends(&self) -> impl Iterator<Item = &RequestHttpFrontend> + '_ {
        self.http_frontends.values()
    }
}
