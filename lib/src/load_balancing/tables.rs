//! Precomputed selection tables: the weighted round-robin schedule, the
//! weighted-random alias table and the Maglev lookup table.
//!
//! Everything here is built when the backend set, weights or availability
//! change, never on a pick; a pick only indexes into these tables. Entries are
//! indices into the caller's candidate slice.

use super::rng::{mix64, SplitMix64};

/// Size of the Maglev lookup table: a prime well above 100 × the backend
/// counts we expect, so each backend owns many slots and weights are honoured
/// to within a fraction of a percent.
pub(super) const MAGLEV_TABLE_SIZE: usize = 65_537;

/// Largest weighted round-robin schedule; larger weight sums are scaled down.
const MAX_SCHEDULE: u64 = 1 << 16;

/// Weighted round-robin schedule: each candidate appears `weight / gcd`
/// times, spread evenly (the k-th turn of a candidate with c turns sits at
/// `(k + ½) / c` of the cycle), so heavy backends do not get bursts.
pub(super) fn round_robin_schedule(members: &[(u32, u32)]) -> Vec<u32> {
    let g = members.iter().fold(0u32, |g, &(_, w)| gcd(g, w));
    if g == 0 {
        return Vec::new();
    }
    let total: u64 = members.iter().map(|&(_, w)| u64::from(w / g)).sum();
    let scale = |w: u32| -> u64 {
        let turns = u64::from(w / g);
        if total > MAX_SCHEDULE {
            (turns * MAX_SCHEDULE / total).max(1)
        } else {
            turns
        }
    };
    let mut slots: Vec<(f64, u32)> = Vec::new();
    for &(index, w) in members {
        let turns = scale(w);
        for k in 0..turns {
            slots.push(((k as f64 + 0.5) / turns as f64, index));
        }
    }
    slots.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    slots.into_iter().map(|(_, index)| index).collect()
}

fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Vose's alias table: O(1) weighted sampling.
#[derive(Debug, Clone, Default)]
pub(super) struct AliasTable {
    /// Candidate index of each column.
    index: Vec<u32>,
    /// Probability of keeping the column's own candidate.
    keep: Vec<f64>,
    /// Column to fall back to otherwise (a position in `index`).
    alias: Vec<u32>,
}

impl AliasTable {
    /// Builds the table for `(candidate index, weight)` pairs (weights > 0).
    pub(super) fn build(members: &[(u32, u32)]) -> Self {
        let n = members.len();
        let total: f64 = members.iter().map(|&(_, w)| f64::from(w)).sum();
        if n == 0 || total <= 0.0 {
            return AliasTable::default();
        }
        let mut scaled: Vec<f64> = members
            .iter()
            .map(|&(_, w)| f64::from(w) * n as f64 / total)
            .collect();
        let mut keep = vec![1.0; n];
        let mut alias: Vec<u32> = (0..n as u32).collect();
        let (mut small, mut large): (Vec<usize>, Vec<usize>) =
            (0..n).partition(|&i| scaled[i] < 1.0);
        while let (Some(s), Some(&l)) = (small.pop(), large.last()) {
            keep[s] = scaled[s];
            alias[s] = l as u32;
            scaled[l] -= 1.0 - scaled[s];
            if scaled[l] < 1.0 {
                large.pop();
                small.push(l);
            }
        }
        // Leftovers are 1.0 up to rounding error: keep them whole.
        AliasTable {
            index: members.iter().map(|&(i, _)| i).collect(),
            keep,
            alias,
        }
    }

    /// A candidate index drawn with probability proportional to its weight.
    pub(super) fn sample(&self, rng: &mut SplitMix64) -> Option<u32> {
        if self.index.is_empty() {
            return None;
        }
        let column = rng.below(self.index.len());
        let position = if rng.unit_f64() < self.keep[column] {
            column
        } else {
            self.alias[column] as usize
        };
        self.index.get(position).copied()
    }
}

/// Builds a Maglev lookup table (Eisenbud et al., NSDI 2016) of
/// [`MAGLEV_TABLE_SIZE`] slots for `(candidate index, identity hash, weight)`.
///
/// Each candidate walks its own permutation of the slots (offset and skip
/// from its identity hash, so every worker builds the same table) and claims
/// the next free slot on its turns; a candidate gets `weight / max weight`
/// turns per round through a credit counter, so slot shares follow weights.
pub(super) fn maglev_table(members: &[(u32, u64, u32)]) -> Vec<u32> {
    let m = MAGLEV_TABLE_SIZE as u64;
    let max_weight = members.iter().map(|&(_, _, w)| u64::from(w)).max();
    let Some(max_weight) = max_weight.filter(|&w| w > 0) else {
        return Vec::new();
    };
    let perms: Vec<(u64, u64)> = members
        .iter()
        .map(|&(_, h, _)| {
            let offset = mix64(h ^ 0x6d61_676c_6576_3031) % m;
            let skip = mix64(h ^ 0x6d61_676c_6576_3032) % (m - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; members.len()];
    let mut credit = vec![0u64; members.len()];
    let mut table = vec![u32::MAX; MAGLEV_TABLE_SIZE];
    let mut filled = 0usize;
    while filled < MAGLEV_TABLE_SIZE {
        for (i, &(index, _, weight)) in members.iter().enumerate() {
            credit[i] += u64::from(weight);
            while credit[i] >= max_weight && filled < MAGLEV_TABLE_SIZE {
                credit[i] -= max_weight;
                let (offset, skip) = perms[i];
                // The permutation visits every slot (m is prime, skip < m), so
                // a free slot is found while the table is not full.
                loop {
                    let slot = ((offset + next[i] * skip) % m) as usize;
                    next[i] += 1;
                    if table[slot] == u32::MAX {
                        table[slot] = index;
                        filled += 1;
                        break;
                    }
                }
            }
            if filled == MAGLEV_TABLE_SIZE {
                break;
            }
        }
    }
    table
}
