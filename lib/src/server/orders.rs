//! Orders from the master: dispatch to the worker's `ConfigState`, then
//! apply to the sockets; process-level orders (stop, status, metrics,
//! socket passing) are handled here directly.
//!
//! Every order gets exactly one answer echoing its id, except soft-stop,
//! answered when the last flow has ended. A state order the state refuses
//! is answered FAILURE with the state's message and applies nothing; one the
//! state accepts but this host cannot carry out (a bind error) is rolled
//! back in the state and answered FAILURE naming the cause.
//!
//! Sōzu's `Logging` changes the worker's log filter through the hook the
//! process gave ([`LogLevelHook`]); `configure_metrics` acts on the
//! worker's metrics registry. HTTPS listener, frontend and certificate
//! orders go to the state and to the TLS listeners (`crate::tls`), which keep
//! the certificate stores live; `query_certificates_from_workers` answers
//! from the worker's state. Sōzu orders a worker does not serve
//! (health-check and metric-detail orders…) are answered FAILURE by name.

use std::collections::BTreeMap;
use std::os::fd::BorrowedFd;
use std::time::Instant;

use sozu_command_lib::command::{
    request::RequestType, response_content::ContentType, AggregatedMetrics, ListenSocketEntry,
    ListenSocketManifest, ListenerType, MetricsConfiguration, Request, ResponseContent,
    ResponseStatus, WorkerRequest, WorkerState,
};
use sozu_command_lib::proto::convert::wire_address;
use sozu_command_lib::scm::DEFAULT_MAX_MANIFEST_SIZE;
use sozu_command_lib::state::{order_name, DispatchOutcome};

use super::{io_context, probe_context, Server, ServerExit};
use crate::health::prober::ProbeContext;
use crate::udp::{IoContext, UdpError};

/// Replaces the process's log filter with the directives given (`debug`,
/// `info,sozu_lib=trace`); an error says why the directives were refused.
/// The process that owns the logging (the `sozu` binary) provides it.
#[derive(Clone)]
pub struct LogLevelHook(std::sync::Arc<SetLogLevel>);

/// The function behind a [`LogLevelHook`].
type SetLogLevel = dyn Fn(&str) -> Result<(), String> + Send + Sync;

impl LogLevelHook {
    /// Wraps the function that changes the log filter.
    pub fn new(f: impl Fn(&str) -> Result<(), String> + Send + Sync + 'static) -> Self {
        LogLevelHook(std::sync::Arc::new(f))
    }

    /// Applies `directives`.
    pub fn set(&self, directives: &str) -> Result<(), String> {
        (self.0)(directives)
    }
}

impl std::fmt::Debug for LogLevelHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogLevelHook")
    }
}

impl Server {
    /// Handles one order; `Some` when the worker must stop now.
    pub(super) fn on_request(
        &mut self,
        now: Instant,
        request: WorkerRequest,
    ) -> Option<ServerExit> {
        let WorkerRequest { id, content } = request;
        let Some(request_type) = content.request_type.as_ref() else {
            self.answer(
                &id,
                ResponseStatus::Failure,
                "the request carries no order",
                None,
            );
            return None;
        };
        tracing::debug!(
            worker = self.worker_id,
            id,
            order = order_name(request_type),
            "order"
        );
        match request_type {
            RequestType::Status(_) => {
                self.answer(&id, ResponseStatus::Ok, "running", None);
            }
            RequestType::SoftStop(_) => {
                let mut ctx = io_context!(self);
                self.udp.soft_stop(now, &mut ctx);
                self.streams_soft_stop(now);
                tracing::info!(
                    worker = self.worker_id,
                    flows = self.udp.active_flows(),
                    "soft-stop: draining"
                );
                // Answered by the loop once every flow has ended.
                self.soft_stop = Some(id);
            }
            RequestType::HardStop(_) => {
                let mut ctx = io_context!(self);
                self.udp.hard_stop(now, &mut ctx);
                self.prober.close_all(&mut probe_context!(self));
                self.streams_hard_stop(now);
                self.answer(
                    &id,
                    ResponseStatus::Ok,
                    "hard-stop: every flow closed",
                    None,
                );
                if let Some(soft) = self.soft_stop.take() {
                    self.answer(
                        &soft,
                        ResponseStatus::Ok,
                        "soft-stop overtaken by hard-stop",
                        None,
                    );
                }
                self.final_flush();
                return Some(ServerExit::HardStopped);
            }
            RequestType::QueryMetrics(options) => {
                let worker = self.metrics.worker_metrics(options);
                let mut workers = BTreeMap::new();
                workers.insert(self.worker_id.to_string(), worker);
                let content = ResponseContent {
                    content_type: Some(ContentType::Metrics(AggregatedMetrics {
                        main: BTreeMap::new(),
                        workers,
                        clusters: BTreeMap::new(),
                        proxying: BTreeMap::new(),
                    })),
                };
                self.answer(&id, ResponseStatus::Ok, "", Some(content));
            }
            RequestType::ListListeners(_) => {
                let content = ResponseContent {
                    content_type: Some(ContentType::ListenersList(self.state.listeners_list())),
                };
                self.answer(&id, ResponseStatus::Ok, "", Some(content));
            }
            RequestType::ListClusters(_) => {
                let content = ResponseContent {
                    content_type: Some(ContentType::Clusters(self.state.clusters())),
                };
                self.answer(&id, ResponseStatus::Ok, "", Some(content));
            }
            RequestType::ListFrontends(filters) => {
                let content = ResponseContent {
                    content_type: Some(ContentType::FrontendList(self.state.frontends(filters))),
                };
                self.answer(&id, ResponseStatus::Ok, "", Some(content));
            }
            RequestType::CheckState(_) => {
                let content = ResponseContent {
                    content_type: Some(ContentType::WorkerState(WorkerState {
                        orders: self.state.generate_requests(),
                    })),
                };
                self.answer(&id, ResponseStatus::Ok, "", Some(content));
            }
            RequestType::ReturnListenSockets(_) => self.return_listen_sockets(&id),
            RequestType::AdoptListenSockets(order) => {
                let manifest = order.manifest.clone();
                let flows_follow = order.flows_follow.unwrap_or(false);
                self.adopt_listen_sockets(&id, &manifest, flows_follow);
            }
            RequestType::ReturnFlows(_) => self.return_flows(now, &id),
            RequestType::AdoptFlows(_) => self.adopt_flows(now, &id),
            RequestType::Logging(directives) => {
                let result = match &self.log_level {
                    Some(hook) => hook.set(directives),
                    None => Err("this worker cannot change its log level".to_owned()),
                };
                match result {
                    Ok(()) => {
                        tracing::info!(worker = self.worker_id, level = %directives, "log level changed");
                        self.answer(&id, ResponseStatus::Ok, "log level changed", None);
                    }
                    Err(reason) => {
                        let message = format!("logging {directives:?} refused: {reason}");
                        self.answer(&id, ResponseStatus::Failure, &message, None);
                    }
                }
            }
            RequestType::ConfigureMetrics(value) => match MetricsConfiguration::try_from(*value) {
                Ok(configuration) => {
                    self.metrics.configure(configuration);
                    tracing::info!(
                        worker = self.worker_id,
                        configuration = configuration.as_str_name(),
                        "metrics configured"
                    );
                    self.answer(&id, ResponseStatus::Ok, configuration.as_str_name(), None);
                }
                Err(_) => {
                    let message = format!(
                            "configure_metrics: {value} is not a MetricsConfiguration (0 ENABLED, 1 DISABLED, 2 CLEAR)"
                        );
                    self.answer(&id, ResponseStatus::Failure, &message, None);
                }
            },
            RequestType::QueryCertificatesFromWorkers(filters) => {
                let content = ResponseContent {
                    content_type: Some(ContentType::CertificatesByAddress(
                        self.state.certificates_by_address(filters),
                    )),
                };
                self.answer(&id, ResponseStatus::Ok, "", Some(content));
            }
            sozu_command_lib::unserved_orders!() => {
                let message = format!(
                    "{} is not served by a worker of this proxy",
                    order_name(request_type)
                );
                self.answer(&id, ResponseStatus::Failure, &message, None);
            }
            RequestType::SaveState(_)
            | RequestType::LoadState(_)
            | RequestType::ListWorkers(_)
            | RequestType::UpgradeMain(_)
            | RequestType::UpgradeWorker(_)
            | RequestType::ReloadConfiguration(_)
            | RequestType::PreviewReload(_)
            | RequestType::QueryClusterById(_) => {
                let message = format!(
                    "{} is answered by the master, not by a worker",
                    order_name(request_type)
                );
                self.answer(&id, ResponseStatus::Failure, &message, None);
            }
            _ => self.on_state_order(now, &id, &content),
        }
        None
    }

    fn on_state_order(&mut self, now: Instant, id: &str, request: &Request) {
        // Only the entries this order can change are saved (not a clone of
        // the whole state), so replaying n orders to a new worker costs
        // O(n), not O(n²) (`ConfigState::undo_point`).
        let Some(order) = request.request_type.as_ref() else {
            self.answer(
                id,
                ResponseStatus::Failure,
                "the request carries no order",
                None,
            );
            return;
        };
        let before = self.state.undo_point(order);
        match self.state.dispatch(request) {
            Err(error) => {
                if let Some(order) = request.request_type.as_ref() {
                    self.forget_unused_socket(order, false);
                }
                self.answer(id, ResponseStatus::Failure, &error.to_string(), None);
                return;
            }
            Ok(DispatchOutcome::NotAStateChange) => {
                // Every non-state order is matched in `on_request`.
                self.answer(id, ResponseStatus::Ok, "", None);
                return;
            }
            Ok(DispatchOutcome::Applied) => {}
        }
        let Some(request_type) = request.request_type.as_ref() else {
            return;
        };
        // UDP first (it also configures the shared backends), then the
        // TCP / HTTP proxies (`streams.rs`).
        // TLS first: it only loads and checks until it succeeds, so a
        // refusal there leaves nothing to undo; a later refusal puts its
        // listener entry back (no stale TLS side for a listener that was
        // not added).
        let tls_before = self.tls.before(request_type);
        let applied: Result<(), Box<dyn std::error::Error>> =
            match self.tls.apply(request_type, &self.state) {
                Err(error) => Err(error.into()),
                Ok(()) => match self.apply(now, request_type) {
                    Ok(()) => {
                        if matches!(
                            request_type,
                            RequestType::AddCluster(_)
                                | RequestType::RemoveCluster(_)
                                | RequestType::AddBackend(_)
                                | RequestType::RemoveBackend(_)
                        ) {
                            // The checker changed: apply what it decided.
                            self.prober.apply_events(&mut probe_context!(self));
                        }
                        let streams = self.apply_stream_order(now, request_type);
                        // All-or-nothing: nothing undoes the UDP / shared
                        // part, so no order that has one may be refused by
                        // the stream proxies (their part of cluster and
                        // backend orders only records them).
                        debug_assert!(
                            streams.is_ok() || !has_udp_or_shared_part(request_type),
                            "the stream proxies refused {} after its UDP part was applied",
                            order_name(request_type)
                        );
                        streams.map_err(Into::into)
                    }
                    Err(error) => Err(error),
                },
            };
        self.forget_unused_socket(request_type, applied.is_ok());
        match applied {
            Ok(()) => self.answer(id, ResponseStatus::Ok, "", None),
            Err(error) => {
                self.state.undo(before);
                if let Some(undo) = tls_before {
                    self.tls.undo(undo);
                }
                let message = error_chain(&*error);
                tracing::warn!(worker = self.worker_id, id, error = %message, "order failed");
                self.answer(id, ResponseStatus::Failure, &message, None);
            }
        }
    }

    /// Carries out an order the state accepted: cluster and backend orders
    /// (`clusters.rs`), then UDP listener and frontend orders.
    fn apply(
        &mut self,
        now: Instant,
        order: &RequestType,
    ) -> Result<(), Box<dyn std::error::Error>> {
        match order {
            RequestType::AddCluster(cluster) => return Ok(self.set_cluster(now, cluster)?),
            RequestType::RemoveCluster(cluster_id) => {
                self.remove_cluster(now, cluster_id);
                return Ok(());
            }
            RequestType::AddBackend(order) => return Ok(self.add_backend(now, order)?),
            RequestType::RemoveBackend(order) => return Ok(self.remove_backend(now, order)?),
            _ => {}
        }
        Ok(self.apply_udp(now, order)?)
    }

    /// Carries out a UDP listener or frontend order the state accepted.
    fn apply_udp(&mut self, now: Instant, order: &RequestType) -> Result<(), UdpError> {
        let mut ctx = io_context!(self);
        let udp = &mut self.udp;
        match order {
            RequestType::AddUdpListener(config) => udp.add_listener(now, config, &mut ctx),
            RequestType::UpdateUdpListener(update) => udp.update_listener(update, &mut ctx),
            RequestType::RemoveListener(order) if order.proxy() == ListenerType::Udp => {
                udp.remove_listener(now, wire_address("address", &order.address)?, &mut ctx)
            }
            RequestType::ActivateListener(order) if order.proxy() == ListenerType::Udp => {
                udp.activate(wire_address("address", &order.address)?, &mut ctx)
            }
            RequestType::DeactivateListener(order) if order.proxy() == ListenerType::Udp => {
                udp.deactivate(now, wire_address("address", &order.address)?, &mut ctx)
            }
            RequestType::AddUdpFrontend(frontend) => udp.set_frontend(now, frontend, true),
            RequestType::RemoveUdpFrontend(frontend) => udp.set_frontend(now, frontend, false),
            // TCP and HTTP orders: `streams.rs`.
            _ => Ok(()),
        }
    }

    /// A socket the master passed for a listener that is now removed, or
    /// whose add failed, is closed here, or this worker would keep the port
    /// bound after the master released it.
    fn forget_unused_socket(&mut self, order: &RequestType, applied: bool) {
        let (proxy, address) = match order {
            RequestType::RemoveListener(o) => (o.proxy(), &o.address),
            RequestType::AddUdpListener(l) if !applied => (ListenerType::Udp, &l.address),
            RequestType::AddTcpListener(l) if !applied => (ListenerType::Tcp, &l.address),
            RequestType::AddHttpListener(l) if !applied => (ListenerType::Http, &l.address),
            RequestType::AddHttpsListener(l) if !applied => (ListenerType::Https, &l.address),
            _ => return,
        };
        let Ok(address) = std::net::SocketAddr::try_from(address) else {
            return;
        };
        if proxy == ListenerType::Udp {
            self.udp.forget_adopted(address);
        } else {
            self.streams.forget_adopted(proxy, address);
        }
    }

    fn return_listen_sockets(&mut self, id: &str) {
        let Some(scm) = self.scm.as_ref() else {
            self.answer(
                id,
                ResponseStatus::Failure,
                "this worker has no fd-passing socket",
                None,
            );
            return;
        };
        let mut sockets: Vec<_> = self
            .udp
            .listen_sockets()
            .into_iter()
            .map(|(address, fd)| (ListenerType::Udp, address, fd))
            .collect();
        sockets.extend(self.streams.listen_sockets());
        let manifest = ListenSocketManifest {
            entries: sockets
                .iter()
                .map(|(proxy, address, _)| ListenSocketEntry {
                    address: (*address).into(),
                    proxy: *proxy as i32,
                })
                .collect(),
        };
        let fds: Vec<BorrowedFd<'_>> = sockets.iter().map(|(_, _, fd)| *fd).collect();
        // The answer first (the master reads it, then the fds), then the
        // sequence on the fd-passing socket.
        let response = sozu_command_lib::command::WorkerResponse {
            id: id.to_owned(),
            status: ResponseStatus::Ok as i32,
            message: format!("{} listening sockets", fds.len()),
            content: Some(ResponseContent {
                content_type: Some(ContentType::ListenSockets(manifest.clone())),
            }),
        };
        let queued = self.channel.queue_message(&response);
        let sent = scm.send_listen_sockets(&manifest, &fds);
        drop(fds);
        drop(sockets);
        if let Err(error) = queued {
            tracing::error!(%error, "cannot queue the listen-sockets answer");
        }
        match sent {
            Ok(()) => self.udp.mark_sockets_returned(),
            Err(error) => tracing::error!(%error, "passing the listening sockets failed"),
        }
    }

    fn adopt_listen_sockets(
        &mut self,
        id: &str,
        manifest: &ListenSocketManifest,
        flows_follow: bool,
    ) {
        let Some(scm) = self.scm.as_ref() else {
            self.answer(
                id,
                ResponseStatus::Failure,
                "this worker has no fd-passing socket",
                None,
            );
            return;
        };
        let received = match scm.receive_listen_sockets(DEFAULT_MAX_MANIFEST_SIZE) {
            Ok(sockets) => sockets,
            Err(error) => {
                self.answer(id, ResponseStatus::Failure, &error_chain(&error), None);
                return;
            }
        };
        let entries: Vec<ListenSocketEntry> = received.iter().map(|s| s.entry()).collect();
        if entries != manifest.entries {
            // Dropping `received` closes every fd.
            self.answer(
                id,
                ResponseStatus::Failure,
                "the sockets received differ from the order's manifest",
                None,
            );
            return;
        }
        let mut udp = Vec::new();
        let mut streams = 0;
        for socket in received {
            if socket.proxy == ListenerType::Udp {
                udp.push((socket.address, socket.fd));
            } else if self.streams.adopt(socket.proxy, socket.address, socket.fd) {
                streams += 1;
            }
        }
        let count = udp.len();
        self.udp.adopt(udp);
        let mut message =
            format!("{count} UDP sockets adopted, {streams} TCP/HTTP sockets adopted");
        if flows_follow {
            message.push_str("; ");
            message.push_str(&self.receive_flows());
        }
        self.answer(id, ResponseStatus::Ok, &message, None);
    }
}

/// Whether `order` changes the shared clusters and backends or the UDP
/// shell ([`Server::apply`]): such an order must be refused, if at all,
/// before any of it is applied.
fn has_udp_or_shared_part(order: &RequestType) -> bool {
    match order {
        RequestType::AddCluster(_)
        | RequestType::RemoveCluster(_)
        | RequestType::AddBackend(_)
        | RequestType::RemoveBackend(_)
        | RequestType::AddUdpListener(_)
        | RequestType::UpdateUdpListener(_)
        | RequestType::AddUdpFrontend(_)
        | RequestType::RemoveUdpFrontend(_) => true,
        RequestType::RemoveListener(o) => o.proxy() == ListenerType::Udp,
        RequestType::ActivateListener(o) => o.proxy() == ListenerType::Udp,
        RequestType::DeactivateListener(o) => o.proxy() == ListenerType::Udp,
        _ => false,
    }
}

/// An error and its sources, `: `-separated, for an answer's message.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}
