//! `sozu top`: a live view for people, one `query_metrics` per refresh,
//! printed as two tables (listeners, clusters) with flows now and
//! datagrams/s in, out and dropped (by reason) since the last refresh.
//!
//! Bounded: one order in flight, at most `--rows` rows per table (the
//! busiest first), at most `--count` refreshes when given. It quits cleanly
//! (exit 0) on Ctrl-C or SIGTERM, on `q` or end of input when its input is a
//! terminal, and when its output is closed (`sozu top | head`). On a
//! terminal each refresh redraws the screen; otherwise frames follow one
//! another, separated by a blank line. The tables are built by pure
//! functions ([`Sample::from_metrics`], [`frame`]) so tests can check them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sozu_command_lib::command::filtered_metrics::Inner;
use sozu_command_lib::command::request::RequestType;
use sozu_command_lib::command::response_content::ContentType;
use sozu_command_lib::command::{
    AggregatedMetrics, FilteredMetrics, QueryMetricsOptions, Request, ResponseStatus,
};

use super::session::Session;
use super::{EXIT_FAILURE_ANSWER, EXIT_NO_ANSWER};
use crate::cli::TopArgs;

/// Set by Ctrl-C / SIGTERM, or by `q` / end of a terminal's input.
static QUIT: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    QUIT.store(true, Ordering::SeqCst);
}

/// What one refresh shows of one listener or cluster.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Figures {
    /// `udp.active_flows` now.
    pub flows: u64,
    /// `udp.datagrams.in` so far.
    pub datagrams_in: i64,
    /// `udp.datagrams.out` so far.
    pub datagrams_out: i64,
    /// `udp.datagrams.dropped.<reason>` so far, by reason.
    pub drops: BTreeMap<String, i64>,
}

/// The figures of one refresh.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Sample {
    pub listeners: BTreeMap<String, Figures>,
    pub clusters: BTreeMap<String, Figures>,
    /// Workers whose figures are in this sample.
    pub workers: usize,
}

fn value(metric: &FilteredMetrics) -> Option<i64> {
    match metric.inner {
        Some(Inner::Count(v)) => Some(v),
        Some(Inner::Gauge(v)) => Some(i64::try_from(v).unwrap_or(i64::MAX)),
        _ => None,
    }
}

fn apply(figures: &mut Figures, name: &str, metric: &FilteredMetrics) {
    let Some(v) = value(metric) else {
        return;
    };
    match name {
        "udp.active_flows" => figures.flows = u64::try_from(v).unwrap_or(0),
        "udp.datagrams.in" => figures.datagrams_in = v,
        "udp.datagrams.out" => figures.datagrams_out = v,
        _ => {
            if let Some(reason) = name.strip_prefix("udp.datagrams.dropped.") {
                figures.drops.insert(reason.to_owned(), v);
            }
        }
    }
}

impl Sample {
    /// Reads the master's aggregated answer: listeners from the
    /// `name@address` entries, clusters from the cluster totals.
    pub(crate) fn from_metrics(metrics: &AggregatedMetrics) -> Sample {
        let mut sample = Sample {
            workers: metrics.workers.len(),
            ..Sample::default()
        };
        for (key, metric) in &metrics.proxying {
            if let Some((name, listener)) = key.split_once('@') {
                let figures = sample.listeners.entry(listener.to_owned()).or_default();
                apply(figures, name, metric);
            }
        }
        for (id, cluster) in &metrics.clusters {
            let figures = sample.clusters.entry(id.clone()).or_default();
            for (name, metric) in &cluster.cluster {
                apply(figures, name, metric);
            }
        }
        // A cluster is shown once it has UDP traffic or flows (TCP and HTTP
        // clusters have their own figures, not these).
        sample.clusters.retain(|_, f| {
            f.flows > 0 || f.datagrams_in > 0 || f.datagrams_out > 0 || !f.drops.is_empty()
        });
        sample
    }
}

/// Per-second rate of a counter between two samples; a counter that went
/// down (`metrics clear`, a restarted worker) counts from zero.
fn rate(now: i64, before: Option<i64>, seconds: f64) -> Option<f64> {
    let before = before?;
    let delta = if now >= before { now - before } else { now };
    Some(delta as f64 / seconds)
}

fn show(rate: Option<f64>) -> String {
    match rate {
        Some(r) => format!("{r:.1}"),
        None => "-".to_owned(),
    }
}

struct Row {
    name: String,
    flows: u64,
    rate_in: Option<f64>,
    rate_out: Option<f64>,
    rate_drops: Option<f64>,
    reasons: String,
}

fn rows(
    now: &BTreeMap<String, Figures>,
    before: Option<&BTreeMap<String, Figures>>,
    seconds: f64,
) -> Vec<Row> {
    now.iter()
        .map(|(name, f)| {
            let prev = before.and_then(|b| b.get(name));
            let rate_in = rate(f.datagrams_in, prev.map(|p| p.datagrams_in), seconds);
            let rate_out = rate(f.datagrams_out, prev.map(|p| p.datagrams_out), seconds);
            // No drop counter here (clusters: drops are counted per
            // listener, a dropped datagram may have no cluster): `-`.
            let mut total: Option<f64> = prev.filter(|_| !f.drops.is_empty()).map(|_| 0.0);
            let mut reasons = Vec::new();
            for (reason, count) in &f.drops {
                let before = prev.map(|p| p.drops.get(reason).copied().unwrap_or(0));
                if let Some(r) = rate(*count, before, seconds) {
                    total = total.map(|t| t + r);
                    if r > 0.0 {
                        reasons.push(format!("{reason}={r:.1}"));
                    }
                }
            }
            Row {
                name: name.clone(),
                flows: f.flows,
                rate_in,
                rate_out,
                rate_drops: total,
                reasons: if reasons.is_empty() {
                    "-".to_owned()
                } else {
                    reasons.join(" ")
                },
            }
        })
        .collect()
}

fn table(out: &mut String, title: &str, mut rows: Vec<Row>, limit: usize) {
    // The busiest first: by datagrams/s in, then by flows.
    rows.sort_by(|a, b| {
        b.rate_in
            .unwrap_or(0.0)
            .total_cmp(&a.rate_in.unwrap_or(0.0))
            .then(b.flows.cmp(&a.flows))
            .then(a.name.cmp(&b.name))
    });
    let width = rows
        .iter()
        .take(limit)
        .map(|r| r.name.len())
        .max()
        .unwrap_or(0)
        .max(title.len());
    let _ = writeln!(
        out,
        "{title:<width$}  {:>8}  {:>10}  {:>10}  {:>10}  DROPS/S BY REASON",
        "FLOWS", "IN/S", "OUT/S", "DROPS/S"
    );
    let hidden = rows.len().saturating_sub(limit);
    for r in rows.into_iter().take(limit) {
        let _ = writeln!(
            out,
            "{:<width$}  {:>8}  {:>10}  {:>10}  {:>10}  {}",
            r.name,
            r.flows,
            show(r.rate_in),
            show(r.rate_out),
            show(r.rate_drops),
            r.reasons
        );
    }
    if hidden > 0 {
        let _ = writeln!(out, "… and {hidden} more");
    }
}

/// The text of one refresh: `before` is the previous sample (rates are
/// `-` without one), `seconds` the time between them.
pub(crate) fn frame(
    refresh: u64,
    now: &Sample,
    before: Option<&Sample>,
    seconds: f64,
    limit: usize,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "sozu top: refresh {refresh}, {} worker(s) answered, rates over {seconds:.1}s",
        now.workers
    );
    out.push('\n');
    table(
        &mut out,
        "LISTENER",
        rows(&now.listeners, before.map(|b| &b.listeners), seconds),
        limit,
    );
    out.push('\n');
    table(
        &mut out,
        "CLUSTER",
        rows(&now.clusters, before.map(|b| &b.clusters), seconds),
        limit,
    );
    out
}

/// The clock of the refresh loop (a CLI shell: reading it is its job).
#[allow(clippy::disallowed_methods)]
fn now() -> Instant {
    Instant::now()
}

fn install_handlers() {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        if let Err(error) = unsafe { sigaction(signal, &action) } {
            eprintln!("warning: cannot catch {signal}: {error}");
        }
    }
    if std::io::stdin().is_terminal() {
        std::thread::spawn(|| {
            let stdin = std::io::stdin();
            for line in stdin.lock().lines() {
                match line {
                    Ok(line) if line.trim() == "q" => break,
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            QUIT.store(true, Ordering::SeqCst);
        });
    }
}

/// Sleeps until `until` or a quit request, whichever comes first.
fn pause_until(until: Instant) {
    while !QUIT.load(Ordering::SeqCst) {
        let left = until.saturating_duration_since(now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}

/// Runs the live view until it is told to stop.
pub(crate) fn run(session: &mut Session, args: &TopArgs) -> ExitCode {
    install_handlers();
    let interval = Duration::from_secs(args.interval);
    let limit = usize::try_from(args.rows).unwrap_or(usize::MAX);
    let redraw = std::io::stdout().is_terminal();
    let request = Request {
        request_type: Some(RequestType::QueryMetrics(QueryMetricsOptions::default())),
    };
    let mut before: Option<(Sample, Instant)> = None;
    let mut refresh = 0u64;
    while !QUIT.load(Ordering::SeqCst) {
        let asked_at = now();
        let answer = match session.order(&request, |_| {}) {
            Ok(answer) => answer,
            Err(error) => {
                if QUIT.load(Ordering::SeqCst) {
                    break;
                }
                eprintln!("error: {error}");
                return ExitCode::from(EXIT_NO_ANSWER);
            }
        };
        if answer.status != ResponseStatus::Ok as i32 {
            eprintln!("error: {}", answer.message);
            return ExitCode::from(EXIT_FAILURE_ANSWER);
        }
        let Some(ContentType::Metrics(metrics)) =
            answer.content.and_then(|content| content.content_type)
        else {
            eprintln!("error: the master answered without metrics");
            return ExitCode::from(EXIT_FAILURE_ANSWER);
        };
        refresh += 1;
        let sample = Sample::from_metrics(&metrics);
        let seconds = before.as_ref().map_or(interval.as_secs_f64(), |(_, at)| {
            asked_at.duration_since(*at).as_secs_f64().max(0.001)
        });
        let text = frame(
            refresh,
            &sample,
            before.as_ref().map(|(s, _)| s),
            seconds,
            limit,
        );
        let mut stdout = std::io::stdout().lock();
        let written = if redraw {
            write!(stdout, "\x1b[H\x1b[2J{text}")
        } else if refresh > 1 {
            write!(stdout, "\n{text}")
        } else {
            write!(stdout, "{text}")
        };
        // A closed output (`sozu top | head`) ends the view, quietly.
        if written.and_then(|()| stdout.flush()).is_err() {
            break;
        }
        drop(stdout);
        before = Some((sample, asked_at));
        if args.count.is_some_and(|count| refresh >= count) {
            break;
        }
        pause_until(asked_at + interval);
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;
    use sozu_command_lib::command::ClusterMetrics;

    fn count(v: i64) -> FilteredMetrics {
        FilteredMetrics {
            inner: Some(Inner::Count(v)),
        }
    }

    fn metrics(datagrams_in: i64, shed: i64) -> AggregatedMetrics {
        let mut m = AggregatedMetrics::default();
        m.proxying
            .insert("udp.datagrams.in".into(), count(datagrams_in));
        m.proxying
            .insert("udp.datagrams.in@127.0.0.1:53".into(), count(datagrams_in));
        m.proxying.insert(
            "udp.active_flows@127.0.0.1:53".into(),
            FilteredMetrics {
                inner: Some(Inner::Gauge(2)),
            },
        );
        m.proxying.insert(
            "udp.datagrams.dropped.shed@127.0.0.1:53".into(),
            count(shed),
        );
        let mut cluster = ClusterMetrics::default();
        cluster
            .cluster
            .insert("udp.datagrams.in".into(), count(datagrams_in));
        m.clusters.insert("dns".into(), cluster);
        m.clusters.insert("web".into(), ClusterMetrics::default());
        m
    }

    #[test]
    fn rates_are_deltas_per_second_and_absent_on_the_first_frame() {
        let first = Sample::from_metrics(&metrics(100, 0));
        assert_eq!(first.listeners["127.0.0.1:53"].flows, 2);
        assert!(!first.clusters.contains_key("web"), "no UDP figures");
        // The cells of the frame's row that starts with `first`.
        let row = |text: &str, first: &str| -> Vec<String> {
            let line = text.lines().find(|l| l.starts_with(first));
            let line = line.unwrap_or_else(|| panic!("no {first} row in\n{text}"));
            line.split_whitespace().map(str::to_owned).collect()
        };
        let text = frame(1, &first, None, 1.0, 20);
        assert_eq!(
            row(&text, "127.0.0.1:53"),
            ["127.0.0.1:53", "2", "-", "-", "-", "-"]
        );
        let second = Sample::from_metrics(&metrics(300, 10));
        let text = frame(2, &second, Some(&first), 2.0, 20);
        assert_eq!(
            row(&text, "127.0.0.1:53"),
            ["127.0.0.1:53", "2", "100.0", "0.0", "5.0", "shed=5.0"]
        );
        assert_eq!(row(&text, "dns"), ["dns", "0", "100.0", "0.0", "-", "-"]);
    }

    #[test]
    fn a_counter_that_went_down_counts_from_zero() {
        assert_eq!(rate(5, Some(100), 1.0), Some(5.0));
        assert_eq!(rate(5, None, 1.0), None);
    }

    #[test]
    fn rows_are_bounded_busiest_first() {
        let mut now = Sample::default();
        for i in 0..5 {
            now.listeners.insert(
                format!("127.0.0.1:{i}"),
                Figures {
                    datagrams_in: i * 10,
                    ..Figures::default()
                },
            );
        }
        let before = Sample {
            listeners: now
                .listeners
                .keys()
                .map(|k| (k.clone(), Figures::default()))
                .collect(),
            ..Sample::default()
        };
        let text = frame(2, &now, Some(&before), 1.0, 2);
        let listed: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("127.0.0.1:"))
            .map(|l| l.split_whitespace().next().unwrap())
            .collect();
        assert_eq!(listed, ["127.0.0.1:4", "127.0.0.1:3"]);
        assert!(text.contains("… and 3 more"), "{text}");
    }
}
