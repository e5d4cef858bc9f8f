//! Session deadlines for the stream proxies: a min-heap with lazy
//! invalidation.
//!
//! Owns only `(deadline, session)` pairs. A session arms a deadline when its
//! timer may have moved earlier; entries that no longer match the session's
//! armed deadline are skipped when popped, so refreshing a timer on every
//! read costs nothing here (the session re-arms after the stale entry pops).
//! It never reads the clock.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

/// Pending deadlines of sessions identified by their slab key.
#[derive(Debug, Default)]
pub(crate) struct Deadlines {
    heap: BinaryHeap<Reverse<(Instant, usize)>>,
}

impl Deadlines {
    /// An empty heap.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Adds a deadline for `session`.
    pub(crate) fn arm(&mut self, session: usize, at: Instant) {
        self.heap.push(Reverse((at, session)));
    }

    /// The earliest entry (possibly stale: the caller checks).
    pub(crate) fn peek(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Pops the earliest entry if it is due at `now`.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<(Instant, usize)> {
        match self.heap.peek() {
            Some(Reverse((at, _))) if *at <= now => self.heap.pop().map(|Reverse(e)| e),
            _ => None,
        }
    }

    /// Forgets every entry.
    pub(crate) fn clear(&mut self) {
        self.heap.clear();
    }

    #[cfg(test)]
    /// Entries held (stale ones included).
    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }
}

/// A session's view of its timer: which deadline it has in the heap, so it
/// re-arms only when its deadline moved earlier than that one.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct ArmedTimer {
    armed: Option<Instant>,
}

impl ArmedTimer {
    /// Arms `deadline` in `heap` for `session` unless an entry at or before
    /// it is already armed.
    pub(crate) fn ensure(
        &mut self,
        heap: &mut Deadlines,
        session: usize,
        deadline: Option<Instant>,
    ) {
        let Some(deadline) = deadline else {
            return;
        };
        if self.armed.is_none_or(|armed| deadline < armed) {
            heap.arm(session, deadline);
            self.armed = Some(deadline);
        }
    }

    /// Handles a popped entry at `at`: true if it is the armed one (the
    /// session must check its deadline and re-arm), false if it is stale.
    pub(crate) fn fired(&mut self, at: Instant) -> bool {
        if self.armed == Some(at) {
            self.armed = None;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    #[allow(clippy::disallowed_methods)] // a base instant; no timing measured
    fn stale_entries_are_recognised_and_earlier_deadlines_rearm() {
        let t0 = Instant::now();
        let mut heap = Deadlines::new();
        let mut timer = ArmedTimer::default();
        timer.ensure(&mut heap, 7, Some(t0 + Duration::from_secs(10)));
        // A later deadline does not add an entry.
        timer.ensure(&mut heap, 7, Some(t0 + Duration::from_secs(20)));
        assert_eq!(heap.len(), 1);
        // An earlier one does.
        timer.ensure(&mut heap, 7, Some(t0 + Duration::from_secs(5)));
        assert_eq!(heap.len(), 2);
        let (at, s) = heap.pop_due(t0 + Duration::from_secs(6)).unwrap();
        assert_eq!(s, 7);
        assert!(timer.fired(at));
        assert!(heap.pop_due(t0 + Duration::from_secs(6)).is_none());
        let (at, _) = heap.pop_due(t0 + Duration::from_secs(10)).unwrap();
        assert!(!timer.fired(at), "the 10 s entry was superseded");
    }
}
