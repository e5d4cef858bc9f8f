//! Aggregating the metrics answered by each worker into one
//! `AggregatedMetrics`: every worker's own figures under `workers[id]`, and
//! the sum over workers of counters and gauges under `proxying` and
//! `clusters` (what an operator reads first).
//!
//! Pure: takes the gathered contents, never talks to a worker. A worker
//! answer that carries no metrics is skipped, not an error.

use std::collections::BTreeMap;

use sozu_command_lib::command::filtered_metrics::Inner;
use sozu_command_lib::command::response_content::ContentType;
use sozu_command_lib::command::{
    AggregatedMetrics, BackendMetrics, ClusterMetrics, FilteredMetrics, ResponseContent,
    WorkerMetrics,
};

/// Builds the master's answer from each worker's metrics content.
pub(crate) fn aggregate(contents: &BTreeMap<u32, ResponseContent>) -> AggregatedMetrics {
    let mut out = AggregatedMetrics::default();
    for (worker, content) in contents {
        let Some(ContentType::Metrics(metrics)) = &content.content_type else {
            continue;
        };
        // A worker reports its own figures at the top level (`proxying`,
        // `main` for process-wide ones) and per cluster.
        let mut proxy = metrics.proxying.clone();
        for (name, value) in &metrics.main {
            proxy.entry(name.clone()).or_insert_with(|| value.clone());
        }
        let mut clusters = metrics.clusters.clone();
        // A worker may already answer in the aggregated shape (its figures
        // under `workers`): fold those in too.
        for inner in metrics.workers.values() {
            for (name, value) in &inner.proxy {
                proxy.entry(name.clone()).or_insert_with(|| value.clone());
            }
            for (id, cluster) in &inner.clusters {
                clusters
                    .entry(id.clone())
                    .or_insert_with(|| cluster.clone());
            }
        }
        for (name, value) in &proxy {
            merge_into(out.proxying.entry(name.clone()).or_default(), value);
        }
        for (id, cluster) in &clusters {
            merge_cluster(out.clusters.entry(id.clone()).or_default(), cluster);
        }
        out.workers
            .insert(worker.to_string(), WorkerMetrics { proxy, clusters });
    }
    out
}

fn merge_cluster(into: &mut ClusterMetrics, from: &ClusterMetrics) {
    for (name, value) in &from.cluster {
        merge_into(into.cluster.entry(name.clone()).or_default(), value);
    }
    for backend in &from.backends {
        match into
            .backends
            .iter_mut()
            .find(|b| b.backend_id == backend.backend_id)
        {
            Some(existing) => {
                for (name, value) in &backend.metrics {
                    merge_into(existing.metrics.entry(name.clone()).or_default(), value);
                }
            }
            None => into.backends.push(BackendMetrics {
                backend_id: backend.backend_id.clone(),
                metrics: backend.metrics.clone(),
            }),
        }
    }
}

/// Adds `from` into `into`: counts and gauges sum; for any other kind (a
/// percentile cannot be summed) the first value seen is kept.
fn merge_into(into: &mut FilteredMetrics, from: &FilteredMetrics) {
    into.inner = match (into.inner.take(), &from.inner) {
        (None, value) => value.clone(),
        (Some(Inner::Count(a)), Some(Inner::Count(b))) => Some(Inner::Count(a.saturating_add(*b))),
        (Some(Inner::Gauge(a)), Some(Inner::Gauge(b))) => Some(Inner::Gauge(a.saturating_add(*b))),
        (Some(kept), _) => Some(kept),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker_metrics(count: i64, gauge: u64) -> ResponseContent {
        let mut metrics = AggregatedMetrics::default();
        metrics.proxying.insert(
            "udp.flows.created".into(),
            FilteredMetrics {
                inner: Some(Inner::Count(count)),
            },
        );
        let mut cluster = ClusterMetrics::default();
        cluster.cluster.insert(
            "udp.active_flows".into(),
            FilteredMetrics {
                inner: Some(Inner::Gauge(gauge)),
            },
        );
        metrics.clusters.insert("dns".into(), cluster);
        ResponseContent {
            content_type: Some(ContentType::Metrics(metrics)),
        }
    }

    #[test]
    fn counters_and_gauges_sum_over_workers_and_stay_per_worker() {
        let contents = BTreeMap::from([(0, worker_metrics(3, 2)), (1, worker_metrics(4, 5))]);
        let out = aggregate(&contents);
        assert_eq!(
            out.proxying["udp.flows.created"].inner,
            Some(Inner::Count(7))
        );
        assert_eq!(
            out.clusters["dns"].cluster["udp.active_flows"].inner,
            Some(Inner::Gauge(7))
        );
        assert_eq!(
            out.workers["0"].proxy["udp.flows.created"].inner,
            Some(Inner::Count(3))
        );
        assert_eq!(
            out.workers["1"].clusters["dns"].cluster["udp.active_flows"].inner,
            Some(Inner::Gauge(5))
        );
    }

    #[test]
    fn answers_without_metrics_are_skipped() {
        let contents = BTreeMap::from([(0, ResponseContent::default())]);
        let out = aggregate(&contents);
        assert!(out.workers.is_empty());
    }
}
