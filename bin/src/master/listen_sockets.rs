//! The listening sockets the master binds and holds for its workers (see
//! doc/architecture.md, "Listening sockets").
//!
//! Binding is part of accepting a listener: every listener of the state has
//! its sockets bound here before the order that adds it changes the state
//! (start-up included), so an address in use refuses the order (or the
//! start) naming the address. A UDP listener has one socket per worker slot
//! in one `SO_REUSEPORT` group steered by a BPF program
//! ([`sozu_lib::listen_socket`]); a TCP or HTTP listener has one socket
//! without `SO_REUSEPORT`, shared by every worker. The master keeps them for
//! the listener's life (so the group's order never changes and a dead
//! worker's socket keeps queueing until its successor adopts it) and passes
//! them to the workers with `adopt_listen_sockets` on the fd-passing socket:
//! at boot and restart (before the state), and before an order adding a
//! listener. They cross an in-place upgrade of the master in its handover.
//!
//! Owns the sockets and the worker-slot table; it never decides whether an
//! order is accepted (`orders.rs` does, calling [`ListenSockets::bind_added`]
//! on the state an order would make, before sending it, and
//! [`ListenSockets::release_absent`] once the change is committed or refused).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sozu_command_lib::command::request::RequestType;
use sozu_command_lib::command::{
    AdoptListenSockets, ListenSocketEntry, ListenSocketManifest, ListenerType, Request,
};
use sozu_command_lib::state::ConfigState;
use sozu_lib::listen_socket::ListenerSocketOptions;
use sozu_lib::listen_socket::{bind_stream, bind_udp_group, steer_udp_group, ListenError};
use sozu_lib::udp::shell::socket_options;

use super::gather::OrderId;
use super::workers::set_cloexec;
use super::{Master, Purpose};

/// One listener's sockets: by type and address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Key {
    proxy: i32,
    address: SocketAddr,
}

impl Key {
    fn new(proxy: ListenerType, address: SocketAddr) -> Self {
        Key {
            proxy: proxy as i32,
            address,
        }
    }

    fn proxy(&self) -> ListenerType {
        ListenerType::try_from(self.proxy).unwrap_or(ListenerType::Udp)
    }
}

/// The held sockets and which worker serves which slot.
#[derive(Debug)]
pub(crate) struct ListenSockets {
    /// UDP: one socket per slot; TCP / HTTP: one socket for every slot.
    groups: BTreeMap<Key, Vec<OwnedFd>>,
    /// Worker id → slot (`0..workers`). A worker replaced by an upgrade
    /// hands its slot to its successor; a restarted worker keeps its id and
    /// so its slot.
    slots: BTreeMap<u32, usize>,
    workers: usize,
    /// Slots no live worker reads: UDP groups steer their sources to the
    /// live slots (see [`ListenSockets::steer`]).
    down: BTreeSet<u32>,
}

/// What crosses an in-place master upgrade (fd numbers stay valid: their
/// close-on-exec flag is cleared for the exec).
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Handover {
    groups: Vec<HandoverGroup>,
    slots: Vec<(u32, usize)>,
}

impl Handover {
    /// Every fd the new master inherits.
    pub(crate) fn fds(&self) -> impl Iterator<Item = RawFd> + '_ {
        self.groups.iter().flat_map(|g| g.fds.iter().copied())
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct HandoverGroup {
    proxy: i32,
    address: SocketAddr,
    fds: Vec<RawFd>,
}

/// Every listener of `state` with the options of its sockets (`None` for
/// TCP, HTTP and HTTPS).
fn wanted(state: &ConfigState) -> Vec<(Key, Option<ListenerSocketOptions>)> {
    let udp = state
        .udp_listeners()
        .map(|(a, l)| (Key::new(ListenerType::Udp, *a), Some(socket_options(l))));
    let tcp = state
        .tcp_listeners()
        .map(|(a, _)| (Key::new(ListenerType::Tcp, *a), None));
    let http = state
        .http_listeners()
        .map(|(a, _)| (Key::new(ListenerType::Http, *a), None));
    let https = state
        .https_listeners()
        .map(|(a, _)| (Key::new(ListenerType::Https, *a), None));
    udp.chain(tcp).chain(http).chain(https).collect()
}

impl ListenSockets {
    /// No socket yet; UDP groups get `workers` sockets.
    pub(crate) fn new(workers: usize) -> Self {
        ListenSockets {
            groups: BTreeMap::new(),
            slots: BTreeMap::new(),
            workers: workers.max(1),
            down: BTreeSet::new(),
        }
    }

    fn bind(
        &self,
        key: Key,
        options: Option<ListenerSocketOptions>,
    ) -> Result<Vec<OwnedFd>, ListenError> {
        match key.proxy() {
            ListenerType::Udp => {
                bind_udp_group(key.address, self.workers, options.unwrap_or_default())
            }
            _ => bind_stream(key.address).map(|fd| vec![fd]),
        }
    }

    /// Binds every listener of `state` not held yet; on an error nothing
    /// newly bound is kept. Returns the listeners bound now (to pass to the
    /// workers, or to release if the change is refused after all).
    pub(crate) fn bind_missing(&mut self, state: &ConfigState) -> Result<Vec<Key>, ListenError> {
        self.bind_added(&ConfigState::new(), state)
    }

    /// Binds every listener `after` has and `before` has not, unless held
    /// (a state change about to be sent); on an error nothing newly bound
    /// is kept. Listeners `before` already had are left as they are.
    pub(crate) fn bind_added(
        &mut self,
        before: &ConfigState,
        after: &ConfigState,
    ) -> Result<Vec<Key>, ListenError> {
        let existing: BTreeSet<Key> = wanted(before).into_iter().map(|(key, _)| key).collect();
        let mut bound = Vec::new();
        for (key, options) in wanted(after) {
            if existing.contains(&key) || self.groups.contains_key(&key) {
                continue;
            }
            match self.bind(key, options) {
                Ok(group) => {
                    if key.proxy() == ListenerType::Udp && !self.down.is_empty() {
                        if let Some(first) = group.first() {
                            self.steer_group(key, first.as_fd());
                        }
                    }
                    self.groups.insert(key, group);
                    bound.push(key);
                }
                Err(error) => {
                    self.release(&bound);
                    return Err(error);
                }
            }
        }
        Ok(bound)
    }

    /// The slot worker `id` serves, if it was given one.
    pub(crate) fn slot_of(&self, id: u32) -> Option<usize> {
        self.slots.get(&id).copied()
    }

    /// Slots `0..workers` that none of `live` (worker ids with a process)
    /// serves. A live worker not given a slot yet (it is booting) will take one:
    /// nothing is called down then.
    pub(crate) fn down_slots(&self, live: &BTreeSet<u32>) -> BTreeSet<u32> {
        if live.iter().any(|id| self.slot_of(*id).is_none()) {
            return BTreeSet::new();
        }
        let served: BTreeSet<usize> = live.iter().filter_map(|id| self.slot_of(*id)).collect();
        (0..self.workers)
            .filter(|slot| !served.contains(slot))
            .map(|slot| slot as u32)
            .collect()
    }

    /// Steers every UDP group around the `down` slots: a slot whose worker
    /// is dead and not restarted at once (a backoff, a worker that cannot
    /// start, automatic restart off) would otherwise hold its share of the
    /// clients in a socket nobody reads. Sources of live slots never move;
    /// when the slot is served again, its sources come back to it.
    pub(crate) fn steer(&mut self, down: BTreeSet<u32>) {
        if down == self.down {
            return;
        }
        tracing::info!(down = ?down, "UDP listeners steer around worker slots no worker reads");
        self.down = down;
        let firsts: Vec<(Key, BorrowedFd<'_>)> = self
            .groups
            .iter()
            .filter(|(key, _)| key.proxy() == ListenerType::Udp)
            .filter_map(|(key, group)| group.first().map(|fd| (*key, fd.as_fd())))
            .collect();
        for (key, fd) in firsts {
            self.steer_group(key, fd);
        }
    }

    fn steer_group(&self, key: Key, fd: BorrowedFd<'_>) {
        if let Err(error) = steer_udp_group(fd, self.workers, &self.down) {
            tracing::error!(address = %key.address, %error, "cannot steer the UDP listener");
        }
    }

    /// Closes the master's copies of these listeners' sockets.
    pub(crate) fn release(&mut self, keys: &[Key]) {
        for key in keys {
            self.groups.remove(key);
        }
    }

    /// Closes the sockets of every listener `state` no longer has (removed,
    /// or never committed). A socket is free once the workers closed their
    /// copies too (they do when they remove the listener).
    pub(crate) fn release_absent(&mut self, state: &ConfigState) {
        let wanted: BTreeSet<Key> = wanted(state).into_iter().map(|(k, _)| k).collect();
        self.groups.retain(|key, _| {
            let keep = wanted.contains(key);
            if !keep {
                tracing::info!(address = %key.address, proxy = ?key.proxy(), "listening socket released");
            }
            keep
        });
    }

    /// Closes every socket the master holds (the proxy is stopping).
    pub(crate) fn release_all(&mut self) {
        self.groups.clear();
    }

    /// Every listener held.
    pub(crate) fn keys(&self) -> Vec<Key> {
        self.groups.keys().copied().collect()
    }

    /// The slot of worker `id`: its own, or the lowest one no live worker
    /// serves (`live`: the ids in the worker table).
    pub(crate) fn slot(&mut self, id: u32, live: &BTreeSet<u32>) -> usize {
        self.slots
            .retain(|worker, _| *worker == id || live.contains(worker));
        if let Some(slot) = self.slots.get(&id) {
            return *slot;
        }
        let used: BTreeSet<usize> = self.slots.values().copied().collect();
        let slot = (0..self.workers)
            .find(|s| !used.contains(s))
            .unwrap_or(id as usize % self.workers);
        self.slots.insert(id, slot);
        slot
    }

    /// Worker `new` replaced worker `old` (upgrade): it serves the same
    /// slot (the old one keeps it while it drains).
    pub(crate) fn succeed(&mut self, old: u32, new: u32) {
        if let Some(slot) = self.slots.get(&old).copied() {
            self.slots.insert(new, slot);
        }
    }

    /// The manifest and the sockets of `keys` for `slot`.
    fn for_slot(&self, keys: &[Key], slot: usize) -> (ListenSocketManifest, Vec<BorrowedFd<'_>>) {
        let mut entries = Vec::new();
        let mut fds = Vec::new();
        for key in keys {
            let Some(group) = self.groups.get(key) else {
                continue;
            };
            let fd = group.get(slot).or_else(|| group.first());
            if let Some(fd) = fd {
                entries.push(ListenSocketEntry {
                    address: key.address.into(),
                    proxy: key.proxy,
                });
                fds.push(fd.as_fd());
            }
        }
        (ListenSocketManifest { entries }, fds)
    }

    /// The handover of an in-place upgrade (the caller clears the
    /// close-on-exec flag of [`Handover::fds`] just before the exec).
    pub(crate) fn handover(&self) -> Handover {
        let groups = self
            .groups
            .iter()
            .map(|(key, group)| HandoverGroup {
                proxy: key.proxy,
                address: key.address,
                fds: group.iter().map(|fd| fd.as_raw_fd()).collect(),
            })
            .collect();
        Handover {
            groups,
            slots: self.slots.iter().map(|(id, slot)| (*id, *slot)).collect(),
        }
    }

    /// The new master's side: takes the inherited sockets.
    pub(crate) fn resume(workers: usize, handover: Handover) -> std::io::Result<Self> {
        let mut sockets = ListenSockets::new(workers);
        for group in handover.groups {
            let mut fds = Vec::with_capacity(group.fds.len());
            for fd in group.fds {
                set_cloexec(fd)?;
                // SAFETY: inherited across the exec from the previous
                // master, which listed it once; owned here from now on.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
            let proxy = ListenerType::try_from(group.proxy).unwrap_or(ListenerType::Udp);
            sockets.groups.insert(Key::new(proxy, group.address), fds);
        }
        sockets.slots = handover.slots.into_iter().collect();
        Ok(sockets)
    }
}

fn adopt_order(manifest: ListenSocketManifest) -> Request {
    Request {
        request_type: Some(RequestType::AdoptListenSockets(AdoptListenSockets {
            manifest,
            flows_follow: None,
        })),
    }
}

impl Master {
    fn live_worker_ids(&self) -> BTreeSet<u32> {
        self.workers.keys().copied().collect()
    }

    /// The `adopt_listen_sockets` order that starts worker `id`'s boot
    /// (every held listener, its slot's sockets), if there is any socket.
    pub(super) fn boot_adopt_order(&mut self, id: u32) -> Option<Request> {
        let live = self.live_worker_ids();
        let slot = self.listen_sockets.slot(id, &live);
        let keys = self.listen_sockets.keys();
        let (manifest, _) = self.listen_sockets.for_slot(&keys, slot);
        (!manifest.entries.is_empty()).then(|| adopt_order(manifest))
    }

    /// Writes worker `id`'s sockets of `keys` on its fd-passing socket; the
    /// matching `adopt_listen_sockets` order is (or will be) on its
    /// channel, and the worker reads them when it reads that order. A
    /// failure is logged: the worker then refuses the orders that needed
    /// them, which the order's answer reports.
    pub(super) fn send_listen_sockets(&mut self, id: u32, keys: &[Key]) {
        let live = self.live_worker_ids();
        let slot = self.listen_sockets.slot(id, &live);
        let Some(worker) = self.workers.get(&id) else {
            return;
        };
        let (manifest, fds) = self.listen_sockets.for_slot(keys, slot);
        if manifest.entries.is_empty() {
            return;
        }
        let sent = worker
            .scm
            .set_timeout(Some(self.config.worker_timeout))
            .and_then(|()| worker.scm.send_listen_sockets(&manifest, &fds));
        if let Err(error) = sent {
            tracing::error!(worker = id, %error, "cannot pass the listening sockets");
        }
    }

    /// Passes the sockets of newly bound listeners to every worker that
    /// receives orders, ahead of the order that adds them.
    pub(super) fn pass_listen_sockets(&mut self, keys: &[Key], now: Instant) {
        if keys.is_empty() {
            return;
        }
        let ids: Vec<u32> = self
            .workers
            .values()
            .filter(|w| w.receives_orders())
            .map(|w| w.id)
            .collect();
        for id in ids {
            let live = self.live_worker_ids();
            let slot = self.listen_sockets.slot(id, &live);
            let (manifest, _) = self.listen_sockets.for_slot(keys, slot);
            let order: OrderId = self.gather.open(
                // A worker that cannot adopt them is restarted: it boots
                // with every held socket.
                Purpose::Repair {
                    name: "adopt_listen_sockets",
                },
                now,
                Some(self.config.worker_timeout),
            );
            self.send_to_worker(order, id, vec![adopt_order(manifest)]);
            self.send_listen_sockets(id, keys);
            self.pump_worker(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(ids: &[u32]) -> BTreeSet<u32> {
        ids.iter().copied().collect()
    }

    #[test]
    fn workers_get_distinct_slots_keep_them_on_restart_and_pass_them_on_upgrade() {
        let mut sockets = ListenSockets::new(2);
        assert_eq!(sockets.slot(0, &live(&[0])), 0);
        assert_eq!(sockets.slot(1, &live(&[0, 1])), 1);
        // A restart keeps the id, so the slot.
        assert_eq!(sockets.slot(1, &live(&[0, 1])), 1);
        // Worker 2 replaces worker 0 (upgrade): same slot, even while 0
        // drains and after it is gone.
        sockets.succeed(0, 2);
        assert_eq!(sockets.slot(2, &live(&[0, 1, 2])), 0);
        assert_eq!(sockets.slot(2, &live(&[1, 2])), 0);
        // A worker id never seen takes the slot nobody live serves.
        let mut sockets = ListenSockets::new(2);
        sockets.slot(0, &live(&[0]));
        sockets.slot(1, &live(&[0, 1]));
        assert_eq!(sockets.slot(5, &live(&[1, 5])), 0);
    }

    #[test]
    fn a_new_listener_binds_once_and_release_absent_follows_the_state() {
        let mut sockets = ListenSockets::new(2);
        let holder = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let taken = holder.local_addr().unwrap();
        drop(holder);
        let add = Request {
            request_type: Some(RequestType::AddUdpListener(
                sozu_command_lib::command::UdpListenerConfig {
                    address: taken.into(),
                    ..Default::default()
                },
            )),
        };
        let mut after = ConfigState::new();
        after.dispatch(&add).unwrap();
        let bound = sockets.bind_missing(&after).unwrap();
        assert_eq!(bound.len(), 1);
        assert_eq!(sockets.groups[&bound[0]].len(), 2, "one socket per worker");
        // Held: binding the same state again binds nothing.
        assert!(sockets.bind_missing(&after).unwrap().is_empty());
        // The state does not have it: released, and the port is free.
        sockets.release_absent(&ConfigState::new());
        assert!(sockets.keys().is_empty());
        assert!(std::net::UdpSocket::bind(taken).is_ok());
    }
}
