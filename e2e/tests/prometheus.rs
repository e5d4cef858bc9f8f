//! The master's Prometheus listener through the real binary (issue 18,
//! point 1): `GET /metrics` parsed with a Prometheus text parser, values
//! checked against real traffic, and bad or slow clients answered or closed
//! within bounds without hurting the master.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use prometheus_parse::{Scrape, Value};
use sozu_e2e::ports::free_v4;
use sozu_e2e::procfs;
use sozu_e2e::wait::{poll_until, wait_for};
use sozu_e2e::{ClusterConfig, Sozu, SozuConfig, UdpBackend, UdpClient, UdpListener};

const WAIT: Duration = Duration::from_secs(15);

fn start(workers: u32) -> (Sozu, UdpBackend, SocketAddr, SocketAddr) {
    let backend = UdpBackend::v4("a");
    let front = free_v4();
    let metrics = free_v4();
    let cluster = ClusterConfig::new("c", front).backend("a", backend.addr());
    let mut config = SozuConfig::udp(workers, UdpListener::new(front), cluster);
    config.extra = format!("metrics_listener = \"{metrics}\"\n");
    let sozu = Sozu::start(config);
    (sozu, backend, front, metrics)
}

/// One raw exchange: sends `request`, returns everything answered until
/// the server closes.
fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect to the metrics listener");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.write_all(request).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

/// `GET /metrics`: the head and the parsed body.
fn scrape(addr: SocketAddr) -> (String, Scrape) {
    let answer = exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP head in {answer:?}"));
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    let lines = body.lines().map(|l| Ok(l.to_owned()));
    let parsed = Scrape::parse(lines).unwrap_or_else(|e| panic!("unparsable page ({e}):\n{body}"));
    (head.to_owned(), parsed)
}

fn scalar(value: &Value) -> f64 {
    match value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
        other => panic!("not a scalar: {other:?}"),
    }
}

/// Sum of a family's samples whose labels include every `(name, value)`.
fn sum(scrape: &Scrape, family: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == family)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| scalar(&s.value))
        .sum()
}

/// Sum of a family's series in the worker view (no `cluster` label).
fn worker_view(scrape: &Scrape, family: &str) -> f64 {
    view(scrape, family, false)
}

/// Sum of a family's series in the cluster view (with a `cluster` label).
fn cluster_view(scrape: &Scrape, family: &str) -> f64 {
    view(scrape, family, true)
}

fn view(scrape: &Scrape, family: &str, clusters: bool) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == family && s.labels.get("cluster").is_some() == clusters)
        .map(|s| scalar(&s.value))
        .sum()
}

#[test]
fn scrape_counts_the_datagrams_really_sent() {
    let (sozu, backend, front, metrics) = start(2);
    backend.set_silent(true);
    let client = UdpClient::new(front);
    const N: usize = 7;
    for i in 0..N {
        client.send(format!("datagram {i}").as_bytes());
    }
    backend.wait_datagrams(N, WAIT);
    let listener = front.to_string();
    let page = poll_until(WAIT, || {
        let (_, page) = scrape(metrics);
        (sum(
            &page,
            "sozu_udp_datagrams_in_total",
            &[("listener", &listener)],
        ) == N as f64)
            .then_some(page)
    });
    let page = page.unwrap_or_else(|| {
        panic!(
            "never saw {N} datagrams in:\n{:?}",
            scrape(metrics).1.samples
        )
    });
    // One flow, on one worker, to backend a of cluster c.
    assert_eq!(
        sum(
            &page,
            "sozu_udp_flows_created_total",
            &[("listener", &listener)]
        ),
        1.0
    );
    assert_eq!(
        sum(&page, "sozu_udp_active_flows", &[("listener", &listener)]),
        1.0
    );
    assert_eq!(
        sum(
            &page,
            "sozu_udp_datagrams_in_total",
            &[("cluster", "c"), ("backend", "a")]
        ),
        N as f64
    );
    // Each view exposes each datagram once: the worker view (series
    // without `cluster`) and the cluster view (with it) both sum to N.
    assert_eq!(worker_view(&page, "sozu_udp_datagrams_in_total"), N as f64);
    assert_eq!(cluster_view(&page, "sozu_udp_datagrams_in_total"), N as f64);
    assert_eq!(worker_view(&page, "sozu_udp_datagrams_out_total"), 0.0);
    let bytes: usize = (0..N).map(|i| format!("datagram {i}").len()).sum();
    assert_eq!(worker_view(&page, "sozu_udp_bytes_in_total"), bytes as f64);
    assert_eq!(cluster_view(&page, "sozu_udp_bytes_in_total"), bytes as f64);
    // Both workers answered, every series says which worker it is from.
    assert_eq!(sum(&page, "sozu_worker_answered", &[]), 2.0);
    assert!(page
        .samples
        .iter()
        .all(|s| s.metric.starts_with("sozu_master") || s.labels.get("worker").is_some()));
    assert_eq!(
        sum(&page, "sozu_master_workers", &[("state", "running")]),
        2.0
    );
    // Drops are one family with a reason label, present at zero.
    assert!(page
        .samples
        .iter()
        .any(|s| s.metric == "sozu_udp_datagrams_dropped_total"
            && s.labels.get("reason") == Some("shed")));
    // The exposition is typed: counters as counters, gauges as gauges.
    let text = exchange(metrics, b"GET /metrics HTTP/1.1\r\n\r\n");
    assert!(
        text.contains("Content-Type: text/plain; version=0.0.4"),
        "{text}"
    );
    assert!(text.contains("# TYPE sozu_udp_datagrams_in_total counter\n"));
    assert!(text.contains("# TYPE sozu_udp_active_flows gauge\n"));
    assert!(text.contains("# TYPE sozu_udp_flow_duration_seconds summary\n"));

    // More traffic moves the scrape by exactly that much.
    for i in 0..3 {
        client.send(format!("more {i}").as_bytes());
    }
    backend.wait_datagrams(N + 3, WAIT);
    wait_for("10 datagrams in the scrape", WAIT, || {
        let page = scrape(metrics).1;
        worker_view(&page, "sozu_udp_datagrams_in_total") == (N + 3) as f64
            && cluster_view(&page, "sozu_udp_datagrams_in_total") == (N + 3) as f64
    });
    drop(sozu);
}

#[test]
fn the_grafana_dashboard_uses_names_the_page_has() {
    let (_sozu, _backend, front, metrics) = start(1);
    UdpClient::new(front).send(b"one");
    let page = poll_until(WAIT, || {
        let (_, page) = scrape(metrics);
        (sum(&page, "sozu_udp_datagrams_in_total", &[]) > 0.0).then_some(page)
    })
    .expect("a datagram counted");
    let dashboard = include_str!("../../doc/grafana-dashboard.json");
    let names: std::collections::BTreeSet<&str> = dashboard
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|t| t.starts_with("sozu_"))
        .collect();
    assert!(names.len() >= 10, "{names:?}");
    for name in names {
        // Registered at a backend's first failed probe only (checked in
        // metrics_truth.rs through `metrics get`).
        if name == "sozu_udp_health_probe_failed_total" {
            continue;
        }
        let base = name.trim_end_matches("_sum").trim_end_matches("_count");
        assert!(
            page.samples
                .iter()
                .any(|s| s.metric == base || s.metric == name),
            "the dashboard uses {name}, absent from the page"
        );
    }
}

#[test]
fn bad_requests_are_answered_and_never_hurt_the_master() {
    let (sozu, _backend, _front, metrics) = start(1);
    let status = |request: &[u8]| -> String {
        exchange(metrics, request)
            .lines()
            .next()
            .unwrap_or("")
            .to_owned()
    };
    assert!(status(b"GET / HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
    assert!(status(b"GET /metricsx HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
    assert!(
        status(b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n").starts_with("HTTP/1.1 405")
    );
    assert!(status(b"\x16\x03\x01\x02\x00garbage\r\n\r\n").starts_with("HTTP/1.1 400"));
    assert!(status(b"GET /metrics\r\n\r\n").starts_with("HTTP/1.1 400"));
    let mut huge = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 20_000));
    assert!(status(&huge).starts_with("HTTP/1.1 431"));
    // A client that connects and says nothing is closed after the head
    // timeout (5 s), not kept forever.
    let mut slow = TcpStream::connect(metrics).unwrap();
    slow.set_read_timeout(Some(WAIT)).unwrap();
    slow.write_all(b"GET /met").unwrap();
    let mut buf = [0u8; 64];
    let closed = slow.read(&mut buf);
    assert!(matches!(closed, Ok(0)) || closed.is_err(), "{closed:?}");
    // The master is still up and still serves.
    assert!(procfs::is_alive(sozu.master_pid()));
    let (_, page) = scrape(metrics);
    assert_eq!(sum(&page, "sozu_worker_answered", &[]), 1.0);
}

#[test]
fn clients_past_the_bound_are_refused_and_the_slots_come_back() {
    let (sozu, _backend, _front, metrics) = start(1);
    // Fill every slot with a silent client.
    let idle: Vec<TcpStream> = (0..16)
        .map(|_| TcpStream::connect(metrics).unwrap())
        .collect();
    // Wait until the master has accepted them all: the next one is closed
    // at once, without an answer.
    wait_for("a client past the bound closed at once", WAIT, || {
        let mut extra = TcpStream::connect(metrics).unwrap();
        extra
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let _ = extra.write_all(b"GET /metrics HTTP/1.1\r\n\r\n");
        let mut buf = [0u8; 16];
        // Closed without an answer: end of stream, or a reset when the
        // request had arrived before the close.
        match extra.read(&mut buf) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    });
    // Once the silent ones time out, scrapes are served again, and the
    // refusals were counted.
    let page = poll_until(WAIT, || {
        let mut stream = TcpStream::connect(metrics).ok()?;
        stream.set_read_timeout(Some(WAIT)).ok()?;
        stream.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").ok()?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).ok()?;
        let (_, body) = answer.split_once("\r\n\r\n")?;
        Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).ok()
    })
    .expect("scrapes served again after the idle clients timed out");
    assert!(sum(&page, "sozu_master_metrics_clients_refused_total", &[]) >= 1.0);
    drop(idle);
    assert!(procfs::is_alive(sozu.master_pid()));
}

#[test]
fn a_taken_metrics_address_stops_the_start_with_the_address_named() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let backend = UdpBackend::v4("a");
    let front = free_v4();
    let cluster = ClusterConfig::new("c", front).backend("a", backend.addr());
    let mut config = SozuConfig::udp(1, UdpListener::new(front), cluster);
    config.extra = format!("metrics_listener = \"{addr}\"\n");
    let sozu = Sozu::spawn(config).expect("spawn the master");
    let status = sozu
        .wait_master_exit(WAIT)
        .unwrap_or_else(|| panic!("the master started anyway:\n{}", sozu.log()));
    assert!(!status.success());
    let log = sozu.log();
    assert!(
        log.contains(&format!("cannot bind metrics_listener {addr}")),
        "{log}"
    );
    // No worker was left behind.
    wait_for("no process left", WAIT, || sozu.live_pids().is_empty());
}
