//! The TCP proxy: TCP listeners (address → cluster), one session per
//! accepted connection relaying bytes to a backend of the cluster, hosted by
//! the worker's single mio loop beside UDP and HTTP. See `doc/tcp_http.md`.
//!
//! Owns its listeners (a [`crate::stream::ListenerSet`] whose listener
//! data is the frontend), its sessions, their deadlines, its metric
//! handles and the cluster knobs it needs (`proxy_protocol`). Backends and
//! load balancing are shared with every protocol through
//! [`crate::backends::BackendMap`], borrowed per call in a
//! [`ProxyContext`]. It must never block, never read the clock (the loop
//! passes `now`), never panic on a peer's bytes, and never create its own
//! poll or token numbering.
//!
//! What every stream protocol does alike (listener lifecycle, accept
//! budget, `max_connections`, sockets, buffers, deadlines) is
//! [`crate::stream`]'s; this module keeps what a TCP session does.

pub(crate) mod access;
pub(crate) mod metrics;
pub(crate) mod session;

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use slab::Slab;
use sozu_command_lib::command::{
    Cluster, ProxyProtocolConfig, RequestTcpFrontend, TcpListenerConfig, UpdateTcpListenerConfig,
};
use sozu_command_lib::proto::convert::{wire_address, FieldAddressError};

use crate::backends::ClusterId;
use crate::load_balancing::stable_hash;
use crate::metrics::{count, gauge_add, time};
use crate::protocol::proxy_protocol::StreamProxyHeader;
use crate::stream::buffer::Buffer;
use crate::stream::deadlines::{ArmedTimer, Deadlines};
use crate::stream::limit::ConnectionLimit;
use crate::stream::listeners::{AcceptHandles, Accepted};
use crate::stream::socket::{
    self, connect_backend, connect_state, ConnectError, ConnectState, Side,
};
use crate::stream::{seconds, ClusterKnobs, ListenerError, ListenerSet, ListenerToken, StreamKind};
use crate::stream::{ProxyContext, Readiness, StreamProxy};
use sozu_command_lib::command::{request::RequestType, ListenerType};

use access::{SessionCloseReason, TcpAccessRecord};
use metrics::{ListenerHandles, RelayHandleCache};
use session::{Phase, Preamble, Session, Timeouts};

/// What a TCP token stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpToken {
    /// A listening socket, by listener id.
    Listener(usize),
    /// The client side of a session.
    Front(usize),
    /// The backend side of a session.
    Back(usize),
}

impl ListenerToken for TcpToken {
    fn listener(id: usize) -> Self {
        TcpToken::Listener(id)
    }
}

/// A refused TCP order.
#[derive(Debug, thiserror::Error)]
pub enum TcpError {
    /// A listener order refused (shared with HTTP).
    #[error(transparent)]
    Listener(#[from] ListenerError),
    /// The frontend to remove is not the one configured.
    #[error("no TCP frontend for cluster {cluster:?} at {address}")]
    UnknownFrontend {
        /// The listener's address.
        address: SocketAddr,
        /// The cluster the order named.
        cluster: String,
    },
}

impl From<FieldAddressError> for TcpError {
    fn from(error: FieldAddressError) -> Self {
        TcpError::Listener(error.into())
    }
}

/// A TCP listener's frontend: the cluster its connections go to.
#[derive(Debug, Clone)]
struct Frontend {
    cluster: ClusterId,
    tags: Option<Arc<BTreeMap<String, String>>>,
}

/// The TCP part of a listener.
#[derive(Debug)]
pub struct TcpListenerData {
    config: TcpListenerConfig,
    frontend: Option<Frontend>,
    handles: ListenerHandles,
}

impl TcpListenerData {
    fn timeouts(&self) -> Timeouts {
        Timeouts {
            front: seconds(self.config.front_timeout),
            back: seconds(self.config.back_timeout),
            connect: seconds(self.config.connect_timeout),
        }
    }
}

/// The TCP listeners and sessions of one worker.
#[derive(Debug)]
pub struct TcpProxy {
    listeners: ListenerSet<TcpListenerData>,
    sessions: Slab<Session>,
    deadlines: Deadlines,
    clusters: HashMap<String, ClusterKnobs>,
    handles: RelayHandleCache,
    buffer_size: usize,
}

impl TcpProxy {
    /// An empty proxy whose sessions get two buffers of `buffer_size` bytes
    /// (0: [`crate::stream::DEFAULT_BUFFER_SIZE`]).
    pub fn new(buffer_size: usize) -> Self {
        TcpProxy {
            listeners: ListenerSet::new(StreamKind::Tcp),
            sessions: Slab::new(),
            deadlines: Deadlines::new(),
            clusters: HashMap::new(),
            handles: RelayHandleCache::default(),
            buffer_size: crate::stream::buffer_size(buffer_size),
        }
    }

    /// Shares the worker's connection budget (`max_connections`; the
    /// default is unlimited).
    pub fn set_connection_limit(&mut self, limit: ConnectionLimit) {
        self.listeners.set_connection_limit(limit);
    }

    // ----- listeners -----

    /// Adds a listener; binds and accepts at once if `config.active`.
    pub fn add_listener(
        &mut self,
        config: &TcpListenerConfig,
        ctx: &mut ProxyContext<'_, TcpToken>,
    ) -> Result<(), TcpError> {
        let address = wire_address("address", &config.address)?;
        let handles = ListenerHandles::register(ctx.metrics, address);
        let accept = AcceptHandles {
            connections: handles.connections,
            refused: handles.refused,
        };
        let data = TcpListenerData {
            config: *config,
            frontend: None,
            handles,
        };
        Ok(self
            .listeners
            .add(address, config.active, data, accept, ctx)?)
    }

    /// Patches timeouts and `expect_proxy` in place (new sessions only; no
    /// re-bind).
    pub fn update_listener(&mut self, update: &UpdateTcpListenerConfig) -> Result<(), TcpError> {
        let address = wire_address("address", &update.address)?;
        let listener = self.listeners.at_mut(address)?;
        sozu_command_lib::state::patch_tcp_listener(&mut listener.data.config, update);
        Ok(())
    }

    /// The listening sockets (for an upgrade's hand-over).
    pub fn listen_sockets(&self) -> Vec<(SocketAddr, BorrowedFd<'_>)> {
        self.listeners.listen_sockets()
    }

    /// The local address a listener is bound to (its port when the order
    /// said port 0).
    pub fn local_addr(&self, address: SocketAddr) -> Option<SocketAddr> {
        self.listeners.local_addr(address)
    }

    // ----- frontends and clusters -----

    /// Sets the listener's cluster (new connections only).
    pub fn add_frontend(&mut self, frontend: &RequestTcpFrontend) -> Result<(), TcpError> {
        let address = wire_address("address", &frontend.address)?;
        let listener = self.listeners.at_mut(address)?;
        listener.data.frontend = Some(Frontend {
            cluster: ClusterId::from(frontend.cluster_id.as_str()),
            tags: if frontend.tags.is_empty() {
                None
            } else {
                Some(Arc::new(frontend.tags.clone()))
            },
        });
        Ok(())
    }

    /// Clears the listener's cluster: new connections are closed at once
    /// (counted in `tcp.no_frontend`); live sessions go on.
    pub fn remove_frontend(&mut self, frontend: &RequestTcpFrontend) -> Result<(), TcpError> {
        let address = wire_address("address", &frontend.address)?;
        let listener = self.listeners.at_mut(address)?;
        match &listener.data.frontend {
            Some(f) if f.cluster.as_str() == frontend.cluster_id => {
                listener.data.frontend = None;
                Ok(())
            }
            _ => Err(TcpError::UnknownFrontend {
                address,
                cluster: frontend.cluster_id.clone(),
            }),
        }
    }

    // ----- lifecycle -----

    /// Soft-stop: stop accepting (sockets closed); sessions go on.
    pub fn soft_stop(&mut self, ctx: &mut ProxyContext<'_, TcpToken>) {
        self.listeners.soft_stop(ctx);
    }

    /// Hard-stop: closes every session and listening socket now.
    pub fn hard_stop(&mut self, now: Instant, ctx: &mut ProxyContext<'_, TcpToken>) {
        self.soft_stop(ctx);
        let keys: Vec<usize> = self.sessions.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.close_session(key, now, SessionCloseReason::Shutdown, ctx);
        }
        self.deadlines.clear();
    }

    // ----- event loop -----

    /// The earliest session deadline (possibly a stale one: handling it
    /// re-arms the real one). See also [`has_backlog`](Self::has_backlog).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadlines.peek()
    }

    /// Closes sessions whose deadline passed.
    pub fn handle_timeout(&mut self, now: Instant, ctx: &mut ProxyContext<'_, TcpToken>) {
        while let Some((at, key)) = self.deadlines.pop_due(now) {
            let Some(session) = self.sessions.get_mut(key) else {
                continue;
            };
            if !session.timer.fired(at) {
                continue;
            }
            let (deadline, reason) = session.deadline();
            if deadline <= now && reason == SessionCloseReason::ConnectTimeout {
                // A backend that does not answer is treated like one that
                // refuses: try another.
                self.connect_failed(key, now, ctx, None);
            } else if deadline <= now {
                tracing::debug!(client = %session.client, %reason, "TCP session timed out");
                self.close_session(key, now, reason, ctx);
            } else {
                session
                    .timer
                    .ensure(&mut self.deadlines, key, Some(deadline));
            }
        }
    }

    /// A readiness event for one of the proxy's sockets.
    pub fn ready(
        &mut self,
        token: TcpToken,
        readiness: Readiness,
        now: Instant,
        ctx: &mut ProxyContext<'_, TcpToken>,
    ) {
        match token {
            TcpToken::Listener(id) => self.accept_on(id, now, ctx),
            TcpToken::Front(key) => {
                if let Some(s) = self.sessions.get_mut(key) {
                    s.front.readable |= readiness.readable;
                    s.front.writable |= readiness.writable;
                    self.progress(key, now, ctx);
                }
            }
            TcpToken::Back(key) => {
                if let Some(s) = self.sessions.get_mut(key) {
                    if let Some(back) = s.back.as_mut() {
                        back.readable |= readiness.readable;
                        back.writable |= readiness.writable;
                    }
                    if s.phase == Phase::Connecting {
                        self.check_connect(key, now, ctx);
                    }
                    if self.sessions.contains(key) {
                        self.progress(key, now, ctx);
                    }
                }
            }
        }
    }

    fn accept_on(&mut self, id: usize, now: Instant, ctx: &mut ProxyContext<'_, TcpToken>) {
        let mut accepted = 0;
        while let Some(Accepted {
            stream,
            client,
            slot,
        }) = self.listeners.accept_next(id, &mut accepted, ctx.metrics)
        {
            let Some(listener) = self.listeners.get(id) else {
                return;
            };
            let Some(frontend) = listener.data.frontend.clone() else {
                count(ctx.metrics, listener.data.handles.no_frontend, 1);
                TcpAccessRecord {
                    listener: listener.address,
                    client,
                    cluster: None,
                    backend: None,
                    tags: None,
                    bytes_in: 0,
                    bytes_out: 0,
                    duration: Duration::ZERO,
                    connect_time: None,
                    reason: SessionCloseReason::NoFrontend,
                }
                .emit();
                continue; // dropping the stream closes it
            };
            let timeouts = listener.data.timeouts();
            // Clients send a PROXY header when the listener says so, or when
            // the cluster expects (EXPECT_HEADER) or relays (RELAY_HEADER)
            // one, as in Sōzu.
            let cluster_expects = matches!(
                self.clusters
                    .get(frontend.cluster.as_str())
                    .and_then(|k| k.proxy_protocol),
                Some(ProxyProtocolConfig::ExpectHeader | ProxyProtocolConfig::RelayHeader)
            );
            let expect_proxy = listener.data.config.expect_proxy || cluster_expects;
            let listener_address = listener.address;
            let handles = listener.data.handles;
            let entry = self.sessions.vacant_entry();
            let key = entry.key();
            let token = ctx.tokens.insert(TcpToken::Front(key));
            let mut front = Side::new(stream, token, now);
            if let Err(error) = front.register(ctx.registry) {
                tracing::warn!(%error, "registering a client connection");
                ctx.tokens.remove(token);
                continue;
            }
            let cluster_handles = self.handles.cluster(ctx.metrics, &frontend.cluster);
            gauge_add(ctx.metrics, handles.active, 1);
            entry.insert(Session {
                listener: id,
                listener_address,
                client,
                front,
                back: None,
                phase: if expect_proxy {
                    Phase::ExpectProxy
                } else {
                    Phase::NeedsBackend
                },
                cluster: Some(frontend.cluster),
                tags: frontend.tags,
                backend: None,
                flow_counted: false,
                preamble: None,
                received_header: None,
                up: Buffer::new(self.buffer_size),
                down: Buffer::new(self.buffer_size),
                attempt: 0,
                timeouts,
                started: now,
                connect_started: None,
                connect_time: None,
                bytes_in: 0,
                bytes_out: 0,
                timer: ArmedTimer::default(),
                cluster_handles,
                backend_handles: Default::default(),
                _slot: slot,
            });
            self.progress(key, now, ctx);
        }
    }

    /// Pumps a session, starts its backend connect when due, closes it when
    /// done or failed, and re-arms its timer.
    fn progress(&mut self, key: usize, now: Instant, ctx: &mut ProxyContext<'_, TcpToken>) {
        let Some(session) = self.sessions.get_mut(key) else {
            return;
        };
        let result = session.pump(now);
        match result {
            Ok(moved) => {
                let handles = session.handles();
                count(ctx.metrics, handles.bytes_in, moved.bytes_in as i64);
                count(ctx.metrics, handles.bytes_out, moved.bytes_out as i64);
            }
            Err(reason) => {
                self.close_session(key, now, reason, ctx);
                return;
            }
        }
        if session.phase == Phase::NeedsBackend {
            self.start_connect(key, now, ctx);
            return;
        }
        if session.is_complete() {
            self.close_session(key, now, SessionCloseReason::Completed, ctx);
            return;
        }
        let (deadline, _) = session.deadline();
        session
            .timer
            .ensure(&mut self.deadlines, key, Some(deadline));
    }

    fn start_connect(&mut self, key: usize, now: Instant, ctx: &mut ProxyContext<'_, TcpToken>) {
        let Some(session) = self.sessions.get_mut(key) else {
            return;
        };
        let Some(cluster) = session.cluster.clone() else {
            self.close_session(key, now, SessionCloseReason::NoFrontend, ctx);
            return;
        };
        let affinity = stable_hash(session.client.ip().to_canonical().to_string().as_bytes());
        let attempt = session.attempt + 1;
        match connect_backend(ctx.backends, &cluster, affinity, attempt) {
            Ok(connecting) => {
                let token = ctx.tokens.insert(TcpToken::Back(key));
                let mut back = Side::new(connecting.stream, token, now);
                // Not writable until the connect completes.
                back.writable = false;
                back.readable = false;
                if let Err(error) = back.register(ctx.registry) {
                    tracing::warn!(%error, "registering a backend connection");
                    ctx.tokens.remove(token);
                    self.close_session(key, now, SessionCloseReason::ConnectFailed, ctx);
                    return;
                }
                session.attempt = connecting.attempt;
                session.back = Some(back);
                session.backend = Some((connecting.backend, connecting.address));
                session.phase = Phase::Connecting;
                // Each attempt gets its own `connect_timeout`.
                session.connect_started = Some(now);
                let (deadline, _) = session.deadline();
                session
                    .timer
                    .ensure(&mut self.deadlines, key, Some(deadline));
            }
            Err(ConnectError::NoBackend { .. }) => {
                let handles = session.cluster_handles;
                count(ctx.metrics, handles.no_backend, 1);
                self.close_session(key, now, SessionCloseReason::NoBackend, ctx);
            }
            Err(ConnectError::Failed { backend, .. }) => {
                let backend_handles = self.handles.backend(ctx.metrics, &cluster, &backend);
                count(ctx.metrics, backend_handles.connect_failed, 1);
                self.close_session(key, now, SessionCloseReason::ConnectFailed, ctx);
            }
        }
    }

    fn check_connect(&mut self, key: usize, now: Instant, ctx: &mut ProxyContext<'_, TcpToken>) {
        let Some(session) = self.sessions.get_mut(key) else {
            return;
        };
        let Some(back) = session.back.as_mut() else {
            return;
        };
        match connect_state(&back.stream) {
            ConnectState::Pending => {}
            ConnectState::Connected => {
                let Some((backend, _)) = session.backend.clone() else {
                    return;
                };
                let Some(cluster) = session.cluster.clone() else {
                    return;
                };
                back.readable = true;
                back.writable = true;
                back.last_activity = now;
                session.phase = Phase::Relaying;
                let connect_time =
                    now.saturating_duration_since(session.connect_started.unwrap_or(now));
                session.connect_time = Some(connect_time);
                ctx.backends
                    .mark_responsive(cluster.as_str(), backend.as_str());
                session.flow_counted = ctx.backends.flow_opened(cluster.as_str(), backend.as_str());
                let backend_handles = self.handles.backend(ctx.metrics, &cluster, &backend);
                session.backend_handles = backend_handles;
                count(ctx.metrics, backend_handles.connections, 1);
                gauge_add(ctx.metrics, backend_handles.active, 1);
                time(ctx.metrics, backend_handles.connect_time, connect_time);
                let knobs = self
                    .clusters
                    .get(cluster.as_str())
                    .copied()
                    .unwrap_or_default();
                session.preamble = match knobs.proxy_protocol {
                    Some(ProxyProtocolConfig::SendHeader) => Some(Preamble::new(
                        StreamProxyHeader::new(session.client, session.listener_address)
                            .as_bytes()
                            .to_vec(),
                    )),
                    Some(ProxyProtocolConfig::RelayHeader) => Some(Preamble::new(
                        session.received_header.take().unwrap_or_else(|| {
                            StreamProxyHeader::new(session.client, session.listener_address)
                                .as_bytes()
                                .to_vec()
                        }),
                    )),
                    Some(ProxyProtocolConfig::ExpectHeader) | None => None,
                };
                tracing::debug!(client = %session.client, cluster = %cluster, backend = %backend, "TCP backend connected");
            }
            ConnectState::Failed(error) => {
                self.connect_failed(key, now, ctx, Some(error));
            }
        }
    }

    /// A backend connect failed (`Some(error)`) or timed out (`None`): the
    /// backend is marked
    /// suspect, and another is tried until [`socket::MAX_CONNECT_ATTEMPTS`].
    fn connect_failed(
        &mut self,
        key: usize,
        now: Instant,
        ctx: &mut ProxyContext<'_, TcpToken>,
        error: Option<io::Error>,
    ) {
        let Some(session) = self.sessions.get_mut(key) else {
            return;
        };
        let (Some((backend, address)), Some(cluster)) =
            (session.backend.take(), session.cluster.clone())
        else {
            return;
        };
        tracing::debug!(client = %session.client, cluster = %cluster, backend = %backend, %address, ?error, "TCP backend connect failed");
        if let Some(mut back) = session.back.take() {
            back.deregister(ctx.registry);
            ctx.tokens.remove(back.token);
        }
        if ctx
            .backends
            .mark_suspect(cluster.as_str(), backend.as_str())
        {
            ctx.health
                .passive_failure(now, cluster.as_str(), backend.as_str());
        }
        let backend_handles = self.handles.backend(ctx.metrics, &cluster, &backend);
        count(ctx.metrics, backend_handles.connect_failed, 1);
        if session.attempt >= socket::MAX_CONNECT_ATTEMPTS {
            session.backend = Some((backend, address));
            let reason = if error.is_none() {
                SessionCloseReason::ConnectTimeout
            } else {
                SessionCloseReason::ConnectFailed
            };
            self.close_session(key, now, reason, ctx);
        } else {
            session.phase = Phase::NeedsBackend;
            self.start_connect(key, now, ctx);
        }
    }

    fn close_session(
        &mut self,
        key: usize,
        now: Instant,
        reason: SessionCloseReason,
        ctx: &mut ProxyContext<'_, TcpToken>,
    ) {
        let Some(mut session) = self.sessions.try_remove(key) else {
            return;
        };
        session.front.deregister(ctx.registry);
        ctx.tokens.remove(session.front.token);
        if let Some(mut back) = session.back.take() {
            back.deregister(ctx.registry);
            ctx.tokens.remove(back.token);
        }
        let duration = now.saturating_duration_since(session.started);
        if let Some(listener) = self.listeners.get(session.listener) {
            if listener.address == session.listener_address {
                gauge_add(ctx.metrics, listener.data.handles.active, -1);
                if reason.is_timeout() {
                    count(ctx.metrics, listener.data.handles.timeouts, 1);
                }
            }
        }
        let handles = session.handles();
        time(ctx.metrics, handles.duration, duration);
        if session.phase == Phase::Relaying {
            gauge_add(ctx.metrics, handles.active, -1);
        }
        if let (true, Some(cluster), Some((backend, _))) =
            (session.flow_counted, &session.cluster, &session.backend)
        {
            ctx.backends.flow_closed(cluster.as_str(), backend.as_str());
        }
        TcpAccessRecord {
            listener: session.listener_address,
            client: session.client,
            cluster: session.cluster.as_ref(),
            backend: session.backend.as_ref().map(|(id, addr)| (id, *addr)),
            tags: session.tags.as_deref(),
            bytes_in: session.bytes_in,
            bytes_out: session.bytes_out,
            duration,
            connect_time: session.connect_time,
            reason,
        }
        .emit();
        if reason == SessionCloseReason::ProxyHeaderInvalid {
            if let Some(listener) = self.listeners.get(session.listener) {
                count(ctx.metrics, listener.data.handles.proxy_header_invalid, 1);
            }
        }
    }
}

impl StreamProxy for TcpProxy {
    type Token = TcpToken;
    type Listener = TcpListenerData;
    type Error = TcpError;
    const LISTENER_TYPE: ListenerType = ListenerType::Tcp;

    fn listener_set(&mut self) -> &mut ListenerSet<TcpListenerData> {
        &mut self.listeners
    }

    fn listeners(&self) -> &ListenerSet<TcpListenerData> {
        &self.listeners
    }

    fn active_sessions(&self) -> usize {
        self.sessions.len()
    }

    fn accept(&mut self, id: usize, now: Instant, ctx: &mut ProxyContext<'_, TcpToken>) {
        self.accept_on(id, now, ctx);
    }

    fn sessions_of_listener(&self, id: usize) -> Vec<usize> {
        self.sessions
            .iter()
            .filter(|(_, s)| s.listener == id)
            .map(|(k, _)| k)
            .collect()
    }

    fn close_for_removed_listener(
        &mut self,
        key: usize,
        now: Instant,
        ctx: &mut ProxyContext<'_, TcpToken>,
    ) {
        self.close_session(key, now, SessionCloseReason::ListenerRemoved, ctx);
    }

    fn forget_listener(&mut self, _address: SocketAddr) -> StreamKind {
        StreamKind::Tcp
    }

    fn set_cluster(&mut self, cluster: &Cluster) {
        self.clusters
            .insert(cluster.cluster_id.clone(), ClusterKnobs::of(cluster));
    }

    fn remove_cluster(&mut self, cluster: &str) {
        self.clusters.remove(cluster);
        self.handles.forget_cluster(cluster);
    }

    fn remove_backend(&mut self, cluster: &str, backend: &str) {
        self.handles.forget_backend(cluster, backend);
    }

    fn apply_own_order(
        &mut self,
        order: &RequestType,
        ctx: &mut ProxyContext<'_, TcpToken>,
    ) -> Result<(), TcpError> {
        match order {
            RequestType::AddTcpListener(config) => self.add_listener(config, ctx),
            RequestType::UpdateTcpListener(update) => self.update_listener(update),
            RequestType::AddTcpFrontend(f) => self.add_frontend(f),
            RequestType::RemoveTcpFrontend(f) => self.remove_frontend(f),
            _ => Ok(()),
        }
    }
}
