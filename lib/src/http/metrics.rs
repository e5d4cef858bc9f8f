//! The HTTP proxy's metric handles and names.
//!
//! Owns pre-resolved handles per listener, cluster and backend. Each fact is
//! counted in one scope only: the backend when one was chosen, else the
//! cluster when the request was routed, else the listener (so query-metrics'
//! sums — a cluster plus its backends, the proxy plus its listeners — count
//! it once). Caches are dropped when a cluster or backend is removed.

use std::time::Duration;

use crate::metrics::{count, register, time};
use crate::metrics::{
    MetricHandle, MetricKind, MetricsRegistry, Scope, ScopeHandles, ScopedHandleCache,
};

/// Metric names of the HTTP proxy.
pub(crate) mod names {
    /// Counter: client connections accepted (listener).
    pub(crate) const CONNECTIONS: &str = "http.connections";
    /// Counter: client connections closed at accept because the worker
    /// holds `max_connections` connections already (listener).
    pub(crate) const CONNECTIONS_REFUSED: &str = "http.connections_refused";
    /// Gauge: client connections alive (listener).
    pub(crate) const ACTIVE_CONNECTIONS: &str = "http.active_connections";
    /// Counter: requests answered (by a backend or by the proxy).
    pub(crate) const REQUESTS: &str = "http.requests";
    /// Counters: final answers by class, e.g. `http.status.5xx`.
    pub(crate) const STATUS: [&str; 5] = [
        "http.status.1xx",
        "http.status.2xx",
        "http.status.3xx",
        "http.status.4xx",
        "http.status.5xx",
    ];
    /// Counter: request bytes received from clients.
    pub(crate) const BYTES_IN: &str = "http.bytes.in";
    /// Counter: response bytes sent to clients.
    pub(crate) const BYTES_OUT: &str = "http.bytes.out";
    /// Time: from the request's first byte to the response's last
    /// (milliseconds).
    pub(crate) const RESPONSE_TIME: &str = "http.response_time";
    /// Counter: backend connects that failed.
    pub(crate) const CONNECT_FAILED: &str = "http.connect.failed";
    /// Counter: requests answered 503 because no backend could be reached.
    pub(crate) const NO_BACKEND: &str = "http.no_backend";
    /// Counter: backend connections opened.
    pub(crate) const BACKEND_CONNECTIONS: &str = "http.backend.connections";
    /// Counter: client connections closed by a timeout (listener).
    pub(crate) const TIMEOUTS: &str = "http.timeouts";
}

/// Handles of one scope.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct HttpHandles {
    pub connections: Option<MetricHandle>,
    pub active: Option<MetricHandle>,
    pub requests: Option<MetricHandle>,
    pub status: [Option<MetricHandle>; 5],
    pub bytes_in: Option<MetricHandle>,
    pub bytes_out: Option<MetricHandle>,
    pub response_time: Option<MetricHandle>,
    pub connect_failed: Option<MetricHandle>,
    pub no_backend: Option<MetricHandle>,
    pub backend_connections: Option<MetricHandle>,
    pub timeouts: Option<MetricHandle>,
    pub refused: Option<MetricHandle>,
}

impl HttpHandles {
    /// Registers every handle in `scope`; listener scopes also get the
    /// connection counters, cluster/backend scopes the backend ones.
    pub(crate) fn register(registry: &mut MetricsRegistry, scope: Scope) -> Self {
        let listener = matches!(scope, Scope::Listener(_));
        let mut r = |name: &str, kind| register(registry, name, scope.clone(), kind);
        let mut h = HttpHandles {
            requests: r(names::REQUESTS, MetricKind::Counter),
            bytes_in: r(names::BYTES_IN, MetricKind::Counter),
            bytes_out: r(names::BYTES_OUT, MetricKind::Counter),
            response_time: r(names::RESPONSE_TIME, MetricKind::Time),
            ..Default::default()
        };
        for (slot, name) in h.status.iter_mut().zip(names::STATUS) {
            *slot = r(name, MetricKind::Counter);
        }
        if listener {
            h.connections = r(names::CONNECTIONS, MetricKind::Counter);
            h.active = r(names::ACTIVE_CONNECTIONS, MetricKind::Gauge);
            h.timeouts = r(names::TIMEOUTS, MetricKind::Counter);
            h.refused = r(names::CONNECTIONS_REFUSED, MetricKind::Counter);
        } else {
            h.connect_failed = r(names::CONNECT_FAILED, MetricKind::Counter);
            h.no_backend = r(names::NO_BACKEND, MetricKind::Counter);
            h.backend_connections = r(names::BACKEND_CONNECTIONS, MetricKind::Counter);
        }
        h
    }

    /// Counts one answered request.
    pub(crate) fn request(
        &self,
        registry: &mut MetricsRegistry,
        status: u16,
        bytes_in: u64,
        bytes_out: u64,
        duration: Duration,
    ) {
        count(registry, self.requests, 1);
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        count(registry, self.status[class], 1);
        count(registry, self.bytes_in, bytes_in as i64);
        count(registry, self.bytes_out, bytes_out as i64);
        time(registry, self.response_time, duration);
    }
}

/// Cluster and backend handles, registered on first use.
pub(crate) type HttpHandleCache = ScopedHandleCache<HttpHandles>;

impl ScopeHandles for HttpHandles {
    fn register(registry: &mut MetricsRegistry, scope: Scope) -> Self {
        HttpHandles::register(registry, scope)
    }
}
