//! One UDP listener in the shell: its socket, its flow manager (the sans-io
//! core), the upstream socket of each flow, and its write queues.
//!
//! Owns the datapath of a listener: reading client datagrams in `recvmmsg`
//! batches under a per-wake-up budget, forwarding each run of one flow's
//! datagrams with one `sendmmsg` on its connected upstream socket (PROXY
//! header and payload as two iovecs, no copy), reading backend replies with
//! `recvmmsg` straight into the `sendmmsg` batch of client-bound datagrams
//! (sent once per loop wake-up or when full), and carrying out the core's
//! outputs (`drain`). Sockets are registered for writability only while a
//! queue waits, and a short `recvmmsg` ends a read (no call just to see
//! `EAGAIN`). It never decides admission, timers or caps (the core does)
//! and never allocates per datagram on an established flow: buffers are
//! reused, only a write queue under back-pressure copies.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{self, IoSlice};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::Instant;

use mio::{Interest, Registry, Token};
use sozu_command_lib::command::UdpListenerConfig;

use super::access_log::{FlowAccessRecord, FlowCloseReason};
use super::dns_mux::DnsMux;
use super::metrics::{cluster_flow_event, FlowMetrics, ListenerMetrics, ShellDrop};
use super::mmsg::{send_connected, send_connected_batch, RecvBatch, SendBatch};
use super::one_way::{OneWayContext, OneWaySockets};
use super::socket::{is_resource_exhaustion, register_readable, SourceAddresses};
use super::write_queue::{
    flush_batch, listener_interest, send_upstream, set_write_interest, QueuedReturn, Upstream,
    UpstreamSend,
};
use super::UdpToken;
use crate::backends::{BackendId, BackendMap, ClusterId};
use crate::health::HealthChecker;
use crate::metrics::{names, MetricsRegistry};
use crate::protocol::udp::{
    self as core, BackendDecision, ClientDecision, CloseReason, FlowId, MetricEvent, Output,
    UdpFlowManager, Via,
};
use crate::token_table::TokenTable;

/// Datagrams read from one socket per wake-up before the loop moves on to
/// the other sockets (it comes back at once: see `still_readable`).
pub const DATAGRAM_BUDGET: usize = 64;

/// Most client-bound datagrams queued on a listener whose socket would
/// block; newer ones are dropped (`udp.datagrams.dropped.queue_full`).
pub(crate) const MAX_LISTENER_QUEUE: usize = 1024;

/// Most backend-bound datagrams queued on one upstream socket that would
/// block.
pub(crate) const MAX_UPSTREAM_QUEUE: usize = 64;

/// Everything the datapath borrows from the worker for one call.
pub struct IoContext<'a> {
    /// The poll registry.
    pub registry: &'a Registry,
    /// The token table.
    pub tokens: &'a mut dyn TokenTable<UdpToken>,
    /// The metrics registry.
    pub metrics: &'a mut MetricsRegistry,
    /// Backends of every cluster.
    pub backends: &'a mut BackendMap,
    /// Health checks (fed passive failures).
    pub health: &'a mut HealthChecker,
    /// Tokens whose socket stopped at the budget before WouldBlock.
    pub still_readable: &'a mut Vec<Token>,
}

/// The frontend of a listener: its cluster and tags.
#[derive(Debug, Clone)]
pub struct Frontend {
    /// The cluster new flows join.
    pub cluster: ClusterId,
    /// Tags copied to access records.
    pub tags: BTreeMap<String, String>,
}

#[derive(Debug, Default)]
pub(super) struct FlowIo {
    /// The address the client sent to (packet info on a wildcard listener).
    pub(super) local: Option<IpAddr>,
    pub(super) cluster: Option<ClusterId>,
    pub(super) backend: Option<BackendId>,
    pub(super) upstream: Option<Upstream>,
    pub(super) metrics: FlowMetrics,
    /// Why the shell aborted the flow, for the access record.
    pub(super) abort: Option<FlowCloseReason>,
    /// A reply came back (clears a suspect backend once).
    pub(super) responded: bool,
    /// Counted in its backend's load (LEAST_LOADED / POWER_OF_TWO) since
    /// the backend was chosen; uncounted exactly once, at close or when the
    /// upstream socket cannot be opened.
    pub(super) counted: bool,
}

/// A follow-up input queued while draining, fed to the core afterwards.
#[derive(Debug)]
enum FollowUp {
    Resolve {
        flow: FlowId,
        backend: core::BackendId,
        addr: SocketAddr,
    },
    Abort {
        flow: FlowId,
        reason: FlowCloseReason,
    },
}

/// One UDP listener.
#[derive(Debug)]
pub struct UdpListener {
    /// Index in the shell's listener slab (in its tokens).
    pub id: usize,
    /// The configured address.
    pub address: SocketAddr,
    /// The configuration in force (after updates).
    pub config: UdpListenerConfig,
    /// The bound socket, once activated.
    socket: Option<mio::net::UdpSocket>,
    token: Option<Token>,
    /// The interest the socket is registered with (`None`: not registered).
    interest: Option<Interest>,
    /// Registered and read (activated, not deactivated).
    reading: bool,
    /// Whether `max_flows` is automatic (`0` in the config).
    pub auto_max_flows: bool,
    /// The sans-io core.
    pub manager: UdpFlowManager,
    pub(super) flows: HashMap<FlowId, FlowIo>,
    returns: SendBatch,
    overflow: VecDeque<QueuedReturn>,
    /// The frontend (cluster and tags), if any.
    pub frontend: Option<Frontend>,
    /// This listener's metric handles.
    pub metrics: ListenerMetrics,
    /// Reason given to flows closed by `close_all` (listener closed or
    /// worker shutdown).
    drain_reason: FlowCloseReason,
    followups: Vec<FollowUp>,
    /// The flow of the run of forwarded datagrams being gathered.
    run_flow: Option<FlowId>,
    /// That run: receive-batch index and PROXY header of each datagram
    /// (capacity for a whole batch, reserved once).
    forwards: Vec<(usize, Option<core::ProxyHeader>)>,
    /// The socket was passed to the master for a successor worker.
    pub socket_returned: bool,
    /// `upstream_source_addresses`, used in turn by new upstream sockets.
    pub sources: SourceAddresses,
    /// One socket per backend of a one-way cluster.
    one_way: OneWaySockets,
    /// The one-way datagrams of the receive batch being routed: socket
    /// slot, batch index, PROXY header (capacity for a batch, reserved
    /// once).
    one_way_run: Vec<(usize, usize, Option<core::ProxyHeader>)>,
    /// The frontend changed: one-way sockets of another cluster are closed
    /// at the next read (where the token table is at hand).
    pub one_way_stale: bool,
    /// The sockets and pending queries of a `DNS_ID` cluster.
    dns: DnsMux,
}

impl UdpListener {
    /// A listener with no socket yet (see [`Self::attach_socket`]).
    pub fn new(
        id: usize,
        config: UdpListenerConfig,
        address: SocketAddr,
        manager: UdpFlowManager,
        auto_max_flows: bool,
        metrics: ListenerMetrics,
    ) -> Self {
        let buffer_len = manager.config().max_rx_datagram_size + 1;
        UdpListener {
            id,
            address,
            config,
            socket: None,
            token: None,
            interest: None,
            reading: false,
            auto_max_flows,
            manager,
            flows: HashMap::new(),
            returns: SendBatch::new(buffer_len),
            overflow: VecDeque::new(),
            frontend: None,
            metrics,
            drain_reason: FlowCloseReason::ListenerClosed,
            followups: Vec::new(),
            run_flow: None,
            forwards: Vec::with_capacity(super::mmsg::MAX_BATCH),
            socket_returned: false,
            sources: SourceAddresses::default(),
            one_way: OneWaySockets::new(id),
            one_way_run: Vec::with_capacity(super::mmsg::MAX_BATCH),
            one_way_stale: false,
            dns: DnsMux::new(id, 0),
        }
    }

    /// Whether a socket is bound (or adopted).
    pub fn has_socket(&self) -> bool {
        self.socket.is_some()
    }

    /// Whether the listener is being read.
    pub fn is_reading(&self) -> bool {
        self.reading
    }

    /// The bound socket's address (the configured one, or the port the
    /// kernel chose for port 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.socket.as_ref().and_then(|s| s.local_addr().ok())
    }

    /// The raw fd of the bound socket (for passing it to the master).
    pub fn socket_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        self.socket.as_ref().map(|s| s.as_fd())
    }

    /// Gives the listener its bound socket (not registered yet).
    pub fn attach_socket(&mut self, socket: std::net::UdpSocket) {
        self.socket = Some(mio::net::UdpSocket::from_std(socket));
    }

    /// Starts reading: registers the socket under a fresh token.
    pub fn start_reading(&mut self, ctx: &mut IoContext<'_>) -> io::Result<()> {
        if self.reading {
            return Ok(());
        }
        let Some(socket) = self.socket.as_mut() else {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "no socket bound",
            ));
        };
        if let Some(token) = self.token {
            // Send-only (see `send_only`): registered, not read.
            let interest = listener_interest(true, !self.overflow.is_empty());
            ctx.registry.reregister(socket, token, interest)?;
            self.interest = Some(interest);
            self.reading = true;
            ctx.still_readable.push(token);
            return Ok(());
        }
        let token = ctx.tokens.insert(UdpToken::Listener(self.id));
        let interest = listener_interest(true, !self.overflow.is_empty());
        if let Err(e) = ctx.registry.register(socket, token, interest) {
            ctx.tokens.remove(token);
            return Err(e);
        }
        self.interest = Some(interest);
        self.token = Some(token);
        self.reading = true;
        // Datagrams may already wait: edge-triggered readiness would not
        // report them, so read once now.
        ctx.still_readable.push(token);
        Ok(())
    }

    /// Stops reading (deactivate): deregisters the socket, keeps it bound.
    pub fn stop_reading(&mut self, ctx: &mut IoContext<'_>) {
        if let (Some(socket), Some(token)) = (self.socket.as_mut(), self.token.take()) {
            if let Err(error) = ctx.registry.deregister(socket) {
                tracing::warn!(listener = %self.address, %error, "deregistering the listener");
            }
            ctx.tokens.remove(token);
        }
        self.interest = None;
        self.reading = false;
    }

    /// Stops reading client datagrams but keeps sending on the socket (a
    /// worker draining after an upgrade: its successor reads the shared
    /// socket, this one still returns its live flows' replies through it).
    pub fn send_only(&mut self, ctx: &mut IoContext<'_>) {
        if !self.reading {
            return;
        }
        if let (Some(socket), Some(token)) = (self.socket.as_mut(), self.token) {
            if let Err(error) = ctx.registry.reregister(socket, token, Interest::WRITABLE) {
                tracing::warn!(listener = %self.address, %error, "listener to send-only");
            }
            self.interest = Some(Interest::WRITABLE);
        }
        self.reading = false;
    }

    /// Registers the listener for writability only while client-bound
    /// datagrams wait in the overflow queue (a transition, not per datagram).
    fn sync_interest(&mut self, registry: &Registry) {
        let (Some(socket), Some(token), Some(current)) =
            (self.socket.as_mut(), self.token, self.interest)
        else {
            return;
        };
        let wanted = listener_interest(self.reading, !self.overflow.is_empty());
        if wanted == current {
            return;
        }
        match registry.reregister(socket, token, wanted) {
            Ok(()) => self.interest = Some(wanted),
            Err(error) => {
                tracing::warn!(listener = %self.address, %error, "listener interest change");
            }
        }
    }

    /// Releases the socket (remove), after [`Self::stop_reading`].
    pub fn release_socket(&mut self, ctx: &mut IoContext<'_>) {
        self.stop_reading(ctx);
        self.socket = None;
        self.overflow.clear();
        self.returns.clear();
    }

    /// Grows the return batch when `max_rx_datagram_size` grew.
    pub fn resize_buffers(&mut self, ctx: &mut IoContext<'_>) {
        let wanted = self.manager.config().max_rx_datagram_size + 1;
        if wanted != self.returns.buffer_len() {
            self.flush_returns(ctx);
            self.returns = SendBatch::new(wanted);
        }
    }

    /// Closes every flow now with `reason` in their access records.
    pub fn close_all(&mut self, now: Instant, reason: FlowCloseReason, ctx: &mut IoContext<'_>) {
        self.drain_reason = reason;
        self.manager.close_all(now);
        self.drain(now, ctx);
        self.drain_reason = FlowCloseReason::ListenerClosed;
        self.one_way.close_all(ctx.tokens);
        self.dns
            .retain_cluster(None, ctx.tokens, &self.metrics, ctx.metrics);
    }

    /// Keys the IDs this listener's `DNS_ID` queries get on the wire (the
    /// worker's secret per-process seed); before any DNS socket opens.
    pub fn set_dns_seed(&mut self, seed: u64) {
        if self.dns.sockets() == 0 {
            self.dns = DnsMux::new(self.id, seed);
        }
    }

    /// Open `DNS_ID` sockets (a few per backend that got a query).
    pub fn dns_sockets(&self) -> usize {
        self.dns.sockets()
    }

    /// `DNS_ID` queries waiting for their answer.
    pub fn dns_pending(&self) -> usize {
        self.dns.pending()
    }

    /// The earliest deadline of a flow or a pending `DNS_ID` query.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.manager.poll_timeout(), self.dns.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Expires the flows and `DNS_ID` queries due at `now`.
    pub fn on_timeout(&mut self, now: Instant, ctx: &mut IoContext<'_>) {
        if self.manager.poll_timeout().is_some_and(|t| t <= now) {
            self.manager.handle_timeout(now);
            self.drain(now, ctx);
        }
        if self.dns.poll_timeout().is_some_and(|t| t <= now) {
            self.dns.handle_timeout(now, &self.metrics, ctx.metrics);
        }
        self.flush_returns(ctx);
    }

    /// Number of open one-way sockets (one per backend that got a datagram
    /// of a one-way cluster).
    pub fn one_way_sockets(&self) -> usize {
        self.one_way.len()
    }

    /// Closes the one-way socket of a removed backend.
    pub fn forget_one_way_backend(
        &mut self,
        cluster: &str,
        backend: &str,
        ctx: &mut IoContext<'_>,
    ) {
        self.one_way.forget_backend(cluster, backend, ctx.tokens);
        self.dns
            .forget_backend(cluster, backend, ctx.tokens, &self.metrics, ctx.metrics);
    }

    /// Closes the one-way sockets of backends outside the listener's
    /// current one-way cluster (frontend changed, cluster removed or no
    /// longer one-way).
    pub fn sync_one_way(&mut self, ctx: &mut IoContext<'_>) {
        self.one_way_stale = false;
        let keep = match (&self.frontend, self.manager.is_one_way()) {
            (Some(f), true) => Some(f.cluster.as_str()),
            _ => None,
        };
        self.one_way.retain_cluster(keep, ctx.tokens);
        let keep = match (&self.frontend, self.manager.is_dns_id()) {
            (Some(f), true) => Some(f.cluster.as_str()),
            _ => None,
        };
        self.dns
            .retain_cluster(keep, ctx.tokens, &self.metrics, ctx.metrics);
    }

    /// Number of open upstream sockets (one per established flow).
    pub fn upstream_sockets(&self) -> usize {
        self.flows.values().filter(|f| f.upstream.is_some()).count()
    }

    // ----- readiness -----

    /// The listener socket is readable: client datagrams, in batches, up to
    /// the budget.
    pub fn on_readable(&mut self, now: Instant, recv: &mut RecvBatch, ctx: &mut IoContext<'_>) {
        if !self.reading {
            return;
        }
        let Some(fd) = self.socket.as_ref().map(|s| s.as_raw_fd()) else {
            return;
        };
        recv.ensure_buffer_len(self.manager.config().max_rx_datagram_size + 1);
        if self.one_way_stale {
            self.sync_one_way(ctx);
        }
        let mut left = DATAGRAM_BUDGET;
        loop {
            if left == 0 {
                if let Some(token) = self.token {
                    ctx.still_readable.push(token);
                }
                break;
            }
            let asked = left.min(super::mmsg::MAX_BATCH);
            let n = match recv.recv(fd, asked) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) => {
                    // Unexpected on an unconnected socket; the next readiness
                    // event tries again.
                    tracing::debug!(listener = %self.address, %error, "listener receive error");
                    break;
                }
            };
            left = left.saturating_sub(n.max(1));
            for i in 0..n {
                self.on_client_datagram(now, recv, i, ctx);
            }
            self.flush_forwards(recv, ctx);
            self.flush_one_way(now, recv, ctx);
            self.flush_dns(now, recv, ctx);
            self.drain(now, ctx);
            if n < asked {
                // Drained: a datagram arriving now raises a new edge, so
                // no `recvmmsg` just to read EAGAIN.
                break;
            }
        }
        self.drain(now, ctx);
        self.flush_returns(ctx);
    }

    fn on_client_datagram(
        &mut self,
        now: Instant,
        recv: &mut RecvBatch,
        index: usize,
        ctx: &mut IoContext<'_>,
    ) {
        let Some(d) = recv.get(index) else {
            return;
        };
        match self.manager.handle_client_datagram(now, d.src, d.payload) {
            ClientDecision::Forward { flow, proxy_header } => {
                let proxy_header = match self.hit_address(d.local) {
                    Some(hit) => proxy_header.map(|_| core::ProxyHeader::new(d.src, hit)),
                    None => proxy_header,
                };
                if self.run_flow != Some(flow) {
                    self.flush_forwards(recv, ctx);
                    self.run_flow = Some(flow);
                }
                if d.local.is_some() {
                    if let Some(io) = self.flows.get_mut(&flow) {
                        io.local = d.local;
                    }
                }
                self.forwards.push((index, proxy_header));
            }
            ClientDecision::OneWay {
                affinity_hash,
                proxy_header,
            } => {
                let proxy_header = match self.hit_address(d.local) {
                    Some(hit) => proxy_header.map(|_| core::ProxyHeader::new(d.src, hit)),
                    None => proxy_header,
                };
                self.route_one_way(affinity_hash, proxy_header, index, ctx);
            }
            ClientDecision::DnsQuery {
                affinity_hash,
                proxy_header,
            } => {
                let proxy_header = match self.hit_address(d.local) {
                    Some(hit) => proxy_header.map(|_| core::ProxyHeader::new(d.src, hit)),
                    None => proxy_header,
                };
                let (src, local) = (d.src, d.local);
                self.route_dns(
                    now,
                    affinity_hash,
                    proxy_header,
                    (src, local),
                    recv,
                    index,
                    ctx,
                );
            }
            ClientDecision::Queued { flow } => {
                let io = self.flows.entry(flow).or_default();
                if d.local.is_some() {
                    io.local = d.local;
                }
            }
            ClientDecision::Dropped(reason) => self.metrics.dropped(ctx.metrics, reason, 1),
        }
    }

    /// Picks the backend of one one-way datagram (receive-batch `index`)
    /// with `affinity_hash` and queues it in the batch's one-way run (sent
    /// by [`Self::flush_one_way`] once the batch is routed).
    fn route_one_way(
        &mut self,
        affinity_hash: u64,
        proxy_header: Option<core::ProxyHeader>,
        index: usize,
        ctx: &mut IoContext<'_>,
    ) {
        let Some(frontend) = &self.frontend else {
            self.metrics
                .dropped(ctx.metrics, core::DropReason::NoBackend, 1);
            return;
        };
        let cluster = &frontend.cluster;
        let Some((backend, addr)) = ctx.backends.select(cluster.as_str(), affinity_hash) else {
            self.metrics
                .dropped(ctx.metrics, core::DropReason::NoBackend, 1);
            return;
        };
        let mut one_way_ctx = OneWayContext {
            registry: ctx.registry,
            tokens: ctx.tokens,
            metrics: ctx.metrics,
            still_readable: ctx.still_readable,
        };
        match self
            .one_way
            .slot_for(cluster, &backend, addr, &mut self.sources, &mut one_way_ctx)
        {
            Ok(slot) => self.one_way_run.push((slot, index, proxy_header)),
            Err(reason) => {
                self.metrics.upstream_open_failed(ctx.metrics);
                self.metrics.shell_dropped(ctx.metrics, reason);
            }
        }
    }

    /// Picks the backend of one `DNS_ID` query (receive-batch `index`) with
    /// `affinity_hash`; the mux rewrites its ID and queues it for
    /// [`Self::flush_dns`].
    #[allow(clippy::too_many_arguments)]
    fn route_dns(
        &mut self,
        now: Instant,
        affinity_hash: u64,
        proxy_header: Option<core::ProxyHeader>,
        (client, local): (SocketAddr, Option<IpAddr>),
        recv: &mut RecvBatch,
        index: usize,
        ctx: &mut IoContext<'_>,
    ) {
        let Some(frontend) = &self.frontend else {
            self.metrics
                .dropped(ctx.metrics, core::DropReason::NoBackend, 1);
            return;
        };
        let cluster = &frontend.cluster;
        let Some((backend, addr, load)) = ctx
            .backends
            .select_for_query(cluster.as_str(), affinity_hash)
        else {
            self.metrics
                .dropped(ctx.metrics, core::DropReason::NoBackend, 1);
            return;
        };
        let Some(payload) = recv.payload_mut(index) else {
            return;
        };
        let deadline = now + self.manager.dns_answer_timeout();
        let mut mux_ctx = OneWayContext {
            registry: ctx.registry,
            tokens: ctx.tokens,
            metrics: ctx.metrics,
            still_readable: ctx.still_readable,
        };
        let routed = self.dns.route(
            deadline,
            (cluster, &backend, addr, &load),
            client,
            local,
            payload,
            index,
            proxy_header,
            &mut self.sources,
            &mut mux_ctx,
        );
        if let Err(reason) = routed {
            if reason == ShellDrop::NoUpstream {
                self.metrics.upstream_open_failed(ctx.metrics);
            }
            self.metrics.shell_dropped(ctx.metrics, reason);
        }
    }

    /// Sends the batch's routed `DNS_ID` queries (one `sendmmsg` per
    /// socket); a backend that refused is marked suspect.
    fn flush_dns(&mut self, now: Instant, recv: &RecvBatch, ctx: &mut IoContext<'_>) {
        let mut mux_ctx = OneWayContext {
            registry: ctx.registry,
            tokens: ctx.tokens,
            metrics: ctx.metrics,
            still_readable: ctx.still_readable,
        };
        let backends = &mut *ctx.backends;
        let health = &mut *ctx.health;
        self.dns
            .flush(recv, &self.metrics, &mut mux_ctx, |cluster, backend| {
                backends.mark_suspect(cluster.as_str(), backend.as_str());
                health.passive_failure(now, cluster.as_str(), backend.as_str());
            });
    }

    /// A `DNS_ID` socket is readable: its answers are read with `recvmmsg`
    /// straight into the returns batch, mapped back to their clients (ID
    /// restored in place) by the mux, and committed for the client that
    /// asked; any other is dropped and counted by reason.
    pub fn on_dns_readable(&mut self, now: Instant, slot: usize, ctx: &mut IoContext<'_>) {
        let mut left = DATAGRAM_BUDGET;
        let mut answered = false;
        // `None`: closed meanwhile (a stale event).
        while let Some((fd, token, _, _)) = self.dns.socket(slot) {
            if left == 0 {
                ctx.still_readable.push(token);
                break;
            }
            if self.returns.is_full() {
                flush_batch(
                    &mut self.returns,
                    &mut self.overflow,
                    self.socket.as_ref(),
                    &self.metrics,
                    ctx,
                );
            }
            let asked = left.min(self.returns.free());
            let n = match self.returns.recv_pending(fd, asked) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
                    self.metrics.backend_refused(ctx.metrics);
                    if let Some((_, _, cluster, backend)) = self.dns.socket(slot) {
                        ctx.backends
                            .mark_suspect(cluster.as_str(), backend.as_str());
                        ctx.health
                            .passive_failure(now, cluster.as_str(), backend.as_str());
                    }
                    break;
                }
                Err(error) => {
                    tracing::debug!(listener = %self.address, %error, "DNS socket receive error");
                    break;
                }
            };
            left -= n;
            for i in 0..n {
                let Some(payload) = self.returns.pending_mut(i) else {
                    break;
                };
                let len = payload.len();
                if len > self.manager.config().max_rx_datagram_size {
                    // Over the size limit (it may have been cut by the
                    // buffer): never returned truncated. The query stays
                    // waiting and expires if nothing better comes.
                    self.metrics
                        .dropped(ctx.metrics, core::DropReason::Truncated, 1);
                    continue;
                }
                match self
                    .dns
                    .answer(now, slot, payload, &self.metrics, ctx.metrics)
                {
                    core::AnswerDecision::Return { client, local } => {
                        self.metrics.traffic.count_out(ctx.metrics, len);
                        self.returns.commit_pending(i, client, local);
                        answered = true;
                    }
                    core::AnswerDecision::Dropped(_) => {} // counted by the mux
                }
            }
            if n < asked {
                break; // drained: the next answer raises a new edge
            }
        }
        if answered {
            if let Some((_, _, cluster, backend)) = self.dns.socket(slot) {
                ctx.backends
                    .mark_responsive(cluster.as_str(), backend.as_str());
            }
        }
        if !self.overflow.is_empty() {
            self.sync_interest(ctx.registry);
        }
    }

    /// Sends the batch's one-way datagrams: sorted by backend (stable
    /// within one: receive order), one `sendmmsg` per backend run, each
    /// datagram as `[PROXY header, payload]` iovecs into the receive
    /// buffers (no copy, no allocation: an unstable sort by (slot, index)
    /// keeps the order).
    fn flush_one_way(&mut self, now: Instant, recv: &RecvBatch, ctx: &mut IoContext<'_>) {
        if self.one_way_run.is_empty() {
            return;
        }
        self.one_way_run
            .sort_unstable_by_key(|&(slot, index, _)| (slot, index));
        let mut start = 0;
        while start < self.one_way_run.len() {
            let slot = self.one_way_run[start].0;
            let end = self.one_way_run[start..]
                .iter()
                .position(|&(s, _, _)| s != slot)
                .map_or(self.one_way_run.len(), |n| start + n);
            let run = &self.one_way_run[start..end];
            let part = |j: usize| {
                let (_, index, header) = &run[j];
                let payload = recv.get(*index).map_or(&[][..], |d| d.payload);
                (header.as_ref().map(|h| h.as_bytes()), payload)
            };
            let mut one_way_ctx = OneWayContext {
                registry: ctx.registry,
                tokens: ctx.tokens,
                metrics: ctx.metrics,
                still_readable: ctx.still_readable,
            };
            let outcome = self
                .one_way
                .send_run(slot, run.len(), part, &mut one_way_ctx);
            self.metrics
                .traffic
                .count_in_many(ctx.metrics, outcome.sent, outcome.bytes);
            if outcome.would_block > 0 {
                self.metrics.shell_dropped_many(
                    ctx.metrics,
                    ShellDrop::WouldBlock,
                    outcome.would_block,
                );
            }
            if outcome.send_error > 0 {
                self.metrics.shell_dropped_many(
                    ctx.metrics,
                    ShellDrop::SendError,
                    outcome.send_error,
                );
            }
            if outcome.refused {
                self.metrics.backend_refused(ctx.metrics);
                // A refusal leaves the socket open: it is still there.
                if let Some((cluster, backend)) = self.one_way.backend_of(slot) {
                    ctx.backends
                        .mark_suspect(cluster.as_str(), backend.as_str());
                    ctx.health
                        .passive_failure(now, cluster.as_str(), backend.as_str());
                }
            }
            start = end;
        }
        self.one_way_run.clear();
    }

    /// A one-way socket is readable: its backend's replies are read and
    /// dropped (counted `one_way_reply`); a refusal read back marks the
    /// backend suspect.
    pub fn on_one_way_readable(&mut self, now: Instant, slot: usize, ctx: &mut IoContext<'_>) {
        let mut one_way_ctx = OneWayContext {
            registry: ctx.registry,
            tokens: ctx.tokens,
            metrics: ctx.metrics,
            still_readable: ctx.still_readable,
        };
        let (dropped, refused) = self.one_way.on_readable(slot, &mut one_way_ctx);
        for _ in 0..dropped {
            self.metrics
                .shell_dropped(ctx.metrics, ShellDrop::OneWayReply);
        }
        if refused {
            self.metrics.backend_refused(ctx.metrics);
            if let Some((cluster, backend)) = self.one_way.backend_of(slot) {
                ctx.backends
                    .mark_suspect(cluster.as_str(), backend.as_str());
                ctx.health
                    .passive_failure(now, cluster.as_str(), backend.as_str());
            }
        }
    }

    /// Sends the run of consecutive datagrams of one established flow
    /// (`forwards`, indices into `recv`) on its upstream socket: one
    /// `sendmmsg` for the run, each datagram as `[PROXY header, payload]`
    /// iovecs pointing into the receive buffers (no copy). What the socket
    /// does not take goes through [`send_upstream`] (bounded queue).
    fn flush_forwards(&mut self, recv: &RecvBatch, ctx: &mut IoContext<'_>) {
        let Some(flow) = self.run_flow.take() else {
            return;
        };
        let count = self.forwards.len();
        let Some(io) = self.flows.get_mut(&flow) else {
            for _ in 0..count {
                self.metrics
                    .shell_dropped(ctx.metrics, ShellDrop::NoUpstream);
            }
            self.forwards.clear();
            return;
        };
        let forwards = &self.forwards;
        let payload_of = |k: usize| recv.get(forwards[k].0).map_or(&[][..], |d| d.payload);
        let header_of = |k: usize| forwards[k].1.as_ref().map(|h| h.as_bytes());
        let mut next = 0;
        if let Some(up) = io.upstream.as_ref().filter(|up| up.queue.is_empty()) {
            let fd = up.socket.as_raw_fd();
            while next < count {
                match send_connected_batch(fd, count - next, |j| {
                    (header_of(next + j), payload_of(next + j))
                }) {
                    Ok(sent) => {
                        for k in next..next + sent {
                            let len = payload_of(k).len();
                            self.metrics.traffic.count_in(ctx.metrics, len);
                            io.metrics.backend.count_in(ctx.metrics, len);
                        }
                        next += sent.max(1);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
                        self.metrics.backend_refused(ctx.metrics);
                        self.followups.push(FollowUp::Abort {
                            flow,
                            reason: FlowCloseReason::BackendRefused,
                        });
                        next += 1;
                    }
                    Err(error) => {
                        tracing::debug!(%flow, %error, "upstream send error");
                        self.metrics
                            .shell_dropped(ctx.metrics, ShellDrop::SendError);
                        next += 1;
                    }
                }
            }
        }
        for k in next..count {
            let payload = payload_of(k);
            match send_upstream(io.upstream.as_mut(), header_of(k), payload, ctx.registry) {
                UpstreamSend::Sent => {
                    self.metrics.traffic.count_in(ctx.metrics, payload.len());
                    io.metrics.backend.count_in(ctx.metrics, payload.len());
                }
                UpstreamSend::Dropped(reason) => {
                    self.metrics.shell_dropped(ctx.metrics, reason);
                }
                UpstreamSend::Refused => {
                    self.metrics.backend_refused(ctx.metrics);
                    self.followups.push(FollowUp::Abort {
                        flow,
                        reason: FlowCloseReason::BackendRefused,
                    });
                }
            }
        }
        self.forwards.clear();
    }

    /// The listener socket is writable: send what waited.
    pub fn on_writable(&mut self, ctx: &mut IoContext<'_>) {
        self.flush_returns(ctx);
    }

    /// An upstream socket is readable (`flow`'s backend replied) or
    /// writable (its queue can go).
    pub fn on_upstream_ready(
        &mut self,
        now: Instant,
        flow: FlowId,
        readable: bool,
        writable: bool,
        ctx: &mut IoContext<'_>,
    ) {
        if writable {
            self.flush_upstream(flow, ctx);
        }
        if readable {
            self.read_upstream(now, flow, ctx);
        }
        self.drain(now, ctx);
        // The returns batch is sent when full, or once per loop wake-up
        // (`UdpShell::flush`): one `sendmmsg` for every reply read in it.
        if !self.overflow.is_empty() {
            self.sync_interest(ctx.registry);
        }
    }

    /// Reads `flow`'s backend replies with `recvmmsg` straight into the
    /// free slots of the returns batch (no copy), up to the budget.
    fn read_upstream(&mut self, now: Instant, flow: FlowId, ctx: &mut IoContext<'_>) {
        let mut left = DATAGRAM_BUDGET;
        loop {
            let Some(io) = self.flows.get_mut(&flow) else {
                return; // closed meanwhile: a stale event
            };
            let Some(up) = io.upstream.as_ref() else {
                return;
            };
            if left == 0 {
                ctx.still_readable.push(up.token);
                return;
            }
            let fd = up.socket.as_raw_fd();
            if self.returns.is_full() {
                flush_batch(
                    &mut self.returns,
                    &mut self.overflow,
                    self.socket.as_ref(),
                    &self.metrics,
                    ctx,
                );
            }
            let asked = left.min(self.returns.free());
            let n = match self.returns.recv_pending(fd, asked) {
                Ok(0) => return, // no free slot: cannot happen after the flush
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
                    self.metrics.backend_refused(ctx.metrics);
                    self.followups.push(FollowUp::Abort {
                        flow,
                        reason: FlowCloseReason::BackendRefused,
                    });
                    return;
                }
                Err(error) => {
                    tracing::debug!(%flow, %error, "upstream receive error");
                    return;
                }
            };
            left -= n;
            for i in 0..n {
                let Some(payload) = self.returns.pending(i) else {
                    break;
                };
                let len = payload.len();
                match self.manager.handle_backend_datagram(now, flow, payload) {
                    BackendDecision::Return { dst } => {
                        self.metrics.traffic.count_out(ctx.metrics, len);
                        io.metrics.backend.count_out(ctx.metrics, len);
                        if !io.responded {
                            io.responded = true;
                            if let (Some(c), Some(b)) = (&io.cluster, &io.backend) {
                                ctx.backends.mark_responsive(c.as_str(), b.as_str());
                            }
                        }
                        self.returns.commit_pending(i, dst, io.local);
                    }
                    BackendDecision::Dropped(reason) => {
                        self.metrics.dropped(ctx.metrics, reason, 1)
                    }
                }
                if self.manager.flow_phase(flow).is_none() {
                    // The reply closed the flow (responses cap): the rest
                    // of this read goes, as it would with the socket.
                    return;
                }
            }
            if n < asked {
                // Drained: the next reply raises a new edge.
                return;
            }
        }
    }

    fn flush_upstream(&mut self, flow: FlowId, ctx: &mut IoContext<'_>) {
        let Some(up) = self
            .flows
            .get_mut(&flow)
            .and_then(|io| io.upstream.as_mut())
        else {
            return;
        };
        while let Some(datagram) = up.queue.front() {
            match send_connected(up.socket.as_raw_fd(), &[IoSlice::new(datagram)]) {
                Ok(_) => {
                    up.queue.pop_front();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(error) => {
                    tracing::debug!(%flow, %error, "upstream send error");
                    up.queue.pop_front();
                    self.metrics
                        .shell_dropped(ctx.metrics, ShellDrop::SendError);
                }
            }
        }
        set_write_interest(up, false, ctx.registry);
    }

    /// Sends the batch of client-bound datagrams (and what waited before).
    pub fn flush_returns(&mut self, ctx: &mut IoContext<'_>) {
        if self.returns.is_empty() && self.overflow.is_empty() {
            return;
        }
        flush_batch(
            &mut self.returns,
            &mut self.overflow,
            self.socket.as_ref(),
            &self.metrics,
            ctx,
        );
        self.sync_interest(ctx.registry);
    }

    // ----- the core's outputs -----

    /// Drains the core's outputs, then feeds the follow-up inputs they
    /// called for, until both are empty; then updates the active gauge.
    pub fn drain(&mut self, now: Instant, ctx: &mut IoContext<'_>) {
        loop {
            while let Some(output) = self.manager.poll_output() {
                self.on_output(now, output, ctx);
            }
            if self.followups.is_empty() {
                break;
            }
            let mut followups = std::mem::take(&mut self.followups);
            for followup in followups.drain(..) {
                match followup {
                    FollowUp::Resolve {
                        flow,
                        backend,
                        addr,
                    } => {
                        self.manager.backend_resolved(now, flow, backend, addr);
                    }
                    FollowUp::Abort { flow, reason } => {
                        if let Some(io) = self.flows.get_mut(&flow) {
                            if io.abort.is_none() && reason == FlowCloseReason::BackendRefused {
                                // A passive failure: suspect at once, and one
                                // step toward `fall` if the cluster is probed.
                                if let (Some(c), Some(b)) = (&io.cluster, &io.backend) {
                                    ctx.backends.mark_suspect(c.as_str(), b.as_str());
                                    ctx.health.passive_failure(now, c.as_str(), b.as_str());
                                }
                            }
                            io.abort.get_or_insert(reason);
                        }
                        self.manager.abort_flow(now, flow, CloseReason::Aborted);
                    }
                }
            }
            // Keep the vector's capacity for the next drain.
            self.followups = followups;
        }
        self.metrics
            .set_active(ctx.metrics, self.manager.active_flows());
    }

    pub(super) fn on_output(&mut self, _now: Instant, output: Output, ctx: &mut IoContext<'_>) {
        match output {
            Output::SelectBackend {
                flow,
                cluster,
                affinity_hash,
                quic_lb,
            } => {
                let cluster_id = ClusterId::from(cluster.as_str());
                let io = self.flows.entry(flow).or_default();
                io.cluster = Some(cluster_id);
                match super::quic_lb::select(
                    ctx.backends,
                    ctx.metrics,
                    self.address,
                    cluster.as_str(),
                    affinity_hash,
                    quic_lb,
                ) {
                    Some((backend, addr)) => {
                        // Counted now, not when the upstream opens: the
                        // flows of one burst are selected in one drain,
                        // before any of them is resolved, and LEAST_LOADED
                        // must see each choice before the next.
                        io.counted = ctx.backends.flow_opened(cluster.as_str(), backend.as_str());
                        io.backend = Some(backend.clone());
                        self.followups.push(FollowUp::Resolve {
                            flow,
                            backend: core::BackendId::new(backend.as_str()),
                            addr,
                        });
                    }
                    None => {
                        self.followups.push(FollowUp::Abort {
                            flow,
                            reason: FlowCloseReason::NoBackend,
                        });
                    }
                }
            }
            Output::OpenUpstream {
                flow,
                backend,
                addr,
            } => self.open_upstream(flow, &backend, addr, ctx),
            Output::Transmit {
                via,
                dst,
                proxy_header,
                payload,
            } => match via {
                Via::Upstream(flow) => {
                    let hit = self
                        .flows
                        .get(&flow)
                        .and_then(|io| self.hit_address(io.local));
                    let proxy_header = match (hit, self.manager.flow_client(flow)) {
                        (Some(hit), Some(client)) => {
                            proxy_header.map(|_| core::ProxyHeader::new(client, hit))
                        }
                        _ => proxy_header,
                    };
                    let Some(io) = self.flows.get_mut(&flow) else {
                        self.metrics
                            .shell_dropped(ctx.metrics, ShellDrop::NoUpstream);
                        return;
                    };
                    let header = proxy_header.as_ref().map(|h| h.as_bytes());
                    match send_upstream(io.upstream.as_mut(), header, &payload, ctx.registry) {
                        UpstreamSend::Sent => {
                            self.metrics.traffic.count_in(ctx.metrics, payload.len());
                            io.metrics.backend.count_in(ctx.metrics, payload.len());
                        }
                        UpstreamSend::Dropped(reason) => {
                            self.metrics.shell_dropped(ctx.metrics, reason)
                        }
                        UpstreamSend::Refused => {
                            self.metrics.backend_refused(ctx.metrics);
                            self.followups.push(FollowUp::Abort {
                                flow,
                                reason: FlowCloseReason::BackendRefused,
                            });
                        }
                    }
                }
                Via::Listener => {
                    self.overflow_push(dst, None, &payload, ctx);
                    self.flush_returns(ctx);
                }
            },
            Output::Metric(MetricEvent::FlowCreated { cluster, .. }) => {
                self.metrics.flow_created(ctx.metrics);
                cluster_flow_event(ctx.metrics, cluster.as_str(), names::FLOWS_CREATED);
            }
            Output::Metric(MetricEvent::FlowEvicted {
                reason: CloseReason::HandedOver,
                ..
            }) => {
                // It lives on in the successor: not an eviction.
                super::handover::count(
                    ctx.metrics,
                    self.address,
                    super::handover::FLOWS_HANDED_OVER,
                );
            }
            Output::Metric(MetricEvent::FlowEvicted { cluster, .. }) => {
                self.metrics.flow_evicted(ctx.metrics);
                cluster_flow_event(ctx.metrics, cluster.as_str(), names::FLOWS_EVICTED);
            }
            Output::Metric(MetricEvent::FlowShed { cluster }) => {
                self.metrics.flow_shed(ctx.metrics);
                cluster_flow_event(ctx.metrics, cluster.as_str(), names::FLOWS_SHED);
            }
            Output::Metric(MetricEvent::FlowMigrated { .. }) => {
                self.metrics.flow_migrated(ctx.metrics);
            }
            Output::Dropped {
                reason, datagrams, ..
            } => self.metrics.dropped(ctx.metrics, reason, datagrams),
            Output::CloseFlow {
                flow,
                reason,
                record,
            } => self.close_flow(flow, reason, &record, ctx),
        }
    }

    fn open_upstream(
        &mut self,
        flow: FlowId,
        backend: &core::BackendId,
        addr: SocketAddr,
        ctx: &mut IoContext<'_>,
    ) {
        let io = self.flows.entry(flow).or_default();
        let opened = self.sources.open(addr).and_then(|mut socket| {
            let owner = UdpToken::Upstream {
                listener: self.id,
                flow,
            };
            let token = register_readable(ctx.registry, ctx.tokens, &mut socket, owner)?;
            Ok(Upstream::new(socket, token))
        });
        match opened {
            Ok(upstream) => {
                io.upstream = Some(upstream);
                let backend_id = io
                    .backend
                    .clone()
                    .unwrap_or_else(|| BackendId::from(backend.as_str()));
                if let Some(cluster) = &io.cluster {
                    io.metrics = FlowMetrics::register(ctx.metrics, cluster, &backend_id);
                }
                io.backend = Some(backend_id);
            }
            Err(error) => {
                if is_resource_exhaustion(&error) {
                    tracing::warn!(listener = %self.address, %flow, %error, "out of sockets: flow aborted");
                } else {
                    tracing::debug!(listener = %self.address, %flow, %error, "upstream open failed");
                }
                // Uncounted: the flow never reached the backend.
                if let (true, Some(c), Some(b)) = (io.counted, &io.cluster, &io.backend) {
                    ctx.backends.flow_closed(c.as_str(), b.as_str());
                }
                io.counted = false;
                io.backend = None;
                self.metrics.upstream_open_failed(ctx.metrics);
                self.followups.push(FollowUp::Abort {
                    flow,
                    reason: FlowCloseReason::UpstreamOpenFailed,
                });
            }
        }
    }

    fn close_flow(
        &mut self,
        flow: FlowId,
        reason: CloseReason,
        record: &core::FlowRecord,
        ctx: &mut IoContext<'_>,
    ) {
        let io = self.flows.remove(&flow).unwrap_or_default();
        if let Some(up) = io.upstream {
            // No `epoll_ctl(DEL)`: the socket is closed just below and its
            // fd was never duplicated, so closing it leaves the epoll set
            // (one system call less per flow). A readiness event already
            // fetched for its token finds no owner, or a new flow's socket
            // that then reads `EAGAIN`.
            ctx.tokens.remove(up.token);
            io.metrics.closed(ctx.metrics);
            drop(up); // closes the socket
        }
        if let (true, Some(c), Some(b)) = (io.counted, &io.cluster, &io.backend) {
            ctx.backends.flow_closed(c.as_str(), b.as_str());
        }
        let access_reason = match reason {
            // The flow lives on in another worker, which writes its record
            // when it really ends.
            CloseReason::HandedOver => return,
            CloseReason::Idle => FlowCloseReason::IdleTimeout,
            CloseReason::ResponsesReached => FlowCloseReason::ResponsesReached,
            CloseReason::RequestsReached => FlowCloseReason::RequestsReached,
            CloseReason::BackendRemoved => FlowCloseReason::BackendRemoved,
            CloseReason::Drain => self.drain_reason,
            CloseReason::Aborted => io.abort.unwrap_or(FlowCloseReason::NoBackend),
        };
        let duration = record.duration();
        self.metrics.flow_duration(ctx.metrics, duration);
        let cluster = io
            .cluster
            .clone()
            .unwrap_or_else(|| ClusterId::from(record.cluster.as_str()));
        let backend = io.backend.as_ref().zip(record.backend_addr);
        FlowAccessRecord {
            listener: self.address,
            client: record.client,
            cluster: Some(&cluster),
            backend,
            tags: self.frontend.as_ref().map(|f| &f.tags),
            datagrams_in: record.datagrams_in,
            datagrams_out: record.datagrams_out,
            bytes_in: record.bytes_in,
            bytes_out: record.bytes_out,
            duration,
            reason: access_reason,
        }
        .emit();
    }

    /// On a wildcard listener, the address the client actually sent to
    /// (from packet info), for the PROXY v2 destination: the core only knows
    /// the listener's configured `0.0.0.0` / `::`. `None` on a specific
    /// address (the core's header is already right) or without packet info.
    fn hit_address(&self, local: Option<IpAddr>) -> Option<SocketAddr> {
        if !self.address.ip().is_unspecified() {
            return None;
        }
        local.map(|ip| SocketAddr::new(ip, self.address.port()))
    }

    fn overflow_push(
        &mut self,
        dst: SocketAddr,
        local: Option<IpAddr>,
        payload: &[u8],
        ctx: &mut IoContext<'_>,
    ) {
        if self.overflow.len() >= MAX_LISTENER_QUEUE {
            self.metrics
                .shell_dropped(ctx.metrics, ShellDrop::QueueFull);
            return;
        }
        self.overflow.push_back(QueuedReturn {
            dst,
            local,
            payload: payload.to_vec(),
        });
    }
}
