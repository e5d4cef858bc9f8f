//! Policy behaviour: weighted distribution within stated tolerances, key
//! movement on removal (HRW exact, Maglev bounded), determinism per seed.

use super::*;

#[derive(Debug, Clone)]
struct Fake {
    hash: u64,
    weight: u32,
    load: u64,
    up: bool,
}

impl Candidate for Fake {
    fn identity_hash(&self) -> u64 {
        self.hash
    }
    fn weight(&self) -> u32 {
        self.weight
    }
    fn load(&self) -> u64 {
        self.load
    }
}

fn fakes(weights: &[u32]) -> Vec<Fake> {
    weights
        .iter()
        .enumerate()
        .map(|(i, &weight)| Fake {
            hash: stable_hash(format!("backend-{i}").as_bytes()),
            weight,
            load: 0,
            up: true,
        })
        .collect()
}

fn policy(algorithm: Algorithm, c: &[Fake]) -> LoadBalancingPolicy {
    let mut p = LoadBalancingPolicy::new(algorithm, 42);
    p.rebuild(c, |f| f.up);
    p
}

/// Counts picks per candidate over `rounds` keys (key i = mix64(i)).
fn histogram(p: &mut LoadBalancingPolicy, c: &[Fake], rounds: u64) -> Vec<u64> {
    let mut counts = vec![0u64; c.len()];
    for key in 0..rounds {
        counts[p.pick(c, mix64(key)).unwrap()] += 1;
    }
    counts
}

/// Asserts every share is within `tolerance` (relative) of its weight share.
fn assert_shares(counts: &[u64], weights: &[u32], tolerance: f64) {
    let total: u64 = counts.iter().sum();
    let wsum: u32 = weights.iter().sum();
    for (i, (&n, &w)) in counts.iter().zip(weights).enumerate() {
        let expected = total as f64 * f64::from(w) / f64::from(wsum);
        let err = (n as f64 - expected).abs() / expected;
        assert!(
            err <= tolerance,
            "backend {i}: {n} picks, expected {expected:.0} (±{tolerance}), all {counts:?}"
        );
    }
}

const WEIGHTS: [u32; 4] = [1, 2, 3, 4];

#[test]
fn round_robin_is_exactly_weighted_per_cycle_and_interleaved() {
    let c = fakes(&WEIGHTS);
    let mut p = policy(Algorithm::RoundRobin, &c);
    // One cycle is 10 picks: exact shares, no tolerance.
    let counts = histogram(&mut p, &c, 1000);
    assert_eq!(counts, vec![100, 200, 300, 400]);
    // The heaviest backend never takes more than 2 turns in a row.
    let picks: Vec<usize> = (0..10).map(|_| p.pick(&c, 0).unwrap()).collect();
    assert!(
        picks
            .windows(3)
            .all(|w| !(w[0] == 3 && w[1] == 3 && w[2] == 3)),
        "{picks:?}"
    );
}

#[test]
fn random_follows_weights_within_5_percent() {
    let c = fakes(&WEIGHTS);
    let mut p = policy(Algorithm::Random, &c);
    assert_shares(&histogram(&mut p, &c, 100_000), &WEIGHTS, 0.05);
}

#[test]
fn hrw_follows_weights_within_5_percent() {
    let c = fakes(&WEIGHTS);
    let mut p = policy(Algorithm::Hrw, &c);
    assert_shares(&histogram(&mut p, &c, 100_000), &WEIGHTS, 0.05);
}

#[test]
fn maglev_follows_weights_within_5_percent() {
    let c = fakes(&WEIGHTS);
    let mut p = policy(Algorithm::Maglev, &c);
    assert_shares(&histogram(&mut p, &c, 100_000), &WEIGHTS, 0.05);
}

#[test]
fn consistent_hashes_give_the_same_backend_for_the_same_key() {
    let c = fakes(&[1, 1, 1, 1, 1]);
    for algorithm in [Algorithm::Hrw, Algorithm::Maglev] {
        let mut p = policy(algorithm, &c);
        let first: Vec<usize> = (0..100).map(|k| p.pick(&c, k).unwrap()).collect();
        let again: Vec<usize> = (0..100).map(|k| p.pick(&c, k).unwrap()).collect();
        assert_eq!(first, again, "{algorithm}");
        // And a second policy (another worker) agrees.
        let mut other = LoadBalancingPolicy::new(algorithm, 9);
        other.rebuild(&c, |f| f.up);
        let theirs: Vec<usize> = (0..100).map(|k| other.pick(&c, k).unwrap()).collect();
        assert_eq!(first, theirs, "{algorithm}");
    }
}

/// Fraction of 100k keys whose backend changes when candidate `down` goes
/// away, and whether any key moved between two surviving backends.
fn disruption(algorithm: Algorithm, n: usize, down: usize) -> (f64, u64) {
    let mut c = fakes(&vec![1; n]);
    let mut p = policy(algorithm, &c);
    let before: Vec<usize> = (0..100_000)
        .map(|k| p.pick(&c, mix64(k)).unwrap())
        .collect();
    c[down].up = false;
    p.rebuild(&c, |f| f.up);
    let mut moved = 0u64;
    let mut moved_between_survivors = 0u64;
    for (k, &old) in before.iter().enumerate() {
        let new = p.pick(&c, mix64(k as u64)).unwrap();
        assert_ne!(new, down);
        if new != old {
            moved += 1;
            if old != down {
                moved_between_survivors += 1;
            }
        }
    }
    (moved as f64 / before.len() as f64, moved_between_survivors)
}

#[test]
fn hrw_removal_moves_only_the_removed_backends_keys() {
    for n in [2, 5, 10] {
        let (fraction, between) = disruption(Algorithm::Hrw, n, n / 2);
        assert_eq!(between, 0, "n={n}");
        // It owned about 1/n of the keys; only those move.
        assert!(
            (fraction - 1.0 / n as f64).abs() < 0.02,
            "n={n}: {fraction}"
        );
    }
}

#[test]
fn maglev_removal_moves_about_one_nth_of_keys() {
    // Stated bound: at most 1/n + 2% of all keys change backend (measured:
    // 1/n + under 0.4% for n = 5, 10, 20 with a 65537-slot table).
    for n in [5, 10, 20] {
        let (fraction, _) = disruption(Algorithm::Maglev, n, 1);
        let bound = 1.0 / n as f64 + 0.02;
        assert!(fraction <= bound, "n={n}: moved {fraction}, bound {bound}");
        assert!(fraction >= 1.0 / n as f64 - 0.02, "n={n}: {fraction}");
    }
}

#[test]
fn down_and_zero_weight_backends_are_never_picked() {
    let mut c = fakes(&[1, 0, 1, 1]);
    c[2].up = false;
    for algorithm in [
        Algorithm::RoundRobin,
        Algorithm::Random,
        Algorithm::LeastLoaded,
        Algorithm::PowerOfTwo,
        Algorithm::Hrw,
        Algorithm::Maglev,
    ] {
        let mut p = policy(algorithm, &c);
        assert_eq!(p.eligible_count(), 2, "{algorithm}");
        for k in 0..2_000 {
            let i = p.pick(&c, mix64(k)).unwrap();
            assert!(i == 0 || i == 3, "{algorithm} picked {i}");
        }
    }
}

#[test]
fn nothing_eligible_picks_none() {
    let mut c = fakes(&[1, 1]);
    c.iter_mut().for_each(|f| f.up = false);
    for algorithm in [
        Algorithm::RoundRobin,
        Algorithm::Random,
        Algorithm::LeastLoaded,
        Algorithm::PowerOfTwo,
        Algorithm::Hrw,
        Algorithm::Maglev,
    ] {
        let mut p = policy(algorithm, &c);
        assert_eq!(p.pick(&c, 1), None, "{algorithm}");
    }
    let mut p = policy(Algorithm::Maglev, &[]);
    assert_eq!(p.pick::<Fake>(&[], 1), None);
}

#[test]
fn least_loaded_picks_the_lowest_load_per_weight() {
    let mut c = fakes(&[1, 2, 1]);
    c[0].load = 3;
    c[1].load = 4; // 2 per unit of weight
    c[2].load = 5;
    let mut p = policy(Algorithm::LeastLoaded, &c);
    for _ in 0..5 {
        assert_eq!(p.pick(&c, 0), Some(1));
    }
    // Ties rotate instead of always choosing the first.
    let even = fakes(&[1, 1, 1]);
    let mut p = policy(Algorithm::LeastLoaded, &even);
    let picks: std::collections::HashSet<usize> =
        (0..3).map(|_| p.pick(&even, 0).unwrap()).collect();
    assert_eq!(picks.len(), 3);
}

#[test]
fn power_of_two_balances_when_loads_follow_picks() {
    let mut c = fakes(&[1; 8]);
    let mut p = policy(Algorithm::PowerOfTwo, &c);
    for _ in 0..8_000 {
        let i = p.pick(&c, 0).unwrap();
        c[i].load += 1;
    }
    // With load feedback, two choices keep the max within a few of the mean
    // (1000); pure random would spread about ±90.
    let max = c.iter().map(|f| f.load).max().unwrap();
    let min = c.iter().map(|f| f.load).min().unwrap();
    assert!(max - min <= 10, "min {min} max {max}");
    // And never picks the heavier of two when one is clearly lighter.
    c[3].load = 0;
    let mut hits = 0;
    for _ in 0..1_000 {
        if p.pick(&c, 0) == Some(3) {
            hits += 1;
        }
    }
    // Backend 3 is in the pair with probability 2/8 and always wins it.
    assert!((200..300).contains(&hits), "{hits}");
}

#[test]
fn same_seed_same_picks_other_seed_differs() {
    let c = fakes(&[1, 1, 1, 1]);
    for algorithm in [Algorithm::Random, Algorithm::PowerOfTwo] {
        let run = |seed| {
            let mut p = LoadBalancingPolicy::new(algorithm, seed);
            p.rebuild(&c, |f| f.up);
            (0..64).map(|_| p.pick(&c, 0).unwrap()).collect::<Vec<_>>()
        };
        assert_eq!(run(5), run(5), "{algorithm}");
        assert_ne!(run(5), run(6), "{algorithm}");
    }
}

#[test]
fn wire_algorithms_round_trip() {
    use command::LoadBalancingAlgorithms as W;
    for w in [
        W::RoundRobin,
        W::Random,
        W::LeastLoaded,
        W::PowerOfTwo,
        W::Hrw,
        W::Maglev,
    ] {
        assert_eq!(W::from(Algorithm::from(w)), w);
        assert_eq!(Algorithm::from(w).as_str(), w.as_str_name());
    }
    assert_eq!(Algorithm::try_from(5), Ok(Algorithm::Maglev));
    assert_eq!(
        Algorithm::try_from(42).unwrap_err().to_string(),
        "load_balancing: unknown algorithm 42"
    );
}

#[test]
fn maglev_removal_leaves_the_survivors_keys_in_place() {
    // Removing 1 of n moves the removed backend's keys (about 1/n of all,
    // every one of them, checked in `disruption`) and almost none of the
    // keys the other backends held. Maglev does not promise zero movement
    // between survivors (its table is refilled), so the bound is stated:
    // at most 1% of all keys (measured: 0.02% to 0.41% for n = 3..20 with a
    // 65537-slot table).
    for n in [3, 5, 10, 20] {
        for down in [0, n / 2, n - 1] {
            let (fraction, between) = disruption(Algorithm::Maglev, n, down);
            let one_nth = 1.0 / n as f64;
            assert!(
                (fraction - one_nth).abs() <= 0.02,
                "n={n} down={down}: moved {fraction}, expected about {one_nth}"
            );
            assert!(
                between <= 1_000,
                "n={n} down={down}: {between} of 100000 keys moved between surviving backends"
            );
        }
    }
}

#[test]
fn least_loaded_splits_a_burst_exactly_when_each_pick_is_counted_at_once() {
    // The shell counts a flow on its backend the moment it is chosen, so
    // the next pick of the same burst sees it: 300 picks split by weight
    // exactly, whatever the burst size.
    let mut c = fakes(&[1, 2, 3]);
    let mut p = policy(Algorithm::LeastLoaded, &c);
    for _ in 0..300 {
        let i = p.pick(&c, 0).unwrap();
        c[i].load += 1;
    }
    let loads: Vec<u64> = c.iter().map(|f| f.load).collect();
    assert_eq!(loads, vec![50, 100, 150]);
}
