//! Turns a validated [`Config`] into the ordered list of orders that builds
//! its state: listeners, clusters, frontends, backends, then (if
//! `activate_listeners`) one activation per listener. Pure: no I/O.
//!
//! HTTPS listeners produce `add_https_listener` (their TLS knobs and default
//! certificate in it), their frontends `add_https_frontend`, and a
//! frontend's certificate `add_certificate` on its listener. The workers
//! keep them; serving HTTPS lands with the stream layer.

use std::net::SocketAddr;

use super::{ClusterConfig, ClusterProtocol, Config, FrontendConfig, ListenerConfig};
use crate::command::request::RequestType;
use crate::command::{
    ActivateListener, AddBackend, AddCertificate, CertificateAndKey, Cluster, HttpListenerConfig,
    HttpsListenerConfig, ListenerType, LoadBalancingParams, PathRule, ProxyProtocolConfig, Request,
    RequestHttpFrontend, RequestTcpFrontend, RequestUdpFrontend, RulePosition, TcpListenerConfig,
    UdpClusterConfig, UdpHealthConfig, UdpListenerConfig,
};
use crate::proto::convert::limit_to_wire;

fn secs(d: std::time::Duration) -> u32 {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
}

fn order(request_type: RequestType) -> Request {
    Request {
        request_type: Some(request_type),
    }
}

impl ListenerConfig {
    /// The order that adds this listener (inactive). Always `Some`.
    pub fn add_order(&self) -> Option<Request> {
        let request_type = match self {
            ListenerConfig::Udp(l) => RequestType::AddUdpListener(UdpListenerConfig {
                address: l.address.into(),
                public_address: l.public_address.map(Into::into),
                front_timeout: secs(l.front_timeout),
                back_timeout: secs(l.back_timeout),
                max_rx_datagram_size: l.max_rx_datagram_size.get(),
                max_flows: limit_to_wire(l.max_flows),
                active: false,
                recv_buffer_size: l.recv_buffer_size.map(|n| n.get()),
                send_buffer_size: l.send_buffer_size.map(|n| n.get()),
            }),
            ListenerConfig::Tcp(l) => RequestType::AddTcpListener(TcpListenerConfig {
                address: l.address.into(),
                public_address: l.public_address.map(Into::into),
                expect_proxy: l.expect_proxy,
                front_timeout: secs(l.front_timeout),
                back_timeout: secs(l.back_timeout),
                connect_timeout: secs(l.connect_timeout),
                active: false,
            }),
            ListenerConfig::Http(l) => RequestType::AddHttpListener(HttpListenerConfig {
                address: l.address.into(),
                public_address: l.public_address.map(Into::into),
                expect_proxy: l.expect_proxy,
                sticky_name: l.sticky_name.clone(),
                front_timeout: secs(l.front_timeout),
                back_timeout: secs(l.back_timeout),
                connect_timeout: secs(l.connect_timeout),
                request_timeout: secs(l.request_timeout),
                active: false,
                http_answers: custom_answers(l),
                answers: l.answers.clone(),
                ..Default::default()
            }),
            ListenerConfig::Https(l) => RequestType::AddHttpsListener(HttpsListenerConfig {
                address: l.http.address.into(),
                public_address: l.http.public_address.map(Into::into),
                expect_proxy: l.http.expect_proxy,
                sticky_name: l.http.sticky_name.clone(),
                front_timeout: secs(l.http.front_timeout),
                back_timeout: secs(l.http.back_timeout),
                connect_timeout: secs(l.http.connect_timeout),
                request_timeout: secs(l.http.request_timeout),
                active: false,
                versions: l.versions.iter().map(|v| *v as i32).collect(),
                cipher_list: l.cipher_list.clone(),
                cipher_suites: l.cipher_suites.clone(),
                signature_algorithms: l.signature_algorithms.clone(),
                groups_list: l.groups_list.clone(),
                certificate: l.certificate.clone(),
                certificate_chain: l.certificate_chain.clone(),
                key: l.key.clone(),
                send_tls13_tickets: l.send_tls13_tickets,
                alpn_protocols: l.alpn_protocols.clone(),
                hsts: l.hsts,
                http_answers: custom_answers(&l.http),
                answers: l.http.answers.clone(),
                ..Default::default()
            }),
        };
        Some(order(request_type))
    }
}

impl ClusterConfig {
    /// The `add_cluster` order for this cluster.
    pub fn add_order(&self) -> Request {
        let proxy_protocol = match (self.protocol, self.send_proxy, self.expect_proxy) {
            (ClusterProtocol::Udp, _, _) => None,
            (_, true, true) => Some(ProxyProtocolConfig::RelayHeader as i32),
            (_, true, false) => Some(ProxyProtocolConfig::SendHeader as i32),
            (_, false, true) => Some(ProxyProtocolConfig::ExpectHeader as i32),
            (_, false, false) => None,
        };
        let udp = self.udp.as_ref().map(|u| UdpClusterConfig {
            affinity_key: Some(u.affinity_key as i32),
            responses: Some(limit_to_wire(u.responses)),
            requests: Some(limit_to_wire(u.requests)),
            send_proxy_protocol: Some(u.send_proxy_protocol),
            proxy_protocol_every_datagram: Some(u.proxy_protocol_every_datagram),
            health: u.health.as_ref().map(|h| UdpHealthConfig {
                mode: Some(h.mode as i32),
                tcp_port: h.tcp_port.map(u32::from),
                rise: Some(h.rise.get()),
                fall: Some(h.fall.get()),
                fail_open: Some(h.fail_open),
                udp_probe_payload: Some(h.udp_probe_payload.clone()),
                probe_interval_seconds: Some(secs(h.probe_interval)),
                probe_timeout_seconds: Some(secs(h.probe_timeout)),
            }),
            front_timeout: u.front_timeout.map(secs),
            back_timeout: u.back_timeout.map(secs),
            max_pending_datagrams: Some(u.max_pending_datagrams.get()),
            max_pending_bytes: Some(u.max_pending_bytes.get()),
            keep_flows_on_backend_removal: Some(u.keep_flows_on_backend_removal),
            flow_key: Some(u.flow_key as i32),
            one_way: Some(u.one_way),
            quic_cid_length: Some(u32::from(u.quic_cid_length)),
            quic_lb_config_id: u.quic_lb.map(|q| u32::from(q.config_id)),
            quic_lb_server_id_length: u.quic_lb.map(|q| u32::from(q.server_id_length)),
            quic_lb_nonce_length: u.quic_lb.and_then(|q| q.nonce_length.map(u32::from)),
        });
        order(RequestType::AddCluster(Cluster {
            cluster_id: self.cluster_id.clone(),
            sticky_session: self.sticky_session,
            https_redirect: self.https_redirect,
            https_redirect_port: self.https_redirect_port.map(u32::from),
            answer_503: self.answer_503.clone(),
            answers: self.answers.clone(),
            proxy_protocol,
            load_balancing: self.load_balancing as i32,
            load_metric: self.load_metric.map(|m| m as i32),
            udp,
            ..Default::default()
        }))
    }

    /// The order adding `frontend` to this cluster.
    fn frontend_order(&self, frontend: &FrontendConfig, config: &Config) -> Option<Request> {
        let address = frontend.address.into();
        let tags = frontend.tags.clone();
        let request_type = match self.protocol {
            ClusterProtocol::Udp => RequestType::AddUdpFrontend(RequestUdpFrontend {
                cluster_id: self.cluster_id.clone(),
                address,
                tags,
            }),
            ClusterProtocol::Tcp => RequestType::AddTcpFrontend(RequestTcpFrontend {
                cluster_id: self.cluster_id.clone(),
                address,
                tags,
            }),
            ClusterProtocol::Http => {
                let https = config
                    .listener(ListenerType::Http, frontend.address)
                    .is_none();
                let http_frontend = RequestHttpFrontend {
                    cluster_id: Some(self.cluster_id.clone()),
                    address,
                    hostname: frontend.hostname.clone().unwrap_or_default(),
                    path: PathRule {
                        kind: frontend.path_kind as i32,
                        value: frontend.path.clone(),
                    },
                    method: frontend.method.clone(),
                    position: RulePosition::Tree as i32,
                    tags,
                    hsts: frontend.hsts.filter(|_| https),
                    ..Default::default()
                };
                if https {
                    RequestType::AddHttpsFrontend(http_frontend)
                } else {
                    RequestType::AddHttpFrontend(http_frontend)
                }
            }
        };
        Some(order(request_type))
    }
}

fn activate_order(address: SocketAddr, proxy: ListenerType) -> Request {
    order(RequestType::ActivateListener(ActivateListener {
        address: address.into(),
        proxy: proxy as i32,
        from_scm: false,
    }))
}

impl Config {
    /// The orders that build this configuration's state, in order: add each
    /// listener (inactive, file order), add each cluster (by id), each
    /// cluster's frontends, each cluster's backends, then activate each
    /// listener when `activate_listeners` is true.
    pub fn generate_orders(&self) -> Vec<Request> {
        let mut orders: Vec<Request> = self
            .listeners
            .iter()
            .filter_map(ListenerConfig::add_order)
            .collect();
        // A certificate given on an HTTPS frontend goes to its listener.
        for cluster in self.clusters.values() {
            for frontend in &cluster.frontends {
                if let Some(c) = &frontend.certificate {
                    orders.push(order(RequestType::AddCertificate(AddCertificate {
                        address: frontend.address.into(),
                        certificate: CertificateAndKey {
                            certificate: c.certificate.clone(),
                            certificate_chain: c.certificate_chain.clone(),
                            key: c.key.clone(),
                            versions: c.versions.iter().map(|v| *v as i32).collect(),
                            names: Vec::new(),
                        },
                        expired_at: None,
                    })));
                }
            }
        }
        orders.extend(self.clusters.values().map(ClusterConfig::add_order));
        for cluster in self.clusters.values() {
            orders.extend(
                cluster
                    .frontends
                    .iter()
                    .filter_map(|f| cluster.frontend_order(f, self)),
            );
        }
        for cluster in self.clusters.values() {
            orders.extend(cluster.backends.iter().map(|b| {
                order(RequestType::AddBackend(AddBackend {
                    cluster_id: cluster.cluster_id.clone(),
                    backend_id: b.backend_id.clone(),
                    address: b.address.into(),
                    sticky_id: b.sticky_id.clone(),
                    load_balancing_parameters: Some(LoadBalancingParams { weight: b.weight }),
                    backup: b.backup,
                    quic_lb_server_id: b.quic_lb_server_id.clone(),
                }))
            }));
        }
        if self.activate_listeners {
            orders.extend(
                self.listeners
                    .iter()
                    .map(|l| activate_order(l.address(), l.listener_type())),
            );
        }
        orders
    }
}

/// The custom answers of an HTTP listener, if it has any.
fn custom_answers(l: &super::HttpListenerSettings) -> Option<crate::command::CustomHttpAnswers> {
    (l.answer_404.is_some() || l.answer_503.is_some()).then(|| crate::command::CustomHttpAnswers {
        answer_404: l.answer_404.clone(),
        answer_503: l.answer_503.clone(),
        ..Default::default()
    })
}
