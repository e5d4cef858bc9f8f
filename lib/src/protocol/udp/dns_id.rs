//! DNS query-ID multiplexing (`flow_key = "DNS_ID"`): the pure core that
//! lets many clients' queries share a few connected upstream sockets per
//! backend, as dnsdist does.
//!
//! Owns, per upstream socket (named by the shell's slot number), the table
//! of pending queries: the 16-bit ID the proxy put on the wire ↦ the
//! client's address, the original ID, the local address the client sent to,
//! a keyed hash of the question and a deadline. A query gets a fresh
//! **unpredictable** ID (a keyed SipHash of a counter, keyed from the
//! injected seed: DNS cache-poisoning defence, RFC 5452 §9.2) never pending
//! on that socket; an answer is matched by (socket, ID) and its question,
//! gets its original ID back, and goes to the client that asked — only that
//! one, only once. Memory is bounded: at most `max_pending_per_socket`
//! queries per socket (the shell opens another socket or drops, counted),
//! and the expiry heap is compacted so it never holds more than about twice
//! the live entries.
//!
//! Each socket also carries its backend's [`PendingQueries`] count, shared
//! with the balancer (LEAST_LOADED and POWER_OF_TWO weigh a backend by it):
//! this file is the only place that moves it, one up when a query becomes
//! pending, one down when it stops being pending whatever the way (answered,
//! late, expired, cancelled, its socket closed or reopened, the mux
//! dropped), so the count is exactly the backend's pending queries and
//! returns to 0 when none is left.
//!
//! Must never touch a socket, read a clock (`now` comes in), draw
//! randomness (the seed is injected) or allocate per query once the tables
//! have grown to their working size. Its shell twin is `crate::udp::dns_mux`
//! (the sockets, the balancing, the metrics). The manager's part (a client
//! datagram of a `DNS_ID` cluster becomes [`ClientDecision::DnsQuery`]) is at
//! the end of this file.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::{
    key::{affinity_hash, splitmix64, FlowKeyExtractor},
    manager::UdpFlowManager,
    ppv2::ProxyHeader,
    types::{ClientDecision, ClusterConfig, DropReason},
};

/// The fixed DNS header length (RFC 1035 §4.1.1): anything shorter is not
/// DNS.
pub const DNS_HEADER_LEN: usize = 12;

/// Most queries pending on one upstream socket by default: a quarter of the
/// ID space, so a random ID is free at the first draw three times in four.
pub const DEFAULT_MAX_PENDING_PER_SOCKET: usize = 16_384;

/// The largest `max_pending_per_socket` accepted: half the ID space (beyond,
/// drawing a free random ID gets slow and the IDs predictable).
pub const MAX_PENDING_PER_SOCKET: usize = 32_768;

/// Random draws before the allocator scans for a free ID (only reachable
/// with a table over half full, which [`MAX_PENDING_PER_SOCKET`] forbids).
const DRAWS: usize = 32;

/// The number of `DNS_ID` queries waiting for an answer from one backend,
/// over every listener of a worker: the backend's load for LEAST_LOADED and
/// POWER_OF_TWO (a `DNS_ID` cluster has no flows to count).
///
/// A handle: the backend's entry in the balancer holds one, and every mux
/// socket carrying that backend's queries another; a clone is one more
/// handle on the same count. Only [`DnsIdMux`] moves it. (An atomic only so
/// that a worker stays `Send`: each count is used by one thread.)
#[derive(Debug, Clone, Default)]
pub struct PendingQueries(Arc<AtomicU64>);

impl PendingQueries {
    /// A new count at 0.
    pub fn new() -> Self {
        PendingQueries::default()
    }

    /// Queries pending now.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Whether `other` is a handle on the same count.
    pub fn is_same(&self, other: &PendingQueries) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    fn add(&self, n: usize) {
        self.0.fetch_add(n as u64, Ordering::Relaxed);
    }

    fn sub(&self, n: usize) {
        let before = self.0.fetch_sub(n as u64, Ordering::Relaxed);
        debug_assert!(before >= n as u64, "pending-query count released below 0");
    }
}

/// Why a query or an answer was not carried (each is counted by the shell
/// under `udp.datagrams.dropped.<as_str>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DnsDrop {
    /// Shorter than a DNS header (12 bytes), or a query with the QR bit set
    /// (a response sent to the proxy), or an answer with it clear.
    NotDns,
    /// The socket already has `max_pending_per_socket` queries pending (the
    /// shell tries another socket of the backend first).
    PendingFull,
    /// An answer whose ID is pending on no query of that socket: a
    /// duplicate, an answer to an expired query, or a wrong ID.
    UnknownId,
    /// An answer whose ID is pending but whose question differs from the
    /// query's (a spoofed or confused answer): the query stays pending.
    Mismatch,
    /// An answer arriving after its query's deadline (the query ends here,
    /// before the timer saw it).
    Late,
    /// A query that got no answer before its deadline.
    Expired,
    /// A query pending on a socket that closed (backend removed or changed,
    /// listener closed): it can get no answer.
    SocketClosed,
}

impl DnsDrop {
    /// The metric suffix (`udp.datagrams.dropped.dns_*`).
    pub fn as_str(self) -> &'static str {
        match self {
            DnsDrop::NotDns => "dns_not_dns",
            DnsDrop::PendingFull => "dns_pending_full",
            DnsDrop::UnknownId => "dns_unknown_id",
            DnsDrop::Mismatch => "dns_mismatch",
            DnsDrop::Late => "dns_late",
            DnsDrop::Expired => "dns_expired",
            DnsDrop::SocketClosed => "dns_socket_closed",
        }
    }
}

/// The verdict on a client query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryDecision {
    /// The payload's ID was rewritten to `id` (pending on the socket): send
    /// the payload on that socket.
    Forward {
        /// The ID now on the wire.
        id: u16,
    },
    /// Not sent.
    Dropped(DnsDrop),
}

/// The verdict on a backend answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerDecision {
    /// The payload's ID was restored: send it to `client` through the
    /// listener socket (from `local` on a wildcard listener).
    Return {
        /// The client that asked.
        client: SocketAddr,
        /// The address the client sent its query to (packet info).
        local: Option<IpAddr>,
    },
    /// Not delivered.
    Dropped(DnsDrop),
}

/// One pending query.
#[derive(Debug, Clone, Copy)]
struct Pending {
    client: SocketAddr,
    local: Option<IpAddr>,
    original_id: u16,
    /// Keyed hash of the question section (`None`: none readable, any
    /// answer's question is accepted).
    question: Option<u64>,
    deadline: Instant,
    /// Unique per query for the mux's life: ties an expiry entry to it.
    seq: u64,
}

/// Hashes a `u16` ID: a multiply spreads it over the high bits the table
/// uses for its control bytes (an identity hash would put every ID in one
/// group).
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8 | u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u16(&mut self, i: u16) {
        self.0 = u64::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type IdTable = HashMap<u16, Pending, BuildHasherDefault<IdHasher>>;

/// The pending queries of one socket.
#[derive(Debug, Default)]
struct SocketTable {
    /// Its backend's count while the socket is open (`None`: closed).
    load: Option<PendingQueries>,
    pending: IdTable,
}

impl SocketTable {
    fn is_open(&self) -> bool {
        self.load.is_some()
    }

    /// Records a pending query (its ID is free): one more on the backend.
    fn insert(&mut self, id: u16, query: Pending) {
        if let Some(load) = &self.load {
            load.add(1);
        }
        let previous = self.pending.insert(id, query);
        debug_assert!(previous.is_none(), "an ID handed out while pending");
    }

    /// Ends a pending query: one less on the backend.
    fn remove(&mut self, id: u16) -> Option<Pending> {
        let query = self.pending.remove(&id)?;
        if let Some(load) = &self.load {
            load.sub(1);
        }
        Some(query)
    }

    /// Ends every pending query; returns how many.
    fn clear(&mut self) -> usize {
        let n = self.pending.len();
        self.pending.clear();
        if let Some(load) = &self.load {
            load.sub(n);
        }
        n
    }
}

/// An expiry entry: lazily invalidated (the query may be answered first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Expiry {
    deadline: Instant,
    seq: u64,
    slot: usize,
    id: u16,
}

/// The pending-query tables of one listener's DNS sockets.
#[derive(Debug)]
pub struct DnsIdMux {
    sockets: Vec<SocketTable>,
    expiry: BinaryHeap<Reverse<Expiry>>,
    max_pending_per_socket: usize,
    live: usize,
    next_seq: u64,
    /// SipHash keys of the ID generator and of the question hash.
    id_key: (u64, u64),
    question_key: (u64, u64),
    counter: u64,
}

impl DnsIdMux {
    /// An empty mux. `seed` must be secret and random per process in
    /// production (the IDs on the wire derive from it); a fixed one in
    /// tests. `max_pending_per_socket` is clamped to
    /// [`MAX_PENDING_PER_SOCKET`].
    pub fn new(seed: u64, max_pending_per_socket: NonZeroUsize) -> Self {
        let k = |n: u64| splitmix64(seed ^ n.wrapping_mul(0x5851_f42d_4c95_7f2d));
        DnsIdMux {
            sockets: Vec::new(),
            expiry: BinaryHeap::new(),
            max_pending_per_socket: max_pending_per_socket.get().min(MAX_PENDING_PER_SOCKET),
            live: 0,
            next_seq: 0,
            id_key: (k(1), k(2)),
            question_key: (k(3), k(4)),
            counter: 0,
        }
    }

    /// Most queries pending on one socket.
    pub fn max_pending_per_socket(&self) -> usize {
        self.max_pending_per_socket
    }

    /// Queries pending over every socket.
    pub fn pending(&self) -> usize {
        self.live
    }

    /// Queries pending on the socket at `slot` (0 if it is not open).
    pub fn pending_on(&self, slot: usize) -> usize {
        self.sockets
            .get(slot)
            .filter(|t| t.is_open())
            .map_or(0, |t| t.pending.len())
    }

    /// Whether the socket at `slot` is open and can take one more query.
    pub fn has_room(&self, slot: usize) -> bool {
        self.sockets
            .get(slot)
            .is_some_and(|t| t.is_open() && t.pending.len() < self.max_pending_per_socket)
    }

    /// The shell opened a socket at `slot` to a backend whose pending
    /// queries `load` counts: it starts with no pending query (a slot still
    /// open is reset, its queries released from its former backend's count
    /// and counted by the return value as [`DnsDrop::SocketClosed`]).
    pub fn open_socket(&mut self, slot: usize, load: PendingQueries) -> usize {
        let dropped = self.forget(slot);
        if self.sockets.len() <= slot {
            self.sockets.resize_with(slot + 1, SocketTable::default);
        }
        let table = &mut self.sockets[slot];
        table.load = Some(load);
        // Room for a burst up front (it grows to the cap at most), and for
        // its expiry entries (at most about twice the live ones).
        let burst = self.max_pending_per_socket.min(1024);
        table.pending.reserve(burst);
        let heap_room = (2 * (self.live + burst) + 64).saturating_sub(self.expiry.len());
        self.expiry.reserve(heap_room);
        self.finish_mutation();
        dropped
    }

    /// The shell closed the socket at `slot`: its pending queries can get no
    /// answer. Returns how many (each a [`DnsDrop::SocketClosed`]).
    pub fn close_socket(&mut self, slot: usize) -> usize {
        let dropped = self.forget(slot);
        if let Some(table) = self.sockets.get_mut(slot) {
            table.load = None;
            // Release the memory of a socket that will not come back soon.
            table.pending = IdTable::default();
        }
        self.finish_mutation();
        dropped
    }

    fn forget(&mut self, slot: usize) -> usize {
        let Some(table) = self.sockets.get_mut(slot) else {
            return 0;
        };
        let n = table.clear();
        self.live -= n;
        // Their expiry entries are stale now (no pending entry): popped
        // lazily or compacted.
        n
    }

    /// A client query (`payload`, from `client`, sent to `local`) to send on
    /// the socket at `slot`, unanswered after `deadline`. On `Forward` the
    /// payload's ID was rewritten in place.
    pub fn on_query(
        &mut self,
        slot: usize,
        deadline: Instant,
        client: SocketAddr,
        local: Option<IpAddr>,
        payload: &mut [u8],
    ) -> QueryDecision {
        let decision = self.query(slot, deadline, client, local, payload);
        self.finish_mutation();
        decision
    }

    fn query(
        &mut self,
        slot: usize,
        deadline: Instant,
        client: SocketAddr,
        local: Option<IpAddr>,
        payload: &mut [u8],
    ) -> QueryDecision {
        if payload.len() < DNS_HEADER_LEN || is_response(payload) {
            return QueryDecision::Dropped(DnsDrop::NotDns);
        }
        if !self.has_room(slot) {
            return QueryDecision::Dropped(DnsDrop::PendingFull);
        }
        let question = question_hash(self.question_key, payload);
        let id = self.free_id(slot);
        let seq = self.next_seq;
        self.next_seq += 1;
        let original_id = u16::from_be_bytes([payload[0], payload[1]]);
        self.sockets[slot].insert(
            id,
            Pending {
                client,
                local,
                original_id,
                question,
                deadline,
                seq,
            },
        );
        self.live += 1;
        self.expiry.push(Reverse(Expiry {
            deadline,
            seq,
            slot,
            id,
        }));
        payload[..2].copy_from_slice(&id.to_be_bytes());
        QueryDecision::Forward { id }
    }

    /// A random ID not pending on the socket at `slot` (which has room).
    fn free_id(&mut self, slot: usize) -> u16 {
        let table = &self.sockets[slot].pending;
        let mut last = 0;
        for _ in 0..DRAWS {
            self.counter = self.counter.wrapping_add(1);
            let r = siphash13(self.id_key, self.counter);
            // Four IDs per draw: each 16-bit lane in turn.
            for lane in 0..4 {
                let id = (r >> (16 * lane)) as u16;
                if !table.contains_key(&id) {
                    return id;
                }
                last = id;
            }
        }
        // Unreachable below half full (2^-128); kept total anyway.
        let mut id = last;
        while table.contains_key(&id) {
            id = id.wrapping_add(1);
        }
        id
    }

    /// Frees the ID of a query routed to `slot` that could not be sent (the
    /// shell counts that drop): no answer can come, no drop is counted
    /// here (the backend's pending count is released).
    pub fn cancel(&mut self, slot: usize, id: u16) {
        if let Some(table) = self.sockets.get_mut(slot) {
            if table.remove(id).is_some() {
                self.live -= 1;
            }
        }
        self.finish_mutation();
    }

    /// A backend answer read on the socket at `slot` at `now`. On `Return`
    /// the payload's ID was restored in place and the query is answered:
    /// a second answer with the same ID is [`DnsDrop::UnknownId`].
    pub fn on_answer(&mut self, now: Instant, slot: usize, payload: &mut [u8]) -> AnswerDecision {
        let decision = self.answer(now, slot, payload);
        self.finish_mutation();
        decision
    }

    fn answer(&mut self, now: Instant, slot: usize, payload: &mut [u8]) -> AnswerDecision {
        if payload.len() < DNS_HEADER_LEN || !is_response(payload) {
            return AnswerDecision::Dropped(DnsDrop::NotDns);
        }
        let id = u16::from_be_bytes([payload[0], payload[1]]);
        let Some(table) = self.sockets.get_mut(slot).filter(|t| t.is_open()) else {
            return AnswerDecision::Dropped(DnsDrop::UnknownId);
        };
        let Some(pending) = table.pending.get(&id).copied() else {
            return AnswerDecision::Dropped(DnsDrop::UnknownId);
        };
        if pending.deadline <= now {
            table.remove(id);
            self.live -= 1;
            return AnswerDecision::Dropped(DnsDrop::Late);
        }
        if let Some(asked) = pending.question {
            match question_hash(self.question_key, payload) {
                Some(got) if got == asked => {}
                // An error answer may carry no question (FORMERR, NOTIMP).
                None if qdcount(payload) == 0 && rcode(payload) != 0 => {}
                _ => return AnswerDecision::Dropped(DnsDrop::Mismatch),
            }
        }
        table.remove(id);
        self.live -= 1;
        payload[..2].copy_from_slice(&pending.original_id.to_be_bytes());
        AnswerDecision::Return {
            client: pending.client,
            local: pending.local,
        }
    }

    /// The earliest deadline of a pending query (it may have been answered
    /// since: a wake-up then expires nothing).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.expiry.peek().map(|Reverse(e)| e.deadline)
    }

    /// Expires every query due at `now`, calling `expired(slot)` once per
    /// expired query (each a [`DnsDrop::Expired`]); returns how many. After
    /// it, [`Self::poll_timeout`] is strictly later than `now` (or none).
    pub fn handle_timeout(&mut self, now: Instant, mut expired: impl FnMut(usize)) -> usize {
        let mut count = 0;
        while let Some(Reverse(e)) = self.expiry.peek().copied() {
            if e.deadline > now {
                break;
            }
            self.expiry.pop();
            let Some(table) = self.sockets.get_mut(e.slot) else {
                continue;
            };
            if table.pending.get(&e.id).is_some_and(|p| p.seq == e.seq) {
                table.remove(e.id);
                self.live -= 1;
                count += 1;
                expired(e.slot);
            }
        }
        self.finish_mutation();
        count
    }

    /// Drops stale expiry entries once they outnumber the live ones (in
    /// place: no allocation), so the heap stays within about twice the
    /// pending queries.
    fn compact(&mut self) {
        if self.expiry.len() <= 2 * self.live + 64 {
            return;
        }
        let sockets = &self.sockets;
        self.expiry.retain(|Reverse(e)| {
            sockets
                .get(e.slot)
                .and_then(|t| t.pending.get(&e.id))
                .is_some_and(|p| p.seq == e.seq)
        });
    }

    /// Compacts the expiry heap when due, then checks the invariants
    /// (debug builds): the end of every public mutator.
    fn finish_mutation(&mut self) {
        self.compact();
        #[cfg(debug_assertions)]
        self.check_invariants();
    }

    /// Counts agree, no table over its cap, closed sockets hold nothing,
    /// and (when small enough to check on every call) every pending query
    /// has its expiry entry and the heap is bounded.
    #[cfg(debug_assertions)]
    fn check_invariants(&self) {
        let total: usize = self.sockets.iter().map(|t| t.pending.len()).sum();
        assert_eq!(total, self.live, "live count matches the tables");
        for t in &self.sockets {
            assert!(t.pending.len() <= self.max_pending_per_socket, "cap");
            assert!(
                t.is_open() || t.pending.is_empty(),
                "closed sockets hold nothing"
            );
            if let Some(load) = &t.load {
                // Other sockets (of this mux or another listener's) may
                // share the count: it is at least this socket's part.
                assert!(
                    load.get() >= t.pending.len() as u64,
                    "the backend's count covers the socket's pending queries"
                );
            }
        }
        assert!(
            self.expiry.len() <= 2 * self.live + 65,
            "expiry heap bounded by the live queries"
        );
        if self.live <= 256 && self.expiry.len() <= 1024 {
            for (slot, t) in self.sockets.iter().enumerate() {
                for (&id, p) in &t.pending {
                    assert!(
                        self.expiry
                            .iter()
                            .any(|Reverse(e)| e.slot == slot && e.id == id && e.seq == p.seq),
                        "every pending query has its expiry entry"
                    );
                }
            }
        }
    }
}

impl Drop for DnsIdMux {
    /// A mux dropped with queries pending (its listener gone) releases them
    /// from their backends' counts: a backend that outlives the listener
    /// must not look loaded forever.
    fn drop(&mut self) {
        for table in &mut self.sockets {
            table.clear();
        }
    }
}

/// QR bit (RFC 1035 §4.1.1): set on responses.
fn is_response(payload: &[u8]) -> bool {
    payload[2] & 0x80 != 0
}

fn qdcount(payload: &[u8]) -> u16 {
    u16::from_be_bytes([payload[4], payload[5]])
}

fn rcode(payload: &[u8]) -> u8 {
    payload[3] & 0x0f
}

/// The end of the first question (name, type, class) when QDCOUNT ≥ 1 and
/// it is well formed and uncompressed; `None` otherwise.
pub(crate) fn question_end(payload: &[u8]) -> Option<usize> {
    if payload.len() < DNS_HEADER_LEN || qdcount(payload) == 0 {
        return None;
    }
    let mut at = DNS_HEADER_LEN;
    let mut name_len = 0usize;
    loop {
        let len = usize::from(*payload.get(at)?);
        at += 1;
        if len == 0 {
            break;
        }
        // A compression pointer (or a reserved label type) cannot start
        // the first name of a message.
        if len & 0xc0 != 0 {
            return None;
        }
        name_len += len + 1;
        if name_len > 255 {
            return None;
        }
        at += len;
    }
    let end = at + 4;
    (end <= payload.len()).then_some(end)
}

fn question_hash(key: (u64, u64), payload: &[u8]) -> Option<u64> {
    let end = question_end(payload)?;
    let mut h = SipHasher13::new(key);
    h.write(&payload[DNS_HEADER_LEN..end]);
    Some(h.finish())
}

fn siphash13(key: (u64, u64), n: u64) -> u64 {
    let mut h = SipHasher13::new(key);
    h.write(&n.to_le_bytes());
    h.finish()
}

/// SipHash-1-3 (Aumasson & Bernstein), a keyed PRF: without the key, its
/// outputs (the IDs on the wire) cannot be predicted from earlier ones.
struct SipHasher13 {
    v: [u64; 4],
    tail: u64,
    ntail: usize,
    length: usize,
}

impl SipHasher13 {
    fn new((k0, k1): (u64, u64)) -> Self {
        SipHasher13 {
            v: [
                k0 ^ 0x736f_6d65_7073_6575,
                k1 ^ 0x646f_7261_6e64_6f6d,
                k0 ^ 0x6c79_6765_6e65_7261,
                k1 ^ 0x7465_6462_7974_6573,
            ],
            tail: 0,
            ntail: 0,
            length: 0,
        }
    }

    fn round(&mut self) {
        let v = &mut self.v;
        v[0] = v[0].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(13) ^ v[0];
        v[0] = v[0].rotate_left(32);
        v[2] = v[2].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(16) ^ v[2];
        v[0] = v[0].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(21) ^ v[0];
        v[2] = v[2].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(17) ^ v[2];
        v[2] = v[2].rotate_left(32);
    }

    fn compress(&mut self, m: u64) {
        self.v[3] ^= m;
        self.round();
        self.v[0] ^= m;
    }

    fn write(&mut self, bytes: &[u8]) {
        self.length += bytes.len();
        for &b in bytes {
            self.tail |= u64::from(b) << (8 * self.ntail);
            self.ntail += 1;
            if self.ntail == 8 {
                let m = self.tail;
                self.compress(m);
                self.tail = 0;
                self.ntail = 0;
            }
        }
    }

    fn finish(mut self) -> u64 {
        let b = ((self.length as u64 & 0xff) << 56) | self.tail;
        self.compress(b);
        self.v[2] ^= 0xff;
        for _ in 0..3 {
            self.round();
        }
        self.v[0] ^ self.v[1] ^ self.v[2] ^ self.v[3]
    }
}

impl<E: FlowKeyExtractor> UdpFlowManager<E> {
    /// Whether the listener's cluster multiplexes DNS queries by ID
    /// (client datagrams become [`ClientDecision::DnsQuery`]).
    pub fn is_dns_id(&self) -> bool {
        self.cluster.as_ref().is_some_and(|c| c.dns_id)
    }

    /// How long a `DNS_ID` query waits for its answer: the cluster's
    /// `back_timeout`, else the listener's.
    pub fn dns_answer_timeout(&self) -> std::time::Duration {
        self.cluster
            .as_ref()
            .and_then(|c| c.back_timeout)
            .unwrap_or(self.config.back_timeout)
    }

    /// The `DNS_ID` verdict on a datagram already checked for size and
    /// cluster: shorter than a DNS header is `Invalid`; while draining
    /// (soft-stop) a query is `Shed` like a new flow, so pending queries
    /// run out and the worker can exit; any other goes to the shell's mux
    /// with the affinity hash of its source. No flow, no table entry, no
    /// timer here (the mux keeps the pending query).
    pub(super) fn on_dns_datagram(
        &self,
        cluster: &ClusterConfig,
        src: SocketAddr,
        payload: &[u8],
    ) -> ClientDecision {
        if payload.len() < DNS_HEADER_LEN {
            return ClientDecision::Dropped(DropReason::Invalid);
        }
        if self.draining {
            return ClientDecision::Dropped(DropReason::Shed);
        }
        let proxy_header = cluster
            .send_proxy_protocol
            .then(|| ProxyHeader::new(src, self.config.listener));
        ClientDecision::DnsQuery {
            affinity_hash: affinity_hash(self.config.hash_seed, cluster.affinity_key, src),
            proxy_header,
        }
    }
}
