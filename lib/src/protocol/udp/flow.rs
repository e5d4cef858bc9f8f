//! One flow's state: key, client, captured cluster knobs, backend, pending
//! FIFO, counters and timer bookkeeping.
//!
//! Owns per-flow data and the arithmetic on it (caps, PROXY header choice,
//! the pending bound). Must never decide admission or emit outputs: the
//! manager does.

use std::{
    collections::VecDeque,
    net::SocketAddr,
    num::{NonZeroU32, NonZeroUsize},
    time::{Duration, Instant},
};

use super::{
    key::FlowKey,
    ppv2::ProxyHeader,
    types::{BackendId, ClusterId, FlowRecord, Phase},
};

/// The cluster knobs a flow captured at admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FlowKnobs {
    pub(crate) responses: Option<NonZeroU32>,
    pub(crate) requests: Option<NonZeroU32>,
    pub(crate) front_timeout: Duration,
    pub(crate) back_timeout: Duration,
    pub(crate) send_proxy_protocol: bool,
    pub(crate) proxy_protocol_every_datagram: bool,
    pub(crate) max_pending_datagrams: NonZeroUsize,
    pub(crate) max_pending_bytes: NonZeroUsize,
}

/// A live flow (never a closed one: closing removes it from the slab).
#[derive(Debug)]
pub(crate) struct Flow {
    pub(crate) key: FlowKey,
    /// A second key mapping to this flow: the QUIC connection ID joined to a
    /// handshake flow keyed by address (see the manager's admission).
    pub(crate) alias: Option<FlowKey>,
    pub(crate) generation: u32,
    pub(crate) client: SocketAddr,
    pub(crate) phase: Phase,
    pub(crate) cluster: ClusterId,
    pub(crate) knobs: FlowKnobs,
    pub(crate) backend: Option<(BackendId, SocketAddr)>,
    pub(crate) proxy_header_sent: bool,
    pub(crate) pending: VecDeque<Vec<u8>>,
    pub(crate) pending_bytes: usize,
    pub(crate) requests: u64,
    pub(crate) bytes_in: u64,
    pub(crate) responses: u64,
    pub(crate) bytes_out: u64,
    pub(crate) dropped: u64,
    pub(crate) created: Instant,
    /// The true idle deadline.
    pub(crate) deadline: Instant,
    /// The deadline of this flow's one valid heap entry (`<= deadline`).
    pub(crate) armed: Instant,
    /// The sequence number of that entry.
    pub(crate) timer_seq: u32,
}

/// Outcome of buffering a datagram on an awaiting flow.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Evicted {
    pub(crate) datagrams: u32,
    pub(crate) bytes: u64,
}

impl Flow {
    /// Buffers `payload`, dropping the oldest datagrams while either bound
    /// would be exceeded. A datagram larger than the byte bound on its own is
    /// still kept (alone), so buffering never refuses the newest datagram.
    pub(crate) fn enqueue(&mut self, payload: &[u8]) -> Evicted {
        let mut evicted = Evicted::default();
        while !self.pending.is_empty()
            && (self.pending.len() >= self.knobs.max_pending_datagrams.get()
                || self.pending_bytes + payload.len() > self.knobs.max_pending_bytes.get())
        {
            if let Some(old) = self.pending.pop_front() {
                self.pending_bytes -= old.len();
                evicted.datagrams += 1;
                evicted.bytes += old.len() as u64;
            }
        }
        self.pending_bytes += payload.len();
        self.pending.push_back(payload.to_vec());
        self.dropped += u64::from(evicted.datagrams);
        evicted
    }

    /// The PROXY header the next datagram to the backend carries, if any, and
    /// records that the first one went out.
    pub(crate) fn next_proxy_header(&mut self, listener: SocketAddr) -> Option<ProxyHeader> {
        if !self.knobs.send_proxy_protocol
            || (self.proxy_header_sent && !self.knobs.proxy_protocol_every_datagram)
        {
            return None;
        }
        self.proxy_header_sent = true;
        Some(ProxyHeader::new(self.client, listener))
    }

    /// The requests cap is reached.
    pub(crate) fn is_requests_exhausted(&self) -> bool {
        self.knobs
            .requests
            .is_some_and(|cap| self.requests >= u64::from(cap.get()))
    }

    /// The responses the backend owes: `responses = N` per forwarded
    /// request (nginx's `proxy_responses`), `None` without a responses cap.
    /// Saturating, so a long-lived flow never overflows.
    pub(crate) fn responses_owed(&self) -> Option<u64> {
        self.knobs
            .responses
            .map(|n| self.requests.saturating_mul(u64::from(n.get())))
    }

    /// Every forwarded request got its N responses (and at least one request
    /// was forwarded: an awaiting flow owes nothing yet but is not done).
    pub(crate) fn is_responses_exhausted(&self) -> bool {
        self.requests > 0
            && self
                .responses_owed()
                .is_some_and(|owed| self.responses >= owed)
    }

    /// Why the flow must close now because of its caps, if it must. With a
    /// responses cap the flow closes when every forwarded request is
    /// answered (a requests cap then only stops forwarding); without one, at
    /// the requests cap.
    pub(crate) fn cap_teardown(&self) -> Option<super::types::CloseReason> {
        if self.is_responses_exhausted() {
            Some(super::types::CloseReason::ResponsesReached)
        } else if self.knobs.responses.is_none() && self.is_requests_exhausted() {
            Some(super::types::CloseReason::RequestsReached)
        } else {
            None
        }
    }

    /// The access record, at close time.
    pub(crate) fn record(&self, closed: Instant) -> FlowRecord {
        FlowRecord {
            key: self.key,
            client: self.client,
            cluster: self.cluster.clone(),
            backend: self.backend.as_ref().map(|(id, _)| id.clone()),
            backend_addr: self.backend.as_ref().map(|(_, addr)| *addr),
            datagrams_in: self.requests,
            bytes_in: self.bytes_in,
            datagrams_out: self.responses,
            bytes_out: self.bytes_out,
            datagrams_dropped: self.dropped,
            created: self.created,
            closed,
        }
    }
}
