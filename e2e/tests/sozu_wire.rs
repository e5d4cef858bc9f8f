//! Sōzu 2.x command clients against our master (doc/protocol.md §3.1): every
//! Sōzu 2.1 request is decoded and answered with the status and the content
//! type Sōzu's CLI expects, or refused with a FAILURE naming it; Sōzu's
//! weight rule; `Logging` changes the level live in master and workers;
//! `configure_metrics` disables, enables and clears the workers' counters.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use prost::Message;
use sozu_command_lib::command::request::RequestType;
use sozu_command_lib::command::response_content::ContentType;
use sozu_command_lib::command::{
    ActivateListener, AddBackend, AddCertificate, CertificateAndKey, Cluster, CountRequests,
    DeactivateListener, FrontendFilters, HealthCheckConfig, HttpListenerConfig,
    HttpsListenerConfig, ListListeners, ListWorkers, ListenerType, LoadBalancingParams,
    MetricsConfiguration, PathRule, QueryCertificatesFilters, QueryClusterByDomain,
    QueryClustersHashes, QueryHealthChecks, QueryMaxConnectionsPerIp, QueryMetricsOptions,
    RemoveBackend, RemoveCertificate, RemoveListener, ReplaceCertificate, RequestHttpFrontend,
    RequestTcpFrontend, RequestUdpFrontend, Response, ResponseStatus, ReturnListenSockets,
    SetHealthCheck, SetMetricDetail, SocketAddress, Status, SubscribeEvents, TcpListenerConfig,
    UdpListenerConfig, UpdateHttpListenerConfig, UpdateHttpsListenerConfig,
    UpdateTcpListenerConfig, UpdateUdpListenerConfig,
};
use sozu_e2e::ports::free_v4;
use sozu_e2e::wait::wait_for;
use sozu_e2e::{ClusterConfig, Sozu, SozuConfig, UdpBackend, UdpClient, UdpListener};

const SETTLE: Duration = Duration::from_secs(10);

fn start(log_level: &str) -> (Sozu, UdpBackend, SocketAddr) {
    let backend = UdpBackend::v4("a");
    let frontend = free_v4();
    let cluster = ClusterConfig::new("c", frontend).backend("a", backend.addr());
    let mut config = SozuConfig::udp(2, UdpListener::new(frontend), cluster);
    config.log_level = log_level.to_owned();
    (Sozu::start(config), backend, frontend)
}

fn wire(address: SocketAddr) -> SocketAddress {
    address.into()
}

/// The first field number of an encoded message (the oneof's tag for a
/// `Request` or a `ResponseContent`).
fn first_tag(bytes: &[u8]) -> u64 {
    let mut key = 0u64;
    for (i, b) in bytes.iter().enumerate().take(10) {
        key |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            break;
        }
    }
    key >> 3
}

/// What an order must get back.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// OK with this `ResponseContent` tag (Sōzu 2.1's numbering, kept in
    /// `proto/command.proto`).
    Content(u64),
    /// OK, no content.
    Done,
    /// FAILURE whose message contains this.
    Refused(&'static str),
}

fn check(sozu: &Sozu, order: RequestType, expect: Expect) -> Response {
    let name = format!("{order:?}");
    let response = sozu
        .request(order)
        .unwrap_or_else(|e| panic!("{name}: no answer: {e:#}"));
    let content_tag = response
        .content
        .as_ref()
        .filter(|c| c.content_type.is_some())
        .map(|c| first_tag(&c.encode_to_vec()));
    match expect {
        Expect::Content(tag) => {
            assert_eq!(
                response.status,
                ResponseStatus::Ok as i32,
                "{name}: {response:?}"
            );
            assert_eq!(content_tag, Some(tag), "{name}: {response:?}");
        }
        Expect::Done => {
            assert_eq!(
                response.status,
                ResponseStatus::Ok as i32,
                "{name}: {response:?}"
            );
        }
        Expect::Refused(fragment) => {
            assert_eq!(
                response.status,
                ResponseStatus::Failure as i32,
                "{name}: {response:?}"
            );
            assert!(
                response.message.contains(fragment),
                "{name}: the refusal must name {fragment:?}: {:?}",
                response.message
            );
            assert!(
                !response.message.contains("no order"),
                "{name}: decoded, so never 'no order': {:?}",
                response.message
            );
        }
    }
    response
}

fn http_frontend(cluster: &str, address: SocketAddr, hostname: &str) -> RequestHttpFrontend {
    RequestHttpFrontend {
        cluster_id: Some(cluster.to_owned()),
        address: wire(address),
        hostname: hostname.to_owned(),
        path: PathRule {
            kind: 0,
            value: "/".to_owned(),
        },
        ..Default::default()
    }
}

fn garbage_certificate() -> CertificateAndKey {
    CertificateAndKey {
        certificate: "-----BEGIN CERTIFICATE-----".to_owned(),
        key: "-----BEGIN PRIVATE KEY-----".to_owned(),
        ..Default::default()
    }
}

/// A self-signed certificate and its key.
fn real_certificate(name: &str) -> CertificateAndKey {
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("certificate");
    CertificateAndKey {
        certificate: cert.pem(),
        key: key.serialize_pem(),
        ..Default::default()
    }
}

fn fingerprint(certificate: &CertificateAndKey) -> String {
    sozu_command_lib::certificate::fingerprint_of_pem("certificate", &certificate.certificate)
        .expect("a certificate")
        .to_string()
}

/// Every Sōzu 2.1 request except the four that end or replace processes
/// (soft_stop, hard_stop, upgrade_main, upgrade_worker: lifecycle.rs), in an
/// order that makes each one meaningful.
#[test]
fn every_sozu_request_is_decoded_and_answered_with_the_expected_content_type() {
    let (sozu, _backend, _frontend) = start("info");
    let http = free_v4();
    let https = free_v4();
    let tcp = free_v4();
    let udp = free_v4();
    let udp_backend = free_v4();
    let first = real_certificate("first.example.com");
    let second = real_certificate("second.example.com");
    let state_file = sozu.dir().join("saved.state");
    let state_path = state_file.to_string_lossy().into_owned();
    let web = Cluster {
        cluster_id: "web".to_owned(),
        ..Default::default()
    };
    let web_backend = AddBackend {
        cluster_id: "web".to_owned(),
        backend_id: "web-1".to_owned(),
        address: wire(udp_backend),
        sticky_id: None,
        load_balancing_parameters: Some(LoadBalancingParams { weight: 0 }),
        backup: None,
        quic_lb_server_id: None,
    };
    use Expect::{Content, Done, Refused};
    let table: Vec<(RequestType, Expect)> = vec![
        (RequestType::Status(Status {}), Content(1)),
        (RequestType::ListWorkers(ListWorkers {}), Content(1)),
        (RequestType::ListListeners(ListListeners {}), Content(6)),
        (
            RequestType::ListFrontends(FrontendFilters::default()),
            Content(5),
        ),
        (RequestType::QueryClusterById("c".to_owned()), Content(9)),
        (
            RequestType::QueryClustersHashes(QueryClustersHashes {}),
            Content(10),
        ),
        (
            RequestType::QueryMetrics(QueryMetricsOptions::default()),
            Content(2),
        ),
        (RequestType::CountRequests(CountRequests {}), Content(13)),
        (
            RequestType::QueryCertificatesFromTheState(QueryCertificatesFilters::default()),
            Content(12),
        ),
        (
            RequestType::QueryCertificatesFromWorkers(QueryCertificatesFilters::default()),
            Content(3),
        ),
        (RequestType::SaveState(state_path.clone()), Done),
        (RequestType::LoadState(state_path), Done),
        (RequestType::ReloadConfiguration(String::new()), Done),
        (RequestType::Logging("info".to_owned()), Done),
        (
            RequestType::ConfigureMetrics(MetricsConfiguration::Enabled as i32),
            Done,
        ),
        // HTTP
        (
            RequestType::AddHttpListener(HttpListenerConfig {
                address: wire(http),
                ..Default::default()
            }),
            Done,
        ),
        (
            RequestType::UpdateHttpListener(UpdateHttpListenerConfig {
                address: wire(http),
                front_timeout: Some(20),
                ..Default::default()
            }),
            Done,
        ),
        (RequestType::AddCluster(web.clone()), Done),
        (
            RequestType::AddHttpFrontend(http_frontend("web", http, "example.com")),
            Done,
        ),
        (
            RequestType::QueryClustersByDomain(QueryClusterByDomain {
                hostname: "example.com".to_owned(),
                path: None,
            }),
            Content(9),
        ),
        (
            RequestType::RemoveHttpFrontend(http_frontend("web", http, "example.com")),
            Done,
        ),
        // TCP
        (
            RequestType::AddTcpListener(TcpListenerConfig {
                address: wire(tcp),
                ..Default::default()
            }),
            Done,
        ),
        (
            RequestType::ActivateListener(ActivateListener {
                address: wire(tcp),
                proxy: ListenerType::Tcp as i32,
                from_scm: false,
            }),
            Done,
        ),
        (
            RequestType::UpdateTcpListener(UpdateTcpListenerConfig {
                address: wire(tcp),
                front_timeout: Some(20),
                ..Default::default()
            }),
            Done,
        ),
        (
            RequestType::AddTcpFrontend(RequestTcpFrontend {
                cluster_id: "web".to_owned(),
                address: wire(tcp),
                tags: Default::default(),
            }),
            Done,
        ),
        (
            RequestType::RemoveTcpFrontend(RequestTcpFrontend {
                cluster_id: "web".to_owned(),
                address: wire(tcp),
                tags: Default::default(),
            }),
            Done,
        ),
        (
            RequestType::DeactivateListener(DeactivateListener {
                address: wire(tcp),
                proxy: ListenerType::Tcp as i32,
                to_scm: false,
            }),
            Done,
        ),
        (
            RequestType::RemoveListener(RemoveListener {
                address: wire(tcp),
                proxy: ListenerType::Tcp as i32,
            }),
            Done,
        ),
        // UDP
        (
            RequestType::AddUdpListener(UdpListenerConfig {
                address: wire(udp),
                ..Default::default()
            }),
            Done,
        ),
        (
            RequestType::UpdateUdpListener(UpdateUdpListenerConfig {
                address: wire(udp),
                front_timeout: Some(20),
                ..Default::default()
            }),
            Done,
        ),
        (
            RequestType::AddUdpFrontend(RequestUdpFrontend {
                cluster_id: "web".to_owned(),
                address: wire(udp),
                tags: Default::default(),
            }),
            Done,
        ),
        (RequestType::AddBackend(web_backend), Done),
        (
            RequestType::RemoveBackend(RemoveBackend {
                cluster_id: "web".to_owned(),
                backend_id: "web-1".to_owned(),
                address: wire(udp_backend),
            }),
            Done,
        ),
        (
            RequestType::RemoveUdpFrontend(RequestUdpFrontend {
                cluster_id: "web".to_owned(),
                address: wire(udp),
                tags: Default::default(),
            }),
            Done,
        ),
        // HTTPS: a bad certificate is
        // refused naming its field, a real one goes in, out and back.
        (
            RequestType::AddHttpsListener(HttpsListenerConfig {
                address: wire(https),
                ..Default::default()
            }),
            Done,
        ),
        (
            RequestType::UpdateHttpsListener(UpdateHttpsListenerConfig {
                address: wire(https),
                front_timeout: Some(20),
                ..Default::default()
            }),
            Done,
        ),
        (
            RequestType::AddHttpsFrontend(http_frontend("web", https, "example.com")),
            Done,
        ),
        (
            RequestType::RemoveHttpsFrontend(http_frontend("web", https, "example.com")),
            Done,
        ),
        (
            RequestType::AddCertificate(AddCertificate {
                address: wire(https),
                certificate: garbage_certificate(),
                expired_at: None,
            }),
            Refused("certificate.certificate"),
        ),
        (
            RequestType::AddCertificate(AddCertificate {
                address: wire(https),
                certificate: first.clone(),
                expired_at: None,
            }),
            Done,
        ),
        (
            RequestType::ReplaceCertificate(ReplaceCertificate {
                address: wire(https),
                new_certificate: second.clone(),
                old_fingerprint: fingerprint(&first),
                new_expired_at: None,
            }),
            Done,
        ),
        (
            RequestType::RemoveCertificate(RemoveCertificate {
                address: wire(https),
                fingerprint: fingerprint(&second),
            }),
            Done,
        ),
        (
            RequestType::RemoveCertificate(RemoveCertificate {
                address: wire(https),
                fingerprint: "00".to_owned(),
            }),
            Refused("fingerprint"),
        ),
        (RequestType::RemoveCluster("web".to_owned()), Done),
        // Not served: refused by name.
        (
            RequestType::LaunchWorker("0".to_owned()),
            Refused("launch_worker"),
        ),
        (
            RequestType::SubscribeEvents(SubscribeEvents {}),
            Refused("subscribe_events"),
        ),
        (
            RequestType::ReturnListenSockets(ReturnListenSockets {}),
            Refused("return_listen_sockets"),
        ),
        (
            RequestType::SetMaxConnectionsPerIp(10),
            Refused("set_max_connections_per_ip"),
        ),
        (
            RequestType::QueryMaxConnectionsPerIp(QueryMaxConnectionsPerIp {}),
            Refused("query_max_connections_per_ip"),
        ),
        (
            RequestType::SetHealthCheck(SetHealthCheck {
                cluster_id: "c".to_owned(),
                config: HealthCheckConfig {
                    uri: "/health".to_owned(),
                    ..Default::default()
                },
            }),
            Refused("set_health_check"),
        ),
        (
            RequestType::RemoveHealthCheck("c".to_owned()),
            Refused("remove_health_check"),
        ),
        (
            RequestType::QueryHealthChecks(QueryHealthChecks { cluster_id: None }),
            Refused("query_health_checks"),
        ),
        (
            RequestType::SetMetricDetail(SetMetricDetail {
                client_id: "ops".to_owned(),
                ..Default::default()
            }),
            Refused("set_metric_detail"),
        ),
    ];

    // The table covers every request tag of Sōzu 2.1 but the four lifecycle
    // ones.
    let covered: BTreeSet<u64> = table
        .iter()
        .map(|(order, _)| {
            let request = sozu_command_lib::command::Request {
                request_type: Some(order.clone()),
            };
            first_tag(&request.encode_to_vec())
        })
        .collect();
    let lifecycle = [8, 9, 39, 40];
    let not_in_sozu = [3, 32, 33, 34];
    let expected: BTreeSet<u64> = (1..=59)
        .filter(|t| !lifecycle.contains(t) && !not_in_sozu.contains(t))
        .collect();
    assert_eq!(covered, expected);

    for (order, expect) in table {
        check(&sozu, order, expect);
    }
    assert_eq!(sozu.status().expect("still serving").len(), 2);
}

/// Frames written byte by byte as Sōzu's CLI writes them, without our
/// generated types: the tags alone must select the orders.
#[test]
fn sozu_cli_frames_decode_byte_for_byte() {
    let (sozu, _backend, _frontend) = start("info");
    // (request body, expected ResponseContent tag or None for a plain OK)
    let frames: [(&[u8], Option<u64>); 4] = [
        // count_requests = 46, empty message: key (46 << 3 | 2) = 0xF2 0x02
        (&[0xF2, 0x02, 0x00], Some(13)),
        // query_clusters_hashes = 37: key 0xAA 0x02
        (&[0xAA, 0x02, 0x00], Some(10)),
        // query_certificates_from_the_state = 44: key 0xE2 0x02
        (&[0xE2, 0x02, 0x00], Some(12)),
        // Logging = 42, "info": key 0xD2 0x02
        (&[0xD2, 0x02, 0x04, b'i', b'n', b'f', b'o'], None),
    ];
    for (body, expected) in frames {
        let mut stream = UnixStream::connect(sozu.socket_path()).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        let mut frame = ((body.len() + 8) as u64).to_le_bytes().to_vec();
        frame.extend_from_slice(body);
        stream.write_all(&frame).unwrap();
        let response = loop {
            let mut header = [0u8; 8];
            stream.read_exact(&mut header).expect("an answer header");
            let len = u64::from_le_bytes(header) as usize;
            assert!((8..1 << 20).contains(&len), "frame length {len}");
            let mut answer = vec![0u8; len - 8];
            stream.read_exact(&mut answer).expect("an answer body");
            let response = Response::decode(answer.as_slice()).expect("a Response");
            if response.status != ResponseStatus::Processing as i32 {
                break response;
            }
        };
        assert_eq!(
            response.status,
            ResponseStatus::Ok as i32,
            "{body:02x?}: {response:?}"
        );
        let tag = response
            .content
            .as_ref()
            .map(|c| first_tag(&c.encode_to_vec()));
        assert_eq!(tag, expected, "{body:02x?}: {response:?}");
    }
}

fn weight_of(sozu: &Sozu, cluster: &str, backend: &str) -> Option<i32> {
    let response = sozu
        .request(RequestType::QueryClusterById(cluster.to_owned()))
        .expect("query_cluster_by_id");
    let Some(ContentType::Clusters(clusters)) = response.content.and_then(|c| c.content_type)
    else {
        panic!("query_cluster_by_id answers clusters: {}", response.message);
    };
    clusters
        .vec
        .iter()
        .flat_map(|c| c.backends.iter())
        .find(|b| b.backend_id == backend)
        .and_then(|b| b.load_balancing_parameters)
        .map(|p| p.weight)
}

/// Sōzu's `backend add` without `--weight` sends weight 0: the backend is
/// served (as weight 1), and one without parameters counts as 100.
#[test]
fn a_backend_added_with_weight_zero_gets_flows_and_lists_its_effective_weight() {
    let (sozu, a, frontend) = start("info");
    let z = UdpBackend::v4("z");
    let added = check(
        &sozu,
        RequestType::AddBackend(AddBackend {
            cluster_id: "c".to_owned(),
            backend_id: "z".to_owned(),
            address: wire(z.addr()),
            sticky_id: None,
            load_balancing_parameters: Some(LoadBalancingParams { weight: 0 }),
            backup: None,
            quic_lb_server_id: None,
        }),
        Expect::Done,
    );
    assert!(added.message.contains("add_backend"), "{added:?}");
    check(
        &sozu,
        RequestType::RemoveBackend(RemoveBackend {
            cluster_id: "c".to_owned(),
            backend_id: "a".to_owned(),
            address: wire(a.addr()),
        }),
        Expect::Done,
    );
    assert_eq!(weight_of(&sozu, "c", "z"), Some(1));
    // The only backend left has weight 0 on the wire: it must serve.
    let client = UdpClient::new(frontend);
    assert_eq!(client.echo_eventually(b"weight-zero", SETTLE), "z");
    for i in 0..5 {
        let payload = format!("new flow {i}");
        assert_eq!(
            UdpClient::new(frontend).expect_echo(payload.as_bytes()),
            "z"
        );
    }
    assert!(z.datagrams() >= 6);

    let y = UdpBackend::v4("y");
    check(
        &sozu,
        RequestType::AddBackend(AddBackend {
            cluster_id: "c".to_owned(),
            backend_id: "y".to_owned(),
            address: wire(y.addr()),
            sticky_id: None,
            load_balancing_parameters: None,
            backup: None,
            quic_lb_server_id: None,
        }),
        Expect::Done,
    );
    assert_eq!(weight_of(&sozu, "c", "y"), Some(100));
    // A saved state carries the effective weights.
    let path = sozu.dir().join("weights.state");
    check(
        &sozu,
        RequestType::SaveState(path.to_string_lossy().into_owned()),
        Expect::Done,
    );
}

/// Lines of the shared log (master and workers write to it) from `from` on.
fn log_since(sozu: &Sozu, from: usize) -> String {
    sozu.log().get(from..).unwrap_or_default().to_owned()
}

fn debug_lines_of<'a>(log: &'a str, process: &str) -> Vec<&'a str> {
    let prefix = format!("[{process}]");
    log.lines()
        .filter(|l| l.starts_with(&prefix) && l.contains(" DEBUG "))
        .collect()
}

/// An order the master sends to every worker (`status` is answered by the
/// master alone).
fn query_metrics() -> RequestType {
    RequestType::QueryMetrics(QueryMetricsOptions::default())
}

#[test]
fn logging_changes_the_level_live_in_master_and_workers() {
    let (sozu, _backend, _frontend) = start("info");
    // At info: an order every worker handles leaves no debug line anywhere.
    let start_len = sozu.log().len();
    check(&sozu, query_metrics(), Expect::Content(2));
    let at_info = log_since(&sozu, start_len);
    for process in ["master", "worker-0", "worker-1"] {
        assert!(
            debug_lines_of(&at_info, process).is_empty(),
            "{process}: debug lines at info level:\n{at_info}"
        );
    }

    check(
        &sozu,
        RequestType::Logging("debug".to_owned()),
        Expect::Done,
    );
    let after_debug = sozu.log().len();
    check(&sozu, query_metrics(), Expect::Content(2));
    // Every order is logged at debug by the master and by each worker.
    wait_for(
        "debug lines from the master and both workers",
        SETTLE,
        || {
            let log = log_since(&sozu, after_debug);
            ["master", "worker-0", "worker-1"]
                .iter()
                .all(|p| !debug_lines_of(&log, p).is_empty())
        },
    );

    // An invalid filter is refused by name and changes nothing.
    let refused = check(
        &sozu,
        RequestType::Logging("info,sozu=notalevel".to_owned()),
        Expect::Refused("logging"),
    );
    assert!(refused.message.contains("notalevel"), "{refused:?}");

    // Back to info: the workers say so at info (the positive signal), and
    // the orders after it leave no debug line.
    check(&sozu, RequestType::Logging("info".to_owned()), Expect::Done);
    let back_at_info = sozu.log().len();
    for _ in 0..3 {
        check(&sozu, query_metrics(), Expect::Content(2));
    }
    check(&sozu, RequestType::Logging("info".to_owned()), Expect::Done);
    wait_for("the workers' 'log level changed' lines", SETTLE, || {
        let log = log_since(&sozu, back_at_info);
        log.lines()
            .filter(|l| l.contains("log level changed"))
            .count()
            >= 2
    });
    let log = log_since(&sozu, back_at_info);
    for process in ["master", "worker-0", "worker-1"] {
        assert!(
            debug_lines_of(&log, process).is_empty(),
            "{process} still logs at debug:\n{log}"
        );
    }
}

const DATAGRAMS_IN: &str = "udp.datagrams.in";

#[test]
fn configure_metrics_disables_enables_and_clears_worker_counters() {
    let (sozu, a, frontend) = start("info");
    let client = UdpClient::new(frontend);
    client.echo_eventually(b"warm-up", SETTLE);
    sozu.wait_metrics("datagrams counted", SETTLE, |m| {
        m.proxy_or_zero(DATAGRAMS_IN) >= 1
    });

    check(
        &sozu,
        RequestType::ConfigureMetrics(MetricsConfiguration::Disabled as i32),
        Expect::Done,
    );
    // Read once every worker has stopped counting (the OK above says so):
    // a warm-up retry still in flight cannot move it any more.
    let before = sozu.metrics().proxy_or_zero(DATAGRAMS_IN);
    assert!(before >= 1);
    let served_before = a.datagrams();
    for i in 0..5 {
        UdpClient::new(frontend).expect_echo(format!("off {i}").as_bytes());
    }
    // Traffic moved (the backend saw it), the counter did not.
    assert!(a.datagrams() >= served_before + 5);
    assert_eq!(sozu.metrics().proxy_or_zero(DATAGRAMS_IN), before);

    check(
        &sozu,
        RequestType::ConfigureMetrics(MetricsConfiguration::Enabled as i32),
        Expect::Done,
    );
    for i in 0..5 {
        UdpClient::new(frontend).expect_echo(format!("on {i}").as_bytes());
    }
    sozu.wait_metrics("counting again", SETTLE, |m| {
        m.proxy_or_zero(DATAGRAMS_IN) >= before + 5
    });

    check(
        &sozu,
        RequestType::ConfigureMetrics(MetricsConfiguration::Clear as i32),
        Expect::Done,
    );
    assert_eq!(sozu.metrics().proxy_or_zero(DATAGRAMS_IN), 0);
    UdpClient::new(frontend).expect_echo(b"after clear");
    sozu.wait_metrics("counting after a clear", SETTLE, |m| {
        m.proxy_or_zero(DATAGRAMS_IN) >= 1
    });

    check(
        &sozu,
        RequestType::ConfigureMetrics(7),
        Expect::Refused("configure_metrics"),
    );
}

#[test]
fn sozu_queries_answer_with_the_state_contents() {
    let (sozu, _backend, _frontend) = start("info");
    for _ in 0..3 {
        check(&sozu, RequestType::Status(Status {}), Expect::Content(1));
    }
    let counts = check(
        &sozu,
        RequestType::CountRequests(CountRequests {}),
        Expect::Content(13),
    );
    let Some(ContentType::RequestCounts(counts)) = counts.content.and_then(|c| c.content_type)
    else {
        unreachable!("checked above");
    };
    assert!(
        counts.map.get("status").copied().unwrap_or(0) >= 3,
        "{counts:?}"
    );
    assert_eq!(counts.map.get("count_requests"), Some(&1), "{counts:?}");

    let hashes = |sozu: &Sozu| {
        let response = check(
            sozu,
            RequestType::QueryClustersHashes(QueryClustersHashes {}),
            Expect::Content(10),
        );
        match response.content.and_then(|c| c.content_type) {
            Some(ContentType::ClusterHashes(h)) => h.map,
            other => panic!("cluster hashes: {other:?}"),
        }
    };
    let first = hashes(&sozu);
    assert_eq!(first.keys().collect::<Vec<_>>(), ["c"]);
    assert_eq!(hashes(&sozu), first, "stable while nothing changes");
    let extra = UdpBackend::v4("x");
    check(
        &sozu,
        RequestType::AddBackend(AddBackend {
            cluster_id: "c".to_owned(),
            backend_id: "x".to_owned(),
            address: wire(extra.addr()),
            sticky_id: None,
            load_balancing_parameters: None,
            backup: None,
            quic_lb_server_id: None,
        }),
        Expect::Done,
    );
    assert_ne!(hashes(&sozu)["c"], first["c"], "a new backend changes it");

    let certs = check(
        &sozu,
        RequestType::QueryCertificatesFromTheState(QueryCertificatesFilters::default()),
        Expect::Content(12),
    );
    match certs.content.and_then(|c| c.content_type) {
        Some(ContentType::CertificatesWithFingerprints(c)) => assert!(c.certs.is_empty()),
        other => panic!("certificates: {other:?}"),
    }
    let from_workers = check(
        &sozu,
        RequestType::QueryCertificatesFromWorkers(QueryCertificatesFilters::default()),
        Expect::Content(3),
    );
    match from_workers.content.and_then(|c| c.content_type) {
        Some(ContentType::WorkerResponses(w)) => {
            assert_eq!(w.map.len(), 2, "one entry per worker: {w:?}");
            for content in w.map.values() {
                match &content.content_type {
                    Some(ContentType::CertificatesByAddress(l)) => {
                        assert!(l.certificates.is_empty())
                    }
                    other => panic!("a worker's certificates: {other:?}"),
                }
            }
        }
        other => panic!("certificates from workers: {other:?}"),
    }
}

/// A worker restarted after a crash starts with the live log level and the
/// live metrics setting, not the configured ones.
#[test]
fn a_restarted_worker_keeps_the_live_log_level_and_metrics_setting() {
    let backend = UdpBackend::v4("a");
    let frontend = free_v4();
    let cluster = ClusterConfig::new("c", frontend).backend("a", backend.addr());
    let sozu = Sozu::start(SozuConfig::udp(1, UdpListener::new(frontend), cluster));
    check(
        &sozu,
        RequestType::Logging("debug".to_owned()),
        Expect::Done,
    );
    check(
        &sozu,
        RequestType::ConfigureMetrics(MetricsConfiguration::Disabled as i32),
        Expect::Done,
    );
    let old = sozu.worker_pids();
    // Whatever the old worker logged is before this point.
    let before_kill = sozu.log().len();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old[0]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the worker");
    sozu.wait_new_workers(&old, Duration::from_secs(20));
    let id = sozu.status().expect("status")[0].id;

    // Its boot (the state replayed to it) is logged at debug.
    wait_for("debug lines from the restarted worker", SETTLE, || {
        !debug_lines_of(&log_since(&sozu, before_kill), &format!("worker-{id}")).is_empty()
    });
    // It serves but does not count.
    for i in 0..3 {
        UdpClient::new(frontend).echo_eventually(format!("restarted {i}").as_bytes(), SETTLE);
    }
    assert_eq!(sozu.metrics().proxy_or_zero(DATAGRAMS_IN), 0);
    check(
        &sozu,
        RequestType::ConfigureMetrics(MetricsConfiguration::Enabled as i32),
        Expect::Done,
    );
    UdpClient::new(frontend).expect_echo(b"counted");
    sozu.wait_metrics("counting once enabled", SETTLE, |m| {
        m.proxy_or_zero(DATAGRAMS_IN) >= 1
    });
}

/// Our own CLI's `logging` and `metrics enable|disable|clear` send the same
/// orders.
#[test]
fn our_cli_switches_the_log_level_and_metrics() {
    let (sozu, _backend, frontend) = start("info");
    let out = sozu.cli_ok(&["logging", "debug"]);
    assert!(out.stdout.contains("logging"), "{out:?}");
    let after = sozu.log().len();
    // `metrics get` reaches every worker, which logs each order at debug.
    sozu.cli_ok(&["metrics", "get"]);
    wait_for("debug lines after `sozu logging debug`", SETTLE, || {
        !debug_lines_of(&log_since(&sozu, after), "worker-0").is_empty()
    });
    let refused = sozu.cli(&["logging", "info,sozu=notalevel"]);
    assert!(!refused.success(), "{refused:?}");
    assert!(
        refused.stderr.contains("notalevel") || refused.stdout.contains("notalevel"),
        "{refused:?}"
    );

    UdpClient::new(frontend).echo_eventually(b"counted", SETTLE);
    sozu.wait_metrics("counted", SETTLE, |m| m.proxy_or_zero(DATAGRAMS_IN) >= 1);
    sozu.cli_ok(&["metrics", "disable"]);
    sozu.cli_ok(&["metrics", "clear"]);
    UdpClient::new(frontend).expect_echo(b"not counted");
    assert_eq!(sozu.metrics().proxy_or_zero(DATAGRAMS_IN), 0);
    sozu.cli_ok(&["metrics", "enable"]);
    UdpClient::new(frontend).expect_echo(b"counted again");
    sozu.wait_metrics("counted again", SETTLE, |m| {
        m.proxy_or_zero(DATAGRAMS_IN) >= 1
    });
}
