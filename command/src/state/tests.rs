//! Unit tests of `ConfigState`: each order applied and queried, each refusal
//! leaving the state unchanged with a message naming the field and value,
//! rebuild from `generate_requests`, diffs, and state files.

use std::net::SocketAddr;

use crate::command::request::RequestType;
use crate::command::{
    ActivateListener, AddBackend, Cluster, DeactivateListener, FrontendFilters, HttpListenerConfig,
    ListenerType, LoadBalancingParams, PathRule, PathRuleKind, RemoveBackend, RemoveListener,
    Request, RequestHttpFrontend, RequestTcpFrontend, RequestUdpFrontend, SocketAddress, Status,
    TcpListenerConfig, UdpClusterConfig, UdpListenerConfig, UpdateHttpListenerConfig,
    UpdateTcpListenerConfig, UpdateUdpListenerConfig,
};
use crate::state::{ConfigState, DispatchOutcome, StateError, StateFileError};

// ---- order builders, shared with the property tests ----

pub(super) fn sock(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

pub(super) fn wire(text: &str) -> SocketAddress {
    SocketAddress::from(sock(text))
}

pub(super) fn order(request_type: RequestType) -> Request {
    Request {
        request_type: Some(request_type),
    }
}

pub(super) fn udp_listener_config(address: &str) -> UdpListenerConfig {
    UdpListenerConfig {
        address: wire(address),
        public_address: None,
        front_timeout: 30,
        back_timeout: 30,
        max_rx_datagram_size: 1500,
        max_flows: 0,
        active: false,
        recv_buffer_size: None,
        send_buffer_size: None,
    }
}

pub(super) fn add_udp_listener(address: &str) -> Request {
    order(RequestType::AddUdpListener(udp_listener_config(address)))
}

pub(super) fn add_tcp_listener(address: &str) -> Request {
    order(RequestType::AddTcpListener(TcpListenerConfig {
        address: wire(address),
        ..Default::default()
    }))
}

pub(super) fn add_http_listener(address: &str) -> Request {
    order(RequestType::AddHttpListener(HttpListenerConfig {
        address: wire(address),
        ..Default::default()
    }))
}

pub(super) fn listener_order(kind: ListenerType, address: &str, what: &str) -> Request {
    let address = wire(address);
    let proxy = kind as i32;
    order(match what {
        "remove" => RequestType::RemoveListener(RemoveListener { address, proxy }),
        "activate" => RequestType::ActivateListener(ActivateListener {
            address,
            proxy,
            from_scm: false,
        }),
        "deactivate" => RequestType::DeactivateListener(DeactivateListener {
            address,
            proxy,
            to_scm: false,
        }),
        other => panic!("unknown listener order {other}"),
    })
}

pub(super) fn add_cluster(id: &str) -> Request {
    order(RequestType::AddCluster(Cluster {
        cluster_id: id.to_owned(),
        ..Default::default()
    }))
}

pub(super) fn add_udp_cluster(id: &str, responses: u32) -> Request {
    order(RequestType::AddCluster(Cluster {
        cluster_id: id.to_owned(),
        udp: Some(UdpClusterConfig {
            responses: Some(responses),
            ..Default::default()
        }),
        ..Default::default()
    }))
}

pub(super) fn backend(cluster: &str, id: &str, address: &str, weight: i32) -> AddBackend {
    AddBackend {
        cluster_id: cluster.to_owned(),
        backend_id: id.to_owned(),
        address: wire(address),
        sticky_id: None,
        load_balancing_parameters: Some(LoadBalancingParams { weight }),
        backup: None,
        quic_lb_server_id: None,
    }
}

pub(super) fn add_backend(cluster: &str, id: &str, address: &str) -> Request {
    order(RequestType::AddBackend(backend(cluster, id, address, 1)))
}

pub(super) fn remove_backend(cluster: &str, id: &str, address: &str) -> Request {
    order(RequestType::RemoveBackend(RemoveBackend {
        cluster_id: cluster.to_owned(),
        backend_id: id.to_owned(),
        address: wire(address),
    }))
}

pub(super) fn udp_frontend(cluster: &str, address: &str) -> RequestUdpFrontend {
    RequestUdpFrontend {
        cluster_id: cluster.to_owned(),
        address: wire(address),
        tags: Default::default(),
    }
}

pub(super) fn tcp_frontend(cluster: &str, address: &str) -> RequestTcpFrontend {
    RequestTcpFrontend {
        cluster_id: cluster.to_owned(),
        address: wire(address),
        tags: Default::default(),
    }
}

pub(super) fn http_frontend(
    cluster: Option<&str>,
    address: &str,
    host: &str,
    path: &str,
) -> RequestHttpFrontend {
    RequestHttpFrontend {
        cluster_id: cluster.map(str::to_owned),
        address: wire(address),
        hostname: host.to_owned(),
        path: PathRule {
            kind: PathRuleKind::Prefix as i32,
            value: path.to_owned(),
        },
        ..Default::default()
    }
}

pub(super) fn apply_all(orders: &[Request]) -> ConfigState {
    let mut state = ConfigState::new();
    for request in orders {
        state
            .dispatch(request)
            .unwrap_or_else(|e| panic!("{request:?} refused: {e}"));
    }
    state
}

/// Dispatches an order that must be refused; checks the state did not change
/// and the message names every `fragment`.
pub(super) fn assert_refused(
    state: &mut ConfigState,
    request: Request,
    fragments: &[&str],
) -> StateError {
    let before = state.clone();
    let error = state
        .dispatch(&request)
        .expect_err("the order must be refused");
    assert_eq!(*state, before, "a refused order changed the state: {error}");
    let message = error.to_string();
    for fragment in fragments {
        assert!(
            message.contains(fragment),
            "{message:?} does not name {fragment:?}"
        );
    }
    error
}

/// A DNS-like setup: UDP listener → cluster with two backends, plus TCP and
/// HTTP listeners and frontends to other clusters.
fn sample_orders() -> Vec<Request> {
    vec![
        add_udp_listener("127.0.0.1:5353"),
        add_tcp_listener("127.0.0.1:5353"),
        add_http_listener("[::1]:8080"),
        add_udp_cluster("dns", 1),
        add_cluster("web"),
        order(RequestType::AddUdpFrontend(udp_frontend(
            "dns",
            "127.0.0.1:5353",
        ))),
        order(RequestType::AddTcpFrontend(tcp_frontend(
            "web",
            "127.0.0.1:5353",
        ))),
        order(RequestType::AddHttpFrontend(http_frontend(
            Some("web"),
            "[::1]:8080",
            "example.com",
            "/api",
        ))),
        add_backend("dns", "dns-1", "127.0.0.1:1053"),
        add_backend("dns", "dns-2", "127.0.0.1:2053"),
        add_backend("web", "web-1", "[::1]:9000"),
        listener_order(ListenerType::Udp, "127.0.0.1:5353", "activate"),
        listener_order(ListenerType::Http, "[::1]:8080", "activate"),
    ]
}

// ---- applying and querying ----

#[test]
fn udp_setup_is_visible_through_every_query() {
    let state = apply_all(&sample_orders());
    let listener = sock("127.0.0.1:5353");

    let udp = state.udp_listener(&listener).expect("udp listener");
    assert!(udp.active);
    assert!(
        !state
            .tcp_listener(&listener)
            .expect("tcp listener on the same address")
            .active
    );
    assert_eq!(
        state.udp_frontend(&listener).map(|f| f.cluster_id.as_str()),
        Some("dns")
    );
    assert_eq!(
        state.udp_cluster(&listener).map(|c| c.cluster_id.as_str()),
        Some("dns")
    );
    let ids: Vec<_> = state
        .backends("dns")
        .map(|b| b.backend_id.as_str())
        .collect();
    assert_eq!(ids, ["dns-1", "dns-2"]);
    assert_eq!(state.backends("nope").count(), 0);

    let list = state.listeners_list();
    assert!(list.udp_listeners.contains_key("127.0.0.1:5353"));
    assert!(list.tcp_listeners.contains_key("127.0.0.1:5353"));
    assert!(list.http_listeners.contains_key("[::1]:8080"));

    let info = state.cluster_information("dns").expect("dns cluster");
    assert_eq!(
        info.udp_frontends,
        vec![udp_frontend("dns", "127.0.0.1:5353")]
    );
    assert_eq!(info.backends.len(), 2);
    assert!(info.tcp_frontends.is_empty() && info.http_frontends.is_empty());
    assert_eq!(
        info.configuration
            .and_then(|c| c.udp)
            .and_then(|u| u.responses),
        Some(1)
    );
    assert!(state.cluster_information("missing").is_none());

    let all: Vec<_> = state
        .clusters()
        .vec
        .into_iter()
        .filter_map(|c| c.configuration.map(|c| c.cluster_id))
        .collect();
    assert_eq!(all, ["dns", "web"]);
}

#[test]
fn frontend_filters_follow_sozu_semantics_and_include_udp() {
    let state = apply_all(&sample_orders());
    let everything = state.frontends(&FrontendFilters::default());
    assert_eq!(everything.udp_frontends.len(), 1);
    assert_eq!(everything.tcp_frontends.len(), 1);
    assert_eq!(everything.http_frontends.len(), 1);

    let tcp_only = state.frontends(&FrontendFilters {
        tcp: true,
        ..Default::default()
    });
    assert_eq!(tcp_only.tcp_frontends.len(), 1);
    assert!(tcp_only.udp_frontends.is_empty() && tcp_only.http_frontends.is_empty());

    let by_domain = |domain: &str| {
        state.frontends(&FrontendFilters {
            domain: Some(domain.to_owned()),
            ..Default::default()
        })
    };
    assert_eq!(by_domain("example").http_frontends.len(), 1);
    assert!(by_domain("example").udp_frontends.is_empty());
    assert!(by_domain("other.org").http_frontends.is_empty());
}

#[test]
fn update_udp_listener_patches_only_given_fields() {
    let mut state = apply_all(&[add_udp_listener("127.0.0.1:53")]);
    let update = UpdateUdpListenerConfig {
        address: wire("127.0.0.1:53"),
        max_flows: Some(10),
        ..Default::default()
    };
    assert_eq!(
        state.dispatch(&order(RequestType::UpdateUdpListener(update))),
        Ok(DispatchOutcome::Applied)
    );
    let mut expected = udp_listener_config("127.0.0.1:53");
    expected.max_flows = 10;
    assert_eq!(state.udp_listener(&sock("127.0.0.1:53")), Some(&expected));
}

#[test]
fn update_tcp_and_http_listeners_patch_only_given_fields() {
    let mut state = apply_all(&[
        add_tcp_listener("127.0.0.1:80"),
        add_http_listener("127.0.0.1:80"),
    ]);
    let tcp = UpdateTcpListenerConfig {
        address: wire("127.0.0.1:80"),
        connect_timeout: Some(9),
        ..Default::default()
    };
    let http = UpdateHttpListenerConfig {
        address: wire("127.0.0.1:80"),
        sticky_name: Some("SOZU".to_owned()),
        h2_max_header_fields: Some(12),
        ..Default::default()
    };
    state
        .dispatch(&order(RequestType::UpdateTcpListener(tcp)))
        .unwrap();
    state
        .dispatch(&order(RequestType::UpdateHttpListener(http)))
        .unwrap();
    let tcp = state.tcp_listener(&sock("127.0.0.1:80")).unwrap();
    assert_eq!((tcp.connect_timeout, tcp.front_timeout), (9, 60));
    let http = state.http_listener(&sock("127.0.0.1:80")).unwrap();
    assert_eq!(http.sticky_name, "SOZU");
    assert_eq!(http.h2_max_header_fields, Some(12));
    assert_eq!(http.front_timeout, 60);
}

#[test]
fn activate_and_deactivate_flip_active() {
    let mut state = apply_all(&[add_udp_listener("127.0.0.1:53")]);
    let addr = sock("127.0.0.1:53");
    state
        .dispatch(&listener_order(
            ListenerType::Udp,
            "127.0.0.1:53",
            "activate",
        ))
        .unwrap();
    assert!(state.udp_listener(&addr).unwrap().active);
    // Activating twice is harmless.
    state
        .dispatch(&listener_order(
            ListenerType::Udp,
            "127.0.0.1:53",
            "activate",
        ))
        .unwrap();
    state
        .dispatch(&listener_order(
            ListenerType::Udp,
            "127.0.0.1:53",
            "deactivate",
        ))
        .unwrap();
    assert!(!state.udp_listener(&addr).unwrap().active);
}

#[test]
fn add_cluster_on_an_existing_id_replaces_its_knobs_and_keeps_the_rest() {
    let mut state = apply_all(&sample_orders());
    state.dispatch(&add_udp_cluster("dns", 0)).unwrap();
    let info = state.cluster_information("dns").unwrap();
    assert_eq!(
        info.configuration
            .and_then(|c| c.udp)
            .and_then(|u| u.responses),
        Some(0)
    );
    assert_eq!(info.backends.len(), 2);
    assert_eq!(info.udp_frontends.len(), 1);
}

#[test]
fn remove_cluster_removes_its_frontends_and_backends() {
    let mut state = apply_all(&sample_orders());
    state
        .dispatch(&order(RequestType::RemoveCluster("web".to_owned())))
        .unwrap();
    assert!(state.cluster("web").is_none());
    assert_eq!(state.backends("web").count(), 0);
    assert!(state.tcp_frontend(&sock("127.0.0.1:5353")).is_none());
    assert_eq!(state.http_frontends().count(), 0);
    // The other cluster is untouched.
    assert_eq!(state.backends("dns").count(), 2);
    assert!(state.udp_frontend(&sock("127.0.0.1:5353")).is_some());
    // And the listeners stay.
    assert!(state.tcp_listener(&sock("127.0.0.1:5353")).is_some());
}

#[test]
fn remove_listener_removes_its_frontends_only() {
    let mut state = apply_all(&sample_orders());
    state
        .dispatch(&listener_order(
            ListenerType::Udp,
            "127.0.0.1:5353",
            "remove",
        ))
        .unwrap();
    assert!(state.udp_listener(&sock("127.0.0.1:5353")).is_none());
    assert!(state.udp_frontend(&sock("127.0.0.1:5353")).is_none());
    assert!(state.tcp_frontend(&sock("127.0.0.1:5353")).is_some());
    assert!(state.cluster("dns").is_some());
    state
        .dispatch(&listener_order(ListenerType::Http, "[::1]:8080", "remove"))
        .unwrap();
    assert_eq!(state.http_frontends().count(), 0);
}

#[test]
fn backend_removal_names_the_address() {
    let mut state = apply_all(&sample_orders());
    state
        .dispatch(&remove_backend("dns", "dns-1", "127.0.0.1:1053"))
        .unwrap();
    let ids: Vec<_> = state
        .backends("dns")
        .map(|b| b.backend_id.clone())
        .collect();
    assert_eq!(ids, ["dns-2"]);
    state
        .dispatch(&remove_backend("dns", "dns-2", "127.0.0.1:2053"))
        .unwrap();
    assert_eq!(state.backends("dns").count(), 0);
}

#[test]
fn orders_that_do_not_change_the_state_are_reported_as_such() {
    let mut state = apply_all(&sample_orders());
    let before = state.clone();
    for request_type in [
        RequestType::Status(Status {}),
        RequestType::SaveState("/tmp/x".to_owned()),
        RequestType::LoadState("/tmp/x".to_owned()),
        RequestType::QueryClusterById("dns".to_owned()),
        RequestType::ListFrontends(FrontendFilters::default()),
        RequestType::SoftStop(Default::default()),
        RequestType::HardStop(Default::default()),
        RequestType::UpgradeWorker(1),
    ] {
        let request = order(request_type);
        assert_eq!(
            state.dispatch(&request),
            Ok(DispatchOutcome::NotAStateChange)
        );
        assert!(!crate::state::is_state_change(&request));
    }
    assert_eq!(state, before);
    assert!(crate::state::is_state_change(&add_cluster("x")));
}

#[test]
fn from_requests_builds_or_names_the_refused_order() {
    let orders = sample_orders();
    assert_eq!(ConfigState::from_requests(&orders), Ok(apply_all(&orders)));
    let mut bad = orders.clone();
    bad.insert(4, add_backend("ghost", "b", "127.0.0.1:1"));
    let error = ConfigState::from_requests(&bad).unwrap_err();
    assert_eq!((error.index, error.order), (4, "add_backend"));
    assert!(error.to_string().contains("ghost"), "{error}");
}

// ---- refusals ----

#[test]
fn unknown_cluster_is_refused_for_backends_and_frontends() {
    let mut state = apply_all(&[
        add_udp_listener("127.0.0.1:53"),
        add_tcp_listener("127.0.0.1:53"),
        add_http_listener("127.0.0.1:80"),
    ]);
    assert_refused(
        &mut state,
        add_backend("ghost", "b", "127.0.0.1:1"),
        &["cluster_id", "\"ghost\""],
    );
    assert_refused(
        &mut state,
        order(RequestType::AddUdpFrontend(udp_frontend(
            "ghost",
            "127.0.0.1:53",
        ))),
        &["cluster_id", "\"ghost\""],
    );
    assert_refused(
        &mut state,
        order(RequestType::AddTcpFrontend(tcp_frontend(
            "ghost",
            "127.0.0.1:53",
        ))),
        &["cluster_id", "\"ghost\""],
    );
    assert_refused(
        &mut state,
        order(RequestType::AddHttpFrontend(http_frontend(
            Some("ghost"),
            "127.0.0.1:80",
            "h",
            "/",
        ))),
        &["cluster_id", "\"ghost\""],
    );
    assert_refused(
        &mut state,
        order(RequestType::RemoveCluster("ghost".to_owned())),
        &["ghost"],
    );
}

#[test]
fn duplicate_listener_is_refused_per_protocol() {
    let mut state = apply_all(&[add_udp_listener("127.0.0.1:53")]);
    let error = assert_refused(
        &mut state,
        add_udp_listener("127.0.0.1:53"),
        &["UDP", "127.0.0.1:53"],
    );
    assert!(matches!(error, StateError::DuplicateListener { .. }));
    // Another protocol on the same address is fine.
    state.dispatch(&add_tcp_listener("127.0.0.1:53")).unwrap();
    assert_refused(
        &mut state,
        add_tcp_listener("127.0.0.1:53"),
        &["TCP", "127.0.0.1:53"],
    );
    state.dispatch(&add_http_listener("127.0.0.1:53")).unwrap();
    assert_refused(
        &mut state,
        add_http_listener("127.0.0.1:53"),
        &["HTTP", "127.0.0.1:53"],
    );
}

#[test]
fn orders_on_a_missing_listener_are_refused() {
    let mut state = apply_all(&[add_tcp_listener("127.0.0.1:53")]);
    for what in ["remove", "activate", "deactivate"] {
        assert_refused(
            &mut state,
            listener_order(ListenerType::Udp, "127.0.0.1:53", what),
            &["UDP", "127.0.0.1:53"],
        );
    }
    let update = UpdateUdpListenerConfig {
        address: wire("127.0.0.1:53"),
        ..Default::default()
    };
    assert_refused(
        &mut state,
        order(RequestType::UpdateUdpListener(update)),
        &["UDP", "127.0.0.1:53"],
    );
    assert_refused(
        &mut state,
        listener_order(ListenerType::Https, "127.0.0.1:53", "activate"),
        &["HTTPS", "127.0.0.1:53"],
    );
    let mut bad_kind = listener_order(ListenerType::Tcp, "127.0.0.1:53", "remove");
    if let Some(RequestType::RemoveListener(r)) = &mut bad_kind.request_type {
        r.proxy = 42;
    }
    assert_refused(&mut state, bad_kind, &["proxy", "42"]);
}

#[test]
fn frontend_needs_a_listener_of_its_protocol() {
    let mut state = apply_all(&[
        add_tcp_listener("127.0.0.1:53"),
        add_udp_listener("127.0.0.1:80"),
        add_cluster("c"),
    ]);
    assert_refused(
        &mut state,
        order(RequestType::AddUdpFrontend(udp_frontend(
            "c",
            "127.0.0.1:53",
        ))),
        &["no UDP listener", "127.0.0.1:53"],
    );
    assert_refused(
        &mut state,
        order(RequestType::AddTcpFrontend(tcp_frontend(
            "c",
            "127.0.0.1:80",
        ))),
        &["no TCP listener", "127.0.0.1:80"],
    );
    assert_refused(
        &mut state,
        order(RequestType::AddHttpFrontend(http_frontend(
            Some("c"),
            "127.0.0.1:80",
            "h",
            "/",
        ))),
        &["no HTTP listener", "127.0.0.1:80"],
    );
}

#[test]
fn a_udp_or_tcp_listener_maps_to_one_cluster() {
    let mut state = apply_all(&sample_orders());
    state.dispatch(&add_cluster("other")).unwrap();
    assert_refused(
        &mut state,
        order(RequestType::AddUdpFrontend(udp_frontend(
            "other",
            "127.0.0.1:5353",
        ))),
        &["127.0.0.1:5353", "\"dns\""],
    );
    assert_refused(
        &mut state,
        order(RequestType::AddTcpFrontend(tcp_frontend(
            "other",
            "127.0.0.1:5353",
        ))),
        &["127.0.0.1:5353", "\"web\""],
    );
    assert_refused(
        &mut state,
        order(RequestType::AddHttpFrontend(http_frontend(
            Some("other"),
            "[::1]:8080",
            "example.com",
            "/api",
        ))),
        &["[::1]:8080", "example.com", "/api"],
    );
}

#[test]
fn removing_a_missing_frontend_is_refused() {
    let mut state = apply_all(&sample_orders());
    assert_refused(
        &mut state,
        order(RequestType::RemoveUdpFrontend(udp_frontend(
            "web",
            "127.0.0.1:5353",
        ))),
        &["\"web\"", "127.0.0.1:5353"],
    );
    assert_refused(
        &mut state,
        order(RequestType::RemoveTcpFrontend(tcp_frontend(
            "dns",
            "127.0.0.1:5353",
        ))),
        &["\"dns\"", "127.0.0.1:5353"],
    );
    assert_refused(
        &mut state,
        order(RequestType::RemoveHttpFrontend(http_frontend(
            Some("web"),
            "[::1]:8080",
            "example.com",
            "/",
        ))),
        &["example.com", "\"/\""],
    );
}

#[test]
fn backend_refusals_name_cluster_and_backend() {
    let mut state = apply_all(&sample_orders());
    assert_refused(
        &mut state,
        add_backend("dns", "dns-1", "127.0.0.1:9999"),
        &["\"dns\"", "\"dns-1\""],
    );
    assert_refused(
        &mut state,
        remove_backend("dns", "dns-9", "127.0.0.1:1053"),
        &["\"dns-9\""],
    );
    // Right id, wrong address.
    assert_refused(
        &mut state,
        remove_backend("dns", "dns-1", "127.0.0.1:9"),
        &["\"dns-1\"", "127.0.0.1:9"],
    );
    assert_refused(
        &mut state,
        add_backend("dns", "", "127.0.0.1:3053"),
        &["backend_id", "empty"],
    );
    assert_refused(
        &mut state,
        add_backend("dns", "dns-3", "127.0.0.1:0"),
        &["address", "127.0.0.1:0"],
    );
}

#[test]
fn bad_values_are_refused_with_field_and_value() {
    let mut state = apply_all(&[add_udp_listener("127.0.0.1:53")]);
    for size in [0, 65_536] {
        let mut config = udp_listener_config("127.0.0.1:54");
        config.max_rx_datagram_size = size;
        assert_refused(
            &mut state,
            order(RequestType::AddUdpListener(config)),
            &["max_rx_datagram_size", &size.to_string()],
        );
        let update = UpdateUdpListenerConfig {
            address: wire("127.0.0.1:53"),
            max_rx_datagram_size: Some(size),
            ..Default::default()
        };
        assert_refused(
            &mut state,
            order(RequestType::UpdateUdpListener(update)),
            &["max_rx_datagram_size", &size.to_string()],
        );
    }
    let mut config = udp_listener_config("127.0.0.1:54");
    config.address.port = 70_000;
    assert_refused(
        &mut state,
        order(RequestType::AddUdpListener(config)),
        &["address", "127.0.0.1:70000"],
    );
    let mut config = udp_listener_config("127.0.0.1:54");
    config.address.ip.inner = None;
    assert_refused(
        &mut state,
        order(RequestType::AddUdpListener(config)),
        &["address", "<no ip>:54", "no IP"],
    );
    let mut config = udp_listener_config("127.0.0.1:54");
    config.front_timeout = 0;
    assert_refused(
        &mut state,
        order(RequestType::AddUdpListener(config)),
        &["front_timeout", "0"],
    );
    assert_refused(&mut state, add_cluster(""), &["cluster_id", "empty"]);
    let mut cluster = Cluster {
        cluster_id: "c".to_owned(),
        load_balancing: 99,
        ..Default::default()
    };
    assert_refused(
        &mut state,
        order(RequestType::AddCluster(cluster.clone())),
        &["load_balancing", "99"],
    );
    cluster.load_balancing = 0;
    cluster.udp = Some(UdpClusterConfig {
        affinity_key: Some(7),
        ..Default::default()
    });
    assert_refused(
        &mut state,
        order(RequestType::AddCluster(cluster)),
        &["udp.affinity_key", "7"],
    );
    assert_refused(
        &mut state,
        Request { request_type: None },
        &["request_type"],
    );
}

// ---- rebuild, diff ----

#[test]
fn generate_requests_rebuilds_the_same_state_listeners_first_activation_last() {
    let state = apply_all(&sample_orders());
    let orders = state.generate_requests();
    assert_eq!(apply_all(&orders), state);

    let names: Vec<_> = orders
        .iter()
        .map(|r| crate::state::order_name(r.request_type.as_ref().unwrap()))
        .collect();
    assert_eq!(
        &names[..3],
        ["add_udp_listener", "add_tcp_listener", "add_http_listener"]
    );
    assert_eq!(
        &names[names.len() - 2..],
        ["activate_listener", "activate_listener"]
    );
    for request in &orders[..3] {
        let inactive = match &request.request_type {
            Some(RequestType::AddUdpListener(l)) => !l.active,
            Some(RequestType::AddTcpListener(l)) => !l.active,
            Some(RequestType::AddHttpListener(l)) => !l.active,
            _ => false,
        };
        assert!(inactive, "listeners are added inactive: {request:?}");
    }
    assert!(ConfigState::new().generate_requests().is_empty());
}

#[test]
fn diff_patches_listeners_in_place_and_replaces_when_it_must() {
    let a = apply_all(&sample_orders());
    let mut b = a.clone();
    // A patchable change: one update order, nothing else.
    let update = UpdateUdpListenerConfig {
        address: wire("127.0.0.1:5353"),
        max_flows: Some(7),
        ..Default::default()
    };
    b.dispatch(&order(RequestType::UpdateUdpListener(update)))
        .unwrap();
    let orders = a.diff(&b);
    assert_eq!(orders.len(), 1, "{orders:?}");
    assert!(matches!(
        orders[0].request_type,
        Some(RequestType::UpdateUdpListener(_))
    ));

    // A change no update can express (socket buffer size): the listener is
    // replaced, its frontend put back, and it is activated again.
    let mut c = a.clone();
    let mut config = udp_listener_config("127.0.0.1:5353");
    config.recv_buffer_size = Some(1 << 20);
    c.dispatch(&listener_order(
        ListenerType::Udp,
        "127.0.0.1:5353",
        "remove",
    ))
    .unwrap();
    c.dispatch(&order(RequestType::AddUdpListener(config)))
        .unwrap();
    c.dispatch(&order(RequestType::AddUdpFrontend(udp_frontend(
        "dns",
        "127.0.0.1:5353",
    ))))
    .unwrap();
    c.dispatch(&listener_order(
        ListenerType::Udp,
        "127.0.0.1:5353",
        "activate",
    ))
    .unwrap();
    let mut replayed = a.clone();
    for request in a.diff(&c) {
        replayed.dispatch(&request).unwrap();
    }
    assert_eq!(replayed, c);
    assert!(a.diff(&a).is_empty());
}

// ---- state files ----

#[test]
fn save_then_load_gives_the_same_state() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let state = apply_all(&sample_orders());
    let written = state.save_to_path(&path).unwrap();
    assert_eq!(written, state.generate_requests().len());
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().count(), written);
    assert_eq!(ConfigState::load_from_path(&path, 1 << 20).unwrap(), state);
    // Saving again over an existing file replaces it whole.
    ConfigState::new().save_to_path(&path).unwrap();
    assert!(ConfigState::load_from_path(&path, 1 << 20)
        .unwrap()
        .is_empty());
    // No temporary file is left behind.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn a_corrupt_line_is_reported_with_its_number() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    apply_all(&sample_orders()).save_to_path(&path).unwrap();
    let mut lines: Vec<String> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    lines[2] = "{\"request_type\": {\"add_cluster\": 12}}".to_owned();
    std::fs::write(&path, lines.join("\n")).unwrap();
    let error = ConfigState::load_from_path(&path, 1 << 20).unwrap_err();
    assert!(
        matches!(error, StateFileError::Parse { line: 3, .. }),
        "{error}"
    );
    assert!(error.to_string().contains("line 3"));
}

#[test]
fn a_refused_or_non_state_order_is_reported_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let line = |r: &Request| serde_json::to_string(r).unwrap();
    let text = [
        line(&add_cluster("a")),
        String::new(),
        line(&add_backend("ghost", "b", "127.0.0.1:1")),
    ]
    .join("\n");
    std::fs::write(&path, text).unwrap();
    let error = ConfigState::load_from_path(&path, 1 << 20).unwrap_err();
    assert!(
        matches!(error, StateFileError::Refused { line: 3, .. }),
        "{error}"
    );
    assert!(error.to_string().contains("ghost"));

    std::fs::write(&path, line(&order(RequestType::Status(Status {})))).unwrap();
    let error = ConfigState::load_from_path(&path, 1 << 20).unwrap_err();
    assert!(matches!(
        error,
        StateFileError::NotAStateOrder {
            line: 1,
            order: "status",
            ..
        }
    ));

    std::fs::write(&path, b"\xff\xfe\n").unwrap();
    let error = ConfigState::load_from_path(&path, 1 << 20).unwrap_err();
    assert!(matches!(error, StateFileError::NotUtf8 { line: 1, .. }));
}

#[test]
fn an_oversized_state_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let state = apply_all(&sample_orders());
    state.save_to_path(&path).unwrap();
    let size = std::fs::metadata(&path).unwrap().len();
    let error = ConfigState::load_from_path(&path, size - 1).unwrap_err();
    assert!(
        matches!(error, StateFileError::TooLarge { size: s, max_size, .. } if s == size && max_size == size - 1),
        "{error}"
    );
    assert_eq!(ConfigState::load_from_path(&path, size).unwrap(), state);
}

#[test]
fn saving_into_an_unusable_directory_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    // A regular file where a directory should be: fails even for root.
    let not_a_dir = dir.path().join("file");
    std::fs::write(&not_a_dir, b"").unwrap();
    let error = apply_all(&sample_orders())
        .save_to_path(&not_a_dir.join("state.json"))
        .unwrap_err();
    assert!(matches!(error, StateFileError::Write { .. }), "{error}");
    let missing = ConfigState::load_from_path(&dir.path().join("missing.json"), 1024).unwrap_err();
    assert!(matches!(missing, StateFileError::Read { .. }), "{missing}");
}

#[test]
fn backend_weights_follow_sozu_rule_and_are_listed_effective() {
    let mut state = apply_all(&sample_orders());
    let mut unweighted = backend("dns", "none", "127.0.0.1:3001", 0);
    unweighted.load_balancing_parameters = None;
    for order_ in [
        order(RequestType::AddBackend(backend(
            "dns",
            "zero",
            "127.0.0.1:3002",
            0,
        ))),
        order(RequestType::AddBackend(backend(
            "dns",
            "neg",
            "127.0.0.1:3003",
            -5,
        ))),
        order(RequestType::AddBackend(backend(
            "dns",
            "ten",
            "127.0.0.1:3004",
            10,
        ))),
        order(RequestType::AddBackend(unweighted)),
    ] {
        assert_eq!(state.dispatch(&order_), Ok(DispatchOutcome::Applied));
    }
    let info = state.cluster_information("dns").expect("cluster dns");
    let weight_of = |id: &str| {
        info.backends
            .iter()
            .find(|b| b.backend_id == id)
            .and_then(|b| b.load_balancing_parameters)
            .map(|p| p.weight)
    };
    assert_eq!(weight_of("zero"), Some(1));
    assert_eq!(weight_of("neg"), Some(1));
    assert_eq!(weight_of("ten"), Some(10));
    assert_eq!(weight_of("none"), Some(100));
    // The stored form replays to the same state (state files, reload).
    let rebuilt = ConfigState::from_requests(&state.generate_requests()).expect("replay");
    assert_eq!(rebuilt, state);
}

#[test]
fn broadcast_multicast_and_unspecified_backends_are_refused() {
    let mut state = apply_all(&sample_orders());
    for bad in [
        "255.255.255.255:53",
        "239.1.2.3:53",
        "[ff02::1]:53",
        "0.0.0.0:53",
    ] {
        assert_refused(
            &mut state,
            add_backend("dns", "bad", bad),
            &["address", "is not a backend"],
        );
    }
    state
        .dispatch(&add_backend("dns", "good", "10.0.0.255:53"))
        .expect("a unicast address ending in .255 is a backend");
}
