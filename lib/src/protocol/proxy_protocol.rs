//! PROXY protocol headers on streams (haproxy's proxy-protocol.txt): the v2
//! header a TCP or HTTP session sends to its backend, and the v1 / v2 header
//! a listener with `expect_proxy` reads from its client.
//!
//! Owns the bytes only: whether a header is sent or expected is the proxy's
//! decision. The v2 encoding reuses the datagram encoder of the UDP core
//! ([`crate::protocol::udp::ProxyHeader`]): the address block is identical
//! for streams, only the transport nibble of the family byte differs
//! (STREAM = 1 instead of DGRAM = 2). Parsing never panics and never reads
//! past a bounded length, whatever the peer sends.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::protocol::udp::proxy_protocol::{FAMILY_UNSPEC, MAX_LEN, SIGNATURE};
use crate::protocol::udp::ProxyHeader;

/// Longest v1 header, CRLF included (the spec's bound).
pub const V1_MAX_LEN: usize = 107;
/// Longest v2 header accepted from a client (16 fixed bytes plus addresses
/// and TLVs): a client sending more is refused rather than buffered.
pub const V2_MAX_ACCEPTED_LEN: usize = 2048;

/// A PROXY v2 header for a stream, built inline: no allocation.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct StreamProxyHeader {
    bytes: [u8; MAX_LEN],
    len: u8,
}

impl StreamProxyHeader {
    /// The v2 header for a connection from `client` to `destination` (the
    /// listener address): family `0x11` (TCP over IPv4), `0x21` (TCP over
    /// IPv6), or AF_UNSPEC for mixed families.
    pub fn new(client: SocketAddr, destination: SocketAddr) -> Self {
        let datagram = ProxyHeader::new(client, destination);
        let mut bytes = [0u8; MAX_LEN];
        let len = datagram.len();
        bytes[..len].copy_from_slice(datagram.as_bytes());
        if bytes[13] != FAMILY_UNSPEC {
            // Keep the address family (high nibble), set SOCK_STREAM.
            bytes[13] = (bytes[13] & 0xF0) | 0x01;
        }
        StreamProxyHeader {
            bytes,
            len: len as u8,
        }
    }

    /// The header's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// What a received header said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceivedHeader {
    /// Its length in bytes (strip that many from the stream).
    pub len: usize,
    /// The original client, if the header carries addresses (`None` for
    /// v2 LOCAL, v1 UNKNOWN, or a family we do not know).
    pub source: Option<SocketAddr>,
    /// The original destination, likewise.
    pub destination: Option<SocketAddr>,
    /// 1 or 2.
    pub version: u8,
}

/// Why a client's header was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProxyHeaderError {
    /// The stream starts with neither the v1 `PROXY ` nor the v2 signature.
    #[error("no PROXY protocol header")]
    Missing,
    /// A v1 line longer than the spec allows or not ending in CRLF.
    #[error("PROXY v1 line too long")]
    V1TooLong,
    /// A v1 line that does not parse.
    #[error("malformed PROXY v1 line")]
    V1Malformed,
    /// A v2 header with an unknown version or command.
    #[error("PROXY v2 version/command byte {0:#04x} unknown")]
    V2Version(u8),
    /// A v2 header announcing more bytes than we accept.
    #[error("PROXY v2 header of {0} bytes is too long")]
    V2TooLong(usize),
    /// A v2 address block shorter than its family needs.
    #[error("PROXY v2 address block too short for family {0:#04x}")]
    V2Truncated(u8),
}

/// Parses a header at the start of `input`. `Ok(None)`: not enough bytes
/// yet (read more, up to [`V2_MAX_ACCEPTED_LEN`]).
pub fn parse(input: &[u8]) -> Result<Option<ReceivedHeader>, ProxyHeaderError> {
    let v1_prefix = b"PROXY ";
    let sig_len = input.len().min(SIGNATURE.len());
    if input[..sig_len] == SIGNATURE[..sig_len] {
        if input.len() < 16 {
            return Ok(None);
        }
        return parse_v2(input);
    }
    let prefix_len = input.len().min(v1_prefix.len());
    if input[..prefix_len] == v1_prefix[..prefix_len] {
        if input.len() < v1_prefix.len() {
            return Ok(None);
        }
        return parse_v1(input);
    }
    Err(ProxyHeaderError::Missing)
}

fn parse_v1(input: &[u8]) -> Result<Option<ReceivedHeader>, ProxyHeaderError> {
    let window = &input[..input.len().min(V1_MAX_LEN)];
    let Some(cr) = window.iter().position(|&b| b == b'\r') else {
        return if input.len() >= V1_MAX_LEN {
            Err(ProxyHeaderError::V1TooLong)
        } else {
            Ok(None)
        };
    };
    match input.get(cr + 1) {
        None => return Ok(None),
        Some(b'\n') => {}
        Some(_) => return Err(ProxyHeaderError::V1Malformed),
    }
    let line = std::str::from_utf8(&input[..cr]).map_err(|_| ProxyHeaderError::V1Malformed)?;
    let mut words = line.split(' ');
    let _proxy = words.next();
    let len = cr + 2;
    let (source, destination) = match words.next() {
        Some("UNKNOWN") => (None, None),
        Some(family @ ("TCP4" | "TCP6")) => {
            let fields: Vec<&str> = words.collect();
            let [src, dst, sport, dport] = fields[..] else {
                return Err(ProxyHeaderError::V1Malformed);
            };
            let parse_ip = |s: &str| -> Result<IpAddr, ProxyHeaderError> {
                let ip: IpAddr = s.parse().map_err(|_| ProxyHeaderError::V1Malformed)?;
                match (family, ip) {
                    ("TCP4", IpAddr::V4(_)) | ("TCP6", IpAddr::V6(_)) => Ok(ip),
                    _ => Err(ProxyHeaderError::V1Malformed),
                }
            };
            let parse_port = |s: &str| s.parse::<u16>().map_err(|_| ProxyHeaderError::V1Malformed);
            (
                Some(SocketAddr::new(parse_ip(src)?, parse_port(sport)?)),
                Some(SocketAddr::new(parse_ip(dst)?, parse_port(dport)?)),
            )
        }
        _ => return Err(ProxyHeaderError::V1Malformed),
    };
    Ok(Some(ReceivedHeader {
        len,
        source,
        destination,
        version: 1,
    }))
}

fn parse_v2(input: &[u8]) -> Result<Option<ReceivedHeader>, ProxyHeaderError> {
    let version_command = input[12];
    let family = input[13];
    let addr_len = usize::from(u16::from_be_bytes([input[14], input[15]]));
    let len = 16 + addr_len;
    if len > V2_MAX_ACCEPTED_LEN {
        return Err(ProxyHeaderError::V2TooLong(len));
    }
    let local = match version_command {
        0x20 => true,
        0x21 => false,
        other => return Err(ProxyHeaderError::V2Version(other)),
    };
    if input.len() < len {
        return Ok(None);
    }
    let block = &input[16..len];
    let (source, destination) = if local {
        (None, None)
    } else {
        match family >> 4 {
            0x1 => {
                let Some(a) = block.get(..12) else {
                    return Err(ProxyHeaderError::V2Truncated(family));
                };
                let ip = |o: usize| IpAddr::V4(Ipv4Addr::new(a[o], a[o + 1], a[o + 2], a[o + 3]));
                let port = |o: usize| u16::from_be_bytes([a[o], a[o + 1]]);
                (
                    Some(SocketAddr::new(ip(0), port(8))),
                    Some(SocketAddr::new(ip(4), port(10))),
                )
            }
            0x2 => {
                let Some(a) = block.get(..36) else {
                    return Err(ProxyHeaderError::V2Truncated(family));
                };
                let ip = |o: usize| {
                    let mut octets = [0u8; 16];
                    octets.copy_from_slice(&a[o..o + 16]);
                    IpAddr::V6(Ipv6Addr::from(octets))
                };
                let port = |o: usize| u16::from_be_bytes([a[o], a[o + 1]]);
                (
                    Some(SocketAddr::new(ip(0), port(32))),
                    Some(SocketAddr::new(ip(16), port(34))),
                )
            }
            // AF_UNSPEC or AF_UNIX: no address we can use.
            _ => (None, None),
        }
    };
    Ok(Some(ReceivedHeader {
        len,
        source,
        destination,
        version: 2,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn stream_v2_header_uses_the_stream_families() {
        let h = StreamProxyHeader::new(addr("192.0.2.1:5353"), addr("198.51.100.7:80"));
        let b = h.as_bytes();
        assert_eq!(&b[..12], &SIGNATURE);
        assert_eq!(&b[12..16], &[0x21, 0x11, 0x00, 0x0C]);
        assert_eq!(&b[16..20], &[192, 0, 2, 1]);
        assert_eq!(&b[24..28], &[0x14, 0xE9, 0x00, 0x50]);
        let h6 = StreamProxyHeader::new(addr("[2001:db8::1]:1"), addr("[2001:db8::2]:2"));
        assert_eq!(h6.as_bytes()[13], 0x21);
        assert_eq!(h6.as_bytes().len(), 52);
        let mixed = StreamProxyHeader::new(addr("192.0.2.1:1"), addr("[2001:db8::2]:2"));
        assert_eq!(mixed.as_bytes()[13], 0x00);
    }

    #[test]
    fn our_v2_header_parses_back() {
        let h = StreamProxyHeader::new(addr("192.0.2.1:5353"), addr("198.51.100.7:80"));
        let mut stream = h.as_bytes().to_vec();
        stream.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let parsed = parse(&stream).unwrap().unwrap();
        assert_eq!(parsed.len, 28);
        assert_eq!(parsed.source, Some(addr("192.0.2.1:5353")));
        assert_eq!(parsed.destination, Some(addr("198.51.100.7:80")));
        let h6 = StreamProxyHeader::new(addr("[2001:db8::1]:7"), addr("[2001:db8::2]:8"));
        let parsed = parse(h6.as_bytes()).unwrap().unwrap();
        assert_eq!(parsed.source, Some(addr("[2001:db8::1]:7")));
        assert_eq!(parsed.version, 2);
    }

    #[test]
    fn v1_lines_parse_and_report_their_length() {
        let line = b"PROXY TCP4 192.0.2.1 198.51.100.7 40000 443\r\nhello";
        let parsed = parse(line).unwrap().unwrap();
        assert_eq!(parsed.len, line.len() - 5);
        assert_eq!(parsed.source, Some(addr("192.0.2.1:40000")));
        assert_eq!(parsed.destination, Some(addr("198.51.100.7:443")));
        let six = b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n";
        assert_eq!(
            parse(six).unwrap().unwrap().source,
            Some(addr("[2001:db8::1]:1"))
        );
        let unknown = b"PROXY UNKNOWN whatever\r\n";
        assert_eq!(parse(unknown).unwrap().unwrap().source, None);
    }

    #[test]
    fn partial_headers_ask_for_more() {
        assert_eq!(parse(b"PRO"), Ok(None));
        assert_eq!(parse(b"PROXY TCP4 1.2.3.4"), Ok(None));
        assert_eq!(parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r"), Ok(None));
        assert_eq!(parse(&SIGNATURE[..5]), Ok(None));
        let h = StreamProxyHeader::new(addr("192.0.2.1:1"), addr("192.0.2.2:2"));
        assert_eq!(parse(&h.as_bytes()[..20]), Ok(None));
    }

    #[test]
    fn garbage_is_refused_not_buffered() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(ProxyHeaderError::Missing));
        assert_eq!(
            parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n"),
            Err(ProxyHeaderError::V1Malformed)
        );
        assert_eq!(
            parse(b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n"),
            Err(ProxyHeaderError::V1Malformed)
        );
        assert_eq!(
            parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n"),
            Err(ProxyHeaderError::V1Malformed)
        );
        let long = [b'A'; 200];
        let mut line = b"PROXY ".to_vec();
        line.extend_from_slice(&long);
        assert_eq!(parse(&line), Err(ProxyHeaderError::V1TooLong));
        let mut v2 = SIGNATURE.to_vec();
        v2.extend_from_slice(&[0x21, 0x11, 0xFF, 0xFF]);
        assert_eq!(parse(&v2), Err(ProxyHeaderError::V2TooLong(16 + 0xFFFF)));
        let mut v2 = SIGNATURE.to_vec();
        v2.extend_from_slice(&[0x31, 0x11, 0x00, 0x0C]);
        assert_eq!(parse(&v2), Err(ProxyHeaderError::V2Version(0x31)));
        let mut v2 = SIGNATURE.to_vec();
        v2.extend_from_slice(&[0x21, 0x11, 0x00, 0x04, 1, 2, 3, 4]);
        assert_eq!(parse(&v2), Err(ProxyHeaderError::V2Truncated(0x11)));
    }

    /// Whatever a client sends first, parsing answers without panicking
    /// and never claims more bytes than it was given.
    #[test]
    fn arbitrary_bytes_never_panic_the_parser() {
        use quickcheck::{QuickCheck, TestResult};
        fn prop(kind: u8, noise: Vec<u8>) -> TestResult {
            let mut input = match kind % 3 {
                0 => b"PROXY ".to_vec(),
                1 => SIGNATURE.to_vec(),
                _ => Vec::new(),
            };
            input.extend_from_slice(&noise);
            match parse(&input) {
                Ok(Some(h)) if h.len > input.len() => TestResult::failed(),
                _ => TestResult::passed(),
            }
        }
        QuickCheck::new()
            .tests(2000)
            .quickcheck(prop as fn(u8, Vec<u8>) -> TestResult);
    }

    #[test]
    fn v2_local_carries_no_address() {
        let mut v2 = SIGNATURE.to_vec();
        v2.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
        let parsed = parse(&v2).unwrap().unwrap();
        assert_eq!(parsed.len, 16);
        assert_eq!(parsed.source, None);
    }
}
