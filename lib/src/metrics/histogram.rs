//! A fixed-size log-linear histogram for time metrics.
//!
//! Owns bucket counts, sum, count, max and a small ring of recent samples for
//! statsd. Recording never allocates. Values are unit-less `u64` (the
//! registry records milliseconds); percentiles are exact below 8 and within
//! 12.5% above (8 sub-buckets per power of two), p100 is the exact maximum.

/// Values below this have their own bucket.
const LINEAR: u64 = 8;
/// log2 of the sub-buckets per power of two.
const SUB_BITS: u32 = 3;
const BUCKETS: usize = LINEAR as usize + (64 - SUB_BITS as usize) * (1 << SUB_BITS);
/// Samples kept between two statsd flushes.
pub(super) const RECENT: usize = 32;

/// Percentile summary of a histogram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Summary {
    /// Values recorded.
    pub samples: u64,
    /// Their sum (saturating).
    pub sum: u64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p99_9: u64,
    /// 99.99th percentile.
    pub p99_99: u64,
    /// 99.999th percentile.
    pub p99_999: u64,
    /// The exact maximum.
    pub p100: u64,
}

/// A log-linear histogram.
#[derive(Clone)]
pub struct Histogram {
    buckets: [u64; BUCKETS],
    count: u64,
    sum: u64,
    max: u64,
    recent: [u64; RECENT],
    /// Samples recorded since the last [`take_recent`](Self::take_recent).
    since_take: u64,
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histogram")
            .field("count", &self.count)
            .field("sum", &self.sum)
            .field("max", &self.max)
            .finish()
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: [0; BUCKETS],
            count: 0,
            sum: 0,
            max: 0,
            recent: [0; RECENT],
            since_take: 0,
        }
    }
}

fn bucket_of(value: u64) -> usize {
    if value < LINEAR {
        return value as usize;
    }
    let exponent = 63 - value.leading_zeros(); // >= SUB_BITS
    let sub = (value >> (exponent - SUB_BITS)) & ((1 << SUB_BITS) - 1);
    LINEAR as usize + ((exponent - SUB_BITS) as usize) * (1 << SUB_BITS) + sub as usize
}

/// The largest value that lands in `bucket`.
fn bucket_upper(bucket: usize) -> u64 {
    if bucket < LINEAR as usize {
        return bucket as u64;
    }
    let rest = bucket - LINEAR as usize;
    let exponent = (rest >> SUB_BITS) as u32 + SUB_BITS;
    let sub = (rest & ((1 << SUB_BITS) - 1)) as u64;
    let width = 1u64 << (exponent - SUB_BITS);
    let low = (1u64 << exponent) + sub * width;
    low.saturating_add(width - 1)
}

impl Histogram {
    /// Records one value.
    pub fn record(&mut self, value: u64) {
        self.buckets[bucket_of(value)] += 1;
        self.count += 1;
        self.sum = self.sum.saturating_add(value);
        self.max = self.max.max(value);
        self.recent[(self.since_take % RECENT as u64) as usize] = value;
        self.since_take += 1;
    }

    /// Adds another histogram's samples (for aggregate views).
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *a += b;
        }
        self.count += other.count;
        self.sum = self.sum.saturating_add(other.sum);
        self.max = self.max.max(other.max);
    }

    /// Samples recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The value below which a fraction `q` of samples fall (bucket upper
    /// bound, never above the maximum).
    pub fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (bucket, &n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return bucket_upper(bucket).min(self.max);
            }
        }
        self.max
    }

    /// Percentiles p50 … p100, sum and count.
    pub fn summary(&self) -> Summary {
        Summary {
            samples: self.count,
            sum: self.sum,
            p50: self.quantile(0.5),
            p90: self.quantile(0.9),
            p99: self.quantile(0.99),
            p99_9: self.quantile(0.999),
            p99_99: self.quantile(0.9999),
            p99_999: self.quantile(0.99999),
            p100: self.max,
        }
    }

    /// The samples kept since the last call (at most [`RECENT`], the latest
    /// ones) and how many were recorded in total over that period.
    pub fn take_recent(&mut self) -> (&[u64], u64) {
        let total = self.since_take;
        self.since_take = 0;
        let kept = total.min(RECENT as u64) as usize;
        (&self.recent[..kept], total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_ordered_and_cover_their_values() {
        for v in [
            0,
            1,
            7,
            8,
            9,
            15,
            16,
            17,
            100,
            1_000,
            123_456,
            u64::MAX / 3,
            u64::MAX,
        ] {
            let b = bucket_of(v);
            assert!(bucket_upper(b) >= v, "{v}");
            if b > 0 {
                assert!(bucket_upper(b - 1) < v, "{v}");
            }
        }
    }

    #[test]
    fn percentiles_within_an_eighth_and_p100_exact() {
        let mut h = Histogram::default();
        for v in 1..=1000 {
            h.record(v);
        }
        let s = h.summary();
        assert_eq!((s.samples, s.sum, s.p100), (1000, 500_500, 1000));
        for (got, want) in [(s.p50, 500.0), (s.p90, 900.0), (s.p99, 990.0)] {
            assert!((got as f64 - want).abs() / want <= 0.125, "{got} vs {want}");
            assert!(got as f64 >= want, "upper bound: {got} vs {want}");
        }
        let mut small = Histogram::default();
        small.record(3);
        assert_eq!(small.summary().p50, 3);
    }

    #[test]
    fn recent_keeps_the_latest_and_counts_all() {
        let mut h = Histogram::default();
        for v in 0..40 {
            h.record(v);
        }
        let (kept, total) = h.take_recent();
        assert_eq!((kept.len(), total), (RECENT, 40));
        assert!(kept.contains(&39) && !kept.contains(&7));
        assert_eq!(h.take_recent().1, 0);
    }
}
