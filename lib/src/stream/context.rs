//! What the worker's event loop lends the TCP and HTTP proxies on each call.
//!
//! Owns nothing: it borrows the mio registry, the loop's token table, the
//! backends and health checker shared by every protocol and the metrics
//! registry. The proxies
//! never create their own poll or token numbering: every socket token comes
//! from the loop's table so one `Poll` serves UDP, TCP and HTTP.

use mio::Registry;

use crate::backends::BackendMap;
use crate::health::HealthChecker;
use crate::metrics::MetricsRegistry;

pub use crate::token_table::TokenTable;

/// Borrowed from the loop for one call.
pub struct ProxyContext<'a, T> {
    /// Where sockets are (de)registered.
    pub registry: &'a Registry,
    /// The loop's token table.
    pub tokens: &'a mut dyn TokenTable<T>,
    /// Every cluster's backends (shared with UDP).
    pub backends: &'a mut BackendMap,
    /// The health checker (shared with UDP): a failed backend connect is a
    /// passive failure, a step toward `fall` when the cluster is probed.
    pub health: &'a mut HealthChecker,
    /// The worker's metrics.
    pub metrics: &'a mut MetricsRegistry,
}

/// What a readiness event said about a socket. Errors and hang-ups set
/// both: the next read or write reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Readiness {
    /// The socket may be read.
    pub readable: bool,
    /// The socket may be written.
    pub writable: bool,
}

impl Readiness {
    /// From a mio event.
    pub fn from_event(event: &mio::event::Event) -> Self {
        let failed = event.is_error() || event.is_read_closed() || event.is_write_closed();
        Readiness {
            readable: event.is_readable() || failed,
            writable: event.is_writable() || failed,
        }
    }
}
