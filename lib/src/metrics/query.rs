//! Answers to the query-metrics order: one worker's [`WorkerMetrics`] from
//! the registry, and [`aggregate`] to combine several workers'.
//!
//! Runs on the control path, so it may allocate freely; it never mutates the
//! registry.
//!
//! Layout: `proxy` holds each name summed over the proxy scope and every
//! listener, plus each listener's own value under `"<name>@<listener
//! address>"`; a cluster's `cluster` map holds each name summed over the
//! cluster scope and its backends; `backends` holds each backend's own.

use std::collections::BTreeMap;

use sozu_command_lib::command::{
    filtered_metrics::Inner, AggregatedMetrics, BackendMetrics, ClusterMetrics, FilteredMetrics,
    Percentiles, QueryMetricsOptions, WorkerMetrics,
};

use super::{Histogram, MetricsRegistry, Scope, Value};

/// A value being summed over scopes.
#[derive(Debug, Clone)]
enum Acc {
    Count(i64),
    Gauge(u64),
    Time(Box<Histogram>),
}

impl Acc {
    fn add(slot: &mut Option<Acc>, value: &Value) {
        match (slot.as_mut(), value) {
            (None, Value::Counter(v)) => *slot = Some(Acc::Count(*v)),
            (None, Value::Gauge(v)) => *slot = Some(Acc::Gauge(*v)),
            (None, Value::Time(h)) => *slot = Some(Acc::Time(h.clone())),
            (Some(Acc::Count(a)), Value::Counter(v)) => *a = a.saturating_add(*v),
            (Some(Acc::Gauge(a)), Value::Gauge(v)) => *a = a.saturating_add(*v),
            (Some(Acc::Time(a)), Value::Time(h)) => a.merge(h),
            // One name with two kinds in different scopes: keep the first.
            (Some(_), _) => {}
        }
    }

    fn into_filtered(self, list_only: bool) -> FilteredMetrics {
        if list_only {
            return FilteredMetrics { inner: None };
        }
        let inner = match self {
            Acc::Count(v) => Inner::Count(v),
            Acc::Gauge(v) => Inner::Gauge(v),
            Acc::Time(h) => {
                let s = h.summary();
                Inner::Percentiles(Percentiles {
                    samples: s.samples,
                    p_50: s.p50,
                    p_90: s.p90,
                    p_99: s.p99,
                    p_99_9: s.p99_9,
                    p_99_99: s.p99_99,
                    p_99_999: s.p99_999,
                    p_100: s.p100,
                    sum: s.sum,
                })
            }
        };
        FilteredMetrics { inner: Some(inner) }
    }
}

type Named = BTreeMap<String, Option<Acc>>;

fn add(map: &mut Named, name: &str, value: &Value) {
    Acc::add(map.entry(name.to_owned()).or_default(), value);
}

fn finish(map: Named, list_only: bool) -> BTreeMap<String, FilteredMetrics> {
    map.into_iter()
        .filter_map(|(k, v)| v.map(|acc| (k, acc.into_filtered(list_only))))
        .collect()
}

impl MetricsRegistry {
    /// This worker's metrics, filtered as the order asks:
    /// `metric_names` keeps only those names; `cluster_ids` keeps only those
    /// clusters (and omits `proxy`); `backend_ids` keeps only those backends
    /// (omitting `proxy` and cluster totals); `no_clusters` omits clusters;
    /// `list` returns the names with no values (`inner: None`).
    pub fn worker_metrics(&self, options: &QueryMetricsOptions) -> WorkerMetrics {
        let wanted_name = |name: &str| {
            options.metric_names.is_empty() || options.metric_names.iter().any(|n| n == name)
        };
        let wanted_cluster = |c: &str| {
            options.cluster_ids.is_empty() || options.cluster_ids.iter().any(|id| id == c)
        };
        let wanted_backend = |b: &str| {
            options.backend_ids.is_empty() || options.backend_ids.iter().any(|id| id == b)
        };
        let with_proxy = options.cluster_ids.is_empty() && options.backend_ids.is_empty();
        let with_cluster_totals = options.backend_ids.is_empty();

        let mut proxy = Named::new();
        let mut clusters: BTreeMap<String, (Named, BTreeMap<String, Named>)> = BTreeMap::new();
        for (_, entry) in self.entries() {
            if !wanted_name(&entry.name) {
                continue;
            }
            match &entry.scope {
                Scope::Proxy if with_proxy => add(&mut proxy, &entry.name, &entry.value),
                Scope::Listener(addr) if with_proxy => {
                    add(&mut proxy, &entry.name, &entry.value);
                    add(&mut proxy, &format!("{}@{addr}", entry.name), &entry.value);
                }
                Scope::Cluster(c)
                    if !options.no_clusters
                        && with_cluster_totals
                        && wanted_cluster(c.as_str()) =>
                {
                    let cluster = clusters.entry(c.to_string()).or_default();
                    add(&mut cluster.0, &entry.name, &entry.value);
                }
                Scope::Backend(c, b)
                    if !options.no_clusters
                        && wanted_cluster(c.as_str())
                        && wanted_backend(b.as_str()) =>
                {
                    let cluster = clusters.entry(c.to_string()).or_default();
                    if with_cluster_totals {
                        add(&mut cluster.0, &entry.name, &entry.value);
                    }
                    let backend = cluster.1.entry(b.to_string()).or_default();
                    add(backend, &entry.name, &entry.value);
                }
                _ => {}
            }
        }

        let list_only = options.list;
        WorkerMetrics {
            proxy: finish(proxy, list_only),
            clusters: clusters
                .into_iter()
                .map(|(id, (totals, backends))| {
                    let metrics = ClusterMetrics {
                        cluster: finish(totals, list_only),
                        backends: backends
                            .into_iter()
                            .map(|(backend_id, named)| BackendMetrics {
                                backend_id,
                                metrics: finish(named, list_only),
                            })
                            .collect(),
                    };
                    (id, metrics)
                })
                .collect(),
        }
    }
}

/// Combines workers' answers: `workers` keeps each one, `proxying` and
/// `clusters` sum them (counts and gauges add up; for percentiles samples and
/// sum add up and each percentile is the maximum over workers, an upper
/// bound). `main` (the master's own metrics) is left empty.
pub fn aggregate(workers: BTreeMap<String, WorkerMetrics>) -> AggregatedMetrics {
    let mut proxying = BTreeMap::new();
    let mut clusters: BTreeMap<String, ClusterMetrics> = BTreeMap::new();
    for worker in workers.values() {
        merge_map(&mut proxying, &worker.proxy);
        for (id, theirs) in &worker.clusters {
            let ours = clusters.entry(id.clone()).or_default();
            merge_map(&mut ours.cluster, &theirs.cluster);
            for backend in &theirs.backends {
                match ours
                    .backends
                    .iter_mut()
                    .find(|b| b.backend_id == backend.backend_id)
                {
                    Some(b) => merge_map(&mut b.metrics, &backend.metrics),
                    None => ours.backends.push(backend.clone()),
                }
            }
        }
    }
    AggregatedMetrics {
        main: BTreeMap::new(),
        workers,
        clusters,
        proxying,
    }
}

fn merge_map(
    into: &mut BTreeMap<String, FilteredMetrics>,
    from: &BTreeMap<String, FilteredMetrics>,
) {
    for (name, value) in from {
        match into.get_mut(name) {
            Some(existing) => merge_one(existing, value),
            None => {
                into.insert(name.clone(), value.clone());
            }
        }
    }
}

fn merge_one(into: &mut FilteredMetrics, from: &FilteredMetrics) {
    match (&mut into.inner, &from.inner) {
        (Some(Inner::Count(a)), Some(Inner::Count(b))) => *a = a.saturating_add(*b),
        (Some(Inner::Gauge(a)), Some(Inner::Gauge(b))) => *a = a.saturating_add(*b),
        (Some(Inner::Time(a)), Some(Inner::Time(b))) => *a = (*a).max(*b),
        (Some(Inner::Percentiles(a)), Some(Inner::Percentiles(b))) => {
            a.samples = a.samples.saturating_add(b.samples);
            a.sum = a.sum.saturating_add(b.sum);
            a.p_50 = a.p_50.max(b.p_50);
            a.p_90 = a.p_90.max(b.p_90);
            a.p_99 = a.p_99.max(b.p_99);
            a.p_99_9 = a.p_99_9.max(b.p_99_9);
            a.p_99_99 = a.p_99_99.max(b.p_99_99);
            a.p_99_999 = a.p_99_999.max(b.p_99_999);
            a.p_100 = a.p_100.max(b.p_100);
        }
        (None, Some(_)) => into.inner.clone_from(&from.inner),
        // Kinds differ between workers, or nothing to add: keep ours.
        _ => {}
    }
}
