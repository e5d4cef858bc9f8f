//! Parsing the PROXY protocol v2 header a UDP backend receives
//! (`DGRAM` over IPv4 `0x12` or IPv6 `0x22`), so tests can check the client
//! address sozu announces.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The 12-byte PROXY v2 signature.
pub const SIGNATURE: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];

/// What a PROXY v2 header said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyHeader {
    /// Version/command byte (`0x21`: v2, PROXY).
    pub version_command: u8,
    /// Family/transport byte (`0x12` IPv4 DGRAM, `0x22` IPv6 DGRAM).
    pub family: u8,
    /// The client's address as announced.
    pub source: SocketAddr,
    /// The address the client sent to.
    pub destination: SocketAddr,
}

/// Splits a datagram into its PROXY v2 header (if it starts with the
/// signature and parses) and the payload after it. A datagram that starts
/// with the signature but does not parse is returned whole with `None`.
pub fn split(datagram: &[u8]) -> (Option<ProxyHeader>, &[u8]) {
    match parse(datagram) {
        Some((header, len)) => (Some(header), &datagram[len..]),
        None => (None, datagram),
    }
}

fn parse(d: &[u8]) -> Option<(ProxyHeader, usize)> {
    if d.len() < 16 || d[..12] != SIGNATURE {
        return None;
    }
    let version_command = d[12];
    let family = d[13];
    let len = u16::from_be_bytes([d[14], d[15]]) as usize;
    let body = d.get(16..16 + len)?;
    let (source, destination) = match family {
        0x11 | 0x12 if body.len() >= 12 => {
            let ip = |b: &[u8]| IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]));
            let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
            (
                SocketAddr::new(ip(&body[0..4]), port(&body[8..10])),
                SocketAddr::new(ip(&body[4..8]), port(&body[10..12])),
            )
        }
        0x21 | 0x22 if body.len() >= 36 => {
            let ip = |b: &[u8]| {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(b);
                IpAddr::V6(Ipv6Addr::from(octets))
            };
            let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
            (
                SocketAddr::new(ip(&body[0..16]), port(&body[32..34])),
                SocketAddr::new(ip(&body[16..32]), port(&body[34..36])),
            )
        }
        _ => return None,
    };
    Some((
        ProxyHeader {
            version_command,
            family,
            source,
            destination,
        },
        16 + len,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_an_ipv4_dgram_header_and_returns_the_payload() {
        let mut d = SIGNATURE.to_vec();
        d.extend_from_slice(&[
            0x21, 0x12, 0, 12, 127, 0, 0, 1, 127, 0, 0, 2, 0x1F, 0x90, 0, 53,
        ]);
        d.extend_from_slice(b"hello");
        let (header, payload) = split(&d);
        let header = header.unwrap();
        assert_eq!(header.source, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(header.destination, "127.0.0.2:53".parse().unwrap());
        assert_eq!((header.version_command, header.family), (0x21, 0x12));
        assert_eq!(payload, b"hello");
    }

    #[test]
    fn a_plain_datagram_has_no_header() {
        assert_eq!(split(b"plain"), (None, &b"plain"[..]));
    }
}
