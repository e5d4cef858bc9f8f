//! Per-session access records of the TCP proxy, on the `access` tracing
//! target (the same target as UDP flow records, `protocol = "tcp"`).
//!
//! Owns the record's shape and the close-reason names operators grep for.
//! It borrows from the session being closed and never decides when a
//! session closes.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use crate::access::{millis, OrDash, Tags, ACCESS_TARGET};
use crate::backends::{BackendId, ClusterId};

/// Why a TCP session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum SessionCloseReason {
    /// Both sides finished sending and every byte was delivered.
    Completed,
    /// The client was idle past `front_timeout`.
    FrontTimeout,
    /// The backend was idle past `back_timeout`.
    BackTimeout,
    /// No backend answered the connect within `connect_timeout`.
    ConnectTimeout,
    /// The cluster had no backend available.
    NoBackend,
    /// Every backend tried refused or failed the connect.
    ConnectFailed,
    /// The listener has no frontend (no cluster).
    NoFrontend,
    /// `expect_proxy` and the client's PROXY header was bad or missing.
    ProxyHeaderInvalid,
    /// A socket error on the client side (reset…).
    FrontError,
    /// A socket error on the backend side (reset…).
    BackError,
    /// The listener was removed.
    ListenerRemoved,
    /// Hard stop.
    Shutdown,
}

impl SessionCloseReason {
    /// The reason as written in the record.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            SessionCloseReason::Completed => "completed",
            SessionCloseReason::FrontTimeout => "front_timeout",
            SessionCloseReason::BackTimeout => "back_timeout",
            SessionCloseReason::ConnectTimeout => "connect_timeout",
            SessionCloseReason::NoBackend => "no_backend",
            SessionCloseReason::ConnectFailed => "connect_failed",
            SessionCloseReason::NoFrontend => "no_frontend",
            SessionCloseReason::ProxyHeaderInvalid => "proxy_header_invalid",
            SessionCloseReason::FrontError => "front_error",
            SessionCloseReason::BackError => "back_error",
            SessionCloseReason::ListenerRemoved => "listener_removed",
            SessionCloseReason::Shutdown => "shutdown",
        }
    }

    /// True for the timeouts (counted in `tcp.timeouts`).
    pub(crate) fn is_timeout(self) -> bool {
        matches!(
            self,
            SessionCloseReason::FrontTimeout
                | SessionCloseReason::BackTimeout
                | SessionCloseReason::ConnectTimeout
        )
    }
}

impl fmt::Display for SessionCloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The access record of one closed TCP session. "In" is client → backend.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TcpAccessRecord<'a> {
    pub listener: SocketAddr,
    /// The client (from the PROXY header when the listener expects one).
    pub client: SocketAddr,
    pub cluster: Option<&'a ClusterId>,
    pub backend: Option<(&'a BackendId, SocketAddr)>,
    pub tags: Option<&'a BTreeMap<String, String>>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// From accept to close.
    pub duration: Duration,
    /// Time to connect to the backend, if it connected.
    pub connect_time: Option<Duration>,
    pub reason: SessionCloseReason,
}

impl TcpAccessRecord<'_> {
    /// Emits the record at INFO on the `access` target.
    pub(crate) fn emit(&self) {
        tracing::info!(
            target: ACCESS_TARGET,
            protocol = "tcp",
            listener = %self.listener,
            client = %self.client,
            cluster = %OrDash(self.cluster),
            backend_id = %OrDash(self.backend.map(|(id, _)| id)),
            backend_addr = %OrDash(self.backend.map(|(_, addr)| addr)),
            tags = %Tags(self.tags),
            bytes_in = self.bytes_in,
            bytes_out = self.bytes_out,
            duration_ms = millis(self.duration),
            connect_ms = %OrDash(self.connect_time.map(millis)),
            reason = self.reason.as_str(),
            "session closed"
        );
    }
}
