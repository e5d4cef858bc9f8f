//! Optional statsd push of the registry (`[metrics] address`).
//!
//! Owns a non-blocking UDP socket connected to the statsd server and the
//! last counter values it sent. The worker calls [`StatsdSink::flush`] on a
//! timer; a flush formats `prefix.name:value|c` (counter deltas), `|g`
//! (gauges) and `|ms` (time samples, with `|@rate` when some were not kept)
//! into datagrams of at most [`MAX_DATAGRAM`] bytes. It never blocks, never
//! panics on network errors (a datagram that cannot leave is counted as
//! dropped) and never reads the clock.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};

use super::{MetricsRegistry, Scope, Value};

/// Largest datagram sent: fits a 1500-byte MTU with IPv6 and UDP headers.
pub(crate) const MAX_DATAGRAM: usize = 1432;

/// What a flush did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct FlushReport {
    /// Lines formatted.
    pub lines: usize,
    /// Datagrams sent.
    pub datagrams: usize,
    /// Datagrams the socket refused (statsd down, buffer full).
    pub dropped_datagrams: usize,
}

/// Pushes metrics to a statsd server.
#[derive(Debug)]
pub(crate) struct StatsdSink {
    socket: UdpSocket,
    prefix: String,
    tagged: bool,
    /// Per registry slot: (generation, counter value last sent).
    sent_counters: HashMap<u32, (u32, i64)>,
    packet: String,
    line: String,
}

impl StatsdSink {
    /// A sink sending to `target`. With `tagged`, scopes go in dogstatsd tags
    /// (`|#cluster_id:…,backend_id:…`); otherwise in the name
    /// (`prefix.cluster.<id>.backend.<id>.name`).
    pub(crate) fn new(target: SocketAddr, prefix: &str, tagged: bool) -> io::Result<Self> {
        let local: SocketAddr = match target {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let socket = UdpSocket::bind(local)?;
        socket.connect(target)?;
        socket.set_nonblocking(true)?;
        Ok(StatsdSink {
            socket,
            prefix: prefix.trim_end_matches('.').to_owned(),
            tagged,
            sent_counters: HashMap::new(),
            packet: String::with_capacity(MAX_DATAGRAM),
            line: String::new(),
        })
    }

    /// Sends what changed since the last flush: counter deltas (non-zero
    /// only), every gauge, and the time samples recorded since.
    pub(crate) fn flush(&mut self, registry: &mut MetricsRegistry) -> FlushReport {
        let mut report = FlushReport::default();
        self.packet.clear();
        let mut live = HashSet::new();
        for (index, generation, entry) in registry.entries_mut() {
            live.insert(index);
            match &mut entry.value {
                Value::Counter(value) => {
                    let sent = match self.sent_counters.get(&index) {
                        Some(&(g, v)) if g == generation => v,
                        _ => 0,
                    };
                    self.sent_counters.insert(index, (generation, *value));
                    // A counter below what was sent was cleared
                    // (`configure_metrics CLEAR`): all of it is new.
                    let delta = if *value < sent {
                        *value
                    } else {
                        value.saturating_sub(sent)
                    };
                    if delta != 0 {
                        self.format_line(&entry.name, &entry.scope, delta, "c", None);
                        self.push_line(&mut report);
                    }
                }
                Value::Gauge(value) => {
                    self.format_line(&entry.name, &entry.scope, *value, "g", None);
                    self.push_line(&mut report);
                }
                Value::Time(histogram) => {
                    let (samples, total) = histogram.take_recent();
                    let rate =
                        (total > samples.len() as u64).then(|| samples.len() as f64 / total as f64);
                    for &sample in samples {
                        Self::format_into(
                            &mut self.line,
                            &self.prefix,
                            self.tagged,
                            &entry.name,
                            &entry.scope,
                            sample,
                            "ms",
                            rate,
                        );
                        self.push_line(&mut report);
                    }
                }
            }
        }
        self.sent_counters.retain(|index, _| live.contains(index));
        self.send_packet(&mut report);
        report
    }

    fn format_line(
        &mut self,
        name: &str,
        scope: &Scope,
        value: impl std::fmt::Display,
        kind: &str,
        rate: Option<f64>,
    ) {
        Self::format_into(
            &mut self.line,
            &self.prefix,
            self.tagged,
            name,
            scope,
            value,
            kind,
            rate,
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn format_into(
        line: &mut String,
        prefix: &str,
        tagged: bool,
        name: &str,
        scope: &Scope,
        value: impl std::fmt::Display,
        kind: &str,
        rate: Option<f64>,
    ) {
        line.clear();
        if !prefix.is_empty() {
            line.push_str(prefix);
            line.push('.');
        }
        if !tagged {
            match scope {
                Scope::Proxy => {}
                Scope::Listener(addr) => {
                    line.push_str("listener.");
                    push_sanitized(line, &addr.to_string());
                    line.push('.');
                }
                Scope::Cluster(c) => {
                    line.push_str("cluster.");
                    push_sanitized(line, c.as_str());
                    line.push('.');
                }
                Scope::Backend(c, b) => {
                    line.push_str("cluster.");
                    push_sanitized(line, c.as_str());
                    line.push_str(".backend.");
                    push_sanitized(line, b.as_str());
                    line.push('.');
                }
            }
        }
        let _ = write!(line, "{name}:{value}|{kind}");
        if let Some(rate) = rate {
            let _ = write!(line, "|@{rate:.3}");
        }
        if tagged {
            match scope {
                Scope::Proxy => {}
                Scope::Listener(addr) => {
                    let _ = write!(line, "|#listener:{addr}");
                }
                Scope::Cluster(c) => {
                    line.push_str("|#cluster_id:");
                    push_tag_value(line, c.as_str());
                }
                Scope::Backend(c, b) => {
                    line.push_str("|#cluster_id:");
                    push_tag_value(line, c.as_str());
                    line.push_str(",backend_id:");
                    push_tag_value(line, b.as_str());
                }
            }
        }
    }

    /// Appends the formatted line to the packet, sending the packet first
    /// if the line would not fit.
    fn push_line(&mut self, report: &mut FlushReport) {
        report.lines += 1;
        if !self.packet.is_empty() && self.packet.len() + 1 + self.line.len() > MAX_DATAGRAM {
            self.send_packet(report);
        }
        if !self.packet.is_empty() {
            self.packet.push('\n');
        }
        self.packet.push_str(&self.line);
    }

    fn send_packet(&mut self, report: &mut FlushReport) {
        if self.packet.is_empty() {
            return;
        }
        match self.socket.send(self.packet.as_bytes()) {
            Ok(_) => report.datagrams += 1,
            Err(e) => {
                report.dropped_datagrams += 1;
                tracing::debug!(error = %e, "statsd datagram dropped");
            }
        }
        self.packet.clear();
    }
}

/// Ids in metric names: anything but `[A-Za-z0-9_-]` becomes `_` so the
/// statsd name keeps its dot structure.
fn push_sanitized(line: &mut String, id: &str) {
    line.extend(id.chars().map(|c| {
        if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
            c
        } else {
            '_'
        }
    }));
}

/// Tag values may not contain the line's separators.
fn push_tag_value(line: &mut String, id: &str) {
    line.extend(id.chars().map(|c| {
        if matches!(c, ',' | '|' | '#' | '\n') {
            '_'
        } else {
            c
        }
    }));
}
