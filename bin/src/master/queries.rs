//! The Sōzu 2.1 orders beyond the core set (doc/protocol.md §3.1):
//! queries the master answers from its state or its own counters, `Logging`
//! and `configure_metrics` (applied here and fanned out to every worker), and
//! the certificate queries (from the master's state, or gathered from every
//! worker's), and a FAILURE naming the order for what this proxy does not
//! serve (HTTP health checks, events, per-IP limits, metric detail). See doc/protocol.md for the list and the reasons.
//!
//! [`Master::serve_sozu_order`] is called for every decoded order; it counts
//! it (`count_requests`) and returns whether it answered it. It never
//! changes the proxy state (`ConfigState`).

use std::collections::BTreeMap;
use std::time::Instant;

use mio::Token;
use sozu_command_lib::command::request::RequestType;
use sozu_command_lib::command::response_content::ContentType;
use sozu_command_lib::command::{MetricsConfiguration, Request, RequestCounts};

use super::command_socket::Peer;
use super::orders::{audit, failure, with_content, ClientOrder, ClientOrderKind};
use super::{Master, Purpose};

/// What the master keeps for these orders.
#[derive(Debug, Default)]
pub(crate) struct SozuExtras {
    /// Orders received on the command socket since the master started, by
    /// order name (`count_requests`).
    request_counts: BTreeMap<&'static str, i32>,
    /// The last `configure_metrics ENABLED/DISABLED`, replayed to a worker
    /// started later (a restart after a crash) so it counts like the others.
    metrics: Option<MetricsConfiguration>,
}

impl SozuExtras {
    /// The orders a newly started worker needs beyond the state.
    pub(crate) fn boot_orders(&self) -> Vec<Request> {
        match self.metrics {
            Some(MetricsConfiguration::Disabled) => vec![Request {
                request_type: Some(RequestType::ConfigureMetrics(
                    MetricsConfiguration::Disabled as i32,
                )),
            }],
            _ => Vec::new(),
        }
    }
}

/// Why an order is refused, for the Sōzu orders this proxy does not serve.
fn unsupported_reason(request_type: &RequestType) -> Option<&'static str> {
    let reason = match request_type {
        RequestType::LaunchWorker(_) => {
            "workers are started by the master (worker_count); use upgrade_worker to replace one"
        }
        RequestType::SubscribeEvents(_) => "there is no event stream",
        RequestType::SetMaxConnectionsPerIp(_) | RequestType::QueryMaxConnectionsPerIp(_) => {
            "there is no per-IP connection limit"
        }
        RequestType::SetHealthCheck(_)
        | RequestType::RemoveHealthCheck(_)
        | RequestType::QueryHealthChecks(_) => {
            "HTTP health checks are not served (UDP health checks are set with the cluster)"
        }
        RequestType::SetMetricDetail(_) => "metric detail levels are not served",
        _ => return None,
    };
    Some(reason)
}

impl Master {
    /// Counts `request` and answers it if it is one of this module's
    /// orders; `false` leaves it to `handle_request`.
    pub(super) fn serve_sozu_order(
        &mut self,
        token: Token,
        peer: Peer,
        request: &Request,
        name: &'static str,
        now: Instant,
    ) -> bool {
        let count = self.sozu.request_counts.entry(name).or_insert(0);
        *count = count.saturating_add(1);
        let Some(request_type) = &request.request_type else {
            return false;
        };
        if let Some(reason) = unsupported_reason(request_type) {
            audit(peer, name, "refused", reason);
            self.answer(token, failure(format!("{name} is not supported: {reason}")));
            return true;
        }
        match request_type {
            RequestType::QueryClustersHashes(_) => {
                let hashes = self.state.cluster_hashes();
                let message = format!("{} cluster hash(es)", hashes.map.len());
                self.answer(
                    token,
                    with_content(message, ContentType::ClusterHashes(hashes)),
                );
            }
            RequestType::QueryClustersByDomain(query) => {
                let clusters = self
                    .state
                    .clusters_by_domain(&query.hostname, query.path.as_deref());
                let message = format!(
                    "{} cluster(s) for {}{}",
                    clusters.vec.len(),
                    query.hostname,
                    query.path.as_deref().unwrap_or("")
                );
                self.answer(
                    token,
                    with_content(message, ContentType::Clusters(clusters)),
                );
            }
            RequestType::CountRequests(_) => {
                let counts = RequestCounts {
                    map: self
                        .sozu
                        .request_counts
                        .iter()
                        .map(|(name, count)| ((*name).to_owned(), *count))
                        .collect(),
                };
                self.answer(
                    token,
                    with_content("request counts", ContentType::RequestCounts(counts)),
                );
            }
            RequestType::QueryCertificatesFromTheState(filters) => {
                let certificates = self.state.certificates_with_fingerprints(filters);
                let message = format!("{} certificate(s)", certificates.certs.len());
                self.answer(
                    token,
                    with_content(
                        message,
                        ContentType::CertificatesWithFingerprints(certificates),
                    ),
                );
            }
            // Each worker answers from its own state (as Sōzu's workers do
            // from their TLS stores); the answers are gathered per worker.
            RequestType::QueryCertificatesFromWorkers(_) => {
                let order = ClientOrder {
                    client: token,
                    kind: ClientOrderKind::Certificates,
                };
                self.fan_out(
                    Purpose::Client(order),
                    vec![request.clone()],
                    Some(self.config.worker_timeout),
                    now,
                );
            }
            RequestType::Logging(directives) => self.logging(token, peer, directives, now),
            RequestType::ConfigureMetrics(value) => {
                self.configure_metrics(token, peer, request, *value, now)
            }
            _ => return false,
        }
        true
    }

    /// `Logging`: the master's own filter first (an invalid one is refused
    /// and nothing changes), then every worker's; workers started later
    /// start with it.
    fn logging(&mut self, token: Token, peer: Peer, directives: &str, now: Instant) {
        let directives = directives.trim();
        // An empty filter would silently mean "errors only".
        let applied = if directives.is_empty() {
            Err(anyhow::anyhow!(
                "the log filter is empty (expected e.g. info or debug)"
            ))
        } else {
            crate::logging::set_level(directives)
        };
        if let Err(error) = applied {
            let message = format!("logging refused: {error:#}");
            audit(peer, "logging", "refused", &message);
            self.answer(token, failure(message));
            return;
        }
        tracing::warn!(level = directives, "log level changed");
        self.launch.settings.log_level = directives.to_owned();
        let order = Request {
            request_type: Some(RequestType::Logging(directives.to_owned())),
        };
        self.fan_out_order(token, peer, "logging", order, now);
    }

    /// `configure_metrics`: every worker's metrics (the master aggregates
    /// theirs and keeps none of its own).
    fn configure_metrics(
        &mut self,
        token: Token,
        peer: Peer,
        request: &Request,
        value: i32,
        now: Instant,
    ) {
        let Ok(configuration) = MetricsConfiguration::try_from(value) else {
            let message = format!(
                "configure_metrics refused: {value} is not a MetricsConfiguration (0 ENABLED, 1 DISABLED, 2 CLEAR)"
            );
            audit(peer, "configure_metrics", "refused", &message);
            self.answer(token, failure(message));
            return;
        };
        if configuration != MetricsConfiguration::Clear {
            self.sozu.metrics = Some(configuration);
        }
        self.fan_out_order(token, peer, "configure_metrics", request.clone(), now);
    }

    /// Sends one order to every worker; the client gets one answer when all
    /// answered (or one naming the workers that failed).
    fn fan_out_order(
        &mut self,
        token: Token,
        peer: Peer,
        name: &'static str,
        request: Request,
        now: Instant,
    ) {
        let order = ClientOrder {
            client: token,
            kind: ClientOrderKind::Forward { name, peer },
        };
        self.fan_out(
            Purpose::Client(order),
            vec![request],
            Some(self.config.worker_timeout),
            now,
        );
    }
}
