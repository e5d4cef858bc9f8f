//! A worker's boot seen through `status`: it is reported serving only once
//! it answered every order of the initial state the master replays to it,
//! and never when it refused part of it.

use sozu_command_lib::command::{Status, WorkerInfo};

use super::*;
use crate::master::Purpose;

/// Clusters in the replayed state: enough that the replay spans many
/// channel writes.
const CLUSTERS: usize = 2_000;

fn status(master: &mut Master, token: Token, client: &mut FakeClient) -> (String, WorkerInfo) {
    send(master, token, order(RequestType::Status(Status {})));
    let answer = client.read_message_timeout(TIMEOUT).unwrap();
    assert_eq!(answer.status(), ResponseStatus::Ok, "{}", answer.message);
    let Some(ContentType::Workers(infos)) = answer.content.and_then(|c| c.content_type) else {
        panic!("status without workers: {}", answer.message);
    };
    let info = infos.vec.into_iter().find(|w| w.id == 0).unwrap();
    (answer.message, info)
}

/// The next order the master sent worker 0, pumping the master's queue
/// first (the loop is driven by hand: nothing else writes it).
fn next_boot_order(master: &mut Master, worker: &mut FakeWorker) -> WorkerRequest {
    master.pump_worker(0);
    next_order(worker)
}

/// A master whose state holds [`CLUSTERS`] clusters, worker 0 just told to
/// boot (its replay queued), and a client.
fn booting(dir: &Path) -> (Master, FakeWorker, Token, FakeClient) {
    let mut master = master(dir);
    for i in 0..CLUSTERS {
        master.state.dispatch(&cluster(&format!("c{i}"))).unwrap();
    }
    let worker = add_worker(&mut master, 0);
    let (token, client) = add_client(&mut master);
    master.boot_worker(0, Vec::new(), Purpose::WorkerBoot { worker: 0 }, now());
    (master, worker, token, client)
}

#[test]
fn a_worker_is_not_reported_serving_before_its_whole_state_is_answered() {
    let dir = tempfile::tempdir().unwrap();
    let (mut master, mut worker, token, mut client) = booting(dir.path());

    let (message, info) = status(&mut master, token, &mut client);
    assert_eq!(info.run_state(), RunState::Running);
    assert_eq!(info.serving, Some(false), "nothing answered yet");
    assert_eq!(info.state_orders_applied, Some(0));
    let total = info.state_orders_total.unwrap();
    assert!(
        total > CLUSTERS as u64,
        "every cluster and the closing status: {total}"
    );
    assert!(
        message.contains(&format!(
            "degraded: worker 0 is booting (0 of {total} state orders applied)"
        )),
        "{message}"
    );

    // Every order but the closing status answered: still booting.
    let mut answered: u64 = 0;
    let last = loop {
        let request = next_boot_order(&mut master, &mut worker);
        if matches!(request.content.request_type, Some(RequestType::Status(_))) {
            break request;
        }
        reply(
            &mut master,
            0,
            &mut worker,
            &request,
            ResponseStatus::Ok,
            "",
        );
        answered += 1;
        if answered == CLUSTERS as u64 / 2 {
            let (_, info) = status(&mut master, token, &mut client);
            assert_eq!(info.serving, Some(false), "half the state answered");
            assert_eq!(info.state_orders_applied, Some(answered));
        }
    };
    assert_eq!(answered + 1, total, "the replay is the state then a status");
    let (message, info) = status(&mut master, token, &mut client);
    assert_eq!(
        info.serving,
        Some(false),
        "the closing status is not answered"
    );
    assert_eq!(info.state_orders_applied, Some(total - 1));
    assert!(message.contains("worker 0 is booting"), "{message}");

    reply(&mut master, 0, &mut worker, &last, ResponseStatus::Ok, "");
    let (message, info) = status(&mut master, token, &mut client);
    assert_eq!(info.run_state(), RunState::Running);
    assert_eq!(info.serving, Some(true), "every order answered");
    assert_eq!(info.state_orders_applied, None, "no progress once serving");
    assert_eq!(info.state_orders_total, None);
    assert!(!message.contains("degraded"), "{message}");
}

#[test]
fn a_worker_that_refuses_part_of_its_state_is_never_reported_serving() {
    let dir = tempfile::tempdir().unwrap();
    let (mut master, mut worker, token, mut client) = booting(dir.path());
    let mut refused = false;
    loop {
        let request = next_boot_order(&mut master, &mut worker);
        let is_status = matches!(request.content.request_type, Some(RequestType::Status(_)));
        let (answer, message) = if !refused && !is_status {
            refused = true;
            (ResponseStatus::Failure, "cannot bind 127.0.0.1:53")
        } else {
            (ResponseStatus::Ok, "")
        };
        reply(&mut master, 0, &mut worker, &request, answer, message);
        if is_status {
            break;
        }
        let (_, info) = status(&mut master, token, &mut client);
        assert_eq!(info.serving, Some(false));
    }
    let (_, info) = status(&mut master, token, &mut client);
    assert_eq!(info.serving, Some(false), "a refused state never serves");
    let worker = &master.workers[&0];
    assert!(
        worker.channel_closed,
        "the master cut the worker off (and killed it) to restart the slot"
    );
    let cause = worker.boot_failure.as_deref().unwrap_or_default();
    assert!(
        cause.contains("did not take its initial state")
            && cause.contains("cannot bind 127.0.0.1:53"),
        "{cause}"
    );
}
