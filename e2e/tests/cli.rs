//! The CLI against a real master: `--json` parses, failures exit non-zero
//! with the server's message, and a configuration built live serves traffic.

use std::time::Duration;

use sozu_command_lib::command::RunState;
use sozu_e2e::ports::free_v4;
use sozu_e2e::{ClusterConfig, Sozu, SozuConfig, UdpBackend, UdpClient, UdpListener};

fn start() -> (Sozu, UdpBackend, std::net::SocketAddr) {
    let backend = UdpBackend::v4("a");
    let frontend = free_v4();
    let cluster = ClusterConfig::new("c", frontend).backend("a", backend.addr());
    (
        Sozu::start(SozuConfig::udp(2, UdpListener::new(frontend), cluster)),
        backend,
        frontend,
    )
}

#[test]
fn json_answers_parse_and_describe_the_running_state() {
    let (sozu, backend, frontend) = start();
    let status = sozu.cli_ok(&["--json", "status"]).json();
    assert_eq!(status["status"], "OK");
    let workers = status["content"]["workers"]["vec"]
        .as_array()
        .expect("workers")
        .clone();
    assert_eq!(workers.len(), 2);
    let pids = sozu.worker_pids();
    for w in &workers {
        assert_eq!(w["run_state"], RunState::Running.as_str_name(), "{w}");
        assert!(pids.contains(&(w["pid"].as_i64().unwrap() as i32)));
    }

    // `--socket` instead of `-c` reaches the same master.
    let by_socket = sozu_e2e::sozu::run_cli(
        sozu.dir(),
        &[
            "--socket".to_owned(),
            sozu.socket_path().to_string_lossy().into_owned(),
            "--json".to_owned(),
            "status".to_owned(),
        ],
    );
    assert!(by_socket.success(), "{by_socket:?}");
    assert_eq!(by_socket.json()["content"], status["content"]);

    let clusters = sozu.cli_ok(&["--json", "cluster", "list"]).json();
    let text = clusters.to_string();
    assert!(text.contains("\"c\""), "cluster c missing: {text}");
    assert!(
        text.contains(&backend.addr().port().to_string()) || text.contains("\"a\""),
        "{text}"
    );

    let listeners = sozu.cli_ok(&["--json", "udp", "listener", "list"]).json();
    assert_eq!(listeners["status"], "OK");
    // Addresses print as "ip:port" strings, not the wire structure.
    let udp = &listeners["content"]["listeners_list"]["udp_listeners"][frontend.to_string()];
    assert_eq!(udp["address"], frontend.to_string(), "{listeners}");

    UdpClient::new(frontend).expect_echo(b"count me");
    let metrics = sozu.cli_ok(&["--json", "metrics", "get"]).json();
    assert_eq!(metrics["status"], "OK");
    assert!(metrics["content"]["metrics"].is_object(), "{metrics}");
}

#[test]
fn a_refused_order_exits_non_zero_with_the_servers_message() {
    let (sozu, _backend, _frontend) = start();
    let out = sozu.cli(&["cluster", "remove", "-i", "no-such-cluster"]);
    assert_ne!(
        out.code, 0,
        "removing an unknown cluster succeeded: {}",
        out.stdout
    );
    assert!(
        out.stderr.contains("no-such-cluster"),
        "stderr does not name the cluster: {:?}",
        out.stderr
    );

    let out = sozu.cli(&[
        "--json",
        "backend",
        "remove",
        "-i",
        "c",
        "--backend-id",
        "ghost",
        "-a",
        "127.0.0.1:9",
    ]);
    assert_ne!(out.code, 0);
    let json = out.json();
    assert_eq!(json["status"], "FAILURE");
    assert!(!json["message"].as_str().unwrap_or("").is_empty());

    let out = sozu.cli(&["udp", "listener", "add", "-a", "not-an-address"]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("not-an-address"), "{:?}", out.stderr);
    // The master is still fine.
    assert_eq!(sozu.worker_pids().len(), 2);
}

#[test]
fn a_configuration_built_live_with_the_cli_serves_traffic() {
    let (sozu, _a, _frontend) = start();
    let backend = UdpBackend::v4("live");
    let frontend = free_v4();
    let f = frontend.to_string();
    let b = backend.addr().to_string();
    sozu.cli_ok(&["udp", "listener", "add", "-a", &f, "--front-timeout", "10"]);
    sozu.cli_ok(&["cluster", "add", "-i", "live", "--udp", "--responses", "1"]);
    sozu.cli_ok(&["udp", "frontend", "add", "-i", "live", "-a", &f]);
    sozu.backend_add("live", "live-1", &b);
    let client = UdpClient::new(frontend);
    assert_eq!(
        client.echo_eventually(b"hello live", Duration::from_secs(5)),
        "live"
    );
    sozu.wait_metrics("the live cluster counted", Duration::from_secs(10), |m| {
        m.cluster("live", "udp.flows.created").unwrap_or(0) >= 1
    });
    // Sōzu's own spelling works too.
    let out = sozu.cli_ok(&["listener", "udp", "remove", "-a", &f]);
    assert!(out.success());
    assert!(
        sozu_e2e::procfs::udp_listener_inodes(frontend).is_empty(),
        "remove left the socket bound"
    );
}

#[test]
fn state_saved_from_one_master_serves_traffic_when_loaded_into_another() {
    let (first, backend, frontend) = start();
    let state = first.dir().join("state.json");
    first.cli_ok(&["state", "save", "-f", &state.to_string_lossy()]);
    let saved = std::fs::read(&state).expect("the state file was written");
    // Dropping the first master removes its directory, state file included.
    drop(first);
    // The listener port is free again once the first master is gone.
    let second = Sozu::start(SozuConfig {
        worker_count: 2,
        ..SozuConfig::default()
    });
    let copy = second.dir().join("state.json");
    std::fs::write(&copy, saved).expect("write the state file");
    second.cli_ok(&["state", "load", "-f", &copy.to_string_lossy()]);
    let client = UdpClient::new(frontend);
    assert_eq!(
        client.echo_eventually(b"restored", Duration::from_secs(5)),
        backend.name()
    );
}

#[test]
fn reload_applies_the_changed_configuration_file() {
    let a = UdpBackend::v4("a");
    let b = UdpBackend::v4("b");
    let (sozu, frontend) = Sozu::start_udp(2, &[&a]);
    assert_eq!(UdpClient::new(frontend).expect_echo(b"before"), "a");
    // The same file with backend a replaced by backend b.
    let mut changed = sozu.config().clone();
    changed.clusters[0].backends = ClusterConfig::new("c", frontend)
        .backend("b", b.addr())
        .backends;
    std::fs::write(sozu.config_path(), changed.render(sozu.dir())).expect("rewrite config.toml");
    sozu.cli_ok(&["reload"]);
    for _ in 0..4 {
        assert_eq!(UdpClient::new(frontend).expect_echo(b"after"), "b");
    }
}
