//! A master slower to read answers than the worker is to give them (busy
//! with a client's listing, or a loaded machine) still gets one answer per
//! order, in order. The worker's queue of answers is bounded by the
//! channel's maximum; when it is full the worker stops reading orders until
//! the master reads, instead of dropping answers (the master would then
//! wait for them until its timeout and report the orders as failed).

mod worker_common;

use std::time::Instant;

use sozu_command_lib::channel::{Channel, FlushStatus};
use sozu_command_lib::command::{
    request::RequestType, Request, ResponseStatus, Status, WorkerRequest, WorkerResponse,
};
use sozu_lib::server::{Server, ServerConfig};
use worker_common::WAIT;

/// Small enough that the worker's queue of answers fills long before the
/// orders run out, large enough for any one order or answer here.
const CHANNEL_MAX: usize = 4_096;

/// Orders sent: far more answers than the worker's queue and the socket's
/// buffer hold together.
const ORDERS: usize = 30_000;

#[test]
fn a_master_that_reads_late_still_gets_every_answer_in_order() {
    let (mut master, worker) =
        Channel::<WorkerRequest, WorkerResponse>::pair(1_024, CHANNEL_MAX).unwrap();
    master.set_blocking(false).unwrap();
    let server = Server::new(
        worker,
        ServerConfig {
            worker_id: 1,
            seed: 42,
            ..ServerConfig::default()
        },
    )
    .unwrap();
    let thread = std::thread::spawn(move || server.run().unwrap());

    // The master writes orders for as long as the socket takes them and
    // reads answers only when it cannot write: the worker's answers pile
    // up behind a reader that is late.
    let mut sent = 0;
    let mut answered = 0;
    #[allow(clippy::disallowed_methods)]
    let deadline = Instant::now() + WAIT * 3;
    while answered < ORDERS {
        #[allow(clippy::disallowed_methods)]
        let late = Instant::now() > deadline;
        assert!(
            !late,
            "{answered} of {sent} orders answered; the others' answers never came"
        );
        let mut blocked = false;
        while sent < ORDERS && !blocked {
            let order = WorkerRequest {
                id: format!("order-{sent}"),
                content: Request {
                    request_type: Some(RequestType::Status(Status {})),
                },
            };
            match master.queue_message(&order) {
                Ok(()) => sent += 1,
                Err(_) => blocked = true, // the master's own queue is full
            }
            if master.flush().unwrap() == FlushStatus::Pending {
                blocked = true;
            }
        }
        let mut read_any = false;
        while let Some(answer) = master.try_read_message().unwrap() {
            assert_eq!(
                answer.id,
                format!("order-{answered}"),
                "answers come in order, one per order"
            );
            assert_eq!(
                answer.status,
                ResponseStatus::Ok as i32,
                "{}",
                answer.message
            );
            answered += 1;
            read_any = true;
        }
        if !read_any && blocked {
            // Neither side moved: wait for the worker rather than spin.
            std::thread::sleep(worker_common::POLL_PAUSE / 10);
        }
    }
    assert_eq!(sent, ORDERS);
    drop(master);
    thread.join().unwrap();
}
