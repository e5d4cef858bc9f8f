//! What every configuration key means: its type, range, default, and the
//! checks across keys (duplicate listeners, frontends on missing listeners,
//! UDP cluster detection). Reads through `reader.rs`; builds the types of
//! `mod.rs`; never produces orders (that is `orders.rs`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::num::{NonZeroU16, NonZeroU32, NonZeroU64, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::de::DeTable;

use super::error::ConfigError;
use super::reader::{Document, TableReader, ValueReader};
use super::{
    AccessLogFormat, BackendConfig, ClusterConfig, ClusterProtocol, Config, FrontendCertificate,
    FrontendConfig, HttpListenerSettings, HttpsListenerSettings, ListenerConfig, LogTarget,
    MetricsConfig, QuicLbSettings, TcpListenerSettings, UdpClusterSettings, UdpHealthSettings,
    UdpListenerSettings,
};
use crate::command::{
    HstsConfig, LoadBalancingAlgorithms, LoadMetric, PathRuleKind, TlsVersion, UdpAffinityKey,
    UdpFlowKey, UdpHealthMode,
};

/// Sōzu global keys we accept and ignore (documented in doc/configure.md).
pub(super) const IGNORED_GLOBAL: &[&str] = &[
    "ctl_command_timeout",
    "handle_process_affinity",
    "disable_cluster_metrics",
    "min_buffers",
    "max_buffers",
    "log_colored",
    "access_logs_colored",
    "zombie_check_interval",
    "accept_queue_timeout",
    "evict_on_queue_full",
];

/// Sōzu listener keys we accept and ignore (custom answers).
/// On HTTP and HTTPS listeners the answer keys are read (consumed before
/// this list is looked at); on TCP and UDP ones they are ignored.
pub(super) const IGNORED_LISTENER: &[&str] = &[
    "answer_301",
    "answer_400",
    "answer_401",
    "answer_404",
    "answer_408",
    "answer_413",
    "answer_421",
    "answer_429",
    "answer_502",
    "answer_503",
    "answer_504",
    "answer_507",
    "answers",
    "http_answers",
];

/// Sōzu cluster keys we accept and ignore.
pub(super) const IGNORED_CLUSTER: &[&str] = &["answer_503", "answers", "http2"];

/// Sōzu frontend keys we accept and ignore on a frontend that is not on an
/// HTTPS listener (TLS keys; read on an HTTPS frontend).
pub(super) const IGNORED_FRONTEND: &[&str] =
    &["certificate", "key", "certificate_chain", "tls_versions"];

const DEFAULT_WEIGHT: i32 = 100;
const DEFAULT_MAX_STATE_FILE_SIZE: u64 = 64 * 1024 * 1024;

/// Parses and validates a whole configuration document; relative paths
/// resolve against `base_dir`.
pub(super) fn parse(text: &str, origin: &Path, base_dir: &Path) -> Result<Config, ConfigError> {
    let doc = Document::new(text, origin.display().to_string());
    let root = DeTable::parse(text).map_err(|e| ConfigError::Syntax {
        message: e.message().to_owned(),
        at: doc.location(e.span().map_or(0, |s| s.start)),
    })?;
    let mut top = TableReader::new(&doc, String::new(), root.span(), root.get_ref());
    let config = parse_root(&mut top, base_dir)?;
    top.finish(IGNORED_GLOBAL)?;
    Ok(config)
}

fn seconds(value: &ValueReader<'_>, min: u32) -> Result<Duration, ConfigError> {
    value
        .u32_at_least(min)
        .map(|s| Duration::from_secs(u64::from(s)))
}

fn opt<'a, T>(
    table: &mut TableReader<'a>,
    key: &str,
    read: impl FnOnce(&ValueReader<'a>) -> Result<T, ConfigError>,
) -> Result<Option<T>, ConfigError> {
    table.get(key).map(|v| read(&v)).transpose()
}

fn non_zero_usize(value: &ValueReader<'_>) -> Result<NonZeroUsize, ConfigError> {
    let n = value.integer(1, u64::from(u32::MAX), true)?;
    usize::try_from(n)
        .ok()
        .and_then(NonZeroUsize::new)
        .ok_or_else(|| value.invalid("an integer >= 1"))
}

fn non_zero_u32(value: &ValueReader<'_>) -> Result<NonZeroU32, ConfigError> {
    let n = value.u32_at_least(1)?;
    NonZeroU32::new(n).ok_or_else(|| value.invalid("an integer >= 1"))
}

/// "0 = unlimited / default" knobs.
fn zero_is_none(value: &ValueReader<'_>) -> Result<Option<NonZeroU32>, ConfigError> {
    value.u32_at_least(0).map(NonZeroU32::new)
}

/// `path` made absolute against `base_dir`, without `.` components
/// (`/etc/sozu/./sozu.sock` prints as `/etc/sozu/sozu.sock`).
fn resolve(base_dir: &Path, path: &str) -> PathBuf {
    let path = Path::new(path);
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        base_dir.join(path)
    };
    if joined.is_relative() {
        // Only from `Config::from_str` with a relative origin: kept as given.
        return joined;
    }
    joined
        .components()
        .filter(|c| !matches!(c, std::path::Component::CurDir))
        .collect()
}

fn path_value(value: &ValueReader<'_>, base_dir: &Path) -> Result<PathBuf, ConfigError> {
    Ok(resolve(base_dir, &value.non_empty_string()?))
}

fn parse_log_target(value: &ValueReader<'_>) -> Result<LogTarget, ConfigError> {
    let expected = "\"stdout\", \"stderr\", or a udp://, tcp://, unix:// or file:// URL";
    let text = value.str()?;
    let target = match text {
        "stdout" => Some(LogTarget::Stdout),
        "stderr" => Some(LogTarget::Stderr),
        _ => {
            if let Some(addr) = text.strip_prefix("udp://") {
                addr.parse().ok().map(LogTarget::Udp)
            } else if let Some(addr) = text.strip_prefix("tcp://") {
                addr.parse().ok().map(LogTarget::Tcp)
            } else if let Some(path) = text.strip_prefix("unix://") {
                (!path.is_empty()).then(|| LogTarget::Unix(PathBuf::from(path)))
            } else if let Some(path) = text.strip_prefix("file://") {
                (!path.is_empty()).then(|| LogTarget::File(PathBuf::from(path)))
            } else {
                None
            }
        }
    };
    target.ok_or_else(|| value.invalid(expected))
}

/// `upstream_source_addresses`: distinct IP addresses, not wildcards (a
/// wildcard is what binding nothing already does).
fn parse_source_addresses(value: &ValueReader<'_>) -> Result<Vec<IpAddr>, ConfigError> {
    let mut addresses: Vec<IpAddr> = Vec::new();
    for item in value.array()? {
        let expected = "an IP address like \"192.0.2.10\" or \"2001:db8::10\", not a wildcard";
        let ip: IpAddr = item.str()?.parse().map_err(|_| item.invalid(expected))?;
        if ip.is_unspecified() || ip.is_multicast() {
            return Err(item.invalid(expected));
        }
        if addresses.contains(&ip) {
            return Err(item.invalid("an address not already listed"));
        }
        addresses.push(ip);
    }
    Ok(addresses)
}

fn parse_root(top: &mut TableReader<'_>, base_dir: &Path) -> Result<Config, ConfigError> {
    let command_socket = opt(top, "command_socket", |v| path_value(v, base_dir))?
        .unwrap_or_else(|| resolve(base_dir, "./sozu.sock"));
    let command_buffer_size = opt(top, "command_buffer_size", non_zero_usize)?
        .unwrap_or(NonZeroUsize::new(16_384).expect("16384 is not zero"));
    let max_command_buffer = top.get("max_command_buffer_size");
    let max_command_buffer_size = match &max_command_buffer {
        Some(v) => non_zero_usize(v)?,
        None => NonZeroUsize::new(163_840).expect("163840 is not zero"),
    };
    if max_command_buffer_size < command_buffer_size {
        let (key, at) = match &max_command_buffer {
            Some(v) => (v.path().to_owned(), v.location()),
            None => ("max_command_buffer_size".to_owned(), top.location()),
        };
        return Err(ConfigError::Inconsistent {
            key,
            reason: format!(
                "must be at least command_buffer_size ({command_buffer_size}), got {max_command_buffer_size}"
            ),
            at,
        });
    }
    let command_allowed_uids = match top.get("command_allowed_uids") {
        Some(v) => v
            .array()?
            .iter()
            .map(|uid| uid.u32_at_least(0))
            .collect::<Result<Vec<_>, _>>()?,
        None => Vec::new(),
    };
    let max_command_clients = opt(top, "max_command_clients", non_zero_usize)?
        .unwrap_or(NonZeroUsize::new(64).expect("64 is not zero"));
    let worker_count = match top.get("worker_count") {
        Some(v) => {
            let n = v.u32_between(1, u32::from(u16::MAX))?;
            u16::try_from(n)
                .ok()
                .and_then(NonZeroU16::new)
                .ok_or_else(|| v.invalid(format!("an integer between 1 and {}", u16::MAX)))?
        }
        None => NonZeroU16::new(2).expect("2 is not zero"),
    };
    let worker_automatic_restart =
        opt(top, "worker_automatic_restart", ValueReader::bool)?.unwrap_or(true);
    let worker_timeout =
        opt(top, "worker_timeout", |v| seconds(v, 1))?.unwrap_or(Duration::from_secs(10));
    let max_connections = opt(top, "max_connections", non_zero_usize)?
        .unwrap_or(NonZeroUsize::new(500).expect("500 is not zero"));
    let buffer_size = opt(top, "buffer_size", non_zero_usize)?
        .unwrap_or(NonZeroUsize::new(16_393).expect("16393 is not zero"));
    let log_level = match top.get("log_level") {
        Some(v) => {
            let level = v.non_empty_string()?;
            crate::limits::check_log_filter(&level).map_err(|reason| {
                v.invalid(format!(
                    "a log filter like \"info\" or \"info,sozu_lib=debug\" ({reason})"
                ))
            })?;
            level
        }
        None => "info".to_owned(),
    };
    let log_target = opt(top, "log_target", parse_log_target)?.unwrap_or(LogTarget::Stdout);
    let access_logs_target = opt(top, "access_logs_target", parse_log_target)?;
    let access_logs_format = match opt(top, "access_logs_format", |v| v.one_of(&["ascii", "json"]))?
    {
        Some("json") => AccessLogFormat::Json,
        _ => AccessLogFormat::Ascii,
    };
    let audit_logs_target = opt(top, "audit_logs_target", parse_log_target)?;
    let saved_state = opt(top, "saved_state", |v| path_value(v, base_dir))?;
    let automatic_state_save = top.get("automatic_state_save");
    let automatic_state_save = match automatic_state_save {
        Some(v) => {
            let on = v.bool()?;
            if on && saved_state.is_none() {
                return Err(ConfigError::Inconsistent {
                    key: v.path().to_owned(),
                    reason: "is true but saved_state is not set".to_owned(),
                    at: v.location(),
                });
            }
            on
        }
        None => false,
    };
    let max_state_file_size = match top.get("max_state_file_size") {
        Some(v) => {
            let n = v.integer(1, i64::MAX as u64, true)?;
            NonZeroU64::new(n).ok_or_else(|| v.invalid("an integer >= 1"))?
        }
        None => NonZeroU64::new(DEFAULT_MAX_STATE_FILE_SIZE).expect("64 MiB is not zero"),
    };
    let activate_listeners = opt(top, "activate_listeners", ValueReader::bool)?.unwrap_or(true);
    let front_timeout =
        opt(top, "front_timeout", |v| seconds(v, 1))?.unwrap_or(Duration::from_secs(60));
    let back_timeout =
        opt(top, "back_timeout", |v| seconds(v, 1))?.unwrap_or(Duration::from_secs(30));
    let connect_timeout =
        opt(top, "connect_timeout", |v| seconds(v, 1))?.unwrap_or(Duration::from_secs(3));
    let request_timeout =
        opt(top, "request_timeout", |v| seconds(v, 1))?.unwrap_or(Duration::from_secs(10));
    let pid_file_path = opt(top, "pid_file_path", |v| path_value(v, base_dir))?;
    let hash_seed = opt(top, "hash_seed", |v| v.integer(0, u64::MAX, true))?;
    let metrics = match top.get("metrics") {
        Some(v) => Some(parse_metrics(&v)?),
        None => None,
    };

    let metrics_listener = opt(top, "metrics_listener", ValueReader::socket_addr)?;
    let upstream_source_addresses = match top.get("upstream_source_addresses") {
        Some(v) => parse_source_addresses(&v)?,
        None => Vec::new(),
    };

    let mut config = Config {
        config_path: None,
        command_socket,
        command_buffer_size,
        max_command_buffer_size,
        command_allowed_uids,
        max_command_clients,
        worker_count,
        worker_automatic_restart,
        worker_timeout,
        max_connections,
        buffer_size,
        log_level,
        log_target,
        access_logs_target,
        access_logs_format,
        audit_logs_target,
        saved_state,
        automatic_state_save,
        max_state_file_size,
        activate_listeners,
        front_timeout,
        back_timeout,
        connect_timeout,
        request_timeout,
        pid_file_path,
        hash_seed,
        metrics,
        metrics_listener,
        upstream_source_addresses,
        listeners: Vec::new(),
        clusters: BTreeMap::new(),
    };

    if let Some(listeners) = top.get("listeners") {
        // Indexed by (address, binds UDP) so that checking N listeners is
        // linear: a UDP and a TCP-bound listener may share an address.
        let mut first_lines: HashMap<(SocketAddr, bool), usize> = HashMap::new();
        let items = listeners.array()?;
        let mut parsed = Vec::with_capacity(items.len());
        for item in items {
            let listener = parse_listener(&item, &config, base_dir)?;
            let at = item.location();
            let key = (
                listener.address(),
                matches!(listener, ListenerConfig::Udp(_)),
            );
            if let Some(first_line) = first_lines.get(&key) {
                return Err(ConfigError::DuplicateListener {
                    key: item.path().to_owned(),
                    protocol: protocol_name(&listener),
                    address: listener.address(),
                    first_line: *first_line,
                    at,
                });
            }
            first_lines.insert(key, at.line);
            parsed.push(listener);
        }
        config.listeners = parsed;
    }
    let mut index = Index::new(&config.listeners);

    if let Some(clusters) = top.get("clusters") {
        let mut table = clusters.table()?;
        for (id, value) in table.take_all() {
            let cluster = parse_cluster(&id, &value, &index, base_dir)?;
            index.add_cluster(&cluster);
            config.clusters.insert(id, cluster);
        }
    }
    Ok(config)
}

fn protocol_name(listener: &ListenerConfig) -> &'static str {
    match listener {
        ListenerConfig::Http(_) => "http",
        ListenerConfig::Https(_) => "https",
        ListenerConfig::Tcp(_) => "tcp",
        ListenerConfig::Udp(_) => "udp",
    }
}

const KIND_UDP: u8 = 1;
const KIND_TCP: u8 = 2;
const KIND_HTTP: u8 = 4;
const KIND_HTTPS: u8 = 8;

/// Lookup tables built once so that checking frontends against listeners
/// and against other clusters costs O(1) each: validation stays linear in
/// the number of listeners, clusters and frontends.
struct Index {
    /// Which kinds of listener bind each address (KIND_* bits).
    listener_kinds: HashMap<SocketAddr, u8>,
    /// UDP and TCP frontends already taken: (address, udp) → cluster id.
    taken: HashMap<(SocketAddr, bool), String>,
}

impl Index {
    fn new(listeners: &[ListenerConfig]) -> Self {
        let mut listener_kinds: HashMap<SocketAddr, u8> = HashMap::new();
        for l in listeners {
            let kind = match l {
                ListenerConfig::Udp(_) => KIND_UDP,
                ListenerConfig::Tcp(_) => KIND_TCP,
                ListenerConfig::Http(_) => KIND_HTTP,
                ListenerConfig::Https(_) => KIND_HTTP | KIND_HTTPS,
            };
            *listener_kinds.entry(l.address()).or_default() |= kind;
        }
        Self {
            listener_kinds,
            taken: HashMap::new(),
        }
    }

    fn kinds(&self, address: SocketAddr) -> u8 {
        self.listener_kinds.get(&address).copied().unwrap_or(0)
    }

    fn has(&self, address: SocketAddr, kind: u8) -> bool {
        self.kinds(address) & kind != 0
    }

    fn add_cluster(&mut self, cluster: &ClusterConfig) {
        if cluster.protocol == ClusterProtocol::Http {
            return;
        }
        let udp = cluster.protocol == ClusterProtocol::Udp;
        for f in &cluster.frontends {
            self.taken
                .entry((f.address, udp))
                .or_insert_with(|| cluster.cluster_id.clone());
        }
    }
}

fn parse_metrics(value: &ValueReader<'_>) -> Result<MetricsConfig, ConfigError> {
    let mut table = value.table()?;
    let address = table.require("address")?.socket_addr()?;
    let tagged_metrics = opt(&mut table, "tagged_metrics", ValueReader::bool)?.unwrap_or(false);
    let prefix = opt(&mut table, "prefix", ValueReader::non_empty_string)?;
    table.finish(&[])?;
    Ok(MetricsConfig {
        address,
        tagged_metrics,
        prefix,
    })
}

/// `tls_versions` names: Sōzu's (`TLS_V12`), the protocol's (`TLS_V1_2`)
/// and OpenSSL's (`TLSv1.2`). Versions rustls lacks parse, and are refused
/// with the listener's other TLS knobs (`sozu-lib`'s `tls::policy`).
fn tls_version(value: &ValueReader<'_>) -> Result<TlsVersion, ConfigError> {
    let version = match value.str()? {
        "SSL_V2" | "SSLv2" => TlsVersion::SslV2,
        "SSL_V3" | "SSLv3" => TlsVersion::SslV3,
        "TLS_V10" | "TLS_V1_0" | "TLSv1" | "TLSv1.0" => TlsVersion::TlsV10,
        "TLS_V11" | "TLS_V1_1" | "TLSv1.1" => TlsVersion::TlsV11,
        "TLS_V12" | "TLS_V1_2" | "TLSv1.2" => TlsVersion::TlsV12,
        "TLS_V13" | "TLS_V1_3" | "TLSv1.3" => TlsVersion::TlsV13,
        _ => return Err(value.invalid("a TLS version (TLS_V12, TLS_V13)")),
    };
    Ok(version)
}

fn strings(table: &mut TableReader<'_>, key: &str) -> Result<Vec<String>, ConfigError> {
    match table.get(key) {
        None => Ok(Vec::new()),
        Some(v) => v
            .array()?
            .iter()
            .map(ValueReader::non_empty_string)
            .collect(),
    }
}

/// The text of the PEM file a key names (relative to the configuration
/// file's directory).
fn pem_file(value: &ValueReader<'_>, base_dir: &Path) -> Result<String, ConfigError> {
    let path = path_value(value, base_dir)?;
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    if size > crate::certificate::MAX_PEM_SIZE as u64 {
        return Err(ConfigError::Inconsistent {
            key: value.path().to_owned(),
            reason: format!(
                "{} is {size} bytes, over the {} bytes a PEM file may have",
                path.display(),
                crate::certificate::MAX_PEM_SIZE
            ),
            at: value.location(),
        });
    }
    std::fs::read_to_string(&path).map_err(|error| ConfigError::Inconsistent {
        key: value.path().to_owned(),
        reason: format!("cannot read {}: {error}", path.display()),
        at: value.location(),
    })
}

/// The largest custom answer file, bytes.
pub(super) const MAX_ANSWER_FILE_SIZE: u64 = 64 * 1024;

/// The text of a custom answer file (`answer_404`, `answer_503`), relative
/// to the configuration file's directory: a whole HTTP response as Sōzu's
/// answer files are, or only a body (doc/configure.md).
fn answer_file(value: &ValueReader<'_>, base_dir: &Path) -> Result<String, ConfigError> {
    let path = path_value(value, base_dir)?;
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    if size > MAX_ANSWER_FILE_SIZE {
        return Err(ConfigError::Inconsistent {
            key: value.path().to_owned(),
            reason: format!(
                "{} is {size} bytes, over the {MAX_ANSWER_FILE_SIZE} bytes an answer file may have",
                path.display()
            ),
            at: value.location(),
        });
    }
    std::fs::read_to_string(&path).map_err(|error| ConfigError::Inconsistent {
        key: value.path().to_owned(),
        reason: format!("cannot read {}: {error}", path.display()),
        at: value.location(),
    })
}

/// Sōzu's per-status answer file keys of a listener, beside `answer_404`
/// and `answer_503` (which keep their own fields).
const ANSWER_KEYS: &[(&str, &str)] = &[
    ("answer_301", "301"),
    ("answer_400", "400"),
    ("answer_401", "401"),
    ("answer_408", "408"),
    ("answer_413", "413"),
    ("answer_421", "421"),
    ("answer_429", "429"),
    ("answer_502", "502"),
    ("answer_504", "504"),
    ("answer_507", "507"),
];

/// Custom answers by status: a listener's `answer_NNN` files (when
/// `per_status_keys`), then its `answers` table (Sōzu's
/// `[listeners.answers]`; `http_answers` is read the same way), whose
/// values are a file path or `inline:` and the answer itself. The table
/// wins on a clash.
fn answers_table(
    table: &mut TableReader<'_>,
    base_dir: &Path,
    per_status_keys: bool,
) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut answers = BTreeMap::new();
    if per_status_keys {
        for (key, status) in ANSWER_KEYS {
            if let Some(v) = table.get(key) {
                answers.insert((*status).to_owned(), answer_file(&v, base_dir)?);
            }
        }
    }
    for key in ["http_answers", "answers"] {
        let Some(value) = table.get(key) else {
            continue;
        };
        for (status, v) in value.table()?.take_all() {
            let code = status.trim().parse::<u16>().ok();
            if !code.is_some_and(|c| (100..=599).contains(&c)) {
                return Err(ConfigError::Inconsistent {
                    key: v.path().to_owned(),
                    reason: format!("{status:?} is not an HTTP status (100..=599)"),
                    at: v.location(),
                });
            }
            let text = match v.str()?.strip_prefix("inline:") {
                Some(inline) => inline.to_owned(),
                None => answer_file(&v, base_dir)?,
            };
            answers.insert(status.trim().to_owned(), text);
        }
    }
    Ok(answers)
}

/// The TLS keys of an HTTPS listener.
fn parse_https(
    table: &mut TableReader<'_>,
    http: HttpListenerSettings,
    base_dir: &Path,
) -> Result<HttpsListenerSettings, ConfigError> {
    let versions = match table.get("tls_versions") {
        None => Vec::new(),
        Some(v) => v
            .array()?
            .iter()
            .map(tls_version)
            .collect::<Result<_, _>>()?,
    };
    let certificate = opt(table, "certificate", |v| pem_file(v, base_dir))?;
    let certificate_chain = opt(table, "certificate_chain", |v| pem_file(v, base_dir))?
        .into_iter()
        .collect();
    let key = opt(table, "key", |v| pem_file(v, base_dir))?;
    let send_tls13_tickets = match table.get("send_tls13_tickets") {
        None => 4,
        Some(v) => v.integer(0, 16, false)?,
    };
    Ok(HttpsListenerSettings {
        http,
        versions,
        cipher_list: strings(table, "cipher_list")?,
        cipher_suites: strings(table, "cipher_suites")?,
        signature_algorithms: strings(table, "signature_algorithms")?,
        groups_list: strings(table, "groups_list")?,
        certificate,
        certificate_chain,
        key,
        send_tls13_tickets,
        alpn_protocols: strings(table, "alpn_protocols")?,
        hsts: parse_hsts(table)?,
    })
}

/// Sōzu's `hsts` table, on an HTTPS listener (the default of its
/// frontends) or an HTTPS frontend (its own): `enabled` is required
/// (`false` on a frontend turns the listener's policy off for it),
/// `max_age` defaults to a year.
fn parse_hsts(table: &mut TableReader<'_>) -> Result<Option<HstsConfig>, ConfigError> {
    let Some(value) = table.get("hsts") else {
        return Ok(None);
    };
    let mut hsts = value.table()?;
    let enabled = hsts.require("enabled")?.bool()?;
    let max_age = opt(&mut hsts, "max_age", |v| v.u32_between(0, u32::MAX))?;
    let include_subdomains = opt(&mut hsts, "include_subdomains", ValueReader::bool)?;
    let preload = opt(&mut hsts, "preload", ValueReader::bool)?;
    let force_replace_backend = opt(&mut hsts, "force_replace_backend", ValueReader::bool)?;
    hsts.finish(&[])?;
    Ok(Some(HstsConfig {
        enabled: Some(enabled),
        max_age: max_age.or(enabled.then_some(crate::limits::DEFAULT_HSTS_MAX_AGE)),
        include_subdomains,
        preload,
        force_replace_backend,
    }))
}

fn parse_listener(
    item: &ValueReader<'_>,
    config: &Config,
    base_dir: &Path,
) -> Result<ListenerConfig, ConfigError> {
    let mut table = item.table()?;
    let protocol = table
        .require("protocol")?
        .one_of(&["http", "https", "tcp", "udp"])?;
    let address = table.require("address")?.socket_addr()?;
    let public_address = opt(&mut table, "public_address", ValueReader::socket_addr)?;
    let listener = if protocol == "udp" {
        if let Some(v) = table.get("expect_proxy") {
            return Err(v.invalid("no expect_proxy on a UDP listener (TCP and HTTP only)"));
        }
        let front_timeout =
            opt(&mut table, "front_timeout", |v| seconds(v, 1))?.unwrap_or(Duration::from_secs(30));
        let back_timeout =
            opt(&mut table, "back_timeout", |v| seconds(v, 1))?.unwrap_or(Duration::from_secs(30));
        let requested = opt(&mut table, "max_rx_datagram_size", |v| {
            v.u32_between(1, crate::limits::MAX_RX_DATAGRAM_SIZE)
        })?
        .unwrap_or(1500);
        let buffer = u32::try_from(config.buffer_size.get()).unwrap_or(u32::MAX);
        let clamped = requested.min(buffer);
        if clamped < requested {
            tracing::warn!(key = %table.path(), requested, buffer_size = buffer, "max_rx_datagram_size clamped to buffer_size");
        }
        let max_rx_datagram_size = NonZeroU32::new(clamped)
            .ok_or_else(|| item.invalid("a listener with buffer_size >= 1"))?;
        let max_flows = opt(&mut table, "max_flows", zero_is_none)?.flatten();
        let recv_buffer_size = opt(&mut table, "recv_buffer_size", zero_is_none)?.flatten();
        let send_buffer_size = opt(&mut table, "send_buffer_size", zero_is_none)?.flatten();
        ListenerConfig::Udp(UdpListenerSettings {
            address,
            public_address,
            front_timeout,
            back_timeout,
            max_rx_datagram_size,
            max_flows,
            recv_buffer_size,
            send_buffer_size,
        })
    } else {
        let expect_proxy = opt(&mut table, "expect_proxy", ValueReader::bool)?.unwrap_or(false);
        let front_timeout =
            opt(&mut table, "front_timeout", |v| seconds(v, 1))?.unwrap_or(config.front_timeout);
        let back_timeout =
            opt(&mut table, "back_timeout", |v| seconds(v, 1))?.unwrap_or(config.back_timeout);
        let connect_timeout = opt(&mut table, "connect_timeout", |v| seconds(v, 1))?
            .unwrap_or(config.connect_timeout);
        if protocol == "tcp" {
            ListenerConfig::Tcp(TcpListenerSettings {
                address,
                public_address,
                expect_proxy,
                front_timeout,
                back_timeout,
                connect_timeout,
            })
        } else {
            let sticky_name = opt(&mut table, "sticky_name", ValueReader::non_empty_string)?
                .unwrap_or_else(|| "SOZUBALANCEID".to_owned());
            let request_timeout = opt(&mut table, "request_timeout", |v| seconds(v, 1))?
                .unwrap_or(config.request_timeout);
            let answer_404 = table
                .get("answer_404")
                .map(|v| answer_file(&v, base_dir))
                .transpose()?;
            let answer_503 = table
                .get("answer_503")
                .map(|v| answer_file(&v, base_dir))
                .transpose()?;
            let answers = answers_table(&mut table, base_dir, true)?;
            let settings = HttpListenerSettings {
                address,
                public_address,
                expect_proxy,
                sticky_name,
                answer_404,
                answer_503,
                answers,
                front_timeout,
                back_timeout,
                connect_timeout,
                request_timeout,
            };
            if protocol == "https" {
                ListenerConfig::Https(Box::new(parse_https(&mut table, settings, base_dir)?))
            } else {
                ListenerConfig::Http(settings)
            }
        }
    };
    table.finish(IGNORED_LISTENER)?;
    Ok(listener)
}

/// Decides a cluster's protocol. Explicit `"udp"` and `"http"` win. A
/// `"tcp"` (or absent) protocol becomes UDP when a frontend address is bound
/// by a UDP listener and not by a TCP one — the Sōzu convention of UDP
/// clusters declared with `protocol = "tcp"`.
fn cluster_protocol(
    declared: Option<&ValueReader<'_>>,
    frontend_addresses: &[SocketAddr],
    index: &Index,
    table: &TableReader<'_>,
) -> Result<ClusterProtocol, ConfigError> {
    let udp_only = |a: &SocketAddr| index.has(*a, KIND_UDP) && !index.has(*a, KIND_TCP | KIND_HTTP);
    match declared {
        Some(v) => match v.one_of(&["http", "tcp", "udp"])? {
            "http" => Ok(ClusterProtocol::Http),
            "udp" => Ok(ClusterProtocol::Udp),
            _ if frontend_addresses.iter().any(udp_only) => Ok(ClusterProtocol::Udp),
            _ => Ok(ClusterProtocol::Tcp),
        },
        None => {
            if frontend_addresses.iter().any(udp_only) {
                Ok(ClusterProtocol::Udp)
            } else {
                Err(ConfigError::MissingKey {
                    key: super::reader::join(table.path(), "protocol"),
                    at: table.location(),
                })
            }
        }
    }
}

fn parse_cluster(
    id: &str,
    value: &ValueReader<'_>,
    index: &Index,
    base_dir: &Path,
) -> Result<ClusterConfig, ConfigError> {
    if id.is_empty() {
        return Err(value.invalid("a table under a non-empty cluster id"));
    }
    let mut table = value.table()?;
    let declared = table.get("protocol");
    let frontend_items = match table.get("frontends") {
        Some(v) => v.array()?,
        None => Vec::new(),
    };
    let mut frontend_addresses = Vec::with_capacity(frontend_items.len());
    for item in &frontend_items {
        let mut t = item.table()?;
        frontend_addresses.push(t.require("address")?.socket_addr()?);
    }
    let protocol = cluster_protocol(declared.as_ref(), &frontend_addresses, index, &table)?;

    let load_balancing = match table.get("load_balancing") {
        Some(v) => {
            let name = v.one_of(&[
                "ROUND_ROBIN",
                "RANDOM",
                "LEAST_LOADED",
                "POWER_OF_TWO",
                "HRW",
                "MAGLEV",
            ])?;
            LoadBalancingAlgorithms::from_str_name(name)
                .ok_or_else(|| v.invalid("a load-balancing algorithm"))?
        }
        None => LoadBalancingAlgorithms::RoundRobin,
    };
    let load_metric = match table.get("load_metric") {
        Some(v) => {
            let name = v.one_of(&["CONNECTIONS", "REQUESTS", "CONNECTION_TIME"])?;
            Some(LoadMetric::from_str_name(name).ok_or_else(|| v.invalid("a load metric"))?)
        }
        None => None,
    };
    let sticky_session = opt(&mut table, "sticky_session", ValueReader::bool)?.unwrap_or(false);
    let https_redirect = opt(&mut table, "https_redirect", ValueReader::bool)?.unwrap_or(false);
    let (https_redirect_port, answer_503, answers) = if protocol == ClusterProtocol::Http {
        let port = match table.get("https_redirect_port") {
            Some(v) => Some(
                u16::try_from(v.integer(1, 65535, false)?)
                    .map_err(|_| v.invalid("a port in 1..=65535"))?,
            ),
            None => None,
        };
        let answer = table
            .get("answer_503")
            .map(|v| answer_file(&v, base_dir))
            .transpose()?;
        let answers = answers_table(&mut table, base_dir, false)?;
        (port, answer, answers)
    } else {
        (None, None, BTreeMap::new())
    };
    let send_proxy = opt(&mut table, "send_proxy", ValueReader::bool)?.unwrap_or(false);
    let expect_proxy = match table.get("expect_proxy") {
        Some(v) if protocol == ClusterProtocol::Udp => {
            return Err(v.invalid("no expect_proxy on a UDP cluster (TCP only)"));
        }
        Some(v) => v.bool()?,
        None => false,
    };

    let mut frontends = Vec::with_capacity(frontend_items.len());
    for (item, address) in frontend_items.iter().zip(&frontend_addresses) {
        frontends.push(parse_frontend(item, *address, protocol, index, base_dir)?);
    }

    let mut backends: Vec<BackendConfig> = Vec::new();
    let mut backend_ids: HashSet<String> = HashSet::new();
    if let Some(items) = table.get("backends") {
        for (position, item) in items.array()?.iter().enumerate() {
            let backend = parse_backend(id, position, item)?;
            if !backend_ids.insert(backend.backend_id.clone()) {
                return Err(ConfigError::Inconsistent {
                    key: format!("{}.backend_id", item.path()),
                    reason: format!(
                        "{:?} is already used by another backend of cluster {id}",
                        backend.backend_id
                    ),
                    at: item.location(),
                });
            }
            backends.push(backend);
        }
    }

    let udp = match (table.get("udp"), protocol) {
        (Some(v), ClusterProtocol::Udp) => Some(parse_udp_cluster(&v, send_proxy)?),
        (None, ClusterProtocol::Udp) => Some(default_udp_cluster(send_proxy)),
        (Some(v), _) => {
            return Err(ConfigError::Inconsistent {
                key: v.path().to_owned(),
                reason: "a [udp] block is only allowed on a UDP cluster (protocol = \"udp\", or a frontend on a UDP listener)".to_owned(),
                at: v.location(),
            });
        }
        (None, _) => None,
    };

    table.finish(IGNORED_CLUSTER)?;
    Ok(ClusterConfig {
        cluster_id: id.to_owned(),
        protocol,
        load_balancing,
        load_metric,
        sticky_session,
        https_redirect,
        https_redirect_port,
        answer_503,
        answers,
        send_proxy,
        expect_proxy,
        frontends,
        backends,
        udp,
    })
}

fn parse_frontend(
    item: &ValueReader<'_>,
    address: SocketAddr,
    protocol: ClusterProtocol,
    index: &Index,
    base_dir: &Path,
) -> Result<FrontendConfig, ConfigError> {
    let mut table = item.table()?;
    let address_value = table.require("address")?;
    let bound = match protocol {
        ClusterProtocol::Udp => index.has(address, KIND_UDP),
        ClusterProtocol::Tcp => index.has(address, KIND_TCP),
        ClusterProtocol::Http => index.has(address, KIND_HTTP),
    };
    if !bound {
        let kind = match protocol {
            ClusterProtocol::Udp => "a udp",
            ClusterProtocol::Tcp => "a tcp",
            ClusterProtocol::Http => "an http or https",
        };
        return Err(address_value.invalid(format!("the address of {kind} listener")));
    }
    // A UDP or TCP listener forwards to exactly one cluster.
    if protocol != ClusterProtocol::Http {
        let taken_by = index
            .taken
            .get(&(address, protocol == ClusterProtocol::Udp));
        if let Some(other) = taken_by {
            return Err(ConfigError::Inconsistent {
                key: address_value.path().to_owned(),
                reason: format!(
                    "listener {address} already forwards to cluster {}: a {} listener has exactly one cluster",
                    other,
                    if protocol == ClusterProtocol::Udp { "udp" } else { "tcp" },
                ),
                at: address_value.location(),
            });
        }
    }
    let hostname = table.get("hostname");
    let path = table.get("path");
    let path_type = table.get("path_type");
    let method = table.get("method");
    let (hostname, path_kind, path, method) = if protocol == ClusterProtocol::Http {
        let hostname = match hostname {
            Some(v) => v.non_empty_string()?,
            None => {
                return Err(ConfigError::MissingKey {
                    key: super::reader::join(table.path(), "hostname"),
                    at: table.location(),
                })
            }
        };
        let path_kind = match path_type {
            Some(v) => {
                let name = v.one_of(&["PREFIX", "REGEX", "EQUALS"])?;
                PathRuleKind::from_str_name(name).ok_or_else(|| v.invalid("a path rule kind"))?
            }
            None => PathRuleKind::Prefix,
        };
        let path = match path {
            Some(v) => {
                let value = v.string()?;
                if path_kind == PathRuleKind::Regex {
                    // Compiled here as the workers will, so a bad pattern
                    // stops the load naming the key and the value instead
                    // of a route the workers refuse later.
                    if let Err(reason) = crate::limits::compile_path_regex(&value) {
                        return Err(v.invalid(format!(
                            "a regular expression (path_type = \"REGEX\"): {reason}"
                        )));
                    }
                }
                value
            }
            // The empty pattern matches every path, as the empty prefix.
            None => String::new(),
        };
        let method = method.map(|v| v.non_empty_string()).transpose()?;
        (Some(hostname), path_kind, path, method)
    } else {
        if let Some(v) = hostname.or(path).or(path_type).or(method) {
            return Err(v.invalid(
                "no HTTP routing key (hostname, path, path_type, method) on a TCP or UDP frontend",
            ));
        }
        (None, PathRuleKind::Prefix, String::new(), None)
    };
    let tags = match table.get("tags") {
        Some(v) => {
            let mut tags_table = v.table()?;
            tags_table
                .take_all()
                .into_iter()
                .map(|(k, v)| v.string().map(|s| (k, s)))
                .collect::<Result<BTreeMap<_, _>, _>>()?
        }
        None => BTreeMap::new(),
    };
    let https = protocol == ClusterProtocol::Http && index.has(address, KIND_HTTPS);
    let certificate = if https {
        parse_frontend_certificate(&mut table, base_dir)?
    } else {
        None
    };
    // HSTS is for HTTPS only (RFC 6797 §7.2): elsewhere `hsts` is an
    // unknown key, refused.
    let hsts = if https { parse_hsts(&mut table)? } else { None };
    table.finish(IGNORED_FRONTEND)?;
    Ok(FrontendConfig {
        certificate,
        hsts,
        address,
        hostname,
        path_kind,
        path,
        method,
        tags,
    })
}

fn parse_backend(
    cluster_id: &str,
    index: usize,
    item: &ValueReader<'_>,
) -> Result<BackendConfig, ConfigError> {
    let mut table = item.table()?;
    let address_value = table.require("address")?;
    let address = address_value.socket_addr()?;
    if let Some(reason) = crate::limits::unusable_backend_ip(address.ip()) {
        return Err(address_value.invalid(format!("a unicast backend address ({reason})")));
    }
    let max_weight = crate::limits::MAX_WEIGHT;
    let weight = match table.get("weight") {
        Some(v) => i32::try_from(v.u32_between(0, max_weight)?)
            .map_err(|_| v.invalid(format!("an integer between 0 and {max_weight}")))?,
        None => DEFAULT_WEIGHT,
    };
    let backend_id = opt(&mut table, "backend_id", ValueReader::non_empty_string)?
        .unwrap_or_else(|| format!("{cluster_id}-{index}"));
    let sticky_id = opt(&mut table, "sticky_id", ValueReader::non_empty_string)?;
    let backup = opt(&mut table, "backup", ValueReader::bool)?;
    let quic_lb_server_id = opt(&mut table, "quic_lb_server_id", |v| {
        parse_hex(v.str()?)
            .filter(|b| (1..=15).contains(&b.len()))
            .ok_or_else(|| v.invalid("1 to 15 octets in hex digits, e.g. \"0a1b\""))
    })?;
    table.finish(&[])?;
    Ok(BackendConfig {
        backend_id,
        address,
        weight,
        sticky_id,
        backup,
        quic_lb_server_id,
    })
}

/// Hex digits (an even count) as bytes.
fn parse_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

fn default_udp_cluster(send_proxy: bool) -> UdpClusterSettings {
    UdpClusterSettings {
        affinity_key: UdpAffinityKey::SourceIp,
        responses: None,
        requests: None,
        send_proxy_protocol: send_proxy,
        proxy_protocol_every_datagram: false,
        front_timeout: None,
        back_timeout: None,
        max_pending_datagrams: NonZeroU32::new(32).expect("32 is not zero"),
        max_pending_bytes: NonZeroU32::new(65_536).expect("65536 is not zero"),
        keep_flows_on_backend_removal: false,
        flow_key: UdpFlowKey::SourceAddress,
        one_way: false,
        quic_cid_length: crate::limits::DEFAULT_QUIC_CID_LENGTH,
        quic_lb: None,
        health: None,
    }
}

fn parse_udp_cluster(
    value: &ValueReader<'_>,
    send_proxy: bool,
) -> Result<UdpClusterSettings, ConfigError> {
    let mut table = value.table()?;
    let mut udp = default_udp_cluster(send_proxy);
    if let Some(v) = table.get("affinity_key") {
        let name = v.one_of(&["SOURCE_IP", "SOURCE_IP_PORT"])?;
        udp.affinity_key =
            UdpAffinityKey::from_str_name(name).ok_or_else(|| v.invalid("an affinity key"))?;
    }
    udp.responses = opt(&mut table, "responses", zero_is_none)?.flatten();
    udp.requests = opt(&mut table, "requests", zero_is_none)?.flatten();
    if let Some(on) = opt(&mut table, "send_proxy_protocol", ValueReader::bool)? {
        udp.send_proxy_protocol = on;
    }
    udp.proxy_protocol_every_datagram = opt(
        &mut table,
        "proxy_protocol_every_datagram",
        ValueReader::bool,
    )?
    .unwrap_or(false);
    udp.front_timeout = opt(&mut table, "front_timeout", |v| seconds(v, 1))?;
    udp.back_timeout = opt(&mut table, "back_timeout", |v| seconds(v, 1))?;
    if let Some(n) = opt(&mut table, "max_pending_datagrams", non_zero_u32)? {
        udp.max_pending_datagrams = n;
    }
    if let Some(n) = opt(&mut table, "max_pending_bytes", non_zero_u32)? {
        udp.max_pending_bytes = n;
    }
    udp.keep_flows_on_backend_removal = opt(
        &mut table,
        "keep_flows_on_backend_removal",
        ValueReader::bool,
    )?
    .unwrap_or(false);
    udp.one_way = opt(&mut table, "one_way", ValueReader::bool)?.unwrap_or(false);
    if let Some(v) = table.get("flow_key") {
        let name = v.one_of(&["SOURCE_ADDRESS", "QUIC_CONNECTION_ID", "DNS_ID"])?;
        udp.flow_key = UdpFlowKey::from_str_name(name).ok_or_else(|| v.invalid("a flow key"))?;
        if udp.flow_key == UdpFlowKey::DnsId && udp.one_way {
            // A DNS_ID cluster returns answers; one_way has no return path.
            return Err(v.invalid("a flow key other than DNS_ID with one_way = true"));
        }
    }
    if let Some(v) = table.get("quic_cid_length") {
        let len = v.u32_between(1, 20)?;
        udp.quic_cid_length =
            u8::try_from(len).map_err(|_| v.invalid("an integer between 1 and 20"))?;
    }
    udp.quic_lb = parse_quic_lb(&mut table, &udp)?;
    udp.health = match table.get("health") {
        Some(v) => Some(parse_health(&v)?),
        None => None,
    };
    table.finish(&[])?;
    Ok(udp)
}

/// The `quic_lb_*` keys: on when `quic_lb_server_id_length` is set, with
/// `flow_key = "QUIC_CONNECTION_ID"`; the lengths must fit the draft's
/// limits and `quic_cid_length` (the worker checks the same on orders).
fn parse_quic_lb(
    table: &mut TableReader<'_>,
    udp: &UdpClusterSettings,
) -> Result<Option<QuicLbSettings>, ConfigError> {
    let config_id = table.get("quic_lb_config_id");
    let nonce = table.get("quic_lb_nonce_length");
    let Some(sid) = table.get("quic_lb_server_id_length") else {
        if let Some(v) = config_id.or(nonce) {
            return Err(v.invalid("set together with quic_lb_server_id_length"));
        }
        return Ok(None);
    };
    if udp.flow_key != UdpFlowKey::QuicConnectionId {
        return Err(sid.invalid("used with flow_key = \"QUIC_CONNECTION_ID\""));
    }
    let server_id_length = sid.u32_between(1, 15)? as u8;
    let config_id = match config_id {
        Some(v) => v.u32_between(0, 6)? as u8,
        None => 0,
    };
    let cid = udp.quic_cid_length;
    let room = cid.saturating_sub(1 + server_id_length);
    let nonce_length = match nonce {
        Some(v) => {
            let n = v.u32_between(4, 18)? as u8;
            if 1 + server_id_length + n > cid {
                return Err(v.invalid(format!(
                    "at most {room}: 1 + server id + nonce must fit quic_cid_length ({cid})"
                )));
            }
            Some(n)
        }
        None => None,
    };
    if nonce_length.is_none() && room < 4 {
        return Err(sid.invalid(format!(
            "at most {}: quic_cid_length ({cid}) must leave 4 octets of nonce",
            cid.saturating_sub(5)
        )));
    }
    Ok(Some(QuicLbSettings {
        config_id,
        server_id_length,
        nonce_length,
    }))
}

fn parse_health(value: &ValueReader<'_>) -> Result<UdpHealthSettings, ConfigError> {
    let mut table = value.table()?;
    let mode = match table.get("mode") {
        Some(v) => {
            let name = v.one_of(&["HEALTH_OFF", "TCP_PROBE", "UDP_PROBE"])?;
            UdpHealthMode::from_str_name(name).ok_or_else(|| v.invalid("a health mode"))?
        }
        None => UdpHealthMode::TcpProbe,
    };
    let tcp_port = match table.get("tcp_port") {
        Some(v) => Some(
            u16::try_from(v.u32_between(1, 65_535)?)
                .map_err(|_| v.invalid("an integer between 1 and 65535"))?,
        ),
        None => None,
    };
    let rise = opt(&mut table, "rise", non_zero_u32)?
        .unwrap_or(NonZeroU32::new(2).expect("2 is not zero"));
    let fall = opt(&mut table, "fall", non_zero_u32)?
        .unwrap_or(NonZeroU32::new(3).expect("3 is not zero"));
    let fail_open = opt(&mut table, "fail_open", ValueReader::bool)?.unwrap_or(true);
    let udp_probe_payload = opt(&mut table, "udp_probe_payload", ValueReader::string)?
        .map(String::into_bytes)
        .unwrap_or_default();
    let probe_interval = opt(&mut table, "probe_interval_seconds", |v| seconds(v, 1))?
        .unwrap_or(Duration::from_secs(5));
    let probe_timeout = opt(&mut table, "probe_timeout_seconds", |v| seconds(v, 1))?
        .unwrap_or(Duration::from_secs(2));
    table.finish(&[])?;
    Ok(UdpHealthSettings {
        mode,
        tcp_port,
        rise,
        fall,
        fail_open,
        udp_probe_payload,
        probe_interval,
        probe_timeout,
    })
}

/// An HTTPS frontend's `certificate`, `key` and `certificate_chain` files
/// (the first two together, or neither).
fn parse_frontend_certificate(
    table: &mut TableReader<'_>,
    base_dir: &Path,
) -> Result<Option<FrontendCertificate>, ConfigError> {
    let certificate_value = table.get("certificate");
    let key_value = table.get("key");
    let chain = opt(table, "certificate_chain", |v| pem_file(v, base_dir))?;
    let versions = match table.get("tls_versions") {
        None => Vec::new(),
        Some(v) => v
            .array()?
            .iter()
            .map(tls_version)
            .collect::<Result<_, _>>()?,
    };
    match (certificate_value, key_value) {
        (None, None) => {
            if chain.is_some() || !versions.is_empty() {
                return Err(ConfigError::MissingKey {
                    key: super::reader::join(table.path(), "certificate"),
                    at: table.location(),
                });
            }
            Ok(None)
        }
        (Some(certificate), Some(key)) => Ok(Some(FrontendCertificate {
            certificate: pem_file(&certificate, base_dir)?,
            certificate_chain: chain.into_iter().collect(),
            key: pem_file(&key, base_dir)?,
            versions,
        })),
        (Some(_), None) => Err(ConfigError::MissingKey {
            key: super::reader::join(table.path(), "key"),
            at: table.location(),
        }),
        (None, Some(_)) => Err(ConfigError::MissingKey {
            key: super::reader::join(table.path(), "certificate"),
            at: table.location(),
        }),
    }
}
