//! One-way forwarding in the shell: one connected socket per backend of a
//! one-way cluster, per listener, per worker, shared by every client.
//!
//! Owns those sockets: opened lazily by the first datagram for a backend,
//! reopened when the backend's address changes or after a send error,
//! closed when the backend or cluster goes away, the listener closes or the
//! cluster stops being one-way. Their tokens are registered readable only:
//! a backend's replies (there is no return path) are read and counted as
//! drops `one_way_reply`. It never decides anything about a datagram (the
//! core's [`crate::protocol::udp::ClientDecision::OneWay`] and the balancer
//! do), keeps no per-source state, and never allocates per datagram: the
//! socket of a backend is found by a scan of a few entries, and each run of
//! a receive batch's datagrams for one backend goes out with one `sendmmsg`,
//! PROXY header and payload as two iovecs of each datagram.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use mio::Token;
use slab::Slab;

use super::metrics::{OneWayMetrics, ShellDrop};
use super::mmsg::{recv_connected, send_connected_batch};
use super::socket::{is_resource_exhaustion, register_readable, SourceAddresses};
use super::UdpToken;
use crate::backends::{BackendId, ClusterId};
use crate::metrics::MetricsRegistry;
use crate::token_table::TokenTable;

/// Replies read from one one-way socket per wake-up before the loop moves
/// on (it comes back: the token goes to `still_readable`).
const REPLY_BUDGET: usize = 64;

/// What became of a run of datagrams handed to
/// [`OneWaySockets::send_run`] (already counted on the backend; the caller
/// counts them on the listener).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct RunOutcome {
    /// Datagrams the kernel took.
    pub sent: usize,
    /// Their payload bytes (PROXY headers excluded).
    pub bytes: usize,
    /// Dropped: the socket would block (no queue on this path).
    pub would_block: usize,
    /// Dropped: the kernel refused them (refusals included).
    pub send_error: usize,
    /// The backend refused (an earlier datagram's ICMP port unreachable,
    /// reported as `ECONNREFUSED`): the caller marks it suspect.
    pub refused: bool,
}

#[derive(Debug)]
struct OneWaySocket {
    cluster: ClusterId,
    backend: BackendId,
    addr: SocketAddr,
    socket: mio::net::UdpSocket,
    token: Token,
    metrics: OneWayMetrics,
}

/// The one-way sockets of one listener.
#[derive(Debug)]
pub(crate) struct OneWaySockets {
    listener: usize,
    sockets: Slab<OneWaySocket>,
}

impl OneWaySockets {
    /// No socket yet, for the listener at index `listener` of the shell.
    pub(crate) fn new(listener: usize) -> Self {
        OneWaySockets {
            listener,
            sockets: Slab::new(),
        }
    }

    /// Open one-way sockets (one per backend that got a datagram).
    pub(crate) fn len(&self) -> usize {
        self.sockets.len()
    }

    /// The slot of `backend`'s socket (of `cluster`, at `addr`), opened
    /// first if needed: a new backend, or one whose address changed (re-added
    /// elsewhere), gets a new socket. `Err(NoUpstream)` if it cannot be
    /// opened (counted on the backend).
    pub(crate) fn slot_for(
        &mut self,
        cluster: &ClusterId,
        backend: &BackendId,
        addr: SocketAddr,
        sources: &mut SourceAddresses,
        ctx: &mut OneWayContext<'_>,
    ) -> Result<usize, ShellDrop> {
        let found = self.find(cluster, backend);
        if let Some(slot) = found.filter(|&slot| self.sockets[slot].addr == addr) {
            return Ok(slot);
        }
        if let Some(slot) = found {
            self.close(slot, ctx.tokens);
        }
        self.open(cluster, backend, addr, sources, ctx)
            .map_err(|error| {
                if is_resource_exhaustion(&error) {
                    tracing::warn!(%cluster, %backend, %error, "out of sockets: one-way datagram dropped");
                } else {
                    tracing::debug!(%cluster, %backend, %error, "one-way socket open failed");
                }
                ShellDrop::NoUpstream
            })
    }

    /// Sends a run of `count` datagrams, `part(i)` = `(header?, payload)`,
    /// on the socket at `slot` with `sendmmsg` batches (two iovecs per
    /// datagram, no copy). What would block is dropped, not queued; after
    /// an error other than would-block or a refusal the socket is closed
    /// (the next datagram for the backend reopens it) and the rest of the
    /// run is dropped.
    pub(crate) fn send_run<'a>(
        &mut self,
        slot: usize,
        count: usize,
        part: impl Fn(usize) -> (Option<&'a [u8]>, &'a [u8]),
        ctx: &mut OneWayContext<'_>,
    ) -> RunOutcome {
        let mut outcome = RunOutcome::default();
        let Some(entry) = self.sockets.get(slot) else {
            outcome.send_error = count;
            return outcome;
        };
        let fd = entry.socket.as_raw_fd();
        let mut close = false;
        let mut next = 0;
        while next < count {
            match send_connected_batch(fd, count - next, |j| part(next + j)) {
                Ok(0) => {
                    outcome.would_block += count - next;
                    break;
                }
                Ok(n) => {
                    outcome.sent += n;
                    outcome.bytes += (next..next + n).map(|k| part(k).1.len()).sum::<usize>();
                    next += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    outcome.would_block += count - next;
                    break;
                }
                Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
                    // The socket is still good: the error was a past
                    // datagram's, and this one was not sent.
                    outcome.refused = true;
                    outcome.send_error += 1;
                    next += 1;
                }
                Err(error) => {
                    tracing::debug!(cluster = %entry.cluster, backend = %entry.backend, %error, "one-way send error: socket reopened on the next datagram");
                    outcome.send_error += count - next;
                    close = true;
                    break;
                }
            }
        }
        let metrics = entry.metrics;
        metrics
            .traffic
            .count_in_many(ctx.metrics, outcome.sent, outcome.bytes);
        if outcome.would_block > 0 {
            metrics.dropped(ctx.metrics, ShellDrop::WouldBlock, outcome.would_block);
        }
        if outcome.send_error > 0 {
            metrics.dropped(ctx.metrics, ShellDrop::SendError, outcome.send_error);
        }
        if close {
            self.close(slot, ctx.tokens);
        }
        outcome
    }

    /// The socket at `slot` is readable: reads (and discards) up to a
    /// budget of replies. Returns how many were dropped, and whether the
    /// backend refused (`ECONNREFUSED` read back: mark it suspect).
    pub(crate) fn on_readable(
        &mut self,
        slot: usize,
        ctx: &mut OneWayContext<'_>,
    ) -> (usize, bool) {
        let Some(entry) = self.sockets.get(slot) else {
            return (0, false); // closed meanwhile: a stale event
        };
        let fd = entry.socket.as_raw_fd();
        // Only the length matters: MSG_TRUNC reads (and discards) the rest.
        let mut buf = [0u8; 1];
        let mut dropped = 0;
        let mut refused = false;
        for _ in 0..REPLY_BUDGET {
            match recv_connected(fd, &mut buf) {
                Ok(_) => dropped += 1,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
                    refused = true;
                    break;
                }
                Err(error) => {
                    tracing::debug!(cluster = %entry.cluster, backend = %entry.backend, %error, "one-way receive error");
                    break;
                }
            }
        }
        if dropped == REPLY_BUDGET {
            ctx.still_readable.push(entry.token);
        }
        if dropped > 0 {
            entry
                .metrics
                .dropped(ctx.metrics, ShellDrop::OneWayReply, dropped);
        }
        (dropped, refused)
    }

    /// The cluster and backend of the socket at `slot`.
    pub(crate) fn backend_of(&self, slot: usize) -> Option<(&ClusterId, &BackendId)> {
        self.sockets.get(slot).map(|e| (&e.cluster, &e.backend))
    }

    /// Closes the socket of a removed backend.
    pub(crate) fn forget_backend(
        &mut self,
        cluster: &str,
        backend: &str,
        tokens: &mut dyn TokenTable<UdpToken>,
    ) {
        if let Some(slot) = self.sockets.iter().find_map(|(slot, e)| {
            (e.cluster.as_str() == cluster && e.backend.as_str() == backend).then_some(slot)
        }) {
            self.close(slot, tokens);
        }
    }

    /// Closes the sockets of every backend not in `keep` (a cluster removed,
    /// switched to flows, or no longer the listener's).
    pub(crate) fn retain_cluster(
        &mut self,
        keep: Option<&str>,
        tokens: &mut dyn TokenTable<UdpToken>,
    ) {
        let doomed: Vec<usize> = self
            .sockets
            .iter()
            .filter(|(_, e)| Some(e.cluster.as_str()) != keep)
            .map(|(slot, _)| slot)
            .collect();
        for slot in doomed {
            self.close(slot, tokens);
        }
    }

    /// Closes every socket (listener closed, deactivated, hard-stop).
    pub(crate) fn close_all(&mut self, tokens: &mut dyn TokenTable<UdpToken>) {
        self.retain_cluster(None, tokens);
    }

    fn find(&self, cluster: &ClusterId, backend: &BackendId) -> Option<usize> {
        self.sockets
            .iter()
            .find(|(_, e)| e.backend == *backend && e.cluster == *cluster)
            .map(|(slot, _)| slot)
    }

    fn open(
        &mut self,
        cluster: &ClusterId,
        backend: &BackendId,
        addr: SocketAddr,
        sources: &mut SourceAddresses,
        ctx: &mut OneWayContext<'_>,
    ) -> io::Result<usize> {
        let mut socket = sources.open(addr)?;
        let entry = self.sockets.vacant_entry();
        let slot = entry.key();
        let owner = UdpToken::OneWay {
            listener: self.listener,
            slot,
        };
        let token = register_readable(ctx.registry, ctx.tokens, &mut socket, owner)?;
        let metrics = OneWayMetrics::register(ctx.metrics, cluster, backend);
        tracing::debug!(%cluster, %backend, %addr, "one-way socket opened");
        entry.insert(OneWaySocket {
            cluster: cluster.clone(),
            backend: backend.clone(),
            addr,
            socket,
            token,
            metrics,
        });
        Ok(slot)
    }

    fn close(&mut self, slot: usize, tokens: &mut dyn TokenTable<UdpToken>) {
        if let Some(entry) = self.sockets.try_remove(slot) {
            // Closing the fd (never duplicated) removes it from the epoll
            // set; a readiness event already fetched finds no owner.
            tokens.remove(entry.token);
            tracing::debug!(cluster = %entry.cluster, backend = %entry.backend, "one-way socket closed");
        }
    }
}

/// What the one-way sockets borrow from the worker for one call.
pub(crate) struct OneWayContext<'a> {
    /// The poll registry.
    pub registry: &'a mio::Registry,
    /// The token table.
    pub tokens: &'a mut dyn TokenTable<UdpToken>,
    /// The metrics registry.
    pub metrics: &'a mut MetricsRegistry,
    /// Tokens whose socket stopped at the budget before WouldBlock.
    pub still_readable: &'a mut Vec<Token>,
}
