//! Fuzz driver of the `DNS_ID` mux (`sozu_lib::protocol::udp::DnsIdMux`):
//! arbitrary bytes become queries, answers (well formed, mutated or
//! garbage), ticks, socket reopenings and cancels. Checked: no panic (the
//! mux's own invariant sweep runs after every call in debug builds), an
//! answer is returned only to the client recorded for that socket and ID,
//! with its original ID, and the waiting count matches what was forwarded
//! minus what ended. Replayed on stable by `lib/tests/dns_id_fuzz_replay.rs`.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use sozu_lib::protocol::udp::{AnswerDecision, DnsIdMux, PendingQueries, QueryDecision};

const SLOTS: usize = 3;

/// Runs one input.
pub fn run(data: &[u8]) {
    // An arbitrary origin: only offsets from it are used.
    #[allow(clippy::disallowed_methods)]
    let t0 = Instant::now();
    let mut now = t0;
    let mut m = DnsIdMux::new(0x5eed, NonZeroUsize::new(8).unwrap_or(NonZeroUsize::MIN));
    // Two backends: slots 0 and 2 share the first one's pending count.
    let loads = [PendingQueries::new(), PendingQueries::new()];
    for slot in 0..SLOTS {
        m.open_socket(slot, loads[slot % 2].clone());
    }
    // (slot, wire id) -> (client, original id)
    let mut waiting: HashMap<(usize, u16), (SocketAddr, u16)> = HashMap::new();
    let mut wires: Vec<(usize, Vec<u8>)> = Vec::new();
    let mut bytes = data.iter().copied();
    while let Some(op) = bytes.next() {
        let arg = bytes.next().unwrap_or(0);
        let slot = usize::from(arg) % SLOTS;
        match op % 6 {
            0 | 1 => {
                let len = usize::from(bytes.next().unwrap_or(0) % 64);
                let mut payload: Vec<u8> = bytes.by_ref().take(len).collect();
                if payload.len() >= 12 && op & 0x80 == 0 {
                    payload[2] &= 0x7f; // mostly real queries
                }
                let client = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), u16::from(arg));
                let original = payload.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]]));
                let deadline = now + Duration::from_millis(u64::from(op));
                if let QueryDecision::Forward { id } =
                    m.on_query(slot, deadline, client, None, &mut payload)
                {
                    let original = original.unwrap_or(0);
                    assert!(waiting.insert((slot, id), (client, original)).is_none());
                    wires.push((slot, payload));
                }
            }
            2 => {
                // The answer to a query sent earlier, maybe mutated.
                if wires.is_empty() {
                    continue;
                }
                let (slot, wire) = &wires[usize::from(arg) % wires.len()];
                let mut answer = wire.clone();
                answer[2] |= 0x80;
                if op & 0x40 != 0 {
                    let at = usize::from(op) % answer.len();
                    answer[at] ^= bytes.next().unwrap_or(1);
                }
                check_answer(&mut m, now, *slot, &mut answer, &mut waiting);
            }
            3 => {
                let len = usize::from(bytes.next().unwrap_or(0) % 64);
                let mut garbage: Vec<u8> = bytes.by_ref().take(len).collect();
                check_answer(&mut m, now, slot, &mut garbage, &mut waiting);
            }
            4 => {
                now += Duration::from_millis(u64::from(arg) * 4);
                m.handle_timeout(now, |_| {});
                assert!(m.poll_timeout().is_none_or(|t| t > now));
            }
            _ => {
                if op & 0x20 != 0 {
                    m.close_socket(slot);
                    m.open_socket(slot, loads[slot % 2].clone());
                    waiting.retain(|(s, _), _| *s != slot);
                } else if let Some((&(s, id), _)) = waiting.iter().next() {
                    m.cancel(s, id);
                    waiting.remove(&(s, id));
                }
            }
        }
        // Expired queries leave the model when the mux says so: count only.
        assert!(m.pending() <= waiting.len());
        // The backends' counts are exactly the pending queries.
        assert_eq!(
            loads.iter().map(|l| l.get()).sum::<u64>(),
            m.pending() as u64
        );
    }
    // Dropped with queries pending: nothing stays counted.
    drop(m);
    assert!(loads.iter().all(|l| l.get() == 0));
}

fn check_answer(
    m: &mut DnsIdMux,
    now: Instant,
    slot: usize,
    answer: &mut [u8],
    waiting: &mut HashMap<(usize, u16), (SocketAddr, u16)>,
) {
    let id = answer.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    if let AnswerDecision::Return { client, .. } = m.on_answer(now, slot, answer) {
        let id = id.unwrap_or_default();
        let (asked, original) = waiting
            .remove(&(slot, id))
            .unwrap_or_else(|| panic!("an answer returned for no recorded query"));
        assert_eq!(client, asked, "an answer reached another client");
        assert_eq!(u16::from_be_bytes([answer[0], answer[1]]), original);
    }
}
