//! Undoing one order the state accepted, at the cost of that order.
//!
//! A worker applies an order to its state first, then to its sockets; when
//! the sockets refuse (a bind error, a TLS listener that will not build), the
//! state must go back to what it was. Cloning the whole state before every
//! order made that O(size of the state) per order, so replaying a state of
//! n orders to a new worker (boot, restart, upgrade) cost O(n²).
//!
//! [`ConfigState::undo_point`] instead saves, before the order, only the
//! entries the order can change (its listener address, its cluster, its
//! backend, its frontend route, its certificates), and
//! [`ConfigState::undo`] puts exactly those back. Two orders cascade over
//! every dependent object (`remove_listener`, `remove_cluster`): for them,
//! and for an order whose keys cannot be read (which the state refuses
//! anyway), the undo point is the whole state, as before; those orders
//! already cost O(size of the state) in the state itself (they scan for
//! dependents) and never appear in a replayed state. Every whole-state
//! snapshot is counted ([`whole_state_snapshots`]) so tests can prove a
//! replay takes none.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::certificate::{self, Fingerprint};
use crate::command::request::RequestType;
use crate::command::{
    AddBackend, Cluster, HttpListenerConfig, HttpsListenerConfig, RequestHttpFrontend,
    RequestTcpFrontend, RequestUdpFrontend, SocketAddress, TcpListenerConfig, UdpListenerConfig,
};
use crate::state::frontends::HttpRoute;
use crate::state::https::StoredCertificate;
use crate::state::ConfigState;

thread_local! {
    /// Whole-state snapshots taken by [`ConfigState::undo_point`] on this
    /// thread (per thread, so tests running side by side do not mix).
    static WHOLE_STATE_SNAPSHOTS: Cell<u64> = const { Cell::new(0) };
}

/// How many times [`ConfigState::undo_point`] had to copy the whole state
/// (cascading removals, unreadable orders) on the calling thread.
pub fn whole_state_snapshots() -> u64 {
    WHOLE_STATE_SNAPSHOTS.with(Cell::get)
}

/// What [`ConfigState::undo`] needs to take one order back.
#[derive(Debug)]
pub struct Undo(Saved);

#[derive(Debug)]
enum Saved {
    /// The entries the order can change, as they were before it.
    Entries(Box<Entries>),
    /// The whole state before the order.
    Whole(Box<ConfigState>),
}

/// Each touched key with its value before the order (`None`: absent).
#[derive(Debug, Default)]
struct Entries {
    /// Listener entries of every kind at these addresses.
    listeners: Vec<ListenersAt>,
    clusters: Vec<(String, Option<Cluster>)>,
    /// (cluster, backend id) → backend.
    backends: Vec<(String, String, Option<AddBackend>)>,
    udp_frontends: Vec<(SocketAddr, Option<RequestUdpFrontend>)>,
    tcp_frontends: Vec<(SocketAddr, Option<RequestTcpFrontend>)>,
    http_frontends: Vec<(HttpRoute, Option<RequestHttpFrontend>)>,
    https_frontends: Vec<(HttpRoute, Option<RequestHttpFrontend>)>,
    certificates: Vec<(SocketAddr, Fingerprint, Option<StoredCertificate>)>,
}

#[derive(Debug)]
struct ListenersAt {
    address: SocketAddr,
    udp: Option<UdpListenerConfig>,
    tcp: Option<TcpListenerConfig>,
    http: Option<HttpListenerConfig>,
    https: Option<HttpsListenerConfig>,
}

/// `None` when the wire address is not a socket address.
fn address(wire: &SocketAddress) -> Option<SocketAddr> {
    SocketAddr::try_from(wire).ok()
}

impl ConfigState {
    /// Saves what `order` can change, to take it back with
    /// [`ConfigState::undo`] if the order is accepted here and then refused
    /// by the sockets. Costs O(size of the order), except for the cascading
    /// removals (see the module documentation).
    pub fn undo_point(&self, order: &RequestType) -> Undo {
        match self.entries_for(order) {
            Some(entries) => Undo(Saved::Entries(Box::new(entries))),
            None => {
                WHOLE_STATE_SNAPSHOTS.with(|n| n.set(n.get() + 1));
                Undo(Saved::Whole(Box::new(self.clone())))
            }
        }
    }

    /// Puts back what [`ConfigState::undo_point`] saved, undoing the one
    /// order accepted since.
    pub fn undo(&mut self, undo: Undo) {
        let entries = match undo.0 {
            Saved::Whole(state) => {
                *self = *state;
                return;
            }
            Saved::Entries(entries) => *entries,
        };
        for at in entries.listeners {
            put(&mut self.udp_listeners, at.address, at.udp);
            put(&mut self.tcp_listeners, at.address, at.tcp);
            put(&mut self.http_listeners, at.address, at.http);
            put(&mut self.https_listeners, at.address, at.https);
        }
        for (id, cluster) in entries.clusters {
            put(&mut self.clusters, id, cluster);
        }
        for (cluster, id, backend) in entries.backends {
            put_nested(&mut self.backends, cluster, id, backend);
        }
        for (key, frontend) in entries.udp_frontends {
            put(&mut self.udp_frontends, key, frontend);
        }
        for (key, frontend) in entries.tcp_frontends {
            put(&mut self.tcp_frontends, key, frontend);
        }
        for (key, frontend) in entries.http_frontends {
            put(&mut self.http_frontends, key, frontend);
        }
        for (key, frontend) in entries.https_frontends {
            put(&mut self.https_frontends, key, frontend);
        }
        for (address, fingerprint, stored) in entries.certificates {
            put_nested(&mut self.certificates, address, fingerprint, stored);
        }
    }

    /// The entries `order` can change, or `None` when only the whole state
    /// will do.
    fn entries_for(&self, order: &RequestType) -> Option<Entries> {
        let mut entries = Entries::default();
        let listener = |entries: &mut Entries, wire: &SocketAddress| -> Option<()> {
            let address = address(wire)?;
            entries.listeners.push(ListenersAt {
                address,
                udp: self.udp_listeners.get(&address).cloned(),
                tcp: self.tcp_listeners.get(&address).cloned(),
                http: self.http_listeners.get(&address).cloned(),
                https: self.https_listeners.get(&address).cloned(),
            });
            Some(())
        };
        let certificate = |entries: &mut Entries, address: SocketAddr, fingerprint| {
            let stored = self
                .certificates
                .get(&address)
                .and_then(|c| c.get(&fingerprint))
                .cloned();
            entries.certificates.push((address, fingerprint, stored));
        };
        match order {
            RequestType::AddUdpListener(c) => listener(&mut entries, &c.address)?,
            RequestType::AddTcpListener(c) => listener(&mut entries, &c.address)?,
            RequestType::AddHttpListener(c) => listener(&mut entries, &c.address)?,
            RequestType::AddHttpsListener(c) => listener(&mut entries, &c.address)?,
            RequestType::UpdateUdpListener(u) => listener(&mut entries, &u.address)?,
            RequestType::UpdateTcpListener(u) => listener(&mut entries, &u.address)?,
            RequestType::UpdateHttpListener(u) => listener(&mut entries, &u.address)?,
            RequestType::UpdateHttpsListener(u) => listener(&mut entries, &u.address)?,
            RequestType::ActivateListener(a) => listener(&mut entries, &a.address)?,
            RequestType::DeactivateListener(d) => listener(&mut entries, &d.address)?,
            RequestType::AddCluster(c) => entries.clusters.push((
                c.cluster_id.clone(),
                self.clusters.get(&c.cluster_id).cloned(),
            )),
            RequestType::AddBackend(b) => entries.backends.push((
                b.cluster_id.clone(),
                b.backend_id.clone(),
                self.backend(&b.cluster_id, &b.backend_id),
            )),
            RequestType::RemoveBackend(b) => entries.backends.push((
                b.cluster_id.clone(),
                b.backend_id.clone(),
                self.backend(&b.cluster_id, &b.backend_id),
            )),
            RequestType::AddUdpFrontend(f) | RequestType::RemoveUdpFrontend(f) => {
                let key = address(&f.address)?;
                let before = self.udp_frontends.get(&key).cloned();
                entries.udp_frontends.push((key, before));
            }
            RequestType::AddTcpFrontend(f) | RequestType::RemoveTcpFrontend(f) => {
                let key = address(&f.address)?;
                let before = self.tcp_frontends.get(&key).cloned();
                entries.tcp_frontends.push((key, before));
            }
            RequestType::AddHttpFrontend(f) | RequestType::RemoveHttpFrontend(f) => {
                let key = HttpRoute::of(address(&f.address)?, f);
                let before = self.http_frontends.get(&key).cloned();
                entries.http_frontends.push((key, before));
            }
            RequestType::AddHttpsFrontend(f) | RequestType::RemoveHttpsFrontend(f) => {
                let key = HttpRoute::of(address(&f.address)?, f);
                let before = self.https_frontends.get(&key).cloned();
                entries.https_frontends.push((key, before));
            }
            RequestType::AddCertificate(c) => {
                let fingerprint = certificate::decode(&c.certificate).ok()?.fingerprint;
                certificate(&mut entries, address(&c.address)?, fingerprint);
            }
            RequestType::ReplaceCertificate(c) => {
                let at = address(&c.address)?;
                let new = certificate::decode(&c.new_certificate).ok()?.fingerprint;
                let old = c.old_fingerprint.parse().ok()?;
                certificate(&mut entries, at, old);
                certificate(&mut entries, at, new);
            }
            RequestType::RemoveCertificate(c) => {
                let fingerprint = c.fingerprint.parse().ok()?;
                certificate(&mut entries, address(&c.address)?, fingerprint);
            }
            // Cascading removals: every dependent object may go.
            RequestType::RemoveListener(_) | RequestType::RemoveCluster(_) => return None,
            // Not a state change: nothing to save.
            _ => {}
        }
        Some(entries)
    }

    fn backend(&self, cluster: &str, id: &str) -> Option<AddBackend> {
        self.backends.get(cluster).and_then(|b| b.get(id)).cloned()
    }
}

/// Sets `key` to `value`, or removes it.
fn put<K: Ord, V>(map: &mut BTreeMap<K, V>, key: K, value: Option<V>) {
    match value {
        Some(value) => {
            map.insert(key, value);
        }
        None => {
            map.remove(&key);
        }
    }
}

/// [`put`] in a map of maps, where an empty inner map is no entry.
fn put_nested<K: Ord + Clone, J: Ord, V>(
    map: &mut BTreeMap<K, BTreeMap<J, V>>,
    outer: K,
    inner: J,
    value: Option<V>,
) {
    match value {
        Some(value) => {
            map.entry(outer).or_default().insert(inner, value);
        }
        None => {
            if let Some(entries) = map.get_mut(&outer) {
                entries.remove(&inner);
                if entries.is_empty() {
                    map.remove(&outer);
                }
            }
        }
    }
}
