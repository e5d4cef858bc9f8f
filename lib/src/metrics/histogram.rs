//! A fixed-size log-linear histogram: the one the worker's time metrics and
//! `sozu-bench`'s round-trip times both use.
//!
//! Owns bucket counts, sum, count, max and a small ring of recent samples for
//! statsd. Buckets are allocated once, at construction; recording never
//! allocates. Values are unit-less `u64` (the registry records milliseconds,
//! bench nanoseconds). With `p` bits of precision, values below `2^p` each
//! have their own bucket and every power of two above is split into `2^p`
//! buckets; a percentile is the upper bound of its bucket (never above the
//! maximum), so it is exact below `2^p` and at most `2^-p` above the true
//! value beyond. The metrics registry uses 3 bits (12.5%), bench 7 (0.8%);
//! p100 is the exact maximum.

/// The registry's precision: 8 sub-buckets per power of two.
const DEFAULT_PRECISION: u32 = 3;
/// The finest precision offered (128 sub-buckets per power of two, about
/// 7,400 buckets).
pub const MAX_PRECISION: u32 = 7;
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
    /// log2 of the sub-buckets per power of two (1..=[`MAX_PRECISION`]).
    precision: u32,
    buckets: Box<[u64]>,
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
    /// The metrics registry's precision (within 12.5%).
    fn default() -> Self {
        Histogram::with_precision(DEFAULT_PRECISION)
    }
}

/// Buckets a histogram of `precision` bits needs to cover every `u64`.
fn bucket_count(precision: u32) -> usize {
    (1usize << precision) + (64 - precision as usize) * (1 << precision)
}

impl Histogram {
    /// An empty histogram of `precision` bits (clamped to
    /// 1..=[`MAX_PRECISION`]): percentiles within `2^-precision` above the
    /// true value.
    pub fn with_precision(precision: u32) -> Self {
        let precision = precision.clamp(1, MAX_PRECISION);
        Histogram {
            precision,
            buckets: vec![0; bucket_count(precision)].into_boxed_slice(),
            count: 0,
            sum: 0,
            max: 0,
            recent: [0; RECENT],
            since_take: 0,
        }
    }
}

/// The bucket of `value` at `precision` bits.
fn bucket_of(precision: u32, value: u64) -> usize {
    let linear = 1u64 << precision;
    if value < linear {
        return value as usize;
    }
    let exponent = 63 - value.leading_zeros(); // >= precision
    let sub = (value >> (exponent - precision)) & (linear - 1);
    linear as usize + ((exponent - precision) as usize) * (linear as usize) + sub as usize
}

/// The largest value that lands in `bucket` at `precision` bits.
fn bucket_upper(precision: u32, bucket: usize) -> u64 {
    let linear = 1usize << precision;
    if bucket < linear {
        return bucket as u64;
    }
    let rest = bucket - linear;
    let exponent = (rest >> precision) as u32 + precision;
    let sub = (rest & (linear - 1)) as u64;
    let width = 1u64 << (exponent - precision);
    let low = (1u64 << exponent) + sub * width;
    low.saturating_add(width - 1)
}

impl Histogram {
    /// Records one value.
    pub fn record(&mut self, value: u64) {
        self.buckets[bucket_of(self.precision, value)] += 1;
        self.count += 1;
        self.sum = self.sum.saturating_add(value);
        self.max = self.max.max(value);
        self.recent[(self.since_take % RECENT as u64) as usize] = value;
        self.since_take += 1;
    }

    /// Adds another histogram's samples (for aggregate views). Of another
    /// precision, each of its buckets counts at its upper bound.
    pub fn merge(&mut self, other: &Histogram) {
        if other.precision == self.precision {
            for (a, b) in self.buckets.iter_mut().zip(other.buckets.iter()) {
                *a += b;
            }
        } else {
            for (bucket, &n) in other.buckets.iter().enumerate().filter(|(_, &n)| n > 0) {
                let value = bucket_upper(other.precision, bucket).min(other.max);
                self.buckets[bucket_of(self.precision, value)] += n;
            }
        }
        self.count += other.count;
        self.sum = self.sum.saturating_add(other.sum);
        self.max = self.max.max(other.max);
    }

    /// Samples recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The largest sample, `None` when empty.
    pub fn max(&self) -> Option<u64> {
        (self.count > 0).then_some(self.max)
    }

    /// The arithmetic mean, `None` when empty.
    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum as f64 / self.count as f64)
    }

    /// Forgets every sample, keeping the buckets (no allocation).
    pub fn clear(&mut self) {
        self.buckets.fill(0);
        self.count = 0;
        self.sum = 0;
        self.max = 0;
        self.since_take = 0;
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
                return bucket_upper(self.precision, bucket).min(self.max);
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
            for precision in [DEFAULT_PRECISION, MAX_PRECISION] {
                let b = bucket_of(precision, v);
                assert!(b < bucket_count(precision), "{v}");
                assert!(bucket_upper(precision, b) >= v, "{v}");
                if b > 0 {
                    assert!(bucket_upper(precision, b - 1) < v, "{v}");
                }
            }
        }
    }

    #[test]
    fn fine_precision_is_within_one_128th_and_exact_below_128() {
        let mut h = Histogram::with_precision(MAX_PRECISION);
        assert_eq!((h.max(), h.mean()), (None, None));
        for v in 1..=100_000u64 {
            h.record(v * 10);
        }
        for (q, want) in [(0.5, 500_000.0), (0.99, 990_000.0), (0.999, 999_000.0)] {
            let got = h.quantile(q) as f64;
            assert!(
                got >= want && (got - want) / want < 1.0 / 128.0,
                "{q}: {got}"
            );
        }
        assert_eq!(h.quantile(1.0), 1_000_000);
        assert_eq!(h.mean(), Some(500_005.0));
        let mut small = Histogram::with_precision(MAX_PRECISION);
        for v in [5, 5, 127] {
            small.record(v);
        }
        assert_eq!((small.quantile(0.5), small.quantile(1.0)), (5, 127));
    }

    #[test]
    fn merging_another_precision_keeps_count_sum_and_max() {
        let mut fine = Histogram::with_precision(MAX_PRECISION);
        for v in 1..=1000 {
            fine.record(v);
        }
        let mut coarse = Histogram::default();
        coarse.merge(&fine);
        let s = coarse.summary();
        assert_eq!((s.samples, s.sum, s.p100), (1000, 500_500, 1000));
        assert!((500..=563).contains(&s.p50), "{}", s.p50);
    }

    #[test]
    fn clear_forgets_every_sample() {
        let mut h = Histogram::default();
        h.record(40);
        h.clear();
        assert_eq!(h.summary(), Summary::default());
        assert_eq!(h.take_recent().1, 0);
        h.record(3);
        assert_eq!(h.summary().p100, 3);
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
