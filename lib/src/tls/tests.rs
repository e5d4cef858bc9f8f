//! The TLS pieces driven by an in-memory rustls client: which certificate
//! a handshake gets, what the knobs refuse, and what hostile bytes do.

use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::ClientConnection;
use sozu_command_lib::command::{CertificateAndKey, HttpsListenerConfig, TlsVersion};

use super::certificate::load;
use super::policy::TlsPolicy;
use super::testing::{client_config, self_signed, RecordingVerifier};
use super::transport::{Plaintext, TlsTransport, MAX_PLAINTEXT_IN};
use super::{check_listener, CertificateStore, TlsError};

fn leaf_der(order: &CertificateAndKey) -> Vec<u8> {
    load(order).expect("loads").key.cert[0].as_ref().to_vec()
}

/// A client for `name` (a DNS name sends SNI, an IP address does not).
fn client(name: &str) -> ClientConnection {
    client_with(name, &[&rustls::version::TLS13, &rustls::version::TLS12])
}

fn client_with(
    name: &str,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> ClientConnection {
    let server_name = ServerName::try_from(name.to_owned()).expect("server name");
    // Any certificate is accepted: the tests check which one was sent.
    let config = client_config(
        Arc::new(RecordingVerifier::accept_any()),
        versions,
        &[b"h2", b"http/1.1"],
    );
    ClientConnection::new(config, server_name).expect("client")
}

fn listener() -> HttpsListenerConfig {
    HttpsListenerConfig {
        address: "127.0.0.1:8443"
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into(),
        ..Default::default()
    }
}

fn new_server(store: &Arc<CertificateStore>, config: &HttpsListenerConfig) -> TlsTransport {
    let policy = TlsPolicy::from_listener(config).expect("policy");
    TlsTransport::new(policy.server_config(store.clone()).expect("server config")).expect("conn")
}

/// Moves bytes both ways until both sides finished the handshake; the
/// error is the server's or the client's.
fn handshake(client: &mut ClientConnection, server: &mut TlsTransport) -> Result<(), String> {
    let mut buffer = vec![0u8; 64 * 1024];
    for _ in 0..20 {
        let mut out = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut out).map_err(|e| e.to_string())?;
        }
        if !out.is_empty() {
            let taken = server.receive(&out).map_err(|e| format!("server: {e}"))?;
            assert_eq!(taken, out.len(), "handshake bytes are all taken");
        }
        let n = server.poll_transmit(&mut buffer);
        if n > 0 {
            let mut slice = &buffer[..n];
            while !slice.is_empty() {
                client.read_tls(&mut slice).map_err(|e| e.to_string())?;
                client
                    .process_new_packets()
                    .map_err(|e| format!("client: {e}"))?;
            }
        }
        if !client.is_handshaking() && !server.is_handshaking() && !client.wants_write() {
            return Ok(());
        }
    }
    Err("handshake did not finish".to_owned())
}

fn presented(client: &ClientConnection) -> Vec<u8> {
    client.peer_certificates().expect("a certificate")[0]
        .as_ref()
        .to_vec()
}

#[test]
fn handshake_picks_the_certificate_by_sni() {
    let a = self_signed(&["a.example.com"]);
    let b = self_signed(&["b.example.com"]);
    let store = Arc::new(CertificateStore::new());
    store.add(load(&a).unwrap());
    store.add(load(&b).unwrap());
    for (name, order) in [("a.example.com", &a), ("B.Example.com", &b)] {
        let mut client = client(name);
        let mut server = new_server(&store, &listener());
        handshake(&mut client, &mut server).expect("handshake");
        assert_eq!(presented(&client), leaf_der(order), "{name}");
        assert_eq!(
            server.server_name(),
            Some(name.to_ascii_lowercase().as_str())
        );
        assert_eq!(server.alpn(), Some(&b"http/1.1"[..]), "ALPN http/1.1 only");
    }
}

#[test]
fn a_wildcard_covers_one_label_and_an_exact_name_beats_it() {
    let wildcard = self_signed(&["*.example.org"]);
    let exact = self_signed(&["www.example.org"]);
    let store = Arc::new(CertificateStore::new());
    store.add(load(&wildcard).unwrap());
    store.add(load(&exact).unwrap());
    let cases = [
        ("api.example.org", &wildcard),
        ("www.example.org", &exact),
        // Two labels down: no match, the default (the oldest) answers.
        ("a.b.example.org", &wildcard),
    ];
    for (name, order) in cases {
        let mut client = client(name);
        let mut server = new_server(&store, &listener());
        handshake(&mut client, &mut server).expect("handshake");
        assert_eq!(presented(&client), leaf_der(order), "{name}");
    }
    assert_eq!(
        store
            .resolve_name(Some("example.org"))
            .map(|k| k.cert[0].as_ref().to_vec()),
        Some(leaf_der(&wildcard)),
        "the bare domain is not covered by the wildcard: default"
    );
}

#[test]
fn without_sni_or_match_the_default_certificate_answers() {
    let first = self_signed(&["first.example.com"]);
    let second = self_signed(&["second.example.com"]);
    let chosen = self_signed(&["default.example.com"]);
    let store = Arc::new(CertificateStore::new());
    store.add(load(&first).unwrap());
    store.add(load(&second).unwrap());
    // An IP address as server name: the client sends no SNI.
    let mut client_no_sni = client("127.0.0.1");
    let mut server_conn = new_server(&store, &listener());
    handshake(&mut client_no_sni, &mut server_conn).expect("handshake");
    assert_eq!(server_conn.server_name(), None);
    assert_eq!(
        presented(&client_no_sni),
        leaf_der(&first),
        "oldest is default"
    );

    store.set_default(Some(load(&chosen).unwrap()));
    let mut unknown = client("unknown.example.net");
    let mut server_conn = new_server(&store, &listener());
    handshake(&mut unknown, &mut server_conn).expect("handshake");
    assert_eq!(presented(&unknown), leaf_der(&chosen), "explicit default");
}

#[test]
fn store_changes_apply_to_the_next_handshake() {
    let old = self_signed(&["site.example.com"]);
    let new = self_signed(&["site.example.com"]);
    let store = Arc::new(CertificateStore::new());
    let policy = TlsPolicy::from_listener(&listener()).unwrap();
    let config = policy.server_config(store.clone()).unwrap();
    let connect = || {
        let mut client = client("site.example.com");
        let mut server = TlsTransport::new(config.clone()).unwrap();
        handshake(&mut client, &mut server).map(|()| presented(&client))
    };
    assert!(
        connect().is_err(),
        "no certificate at all: the handshake fails"
    );
    let old_loaded = load(&old).unwrap();
    let old_fingerprint = old_loaded.fingerprint;
    store.add(old_loaded);
    assert_eq!(connect().unwrap(), leaf_der(&old));
    store.replace(&old_fingerprint, load(&new).unwrap());
    assert_eq!(connect().unwrap(), leaf_der(&new));
    assert!(!store.contains(&old_fingerprint));
    assert_eq!(store.len(), 1);
}

#[test]
fn refused_versions_and_ciphers_name_the_value() {
    let mut config = listener();
    config.versions = vec![TlsVersion::TlsV10 as i32];
    let error = check_listener(&config).unwrap_err();
    assert!(
        matches!(&error, TlsError::Unsupported { field: "versions", value, .. } if value == "TLS_V1_0"),
        "{error}"
    );
    let mut config = listener();
    config.cipher_list = vec!["DHE-RSA-AES128-GCM-SHA256".to_owned()];
    let error = check_listener(&config).unwrap_err().to_string();
    assert!(
        error.starts_with("cipher_list: \"DHE-RSA-AES128-GCM-SHA256\""),
        "{error}"
    );
    let mut config = listener();
    config.groups_list = vec!["ffdhe2048".to_owned()];
    assert!(check_listener(&config)
        .unwrap_err()
        .to_string()
        .contains("groups_list"));
    let mut config = listener();
    config.alpn_protocols = vec!["spdy/3".to_owned()];
    assert!(check_listener(&config)
        .unwrap_err()
        .to_string()
        .contains("alpn_protocols"));
    let mut config = listener();
    config.versions = vec![TlsVersion::TlsV13 as i32];
    config.cipher_list = vec!["ECDHE-RSA-AES128-GCM-SHA256".to_owned()];
    let error = check_listener(&config).unwrap_err().to_string();
    assert!(error.contains("none of its cipher suites"), "{error}");
}

#[test]
fn cipher_names_in_every_spelling_map_to_the_same_suites() {
    let mut config = listener();
    config.cipher_list = vec![
        "ECDHE-ECDSA-AES128-GCM-SHA256:TLS12_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384".to_owned(),
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256".to_owned(),
    ];
    config.cipher_suites = vec![
        "TLS_AES_128_GCM_SHA256".to_owned(),
        "TLS13_AES_256_GCM_SHA384".to_owned(),
    ];
    config.groups_list = vec!["x25519".to_owned(), "prime256v1".to_owned()];
    check_listener(&config).expect("every name is known");
}

#[test]
fn a_server_limited_to_tls13_refuses_a_tls12_client() {
    let store = Arc::new(CertificateStore::new());
    store.add(load(&self_signed(&["a.example.com"])).unwrap());
    let mut config = listener();
    config.versions = vec![TlsVersion::TlsV13 as i32];
    let mut client = client_with("a.example.com", &[&rustls::version::TLS12]);
    let mut server = new_server(&store, &config);
    let error = handshake(&mut client, &mut server).unwrap_err();
    assert!(error.starts_with("server:"), "{error}");
    let mut tls13 = client_with("a.example.com", &[&rustls::version::TLS13]);
    let mut server = new_server(&store, &config);
    handshake(&mut tls13, &mut server).expect("TLS 1.3 client");
    assert_eq!(
        server.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
}

#[test]
fn signature_algorithms_restrict_what_the_server_signs_with() {
    let store = Arc::new(CertificateStore::new());
    // rcgen's default key is ECDSA P-256.
    store.add(load(&self_signed(&["a.example.com"])).unwrap());
    let mut config = listener();
    config.signature_algorithms = vec!["ED25519".to_owned()];
    let mut client1 = client("a.example.com");
    let mut server1 = new_server(&store, &config);
    assert!(
        handshake(&mut client1, &mut server1).is_err(),
        "cannot sign"
    );
    config.signature_algorithms = vec!["ECDSA+SHA256".to_owned()];
    let mut client2 = client("a.example.com");
    let mut server2 = new_server(&store, &config);
    handshake(&mut client2, &mut server2).expect("ECDSA allowed");
}

#[test]
fn a_key_that_is_not_the_certificates_is_refused() {
    let a = self_signed(&["a.example.com"]);
    let b = self_signed(&["b.example.com"]);
    let mismatched = CertificateAndKey {
        key: b.key.clone(),
        ..a.clone()
    };
    let error = load(&mismatched).unwrap_err();
    assert_eq!(
        error.to_string(),
        "certificate.key: does not match the certificate's public key"
    );
    let mut config = listener();
    config.certificate = Some(a.certificate.clone());
    config.key = Some(b.key);
    let error = check_listener(&config).unwrap_err().to_string();
    assert!(error.starts_with("key: does not match"), "{error}");
    config.key = None;
    assert!(check_listener(&config)
        .unwrap_err()
        .to_string()
        .starts_with("key:"));
}

#[test]
fn garbage_instead_of_tls_is_an_error_not_a_panic() {
    let store = Arc::new(CertificateStore::new());
    store.add(load(&self_signed(&["a.example.com"])).unwrap());
    let mut server = new_server(&store, &listener());
    let result = server.receive(b"GET / HTTP/1.1\r\nHost: a.example.com\r\n\r\n");
    assert!(result.is_err(), "plain HTTP on a TLS listener");
    // An alert for the peer is queued; reading more changes nothing.
    let mut out = [0u8; 256];
    assert!(server.poll_transmit(&mut out) > 0, "an alert is sent");
    assert!(server.receive(b"more").is_err());
    assert_eq!(server.read_plaintext(&mut out), Plaintext::Nothing);
}

#[test]
fn an_oversized_record_is_refused() {
    let store = Arc::new(CertificateStore::new());
    let mut server = new_server(&store, &listener());
    // A handshake record announcing 65535 bytes (TLS allows 2^14 + 2048).
    let mut record = vec![0x16, 0x03, 0x01, 0xff, 0xff];
    record.extend(std::iter::repeat_n(0u8, 1024));
    assert!(server.receive(&record).is_err());
}

/// A ClientHello announcing 65,520 bytes, in full records: rustls joins
/// handshake messages up to 64 KiB only, so the transport refuses it as
/// oversized instead of taking no more bytes and waiting (which left the
/// connection stalled until its handshake deadline; found by the
/// `tls_http` fuzz driver).
#[test]
fn a_handshake_message_larger_than_rustls_joins_is_refused_not_stalled() {
    let store = Arc::new(CertificateStore::new());
    let mut server = new_server(&store, &listener());
    let mut payload = vec![0x01, 0x00, 0xff, 0xf0];
    payload.extend(std::iter::repeat_n(0u8, 0xfff0));
    let mut wire = Vec::new();
    for chunk in payload.chunks(16 * 1024) {
        let len = u16::try_from(chunk.len()).unwrap().to_be_bytes();
        wire.extend_from_slice(&[0x16, 0x03, 0x01, len[0], len[1]]);
        wire.extend_from_slice(chunk);
    }
    // Fed the way the TLS front feeds it: what was not taken is given again.
    let mut offset = 0;
    let mut outcome = Ok(0);
    for _ in 0..64 {
        outcome = server.receive(&wire[offset..]);
        match outcome {
            Ok(taken) if taken > 0 && offset + taken < wire.len() => offset += taken,
            _ => break,
        }
    }
    let error = outcome.expect_err("refused, not waiting");
    assert!(
        matches!(
            error,
            super::TransportError::Tls(rustls::Error::InvalidMessage(
                rustls::InvalidMessage::MessageTooLarge
            ))
        ),
        "{error}"
    );
    assert!(offset < wire.len(), "the message was never complete");
}

#[test]
fn plaintext_flows_both_ways_and_received_plaintext_is_bounded() {
    let store = Arc::new(CertificateStore::new());
    store.add(load(&self_signed(&["a.example.com"])).unwrap());
    let mut client = client("a.example.com");
    let mut server = new_server(&store, &listener());
    handshake(&mut client, &mut server).expect("handshake");

    // Client → server: more than the bound, never read by the HTTP layer.
    let chunk = vec![b'x'; 16 * 1024];
    let mut wire = Vec::new();
    for _ in 0..8 {
        std::io::Write::write_all(&mut client.writer(), &chunk).unwrap();
        while client.wants_write() {
            client.write_tls(&mut wire).unwrap();
        }
    }
    let taken = server.receive(&wire).expect("valid records");
    assert!(
        taken < wire.len(),
        "stops taking bytes once the plaintext bound is reached"
    );
    let mut plaintext = vec![0u8; 256 * 1024];
    let mut total = 0;
    while let Plaintext::Data(n) = server.read_plaintext(&mut plaintext[total..]) {
        total += n;
    }
    // At most the bound plus the record that crossed it (rustls' own
    // buffer may stop it earlier).
    assert!(
        total > 0 && total <= MAX_PLAINTEXT_IN + 16 * 1024,
        "{total}"
    );
    // The rest goes in as the HTTP layer reads.
    let mut offset = taken;
    for _ in 0..64 {
        if offset == wire.len() {
            break;
        }
        offset += server.receive(&wire[offset..]).expect("rest");
        while let Plaintext::Data(n) = server.read_plaintext(&mut plaintext[total..]) {
            total += n;
        }
    }
    assert_eq!(offset, wire.len());
    assert_eq!(total, 8 * chunk.len());

    // Server → client.
    assert_eq!(server.send_plaintext(b"HTTP/1.1 200 OK\r\n\r\n"), 19);
    let mut out = vec![0u8; 4096];
    let n = server.poll_transmit(&mut out);
    let mut slice = &out[..n];
    client.read_tls(&mut slice).unwrap();
    client.process_new_packets().unwrap();
    let mut answer = [0u8; 64];
    let n = std::io::Read::read(&mut client.reader(), &mut answer).unwrap();
    assert_eq!(&answer[..n], b"HTTP/1.1 200 OK\r\n\r\n");

    // close_notify from the client ends the plaintext stream.
    client.send_close_notify();
    let mut wire = Vec::new();
    client.write_tls(&mut wire).unwrap();
    server.receive(&wire).expect("close_notify");
    assert_eq!(server.read_plaintext(&mut answer), Plaintext::Closed);
}

#[test]
fn the_worker_keeps_each_listeners_store_live_from_the_orders() {
    use sozu_command_lib::command::request::RequestType;
    use sozu_command_lib::command::{
        AddCertificate, RemoveCertificate, ReplaceCertificate, Request,
    };
    use sozu_command_lib::state::ConfigState;

    use super::TlsListeners;

    let default = self_signed(&["default.example.com"]);
    let first = self_signed(&["site.example.com"]);
    let second = self_signed(&["site.example.com"]);
    let mut config = listener();
    config.certificate = Some(default.certificate.clone());
    config.key = Some(default.key.clone());
    let address: std::net::SocketAddr = "127.0.0.1:8443".parse().unwrap();

    let mut state = ConfigState::new();
    let mut tls = TlsListeners::new();
    let apply = |state: &mut ConfigState, tls: &mut TlsListeners, order: RequestType| {
        let request = Request {
            request_type: Some(order),
        };
        state.dispatch(&request).expect("the state takes it");
        tls.apply(request.request_type.as_ref().unwrap(), state)
    };
    let resolved = |tls: &TlsListeners, name: &str| {
        tls.get(&address)
            .and_then(|l| l.store.resolve_name(Some(name)))
            .map(|k| k.cert[0].as_ref().to_vec())
    };
    apply(&mut state, &mut tls, RequestType::AddHttpsListener(config)).unwrap();
    assert_eq!(resolved(&tls, "site.example.com"), Some(leaf_der(&default)));

    let add = |c: &CertificateAndKey| {
        RequestType::AddCertificate(AddCertificate {
            address: address.into(),
            certificate: c.clone(),
            expired_at: None,
        })
    };
    apply(&mut state, &mut tls, add(&first)).unwrap();
    assert_eq!(resolved(&tls, "site.example.com"), Some(leaf_der(&first)));
    let fingerprint = |c: &CertificateAndKey| load(c).unwrap().fingerprint.to_string();
    apply(
        &mut state,
        &mut tls,
        RequestType::ReplaceCertificate(ReplaceCertificate {
            address: address.into(),
            new_certificate: second.clone(),
            old_fingerprint: fingerprint(&first),
            new_expired_at: None,
        }),
    )
    .unwrap();
    assert_eq!(resolved(&tls, "site.example.com"), Some(leaf_der(&second)));
    assert_eq!(tls.certificate_count(&address), 2, "default and second");
    apply(
        &mut state,
        &mut tls,
        RequestType::RemoveCertificate(RemoveCertificate {
            address: address.into(),
            fingerprint: fingerprint(&second),
        }),
    )
    .unwrap();
    assert_eq!(resolved(&tls, "site.example.com"), Some(leaf_der(&default)));

    // A key that does not match: refused, the store unchanged.
    let mismatched = CertificateAndKey {
        key: first.key.clone(),
        ..second.clone()
    };
    let order = add(&mismatched);
    assert!(tls.apply(&order, &state).is_err());
    assert_eq!(tls.certificate_count(&address), 1);
}

#[test]
fn a_failed_listener_order_leaves_no_tls_entry_behind() {
    use sozu_command_lib::command::request::RequestType;
    use sozu_command_lib::state::ConfigState;

    use super::TlsListeners;

    let default = self_signed(&["default.example.com"]);
    let mut config = listener();
    config.certificate = Some(default.certificate.clone());
    config.key = Some(default.key.clone());
    let address: std::net::SocketAddr = "127.0.0.1:8443".parse().unwrap();
    let state = ConfigState::new();
    let mut tls = TlsListeners::new();
    let add = RequestType::AddHttpsListener(config);
    // Added, then a later step failed: undone, nothing left.
    let undo = tls.before(&add).expect("a listener order");
    tls.apply(&add, &state).unwrap();
    assert!(tls.get(&address).is_some());
    tls.undo(undo);
    assert!(tls.get(&address).is_none());
    // Kept entries come back as they were.
    tls.apply(&add, &state).unwrap();
    let kept = tls.get(&address).unwrap().config.clone();
    let undo = tls.before(&add).unwrap();
    tls.apply(&add, &state).unwrap();
    assert!(!Arc::ptr_eq(&kept, &tls.get(&address).unwrap().config));
    tls.undo(undo);
    assert!(Arc::ptr_eq(&kept, &tls.get(&address).unwrap().config));
    // Orders without a listener entry keep nothing.
    assert!(tls
        .before(&RequestType::Status(Default::default()))
        .is_none());
}

/// Whatever a client sends, before or after a real ClientHello, the
/// transport answers with an error or waits for more, and never panics.
#[test]
fn arbitrary_bytes_never_panic_the_transport() {
    use std::sync::OnceLock;
    static CONFIG: OnceLock<Arc<rustls::ServerConfig>> = OnceLock::new();
    static HELLO: OnceLock<Vec<u8>> = OnceLock::new();
    fn config() -> Arc<rustls::ServerConfig> {
        CONFIG
            .get_or_init(|| {
                let store = Arc::new(CertificateStore::new());
                store.add(load(&self_signed(&["a.example.com"])).unwrap());
                TlsPolicy::from_listener(&listener())
                    .unwrap()
                    .server_config(store)
                    .unwrap()
            })
            .clone()
    }
    fn hello() -> &'static [u8] {
        HELLO.get_or_init(|| {
            let mut client = client("a.example.com");
            let mut out = Vec::new();
            client.write_tls(&mut out).unwrap();
            out
        })
    }
    fn property(after_hello: bool, chunks: Vec<Vec<u8>>) -> bool {
        let mut server = TlsTransport::new(config()).unwrap();
        if after_hello {
            server.receive(hello()).expect("a real ClientHello");
        }
        let mut out = vec![0u8; 32 * 1024];
        for chunk in chunks {
            let failed = server.receive(&chunk).is_err();
            server.poll_transmit(&mut out);
            let _ = server.read_plaintext(&mut out);
            if failed {
                break;
            }
        }
        server.peer_eof();
        let _ = server.read_plaintext(&mut out);
        true
    }
    quickcheck::QuickCheck::new()
        .tests(200)
        .quickcheck(property as fn(bool, Vec<Vec<u8>>) -> bool);
}
