//! The affinity hash is a function of the client and `hash_seed` only: the
//! per-process seed (flow-table hasher) and the listener address do not
//! enter it, so every worker and instance agrees.

use super::*;

fn selected_hash(m: &mut UdpFlowManager, client: SocketAddr) -> u64 {
    m.handle_client_datagram(origin(), client, b"x");
    outputs(m)
        .into_iter()
        .find_map(|o| match o {
            Output::SelectBackend { affinity_hash, .. } => Some(affinity_hash),
            _ => None,
        })
        .expect("a new flow selects a backend")
}

fn manager_at(listener: &str, table_seed: u64, hash_seed: Option<u64>) -> UdpFlowManager {
    let mut c = config();
    c.listener = addr(listener);
    if let Some(h) = hash_seed {
        c.hash_seed = h;
    }
    let mut m = UdpFlowManager::new(c, table_seed);
    m.set_cluster(origin(), Some(cluster()));
    m
}

#[test]
fn affinity_ignores_the_process_seed_and_the_listener_address() {
    let client = addr("198.51.100.7:40000");
    let a = selected_hash(&mut manager_at("10.0.0.1:53", 1, None), client);
    let b = selected_hash(&mut manager_at("10.0.0.2:5353", 0xdead_beef, None), client);
    assert_eq!(a, b);
    assert_eq!(
        a,
        affinity_hash(DEFAULT_HASH_SEED, AffinityKey::SourceIp, client)
    );
}

#[test]
fn hash_seed_changes_the_affinity() {
    let client = addr("198.51.100.7:40000");
    let default = selected_hash(&mut manager_at("10.0.0.1:53", 1, None), client);
    let custom = selected_hash(&mut manager_at("10.0.0.1:53", 1, Some(99)), client);
    assert_ne!(default, custom);
    assert_eq!(custom, affinity_hash(99, AffinityKey::SourceIp, client));
}
