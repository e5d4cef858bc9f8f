//! An HTTPS listener's TLS knobs (Sōzu's `HttpsListenerConfig`) mapped to
//! a [`rustls::ServerConfig`].
//!
//! - `versions`: `TLS_V1_2` and `TLS_V1_3` (none given: both). SSLv2,
//!   SSLv3, TLS 1.0 and 1.1 are refused: rustls does not implement them.
//! - `cipher_list` and `cipher_suites` (one list, server preference order;
//!   an entry may hold several names separated by `:`): the suites of the
//!   ring provider, by their IANA name (`TLS_AES_128_GCM_SHA256`,
//!   `TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256`), rustls' name
//!   (`TLS13_AES_128_GCM_SHA256`), Sōzu's (`TLS12_ECDHE_RSA_WITH_…`) or
//!   OpenSSL's (`ECDHE-RSA-AES128-GCM-SHA256`). CBC, DHE, RSA key exchange
//!   and the like are refused by name. Every enabled TLS version must keep
//!   at least one suite. None given: rustls' defaults, client preference.
//! - `groups_list`: `x25519`, `P-256` (`secp256r1`, `prime256v1`), `P-384`
//!   (`secp384r1`).
//! - `signature_algorithms`: `ecdsa_secp256r1_sha256` (`ECDSA+SHA256`),
//!   `ecdsa_secp384r1_sha384` (`ECDSA+SHA384`), `ed25519`,
//!   `rsa_pss_rsae_sha256/384/512` (`RSA-PSS+SHA256`…),
//!   `rsa_pkcs1_sha256/384/512` (`RSA+SHA256`…): the server signs only
//!   with those.
//! - `send_tls13_tickets`: 0..=16 session tickets after a TLS 1.3
//!   handshake.
//! - `alpn_protocols`: the listener offers `http/1.1` only; `h2` is
//!   accepted in the list and not offered (HTTP/2 comes later); anything
//!   else is refused.
//!
//! Pure: builds values, no I/O.

use std::sync::Arc;

use rustls::crypto::ring::{kx_group, ALL_CIPHER_SUITES};
use rustls::crypto::SupportedKxGroup;
use rustls::pki_types::SubjectPublicKeyInfoDer;
use rustls::sign::{CertifiedKey, Signer, SigningKey};
use rustls::{
    ServerConfig, SignatureAlgorithm, SignatureScheme, SupportedCipherSuite,
    SupportedProtocolVersion,
};
use sozu_command_lib::certificate::CertificateError;
use sozu_command_lib::command::{CertificateAndKey, HttpsListenerConfig, TlsVersion};

use super::certificate::{load_with_field, LoadedCertificate};
use super::store::{CertificateStore, Resolver};
use super::TlsError;

/// The ALPN protocol every HTTPS listener offers.
pub const ALPN_HTTP_1_1: &[u8] = b"http/1.1";

/// Most TLS 1.3 session tickets sent after a handshake.
pub const MAX_TLS13_TICKETS: u64 = 16;

/// OpenSSL's names of the TLS 1.2 suites the ring provider has.
const OPENSSL_NAMES: &[(&str, &str)] = &[
    (
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    ),
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    ),
    (
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    ),
    (
        "ECDHE-RSA-AES256-GCM-SHA384",
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    ),
    (
        "ECDHE-RSA-AES128-GCM-SHA256",
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    ),
    (
        "ECDHE-RSA-CHACHA20-POLY1305",
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    ),
];

/// The suite a cipher name designates, if the ring provider has it.
fn cipher_suite(name: &str) -> Option<SupportedCipherSuite> {
    let wanted = name.trim().to_ascii_uppercase();
    let wanted = OPENSSL_NAMES
        .iter()
        .find(|(openssl, _)| *openssl == wanted)
        .map_or(wanted.clone(), |(_, iana)| (*iana).to_owned());
    ALL_CIPHER_SUITES.iter().copied().find(|suite| {
        let rustls_name = format!("{:?}", suite.suite());
        let aliases = match rustls_name.strip_prefix("TLS13_") {
            Some(rest) => [rustls_name.clone(), format!("TLS_{rest}")],
            None => {
                let rest = rustls_name.strip_prefix("TLS_").unwrap_or(&rustls_name);
                [rustls_name.clone(), format!("TLS12_{rest}")]
            }
        };
        aliases.contains(&wanted)
    })
}

fn kx(name: &str) -> Option<&'static dyn SupportedKxGroup> {
    match name.trim().to_ascii_lowercase().as_str() {
        "x25519" => Some(kx_group::X25519),
        "p-256" | "secp256r1" | "prime256v1" => Some(kx_group::SECP256R1),
        "p-384" | "secp384r1" => Some(kx_group::SECP384R1),
        _ => None,
    }
}

fn signature_scheme(name: &str) -> Option<SignatureScheme> {
    use SignatureScheme as S;
    let scheme = match name.trim().to_ascii_lowercase().as_str() {
        "ecdsa_secp256r1_sha256" | "ecdsa+sha256" => S::ECDSA_NISTP256_SHA256,
        "ecdsa_secp384r1_sha384" | "ecdsa+sha384" => S::ECDSA_NISTP384_SHA384,
        "ed25519" => S::ED25519,
        "rsa_pss_rsae_sha256" | "rsa-pss+sha256" | "rsa_pss_sha256" => S::RSA_PSS_SHA256,
        "rsa_pss_rsae_sha384" | "rsa-pss+sha384" | "rsa_pss_sha384" => S::RSA_PSS_SHA384,
        "rsa_pss_rsae_sha512" | "rsa-pss+sha512" | "rsa_pss_sha512" => S::RSA_PSS_SHA512,
        "rsa_pkcs1_sha256" | "rsa+sha256" => S::RSA_PKCS1_SHA256,
        "rsa_pkcs1_sha384" | "rsa+sha384" => S::RSA_PKCS1_SHA384,
        "rsa_pkcs1_sha512" | "rsa+sha512" => S::RSA_PKCS1_SHA512,
        _ => return None,
    };
    Some(scheme)
}

/// `a:b`, `c` → `a`, `b`, `c` (OpenSSL-style lists in one entry).
fn names(entries: &[String]) -> impl Iterator<Item = &str> + '_ {
    entries
        .iter()
        .flat_map(|e| e.split(':'))
        .map(str::trim)
        .filter(|n| !n.is_empty())
}

fn unsupported(field: &'static str, value: &str, reason: impl Into<String>) -> TlsError {
    TlsError::Unsupported {
        field,
        value: value.to_owned(),
        reason: reason.into(),
    }
}

/// A listener's TLS settings, checked.
#[derive(Debug, Clone)]
pub struct TlsPolicy {
    versions: Vec<&'static SupportedProtocolVersion>,
    suites: Option<Vec<SupportedCipherSuite>>,
    groups: Option<Vec<&'static dyn SupportedKxGroup>>,
    schemes: Option<Arc<[SignatureScheme]>>,
    tickets: usize,
}

impl TlsPolicy {
    /// Reads and checks the knobs of `config` (see the module
    /// documentation); the first value rustls cannot honour is the error.
    pub fn from_listener(config: &HttpsListenerConfig) -> Result<Self, TlsError> {
        let mut versions: Vec<&'static SupportedProtocolVersion> = Vec::new();
        for value in &config.versions {
            let version = match TlsVersion::try_from(*value) {
                Ok(TlsVersion::TlsV12) => &rustls::version::TLS12,
                Ok(TlsVersion::TlsV13) => &rustls::version::TLS13,
                Ok(old) => {
                    return Err(unsupported(
                        "versions",
                        old.as_str_name(),
                        "rustls implements TLS 1.2 and 1.3 only (TLS_V1_2, TLS_V1_3)",
                    ))
                }
                Err(_) => {
                    return Err(unsupported(
                        "versions",
                        &value.to_string(),
                        "not a TlsVersion",
                    ))
                }
            };
            if !versions.iter().any(|v| v.version == version.version) {
                versions.push(version);
            }
        }
        if versions.is_empty() {
            versions = vec![&rustls::version::TLS13, &rustls::version::TLS12];
        }

        let mut suites: Vec<SupportedCipherSuite> = Vec::new();
        for (field, list) in [
            ("cipher_list", &config.cipher_list),
            ("cipher_suites", &config.cipher_suites),
        ] {
            for name in names(list) {
                let suite = cipher_suite(name).ok_or_else(|| {
                    unsupported(
                        field,
                        name,
                        "not an AEAD suite rustls offers (AES-GCM or CHACHA20-POLY1305 \
                         with ECDHE for TLS 1.2; TLS_AES_128_GCM_SHA256, \
                         TLS_AES_256_GCM_SHA384, TLS_CHACHA20_POLY1305_SHA256 for TLS 1.3)",
                    )
                })?;
                if !suites.iter().any(|s| s.suite() == suite.suite()) {
                    suites.push(suite);
                }
            }
        }
        let suites = if suites.is_empty() {
            None
        } else {
            for version in &versions {
                if !suites.iter().any(|s| s.version() == *version) {
                    let value = format!("{:?}", version.version);
                    return Err(unsupported(
                        "cipher_list",
                        &value,
                        "this TLS version is enabled but none of its cipher suites is listed",
                    ));
                }
            }
            Some(suites)
        };

        let mut groups: Vec<&'static dyn SupportedKxGroup> = Vec::new();
        for name in names(&config.groups_list) {
            let group = kx(name).ok_or_else(|| {
                unsupported("groups_list", name, "rustls offers x25519, P-256 and P-384")
            })?;
            if !groups.iter().any(|g| g.name() == group.name()) {
                groups.push(group);
            }
        }
        let groups = (!groups.is_empty()).then_some(groups);

        let mut schemes: Vec<SignatureScheme> = Vec::new();
        for name in names(&config.signature_algorithms) {
            let scheme = signature_scheme(name).ok_or_else(|| {
                unsupported(
                    "signature_algorithms",
                    name,
                    "rustls signs with ecdsa_secp256r1_sha256, ecdsa_secp384r1_sha384, \
                     ed25519, rsa_pss_rsae_sha256/384/512, rsa_pkcs1_sha256/384/512",
                )
            })?;
            if !schemes.contains(&scheme) {
                schemes.push(scheme);
            }
        }
        let schemes = (!schemes.is_empty()).then(|| Arc::from(schemes));

        if config.send_tls13_tickets > MAX_TLS13_TICKETS {
            return Err(unsupported(
                "send_tls13_tickets",
                &config.send_tls13_tickets.to_string(),
                "at most 16",
            ));
        }
        // Bounded above: fits a usize on every target.
        let tickets = usize::try_from(config.send_tls13_tickets).unwrap_or(0);

        for protocol in &config.alpn_protocols {
            match protocol.as_str() {
                "http/1.1" => {}
                "h2" => tracing::debug!(
                    address = ?config.address,
                    "alpn_protocols: h2 is not offered (HTTP/2 is not served yet)"
                ),
                other => {
                    return Err(unsupported(
                        "alpn_protocols",
                        other,
                        "an HTTPS listener offers http/1.1 (h2 is accepted and not offered yet)",
                    ))
                }
            }
        }

        Ok(TlsPolicy {
            versions,
            suites,
            groups,
            schemes,
            tickets,
        })
    }

    /// A `ServerConfig` for this policy resolving certificates from
    /// `store` (live: later changes to the store apply to new handshakes).
    pub fn server_config(
        &self,
        store: Arc<CertificateStore>,
    ) -> Result<Arc<ServerConfig>, TlsError> {
        let mut provider = super::ring_provider();
        if let Some(suites) = &self.suites {
            provider.cipher_suites = suites.clone();
        }
        if let Some(groups) = &self.groups {
            provider.kx_groups = groups.clone();
        }
        let mut config = ServerConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&self.versions)
            .map_err(|e| unsupported("versions", &format!("{:?}", self.versions), e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Resolver {
                store,
                schemes: self.schemes.clone(),
            }));
        config.alpn_protocols = vec![ALPN_HTTP_1_1.to_vec()];
        // An operator's cipher list is a preference order.
        config.ignore_client_order = self.suites.is_some();
        config.send_tls13_tickets = self.tickets;
        Ok(Arc::new(config))
    }
}

/// Gives a listener-level certificate error the listener's field names
/// (`certificate`, `key`, `certificate_chain`).
fn listener_fields(error: TlsError) -> TlsError {
    fn rename(field: &'static str) -> &'static str {
        match field {
            "certificate.certificate" => "certificate",
            "certificate.key" => "key",
            "certificate.certificate_chain" => "certificate_chain",
            other => other,
        }
    }
    match error {
        TlsError::Certificate(error) => TlsError::Certificate(match error {
            CertificateError::TooLarge { field, size, max } => CertificateError::TooLarge {
                field: rename(field),
                size,
                max,
            },
            CertificateError::Pem {
                field,
                expected,
                detail,
            } => CertificateError::Pem {
                field: rename(field),
                expected,
                detail,
            },
            CertificateError::Shape { field, reason } => CertificateError::Shape {
                field: rename(field),
                reason,
            },
            CertificateError::NotX509 { field, detail } => CertificateError::NotX509 {
                field: rename(field),
                detail,
            },
            other => other,
        }),
        other => other,
    }
}

/// The listener's own certificate (`certificate`, `certificate_chain`,
/// `key`), its default; `None` when it has none. The certificate and the
/// key come together.
pub fn listener_certificate(
    config: &HttpsListenerConfig,
) -> Result<Option<LoadedCertificate>, TlsError> {
    match (&config.certificate, &config.key) {
        (None, None) => Ok(None),
        (Some(certificate), Some(key)) => {
            let order = CertificateAndKey {
                certificate: certificate.clone(),
                certificate_chain: config.certificate_chain.clone(),
                key: key.clone(),
                ..Default::default()
            };
            load_with_field(&order, "key")
                .map(Some)
                .map_err(listener_fields)
        }
        (Some(_), None) => Err(unsupported(
            "key",
            "none",
            "a listener with a certificate needs its key",
        )),
        (None, Some(_)) => Err(unsupported(
            "certificate",
            "none",
            "a listener with a key needs its certificate",
        )),
    }
}

/// What the master runs before an HTTPS listener order reaches a worker:
/// the knobs map to a `ServerConfig` and the listener's own certificate,
/// if any, loads.
pub fn check_listener(config: &HttpsListenerConfig) -> Result<(), TlsError> {
    let policy = TlsPolicy::from_listener(config)?;
    policy.server_config(Arc::new(CertificateStore::new()))?;
    listener_certificate(config)?;
    Ok(())
}

/// A signing key that only signs with the listener's allowed schemes.
#[derive(Debug)]
struct RestrictedKey {
    inner: Arc<dyn SigningKey>,
    allowed: Arc<[SignatureScheme]>,
}

impl SigningKey for RestrictedKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        let offered: Vec<SignatureScheme> = offered
            .iter()
            .copied()
            .filter(|s| self.allowed.contains(s))
            .collect();
        self.inner.choose_scheme(&offered)
    }

    fn public_key(&self) -> Option<SubjectPublicKeyInfoDer<'_>> {
        self.inner.public_key()
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        self.inner.algorithm()
    }
}

/// `key` signing only with `allowed`.
pub(crate) fn restrict_schemes(
    key: &Arc<CertifiedKey>,
    allowed: &Arc<[SignatureScheme]>,
) -> Arc<CertifiedKey> {
    let mut restricted = CertifiedKey::new(
        key.cert.clone(),
        Arc::new(RestrictedKey {
            inner: key.key.clone(),
            allowed: allowed.clone(),
        }),
    );
    restricted.ocsp = key.ocsp.clone();
    Arc::new(restricted)
}
