//! The command line (clap). `start` and the hidden `worker` run processes;
//! every other subcommand is turned into orders by [`crate::ctl`].
//!
//! This module only describes and parses arguments: every value is checked
//! here (addresses, numbers, enums, `k=v` tags) so a wrong command line is one
//! clap error before any connection. Sōzu's own spellings (`listener udp add`,
//! `frontend tcp add`, `query clusters`) reuse the very same argument types as
//! ours (`udp listener add`, …), so both map onto one request builder.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// sozu: a UDP, TCP and HTTP reverse proxy steered at runtime.
#[derive(Debug, Parser)]
#[command(name = "sozu", version, about)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Options shared by every client command.
#[derive(Debug, Args)]
#[command(next_help_heading = "Client options")]
pub(crate) struct GlobalArgs {
    /// Configuration file; its `command_socket` is the master to talk to.
    #[arg(short = 'c', long = "config", global = true)]
    pub config: Option<PathBuf>,
    /// Command socket path (overrides the configuration file).
    #[arg(long = "socket", global = true)]
    pub socket: Option<PathBuf>,
    /// Print answers as JSON.
    #[arg(long, global = true)]
    pub json: bool,
    /// Seconds to wait for each answer of the master (progress resets it).
    #[arg(long = "timeout", global = true, default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub timeout: u64,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Start the master and its workers.
    Start(crate::master::StartArgs),
    /// Worker slots: `sozu worker restart N` (with `--id …`, the hidden
    /// form the master starts a worker process with).
    Worker(WorkerCommand),
    /// Show the workers and their state.
    Status,
    /// Stop the proxy: soft-stop (drain live flows) unless `--hard`.
    Shutdown {
        /// Close every flow and connection at once.
        #[arg(long)]
        hard: bool,
    },
    /// Upgrade to the binary on disk: the master, then every worker in turn
    /// (or only one worker with `--worker`, only the master with `--main-only`).
    Upgrade {
        /// Replace only this worker.
        #[arg(long, conflicts_with = "main_only")]
        worker: Option<u32>,
        /// Re-execute only the master; workers keep running the old binary.
        #[arg(long)]
        main_only: bool,
    },
    /// Reload the configuration file (the master's own unless `-f`): the
    /// file's state replaces the running one, so objects added live and
    /// absent from the file are removed. Prints what it changed.
    Reload {
        /// Configuration file to load instead of the master's.
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
        /// Print what the reload would add, change and remove; change
        /// nothing.
        #[arg(long = "dry-run")]
        dry_run: bool,
    },
    /// Save or load the state as a file of orders.
    #[command(subcommand)]
    State(StateCmd),
    /// Query metrics, or switch counting on, off, or back to zero.
    #[command(subcommand)]
    Metrics(MetricsCmd),
    /// A live view refreshed every second: flows, datagrams/s in and out
    /// and drops/s by reason, per listener and per cluster (Ctrl-C, `q` or
    /// Ctrl-D to quit).
    Top(TopArgs),
    /// Change the log level of the master and every worker, live (a
    /// `log_level` filter: error, warn, info, debug, trace, or directives
    /// such as `info,sozu_lib=debug`).
    Logging {
        /// The new filter.
        #[arg(value_parser = log_filter)]
        level: String,
    },
    /// UDP listeners and frontends.
    #[command(subcommand)]
    Udp(UdpCmd),
    /// TCP listeners and frontends.
    #[command(subcommand)]
    Tcp(TcpCmd),
    /// HTTP listeners and frontends.
    #[command(subcommand)]
    Http(HttpCmd),
    /// HTTPS listeners and frontends (HTTP/1.1 over TLS).
    #[command(subcommand)]
    Https(crate::ctl::tls::HttpsCmd),
    /// Certificates of the HTTPS listeners.
    #[command(subcommand)]
    Certificate(crate::ctl::tls::CertificateCmd),
    /// Clusters (the load-balanced targets of frontends).
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Backends of a cluster.
    #[command(subcommand)]
    Backend(BackendCmd),
    /// Frontends of every protocol (also Sōzu's `frontend udp|tcp|http …`).
    #[command(subcommand)]
    Frontend(FrontendCmd),
    /// Listeners of every protocol (Sōzu's `listener udp|tcp|http …`).
    #[command(subcommand)]
    Listener(ListenerCmd),
    /// Sōzu's query commands.
    #[command(subcommand)]
    Query(QueryCmd),
    /// Print a shell completion script on stdout (used by packaging).
    #[command(hide = true)]
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
    /// Print the sozu(1) man page (roff) on stdout (used by packaging).
    #[command(hide = true)]
    Manpage,
}

/// `sozu completions SHELL`: the completion script of the whole command
/// line, written to `out` (built in memory first: the generator panics on
/// a write error such as a closed pipe).
pub(crate) fn write_completions(
    shell: clap_complete::Shell,
    out: &mut dyn std::io::Write,
) -> std::io::Result<()> {
    let mut command = <Cli as clap::CommandFactory>::command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, "sozu", &mut script);
    out.write_all(&script)
}

/// `sozu manpage`: sozu(1), written to `out`.
pub(crate) fn write_manpage(out: &mut dyn std::io::Write) -> std::io::Result<()> {
    let command = <Cli as clap::CommandFactory>::command();
    clap_mangen::Man::new(command).render(out)
}

/// `sozu worker …`: a client order, or (with the process arguments) one
/// worker process started by the master.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub(crate) struct WorkerCommand {
    #[command(subcommand)]
    pub action: Option<WorkerAction>,
    #[command(flatten)]
    pub process: Option<crate::worker::WorkerArgs>,
}

/// `sozu worker restart N`
#[derive(Debug, Subcommand)]
pub(crate) enum WorkerAction {
    /// Start worker slot N again: at once if it is down (whatever its
    /// restart backoff), else replaced like `upgrade --worker N`.
    Restart {
        /// The worker id (as `sozu status` shows it).
        id: u32,
    },
}

/// `sozu state …`
#[derive(Debug, Subcommand)]
pub(crate) enum StateCmd {
    /// Write the master's state to FILE (a replayable list of orders).
    Save(StateFileArgs),
    /// Replay the orders of FILE.
    Load(StateFileArgs),
    /// Compare every worker's state with the master's; exit non-zero and
    /// name the differences when they disagree.
    Check,
}

/// The state file (resolved to an absolute path: the master opens it).
#[derive(Debug, Args)]
pub(crate) struct StateFileArgs {
    /// State file.
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
}

/// `sozu top`
#[derive(Debug, Args)]
pub(crate) struct TopArgs {
    /// Seconds between refreshes.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=60))]
    pub interval: u64,
    /// Stop after this many refreshes (default: until interrupted).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Rows shown per table (the busiest first).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub rows: u64,
}

/// `sozu metrics …`
#[derive(Debug, Subcommand)]
pub(crate) enum MetricsCmd {
    /// Print the current metrics.
    Get(MetricsArgs),
    /// Resume counting in every worker (after `disable`).
    Enable,
    /// Stop counters and time metrics in every worker (gauges keep their
    /// level).
    Disable,
    /// Set every counter to zero and empty every time metric.
    Clear,
}

/// Filters of a metrics query.
#[derive(Debug, Args)]
pub(crate) struct MetricsArgs {
    /// Only these clusters.
    #[arg(long = "clusters", alias = "cluster", value_delimiter = ',')]
    pub clusters: Vec<String>,
    /// Only these backends.
    #[arg(long = "backends", alias = "backend", value_delimiter = ',')]
    pub backends: Vec<String>,
    /// Only these metric names.
    #[arg(long = "names", alias = "name", value_delimiter = ',')]
    pub names: Vec<String>,
    /// List the available metric names instead of values.
    #[arg(long)]
    pub list: bool,
    /// Per-worker metrics instead of aggregated ones.
    #[arg(long)]
    pub workers: bool,
    /// Proxy-wide metrics only, no cluster metrics.
    #[arg(long = "no-clusters")]
    pub no_clusters: bool,
}

/// `sozu udp …`
#[derive(Debug, Subcommand)]
pub(crate) enum UdpCmd {
    /// UDP listeners.
    #[command(subcommand)]
    Listener(UdpListenerCmd),
    /// UDP frontends (listener address → cluster).
    #[command(subcommand)]
    Frontend(FrontendOrderCmd<AddressFrontendArgs>),
}

/// `sozu tcp …`
#[derive(Debug, Subcommand)]
pub(crate) enum TcpCmd {
    /// TCP listeners.
    #[command(subcommand)]
    Listener(TcpListenerCmd),
    /// TCP frontends (address → cluster).
    #[command(subcommand)]
    Frontend(FrontendOrderCmd<AddressFrontendArgs>),
}

/// `sozu http …`
#[derive(Debug, Subcommand)]
pub(crate) enum HttpCmd {
    /// HTTP listeners.
    #[command(subcommand)]
    Listener(HttpListenerCmd),
    /// HTTP frontends (address + hostname + path → cluster).
    #[command(subcommand)]
    Frontend(FrontendOrderCmd<HttpFrontendArgs>),
}

/// `sozu listener …` (Sōzu's spelling: protocol after `listener`).
#[derive(Debug, Subcommand)]
pub(crate) enum ListenerCmd {
    /// UDP listeners (same as `sozu udp listener`).
    #[command(subcommand)]
    Udp(UdpListenerCmd),
    /// TCP listeners (same as `sozu tcp listener`).
    #[command(subcommand)]
    Tcp(TcpListenerCmd),
    /// HTTP listeners (same as `sozu http listener`).
    #[command(subcommand)]
    Http(HttpListenerCmd),
    /// HTTPS listeners (same as `sozu https listener`).
    #[command(subcommand)]
    Https(crate::ctl::tls::HttpsListenerCmd),
    /// List the listeners of every protocol.
    List,
}

/// `sozu frontend …`
#[derive(Debug, Subcommand)]
pub(crate) enum FrontendCmd {
    /// UDP frontends (same as `sozu udp frontend`).
    #[command(subcommand)]
    Udp(FrontendOrderCmd<AddressFrontendArgs>),
    /// TCP frontends (same as `sozu tcp frontend`).
    #[command(subcommand)]
    Tcp(FrontendOrderCmd<AddressFrontendArgs>),
    /// HTTP frontends (same as `sozu http frontend`).
    #[command(subcommand)]
    Http(FrontendOrderCmd<HttpFrontendArgs>),
    /// HTTPS frontends (same as `sozu https frontend`).
    #[command(subcommand)]
    Https(FrontendOrderCmd<HttpFrontendArgs>),
    /// List the frontends of every protocol.
    List(FrontendListArgs),
}

/// `sozu query …` (Sōzu's spelling of the read-only commands).
#[derive(Debug, Subcommand)]
pub(crate) enum QueryCmd {
    /// Same as `sozu cluster list`.
    Clusters(ClusterListArgs),
    /// Same as `sozu metrics get`.
    Metrics(MetricsArgs),
    /// Same as `sozu status`.
    Workers,
}

/// Filters of `sozu frontend list`; none means every protocol.
#[derive(Debug, Args)]
pub(crate) struct FrontendListArgs {
    /// HTTP frontends.
    #[arg(long)]
    pub http: bool,
    /// HTTPS frontends.
    #[arg(long)]
    pub https: bool,
    /// TCP frontends.
    #[arg(long)]
    pub tcp: bool,
    /// UDP frontends.
    #[arg(long)]
    pub udp: bool,
    /// Only HTTP(S) frontends whose hostname contains this domain.
    #[arg(long)]
    pub domain: Option<String>,
}

/// `-a ADDR` of the orders that only name a listener.
#[derive(Debug, Args)]
pub(crate) struct ListenerAddressArgs {
    /// Listener address, e.g. 127.0.0.1:5353 or [::1]:5353.
    #[arg(short = 'a', long = "address")]
    pub address: SocketAddr,
}

/// `sozu udp listener …`
#[derive(Debug, Subcommand)]
pub(crate) enum UdpListenerCmd {
    /// Add a UDP listener and activate it (unless `--inactive`).
    Add {
        #[command(flatten)]
        address: ListenerAddressArgs,
        #[command(flatten)]
        knobs: UdpListenerKnobs,
        #[command(flatten)]
        buffers: UdpSocketBuffers,
        /// Add only: do not activate (bind) the listener yet.
        #[arg(long)]
        inactive: bool,
    },
    /// Change the given fields of a UDP listener in place (no re-bind).
    Update {
        #[command(flatten)]
        address: ListenerAddressArgs,
        #[command(flatten)]
        knobs: UdpListenerKnobs,
    },
    /// Close every flow of a UDP listener and release its socket.
    Remove(ListenerAddressArgs),
    /// Start serving a UDP listener.
    Activate(ListenerAddressArgs),
    /// Stop serving a UDP listener (flows closed, socket kept bound).
    Deactivate(ListenerAddressArgs),
    /// List the UDP listeners.
    List,
}

/// UDP listener settings; on `update` only the given ones change.
#[derive(Debug, Args)]
pub(crate) struct UdpListenerKnobs {
    /// Address announced to backends (PROXY protocol), if not the listener's.
    #[arg(long = "public-address")]
    pub public_address: Option<SocketAddr>,
    /// Seconds a flow may stay idle on the client side [add default: 30].
    #[arg(long = "front-timeout", allow_negative_numbers = true, value_parser = whole_number)]
    pub front_timeout: Option<u32>,
    /// Seconds a flow may stay idle on the backend side [add default: 30].
    #[arg(long = "back-timeout", allow_negative_numbers = true, value_parser = whole_number)]
    pub back_timeout: Option<u32>,
    /// Largest datagram read, in bytes [add default: 1500].
    #[arg(long = "max-rx-datagram-size",
          value_parser = clap::value_parser!(u32)
              .range(1..=i64::from(sozu_command_lib::limits::MAX_RX_DATAGRAM_SIZE)))]
    pub max_rx_datagram_size: Option<u32>,
    /// Most live flows on this listener, 0 = automatic [add default: 0].
    #[arg(long = "max-flows", allow_negative_numbers = true, value_parser = whole_number)]
    pub max_flows: Option<u32>,
}

/// Socket buffer sizes, set when the listener socket is created (so on
/// `add` only: `update` never re-binds).
#[derive(Debug, Args)]
pub(crate) struct UdpSocketBuffers {
    /// SO_RCVBUF of the listener socket in bytes (0 = kernel default).
    #[arg(long = "recv-buffer-size", allow_negative_numbers = true, value_parser = whole_number)]
    pub recv_buffer_size: Option<u32>,
    /// SO_SNDBUF of the listener socket in bytes (0 = kernel default).
    #[arg(long = "send-buffer-size", allow_negative_numbers = true, value_parser = whole_number)]
    pub send_buffer_size: Option<u32>,
}

/// `sozu tcp listener …`
#[derive(Debug, Subcommand)]
pub(crate) enum TcpListenerCmd {
    /// Add a TCP listener and activate it (unless `--inactive`).
    Add {
        #[command(flatten)]
        address: ListenerAddressArgs,
        #[command(flatten)]
        knobs: TcpListenerKnobs,
        /// Add only: do not activate (bind) the listener yet.
        #[arg(long)]
        inactive: bool,
    },
    /// Change the given fields of a TCP listener in place.
    Update {
        #[command(flatten)]
        address: ListenerAddressArgs,
        #[command(flatten)]
        knobs: TcpListenerKnobs,
    },
    /// Remove a TCP listener.
    Remove(ListenerAddressArgs),
    /// Start serving a TCP listener.
    Activate(ListenerAddressArgs),
    /// Stop accepting on a TCP listener.
    Deactivate(ListenerAddressArgs),
    /// List the TCP listeners.
    List,
}

/// TCP listener settings; on `update` only the given ones change.
#[derive(Debug, Args)]
pub(crate) struct TcpListenerKnobs {
    /// Address announced to backends (PROXY protocol), if not the listener's.
    #[arg(long = "public-address")]
    pub public_address: Option<SocketAddr>,
    /// Expect a PROXY protocol header from clients (`--expect-proxy false` to clear).
    #[arg(long = "expect-proxy", num_args = 0..=1, default_missing_value = "true")]
    pub expect_proxy: Option<bool>,
    /// Client-side idle timeout in seconds [add default: 60].
    #[arg(long = "front-timeout", allow_negative_numbers = true, value_parser = whole_number)]
    pub front_timeout: Option<u32>,
    /// Backend-side idle timeout in seconds [add default: 30].
    #[arg(long = "back-timeout", allow_negative_numbers = true, value_parser = whole_number)]
    pub back_timeout: Option<u32>,
    /// Backend connect timeout in seconds [add default: 3].
    #[arg(long = "connect-timeout", allow_negative_numbers = true, value_parser = whole_number)]
    pub connect_timeout: Option<u32>,
}

/// `sozu http listener …`
#[derive(Debug, Subcommand)]
pub(crate) enum HttpListenerCmd {
    /// Add an HTTP listener and activate it (unless `--inactive`).
    Add {
        #[command(flatten)]
        address: ListenerAddressArgs,
        #[command(flatten)]
        knobs: HttpListenerKnobs,
        /// Add only: do not activate (bind) the listener yet.
        #[arg(long)]
        inactive: bool,
    },
    /// Change the given fields of an HTTP listener in place.
    Update {
        #[command(flatten)]
        address: ListenerAddressArgs,
        #[command(flatten)]
        knobs: HttpListenerKnobs,
    },
    /// Remove an HTTP listener.
    Remove(ListenerAddressArgs),
    /// Start serving an HTTP listener.
    Activate(ListenerAddressArgs),
    /// Stop accepting on an HTTP listener.
    Deactivate(ListenerAddressArgs),
    /// List the HTTP listeners.
    List,
}

/// HTTP listener settings; on `update` only the given ones change.
#[derive(Debug, Args)]
pub(crate) struct HttpListenerKnobs {
    /// Address announced to backends, if not the listener's.
    #[arg(long = "public-address")]
    pub public_address: Option<SocketAddr>,
    /// Expect a PROXY protocol header from clients (`--expect-proxy false` to clear).
    #[arg(long = "expect-proxy", num_args = 0..=1, default_missing_value = "true")]
    pub expect_proxy: Option<bool>,
    /// Name of the sticky-session cookie [add default: SOZUBALANCEID].
    #[arg(long = "sticky-name")]
    pub sticky_name: Option<String>,
    /// Client-side idle timeout in seconds [add default: 60].
    #[arg(long = "front-timeout", allow_negative_numbers = true, value_parser = whole_number)]
    pub front_timeout: Option<u32>,
    /// Backend-side idle timeout in seconds [add default: 30].
    #[arg(long = "back-timeout", allow_negative_numbers = true, value_parser = whole_number)]
    pub back_timeout: Option<u32>,
    /// Backend connect timeout in seconds [add default: 3].
    #[arg(long = "connect-timeout", allow_negative_numbers = true, value_parser = whole_number)]
    pub connect_timeout: Option<u32>,
    /// Seconds to receive a whole request [add default: 10].
    #[arg(long = "request-timeout", allow_negative_numbers = true, value_parser = whole_number)]
    pub request_timeout: Option<u32>,
}

/// `add` / `remove` of a frontend, with the protocol's arguments.
#[derive(Debug, Subcommand)]
pub(crate) enum FrontendOrderCmd<A: Args> {
    /// Route this frontend to a cluster.
    Add(A),
    /// Remove this frontend.
    Remove(A),
    /// List the frontends of this protocol.
    List,
}

/// A UDP or TCP frontend: a listener address routed to a cluster.
#[derive(Debug, Args)]
pub(crate) struct AddressFrontendArgs {
    /// Cluster the frontend routes to.
    #[arg(short = 'i', long = "id", visible_alias = "cluster-id")]
    pub cluster_id: String,
    /// Listener address of the frontend.
    #[arg(short = 'a', long = "address")]
    pub address: SocketAddr,
    /// Tags as key=value pairs, comma separated.
    #[arg(long = "tags", value_parser = parse_tag, value_delimiter = ',')]
    pub tags: Vec<(String, String)>,
}

/// An HTTP frontend: address + hostname + path routed to a cluster.
#[derive(Debug, Args)]
pub(crate) struct HttpFrontendArgs {
    /// Cluster the frontend routes to.
    #[arg(short = 'i', long = "id", visible_alias = "cluster-id")]
    pub cluster_id: String,
    /// Listener address of the frontend.
    #[arg(short = 'a', long = "address")]
    pub address: SocketAddr,
    /// Host name to match.
    #[arg(long = "hostname")]
    pub hostname: String,
    /// Path prefix to match (default: every path).
    #[arg(long = "path", visible_alias = "path-prefix",
          conflicts_with_all = ["path_regex", "path_equals"])]
    pub path: Option<String>,
    /// Path regular expression to match.
    #[arg(long = "path-regex", conflicts_with = "path_equals")]
    pub path_regex: Option<String>,
    /// Exact path to match.
    #[arg(long = "path-equals")]
    pub path_equals: Option<String>,
    /// HTTP method to match.
    #[arg(long = "method")]
    pub method: Option<String>,
    /// Tags as key=value pairs, comma separated.
    #[arg(long = "tags", value_parser = parse_tag, value_delimiter = ',')]
    pub tags: Vec<(String, String)>,
}

/// `sozu cluster …`
#[derive(Debug, Subcommand)]
pub(crate) enum ClusterCmd {
    /// Add a cluster (an existing id is refused unless `--replace`).
    Add(Box<ClusterAddArgs>),
    /// Remove a cluster.
    Remove {
        /// Cluster id.
        #[arg(short = 'i', long = "id", visible_alias = "cluster-id")]
        id: String,
    },
    /// List clusters with their frontends, backends and knobs.
    List(ClusterListArgs),
}

/// `sozu cluster list [-i ID]`
#[derive(Debug, Args)]
pub(crate) struct ClusterListArgs {
    /// Only this cluster.
    #[arg(short = 'i', long = "id", visible_alias = "cluster-id")]
    pub id: Option<String>,
}

/// `sozu cluster add`
#[derive(Debug, Args)]
pub(crate) struct ClusterAddArgs {
    /// Cluster id.
    #[arg(short = 'i', long = "id", visible_alias = "cluster-id")]
    pub id: String,
    /// How backends are chosen.
    #[arg(long = "load-balancing-policy", value_enum, default_value_t = LoadBalancingPolicy::RoundRobin)]
    pub load_balancing_policy: LoadBalancingPolicy,
    /// HTTP: sticky sessions (cookie).
    #[arg(long = "sticky-session")]
    pub sticky_session: bool,
    /// HTTP: redirect to HTTPS.
    #[arg(long = "https-redirect")]
    pub https_redirect: bool,
    /// HTTP: the port written in the HTTPS redirect (default 443, not
    /// written). Needs --https-redirect.
    #[arg(long = "https-redirect-port", requires = "https_redirect", value_parser = clap::value_parser!(u16).range(1..))]
    pub https_redirect_port: Option<u16>,
    /// TCP: send a PROXY protocol header to backends.
    #[arg(long = "send-proxy", conflicts_with = "expect_proxy")]
    pub send_proxy: bool,
    /// TCP: expect a PROXY protocol header from clients.
    #[arg(long = "expect-proxy")]
    pub expect_proxy: bool,
    /// Make it a UDP cluster even without any UDP knob.
    #[arg(long = "udp")]
    pub udp: bool,
    /// Replace an existing cluster of this id: every knob not given here
    /// goes back to its default.
    #[arg(long = "replace")]
    pub replace: bool,
    #[command(flatten)]
    pub udp_knobs: UdpClusterKnobs,
}

/// The UDP knobs of a cluster (`UdpClusterConfig`, `UdpHealthConfig`).
#[derive(Debug, Args, Default)]
pub(crate) struct UdpClusterKnobs {
    /// UDP: what the load-balancing hash uses [master default: source-ip].
    #[arg(long = "affinity-key", value_enum)]
    pub affinity_key: Option<AffinityKey>,
    /// UDP: backend datagrams expected per client datagram; a flow closes
    /// once every datagram it forwarded is answered (0 = unlimited).
    #[arg(long = "responses", allow_negative_numbers = true, value_parser = whole_number)]
    pub responses: Option<u32>,
    /// UDP: close a flow after this many client datagrams (0 = unlimited).
    #[arg(long = "requests", allow_negative_numbers = true, value_parser = whole_number)]
    pub requests: Option<u32>,
    /// UDP: send a PROXY protocol v2 header to backends.
    #[arg(long = "send-proxy-protocol")]
    pub send_proxy_protocol: bool,
    /// UDP: prefix every datagram with the header, not only a flow's first.
    #[arg(long = "proxy-protocol-every-datagram")]
    pub proxy_protocol_every_datagram: bool,
    /// UDP: client-side idle timeout in seconds, overriding the listener's.
    #[arg(long = "front-timeout", allow_negative_numbers = true, value_parser = whole_number)]
    pub front_timeout: Option<u32>,
    /// UDP: backend-side idle timeout in seconds, overriding the listener's.
    #[arg(long = "back-timeout", allow_negative_numbers = true, value_parser = whole_number)]
    pub back_timeout: Option<u32>,
    /// UDP: datagrams queued while a new flow awaits its backend [32].
    #[arg(long = "max-pending-datagrams", allow_negative_numbers = true, value_parser = whole_number)]
    pub max_pending_datagrams: Option<u32>,
    /// UDP: bytes queued while a new flow awaits its backend [65536].
    #[arg(long = "max-pending-bytes", allow_negative_numbers = true, value_parser = whole_number)]
    pub max_pending_bytes: Option<u32>,
    /// UDP: a removed backend keeps its live flows until they end.
    #[arg(long = "keep-flows-on-backend-removal")]
    pub keep_flows_on_backend_removal: bool,
    /// UDP: one-way datagrams (syslog, metrics): no flow, no return path.
    #[arg(long = "one-way")]
    pub one_way: bool,
    /// UDP: what identifies a flow [master default: source-address].
    #[arg(long = "flow-key", value_enum)]
    pub flow_key: Option<FlowKey>,
    /// UDP, with --flow-key quic-connection-id: length of the connection ids
    /// the backends issue, read from short-header packets [8].
    #[arg(long = "quic-cid-length", value_parser = clap::value_parser!(u32).range(1..=20))]
    pub quic_cid_length: Option<u32>,
    /// UDP, with --flow-key quic-connection-id: QUIC-LB config rotation
    /// codepoint of the backends' connection ids [0].
    #[arg(long = "quic-lb-config-id", value_parser = clap::value_parser!(u32).range(0..=6))]
    pub quic_lb_config_id: Option<u32>,
    /// UDP: turns QUIC-LB routing on: octets of server id after the first
    /// octet of a connection id.
    #[arg(long = "quic-lb-server-id-length", value_parser = clap::value_parser!(u32).range(1..=15))]
    pub quic_lb_server_id_length: Option<u32>,
    /// UDP: QUIC-LB nonce octets [what --quic-cid-length leaves].
    #[arg(long = "quic-lb-nonce-length", value_parser = clap::value_parser!(u32).range(4..=18))]
    pub quic_lb_nonce_length: Option<u32>,
    /// UDP health checks; any --health-* flag without this one means tcp.
    #[arg(long = "health-mode", value_enum)]
    pub health_mode: Option<HealthMode>,
    /// UDP health: TCP port probed [default: the backend's port].
    #[arg(long = "health-tcp-port", value_parser = clap::value_parser!(u32).range(1..=65_535))]
    pub health_tcp_port: Option<u32>,
    /// UDP health: successes before a backend is up [2].
    #[arg(long = "health-rise", value_parser = clap::value_parser!(u32).range(1..))]
    pub health_rise: Option<u32>,
    /// UDP health: failures before a backend is down [3].
    #[arg(long = "health-fall", value_parser = clap::value_parser!(u32).range(1..))]
    pub health_fall: Option<u32>,
    /// UDP health: use every backend when all are down [true].
    #[arg(long = "health-fail-open", value_parser = clap::builder::BoolishValueParser::new())]
    pub health_fail_open: Option<bool>,
    /// UDP health: probe payload; text, or `hex:` followed by hex bytes.
    #[arg(long = "health-udp-payload", value_parser = parse_payload)]
    pub health_udp_payload: Option<Payload>,
    /// UDP health: seconds between probes [5].
    #[arg(long = "health-interval", value_parser = clap::value_parser!(u32).range(1..))]
    pub health_interval: Option<u32>,
    /// UDP health: seconds before a probe counts as failed [2].
    #[arg(long = "health-timeout", value_parser = clap::value_parser!(u32).range(1..))]
    pub health_timeout: Option<u32>,
}

/// `sozu backend …`
#[derive(Debug, Subcommand)]
pub(crate) enum BackendCmd {
    /// Add a backend to a cluster.
    Add {
        #[command(flatten)]
        backend: BackendArgs,
        /// Relative weight for weighted policies.
        #[arg(long = "weight", allow_negative_numbers = true,
              value_parser = clap::value_parser!(i32)
                  .range(0..=i64::from(sozu_command_lib::limits::MAX_WEIGHT)))]
        weight: Option<i32>,
        /// HTTP: sticky-session id of this backend.
        #[arg(long = "sticky-id")]
        sticky_id: Option<String>,
        /// Use only when no other backend is available.
        #[arg(long = "backup")]
        backup: bool,
        /// UDP: the backend's QUIC-LB server id, in hex (e.g. 0a1b).
        #[arg(long = "quic-lb-server-id", value_parser = parse_server_id)]
        quic_lb_server_id: Option<Payload>,
    },
    /// Remove a backend from a cluster.
    Remove(BackendArgs),
}

/// Which backend of which cluster.
#[derive(Debug, Args)]
pub(crate) struct BackendArgs {
    /// Cluster id.
    #[arg(short = 'i', long = "id", visible_alias = "cluster-id")]
    pub cluster_id: String,
    /// Backend id.
    #[arg(long = "backend-id")]
    pub backend_id: String,
    /// Backend address.
    #[arg(short = 'a', long = "address")]
    pub address: SocketAddr,
}

/// `--load-balancing-policy` (Sōzu's spellings accepted as aliases).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum LoadBalancingPolicy {
    #[value(name = "round_robin", alias = "round-robin", alias = "roundrobin")]
    RoundRobin,
    #[value(name = "random")]
    Random,
    #[value(name = "least_loaded", alias = "least-loaded", alias = "leastloaded")]
    LeastLoaded,
    #[value(name = "power_of_two", alias = "power-of-two", alias = "powerof2")]
    PowerOfTwo,
    #[value(name = "hrw")]
    Hrw,
    #[value(name = "maglev")]
    Maglev,
}

/// `--affinity-key`
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum AffinityKey {
    #[value(name = "source-ip", alias = "source_ip")]
    SourceIp,
    #[value(name = "source-ip-port", alias = "source_ip_port")]
    SourceIpPort,
}

/// `--flow-key`
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum FlowKey {
    #[value(name = "source-address", alias = "source_address")]
    SourceAddress,
    #[value(name = "quic-connection-id", alias = "quic_connection_id")]
    QuicConnectionId,
    /// DNS queries multiplexed by query ID over a few sockets per backend.
    #[value(name = "dns-id", alias = "dns_id")]
    DnsId,
}

/// `--health-mode`
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum HealthMode {
    Off,
    Tcp,
    Udp,
}

/// A health probe payload, already decoded to bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Payload(pub Vec<u8>);

/// `key=value` → `(key, value)`; the key may not be empty.
fn parse_tag(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("expected key=value, got '{text}'")),
    }
}

/// Text as its UTF-8 bytes, or `hex:` + an even number of hex digits.
fn parse_payload(text: &str) -> Result<Payload, String> {
    let Some(hex) = text.strip_prefix("hex:") else {
        return Ok(Payload(text.as_bytes().to_vec()));
    };
    if hex.len() % 2 != 0 {
        return Err(format!("odd number of hex digits in '{hex}'"));
    }
    hex.as_bytes()
        .chunks(2)
        .map(|pair| {
            std::str::from_utf8(pair)
                .ok()
                .and_then(|digits| u8::from_str_radix(digits, 16).ok())
                .ok_or_else(|| format!("'{hex}' is not hexadecimal"))
        })
        .collect::<Result<Vec<u8>, String>>()
        .map(Payload)
}

/// A QUIC-LB server id: 1 to 15 octets in hex digits.
fn parse_server_id(text: &str) -> Result<Payload, String> {
    let bytes = parse_payload(&format!("hex:{text}"))?;
    if !(1..=15).contains(&bytes.0.len()) {
        return Err(format!("'{text}' is not 1 to 15 octets"));
    }
    Ok(bytes)
}

/// Tags as the wire's map (a repeated key keeps its last value).
pub(crate) fn tags_map(tags: &[(String, String)]) -> BTreeMap<String, String> {
    tags.iter().cloned().collect()
}

/// A whole number 0..=u32::MAX for counts and seconds. A negative value
/// reaches this parser (instead of being read as a flag) and gets a message
/// saying what is expected.
fn whole_number(text: &str) -> Result<u32, String> {
    let n: i64 = text
        .trim()
        .parse()
        .map_err(|_| format!("expected a whole number 0..={}, got {text:?}", u32::MAX))?;
    u32::try_from(n).map_err(|_| {
        if n < 0 {
            format!("must be 0 or more, got {n}")
        } else {
            format!("must be at most {}, got {n}", u32::MAX)
        }
    })
}

/// A `log_level` filter, checked as the configuration file checks it (a
/// typo such as `inf` would silently turn logging off).
fn log_filter(text: &str) -> Result<String, String> {
    sozu_command_lib::limits::check_log_filter(text).map(|()| text.to_owned())
}
