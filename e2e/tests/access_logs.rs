//! Access logs through the real binary (issue 18, point 2):
//! `access_logs_target` honoured for UDP, TCP and HTTP, and
//! `access_logs_format = "json"` writing one JSON object per record with the
//! fixed field names of `doc/metrics.md`.

use std::net::{Shutdown, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use sozu_e2e::ports::free_v4;
use sozu_e2e::stream::{
    http_get, tcp_greeting, tcp_http_config, NamedHttpBackend, NamedTcpBackend, StreamBackend,
};
use sozu_e2e::wait::wait_until;
use sozu_e2e::{ClusterConfig, Sozu, SozuConfig, UdpBackend, UdpClient, UdpListener};

const WAIT: Duration = Duration::from_secs(15);

struct Setup {
    sozu: Sozu,
    log: PathBuf,
    udp: SocketAddr,
    tcp: SocketAddr,
    http: SocketAddr,
    backends: (UdpBackend, NamedTcpBackend, NamedHttpBackend),
}

/// A master with one listener per protocol, access records written to a
/// file in `format`.
fn start(format: &str) -> Setup {
    let dir = Sozu::temp_dir();
    let log = dir.path().join("access.log");
    let udp_backend = UdpBackend::v4("dns");
    let tcp_backend = NamedTcpBackend::start("echo");
    let http_backend = NamedHttpBackend::start("web");
    let (udp, tcp, http) = (free_v4(), free_v4(), free_v4());
    let mut cluster = ClusterConfig::new("dns", udp).backend("dns-1", udp_backend.addr());
    // One answer closes the flow, so its record is written at once.
    cluster.responses = 1;
    let mut config = SozuConfig::udp(1, UdpListener::new(udp), cluster);
    config.extra = format!(
        "access_logs_target = \"file://{}\"\naccess_logs_format = \"{format}\"\n{}",
        log.display(),
        tcp_http_config(
            tcp,
            http,
            &[StreamBackend::new("echo-1", tcp_backend.addr())],
            &[StreamBackend::new("web-1", http_backend.addr())],
        )
    );
    let sozu = Sozu::start_in(dir, config);
    Setup {
        sozu,
        log,
        udp,
        tcp,
        http,
        backends: (udp_backend, tcp_backend, http_backend),
    }
}

/// Every line of the access log, each parsed as JSON (a line that is not
/// JSON fails the test).
fn json_records(log: &PathBuf) -> Vec<Value> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("access log line is not JSON ({e}): {line:?}"))
        })
        .collect()
}

fn wait_record(log: &PathBuf, protocol: &str) -> Value {
    wait_until(&format!("a {protocol} access record"), WAIT, || {
        json_records(log)
            .into_iter()
            .find(|r| r["protocol"] == protocol)
    })
}

fn common_fields(record: &Value, listener: SocketAddr, cluster: &str, backend: &str) {
    assert!(
        record["time"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{record}"
    );
    assert!(
        record["process"]
            .as_str()
            .is_some_and(|p| p.starts_with("worker")),
        "{record}"
    );
    assert_eq!(record["listener"], listener.to_string(), "{record}");
    assert_eq!(record["cluster"], cluster, "{record}");
    assert_eq!(record["backend_id"], backend, "{record}");
    assert!(
        record["client"]
            .as_str()
            .is_some_and(|c| c.starts_with("127.0.0.1:")),
        "{record}"
    );
    assert!(record["duration_ms"].is_u64(), "{record}");
}

#[test]
fn udp_flow_record_is_one_json_object() {
    let s = start("json");
    let client = UdpClient::new(s.udp);
    assert_eq!(client.expect_echo(b"query"), "dns");
    let record = wait_record(&s.log, "udp");
    common_fields(&record, s.udp, "dns", "dns-1");
    assert_eq!(record["client"], client.local_addr().to_string());
    assert_eq!(record["backend_addr"], s.backends.0.addr().to_string());
    assert_eq!(record["datagrams_in"], 1, "{record}");
    assert_eq!(record["datagrams_out"], 1, "{record}");
    assert_eq!(record["bytes_in"], 5, "{record}");
    assert_eq!(record["reason"], "responses_reached", "{record}");
    assert_eq!(record["message"], "flow closed", "{record}");
    // No tags configured: null, not "-".
    assert!(record["tags"].is_null(), "{record}");
}

#[test]
fn tcp_session_record_is_one_json_object() {
    let s = start("json");
    let (stream, greeting) = tcp_greeting(s.tcp).expect("a TCP session");
    assert_eq!(greeting, "echo");
    let _ = stream.shutdown(Shutdown::Both);
    drop(stream);
    let record = wait_record(&s.log, "tcp");
    common_fields(&record, s.tcp, "echo", "echo-1");
    assert_eq!(record["backend_addr"], s.backends.1.addr().to_string());
    assert!(record["connect_ms"].is_u64(), "{record}");
    assert!(
        record["bytes_out"].as_u64().is_some_and(|b| b >= 5),
        "{record}"
    );
    assert!(record["reason"].is_string(), "{record}");
    assert_eq!(record["message"], "session closed", "{record}");
}

#[test]
fn http_request_record_is_one_json_object() {
    let s = start("json");
    let (status, body) = http_get(s.http, "example.com", "/hello?x=1").expect("an answer");
    assert_eq!((status, body.as_str()), (200, "backend=web"));
    let record = wait_record(&s.log, "http");
    common_fields(&record, s.http, "web", "web-1");
    assert_eq!(record["backend_addr"], s.backends.2.addr().to_string());
    assert_eq!(record["method"], "GET", "{record}");
    assert_eq!(record["host"], "example.com", "{record}");
    assert_eq!(record["path"], "/hello?x=1", "{record}");
    assert_eq!(record["status"], 200, "{record}");
    assert_eq!(record["outcome"], "backend", "{record}");
    assert_eq!(record["message"], "request", "{record}");
}

#[test]
fn ascii_format_writes_plain_lines_to_the_target() {
    let s = start("ascii");
    assert_eq!(UdpClient::new(s.udp).expect_echo(b"query"), "dns");
    let line = wait_until("a UDP access line", WAIT, || {
        std::fs::read_to_string(&s.log)
            .unwrap_or_default()
            .lines()
            .find(|l| l.contains("protocol=\"udp\"") || l.contains("protocol=udp"))
            .map(str::to_owned)
    });
    assert!(serde_json::from_str::<Value>(&line).is_err(), "{line}");
    assert!(
        line.contains("reason=\"responses_reached\"") || line.contains("reason=responses_reached"),
        "{line}"
    );
    // The access record went to its target, not to the main log.
    assert!(
        !s.sozu.log().contains("responses_reached"),
        "{}",
        s.sozu.log()
    );
}
