//! `sozu-bench gen`: the UDP load generator.
//!
//! F flows are F connected client sockets driven by one epoll loop (mio).
//! Closed loop keeps W datagrams in flight per flow; open loop sends at a
//! fixed total rate. Every datagram carries flow id, sequence and send
//! time (see `stats`), so a reply is matched to its flow, its RTT measured
//! and a reply landing on another flow's socket counted as misrouted.
//! It only ever talks to loopback addresses and every phase is bounded by
//! the duration plus the loss timeout.

use std::collections::{HashSet, VecDeque};
use std::io::{self, ErrorKind};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token};
use serde::{Deserialize, Serialize};
use sozu_lib::metrics::Histogram;

use crate::runner::processes::{tree_cpu, TreeCpu};
use crate::stats::{classify_reply, rtt_histogram, Header, Reply, RttSummary, HEADER_LEN};

/// Flows opened per source address before moving to the next 127.0.0.x.
const FLOWS_PER_SOURCE_IP: usize = 4000;

/// Options of `sozu-bench gen`.
#[derive(Args, Debug, Clone)]
pub(crate) struct GenArgs {
    /// Where to send (repeatable: flow i uses target i % n). Loopback only.
    #[arg(long = "target", required = true)]
    pub targets: Vec<SocketAddr>,
    /// Number of flows (client sockets).
    #[arg(long, default_value_t = 64)]
    pub flows: usize,
    /// Flows that keep sending; the others send until their first reply
    /// and then stay open and silent (live but idle). Default: all.
    #[arg(long)]
    pub active: Option<usize>,
    /// Datagrams in flight per flow (closed loop).
    #[arg(long, default_value_t = 1)]
    pub window: u32,
    /// Open loop: total datagrams per second over the active flows.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Datagram size in bytes (at least 24).
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// Measured sending time, seconds.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Unmeasured time before the measurement starts, seconds. The
    /// measurement also waits until every flow has started and every idle
    /// flow got its reply (bounded by --setup-limit).
    #[arg(long, default_value_t = 0.5)]
    pub warmup: f64,
    /// Longest wait for all flows to be set up before measuring anyway.
    #[arg(long, default_value_t = 60.0)]
    pub setup_limit: f64,
    /// Stop after this many datagrams sent in total.
    #[arg(long)]
    pub count: Option<u64>,
    /// Each flow sends this many datagrams (per socket with --churn).
    #[arg(long)]
    pub per_flow_count: Option<u32>,
    /// After --per-flow-count replies, close the socket and open a new
    /// one (a new flow for the proxy): DNS-like one-shot flows.
    #[arg(long, requires = "per_flow_count")]
    pub churn: bool,
    /// Source addresses 127.0.0.1..=127.0.0.N (default: one per 4000 flows).
    #[arg(long)]
    pub src_ips: Option<u8>,
    /// First client port (fixed ports below the ephemeral range; 0 = let
    /// the kernel pick ephemeral ports).
    #[arg(long, default_value_t = 10_000)]
    pub src_port_base: u16,
    /// A flow with no reply for this long counts its in-flight datagrams as
    /// lost and resends; also bounds the final drain.
    #[arg(long, default_value_t = 500)]
    pub loss_timeout_ms: u64,
    /// Flows started per millisecond (avoids one huge initial burst that
    /// would overflow the proxy's socket buffer).
    #[arg(long, default_value_t = 20)]
    pub ramp: usize,
    /// Most flows started but not yet answered at any time: new flows
    /// wait while the proxy is still setting up this many.
    #[arg(long, default_value_t = 512)]
    pub max_pending: usize,
    /// Also measure this process tree's CPU time and sleeps over the
    /// measured sending window (the proxy under test: its cost per round
    /// trip without the set-up and the final drain).
    #[arg(long)]
    pub watch_pid: Option<i32>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// What a generator run measured (all counters are for the measured window).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct GenReport {
    /// Flows (sockets) opened.
    pub flows: usize,
    /// Flows that kept sending.
    pub active_flows: usize,
    /// Flows that got at least one valid reply.
    pub established_flows: usize,
    /// Datagram size.
    pub payload: usize,
    /// Measured window in seconds.
    pub seconds: f64,
    /// Datagrams sent in the window.
    pub sent: u64,
    /// Replies received for datagrams sent in the window.
    pub received: u64,
    /// `sent - received`.
    pub lost: u64,
    /// Replies that arrived after their flow had given up on them.
    pub late: u64,
    /// Replies that reached another flow's socket.
    pub misrouted: u64,
    /// Datagrams that were not benchmark replies.
    pub invalid: u64,
    /// Replies older than one already received on the same flow.
    pub reordered: u64,
    /// Sends refused by the kernel (buffer full).
    pub send_errors: u64,
    /// ICMP port unreachable seen on a flow socket.
    pub refused: u64,
    /// Loss timeouts fired.
    pub timeouts: u64,
    /// Received replies per second.
    pub pps: f64,
    /// Sent datagrams per second.
    pub sent_pps: f64,
    /// Flows (sockets) that finished their --per-flow-count in the window.
    pub flows_completed: u64,
    /// Of those, flows that got every reply, in order, without timeout.
    pub flows_clean: u64,
    /// `flows_completed` per second.
    pub flows_per_s: f64,
    /// Round trip times.
    pub rtt: RttSummary,
    /// The `--watch-pid` tree over the sending window.
    #[serde(default)]
    pub watched: Option<WatchedCpu>,
}

/// CPU time and sleeps of the `--watch-pid` tree while the measured
/// window was sending.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub(crate) struct WatchedCpu {
    /// Nanoseconds on CPU, every thread of the tree.
    pub cpu_ns: u64,
    /// Voluntary context switches (went to sleep waiting).
    pub sleeps: u64,
}

impl GenReport {
    /// Watched CPU microseconds per completed round trip (reply received).
    pub(crate) fn cpu_us_per_round_trip(&self) -> Option<f64> {
        let w = self.watched?;
        (self.received > 0).then(|| w.cpu_ns as f64 / 1000.0 / self.received as f64)
    }

    /// Watched sleeps per completed round trip.
    pub(crate) fn sleeps_per_round_trip(&self) -> Option<f64> {
        let w = self.watched?;
        (self.received > 0).then(|| w.sleeps as f64 / self.received as f64)
    }
}

struct Flow {
    socket: UdpSocket,
    target: SocketAddr,
    source: IpAddr,
    active: bool,
    started: bool,
    done: bool,
    inflight: u32,
    /// Sent / received on the current socket (reset by churn).
    sent_here: u32,
    received_here: u32,
    next_seq: u64,
    /// Replies with a lower sequence were given up on (or belong to a
    /// closed socket) and do not free window slots.
    epoch_seq: u64,
    highest_seq: Option<u64>,
    clean: bool,
    /// Started and waiting for its first reply (counted in `pending`).
    pending: bool,
    last_progress: Instant,
}

fn open_socket(source: SocketAddr, target: SocketAddr) -> io::Result<UdpSocket> {
    let socket = std::net::UdpSocket::bind(source)?;
    socket.connect(target)?;
    socket.set_nonblocking(true)?;
    Ok(UdpSocket::from_std(socket))
}

/// First port of the kernel's ephemeral range (32768 when unreadable).
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768)
}

/// Hands out fixed client ports below the ephemeral range, per source
/// address. A proxy's connected upstream sockets pick their port from the
/// ephemeral range while still unbound (wildcard address), so any client
/// socket there, on any 127.0.0.x, takes a port away from the proxy; with
/// 16,000 flows on each side the range (28,232 ports) runs out.
///
/// Ports picked by the kernel (`--src-port-base 0`, a plan run out, or a
/// churned flow's new socket) are checked against the last
/// [`RECENT_PORTS`] the plan handed out: the kernel may give back a port
/// just closed, which would make the "new" flow an old one for the proxy.
struct PortPlan {
    next: Vec<u16>,
    end: u16,
    recent: RecentPorts,
}

/// How many kernel-picked ports per run are remembered (well under the
/// 28,232 ports of the default ephemeral range, so a fresh one is found in
/// a few tries).
const RECENT_PORTS: usize = 8192;

/// Kernel picks refused in a row before one is taken anyway (each refused
/// socket is kept open meanwhile, so the kernel cannot offer it again).
const EPHEMERAL_TRIES: usize = 64;

/// The last [`RECENT_PORTS`] kernel-picked source addresses, oldest first.
#[derive(Default)]
struct RecentPorts {
    order: VecDeque<SocketAddr>,
    set: HashSet<SocketAddr>,
}

impl RecentPorts {
    fn contains(&self, address: &SocketAddr) -> bool {
        self.set.contains(address)
    }

    fn remember(&mut self, address: SocketAddr) {
        if self.set.insert(address) {
            self.order.push_back(address);
            if self.order.len() > RECENT_PORTS {
                if let Some(oldest) = self.order.pop_front() {
                    self.set.remove(&oldest);
                }
            }
        }
    }
}

impl PortPlan {
    fn new(base: u16, sources: usize) -> PortPlan {
        PortPlan {
            next: vec![base; sources],
            end: if base == 0 { 0 } else { ephemeral_low() },
            recent: RecentPorts::default(),
        }
    }

    /// A socket from `ip` on a port the kernel picks, not one of the recent
    /// picks (unless [`EPHEMERAL_TRIES`] picks in a row were recent).
    fn open_ephemeral(&mut self, ip: IpAddr, target: SocketAddr) -> io::Result<UdpSocket> {
        let mut refused = Vec::new();
        loop {
            let socket = open_socket(SocketAddr::new(ip, 0), target)?;
            let local = socket.local_addr()?;
            if !self.recent.contains(&local) || refused.len() >= EPHEMERAL_TRIES {
                self.recent.remember(local);
                return Ok(socket);
            }
            refused.push(socket);
        }
    }

    /// Opens a socket from `ip` (source slot `slot`) to `target` on the
    /// next free planned port; an ephemeral port once the plan runs out.
    fn open(&mut self, slot: usize, ip: IpAddr, target: SocketAddr) -> io::Result<UdpSocket> {
        while self.next[slot] != 0 && self.next[slot] < self.end {
            let port = self.next[slot];
            self.next[slot] += 1;
            match open_socket(SocketAddr::new(ip, port), target) {
                Err(e) if e.kind() == ErrorKind::AddrInUse => continue,
                other => return other,
            }
        }
        self.open_ephemeral(ip, target)
    }
}

/// Source slot and address of flow `index`.
fn source_for(index: usize, target: SocketAddr, src_ips: u8) -> (usize, IpAddr) {
    let slot = index % usize::from(src_ips.max(1));
    match target {
        SocketAddr::V4(_) => (slot, IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + slot as u8))),
        SocketAddr::V6(_) => (0, IpAddr::V6(Ipv6Addr::LOCALHOST)),
    }
}

fn is_send_backpressure(e: &io::Error) -> bool {
    e.kind() == ErrorKind::WouldBlock || e.raw_os_error() == Some(libc::ENOBUFS)
}

/// Runs the generator; its report (JSON or text) goes to stdout.
pub(crate) fn run(args: &GenArgs) -> anyhow::Result<()> {
    let report = generate(args)?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_report(&report);
    }
    Ok(())
}

fn print_report(r: &GenReport) {
    let us = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
    println!(
        "flows {} (active {}, established {}), payload {} B, {:.2} s",
        r.flows, r.active_flows, r.established_flows, r.payload, r.seconds
    );
    println!(
        "sent {} received {} lost {} late {} misrouted {} invalid {} reordered {} send_errors {} refused {} timeouts {}",
        r.sent, r.received, r.lost, r.late, r.misrouted, r.invalid, r.reordered, r.send_errors, r.refused, r.timeouts
    );
    println!(
        "pps {:.0} (sent {:.0}), flows completed {} (clean {}) = {:.0}/s",
        r.pps, r.sent_pps, r.flows_completed, r.flows_clean, r.flows_per_s
    );
    println!(
        "rtt us p50 {} p99 {} p999 {} mean {} max {}",
        us(r.rtt.p50_us),
        us(r.rtt.p99_us),
        us(r.rtt.p999_us),
        us(r.rtt.mean_us),
        us(r.rtt.max_us)
    );
    if let (Some(w), Some(cpu), Some(sleeps)) = (
        r.watched,
        r.cpu_us_per_round_trip(),
        r.sleeps_per_round_trip(),
    ) {
        println!(
            "watched tree: {:.3} s on CPU, {} sleeps = {cpu:.2} us and {sleeps:.2} sleeps per round trip",
            w.cpu_ns as f64 / 1e9,
            w.sleeps
        );
    }
}

/// Mutable state of one generator run.
struct Generator<'a> {
    args: &'a GenArgs,
    flows: Vec<Flow>,
    ports: PortPlan,
    poll: Poll,
    start: Instant,
    measure_start_ns: u64,
    buf: Vec<u8>,
    histogram: Histogram,
    report: GenReport,
    outstanding: u64,
    total_sent: u64,
    done_count: usize,
    idle_done: usize,
    pending: usize,
    sending: bool,
    measuring: bool,
    measure_start: Instant,
    send_end: Instant,
}

impl Generator<'_> {
    /// Closes the watched window: what the watched tree spent since
    /// `start` (taken when measuring began).
    fn watch_stop(&mut self, start: Option<TreeCpu>) {
        if let (Some(pid), Some(start)) = (self.args.watch_pid, start) {
            let spent = tree_cpu(pid).since(start);
            self.report.watched = Some(WatchedCpu {
                cpu_ns: spent.cpu_ns,
                sleeps: spent.sleeps,
            });
        }
    }

    fn now_ns(&self, now: Instant) -> u64 {
        now.duration_since(self.start).as_nanos() as u64
    }

    fn may_send(&self, flow: &Flow) -> bool {
        self.sending
            && !flow.done
            && self.args.count.is_none_or(|c| self.total_sent < c)
            && self.args.per_flow_count.is_none_or(|c| flow.sent_here < c)
    }

    /// Sends one datagram on flow `i`; false when nothing was sent.
    #[allow(clippy::disallowed_methods)] // I/O shell: stamps the send time
    fn send_one(&mut self, i: usize) -> bool {
        if !self.may_send(&self.flows[i]) {
            return false;
        }
        let now = Instant::now();
        let sent_ns = self.now_ns(now);
        let flow = &mut self.flows[i];
        Header {
            flow: i as u32,
            seq: flow.next_seq,
            sent_ns,
        }
        .write(&mut self.buf);
        match flow.socket.send(&self.buf) {
            Ok(_) => {
                flow.next_seq += 1;
                flow.sent_here += 1;
                flow.inflight += 1;
                if flow.inflight == 1 {
                    flow.last_progress = now;
                }
                self.outstanding += 1;
                self.total_sent += 1;
                if sent_ns >= self.measure_start_ns {
                    self.report.sent += 1;
                }
                true
            }
            Err(e) if is_send_backpressure(&e) => {
                self.report.send_errors += 1;
                false
            }
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                self.report.refused += 1;
                false
            }
            Err(_) => {
                self.report.send_errors += 1;
                false
            }
        }
    }

    /// Closed loop: tops flow `i` up to its window.
    fn fill(&mut self, i: usize) {
        let window = if self.flows[i].active {
            self.args.window
        } else {
            1
        };
        while self.flows[i].inflight < window {
            if !self.send_one(i) {
                break;
            }
        }
    }

    fn finish_socket(&mut self, i: usize, now: Instant) -> anyhow::Result<()> {
        let in_window = now >= self.measure_start && now <= self.send_end;
        let flow = &self.flows[i];
        if in_window && flow.active {
            self.report.flows_completed += 1;
            if flow.clean {
                self.report.flows_clean += 1;
            }
        }
        let churn = self.args.churn && flow.active;
        if !churn {
            self.flows[i].done = true;
            self.done_count += 1;
            if !self.flows[i].active {
                self.idle_done += 1;
            }
            return Ok(());
        }
        let flow = &mut self.flows[i];
        // Drop the old socket first so its fd is free; the new one gets a
        // new source port, hence a new flow for the proxy.
        self.poll.registry().deregister(&mut flow.socket)?;
        // A fresh ephemeral port, none of the recent ones (the kernel may
        // offer the port just closed): a new flow for the proxy each time.
        flow.socket = self
            .ports
            .open_ephemeral(flow.source, flow.target)
            .context("reopening a churned flow")?;
        self.poll
            .registry()
            .register(&mut flow.socket, Token(i), Interest::READABLE)?;
        self.outstanding -= u64::from(flow.inflight);
        flow.inflight = 0;
        flow.sent_here = 0;
        flow.received_here = 0;
        flow.epoch_seq = flow.next_seq;
        flow.highest_seq = None;
        flow.clean = true;
        flow.last_progress = now;
        Ok(())
    }

    fn on_reply(&mut self, i: usize, len: usize, now: Instant) -> anyhow::Result<()> {
        let header = match classify_reply(i as u32, &self.buf[..len]) {
            Reply::Valid(h) => h,
            Reply::Misrouted(_) => {
                self.report.misrouted += 1;
                return Ok(());
            }
            Reply::Invalid => {
                self.report.invalid += 1;
                return Ok(());
            }
        };
        let measured = header.sent_ns >= self.measure_start_ns;
        if measured {
            self.report.received += 1;
            self.histogram
                .record(self.now_ns(now).saturating_sub(header.sent_ns));
        }
        let flow = &mut self.flows[i];
        if flow.pending {
            flow.pending = false;
            self.pending -= 1;
        }
        if flow.highest_seq.is_some_and(|h| header.seq < h) {
            self.report.reordered += 1;
            flow.clean = false;
        } else {
            flow.highest_seq = Some(header.seq);
        }
        if header.seq < flow.epoch_seq || flow.done || flow.inflight == 0 {
            // Given up on, or a duplicate: it frees no window slot.
            self.report.late += 1;
            return Ok(());
        }
        flow.inflight -= 1;
        self.outstanding -= 1;
        flow.received_here += 1;
        flow.last_progress = now;
        let target = if flow.active {
            self.args.per_flow_count
        } else {
            Some(1)
        };
        if target.is_some_and(|t| flow.received_here >= t) {
            self.finish_socket(i, now)?;
        }
        if self.args.rate.is_none() || !self.flows[i].active {
            self.fill(i);
        }
        Ok(())
    }

    fn drain(&mut self, i: usize) -> anyhow::Result<()> {
        loop {
            match self.flows[i].socket.recv(&mut self.buf) {
                Ok(len) => {
                    #[allow(clippy::disallowed_methods)] // I/O shell: RTT
                    let now = Instant::now();
                    self.on_reply(i, len, now)?;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => self.report.refused += 1,
                Err(e) => return Err(e).context("recv on a flow socket"),
            }
        }
    }

    /// Gives up on replies that are overdue and restarts stalled flows.
    fn scan_timeouts(&mut self, now: Instant) {
        let timeout = Duration::from_millis(self.args.loss_timeout_ms);
        for i in 0..self.flows.len() {
            let flow = &mut self.flows[i];
            if !flow.started || flow.done {
                continue;
            }
            if flow.inflight > 0 && now.duration_since(flow.last_progress) > timeout {
                self.report.timeouts += 1;
                self.outstanding -= u64::from(flow.inflight);
                flow.inflight = 0;
                flow.epoch_seq = flow.next_seq;
                flow.sent_here = flow.received_here;
                flow.clean = false;
                flow.last_progress = now;
            }
            let closed_loop = self.args.rate.is_none() || !flow.active;
            if flow.inflight == 0 && closed_loop {
                self.fill(i);
            }
        }
    }
}

/// Runs one generator measurement and returns its report.
#[allow(clippy::disallowed_methods)] // I/O shell: the loop reads the clock
pub(crate) fn generate(args: &GenArgs) -> anyhow::Result<GenReport> {
    if args.payload < HEADER_LEN || args.payload > 65_000 {
        bail!(
            "--payload {} must be within {HEADER_LEN}..=65000",
            args.payload
        );
    }
    if args.flows == 0 {
        bail!("--flows must be at least 1");
    }
    if let Some(t) = args.targets.iter().find(|t| !t.ip().is_loopback()) {
        bail!("--target {t} is not a loopback address (the tool only runs on loopback)");
    }
    if args.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        bail!("--rate must be a positive number");
    }
    let active = args.active.unwrap_or(args.flows).min(args.flows);
    let src_ips = args
        .src_ips
        .unwrap_or_else(|| args.flows.div_ceil(FLOWS_PER_SOURCE_IP).clamp(1, 250) as u8);
    let poll = Poll::new()?;
    let start = Instant::now();
    let mut ports = PortPlan::new(args.src_port_base, usize::from(src_ips.max(1)));
    let mut flows = Vec::with_capacity(args.flows);
    for i in 0..args.flows {
        let target = args.targets[i % args.targets.len()];
        let (slot, source) = source_for(i, target, src_ips);
        let mut socket = ports
            .open(slot, source, target)
            .with_context(|| format!("opening flow {i} from {source} to {target}"))?;
        poll.registry()
            .register(&mut socket, Token(i), Interest::READABLE)?;
        flows.push(Flow {
            socket,
            target,
            source,
            active: i < active,
            started: false,
            done: false,
            inflight: 0,
            sent_here: 0,
            received_here: 0,
            next_seq: 0,
            epoch_seq: 0,
            highest_seq: None,
            clean: true,
            pending: false,
            last_progress: start,
        });
    }
    // Socket creation for many flows takes a while: time starts after it.
    let start = Instant::now();
    let warmup_end = start + Duration::from_secs_f64(args.warmup.max(0.0));
    let setup_deadline = warmup_end + Duration::from_secs_f64(args.setup_limit.max(0.0));
    let duration = Duration::from_secs_f64(args.duration.max(0.0));
    // Not measuring until set up: far-future window, no stamp qualifies.
    let never = start + Duration::from_secs(365 * 24 * 3600);
    let mut gen = Generator {
        args,
        flows,
        ports,
        poll,
        start,
        measure_start_ns: u64::MAX,
        buf: vec![0x5a; args.payload],
        histogram: rtt_histogram(),
        report: GenReport {
            flows: args.flows,
            active_flows: active,
            payload: args.payload,
            ..GenReport::default()
        },
        outstanding: 0,
        total_sent: 0,
        done_count: 0,
        idle_done: 0,
        pending: 0,
        sending: true,
        measuring: false,
        measure_start: never,
        send_end: never,
    };

    let mut events = Events::with_capacity(1024);
    let mut next_to_start = 0usize;
    let mut last_scan = start;
    let mut stopped_at: Option<Instant> = None;
    let mut rate_sent = 0u64;
    let mut rate_cursor = 0usize;
    let mut watch_start: Option<TreeCpu> = None;
    let loss_timeout = Duration::from_millis(args.loss_timeout_ms);
    loop {
        let now = Instant::now();
        if !gen.measuring {
            let set_up =
                next_to_start >= gen.flows.len() && gen.idle_done >= gen.flows.len() - active;
            if (now >= warmup_end && set_up) || now >= setup_deadline {
                gen.measuring = true;
                gen.measure_start = now;
                gen.measure_start_ns = gen.now_ns(now);
                gen.send_end = now + duration;
                watch_start = args.watch_pid.map(tree_cpu);
            }
        }
        let send_end = gen.send_end;
        if gen.sending && (now >= send_end || args.count.is_some_and(|c| gen.total_sent >= c)) {
            gen.sending = false;
            stopped_at = Some(now.min(send_end));
            gen.watch_stop(watch_start);
        }
        let all_done = gen.done_count == gen.flows.len();
        if all_done && stopped_at.is_none() {
            gen.sending = false;
            stopped_at = Some(now);
            gen.watch_stop(watch_start);
        }
        if let Some(stop) = stopped_at {
            if gen.outstanding == 0 || now.duration_since(stop) > loss_timeout {
                break;
            }
        }
        if gen.sending {
            let due = (now.duration_since(start).as_millis() as usize + 1) * args.ramp.max(1);
            let room = args.max_pending.max(1).saturating_sub(gen.pending);
            let end = due
                .min(gen.flows.len())
                .min(next_to_start + room)
                .max(next_to_start);
            for i in next_to_start..end {
                gen.flows[i].started = true;
                gen.flows[i].last_progress = now;
                if args.rate.is_none() || !gen.flows[i].active {
                    gen.flows[i].pending = true;
                    gen.pending += 1;
                    gen.fill(i);
                }
            }
            next_to_start = end;
            if let Some(rate) = args.rate {
                let due = (now.duration_since(start).as_secs_f64() * rate) as u64;
                let mut budget = due.saturating_sub(rate_sent).min(4096);
                let started_active = next_to_start.min(active);
                while budget > 0 && started_active > 0 {
                    let i = rate_cursor % started_active;
                    rate_cursor = rate_cursor.wrapping_add(1);
                    budget -= 1;
                    rate_sent += 1;
                    gen.send_one(i);
                }
            }
        }
        let wait = if args.rate.is_some() || next_to_start < gen.flows.len() {
            Duration::from_millis(1)
        } else {
            Duration::from_millis(10)
        };
        match gen.poll.poll(&mut events, Some(wait)) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("epoll_wait"),
        }
        for event in events.iter() {
            gen.drain(event.token().0)?;
        }
        let now = Instant::now();
        if now.duration_since(last_scan) >= Duration::from_millis(10) {
            last_scan = now;
            gen.scan_timeouts(now);
        }
    }
    let stop = stopped_at.unwrap_or(gen.send_end);
    let seconds = stop
        .saturating_duration_since(gen.measure_start)
        .as_secs_f64();
    let mut report = gen.report;
    report.established_flows = gen
        .flows
        .iter()
        .filter(|f| f.highest_seq.is_some() || f.done)
        .count();
    report.seconds = seconds;
    report.lost = report.sent.saturating_sub(report.received);
    if seconds > 0.0 {
        report.pps = report.received as f64 / seconds;
        report.sent_pps = report.sent as f64 / seconds;
        report.flows_per_s = report.flows_completed as f64 / seconds;
    }
    report.rtt = RttSummary::from_histogram(&gen.histogram);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket as StdUdpSocket;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::thread;

    fn args(target: SocketAddr, flows: usize) -> GenArgs {
        GenArgs {
            targets: vec![target],
            flows,
            active: None,
            window: 1,
            rate: None,
            payload: 64,
            duration: 0.2,
            warmup: 0.0,
            setup_limit: 5.0,
            count: None,
            per_flow_count: None,
            churn: false,
            src_ips: Some(1),
            src_port_base: 0,
            loss_timeout_ms: 2000,
            ramp: 20,
            max_pending: 512,
            watch_pid: None,
            json: false,
        }
    }

    /// Runs `serve` on a loopback socket in a thread until `stop` is set.
    fn backend(
        serve: impl Fn(&StdUdpSocket, &[u8], SocketAddr, &mut Vec<SocketAddr>) + Send + 'static,
    ) -> (SocketAddr, Arc<AtomicBool>, thread::JoinHandle<()>) {
        let socket = StdUdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let handle = thread::spawn(move || {
            let mut buf = [0u8; 2048];
            let mut peers = Vec::new();
            while !stop2.load(Ordering::SeqCst) {
                if let Ok((n, from)) = socket.recv_from(&mut buf) {
                    serve(&socket, &buf[..n], from, &mut peers);
                }
            }
        });
        (addr, stop, handle)
    }

    #[test]
    fn echo_through_loopback_loses_and_misroutes_nothing() {
        let (addr, stop, handle) = backend(|s, data, from, _| {
            let _ = s.send_to(data, from);
        });
        let report = generate(&args(addr, 4)).unwrap();
        stop.store(true, Ordering::SeqCst);
        handle.join().unwrap();
        assert!(report.sent > 0);
        assert_eq!(report.received, report.sent);
        assert_eq!(report.lost, 0);
        assert_eq!(report.misrouted, 0);
        assert_eq!(report.established_flows, 4);
        assert!(report.rtt.p50_us.is_some());
    }

    #[test]
    fn replies_delivered_to_the_other_flow_are_counted_misrouted() {
        // A broken "proxy": every datagram goes back to the other client.
        let (addr, stop, handle) = backend(|s, data, from, peers| {
            if !peers.contains(&from) {
                peers.push(from);
            }
            if let Some(other) = peers.iter().find(|p| **p != from) {
                let _ = s.send_to(data, other);
            }
        });
        let mut a = args(addr, 2);
        a.loss_timeout_ms = 30;
        let report = generate(&a).unwrap();
        stop.store(true, Ordering::SeqCst);
        handle.join().unwrap();
        assert!(report.misrouted > 0);
        assert_eq!(report.received, 0);
        assert_eq!(report.lost, report.sent);
    }

    #[test]
    fn one_shot_churned_flows_each_use_a_new_source_port() {
        // The backend answers a source's first datagram only and counts any
        // datagram from a source seen before: a reused port would be a
        // repeat (and its flow would stall). Bounded by a datagram count,
        // not by time, so a slow machine only makes it slower.
        let repeats = Arc::new(AtomicUsize::new(0));
        let sources = Arc::new(AtomicUsize::new(0));
        let (r, n) = (repeats.clone(), sources.clone());
        let (addr, stop, handle) = backend(move |s, data, from, peers| {
            if peers.contains(&from) {
                r.fetch_add(1, Ordering::SeqCst);
            } else {
                peers.push(from);
                n.fetch_add(1, Ordering::SeqCst);
                let _ = s.send_to(data, from);
            }
        });
        let mut a = args(addr, 2);
        a.per_flow_count = Some(1);
        a.churn = true;
        a.count = Some(400);
        // Upper bounds only: the run ends after 400 datagrams.
        a.duration = 120.0;
        a.loss_timeout_ms = 120_000;
        let report = generate(&a).unwrap();
        stop.store(true, Ordering::SeqCst);
        handle.join().unwrap();
        assert_eq!(repeats.load(Ordering::SeqCst), 0, "{report:?}");
        assert_eq!(sources.load(Ordering::SeqCst), 400, "{report:?}");
        // Every one answered (the run ends with nothing outstanding, and
        // nothing was given up on), none twice. How many completed inside
        // the measured window depends on speed, so it is not asserted.
        assert_eq!(report.timeouts, 0, "{report:?}");
        assert_eq!((report.lost, report.late), (0, 0), "{report:?}");
        assert_eq!(report.flows_clean, report.flows_completed);
        assert_eq!(report.misrouted, 0);
    }

    #[test]
    fn kernel_picked_ports_skip_the_recent_ones() {
        let target: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let ip = target.ip();
        let mut plan = PortPlan::new(0, 1);
        // Open and close sockets one after another: the kernel is free to
        // offer a just-closed port again; the plan must not take it.
        let mut seen = HashSet::new();
        for _ in 0..2_000 {
            let socket = plan.open_ephemeral(ip, target).unwrap();
            let local = socket.local_addr().unwrap();
            assert!(seen.insert(local), "{local} handed out twice");
        }
        let mut recent = RecentPorts::default();
        for port in 0..=RECENT_PORTS as u16 {
            recent.remember(SocketAddr::new(ip, port));
        }
        // The oldest is forgotten once the window is full.
        assert!(!recent.contains(&SocketAddr::new(ip, 0)));
        assert!(recent.contains(&SocketAddr::new(ip, 1)));
        assert_eq!(recent.order.len(), RECENT_PORTS);
    }

    #[test]
    fn rejects_non_loopback_targets() {
        let err = generate(&args("192.0.2.1:53".parse().unwrap(), 1)).unwrap_err();
        assert!(err.to_string().contains("not a loopback"), "{err}");
    }
}
