//! The certificates of one HTTPS listener and the SNI resolver over them
//! (`add_certificate` names the listener's address; `listeners.rs` keeps one
//! store per listener).
//!
//! Choosing a certificate for a ClientHello:
//! 1. the SNI name, lowercased and without a trailing dot, matched exactly
//!    against the certificates' names;
//! 2. else the wildcard one label up (`a.example.com` → `*.example.com`; a
//!    wildcard covers exactly one label, as RFC 6125 §6.4.3 has it);
//! 3. else (no SNI, or no name matches) the default certificate: the one
//!    set with [`CertificateStore::set_default`] (the listener's own
//!    `certificate`), else the oldest certificate added.
//!
//! When several certificates carry the same name, the one added last wins
//! (a renewed certificate added before the old one is removed takes over
//! at once). Updates are live: a `rustls::ServerConfig` built on a store
//! sees every later add, replace and remove.
//!
//! Lookups are O(log n) in the number of names. Pure: no I/O, no clock.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::SignatureScheme;
use sozu_command_lib::certificate::Fingerprint;

use super::certificate::LoadedCertificate;
use super::policy::restrict_schemes;

#[derive(Debug)]
struct Entry {
    certificate: LoadedCertificate,
    /// Insertion order: the newest wins a name, the oldest is the default.
    sequence: u64,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<Fingerprint, Entry>,
    /// name (exact or `*.suffix`) → sequence → fingerprint.
    names: HashMap<String, BTreeMap<u64, Fingerprint>>,
    /// sequence → fingerprint, for the oldest-certificate default.
    by_age: BTreeMap<u64, Fingerprint>,
    default: Option<Fingerprint>,
    next_sequence: u64,
}

impl Inner {
    fn newest_for(&self, name: &str) -> Option<&Entry> {
        let fingerprint = self.names.get(name)?.values().next_back()?;
        self.entries.get(fingerprint)
    }

    fn lookup(&self, server_name: Option<&str>) -> Option<&Entry> {
        if let Some(name) = server_name {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if let Some(entry) = self.newest_for(&name) {
                return Some(entry);
            }
            if let Some((_, parent)) = name.split_once('.') {
                if let Some(entry) = self.newest_for(&format!("*.{parent}")) {
                    return Some(entry);
                }
            }
        }
        self.default.and_then(|f| self.entries.get(&f)).or_else(|| {
            let oldest = self.by_age.values().next()?;
            self.entries.get(oldest)
        })
    }

    fn remove(&mut self, fingerprint: &Fingerprint) -> Option<Entry> {
        let entry = self.entries.remove(fingerprint)?;
        for name in &entry.certificate.names {
            if let Some(set) = self.names.get_mut(name) {
                set.remove(&entry.sequence);
                if set.is_empty() {
                    self.names.remove(name);
                }
            }
        }
        self.by_age.remove(&entry.sequence);
        if self.default == Some(*fingerprint) {
            self.default = None;
        }
        Some(entry)
    }

    fn insert(&mut self, certificate: LoadedCertificate) {
        // Adding a certificate already present renews its place (newest).
        self.remove(&certificate.fingerprint);
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        for name in &certificate.names {
            self.names
                .entry(name.clone())
                .or_default()
                .insert(sequence, certificate.fingerprint);
        }
        self.by_age.insert(sequence, certificate.fingerprint);
        self.entries.insert(
            certificate.fingerprint,
            Entry {
                certificate,
                sequence,
            },
        );
    }
}

/// The certificates of one HTTPS listener. Shared (`Arc`) between the
/// worker, which updates it from the orders, and the listener's
/// `ServerConfig`, which resolves from it.
#[derive(Debug, Default)]
pub struct CertificateStore {
    inner: RwLock<Inner>,
}

impl CertificateStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    // The lock is only held for map operations that cannot panic; a
    // poisoned lock still holds a consistent map.
    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a certificate (adding one already present changes nothing but
    /// its age: it becomes the newest).
    pub fn add(&self, certificate: LoadedCertificate) {
        self.write().insert(certificate);
    }

    /// Removes a certificate; `false` if it was not there.
    pub fn remove(&self, fingerprint: &Fingerprint) -> bool {
        self.write().remove(fingerprint).is_some()
    }

    /// Replaces `old` by `new` in one step: no handshake sees neither.
    pub fn replace(&self, old: &Fingerprint, new: LoadedCertificate) {
        let mut inner = self.write();
        let was_default = inner.default == Some(*old);
        inner.remove(old);
        let fingerprint = new.fingerprint;
        inner.insert(new);
        if was_default {
            inner.default = Some(fingerprint);
        }
    }

    /// Makes `certificate` the default (added if absent); `None` goes back
    /// to the oldest certificate.
    pub fn set_default(&self, certificate: Option<LoadedCertificate>) {
        let mut inner = self.write();
        match certificate {
            Some(certificate) => {
                let fingerprint = certificate.fingerprint;
                if !inner.entries.contains_key(&fingerprint) {
                    inner.insert(certificate);
                }
                inner.default = Some(fingerprint);
            }
            None => inner.default = None,
        }
    }

    /// The certificate a client announcing `server_name` gets.
    pub fn resolve_name(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        self.read()
            .lookup(server_name)
            .map(|e| e.certificate.key.clone())
    }

    /// Whether a certificate with this fingerprint is here.
    pub fn contains(&self, fingerprint: &Fingerprint) -> bool {
        self.read().entries.contains_key(fingerprint)
    }

    /// How many certificates the store holds.
    pub fn len(&self) -> usize {
        self.read().entries.len()
    }

    /// Whether the store holds no certificate.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One (name, fingerprint) pair per name of every certificate, ordered
    /// by name then fingerprint; a certificate without names is listed
    /// with an empty name.
    pub fn summaries(&self) -> Vec<(String, Fingerprint)> {
        let inner = self.read();
        let mut out: Vec<(String, Fingerprint)> = inner
            .entries
            .values()
            .flat_map(|e| {
                let fingerprint = e.certificate.fingerprint;
                let names = &e.certificate.names;
                let listed: Vec<(String, Fingerprint)> = if names.is_empty() {
                    vec![(String::new(), fingerprint)]
                } else {
                    names.iter().map(|n| (n.clone(), fingerprint)).collect()
                };
                listed
            })
            .collect();
        out.sort();
        out
    }
}

/// The rustls resolver of one listener: its store, restricted to the
/// listener's `signature_algorithms` when it sets some.
#[derive(Debug)]
pub(crate) struct Resolver {
    pub(crate) store: Arc<CertificateStore>,
    pub(crate) schemes: Option<Arc<[SignatureScheme]>>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let key = self.store.resolve_name(client_hello.server_name())?;
        match &self.schemes {
            None => Some(key),
            Some(allowed) => Some(restrict_schemes(&key, allowed)),
        }
    }
}
