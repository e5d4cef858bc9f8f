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
use sozu_command_lib::command::request::RequestType;
use sozu_command_lib::command::response_content::ContentType;
use sozu_command_lib::command::{
    ListenSocketManifest, Request, Response, ResponseContent, ResponseStatus, WorkerInfos,
};
use sozu_command_lib::config::Config;
use sozu_command_lib::state::{order_name, ConfigState, DispatchOutcome};

use super::clients::response;
use super::command_socket::Peer;
use super::gather::Gathered;
use super::{metrics, state_file, Master, Phase, Purpose};
use crate::logging::AUDIT_TARGET;

/// A client order waiting for worker answers.
#[derive(Debug)]
pub(crate) struct ClientOrder {
    pub client: Token,
    pub name: &'static str,
    pub peer: Peer,
    pub kind: ClientOrderKind,
}

#[derive(Debug)]
pub(crate) enum ClientOrderKind {
    /// One state change (or a batch: load_state, reload) applied by the
    /// master; `count` orders were sent to each worker.
    StateChange { count: usize },
    /// query_metrics: contents are aggregated.
    Metrics,
}

fn ok(message: impl Into<String>) -> Response {
    response(ResponseStatus::Ok, message)
}

fn failure(message: impl Into<String>) -> Response {
    response(ResponseStatus::Failure, message)
}

fn with_content(message: impl Into<String>, content: ContentType) -> Response {
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
        match request_type {
            RequestType::Status(_) | RequestType::ListWorkers(_) => {
                let infos = WorkerInfos {
                    vec: self.workers.values().map(|w| w.info()).collect(),
                };
                self.answer(
                    token,
                    with_content(
                        format!("{} worker(s)", infos.vec.len()),
                        ContentType::Workers(infos),
                    ),
                );
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
                    name,
                    peer,
                    kind: ClientOrderKind::Metrics,
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
            RequestType::UpgradeWorker(id) if !stopping => {
                audit(peer, name, "accepted", &format!("upgrade worker {id}"));
                super::upgrade::begin_worker(self, token, id, now);
            }
            RequestType::ReturnListenSockets(_) | RequestType::AdoptListenSockets(_) => {
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

    /// A state-changing order: validate, apply, fan out.
    fn state_change(
        &mut self,
        token: Token,
        peer: Peer,
        request: Request,
        name: &'static str,
        now: Instant,
    ) {
        // Binding is part of accepting (listen_sockets.rs): a listener's
        // sockets are bound before the state changes.
        let bound = match self.listen_sockets.bind_for_order(&request) {
            Ok(bound) => bound,
            Err(error) => {
                audit(peer, name, "refused", &error.to_string());
                self.answer(token, failure(format!("{name} refused: {error}")));
                return;
            }
        };
        let dispatched = self.state.dispatch(&request);
        if !matches!(dispatched, Ok(DispatchOutcome::Applied)) {
            self.listen_sockets.release(&bound);
        }
        match dispatched {
            Err(error) => {
                audit(peer, name, "refused", &error.to_string());
                self.answer(token, failure(format!("{name} refused: {error}")));
            }
            Ok(DispatchOutcome::NotAStateChange) => {
                self.answer(
                    token,
                    failure(format!("{name} is not served by this master")),
                );
            }
            Ok(DispatchOutcome::Applied) => {
                let order = ClientOrder {
                    client: token,
                    name,
                    peer,
                    kind: ClientOrderKind::StateChange { count: 1 },
                };
                self.pass_listen_sockets(&bound, now);
                self.fan_out(
                    Purpose::Client(order),
                    vec![request],
                    Some(self.config.worker_timeout),
                    now,
                );
                self.listen_sockets.release_absent(&self.state);
                self.autosave();
            }
        }
    }

    /// Applies `orders` to the master's state (stopping at the first
    /// refusal) and fans the applied ones out as one order.
    fn apply_batch(
        &mut self,
        token: Option<Token>,
        peer: Peer,
        name: &'static str,
        orders: Vec<Request>,
        now: Instant,
    ) {
        let mut candidate = self.state.clone();
        for (index, order) in orders.iter().enumerate() {
            if let Err(error) = candidate.dispatch(order) {
                let message = format!(
                    "{name} refused at order {} of {}: {error}; nothing was applied",
                    index + 1,
                    orders.len()
                );
                audit(peer, name, "refused", &message);
                if let Some(token) = token {
                    self.answer(token, failure(message));
                } else {
                    tracing::error!(message);
                }
                return;
            }
        }
        let bound = match self.listen_sockets.bind_missing(&candidate) {
            Ok(bound) => bound,
            Err(error) => {
                let message = format!("{name} refused: {error}; nothing was applied");
                audit(peer, name, "refused", &message);
                if let Some(token) = token {
                    self.answer(token, failure(message));
                } else {
                    tracing::error!(message);
                }
                return;
            }
        };
        self.state = candidate;
        self.pass_listen_sockets(&bound, now);
        self.listen_sockets.release_absent(&self.state);
        let count = orders.len();
        if count == 0 {
            audit(peer, name, "ok", "no change");
            if let Some(token) = token {
                self.answer(token, ok(format!("{name}: no change")));
            }
            return;
        }
        self.autosave();
        match token {
            Some(client) => {
                if count > 1 {
                    self.answer(
                        client,
                        response(
                            ResponseStatus::Processing,
                            format!("{name}: sending {count} orders to the workers"),
                        ),
                    );
                }
                let order = ClientOrder {
                    client,
                    name,
                    peer,
                    kind: ClientOrderKind::StateChange { count },
                };
                self.fan_out(
                    Purpose::Client(order),
                    orders,
                    Some(self.config.worker_timeout),
                    now,
                );
            }
            None => {
                self.fan_out(
                    Purpose::Internal { name },
                    orders,
                    Some(self.config.worker_timeout),
                    now,
                );
                audit(peer, name, "ok", &format!("{count} orders"));
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
        self.apply_batch(Some(token), peer, "load_state", replay, now);
    }

    /// reload_configuration: the file's state replaces the running one; the
    /// difference is applied as orders.
    pub(super) fn reload_configuration(
        &mut self,
        token: Option<Token>,
        peer: Peer,
        path: String,
        now: Instant,
    ) {
        let path = if path.is_empty() {
            self.config_path.clone()
        } else {
            PathBuf::from(path)
        };
        let new_config = match Config::load_from_path(&path) {
            Ok(config) => config,
            Err(error) => {
                let message = format!("cannot reload {}: {error}", path.display());
                audit(peer, "reload_configuration", "failed", &message);
                match token {
                    Some(token) => self.answer(token, failure(message)),
                    None => tracing::error!(message),
                }
                return;
            }
        };
        let mut target = ConfigState::new();
        for order in new_config.generate_orders() {
            if let Err(error) = target.dispatch(&order) {
                let message = format!("cannot reload {}: {error}", path.display());
                match token {
                    Some(token) => self.answer(token, failure(message)),
                    None => tracing::error!(message),
                }
                return;
            }
        }
        let diff = self.state.diff(&target);
        self.apply_batch(token, peer, "reload_configuration", diff, now);
    }

    pub(super) fn reload_from_signal(&mut self, now: Instant) {
        if matches!(self.phase, Phase::Stopping { .. }) {
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
        let ClientOrder {
            client,
            name,
            peer,
            kind,
        } = order;
        let response = match kind {
            ClientOrderKind::StateChange { count } => {
                if gathered.is_ok() {
                    audit(
                        peer,
                        name,
                        "ok",
                        &format!("{count} order(s), {} worker(s)", gathered.succeeded.len()),
                    );
                    ok(format!(
                        "{name}: done on {} worker(s)",
                        gathered.succeeded.len()
                    ))
                } else {
                    let summary = gathered.failure_summary();
                    audit(peer, name, "failed", &summary);
                    failure(format!("{name} failed: {summary}"))
                }
            }
            ClientOrderKind::Metrics => {
                let aggregated = metrics::aggregate(&gathered.contents);
                let mut message = format!("metrics of {} worker(s)", gathered.contents.len());
                if !gathered.is_ok() {
                    message.push_str(&format!(" (missing: {})", gathered.failure_summary()));
                }
                with_content(message, ContentType::Metrics(aggregated))
            }
        };
        self.answer(client, response);
    }
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
