//! The TCP proxy's metric handles: what it counts, under which name, in
//! which scope (listener, cluster, backend).
//!
//! Owns pre-resolved [`MetricHandle`]s so the relay counts bytes through an
//! index, never a name lookup. Registration (allocating) happens when a
//! listener is added and the first time a cluster or backend is used; the
//! caches are dropped when the cluster or backend is removed (its scope is
//! removed from the registry, which makes old handles stale). The names are
//! shared with HTTP where the fact is the same (`<proto>.connections`…).

use std::net::SocketAddr;

use crate::metrics::register;
use crate::metrics::{
    MetricHandle, MetricKind, MetricsRegistry, Scope, ScopeHandles, ScopedHandleCache,
};

/// Metric names of the TCP proxy.
pub(crate) mod names {
    /// Counter: connections accepted (listener) / relayed (cluster, backend).
    pub(crate) const CONNECTIONS: &str = "tcp.connections";
    /// Gauge: sessions alive now.
    pub(crate) const ACTIVE_CONNECTIONS: &str = "tcp.active_connections";
    /// Counter: bytes received from clients and sent to backends.
    pub(crate) const BYTES_IN: &str = "tcp.bytes.in";
    /// Counter: bytes received from backends and sent to clients.
    pub(crate) const BYTES_OUT: &str = "tcp.bytes.out";
    /// Counter: backend connection attempts that failed (refused, timed out).
    pub(crate) const CONNECT_FAILED: &str = "tcp.connect.failed";
    /// Counter: sessions closed because no backend could be reached.
    pub(crate) const NO_BACKEND: &str = "tcp.no_backend";
    /// Counter: connections closed at accept because the worker holds
    /// `max_connections` connections already (listener).
    pub(crate) const CONNECTIONS_REFUSED: &str = "tcp.connections_refused";
    /// Counter: connections closed because the listener has no frontend.
    pub(crate) const NO_FRONTEND: &str = "tcp.no_frontend";
    /// Counter: connections refused for a bad or missing PROXY header.
    pub(crate) const PROXY_HEADER_INVALID: &str = "tcp.proxy_header.invalid";
    /// Counter: sessions closed by a front, back or connect timeout.
    pub(crate) const TIMEOUTS: &str = "tcp.timeouts";
    /// Time: session lifetime (milliseconds).
    pub(crate) const SESSION_DURATION: &str = "tcp.session.duration";
    /// Time: backend connect time (milliseconds).
    pub(crate) const CONNECT_TIME: &str = "tcp.connect.time";
}

/// Handles of one TCP listener.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ListenerHandles {
    pub connections: Option<MetricHandle>,
    pub active: Option<MetricHandle>,
    pub no_frontend: Option<MetricHandle>,
    pub refused: Option<MetricHandle>,
    pub proxy_header_invalid: Option<MetricHandle>,
    pub timeouts: Option<MetricHandle>,
}

impl ListenerHandles {
    /// Registers the listener's metrics.
    pub(crate) fn register(registry: &mut MetricsRegistry, address: SocketAddr) -> Self {
        let scope = || Scope::Listener(address);
        ListenerHandles {
            connections: register(registry, names::CONNECTIONS, scope(), MetricKind::Counter),
            active: register(
                registry,
                names::ACTIVE_CONNECTIONS,
                scope(),
                MetricKind::Gauge,
            ),
            no_frontend: register(registry, names::NO_FRONTEND, scope(), MetricKind::Counter),
            refused: register(
                registry,
                names::CONNECTIONS_REFUSED,
                scope(),
                MetricKind::Counter,
            ),
            proxy_header_invalid: register(
                registry,
                names::PROXY_HEADER_INVALID,
                scope(),
                MetricKind::Counter,
            ),
            timeouts: register(registry, names::TIMEOUTS, scope(), MetricKind::Counter),
        }
    }
}

/// Handles of one cluster or one backend: what a relayed session counts.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RelayHandles {
    pub connections: Option<MetricHandle>,
    pub active: Option<MetricHandle>,
    pub bytes_in: Option<MetricHandle>,
    pub bytes_out: Option<MetricHandle>,
    pub connect_failed: Option<MetricHandle>,
    pub no_backend: Option<MetricHandle>,
    pub duration: Option<MetricHandle>,
    pub connect_time: Option<MetricHandle>,
}

impl ScopeHandles for RelayHandles {
    fn register(registry: &mut MetricsRegistry, scope: Scope) -> Self {
        let mut r = |name: &str, kind| register(registry, name, scope.clone(), kind);
        RelayHandles {
            connections: r(names::CONNECTIONS, MetricKind::Counter),
            active: r(names::ACTIVE_CONNECTIONS, MetricKind::Gauge),
            bytes_in: r(names::BYTES_IN, MetricKind::Counter),
            bytes_out: r(names::BYTES_OUT, MetricKind::Counter),
            connect_failed: r(names::CONNECT_FAILED, MetricKind::Counter),
            no_backend: r(names::NO_BACKEND, MetricKind::Counter),
            duration: r(names::SESSION_DURATION, MetricKind::Time),
            connect_time: r(names::CONNECT_TIME, MetricKind::Time),
        }
    }
}

/// Cluster and backend handles, registered on first use.
pub(crate) type RelayHandleCache = ScopedHandleCache<RelayHandles>;
