//! A `config.toml` for one test, in Sōzu 2.x keys (`doc/configure.md`).
//!
//! [`SozuConfig`] holds what tests vary (worker count, UDP listeners,
//! clusters with their UDP knobs, health checks and backends); the paths
//! (`command_socket`, `pid_file_path`) are filled in by [`crate::Sozu`] in
//! its temp dir. Rendering is plain text so a test can read the exact file
//! the master got.

use std::fmt::Write;
use std::net::SocketAddr;
use std::path::Path;

/// A whole configuration file.
#[derive(Debug, Clone)]
pub struct SozuConfig {
    /// `worker_count`.
    pub worker_count: u32,
    /// `worker_timeout`, seconds.
    pub worker_timeout: u32,
    /// `worker_automatic_restart`.
    pub worker_automatic_restart: bool,
    /// `log_level`.
    pub log_level: String,
    /// `[[listeners]]` with `protocol = "udp"`.
    pub udp_listeners: Vec<UdpListener>,
    /// `[clusters.<id>]` with `protocol = "udp"`.
    pub clusters: Vec<ClusterConfig>,
    /// Appended verbatim (for keys the builder does not know).
    pub extra: String,
}

impl Default for SozuConfig {
    fn default() -> Self {
        SozuConfig {
            worker_count: 2,
            worker_timeout: 5,
            worker_automatic_restart: true,
            log_level: "info".to_owned(),
            udp_listeners: Vec::new(),
            clusters: Vec::new(),
            extra: String::new(),
        }
    }
}

/// One UDP listener.
#[derive(Debug, Clone)]
pub struct UdpListener {
    /// `address`.
    pub address: SocketAddr,
    /// `front_timeout`, seconds.
    pub front_timeout: u32,
    /// `back_timeout`, seconds.
    pub back_timeout: u32,
    /// `max_rx_datagram_size`, bytes.
    pub max_rx_datagram_size: u32,
    /// `max_flows` per worker, 0 = automatic.
    pub max_flows: u32,
}

impl UdpListener {
    /// A listener with the defaults of `doc/configure.md`.
    pub fn new(address: SocketAddr) -> Self {
        UdpListener {
            address,
            front_timeout: 30,
            back_timeout: 30,
            max_rx_datagram_size: 1500,
            max_flows: 0,
        }
    }
}

/// One UDP cluster, its frontends, backends and knobs.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// The cluster id (`[clusters.<id>]`).
    pub id: String,
    /// `load_balancing`, e.g. `"ROUND_ROBIN"`.
    pub load_balancing: String,
    /// `frontends` addresses (UDP listeners).
    pub frontends: Vec<SocketAddr>,
    /// `backends`.
    pub backends: Vec<Backend>,
    /// `[clusters.<id>.udp]` `responses`, 0 = unlimited.
    pub responses: u32,
    /// `requests`, 0 = unlimited.
    pub requests: u32,
    /// `affinity_key`, e.g. `"SOURCE_IP_PORT"`; `None` leaves the default.
    pub affinity_key: Option<String>,
    /// `send_proxy_protocol`.
    pub send_proxy_protocol: bool,
    /// `proxy_protocol_every_datagram`.
    pub proxy_protocol_every_datagram: bool,
    /// `[clusters.<id>.udp.health]`, absent when `None`.
    pub health: Option<HealthConfig>,
    /// `keep_flows_on_backend_removal`.
    pub keep_flows_on_backend_removal: bool,
    /// `flow_key`, e.g. `"QUIC_CONNECTION_ID"`; `None` leaves the default.
    pub flow_key: Option<String>,
    /// `quic_cid_length`; `None` leaves the default.
    pub quic_cid_length: Option<u32>,
    /// `quic_lb_config_id` and `quic_lb_server_id_length` (QUIC-LB on);
    /// `None` leaves QUIC-LB off.
    pub quic_lb: Option<(u32, u32)>,
}

impl ClusterConfig {
    /// A round-robin cluster `id` served on `frontend`.
    pub fn new(id: &str, frontend: SocketAddr) -> Self {
        ClusterConfig {
            id: id.to_owned(),
            load_balancing: "ROUND_ROBIN".to_owned(),
            frontends: vec![frontend],
            backends: Vec::new(),
            responses: 0,
            requests: 0,
            affinity_key: None,
            send_proxy_protocol: false,
            proxy_protocol_every_datagram: false,
            health: None,
            keep_flows_on_backend_removal: false,
            flow_key: None,
            quic_cid_length: None,
            quic_lb: None,
        }
    }

    /// Adds a backend.
    pub fn backend(mut self, backend_id: &str, address: SocketAddr) -> Self {
        self.backends.push(Backend {
            id: backend_id.to_owned(),
            address,
            backup: false,
            quic_lb_server_id: None,
        });
        self
    }

    /// Adds a backend with a QUIC-LB server id (hex), a backup if `backup`.
    pub fn quic_lb_backend(
        mut self,
        backend_id: &str,
        address: SocketAddr,
        server_id: &str,
        backup: bool,
    ) -> Self {
        self.backends.push(Backend {
            id: backend_id.to_owned(),
            address,
            backup,
            quic_lb_server_id: Some(server_id.to_owned()),
        });
        self
    }
}

/// One backend of a cluster.
#[derive(Debug, Clone)]
pub struct Backend {
    /// `backend_id`.
    pub id: String,
    /// `address`.
    pub address: SocketAddr,
    /// `backup`.
    pub backup: bool,
    /// `quic_lb_server_id` (hex), if any.
    pub quic_lb_server_id: Option<String>,
}

/// `[clusters.<id>.udp.health]`.
#[derive(Debug, Clone)]
pub struct HealthConfig {
    /// `"UDP_PROBE"`, `"TCP_PROBE"` or `"HEALTH_OFF"`.
    pub mode: String,
    /// `udp_probe_payload`.
    pub udp_probe_payload: String,
    /// `rise`: successes to mark a backend up.
    pub rise: u32,
    /// `fall`: failures to mark a backend down.
    pub fall: u32,
    /// `fail_open`.
    pub fail_open: bool,
    /// `probe_interval_seconds`.
    pub probe_interval_seconds: u32,
    /// `probe_timeout_seconds`.
    pub probe_timeout_seconds: u32,
}

impl HealthConfig {
    /// A fast UDP probe: every second, one second to answer, down after 2
    /// failures, up after 1 success.
    pub fn fast_udp_probe(payload: &str) -> Self {
        HealthConfig {
            mode: "UDP_PROBE".to_owned(),
            udp_probe_payload: payload.to_owned(),
            rise: 1,
            fall: 2,
            fail_open: false,
            probe_interval_seconds: 1,
            probe_timeout_seconds: 1,
        }
    }
}

/// A TOML string literal.
fn quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl SozuConfig {
    /// The file's text, with the command socket and pid file in `dir`.
    pub fn render(&self, dir: &Path) -> String {
        let mut t = String::new();
        let path = |name: &str| quoted(&dir.join(name).to_string_lossy());
        // `write!` into a String cannot fail.
        let _ = writeln!(t, "command_socket = {}", path("sozu.sock"));
        let _ = writeln!(t, "pid_file_path = {}", path("sozu.pid"));
        let _ = writeln!(t, "worker_count = {}", self.worker_count);
        let _ = writeln!(t, "worker_timeout = {}", self.worker_timeout);
        let _ = writeln!(
            t,
            "worker_automatic_restart = {}",
            self.worker_automatic_restart
        );
        let _ = writeln!(t, "log_level = {}", quoted(&self.log_level));
        let _ = writeln!(t, "log_target = \"stdout\"");
        let _ = writeln!(t, "activate_listeners = true");
        t.push_str(&self.extra);
        t.push('\n');
        for l in &self.udp_listeners {
            let _ = writeln!(t, "\n[[listeners]]\nprotocol = \"udp\"");
            let _ = writeln!(t, "address = {}", quoted(&l.address.to_string()));
            let _ = writeln!(t, "front_timeout = {}", l.front_timeout);
            let _ = writeln!(t, "back_timeout = {}", l.back_timeout);
            let _ = writeln!(t, "max_rx_datagram_size = {}", l.max_rx_datagram_size);
            let _ = writeln!(t, "max_flows = {}", l.max_flows);
        }
        for c in &self.clusters {
            let _ = writeln!(t, "\n[clusters.{}]\nprotocol = \"udp\"", c.id);
            let _ = writeln!(t, "load_balancing = {}", quoted(&c.load_balancing));
            let frontends: Vec<String> = c
                .frontends
                .iter()
                .map(|a| format!("{{ address = {} }}", quoted(&a.to_string())))
                .collect();
            let _ = writeln!(t, "frontends = [{}]", frontends.join(", "));
            let backends: Vec<String> = c
                .backends
                .iter()
                .map(|b| {
                    let mut extra = String::new();
                    if b.backup {
                        extra.push_str(", backup = true");
                    }
                    if let Some(id) = &b.quic_lb_server_id {
                        let _ = write!(extra, ", quic_lb_server_id = {}", quoted(id));
                    }
                    format!(
                        "{{ address = {}, backend_id = {}{extra} }}",
                        quoted(&b.address.to_string()),
                        quoted(&b.id)
                    )
                })
                .collect();
            let _ = writeln!(t, "backends = [{}]", backends.join(", "));
            let _ = writeln!(t, "\n[clusters.{}.udp]", c.id);
            let _ = writeln!(t, "responses = {}", c.responses);
            let _ = writeln!(t, "requests = {}", c.requests);
            if let Some(key) = &c.affinity_key {
                let _ = writeln!(t, "affinity_key = {}", quoted(key));
            }
            let _ = writeln!(t, "send_proxy_protocol = {}", c.send_proxy_protocol);
            if c.keep_flows_on_backend_removal {
                let _ = writeln!(t, "keep_flows_on_backend_removal = true");
            }
            let _ = writeln!(
                t,
                "proxy_protocol_every_datagram = {}",
                c.proxy_protocol_every_datagram
            );
            if let Some(key) = &c.flow_key {
                let _ = writeln!(t, "flow_key = {}", quoted(key));
            }
            if let Some(len) = c.quic_cid_length {
                let _ = writeln!(t, "quic_cid_length = {len}");
            }
            if let Some((config_id, server_id_length)) = c.quic_lb {
                let _ = writeln!(t, "quic_lb_config_id = {config_id}");
                let _ = writeln!(t, "quic_lb_server_id_length = {server_id_length}");
            }
            if let Some(h) = &c.health {
                let _ = writeln!(t, "\n[clusters.{}.udp.health]", c.id);
                let _ = writeln!(t, "mode = {}", quoted(&h.mode));
                let _ = writeln!(t, "udp_probe_payload = {}", quoted(&h.udp_probe_payload));
                let _ = writeln!(t, "rise = {}", h.rise);
                let _ = writeln!(t, "fall = {}", h.fall);
                let _ = writeln!(t, "fail_open = {}", h.fail_open);
                let _ = writeln!(t, "probe_interval_seconds = {}", h.probe_interval_seconds);
                let _ = writeln!(t, "probe_timeout_seconds = {}", h.probe_timeout_seconds);
            }
        }
        t
    }
}

impl SozuConfig {
    /// `workers` workers serving one UDP listener and one cluster.
    pub fn udp(workers: u32, listener: UdpListener, cluster: ClusterConfig) -> Self {
        SozuConfig {
            worker_count: workers,
            udp_listeners: vec![listener],
            clusters: vec![cluster],
            ..SozuConfig::default()
        }
    }
}
