//! What the master does with each client order: validate it against its own
//! state (a refusal never reaches a worker and leaves the state unchanged),
//! answer queries from that state, fan state changes out to every worker and
//! turn the gathered answers into exactly one final answer, with an audit
//! line for every mutating order.
//!
//! Owns the mapping from order kind to behaviour. It never blocks and never
//! trusts a request: every field it uses comes through `ConfigState`
//! validation or an explicit check here.

use std::path::PathBuf;
use std::time::Instant;

use mio::Token;
use nix::unistd::Pid;
use sozu_command_lib::command::request::RequestType;
use sozu_command_lib::command::response_content::ContentType;
use sozu_command_lib::command::{
    ListenSocketManifest, Request, Response, ResponseContent, ResponseStatus, RunState, WorkerInfos,
};
use sozu_command_lib::config::Config;
use sozu_command_lib::state::{order_name, ConfigState, DispatchOutcome};

use super::clients::response;
use super::command_socket::Peer;
use super::gather::{Gathered, WorkerFailure};
use super::{describe, metrics, prevalidate, state_file, Master, Phase, Purpose};
use crate::logging::AUDIT_TARGET;

/// A state change out to the workers (one at a time): `after` becomes the
/// committed state when every worker accepted its `count` orders.
#[derive(Debug)]
pub(crate) struct Change {
    pub client: Option<Token>,
    pub name: &'static str,
    pub peer: Peer,
    pub count: usize,
    pub after: ConfigState,
    /// The workers the orders were sent to (a restarted slot has a new
    /// pid).
    pub participants: Vec<(u32, Pid)>,
    /// What the orders do, one line each (reload), for the final answer.
    pub summary: Option<String>,
}

/// An order waiting for the state change in flight to finish.
#[derive(Debug)]
pub(crate) enum Deferred {
    Client(Token, Box<Request>),
    SignalReload,
}

/// A client order waiting for worker answers.
#[derive(Debug)]
pub(crate) struct ClientOrder {
    pub client: Token,
    pub kind: ClientOrderKind,
}

#[derive(Debug)]
pub(crate) enum ClientOrderKind {
    /// query_metrics: contents are aggregated.
    Metrics,
    /// An order that changes no state (Logging, configure_metrics) sent to
    /// every worker: OK when all applied it, FAILURE naming the others.
    Forward { name: &'static str, peer: Peer },
    /// check_state: each worker's state is compared with the master's.
    CheckState,
    /// query_certificates_from_workers: each worker's answer, by worker id.
    Certificates,
}

fn ok(message: impl Into<String>) -> Response {
    response(ResponseStatus::Ok, message)
}

pub(super) fn failure(message: impl Into<String>) -> Response {
    response(ResponseStatus::Failure, message)
}

pub(super) fn with_content(message: impl Into<String>, content: ContentType) -> Response {
    Response {
        status: ResponseStatus::Ok as i32,
        message: message.into(),
        content: Some(ResponseContent {
            content_type: Some(content),
        }),
    }
}

impl Master {
    /// Handles one decoded order from client `token`.
    pub(super) fn handle_request(&mut self, token: Token, request: Request, now: Instant) {
        let Some(peer) = self.clients.get(&token).map(|c| c.peer) else {
            return;
        };
        let Some(request_type) = request.request_type.clone() else {
            self.answer(
                token,
                failure("the request carries no order (request_type is empty)"),
            );
            return;
        };
        let name = order_name(&request_type);
        tracing::debug!(client = token.0, order = name, "order received");
        if self.serve_sozu_order(token, peer, &request, name, now) {
            return;
        }
        let stopping = matches!(self.phase, Phase::Stopping { .. });
        // State changes, state loads, reloads and a master upgrade wait
        // for the change in flight: each is checked against the committed
        // state and commits stay in order. check_state waits too, so it
        // compares the workers with a committed state.
        let waits = matches!(
            request_type,
            RequestType::LoadState(_)
                | RequestType::ReloadConfiguration(_)
                | RequestType::UpgradeMain(_)
                | RequestType::CheckState(_)
        ) || sozu_command_lib::state::is_state_change(&request);
        if self.change_in_flight && waits && !stopping {
            self.defer(Deferred::Client(token, Box::new(request)));
            return;
        }
        match request_type {
            RequestType::Status(_) | RequestType::ListWorkers(_) => {
                let infos = WorkerInfos {
                    vec: self
                        .workers
                        .values()
                        .map(|w| w.info(w.boot.and_then(|b| self.gather.waiting(b.order))))
                        .collect(),
                };
                let mut message = format!("{} worker(s)", infos.vec.len());
                let degraded = if stopping {
                    Vec::new()
                } else {
                    self.degraded(now)
                };
                if !degraded.is_empty() {
                    message.push_str("; degraded: ");
                    message.push_str(&degraded.join("; "));
                }
                self.answer(token, with_content(message, ContentType::Workers(infos)));
            }
            RequestType::ListListeners(_) => {
                let list = self.state.listeners_list();
                self.answer(
                    token,
                    with_content("listeners", ContentType::ListenersList(list)),
                );
            }
            RequestType::ListFrontends(filters) => {
                let list = self.state.frontends(&filters);
                self.answer(
                    token,
                    with_content("frontends", ContentType::FrontendList(list)),
                );
            }
            RequestType::ListClusters(_) => {
                let list = self.state.clusters();
                self.answer(token, with_content("clusters", ContentType::Clusters(list)));
            }
            RequestType::QueryClusterById(id) => match self.state.cluster_information(&id) {
                Some(info) => {
                    let list = sozu_command_lib::command::ClusterInformations { vec: vec![info] };
                    self.answer(
                        token,
                        with_content(format!("cluster {id}"), ContentType::Clusters(list)),
                    );
                }
                None => self.answer(token, failure(format!("no cluster with cluster_id {id:?}"))),
            },
            RequestType::QueryMetrics(_) => {
                let order = ClientOrder {
                    client: token,
                    kind: ClientOrderKind::Metrics,
                };
                self.fan_out(
                    Purpose::Client(order),
                    vec![request],
                    Some(self.config.worker_timeout),
                    now,
                );
            }
            RequestType::CheckState(_) => {
                let order = ClientOrder {
                    client: token,
                    kind: ClientOrderKind::CheckState,
                };
                self.fan_out(
                    Purpose::Client(order),
                    vec![request],
                    Some(self.config.worker_timeout),
                    now,
                );
            }
            RequestType::SaveState(path) => self.save_state(token, peer, path),
            RequestType::LoadState(path) if !stopping => self.load_state(token, peer, path, now),
            RequestType::PreviewReload(path) => self.preview_reload(token, path),
            RequestType::ReloadConfiguration(path) if !stopping => {
                self.reload_configuration(Some(token), peer, path, now)
            }
            RequestType::SoftStop(_) => {
                audit(peer, name, "accepted", "soft stop");
                self.begin_stop(false, Some(token), now);
            }
            RequestType::HardStop(_) => {
                audit(peer, name, "accepted", "hard stop");
                self.begin_stop(true, Some(token), now);
            }
            RequestType::UpgradeMain(_) if !stopping => {
                audit(peer, name, "accepted", "upgrade main");
                super::upgrade::begin_main(self, token);
            }
            RequestType::UpgradeWorker(id) if !stopping && self.slot_is_down(id) => {
                audit(
                    peer,
                    name,
                    "accepted",
                    &format!("start down worker slot {id}"),
                );
                self.start_down_slot(token, id, now);
            }
            RequestType::UpgradeWorker(id) if !stopping => {
                audit(peer, name, "accepted", &format!("upgrade worker {id}"));
                super::upgrade::begin_worker(self, token, id, now);
            }
            RequestType::ReturnListenSockets(_)
            | RequestType::AdoptListenSockets(_)
            | RequestType::ReturnFlows(_)
            | RequestType::AdoptFlows(_) => {
                self.answer(
                    token,
                    failure(format!(
                        "{name} is an order between the master and its workers"
                    )),
                );
            }
            _ if stopping => {
                audit(peer, name, "refused", "the proxy is stopping");
                self.answer(
                    token,
                    failure(format!("{name} refused: the proxy is stopping")),
                );
            }
            _ => self.state_change(token, peer, request, name, now),
        }
    }

    /// A state-changing order: validate, pre-check, dispatch (two-phase).
    fn state_change(
        &mut self,
        token: Token,
        peer: Peer,
        request: Request,
        name: &'static str,
        now: Instant,
    ) {
        let mut probe = ConfigState::new();
        if let Ok(DispatchOutcome::NotAStateChange) = probe.dispatch(&request) {
            self.answer(
                token,
                failure(format!("{name} is not served by this master")),
            );
            return;
        }
        self.begin_change(Some(token), peer, name, vec![request], None, now);
    }

    /// Starts a state change: applies `orders` to a copy of the committed
    /// state and runs the master-side checks on each (stopping at the
    /// first refusal, which leaves no trace), then sends them to every
    /// worker. The copy becomes the committed state only when every worker
    /// accepted (see [`Master::finish_change`]).
    pub(super) fn begin_change(
        &mut self,
        token: Option<Token>,
        peer: Peer,
        name: &'static str,
        orders: Vec<Request>,
        summary: Option<String>,
        now: Instant,
    ) {
        let total = orders.len();
        let after = match self.check_orders(name, &orders) {
            Ok(after) => after,
            Err(message) => {
                audit(peer, name, "refused", &message);
                match token {
                    Some(token) => self.answer(token, failure(message)),
                    None => tracing::error!(message),
                }
                return;
            }
        };
        // Binding is part of accepting (listen_sockets.rs): the sockets of
        // every listener the change adds are bound before anything is sent;
        // an address in use refuses the whole change.
        let bound = match self.listen_sockets.bind_added(&self.state, &after) {
            Ok(bound) => bound,
            Err(error) => {
                let message = if total == 1 {
                    format!("{name} refused: {error}")
                } else {
                    format!("{name} refused: {error}; nothing was applied")
                };
                audit(peer, name, "refused", &message);
                match token {
                    Some(token) => self.answer(token, failure(message)),
                    None => tracing::error!(message),
                }
                return;
            }
        };
        if total == 0 {
            audit(peer, name, "ok", "no change");
            if let Some(token) = token {
                self.answer(token, ok(format!("{name}: no change")));
            }
            return;
        }
        if let (Some(client), true) = (token, total > 1) {
            self.answer(
                client,
                response(
                    ResponseStatus::Processing,
                    format!("{name}: sending {total} orders to the workers"),
                ),
            );
        }
        let participants = self
            .workers
            .values()
            .filter(|w| w.receives_orders())
            .map(|w| (w.id, w.pid))
            .collect();
        let change = Change {
            client: token,
            name,
            peer,
            count: total,
            after,
            participants,
            summary,
        };
        // The workers adopt the new sockets before they read the orders.
        self.pass_listen_sockets(&bound, now);
        self.change_in_flight = true;
        self.fan_out(
            Purpose::Change(Box::new(change)),
            orders,
            Some(self.config.worker_timeout),
            now,
        );
    }

    /// Applies `orders` to a copy of the committed state with the
    /// master-side checks; the first refusal is the error message.
    fn check_orders(&self, name: &str, orders: &[Request]) -> Result<ConfigState, String> {
        let mut after = self.state.clone();
        let total = orders.len();
        for (index, order) in orders.iter().enumerate() {
            let checked = after
                .dispatch(order)
                .map_err(|e| e.to_string())
                .and_then(|_| prevalidate::check(&after, order).map_err(|e| e.to_string()));
            if let Err(error) = checked {
                return Err(if total == 1 {
                    format!("{name} refused: {error}")
                } else {
                    format!(
                        "{name} refused at order {} of {total}: {error}; nothing was applied",
                        index + 1
                    )
                });
            }
        }
        Ok(after)
    }

    /// The workers answered a state change: commit it if none refused;
    /// otherwise undo it on the workers that applied it and answer FAILURE.
    /// Then the next deferred order runs.
    pub(super) fn finish_change(&mut self, change: Change, gathered: Gathered<()>, now: Instant) {
        let Change {
            client,
            name,
            peer,
            count,
            after,
            participants,
            summary,
        } = change;
        // A worker that exited before answering comes back with the
        // committed state: its exit is not a refusal.
        let refusals: Vec<(u32, &WorkerFailure)> = gathered
            .failures
            .iter()
            .filter(|(_, f)| **f != WorkerFailure::Gone)
            .map(|(w, f)| (*w, f))
            .collect();
        let applied_to = |master: &Master, id: u32| {
            master
                .workers
                .get(&id)
                .is_some_and(|w| participants.contains(&(id, w.pid)) && w.receives_orders())
        };
        if refusals.is_empty() {
            let before = std::mem::replace(&mut self.state, after);
            // Workers started while the order was out booted with the
            // previous state: they get the difference.
            let late: Vec<u32> = self
                .workers
                .values()
                .filter(|w| w.receives_orders() && !participants.contains(&(w.id, w.pid)))
                .map(|w| w.id)
                .collect();
            if !late.is_empty() {
                let catch_up = before.diff(&self.state);
                self.repair(&late, "catch_up", catch_up, now);
            }
            self.autosave();
            let detail = format!("{count} order(s), {} worker(s)", gathered.succeeded.len());
            audit(peer, name, "ok", &detail);
            if let Some(client) = client {
                let mut message = format!("{name}: done on {} worker(s)", gathered.succeeded.len());
                for id in gathered.failures.keys() {
                    message.push_str(&format!(
                        "; worker {id} exited before answering (it restarts with this state)"
                    ));
                }
                if let Some(summary) = summary {
                    message.push_str("; changed:\n");
                    message.push_str(&summary);
                }
                self.answer(client, ok(message));
            }
        } else {
            let summary = refusals
                .iter()
                .map(|(w, f)| format!("worker {w}: {f}"))
                .collect::<Vec<_>>()
                .join("; ");
            let undo_on: Vec<u32> = gathered
                .succeeded
                .iter()
                .copied()
                .filter(|id| applied_to(self, *id))
                .collect();
            if !undo_on.is_empty() {
                let undo = after.diff(&self.state);
                self.repair(&undo_on, "undo", undo, now);
            }
            // A worker that refused one order of a batch may hold the
            // others; one that did not answer may apply it later: either
            // way its state is unknown, so it restarts from the committed
            // state.
            for (id, failure) in &refusals {
                let unknown = count > 1 || matches!(failure, WorkerFailure::TimedOut(_));
                if unknown && applied_to(self, *id) {
                    tracing::error!(
                        worker = id,
                        order = name,
                        "worker state unknown after a failed order: restarting it"
                    );
                    self.restart_diverged(*id, now);
                }
            }
            let undone = if undo_on.is_empty() {
                String::from("no worker had applied it")
            } else {
                format!(
                    "undone on worker(s) {}",
                    undo_on
                        .iter()
                        .map(u32::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            let message = format!("{name} failed: {summary}; {undone}; the state is unchanged");
            audit(peer, name, "failed", &message);
            match client {
                Some(client) => self.answer(client, failure(message)),
                None => tracing::error!(message),
            }
        }
        // Sockets of listeners the committed state does not have (removed
        // now, or added by a refused change) are closed; the workers close
        // their copies when they remove the listener.
        self.listen_sockets.release_absent(&self.state);
        self.change_in_flight = false;
        self.run_deferred(now);
    }

    /// Sends `orders` to `workers` to bring them to the committed state; a
    /// worker that refuses one is restarted (it boots with that state).
    fn repair(&mut self, workers: &[u32], name: &'static str, orders: Vec<Request>, now: Instant) {
        if orders.is_empty() {
            return;
        }
        let order = self.gather.open(
            Purpose::Repair { name },
            now,
            Some(self.config.worker_timeout),
        );
        for id in workers {
            self.send_to_worker(order, *id, orders.clone());
            self.pump_worker(*id);
        }
        if let Some(gathered) = self.gather.finish_if_complete(order) {
            self.on_gathered(gathered, now);
        }
    }

    /// A repair order finished: workers that did not take it restart.
    pub(super) fn finish_repair(
        &mut self,
        name: &'static str,
        gathered: Gathered<()>,
        now: Instant,
    ) {
        for (id, failure) in &gathered.failures {
            if *failure == WorkerFailure::Gone {
                continue;
            }
            tracing::error!(
                worker = id,
                order = name,
                %failure,
                "worker did not take the committed state: restarting it"
            );
            self.restart_diverged(*id, now);
        }
    }

    /// Kills worker `id` so that it restarts with the committed state.
    fn restart_diverged(&mut self, id: u32, now: Instant) {
        self.on_worker_channel_closed(id, now);
    }

    /// Whether slot `id` has no worker process (it died, or could not
    /// start).
    fn slot_is_down(&self, id: u32) -> bool {
        self.workers
            .get(&id)
            .is_some_and(|w| w.channel_closed && w.run_state == RunState::Stopped)
    }

    /// `upgrade_worker N` (`sozu worker restart N`) on a slot that is down:
    /// starts it at once, whatever its backoff; answered once it took the
    /// state.
    fn start_down_slot(&mut self, token: Token, id: u32, now: Instant) {
        self.restarts.remove(&id);
        if self.restart_slot(id, 0, now) {
            self.boot_waiters.insert(id, token);
            self.answer(
                token,
                response(
                    ResponseStatus::Processing,
                    format!("worker {id} started, sending it the state"),
                ),
            );
        } else {
            let cause = self
                .restarts
                .get(&id)
                .map_or_else(String::new, |r| r.cause.clone());
            self.answer(token, failure(format!("worker {id} cannot start: {cause}")));
        }
    }

    /// Orders that wait while a state change is out: they run one at a
    /// time, in arrival order, once it is committed or undone.
    fn defer(&mut self, item: Deferred) {
        tracing::debug!("a state change is in flight: order queued");
        self.deferred.push_back(item);
    }

    /// Runs deferred orders until one starts a new state change.
    pub(super) fn run_deferred(&mut self, now: Instant) {
        while !self.change_in_flight {
            let Some(item) = self.deferred.pop_front() else {
                return;
            };
            match item {
                Deferred::Client(token, request) => {
                    if self.clients.contains_key(&token) {
                        self.handle_request(token, *request, now);
                    }
                }
                Deferred::SignalReload => self.reload_from_signal(now),
            }
        }
    }

    fn save_state(&mut self, token: Token, peer: Peer, path: String) {
        let result = state_file::save(&self.state, &PathBuf::from(&path));
        match result {
            Ok(count) => {
                audit(peer, "save_state", "ok", &path);
                self.answer(token, ok(format!("saved {count} orders to {path}")));
            }
            Err(error) => {
                audit(peer, "save_state", "failed", &error.to_string());
                self.answer(
                    token,
                    failure(format!("cannot save the state to {path}: {error}")),
                );
            }
        }
    }

    fn load_state(&mut self, token: Token, peer: Peer, path: String, now: Instant) {
        let orders = match state_file::read(&PathBuf::from(&path), &self.config) {
            Ok(orders) => orders,
            Err(error) => {
                audit(peer, "load_state", "failed", &error.to_string());
                self.answer(
                    token,
                    failure(format!("cannot load the state from {path}: {error}")),
                );
                return;
            }
        };
        // Replaying a saved state onto the current one: only what is new or
        // different is sent (a saved state usually repeats what is running).
        let mut target = self.state.clone();
        let mut replay = Vec::new();
        for order in orders {
            let mut probe = target.clone();
            match probe.dispatch(&order) {
                Ok(DispatchOutcome::Applied) => {
                    target = probe;
                    replay.push(order);
                }
                Ok(DispatchOutcome::NotAStateChange) => {}
                // Already present (e.g. the same cluster): skipped, not an error.
                Err(error) => tracing::debug!(%error, "load_state: order skipped"),
            }
        }
        self.begin_change(Some(token), peer, "load_state", replay, None, now);
    }

    /// reload_configuration: the file's state replaces the running one; the
    /// difference is applied as orders.
    /// The orders that turn the committed state into the one `path` (empty:
    /// the master's own file) describes.
    fn reload_orders(&self, path: String) -> Result<(PathBuf, Vec<Request>), String> {
        let path = if path.is_empty() {
            self.config_path.clone()
        } else {
            PathBuf::from(path)
        };
        let new_config = Config::load_from_path(&path)
            .map_err(|error| format!("cannot reload {}: {error}", path.display()))?;
        let mut target = ConfigState::new();
        for order in new_config.generate_orders() {
            target
                .dispatch(&order)
                .map_err(|error| format!("cannot reload {}: {error}", path.display()))?;
        }
        let diff = self.state.diff(&target);
        Ok((path, diff))
    }

    /// reload_configuration: the file's state replaces the running one
    /// (objects added live and absent from the file are removed); the
    /// difference is applied as orders and the answer lists them.
    pub(super) fn reload_configuration(
        &mut self,
        token: Option<Token>,
        peer: Peer,
        path: String,
        now: Instant,
    ) {
        let diff = match self.reload_orders(path) {
            Ok((_, diff)) => diff,
            Err(message) => {
                audit(peer, "reload_configuration", "failed", &message);
                match token {
                    Some(token) => self.answer(token, failure(message)),
                    None => tracing::error!(message),
                }
                return;
            }
        };
        let summary = describe::describe_all(&diff, &self.state);
        if !diff.is_empty() {
            tracing::info!(
                orders = diff.len(),
                changes = summary,
                "reloading the configuration"
            );
        }
        self.begin_change(
            token,
            peer,
            "reload_configuration",
            diff,
            Some(summary),
            now,
        );
    }

    /// preview_reload (`sozu reload --dry-run`): what reload_configuration
    /// would send, checked like it, and nothing changed.
    fn preview_reload(&mut self, token: Token, path: String) {
        let answer = match self.reload_orders(path) {
            Err(message) => failure(message),
            Ok((path, diff)) => match self.check_orders("reload_configuration", &diff) {
                Err(message) => failure(message),
                Ok(_) if diff.is_empty() => ok(format!("reload of {}: no change", path.display())),
                Ok(_) => ok(format!(
                    "reload of {} would send {} order(s); nothing was changed:\n{}",
                    path.display(),
                    diff.len(),
                    describe::describe_all(&diff, &self.state)
                )),
            },
        };
        self.answer(token, answer);
    }

    pub(super) fn reload_from_signal(&mut self, now: Instant) {
        if matches!(self.phase, Phase::Stopping { .. }) {
            return;
        }
        if self.change_in_flight {
            // One queued SIGHUP reload is enough: it reads the file when it runs.
            if !self
                .deferred
                .iter()
                .any(|d| matches!(d, Deferred::SignalReload))
            {
                self.defer(Deferred::SignalReload);
            }
            return;
        }
        let me = Peer {
            uid: self.owner_uid,
            gid: nix::unistd::getegid().as_raw(),
            pid: std::process::id() as i32,
        };
        self.reload_configuration(None, me, String::new(), now);
    }

    /// Writes the state to `saved_state` after each change when
    /// `automatic_state_save` is on.
    fn autosave(&mut self) {
        if !self.config.automatic_state_save {
            return;
        }
        if let Some(path) = self.config.saved_state.clone() {
            if let Err(error) = state_file::save(&self.state, &path) {
                tracing::error!(path = %path.display(), %error, "automatic state save failed");
            }
        }
    }

    /// Turns a finished client order into its one final answer.
    pub(super) fn finish_client_order(
        &mut self,
        order: ClientOrder,
        gathered: Gathered<()>,
        _now: Instant,
    ) {
        let ClientOrder { client, kind, .. } = order;
        let response = match kind {
            ClientOrderKind::Metrics => {
                let aggregated = metrics::aggregate(&gathered.contents);
                let mut message = format!("metrics of {} worker(s)", gathered.contents.len());
                if !gathered.is_ok() {
                    message.push_str(&format!(" (missing: {})", gathered.failure_summary()));
                }
                with_content(message, ContentType::Metrics(aggregated))
            }
            ClientOrderKind::Forward { name, peer } => {
                if gathered.is_ok() {
                    let done = format!("{} worker(s)", gathered.succeeded.len());
                    audit(peer, name, "ok", &done);
                    ok(format!("{name}: done on {done}"))
                } else {
                    let summary = gathered.failure_summary();
                    audit(peer, name, "failed", &summary);
                    failure(format!("{name} failed: {summary}"))
                }
            }
            ClientOrderKind::CheckState => check_state_answer(&self.state, &gathered),
            ClientOrderKind::Certificates => {
                let map: std::collections::BTreeMap<String, ResponseContent> = gathered
                    .contents
                    .iter()
                    .map(|(worker, content)| (worker.to_string(), content.clone()))
                    .collect();
                let mut message = format!("certificates of {} worker(s)", map.len());
                if !gathered.is_ok() {
                    message.push_str(&format!(" (missing: {})", gathered.failure_summary()));
                }
                with_content(
                    message,
                    ContentType::WorkerResponses(sozu_command_lib::command::WorkerResponses {
                        map: map.into_iter().collect(),
                    }),
                )
            }
        };
        self.answer(client, response);
    }
}

/// The answer to `check_state`: OK when every worker that answered holds
/// exactly the master's state, FAILURE naming each worker that differs (with
/// the orders that would turn the master's state into that worker's) or did
/// not answer.
fn check_state_answer(state: &ConfigState, gathered: &Gathered<()>) -> Response {
    let mut problems = Vec::new();
    for (worker, failure) in &gathered.failures {
        problems.push(format!("worker {worker}: {failure}"));
    }
    for (worker, content) in &gathered.contents {
        let Some(ContentType::WorkerState(worker_state)) = &content.content_type else {
            problems.push(format!("worker {worker}: answered without its state"));
            continue;
        };
        match ConfigState::from_requests(&worker_state.orders) {
            Err(error) => problems.push(format!(
                "worker {worker}: its state does not replay: {error}"
            )),
            Ok(theirs) => {
                let to_worker = state.diff(&theirs);
                if !to_worker.is_empty() {
                    problems.push(format!(
                        "worker {worker} differs from the master by {} order(s): {}",
                        to_worker.len(),
                        describe_orders(&to_worker)
                    ));
                }
            }
        }
    }
    for worker in &gathered.succeeded {
        if !gathered.contents.contains_key(worker) {
            problems.push(format!("worker {worker}: answered without its state"));
        }
    }
    if problems.is_empty() {
        ok(format!(
            "the state of {} worker(s) matches the master's ({} order(s))",
            gathered.contents.len(),
            state.generate_requests().len()
        ))
    } else {
        failure(format!("state mismatch: {}", problems.join("; ")))
    }
}

/// Up to five orders as JSON, for a mismatch message.
fn describe_orders(orders: &[Request]) -> String {
    const SHOWN: usize = 5;
    let mut parts: Vec<String> = orders
        .iter()
        .take(SHOWN)
        .map(|order| serde_json::to_string(order).unwrap_or_else(|e| format!("<{e}>")))
        .collect();
    if orders.len() > SHOWN {
        parts.push(format!("and {} more", orders.len() - SHOWN));
    }
    parts.join(", ")
}

/// The audit line of a mutating order: who, what, and how it ended.
pub(super) fn audit(peer: Peer, order: &str, result: &str, detail: &str) {
    tracing::info!(
        target: AUDIT_TARGET,
        uid = peer.uid,
        pid = peer.pid,
        order,
        result,
        detail,
        "command order"
    );
}

/// A manifest's entries, for messages.
#[allow(dead_code)]
pub(super) fn describe_manifest(manifest: &ListenSocketManifest) -> String {
    format!("{} listening socket(s)", manifest.entries.len())
}

#[cfg(test)]
mod check_state_tests {
    use std::collections::BTreeMap;

    use sozu_command_lib::command::{Cluster, WorkerState};

    use super::*;
    use crate::master::gather::WorkerFailure;

    fn add_cluster(id: &str) -> Request {
        Request {
            request_type: Some(RequestType::AddCluster(Cluster {
                cluster_id: id.to_owned(),
                ..Default::default()
            })),
        }
    }

    fn gathered(states: Vec<(u32, Vec<Request>)>) -> Gathered<()> {
        let mut contents = BTreeMap::new();
        let mut succeeded = Vec::new();
        for (worker, orders) in states {
            succeeded.push(worker);
            contents.insert(
                worker,
                ResponseContent {
                    content_type: Some(ContentType::WorkerState(WorkerState { orders })),
                },
            );
        }
        Gathered {
            id: 1,
            purpose: (),
            succeeded,
            failures: BTreeMap::new(),
            contents,
            timed_out: Vec::new(),
        }
    }

    #[test]
    fn equal_states_are_ok_and_a_differing_worker_is_named_with_the_difference() {
        let mut master = ConfigState::new();
        master.dispatch(&add_cluster("dns")).unwrap();

        let same = check_state_answer(
            &master,
            &gathered(vec![
                (0, vec![add_cluster("dns")]),
                (1, vec![add_cluster("dns")]),
            ]),
        );
        assert_eq!(same.status(), ResponseStatus::Ok, "{}", same.message);
        assert!(same.message.contains("2 worker(s)"), "{}", same.message);

        let differs = check_state_answer(
            &master,
            &gathered(vec![
                (0, vec![add_cluster("dns")]),
                (1, vec![add_cluster("dns"), add_cluster("extra")]),
            ]),
        );
        assert_eq!(differs.status(), ResponseStatus::Failure);
        assert!(
            differs.message.contains("worker 1 differs"),
            "{}",
            differs.message
        );
        assert!(differs.message.contains("extra"), "{}", differs.message);
        assert!(!differs.message.contains("worker 0"), "{}", differs.message);

        let missing = check_state_answer(&master, &gathered(vec![(0, Vec::new())]));
        assert_eq!(missing.status(), ResponseStatus::Failure);
        assert!(
            missing.message.contains("remove_cluster"),
            "{}",
            missing.message
        );
    }

    #[test]
    fn a_worker_that_did_not_answer_is_a_mismatch() {
        let master = ConfigState::new();
        let mut answers = gathered(vec![(0, Vec::new())]);
        answers.failures.insert(1, WorkerFailure::Gone);
        let answer = check_state_answer(&master, &answers);
        assert_eq!(answer.status(), ResponseStatus::Failure);
        assert!(answer.message.contains("worker 1"), "{}", answer.message);
    }
}
