//! [`UdpFlowManager`]: the per-listener flow table and its state machine.
//!
//! Owns admission, phases, caps, teardown, the timer queue and the output
//! queue. Must never touch a socket, read a clock, draw randomness, or
//! allocate on an established flow's datagram (either direction). Its I/O
//! twin is the UDP shell in the crate root, which feeds datagrams and inputs
//! and drains [`UdpFlowManager::poll_output`].

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    time::{Duration, Instant},
};

use slab::Slab;
use tracing::{debug, trace};

use super::{
    flow::{Flow, FlowKnobs},
    key::{
        affinity_hash, FlowKey, FlowKeyExtractor, QuicConnectionIdExtractor, SeededState,
        SourceAddressExtractor,
    },
    timers::{TimerEntry, TimerQueue},
    types::{
        BackendDecision, BackendId, ClientDecision, CloseReason, ClusterConfig, ClusterId,
        DropReason, FlowId, Input, MetricEvent, Output, Phase, ResolveOutcome,
        UdpFlowManagerConfig, Via,
    },
};

/// Stale timer entries tolerated beyond two per live flow before the heap is
/// compacted.
const TIMER_SLACK: usize = 1024;

/// The sans-io UDP flow manager of one listener. See the module docs of
/// [`super`] for how a shell drives it.
#[derive(Debug)]
pub struct UdpFlowManager<E = SourceAddressExtractor> {
    pub(super) config: UdpFlowManagerConfig,
    pub(super) cluster: Option<ClusterConfig>,
    pub(super) extractor: E,
    pub(super) flows: Slab<Flow>,
    pub(super) table: HashMap<FlowKey, FlowId, SeededState>,
    pub(super) timers: TimerQueue,
    pub(super) outputs: VecDeque<Output>,
    pub(super) draining: bool,
    pub(super) next_generation: u32,
    /// The highest `max_flows` ever set: the live count never exceeds it.
    pub(super) highest_max_flows: usize,
}

impl UdpFlowManager<SourceAddressExtractor> {
    /// A manager keying flows by client source address. `seed` keys the
    /// flow table's hasher only (inject a per-process random one in
    /// production against hash flooding, a fixed one in tests); the affinity
    /// hash is keyed by `config.hash_seed`, stable across processes.
    pub fn new(config: UdpFlowManagerConfig, seed: u64) -> Self {
        Self::with_extractor(config, seed, SourceAddressExtractor)
    }
}

impl<E: FlowKeyExtractor> UdpFlowManager<E> {
    /// A manager with a custom flow-key extractor (e.g.
    /// [`super::QuicConnectionIdExtractor`]).
    pub fn with_extractor(config: UdpFlowManagerConfig, seed: u64, extractor: E) -> Self {
        let highest_max_flows = config.max_flows;
        UdpFlowManager {
            config,
            cluster: None,
            extractor,
            flows: Slab::new(),
            table: HashMap::with_hasher(SeededState::new(seed)),
            timers: TimerQueue::default(),
            outputs: VecDeque::new(),
            draining: false,
            next_generation: 0,
            highest_max_flows,
        }
    }

    // ----- datagrams (hot path: return the decision, allocate nothing) -----

    /// Admits or routes one client datagram `payload` received from `src` on
    /// the listener. The caller keeps the bytes: on `Forward` it sends them
    /// (after the PROXY header, if any) on the flow's upstream socket.
    pub fn handle_client_datagram(
        &mut self,
        now: Instant,
        src: SocketAddr,
        payload: &[u8],
    ) -> ClientDecision {
        let decision = self.on_client_datagram(now, src, payload);
        self.finish_mutation();
        decision
    }

    fn on_client_datagram(
        &mut self,
        now: Instant,
        src: SocketAddr,
        payload: &[u8],
    ) -> ClientDecision {
        // 1. size
        if payload.len() > self.config.max_rx_datagram_size {
            return ClientDecision::Dropped(DropReason::Truncated);
        }
        // 2. a cluster to send to
        let Some(cluster) = &self.cluster else {
            return ClientDecision::Dropped(DropReason::NoBackend);
        };
        // One-way: no key, no flow, no table lookup (live flows of a
        // cluster switched to one-way get no more client datagrams and end
        // at their idle timeout).
        if cluster.one_way {
            return self.on_one_way_datagram(cluster, src, payload);
        }
        if cluster.dns_id {
            return self.on_dns_datagram(cluster, src, payload);
        }
        // 3. a key
        let key = match self.cluster.as_ref().and_then(|c| c.quic_cid_length) {
            Some(len) => QuicConnectionIdExtractor {
                short_header_cid_len: len,
            }
            .flow_key(src, payload),
            None => self.extractor.flow_key(src, payload),
        };
        let Some(key) = key else {
            return ClientDecision::Dropped(DropReason::Invalid);
        };
        // 4. sticky (a new connection ID joins its address's handshake flow)
        if let Some(&id) = self.table.get(&key) {
            return self.on_tracked_client_datagram(now, id, src, payload);
        }
        if let Some(id) = self.join_handshake_flow(key, src) {
            return self.on_tracked_client_datagram(now, id, src, payload);
        }
        // 5. shed
        if self.draining {
            return ClientDecision::Dropped(DropReason::Shed);
        }
        if self.flows.len() >= self.config.max_flows {
            if let Some(cluster) = &self.cluster {
                self.outputs
                    .push_back(Output::Metric(MetricEvent::FlowShed {
                        cluster: cluster.cluster_id.clone(),
                    }));
            }
            return ClientDecision::Dropped(DropReason::Shed);
        }
        // 6. admit
        self.admit(now, key, src, payload)
    }

    /// A QUIC connection ID seen for the first time, from an address whose
    /// flow (the connection's handshake, keyed by address) has no connection
    /// ID yet: the ID becomes that flow's second key, so the whole
    /// connection keeps one flow and one upstream socket.
    fn join_handshake_flow(&mut self, key: FlowKey, src: SocketAddr) -> Option<FlowId> {
        if !matches!(key, FlowKey::ConnectionId(_)) {
            return None;
        }
        let id = *self.table.get(&FlowKey::Source(src))?;
        let flow = self.flows.get_mut(id.slot())?;
        if flow.alias.is_some() || flow.key != FlowKey::Source(src) {
            return None;
        }
        flow.alias = Some(key);
        self.table.insert(key, id);
        trace!(flow = %id, "connection id joined its handshake flow");
        Some(id)
    }

    fn on_tracked_client_datagram(
        &mut self,
        now: Instant,
        id: FlowId,
        src: SocketAddr,
        payload: &[u8],
    ) -> ClientDecision {
        let listener = self.config.listener;
        let Some(flow) = self.flows.get_mut(id.slot()) else {
            // The table only names live flows (checked invariant).
            return ClientDecision::Dropped(DropReason::UnknownFlow);
        };
        // A connection-ID keyed flow follows its client's migrations.
        if flow.client != src {
            debug!(flow = %id, from = %flow.client, to = %src, "udp flow migrated");
            flow.client = src;
            // A joined flow leaves its old address: from now on only its
            // connection ID names it (a new client reusing that address
            // starts a flow of its own).
            if let Some(alias) = flow.alias.take() {
                let old = std::mem::replace(&mut flow.key, alias);
                if self.table.get(&old) == Some(&id) {
                    self.table.remove(&old);
                }
            }
            self.outputs
                .push_back(Output::Metric(MetricEvent::FlowMigrated { flow: id }));
        }
        let Some(flow) = self.flows.get_mut(id.slot()) else {
            return ClientDecision::Dropped(DropReason::UnknownFlow);
        };
        match flow.phase {
            Phase::AwaitingBackend => {
                let evicted = flow.enqueue(payload);
                let deadline = deadline_after(now, flow.knobs.front_timeout);
                if evicted.datagrams > 0 {
                    self.outputs.push_back(Output::Dropped {
                        flow: id,
                        reason: DropReason::PendingOverflow,
                        datagrams: evicted.datagrams,
                        bytes: evicted.bytes,
                    });
                }
                self.refresh_deadline(id, deadline);
                ClientDecision::Queued { flow: id }
            }
            Phase::Established => {
                if flow.is_requests_exhausted() {
                    flow.dropped += 1;
                    return ClientDecision::Dropped(DropReason::RequestsExhausted);
                }
                flow.requests += 1;
                flow.bytes_in += payload.len() as u64;
                let proxy_header = flow.next_proxy_header(listener);
                let deadline = deadline_after(now, flow.knobs.front_timeout);
                let teardown = flow.cap_teardown();
                self.refresh_deadline(id, deadline);
                if let Some(reason) = teardown {
                    self.close_flow(now, id, reason);
                }
                ClientDecision::Forward {
                    flow: id,
                    proxy_header,
                }
            }
        }
    }

    fn admit(
        &mut self,
        now: Instant,
        key: FlowKey,
        src: SocketAddr,
        payload: &[u8],
    ) -> ClientDecision {
        let Some(cluster) = &self.cluster else {
            return ClientDecision::Dropped(DropReason::NoBackend);
        };
        let knobs = FlowKnobs {
            responses: cluster.responses,
            requests: cluster.requests,
            front_timeout: cluster.front_timeout.unwrap_or(self.config.front_timeout),
            back_timeout: cluster.back_timeout.unwrap_or(self.config.back_timeout),
            send_proxy_protocol: cluster.send_proxy_protocol,
            proxy_protocol_every_datagram: cluster.proxy_protocol_every_datagram,
            max_pending_datagrams: cluster
                .max_pending_datagrams
                .unwrap_or(self.config.max_pending_datagrams),
            max_pending_bytes: self.config.max_pending_bytes,
        };
        let cluster_id = cluster.cluster_id.clone();
        let hash = affinity_hash(self.config.hash_seed, cluster.affinity_key, src);
        // QUIC-LB: the first datagram's destination connection ID names the
        // backend (decoded once per new flow, no state kept for it).
        let quic_lb = match (cluster.quic_lb, cluster.quic_cid_length) {
            (Some(lb), Some(cid_len)) => Some(lb.route(payload, cid_len)),
            _ => None,
        };
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1);
        let deadline = deadline_after(now, knobs.front_timeout);
        let entry = self.flows.vacant_entry();
        let id = FlowId::new(entry.key(), generation);
        let mut flow = Flow {
            key,
            alias: None,
            generation,
            client: src,
            phase: Phase::AwaitingBackend,
            cluster: cluster_id.clone(),
            knobs,
            backend: None,
            proxy_header_sent: false,
            pending: VecDeque::new(),
            pending_bytes: 0,
            requests: 0,
            bytes_in: 0,
            responses: 0,
            bytes_out: 0,
            dropped: 0,
            created: now,
            deadline,
            armed: deadline,
            timer_seq: 0,
        };
        // A fresh queue never evicts.
        flow.enqueue(payload);
        entry.insert(flow);
        self.table.insert(key, id);
        self.timers.push(TimerEntry {
            deadline,
            slot: id.slot() as u32,
            generation,
            seq: 0,
        });
        debug!(flow = %id, client = %src, cluster = %cluster_id, "udp flow admitted");
        self.outputs
            .push_back(Output::Metric(MetricEvent::FlowCreated {
                flow: id,
                cluster: cluster_id.clone(),
            }));
        self.outputs.push_back(Output::SelectBackend {
            flow: id,
            cluster: cluster_id,
            affinity_hash: hash,
            quic_lb,
        });
        ClientDecision::Queued { flow: id }
    }

    /// Routes one datagram received on `flow`'s upstream socket. On `Return`
    /// the caller sends its bytes through the listener socket to `dst`.
    /// Reaching the responses cap closes the flow (its `CloseFlow` is in the
    /// output queue) after this datagram is returned.
    pub fn handle_backend_datagram(
        &mut self,
        now: Instant,
        flow: FlowId,
        payload: &[u8],
    ) -> BackendDecision {
        let decision = self.on_backend_datagram(now, flow, payload);
        self.finish_mutation();
        decision
    }

    fn on_backend_datagram(&mut self, now: Instant, id: FlowId, payload: &[u8]) -> BackendDecision {
        if payload.len() > self.config.max_rx_datagram_size {
            return BackendDecision::Dropped(DropReason::Truncated);
        }
        let Some(flow) = self.flow_mut(id) else {
            return BackendDecision::Dropped(DropReason::UnknownFlow);
        };
        if flow.phase != Phase::Established {
            return BackendDecision::Dropped(DropReason::UnknownFlow);
        }
        flow.responses += 1;
        flow.bytes_out += payload.len() as u64;
        let dst = flow.client;
        let deadline = deadline_after(now, flow.knobs.back_timeout);
        let teardown = flow.cap_teardown();
        self.refresh_deadline(id, deadline);
        if let Some(reason) = teardown {
            self.close_flow(now, id, reason);
        }
        BackendDecision::Return { dst }
    }

    // ----- inputs -----

    /// Feeds one [`Input`] (the same as calling the named method).
    pub fn handle_input(&mut self, now: Instant, input: Input) {
        match input {
            Input::BackendResolved {
                flow,
                backend,
                addr,
            } => {
                self.backend_resolved(now, flow, backend, addr);
            }
            Input::SetCluster(cluster) => self.set_cluster(now, cluster),
            Input::SetMaxFlows(max) => self.set_max_flows(max),
            Input::SetMaxRxDatagramSize(max) => self.set_max_rx_datagram_size(max),
            Input::SetDefaultTimeouts { front, back } => self.set_default_timeouts(front, back),
            Input::Drain => self.drain(now),
            Input::AbortFlow { flow, reason } => self.abort_flow(now, flow, reason),
            Input::AbortBackend { backend, reason } => self.abort_backend(now, &backend, reason),
            Input::CloseAll => self.close_all(now),
        }
    }

    /// The shell chose `backend` at `addr` for an awaiting flow: emits
    /// `OpenUpstream`, then flushes the pending datagrams in order as
    /// `Transmit`s (each counting as a request). A duplicate or late
    /// resolution is ignored; one for a reaped flow is `UnknownFlow`.
    pub fn backend_resolved(
        &mut self,
        now: Instant,
        flow: FlowId,
        backend: BackendId,
        addr: SocketAddr,
    ) -> ResolveOutcome {
        let outcome = self.on_backend_resolved(now, flow, backend, addr);
        self.finish_mutation();
        outcome
    }

    fn on_backend_resolved(
        &mut self,
        now: Instant,
        id: FlowId,
        backend: BackendId,
        addr: SocketAddr,
    ) -> ResolveOutcome {
        let listener = self.config.listener;
        let Some(flow) = self.flow_mut(id) else {
            trace!(flow = %id, "resolution for a reaped flow");
            return ResolveOutcome::UnknownFlow;
        };
        if flow.phase == Phase::Established {
            return ResolveOutcome::Ignored;
        }
        flow.phase = Phase::Established;
        flow.backend = Some((backend.clone(), addr));
        self.outputs.push_back(Output::OpenUpstream {
            flow: id,
            backend,
            addr,
        });
        let Some(flow) = self.flows.get_mut(id.slot()) else {
            return ResolveOutcome::UnknownFlow;
        };
        while let Some(payload) = flow.pending.pop_front() {
            flow.pending_bytes -= payload.len();
            if flow.is_requests_exhausted() {
                // The cap was met mid-flush: the rest cannot be sent.
                flow.dropped += 1;
                self.outputs.push_back(Output::Dropped {
                    flow: id,
                    reason: DropReason::RequestsExhausted,
                    datagrams: 1,
                    bytes: payload.len() as u64,
                });
                continue;
            }
            flow.requests += 1;
            flow.bytes_in += payload.len() as u64;
            let proxy_header = flow.next_proxy_header(listener);
            self.outputs.push_back(Output::Transmit {
                via: Via::Upstream(id),
                dst: addr,
                proxy_header,
                payload,
            });
        }
        debug!(flow = %id, backend = %addr, "udp flow established");
        if let Some(reason) = flow.cap_teardown() {
            self.close_flow(now, id, reason);
        }
        ResolveOutcome::Established
    }

    /// Replaces the listener's cluster (`None`: no cluster, client datagrams
    /// are dropped `NoBackend`). Live flows keep the knobs they captured.
    pub fn set_cluster(&mut self, _now: Instant, cluster: Option<ClusterConfig>) {
        self.cluster = cluster;
        self.finish_mutation();
    }

    /// Sets the flow cap; below the live count it only sheds new flows.
    pub fn set_max_flows(&mut self, max_flows: usize) {
        self.config.max_flows = max_flows;
        self.highest_max_flows = self.highest_max_flows.max(max_flows);
        self.finish_mutation();
    }

    /// Sets the largest datagram accepted in either direction.
    pub fn set_max_rx_datagram_size(&mut self, max: usize) {
        self.config.max_rx_datagram_size = max;
        self.finish_mutation();
    }

    /// Sets the listener's default timeouts (new flows only).
    pub fn set_default_timeouts(&mut self, front: Duration, back: Duration) {
        self.config.front_timeout = front;
        self.config.back_timeout = back;
        self.finish_mutation();
    }

    /// Stops admitting new flows (new keys are dropped `Shed`); live flows
    /// are served until they end by themselves. See [`Self::is_drained`].
    pub fn drain(&mut self, _now: Instant) {
        self.draining = true;
        self.finish_mutation();
    }

    /// Closes `flow` with `reason`; nothing happens for an unknown id.
    pub fn abort_flow(&mut self, now: Instant, flow: FlowId, reason: CloseReason) {
        self.close_flow(now, flow, reason);
        self.finish_mutation();
    }

    /// Closes every flow whose backend is `backend` (removed or down).
    pub fn abort_backend(&mut self, now: Instant, backend: &BackendId, reason: CloseReason) {
        let doomed: Vec<FlowId> = self
            .flows
            .iter()
            .filter(|(_, f)| f.backend.as_ref().is_some_and(|(b, _)| b == backend))
            .map(|(slot, f)| FlowId::new(slot, f.generation))
            .collect();
        for id in doomed {
            self.close_flow(now, id, reason);
        }
        self.finish_mutation();
    }

    /// Closes every flow with reason `Drain` (listener removal or
    /// deactivation, hard-stop). Emits nothing on an empty manager.
    pub fn close_all(&mut self, now: Instant) {
        let all: Vec<FlowId> = self
            .flows
            .iter()
            .map(|(slot, f)| FlowId::new(slot, f.generation))
            .collect();
        for id in all {
            self.close_flow(now, id, CloseReason::Drain);
        }
        self.finish_mutation();
    }

    /// Closes every flow whose idle deadline is at or before `now`. Afterwards
    /// [`Self::poll_timeout`] is `None` or strictly later than `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&entry) = self.timers.peek() {
            if entry.deadline > now {
                break;
            }
            self.timers.pop();
            let id = FlowId::new(entry.slot as usize, entry.generation);
            let Some(flow) = self.flow_mut(id) else {
                continue; // the flow is gone: stale
            };
            if flow.timer_seq != entry.seq {
                continue; // superseded by an earlier entry: stale
            }
            if flow.deadline <= now {
                self.close_flow(now, id, CloseReason::Idle);
            } else {
                // Refreshed since this entry was pushed: re-arm at the true
                // deadline, which is later than `now`.
                flow.timer_seq = flow.timer_seq.wrapping_add(1);
                flow.armed = flow.deadline;
                let entry = TimerEntry {
                    deadline: flow.deadline,
                    slot: entry.slot,
                    generation: entry.generation,
                    seq: flow.timer_seq,
                };
                self.timers.push(entry);
            }
        }
        self.finish_mutation();
    }

    // ----- outputs and queries -----

    /// The next output, `None` when drained. The shell must not call other
    /// methods while draining: it queues follow-up inputs and feeds them
    /// afterwards.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When to call [`Self::handle_timeout`] next (`None`: no live flow).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|e| e.deadline)
    }

    /// Live flows.
    pub fn active_flows(&self) -> usize {
        self.flows.len()
    }

    /// `drain` was called.
    pub fn is_draining(&self) -> bool {
        self.draining
    }

    /// Draining and no flow left: the listener can be released.
    pub fn is_drained(&self) -> bool {
        self.draining && self.flows.is_empty()
    }

    /// The listener configuration in force.
    pub fn config(&self) -> &UdpFlowManagerConfig {
        &self.config
    }

    /// The cluster new flows join.
    pub fn cluster(&self) -> Option<&ClusterConfig> {
        self.cluster.as_ref()
    }

    /// A live flow's phase.
    pub fn flow_phase(&self, flow: FlowId) -> Option<Phase> {
        self.flow(flow).map(|f| f.phase)
    }

    /// A live flow's client address (the latest source seen).
    pub fn flow_client(&self, flow: FlowId) -> Option<SocketAddr> {
        self.flow(flow).map(|f| f.client)
    }

    /// A live flow's backend, once resolved.
    pub fn flow_backend(&self, flow: FlowId) -> Option<(&BackendId, SocketAddr)> {
        self.flow(flow)
            .and_then(|f| f.backend.as_ref().map(|(id, addr)| (id, *addr)))
    }

    /// A live flow's cluster.
    pub fn flow_cluster(&self, flow: FlowId) -> Option<&ClusterId> {
        self.flow(flow).map(|f| &f.cluster)
    }

    /// The flow a key maps to.
    pub fn flow_for_key(&self, key: &FlowKey) -> Option<FlowId> {
        self.table.get(key).copied()
    }

    /// Every live flow id (slab order).
    pub fn flow_ids(&self) -> impl Iterator<Item = FlowId> + '_ {
        self.flows
            .iter()
            .map(|(slot, f)| FlowId::new(slot, f.generation))
    }

    // ----- internals -----

    pub(super) fn flow(&self, id: FlowId) -> Option<&Flow> {
        self.flows
            .get(id.slot())
            .filter(|f| f.generation == id.generation())
    }

    fn flow_mut(&mut self, id: FlowId) -> Option<&mut Flow> {
        self.flows
            .get_mut(id.slot())
            .filter(|f| f.generation == id.generation())
    }

    /// Moves a flow's idle deadline. Only a deadline earlier than the armed
    /// entry pushes a new one (e.g. a short back timeout after a long front
    /// one); a later one is picked up when the armed entry fires.
    fn refresh_deadline(&mut self, id: FlowId, deadline: Instant) {
        let Some(flow) = self.flows.get_mut(id.slot()) else {
            return;
        };
        flow.deadline = deadline;
        if deadline < flow.armed {
            flow.timer_seq = flow.timer_seq.wrapping_add(1);
            flow.armed = deadline;
            let entry = TimerEntry {
                deadline,
                slot: id.slot() as u32,
                generation: flow.generation,
                seq: flow.timer_seq,
            };
            self.timers.push(entry);
            if self.timers.len() > 2 * self.flows.len() + TIMER_SLACK {
                let flows = &self.flows;
                self.timers.retain(|e| is_live_entry(flows, e));
            }
        }
    }

    /// Closes a flow: drops what it still buffered, emits `FlowEvicted` then
    /// `CloseFlow`, unmaps its key if the table still points at it.
    /// Idempotent: an unknown id emits nothing.
    pub(super) fn close_flow(&mut self, now: Instant, id: FlowId, reason: CloseReason) {
        if self.flow(id).is_none() {
            return;
        }
        let mut flow = self.flows.remove(id.slot());
        for key in std::iter::once(flow.key).chain(flow.alias) {
            if self.table.get(&key) == Some(&id) {
                self.table.remove(&key);
            }
        }
        if !flow.pending.is_empty() {
            let datagrams = flow.pending.len() as u32;
            let bytes = flow.pending_bytes as u64;
            flow.dropped += u64::from(datagrams);
            flow.pending.clear();
            flow.pending_bytes = 0;
            self.outputs.push_back(Output::Dropped {
                flow: id,
                reason: DropReason::FlowClosed,
                datagrams,
                bytes,
            });
        }
        debug!(flow = %id, client = %flow.client, reason = reason.as_str(), "udp flow closed");
        let record = flow.record(now);
        self.outputs
            .push_back(Output::Metric(MetricEvent::FlowEvicted {
                flow: id,
                cluster: flow.cluster,
                backend: flow.backend.map(|(b, _)| b),
                reason,
            }));
        self.outputs.push_back(Output::CloseFlow {
            flow: id,
            reason,
            record,
        });
    }

    /// Ends every public mutator: discards stale timer entries at the top of
    /// the heap (so `poll_timeout` names a live flow's entry), then checks the
    /// invariants in debug builds.
    pub(super) fn finish_mutation(&mut self) {
        while let Some(entry) = self.timers.peek() {
            if is_live_entry(&self.flows, entry) {
                break;
            }
            self.timers.pop();
        }
        #[cfg(debug_assertions)]
        self.check_invariants();
    }
}

/// `now + timeout`, saturating: a huge configured timeout (from an order)
/// must not overflow `Instant` and panic; it means "practically never".
pub(super) fn deadline_after(now: Instant, timeout: Duration) -> Instant {
    now.checked_add(timeout)
        .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 86_400)))
        .unwrap_or(now)
}

/// The entry is the one valid timer of a live flow.
pub(super) fn is_live_entry(flows: &Slab<Flow>, entry: &TimerEntry) -> bool {
    flows
        .get(entry.slot as usize)
        .is_some_and(|f| f.generation == entry.generation && f.timer_seq == entry.seq)
}
