//! Wire format of benchmark datagrams and the statistics computed from them.
//!
//! Owns the 24-byte header every generated datagram carries (flow id,
//! sequence number, send timestamp), the classification of a reply that
//! came back on a flow's socket (valid, misrouted, invalid), and the RTT
//! summary (the histogram is `sozu_lib::metrics::Histogram`). Pure code: it never reads the clock and
//! never touches a socket, so it is unit-tested directly.

use serde::{Deserialize, Serialize};
use sozu_lib::metrics::Histogram;

/// Marks a datagram as produced by `sozu-bench gen` ("SBNC").
pub(crate) const MAGIC: u32 = 0x5342_4E43;

/// Bytes taken by the header at the start of every datagram.
pub(crate) const HEADER_LEN: usize = 24;

/// Flow id used by readiness probes (never a generator flow).
pub(crate) const PROBE_FLOW: u32 = u32::MAX;

/// Header of a benchmark datagram; the rest of the payload is filler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    /// Index of the generator flow (client socket) that sent it.
    pub flow: u32,
    /// Per-flow sequence number, increasing from 0.
    pub seq: u64,
    /// Send time in nanoseconds since the generator started.
    pub sent_ns: u64,
}

impl Header {
    /// Writes the header into the first [`HEADER_LEN`] bytes of `buf`.
    /// `buf` must be at least `HEADER_LEN` long (the generator enforces a
    /// minimum payload size).
    pub(crate) fn write(&self, buf: &mut [u8]) {
        buf[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        buf[4..8].copy_from_slice(&self.flow.to_le_bytes());
        buf[8..16].copy_from_slice(&self.seq.to_le_bytes());
        buf[16..24].copy_from_slice(&self.sent_ns.to_le_bytes());
    }

    /// Parses a header; `None` when too short or the magic is wrong.
    pub(crate) fn parse(buf: &[u8]) -> Option<Header> {
        let magic = u32::from_le_bytes(buf.get(0..4)?.try_into().ok()?);
        if magic != MAGIC {
            return None;
        }
        Some(Header {
            flow: u32::from_le_bytes(buf.get(4..8)?.try_into().ok()?),
            seq: u64::from_le_bytes(buf.get(8..16)?.try_into().ok()?),
            sent_ns: u64::from_le_bytes(buf.get(16..24)?.try_into().ok()?),
        })
    }
}

/// What a datagram received on a flow's socket turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reply {
    /// The reply to one of this flow's own datagrams.
    Valid(Header),
    /// A well-formed reply whose header names another flow: the proxy
    /// delivered someone else's reply to this socket.
    Misrouted(Header),
    /// Not a benchmark datagram (short or wrong magic).
    Invalid,
}

/// Classifies `datagram` received on the socket of flow `socket_flow`.
pub(crate) fn classify_reply(socket_flow: u32, datagram: &[u8]) -> Reply {
    match Header::parse(datagram) {
        Some(header) if header.flow == socket_flow => Reply::Valid(header),
        Some(header) => Reply::Misrouted(header),
        None => Reply::Invalid,
    }
}

/// The RTT histogram: the worker's own log-linear histogram at its finest
/// precision (percentiles at most 1/128 above the true value, exact below
/// 128 ns).
pub(crate) fn rtt_histogram() -> Histogram {
    Histogram::with_precision(sozu_lib::metrics::MAX_PRECISION)
}

/// RTT summary in microseconds, as printed and serialised.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub(crate) struct RttSummary {
    /// Median round trip time.
    pub p50_us: Option<f64>,
    /// 99th percentile.
    pub p99_us: Option<f64>,
    /// 99.9th percentile.
    pub p999_us: Option<f64>,
    /// Mean.
    pub mean_us: Option<f64>,
    /// Largest.
    pub max_us: Option<f64>,
    /// Number of RTT samples.
    pub samples: u64,
}

impl RttSummary {
    /// Summarises a histogram of nanosecond samples.
    pub(crate) fn from_histogram(h: &Histogram) -> RttSummary {
        let us = |ns: u64| ns as f64 / 1000.0;
        let percentile = |q: f64| (h.count() > 0).then(|| us(h.quantile(q)));
        RttSummary {
            p50_us: percentile(0.50),
            p99_us: percentile(0.99),
            p999_us: percentile(0.999),
            mean_us: h.mean().map(|m| m / 1000.0),
            max_us: h.max().map(us),
            samples: h.count(),
        }
    }
}

/// Median of a list of values (mean of the two middle ones when even).
pub(crate) fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    Some(if sorted.len().is_multiple_of(2) {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    } else {
        sorted[mid]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_rejects_garbage() {
        let h = Header {
            flow: 7,
            seq: 1 << 40,
            sent_ns: 123_456_789,
        };
        let mut buf = [0u8; 64];
        h.write(&mut buf);
        assert_eq!(Header::parse(&buf), Some(h));
        assert_eq!(Header::parse(&buf[..HEADER_LEN - 1]), None);
        buf[0] ^= 1;
        assert_eq!(Header::parse(&buf), None);
    }

    #[test]
    fn reply_for_another_flow_is_misrouted() {
        let mut buf = [0u8; HEADER_LEN];
        Header {
            flow: 3,
            seq: 0,
            sent_ns: 0,
        }
        .write(&mut buf);
        assert!(matches!(classify_reply(3, &buf), Reply::Valid(h) if h.flow == 3));
        assert!(matches!(classify_reply(4, &buf), Reply::Misrouted(h) if h.flow == 3));
        assert_eq!(classify_reply(3, b"hello"), Reply::Invalid);
        assert_eq!(classify_reply(3, &[]), Reply::Invalid);
    }

    #[test]
    fn rtt_summary_in_microseconds_within_one_percent() {
        let mut h = rtt_histogram();
        assert_eq!(RttSummary::from_histogram(&h), RttSummary::default());
        for v in 1..=100_000u64 {
            h.record(v * 10);
        }
        let s = RttSummary::from_histogram(&h);
        let close = |got: Option<f64>, want: f64| {
            let got = got.expect("samples recorded");
            (got - want).abs() / want < 0.01
        };
        assert!(close(s.p50_us, 500.0), "{s:?}");
        assert!(close(s.p99_us, 990.0), "{s:?}");
        assert!(close(s.p999_us, 999.0), "{s:?}");
        assert_eq!(s.max_us, Some(1000.0));
        assert_eq!(s.mean_us, Some(500.005));
        assert_eq!(s.samples, 100_000);
    }

    #[test]
    fn small_rtts_are_exact_and_the_tail_is_seen() {
        let mut h = rtt_histogram();
        for _ in 0..999 {
            h.record(5);
        }
        h.record(1_000_000_000);
        let s = RttSummary::from_histogram(&h);
        assert_eq!((s.p50_us, s.p999_us), (Some(0.005), Some(0.005)));
        assert_eq!(s.max_us, Some(1_000_000.0));
    }

    #[test]
    fn median_of_odd_and_even_lists() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }
}
