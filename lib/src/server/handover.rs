//! The worker's side of a flow handover (`sozu upgrade`): the orders
//! `return_flows` (old worker) and `adopt_flows` (new worker), and the flow
//! sequence that follows `adopt_listen_sockets` with `flows_follow`.
//!
//! Owns the order handling and the fd-passing calls only; what a flow
//! becomes is the UDP shell's (`crate::udp::handover`) and the core's. It
//! must never block longer than [`SCM_TIMEOUT`] on the fd-passing socket.

use std::time::{Duration, Instant};

use sozu_command_lib::command::{ResponseStatus, WorkerResponse};
use sozu_command_lib::scm::DEFAULT_MAX_FLOW_MANIFEST_SIZE;

use super::{io_context, Server};
use crate::udp::{FlowExport, IoContext};

/// Bound on one flow sequence on the fd-passing socket (the master reads
/// it as soon as it reads the answer).
const SCM_TIMEOUT: Duration = Duration::from_secs(30);

impl Server {
    /// `return_flows`: stop reading the listeners, answer, pass every
    /// established flow's manifest entry and upstream socket, then release
    /// those flows. If the pass fails the flows stay here and are served
    /// as before (the successor starts their clients afresh).
    pub(super) fn return_flows(&mut self, now: Instant, id: &str) {
        let Some(scm) = self.scm.as_ref() else {
            self.answer(
                id,
                ResponseStatus::Failure,
                "this worker has no fd-passing socket",
                None,
            );
            return;
        };
        let mut ctx = io_context!(self);
        let FlowExport {
            manifest,
            fds,
            flows,
        } = self.udp.export_flows(now, &mut ctx);
        // The answer first: the master reads it, then the sequence.
        let response = WorkerResponse {
            id: id.to_owned(),
            status: ResponseStatus::Ok as i32,
            message: format!("{} flows follow", fds.len()),
            content: None,
        };
        // Written out before the sequence: a sequence larger than the
        // fd-passing socket's buffer is only read once the master has read
        // this answer.
        if let Err(error) = self.channel.write_message_timeout(&response, SCM_TIMEOUT) {
            tracing::error!(%error, "cannot write the return_flows answer");
        }
        let sent = scm
            .set_timeout(Some(SCM_TIMEOUT))
            .and_then(|()| scm.send_flows(&manifest, &fds));
        drop(fds);
        match sent {
            Ok(()) => {
                self.udp.release_flows(now, &flows, &mut ctx);
                tracing::info!(
                    worker = self.worker_id,
                    flows = flows.len(),
                    "live UDP flows handed over"
                );
            }
            Err(error) => {
                tracing::error!(%error, flows = flows.len(), "passing the flows failed: they stay here");
            }
        }
    }

    /// After `adopt_listen_sockets` with `flows_follow`: the flow sequence
    /// is next on the fd-passing socket. Listeners are held until
    /// `adopt_flows` whatever happens (an unreadable sequence adopts
    /// nothing: those clients start afresh). Returns a note for the answer.
    pub(super) fn receive_flows(&mut self) -> String {
        let Some(scm) = self.scm.as_ref() else {
            return "no fd-passing socket: no flows".to_owned();
        };
        let received = scm
            .set_timeout(Some(SCM_TIMEOUT))
            .and_then(|()| scm.receive_flows(DEFAULT_MAX_FLOW_MANIFEST_SIZE));
        match received {
            Ok((manifest, fds)) => {
                let count = fds.len();
                self.udp.hold_for_flows(manifest, fds);
                format!("{count} handed-over flows received")
            }
            Err(error) => {
                tracing::error!(%error, "receiving the handed-over flows failed");
                self.udp.hold_for_flows(Default::default(), Vec::new());
                format!("handed-over flows not received: {error}")
            }
        }
    }

    /// `adopt_flows`: adopt what was received, then read the listeners.
    pub(super) fn adopt_flows(&mut self, now: Instant, id: &str) {
        let mut ctx = io_context!(self);
        let report = self.udp.adopt_flows(now, &mut ctx);
        let refused: usize = report.failed.values().sum();
        let mut message = format!("{} flows adopted, {refused} refused", report.adopted);
        for (reason, n) in &report.failed {
            message.push_str(&format!(", {reason}: {n}"));
        }
        tracing::info!(
            worker = self.worker_id,
            adopted = report.adopted,
            refused,
            "flow handover adopted"
        );
        self.answer(id, ResponseStatus::Ok, &message, None);
    }
}
