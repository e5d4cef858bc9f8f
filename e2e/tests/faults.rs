//! Faults an operator fears, each against the real binary: a backend that
//! vanishes (ICMP port unreachable → ECONNREFUSED), a black-holed backend,
//! command clients that connect and say nothing / half a frame / open a
//! thousand connections, a worker SIGKILLed in the middle of traffic, and a
//! state file whose directory cannot be written.
//!
//! The bare "killed worker is restarted" case is `lifecycle.rs`; here the
//! kill lands while a client is sending and after a runtime change.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use prost::Message;
use sozu_command_lib::command::{request::RequestType, Request, Response, ResponseStatus, Status};
use sozu_e2e::ports::free_v4;
use sozu_e2e::procfs;
use sozu_e2e::udp::parse_reply;
use sozu_e2e::wait::{poll_until, wait_for};
use sozu_e2e::{
    ClusterConfig, HealthConfig, Sozu, SozuConfig, SteadyTraffic, UdpBackend, UdpClient,
    UdpListener,
};

/// Bound on any one wait for the proxy to react.
const REACT: Duration = Duration::from_secs(15);

/// Resident set size of `pid` in KiB, from `/proc/<pid>/status`.
fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS for pid {pid}"))
}

#[test]
fn a_vanished_backend_has_its_flows_aborted_and_gets_no_new_ones() {
    let a = UdpBackend::start("a", sozu_e2e::ports::V4, Some("ping"));
    let b = UdpBackend::start("b", sozu_e2e::ports::V4, Some("ping"));
    let frontend = free_v4();
    let mut cluster = ClusterConfig::new("c", frontend)
        .backend("a", a.addr())
        .backend("b", b.addr());
    // Passive failures (ECONNREFUSED) count toward `fall` next to probes.
    cluster.health = Some(HealthConfig::fast_udp_probe("ping"));
    let sozu = Sozu::start(SozuConfig::udp(1, UdpListener::new(frontend), cluster));

    // Round robin: among a few sources, some land on each backend.
    let clients: Vec<UdpClient> = (0..4).map(|_| UdpClient::new(frontend)).collect();
    let on_a: Vec<&UdpClient> = clients
        .iter()
        .filter(|c| c.echo_eventually(b"hello", REACT) == "a")
        .collect();
    assert!(!on_a.is_empty(), "round robin put no flow on a");
    let created = sozu.metrics().proxy_or_zero("udp.flows.created");

    // The backend process goes away: its port now answers ICMP unreachable.
    drop(a);
    for client in &on_a {
        client.send(b"into a closed port");
    }
    // Each of its flows is aborted on the refusal, and counted.
    let m = sozu.wait_metrics("the refused flows aborted", REACT, |m| {
        m.proxy_or_zero("udp.backend.refused") >= on_a.len() as i64
    });
    assert!(m.proxy_or_zero("udp.flows.evicted") >= on_a.len() as i64);
    wait_for(
        "access lines with close reason backend_refused",
        REACT,
        || sozu.log().matches("reason=\"backend_refused\"").count() >= on_a.len(),
    );
    // Once marked down, it gets no new flow: every new source lands on b.
    let down = poll_until(REACT, || {
        let reply = UdpClient::new(frontend).request(b"probe-for-down")?;
        (parse_reply(&reply).0 == "b").then_some(())
    });
    assert!(down.is_some(), "no flow reached b after a vanished");
    sozu.wait_metrics("a marked down", REACT, |m| {
        m.backend("c", "a", "udp.backend.up") == Some(0)
    });
    for i in 0..20 {
        let backend = UdpClient::new(frontend).expect_echo(format!("new-{i}").as_bytes());
        assert_eq!(backend, "b", "a new flow went to the vanished backend");
    }
    for client in &on_a {
        assert_eq!(client.echo_eventually(b"again", REACT), "b");
    }
    assert!(sozu.metrics().proxy_or_zero("udp.flows.created") > created);
}

#[test]
fn without_health_checks_a_vanished_backend_is_suspect_and_gets_no_new_flows() {
    let a = UdpBackend::v4("a");
    let b = UdpBackend::v4("b");
    let (sozu, frontend) = Sozu::start_udp(1, &[&a, &b]);

    // Round robin alternates: the first refusal makes `a` suspect.
    drop(a);
    let refused = poll_until(REACT, || {
        UdpClient::new(frontend).send(b"maybe to a");
        (sozu.metrics().proxy_or_zero("udp.backend.refused") >= 1).then_some(())
    });
    assert!(
        refused.is_some(),
        "no flow was refused by the vanished backend"
    );
    // While suspect (10 s cooldown) every new source lands on b at once.
    for i in 0..20 {
        let backend = UdpClient::new(frontend).expect_echo(format!("new-{i}").as_bytes());
        assert_eq!(backend, "b", "a new flow went to the suspect backend");
    }
}

#[test]
fn flows_to_a_black_holed_backend_are_reaped_at_the_idle_timeout() {
    let hole = UdpBackend::v4("hole");
    hole.set_silent(true);
    let frontend = free_v4();
    let mut listener = UdpListener::new(frontend);
    listener.front_timeout = 2;
    listener.back_timeout = 2;
    let cluster = ClusterConfig::new("c", frontend).backend("hole", hole.addr());
    let sozu = Sozu::start(SozuConfig::udp(1, listener, cluster));
    let worker = sozu.worker_pids()[0];
    let fds_before = procfs::fd_count(worker);

    let clients: Vec<UdpClient> = (0..20).map(|_| UdpClient::new(frontend)).collect();
    for client in &clients {
        for n in 0..3 {
            client.send(format!("into the void {n}").as_bytes());
        }
    }
    hole.wait_datagrams(60, REACT);
    let live = sozu.wait_metrics("20 live flows", REACT, |m| {
        m.proxy_or_zero("udp.active_flows") == 20
    });
    assert_eq!(live.proxy_or_zero("udp.flows.created"), 20);
    assert!(
        procfs::fd_count(worker) >= fds_before + 20,
        "one upstream fd per flow"
    );

    // No reply ever comes; after 2 s without datagrams every flow is reaped
    // and its upstream socket closed.
    let reaped = sozu.wait_metrics("the flows reaped", REACT, |m| {
        m.proxy_or_zero("udp.active_flows") == 0
    });
    assert_eq!(reaped.proxy_or_zero("udp.flows.evicted"), 20);
    wait_for("the upstream fds closed", REACT, || {
        procfs::fd_count(worker) <= fds_before
    });
    assert!(
        sozu.log().contains("idle_timeout"),
        "the close reason is logged"
    );
    // Nothing ever went back to a client (the counter, not a wait).
    assert_eq!(reaped.proxy_or_zero("udp.datagrams.out"), 0);
    assert_eq!(reaped.proxy_or_zero("udp.datagrams.in"), 60);
    // The reaped flow is really gone: the same client's next datagram opens
    // a new flow and reaches the backend.
    clients[0].send(b"after the reaping");
    let again = sozu.wait_metrics("a new flow for the same client", REACT, |m| {
        m.proxy_or_zero("udp.flows.created") == 21 && m.proxy_or_zero("udp.active_flows") == 1
    });
    assert_eq!(again.proxy_or_zero("udp.flows.evicted"), 20);
    let received = hole.wait_datagrams(61, REACT);
    assert_eq!(
        received.last().map(|r| r.payload.as_slice()),
        Some(&b"after the reaping"[..])
    );
}

/// A status order answered on a fresh connection, bounded.
fn status_answers(sozu: &Sozu) -> bool {
    sozu.status().is_ok()
}

/// Sends a `status` order on a raw stream and returns the first final
/// answer. A refused client may be closed before the order is read, so a
/// failed write still reads what the master sent.
fn status_on(stream: &mut UnixStream) -> Response {
    let request = Request {
        request_type: Some(RequestType::Status(Status {})),
    };
    let body = request.encode_to_vec();
    let mut frame = ((body.len() + 8) as u64).to_le_bytes().to_vec();
    frame.extend_from_slice(&body);
    let _ = stream.write_all(&frame);
    loop {
        let answer = unsolicited_answer(stream);
        if answer.status != ResponseStatus::Processing as i32 {
            return answer;
        }
    }
}

/// The first answer the master sends on `stream` without being asked (a
/// refusal at accept), within [`REACT`].
fn unsolicited_answer(stream: &mut UnixStream) -> Response {
    stream.set_read_timeout(Some(REACT)).unwrap();
    let mut header = [0u8; 8];
    stream
        .read_exact(&mut header)
        .expect("an answer frame header");
    let len = u64::from_le_bytes(header) as usize;
    assert!((8..1 << 20).contains(&len), "answer frame length {len}");
    let mut body = vec![0u8; len - 8];
    stream.read_exact(&mut body).expect("the answer body");
    Response::decode(body.as_slice()).expect("a Response")
}

#[test]
fn silent_half_frame_and_a_thousand_command_clients_leave_the_master_serving() {
    let backend = UdpBackend::v4("a");
    let frontend = free_v4();
    let cluster = ClusterConfig::new("c", frontend).backend("a", backend.addr());
    let sozu = Sozu::start(SozuConfig::udp(1, UdpListener::new(frontend), cluster));
    let master = sozu.master_pid();
    let rss_before = rss_kib(master);

    // Connects and says nothing.
    let _silent = UnixStream::connect(sozu.socket_path()).unwrap();
    // Sends a header announcing 1,000 bytes, then 10 of them, and stalls.
    let mut half = UnixStream::connect(sozu.socket_path()).unwrap();
    half.write_all(&1000u64.to_le_bytes()).unwrap();
    half.write_all(&[0u8; 10]).unwrap();
    assert!(
        status_answers(&sozu),
        "served beside a silent and a half client"
    );

    // A thousand more connections, all open at once and silent.
    let crowd: Vec<UnixStream> = (0..1000)
        .filter_map(|_| UnixStream::connect(sozu.socket_path()).ok())
        .collect();
    assert!(
        crowd.len() >= 900,
        "only {} connections were accepted",
        crowd.len()
    );
    // Past max_command_clients (64) the master answers FAILURE and closes:
    // the fds and memory it keeps stay bounded.
    let fds = poll_until(REACT, || {
        let n = procfs::fd_count(master);
        (n < 200).then_some(n)
    });
    assert!(
        fds.is_some(),
        "the master holds {} fds",
        procfs::fd_count(master)
    );
    let rss_crowded = rss_kib(master);
    assert!(
        rss_crowded < rss_before + 64 * 1024,
        "master RSS grew from {rss_before} KiB to {rss_crowded} KiB"
    );
    // A newcomer while the slots are held is answered at once, never left
    // hanging: refused with a clear message while every holder is recent,
    // then served once a silent holder has been idle long enough to lose its
    // slot (doc/security.md).
    let served = poll_until(REACT, || {
        let mut newcomer = UnixStream::connect(sozu.socket_path()).ok()?;
        let answer = status_on(&mut newcomer);
        if answer.status == ResponseStatus::Failure as i32 {
            assert!(answer.message.contains("max_command_clients"), "{answer:?}");
            return None;
        }
        Some(answer)
    });
    let served = served.expect("an idle client's slot is reclaimed for a newcomer");
    assert_eq!(served.status, ResponseStatus::Ok as i32, "{served:?}");
    // The UDP data path never noticed.
    UdpClient::new(frontend).expect_echo(b"still proxying");

    drop(crowd);
    drop(half);
    assert!(
        poll_until(REACT, || status_answers(&sozu).then_some(())).is_some(),
        "not served once the crowd is gone"
    );
    assert!(sozu.master_exit().is_none(), "the master is alive");
    assert!(
        rss_kib(master) < rss_before + 64 * 1024,
        "master RSS after the crowd"
    );
}

#[test]
fn a_worker_killed_mid_traffic_comes_back_with_the_current_state() {
    let a = UdpBackend::v4("a");
    let b = UdpBackend::v4("b");
    let (sozu, frontend) = Sozu::start_udp(1, &[&a]);
    // A runtime change the restarted worker must know about.
    sozu.backend_add("c", "b", &b.addr().to_string());

    // One long flow from one source, as a game or VoIP client would keep.
    let traffic = SteadyTraffic::start(frontend, "kill", Duration::from_millis(5));
    traffic.wait_more_answers(50, REACT);
    let old = sozu.worker_pids();
    kill(Pid::from_raw(old[0]), Signal::SIGKILL).unwrap();
    let new = sozu.wait_new_workers(&old, REACT);
    assert_ne!(new, old);
    // The same source keeps being answered, through the new worker.
    traffic.wait_more_answers(100, REACT);
    let report = traffic.stop();
    assert!(report.answered >= 150, "{report:?}");

    // The restarted worker got the backend added at runtime: new sources
    // land on both backends.
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..20 {
        let reply = UdpClient::new(frontend)
            .request(format!("after-{i}").as_bytes())
            .expect("a reply after the restart");
        seen.insert(parse_reply(&reply).0);
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        vec!["a".to_owned(), "b".to_owned()],
        "the restarted worker lost the runtime backend"
    );
}

#[test]
fn saving_the_state_under_an_unwritable_directory_answers_an_error() {
    let backend = UdpBackend::v4("a");
    let frontend = free_v4();
    let cluster = ClusterConfig::new("c", frontend).backend("a", backend.addr());
    let sozu = Sozu::start(SozuConfig::udp(1, UdpListener::new(frontend), cluster));
    // Tests run as root, for whom a 0500 directory is still writable; a path
    // whose parent is a regular file cannot be created by anyone (ENOTDIR).
    let not_a_dir = sozu.dir().join("regular-file");
    std::fs::write(&not_a_dir, b"not a directory").unwrap();
    let target = not_a_dir.join("state.jsonl");

    let out = sozu.cli(&["state", "save", "-f", &target.to_string_lossy()]);
    assert!(
        !out.success(),
        "state save into {} succeeded",
        target.display()
    );
    let said = format!("{}{}", out.stdout, out.stderr);
    assert!(
        said.contains("state.jsonl"),
        "the error names the file: {said}"
    );
    assert_eq!(std::fs::read(&not_a_dir).unwrap(), b"not a directory");

    // Nothing crashed: the master answers and the worker still proxies, and
    // a save to a good path works.
    assert!(sozu.master_exit().is_none());
    UdpClient::new(frontend).expect_echo(b"still proxying");
    let good = sozu.dir().join("state.jsonl");
    sozu.cli_ok(&["state", "save", "-f", &good.to_string_lossy()]);
    assert!(std::fs::metadata(&good).unwrap().len() > 0);
}

#[test]
fn a_state_file_over_max_state_file_size_is_refused_before_parsing() {
    let backend = UdpBackend::v4("a");
    let frontend = free_v4();
    let cluster = ClusterConfig::new("c", frontend).backend("a", backend.addr());
    let mut config = SozuConfig::udp(1, UdpListener::new(frontend), cluster);
    config.extra = "max_state_file_size = 4096\n".to_owned();
    let sozu = Sozu::start(config);
    // Blank lines are valid (skipped): only the size can refuse these files.
    let at_limit = sozu.dir().join("at-limit.jsonl");
    std::fs::write(&at_limit, vec![b'\n'; 4096]).unwrap();
    let over = sozu.dir().join("over.jsonl");
    std::fs::write(&over, vec![b'\n'; 4097]).unwrap();

    let refused = sozu.cli(&["state", "load", "-f", &over.to_string_lossy()]);
    assert!(!refused.success(), "a 4097-byte state file was loaded");
    let said = format!("{}{}", refused.stdout, refused.stderr);
    assert!(said.contains("4096"), "the refusal names the limit: {said}");
    sozu.cli_ok(&["state", "load", "-f", &at_limit.to_string_lossy()]);
    UdpClient::new(frontend).expect_echo(b"still proxying");
}
