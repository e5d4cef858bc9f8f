//! Reading `sozu metrics get --json`: the answer's `content.metrics` is an
//! `AggregatedMetrics` (summed over workers in `proxying` and `clusters`,
//! per worker in `workers`), decoded back into the protobuf type.

use sozu_command_lib::command::{filtered_metrics::Inner, AggregatedMetrics, FilteredMetrics};

/// A metrics answer.
#[derive(Debug, Clone, Default)]
pub struct Metrics(pub AggregatedMetrics);

/// A counter or gauge's value; `None` for other kinds or no value.
pub fn scalar(metric: &FilteredMetrics) -> Option<i64> {
    match metric.inner.as_ref()? {
        Inner::Count(v) => Some(*v),
        Inner::Gauge(v) => i64::try_from(*v).ok(),
        _ => None,
    }
}

impl Metrics {
    /// Decodes the `--json` output of `sozu metrics get`.
    pub fn from_cli_json(stdout: &str) -> anyhow::Result<Self> {
        let value: serde_json::Value = serde_json::from_str(stdout)?;
        let metrics = value
            .get("content")
            .and_then(|c| c.get("metrics"))
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("no content.metrics in {stdout}"))?;
        Ok(Metrics(serde_json::from_value(metrics)?))
    }

    /// A worker-wide metric summed over workers (and listeners), e.g.
    /// `udp.active_flows`, or one listener's with `"<name>@<address>"`.
    pub fn proxy(&self, name: &str) -> Option<i64> {
        self.0.proxying.get(name).and_then(scalar)
    }

    /// Like [`Self::proxy`], 0 when absent.
    pub fn proxy_or_zero(&self, name: &str) -> i64 {
        self.proxy(name).unwrap_or(0)
    }

    /// A cluster's metric summed over workers and its backends.
    pub fn cluster(&self, cluster: &str, name: &str) -> Option<i64> {
        self.0
            .clusters
            .get(cluster)
            .and_then(|c| c.cluster.get(name))
            .and_then(scalar)
    }

    /// A backend's metric summed over workers.
    pub fn backend(&self, cluster: &str, backend: &str, name: &str) -> Option<i64> {
        self.0
            .clusters
            .get(cluster)?
            .backends
            .iter()
            .filter(|b| b.backend_id == backend)
            .filter_map(|b| b.metrics.get(name).and_then(scalar))
            .reduce(|a, b| a + b)
    }

    /// Every metric name present anywhere (for failure messages).
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.0.proxying.keys().cloned().collect();
        for cluster in self.0.clusters.values() {
            names.extend(cluster.cluster.keys().cloned());
        }
        names.sort();
        names.dedup();
        names
    }
}
