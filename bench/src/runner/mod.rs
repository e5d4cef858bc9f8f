//! `sozu-bench run`: the scenario runner.
//!
//! For each selected scenario it starts the echo backends, then for R
//! rounds runs every target in turn (direct, sozu, nginx, envoy: A B A B),
//! each proxy freshly started and pinned to CPU 0 while the generator and
//! echo run on CPU 1, and prints medians, min–max and ratios vs direct and
//! vs nginx. Every child is stopped by pid when its phase ends, on error
//! and on Ctrl-C; every wait is bounded. Loopback only.

pub(crate) mod processes;
pub(crate) mod proxies;
mod table;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use serde::Serialize;

use crate::dns::{socket_drops, udp_rcvbuf_errors};
use crate::generator::GenReport;
use processes::{check_interrupted, tree_usage, Proc, Spawn};
use proxies::{Installed, ProxyOptions, Target};

/// CPU given to the proxy; the generator and echo get the other one.
const PROXY_CPU: usize = 0;
const LOAD_CPU: usize = 1;

/// sozu `max_flows`: room for the 16,000-flow scenarios under the
/// 20,000 fds per process limit.
const MAX_FLOWS: usize = 18_000;

/// Longest the generator waits for its flows to be set up (seconds).
const SETUP_LIMIT_S: f64 = 30.0;

/// What every proxy-comparing command (`run`, `oneway`, `dns`) is told
/// about its targets; each command's description names its targets.
#[derive(Args, Debug, Clone)]
pub(crate) struct TargetArgs {
    /// The sozu binary (default target/release/sozu, else next to this tool).
    #[arg(long)]
    pub sozu: Option<PathBuf>,
    /// Targets to compare, comma separated (default: every installed one).
    #[arg(long, value_delimiter = ',')]
    pub targets: Vec<String>,
    /// Do not pin (with taskset: the proxy on CPU 0, the load on CPU 1).
    #[arg(long)]
    pub no_pin: bool,
}

impl TargetArgs {
    /// The targets asked for by name (`--targets`), else `default`.
    pub(crate) fn wanted(&self, default: &[Target]) -> anyhow::Result<Vec<Target>> {
        if self.targets.is_empty() {
            return Ok(default.to_vec());
        }
        self.targets.iter().map(|t| Target::parse(t)).collect()
    }
}

/// The open-loop measurement of `oneway` and `dns`: many source ports,
/// rounds of target alternation.
#[derive(Args, Debug, Clone)]
pub(crate) struct RoundArgs {
    /// Distinct source ports (client sockets), used in turn.
    #[arg(long, default_value_t = 10_000)]
    pub sources: usize,
    /// Measured seconds per measurement.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Unmeasured seconds of load before measuring.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Rounds of target alternation (the table shows medians).
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
}

/// Options of `sozu-bench run`.
#[derive(Args, Debug, Clone)]
pub(crate) struct RunArgs {
    /// Scenario to run (repeatable); default: all. See --list.
    #[arg(long = "scenario")]
    pub scenarios: Vec<String>,
    /// Short preset: fewer scenarios, 2 rounds of 2 s.
    #[arg(long)]
    pub quick: bool,
    /// List the scenarios and exit.
    #[arg(long)]
    pub list: bool,
    /// The sozu binary, the targets, pinning.
    #[command(flatten)]
    pub target: TargetArgs,
    /// Rounds of A B A B alternation (default 3, quick 2).
    #[arg(long)]
    pub rounds: Option<u32>,
    /// Measured seconds per measurement (default 5, quick 2).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Datagram size.
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// Echo backend sockets.
    #[arg(long, default_value_t = 4)]
    pub backends: usize,
    /// Also write every sample as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Keep the temporary directory (configs, proxy logs) and print it.
    #[arg(long)]
    pub keep_temp: bool,
}

/// What a scenario measures, which decides its headline metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) enum Kind {
    /// Replies per second (higher is better).
    Throughput,
    /// Bursts of 32 on new flows per second, with the clean count.
    Burst,
    /// One-reply flows completed per second.
    NewFlows,
    /// RTT p50 at a moderate open-loop rate (lower is better).
    Latency,
    /// Proxy bytes of RSS per live flow (lower is better).
    Memory,
    /// Proxy CPU microseconds per round trip at a fixed open-loop rate
    /// (lower is better).
    Cost,
}

/// One benchmark scenario (issue 7, item 3).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Scenario {
    /// Name for --scenario.
    pub name: &'static str,
    /// One-line description.
    pub what: &'static str,
    /// Headline metric.
    pub kind: Kind,
    flows: usize,
    active: Option<usize>,
    window: u32,
    rate: Option<f64>,
    per_flow_count: Option<u32>,
    churn: bool,
    /// Proxy closes a flow after this many replies (0 = unlimited).
    responses: u32,
    warmup: f64,
    /// Sending time when the scenario ends by itself (all flows done)
    /// rather than by the measured duration.
    fixed_duration: Option<f64>,
    /// Listeners beside the measured one that get no traffic.
    idle_listeners: usize,
}

const fn base(name: &'static str, what: &'static str, kind: Kind, flows: usize) -> Scenario {
    Scenario {
        name,
        what,
        kind,
        flows,
        active: None,
        window: 1,
        rate: None,
        per_flow_count: None,
        churn: false,
        responses: 0,
        warmup: 0.5,
        fixed_duration: None,
        idle_listeners: 0,
    }
}

/// A cost scenario: `flows` established flows share an open-loop `rate`
/// of round trips per second; the headline is proxy CPU per round trip.
const fn cost(name: &'static str, flows: usize, rate: f64) -> Scenario {
    Scenario {
        rate: Some(rate),
        warmup: 1.0,
        ..base(
            name,
            "proxy CPU per round trip, established flows, fixed open-loop rate",
            Kind::Cost,
            flows,
        )
    }
}

/// Every scenario, in run order.
pub(crate) fn scenarios() -> Vec<Scenario> {
    vec![
        base(
            "flows-64",
            "established flows, 1 in flight each",
            Kind::Throughput,
            64,
        ),
        base(
            "flows-1000",
            "established flows, 1 in flight each",
            Kind::Throughput,
            1000,
        ),
        Scenario {
            warmup: 1.0,
            ..base(
                "flows-10000",
                "established flows, 1 in flight each",
                Kind::Throughput,
                10_000,
            )
        },
        Scenario {
            active: Some(1000),
            warmup: 2.0,
            ..base(
                "live-16000",
                "16,000 live flows, 1,000 of them sending (compare with flows-1000)",
                Kind::Throughput,
                16_000,
            )
        },
        Scenario {
            window: 32,
            per_flow_count: Some(32),
            churn: true,
            ..base(
                "burst-32",
                "32 datagrams at once on a new flow, all back in order",
                Kind::Burst,
                1,
            )
        },
        Scenario {
            per_flow_count: Some(1),
            churn: true,
            responses: 1,
            ..base(
                "dns",
                "DNS-like one-reply flows, 64 concurrent (responses = 1)",
                Kind::NewFlows,
                64,
            )
        },
        Scenario {
            window: 32,
            ..base("single-32", "one flow, 32 in flight", Kind::Throughput, 1)
        },
        Scenario {
            rate: Some(10_000.0),
            ..base(
                "latency-64",
                "RTT at 64 flows, open loop 10,000 pps",
                Kind::Latency,
                64,
            )
        },
        cost("cost-64-25k", 64, 25_000.0),
        cost("cost-64-50k", 64, 50_000.0),
        cost("cost-64-100k", 64, 100_000.0),
        cost("cost-1024-50k", 1024, 50_000.0),
        cost("cost-4000-50k", 4000, 50_000.0),
        Scenario {
            what: "proxy CPU per round trip, 64 flows at 50,000/s, 1,000 more listeners without traffic",
            idle_listeners: 1000,
            ..cost("cost-64-50k-listeners-1000", 64, 50_000.0)
        },
        Scenario {
            per_flow_count: Some(1),
            warmup: 0.0,
            fixed_duration: Some(30.0),
            ..base(
                "memory-16000",
                "proxy RSS and fds per live flow at 16,000 flows",
                Kind::Memory,
                16_000,
            )
        },
    ]
}

const QUICK: [&str; 6] = [
    "flows-64",
    "flows-1000",
    "single-32",
    "burst-32",
    "dns",
    "latency-64",
];

/// One measurement of one target in one round.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Sample {
    /// Scenario name.
    pub scenario: &'static str,
    /// Target name.
    pub target: &'static str,
    /// Round number from 0.
    pub round: u32,
    /// Generator report (absent on error).
    pub report: Option<GenReport>,
    /// Proxy RSS bytes per established flow (memory scenario).
    pub bytes_per_flow: Option<f64>,
    /// Proxy fds per established flow (memory scenario).
    pub fds_per_flow: Option<f64>,
    /// Datagrams the kernel dropped on the proxy's listener socket (its
    /// receive buffer full) during the generator's run, set-up included.
    pub listener_drops: Option<u64>,
    /// Datagrams dropped on any UDP socket of the host for a full receive
    /// buffer (`RcvbufErrors`) during the same run: the listener, the
    /// proxy's upstream sockets, the echo's or the generator's.
    pub host_drops: Option<u64>,
    /// Why the measurement failed.
    pub error: Option<String>,
}

pub(crate) fn resolve_sozu(arg: &Option<PathBuf>) -> PathBuf {
    if let Some(path) = arg {
        return path.clone();
    }
    let default = PathBuf::from("target/release/sozu");
    if default.is_file() {
        return default;
    }
    // Built in the same target dir as this tool (CARGO_TARGET_DIR).
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("sozu")))
        .filter(|p| p.is_file())
        .unwrap_or(default)
}

/// Runs the selected scenarios and prints the table.
pub(crate) fn run(args: &RunArgs) -> anyhow::Result<()> {
    let all = scenarios();
    if args.list {
        for s in &all {
            let quick = if QUICK.contains(&s.name) {
                " (quick)"
            } else {
                ""
            };
            println!("{:<14} {}{quick}", s.name, s.what);
        }
        return Ok(());
    }
    let selected: Vec<Scenario> = if !args.scenarios.is_empty() {
        let mut chosen = Vec::new();
        for name in &args.scenarios {
            // A family name (`cost`, `flows`) selects every `name-*`.
            let family = format!("{name}-");
            let matched: Vec<&Scenario> = all
                .iter()
                .filter(|s| s.name == name || s.name.starts_with(&family))
                .collect();
            if matched.is_empty() {
                bail!("unknown --scenario {name:?}; --list shows them");
            }
            chosen.extend(matched.into_iter().cloned());
        }
        chosen
    } else if args.quick {
        all.into_iter()
            .filter(|s| QUICK.contains(&s.name))
            .collect()
    } else {
        all
    };
    let rounds = args.rounds.unwrap_or(if args.quick { 2 } else { 3 }).max(1);
    let duration = args.duration.unwrap_or(if args.quick { 2.0 } else { 5.0 });
    let sozu = resolve_sozu(&args.target.sozu);
    let installed = Installed::detect(&sozu);
    let requested =
        args.target
            .wanted(&[Target::Direct, Target::Sozu, Target::Nginx, Target::Envoy])?;
    let mut targets = Vec::new();
    for t in requested {
        match installed.missing(t) {
            None => targets.push(t),
            Some(why) => eprintln!("skipping {}: {why}", t.name()),
        }
    }
    if targets.is_empty() {
        bail!("no target can run");
    }
    let pin = !args.target.no_pin && processes::find_on_path("taskset").is_some();
    let exe = std::env::current_exe().context("locating sozu-bench itself")?;
    let temp = tempfile::Builder::new().prefix("sozu-bench-").tempdir()?;
    processes::install_signal_handlers();
    let names: Vec<&str> = targets.iter().map(|t| t.name()).collect();
    eprintln!(
        "targets {} | {rounds} rounds | {duration} s | payload {} B | pinning {} | files in {}",
        names.join(" "),
        args.payload,
        if pin {
            "proxy cpu 0, load cpu 1"
        } else {
            "off"
        },
        temp.path().display()
    );
    let ctx = RunContext {
        exe,
        installed,
        pin,
        duration,
        payload: args.payload,
        backends: args.backends.max(1),
        dir: temp.path().to_path_buf(),
    };
    let mut samples = Vec::new();
    let outcome = run_all(&ctx, &selected, &targets, rounds, &mut samples);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&samples)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    table::print(&selected, &targets, &samples);
    if args.keep_temp {
        eprintln!("kept {}", temp.keep().display());
    }
    outcome
}

struct RunContext {
    exe: PathBuf,
    installed: Installed,
    pin: bool,
    duration: f64,
    payload: usize,
    backends: usize,
    dir: PathBuf,
}

impl RunContext {
    fn cpu(&self, cpu: usize) -> Option<usize> {
        self.pin.then_some(cpu)
    }
}

fn run_all(
    ctx: &RunContext,
    selected: &[Scenario],
    targets: &[Target],
    rounds: u32,
    samples: &mut Vec<Sample>,
) -> anyhow::Result<()> {
    for scenario in selected {
        check_interrupted()?;
        let mut echo = Proc::spawn(Spawn {
            name: "echo",
            argv: vec![
                ctx.exe.display().to_string(),
                "echo".into(),
                "--sockets".into(),
                ctx.backends.to_string(),
            ],
            cpu: ctx.cpu(LOAD_CPU),
            log: None,
        })?;
        let line = echo.first_line(Duration::from_secs(10))?;
        let backends: Vec<SocketAddr> = line
            .strip_prefix("listening ")
            .with_context(|| format!("unexpected echo output {line:?}"))?
            .split(',')
            .map(|a| a.parse().with_context(|| format!("echo address {a:?}")))
            .collect::<anyhow::Result<_>>()?;
        for round in 0..rounds {
            for &target in targets {
                if scenario.kind == Kind::Memory && target == Target::Direct {
                    continue;
                }
                check_interrupted()?;
                eprintln!("{} round {round} {}", scenario.name, target.name());
                let sample = match measure(ctx, scenario, target, round, &backends) {
                    Ok(sample) => sample,
                    Err(e) => {
                        check_interrupted()?;
                        eprintln!("  failed: {e:#}");
                        Sample {
                            scenario: scenario.name,
                            target: target.name(),
                            round,
                            report: None,
                            bytes_per_flow: None,
                            fds_per_flow: None,
                            listener_drops: None,
                            host_drops: None,
                            error: Some(format!("{e:#}")),
                        }
                    }
                };
                if let Some(r) = &sample.report {
                    eprintln!(
                        "  pps {:.0} flows/s {:.0} lost {} misrouted {} p50 {:.1} us{}{}",
                        r.pps,
                        r.flows_per_s,
                        r.lost,
                        r.misrouted,
                        r.rtt.p50_us.unwrap_or(f64::NAN),
                        sample
                            .bytes_per_flow
                            .map_or(String::new(), |b| format!(" bytes/flow {b:.0}")),
                        r.cpu_us_per_round_trip()
                            .map_or(String::new(), |c| format!(" cpu {c:.2} us/rt"))
                    );
                    eprintln!(
                        "  kernel buffer drops: listener {} host {}",
                        sample.listener_drops.map_or("-".into(), |d| d.to_string()),
                        sample.host_drops.map_or("-".into(), |d| d.to_string())
                    );
                }
                samples.push(sample);
            }
        }
        echo.stop();
    }
    Ok(())
}

fn gen_argv(
    ctx: &RunContext,
    scenario: &Scenario,
    targets: &[SocketAddr],
    watch: Option<i32>,
) -> Vec<String> {
    let mut argv = vec![ctx.exe.display().to_string(), "gen".into(), "--json".into()];
    if let Some(pid) = watch {
        argv.push("--watch-pid".into());
        argv.push(pid.to_string());
    }
    for t in targets {
        argv.push("--target".into());
        argv.push(t.to_string());
    }
    let mut push = |k: &str, v: String| {
        argv.push(k.into());
        argv.push(v);
    };
    push("--flows", scenario.flows.to_string());
    push("--window", scenario.window.to_string());
    push("--payload", ctx.payload.to_string());
    let duration = scenario.fixed_duration.unwrap_or(ctx.duration);
    push("--duration", duration.to_string());
    push("--setup-limit", SETUP_LIMIT_S.to_string());
    push("--warmup", scenario.warmup.to_string());
    if let Some(a) = scenario.active {
        push("--active", a.to_string());
    }
    if let Some(r) = scenario.rate {
        push("--rate", r.to_string());
    }
    if let Some(c) = scenario.per_flow_count {
        push("--per-flow-count", c.to_string());
    }
    if scenario.churn {
        argv.push("--churn".into());
    }
    argv
}

fn measure(
    ctx: &RunContext,
    scenario: &Scenario,
    target: Target,
    round: u32,
    backends: &[SocketAddr],
) -> anyhow::Result<Sample> {
    let mut proxy = None;
    let mut listener = None;
    let gen_targets = if target == Target::Direct {
        backends.to_vec()
    } else {
        let listen = proxies::free_udp_port()?;
        let dir = ctx
            .dir
            .join(format!("{}-{}-{round}", scenario.name, target.name()));
        let options = ProxyOptions {
            responses: scenario.responses,
            max_flows: MAX_FLOWS,
            one_way: false,
            dns_id: false,
            recv_buffer: None,
            idle_listeners: scenario.idle_listeners,
        };
        let mut proc = proxies::spawn(
            target,
            &ctx.installed,
            &dir,
            listen,
            backends,
            options,
            ctx.cpu(PROXY_CPU),
        )?;
        let ready = proxies::wait_echo(&mut proc, listen);
        proc.ready_or_log(ready)?;
        proxy = Some(proc);
        listener = Some(listen);
        vec![listen]
    };
    let drops_before = (listener.and_then(socket_drops), udp_rcvbuf_errors());
    let before = proxy.as_ref().map(|p| tree_usage(p.pid()));
    let generator = Proc::spawn(Spawn {
        name: "gen",
        argv: gen_argv(ctx, scenario, &gen_targets, proxy.as_ref().map(Proc::pid)),
        cpu: ctx.cpu(LOAD_CPU),
        log: None,
    })?;
    // Socket setup of 16,000 flows and the drain are outside the duration.
    let duration = scenario.fixed_duration.unwrap_or(ctx.duration);
    let limit = Duration::from_secs_f64(scenario.warmup + duration + SETUP_LIMIT_S + 60.0);
    let output = generator.wait_output(limit)?;
    let after = proxy.as_ref().map(|p| tree_usage(p.pid()));
    let delta = |a: Option<u64>, b: Option<u64>| Some(b?.saturating_sub(a?));
    let listener_drops = delta(drops_before.0, listener.and_then(socket_drops));
    let host_drops = delta(drops_before.1, udp_rcvbuf_errors());
    if let Some(p) = &mut proxy {
        if let Some(status) = p.exited() {
            bail!(
                "{} exited during the run ({status}); {}",
                p.name,
                p.log_tail()
            );
        }
    }
    let report: GenReport = serde_json::from_str(output.trim())
        .with_context(|| format!("parsing generator output {output:?}"))?;
    let (mut bytes_per_flow, mut fds_per_flow) = (None, None);
    if let (Kind::Memory, Some(b), Some(a)) = (scenario.kind, before, after) {
        let flows = report.established_flows.max(1) as f64;
        bytes_per_flow = Some(a.rss_bytes.saturating_sub(b.rss_bytes) as f64 / flows);
        fds_per_flow = Some(a.fds.saturating_sub(b.fds) as f64 / flows);
    }
    drop(proxy);
    Ok(Sample {
        scenario: scenario.name,
        target: target.name(),
        round,
        report: Some(report),
        bytes_per_flow,
        fds_per_flow,
        listener_drops,
        host_drops,
        error: None,
    })
}
