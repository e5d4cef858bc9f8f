//! `max_connections`: how many client connections (TCP sessions and HTTP
//! connections together) one worker keeps open at once.
//!
//! Owns the worker-wide count. The TCP and HTTP proxies share one
//! [`ConnectionLimit`]; each accepted connection holds a [`ConnectionSlot`]
//! for as long as its session lives (dropping the session frees the slot,
//! whatever path closed it). A connection accepted while every slot is
//! taken is closed at once and counted in `<proto>.connections_refused`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The worker's connection budget, shared by its TCP and HTTP proxies.
#[derive(Debug, Clone)]
pub struct ConnectionLimit {
    /// `0`: unlimited.
    max: usize,
    open: Arc<AtomicUsize>,
}

impl Default for ConnectionLimit {
    fn default() -> Self {
        ConnectionLimit::new(0)
    }
}

impl ConnectionLimit {
    /// A budget of `max` connections (`0`: unlimited).
    pub fn new(max: usize) -> Self {
        ConnectionLimit {
            max,
            open: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The configured maximum (`0`: unlimited).
    pub fn max(&self) -> usize {
        self.max
    }

    /// Connections holding a slot now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Takes a slot for a new connection; `None` when the budget is spent
    /// (the caller closes the connection and counts it refused).
    pub fn try_acquire(&self) -> Option<ConnectionSlot> {
        let taken = self
            .open
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |open| {
                (self.max == 0 || open < self.max).then_some(open + 1)
            });
        taken.ok().map(|_| ConnectionSlot {
            open: Arc::clone(&self.open),
        })
    }
}

/// One connection's place in the budget; freed when dropped.
#[derive(Debug)]
pub struct ConnectionSlot {
    open: Arc<AtomicUsize>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let previous = self.open.fetch_sub(1, Ordering::Relaxed);
        debug_assert!(previous > 0, "a slot freed twice");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_refused_at_the_limit_and_freed_on_drop() {
        let limit = ConnectionLimit::new(2);
        let shared = limit.clone();
        let a = limit.try_acquire().expect("first slot");
        let b = shared
            .try_acquire()
            .expect("second slot, through the clone");
        assert_eq!(limit.open(), 2);
        assert!(limit.try_acquire().is_none(), "a third over max 2");
        assert!(shared.try_acquire().is_none());
        drop(a);
        assert_eq!(shared.open(), 1);
        let c = limit.try_acquire().expect("a freed slot is reusable");
        drop((b, c));
        assert_eq!(limit.open(), 0);
    }

    #[test]
    fn zero_means_unlimited() {
        let limit = ConnectionLimit::new(0);
        let slots: Vec<_> = (0..10_000).filter_map(|_| limit.try_acquire()).collect();
        assert_eq!(slots.len(), 10_000);
        assert_eq!(limit.open(), 10_000);
    }
}
