//! QUIC-LB routable connection IDs, plaintext (keyless) configuration of
//! draft-ietf-quic-load-balancers: the connection IDs a server issues carry
//! its server ID in clear, so any worker or any sozu instance routes a
//! packet to the server that owns its connection without flow-table state.
//!
//! Owns: [`QuicLbConfig`] (config rotation codepoint, server-ID and nonce
//! lengths, validated), [`ServerId`], decoding a datagram's destination
//! connection ID into a [`QuicLbRoute`], and the fallback reasons
//! ([`QuicLbFallback`]). Must never: allocate, panic on any payload, or look
//! at backends (the shell maps a server ID to a backend). Its shell side is
//! the SelectBackend arm of `crate::udp::listener`.
//!
//! Layout of a routable connection ID:
//!
//! ```text
//! First Octet { Config Rotation (3), CID Len or Random Bits (5) },
//! Server ID (server_id_len octets), Nonce (nonce_len octets), [server use]
//! ```
//!
//! Codepoint `0b111` marks a server with no configuration (always
//! unroutable). The low five bits of the first octet are ignored: they are
//! either a length self-description or random, and neither concerns a load
//! balancer.

use std::fmt;

use super::key::ConnectionId;

/// Longest server ID: 19 octets of server ID and nonce, nonce at least 4.
pub const MAX_SERVER_ID_LEN: usize = 15;
/// Shortest nonce the draft allows.
pub const MIN_NONCE_LEN: u8 = 4;
/// Server ID and nonce fit in a 20-octet connection ID after the first octet.
pub const MAX_SERVER_ID_AND_NONCE_LEN: u8 = 19;
/// The config rotation codepoint of unroutable connection IDs.
pub const UNROUTABLE_CONFIG_ID: u8 = 0b111;

/// A backend's QUIC-LB server ID (1 to 15 octets, held inline).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServerId {
    len: u8,
    bytes: [u8; MAX_SERVER_ID_LEN],
}

impl ServerId {
    /// `None` if empty or longer than 15 octets.
    pub fn new(id: &[u8]) -> Option<Self> {
        if id.is_empty() || id.len() > MAX_SERVER_ID_LEN {
            return None;
        }
        let mut bytes = [0u8; MAX_SERVER_ID_LEN];
        bytes[..id.len()].copy_from_slice(id);
        Some(ServerId {
            len: id.len() as u8,
            bytes,
        })
    }

    /// Parses hex digits (`"0a1b"`, an even count, 1 to 15 octets).
    pub fn from_hex(text: &str) -> Option<Self> {
        let text = text.as_bytes();
        if !text.len().is_multiple_of(2) || text.len() > 2 * MAX_SERVER_ID_LEN {
            return None;
        }
        let mut bytes = [0u8; MAX_SERVER_ID_LEN];
        for (i, pair) in text.chunks_exact(2).enumerate() {
            bytes[i] = (hex_digit(pair[0])? << 4) | hex_digit(pair[1])?;
        }
        Self::new(&bytes[..text.len() / 2])
    }

    /// The id's octets.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl fmt::Display for ServerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.as_bytes() {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ServerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServerId({self})")
    }
}

/// A QUIC-LB configuration that cannot be used, naming the field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{field} = {value}: {reason}")]
pub struct QuicLbConfigError {
    /// The configuration key (as in `[clusters.<id>.udp]`).
    pub field: &'static str,
    /// The refused value.
    pub value: u32,
    /// Why.
    pub reason: &'static str,
}

/// One cluster's QUIC-LB configuration (plaintext algorithm).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct QuicLbConfig {
    config_id: u8,
    server_id_len: u8,
    nonce_len: u8,
}

impl QuicLbConfig {
    /// Checks a configuration against the draft's limits and the cluster's
    /// short-header connection-ID length `cid_len`: config ID 0 to 6 (7 is
    /// the unroutable codepoint), server ID at least 1 octet, nonce at least
    /// 4, both at most 19 together, and `1 + server ID + nonce` at most
    /// `cid_len` (the rest of a longer ID is the server's own use).
    /// `nonce_len` `None` takes what `cid_len` leaves.
    pub fn new(
        config_id: u32,
        server_id_len: u32,
        nonce_len: Option<u32>,
        cid_len: u8,
    ) -> Result<Self, QuicLbConfigError> {
        let err = |field, value, reason| {
            Err(QuicLbConfigError {
                field,
                value,
                reason,
            })
        };
        if config_id >= u32::from(UNROUTABLE_CONFIG_ID) {
            return err(
                "quic_lb_config_id",
                config_id,
                "a config rotation codepoint is 0 to 6 (7 marks unroutable ids)",
            );
        }
        if !(1..=MAX_SERVER_ID_LEN as u32).contains(&server_id_len) {
            return err(
                "quic_lb_server_id_length",
                server_id_len,
                "a server id is 1 to 15 octets",
            );
        }
        let room = u32::from(cid_len).saturating_sub(1 + server_id_len);
        let nonce = nonce_len.unwrap_or(room);
        if nonce < u32::from(MIN_NONCE_LEN) {
            return err(
                "quic_lb_nonce_length",
                nonce,
                "the nonce is at least 4 octets (raise quic_cid_length or shorten the server id)",
            );
        }
        if server_id_len + nonce > u32::from(MAX_SERVER_ID_AND_NONCE_LEN) {
            return err(
                "quic_lb_nonce_length",
                nonce,
                "server id and nonce are at most 19 octets together",
            );
        }
        if 1 + server_id_len + nonce > u32::from(cid_len) {
            return err(
                "quic_lb_nonce_length",
                nonce,
                "1 + server id + nonce must fit in quic_cid_length",
            );
        }
        Ok(QuicLbConfig {
            config_id: config_id as u8,
            server_id_len: server_id_len as u8,
            nonce_len: nonce as u8,
        })
    }

    /// The config rotation codepoint (0 to 6).
    pub fn config_id(&self) -> u8 {
        self.config_id
    }

    /// Octets of server ID.
    pub fn server_id_len(&self) -> u8 {
        self.server_id_len
    }

    /// Octets of nonce.
    pub fn nonce_len(&self) -> u8 {
        self.nonce_len
    }

    /// Reads the server ID of a destination connection ID.
    pub fn decode(&self, cid: &[u8]) -> Result<ServerId, QuicLbFallback> {
        let first = *cid.first().ok_or(QuicLbFallback::TooShort)?;
        let codepoint = first >> 5;
        if codepoint == UNROUTABLE_CONFIG_ID {
            return Err(QuicLbFallback::Unroutable);
        }
        if codepoint != self.config_id {
            return Err(QuicLbFallback::ConfigMismatch);
        }
        cid.get(1..1 + usize::from(self.server_id_len))
            .and_then(ServerId::new)
            .ok_or(QuicLbFallback::TooShort)
    }

    /// Where a client datagram that opens a new flow should go. Its
    /// destination connection ID is read as RFC 8999 lays it out for every
    /// QUIC version: after the first octet for a short header
    /// (`short_header_cid_len` octets), after the version and a length
    /// octet for a long header. A client-chosen Initial DCID that happens
    /// to decode is routed like any other, as the draft asks: any server
    /// accepts a new connection, and the whole handshake stays on one flow.
    pub fn route(&self, payload: &[u8], short_header_cid_len: u8) -> QuicLbRoute {
        let Some(&first) = payload.first() else {
            return QuicLbRoute::Fallback(QuicLbFallback::TooShort);
        };
        let dcid = if first & 0x80 == 0 {
            payload.get(1..1 + usize::from(short_header_cid_len))
        } else {
            // Long header: first octet, version (4), DCID length (1), DCID.
            payload.get(5).and_then(|&len| {
                let len = usize::from(len);
                payload.get(6..6 + len)
            })
        };
        match dcid.map(|dcid| self.decode(dcid)) {
            Some(Ok(server)) => QuicLbRoute::ServerId(server),
            Some(Err(reason)) => QuicLbRoute::Fallback(reason),
            None => QuicLbRoute::Fallback(QuicLbFallback::TooShort),
        }
    }

    /// A connection ID in this configuration: the first octet (config
    /// rotation and the self-described length), `server`, `nonce`.
    /// `None` if the lengths do not match the configuration.
    pub fn encode(&self, server: &ServerId, nonce: &[u8]) -> Option<ConnectionId> {
        if server.as_bytes().len() != usize::from(self.server_id_len)
            || nonce.len() != usize::from(self.nonce_len)
        {
            return None;
        }
        let len = 1 + server.as_bytes().len() + nonce.len();
        let mut cid = [0u8; 20];
        cid[0] = (self.config_id << 5) | ((len - 1) as u8 & 0x1f);
        cid[1..1 + server.as_bytes().len()].copy_from_slice(server.as_bytes());
        cid[1 + server.as_bytes().len()..len].copy_from_slice(nonce);
        ConnectionId::new(&cid[..len])
    }
}

/// How a new flow of a QUIC-LB cluster is placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuicLbRoute {
    /// To the backend with this server ID (if the cluster has one that is
    /// not down; otherwise the shell falls back).
    ServerId(ServerId),
    /// By the cluster's load-balancing policy, for this reason.
    Fallback(QuicLbFallback),
}

/// Why a new flow of a QUIC-LB cluster was placed by the cluster's policy
/// instead of by server ID (`udp.quic_lb.fallback.<reason>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuicLbFallback {
    /// The destination connection ID is missing or shorter than first octet
    /// plus server ID.
    TooShort,
    /// Its config rotation bits name another configuration (a client-chosen
    /// Initial DCID, or a server on another configuration).
    ConfigMismatch,
    /// Config rotation `0b111`: a server without configuration.
    Unroutable,
    /// No backend of the cluster has that server ID (set by the shell).
    UnknownServerId,
    /// The backend with that server ID is down (set by the shell).
    ServerDown,
}

impl QuicLbFallback {
    /// A stable lower-case name for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            QuicLbFallback::TooShort => "too_short",
            QuicLbFallback::ConfigMismatch => "config_mismatch",
            QuicLbFallback::Unroutable => "unroutable",
            QuicLbFallback::UnknownServerId => "unknown_server_id",
            QuicLbFallback::ServerDown => "server_down",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::{QuickCheck, TestResult};

    fn config(id: u32, sid: u32, nonce: u32) -> QuicLbConfig {
        QuicLbConfig::new(id, sid, Some(nonce), 20).expect("valid config")
    }

    #[test]
    fn config_limits_name_the_field() {
        let e = QuicLbConfig::new(7, 2, None, 8).unwrap_err();
        assert_eq!((e.field, e.value), ("quic_lb_config_id", 7));
        let e = QuicLbConfig::new(0, 0, None, 8).unwrap_err();
        assert_eq!(e.field, "quic_lb_server_id_length");
        let e = QuicLbConfig::new(0, 16, None, 20).unwrap_err();
        assert_eq!((e.field, e.value), ("quic_lb_server_id_length", 16));
        // 8-octet ids leave 5 octets of nonce after a 2-octet server id.
        let c = QuicLbConfig::new(1, 2, None, 8).unwrap();
        assert_eq!((c.config_id(), c.server_id_len(), c.nonce_len()), (1, 2, 5));
        // Too little room for a 4-octet nonce.
        let e = QuicLbConfig::new(0, 4, None, 8).unwrap_err();
        assert_eq!((e.field, e.value), ("quic_lb_nonce_length", 3));
        let e = QuicLbConfig::new(0, 2, Some(3), 20).unwrap_err();
        assert_eq!(e.field, "quic_lb_nonce_length");
        // An explicit nonce must fit the connection id.
        let e = QuicLbConfig::new(0, 2, Some(6), 8).unwrap_err();
        assert_eq!((e.field, e.value), ("quic_lb_nonce_length", 6));
        // A shorter nonce leaves server-use octets: fine.
        assert!(QuicLbConfig::new(0, 2, Some(4), 8).is_ok());
        let e = QuicLbConfig::new(0, 15, Some(5), 20).unwrap_err();
        assert!(e.to_string().contains("19"), "{e}");
    }

    #[test]
    fn server_id_hex_round_trips_and_refuses_junk() {
        let id = ServerId::from_hex("0A1b").unwrap();
        assert_eq!(id.as_bytes(), &[0x0a, 0x1b]);
        assert_eq!(id.to_string(), "0a1b");
        for bad in ["", "0", "0g", "zz", &"00".repeat(16), "0a1"] {
            assert_eq!(ServerId::from_hex(bad), None, "{bad:?}");
        }
        assert!(ServerId::from_hex(&"ff".repeat(15)).is_some());
    }

    #[test]
    fn short_header_routes_by_server_id() {
        let c = QuicLbConfig::new(2, 2, None, 8).unwrap();
        let sid = ServerId::new(&[0xbe, 0xef]).unwrap();
        let cid = c.encode(&sid, &[1, 2, 3, 4, 5]).unwrap();
        assert_eq!(cid.as_bytes()[0] >> 5, 2);
        assert_eq!(cid.as_bytes()[0] & 0x1f, 7, "self-described length - 1");
        let mut pkt = vec![0x41];
        pkt.extend_from_slice(cid.as_bytes());
        pkt.extend_from_slice(&[0xaa; 20]);
        assert_eq!(c.route(&pkt, 8), QuicLbRoute::ServerId(sid));
    }

    #[test]
    fn long_header_reads_the_dcid_after_its_length() {
        let c = QuicLbConfig::new(0, 1, None, 8).unwrap();
        // Handshake packet (type 2), version 1, DCID of 8 naming server 0x07.
        let mut pkt = vec![0xe0, 0, 0, 0, 1, 8, 0x07, 0x07, 9, 9, 9, 9, 9, 9, 4];
        pkt.extend_from_slice(&[0; 12]);
        assert_eq!(
            c.route(&pkt, 8),
            QuicLbRoute::ServerId(ServerId::new(&[0x07]).unwrap())
        );
        // A client Initial with a random DCID whose rotation bits differ.
        let initial = [0xc0, 0, 0, 0, 1, 8, 0xa0, 1, 2, 3, 4, 5, 6, 7, 0];
        assert_eq!(
            c.route(&initial, 8),
            QuicLbRoute::Fallback(QuicLbFallback::ConfigMismatch)
        );
        // Truncated long headers never panic.
        for n in 0..7 {
            assert_eq!(
                c.route(&pkt[..n], 8),
                QuicLbRoute::Fallback(QuicLbFallback::TooShort)
            );
        }
        // A zero-length DCID (a client on its own CIDs) cannot be decoded.
        assert_eq!(
            c.route(&[0xe0, 0, 0, 0, 1, 0, 0], 8),
            QuicLbRoute::Fallback(QuicLbFallback::TooShort)
        );
    }

    #[test]
    fn unroutable_codepoint_and_short_ids_fall_back() {
        let c = config(0, 3, 4);
        assert_eq!(
            c.decode(&[0xe0, 1, 2, 3, 4, 5, 6, 7]),
            Err(QuicLbFallback::Unroutable)
        );
        assert_eq!(c.decode(&[0x00, 1, 2]), Err(QuicLbFallback::TooShort));
        assert_eq!(c.decode(&[]), Err(QuicLbFallback::TooShort));
        assert_eq!(
            c.route(&[], 8),
            QuicLbRoute::Fallback(QuicLbFallback::TooShort)
        );
        assert_eq!(
            c.route(&[0x40, 0, 1], 8),
            QuicLbRoute::Fallback(QuicLbFallback::TooShort)
        );
    }

    #[test]
    fn encode_refuses_lengths_off_the_configuration() {
        let c = config(0, 2, 4);
        let sid = ServerId::new(&[1]).unwrap();
        assert_eq!(c.encode(&sid, &[0; 4]), None);
        let sid = ServerId::new(&[1, 2]).unwrap();
        assert_eq!(c.encode(&sid, &[0; 5]), None);
        assert!(c.encode(&sid, &[0; 4]).is_some());
    }

    /// Arbitrary valid configurations, server ids and nonces.
    fn arbitrary_case(
        id: u8,
        sid_len: u8,
        nonce_len: u8,
        seed: Vec<u8>,
    ) -> Option<(QuicLbConfig, ServerId, Vec<u8>)> {
        let sid_len = 1 + u32::from(sid_len) % 15;
        let nonce_len = 4 + u32::from(nonce_len) % (20 - sid_len - 4).max(1);
        let c = QuicLbConfig::new(u32::from(id % 7), sid_len, Some(nonce_len), 20).ok()?;
        let bytes: Vec<u8> = (0..sid_len as usize)
            .map(|i| seed.get(i).copied().unwrap_or(i as u8))
            .collect();
        let nonce: Vec<u8> = (0..nonce_len as usize)
            .map(|i| seed.get(i + 7).copied().unwrap_or(0x5a))
            .collect();
        Some((c, ServerId::new(&bytes)?, nonce))
    }

    #[test]
    fn quickcheck_encode_decode_round_trip() {
        fn prop(id: u8, sid_len: u8, nonce_len: u8, seed: Vec<u8>, long: bool) -> TestResult {
            let Some((c, sid, nonce)) = arbitrary_case(id, sid_len, nonce_len, seed) else {
                return TestResult::discard();
            };
            let cid = c.encode(&sid, &nonce).expect("lengths match");
            if c.decode(cid.as_bytes()) != Ok(sid) {
                return TestResult::failed();
            }
            // The same through a packet header, short or long.
            let cid_len = cid.as_bytes().len() as u8;
            let mut pkt = if long {
                vec![0xc0, 0, 0, 0, 1, cid_len]
            } else {
                vec![0x40]
            };
            pkt.extend_from_slice(cid.as_bytes());
            pkt.push(0);
            TestResult::from_bool(c.route(&pkt, cid_len) == QuicLbRoute::ServerId(sid))
        }
        QuickCheck::new()
            .tests(500)
            .quickcheck(prop as fn(u8, u8, u8, Vec<u8>, bool) -> TestResult);
    }

    #[test]
    fn quickcheck_wrong_rotation_bits_are_never_routed_by_id() {
        fn prop(id: u8, other: u8, payload: Vec<u8>, cid_len: u8) -> TestResult {
            let Ok(c) = QuicLbConfig::new(u32::from(id % 7), 1, None, 20) else {
                return TestResult::discard();
            };
            let other = other % 8;
            if other == c.config_id() || payload.is_empty() {
                return TestResult::discard();
            }
            let mut payload = payload;
            let cid_len = 1 + cid_len % 20;
            // Whatever the header form, put `other` on the DCID's first octet.
            if payload[0] & 0x80 == 0 {
                if let Some(b) = payload.get_mut(1) {
                    *b = (other << 5) | (*b & 0x1f);
                }
            } else if let Some(b) = payload.get_mut(6) {
                *b = (other << 5) | (*b & 0x1f);
            }
            TestResult::from_bool(!matches!(
                c.route(&payload, cid_len),
                QuicLbRoute::ServerId(_)
            ))
        }
        QuickCheck::new()
            .tests(1000)
            .quickcheck(prop as fn(u8, u8, Vec<u8>, u8) -> TestResult);
    }
}
