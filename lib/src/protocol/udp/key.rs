//! Flow keys, the extractors that derive them from a datagram, and the seeded
//! hashing used for the flow table and the affinity hash.
//!
//! Owns: [`FlowKey`], [`FlowKeyExtractor`] with the source-address default and
//! a QUIC connection-ID extractor, [`SeededHasher`], [`affinity_hash`].
//! Must never: read randomness (the seed is injected), allocate, or panic on
//! any payload.

use std::{
    hash::{BuildHasher, Hash, Hasher},
    net::{IpAddr, SocketAddr},
};

use super::types::AffinityKey;

/// Longest QUIC connection ID (RFC 9000 §17.2: at most 20 bytes).
pub const MAX_CONNECTION_ID_LEN: usize = 20;

/// A QUIC connection ID held inline (no allocation).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId {
    len: u8,
    bytes: [u8; MAX_CONNECTION_ID_LEN],
}

impl ConnectionId {
    /// `None` if longer than 20 bytes.
    pub fn new(id: &[u8]) -> Option<Self> {
        if id.len() > MAX_CONNECTION_ID_LEN {
            return None;
        }
        let mut bytes = [0u8; MAX_CONNECTION_ID_LEN];
        bytes[..id.len()].copy_from_slice(id);
        Some(ConnectionId {
            len: id.len() as u8,
            bytes,
        })
    }

    /// The id's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl std::fmt::Debug for ConnectionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConnectionId(")?;
        for b in self.as_bytes() {
            write!(f, "{b:02x}")?;
        }
        f.write_str(")")
    }
}

/// What identifies a flow in the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FlowKey {
    /// The client's full source address (IP and port): the NAT key, so
    /// replies always return to the port that sent the request.
    Source(SocketAddr),
    /// A QUIC destination connection ID: the flow survives client migration
    /// (replies go to the latest source address).
    ConnectionId(ConnectionId),
}

/// Derives the flow key of a client datagram. Returning `None` rejects the
/// datagram (dropped `Invalid`). Must not allocate or panic on any input.
pub trait FlowKeyExtractor {
    /// The key for a datagram from `src` carrying `payload`.
    fn flow_key(&self, src: SocketAddr, payload: &[u8]) -> Option<FlowKey>;
}

/// The default: the client's full source address; rejects empty datagrams.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SourceAddressExtractor;

impl FlowKeyExtractor for SourceAddressExtractor {
    fn flow_key(&self, src: SocketAddr, payload: &[u8]) -> Option<FlowKey> {
        if payload.is_empty() {
            return None;
        }
        Some(FlowKey::Source(src))
    }
}

/// Keys QUIC datagrams by destination connection ID so a migrating client
/// keeps its flow (and backend and upstream socket).
///
/// * Short-header packets (header form bit 0x80 clear, RFC 9000 §17.3) carry
///   the connection ID the backend issued; its length is not on the wire, so
///   it is configured (`short_header_cid_len`, as QUIC-LB deployments do).
///   They are keyed by that ID: a client whose address changes (NAT
///   rebinding, migration) stays on its flow, and replies follow its latest
///   address. The fixed bit (0x40) is not checked: peers that negotiated
///   `grease_quic_bit` (RFC 9287, quinn's default) clear it at random.
/// * Long-header packets (0x80 set: Initial, 0-RTT, Handshake, Retry,
///   Version Negotiation, §17.2) are keyed by source address: their DCID is
///   client-chosen at first and changes after the first round trip, while
///   servers drop handshake packets from a second address and clients must
///   not migrate before the handshake is confirmed (§9), so the address
///   keeps the whole handshake on one flow (one upstream port).
/// * A short-header datagram shorter than `1 + short_header_cid_len` bytes,
///   and an empty datagram, are not QUIC: rejected (dropped `Invalid`).
///
/// The manager joins the first connection ID seen from an address to that
/// address's flow (the handshake's), so one connection is one flow and one
/// upstream socket. A client switching to a new connection ID (as RFC 9000
/// §9.5 asks on an active migration) starts a new flow, placed by the
/// source-address affinity hash like the handshake was.
/// Replies follow the latest source address seen with the ID, so an on-path
/// observer who copies a connection ID can redirect replies (QUIC payloads
/// stay encrypted; the backend's path validation sees the new path).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuicConnectionIdExtractor {
    /// Length of the connection IDs the backends issue (1..=20).
    pub short_header_cid_len: u8,
}

impl FlowKeyExtractor for QuicConnectionIdExtractor {
    fn flow_key(&self, src: SocketAddr, payload: &[u8]) -> Option<FlowKey> {
        let first = *payload.first()?;
        if first & 0x80 != 0 {
            // Long header: the handshake stays on the client's address.
            return Some(FlowKey::Source(src));
        }
        let len = usize::from(self.short_header_cid_len);
        let cid = payload.get(1..1 + len).and_then(ConnectionId::new)?;
        if cid.as_bytes().is_empty() {
            return None;
        }
        Some(FlowKey::ConnectionId(cid))
    }
}

/// Folded 64×64→128 multiply: the mixing step of the seeded hasher.
#[inline]
fn folded_multiply(a: u64, b: u64) -> u64 {
    let full = u128::from(a) * u128::from(b);
    (full as u64) ^ ((full >> 64) as u64)
}

const MULTIPLIER: u64 = 0x5851_f42d_4c95_7f2d;

/// A fast keyed hasher for the flow table. Its key comes from the injected
/// seed, so an attacker who spoofs source addresses cannot precompute
/// colliding keys without knowing it, and runs are reproducible.
#[derive(Debug, Clone, Copy)]
pub struct SeededHasher {
    state: u64,
    key: u64,
}

impl Hasher for SeededHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            // Mark the length so "ab" and "ab\0" differ.
            self.write_u64(u64::from_le_bytes(word) ^ ((rest.len() as u64) << 59));
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.write_u64(u64::from(i));
    }

    #[inline]
    fn write_u16(&mut self, i: u16) {
        self.write_u64(u64::from(i));
    }

    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.write_u64(u64::from(i));
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.state = folded_multiply(self.state ^ i, MULTIPLIER ^ self.key);
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        folded_multiply(self.state, self.key.rotate_left(23) | 1)
    }
}

/// Builds [`SeededHasher`]s from one seed.
#[derive(Debug, Clone, Copy)]
pub struct SeededState {
    key: u64,
}

impl SeededState {
    /// Derives the hasher key from `seed` (split so the table and the
    /// affinity hash use different keys).
    pub fn new(seed: u64) -> Self {
        SeededState {
            key: splitmix64(seed),
        }
    }
}

impl BuildHasher for SeededState {
    type Hasher = SeededHasher;

    #[inline]
    fn build_hasher(&self) -> SeededHasher {
        SeededHasher {
            state: self.key,
            key: self.key,
        }
    }
}

pub(crate) use crate::protocol::hash::splitmix64;

/// The default key of the affinity hash (`hash_seed`): fixed, so every
/// worker, every restart and upgrade, and every sozu instance with the same
/// configuration map a client to the same backend. Overridable by the global
/// `hash_seed` configuration key (a fleet sets the same value everywhere).
pub const DEFAULT_HASH_SEED: u64 = 0x736f_7a75_2d61_6666;

/// The affinity hash of a client: seeded, over the IP (`SourceIp`) or the IP
/// and port (`SourceIpPort`). IPv4-mapped IPv6 addresses hash as IPv4, so a
/// dual-stack listener gives one client one hash.
pub fn affinity_hash(seed: u64, key: AffinityKey, client: SocketAddr) -> u64 {
    let mut hasher = SeededState::new(seed ^ 0xa5a5_5a5a_0f0f_f0f0).build_hasher();
    match client.ip().to_canonical() {
        IpAddr::V4(ip) => {
            hasher.write_u8(4);
            hasher.write_u32(u32::from(ip));
        }
        IpAddr::V6(ip) => {
            hasher.write_u8(6);
            ip.octets().hash(&mut hasher);
        }
    }
    if key == AffinityKey::SourceIpPort {
        hasher.write_u16(client.port());
    }
    splitmix64(hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn source_extractor_rejects_empty_and_keys_full_address() {
        let x = SourceAddressExtractor;
        assert_eq!(x.flow_key(addr("1.2.3.4:5"), b""), None);
        assert_eq!(
            x.flow_key(addr("1.2.3.4:5"), b"x"),
            Some(FlowKey::Source(addr("1.2.3.4:5")))
        );
    }

    #[test]
    fn affinity_source_ip_ignores_port_and_ip_port_does_not() {
        let a = addr("10.0.0.1:1000");
        let b = addr("10.0.0.1:2000");
        assert_eq!(
            affinity_hash(7, AffinityKey::SourceIp, a),
            affinity_hash(7, AffinityKey::SourceIp, b)
        );
        assert_ne!(
            affinity_hash(7, AffinityKey::SourceIpPort, a),
            affinity_hash(7, AffinityKey::SourceIpPort, b)
        );
        assert_ne!(
            affinity_hash(7, AffinityKey::SourceIp, a),
            affinity_hash(8, AffinityKey::SourceIp, a),
            "the seed changes the hash"
        );
    }

    #[test]
    fn affinity_treats_v4_mapped_as_v4() {
        assert_eq!(
            affinity_hash(1, AffinityKey::SourceIp, addr("10.0.0.1:1")),
            affinity_hash(1, AffinityKey::SourceIp, addr("[::ffff:10.0.0.1]:1"))
        );
    }

    fn quic(len: u8) -> QuicConnectionIdExtractor {
        QuicConnectionIdExtractor {
            short_header_cid_len: len,
        }
    }

    #[test]
    fn quic_long_header_keys_by_source_address() {
        let x = quic(4);
        let src = addr("1.1.1.1:1");
        // Initial (type 0) with DCID aa bb cc: keyed by address whatever the DCID.
        let initial = [0xc0, 0, 0, 0, 1, 3, 0xaa, 0xbb, 0xcc, 0];
        assert_eq!(x.flow_key(src, &initial), Some(FlowKey::Source(src)));
        // Handshake (type 2) with the server-chosen DCID: the same flow.
        let handshake = [0xe0, 0, 0, 0, 1, 4, 1, 2, 3, 4, 0];
        assert_eq!(x.flow_key(src, &handshake), Some(FlowKey::Source(src)));
        // Greased fixed bit on a long header: still the address.
        assert_eq!(
            x.flow_key(src, &[0x80, 0, 0, 0, 1]),
            Some(FlowKey::Source(src))
        );
        // Truncated long header: still the address, never a panic.
        assert_eq!(x.flow_key(src, &[0xc0]), Some(FlowKey::Source(src)));
    }

    #[test]
    fn quic_version_negotiation_keys_by_source_address() {
        // Version 0 marks Version Negotiation (RFC 9000 §17.2.1).
        let x = quic(8);
        let src = addr("[2001:db8::1]:4433");
        let vn = [0x80, 0, 0, 0, 0, 1, 9, 1, 7, 0, 0, 0, 1];
        assert_eq!(x.flow_key(src, &vn), Some(FlowKey::Source(src)));
    }

    #[test]
    fn quic_short_header_uses_configured_len() {
        let x = quic(2);
        let pkt = [0x40, 9, 8, 7, 6];
        let key = FlowKey::ConnectionId(ConnectionId::new(&[9, 8]).unwrap());
        assert_eq!(x.flow_key(addr("1.1.1.1:1"), &pkt), Some(key));
        // Same connection from a new address: same key.
        assert_eq!(x.flow_key(addr("2.2.2.2:2"), &pkt), Some(key));
        // Greased fixed bit (RFC 9287): still the connection id.
        assert_eq!(x.flow_key(addr("2.2.2.2:2"), &[0x00, 9, 8, 1]), Some(key));
        // A different configured length reads a different id.
        let eight = quic(8);
        let pkt = [0x5f, 1, 2, 3, 4, 5, 6, 7, 8, 0xee, 0xee];
        assert_eq!(
            eight.flow_key(addr("1.1.1.1:1"), &pkt),
            Some(FlowKey::ConnectionId(
                ConnectionId::new(&[1, 2, 3, 4, 5, 6, 7, 8]).unwrap()
            ))
        );
        // The maximum length (20) reads up to the 21st byte.
        let pkt: Vec<u8> = (0..21u8).collect();
        assert_eq!(
            quic(20).flow_key(addr("1.1.1.1:1"), &pkt),
            Some(FlowKey::ConnectionId(ConnectionId::new(&pkt[1..]).unwrap()))
        );
    }

    #[test]
    fn quic_too_short_or_empty_is_rejected() {
        let x = quic(8);
        let src = addr("1.1.1.1:1");
        assert_eq!(x.flow_key(src, &[]), None);
        // A short header with fewer than 8 CID bytes is not QUIC.
        assert_eq!(x.flow_key(src, &[0x40, 1, 2, 3, 4, 5, 6, 7]), None);
        assert_eq!(x.flow_key(src, &[0x40]), None);
        // A configured length of 0 (refused by configuration) never keys.
        assert_eq!(quic(0).flow_key(src, &[0x40, 1, 2]), None);
        // Longer than 20 (refused by configuration) never panics.
        assert_eq!(quic(21).flow_key(src, &[0x40; 30]), None);
    }
}
