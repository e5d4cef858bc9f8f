//! Flow handover in the UDP shell: on `sozu upgrade` the old worker passes
//! its live flows (a manifest and each flow's connected upstream socket) to
//! the new one, which adopts them before it reads any listener, so every
//! flow keeps its backend and its upstream source port.
//!
//! Owns the wire form of a flow ([`HandedOverFlow`] ↔ the core's
//! [`FlowHandover`]), the old worker's export (stop reading, list the
//! established flows, release them once their sockets are out) and the new
//! worker's adoption (hold the listeners, adopt, then read). It never moves
//! an fd itself (the worker loop owns the fd-passing socket) and never
//! decides a flow's fate (the core's `hand_over` / `adopt` do). Its twin in
//! the core is `crate::protocol::udp::handover`; the master's side is
//! `bin/src/master/upgrade.rs`. See `doc/udp.md` ("Live flows across an
//! upgrade").
//!
//! Ownership: a flow belongs to exactly one worker at a time. The old
//! worker keeps serving a flow until its socket has been passed, then
//! releases it (`hand_over`, no access record: the flow lives on); an fd the
//! new worker does not adopt is closed there and counted
//! `udp.flows.handover_failed.<reason>`, and that client's next datagram
//! starts a fresh flow (today's behaviour).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use sozu_command_lib::command::{FlowManifest, HandedOverFlow};
use sozu_command_lib::proto::convert::AddressError;

use super::listener::{FlowIo, IoContext, UdpListener};
use super::metrics::FlowMetrics;
use super::shell::UdpShell;
use super::socket::register_readable;
use super::write_queue::Upstream;
use super::UdpToken;
use crate::backends::{BackendId, ClusterId};
use crate::metrics::{MetricKind, MetricsRegistry, Scope};
use crate::protocol::udp::{
    self as core, AdoptError, CloseReason, ConnectionId, FlowHandover, FlowId, FlowKey,
    MetricEvent, Output, Phase,
};
use crate::udp::access_log::FlowCloseReason;

/// Flows released to a successor worker (old worker, per listener).
pub(crate) const FLOWS_HANDED_OVER: &str = "udp.flows.handed_over";
/// Flows adopted from a predecessor worker (new worker, per listener).
pub(crate) const FLOWS_ADOPTED: &str = "udp.flows.adopted";
/// Prefix of the counters of flows that could not be handed over, by
/// reason (`udp.flows.handover_failed.at_capacity`, …).
pub(crate) const HANDOVER_FAILED: &str = "udp.flows.handover_failed";

/// Counts one event under `name` in the listener's scope (registered on
/// first use: handover happens once per upgrade, off the datapath).
pub(crate) fn count(registry: &mut MetricsRegistry, listener: SocketAddr, name: &str) {
    count_many(registry, listener, name, 1);
}

fn count_many(registry: &mut MetricsRegistry, listener: SocketAddr, name: &str, n: usize) {
    count_in(registry, Scope::Listener(listener), name, n);
}

/// Counts in `scope` (the worker's own scope for a flow whose listener is
/// unknown here; both add up to the same name in `sozu metrics get`).
fn count_in(registry: &mut MetricsRegistry, scope: Scope, name: &str, n: usize) {
    match registry.register(name, scope, MetricKind::Counter) {
        Ok(handle) => registry.count(handle, n as i64),
        Err(error) => tracing::warn!(%error, "handover metric not registered"),
    }
}

/// Why a flow was not handed over (the suffix of
/// `udp.flows.handover_failed.`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum HandoverFailure {
    /// Old worker: datagrams waited in the flow's upstream write queue;
    /// the flow stays with the old worker (served as before an upgrade).
    QueuePending,
    /// New worker: no listener at the flow's listener address.
    NoListener,
    /// New worker: a flow already holds the key.
    KeyTaken,
    /// New worker: the listener is at `max_flows`.
    AtCapacity,
    /// New worker: the listener is draining.
    Draining,
    /// New worker: the manifest entry is unusable (bad address, key).
    BadEntry,
    /// New worker: the socket could not be registered with the loop.
    Register,
}

impl HandoverFailure {
    /// The metric suffix.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            HandoverFailure::QueuePending => "queue_pending",
            HandoverFailure::NoListener => "no_listener",
            HandoverFailure::KeyTaken => "key_taken",
            HandoverFailure::AtCapacity => "at_capacity",
            HandoverFailure::Draining => "draining",
            HandoverFailure::BadEntry => "bad_entry",
            HandoverFailure::Register => "register",
        }
    }

    fn metric(self) -> String {
        format!("{HANDOVER_FAILED}.{}", self.as_str())
    }
}

impl From<&AdoptError> for HandoverFailure {
    fn from(error: &AdoptError) -> Self {
        match error {
            AdoptError::KeyTaken { .. } => HandoverFailure::KeyTaken,
            AdoptError::AtCapacity { .. } => HandoverFailure::AtCapacity,
            AdoptError::Draining => HandoverFailure::Draining,
        }
    }
}

/// A manifest entry that does not describe a flow.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HandoverEntryError {
    /// An address field is not a socket address.
    #[error("{field}: invalid address")]
    Address {
        /// The field.
        field: &'static str,
        /// Why.
        #[source]
        source: AddressError,
    },
    /// The connection ID is longer than a QUIC connection ID may be.
    #[error("connection_id: {len} bytes, more than a QUIC connection ID")]
    ConnectionId {
        /// Its length.
        len: usize,
    },
}

/// The wire form of a flow handed over from `listener`.
pub(crate) fn to_wire(
    listener: SocketAddr,
    local: Option<IpAddr>,
    h: &FlowHandover,
) -> HandedOverFlow {
    let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    HandedOverFlow {
        listener: listener.into(),
        client: h.client.into(),
        connection_id: match &h.key {
            FlowKey::Source(_) => None,
            FlowKey::ConnectionId(id) => Some(id.as_bytes().to_vec()),
        },
        cluster_id: h.cluster.as_str().to_owned(),
        backend_id: h.backend.as_str().to_owned(),
        backend: h.backend_addr.into(),
        responses_cap: h.responses_cap.map_or(0, NonZeroU32::get),
        requests_cap: h.requests_cap.map_or(0, NonZeroU32::get),
        front_timeout_ms: millis(h.front_timeout),
        back_timeout_ms: millis(h.back_timeout),
        send_proxy_protocol: h.send_proxy_protocol,
        proxy_protocol_every_datagram: h.proxy_protocol_every_datagram,
        proxy_header_sent: h.proxy_header_sent,
        datagrams_in: h.datagrams_in,
        bytes_in: h.bytes_in,
        datagrams_out: h.datagrams_out,
        bytes_out: h.bytes_out,
        datagrams_dropped: h.datagrams_dropped,
        // Rounded up: a flow due in 0.4 ms is not handed over as already
        // expired.
        idle_remaining_ms: millis(h.idle_remaining + Duration::from_micros(999)),
        age_ms: millis(h.age),
        local: local.map(Into::into),
    }
}

/// A manifest entry decoded: its listener, the client's local address
/// (wildcard listeners) and the flow.
pub(crate) fn from_wire(
    wire: &HandedOverFlow,
) -> Result<(SocketAddr, Option<IpAddr>, FlowHandover), HandoverEntryError> {
    let address = |field: &'static str, a| {
        SocketAddr::try_from(a).map_err(|source| HandoverEntryError::Address { field, source })
    };
    let listener = address("listener", &wire.listener)?;
    let client = address("client", &wire.client)?;
    let backend_addr = address("backend", &wire.backend)?;
    let local = match &wire.local {
        Some(ip) => Some(
            IpAddr::try_from(ip).map_err(|source| HandoverEntryError::Address {
                field: "local",
                source,
            })?,
        ),
        None => None,
    };
    let key = match &wire.connection_id {
        None => FlowKey::Source(client),
        Some(bytes) => FlowKey::ConnectionId(
            ConnectionId::new(bytes)
                .ok_or(HandoverEntryError::ConnectionId { len: bytes.len() })?,
        ),
    };
    let handover = FlowHandover {
        key,
        client,
        cluster: core::ClusterId::new(&wire.cluster_id),
        backend: core::BackendId::new(&wire.backend_id),
        backend_addr,
        responses_cap: NonZeroU32::new(wire.responses_cap),
        requests_cap: NonZeroU32::new(wire.requests_cap),
        front_timeout: Duration::from_millis(wire.front_timeout_ms),
        back_timeout: Duration::from_millis(wire.back_timeout_ms),
        send_proxy_protocol: wire.send_proxy_protocol,
        proxy_protocol_every_datagram: wire.proxy_protocol_every_datagram,
        proxy_header_sent: wire.proxy_header_sent,
        datagrams_in: wire.datagrams_in,
        bytes_in: wire.bytes_in,
        datagrams_out: wire.datagrams_out,
        bytes_out: wire.bytes_out,
        datagrams_dropped: wire.datagrams_dropped,
        idle_remaining: Duration::from_millis(wire.idle_remaining_ms),
        age: Duration::from_millis(wire.age_ms),
    };
    Ok((listener, local, handover))
}

/// The flows an old worker is about to pass: the manifest, each entry's
/// upstream socket (borrowed from the shell) and which flow it is.
#[derive(Debug)]
pub(crate) struct FlowExport<'a> {
    /// Entry `i` describes `fds[i]`.
    pub manifest: FlowManifest,
    /// The connected upstream sockets, in manifest order.
    pub fds: Vec<BorrowedFd<'a>>,
    /// `(listener index, flow)` of each entry, for [`UdpShell::release_flows`].
    pub flows: Vec<(usize, FlowId)>,
}

/// What adopting a flow manifest did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct AdoptReport {
    /// Flows adopted.
    pub adopted: usize,
    /// Flows refused, by reason (their fds are closed).
    pub failed: BTreeMap<&'static str, usize>,
}

impl UdpShell {
    /// Old worker, `return_flows`: stops reading every listener (its
    /// successor will; datagrams wait in the kernel meanwhile), sends what
    /// waits for clients, and lists the established flows with their
    /// upstream sockets. A flow with datagrams still queued for its backend
    /// stays here (counted `handover_failed.queue_pending`). Nothing is
    /// released yet: call [`Self::release_flows`] once the fds are out.
    pub(crate) fn export_flows(&mut self, now: Instant, ctx: &mut IoContext<'_>) -> FlowExport<'_> {
        self.stale = true;
        let held = self.held.get_or_insert_with(Vec::new);
        for (index, listener) in self.listeners.iter_mut() {
            if listener.is_reading() {
                held.push(index);
            }
            listener.send_only(ctx);
            listener.flush_returns(ctx);
            let busy = listener
                .flows
                .values()
                .filter(|io| io.upstream.as_ref().is_some_and(|u| !u.queue.is_empty()))
                .count();
            if busy > 0 {
                count_many(
                    ctx.metrics,
                    listener.address,
                    &HandoverFailure::QueuePending.metric(),
                    busy,
                );
            }
        }
        let mut export = FlowExport {
            manifest: FlowManifest::default(),
            fds: Vec::new(),
            flows: Vec::new(),
        };
        for (index, listener) in self.listeners.iter() {
            for (&flow, io) in &listener.flows {
                let Some(upstream) = io.upstream.as_ref().filter(|u| u.queue.is_empty()) else {
                    continue;
                };
                if listener.manager.flow_phase(flow) != Some(Phase::Established) {
                    continue;
                }
                let Some(handover) = listener.manager.handover_state(now, flow) else {
                    continue;
                };
                export
                    .manifest
                    .flows
                    .push(to_wire(listener.address, io.local, &handover));
                export.fds.push(upstream.socket.as_fd());
                export.flows.push((index, flow));
            }
        }
        export
    }

    /// Old worker: the fds of `flows` reached the master; each flow is
    /// released (closed here with `HandedOver`: its socket copy closes, no
    /// access record, counted `udp.flows.handed_over`).
    pub(crate) fn release_flows(
        &mut self,
        now: Instant,
        flows: &[(usize, FlowId)],
        ctx: &mut IoContext<'_>,
    ) {
        self.stale = true;
        for &(index, flow) in flows {
            let Some(listener) = self.listeners.get_mut(index) else {
                continue;
            };
            // Closing the socket below would not take it out of this
            // worker's epoll set: the file lives on in the successor, and
            // this set would keep waking for its datagrams.
            if let Some(upstream) = listener
                .flows
                .get_mut(&flow)
                .and_then(|io| io.upstream.as_mut())
            {
                if let Err(error) = ctx.registry.deregister(&mut upstream.socket) {
                    tracing::debug!(%error, %flow, "deregistering a handed-over socket");
                }
            }
            listener.manager.hand_over(now, flow);
        }
        for (_, listener) in self.listeners.iter_mut() {
            listener.drain(now, ctx);
        }
    }

    /// New worker, `adopt_listen_sockets` with `flows_follow`: keeps the
    /// received flows until `adopt_flows`, and reads no listener until then
    /// (a client datagram read before its flow is adopted would open a new
    /// upstream socket).
    pub(crate) fn hold_for_flows(&mut self, manifest: FlowManifest, fds: Vec<OwnedFd>) {
        self.stale = true;
        self.pending_flows = manifest.flows.into_iter().zip(fds).collect();
        self.held.get_or_insert_with(Vec::new);
    }

    /// Whether listeners are held until `adopt_flows`.
    #[cfg(test)]
    pub(crate) fn is_holding(&self) -> bool {
        self.held.is_some()
    }

    /// `adopt_flows`: adopts every flow received (an fd not adopted is
    /// closed and counted), then starts reading the held listeners and any
    /// listener the old worker stopped reading for a handover that failed
    /// (so the same order also gives a worker its flows back).
    pub(crate) fn adopt_flows(&mut self, now: Instant, ctx: &mut IoContext<'_>) -> AdoptReport {
        self.stale = true;
        let mut report = AdoptReport::default();
        for (wire, fd) in std::mem::take(&mut self.pending_flows) {
            match self.adopt_one(now, &wire, fd, ctx) {
                Ok(()) => report.adopted += 1,
                Err((listener, failure)) => {
                    *report.failed.entry(failure.as_str()).or_default() += 1;
                    let scope = listener.map_or(Scope::Proxy, Scope::Listener);
                    count_in(ctx.metrics, scope, &failure.metric(), 1);
                }
            }
        }
        for index in self.held.take().unwrap_or_default() {
            let Some(listener) = self.listeners.get_mut(index) else {
                continue;
            };
            if listener.has_socket() && !listener.is_reading() {
                if let Err(error) = listener.start_reading(ctx) {
                    tracing::error!(listener = %listener.address, %error, "cannot start reading after the flow handover");
                }
            }
        }
        report
    }

    fn adopt_one(
        &mut self,
        now: Instant,
        wire: &HandedOverFlow,
        fd: OwnedFd,
        ctx: &mut IoContext<'_>,
    ) -> Result<(), (Option<SocketAddr>, HandoverFailure)> {
        let (address, local, handover) = from_wire(wire).map_err(|error| {
            tracing::warn!(%error, "handed-over flow refused");
            let known = SocketAddr::try_from(&wire.listener)
                .ok()
                .filter(|a| self.by_address.contains_key(a));
            (known, HandoverFailure::BadEntry)
        })?;
        let Some(&index) = self.by_address.get(&address) else {
            // Counted worker-wide: a listener scope here would outlive
            // nothing it measures.
            return Err((None, HandoverFailure::NoListener));
        };
        let listener = &mut self.listeners[index];
        listener
            .adopt_flow(now, handover, local, fd, ctx)
            .map_err(|failure| (Some(address), failure))
    }
}

impl UdpListener {
    /// Adopts one handed-over flow with its connected upstream socket.
    fn adopt_flow(
        &mut self,
        now: Instant,
        handover: FlowHandover,
        local: Option<IpAddr>,
        fd: OwnedFd,
        ctx: &mut IoContext<'_>,
    ) -> Result<(), HandoverFailure> {
        let cluster = ClusterId::from(handover.cluster.as_str());
        let backend = BackendId::from(handover.backend.as_str());
        let flow = match self.manager.adopt(now, handover) {
            Ok(flow) => flow,
            Err(error) => {
                tracing::debug!(listener = %self.address, %error, "handed-over flow not adopted");
                // Dropping `fd` closes this worker's copy of the socket.
                return Err(HandoverFailure::from(&error));
            }
        };
        let registered = register_upstream(self.id, flow, fd, ctx);
        let mut io = FlowIo {
            local,
            cluster: Some(cluster.clone()),
            backend: Some(backend.clone()),
            ..FlowIo::default()
        };
        let result = match registered {
            Ok(upstream) => {
                // Replies that arrived while the socket was in flight wait
                // in its buffer; edge-triggered readiness would not report
                // them.
                ctx.still_readable.push(upstream.token);
                io.upstream = Some(upstream);
                io.metrics = FlowMetrics::register(ctx.metrics, &cluster, &backend);
                io.counted = ctx.backends.flow_opened(cluster.as_str(), backend.as_str());
                Ok(())
            }
            Err(error) => {
                tracing::warn!(listener = %self.address, %flow, %error, "adopted flow's socket not registered: flow aborted");
                io.abort = Some(FlowCloseReason::UpstreamOpenFailed);
                Err(HandoverFailure::Register)
            }
        };
        self.flows.insert(flow, io);
        // The core's outputs for this adoption: `FlowCreated` is an
        // adoption here, not a new flow (the predecessor counted its
        // creation); a flow whose caps were already reached closes at once.
        while let Some(output) = self.manager.poll_output() {
            match output {
                Output::Metric(MetricEvent::FlowCreated { .. }) => {
                    if result.is_ok() {
                        count(ctx.metrics, self.address, FLOWS_ADOPTED);
                    }
                }
                other => self.on_output(now, other, ctx),
            }
        }
        if result.is_err() {
            self.manager.abort_flow(now, flow, CloseReason::Aborted);
        }
        self.drain(now, ctx);
        result
    }
}

fn register_upstream(
    listener: usize,
    flow: FlowId,
    fd: OwnedFd,
    ctx: &mut IoContext<'_>,
) -> std::io::Result<Upstream> {
    let socket = std::net::UdpSocket::from(fd);
    socket.set_nonblocking(true)?;
    let mut socket = mio::net::UdpSocket::from_std(socket);
    let owner = UdpToken::Upstream { listener, flow };
    let token = register_readable(ctx.registry, ctx.tokens, &mut socket, owner)?;
    Ok(Upstream::new(socket, token))
}

#[cfg(test)]
mod tests;
