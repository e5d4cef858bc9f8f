//! HSTS (RFC 6797) as a Sōzu 2.x `config.toml` sets it, through the real
//! binary: an HTTPS listener's `hsts` is stamped on its frontends'
//! responses (and on the proxy's own answers), a frontend's `hsts` overrides
//! it or turns it off, a backend's own header is kept unless
//! `force_replace_backend`, and nothing is stamped over plain HTTP.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{ClientConnection, StreamOwned};
use sozu_e2e::ports::free_v4;
use sozu_e2e::wait::poll_until;
use sozu_e2e::{Sozu, SozuConfig};
use sozu_lib::tls::testing::{client_config, RecordingVerifier};

const WAIT: Duration = Duration::from_secs(10);

/// A plain HTTP backend answering 200 `backend=<name>`, with `extra`
/// header lines in its head.
fn backend(name: &str, extra: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a backend");
    let address = listener.local_addr().expect("address");
    let body = format!("backend={name}");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let body = body.clone();
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
                    loop {
                        let mut header = String::new();
                        if reader.read_line(&mut header).unwrap_or(0) <= 2 {
                            break;
                        }
                    }
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\n{extra}Content-Length: {}\r\n\r\n{body}",
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

/// One response: its status, its `Strict-Transport-Security` values, its
/// body.
#[derive(Debug)]
struct Seen {
    status: u16,
    sts: Vec<String>,
    body: String,
}

/// Reads one response (head, then a `Content-Length` body).
fn read_response(reader: &mut impl Read) -> Result<Seen, String> {
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(n) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            break n + 4;
        }
        let n = reader.read(&mut chunk).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err(format!(
                "closed before a whole head: {:?}",
                String::from_utf8_lossy(&bytes)
            ));
        }
        bytes.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&bytes[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status in {head:?}"))?;
    let mut sts = Vec::new();
    let mut length = 0;
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("strict-transport-security") {
                sts.push(value.trim().to_owned());
            }
            if name.eq_ignore_ascii_case("content-length") {
                length = value
                    .trim()
                    .parse()
                    .map_err(|_| format!("bad length in {head:?}"))?;
            }
        }
    }
    while bytes.len() < head_end + length {
        let n = reader
            .read(&mut chunk)
            .map_err(|e| format!("read body: {e}"))?;
        if n == 0 {
            return Err("closed in the body".into());
        }
        bytes.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8_lossy(&bytes[head_end..head_end + length]).into_owned();
    Ok(Seen { status, sts, body })
}

/// `GET /` for `host` over TLS (SNI `host`, any certificate accepted: the
/// certificates are `https.rs`'s subject).
fn https_get(proxy: SocketAddr, host: &str) -> Result<Seen, String> {
    let verifier = Arc::new(RecordingVerifier::accept_any());
    let config = client_config(verifier, rustls::DEFAULT_VERSIONS, &[b"http/1.1"]);
    let name = ServerName::try_from(host.to_owned()).map_err(|e| e.to_string())?;
    let connection = ClientConnection::new(config, name).map_err(|e| e.to_string())?;
    let socket = TcpStream::connect_timeout(&proxy, WAIT).map_err(|e| format!("connect: {e}"))?;
    socket
        .set_read_timeout(Some(WAIT))
        .map_err(|e| e.to_string())?;
    let mut tls = StreamOwned::new(connection, socket);
    write!(tls, "GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").map_err(|e| format!("write: {e}"))?;
    tls.flush().map_err(|e| format!("flush: {e}"))?;
    read_response(&mut tls)
}

/// `GET /` for `host` over plain HTTP.
fn http_get(proxy: SocketAddr, host: &str) -> Result<Seen, String> {
    let mut socket =
        TcpStream::connect_timeout(&proxy, WAIT).map_err(|e| format!("connect: {e}"))?;
    socket
        .set_read_timeout(Some(WAIT))
        .map_err(|e| e.to_string())?;
    write!(socket, "GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").map_err(|e| format!("write: {e}"))?;
    read_response(&mut socket)
}

#[test]
fn hsts_is_stamped_as_the_listener_and_frontends_say_and_never_over_http() {
    let dir = Sozu::temp_dir();
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["default.test".to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("certificate");
    let pem = dir.path().join("default.pem");
    let key_path = dir.path().join("default.key");
    std::fs::write(&pem, cert.pem()).expect("write pem");
    std::fs::write(&key_path, key.serialize_pem()).expect("write key");
    let secure = free_v4();
    let plain = free_v4();
    let extra = format!(
        r#"
[[listeners]]
protocol = "https"
address = "{secure}"
certificate = "{}"
key = "{}"
hsts = {{ enabled = true, max_age = 600 }}

[[listeners]]
protocol = "http"
address = "{plain}"

# The listener's policy.
[clusters.inherits]
protocol = "http"
frontends = [
    {{ address = "{secure}", hostname = "inherits.test" }},
    {{ address = "{plain}", hostname = "inherits.test" }},
]
backends = [{{ address = "{}" }}]

# Turned off for this frontend.
[clusters.off]
protocol = "http"
frontends = [{{ address = "{secure}", hostname = "off.test", hsts = {{ enabled = false }} }}]
backends = [{{ address = "{}" }}]

# Its own policy; its backend sends a header of its own, kept.
[clusters.own]
protocol = "http"
frontends = [{{ address = "{secure}", hostname = "own.test", hsts = {{ enabled = true, include_subdomains = true, preload = true }} }}]
backends = [{{ address = "{}" }}]

# Its own policy, replacing the backend's.
[clusters.forced]
protocol = "http"
frontends = [{{ address = "{secure}", hostname = "forced.test", hsts = {{ enabled = true, max_age = 60, force_replace_backend = true }} }}]
backends = [{{ address = "{}" }}]
"#,
        pem.display(),
        key_path.display(),
        backend("inherits", ""),
        backend("off", ""),
        backend("own", "Strict-Transport-Security: max-age=5\r\n"),
        backend("forced", "strict-transport-security: max-age=5\r\n"),
    );
    let sozu = Sozu::start_in(
        dir,
        SozuConfig {
            worker_count: 1,
            extra,
            ..SozuConfig::default()
        },
    );
    let get = |host: &str| {
        poll_until(WAIT, || {
            https_get(secure, host).ok().filter(|s| s.status == 200)
        })
        .unwrap_or_else(|| panic!("{host}: no 200 over TLS\n{}", sozu.log_tail(30)))
    };

    let inherits = get("inherits.test");
    assert_eq!(inherits.body, "backend=inherits");
    assert_eq!(inherits.sts, ["max-age=600"], "the listener's policy");

    let off = get("off.test");
    assert_eq!(off.body, "backend=off");
    assert!(
        off.sts.is_empty(),
        "turned off for the frontend: {:?}",
        off.sts
    );

    let own = get("own.test");
    assert_eq!(own.sts, ["max-age=5"], "the backend's own header is kept");

    let forced = get("forced.test");
    assert_eq!(forced.body, "backend=forced");
    assert_eq!(forced.sts, ["max-age=60"], "the backend's header replaced");

    // The proxy's own answer over TLS (no route for the host) carries the
    // listener's policy.
    let unrouted = https_get(secure, "nowhere.test").expect("an answer");
    assert_eq!(unrouted.status, 404);
    assert_eq!(unrouted.sts, ["max-age=600"]);

    // Never over plain HTTP (RFC 6797 §7.2), for the same cluster.
    let cleartext =
        poll_until(WAIT, || http_get(plain, "inherits.test").ok()).expect("an answer over HTTP");
    assert_eq!(cleartext.status, 200);
    assert_eq!(cleartext.body, "backend=inherits");
    assert!(cleartext.sts.is_empty(), "{:?}", cleartext.sts);
}
