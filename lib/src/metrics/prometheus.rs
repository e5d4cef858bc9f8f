//! The Prometheus text exposition format (version 0.0.4) of the metrics
//! workers answer to `query_metrics`.
//!
//! Owns the mapping from our dotted names to Prometheus names and labels
//! (the rule is in `doc/metrics.md`): `sozu_` + the name with every
//! character outside `[a-zA-Z0-9_]` made `_`, `_total` after a counter,
//! `_seconds` after a time metric (a `summary` with quantiles, converted
//! from our milliseconds to Prometheus's base unit);
//! `udp.datagrams.dropped.<reason>` becomes one family with a `reason`
//! label. Scopes become labels: `worker` on every series, `listener` for a
//! listener's value, `cluster` and `backend` for a cluster's and a
//! backend's.
//!
//! A worker's answer sums scopes (a worker total includes its listeners, a
//! cluster total its backends); exposing both would count twice under
//! `sum()`, so each value is exposed once, at the narrowest scope that has
//! it: the listener series, plus a series without `listener` for what the
//! worker counted outside any listener (only when there is some). Same for
//! clusters and backends. Pure: builds text, never talks to anyone.

use std::collections::BTreeMap;
use std::fmt::Write;

use sozu_command_lib::command::filtered_metrics::Inner;
use sozu_command_lib::command::{FilteredMetrics, Percentiles, WorkerMetrics};

/// The content type of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Prefix of every family.
const PREFIX: &str = "sozu_";

/// The dotted names that become one family with a `reason` label.
const REASON_FAMILIES: &[&str] = &["udp.datagrams.dropped", "https.handshake.failed"];

/// A family's type, as the `# TYPE` line says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FamilyKind {
    /// A monotonic count (`_total`).
    Counter,
    /// A level.
    Gauge,
    /// Quantiles, sum and count of a time metric.
    Summary,
}

impl FamilyKind {
    fn as_str(self) -> &'static str {
        match self {
            FamilyKind::Counter => "counter",
            FamilyKind::Gauge => "gauge",
            FamilyKind::Summary => "summary",
        }
    }
}

#[derive(Debug)]
struct Family {
    kind: FamilyKind,
    help: String,
    /// Sample lines, each ending in `\n`.
    samples: String,
}

/// A page of families being built; [`Exposition::render`] gives the text.
#[derive(Debug, Default)]
pub struct Exposition {
    families: BTreeMap<String, Family>,
}

/// Labels of one series, in order.
pub type Labels<'a> = Vec<(&'a str, String)>;

/// The Prometheus family name of a dotted metric, and the `reason` label
/// it carries if it is one of the per-reason families.
pub fn family_name(dotted: &str, kind: FamilyKind) -> (String, Option<String>) {
    let (base, reason) = REASON_FAMILIES
        .iter()
        .find_map(|family| {
            dotted
                .strip_prefix(family)
                .and_then(|rest| rest.strip_prefix('.'))
                .filter(|reason| !reason.is_empty())
                .map(|reason| (*family, Some(reason.to_owned())))
        })
        .unwrap_or((dotted, None));
    let mut name = String::with_capacity(PREFIX.len() + base.len() + 13);
    name.push_str(PREFIX);
    for c in base.chars() {
        name.push(if c.is_ascii_alphanumeric() || c == '_' {
            c
        } else {
            '_'
        });
    }
    match kind {
        FamilyKind::Counter if !name.ends_with("_total") => name.push_str("_total"),
        FamilyKind::Summary => name.push_str("_seconds"),
        _ => {}
    }
    (name, reason)
}

fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn label_text(labels: &[(&str, String)]) -> String {
    if labels.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    format!("{{{}}}", parts.join(","))
}

/// A scalar value and its family kind, `None` for what is not exposed
/// (time series, histograms, names listed without values).
fn scalar(metric: &FilteredMetrics) -> Option<(FamilyKind, f64)> {
    match metric.inner.as_ref()? {
        Inner::Count(v) => Some((FamilyKind::Counter, *v as f64)),
        Inner::Gauge(v) => Some((FamilyKind::Gauge, *v as f64)),
        _ => None,
    }
}

impl Exposition {
    /// An empty page.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one scalar sample under `family` (created with `help` if new).
    /// A sample whose family exists with another type is skipped.
    pub fn sample(
        &mut self,
        family: &str,
        kind: FamilyKind,
        help: &str,
        labels: &[(&str, String)],
        value: f64,
    ) {
        let entry = self
            .families
            .entry(family.to_owned())
            .or_insert_with(|| Family {
                kind,
                help: help.to_owned(),
                samples: String::new(),
            });
        if entry.kind != kind {
            return;
        }
        let _ = writeln!(
            entry.samples,
            "{family}{} {}",
            label_text(labels),
            number(value)
        );
    }

    fn summary(&mut self, family: &str, help: &str, labels: &[(&str, String)], p: &Percentiles) {
        let entry = self
            .families
            .entry(family.to_owned())
            .or_insert_with(|| Family {
                kind: FamilyKind::Summary,
                help: help.to_owned(),
                samples: String::new(),
            });
        if entry.kind != FamilyKind::Summary {
            return;
        }
        for (quantile, value) in [
            ("0.5", p.p_50),
            ("0.9", p.p_90),
            ("0.99", p.p_99),
            ("0.999", p.p_99_9),
            ("0.9999", p.p_99_99),
            ("0.99999", p.p_99_999),
            ("1", p.p_100),
        ] {
            let mut with_quantile = labels.to_vec();
            with_quantile.push(("quantile", quantile.to_owned()));
            let _ = writeln!(
                entry.samples,
                "{family}{} {}",
                label_text(&with_quantile),
                seconds(value)
            );
        }
        let l = label_text(labels);
        let _ = writeln!(entry.samples, "{family}_sum{l} {}", seconds(p.sum));
        let _ = writeln!(entry.samples, "{family}_count{l} {}", p.samples);
    }

    /// Adds one metric of a worker's answer under `labels`.
    fn metric(&mut self, dotted: &str, labels: &[(&str, String)], metric: &FilteredMetrics) {
        match metric.inner.as_ref() {
            Some(Inner::Percentiles(p)) => {
                let (family, _) = family_name(dotted, FamilyKind::Summary);
                let help = format!("sozu time metric {dotted} (seconds)");
                self.summary(&family, &help, labels, p);
            }
            Some(Inner::Time(ms)) => {
                // One time value (our registry answers percentiles; a peer
                // may answer this): a gauge in seconds.
                let (family, _) = family_name(dotted, FamilyKind::Summary);
                let family = format!("{family}_last");
                let help = format!("sozu time metric {dotted}, one value (seconds)");
                self.sample(
                    &family,
                    FamilyKind::Gauge,
                    &help,
                    labels,
                    *ms as f64 / 1000.0,
                );
            }
            _ => {
                let Some((kind, value)) = scalar(metric) else {
                    return;
                };
                let (family, reason) = family_name(dotted, kind);
                let mut labels = labels.to_vec();
                let help = match reason {
                    Some(reason) => {
                        let base = dotted
                            .strip_suffix(reason.as_str())
                            .and_then(|b| b.strip_suffix('.'))
                            .unwrap_or(dotted);
                        let help = format!("sozu {} {base}.<reason>", kind.as_str());
                        labels.push(("reason", reason));
                        help
                    }
                    None => format!("sozu {} {dotted}", kind.as_str()),
                };
                self.sample(&family, kind, &help, &labels, value);
            }
        }
    }

    /// Adds one worker's answer, every series labelled `worker`.
    pub fn add_worker(&mut self, worker: &str, metrics: &WorkerMetrics) {
        let base: Labels<'_> = vec![("worker", worker.to_owned())];
        // Worker-wide names, and each listener's (`name@address`).
        let mut per_listener: BTreeMap<&str, Vec<(&str, &FilteredMetrics)>> = BTreeMap::new();
        for (name, metric) in &metrics.proxy {
            if let Some((dotted, listener)) = name.split_once('@') {
                per_listener
                    .entry(dotted)
                    .or_default()
                    .push((listener, metric));
            }
        }
        for (name, metric) in &metrics.proxy {
            if let Some((dotted, listener)) = name.split_once('@') {
                let mut labels = base.clone();
                labels.push(("listener", listener.to_owned()));
                self.metric(dotted, &labels, metric);
                continue;
            }
            let parts = per_listener.get(name.as_str()).map(Vec::as_slice);
            if let Some(rest) = remainder(metric, parts.unwrap_or(&[])) {
                self.metric(name, &base, &rest);
            }
        }
        for (cluster_id, cluster) in &metrics.clusters {
            let mut cluster_labels = base.clone();
            cluster_labels.push(("cluster", cluster_id.clone()));
            for (name, metric) in &cluster.cluster {
                let parts: Vec<(&str, &FilteredMetrics)> = cluster
                    .backends
                    .iter()
                    .filter_map(|b| b.metrics.get(name).map(|m| (b.backend_id.as_str(), m)))
                    .collect();
                if let Some(rest) = remainder(metric, &parts) {
                    self.metric(name, &cluster_labels, &rest);
                }
            }
            for backend in &cluster.backends {
                let mut labels = cluster_labels.clone();
                labels.push(("backend", backend.backend_id.clone()));
                for (name, metric) in &backend.metrics {
                    self.metric(name, &labels, metric);
                }
            }
        }
    }

    /// The page: families sorted by name, each with `# HELP` and `# TYPE`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (name, family) in &self.families {
            if family.samples.is_empty() {
                continue;
            }
            let _ = writeln!(out, "# HELP {name} {}", family.help);
            let _ = writeln!(out, "# TYPE {name} {}", family.kind.as_str());
            out.push_str(&family.samples);
        }
        out
    }
}

/// What a total holds beyond its parts (a worker total beyond its
/// listeners, a cluster total beyond its backends): `None` when the parts
/// hold it all. Time metrics cannot be subtracted: a total with parts is
/// left to its parts.
fn remainder(
    total: &FilteredMetrics,
    parts: &[(&str, &FilteredMetrics)],
) -> Option<FilteredMetrics> {
    if parts.is_empty() {
        return Some(total.clone());
    }
    let inner = match total.inner.as_ref()? {
        Inner::Count(t) => {
            let sum: i64 = parts
                .iter()
                .filter_map(|(_, m)| match m.inner {
                    Some(Inner::Count(v)) => Some(v),
                    _ => None,
                })
                .fold(0i64, i64::saturating_add);
            let rest = t.saturating_sub(sum);
            (rest != 0).then_some(Inner::Count(rest))?
        }
        Inner::Gauge(t) => {
            let sum: u64 = parts
                .iter()
                .filter_map(|(_, m)| match m.inner {
                    Some(Inner::Gauge(v)) => Some(v),
                    _ => None,
                })
                .fold(0u64, u64::saturating_add);
            let rest = t.saturating_sub(sum);
            (rest != 0).then_some(Inner::Gauge(rest))?
        }
        _ => return None,
    };
    Some(FilteredMetrics { inner: Some(inner) })
}

/// Milliseconds as seconds.
fn seconds(ms: u64) -> String {
    number(ms as f64 / 1000.0)
}

/// A sample value: integers without a fraction.
fn number(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sozu_command_lib::command::{BackendMetrics, ClusterMetrics};

    fn count(v: i64) -> FilteredMetrics {
        FilteredMetrics {
            inner: Some(Inner::Count(v)),
        }
    }

    fn gauge(v: u64) -> FilteredMetrics {
        FilteredMetrics {
            inner: Some(Inner::Gauge(v)),
        }
    }

    #[test]
    fn names_follow_the_documented_rule() {
        assert_eq!(
            family_name("udp.flows.created", FamilyKind::Counter),
            ("sozu_udp_flows_created_total".to_owned(), None)
        );
        assert_eq!(
            family_name("udp.active_flows", FamilyKind::Gauge),
            ("sozu_udp_active_flows".to_owned(), None)
        );
        assert_eq!(
            family_name("udp.flow.duration", FamilyKind::Summary),
            ("sozu_udp_flow_duration_seconds".to_owned(), None)
        );
        assert_eq!(
            family_name("udp.datagrams.dropped.no_backend", FamilyKind::Counter),
            (
                "sozu_udp_datagrams_dropped_total".to_owned(),
                Some("no_backend".to_owned())
            )
        );
        assert_eq!(
            family_name("http.status-5xx", FamilyKind::Counter).0,
            "sozu_http_status_5xx_total"
        );
    }

    #[test]
    fn each_value_is_exposed_once_at_its_narrowest_scope() {
        let mut worker = WorkerMetrics::default();
        // 5 flows: 2 on one listener, 3 on the other; none outside.
        worker.proxy.insert("udp.flows.created".into(), count(5));
        worker
            .proxy
            .insert("udp.flows.created@127.0.0.1:53".into(), count(2));
        worker
            .proxy
            .insert("udp.flows.created@[::1]:53".into(), count(3));
        // A worker-wide gauge with no listener part.
        worker.proxy.insert("tcp.sessions".into(), gauge(4));
        let mut cluster = ClusterMetrics::default();
        // 7 in the cluster: 6 on its backend, 1 on the cluster itself.
        cluster.cluster.insert("udp.flows.created".into(), count(7));
        cluster.backends.push(BackendMetrics {
            backend_id: "a\"b".into(),
            metrics: BTreeMap::from([("udp.flows.created".into(), count(6))]),
        });
        worker.clusters.insert("dns".into(), cluster);
        let mut page = Exposition::new();
        page.add_worker("0", &worker);
        let text = page.render();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("sozu_udp_flows_created_total"))
            .collect();
        assert_eq!(
            lines,
            vec![
                "sozu_udp_flows_created_total{worker=\"0\",listener=\"127.0.0.1:53\"} 2",
                "sozu_udp_flows_created_total{worker=\"0\",listener=\"[::1]:53\"} 3",
                "sozu_udp_flows_created_total{worker=\"0\",cluster=\"dns\"} 1",
                "sozu_udp_flows_created_total{worker=\"0\",cluster=\"dns\",backend=\"a\\\"b\"} 6",
            ]
        );
        assert!(text.contains("# TYPE sozu_udp_flows_created_total counter\n"));
        assert!(text.contains("sozu_tcp_sessions{worker=\"0\"} 4\n"));
        assert_eq!(
            text.matches("# TYPE sozu_udp_flows_created_total").count(),
            1
        );
    }

    #[test]
    fn drops_become_one_family_with_a_reason_and_times_a_summary() {
        let mut worker = WorkerMetrics::default();
        worker
            .proxy
            .insert("udp.datagrams.dropped.shed@127.0.0.1:53".into(), count(9));
        worker.proxy.insert(
            "udp.flow.duration@127.0.0.1:53".into(),
            FilteredMetrics {
                inner: Some(Inner::Percentiles(Percentiles {
                    samples: 3,
                    p_50: 10,
                    p_90: 20,
                    p_99: 30,
                    p_99_9: 30,
                    p_99_99: 30,
                    p_99_999: 30,
                    p_100: 30,
                    sum: 60,
                })),
            },
        );
        let mut page = Exposition::new();
        page.add_worker("1", &worker);
        let text = page.render();
        assert!(text.contains(
            "sozu_udp_datagrams_dropped_total{worker=\"1\",listener=\"127.0.0.1:53\",reason=\"shed\"} 9\n"
        ), "{text}");
        assert!(text.contains("# HELP sozu_udp_datagrams_dropped_total sozu counter udp.datagrams.dropped.<reason>\n"), "{text}");
        assert!(text.contains("# TYPE sozu_udp_flow_duration_seconds summary\n"));
        assert!(text.contains(
            "sozu_udp_flow_duration_seconds{worker=\"1\",listener=\"127.0.0.1:53\",quantile=\"0.5\"} 0.01\n"
        ));
        assert!(text.contains(
            "sozu_udp_flow_duration_seconds_count{worker=\"1\",listener=\"127.0.0.1:53\"} 3\n"
        ));
        assert!(text.contains(
            "sozu_udp_flow_duration_seconds_sum{worker=\"1\",listener=\"127.0.0.1:53\"} 0.06\n"
        ));
    }

    #[test]
    fn a_single_time_value_is_a_gauge_in_seconds() {
        let mut worker = WorkerMetrics::default();
        worker.proxy.insert(
            "tcp.connect".into(),
            FilteredMetrics {
                inner: Some(Inner::Time(250)),
            },
        );
        let mut page = Exposition::new();
        page.add_worker("0", &worker);
        let text = page.render();
        assert!(
            text.contains("# TYPE sozu_tcp_connect_seconds_last gauge\n"),
            "{text}"
        );
        assert!(
            text.contains("sozu_tcp_connect_seconds_last{worker=\"0\"} 0.25\n"),
            "{text}"
        );
    }

    #[test]
    fn a_family_keeps_its_first_type() {
        let mut page = Exposition::new();
        page.sample("sozu_x", FamilyKind::Gauge, "x", &[], 1.0);
        page.sample("sozu_x", FamilyKind::Counter, "x", &[], 2.0);
        assert_eq!(
            page.render(),
            "# HELP sozu_x x\n# TYPE sozu_x gauge\nsozu_x 1\n"
        );
    }
}
