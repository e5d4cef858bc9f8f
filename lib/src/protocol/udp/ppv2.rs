//! PROXY protocol v2 headers for datagrams (haproxy's proxy-protocol.txt,
//! section 2.2), built inline in a fixed array: no allocation, `Copy`.
//!
//! Owns the exact bytes only; whether a datagram carries one is the
//! manager's decision. Must never allocate or panic.

use std::net::{IpAddr, SocketAddr};

/// The 12-byte v2 signature.
pub const SIGNATURE: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];
/// Version 2, command PROXY.
pub const VERSION_COMMAND_PROXY: u8 = 0x21;
/// AF_INET + SOCK_DGRAM.
pub const FAMILY_UDP4: u8 = 0x12;
/// AF_INET6 + SOCK_DGRAM.
pub const FAMILY_UDP6: u8 = 0x22;
/// AF_UNSPEC + UNSPEC: addresses of mixed families, which v2 cannot carry;
/// the receiver ignores the (absent) address block.
pub const FAMILY_UNSPEC: u8 = 0x00;

/// Longest header: 16 fixed bytes + 36 bytes of IPv6 addresses and ports.
pub const MAX_LEN: usize = 16 + 36;

/// A PROXY v2 header, sent as its own iovec before the datagram.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ProxyHeader {
    bytes: [u8; MAX_LEN],
    len: u8,
}

impl ProxyHeader {
    /// The header for a datagram from `client` to `destination` (the
    /// listener address). IPv4-mapped IPv6 addresses are unmapped first, so a
    /// dual-stack listener still sends a `0x12` header for IPv4 clients when
    /// it can; a real family mismatch yields the AF_UNSPEC form.
    pub fn new(client: SocketAddr, destination: SocketAddr) -> Self {
        let mut bytes = [0u8; MAX_LEN];
        bytes[..12].copy_from_slice(&SIGNATURE);
        bytes[12] = VERSION_COMMAND_PROXY;
        let (src_ip, dst_ip) = (client.ip().to_canonical(), destination.ip().to_canonical());
        let addr_len: usize = if let (IpAddr::V4(s), IpAddr::V4(d)) = (src_ip, dst_ip) {
            bytes[13] = FAMILY_UDP4;
            bytes[16..20].copy_from_slice(&s.octets());
            bytes[20..24].copy_from_slice(&d.octets());
            bytes[24..26].copy_from_slice(&client.port().to_be_bytes());
            bytes[26..28].copy_from_slice(&destination.port().to_be_bytes());
            12
        } else if let (IpAddr::V6(s), IpAddr::V6(d)) = (client.ip(), destination.ip()) {
            // Both given as IPv6 (possibly a mapped one beside a native one):
            // the IPv6 form with the addresses as given.
            bytes[13] = FAMILY_UDP6;
            bytes[16..32].copy_from_slice(&s.octets());
            bytes[32..48].copy_from_slice(&d.octets());
            bytes[48..50].copy_from_slice(&client.port().to_be_bytes());
            bytes[50..52].copy_from_slice(&destination.port().to_be_bytes());
            36
        } else {
            bytes[13] = FAMILY_UNSPEC;
            0
        };
        bytes[14..16].copy_from_slice(&(addr_len as u16).to_be_bytes());
        ProxyHeader {
            bytes,
            len: (16 + addr_len) as u8,
        }
    }

    /// The header's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// Its length (16, 28 or 52).
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// Never true: a header has at least its 16 fixed bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl std::fmt::Debug for ProxyHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyHeader")
            .field("family", &self.bytes[13])
            .field("len", &self.len)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv4_header_bytes_match_the_spec() {
        let h = ProxyHeader::new(addr("192.0.2.1:5353"), addr("198.51.100.7:53"));
        let expected: Vec<u8> = [
            &SIGNATURE[..],
            &[0x21, 0x12, 0x00, 0x0C],
            &[192, 0, 2, 1],
            &[198, 51, 100, 7],
            &[0x14, 0xE9], // 5353
            &[0x00, 0x35], // 53
        ]
        .concat();
        assert_eq!(h.as_bytes(), &expected[..]);
        assert_eq!(h.len(), 28);
    }

    #[test]
    fn ipv6_header_bytes_match_the_spec() {
        let h = ProxyHeader::new(addr("[2001:db8::1]:40000"), addr("[2001:db8::2]:443"));
        let mut expected = Vec::new();
        expected.extend_from_slice(&SIGNATURE);
        expected.extend_from_slice(&[0x21, 0x22, 0x00, 0x24]);
        expected.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        expected.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        expected.extend_from_slice(&[0x9C, 0x40, 0x01, 0xBB]);
        assert_eq!(h.as_bytes(), &expected[..]);
        assert_eq!(h.len(), 52);
    }

    #[test]
    fn mixed_families_use_af_unspec() {
        let h = ProxyHeader::new(addr("192.0.2.1:1"), addr("[2001:db8::2]:443"));
        let mut expected = SIGNATURE.to_vec();
        expected.extend_from_slice(&[0x21, 0x00, 0x00, 0x00]);
        assert_eq!(h.as_bytes(), &expected[..]);
        let h = ProxyHeader::new(addr("[2001:db8::1]:1"), addr("192.0.2.1:443"));
        assert_eq!(h.as_bytes(), &expected[..]);
    }

    #[test]
    fn v4_mapped_client_on_v4_listener_is_ipv4() {
        let h = ProxyHeader::new(addr("[::ffff:192.0.2.1]:7"), addr("192.0.2.9:8"));
        assert_eq!(h.as_bytes()[13], FAMILY_UDP4);
        assert_eq!(&h.as_bytes()[16..20], &[192, 0, 2, 1]);
    }
}
