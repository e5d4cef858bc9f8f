//! HSTS (RFC 6797) as a Sōzu 2.x `config.toml` sets it, through the real
//! binary: an HTTPS listener's `hsts` is stamped on its frontends'
//! responses (and on the proxy's own answers), a frontend's `hsts` overrides
//! it or turns it off, a backend's own header is kept unless
//! `force_replace_backend`, and nothing is stamped over plain HTTP.

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{ClientConnection, StreamOwned};
use sozu_e2e::http::{read_full_answer, Answer};
use sozu_e2e::ports::free_v4;
use sozu_e2e::stream::NamedHttpBackend;
use sozu_e2e::wait::poll_until;
use sozu_e2e::{Sozu, SozuConfig};
use sozu_lib::tls::testing::{client_config, RecordingVerifier};

const WAIT: Duration = Duration::from_secs(10);

/// Every `Strict-Transport-Security` value of an answer.
fn sts(answer: &Answer) -> Vec<&str> {
    answer
        .headers
        .iter()
        .filter(|(name, _)| name == "strict-transport-security")
        .map(|(_, value)| value.as_str())
        .collect()
}

/// `GET /` for `host` over TLS (SNI `host`, any certificate accepted: the
/// certificates are `https.rs`'s subject).
fn https_get(proxy: SocketAddr, host: &str) -> Result<Answer, String> {
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
    read_full_answer(&mut BufReader::new(tls))
}

/// `GET /` for `host` over plain HTTP.
fn http_get(proxy: SocketAddr, host: &str) -> Result<Answer, String> {
    let mut socket =
        TcpStream::connect_timeout(&proxy, WAIT).map_err(|e| format!("connect: {e}"))?;
    socket
        .set_read_timeout(Some(WAIT))
        .map_err(|e| e.to_string())?;
    write!(socket, "GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").map_err(|e| format!("write: {e}"))?;
    read_full_answer(&mut BufReader::new(socket))
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
        NamedHttpBackend::start("inherits").addr(),
        NamedHttpBackend::start("off").addr(),
        NamedHttpBackend::with_headers("own", "Strict-Transport-Security: max-age=5\r\n").addr(),
        NamedHttpBackend::with_headers("forced", "strict-transport-security: max-age=5\r\n").addr(),
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
    assert_eq!(sts(&inherits), ["max-age=600"], "the listener's policy");

    let off = get("off.test");
    assert_eq!(off.body, "backend=off");
    assert!(sts(&off).is_empty(), "turned off for the frontend: {off:?}");

    let own = get("own.test");
    assert_eq!(sts(&own), ["max-age=5"], "the backend's own header is kept");

    let forced = get("forced.test");
    assert_eq!(forced.body, "backend=forced");
    assert_eq!(
        sts(&forced),
        ["max-age=60"],
        "the backend's header replaced"
    );

    // The proxy's own answer over TLS (no route for the host) carries the
    // listener's policy.
    let unrouted = https_get(secure, "nowhere.test").expect("an answer");
    assert_eq!(unrouted.status, 404);
    assert_eq!(sts(&unrouted), ["max-age=600"]);

    // Never over plain HTTP (RFC 6797 §7.2), for the same cluster.
    let cleartext =
        poll_until(WAIT, || http_get(plain, "inherits.test").ok()).expect("an answer over HTTP");
    assert_eq!(cleartext.status, 200);
    assert_eq!(cleartext.body, "backend=inherits");
    assert!(sts(&cleartext).is_empty(), "{cleartext:?}");
}
