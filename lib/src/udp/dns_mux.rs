//! DNS query-ID multiplexing in the shell (`flow_key = "DNS_ID"`): a few
//! connected sockets per backend, per listener, per worker, shared by every
//! client's queries.
//!
//! Owns those sockets (opened lazily by the first query for a backend,
//! another one only when every open one has `max_pending_per_socket`
//! queries pending, at most [`MAX_SOCKETS_PER_BACKEND`]; closed when the
//! backend is removed or moves, the cluster stops being `DNS_ID`, the
//! listener closes), their tokens, and the pure pending-query core
//! ([`crate::protocol::udp::DnsIdMux`]): the core rewrites IDs and maps
//! answers back, this file only moves bytes and counts. It never decides
//! which client an answer goes to, keeps no per-client state beyond the
//! core's pending entries, and never allocates per datagram: the socket of a
//! backend is found by a scan of a few entries and each backend's queries of
//! a receive batch leave with one `sendmmsg` (PROXY header and payload as
//! two iovecs, the ID rewritten in the receive buffer).
//!
//! Answers are read by the listener (`UdpListener::on_dns_readable`) straight
//! into its batch of client-bound datagrams, through [`DnsMux::answer`].
//!
//! Each socket is opened for one backend's [`PendingQueries`] count (the
//! balancer's load for LEAST_LOADED and POWER_OF_TWO), which the core moves
//! as queries start and end; a socket is used only by the backend entry
//! whose count it carries (a backend removed and added again under the same
//! id gets new sockets), so no query is ever counted on a backend that no
//! longer exists while its successor looks idle.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroUsize;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Instant;

use mio::Token;
use slab::Slab;

use super::metrics::{ListenerMetrics, OneWayMetrics, ShellDrop};
use super::mmsg::{send_connected_batch, RecvBatch};
use super::one_way::OneWayContext;
use super::socket::{is_resource_exhaustion, register_readable, SourceAddresses};
use super::UdpToken;
use crate::backends::{BackendId, ClusterId};
use crate::metrics::MetricsRegistry;
use crate::protocol::udp::{
    AnswerDecision, DnsDrop, DnsIdMux, PendingQueries, ProxyHeader, QueryDecision,
    DEFAULT_MAX_PENDING_PER_SOCKET,
};
use crate::token_table::TokenTable;

/// Most sockets one backend gets on one listener of one worker: a new one
/// opens only when every open one is full of pending queries.
pub(crate) const MAX_SOCKETS_PER_BACKEND: usize = 4;

#[derive(Debug)]
struct MuxSocket {
    cluster: ClusterId,
    backend: BackendId,
    addr: SocketAddr,
    /// The backend's pending-query count this socket's queries move.
    load: PendingQueries,
    socket: mio::net::UdpSocket,
    token: Token,
    metrics: OneWayMetrics,
}

/// One query of the receive batch being routed.
#[derive(Debug, Clone, Copy)]
struct Routed {
    slot: usize,
    index: usize,
    id: u16,
    header: Option<ProxyHeader>,
}

/// The DNS sockets and pending queries of one listener.
#[derive(Debug)]
pub(crate) struct DnsMux {
    listener: usize,
    core: DnsIdMux,
    sockets: Slab<MuxSocket>,
    run: Vec<Routed>,
}

impl DnsMux {
    /// No socket yet, for the listener at index `listener`; `seed` (secret,
    /// per process) keys the IDs put on the wire.
    pub(crate) fn new(listener: usize, seed: u64) -> Self {
        let max = NonZeroUsize::new(DEFAULT_MAX_PENDING_PER_SOCKET).unwrap_or(NonZeroUsize::MIN);
        DnsMux {
            listener,
            core: DnsIdMux::new(seed, max),
            sockets: Slab::new(),
            run: Vec::with_capacity(super::mmsg::MAX_BATCH),
        }
    }

    /// Open DNS sockets.
    pub(crate) fn sockets(&self) -> usize {
        self.sockets.len()
    }

    /// Queries waiting for their answer.
    pub(crate) fn pending(&self) -> usize {
        self.core.pending()
    }

    /// The earliest deadline of a pending query.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.core.poll_timeout()
    }

    /// Expires the queries due at `now`: each counted `dns_expired` on the
    /// listener and its backend. The client gets nothing (its resolver
    /// retries, as after any lost datagram).
    pub(crate) fn handle_timeout(
        &mut self,
        now: Instant,
        listener: &ListenerMetrics,
        metrics: &mut MetricsRegistry,
    ) {
        let sockets = &self.sockets;
        let expired = self.core.handle_timeout(now, |slot| {
            if let Some(s) = sockets.get(slot) {
                s.metrics.dropped(metrics, ShellDrop::DnsExpired, 1);
            }
        });
        if expired > 0 {
            listener.shell_dropped_many(metrics, ShellDrop::DnsExpired, expired);
        }
    }

    /// Routes one query (`payload`, receive-batch `index`) to `backend` (of
    /// `cluster`, at `addr`, its pending queries counted by `load`): picks
    /// or opens a socket of the backend with room, rewrites the ID in place
    /// (the query now counts on the backend) and queues it for
    /// [`Self::flush`].
    /// `Err` is the drop to count on the listener (already counted on the
    /// backend when there is one).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn route(
        &mut self,
        deadline: Instant,
        target: (&ClusterId, &BackendId, SocketAddr, &PendingQueries),
        client: SocketAddr,
        local: Option<IpAddr>,
        payload: &mut [u8],
        index: usize,
        header: Option<ProxyHeader>,
        sources: &mut SourceAddresses,
        ctx: &mut OneWayContext<'_>,
    ) -> Result<(), ShellDrop> {
        let slot = self.slot_for(target, sources, ctx)?;
        match self.core.on_query(slot, deadline, client, local, payload) {
            QueryDecision::Forward { id } => {
                self.run.push(Routed {
                    slot,
                    index,
                    id,
                    header,
                });
                Ok(())
            }
            QueryDecision::Dropped(reason) => {
                let reason = ShellDrop::from(reason);
                self.sockets[slot].metrics.dropped(ctx.metrics, reason, 1);
                Err(reason)
            }
        }
    }

    /// A socket of the backend with room for one more query, opened if
    /// needed. A socket whose backend moved (another address, or another
    /// backend entry under the same id) is closed first.
    fn slot_for(
        &mut self,
        (cluster, backend, addr, load): (&ClusterId, &BackendId, SocketAddr, &PendingQueries),
        sources: &mut SourceAddresses,
        ctx: &mut OneWayContext<'_>,
    ) -> Result<usize, ShellDrop> {
        let mut open = 0;
        let mut moved = None;
        let mut room = None;
        for (slot, s) in self.sockets.iter() {
            if s.backend != *backend || s.cluster != *cluster {
                continue;
            }
            if s.addr != addr || !s.load.is_same(load) {
                moved = Some(slot);
                continue;
            }
            open += 1;
            if room.is_none() && self.core.has_room(slot) {
                room = Some(slot);
            }
        }
        if let Some(slot) = moved {
            self.close(slot, ctx.tokens, ctx.metrics);
        }
        if let Some(slot) = room {
            return Ok(slot);
        }
        if open >= MAX_SOCKETS_PER_BACKEND {
            return Err(ShellDrop::DnsPendingFull);
        }
        self.open((cluster, backend, addr, load), sources, ctx)
            .map_err(|error| {
                if is_resource_exhaustion(&error) {
                    tracing::warn!(%cluster, %backend, %error, "out of sockets: DNS query dropped");
                } else {
                    tracing::debug!(%cluster, %backend, %error, "DNS socket open failed");
                }
                ShellDrop::NoUpstream
            })
    }

    /// Sends the routed queries of the batch: sorted by socket (receive
    /// order kept within one), one `sendmmsg` per socket. A query that does
    /// not leave is dropped (`would_block` / `send_error`) and its ID freed
    /// at once. Returns the sockets whose backend refused (`ECONNREFUSED`:
    /// mark suspect) through `refused`.
    pub(crate) fn flush(
        &mut self,
        recv: &RecvBatch,
        listener: &ListenerMetrics,
        ctx: &mut OneWayContext<'_>,
        mut refused: impl FnMut(&ClusterId, &BackendId),
    ) {
        if self.run.is_empty() {
            return;
        }
        self.run.sort_unstable_by_key(|r| (r.slot, r.index));
        let mut start = 0;
        while start < self.run.len() {
            let slot = self.run[start].slot;
            let end = self.run[start..]
                .iter()
                .position(|r| r.slot != slot)
                .map_or(self.run.len(), |n| start + n);
            let Some(entry) = self.sockets.get(slot) else {
                for r in &self.run[start..end] {
                    self.core.cancel(r.slot, r.id);
                }
                listener.shell_dropped_many(ctx.metrics, ShellDrop::NoUpstream, end - start);
                start = end;
                continue;
            };
            let run = &self.run[start..end];
            let part = |j: usize| {
                let r = &run[j];
                let payload = recv.get(r.index).map_or(&[][..], |d| d.payload);
                (r.header.as_ref().map(|h| h.as_bytes()), payload)
            };
            let (sent, bytes, failed, was_refused) =
                send_all(entry.socket.as_raw_fd(), run.len(), part);
            entry
                .metrics
                .traffic
                .count_in_many(ctx.metrics, sent, bytes);
            listener.traffic.count_in_many(ctx.metrics, sent, bytes);
            if let Some((reason, from)) = failed {
                let n = run.len() - from;
                for r in &run[from..] {
                    self.core.cancel(r.slot, r.id);
                }
                entry.metrics.dropped(ctx.metrics, reason, n);
                listener.shell_dropped_many(ctx.metrics, reason, n);
            }
            if was_refused {
                listener.backend_refused(ctx.metrics);
                refused(&entry.cluster, &entry.backend);
            }
            start = end;
        }
        self.run.clear();
    }

    /// The fd and backend of the socket at `slot` (to read its answers).
    pub(crate) fn socket(&self, slot: usize) -> Option<(RawFd, Token, &ClusterId, &BackendId)> {
        self.sockets
            .get(slot)
            .map(|s| (s.socket.as_raw_fd(), s.token, &s.cluster, &s.backend))
    }

    /// One answer read on the socket at `slot`: restored and mapped to its
    /// client by the core, counted here (traffic out on the backend; a drop
    /// by reason on the backend and `listener`).
    pub(crate) fn answer(
        &mut self,
        now: Instant,
        slot: usize,
        payload: &mut [u8],
        listener: &ListenerMetrics,
        metrics: &mut MetricsRegistry,
    ) -> AnswerDecision {
        let len = payload.len();
        let decision = self.core.on_answer(now, slot, payload);
        let Some(entry) = self.sockets.get(slot) else {
            return decision;
        };
        match decision {
            AnswerDecision::Return { .. } => entry.metrics.traffic.count_out(metrics, len),
            AnswerDecision::Dropped(reason) => {
                let reason = ShellDrop::from(reason);
                entry.metrics.dropped(metrics, reason, 1);
                listener.shell_dropped(metrics, reason);
            }
        }
        decision
    }

    /// Closes the sockets of a removed backend: its pending queries are
    /// counted `dns_socket_closed`.
    pub(crate) fn forget_backend(
        &mut self,
        cluster: &str,
        backend: &str,
        tokens: &mut dyn TokenTable<UdpToken>,
        listener: &ListenerMetrics,
        metrics: &mut MetricsRegistry,
    ) {
        self.retain(
            |c, b| !(c == cluster && b == backend),
            tokens,
            listener,
            metrics,
        );
    }

    /// Closes the sockets of every backend outside `keep` (cluster removed,
    /// no longer `DNS_ID`, or no longer the listener's).
    pub(crate) fn retain_cluster(
        &mut self,
        keep: Option<&str>,
        tokens: &mut dyn TokenTable<UdpToken>,
        listener: &ListenerMetrics,
        metrics: &mut MetricsRegistry,
    ) {
        self.retain(|c, _| Some(c) == keep, tokens, listener, metrics);
    }

    fn retain(
        &mut self,
        keep: impl Fn(&str, &str) -> bool,
        tokens: &mut dyn TokenTable<UdpToken>,
        listener: &ListenerMetrics,
        metrics: &mut MetricsRegistry,
    ) {
        let mut slot = 0;
        let end = self.sockets.capacity();
        while slot < end {
            let doomed = self
                .sockets
                .get(slot)
                .is_some_and(|s| !keep(s.cluster.as_str(), s.backend.as_str()));
            if doomed {
                let dropped = self.close(slot, tokens, metrics);
                listener.shell_dropped_many(metrics, ShellDrop::DnsSocketClosed, dropped);
            }
            slot += 1;
        }
    }

    fn open(
        &mut self,
        (cluster, backend, addr, load): (&ClusterId, &BackendId, SocketAddr, &PendingQueries),
        sources: &mut SourceAddresses,
        ctx: &mut OneWayContext<'_>,
    ) -> io::Result<usize> {
        let mut socket = sources.open(addr)?;
        let entry = self.sockets.vacant_entry();
        let slot = entry.key();
        let owner = UdpToken::DnsMux {
            listener: self.listener,
            slot,
        };
        let token = register_readable(ctx.registry, ctx.tokens, &mut socket, owner)?;
        let metrics = OneWayMetrics::register(ctx.metrics, cluster, backend);
        tracing::debug!(%cluster, %backend, %addr, slot, "DNS socket opened");
        entry.insert(MuxSocket {
            cluster: cluster.clone(),
            backend: backend.clone(),
            addr,
            load: load.clone(),
            socket,
            token,
            metrics,
        });
        self.core.open_socket(slot, load.clone());
        Ok(slot)
    }

    /// Closes the socket at `slot`; returns how many pending queries it
    /// held (counted `dns_socket_closed` on its backend here, on the
    /// listener by the caller).
    fn close(
        &mut self,
        slot: usize,
        tokens: &mut dyn TokenTable<UdpToken>,
        metrics: &mut MetricsRegistry,
    ) -> usize {
        let Some(entry) = self.sockets.try_remove(slot) else {
            return 0;
        };
        // Closing the fd (never duplicated) removes it from the epoll set; a
        // readiness event already fetched finds no owner.
        tokens.remove(entry.token);
        let dropped = self.core.close_socket(slot);
        entry
            .metrics
            .dropped(metrics, ShellDrop::DnsSocketClosed, dropped);
        tracing::debug!(cluster = %entry.cluster, backend = %entry.backend, dropped, "DNS socket closed");
        dropped
    }
}

/// Sends `count` datagrams on a connected socket with `sendmmsg` batches.
/// Returns (sent, payload bytes sent, the reason and index of the first
/// datagram not sent, whether a refusal was reported). A refusal
/// (`ECONNREFUSED`, an earlier datagram's ICMP) drops only the datagram at
/// hand; would-block or another error drops the rest of the run.
type Failure = Option<(ShellDrop, usize)>;

fn send_all<'a>(
    fd: RawFd,
    count: usize,
    part: impl Fn(usize) -> (Option<&'a [u8]>, &'a [u8]),
) -> (usize, usize, Failure, bool) {
    let mut sent = 0;
    let mut bytes = 0;
    let mut refused = false;
    let mut next = 0;
    while next < count {
        match send_connected_batch(fd, count - next, |j| part(next + j)) {
            Ok(0) => return (sent, bytes, Some((ShellDrop::WouldBlock, next)), refused),
            Ok(n) => {
                sent += n;
                bytes += (next..next + n).map(|k| part(k).1.len()).sum::<usize>();
                next += n;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return (sent, bytes, Some((ShellDrop::WouldBlock, next)), refused);
            }
            Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) && !refused => {
                // The error was a past datagram's; retry this one once.
                refused = true;
            }
            Err(error) => {
                tracing::debug!(%error, "DNS query send error");
                return (sent, bytes, Some((ShellDrop::SendError, next)), refused);
            }
        }
    }
    (sent, bytes, None, refused)
}

impl From<DnsDrop> for ShellDrop {
    fn from(reason: DnsDrop) -> Self {
        match reason {
            DnsDrop::NotDns => ShellDrop::DnsNotDns,
            DnsDrop::PendingFull => ShellDrop::DnsPendingFull,
            DnsDrop::UnknownId => ShellDrop::DnsUnknownId,
            DnsDrop::Mismatch => ShellDrop::DnsMismatch,
            DnsDrop::Late => ShellDrop::DnsLate,
            DnsDrop::Expired => ShellDrop::DnsExpired,
            DnsDrop::SocketClosed => ShellDrop::DnsSocketClosed,
        }
    }
}
