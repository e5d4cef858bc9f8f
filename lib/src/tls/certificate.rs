//! A certificate order (`CertificateAndKey`) turned into what rustls
//! serves: the chain and a signing key that matches the leaf.
//!
//! The PEM decoding and the fingerprint are `sozu_command_lib::certificate`'s
//! (the state keys certificates by that fingerprint); this module adds what
//! needs the crypto provider: the key must be of a type ring signs with
//! (RSA, ECDSA P-256 / P-384, Ed25519) and its public half must be the
//! certificate's. Pure: no I/O, no clock (expiry is not checked).

use std::sync::Arc;

use rustls::sign::CertifiedKey;
use sozu_command_lib::certificate::{self, Fingerprint};
use sozu_command_lib::command::CertificateAndKey;

use super::{provider, TlsError};

/// A certificate ready to serve.
#[derive(Debug, Clone)]
pub struct LoadedCertificate {
    /// The leaf's SHA-256 fingerprint (the state's key).
    pub fingerprint: Fingerprint,
    /// The names it serves (lowercase; exact names and `*.` wildcards).
    pub names: Vec<String>,
    /// The chain and its signing key.
    pub key: Arc<CertifiedKey>,
}

/// Loads `certificate`: decodes it, loads its key with the ring provider
/// and checks that the key is the certificate's. `key_field` names the
/// key's field in errors.
pub(crate) fn load_with_field(
    certificate: &CertificateAndKey,
    key_field: &'static str,
) -> Result<LoadedCertificate, TlsError> {
    let decoded = certificate::decode(certificate)?;
    let provider = provider();
    let key = CertifiedKey::from_der(decoded.chain, decoded.key, &provider).map_err(|error| {
        let reason = match error {
            rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                "does not match the certificate's public key".to_owned()
            }
            rustls::Error::General(detail) => {
                format!("not a usable key (RSA, ECDSA P-256/P-384 or Ed25519): {detail}")
            }
            other => format!("not a usable key: {other}"),
        };
        TlsError::Key {
            field: key_field,
            reason,
        }
    })?;
    Ok(LoadedCertificate {
        fingerprint: decoded.fingerprint,
        names: decoded.names,
        key: Arc::new(key),
    })
}

/// Loads a certificate order (`add_certificate`, `replace_certificate`).
pub fn load(certificate: &CertificateAndKey) -> Result<LoadedCertificate, TlsError> {
    load_with_field(certificate, "certificate.key")
}

/// What the master runs before a certificate order reaches a worker: the
/// worker's own loading, result dropped.
pub fn check_certificate(certificate: &CertificateAndKey) -> Result<(), TlsError> {
    load(certificate).map(|_| ())
}
