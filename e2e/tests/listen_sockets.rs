//! Binding is part of accepting (issue 16, point 2; doc/architecture.md,
//! "Listening sockets"): the master binds every listening socket before it
//! accepts a listener, so an address in use stops `sozu start` and refuses
//! `listener add` naming the address, and nobody else can join our sockets.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::sys::socket::{
    bind, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn,
};
use nix::unistd::Pid;
use sozu_command_lib::command::RunState;
use sozu_command_lib::state::ConfigState;
use sozu_e2e::ports::{bind_free_v4, free_v4};
use sozu_e2e::procfs;
use sozu_e2e::wait::{poll_until, wait_until};
use sozu_e2e::{ClusterConfig, Sozu, SozuConfig, UdpBackend, UdpClient, UdpListener};

const EXIT_WAIT: Duration = Duration::from_secs(20);
const WAIT: Duration = Duration::from_secs(15);

fn udp_config(workers: u32, frontend: SocketAddr, backend: &UdpBackend) -> SozuConfig {
    SozuConfig::udp(
        workers,
        UdpListener::new(frontend),
        ClusterConfig::new("c", frontend).backend("a", backend.addr()),
    )
}

/// A same-user socket joining `address` with SO_REUSEPORT, as a stranger
/// (or a second proxy) would.
fn reuseport_udp(address: SocketAddr) -> nix::Result<UdpSocket> {
    let fd: OwnedFd = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    setsockopt(&fd, sockopt::ReusePort, &true)?;
    let SocketAddr::V4(v4) = address else {
        panic!("IPv4 only");
    };
    bind(fd.as_raw_fd(), &SockaddrIn::from(v4))?;
    let socket = UdpSocket::from(fd);
    socket
        .set_nonblocking(true)
        .expect("non-blocking stranger socket");
    Ok(socket)
}

/// Starts a master that must fail; returns its log.
fn start_must_fail(config: SozuConfig) -> (Sozu, String) {
    let sozu = Sozu::spawn(config).expect("spawn the master");
    let status = sozu
        .wait_master_exit(EXIT_WAIT)
        .unwrap_or_else(|| panic!("the master did not exit:\n{}", sozu.log_tail(40)));
    assert!(
        !status.success(),
        "the master exited {status} with a listener address in use"
    );
    let log = sozu.log();
    (sozu, log)
}

fn assert_nothing_left(sozu: &Sozu) {
    assert!(
        !sozu.socket_path().exists(),
        "the failed master left its command socket behind"
    );
    let left = poll_until(Duration::from_secs(5), || {
        sozu.live_pids().is_empty().then_some(())
    });
    assert!(
        left.is_some(),
        "processes left behind: {:?}",
        sozu.live_pids()
    );
}

#[test]
fn start_with_a_udp_listener_address_in_use_exits_non_zero_naming_it() {
    let backend = UdpBackend::v4("a");
    let holder = bind_free_v4(UdpSocket::bind);
    let address = holder.local_addr().unwrap();
    let (sozu, log) = start_must_fail(udp_config(2, address, &backend));
    assert!(
        log.contains(&address.to_string()) && log.contains("in use"),
        "the error does not name {address}:\n{log}"
    );
    assert_nothing_left(&sozu);
    // The same configuration starts once the address is free (the failure
    // was the address, nothing else).
    drop(holder);
    drop(sozu);
    let _sozu = Sozu::start(udp_config(2, address, &backend));
    assert_eq!(UdpClient::new(address).expect_echo(b"q"), "a");
}

#[test]
fn start_with_a_tcp_listener_address_in_use_exits_non_zero_naming_it() {
    let holder = bind_free_v4(TcpListener::bind);
    let address = holder.local_addr().unwrap();
    let config = SozuConfig {
        worker_count: 2,
        extra: format!("\n[[listeners]]\nprotocol = \"tcp\"\naddress = \"{address}\"\n"),
        ..SozuConfig::default()
    };
    let (sozu, log) = start_must_fail(config);
    assert!(
        log.contains(&address.to_string()) && log.contains("in use"),
        "the error does not name {address}:\n{log}"
    );
    assert_nothing_left(&sozu);
}

#[test]
fn a_second_master_with_the_same_listener_address_fails_to_start() {
    let backend = UdpBackend::v4("a");
    let frontend = free_v4();
    let first = Sozu::start(udp_config(2, frontend, &backend));
    // Another directory, so another command socket: only the listener
    // address is shared.
    let (second, log) = start_must_fail(udp_config(2, frontend, &backend));
    assert!(
        log.contains(&frontend.to_string()),
        "the error does not name {frontend}:\n{log}"
    );
    assert_nothing_left(&second);
    // The first one still serves every source.
    for _ in 0..20 {
        assert_eq!(UdpClient::new(frontend).expect_echo(b"q"), "a");
    }
    drop(first);
}

/// `sozu <proto> listener add` on an address in use: refused naming it,
/// not listed, not saved; added once the address is free, and released
/// again by `remove`.
fn add_on_an_address_in_use_is_refused(proto: &str, address: SocketAddr, holder: impl Sized) {
    let backend = UdpBackend::v4("a");
    let udp_front = free_v4();
    let sozu = Sozu::start(udp_config(2, udp_front, &backend));
    let addr = address.to_string();
    let out = sozu.cli(&[proto, "listener", "add", "-a", &addr]);
    assert!(
        !out.success(),
        "add on {addr} in use succeeded: {}",
        out.stdout
    );
    let said = format!("{}{}", out.stdout, out.stderr);
    assert!(
        said.contains(&addr) && said.contains("in use"),
        "the refusal does not name {addr}: {said}"
    );
    let listed = sozu.cli_ok(&["listener", "list"]).stdout;
    assert!(!listed.contains(&addr), "{addr} is listed:\n{listed}");
    assert!(
        listed.contains(&udp_front.to_string()),
        "the list shows no listener at all:\n{listed}"
    );
    let saved = sozu.dir().join(format!("{proto}-state.txt"));
    sozu.cli_ok(&["state", "save", "-f", &saved.to_string_lossy()]);
    let state = ConfigState::load_from_path(&saved, 1 << 20).expect("the saved state loads");
    let saved_it = state.udp_listener(&address).is_some()
        || state.tcp_listener(&address).is_some()
        || state.http_listener(&address).is_some();
    assert!(!saved_it, "{addr} is in the saved state");
    assert!(
        state.udp_listener(&udp_front).is_some(),
        "the saved state holds no listener at all"
    );

    // Free: the same order is accepted, listed, and serves.
    drop(holder);
    sozu.cli_ok(&[proto, "listener", "add", "-a", &addr]);
    let listed = sozu.cli_ok(&["listener", "list"]).stdout;
    assert!(listed.contains(&addr), "{addr} is not listed:\n{listed}");
    // Removed: the socket is released (the master closed its copies).
    sozu.cli_ok(&[proto, "listener", "remove", "-a", &addr]);
    let released = poll_until(WAIT, || {
        let free = if proto == "udp" {
            UdpSocket::bind(address).is_ok()
        } else {
            TcpListener::bind(address).is_ok()
        };
        free.then_some(())
    });
    assert!(released.is_some(), "{addr} is still bound after remove");
}

#[test]
fn udp_listener_add_on_an_address_in_use_is_refused_and_not_listed() {
    let holder = bind_free_v4(UdpSocket::bind);
    let address = holder.local_addr().unwrap();
    add_on_an_address_in_use_is_refused("udp", address, holder);
}

#[test]
fn udp_listener_add_on_a_same_user_reuseport_socket_is_refused() {
    // A same-user SO_REUSEPORT socket could co-bind a plain SO_REUSEPORT
    // listener; the master's probe finds it.
    let holder = bind_free_v4(|a| reuseport_udp(a).map_err(std::io::Error::from));
    let address = holder.local_addr().unwrap();
    add_on_an_address_in_use_is_refused("udp", address, holder);
}

#[test]
fn tcp_listener_add_on_an_address_in_use_is_refused_and_not_listed() {
    let holder = bind_free_v4(TcpListener::bind);
    let address = holder.local_addr().unwrap();
    add_on_an_address_in_use_is_refused("tcp", address, holder);
}

#[test]
fn http_listener_add_on_an_address_in_use_is_refused_and_not_listed() {
    let holder = bind_free_v4(TcpListener::bind);
    let address = holder.local_addr().unwrap();
    add_on_an_address_in_use_is_refused("http", address, holder);
}

/// 200 new sources, each must be answered by the proxy.
fn every_source_answered(frontend: SocketAddr, sources: usize) {
    let clients: Vec<UdpClient> = (0..sources).map(|_| UdpClient::new(frontend)).collect();
    for (i, client) in clients.iter().enumerate() {
        client.send(format!("q{i}").as_bytes());
    }
    let mut unanswered = Vec::new();
    for (i, client) in clients.iter().enumerate() {
        // A lost datagram is retried once (UDP on a loaded host); a source
        // the proxy never reads gets no answer either time.
        let answered = client.recv_timeout(Duration::from_secs(2)).is_some() || {
            client.send(format!("q{i}").as_bytes());
            client.recv_timeout(Duration::from_secs(2)).is_some()
        };
        if !answered {
            unanswered.push(client.local_addr());
        }
    }
    assert!(
        unanswered.is_empty(),
        "{} of {sources} sources got no answer: {unanswered:?}",
        unanswered.len()
    );
}

#[test]
fn a_stranger_joining_our_udp_listener_with_so_reuseport_receives_nothing() {
    let backend = UdpBackend::v4("a");
    let frontend = free_v4();
    let sozu = Sozu::start(udp_config(2, frontend, &backend));
    // The kernel lets a same-user SO_REUSEPORT socket join the group...
    let stranger = reuseport_udp(frontend).expect("the stranger joins the group");
    // ...but the group's program never picks it: every source is answered
    // by the proxy (the positive signal), the stranger reads nothing.
    every_source_answered(frontend, 200);
    assert!(backend.datagrams() >= 200, "the backend saw too little");
    let mut buffer = [0u8; 1500];
    let mut stolen = 0;
    while stranger.recv_from(&mut buffer).is_ok() {
        stolen += 1;
    }
    assert_eq!(stolen, 0, "the stranger received {stolen} datagrams");
    drop(sozu);
}

#[test]
fn a_killed_worker_and_an_upgrade_keep_serving_the_same_listener_sockets() {
    let backend = UdpBackend::v4("a");
    let frontend = free_v4();
    let sozu = Sozu::start(udp_config(2, frontend, &backend));
    let before = procfs::udp_listener_inodes(frontend);
    assert_eq!(before.len(), 2, "one socket per worker: {before:?}");
    let stranger = reuseport_udp(frontend).expect("the stranger joins the group");

    // SIGKILL worker 0: its restart adopts the master's socket for slot 0.
    let workers = sozu.status().expect("status");
    let victim = workers.iter().find(|w| w.id == 0).expect("worker 0").pid;
    kill(Pid::from_raw(victim), Signal::SIGKILL).expect("kill worker 0");
    wait_until("worker 0 restarted", WAIT, || {
        sozu.status()
            .ok()?
            .iter()
            .any(|w| w.id == 0 && w.pid != victim && w.run_state == RunState::Running as i32)
            .then_some(())
    });
    sozu.wait_ready(WAIT).expect("ready after the restart");
    every_source_answered(frontend, 100);
    let after_restart = procfs::udp_listener_inodes(frontend);
    assert!(
        after_restart.is_superset(&before) && after_restart.len() == before.len() + 1,
        "the restart re-bound the listener: {before:?} → {after_restart:?} (+1: the stranger)"
    );
    let restarted = sozu
        .status()
        .expect("status")
        .into_iter()
        .find(|w| w.id == 0)
        .expect("worker 0")
        .pid;
    assert!(
        !procfs::socket_inodes(restarted).is_disjoint(&before),
        "the restarted worker holds no original listener socket"
    );

    // `sozu upgrade`: the master re-executes itself, then every worker is
    // replaced; the sockets stay the same.
    let old_pids = sozu.worker_pids();
    sozu.cli_ok(&["upgrade"]);
    let new_pids = sozu.wait_new_workers(&old_pids, Duration::from_secs(20));
    sozu.wait_ready(WAIT).expect("ready after the upgrade");
    every_source_answered(frontend, 100);
    let after_upgrade = procfs::udp_listener_inodes(frontend);
    assert_eq!(
        after_upgrade, after_restart,
        "the upgrade re-bound the listener"
    );
    for pid in &new_pids {
        assert!(
            !procfs::socket_inodes(*pid).is_disjoint(&before),
            "new worker {pid} holds no original listener socket"
        );
    }
    let mut buffer = [0u8; 1500];
    assert!(
        stranger.recv_from(&mut buffer).is_err(),
        "the stranger received a datagram"
    );
    // A listener added after the upgrade is bound by the new master: the
    // address is refused to others.
    let added = free_v4();
    sozu.cli_ok(&["udp", "listener", "add", "-a", &added.to_string()]);
    assert!(
        UdpSocket::bind(added).is_err() && reuseport_udp(added).is_ok(),
        "the listener added after the upgrade is not bound as a group"
    );
}

/// One HTTP/1.1 request on a new connection; the status code, if any
/// answer comes.
fn http_status(address: SocketAddr) -> Option<u16> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&address, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: nowhere\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

#[test]
fn an_http_listener_deactivated_then_activated_serves_its_held_socket_again() {
    let backend = UdpBackend::v4("a");
    let sozu = Sozu::start(udp_config(2, free_v4(), &backend));
    let front = free_v4();
    let addr = front.to_string();
    sozu.cli_ok(&["http", "listener", "add", "-a", &addr]);
    // No route: a 404 from the proxy shows the listener serves.
    assert_eq!(http_status(front), Some(404));
    sozu.cli_ok(&["http", "listener", "deactivate", "-a", &addr]);
    // Still ours while deactivated: nobody else can bind it.
    assert!(TcpListener::bind(front).is_err(), "{addr} was released");
    // Workers re-use the socket the master holds (they bind nothing).
    sozu.cli_ok(&["http", "listener", "activate", "-a", &addr]);
    let served = poll_until(WAIT, || (http_status(front) == Some(404)).then_some(()));
    assert!(served.is_some(), "{addr} is not served after activate");
}

#[test]
fn an_inactive_listener_is_held_and_its_removal_releases_the_port() {
    let backend = UdpBackend::v4("a");
    let sozu = Sozu::start(udp_config(2, free_v4(), &backend));
    for proto in ["udp", "tcp"] {
        let address = free_v4();
        let addr = address.to_string();
        let bindable = || {
            if proto == "udp" {
                UdpSocket::bind(address).is_ok()
            } else {
                TcpListener::bind(address).is_ok()
            }
        };
        sozu.cli_ok(&[proto, "listener", "add", "-a", &addr, "--inactive"]);
        assert!(
            !bindable(),
            "{proto} {addr}: an inactive listener is not held"
        );
        sozu.cli_ok(&[proto, "listener", "remove", "-a", &addr]);
        // Every copy is closed: the master's and the workers' unused ones.
        let released = poll_until(WAIT, || bindable().then_some(()));
        assert!(
            released.is_some(),
            "{proto} {addr} is still bound after remove"
        );
    }
}

#[test]
fn a_reload_adding_a_listener_on_an_address_in_use_applies_nothing() {
    let backend = UdpBackend::v4("a");
    let front = free_v4();
    let config = udp_config(2, front, &backend);
    let sozu = Sozu::start(config.clone());
    let holder = bind_free_v4(UdpSocket::bind);
    let taken = holder.local_addr().unwrap();
    let fresh = free_v4();
    // The new file: two more listeners, one on an address in use.
    let mut edited = config;
    edited.extra = format!(
        "\n[[listeners]]\nprotocol = \"udp\"\naddress = \"{fresh}\"\n\
         \n[[listeners]]\nprotocol = \"udp\"\naddress = \"{taken}\"\n"
    );
    let file = sozu.dir().join("edited.toml");
    std::fs::write(&file, edited.render(sozu.dir())).unwrap();
    let out = sozu.cli(&["reload", "-f", &file.to_string_lossy()]);
    assert!(!out.success(), "the reload succeeded: {}", out.stdout);
    let said = format!("{}{}", out.stdout, out.stderr);
    assert!(said.contains(&taken.to_string()), "not named: {said}");
    // Nothing of the batch applied, nothing bound: the free one too.
    let listed = sozu.cli_ok(&["listener", "list"]).stdout;
    assert!(
        !listed.contains(&taken.to_string()) && !listed.contains(&fresh.to_string()),
        "part of the refused reload is listed:\n{listed}"
    );
    assert!(listed.contains(&front.to_string()), "{listed}");
    assert!(
        UdpSocket::bind(fresh).is_ok(),
        "{fresh} stayed bound after the refused reload"
    );
    assert_eq!(UdpClient::new(front).expect_echo(b"q"), "a");
}
