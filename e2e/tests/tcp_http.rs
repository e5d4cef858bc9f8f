//! TCP and HTTP through the real `sozu` binary: a master, its workers, a
//! `config.toml` with UDP, TCP and HTTP listeners, and the CLI changing HTTP
//! routes live. Backends are the small loopback servers of `sozu_e2e::stream`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

use sozu_e2e::ports::free_v4;
use sozu_e2e::sozu::http_frontend_args;
use sozu_e2e::stream::{
    get_on, http_connect, tcp_http_config, Hold, NamedHttpBackend, NamedTcpBackend, StreamBackend,
};
use sozu_e2e::wait::wait_for;
use sozu_e2e::{ClusterConfig, Sozu, SozuConfig, UdpBackend, UdpClient, UdpListener};

const WAIT: Duration = Duration::from_secs(10);

/// A connection to an HTTP proxy and its reader.
fn connect(address: SocketAddr) -> (TcpStream, BufReader<TcpStream>) {
    http_connect(address).unwrap_or_else(|e| panic!("{address}: {e}"))
}

/// Sends one GET on `stream` and returns (status, body).
fn get(
    stream: &mut TcpStream,
    reader: &mut BufReader<TcpStream>,
    host: &str,
    path: &str,
) -> (u16, String) {
    get_on(stream, reader, host, path).unwrap_or_else(|e| panic!("GET {host}{path}: {e}"))
}

/// An HTTP backend answering `backend=<name> path=<path>`.
fn http_backend(name: &str) -> SocketAddr {
    NamedHttpBackend::showing_path(name).addr()
}

/// UDP, TCP and HTTP listeners from one configuration file.
fn start_all() -> (Sozu, SocketAddr, SocketAddr, SocketAddr) {
    let udp_backend = UdpBackend::v4("dns");
    let udp_front = free_v4();
    let tcp_front = free_v4();
    let http_front = free_v4();
    let echo = NamedTcpBackend::echo().addr();
    let (web, api) = (http_backend("web"), http_backend("api"));
    let mut config = SozuConfig::udp(
        2,
        UdpListener::new(udp_front),
        ClusterConfig::new("dns", udp_front).backend("dns", udp_backend.addr()),
    );
    config.extra = format!(
        r#"{}
[clusters.api]
protocol = "http"
frontends = [{{ address = "{http_front}", hostname = "example.com", path = "/api" }}]
backends = [{{ address = "{api}", backend_id = "api-1" }}]
"#,
        tcp_http_config(
            tcp_front,
            http_front,
            &[StreamBackend::new("echo-1", echo)],
            &[StreamBackend::new("web-1", web)],
        )
    );
    let sozu = Sozu::start(config);
    // Keep the UDP backend alive with the master.
    std::mem::forget(udp_backend);
    (sozu, udp_front, tcp_front, http_front)
}

#[test]
fn udp_tcp_and_http_are_served_by_the_same_workers() {
    let (sozu, udp_front, tcp_front, http_front) = start_all();

    assert_eq!(UdpClient::new(udp_front).expect_echo(b"query"), "dns");

    let data: Vec<u8> = (0..(1u32 << 20)).map(|i| (i * 7 % 251) as u8).collect();
    let mut tcp = TcpStream::connect(tcp_front).unwrap();
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    let mut writer = tcp.try_clone().unwrap();
    let sent = data.clone();
    let upload = std::thread::spawn(move || {
        writer.write_all(&sent).unwrap();
        writer.shutdown(Shutdown::Write).unwrap();
    });
    let mut echoed = Vec::new();
    tcp.read_to_end(&mut echoed).unwrap();
    upload.join().unwrap();
    assert!(echoed == data, "1 MB echoed intact through the binary");

    let (mut s, mut r) = connect(http_front);
    assert_eq!(
        get(&mut s, &mut r, "example.com", "/").1,
        "backend=web path=/"
    );
    assert_eq!(
        get(&mut s, &mut r, "example.com", "/api/v1").1,
        "backend=api path=/api/v1"
    );
    assert_eq!(get(&mut s, &mut r, "other.org", "/").0, 404);

    wait_for("HTTP and TCP metrics", WAIT, || {
        let m = sozu.metrics();
        m.cluster("web", "http.requests") == Some(1)
            && m.cluster("api", "http.requests") == Some(1)
            && m.cluster("echo", "tcp.bytes.in") == Some(1 << 20)
    });
}

#[test]
fn http_routes_change_live_through_the_cli() {
    let (sozu, _, _, http_front) = start_all();
    let front = http_front.to_string();
    let (mut s, mut r) = connect(http_front);
    assert_eq!(get(&mut s, &mut r, "shop.test", "/").0, 404);
    sozu.cli_ok(&http_frontend_args(
        "add",
        "api",
        &front,
        "*.test",
        &["--path", "/"],
    ));
    let (mut s, mut r) = connect(http_front);
    assert_eq!(
        get(&mut s, &mut r, "shop.test", "/cart").1,
        "backend=api path=/cart"
    );
    sozu.cli_ok(&http_frontend_args(
        "remove",
        "api",
        &front,
        "*.test",
        &["--path", "/"],
    ));
    assert_eq!(get(&mut s, &mut r, "shop.test", "/cart").0, 404);
    // A second HTTP listener added and routed by the CLI.
    let second = free_v4();
    let second_s = second.to_string();
    sozu.cli_ok(&["http", "listener", "add", "-a", &second_s]);
    sozu.cli_ok(&http_frontend_args(
        "add",
        "web",
        &second_s,
        "example.com",
        &[],
    ));
    let (mut s, mut r) = connect(second);
    assert_eq!(
        get(&mut s, &mut r, "example.com", "/x").1,
        "backend=web path=/x"
    );
}

#[test]
fn shutdown_lets_an_in_flight_http_request_finish() {
    let (backend, Hold { held, release }) = NamedHttpBackend::holding("slow");
    let backend = backend.addr();
    let front = free_v4();
    let mut config = SozuConfig {
        worker_count: 1,
        ..SozuConfig::default()
    };
    config.extra = format!(
        r#"
[[listeners]]
protocol = "http"
address = "{front}"

[clusters.slow]
protocol = "http"
frontends = [{{ address = "{front}", hostname = "h", path = "/" }}]
backends = [{{ address = "{backend}", backend_id = "slow-1" }}]
"#
    );
    let sozu = Sozu::start(config);
    let (mut s, mut r) = connect(front);
    write!(s, "GET /hold HTTP/1.1\r\nHost: h\r\n\r\n").unwrap();
    held.recv_timeout(WAIT)
        .expect("the request reached the backend");
    let dir = sozu.dir().to_owned();
    let config_path = sozu.config_path().to_owned();
    // `sozu shutdown` waits for the drain: run it beside the request.
    let shutdown = std::thread::spawn(move || {
        sozu_e2e::sozu::run_cli(
            &dir,
            &[
                "-c".to_owned(),
                config_path.to_string_lossy().into_owned(),
                "shutdown".to_owned(),
            ],
        )
    });
    wait_for("the listener to stop accepting", WAIT, || {
        TcpStream::connect(front).is_err()
    });
    release.send(()).unwrap();
    let mut status_line = String::new();
    r.read_line(&mut status_line).unwrap();
    assert!(status_line.starts_with("HTTP/1.1 200"), "{status_line}");
    let mut rest = String::new();
    r.read_to_string(&mut rest).unwrap();
    assert!(rest.contains("Connection: close"), "{rest}");
    assert!(rest.ends_with("backend=slow path=/hold"), "{rest}");
    let out = shutdown.join().unwrap();
    assert!(out.success(), "shutdown: {} {}", out.stdout, out.stderr);
    assert!(
        sozu.wait_master_exit(WAIT).is_some(),
        "the master exits after the drain"
    );
}

#[test]
fn a_dead_backend_answers_503_until_the_cli_adds_a_live_one_and_garbage_gets_400() {
    let dead = free_v4();
    let live = http_backend("live");
    let front = free_v4();
    let mut config = SozuConfig {
        worker_count: 2,
        ..SozuConfig::default()
    };
    config.extra = format!(
        r#"
[[listeners]]
protocol = "http"
address = "{front}"

[clusters.app]
protocol = "http"
frontends = [{{ address = "{front}", hostname = "app.test", path = "/" }}]
backends = [{{ address = "{dead}", backend_id = "dead" }}]
"#
    );
    let sozu = Sozu::start(config);
    let (mut s, mut r) = connect(front);
    assert_eq!(get(&mut s, &mut r, "app.test", "/").0, 503);
    let (live_s, dead_s) = (live.to_string(), dead.to_string());
    sozu.backend_add("app", "live", &live_s);
    sozu.backend_remove("app", "dead", &dead_s);
    let (mut s, mut r) = connect(front);
    assert_eq!(
        get(&mut s, &mut r, "app.test", "/").1,
        "backend=live path=/"
    );
    let (mut g, mut gr) = connect(front);
    g.write_all(b"THIS IS NOT HTTP\r\n\r\n").unwrap();
    let mut status_line = String::new();
    gr.read_line(&mut status_line).unwrap();
    assert!(status_line.starts_with("HTTP/1.1 400"), "{status_line}");
    // Still serving, on the kept connection and on a new one.
    assert_eq!(
        get(&mut s, &mut r, "app.test", "/again").1,
        "backend=live path=/again"
    );
    let (mut s, mut r) = connect(front);
    assert_eq!(get(&mut s, &mut r, "app.test", "/").0, 200);
}
