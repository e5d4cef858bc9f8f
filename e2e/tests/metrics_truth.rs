//! Metrics that tell the truth (issue 18, point 5): each metric's value
//! checked against what really happened, through the real binary.

use std::time::Duration;

use sozu_e2e::ports::{free_v4, V4};
use sozu_e2e::wait::{poll_until, wait_until};
use sozu_e2e::{ClusterConfig, HealthConfig, Sozu, SozuConfig, UdpBackend, UdpClient, UdpListener};

const METRICS: Duration = Duration::from_secs(15);

#[test]
fn timed_out_probes_are_counted_as_failed_probes() {
    let backend = UdpBackend::start("a", V4, Some("ping"));
    // The backend receives the probes but never answers: every probe ends by
    // its deadline, none is refused.
    backend.set_silent(true);
    let front = free_v4();
    let mut cluster = ClusterConfig::new("c", front).backend("a", backend.addr());
    cluster.health = Some(HealthConfig::fast_udp_probe("ping"));
    // One worker: one health checker, so probes sent = probes judged.
    let sozu = Sozu::start(SozuConfig::udp(1, UdpListener::new(front), cluster));
    // Probes the backend got before and after the metrics were read: the
    // checker has at most one probe in flight, so every probe received
    // before the read but one has timed out by then, and none counted was
    // never received.
    let (failed, before, after) = wait_until(
        "the backend marked down by timed-out probes",
        METRICS,
        || {
            let before = backend.probes() as i64;
            let m = sozu.metrics();
            let after = backend.probes() as i64;
            let failed = m.backend("c", "a", "udp.health.probe_failed").unwrap_or(0);
            (m.backend("c", "a", "udp.backend.up") == Some(0) && failed >= 2)
                .then_some((failed, before, after))
        },
    );
    assert!(
        failed + 1 >= before && failed <= after,
        "probe_failed = {failed}, probes received {before} before the read, {after} after"
    );
}

#[test]
fn backend_up_is_published_before_any_health_transition() {
    let a = UdpBackend::v4("a");
    let b = UdpBackend::v4("b");
    let (sozu, _front) = Sozu::start_udp(1, &[&a, &b]);
    // No health checking, no transition ever: both backends are up, and
    // the metric says so from the start.
    let m = sozu.wait_metrics("two backends up", METRICS, |m| {
        m.cluster("c", "udp.backend.up") == Some(2)
    });
    assert_eq!(m.backend("c", "a", "udp.backend.up"), Some(1));
    assert_eq!(m.backend("c", "b", "udp.backend.up"), Some(1));
    // A backend added later is published at once too.
    let third = UdpBackend::v4("x");
    let addr = third.addr().to_string();
    sozu.backend_add("c", "x", &addr);
    sozu.wait_metrics("three backends up", METRICS, |m| {
        m.cluster("c", "udp.backend.up") == Some(3)
            && m.backend("c", "x", "udp.backend.up") == Some(1)
    });
}

#[test]
fn kept_flows_of_a_removed_backend_count_in_cluster_and_listener_alike() {
    let backend = UdpBackend::v4("a");
    let front = free_v4();
    let mut listener = UdpListener::new(front);
    // Long enough for the removal below on a loaded machine, short enough
    // to watch the kept flow end.
    listener.front_timeout = 4;
    listener.back_timeout = 4;
    let mut cluster = ClusterConfig::new("c", front).backend("a", backend.addr());
    cluster.keep_flows_on_backend_removal = true;
    let sozu = Sozu::start(SozuConfig::udp(1, listener, cluster));
    let client = UdpClient::new(front);
    assert_eq!(client.expect_echo(b"one"), "a");
    sozu.wait_metrics("one live flow", METRICS, |m| {
        m.proxy_or_zero("udp.active_flows") == 1 && m.cluster("c", "udp.active_flows") == Some(1)
    });
    let addr = backend.addr().to_string();
    sozu.backend_remove("c", "a", &addr);
    // The kept flow still works (positive signal) and is counted the same
    // by the listener and the cluster.
    assert_eq!(client.expect_echo(b"two"), "a");
    let m = sozu.metrics();
    let listener_flows = m.proxy_or_zero(&format!("udp.active_flows@{front}"));
    assert_eq!(listener_flows, 1, "listener: {:?}", m.0.proxying);
    assert_eq!(
        m.cluster("c", "udp.active_flows"),
        Some(listener_flows),
        "clusters: {:?}",
        m.0.clusters
    );
    assert_eq!(m.backend("c", "a", "udp.datagrams.in"), Some(2));
    // Once the flow idles out, both read 0 and the removed backend's
    // metrics are gone.
    let gone = poll_until(METRICS, || {
        let m = sozu.metrics();
        (m.proxy_or_zero("udp.active_flows") == 0
            && m.backend("c", "a", "udp.active_flows").is_none())
        .then_some(m)
    });
    let m = gone.expect("the kept flow never ended");
    assert_eq!(m.cluster("c", "udp.active_flows").unwrap_or(0), 0);
}
