//! `flow_key = DNS_ID` through the real binary (`cluster add … --flow-key
//! dns-id`): a DNS-ish backend that answers with the ID it received (and
//! misbehaves on purpose for some names); every client gets exactly its own
//! answers with its own IDs, whatever the backend does (late, twice, out of
//! order, wrong ID, another question, truncated, from another source,
//! never); the worker holds a socket per backend, not per client; every
//! drop is counted with its reason; LEAST_LOADED and POWER_OF_TWO weigh a
//! backend by its unanswered queries.

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sozu_e2e::ports::{free_v4, V4};
use sozu_e2e::procfs::fd_count;
use sozu_e2e::wait::wait_until;
use sozu_e2e::{Sozu, SozuConfig, UdpClient, UdpListener};

const WAIT: Duration = Duration::from_secs(20);

/// A query with `id` for `name` (type A, class IN).
fn query(id: u16, name: &str) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// The answer to `q` as received: same ID and question, QR set, plus one
/// TXT-ish record naming the backend (so a test sees who answered).
fn answer(q: &[u8], backend: &str) -> Vec<u8> {
    let mut a = q.to_vec();
    a[2] |= 0x80;
    a[7] = 1;
    a.extend_from_slice(&[0xc0, 12, 0, 16, 0, 1, 0, 0, 0, 60, 0]);
    a.push(backend.len() as u8 + 1);
    a.push(backend.len() as u8);
    a.extend_from_slice(backend.as_bytes());
    a
}

fn id_of(p: &[u8]) -> u16 {
    u16::from_be_bytes([p[0], p[1]])
}

/// The first question's name of a message, dotted.
fn qname(p: &[u8]) -> String {
    let mut at = 12;
    let mut labels = Vec::new();
    while let Some(&len) = p.get(at) {
        if len == 0 {
            break;
        }
        let len = usize::from(len);
        labels.push(String::from_utf8_lossy(&p[at + 1..at + 1 + len]).to_string());
        at += 1 + len;
    }
    labels.join(".")
}

/// The backend name in an answer made by [`answer`]: the record after
/// the question is pointer (2), type (2), class (2), TTL (4), length (2),
/// then `<len><name>`.
fn answered_by(a: &[u8]) -> String {
    let mut at = 12;
    while let Some(&len) = a.get(at) {
        at += 1;
        if len == 0 {
            break;
        }
        at += usize::from(len);
    }
    let name = at + 4 + 12 + 1;
    a.get(name..)
        .map(|n| String::from_utf8_lossy(n).to_string())
        .unwrap_or_default()
}

#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    /// Every query received: (wire ID, name).
    queries: Mutex<Vec<(u16, String)>>,
    /// The PROXY v2 source of each query that carried a header, by name.
    proxied: Mutex<Vec<(String, SocketAddr)>>,
    /// While set, every query is held unanswered; once cleared, the held
    /// ones are answered.
    stall: AtomicBool,
}

/// A DNS-ish backend on a loopback port, served by its own thread until
/// dropped. It answers each query with the ID it received, except by the
/// first label of the name:
/// `twice` answers twice; `wrongid` with ID + 1; `spoof` with the right ID
/// and another question; `short` with 5 bytes; `big` with 1,600 bytes; `never` not at all; `late`
/// after 1.5 s; `othersrc` first from another socket, then from its own;
/// `hold` answers are held until 8 wait, then sent in reverse order. While
/// stalled ([`DnsBackend::stall`]) it holds every query.
struct DnsBackend {
    name: String,
    addr: SocketAddr,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl DnsBackend {
    fn start(name: &str) -> Self {
        let socket = UdpSocket::bind(SocketAddr::new(V4, 0)).expect("bind a backend");
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .expect("read timeout");
        let addr = socket.local_addr().expect("backend address");
        let shared = Arc::new(Shared::default());
        let thread_shared = Arc::clone(&shared);
        let me = name.to_owned();
        let thread = std::thread::Builder::new()
            .name(format!("dns-{name}"))
            .spawn(move || serve(socket, &me, &thread_shared))
            .expect("spawn the backend");
        DnsBackend {
            name: name.to_owned(),
            addr,
            shared,
            thread: Some(thread),
        }
    }

    fn queries(&self) -> Vec<(u16, String)> {
        self.shared.queries.lock().unwrap().clone()
    }

    fn count(&self) -> usize {
        self.shared.queries.lock().unwrap().len()
    }

    /// Holds every query from now on (`true`), or answers the held ones
    /// and the next ones (`false`).
    fn stall(&self, on: bool) {
        self.shared.stall.store(on, Ordering::SeqCst);
    }
}

impl Drop for DnsBackend {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(socket: UdpSocket, me: &str, shared: &Shared) {
    let other = UdpSocket::bind(SocketAddr::new(V4, 0)).expect("bind the other source");
    let mut buf = [0u8; 2048];
    let mut delayed: Vec<(Instant, Vec<u8>, SocketAddr)> = Vec::new();
    let mut held: Vec<(Vec<u8>, SocketAddr)> = Vec::new();
    let mut stalled: Vec<(Vec<u8>, SocketAddr)> = Vec::new();
    while !shared.stop.load(Ordering::SeqCst) {
        let now = sozu_e2e::wait::now();
        if !shared.stall.load(Ordering::SeqCst) {
            for (a, to) in stalled.drain(..) {
                let _ = socket.send_to(&a, to);
            }
        }
        delayed.retain(|(due, a, to)| {
            if *due <= now {
                let _ = socket.send_to(a, to);
                false
            } else {
                true
            }
        });
        let Ok((n, from)) = socket.recv_from(&mut buf) else {
            continue;
        };
        let (header, q) = sozu_e2e::proxy_protocol::split(&buf[..n]);
        if q.len() < 12 {
            continue;
        }
        let name = qname(q);
        if let Some(h) = header {
            shared
                .proxied
                .lock()
                .unwrap()
                .push((name.clone(), h.source));
        }
        shared
            .queries
            .lock()
            .unwrap()
            .push((id_of(q), name.clone()));
        let a = answer(q, me);
        if shared.stall.load(Ordering::SeqCst) {
            stalled.push((a, from));
            continue;
        }
        match name.split('.').next().unwrap_or("") {
            "twice" => {
                let _ = socket.send_to(&a, from);
                let _ = socket.send_to(&a, from);
            }
            "wrongid" => {
                let mut w = a.clone();
                w[..2].copy_from_slice(&id_of(q).wrapping_add(1).to_be_bytes());
                let _ = socket.send_to(&w, from);
            }
            "spoof" => {
                let mut fake = query(id_of(q), "evil.test");
                fake[2] |= 0x80;
                let _ = socket.send_to(&fake, from);
            }
            "short" => {
                let _ = socket.send_to(&a[..5], from);
            }
            "big" => {
                // Over the listener's 1,500-byte max_rx_datagram_size.
                let mut big = a.clone();
                big.resize(1_600, 0);
                let _ = socket.send_to(&big, from);
            }
            "never" => {}
            "late" => delayed.push((now + Duration::from_millis(1500), a, from)),
            "othersrc" => {
                let _ = other.send_to(&a, from);
                let _ = socket.send_to(&a, from);
            }
            "hold" => {
                held.push((a, from));
                if held.len() == 8 {
                    for (a, to) in held.drain(..).rev() {
                        let _ = socket.send_to(&a, to);
                    }
                }
            }
            _ => {
                let _ = socket.send_to(&a, from);
            }
        }
    }
}

/// One worker, one UDP listener, cluster `dns` with `--flow-key dns-id`
/// (plus `extra`) and the given backends, all through the CLI.
fn start(extra: &[&str], backends: &[&DnsBackend]) -> (Sozu, SocketAddr) {
    let front = free_v4();
    let config = SozuConfig {
        worker_count: 1,
        udp_listeners: vec![UdpListener::new(front)],
        ..SozuConfig::default()
    };
    let sozu = Sozu::start(config);
    let mut args = vec!["cluster", "add", "-i", "dns", "--flow-key", "dns-id"];
    args.extend_from_slice(extra);
    sozu.cli_ok(&args);
    for b in backends {
        add_backend(&sozu, b);
    }
    sozu.cli_ok(&[
        "udp",
        "frontend",
        "add",
        "-i",
        "dns",
        "-a",
        &front.to_string(),
    ]);
    (sozu, front)
}

fn add_backend(sozu: &Sozu, b: &DnsBackend) {
    sozu.cli_ok(&[
        "backend",
        "add",
        "-i",
        "dns",
        "--backend-id",
        &b.name,
        "-a",
        &b.addr.to_string(),
    ]);
}

fn worker(sozu: &Sozu) -> i32 {
    let pids = sozu.worker_pids();
    assert_eq!(pids.len(), 1, "one worker: {pids:?}");
    pids[0]
}

/// Every answer `client` gets within `window` after it has `n`.
fn collect(client: &UdpClient, n: usize) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    let deadline = sozu_e2e::Deadline::after(WAIT);
    while got.len() < n && !deadline.is_past() {
        if let Some(a) = client.recv_timeout(Duration::from_millis(200)) {
            got.push(a);
        }
    }
    got
}

/// Sends `q` and waits for its answer (the CLI returned once every worker
/// applied the orders, so one send is enough).
fn first_answer(client: &UdpClient, q: &[u8]) -> Vec<u8> {
    client.send(q);
    client
        .recv_timeout(WAIT)
        .unwrap_or_else(|| panic!("no answer to {}", qname(q)))
}

#[test]
fn many_clients_with_many_queries_in_flight_get_exactly_their_own_answers() {
    let a = DnsBackend::start("a");
    let b = DnsBackend::start("b");
    let (sozu, front) = start(&[], &[&a, &b]);
    let warm = UdpClient::new(front);
    first_answer(&warm, &query(7, "warm.test"));
    let listed = sozu.cli_ok(&["cluster", "list", "-i", "dns"]).stdout;
    assert!(listed.contains("flow_key=dns_id"), "{listed}");
    let warm_queries = a.count() + b.count();
    let m0 = sozu.metrics();
    let in0 = m0.proxy_or_zero(&format!("udp.datagrams.in@{front}"));
    // 200 clients × 10 queries, all clients using the same 10 IDs: in
    // waves of 20 clients (200 queries in flight at once).
    let clients: Vec<UdpClient> = (0..200).map(|_| UdpClient::new(front)).collect();
    for (w, wave) in clients.chunks(20).enumerate() {
        for (c, client) in wave.iter().enumerate() {
            for k in 0..10u16 {
                client.send(&query(0x4200 + k, &format!("c{w}-{c}-q{k}.test")));
            }
        }
        for (c, client) in wave.iter().enumerate() {
            let got = collect(client, 10);
            let mut seen: BTreeMap<u16, String> = BTreeMap::new();
            for answer in &got {
                let id = id_of(answer);
                let name = qname(answer);
                assert_eq!(
                    name,
                    format!("c{w}-{c}-q{}.test", id - 0x4200),
                    "client {w}-{c} got an answer to another client's question"
                );
                assert!(seen.insert(id, name).is_none(), "answer {id:#x} twice");
            }
            assert_eq!(seen.len(), 10, "client {w}-{c} got {} answers", got.len());
        }
    }
    // Nothing more arrives for anyone (the counters below are the positive
    // signal that every answer was processed).
    let m = sozu.wait_metrics("2,000 answers returned", WAIT, |m| {
        m.proxy_or_zero(&format!("udp.datagrams.out@{front}")) >= 2_001
    });
    assert_eq!(
        m.proxy_or_zero(&format!("udp.datagrams.in@{front}")),
        in0 + 2_000
    );
    assert_eq!(
        m.proxy_or_zero(&format!("udp.flows.created@{front}")),
        0,
        "no flow"
    );
    assert_eq!(a.count() + b.count(), warm_queries + 2_000);
    // Round robin per query: one client's ten queries split over both.
    let (na, nb) = (a.count(), b.count());
    assert!(na.abs_diff(nb) <= 2, "a {na} b {nb}");
    // The IDs on the wire are not the clients' (all 0x4200..0x4209).
    let wire: Vec<u16> = a
        .queries()
        .iter()
        .chain(b.queries().iter())
        .map(|q| q.0)
        .collect();
    let clients_ids = wire
        .iter()
        .filter(|id| (0x4200..0x420a).contains(*id))
        .count();
    assert!(
        clients_ids < 20,
        "{clients_ids} wire IDs equal the clients' own"
    );
    clients[0].expect_silence(Duration::from_millis(200));
}

#[test]
fn a_misbehaving_backend_reaches_only_the_asker_and_every_drop_is_counted() {
    let a = DnsBackend::start("a");
    // Answers wait at most one second.
    let (sozu, front) = start(&["--back-timeout", "1"], &[&a]);
    let x = UdpClient::new(front);
    let y = UdpClient::new(front);
    first_answer(&x, &query(1, "ok.test"));
    let dropped = |m: &sozu_e2e::Metrics, reason: &str| {
        m.proxy_or_zero(&format!("udp.datagrams.dropped.{reason}@{front}"))
    };
    let base = sozu.metrics();

    // Twice: exactly one answer each, the second counted unknown_id.
    x.send(&query(0x11, "twice.test"));
    y.send(&query(0x11, "twice.test"));
    for c in [&x, &y] {
        let got = c.recv_timeout(WAIT).expect("an answer to twice");
        assert_eq!((id_of(&got), qname(&got).as_str()), (0x11, "twice.test"));
    }
    sozu.wait_metrics("two duplicates dropped", WAIT, |m| {
        dropped(m, "dns_unknown_id") >= dropped(&base, "dns_unknown_id") + 2
    });
    x.expect_silence(Duration::from_millis(100));
    y.expect_silence(Duration::from_millis(100));

    // A wrong ID, another question, a truncated answer, an oversized one
    // (over max_rx_datagram_size): nothing reaches
    // the client; each counted.
    x.send(&query(0x22, "wrongid.test"));
    x.send(&query(0x23, "spoof.test"));
    x.send(&query(0x24, "short.test"));
    x.send(&query(0x29, "big.test"));
    sozu.wait_metrics(
        "wrong, spoofed, short and oversized answers dropped",
        WAIT,
        |m| {
            dropped(m, "dns_unknown_id") >= dropped(&base, "dns_unknown_id") + 3
                && dropped(m, "dns_mismatch") > dropped(&base, "dns_mismatch")
                && dropped(m, "dns_not_dns") > dropped(&base, "dns_not_dns")
                && dropped(m, "truncated") > dropped(&base, "truncated")
        },
    );
    // Their four queries got no acceptable answer: they expire.
    sozu.wait_metrics("the four unanswered queries expired", WAIT, |m| {
        dropped(m, "dns_expired") >= dropped(&base, "dns_expired") + 4
    });
    // From another source: the connected socket never reads it; the real
    // answer follows and is the only one.
    x.send(&query(0x25, "othersrc.test"));
    let got = x
        .recv_timeout(WAIT)
        .expect("the answer from the backend's own socket");
    assert_eq!((id_of(&got), qname(&got).as_str()), (0x25, "othersrc.test"));

    // Never, and late (after the one-second deadline): both end unanswered,
    // counted. The late answer finds its query expired by the timer (an
    // unknown ID) or, if it is read first, past its deadline (`dns_late`).
    let before = sozu.metrics();
    x.send(&query(0x26, "never.test"));
    x.send(&query(0x27, "late.test"));
    sozu.wait_metrics(
        "two queries unanswered, the late answer dropped",
        WAIT,
        |m| {
            let ended = |m: &sozu_e2e::Metrics| dropped(m, "dns_expired") + dropped(m, "dns_late");
            let late =
                |m: &sozu_e2e::Metrics| dropped(m, "dns_unknown_id") + dropped(m, "dns_late");
            ended(m) >= ended(&before) + 2 && late(m) > late(&before)
        },
    );
    // Everything above was counted: x got nothing else, and the path still
    // works (positive signal after the silence).
    x.expect_silence(Duration::from_millis(100));
    let ok = first_answer(&x, &query(0x28, "ok2.test"));
    assert_eq!((id_of(&ok), qname(&ok).as_str()), (0x28, "ok2.test"));
    x.expect_silence(Duration::from_millis(100));
    let m = sozu.metrics();
    assert_eq!(m.proxy_or_zero(&format!("udp.flows.created@{front}")), 0);
    assert!(
        m.backend("dns", "a", "udp.datagrams.dropped.dns_expired")
            .unwrap_or(0)
            >= 5
    );
}

#[test]
fn answers_sent_out_of_order_go_back_to_their_own_clients() {
    let a = DnsBackend::start("a");
    let (sozu, front) = start(&[], &[&a]);
    first_answer(&UdpClient::new(front), &query(1, "ok.test"));
    // Eight clients, one query each with the same ID; the backend answers
    // them in reverse order.
    let clients: Vec<UdpClient> = (0..8).map(|_| UdpClient::new(front)).collect();
    for (i, c) in clients.iter().enumerate() {
        c.send(&query(0x0101, &format!("hold.c{i}.test")));
    }
    for (i, c) in clients.iter().enumerate() {
        let got = c.recv_timeout(WAIT).expect("its answer");
        assert_eq!(id_of(&got), 0x0101);
        assert_eq!(qname(&got), format!("hold.c{i}.test"));
        assert_eq!(answered_by(&got), "a");
    }
    assert_eq!(a.count(), 9);
    drop(sozu);
}

#[test]
fn two_thousand_sources_cost_no_descriptor_each() {
    let a = DnsBackend::start("a");
    let (sozu, front) = start(&[], &[&a]);
    let pid = worker(&sozu);
    first_answer(&UdpClient::new(front), &query(1, "warm.test"));
    let fds = fd_count(pid);
    // 2,000 queries, each from a fresh source port, in chunks of 100 whose
    // answers are awaited.
    let mut answered = 0;
    for chunk in 0..20 {
        let clients: Vec<UdpClient> = (0..100).map(|_| UdpClient::new(front)).collect();
        for (i, c) in clients.iter().enumerate() {
            c.send(&query(i as u16, &format!("s{chunk}-{i}.test")));
        }
        for (i, c) in clients.iter().enumerate() {
            let got = c.recv_timeout(WAIT).expect("an answer");
            assert_eq!(
                (id_of(&got), qname(&got)),
                (i as u16, format!("s{chunk}-{i}.test"))
            );
            answered += 1;
        }
        assert_eq!(fd_count(pid), fds, "no descriptor per source");
    }
    assert_eq!(answered, 2_000);
    let m = sozu.metrics();
    assert_eq!(m.proxy_or_zero(&format!("udp.flows.created@{front}")), 0);
    assert_eq!(m.backend("dns", "a", "udp.datagrams.out"), Some(2_001));
}

#[test]
fn a_removed_backend_pending_queries_are_counted_and_affinity_holds() {
    let a = DnsBackend::start("a");
    let b = DnsBackend::start("b");
    let (sozu, front) = start(
        &[
            "--load-balancing-policy",
            "hrw",
            "--affinity-key",
            "source-ip-port",
        ],
        &[&a, &b],
    );
    let pid = worker(&sozu);
    let client = UdpClient::new(front);
    let first = first_answer(&client, &query(1, "warm.test"));
    let owner = answered_by(&first);
    // With HRW on the source address and port, every query of a client goes
    // to one backend.
    for k in 0..20u16 {
        client.send(&query(k, &format!("q{k}.test")));
    }
    let got = collect(&client, 20);
    assert_eq!(got.len(), 20);
    assert!(
        got.iter().all(|a| answered_by(a) == owner),
        "one backend per client"
    );
    // Queries that wait (never answered), then the owner is removed: its
    // socket closes, they are counted, the client gets nothing for them.
    let fds = fd_count(pid);
    let before = sozu.metrics();
    let backend = if owner == "a" { &a } else { &b };
    let start_count = backend.count();
    for k in 0..5u16 {
        client.send(&query(0x500 + k, "never.test"));
    }
    wait_until("the five queries at the backend", WAIT, || {
        (backend.count() >= start_count + 5).then_some(())
    });
    sozu.cli_ok(&[
        "backend",
        "remove",
        "-i",
        "dns",
        "--backend-id",
        &backend.name,
        "-a",
        &backend.addr.to_string(),
    ]);
    let closed = format!("udp.datagrams.dropped.dns_socket_closed@{front}");
    sozu.wait_metrics("five queries dropped with their socket", WAIT, |m| {
        m.proxy_or_zero(&closed) >= before.proxy_or_zero(&closed) + 5
    });
    assert!(fd_count(pid) < fds, "the removed backend's socket closed");
    // The other backend takes the client now.
    let next = first_answer(&client, &query(0x600, "after.test"));
    assert_ne!(answered_by(&next), owner);
    client.expect_silence(Duration::from_millis(200));
}

#[test]
fn every_query_carries_its_client_in_a_proxy_v2_header() {
    let a = DnsBackend::start("a");
    let (sozu, front) = start(&["--send-proxy-protocol"], &[&a]);
    let clients: Vec<UdpClient> = (0..3).map(|_| UdpClient::new(front)).collect();
    for (i, c) in clients.iter().enumerate() {
        for k in 0..2u16 {
            c.send(&query(0x700 + k, &format!("pp{i}-{k}.test")));
        }
    }
    for (i, c) in clients.iter().enumerate() {
        let got = collect(c, 2);
        let mut names: Vec<(u16, String)> = got.iter().map(|a| (id_of(a), qname(a))).collect();
        names.sort();
        assert_eq!(
            names,
            vec![
                (0x700, format!("pp{i}-0.test")),
                (0x701, format!("pp{i}-1.test"))
            ]
        );
    }
    // The header (separate from the rewritten query) names each query's
    // real client.
    let proxied = a.shared.proxied.lock().unwrap().clone();
    assert_eq!(proxied.len(), 6, "{proxied:?}");
    for (name, source) in proxied {
        let i: usize = name[2..3].parse().unwrap();
        assert_eq!(source, clients[i].local_addr(), "{name}");
    }
    drop(sozu);
}

/// Sends `q` and waits until a backend has it; if `fast` got it, waits for
/// its answer too (so `fast` holds nothing when this returns). Returns
/// whether `slow` got it.
fn one_query(client: &UdpClient, q: &[u8], slow: &DnsBackend, fast: &DnsBackend) -> bool {
    let (s0, f0) = (slow.count(), fast.count());
    client.send(q);
    let to_slow = wait_until("the query at a backend", WAIT, || {
        let (s, f) = (slow.count(), fast.count());
        (s + f > s0 + f0).then_some(s > s0)
    });
    if !to_slow {
        let got = client
            .recv_timeout(WAIT)
            .expect("the fast backend's answer");
        assert_eq!((id_of(&got), qname(&got)), (id_of(q), qname(q)));
        assert_eq!(answered_by(&got), fast.name);
    }
    to_slow
}

/// With `policy`, a backend holding an unanswered query gets no new one
/// while the other is idle; once it answers, it gets queries again.
fn held_queries_weigh_on_their_backend(policy: &str) {
    let slow = DnsBackend::start("slow");
    let fast = DnsBackend::start("fast");
    slow.stall(true);
    // Answers may take a minute: nothing expires during the test.
    let (sozu, front) = start(
        &["--load-balancing-policy", policy, "--back-timeout", "60"],
        &[&slow, &fast],
    );
    let client = UdpClient::new(front);
    // Ties (both idle) go either way: send one query at a time until the
    // slow backend holds one (the chance it never does is 2^-40).
    let mut sent = 0u16;
    let held = loop {
        assert!(sent < 40, "{policy}: the slow backend never got a query");
        let q = query(0x100 + sent, &format!("first{sent}.test"));
        sent += 1;
        if one_query(&client, &q, &slow, &fast) {
            break q;
        }
    };
    // While it holds that query, every new one goes to the other backend
    // (each answered before the next is sent: the fast one is idle again).
    let fast_before = fast.count();
    for k in 0..20u16 {
        let q = query(0x200 + k, &format!("while{k}.test"));
        assert!(
            !one_query(&client, &q, &slow, &fast),
            "{policy}: query {k} went to the backend holding a query"
        );
    }
    assert_eq!(slow.count(), 1, "{policy}");
    assert_eq!(fast.count(), fast_before + 20, "{policy}");
    // It answers: the held query's client gets it, and the slow backend
    // is idle again: it gets queries again.
    slow.stall(false);
    let got = client.recv_timeout(WAIT).expect("the held answer");
    assert_eq!((id_of(&got), qname(&got)), (id_of(&held), qname(&held)));
    assert_eq!(answered_by(&got), "slow");
    let slow_before = slow.count();
    for k in 0..20u16 {
        let q = query(0x300 + k, &format!("after{k}.test"));
        client.send(&q);
        let got = client.recv_timeout(WAIT).expect("an answer");
        assert_eq!((id_of(&got), qname(&got)), (id_of(&q), qname(&q)));
    }
    assert!(
        slow.count() > slow_before,
        "{policy}: the slow backend got no query once it answered"
    );
    client.expect_silence(Duration::from_millis(100));
    drop(sozu);
}

#[test]
fn least_loaded_sends_queries_away_from_a_backend_holding_some() {
    held_queries_weigh_on_their_backend("least-loaded");
}

#[test]
fn power_of_two_sends_queries_away_from_a_backend_holding_some() {
    held_queries_weigh_on_their_backend("power-of-two");
}

#[test]
fn an_expired_query_no_longer_weighs_on_its_backend() {
    let slow = DnsBackend::start("slow");
    let fast = DnsBackend::start("fast");
    slow.stall(true);
    let (sozu, front) = start(
        &[
            "--load-balancing-policy",
            "least-loaded",
            "--back-timeout",
            "1",
        ],
        &[&slow, &fast],
    );
    let client = UdpClient::new(front);
    let expired = |m: &sozu_e2e::Metrics| {
        m.backend("dns", "slow", "udp.datagrams.dropped.dns_expired")
            .unwrap_or(0)
    };
    // Ties alternate under LEAST_LOADED: the slow backend has one of the
    // first two queries.
    let mut sent = 0u16;
    while !one_query(
        &client,
        &query(sent, &format!("q{sent}.test")),
        &slow,
        &fast,
    ) {
        sent += 1;
        assert!(
            sent < 2,
            "the slow backend got none of the first two queries"
        );
    }
    let before = expired(&sozu.metrics());
    // Its query expires unanswered (one second): it no longer counts, so
    // the slow backend takes one of the next two queries (were it still
    // counted, every query would go to the fast one).
    sozu.wait_metrics("the held query expired", WAIT, |m| expired(m) > before);
    let slow_before = slow.count();
    let mut to_slow = false;
    for k in 0..2u16 {
        to_slow |= one_query(
            &client,
            &query(0x400 + k, &format!("next{k}.test")),
            &slow,
            &fast,
        );
        if to_slow {
            break;
        }
    }
    assert!(to_slow, "the backend whose query expired got no new query");
    assert_eq!(slow.count(), slow_before + 1);
    drop(sozu);
}
