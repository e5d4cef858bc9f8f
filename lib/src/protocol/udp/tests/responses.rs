//! `responses = N` counts per forwarded client datagram (nginx's
//! `proxy_responses`): a flow stays open while any forwarded request still
//! waits for its N responses, and closes when all are answered.

use super::*;

/// A manager whose cluster expects `responses` answers per request (and an
/// optional requests cap).
fn dns(responses: u32, requests: u32) -> UdpFlowManager {
    let mut c = cluster();
    c.responses = nz(responses);
    c.requests = nz(requests);
    manager_with(c)
}

#[test]
fn thirty_two_queries_in_flight_get_thirty_two_answers() {
    let t0 = origin();
    let mut m = dns(1, 0);
    let client = addr("192.0.2.1:5353");
    // All 32 arrive before the backend is chosen: they are buffered in order.
    let mut flow = None;
    for i in 0..32u8 {
        let ClientDecision::Queued { flow: f } = m.handle_client_datagram(t0, client, &[i; 3])
        else {
            panic!("query {i} not queued");
        };
        assert!(flow.is_none_or(|id| id == f), "one flow for one socket");
        flow = Some(f);
    }
    let flow = flow.unwrap();
    outputs(&mut m);
    m.backend_resolved(t0, flow, BackendId::new("b1"), backend_addr());
    let sent = outputs(&mut m)
        .iter()
        .filter(|o| matches!(o, Output::Transmit { .. }))
        .count();
    assert_eq!(sent, 32, "every buffered query is forwarded");
    for i in 0..31 {
        assert_eq!(
            m.handle_backend_datagram(t0, flow, b"answer"),
            BackendDecision::Return { dst: client },
            "answer {i}"
        );
        assert_eq!(m.active_flows(), 1, "{} answers still owed", 31 - i);
        assert!(closes(&outputs(&mut m)).is_empty());
    }
    assert_eq!(
        m.handle_backend_datagram(t0, flow, b"answer"),
        BackendDecision::Return { dst: client }
    );
    let out = outputs(&mut m);
    assert_eq!(closes(&out), vec![(flow, CloseReason::ResponsesReached)]);
    let Some(Output::CloseFlow { record, .. }) = out.last() else {
        panic!("no close")
    };
    assert_eq!((record.datagrams_in, record.datagrams_out), (32, 32));
    assert_eq!(m.active_flows(), 0);
}

#[test]
fn interleaved_queries_and_answers_keep_the_flow_until_all_are_answered() {
    let t0 = origin();
    let mut m = dns(1, 0);
    let client = addr("192.0.2.1:1");
    let flow = established(&mut m, t0, client); // q1 forwarded
    assert!(matches!(
        m.handle_client_datagram(t0, client, b"q2"),
        ClientDecision::Forward { .. }
    ));
    m.handle_backend_datagram(t0, flow, b"a1");
    assert_eq!(
        m.flow_phase(flow),
        Some(Phase::Established),
        "q2 unanswered"
    );
    assert!(matches!(
        m.handle_client_datagram(t0, client, b"q3"),
        ClientDecision::Forward { flow: f, .. } if f == flow
    ));
    m.handle_backend_datagram(t0, flow, b"a2");
    assert_eq!(
        m.flow_phase(flow),
        Some(Phase::Established),
        "q3 unanswered"
    );
    assert!(closes(&outputs(&mut m)).is_empty());
    m.handle_backend_datagram(t0, flow, b"a3");
    assert_eq!(
        closes(&outputs(&mut m)),
        vec![(flow, CloseReason::ResponsesReached)]
    );
}

#[test]
fn n_responses_per_request_are_awaited() {
    let t0 = origin();
    let mut m = dns(2, 0);
    let client = addr("192.0.2.1:1");
    let flow = established(&mut m, t0, client);
    m.handle_client_datagram(t0, client, b"q2");
    for _ in 0..3 {
        m.handle_backend_datagram(t0, flow, b"part");
    }
    assert_eq!(m.active_flows(), 1, "2 requests × 2 responses: 1 owed");
    m.handle_backend_datagram(t0, flow, b"part");
    assert_eq!(
        closes(&outputs(&mut m)),
        vec![(flow, CloseReason::ResponsesReached)]
    );
}

#[test]
fn a_response_after_the_flow_is_done_is_dropped_unknown_flow() {
    let t0 = origin();
    let mut m = dns(1, 0);
    let client = addr("192.0.2.1:1");
    let flow = established(&mut m, t0, client);
    m.handle_backend_datagram(t0, flow, b"a1");
    outputs(&mut m);
    assert_eq!(
        m.handle_backend_datagram(t0, flow, b"extra"),
        BackendDecision::Dropped(DropReason::UnknownFlow)
    );
    // The next query starts a new flow.
    assert!(matches!(
        m.handle_client_datagram(t0, client, b"q2"),
        ClientDecision::Queued { flow: f } if f != flow
    ));
}

#[test]
fn requests_cap_bounds_what_is_owed() {
    let t0 = origin();
    let mut m = dns(1, 2);
    let client = addr("192.0.2.1:1");
    let flow = established(&mut m, t0, client);
    assert!(matches!(
        m.handle_client_datagram(t0, client, b"q2"),
        ClientDecision::Forward { .. }
    ));
    assert_eq!(
        m.handle_client_datagram(t0, client, b"q3"),
        ClientDecision::Dropped(DropReason::RequestsExhausted)
    );
    m.handle_backend_datagram(t0, flow, b"a1");
    assert_eq!(m.active_flows(), 1, "q2 unanswered");
    m.handle_backend_datagram(t0, flow, b"a2");
    let out = outputs(&mut m);
    assert_eq!(closes(&out), vec![(flow, CloseReason::ResponsesReached)]);
    let Some(Output::CloseFlow { record, .. }) = out.last() else {
        panic!("no close")
    };
    assert_eq!(
        (
            record.datagrams_in,
            record.datagrams_out,
            record.datagrams_dropped
        ),
        (2, 2, 1)
    );
}

#[test]
fn owed_count_saturates_instead_of_overflowing() {
    let t0 = origin();
    let mut m = dns(u32::MAX, 0);
    let client = addr("192.0.2.1:1");
    let flow = established(&mut m, t0, client);
    for _ in 0..4 {
        m.handle_client_datagram(t0, client, b"q");
        m.handle_backend_datagram(t0, flow, b"a");
    }
    assert_eq!(m.active_flows(), 1);
}

mod properties {
    use quickcheck::{Arbitrary, Gen, QuickCheck};

    use super::*;

    /// One client socket's traffic: `true` a query, `false` an answer from
    /// the backend on the flow's upstream socket.
    #[derive(Debug, Clone)]
    struct Traffic {
        responses: u32,
        requests_cap: u32,
        ops: Vec<bool>,
    }

    impl Arbitrary for Traffic {
        fn arbitrary(g: &mut Gen) -> Self {
            let len = usize::arbitrary(g) % 64;
            Traffic {
                responses: 1 + u32::arbitrary(g) % 3,
                requests_cap: u32::arbitrary(g) % 5,
                ops: (0..len).map(|_| bool::arbitrary(g)).collect(),
            }
        }

        fn shrink(&self) -> Box<dyn Iterator<Item = Self>> {
            let (responses, requests_cap) = (self.responses, self.requests_cap);
            Box::new(self.ops.shrink().map(move |ops| Traffic {
                responses,
                requests_cap,
                ops,
            }))
        }
    }

    /// Plays the traffic against a manager and a model of the rule: the flow
    /// lives while `answered < min(sent, cap) × N`, closes the moment it is
    /// reached, never before; answers on a closed flow are `UnknownFlow`.
    fn holds(t: Traffic) -> Result<(), String> {
        let now = origin();
        let mut m = dns(t.responses, t.requests_cap);
        let client = addr("192.0.2.7:4000");
        let n = u64::from(t.responses);
        let cap = u64::from(t.requests_cap);
        // (flow, forwarded, answered) while the model says it lives.
        let mut live: Option<(FlowId, u64, u64)> = None;
        let mut last: Option<FlowId> = None;
        for (step, &query) in t.ops.iter().enumerate() {
            if query {
                match live {
                    None => {
                        let flow = established(&mut m, now, client);
                        live = Some((flow, 1, 0));
                    }
                    Some((flow, sent, answered)) => {
                        let d = m.handle_client_datagram(now, client, b"q");
                        if cap > 0 && sent >= cap {
                            if d != ClientDecision::Dropped(DropReason::RequestsExhausted) {
                                return Err(format!("step {step}: {d:?} past the cap"));
                            }
                        } else if !matches!(d, ClientDecision::Forward { flow: f, .. } if f == flow)
                        {
                            return Err(format!("step {step}: query not forwarded: {d:?}"));
                        } else {
                            live = Some((flow, sent + 1, answered));
                        }
                        outputs(&mut m);
                    }
                }
            } else {
                let Some((flow, sent, answered)) = live else {
                    if let Some(flow) = last {
                        let d = m.handle_backend_datagram(now, flow, b"late");
                        if d != BackendDecision::Dropped(DropReason::UnknownFlow) {
                            return Err(format!("step {step}: late answer {d:?}"));
                        }
                    }
                    continue;
                };
                let d = m.handle_backend_datagram(now, flow, b"a");
                if d != (BackendDecision::Return { dst: client }) {
                    return Err(format!("step {step}: answer not returned: {d:?}"));
                }
                let answered = answered + 1;
                let done = answered >= sent * n;
                let closed = closes(&outputs(&mut m));
                if done {
                    if closed != vec![(flow, CloseReason::ResponsesReached)] {
                        return Err(format!("step {step}: all answered, closes {closed:?}"));
                    }
                    live = None;
                    last = Some(flow);
                } else {
                    if !closed.is_empty() || m.flow_phase(flow) != Some(Phase::Established) {
                        return Err(format!(
                            "step {step}: closed with {answered} of {} answers",
                            sent * n
                        ));
                    }
                    live = Some((flow, sent, answered));
                }
            }
            if m.active_flows() != usize::from(live.is_some()) {
                return Err(format!("step {step}: {} flows live", m.active_flows()));
            }
        }
        Ok(())
    }

    #[test]
    fn a_flow_closes_exactly_when_every_forwarded_request_is_answered() {
        QuickCheck::new().tests(500).rng(Gen::new(100)).quickcheck(
            (|t: Traffic| match holds(t.clone()) {
                Ok(()) => true,
                Err(e) => {
                    eprintln!("{t:?}: {e}");
                    false
                }
            }) as fn(Traffic) -> bool,
        );
    }
}
