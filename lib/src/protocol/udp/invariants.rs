//! The invariant sweep run at the end of every public mutator of
//! [`UdpFlowManager`] in debug builds (DESIGN §3). It allocates nothing, so
//! the allocation-count test also holds in debug builds.
//!
//! Owns checks only; must never change state.

use super::{manager::is_live_entry, types::Phase, FlowId, UdpFlowManager};

impl<E> UdpFlowManager<E> {
    /// Panics, naming the broken invariant, if the manager is incoherent.
    #[cfg(debug_assertions)]
    pub(crate) fn check_invariants(&self) {
        // Table ↔ slab: every entry names a live flow carrying that key …
        for (key, id) in &self.table {
            let flow = self
                .flows
                .get(id.slot())
                .filter(|f| f.generation == id.generation());
            let Some(flow) = flow else {
                panic!("invariant: table key {key:?} names a dead flow {id:?}");
            };
            assert!(
                &flow.key == key || flow.alias.as_ref() == Some(key),
                "invariant: table key {key:?} is neither the flow's key nor its alias"
            );
        }
        // … and no other keys: with every entry pointing at the flow holding
        // that key, equal counts make the mapping a bijection.
        let aliases = self.flows.iter().filter(|(_, f)| f.alias.is_some()).count();
        assert_eq!(
            self.table.len(),
            self.flows.len() + aliases,
            "invariant: table size is not flows + aliases"
        );
        let mut live_timers = 0usize;
        for entry in self.timers.iter() {
            if is_live_entry(&self.flows, entry) {
                live_timers += 1;
                let flow = &self.flows[entry.slot as usize];
                assert_eq!(
                    entry.deadline, flow.armed,
                    "invariant: the live timer entry is the armed one"
                );
            }
        }
        assert_eq!(
            live_timers,
            self.flows.len(),
            "invariant: exactly one live timer entry per flow"
        );
        if let Some(top) = self.timers.peek() {
            assert!(
                is_live_entry(&self.flows, top),
                "invariant: the exposed deadline belongs to a live flow"
            );
        }
        assert_eq!(
            self.flows.is_empty(),
            self.timers.peek().is_none(),
            "invariant: a deadline is armed iff a flow is live"
        );
        for (slot, flow) in &self.flows {
            let id = FlowId::new(slot, flow.generation);
            // Closing is never left in the slab: closing removes the flow in
            // the same call, so only the two live phases exist here.
            assert_eq!(
                self.table.get(&flow.key),
                Some(&id),
                "invariant: every flow is reachable from its key"
            );
            if let Some(alias) = &flow.alias {
                assert_eq!(
                    self.table.get(alias),
                    Some(&id),
                    "invariant: every flow is reachable from its alias"
                );
            }
            assert_eq!(
                flow.phase == Phase::Established,
                flow.backend.is_some(),
                "invariant: Established ⇔ has a backend"
            );
            assert!(
                flow.phase == Phase::AwaitingBackend || flow.pending.is_empty(),
                "invariant: only awaiting flows buffer"
            );
            assert!(
                flow.pending.len() <= flow.knobs.max_pending_datagrams.get(),
                "invariant: pending FIFO within its datagram bound"
            );
            assert_eq!(
                flow.pending_bytes,
                flow.pending.iter().map(Vec::len).sum::<usize>(),
                "invariant: pending byte count"
            );
            // Exhausted caps ⇔ teardown due: with `responses = N`, every
            // forwarded request answered N times; without, the requests cap.
            assert!(
                flow.cap_teardown().is_none(),
                "invariant: a flow with exhausted caps was not torn down"
            );
            assert!(
                flow.armed <= flow.deadline,
                "invariant: the armed entry never fires after the idle deadline"
            );
        }
        assert!(
            self.flows.len() <= self.highest_max_flows,
            "invariant: flow count above the highest cap ever set"
        );
    }
}
