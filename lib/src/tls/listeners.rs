//! The worker's TLS side of its HTTPS listeners, kept live from the orders:
//! per listener, its checked
//! policy, its certificate store (the listener's own certificate as the
//! default, plus every `add_certificate`) and the `rustls::ServerConfig`
//! built on them, which the HTTP proxy hands to each
//! [`super::TlsTransport`] it starts on an HTTPS listener.
//!
//! [`TlsListeners::apply`] runs after the worker's state accepted an order:
//! it loads what the order brings first and changes nothing on an error,
//! so the worker can roll its state back and answer FAILURE. Pure: no I/O.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use rustls::ServerConfig;
use sozu_command_lib::certificate::Fingerprint;
use sozu_command_lib::command::request::RequestType;
use sozu_command_lib::command::{HttpsListenerConfig, ListenerType, SocketAddress};
use sozu_command_lib::state::ConfigState;

use super::certificate::load;
use super::policy::{listener_certificate, TlsPolicy};
use super::{CertificateStore, TlsError};

/// One HTTPS listener's TLS configuration.
#[derive(Debug, Clone)]
pub struct TlsListener {
    /// Its certificates (live).
    pub store: Arc<CertificateStore>,
    /// What a connection on it is set up with.
    pub config: Arc<ServerConfig>,
}

/// One listener entry as it was before an order (see
/// [`TlsListeners::before`]).
#[derive(Debug)]
pub struct TlsUndo {
    at: SocketAddr,
    entry: Option<TlsListener>,
}

/// Every HTTPS listener of the worker, by address.
#[derive(Debug, Default)]
pub struct TlsListeners {
    listeners: BTreeMap<SocketAddr, TlsListener>,
}

fn address(wire: &SocketAddress) -> Option<SocketAddr> {
    SocketAddr::try_from(wire).ok()
}

impl TlsListeners {
    /// No listener.
    pub fn new() -> Self {
        Self::default()
    }

    /// The listener at `address`.
    pub fn get(&self, address: &SocketAddr) -> Option<&TlsListener> {
        self.listeners.get(address)
    }

    /// How many certificates the listener at `address` holds (0 if there
    /// is no such listener).
    pub fn certificate_count(&self, address: &SocketAddr) -> usize {
        self.listeners.get(address).map_or(0, |l| l.store.len())
    }

    fn build(
        config: &HttpsListenerConfig,
        store: Arc<CertificateStore>,
    ) -> Result<Arc<ServerConfig>, TlsError> {
        let policy = TlsPolicy::from_listener(config)?;
        policy.server_config(store)
    }

    /// What [`Self::apply`] of `order` would change at one listener
    /// address, kept so [`Self::undo`] can put it back if a later step of
    /// the same order fails (the HTTPS listener's socket cannot be bound…).
    /// `None` for orders that change no listener entry.
    pub fn before(&self, order: &RequestType) -> Option<TlsUndo> {
        let wire = match order {
            RequestType::AddHttpsListener(config) => &config.address,
            RequestType::UpdateHttpsListener(update) => &update.address,
            RequestType::RemoveListener(order) if order.proxy() == ListenerType::Https => {
                &order.address
            }
            _ => return None,
        };
        let at = address(wire)?;
        Some(TlsUndo {
            at,
            entry: self.listeners.get(&at).cloned(),
        })
    }

    /// Puts back the listener entry [`Self::before`] kept.
    pub fn undo(&mut self, undo: TlsUndo) {
        match undo.entry {
            Some(entry) => {
                self.listeners.insert(undo.at, entry);
            }
            None => {
                self.listeners.remove(&undo.at);
            }
        }
    }

    /// Carries out the TLS part of an order `state` (the worker's state,
    /// the order applied) accepted. Orders without a TLS part are no-ops.
    pub fn apply(&mut self, order: &RequestType, state: &ConfigState) -> Result<(), TlsError> {
        match order {
            RequestType::AddHttpsListener(config) => {
                let Some(at) = address(&config.address) else {
                    return Ok(());
                };
                let default = listener_certificate(config)?;
                let store = Arc::new(CertificateStore::new());
                let server_config = Self::build(config, store.clone())?;
                store.set_default(default);
                self.listeners.insert(
                    at,
                    TlsListener {
                        store,
                        config: server_config,
                    },
                );
            }
            RequestType::UpdateHttpsListener(update) => {
                let Some(at) = address(&update.address) else {
                    return Ok(());
                };
                if let (Some(listener), Some(config)) =
                    (self.listeners.get_mut(&at), state.https_listener(&at))
                {
                    listener.config = Self::build(config, listener.store.clone())?;
                }
            }
            RequestType::RemoveListener(order) if order.proxy() == ListenerType::Https => {
                if let Some(at) = address(&order.address) {
                    self.listeners.remove(&at);
                }
            }
            RequestType::AddCertificate(order) => {
                let loaded = load(&order.certificate)?;
                if let Some(listener) = address(&order.address).and_then(|a| self.listeners.get(&a))
                {
                    listener.store.add(loaded);
                }
            }
            RequestType::ReplaceCertificate(order) => {
                let loaded = load(&order.new_certificate)?;
                let old: Option<Fingerprint> = order.old_fingerprint.parse().ok();
                if let (Some(listener), Some(old)) = (
                    address(&order.address).and_then(|a| self.listeners.get(&a)),
                    old,
                ) {
                    listener.store.replace(&old, loaded);
                }
            }
            RequestType::RemoveCertificate(order) => {
                let fingerprint: Option<Fingerprint> = order.fingerprint.parse().ok();
                if let (Some(listener), Some(fingerprint)) = (
                    address(&order.address).and_then(|a| self.listeners.get(&a)),
                    fingerprint,
                ) {
                    listener.store.remove(&fingerprint);
                }
            }
            _ => {}
        }
        Ok(())
    }
}
