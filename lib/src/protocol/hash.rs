//! The 64-bit mixer every layer uses to spread weak inputs (sequential ids,
//! seeds, hashes) over all bits: the finaliser of SplitMix64.
//!
//! Pure and stable across processes and versions: workers must agree on
//! the same scores for the same inputs.

/// SplitMix64 finaliser: a bijective 64-bit mix with good avalanche.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// One SplitMix64 step: the golden-ratio increment, then [`mix64`].
pub fn splitmix64(z: u64) -> u64 {
    mix64(z.wrapping_add(0x9e37_79b9_7f4a_7c15))
}
