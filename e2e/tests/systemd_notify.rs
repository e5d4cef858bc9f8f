//! systemd's readiness protocol: with `NOTIFY_SOCKET` set (as systemd does
//! for `Type=notify`), the master sends `READY=1` only once its listeners
//! are bound and served, and `STOPPING=1` when a stop begins.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sozu_e2e::ports::free_v4;
use sozu_e2e::procfs;
use sozu_e2e::sozu::READY_TIMEOUT;
use sozu_e2e::{ClusterConfig, Sozu, SozuConfig, UdpBackend, UdpClient, UdpListener};

/// A socket owned by the test, standing for systemd's.
fn notify_socket(dir: &std::path::Path) -> (UnixDatagram, String) {
    let path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
    (socket, path.to_string_lossy().into_owned())
}

/// The next notification, as its `KEY=VALUE` lines.
fn next_notification(socket: &UnixDatagram, timeout: Duration) -> Vec<String> {
    socket
        .set_read_timeout(Some(timeout))
        .expect("set a read timeout");
    let mut buf = [0u8; 4096];
    let n = socket
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("no notification within {timeout:?}: {e}"));
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .map(str::to_owned)
        .collect()
}

fn serving_with_notify(workers: u32) -> (Sozu, UnixDatagram, UdpBackend, std::net::SocketAddr) {
    let dir = Sozu::temp_dir();
    let (socket, path) = notify_socket(dir.path());
    let backend = UdpBackend::v4("a");
    let frontend = free_v4();
    let mut listener = UdpListener::new(frontend);
    // Short idle timeouts: the soft stop below waits for the flow to end.
    listener.front_timeout = 1;
    listener.back_timeout = 1;
    let cluster = ClusterConfig::new("c", frontend).backend("a", backend.addr());
    let sozu = Sozu::spawn_in_with_env(
        dir,
        SozuConfig::udp(workers, listener, cluster),
        &[("NOTIFY_SOCKET", &path)],
    )
    .expect("spawn the master");
    (sozu, socket, backend, frontend)
}

#[test]
fn ready_comes_once_the_listener_is_bound_and_stopping_when_sigterm_stops() {
    let (sozu, socket, backend, frontend) = serving_with_notify(2);

    // The first notification is READY=1, from the master's pid.
    let ready = next_notification(&socket, READY_TIMEOUT);
    assert!(ready.iter().any(|l| l == "READY=1"), "{ready:?}");
    assert!(
        ready
            .iter()
            .any(|l| *l == format!("MAINPID={}", sozu.master_pid())),
        "{ready:?}"
    );
    // At that moment the listener is bound by the workers and serves: no
    // wait, no retry between READY=1 and these checks.
    let bound = procfs::udp_listener_inodes(frontend);
    assert!(!bound.is_empty(), "READY=1 before {frontend} was bound");
    let client = UdpClient::new(frontend);
    client.expect_echo(b"ready means serving");
    assert_eq!(backend.datagrams(), 1);
    // And every worker is running.
    let workers = sozu.status().expect("status");
    assert_eq!(workers.len(), 2, "{workers:?}");

    // SIGTERM: a soft stop, announced with STOPPING=1.
    kill(Pid::from_raw(sozu.master_pid()), Signal::SIGTERM).expect("SIGTERM the master");
    let stopping = next_notification(&socket, Duration::from_secs(10));
    assert!(stopping.iter().any(|l| l == "STOPPING=1"), "{stopping:?}");
    assert!(
        stopping.iter().any(|l| l.starts_with("STATUS=soft stop")),
        "{stopping:?}"
    );
    let status = sozu
        .wait_master_exit(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("the master did not exit\n{}", sozu.log_tail(30)));
    assert!(status.success(), "{status:?}\n{}", sozu.log_tail(30));
}

#[test]
fn a_hard_shutdown_is_announced_as_stopping() {
    let (sozu, socket, backend, frontend) = serving_with_notify(2);
    let ready = next_notification(&socket, READY_TIMEOUT);
    assert!(ready.iter().any(|l| l == "READY=1"), "{ready:?}");
    // Live flows from several sources, on both workers most likely.
    let clients: Vec<UdpClient> = (0..8).map(|_| UdpClient::new(frontend)).collect();
    for client in &clients {
        client.expect_echo(b"live flow");
    }
    assert_eq!(backend.datagrams(), 8);
    let out = sozu.cli(&["shutdown", "--hard"]);
    assert!(out.success(), "{out:?}");
    let stopping = next_notification(&socket, Duration::from_secs(10));
    assert!(stopping.iter().any(|l| l == "STOPPING=1"), "{stopping:?}");
    assert!(
        stopping.iter().any(|l| l.starts_with("STATUS=hard stop")),
        "{stopping:?}"
    );
    let status = sozu
        .wait_master_exit(Duration::from_secs(20))
        .expect("the master exits after a hard stop");
    assert!(status.success(), "{status:?}");
    // doc/udp.md: each worker answers the hard stop and exits 0; none is
    // killed.
    let log = sozu.log();
    let exits: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("worker exited"))
        .collect();
    assert_eq!(exits.len(), 2, "{log}");
    assert!(exits.iter().all(|l| l.contains("exit code 0")), "{log}");
    assert!(!log.contains("SIGKILL"), "{log}");
}
