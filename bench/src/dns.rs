//! `sozu-bench dns`: DNS-shaped one-reply traffic through a proxy.
//!
//! Two loads, the same targets (sozu with `flow_key = "DNS_ID"`, sozu with
//! one-reply flows `responses = 1`, nginx `stream` with `proxy_responses
//! 1`, dnsdist), each measured in turn, alternating over rounds:
//!
//! * built-in (default): an open-loop rate of queries, **every query from
//!   the next of many source ports** (one-reply flows for a flow proxy),
//!   to built-in responders that answer every query; each answer must come
//!   back to the socket whose name it carries (a misrouted answer is
//!   counted). Compared: answered share and the proxy's CPU time per
//!   answered query (exact runtime of its process tree), which a shared
//!   machine can vouch for when raw rates cannot.
//! * `--dnsperf`: dnsperf (closed loop, `-c` sockets × `-q` outstanding)
//!   → proxy → dnsmasq, when both are installed: queries per second and
//!   the share answered, as dnsperf reports them, plus the proxy's CPU.
//!
//! Every proxy's listener gets the same 4 MiB kernel receive buffer
//! ([`LISTENER_RCVBUF`]: sozu `recv_buffer_size`, nginx `listen … rcvbuf=`,
//! dnsdist `setUDPSocketBufferSizes`), so a proxy descheduled for a moment
//! loses no query the others would have kept; the kernel's count of
//! datagrams dropped on the listener socket (`/proc/net/udp`, its `drops`
//! column) and on every UDP socket of the host (`/proc/net/snmp`,
//! `RcvbufErrors`) over each measured window are printed, so a lost query
//! is attributed: to the proxy's listener, to another socket (the proxy's
//! upstream sockets, the backends, the load's), or to none of them (the
//! proxy or a backend dropped it itself).
//!
//! Loopback only, every wait bounded, children stopped by pid.

use std::fmt::Write as _;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use mio::{unix::SourceFd, Events, Interest, Poll, Token};

use crate::oneway::{median, pin_self, print_sozu_drops, set_buffer, sources, tree_cpu_seconds};
use crate::runner::processes::{
    check_interrupted, find_on_path, install_signal_handlers, tree_usage, Proc, Spawn,
};
use crate::runner::proxies::{self, Installed, ProxyOptions, Target};
use crate::runner::{RoundArgs, TargetArgs};

/// Options of `sozu-bench dns`.
#[derive(Args, Debug, Clone)]
pub(crate) struct DnsArgs {
    /// The sozu binary, the targets (sozu: DNS_ID, sozu-flows:
    /// responses = 1, nginx, dnsdist), pinning.
    #[command(flatten)]
    pub(crate) target: TargetArgs,
    /// Source ports (built-in load), measured seconds, warm-up (built-in
    /// load), rounds.
    #[command(flatten)]
    pub(crate) load: RoundArgs,
    /// dnsperf → proxy → dnsmasq instead of the built-in load and
    /// responders.
    #[arg(long)]
    pub(crate) dnsperf: bool,
    /// Built-in load: first source port (taken ports are skipped).
    #[arg(long, default_value_t = 14_000)]
    pub(crate) src_port_base: u16,
    /// Built-in load: offered queries per second.
    #[arg(long, default_value_t = 20_000)]
    pub(crate) rate: u64,
    /// Backends (built-in responders, or dnsmasq instances).
    #[arg(long, default_value_t = 2)]
    pub(crate) backends: usize,
    /// dnsperf: client sockets (`-c`).
    #[arg(long, default_value_t = 16)]
    pub(crate) clients: u32,
    /// dnsperf: outstanding queries (`-q`).
    #[arg(long, default_value_t = 1600)]
    pub(crate) outstanding: u32,
    /// dnsperf: offered queries per second (`-Q`); default: as fast as
    /// the outstanding window allows (closed loop).
    #[arg(long)]
    pub(crate) qps: Option<u64>,
}

/// The kernel receive buffer of every proxy's listener socket, bytes: the
/// `net.core.rmem_max` of a stock tuned host (above it, sozu asks for it
/// with `CAP_NET_ADMIN` and logs the size it got; nginx and dnsdist get the
/// cap).
const LISTENER_RCVBUF: u32 = 4 << 20;

/// A proxy under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DnsTarget {
    SozuDnsId,
    SozuFlows,
    Nginx,
    Dnsdist,
}

impl DnsTarget {
    fn name(self) -> &'static str {
        match self {
            DnsTarget::SozuDnsId => "sozu",
            DnsTarget::SozuFlows => "sozu-flows",
            DnsTarget::Nginx => "nginx",
            DnsTarget::Dnsdist => "dnsdist",
        }
    }

    fn parse(name: &str) -> anyhow::Result<Self> {
        Ok(match name {
            "sozu" => DnsTarget::SozuDnsId,
            "sozu-flows" => DnsTarget::SozuFlows,
            "nginx" => DnsTarget::Nginx,
            "dnsdist" => DnsTarget::Dnsdist,
            other => bail!("unknown target {other:?} (sozu, sozu-flows, nginx, dnsdist)"),
        })
    }
}

/// One measurement.
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    sent: u64,
    answered: u64,
    misrouted: u64,
    qps: f64,
    cpu_seconds: f64,
    fds: u64,
    /// Datagrams the kernel dropped on the proxy's listener socket (its
    /// receive buffer full) during the measured window.
    listener_drops: u64,
    /// `RcvbufErrors` of every UDP socket of the host, same window.
    rcvbuf_errors: u64,
}

impl Sample {
    fn share(&self) -> f64 {
        if self.sent == 0 {
            return 0.0;
        }
        self.answered as f64 / self.sent as f64
    }

    fn cpu_us_per_query(&self) -> f64 {
        if self.answered == 0 {
            return f64::NAN;
        }
        self.cpu_seconds * 1e6 / self.answered as f64
    }
}

// ----- DNS bytes -----

/// Bytes of a query from [`query_bytes`].
const QUERY_LEN: usize = 35;

/// Query `id` for `s<index>.bench.test` A IN (index as 5 digits).
fn query_bytes(id: u16, index: usize) -> [u8; QUERY_LEN] {
    let mut q = [0u8; QUERY_LEN];
    q[..2].copy_from_slice(&id.to_be_bytes());
    q[2] = 0x01; // RD
    q[5] = 1; // QDCOUNT
    q[12] = 6;
    q[13] = b's';
    let mut n = index;
    for slot in q[14..19].iter_mut().rev() {
        *slot = b'0' + (n % 10) as u8;
        n /= 10;
    }
    q[19] = 5;
    q[20..25].copy_from_slice(b"bench");
    q[25] = 4;
    q[26..30].copy_from_slice(b"test");
    // q[30] = 0 ends the name; QTYPE A, QCLASS IN.
    q[32] = 1;
    q[34] = 1;
    q
}

/// The source index an answer's name carries, if it is one of ours.
fn index_of(answer: &[u8]) -> Option<usize> {
    let digits = answer.get(14..19)?;
    (answer.get(12..14)? == [6, b's']).then_some(())?;
    digits.iter().try_fold(0usize, |n, &d| {
        d.is_ascii_digit().then(|| n * 10 + usize::from(d - b'0'))
    })
}

// ----- kernel drop counters -----

/// The kernel's drop count of the UDP sockets bound to `addr` (an IPv4
/// address: `/proc/net/udp`, last column), summed (an `SO_REUSEPORT`
/// group); `None` if unreadable.
pub(crate) fn socket_drops(addr: SocketAddr) -> Option<u64> {
    let SocketAddr::V4(v4) = addr else {
        return None;
    };
    // The kernel prints the address as the native-endian u32 of its
    // network-order bytes, the port in plain hex.
    let local = format!(
        "{:08X}:{:04X}",
        u32::from_ne_bytes(v4.ip().octets()),
        v4.port()
    );
    let table = std::fs::read_to_string("/proc/net/udp").ok()?;
    Some(
        table
            .lines()
            .skip(1)
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                (fields.get(1) == Some(&local.as_str()))
                    .then(|| fields.last()?.parse::<u64>().ok())
                    .flatten()
            })
            .sum(),
    )
}

/// `Udp: … RcvbufErrors …` of `/proc/net/snmp`: datagrams dropped because
/// some UDP socket's receive buffer was full, host-wide.
pub(crate) fn udp_rcvbuf_errors() -> Option<u64> {
    let snmp = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (udp.next()?, udp.next()?);
    let at = names.split_whitespace().position(|n| n == "RcvbufErrors")?;
    values.split_whitespace().nth(at)?.parse().ok()
}

/// Both kernel counters, read at the start and the end of a window.
#[derive(Debug, Clone, Copy)]
struct KernelDrops {
    listener: Option<u64>,
    host: Option<u64>,
}

impl KernelDrops {
    fn read(listen: SocketAddr) -> Self {
        KernelDrops {
            listener: socket_drops(listen),
            host: udp_rcvbuf_errors(),
        }
    }

    /// (listener drops, host-wide receive-buffer errors) since `self`.
    fn since(self, listen: SocketAddr) -> (u64, u64) {
        let now = KernelDrops::read(listen);
        let delta = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => b.saturating_sub(a),
            _ => 0,
        };
        (
            delta(self.listener, now.listener),
            delta(self.host, now.host),
        )
    }
}

// ----- built-in responders -----

/// Sockets answering every query with the same bytes and QR set.
struct Responders {
    addrs: Vec<SocketAddr>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Responders {
    fn start(n: usize) -> anyhow::Result<Responders> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut addrs = Vec::new();
        let mut threads = Vec::new();
        for i in 0..n {
            let socket = UdpSocket::bind("127.0.0.1:0").context("binding a responder")?;
            set_buffer(&socket, libc::SO_RCVBUF, 4 << 20);
            socket.set_read_timeout(Some(Duration::from_millis(100)))?;
            addrs.push(socket.local_addr()?);
            let stop = Arc::clone(&stop);
            threads.push(
                std::thread::Builder::new()
                    .name(format!("responder-{i}"))
                    .spawn(move || {
                        let mut buf = [0u8; 2048];
                        while !stop.load(Ordering::Relaxed) {
                            if let Ok((n, from)) = socket.recv_from(&mut buf) {
                                if n >= 12 {
                                    buf[2] |= 0x80;
                                    let _ = socket.send_to(&buf[..n], from);
                                }
                            }
                        }
                    })?,
            );
        }
        Ok(Responders {
            addrs,
            stop,
            threads,
        })
    }
}

impl Drop for Responders {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

// ----- answers -----

/// Reads answers on every source socket (one epoll loop), counting those
/// that carry the receiving socket's own name, and the others.
struct Collector {
    answered: Arc<AtomicU64>,
    misrouted: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Collector {
    fn start(fds: Vec<i32>) -> anyhow::Result<Collector> {
        let answered = Arc::new(AtomicU64::new(0));
        let misrouted = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let poll = Poll::new()?;
        for (i, fd) in fds.iter().enumerate() {
            poll.registry()
                .register(&mut SourceFd(fd), Token(i), Interest::READABLE)?;
        }
        let (a, m, s) = (
            Arc::clone(&answered),
            Arc::clone(&misrouted),
            Arc::clone(&stop),
        );
        let thread = std::thread::Builder::new()
            .name("collector".into())
            .spawn(move || collect(poll, &fds, &a, &m, &s))?;
        Ok(Collector {
            answered,
            misrouted,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn collect(
    mut poll: Poll,
    fds: &[i32],
    answered: &AtomicU64,
    misrouted: &AtomicU64,
    stop: &AtomicBool,
) {
    let mut events = Events::with_capacity(1024);
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        if poll
            .poll(&mut events, Some(Duration::from_millis(100)))
            .is_err()
        {
            continue;
        }
        for event in events.iter() {
            let index = event.token().0;
            let Some(&fd) = fds.get(index) else { continue };
            loop {
                // SAFETY: a valid fd and a writable buffer of that length.
                let n = unsafe {
                    libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT)
                };
                if n < 0 {
                    break; // EAGAIN (edge-triggered: drained) or an error
                }
                if index_of(&buf[..n as usize]) == Some(index) {
                    answered.fetch_add(1, Ordering::Relaxed);
                } else {
                    misrouted.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// Offers `rate` queries per second for `seconds`, each from the next
/// source; returns how many were sent.
#[allow(clippy::disallowed_methods)] // benchmark shell: pacing
fn offer(
    sources: &[UdpSocket],
    next: &mut usize,
    id: &mut u16,
    target: SocketAddr,
    rate: u64,
    seconds: f64,
) -> u64 {
    let start = Instant::now();
    let total = (rate as f64 * seconds) as u64;
    let mut done = 0u64;
    let mut sent = 0u64;
    while done < total {
        let due = ((start.elapsed().as_secs_f64() * rate as f64) as u64).min(total);
        if done >= due {
            std::thread::sleep(Duration::from_micros(500));
            continue;
        }
        while done < due {
            let index = *next % sources.len();
            *next += 1;
            *id = id.wrapping_add(1);
            let q = query_bytes(*id, index);
            if sources[index].send_to(&q, target).is_ok() {
                sent += 1;
            }
            done += 1;
        }
    }
    sent
}

/// Sends a query through `listen` every 100 ms until it is answered.
#[allow(clippy::disallowed_methods)] // benchmark shell: bounded wait
fn wait_answering(proc: &mut Proc, listen: SocketAddr) -> anyhow::Result<()> {
    let probe = UdpSocket::bind("127.0.0.1:0")?;
    probe.set_read_timeout(Some(Duration::from_millis(100)))?;
    let start = Instant::now();
    let mut buf = [0u8; 2048];
    while start.elapsed() < Duration::from_secs(15) {
        check_interrupted()?;
        if let Some(status) = proc.exited() {
            bail!("{} exited before answering ({status})", proc.name);
        }
        let _ = probe.send_to(&query_bytes(7, 0), listen);
        if let Ok((n, _)) = probe.recv_from(&mut buf) {
            if n >= 12 && buf[2] & 0x80 != 0 {
                return Ok(());
            }
        }
    }
    bail!(
        "{} answered no query through {listen} within 15 s",
        proc.name
    )
}

// ----- dnsmasq and dnsdist -----

/// dnsmasq answering `*.bench.test` itself (no upstream), in the foreground.
fn start_dnsmasq(dir: &Path, i: usize, cpu: Option<usize>) -> anyhow::Result<(Proc, SocketAddr)> {
    let Some(bin) = find_on_path("dnsmasq").or_else(|| {
        let p = PathBuf::from("/usr/sbin/dnsmasq");
        p.is_file().then_some(p)
    }) else {
        bail!("dnsmasq not installed");
    };
    let addr = proxies::free_udp_port()?;
    let argv = vec![
        bin.display().to_string(),
        "--keep-in-foreground".into(),
        "--conf-file=/dev/null".into(),
        "--no-resolv".into(),
        "--no-hosts".into(),
        "--bind-interfaces".into(),
        "--listen-address=127.0.0.1".into(),
        format!("--port={}", addr.port()),
        "--address=/bench.test/192.0.2.1".into(),
        "--cache-size=10000".into(),
        "--dns-forward-max=10000".into(),
        format!(
            "--pid-file={}",
            dir.join(format!("dnsmasq-{i}.pid")).display()
        ),
        "--user=root".into(),
    ];
    let proc = Proc::spawn(Spawn {
        name: "dnsmasq",
        argv,
        cpu,
        log: Some(dir.join(format!("dnsmasq-{i}.log"))),
    })?;
    Ok((proc, addr))
}

fn dnsdist_config(listen: SocketAddr, backends: &[SocketAddr]) -> String {
    let mut c = String::new();
    // The listener's receive buffer as the other proxies get it (dnsdist
    // 1.7 keeps the kernel default otherwise); 0: the send buffer as is.
    let _ = writeln!(c, "setUDPSocketBufferSizes({LISTENER_RCVBUF}, 0)");
    let _ = writeln!(c, "setLocal(\"{listen}\")");
    let _ = writeln!(c, "setACL({{\"127.0.0.0/8\"}})");
    for b in backends {
        let _ = writeln!(c, "newServer({{address=\"{b}\"}})");
    }
    let _ = writeln!(c, "setServerPolicy(roundrobin)");
    c
}

fn spawn_target(
    target: DnsTarget,
    installed: &Installed,
    dir: &Path,
    listen: SocketAddr,
    backends: &[SocketAddr],
    cpu: Option<usize>,
) -> anyhow::Result<Proc> {
    let options = ProxyOptions {
        responses: 1,
        max_flows: 30_000,
        one_way: false,
        dns_id: target == DnsTarget::SozuDnsId,
        recv_buffer: Some(LISTENER_RCVBUF),
        idle_listeners: 0,
    };
    match target {
        DnsTarget::SozuDnsId | DnsTarget::SozuFlows => {
            proxies::spawn(Target::Sozu, installed, dir, listen, backends, options, cpu)
        }
        DnsTarget::Nginx => proxies::spawn(
            Target::Nginx,
            installed,
            dir,
            listen,
            backends,
            options,
            cpu,
        ),
        DnsTarget::Dnsdist => {
            let Some(bin) = find_on_path("dnsdist") else {
                bail!("dnsdist not installed");
            };
            std::fs::create_dir_all(dir)?;
            let config = dir.join("dnsdist.conf");
            std::fs::write(&config, dnsdist_config(listen, backends))?;
            Proc::spawn(Spawn {
                name: "dnsdist",
                argv: vec![
                    bin.display().to_string(),
                    "--supervised".into(),
                    "--disable-syslog".into(),
                    "-C".into(),
                    config.display().to_string(),
                ],
                cpu,
                log: Some(dir.join("dnsdist.log")),
            })
        }
    }
}

fn missing(target: DnsTarget, installed: &Installed) -> Option<&'static str> {
    match target {
        DnsTarget::SozuDnsId | DnsTarget::SozuFlows => installed.missing(Target::Sozu),
        DnsTarget::Nginx => installed.missing(Target::Nginx),
        DnsTarget::Dnsdist => find_on_path("dnsdist")
            .is_none()
            .then_some("dnsdist not installed"),
    }
}

// ----- dnsperf -----

/// Runs dnsperf against `listen`; returns (sent, completed, qps).
fn run_dnsperf(
    dir: &Path,
    listen: SocketAddr,
    args: &DnsArgs,
    cpu: Option<usize>,
) -> anyhow::Result<(u64, u64, f64)> {
    let Some(bin) = find_on_path("dnsperf") else {
        bail!("dnsperf not installed");
    };
    let queries = dir.join("queries.txt");
    if !queries.is_file() {
        let mut text = String::new();
        for i in 0..1000 {
            let _ = writeln!(text, "q{i}.bench.test A");
        }
        std::fs::write(&queries, text)?;
    }
    let mut argv = Vec::new();
    if let Some(cpu) = cpu {
        if let Some(taskset) = find_on_path("taskset") {
            argv.extend([taskset.display().to_string(), "-c".into(), cpu.to_string()]);
        }
    }
    argv.extend([
        bin.display().to_string(),
        "-s".into(),
        listen.ip().to_string(),
        "-p".into(),
        listen.port().to_string(),
        "-d".into(),
        queries.display().to_string(),
        "-l".into(),
        format!("{}", args.load.duration),
        "-c".into(),
        args.clients.to_string(),
        "-q".into(),
        args.outstanding.to_string(),
        "-t".into(),
        "2".into(),
    ]);
    if let Some(qps) = args.qps {
        argv.extend(["-Q".into(), qps.to_string()]);
    }
    let out = std::process::Command::new(&argv[0])
        .args(&argv[1..])
        .output()
        .context("running dnsperf")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let number = |label: &str| -> Option<f64> {
        let line = text.lines().find(|l| l.trim_start().starts_with(label))?;
        line.split(':')
            .nth(1)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    let (Some(sent), Some(done), Some(qps)) = (
        number("Queries sent"),
        number("Queries completed"),
        number("Queries per second"),
    ) else {
        bail!("unexpected dnsperf output:\n{text}");
    };
    Ok((sent as u64, done as u64, qps))
}

// ----- the run -----

/// `sozu-bench dns`.
#[allow(clippy::disallowed_methods)] // benchmark shell: settle time
pub(crate) fn run(args: &DnsArgs) -> anyhow::Result<()> {
    install_signal_handlers();
    let sozu = crate::runner::resolve_sozu(&args.target.sozu);
    let installed = Installed::detect(&sozu);
    let wanted: Vec<DnsTarget> = if args.target.targets.is_empty() {
        vec![
            DnsTarget::SozuDnsId,
            DnsTarget::SozuFlows,
            DnsTarget::Nginx,
            DnsTarget::Dnsdist,
        ]
    } else {
        args.target
            .targets
            .iter()
            .map(|t| DnsTarget::parse(t))
            .collect::<anyhow::Result<_>>()?
    };
    let targets: Vec<DnsTarget> = wanted
        .into_iter()
        .filter(|&t| match missing(t, &installed) {
            Some(why) => {
                eprintln!("skipping {}: {why}", t.name());
                false
            }
            None => true,
        })
        .collect();
    if targets.is_empty() {
        bail!("no target to measure");
    }
    let (proxy_cpu, load_cpu) = if args.target.no_pin {
        (None, None)
    } else {
        (Some(0), Some(1))
    };
    let dir = tempfile::tempdir()?;
    // Backends: dnsmasq (dnsperf) or built-in responders, on the load's CPU.
    let mut dnsmasqs: Vec<Proc> = Vec::new();
    let mut responders: Option<Responders> = None;
    let backends: Vec<SocketAddr> = if args.dnsperf {
        let mut addrs = Vec::new();
        for i in 0..args.backends.max(1) {
            let (proc, addr) = start_dnsmasq(dir.path(), i, load_cpu)?;
            dnsmasqs.push(proc);
            backends_ready(addr)?;
            addrs.push(addr);
        }
        addrs
    } else {
        if let Some(cpu) = load_cpu {
            pin_self(cpu);
        }
        let r = Responders::start(args.backends.max(1))?;
        let addrs = r.addrs.clone();
        responders = Some(r);
        addrs
    };
    let mut source_sockets = Vec::new();
    let mut collector = None;
    if !args.dnsperf {
        source_sockets = sources(args.load.sources, args.src_port_base)?;
        for s in &source_sockets {
            set_buffer(s, libc::SO_RCVBUF, 1 << 16);
        }
        let fds = source_sockets.iter().map(|s| s.as_raw_fd()).collect();
        collector = Some(Collector::start(fds)?);
    }
    if args.dnsperf {
        println!(
            "dns (dnsperf): {} clients × {} outstanding, {} queries/s offered, {} s, {} dnsmasq backend(s), {} rounds",
            args.clients,
            args.outstanding,
            args.qps.map_or("as many as answered".into(), |q| q.to_string()),
            args.load.duration,
            backends.len(),
            args.load.rounds
        );
    } else {
        println!(
            "dns (built-in): {} sources (a new one per query), {} queries/s offered, {} s measured after {} s, {} responders, {} rounds",
            source_sockets.len(),
            args.rate,
            args.load.duration,
            args.load.warmup,
            backends.len(),
            args.load.rounds
        );
    }
    let mut samples: Vec<(DnsTarget, Sample)> = Vec::new();
    let (mut next, mut id) = (0usize, 0u16);
    for round in 0..args.load.rounds {
        for &target in &targets {
            check_interrupted()?;
            let listen = proxies::free_udp_port()?;
            let run_dir = dir.path().join(format!("{}-{round}", target.name()));
            let mut proc =
                spawn_target(target, &installed, &run_dir, listen, &backends, proxy_cpu)?;
            let ready = wait_answering(&mut proc, listen);
            proc.ready_or_log(ready)?;
            let sample = if args.dnsperf {
                let cpu0 = tree_cpu_seconds(proc.pid());
                let drops0 = KernelDrops::read(listen);
                let (sent, answered, qps) = run_dnsperf(dir.path(), listen, args, load_cpu)?;
                let (listener_drops, rcvbuf_errors) = drops0.since(listen);
                let cpu1 = tree_cpu_seconds(proc.pid());
                Sample {
                    sent,
                    answered,
                    misrouted: 0,
                    qps,
                    cpu_seconds: cpu1 - cpu0,
                    fds: tree_usage(proc.pid()).fds,
                    listener_drops,
                    rcvbuf_errors,
                }
            } else {
                let Some(c) = &collector else {
                    bail!("no collector");
                };
                offer(
                    &source_sockets,
                    &mut next,
                    &mut id,
                    listen,
                    args.rate,
                    args.load.warmup,
                );
                std::thread::sleep(Duration::from_millis(300));
                let (a0, m0) = (
                    c.answered.load(Ordering::Relaxed),
                    c.misrouted.load(Ordering::Relaxed),
                );
                let cpu0 = tree_cpu_seconds(proc.pid());
                let drops0 = KernelDrops::read(listen);
                let sent = offer(
                    &source_sockets,
                    &mut next,
                    &mut id,
                    listen,
                    args.rate,
                    args.load.duration,
                );
                std::thread::sleep(Duration::from_millis(500));
                let cpu1 = tree_cpu_seconds(proc.pid());
                let (listener_drops, rcvbuf_errors) = drops0.since(listen);
                let answered = c.answered.load(Ordering::Relaxed) - a0;
                Sample {
                    sent,
                    answered,
                    misrouted: c.misrouted.load(Ordering::Relaxed) - m0,
                    qps: answered as f64 / args.load.duration,
                    cpu_seconds: cpu1 - cpu0,
                    fds: tree_usage(proc.pid()).fds,
                    listener_drops,
                    rcvbuf_errors,
                }
            };
            if matches!(target, DnsTarget::SozuDnsId | DnsTarget::SozuFlows) {
                print_sozu_drops(&sozu, &run_dir);
            }
            proc.stop();
            println!(
                "  round {round} {:10}: sent {:>9} answered {:>9} ({:6.2} %) misrouted {:>4}  {:>9.0} q/s  proxy CPU {:6.3} s = {:6.2} µs/query  fds {:>6}",
                target.name(),
                sample.sent,
                sample.answered,
                100.0 * sample.share(),
                sample.misrouted,
                sample.qps,
                sample.cpu_seconds,
                sample.cpu_us_per_query(),
                sample.fds
            );
            println!(
                "    kernel: {} dropped on the listener's full receive buffer, {} receive-buffer drops on all UDP sockets of the host",
                sample.listener_drops, sample.rcvbuf_errors
            );
            samples.push((target, sample));
        }
    }
    drop(collector);
    println!("\nmedians over {} rounds:", args.load.rounds);
    println!(
        "| target | answered | queries/s | proxy CPU µs / query | proxy fds | listener buffer drops | host UDP buffer drops |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    let mut rows = Vec::new();
    for &target in &targets {
        let mine: Vec<Sample> = samples
            .iter()
            .filter(|(t, _)| *t == target)
            .map(|(_, s)| *s)
            .collect();
        let share = median(mine.iter().map(|s| s.share()).collect());
        let qps = median(mine.iter().map(|s| s.qps).collect());
        let cpu = median(mine.iter().map(|s| s.cpu_us_per_query()).collect());
        let fds = median(mine.iter().map(|s| s.fds as f64).collect());
        let listener_drops = median(mine.iter().map(|s| s.listener_drops as f64).collect());
        let host_drops = median(mine.iter().map(|s| s.rcvbuf_errors as f64).collect());
        println!(
            "| {} | {:.2} % | {:.0} | {:.2} | {:.0} | {:.0} | {:.0} |",
            target.name(),
            100.0 * share,
            qps,
            cpu,
            fds,
            listener_drops,
            host_drops
        );
        rows.push((target, qps, cpu));
    }
    if let Some(&(_, sq, sc)) = rows.iter().find(|r| r.0 == DnsTarget::SozuDnsId) {
        for &(t, q, c) in rows.iter().filter(|r| r.0 != DnsTarget::SozuDnsId) {
            println!(
                "sozu vs {}: {:.2}× the queries/s, {:.2}× less CPU per query",
                t.name(),
                sq / q,
                c / sc
            );
        }
    }
    drop(responders);
    drop(dnsmasqs);
    Ok(())
}

/// Waits until a backend at `addr` answers a query (dnsmasq starting).
#[allow(clippy::disallowed_methods)] // benchmark shell: bounded wait
fn backends_ready(addr: SocketAddr) -> anyhow::Result<()> {
    let probe = UdpSocket::bind("127.0.0.1:0")?;
    probe.set_read_timeout(Some(Duration::from_millis(100)))?;
    let start = Instant::now();
    let mut buf = [0u8; 512];
    while start.elapsed() < Duration::from_secs(10) {
        check_interrupted()?;
        let _ = probe.send_to(&query_bytes(1, 0), addr);
        if probe.recv_from(&mut buf).is_ok() {
            return Ok(());
        }
    }
    bail!("dnsmasq at {addr} answered nothing within 10 s")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_receive_buffer_shows_in_the_socket_and_host_counters() {
        let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
        set_buffer(&sink, libc::SO_RCVBUF, 4096);
        let addr = sink.local_addr().unwrap();
        let before = KernelDrops::read(addr);
        assert_eq!(before.listener, Some(0), "a new socket has dropped nothing");
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        // Never read: past a few datagrams, the buffer is full.
        for _ in 0..200 {
            let _ = sender.send_to(&[0u8; 512], addr);
        }
        let (listener, host) = before.since(addr);
        assert!(listener > 100, "{listener} drops counted on the socket");
        assert!(host >= listener, "the host count covers the socket's");
    }

    #[test]
    fn every_proxy_listener_gets_the_same_receive_buffer() {
        let listen: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let backend: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        assert!(dnsdist_config(listen, &[backend])
            .contains(&format!("setUDPSocketBufferSizes({LISTENER_RCVBUF}, 0)")));
    }
}
