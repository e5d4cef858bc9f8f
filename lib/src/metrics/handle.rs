//! Registering a metric for a shell and moving it through an optional
//! handle: the one place TCP, HTTP and UDP resolve a name to a handle.
//!
//! A name registered twice with two kinds is a programming slip, not a
//! reason to stop a worker: it is logged and the metric is simply not
//! counted (`None`).

use std::time::Duration;

use super::{MetricHandle, MetricKind, MetricsRegistry, Scope};

/// Registers a metric, logging (not failing) on a kind clash.
pub fn register(
    registry: &mut MetricsRegistry,
    name: &str,
    scope: Scope,
    kind: MetricKind,
) -> Option<MetricHandle> {
    match registry.register(name, scope, kind) {
        Ok(handle) => Some(handle),
        Err(error) => {
            tracing::warn!(%error, "metric not registered");
            None
        }
    }
}

/// Adds `delta` to an optional counter.
pub fn count(registry: &mut MetricsRegistry, handle: Option<MetricHandle>, delta: i64) {
    if let Some(h) = handle {
        registry.count(h, delta);
    }
}

/// Moves an optional gauge.
pub fn gauge_add(registry: &mut MetricsRegistry, handle: Option<MetricHandle>, delta: i64) {
    if let Some(h) = handle {
        registry.gauge_add(h, delta);
    }
}

/// Records a duration in an optional time metric.
pub fn time(registry: &mut MetricsRegistry, handle: Option<MetricHandle>, duration: Duration) {
    if let Some(h) = handle {
        registry.record_time(h, duration);
    }
}
