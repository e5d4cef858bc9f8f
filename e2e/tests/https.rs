//! HTTPS served through the real binary: a rustls client (trusting an
//! rcgen CA) requests through an HTTPS listener to plain HTTP backends.
//! Certificates are chosen by SNI with a default, replaced live; the
//! listener is deactivated, activated, removed; `sozu upgrade` keeps it
//! serving; hostile clients (garbage, an oversized record, a stalled
//! handshake) are closed and counted.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{ClientConnection, RootCertStore, StreamOwned};
use sozu_e2e::ports::free_v4;
use sozu_e2e::stream::read_answer;
use sozu_e2e::wait::{now, poll_until};
use sozu_e2e::{Sozu, SozuConfig};
use sozu_lib::tls::testing::{client_config, RecordingVerifier};

const WAIT: Duration = Duration::from_secs(10);

/// A CA and the leaf certificates it signs.
struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl Ca {
    fn new() -> Self {
        let key = rcgen::KeyPair::generate().expect("CA key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "sozu e2e CA");
        let cert = params.self_signed(&key).expect("CA certificate");
        Ca { cert, key }
    }

    /// A leaf for `names` written as `<stem>.pem` / `<stem>.key` in `dir`;
    /// returns the paths and the leaf's DER.
    fn leaf(&self, dir: &Path, stem: &str, names: &[&str]) -> (PathBuf, PathBuf, Vec<u8>) {
        let key = rcgen::KeyPair::generate().expect("key");
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let cert = rcgen::CertificateParams::new(names)
            .expect("params")
            .signed_by(&key, &self.cert, &self.key)
            .expect("leaf");
        let pem = dir.join(format!("{stem}.pem"));
        let key_path = dir.join(format!("{stem}.key"));
        std::fs::write(&pem, cert.pem()).expect("write pem");
        std::fs::write(&key_path, key.serialize_pem()).expect("write key");
        (pem, key_path, cert.der().to_vec())
    }

    fn roots(&self) -> Arc<RootCertStore> {
        let mut roots = RootCertStore::empty();
        roots.add(self.cert.der().clone()).expect("CA in the store");
        Arc::new(roots)
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// What one HTTPS request saw.
#[derive(Debug)]
struct Seen {
    status: u16,
    body: String,
    leaf: Vec<u8>,
    alpn: Option<Vec<u8>>,
}

/// `GET /` for `host` over TLS with SNI `sni` to `proxy`.
fn https_get(
    roots: &Arc<RootCertStore>,
    proxy: SocketAddr,
    sni: &str,
    host: &str,
    any_name: bool,
) -> Result<Seen, String> {
    https_get_path(roots, proxy, sni, host, "/", any_name)
}

/// `GET path` for `host` over TLS with SNI `sni` to `proxy`.
fn https_get_path(
    roots: &Arc<RootCertStore>,
    proxy: SocketAddr,
    sni: &str,
    host: &str,
    path: &str,
    any_name: bool,
) -> Result<Seen, String> {
    // Verifies like a browser (the CA, the name) and records the leaf the
    // server presented; with `any_name`, records without checking (to see
    // which certificate an unknown name gets).
    let verifier = Arc::new(if any_name {
        RecordingVerifier::accept_any()
    } else {
        RecordingVerifier::trusting(roots.clone())
    });
    let config = client_config(verifier.clone(), rustls::DEFAULT_VERSIONS, &[b"http/1.1"]);
    let name = ServerName::try_from(sni.to_owned()).map_err(|e| e.to_string())?;
    let connection = ClientConnection::new(config, name).map_err(|e| e.to_string())?;
    let socket = TcpStream::connect_timeout(&proxy, WAIT).map_err(|e| format!("connect: {e}"))?;
    socket
        .set_read_timeout(Some(WAIT))
        .map_err(|e| e.to_string())?;
    let mut tls = StreamOwned::new(connection, socket);
    write!(tls, "GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    tls.flush().map_err(|e| format!("flush: {e}"))?;
    let alpn = tls.conn.alpn_protocol().map(<[u8]>::to_vec);
    let mut reader = BufReader::new(tls);
    let (status, body) = read_answer(&mut reader)?;
    let leaf = verifier.leaf().unwrap_or_default();
    Ok(Seen {
        status,
        body,
        leaf,
        alpn,
    })
}

/// The size of `/big`'s body.
const BIG: usize = 4 << 20;

/// A plain HTTP backend answering `backend=<name> proto=<X-Forwarded-Proto>`
/// (and [`BIG`] bytes for `/big`).
fn proto_backend(name: &str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a backend");
    let address = listener.local_addr().expect("address");
    let name = name.to_owned();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let name = name.clone();
            std::thread::spawn(move || {
                let Ok(mut writer) = stream.try_clone() else {
                    return;
                };
                let mut reader = BufReader::new(stream);
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut proto = String::from("-");
                    loop {
                        let mut header = String::new();
                        if reader.read_line(&mut header).unwrap_or(0) <= 2 {
                            break;
                        }
                        if let Some((n, v)) = header.split_once(':') {
                            if n.eq_ignore_ascii_case("x-forwarded-proto") {
                                proto = v.trim().to_owned();
                            }
                        }
                    }
                    let body = if line.starts_with("GET /big ") {
                        "0123456789abcdef".repeat(BIG / 16)
                    } else {
                        format!("backend={name} proto={proto}")
                    };
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
    address
}

/// A master with one HTTPS listener (default certificate `default.test`,
/// `front_timeout` 2 s) and two sites with their own certificates.
struct Fixture {
    sozu: Sozu,
    ca: Ca,
    front: SocketAddr,
    default_der: Vec<u8>,
    a_der: Vec<u8>,
    b_der: Vec<u8>,
    a_pem: PathBuf,
}

fn fixture() -> Fixture {
    fixture_with("")
}

/// [`fixture`] with `top` (top-level keys) first in config.toml.
fn fixture_with(top: &str) -> Fixture {
    let dir = Sozu::temp_dir();
    let ca = Ca::new();
    let (default_pem, default_key, default_der) = ca.leaf(dir.path(), "default", &["default.test"]);
    let (a_pem, a_key, a_der) = ca.leaf(dir.path(), "a", &["a.example.com"]);
    let (b_pem, b_key, b_der) = ca.leaf(dir.path(), "b", &["b.example.com"]);
    let front = free_v4();
    let extra = format!(
        r#"{top}
[[listeners]]
protocol = "https"
address = "{front}"
certificate = "{}"
key = "{}"
front_timeout = 2

# `https_redirect` sends plain-HTTP clients here; over TLS it must not
# apply (a 301 to the same URL would loop): `a` answers 200 below.
[clusters.a]
protocol = "http"
https_redirect = true
frontends = [{{ address = "{front}", hostname = "a.example.com", certificate = "{}", key = "{}" }}]
backends = [{{ address = "{}" }}]

[clusters.b]
protocol = "http"
frontends = [{{ address = "{front}", hostname = "b.example.com", certificate = "{}", key = "{}" }}]
backends = [{{ address = "{}" }}]
"#,
        path(&default_pem),
        path(&default_key),
        path(&a_pem),
        path(&a_key),
        proto_backend("a"),
        path(&b_pem),
        path(&b_key),
        proto_backend("b"),
    );
    let config = SozuConfig {
        worker_count: 1,
        extra,
        ..SozuConfig::default()
    };
    let sozu = Sozu::start_in(dir, config);
    Fixture {
        sozu,
        ca,
        front,
        default_der,
        a_der,
        b_der,
        a_pem,
    }
}

#[test]
fn https_routes_by_sni_and_host_with_a_default_certificate_and_live_replacement() {
    let f = fixture();
    let roots = f.ca.roots();
    let a = https_get(&roots, f.front, "a.example.com", "a.example.com", false)
        .unwrap_or_else(|e| panic!("a: {e}\n{}", f.sozu.log_tail(30)));
    assert_eq!((a.status, a.body.as_str()), (200, "backend=a proto=https"));
    assert_eq!(a.leaf, f.a_der, "a.example.com gets its own certificate");
    assert_eq!(a.alpn.as_deref(), Some(&b"http/1.1"[..]));
    let b = https_get(&roots, f.front, "b.example.com", "b.example.com", false).expect("b");
    assert_eq!((b.status, b.body.as_str()), (200, "backend=b proto=https"));
    assert_eq!(b.leaf, f.b_der, "b.example.com gets its own certificate");
    // An unknown name gets the listener's default certificate; no route
    // for its host: the proxy's own 404, over TLS.
    let other = https_get(&roots, f.front, "c.example.com", "c.example.com", true).expect("c");
    assert_eq!(other.leaf, f.default_der);
    assert_eq!(other.status, 404);
    // A browser would refuse that certificate for the name.
    assert!(https_get(&roots, f.front, "c.example.com", "c.example.com", false).is_err());

    // Replaced live: the next handshake sees the new certificate.
    let dir = f.sozu.dir().to_path_buf();
    let (new_pem, new_key, new_der) = f.ca.leaf(&dir, "a2", &["a.example.com"]);
    f.sozu.cli_ok(&[
        "certificate",
        "replace",
        "-a",
        &f.front.to_string(),
        "--old-certificate",
        path(&f.a_pem),
        "--certificate",
        path(&new_pem),
        "--key",
        path(&new_key),
    ]);
    let a2 = https_get(&roots, f.front, "a.example.com", "a.example.com", false).expect("a2");
    assert_eq!(a2.status, 200);
    assert_eq!(a2.leaf, new_der, "the replaced certificate is served");
    let metrics = f.sozu.metrics();
    assert!(
        metrics.proxy_or_zero("https.handshakes") >= 4,
        "{:?}",
        metrics.names()
    );

    // `sozu upgrade` keeps serving HTTPS.
    let old = f.sozu.worker_pids();
    f.sozu.cli_ok(&["upgrade"]);
    f.sozu.wait_ready(WAIT).expect("ready after the upgrade");
    let served = poll_until(WAIT, || {
        https_get(&roots, f.front, "b.example.com", "b.example.com", false)
            .ok()
            .filter(|s| s.status == 200 && s.leaf == f.b_der)
    });
    assert!(
        served.is_some(),
        "HTTPS after upgrade\n{}",
        f.sozu.log_tail(30)
    );
    assert!(f.sozu.worker_pids().iter().all(|p| !old.contains(p)));
}

#[test]
fn an_https_listener_deactivated_activated_and_removed() {
    let f = fixture();
    let roots = f.ca.roots();
    let addr = f.front.to_string();
    let ok = || {
        https_get(&roots, f.front, "a.example.com", "a.example.com", false)
            .is_ok_and(|s| s.status == 200)
    };
    assert!(ok());
    f.sozu
        .cli_ok(&["https", "listener", "deactivate", "-a", &addr]);
    // The master still holds the port; no worker answers a handshake.
    let mut quiet = TcpStream::connect(f.front).expect("held socket");
    quiet
        .set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let mut hello = Vec::new();
    hello.extend_from_slice(&[0x16, 0x03, 0x01, 0x00, 0x05, 0x01, 0x00, 0x00, 0x01, 0x00]);
    quiet.write_all(&hello).expect("write");
    let mut byte = [0u8; 1];
    assert!(
        matches!(quiet.read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut),
        "a deactivated listener answered"
    );
    f.sozu
        .cli_ok(&["https", "listener", "activate", "-a", &addr]);
    assert!(
        poll_until(WAIT, || ok().then_some(())).is_some(),
        "not served after activate"
    );
    f.sozu.cli_ok(&["https", "listener", "remove", "-a", &addr]);
    let refused = poll_until(WAIT, || {
        TcpStream::connect(f.front)
            .err()
            .filter(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
    });
    assert!(refused.is_some(), "{addr} still accepts after remove");
}

/// Reads until the proxy closes (`true`) or `limit` passes (`false`).
fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let start = now();
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut buf = [0u8; 4096];
    while start.elapsed() < limit {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return true,
        }
    }
    false
}

#[test]
fn hostile_tls_clients_are_closed_and_counted() {
    let f = fixture();
    let roots = f.ca.roots();
    // Plain HTTP on the TLS port.
    let mut garbage = TcpStream::connect(f.front).expect("connect");
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: a.example.com\r\n\r\n")
        .expect("write");
    assert!(closed_within(&mut garbage, WAIT), "garbage not closed");
    // A record header announcing 65535 bytes (TLS allows 16 KiB + 2048).
    let mut oversized = TcpStream::connect(f.front).expect("connect");
    oversized
        .write_all(&[0x16, 0x03, 0x03, 0xff, 0xff, 0x01])
        .expect("write");
    assert!(closed_within(&mut oversized, WAIT), "oversized not closed");
    // A handshake that stalls after three bytes: closed at front_timeout
    // (2 s) from accept, though the client keeps dripping bytes.
    let start = now();
    let mut stalled = TcpStream::connect(f.front).expect("connect");
    stalled.write_all(&[0x16, 0x03]).expect("write");
    std::thread::sleep(Duration::from_millis(1200));
    let _ = stalled.write_all(&[0x01]);
    assert!(
        closed_within(&mut stalled, WAIT),
        "stalled handshake not closed"
    );
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(8),
        "closed after {took:?}"
    );
    let metrics = f
        .sozu
        .wait_metrics("handshake failures counted", WAIT, |m| {
            m.proxy_or_zero("https.handshake.failed.not_tls") >= 1
                && m.proxy_or_zero("https.handshake.failed.oversized_record") >= 1
                && m.proxy_or_zero("https.handshake.failed.timeout") >= 1
        });
    assert_eq!(metrics.proxy_or_zero("https.handshakes"), 0);
    // And the listener still serves (the counter that must move).
    let a = https_get(&roots, f.front, "a.example.com", "a.example.com", false).expect("a");
    assert_eq!(a.status, 200);
    f.sozu.wait_metrics("a handshake counted", WAIT, |m| {
        m.proxy_or_zero("https.handshakes") == 1
    });
}

#[test]
fn curl_reaches_the_backend_through_https() {
    if std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("curl is not installed: this case is skipped");
        return;
    }
    let f = fixture();
    let ca_pem = f.sozu.dir().join("ca.pem");
    std::fs::write(&ca_pem, f.ca.cert.pem()).expect("write CA");
    let resolve = format!("a.example.com:{}:127.0.0.1", f.front.port());
    let url = format!("https://a.example.com:{}/", f.front.port());
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "--cacert",
            path(&ca_pem),
            "--resolve",
        ])
        .arg(&resolve)
        .arg(&url)
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "backend=a proto=https"
    );
}

#[test]
fn a_large_response_crosses_tls_intact() {
    let f = fixture();
    let roots = f.ca.roots();
    let big = https_get_path(
        &roots,
        f.front,
        "a.example.com",
        "a.example.com",
        "/big",
        false,
    )
    .unwrap_or_else(|e| panic!("big: {e}\n{}", f.sozu.log_tail(30)));
    assert_eq!(big.status, 200);
    assert_eq!(big.body.len(), BIG);
    assert!(big.body.starts_with("0123456789abcdef") && big.body.ends_with("cdef"));
    assert_eq!(big.body, "0123456789abcdef".repeat(BIG / 16));
}

#[test]
fn handshakes_that_fail_free_their_max_connections_slot() {
    let f = fixture_with("max_connections = 2\n");
    let roots = f.ca.roots();
    // Two stalled handshakes hold both slots: a third client is closed at
    // accept and counted.
    let mut stalled: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut s = TcpStream::connect(f.front).expect("connect");
            s.write_all(&[0x16, 0x03]).expect("write");
            s
        })
        .collect();
    f.sozu
        .wait_metrics("both stalled clients accepted", WAIT, |m| {
            m.proxy_or_zero("http.connections") >= 2
        });
    assert!(
        https_get(&roots, f.front, "a.example.com", "a.example.com", false).is_err(),
        "a third connection was served beyond max_connections"
    );
    f.sozu.wait_metrics("the third client refused", WAIT, |m| {
        m.proxy_or_zero("http.connections_refused") >= 1
    });
    // Their deadline (front_timeout, 2 s) closes them and frees the slots.
    for s in &mut stalled {
        assert!(closed_within(s, WAIT), "stalled handshake not closed");
    }
    let served = poll_until(WAIT, || {
        https_get(&roots, f.front, "a.example.com", "a.example.com", false)
            .ok()
            .filter(|s| s.status == 200)
    });
    assert!(served.is_some(), "slots not freed\n{}", f.sozu.log_tail(30));
    f.sozu.wait_metrics("timeouts counted", WAIT, |m| {
        m.proxy_or_zero("https.handshake.failed.timeout") == 2
    });
}

#[test]
fn update_https_listener_applies_to_new_connections() {
    let f = fixture();
    let roots = f.ca.roots();
    f.sozu.cli_ok(&[
        "https",
        "listener",
        "update",
        "-a",
        &f.front.to_string(),
        "--front-timeout",
        "5",
    ]);
    // The handshake deadline follows front_timeout: 5 s now, not 2 s.
    let start = now();
    let mut stalled = TcpStream::connect(f.front).expect("connect");
    stalled.write_all(&[0x16, 0x03]).expect("write");
    assert!(
        closed_within(&mut stalled, Duration::from_secs(20)),
        "not closed"
    );
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(4500), "closed after {took:?}");
    // And the listener (its TLS configuration rebuilt) still serves.
    let a = https_get(&roots, f.front, "a.example.com", "a.example.com", false).expect("a");
    assert_eq!((a.status, a.leaf == f.a_der), (200, true));
}

#[test]
fn an_https_listener_serves_its_custom_answers_with_template_values() {
    let dir = Sozu::temp_dir();
    let ca = Ca::new();
    let (pem, key, _) = ca.leaf(dir.path(), "default", &["default.test"]);
    let front = free_v4();
    let extra = format!(
        r#"
[[listeners]]
protocol = "https"
address = "{front}"
certificate = "{}"
key = "{}"

[listeners.answers]
404 = "inline:no route for %ROUTE"

[clusters.site]
protocol = "http"
frontends = [{{ address = "{front}", hostname = "default.test" }}]
backends = [{{ address = "{}" }}]
"#,
        path(&pem),
        path(&key),
        proto_backend("site"),
    );
    let sozu = Sozu::start_in(
        dir,
        SozuConfig {
            worker_count: 1,
            extra,
            ..SozuConfig::default()
        },
    );
    let roots = ca.roots();
    let missing = https_get_path(&roots, front, "default.test", "nowhere.test", "/x", false)
        .unwrap_or_else(|e| panic!("{e}\n{}", sozu.log_tail(30)));
    assert_eq!(
        (missing.status, missing.body.as_str()),
        (404, "no route for nowhere.test/x")
    );
    // The positive side: a routed request is served over TLS.
    let site = https_get(&roots, front, "default.test", "default.test", false).unwrap();
    assert_eq!(
        (site.status, site.body.as_str()),
        (200, "backend=site proto=https")
    );
}
