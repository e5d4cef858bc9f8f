//! The HTTP/1.1 proxy: HTTP listeners whose frontends route requests by
//! hostname and path to clusters, hosted by the worker's single mio loop
//! beside UDP and TCP. See `doc/tcp_http.md` for what an operator sees.
//!
//! Owns its listeners (a [`crate::stream::ListenerSet`]), its routing
//! tables (one [`Router`] per listener address), its client connections
//! (`session::Session`), their
//! deadlines, the cluster knobs it needs and its metric handles. Backends
//! and load balancing are shared with every protocol and borrowed per call
//! in a [`ProxyContext`]. The pure parts — heads, body framing and routing —
//! live in [`crate::protocol::http`]; the proxy's own answers in `answers`.
//! The listener lifecycle, accept loop and `max_connections` gate are
//! [`crate::stream`]'s. It must never block, read the clock, panic on a peer's bytes, or
//! number its own tokens.

pub(crate) mod access;
pub(crate) mod answers;
pub(crate) mod features;
pub(crate) mod metrics;
pub(crate) mod session;
pub(crate) mod templates;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::time::Instant;

use slab::Slab;
use sozu_command_lib::command::{
    request::RequestType, Cluster, HttpListenerConfig, ListenerType, RequestHttpFrontend,
    UpdateHttpListenerConfig,
};
use sozu_command_lib::proto::convert::{wire_address, FieldAddressError};

use crate::metrics::gauge_add;
use crate::protocol::http::hsts::Hsts;
use crate::stream::deadlines::Deadlines;
use crate::stream::limit::ConnectionLimit;
use crate::stream::listeners::{AcceptHandles, Accepted};
use crate::stream::socket::Side;
use crate::stream::tls::{HandshakeHandles, TlsFront};
use crate::stream::{
    seconds, ClusterKnobs, ListenerError, ListenerSet, ListenerToken, ProxyContext, Readiness,
    StreamKind, StreamProxy,
};

pub use crate::protocol::http::router::{RouteError, RouteTarget, Router};
use features::HttpFeatures;
use metrics::{HttpHandleCache, HttpHandles};
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

impl ListenerToken for HttpToken {
    fn listener(id: usize) -> Self {
        HttpToken::Listener(id)
    }
}

/// A refused HTTP order.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// A listener order refused (shared with TCP).
    #[error(transparent)]
    Listener(#[from] ListenerError),
    /// A frontend the routing table refuses.
    #[error("HTTP frontend at {address}")]
    Route {
        /// The frontend's listener address.
        address: SocketAddr,
        /// Why the route was refused.
        #[source]
        source: RouteError,
    },
}

impl From<FieldAddressError> for HttpError {
    fn from(error: FieldAddressError) -> Self {
        HttpError::Listener(error.into())
    }
}

/// The HTTP part of a listener.
#[derive(Debug)]
pub struct HttpListenerData {
    config: HttpListenerConfig,
    handles: HttpHandles,
    /// On an HTTPS listener: its handshake counters (clients speak TLS).
    tls: Option<HandshakeHandles>,
}

impl HttpListenerData {
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
    listeners: ListenerSet<HttpListenerData>,
    routers: HashMap<SocketAddr, Router>,
    sessions: Slab<Session>,
    deadlines: Deadlines,
    clusters: HashMap<String, ClusterKnobs>,
    /// Custom answers, redirects, sticky sessions.
    features: HttpFeatures,
    handles: HttpHandleCache,
    buffer_size: usize,
    /// The rustls configuration of each HTTPS listener, by address (kept
    /// by the worker from the TLS orders, see `crate::tls::TlsListeners`).
    tls_configs: HashMap<SocketAddr, Arc<rustls::ServerConfig>>,
}

/// Splits the borrows a session call needs.
macro_rules! env {
    ($self:ident, $ctx:expr, $key:expr, $address:expr) => {
        Env {
            ctx: $ctx,
            router: $self.routers.get(&$address),
            clusters: &$self.clusters,
            features: &$self.features,
            handles: &mut $self.handles,
            key: $key,
            draining: $self.listeners.is_draining(),
        }
    };
}

impl HttpProxy {
    /// An empty proxy; each connection gets two buffers of `buffer_size`
    /// bytes (0: [`DEFAULT_BUFFER_SIZE`]), which also bound a request or
    /// response head.
    pub fn new(buffer_size: usize) -> Self {
        HttpProxy {
            listeners: ListenerSet::new(StreamKind::Http),
            routers: HashMap::new(),
            sessions: Slab::new(),
            deadlines: Deadlines::new(),
            clusters: HashMap::new(),
            features: HttpFeatures::default(),
            handles: HttpHandleCache::default(),
            buffer_size: crate::stream::buffer_size(buffer_size),
            tls_configs: HashMap::new(),
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
        config: &HttpListenerConfig,
        ctx: &mut ProxyContext<'_, HttpToken>,
    ) -> Result<(), HttpError> {
        let address = wire_address("address", &config.address)?;
        let handles = HttpHandles::register(ctx.metrics, crate::metrics::Scope::Listener(address));
        let accept = AcceptHandles {
            connections: handles.connections,
            refused: handles.refused,
        };
        let data = HttpListenerData {
            config: config.clone(),
            handles,
            tls: None,
        };
        self.listeners
            .add(address, config.active, data, accept, ctx)?;
        self.features.set_listener(
            address,
            config.http_answers.as_ref(),
            &config.answers,
            &config.sticky_name,
            None,
        );
        Ok(())
    }

    /// Adds an HTTPS listener: the HTTP proxying of an HTTP listener behind
    /// a TLS handshake with `tls` (see [`Self::set_tls_config`]).
    pub fn add_https_listener(
        &mut self,
        config: &sozu_command_lib::command::HttpsListenerConfig,
        tls: Arc<rustls::ServerConfig>,
        ctx: &mut ProxyContext<'_, HttpToken>,
    ) -> Result<(), HttpError> {
        let http = https_as_http(config);
        let address = wire_address("address", &http.address)?;
        let scope = crate::metrics::Scope::Listener(address);
        let handles = HttpHandles::register(ctx.metrics, scope.clone());
        let handshakes = HandshakeHandles::register(ctx.metrics, scope);
        let accept = AcceptHandles {
            connections: handles.connections,
            refused: handles.refused,
        };
        let data = HttpListenerData {
            config: http.clone(),
            handles,
            tls: Some(handshakes),
        };
        let previous = self.tls_configs.insert(address, tls);
        let added =
            self.listeners
                .add_kind(StreamKind::Https, address, http.active, data, accept, ctx);
        if let Err(error) = added {
            // Not added: the TLS configuration goes back to what it was.
            match previous {
                Some(previous) => self.tls_configs.insert(address, previous),
                None => self.tls_configs.remove(&address),
            };
            return Err(error.into());
        }
        self.features.set_listener(
            address,
            http.http_answers.as_ref(),
            &http.answers,
            &http.sticky_name,
            config.hsts.as_ref().and_then(Hsts::from_wire),
        );
        Ok(())
    }

    /// Replaces an HTTPS listener's settings after `update_https_listener`
    /// (new connections only): its HTTP part and its rustls configuration.
    pub fn set_https_listener(
        &mut self,
        config: &sozu_command_lib::command::HttpsListenerConfig,
        tls: Arc<rustls::ServerConfig>,
    ) -> Result<(), HttpError> {
        let http = https_as_http(config);
        let address = wire_address("address", &http.address)?;
        let listener = self.listeners.at_mut(address)?;
        self.features.set_listener(
            address,
            http.http_answers.as_ref(),
            &http.answers,
            &http.sticky_name,
            config.hsts.as_ref().and_then(Hsts::from_wire),
        );
        listener.data.config = http;
        self.tls_configs.insert(address, tls);
        Ok(())
    }

    /// True when the listener at `address` is an HTTPS one.
    pub fn is_https(&self, address: SocketAddr) -> bool {
        self.tls_configs.contains_key(&address)
    }

    /// Patches the listener's configuration (timeouts and `expect_proxy`
    /// matter here; new connections only).
    pub fn update_listener(&mut self, update: &UpdateHttpListenerConfig) -> Result<(), HttpError> {
        let address = wire_address("address", &update.address)?;
        let listener = self.listeners.at_mut(address)?;
        sozu_command_lib::state::patch_http_listener(&mut listener.data.config, update);
        let config = &listener.data.config;
        // An HTTP-level patch leaves an HTTPS listener's policy as it was.
        let hsts = self.features.listener_hsts(address).cloned();
        self.features.set_listener(
            address,
            config.http_answers.as_ref(),
            &config.answers,
            &config.sticky_name,
            hsts,
        );
        Ok(())
    }

    /// The listening sockets (for an upgrade's hand-over).
    pub fn listen_sockets(&self) -> Vec<(SocketAddr, BorrowedFd<'_>)> {
        self.listeners.listen_sockets()
    }

    /// The listening sockets with their type, HTTP or HTTPS (for an
    /// upgrade's hand-over).
    pub fn typed_listen_sockets(&self) -> Vec<(ListenerType, SocketAddr, BorrowedFd<'_>)> {
        self.listeners
            .listen_sockets()
            .into_iter()
            .map(|(a, fd)| {
                let proxy = if self.is_https(a) {
                    ListenerType::Https
                } else {
                    ListenerType::Http
                };
                (proxy, a, fd)
            })
            .collect()
    }

    /// The local address a listener is bound to.
    pub fn local_addr(&self, address: SocketAddr) -> Option<SocketAddr> {
        self.listeners.local_addr(address)
    }

    // ----- frontends and clusters -----

    /// Adds a route to the listener at the frontend's address (the
    /// listener may be added later: routes are kept by address).
    pub fn add_frontend(&mut self, frontend: &RequestHttpFrontend) -> Result<(), HttpError> {
        let address = wire_address("address", &frontend.address)?;
        self.routers
            .entry(address)
            .or_default()
            .add(frontend)
            .map_err(|source| HttpError::Route { address, source })
    }

    /// Removes a route; requests already routed go on.
    pub fn remove_frontend(&mut self, frontend: &RequestHttpFrontend) -> Result<(), HttpError> {
        let address = wire_address("address", &frontend.address)?;
        let router = self.routers.entry(address).or_default();
        let result = router
            .remove(frontend)
            .map_err(|source| HttpError::Route { address, source });
        if router.is_empty() {
            self.routers.remove(&address);
        }
        result
    }

    // ----- lifecycle -----

    /// Soft-stop: stop accepting, close idle keep-alive connections; the
    /// others finish their current request and close after its response.
    pub fn soft_stop(&mut self, now: Instant, ctx: &mut ProxyContext<'_, HttpToken>) {
        self.listeners.soft_stop(ctx);
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

    // ----- event loop -----

    /// The earliest deadline (possibly stale: handling it re-arms).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadlines.peek()
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
                self.accept_on(id, now, ctx);
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
        self.count_handshake(key, ctx);
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

    /// Counts a TLS handshake that ended during the last call.
    fn count_handshake(&mut self, key: usize, ctx: &mut ProxyContext<'_, HttpToken>) {
        let Some(session) = self.sessions.get_mut(key) else {
            return;
        };
        let Some(event) = session.front.tls.as_mut().and_then(|t| t.take_event()) else {
            return;
        };
        if let Some(handles) = self
            .listeners
            .get(session.listener)
            .and_then(|l| l.data.tls)
        {
            handles.count(ctx.metrics, event);
        }
    }

    fn accept_on(&mut self, id: usize, now: Instant, ctx: &mut ProxyContext<'_, HttpToken>) {
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
            let timeouts = listener.data.timeouts();
            let expect_proxy = listener.data.config.expect_proxy;
            let address = listener.address;
            let handles = listener.data.handles;
            let tls = match listener.data.tls {
                None => None,
                Some(_) => {
                    let Some(config) = self.tls_configs.get(&address) else {
                        tracing::warn!(listener = %address, "HTTPS listener without its TLS configuration: connection closed");
                        continue;
                    };
                    match crate::tls::TlsTransport::new(config.clone()) {
                        Ok(transport) => Some(TlsFront::new(transport)),
                        Err(error) => {
                            tracing::warn!(listener = %address, %error, "TLS connection setup failed: connection closed");
                            continue;
                        }
                    }
                }
            };
            let entry = self.sessions.vacant_entry();
            let key = entry.key();
            let token = ctx.tokens.insert(HttpToken::Front(key));
            let mut front = match tls {
                Some(tls) => Side::with_tls(stream, token, now, tls),
                None => Side::new(stream, token, now),
            };
            if let Err(error) = front.register(ctx.registry) {
                tracing::warn!(%error, "registering a client connection");
                ctx.tokens.remove(token);
                continue;
            }
            gauge_add(ctx.metrics, handles.active, 1);
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
        if let Some(tls) = session.front.tls.as_mut() {
            tls.closing(end == SessionEnd::IdleTimeout);
            if let (Some(event), Some(handles)) = (
                tls.take_event(),
                self.listeners
                    .get(session.listener)
                    .and_then(|l| l.data.tls),
            ) {
                handles.count(ctx.metrics, event);
            }
        }
        let address = session.listener_address;
        let mut env = env!(self, ctx, key, address);
        session.teardown(now, end, &mut env);
        debug_assert!(
            session.phase != Phase::Connecting || session.back_token().is_none(),
            "teardown releases the backend socket"
        );
    }
}

impl StreamProxy for HttpProxy {
    type Token = HttpToken;
    type Listener = HttpListenerData;
    type Error = HttpError;
    const LISTENER_TYPE: ListenerType = ListenerType::Http;

    fn serves(&self, proxy: ListenerType) -> bool {
        matches!(proxy, ListenerType::Http | ListenerType::Https)
    }

    fn listener_set(&mut self) -> &mut ListenerSet<HttpListenerData> {
        &mut self.listeners
    }

    fn listeners(&self) -> &ListenerSet<HttpListenerData> {
        &self.listeners
    }

    fn active_sessions(&self) -> usize {
        self.sessions.len()
    }

    fn accept(&mut self, id: usize, now: Instant, ctx: &mut ProxyContext<'_, HttpToken>) {
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
        ctx: &mut ProxyContext<'_, HttpToken>,
    ) {
        self.close_session(key, now, SessionEnd::ListenerRemoved, ctx);
    }

    fn forget_listener(&mut self, address: SocketAddr) -> StreamKind {
        self.routers.remove(&address);
        self.features.remove_listener(address);
        if self.tls_configs.remove(&address).is_some() {
            StreamKind::Https
        } else {
            StreamKind::Http
        }
    }

    fn set_cluster(&mut self, cluster: &Cluster) {
        self.clusters
            .insert(cluster.cluster_id.clone(), ClusterKnobs::of(cluster));
        self.features.set_cluster(cluster);
    }

    fn remove_cluster(&mut self, cluster: &str) {
        self.clusters.remove(cluster);
        self.features.remove_cluster(cluster);
        self.handles.forget_cluster(cluster);
    }

    fn remove_backend(&mut self, cluster: &str, backend: &str) {
        self.handles.forget_backend(cluster, backend);
        self.features.remove_backend(cluster, backend);
    }

    fn apply_own_order(
        &mut self,
        order: &RequestType,
        ctx: &mut ProxyContext<'_, HttpToken>,
    ) -> Result<(), HttpError> {
        match order {
            RequestType::AddHttpListener(config) => self.add_listener(config, ctx),
            RequestType::UpdateHttpListener(update) => self.update_listener(update),
            RequestType::AddHttpFrontend(f) | RequestType::AddHttpsFrontend(f) => {
                self.add_frontend(f)
            }
            RequestType::RemoveHttpFrontend(f) | RequestType::RemoveHttpsFrontend(f) => {
                self.remove_frontend(f)
            }
            RequestType::AddBackend(b) => {
                // The shared backend map has no sticky ids: kept here.
                self.features
                    .add_backend(&b.cluster_id, &b.backend_id, b.sticky_id.as_deref());
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// The HTTP part of an HTTPS listener's settings.
fn https_as_http(config: &sozu_command_lib::command::HttpsListenerConfig) -> HttpListenerConfig {
    HttpListenerConfig {
        address: config.address,
        public_address: config.public_address,
        expect_proxy: config.expect_proxy,
        sticky_name: config.sticky_name.clone(),
        front_timeout: config.front_timeout,
        back_timeout: config.back_timeout,
        connect_timeout: config.connect_timeout,
        request_timeout: config.request_timeout,
        active: config.active,
        http_answers: config.http_answers.clone(),
        answers: config.answers.clone(),
        ..Default::default()
    }
}
