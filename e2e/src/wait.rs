//! Bounded waiting: a [`Deadline`] and [`wait_until`], which polls a
//! condition until it holds or the deadline passes. The only place of the
//! harness that reads the clock.

use std::time::{Duration, Instant};

/// Interval between two polls of a condition.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// A point in time after which a wait gives up.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    at: Instant,
    budget: Duration,
}

impl Deadline {
    /// A deadline `budget` from now.
    pub fn after(budget: Duration) -> Self {
        Deadline {
            at: now() + budget,
            budget,
        }
    }

    /// Whether the deadline has passed.
    pub fn is_past(&self) -> bool {
        now() >= self.at
    }

    /// Time left, zero once passed.
    pub fn remaining(&self) -> Duration {
        self.at.saturating_duration_since(now())
    }

    /// The budget this deadline was created with.
    pub fn budget(&self) -> Duration {
        self.budget
    }
}

/// The current instant (harness code is an I/O shell: reading the clock is
/// its job).
#[allow(clippy::disallowed_methods)]
pub fn now() -> Instant {
    Instant::now()
}

/// Polls `condition` every [`POLL_INTERVAL`] until it returns `Some`, or
/// returns `None` once `timeout` has passed (the condition is always tried at
/// least once, and once more at the deadline).
pub fn poll_until<T>(timeout: Duration, mut condition: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Deadline::after(timeout);
    loop {
        if let Some(value) = condition() {
            return Some(value);
        }
        if deadline.is_past() {
            return None;
        }
        std::thread::sleep(POLL_INTERVAL.min(deadline.remaining()));
    }
}

/// Like [`poll_until`], but panics naming `what` when the time is up.
pub fn wait_until<T>(what: &str, timeout: Duration, condition: impl FnMut() -> Option<T>) -> T {
    match poll_until(timeout, condition) {
        Some(value) => value,
        None => panic!("timed out after {timeout:?} waiting for {what}"),
    }
}

/// Polls a boolean condition; panics naming `what` when the time is up.
pub fn wait_for(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    wait_until(what, timeout, || condition().then_some(()))
}
