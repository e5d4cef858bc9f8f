//! Command lines → exact orders, aliases → the same orders, answers → text.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use clap::{CommandFactory, Parser};
use sozu_command_lib::command::{
    filtered_metrics::Inner, request::RequestType, response_content::ContentType, AddBackend,
    AggregatedMetrics, BackendMetrics, Cluster, ClusterInformation, ClusterInformations,
    ClusterMetrics, FilteredMetrics, FrontendFilters, HardStop, ListClusters,
    LoadBalancingAlgorithms, LoadBalancingParams, PathRule, PathRuleKind, QueryMetricsOptions,
    Request, RequestHttpFrontend, RequestUdpFrontend, Response, ResponseContent, ResponseStatus,
    RulePosition, RunState, UdpAffinityKey, UdpClusterConfig, UdpHealthConfig, UdpHealthMode,
    UdpListenerConfig, UpdateUdpListenerConfig, WorkerInfo, WorkerInfos,
};

use super::render;
use super::request::{plan, Plan, PlanError, Protocols, View};
use crate::cli::Cli;

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

/// `sozu <args>` parsed by clap.
fn try_parse(args: &[&str]) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(std::iter::once("sozu").chain(args.iter().copied()))
}

fn parse(args: &[&str]) -> Cli {
    try_parse(args).unwrap_or_else(|e| panic!("{args:?} should parse: {e}"))
}

/// What clap says refusing `sozu <args>`.
fn refused(args: &[&str]) -> clap::Error {
    match try_parse(args) {
        Ok(_) => panic!("{args:?} should be refused"),
        Err(e) => e,
    }
}

/// The plan of a command line, run from `/srv`.
fn plan_of(args: &[&str]) -> Plan {
    plan(&parse(args).command, Path::new("/srv"))
        .unwrap_or_else(|e| panic!("{args:?} should plan: {e}"))
}

/// The orders of a command line, run from `/srv`.
fn orders(args: &[&str]) -> Vec<Request> {
    plan_of(args)
        .steps
        .into_iter()
        .map(|step| step.request)
        .collect()
}

fn one(args: &[&str]) -> RequestType {
    let mut orders = orders(args);
    assert_eq!(orders.len(), 1, "{args:?} should send one order");
    orders.remove(0).request_type.unwrap()
}

#[test]
fn clap_tree_is_consistent() {
    Cli::command().debug_assert();
}

#[test]
fn cluster_add_with_udp_knobs_builds_a_udp_cluster() {
    let order = one(&[
        "cluster",
        "add",
        "-i",
        "dns",
        "--responses",
        "1",
        "--affinity-key",
        "source-ip-port",
    ]);
    assert_eq!(
        order,
        RequestType::AddCluster(Cluster {
            cluster_id: "dns".into(),
            load_balancing: LoadBalancingAlgorithms::RoundRobin as i32,
            udp: Some(UdpClusterConfig {
                affinity_key: Some(UdpAffinityKey::SourceIpPort as i32),
                responses: Some(1),
                ..Default::default()
            }),
            ..Default::default()
        })
    );
}

#[test]
fn cluster_add_sets_every_udp_knob_and_health() {
    let order = one(&[
        "cluster",
        "add",
        "-i",
        "game",
        "--load-balancing-policy",
        "maglev",
        "--requests",
        "5",
        "--send-proxy-protocol",
        "--proxy-protocol-every-datagram",
        "--front-timeout",
        "120",
        "--back-timeout",
        "90",
        "--max-pending-datagrams",
        "8",
        "--max-pending-bytes",
        "4096",
        "--keep-flows-on-backend-removal",
        "--one-way",
        "--flow-key",
        "quic-connection-id",
        "--quic-cid-length",
        "16",
        "--health-mode",
        "udp",
        "--health-tcp-port",
        "8080",
        "--health-rise",
        "4",
        "--health-fall",
        "5",
        "--health-fail-open",
        "false",
        "--health-udp-payload",
        "hex:00ff",
        "--health-interval",
        "7",
        "--health-timeout",
        "3",
    ]);
    let RequestType::AddCluster(cluster) = order else {
        panic!("not add_cluster: {order:?}");
    };
    assert_eq!(
        cluster.load_balancing,
        LoadBalancingAlgorithms::Maglev as i32
    );
    assert_eq!(
        cluster.udp,
        Some(UdpClusterConfig {
            affinity_key: None,
            responses: None,
            requests: Some(5),
            send_proxy_protocol: Some(true),
            proxy_protocol_every_datagram: Some(true),
            health: Some(UdpHealthConfig {
                mode: Some(UdpHealthMode::UdpProbe as i32),
                tcp_port: Some(8080),
                rise: Some(4),
                fall: Some(5),
                fail_open: Some(false),
                udp_probe_payload: Some(vec![0x00, 0xff]),
                probe_interval_seconds: Some(7),
                probe_timeout_seconds: Some(3),
            }),
            front_timeout: Some(120),
            back_timeout: Some(90),
            max_pending_datagrams: Some(8),
            max_pending_bytes: Some(4096),
            keep_flows_on_backend_removal: Some(true),
            flow_key: Some(1),
            one_way: Some(true),
            quic_cid_length: Some(16),
            quic_lb_config_id: None,
            quic_lb_server_id_length: None,
            quic_lb_nonce_length: None,
        })
    );
}

#[test]
fn quic_lb_flags_reach_the_cluster_and_backend_orders() {
    let RequestType::AddCluster(cluster) = one(&[
        "cluster",
        "add",
        "-i",
        "q",
        "--flow-key",
        "quic-connection-id",
        "--quic-lb-config-id",
        "2",
        "--quic-lb-server-id-length",
        "1",
        "--quic-lb-nonce-length",
        "6",
    ]) else {
        panic!("not add_cluster");
    };
    let udp = cluster.udp.expect("udp knobs");
    assert_eq!(
        (
            udp.quic_lb_config_id,
            udp.quic_lb_server_id_length,
            udp.quic_lb_nonce_length
        ),
        (Some(2), Some(1), Some(6))
    );
    let backend_add = |server_id| {
        [
            "backend",
            "add",
            "-i",
            "q",
            "--backend-id",
            "b1",
            "-a",
            "10.0.0.1:443",
            "--quic-lb-server-id",
            server_id,
        ]
    };
    assert_eq!(
        one(&backend_add("0A1b")),
        RequestType::AddBackend(AddBackend {
            cluster_id: "q".into(),
            backend_id: "b1".into(),
            address: addr("10.0.0.1:443").into(),
            quic_lb_server_id: Some(vec![0x0a, 0x1b]),
            ..Default::default()
        })
    );
    for (flag, bad) in [
        ("--quic-lb-config-id", "7"),
        ("--quic-lb-server-id-length", "16"),
        ("--quic-lb-nonce-length", "3"),
    ] {
        let err = refused(&["cluster", "add", "-i", "q", flag, bad]).to_string();
        assert!(err.contains(flag), "{err}");
    }
    for bad in ["", "0", "zz", "000102030405060708090a0b0c0d0e0f"] {
        let err = refused(&backend_add(bad)).to_string();
        assert!(err.contains("--quic-lb-server-id"), "{bad}: {err}");
    }
}

#[test]
fn quic_cid_length_out_of_range_is_refused_by_the_cli() {
    for bad in ["0", "21"] {
        let err = refused(&[
            "cluster",
            "add",
            "-i",
            "q",
            "--flow-key",
            "quic-connection-id",
            "--quic-cid-length",
            bad,
        ])
        .to_string();
        assert!(err.contains("--quic-cid-length"), "{err}");
    }
}

#[test]
fn cluster_without_udp_knobs_is_not_udp_unless_forced() {
    let RequestType::AddCluster(plain) = one(&["cluster", "add", "-i", "web"]) else {
        panic!("not add_cluster");
    };
    assert_eq!(plain.udp, None);
    let RequestType::AddCluster(forced) = one(&["cluster", "add", "-i", "dns", "--udp"]) else {
        panic!("not add_cluster");
    };
    assert_eq!(forced.udp, Some(UdpClusterConfig::default()));
}

#[test]
fn a_health_flag_without_mode_means_tcp_probing() {
    let RequestType::AddCluster(cluster) =
        one(&["cluster", "add", "-i", "dns", "--health-rise", "3"])
    else {
        panic!("not add_cluster");
    };
    let health = cluster.udp.unwrap().health.unwrap();
    assert_eq!(health.mode, Some(UdpHealthMode::TcpProbe as i32));
    assert_eq!(health.rise, Some(3));
}

#[test]
fn udp_listener_add_is_one_active_add_with_defaults() {
    let orders = orders(&[
        "udp",
        "listener",
        "add",
        "-a",
        "127.0.0.1:5353",
        "--max-flows",
        "10",
    ]);
    let config = UdpListenerConfig {
        address: addr("127.0.0.1:5353").into(),
        front_timeout: 30,
        back_timeout: 30,
        max_rx_datagram_size: 1500,
        max_flows: 10,
        active: true,
        ..Default::default()
    };
    // One order: a listener that cannot be activated is refused whole.
    assert_eq!(
        orders,
        vec![Request {
            request_type: Some(RequestType::AddUdpListener(config)),
        }]
    );
    let inactive = one(&[
        "udp",
        "listener",
        "add",
        "-a",
        "127.0.0.1:5353",
        "--inactive",
    ]);
    assert!(
        matches!(inactive, RequestType::AddUdpListener(ref c) if !c.active),
        "{inactive:?}"
    );
}

#[test]
fn inactive_listener_add_sends_only_the_add() {
    let orders = orders(&["udp", "listener", "add", "-a", "[::1]:53", "--inactive"]);
    assert_eq!(orders.len(), 1);
    assert!(matches!(
        orders[0].request_type,
        Some(RequestType::AddUdpListener(_))
    ));
}

#[test]
fn udp_listener_update_carries_only_the_given_fields() {
    assert_eq!(
        one(&[
            "udp",
            "listener",
            "update",
            "-a",
            "127.0.0.1:5353",
            "--max-flows",
            "100",
            "--public-address",
            "192.0.2.1:53",
        ]),
        RequestType::UpdateUdpListener(UpdateUdpListenerConfig {
            address: addr("127.0.0.1:5353").into(),
            public_address: Some(addr("192.0.2.1:53").into()),
            max_flows: Some(100),
            ..Default::default()
        })
    );
}

#[test]
fn an_update_without_settings_is_refused_before_connecting() {
    let cli = parse(&["udp", "listener", "update", "-a", "127.0.0.1:5353"]);
    assert_eq!(
        plan(&cli.command, Path::new("/")),
        Err(PlanError::NothingToUpdate {
            listener: addr("127.0.0.1:5353")
        })
    );
}

#[test]
fn sozu_spellings_send_the_same_orders() {
    let pairs: &[(&[&str], &[&str])] = &[
        (
            &[
                "listener",
                "udp",
                "add",
                "-a",
                "127.0.0.1:53",
                "--max-flows",
                "5",
            ],
            &[
                "udp",
                "listener",
                "add",
                "-a",
                "127.0.0.1:53",
                "--max-flows",
                "5",
            ],
        ),
        (
            &["listener", "tcp", "remove", "-a", "127.0.0.1:80"],
            &["tcp", "listener", "remove", "-a", "127.0.0.1:80"],
        ),
        (
            &[
                "listener",
                "http",
                "deactivate",
                "--address",
                "127.0.0.1:80",
            ],
            &["http", "listener", "deactivate", "-a", "127.0.0.1:80"],
        ),
        (
            &[
                "frontend",
                "udp",
                "add",
                "--id",
                "dns",
                "--address",
                "127.0.0.1:53",
            ],
            &["udp", "frontend", "add", "-i", "dns", "-a", "127.0.0.1:53"],
        ),
        (
            &[
                "frontend",
                "tcp",
                "remove",
                "--cluster-id",
                "db",
                "-a",
                "127.0.0.1:5432",
            ],
            &[
                "tcp",
                "frontend",
                "remove",
                "-i",
                "db",
                "-a",
                "127.0.0.1:5432",
            ],
        ),
        (
            &[
                "frontend",
                "http",
                "add",
                "-i",
                "w",
                "-a",
                "127.0.0.1:80",
                "--hostname",
                "a.b",
                "--path-prefix",
                "/api",
            ],
            &[
                "http",
                "frontend",
                "add",
                "-i",
                "w",
                "-a",
                "127.0.0.1:80",
                "--hostname",
                "a.b",
                "--path",
                "/api",
            ],
        ),
        (
            &["query", "clusters", "-i", "dns"],
            &["cluster", "list", "-i", "dns"],
        ),
        (
            &["query", "metrics", "--clusters", "a,b"],
            &["metrics", "get", "--clusters", "a", "--clusters", "b"],
        ),
        (&["query", "workers"], &["status"]),
        (
            &[
                "cluster",
                "add",
                "-i",
                "x",
                "--load-balancing-policy",
                "roundrobin",
            ],
            &[
                "cluster",
                "add",
                "-i",
                "x",
                "--load-balancing-policy",
                "round_robin",
            ],
        ),
    ];
    for (sozu, ours) in pairs {
        assert_eq!(orders(sozu), orders(ours), "{sozu:?} vs {ours:?}");
    }
}

#[test]
fn udp_frontend_carries_tags() {
    assert_eq!(
        one(&[
            "udp",
            "frontend",
            "add",
            "-i",
            "dns",
            "-a",
            "127.0.0.1:53",
            "--tags",
            "env=prod,team=net"
        ]),
        RequestType::AddUdpFrontend(RequestUdpFrontend {
            cluster_id: "dns".into(),
            address: addr("127.0.0.1:53").into(),
            tags: BTreeMap::from([
                ("env".to_owned(), "prod".to_owned()),
                ("team".to_owned(), "net".to_owned()),
            ]),
        })
    );
}

#[test]
fn http_frontend_routes_hostname_and_path_prefix() {
    assert_eq!(
        one(&[
            "http",
            "frontend",
            "add",
            "-i",
            "web",
            "-a",
            "127.0.0.1:8080",
            "--hostname",
            "example.com",
            "--path",
            "/api"
        ]),
        RequestType::AddHttpFrontend(RequestHttpFrontend {
            cluster_id: Some("web".into()),
            address: addr("127.0.0.1:8080").into(),
            hostname: "example.com".into(),
            path: PathRule {
                kind: PathRuleKind::Prefix as i32,
                value: "/api".into(),
            },
            position: RulePosition::Tree as i32,
            ..Default::default()
        })
    );
}

#[test]
fn backend_add_carries_weight() {
    assert_eq!(
        one(&[
            "backend",
            "add",
            "-i",
            "dns",
            "--backend-id",
            "b1",
            "-a",
            "10.0.0.1:53",
            "--weight",
            "50"
        ]),
        RequestType::AddBackend(AddBackend {
            cluster_id: "dns".into(),
            backend_id: "b1".into(),
            address: addr("10.0.0.1:53").into(),
            load_balancing_parameters: Some(LoadBalancingParams { weight: 50 }),
            ..Default::default()
        })
    );
}

#[test]
fn lifecycle_orders() {
    assert_eq!(
        one(&["shutdown", "--hard"]),
        RequestType::HardStop(HardStop {})
    );
    assert!(matches!(one(&["shutdown"]), RequestType::SoftStop(_)));
    assert_eq!(
        one(&["upgrade", "--worker", "2"]),
        RequestType::UpgradeWorker(2)
    );
    assert!(matches!(one(&["upgrade"]), RequestType::UpgradeMain(_)));
    assert!(matches!(
        one(&["upgrade", "--main-only"]),
        RequestType::UpgradeMain(_)
    ));
    assert_eq!(
        one(&["reload"]),
        RequestType::ReloadConfiguration(String::new())
    );
    assert_eq!(
        one(&["reload", "-f", "new.toml"]),
        RequestType::ReloadConfiguration("/srv/new.toml".into())
    );
    assert_eq!(
        one(&["state", "save", "-f", "state.json"]),
        RequestType::SaveState("/srv/state.json".into())
    );
    assert_eq!(
        one(&["state", "load", "-f", "/var/lib/sozu/state"]),
        RequestType::LoadState("/var/lib/sozu/state".into())
    );
}

#[test]
fn listings_choose_their_order() {
    assert_eq!(
        one(&["cluster", "list"]),
        RequestType::ListClusters(ListClusters {})
    );
    assert_eq!(
        one(&["cluster", "list", "-i", "dns"]),
        RequestType::QueryClusterById("dns".into())
    );
    assert_eq!(
        one(&["frontend", "list"]),
        RequestType::ListFrontends(FrontendFilters::default())
    );
    assert_eq!(
        one(&["frontend", "list", "--http", "--domain", "example.com"]),
        RequestType::ListFrontends(FrontendFilters {
            http: true,
            domain: Some("example.com".into()),
            ..Default::default()
        })
    );
    assert_eq!(
        one(&[
            "metrics",
            "get",
            "--backends",
            "b1,b2",
            "--names",
            "bytes_in"
        ]),
        RequestType::QueryMetrics(QueryMetricsOptions {
            backend_ids: vec!["b1".into(), "b2".into()],
            metric_names: vec!["bytes_in".into()],
            ..Default::default()
        })
    );
    let step = &plan_of(&["udp", "listener", "list"]).steps[0];
    assert_eq!(
        step.view,
        View::Listeners(Protocols {
            http: false,
            https: false,
            tcp: false,
            udp: true
        })
    );
}

#[test]
fn bad_values_are_clap_errors() {
    for args in [
        &["udp", "listener", "add", "-a", "not-an-address"][..],
        &["cluster", "add", "-i", "x", "--affinity-key", "nope"],
        &["cluster", "add", "-i", "x", "--responses", "-1"],
        &["cluster", "add", "-i", "x", "--health-fail-open", "maybe"],
        &[
            "cluster",
            "add",
            "-i",
            "x",
            "--health-udp-payload",
            "hex:abc",
        ],
        &[
            "udp",
            "frontend",
            "add",
            "-i",
            "x",
            "-a",
            "127.0.0.1:1",
            "--tags",
            "novalue",
        ],
        &[
            "udp",
            "listener",
            "add",
            "-a",
            "127.0.0.1:1",
            "--max-rx-datagram-size",
            "70000",
        ],
        &["udp", "listener", "add", "-a", "127.0.0.1:1", "--bogus"],
    ] {
        let error = refused(args);
        assert_ne!(
            error.kind(),
            clap::error::ErrorKind::DisplayHelp,
            "{args:?}"
        );
    }
}

fn ok(content: ContentType) -> Response {
    Response {
        status: ResponseStatus::Ok as i32,
        message: String::new(),
        content: Some(ResponseContent {
            content_type: Some(content),
        }),
    }
}

/// Cluster `dns` with the UDP knobs `udp`.
fn dns_cluster(udp: UdpClusterConfig) -> Cluster {
    Cluster {
        cluster_id: "dns".into(),
        udp: Some(udp),
        ..Default::default()
    }
}

/// A `cluster list` answer of one cluster; with `routes`, a UDP frontend
/// on the first address and backend `b1` at the second.
fn cluster_listing(configuration: Cluster, routes: Option<(&str, &str)>) -> Response {
    let id = configuration.cluster_id.clone();
    let (udp_frontends, backends) = match routes {
        Some((frontend, backend)) => (
            vec![RequestUdpFrontend {
                cluster_id: id.clone(),
                address: addr(frontend).into(),
                ..Default::default()
            }],
            vec![AddBackend {
                cluster_id: id,
                backend_id: "b1".into(),
                address: addr(backend).into(),
                ..Default::default()
            }],
        ),
        None => (Vec::new(), Vec::new()),
    };
    ok(ContentType::Clusters(ClusterInformations {
        vec: vec![ClusterInformation {
            configuration: Some(configuration),
            udp_frontends,
            backends,
            ..Default::default()
        }],
    }))
}

#[test]
fn status_renders_a_worker_table() {
    let response = ok(ContentType::Workers(WorkerInfos {
        vec: vec![
            WorkerInfo {
                id: 1,
                pid: 4242,
                run_state: RunState::NotAnswering as i32,
                ..Default::default()
            },
            WorkerInfo {
                id: 0,
                pid: 4241,
                run_state: RunState::Running as i32,
                ..Default::default()
            },
        ],
    }));
    assert_eq!(
        render::human(&View::Workers, &response),
        "WORKER  PID   STATE\n0       4241  running\n1       4242  not_answering\n"
    );
}

#[test]
fn status_shows_a_booting_worker_with_its_replay_progress() {
    let response = ok(ContentType::Workers(WorkerInfos {
        vec: vec![
            WorkerInfo {
                id: 0,
                pid: 4241,
                run_state: RunState::Running as i32,
                serving: Some(true),
                ..Default::default()
            },
            WorkerInfo {
                id: 1,
                pid: 4242,
                run_state: RunState::Running as i32,
                serving: Some(false),
                state_orders_applied: Some(1200),
                state_orders_total: Some(20001),
            },
            WorkerInfo {
                id: 2,
                pid: 4243,
                run_state: RunState::NotAnswering as i32,
                serving: Some(false),
                ..Default::default()
            },
        ],
    }));
    assert_eq!(
        render::human(&View::Workers, &response),
        "WORKER  PID   STATE\n\
         0       4241  running\n\
         1       4242  booting (1200/20001 state orders)\n\
         2       4243  not_answering, booting\n"
    );
    let value = render::json(&View::Workers, &response);
    assert_eq!(value["content"]["workers"]["vec"][1]["serving"], false);
    assert_eq!(
        value["content"]["workers"]["vec"][1]["state_orders_applied"],
        1200
    );
}

#[test]
fn cluster_list_shows_knobs_frontends_and_backends() {
    let response = cluster_listing(
        dns_cluster(UdpClusterConfig {
            responses: Some(1),
            affinity_key: Some(UdpAffinityKey::SourceIpPort as i32),
            ..Default::default()
        }),
        Some(("127.0.0.1:53", "10.0.0.1:53")),
    );
    let text = render::human(&View::Clusters, &response);
    assert!(text.starts_with("cluster dns (udp)\n"), "{text}");
    assert!(text.contains("affinity_key=source_ip_port"), "{text}");
    assert!(text.contains("responses=1 requests=unlimited"), "{text}");
    assert!(text.contains("udp       127.0.0.1:53"), "{text}");
    assert!(text.contains("b1       10.0.0.1:53"), "{text}");
}

#[test]
fn metrics_print_one_line_per_metric_with_scope() {
    let metric = |value| FilteredMetrics {
        inner: Some(Inner::Count(value)),
    };
    let response = ok(ContentType::Metrics(AggregatedMetrics {
        main: BTreeMap::from([("flows.active".to_owned(), metric(3))]),
        clusters: BTreeMap::from([(
            "dns".to_owned(),
            ClusterMetrics {
                cluster: BTreeMap::from([("datagrams.in".to_owned(), metric(10))]),
                backends: vec![BackendMetrics {
                    backend_id: "b1".into(),
                    metrics: BTreeMap::from([("datagrams.out".to_owned(), metric(7))]),
                }],
            },
        )]),
        ..Default::default()
    }));
    let text = render::human(&View::Metrics(Default::default()), &response);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert!(
        lines[1].starts_with("main") && lines[1].ends_with("count 3"),
        "{text}"
    );
    assert!(lines[2].starts_with("cluster dns ") && lines[2].ends_with("count 10"));
    assert!(lines[3].starts_with("cluster dns backend b1") && lines[3].ends_with("count 7"));
}

#[test]
fn json_names_the_status_and_keys_content_by_kind() {
    let response = ok(ContentType::Workers(WorkerInfos {
        vec: vec![WorkerInfo {
            id: 0,
            pid: 7,
            run_state: 0,
            ..Default::default()
        }],
    }));
    let value = render::json(&View::Message, &response);
    assert_eq!(value["status"], "OK");
    assert_eq!(value["content"]["workers"]["vec"][0]["pid"], 7);
    let failure = Response {
        status: ResponseStatus::Failure as i32,
        message: "no cluster x".into(),
        content: None,
    };
    let value = render::json(&View::Message, &failure);
    assert_eq!(value["status"], "FAILURE");
    assert_eq!(value["message"], "no cluster x");
    assert!(value["content"].is_null());
}

#[test]
fn an_answer_without_content_prints_its_message() {
    let response = Response {
        status: ResponseStatus::Ok as i32,
        message: "listener added".into(),
        content: None,
    };
    assert_eq!(
        render::human(&View::Listeners(Protocols::ALL), &response),
        "listener added\n"
    );
}

#[test]
fn socket_buffers_are_set_on_add_and_refused_on_update() {
    let RequestType::AddUdpListener(config) = orders(&[
        "udp",
        "listener",
        "add",
        "-a",
        "127.0.0.1:5353",
        "--recv-buffer-size",
        "4194304",
        "--send-buffer-size",
        "1048576",
    ])
    .remove(0)
    .request_type
    .unwrap() else {
        panic!("not add_udp_listener");
    };
    assert_eq!(config.recv_buffer_size, Some(4_194_304));
    assert_eq!(config.send_buffer_size, Some(1_048_576));
    // `update` cannot change them (no re-bind), so clap refuses the flag.
    refused(&[
        "udp",
        "listener",
        "update",
        "-a",
        "127.0.0.1:5353",
        "--recv-buffer-size",
        "1",
    ]);
}

#[test]
fn plain_upgrade_then_replaces_every_worker_but_main_only_and_worker_do_not() {
    let of = |args: &[&str]| plan_of(args).then_upgrade_every_worker;
    assert!(of(&["upgrade"]));
    assert!(!of(&["upgrade", "--main-only"]));
    assert!(!of(&["upgrade", "--worker", "1"]));
    refused(&["upgrade", "--worker", "1", "--main-only"]);
}

#[test]
fn worker_restart_reload_dry_run_and_cluster_replace_plans() {
    assert_eq!(
        one(&["worker", "restart", "3"]),
        RequestType::UpgradeWorker(3)
    );
    assert_eq!(
        one(&["reload", "--dry-run", "-f", "new.toml"]),
        RequestType::PreviewReload("/srv/new.toml".into())
    );
    assert_eq!(
        plan_of(&["cluster", "add", "-i", "dns"]).refuse_existing_cluster,
        Some("dns".to_owned()),
        "a plain add first checks that the id is free"
    );
    assert_eq!(
        plan_of(&["cluster", "add", "-i", "dns", "--replace"]).refuse_existing_cluster,
        None
    );
    // The hidden process form is parsed in master::tests
    // (the_worker_command_line_carries_every_setting_the_configuration_gives).
}

#[test]
fn logging_and_metrics_switches_send_sozus_orders() {
    use sozu_command_lib::command::MetricsConfiguration;
    assert_eq!(
        one(&["logging", "debug"]),
        RequestType::Logging("debug".to_owned())
    );
    assert_eq!(
        one(&["logging", "info,sozu_lib=trace"]),
        RequestType::Logging("info,sozu_lib=trace".to_owned())
    );
    for (word, value) in [
        ("enable", MetricsConfiguration::Enabled),
        ("disable", MetricsConfiguration::Disabled),
        ("clear", MetricsConfiguration::Clear),
    ] {
        assert_eq!(
            one(&["metrics", word]),
            RequestType::ConfigureMetrics(value as i32)
        );
    }
}

#[test]
fn json_prints_addresses_as_strings_and_enums_by_name() {
    let response = cluster_listing(
        Cluster {
            load_balancing: LoadBalancingAlgorithms::Maglev as i32,
            ..dns_cluster(UdpClusterConfig {
                affinity_key: Some(UdpAffinityKey::SourceIpPort as i32),
                ..Default::default()
            })
        },
        Some(("127.0.0.1:5353", "[2001:db8::1]:53")),
    );
    let value = render::json(&View::Clusters, &response);
    let cluster = &value["content"]["clusters"]["vec"][0];
    assert_eq!(cluster["configuration"]["load_balancing"], "MAGLEV");
    assert_eq!(
        cluster["configuration"]["udp"]["affinity_key"],
        "SOURCE_IP_PORT"
    );
    assert_eq!(cluster["udp_frontends"][0]["address"], "127.0.0.1:5353");
    assert_eq!(cluster["backends"][0]["address"], "[2001:db8::1]:53");

    let workers = ok(ContentType::Workers(WorkerInfos {
        vec: vec![WorkerInfo {
            id: 0,
            pid: 7,
            run_state: RunState::Stopping as i32,
            ..Default::default()
        }],
    }));
    let value = render::json(&View::Workers, &workers);
    assert_eq!(
        value["content"]["workers"]["vec"][0]["run_state"],
        "STOPPING"
    );
}

fn two_worker_metrics() -> Response {
    let gauge = |value| FilteredMetrics {
        inner: Some(Inner::Gauge(value)),
    };
    let per_worker = |n| sozu_command_lib::command::WorkerMetrics {
        proxy: BTreeMap::from([
            ("udp.active_flows".to_owned(), gauge(n)),
            ("udp.active_flows@127.0.0.1:5353".to_owned(), gauge(n)),
            ("udp.active_flows@127.0.0.1:5354".to_owned(), gauge(0)),
        ]),
        clusters: BTreeMap::new(),
    };
    ok(ContentType::Metrics(AggregatedMetrics {
        proxying: BTreeMap::from([
            ("udp.active_flows".to_owned(), gauge(5)),
            ("udp.active_flows@127.0.0.1:5353".to_owned(), gauge(5)),
            ("udp.active_flows@127.0.0.1:5354".to_owned(), gauge(0)),
        ]),
        workers: BTreeMap::from([
            ("0".to_owned(), per_worker(2)),
            ("1".to_owned(), per_worker(3)),
        ]),
        ..Default::default()
    }))
}

#[test]
fn metrics_show_the_sum_or_per_worker_figures_and_list_names() {
    use super::request::MetricsView;
    let response = two_worker_metrics();
    let sum = render::human(&View::Metrics(MetricsView::default()), &response);
    assert_eq!(sum.lines().count(), 4, "{sum}");
    assert!(!sum.contains("worker"), "{sum}");
    let per_worker = render::human(
        &View::Metrics(MetricsView {
            workers: true,
            ..Default::default()
        }),
        &response,
    );
    assert_eq!(per_worker.lines().count(), 7, "{per_worker}");
    assert!(
        per_worker.lines().skip(1).all(|l| l.starts_with("worker ")),
        "{per_worker}"
    );
    assert!(per_worker.contains("gauge 3"), "{per_worker}");
    let list = render::human(
        &View::Metrics(MetricsView {
            list: true,
            ..Default::default()
        }),
        &response,
    );
    assert_eq!(
        list,
        "udp.active_flows\nudp.active_flows@127.0.0.1:5353\nudp.active_flows@127.0.0.1:5354\n"
    );
}

#[test]
fn per_listener_metric_names_are_filtered_exactly() {
    let plan = plan_of(&[
        "metrics",
        "get",
        "--names",
        "udp.active_flows@127.0.0.1:5353",
    ]);
    let step = plan.steps.last().unwrap();
    let Some(RequestType::QueryMetrics(options)) = &step.request.request_type else {
        panic!("{step:?}");
    };
    assert_eq!(options.metric_names, ["udp.active_flows"]);
    let text = render::human(&step.view, &two_worker_metrics());
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(
        text.contains("udp.active_flows@127.0.0.1:5353  gauge 5"),
        "{text}"
    );
}

#[test]
fn metrics_for_a_named_cluster_check_that_it_exists_first() {
    let plan = plan_of(&["metrics", "get", "--clusters", "nosuch"]);
    assert_eq!(plan.steps.len(), 2);
    assert_eq!(plan.steps[0].view, View::Check);
    assert_eq!(
        plan.steps[0].request.request_type,
        Some(RequestType::QueryClusterById("nosuch".into()))
    );
}

#[test]
fn negative_numbers_and_out_of_range_values_get_clear_messages() {
    let listener_add = |flag: &str, value: &str| {
        refused(&["udp", "listener", "add", "-a", "127.0.0.1:53", flag, value]).to_string()
    };
    let e = listener_add("--front-timeout", "-1");
    assert!(e.contains("must be 0 or more, got -1"), "{e}");
    let e = listener_add("--max-rx-datagram-size", "65508");
    assert!(e.contains("65507"), "{e}");
    let e = refused(&[
        "backend",
        "add",
        "-i",
        "c",
        "--backend-id",
        "b",
        "-a",
        "127.0.0.1:53",
        "--weight",
        "256",
    ])
    .to_string();
    assert!(e.contains("255"), "{e}");
}

#[test]
fn completions_and_man_page_cover_the_command_line() {
    for shell in [
        clap_complete::Shell::Bash,
        clap_complete::Shell::Zsh,
        clap_complete::Shell::Fish,
    ] {
        let mut out = Vec::new();
        crate::cli::write_completions(shell, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        for word in ["reload", "shutdown", "cluster", "front-timeout"] {
            assert!(text.contains(word), "{shell}: {word} missing");
        }
    }
    let mut man = Vec::new();
    crate::cli::write_manpage(&mut man).unwrap();
    let man = String::from_utf8(man).unwrap();
    assert!(man.contains(".TH sozu 1"), "{man}");
    assert!(man.contains("shutdown"), "{man}");
    // The hidden subcommands stay out of the help a person reads.
    let mut help = Vec::new();
    Cli::command().write_long_help(&mut help).unwrap();
    let help = String::from_utf8(help).unwrap();
    assert!(
        !help.contains("completions") && !help.contains("manpage"),
        "{help}"
    );
}

#[test]
fn a_cluster_timeout_of_zero_reads_as_the_listeners() {
    let response = cluster_listing(
        dns_cluster(UdpClusterConfig {
            front_timeout: Some(0),
            back_timeout: Some(7),
            ..Default::default()
        }),
        None,
    );
    let text = render::human(&View::Clusters, &response);
    assert!(
        text.contains("front_timeout=listener's back_timeout=7s"),
        "{text}"
    );
}
