//! TOML configuration (Sōzu 2.x compatible) → validated [`Config`] → orders.
//!
//! `reader.rs` walks the spanned TOML tree and reports typed errors with key
//! path and line; `parse.rs` knows what each key means, its default and its
//! cross-checks; `orders.rs` turns a `Config` into the ordered list of
//! [`command::Request`]s that builds that state. This module never touches a
//! socket or a process: the master decides what to do with a `Config`.
//! Every key, default and deliberate difference from Sōzu is documented in
//! `doc/configure.md`.

mod error;
mod orders;
mod parse;
mod reader;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::num::{NonZeroU16, NonZeroU32, NonZeroU64, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use error::{ConfigError, Location};

use crate::command::{
    ListenerType, LoadBalancingAlgorithms, LoadMetric, PathRuleKind, TlsVersion, UdpAffinityKey,
    UdpFlowKey, UdpHealthMode,
};

/// A validated sozu configuration. Relative paths (`command_socket`,
/// `saved_state`, `pid_file_path`) are already resolved against the
/// directory of the configuration file.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file this configuration was read from, if any.
    pub config_path: Option<PathBuf>,
    /// Unix socket the master listens on for commands (default `./sozu.sock`).
    pub command_socket: PathBuf,
    /// Initial buffer size of a command channel, bytes (default 16384).
    pub command_buffer_size: NonZeroUsize,
    /// Largest command message accepted, bytes (default 163840).
    pub max_command_buffer_size: NonZeroUsize,
    /// Peer uids allowed on the command socket besides its owner and root
    /// (default empty: owner and root only).
    pub command_allowed_uids: Vec<u32>,
    /// Simultaneous command-socket clients (default 64).
    pub max_command_clients: NonZeroUsize,
    /// Number of worker processes (default 2).
    pub worker_count: NonZeroU16,
    /// Restart a worker that dies (default true).
    pub worker_automatic_restart: bool,
    /// How long the master waits for a worker's answer (default 10 s).
    pub worker_timeout: Duration,
    /// Maximum TCP/HTTP sessions per worker (default 500).
    pub max_connections: NonZeroUsize,
    /// Size of one I/O buffer, bytes (default 16393).
    pub buffer_size: NonZeroUsize,
    /// Log filter, e.g. `info` or `info,sozu_lib=debug` (default `info`).
    pub log_level: String,
    /// Where logs go (default stdout).
    pub log_target: LogTarget,
    /// Where access logs go (default: with the other logs).
    pub access_logs_target: Option<LogTarget>,
    /// How access records are written (default `ascii`).
    pub access_logs_format: AccessLogFormat,
    /// Where the audit log of command-socket orders goes (default: with the
    /// other logs).
    pub audit_logs_target: Option<LogTarget>,
    /// State file loaded at start and used by automatic saves.
    pub saved_state: Option<PathBuf>,
    /// Save the state to `saved_state` after each change (default false).
    pub automatic_state_save: bool,
    /// Largest state file `state load` accepts, bytes (default 64 MiB).
    pub max_state_file_size: NonZeroU64,
    /// Activate the configured listeners at start (default true).
    pub activate_listeners: bool,
    /// Default TCP/HTTP client-side idle timeout (default 60 s).
    pub front_timeout: Duration,
    /// Default TCP/HTTP backend-side idle timeout (default 30 s).
    pub back_timeout: Duration,
    /// Default backend connect timeout (default 3 s).
    pub connect_timeout: Duration,
    /// Default HTTP request timeout (default 10 s).
    pub request_timeout: Duration,
    /// Where the master writes its pid.
    pub pid_file_path: Option<PathBuf>,
    /// Key of the UDP affinity hash (HRW / MAGLEV placement); `None`: the
    /// fixed default. Every instance of a fleet sets the same value so a
    /// client maps to the same backend on all of them.
    pub hash_seed: Option<u64>,
    /// Statsd metrics export.
    pub metrics: Option<MetricsConfig>,
    /// *sozu only.* Address of the master's Prometheus listener
    /// (`GET /metrics`); `None`: not served.
    pub metrics_listener: Option<SocketAddr>,
    /// *sozu only.* Local addresses UDP upstream sockets are bound to, in
    /// turn (each brings its own ephemeral port range); empty: the kernel
    /// picks the route's address.
    pub upstream_source_addresses: Vec<IpAddr>,
    /// Listeners in file order.
    pub listeners: Vec<ListenerConfig>,
    /// Clusters by id.
    pub clusters: BTreeMap<String, ClusterConfig>,
}

/// Where a log stream goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    /// `stdout`.
    Stdout,
    /// `stderr`.
    Stderr,
    /// `udp://host:port`
    Udp(SocketAddr),
    /// `tcp://host:port`
    Tcp(SocketAddr),
    /// `unix:///path/to/socket` (a datagram socket)
    Unix(PathBuf),
    /// `file:///path/to/file` (appended to)
    File(PathBuf),
}

/// `access_logs_format`: how an access record is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccessLogFormat {
    /// One human-readable line (`key=value` fields), the default.
    #[default]
    Ascii,
    /// One JSON object per line, fixed field names (doc/metrics.md).
    Json,
}

impl AccessLogFormat {
    /// The spelling in the configuration file.
    pub fn as_str(self) -> &'static str {
        match self {
            AccessLogFormat::Ascii => "ascii",
            AccessLogFormat::Json => "json",
        }
    }
}

/// `[metrics]`: statsd export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsConfig {
    /// UDP address of the statsd server.
    pub address: SocketAddr,
    /// Use tags instead of dotted names (default false).
    pub tagged_metrics: bool,
    /// Prefix of every metric name.
    pub prefix: Option<String>,
}

/// One `[[listeners]]` entry.
#[derive(Debug, Clone, PartialEq)]
pub enum ListenerConfig {
    /// `protocol = "http"`.
    Http(HttpListenerSettings),
    /// An HTTPS listener: its orders (`add_https_listener`) build the
    /// state; the workers do not serve it yet (doc/tcp_http.md).
    Https(Box<HttpsListenerSettings>),
    /// `protocol = "tcp"`.
    Tcp(TcpListenerSettings),
    /// `protocol = "udp"`.
    Udp(UdpListenerSettings),
}

impl ListenerConfig {
    /// The bound address.
    pub fn address(&self) -> SocketAddr {
        match self {
            ListenerConfig::Http(l) => l.address,
            ListenerConfig::Https(l) => l.http.address,
            ListenerConfig::Tcp(l) => l.address,
            ListenerConfig::Udp(l) => l.address,
        }
    }

    /// The wire listener type.
    pub fn listener_type(&self) -> ListenerType {
        match self {
            ListenerConfig::Http(_) => ListenerType::Http,
            ListenerConfig::Https(_) => ListenerType::Https,
            ListenerConfig::Tcp(_) => ListenerType::Tcp,
            ListenerConfig::Udp(_) => ListenerType::Udp,
        }
    }
}

/// An HTTP (or HTTPS) listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpListenerSettings {
    /// Where it listens.
    pub address: SocketAddr,
    /// `public_address`: stored and listed, not used by the proxy.
    pub public_address: Option<SocketAddr>,
    /// Clients start with a PROXY protocol header.
    pub expect_proxy: bool,
    /// Sticky-session cookie name (default `SOZUBALANCEID`).
    pub sticky_name: String,
    /// `answer_404`: the text of the file, the listener's 404 answer.
    pub answer_404: Option<String>,
    /// `answer_503`: the text of the file, the listener's 503 answer.
    pub answer_503: Option<String>,
    /// The other custom answers by status (`answer_301` … `answer_507`
    /// files, the `answers` table), each the text of its template.
    pub answers: BTreeMap<String, String>,
    /// Idle keep-alive / client inactivity timeout.
    pub front_timeout: Duration,
    /// Backend inactivity timeout.
    pub back_timeout: Duration,
    /// Time allowed to each backend connect attempt.
    pub connect_timeout: Duration,
    /// Time allowed to a request head after its first byte.
    pub request_timeout: Duration,
}

/// An HTTPS listener: the HTTP settings and the TLS ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpsListenerSettings {
    /// What it shares with an HTTP listener.
    pub http: HttpListenerSettings,
    /// `tls_versions` (default: TLS 1.2 and 1.3).
    pub versions: Vec<TlsVersion>,
    /// `cipher_list` (default: rustls' suites).
    pub cipher_list: Vec<String>,
    /// `cipher_suites` (added to `cipher_list`).
    pub cipher_suites: Vec<String>,
    /// `signature_algorithms` (default: every scheme rustls signs with).
    pub signature_algorithms: Vec<String>,
    /// `groups_list` (default: x25519, P-256, P-384).
    pub groups_list: Vec<String>,
    /// The PEM text of the `certificate` file: the listener's default
    /// certificate.
    pub certificate: Option<String>,
    /// The PEM text of the `certificate_chain` file.
    pub certificate_chain: Vec<String>,
    /// The PEM text of the `key` file.
    pub key: Option<String>,
    /// `send_tls13_tickets` (default 4).
    pub send_tls13_tickets: u64,
    /// `alpn_protocols` (default: `http/1.1`).
    pub alpn_protocols: Vec<String>,
    /// `hsts`: the HSTS policy of the listener's frontends that set none.
    pub hsts: Option<crate::command::HstsConfig>,
}

/// A certificate given on an HTTPS frontend (`certificate`, `key`,
/// `certificate_chain` files), added to the frontend's listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrontendCertificate {
    /// The leaf certificate's PEM text.
    pub certificate: String,
    /// The chain's PEM text (empty: none).
    pub certificate_chain: Vec<String>,
    /// The private key's PEM text.
    pub key: String,
    /// `tls_versions` of the frontend (kept in the order, informative).
    pub versions: Vec<TlsVersion>,
}

/// A TCP listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpListenerSettings {
    /// Where it listens.
    pub address: SocketAddr,
    /// `public_address`: stored and listed, not used by the proxy.
    pub public_address: Option<SocketAddr>,
    /// Clients start with a PROXY protocol header.
    pub expect_proxy: bool,
    /// Client-side inactivity timeout.
    pub front_timeout: Duration,
    /// Backend-side inactivity timeout.
    pub back_timeout: Duration,
    /// Time allowed to each backend connect attempt.
    pub connect_timeout: Duration,
}

/// A UDP listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpListenerSettings {
    /// Where it listens.
    pub address: SocketAddr,
    /// `public_address`: stored and listed, not used by the proxy.
    pub public_address: Option<SocketAddr>,
    /// Flow idle timeout refreshed by client datagrams (default 30 s).
    pub front_timeout: Duration,
    /// Flow idle timeout refreshed by backend datagrams (default 30 s).
    pub back_timeout: Duration,
    /// Largest datagram accepted (default 1500, clamped to `buffer_size`).
    pub max_rx_datagram_size: NonZeroU32,
    /// Flow cap per worker; `None` = auto from the fd limit (wire 0).
    pub max_flows: Option<NonZeroU32>,
    /// SO_RCVBUF; `None` = kernel default.
    pub recv_buffer_size: Option<NonZeroU32>,
    /// SO_SNDBUF; `None` = kernel default.
    pub send_buffer_size: Option<NonZeroU32>,
}

/// What a cluster proxies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterProtocol {
    /// HTTP/1.1 requests, routed by host and path.
    Http,
    /// TCP connections, one cluster per listener.
    Tcp,
    /// UDP flows, one cluster per listener.
    Udp,
}

/// One `[clusters.<id>]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterConfig {
    /// The table's `<id>`.
    pub cluster_id: String,
    /// What it proxies (declared, or detected from its frontends).
    pub protocol: ClusterProtocol,
    /// Default ROUND_ROBIN.
    pub load_balancing: LoadBalancingAlgorithms,
    /// Validated and stored; not used by the balancers.
    pub load_metric: Option<LoadMetric>,
    /// HTTP: stamp responses with the listener's sticky cookie and send
    /// a client back to the backend it names.
    pub sticky_session: bool,
    /// HTTP: answer plain-HTTP requests with a 301 to `https://`.
    pub https_redirect: bool,
    /// The port written in that redirect (none: 443).
    pub https_redirect_port: Option<u16>,
    /// HTTP: the text of the `answer_503` file, this cluster's 503 answer.
    pub answer_503: Option<String>,
    /// HTTP: its `answers` table by status, each the text of its template.
    pub answers: BTreeMap<String, String>,
    /// Send a PROXY protocol header to backends (TCP; on UDP clusters this
    /// sets `udp.send_proxy_protocol`).
    pub send_proxy: bool,
    /// Expect a PROXY protocol header from clients (TCP only).
    pub expect_proxy: bool,
    /// Where clients reach it.
    pub frontends: Vec<FrontendConfig>,
    /// Where its traffic goes.
    pub backends: Vec<BackendConfig>,
    /// UDP knobs: `Some` exactly when `protocol` is UDP.
    pub udp: Option<UdpClusterSettings>,
}

/// One frontend of a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrontendConfig {
    /// The listener's address.
    pub address: SocketAddr,
    /// HTTP only (required there).
    pub hostname: Option<String>,
    /// HTTP only: path rule kind (default PREFIX).
    pub path_kind: PathRuleKind,
    /// HTTP only: path rule value (default empty: every path).
    pub path: String,
    /// HTTP only: restrict to one method.
    pub method: Option<String>,
    /// Key/values attached to the frontend (access records).
    pub tags: BTreeMap<String, String>,
    /// HTTPS only: a certificate to add to the listener.
    pub certificate: Option<FrontendCertificate>,
    /// HTTPS only: `hsts`, the frontend's own HSTS policy (`enabled =
    /// false` turns the listener's off for it).
    pub hsts: Option<crate::command::HstsConfig>,
}

/// One backend of a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    /// Default `<cluster>-<index>`.
    pub backend_id: String,
    /// Where it listens.
    pub address: SocketAddr,
    /// Load-balancing weight (default 100).
    pub weight: i32,
    /// Sōzu's sticky-session id: stored, not used.
    pub sticky_id: Option<String>,
    /// `Some(true)`: a backup backend, used only while no primary is.
    pub backup: Option<bool>,
    /// `quic_lb_server_id` (hex in the file): the backend's QUIC-LB server
    /// id, 1 to 15 octets.
    pub quic_lb_server_id: Option<Vec<u8>>,
}

/// `[clusters.<id>.udp]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpClusterSettings {
    /// What the load-balancing hash covers (default SOURCE_IP).
    pub affinity_key: UdpAffinityKey,
    /// Close a flow after this many backend datagrams; `None` = unlimited.
    pub responses: Option<NonZeroU32>,
    /// Close a flow after this many client datagrams; `None` = unlimited.
    pub requests: Option<NonZeroU32>,
    /// Send a PROXY v2 header to backends (on the first datagram of a flow).
    pub send_proxy_protocol: bool,
    /// With `send_proxy_protocol`: on every datagram, not only the first.
    pub proxy_protocol_every_datagram: bool,
    /// Overrides the listener's front timeout for this cluster's flows.
    pub front_timeout: Option<Duration>,
    /// Overrides the listener's back timeout for this cluster's flows.
    pub back_timeout: Option<Duration>,
    /// Datagrams queued while a new flow awaits its backend (default 32).
    pub max_pending_datagrams: NonZeroU32,
    /// Bytes queued while a new flow awaits its backend (default 65536).
    pub max_pending_bytes: NonZeroU32,
    /// Keep a removed backend's live flows (default false: abort them).
    pub keep_flows_on_backend_removal: bool,
    /// What identifies a flow (default SOURCE_ADDRESS).
    pub flow_key: UdpFlowKey,
    /// One-way datagrams: no flow, no return path (default false).
    pub one_way: bool,
    /// With `flow_key = QUIC_CONNECTION_ID`: the length of the connection ids
    /// read from short-header packets (1..=20, default 8).
    pub quic_cid_length: u8,
    /// QUIC-LB routable connection ids: present when
    /// `quic_lb_server_id_length` is set.
    pub quic_lb: Option<QuicLbSettings>,
    /// Present when `[clusters.<id>.udp.health]` exists.
    pub health: Option<UdpHealthSettings>,
}

/// `quic_lb_*` keys of `[clusters.<id>.udp]` (plaintext QUIC-LB).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuicLbSettings {
    /// `quic_lb_config_id`: config rotation codepoint, 0 to 6 (default 0).
    pub config_id: u8,
    /// `quic_lb_server_id_length`: 1 to 15 octets.
    pub server_id_length: u8,
    /// `quic_lb_nonce_length`: at least 4; `None` = what `quic_cid_length`
    /// leaves.
    pub nonce_length: Option<u8>,
}

/// `[clusters.<id>.udp.health]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpHealthSettings {
    /// Default TCP_PROBE.
    pub mode: UdpHealthMode,
    /// TCP probe port; `None` = the backend's data port.
    pub tcp_port: Option<u16>,
    /// Successes to mark a backend up (default 2).
    pub rise: NonZeroU32,
    /// Failures to mark a backend down (default 3).
    pub fall: NonZeroU32,
    /// Use every backend when all are down (default true).
    pub fail_open: bool,
    /// Payload of a UDP probe (default empty).
    pub udp_probe_payload: Vec<u8>,
    /// Default 5 s.
    pub probe_interval: Duration,
    /// Default 2 s.
    pub probe_timeout: Duration,
}

impl Config {
    /// Reads and validates the configuration file at `path`. Relative paths
    /// inside it resolve against the file's directory, made absolute.
    pub fn load_from_path(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        // An absolute base keeps the socket and state paths valid whatever
        // the working directory of the process that uses them later.
        // A file without a single key (empty, or comments only) is refused:
        // it is more likely a wrong or truncated file than a wish to run a
        // master with every default and nothing to proxy.
        let no_key = text.lines().all(|l| {
            let l = l.trim();
            l.is_empty() || l.starts_with('#')
        });
        if no_key {
            return Err(ConfigError::Empty {
                path: path.to_path_buf(),
            });
        }
        let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let base_dir = absolute.parent().unwrap_or(Path::new(""));
        let mut config = parse::parse(&text, path, base_dir)?;
        config.config_path = Some(path.to_path_buf());
        Ok(config)
    }

    /// Validates configuration `text`. `origin` names it in error messages,
    /// and relative paths resolve against `origin`'s directory.
    pub fn from_str(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        parse::parse(text, origin, origin.parent().unwrap_or(Path::new("")))
    }

    /// The listener of `listener_type` bound on `address`, if any.
    pub fn listener(
        &self,
        listener_type: ListenerType,
        address: SocketAddr,
    ) -> Option<&ListenerConfig> {
        self.listeners
            .iter()
            .find(|l| l.listener_type() == listener_type && l.address() == address)
    }
}
