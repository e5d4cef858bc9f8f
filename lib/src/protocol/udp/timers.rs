//! The manager's timer queue: one min-heap of per-flow deadlines with lazy
//! invalidation.
//!
//! Owns only the heap. A flow keeps its true idle deadline and the sequence
//! number of its one valid heap entry; the manager decides which entries are
//! stale (flow gone, or a newer entry pushed). A datagram that pushes the
//! deadline later touches no heap entry (the entry fires early, finds the flow
//! refreshed and is re-pushed at the true deadline), so per-datagram cost is
//! O(1) and expiry O(log n). Must never read a clock.

use std::{cmp::Reverse, collections::BinaryHeap, time::Instant};

/// One heap entry: when to look at flow (`slot`, `generation`), valid only if
/// the flow still carries `seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct TimerEntry {
    pub(crate) deadline: Instant,
    pub(crate) slot: u32,
    pub(crate) generation: u32,
    pub(crate) seq: u32,
}

/// A min-heap of [`TimerEntry`].
#[derive(Debug, Default)]
pub(crate) struct TimerQueue {
    heap: BinaryHeap<Reverse<TimerEntry>>,
}

impl TimerQueue {
    pub(crate) fn push(&mut self, entry: TimerEntry) {
        self.heap.push(Reverse(entry));
    }

    pub(crate) fn peek(&self) -> Option<&TimerEntry> {
        self.heap.peek().map(|Reverse(e)| e)
    }

    pub(crate) fn pop(&mut self) -> Option<TimerEntry> {
        self.heap.pop().map(|Reverse(e)| e)
    }

    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }

    /// Keeps only the entries `keep` accepts (O(n), no allocation): used to
    /// bound the stale entries left by deadlines that moved earlier.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&TimerEntry) -> bool) {
        self.heap.retain(|Reverse(e)| keep(e));
    }

    #[cfg(debug_assertions)]
    pub(crate) fn iter(&self) -> impl Iterator<Item = &TimerEntry> {
        self.heap.iter().map(|Reverse(e)| e)
    }
}
