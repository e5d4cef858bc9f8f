//! Seeded pseudo-randomness and 64-bit mixing for the load-balancing policies.
//!
//! Owns a tiny SplitMix64 generator and the finaliser used to spread hashes.
//! It must never read the clock or the OS entropy pool: the seed is injected so
//! that a policy is reproducible in tests and simulations.

pub(crate) use crate::protocol::hash::mix64;

/// Stable 64-bit hash of a byte string (FNV-1a then [`mix64`]).
///
/// Stable across processes and versions on purpose: every worker must build
/// the same HRW scores and Maglev table from the same backend ids.
pub(crate) fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix64(h)
}

/// A SplitMix64 pseudo-random generator (not cryptographic).
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator whose whole sequence is determined by `seed`.
    pub(crate) fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    /// The next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix64(self.state)
    }

    /// A value in `0..bound` (`bound > 0`), by Lemire's multiply-shift; the
    /// bias is below 2^-32 for the bounds a backend list can have.
    pub(crate) fn below(&mut self, bound: usize) -> usize {
        debug_assert!(bound > 0, "below() needs a non-empty range");
        ((u128::from(self.next_u64()) * bound as u128) >> 64) as usize
    }

    /// A uniform float in `[0, 1)` with 53 bits of precision.
    pub(crate) fn unit_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence_other_seed_differs() {
        let mut a = SplitMix64::new(7);
        let mut b = SplitMix64::new(7);
        let mut c = SplitMix64::new(8);
        let sa: Vec<u64> = (0..16).map(|_| a.next_u64()).collect();
        let sb: Vec<u64> = (0..16).map(|_| b.next_u64()).collect();
        let sc: Vec<u64> = (0..16).map(|_| c.next_u64()).collect();
        assert_eq!(sa, sb);
        assert_ne!(sa, sc);
    }

    #[test]
    fn below_stays_in_range_and_covers_it() {
        let mut r = SplitMix64::new(1);
        let mut seen = [0u32; 7];
        for _ in 0..7_000 {
            seen[r.below(7)] += 1;
        }
        // Each of 7 buckets expects 1000; a fair generator stays well within ±20%.
        assert!(seen.iter().all(|&n| (800..1200).contains(&n)), "{seen:?}");
    }

    #[test]
    fn stable_hash_is_stable_and_discriminates() {
        assert_eq!(stable_hash(b"backend-1"), stable_hash(b"backend-1"));
        assert_ne!(stable_hash(b"backend-1"), stable_hash(b"backend-2"));
    }
}
