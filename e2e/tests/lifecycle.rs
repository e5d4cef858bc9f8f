//! Soft-stop drain, upgrade under traffic, crash recovery.

use std::time::Duration;

use sozu_command_lib::command::RunState;
use sozu_e2e::ports::free_v4;
use sozu_e2e::procfs;
use sozu_e2e::wait::{poll_until, wait_until};
use sozu_e2e::{
    ClusterConfig, Sozu, SozuConfig, SteadyTraffic, UdpBackend, UdpClient, UdpListener,
};

const PACE: Duration = Duration::from_millis(20);
const PROGRESS: Duration = Duration::from_secs(10);

fn serving(workers: u32, timeouts: u32) -> (Sozu, UdpBackend, std::net::SocketAddr) {
    let backend = UdpBackend::v4("a");
    let frontend = free_v4();
    let mut listener = UdpListener::new(frontend);
    listener.front_timeout = timeouts;
    listener.back_timeout = timeouts;
    let cluster = ClusterConfig::new("c", frontend).backend("a", backend.addr());
    (
        Sozu::start(SozuConfig::udp(workers, listener, cluster)),
        backend,
        frontend,
    )
}

#[test]
fn shutdown_drains_live_flows_refuses_new_sources_then_exits() {
    let (sozu, backend, frontend) = serving(2, 2);
    let pids = sozu.worker_pids();
    let live = SteadyTraffic::start(frontend, "live", Duration::from_millis(50));
    live.wait_more_answers(5, PROGRESS);
    // The worker holding the live flow's upstream socket must stay up; the
    // other one has nothing to drain and may exit at once.
    let upstream = backend
        .received()
        .last()
        .expect("traffic reached the backend")
        .from;
    let owner = procfs::owner_of_udp_port(upstream, &pids).expect("a worker owns the flow");

    // `sozu shutdown` may only answer once everything stopped: run it aside.
    let args = vec![
        "-c".to_owned(),
        sozu.config_path().to_string_lossy().into_owned(),
        "shutdown".to_owned(),
    ];
    let dir = sozu.dir().to_path_buf();
    let shutdown = std::thread::spawn(move || sozu_e2e::sozu::run_cli(&dir, &args));

    let refused = poll_until(Duration::from_secs(10), || {
        let client = UdpClient::new(frontend);
        client.send(b"newcomer");
        client
            .recv_timeout(Duration::from_millis(400))
            .is_none()
            .then_some(())
    });
    assert!(
        refused.is_some(),
        "a new source was still served 10 s after `sozu shutdown`"
    );
    live.wait_more_answers(20, PROGRESS);
    assert!(
        procfs::is_alive(owner),
        "the worker draining the live flow exited"
    );
    let report = live.stop();
    assert!(
        report.lost.is_empty(),
        "the live flow lost {:?}",
        report.lost
    );

    // The flow idles out after 2 s; then workers and master exit.
    let status = sozu
        .wait_master_exit(Duration::from_secs(20))
        .expect("the master did not exit");
    assert!(status.success(), "master exit status {status}");
    for pid in &pids {
        assert!(!procfs::is_alive(*pid), "worker {pid} outlived its master");
    }
    let out = shutdown.join().expect("the shutdown thread");
    assert!(
        out.success(),
        "sozu shutdown: {} {}",
        out.stdout,
        out.stderr
    );
}

/// How a test upgrades.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Upgrade {
    /// `sozu upgrade`: the master, then every worker (any worker it leaves
    /// in place is then replaced with `--worker`).
    Everything,
    /// `sozu upgrade --worker N` for each worker in turn, master untouched.
    WorkerByWorker,
}

/// Upgrades while `traffic` runs across each step; returns the new worker
/// pids.
fn upgrade(sozu: &Sozu, traffic: &SteadyTraffic, how: Upgrade) -> Vec<i32> {
    let old_workers = sozu.status().expect("status");
    let old_pids: Vec<i32> = old_workers.iter().map(|w| w.pid).collect();
    traffic.wait_more_settled(5);
    if how == Upgrade::Everything {
        sozu.cli_ok(&["upgrade"]);
        sozu.wait_ready(Duration::from_secs(20))
            .expect("ready after the upgrade");
        traffic.wait_more_settled(5);
    }
    for worker in &old_workers {
        let still_there = sozu.status().expect("status").iter().any(|w| {
            w.id == worker.id && w.pid == worker.pid && w.run_state == RunState::Running as i32
        });
        if still_there {
            sozu.cli_ok(&["upgrade", "--worker", &worker.id.to_string()]);
            traffic.wait_more_settled(10);
        }
    }
    let new_pids = sozu.wait_new_workers(&old_pids, Duration::from_secs(20));
    traffic.wait_more_settled(10);
    new_pids
}

#[test]
fn upgrade_keeps_the_listener_sockets_and_a_live_flow_loses_nothing() {
    let (sozu, _backend, frontend) = serving(2, 30);
    let before = procfs::udp_listener_inodes(frontend);
    assert_eq!(
        before.len(),
        2,
        "one SO_REUSEPORT socket per worker: {before:?}"
    );
    let master = sozu.master_pid();
    let sticky = SteadyTraffic::start(frontend, "sticky", PACE);
    let new_pids = upgrade(&sozu, &sticky, Upgrade::Everything);
    let report = sticky.stop();

    let after = procfs::udp_listener_inodes(frontend);
    assert_eq!(after, before, "the listener sockets were re-bound");
    for pid in &new_pids {
        assert!(
            !procfs::socket_inodes(*pid).is_disjoint(&before),
            "new worker {pid} does not hold an original listener socket"
        );
    }
    assert!(
        procfs::is_alive(master),
        "the master pid changed: upgrade must exec in place"
    );
    assert!(
        report.lost.is_empty(),
        "the live flow lost {:?} of {} requests",
        report.lost,
        report.sent
    );
}

#[test]
fn worker_upgrades_answer_every_new_source() {
    let (sozu, _backend, frontend) = serving(2, 30);
    // A new source port per request: every datagram opens a flow, as DNS
    // clients do; none may be refused while workers are replaced.
    let fresh = SteadyTraffic::start_fresh_sources(frontend, "fresh", PACE);
    upgrade(&sozu, &fresh, Upgrade::WorkerByWorker);
    let report = fresh.stop();
    // For the failure message: which worker refused them, and why.
    let metrics = sozu.cli(&["metrics", "get", "--workers"]).stdout;
    assert!(
        report.lost.is_empty(),
        "new sources lost {} of {} requests: {:?}\nmetrics per worker:\n{metrics}",
        report.lost.len(),
        report.sent,
        report.lost
    );
}

#[test]
fn sozu_upgrade_alone_replaces_every_worker() {
    // Issue 5 item 6 and doc/cli.md: `sozu upgrade` re-executes the master,
    // then replaces each worker in turn.
    let (sozu, _backend, frontend) = serving(2, 30);
    let old_pids = sozu.worker_pids();
    let before = procfs::udp_listener_inodes(frontend);
    let out = sozu.cli_ok(&["upgrade"]);
    let replaced = poll_until(Duration::from_secs(15), || {
        let running: Vec<i32> = sozu
            .status()
            .ok()?
            .iter()
            .filter(|w| w.run_state == RunState::Running as i32)
            .map(|w| w.pid)
            .collect();
        (running.len() == 2 && running.iter().all(|p| !old_pids.contains(p))).then_some(running)
    });
    assert!(
        replaced.is_some(),
        "15 s after `sozu upgrade` the workers {old_pids:?} are still the RUNNING ones; \
         it answered: {}",
        out.stdout.trim()
    );
    assert_eq!(
        procfs::udp_listener_inodes(frontend),
        before,
        "sockets re-bound"
    );
}

#[test]
fn a_killed_worker_is_restarted_and_serves_with_its_state() {
    let (sozu, backend, frontend) = serving(2, 30);
    let pids = sozu.worker_pids();
    let victim = pids[0];
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill a worker");
    let survivors: Vec<i32> = pids[1..].to_vec();
    let restarted = wait_until(
        "a replacement worker RUNNING",
        Duration::from_secs(10),
        || {
            let workers = sozu.status().ok()?;
            let running: Vec<i32> = workers
                .iter()
                .filter(|w| w.run_state == RunState::Running as i32 && procfs::is_alive(w.pid))
                .map(|w| w.pid)
                .collect();
            let new: Vec<i32> = running
                .iter()
                .copied()
                .filter(|p| !pids.contains(p))
                .collect();
            (running.len() == 2 && new.len() == 1 && survivors.iter().all(|p| running.contains(p)))
                .then(|| new[0])
        },
    );
    // Serving with its state: a flow whose upstream socket belongs to the
    // new worker reached the configured backend.
    wait_until(
        "a flow served by the restarted worker",
        Duration::from_secs(10),
        || {
            let client = UdpClient::new(frontend);
            client.expect_echo(b"after restart");
            let from = backend.received().last()?.from;
            (procfs::owner_of_udp_port(from, &[restarted]) == Some(restarted)).then_some(())
        },
    );
}

#[test]
fn a_frozen_worker_is_reported_not_answering_then_running_again() {
    let backend = UdpBackend::v4("a");
    let frontend = free_v4();
    let cluster = ClusterConfig::new("c", frontend).backend("a", backend.addr());
    let mut config = SozuConfig::udp(2, UdpListener::new(frontend), cluster);
    // The master's heartbeat runs every worker_timeout.
    config.worker_timeout = 1;
    let sozu = Sozu::start(config);
    let frozen = sozu.worker_pids()[0];
    let pid = nix::unistd::Pid::from_raw(frozen);
    let state_of = |pid: i32| {
        sozu.status()
            .ok()?
            .iter()
            .find(|w| w.pid == pid)
            .map(|w| w.run_state)
    };
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP a worker");
    let seen = poll_until(Duration::from_secs(10), || {
        (state_of(frozen) == Some(RunState::NotAnswering as i32)).then_some(())
    });
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).expect("SIGCONT the worker");
    assert!(
        seen.is_some(),
        "a SIGSTOPped worker never showed NOT_ANSWERING"
    );
    wait_until("the worker RUNNING again", Duration::from_secs(10), || {
        (state_of(frozen) == Some(RunState::Running as i32)).then_some(())
    });
    assert_eq!(UdpClient::new(frontend).expect_echo(b"thawed"), "a");
}

#[test]
fn hard_shutdown_closes_live_flows_and_exits_at_once() {
    // 30 s idle timeouts: only a hard stop can end this quickly.
    let (sozu, _backend, frontend) = serving(2, 30);
    let pids = sozu.worker_pids();
    let client = UdpClient::new(frontend);
    client.expect_echo(b"live");
    let out = sozu.cli(&["shutdown", "--hard"]);
    assert!(out.success(), "sozu shutdown --hard: {out:?}");
    let status = sozu
        .wait_master_exit(Duration::from_secs(10))
        .expect("the master still runs 10 s after a hard stop");
    assert!(status.success(), "master exit status {status}");
    wait_until("every worker gone", Duration::from_secs(5), || {
        pids.iter().all(|p| !procfs::is_alive(*p)).then_some(())
    });
    assert!(
        procfs::udp_listener_inodes(frontend).is_empty(),
        "the listener is still bound"
    );
    // Nobody is left on the port: the kernel answers port unreachable,
    // which a connected socket reports as ECONNREFUSED (a positive answer,
    // not a wait a slow proxy could pass).
    drop(client);
    let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    probe.connect(frontend).unwrap();
    probe
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = probe.send(b"anyone?");
    let mut buf = [0u8; 64];
    match probe.recv(&mut buf) {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
        other => panic!("expected port unreachable after the hard stop, got {other:?}"),
    }
}
