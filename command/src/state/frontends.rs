//! Frontend orders: add and remove UDP, TCP and HTTP frontends (HTTPS
//! frontends are the same order on another route table, see [`RouteTable`]).
//!
//! A UDP or TCP frontend maps a listener address to one cluster: it needs a
//! listener of that protocol at that address, and a listener maps to exactly
//! one cluster (a second frontend on it is refused). An HTTP frontend routes
//! (listener address, hostname, path, method) to a cluster, or to no cluster
//! for answer-only frontends; it needs an HTTP listener at that address.
//! Removing a frontend must name the cluster it points to.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

use crate::command::{
    HeaderPosition, PathRuleKind, RedirectPolicy, RedirectScheme, RequestHttpFrontend,
    RequestTcpFrontend, RequestUdpFrontend, RulePosition,
};
use crate::state::{validation, ConfigState, ListenerKind, StateError};

/// The routing table an HTTP frontend order names: HTTP and HTTPS
/// frontends are the same order on listeners of another kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RouteTable {
    /// `add_http_frontend`, `remove_http_frontend`.
    Http,
    /// `add_https_frontend`, `remove_https_frontend`.
    Https,
}

impl RouteTable {
    /// The listener kind a frontend of this table needs.
    fn listener_kind(self) -> ListenerKind {
        match self {
            RouteTable::Http => ListenerKind::Http,
            RouteTable::Https => ListenerKind::Https,
        }
    }
}

/// What identifies an HTTP frontend on the state: two frontends with the same
/// route on one listener would be ambiguous.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HttpRoute {
    /// The HTTP listener's address.
    pub address: SocketAddr,
    /// The `Host` the frontend matches.
    pub hostname: String,
    /// The path rule kind (`PathRuleKind` as on the wire).
    pub path_kind: i32,
    /// The path rule's value (prefix, regex or exact path).
    pub path: String,
    /// The HTTP method the frontend matches, if restricted.
    pub method: Option<String>,
}

impl HttpRoute {
    pub(super) fn of(address: SocketAddr, frontend: &RequestHttpFrontend) -> Self {
        HttpRoute {
            address,
            hostname: frontend.hostname.clone(),
            path_kind: frontend.path.kind,
            path: frontend.path.value.clone(),
            method: frontend.method.clone(),
        }
    }
}

impl fmt::Display for HttpRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = PathRuleKind::try_from(self.path_kind)
            .map_or("?", |k| k.as_str_name())
            .to_ascii_lowercase();
        write!(f, "host {:?} path {kind} {:?}", self.hostname, self.path)?;
        if let Some(method) = &self.method {
            write!(f, " method {method}")?;
        }
        Ok(())
    }
}

pub(super) fn check_http_frontend(
    frontend: &RequestHttpFrontend,
) -> Result<SocketAddr, StateError> {
    let address = validation::address("address", &frontend.address)?;
    if let Some(cluster_id) = &frontend.cluster_id {
        validation::id("cluster_id", cluster_id)?;
    }
    if frontend.hostname.is_empty() {
        return Err(StateError::InvalidValue {
            field: "hostname",
            value: "\"\"".to_owned(),
            reason: "must not be empty",
        });
    }
    validation::known_enum::<PathRuleKind>("path.kind", frontend.path.kind)?;
    validation::known_enum::<RulePosition>("position", frontend.position)?;
    validation::optional_enum::<RedirectPolicy>("redirect", frontend.redirect)?;
    validation::optional_enum::<RedirectScheme>("redirect_scheme", frontend.redirect_scheme)?;
    if let Some(port) = frontend.rewrite_port {
        validation::port("rewrite_port", port)?;
    }
    for header in &frontend.headers {
        validation::known_enum::<HeaderPosition>("headers.position", header.position)?;
    }
    Ok(address)
}

impl ConfigState {
    /// Checks the parts common to UDP and TCP frontends and returns the
    /// listener address.
    fn check_l4_frontend(
        &self,
        kind: ListenerKind,
        cluster_id: &str,
        address: &crate::command::SocketAddress,
    ) -> Result<SocketAddr, StateError> {
        validation::id("cluster_id", cluster_id)?;
        let address = validation::address("address", address)?;
        self.require_cluster(cluster_id)?;
        if !self.has_listener(kind, &address) {
            return Err(StateError::ListenerNotFound { kind, address });
        }
        Ok(address)
    }

    pub(super) fn add_udp_frontend(
        &mut self,
        frontend: &RequestUdpFrontend,
    ) -> Result<(), StateError> {
        let kind = ListenerKind::Udp;
        let address = self.check_l4_frontend(kind, &frontend.cluster_id, &frontend.address)?;
        if let Some(existing) = self.udp_frontends.get(&address) {
            return Err(StateError::ListenerAlreadyMapped {
                kind,
                address,
                existing: existing.cluster_id.clone(),
            });
        }
        self.udp_frontends.insert(address, frontend.clone());
        Ok(())
    }

    pub(super) fn remove_udp_frontend(
        &mut self,
        frontend: &RequestUdpFrontend,
    ) -> Result<(), StateError> {
        validation::id("cluster_id", &frontend.cluster_id)?;
        let address = validation::address("address", &frontend.address)?;
        match self.udp_frontends.get(&address) {
            Some(existing) if existing.cluster_id == frontend.cluster_id => {
                self.udp_frontends.remove(&address);
                Ok(())
            }
            _ => Err(StateError::FrontendNotFound {
                kind: ListenerKind::Udp,
                address,
                cluster_id: frontend.cluster_id.clone(),
            }),
        }
    }

    pub(super) fn add_tcp_frontend(
        &mut self,
        frontend: &RequestTcpFrontend,
    ) -> Result<(), StateError> {
        let kind = ListenerKind::Tcp;
        let address = self.check_l4_frontend(kind, &frontend.cluster_id, &frontend.address)?;
        if let Some(existing) = self.tcp_frontends.get(&address) {
            return Err(StateError::ListenerAlreadyMapped {
                kind,
                address,
                existing: existing.cluster_id.clone(),
            });
        }
        self.tcp_frontends.insert(address, frontend.clone());
        Ok(())
    }

    pub(super) fn remove_tcp_frontend(
        &mut self,
        frontend: &RequestTcpFrontend,
    ) -> Result<(), StateError> {
        validation::id("cluster_id", &frontend.cluster_id)?;
        let address = validation::address("address", &frontend.address)?;
        match self.tcp_frontends.get(&address) {
            Some(existing) if existing.cluster_id == frontend.cluster_id => {
                self.tcp_frontends.remove(&address);
                Ok(())
            }
            _ => Err(StateError::FrontendNotFound {
                kind: ListenerKind::Tcp,
                address,
                cluster_id: frontend.cluster_id.clone(),
            }),
        }
    }

    pub(super) fn add_http_frontend(
        &mut self,
        frontend: &RequestHttpFrontend,
    ) -> Result<(), StateError> {
        self.add_route(RouteTable::Http, frontend)
    }

    pub(super) fn remove_http_frontend(
        &mut self,
        frontend: &RequestHttpFrontend,
    ) -> Result<(), StateError> {
        self.remove_route(RouteTable::Http, frontend)
    }

    fn routes_mut(&mut self, table: RouteTable) -> &mut BTreeMap<HttpRoute, RequestHttpFrontend> {
        match table {
            RouteTable::Http => &mut self.http_frontends,
            RouteTable::Https => &mut self.https_frontends,
        }
    }

    /// Adds an HTTP or HTTPS frontend: it needs its cluster (if it names
    /// one) and a listener of its kind, and its route must be free.
    pub(super) fn add_route(
        &mut self,
        table: RouteTable,
        frontend: &RequestHttpFrontend,
    ) -> Result<(), StateError> {
        let address = check_http_frontend(frontend)?;
        if let Some(cluster_id) = &frontend.cluster_id {
            self.require_cluster(cluster_id)?;
        }
        let kind = table.listener_kind();
        if !self.has_listener(kind, &address) {
            return Err(StateError::ListenerNotFound { kind, address });
        }
        let route = HttpRoute::of(address, frontend);
        let routes = self.routes_mut(table);
        if routes.contains_key(&route) {
            return Err(StateError::DuplicateHttpFrontend {
                address,
                route: route.to_string(),
            });
        }
        routes.insert(route, frontend.clone());
        Ok(())
    }

    /// Removes an HTTP or HTTPS frontend; the order must name the cluster
    /// it points to (or none, as it does).
    pub(super) fn remove_route(
        &mut self,
        table: RouteTable,
        frontend: &RequestHttpFrontend,
    ) -> Result<(), StateError> {
        let address = validation::address("address", &frontend.address)?;
        let route = HttpRoute::of(address, frontend);
        let routes = self.routes_mut(table);
        match routes.get(&route) {
            Some(existing) if existing.cluster_id == frontend.cluster_id => {
                routes.remove(&route);
                Ok(())
            }
            _ => Err(StateError::HttpFrontendNotFound {
                address,
                route: route.to_string(),
                cluster: frontend
                    .cluster_id
                    .as_ref()
                    .map_or_else(|| "no cluster".to_owned(), |id| format!("cluster {id:?}")),
            }),
        }
    }
}
