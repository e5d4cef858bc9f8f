//! A cache of pre-registered metric handles per cluster and per backend,
//! filled on first use, shared by the TCP and HTTP proxies (each with its own
//! handle set). Never registers on a hot path twice: one registration per
//! scope, then a map lookup.

use std::collections::HashMap;

use crate::backends::{BackendId, ClusterId};

use super::{MetricsRegistry, Scope};

/// A set of handles that can be registered for one scope.
pub trait ScopeHandles: Copy {
    /// Registers the set's metrics in `scope`.
    fn register(registry: &mut MetricsRegistry, scope: Scope) -> Self;
}

/// Cluster and backend handle sets, registered on first use.
#[derive(Debug)]
pub struct ScopedHandleCache<H> {
    clusters: HashMap<ClusterId, H>,
    backends: HashMap<(ClusterId, BackendId), H>,
}

impl<H> Default for ScopedHandleCache<H> {
    fn default() -> Self {
        ScopedHandleCache {
            clusters: HashMap::new(),
            backends: HashMap::new(),
        }
    }
}

impl<H: ScopeHandles> ScopedHandleCache<H> {
    /// The cluster's handles.
    pub fn cluster(&mut self, registry: &mut MetricsRegistry, cluster: &ClusterId) -> H {
        *self
            .clusters
            .entry(cluster.clone())
            .or_insert_with(|| H::register(registry, Scope::Cluster(cluster.clone())))
    }

    /// The backend's handles.
    pub fn backend(
        &mut self,
        registry: &mut MetricsRegistry,
        cluster: &ClusterId,
        backend: &BackendId,
    ) -> H {
        *self
            .backends
            .entry((cluster.clone(), backend.clone()))
            .or_insert_with(|| {
                H::register(registry, Scope::Backend(cluster.clone(), backend.clone()))
            })
    }

    /// Forgets a cluster's handles and its backends' (after its scope was
    /// removed from the registry).
    pub fn forget_cluster(&mut self, cluster: &str) {
        self.clusters.remove(cluster);
        self.backends.retain(|(c, _), _| c.as_str() != cluster);
    }

    /// Forgets one backend's handles.
    pub fn forget_backend(&mut self, cluster: &str, backend: &str) {
        self.backends
            .retain(|(c, b), _| !(c.as_str() == cluster && b.as_str() == backend));
    }
}
