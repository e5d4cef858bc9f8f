//! Hot reconfiguration while traffic flows, and deactivate → close_all.

use std::time::Duration;

use sozu_e2e::ports::free_v4;
use sozu_e2e::procfs;
use sozu_e2e::wait::wait_for;
use sozu_e2e::{
    ClusterConfig, Sozu, SozuConfig, SteadyTraffic, UdpBackend, UdpClient, UdpListener,
};

const PACE: Duration = Duration::from_millis(20);
const PROGRESS: Duration = Duration::from_secs(10);
const METRICS: Duration = Duration::from_secs(10);

#[test]
fn add_remove_backend_and_update_listener_lose_nothing_on_live_flows() {
    let a = UdpBackend::v4("a");
    let b = UdpBackend::v4("b");
    let (sozu, frontend) = Sozu::start_udp(2, &[&a]);
    let flows: Vec<SteadyTraffic> = (0..3)
        .map(|i| SteadyTraffic::start(frontend, &format!("t{i}"), PACE))
        .collect();
    let progress = |flows: &[SteadyTraffic]| {
        for f in flows {
            f.wait_more_answers(5, PROGRESS);
        }
    };
    progress(&flows);

    let b_addr = b.addr().to_string();
    let f_addr = frontend.to_string();
    sozu.backend_add("c", "b", &b_addr);
    progress(&flows);
    // New flows reach the new backend.
    wait_for("a new flow on backend b", PROGRESS, || {
        UdpClient::new(frontend).expect_echo(b"new") == "b"
    });

    sozu.cli_ok(&[
        "udp",
        "listener",
        "update",
        "-a",
        &f_addr,
        "--front-timeout",
        "20",
        "--back-timeout",
        "20",
    ]);
    progress(&flows);

    sozu.backend_remove("c", "b", &b_addr);
    progress(&flows);
    for _ in 0..4 {
        assert_eq!(UdpClient::new(frontend).expect_echo(b"after"), "a");
    }

    for flow in flows {
        let local = flow.local_addr();
        let report = flow.stop();
        assert!(
            report.lost.is_empty(),
            "flow {local} lost {:?} of {}",
            report.lost,
            report.sent
        );
        assert_eq!(
            report.by_backend.keys().collect::<Vec<_>>(),
            vec!["a"],
            "flow {local} moved: {:?}",
            report.by_backend
        );
    }
}

#[test]
fn lowering_max_flows_below_the_live_count_only_sheds_new_flows() {
    // One worker, so the cap and the live count are exact.
    let backend = UdpBackend::v4("a");
    let frontend = free_v4();
    let cluster = ClusterConfig::new("c", frontend).backend("a", backend.addr());
    let sozu = Sozu::start(SozuConfig::udp(1, UdpListener::new(frontend), cluster));
    let flows: Vec<SteadyTraffic> = (0..3)
        .map(|i| SteadyTraffic::start(frontend, &format!("t{i}"), PACE))
        .collect();
    for f in &flows {
        f.wait_more_answers(5, PROGRESS);
    }
    sozu.cli_ok(&[
        "udp",
        "listener",
        "update",
        "-a",
        &frontend.to_string(),
        "--max-flows",
        "1",
    ]);
    for f in &flows {
        f.wait_more_answers(10, PROGRESS);
    }
    let newcomer = UdpClient::new(frontend);
    newcomer.send(b"no room");
    newcomer.expect_silence(Duration::from_millis(400));
    sozu.wait_metrics("the newcomer shed", METRICS, |m| {
        m.proxy_or_zero("udp.flows.shed") >= 1 && m.proxy_or_zero("udp.active_flows") == 3
    });
    for flow in flows {
        let report = flow.stop();
        assert!(
            report.lost.is_empty(),
            "lost {:?} of {}",
            report.lost,
            report.sent
        );
    }
}

#[test]
fn deactivate_closes_every_flow_and_activate_serves_again() {
    let backend = UdpBackend::v4("a");
    let frontend = free_v4();
    let cluster = ClusterConfig::new("c", frontend).backend("a", backend.addr());
    let sozu = Sozu::start(SozuConfig::udp(2, UdpListener::new(frontend), cluster));
    let workers = sozu.worker_pids();
    let fds = || workers.iter().map(|p| procfs::fd_count(*p)).sum::<usize>();
    let baseline = fds();
    let clients: Vec<UdpClient> = (0..6).map(|_| UdpClient::new(frontend)).collect();
    for c in &clients {
        c.expect_echo(b"before");
    }
    sozu.wait_metrics("6 active flows", METRICS, |m| {
        m.proxy_or_zero("udp.active_flows") == 6
    });
    assert!(fds() >= baseline + 6);

    let f_addr = frontend.to_string();
    sozu.cli_ok(&["udp", "listener", "deactivate", "-a", &f_addr]);
    // The answer comes after every worker applied it: no waiting needed.
    let m = sozu.metrics();
    assert_eq!(
        m.proxy_or_zero("udp.active_flows"),
        0,
        "active flows after deactivate"
    );
    wait_for(
        &format!("worker fds back to {baseline}"),
        Duration::from_secs(5),
        || fds() == baseline,
    );
    // The socket stays bound but unread.
    assert!(
        !procfs::udp_listener_inodes(frontend).is_empty(),
        "deactivate released the socket"
    );
    clients[0].send(b"while inactive");
    // The positive signal: the datagram reached the socket and waits there
    // unread (the kernel's receive queue), and nothing was forwarded.
    wait_for(
        "the datagram queued, unread, on the listener socket",
        Duration::from_secs(5),
        || procfs::udp_listener_rx_queue(frontend) > 0,
    );
    let forwarded = backend.datagrams();
    clients[0].expect_silence(Duration::from_millis(400));
    assert_eq!(backend.datagrams(), forwarded, "forwarded while inactive");

    sozu.cli_ok(&["udp", "listener", "activate", "-a", &f_addr]);
    for c in &clients {
        assert_eq!(c.echo_eventually(b"after", Duration::from_secs(5)), "a");
    }
}
