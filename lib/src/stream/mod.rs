//! What the TCP and HTTP proxies share, written once: the listener set and
//! its lifecycle ([`listeners`]: add, activate, deactivate, remove,
//! soft-stop, accept budget and backlog, the `max_connections` gate and the
//! listener error enum), relay buffers ([`buffer`]), sockets and backend
//! connects ([`socket`]), session deadlines ([`deadlines`]), the worker-wide
//! connection budget ([`limit`]), the TLS end of an HTTPS client
//! connection ([`tls`]) and what the loop lends a proxy on each
//! call ([`context`]).
//!
//! Never reads the clock (callers pass `now`), never decides what a session
//! does with its bytes: that differs per protocol and lives in
//! [`crate::tcp`] and [`crate::http`], which build on this module.

pub(crate) mod buffer;
pub(crate) mod context;
pub(crate) mod deadlines;
pub(crate) mod limit;
pub(crate) mod listeners;
pub(crate) mod socket;
pub(crate) mod tls;

use std::time::Duration;

pub use context::{ProxyContext, Readiness, TokenTable};
pub use listeners::{ListenerError, ListenerSet, ListenerToken, StreamKind};

/// Default relay buffer size per direction (Sōzu's `buffer_size`).
pub const DEFAULT_BUFFER_SIZE: usize = 16_393;

/// A buffer size from the configuration (0: [`DEFAULT_BUFFER_SIZE`]).
pub fn buffer_size(configured: usize) -> usize {
    if configured == 0 {
        DEFAULT_BUFFER_SIZE
    } else {
        configured
    }
}

/// What a cluster tells a stream proxy: `proxy_protocol` (`SEND_HEADER` /
/// `RELAY_HEADER`: a PROXY v2 header opens each backend connection;
/// `EXPECT_HEADER` / `RELAY_HEADER` on a TCP cluster: clients send one).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ClusterKnobs {
    /// The cluster's PROXY protocol setting, if a known one.
    pub(crate) proxy_protocol: Option<sozu_command_lib::command::ProxyProtocolConfig>,
}

impl ClusterKnobs {
    /// The knobs of a cluster order (an unknown `proxy_protocol` value is
    /// none).
    pub(crate) fn of(cluster: &sozu_command_lib::command::Cluster) -> Self {
        ClusterKnobs {
            proxy_protocol: cluster
                .proxy_protocol
                .and_then(|p| sozu_command_lib::command::ProxyProtocolConfig::try_from(p).ok()),
        }
    }
}

/// A timeout of `s` seconds; 0 is taken as 1 s so no session lives forever
/// idle and no timer fires in a busy loop.
pub fn seconds(s: u32) -> Duration {
    Duration::from_secs(u64::from(s.max(1)))
}

/// What differs between the stream proxies, as the worker's one order
/// dispatch (`server/streams.rs`) sees them: the lifecycle of listeners is
/// the shared [`ListenerSet`]'s; the protocol adds its own orders (add and
/// update of its listener type, its frontends) and what a removed listener,
/// cluster or backend means for its sessions.
pub trait StreamProxy {
    /// The token kind of its sockets.
    type Token: ListenerToken;
    /// The protocol's part of a listener.
    type Listener;
    /// A refused order.
    type Error: From<ListenerError>;
    /// The listener type its orders name.
    const LISTENER_TYPE: sozu_command_lib::command::ListenerType;

    /// True when orders naming listeners of type `proxy` are its own (HTTP
    /// serves HTTPS listeners too).
    fn serves(&self, proxy: sozu_command_lib::command::ListenerType) -> bool {
        proxy == Self::LISTENER_TYPE
    }

    /// Its listeners.
    fn listener_set(&mut self) -> &mut ListenerSet<Self::Listener>;

    /// Its listeners, to look at.
    fn listeners(&self) -> &ListenerSet<Self::Listener>;

    /// Client connections alive now.
    fn active_sessions(&self) -> usize;

    /// Takes the connections waiting on listener `id`, up to the accept
    /// budget, and starts a session for each.
    fn accept(
        &mut self,
        id: usize,
        now: std::time::Instant,
        ctx: &mut ProxyContext<'_, Self::Token>,
    );

    /// True when no client connection is alive (soft-stop may end).
    fn is_drained(&self) -> bool {
        self.active_sessions() == 0
    }

    /// True when a listener stopped at its accept budget and must be
    /// accepted again without waiting for an event (poll must not wait).
    fn has_backlog(&self) -> bool {
        self.listeners().has_backlog()
    }

    /// Accepts again on listeners that ran out of budget last time.
    fn accept_backlog(&mut self, now: std::time::Instant, ctx: &mut ProxyContext<'_, Self::Token>) {
        // By key, without collecting them: this runs on every loop turn
        // while a listener has a backlog, and must not allocate.
        let mut from = 0;
        while let Some(id) = self.listeners().next_with_backlog(from) {
            self.accept(id, now, ctx);
            from = id + 1;
        }
    }

    /// The keys of the sessions accepted on listener `id`.
    fn sessions_of_listener(&self, id: usize) -> Vec<usize>;

    /// Closes session `key` because its listener is being removed (each
    /// protocol logs it with its own close reason).
    fn close_for_removed_listener(
        &mut self,
        key: usize,
        now: std::time::Instant,
        ctx: &mut ProxyContext<'_, Self::Token>,
    );

    /// Forgets what the protocol keeps per listener address beside the
    /// listener set (HTTP: routes, TLS configuration, features), once the
    /// listener and its sessions are gone; returns the kind the listener was.
    fn forget_listener(&mut self, address: std::net::SocketAddr) -> StreamKind;

    /// Closes a listener, its socket and what it accepted, then forgets its
    /// routes and metric scope.
    fn remove_listener(
        &mut self,
        now: std::time::Instant,
        address: std::net::SocketAddr,
        ctx: &mut ProxyContext<'_, Self::Token>,
    ) -> Result<(), Self::Error> {
        let id = self.listener_set().remove(address, ctx)?;
        for key in self.sessions_of_listener(id) {
            self.close_for_removed_listener(key, now, ctx);
        }
        let kind = self.forget_listener(address);
        ctx.metrics
            .remove_scope(&crate::metrics::Scope::Listener(address));
        tracing::info!(listener = %address, "{kind} listener removed");
        Ok(())
    }

    /// Records the cluster knobs it keeps itself (`proxy_protocol`).
    fn set_cluster(&mut self, cluster: &sozu_command_lib::command::Cluster);

    /// Forgets a cluster (its metric scope is removed by the loop).
    fn remove_cluster(&mut self, cluster: &str);

    /// Forgets a removed backend's metric handles.
    fn remove_backend(&mut self, cluster: &str, backend: &str);

    /// Carries out an order only this protocol knows (add and update of its
    /// listeners, its frontends); ignores any other.
    fn apply_own_order(
        &mut self,
        order: &sozu_command_lib::command::request::RequestType,
        ctx: &mut ProxyContext<'_, Self::Token>,
    ) -> Result<(), Self::Error>;
}
