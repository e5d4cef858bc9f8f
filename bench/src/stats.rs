//! Wire format of benchmark datagrams and the statistics computed from them.
//!
//! Owns the 24-byte header every generated datagram carries (flow id,
//! sequence number, send timestamp), the classification of a reply that
//! came back on a flow's socket (valid, misrouted, invalid), and the RTT
//! histogram with its percentiles. Pure code: it never reads the clock and
//! never touches a socket, so it is unit-tested directly.

use serde::{Deserialize, Serialize};

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

/// Values below `1 << SUB_BITS` get one bucket each; above, every power of
/// two is split into `1 << SUB_BITS` buckets (relative error < 1/256).
const SUB_BITS: u32 = 7;
const SUB_COUNT: u64 = 1 << SUB_BITS;
const BUCKETS: usize = (SUB_COUNT as usize) * (64 - SUB_BITS as usize + 1);

/// Log-linear histogram of u64 samples (nanoseconds), fixed memory.
#[derive(Debug, Clone)]
pub(crate) struct Histogram {
    counts: Vec<u64>,
    total: u64,
    sum: u128,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            sum: 0,
            max: 0,
        }
    }
}

fn bucket_of(value: u64) -> usize {
    if value < SUB_COUNT {
        return value as usize;
    }
    let exponent = 63 - value.leading_zeros();
    let shift = exponent - SUB_BITS;
    let mantissa = (value >> shift) - SUB_COUNT;
    (SUB_COUNT + u64::from(shift) * SUB_COUNT + mantissa) as usize
}

/// Midpoint of the range of values that fall into `bucket`.
fn value_of(bucket: usize) -> u64 {
    let bucket = bucket as u64;
    if bucket < SUB_COUNT {
        return bucket;
    }
    let shift = (bucket - SUB_COUNT) / SUB_COUNT;
    let mantissa = (bucket - SUB_COUNT) % SUB_COUNT;
    let low = (SUB_COUNT + mantissa) << shift;
    low + ((1u64 << shift) >> 1)
}

impl Histogram {
    /// Records one sample.
    pub(crate) fn record(&mut self, value: u64) {
        self.counts[bucket_of(value)] += 1;
        self.total += 1;
        self.sum += u128::from(value);
        self.max = self.max.max(value);
    }

    /// Number of samples recorded.
    pub(crate) fn count(&self) -> u64 {
        self.total
    }

    /// Largest sample, `None` when empty.
    pub(crate) fn max(&self) -> Option<u64> {
        (self.total > 0).then_some(self.max)
    }

    /// Arithmetic mean, `None` when empty.
    pub(crate) fn mean(&self) -> Option<f64> {
        (self.total > 0).then(|| self.sum as f64 / self.total as f64)
    }

    /// The value at quantile `q` (0.0..=1.0): the smallest recorded bucket
    /// whose cumulative count reaches `ceil(q * count)`. `None` when empty.
    pub(crate) fn percentile(&self, q: f64) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        for (bucket, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                // Never report more than the true maximum.
                return Some(value_of(bucket).min(self.max));
            }
        }
        Some(self.max)
    }
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
        RttSummary {
            p50_us: h.percentile(0.50).map(us),
            p99_us: h.percentile(0.99).map(us),
            p999_us: h.percentile(0.999).map(us),
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
    fn percentiles_of_uniform_samples() {
        let mut h = Histogram::default();
        assert_eq!(h.percentile(0.5), None);
        for v in 1..=100_000u64 {
            h.record(v * 10);
        }
        let close = |got: u64, want: f64| (got as f64 - want).abs() / want < 0.01;
        let p50 = h.percentile(0.5).unwrap();
        let p99 = h.percentile(0.99).unwrap();
        let p999 = h.percentile(0.999).unwrap();
        assert!(close(p50, 500_000.0), "p50 {p50}");
        assert!(close(p99, 990_000.0), "p99 {p99}");
        assert!(close(p999, 999_000.0), "p999 {p999}");
        assert_eq!(h.percentile(1.0), Some(1_000_000));
        assert_eq!(h.count(), 100_000);
    }

    #[test]
    fn small_values_are_exact_and_tail_is_seen() {
        let mut h = Histogram::default();
        for _ in 0..999 {
            h.record(5);
        }
        h.record(1_000_000_000);
        assert_eq!(h.percentile(0.5), Some(5));
        assert_eq!(h.percentile(0.999), Some(5));
        let top = h.percentile(0.9999).unwrap();
        assert!((top as f64 - 1e9).abs() / 1e9 < 0.01, "{top}");
    }

    #[test]
    fn buckets_cover_the_whole_u64_range() {
        for v in [0, 1, 127, 128, 255, 256, 1 << 20, u64::MAX / 3, u64::MAX] {
            let b = bucket_of(v);
            assert!(b < BUCKETS, "{v} -> {b}");
            let mid = value_of(b) as f64;
            assert!(v == 0 || (mid - v as f64).abs() / (v as f64) < 0.01, "{v}");
        }
    }

    #[test]
    fn median_of_odd_and_even_lists() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }
}
