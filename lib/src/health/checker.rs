//! The pure probe scheduler and rise/fall state machine.
//!
//! Owns, per health-checked backend, when its next probe is due, the probe in
//! flight and its consecutive successes and failures, plus an ordered
//! schedule of that work and an index of the probes in flight, so that no
//! operation walks every cluster (the worker reads the next deadline after
//! every cluster and backend order). Time is injected; it never opens
//! sockets (see `super::probe`) nor changes backend status (the worker
//! applies the [`HealthEvent`]s it emits).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::backends::{BackendId, ClusterId};

use super::{HealthConfig, HealthMode};

/// Identifies one probe attempt; results for an older attempt are ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProbeId(u64);

impl fmt::Display for ProbeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "probe-{}", self.0)
    }
}

/// What a probe sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeKind {
    /// Connect over TCP.
    Tcp,
    /// Send this payload over UDP and wait for any reply.
    Udp {
        /// The datagram sent (may be empty).
        payload: Arc<[u8]>,
    },
}

/// A probe to run now: the worker opens a `ProbeSocket` for it and reports
/// the result with [`HealthChecker::probe_succeeded`] / `probe_failed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// Names the probe when its outcome is reported.
    pub id: ProbeId,
    /// The backend's cluster.
    pub cluster: ClusterId,
    /// The backend probed.
    pub backend: BackendId,
    /// Where to probe (the companion port for TCP probes).
    pub addr: SocketAddr,
    /// TCP connect or UDP datagram.
    pub kind: ProbeKind,
    /// After this the checker counts the probe as failed by itself.
    pub deadline: Instant,
}

/// Something the worker must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthEvent {
    /// `rise` consecutive successes on a down backend (or checking stopped
    /// while it was down): it may take new flows again.
    BackendUp {
        /// The backend's cluster.
        cluster: ClusterId,
        /// The backend.
        backend: BackendId,
    },
    /// `fall` consecutive failures on an up backend: no new flows.
    BackendDown {
        /// The backend's cluster.
        cluster: ClusterId,
        /// The backend.
        backend: BackendId,
    },
    /// The probe's result is no longer wanted (its backend or cluster went
    /// away, or checking was turned off): close its socket.
    ProbeAbandoned {
        /// The probe.
        probe: ProbeId,
    },
    /// The probe got no answer by its deadline: it counted as a failure
    /// (like a refused probe, so the worker counts it in
    /// `udp.health.probe_failed`); close its socket.
    ProbeTimedOut {
        /// The probe.
        probe: ProbeId,
        /// The backend's cluster.
        cluster: ClusterId,
        /// The backend probed.
        backend: BackendId,
    },
}

#[derive(Debug, Clone)]
struct Target {
    data_addr: SocketAddr,
    next_due: Instant,
    in_flight: Option<(ProbeId, Instant)>,
    successes: u32,
    failures: u32,
    up: bool,
}

impl Target {
    /// When the checker next has work for it: its probe's deadline while
    /// one is in flight, else when its next probe is due. Its key in
    /// [`HealthChecker::schedule`] while its cluster is probed.
    fn wakes_at(&self) -> Instant {
        match self.in_flight {
            Some((_, deadline)) => deadline,
            None => self.next_due,
        }
    }
}

/// A scheduled target and its cluster's probe settings. The schedule only
/// holds targets of probed clusters that exist (`check_invariants` proves
/// it after every change), so a miss is a bug in this module, not input.
fn scheduled<'a>(
    clusters: &'a mut HashMap<ClusterId, ClusterHealth>,
    cluster: &ClusterId,
    backend: &BackendId,
) -> (&'a HealthConfig, &'a mut Target) {
    let entry = clusters
        .get_mut(cluster)
        .expect("invariant: a scheduled target's cluster exists");
    let config = entry
        .config
        .as_ref()
        .expect("invariant: only a probed cluster's targets are scheduled");
    let target = entry
        .targets
        .get_mut(backend)
        .expect("invariant: every scheduled target exists");
    (config, target)
}

#[derive(Debug, Clone)]
struct ClusterHealth {
    /// `None` when the cluster is not probed.
    config: Option<HealthConfig>,
    /// Keyed (and so probed, at equal times) in backend id order.
    targets: BTreeMap<BackendId, Target>,
}

/// A target's place in [`HealthChecker::schedule`].
type Slot = (Instant, ClusterId, BackendId);

/// Probe scheduling and rise/fall transitions for every cluster.
///
/// Every operation costs what the cluster or backend it names costs,
/// never a walk over every cluster: the worker calls it (and reads
/// [`HealthChecker::poll_timeout`]) after each cluster and backend order,
/// so a walk here made replaying a state of n orders O(n²). The earliest
/// work is the first entry of an ordered schedule, and a probe's result
/// finds its target through an index of the probes in flight.
#[derive(Debug, Default)]
pub struct HealthChecker {
    clusters: HashMap<ClusterId, ClusterHealth>,
    /// One entry per target of a probed cluster, at [`Target::wakes_at`];
    /// none for the targets of a cluster that is not probed.
    schedule: BTreeSet<Slot>,
    /// Each probe in flight → its target.
    in_flight: HashMap<ProbeId, (ClusterId, BackendId)>,
    events: VecDeque<HealthEvent>,
    next_probe: u64,
    /// Targets and schedule entries examined so far (see
    /// [`HealthChecker::targets_visited`]).
    visited: u64,
    /// Changes since the last full invariant check (debug builds).
    #[cfg(debug_assertions)]
    changes: u64,
}

impl HealthChecker {
    /// A checker with no clusters.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many targets (a backend's probe state) and schedule entries the
    /// checker examined since it was created: a change to one backend
    /// examines that backend, never the others, so tests can prove that a
    /// large configuration does not make each order cost more.
    pub fn targets_visited(&self) -> u64 {
        self.visited
    }

    /// Sets (or replaces) a cluster's health configuration. Mode OFF stops
    /// probing: backends it had declared down are reported up again (nothing
    /// would ever bring them back) and probes in flight are abandoned. A new
    /// or changed configuration probes every backend at `now`. Costs the
    /// cluster's backends, and nothing when the configuration is unchanged.
    pub fn configure(&mut self, now: Instant, cluster: ClusterId, config: HealthConfig) {
        let entry = self
            .clusters
            .entry(cluster.clone())
            .or_insert_with(|| ClusterHealth {
                config: None,
                targets: BTreeMap::new(),
            });
        let probed = config.mode != HealthMode::Off;
        let changed = entry.config.as_ref() != Some(&config);
        if probed && !changed {
            return;
        }
        if entry.config.is_some() {
            for (backend, t) in &entry.targets {
                self.visited += 1;
                let slot = (t.wakes_at(), cluster.clone(), backend.clone());
                let removed = self.schedule.remove(&slot);
                debug_assert!(removed, "invariant: a probed target is scheduled");
            }
        }
        if probed {
            for (backend, t) in &mut entry.targets {
                self.visited += 1;
                t.next_due = now;
                self.schedule
                    .insert((t.wakes_at(), cluster.clone(), backend.clone()));
            }
            entry.config = Some(config);
        } else {
            entry.config = None;
            for (backend, t) in &mut entry.targets {
                self.visited += 1;
                if let Some((probe, _)) = t.in_flight.take() {
                    self.in_flight.remove(&probe);
                    self.events.push_back(HealthEvent::ProbeAbandoned { probe });
                }
                if !t.up {
                    self.events.push_back(HealthEvent::BackendUp {
                        cluster: cluster.clone(),
                        backend: backend.clone(),
                    });
                }
                *t = fresh_target(t.data_addr, now);
            }
        }
        self.check_invariants(Some(&cluster));
    }

    /// Forgets a cluster (abandoning its probes in flight).
    pub fn remove_cluster(&mut self, cluster: &str) {
        let Some((cluster, entry)) = self.clusters.remove_entry(cluster) else {
            return;
        };
        for (backend, t) in entry.targets {
            self.visited += 1;
            if entry.config.is_some() {
                self.schedule
                    .remove(&(t.wakes_at(), cluster.clone(), backend));
            }
            if let Some((probe, _)) = t.in_flight {
                self.in_flight.remove(&probe);
                self.events.push_back(HealthEvent::ProbeAbandoned { probe });
            }
        }
        self.check_invariants(None);
    }

    /// Tracks a backend (up, first probe due at `now` if the cluster is
    /// probed). Re-adding an id updates its address and keeps its state.
    pub fn add_backend(
        &mut self,
        now: Instant,
        cluster: ClusterId,
        backend: BackendId,
        addr: SocketAddr,
    ) {
        let entry = self
            .clusters
            .entry(cluster.clone())
            .or_insert_with(|| ClusterHealth {
                config: None,
                targets: BTreeMap::new(),
            });
        let probed = entry.config.is_some();
        self.visited += 1;
        match entry.targets.get_mut(&backend) {
            Some(t) => {
                if t.data_addr != addr {
                    let before = t.wakes_at();
                    t.data_addr = addr;
                    t.next_due = now;
                    if probed {
                        reschedule(&mut self.schedule, before, t, &cluster, &backend);
                    }
                }
            }
            None => {
                let t = fresh_target(addr, now);
                if probed {
                    self.schedule
                        .insert((t.wakes_at(), cluster.clone(), backend.clone()));
                }
                entry.targets.insert(backend, t);
            }
        }
        self.check_invariants(Some(&cluster));
    }

    /// Stops tracking a backend (abandoning its probe in flight).
    pub fn remove_backend(&mut self, cluster: &str, backend: &str) {
        let Some(cluster) = self
            .clusters
            .get_key_value(cluster)
            .map(|(id, _)| id.clone())
        else {
            return;
        };
        let entry = self
            .clusters
            .get_mut(&cluster)
            .expect("invariant: the cluster was found just above");
        self.visited += 1;
        let Some((backend, t)) = entry.targets.remove_entry(backend) else {
            return;
        };
        if entry.config.is_some() {
            self.schedule
                .remove(&(t.wakes_at(), cluster.clone(), backend));
        }
        if let Some((probe, _)) = t.in_flight {
            self.in_flight.remove(&probe);
            self.events.push_back(HealthEvent::ProbeAbandoned { probe });
        }
        self.check_invariants(Some(&cluster));
    }

    /// The next probe due at `now`, marked in flight until its deadline.
    /// Call until `None` after each wake-up. Earliest due first; costs the
    /// probes in flight past their deadline (which
    /// [`handle_timeout`](Self::handle_timeout) clears) plus one.
    pub fn poll_probe(&mut self, now: Instant) -> Option<Probe> {
        let mut due = None;
        for (at, cluster, backend) in &self.schedule {
            if *at > now {
                break;
            }
            self.visited += 1;
            let t = self
                .clusters
                .get(cluster)
                .and_then(|c| c.targets.get(backend))
                .expect("invariant: every scheduled target exists");
            if t.in_flight.is_none() {
                due = Some((*at, cluster.clone(), backend.clone()));
                break;
            }
        }
        let (at, cluster, backend) = due?;
        self.schedule
            .remove(&(at, cluster.clone(), backend.clone()));
        let (config, t) = scheduled(&mut self.clusters, &cluster, &backend);
        let id = ProbeId(self.next_probe);
        self.next_probe += 1;
        let deadline = now + config.timeout;
        t.in_flight = Some((id, deadline));
        // Interval between probe starts; a late result does not shift it.
        t.next_due = now + config.interval;
        self.schedule
            .insert((t.wakes_at(), cluster.clone(), backend.clone()));
        self.in_flight
            .insert(id, (cluster.clone(), backend.clone()));
        let (addr, kind) = match config.mode {
            HealthMode::TcpProbe => (
                SocketAddr::new(
                    t.data_addr.ip(),
                    config.tcp_port.unwrap_or(t.data_addr.port()),
                ),
                ProbeKind::Tcp,
            ),
            HealthMode::UdpProbe | HealthMode::Off => (
                t.data_addr,
                ProbeKind::Udp {
                    payload: config.udp_payload.clone(),
                },
            ),
        };
        self.check_invariants(Some(&cluster));
        Some(Probe {
            id,
            cluster,
            backend,
            addr,
            kind,
            deadline,
        })
    }

    /// Records a successful probe; `false` if it was no longer in flight
    /// (timed out, or its backend went away), in which case it is ignored.
    pub fn probe_succeeded(&mut self, _now: Instant, probe: ProbeId) -> bool {
        self.finish(probe, true)
    }

    /// Records a failed probe (refused, reset, or any socket error);
    /// `false` if it was no longer in flight.
    pub fn probe_failed(&mut self, _now: Instant, probe: ProbeId) -> bool {
        self.finish(probe, false)
    }

    /// Records a failure seen on live traffic (ECONNREFUSED on a flow's
    /// socket); it counts toward `fall` like a failed probe. Ignored (and
    /// `false`) when the cluster is not probed: without probes nothing could
    /// bring the backend back up.
    pub fn passive_failure(&mut self, _now: Instant, cluster: &str, backend: &str) -> bool {
        let Some((cluster, entry)) = self.clusters.get_key_value(cluster) else {
            return false;
        };
        let (cluster, probed) = (cluster.clone(), entry.config.is_some());
        let Some(backend) = entry
            .targets
            .get_key_value(backend)
            .map(|(id, _)| id.clone())
        else {
            return false;
        };
        self.visited += 1;
        if !probed {
            return false;
        }
        let entry = self
            .clusters
            .get_mut(&cluster)
            .expect("invariant: the cluster was found just above");
        let (Some(config), Some(t)) = (&entry.config, entry.targets.get_mut(&backend)) else {
            return false;
        };
        record(&mut self.events, &cluster, &backend, config, t, false);
        true
    }

    /// Fails every probe whose deadline has passed (emitting
    /// [`HealthEvent::ProbeTimedOut`] for each). Costs the targets whose
    /// work is due, not the others.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut late = Vec::new();
        for (at, cluster, backend) in &self.schedule {
            if *at > now {
                break;
            }
            self.visited += 1;
            let in_flight = self
                .clusters
                .get(cluster)
                .and_then(|c| c.targets.get(backend))
                .and_then(|t| t.in_flight);
            if in_flight.is_some_and(|(_, deadline)| deadline <= now) {
                late.push((*at, cluster.clone(), backend.clone()));
            }
        }
        for (at, cluster, backend) in late {
            self.schedule
                .remove(&(at, cluster.clone(), backend.clone()));
            let (config, t) = scheduled(&mut self.clusters, &cluster, &backend);
            if let Some((probe, _)) = t.in_flight.take() {
                self.in_flight.remove(&probe);
                self.events.push_back(HealthEvent::ProbeTimedOut {
                    probe,
                    cluster: cluster.clone(),
                    backend: backend.clone(),
                });
            }
            record(&mut self.events, &cluster, &backend, config, t, false);
            self.schedule.insert((t.wakes_at(), cluster, backend));
        }
        self.check_invariants(None);
    }

    /// The next event for the worker.
    pub fn poll_event(&mut self) -> Option<HealthEvent> {
        self.events.pop_front()
    }

    /// When [`poll_probe`](Self::poll_probe) or
    /// [`handle_timeout`](Self::handle_timeout) next has work: the first
    /// entry of the schedule, whatever the number of backends.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.schedule.first().map(|(at, _, _)| *at)
    }

    /// Whether the checker considers the backend up (`None` if untracked).
    pub fn is_up(&self, cluster: &str, backend: &str) -> Option<bool> {
        self.clusters
            .get(cluster)?
            .targets
            .get(backend)
            .map(|t| t.up)
    }

    fn finish(&mut self, probe: ProbeId, success: bool) -> bool {
        let Some((cluster, backend)) = self.in_flight.remove(&probe) else {
            return false;
        };
        self.visited += 1;
        let entry = self
            .clusters
            .get_mut(&cluster)
            .expect("invariant: a probe in flight has its cluster");
        let config = entry
            .config
            .as_ref()
            .expect("invariant: a probe in flight belongs to a probed cluster");
        let t = entry
            .targets
            .get_mut(&backend)
            .expect("invariant: a probe in flight has its target");
        debug_assert_eq!(t.in_flight.map(|(id, _)| id), Some(probe));
        let before = t.wakes_at();
        t.in_flight = None;
        record(&mut self.events, &cluster, &backend, config, t, success);
        reschedule(&mut self.schedule, before, t, &cluster, &backend);
        self.check_invariants(Some(&cluster));
        true
    }

    /// In debug builds: the touched cluster's targets agree with the
    /// schedule and the index of probes in flight after every change; the
    /// whole checker while it is small (up to 1,024 clusters) and
    /// after every 256th change beyond, so a debug worker's replay of a
    /// large state is not quadratic by its own checks.
    #[cfg_attr(not(debug_assertions), allow(unused_variables))]
    fn check_invariants(&mut self, touched: Option<&ClusterId>) {
        #[cfg(debug_assertions)]
        {
            self.changes = self.changes.wrapping_add(1);
            if let Some(cluster) = touched {
                if let Some(entry) = self.clusters.get(cluster) {
                    self.check_cluster(cluster, entry);
                }
            }
            if self.clusters.len() <= 1_024 || self.changes.is_multiple_of(256) {
                let mut scheduled = 0;
                for (cluster, entry) in &self.clusters {
                    self.check_cluster(cluster, entry);
                    if entry.config.is_some() {
                        scheduled += entry.targets.len();
                    }
                }
                assert_eq!(
                    self.schedule.len(),
                    scheduled,
                    "the schedule holds exactly the probed targets"
                );
                let in_flight = self
                    .clusters
                    .values()
                    .flat_map(|c| c.targets.values())
                    .filter(|t| t.in_flight.is_some())
                    .count();
                assert_eq!(
                    self.in_flight.len(),
                    in_flight,
                    "the index holds exactly the probes in flight"
                );
            }
        }
    }

    #[cfg(debug_assertions)]
    fn check_cluster(&self, cluster: &ClusterId, entry: &ClusterHealth) {
        for (backend, t) in &entry.targets {
            let slot = (t.wakes_at(), cluster.clone(), backend.clone());
            assert_eq!(
                self.schedule.contains(&slot),
                entry.config.is_some(),
                "a target is scheduled at its next work exactly when its cluster is probed"
            );
            if let Some((probe, _)) = t.in_flight {
                assert!(
                    entry.config.is_some() && probe.0 < self.next_probe,
                    "only a probed cluster has probes in flight, issued by this checker"
                );
                assert_eq!(
                    self.in_flight.get(&probe),
                    Some(&(cluster.clone(), backend.clone())),
                    "a probe in flight is indexed to its target"
                );
            }
        }
    }
}

/// Moves a probed target's schedule entry from `before` to where it now
/// wakes.
fn reschedule(
    schedule: &mut BTreeSet<Slot>,
    before: Instant,
    t: &Target,
    cluster: &ClusterId,
    backend: &BackendId,
) {
    let after = t.wakes_at();
    if after != before {
        let removed = schedule.remove(&(before, cluster.clone(), backend.clone()));
        debug_assert!(removed, "invariant: a probed target is scheduled");
        schedule.insert((after, cluster.clone(), backend.clone()));
    }
}

fn fresh_target(data_addr: SocketAddr, now: Instant) -> Target {
    Target {
        data_addr,
        next_due: now,
        in_flight: None,
        successes: 0,
        failures: 0,
        up: true,
    }
}

/// Applies one result to a target's counters, emitting a transition when a
/// threshold is crossed.
fn record(
    events: &mut VecDeque<HealthEvent>,
    cluster: &ClusterId,
    backend: &BackendId,
    config: &HealthConfig,
    t: &mut Target,
    success: bool,
) {
    if success {
        t.failures = 0;
        t.successes = t.successes.saturating_add(1);
        if !t.up && t.successes >= config.rise.get() {
            t.up = true;
            tracing::info!(cluster = %cluster, backend = %backend, successes = t.successes, "backend up");
            events.push_back(HealthEvent::BackendUp {
                cluster: cluster.clone(),
                backend: backend.clone(),
            });
        }
    } else {
        t.successes = 0;
        t.failures = t.failures.saturating_add(1);
        if t.up && t.failures >= config.fall.get() {
            t.up = false;
            tracing::warn!(cluster = %cluster, backend = %backend, failures = t.failures, "backend down");
            events.push_back(HealthEvent::BackendDown {
                cluster: cluster.clone(),
                backend: backend.clone(),
            });
        }
    }
}
