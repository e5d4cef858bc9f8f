//! The UDP side of a worker: every UDP listener, the cluster knobs they
//! apply, and the orders that change them.
//!
//! Owns the listener slab (index ↔ address), each UDP cluster's knobs and
//! the shared receive batch. Health probes and the shared part of cluster
//! and backend orders (algorithm, health block, backends, with their own
//! error type) are not here: see `crate::health::prober` and
//! `server/clusters.rs`. Applies orders the
//! worker's `ConfigState` has already accepted; refuses only what cannot be
//! done on this host (a bind error, a knob the core cannot express), with a
//! typed [`UdpError`]. It never reads the control channel and never reads
//! the clock (`now` comes from the event loop).

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::os::fd::{BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use slab::Slab;
use sozu_command_lib::command::{
    self, Cluster, RemoveBackend, RequestUdpFrontend, UdpListenerConfig, UpdateUdpListenerConfig,
};
use sozu_command_lib::limits::DEFAULT_QUIC_CID_LENGTH;
use sozu_command_lib::proto::convert::{wire_address, FieldAddressError};

use super::access_log::FlowCloseReason;
use super::budget::{FlowPool, Member, PoolLimits};
use super::ledger::ListenerLedger;
use super::listener::{Frontend, IoContext, UdpListener};
use super::metrics::ListenerMetrics;
use super::mmsg::RecvBatch;
use super::socket::{adopt_listener, bind_listener, ListenerSocketOptions, SourceAddresses};
use super::UdpToken;
use crate::backends::{Backend, BackendId, ClusterId};
use crate::metrics::{names, MetricHandle, MetricKind, Scope};
use crate::protocol::udp::{
    self as core, AffinityKey, CloseReason, UdpFlowManager, UdpFlowManagerConfig,
};

/// Largest `max_rx_datagram_size` accepted: the largest UDP payload.
pub(crate) const MAX_DATAGRAM_SIZE: u32 = sozu_command_lib::limits::MAX_RX_DATAGRAM_SIZE;

/// What [`UdpShell::add_listener`] and [`UdpShell::update_listener`] refuse
/// in a listener's settings (not its bind): the master checks a listener's
/// resulting configuration with it before changing its state.
pub fn check_listener(config: &UdpListenerConfig) -> Result<(), UdpError> {
    let address = wire_address("address", &config.address)?;
    manager_config(address, config, 1, 0).map(|_| ())
}

/// What a cluster's UDP knobs may be refused for, checked without a shell;
/// the whole cluster order is checked by `server::check_cluster`.
pub(crate) fn check_cluster(cluster: &Cluster) -> Result<(), UdpError> {
    cluster_settings(cluster).map(|_| ())
}

/// An order the UDP shell cannot carry out.
#[derive(Debug, thiserror::Error)]
pub enum UdpError {
    /// A wire address is not a socket address.
    #[error(transparent)]
    Address(#[from] FieldAddressError),
    /// No UDP listener at this address in this worker.
    #[error("no UDP listener at {address}")]
    UnknownListener {
        /// The address asked for.
        address: SocketAddr,
    },
    /// A UDP listener already exists at this address.
    #[error("a UDP listener already exists at {address}")]
    ListenerExists {
        /// The listener's address.
        address: SocketAddr,
    },
    /// Binding (or adopting) the listener socket failed.
    #[error("cannot bind the UDP listener {address}")]
    Bind {
        /// The listener's address.
        address: SocketAddr,
        /// The socket error.
        #[source]
        source: io::Error,
    },
    /// Registering a socket with the event loop failed.
    #[error("cannot register the UDP listener {address} with the event loop")]
    Register {
        /// The listener's address.
        address: SocketAddr,
        /// The registry error.
        #[source]
        source: io::Error,
    },
    /// A listener or cluster knob out of range.
    #[error("{field} = {value}: {reason}")]
    InvalidValue {
        /// The knob.
        field: &'static str,
        /// Its value, as written.
        value: String,
        /// Why it is refused.
        reason: &'static str,
    },
}

#[derive(Debug, Clone)]
struct ClusterSettings {
    config: core::ClusterConfig,
    keep_flows_on_backend_removal: bool,
}

/// The UDP listeners of a worker and what they need.
#[derive(Debug)]
pub(crate) struct UdpShell {
    pub(super) listeners: Slab<UdpListener>,
    pub(super) by_address: HashMap<SocketAddr, usize>,
    clusters: HashMap<String, ClusterSettings>,
    recv: RecvBatch,
    seed: u64,
    /// Key of every listener's affinity hash: fleet-wide, not per process.
    hash_seed: u64,
    /// The worker-wide flow budget every listener draws from.
    pool: FlowPool,
    /// `upstream_source_addresses`, given to every listener added.
    sources: SourceAddresses,
    adopted: HashMap<SocketAddr, OwnedFd>,
    /// Run by a master: listener sockets come from it, never from `bind`.
    require_adopted: bool,
    draining: bool,
    buffer_size: usize,
    /// Backends removed from a `keep_flows_on_backend_removal` cluster,
    /// with their `udp.active_flows` gauge: their metrics stay until their
    /// last flow ends.
    retired_backends: Vec<(ClusterId, crate::backends::BackendId, MetricHandle)>,
    /// Flows handed over by the predecessor, waiting for `adopt_flows`
    /// (see `super::handover`).
    pub(super) pending_flows: Vec<(command::HandedOverFlow, OwnedFd)>,
    /// Listeners not read until `adopt_flows` (a flow handover is under
    /// way); `None`: no handover.
    pub(super) held: Option<Vec<usize>>,
    /// Every listener's next deadline and pool share, filed as it changes:
    /// a wake-up costs O(log listeners), not a walk of them all.
    ledger: ListenerLedger,
    /// An order ran since the ledger was last filed: every listener is
    /// filed again (and flushed) before the next event is handled.
    pub(super) stale: bool,
    /// Listeners that got an event this loop turn: their client-bound
    /// datagrams leave, and they are filed again, in `flush`.
    to_flush: Vec<usize>,
    /// Scratch for `on_timeout`: the listeners due this turn.
    due: Vec<usize>,
}

impl UdpShell {
    /// An empty shell. `seed` (per-process random) keys each listener's flow
    /// table hasher (mixed with its address); the affinity hash is keyed by
    /// the default hash seed until [`Self::set_hash_seed`]; `fd_limit` is the
    /// soft `RLIMIT_NOFILE`, which sizes the flow pool until
    /// [`Self::set_pool_limits`] gives the whole picture; `adopted` are
    /// listener sockets passed by the master,
    /// used instead of binding when their listener is added;
    /// `buffer_size` clamps `max_rx_datagram_size` (`0`: no clamp).
    pub(crate) fn new(
        seed: u64,
        fd_limit: u64,
        adopted: Vec<(SocketAddr, OwnedFd)>,
        buffer_size: usize,
    ) -> Self {
        UdpShell {
            listeners: Slab::new(),
            by_address: HashMap::new(),
            clusters: HashMap::new(),
            recv: RecvBatch::new(1501),
            seed,
            hash_seed: crate::protocol::udp::DEFAULT_HASH_SEED,
            pool: FlowPool::new(PoolLimits::from_fd_limit(fd_limit).capacity()),
            sources: SourceAddresses::default(),
            adopted: adopted.into_iter().collect(),
            require_adopted: false,
            draining: false,
            buffer_size,
            retired_backends: Vec::new(),
            pending_flows: Vec::new(),
            held: None,
            ledger: ListenerLedger::default(),
            stale: false,
            to_flush: Vec::new(),
            due: Vec::new(),
        }
    }

    /// From now on a listener is only served on a socket passed by the
    /// master (see `crate::listen_socket`); activating one without fails.
    pub(crate) fn require_adopted(&mut self) {
        self.stale = true;
        self.require_adopted = true;
    }

    /// Closes an adopted socket no listener took (its listener was removed
    /// before it was activated, or its add failed).
    pub(crate) fn forget_adopted(&mut self, address: SocketAddr) {
        self.stale = true;
        self.adopted.remove(&address);
    }

    /// Sets the affinity hash key (`hash_seed`) of the listeners added from
    /// now on. It never mixes in the listener address, the worker or the
    /// process: a client maps to the same backend wherever it lands.
    pub(crate) fn set_hash_seed(&mut self, hash_seed: u64) {
        self.stale = true;
        self.hash_seed = hash_seed;
    }

    /// Sizes the worker-wide flow pool (fd limit, ephemeral port range,
    /// workers sharing it, upstream source addresses).
    pub(crate) fn set_pool_limits(&mut self, limits: PoolLimits) {
        self.stale = true;
        self.pool = FlowPool::new(limits.capacity());
        tracing::info!(
            flows = self.pool.capacity(),
            fd_limit = limits.fd_limit,
            ephemeral_ports = ?limits.ephemeral_ports,
            workers = limits.workers,
            source_addresses = limits.source_addresses,
            "UDP flow pool"
        );
    }

    /// Binds the upstream sockets of listeners added from now on to these
    /// addresses in turn (`upstream_source_addresses`, set at start).
    pub(crate) fn set_source_addresses(&mut self, sources: SourceAddresses) {
        self.stale = true;
        self.sources = sources;
    }

    /// Adds sockets adopted during an upgrade (used by later adds).
    pub(crate) fn adopt(&mut self, sockets: Vec<(SocketAddr, OwnedFd)>) {
        self.stale = true;
        self.adopted.extend(sockets);
    }

    // ----- listeners -----

    /// Adds a listener (and binds it if the config says `active`).
    pub(crate) fn add_listener(
        &mut self,
        now: Instant,
        config: &UdpListenerConfig,
        ctx: &mut IoContext<'_>,
    ) -> Result<(), UdpError> {
        self.stale = true;
        let address = wire_address("address", &config.address)?;
        if self.by_address.contains_key(&address) {
            return Err(UdpError::ListenerExists { address });
        }
        let mut manager_config = manager_config(address, config, 1, self.buffer_size)?;
        manager_config.hash_seed = self.hash_seed;
        let id = self.listeners.vacant_key();
        let seed = self.seed ^ crate::load_balancing::stable_hash(address.to_string().as_bytes());
        let manager = UdpFlowManager::new(manager_config, seed);
        let metrics = ListenerMetrics::register(ctx.metrics, address);
        let listener = UdpListener::new(
            id,
            *config,
            address,
            manager,
            config.max_flows == 0,
            metrics,
        );
        self.listeners.insert(listener);
        // The IDs of `DNS_ID` queries on the wire derive from the secret
        // per-process seed (never from `hash_seed`, which is configured).
        self.listeners[id].set_dns_seed(seed ^ 0xd15e_1d00);
        self.listeners[id].sources = self.sources.clone();
        self.by_address.insert(address, id);
        // A real cap from the start (refreshed before every read).
        self.refresh_cap(id);
        if self.draining {
            self.listeners[id].manager.drain(now);
        }
        if config.active {
            if let Err(e) = self.activate(address, ctx) {
                self.remove_listener(now, address, ctx)?;
                return Err(e);
            }
        }
        Ok(())
    }

    /// Patches a listener's timeouts, `max_rx_datagram_size` and
    /// `max_flows` in place (no re-bind; live flows keep their timers).
    pub(crate) fn update_listener(
        &mut self,
        update: &UpdateUdpListenerConfig,
        ctx: &mut IoContext<'_>,
    ) -> Result<(), UdpError> {
        self.stale = true;
        let address = wire_address("address", &update.address)?;
        let id = self.listener_id(address)?;
        let mut config = self.listeners[id].config;
        sozu_command_lib::state::patch_udp_listener(&mut config, update);
        let checked = manager_config(address, &config, 1, self.buffer_size)?;
        let listener = &mut self.listeners[id];
        listener
            .manager
            .set_default_timeouts(checked.front_timeout, checked.back_timeout);
        listener
            .manager
            .set_max_rx_datagram_size(checked.max_rx_datagram_size);
        listener.auto_max_flows = config.max_flows == 0;
        listener.config = config;
        listener.resize_buffers(ctx);
        self.refresh_cap(id);
        Ok(())
    }

    /// Binds (or adopts) the listener's socket if needed and starts reading.
    pub(crate) fn activate(
        &mut self,
        address: SocketAddr,
        ctx: &mut IoContext<'_>,
    ) -> Result<(), UdpError> {
        self.stale = true;
        let id = self.listener_id(address)?;
        let listener = &mut self.listeners[id];
        if !listener.has_socket() {
            let options = socket_options(&listener.config);
            let socket = match self.adopted.remove(&address) {
                Some(fd) => adopt_listener(fd, address, options),
                None if self.require_adopted => Err(crate::listen_socket::not_passed(address)),
                None => bind_listener(address, options),
            }
            .map_err(|source| UdpError::Bind { address, source })?;
            listener.attach_socket(socket);
        }
        if let Some(held) = self.held.as_mut() {
            // Read once the handed-over flows are adopted.
            held.push(id);
            tracing::info!(listener = %address, "UDP listener held until the flow handover ends");
            return Ok(());
        }
        listener
            .start_reading(ctx)
            .map_err(|source| UdpError::Register { address, source })?;
        tracing::info!(listener = %address, local = ?listener.local_addr(), "UDP listener active");
        Ok(())
    }

    /// Stops reading the listener (socket kept bound) and closes its flows.
    pub(crate) fn deactivate(
        &mut self,
        now: Instant,
        address: SocketAddr,
        ctx: &mut IoContext<'_>,
    ) -> Result<(), UdpError> {
        self.stale = true;
        let id = self.listener_id(address)?;
        self.unhold(id);
        let listener = &mut self.listeners[id];
        listener.stop_reading(ctx);
        listener.close_all(now, FlowCloseReason::ListenerClosed, ctx);
        tracing::info!(listener = %address, "UDP listener deactivated");
        Ok(())
    }

    /// Closes the listener's flows and socket and forgets it.
    pub(crate) fn remove_listener(
        &mut self,
        now: Instant,
        address: SocketAddr,
        ctx: &mut IoContext<'_>,
    ) -> Result<(), UdpError> {
        self.stale = true;
        let id = self.listener_id(address)?;
        self.unhold(id);
        let mut listener = self.listeners.remove(id);
        self.by_address.remove(&address);
        listener.stop_reading(ctx);
        listener.close_all(now, FlowCloseReason::ListenerClosed, ctx);
        listener.release_socket(ctx);
        listener.metrics.unregister(ctx.metrics);
        tracing::info!(listener = %address, "UDP listener removed");
        Ok(())
    }

    /// A held listener deactivated or removed is not read at the end of the
    /// flow handover (its slab index may be reused).
    fn unhold(&mut self, id: usize) {
        if let Some(held) = self.held.as_mut() {
            held.retain(|&i| i != id);
        }
    }

    /// Sets (or clears) the frontend of the listener at the order's address.
    pub(crate) fn set_frontend(
        &mut self,
        now: Instant,
        frontend: &RequestUdpFrontend,
        add: bool,
    ) -> Result<(), UdpError> {
        self.stale = true;
        let address = wire_address("address", &frontend.address)?;
        let id = self.listener_id(address)?;
        let listener = &mut self.listeners[id];
        listener.one_way_stale = true;
        if add {
            listener.frontend = Some(Frontend {
                cluster: ClusterId::from(frontend.cluster_id.as_str()),
                tags: frontend.tags.clone(),
            });
            let config = self
                .clusters
                .get(&frontend.cluster_id)
                .map(|c| c.config.clone())
                .unwrap_or_else(|| {
                    core::ClusterConfig::new(core::ClusterId::new(&frontend.cluster_id))
                });
            listener.manager.set_cluster(now, Some(config));
        } else {
            listener.frontend = None;
            listener.manager.set_cluster(now, None);
        }
        Ok(())
    }

    // ----- clusters and backends -----

    /// Adds or reconfigures a cluster's UDP knobs (new flows only). The
    /// shared part of the order (balancing, health checks, fail-open) is
    /// applied by the loop first (`server/clusters.rs`).
    pub(crate) fn set_cluster(
        &mut self,
        now: Instant,
        cluster: &Cluster,
        ctx: &mut IoContext<'_>,
    ) -> Result<(), UdpError> {
        self.stale = true;
        let settings = cluster_settings(cluster)?;
        let id = cluster.cluster_id.as_str();
        for (_, listener) in self.listeners.iter_mut() {
            if listener
                .frontend
                .as_ref()
                .is_some_and(|f| f.cluster.as_str() == id)
            {
                listener
                    .manager
                    .set_cluster(now, Some(settings.config.clone()));
                listener.sync_one_way(ctx);
            }
        }
        self.clusters.insert(id.to_owned(), settings);
        Ok(())
    }

    /// Removes a cluster whose `removed` backends the loop already took
    /// away: listeners sending to it stop admitting (no cluster) and the
    /// backends' flows close (unless the cluster kept them).
    pub(crate) fn remove_cluster(
        &mut self,
        now: Instant,
        cluster_id: &str,
        removed: &[Backend],
        ctx: &mut IoContext<'_>,
    ) {
        self.stale = true;
        let keep = self
            .clusters
            .remove(cluster_id)
            .is_some_and(|c| c.keep_flows_on_backend_removal);
        for (_, listener) in self.listeners.iter_mut() {
            if listener
                .frontend
                .as_ref()
                .is_some_and(|f| f.cluster.as_str() == cluster_id)
            {
                listener.frontend = None;
                listener.manager.set_cluster(now, None);
                listener.sync_one_way(ctx);
            }
            if !keep {
                for backend in removed {
                    listener.manager.abort_backend(
                        now,
                        &core::BackendId::new(backend.id().as_str()),
                        CloseReason::BackendRemoved,
                    );
                }
                listener.drain(now, ctx);
            }
        }
    }

    /// A backend was added (or added again): its metrics are live again.
    /// Refuses a backend whose QUIC-LB server ID has not the length its
    /// cluster's QUIC-LB configuration gives (it could never be routed to).
    pub(crate) fn check_backend(&self, order: &command::AddBackend) -> Result<(), UdpError> {
        let (Some(raw), Some(lb)) = (
            order.quic_lb_server_id.as_deref(),
            self.clusters
                .get(&order.cluster_id)
                .and_then(|c| c.config.quic_lb),
        ) else {
            return Ok(());
        };
        if raw.len() != usize::from(lb.server_id_len()) {
            return Err(UdpError::InvalidValue {
                field: "quic_lb_server_id",
                value: raw.iter().map(|b| format!("{b:02x}")).collect(),
                reason: "its length is not the cluster's quic_lb_server_id_length",
            });
        }
        Ok(())
    }

    pub(crate) fn backend_added(&mut self, cluster: &ClusterId, backend: &BackendId) {
        self.stale = true;
        self.retired_backends
            .retain(|(c, b, _)| !(c == cluster && b == backend));
    }

    /// A backend the loop removed: its flows close with BackendRemoved
    /// unless the cluster keeps them.
    pub(crate) fn remove_backend(
        &mut self,
        now: Instant,
        order: &RemoveBackend,
        ctx: &mut IoContext<'_>,
    ) {
        self.stale = true;
        let keep = self
            .clusters
            .get(&order.cluster_id)
            .is_some_and(|c| c.keep_flows_on_backend_removal);
        // One-way sockets carry no flow to keep: a removed backend's goes.
        for (_, listener) in self.listeners.iter_mut() {
            listener.forget_one_way_backend(&order.cluster_id, &order.backend_id, ctx);
        }
        let cluster = ClusterId::from(order.cluster_id.as_str());
        let backend = BackendId::from(order.backend_id.as_str());
        if keep {
            // Its kept flows still count under the backend (so under the
            // cluster's `udp.active_flows`, as they do under the
            // listener's) until the last one ends: see `sweep_retired`.
            retire_backend(&mut self.retired_backends, ctx, cluster, backend);
        } else {
            ctx.metrics.remove_scope(&Scope::Backend(cluster, backend));
        }
        if !keep {
            let backend = core::BackendId::new(&order.backend_id);
            for (_, listener) in self.listeners.iter_mut() {
                listener
                    .manager
                    .abort_backend(now, &backend, CloseReason::BackendRemoved);
                listener.drain(now, ctx);
            }
        }
    }

    // ----- stopping -----

    /// Soft-stop: every listener stops admitting new flows; live flows go
    /// on until they end by themselves.
    ///
    /// A listener whose socket was handed to the master
    /// ([`Self::mark_sockets_returned`]) also stops reading: the socket is
    /// shared with the successor worker, which must get every new source
    /// (this one would shed them). Its live flows keep their replies (read on
    /// their upstream sockets, sent on the shared socket); their clients'
    /// datagrams now reach the successor.
    pub(crate) fn soft_stop(&mut self, now: Instant, ctx: &mut IoContext<'_>) {
        self.stale = true;
        self.draining = true;
        for (_, listener) in self.listeners.iter_mut() {
            listener.manager.drain(now);
            if listener.socket_returned {
                listener.send_only(ctx);
            }
        }
    }

    /// Records that every bound listener socket was just passed to the
    /// master (`return_listen_sockets`): a later soft-stop leaves reading
    /// them to the successor.
    pub(crate) fn mark_sockets_returned(&mut self) {
        self.stale = true;
        for (_, listener) in self.listeners.iter_mut() {
            if listener.has_socket() {
                listener.socket_returned = true;
            }
        }
    }

    /// True when no listener has a live flow left.
    pub(crate) fn is_drained(&self) -> bool {
        self.listeners
            .iter()
            .all(|(_, l)| l.manager.active_flows() == 0 && l.dns_pending() == 0)
    }

    /// Hard-stop: closes every flow now.
    pub(crate) fn hard_stop(&mut self, now: Instant, ctx: &mut IoContext<'_>) {
        self.stale = true;
        for (_, listener) in self.listeners.iter_mut() {
            listener.close_all(now, FlowCloseReason::Shutdown, ctx);
        }
    }

    // ----- event loop -----

    /// The earliest deadline of any listener's flows or `DNS_ID` queries.
    pub(crate) fn next_deadline(&mut self) -> Option<Instant> {
        self.refile_if_stale();
        #[cfg(debug_assertions)]
        self.check_ledger();
        self.ledger.next_deadline()
    }

    /// Expires due flows and queries, on the listeners that have some.
    pub(crate) fn on_timeout(&mut self, now: Instant, ctx: &mut IoContext<'_>) {
        self.refile_if_stale();
        // Collected first: each due listener runs once per turn, even if
        // its next deadline is already past again.
        while let Some(id) = self.ledger.pop_due(now) {
            self.due.push(id);
        }
        for i in 0..self.due.len() {
            let id = self.due[i];
            if let Some(listener) = self.listeners.get_mut(id) {
                listener.on_timeout(now, ctx);
            }
            self.refile(id);
        }
        self.due.clear();
    }

    /// Sends the batch of client-bound datagrams of every listener that
    /// got an event this turn: called once per loop wake-up, after its
    /// events, so the replies read in it leave in one `sendmmsg` per
    /// listener instead of one per readiness event.
    pub(crate) fn flush(&mut self, ctx: &mut IoContext<'_>) {
        self.refile_if_stale();
        self.to_flush.sort_unstable();
        self.to_flush.dedup();
        for i in 0..self.to_flush.len() {
            let id = self.to_flush[i];
            if let Some(listener) = self.listeners.get_mut(id) {
                listener.flush_returns(ctx);
            }
            self.refile(id);
        }
        self.to_flush.clear();
        self.sweep_retired(ctx);
    }

    /// Files listener `id` as it is now.
    fn refile(&mut self, id: usize) {
        self.ledger.file(id, self.listeners.get(id).map(filing));
    }

    /// After orders: files every listener again, and flushes them all at
    /// the end of the turn (O(listeners), once per batch of orders).
    fn refile_if_stale(&mut self) {
        if !self.stale {
            return;
        }
        self.stale = false;
        self.ledger.clear();
        for (id, listener) in self.listeners.iter() {
            self.ledger.file(id, Some(filing(listener)));
            self.to_flush.push(id);
        }
    }

    /// Debug builds: the ledger says what a walk of every listener says.
    #[cfg(debug_assertions)]
    fn check_ledger(&self) {
        for (id, listener) in self.listeners.iter() {
            assert_eq!(
                self.ledger.filed(id),
                Some(filing(listener)),
                "listener {id} ({}) filed out of date",
                listener.address
            );
        }
        assert_eq!(self.ledger.filed_count(), self.listeners.len());
        let total = super::budget::Others::sum(self.listeners.iter().map(|(_, l)| pool_member(l)));
        assert_eq!(self.ledger.total(), total);
    }

    /// Drops the metrics of removed backends whose kept flows have all
    /// ended.
    fn sweep_retired(&mut self, ctx: &mut IoContext<'_>) {
        if self.retired_backends.is_empty() {
            return;
        }
        self.retired_backends.retain(|(cluster, backend, active)| {
            if ctx.metrics.gauge(*active).unwrap_or(0) > 0 {
                return true;
            }
            ctx.metrics
                .remove_scope(&Scope::Backend(cluster.clone(), backend.clone()));
            false
        });
    }

    /// A readiness event for one of the shell's sockets.
    pub(crate) fn on_ready(
        &mut self,
        now: Instant,
        token: UdpToken,
        readable: bool,
        writable: bool,
        ctx: &mut IoContext<'_>,
    ) {
        self.refile_if_stale();
        let id = match token {
            UdpToken::Listener(id)
            | UdpToken::Upstream { listener: id, .. }
            | UdpToken::DnsMux { listener: id, .. }
            | UdpToken::OneWay { listener: id, .. } => id,
        };
        match token {
            UdpToken::Listener(id) => {
                let Some(listener) = self.listeners.get_mut(id) else {
                    return;
                };
                if writable {
                    listener.on_writable(ctx);
                }
                if readable {
                    self.refresh_cap(id);
                    self.listeners[id].on_readable(now, &mut self.recv, ctx);
                }
            }
            UdpToken::Upstream { listener, flow } => {
                if let Some(listener) = self.listeners.get_mut(listener) {
                    listener.on_upstream_ready(now, flow, readable, writable, ctx);
                }
            }
            UdpToken::DnsMux { listener, slot } => {
                if let Some(listener) = self.listeners.get_mut(listener) {
                    if readable {
                        listener.on_dns_readable(now, slot, ctx);
                    }
                }
            }
            UdpToken::OneWay { listener, slot } => {
                if let Some(listener) = self.listeners.get_mut(listener) {
                    if readable {
                        listener.on_one_way_readable(now, slot, ctx);
                    }
                }
            }
        }
        self.refile(id);
        if self.to_flush.last() != Some(&id) {
            self.to_flush.push(id);
        }
    }

    // ----- queries -----

    fn listener_id(&self, address: SocketAddr) -> Result<usize, UdpError> {
        self.by_address
            .get(&address)
            .copied()
            .ok_or(UdpError::UnknownListener { address })
    }

    /// The listener serving `address` (tests look at its state).
    #[cfg(test)]
    pub(crate) fn listener(&self, address: SocketAddr) -> Option<&UdpListener> {
        self.by_address.get(&address).map(|&i| &self.listeners[i])
    }

    /// The bound sockets, with their configured addresses, for passing to
    /// the master.
    pub(crate) fn listen_sockets(&self) -> Vec<(SocketAddr, BorrowedFd<'_>)> {
        self.listeners
            .iter()
            .filter_map(|(_, l)| l.socket_fd().map(|fd| (l.address, fd)))
            .collect()
    }

    /// Live flows over every listener.
    pub(crate) fn active_flows(&self) -> usize {
        self.listeners
            .iter()
            .map(|(_, l)| l.manager.active_flows())
            .sum()
    }

    /// Gives listener `id`'s flow manager the cap its pool allowance
    /// allows right now (its live flows plus the new flows it may admit):
    /// called before each read of its socket, so a batch admits at most
    /// what the pool granted and the next batch sees every other
    /// listener's flows.
    fn refresh_cap(&mut self, id: usize) {
        let Some(listener) = self.listeners.get(id) else {
            return;
        };
        let me = pool_member(listener);
        let others = self.ledger.others(id);
        let cap = self.pool.cap_for(me, others);
        let listener = &mut self.listeners[id];
        if listener.manager.config().max_flows != cap {
            listener.manager.set_max_flows(cap);
        }
    }
}

/// What the ledger files of a listener: its pool share and next deadline.
fn filing(listener: &UdpListener) -> (Member, Option<Instant>) {
    (pool_member(listener), listener.poll_timeout())
}

/// A listener as the flow pool sees it.
fn pool_member(listener: &UdpListener) -> Member {
    Member {
        flows: listener.manager.active_flows(),
        cap: (!listener.auto_max_flows).then_some(listener.config.max_flows as usize),
        admitting: listener.is_reading(),
    }
}

/// The socket options a listener's configuration asks for (the master
/// binds with them; an adopting worker applies them again).
pub fn socket_options(config: &UdpListenerConfig) -> ListenerSocketOptions {
    let size = |v: Option<u32>| v.filter(|&v| v > 0).map(|v| v as usize);
    ListenerSocketOptions {
        recv_buffer_size: size(config.recv_buffer_size),
        send_buffer_size: size(config.send_buffer_size),
    }
}

/// The core's listener configuration from the wire one; `auto_max_flows`
/// stands in for `max_flows = 0` until the first read of the listener,
/// which sets the cap its pool allowance gives (`refresh_cap`).
fn manager_config(
    address: SocketAddr,
    config: &UdpListenerConfig,
    auto_max_flows: usize,
    buffer_size: usize,
) -> Result<UdpFlowManagerConfig, UdpError> {
    if config.max_rx_datagram_size == 0 || config.max_rx_datagram_size > MAX_DATAGRAM_SIZE {
        return Err(UdpError::InvalidValue {
            field: "max_rx_datagram_size",
            value: config.max_rx_datagram_size.to_string(),
            reason: "must be between 1 and 65507",
        });
    }
    for (field, value) in [
        ("front_timeout", config.front_timeout),
        ("back_timeout", config.back_timeout),
    ] {
        if value == 0 {
            return Err(UdpError::InvalidValue {
                field,
                value: value.to_string(),
                reason: "must be at least 1 second",
            });
        }
    }
    let mut manager = UdpFlowManagerConfig::new(address);
    manager.max_rx_datagram_size = config.max_rx_datagram_size as usize;
    // doc/configure.md: clamped to `buffer_size`.
    if buffer_size > 0 {
        manager.max_rx_datagram_size = manager.max_rx_datagram_size.min(buffer_size);
    }
    manager.front_timeout = Duration::from_secs(u64::from(config.front_timeout));
    manager.back_timeout = Duration::from_secs(u64::from(config.back_timeout));
    manager.max_flows = match config.max_flows {
        0 => auto_max_flows,
        n => n as usize,
    };
    Ok(manager)
}

/// The connection-ID length when the cluster keys flows by QUIC connection
/// ID (`None`: source-address keys).
pub(super) fn quic_cid_length(udp: &command::UdpClusterConfig) -> Result<Option<u8>, UdpError> {
    let quic = match udp.flow_key {
        None => false,
        Some(raw) => match command::UdpFlowKey::try_from(raw) {
            Ok(command::UdpFlowKey::SourceAddress) => false,
            Ok(command::UdpFlowKey::QuicConnectionId) => true,
            Ok(command::UdpFlowKey::DnsId) => false,
            Err(_) => {
                return Err(UdpError::InvalidValue {
                    field: "udp.flow_key",
                    value: raw.to_string(),
                    reason: "unknown flow key",
                })
            }
        },
    };
    if !quic {
        return Ok(None);
    }
    let raw = udp
        .quic_cid_length
        .unwrap_or(u32::from(DEFAULT_QUIC_CID_LENGTH));
    match u8::try_from(raw) {
        Ok(len) if (1..=core::MAX_CONNECTION_ID_LEN as u8).contains(&len) => Ok(Some(len)),
        _ => Err(UdpError::InvalidValue {
            field: "udp.quic_cid_length",
            value: raw.to_string(),
            reason: "a QUIC connection id is 1 to 20 bytes",
        }),
    }
}

/// A cluster's UDP knobs as the core takes them.
fn cluster_settings(cluster: &Cluster) -> Result<ClusterSettings, UdpError> {
    let mut config = core::ClusterConfig::new(core::ClusterId::new(&cluster.cluster_id));
    let mut keep = false;
    if let Some(udp) = &cluster.udp {
        config.affinity_key = match udp.affinity_key {
            None => AffinityKey::SourceIp,
            Some(raw) => match command::UdpAffinityKey::try_from(raw) {
                Ok(command::UdpAffinityKey::SourceIp) => AffinityKey::SourceIp,
                Ok(command::UdpAffinityKey::SourceIpPort) => AffinityKey::SourceIpPort,
                Err(_) => {
                    return Err(UdpError::InvalidValue {
                        field: "udp.affinity_key",
                        value: raw.to_string(),
                        reason: "unknown affinity key",
                    })
                }
            },
        };
        config.responses = udp.responses.and_then(NonZeroU32::new);
        config.requests = udp.requests.and_then(NonZeroU32::new);
        let seconds = |v: Option<u32>| {
            v.filter(|&s| s > 0)
                .map(|s| Duration::from_secs(u64::from(s)))
        };
        config.front_timeout = seconds(udp.front_timeout);
        config.back_timeout = seconds(udp.back_timeout);
        config.send_proxy_protocol = udp.send_proxy_protocol.unwrap_or(false);
        config.proxy_protocol_every_datagram = udp.proxy_protocol_every_datagram.unwrap_or(false);
        config.one_way = udp.one_way.unwrap_or(false);
        config.max_pending_datagrams = udp
            .max_pending_datagrams
            .and_then(|v| NonZeroUsize::new(v as usize));
        keep = udp.keep_flows_on_backend_removal.unwrap_or(false);
        config.quic_cid_length = quic_cid_length(udp)?;
        config.quic_lb = super::quic_lb::cluster_config(udp, config.quic_cid_length)?;
        config.dns_id = udp.flow_key == Some(command::UdpFlowKey::DnsId as i32);
        if config.dns_id && config.one_way {
            return Err(UdpError::InvalidValue {
                field: "udp.flow_key",
                value: "DNS_ID".to_owned(),
                reason: "a DNS_ID cluster returns answers: it cannot be one_way",
            });
        }
    }
    Ok(ClusterSettings {
        config,
        keep_flows_on_backend_removal: keep,
    })
}

/// Keeps a removed backend's metrics while it has kept flows (see
/// [`UdpShell::flush`]).
fn retire_backend(
    retired: &mut Vec<(ClusterId, crate::backends::BackendId, MetricHandle)>,
    ctx: &mut IoContext<'_>,
    cluster: ClusterId,
    backend: crate::backends::BackendId,
) {
    let scope = Scope::Backend(cluster.clone(), backend.clone());
    match ctx
        .metrics
        .register(names::ACTIVE_FLOWS, scope.clone(), MetricKind::Gauge)
    {
        Ok(active) => {
            if !retired
                .iter()
                .any(|(c, b, _)| *c == cluster && *b == backend)
            {
                retired.push((cluster, backend, active));
            }
        }
        Err(_) => ctx.metrics.remove_scope(&scope),
    }
}
