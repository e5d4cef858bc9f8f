//! The proxies under test: detection, equivalent configs, start, readiness.
//!
//! For sozu, nginx `stream` and Envoy `udp_proxy` this writes one UDP
//! listener forwarding to the echo backends (round robin, one worker, long
//! flow timeouts, optional "one reply per flow"), starts the proxy pinned
//! to its CPU in a temporary directory, and waits until a probe datagram
//! comes back through it (bounded). It never binds anything but loopback.

use std::fmt::Write as _;
use std::fs;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::processes::{check_interrupted, find_on_path, Proc, Spawn};
use crate::stats::{Header, HEADER_LEN, PROBE_FLOW};

/// Flow idle timeout given to every proxy, seconds: longer than any
/// scenario so live flows stay live while measured.
const FLOW_TIMEOUT_S: u64 = 120;

/// Envoy session idle timeout standing in for "one reply per flow".
const ENVOY_ONE_SHOT_IDLE: &str = "0.2s";

/// Longest wait for a proxy to forward its first datagram.
const READY_LIMIT: Duration = Duration::from_secs(15);

/// Where datagrams go in one measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Target {
    /// Generator straight to the echo backends.
    Direct,
    /// Through `sozu start`.
    Sozu,
    /// Through nginx `stream` UDP.
    Nginx,
    /// Through Envoy `udp_proxy`.
    Envoy,
}

impl Target {
    /// Name used on the command line and in tables.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::Sozu => "sozu",
            Target::Nginx => "nginx",
            Target::Envoy => "envoy",
        }
    }

    /// Parses a command-line name.
    pub(crate) fn parse(name: &str) -> anyhow::Result<Target> {
        Ok(match name {
            "direct" => Target::Direct,
            "sozu" => Target::Sozu,
            "nginx" => Target::Nginx,
            "envoy" => Target::Envoy,
            other => bail!("unknown target {other:?} (direct, sozu, nginx, envoy)"),
        })
    }
}

/// Installed proxies found on this machine.
#[derive(Debug, Clone, Default)]
pub(crate) struct Installed {
    /// The sozu binary, when it exists.
    pub sozu: Option<PathBuf>,
    /// nginx binary and, when the stream module is dynamic, its `.so`.
    pub nginx: Option<(PathBuf, Option<PathBuf>)>,
    /// The envoy binary.
    pub envoy: Option<PathBuf>,
}

impl Installed {
    /// Looks for the proxies; `sozu` is the path given on the command line.
    pub(crate) fn detect(sozu: &Path) -> Installed {
        let sozu = sozu.is_file().then(|| sozu.to_path_buf());
        let nginx =
            find_on_path("nginx").and_then(|bin| stream_module(&bin).map(|module| (bin, module)));
        Installed {
            sozu,
            nginx,
            envoy: find_on_path("envoy"),
        }
    }

    /// Why `target` cannot run here, `None` when it can.
    pub(crate) fn missing(&self, target: Target) -> Option<&'static str> {
        match target {
            Target::Direct => None,
            Target::Sozu if self.sozu.is_none() => Some("sozu binary not found (--sozu PATH)"),
            Target::Nginx if self.nginx.is_none() => {
                Some("nginx with the stream module not installed")
            }
            Target::Envoy if self.envoy.is_none() => Some("envoy not on PATH"),
            _ => None,
        }
    }
}

/// `Some(None)`: stream compiled in; `Some(Some(so))`: dynamic module;
/// `None`: no stream support.
fn stream_module(nginx: &Path) -> Option<Option<PathBuf>> {
    let output = Command::new(nginx).arg("-V").output().ok()?;
    let info = String::from_utf8_lossy(&output.stderr);
    if info.contains("--with-stream ") || info.ends_with("--with-stream") {
        return Some(None);
    }
    let dirs = [
        "/usr/lib/nginx/modules",
        "/usr/lib64/nginx/modules",
        "/usr/share/nginx/modules",
    ];
    dirs.iter()
        .map(|d| Path::new(d).join("ngx_stream_module.so"))
        .find(|p| p.is_file())
        .map(Some)
}

/// What a scenario asks of the proxy config.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProxyOptions {
    /// Close a flow after this many replies (0 = unlimited).
    pub responses: u32,
    /// Flow table size for sozu's `max_flows`.
    pub max_flows: usize,
    /// One-way traffic: sozu `one_way = true`, nginx `proxy_responses 0`
    /// (no answer expected; Envoy has no equivalent).
    pub one_way: bool,
    /// DNS traffic: sozu `flow_key = "DNS_ID"` (queries multiplexed by ID
    /// over a few sockets per backend, answers awaited 2 s); ignored by the
    /// others.
    pub dns_id: bool,
    /// The listener's kernel receive buffer in bytes (`None`: the kernel
    /// default): sozu `recv_buffer_size`, nginx `listen … rcvbuf=` (Envoy:
    /// not set).
    pub recv_buffer: Option<u32>,
    /// More listeners that get no traffic, each on
    /// [`idle_listener_address`]: what a wake-up costs a proxy with many
    /// listeners (an RTP port range, one per game server).
    pub idle_listeners: usize,
}

/// The `i`-th idle listener's address: port 9999 on its own loopback
/// address (127.1.x.y), so a thousand of them need no free-port search.
pub(crate) fn idle_listener_address(i: usize) -> SocketAddr {
    let third = u8::try_from(i / 250).unwrap_or(u8::MAX);
    let fourth = u8::try_from(i % 250 + 1).unwrap_or(1);
    SocketAddr::from(([127, 1, third, fourth], 9999))
}

/// Picks a free loopback UDP port (bind to 0, read it, release it).
pub(crate) fn free_udp_port() -> anyhow::Result<SocketAddr> {
    let socket = UdpSocket::bind("127.0.0.1:0").context("binding a probe for a free port")?;
    Ok(socket.local_addr()?)
}

/// Picks a free loopback TCP port (bind to 0, read it, release it).
pub(crate) fn free_tcp_port() -> anyhow::Result<SocketAddr> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").context("binding a probe for a free port")?;
    Ok(listener.local_addr()?)
}

/// sozu `config.toml` (the format of doc/configure.md).
pub(crate) fn sozu_config(
    dir: &Path,
    listen: SocketAddr,
    backends: &[SocketAddr],
    o: ProxyOptions,
) -> String {
    let mut c = String::new();
    let _ = writeln!(
        c,
        "command_socket = \"{}\"",
        dir.join("sozu.sock").display()
    );
    let _ = writeln!(c, "worker_count = 1");
    let _ = writeln!(c, "log_level = \"warn\"");
    let _ = writeln!(c, "log_target = \"stdout\"");
    let _ = writeln!(
        c,
        "\n[[listeners]]\nprotocol = \"udp\"\naddress = \"{listen}\""
    );
    let _ = writeln!(
        c,
        "front_timeout = {FLOW_TIMEOUT_S}\nback_timeout = {FLOW_TIMEOUT_S}"
    );
    let _ = writeln!(c, "max_flows = {}", o.max_flows);
    if let Some(bytes) = o.recv_buffer {
        let _ = writeln!(c, "recv_buffer_size = {bytes}");
    }
    let idle: Vec<SocketAddr> = (0..o.idle_listeners).map(idle_listener_address).collect();
    for address in &idle {
        let _ = writeln!(
            c,
            "\n[[listeners]]\nprotocol = \"udp\"\naddress = \"{address}\""
        );
    }
    let _ = writeln!(
        c,
        "\n[clusters.echo]\nprotocol = \"udp\"\nload_balancing = \"ROUND_ROBIN\""
    );
    let frontends: Vec<String> = std::iter::once(listen)
        .chain(idle)
        .map(|a| format!("{{ address = \"{a}\" }}"))
        .collect();
    let _ = writeln!(c, "frontends = [ {} ]", frontends.join(", "));
    let list: Vec<String> = backends
        .iter()
        .enumerate()
        .map(|(i, b)| format!("{{ address = \"{b}\", backend_id = \"echo-{i}\" }}"))
        .collect();
    let _ = writeln!(c, "backends = [ {} ]", list.join(", "));
    let _ = writeln!(
        c,
        "\n[clusters.echo.udp]\naffinity_key = \"SOURCE_IP_PORT\""
    );
    if o.responses > 0 {
        let _ = writeln!(c, "responses = {}", o.responses);
    }
    if o.one_way {
        let _ = writeln!(c, "one_way = true");
    }
    if o.dns_id {
        let _ = writeln!(c, "flow_key = \"DNS_ID\"\nback_timeout = 2");
    }
    c
}

/// The top of every nginx.conf the benches write: the dynamic module to
/// load if any, one worker in the foreground, its pid and error log under
/// `prefix`, and `worker_connections` connection slots.
pub(crate) fn nginx_preamble(
    c: &mut String,
    prefix: &Path,
    module: Option<&Path>,
    worker_connections: u32,
) {
    if let Some(module) = module {
        let _ = writeln!(c, "load_module {};", module.display());
    }
    let _ = writeln!(c, "worker_processes 1;\ndaemon off;\nmaster_process on;");
    let _ = writeln!(c, "worker_rlimit_nofile 20000;");
    let _ = writeln!(c, "pid {};", prefix.join("nginx.pid").display());
    let _ = writeln!(c, "error_log {} warn;", prefix.join("error.log").display());
    let _ = writeln!(c, "events {{ worker_connections {worker_connections}; }}");
}

/// nginx.conf: one worker, `stream` UDP server, round robin upstream.
pub(crate) fn nginx_config(
    prefix: &Path,
    module: Option<&Path>,
    listen: SocketAddr,
    backends: &[SocketAddr],
    o: ProxyOptions,
) -> String {
    let mut c = String::new();
    // A UDP session takes two connection slots (client side + upstream).
    nginx_preamble(&mut c, prefix, module, 40_000);
    let _ = writeln!(c, "stream {{\n  upstream echo {{");
    for b in backends {
        let _ = writeln!(c, "    server {b};");
    }
    let rcvbuf = o
        .recv_buffer
        .map(|bytes| format!(" rcvbuf={bytes}"))
        .unwrap_or_default();
    let _ = writeln!(c, "  }}\n  server {{\n    listen {listen} udp{rcvbuf};");
    for i in 0..o.idle_listeners {
        let _ = writeln!(c, "    listen {} udp;", idle_listener_address(i));
    }
    let _ = writeln!(
        c,
        "    proxy_pass echo;\n    proxy_timeout {FLOW_TIMEOUT_S}s;"
    );
    if o.one_way {
        let _ = writeln!(c, "    proxy_responses 0;");
    } else if o.responses > 0 {
        let _ = writeln!(c, "    proxy_responses {};", o.responses);
    }
    let _ = writeln!(c, "  }}\n}}");
    c
}

/// Envoy bootstrap: one UDP listener with `udp_proxy` to a static cluster.
/// Envoy has no "close after N replies": when `responses` is asked for, the
/// nearest equivalent is a short session idle timeout. The cluster's
/// circuit breaker (`max_connections`, 1024 by default) also caps UDP
/// sessions, so it is raised to the flow counts used here.
pub(crate) fn envoy_config(listen: SocketAddr, backends: &[SocketAddr], o: ProxyOptions) -> String {
    let idle = if o.responses > 0 {
        ENVOY_ONE_SHOT_IDLE.to_string()
    } else {
        format!("{FLOW_TIMEOUT_S}s")
    };
    let mut c = String::new();
    let _ = writeln!(
        c,
        "static_resources:\n  listeners:\n  - name: udp\n    address:"
    );
    let _ = writeln!(
        c,
        "      socket_address: {{ protocol: UDP, address: \"{}\", port_value: {} }}",
        listen.ip(),
        listen.port()
    );
    let _ = writeln!(
        c,
        "    listener_filters:\n    - name: envoy.filters.udp_listener.udp_proxy"
    );
    let _ = writeln!(c, "      typed_config:");
    let _ = writeln!(
        c,
        "        '@type': type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig"
    );
    let _ = writeln!(c, "        stat_prefix: udp\n        idle_timeout: {idle}");
    let _ = writeln!(
        c,
        "        matcher:\n          on_no_match:\n            action:"
    );
    let _ = writeln!(c, "              name: route\n              typed_config:");
    let _ = writeln!(
        c,
        "                '@type': type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.Route"
    );
    let _ = writeln!(c, "                cluster: echo");
    let _ = writeln!(
        c,
        "  clusters:\n  - name: echo\n    type: STATIC\n    lb_policy: ROUND_ROBIN"
    );
    let _ = writeln!(
        c,
        "    circuit_breakers:\n      thresholds:\n      - max_connections: {}",
        o.max_flows
    );
    let _ = writeln!(
        c,
        "    load_assignment:\n      cluster_name: echo\n      endpoints:\n      - lb_endpoints:"
    );
    for b in backends {
        let _ = writeln!(
            c,
            "        - endpoint: {{ address: {{ socket_address: {{ address: \"{}\", port_value: {} }} }} }}",
            b.ip(),
            b.port()
        );
    }
    c
}

/// Starts `target` listening on `listen`, forwarding to `backends`, pinned
/// to `cpu`, with its files in `dir`. It does not wait for it to forward:
/// the caller checks readiness its own way ([`wait_echo`] through echo
/// backends; one-way and DNS traffic have their own) and passes the result
/// to [`Proc::ready_or_log`].
pub(crate) fn spawn(
    target: Target,
    installed: &Installed,
    dir: &Path,
    listen: SocketAddr,
    backends: &[SocketAddr],
    options: ProxyOptions,
    cpu: Option<usize>,
) -> anyhow::Result<Proc> {
    fs::create_dir_all(dir)?;
    let log = Some(dir.join(format!("{}.log", target.name())));
    let argv: Vec<String> = match target {
        Target::Direct => bail!("direct has no proxy"),
        Target::Sozu => {
            let Some(bin) = &installed.sozu else {
                bail!("sozu binary not found")
            };
            let config = dir.join("config.toml");
            fs::write(&config, sozu_config(dir, listen, backends, options))?;
            vec![
                bin.display().to_string(),
                "start".into(),
                "-c".into(),
                config.display().to_string(),
            ]
        }
        Target::Nginx => {
            let Some((bin, module)) = &installed.nginx else {
                bail!("nginx not found")
            };
            let config = dir.join("nginx.conf");
            fs::write(
                &config,
                nginx_config(dir, module.as_deref(), listen, backends, options),
            )?;
            vec![
                bin.display().to_string(),
                "-p".into(),
                dir.display().to_string(),
                "-e".into(),
                dir.join("error.log").display().to_string(),
                "-c".into(),
                config.display().to_string(),
            ]
        }
        Target::Envoy => {
            let Some(bin) = &installed.envoy else {
                bail!("envoy not found")
            };
            let config = dir.join("envoy.yaml");
            fs::write(&config, envoy_config(listen, backends, options))?;
            vec![
                bin.display().to_string(),
                "-c".into(),
                config.display().to_string(),
                "--concurrency".into(),
                "1".into(),
                "--disable-hot-restart".into(),
                "--log-level".into(),
                "warn".into(),
                "--base-id".into(),
                std::process::id().to_string(),
            ]
        }
    };
    Proc::spawn(Spawn {
        name: target.name(),
        argv,
        cpu,
        log,
    })
}

/// Sends probe datagrams through `listen` until one comes back.
#[allow(clippy::disallowed_methods)] // runner shell: bounded wait
pub(crate) fn wait_echo(proc: &mut Proc, listen: SocketAddr) -> anyhow::Result<()> {
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    socket.connect(listen)?;
    socket.set_read_timeout(Some(Duration::from_millis(100)))?;
    let mut probe = [0u8; 64];
    let mut reply = [0u8; 2048];
    let deadline = Instant::now() + READY_LIMIT;
    let mut seq = 0u64;
    while Instant::now() < deadline {
        check_interrupted()?;
        if let Some(status) = proc.exited() {
            bail!("{} exited before forwarding ({status})", proc.name);
        }
        Header {
            flow: PROBE_FLOW,
            seq,
            sent_ns: 0,
        }
        .write(&mut probe);
        seq += 1;
        // Refused (nothing listening yet) and timeouts just mean "retry".
        if socket.send(&probe).is_ok() {
            if let Ok(n) = socket.recv(&mut reply) {
                if n >= HEADER_LEN
                    && Header::parse(&reply[..n]).is_some_and(|h| h.flow == PROBE_FLOW)
                {
                    return Ok(());
                }
            }
        } else {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    bail!(
        "{} did not echo a probe through {listen} within {READY_LIMIT:?}",
        proc.name
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_name_the_listener_and_every_backend() {
        let listen: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let backends: Vec<SocketAddr> = vec![
            "127.0.0.1:5001".parse().unwrap(),
            "127.0.0.1:5002".parse().unwrap(),
        ];
        let o = ProxyOptions {
            responses: 1,
            max_flows: 17000,
            one_way: false,
            dns_id: false,
            recv_buffer: None,
            idle_listeners: 0,
        };
        let sozu = sozu_config(Path::new("/tmp/x"), listen, &backends, o);
        let parsed: toml::Value = toml::from_str(&sozu).unwrap();
        assert_eq!(parsed["worker_count"].as_integer(), Some(1));
        assert_eq!(
            parsed["listeners"][0]["max_flows"].as_integer(),
            Some(17000)
        );
        assert_eq!(
            parsed["clusters"]["echo"]["udp"]["responses"].as_integer(),
            Some(1)
        );
        assert_eq!(
            parsed["clusters"]["echo"]["backends"][1]["address"].as_str(),
            Some("127.0.0.1:5002")
        );
        let nginx = nginx_config(Path::new("/tmp/x"), None, listen, &backends, o);
        assert!(nginx.contains("listen 127.0.0.1:4000 udp;"));
        assert!(nginx.contains("server 127.0.0.1:5002;"));
        assert!(nginx.contains("proxy_responses 1;"));
        let unlimited = ProxyOptions { responses: 0, ..o };
        assert!(
            !nginx_config(Path::new("/tmp/x"), None, listen, &backends, unlimited)
                .contains("proxy_responses")
        );
        assert!(!nginx.contains("rcvbuf"));
        assert!(parsed["listeners"][0].get("recv_buffer_size").is_none());
        let big = ProxyOptions {
            recv_buffer: Some(4 << 20),
            ..o
        };
        let parsed: toml::Value =
            toml::from_str(&sozu_config(Path::new("/tmp/x"), listen, &backends, big)).unwrap();
        assert_eq!(
            parsed["listeners"][0]["recv_buffer_size"].as_integer(),
            Some(4 << 20)
        );
        assert!(
            nginx_config(Path::new("/tmp/x"), None, listen, &backends, big)
                .contains("listen 127.0.0.1:4000 udp rcvbuf=4194304;")
        );
        let envoy = envoy_config(listen, &backends, o);
        assert!(envoy.contains("max_connections: 17000"));
        assert!(envoy.contains(&format!("idle_timeout: {ENVOY_ONE_SHOT_IDLE}")));
        assert!(envoy.contains("port_value: 5002"));
    }
}
