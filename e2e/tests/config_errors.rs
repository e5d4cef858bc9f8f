//! A configuration that does not say what it means stops `sozu start` with
//! one clear error, and the CLI reports configuration problems once.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use sozu_e2e::binary::sozu_binary;
use sozu_e2e::sozu::run_cli;
use sozu_e2e::wait::poll_until;
use sozu_e2e::{Sozu, SozuConfig};

/// Runs `sozu start -c <file>` in `dir`: it must exit on its own, non-zero.
/// Returns its stdout and stderr.
fn start_fails(dir: &Path, text: &str) -> String {
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    let mut child = Command::new(sozu_binary())
        .arg("start")
        .arg("-c")
        .arg(&path)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sozu start");
    let exited = poll_until(Duration::from_secs(20), || child.try_wait().ok().flatten());
    if exited.is_none() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("sozu start kept running with:\n{text}");
    }
    let out = child.wait_with_output().expect("collect the output");
    assert!(!out.status.success(), "sozu start succeeded with:\n{text}");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn start_refuses_an_empty_file_a_log_level_typo_and_a_junk_saved_state() {
    let dir = Sozu::temp_dir();
    let out = start_fails(dir.path(), "# nothing but a comment\n");
    assert!(out.contains("holds no key"), "{out}");
    assert!(!dir.path().join("sozu.sock").exists());

    let out = start_fails(dir.path(), "worker_count = 1\nlog_level = \"inf\"\n");
    assert!(
        out.contains("log_level") && out.contains("config.toml:2"),
        "{out}"
    );

    let state = dir.path().join("state.json");
    std::fs::write(&state, "this is not a state file\n").unwrap();
    let out = start_fails(
        dir.path(),
        &format!(
            "worker_count = 1\ncommand_socket = \"./sozu.sock\"\nsaved_state = {:?}\n",
            state.display().to_string()
        ),
    );
    assert!(out.contains("cannot load the saved state"), "{out}");
    assert!(out.contains("state.json"), "{out}");
    // Nothing of the refused master stays behind.
    assert!(!dir.path().join("sozu.sock").exists());
}

#[test]
fn a_saved_state_that_loads_starts_the_master() {
    // The positive side of the junk case: a real saved state is served.
    let dir = Sozu::temp_dir();
    let state = dir.path().join("state.json");
    let config = SozuConfig {
        worker_count: 1,
        extra: format!("saved_state = {:?}\n", state.display().to_string()),
        ..SozuConfig::default()
    };
    let first = Sozu::start(config.clone());
    first.cli_ok(&["cluster", "add", "-i", "kept", "--udp"]);
    first.cli_ok(&["state", "save", "-f", &state.display().to_string()]);
    drop(first);
    let second = Sozu::start_in(dir, config);
    let listed = second.cli_ok(&["cluster", "list"]);
    assert!(listed.stdout.contains("cluster kept (udp)"), "{listed:?}");
}

#[test]
fn a_missing_configuration_file_states_its_cause_once() {
    let dir = Sozu::temp_dir();
    let out = run_cli(
        dir.path(),
        &[
            "-c".to_owned(),
            "nonexistent.toml".to_owned(),
            "status".to_owned(),
        ],
    );
    assert_eq!(out.code, 3, "{out:?}");
    assert_eq!(
        out.stderr.matches("No such file or directory").count(),
        1,
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("nonexistent.toml"), "{}", out.stderr);
}

#[test]
fn socket_paths_print_without_dot_components() {
    let dir = Sozu::temp_dir();
    std::fs::write(
        dir.path().join("config.toml"),
        "worker_count = 1\ncommand_socket = \"./run/./sozu.sock\"\n",
    )
    .unwrap();
    // No master: the error names the socket the configuration means.
    let out = run_cli(
        dir.path(),
        &[
            "-c".to_owned(),
            "config.toml".to_owned(),
            "status".to_owned(),
        ],
    );
    assert_eq!(out.code, 3, "{out:?}");
    let expected = dir.path().join("run").join("sozu.sock");
    assert!(
        out.stderr.contains(&expected.display().to_string()),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("/./"), "{}", out.stderr);
}
