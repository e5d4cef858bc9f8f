//! `DNS_ID` clusters: the manager's `DnsQuery` decision, and the pure mux
//! (ID rewriting, answers mapped back only to the client that asked, late /
//! duplicate / wrong / spoofed / truncated answers, expiry, bounds, ID
//! unpredictability), plus a quickcheck property against a model.

use std::collections::{HashMap, HashSet};

use super::*;

const S0: usize = 0;
const S1: usize = 1;

fn dns_cluster() -> ClusterConfig {
    let mut c = cluster();
    c.dns_id = true;
    c
}

/// A query for `name` type A class IN with `id`.
fn query(id: u16, name: &str) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// The backend's answer to a query as it went on the wire: same ID and
/// question, QR set, one made-up answer record.
fn answer_to(wire: &[u8]) -> Vec<u8> {
    let mut a = wire.to_vec();
    a[2] |= 0x80;
    a[7] = 1; // ANCOUNT
    a.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 1]);
    a
}

fn id_of(p: &[u8]) -> u16 {
    u16::from_be_bytes([p[0], p[1]])
}

fn mux() -> DnsIdMux {
    let mut m = DnsIdMux::new(7, NonZeroUsize::new(64).unwrap());
    m.open_socket(S0, PendingQueries::new());
    m.open_socket(S1, PendingQueries::new());
    m
}

/// Sends `q` from `client` on `slot`; returns the bytes on the wire.
fn forward(
    m: &mut DnsIdMux,
    slot: usize,
    deadline: Instant,
    client: SocketAddr,
    q: &[u8],
) -> Vec<u8> {
    let mut wire = q.to_vec();
    let d = m.on_query(slot, deadline, client, None, &mut wire);
    let QueryDecision::Forward { id } = d else {
        panic!("expected Forward, got {d:?}");
    };
    assert_eq!(id_of(&wire), id, "the ID on the wire is the one returned");
    assert_eq!(wire[2..], q[2..], "only the ID changes");
    wire
}

#[test]
fn dns_cluster_datagrams_become_queries_without_a_flow() {
    let t0 = origin();
    let mut m = UdpFlowManager::new(config(), 42);
    m.set_cluster(t0, Some(dns_cluster()));
    assert!(m.is_dns_id());
    let client = addr("192.0.2.1:5353");
    let d = m.handle_client_datagram(t0, client, &query(1, "example.com"));
    assert_eq!(
        d,
        ClientDecision::DnsQuery {
            affinity_hash: affinity_hash(DEFAULT_HASH_SEED, AffinityKey::SourceIp, client),
            proxy_header: None,
        }
    );
    assert_eq!(m.active_flows(), 0);
    assert!(outputs(&mut m).is_empty());
    assert_eq!(m.poll_timeout(), None);
    assert_eq!(
        m.dns_answer_timeout(),
        Duration::from_secs(5),
        "the listener's back_timeout"
    );
    // Shorter than a header: not DNS.
    assert_eq!(
        m.handle_client_datagram(t0, client, &[0; 11]),
        ClientDecision::Dropped(DropReason::Invalid)
    );
    // Soft-stop: no new query, so pending ones run out.
    m.drain(t0);
    assert_eq!(
        m.handle_client_datagram(t0, client, &query(1, "example.com")),
        ClientDecision::Dropped(DropReason::Shed)
    );
}

#[test]
fn dns_cluster_back_timeout_is_the_answer_timeout() {
    let mut m = UdpFlowManager::new(config(), 42);
    let mut c = dns_cluster();
    c.back_timeout = Some(Duration::from_secs(2));
    m.set_cluster(origin(), Some(c));
    assert_eq!(m.dns_answer_timeout(), Duration::from_secs(2));
}

#[test]
fn answers_out_of_order_reach_only_their_clients_with_their_own_ids() {
    let t0 = origin();
    let dl = t0 + Duration::from_secs(2);
    let mut m = mux();
    let a = addr("192.0.2.1:1000");
    let b = addr("192.0.2.2:2000");
    // Both clients use the same ID: the wire IDs must differ.
    let qa = query(0x1234, "a.example");
    let qb = query(0x1234, "b.example");
    let wa = forward(&mut m, S0, dl, a, &qa);
    let wb = forward(&mut m, S0, dl, b, &qb);
    assert_ne!(id_of(&wa), id_of(&wb));
    assert_eq!(m.pending(), 2);
    // b's answer first.
    let mut ab = answer_to(&wb);
    assert_eq!(
        m.on_answer(t0, S0, &mut ab),
        AnswerDecision::Return {
            client: b,
            local: None
        }
    );
    assert_eq!(id_of(&ab), 0x1234, "original ID restored");
    let mut aa = answer_to(&wa);
    assert_eq!(
        m.on_answer(t0, S0, &mut aa),
        AnswerDecision::Return {
            client: a,
            local: None
        }
    );
    assert_eq!(id_of(&aa), 0x1234);
    assert_eq!(m.pending(), 0);
}

#[test]
fn a_second_answer_is_dropped_unknown_id() {
    let t0 = origin();
    let mut m = mux();
    let w = forward(
        &mut m,
        S0,
        t0 + Duration::from_secs(2),
        addr("192.0.2.1:1"),
        &query(9, "x.org"),
    );
    let mut first = answer_to(&w);
    assert!(matches!(
        m.on_answer(t0, S0, &mut first),
        AnswerDecision::Return { .. }
    ));
    let mut second = answer_to(&w);
    assert_eq!(
        m.on_answer(t0, S0, &mut second),
        AnswerDecision::Dropped(DnsDrop::UnknownId)
    );
    assert_eq!(
        id_of(&second),
        id_of(&w),
        "a dropped answer is not rewritten"
    );
}

#[test]
fn answers_on_the_wrong_socket_or_with_a_wrong_id_are_unknown() {
    let t0 = origin();
    let mut m = mux();
    let w = forward(
        &mut m,
        S0,
        t0 + Duration::from_secs(2),
        addr("192.0.2.1:1"),
        &query(9, "x.org"),
    );
    let mut other_socket = answer_to(&w);
    assert_eq!(
        m.on_answer(t0, S1, &mut other_socket),
        AnswerDecision::Dropped(DnsDrop::UnknownId)
    );
    let mut wrong = answer_to(&w);
    let bad = id_of(&w).wrapping_add(1);
    wrong[..2].copy_from_slice(&bad.to_be_bytes());
    assert_eq!(
        m.on_answer(t0, S0, &mut wrong),
        AnswerDecision::Dropped(DnsDrop::UnknownId)
    );
    assert_eq!(
        m.on_answer(t0, 99, &mut answer_to(&w)),
        AnswerDecision::Dropped(DnsDrop::UnknownId)
    );
    assert_eq!(m.pending(), 1, "the real query still waits");
    assert!(matches!(
        m.on_answer(t0, S0, &mut answer_to(&w)),
        AnswerDecision::Return { .. }
    ));
}

#[test]
fn an_answer_to_another_question_is_a_mismatch_and_keeps_the_query() {
    let t0 = origin();
    let mut m = mux();
    let w = forward(
        &mut m,
        S0,
        t0 + Duration::from_secs(2),
        addr("192.0.2.1:1"),
        &query(9, "bank.example"),
    );
    // A spoofed answer: right ID, another name.
    let mut spoof = answer_to(&query(id_of(&w), "evil.example"));
    assert_eq!(
        m.on_answer(t0, S0, &mut spoof),
        AnswerDecision::Dropped(DnsDrop::Mismatch)
    );
    // An error answer without a question is accepted (FORMERR).
    let mut formerr = w[..12].to_vec();
    formerr[2] |= 0x80;
    formerr[3] = 1;
    formerr[5] = 0;
    assert!(matches!(
        m.on_answer(t0, S0, &mut formerr),
        AnswerDecision::Return { .. }
    ));
    assert_eq!(id_of(&formerr), 9);
}

#[test]
fn a_success_without_a_question_is_a_mismatch() {
    let t0 = origin();
    let mut m = mux();
    let w = forward(
        &mut m,
        S0,
        t0 + Duration::from_secs(2),
        addr("192.0.2.1:1"),
        &query(9, "bank.example"),
    );
    let mut bare = w[..12].to_vec();
    bare[2] |= 0x80;
    bare[5] = 0; // QDCOUNT 0, RCODE 0
    assert_eq!(
        m.on_answer(t0, S0, &mut bare),
        AnswerDecision::Dropped(DnsDrop::Mismatch)
    );
}

#[test]
fn truncated_and_non_dns_datagrams_are_dropped_not_dns() {
    let t0 = origin();
    let dl = t0 + Duration::from_secs(2);
    let mut m = mux();
    let c = addr("192.0.2.1:1");
    for len in 0..12 {
        let mut short = vec![0u8; len];
        assert_eq!(
            m.on_query(S0, dl, c, None, &mut short),
            QueryDecision::Dropped(DnsDrop::NotDns)
        );
        let mut short = vec![0x80u8; len];
        assert_eq!(
            m.on_answer(t0, S0, &mut short),
            AnswerDecision::Dropped(DnsDrop::NotDns)
        );
    }
    // A response sent as a query (reflection) and a query sent as an answer.
    let mut reflected = answer_to(&query(1, "a.b"));
    assert_eq!(
        m.on_query(S0, dl, c, None, &mut reflected),
        QueryDecision::Dropped(DnsDrop::NotDns)
    );
    let w = forward(&mut m, S0, dl, c, &query(1, "a.b"));
    let mut not_answer = w.clone();
    assert_eq!(
        m.on_answer(t0, S0, &mut not_answer),
        AnswerDecision::Dropped(DnsDrop::NotDns)
    );
    assert_eq!(m.pending(), 1);
}

#[test]
fn unanswered_queries_expire_counted_and_late_answers_are_dropped() {
    let t0 = origin();
    let mut m = mux();
    let c = addr("192.0.2.1:1");
    let w1 = forward(&mut m, S0, t0 + Duration::from_secs(2), c, &query(1, "a.b"));
    let w2 = forward(&mut m, S1, t0 + Duration::from_secs(3), c, &query(2, "a.b"));
    let w3 = forward(&mut m, S1, t0 + Duration::from_secs(3), c, &query(3, "a.b"));
    assert_eq!(m.poll_timeout(), Some(t0 + Duration::from_secs(2)));
    let mut slots = Vec::new();
    assert_eq!(
        m.handle_timeout(t0 + Duration::from_secs(2), |s| slots.push(s)),
        1
    );
    assert_eq!(slots, [S0]);
    assert!(m
        .poll_timeout()
        .is_some_and(|t| t > t0 + Duration::from_secs(2)));
    // The answer to the expired query comes now: nothing to map it to.
    assert_eq!(
        m.on_answer(t0 + Duration::from_secs(2), S0, &mut answer_to(&w1)),
        AnswerDecision::Dropped(DnsDrop::UnknownId)
    );
    // An answer past its deadline before the timer ran: late, and the
    // query ends there (not expired again).
    assert_eq!(
        m.on_answer(t0 + Duration::from_secs(3), S1, &mut answer_to(&w2)),
        AnswerDecision::Dropped(DnsDrop::Late)
    );
    assert_eq!(
        m.handle_timeout(t0 + Duration::from_secs(10), |_| {}),
        1,
        "only w3 expires"
    );
    assert_eq!(m.pending(), 0);
    assert_eq!(m.poll_timeout(), None);
    assert_eq!(
        m.on_answer(t0 + Duration::from_secs(10), S1, &mut answer_to(&w3)),
        AnswerDecision::Dropped(DnsDrop::UnknownId)
    );
}

#[test]
fn a_full_socket_refuses_until_an_answer_frees_an_id() {
    let t0 = origin();
    let dl = t0 + Duration::from_secs(2);
    let mut m = DnsIdMux::new(1, NonZeroUsize::new(3).unwrap());
    m.open_socket(S0, PendingQueries::new());
    let c = addr("192.0.2.1:1");
    let wires: Vec<_> = (0..3)
        .map(|i| forward(&mut m, S0, dl, c, &query(i, "a.b")))
        .collect();
    assert!(!m.has_room(S0));
    assert_eq!(
        m.on_query(S0, dl, c, None, &mut query(4, "a.b")),
        QueryDecision::Dropped(DnsDrop::PendingFull)
    );
    assert!(matches!(
        m.on_answer(t0, S0, &mut answer_to(&wires[1])),
        AnswerDecision::Return { .. }
    ));
    assert!(m.has_room(S0));
    forward(&mut m, S0, dl, c, &query(4, "a.b"));
}

#[test]
fn closing_a_socket_drops_its_queries_and_their_answers() {
    let t0 = origin();
    let dl = t0 + Duration::from_secs(2);
    let mut m = mux();
    let c = addr("192.0.2.1:1");
    let w = forward(&mut m, S0, dl, c, &query(1, "a.b"));
    forward(&mut m, S0, dl, c, &query(2, "a.b"));
    forward(&mut m, S1, dl, c, &query(3, "a.b"));
    assert_eq!(m.close_socket(S0), 2);
    assert_eq!(m.pending(), 1);
    assert!(!m.has_room(S0));
    assert_eq!(
        m.on_answer(t0, S0, &mut answer_to(&w)),
        AnswerDecision::Dropped(DnsDrop::UnknownId)
    );
    assert_eq!(
        m.on_query(S0, dl, c, None, &mut query(4, "a.b")),
        QueryDecision::Dropped(DnsDrop::PendingFull)
    );
    // Reopened: empty, and the old queries never expire a second time.
    assert_eq!(m.open_socket(S0, PendingQueries::new()), 0);
    assert_eq!(m.handle_timeout(dl, |_| {}), 1, "only S1's query");
}

#[test]
fn cancel_frees_the_id_without_an_answer() {
    let t0 = origin();
    let mut m = mux();
    let w = forward(
        &mut m,
        S0,
        t0 + Duration::from_secs(2),
        addr("192.0.2.1:1"),
        &query(1, "a.b"),
    );
    m.cancel(S0, id_of(&w));
    assert_eq!(m.pending(), 0);
    assert_eq!(m.handle_timeout(t0 + Duration::from_secs(5), |_| {}), 0);
}

#[test]
fn ids_are_never_reused_while_pending_and_not_predictable() {
    let t0 = origin();
    let dl = t0 + Duration::from_secs(2);
    let mut m = DnsIdMux::new(11, NonZeroUsize::new(MAX_PENDING_PER_SOCKET).unwrap());
    m.open_socket(S0, PendingQueries::new());
    let c = addr("192.0.2.1:1");
    let q = query(0, "a.b");
    let mut seen = HashSet::new();
    let mut ids = Vec::new();
    for _ in 0..MAX_PENDING_PER_SOCKET {
        let id = id_of(&forward(&mut m, S0, dl, c, &q));
        assert!(seen.insert(id), "ID {id} handed out twice while pending");
        ids.push(id);
    }
    // Not a counter: consecutive IDs rarely differ by one.
    let steps = ids
        .windows(2)
        .filter(|w| w[1] == w[0].wrapping_add(1))
        .count();
    assert!(steps < 16, "{steps} sequential steps");
    // Spread over the whole space: every 4,096-wide bucket is hit.
    let mut buckets = [0u32; 16];
    for id in &ids {
        buckets[usize::from(id >> 12)] += 1;
    }
    assert!(buckets.iter().all(|&n| n > 1500), "{buckets:?}");
    // Another seed, another sequence.
    let mut other = DnsIdMux::new(12, NonZeroUsize::new(64).unwrap());
    other.open_socket(S0, PendingQueries::new());
    let other_ids: Vec<u16> = (0..32)
        .map(|_| id_of(&forward(&mut other, S0, dl, c, &q)))
        .collect();
    assert_ne!(other_ids[..], ids[..32]);
}

#[test]
fn a_backend_count_follows_every_way_a_query_ends() {
    let t0 = origin();
    let dl = t0 + Duration::from_secs(2);
    let c = addr("192.0.2.1:1");
    // Backend x has two sockets (S0, S1), backend y one (S2).
    let (x, y) = (PendingQueries::new(), PendingQueries::new());
    let s2 = 2;
    let mut m = DnsIdMux::new(5, NonZeroUsize::new(64).unwrap());
    m.open_socket(S0, x.clone());
    m.open_socket(S1, x.clone());
    m.open_socket(s2, y.clone());
    let counts = || (x.get(), y.get());
    let answered = forward(&mut m, S0, dl, c, &query(1, "a.b"));
    let late = forward(&mut m, S1, dl, c, &query(2, "a.b"));
    let cancelled = forward(&mut m, S0, dl, c, &query(3, "a.b"));
    let expiring = forward(&mut m, s2, dl, c, &query(4, "a.b"));
    assert_eq!(counts(), (3, 1), "one per query sent, on its backend");
    // Refused queries and answers that end nothing leave the counts alone.
    assert_eq!(
        m.on_query(S0, dl, c, None, &mut [0u8; 5]),
        QueryDecision::Dropped(DnsDrop::NotDns)
    );
    let mut spoofed = answer_to(&query(id_of(&answered), "evil.b"));
    assert_eq!(
        m.on_answer(t0, S0, &mut spoofed),
        AnswerDecision::Dropped(DnsDrop::Mismatch)
    );
    assert_eq!(
        m.on_answer(t0, s2, &mut answer_to(&answered)),
        AnswerDecision::Dropped(DnsDrop::UnknownId),
        "on the wrong socket"
    );
    assert_eq!(counts(), (3, 1));
    // Answered, cancelled, late, expired: one less each.
    assert!(matches!(
        m.on_answer(t0, S0, &mut answer_to(&answered)),
        AnswerDecision::Return { .. }
    ));
    assert_eq!(counts(), (2, 1));
    m.cancel(S0, id_of(&cancelled));
    assert_eq!(counts(), (1, 1));
    assert_eq!(
        m.on_answer(dl, S1, &mut answer_to(&late)),
        AnswerDecision::Dropped(DnsDrop::Late)
    );
    assert_eq!(counts(), (0, 1));
    assert_eq!(m.handle_timeout(dl, |_| {}), 1);
    assert_eq!(counts(), (0, 0));
    // A duplicate of an answered query ends nothing more.
    assert_eq!(
        m.on_answer(t0, S0, &mut answer_to(&answered)),
        AnswerDecision::Dropped(DnsDrop::UnknownId)
    );
    drop(expiring);
    // A closed socket, and a socket reopened for another backend, release
    // what they held; the new backend starts from its own count.
    let dl = dl + Duration::from_secs(5);
    forward(&mut m, S0, dl, c, &query(5, "a.b"));
    forward(&mut m, S1, dl, c, &query(6, "a.b"));
    forward(&mut m, S1, dl, c, &query(7, "a.b"));
    assert_eq!(counts(), (3, 0));
    assert_eq!(m.close_socket(S0), 1);
    assert_eq!(counts(), (2, 0));
    assert_eq!(m.open_socket(S1, y.clone()), 2);
    assert_eq!(counts(), (0, 0));
    forward(&mut m, S1, dl, c, &query(8, "a.b"));
    forward(&mut m, s2, dl, c, &query(9, "a.b"));
    assert_eq!(counts(), (0, 2));
    // A mux dropped with queries pending (its listener removed) releases
    // them: the backend outlives it.
    drop(m);
    assert_eq!(counts(), (0, 0));
}

#[test]
fn many_answered_queries_keep_memory_flat() {
    let t0 = origin();
    let mut m = mux();
    let c = addr("192.0.2.1:1");
    let q = query(1, "a.b");
    // 100,000 queries answered at once: the expiry heap is compacted (the
    // invariant check after every call asserts it stays within twice the
    // live entries).
    for i in 0..100_000u32 {
        let dl = t0 + Duration::from_secs(2) + Duration::from_millis(u64::from(i));
        let w = forward(&mut m, S0, dl, c, &q);
        assert!(matches!(
            m.on_answer(t0, S0, &mut answer_to(&w)),
            AnswerDecision::Return { .. }
        ));
    }
    assert_eq!(m.pending(), 0);
    assert_eq!(m.handle_timeout(t0 + Duration::from_secs(200), |_| {}), 0);
}

mod property {
    use super::*;
    use quickcheck::{Arbitrary, Gen, QuickCheck};

    #[derive(Debug, Clone)]
    enum Step {
        Query {
            client: u8,
            slot: u8,
            id: u16,
        },
        /// Answer the `nth` query sent (if any), maybe on the wrong slot.
        Answer {
            nth: u16,
            wrong_slot: bool,
        },
        Garbage {
            slot: u8,
            id: u16,
        },
        Tick {
            ms: u16,
        },
        /// Close the socket, then reopen it for backend `group`.
        Reopen {
            slot: u8,
            group: u8,
        },
        /// Cancel the `nth` query sent (if still pending).
        Cancel {
            nth: u16,
        },
    }

    impl Arbitrary for Step {
        fn arbitrary(g: &mut Gen) -> Self {
            match u8::arbitrary(g) % 11 {
                0..=3 => Step::Query {
                    client: u8::arbitrary(g) % 8,
                    slot: u8::arbitrary(g) % 3,
                    id: u16::arbitrary(g) % 4,
                },
                4..=6 => Step::Answer {
                    nth: u16::arbitrary(g),
                    wrong_slot: bool::arbitrary(g) && bool::arbitrary(g),
                },
                7 => Step::Garbage {
                    slot: u8::arbitrary(g) % 3,
                    id: u16::arbitrary(g),
                },
                8 => Step::Tick {
                    ms: u16::arbitrary(g) % 3000,
                },
                9 => Step::Cancel {
                    nth: u16::arbitrary(g),
                },
                _ => Step::Reopen {
                    slot: u8::arbitrary(g) % 3,
                    group: u8::arbitrary(g) % 2,
                },
            }
        }
    }

    /// Against a model of what is pending: an answer is returned only to
    /// the client whose query is pending under that (slot, wire ID), with
    /// that query's original ID, at most once; every query ends exactly
    /// once (answered, late, expired, cancelled, socket closed) or is
    /// still pending; no two pending queries of one slot share a wire ID.
    /// Each backend's pending count (two backends; slots move between them
    /// when reopened) is at every step exactly its slots' pending queries,
    /// and back at 0 once every query ended, whatever the interleaving.
    fn only_the_asker_gets_its_answer(steps: Vec<Step>) -> bool {
        let t0 = origin();
        let mut now = t0;
        let timeout = Duration::from_millis(2000);
        let mut m = DnsIdMux::new(3, NonZeroUsize::new(5).unwrap());
        let loads = [PendingQueries::new(), PendingQueries::new()];
        // The backend (index in `loads`) of each slot.
        let mut group_of = [0usize, 1, 0];
        for (s, &g) in group_of.iter().enumerate() {
            m.open_socket(s, loads[g].clone());
        }
        // (slot, wire id) -> (client, original id, wire bytes, deadline)
        let mut model: HashMap<(usize, u16), (SocketAddr, u16, Instant)> = HashMap::new();
        let mut sent: Vec<(usize, Vec<u8>)> = Vec::new();
        let (mut queries, mut ended) = (0usize, 0usize);
        for step in steps {
            match step {
                Step::Query { client, slot, id } => {
                    let slot = usize::from(slot);
                    let c = SocketAddr::new(addr("198.51.100.1:0").ip(), 1000 + u16::from(client));
                    let mut wire = query(id, "q.example");
                    match m.on_query(slot, now + timeout, c, None, &mut wire) {
                        QueryDecision::Forward { id: wid } => {
                            if model.insert((slot, wid), (c, id, now + timeout)).is_some() {
                                return false; // an ID reused while pending
                            }
                            queries += 1;
                            sent.push((slot, wire));
                        }
                        QueryDecision::Dropped(DnsDrop::PendingFull) => {
                            if model.keys().filter(|(s, _)| *s == slot).count() < 5 {
                                return false;
                            }
                        }
                        QueryDecision::Dropped(_) => return false,
                    }
                }
                Step::Answer { nth, wrong_slot } => {
                    if sent.is_empty() {
                        continue;
                    }
                    let (slot, wire) = &sent[usize::from(nth) % sent.len()];
                    let slot = if wrong_slot { (slot + 1) % 3 } else { *slot };
                    let mut a = answer_to(wire);
                    let wid = id_of(&a);
                    match m.on_answer(now, slot, &mut a) {
                        AnswerDecision::Return { client, .. } => {
                            let Some((c, orig, dl)) = model.remove(&(slot, wid)) else {
                                return false;
                            };
                            if c != client || id_of(&a) != orig || dl <= now {
                                return false;
                            }
                            ended += 1;
                        }
                        AnswerDecision::Dropped(DnsDrop::Late) => {
                            match model.remove(&(slot, wid)) {
                                Some((_, _, dl)) if dl <= now => ended += 1,
                                _ => return false,
                            }
                        }
                        AnswerDecision::Dropped(DnsDrop::UnknownId) => {
                            if model.contains_key(&(slot, wid)) {
                                return false;
                            }
                        }
                        AnswerDecision::Dropped(_) => return false,
                    }
                }
                Step::Garbage { slot, id } => {
                    // A forged answer to another question never gets through.
                    let mut a = answer_to(&query(id, "forged.example"));
                    match m.on_answer(now, usize::from(slot), &mut a) {
                        AnswerDecision::Return { .. } => return false,
                        AnswerDecision::Dropped(DnsDrop::Late) => {
                            if model.remove(&(usize::from(slot), id)).is_none() {
                                return false;
                            }
                            ended += 1;
                        }
                        AnswerDecision::Dropped(_) => {}
                    }
                }
                Step::Tick { ms } => {
                    now += Duration::from_millis(u64::from(ms));
                    let n = m.handle_timeout(now, |_| {});
                    let due: Vec<_> = model
                        .iter()
                        .filter(|(_, v)| v.2 <= now)
                        .map(|(k, _)| *k)
                        .collect();
                    if n != due.len() {
                        return false;
                    }
                    for k in due {
                        model.remove(&k);
                    }
                    ended += n;
                    if m.poll_timeout().is_some_and(|t| t <= now) {
                        return false;
                    }
                }
                Step::Cancel { nth } => {
                    if sent.is_empty() {
                        continue;
                    }
                    let (slot, wire) = &sent[usize::from(nth) % sent.len()];
                    let wid = id_of(wire);
                    m.cancel(*slot, wid);
                    // Sent again later under the same ID, `wire` may name
                    // another query: the model drops whatever is pending
                    // under (slot, ID), as the mux does.
                    if model.remove(&(*slot, wid)).is_some() {
                        ended += 1;
                    }
                }
                Step::Reopen { slot, group } => {
                    let slot = usize::from(slot);
                    group_of[slot] = usize::from(group);
                    let n =
                        m.close_socket(slot) + m.open_socket(slot, loads[group_of[slot]].clone());
                    let gone: Vec<_> = model.keys().filter(|(s, _)| *s == slot).copied().collect();
                    if n != gone.len() {
                        return false;
                    }
                    for k in gone {
                        model.remove(&k);
                    }
                    ended += n;
                }
            }
            if m.pending() != model.len() || queries != ended + model.len() {
                return false;
            }
            for (g, load) in loads.iter().enumerate() {
                let mine = model.keys().filter(|(s, _)| group_of[*s] == g).count();
                if load.get() != mine as u64 {
                    return false;
                }
            }
        }
        // Every query ends (expired, or the mux dropped with them), and
        // nothing stays counted.
        if model.len().is_multiple_of(2) {
            m.handle_timeout(now + timeout, |_| {});
            if m.pending() != 0 {
                return false;
            }
        } else {
            drop(m);
        }
        loads.iter().all(|l| l.get() == 0)
    }

    #[test]
    fn only_the_client_that_asked_gets_an_answer() {
        QuickCheck::new()
            .tests(300)
            .quickcheck(only_the_asker_gets_its_answer as fn(Vec<Step>) -> bool);
    }
}
