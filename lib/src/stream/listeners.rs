//! The listening sockets of one stream protocol (TCP or HTTP) and their
//! lifecycle: add, activate, deactivate, remove, soft-stop, the accept loop
//! with its per-wake-up budget and backlog, and the worker-wide
//! `max_connections` gate.
//!
//! Owns each listener's socket, token, backlog flag and accept counters;
//! the protocol keeps its own part of a listener (configuration, frontend,
//! other metric handles) in [`Listener::data`]. What to do with an accepted
//! connection is the protocol's: [`ListenerSet::accept_next`] hands it over.
//! Never reads the clock, never decides a session's fate.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Token};
use slab::Slab;
use sozu_command_lib::proto::convert::FieldAddressError;

use super::context::ProxyContext;
use super::limit::{ConnectionLimit, ConnectionSlot};
use super::socket;
use crate::metrics::{count, MetricHandle, MetricsRegistry};

/// Which stream protocol a listener set serves (named in errors and logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// Plain TCP relaying.
    Tcp,
    /// HTTP/1.1.
    Http,
    /// HTTP/1.1 over TLS.
    Https,
}

impl StreamKind {
    /// The indefinite article an operator reads before the name.
    fn article(self) -> &'static str {
        match self {
            StreamKind::Tcp => "a",
            StreamKind::Http | StreamKind::Https => "an",
        }
    }
}

impl fmt::Display for StreamKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StreamKind::Tcp => "TCP",
            StreamKind::Http => "HTTP",
            StreamKind::Https => "HTTPS",
        })
    }
}

/// A refused listener order, the same for TCP and HTTP.
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    /// An address field is not a socket address.
    #[error(transparent)]
    Address(#[from] FieldAddressError),
    /// A listener already exists at this address.
    #[error("{} {kind} listener already exists at {address}", .kind.article())]
    ListenerExists {
        /// The protocol.
        kind: StreamKind,
        /// The listener's address.
        address: SocketAddr,
    },
    /// No listener at this address.
    #[error("no {kind} listener at {address}")]
    UnknownListener {
        /// The protocol.
        kind: StreamKind,
        /// The address asked for.
        address: SocketAddr,
    },
    /// Binding (or adopting) the listening socket failed.
    #[error("binding {kind} listener {address}")]
    Bind {
        /// The protocol.
        kind: StreamKind,
        /// The listener's address.
        address: SocketAddr,
        /// The socket error.
        #[source]
        source: io::Error,
    },
    /// Registering the listening socket failed.
    #[error("registering {kind} listener {address}")]
    Register {
        /// The protocol.
        kind: StreamKind,
        /// The listener's address.
        address: SocketAddr,
        /// The registry error.
        #[source]
        source: io::Error,
    },
}

/// A token kind that can stand for a listening socket.
pub trait ListenerToken {
    /// The token of listener `id`.
    fn listener(id: usize) -> Self;
}

/// What every accepted connection counts, per listener.
#[derive(Debug, Clone, Copy, Default)]
pub struct AcceptHandles {
    /// `<proto>.connections`: accepted under the budget.
    pub connections: Option<MetricHandle>,
    /// `<proto>.connections_refused`: closed at once at `max_connections`.
    pub refused: Option<MetricHandle>,
}

/// One listener: the shared socket state plus the protocol's `data`.
#[derive(Debug)]
pub struct Listener<L> {
    /// The address the order named.
    pub address: SocketAddr,
    /// Its protocol as errors and logs name it (an HTTPS listener lives in
    /// the HTTP set).
    pub kind: StreamKind,
    /// The protocol's own part.
    pub data: L,
    socket: Option<TcpListener>,
    token: Option<Token>,
    accept: AcceptHandles,
    /// Still has connections waiting after the accept budget ran out.
    backlog: bool,
}

/// A connection taken from a listener's backlog, under the budget.
#[derive(Debug)]
pub struct Accepted {
    /// The client socket (`TCP_NODELAY` set).
    pub stream: TcpStream,
    /// The client's address.
    pub client: SocketAddr,
    /// Its place in `max_connections`, held as long as its session.
    pub slot: ConnectionSlot,
}

/// The listeners of one stream protocol.
#[derive(Debug)]
pub struct ListenerSet<L> {
    kind: StreamKind,
    listeners: Slab<Listener<L>>,
    by_address: HashMap<SocketAddr, usize>,
    adopted: HashMap<SocketAddr, OwnedFd>,
    /// Run by a master: listening sockets come from it, never from `bind`,
    /// and a deactivated listener keeps its socket (the master holds it
    /// bound anyway).
    require_adopted: bool,
    draining: bool,
    /// The worker's `max_connections`, shared by TCP and HTTP.
    limit: ConnectionLimit,
}

impl<L> ListenerSet<L> {
    /// No listener yet, unlimited connections.
    pub fn new(kind: StreamKind) -> Self {
        ListenerSet {
            kind,
            listeners: Slab::new(),
            by_address: HashMap::new(),
            adopted: HashMap::new(),
            require_adopted: false,
            draining: false,
            limit: ConnectionLimit::default(),
        }
    }

    /// Listening sockets passed by the master (upgrade), used instead of
    /// binding when their listener is activated.
    pub fn adopt(&mut self, sockets: Vec<(SocketAddr, OwnedFd)>) {
        self.adopted.extend(sockets);
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

    /// Shares the worker's connection budget.
    pub fn set_connection_limit(&mut self, limit: ConnectionLimit) {
        self.limit = limit;
    }

    /// True once soft-stop began.
    pub fn is_draining(&self) -> bool {
        self.draining
    }

    /// The listener with id `id`, if it still exists.
    pub fn get(&self, id: usize) -> Option<&Listener<L>> {
        self.listeners.get(id)
    }

    /// The listener with id `id`, if it still exists.
    pub fn get_mut(&mut self, id: usize) -> Option<&mut Listener<L>> {
        self.listeners.get_mut(id)
    }

    /// The listener at `address`.
    pub fn at_mut(&mut self, address: SocketAddr) -> Result<&mut Listener<L>, ListenerError> {
        let id = self.id(address)?;
        Ok(&mut self.listeners[id])
    }

    fn id(&self, address: SocketAddr) -> Result<usize, ListenerError> {
        self.by_address
            .get(&address)
            .copied()
            .ok_or(ListenerError::UnknownListener {
                kind: self.kind,
                address,
            })
    }

    /// Adds a listener; binds and accepts at once if `active` (the add is
    /// undone when that fails).
    pub fn add<T: ListenerToken>(
        &mut self,
        address: SocketAddr,
        active: bool,
        data: L,
        accept: AcceptHandles,
        ctx: &mut ProxyContext<'_, T>,
    ) -> Result<(), ListenerError> {
        self.add_kind(self.kind, address, active, data, accept, ctx)
    }

    /// [`Self::add`] for a listener of another protocol than the set's
    /// (an HTTPS listener in the HTTP set), named so in errors and logs.
    pub fn add_kind<T: ListenerToken>(
        &mut self,
        kind: StreamKind,
        address: SocketAddr,
        active: bool,
        data: L,
        accept: AcceptHandles,
        ctx: &mut ProxyContext<'_, T>,
    ) -> Result<(), ListenerError> {
        if let Some(existing) = self.by_address.get(&address) {
            return Err(ListenerError::ListenerExists {
                kind: self.listeners[*existing].kind,
                address,
            });
        }
        let id = self.listeners.insert(Listener {
            address,
            kind,
            data,
            socket: None,
            token: None,
            accept,
            backlog: false,
        });
        self.by_address.insert(address, id);
        if active {
            if let Err(error) = self.activate(address, ctx) {
                self.listeners.remove(id);
                self.by_address.remove(&address);
                return Err(error);
            }
        }
        Ok(())
    }

    /// Binds (or adopts) the socket if needed and starts accepting.
    /// Ignored while soft-stopping (the listener stays inactive).
    pub fn activate<T: ListenerToken>(
        &mut self,
        address: SocketAddr,
        ctx: &mut ProxyContext<'_, T>,
    ) -> Result<(), ListenerError> {
        let id = self.id(address)?;
        let kind = self.listeners[id].kind;
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
            .map_err(|source| ListenerError::Bind {
                kind,
                address,
                source,
            })?;
            listener.socket = Some(socket);
        }
        if listener.token.is_none() {
            let token = ctx.tokens.insert(T::listener(id));
            let Some(socket) = listener.socket.as_mut() else {
                ctx.tokens.remove(token);
                return Ok(());
            };
            if let Err(source) = ctx.registry.register(socket, token, Interest::READABLE) {
                ctx.tokens.remove(token);
                return Err(ListenerError::Register {
                    kind,
                    address,
                    source,
                });
            }
            listener.token = Some(token);
            // Connections may already wait in the backlog (adopted socket).
            listener.backlog = true;
        }
        tracing::info!(listener = %address, "{kind} listener active");
        Ok(())
    }

    /// Stops accepting. Without a master the socket is closed (the port is
    /// freed; activate binds again); under a master it is kept, as the
    /// master holds it bound anyway. Live sessions go on.
    pub fn deactivate<T>(
        &mut self,
        address: SocketAddr,
        ctx: &mut ProxyContext<'_, T>,
    ) -> Result<(), ListenerError> {
        let id = self.id(address)?;
        let listener = &mut self.listeners[id];
        if self.require_adopted {
            listener.stop_accepting(ctx);
        } else {
            listener.close_socket(ctx);
        }
        tracing::info!(listener = %address, "{} listener deactivated", listener.kind);
        Ok(())
    }

    /// Removes a listener and closes its socket; returns its id so the
    /// protocol closes the sessions it accepted.
    pub fn remove<T>(
        &mut self,
        address: SocketAddr,
        ctx: &mut ProxyContext<'_, T>,
    ) -> Result<usize, ListenerError> {
        let id = self.id(address)?;
        self.by_address.remove(&address);
        let mut listener = self.listeners.remove(id);
        listener.close_socket(ctx);
        Ok(id)
    }

    /// Soft-stop: every listening socket closed, no listener activated
    /// again.
    pub fn soft_stop<T>(&mut self, ctx: &mut ProxyContext<'_, T>) {
        self.draining = true;
        for (_, listener) in self.listeners.iter_mut() {
            listener.close_socket(ctx);
        }
    }

    /// The listening sockets (for an upgrade's hand-over).
    pub fn listen_sockets(&self) -> Vec<(SocketAddr, BorrowedFd<'_>)> {
        self.listeners
            .iter()
            .filter_map(|(_, l)| l.socket.as_ref().map(|s| (l.address, s.as_fd())))
            .collect()
    }

    /// The local address a listener is bound to (its port when the order
    /// said port 0).
    pub fn local_addr(&self, address: SocketAddr) -> Option<SocketAddr> {
        let id = self.by_address.get(&address)?;
        self.listeners[*id].socket.as_ref()?.local_addr().ok()
    }

    /// True when a listener stopped at its accept budget and must be
    /// accepted again without waiting for an event.
    pub fn has_backlog(&self) -> bool {
        self.listeners
            .iter()
            .any(|(_, l)| l.backlog && l.token.is_some())
    }

    /// The first listener, from key `from` on, that stopped at its accept
    /// budget last time.
    pub fn next_with_backlog(&self, from: usize) -> Option<usize> {
        self.listeners
            .iter()
            .find(|(k, l)| *k >= from && l.backlog && l.token.is_some())
            .map(|(k, _)| k)
    }

    /// The next connection of listener `id` for its protocol, or `None`
    /// when this wake-up is done with it: the backlog is empty, `accepted`
    /// reached [`socket::ACCEPT_BUDGET`] (the listener is accepted again
    /// without waiting for an event), or accept failed (EMFILE, ENOBUFS…:
    /// the connection stays in the backlog). A connection over
    /// `max_connections` is closed at once (dropping the stream) and
    /// counted, so neither memory nor the backlog fills up.
    pub fn accept_next(
        &mut self,
        id: usize,
        accepted: &mut usize,
        metrics: &mut MetricsRegistry,
    ) -> Option<Accepted> {
        let listener = self.listeners.get_mut(id)?;
        loop {
            let socket = listener.socket.as_ref()?;
            if *accepted == socket::ACCEPT_BUDGET {
                listener.backlog = true;
                return None;
            }
            let (stream, client) = match socket.accept() {
                Ok(pair) => pair,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    listener.backlog = false;
                    return None;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    tracing::warn!(listener = %listener.address, %error, "accept failed");
                    listener.backlog = false;
                    return None;
                }
            };
            *accepted += 1;
            let Some(slot) = self.limit.try_acquire() else {
                count(metrics, listener.accept.refused, 1);
                tracing::debug!(listener = %listener.address, %client, max = self.limit.max(), "max_connections reached: connection refused");
                continue;
            };
            count(metrics, listener.accept.connections, 1);
            if let Err(error) = stream.set_nodelay(true) {
                tracing::debug!(%error, "TCP_NODELAY");
            }
            return Some(Accepted {
                stream,
                client,
                slot,
            });
        }
    }
}

impl<L> Listener<L> {
    /// Stops accepting but keeps the socket (activate registers it again).
    fn stop_accepting<T>(&mut self, ctx: &mut ProxyContext<'_, T>) {
        if let (Some(socket), Some(_)) = (self.socket.as_mut(), self.token) {
            if let Err(error) = ctx.registry.deregister(socket) {
                tracing::debug!(%error, "deregistering a listener");
            }
        }
        if let Some(token) = self.token.take() {
            ctx.tokens.remove(token);
        }
        self.backlog = false;
    }

    /// Stops accepting and closes the socket.
    fn close_socket<T>(&mut self, ctx: &mut ProxyContext<'_, T>) {
        self.stop_accepting(ctx);
        self.socket = None;
    }
}
