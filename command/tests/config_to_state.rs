//! The whole foundation chain on the shipped quick-start configuration:
//! config → orders → state → state file → state.

use std::path::Path;

use sozu_command_lib::config::Config;
use sozu_command_lib::state::ConfigState;

const QUICK_START: &str = include_str!("../../config.toml");

#[test]
fn quick_start_config_survives_orders_state_save_and_load() {
    let config =
        Config::from_str(QUICK_START, Path::new("config.toml")).expect("config.toml loads");
    let orders = config.generate_orders();
    assert!(
        !orders.is_empty(),
        "the quick-start config builds something"
    );

    let state = ConfigState::from_requests(&orders).expect("every generated order is accepted");
    let udp: Vec<_> = state.udp_listeners().map(|(addr, _)| *addr).collect();
    assert_eq!(udp, vec!["127.0.0.1:5353".parse().unwrap()]);
    assert_eq!(state.backends("dns").count(), 2);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.jsonl");
    state.save_to_path(&path).expect("state saves");
    let loaded = ConfigState::load_from_path(&path, 1 << 20).expect("state loads");
    assert_eq!(loaded, state);

    // Rebuilding from the state's own orders gives the same state again.
    let rebuilt = ConfigState::from_requests(&state.generate_requests()).unwrap();
    assert_eq!(rebuilt, state);
}

#[test]
fn config_with_tcp_and_udp_on_one_address_builds_a_state() {
    let text = r#"
[[listeners]]
protocol = "udp"
address = "127.0.0.1:5300"

[[listeners]]
protocol = "tcp"
address = "127.0.0.1:5300"

[clusters.dns-udp]
protocol = "udp"
frontends = [{ address = "127.0.0.1:5300" }]
backends = [{ address = "127.0.0.1:5301" }]

[clusters.dns-tcp]
protocol = "tcp"
frontends = [{ address = "127.0.0.1:5300" }]
backends = [{ address = "127.0.0.1:5301" }]
"#;
    let config = Config::from_str(text, Path::new("inline.toml")).expect("loads");
    let state = ConfigState::from_requests(&config.generate_orders()).expect("accepted");
    let addr = "127.0.0.1:5300".parse().unwrap();
    assert_eq!(
        state.udp_cluster(&addr).map(|c| c.cluster_id.as_str()),
        Some("dns-udp")
    );
    assert_eq!(
        state.tcp_frontend(&addr).map(|f| f.cluster_id.as_str()),
        Some("dns-tcp")
    );
}
