//! Live UDP flows across `sozu upgrade` (issue 14 point 1): the old worker
//! hands every flow's table entry and upstream socket to the new one, so a
//! flow keeps its backend and its upstream source address and port, and no
//! datagram sent before, during or after the upgrade is lost or answered
//! twice. Also `--main-only` (workers untouched) and a handover the new
//! worker partly refuses (counted, those clients start afresh).
//!
//! Each flow is one client socket; traffic goes in windows of a few
//! datagrams in flight (what the kernel buffers while the listener is not
//! read during the handover), every reply awaited with a bounded wait.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sozu_e2e::ports::free_v4;
use sozu_e2e::procfs;
use sozu_e2e::udp::parse_reply;
use sozu_e2e::wait::wait_for;
use sozu_e2e::{ClusterConfig, Sozu, SozuConfig, UdpBackend, UdpListener};

/// Bound on one reply: covers a whole worker replacement on a loaded
/// 2-core machine (the datagram waits in the kernel meanwhile).
const REPLY: Duration = Duration::from_secs(20);
/// Datagrams in flight at once (well under what a listener socket buffers).
const WINDOW: usize = 32;
const REACT: Duration = Duration::from_secs(30);

/// Lets this test process open one socket per flow.
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit / setrlimit on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

struct Flows {
    sockets: Vec<UdpSocket>,
}

impl Flows {
    fn open(n: usize) -> Flows {
        raise_fd_limit();
        let sockets = (0..n)
            .map(|_| {
                let s = UdpSocket::bind("127.0.0.1:0").expect("bind a client socket");
                s.set_read_timeout(Some(REPLY)).expect("read timeout");
                s
            })
            .collect();
        Flows { sockets }
    }

    /// Sends `"<flow>:<round>"` on every flow (a window at a time) and
    /// returns the backend that answered each; panics on a missing or
    /// wrong reply.
    fn round(&self, frontend: SocketAddr, round: &str) -> Vec<String> {
        let mut backends = Vec::with_capacity(self.sockets.len());
        let mut buf = [0u8; 2048];
        for (start, window) in self.sockets.chunks(WINDOW).enumerate() {
            let first = start * WINDOW;
            for (i, socket) in window.iter().enumerate() {
                let payload = format!("{}:{round}", first + i);
                socket
                    .send_to(payload.as_bytes(), frontend)
                    .expect("send a datagram");
            }
            for (i, socket) in window.iter().enumerate() {
                let flow = first + i;
                let (n, _) = socket.recv_from(&mut buf).unwrap_or_else(|e| {
                    panic!("flow {flow} round {round}: no reply within {REPLY:?}: {e}")
                });
                let (backend, payload) = parse_reply(&buf[..n]);
                assert_eq!(
                    payload,
                    format!("{flow}:{round}").as_bytes(),
                    "flow {flow} got another datagram's reply"
                );
                backends.push(backend);
            }
        }
        backends
    }

    /// No reply is left unread: each datagram was answered exactly once.
    fn assert_no_extra_reply(&self) {
        let mut buf = [0u8; 2048];
        for (flow, socket) in self.sockets.iter().enumerate() {
            socket.set_nonblocking(true).expect("nonblocking");
            if let Ok((n, _)) = socket.recv_from(&mut buf) {
                panic!(
                    "flow {flow} got an extra reply {:?}",
                    String::from_utf8_lossy(&buf[..n])
                );
            }
            socket.set_nonblocking(false).expect("blocking");
        }
    }
}

/// Every datagram the backends got, by flow: the upstream addresses it
/// came from, and how many times each payload arrived.
fn by_flow(
    backends: &[&UdpBackend],
) -> BTreeMap<usize, (BTreeSet<SocketAddr>, BTreeMap<String, usize>)> {
    let mut flows: BTreeMap<usize, (BTreeSet<SocketAddr>, BTreeMap<String, usize>)> =
        BTreeMap::new();
    for backend in backends {
        for received in backend.received() {
            let text = String::from_utf8_lossy(&received.payload).into_owned();
            let Some(flow) = text.split(':').next().and_then(|f| f.parse().ok()) else {
                continue;
            };
            let entry = flows.entry(flow).or_default();
            entry.0.insert(received.from);
            *entry.1.entry(text).or_default() += 1;
        }
    }
    flows
}

fn proxy(backends: (&UdpBackend, &UdpBackend), workers: u32) -> (Sozu, SocketAddr) {
    let frontend = free_v4();
    let cluster = ClusterConfig::new("c", frontend)
        .backend("a", backends.0.addr())
        .backend("b", backends.1.addr());
    let listener = UdpListener::new(frontend);
    (
        Sozu::start(SozuConfig::udp(workers, listener, cluster)),
        frontend,
    )
}

/// Runs rounds on every flow in a thread until told to stop; returns how
/// many full rounds completed (each one checked).
fn keep_sending(
    flows: Arc<Flows>,
    frontend: SocketAddr,
    expected: Vec<String>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut rounds = 0;
        while !stop.load(Ordering::SeqCst) {
            let got = flows.round(frontend, &format!("during{rounds}"));
            assert_eq!(got, expected, "a flow changed backend during the upgrade");
            rounds += 1;
        }
        rounds
    })
}

fn upgrade_keeps_every_flow(args: &[&str], expect_new_workers: bool) {
    const FLOWS: usize = 1000;
    let a = UdpBackend::v4("a");
    let b = UdpBackend::v4("b");
    let (sozu, frontend) = proxy((&a, &b), 1);
    let flows = Arc::new(Flows::open(FLOWS));
    let backends = flows.round(frontend, "before");
    assert!(
        backends.iter().any(|n| n == "a") && backends.iter().any(|n| n == "b"),
        "round robin used one backend only"
    );
    let before = by_flow(&[&a, &b]);
    assert_eq!(before.len(), FLOWS);
    let old_pids = sozu.worker_pids();
    let old_worker_fds = procfs::fd_count(old_pids[0]);
    assert!(old_worker_fds >= FLOWS, "one upstream socket per flow");
    let master_fds = procfs::fd_count(sozu.master_pid());

    let stop = Arc::new(AtomicBool::new(false));
    let sender = keep_sending(
        Arc::clone(&flows),
        frontend,
        backends.clone(),
        Arc::clone(&stop),
    );
    // Traffic is flowing before the upgrade starts.
    wait_for("a round during traffic", REACT, || {
        a.datagrams() + b.datagrams() > FLOWS + 2 * WINDOW
    });
    let out = sozu.cli_ok(args);
    let new_pids = if expect_new_workers {
        sozu.wait_new_workers(&old_pids, REACT)
    } else {
        old_pids.clone()
    };
    // At least one whole round after the new workers serve.
    let served = a.datagrams() + b.datagrams();
    wait_for("a full round after the upgrade", REACT, || {
        a.datagrams() + b.datagrams() >= served + FLOWS
    });
    stop.store(true, Ordering::SeqCst);
    let rounds = sender.join().expect("the traffic thread panicked");
    assert!(rounds >= 1, "no round completed across the upgrade");
    assert_eq!(flows.round(frontend, "after"), backends);
    flows.assert_no_extra_reply();

    // Same upstream address and port, same backend, every datagram once.
    let after = by_flow(&[&a, &b]);
    for (flow, (sources, payloads)) in &after {
        assert_eq!(
            sources,
            &before[flow].0,
            "flow {flow} reached its backend from another address after `sozu {}`\n{}",
            args.join(" "),
            out.stdout
        );
        if let Some((payload, n)) = payloads.iter().find(|(_, n)| **n != 1) {
            panic!("flow {flow}: {payload} reached the backends {n} times");
        }
        assert_eq!(
            payloads.len(),
            rounds + 2,
            "flow {flow}: a datagram is missing"
        );
    }

    if expect_new_workers {
        let metrics = sozu.wait_metrics("the flows adopted", REACT, |m| {
            m.proxy_or_zero("udp.flows.adopted") == FLOWS as i64
        });
        assert_eq!(
            metrics.proxy_or_zero("udp.flows.created"),
            0,
            "a flow started afresh"
        );
        // The old worker released its sockets and exits; the master kept
        // no copy; the new worker holds one socket per flow, as the old did.
        wait_for("the old worker to exit", REACT, || {
            !procfs::is_alive(old_pids[0])
        });
        let new_fds = procfs::fd_count(new_pids[0]);
        assert!(
            new_fds.abs_diff(old_worker_fds) < 20,
            "new worker holds {new_fds} fds, the old one held {old_worker_fds}"
        );
        let master_after = procfs::fd_count(sozu.master_pid());
        assert!(
            master_after < master_fds + 20,
            "the master holds {master_after} fds, {master_fds} before the upgrade"
        );
    } else {
        assert_eq!(
            sozu.worker_pids(),
            old_pids,
            "--main-only replaced a worker"
        );
        assert_eq!(sozu.metrics().proxy_or_zero("udp.flows.adopted"), 0);
    }
}

#[test]
fn a_thousand_flows_keep_their_backend_and_source_port_across_sozu_upgrade() {
    upgrade_keeps_every_flow(&["upgrade"], true);
}

#[test]
fn a_thousand_flows_keep_their_backend_and_source_port_across_upgrade_main_only() {
    upgrade_keeps_every_flow(&["upgrade", "--main-only"], false);
}

#[test]
fn flows_the_new_worker_cannot_adopt_are_counted_and_start_afresh() {
    const FLOWS: usize = 20;
    const KEPT: usize = 5;
    let a = UdpBackend::v4("a");
    let b = UdpBackend::v4("b");
    let (sozu, frontend) = proxy((&a, &b), 1);
    let flows = Flows::open(FLOWS);
    flows.round(frontend, "before");
    let before = by_flow(&[&a, &b]);
    // Lowering max_flows sheds only new flows: the 20 live ones stay, but
    // a successor adopts only up to the cap.
    let address = frontend.to_string();
    sozu.cli_ok(&[
        "udp",
        "listener",
        "update",
        "-a",
        &address,
        "--max-flows",
        "5",
    ]);
    let old_pids = sozu.worker_pids();
    let worker = sozu.status().expect("status")[0].id.to_string();
    let out = sozu.cli_ok(&["upgrade", "--worker", &worker]);
    assert!(
        out.stdout.contains("20 live UDP flow(s) handed over"),
        "{}",
        out.stdout
    );
    let new_pids = sozu.wait_new_workers(&old_pids, REACT);
    let metrics = sozu.wait_metrics("adopted and refused flows", REACT, |m| {
        m.proxy_or_zero("udp.flows.adopted") == KEPT as i64
            && m.proxy_or_zero("udp.flows.handover_failed.at_capacity") == (FLOWS - KEPT) as i64
    });
    assert_eq!(metrics.proxy_or_zero("udp.flows.created"), 0);
    // Room again: the refused flows start afresh (a new upstream port),
    // the adopted ones keep theirs.
    sozu.cli_ok(&[
        "udp",
        "listener",
        "update",
        "-a",
        &address,
        "--max-flows",
        "100",
    ]);
    flows.round(frontend, "after");
    let after = by_flow(&[&a, &b]);
    let kept = (0..FLOWS)
        .filter(|flow| after[flow].0 == before[flow].0)
        .count();
    let fresh = (0..FLOWS).filter(|flow| after[flow].0.len() == 2).count();
    assert_eq!((kept, fresh), (KEPT, FLOWS - KEPT));
    sozu.wait_metrics("the refused flows recreated", REACT, |m| {
        m.proxy_or_zero("udp.flows.created") == (FLOWS - KEPT) as i64
    });
    // No fd left behind: the new worker holds one upstream socket per live
    // flow, the refused fds were closed.
    wait_for("the old worker to exit", REACT, || {
        !procfs::is_alive(old_pids[0])
    });
    let upstream_sockets = procfs::socket_inodes(new_pids[0]).len();
    assert!(
        upstream_sockets < FLOWS + 10,
        "the new worker holds {upstream_sockets} sockets for {FLOWS} flows"
    );
}
