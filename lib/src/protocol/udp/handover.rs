//! Handing live flows over between workers during a binary upgrade: the old
//! worker's manager releases an established flow as a portable
//! [`FlowHandover`] (no `Instant`: times are durations relative to `now`),
//! the shell passes it with the flow's upstream socket to the new worker,
//! whose manager adopts it. The flow keeps its backend, its source port, its
//! captured knobs and its counters.
//!
//! Owns the conversion only; must never touch sockets (the shell moves the
//! file descriptor) nor read a clock.

use std::{
    collections::VecDeque,
    net::SocketAddr,
    num::NonZeroU32,
    time::{Duration, Instant},
};

use super::{
    flow::{Flow, FlowKnobs},
    key::{FlowKey, FlowKeyExtractor},
    manager::{deadline_after, UdpFlowManager},
    timers::TimerEntry,
    types::{BackendId, CloseReason, ClusterId, FlowId, MetricEvent, Output, Phase},
};

/// The portable state of an established flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowHandover {
    /// The flow key.
    pub key: FlowKey,
    /// The client address replies go to.
    pub client: SocketAddr,
    /// The cluster captured at admission.
    pub cluster: ClusterId,
    /// The backend.
    pub backend: BackendId,
    /// The backend address (the upstream socket is connected to it).
    pub backend_addr: SocketAddr,
    /// Captured responses cap.
    pub responses_cap: Option<NonZeroU32>,
    /// Captured requests cap.
    pub requests_cap: Option<NonZeroU32>,
    /// Captured front timeout.
    pub front_timeout: Duration,
    /// Captured back timeout.
    pub back_timeout: Duration,
    /// Captured PROXY protocol setting.
    pub send_proxy_protocol: bool,
    /// Captured PROXY protocol mode.
    pub proxy_protocol_every_datagram: bool,
    /// The first PROXY header already went out.
    pub proxy_header_sent: bool,
    /// Client datagrams forwarded so far.
    pub datagrams_in: u64,
    /// Their bytes.
    pub bytes_in: u64,
    /// Backend datagrams returned so far.
    pub datagrams_out: u64,
    /// Their bytes.
    pub bytes_out: u64,
    /// Client datagrams dropped so far.
    pub datagrams_dropped: u64,
    /// Time left before the idle deadline.
    pub idle_remaining: Duration,
    /// How long the flow has lived.
    pub age: Duration,
}

/// Why a handed-over flow was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdoptError {
    /// Another flow already holds the key.
    #[error("flow key {key:?} is already tracked by flow {existing}")]
    KeyTaken {
        /// The key.
        key: FlowKey,
        /// The flow holding it.
        existing: FlowId,
    },
    /// The table is full.
    #[error("the listener is at max_flows = {max_flows}")]
    AtCapacity {
        /// The cap in force.
        max_flows: usize,
    },
    /// The listener is draining and admits nothing.
    #[error("the listener is draining")]
    Draining,
}

impl<E: FlowKeyExtractor> UdpFlowManager<E> {
    /// Releases an established flow for another worker: returns its portable
    /// state and closes it here with reason `HandedOver` (`FlowEvicted` then
    /// `CloseFlow`, whose record ends this worker's share of the flow). The
    /// shell sends the upstream socket to the new worker before closing its
    /// own copy. `None` (and nothing emitted) for an unknown flow or one
    /// still awaiting its backend (it has no socket to hand over).
    pub fn hand_over(&mut self, now: Instant, flow: FlowId) -> Option<FlowHandover> {
        let handover = self.handover_state(now, flow);
        if handover.is_some() {
            self.close_flow(now, flow, CloseReason::HandedOver);
        }
        self.finish_mutation();
        handover
    }

    /// The portable state [`Self::hand_over`] would return, without
    /// releasing the flow: the shell builds its manifest from it, passes the
    /// sockets, and calls `hand_over` only once they are out (so a failed
    /// pass leaves the flow here, served as before). `None` for an unknown
    /// flow or one still awaiting its backend.
    pub fn handover_state(&self, now: Instant, id: FlowId) -> Option<FlowHandover> {
        let flow = self.flow(id)?;
        let (backend, backend_addr) = flow.backend.clone()?;
        Some(FlowHandover {
            key: flow.key,
            client: flow.client,
            cluster: flow.cluster.clone(),
            backend,
            backend_addr,
            responses_cap: flow.knobs.responses,
            requests_cap: flow.knobs.requests,
            front_timeout: flow.knobs.front_timeout,
            back_timeout: flow.knobs.back_timeout,
            send_proxy_protocol: flow.knobs.send_proxy_protocol,
            proxy_protocol_every_datagram: flow.knobs.proxy_protocol_every_datagram,
            proxy_header_sent: flow.proxy_header_sent,
            datagrams_in: flow.requests,
            bytes_in: flow.bytes_in,
            datagrams_out: flow.responses,
            bytes_out: flow.bytes_out,
            datagrams_dropped: flow.dropped,
            idle_remaining: flow.deadline.saturating_duration_since(now),
            age: now.saturating_duration_since(flow.created),
        })
    }

    /// Adopts a flow handed over by another worker, already established: no
    /// `SelectBackend` nor `OpenUpstream` (the shell registers the received
    /// upstream socket under the returned id); emits `FlowCreated`. Honours
    /// draining and `max_flows`. A flow whose caps are already exhausted is
    /// adopted and closed at once with the matching reason.
    pub fn adopt(&mut self, now: Instant, handover: FlowHandover) -> Result<FlowId, AdoptError> {
        let result = self.on_adopt(now, handover);
        self.finish_mutation();
        result
    }

    fn on_adopt(&mut self, now: Instant, h: FlowHandover) -> Result<FlowId, AdoptError> {
        if let Some(&existing) = self.table.get(&h.key) {
            return Err(AdoptError::KeyTaken {
                key: h.key,
                existing,
            });
        }
        if self.draining {
            return Err(AdoptError::Draining);
        }
        if self.flows.len() >= self.config.max_flows {
            return Err(AdoptError::AtCapacity {
                max_flows: self.config.max_flows,
            });
        }
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1);
        let deadline = deadline_after(now, h.idle_remaining);
        let entry = self.flows.vacant_entry();
        let id = FlowId::new(entry.key(), generation);
        let flow = Flow {
            key: h.key,
            alias: None,
            generation,
            client: h.client,
            phase: Phase::Established,
            cluster: h.cluster.clone(),
            knobs: FlowKnobs {
                responses: h.responses_cap,
                requests: h.requests_cap,
                front_timeout: h.front_timeout,
                back_timeout: h.back_timeout,
                send_proxy_protocol: h.send_proxy_protocol,
                proxy_protocol_every_datagram: h.proxy_protocol_every_datagram,
                max_pending_datagrams: self.config.max_pending_datagrams,
                max_pending_bytes: self.config.max_pending_bytes,
            },
            backend: Some((h.backend, h.backend_addr)),
            proxy_header_sent: h.proxy_header_sent,
            pending: VecDeque::new(),
            pending_bytes: 0,
            requests: h.datagrams_in,
            bytes_in: h.bytes_in,
            responses: h.datagrams_out,
            bytes_out: h.bytes_out,
            dropped: h.datagrams_dropped,
            created: now.checked_sub(h.age).unwrap_or(now),
            deadline,
            armed: deadline,
            timer_seq: 0,
        };
        let teardown = flow.cap_teardown();
        entry.insert(flow);
        self.table.insert(h.key, id);
        self.timers.push(TimerEntry {
            deadline,
            slot: id.slot() as u32,
            generation,
            seq: 0,
        });
        self.outputs
            .push_back(Output::Metric(MetricEvent::FlowCreated {
                flow: id,
                cluster: h.cluster,
            }));
        if let Some(reason) = teardown {
            self.close_flow(now, id, reason);
        }
        Ok(id)
    }
}
