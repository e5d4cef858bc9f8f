//! What the master lists is what the workers serve: refused orders leave no
//! trace, worker slots come back, `status` says when the proxy is degraded,
//! `cluster add` never drops knobs silently, `reload --dry-run` shows the
//! diff.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sozu_command_lib::command::request::RequestType;
use sozu_command_lib::command::{ResponseStatus, RunState, UpdateUdpListenerConfig};
use sozu_e2e::ports::free_v4;
use sozu_e2e::sozu::http_frontend_args;
use sozu_e2e::wait::{wait_for, wait_until};
use sozu_e2e::{ClusterConfig, Sozu, SozuConfig, UdpBackend, UdpClient, UdpListener};

const PROGRESS: Duration = Duration::from_secs(20);

/// The degraded-slot test moves the binary its master runs from; tests of
/// this file start their masters one at a time so none picks that copy up.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A UDP proxy with `workers` workers, one listener and cluster `c` with
/// one echo backend.
fn udp_proxy(workers: u32) -> (SozuConfig, UdpBackend, SocketAddr) {
    let backend = UdpBackend::v4("a");
    let frontend = free_v4();
    let cluster = ClusterConfig::new("c", frontend).backend("a", backend.addr());
    (
        SozuConfig::udp(workers, UdpListener::new(frontend), cluster),
        backend,
        frontend,
    )
}

fn assert_fails(out: &sozu_e2e::CliOutput, needle: &str) {
    assert_eq!(
        out.code, 1,
        "stdout: {}\nstderr: {}",
        out.stdout, out.stderr
    );
    assert!(
        out.stderr.contains(needle),
        "stderr should name {needle:?}: {}",
        out.stderr
    );
}

#[test]
fn a_refused_path_rule_leaves_no_trace_and_the_next_upgrade_succeeds() {
    let _serial = serial();
    let (config, _backend, _frontend) = udp_proxy(2);
    let sozu = Sozu::start(config);
    let http = free_v4().to_string();
    sozu.cli_ok(&["http", "listener", "add", "-a", &http]);
    sozu.cli_ok(&["cluster", "add", "-i", "web"]);
    // A positive control: a prefix rule is taken and listed.
    sozu.cli_ok(&http_frontend_args("add", "web", &http, "ok.local", &[]));
    let refused = sozu.cli(&http_frontend_args(
        "add",
        "web",
        &http,
        "localhost",
        &["--path-regex", "("],
    ));
    // `(` does not compile as a regular expression.
    assert_fails(
        &refused,
        "path.value \"(\" is not a usable regular expression",
    );

    let listed = sozu.cli_ok(&["--json", "frontend", "list"]).stdout;
    assert!(listed.contains("ok.local"), "{listed}");
    assert!(
        !listed.contains("localhost"),
        "refused frontend listed: {listed}"
    );
    let saved = sozu.dir().join("saved.state");
    let saved_arg = saved.to_string_lossy().into_owned();
    sozu.cli_ok(&["state", "save", "-f", &saved_arg]);
    let text = std::fs::read_to_string(&saved).expect("the state file");
    assert!(text.contains("ok.local"), "{text}");
    assert!(
        !text.contains("localhost"),
        "refused frontend saved: {text}"
    );

    let before = sozu.worker_pids();
    sozu.cli_ok(&["upgrade"]);
    let after = sozu.wait_new_workers(&before, PROGRESS);
    assert_eq!(after.len(), 2);
}

#[test]
fn a_refused_listener_update_changes_nothing_even_after_a_worker_restart() {
    let _serial = serial();
    let (config, backend, frontend) = udp_proxy(1);
    let sozu = Sozu::start(config);
    let address = frontend.to_string();
    let refused = sozu.cli(&[
        "udp",
        "listener",
        "update",
        "-a",
        &address,
        "--max-rx-datagram-size",
        "65535",
    ]);
    // The CLI knows the range (exit 2, nothing sent)...
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert!(refused.stderr.contains("1..=65507"), "{}", refused.stderr);
    // ...and the master refuses the same order from any other client.
    let answer = sozu
        .request(RequestType::UpdateUdpListener(UpdateUdpListenerConfig {
            address: frontend.into(),
            max_rx_datagram_size: Some(65_535),
            ..Default::default()
        }))
        .expect("an answer");
    assert_eq!(answer.status(), ResponseStatus::Failure, "{answer:?}");
    assert!(
        answer.message.contains("max_rx_datagram_size"),
        "{}",
        answer.message
    );
    let listed = sozu.cli_ok(&["--json", "udp", "listener", "list"]).stdout;
    assert!(!listed.contains("65535"), "{listed}");
    assert!(listed.contains("1500"), "{listed}");
    // The largest value the workers take is taken and listed.
    sozu.cli_ok(&[
        "udp",
        "listener",
        "update",
        "-a",
        &address,
        "--max-rx-datagram-size",
        "65507",
    ]);
    let listed = sozu.cli_ok(&["--json", "udp", "listener", "list"]).stdout;
    assert!(listed.contains("65507"), "{listed}");

    // A restarted worker gets the committed state and serves the listener.
    let before = sozu.worker_pids();
    kill(Pid::from_raw(before[0]), Signal::SIGKILL).expect("kill the worker");
    sozu.wait_new_workers(&before, PROGRESS);
    let served = UdpClient::new(frontend).echo_eventually(b"after restart", PROGRESS);
    assert_eq!(served, backend.name());
}

/// The pid of worker slot 0 once it is RUNNING with a pid not in `old`.
fn running_slot0(sozu: &Sozu, old: &[i32]) -> i32 {
    wait_until("worker 0 RUNNING again", PROGRESS, || {
        let workers = sozu.status().ok()?;
        workers
            .iter()
            .find(|w| w.id == 0 && w.run_state == RunState::Running as i32 && !old.contains(&w.pid))
            .map(|w| w.pid)
    })
}

#[test]
fn a_worker_killed_seven_times_comes_back_and_serves() {
    let _serial = serial();
    let (config, backend, frontend) = udp_proxy(1);
    let sozu = Sozu::start(config);
    let mut killed = Vec::new();
    for _ in 0..7 {
        let pid = running_slot0(&sozu, &killed);
        kill(Pid::from_raw(pid), Signal::SIGKILL).expect("kill worker 0");
        killed.push(pid);
        std::thread::sleep(Duration::from_millis(300));
    }
    // Backoff after seven quick deaths is a few seconds: the slot returns.
    running_slot0(&sozu, &killed);
    sozu.wait_ready(PROGRESS).expect("every worker RUNNING");
    let served = UdpClient::new(frontend).echo_eventually(b"back", PROGRESS);
    assert_eq!(served, backend.name());
    let status = sozu.cli(&["status"]);
    assert!(status.success(), "{}", status.stderr);
}

/// The "next start in N ms" of a down slot in `status`'s error line.
fn next_start_ms(stderr: &str) -> Option<u64> {
    let rest = stderr.split("next start in ").nth(1)?;
    rest.split(' ').next()?.parse().ok()
}

#[test]
fn a_slot_that_cannot_start_is_degraded_until_worker_restart_brings_it_back() {
    let _serial = serial();
    let (mut config, backend, frontend) = udp_proxy(2);
    config.worker_timeout = 10;
    // The master runs from a copy of the binary that the test can take
    // away, as a broken deployment would.
    let dir = Sozu::temp_dir();
    let copy = dir.path().join("sozu-copy");
    std::fs::copy(sozu_e2e::binary::sozu_binary(), &copy).expect("copy the binary");
    std::env::set_var("SOZU_BIN", &copy);
    let spawned = Sozu::spawn_in(dir, config);
    std::env::remove_var("SOZU_BIN");
    let sozu = spawned.expect("spawn sozu");
    sozu.wait_ready(PROGRESS).expect("ready");
    assert!(sozu.cli(&["status"]).success());

    let away = copy.with_extension("away");
    std::fs::rename(&copy, &away).expect("take the binary away");
    let slot0 = running_slot0(&sozu, &[]);
    kill(Pid::from_raw(slot0), Signal::SIGKILL).expect("kill worker 0");
    // Restarts fail; the backoff grows; status says so, non-zero.
    let stderr = wait_until("a long backoff on slot 0", Duration::from_secs(40), || {
        let out = sozu.cli(&["status"]);
        (out.code == 1 && next_start_ms(&out.stderr).is_some_and(|ms| ms >= 4000))
            .then_some(out.stderr)
    });
    assert!(stderr.contains("degraded"), "{stderr}");
    assert!(stderr.contains("worker 0 is down"), "{stderr}");
    // The other worker serves every client: the down slot's share of the
    // sources is steered to it (20 sources: about half hash to slot 0).
    for i in 0..20 {
        let served =
            UdpClient::new(frontend).echo_eventually(format!("half{i}").as_bytes(), PROGRESS);
        assert_eq!(served, backend.name());
    }

    std::fs::rename(&away, &copy).expect("put the binary back");
    let restarted = sozu.cli_ok(&["worker", "restart", "0"]);
    assert!(
        restarted.stdout.contains("worker 0 restarted"),
        "{}",
        restarted.stdout
    );
    let status = sozu.cli(&["status"]);
    assert!(status.success(), "{}", status.stderr);
    sozu.wait_ready(PROGRESS).expect("every worker RUNNING");
}

#[test]
fn worker_restart_of_a_killed_slot_without_automatic_restart() {
    let _serial = serial();
    let (mut config, backend, frontend) = udp_proxy(1);
    config.worker_automatic_restart = false;
    let sozu = Sozu::start(config);
    let pid = running_slot0(&sozu, &[]);
    kill(Pid::from_raw(pid), Signal::SIGKILL).expect("kill worker 0");
    wait_for("status to report the slot down", PROGRESS, || {
        let out = sozu.cli(&["status"]);
        out.code == 1 && out.stderr.contains("worker 0 is down")
    });
    // Nothing serves now: the one worker is gone (its counter: status).
    sozu.cli_ok(&["worker", "restart", "0"]);
    running_slot0(&sozu, &[pid]);
    let served = UdpClient::new(frontend).echo_eventually(b"again", PROGRESS);
    assert_eq!(served, backend.name());
    assert!(sozu.cli(&["status"]).success());
}

#[test]
fn cluster_add_on_an_existing_id_keeps_its_knobs_unless_replace() {
    let _serial = serial();
    let (config, _backend, _frontend) = udp_proxy(1);
    let sozu = Sozu::start(config);
    sozu.cli_ok(&["cluster", "add", "-i", "dns", "--udp", "--responses", "1"]);
    let knobs = |sozu: &Sozu| {
        let out = sozu
            .cli_ok(&["--json", "cluster", "list", "-i", "dns"])
            .stdout;
        out.contains("\"responses\": 1")
    };
    assert!(knobs(&sozu), "the knob is listed after the first add");

    let again = sozu.cli(&["cluster", "add", "-i", "dns"]);
    assert_fails(&again, "already exists");
    assert!(knobs(&sozu), "a refused re-add keeps the knob");

    sozu.cli_ok(&["cluster", "add", "-i", "dns", "--udp", "--replace"]);
    assert!(!knobs(&sozu), "--replace resets the knobs not given");
}

#[test]
fn reload_dry_run_prints_the_diff_and_changes_nothing_then_reload_prints_it() {
    let _serial = serial();
    let (config, backend, frontend) = udp_proxy(1);
    let sozu = Sozu::start(config);
    let extra = free_v4().to_string();
    sozu.cli_ok(&["udp", "listener", "add", "-a", &extra]);
    sozu.cli_ok(&["cluster", "add", "-i", "live", "--udp"]);
    let unchanged = sozu.cli_ok(&["--json", "cluster", "list"]).stdout;

    let preview = sozu.cli_ok(&["reload", "--dry-run"]).stdout;
    assert!(preview.contains("nothing was changed"), "{preview}");
    assert!(preview.contains("- cluster live"), "{preview}");
    assert!(
        preview.contains(&format!("- udp listener {extra}")),
        "{preview}"
    );
    assert!(
        !preview.contains(&frontend.to_string()),
        "the file's own listener is not part of the diff: {preview}"
    );
    assert_eq!(
        sozu.cli_ok(&["--json", "cluster", "list"]).stdout,
        unchanged,
        "a dry run changes nothing"
    );
    let listeners = sozu.cli_ok(&["--json", "udp", "listener", "list"]).stdout;
    assert!(listeners.contains(&extra), "{listeners}");

    let reloaded = sozu.cli_ok(&["reload"]).stdout;
    assert!(reloaded.contains("- cluster live"), "{reloaded}");
    assert!(
        reloaded.contains(&format!("- udp listener {extra}")),
        "{reloaded}"
    );
    let listeners = sozu.cli_ok(&["--json", "udp", "listener", "list"]).stdout;
    assert!(!listeners.contains(&extra), "{listeners}");
    let clusters = sozu.cli_ok(&["--json", "cluster", "list"]).stdout;
    assert!(!clusters.contains("\"live\""), "{clusters}");
    // The file's own objects still serve.
    let served = UdpClient::new(frontend).echo_eventually(b"after reload", PROGRESS);
    assert_eq!(served, backend.name());

    let again = sozu.cli_ok(&["reload", "--dry-run"]).stdout;
    assert!(again.contains("no change"), "{again}");
}

#[test]
fn a_listener_whose_address_is_taken_is_refused_and_not_listed() {
    let _serial = serial();
    let (config, _backend, _frontend) = udp_proxy(2);
    let sozu = Sozu::start(config);
    // Another process holds the address (no SO_REUSEPORT).
    let holder = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind a holder");
    let taken = holder.local_addr().expect("holder address").to_string();
    let free = free_v4().to_string();
    let refused = sozu.cli(&["udp", "listener", "add", "-a", &taken]);
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    // A positive control: a free address is taken and listed.
    sozu.cli_ok(&["udp", "listener", "add", "-a", &free]);
    let listed = sozu.cli_ok(&["--json", "udp", "listener", "list"]).stdout;
    assert!(listed.contains(&free), "{listed}");
    assert!(
        !listed.contains(&taken),
        "refused listener listed: {listed}"
    );
    let saved = sozu.dir().join("saved.state");
    sozu.cli_ok(&["state", "save", "-f", &saved.to_string_lossy()]);
    let text = std::fs::read_to_string(&saved).expect("the state file");
    assert!(!text.contains(&taken), "{text}");
    drop(holder);
}
