//! Field checks shared by the per-kind modules: addresses, ids, enums.
//!
//! Pure functions from a wire value to a checked value or a [`StateError`]
//! naming the field; they never touch the state.

use std::net::{IpAddr, SocketAddr};

use crate::command::SocketAddress;
use crate::state::StateError;

/// A wire address that must be a usable socket address with a non-zero port
/// (a listener on port 0 would bind a different port in every worker, a
/// backend on port 0 cannot be reached).
pub(super) fn address(field: &'static str, wire: &SocketAddress) -> Result<SocketAddr, StateError> {
    let addr = SocketAddr::try_from(wire).map_err(|source| StateError::InvalidAddress {
        field,
        value: describe(wire),
        source,
    })?;
    if addr.port() == 0 {
        return Err(StateError::InvalidValue {
            field,
            value: addr.to_string(),
            reason: "port 0 is not a usable port",
        });
    }
    Ok(addr)
}

/// A wire address as an operator would write it, even when it is not a
/// valid socket address (`127.0.0.1:70000`, `<no ip>:53`).
fn describe(wire: &SocketAddress) -> String {
    match IpAddr::try_from(&wire.ip) {
        Ok(IpAddr::V4(ip)) => format!("{ip}:{}", wire.port),
        Ok(IpAddr::V6(ip)) => format!("[{ip}]:{}", wire.port),
        Err(_) => format!("<no ip>:{}", wire.port),
    }
}

/// An optional address (e.g. `public_address`): checked when present.
pub(super) fn optional_address(
    field: &'static str,
    wire: Option<&SocketAddress>,
) -> Result<Option<SocketAddr>, StateError> {
    wire.map(|w| address(field, w)).transpose()
}

/// A listener's `address` (the bound address, returned) and its optional
/// `public_address`, checked in that order: the same rule for every
/// listener kind.
pub(super) fn listener_address(
    address: &SocketAddress,
    public_address: Option<&SocketAddress>,
) -> Result<SocketAddr, StateError> {
    let bound = self::address("address", address)?;
    optional_address("public_address", public_address)?;
    Ok(bound)
}

/// Ids (cluster, backend) are non-empty and free of control characters so they
/// print on one line in logs and answers.
pub(super) fn id(field: &'static str, value: &str) -> Result<(), StateError> {
    if value.is_empty() {
        return Err(StateError::InvalidValue {
            field,
            value: "\"\"".to_owned(),
            reason: "must not be empty",
        });
    }
    if value.chars().any(char::is_control) {
        return Err(StateError::InvalidValue {
            field,
            value: format!("{value:?}"),
            reason: "must not contain control characters",
        });
    }
    Ok(())
}

/// A wire enum field (`i32`) must name a known variant of `E`.
pub(super) fn known_enum<E: TryFrom<i32>>(
    field: &'static str,
    value: i32,
) -> Result<(), StateError> {
    E::try_from(value)
        .map(|_| ())
        .map_err(|_| StateError::InvalidValue {
            field,
            value: value.to_string(),
            reason: "not a known variant",
        })
}

/// An optional wire enum field: checked when present.
pub(super) fn optional_enum<E: TryFrom<i32>>(
    field: &'static str,
    value: Option<i32>,
) -> Result<(), StateError> {
    value.map_or(Ok(()), |v| known_enum::<E>(field, v))
}

/// A port number carried as `u32` (not part of a `SocketAddress`).
pub(super) fn port(field: &'static str, value: u32) -> Result<(), StateError> {
    if value == 0 || value > u32::from(u16::MAX) {
        return Err(StateError::InvalidValue {
            field,
            value: value.to_string(),
            reason: "a port must be in 1..=65535",
        });
    }
    Ok(())
}
