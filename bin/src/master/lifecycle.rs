//! The workers' lives as the master sees them: the end of start-up, a worker
//! that dies (SIGCHLD, channel EOF) and its restart with the current state,
//! soft stop and hard stop of the whole proxy.
//!
//! Owns the transitions of [`super::Phase`] and of each worker's run state.
//! It never blocks: a stop waits for SIGCHLD in the loop, and a hard stop
//! escalates to SIGKILL at a deadline.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use mio::Token;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use sozu_command_lib::command::request::RequestType;
use sozu_command_lib::command::{HardStop, Request, ResponseStatus, RunState, SoftStop, Status};

use super::clients::response;
use super::gather::{Gathered, WorkerFailure};
use super::{Master, Phase, Purpose};

/// A worker that dies sooner than this after its start (or before it took
/// its state) counts as a failed start: its slot is restarted after a
/// backoff that doubles with each failed start in a row, from
/// [`FIRST_BACKOFF`] up to [`MAX_BACKOFF`]. A slot is never given up: it is
/// retried every [`MAX_BACKOFF`] at worst, and `status` reports the proxy
/// degraded while it is down.
const QUICK_FAILURE_WINDOW: Duration = Duration::from_secs(5);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// The wait before the next start of a slot after `failures` failed starts
/// in a row (0: at once).
pub(super) fn backoff(failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let doublings = (failures - 1).min(16);
    FIRST_BACKOFF
        .saturating_mul(1 << doublings)
        .min(MAX_BACKOFF)
}

/// A worker slot that is down and will be started again.
#[derive(Debug, Clone)]
pub(crate) struct PendingRestart {
    /// When the next start is attempted.
    pub at: Instant,
    /// Failed starts in a row.
    pub failures: u32,
    /// Why the slot is down (last exit or start error).
    pub cause: String,
}

/// How often clients waiting for a stop hear that it goes on.
const STOP_PROGRESS_INTERVAL: Duration = Duration::from_secs(5);

impl Master {
    /// Reaps every exited child (waitpid(-1, WNOHANG) until none).
    pub(super) fn reap_children(&mut self, now: Instant) {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => {
                    self.on_process_exit(pid, format!("exit code {code}"), now)
                }
                Ok(WaitStatus::Signaled(pid, signal, _)) => {
                    self.on_process_exit(pid, format!("killed by {signal}"), now)
                }
                Ok(WaitStatus::StillAlive) => return,
                Ok(_) => continue,
                Err(nix::errno::Errno::EINTR) => continue,
                // ECHILD: no child left.
                Err(_) => return,
            }
        }
    }

    fn on_process_exit(&mut self, pid: Pid, how: String, now: Instant) {
        // A slot already down keeps its last pid: it is not this child.
        let Some(id) = self
            .workers
            .values()
            .find(|w| w.pid == pid && w.run_state != RunState::Stopped)
            .map(|w| w.id)
        else {
            tracing::debug!(pid = pid.as_raw(), how, "unknown child reaped");
            return;
        };
        let Some(mut worker) = self.workers.remove(&id) else {
            return;
        };
        self.worker_tokens.remove(&worker.token);
        let _ = self.poll.registry().deregister(worker.channel.source_mut());
        let expected =
            worker.run_state == RunState::Stopping || matches!(self.phase, Phase::Stopping { .. });
        if expected {
            tracing::info!(worker = id, pid = pid.as_raw(), how, "worker exited");
        } else {
            tracing::error!(worker = id, pid = pid.as_raw(), how, "worker died");
        }
        for gathered in self.gather.on_worker_gone(id) {
            self.on_gathered(gathered, now);
        }
        upgrade_on_worker_exit(self, id, now);
        if let Phase::Stopping { .. } = self.phase {
            self.check_stopped();
            return;
        }
        if expected {
            return;
        }
        let lived = now.saturating_duration_since(worker.started_at);
        let failures = if worker.ready && lived >= QUICK_FAILURE_WINDOW {
            0
        } else {
            worker.quick_failures.saturating_add(1)
        };
        // A worker killed for refusing its state reports why, not how.
        let how = worker.boot_failure.take().unwrap_or(how);
        worker.run_state = RunState::Stopped;
        worker.channel_closed = true;
        worker.quick_failures = failures;
        self.workers.insert(id, worker);
        if !self.config.worker_automatic_restart {
            tracing::warn!(
                worker = id,
                "worker_automatic_restart is off: not restarting (sozu worker restart {id} starts it)"
            );
            return;
        }
        self.schedule_restart(id, failures, how, now);
    }

    /// Plans the next start of slot `id` after `failures` failed starts.
    fn schedule_restart(&mut self, id: u32, failures: u32, cause: String, now: Instant) {
        let wait = backoff(failures);
        if failures > 0 {
            tracing::warn!(
                worker = id,
                failures,
                wait_ms = wait.as_millis() as u64,
                cause,
                "worker slot down: restarting after a backoff"
            );
        }
        self.restarts.insert(
            id,
            PendingRestart {
                at: now + wait,
                failures,
                cause,
            },
        );
        if wait.is_zero() {
            self.restart_due(now);
        }
    }

    /// Starts every slot whose backoff is over.
    pub(super) fn restart_due(&mut self, now: Instant) {
        if matches!(self.phase, Phase::Stopping { .. }) {
            self.restarts.clear();
            return;
        }
        let due: Vec<u32> = self
            .restarts
            .iter()
            .filter(|(_, r)| r.at <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            if let Some(pending) = self.restarts.remove(&id) {
                self.restart_slot(id, pending.failures, now);
            }
        }
    }

    /// Starts slot `id` now; a start that fails is retried after a backoff.
    /// Returns whether a worker process was started.
    pub(super) fn restart_slot(&mut self, id: u32, failures: u32, now: Instant) -> bool {
        match self.start_worker(id, now, failures) {
            Ok(()) => {
                tracing::info!(worker = id, "worker restarted with the current state");
                true
            }
            Err(error) => {
                let cause = format!("{error:#}");
                tracing::error!(worker = id, error = cause, "cannot restart the worker");
                if let Some(worker) = self.workers.get_mut(&id) {
                    worker.quick_failures = failures.saturating_add(1);
                }
                self.schedule_restart(id, failures.saturating_add(1), cause, now);
                false
            }
        }
    }

    /// When the next slot restart is due.
    pub(super) fn next_restart(&self) -> Option<Instant> {
        self.restarts.values().map(|r| r.at).min()
    }

    /// One line per slot that is down, for `status`: empty when every slot
    /// runs.
    pub(super) fn degraded(&self, now: Instant) -> Vec<String> {
        let mut lines = Vec::new();
        for worker in self.workers.values() {
            if worker.run_state == RunState::Stopping {
                continue;
            }
            if worker.run_state == RunState::NotAnswering {
                lines.push(format!("worker {} is not answering", worker.id));
                continue;
            }
            if !worker.channel_closed && worker.run_state == RunState::Running {
                if !worker.ready {
                    lines.push(self.booting_line(worker));
                }
                continue;
            }
            match self.restarts.get(&worker.id) {
                Some(pending) => lines.push(format!(
                    "worker {} is down ({}; {} failed start(s) in a row; next start in {} ms)",
                    worker.id,
                    pending.cause,
                    pending.failures,
                    pending.at.saturating_duration_since(now).as_millis()
                )),
                None => lines.push(format!(
                    "worker {} is down and not restarted automatically",
                    worker.id
                )),
            }
        }
        lines
    }

    /// The channel of worker `id` failed: nothing more can reach it, so it
    /// is killed (its exit then restarts it like any crash).
    pub(super) fn on_worker_channel_closed(&mut self, id: u32, now: Instant) {
        let Some(worker) = self.workers.get_mut(&id) else {
            return;
        };
        if worker.channel_closed {
            return;
        }
        worker.channel_closed = true;
        // A stopping worker closes its channel on its way out (after
        // answering the stop): let it exit 0. A stuck one is SIGKILLed at
        // the hard-stop deadline (`check_stop_deadline`).
        let exiting =
            worker.run_state == RunState::Stopping || matches!(self.phase, Phase::Stopping { .. });
        let pid = worker.pid;
        let token = worker.token;
        let _ = self.poll.registry().deregister(worker.channel.source_mut());
        self.worker_tokens.remove(&token);
        for gathered in self.gather.on_worker_gone(id) {
            self.on_gathered(gathered, now);
        }
        if worker_is_alive(pid) && !exiting {
            let _ = kill(pid, Signal::SIGKILL);
        }
    }

    /// "worker 2 is booting (1200 of 20001 state orders applied)".
    fn booting_line(&self, worker: &super::workers::Worker) -> String {
        let info = worker.info(worker.boot.and_then(|b| self.gather.waiting(b.order)));
        match (info.state_orders_applied, info.state_orders_total) {
            (Some(applied), Some(total)) => format!(
                "worker {} is booting ({applied} of {total} state orders applied)",
                worker.id
            ),
            _ => format!("worker {} is booting", worker.id),
        }
    }

    pub(super) fn on_worker_booted(&mut self, id: u32, gathered: Gathered<()>, now: Instant) {
        let gone = matches!(gathered.failures.get(&id), Some(WorkerFailure::Gone));
        if let Some(client) = self.boot_waiters.remove(&id) {
            let answer = if gone {
                response(
                    ResponseStatus::Failure,
                    format!("worker {id} exited while taking its state"),
                )
            } else if gathered.is_ok() {
                let pid = self.workers.get(&id).map_or(0, |w| w.pid.as_raw());
                response(
                    ResponseStatus::Ok,
                    format!("worker {id} restarted (pid {pid}) with the current state"),
                )
            } else {
                response(
                    ResponseStatus::Failure,
                    format!(
                        "worker {id} started but did not take all of its state: {}; \
                         it is stopped and its slot restarted after a backoff",
                        gathered.failure_summary()
                    ),
                )
            };
            self.answer(client, answer);
        }
        let mut failed = false;
        if let Some(worker) = self.workers.get_mut(&id) {
            worker.boot = None;
            if gone {
                // Its exit is handled (and logged) by the supervision.
            } else if gathered.is_ok() {
                worker.ready = true;
                tracing::info!(worker = id, pid = worker.pid.as_raw(), "worker ready");
            } else {
                // A worker with part of its state would still get clients
                // (SO_REUSEPORT spreads them over every bound socket) and
                // answer them from the wrong configuration: it is never
                // reported serving; it is killed, and its exit is a failed
                // start (restart after a backoff, `status` degraded).
                let summary = gathered.failure_summary();
                tracing::error!(
                    worker = id,
                    pid = worker.pid.as_raw(),
                    failures = summary,
                    "worker did not take all of its initial state: stopping it"
                );
                worker.boot_failure = Some(format!("did not take its initial state: {summary}"));
                failed = true;
            }
        }
        if failed {
            self.on_worker_channel_closed(id, now);
        }
        self.check_started();
    }

    /// Serves the command socket once every worker took its state.
    pub(super) fn check_started(&mut self) {
        if !matches!(self.phase, Phase::Starting) {
            return;
        }
        let booting = self
            .gather
            .count_where(|p| matches!(p, Purpose::WorkerBoot { .. }));
        if booting == 0 {
            self.phase = Phase::Running;
            tracing::info!(
                workers = self.workers.len(),
                "master ready: serving the command socket"
            );
            self.register_listener();
            super::notify::ready(self.workers.len());
        }
    }

    /// soft_stop / hard_stop (order or signal). `client` waits for the final
    /// answer.
    pub(super) fn begin_stop(&mut self, hard: bool, client: Option<Token>, now: Instant) {
        let already = match &mut self.phase {
            Phase::Stopping {
                hard: was_hard,
                waiting,
                ..
            } => {
                if let Some(c) = client {
                    waiting.push(c);
                }
                if *was_hard || !hard {
                    if let Some(c) = client {
                        self.answer(c, response(ResponseStatus::Processing, "already stopping"));
                    }
                    return;
                }
                // A hard stop escalates a soft one.
                true
            }
            _ => false,
        };
        if !already {
            super::notify::stopping(hard);
            self.phase = Phase::Stopping {
                hard,
                waiting: client.into_iter().collect(),
                kill_at: None,
                progress_at: now + STOP_PROGRESS_INTERVAL,
            };
            // The proxy takes nothing new: once the workers close their
            // copies, the listening sockets are gone (connections refused).
            self.listen_sockets.release_all();
            // The command socket keeps serving status during a soft stop.
            if !self.listener_registered && !hard {
                self.register_listener();
            }
        }
        if let Phase::Stopping {
            hard: h, kill_at, ..
        } = &mut self.phase
        {
            *h = hard;
            if hard {
                *kill_at = Some(now + self.config.worker_timeout);
            }
        }
        let order = if hard {
            RequestType::HardStop(HardStop {})
        } else {
            RequestType::SoftStop(SoftStop {})
        };
        let live: Vec<u32> = self
            .workers
            .values()
            .filter(|w| !w.channel_closed && w.run_state != RunState::Stopped)
            .map(|w| w.id)
            .collect();
        let stop_order = self.gather.open(
            Purpose::StopForward,
            now,
            if hard {
                Some(self.config.worker_timeout)
            } else {
                None
            },
        );
        for id in &live {
            self.send_to_worker(
                stop_order,
                *id,
                vec![Request {
                    request_type: Some(order.clone()),
                }],
            );
            if let Some(worker) = self.workers.get_mut(id) {
                worker.run_state = RunState::Stopping;
            }
            self.pump_worker(*id);
        }
        if let Some(gathered) = self.gather.finish_if_complete(stop_order) {
            self.on_gathered(gathered, now);
        }
        if let Some(c) = client {
            let kind = if hard { "hard stop" } else { "soft stop" };
            self.answer(
                c,
                response(
                    ResponseStatus::Processing,
                    format!("{kind}: waiting for {} worker(s) to exit", live.len()),
                ),
            );
        }
        self.check_stopped();
    }

    /// Ends the master once no worker process is left.
    pub(super) fn check_stopped(&mut self) {
        let Phase::Stopping { waiting, hard, .. } = &mut self.phase else {
            return;
        };
        let running = self
            .workers
            .values()
            .filter(|w| w.run_state != RunState::Stopped && worker_is_alive(w.pid))
            .count();
        if running > 0 {
            return;
        }
        let hard = *hard;
        let waiting = std::mem::take(waiting);
        let message = if hard {
            "hard stop done: every worker is gone"
        } else {
            "soft stop done: every worker is gone"
        };
        for token in waiting {
            self.answer(token, response(ResponseStatus::Ok, message));
            if let Some(client) = self.clients.get_mut(&token) {
                // The master is about to exit: give the answer its chance.
                let _ = client.channel.set_blocking(true);
                client.flush();
            }
        }
        tracing::info!("every worker is gone: the master exits");
        self.exit = Some(ExitCode::SUCCESS);
    }

    pub(super) fn check_stop_deadline(&mut self, now: Instant) {
        let Phase::Stopping {
            kill_at: Some(at), ..
        } = &self.phase
        else {
            return;
        };
        if now < *at {
            return;
        }
        for worker in self.workers.values_mut() {
            if worker_is_alive(worker.pid) {
                tracing::warn!(
                    worker = worker.id,
                    pid = worker.pid.as_raw(),
                    "worker still running after the hard stop: SIGKILL"
                );
                let _ = kill(worker.pid, Signal::SIGKILL);
            }
        }
        if let Phase::Stopping { kill_at, .. } = &mut self.phase {
            *kill_at = None;
        }
    }
}

impl Master {
    /// Sends a status to every live worker once per `worker_timeout`, unless
    /// the previous one is still out: a worker stuck in a loop is reported
    /// NOT_ANSWERING even when no order is sent to it.
    pub(super) fn heartbeat(&mut self, now: Instant) {
        if !matches!(self.phase, Phase::Running) || now < self.next_heartbeat {
            return;
        }
        self.next_heartbeat = now + self.config.worker_timeout;
        if self.gather.count_where(|p| matches!(p, Purpose::Heartbeat)) > 0 {
            return;
        }
        let status = Request {
            request_type: Some(RequestType::Status(Status {})),
        };
        self.fan_out(
            Purpose::Heartbeat,
            vec![status],
            Some(self.config.worker_timeout),
            now,
        );
    }
}

impl Master {
    /// Tells the clients waiting for a stop which workers still drain.
    pub(super) fn stop_progress(&mut self, now: Instant) {
        let Phase::Stopping {
            waiting,
            progress_at,
            ..
        } = &mut self.phase
        else {
            return;
        };
        if now < *progress_at {
            return;
        }
        *progress_at = now + STOP_PROGRESS_INTERVAL;
        let clients = waiting.clone();
        let draining: Vec<String> = self
            .workers
            .values()
            .filter(|w| w.run_state != RunState::Stopped)
            .map(|w| format!("{} (pid {})", w.id, w.pid))
            .collect();
        let message = format!("still waiting for worker(s) {}", draining.join(", "));
        for token in clients {
            self.answer(token, response(ResponseStatus::Processing, message.clone()));
        }
    }
}

fn upgrade_on_worker_exit(master: &mut Master, id: u32, now: Instant) {
    super::upgrade::on_worker_exit(master, id, now);
}

/// Whether `pid` still exists (not yet reaped).
fn worker_is_alive(pid: Pid) -> bool {
    kill(pid, None).is_ok()
}
