//! Listener orders: add, update (patch in place), remove, activate,
//! deactivate, for UDP, TCP and HTTP listeners.
//!
//! Each handler checks everything first and mutates last, so a refused order
//! leaves the state as it was. Listeners are keyed by (protocol, address): a
//! TCP and a UDP listener may share an address. Removing a listener removes
//! the frontends attached to it (a frontend never outlives its listener).
//! The patch functions are shared with `diff` so a computed update is always
//! applied exactly as `dispatch` would apply it.
//! The field lists and the set / diff macros of the HTTP patch serve the
//! HTTPS patch (`https.rs`) too, and `update_in` every listener update: a
//! knob added to HTTP listeners reaches HTTPS listeners without a second
//! list to keep in step.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::command::{
    ActivateListener, DeactivateListener, HttpListenerConfig, RemoveListener, SocketAddress,
    TcpListenerConfig, UdpListenerConfig, UpdateHttpListenerConfig, UpdateTcpListenerConfig,
    UpdateUdpListenerConfig,
};
use crate::state::{validation, ConfigState, ListenerKind, StateError};

use crate::limits::MAX_RX_DATAGRAM_SIZE;

fn check_datagram_size(value: u32) -> Result<(), StateError> {
    if value == 0 || value > MAX_RX_DATAGRAM_SIZE {
        return Err(StateError::InvalidValue {
            field: "max_rx_datagram_size",
            value: value.to_string(),
            reason: "must be in 1..=65507",
        });
    }
    Ok(())
}

/// A UDP idle timeout of 0 would close every flow the moment it opens.
fn check_udp_timeout(field: &'static str, value: u32) -> Result<(), StateError> {
    if value == 0 {
        return Err(StateError::InvalidValue {
            field,
            value: "0".to_owned(),
            reason: "a UDP idle timeout must be at least 1 second",
        });
    }
    Ok(())
}

fn check_udp_listener(config: &UdpListenerConfig) -> Result<SocketAddr, StateError> {
    let address = validation::listener_address(&config.address, config.public_address.as_ref())?;
    check_udp_timeout("front_timeout", config.front_timeout)?;
    check_udp_timeout("back_timeout", config.back_timeout)?;
    check_datagram_size(config.max_rx_datagram_size)?;
    Ok(address)
}

fn check_tcp_listener(config: &TcpListenerConfig) -> Result<SocketAddr, StateError> {
    validation::listener_address(&config.address, config.public_address.as_ref())
}

fn check_http_listener(config: &HttpListenerConfig) -> Result<SocketAddr, StateError> {
    validation::listener_address(&config.address, config.public_address.as_ref())
}

/// Applies a UDP listener patch: every field present in `update` replaces the
/// listener's value; absent fields are kept.
pub fn patch_udp(config: &mut UdpListenerConfig, update: &UpdateUdpListenerConfig) {
    if let Some(public) = update.public_address {
        config.public_address = Some(public);
    }
    if let Some(v) = update.front_timeout {
        config.front_timeout = v;
    }
    if let Some(v) = update.back_timeout {
        config.back_timeout = v;
    }
    if let Some(v) = update.max_rx_datagram_size {
        config.max_rx_datagram_size = v;
    }
    if let Some(v) = update.max_flows {
        config.max_flows = v;
    }
}

/// Applies a TCP listener patch (see [`patch_udp`]).
pub fn patch_tcp(config: &mut TcpListenerConfig, update: &UpdateTcpListenerConfig) {
    if let Some(public) = update.public_address {
        config.public_address = Some(public);
    }
    if let Some(v) = update.expect_proxy {
        config.expect_proxy = v;
    }
    if let Some(v) = update.front_timeout {
        config.front_timeout = v;
    }
    if let Some(v) = update.back_timeout {
        config.back_timeout = v;
    }
    if let Some(v) = update.connect_timeout {
        config.connect_timeout = v;
    }
}

/// For every field named, present on the patch `$update`: the config's
/// `Option` field takes its value.
macro_rules! set_optional {
    ($config:ident, $update:ident; $($field:ident),*) => {$(
        if let Some(v) = &$update.$field {
            $config.$field = Some(v.clone());
        }
    )*};
}
pub(super) use set_optional;

/// For every field named, present on the patch `$update`: the config's
/// plain field takes its value.
macro_rules! set_required {
    ($config:ident, $update:ident; $($field:ident),*) => {$(
        if let Some(v) = &$update.$field {
            $config.$field = v.clone();
        }
    )*};
}
pub(super) use set_required;

/// For every `Option` field named that differs from `$old` to `$new`: the
/// patch `$update` carries the new value.
macro_rules! diff_optional {
    ($old:ident, $new:ident, $update:ident; $($field:ident),*) => {$(
        if $old.$field != $new.$field {
            $update.$field = $new.$field.clone();
        }
    )*};
}
pub(super) use diff_optional;

/// For every plain field named that differs from `$old` to `$new`: the
/// patch `$update` carries the new value.
macro_rules! diff_required {
    ($old:ident, $new:ident, $update:ident; $($field:ident),*) => {$(
        if $old.$field != $new.$field {
            $update.$field = Some($new.$field.clone());
        }
    )*};
}
pub(super) use diff_required;

/// The HTTP fields that are `Option` on both the config and the patch.
macro_rules! http_optional_fields {
    ($apply:ident, $($arg:ident),*) => {
        $apply!($($arg),*;
            public_address,
            http_answers,
            h2_max_rst_stream_per_window,
            h2_max_ping_per_window,
            h2_max_settings_per_window,
            h2_max_empty_data_per_window,
            h2_max_continuation_frames,
            h2_max_glitch_count,
            h2_initial_connection_window,
            h2_max_concurrent_streams,
            h2_stream_shrink_ratio,
            h2_max_rst_stream_lifetime,
            h2_max_rst_stream_abusive_lifetime,
            h2_max_rst_stream_emitted_lifetime,
            h2_max_header_list_size,
            h2_max_header_table_size,
            h2_stream_idle_timeout_seconds,
            h2_graceful_shutdown_deadline_seconds,
            h2_max_window_update_stream0_per_window,
            sozu_id_header,
            elide_x_real_ip,
            send_x_real_ip,
            h2_max_header_fields
        )
    };
}
pub(super) use http_optional_fields;

/// The HTTP fields that are plain on the config and `Option` on the patch.
macro_rules! http_required_fields {
    ($apply:ident, $($arg:ident),*) => {
        $apply!($($arg),*;
            expect_proxy,
            sticky_name,
            front_timeout,
            back_timeout,
            connect_timeout,
            request_timeout
        )
    };
}
pub(super) use http_required_fields;

/// Applies an HTTP listener patch (see [`patch_udp`]). A non-empty `answers`
/// map replaces the listener's map as a whole.
pub fn patch_http(config: &mut HttpListenerConfig, update: &UpdateHttpListenerConfig) {
    http_optional_fields!(set_optional, config, update);
    http_required_fields!(set_required, config, update);
    if !update.answers.is_empty() {
        config.answers = update.answers.clone();
    }
}

/// The patch that turns `old` into `new`, or `None` when a patch cannot
/// express the change (a field that would have to be unset, or one the
/// update order does not carry).
pub(super) fn udp_patch(
    old: &UdpListenerConfig,
    new: &UdpListenerConfig,
) -> Option<UpdateUdpListenerConfig> {
    let update = UpdateUdpListenerConfig {
        address: new.address,
        public_address: new
            .public_address
            .filter(|_| old.public_address != new.public_address),
        front_timeout: Some(new.front_timeout).filter(|v| *v != old.front_timeout),
        back_timeout: Some(new.back_timeout).filter(|v| *v != old.back_timeout),
        max_rx_datagram_size: Some(new.max_rx_datagram_size)
            .filter(|v| *v != old.max_rx_datagram_size),
        max_flows: Some(new.max_flows).filter(|v| *v != old.max_flows),
    };
    let mut patched = *old;
    patch_udp(&mut patched, &update);
    patched.active = new.active;
    (patched == *new).then_some(update)
}

/// The TCP patch that turns `old` into `new` (see [`udp_patch`]).
pub(super) fn tcp_patch(
    old: &TcpListenerConfig,
    new: &TcpListenerConfig,
) -> Option<UpdateTcpListenerConfig> {
    let update = UpdateTcpListenerConfig {
        address: new.address,
        public_address: new
            .public_address
            .filter(|_| old.public_address != new.public_address),
        expect_proxy: Some(new.expect_proxy).filter(|v| *v != old.expect_proxy),
        front_timeout: Some(new.front_timeout).filter(|v| *v != old.front_timeout),
        back_timeout: Some(new.back_timeout).filter(|v| *v != old.back_timeout),
        connect_timeout: Some(new.connect_timeout).filter(|v| *v != old.connect_timeout),
    };
    let mut patched = *old;
    patch_tcp(&mut patched, &update);
    patched.active = new.active;
    (patched == *new).then_some(update)
}

/// The HTTP patch that turns `old` into `new` (see [`udp_patch`]).
pub(super) fn http_patch(
    old: &HttpListenerConfig,
    new: &HttpListenerConfig,
) -> Option<UpdateHttpListenerConfig> {
    let mut update = UpdateHttpListenerConfig {
        address: new.address,
        ..Default::default()
    };
    http_optional_fields!(diff_optional, old, new, update);
    http_required_fields!(diff_required, old, new, update);
    if old.answers != new.answers {
        update.answers = new.answers.clone();
    }
    let mut patched = old.clone();
    patch_http(&mut patched, &update);
    patched.active = new.active;
    (patched == *new).then_some(update)
}

/// Patches the listener `update` names in `listeners` (of `kind`) with
/// `patch`, checks the result with `check` and stores it; a refused patch
/// leaves the listener as it was.
pub(super) fn update_in<C: Clone, U>(
    listeners: &mut BTreeMap<SocketAddr, C>,
    kind: ListenerKind,
    address: &SocketAddress,
    update: &U,
    patch: fn(&mut C, &U),
    check: fn(&C) -> Result<SocketAddr, StateError>,
) -> Result<(), StateError> {
    let address = validation::address("address", address)?;
    let mut patched = listeners
        .get(&address)
        .ok_or(StateError::ListenerNotFound { kind, address })?
        .clone();
    patch(&mut patched, update);
    check(&patched)?;
    listeners.insert(address, patched);
    Ok(())
}

impl ConfigState {
    /// Whether a listener of this kind exists at this address.
    pub fn has_listener(&self, kind: ListenerKind, address: &SocketAddr) -> bool {
        match kind {
            ListenerKind::Udp => self.udp_listeners.contains_key(address),
            ListenerKind::Tcp => self.tcp_listeners.contains_key(address),
            ListenerKind::Http => self.http_listeners.contains_key(address),
            ListenerKind::Https => self.https_listeners.contains_key(address),
        }
    }

    pub(super) fn refuse_duplicate(
        &self,
        kind: ListenerKind,
        address: SocketAddr,
    ) -> Result<(), StateError> {
        if self.has_listener(kind, &address) {
            return Err(StateError::DuplicateListener { kind, address });
        }
        Ok(())
    }

    pub(super) fn add_udp_listener(
        &mut self,
        config: &UdpListenerConfig,
    ) -> Result<(), StateError> {
        let address = check_udp_listener(config)?;
        self.refuse_duplicate(ListenerKind::Udp, address)?;
        self.udp_listeners.insert(address, *config);
        Ok(())
    }

    pub(super) fn add_tcp_listener(
        &mut self,
        config: &TcpListenerConfig,
    ) -> Result<(), StateError> {
        let address = check_tcp_listener(config)?;
        self.refuse_duplicate(ListenerKind::Tcp, address)?;
        self.tcp_listeners.insert(address, *config);
        Ok(())
    }

    pub(super) fn add_http_listener(
        &mut self,
        config: &HttpListenerConfig,
    ) -> Result<(), StateError> {
        let address = check_http_listener(config)?;
        self.refuse_duplicate(ListenerKind::Http, address)?;
        self.http_listeners.insert(address, config.clone());
        Ok(())
    }

    pub(super) fn update_udp_listener(
        &mut self,
        update: &UpdateUdpListenerConfig,
    ) -> Result<(), StateError> {
        update_in(
            &mut self.udp_listeners,
            ListenerKind::Udp,
            &update.address,
            update,
            patch_udp,
            check_udp_listener,
        )
    }

    pub(super) fn update_tcp_listener(
        &mut self,
        update: &UpdateTcpListenerConfig,
    ) -> Result<(), StateError> {
        update_in(
            &mut self.tcp_listeners,
            ListenerKind::Tcp,
            &update.address,
            update,
            patch_tcp,
            check_tcp_listener,
        )
    }

    pub(super) fn update_http_listener(
        &mut self,
        update: &UpdateHttpListenerConfig,
    ) -> Result<(), StateError> {
        update_in(
            &mut self.http_listeners,
            ListenerKind::Http,
            &update.address,
            update,
            patch_http,
            check_http_listener,
        )
    }

    /// Removes the listener and every frontend attached to it.
    pub(super) fn remove_listener(&mut self, order: &RemoveListener) -> Result<(), StateError> {
        let kind = ListenerKind::from_wire("proxy", order.proxy)?;
        let address = validation::address("address", &order.address)?;
        if !self.has_listener(kind, &address) {
            return Err(StateError::ListenerNotFound { kind, address });
        }
        match kind {
            ListenerKind::Udp => {
                self.udp_listeners.remove(&address);
                self.udp_frontends.remove(&address);
            }
            ListenerKind::Tcp => {
                self.tcp_listeners.remove(&address);
                self.tcp_frontends.remove(&address);
            }
            ListenerKind::Http => {
                self.http_listeners.remove(&address);
                self.http_frontends
                    .retain(|route, _| route.address != address);
            }
            ListenerKind::Https => self.remove_https_listener(address),
        }
        Ok(())
    }

    pub(super) fn activate_listener(&mut self, order: &ActivateListener) -> Result<(), StateError> {
        let kind = ListenerKind::from_wire("proxy", order.proxy)?;
        let address = validation::address("address", &order.address)?;
        self.set_active(kind, address, true)
    }

    pub(super) fn deactivate_listener(
        &mut self,
        order: &DeactivateListener,
    ) -> Result<(), StateError> {
        let kind = ListenerKind::from_wire("proxy", order.proxy)?;
        let address = validation::address("address", &order.address)?;
        self.set_active(kind, address, false)
    }

    /// Flips `active`; activating an active listener (or deactivating an
    /// inactive one) is accepted and changes nothing.
    fn set_active(
        &mut self,
        kind: ListenerKind,
        address: SocketAddr,
        active: bool,
    ) -> Result<(), StateError> {
        let flag = match kind {
            ListenerKind::Udp => self.udp_listeners.get_mut(&address).map(|l| &mut l.active),
            ListenerKind::Tcp => self.tcp_listeners.get_mut(&address).map(|l| &mut l.active),
            ListenerKind::Http => self.http_listeners.get_mut(&address).map(|l| &mut l.active),
            ListenerKind::Https => self
                .https_listeners
                .get_mut(&address)
                .map(|l| &mut l.active),
        };
        let flag = flag.ok_or(StateError::ListenerNotFound { kind, address })?;
        *flag = active;
        Ok(())
    }
}
