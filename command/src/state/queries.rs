//! Read-only views of the state: the answers to `list_listeners`,
//! `list_frontends`, `query_cluster_by_id`, `list_clusters`,
//! `query_clusters_hashes`, `query_clusters_by_domain`, and accessors the
//! master and workers use to find a listener, a cluster, its backends, or the
//! cluster a UDP/TCP listener forwards to.
//!
//! Nothing here mutates the state.

use std::net::SocketAddr;

use std::collections::BTreeSet;

use prost::Message;

use crate::command::{
    AddBackend, Cluster, ClusterHashes, ClusterInformation, ClusterInformations, FrontendFilters,
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
            https_listeners: self
                .https_listeners
                .iter()
                .map(|(addr, l)| (addr.to_string(), l.clone()))
                .collect(),
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
        if filter.https || list_all {
            listed.https_frontends = self
                .https_frontends
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
            https_frontends: self
                .https_frontends
                .values()
                .filter(|f| f.cluster_id.as_deref() == Some(cluster_id))
                .cloned()
                .collect(),
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

    /// `query_clusters_hashes`: one hash per cluster over everything the
    /// cluster is (its configuration, frontends and backends), so a tool
    /// comparing two proxies, or one proxy over time, sees which clusters
    /// differ. The hash is FNV-1a 64 over the cluster's protobuf encoding
    /// (deterministic: maps are ordered), stable across processes, restarts
    /// and hosts running the same version.
    pub fn cluster_hashes(&self) -> ClusterHashes {
        ClusterHashes {
            map: self
                .clusters
                .keys()
                .filter_map(|id| {
                    let info = self.cluster_information(id)?;
                    Some((id.clone(), fnv1a64(&info.encode_to_vec())))
                })
                .collect(),
        }
    }

    /// `query_clusters_by_domain`: the clusters an HTTP frontend with exactly
    /// this hostname routes to, and when `path` is given, only the frontends
    /// whose path rule's value is `path`. Frontends without a cluster
    /// (redirects, answers) name no cluster. Ordered by cluster id.
    pub fn clusters_by_domain(&self, hostname: &str, path: Option<&str>) -> ClusterInformations {
        let ids: BTreeSet<&str> = self
            .http_frontends
            .values()
            .filter(|f| f.hostname == hostname)
            .filter(|f| path.is_none_or(|p| f.path.value == p))
            .filter_map(|f| f.cluster_id.as_deref())
            .collect();
        ClusterInformations {
            vec: ids
                .into_iter()
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

/// FNV-1a, 64 bits: a fixed, dependency-free hash (the same bytes give the
/// same value in every process, unlike `std`'s randomly keyed hasher).
fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes
        .iter()
        .fold(OFFSET, |hash, &b| (hash ^ u64::from(b)).wrapping_mul(PRIME))
}

#[cfg(test)]
mod tests {
    use super::fnv1a64;
    use crate::command::request::RequestType;
    use crate::state::tests::{
        add_backend, add_cluster, add_http_listener, apply_all, http_frontend, order,
    };

    #[test]
    fn fnv1a64_matches_the_reference_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn cluster_hashes_change_with_the_cluster_and_only_with_it() {
        let base = [
            add_http_listener("127.0.0.1:8080"),
            add_cluster("a"),
            add_cluster("b"),
            add_backend("a", "a-1", "127.0.0.1:3001"),
        ];
        let mut state = apply_all(&base);
        let before = state.cluster_hashes().map;
        assert_eq!(before.len(), 2);
        assert_ne!(before["a"], before["b"]);
        assert_eq!(
            apply_all(&base).cluster_hashes().map,
            before,
            "deterministic"
        );
        state
            .dispatch(&add_backend("b", "b-1", "127.0.0.1:3002"))
            .expect("backend added");
        let after = state.cluster_hashes().map;
        assert_eq!(after["a"], before["a"]);
        assert_ne!(after["b"], before["b"]);
    }

    #[test]
    fn clusters_by_domain_match_hostname_exactly_and_path_when_given() {
        let state = apply_all(&[
            add_http_listener("127.0.0.1:8080"),
            add_cluster("api"),
            add_cluster("www"),
            add_cluster("other"),
            order(RequestType::AddHttpFrontend(http_frontend(
                Some("api"),
                "127.0.0.1:8080",
                "example.com",
                "/api",
            ))),
            order(RequestType::AddHttpFrontend(http_frontend(
                Some("www"),
                "127.0.0.1:8080",
                "example.com",
                "/",
            ))),
            order(RequestType::AddHttpFrontend(http_frontend(
                Some("other"),
                "127.0.0.1:8080",
                "www.example.com",
                "/",
            ))),
        ]);
        let ids = |hostname: &str, path: Option<&str>| -> Vec<String> {
            state
                .clusters_by_domain(hostname, path)
                .vec
                .into_iter()
                .filter_map(|c| c.configuration.map(|c| c.cluster_id))
                .collect()
        };
        assert_eq!(ids("example.com", None), ["api", "www"]);
        assert_eq!(ids("example.com", Some("/api")), ["api"]);
        assert_eq!(ids("www.example.com", None), ["other"]);
        assert!(ids("example.org", None).is_empty());
        assert!(ids("example.com", Some("/nope")).is_empty());
    }
}
