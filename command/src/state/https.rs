//! HTTPS orders: HTTPS listeners (add, update, and through `listeners.rs`
//! remove / activate / deactivate), HTTPS frontends, and certificates
//! (`add_certificate`, `replace_certificate`, `remove_certificate`).
//!
//! Certificates are kept per HTTPS listener address and keyed by the
//! leaf's SHA-256 fingerprint, as Sōzu keeps them; a certificate needs its
//! listener, and removing the listener removes its certificates and
//! frontends. The state checks that the PEM decodes (`crate::certificate`);
//! that the key signs and matches the certificate, and that the listener's
//! TLS knobs map to rustls, is checked by `sozu-lib`'s `tls` module (the
//! master runs it before the workers do). Each handler checks first and
//! mutates last: a refused order leaves the state as it was.
//!
//! Adding a certificate already present (same listener, same fingerprint)
//! is accepted and changes nothing, as in Sōzu.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::certificate::{self, Fingerprint};
use crate::command::{
    AddCertificate, CertificateAndKey, CertificateSummary, CertificatesByAddress,
    CertificatesWithFingerprints, HttpsListenerConfig, ListOfCertificatesByAddress,
    QueryCertificatesFilters, RemoveCertificate, ReplaceCertificate, RequestHttpFrontend,
    UpdateHttpsListenerConfig,
};
use crate::state::frontends::RouteTable;
use crate::state::listeners::{
    diff_optional, diff_required, http_optional_fields, http_required_fields, set_optional,
    set_required, update_in,
};
use crate::state::{validation, ConfigState, ListenerKind, StateError};

/// A certificate in the state: the order that adds it (address
/// normalized) and the names it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct StoredCertificate {
    pub(super) order: AddCertificate,
    pub(super) names: Vec<String>,
}

/// The HTTPS fields that are `Option` on both the config and the patch:
/// the HTTP listener's and the TLS listener's own (its plain fields are
/// the HTTP listener's, `http_required_fields`).
macro_rules! https_optional_fields {
    ($apply:ident, $($arg:ident),*) => {
        http_optional_fields!($apply, $($arg),*);
        $apply!($($arg),*; strict_sni_binding, disable_http11, hsts)
    };
}

/// Applies an HTTPS listener patch: present fields replace the listener's,
/// absent ones are kept; a non-empty `answers` map replaces the whole map.
pub(super) fn patch_https(config: &mut HttpsListenerConfig, update: &UpdateHttpsListenerConfig) {
    https_optional_fields!(set_optional, config, update);
    http_required_fields!(set_required, config, update);
    if let Some(alpn) = &update.alpn_protocols {
        config.alpn_protocols = alpn.values.clone();
    }
    if !update.answers.is_empty() {
        config.answers = update.answers.clone();
    }
}

/// The patch that turns `old` into `new`, or `None` when the update order
/// cannot express it (TLS versions, ciphers, the listener's certificate:
/// the listener is replaced).
pub(super) fn https_patch(
    old: &HttpsListenerConfig,
    new: &HttpsListenerConfig,
) -> Option<UpdateHttpsListenerConfig> {
    let mut update = UpdateHttpsListenerConfig {
        address: new.address,
        ..Default::default()
    };
    https_optional_fields!(diff_optional, old, new, update);
    http_required_fields!(diff_required, old, new, update);
    if old.alpn_protocols != new.alpn_protocols {
        update.alpn_protocols = Some(crate::command::AlpnProtocols {
            values: new.alpn_protocols.clone(),
        });
    }
    if old.answers != new.answers {
        update.answers = new.answers.clone();
    }
    let mut patched = old.clone();
    patch_https(&mut patched, &update);
    patched.active = new.active;
    (patched == *new).then_some(update)
}

fn check_https_listener(config: &HttpsListenerConfig) -> Result<SocketAddr, StateError> {
    validation::listener_address(&config.address, config.public_address.as_ref())
}

fn fingerprint(field: &'static str, text: &str) -> Result<Fingerprint, StateError> {
    text.parse().map_err(|_| StateError::InvalidValue {
        field,
        value: format!("{text:?}"),
        reason: "a fingerprint is 64 hexadecimal digits (the SHA-256 of the certificate)",
    })
}

impl ConfigState {
    fn require_https_listener(&self, address: SocketAddr) -> Result<(), StateError> {
        if !self.https_listeners.contains_key(&address) {
            return Err(StateError::ListenerNotFound {
                kind: ListenerKind::Https,
                address,
            });
        }
        Ok(())
    }

    pub(super) fn add_https_listener(
        &mut self,
        config: &HttpsListenerConfig,
    ) -> Result<(), StateError> {
        let address = check_https_listener(config)?;
        self.refuse_duplicate(ListenerKind::Https, address)?;
        self.https_listeners.insert(address, config.clone());
        Ok(())
    }

    pub(super) fn update_https_listener(
        &mut self,
        update: &UpdateHttpsListenerConfig,
    ) -> Result<(), StateError> {
        update_in(
            &mut self.https_listeners,
            ListenerKind::Https,
            &update.address,
            update,
            patch_https,
            check_https_listener,
        )
    }

    /// Removes the HTTPS listener with its frontends and certificates
    /// (called by `remove_listener` once the listener is known to exist).
    pub(super) fn remove_https_listener(&mut self, address: SocketAddr) {
        self.https_listeners.remove(&address);
        self.https_frontends
            .retain(|route, _| route.address != address);
        self.certificates.remove(&address);
    }

    pub(super) fn add_https_frontend(
        &mut self,
        frontend: &RequestHttpFrontend,
    ) -> Result<(), StateError> {
        self.add_route(RouteTable::Https, frontend)
    }

    pub(super) fn remove_https_frontend(
        &mut self,
        frontend: &RequestHttpFrontend,
    ) -> Result<(), StateError> {
        self.remove_route(RouteTable::Https, frontend)
    }

    /// Decodes a certificate for the listener at `address` and returns its
    /// entry.
    fn checked_certificate(
        &self,
        address: SocketAddr,
        certificate: &CertificateAndKey,
        expired_at: Option<i64>,
    ) -> Result<(Fingerprint, StoredCertificate), StateError> {
        self.require_https_listener(address)?;
        let decoded = certificate::decode(certificate)?;
        let stored = StoredCertificate {
            order: AddCertificate {
                address: address.into(),
                certificate: certificate.clone(),
                expired_at,
            },
            names: decoded.names,
        };
        Ok((decoded.fingerprint, stored))
    }

    pub(super) fn add_certificate(&mut self, order: &AddCertificate) -> Result<(), StateError> {
        let address = validation::address("address", &order.address)?;
        let (fingerprint, stored) =
            self.checked_certificate(address, &order.certificate, order.expired_at)?;
        self.certificates
            .entry(address)
            .or_default()
            .entry(fingerprint)
            .or_insert(stored);
        Ok(())
    }

    pub(super) fn replace_certificate(
        &mut self,
        order: &ReplaceCertificate,
    ) -> Result<(), StateError> {
        let address = validation::address("address", &order.address)?;
        let old = fingerprint("old_fingerprint", &order.old_fingerprint)?;
        let (new, stored) =
            self.checked_certificate(address, &order.new_certificate, order.new_expired_at)?;
        let certificates = self
            .certificates
            .get_mut(&address)
            .filter(|c| c.contains_key(&old))
            .ok_or_else(|| StateError::CertificateNotFound {
                field: "old_fingerprint",
                address,
                fingerprint: old.to_string(),
            })?;
        certificates.remove(&old);
        certificates.insert(new, stored);
        Ok(())
    }

    pub(super) fn remove_certificate(
        &mut self,
        order: &RemoveCertificate,
    ) -> Result<(), StateError> {
        let address = validation::address("address", &order.address)?;
        let fingerprint = fingerprint("fingerprint", &order.fingerprint)?;
        let certificates = self
            .certificates
            .get_mut(&address)
            .filter(|c| c.contains_key(&fingerprint))
            .ok_or_else(|| StateError::CertificateNotFound {
                field: "fingerprint",
                address,
                fingerprint: fingerprint.to_string(),
            })?;
        certificates.remove(&fingerprint);
        if certificates.is_empty() {
            self.certificates.remove(&address);
        }
        Ok(())
    }

    /// The HTTPS listener at this address.
    pub fn https_listener(&self, address: &SocketAddr) -> Option<&HttpsListenerConfig> {
        self.https_listeners.get(address)
    }

    /// Every HTTPS listener, ordered by address.
    pub fn https_listeners(
        &self,
    ) -> impl Iterator<Item = (&SocketAddr, &HttpsListenerConfig)> + '_ {
        self.https_listeners.iter()
    }

    /// Every HTTPS frontend, ordered by route.
    pub fn https_frontends(&self) -> impl Iterator<Item = &RequestHttpFrontend> + '_ {
        self.https_frontends.values()
    }

    /// The certificates of every HTTPS listener: (listener, fingerprint,
    /// names, the order that adds it), ordered by listener then
    /// fingerprint.
    pub fn certificates(
        &self,
    ) -> impl Iterator<Item = (SocketAddr, Fingerprint, &[String], &AddCertificate)> + '_ {
        self.certificates.iter().flat_map(|(address, certs)| {
            certs.iter().map(move |(fingerprint, stored)| {
                (
                    *address,
                    *fingerprint,
                    stored.names.as_slice(),
                    &stored.order,
                )
            })
        })
    }

    /// The certificates `filter` selects: with a `fingerprint`, that one;
    /// with a `domain`, those serving it (an exact name, or a `*.` wildcard
    /// covering it).
    fn selected<'a>(
        &'a self,
        filter: &'a QueryCertificatesFilters,
    ) -> impl Iterator<Item = (SocketAddr, Fingerprint, &'a [String], &'a AddCertificate)> + 'a
    {
        let wanted: Option<Option<Fingerprint>> =
            filter.fingerprint.as_deref().map(|f| f.parse().ok());
        let domain = filter
            .domain
            .as_deref()
            .map(|d| d.trim_end_matches('.').to_ascii_lowercase());
        self.certificates()
            .filter(move |(_, fingerprint, names, _)| {
                let fingerprint_ok = match wanted {
                    None => true,
                    Some(w) => w == Some(*fingerprint),
                };
                let domain_ok = domain
                    .as_deref()
                    .is_none_or(|d| names.iter().any(|n| serves(n, d)));
                fingerprint_ok && domain_ok
            })
    }

    /// `query_certificates_from_the_state`: fingerprint (hex) →
    /// certificate, with the private key left out (an answer never carries
    /// a key; the state file does).
    pub fn certificates_with_fingerprints(
        &self,
        filter: &QueryCertificatesFilters,
    ) -> CertificatesWithFingerprints {
        CertificatesWithFingerprints {
            certs: self
                .selected(filter)
                .map(|(_, fingerprint, names, order)| {
                    let mut certificate = order.certificate.clone();
                    certificate.key = String::new();
                    if certificate.names.is_empty() {
                        certificate.names = names.to_vec();
                    }
                    (fingerprint.to_string(), certificate)
                })
                .collect(),
        }
    }

    /// `query_certificates_from_workers` (one worker's answer): per HTTPS
    /// listener, one (domain, fingerprint) summary per name.
    pub fn certificates_by_address(
        &self,
        filter: &QueryCertificatesFilters,
    ) -> ListOfCertificatesByAddress {
        let mut by_address: BTreeMap<SocketAddr, Vec<CertificateSummary>> = BTreeMap::new();
        for (address, fingerprint, names, _) in self.selected(filter) {
            let summaries = by_address.entry(address).or_default();
            let names: &[String] = if names.is_empty() {
                &[String::new()]
            } else {
                names
            };
            for name in names {
                summaries.push(CertificateSummary {
                    domain: name.clone(),
                    fingerprint: fingerprint.to_string(),
                });
            }
        }
        ListOfCertificatesByAddress {
            certificates: by_address
                .into_iter()
                .map(|(address, certificate_summaries)| CertificatesByAddress {
                    address: address.into(),
                    certificate_summaries,
                })
                .collect(),
        }
    }

    /// The certificates of the listener at `address`, by fingerprint.
    pub(super) fn certificates_of(
        &self,
        address: &SocketAddr,
    ) -> Option<&BTreeMap<Fingerprint, StoredCertificate>> {
        self.certificates.get(address)
    }
}

/// Whether a certificate name (`www.example.com`, `*.example.com`) serves
/// `domain` (lowercase): exactly, or as a wildcard over one label.
pub(crate) fn serves(name: &str, domain: &str) -> bool {
    match name.strip_prefix("*.") {
        Some(suffix) => domain
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
        None => name == domain,
    }
}
