//! Backend selection policies shared by UDP, TCP and HTTP.
//!
//! Owns the algorithms (round robin, weighted random, least loaded, power of
//! two choices, rendezvous hashing, Maglev) and their precomputed tables. A
//! [`LoadBalancingPolicy`] picks an index into the caller's candidate slice;
//! the caller (`crate::backends`) owns the backends, their health and their
//! load counters, and calls [`LoadBalancingPolicy::rebuild`] whenever the set,
//! the weights or the availability change.
//!
//! It must never allocate or rebuild a table on a pick, read the clock, or use
//! OS randomness (the seed is injected).

mod rng;
mod tables;

#[cfg(test)]
mod tests;

use std::fmt;

use sozu_command_lib::command;

pub(crate) use rng::{mix64, stable_hash, SplitMix64};

use tables::{maglev_table, round_robin_schedule, AliasTable};

/// The selection algorithm of a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Algorithm {
    /// Weighted round robin over the available backends.
    #[default]
    RoundRobin,
    /// Weighted random (seeded).
    Random,
    /// The available backend with the least load per unit of weight (live
    /// flows or connections, plus pending `DNS_ID` queries).
    LeastLoaded,
    /// Two random available backends, the less loaded (per weight) wins.
    PowerOfTwo,
    /// Weighted rendezvous hashing on the affinity hash.
    Hrw,
    /// Maglev consistent hashing on the affinity hash.
    Maglev,
}

impl Algorithm {
    /// Whether the pick depends on the affinity hash (same key, same backend).
    pub fn is_consistent_hash(self) -> bool {
        matches!(self, Algorithm::Hrw | Algorithm::Maglev)
    }

    /// The configuration / wire name (`"ROUND_ROBIN"`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::RoundRobin => "ROUND_ROBIN",
            Algorithm::Random => "RANDOM",
            Algorithm::LeastLoaded => "LEAST_LOADED",
            Algorithm::PowerOfTwo => "POWER_OF_TWO",
            Algorithm::Hrw => "HRW",
            Algorithm::Maglev => "MAGLEV",
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<command::LoadBalancingAlgorithms> for Algorithm {
    fn from(value: command::LoadBalancingAlgorithms) -> Self {
        use command::LoadBalancingAlgorithms as W;
        match value {
            W::RoundRobin => Algorithm::RoundRobin,
            W::Random => Algorithm::Random,
            W::LeastLoaded => Algorithm::LeastLoaded,
            W::PowerOfTwo => Algorithm::PowerOfTwo,
            W::Hrw => Algorithm::Hrw,
            W::Maglev => Algorithm::Maglev,
        }
    }
}

/// A `load_balancing` value that names no algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("load_balancing: unknown algorithm {0}")]
pub struct UnknownAlgorithm(pub i32);

impl TryFrom<i32> for Algorithm {
    type Error = UnknownAlgorithm;

    /// The raw wire value (`command::Cluster::load_balancing`), refusing
    /// values the typed getter would silently turn into ROUND_ROBIN.
    fn try_from(raw: i32) -> Result<Self, Self::Error> {
        command::LoadBalancingAlgorithms::try_from(raw)
            .map(Algorithm::from)
            .map_err(|_| UnknownAlgorithm(raw))
    }
}

impl From<Algorithm> for command::LoadBalancingAlgorithms {
    fn from(value: Algorithm) -> Self {
        use command::LoadBalancingAlgorithms as W;
        match value {
            Algorithm::RoundRobin => W::RoundRobin,
            Algorithm::Random => W::Random,
            Algorithm::LeastLoaded => W::LeastLoaded,
            Algorithm::PowerOfTwo => W::PowerOfTwo,
            Algorithm::Hrw => W::Hrw,
            Algorithm::Maglev => W::Maglev,
        }
    }
}

/// What a policy needs to know about one backend.
pub(crate) trait Candidate {
    /// A hash of the backend's identity, stable across processes
    /// (see [`stable_hash`]); HRW and Maglev place keys with it.
    fn identity_hash(&self) -> u64;
    /// Relative weight; 0 means "send nothing new here".
    fn weight(&self) -> u32;
    /// Current load (active flows or connections, plus pending `DNS_ID`
    /// queries) for LEAST_LOADED and POWER_OF_TWO.
    fn load(&self) -> u64;
}

/// A selection policy over a candidate slice owned by the caller.
///
/// The tables inside refer to candidates by index: after any change to the
/// slice (order, length, weights, availability) the caller must call
/// [`rebuild`](Self::rebuild) before the next pick.
#[derive(Debug, Clone)]
pub(crate) struct LoadBalancingPolicy {
    algorithm: Algorithm,
    rng: SplitMix64,
    /// Indices of the candidates a pick may return (eligible, weight > 0).
    eligible: Vec<u32>,
    /// Length of the candidate slice at the last rebuild (guards stale use).
    built_for: usize,
    /// Round-robin position, also the rotating start of LEAST_LOADED scans.
    cursor: usize,
    schedule: Vec<u32>,
    alias: AliasTable,
    maglev: Vec<u32>,
}

impl LoadBalancingPolicy {
    /// A policy with no candidates; `seed` drives RANDOM and POWER_OF_TWO.
    pub(crate) fn new(algorithm: Algorithm, seed: u64) -> Self {
        LoadBalancingPolicy {
            algorithm,
            rng: SplitMix64::new(seed),
            eligible: Vec::new(),
            built_for: 0,
            cursor: 0,
            schedule: Vec::new(),
            alias: AliasTable::default(),
            maglev: Vec::new(),
        }
    }

    /// The current algorithm.
    pub(crate) fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Switches algorithm. Its tables are empty until the caller's next
    /// [`rebuild`](Self::rebuild): a pick before it refuses.
    pub(crate) fn set_algorithm(&mut self, algorithm: Algorithm) {
        self.algorithm = algorithm;
        self.eligible.clear();
        self.schedule.clear();
        self.alias = AliasTable::default();
        self.maglev.clear();
        self.built_for = usize::MAX;
    }

    #[cfg(test)]
    /// Number of candidates a pick can currently return.
    pub(crate) fn eligible_count(&self) -> usize {
        self.eligible.len()
    }

    /// Recomputes the eligible set and the algorithm's table. Call after any
    /// change to the candidate slice; this is the only place that allocates.
    pub(crate) fn rebuild<T: Candidate>(
        &mut self,
        candidates: &[T],
        is_eligible: impl Fn(&T) -> bool,
    ) {
        self.eligible.clear();
        self.eligible.extend(
            candidates
                .iter()
                .enumerate()
                .filter(|(_, c)| c.weight() > 0 && is_eligible(c))
                .map(|(i, _)| i as u32),
        );
        self.built_for = candidates.len();
        self.schedule.clear();
        self.alias = AliasTable::default();
        self.maglev.clear();
        let weighted = || -> Vec<(u32, u32)> {
            self.eligible
                .iter()
                .map(|&i| (i, candidates[i as usize].weight()))
                .collect()
        };
        match self.algorithm {
            Algorithm::RoundRobin => {
                self.schedule = round_robin_schedule(&weighted());
                if self.cursor >= self.schedule.len() {
                    self.cursor = 0;
                }
            }
            Algorithm::Random => self.alias = AliasTable::build(&weighted()),
            Algorithm::Maglev => {
                let members: Vec<(u32, u64, u32)> = self
                    .eligible
                    .iter()
                    .map(|&i| {
                        let c = &candidates[i as usize];
                        (i, c.identity_hash(), c.weight())
                    })
                    .collect();
                self.maglev = maglev_table(&members);
            }
            Algorithm::LeastLoaded | Algorithm::PowerOfTwo | Algorithm::Hrw => {}
        }
        #[cfg(debug_assertions)]
        self.check_invariants();
    }

    /// Picks a candidate index, or `None` when none is eligible.
    ///
    /// `affinity_hash` is used by HRW and MAGLEV only. O(1) for round robin,
    /// random, power of two and Maglev; O(eligible) for least loaded and HRW.
    /// Never allocates.
    pub(crate) fn pick<T: Candidate>(
        &mut self,
        candidates: &[T],
        affinity_hash: u64,
    ) -> Option<usize> {
        if candidates.len() != self.built_for {
            // The caller changed the slice without rebuilding: refuse rather
            // than return an index that now names another backend.
            debug_assert!(false, "LoadBalancingPolicy::pick on a stale table");
            return None;
        }
        let picked = match self.algorithm {
            Algorithm::RoundRobin => {
                let next = *self.schedule.get(self.cursor)?;
                self.cursor = (self.cursor + 1) % self.schedule.len();
                next
            }
            Algorithm::Random => self.alias.sample(&mut self.rng)?,
            Algorithm::LeastLoaded => self.least_loaded(candidates)?,
            Algorithm::PowerOfTwo => self.power_of_two(candidates)?,
            Algorithm::Hrw => self.rendezvous(candidates, affinity_hash)?,
            Algorithm::Maglev => {
                if self.maglev.is_empty() {
                    return None;
                }
                let slot = (mix64(affinity_hash) % self.maglev.len() as u64) as usize;
                self.maglev[slot]
            }
        };
        Some(picked as usize)
    }

    fn least_loaded<T: Candidate>(&mut self, candidates: &[T]) -> Option<u32> {
        let n = self.eligible.len();
        if n == 0 {
            return None;
        }
        // Rotate the scan start so ties do not all land on the first backend.
        self.cursor = self.cursor.wrapping_add(1);
        let start = self.cursor % n;
        let mut best = self.eligible[start];
        for k in 1..n {
            let i = self.eligible[(start + k) % n];
            if lighter(&candidates[i as usize], &candidates[best as usize]) {
                best = i;
            }
        }
        Some(best)
    }

    fn power_of_two<T: Candidate>(&mut self, candidates: &[T]) -> Option<u32> {
        let n = self.eligible.len();
        match n {
            0 => None,
            1 => Some(self.eligible[0]),
            _ => {
                let a = self.rng.below(n);
                let mut b = self.rng.below(n - 1);
                if b >= a {
                    b += 1;
                }
                let (a, b) = (self.eligible[a], self.eligible[b]);
                if lighter(&candidates[b as usize], &candidates[a as usize]) {
                    Some(b)
                } else {
                    Some(a)
                }
            }
        }
    }

    fn rendezvous<T: Candidate>(&self, candidates: &[T], affinity_hash: u64) -> Option<u32> {
        let key = mix64(affinity_hash);
        let mut best: Option<(f64, u32)> = None;
        for &i in &self.eligible {
            let c = &candidates[i as usize];
            let score = hrw_score(key, c.identity_hash(), c.weight());
            if best.is_none_or(|(s, _)| score > s) {
                best = Some((score, i));
            }
        }
        best.map(|(_, i)| i)
    }

    #[cfg(debug_assertions)]
    fn check_invariants(&self) {
        let in_range = |i: &u32| (*i as usize) < self.built_for;
        debug_assert!(self.eligible.iter().all(in_range));
        debug_assert!(self.schedule.iter().all(in_range));
        debug_assert!(self.maglev.iter().all(in_range));
    }
}

/// `a` carries less load per unit of weight than `b` (exact, no floats).
fn lighter<T: Candidate>(a: &T, b: &T) -> bool {
    u128::from(a.load()) * u128::from(b.weight()) < u128::from(b.load()) * u128::from(a.weight())
}

/// Weighted rendezvous score: `-w / ln(u)` with `u` uniform in (0, 1) from
/// the key and the backend (Schindelhauer & Schomaker): the argmax lands on a
/// backend with probability proportional to its weight, and removing one
/// backend moves only the keys it owned.
fn hrw_score(key: u64, backend: u64, weight: u32) -> f64 {
    let bits = mix64(key ^ backend) >> 11;
    let u = (bits as f64 + 0.5) / (1u64 << 53) as f64;
    f64::from(weight) / -u.ln()
}
