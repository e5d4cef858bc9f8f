//! Why an order was refused. Every variant names the field and the value at
//! fault so the master can send the message back to the operator as is.
//!
//! This module only describes refusals; it never decides them (the per-kind
//! modules do) and never carries a half-applied state.

use std::fmt;
use std::net::SocketAddr;

use crate::certificate::CertificateError;
use crate::command::ListenerType;
use crate::proto::convert::AddressError;

/// The listener protocols the state tracks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ListenerKind {
    /// HTTP/1.1 listener.
    Http,
    /// HTTPS listener (TLS, then HTTP/1.1).
    Https,
    /// TCP byte-relay listener.
    Tcp,
    /// UDP load-balancing listener.
    Udp,
}

impl ListenerKind {
    /// The wire enum for this kind.
    pub fn to_wire(self) -> ListenerType {
        match self {
            ListenerKind::Http => ListenerType::Http,
            ListenerKind::Https => ListenerType::Https,
            ListenerKind::Tcp => ListenerType::Tcp,
            ListenerKind::Udp => ListenerType::Udp,
        }
    }

    /// Reads the wire's `proxy` field (a `ListenerType` as `i32`).
    pub fn from_wire(field: &'static str, value: i32) -> Result<Self, StateError> {
        match ListenerType::try_from(value) {
            Ok(ListenerType::Http) => Ok(ListenerKind::Http),
            Ok(ListenerType::Tcp) => Ok(ListenerKind::Tcp),
            Ok(ListenerType::Udp) => Ok(ListenerKind::Udp),
            Ok(ListenerType::Https) => Ok(ListenerKind::Https),
            Err(_) => Err(StateError::InvalidValue {
                field,
                value: value.to_string(),
                reason: "not a listener type (HTTP, HTTPS, TCP or UDP)",
            }),
        }
    }
}

impl fmt::Display for ListenerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.to_wire().as_str_name())
    }
}

/// An order the state refused. The state is unchanged when this is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// An address field that is not a socket address.
    #[error("{field}: invalid address {value}: {source}")]
    InvalidAddress {
        /// The order's field.
        field: &'static str,
        /// The value it had.
        value: String,
        /// The cause.
        #[source]
        source: AddressError,
    },
    /// A field whose value is out of range or otherwise unusable.
    #[error("{field}: invalid value {value}: {reason}")]
    InvalidValue {
        /// The order's field.
        field: &'static str,
        /// The value it had.
        value: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// The order names a cluster that does not exist.
    #[error("cluster_id: unknown cluster {cluster_id:?}")]
    UnknownCluster {
        /// The cluster.
        cluster_id: String,
    },
    /// A listener of this protocol already exists at this address.
    #[error("address: a {kind} listener already exists at {address}")]
    DuplicateListener {
        /// The listener's protocol.
        kind: ListenerKind,
        /// The listener's address.
        address: SocketAddr,
    },
    /// No listener of this protocol at this address.
    #[error("address: no {kind} listener at {address}")]
    ListenerNotFound {
        /// The listener's protocol.
        kind: ListenerKind,
        /// The listener's address.
        address: SocketAddr,
    },
    /// The cluster already has a backend with this id.
    #[error("backend_id: cluster {cluster_id:?} already has a backend {backend_id:?}")]
    DuplicateBackend {
        /// The cluster.
        cluster_id: String,
        /// The backend.
        backend_id: String,
    },
    /// No backend with this id and address in the cluster.
    #[error("backend_id: cluster {cluster_id:?} has no backend {backend_id:?} at {address}")]
    BackendNotFound {
        /// The cluster.
        cluster_id: String,
        /// The backend.
        backend_id: String,
        /// The backend's address.
        address: SocketAddr,
    },
    /// A UDP or TCP listener maps to exactly one cluster and already has one.
    #[error(
        "address: the {kind} listener at {address} already forwards to cluster {existing:?} \
         (a {kind} listener maps to one cluster)"
    )]
    ListenerAlreadyMapped {
        /// The listener's protocol.
        kind: ListenerKind,
        /// The listener's address.
        address: SocketAddr,
        /// The cluster it already forwards to.
        existing: String,
    },
    /// No UDP or TCP frontend for this cluster at this address.
    #[error("address: no {kind} frontend for cluster {cluster_id:?} at {address}")]
    FrontendNotFound {
        /// The listener's protocol.
        kind: ListenerKind,
        /// The listener's address.
        address: SocketAddr,
        /// The cluster.
        cluster_id: String,
    },
    /// The HTTP listener already routes this hostname, path and method.
    #[error("hostname: the HTTP listener at {address} already routes {route}")]
    DuplicateHttpFrontend {
        /// The listener's address.
        address: SocketAddr,
        /// The route (hostname, path, method).
        route: String,
    },
    /// The certificate or its key does not decode.
    #[error(transparent)]
    Certificate(#[from] CertificateError),
    /// No certificate with this fingerprint on the HTTPS listener.
    #[error("{field}: no certificate {fingerprint} on the HTTPS listener at {address}")]
    CertificateNotFound {
        /// The order's field that names the certificate.
        field: &'static str,
        /// The HTTPS listener's address.
        address: SocketAddr,
        /// The fingerprint looked for.
        fingerprint: String,
    },
    /// No HTTP frontend with this route (and cluster) on the listener.
    #[error("hostname: no HTTP frontend at {address} routes {route} to {cluster}")]
    HttpFrontendNotFound {
        /// The listener's address.
        address: SocketAddr,
        /// The route (hostname, path, method).
        route: String,
        /// The cluster named by the order.
        cluster: String,
    },
}
