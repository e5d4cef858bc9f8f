//! Registry handles, query answers and filters, aggregation, and the statsd
//! sink against a loopback receiver.

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use sozu_command_lib::command::{filtered_metrics::Inner, FilteredMetrics, QueryMetricsOptions};

use super::statsd::StatsdSink;
use super::*;

fn listener(port: u16) -> Scope {
    Scope::Listener(SocketAddr::from(([127, 0, 0, 1], port)))
}

fn backend(c: &str, b: &str) -> Scope {
    Scope::Backend(ClusterId::from(c), BackendId::from(b))
}

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

fn all() -> QueryMetricsOptions {
    QueryMetricsOptions::default()
}

/// Two listeners, two clusters with backends, one time metric.
fn populated() -> MetricsRegistry {
    let mut r = MetricsRegistry::new();
    let l1 = r
        .register(names::FLOWS_CREATED, listener(53), MetricKind::Counter)
        .unwrap();
    let l2 = r
        .register(names::FLOWS_CREATED, listener(54), MetricKind::Counter)
        .unwrap();
    r.count(l1, 3);
    r.count(l2, 4);
    let active = r
        .register(names::ACTIVE_FLOWS, Scope::Proxy, MetricKind::Gauge)
        .unwrap();
    r.gauge_set(active, 7);
    for (c, b, n) in [("dns", "a", 10), ("dns", "b", 20), ("ntp", "x", 5)] {
        let h = r
            .register(names::BYTES_IN, backend(c, b), MetricKind::Counter)
            .unwrap();
        r.count(h, n);
    }
    let shed = r
        .register(
            &names::dropped("shed"),
            Scope::Cluster("dns".into()),
            MetricKind::Counter,
        )
        .unwrap();
    r.incr(shed);
    let t = r
        .register(names::FLOW_DURATION, backend("dns", "a"), MetricKind::Time)
        .unwrap();
    for ms in [10, 20, 30, 40] {
        r.record_time(t, Duration::from_millis(ms));
    }
    r
}

#[test]
fn handles_count_gauge_and_time() {
    let mut r = MetricsRegistry::new();
    let c = r.register("c", Scope::Proxy, MetricKind::Counter).unwrap();
    let g = r.register("g", Scope::Proxy, MetricKind::Gauge).unwrap();
    let t = r.register("t", Scope::Proxy, MetricKind::Time).unwrap();
    r.incr(c);
    r.count(c, 41);
    r.gauge_set(g, 5);
    r.gauge_add(g, -2);
    r.gauge_add(g, -10); // saturates at 0 instead of wrapping
    r.record_time(t, Duration::from_millis(250));
    assert_eq!(r.counter(c), Some(42));
    assert_eq!(r.gauge(g), Some(0));
    let s = r.time_summary(t).unwrap();
    assert_eq!((s.samples, s.sum, s.p100), (1, 250, 250));
    // Same name and scope: same handle; another kind is refused.
    assert_eq!(r.register("c", Scope::Proxy, MetricKind::Counter), Ok(c));
    let err = r
        .register("c", Scope::Proxy, MetricKind::Gauge)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "metric \"c\" in proxy is a Counter, not a Gauge"
    );
}

#[test]
fn removed_scopes_make_handles_stale_and_slots_are_reused_safely() {
    let mut r = MetricsRegistry::new();
    let old = r
        .register("x", backend("c", "b"), MetricKind::Counter)
        .unwrap();
    let cluster = r
        .register("x", Scope::Cluster("c".into()), MetricKind::Counter)
        .unwrap();
    let other = r
        .register("x", Scope::Cluster("d".into()), MetricKind::Counter)
        .unwrap();
    r.remove_scope(&Scope::Cluster("c".into()));
    assert_eq!(r.counter(old), None);
    assert_eq!(r.counter(cluster), None);
    let new = r.register("y", Scope::Proxy, MetricKind::Counter).unwrap();
    r.count(old, 100); // stale: must not reach "y" even if it took the slot
    r.incr(new);
    assert_eq!(r.counter(new), Some(1));
    assert_eq!(r.counter(other), Some(0));
}

/// Removing a scope finds its metrics through an index (it used to walk
/// every metric): a backend's, a cluster's with its backends' (even one
/// registered again after its own removal, even when the cluster itself
/// has none), a listener's, and nobody else's.
#[test]
fn removing_a_scope_removes_exactly_its_metrics_and_its_backends() {
    let mut r = MetricsRegistry::new();
    let listener = Scope::Listener("127.0.0.1:53".parse().unwrap());
    let counter = |r: &mut MetricsRegistry, scope: Scope| {
        r.register("x", scope, MetricKind::Counter).unwrap()
    };
    let b1 = counter(&mut r, backend("c", "b1"));
    let b2 = counter(&mut r, backend("c", "b2"));
    let d1 = counter(&mut r, backend("d", "b1"));
    let l = counter(&mut r, listener.clone());
    r.remove_scope(&backend("c", "b1"));
    assert_eq!(r.counter(b1), None);
    assert_eq!(r.counter(b2), Some(0));
    let b1 = counter(&mut r, backend("c", "b1"));
    r.remove_scope(&Scope::Cluster("c".into()));
    assert_eq!((r.counter(b1), r.counter(b2)), (None, None));
    assert_eq!((r.counter(d1), r.counter(l)), (Some(0), Some(0)));
    r.remove_scope(&listener);
    assert_eq!((r.counter(d1), r.counter(l)), (Some(0), None));
    r.remove_scope(&Scope::Cluster("d".into()));
    assert_eq!(r.counter(d1), None);
    let fresh = counter(&mut r, backend("d", "b1"));
    assert_eq!(r.counter(fresh), Some(0));
}

#[test]
fn worker_metrics_sum_listeners_into_proxy_and_backends_into_clusters() {
    let m = populated().worker_metrics(&all());
    assert_eq!(m.proxy[names::FLOWS_CREATED], count(7));
    assert_eq!(m.proxy["udp.flows.created@127.0.0.1:53"], count(3));
    assert_eq!(m.proxy["udp.flows.created@127.0.0.1:54"], count(4));
    assert_eq!(m.proxy[names::ACTIVE_FLOWS], gauge(7));
    let dns = &m.clusters["dns"];
    assert_eq!(dns.cluster[names::BYTES_IN], count(30));
    assert_eq!(dns.cluster["udp.datagrams.dropped.shed"], count(1));
    assert_eq!(dns.backends.len(), 2);
    assert_eq!(dns.backends[1].backend_id, "b");
    assert_eq!(dns.backends[1].metrics[names::BYTES_IN], count(20));
    match &dns.backends[0].metrics[names::FLOW_DURATION].inner {
        Some(Inner::Percentiles(p)) => {
            assert_eq!((p.samples, p.sum, p.p_100), (4, 100, 40));
            assert!((20..=23).contains(&p.p_50), "{}", p.p_50);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(m.clusters["ntp"].cluster[names::BYTES_IN], count(5));
}

#[test]
fn query_filters_select_clusters_backends_names_and_list() {
    let r = populated();
    let only_ntp = r.worker_metrics(&QueryMetricsOptions {
        cluster_ids: vec!["ntp".into()],
        ..all()
    });
    assert!(only_ntp.proxy.is_empty());
    assert_eq!(only_ntp.clusters.keys().collect::<Vec<_>>(), vec!["ntp"]);

    let only_b = r.worker_metrics(&QueryMetricsOptions {
        backend_ids: vec!["b".into()],
        ..all()
    });
    assert_eq!(only_b.clusters.len(), 1);
    let dns = &only_b.clusters["dns"];
    assert!(dns.cluster.is_empty());
    assert_eq!(dns.backends.len(), 1);
    assert_eq!(dns.backends[0].metrics[names::BYTES_IN], count(20));

    let named = r.worker_metrics(&QueryMetricsOptions {
        metric_names: vec![names::ACTIVE_FLOWS.into()],
        no_clusters: true,
        ..all()
    });
    assert_eq!(
        named.proxy.keys().collect::<Vec<_>>(),
        vec![names::ACTIVE_FLOWS]
    );
    assert!(named.clusters.is_empty());

    let listed = r.worker_metrics(&QueryMetricsOptions {
        list: true,
        ..all()
    });
    assert_eq!(
        listed.proxy[names::ACTIVE_FLOWS],
        FilteredMetrics { inner: None }
    );
    assert!(listed.clusters["dns"].cluster.contains_key(names::BYTES_IN));
}

#[test]
fn aggregate_sums_workers() {
    let a = populated().worker_metrics(&all());
    let b = populated().worker_metrics(&all());
    let agg = aggregate(BTreeMap::from([("0".to_owned(), a), ("1".to_owned(), b)]));
    assert_eq!(agg.workers.len(), 2);
    assert_eq!(agg.proxying[names::FLOWS_CREATED], count(14));
    assert_eq!(agg.proxying[names::ACTIVE_FLOWS], gauge(14));
    let dns = &agg.clusters["dns"];
    assert_eq!(dns.cluster[names::BYTES_IN], count(60));
    assert_eq!(dns.backends.len(), 2);
    match &dns.backends[0].metrics[names::FLOW_DURATION].inner {
        Some(Inner::Percentiles(p)) => assert_eq!((p.samples, p.sum, p.p_100), (8, 200, 40)),
        other => panic!("{other:?}"),
    }
}

/// Receives datagrams until `expected` lines arrived (bounded by the read
/// timeout per datagram).
fn receive_lines(rx: &UdpSocket, datagrams: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut buf = [0u8; 2048];
    for _ in 0..datagrams {
        let n = rx
            .recv(&mut buf)
            .expect("statsd datagram within the timeout");
        assert!(n <= statsd::MAX_DATAGRAM);
        lines.extend(
            std::str::from_utf8(&buf[..n])
                .unwrap()
                .lines()
                .map(str::to_owned),
        );
    }
    lines.sort();
    lines
}

fn receiver() -> UdpSocket {
    let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    rx
}

#[test]
fn statsd_sends_counter_deltas_gauges_and_timings() {
    let rx = receiver();
    let mut sink = StatsdSink::new(rx.local_addr().unwrap(), "sozu", false).unwrap();
    let mut r = MetricsRegistry::new();
    let c = r
        .register(names::FLOWS_CREATED, listener(53), MetricKind::Counter)
        .unwrap();
    let g = r
        .register(names::ACTIVE_FLOWS, Scope::Proxy, MetricKind::Gauge)
        .unwrap();
    let t = r
        .register(
            names::FLOW_DURATION,
            backend("dns", "b.1"),
            MetricKind::Time,
        )
        .unwrap();
    r.count(c, 5);
    r.gauge_set(g, 2);
    r.record_time(t, Duration::from_millis(12));
    let report = sink.flush(&mut r);
    assert_eq!(
        (report.lines, report.datagrams, report.dropped_datagrams),
        (3, 1, 0)
    );
    assert_eq!(
        receive_lines(&rx, report.datagrams),
        vec![
            "sozu.cluster.dns.backend.b_1.udp.flow.duration:12|ms",
            "sozu.listener.127_0_0_1_53.udp.flows.created:5|c",
            "sozu.udp.active_flows:2|g",
        ]
    );
    // Next flush: the counter sends only its delta, an unchanged one nothing.
    r.count(c, 2);
    let report = sink.flush(&mut r);
    assert_eq!(
        receive_lines(&rx, report.datagrams),
        vec![
            "sozu.listener.127_0_0_1_53.udp.flows.created:2|c",
            "sozu.udp.active_flows:2|g"
        ]
    );
}

#[test]
fn statsd_tagged_lines_and_sampling_and_packet_split() {
    let rx = receiver();
    let mut sink = StatsdSink::new(rx.local_addr().unwrap(), "", true).unwrap();
    let mut r = MetricsRegistry::new();
    let c = r
        .register("x", backend("dns", "a"), MetricKind::Counter)
        .unwrap();
    r.incr(c);
    let t = r.register("t", Scope::Proxy, MetricKind::Time).unwrap();
    for _ in 0..64 {
        r.record_time(t, Duration::from_millis(1));
    }
    let report = sink.flush(&mut r);
    // 1 counter + 32 kept samples of 64, sampled at 0.5.
    assert_eq!(report.lines, 33);
    let lines = receive_lines(&rx, report.datagrams);
    assert!(
        lines.contains(&"x:1|c|#cluster_id:dns,backend_id:a".to_owned()),
        "{lines:?}"
    );
    assert_eq!(lines.iter().filter(|l| *l == "t:1|ms|@0.500").count(), 32);

    // Many metrics: several datagrams, none above the limit (checked on receipt).
    for i in 0..200 {
        let h = r
            .register(
                &format!("metric.number.{i}"),
                Scope::Proxy,
                MetricKind::Gauge,
            )
            .unwrap();
        r.gauge_set(h, i);
    }
    let report = sink.flush(&mut r);
    assert!(report.datagrams > 1);
    assert_eq!(receive_lines(&rx, report.datagrams).len(), report.lines);
}

#[test]
fn statsd_without_a_server_counts_drops_instead_of_failing() {
    let rx = receiver();
    let target = rx.local_addr().unwrap();
    drop(rx);
    let mut sink = StatsdSink::new(target, "sozu", false).unwrap();
    let mut r = MetricsRegistry::new();
    let g = r.register("g", Scope::Proxy, MetricKind::Gauge).unwrap();
    r.gauge_set(g, 1);
    // The first send may succeed (the ICMP error arrives after it); a later
    // one reports it. Either way no panic, and everything is accounted for.
    let mut dropped = 0;
    for _ in 0..20 {
        let report = sink.flush(&mut r);
        assert_eq!(report.datagrams + report.dropped_datagrams, 1);
        dropped += report.dropped_datagrams;
        if dropped > 0 {
            break;
        }
    }
    assert!(dropped > 0);
}

#[test]
fn configure_metrics_disables_enables_and_clears() {
    let mut r = MetricsRegistry::new();
    let c = r
        .register(names::FLOWS_CREATED, listener(53), MetricKind::Counter)
        .unwrap();
    let g = r
        .register(names::ACTIVE_FLOWS, Scope::Proxy, MetricKind::Gauge)
        .unwrap();
    let t = r
        .register(names::FLOW_DURATION, Scope::Proxy, MetricKind::Time)
        .unwrap();
    r.count(c, 3);
    r.gauge_add(g, 2);
    r.record_time(t, Duration::from_millis(5));
    assert!(r.is_enabled());

    r.configure(MetricsConfiguration::Disabled);
    assert!(!r.is_enabled());
    r.count(c, 10);
    r.record_time(t, Duration::from_millis(7));
    // A gauge is a level: it keeps tracking while counting is off.
    r.gauge_add(g, -1);
    assert_eq!(r.counter(c), Some(3));
    assert_eq!(r.time_summary(t).map(|s| s.samples), Some(1));
    assert_eq!(r.gauge(g), Some(1));

    r.configure(MetricsConfiguration::Enabled);
    r.count(c, 1);
    assert_eq!(r.counter(c), Some(4));

    r.configure(MetricsConfiguration::Clear);
    assert_eq!(r.counter(c), Some(0));
    assert_eq!(r.time_summary(t).map(|s| s.samples), Some(0));
    assert_eq!(r.gauge(g), Some(1));
    r.incr(c);
    assert_eq!(r.counter(c), Some(1), "counting goes on after a clear");
}

#[test]
fn statsd_sends_counts_made_after_a_clear() {
    let rx = receiver();
    let mut sink = StatsdSink::new(rx.local_addr().unwrap(), "sozu", false).unwrap();
    let mut r = MetricsRegistry::new();
    let c = r
        .register(names::FLOWS_CREATED, Scope::Proxy, MetricKind::Counter)
        .unwrap();
    r.count(c, 5);
    let report = sink.flush(&mut r);
    assert_eq!(
        receive_lines(&rx, report.datagrams),
        vec!["sozu.udp.flows.created:5|c"]
    );
    r.configure(MetricsConfiguration::Clear);
    r.count(c, 2);
    let report = sink.flush(&mut r);
    assert_eq!(
        receive_lines(&rx, report.datagrams),
        vec!["sozu.udp.flows.created:2|c"]
    );
}
