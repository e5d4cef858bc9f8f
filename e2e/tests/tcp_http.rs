//! TCP and HTTP through the real `sozu` binary: a master, its workers, a
//! `config.toml` with UDP, TCP and HTTP listeners, and the CLI changing HTTP
//! routes live. Backends are small loopback servers in this file.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sozu_e2e::ports::free_v4;
use sozu_e2e::wait::wait_for;
use sozu_e2e::{ClusterConfig, Sozu, SozuConfig, UdpBackend, UdpClient, UdpListener};

const WAIT: Duration = Duration::from_secs(10);

/// A TCP echo backend (closes its side when the client closes its own).
fn echo_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 65_536];
                loop {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => {
                            let _ = stream.shutdown(Shutdown::Write);
                            return;
                        }
                        Ok(n) => {
                            if stream.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    address
}

/// An HTTP/1.1 backend answering `backend=<name> path=<path>` with
/// keep-alive, to requests without a body.
fn http_backend(name: &'static str) -> SocketAddr {
    holding_http_backend(name).0
}

/// Like [`http_backend`], and a request for `/hold` is announced on the
/// first channel and answered only once `()` arrives on the second.
fn holding_http_backend(name: &'static str) -> (SocketAddr, Receiver<()>, Sender<()>) {
    let (held_tx, held_rx) = channel();
    let (release_tx, release_rx) = channel::<()>();
    let release_rx = Arc::new(Mutex::new(release_rx));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let (held_tx, release_rx) = (held_tx.clone(), release_rx.clone());
            std::thread::spawn(move || {
                let mut writer = stream.try_clone().unwrap();
                let mut reader = BufReader::new(stream);
                loop {
                    let mut request_line = String::new();
                    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut line = String::new();
                    while reader.read_line(&mut line).unwrap_or(0) > 2 {
                        line.clear();
                    }
                    let path = request_line.split(' ').nth(1).unwrap_or("?").to_owned();
                    if path == "/hold" {
                        let _ = held_tx.send(());
                        let _ = release_rx.lock().unwrap().recv_timeout(WAIT);
                    }
                    let body = format!("backend={name} path={path}");
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if writer.write_all(answer.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (address, held_rx, release_tx)
}

/// Sends one GET on `stream` and returns (status, body).
fn get(
    stream: &mut TcpStream,
    reader: &mut BufReader<TcpStream>,
    host: &str,
    path: &str,
) -> (u16, String) {
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").unwrap();
    let mut status_line = String::new();
    reader.read_line(&mut status_line).unwrap();
    let status: u16 = status_line.split(' ').nth(1).unwrap().parse().unwrap();
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap();
            }
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).unwrap();
    (status, String::from_utf8(body).unwrap())
}

fn connect(address: SocketAddr) -> (TcpStream, BufReader<TcpStream>) {
    let stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let reader = BufReader::new(stream.try_clone().unwrap());
    (stream, reader)
}

/// UDP, TCP and HTTP listeners from one configuration file.
fn start_all() -> (Sozu, SocketAddr, SocketAddr, SocketAddr) {
    let udp_backend = UdpBackend::v4("dns");
    let udp_front = free_v4();
    let tcp_front = free_v4();
    let http_front = free_v4();
    let echo = echo_backend();
    let (web, api) = (http_backend("web"), http_backend("api"));
    let mut config = SozuConfig::udp(
        2,
        UdpListener::new(udp_front),
        ClusterConfig::new("dns", udp_front).backend("dns", udp_backend.addr()),
    );
    config.extra = format!(
        r#"
[[listeners]]
protocol = "tcp"
address = "{tcp_front}"

[[listeners]]
protocol = "http"
address = "{http_front}"

[clusters.echo]
protocol = "tcp"
frontends = [{{ address = "{tcp_front}" }}]
backends = [{{ address = "{echo}", backend_id = "echo-1" }}]

[clusters.web]
protocol = "http"
frontends = [{{ address = "{http_front}", hostname = "example.com", path = "/" }}]
backends = [{{ address = "{web}", backend_id = "web-1" }}]

[clusters.api]
protocol = "http"
frontends = [{{ address = "{http_front}", hostname = "example.com", path = "/api" }}]
backends = [{{ address = "{api}", backend_id = "api-1" }}]
"#
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
    sozu.cli_ok(&[
        "http",
        "frontend",
        "add",
        "-i",
        "api",
        "-a",
        &front,
        "--hostname",
        "*.test",
        "--path",
        "/",
    ]);
    let (mut s, mut r) = connect(http_front);
    assert_eq!(
        get(&mut s, &mut r, "shop.test", "/cart").1,
        "backend=api path=/cart"
    );
    sozu.cli_ok(&[
        "http",
        "frontend",
        "remove",
        "-i",
        "api",
        "-a",
        &front,
        "--hostname",
        "*.test",
        "--path",
        "/",
    ]);
    assert_eq!(get(&mut s, &mut r, "shop.test", "/cart").0, 404);
    // A second HTTP listener added and routed by the CLI.
    let second = free_v4();
    let second_s = second.to_string();
    sozu.cli_ok(&["http", "listener", "add", "-a", &second_s]);
    sozu.cli_ok(&[
        "http",
        "frontend",
        "add",
        "-i",
        "web",
        "-a",
        &second_s,
        "--hostname",
        "example.com",
    ]);
    let (mut s, mut r) = connect(second);
    assert_eq!(
        get(&mut s, &mut r, "example.com", "/x").1,
        "backend=web path=/x"
    );
}

#[test]
fn shutdown_lets_an_in_flight_http_request_finish() {
    let (backend, held, release) = holding_http_backend("slow");
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
    sozu.cli_ok(&[
        "backend",
        "add",
        "-i",
        "app",
        "--backend-id",
        "live",
        "-a",
        &live_s,
    ]);
    sozu.cli_ok(&[
        "backend",
        "remove",
        "-i",
        "app",
        "--backend-id",
        "dead",
        "-a",
        &dead_s,
    ]);
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
