//! Conversions between wire types and the Rust types the rest of sozu uses.
//!
//! The wire says "0 = unlimited" and carries addresses as integers; inside
//! sozu an address is a [`SocketAddr`] and "unlimited" is `None`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;

use super::command::{ip_address, IpAddress, SocketAddress, Uint128};

/// A wire address that cannot be a socket address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// Neither an IPv4 nor an IPv6 address is set.
    #[error("address has no IP")]
    MissingIp,
    /// The port does not fit in 16 bits.
    #[error("port {0} is out of range (0..=65535)")]
    PortOutOfRange(u32),
}

/// An order's address field that cannot be a socket address, naming the
/// field: what a worker answers for it (UDP, TCP and HTTP alike).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: invalid address")]
pub struct FieldAddressError {
    /// The order's field (`address`, `public_address`…).
    pub field: &'static str,
    /// Why it is not an address.
    #[source]
    pub source: AddressError,
}

/// An order's address field as a socket address, or an error naming the
/// field. The one conversion every worker-side order handler uses.
pub fn wire_address(
    field: &'static str,
    wire: &SocketAddress,
) -> Result<SocketAddr, FieldAddressError> {
    SocketAddr::try_from(wire).map_err(|source| FieldAddressError { field, source })
}

impl From<SocketAddr> for SocketAddress {
    fn from(addr: SocketAddr) -> Self {
        SocketAddress {
            ip: IpAddress::from(addr.ip()),
            port: u32::from(addr.port()),
        }
    }
}

impl From<IpAddr> for IpAddress {
    fn from(ip: IpAddr) -> Self {
        let inner = match ip {
            IpAddr::V4(v4) => ip_address::Inner::V4(u32::from(v4)),
            IpAddr::V6(v6) => {
                let bits = u128::from(v6);
                ip_address::Inner::V6(Uint128 {
                    low: bits as u64,
                    high: (bits >> 64) as u64,
                })
            }
        };
        IpAddress { inner: Some(inner) }
    }
}

impl TryFrom<&IpAddress> for IpAddr {
    type Error = AddressError;

    fn try_from(ip: &IpAddress) -> Result<Self, Self::Error> {
        match &ip.inner {
            Some(ip_address::Inner::V4(v4)) => Ok(IpAddr::V4(Ipv4Addr::from(*v4))),
            Some(ip_address::Inner::V6(v6)) => {
                let bits = (u128::from(v6.high) << 64) | u128::from(v6.low);
                Ok(IpAddr::V6(Ipv6Addr::from(bits)))
            }
            None => Err(AddressError::MissingIp),
        }
    }
}

impl TryFrom<&SocketAddress> for SocketAddr {
    type Error = AddressError;

    fn try_from(addr: &SocketAddress) -> Result<Self, Self::Error> {
        let ip = IpAddr::try_from(&addr.ip)?;
        let port = u16::try_from(addr.port).map_err(|_| AddressError::PortOutOfRange(addr.port))?;
        Ok(SocketAddr::new(ip, port))
    }
}

impl TryFrom<SocketAddress> for SocketAddr {
    type Error = AddressError;

    fn try_from(addr: SocketAddress) -> Result<Self, Self::Error> {
        SocketAddr::try_from(&addr)
    }
}

impl std::fmt::Display for SocketAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match SocketAddr::try_from(self) {
            Ok(addr) => write!(f, "{addr}"),
            Err(e) => write!(f, "<invalid address: {e}>"),
        }
    }
}

/// The wire's "0 = unlimited" as `None`.
pub fn limit_from_wire(value: Option<u32>) -> Option<NonZeroU32> {
    value.and_then(NonZeroU32::new)
}

/// `None` ("unlimited") back to the wire's 0.
pub fn limit_to_wire(limit: Option<NonZeroU32>) -> u32 {
    limit.map_or(0, NonZeroU32::get)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_addresses_round_trip_v4_and_v6() {
        for text in [
            "127.0.0.1:53",
            "[::1]:4433",
            "[2001:db8::1:2]:65535",
            "0.0.0.0:0",
        ] {
            let addr: SocketAddr = text.parse().unwrap();
            let wire = SocketAddress::from(addr);
            assert_eq!(SocketAddr::try_from(&wire), Ok(addr));
        }
    }

    #[test]
    fn out_of_range_port_is_refused() {
        let mut wire = SocketAddress::from("127.0.0.1:1".parse::<SocketAddr>().unwrap());
        wire.port = 70_000;
        assert_eq!(
            SocketAddr::try_from(&wire),
            Err(AddressError::PortOutOfRange(70_000))
        );
    }

    #[test]
    fn a_bad_address_field_is_named_with_its_cause() {
        let mut wire = SocketAddress::from("127.0.0.1:1".parse::<SocketAddr>().unwrap());
        wire.port = 70_000;
        let error = wire_address("public_address", &wire).unwrap_err();
        assert_eq!(error.field, "public_address");
        assert_eq!(error.source, AddressError::PortOutOfRange(70_000));
        assert_eq!(error.to_string(), "public_address: invalid address");
        let cause = std::error::Error::source(&error).map(ToString::to_string);
        assert_eq!(
            cause.as_deref(),
            Some("port 70000 is out of range (0..=65535)")
        );
    }

    #[test]
    fn zero_means_unlimited() {
        assert_eq!(limit_from_wire(Some(0)), None);
        assert_eq!(limit_from_wire(None), None);
        assert_eq!(limit_from_wire(Some(3)), NonZeroU32::new(3));
        assert_eq!(limit_to_wire(None), 0);
    }
}
