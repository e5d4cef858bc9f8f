//! TLS termination with rustls, as pure pieces the HTTPS shell will plug
//! into the stream layer: no sockets, no clock, no threads.
//!
//! - [`certificate`]: a `CertificateAndKey` order turned into a rustls
//!   [`rustls::sign::CertifiedKey`] (PEM, chain, key of any type the ring
//!   provider signs with, key matching the certificate).
//! - [`store`]: the certificates of one HTTPS listener, live (add, replace,
//!   remove), and the SNI resolver over them: exact names, `*.` wildcards,
//!   a default certificate when the client sends no SNI or an unknown one.
//! - [`policy`]: Sōzu's listener knobs (`tls_versions`, `cipher_list`,
//!   `cipher_suites`, `signature_algorithms`, `groups_list`,
//!   `send_tls13_tickets`, `alpn_protocols`) mapped to a
//!   [`rustls::ServerConfig`]; a value rustls cannot honour is an error
//!   naming the field and the value.
//! - [`listeners`]: the worker's HTTPS listeners (policy, store,
//!   `ServerConfig`), kept live from the orders.
//! - [`transport`]: a sans-io wrapper around [`rustls::ServerConnection`]:
//!   socket bytes in → plaintext out, plaintext in → socket bytes out, with
//!   bounded buffers.
//!
//! Only the ring provider is used (no OpenSSL, no aws-lc). The master runs
//! [`check_certificate`] and [`check_listener`] before an order reaches a
//! worker (`bin/src/master/prevalidate.rs`); the worker runs the same code
//! when it applies the order, so both refuse the same values.

pub mod certificate;
pub mod listeners;
pub mod policy;
pub mod store;
pub mod transport;

/// Test set-ups (certificates, a recording client verifier): lib's own
/// tests and the `testing` feature only, never the binary's build.
#[cfg(any(test, feature = "testing"))]
pub mod testing;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use sozu_command_lib::certificate::CertificateError;

pub use certificate::{check_certificate, LoadedCertificate};
pub use listeners::{TlsListener, TlsListeners, TlsUndo};
pub use policy::{check_listener, TlsPolicy};
pub use store::CertificateStore;
pub use transport::{Plaintext, TlsTransport, TransportError};

/// Why a certificate, a key or a listener's TLS settings were refused. The
/// message names the order's field and the value at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    /// The certificate or key text does not decode (see
    /// `sozu_command_lib::certificate`).
    #[error(transparent)]
    Certificate(#[from] CertificateError),
    /// The key decodes but cannot be used with this certificate.
    #[error("{field}: {reason}")]
    Key {
        /// The order's field (`certificate.key`, `key`).
        field: &'static str,
        /// Why (unsupported key type, key not matching the certificate).
        reason: String,
    },
    /// A knob value rustls cannot honour.
    #[error("{field}: {value:?} cannot be used: {reason}")]
    Unsupported {
        /// The order's field (`versions`, `cipher_list`…).
        field: &'static str,
        /// The value at fault.
        value: String,
        /// Why, and what is accepted instead.
        reason: String,
    },
}

/// The one crypto provider: rustls on ring.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring_provider())
}

/// rustls' ring provider. rustls deprecates it for lacking post-quantum
/// key exchange (only its aws-lc provider has that); ring is chosen on
/// purpose: no C toolchain beyond ring's own, no aws-lc, no OpenSSL.
#[allow(deprecated)]
pub(crate) fn ring_provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}
