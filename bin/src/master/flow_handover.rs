//! The master's part of a live-flow handover during `upgrade_worker`.
//!
//! Between "the old worker returned its listening sockets" and "the new
//! worker boots", the master asks the old worker for its flows
//! (`return_flows`: the old worker stops reading its listeners, answers,
//! then passes a `FlowManifest` and each flow's upstream socket on its
//! fd-passing socket), holds them like the listening sockets, and passes
//! them to the new worker right after the listening sockets
//! (`adopt_listen_sockets` with `flows_follow`); the new worker's boot ends
//! with `adopt_flows`, before which it reads no listener. Datagrams that
//! arrive meanwhile wait in the kernel (the listening sockets and the
//! upstream sockets are the same sockets throughout).
//!
//! Fallbacks (each logged and named in the upgrade's answer): an old worker
//! that cannot pass its flows keeps them (served as before an upgrade: their
//! clients start afresh on the new worker); if the new worker fails to boot,
//! the master gives the flows back to the old worker with the same two
//! orders, which also makes it read its listeners again. The master keeps
//! its copies of the fds until the new worker is booted, then closes them.
//! Must never block longer than `worker_timeout` on a fd-passing socket.

use std::os::fd::{AsFd, OwnedFd};
use std::time::Instant;

use sozu_command_lib::command::request::RequestType;
use sozu_command_lib::command::{
    AdoptFlows, AdoptListenSockets, FlowManifest, ListenSocketManifest, Request, ReturnFlows,
};
use sozu_command_lib::scm::DEFAULT_MAX_FLOW_MANIFEST_SIZE;

use super::gather::Gathered;
use super::upgrade::Step;
use super::{Master, Purpose};

/// Flows received from the old worker, held by the master.
#[derive(Debug, Default)]
pub(crate) struct HeldFlows {
    /// Entry `i` describes `fds[i]`.
    pub(crate) manifest: FlowManifest,
    /// The upstream sockets (the master's copies).
    pub(crate) fds: Vec<OwnedFd>,
    /// Why no flow is handed over, when the old worker could not pass them.
    pub(crate) fallback: Option<String>,
}

impl HeldFlows {
    /// One line for the upgrade's answer.
    pub(crate) fn summary(&self) -> String {
        match &self.fallback {
            Some(reason) => format!("live flows not handed over ({reason}): they start afresh"),
            None => format!("{} live UDP flow(s) handed over", self.fds.len()),
        }
    }
}

/// Asks the old worker for its flows (after its listening sockets).
pub(super) fn ask(master: &mut Master, old: u32, now: Instant) {
    let order = master.gather.open(
        Purpose::Upgrade(Step::ReturnFlows { old }),
        now,
        Some(master.config.worker_timeout),
    );
    master.send_to_worker(
        order,
        old,
        vec![Request {
            request_type: Some(RequestType::ReturnFlows(ReturnFlows {})),
        }],
    );
    master.pump_worker(old);
}

/// The old worker answered `return_flows`: receive the sequence that
/// follows an OK answer.
pub(super) fn receive(master: &mut Master, old: u32, gathered: &Gathered<()>) -> HeldFlows {
    if !gathered.is_ok() {
        let reason = format!("return_flows: {}", gathered.failure_summary());
        tracing::warn!(worker = old, reason, "no flow handover");
        return HeldFlows {
            fallback: Some(reason),
            ..HeldFlows::default()
        };
    }
    let Some(worker) = master.workers.get(&old) else {
        return HeldFlows {
            fallback: Some(format!("worker {old} is gone")),
            ..HeldFlows::default()
        };
    };
    let received = worker
        .scm
        .set_timeout(Some(master.config.worker_timeout))
        .and_then(|()| worker.scm.receive_flows(DEFAULT_MAX_FLOW_MANIFEST_SIZE));
    match received {
        Ok((manifest, fds)) => {
            tracing::info!(worker = old, flows = fds.len(), "live flows received");
            HeldFlows {
                manifest,
                fds,
                fallback: None,
            }
        }
        Err(error) => {
            // Every fd received so far is closed; the old worker released
            // those flows only if its send succeeded.
            let reason = format!("cannot receive the flows: {error}");
            tracing::error!(worker = old, reason, "no flow handover");
            HeldFlows {
                fallback: Some(reason),
                ..HeldFlows::default()
            }
        }
    }
}

/// The order that ends a boot (or a give-back) with a flow handover.
pub(super) fn adopt_order() -> Request {
    Request {
        request_type: Some(RequestType::AdoptFlows(AdoptFlows {})),
    }
}

/// `adopt_listen_sockets` announcing the flow sequence.
pub(super) fn adopt_sockets_order(manifest: ListenSocketManifest) -> Request {
    Request {
        request_type: Some(RequestType::AdoptListenSockets(AdoptListenSockets {
            manifest,
            flows_follow: Some(true),
        })),
    }
}

/// Passes the held flows on `worker`'s fd-passing socket (right after its
/// listening sockets). The master keeps its copies.
pub(super) fn send(master: &Master, worker: u32, flows: &HeldFlows) -> anyhow::Result<()> {
    let Some(w) = master.workers.get(&worker) else {
        anyhow::bail!("worker {worker} is gone");
    };
    let fds: Vec<_> = flows.fds.iter().map(AsFd::as_fd).collect();
    w.scm
        .set_timeout(Some(master.config.worker_timeout))
        .and_then(|()| w.scm.send_flows(&flows.manifest, &fds))
        .map_err(|e| anyhow::anyhow!("cannot pass the flows to worker {worker}: {e}"))
}

/// The new worker failed to boot: the old worker gets its flows back and
/// reads its listeners again (it stopped at `return_flows`).
pub(super) fn give_back(master: &mut Master, old: u32, flows: &HeldFlows, now: Instant) {
    if !master.workers.get(&old).is_some_and(|w| w.is_live()) {
        return;
    }
    let order = master.gather.open(
        Purpose::Upgrade(Step::GiveBack { old }),
        now,
        Some(master.config.worker_timeout),
    );
    master.send_to_worker(
        order,
        old,
        vec![
            adopt_sockets_order(ListenSocketManifest::default()),
            adopt_order(),
        ],
    );
    master.pump_worker(old);
    let sent = master
        .workers
        .get(&old)
        .ok_or_else(|| anyhow::anyhow!("worker {old} is gone"))
        .and_then(|w| {
            w.scm
                .set_timeout(Some(master.config.worker_timeout))
                .and_then(|()| {
                    w.scm
                        .send_listen_sockets(&ListenSocketManifest::default(), &[])
                })
                .map_err(|e| anyhow::anyhow!("{e}"))
        })
        .and_then(|()| send(master, old, flows));
    if let Err(error) = sent {
        tracing::error!(
            worker = old,
            error = format!("{error:#}"),
            "giving the flows back failed"
        );
    }
}
