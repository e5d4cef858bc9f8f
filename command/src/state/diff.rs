//! Orders between states: [`ConfigState::diff`] turns one state into another
//! (what `reload` sends), and [`ConfigState::generate_requests`] rebuilds a
//! state from empty (what a new worker and a state file receive).
//!
//! The orders come in an order every step of which `dispatch` accepts:
//! removals first (frontends, backends, clusters, listeners), then listeners
//! (added inactive, or patched in place), clusters, frontends, backends, and
//! activations last, so a worker only starts receiving once everything behind
//! a listener is in place. A listener change that an update order cannot
//! express (unsetting `public_address`, socket buffer sizes) replaces the
//! listener: its frontends are removed and added again around it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use crate::command::request::RequestType;
use crate::command::{
    ActivateListener, DeactivateListener, HttpListenerConfig, HttpsListenerConfig, RemoveBackend,
    RemoveCertificate, RemoveListener, Request, SocketAddress, TcpListenerConfig,
    UdpListenerConfig,
};
use crate::state::https::https_patch;
use crate::state::listeners::{http_patch, tcp_patch, udp_patch};
use crate::state::{ConfigState, ListenerKind};

fn order(request_type: RequestType) -> Request {
    Request {
        request_type: Some(request_type),
    }
}

fn remove_listener(kind: ListenerKind, address: SocketAddr) -> Request {
    order(RequestType::RemoveListener(RemoveListener {
        address: SocketAddress::from(address),
        proxy: kind.to_wire() as i32,
    }))
}

fn set_active(kind: ListenerKind, address: SocketAddr, active: bool) -> Request {
    let address = SocketAddress::from(address);
    let proxy = kind.to_wire() as i32;
    if active {
        order(RequestType::ActivateListener(ActivateListener {
            address,
            proxy,
            from_scm: false,
        }))
    } else {
        order(RequestType::DeactivateListener(DeactivateListener {
            address,
            proxy,
            to_scm: false,
        }))
    }
}

/// Listener addresses of one protocol, split by what the diff does to them.
struct ListenerPlan {
    /// In `self` only, or replaced: removed.
    removed: BTreeSet<SocketAddr>,
    /// In `other` only, or replaced: added inactive.
    added: BTreeSet<SocketAddr>,
    /// In both and not replaced: patched in place when different.
    kept: BTreeSet<SocketAddr>,
}

impl ListenerPlan {
    /// `patchable(old, new)` says whether an update order can turn `old`
    /// into `new`.
    fn new<'a, L: 'a>(
        old: impl IntoIterator<Item = (&'a SocketAddr, &'a L)>,
        new: &BTreeMap<SocketAddr, L>,
        patchable: impl Fn(&L, &L) -> bool,
    ) -> Self {
        let mut plan = ListenerPlan {
            removed: BTreeSet::new(),
            added: new.keys().copied().collect(),
            kept: BTreeSet::new(),
        };
        for (address, old_listener) in old {
            match new.get(address) {
                Some(new_listener) if patchable(old_listener, new_listener) => {
                    plan.added.remove(address);
                    plan.kept.insert(*address);
                }
                // Replaced: stays in `added`.
                Some(_) => {
                    plan.removed.insert(*address);
                }
                None => {
                    plan.removed.insert(*address);
                }
            }
        }
        plan
    }

    /// Whether the listener at `address` goes away (even if it comes back),
    /// taking its frontends with it.
    fn is_removed(&self, address: &SocketAddr) -> bool {
        self.removed.contains(address)
    }
}

impl ConfigState {
    /// The orders that build this state from an empty one, in a valid order:
    /// listeners (inactive), clusters, frontends, backends, then the
    /// activation of the active listeners.
    pub fn generate_requests(&self) -> Vec<Request> {
        ConfigState::default().diff(self)
    }

    /// The orders that turn `self` into `other`: dispatching them in order
    /// on a copy of `self` succeeds at every step and yields a state equal to
    /// `other`. Unchanged objects produce no order.
    pub fn diff(&self, other: &ConfigState) -> Vec<Request> {
        let udp = ListenerPlan::new(&self.udp_listeners, &other.udp_listeners, |o, n| {
            udp_patch(o, n).is_some()
        });
        let tcp = ListenerPlan::new(&self.tcp_listeners, &other.tcp_listeners, |o, n| {
            tcp_patch(o, n).is_some()
        });
        let http = ListenerPlan::new(&self.http_listeners, &other.http_listeners, |o, n| {
            http_patch(o, n).is_some()
        });
        let https = ListenerPlan::new(&self.https_listeners, &other.https_listeners, |o, n| {
            https_patch(o, n).is_some()
        });
        let mut orders = Vec::new();

        // 1. Frontends that change, vanish, or sit on a listener going away
        // (certificates too).
        for (route, frontend) in &self.https_frontends {
            if https.is_removed(&route.address)
                || other.https_frontends.get(route) != Some(frontend)
            {
                orders.push(order(RequestType::RemoveHttpsFrontend(frontend.clone())));
            }
        }
        for (address, fingerprint, _, _) in self.certificates() {
            let kept = !https.is_removed(&address)
                && other
                    .certificates_of(&address)
                    .and_then(|c| c.get(&fingerprint))
                    == self
                        .certificates_of(&address)
                        .and_then(|c| c.get(&fingerprint));
            if !kept {
                orders.push(order(RequestType::RemoveCertificate(RemoveCertificate {
                    address: address.into(),
                    fingerprint: fingerprint.to_string(),
                })));
            }
        }
        for (address, frontend) in &self.udp_frontends {
            if udp.is_removed(address) || other.udp_frontends.get(address) != Some(frontend) {
                orders.push(order(RequestType::RemoveUdpFrontend(frontend.clone())));
            }
        }
        for (address, frontend) in &self.tcp_frontends {
            if tcp.is_removed(address) || other.tcp_frontends.get(address) != Some(frontend) {
                orders.push(order(RequestType::RemoveTcpFrontend(frontend.clone())));
            }
        }
        for (route, frontend) in &self.http_frontends {
            if http.is_removed(&route.address) || other.http_frontends.get(route) != Some(frontend)
            {
                orders.push(order(RequestType::RemoveHttpFrontend(frontend.clone())));
            }
        }

        // 2. Backends that change or vanish.
        for (cluster_id, backends) in &self.backends {
            for (backend_id, backend) in backends {
                let kept = other
                    .backends
                    .get(cluster_id)
                    .and_then(|b| b.get(backend_id))
                    .is_some_and(|b| b == backend);
                if !kept {
                    orders.push(order(RequestType::RemoveBackend(RemoveBackend {
                        cluster_id: cluster_id.clone(),
                        backend_id: backend_id.clone(),
                        address: backend.address,
                    })));
                }
            }
        }

        // 3. Clusters that vanish.
        for cluster_id in self.clusters.keys() {
            if !other.clusters.contains_key(cluster_id) {
                orders.push(order(RequestType::RemoveCluster(cluster_id.clone())));
            }
        }

        // 4. Listeners that vanish or are replaced.
        for (kind, plan) in [
            (ListenerKind::Udp, &udp),
            (ListenerKind::Tcp, &tcp),
            (ListenerKind::Http, &http),
            (ListenerKind::Https, &https),
        ] {
            orders.extend(plan.removed.iter().map(|a| remove_listener(kind, *a)));
        }

        // 5. Listeners added (inactive) or patched in place.
        for address in &udp.added {
            let mut listener = other.udp_listeners[address];
            listener.active = false;
            orders.push(order(RequestType::AddUdpListener(listener)));
        }
        for address in &udp.kept {
            let (old, new) = (&self.udp_listeners[address], &other.udp_listeners[address]);
            let mut unchanged = *old;
            unchanged.active = new.active;
            if unchanged != *new {
                if let Some(patch) = udp_patch(old, new) {
                    orders.push(order(RequestType::UpdateUdpListener(patch)));
                }
            }
        }
        for address in &tcp.added {
            let mut listener = other.tcp_listeners[address];
            listener.active = false;
            orders.push(order(RequestType::AddTcpListener(listener)));
        }
        for address in &tcp.kept {
            let (old, new) = (&self.tcp_listeners[address], &other.tcp_listeners[address]);
            let mut unchanged = *old;
            unchanged.active = new.active;
            if unchanged != *new {
                if let Some(patch) = tcp_patch(old, new) {
                    orders.push(order(RequestType::UpdateTcpListener(patch)));
                }
            }
        }
        for address in &http.added {
            let mut listener = other.http_listeners[address].clone();
            listener.active = false;
            orders.push(order(RequestType::AddHttpListener(listener)));
        }
        for address in &http.kept {
            let (old, new) = (
                &self.http_listeners[address],
                &other.http_listeners[address],
            );
            let mut unchanged = old.clone();
            unchanged.active = new.active;
            if unchanged != *new {
                if let Some(patch) = http_patch(old, new) {
                    orders.push(order(RequestType::UpdateHttpListener(patch)));
                }
            }
        }

        for address in &https.added {
            let mut listener = other.https_listeners[address].clone();
            listener.active = false;
            orders.push(order(RequestType::AddHttpsListener(listener)));
        }
        for address in &https.kept {
            let (old, new) = (
                &self.https_listeners[address],
                &other.https_listeners[address],
            );
            let mut unchanged = old.clone();
            unchanged.active = new.active;
            if unchanged != *new {
                if let Some(patch) = https_patch(old, new) {
                    orders.push(order(RequestType::UpdateHttpsListener(patch)));
                }
            }
        }
        // 5b. Certificates added, changed, or put back on a replaced listener.
        for (address, fingerprint, _, add) in other.certificates() {
            let present = !https.is_removed(&address)
                && self
                    .certificates_of(&address)
                    .and_then(|c| c.get(&fingerprint))
                    == other
                        .certificates_of(&address)
                        .and_then(|c| c.get(&fingerprint));
            if !present {
                orders.push(order(RequestType::AddCertificate(add.clone())));
            }
        }

        // 6. Clusters added or reconfigured (add_cluster replaces).
        for (cluster_id, cluster) in &other.clusters {
            if self.clusters.get(cluster_id) != Some(cluster) {
                orders.push(order(RequestType::AddCluster(cluster.clone())));
            }
        }

        // 7. Frontends added, changed, or put back on a replaced listener.
        for (address, frontend) in &other.udp_frontends {
            if udp.is_removed(address) || self.udp_frontends.get(address) != Some(frontend) {
                orders.push(order(RequestType::AddUdpFrontend(frontend.clone())));
            }
        }
        for (address, frontend) in &other.tcp_frontends {
            if tcp.is_removed(address) || self.tcp_frontends.get(address) != Some(frontend) {
                orders.push(order(RequestType::AddTcpFrontend(frontend.clone())));
            }
        }
        for (route, frontend) in &other.http_frontends {
            if http.is_removed(&route.address) || self.http_frontends.get(route) != Some(frontend) {
                orders.push(order(RequestType::AddHttpFrontend(frontend.clone())));
            }
        }

        for (route, frontend) in &other.https_frontends {
            if https.is_removed(&route.address) || self.https_frontends.get(route) != Some(frontend)
            {
                orders.push(order(RequestType::AddHttpsFrontend(frontend.clone())));
            }
        }

        // 8. Backends added or changed.
        for (cluster_id, backends) in &other.backends {
            for (backend_id, backend) in backends {
                let unchanged = self
                    .backends
                    .get(cluster_id)
                    .and_then(|b| b.get(backend_id))
                    .is_some_and(|b| b == backend);
                if !unchanged {
                    orders.push(order(RequestType::AddBackend(backend.clone())));
                }
            }
        }

        // 9. Activation last: a listener starts serving with everything
        // behind it in place.
        let udp_active = |l: &UdpListenerConfig| l.active;
        let tcp_active = |l: &TcpListenerConfig| l.active;
        let http_active = |l: &HttpListenerConfig| l.active;
        let https_active = |l: &HttpsListenerConfig| l.active;
        activations(
            ListenerKind::Udp,
            &udp,
            &self.udp_listeners,
            &other.udp_listeners,
            udp_active,
            &mut orders,
        );
        activations(
            ListenerKind::Tcp,
            &tcp,
            &self.tcp_listeners,
            &other.tcp_listeners,
            tcp_active,
            &mut orders,
        );
        activations(
            ListenerKind::Http,
            &http,
            &self.http_listeners,
            &other.http_listeners,
            http_active,
            &mut orders,
        );
        activations(
            ListenerKind::Https,
            &https,
            &self.https_listeners,
            &other.https_listeners,
            https_active,
            &mut orders,
        );
        orders
    }
}

/// Activates or deactivates the listeners of `after` whose flag differs
/// from what they have once the diff added or kept them.
fn activations<L>(
    kind: ListenerKind,
    plan: &ListenerPlan,
    before: &BTreeMap<SocketAddr, L>,
    after: &BTreeMap<SocketAddr, L>,
    active: impl Fn(&L) -> bool,
    orders: &mut Vec<Request>,
) {
    for (address, listener) in after {
        let wanted = active(listener);
        // An added or replaced listener starts inactive.
        let current = !plan.added.contains(address) && before.get(address).is_some_and(&active);
        if current != wanted {
            orders.push(set_active(kind, *address, wanted));
        }
    }
}
