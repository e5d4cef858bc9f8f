//! The pure probe scheduler and rise/fall state machine.
//!
//! Owns, per health-checked backend, when its next probe is due, the probe in
//! flight and its consecutive successes and failures. Time is injected; it
//! never opens sockets (see `super::probe`) nor changes backend status (the
//! worker applies the [`HealthEvent`]s it emits).

use std::collections::{HashMap, VecDeque};
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
    backend: BackendId,
    data_addr: SocketAddr,
    next_due: Instant,
    in_flight: Option<(ProbeId, Instant)>,
    successes: u32,
    failures: u32,
    up: bool,
}

#[derive(Debug, Clone)]
struct ClusterHealth {
    id: ClusterId,
    /// `None` when the cluster is not probed.
    config: Option<HealthConfig>,
    targets: Vec<Target>,
}

/// Probe scheduling and rise/fall transitions for every cluster.
#[derive(Debug, Default)]
pub struct HealthChecker {
    clusters: HashMap<ClusterId, ClusterHealth>,
    events: VecDeque<HealthEvent>,
    next_probe: u64,
}

impl HealthChecker {
    /// A checker with no clusters.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets (or replaces) a cluster's health configuration. Mode OFF stops
    /// probing: backends it had declared down are reported up again (nothing
    /// would ever bring them back) and probes in flight are abandoned. A new
    /// or changed configuration probes every backend at `now`.
    pub fn configure(&mut self, now: Instant, cluster: ClusterId, config: HealthConfig) {
        let entry = self
            .clusters
            .entry(cluster.clone())
            .or_insert_with(|| ClusterHealth {
                id: cluster.clone(),
                config: None,
                targets: Vec::new(),
            });
        if config.mode == HealthMode::Off {
            entry.config = None;
            for t in &mut entry.targets {
                if let Some((probe, _)) = t.in_flight.take() {
                    self.events.push_back(HealthEvent::ProbeAbandoned { probe });
                }
                if !t.up {
                    self.events.push_back(HealthEvent::BackendUp {
                        cluster: cluster.clone(),
                        backend: t.backend.clone(),
                    });
                }
                *t = fresh_target(t.backend.clone(), t.data_addr, now);
            }
        } else {
            if entry.config.as_ref() != Some(&config) {
                for t in &mut entry.targets {
                    t.next_due = now;
                }
            }
            entry.config = Some(config);
        }
        self.check_invariants();
    }

    /// Forgets a cluster (abandoning its probes in flight).
    pub fn remove_cluster(&mut self, cluster: &str) {
        if let Some(entry) = self.clusters.remove(cluster) {
            for t in entry.targets {
                if let Some((probe, _)) = t.in_flight {
                    self.events.push_back(HealthEvent::ProbeAbandoned { probe });
                }
            }
        }
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
                id: cluster,
                config: None,
                targets: Vec::new(),
            });
        match entry.targets.iter_mut().find(|t| t.backend == backend) {
            Some(t) => {
                if t.data_addr != addr {
                    t.data_addr = addr;
                    t.next_due = now;
                }
            }
            None => entry.targets.push(fresh_target(backend, addr, now)),
        }
        self.check_invariants();
    }

    /// Stops tracking a backend (abandoning its probe in flight).
    pub fn remove_backend(&mut self, cluster: &str, backend: &str) {
        let Some(entry) = self.clusters.get_mut(cluster) else {
            return;
        };
        if let Some(i) = entry
            .targets
            .iter()
            .position(|t| t.backend.as_str() == backend)
        {
            if let Some((probe, _)) = entry.targets.remove(i).in_flight {
                self.events.push_back(HealthEvent::ProbeAbandoned { probe });
            }
        }
    }

    /// The next probe due at `now`, marked in flight until its deadline.
    /// Call until `None` after each wake-up.
    pub fn poll_probe(&mut self, now: Instant) -> Option<Probe> {
        for (cluster, entry) in &mut self.clusters {
            let Some(config) = &entry.config else {
                continue;
            };
            let Some(t) = entry
                .targets
                .iter_mut()
                .find(|t| t.in_flight.is_none() && t.next_due <= now)
            else {
                continue;
            };
            let id = ProbeId(self.next_probe);
            self.next_probe += 1;
            let deadline = now + config.timeout;
            t.in_flight = Some((id, deadline));
            // Interval between probe starts; a late result does not shift it.
            t.next_due = now + config.interval;
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
            return Some(Probe {
                id,
                cluster: cluster.clone(),
                backend: t.backend.clone(),
                addr,
                kind,
                deadline,
            });
        }
        None
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
        let Some(entry) = self.clusters.get_mut(cluster) else {
            return false;
        };
        let Some(config) = &entry.config else {
            return false;
        };
        let Some(t) = entry
            .targets
            .iter_mut()
            .find(|t| t.backend.as_str() == backend)
        else {
            return false;
        };
        record(&mut self.events, &entry.id, config, t, false);
        self.check_invariants();
        true
    }

    /// Fails every probe whose deadline has passed (emitting
    /// [`HealthEvent::ProbeTimedOut`] for each).
    pub fn handle_timeout(&mut self, now: Instant) {
        for (cluster, entry) in &mut self.clusters {
            let Some(config) = &entry.config else {
                continue;
            };
            for t in &mut entry.targets {
                if let Some((probe, deadline)) = t.in_flight {
                    if deadline <= now {
                        t.in_flight = None;
                        self.events.push_back(HealthEvent::ProbeTimedOut {
                            probe,
                            cluster: cluster.clone(),
                            backend: t.backend.clone(),
                        });
                        record(&mut self.events, cluster, config, t, false);
                    }
                }
            }
        }
        self.check_invariants();
    }

    /// The next event for the worker.
    pub fn poll_event(&mut self) -> Option<HealthEvent> {
        self.events.pop_front()
    }

    /// When [`poll_probe`](Self::poll_probe) or
    /// [`handle_timeout`](Self::handle_timeout) next has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.clusters
            .values()
            .filter(|entry| entry.config.is_some())
            .flat_map(|entry| entry.targets.iter())
            .map(|t| match t.in_flight {
                Some((_, deadline)) => deadline,
                None => t.next_due,
            })
            .min()
    }

    /// Whether the checker considers the backend up (`None` if untracked).
    pub fn is_up(&self, cluster: &str, backend: &str) -> Option<bool> {
        self.clusters
            .get(cluster)?
            .targets
            .iter()
            .find(|t| t.backend.as_str() == backend)
            .map(|t| t.up)
    }

    fn finish(&mut self, probe: ProbeId, success: bool) -> bool {
        for (cluster, entry) in &mut self.clusters {
            let Some(config) = &entry.config else {
                continue;
            };
            if let Some(t) = entry
                .targets
                .iter_mut()
                .find(|t| t.in_flight.is_some_and(|(id, _)| id == probe))
            {
                t.in_flight = None;
                record(&mut self.events, cluster, config, t, success);
                self.check_invariants();
                return true;
            }
        }
        false
    }

    fn check_invariants(&self) {
        #[cfg(debug_assertions)]
        for entry in self.clusters.values() {
            if entry.config.is_none() {
                debug_assert!(entry.targets.iter().all(|t| t.in_flight.is_none()));
            }
            debug_assert!(entry.targets.iter().all(|t| t
                .in_flight
                .is_none_or(|(ProbeId(id), _)| id < self.next_probe)));
        }
    }
}

fn fresh_target(backend: BackendId, data_addr: SocketAddr, now: Instant) -> Target {
    Target {
        backend,
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
    config: &HealthConfig,
    t: &mut Target,
    success: bool,
) {
    if success {
        t.failures = 0;
        t.successes = t.successes.saturating_add(1);
        if !t.up && t.successes >= config.rise.get() {
            t.up = true;
            tracing::info!(cluster = %cluster, backend = %t.backend, successes = t.successes, "backend up");
            events.push_back(HealthEvent::BackendUp {
                cluster: cluster.clone(),
                backend: t.backend.clone(),
            });
        }
    } else {
        t.successes = 0;
        t.failures = t.failures.saturating_add(1);
        if t.up && t.failures >= config.fall.get() {
            t.up = false;
            tracing::warn!(cluster = %cluster, backend = %t.backend, failures = t.failures, "backend down");
            events.push_back(HealthEvent::BackendDown {
                cluster: cluster.clone(),
                backend: t.backend.clone(),
            });
        }
    }
}
