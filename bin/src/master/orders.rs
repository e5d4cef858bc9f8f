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
    /// check_state: each worker's state is compared with the master's.
    CheckState,
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
            RequestType::CheckState(_) => {
                let order = ClientOrder {
                    client: token,
                    name,
                    peer,
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
        match self.state.dispatch(&request) {
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
                self.fan_out(
                    Purpose::Client(order),
                    vec![request],
                    Some(self.config.worker_timeout),
                    now,
                );
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
        self.state = candidate;
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
            ClientOrderKind::CheckState => check_state_answer(&self.state, &gathered),
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
