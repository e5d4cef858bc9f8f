//! `sozu-bench https` (issue 15): HTTPS through sozu (rustls) and nginx
//! (OpenSSL) with the same certificate and key, measured with
//! `h2load --h1`; and `sozu-bench httpd`, the tiny HTTP/1.1 keep-alive
//! backend both proxies forward to.
//!
//! Two measurements per target and round, each proxy freshly started and
//! pinned to CPU 0 (h2load and the backend on CPU 1):
//! - keep-alive: `--clients` TLS connections, `--requests` requests in all,
//!   every request on an established connection: requests per second;
//! - handshakes: `--handshakes` connections of one request each
//!   (`-c N -n N`: h2load gives each client N / C requests), so every
//!   request pays a full handshake (session tickets and the session cache
//!   are off on both proxies): handshakes per second.
//!
//! Beside each, the proxy's CPU time (exact runtime of its process tree,
//! `runner::processes::tree_cpu`) per request or handshake, which a shared machine
//! cannot skew as much as a rate. A self-signed ECDSA P-256 certificate
//! for `bench.test` is generated per run. Loopback only, every wait
//! bounded, children stopped by pid.

use std::fmt::Write as _;
use std::io::{BufWriter, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;

use crate::oneway::{median, pin_self, tree_cpu_seconds};
use crate::runner::processes::{check_interrupted, find_on_path, install_signal_handlers};
use crate::runner::processes::{Proc, Spawn};
use crate::runner::proxies::{self, Installed, Target};
use crate::runner::TargetArgs;

/// The name the certificate serves and the clients ask for (SNI and Host).
const HOST: &str = "bench.test";

/// sozu `max_connections` (500 by default): room for the handshake burst,
/// two descriptors each (client and backend) under a 20,000 fd limit.
const MAX_CONNECTIONS: usize = 8_000;

/// Longest wait for a proxy to answer its first HTTPS request.
const READY_LIMIT: Duration = Duration::from_secs(15);

/// Options of `sozu-bench httpd`.
#[derive(Args, Debug, Clone)]
pub(crate) struct HttpdArgs {
    /// Address to listen on (port 0: a free one, printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Body bytes of every answer.
    #[arg(long, default_value_t = 64)]
    pub body: usize,
}

/// Options of `sozu-bench https`.
#[derive(Args, Debug, Clone)]
pub(crate) struct HttpsArgs {
    /// The sozu binary, the targets (sozu, nginx), pinning.
    #[command(flatten)]
    pub target: TargetArgs,
    /// Keep-alive measurement: concurrent TLS connections.
    #[arg(long, default_value_t = 32)]
    pub clients: usize,
    /// Keep-alive measurement: requests in all.
    #[arg(long, default_value_t = 200_000)]
    pub requests: usize,
    /// Handshake measurement: connections of one request each.
    #[arg(long, default_value_t = 2_000)]
    pub handshakes: usize,
    /// Rounds of target alternation (the table shows medians).
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// Body bytes of every backend answer.
    #[arg(long, default_value_t = 64)]
    pub body: usize,
    /// Keep the temporary directory (configs, certificate, logs).
    #[arg(long)]
    pub keep_temp: bool,
}

/// Pending connections the backend's listener keeps (the largest handshake
/// burst measured, with room).
const BACKEND_BACKLOG: i32 = 8192;

/// `sozu-bench httpd`: prints `listening ADDR`, then answers every request
/// head with `200` and a fixed body, keeping connections open (a thread
/// per connection: the proxies keep few of them).
pub(crate) fn run_httpd(args: &HttpdArgs) -> anyhow::Result<()> {
    let listener = TcpListener::bind(args.listen).context("binding the backend")?;
    // std listens with a backlog of 128; a proxy that opens one backend
    // connection per client (sozu) sends the whole handshake burst here
    // at once, and an overflowing backlog would cost each dropped SYN a
    // 1 s retransmission: the figure would be the backend's. Listening
    // again on Linux only raises the backlog (capped by somaxconn).
    // SAFETY: listen(2) on a socket this function owns.
    if unsafe { libc::listen(listener.as_raw_fd(), BACKEND_BACKLOG) } != 0 {
        return Err(std::io::Error::last_os_error()).context("raising the backend's backlog");
    }
    println!("listening {}", listener.local_addr()?);
    std::io::stdout().flush()?;
    let answer = Arc::new(answer(args.body));
    for stream in listener.incoming() {
        let Ok(stream) = stream else {
            continue;
        };
        let answer = Arc::clone(&answer);
        // Small stacks: the handshake burst may open thousands at once.
        let spawned = std::thread::Builder::new()
            .stack_size(128 * 1024)
            .spawn(move || serve(stream, &answer));
        if let Err(error) = spawned {
            eprintln!("httpd: no thread for a connection: {error}");
        }
    }
    Ok(())
}

/// The backend's answer.
fn answer(body: usize) -> Vec<u8> {
    let mut out =
        format!("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {body}\r\n\r\n")
            .into_bytes();
    out.resize(out.len() + body, b'x');
    out
}

/// Answers each request head on `stream` (bodies are not expected: the
/// load is GETs), closing when asked or when the peer does.
fn serve(stream: TcpStream, answer: &[u8]) {
    let _ = stream.set_nodelay(true);
    let Ok(mut reader) = stream.try_clone() else {
        return;
    };
    let mut writer = BufWriter::new(stream);
    let mut buf = vec![0u8; 16 * 1024];
    let mut filled = 0;
    loop {
        let mut answered = false;
        while let Some(end) = find_head_end(&buf[..filled]) {
            let close = head_asks_close(&buf[..end]);
            if writer.write_all(answer).is_err() {
                return;
            }
            buf.copy_within(end..filled, 0);
            filled -= end;
            answered = true;
            if close {
                let _ = writer.flush();
                return;
            }
        }
        if answered && writer.flush().is_err() {
            return;
        }
        if filled == buf.len() {
            return; // a head larger than the buffer: not this tool's load
        }
        match reader.read(&mut buf[filled..]) {
            Ok(0) | Err(_) => return,
            Ok(n) => filled += n,
        }
    }
}

/// The end of the first request head (after its blank line).
fn find_head_end(data: &[u8]) -> Option<usize> {
    data.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| at + 4)
}

fn head_asks_close(head: &[u8]) -> bool {
    String::from_utf8_lossy(head).lines().any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.eq_ignore_ascii_case("connection") && value.trim().eq_ignore_ascii_case("close")
        })
    })
}

/// sozu `config.toml`: one HTTPS listener with the certificate as its
/// default, one cluster for `bench.test` with the backend, one worker,
/// no session tickets (every new connection is a full handshake, as with
/// nginx below).
pub(crate) fn sozu_https_config(
    dir: &Path,
    listen: SocketAddr,
    backend: SocketAddr,
    cert: &Path,
    key: &Path,
) -> String {
    let mut c = String::new();
    let _ = writeln!(
        c,
        "command_socket = \"{}\"",
        dir.join("sozu.sock").display()
    );
    let _ = writeln!(c, "worker_count = 1");
    let _ = writeln!(c, "max_connections = {MAX_CONNECTIONS}");
    let _ = writeln!(c, "log_level = \"warn\"");
    let _ = writeln!(c, "log_target = \"stdout\"");
    let _ = writeln!(c, "\n[[listeners]]\nprotocol = \"https\"");
    let _ = writeln!(c, "address = \"{listen}\"");
    let _ = writeln!(c, "certificate = \"{}\"", cert.display());
    let _ = writeln!(c, "key = \"{}\"", key.display());
    let _ = writeln!(c, "send_tls13_tickets = 0");
    let _ = writeln!(c, "\n[clusters.bench]\nprotocol = \"http\"");
    let _ = writeln!(
        c,
        "frontends = [ {{ address = \"{listen}\", hostname = \"{HOST}\" }} ]"
    );
    let _ = writeln!(
        c,
        "backends = [ {{ address = \"{backend}\", backend_id = \"httpd\" }} ]"
    );
    c
}

/// nginx.conf: one worker, an `ssl` server with the same certificate and
/// key, `proxy_pass` to the backend over kept-alive upstream connections,
/// no session tickets nor session cache, no access log.
pub(crate) fn nginx_https_config(
    prefix: &Path,
    listen: SocketAddr,
    backend: SocketAddr,
    cert: &Path,
    key: &Path,
) -> String {
    let mut c = String::new();
    proxies::nginx_preamble(&mut c, prefix, None, 10_000);
    let _ = writeln!(c, "http {{\n  access_log off;");
    let _ = writeln!(c, "  keepalive_requests 1000000;");
    let _ = writeln!(
        c,
        "  upstream httpd {{\n    server {backend};\n    keepalive 64;\n  }}"
    );
    let _ = writeln!(c, "  server {{\n    listen {listen} ssl;");
    let _ = writeln!(c, "    server_name {HOST};");
    let _ = writeln!(c, "    ssl_certificate {};", cert.display());
    let _ = writeln!(c, "    ssl_certificate_key {};", key.display());
    let _ = writeln!(c, "    ssl_protocols TLSv1.2 TLSv1.3;");
    let _ = writeln!(
        c,
        "    ssl_session_tickets off;\n    ssl_session_cache off;"
    );
    let _ = writeln!(c, "    location / {{\n      proxy_pass http://httpd;");
    let _ = writeln!(
        c,
        "      proxy_http_version 1.1;\n      proxy_set_header Connection \"\";"
    );
    let _ = writeln!(c, "    }}\n  }}\n}}");
    c
}

/// h2load over HTTP/1.1: `clients` connections, `requests` in all, to
/// `https://bench.test:PORT/` connected to `listen`.
pub(crate) fn h2load_argv(
    h2load: &Path,
    listen: SocketAddr,
    clients: usize,
    requests: usize,
) -> Vec<String> {
    vec![
        h2load.display().to_string(),
        "--h1".into(),
        "-t".into(),
        "1".into(),
        "-c".into(),
        clients.to_string(),
        "-n".into(),
        requests.to_string(),
        format!("--connect-to={listen}"),
        format!("https://{HOST}:{}/", listen.port()),
    ]
}

/// What h2load reported.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct H2loadReport {
    /// Requests per second over the whole run.
    pub req_per_s: f64,
    /// Requests answered 2xx/3xx.
    pub succeeded: u64,
    /// Requests failed or errored.
    pub failed: u64,
    /// Protocol, cipher and key exchange, as h2load printed them.
    pub tls: String,
}

/// Reads h2load's summary (`finished in …, N req/s, …`, `requests: …`,
/// the `TLS Protocol` / `Cipher` / `Server Temp Key` lines).
pub(crate) fn parse_h2load(output: &str) -> anyhow::Result<H2loadReport> {
    let mut report = H2loadReport::default();
    let mut tls = Vec::new();
    let mut seen = false;
    for line in output.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("finished in ") {
            let rate = rest
                .split(", ")
                .find_map(|part| part.strip_suffix(" req/s"))
                .context("no req/s in h2load's summary")?;
            report.req_per_s = rate.trim().parse().context("h2load's req/s")?;
            seen = true;
        } else if let Some(rest) = line.strip_prefix("requests: ") {
            for part in rest.split(", ") {
                let mut words = part.split_whitespace();
                let (Some(n), Some(what)) = (words.next(), words.next()) else {
                    continue;
                };
                let n: u64 = n.parse().unwrap_or(0);
                match what {
                    "succeeded" => report.succeeded = n,
                    "failed" | "errored" | "timeout" => report.failed += n,
                    _ => {}
                }
            }
        } else if line.starts_with("TLS Protocol:")
            || line.starts_with("Cipher:")
            || line.starts_with("Server Temp Key:")
        {
            tls.push(line.to_string());
        }
    }
    if !seen {
        bail!("h2load printed no summary");
    }
    report.tls = tls.join(", ");
    Ok(report)
}

/// One measurement: h2load's report and the proxy's CPU seconds over it.
#[derive(Debug, Clone, Default)]
struct Measure {
    report: H2loadReport,
    cpu_seconds: f64,
}

impl Measure {
    fn cpu_us_per_request(&self) -> f64 {
        if self.report.succeeded == 0 {
            return f64::NAN;
        }
        self.cpu_seconds * 1e6 / self.report.succeeded as f64
    }
}

/// Runs h2load pinned to `cpu`, bounded.
fn h2load(argv: Vec<String>, cpu: Option<usize>, limit: Duration) -> anyhow::Result<H2loadReport> {
    let proc = Proc::spawn(Spawn {
        name: "h2load",
        argv,
        cpu,
        log: None,
    })?;
    parse_h2load(&proc.wait_output(limit)?)
}

/// Sends one request through the proxy until it is answered.
#[allow(clippy::disallowed_methods)] // benchmark shell: bounded wait
fn wait_ready(proc: &mut Proc, h2load_bin: &Path, listen: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_LIMIT;
    let mut last = String::new();
    while Instant::now() < deadline {
        check_interrupted()?;
        if let Some(status) = proc.exited() {
            bail!("{} exited before serving ({status})", proc.name);
        }
        if TcpStream::connect_timeout(&listen, Duration::from_millis(200)).is_ok() {
            match h2load(
                h2load_argv(h2load_bin, listen, 1, 1),
                None,
                Duration::from_secs(5),
            ) {
                Ok(r) if r.succeeded == 1 => return Ok(()),
                Ok(r) => last = format!("{r:?}"),
                Err(e) => last = format!("{e:#}"),
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!(
        "{} did not answer an HTTPS request through {listen} within {READY_LIMIT:?} (last: {last})",
        proc.name
    )
}

/// Writes a self-signed certificate for [`HOST`] (ECDSA P-256) and its key.
fn write_certificate(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let key = rcgen::KeyPair::generate().context("generating a key")?;
    let params =
        rcgen::CertificateParams::new(vec![HOST.to_owned()]).context("certificate parameters")?;
    let cert = params.self_signed(&key).context("self-signing")?;
    let (cert_path, key_path) = (dir.join("bench.pem"), dir.join("bench.key"));
    std::fs::write(&cert_path, cert.pem())?;
    std::fs::write(&key_path, key.serialize_pem())?;
    Ok((cert_path, key_path))
}

/// Starts `target` serving HTTPS on `listen` in `dir`.
fn spawn_proxy(
    target: Target,
    (sozu, nginx): (&Path, &Path),
    dir: &Path,
    listen: SocketAddr,
    backend: SocketAddr,
    cert: (&Path, &Path),
    cpu: Option<usize>,
) -> anyhow::Result<Proc> {
    std::fs::create_dir_all(dir)?;
    let argv = match target {
        Target::Sozu => {
            let config = dir.join("config.toml");
            std::fs::write(
                &config,
                sozu_https_config(dir, listen, backend, cert.0, cert.1),
            )?;
            vec![
                sozu.display().to_string(),
                "start".into(),
                "-c".into(),
                config.display().to_string(),
            ]
        }
        Target::Nginx => {
            let config = dir.join("nginx.conf");
            std::fs::write(
                &config,
                nginx_https_config(dir, listen, backend, cert.0, cert.1),
            )?;
            vec![
                nginx.display().to_string(),
                "-p".into(),
                dir.display().to_string(),
                "-e".into(),
                dir.join("error.log").display().to_string(),
                "-c".into(),
                config.display().to_string(),
            ]
        }
        other => bail!("{} has no HTTPS mode here", other.name()),
    };
    Proc::spawn(Spawn {
        name: target.name(),
        argv,
        cpu,
        log: Some(dir.join(format!("{}.log", target.name()))),
    })
}

/// Raises this process's descriptor limit to its hard limit (h2load, the
/// backend and the proxies inherit it) and warns when the handshake burst
/// may not fit.
fn raise_fd_limit(handshakes: usize) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to an rlimit.
    let soft = unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return;
        }
        if limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur
    };
    // Client and backend side of each connection, plus some slack.
    let needed = 2 * handshakes as u64 + 256;
    if soft < needed {
        eprintln!(
            "warning: descriptor limit {soft} < {needed} needed for --handshakes {handshakes} (raise ulimit -Hn)"
        );
    }
}

/// `sozu-bench https`.
pub(crate) fn run(args: &HttpsArgs) -> anyhow::Result<()> {
    install_signal_handlers();
    raise_fd_limit(args.handshakes);
    let Some(h2load_bin) = find_on_path("h2load") else {
        bail!("h2load not on PATH (Debian: apt-get install nghttp2-client)");
    };
    let sozu = crate::runner::resolve_sozu(&args.target.sozu);
    let installed = Installed::detect(&sozu);
    let nginx = find_on_path("nginx");
    let mut targets = Vec::new();
    for t in args.target.wanted(&[Target::Sozu, Target::Nginx])? {
        match t {
            Target::Sozu if installed.sozu.is_none() => {
                eprintln!("skipping sozu: {}", sozu.display())
            }
            Target::Nginx if nginx.is_none() => eprintln!("skipping nginx: not on PATH"),
            Target::Sozu | Target::Nginx => targets.push(t),
            other => eprintln!("skipping {}: no HTTPS mode to compare", other.name()),
        }
    }
    if targets.is_empty() {
        bail!("no target to measure");
    }
    let nginx = nginx.unwrap_or_default();
    let pin = !args.target.no_pin && find_on_path("taskset").is_some();
    let (proxy_cpu, load_cpu) = if pin {
        (Some(0), Some(1))
    } else {
        (None, None)
    };
    if let Some(cpu) = load_cpu {
        pin_self(cpu);
    }
    let temp = tempfile::Builder::new()
        .prefix("sozu-bench-https-")
        .tempdir()?;
    let (cert, key) = write_certificate(temp.path())?;
    let exe = std::env::current_exe().context("locating sozu-bench itself")?;
    let mut httpd = Proc::spawn(Spawn {
        name: "httpd",
        argv: vec![
            exe.display().to_string(),
            "httpd".into(),
            "--body".into(),
            args.body.to_string(),
        ],
        cpu: load_cpu,
        log: None,
    })?;
    let line = httpd.first_line(Duration::from_secs(10))?;
    let backend: SocketAddr = line
        .strip_prefix("listening ")
        .with_context(|| format!("unexpected httpd output {line:?}"))?
        .parse()
        .context("httpd address")?;
    println!(
        "https: keep-alive {} connections × {} requests; handshakes {} connections × 1 request; body {} B; {} rounds; pinning {}",
        args.clients,
        args.requests,
        args.handshakes,
        args.body,
        args.rounds,
        if pin { "proxy cpu 0, h2load and backend cpu 1" } else { "off" }
    );
    // Generous: a slow target still finishes, a hung one is killed.
    let limit = Duration::from_secs(600);
    let mut results: Vec<(Target, Measure, Measure)> = Vec::new();
    for round in 0..args.rounds.max(1) {
        for &target in &targets {
            check_interrupted()?;
            let listen = proxies::free_tcp_port()?;
            let dir = temp.path().join(format!("{}-{round}", target.name()));
            let mut proc = spawn_proxy(
                target,
                (&sozu, &nginx),
                &dir,
                listen,
                backend,
                (&cert, &key),
                proxy_cpu,
            )?;
            let ready = wait_ready(&mut proc, &h2load_bin, listen);
            proc.ready_or_log(ready)?;
            let pid = proc.pid();
            let measure = |clients: usize, requests: usize| -> anyhow::Result<Measure> {
                let cpu0 = tree_cpu_seconds(pid);
                let report = h2load(
                    h2load_argv(&h2load_bin, listen, clients, requests),
                    load_cpu,
                    limit,
                )?;
                let cpu_seconds = tree_cpu_seconds(pid) - cpu0;
                Ok(Measure {
                    report,
                    cpu_seconds,
                })
            };
            let keepalive = measure(args.clients, args.requests)?;
            let handshakes = measure(args.handshakes, args.handshakes)?;
            if let Some(status) = proc.exited() {
                bail!(
                    "{} exited during the run ({status}); {}",
                    target.name(),
                    proc.log_tail()
                );
            }
            proc.stop();
            println!(
                "  round {round} {:5}: keep-alive {:>9.0} req/s ({} ok, {} failed) {:6.1} µs CPU/req | handshakes {:>7.0} /s ({} ok, {} failed) {:7.1} µs CPU/handshake | {}",
                target.name(),
                keepalive.report.req_per_s,
                keepalive.report.succeeded,
                keepalive.report.failed,
                keepalive.cpu_us_per_request(),
                handshakes.report.req_per_s,
                handshakes.report.succeeded,
                handshakes.report.failed,
                handshakes.cpu_us_per_request(),
                keepalive.report.tls
            );
            results.push((target, keepalive, handshakes));
        }
    }
    httpd.stop();
    print_table(&targets, &results, args.rounds);
    if args.keep_temp {
        eprintln!("kept {}", temp.keep().display());
    }
    Ok(())
}

fn print_table(targets: &[Target], results: &[(Target, Measure, Measure)], rounds: u32) {
    println!("\nmedians over {rounds} rounds:");
    println!("| target | keep-alive req/s | proxy CPU µs / request | handshakes/s | proxy CPU µs / handshake | failed |");
    println!("| --- | --- | --- | --- | --- | --- |");
    let mut rows = Vec::new();
    for &target in targets {
        let mine: Vec<&(Target, Measure, Measure)> =
            results.iter().filter(|(t, _, _)| *t == target).collect();
        let med = |f: &dyn Fn(&(Target, Measure, Measure)) -> f64| {
            median(mine.iter().map(|r| f(r)).collect())
        };
        let rps = med(&|r| r.1.report.req_per_s);
        let cpu_req = med(&|r| r.1.cpu_us_per_request());
        let hps = med(&|r| r.2.report.req_per_s);
        let cpu_hs = med(&|r| r.2.cpu_us_per_request());
        let failed: u64 = mine
            .iter()
            .map(|r| r.1.report.failed + r.2.report.failed)
            .sum();
        println!(
            "| {} | {rps:.0} | {cpu_req:.1} | {hps:.0} | {cpu_hs:.1} | {failed} |",
            target.name()
        );
        rows.push((target, rps, hps));
    }
    if let (Some(s), Some(n)) = (
        rows.iter().find(|r| r.0 == Target::Sozu),
        rows.iter().find(|r| r.0 == Target::Nginx),
    ) {
        println!(
            "\nsozu / nginx: keep-alive {:.2}×, handshakes {:.2}×",
            s.1 / n.1,
            s.2 / n.2
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_serve_the_same_certificate_and_backend() {
        let listen: SocketAddr = "127.0.0.1:4443".parse().unwrap();
        let backend: SocketAddr = "127.0.0.1:5080".parse().unwrap();
        let (cert, key) = (Path::new("/tmp/x/bench.pem"), Path::new("/tmp/x/bench.key"));
        let sozu = sozu_https_config(Path::new("/tmp/x"), listen, backend, cert, key);
        let parsed: toml::Value = toml::from_str(&sozu).unwrap();
        assert_eq!(parsed["worker_count"].as_integer(), Some(1));
        assert!(parsed["max_connections"].as_integer() >= Some(4_000));
        let listener = &parsed["listeners"][0];
        assert_eq!(listener["protocol"].as_str(), Some("https"));
        assert_eq!(listener["address"].as_str(), Some("127.0.0.1:4443"));
        assert_eq!(listener["certificate"].as_str(), Some("/tmp/x/bench.pem"));
        assert_eq!(listener["key"].as_str(), Some("/tmp/x/bench.key"));
        assert_eq!(listener["send_tls13_tickets"].as_integer(), Some(0));
        let cluster = &parsed["clusters"]["bench"];
        assert_eq!(cluster["frontends"][0]["hostname"].as_str(), Some(HOST));
        assert_eq!(
            cluster["backends"][0]["address"].as_str(),
            Some("127.0.0.1:5080")
        );

        let nginx = nginx_https_config(Path::new("/tmp/x"), listen, backend, cert, key);
        for needle in [
            "worker_processes 1;",
            "listen 127.0.0.1:4443 ssl;",
            "ssl_certificate /tmp/x/bench.pem;",
            "ssl_certificate_key /tmp/x/bench.key;",
            "server 127.0.0.1:5080;",
            "keepalive 64;",
            "proxy_http_version 1.1;",
            "ssl_session_tickets off;",
        ] {
            assert!(nginx.contains(needle), "{needle} missing from\n{nginx}");
        }
        assert_eq!(nginx.matches('{').count(), nginx.matches('}').count());
    }

    #[test]
    fn h2load_runs_over_http1_to_the_listener_with_the_certificate_name() {
        let listen: SocketAddr = "127.0.0.1:4443".parse().unwrap();
        let argv = h2load_argv(Path::new("/usr/bin/h2load"), listen, 500, 500);
        assert_eq!(argv[0], "/usr/bin/h2load");
        assert!(argv.contains(&"--h1".to_string()));
        let after = |flag: &str| argv[argv.iter().position(|a| a == flag).unwrap() + 1].clone();
        assert_eq!((after("-c"), after("-n")), ("500".into(), "500".into()));
        assert!(argv.contains(&"--connect-to=127.0.0.1:4443".to_string()));
        assert_eq!(argv.last().unwrap(), "https://bench.test:4443/");
    }

    #[test]
    fn h2load_summary_parses() {
        let output = "\
starting benchmark...
TLS Protocol: TLSv1.3
Cipher: TLS_AES_256_GCM_SHA384
Server Temp Key: X25519 253 bits
Application protocol: http/1.1

finished in 2.04s, 49019.61 req/s, 8.18MB/s
requests: 100000 total, 100000 started, 99990 done, 99980 succeeded, 10 failed, 10 errored, 0 timeout
status codes: 99980 2xx, 0 3xx, 0 4xx, 0 5xx
";
        let r = parse_h2load(output).unwrap();
        assert_eq!(r.req_per_s, 49019.61);
        assert_eq!((r.succeeded, r.failed), (99980, 20));
        assert!(r.tls.contains("TLSv1.3") && r.tls.contains("X25519"));
        assert!(parse_h2load("connect failed").is_err());
    }

    #[test]
    fn httpd_answers_pipelined_heads_and_honours_close() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            serve(stream, &answer(3));
        });
        let mut client = TcpStream::connect(addr).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).unwrap();
        let text = String::from_utf8(got).unwrap();
        assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text}");
        assert!(text.ends_with("xxx"));
        server.join().unwrap();
    }
}
