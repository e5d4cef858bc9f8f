//! What the worker loop and the flow pool need to know of every UDP
//! listener at once — its next deadline, its share of the flow pool —
//! filed when the listener changes instead of gathered by walking them all.
//!
//! A worker with a thousand listeners (an RTP port range, one listener per
//! game server) wakes up tens of thousands of times a second, each time for
//! one or two of them: the sleep's timeout, the due timers and the pool's
//! "everyone else" must cost O(log listeners), not O(listeners). The ledger
//! holds an indexed binary heap of deadlines and running pool totals; its
//! vectors grow with the listener ids and are then reused, so filing a
//! listener never allocates on the datapath.

use std::time::Instant;

use super::budget::{Member, Others};

/// No heap position: the listener has no deadline filed.
const UNFILED: usize = usize::MAX;

/// Per-listener entries, by listener id (the shell's slab key).
#[derive(Debug, Default)]
pub(crate) struct ListenerLedger {
    /// The pool member each listener was last filed as (`None`: none).
    members: Vec<Option<Member>>,
    /// Sum of `members`.
    total: Others,
    /// Min-heap of `(deadline, listener id)`.
    heap: Vec<(Instant, usize)>,
    /// Position of each listener's entry in `heap`, or [`UNFILED`].
    position: Vec<usize>,
}

impl ListenerLedger {
    /// Files listener `id` as it is now: its pool member and its next
    /// deadline; `None` for a listener that no longer exists.
    pub(crate) fn file(&mut self, id: usize, now: Option<(Member, Option<Instant>)>) {
        if self.members.len() <= id {
            self.members.resize(id + 1, None);
            self.position.resize(id + 1, UNFILED);
        }
        let (member, deadline) = match now {
            Some((member, deadline)) => (Some(member), deadline),
            None => (None, None),
        };
        if self.members[id] != member {
            if let Some(old) = self.members[id] {
                self.total.flows -= old.flows;
                self.total.admitting -= usize::from(old.admitting);
            }
            if let Some(new) = member {
                self.total.flows += new.flows;
                self.total.admitting += usize::from(new.admitting);
            }
            self.members[id] = member;
        }
        self.set_deadline(id, deadline);
    }

    /// Forgets every listener (before filing them all again).
    pub(crate) fn clear(&mut self) {
        self.members.clear();
        self.total = Others::default();
        self.heap.clear();
        self.position.clear();
    }

    /// The pool's view of every listener but `id`.
    pub(crate) fn others(&self, id: usize) -> Others {
        match self.members.get(id).copied().flatten() {
            Some(me) => Others {
                flows: self.total.flows - me.flows,
                admitting: self.total.admitting - usize::from(me.admitting),
            },
            None => self.total,
        }
    }

    /// The earliest deadline filed.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.heap.first().map(|&(deadline, _)| deadline)
    }

    /// Takes the listener with the earliest deadline if it is due at `now`
    /// (its deadline is unfiled: file it again once it has run).
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<usize> {
        match self.heap.first() {
            Some(&(deadline, id)) if deadline <= now => {
                self.set_deadline(id, None);
                Some(id)
            }
            _ => None,
        }
    }

    /// What listener `id` was last filed as (debug checks).
    #[cfg(any(test, debug_assertions))]
    pub(crate) fn filed(&self, id: usize) -> Option<(Member, Option<Instant>)> {
        let member = self.members.get(id).copied().flatten()?;
        let deadline = match self.position.get(id) {
            Some(&at) if at != UNFILED => Some(self.heap[at].0),
            _ => None,
        };
        Some((member, deadline))
    }

    /// Listeners filed (debug checks).
    #[cfg(any(test, debug_assertions))]
    pub(crate) fn filed_count(&self) -> usize {
        self.members.iter().filter(|m| m.is_some()).count()
    }

    /// The sum of every member filed (debug checks).
    #[cfg(any(test, debug_assertions))]
    pub(crate) fn total(&self) -> Others {
        self.total
    }

    fn set_deadline(&mut self, id: usize, deadline: Option<Instant>) {
        let at = self.position[id];
        match (at != UNFILED, deadline) {
            (false, None) => {}
            (false, Some(deadline)) => {
                self.heap.push((deadline, id));
                let at = self.heap.len() - 1;
                self.position[id] = at;
                self.sift_up(at);
            }
            (true, Some(deadline)) => {
                let old = self.heap[at].0;
                self.heap[at].0 = deadline;
                if deadline < old {
                    self.sift_up(at);
                } else {
                    self.sift_down(at);
                }
            }
            (true, None) => {
                let last = self.heap.len() - 1;
                self.swap(at, last);
                self.heap.pop();
                self.position[id] = UNFILED;
                if at < self.heap.len() {
                    self.sift_down(at);
                    self.sift_up(at);
                }
            }
        }
    }

    fn swap(&mut self, a: usize, b: usize) {
        self.heap.swap(a, b);
        self.position[self.heap[a].1] = a;
        self.position[self.heap[b].1] = b;
    }

    fn sift_up(&mut self, mut at: usize) {
        while at > 0 {
            let parent = (at - 1) / 2;
            if self.heap[parent].0 <= self.heap[at].0 {
                break;
            }
            self.swap(parent, at);
            at = parent;
        }
    }

    fn sift_down(&mut self, mut at: usize) {
        loop {
            let left = 2 * at + 1;
            let right = left + 1;
            let mut least = at;
            if left < self.heap.len() && self.heap[left].0 < self.heap[least].0 {
                least = left;
            }
            if right < self.heap.len() && self.heap[right].0 < self.heap[least].0 {
                least = right;
            }
            if least == at {
                break;
            }
            self.swap(least, at);
            at = least;
        }
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // a fixed origin for the deadlines
mod tests {
    use std::time::Duration;

    use quickcheck::quickcheck;

    use super::*;

    fn member(flows: usize, admitting: bool) -> Member {
        Member {
            flows,
            cap: None,
            admitting,
        }
    }

    #[test]
    fn others_is_everyone_but_the_one_asking() {
        let mut ledger = ListenerLedger::default();
        ledger.file(0, Some((member(10, true), None)));
        ledger.file(3, Some((member(5, false), None)));
        ledger.file(7, Some((member(1, true), None)));
        assert_eq!(
            ledger.others(3),
            Others {
                flows: 11,
                admitting: 2
            }
        );
        // A listener that grew, one removed, one never filed.
        ledger.file(0, Some((member(20, true), None)));
        ledger.file(7, None);
        assert_eq!(
            ledger.others(3),
            Others {
                flows: 20,
                admitting: 1
            }
        );
        assert_eq!(
            ledger.others(9),
            Others {
                flows: 25,
                admitting: 1
            }
        );
    }

    #[test]
    fn due_listeners_come_out_earliest_first_once_each() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut ledger = ListenerLedger::default();
        ledger.file(0, Some((member(0, true), Some(at(30)))));
        ledger.file(1, Some((member(0, true), Some(at(10)))));
        ledger.file(2, Some((member(0, true), Some(at(50)))));
        ledger.file(3, Some((member(0, true), None)));
        assert_eq!(ledger.next_deadline(), Some(at(10)));
        // Listener 1 moved later, listener 2 earlier.
        ledger.file(1, Some((member(0, true), Some(at(40)))));
        ledger.file(2, Some((member(0, true), Some(at(20)))));
        assert_eq!(ledger.pop_due(at(35)), Some(2));
        assert_eq!(ledger.pop_due(at(35)), Some(0));
        assert_eq!(ledger.pop_due(at(35)), None, "listener 1 is due at 40");
        assert_eq!(ledger.next_deadline(), Some(at(40)));
        assert_eq!(ledger.filed(2), Some((member(0, true), None)));
    }

    /// Filing in any order, any deadlines: the heap's minimum is the
    /// minimum of what is filed, and the totals are the sums.
    #[test]
    fn the_ledger_matches_a_walk_of_every_listener() {
        fn prop(steps: Vec<(u8, Option<u16>, u8, bool)>) -> bool {
            let t0 = Instant::now();
            let mut ledger = ListenerLedger::default();
            let mut model: Vec<Option<(Member, Option<Instant>)>> = vec![None; 16];
            for (id, deadline, flows, alive) in steps {
                let id = usize::from(id % 16);
                let entry = alive.then(|| {
                    (
                        member(usize::from(flows), flows % 2 == 0),
                        deadline.map(|ms| t0 + Duration::from_millis(u64::from(ms))),
                    )
                });
                ledger.file(id, entry);
                model[id] = entry;
                let earliest = model.iter().flatten().filter_map(|(_, d)| *d).min();
                if ledger.next_deadline() != earliest {
                    return false;
                }
                let total = Others::sum(model.iter().flatten().map(|(m, _)| *m));
                if ledger.total() != total {
                    return false;
                }
                if (0..16).any(|i| ledger.filed(i) != model[i]) {
                    return false;
                }
            }
            true
        }
        quickcheck(prop as fn(Vec<(u8, Option<u16>, u8, bool)>) -> bool);
    }
}
