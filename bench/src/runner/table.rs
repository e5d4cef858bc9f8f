//! The results table: per scenario and target, the median of the headline
//! metric over rounds, its min–max, ratios vs direct and vs nginx, and the
//! loss / misroute / RTT columns. Pure formatting: it never measures.

use super::proxies::Target;
use super::{Kind, Sample, Scenario};
use crate::stats::median;

/// Headline metric of a sample for its scenario kind.
fn metric(kind: Kind, s: &Sample) -> Option<f64> {
    let r = s.report.as_ref()?;
    match kind {
        Kind::Throughput => Some(r.pps),
        Kind::Burst | Kind::NewFlows => Some(r.flows_per_s),
        Kind::Latency => r.rtt.p50_us,
        Kind::Memory => s.bytes_per_flow,
        Kind::Cost => r.cpu_us_per_round_trip(),
    }
}

fn unit(kind: Kind) -> &'static str {
    match kind {
        Kind::Throughput => "pps",
        Kind::Burst => "bursts/s",
        Kind::NewFlows => "flows/s",
        Kind::Latency => "p50 us",
        Kind::Memory => "B/flow",
        Kind::Cost => "cpu us/rt",
    }
}

fn fmt(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// Aggregate of one (scenario, target) over rounds.
struct Row {
    median: Option<f64>,
    min: f64,
    max: f64,
    extra: String,
}

fn aggregate(scenario: &Scenario, target: Target, samples: &[Sample]) -> Option<Row> {
    let mine: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.scenario == scenario.name && s.target == target.name())
        .collect();
    if mine.is_empty() {
        return None;
    }
    let values: Vec<f64> = mine
        .iter()
        .filter_map(|s| metric(scenario.kind, s))
        .collect();
    let reports: Vec<_> = mine.iter().filter_map(|s| s.report.as_ref()).collect();
    let errors = mine.iter().filter(|s| s.error.is_some()).count();
    let sent: u64 = reports.iter().map(|r| r.sent).sum();
    let lost: u64 = reports.iter().map(|r| r.lost).sum();
    let misrouted: u64 = reports.iter().map(|r| r.misrouted).sum();
    let reordered: u64 = reports.iter().map(|r| r.reordered).sum();
    let p50 = median(
        &reports
            .iter()
            .filter_map(|r| r.rtt.p50_us)
            .collect::<Vec<_>>(),
    );
    let p99 = median(
        &reports
            .iter()
            .filter_map(|r| r.rtt.p99_us)
            .collect::<Vec<_>>(),
    );
    let loss_pct = if sent > 0 {
        lost as f64 * 100.0 / sent as f64
    } else {
        0.0
    };
    let mut extra = format!(
        "loss {loss_pct:.2}% misrouted {misrouted} reordered {reordered} p50/p99 {}/{} us",
        p50.map_or("-".into(), fmt),
        p99.map_or("-".into(), fmt)
    );
    // Proxy cost wherever the proxy was watched (every proxy target; the
    // headline of cost scenarios, a detail of the others).
    let cpu = median(
        &reports
            .iter()
            .filter_map(|r| r.cpu_us_per_round_trip())
            .collect::<Vec<_>>(),
    );
    let sleeps = median(
        &reports
            .iter()
            .filter_map(|r| r.sleeps_per_round_trip())
            .collect::<Vec<_>>(),
    );
    let pps = median(&reports.iter().map(|r| r.pps).collect::<Vec<_>>());
    match (scenario.kind, cpu, sleeps) {
        (Kind::Cost, _, Some(sleeps)) => extra.push_str(&format!(
            " | pps {} sleeps/rt {sleeps:.2}",
            pps.map_or("-".into(), fmt)
        )),
        (Kind::Cost, _, None) => extra.push_str(&format!(" | pps {}", pps.map_or("-".into(), fmt))),
        (Kind::Throughput | Kind::Latency, Some(cpu), Some(sleeps)) => {
            extra.push_str(&format!(" | cpu {cpu:.2} us/rt sleeps/rt {sleeps:.2}"))
        }
        _ => {}
    }
    match scenario.kind {
        Kind::Burst => {
            let done: u64 = reports.iter().map(|r| r.flows_completed).sum();
            let clean: u64 = reports.iter().map(|r| r.flows_clean).sum();
            extra.push_str(&format!(" | clean bursts {clean}/{done}"));
        }
        Kind::Memory => {
            let fds = median(
                &mine
                    .iter()
                    .filter_map(|s| s.fds_per_flow)
                    .collect::<Vec<_>>(),
            );
            let flows = median(
                &reports
                    .iter()
                    .map(|r| r.established_flows as f64)
                    .collect::<Vec<_>>(),
            );
            extra = format!(
                "fds/flow {} | flows {}",
                fds.map_or("-".into(), |f| format!("{f:.3}")),
                flows.map_or("-".into(), fmt)
            );
        }
        _ => {}
    }
    // Where a loss went: the kernel's buffer drops, summed over rounds.
    let listener_drops: Option<u64> = mine.iter().map(|s| s.listener_drops).sum();
    let host_drops: Option<u64> = mine.iter().map(|s| s.host_drops).sum();
    if lost > 0 {
        extra.push_str(&format!(
            " | buffer drops listener {} host {}",
            listener_drops.map_or("-".into(), |d| d.to_string()),
            host_drops.map_or("-".into(), |d| d.to_string())
        ));
    }
    if errors > 0 {
        extra.push_str(&format!(" | {errors} failed"));
    }
    Some(Row {
        median: median(&values),
        min: values.iter().copied().fold(f64::INFINITY, f64::min),
        max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        extra,
    })
}

fn ratio(value: Option<f64>, base: Option<f64>) -> String {
    match (value, base) {
        (Some(v), Some(b)) if b > 0.0 => format!("{:.2}x", v / b),
        _ => "-".into(),
    }
}

/// Prints the table for the samples collected.
pub(crate) fn print(selected: &[Scenario], targets: &[Target], samples: &[Sample]) {
    println!(
        "{:<13} {:<7} {:>9} {:>10} {:>21} {:>8} {:>8}  details",
        "scenario", "target", "metric", "median", "min-max", "x direct", "x nginx"
    );
    for scenario in selected {
        let rows: Vec<(Target, Row)> = targets
            .iter()
            .filter_map(|&t| aggregate(scenario, t, samples).map(|r| (t, r)))
            .collect();
        let base = |t: Target| {
            rows.iter()
                .find(|(x, _)| *x == t)
                .and_then(|(_, r)| r.median)
        };
        let direct = base(Target::Direct);
        let nginx = base(Target::Nginx);
        for (target, row) in &rows {
            let range = if row.min.is_finite() {
                format!("{}-{}", fmt(row.min), fmt(row.max))
            } else {
                "-".into()
            };
            println!(
                "{:<13} {:<7} {:>9} {:>10} {:>21} {:>8} {:>8}  {}",
                scenario.name,
                target.name(),
                unit(scenario.kind),
                row.median.map_or("-".into(), fmt),
                range,
                ratio(row.median, direct),
                ratio(row.median, nginx),
                row.extra
            );
        }
    }
    // Flatness: 16,000 live flows against 1,000, same number in flight.
    let has = |n: &str| selected.iter().any(|s| s.name == n);
    if has("live-16000") && has("flows-1000") {
        let scenario_of = |n: &str| selected.iter().find(|s| s.name == n);
        for &t in targets {
            let get = |n: &str| scenario_of(n).and_then(|s| aggregate(s, t, samples)?.median);
            println!(
                "flatness {:<7} live-16000 / flows-1000 = {}",
                t.name(),
                ratio(get("live-16000"), get("flows-1000"))
            );
        }
    }
}
