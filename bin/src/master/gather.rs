//! Gathering worker answers: which worker request ids an order still waits
//! for, what each worker answered, and when the order gives up waiting.
//!
//! Pure bookkeeping: no sockets, no clock reads (every entry point takes
//! `now`). The master's loop (`orders.rs`, `mod.rs`) sends the requests and
//! turns a finished [`Gathered`] into an answer. An order is finished exactly
//! once: when its last awaited answer arrives, when its worker dies, or at its
//! deadline.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use sozu_command_lib::command::{ResponseContent, ResponseStatus, WorkerResponse};

/// Identifies one gathered order inside the master.
pub(crate) type OrderId = u64;

/// Why a worker did not succeed for an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WorkerFailure {
    /// The worker answered FAILURE with this message.
    Refused(String),
    /// No answer before the deadline.
    TimedOut(Duration),
    /// The worker exited (or its channel closed) before answering.
    Gone,
}

impl std::fmt::Display for WorkerFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WorkerFailure::Refused(message) => write!(f, "{message}"),
            WorkerFailure::TimedOut(timeout) => {
                write!(f, "did not answer within {} ms", timeout.as_millis())
            }
            WorkerFailure::Gone => write!(f, "exited before answering"),
        }
    }
}

/// A finished order: every awaited answer is in, or given up on.
#[derive(Debug)]
pub(crate) struct Gathered<P> {
    pub id: OrderId,
    /// What the master meant to do with the answers (who asked, why).
    pub purpose: P,
    /// Workers whose every request succeeded.
    pub succeeded: Vec<u32>,
    /// The first failure of each worker that failed, by worker id.
    pub failures: BTreeMap<u32, WorkerFailure>,
    /// Content answered by each worker (the last one if several).
    pub contents: BTreeMap<u32, ResponseContent>,
    /// Workers that did not answer in time (also in `failures`).
    pub timed_out: Vec<u32>,
}

impl<P> Gathered<P> {
    /// Splits off the purpose, so whoever it names gets the answers alone.
    pub(crate) fn into_parts(self) -> (P, Gathered<()>) {
        let Gathered {
            id,
            purpose,
            succeeded,
            failures,
            contents,
            timed_out,
        } = self;
        let answers = Gathered {
            id,
            purpose: (),
            succeeded,
            failures,
            contents,
            timed_out,
        };
        (purpose, answers)
    }

    /// Whether every worker succeeded.
    pub(crate) fn is_ok(&self) -> bool {
        self.failures.is_empty()
    }

    /// "worker 1: message; worker 2: did not answer within 10000 ms".
    pub(crate) fn failure_summary(&self) -> String {
        self.failures
            .iter()
            .map(|(worker, failure)| format!("worker {worker}: {failure}"))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// What an incoming worker answer meant.
#[derive(Debug)]
pub(crate) enum AnswerEvent<P> {
    /// A PROCESSING answer: the order goes on, its deadline was pushed back.
    Progress {
        order: OrderId,
        worker: u32,
        message: String,
    },
    /// The answer was the last one the order waited for.
    Finished(Gathered<P>),
    /// A final answer; the order still waits for others.
    Recorded,
    /// No order waits for this id (late answer after a timeout, or a worker
    /// inventing ids): ignored.
    Unknown,
}

struct Pending<P> {
    purpose: P,
    /// request id → worker
    waiting: BTreeMap<String, u32>,
    /// Workers that got at least one request of this order.
    involved: Vec<u32>,
    failures: BTreeMap<u32, WorkerFailure>,
    contents: BTreeMap<u32, ResponseContent>,
    timed_out: Vec<u32>,
    /// `None`: waits as long as it takes (soft stop).
    timeout: Option<Duration>,
    deadline: Option<Instant>,
}

/// Every order waiting for worker answers.
pub(crate) struct GatherTable<P> {
    orders: BTreeMap<OrderId, Pending<P>>,
    by_request: HashMap<String, OrderId>,
    next_order: OrderId,
    next_request: u64,
}

impl<P> Default for GatherTable<P> {
    fn default() -> Self {
        Self::new()
    }
}

impl<P> GatherTable<P> {
    pub(crate) fn new() -> Self {
        GatherTable {
            orders: BTreeMap::new(),
            by_request: HashMap::new(),
            next_order: 1,
            next_request: 1,
        }
    }

    /// Opens an order that will wait at most `timeout` (from the last sign of
    /// life) for each answer; `None` waits forever.
    pub(crate) fn open(&mut self, purpose: P, now: Instant, timeout: Option<Duration>) -> OrderId {
        let id = self.next_order;
        self.next_order += 1;
        self.orders.insert(
            id,
            Pending {
                purpose,
                waiting: BTreeMap::new(),
                involved: Vec::new(),
                failures: BTreeMap::new(),
                contents: BTreeMap::new(),
                timed_out: Vec::new(),
                timeout,
                deadline: timeout.map(|t| now + t),
            },
        );
        id
    }

    /// Allocates a request id awaited by `order` from `worker`. Returns `None`
    /// if the order is unknown (already finished).
    pub(crate) fn expect(&mut self, order: OrderId, worker: u32) -> Option<String> {
        let pending = self.orders.get_mut(&order)?;
        let request_id = format!("{order}-{}", self.next_request);
        self.next_request += 1;
        pending.waiting.insert(request_id.clone(), worker);
        if !pending.involved.contains(&worker) {
            pending.involved.push(worker);
        }
        self.by_request.insert(request_id.clone(), order);
        Some(request_id)
    }

    /// Finishes `order` now if it waits for nothing (no worker was live, or
    /// the caller expected nothing).
    pub(crate) fn finish_if_complete(&mut self, order: OrderId) -> Option<Gathered<P>> {
        if self.orders.get(&order)?.waiting.is_empty() {
            self.finish(order)
        } else {
            None
        }
    }

    /// Records one worker answer.
    pub(crate) fn on_answer(
        &mut self,
        worker: u32,
        answer: WorkerResponse,
        now: Instant,
    ) -> AnswerEvent<P> {
        let Some(&order) = self.by_request.get(&answer.id) else {
            return AnswerEvent::Unknown;
        };
        let Some(pending) = self.orders.get_mut(&order) else {
            self.by_request.remove(&answer.id);
            return AnswerEvent::Unknown;
        };
        if pending.waiting.get(&answer.id) != Some(&worker) {
            // An id issued to another worker: never trust it.
            return AnswerEvent::Unknown;
        }
        if let Some(timeout) = pending.timeout {
            pending.deadline = Some(now + timeout);
        }
        match answer.status() {
            ResponseStatus::Processing => {
                return AnswerEvent::Progress {
                    order,
                    worker,
                    message: answer.message,
                }
            }
            ResponseStatus::Ok => {}
            ResponseStatus::Failure => {
                pending
                    .failures
                    .entry(worker)
                    .or_insert(WorkerFailure::Refused(answer.message));
            }
        }
        if let Some(content) = answer.content {
            pending.contents.insert(worker, content);
        }
        pending.waiting.remove(&answer.id);
        self.by_request.remove(&answer.id);
        if pending.waiting.is_empty() {
            match self.finish(order) {
                Some(gathered) => AnswerEvent::Finished(gathered),
                None => AnswerEvent::Recorded,
            }
        } else {
            AnswerEvent::Recorded
        }
    }

    /// A worker is gone: every request it had not answered fails, and the
    /// orders that now wait for nothing finish.
    pub(crate) fn on_worker_gone(&mut self, worker: u32) -> Vec<Gathered<P>> {
        let mut done = Vec::new();
        let ids: Vec<OrderId> = self.orders.keys().copied().collect();
        for order in ids {
            let Some(pending) = self.orders.get_mut(&order) else {
                continue;
            };
            let lost: Vec<String> = pending
                .waiting
                .iter()
                .filter(|(_, w)| **w == worker)
                .map(|(id, _)| id.clone())
                .collect();
            if lost.is_empty() {
                continue;
            }
            for id in lost {
                pending.waiting.remove(&id);
                self.by_request.remove(&id);
            }
            pending
                .failures
                .entry(worker)
                .or_insert(WorkerFailure::Gone);
            if pending.waiting.is_empty() {
                done.extend(self.finish(order));
            }
        }
        done
    }

    /// Finishes every order whose deadline is at or before `now`; the
    /// workers still awaited are reported as timed out.
    pub(crate) fn on_timeout(&mut self, now: Instant) -> Vec<Gathered<P>> {
        let due: Vec<OrderId> = self
            .orders
            .iter()
            .filter(|(_, p)| p.deadline.is_some_and(|d| d <= now))
            .map(|(id, _)| *id)
            .collect();
        let mut done = Vec::new();
        for order in due {
            if let Some(pending) = self.orders.get_mut(&order) {
                let timeout = pending.timeout.unwrap_or_default();
                let late: Vec<(String, u32)> =
                    std::mem::take(&mut pending.waiting).into_iter().collect();
                for (id, worker) in late {
                    self.by_request.remove(&id);
                    if !pending.timed_out.contains(&worker) {
                        pending.timed_out.push(worker);
                    }
                    pending
                        .failures
                        .entry(worker)
                        .or_insert(WorkerFailure::TimedOut(timeout));
                }
            }
            done.extend(self.finish(order));
        }
        done
    }

    /// The earliest deadline of any open order.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.orders.values().filter_map(|p| p.deadline).min()
    }

    /// How many answers open order `order` still waits for (`None` once it
    /// is finished).
    pub(crate) fn waiting(&self, order: OrderId) -> Option<usize> {
        self.orders.get(&order).map(|p| p.waiting.len())
    }

    /// The purpose of an open order.
    pub(crate) fn purpose(&self, order: OrderId) -> Option<&P> {
        self.orders.get(&order).map(|p| &p.purpose)
    }

    /// Number of open orders.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.orders.len()
    }

    /// Whether no order is open.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.orders.is_empty()
    }

    /// Open orders matching `predicate` (by purpose).
    pub(crate) fn count_where(&self, predicate: impl Fn(&P) -> bool) -> usize {
        self.orders
            .values()
            .filter(|p| predicate(&p.purpose))
            .count()
    }

    fn finish(&mut self, order: OrderId) -> Option<Gathered<P>> {
        let pending = self.orders.remove(&order)?;
        for id in pending.waiting.keys() {
            self.by_request.remove(id);
        }
        let succeeded = pending
            .involved
            .iter()
            .copied()
            .filter(|w| !pending.failures.contains_key(w))
            .collect();
        Some(Gathered {
            id: order,
            purpose: pending.purpose,
            succeeded,
            failures: pending.failures,
            contents: pending.contents,
            timed_out: pending.timed_out,
        })
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // a base instant; no test depends on elapsed time
mod tests {
    use super::*;

    fn answer(id: &str, status: ResponseStatus, message: &str) -> WorkerResponse {
        WorkerResponse {
            id: id.to_owned(),
            status: status as i32,
            message: message.to_owned(),
            content: None,
        }
    }

    #[test]
    fn order_finishes_when_every_worker_answered_ok() {
        let now = Instant::now();
        let mut table = GatherTable::new();
        let order = table.open("add", now, Some(Duration::from_secs(10)));
        let a = table.expect(order, 1).unwrap();
        let b = table.expect(order, 2).unwrap();
        assert!(matches!(
            table.on_answer(1, answer(&a, ResponseStatus::Ok, ""), now),
            AnswerEvent::Recorded
        ));
        let AnswerEvent::Finished(done) =
            table.on_answer(2, answer(&b, ResponseStatus::Ok, ""), now)
        else {
            panic!("the last answer must finish the order");
        };
        assert!(done.is_ok());
        assert_eq!(done.succeeded, vec![1, 2]);
        assert!(table.is_empty());
    }

    #[test]
    fn failure_names_the_worker_and_its_message() {
        let now = Instant::now();
        let mut table = GatherTable::new();
        let order = table.open((), now, Some(Duration::from_secs(10)));
        let a = table.expect(order, 1).unwrap();
        let b = table.expect(order, 2).unwrap();
        table.on_answer(1, answer(&a, ResponseStatus::Ok, ""), now);
        let AnswerEvent::Finished(done) = table.on_answer(
            2,
            answer(
                &b,
                ResponseStatus::Failure,
                "cannot bind 127.0.0.1:53: address in use",
            ),
            now,
        ) else {
            panic!("finished expected");
        };
        assert!(!done.is_ok());
        assert_eq!(done.succeeded, vec![1]);
        assert_eq!(
            done.failure_summary(),
            "worker 2: cannot bind 127.0.0.1:53: address in use"
        );
    }

    #[test]
    fn silent_worker_times_out_at_the_deadline_and_not_before() {
        let now = Instant::now();
        let timeout = Duration::from_secs(10);
        let mut table = GatherTable::new();
        let order = table.open((), now, Some(timeout));
        let a = table.expect(order, 1).unwrap();
        table.expect(order, 2).unwrap();
        table.on_answer(1, answer(&a, ResponseStatus::Ok, ""), now);
        assert_eq!(table.next_deadline(), Some(now + timeout));
        assert!(table
            .on_timeout(now + timeout - Duration::from_millis(1))
            .is_empty());
        let done = table.on_timeout(now + timeout);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].timed_out, vec![2]);
        assert_eq!(
            done[0].failures.get(&2),
            Some(&WorkerFailure::TimedOut(timeout))
        );
        assert!(table.next_deadline().is_none());
    }

    #[test]
    fn late_answer_after_timeout_is_ignored() {
        let now = Instant::now();
        let mut table = GatherTable::new();
        let order = table.open((), now, Some(Duration::from_secs(1)));
        let a = table.expect(order, 1).unwrap();
        assert_eq!(table.on_timeout(now + Duration::from_secs(1)).len(), 1);
        assert!(matches!(
            table.on_answer(1, answer(&a, ResponseStatus::Ok, ""), now),
            AnswerEvent::Unknown
        ));
    }

    #[test]
    fn processing_answer_pushes_the_deadline_back() {
        let now = Instant::now();
        let timeout = Duration::from_secs(10);
        let mut table = GatherTable::new();
        let order = table.open((), now, Some(timeout));
        let a = table.expect(order, 1).unwrap();
        let later = now + Duration::from_secs(8);
        assert!(matches!(
            table.on_answer(1, answer(&a, ResponseStatus::Processing, "draining"), later),
            AnswerEvent::Progress { worker: 1, .. }
        ));
        assert!(table.on_timeout(now + timeout).is_empty());
        assert_eq!(table.next_deadline(), Some(later + timeout));
    }

    #[test]
    fn dead_worker_fails_its_requests_and_finishes_orders() {
        let now = Instant::now();
        let mut table = GatherTable::new();
        let first = table.open("one", now, Some(Duration::from_secs(10)));
        table.expect(first, 1).unwrap();
        let second = table.open("two", now, Some(Duration::from_secs(10)));
        table.expect(second, 1).unwrap();
        let other = table.expect(second, 2).unwrap();
        let done = table.on_worker_gone(1);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].purpose, "one");
        assert_eq!(done[0].failures.get(&1), Some(&WorkerFailure::Gone));
        let AnswerEvent::Finished(done) =
            table.on_answer(2, answer(&other, ResponseStatus::Ok, ""), now)
        else {
            panic!("finished expected");
        };
        assert_eq!(done.purpose, "two");
        assert_eq!(done.succeeded, vec![2]);
        assert_eq!(done.failure_summary(), "worker 1: exited before answering");
    }

    #[test]
    fn an_id_answered_by_the_wrong_worker_is_ignored() {
        let now = Instant::now();
        let mut table = GatherTable::new();
        let order = table.open((), now, Some(Duration::from_secs(10)));
        let a = table.expect(order, 1).unwrap();
        assert!(matches!(
            table.on_answer(2, answer(&a, ResponseStatus::Ok, ""), now),
            AnswerEvent::Unknown
        ));
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn order_with_no_worker_finishes_at_once() {
        let now = Instant::now();
        let mut table: GatherTable<()> = GatherTable::new();
        let order = table.open((), now, Some(Duration::from_secs(10)));
        let done = table.finish_if_complete(order).unwrap();
        assert!(done.is_ok());
        assert!(done.succeeded.is_empty());
    }

    #[test]
    fn order_without_timeout_never_expires() {
        let now = Instant::now();
        let mut table = GatherTable::new();
        let order = table.open((), now, None);
        table.expect(order, 1).unwrap();
        assert!(table.next_deadline().is_none());
        assert!(table.on_timeout(now + Duration::from_secs(3600)).is_empty());
    }

    #[test]
    fn content_is_kept_per_worker() {
        let now = Instant::now();
        let mut table = GatherTable::new();
        let order = table.open((), now, Some(Duration::from_secs(10)));
        let a = table.expect(order, 3).unwrap();
        let mut resp = answer(&a, ResponseStatus::Ok, "");
        resp.content = Some(ResponseContent::default());
        let AnswerEvent::Finished(done) = table.on_answer(3, resp, now) else {
            panic!("finished expected");
        };
        assert!(done.contents.contains_key(&3));
    }
}
