//! `sozu-bench oneway`: one-way traffic (syslog, statsd, telemetry) from
//! many source ports through a proxy to sink backends that never answer.
//!
//! The same open-loop load is offered to each target in turn (sozu with a
//! `one_way = true` cluster, nginx `stream` with `proxy_responses 0`), and
//! what is compared is what the machine can vouch for while it is shared:
//! the **proxy's CPU time per delivered datagram** (the scheduler's exact
//! runtime of its process tree, `runner::processes::tree_cpu`, over the
//! measured window), the
//! share of datagrams delivered, and the proxy's descriptors. Loopback
//! only, every wait bounded, children stopped by pid.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;

use crate::runner::processes::{check_interrupted, install_signal_handlers, tree_cpu, tree_usage};
use crate::runner::proxies::{self, Installed, ProxyOptions, Target};
use crate::runner::{RoundArgs, TargetArgs};

/// Options of `sozu-bench oneway`.
#[derive(Args, Debug, Clone)]
pub(crate) struct OneWayArgs {
    /// The sozu binary, the targets (sozu, nginx), pinning.
    #[command(flatten)]
    pub target: TargetArgs,
    /// Source ports, measured seconds, warm-up, rounds.
    #[command(flatten)]
    pub load: RoundArgs,
    /// First source port (below the ephemeral range; taken ports are skipped).
    #[arg(long, default_value_t = 12_000)]
    pub src_port_base: u16,
    /// Offered datagrams per second, in total.
    #[arg(long, default_value_t = 40_000)]
    pub rate: u64,
    /// Datagram size.
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// Sink backends (sockets that count and never answer).
    #[arg(long, default_value_t = 4)]
    pub backends: usize,
}

/// One measurement of one target.
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    sent: u64,
    delivered: u64,
    send_errors: u64,
    cpu_seconds: f64,
    fds: u64,
    rss_bytes: u64,
}

impl Sample {
    fn cpu_us_per_datagram(&self) -> f64 {
        if self.delivered == 0 {
            return f64::NAN;
        }
        self.cpu_seconds * 1e6 / self.delivered as f64
    }

    fn delivered_share(&self) -> f64 {
        if self.sent == 0 {
            return 0.0;
        }
        self.delivered as f64 / self.sent as f64
    }
}

/// Counting sink backends, one thread per socket.
struct Sinks {
    addrs: Vec<SocketAddr>,
    count: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Sinks {
    fn start(n: usize) -> anyhow::Result<Sinks> {
        let count = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut addrs = Vec::new();
        let mut threads = Vec::new();
        for i in 0..n {
            let socket = UdpSocket::bind("127.0.0.1:0").context("binding a sink")?;
            set_buffer(&socket, libc::SO_RCVBUF, 4 << 20);
            socket.set_read_timeout(Some(Duration::from_millis(100)))?;
            addrs.push(socket.local_addr()?);
            let (count, stop) = (Arc::clone(&count), Arc::clone(&stop));
            threads.push(
                std::thread::Builder::new()
                    .name(format!("sink-{i}"))
                    .spawn(move || {
                        let mut buf = [0u8; 2048];
                        while !stop.load(Ordering::Relaxed) {
                            if socket.recv(&mut buf).is_ok() {
                                count.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    })?,
            );
        }
        Ok(Sinks {
            addrs,
            count,
            stop,
            threads,
        })
    }

    fn total(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

impl Drop for Sinks {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

pub(crate) fn set_buffer(socket: &UdpSocket, option: libc::c_int, bytes: libc::c_int) {
    // SAFETY: a valid fd and a pointer to a c_int of the given size.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&bytes as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Binds `n` non-blocking client sockets on fixed ports from `base`
/// (skipping taken ones), so the proxy's own ephemeral ports are not eaten.
pub(crate) fn sources(n: usize, base: u16) -> anyhow::Result<Vec<UdpSocket>> {
    let mut out = Vec::with_capacity(n);
    let mut port = base;
    while out.len() < n {
        if port == u16::MAX {
            bail!("only {} source ports free from {base}", out.len());
        }
        let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
        if let Ok(s) = UdpSocket::bind(addr) {
            s.set_nonblocking(true)?;
            out.push(s);
        }
        port += 1;
    }
    Ok(out)
}

/// CPU seconds of `root`'s process tree (the scheduler's exact runtime,
/// see [`tree_cpu`]).
pub(crate) fn tree_cpu_seconds(root: i32) -> f64 {
    tree_cpu(root).cpu_ns as f64 / 1e9
}

/// Offers `rate` datagrams per second for `seconds`, the sources in turn;
/// returns (sent, send errors).
#[allow(clippy::disallowed_methods)] // benchmark shell: pacing
fn offer(
    sources: &[UdpSocket],
    next: &mut usize,
    target: SocketAddr,
    payload: &[u8],
    rate: u64,
    seconds: f64,
) -> (u64, u64) {
    let start = Instant::now();
    let total = (rate as f64 * seconds) as u64;
    let (mut sent, mut errors) = (0u64, 0u64);
    while sent + errors < total {
        // Due by now at the asked rate; sleep in 1 ms steps otherwise.
        let due = ((start.elapsed().as_secs_f64() * rate as f64) as u64).min(total);
        if sent + errors >= due {
            std::thread::sleep(Duration::from_micros(500));
            continue;
        }
        for _ in sent + errors..due {
            let s = &sources[*next % sources.len()];
            *next += 1;
            match s.send_to(payload, target) {
                Ok(_) => sent += 1,
                Err(_) => errors += 1,
            }
        }
    }
    (sent, errors)
}

/// Sends a probe through `listen` every 100 ms until a sink counts it.
#[allow(clippy::disallowed_methods)] // benchmark shell: bounded wait
fn wait_forwarding(sinks: &Sinks, probe: &UdpSocket, listen: SocketAddr) -> anyhow::Result<()> {
    let start = Instant::now();
    let before = sinks.total();
    while start.elapsed() < Duration::from_secs(15) {
        check_interrupted()?;
        let _ = probe.send_to(b"probe", listen);
        std::thread::sleep(Duration::from_millis(100));
        if sinks.total() > before {
            return Ok(());
        }
    }
    bail!("no datagram forwarded to the sinks within 15 s")
}

pub(crate) fn pin_self(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// `sozu-bench oneway`.
#[allow(clippy::disallowed_methods)] // benchmark shell: settle time
pub(crate) fn run(args: &OneWayArgs) -> anyhow::Result<()> {
    install_signal_handlers();
    let sozu = crate::runner::resolve_sozu(&args.target.sozu);
    let installed = Installed::detect(&sozu);
    let wanted = args.target.wanted(&[Target::Sozu, Target::Nginx])?;
    let mut targets = Vec::new();
    for t in wanted {
        match (t, installed.missing(t)) {
            (Target::Sozu | Target::Nginx, None) => targets.push(t),
            (Target::Sozu | Target::Nginx, Some(why)) => {
                eprintln!("skipping {}: {why}", t.name())
            }
            _ => eprintln!("skipping {}: no one-way mode to compare", t.name()),
        }
    }
    if targets.is_empty() {
        bail!("no target to measure");
    }
    let (proxy_cpu, own_cpu) = if args.target.no_pin {
        (None, None)
    } else {
        (Some(0), Some(1))
    };
    if let Some(cpu) = own_cpu {
        pin_self(cpu);
    }
    let sinks = Sinks::start(args.backends)?;
    let sources = sources(args.load.sources, args.src_port_base)?;
    let probe = UdpSocket::bind("127.0.0.1:0")?;
    let payload = vec![b'x'; args.payload.max(1)];
    let dir = tempfile::tempdir()?;
    let mut samples: Vec<(Target, Sample)> = Vec::new();
    let mut next = 0usize;
    println!(
        "oneway: {} sources, {} datagrams/s offered, {} B, {} sink backends, {} s measured after {} s, {} rounds",
        sources.len(),
        args.rate,
        payload.len(),
        args.backends,
        args.load.duration,
        args.load.warmup,
        args.load.rounds
    );
    for round in 0..args.load.rounds {
        for &target in &targets {
            check_interrupted()?;
            let listen = proxies::free_udp_port()?;
            let options = ProxyOptions {
                responses: 0,
                max_flows: 18_000,
                one_way: true,
                dns_id: false,
                recv_buffer: None,
                idle_listeners: 0,
            };
            let run_dir = dir.path().join(format!("{}-{round}", target.name()));
            let mut proc = proxies::spawn(
                target,
                &installed,
                &run_dir,
                listen,
                &sinks.addrs,
                options,
                proxy_cpu,
            )?;
            proc.ready_or_log(wait_forwarding(&sinks, &probe, listen))?;
            offer(
                &sources,
                &mut next,
                listen,
                &payload,
                args.rate,
                args.load.warmup,
            );
            std::thread::sleep(Duration::from_millis(200));
            let (count0, cpu0) = (sinks.total(), tree_cpu_seconds(proc.pid()));
            let (sent, send_errors) = offer(
                &sources,
                &mut next,
                listen,
                &payload,
                args.rate,
                args.load.duration,
            );
            // In-flight datagrams land (the sinks keep counting).
            std::thread::sleep(Duration::from_millis(300));
            let cpu1 = tree_cpu_seconds(proc.pid());
            let delivered = sinks.total() - count0;
            let usage = tree_usage(proc.pid());
            if target == Target::Sozu {
                print_sozu_drops(&sozu, &run_dir);
            }
            proc.stop();
            let sample = Sample {
                sent,
                delivered,
                send_errors,
                cpu_seconds: cpu1 - cpu0,
                fds: usage.fds,
                rss_bytes: usage.rss_bytes,
            };
            println!(
                "  round {round} {:6}: sent {:>9} delivered {:>9} ({:5.1} %) send errors {:>6}  proxy CPU {:6.3} s = {:6.2} µs/datagram  fds {:>6}  RSS {:>7} KiB",
                target.name(),
                sample.sent,
                sample.delivered,
                100.0 * sample.delivered_share(),
                sample.send_errors,
                sample.cpu_seconds,
                sample.cpu_us_per_datagram(),
                sample.fds,
                sample.rss_bytes / 1024
            );
            samples.push((target, sample));
        }
    }
    println!("\nmedians over {} rounds:", args.load.rounds);
    println!("| target | delivered | proxy CPU µs / datagram | proxy fds | proxy RSS KiB |");
    println!("| --- | --- | --- | --- | --- |");
    let mut per_dgram = Vec::new();
    for &target in &targets {
        let mine: Vec<Sample> = samples
            .iter()
            .filter(|(t, _)| *t == target)
            .map(|(_, s)| *s)
            .collect();
        let share = median(mine.iter().map(|s| s.delivered_share()).collect());
        let cpu = median(mine.iter().map(|s| s.cpu_us_per_datagram()).collect());
        let fds = median(mine.iter().map(|s| s.fds as f64).collect());
        let rss = median(mine.iter().map(|s| (s.rss_bytes / 1024) as f64).collect());
        println!(
            "| {} | {:.2} % | {:.2} | {:.0} | {:.0} |",
            target.name(),
            100.0 * share,
            cpu,
            fds,
            rss
        );
        per_dgram.push((target, cpu));
    }
    if let (Some((_, s)), Some((_, n))) = (
        per_dgram.iter().find(|(t, _)| *t == Target::Sozu),
        per_dgram.iter().find(|(t, _)| *t == Target::Nginx),
    ) {
        println!(
            "\nnginx CPU per datagram / sozu CPU per datagram: {:.2}×",
            n / s
        );
    }
    Ok(())
}

/// Prints how many datagrams sozu read and its non-zero drop counters
/// (`sozu metrics get`), so a loss is attributed: a drop counter of the
/// proxy, or the kernel (listener receive buffer) when none moved.
pub(crate) fn print_sozu_drops(sozu: &std::path::Path, dir: &std::path::Path) {
    let out = std::process::Command::new(sozu)
        .arg("-c")
        .arg(dir.join("config.toml"))
        .args(["metrics", "get"])
        .output();
    let Ok(out) = out else {
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let drops: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("proxy"))
        .filter(|l| l.contains("dropped") || l.contains("refused"))
        .filter(|l| l.split_whitespace().last().is_some_and(|v| v != "0"))
        .collect();
    let read = text
        .lines()
        .find(|l| l.starts_with("proxy") && l.contains("udp.datagrams.in@"))
        .and_then(|l| l.split_whitespace().last())
        .unwrap_or("?");
    println!("    sozu read and forwarded {read} datagrams in all (probes and warm-up included)");
    if drops.is_empty() {
        println!("    sozu drop counters: none moved (a loss is then the kernel's: the listener's receive buffer)");
    } else {
        for l in drops {
            println!("    sozu: {}", l.trim());
        }
    }
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}
