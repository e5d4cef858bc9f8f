//! Metrics registry: counters, gauges and time histograms per proxy,
//! listener, cluster and backend.
//!
//! Owns every metric value of the worker. A metric is registered once (name +
//! [`Scope`], allocating) and returns a [`MetricHandle`]; counting through a
//! handle is an index and an add, never an allocation or a lookup, so the
//! datapath can count every datagram. Answers the query-metrics order
//! ([`MetricsRegistry::worker_metrics`]) and feeds the optional statsd push
//! ([`statsd::StatsdSink`]). It never reads the clock: durations are given.
//!
//! `configure_metrics` (Sōzu's order) acts here: `DISABLED` stops counters
//! and time metrics from moving (gauges keep tracking their level, since a
//! level must be right when metrics are enabled again), `ENABLED` resumes
//! them, `CLEAR` sets every counter to zero and empties every time metric
//! (gauges, being levels, are kept). See [`MetricsRegistry::configure`].

mod handle;
mod histogram;
pub mod prometheus;
mod query;
mod scoped;
pub(crate) mod statsd;

#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sozu_command_lib::command::MetricsConfiguration;

use crate::backends::{BackendId, ClusterId};

pub use handle::{count, gauge_add, register, time};
pub use histogram::{Histogram, Summary, MAX_PRECISION};
pub use query::aggregate;
pub use scoped::{ScopeHandles, ScopedHandleCache};

/// Metric names of the UDP datapath (DESIGN §4).
pub mod names {
    /// Counter: flows opened.
    pub const FLOWS_CREATED: &str = "udp.flows.created";
    /// Counter: flows closed, whatever the reason (the access record says
    /// which).
    pub const FLOWS_EVICTED: &str = "udp.flows.evicted";
    /// Counter: new sources refused at `max_flows`.
    pub const FLOWS_SHED: &str = "udp.flows.shed";
    /// Gauge: flows alive now.
    pub const ACTIVE_FLOWS: &str = "udp.active_flows";
    /// Counter: datagrams received from clients.
    pub const DATAGRAMS_IN: &str = "udp.datagrams.in";
    /// Counter: datagrams sent back to clients.
    pub const DATAGRAMS_OUT: &str = "udp.datagrams.out";
    /// Counter: bytes received from clients.
    pub const BYTES_IN: &str = "udp.bytes.in";
    /// Counter: bytes sent back to clients.
    pub const BYTES_OUT: &str = "udp.bytes.out";
    /// Prefix of the per-reason drop counters (see [`dropped`]).
    pub const DATAGRAMS_DROPPED: &str = "udp.datagrams.dropped";
    /// Time: lifetime of a closed flow (milliseconds).
    pub const FLOW_DURATION: &str = "udp.flow.duration";

    /// The drop counter for a reason, e.g. `udp.datagrams.dropped.shed`.
    /// Allocates: call it when registering, not per datagram.
    pub fn dropped(reason: &str) -> String {
        format!("{DATAGRAMS_DROPPED}.{reason}")
    }
}

/// Where a metric applies.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// The whole worker.
    Proxy,
    /// One listener, by its address.
    Listener(SocketAddr),
    /// One cluster.
    Cluster(ClusterId),
    /// One backend of a cluster.
    Backend(ClusterId, BackendId),
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Proxy => f.write_str("proxy"),
            Scope::Listener(addr) => write!(f, "listener {addr}"),
            Scope::Cluster(c) => write!(f, "cluster {c}"),
            Scope::Backend(c, b) => write!(f, "backend {c}/{b}"),
        }
    }
}

/// What a metric measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetricKind {
    /// A monotonic count (reported as `count`, statsd `|c` deltas).
    Counter,
    /// A level (reported as `gauge`, statsd `|g`).
    Gauge,
    /// A time distribution in milliseconds (reported as `percentiles`,
    /// statsd `|ms`).
    Time,
}

/// A pre-resolved metric: copy it into the flow / listener / backend state
/// at registration and count through it.
///
/// A handle of a removed metric is stale: using it does nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MetricHandle {
    index: u32,
    generation: u32,
}

/// Registering a name that already exists in the scope with another kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("metric {name:?} in {scope} is a {registered:?}, not a {requested:?}")]
pub struct KindMismatch {
    /// The metric's name.
    pub name: String,
    /// Its scope, as displayed.
    pub scope: String,
    /// The kind it was registered with.
    pub registered: MetricKind,
    /// The kind asked for now.
    pub requested: MetricKind,
}

#[derive(Debug, Clone)]
pub(crate) enum Value {
    Counter(i64),
    Gauge(u64),
    Time(Box<Histogram>),
}

impl Value {
    fn kind(&self) -> MetricKind {
        match self {
            Value::Counter(_) => MetricKind::Counter,
            Value::Gauge(_) => MetricKind::Gauge,
            Value::Time(_) => MetricKind::Time,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) name: Arc<str>,
    pub(crate) scope: Scope,
    pub(crate) value: Value,
}

#[derive(Debug, Clone)]
struct Slot {
    generation: u32,
    entry: Option<Entry>,
}

/// All metrics of a worker.
#[derive(Debug, Default)]
pub struct MetricsRegistry {
    slots: Vec<Slot>,
    free: Vec<u32>,
    by_key: HashMap<(Scope, Arc<str>), u32>,
    /// Each scope's slots, so removing a scope costs its own metrics, not
    /// a walk over the registry's (a refused listener or a removed backend
    /// after a large state was O(every backend's metrics)).
    by_scope: HashMap<Scope, Vec<u32>>,
    /// Each cluster's backends that have metrics, so removing a cluster
    /// finds its backends' scopes.
    backends_of: HashMap<ClusterId, HashSet<BackendId>>,
    /// `configure_metrics DISABLED`: counters and times do not move.
    disabled: bool,
}

impl MetricsRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The handle of `name` in `scope`, created at zero if new. Registering
    /// the same name and scope again returns the same handle.
    pub fn register(
        &mut self,
        name: &str,
        scope: Scope,
        kind: MetricKind,
    ) -> Result<MetricHandle, KindMismatch> {
        let name: Arc<str> = Arc::from(name);
        let key = (scope, name);
        if let Some(&index) = self.by_key.get(&key) {
            let slot = &self.slots[index as usize];
            let registered = slot
                .entry
                .as_ref()
                .map(|e| e.value.kind())
                .expect("invariant: indexed slots are occupied");
            if registered != kind {
                return Err(KindMismatch {
                    name: key.1.to_string(),
                    scope: key.0.to_string(),
                    registered,
                    requested: kind,
                });
            }
            return Ok(MetricHandle {
                index,
                generation: slot.generation,
            });
        }
        let value = match kind {
            MetricKind::Counter => Value::Counter(0),
            MetricKind::Gauge => Value::Gauge(0),
            MetricKind::Time => Value::Time(Box::default()),
        };
        let entry = Entry {
            name: key.1.clone(),
            scope: key.0.clone(),
            value,
        };
        let index = match self.free.pop() {
            Some(index) => {
                let slot = &mut self.slots[index as usize];
                slot.entry = Some(entry);
                index
            }
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    entry: Some(entry),
                });
                (self.slots.len() - 1) as u32
            }
        };
        if let Scope::Backend(cluster, backend) = &key.0 {
            self.backends_of
                .entry(cluster.clone())
                .or_default()
                .insert(backend.clone());
        }
        self.by_scope.entry(key.0.clone()).or_default().push(index);
        self.by_key.insert(key, index);
        let handle = MetricHandle {
            index,
            generation: self.slots[index as usize].generation,
        };
        self.check_invariants();
        Ok(handle)
    }

    /// Removes every metric of `scope`; for a cluster, also its backends'.
    /// Their handles become stale.
    /// Costs the metrics removed.
    pub fn remove_scope(&mut self, scope: &Scope) {
        let mut scopes = vec![scope.clone()];
        match scope {
            Scope::Cluster(cluster) => {
                if let Some(backends) = self.backends_of.remove(cluster) {
                    scopes.extend(
                        backends
                            .into_iter()
                            .map(|backend| Scope::Backend(cluster.clone(), backend)),
                    );
                }
            }
            Scope::Backend(cluster, backend) => {
                if let Some(backends) = self.backends_of.get_mut(cluster) {
                    backends.remove(backend);
                    if backends.is_empty() {
                        self.backends_of.remove(cluster);
                    }
                }
            }
            Scope::Proxy | Scope::Listener(_) => {}
        }
        let doomed: Vec<u32> = scopes
            .iter()
            .filter_map(|s| self.by_scope.remove(s))
            .flatten()
            .collect();
        for index in doomed {
            let slot = &mut self.slots[index as usize];
            if let Some(entry) = slot.entry.take() {
                self.by_key.remove(&(entry.scope, entry.name));
            }
            slot.generation = slot.generation.wrapping_add(1);
            self.free.push(index);
        }
        self.check_invariants();
    }

    fn value_mut(&mut self, handle: MetricHandle) -> Option<&mut Value> {
        let slot = self.slots.get_mut(handle.index as usize)?;
        if slot.generation != handle.generation {
            return None;
        }
        slot.entry.as_mut().map(|e| &mut e.value)
    }

    /// Applies a `configure_metrics` order (see the module doc).
    pub fn configure(&mut self, configuration: MetricsConfiguration) {
        match configuration {
            MetricsConfiguration::Enabled => self.disabled = false,
            MetricsConfiguration::Disabled => self.disabled = true,
            MetricsConfiguration::Clear => {
                for slot in &mut self.slots {
                    match slot.entry.as_mut().map(|e| &mut e.value) {
                        Some(Value::Counter(v)) => *v = 0,
                        Some(Value::Time(h)) => h.clear(),
                        Some(Value::Gauge(_)) | None => {}
                    }
                }
            }
        }
    }

    /// Whether counters and times move (`configure_metrics`).
    pub fn is_enabled(&self) -> bool {
        !self.disabled
    }

    /// Adds `delta` to a counter.
    pub fn count(&mut self, handle: MetricHandle, delta: i64) {
        if self.disabled {
            return;
        }
        match self.value_mut(handle) {
            Some(Value::Counter(v)) => *v = v.saturating_add(delta),
            Some(_) => debug_assert!(false, "count() on a non-counter"),
            None => {}
        }
    }

    /// Adds one to a counter.
    pub fn incr(&mut self, handle: MetricHandle) {
        self.count(handle, 1);
    }

    /// Sets a gauge.
    pub fn gauge_set(&mut self, handle: MetricHandle, value: u64) {
        match self.value_mut(handle) {
            Some(Value::Gauge(v)) => *v = value,
            Some(_) => debug_assert!(false, "gauge_set() on a non-gauge"),
            None => {}
        }
    }

    /// Moves a gauge by `delta`, saturating at 0.
    pub fn gauge_add(&mut self, handle: MetricHandle, delta: i64) {
        match self.value_mut(handle) {
            Some(Value::Gauge(v)) => *v = v.saturating_add_signed(delta),
            Some(_) => debug_assert!(false, "gauge_add() on a non-gauge"),
            None => {}
        }
    }

    /// Records a duration (in milliseconds) in a time metric.
    pub fn record_time(&mut self, handle: MetricHandle, duration: Duration) {
        if self.disabled {
            return;
        }
        let ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        match self.value_mut(handle) {
            Some(Value::Time(h)) => h.record(ms),
            Some(_) => debug_assert!(false, "record_time() on a non-time metric"),
            None => {}
        }
    }

    /// A counter's value (`None` if stale or not a counter).
    pub fn counter(&self, handle: MetricHandle) -> Option<i64> {
        match self.value(handle)? {
            Value::Counter(v) => Some(*v),
            _ => None,
        }
    }

    /// A gauge's value (`None` if stale or not a gauge).
    pub fn gauge(&self, handle: MetricHandle) -> Option<u64> {
        match self.value(handle)? {
            Value::Gauge(v) => Some(*v),
            _ => None,
        }
    }

    /// A time metric's percentiles (`None` if stale or not a time).
    pub fn time_summary(&self, handle: MetricHandle) -> Option<Summary> {
        match self.value(handle)? {
            Value::Time(h) => Some(h.summary()),
            _ => None,
        }
    }

    fn value(&self, handle: MetricHandle) -> Option<&Value> {
        let slot = self.slots.get(handle.index as usize)?;
        if slot.generation != handle.generation {
            return None;
        }
        slot.entry.as_ref().map(|e| &e.value)
    }

    pub(crate) fn entries(&self) -> impl Iterator<Item = (u32, &Entry)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.entry.as_ref().map(|e| (i as u32, e)))
    }

    pub(crate) fn entries_mut(&mut self) -> impl Iterator<Item = (u32, u32, &mut Entry)> {
        self.slots
            .iter_mut()
            .enumerate()
            .filter_map(|(i, s)| s.entry.as_mut().map(|e| (i as u32, s.generation, e)))
    }

    /// In debug builds: every slot is either indexed or free. Walks the
    /// slots only while the registry is small (up to 1,024 metrics), so a
    /// debug worker's replay of a large state is not quadratic by it.
    fn check_invariants(&self) {
        #[cfg(debug_assertions)]
        {
            debug_assert_eq!(self.by_key.len() + self.free.len(), self.slots.len());
            if self.slots.len() <= 1_024 {
                let occupied = self.slots.iter().filter(|s| s.entry.is_some()).count();
                debug_assert_eq!(occupied, self.by_key.len());
                let scoped: usize = self.by_scope.values().map(Vec::len).sum();
                debug_assert_eq!(scoped, self.by_key.len(), "every metric is under its scope");
            }
        }
    }
}
