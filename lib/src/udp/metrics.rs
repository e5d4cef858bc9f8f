//! The UDP shell's metric handles: what it counts, under which DESIGN §4
//! name, in which scope (listener, cluster, backend).
//!
//! Owns the pre-resolved [`MetricHandle`]s of each listener and of each
//! flow's cluster and backend, so the datapath counts through an index and
//! never looks a name up or allocates. Registration (allocating) happens when
//! a listener is added and when a flow gets its backend. It never decides
//! anything; the registry itself lives in [`crate::metrics`].

use std::net::SocketAddr;
use std::time::Duration;

use crate::backends::{BackendId, ClusterId};
use crate::metrics::register as handle;
use crate::metrics::{names, MetricHandle, MetricKind, MetricsRegistry, Scope};
use crate::protocol::udp::DropReason;

/// Drops counted by the shell itself (not by the core), with their metric
/// suffix under `udp.datagrams.dropped.`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShellDrop {
    /// A write queue was full when the socket would block: newest dropped.
    QueueFull,
    /// The socket refused the datagram (other than would-block).
    SendError,
    /// The flow's upstream socket was not open (its open failed).
    NoUpstream,
    /// One-way: the backend's socket would block (no queue on that path).
    WouldBlock,
    /// One-way: a backend's reply, read and discarded (no return path).
    OneWayReply,
    /// `DNS_ID`: a query shorter than a DNS header or with the QR bit set,
    /// or an answer shorter than a header or with QR clear.
    DnsNotDns,
    /// `DNS_ID`: every socket of the backend is full of pending queries.
    DnsPendingFull,
    /// `DNS_ID`: an answer whose ID is pending on no query of its socket
    /// (duplicate, after expiry, wrong ID).
    DnsUnknownId,
    /// `DNS_ID`: an answer whose question differs from its query's.
    DnsMismatch,
    /// `DNS_ID`: an answer after its query's deadline.
    DnsLate,
    /// `DNS_ID`: a query with no answer before its deadline.
    DnsExpired,
    /// `DNS_ID`: a query pending on a socket closed meanwhile (backend
    /// removed or moved, listener closed).
    DnsSocketClosed,
}

impl ShellDrop {
    const ALL: [ShellDrop; 12] = [
        ShellDrop::QueueFull,
        ShellDrop::SendError,
        ShellDrop::NoUpstream,
        ShellDrop::WouldBlock,
        ShellDrop::OneWayReply,
        ShellDrop::DnsNotDns,
        ShellDrop::DnsPendingFull,
        ShellDrop::DnsUnknownId,
        ShellDrop::DnsMismatch,
        ShellDrop::DnsLate,
        ShellDrop::DnsExpired,
        ShellDrop::DnsSocketClosed,
    ];

    /// The metric suffix.
    pub fn as_str(self) -> &'static str {
        match self {
            ShellDrop::QueueFull => "queue_full",
            ShellDrop::SendError => "send_error",
            ShellDrop::NoUpstream => "no_upstream",
            ShellDrop::WouldBlock => "would_block",
            ShellDrop::OneWayReply => "one_way_reply",
            ShellDrop::DnsNotDns => "dns_not_dns",
            ShellDrop::DnsPendingFull => "dns_pending_full",
            ShellDrop::DnsUnknownId => "dns_unknown_id",
            ShellDrop::DnsMismatch => "dns_mismatch",
            ShellDrop::DnsLate => "dns_late",
            ShellDrop::DnsExpired => "dns_expired",
            ShellDrop::DnsSocketClosed => "dns_socket_closed",
        }
    }
}

const CORE_DROPS: [DropReason; 8] = [
    DropReason::Invalid,
    DropReason::Truncated,
    DropReason::NoBackend,
    DropReason::Shed,
    DropReason::UnknownFlow,
    DropReason::PendingOverflow,
    DropReason::FlowClosed,
    DropReason::RequestsExhausted,
];

fn core_drop_index(reason: DropReason) -> usize {
    CORE_DROPS.iter().position(|r| *r == reason).unwrap_or(0)
}

/// Name of the counter of upstream sockets that could not be opened.
pub(crate) const UPSTREAM_OPEN_FAILED: &str = "udp.upstream.open_failed";
/// Name of the counter of flows aborted because the backend refused
/// (ECONNREFUSED).
pub(crate) const BACKEND_REFUSED: &str = "udp.backend.refused";
/// Flows whose client moved to a new source address (QUIC connection-ID
/// keys only).
pub(crate) const FLOWS_MIGRATED: &str = "udp.flows.migrated";

/// Counters of one scope that every datagram touches.
#[derive(Debug, Clone, Copy, Default)]
pub struct TrafficHandles {
    datagrams_in: Option<MetricHandle>,
    bytes_in: Option<MetricHandle>,
    datagrams_out: Option<MetricHandle>,
    bytes_out: Option<MetricHandle>,
}

impl TrafficHandles {
    fn register(registry: &mut MetricsRegistry, scope: &Scope) -> Self {
        let c = MetricKind::Counter;
        TrafficHandles {
            datagrams_in: handle(registry, names::DATAGRAMS_IN, scope.clone(), c),
            bytes_in: handle(registry, names::BYTES_IN, scope.clone(), c),
            datagrams_out: handle(registry, names::DATAGRAMS_OUT, scope.clone(), c),
            bytes_out: handle(registry, names::BYTES_OUT, scope.clone(), c),
        }
    }

    /// One client datagram of `len` bytes forwarded to a backend.
    pub fn count_in(&self, registry: &mut MetricsRegistry, len: usize) {
        count(registry, self.datagrams_in, 1);
        count(registry, self.bytes_in, len as i64);
    }

    /// `datagrams` client datagrams of `bytes` bytes in all forwarded.
    pub fn count_in_many(&self, registry: &mut MetricsRegistry, datagrams: usize, bytes: usize) {
        count(registry, self.datagrams_in, datagrams as i64);
        count(registry, self.bytes_in, bytes as i64);
    }

    /// One backend datagram of `len` bytes returned to a client.
    pub fn count_out(&self, registry: &mut MetricsRegistry, len: usize) {
        count(registry, self.datagrams_out, 1);
        count(registry, self.bytes_out, len as i64);
    }
}

fn count(registry: &mut MetricsRegistry, h: Option<MetricHandle>, delta: i64) {
    if let Some(h) = h {
        registry.count(h, delta);
    }
}

/// Every handle of one listener.
#[derive(Debug, Clone)]
pub struct ListenerMetrics {
    scope: Scope,
    /// Datagrams and bytes each way.
    pub traffic: TrafficHandles,
    created: Option<MetricHandle>,
    evicted: Option<MetricHandle>,
    shed: Option<MetricHandle>,
    migrated: Option<MetricHandle>,
    active: Option<MetricHandle>,
    duration: Option<MetricHandle>,
    open_failed: Option<MetricHandle>,
    refused: Option<MetricHandle>,
    core_drops: [Option<MetricHandle>; CORE_DROPS.len()],
    shell_drops: [Option<MetricHandle>; ShellDrop::ALL.len()],
}

impl ListenerMetrics {
    /// Registers the listener's metrics at zero.
    pub fn register(registry: &mut MetricsRegistry, listener: SocketAddr) -> Self {
        let scope = Scope::Listener(listener);
        let c = MetricKind::Counter;
        let mut core_drops = [None; CORE_DROPS.len()];
        for (slot, reason) in core_drops.iter_mut().zip(CORE_DROPS) {
            *slot = handle(registry, &names::dropped(reason.as_str()), scope.clone(), c);
        }
        let mut shell_drops = [None; ShellDrop::ALL.len()];
        for (slot, reason) in shell_drops.iter_mut().zip(ShellDrop::ALL) {
            *slot = handle(registry, &names::dropped(reason.as_str()), scope.clone(), c);
        }
        ListenerMetrics {
            traffic: TrafficHandles::register(registry, &scope),
            created: handle(registry, names::FLOWS_CREATED, scope.clone(), c),
            evicted: handle(registry, names::FLOWS_EVICTED, scope.clone(), c),
            shed: handle(registry, names::FLOWS_SHED, scope.clone(), c),
            migrated: handle(registry, FLOWS_MIGRATED, scope.clone(), c),
            active: handle(
                registry,
                names::ACTIVE_FLOWS,
                scope.clone(),
                MetricKind::Gauge,
            ),
            duration: handle(
                registry,
                names::FLOW_DURATION,
                scope.clone(),
                MetricKind::Time,
            ),
            open_failed: handle(registry, UPSTREAM_OPEN_FAILED, scope.clone(), c),
            refused: handle(registry, BACKEND_REFUSED, scope.clone(), c),
            core_drops,
            shell_drops,
            scope,
        }
    }

    /// Removes the listener's metrics (listener removed).
    pub fn unregister(&self, registry: &mut MetricsRegistry) {
        registry.remove_scope(&self.scope);
    }

    /// A datagram dropped by the core.
    pub fn dropped(&self, registry: &mut MetricsRegistry, reason: DropReason, datagrams: u32) {
        count(
            registry,
            self.core_drops[core_drop_index(reason)],
            i64::from(datagrams),
        );
    }

    /// A datagram dropped by the shell.
    pub fn shell_dropped(&self, registry: &mut MetricsRegistry, reason: ShellDrop) {
        self.shell_dropped_many(registry, reason, 1);
    }

    /// Datagrams dropped by the shell for `reason` so far (tests).
    #[cfg(test)]
    pub fn shell_drop_count(&self, registry: &MetricsRegistry, reason: ShellDrop) -> i64 {
        let i = ShellDrop::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        self.shell_drops[i]
            .and_then(|handle| registry.counter(handle))
            .unwrap_or(0)
    }

    /// `n` datagrams dropped by the shell for one reason.
    pub fn shell_dropped_many(&self, registry: &mut MetricsRegistry, reason: ShellDrop, n: usize) {
        let i = ShellDrop::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        count(registry, self.shell_drops[i], n as i64);
    }

    /// A flow was admitted.
    pub fn flow_created(&self, registry: &mut MetricsRegistry) {
        count(registry, self.created, 1);
    }

    /// A flow was closed after `duration`.
    pub fn flow_evicted(&self, registry: &mut MetricsRegistry) {
        count(registry, self.evicted, 1);
    }

    /// A closed flow's lifetime.
    pub fn flow_duration(&self, registry: &mut MetricsRegistry, duration: Duration) {
        if let Some(h) = self.duration {
            registry.record_time(h, duration);
        }
    }

    /// A new source refused at `max_flows`.
    pub fn flow_shed(&self, registry: &mut MetricsRegistry) {
        count(registry, self.shed, 1);
    }

    /// A flow's client moved to a new source address.
    pub fn flow_migrated(&self, registry: &mut MetricsRegistry) {
        count(registry, self.migrated, 1);
    }

    /// An upstream socket could not be opened.
    pub fn upstream_open_failed(&self, registry: &mut MetricsRegistry) {
        count(registry, self.open_failed, 1);
    }

    /// A backend refused a datagram.
    pub fn backend_refused(&self, registry: &mut MetricsRegistry) {
        count(registry, self.refused, 1);
    }

    /// The live flow count.
    pub fn set_active(&self, registry: &mut MetricsRegistry, flows: usize) {
        if let Some(h) = self.active {
            registry.gauge_set(h, flows as u64);
        }
    }
}

/// Counters of a flow's backend, registered when the flow gets its backend.
/// Cluster totals are the sum of their backends' (the registry adds them up
/// when answering a query), so traffic is counted once, on the backend.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct FlowMetrics {
    /// The backend's traffic.
    pub backend: TrafficHandles,
    backend_active: Option<MetricHandle>,
}

impl FlowMetrics {
    /// Registers (or finds) the backend's handles and counts one more
    /// active flow on it.
    pub(crate) fn register(
        registry: &mut MetricsRegistry,
        cluster: &ClusterId,
        backend: &BackendId,
    ) -> Self {
        let backend_scope = Scope::Backend(cluster.clone(), backend.clone());
        let backend_active = handle(
            registry,
            names::ACTIVE_FLOWS,
            backend_scope.clone(),
            MetricKind::Gauge,
        );
        if let Some(h) = backend_active {
            registry.gauge_add(h, 1);
        }
        FlowMetrics {
            backend: TrafficHandles::register(registry, &backend_scope),
            backend_active,
        }
    }

    /// The flow closed: one active flow less on its backend.
    pub(crate) fn closed(&self, registry: &mut MetricsRegistry) {
        if let Some(h) = self.backend_active {
            registry.gauge_add(h, -1);
        }
    }
}

/// Handles of one backend of a one-way cluster: its traffic (only `in`
/// moves) and the drops of its datagrams by reason, registered when its
/// one-way socket opens.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct OneWayMetrics {
    /// The backend's traffic.
    pub traffic: TrafficHandles,
    drops: [Option<MetricHandle>; ShellDrop::ALL.len()],
}

impl OneWayMetrics {
    /// Registers (or finds) the backend's handles.
    pub(crate) fn register(
        registry: &mut MetricsRegistry,
        cluster: &ClusterId,
        backend: &BackendId,
    ) -> Self {
        let scope = Scope::Backend(cluster.clone(), backend.clone());
        let mut drops = [None; ShellDrop::ALL.len()];
        for (slot, reason) in drops.iter_mut().zip(ShellDrop::ALL) {
            *slot = handle(
                registry,
                &names::dropped(reason.as_str()),
                scope.clone(),
                MetricKind::Counter,
            );
        }
        OneWayMetrics {
            traffic: TrafficHandles::register(registry, &scope),
            drops,
        }
    }

    /// `n` datagrams to or from this backend dropped by the shell.
    pub(crate) fn dropped(&self, registry: &mut MetricsRegistry, reason: ShellDrop, n: usize) {
        let i = ShellDrop::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        count(registry, self.drops[i], n as i64);
    }
}

/// Counts a per-cluster flow fact (`udp.flows.created` / `evicted` / `shed`).
pub(crate) fn cluster_flow_event(registry: &mut MetricsRegistry, cluster: &str, name: &str) {
    if let Some(h) = handle(
        registry,
        name,
        Scope::Cluster(ClusterId::from(cluster)),
        MetricKind::Counter,
    ) {
        registry.incr(h);
    }
}
