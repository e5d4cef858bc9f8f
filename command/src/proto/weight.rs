//! Sōzu's backend weight rule, applied where an `add_backend` order becomes
//! state (the master's and every worker's `ConfigState`) and where a worker
//! turns it into a load-balancing weight, so what is listed is what is used.
//!
//! Sōzu 2.x's `backend add` without `--weight` sends
//! `load_balancing_parameters { weight: 0 }` and Sōzu serves such a backend:
//! a weight of 0 or less counts as the smallest positive weight, and an order
//! without `load_balancing_parameters` counts as [`DEFAULT_WEIGHT`].

use super::command::LoadBalancingParams;

/// The weight of a backend added without `load_balancing_parameters`.
pub const DEFAULT_WEIGHT: u32 = 100;

/// The weight a backend gets when its order says 0 or less.
pub const MIN_WEIGHT: u32 = 1;

/// The weight a backend order means: `None` → [`DEFAULT_WEIGHT`], a weight
/// ≤ 0 → [`MIN_WEIGHT`], anything else as given.
pub fn effective_weight(params: Option<&LoadBalancingParams>) -> u32 {
    match params {
        None => DEFAULT_WEIGHT,
        Some(p) => u32::try_from(p.weight).map_or(MIN_WEIGHT, |w| w.max(MIN_WEIGHT)),
    }
}

/// The parameters as stored in the state: always present, with the
/// effective weight (so listings show the weight the backend is served with).
pub fn effective_params(params: Option<&LoadBalancingParams>) -> LoadBalancingParams {
    LoadBalancingParams {
        // effective_weight never exceeds i32::MAX: it is 1, 100 or a
        // positive i32.
        weight: i32::try_from(effective_weight(params)).unwrap_or(i32::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(weight: i32) -> Option<LoadBalancingParams> {
        Some(LoadBalancingParams { weight })
    }

    #[test]
    fn sozu_weight_rule() {
        assert_eq!(effective_weight(None), 100);
        assert_eq!(effective_weight(params(0).as_ref()), 1);
        assert_eq!(effective_weight(params(-7).as_ref()), 1);
        assert_eq!(effective_weight(params(i32::MIN).as_ref()), 1);
        assert_eq!(effective_weight(params(1).as_ref()), 1);
        assert_eq!(effective_weight(params(42).as_ref()), 42);
        assert_eq!(effective_weight(params(i32::MAX).as_ref()), i32::MAX as u32);
        assert_eq!(effective_params(None).weight, 100);
        assert_eq!(effective_params(params(0).as_ref()).weight, 1);
        assert_eq!(effective_params(params(i32::MAX).as_ref()).weight, i32::MAX);
    }
}
