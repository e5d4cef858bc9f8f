//! Inputs found by fuzzing (`fuzz/`, see "Fuzzing" in `doc/testing.md`),
//! kept as ordinary tests so the normal suite guards them without nightly.

use std::path::Path;

use sozu_command_lib::config::Config;
use sozu_command_lib::state::ConfigState;

/// Found by the `config_loader` generator: two UDP clusters whose frontends
/// name the same UDP listener. The loader accepts the file; the state
/// refuses the second frontend (a UDP listener maps to one cluster), so the
/// master refuses to start with that error. Whichever layer refuses, the
/// configuration must never build a state and the refusal must name the
/// listener's address.
#[test]
fn two_udp_clusters_on_one_listener_never_build_a_state() {
    let text = r#"
[[listeners]]
protocol = "udp"
address = "127.0.0.1:5300"

[clusters.a]
protocol = "udp"
frontends = [{ address = "127.0.0.1:5300" }]
backends = [{ address = "127.0.0.1:5354" }]

[clusters.b]
protocol = "udp"
frontends = [{ address = "127.0.0.1:5300" }]
backends = [{ address = "127.0.0.1:5355" }]
"#;
    let message = match Config::from_str(text, Path::new("dup.toml")) {
        Err(error) => error.to_string(),
        Ok(config) => ConfigState::from_requests(&config.generate_orders())
            .expect_err("one UDP listener cannot forward to two clusters")
            .to_string(),
    };
    assert!(message.contains("127.0.0.1:5300"), "{message}");
}
