//! Backend orders: add and remove a backend of a cluster.
//!
//! A backend is identified by (cluster, backend id); two backends of one
//! cluster may share an address. A backend only exists inside an existing
//! cluster. Removing one must name its address as well, so an operator who
//! mistyped the address is told rather than removing the wrong server.
//! A backend's weight is stored as Sōzu's weight rule makes it
//! ([`crate::proto::weight`]): 0 or less → 1, none → 100.

use std::net::SocketAddr;

use crate::command::{AddBackend, RemoveBackend};
use crate::proto::weight::effective_params;
use crate::state::{validation, ConfigState, StateError};

fn check_backend(backend: &AddBackend) -> Result<(), StateError> {
    validation::id("cluster_id", &backend.cluster_id)?;
    validation::id("backend_id", &backend.backend_id)?;
    let address = validation::address("address", &backend.address)?;
    if let Some(reason) = crate::limits::unusable_backend_ip(address.ip()) {
        return Err(StateError::InvalidValue {
            field: "address",
            value: address.to_string(),
            reason,
        });
    }
    Ok(())
}

impl ConfigState {
    pub(super) fn add_backend(&mut self, backend: &AddBackend) -> Result<(), StateError> {
        check_backend(backend)?;
        self.require_cluster(&backend.cluster_id)?;
        let backends = self.backends.get(&backend.cluster_id);
        if backends.is_some_and(|b| b.contains_key(&backend.backend_id)) {
            return Err(StateError::DuplicateBackend {
                cluster_id: backend.cluster_id.clone(),
                backend_id: backend.backend_id.clone(),
            });
        }
        // Sōzu's weight rule (`proto::weight`): the state keeps the weight
        // the backend is served with, so listings show it.
        let mut stored = backend.clone();
        stored.load_balancing_parameters =
            Some(effective_params(backend.load_balancing_parameters.as_ref()));
        self.backends
            .entry(backend.cluster_id.clone())
            .or_default()
            .insert(backend.backend_id.clone(), stored);
        Ok(())
    }

    pub(super) fn remove_backend(&mut self, order: &RemoveBackend) -> Result<(), StateError> {
        validation::id("cluster_id", &order.cluster_id)?;
        validation::id("backend_id", &order.backend_id)?;
        let address = validation::address("address", &order.address)?;
        self.require_cluster(&order.cluster_id)?;
        let not_found = || StateError::BackendNotFound {
            cluster_id: order.cluster_id.clone(),
            backend_id: order.backend_id.clone(),
            address,
        };
        let backends = self
            .backends
            .get_mut(&order.cluster_id)
            .ok_or_else(not_found)?;
        match backends.get(&order.backend_id) {
            Some(existing) if SocketAddr::try_from(&existing.address).ok() == Some(address) => {}
            _ => return Err(not_found()),
        }
        backends.remove(&order.backend_id);
        // An empty map is no map: two states with the same backends compare
        // equal whatever their history.
        if backends.is_empty() {
            self.backends.remove(&order.cluster_id);
        }
        Ok(())
    }
}
