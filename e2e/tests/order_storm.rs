//! The order storm: random live orders (listeners, clusters, backends,
//! frontends of every protocol added, removed, activated, deactivated,
//! patched, some of them invalid), one worker upgraded and one SIGKILLed in
//! the middle, while steady UDP traffic runs through a listener and a
//! cluster the storm never touches.
//!
//! Afterwards: that traffic lost and misrouted nothing; every worker's state
//! equals the master's (`sozu state check`); reloading the unchanged file
//! brings the state back to exactly the saved start state; worker fds return
//! to their start count once idle flows have timed out; no process died
//! that the test did not kill.
//!
//! `SOZU_STORM_SECS` sets the storm's length (default 20 s, about 30 s of
//! test on a loaded 2-core machine); `SOZU_STORM_SEED` replays one run (the
//! seed is printed).

use std::collections::BTreeSet;
use std::hash::{BuildHasher, RandomState};
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use sozu_command_lib::command::RunState;
use sozu_e2e::ports::free_v4;
use sozu_e2e::procfs;
use sozu_e2e::wait::{now, poll_until, wait_until};
use sozu_e2e::{ClusterConfig, Sozu, SozuConfig, SteadyTraffic, UdpBackend, UdpListener};

const PACE: Duration = Duration::from_millis(20);
const DEFAULT_SECS: u64 = 20;
/// Steady flows kept, all owned by the worker that is upgraded, never by
/// the one that is killed.
const STEADY_FLOWS: usize = 3;

/// xorshift64*: a seeded, reproducible choice of orders.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// The addresses and names the storm plays with; none is the steady
/// listener, cluster or backend.
struct Pool {
    udp: Vec<String>,
    tcp: Vec<String>,
    http: Vec<String>,
    clusters: Vec<String>,
    /// Backend addresses by backend id index: a live UDP echo first, then
    /// addresses nothing listens on.
    backends: Vec<String>,
}

impl Pool {
    fn new(echo: SocketAddr) -> Self {
        let addrs = |n: usize| (0..n).map(|_| free_v4().to_string()).collect::<Vec<_>>();
        let mut backends = vec![echo.to_string()];
        backends.extend(addrs(2));
        Pool {
            udp: addrs(3),
            tcp: addrs(2),
            http: addrs(2),
            clusters: (0..4).map(|i| format!("storm{i}")).collect(),
            backends,
        }
    }
}

/// One random CLI order (valid or not: refusals are part of the storm).
fn random_order(rng: &mut Rng, pool: &Pool) -> Vec<String> {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let cluster = rng.pick(&pool.clusters).clone();
    match rng.below(15) {
        0 => {
            let addr = rng.pick(&pool.udp).clone();
            let mut order = s(&[
                "udp",
                "listener",
                "add",
                "-a",
                &addr,
                "--front-timeout",
                "2",
                "--back-timeout",
                "2",
            ]);
            if rng.chance(30) {
                order.push("--inactive".into());
            }
            order
        }
        1 => {
            let verb = *rng.pick(&["remove", "activate", "deactivate"]);
            s(&["udp", "listener", verb, "-a", rng.pick(&pool.udp).as_str()])
        }
        2 => {
            let addr = rng.pick(&pool.udp).clone();
            let (knob, value) = if rng.chance(50) {
                ("--max-flows", rng.below(50).to_string())
            } else {
                // 65507 is the largest UDP payload (the CLI refuses more
                // before sending anything).
                let size = *rng.pick(&["512", "1500", "9000", "65507"]);
                ("--max-rx-datagram-size", size.to_owned())
            };
            s(&["udp", "listener", "update", "-a", &addr, knob, &value])
        }
        3 => {
            let verb = *rng.pick(&["add", "remove", "activate", "deactivate"]);
            s(&["tcp", "listener", verb, "-a", rng.pick(&pool.tcp).as_str()])
        }
        4 => {
            let verb = *rng.pick(&["add", "remove", "activate", "deactivate"]);
            s(&[
                "http",
                "listener",
                verb,
                "-a",
                rng.pick(&pool.http).as_str(),
            ])
        }
        5 | 6 => {
            let mut order = s(&["cluster", "add", "-i", &cluster]);
            let policy = *rng.pick(&["round_robin", "random", "least_loaded", "hrw", "maglev"]);
            order.extend(s(&["--load-balancing-policy", policy]));
            if rng.chance(50) {
                order.extend(s(&["--responses", "1"]));
            }
            order
        }
        7 => s(&["cluster", "remove", "-i", &cluster]),
        8 | 9 => {
            let index = rng.below(pool.backends.len());
            let id = format!("b{index}");
            let verb = *rng.pick(&["add", "remove"]);
            s(&[
                "backend",
                verb,
                "-i",
                &cluster,
                "--backend-id",
                &id,
                "-a",
                &pool.backends[index],
            ])
        }
        10 | 11 => {
            let verb = *rng.pick(&["add", "remove"]);
            s(&[
                "udp",
                "frontend",
                verb,
                "-i",
                &cluster,
                "-a",
                rng.pick(&pool.udp).as_str(),
            ])
        }
        12 => {
            let verb = *rng.pick(&["add", "remove"]);
            s(&[
                "tcp",
                "frontend",
                verb,
                "-i",
                &cluster,
                "-a",
                rng.pick(&pool.tcp).as_str(),
            ])
        }
        _ => {
            let verb = *rng.pick(&["add", "remove"]);
            let host = format!("h{}.example", rng.below(3));
            let mut order = s(&[
                "http",
                "frontend",
                verb,
                "-i",
                &cluster,
                "-a",
                rng.pick(&pool.http).as_str(),
                "--hostname",
                &host,
            ]);
            match rng.below(4) {
                0 => order.extend(s(&["--path", "/api"])),
                // An invalid regular expression: always refused.
                1 => order.extend(s(&["--path-regex", "("])),
                _ => {}
            }
            order
        }
    }
}

fn storm_secs() -> u64 {
    std::env::var("SOZU_STORM_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_SECS)
}

fn storm_seed() -> u64 {
    std::env::var("SOZU_STORM_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        // std's RandomState is keyed randomly per process.
        .unwrap_or_else(|| RandomState::new().hash_one(std::process::id()) | 1)
}

/// (worker id, pid) of every RUNNING worker.
fn running(sozu: &Sozu) -> Vec<(u32, i32)> {
    sozu.status()
        .expect("status")
        .iter()
        .filter(|w| w.run_state == RunState::Running as i32)
        .map(|w| (w.id, w.pid))
        .collect()
}

/// Starts steady flows until `STEADY_FLOWS` of them are owned by the worker
/// with pid `owner`; the others are stopped.
fn steady_flows_on(
    sozu: &Sozu,
    frontend: SocketAddr,
    backend: &UdpBackend,
    owner: i32,
) -> Vec<SteadyTraffic> {
    let pids = sozu.worker_pids();
    let mut kept = Vec::new();
    for attempt in 0..64 {
        if kept.len() == STEADY_FLOWS {
            break;
        }
        let tag = format!("steady{attempt}");
        let flow = SteadyTraffic::start(frontend, &tag, PACE);
        flow.wait_more_answers(2, Duration::from_secs(10));
        let prefix = format!("{tag}-");
        let upstream = backend
            .received()
            .iter()
            .rev()
            .find(|r| r.payload.starts_with(prefix.as_bytes()))
            .map(|r| r.from)
            .expect("the backend saw the flow");
        if procfs::owner_of_udp_port(upstream, &pids) == Some(owner) {
            kept.push(flow);
        } else {
            let report = flow.stop();
            assert!(
                report.lost.is_empty(),
                "a probe flow lost {:?}",
                report.lost
            );
        }
    }
    assert_eq!(
        kept.len(),
        STEADY_FLOWS,
        "could not place {STEADY_FLOWS} flows on worker pid {owner}"
    );
    kept
}

#[test]
fn order_storm_loses_nothing_and_leaves_workers_equal_to_the_master() {
    let seed = storm_seed();
    let secs = storm_secs();
    eprintln!("order storm: SOZU_STORM_SEED={seed} SOZU_STORM_SECS={secs}");
    let mut rng = Rng(seed);

    let steady_backend = UdpBackend::v4("s");
    let echo = UdpBackend::v4("storm");
    let frontend = free_v4();
    let mut listener = UdpListener::new(frontend);
    // Short idle timeouts so every flow is gone soon after traffic stops.
    listener.front_timeout = 3;
    listener.back_timeout = 3;
    let cluster = ClusterConfig::new("steady", frontend).backend("s", steady_backend.addr());
    let sozu = Sozu::start(SozuConfig::udp(2, listener, cluster));
    let pool = Pool::new(echo.addr());

    let start_workers = running(&sozu);
    assert_eq!(start_workers.len(), 2, "two workers RUNNING at start");
    let baseline: Vec<usize> = start_workers
        .iter()
        .map(|(_, pid)| procfs::fd_count(*pid))
        .collect();
    assert_eq!(
        baseline[0], baseline[1],
        "two fresh workers with one state hold the same fds"
    );
    let baseline = baseline[0];
    let before = sozu.dir().join("before.state");
    sozu.cli_ok(&["state", "save", "-f", &before.to_string_lossy()]);

    // The upgraded worker owns the steady flows; the killed one owns none.
    let (upgraded_id, upgraded_pid) = start_workers[0];
    let (killed_id, killed_pid) = start_workers[1];
    let steady = steady_flows_on(&sozu, frontend, &steady_backend, upgraded_pid);

    let mut seen_pids: BTreeSet<i32> = start_workers.iter().map(|(_, p)| *p).collect();
    let storm_client = UdpSocket::bind("127.0.0.1:0").expect("bind the storm's client");
    let deadline = now() + Duration::from_secs(secs);
    let started = now();
    let (mut upgraded, mut killed) = (false, false);
    let (mut orders, mut refused) = (0usize, 0usize);
    while now() < deadline {
        let elapsed = started.elapsed().as_secs_f64() / secs as f64;
        if !upgraded && elapsed > 0.3 {
            sozu.cli_ok(&["upgrade", "--worker", &upgraded_id.to_string()]);
            upgraded = true;
        }
        if !killed && elapsed > 0.6 {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(killed_pid),
                nix::sys::signal::Signal::SIGKILL,
            )
            .expect("kill a worker");
            killed = true;
        }
        let order = random_order(&mut rng, &pool);
        let args: Vec<&str> = order.iter().map(String::as_str).collect();
        let out = sozu.cli(&args);
        orders += 1;
        assert!(
            out.code == 0 || out.code == 1,
            "sozu {} exited {} (0 or 1 expected)\nstdout: {}\nstderr: {}",
            order.join(" "),
            out.code,
            out.stdout,
            out.stderr
        );
        if out.code == 1 {
            refused += 1;
            assert!(
                !out.stderr.contains("did not answer"),
                "a worker hung on `sozu {}`: {}",
                order.join(" "),
                out.stderr
            );
        }
        // Some traffic into whatever the storm built.
        let target = rng.pick(&pool.udp).clone();
        let _ = storm_client.send_to(b"storm", target.as_str());
        if orders % 8 == 0 {
            seen_pids.extend(sozu.status().expect("status").iter().map(|w| w.pid));
        }
    }
    eprintln!("order storm: {orders} orders, {refused} refused");
    assert!(
        upgraded && killed,
        "the storm was too short to upgrade and kill"
    );
    assert!(orders >= 20, "only {orders} orders in {secs} s");
    assert!(
        refused < orders,
        "every order was refused: the storm did nothing"
    );

    // Both slots RUNNING again, neither with its original pid.
    let end_workers = wait_until(
        "both worker slots RUNNING with new pids",
        Duration::from_secs(30),
        || {
            let workers = running(&sozu);
            (workers.len() == 2
                && workers
                    .iter()
                    .all(|(_, pid)| *pid != upgraded_pid && *pid != killed_pid))
            .then_some(workers)
        },
    );
    seen_pids.extend(end_workers.iter().map(|(_, p)| *p));
    let expected: BTreeSet<i32> = [upgraded_pid, killed_pid]
        .into_iter()
        .chain(end_workers.iter().map(|(_, p)| *p))
        .collect();
    assert_eq!(
        seen_pids, expected,
        "a worker died and was restarted that the test did not kill (killed worker {killed_id})"
    );

    // Every worker serves exactly what the master lists.
    sozu.cli_ok(&["state", "check"]);

    // Reloading the unchanged file removes every live-added object: the
    // state is back to the start, to the byte.
    sozu.cli_ok(&["reload"]);
    sozu.cli_ok(&["state", "check"]);
    let after = sozu.dir().join("after.state");
    sozu.cli_ok(&["state", "save", "-f", &after.to_string_lossy()]);
    assert_eq!(
        std::fs::read_to_string(&before).expect("read the start state"),
        std::fs::read_to_string(&after).expect("read the end state"),
        "the reloaded state differs from the start state"
    );

    // The steady traffic lost and misrouted nothing.
    for flow in steady {
        let local = flow.local_addr();
        let report = flow.stop();
        assert!(report.answered > 0, "flow {local} was never answered");
        assert!(
            report.lost.is_empty(),
            "steady flow {local} lost {:?} of {} requests",
            report.lost,
            report.sent
        );
        assert_eq!(
            report.by_backend.keys().collect::<Vec<_>>(),
            vec!["s"],
            "steady flow {local} was misrouted: {:?}",
            report.by_backend
        );
    }

    // Once idle flows time out (3 s), each worker is back to the fds of a
    // fresh worker, and the replaced ones are gone.
    let settled = poll_until(Duration::from_secs(30), || {
        let counts: Vec<usize> = end_workers
            .iter()
            .map(|(_, pid)| procfs::fd_count(*pid))
            .collect();
        let old_gone = !procfs::is_alive(upgraded_pid) && !procfs::is_alive(killed_pid);
        (old_gone && counts.iter().all(|c| *c == baseline)).then_some(())
    });
    if settled.is_none() {
        let counts: Vec<(i32, usize)> = end_workers
            .iter()
            .map(|(_, pid)| (*pid, procfs::fd_count(*pid)))
            .collect();
        panic!(
            "worker fds did not return to {baseline}: {counts:?}; old upgraded worker alive: {}",
            procfs::is_alive(upgraded_pid)
        );
    }
    assert!(
        procfs::is_alive(sozu.master_pid()),
        "the master died during the storm"
    );
    assert!(
        !sozu.log().contains("panicked"),
        "a process panicked:\n{}",
        sozu.log_tail(60)
    );
}
