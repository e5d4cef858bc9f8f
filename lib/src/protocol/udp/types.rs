//! Public vocabulary of the UDP flow manager: ids, configuration, inputs,
//! decisions, outputs, reasons and the per-flow access record.
//!
//! Owns plain data only: nothing here reads a clock, touches a socket or
//! allocates on the datagram path (ids are `Arc<str>`, cloned only when a flow
//! is created or closed, never per datagram).

use std::{
    fmt,
    net::SocketAddr,
    num::{NonZeroU32, NonZeroUsize},
    sync::Arc,
    time::{Duration, Instant},
};

use super::{
    key::FlowKey,
    ppv2::ProxyHeader,
    quic_lb::{QuicLbConfig, QuicLbRoute},
};

/// Identifies one flow of one manager.
///
/// Packs the slab slot (low 32 bits) and a per-slot generation (high 32
/// bits), so an id is never confused with a later flow that reuses the slot:
/// a stale id (late resolution, late upstream readiness) is simply unknown.
/// The shell maps `FlowId` ↔ upstream socket token and must forget the id
/// when it handles [`Output::CloseFlow`] for it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowId(u64);

impl FlowId {
    pub(crate) fn new(slot: usize, generation: u32) -> Self {
        // Slots are bounded by max_flows, far below u32::MAX; the slot is
        // masked rather than trusted so a corrupt value cannot alias bits.
        FlowId((u64::from(generation) << 32) | (slot as u64 & 0xffff_ffff))
    }

    pub(crate) fn slot(self) -> usize {
        (self.0 & 0xffff_ffff) as usize
    }

    pub(crate) fn generation(self) -> u32 {
        (self.0 >> 32) as u32
    }

    /// The raw value, e.g. to derive a mio token in the shell.
    pub fn as_u64(self) -> u64 {
        self.0
    }

    /// Rebuilds an id from [`FlowId::as_u64`].
    pub fn from_u64(raw: u64) -> Self {
        FlowId(raw)
    }
}

impl fmt::Debug for FlowId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FlowId({}#{})", self.slot(), self.generation())
    }
}

impl fmt::Display for FlowId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.slot(), self.generation())
    }
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Wraps a name (one allocation; clones are reference counts).
            pub fn new(name: &str) -> Self {
                $name(Arc::from(name))
            }

            /// The name.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), &*self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(name: &str) -> Self {
                $name::new(name)
            }
        }
    };
}

string_id!(
    /// A cluster's id (cheap to clone, never cloned per datagram).
    ClusterId
);
string_id!(
    /// A backend's id (cheap to clone, never cloned per datagram).
    BackendId
);

/// What the load-balancing hash of a flow covers. The flow (NAT) key is
/// always the full client source address whatever this says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum AffinityKey {
    /// The client IP only: every port of one client lands on one backend.
    #[default]
    SourceIp,
    /// The client IP and port.
    SourceIpPort,
}

/// A cluster's UDP knobs, captured by each flow when it is admitted: a
/// reconfiguration applies to new flows only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// The cluster new flows are sent to.
    pub cluster_id: ClusterId,
    /// What the affinity hash covers.
    pub affinity_key: AffinityKey,
    /// Backend datagrams expected per forwarded client datagram (nginx's
    /// `proxy_responses`): the flow closes once every forwarded request got
    /// them (`None` = unlimited; DNS = 1).
    pub responses: Option<NonZeroU32>,
    /// Forward at most this many client datagrams (`None` = unlimited);
    /// without a responses cap the flow closes on the last one.
    pub requests: Option<NonZeroU32>,
    /// Idle time after a client datagram; `None` = the listener's default.
    pub front_timeout: Option<Duration>,
    /// Idle time after a backend datagram; `None` = the listener's default.
    pub back_timeout: Option<Duration>,
    /// Prepend a PROXY protocol v2 header to datagrams sent to the backend.
    pub send_proxy_protocol: bool,
    /// With `send_proxy_protocol`: on every datagram instead of only the
    /// first one of the flow.
    pub proxy_protocol_every_datagram: bool,
    /// Override of the listener's pending-datagram bound for new flows.
    pub max_pending_datagrams: Option<NonZeroUsize>,
    /// One-way datagrams (syslog, statsd, NetFlow): every client datagram
    /// is a [`ClientDecision::OneWay`], with no flow, no table entry and no
    /// return path. Applies to each datagram as it arrives (there is no
    /// flow to capture it).
    pub one_way: bool,
    /// `Some(len)`: flows are keyed by QUIC connection ID
    /// ([`super::QuicConnectionIdExtractor`] with short-header IDs of `len`
    /// bytes) instead of the manager's own extractor (`None`).
    pub quic_cid_length: Option<u8>,
    /// `flow_key = DNS_ID`: every client datagram is a
    /// [`ClientDecision::DnsQuery`], multiplexed by the shell over a few
    /// sockets per backend with its DNS ID rewritten (see `dns_id.rs`); no
    /// flow, no table entry. Applies to each datagram as it arrives.
    pub dns_id: bool,
    /// QUIC-LB routable connection IDs (only with `quic_cid_length`): a new
    /// flow goes to the backend whose server ID its destination connection
    /// ID encodes ([`Output::SelectBackend`]'s `quic_lb`).
    pub quic_lb: Option<QuicLbConfig>,
}

impl ClusterConfig {
    /// A cluster with the defaults: `SOURCE_IP` affinity, no caps, the
    /// listener's timeouts, no PROXY header.
    pub fn new(cluster_id: ClusterId) -> Self {
        ClusterConfig {
            cluster_id,
            affinity_key: AffinityKey::SourceIp,
            responses: None,
            requests: None,
            front_timeout: None,
            back_timeout: None,
            send_proxy_protocol: false,
            proxy_protocol_every_datagram: false,
            max_pending_datagrams: None,
            one_way: false,
            quic_cid_length: None,
            dns_id: false,
            quic_lb: None,
        }
    }
}

/// The listener-level configuration one manager is built with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpFlowManagerConfig {
    /// The address clients send to: the destination in PROXY headers.
    pub listener: SocketAddr,
    /// Most live flows; may be lowered below the live count (it then only
    /// sheds new flows). `0` admits nothing (the shell resolves "auto").
    pub max_flows: usize,
    /// Larger datagrams (either direction) are dropped `Truncated`.
    pub max_rx_datagram_size: usize,
    /// Default idle time after a client datagram.
    pub front_timeout: Duration,
    /// Default idle time after a backend datagram.
    pub back_timeout: Duration,
    /// Most datagrams buffered while a new flow awaits its backend; when full
    /// the oldest is dropped (`1` = newest wins).
    pub max_pending_datagrams: NonZeroUsize,
    /// Most payload bytes buffered per awaiting flow.
    pub max_pending_bytes: NonZeroUsize,
    /// Key of the affinity hash (HRW / MAGLEV placement). Must be the same
    /// on every worker and instance that should agree on a client's backend;
    /// never random. Default [`super::DEFAULT_HASH_SEED`]. (The flow table's
    /// hasher is keyed separately, by the per-process seed of
    /// [`super::UdpFlowManager::new`].)
    pub hash_seed: u64,
}

/// Default bound of the per-flow pending FIFO (datagrams).
pub const DEFAULT_MAX_PENDING_DATAGRAMS: NonZeroUsize = match NonZeroUsize::new(32) {
    Some(n) => n,
    None => unreachable!(),
};

/// Default bound of the per-flow pending FIFO (bytes).
pub const DEFAULT_MAX_PENDING_BYTES: NonZeroUsize = match NonZeroUsize::new(64 * 1024) {
    Some(n) => n,
    None => unreachable!(),
};

impl UdpFlowManagerConfig {
    /// The defaults of a UDP listener at `listener`: 10,000 flows, 1,500-byte
    /// datagrams, 30 s timeouts, 32 datagrams / 64 KiB pending per new flow.
    pub fn new(listener: SocketAddr) -> Self {
        UdpFlowManagerConfig {
            listener,
            max_flows: 10_000,
            max_rx_datagram_size: 1500,
            front_timeout: Duration::from_secs(30),
            back_timeout: Duration::from_secs(30),
            max_pending_datagrams: DEFAULT_MAX_PENDING_DATAGRAMS,
            max_pending_bytes: DEFAULT_MAX_PENDING_BYTES,
            hash_seed: super::DEFAULT_HASH_SEED,
        }
    }
}

/// Why a datagram (or a backend resolution) was not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// The flow-key extractor rejected it (e.g. empty).
    Invalid,
    /// Larger than `max_rx_datagram_size`.
    Truncated,
    /// No cluster is configured on the listener.
    NoBackend,
    /// A new flow refused: draining, or the flow table is at `max_flows`.
    Shed,
    /// Names a flow that does not exist (any more) or is not established.
    UnknownFlow,
    /// The pending FIFO of an awaiting flow was full: its oldest datagram was
    /// dropped.
    PendingOverflow,
    /// Still pending when its flow closed before reaching a backend.
    FlowClosed,
    /// The flow reached its requests cap and only waits for its responses.
    RequestsExhausted,
}

impl DropReason {
    /// A stable lower-case name for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Invalid => "invalid",
            DropReason::Truncated => "truncated",
            DropReason::NoBackend => "no_backend",
            DropReason::Shed => "shed",
            DropReason::UnknownFlow => "unknown_flow",
            DropReason::PendingOverflow => "pending_overflow",
            DropReason::FlowClosed => "flow_closed",
            DropReason::RequestsExhausted => "requests_exhausted",
        }
    }
}

/// Why a flow was closed (reaches the access log).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// Its idle deadline passed.
    Idle,
    /// Every forwarded client datagram got its `responses` answers.
    ResponsesReached,
    /// The requests cap was reached.
    RequestsReached,
    /// Listener removal, deactivation, soft-stop end or hard-stop.
    Drain,
    /// Aborted by the shell (upstream connect failed, no backend…).
    Aborted,
    /// Its backend was removed or declared down.
    BackendRemoved,
    /// Handed over to another worker (binary upgrade); it lives on there.
    HandedOver,
}

impl CloseReason {
    /// A stable lower-case name for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Idle => "idle",
            CloseReason::ResponsesReached => "responses_reached",
            CloseReason::RequestsReached => "requests_reached",
            CloseReason::Drain => "drain",
            CloseReason::Aborted => "aborted",
            CloseReason::BackendRemoved => "backend_removed",
            CloseReason::HandedOver => "handed_over",
        }
    }
}

/// The phase of a live flow. Forward only; a flow may close from either.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Admitted, its datagrams buffered until the shell resolves a backend.
    AwaitingBackend,
    /// Has a backend and an upstream socket; datagrams flow both ways.
    Established,
}

/// The verdict on one client datagram, returned directly (no allocation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientDecision {
    /// Send the caller's `payload` on the upstream socket of `flow`, after
    /// `proxy_header` when present (a separate iovec).
    Forward {
        /// The flow whose connected upstream socket sends it.
        flow: FlowId,
        /// A PROXY v2 header to send before the payload, in the same datagram.
        proxy_header: Option<ProxyHeader>,
    },
    /// One-way cluster: pick a backend of the listener's cluster with
    /// `affinity_hash` (HRW / MAGLEV keep a source on one backend; other
    /// policies balance per datagram) and send the caller's `payload` on
    /// that backend's shared one-way socket, after `proxy_header` when
    /// present. No flow exists: nothing to close, nothing comes back.
    OneWay {
        /// The load-balancing hash of the datagram's source (the cluster's
        /// `affinity_key` says what it covers).
        affinity_hash: u64,
        /// A PROXY v2 header for this datagram (on every one: there is no
        /// flow to remember that a first one was sent).
        proxy_header: Option<ProxyHeader>,
    },
    /// `DNS_ID` cluster: pick a backend of the listener's cluster with
    /// `affinity_hash` (per query), rewrite the query's ID to a free one of
    /// a shared socket of that backend ([`super::DnsIdMux::on_query`]) and
    /// send it there, after `proxy_header` when present. No flow exists: the
    /// mux maps the answer back to this client.
    DnsQuery {
        /// The load-balancing hash of the query's source.
        affinity_hash: u64,
        /// A PROXY v2 header for this query (on every one).
        proxy_header: Option<ProxyHeader>,
    },
    /// Copied into the pending FIFO of a flow awaiting its backend; it will
    /// come out as an [`Output::Transmit`].
    Queued {
        /// The awaiting flow.
        flow: FlowId,
    },
    /// Not delivered.
    Dropped(DropReason),
}

/// The verdict on one backend datagram, returned directly (no allocation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendDecision {
    /// Send the caller's payload through the listener socket to `dst`.
    Return {
        /// The client address.
        dst: SocketAddr,
    },
    /// Not delivered.
    Dropped(DropReason),
}

/// What [`super::UdpFlowManager::backend_resolved`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResolveOutcome {
    /// The flow is now established: `OpenUpstream` and its flushed datagrams
    /// are in the output queue.
    Established,
    /// The flow already had a backend: duplicate or late, ignored.
    Ignored,
    /// The flow is gone (reaped): counted as a drop `UnknownFlow`.
    UnknownFlow,
}

/// The socket a [`Output::Transmit`] goes out on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// The listener socket (towards a client). The core currently returns
    /// every client-bound datagram as a [`BackendDecision::Return`], so it
    /// does not emit this variant yet; the shell must still handle it.
    Listener,
    /// The connected upstream socket of this flow (towards its backend).
    Upstream(FlowId),
}

/// A per-flow fact for metrics. Per-datagram facts are not here: the shell
/// counts them from the decisions and transmits it acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricEvent {
    /// A flow was admitted (`udp.flows.created`).
    FlowCreated {
        /// The new flow.
        flow: FlowId,
        /// Its cluster.
        cluster: ClusterId,
    },
    /// A flow was closed (`udp.flows.evicted`), just before its `CloseFlow`.
    FlowEvicted {
        /// The closed flow.
        flow: FlowId,
        /// Its cluster.
        cluster: ClusterId,
        /// Its backend, if it had one.
        backend: Option<BackendId>,
        /// Why.
        reason: CloseReason,
    },
    /// A new flow was refused because the table is at `max_flows`
    /// (`udp.flows.shed`); its datagram is also a `Dropped(Shed)` decision.
    FlowShed {
        /// The cluster it would have joined.
        cluster: ClusterId,
    },
    /// A tracked flow's client datagram came from a new source address
    /// (`udp.flows.migrated`): replies now go there. Only connection-ID
    /// keyed flows can migrate.
    FlowMigrated {
        /// The flow.
        flow: FlowId,
    },
}

/// The access record of a closed flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowRecord {
    /// The flow's key.
    pub key: FlowKey,
    /// The last client address seen (where replies went).
    pub client: SocketAddr,
    /// The cluster captured at admission.
    pub cluster: ClusterId,
    /// The backend, if one was resolved.
    pub backend: Option<BackendId>,
    /// The backend address, if one was resolved.
    pub backend_addr: Option<SocketAddr>,
    /// Client datagrams sent to the backend (flushed ones included).
    pub datagrams_in: u64,
    /// Their payload bytes (PROXY headers excluded).
    pub bytes_in: u64,
    /// Backend datagrams returned to the client.
    pub datagrams_out: u64,
    /// Their payload bytes.
    pub bytes_out: u64,
    /// Client datagrams of this flow dropped after admission (pending
    /// overflow, still pending at close, requests exhausted).
    pub datagrams_dropped: u64,
    /// When the flow was admitted.
    pub created: Instant,
    /// When it closed.
    pub closed: Instant,
}

impl FlowRecord {
    /// How long the flow lived.
    pub fn duration(&self) -> Duration {
        self.closed.saturating_duration_since(self.created)
    }
}

/// A command or fact for the shell, drained with
/// [`super::UdpFlowManager::poll_output`] until `None`.
#[derive(Clone, PartialEq, Eq)]
pub enum Output {
    /// Choose a backend of `cluster` for `flow`, then feed
    /// `backend_resolved` (or `abort_flow` if none is available).
    SelectBackend {
        /// The awaiting flow.
        flow: FlowId,
        /// Its cluster.
        cluster: ClusterId,
        /// Seeded hash of the client IP (or IP and port) for HRW / Maglev.
        affinity_hash: u64,
        /// On a QUIC-LB cluster: the server ID the flow's first datagram
        /// names (pick that backend, else fall back to the policy with
        /// `affinity_hash`), or why it names none. `None` elsewhere.
        quic_lb: Option<QuicLbRoute>,
    },
    /// Open a connected upstream socket for `flow` towards `addr`; always
    /// emitted before the flow's first `Transmit`.
    OpenUpstream {
        /// The flow that now owns the socket.
        flow: FlowId,
        /// The chosen backend.
        backend: BackendId,
        /// Its address.
        addr: SocketAddr,
    },
    /// Send an owned datagram (a flushed pending one).
    Transmit {
        /// The socket to send on.
        via: Via,
        /// The destination (the backend for `Upstream`, the client for
        /// `Listener`).
        dst: SocketAddr,
        /// PROXY v2 header to send first, in the same datagram.
        proxy_header: Option<ProxyHeader>,
        /// The datagram.
        payload: Vec<u8>,
    },
    /// A per-flow metric fact.
    Metric(MetricEvent),
    /// Datagrams dropped outside a direct decision (pending overflow, pending
    /// at close).
    Dropped {
        /// The flow they belonged to.
        flow: FlowId,
        /// Why.
        reason: DropReason,
        /// How many datagrams.
        datagrams: u32,
        /// Their payload bytes.
        bytes: u64,
    },
    /// Close the flow's upstream socket, forget `flow`, log `record`.
    CloseFlow {
        /// The closed flow (its id is never reused).
        flow: FlowId,
        /// Why (access log).
        reason: CloseReason,
        /// The access record.
        record: FlowRecord,
    },
}

impl fmt::Debug for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Output::SelectBackend {
                flow,
                cluster,
                affinity_hash,
                quic_lb,
            } => f
                .debug_struct("SelectBackend")
                .field("flow", flow)
                .field("cluster", cluster)
                .field("affinity_hash", affinity_hash)
                .field("quic_lb", quic_lb)
                .finish(),
            Output::OpenUpstream {
                flow,
                backend,
                addr,
            } => f
                .debug_struct("OpenUpstream")
                .field("flow", flow)
                .field("backend", backend)
                .field("addr", addr)
                .finish(),
            // A datagram's Debug shows its length, not its bytes.
            Output::Transmit {
                via,
                dst,
                proxy_header,
                payload,
            } => f
                .debug_struct("Transmit")
                .field("via", via)
                .field("dst", dst)
                .field("proxy_header", &proxy_header.map(|h| h.len()))
                .field("payload_len", &payload.len())
                .finish(),
            Output::Metric(m) => f.debug_tuple("Metric").field(m).finish(),
            Output::Dropped {
                flow,
                reason,
                datagrams,
                bytes,
            } => f
                .debug_struct("Dropped")
                .field("flow", flow)
                .field("reason", reason)
                .field("datagrams", datagrams)
                .field("bytes", bytes)
                .finish(),
            Output::CloseFlow {
                flow,
                reason,
                record,
            } => f
                .debug_struct("CloseFlow")
                .field("flow", flow)
                .field("reason", reason)
                .field("record", record)
                .finish(),
        }
    }
}

/// An input, for callers that prefer one entry point over the named methods
/// (the fuzz target and the simulation use it). Datagram inputs are not here:
/// they return their decision directly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// See [`super::UdpFlowManager::backend_resolved`].
    BackendResolved {
        /// The awaiting flow.
        flow: FlowId,
        /// The chosen backend.
        backend: BackendId,
        /// Its address.
        addr: SocketAddr,
    },
    /// See [`super::UdpFlowManager::set_cluster`].
    SetCluster(Option<ClusterConfig>),
    /// See [`super::UdpFlowManager::set_max_flows`].
    SetMaxFlows(usize),
    /// See [`super::UdpFlowManager::set_max_rx_datagram_size`].
    SetMaxRxDatagramSize(usize),
    /// See [`super::UdpFlowManager::set_default_timeouts`].
    SetDefaultTimeouts {
        /// New default front timeout.
        front: Duration,
        /// New default back timeout.
        back: Duration,
    },
    /// See [`super::UdpFlowManager::drain`].
    Drain,
    /// See [`super::UdpFlowManager::abort_flow`].
    AbortFlow {
        /// The flow.
        flow: FlowId,
        /// Why.
        reason: CloseReason,
    },
    /// See [`super::UdpFlowManager::abort_backend`].
    AbortBackend {
        /// The backend.
        backend: BackendId,
        /// Why.
        reason: CloseReason,
    },
    /// See [`super::UdpFlowManager::close_all`].
    CloseAll,
}
