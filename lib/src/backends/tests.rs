//! Backend map behaviour: selection honours health and fail_open, removal
//! and order conversion, plus a quickcheck model over random operations.

use super::*;
use std::collections::HashMap as Map;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn map_with(algorithm: Algorithm, n: u16) -> BackendMap {
    let mut map = BackendMap::new(1);
    map.set_algorithm("c", algorithm);
    for i in 0..n {
        map.add_backend("c", BackendId::from(format!("b{i}")), addr(9000 + i), 1);
    }
    map
}

fn picks(map: &mut BackendMap, rounds: u64) -> Map<String, u64> {
    let mut counts = Map::new();
    for k in 0..rounds {
        if let Some((id, _)) = map.select("c", mix64(k)) {
            *counts.entry(id.to_string()).or_default() += 1;
        }
    }
    counts
}

#[test]
fn select_returns_id_and_address_and_unknown_cluster_is_none() {
    let mut map = map_with(Algorithm::RoundRobin, 2);
    let (id, address) = map.select("c", 0).unwrap();
    assert_eq!(
        map.cluster("c")
            .unwrap()
            .get(id.as_str())
            .unwrap()
            .address(),
        address
    );
    assert_eq!(map.select("nope", 0), None);
}

#[test]
fn down_backends_get_no_new_flows() {
    let mut map = map_with(Algorithm::RoundRobin, 3);
    assert_eq!(
        map.set_status("c", "b1", BackendStatus::Down),
        Some(BackendStatus::Up)
    );
    let counts = picks(&mut map, 300);
    assert_eq!(counts.get("b1"), None);
    assert_eq!(counts["b0"], 150);
    assert_eq!(counts["b2"], 150);
    // Back up: it gets its share again.
    map.set_status("c", "b1", BackendStatus::Up);
    assert_eq!(picks(&mut map, 300)["b1"], 100);
}

#[test]
fn all_down_fail_open_balances_over_all_fail_closed_gives_none() {
    for algorithm in [
        Algorithm::RoundRobin,
        Algorithm::Maglev,
        Algorithm::Hrw,
        Algorithm::PowerOfTwo,
    ] {
        let mut map = map_with(algorithm, 3);
        for b in ["b0", "b1", "b2"] {
            map.set_status("c", b, BackendStatus::Down);
        }
        // fail_open defaults to true.
        let counts = picks(&mut map, 3_000);
        assert_eq!(counts.len(), 3, "{algorithm}: {counts:?}");
        map.set_fail_open("c", false);
        assert_eq!(map.select("c", 7), None, "{algorithm}");
        // One comes back: only it is used, whatever fail_open says.
        map.set_status("c", "b2", BackendStatus::Up);
        let counts = picks(&mut map, 100);
        assert_eq!(counts.get("b2"), Some(&100), "{algorithm}: {counts:?}");
    }
}

#[test]
fn suspect_backends_are_skipped_while_another_is_up_and_recover_on_response() {
    let mut map = map_with(Algorithm::RoundRobin, 2);
    assert!(map.mark_suspect("c", "b0"));
    assert_eq!(
        map.cluster("c").unwrap().get("b0").unwrap().status(),
        BackendStatus::Suspect
    );
    let counts = picks(&mut map, 10);
    assert_eq!((counts.get("b0"), counts.get("b1")), (None, Some(&10)));
    assert!(map.mark_responsive("c", "b0"));
    assert_eq!(picks(&mut map, 10)["b0"], 5);
    assert_eq!(
        map.cluster("c").unwrap().get("b0").unwrap().status(),
        BackendStatus::Up
    );
    // Down stays down on both.
    map.set_status("c", "b1", BackendStatus::Down);
    assert!(map.mark_suspect("c", "b1"));
    assert!(!map.mark_responsive("c", "b1"));
    assert_eq!(
        map.cluster("c").unwrap().get("b1").unwrap().status(),
        BackendStatus::Down
    );
    assert!(!map.mark_suspect("c", "ghost"));
}

#[test]
fn removed_backend_is_returned_with_its_flows_and_never_picked() {
    let mut map = map_with(Algorithm::Maglev, 3);
    assert!(map.flow_opened("c", "b1"));
    assert!(map.flow_opened("c", "b1"));
    let removed = map.remove_backend("c", "b1").unwrap();
    assert_eq!(removed.id().as_str(), "b1");
    assert_eq!(removed.active_flows(), 2);
    assert_eq!(picks(&mut map, 1_000).get("b1"), None);
    // A kept flow closing on the removed backend is not an error.
    assert!(!map.flow_closed("c", "b1"));
    assert_eq!(
        map.remove_backend("c", "b1").unwrap_err(),
        BackendError::UnknownBackend {
            cluster: "c".into(),
            backend: "b1".into(),
        }
    );
    let all = map.remove_cluster("c");
    assert_eq!(all.len(), 2);
    assert_eq!(map.select("c", 0), None);
}

#[test]
fn least_loaded_follows_flow_counters() {
    let mut map = map_with(Algorithm::LeastLoaded, 3);
    map.flow_opened("c", "b0");
    map.flow_opened("c", "b2");
    assert_eq!(map.select("c", 0).unwrap().0.as_str(), "b1");
    map.flow_opened("c", "b1");
    map.flow_opened("c", "b1");
    map.flow_closed("c", "b0");
    assert_eq!(map.select("c", 0).unwrap().0.as_str(), "b0");
}

/// Sends one `DNS_ID` query to whichever backend `map` picks, through a
/// mux with one socket per backend; returns the backend and the query's
/// wire ID.
fn dns_query(
    map: &mut BackendMap,
    mux: &mut crate::protocol::udp::DnsIdMux,
    slots: &mut Vec<String>,
    now: std::time::Instant,
) -> (String, usize, u16) {
    use crate::protocol::udp::QueryDecision;
    let (id, _, load) = map.select_for_query("c", 0).unwrap();
    let slot = match slots.iter().position(|b| b == id.as_str()) {
        Some(slot) => slot,
        None => {
            slots.push(id.to_string());
            mux.open_socket(slots.len() - 1, load);
            slots.len() - 1
        }
    };
    let mut q = [0u8, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let deadline = now + std::time::Duration::from_secs(2);
    let QueryDecision::Forward { id: wire } = mux.on_query(slot, deadline, addr(1), None, &mut q)
    else {
        panic!("query not forwarded");
    };
    (id.to_string(), slot, wire)
}

#[test]
fn least_loaded_and_power_of_two_weigh_pending_dns_queries() {
    use crate::protocol::udp::{AnswerDecision, DnsIdMux};
    use std::num::NonZeroUsize;
    #[allow(clippy::disallowed_methods)] // an arbitrary origin
    let t0 = std::time::Instant::now();
    for algorithm in [Algorithm::LeastLoaded, Algorithm::PowerOfTwo] {
        let mut map = map_with(algorithm, 2);
        let mut mux = DnsIdMux::new(9, NonZeroUsize::new(64).unwrap());
        let mut slots = Vec::new();
        // The first query lands anywhere and stays pending: every next one
        // goes to the other backend while it waits.
        let (held, held_slot, held_id) = dns_query(&mut map, &mut mux, &mut slots, t0);
        for _ in 0..20 {
            let (b, slot, wire) = dns_query(&mut map, &mut mux, &mut slots, t0);
            assert_ne!(b, held, "{algorithm}: a backend with a pending query");
            let mut answer = [0u8; 12];
            answer[..2].copy_from_slice(&wire.to_be_bytes());
            answer[2] = 0x80;
            assert!(matches!(
                mux.on_answer(t0, slot, &mut answer),
                AnswerDecision::Return { .. }
            ));
        }
        let pending =
            |map: &BackendMap, b: &str| map.cluster("c").unwrap().get(b).unwrap().pending_queries();
        assert_eq!(pending(&map, &held), 1);
        // Its answer comes: both idle again, both picked again.
        let mut answer = [0u8; 12];
        answer[..2].copy_from_slice(&held_id.to_be_bytes());
        answer[2] = 0x80;
        assert!(matches!(
            mux.on_answer(t0, held_slot, &mut answer),
            AnswerDecision::Return { .. }
        ));
        assert_eq!(pending(&map, &held), 0);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..40 {
            let (b, slot, wire) = dns_query(&mut map, &mut mux, &mut slots, t0);
            seen.insert(b);
            mux.cancel(slot, wire);
        }
        assert_eq!(seen.len(), 2, "{algorithm}: {seen:?}");
        assert!(map
            .cluster("c")
            .unwrap()
            .backends()
            .iter()
            .all(|b| b.pending_queries() == 0));
    }
}

#[test]
fn re_adding_an_id_updates_address_and_weight() {
    let mut map = map_with(Algorithm::RoundRobin, 2);
    map.flow_opened("c", "b0");
    let outcome = map.add_backend("c", BackendId::from("b0"), addr(7000), 3);
    assert_eq!(
        outcome,
        Upsert::Updated {
            previous_address: addr(9000)
        }
    );
    let b0 = map.cluster("c").unwrap().get("b0").unwrap();
    assert_eq!(
        (b0.address(), b0.weight(), b0.active_flows()),
        (addr(7000), 3, 1)
    );
    assert_eq!(picks(&mut map, 400)["b0"], 300);
}

#[test]
fn maglev_removal_keeps_other_backends_keys_mostly_in_place() {
    let mut map = map_with(Algorithm::Maglev, 10);
    let before: Vec<String> = (0..10_000)
        .map(|k| map.select("c", k).unwrap().0.to_string())
        .collect();
    map.remove_backend("c", "b3").unwrap();
    let moved = (0..10_000u64)
        .filter(|&k| map.select("c", k).unwrap().0.as_str() != before[k as usize])
        .count();
    // b3 owned ~10%; stated bound 1/n + 2%.
    assert!(moved <= 1_200, "{moved}");
}

#[test]
fn orders_convert_at_the_edge_with_typed_errors() {
    let mut map = BackendMap::new(0);
    let mut order = command::AddBackend {
        cluster_id: "c".into(),
        backend_id: "b".into(),
        address: addr(53).into(),
        sticky_id: None,
        load_balancing_parameters: None,
        backup: None,
        quic_lb_server_id: None,
    };
    assert_eq!(map.add_from_order(&order), Ok(Upsert::Added));
    assert_eq!(
        map.cluster("c").unwrap().get("b").unwrap().weight(),
        DEFAULT_WEIGHT
    );
    // Sōzu's weight rule: 0 or less counts as the smallest positive weight.
    for weight in [0, -1] {
        order.load_balancing_parameters = Some(command::LoadBalancingParams { weight });
        assert!(matches!(
            map.add_from_order(&order),
            Ok(Upsert::Updated { .. })
        ));
        assert_eq!(map.cluster("c").unwrap().get("b").unwrap().weight(), 1);
    }
    order.address.port = 70_000;
    assert!(matches!(
        map.add_from_order(&order),
        Err(BackendError::InvalidAddress { .. })
    ));

    let mut remove = command::RemoveBackend {
        cluster_id: "c".into(),
        backend_id: "b".into(),
        address: addr(54).into(),
    };
    assert_eq!(
        map.remove_from_order(&remove).unwrap_err().to_string(),
        "backend \"b\" of cluster \"c\" is at 127.0.0.1:53, not 127.0.0.1:54"
    );
    remove.backend_id = "ghost".into();
    assert!(matches!(
        map.remove_from_order(&remove),
        Err(BackendError::UnknownBackend { .. })
    ));
    remove.backend_id = "b".into();
    remove.address = addr(53).into();
    assert_eq!(map.remove_from_order(&remove).unwrap().address(), addr(53));
    assert!(map.cluster("c").unwrap().backends().is_empty());
}

#[test]
fn same_seed_same_random_choices() {
    let run = || {
        let mut map = map_with(Algorithm::Random, 4);
        (0..32)
            .map(|_| map.select("c", 0).unwrap().0.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(run(), run());
}

#[test]
fn hrw_removal_by_id_moves_only_that_backends_keys() {
    let mut map = map_with(Algorithm::Hrw, 10);
    let before: Vec<String> = (0..10_000)
        .map(|k| map.select("c", k).unwrap().0.to_string())
        .collect();
    map.remove_backend("c", "b3").unwrap();
    for k in 0..10_000u64 {
        let now = map.select("c", k).unwrap().0;
        let then = &before[k as usize];
        assert!(
            then == "b3" || now.as_str() == then,
            "key {k}: {then} -> {now}"
        );
    }
}

mod model {
    //! quickcheck over random sequences of backend operations.
    use super::*;
    use quickcheck::{Arbitrary, Gen, QuickCheck};

    #[derive(Debug, Clone)]
    enum Step {
        Add(u8, u8),
        Remove(u8),
        Status(u8, u8),
        Open(u8),
        Close(u8),
        FailOpen(bool),
        Algorithm(u8),
        Select(u64),
    }

    impl Arbitrary for Step {
        fn arbitrary(g: &mut Gen) -> Self {
            let id = u8::arbitrary(g) % 6;
            match u8::arbitrary(g) % 8 {
                0 => Step::Add(id, u8::arbitrary(g) % 4),
                1 => Step::Remove(id),
                2 => Step::Status(id, u8::arbitrary(g) % 3),
                3 => Step::Open(id),
                4 => Step::Close(id),
                5 => Step::FailOpen(bool::arbitrary(g)),
                6 => Step::Algorithm(u8::arbitrary(g) % 6),
                _ => Step::Select(u64::arbitrary(g)),
            }
        }
    }

    const ALGORITHMS: [Algorithm; 6] = [
        Algorithm::RoundRobin,
        Algorithm::Random,
        Algorithm::LeastLoaded,
        Algorithm::PowerOfTwo,
        Algorithm::Hrw,
        Algorithm::Maglev,
    ];

    /// A selection is always an existing backend with weight; it is up
    /// (or suspect) whenever one such exists; with none, it exists only
    /// when failing open; flow counters never go negative.
    fn selection_respects_health(steps: Vec<Step>) -> bool {
        let mut map = BackendMap::new(3);
        map.ensure_cluster("c");
        let mut opened: Map<String, u64> = Map::new();
        for step in steps {
            match step {
                Step::Add(id, w) => {
                    map.add_backend(
                        "c",
                        BackendId::from(format!("b{id}")),
                        addr(id.into()),
                        w.into(),
                    );
                }
                Step::Remove(id) => {
                    let _ = map.remove_backend("c", &format!("b{id}"));
                    opened.remove(&format!("b{id}"));
                }
                Step::Status(id, s) => {
                    let status = [
                        BackendStatus::Up,
                        BackendStatus::Suspect,
                        BackendStatus::Down,
                    ][s as usize];
                    map.set_status("c", &format!("b{id}"), status);
                }
                Step::Open(id) => {
                    if map.flow_opened("c", &format!("b{id}")) {
                        *opened.entry(format!("b{id}")).or_default() += 1;
                    }
                }
                Step::Close(id) => {
                    let key = format!("b{id}");
                    if opened.get(&key).copied().unwrap_or(0) > 0 {
                        assert!(map.flow_closed("c", &key));
                        *opened.get_mut(&key).unwrap() -= 1;
                    }
                }
                Step::FailOpen(f) => map.set_fail_open("c", f),
                Step::Algorithm(a) => map.set_algorithm("c", ALGORITHMS[a as usize]),
                Step::Select(key) => {
                    let list = map.cluster("c").unwrap();
                    let weighted: Vec<&Backend> =
                        list.backends().iter().filter(|b| b.weight() > 0).collect();
                    let has = |status| weighted.iter().any(|b| b.status() == status);
                    // The tier a pick must come from: up, else suspect,
                    // else (fail-open) any weighted backend.
                    let tier = if has(BackendStatus::Up) {
                        Some(BackendStatus::Up)
                    } else if has(BackendStatus::Suspect) {
                        Some(BackendStatus::Suspect)
                    } else {
                        None
                    };
                    let fail_open = list.fail_open();
                    let has_weighted = !weighted.is_empty();
                    let picked = map.select("c", key);
                    let list = map.cluster("c").unwrap();
                    match picked {
                        None => {
                            if tier.is_some() || (fail_open && has_weighted) {
                                return false;
                            }
                        }
                        Some((id, address)) => {
                            let Some(b) = list.get(id.as_str()) else {
                                return false;
                            };
                            if b.address() != address || b.weight() == 0 {
                                return false;
                            }
                            match tier {
                                Some(status) if b.status() != status => return false,
                                None if !fail_open => return false,
                                _ => {}
                            }
                        }
                    }
                }
            }
            for b in map.cluster("c").unwrap().backends() {
                if b.active_flows() != opened.get(b.id().as_str()).copied().unwrap_or(0) {
                    return false;
                }
            }
        }
        true
    }

    #[test]
    fn quickcheck_selection_respects_health() {
        QuickCheck::new()
            .tests(300)
            .quickcheck(selection_respects_health as fn(Vec<Step>) -> bool);
    }
}

#[test]
fn a_suspect_backend_gets_no_new_flows_while_another_is_up_until_its_cooldown_ends() {
    let mut map = BackendMap::new(7);
    let t0 = {
        #[allow(clippy::disallowed_methods)] // a base instant; time is then injected
        std::time::Instant::now()
    };
    map.set_now(t0);
    map.add_backend("c", BackendId::from("a"), addr(1), 100);
    map.add_backend("c", BackendId::from("b"), addr(2), 100);
    assert!(map.mark_suspect("c", "a"));
    for key in 0..200 {
        let (id, _) = map.select("c", key).unwrap();
        assert_eq!(id.as_str(), "b", "a suspect backend was picked");
    }
    // Just before the cooldown ends: still out. After: tried again.
    map.set_now(t0 + SUSPECT_COOLDOWN - Duration::from_millis(1));
    assert!((0..50).all(|k| map.select("c", k).unwrap().0.as_str() == "b"));
    map.set_now(t0 + SUSPECT_COOLDOWN);
    assert!((0..50).any(|k| map.select("c", k).unwrap().0.as_str() == "a"));
    assert_eq!(
        map.cluster("c").unwrap().get("a").unwrap().status(),
        BackendStatus::Up
    );
}

#[test]
fn suspect_backends_still_serve_when_no_backend_is_up() {
    let mut map = BackendMap::new(7);
    map.add_backend("c", BackendId::from("a"), addr(1), 100);
    map.add_backend("c", BackendId::from("b"), addr(2), 100);
    map.set_fail_open("c", false);
    map.mark_suspect("c", "a");
    map.set_status("c", "b", BackendStatus::Down);
    // A suspicion is weaker than a health check's verdict: "a" still serves.
    assert_eq!(map.select("c", 1).unwrap().0.as_str(), "a");
    // An answer clears the suspicion at once.
    assert!(map.mark_responsive("c", "a"));
    assert_eq!(
        map.cluster("c").unwrap().get("a").unwrap().status(),
        BackendStatus::Up
    );
}

/// Cluster "c": primaries p0, p1 and backups k0, k1, all weight 100.
fn map_with_backups(algorithm: Algorithm) -> BackendMap {
    let mut map = BackendMap::new(3);
    map.set_algorithm("c", algorithm);
    for (i, id) in ["p0", "p1"].into_iter().enumerate() {
        map.add_backend("c", BackendId::from(id), addr(9100 + i as u16), 100);
    }
    for (i, id) in ["k0", "k1"].into_iter().enumerate() {
        map.add_backend_with_role("c", BackendId::from(id), addr(9200 + i as u16), 100, true);
    }
    map
}

fn only(counts: &Map<String, u64>, ids: &[&str]) -> bool {
    !counts.is_empty() && counts.keys().all(|k| ids.contains(&k.as_str()))
}

#[test]
fn backups_get_no_new_flows_while_a_primary_is_available_whatever_the_algorithm() {
    for algorithm in [
        Algorithm::RoundRobin,
        Algorithm::Random,
        Algorithm::LeastLoaded,
        Algorithm::PowerOfTwo,
        Algorithm::Hrw,
        Algorithm::Maglev,
    ] {
        let mut map = map_with_backups(algorithm);
        let counts = picks(&mut map, 1_000);
        assert!(only(&counts, &["p0", "p1"]), "{algorithm}: {counts:?}");
        // One primary down: the other takes everything, backups still idle.
        map.set_status("c", "p0", BackendStatus::Down);
        let counts = picks(&mut map, 1_000);
        assert!(only(&counts, &["p1"]), "{algorithm}: {counts:?}");
        // The last primary suspect: the backups take over, not the suspect.
        assert!(map.mark_suspect("c", "p1"));
        let counts = picks(&mut map, 1_000);
        assert!(only(&counts, &["k0", "k1"]), "{algorithm}: {counts:?}");
        assert_eq!(counts.len(), 2, "{algorithm}: backups share: {counts:?}");
        // The primary answers again: new flows go back to it.
        assert!(map.mark_responsive("c", "p1"));
        let counts = picks(&mut map, 1_000);
        assert!(only(&counts, &["p1"]), "{algorithm}: {counts:?}");
    }
}

#[test]
fn backups_serve_when_every_primary_is_removed_and_stop_when_one_is_re_added() {
    let mut map = map_with_backups(Algorithm::RoundRobin);
    map.remove_backend("c", "p0").unwrap();
    map.remove_backend("c", "p1").unwrap();
    let counts = picks(&mut map, 100);
    assert_eq!((counts["k0"], counts["k1"]), (50, 50));
    map.add_backend("c", BackendId::from("p0"), addr(9100), 100);
    assert_eq!(picks(&mut map, 100)["p0"], 100);
    // A weight-0 primary is not available: the backups serve.
    map.add_backend("c", BackendId::from("p0"), addr(9100), 0);
    assert!(only(&picks(&mut map, 100), &["k0", "k1"]));
}

#[test]
fn suspect_primaries_come_before_suspect_backups_and_fail_open_prefers_primaries() {
    let mut map = map_with_backups(Algorithm::RoundRobin);
    for id in ["p0", "p1", "k0", "k1"] {
        map.mark_suspect("c", id);
    }
    assert!(only(&picks(&mut map, 100), &["p0", "p1"]));
    map.set_status("c", "p0", BackendStatus::Down);
    map.set_status("c", "p1", BackendStatus::Down);
    assert!(only(&picks(&mut map, 100), &["k0", "k1"]));
    // Every backend down: fail-open balances over the primaries only.
    map.set_status("c", "k0", BackendStatus::Down);
    map.set_status("c", "k1", BackendStatus::Down);
    let counts = picks(&mut map, 100);
    assert_eq!((counts["p0"], counts["p1"]), (50, 50), "{counts:?}");
    map.set_fail_open("c", false);
    assert_eq!(map.select("c", 1), None);
    // A cluster of backups only, all down, fail-open: they serve.
    let mut backups = BackendMap::new(0);
    backups.add_backend_with_role("b", BackendId::from("k"), addr(1), 100, true);
    backups.set_status("b", "k", BackendStatus::Down);
    assert_eq!(backups.select("b", 0).unwrap().0.as_str(), "k");
}

#[test]
fn the_backup_flag_comes_from_the_order_and_an_update_can_change_it() {
    let mut map = BackendMap::new(0);
    let mut order = command::AddBackend {
        cluster_id: "c".into(),
        backend_id: "k".into(),
        address: addr(53).into(),
        sticky_id: None,
        load_balancing_parameters: None,
        backup: Some(true),
        quic_lb_server_id: None,
    };
    map.add_from_order(&order).unwrap();
    map.add_backend("c", BackendId::from("p"), addr(54), 100);
    let backend = |map: &BackendMap, id: &str| map.cluster("c").unwrap().get(id).unwrap().clone();
    assert!(backend(&map, "k").is_backup());
    assert!(!backend(&map, "p").is_backup());
    assert!(only(&picks(&mut map, 50), &["p"]));
    // Re-sent without the flag: a primary again, sharing the flows.
    order.backup = None;
    map.add_from_order(&order).unwrap();
    assert!(!backend(&map, "k").is_backup());
    assert_eq!(picks(&mut map, 50).len(), 2);
}

/// Replaying a state adds a cluster's backends one order at a time. A
/// table rebuild per order made n backends cost O(n²) (for MAGLEV, a
/// 65,537-slot table per order); the tables are now rebuilt once per
/// refresh (the worker refreshes once per wake-up, after its batch of
/// orders), and a pick never reads a stale table.
#[test]
fn adding_many_backends_rebuilds_the_table_once() {
    for algorithm in [Algorithm::RoundRobin, Algorithm::Maglev] {
        let mut map = BackendMap::new(1);
        map.set_algorithm("c", algorithm);
        for i in 0..2_000u16 {
            map.add_backend("c", BackendId::from(format!("b{i}")), addr(i), 1);
        }
        map.refresh();
        let rebuilds = |map: &BackendMap| map.cluster("c").unwrap().rebuilds();
        assert_eq!(rebuilds(&map), 1, "{algorithm}");
        assert!(picks(&mut map, 4_000).len() > 1_000, "{algorithm}");
        map.refresh();
        assert_eq!(rebuilds(&map), 1, "{algorithm}: picks rebuild nothing");

        // Changes picked from before any refresh: the pick rebuilds first,
        // once, and sees them.
        map.add_backend("c", BackendId::from("new"), addr(9999), 1);
        map.set_status("c", "b0", BackendStatus::Down);
        let counts = picks(&mut map, 100_000);
        assert_eq!(rebuilds(&map), 2, "{algorithm}");
        assert!(counts.contains_key("new"), "{algorithm}");
        assert!(!counts.contains_key("b0"), "{algorithm}");
        map.refresh();
        assert_eq!(rebuilds(&map), 2, "{algorithm}");
    }
}
