//! Command line → orders: turns a parsed [`Command`] into the exact
//! [`Request`]s to send and how to show each answer.
//!
//! Pure: no socket, no clock, no environment (the working directory is a
//! parameter). Both spellings of a command (`udp listener add` and Sōzu's
//! `listener udp add`) carry the same argument types and end up in the same
//! builder function here, so they cannot drift apart.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;

use sozu_command_lib::command::{
    request::RequestType, ActivateListener, AddBackend, CheckState, Cluster, DeactivateListener,
    FrontendFilters, HardStop, HttpListenerConfig, ListClusters, ListListeners, ListenerType,
    LoadBalancingAlgorithms, LoadBalancingParams, MetricsConfiguration, PathRule, PathRuleKind,
    ProxyProtocolConfig, QueryMetricsOptions, RemoveBackend, RemoveListener, Request,
    RequestHttpFrontend, RequestTcpFrontend, RequestUdpFrontend, RulePosition, SoftStop, Status,
    TcpListenerConfig, UdpAffinityKey, UdpClusterConfig, UdpFlowKey, UdpHealthConfig,
    UdpHealthMode, UdpListenerConfig, UpdateHttpListenerConfig, UpdateTcpListenerConfig,
    UpdateUdpListenerConfig, UpgradeMain,
};

use crate::cli::{
    tags_map, AddressFrontendArgs, AffinityKey, BackendCmd, ClusterAddArgs, ClusterCmd,
    ClusterListArgs, Command, FlowKey, FrontendCmd, FrontendListArgs, FrontendOrderCmd, HealthMode,
    HttpCmd, HttpFrontendArgs, HttpListenerCmd, HttpListenerKnobs, ListenerCmd,
    LoadBalancingPolicy, MetricsArgs, MetricsCmd, QueryCmd, StateCmd, TcpCmd, TcpListenerCmd,
    TcpListenerKnobs, UdpClusterKnobs, UdpCmd, UdpListenerCmd, UdpListenerKnobs, UdpSocketBuffers,
    WorkerAction, WorkerCommand,
};

/// Sōzu's default sticky-session cookie name, used when `--sticky-name` is absent.
pub(crate) const DEFAULT_STICKY_NAME: &str = "SOZUBALANCEID";

/// The add order of an HTTP or HTTPS listener (`$config`:
/// `HttpListenerConfig`, `HttpsListenerConfig`) from the HTTP knobs: a knob
/// not given takes the order's default; the `$field: $value` pairs are the
/// kind's own fields.
macro_rules! http_listener_add {
    ($config:ident, $address:expr, $knobs:expr $(, $field:ident: $value:expr)* $(,)?) => {{
        let knobs: &$crate::cli::HttpListenerKnobs = $knobs;
        let defaults = $config::default();
        $config {
            address: $address.into(),
            public_address: knobs.public_address.map(Into::into),
            expect_proxy: knobs.expect_proxy.unwrap_or(defaults.expect_proxy),
            sticky_name: knobs
                .sticky_name
                .clone()
                .unwrap_or_else(|| $crate::ctl::request::DEFAULT_STICKY_NAME.to_owned()),
            front_timeout: knobs.front_timeout.unwrap_or(defaults.front_timeout),
            back_timeout: knobs.back_timeout.unwrap_or(defaults.back_timeout),
            connect_timeout: knobs.connect_timeout.unwrap_or(defaults.connect_timeout),
            request_timeout: knobs.request_timeout.unwrap_or(defaults.request_timeout),
            $($field: $value,)*
            ..defaults
        }
    }};
}
pub(super) use http_listener_add;

/// The update order of an HTTP or HTTPS listener (`$patch`:
/// `UpdateHttpListenerConfig`, `UpdateHttpsListenerConfig`) from the HTTP
/// knobs: a knob not given stays as it is; the `$field: $value` pairs are
/// the kind's own fields.
macro_rules! http_listener_patch {
    ($patch:ident, $address:expr, $knobs:expr $(, $field:ident: $value:expr)* $(,)?) => {{
        let knobs: &$crate::cli::HttpListenerKnobs = $knobs;
        $patch {
            address: $address.into(),
            public_address: knobs.public_address.map(Into::into),
            expect_proxy: knobs.expect_proxy,
            sticky_name: knobs.sticky_name.clone(),
            front_timeout: knobs.front_timeout,
            back_timeout: knobs.back_timeout,
            connect_timeout: knobs.connect_timeout,
            request_timeout: knobs.request_timeout,
            $($field: $value,)*
            ..Default::default()
        }
    }};
}
pub(super) use http_listener_patch;

/// The one order of a listener `update`, unless `patch` changes nothing
/// (it equals `bare`, the patch naming only `listener`): then
/// [`PlanError::NothingToUpdate`].
pub(super) fn update_order<T: PartialEq>(
    listener: SocketAddr,
    patch: T,
    bare: T,
    order: fn(T) -> RequestType,
) -> Result<Vec<Step>, PlanError> {
    if patch == bare {
        return Err(PlanError::NothingToUpdate { listener });
    }
    Ok(vec![message(order(patch))])
}

/// The orders of one command, sent in turn on one connection; the first
/// failure stops the sequence.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Plan {
    pub steps: Vec<Step>,
    /// After the steps, replace every running worker in turn (`sozu upgrade`
    /// with no flag): the worker ids are only known by asking the master.
    pub then_upgrade_every_worker: bool,
    /// Before the steps, make sure no cluster has this id (`cluster add`
    /// without `--replace`: the wire order replaces a cluster whole).
    pub refuse_existing_cluster: Option<String>,
}

/// One order and how to show its final answer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Step {
    pub request: Request,
    pub view: View,
}

/// How an answer is shown to a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum View {
    /// The master's message (or "ok").
    Message,
    /// A check before the real order (e.g. that a cluster exists): its
    /// failure stops the plan with its message; its success prints nothing.
    Check,
    /// Worker table.
    Workers,
    /// Listener table, restricted to these protocols.
    Listeners(Protocols),
    /// Clusters with their frontends, backends and knobs.
    Clusters,
    /// Frontend table, restricted to these protocols.
    Frontends(Protocols),
    /// Certificates: fingerprint and names (`sozu certificate list`).
    Certificates,
    /// One line per metric.
    Metrics(MetricsView),
}

/// What `metrics get` shows of the master's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct MetricsView {
    /// `--workers`: each worker's own figures, not the sum over workers.
    pub workers: bool,
    /// `--list`: the metric names only.
    pub list: bool,
    /// `--names` when one has a per-listener suffix (`udp.active_flows@
    /// 127.0.0.1:5353`): the workers are asked for base names, and a metric
    /// is shown if its name, or its base name, is one of these. Empty: no
    /// such filter.
    pub exact_names: Vec<String>,
}

/// Which protocols a listing shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Protocols {
    pub http: bool,
    pub https: bool,
    pub tcp: bool,
    pub udp: bool,
}

impl Protocols {
    pub(crate) const ALL: Protocols = Protocols {
        http: true,
        https: true,
        tcp: true,
        udp: true,
    };
    pub(super) const fn only(proxy: ListenerType) -> Protocols {
        Protocols {
            http: matches!(proxy, ListenerType::Http),
            https: matches!(proxy, ListenerType::Https),
            tcp: matches!(proxy, ListenerType::Tcp),
            udp: matches!(proxy, ListenerType::Udp),
        }
    }
}

/// A command line that parses but cannot become an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PlanError {
    /// `start` / `worker` are processes, not orders.
    NotAClientCommand(&'static str),
    /// An `update` without any field to change.
    NothingToUpdate { listener: SocketAddr },
    /// An argument that parses but cannot be used (the message says why).
    Invalid(String),
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlanError::NotAClientCommand(name) => {
                write!(f, "`sozu {name}` runs a process, it is not an order")
            }
            PlanError::NothingToUpdate { listener } => write!(
                f,
                "nothing to update on listener {listener}: give at least one setting flag"
            ),
            PlanError::Invalid(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for PlanError {}

/// The orders for `command`. Relative file paths (state files, a reloaded
/// configuration) are resolved against `cwd`, because the master, whose
/// working directory differs, is the one opening them.
pub(crate) fn plan(command: &Command, cwd: &Path) -> Result<Plan, PlanError> {
    let steps = match command {
        Command::Start(_) => return Err(PlanError::NotAClientCommand("start")),
        Command::Worker(WorkerCommand {
            action: Some(WorkerAction::Restart { id }),
            ..
        }) => vec![message(RequestType::UpgradeWorker(*id))],
        Command::Worker(_) => return Err(PlanError::NotAClientCommand("worker")),
        // A loop of queries, run by `ctl::top`.
        Command::Top(_) => {
            return Ok(Plan {
                steps: Vec::new(),
                then_upgrade_every_worker: false,
                refuse_existing_cluster: None,
            })
        }
        Command::Completions { .. } => return Err(PlanError::NotAClientCommand("completions")),
        Command::Manpage => return Err(PlanError::NotAClientCommand("manpage")),
        Command::Status | Command::Query(QueryCmd::Workers) => {
            vec![step(RequestType::Status(Status {}), View::Workers)]
        }
        Command::Shutdown { hard } => {
            let order = if *hard {
                RequestType::HardStop(HardStop {})
            } else {
                RequestType::SoftStop(SoftStop {})
            };
            vec![message(order)]
        }
        Command::Upgrade { worker, main_only } => {
            let order = match worker {
                Some(id) => RequestType::UpgradeWorker(*id),
                None => RequestType::UpgradeMain(UpgradeMain {}),
            };
            return Ok(Plan {
                steps: vec![message(order)],
                then_upgrade_every_worker: worker.is_none() && !main_only,
                refuse_existing_cluster: None,
            });
        }
        Command::Reload { file, dry_run } => {
            // An empty path asks the master to re-read its own file.
            let path = file
                .as_ref()
                .map(|file| cwd.join(file).to_string_lossy().into_owned())
                .unwrap_or_default();
            if *dry_run {
                vec![message(RequestType::PreviewReload(path))]
            } else {
                vec![message(RequestType::ReloadConfiguration(path))]
            }
        }
        Command::State(StateCmd::Save(args)) => vec![message(RequestType::SaveState(
            cwd.join(&args.file).to_string_lossy().into_owned(),
        ))],
        Command::State(StateCmd::Load(args)) => vec![message(RequestType::LoadState(
            cwd.join(&args.file).to_string_lossy().into_owned(),
        ))],
        Command::Metrics(MetricsCmd::Enable) => {
            vec![configure_metrics(MetricsConfiguration::Enabled)]
        }
        Command::Metrics(MetricsCmd::Disable) => {
            vec![configure_metrics(MetricsConfiguration::Disabled)]
        }
        Command::Metrics(MetricsCmd::Clear) => vec![configure_metrics(MetricsConfiguration::Clear)],
        Command::Logging { level } => vec![message(RequestType::Logging(level.clone()))],
        Command::State(StateCmd::Check) => vec![message(RequestType::CheckState(CheckState {}))],
        Command::Metrics(MetricsCmd::Get(args)) | Command::Query(QueryCmd::Metrics(args)) => {
            metrics(args)
        }
        Command::Udp(UdpCmd::Listener(cmd)) | Command::Listener(ListenerCmd::Udp(cmd)) => {
            udp_listener(cmd)?
        }
        Command::Tcp(TcpCmd::Listener(cmd)) | Command::Listener(ListenerCmd::Tcp(cmd)) => {
            tcp_listener(cmd)?
        }
        Command::Http(HttpCmd::Listener(cmd)) | Command::Listener(ListenerCmd::Http(cmd)) => {
            http_listener(cmd)?
        }
        Command::Listener(ListenerCmd::List) => vec![list_listeners(Protocols::ALL)],
        Command::Udp(UdpCmd::Frontend(cmd)) | Command::Frontend(FrontendCmd::Udp(cmd)) => {
            vec![udp_frontend(cmd)]
        }
        Command::Tcp(TcpCmd::Frontend(cmd)) | Command::Frontend(FrontendCmd::Tcp(cmd)) => {
            vec![tcp_frontend(cmd)]
        }
        Command::Http(HttpCmd::Frontend(cmd)) | Command::Frontend(FrontendCmd::Http(cmd)) => {
            vec![http_frontend(cmd)]
        }
        Command::Frontend(FrontendCmd::List(args)) => vec![list_frontends(args)],
        Command::Certificate(cmd) => super::tls::certificate(cmd)?,
        Command::Https(super::tls::HttpsCmd::Listener(cmd))
        | Command::Listener(ListenerCmd::Https(cmd)) => super::tls::https_listener(cmd)?,
        Command::Https(super::tls::HttpsCmd::Frontend(cmd))
        | Command::Frontend(FrontendCmd::Https(cmd)) => vec![super::tls::https_frontend(cmd)],
        Command::Cluster(ClusterCmd::Add(args)) => {
            return Ok(Plan {
                steps: vec![message(RequestType::AddCluster(cluster(args)))],
                then_upgrade_every_worker: false,
                refuse_existing_cluster: (!args.replace).then(|| args.id.clone()),
            });
        }
        Command::Cluster(ClusterCmd::Remove { id }) => {
            vec![message(RequestType::RemoveCluster(id.clone()))]
        }
        Command::Cluster(ClusterCmd::List(args)) | Command::Query(QueryCmd::Clusters(args)) => {
            vec![list_clusters(args)]
        }
        Command::Backend(cmd) => vec![backend(cmd)],
    };
    Ok(Plan {
        steps,
        then_upgrade_every_worker: false,
        refuse_existing_cluster: None,
    })
}

/// The step that sends `order` and shows its answer as `view`.
pub(crate) fn step(order: RequestType, view: View) -> Step {
    Step {
        request: Request {
            request_type: Some(order),
        },
        view,
    }
}

/// The step that sends `order` and shows the master's message.
pub(crate) fn message(order: RequestType) -> Step {
    step(order, View::Message)
}

/// Sōzu's `configure_metrics`, applied by every worker.
fn configure_metrics(configuration: MetricsConfiguration) -> Step {
    message(RequestType::ConfigureMetrics(configuration as i32))
}

/// `metrics get`: every cluster named by `--clusters` must exist (an
/// unknown one is an error, not an empty answer), then the query.
fn metrics(args: &MetricsArgs) -> Vec<Step> {
    let mut steps: Vec<Step> = args
        .clusters
        .iter()
        .map(|id| step(RequestType::QueryClusterById(id.clone()), View::Check))
        .collect();
    // A per-listener name (`name@address`) is asked for by its base name
    // (the workers filter on that) and filtered exactly here.
    let mut names: Vec<String> = Vec::new();
    for name in &args.names {
        let base = name.split('@').next().unwrap_or(name).to_owned();
        if !names.contains(&base) {
            names.push(base);
        }
    }
    let exact_names = if args.names.iter().any(|n| n.contains('@')) {
        args.names.clone()
    } else {
        Vec::new()
    };
    steps.push(step(
        RequestType::QueryMetrics(QueryMetricsOptions {
            list: args.list,
            cluster_ids: args.clusters.clone(),
            backend_ids: args.backends.clone(),
            metric_names: names,
            no_clusters: args.no_clusters,
            workers: args.workers,
        }),
        View::Metrics(MetricsView {
            workers: args.workers,
            list: args.list,
            exact_names,
        }),
    ));
    steps
}

pub(super) fn list_listeners(protocols: Protocols) -> Step {
    step(
        RequestType::ListListeners(ListListeners {}),
        View::Listeners(protocols),
    )
}

/// The `activate` / `deactivate` / `remove` orders shared by every protocol.
pub(super) fn listener_lifecycle(
    address: SocketAddr,
    proxy: ListenerType,
    kind: Lifecycle,
) -> Step {
    let address = address.into();
    let proxy = proxy as i32;
    message(match kind {
        Lifecycle::Activate => RequestType::ActivateListener(ActivateListener {
            address,
            proxy,
            from_scm: false,
        }),
        Lifecycle::Deactivate => RequestType::DeactivateListener(DeactivateListener {
            address,
            proxy,
            to_scm: false,
        }),
        Lifecycle::Remove => RequestType::RemoveListener(RemoveListener { address, proxy }),
    })
}

#[derive(Clone, Copy)]
pub(super) enum Lifecycle {
    Activate,
    Deactivate,
    Remove,
}

/// One `add` order, active unless `--inactive`: a listener added by hand
/// serves at once, as one from the configuration file does, and a listener
/// that cannot be activated (its address is taken) is refused whole, so
/// nothing is left listed (two orders, add then activate, would leave an
/// inactive listener behind a failed activation).
fn add_then_activate(
    mut add: RequestType,
    _address: SocketAddr,
    _proxy: ListenerType,
    inactive: bool,
) -> Vec<Step> {
    match &mut add {
        RequestType::AddUdpListener(config) => config.active = !inactive,
        RequestType::AddTcpListener(config) => config.active = !inactive,
        RequestType::AddHttpListener(config) => config.active = !inactive,
        _ => {}
    }
    vec![message(add)]
}

fn udp_listener(cmd: &UdpListenerCmd) -> Result<Vec<Step>, PlanError> {
    let proxy = ListenerType::Udp;
    Ok(match cmd {
        UdpListenerCmd::Add {
            address,
            knobs,
            buffers,
            inactive,
        } => add_then_activate(
            RequestType::AddUdpListener(udp_listener_config(address.address, knobs, buffers)),
            address.address,
            proxy,
            *inactive,
        ),
        UdpListenerCmd::Update { address, knobs } => {
            let patch = UpdateUdpListenerConfig {
                address: address.address.into(),
                public_address: knobs.public_address.map(Into::into),
                front_timeout: knobs.front_timeout,
                back_timeout: knobs.back_timeout,
                max_rx_datagram_size: knobs.max_rx_datagram_size,
                max_flows: knobs.max_flows,
            };
            let empty = UpdateUdpListenerConfig {
                address: patch.address,
                ..Default::default()
            };
            if patch == empty {
                return Err(PlanError::NothingToUpdate {
                    listener: address.address,
                });
            }
            vec![message(RequestType::UpdateUdpListener(patch))]
        }
        UdpListenerCmd::Remove(a) => vec![listener_lifecycle(a.address, proxy, Lifecycle::Remove)],
        UdpListenerCmd::Activate(a) => {
            vec![listener_lifecycle(a.address, proxy, Lifecycle::Activate)]
        }
        UdpListenerCmd::Deactivate(a) => {
            vec![listener_lifecycle(a.address, proxy, Lifecycle::Deactivate)]
        }
        UdpListenerCmd::List => vec![list_listeners(Protocols::only(proxy))],
    })
}

/// A new UDP listener: the given knobs over the protocol's defaults.
fn udp_listener_config(
    address: SocketAddr,
    knobs: &UdpListenerKnobs,
    buffers: &UdpSocketBuffers,
) -> UdpListenerConfig {
    let defaults = UdpListenerConfig::default();
    UdpListenerConfig {
        address: address.into(),
        public_address: knobs.public_address.map(Into::into),
        front_timeout: knobs.front_timeout.unwrap_or(defaults.front_timeout),
        back_timeout: knobs.back_timeout.unwrap_or(defaults.back_timeout),
        max_rx_datagram_size: knobs
            .max_rx_datagram_size
            .unwrap_or(defaults.max_rx_datagram_size),
        max_flows: knobs.max_flows.unwrap_or(defaults.max_flows),
        // Set by `add_then_activate`.
        active: false,
        recv_buffer_size: buffers.recv_buffer_size,
        send_buffer_size: buffers.send_buffer_size,
    }
}

fn tcp_listener(cmd: &TcpListenerCmd) -> Result<Vec<Step>, PlanError> {
    let proxy = ListenerType::Tcp;
    Ok(match cmd {
        TcpListenerCmd::Add {
            address,
            knobs,
            inactive,
        } => add_then_activate(
            RequestType::AddTcpListener(tcp_listener_config(address.address, knobs)),
            address.address,
            proxy,
            *inactive,
        ),
        TcpListenerCmd::Update { address, knobs } => update_order(
            address.address,
            UpdateTcpListenerConfig {
                address: address.address.into(),
                public_address: knobs.public_address.map(Into::into),
                expect_proxy: knobs.expect_proxy,
                front_timeout: knobs.front_timeout,
                back_timeout: knobs.back_timeout,
                connect_timeout: knobs.connect_timeout,
            },
            UpdateTcpListenerConfig {
                address: address.address.into(),
                ..Default::default()
            },
            RequestType::UpdateTcpListener,
        )?,
        TcpListenerCmd::Remove(a) => vec![listener_lifecycle(a.address, proxy, Lifecycle::Remove)],
        TcpListenerCmd::Activate(a) => {
            vec![listener_lifecycle(a.address, proxy, Lifecycle::Activate)]
        }
        TcpListenerCmd::Deactivate(a) => {
            vec![listener_lifecycle(a.address, proxy, Lifecycle::Deactivate)]
        }
        TcpListenerCmd::List => vec![list_listeners(Protocols::only(proxy))],
    })
}

fn tcp_listener_config(address: SocketAddr, knobs: &TcpListenerKnobs) -> TcpListenerConfig {
    let defaults = TcpListenerConfig::default();
    TcpListenerConfig {
        address: address.into(),
        public_address: knobs.public_address.map(Into::into),
        expect_proxy: knobs.expect_proxy.unwrap_or(defaults.expect_proxy),
        front_timeout: knobs.front_timeout.unwrap_or(defaults.front_timeout),
        back_timeout: knobs.back_timeout.unwrap_or(defaults.back_timeout),
        connect_timeout: knobs.connect_timeout.unwrap_or(defaults.connect_timeout),
        active: false,
    }
}

fn http_listener(cmd: &HttpListenerCmd) -> Result<Vec<Step>, PlanError> {
    let proxy = ListenerType::Http;
    Ok(match cmd {
        HttpListenerCmd::Add {
            address,
            knobs,
            inactive,
        } => add_then_activate(
            RequestType::AddHttpListener(http_listener_config(address.address, knobs)),
            address.address,
            proxy,
            *inactive,
        ),
        HttpListenerCmd::Update { address, knobs } => update_order(
            address.address,
            http_listener_patch!(UpdateHttpListenerConfig, address.address, knobs),
            UpdateHttpListenerConfig {
                address: address.address.into(),
                ..Default::default()
            },
            RequestType::UpdateHttpListener,
        )?,
        HttpListenerCmd::Remove(a) => {
            vec![listener_lifecycle(a.address, proxy, Lifecycle::Remove)]
        }
        HttpListenerCmd::Activate(a) => {
            vec![listener_lifecycle(a.address, proxy, Lifecycle::Activate)]
        }
        HttpListenerCmd::Deactivate(a) => {
            vec![listener_lifecycle(a.address, proxy, Lifecycle::Deactivate)]
        }
        HttpListenerCmd::List => vec![list_listeners(Protocols::only(proxy))],
    })
}

fn http_listener_config(address: SocketAddr, knobs: &HttpListenerKnobs) -> HttpListenerConfig {
    http_listener_add!(HttpListenerConfig, address, knobs, active: false)
}

fn udp_frontend(cmd: &FrontendOrderCmd<AddressFrontendArgs>) -> Step {
    let build = |args: &AddressFrontendArgs| RequestUdpFrontend {
        cluster_id: args.cluster_id.clone(),
        address: args.address.into(),
        tags: tags_map(&args.tags),
    };
    match cmd {
        FrontendOrderCmd::Add(args) => message(RequestType::AddUdpFrontend(build(args))),
        FrontendOrderCmd::Remove(args) => message(RequestType::RemoveUdpFrontend(build(args))),
        FrontendOrderCmd::List => list_frontends_of(Protocols::only(ListenerType::Udp)),
    }
}

fn tcp_frontend(cmd: &FrontendOrderCmd<AddressFrontendArgs>) -> Step {
    let build = |args: &AddressFrontendArgs| RequestTcpFrontend {
        cluster_id: args.cluster_id.clone(),
        address: args.address.into(),
        tags: tags_map(&args.tags),
    };
    match cmd {
        FrontendOrderCmd::Add(args) => message(RequestType::AddTcpFrontend(build(args))),
        FrontendOrderCmd::Remove(args) => message(RequestType::RemoveTcpFrontend(build(args))),
        FrontendOrderCmd::List => list_frontends_of(Protocols::only(ListenerType::Tcp)),
    }
}

fn http_frontend(cmd: &FrontendOrderCmd<HttpFrontendArgs>) -> Step {
    match cmd {
        FrontendOrderCmd::Add(args) => message(RequestType::AddHttpFrontend(http_route(args))),
        FrontendOrderCmd::Remove(args) => {
            message(RequestType::RemoveHttpFrontend(http_route(args)))
        }
        FrontendOrderCmd::List => list_frontends_of(Protocols::only(ListenerType::Http)),
    }
}

pub(super) fn http_route(args: &HttpFrontendArgs) -> RequestHttpFrontend {
    let path = match (&args.path, &args.path_regex, &args.path_equals) {
        (_, Some(regex), _) => PathRule {
            kind: PathRuleKind::Regex as i32,
            value: regex.clone(),
        },
        (_, _, Some(exact)) => PathRule {
            kind: PathRuleKind::Equals as i32,
            value: exact.clone(),
        },
        // No path: the empty prefix matches every path.
        (prefix, None, None) => PathRule {
            kind: PathRuleKind::Prefix as i32,
            value: prefix.clone().unwrap_or_default(),
        },
    };
    RequestHttpFrontend {
        cluster_id: Some(args.cluster_id.clone()),
        address: args.address.into(),
        hostname: args.hostname.clone(),
        path,
        method: args.method.clone(),
        position: RulePosition::Tree as i32,
        tags: tags_map(&args.tags),
        ..Default::default()
    }
}

/// Frontend listing. The wire filter has no UDP flag and "all false" means
/// "everything" for Sōzu masters, so the wire asks for everything unless an
/// HTTP/HTTPS/TCP filter is given, and the rendering keeps the chosen rows.
fn list_frontends(args: &FrontendListArgs) -> Step {
    let any = args.http || args.https || args.tcp || args.udp;
    let protocols = if any {
        Protocols {
            http: args.http,
            https: args.https,
            tcp: args.tcp,
            udp: args.udp,
        }
    } else {
        Protocols::ALL
    };
    let mut step = list_frontends_of(protocols);
    if let Some(RequestType::ListFrontends(filters)) = &mut step.request.request_type {
        filters.domain = args.domain.clone();
    }
    step
}

pub(super) fn list_frontends_of(protocols: Protocols) -> Step {
    // Only a strict HTTP/HTTPS/TCP subset is worth filtering on the wire.
    let wire = if protocols.udp {
        FrontendFilters::default()
    } else {
        FrontendFilters {
            http: protocols.http,
            https: protocols.https,
            tcp: protocols.tcp,
            domain: None,
        }
    };
    step(RequestType::ListFrontends(wire), View::Frontends(protocols))
}

fn list_clusters(args: &ClusterListArgs) -> Step {
    let order = match &args.id {
        Some(id) => RequestType::QueryClusterById(id.clone()),
        None => RequestType::ListClusters(ListClusters {}),
    };
    step(order, View::Clusters)
}

fn cluster(args: &ClusterAddArgs) -> Cluster {
    let proxy_protocol = if args.send_proxy {
        Some(ProxyProtocolConfig::SendHeader as i32)
    } else if args.expect_proxy {
        Some(ProxyProtocolConfig::ExpectHeader as i32)
    } else {
        None
    };
    let udp = udp_cluster_config(&args.udp_knobs);
    let udp = match udp {
        Some(config) => Some(config),
        None if args.udp => Some(UdpClusterConfig::default()),
        None => None,
    };
    Cluster {
        cluster_id: args.id.clone(),
        sticky_session: args.sticky_session,
        https_redirect: args.https_redirect,
        https_redirect_port: args.https_redirect_port.map(u32::from),
        proxy_protocol,
        load_balancing: load_balancing(args.load_balancing_policy) as i32,
        udp,
        ..Default::default()
    }
}

fn load_balancing(policy: LoadBalancingPolicy) -> LoadBalancingAlgorithms {
    match policy {
        LoadBalancingPolicy::RoundRobin => LoadBalancingAlgorithms::RoundRobin,
        LoadBalancingPolicy::Random => LoadBalancingAlgorithms::Random,
        LoadBalancingPolicy::LeastLoaded => LoadBalancingAlgorithms::LeastLoaded,
        LoadBalancingPolicy::PowerOfTwo => LoadBalancingAlgorithms::PowerOfTwo,
        LoadBalancingPolicy::Hrw => LoadBalancingAlgorithms::Hrw,
        LoadBalancingPolicy::Maglev => LoadBalancingAlgorithms::Maglev,
    }
}

/// The UDP knobs given on the command line, `None` if there are none. Flags
/// (`--send-proxy-protocol`, …) only ever set `true`: absent means "master
/// default", which is what an unset optional field says on the wire.
fn udp_cluster_config(knobs: &UdpClusterKnobs) -> Option<UdpClusterConfig> {
    let flag = |set: bool| set.then_some(true);
    let config = UdpClusterConfig {
        affinity_key: knobs.affinity_key.map(|key| match key {
            AffinityKey::SourceIp => UdpAffinityKey::SourceIp as i32,
            AffinityKey::SourceIpPort => UdpAffinityKey::SourceIpPort as i32,
        }),
        responses: knobs.responses,
        requests: knobs.requests,
        send_proxy_protocol: flag(knobs.send_proxy_protocol),
        proxy_protocol_every_datagram: flag(knobs.proxy_protocol_every_datagram),
        health: udp_health_config(knobs),
        front_timeout: knobs.front_timeout,
        back_timeout: knobs.back_timeout,
        max_pending_datagrams: knobs.max_pending_datagrams,
        max_pending_bytes: knobs.max_pending_bytes,
        keep_flows_on_backend_removal: flag(knobs.keep_flows_on_backend_removal),
        flow_key: knobs.flow_key.map(|key| match key {
            FlowKey::SourceAddress => UdpFlowKey::SourceAddress as i32,
            FlowKey::QuicConnectionId => UdpFlowKey::QuicConnectionId as i32,
            FlowKey::DnsId => UdpFlowKey::DnsId as i32,
        }),
        one_way: flag(knobs.one_way),
        quic_cid_length: knobs.quic_cid_length,
        quic_lb_config_id: knobs.quic_lb_config_id,
        quic_lb_server_id_length: knobs.quic_lb_server_id_length,
        quic_lb_nonce_length: knobs.quic_lb_nonce_length,
    };
    (config != UdpClusterConfig::default()).then_some(config)
}

/// Health settings, `None` without any `--health-*` flag. Any health flag
/// without `--health-mode` means TCP probing, as a `[clusters.<id>.udp.health]`
/// block without `mode` does in the configuration file.
fn udp_health_config(knobs: &UdpClusterKnobs) -> Option<UdpHealthConfig> {
    let health = UdpHealthConfig {
        mode: None,
        tcp_port: knobs.health_tcp_port,
        rise: knobs.health_rise,
        fall: knobs.health_fall,
        fail_open: knobs.health_fail_open,
        udp_probe_payload: knobs.health_udp_payload.as_ref().map(|p| p.0.clone()),
        probe_interval_seconds: knobs.health_interval,
        probe_timeout_seconds: knobs.health_timeout,
    };
    if knobs.health_mode.is_none() && health == UdpHealthConfig::default() {
        return None;
    }
    let mode = match knobs.health_mode.unwrap_or(HealthMode::Tcp) {
        HealthMode::Off => UdpHealthMode::HealthOff,
        HealthMode::Tcp => UdpHealthMode::TcpProbe,
        HealthMode::Udp => UdpHealthMode::UdpProbe,
    };
    Some(UdpHealthConfig {
        mode: Some(mode as i32),
        ..health
    })
}

fn backend(cmd: &BackendCmd) -> Step {
    match cmd {
        BackendCmd::Add {
            backend,
            weight,
            sticky_id,
            backup,
            quic_lb_server_id,
        } => message(RequestType::AddBackend(AddBackend {
            cluster_id: backend.cluster_id.clone(),
            backend_id: backend.backend_id.clone(),
            address: backend.address.into(),
            sticky_id: sticky_id.clone(),
            load_balancing_parameters: weight.map(|weight| LoadBalancingParams { weight }),
            backup: backup.then_some(true),
            quic_lb_server_id: quic_lb_server_id.as_ref().map(|id| id.0.clone()),
        })),
        BackendCmd::Remove(backend) => message(RequestType::RemoveBackend(RemoveBackend {
            cluster_id: backend.cluster_id.clone(),
            backend_id: backend.backend_id.clone(),
            address: backend.address.into(),
        })),
    }
}
