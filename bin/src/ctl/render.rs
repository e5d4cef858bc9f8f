//! Answers → text: tables for a person ([`human`]) or one JSON document for
//! scripts ([`json`]).
//!
//! Pure formatting of what the master sent: it never fails (an answer without
//! the expected content prints the master's message) and never reorders
//! facts beyond sorting for a stable display.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{json, Value};
use sozu_command_lib::command::{
    filtered_metrics::Inner, response_content::ContentType, AggregatedMetrics, ClusterInformation,
    ClusterMetrics, FilteredMetrics, HttpListenerConfig, HttpsListenerConfig, ListedFrontends,
    ListenersList, LoadBalancingAlgorithms, PathRuleKind, ProxyProtocolConfig, RequestHttpFrontend,
    Response, ResponseStatus, RunState, SocketAddress, TcpListenerConfig, UdpClusterConfig,
    UdpListenerConfig, WorkerInfo, WorkerInfos,
};

use super::request::{MetricsView, Protocols, View};
use super::table::Table;

/// The final answer for a person, ending with a newline.
pub(crate) fn human(view: &View, response: &Response) -> String {
    let content = response
        .content
        .as_ref()
        .and_then(|content| content.content_type.as_ref());
    match (view, content) {
        (View::Workers, Some(ContentType::Workers(workers))) => workers_table(workers),
        (View::Listeners(protocols), Some(ContentType::ListenersList(list))) => {
            listeners_table(list, *protocols)
        }
        (View::Clusters, Some(ContentType::Clusters(clusters))) => clusters_text(&clusters.vec),
        (View::Frontends(protocols), Some(ContentType::FrontendList(list))) => {
            frontends_table(list, *protocols)
        }
        (View::Check, _) => String::new(),
        (View::Certificates, Some(ContentType::CertificatesWithFingerprints(certs))) => {
            certificates_table(certs)
        }
        (View::Certificates, Some(ContentType::WorkerResponses(answers))) => {
            worker_certificates_text(answers)
        }
        (View::Metrics(shown), Some(ContentType::Metrics(metrics))) => {
            let metrics = metrics_shown(metrics, shown, Audience::Person);
            if shown.list {
                metric_names(&metrics)
            } else {
                metrics_table(&metrics)
            }
        }
        _ if response.message.is_empty() => "ok\n".to_owned(),
        _ => format!("{}\n", response.message),
    }
}

/// One progress line for stderr.
pub(crate) fn progress(response: &Response) -> String {
    if response.message.is_empty() {
        "processing…".to_owned()
    } else {
        format!("processing: {}", response.message)
    }
}

/// The final answer as JSON: `{"status", "message", "content"}`, where
/// `content` is the answer's content keyed by its kind (`workers`,
/// `listeners_list`, `clusters`, `frontend_list`, `metrics`) or `null`.
pub(crate) fn json(view: &View, response: &Response) -> Value {
    let content = response
        .content
        .as_ref()
        .and_then(|content| content.content_type.as_ref())
        .map(|content| match (view, content) {
            (View::Metrics(shown), ContentType::Metrics(metrics)) => serde_json::to_value(
                ContentType::Metrics(metrics_shown(metrics, shown, Audience::Script)),
            ),
            _ => serde_json::to_value(content),
        })
        .map(|value| value.unwrap_or(Value::Null))
        .unwrap_or(Value::Null);
    let mut content = content;
    readable(&mut content, "");
    json!({
        "status": status_name(response.status),
        "message": response.message,
        "content": content,
    })
}

/// Rewrites the generated serialisation for people and scripts alike:
/// socket addresses become `"127.0.0.1:5353"` / `"[::1]:53"` strings and
/// wire enums their names (`"ROUND_ROBIN"`, `"RUNNING"`). `key` is the
/// field holding `value` (the parent's key for array elements).
pub(crate) fn readable(value: &mut Value, key: &str) {
    match value {
        Value::Object(map) => {
            if map.len() == 2 && map.contains_key("ip") && map.contains_key("port") {
                let wire: Result<SocketAddress, _> =
                    serde_json::from_value(Value::Object(map.clone()));
                if let Ok(wire) = wire {
                    *value = Value::String(wire.to_string());
                    return;
                }
            }
            for (field, inner) in map.iter_mut() {
                readable(inner, field);
                if let Some(name) = inner.as_i64().and_then(|n| enum_name(key, field, n)) {
                    *inner = Value::String(name.to_owned());
                }
                if let Value::Array(items) = inner {
                    for item in items.iter_mut() {
                        if let Some(name) = item.as_i64().and_then(|n| enum_name(key, field, n)) {
                            *item = Value::String(name.to_owned());
                        }
                    }
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                readable(item, key);
            }
        }
        _ => {}
    }
}

/// The name of wire enum value `n` in field `field` of an object held
/// under `parent`, if that field is a wire enum.
fn enum_name(parent: &str, field: &str, n: i64) -> Option<&'static str> {
    use sozu_command_lib::command::{
        HeaderPosition, LoadMetric, RedirectPolicy, RedirectScheme, RulePosition, TlsVersion,
        UdpAffinityKey, UdpFlowKey, UdpHealthMode,
    };
    fn name<E: TryFrom<i32>>(n: i64, f: impl Fn(E) -> &'static str) -> Option<&'static str> {
        E::try_from(i32::try_from(n).ok()?).ok().map(f)
    }
    match field {
        "run_state" => name(n, |e: RunState| e.as_str_name()),
        "load_balancing" => name(n, |e: LoadBalancingAlgorithms| e.as_str_name()),
        "load_metric" => name(n, |e: LoadMetric| e.as_str_name()),
        "proxy_protocol" => name(n, |e: ProxyProtocolConfig| e.as_str_name()),
        "affinity_key" => name(n, |e: UdpAffinityKey| e.as_str_name()),
        "flow_key" => name(n, |e: UdpFlowKey| e.as_str_name()),
        "mode" => name(n, |e: UdpHealthMode| e.as_str_name()),
        "kind" => name(n, |e: PathRuleKind| e.as_str_name()),
        "position" if parent == "headers" => name(n, |e: HeaderPosition| e.as_str_name()),
        "position" => name(n, |e: RulePosition| e.as_str_name()),
        "redirect" => name(n, |e: RedirectPolicy| e.as_str_name()),
        "redirect_scheme" => name(n, |e: RedirectScheme| e.as_str_name()),
        "versions" => name(n, |e: TlsVersion| e.as_str_name()),
        _ => None,
    }
}

/// `OK`, `PROCESSING`, `FAILURE` (or the raw number if unknown).
pub(crate) fn status_name(status: i32) -> String {
    ResponseStatus::try_from(status)
        .map(|s| s.as_str_name().to_owned())
        .unwrap_or_else(|_| format!("UNKNOWN({status})"))
}

/// A wire enum's name in lower case, or the raw number if unknown.
fn lower<E: TryFrom<i32>>(value: i32, name: impl Fn(E) -> &'static str) -> String {
    E::try_from(value)
        .map(|e| name(e).to_ascii_lowercase())
        .unwrap_or_else(|_| value.to_string())
}

fn seconds(value: u32) -> String {
    format!("{value}s")
}

/// A UDP cluster's timeout override: absent or 0 both mean the listener's.
fn cluster_timeout(value: Option<u32>) -> String {
    match value {
        None | Some(0) => "listener's".to_owned(),
        Some(s) => seconds(s),
    }
}

fn unlimited(value: u32) -> String {
    if value == 0 {
        "unlimited".to_owned()
    } else {
        value.to_string()
    }
}

fn yes_no(value: bool) -> String {
    if value { "yes" } else { "no" }.to_owned()
}

fn address(addr: &SocketAddress) -> String {
    addr.to_string()
}

fn workers_table(workers: &WorkerInfos) -> String {
    let mut table = Table::new(&["WORKER", "PID", "STATE"]);
    let mut sorted: Vec<_> = workers.vec.iter().collect();
    sorted.sort_by_key(|worker| worker.id);
    for worker in sorted {
        table.row(vec![
            worker.id.to_string(),
            worker.pid.to_string(),
            worker_state(worker),
        ]);
    }
    table.render()
}

/// A worker's STATE cell: its run state, or `booting` while it applies the
/// state the master replays to it (`serving` false), with the progress when
/// the master gives it. A master that does not send `serving` (Sōzu 2.x)
/// shows the run state alone.
fn worker_state(worker: &WorkerInfo) -> String {
    let state = lower(worker.run_state, |s: RunState| s.as_str_name());
    let booting = worker.serving == Some(false)
        && matches!(
            RunState::try_from(worker.run_state),
            Ok(RunState::Running | RunState::NotAnswering)
        );
    if !booting {
        return state;
    }
    let progress = match (worker.state_orders_applied, worker.state_orders_total) {
        (Some(applied), Some(total)) => format!(" ({applied}/{total} state orders)"),
        _ => String::new(),
    };
    if worker.run_state == RunState::NotAnswering as i32 {
        format!("not_answering, booting{progress}")
    } else {
        format!("booting{progress}")
    }
}

fn listeners_table(list: &ListenersList, protocols: Protocols) -> String {
    let mut table = Table::new(&["PROTOCOL", "ADDRESS", "PUBLIC", "ACTIVE", "SETTINGS"]);
    let public = |addr: &Option<SocketAddress>| addr.as_ref().map_or("-".to_owned(), address);
    if protocols.udp {
        for udp in list.udp_listeners.values() {
            table.row(udp_listener_row(udp, public(&udp.public_address)));
        }
    }
    if protocols.tcp {
        for tcp in list.tcp_listeners.values() {
            table.row(tcp_listener_row(tcp, public(&tcp.public_address)));
        }
    }
    if protocols.http {
        for http in list.http_listeners.values() {
            table.row(http_listener_row(http, public(&http.public_address)));
        }
    }
    if protocols.https {
        for https in list.https_listeners.values() {
            table.row(https_listener_row(https, public(&https.public_address)));
        }
    }
    if table.is_empty() {
        return "no listener\n".to_owned();
    }
    table.render()
}

fn udp_listener_row(udp: &UdpListenerConfig, public: String) -> Vec<String> {
    let mut settings = format!(
        "front_timeout={} back_timeout={} max_rx_datagram_size={} max_flows={}",
        seconds(udp.front_timeout),
        seconds(udp.back_timeout),
        udp.max_rx_datagram_size,
        if udp.max_flows == 0 {
            "auto".to_owned()
        } else {
            udp.max_flows.to_string()
        },
    );
    if let Some(size) = udp.recv_buffer_size {
        let _ = write!(settings, " recv_buffer_size={size}");
    }
    if let Some(size) = udp.send_buffer_size {
        let _ = write!(settings, " send_buffer_size={size}");
    }
    vec![
        "udp".into(),
        address(&udp.address),
        public,
        yes_no(udp.active),
        settings,
    ]
}

fn tcp_listener_row(tcp: &TcpListenerConfig, public: String) -> Vec<String> {
    vec![
        "tcp".into(),
        address(&tcp.address),
        public,
        yes_no(tcp.active),
        format!(
            "front_timeout={} back_timeout={} connect_timeout={} expect_proxy={}",
            seconds(tcp.front_timeout),
            seconds(tcp.back_timeout),
            seconds(tcp.connect_timeout),
            tcp.expect_proxy,
        ),
    ]
}

fn http_listener_row(http: &HttpListenerConfig, public: String) -> Vec<String> {
    vec![
        "http".into(),
        address(&http.address),
        public,
        yes_no(http.active),
        format!(
            "front_timeout={} back_timeout={} connect_timeout={} request_timeout={} \
             expect_proxy={} sticky_name={}",
            seconds(http.front_timeout),
            seconds(http.back_timeout),
            seconds(http.connect_timeout),
            seconds(http.request_timeout),
            http.expect_proxy,
            http.sticky_name,
        ),
    ]
}

fn https_listener_row(https: &HttpsListenerConfig, public: String) -> Vec<String> {
    vec![
        "https".into(),
        address(&https.address),
        public,
        yes_no(https.active),
        format!(
            "front_timeout={} back_timeout={} connect_timeout={} request_timeout={}",
            seconds(https.front_timeout),
            seconds(https.back_timeout),
            seconds(https.connect_timeout),
            seconds(https.request_timeout),
        ),
    ]
}

fn http_route(frontend: &RequestHttpFrontend) -> String {
    let kind = lower(frontend.path.kind, |k: PathRuleKind| k.as_str_name());
    let mut route = format!(
        "hostname={} path={}:{}",
        frontend.hostname,
        kind,
        if frontend.path.value.is_empty() {
            "/"
        } else {
            &frontend.path.value
        }
    );
    if let Some(method) = &frontend.method {
        let _ = write!(route, " method={method}");
    }
    route
}

fn tags(tags: &BTreeMap<String, String>) -> String {
    if tags.is_empty() {
        return "-".to_owned();
    }
    tags.iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn frontends_table(list: &ListedFrontends, protocols: Protocols) -> String {
    let mut table = Table::new(&["PROTOCOL", "ADDRESS", "CLUSTER", "ROUTE", "TAGS"]);
    if protocols.udp {
        for udp in &list.udp_frontends {
            table.row(vec![
                "udp".into(),
                address(&udp.address),
                udp.cluster_id.clone(),
                "-".into(),
                tags(&udp.tags),
            ]);
        }
    }
    if protocols.tcp {
        for tcp in &list.tcp_frontends {
            table.row(vec![
                "tcp".into(),
                address(&tcp.address),
                tcp.cluster_id.clone(),
                "-".into(),
                tags(&tcp.tags),
            ]);
        }
    }
    let http_rows = [
        (protocols.http, "http", &list.http_frontends),
        (protocols.https, "https", &list.https_frontends),
    ];
    for (shown, name, frontends) in http_rows {
        if !shown {
            continue;
        }
        for http in frontends {
            table.row(vec![
                name.into(),
                address(&http.address),
                http.cluster_id.clone().unwrap_or_else(|| "-".to_owned()),
                http_route(http),
                tags(&http.tags),
            ]);
        }
    }
    if table.is_empty() {
        return "no frontend\n".to_owned();
    }
    table.render()
}

fn clusters_text(clusters: &[ClusterInformation]) -> String {
    if clusters.is_empty() {
        return "no cluster\n".to_owned();
    }
    let mut out = String::new();
    for (index, info) in clusters.iter().enumerate() {
        if index > 0 {
            out.push('\n');
        }
        cluster_text(&mut out, info);
    }
    out
}

fn cluster_text(out: &mut String, info: &ClusterInformation) {
    let Some(cluster) = &info.configuration else {
        out.push_str("cluster (no configuration)\n");
        return;
    };
    let _ = writeln!(
        out,
        "cluster {}{}",
        cluster.cluster_id,
        if cluster.udp.is_some() { " (udp)" } else { "" }
    );
    let _ = writeln!(
        out,
        "  load balancing: {}",
        lower(cluster.load_balancing, |a: LoadBalancingAlgorithms| a
            .as_str_name())
    );
    if let Some(proxy) = cluster.proxy_protocol {
        let _ = writeln!(
            out,
            "  proxy protocol: {}",
            lower(proxy, |p: ProxyProtocolConfig| p.as_str_name())
        );
    }
    if cluster.sticky_session || cluster.https_redirect {
        let port = match cluster.https_redirect_port {
            Some(port) if cluster.https_redirect => format!(" https_redirect_port={port}"),
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "  http: sticky_session={} https_redirect={}{port}",
            cluster.sticky_session, cluster.https_redirect
        );
    }
    if let Some(udp) = &cluster.udp {
        udp_knobs_text(out, udp);
    }
    let mut frontends = Table::new(&["", "PROTOCOL", "ADDRESS", "ROUTE"]);
    for udp in &info.udp_frontends {
        frontends.row(vec![String::new(), "udp".into(), address(&udp.address)]);
    }
    for tcp in &info.tcp_frontends {
        frontends.row(vec![String::new(), "tcp".into(), address(&tcp.address)]);
    }
    for (name, list) in [
        ("http", &info.http_frontends),
        ("https", &info.https_frontends),
    ] {
        for http in list {
            frontends.row(vec![
                String::new(),
                name.into(),
                address(&http.address),
                http_route(http),
            ]);
        }
    }
    if frontends.is_empty() {
        out.push_str("  frontends: none\n");
    } else {
        out.push_str("  frontends:\n");
        out.push_str(&indent(&frontends.render()));
    }
    // The QUIC-LB column only when some backend has a server id.
    let quic_lb = info.backends.iter().any(|b| b.quic_lb_server_id.is_some());
    let mut header = vec!["", "BACKEND", "ADDRESS", "WEIGHT", "BACKUP"];
    if quic_lb {
        header.push("QUIC-LB SERVER ID");
    }
    let mut backends = Table::new(&header);
    for backend in &info.backends {
        let mut row = vec![
            String::new(),
            backend.backend_id.clone(),
            address(&backend.address),
            backend
                .load_balancing_parameters
                .as_ref()
                .map_or("-".to_owned(), |p| p.weight.to_string()),
            yes_no(backend.backup.unwrap_or(false)),
        ];
        if quic_lb {
            row.push(
                backend
                    .quic_lb_server_id
                    .as_ref()
                    .map_or("-".to_owned(), |id| {
                        id.iter().map(|b| format!("{b:02x}")).collect()
                    }),
            );
        }
        backends.row(row);
    }
    if backends.is_empty() {
        out.push_str("  backends: none\n");
    } else {
        out.push_str("  backends:\n");
        out.push_str(&indent(&backends.render()));
    }
}

/// The knobs as `name=value`; unset ones show the master's default.
fn udp_knobs_text(out: &mut String, udp: &UdpClusterConfig) {
    let _ = writeln!(
        out,
        "  udp: affinity_key={} flow_key={} quic_cid_length={} responses={} requests={} \
         send_proxy_protocol={} proxy_protocol_every_datagram={}",
        udp.affinity_key().as_str_name().to_ascii_lowercase(),
        udp.flow_key().as_str_name().to_ascii_lowercase(),
        udp.quic_cid_length.unwrap_or(8),
        unlimited(udp.responses()),
        unlimited(udp.requests()),
        udp.send_proxy_protocol(),
        udp.proxy_protocol_every_datagram(),
    );
    let _ = writeln!(
        out,
        "       front_timeout={} back_timeout={} max_pending_datagrams={} \
         max_pending_bytes={} keep_flows_on_backend_removal={} one_way={}",
        cluster_timeout(udp.front_timeout),
        cluster_timeout(udp.back_timeout),
        udp.max_pending_datagrams(),
        udp.max_pending_bytes(),
        udp.keep_flows_on_backend_removal(),
        udp.one_way(),
    );
    if let Some(sid) = udp.quic_lb_server_id_length {
        let _ = writeln!(
            out,
            "       quic_lb: config_id={} server_id_length={sid} nonce_length={}",
            udp.quic_lb_config_id.unwrap_or(0),
            udp.quic_lb_nonce_length
                .map_or("auto".to_owned(), |n| n.to_string()),
        );
    }
    if let Some(health) = &udp.health {
        let _ = writeln!(
            out,
            "  health: mode={} tcp_port={} rise={} fall={} fail_open={} interval={} \
             timeout={} udp_payload={}",
            health.mode().as_str_name().to_ascii_lowercase(),
            health
                .tcp_port
                .map_or("backend's".to_owned(), |port| port.to_string()),
            health.rise(),
            health.fall(),
            health.fail_open(),
            seconds(health.probe_interval_seconds()),
            seconds(health.probe_timeout_seconds()),
            health
                .udp_probe_payload
                .as_ref()
                .map_or("-".to_owned(), |p| format!("{} bytes", p.len())),
        );
    }
}

/// Every line shifted by two spaces (tables nested under a cluster).
fn indent(text: &str) -> String {
    text.lines().map(|line| format!("  {line}\n")).collect()
}

/// Who reads a metrics answer.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Audience {
    /// The table: the sum over workers, or with `--workers` only each
    /// worker's figures.
    Person,
    /// `--json`: the sum and the per-worker figures, or with `--workers`
    /// only the latter.
    Script,
}

/// What `metrics get` shows of the master's answer (see [`Audience`]),
/// restricted to the exact per-listener names asked for, if any.
fn metrics_shown(
    metrics: &AggregatedMetrics,
    shown: &MetricsView,
    audience: Audience,
) -> AggregatedMetrics {
    let mut out = metrics.clone();
    if shown.workers {
        out.main.clear();
        out.proxying.clear();
        out.clusters.clear();
    } else if audience == Audience::Person && (!out.proxying.is_empty() || !out.clusters.is_empty())
    {
        // The sum is there: per-worker figures only on demand.
        out.workers.clear();
    }
    if !shown.exact_names.is_empty() {
        let keep = |name: &String| {
            let base = name.split('@').next().unwrap_or(name);
            shown.exact_names.iter().any(|n| n == name || n == base)
        };
        let filter = |map: &mut BTreeMap<String, FilteredMetrics>| map.retain(|n, _| keep(n));
        let filter_clusters = |clusters: &mut BTreeMap<String, ClusterMetrics>| {
            for cluster in clusters.values_mut() {
                cluster.cluster.retain(|n, _| keep(n));
                for backend in &mut cluster.backends {
                    backend.metrics.retain(|n, _| keep(n));
                }
            }
        };
        filter(&mut out.main);
        filter(&mut out.proxying);
        filter_clusters(&mut out.clusters);
        for worker in out.workers.values_mut() {
            filter(&mut worker.proxy);
            filter_clusters(&mut worker.clusters);
        }
    }
    out
}

/// `metrics get --list`: every metric name once, sorted.
fn metric_names(metrics: &AggregatedMetrics) -> String {
    let mut names: std::collections::BTreeSet<&str> = std::collections::BTreeSet::new();
    names.extend(metrics.main.keys().map(String::as_str));
    names.extend(metrics.proxying.keys().map(String::as_str));
    for clusters in
        std::iter::once(&metrics.clusters).chain(metrics.workers.values().map(|w| &w.clusters))
    {
        for cluster in clusters.values() {
            names.extend(cluster.cluster.keys().map(String::as_str));
            for backend in &cluster.backends {
                names.extend(backend.metrics.keys().map(String::as_str));
            }
        }
    }
    for worker in metrics.workers.values() {
        names.extend(worker.proxy.keys().map(String::as_str));
    }
    if names.is_empty() {
        return "no metric\n".to_owned();
    }
    names.into_iter().map(|n| format!("{n}\n")).collect()
}

fn metrics_table(metrics: &AggregatedMetrics) -> String {
    let mut table = Table::new(&["SCOPE", "METRIC", "VALUE"]);
    for (name, value) in &metrics.main {
        table.row(vec!["main".into(), name.clone(), metric_value(value)]);
    }
    for (name, value) in &metrics.proxying {
        table.row(vec!["proxy".into(), name.clone(), metric_value(value)]);
    }
    for (id, worker) in &metrics.workers {
        let scope = format!("worker {id}");
        for (name, value) in &worker.proxy {
            table.row(vec![scope.clone(), name.clone(), metric_value(value)]);
        }
        cluster_metric_rows(&mut table, &scope, &worker.clusters);
    }
    cluster_metric_rows(&mut table, "", &metrics.clusters);
    if table.is_empty() {
        return "no metric\n".to_owned();
    }
    table.render()
}

fn cluster_metric_rows(
    table: &mut Table,
    prefix: &str,
    clusters: &BTreeMap<String, ClusterMetrics>,
) {
    let scoped = |rest: String| {
        if prefix.is_empty() {
            rest
        } else {
            format!("{prefix} {rest}")
        }
    };
    for (cluster_id, cluster) in clusters {
        let scope = scoped(format!("cluster {cluster_id}"));
        for (name, value) in &cluster.cluster {
            table.row(vec![scope.clone(), name.clone(), metric_value(value)]);
        }
        for backend in &cluster.backends {
            let scope = format!("{scope} backend {}", backend.backend_id);
            for (name, value) in &backend.metrics {
                table.row(vec![scope.clone(), name.clone(), metric_value(value)]);
            }
        }
    }
}

fn metric_value(metric: &FilteredMetrics) -> String {
    match &metric.inner {
        Some(Inner::Gauge(value)) => format!("gauge {value}"),
        Some(Inner::Count(value)) => format!("count {value}"),
        Some(Inner::Time(value)) => format!("time {value}ms"),
        Some(Inner::Percentiles(p)) => format!(
            "samples={} p50={} p90={} p99={} p99.9={} p99.99={} p99.999={} max={} sum={}",
            p.samples, p.p_50, p.p_90, p.p_99, p.p_99_9, p.p_99_99, p.p_99_999, p.p_100, p.sum
        ),
        Some(Inner::TimeSerie(serie)) => format!(
            "last_second={} last_minute={} last_hour={}",
            serie.last_second,
            serie.last_minute.iter().map(|v| u64::from(*v)).sum::<u64>(),
            serie.last_hour.iter().map(|v| u64::from(*v)).sum::<u64>(),
        ),
        Some(Inner::Histogram(histogram)) => {
            let buckets = histogram
                .buckets
                .iter()
                .map(|bucket| format!("le{}={}", bucket.le, bucket.count))
                .collect::<Vec<_>>()
                .join(" ");
            format!("count={} sum={} {buckets}", histogram.count, histogram.sum)
                .trim_end()
                .to_owned()
        }
        None => "-".to_owned(),
    }
}

/// `certificate list`: one row per certificate, its names comma-separated.
fn certificates_table(certs: &sozu_command_lib::command::CertificatesWithFingerprints) -> String {
    let mut table = Table::new(&["FINGERPRINT", "NAMES"]);
    for (fingerprint, certificate) in &certs.certs {
        table.row(vec![fingerprint.clone(), certificate.names.join(",")]);
    }
    table.render()
}

/// `certificate list --query-workers`: per worker, per listener, one row
/// per (name, fingerprint).
fn worker_certificates_text(answers: &sozu_command_lib::command::WorkerResponses) -> String {
    let mut out = String::new();
    for (worker, content) in &answers.map {
        out.push_str(&format!("worker {worker}:\n"));
        let Some(ContentType::CertificatesByAddress(list)) = &content.content_type else {
            out.push_str("  (no certificate list in its answer)\n");
            continue;
        };
        let mut table = Table::new(&["LISTENER", "NAME", "FINGERPRINT"]);
        for by_address in &list.certificates {
            for summary in &by_address.certificate_summaries {
                table.row(vec![
                    address(&by_address.address),
                    summary.domain.clone(),
                    summary.fingerprint.clone(),
                ]);
            }
        }
        out.push_str(&indent(&table.render()));
    }
    out
}
