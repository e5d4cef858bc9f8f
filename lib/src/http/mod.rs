//! The HTTP/1.1 proxy: HTTP listeners whose frontends route requests by
//! hostname and path to clusters, hosted by the worker's single mio loop
//! beside UDP and TCP. See `doc/tcp_http.md` for what an operator sees.
//!
//! Owns its listening sockets, its routing tables (one [`Router`] per
//! listener address), its client connections ([`session::Session`]), their
//! deadlines, the cluster knobs it needs and its metric handles. Backends
//! and load balancing are shared with every protocol and borrowed per call
//! in a [`ProxyContext`]. The pure parts — heads ([`head`]), body framing
//! ([`body`]), routing ([`router`]), answers ([`answers`]) — never touch a
//! socket. It must never block, read the clock, panic on a peer's bytes, or
//! number its own tokens.

pub mod access;
pub mod answers;
pub mod metrics;
pub mod session;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Instant;

use mio::net::TcpListener;
use mio::{Interest, Token};
use slab::Slab;
use sozu_command_lib::command::{
    Cluster, HttpListenerConfig, ProxyProtocolConfig, RequestHttpFrontend, UpdateHttpListenerConfig,
};
use sozu_command_lib::proto::convert::AddressError;

use crate::tcp::context::{ProxyContext, Readiness};
use crate::tcp::deadlines::Deadlines;
use crate::tcp::limit::ConnectionLimit;
use crate::tcp::metrics::count;
use crate::tcp::socket::{self, Side};
use crate::tcp::{seconds, DEFAULT_BUFFER_SIZE};

use metrics::{HttpHandleCache, HttpHandles};
pub use crate::protocol::http::router::{RouteError, RouteTarget, Router};
use session::{Env, HttpTimeouts, Phase, Session, SessionEnd};

/// What an HTTP token stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpToken {
    /// A listening socket, by listener id.
    Listener(usize),
    /// A client connection.
    Front(usize),
    /// A client connection's backend connection.
    Back(usize),
}

/// A refused HTTP order.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// An address field is not a socket address.
    #[error("invalid {field}")]
    Address {
        field: &'static str,
        #[source]
        source: AddressError,
    },
    /// A listener already exists at this address.
    #[error("an HTTP listener already exists at {address}")]
    ListenerExists { address: SocketAddr },
    /// No listener at this address.
    #[error("no HTTP listener at {address}")]
    UnknownListener { address: SocketAddr },
    /// A frontend the routing table refuses.
    #[error("HTTP frontend at {address}")]
    Route {
        address: SocketAddr,
        #[source]
        source: RouteError,
    },
    /// Binding the listening socket failed.
    #[error("binding HTTP listener {address}")]
    Bind {
        address: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// Registering the listening socket failed.
    #[error("registering HTTP listener {address}")]
    Register {
        address: SocketAddr,
        #[source]
        source: io::Error,
    },
}

fn wire(
    field: &'static str,
    address: &sozu_command_lib::command::SocketAddress,
) -> Result<SocketAddr, HttpError> {
    SocketAddr::try_from(address).map_err(|source| HttpError::Address { field, source })
}

/// What a cluster tells the HTTP proxy.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClusterKnobs {
    /// `SEND_HEADER` / `RELAY_HEADER`: a PROXY v2 header opens each backend
    /// connection.
    pub proxy_protocol: Option<ProxyProtocolConfig>,
}

#[derive(Debug)]
struct Listener {
    address: SocketAddr,
    config: HttpListenerConfig,
    socket: Option<TcpListener>,
    token: Option<Token>,
    handles: HttpHandles,
    backlog: bool,
}

impl Listener {
    fn timeouts(&self) -> HttpTimeouts {
        HttpTimeouts {
            front: seconds(self.config.front_timeout),
            back: seconds(self.config.back_timeout),
            connect: seconds(self.config.connect_timeout),
            request: seconds(self.config.request_timeout),
        }
    }
}

/// The HTTP listeners and connections of one worker.
#[derive(Debug)]
pub struct HttpProxy {
    listeners: Slab<Listener>,
    by_address: HashMap<SocketAddr, usize>,
    routers: HashMap<SocketAddr, Router>,
    sessions: Slab<Session>,
    deadlines: Deadlines,
    clusters: HashMap<String, ClusterKnobs>,
    handles: HttpHandleCache,
    adopted: HashMap<SocketAddr, OwnedFd>,
    /// Run by a master: listening sockets come from it, never from `bind`,
    /// and a deactivated listener keeps its socket (the master holds it
    /// bound anyway).
    require_adopted: bool,
    buffer_size: usize,
    draining: bool,
    /// The worker's `max_connections`, shared with the TCP proxy.
    limit: ConnectionLimit,
}

/// Splits the borrows a session call needs.
macro_rules! env {
    ($self:ident, $ctx:expr, $key:expr, $address:expr) => {
        Env {
            ctx: $ctx,
            router: $self.routers.get(&$address),
            clusters: &$self.clusters,
            handles: &mut $self.handles,
            key: $key,
            draining: $self.draining,
        }
    };
}

impl HttpProxy {
    /// An empty proxy; each connection gets two buffers of `buffer_size`
    /// bytes (0: [`DEFAULT_BUFFER_SIZE`]), which also bound a request or
    /// response head.
    pub fn new(buffer_size: usize) -> Self {
        HttpProxy {
            listeners: Slab::new(),
            by_address: HashMap::new(),
            routers: HashMap::new(),
            sessions: Slab::new(),
            deadlines: Deadlines::new(),
            clusters: HashMap::new(),
            handles: HttpHandleCache::default(),
            adopted: HashMap::new(),
            require_adopted: false,
            buffer_size: if buffer_size == 0 {
                DEFAULT_BUFFER_SIZE
            } else {
                buffer_size
            },
            draining: false,
            limit: ConnectionLimit::default(),
        }
    }

    /// Closes an adopted socket no listener took (its listener was removed
    /// before it was activated, or its add failed).
    pub fn forget_adopted(&mut self, address: SocketAddr) {
        self.adopted.remove(&address);
    }

    /// From now on listening sockets only come from the master (see
    /// `crate::listen_socket`).
    pub fn require_adopted(&mut self) {
        self.require_adopted = true;
    }

    /// Shares the worker's connection budget (`max_connections`; the
    /// default is unlimited).
    pub fn set_connection_limit(&mut self, limit: ConnectionLimit) {
        self.limit = limit;
    }

    /// Listening sockets passed by the master (upgrade).
    pub fn adopt(&mut self, sockets: Vec<(SocketAddr, OwnedFd)>) {
        self.adopted.extend(sockets);
    }

    // ----- listeners -----

    /// Adds a listener; binds and accepts at once if `config.active`.
    pub fn add_listener(
        &mut self,
        config: &HttpListenerConfig,
        ctx: &mut ProxyContext<'_, HttpToken>,
    ) -> Result<(), HttpError> {
        let address = wire("address", &config.address)?;
        if self.by_address.contains_key(&address) {
            return Err(HttpError::ListenerExists { address });
        }
        let handles = HttpHandles::register(ctx.metrics, crate::metrics::Scope::Listener(address));
        let id = self.listeners.insert(Listener {
            address,
            config: config.clone(),
            socket: None,
            token: None,
            handles,
            backlog: false,
        });
        self.by_address.insert(address, id);
        if config.active {
            if let Err(error) = self.activate(address, ctx) {
                self.listeners.remove(id);
                self.by_address.remove(&address);
                return Err(error);
            }
        }
        Ok(())
    }

    /// Patches timeouts and `expect_proxy` (new connections only).
    pub fn update_listener(&mut self, update: &UpdateHttpListenerConfig) -> Result<(), HttpError> {
        let address = wire("address", &update.address)?;
        let id = *self
            .by_address
            .get(&address)
            .ok_or(HttpError::UnknownListener { address })?;
        let config = &mut self.listeners[id].config;
        if let Some(v) = update.front_timeout {
            config.front_timeout = v;
        }
        if let Some(v) = update.back_timeout {
            config.back_timeout = v;
        }
        if let Some(v) = update.connect_timeout {
            config.connect_timeout = v;
        }
        if let Some(v) = update.request_timeout {
            config.request_timeout = v;
        }
        if let Some(v) = update.expect_proxy {
            config.expect_proxy = v;
        }
        if update.public_address.is_some() {
            config.public_address = update.public_address;
        }
        Ok(())
    }

    /// Binds (or adopts) the socket if needed and starts accepting
    /// (ignored while soft-stopping).
    pub fn activate(
        &mut self,
        address: SocketAddr,
        ctx: &mut ProxyContext<'_, HttpToken>,
    ) -> Result<(), HttpError> {
        let id = *self
            .by_address
            .get(&address)
            .ok_or(HttpError::UnknownListener { address })?;
        if self.draining {
            tracing::info!(listener = %address, "soft-stopping: listener stays inactive");
            return Ok(());
        }
        let listener = &mut self.listeners[id];
        if listener.socket.is_none() {
            let socket = match self.adopted.remove(&address) {
                Some(fd) => socket::adopt_listener(fd),
                None if self.require_adopted => Err(crate::listen_socket::not_passed(address)),
                None => socket::bind_listener(address),
            }
            .map_err(|source| HttpError::Bind { address, source })?;
            listener.socket = Some(socket);
        }
        if listener.token.is_none() {
            let token = ctx.tokens.insert(HttpToken::Listener(id));
            let Some(socket) = listener.socket.as_mut() else {
                ctx.tokens.remove(token);
                return Ok(());
            };
            if let Err(source) = ctx.registry.register(socket, token, Interest::READABLE) {
                ctx.tokens.remove(token);
                return Err(HttpError::Register { address, source });
            }
            listener.token = Some(token);
            listener.backlog = true;
        }
        tracing::info!(listener = %address, "HTTP listener active");
        Ok(())
    }

    /// Stops accepting and closes the listening socket; live connections
    /// go on.
    pub fn deactivate(
        &mut self,
        address: SocketAddr,
        ctx: &mut ProxyContext<'_, HttpToken>,
    ) -> Result<(), HttpError> {
        let id = *self
            .by_address
            .get(&address)
            .ok_or(HttpError::UnknownListener { address })?;
        if self.require_adopted {
            Self::stop_accepting(&mut self.listeners[id], ctx);
        } else {
            Self::close_listener_socket(&mut self.listeners[id], ctx);
        }
        tracing::info!(listener = %address, "HTTP listener deactivated");
        Ok(())
    }

    /// Closes the listener, its socket, its connections and its routes.
    pub fn remove_listener(
        &mut self,
        now: Instant,
        address: SocketAddr,
        ctx: &mut ProxyContext<'_, HttpToken>,
    ) -> Result<(), HttpError> {
        let id = self
            .by_address
            .remove(&address)
            .ok_or(HttpError::UnknownListener { address })?;
        let mut listener = self.listeners.remove(id);
        Self::close_listener_socket(&mut listener, ctx);
        let doomed: Vec<usize> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.listener == id)
            .map(|(k, _)| k)
            .collect();
        for key in doomed {
            self.close_session(key, now, SessionEnd::ListenerRemoved, ctx);
        }
        self.routers.remove(&address);
        ctx.metrics
            .remove_scope(&crate::metrics::Scope::Listener(address));
        tracing::info!(listener = %address, "HTTP listener removed");
        Ok(())
    }

    /// Stops accepting but keeps the socket (activate registers it again).
    fn stop_accepting(listener: &mut Listener, ctx: &mut ProxyContext<'_, HttpToken>) {
        if let (Some(socket), Some(_)) = (listener.socket.as_mut(), listener.token) {
            if let Err(error) = ctx.registry.deregister(socket) {
                tracing::debug!(%error, "deregistering a HTTP listener");
            }
        }
        if let Some(token) = listener.token.take() {
            ctx.tokens.remove(token);
        }
        listener.backlog = false;
    }

    fn close_listener_socket(listener: &mut Listener, ctx: &mut ProxyContext<'_, HttpToken>) {
        if let Some(mut socket) = listener.socket.take() {
            if listener.token.is_some() {
                if let Err(error) = ctx.registry.deregister(&mut socket) {
                    tracing::debug!(%error, "deregistering an HTTP listener");
                }
            }
        }
        if let Some(token) = listener.token.take() {
            ctx.tokens.remove(token);
        }
        listener.backlog = false;
    }

    /// The listening sockets (for an upgrade's hand-over).
    pub fn listen_sockets(&self) -> Vec<(SocketAddr, BorrowedFd<'_>)> {
        self.listeners
            .iter()
            .filter_map(|(_, l)| l.socket.as_ref().map(|s| (l.address, s.as_fd())))
            .collect()
    }

    // ----- frontends and clusters -----

    /// Adds a route to the listener at the frontend's address (the
    /// listener may be added later: routes are kept by address).
    pub fn add_frontend(&mut self, frontend: &RequestHttpFrontend) -> Result<(), HttpError> {
        let address = wire("address", &frontend.address)?;
        self.routers
            .entry(address)
            .or_default()
            .add(frontend)
            .map_err(|source| HttpError::Route { address, source })
    }

    /// Removes a route; requests already routed go on.
    pub fn remove_frontend(&mut self, frontend: &RequestHttpFrontend) -> Result<(), HttpError> {
        let address = wire("address", &frontend.address)?;
        let router = self.routers.entry(address).or_default();
        let result = router
            .remove(frontend)
            .map_err(|source| HttpError::Route { address, source });
        if router.is_empty() {
            self.routers.remove(&address);
        }
        result
    }

    /// Records a cluster's `proxy_protocol` knob.
    pub fn set_cluster(&mut self, cluster: &Cluster) {
        let proxy_protocol = cluster
            .proxy_protocol
            .and_then(|p| ProxyProtocolConfig::try_from(p).ok());
        self.clusters
            .insert(cluster.cluster_id.clone(), ClusterKnobs { proxy_protocol });
    }

    /// Forgets a cluster (routes to it answer 503 until removed).
    pub fn remove_cluster(&mut self, cluster: &str) {
        self.clusters.remove(cluster);
        self.handles.forget_cluster(cluster);
    }

    /// Forgets a removed backend's metric handles; kept connections to it
    /// finish their current request and are not reused after.
    pub fn remove_backend(&mut self, cluster: &str, backend: &str) {
        self.handles.forget_backend(cluster, backend);
    }

    // ----- lifecycle -----

    /// Soft-stop: stop accepting, close idle keep-alive connections; the
    /// others finish their current request and close after its response.
    pub fn soft_stop(&mut self, now: Instant, ctx: &mut ProxyContext<'_, HttpToken>) {
        self.draining = true;
        for (_, listener) in self.listeners.iter_mut() {
            Self::close_listener_socket(listener, ctx);
        }
        let idle: Vec<usize> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.is_idle())
            .map(|(k, _)| k)
            .collect();
        for key in idle {
            self.close_session(key, now, SessionEnd::Shutdown, ctx);
        }
    }

    /// Hard-stop: closes everything now.
    pub fn hard_stop(&mut self, now: Instant, ctx: &mut ProxyContext<'_, HttpToken>) {
        self.soft_stop(now, ctx);
        let keys: Vec<usize> = self.sessions.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.close_session(key, now, SessionEnd::Shutdown, ctx);
        }
        self.deadlines.clear();
    }

    /// True when no connection is alive.
    pub fn is_drained(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Client connections alive now.
    pub fn active_sessions(&self) -> usize {
        self.sessions.len()
    }

    // ----- event loop -----

    /// The earliest deadline (possibly stale: handling it re-arms).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadlines.peek()
    }

    /// True when a listener stopped at its accept budget.
    pub fn has_backlog(&self) -> bool {
        self.listeners
            .iter()
            .any(|(_, l)| l.backlog && l.token.is_some())
    }

    /// Accepts again on listeners that ran out of budget.
    pub fn accept_backlog(&mut self, now: Instant, ctx: &mut ProxyContext<'_, HttpToken>) {
        let ids: Vec<usize> = self
            .listeners
            .iter()
            .filter(|(_, l)| l.backlog && l.token.is_some())
            .map(|(k, _)| k)
            .collect();
        for id in ids {
            self.accept(id, now, ctx);
        }
    }

    /// Handles passed deadlines.
    pub fn handle_timeout(&mut self, now: Instant, ctx: &mut ProxyContext<'_, HttpToken>) {
        while let Some((at, key)) = self.deadlines.pop_due(now) {
            let Some(session) = self.sessions.get_mut(key) else {
                continue;
            };
            if !session.timer.fired(at) {
                continue;
            }
            let address = session.listener_address;
            let mut env = env!(self, ctx, key, address);
            let result = session.on_timeout(now, &mut env);
            self.after(key, now, result, ctx);
        }
    }

    /// A readiness event for one of the proxy's sockets.
    pub fn ready(
        &mut self,
        token: HttpToken,
        readiness: Readiness,
        now: Instant,
        ctx: &mut ProxyContext<'_, HttpToken>,
    ) {
        let key = match token {
            HttpToken::Listener(id) => {
                self.accept(id, now, ctx);
                return;
            }
            HttpToken::Front(key) => {
                let Some(session) = self.sessions.get_mut(key) else {
                    return;
                };
                session.front.readable |= readiness.readable;
                session.front.writable |= readiness.writable;
                key
            }
            HttpToken::Back(key) => {
                let Some(session) = self.sessions.get_mut(key) else {
                    return;
                };
                session.back_ready(readiness.readable, readiness.writable);
                key
            }
        };
        self.drive(key, now, ctx);
    }

    fn drive(&mut self, key: usize, now: Instant, ctx: &mut ProxyContext<'_, HttpToken>) {
        let Some(session) = self.sessions.get_mut(key) else {
            return;
        };
        let address = session.listener_address;
        let mut env = env!(self, ctx, key, address);
        let result = session.drive(now, &mut env);
        self.after(key, now, result, ctx);
    }

    /// Closes the session on `Err`, else re-arms its timer.
    fn after(
        &mut self,
        key: usize,
        now: Instant,
        result: Result<(), SessionEnd>,
        ctx: &mut ProxyContext<'_, HttpToken>,
    ) {
        match result {
            Err(end) => self.close_session(key, now, end, ctx),
            Ok(()) => {
                if let Some(session) = self.sessions.get_mut(key) {
                    let deadline = session.deadline();
                    session
                        .timer
                        .ensure(&mut self.deadlines, key, Some(deadline));
                }
            }
        }
    }

    fn accept(&mut self, id: usize, now: Instant, ctx: &mut ProxyContext<'_, HttpToken>) {
        let mut accepted = 0;
        loop {
            let Some(listener) = self.listeners.get_mut(id) else {
                return;
            };
            let Some(socket) = listener.socket.as_ref() else {
                return;
            };
            if accepted == socket::ACCEPT_BUDGET {
                listener.backlog = true;
                return;
            }
            let (stream, client) = match socket.accept() {
                Ok(pair) => pair,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    listener.backlog = false;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    tracing::warn!(listener = %listener.address, %error, "accept failed");
                    listener.backlog = false;
                    return;
                }
            };
            accepted += 1;
            let Some(slot) = self.limit.try_acquire() else {
                // At max_connections: closed at once (dropping the stream),
                // so neither memory nor the backlog fills up.
                count(ctx.metrics, listener.handles.refused, 1);
                tracing::debug!(listener = %listener.address, %client, max = self.limit.max(), "max_connections reached: connection refused");
                continue;
            };
            count(ctx.metrics, listener.handles.connections, 1);
            if let Err(error) = stream.set_nodelay(true) {
                tracing::debug!(%error, "TCP_NODELAY");
            }
            let timeouts = listener.timeouts();
            let expect_proxy = listener.config.expect_proxy;
            let address = listener.address;
            let handles = listener.handles;
            let entry = self.sessions.vacant_entry();
            let key = entry.key();
            let token = ctx.tokens.insert(HttpToken::Front(key));
            let mut front = Side::new(stream, token, now);
            if let Err(error) = front.register(ctx.registry) {
                tracing::warn!(%error, "registering a client connection");
                ctx.tokens.remove(token);
                continue;
            }
            crate::tcp::metrics::gauge_add(ctx.metrics, handles.active, 1);
            entry.insert(Session::new(
                id,
                address,
                client,
                front,
                expect_proxy,
                timeouts,
                self.buffer_size,
                handles,
                slot,
            ));
            self.drive(key, now, ctx);
        }
    }

    fn close_session(
        &mut self,
        key: usize,
        now: Instant,
        end: SessionEnd,
        ctx: &mut ProxyContext<'_, HttpToken>,
    ) {
        let Some(mut session) = self.sessions.try_remove(key) else {
            return;
        };
        let address = session.listener_address;
        let mut env = env!(self, ctx, key, address);
        session.teardown(now, end, &mut env);
        debug_assert!(
            session.phase != Phase::Connecting || session.back_token().is_none(),
            "teardown releases the backend socket"
        );
    }
}
