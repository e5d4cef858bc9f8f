//! The I/O side of health checking, for every protocol: opens the probe
//! sockets the [`HealthChecker`] asks for, reports their outcome back, and
//! applies its [`HealthEvent`]s to the shared backends and metrics.
//!
//! Owns the probe sockets in flight and the checker's next deadline. The
//! worker's loop hosts it (`crate::server`) beside the protocol shells: a
//! TCP, HTTP or UDP cluster's backends are probed the same way. It never
//! reads the clock (`now` comes from the loop) and never decides a backend's
//! status itself: the checker does.

use std::collections::HashMap;
use std::time::Instant;

use mio::{Registry, Token};

use super::probe::{ProbeOutcome, ProbeSocket};
use super::{HealthChecker, HealthEvent, ProbeId};
use crate::backends::{BackendId, BackendMap, BackendStatus, ClusterId};
use crate::metrics::{register, MetricKind, MetricsRegistry, Scope};
use crate::token_table::TokenTable;

/// Name of the counter of health probes that failed.
pub(crate) const PROBE_FAILED: &str = "udp.health.probe_failed";
/// Name of the gauge of backends up (1) / down (0).
pub(crate) const BACKEND_UP: &str = "udp.backend.up";

/// Sets a backend's up/down gauge.
pub(crate) fn backend_health(
    registry: &mut MetricsRegistry,
    cluster: &ClusterId,
    backend: &BackendId,
    up: bool,
) {
    let scope = Scope::Backend(cluster.clone(), backend.clone());
    if let Some(h) = register(registry, BACKEND_UP, scope, MetricKind::Gauge) {
        registry.gauge_set(h, u64::from(up));
    }
}

/// Counts a failed health probe of a backend.
pub(crate) fn probe_failed(
    registry: &mut MetricsRegistry,
    cluster: &ClusterId,
    backend: &BackendId,
) {
    let scope = Scope::Backend(cluster.clone(), backend.clone());
    if let Some(h) = register(registry, PROBE_FAILED, scope, MetricKind::Counter) {
        registry.incr(h);
    }
}

/// What the loop lends the prober for one call.
pub(crate) struct ProbeContext<'a> {
    /// Where probe sockets are (de)registered.
    pub registry: &'a Registry,
    /// The loop's token table.
    pub tokens: &'a mut dyn TokenTable<ProbeId>,
    /// The checker (shared with every protocol's passive failures).
    pub health: &'a mut HealthChecker,
    /// Every cluster's backends: their status follows the checker.
    pub backends: &'a mut BackendMap,
    /// The worker's metrics.
    pub metrics: &'a mut MetricsRegistry,
}

#[derive(Debug)]
struct ProbeInFlight {
    socket: ProbeSocket,
    token: Token,
    cluster: ClusterId,
    backend: BackendId,
}

/// The probe sockets in flight.
#[derive(Debug, Default)]
pub(crate) struct Prober {
    probes: HashMap<ProbeId, ProbeInFlight>,
    /// When the health checker next has work, refreshed after every change
    /// to it (so the loop does not scan every backend on each wake-up).
    deadline: Option<Instant>,
}

impl Prober {
    /// No probe in flight.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// When the checker next has work.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Runs due probes. Probes go on during soft-stop: live flows and
    /// sessions still need healthy backends, and the checker's deadline
    /// must move on.
    pub(crate) fn on_timeout(&mut self, now: Instant, ctx: &mut ProbeContext<'_>) {
        if self.deadline.is_some_and(|t| t <= now) {
            self.run(now, ctx);
        }
    }

    fn run(&mut self, now: Instant, ctx: &mut ProbeContext<'_>) {
        ctx.health.handle_timeout(now);
        while let Some(probe) = ctx.health.poll_probe(now) {
            let opened = ProbeSocket::open(&probe).and_then(|mut socket| {
                let token = ctx.tokens.insert(probe.id);
                match socket.register(ctx.registry, token) {
                    Ok(()) => Ok((socket, token)),
                    Err(e) => {
                        ctx.tokens.remove(token);
                        Err(e)
                    }
                }
            });
            match opened {
                Ok((socket, token)) => {
                    self.probes.insert(
                        probe.id,
                        ProbeInFlight {
                            socket,
                            token,
                            cluster: probe.cluster.clone(),
                            backend: probe.backend.clone(),
                        },
                    );
                }
                Err(error) => {
                    tracing::debug!(cluster = %probe.cluster, backend = %probe.backend, %error, "probe failed at once");
                    probe_failed(ctx.metrics, &probe.cluster, &probe.backend);
                    ctx.health.probe_failed(now, probe.id);
                }
            }
        }
        self.apply_events(ctx);
    }

    /// A readiness event for a probe socket.
    pub(crate) fn on_ready(&mut self, now: Instant, id: ProbeId, ctx: &mut ProbeContext<'_>) {
        let Some(probe) = self.probes.get_mut(&id) else {
            return;
        };
        let Some(outcome) = probe.socket.poll_outcome() else {
            return;
        };
        match outcome {
            ProbeOutcome::Success => {
                ctx.health.probe_succeeded(now, id);
            }
            ProbeOutcome::Failure(error) => {
                tracing::debug!(cluster = %probe.cluster, backend = %probe.backend, %error, "probe failed");
                probe_failed(ctx.metrics, &probe.cluster, &probe.backend);
                ctx.health.probe_failed(now, id);
            }
        }
        self.close(id, ctx);
        self.apply_events(ctx);
    }

    fn close(&mut self, id: ProbeId, ctx: &mut ProbeContext<'_>) {
        if let Some(mut probe) = self.probes.remove(&id) {
            if let Err(error) = probe.socket.deregister(ctx.registry) {
                tracing::debug!(%error, "deregistering a probe");
            }
            ctx.tokens.remove(probe.token);
        }
    }

    /// Hard-stop: closes every probe socket now.
    pub(crate) fn close_all(&mut self, ctx: &mut ProbeContext<'_>) {
        for (_, mut probe) in self.probes.drain() {
            if let Err(error) = probe.socket.deregister(ctx.registry) {
                tracing::debug!(%error, "deregistering a probe");
            }
            ctx.tokens.remove(probe.token);
        }
    }

    /// Applies what the checker decided (backend up or down, probes to
    /// drop) and refreshes the deadline: called after every change to the
    /// checker (cluster and backend orders, probe outcomes).
    pub(crate) fn apply_events(&mut self, ctx: &mut ProbeContext<'_>) {
        while let Some(event) = ctx.health.poll_event() {
            match event {
                HealthEvent::BackendUp { cluster, backend } => {
                    ctx.backends
                        .set_status(cluster.as_str(), backend.as_str(), BackendStatus::Up);
                    backend_health(ctx.metrics, &cluster, &backend, true);
                    tracing::info!(%cluster, %backend, "backend up");
                }
                HealthEvent::BackendDown { cluster, backend } => {
                    ctx.backends.set_status(
                        cluster.as_str(),
                        backend.as_str(),
                        BackendStatus::Down,
                    );
                    backend_health(ctx.metrics, &cluster, &backend, false);
                    tracing::warn!(%cluster, %backend, "backend down");
                }
                HealthEvent::ProbeAbandoned { probe } => self.close(probe, ctx),
                HealthEvent::ProbeTimedOut {
                    probe,
                    cluster,
                    backend,
                } => {
                    tracing::debug!(%cluster, %backend, "probe timed out");
                    probe_failed(ctx.metrics, &cluster, &backend);
                    self.close(probe, ctx);
                }
            }
        }
        self.deadline = ctx.health.poll_timeout();
    }
}
