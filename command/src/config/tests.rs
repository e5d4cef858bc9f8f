//! Behaviour of the configuration loader: defaults, error messages (key
//! path, value, reason, line), listener and cluster rules, and the orders a
//! configuration generates.

use std::net::SocketAddr;
use std::num::{NonZeroU16, NonZeroU32, NonZeroU64, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;
use crate::command::request::RequestType;
use crate::command::{PathRuleKind, ProxyProtocolConfig, Request, RulePosition, TlsVersion};

fn load(text: &str) -> Result<Config, ConfigError> {
    Config::from_str(text, Path::new("test.toml"))
}

fn error(text: &str) -> String {
    match load(text) {
        Ok(config) => panic!("expected an error, got {config:?}"),
        Err(e) => e.to_string(),
    }
}

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

const UDP_DNS: &str = r#"
[[listeners]]
protocol = "udp"
address = "127.0.0.1:5353"

[clusters.dns]
protocol = "udp"
frontends = [{ address = "127.0.0.1:5353" }]
backends = [{ address = "127.0.0.1:5354" }, { address = "127.0.0.1:5355" }]
"#;

// ---- defaults --------------------------------------------------------------

#[test]
fn empty_file_gets_every_global_default() {
    let c = load("").unwrap();
    assert_eq!(c.config_path, None);
    assert_eq!(c.command_socket, PathBuf::from("./sozu.sock"));
    assert_eq!(c.command_buffer_size, NonZeroUsize::new(16_384).unwrap());
    assert_eq!(
        c.max_command_buffer_size,
        NonZeroUsize::new(163_840).unwrap()
    );
    assert!(c.command_allowed_uids.is_empty());
    assert_eq!(c.max_command_clients, NonZeroUsize::new(64).unwrap());
    assert_eq!(c.worker_count, NonZeroU16::new(2).unwrap());
    assert!(c.worker_automatic_restart);
    assert_eq!(c.worker_timeout, Duration::from_secs(10));
    assert_eq!(c.max_connections, NonZeroUsize::new(500).unwrap());
    assert_eq!(c.buffer_size, NonZeroUsize::new(16_393).unwrap());
    assert_eq!(c.log_level, "info");
    assert_eq!(c.log_target, LogTarget::Stdout);
    assert_eq!(c.access_logs_target, None);
    assert_eq!(c.audit_logs_target, None);
    assert_eq!(c.saved_state, None);
    assert!(!c.automatic_state_save);
    assert_eq!(
        c.max_state_file_size,
        NonZeroU64::new(64 * 1024 * 1024).unwrap()
    );
    assert!(c.activate_listeners);
    assert_eq!(c.front_timeout, Duration::from_secs(60));
    assert_eq!(c.back_timeout, Duration::from_secs(30));
    assert_eq!(c.connect_timeout, Duration::from_secs(3));
    assert_eq!(c.request_timeout, Duration::from_secs(10));
    assert_eq!(c.pid_file_path, None);
    assert_eq!(c.metrics, None);
    assert!(c.listeners.is_empty());
    assert!(c.clusters.is_empty());
    assert!(c.generate_orders().is_empty());
}

#[test]
fn global_keys_are_read_with_their_types() {
    let c = load(
        r#"
command_socket = "/run/sozu/sozu.sock"
command_buffer_size = 1000
max_command_buffer_size = 2000
command_allowed_uids = [1001, 0]
max_command_clients = 8
worker_count = 4
worker_automatic_restart = false
worker_timeout = 7
max_connections = 42
buffer_size = 4096
log_level = "debug"
log_target = "udp://127.0.0.1:514"
access_logs_target = "file:///var/log/sozu/access.log"
audit_logs_target = "unix:///run/log.sock"
saved_state = "/var/lib/sozu/state.json"
automatic_state_save = true
max_state_file_size = 1024
activate_listeners = false
front_timeout = 61
back_timeout = 31
connect_timeout = 4
request_timeout = 11
pid_file_path = "/run/sozu.pid"

[metrics]
address = "127.0.0.1:8125"
tagged_metrics = true
prefix = "sozu"
"#,
    )
    .unwrap();
    assert_eq!(c.command_socket, PathBuf::from("/run/sozu/sozu.sock"));
    assert_eq!(c.command_buffer_size.get(), 1000);
    assert_eq!(c.max_command_buffer_size.get(), 2000);
    assert_eq!(c.command_allowed_uids, vec![1001, 0]);
    assert_eq!(c.max_command_clients.get(), 8);
    assert_eq!(c.worker_count.get(), 4);
    assert!(!c.worker_automatic_restart);
    assert_eq!(c.worker_timeout, Duration::from_secs(7));
    assert_eq!(c.max_connections.get(), 42);
    assert_eq!(c.buffer_size.get(), 4096);
    assert_eq!(c.log_level, "debug");
    assert_eq!(c.log_target, LogTarget::Udp(addr("127.0.0.1:514")));
    assert_eq!(
        c.access_logs_target,
        Some(LogTarget::File(PathBuf::from("/var/log/sozu/access.log")))
    );
    assert_eq!(
        c.audit_logs_target,
        Some(LogTarget::Unix(PathBuf::from("/run/log.sock")))
    );
    assert_eq!(
        c.saved_state,
        Some(PathBuf::from("/var/lib/sozu/state.json"))
    );
    assert!(c.automatic_state_save);
    assert_eq!(c.max_state_file_size.get(), 1024);
    assert!(!c.activate_listeners);
    assert_eq!(c.front_timeout, Duration::from_secs(61));
    assert_eq!(c.back_timeout, Duration::from_secs(31));
    assert_eq!(c.connect_timeout, Duration::from_secs(4));
    assert_eq!(c.request_timeout, Duration::from_secs(11));
    assert_eq!(c.pid_file_path, Some(PathBuf::from("/run/sozu.pid")));
    assert_eq!(
        c.metrics,
        Some(MetricsConfig {
            address: addr("127.0.0.1:8125"),
            tagged_metrics: true,
            prefix: Some("sozu".to_owned()),
        })
    );
}

#[test]
fn listener_defaults_per_protocol() {
    let c = load(
        r#"
front_timeout = 70
back_timeout = 40
connect_timeout = 5
request_timeout = 12

[[listeners]]
protocol = "udp"
address = "127.0.0.1:5353"

[[listeners]]
protocol = "tcp"
address = "127.0.0.1:8081"

[[listeners]]
protocol = "http"
address = "127.0.0.1:8080"
"#,
    )
    .unwrap();
    assert_eq!(
        c.listeners[0],
        ListenerConfig::Udp(UdpListenerSettings {
            address: addr("127.0.0.1:5353"),
            public_address: None,
            front_timeout: Duration::from_secs(30),
            back_timeout: Duration::from_secs(30),
            max_rx_datagram_size: NonZeroU32::new(1500).unwrap(),
            max_flows: None,
            recv_buffer_size: None,
            send_buffer_size: None,
        })
    );
    // TCP and HTTP listeners inherit the global timeouts.
    assert_eq!(
        c.listeners[1],
        ListenerConfig::Tcp(TcpListenerSettings {
            address: addr("127.0.0.1:8081"),
            public_address: None,
            expect_proxy: false,
            front_timeout: Duration::from_secs(70),
            back_timeout: Duration::from_secs(40),
            connect_timeout: Duration::from_secs(5),
        })
    );
    assert_eq!(
        c.listeners[2],
        ListenerConfig::Http(HttpListenerSettings {
            address: addr("127.0.0.1:8080"),
            public_address: None,
            expect_proxy: false,
            sticky_name: "SOZUBALANCEID".to_owned(),
            answer_404: None,
            answer_503: None,
            answers: Default::default(),
            front_timeout: Duration::from_secs(70),
            back_timeout: Duration::from_secs(40),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(12),
        })
    );
}

#[test]
fn udp_listener_keys_are_read_and_zero_means_auto() {
    let c = load(
        r#"
[[listeners]]
protocol = "udp"
address = "[::1]:5353"
public_address = "[2001:db8::1]:53"
front_timeout = 5
back_timeout = 6
max_rx_datagram_size = 512
max_flows = 1000
recv_buffer_size = 0
send_buffer_size = 262144
"#,
    )
    .unwrap();
    let ListenerConfig::Udp(l) = &c.listeners[0] else {
        panic!("not a UDP listener: {:?}", c.listeners[0]);
    };
    assert_eq!(l.public_address, Some(addr("[2001:db8::1]:53")));
    assert_eq!(l.front_timeout, Duration::from_secs(5));
    assert_eq!(l.back_timeout, Duration::from_secs(6));
    assert_eq!(l.max_rx_datagram_size.get(), 512);
    assert_eq!(l.max_flows, NonZeroU32::new(1000));
    assert_eq!(l.recv_buffer_size, None);
    assert_eq!(l.send_buffer_size, NonZeroU32::new(262_144));
}

#[test]
fn max_rx_datagram_size_is_clamped_to_buffer_size() {
    let c = load(
        r#"
buffer_size = 1200
[[listeners]]
protocol = "udp"
address = "127.0.0.1:5353"
max_rx_datagram_size = 9000
"#,
    )
    .unwrap();
    let ListenerConfig::Udp(l) = &c.listeners[0] else {
        panic!("not a UDP listener");
    };
    assert_eq!(l.max_rx_datagram_size.get(), 1200);
}

#[test]
fn cluster_backend_and_udp_defaults() {
    let c = load(UDP_DNS).unwrap();
    let dns = &c.clusters["dns"];
    assert_eq!(dns.protocol, ClusterProtocol::Udp);
    assert_eq!(
        dns.load_balancing,
        crate::command::LoadBalancingAlgorithms::RoundRobin
    );
    assert_eq!(dns.load_metric, None);
    assert!(!dns.sticky_session && !dns.https_redirect && !dns.send_proxy && !dns.expect_proxy);
    assert_eq!(
        dns.frontends,
        vec![FrontendConfig {
            address: addr("127.0.0.1:5353"),
            hostname: None,
            path_kind: crate::command::PathRuleKind::Prefix,
            path: String::new(),
            method: None,
            tags: Default::default(),
            certificate: None,
            hsts: None,
        }]
    );
    let ids: Vec<&str> = dns.backends.iter().map(|b| b.backend_id.as_str()).collect();
    assert_eq!(ids, ["dns-0", "dns-1"]);
    assert!(dns
        .backends
        .iter()
        .all(|b| b.weight == 100 && b.sticky_id.is_none() && b.backup.is_none()));
    assert_eq!(
        dns.udp,
        Some(UdpClusterSettings {
            affinity_key: crate::command::UdpAffinityKey::SourceIp,
            responses: None,
            requests: None,
            send_proxy_protocol: false,
            proxy_protocol_every_datagram: false,
            front_timeout: None,
            back_timeout: None,
            max_pending_datagrams: NonZeroU32::new(32).unwrap(),
            max_pending_bytes: NonZeroU32::new(65_536).unwrap(),
            keep_flows_on_backend_removal: false,
            flow_key: crate::command::UdpFlowKey::SourceAddress,
            one_way: false,
            quic_cid_length: 8,
            quic_lb: None,
            health: None,
        })
    );
}

#[test]
fn health_block_defaults_to_tcp_probe() {
    let c = load(&format!("{UDP_DNS}\n[clusters.dns.udp.health]\n")).unwrap();
    let health = c.clusters["dns"].udp.as_ref().unwrap().health.clone();
    assert_eq!(
        health,
        Some(UdpHealthSettings {
            mode: crate::command::UdpHealthMode::TcpProbe,
            tcp_port: None,
            rise: NonZeroU32::new(2).unwrap(),
            fall: NonZeroU32::new(3).unwrap(),
            fail_open: true,
            udp_probe_payload: Vec::new(),
            probe_interval: Duration::from_secs(5),
            probe_timeout: Duration::from_secs(2),
        })
    );
}

#[test]
fn udp_cluster_knobs_are_read() {
    let c = load(&format!(
        r#"{UDP_DNS}
[clusters.dns.udp]
affinity_key = "SOURCE_IP_PORT"
responses = 1
requests = 0
send_proxy_protocol = true
proxy_protocol_every_datagram = true
front_timeout = 3
back_timeout = 4
max_pending_datagrams = 1
max_pending_bytes = 1500
keep_flows_on_backend_removal = true
flow_key = "QUIC_CONNECTION_ID"
one_way = true
quic_cid_length = 20

[clusters.dns.udp.health]
mode = "UDP_PROBE"
tcp_port = 5300
rise = 1
fall = 5
fail_open = false
udp_probe_payload = "ping"
probe_interval_seconds = 10
probe_timeout_seconds = 1
"#
    ))
    .unwrap();
    let udp = c.clusters["dns"].udp.clone().unwrap();
    assert_eq!(
        udp.affinity_key,
        crate::command::UdpAffinityKey::SourceIpPort
    );
    assert_eq!(udp.responses, NonZeroU32::new(1));
    assert_eq!(udp.requests, None);
    assert!(udp.send_proxy_protocol && udp.proxy_protocol_every_datagram);
    assert_eq!(udp.front_timeout, Some(Duration::from_secs(3)));
    assert_eq!(udp.back_timeout, Some(Duration::from_secs(4)));
    assert_eq!(udp.max_pending_datagrams.get(), 1);
    assert_eq!(udp.max_pending_bytes.get(), 1500);
    assert!(udp.keep_flows_on_backend_removal);
    assert_eq!(udp.flow_key, crate::command::UdpFlowKey::QuicConnectionId);
    assert!(udp.one_way);
    assert_eq!(udp.quic_cid_length, 20);
    let health = udp.health.unwrap();
    assert_eq!(health.mode, crate::command::UdpHealthMode::UdpProbe);
    assert_eq!(health.tcp_port, Some(5300));
    assert_eq!((health.rise.get(), health.fall.get()), (1, 5));
    assert!(!health.fail_open);
    assert_eq!(health.udp_probe_payload, b"ping");
    assert_eq!(health.probe_interval, Duration::from_secs(10));
    assert_eq!(health.probe_timeout, Duration::from_secs(1));
}

// ---- errors ----------------------------------------------------------------

#[test]
fn bad_value_names_key_value_reason_and_line() {
    let text = format!("{UDP_DNS}\n[clusters.dns.udp]\nresponses = \"one\"\n");
    assert_eq!(
        error(&text),
        "clusters.dns.udp.responses: expected an integer >= 0, got \"one\" (at test.toml:12)"
    );
}

#[test]
fn out_of_range_and_wrong_type_values_are_refused() {
    assert_eq!(
        error("worker_count = 0"),
        "worker_count: expected an integer between 1 and 65535, got 0 (at test.toml:1)"
    );
    assert_eq!(
        error("worker_count = -3"),
        "worker_count: expected an integer between 1 and 65535, got -3 (at test.toml:1)"
    );
    assert_eq!(
        error("\n\nworker_timeout = \"10s\""),
        "worker_timeout: expected an integer >= 1, got \"10s\" (at test.toml:3)"
    );
    assert_eq!(
        error("activate_listeners = 1"),
        "activate_listeners: expected true or false, got 1 (at test.toml:1)"
    );
    assert_eq!(
        error("log_target = \"syslog\""),
        "log_target: expected \"stdout\", \"stderr\", or a udp://, tcp://, unix:// or file:// URL, got \"syslog\" (at test.toml:1)"
    );
    assert_eq!(
        error("command_allowed_uids = [1000, \"bob\"]"),
        "command_allowed_uids[1]: expected an integer >= 0, got \"bob\" (at test.toml:1)"
    );
    assert_eq!(
        error("[[listeners]]\nprotocol = \"udp\"\naddress = \"localhost:53\""),
        "listeners[0].address: expected a socket address like \"127.0.0.1:8080\" or \"[::1]:8080\", got \"localhost:53\" (at test.toml:3)"
    );
    assert_eq!(
        error("[[listeners]]\nprotocol = \"sctp\"\naddress = \"127.0.0.1:53\""),
        "listeners[0].protocol: expected one of \"http\", \"https\", \"tcp\", \"udp\", got \"sctp\" (at test.toml:2)"
    );
    let text = format!("{UDP_DNS}load_balancing = \"round_robin\"\n");
    assert_eq!(
        error(&text),
        "clusters.dns.load_balancing: expected one of \"ROUND_ROBIN\", \"RANDOM\", \"LEAST_LOADED\", \"POWER_OF_TWO\", \"HRW\", \"MAGLEV\", got \"round_robin\" (at test.toml:10)"
    );
}

#[test]
fn unknown_key_is_named_with_its_line() {
    assert_eq!(
        error("worker_count = 2\nworkers = 3\n"),
        "unknown key workers (at test.toml:2)"
    );
    assert_eq!(
        error("[[listeners]]\nprotocol = \"udp\"\naddress = \"127.0.0.1:53\"\nmax_flow = 10\n"),
        "unknown key listeners[0].max_flow (at test.toml:4)"
    );
    let text = format!("{UDP_DNS}\n[clusters.dns.udp]\nresponse = 1\n");
    assert_eq!(
        error(&text),
        "unknown key clusters.dns.udp.response (at test.toml:12)"
    );
    let text = format!("{UDP_DNS}\n[clusters.dns.udp.health]\nrize = 1\n");
    assert_eq!(
        error(&text),
        "unknown key clusters.dns.udp.health.rize (at test.toml:12)"
    );
}

#[test]
fn accepted_and_ignored_keys_load() {
    let c = load(
        r#"
ctl_command_timeout = 1000
handle_process_affinity = false
disable_cluster_metrics = true
min_buffers = 1
max_buffers = 10
[[listeners]]
protocol = "tcp"
address = "127.0.0.1:8080"
answer_404 = "404.html"
http_answers = "ignored"
"#,
    )
    .unwrap();
    assert_eq!(c.listeners.len(), 1);
}

#[test]
fn missing_required_key_is_named() {
    assert_eq!(
        error("[[listeners]]\nprotocol = \"udp\"\n"),
        "listeners[0].address: missing required key (at test.toml:1)"
    );
    assert_eq!(
        error("[metrics]\nprefix = \"x\"\n"),
        "metrics.address: missing required key (at test.toml:1)"
    );
}

#[test]
fn syntax_error_has_a_line() {
    assert_eq!(
        error("worker_count = 2\nlog_level = \n"),
        "invalid TOML: string values must be quoted, expected literal string (at test.toml:2)"
    );
}

#[test]
fn unreadable_file_is_a_read_error() {
    let e = Config::load_from_path("/nonexistent/sozu/config.toml").unwrap_err();
    assert!(matches!(e, ConfigError::Read { .. }));
    assert!(e
        .to_string()
        .starts_with("cannot read configuration file /nonexistent/sozu/config.toml: "));
}

#[test]
fn inconsistent_values_are_refused() {
    assert_eq!(
        error("command_buffer_size = 100\nmax_command_buffer_size = 50\n"),
        "max_command_buffer_size: must be at least command_buffer_size (100), got 50 (at test.toml:2)"
    );
    assert_eq!(
        error("automatic_state_save = true\n"),
        "automatic_state_save: is true but saved_state is not set (at test.toml:1)"
    );
}

// ---- listeners -------------------------------------------------------------

#[test]
fn tcp_and_udp_listeners_may_share_an_address() {
    let c = load(
        "[[listeners]]\nprotocol = \"tcp\"\naddress = \"127.0.0.1:5353\"\n\
         [[listeners]]\nprotocol = \"udp\"\naddress = \"127.0.0.1:5353\"\n",
    )
    .unwrap();
    assert_eq!(c.listeners.len(), 2);
    assert!(c
        .listener(crate::command::ListenerType::Tcp, addr("127.0.0.1:5353"))
        .is_some());
    assert!(c
        .listener(crate::command::ListenerType::Udp, addr("127.0.0.1:5353"))
        .is_some());
}

#[test]
fn two_listeners_of_one_protocol_on_one_address_are_refused() {
    assert_eq!(
        error(
            "[[listeners]]\nprotocol = \"udp\"\naddress = \"127.0.0.1:5353\"\n\
             [[listeners]]\nprotocol = \"udp\"\naddress = \"127.0.0.1:5353\"\n"
        ),
        "listeners[1]: a udp listener on 127.0.0.1:5353 is already defined on line 1; \
         only a TCP and a UDP listener may share an address (at test.toml:4)"
    );
    // HTTP and TCP both bind a TCP socket: they conflict too.
    assert!(error(
        "[[listeners]]\nprotocol = \"tcp\"\naddress = \"127.0.0.1:8080\"\n\
         [[listeners]]\nprotocol = \"http\"\naddress = \"127.0.0.1:8080\"\n"
    )
    .starts_with("listeners[1]: a http listener on 127.0.0.1:8080 is already defined"));
}

#[test]
fn expect_proxy_is_refused_on_udp_listeners() {
    assert_eq!(
        error("[[listeners]]\nprotocol = \"udp\"\naddress = \"127.0.0.1:53\"\nexpect_proxy = true\n"),
        "listeners[0].expect_proxy: expected no expect_proxy on a UDP listener (TCP and HTTP only), got true (at test.toml:4)"
    );
}

// ---- clusters --------------------------------------------------------------

#[test]
fn cluster_on_a_udp_listener_address_is_udp() {
    // Sōzu style: protocol = "tcp", but the address is a UDP listener's.
    let c = load(
        r#"
[[listeners]]
protocol = "udp"
address = "127.0.0.1:5353"

[clusters.dns]
protocol = "tcp"
frontends = [{ address = "127.0.0.1:5353" }]

[clusters.dns.udp]
responses = 1
"#,
    )
    .unwrap();
    assert_eq!(c.clusters["dns"].protocol, ClusterProtocol::Udp);
    assert_eq!(
        c.clusters["dns"].udp.as_ref().unwrap().responses,
        NonZeroU32::new(1)
    );

    // No protocol at all: the UDP listener decides.
    let c = load(
        "[[listeners]]\nprotocol = \"udp\"\naddress = \"127.0.0.1:5353\"\n\
         [clusters.dns]\nfrontends = [{ address = \"127.0.0.1:5353\" }]\n",
    )
    .unwrap();
    assert_eq!(c.clusters["dns"].protocol, ClusterProtocol::Udp);
}

#[test]
fn shared_address_keeps_the_declared_protocol() {
    let c = load(
        r#"
[[listeners]]
protocol = "udp"
address = "127.0.0.1:5353"
[[listeners]]
protocol = "tcp"
address = "127.0.0.1:5353"

[clusters.dns-tcp]
protocol = "tcp"
frontends = [{ address = "127.0.0.1:5353" }]
[clusters.dns-udp]
protocol = "udp"
frontends = [{ address = "127.0.0.1:5353" }]
"#,
    )
    .unwrap();
    assert_eq!(c.clusters["dns-tcp"].protocol, ClusterProtocol::Tcp);
    assert_eq!(c.clusters["dns-tcp"].udp, None);
    assert_eq!(c.clusters["dns-udp"].protocol, ClusterProtocol::Udp);
}

#[test]
fn frontend_without_its_listener_is_refused() {
    assert_eq!(
        error("[clusters.dns]\nprotocol = \"udp\"\nfrontends = [{ address = \"127.0.0.1:5353\" }]\n"),
        "clusters.dns.frontends[0].address: expected the address of a udp listener, got \"127.0.0.1:5353\" (at test.toml:3)"
    );
    assert_eq!(
        error("[clusters.web]\nfrontends = []\n"),
        "clusters.web.protocol: missing required key (at test.toml:1)"
    );
}

#[test]
fn udp_block_on_a_tcp_cluster_is_refused() {
    assert_eq!(
        error(
            "[[listeners]]\nprotocol = \"tcp\"\naddress = \"127.0.0.1:81\"\n\
             [clusters.t]\nprotocol = \"tcp\"\nfrontends = [{ address = \"127.0.0.1:81\" }]\n\
             [clusters.t.udp]\nresponses = 1\n"
        ),
        "clusters.t.udp: a [udp] block is only allowed on a UDP cluster (protocol = \"udp\", or a frontend on a UDP listener) (at test.toml:7)"
    );
}

#[test]
fn http_frontend_needs_a_hostname_and_udp_frontend_refuses_one() {
    assert_eq!(
        error(
            "[[listeners]]\nprotocol = \"http\"\naddress = \"127.0.0.1:80\"\n\
             [clusters.w]\nprotocol = \"http\"\nfrontends = [{ address = \"127.0.0.1:80\" }]\n"
        ),
        "clusters.w.frontends[0].hostname: missing required key (at test.toml:6)"
    );
    let text = UDP_DNS.replace(
        "frontends = [{ address = \"127.0.0.1:5353\" }]",
        "frontends = [{ address = \"127.0.0.1:5353\", hostname = \"x\" }]",
    );
    assert_eq!(
        error(&text),
        "clusters.dns.frontends[0].hostname: expected no HTTP routing key (hostname, path, path_type, method) on a TCP or UDP frontend, got \"x\" (at test.toml:8)"
    );
}

#[test]
fn regex_paths_load_and_a_bad_pattern_is_refused_with_key_and_value() {
    let good = "[[listeners]]\nprotocol = \"http\"\naddress = \"127.0.0.1:80\"\n\
         [clusters.w]\nprotocol = \"http\"\nfrontends = [{ address = \"127.0.0.1:80\", hostname = \"h\", path_type = \"REGEX\", path = \"^/v[0-9]+/\" }]\n";
    let config = load(good).unwrap();
    let frontend = &config.clusters["w"].frontends[0];
    assert_eq!(frontend.path_kind, PathRuleKind::Regex);
    assert_eq!(frontend.path, "^/v[0-9]+/");
    let message = error(&good.replace("^/v[0-9]+/", "/(v1"));
    assert!(
        message.starts_with(
            "clusters.w.frontends[0].path: expected a regular expression (path_type = \"REGEX\"): "
        ),
        "{message}"
    );
    assert!(
        message.ends_with("got \"/(v1\" (at test.toml:6)"),
        "{message}"
    );
}

#[test]
fn answers_tables_and_per_status_files_are_read_for_listeners_and_clusters() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("301.http"),
        "HTTP/1.1 301 Moved\nLocation: %REDIRECT_LOCATION\n\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("502.html"), "bad gateway").unwrap();
    std::fs::write(dir.path().join("429.html"), "slow down").unwrap();
    let text = "[[listeners]]\nprotocol = \"https\"\naddress = \"127.0.0.1:443\"\nanswer_301 = \"301.http\"\nanswer_429 = \"429.html\"\n\
         [listeners.answers]\n502 = \"502.html\"\n429 = \"inline:from the table\"\n\
         [clusters.w]\nprotocol = \"http\"\nfrontends = [{ address = \"127.0.0.1:443\", hostname = \"h\" }]\n\
         [clusters.w.answers]\n503 = \"inline:cluster %CLUSTER_ID\"\n";
    let config = super::parse::parse(text, Path::new("test.toml"), dir.path()).unwrap();
    let ListenerConfig::Https(l) = &config.listeners[0] else {
        panic!("{:?}", config.listeners[0]);
    };
    let answers: Vec<(&str, &str)> = l
        .http
        .answers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        answers,
        vec![
            (
                "301",
                "HTTP/1.1 301 Moved\nLocation: %REDIRECT_LOCATION\n\n"
            ),
            ("429", "from the table"),
            ("502", "bad gateway"),
        ]
    );
    let c = &config.clusters["w"];
    assert_eq!(c.answers["503"], "cluster %CLUSTER_ID");
    // Carried by the orders.
    let Some(crate::command::request::RequestType::AddHttpsListener(order)) =
        config.listeners[0].add_order().and_then(|r| r.request_type)
    else {
        panic!("an https listener order");
    };
    assert_eq!(order.answers.len(), 3);
    let Some(crate::command::request::RequestType::AddCluster(cluster)) =
        c.add_order().request_type
    else {
        panic!("a cluster order");
    };
    assert_eq!(cluster.answers["503"], "cluster %CLUSTER_ID");
    // A key that is not a status is refused by name.
    let bad = text.replace("502 = ", "oops = ");
    let message = super::parse::parse(&bad, Path::new("test.toml"), dir.path())
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("answers.oops") && message.contains("not an HTTP status"),
        "{message}"
    );
}

#[test]
fn answer_files_and_redirect_port_are_read_into_the_orders() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("404.html"), "<h1>gone</h1>").unwrap();
    std::fs::write(dir.path().join("503.html"), "HTTP/1.1 503 Busy\n\nlater").unwrap();
    let text = "[[listeners]]\nprotocol = \"http\"\naddress = \"127.0.0.1:80\"\nanswer_404 = \"404.html\"\n\
         [clusters.w]\nprotocol = \"http\"\nhttps_redirect = true\nhttps_redirect_port = 8443\nanswer_503 = \"503.html\"\n\
         frontends = [{ address = \"127.0.0.1:80\", hostname = \"h\" }]\n";
    let config = super::parse::parse(text, Path::new("test.toml"), dir.path()).unwrap();
    let ListenerConfig::Http(l) = &config.listeners[0] else {
        panic!("{:?}", config.listeners[0]);
    };
    assert_eq!(l.answer_404.as_deref(), Some("<h1>gone</h1>"));
    assert_eq!(l.answer_503, None);
    let c = &config.clusters["w"];
    assert_eq!(c.https_redirect_port, Some(8443));
    assert_eq!(c.answer_503.as_deref(), Some("HTTP/1.1 503 Busy\n\nlater"));
    let missing = text.replace("404.html", "nope.html");
    let message = super::parse::parse(&missing, Path::new("test.toml"), dir.path())
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("listeners[0].answer_404") && message.contains("nope.html"),
        "{message}"
    );
    let bad_port = text.replace("8443", "0");
    let message = super::parse::parse(&bad_port, Path::new("test.toml"), dir.path())
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("clusters.w.https_redirect_port"),
        "{message}"
    );
}

#[test]
fn duplicate_backend_ids_are_refused() {
    let text = UDP_DNS.replace(
        "backends = [{ address = \"127.0.0.1:5354\" }, { address = \"127.0.0.1:5355\" }]",
        "backends = [{ address = \"127.0.0.1:5354\" }, { address = \"127.0.0.1:5355\", backend_id = \"dns-0\" }]",
    );
    assert_eq!(
        error(&text),
        "clusters.dns.backends[1].backend_id: \"dns-0\" is already used by another backend of cluster dns (at test.toml:9)"
    );
}

#[test]
fn relative_paths_resolve_against_the_config_directory() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sozu.toml");
    std::fs::write(
        &path,
        "command_socket = \"run/sozu.sock\"\nsaved_state = \"./state.json\"\npid_file_path = \"/abs/sozu.pid\"\n",
    )
    .unwrap();
    let c = Config::load_from_path(&path).unwrap();
    assert_eq!(c.config_path, Some(path.clone()));
    assert_eq!(c.command_socket, dir.path().join("run/sozu.sock"));
    assert_eq!(c.saved_state, Some(dir.path().join("state.json")));
    assert_eq!(c.pid_file_path, Some(PathBuf::from("/abs/sozu.pid")));
    // The default socket is beside the file too.
    std::fs::write(&path, "worker_count = 2\n").unwrap();
    let c = Config::load_from_path(&path).unwrap();
    assert_eq!(c.command_socket, dir.path().join("sozu.sock"));
}

// ---- orders ----------------------------------------------------------------

fn kind(order: &Request) -> &'static str {
    match order.request_type.as_ref().unwrap() {
        RequestType::AddUdpListener(_) => "add_udp_listener",
        RequestType::AddTcpListener(_) => "add_tcp_listener",
        RequestType::AddHttpListener(_) => "add_http_listener",
        RequestType::AddCluster(_) => "add_cluster",
        RequestType::AddUdpFrontend(_) => "add_udp_frontend",
        RequestType::AddTcpFrontend(_) => "add_tcp_frontend",
        RequestType::AddHttpFrontend(_) => "add_http_frontend",
        RequestType::AddHttpsListener(_) => "add_https_listener",
        RequestType::AddHttpsFrontend(_) => "add_https_frontend",
        RequestType::AddCertificate(_) => "add_certificate",
        RequestType::AddBackend(_) => "add_backend",
        RequestType::ActivateListener(_) => "activate_listener",
        other => panic!("unexpected order {other:?}"),
    }
}

const SAMPLE: &str = r#"
[[listeners]]
protocol = "udp"
address = "127.0.0.1:5353"
max_flows = 100

[[listeners]]
protocol = "tcp"
address = "127.0.0.1:5353"

[[listeners]]
protocol = "http"
address = "127.0.0.1:8080"

[clusters.dns]
protocol = "udp"
load_balancing = "MAGLEV"
frontends = [{ address = "127.0.0.1:5353" }]
backends = [
  { address = "127.0.0.1:5354", weight = 10 },
  { address = "127.0.0.1:5355", backend_id = "b" },
]
[clusters.dns.udp]
responses = 1

[clusters.echo]
protocol = "tcp"
send_proxy = true
frontends = [{ address = "127.0.0.1:5353" }]
backends = [{ address = "127.0.0.1:9001" }]

[clusters.web]
protocol = "http"
frontends = [{ address = "127.0.0.1:8080", hostname = "example.com", path = "/api", tags = { team = "a" } }]
backends = [{ address = "127.0.0.1:9101" }]
"#;

#[test]
fn orders_build_listeners_clusters_frontends_backends_then_activate() {
    let orders = load(SAMPLE).unwrap().generate_orders();
    let kinds: Vec<&str> = orders.iter().map(kind).collect();
    assert_eq!(
        kinds,
        [
            "add_udp_listener",
            "add_tcp_listener",
            "add_http_listener",
            "add_cluster",
            "add_cluster",
            "add_cluster",
            "add_udp_frontend",
            "add_tcp_frontend",
            "add_http_frontend",
            "add_backend",
            "add_backend",
            "add_backend",
            "add_backend",
            "activate_listener",
            "activate_listener",
            "activate_listener",
        ]
    );
    let at = |i: usize| orders[i].request_type.clone().unwrap();

    let RequestType::AddUdpListener(udp) = at(0) else {
        panic!()
    };
    assert_eq!(
        SocketAddr::try_from(&udp.address).unwrap(),
        addr("127.0.0.1:5353")
    );
    assert!(!udp.active);
    assert_eq!((udp.front_timeout, udp.back_timeout), (30, 30));
    assert_eq!((udp.max_rx_datagram_size, udp.max_flows), (1500, 100));

    let RequestType::AddTcpListener(tcp) = at(1) else {
        panic!()
    };
    assert!(!tcp.active);
    assert_eq!(
        (tcp.front_timeout, tcp.back_timeout, tcp.connect_timeout),
        (60, 30, 3)
    );

    let RequestType::AddCluster(dns) = at(3) else {
        panic!()
    };
    assert_eq!(dns.cluster_id, "dns");
    assert_eq!(
        dns.load_balancing,
        crate::command::LoadBalancingAlgorithms::Maglev as i32
    );
    let knobs = dns.udp.unwrap();
    assert_eq!(knobs.responses, Some(1));
    assert_eq!(knobs.requests, Some(0));
    assert_eq!(
        knobs.affinity_key,
        Some(crate::command::UdpAffinityKey::SourceIp as i32)
    );
    assert_eq!(knobs.health, None);

    let RequestType::AddCluster(echo) = at(4) else {
        panic!()
    };
    assert_eq!(echo.cluster_id, "echo");
    assert_eq!(echo.udp, None);
    assert_eq!(
        echo.proxy_protocol,
        Some(ProxyProtocolConfig::SendHeader as i32)
    );

    let RequestType::AddUdpFrontend(f) = at(6) else {
        panic!()
    };
    assert_eq!(
        (f.cluster_id.as_str(), f.address.to_string()),
        ("dns", "127.0.0.1:5353".to_owned())
    );
    let RequestType::AddTcpFrontend(f) = at(7) else {
        panic!()
    };
    assert_eq!(f.cluster_id, "echo");
    let RequestType::AddHttpFrontend(f) = at(8) else {
        panic!()
    };
    assert_eq!(f.cluster_id.as_deref(), Some("web"));
    assert_eq!(f.hostname, "example.com");
    assert_eq!(f.path.kind, crate::command::PathRuleKind::Prefix as i32);
    assert_eq!(f.path.value, "/api");
    assert_eq!(f.position, RulePosition::Tree as i32);
    assert_eq!(f.tags.get("team").map(String::as_str), Some("a"));

    let backends: Vec<(String, String, String, i32)> = orders[9..13]
        .iter()
        .map(|o| match o.request_type.clone().unwrap() {
            RequestType::AddBackend(b) => (
                b.cluster_id,
                b.backend_id,
                b.address.to_string(),
                b.load_balancing_parameters.unwrap().weight,
            ),
            other => panic!("{other:?}"),
        })
        .collect();
    let expected = [
        ("dns", "dns-0", "127.0.0.1:5354", 10),
        ("dns", "b", "127.0.0.1:5355", 100),
        ("echo", "echo-0", "127.0.0.1:9001", 100),
        ("web", "web-0", "127.0.0.1:9101", 100),
    ];
    let expected: Vec<_> = expected
        .iter()
        .map(|(c, b, a, w)| (c.to_string(), b.to_string(), a.to_string(), *w))
        .collect();
    assert_eq!(backends, expected);

    let activations: Vec<(String, i32)> = orders[13..]
        .iter()
        .map(|o| match o.request_type.clone().unwrap() {
            RequestType::ActivateListener(a) => (a.address.to_string(), a.proxy),
            other => panic!("{other:?}"),
        })
        .collect();
    use crate::command::ListenerType;
    assert_eq!(
        activations,
        [
            ("127.0.0.1:5353".to_owned(), ListenerType::Udp as i32),
            ("127.0.0.1:5353".to_owned(), ListenerType::Tcp as i32),
            ("127.0.0.1:8080".to_owned(), ListenerType::Http as i32),
        ]
    );
}

#[test]
fn no_activation_orders_when_activate_listeners_is_false() {
    let orders = load(&format!("activate_listeners = false\n{SAMPLE}"))
        .unwrap()
        .generate_orders();
    assert_eq!(orders.len(), 13);
    assert!(orders.iter().all(|o| kind(o) != "activate_listener"));
}

#[test]
fn https_listeners_and_frontend_certificates_become_orders() {
    let dir = tempfile::tempdir().unwrap();
    let pem = |names: &[&str], stem: &str| {
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let cert = rcgen::CertificateParams::new(names)
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(dir.path().join(format!("{stem}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.path().join(format!("{stem}.key")), key.serialize_pem()).unwrap();
        cert.pem()
    };
    let default_pem = pem(&["default.example.com"], "default");
    let site_pem = pem(&["example.com"], "site");
    let path = dir.path().join("config.toml");
    std::fs::write(
        &path,
        r#"
[[listeners]]
protocol = "https"
address = "127.0.0.1:8443"
certificate = "default.pem"
key = "default.key"
tls_versions = ["TLS_V12", "TLS_V1_3"]
cipher_list = ["ECDHE-ECDSA-AES128-GCM-SHA256"]
send_tls13_tickets = 2

[clusters.secure]
protocol = "http"
frontends = [{ address = "127.0.0.1:8443", hostname = "example.com", certificate = "site.pem", key = "site.key" }]
backends = [{ address = "127.0.0.1:9101" }]
"#,
    )
    .unwrap();
    let c = Config::load_from_path(&path).unwrap();
    let ListenerConfig::Https(listener) = &c.listeners[0] else {
        panic!("an HTTPS listener: {:?}", c.listeners[0]);
    };
    assert_eq!(listener.certificate.as_deref(), Some(default_pem.as_str()));
    assert_eq!(listener.versions, [TlsVersion::TlsV12, TlsVersion::TlsV13]);
    assert_eq!(listener.send_tls13_tickets, 2);
    let orders = c.generate_orders();
    let kinds: Vec<&str> = orders.iter().map(kind).collect();
    assert_eq!(
        kinds,
        [
            "add_https_listener",
            "add_certificate",
            "add_cluster",
            "add_https_frontend",
            "add_backend",
            "activate_listener"
        ]
    );
    let Some(RequestType::AddCertificate(add)) = &orders[1].request_type else {
        unreachable!()
    };
    assert_eq!(add.certificate.certificate, site_pem);
    let state = crate::state::ConfigState::from_requests(&orders).expect("the state takes them");
    assert_eq!(state.certificates().count(), 1);
    assert_eq!(state.https_frontends().count(), 1);

    // A missing key file is an error naming the key and the file.
    std::fs::remove_file(dir.path().join("default.key")).unwrap();
    let error = Config::load_from_path(&path).unwrap_err().to_string();
    assert!(
        error.starts_with("listeners[0].key: cannot read"),
        "{error}"
    );
}

#[test]
fn quick_start_config_toml_loads() {
    let text = include_str!("../../../config.toml");
    let c = Config::from_str(text, Path::new("config.toml")).unwrap();
    assert_eq!(c.command_socket, PathBuf::from("./sozu.sock"));
    assert_eq!(c.worker_count.get(), 2);
    let dns = &c.clusters["dns"];
    assert_eq!(dns.protocol, ClusterProtocol::Udp);
    assert_eq!(dns.udp.as_ref().unwrap().responses, NonZeroU32::new(1));
    let backends: Vec<SocketAddr> = dns.backends.iter().map(|b| b.address).collect();
    assert_eq!(backends, [addr("127.0.0.1:5354"), addr("127.0.0.1:5355")]);
    let kinds: Vec<&str> = c.generate_orders().iter().map(kind).collect();
    assert_eq!(
        kinds,
        [
            "add_udp_listener",
            "add_cluster",
            "add_udp_frontend",
            "add_backend",
            "add_backend",
            "activate_listener"
        ]
    );
}

#[test]
fn every_accepted_and_ignored_key_is_documented() {
    let doc = include_str!("../../../doc/configure.md");
    let section = doc
        .split("## Accepted and ignored")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .unwrap();
    for key in super::parse::IGNORED_GLOBAL
        .iter()
        .chain(super::parse::IGNORED_LISTENER)
        .chain(super::parse::IGNORED_CLUSTER)
        .chain(super::parse::IGNORED_FRONTEND)
    {
        assert!(
            section.contains(&format!("`{key}`")),
            "{key} is not documented"
        );
    }
}

#[test]
fn health_off_is_kept_as_an_explicit_mode() {
    let c = load(&format!(
        "{UDP_DNS}\n[clusters.dns.udp.health]\nmode = \"HEALTH_OFF\"\n"
    ))
    .unwrap();
    let health = c.clusters["dns"].udp.clone().unwrap().health.unwrap();
    assert_eq!(health.mode, crate::command::UdpHealthMode::HealthOff);
    let RequestType::AddCluster(cluster) = c.generate_orders()[1].request_type.clone().unwrap()
    else {
        panic!("second order is not add_cluster");
    };
    let wire = cluster.udp.unwrap().health.unwrap();
    assert_eq!(
        wire.mode,
        Some(crate::command::UdpHealthMode::HealthOff as i32)
    );
    assert_eq!(
        (wire.rise, wire.fall, wire.fail_open),
        (Some(2), Some(3), Some(true))
    );
}

#[test]
fn loading_by_relative_path_gives_absolute_socket_path() {
    // Tests run in the crate directory; the quick-start file is one level up.
    let c = Config::load_from_path("../config.toml").unwrap();
    assert!(c.command_socket.is_absolute(), "{:?}", c.command_socket);
    assert_eq!(c.command_socket.file_name().unwrap(), "sozu.sock");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    assert_eq!(
        c.command_socket.parent().unwrap().canonicalize().unwrap(),
        repo.canonicalize().unwrap()
    );
}

#[test]
fn two_udp_clusters_on_one_udp_listener_are_refused_naming_both() {
    let text = r#"
[[listeners]]
protocol = "udp"
address = "127.0.0.1:5300"

[clusters.a]
protocol = "udp"
frontends = [{ address = "127.0.0.1:5300" }]

[clusters.b]
protocol = "udp"
frontends = [{ address = "127.0.0.1:5300" }]
"#;
    let error = Config::from_str(text, Path::new("dup.toml"))
        .unwrap_err()
        .to_string();
    assert_eq!(
        error,
        "clusters.b.frontends[0].address: listener 127.0.0.1:5300 already forwards to cluster a: \
         a udp listener has exactly one cluster (at dup.toml:12)"
    );
}

#[test]
fn hash_seed_is_optional_any_u64_and_refuses_negatives() {
    assert_eq!(load("").unwrap().hash_seed, None);
    assert_eq!(load("hash_seed = 12345\n").unwrap().hash_seed, Some(12_345));
    assert_eq!(
        load("hash_seed = 0xffffffffffffffff\n").unwrap().hash_seed,
        Some(u64::MAX)
    );
    assert_eq!(
        error("hash_seed = -1\n"),
        "hash_seed: expected an integer >= 0, got -1 (at test.toml:1)"
    );
}

#[test]
fn upstream_source_addresses_are_distinct_ip_addresses() {
    let c = load("upstream_source_addresses = [\"127.0.0.2\", \"::1\"]\n").unwrap();
    assert_eq!(
        c.upstream_source_addresses,
        vec![
            "127.0.0.2".parse::<std::net::IpAddr>().unwrap(),
            "::1".parse().unwrap()
        ]
    );
    assert!(load("").unwrap().upstream_source_addresses.is_empty());
    assert_eq!(
        error("upstream_source_addresses = [\"0.0.0.0\"]"),
        "upstream_source_addresses[0]: expected an IP address like \"192.0.2.10\" or \"2001:db8::10\", not a wildcard, got \"0.0.0.0\" (at test.toml:1)"
    );
    assert_eq!(
        error("upstream_source_addresses = [\"10.0.0.1\", \"10.0.0.1\"]"),
        "upstream_source_addresses[1]: expected an address not already listed, got \"10.0.0.1\" (at test.toml:1)"
    );
    assert_eq!(
        error("upstream_source_addresses = [\"10.0.0.1:53\"]"),
        "upstream_source_addresses[0]: expected an IP address like \"192.0.2.10\" or \"2001:db8::10\", not a wildcard, got \"10.0.0.1:53\" (at test.toml:1)"
    );
}

#[test]
fn metrics_listener_and_access_log_format_are_read_and_checked() {
    let c = load("").unwrap();
    assert_eq!(c.metrics_listener, None);
    assert_eq!(c.access_logs_format, AccessLogFormat::Ascii);
    let c = load("metrics_listener = \"127.0.0.1:9090\"\naccess_logs_format = \"json\"\n").unwrap();
    assert_eq!(c.metrics_listener, Some(addr("127.0.0.1:9090")));
    assert_eq!(c.access_logs_format, AccessLogFormat::Json);
    let e = error("access_logs_format = \"xml\"\n");
    assert!(
        e.contains("access_logs_format") && e.contains("\"json\""),
        "{e}"
    );
    let e = error("metrics_listener = \"localhost\"\n");
    assert!(e.contains("metrics_listener"), "{e}");
}

// ---- meaning of values (issue 18) -------------------------------------------

#[test]
fn a_log_level_typo_is_refused_with_key_and_line() {
    let e = error("worker_count = 1\nlog_level = \"inf\"\n");
    assert!(e.contains("log_level"), "{e}");
    assert!(e.contains("test.toml:2"), "{e}");
    assert!(e.contains("\"inf\""), "{e}");
    assert!(load("log_level = \"info,sozu_lib=debug\"").is_ok());
    assert!(load("log_level = \"WARN\"").is_ok());
}

#[test]
fn an_empty_file_is_refused_on_load() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.toml");
    std::fs::write(&path, "\n  # only a comment\n\n").unwrap();
    let e = Config::load_from_path(&path).unwrap_err().to_string();
    assert!(e.contains("holds no key"), "{e}");
    std::fs::write(&path, "worker_count = 1\n").unwrap();
    assert!(Config::load_from_path(&path).is_ok());
}

#[test]
fn a_port_zero_address_names_key_and_line() {
    let e =
        error("worker_count = 1\n[[listeners]]\nprotocol = \"udp\"\naddress = \"127.0.0.1:0\"\n");
    assert!(e.contains("listeners[0].address"), "{e}");
    assert!(e.contains("test.toml:4"), "{e}");
    assert!(e.contains("port"), "{e}");
}

#[test]
fn broadcast_and_multicast_backends_are_refused() {
    for bad in [
        "255.255.255.255:53",
        "224.0.0.251:5353",
        "[ff02::fb]:5353",
        "0.0.0.0:53",
    ] {
        let text = UDP_DNS.replace("127.0.0.1:5355", bad);
        let e = error(&text);
        assert!(e.contains("clusters.dns.backends[1].address"), "{bad}: {e}");
    }
}

#[test]
fn datagram_size_and_weight_ranges_are_the_shared_ones() {
    let listener = |size: u32| {
        format!(
            "buffer_size = 70000\n[[listeners]]\nprotocol = \"udp\"\naddress = \"127.0.0.1:5353\"\nmax_rx_datagram_size = {size}\n"
        )
    };
    assert!(load(&listener(crate::limits::MAX_RX_DATAGRAM_SIZE)).is_ok());
    let e = error(&listener(crate::limits::MAX_RX_DATAGRAM_SIZE + 1));
    assert!(e.contains("65507"), "{e}");
    let weighted = |w: u32| {
        UDP_DNS.replace(
            "{ address = \"127.0.0.1:5355\" }",
            &format!("{{ address = \"127.0.0.1:5355\", weight = {w} }}"),
        )
    };
    assert!(load(&weighted(crate::limits::MAX_WEIGHT)).is_ok());
    assert!(error(&weighted(crate::limits::MAX_WEIGHT + 1)).contains("255"));
}

#[test]
fn relative_paths_print_without_dot_components() {
    let config = Config::from_str(
        "command_socket = \"./run/./sozu.sock\"",
        Path::new("/etc/sozu/config.toml"),
    )
    .unwrap();
    assert_eq!(
        config.command_socket,
        PathBuf::from("/etc/sozu/run/sozu.sock")
    );
}

/// Validation is linear: 20,000 listeners, each with a cluster, load in
/// the normal run of the test (it took minutes with the former quadratic
/// line lookup and duplicate scans).
#[test]
fn twenty_thousand_listeners_validate_in_linear_time() {
    use std::fmt::Write as _;
    let count = 20_000u32;
    let mut text = String::from("worker_count = 1\n");
    for i in 0..count {
        let port = 10_000 + (i % 50_000);
        let ip = format!("127.0.{}.{}", i / 250, i % 250 + 1);
        let _ = write!(
            text,
            "[[listeners]]\nprotocol = \"udp\"\naddress = \"{ip}:{port}\"\n"
        );
    }
    for i in 0..count {
        let port = 10_000 + (i % 50_000);
        let ip = format!("127.0.{}.{}", i / 250, i % 250 + 1);
        let _ = write!(
            text,
            "[clusters.c{i}]\nprotocol = \"udp\"\nfrontends = [{{ address = \"{ip}:{port}\" }}]\nbackends = [{{ address = \"10.0.0.1:53\" }}]\n"
        );
    }
    let config = load(&text).unwrap();
    assert_eq!(config.listeners.len(), count as usize);
    assert_eq!(config.clusters.len(), count as usize);
    // A duplicate at the very end is still found, with the first line.
    text.push_str("[[listeners]]\nprotocol = \"udp\"\naddress = \"127.0.0.1:10000\"\n");
    let e = error(&text);
    assert!(e.contains("already defined on line 2"), "{e}");
}

#[test]
fn packaged_config_toml_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/config.toml");
    let c = Config::load_from_path(&path).unwrap();
    assert_eq!(c.command_socket, PathBuf::from("/run/sozu/sozu.sock"));
    assert_eq!(
        c.saved_state,
        Some(PathBuf::from("/var/lib/sozu/state.json"))
    );
    assert_eq!(c.clusters["dns"].protocol, ClusterProtocol::Udp);
}

/// The UDP part of the `add_cluster` order for the `dns` cluster of
/// [`UDP_DNS`] with `udp_keys` in its `[clusters.dns.udp]` block.
fn dns_udp_order(udp_keys: &str) -> crate::command::UdpClusterConfig {
    let c = load(&format!("{UDP_DNS}\n[clusters.dns.udp]\n{udp_keys}\n")).unwrap();
    let order = c.clusters["dns"].add_order();
    let Some(crate::command::request::RequestType::AddCluster(cluster)) = order.request_type else {
        panic!("not add_cluster: {order:?}");
    };
    cluster.udp.expect("a UDP cluster's order has a udp block")
}

#[test]
fn quic_cid_length_is_one_to_twenty_and_reaches_the_order() {
    for bad in ["0", "21", "-1", "\"8\""] {
        let e = error(&format!(
            "{UDP_DNS}\n[clusters.dns.udp]\nflow_key = \"QUIC_CONNECTION_ID\"\nquic_cid_length = {bad}\n"
        ));
        assert!(e.contains("quic_cid_length"), "{bad}: {e}");
    }
    let udp = dns_udp_order("flow_key = \"QUIC_CONNECTION_ID\"\nquic_cid_length = 4");
    assert_eq!(udp.quic_cid_length, Some(4));
    assert_eq!(
        udp.flow_key,
        Some(crate::command::UdpFlowKey::QuicConnectionId as i32)
    );
}

#[test]
fn dns_id_flow_key_reaches_the_order_and_excludes_one_way() {
    let udp = dns_udp_order("flow_key = \"DNS_ID\"\nback_timeout = 2");
    assert_eq!(udp.flow_key, Some(crate::command::UdpFlowKey::DnsId as i32));
    assert_eq!(udp.back_timeout, Some(2));
    let e = error(&format!(
        "{UDP_DNS}\n[clusters.dns.udp]\none_way = true\nflow_key = \"DNS_ID\"\n"
    ));
    assert!(e.contains("flow_key") && e.contains("DNS_ID"), "{e}");
}

const UDP_QUIC_LB: &str = r#"
[[listeners]]
protocol = "udp"
address = "127.0.0.1:4433"

[clusters.quic]
protocol = "udp"
frontends = [{ address = "127.0.0.1:4433" }]
backends = [
  { address = "127.0.0.1:5001", backend_id = "q1", quic_lb_server_id = "0A1b" },
  { address = "127.0.0.1:5002", backend_id = "q2" },
]

[clusters.quic.udp]
flow_key = "QUIC_CONNECTION_ID"
"#;

#[test]
fn quic_lb_keys_reach_the_orders() {
    let c = load(&format!(
        "{UDP_QUIC_LB}quic_lb_config_id = 3\nquic_lb_server_id_length = 2\n"
    ))
    .unwrap();
    let quic = &c.clusters["quic"];
    assert_eq!(quic.backends[0].quic_lb_server_id, Some(vec![0x0a, 0x1b]));
    assert_eq!(quic.backends[1].quic_lb_server_id, None);
    let Some(crate::command::request::RequestType::AddCluster(cluster)) =
        quic.add_order().request_type
    else {
        panic!("not add_cluster");
    };
    let udp = cluster.udp.unwrap();
    assert_eq!(
        (
            udp.quic_lb_config_id,
            udp.quic_lb_server_id_length,
            udp.quic_lb_nonce_length
        ),
        (Some(3), Some(2), None)
    );
    let backend = c
        .generate_orders()
        .into_iter()
        .find_map(|o| match o.request_type {
            Some(crate::command::request::RequestType::AddBackend(b)) if b.backend_id == "q1" => {
                Some(b)
            }
            _ => None,
        })
        .expect("q1's order");
    assert_eq!(backend.quic_lb_server_id, Some(vec![0x0a, 0x1b]));
}

#[test]
fn quic_lb_keys_are_checked_naming_the_key() {
    for (extra, key) in [
        ("quic_lb_server_id_length = 0\n", "quic_lb_server_id_length"),
        (
            "quic_lb_server_id_length = 16\n",
            "quic_lb_server_id_length",
        ),
        // 8-octet ids leave 3 octets of nonce after a 4-octet server id.
        ("quic_lb_server_id_length = 4\n", "quic_lb_server_id_length"),
        (
            "quic_lb_server_id_length = 1\nquic_lb_config_id = 7\n",
            "quic_lb_config_id",
        ),
        (
            "quic_lb_server_id_length = 2\nquic_lb_nonce_length = 6\n",
            "quic_lb_nonce_length",
        ),
        ("quic_lb_config_id = 1\n", "quic_lb_config_id"),
    ] {
        let e = error(&format!("{UDP_QUIC_LB}{extra}"));
        assert!(e.contains(key), "{extra}: {e}");
    }
    // QUIC-LB needs QUIC keys.
    let e = error(&UDP_QUIC_LB.replace(
        "flow_key = \"QUIC_CONNECTION_ID\"",
        "quic_lb_server_id_length = 1",
    ));
    assert!(e.contains("QUIC_CONNECTION_ID"), "{e}");
    for bad in [
        "\"0\"",
        "\"zz\"",
        "\"\"",
        "7",
        "\"000102030405060708090a0b0c0d0e0f\"",
    ] {
        let e = error(&UDP_QUIC_LB.replace("\"0A1b\"", bad));
        assert!(e.contains("quic_lb_server_id"), "{bad}: {e}");
    }
}

#[test]
fn hsts_is_read_on_https_listeners_and_frontends_only() {
    let listeners = r#"
[[listeners]]
protocol = "https"
address = "127.0.0.1:8443"
hsts = { enabled = true, include_subdomains = true }
[[listeners]]
protocol = "http"
address = "127.0.0.1:8080"
"#;
    let orders = load(&format!(
        r#"{listeners}
[clusters.a]
protocol = "http"
frontends = [
    {{ address = "127.0.0.1:8443", hostname = "a.test", hsts = {{ enabled = false }} }},
    {{ address = "127.0.0.1:8443", hostname = "b.test", hsts = {{ enabled = true, max_age = 0, force_replace_backend = true }} }},
    {{ address = "127.0.0.1:8080", hostname = "a.test" }},
]
"#
    ))
    .unwrap()
    .generate_orders();
    let listener = orders.iter().find_map(|o| match &o.request_type {
        Some(RequestType::AddHttpsListener(l)) => Some(l.hsts),
        _ => None,
    });
    assert_eq!(
        listener,
        Some(Some(crate::command::HstsConfig {
            enabled: Some(true),
            max_age: Some(crate::limits::DEFAULT_HSTS_MAX_AGE),
            include_subdomains: Some(true),
            preload: None,
            force_replace_backend: None,
        })),
        "enabled without max_age: a year"
    );
    let frontends: Vec<_> = orders
        .iter()
        .filter_map(|o| match &o.request_type {
            Some(RequestType::AddHttpsFrontend(f)) => Some((f.hostname.as_str(), f.hsts)),
            Some(RequestType::AddHttpFrontend(f)) => Some(("http", f.hsts)),
            _ => None,
        })
        .collect();
    assert!(frontends.contains(&(
        "a.test",
        Some(crate::command::HstsConfig {
            enabled: Some(false),
            ..Default::default()
        })
    )));
    assert!(frontends.contains(&(
        "b.test",
        Some(crate::command::HstsConfig {
            enabled: Some(true),
            max_age: Some(0),
            force_replace_backend: Some(true),
            ..Default::default()
        })
    )));
    assert!(frontends.contains(&("http", None)));

    // `enabled` is required; unknown keys and HSTS on plain HTTP are refused.
    let missing = error(&format!(
        "{listeners}[clusters.a]\nprotocol = \"http\"\nfrontends = [{{ address = \"127.0.0.1:8443\", hostname = \"a.test\", hsts = {{ max_age = 5 }} }}]\n"
    ));
    assert!(
        missing.contains("hsts.enabled: missing required key"),
        "{missing}"
    );
    let unknown = error(&format!(
        "{listeners}[clusters.a]\nprotocol = \"http\"\nfrontends = [{{ address = \"127.0.0.1:8443\", hostname = \"a.test\", hsts = {{ enabled = true, maxage = 5 }} }}]\n"
    ));
    assert!(unknown.contains("maxage"), "{unknown}");
    let plain = error(&format!(
        "{listeners}[clusters.a]\nprotocol = \"http\"\nfrontends = [{{ address = \"127.0.0.1:8080\", hostname = \"a.test\", hsts = {{ enabled = true }} }}]\n"
    ));
    assert!(plain.contains("hsts"), "{plain}");
    let plain_listener = error(
        "[[listeners]]\nprotocol = \"http\"\naddress = \"127.0.0.1:8080\"\nhsts = { enabled = true }\n",
    );
    assert!(
        plain_listener.contains("listeners[0].hsts"),
        "{plain_listener}"
    );
}
