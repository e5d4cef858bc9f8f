//! The TCP and HTTP proxies inside the worker's loop: their token kinds,
//! the orders they carry out, their timers and their part of soft-stop,
//! hard-stop and the socket hand-over of an upgrade.
//!
//! Owns the glue only: [`crate::tcp::TcpProxy`] and
//! [`crate::http::HttpProxy`] own their sockets and sessions; the loop
//! ([`super::Server`]) owns the token table, backends and metrics they
//! borrow through a [`ProxyContext`]. Kept apart from the UDP wiring so the
//! two evolve without touching each other. The order dispatch is written
//! once, over [`StreamProxy`]: the listener lifecycle is the shared
//! [`crate::stream::ListenerSet`]'s, each proxy adds its own orders. Cluster
//! knobs and backends are applied to the shared
//! [`crate::backends::BackendMap`] first (`clusters.rs`); this file only
//! tells the stream proxies what they keep themselves (`proxy_protocol`,
//! metric caches).

use std::net::SocketAddr;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::time::Instant;

use mio::Token;
use sozu_command_lib::command::{request::RequestType, ListenerType};
use sozu_command_lib::proto::convert::{wire_address, FieldAddressError};

use crate::http::{HttpError, HttpProxy};
use crate::stream::limit::ConnectionLimit;
use crate::stream::{ListenerError, ProxyContext, Readiness, StreamProxy, TokenTable};
use crate::tcp::{TcpError, TcpProxy};

use super::tokens::{TokenOwner, Tokens};
use super::Server;

impl<T> TokenTable<T> for Tokens
where
    TokenOwner: From<T>,
{
    fn insert(&mut self, owner: T) -> Token {
        Tokens::insert(self, TokenOwner::from(owner))
    }
    fn remove(&mut self, token: Token) {
        Tokens::remove(self, token);
    }
}

/// A TCP or HTTP order this worker could not carry out.
#[derive(Debug, thiserror::Error)]
pub(super) enum StreamOrderError {
    /// Refused by the TCP proxy.
    #[error(transparent)]
    Tcp(#[from] TcpError),
    /// Refused by the HTTP proxy.
    #[error(transparent)]
    Http(#[from] HttpError),
    /// A listener order refused by the listener set (activate, deactivate).
    #[error(transparent)]
    Listener(#[from] ListenerError),
    /// An order's address refused before reaching either proxy.
    #[error(transparent)]
    Address(#[from] FieldAddressError),
}

/// The worker's TCP and HTTP proxies.
#[derive(Debug)]
pub(super) struct Streams {
    pub tcp: TcpProxy,
    pub http: HttpProxy,
}

impl Streams {
    /// Empty proxies with relay buffers of `buffer_size` bytes (0: the
    /// default), sharing one budget of `max_connections` client connections
    /// (0: unlimited).
    pub(super) fn new(buffer_size: usize, max_connections: usize) -> Self {
        let limit = ConnectionLimit::new(max_connections);
        let mut tcp = TcpProxy::new(buffer_size);
        tcp.set_connection_limit(limit.clone());
        let mut http = HttpProxy::new(buffer_size);
        http.set_connection_limit(limit);
        Streams { tcp, http }
    }

    /// Hands adopted listening sockets to their proxy; `false` for a type
    /// that is not TCP or HTTP.
    pub(super) fn adopt(&mut self, proxy: ListenerType, address: SocketAddr, fd: OwnedFd) -> bool {
        match proxy {
            ListenerType::Tcp => self.tcp.listener_set().adopt(vec![(address, fd)]),
            ListenerType::Http | ListenerType::Https => {
                self.http.listener_set().adopt(vec![(address, fd)])
            }
            _ => return false,
        }
        true
    }

    /// From now on listening sockets only come from the master.
    pub(super) fn require_adopted(&mut self) {
        self.tcp.listener_set().require_adopted();
        self.http.listener_set().require_adopted();
    }

    /// Closes an adopted socket no listener of this type took.
    pub(super) fn forget_adopted(&mut self, proxy: ListenerType, address: SocketAddr) {
        match proxy {
            ListenerType::Tcp => self.tcp.listener_set().forget_adopted(address),
            ListenerType::Http | ListenerType::Https => {
                self.http.listener_set().forget_adopted(address)
            }
            _ => {}
        }
    }

    /// Every listening socket with its type (upgrade hand-over).
    pub(super) fn listen_sockets(&self) -> Vec<(ListenerType, SocketAddr, BorrowedFd<'_>)> {
        let tcp = self
            .tcp
            .listen_sockets()
            .into_iter()
            .map(|(a, fd)| (ListenerType::Tcp, a, fd));
        tcp.chain(self.http.typed_listen_sockets()).collect()
    }

    /// True when no TCP session and no HTTP connection is alive.
    pub(super) fn is_drained(&self) -> bool {
        self.tcp.is_drained() && self.http.is_drained()
    }

    /// True when a listener stopped at its accept budget (poll must not
    /// wait).
    pub(super) fn has_backlog(&self) -> bool {
        self.tcp.has_backlog() || self.http.has_backlog()
    }

    /// The earliest deadline of either proxy.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        [self.tcp.poll_timeout(), self.http.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
    }
}

/// Borrows what the stream proxies need from the server.
macro_rules! stream_context {
    ($server:expr) => {
        ProxyContext {
            registry: $server.poll.registry(),
            tokens: &mut $server.tokens,
            backends: &mut $server.backends,
            health: &mut $server.health,
            metrics: &mut $server.metrics,
        }
    };
}

/// Carries out one order on one stream proxy: the listener lifecycle and
/// cluster changes the same way for each, the rest by the proxy itself.
fn apply_order<P: StreamProxy>(
    proxy: &mut P,
    now: Instant,
    order: &RequestType,
    ctx: &mut ProxyContext<'_, P::Token>,
) -> Result<(), StreamOrderError>
where
    StreamOrderError: From<P::Error>,
{
    let named = match order {
        RequestType::RemoveListener(o) => Some(o.proxy()),
        RequestType::ActivateListener(o) => Some(o.proxy()),
        RequestType::DeactivateListener(o) => Some(o.proxy()),
        _ => None,
    };
    let mine = named.is_some_and(|kind| proxy.serves(kind));
    match order {
        RequestType::RemoveListener(o) if mine => {
            proxy.remove_listener(now, wire_address("address", &o.address)?, ctx)?
        }
        RequestType::ActivateListener(o) if mine => proxy
            .listener_set()
            .activate(wire_address("address", &o.address)?, ctx)?,
        RequestType::DeactivateListener(o) if mine => proxy
            .listener_set()
            .deactivate(wire_address("address", &o.address)?, ctx)?,
        RequestType::AddCluster(cluster) => proxy.set_cluster(cluster),
        RequestType::RemoveCluster(id) => proxy.remove_cluster(id),
        RequestType::RemoveBackend(o) => proxy.remove_backend(&o.cluster_id, &o.backend_id),
        other => proxy.apply_own_order(other, ctx)?,
    }
    Ok(())
}

impl Server {
    /// A readiness event for a TCP or HTTP socket.
    pub(super) fn streams_ready(
        &mut self,
        owner: TokenOwner,
        event: &mio::event::Event,
        now: Instant,
    ) {
        let readiness = Readiness::from_event(event);
        match owner {
            TokenOwner::Tcp(token) => {
                let mut ctx = stream_context!(self);
                self.streams.tcp.ready(token, readiness, now, &mut ctx);
            }
            TokenOwner::Http(token) => {
                let mut ctx = stream_context!(self);
                self.streams.http.ready(token, readiness, now, &mut ctx);
            }
            _ => {}
        }
    }

    /// Accepts what waited past the accept budget and expires deadlines.
    pub(super) fn streams_timeout(&mut self, now: Instant) {
        let mut ctx = stream_context!(self);
        self.streams.tcp.accept_backlog(now, &mut ctx);
        self.streams.tcp.handle_timeout(now, &mut ctx);
        let mut ctx = stream_context!(self);
        self.streams.http.accept_backlog(now, &mut ctx);
        self.streams.http.handle_timeout(now, &mut ctx);
    }

    /// Soft-stop: no new connection; live ones finish.
    pub(super) fn streams_soft_stop(&mut self, now: Instant) {
        let mut ctx = stream_context!(self);
        self.streams.tcp.soft_stop(&mut ctx);
        let mut ctx = stream_context!(self);
        self.streams.http.soft_stop(now, &mut ctx);
        tracing::info!(
            worker = self.worker_id,
            tcp_sessions = self.streams.tcp.active_sessions(),
            http_connections = self.streams.http.active_sessions(),
            "soft-stop: draining TCP and HTTP"
        );
    }

    /// Hard-stop: every connection closed now.
    pub(super) fn streams_hard_stop(&mut self, now: Instant) {
        let mut ctx = stream_context!(self);
        self.streams.tcp.hard_stop(now, &mut ctx);
        let mut ctx = stream_context!(self);
        self.streams.http.hard_stop(now, &mut ctx);
    }

    /// Carries out the TCP / HTTP side of an order the state accepted
    /// (after the UDP side, which also configures the shared backends).
    pub(super) fn apply_stream_order(
        &mut self,
        now: Instant,
        order: &RequestType,
    ) -> Result<(), StreamOrderError> {
        apply_order(
            &mut self.streams.tcp,
            now,
            order,
            &mut stream_context!(self),
        )?;
        apply_order(
            &mut self.streams.http,
            now,
            order,
            &mut stream_context!(self),
        )?;
        self.apply_https_listener_order(order)
    }

    /// `add_https_listener` / `update_https_listener`: the HTTP proxy
    /// serves the listener with the rustls configuration the TLS side built
    /// from the same order (`crate::tls::TlsListeners`, applied first).
    fn apply_https_listener_order(&mut self, order: &RequestType) -> Result<(), StreamOrderError> {
        let wire = match order {
            RequestType::AddHttpsListener(config) => &config.address,
            RequestType::UpdateHttpsListener(update) => &update.address,
            _ => return Ok(()),
        };
        let address = wire_address("address", wire)?;
        let (Some(config), Some(tls)) =
            (self.state.https_listener(&address), self.tls.get(&address))
        else {
            return Err(ListenerError::UnknownListener {
                kind: crate::stream::StreamKind::Https,
                address,
            }
            .into());
        };
        let (config, tls) = (config.clone(), tls.config.clone());
        if matches!(order, RequestType::AddHttpsListener(_)) {
            self.streams
                .http
                .add_https_listener(&config, tls, &mut stream_context!(self))?;
        } else {
            self.streams.http.set_https_listener(&config, tls)?;
        }
        Ok(())
    }
}
