//! HTTPS listeners, frontends and certificates in the state.

use crate::certificate::Fingerprint;
use crate::command::request::RequestType;
use crate::command::{
    AddCertificate, CertificateAndKey, HttpsListenerConfig, ListenerType, QueryCertificatesFilters,
    RemoveCertificate, ReplaceCertificate, UpdateHttpsListenerConfig,
};
use crate::state::tests::{
    add_cluster, apply_all, assert_refused, http_frontend, listener_order, order, wire,
};
use crate::state::ConfigState;

fn certificate(names: &[&str]) -> CertificateAndKey {
    let key = rcgen::KeyPair::generate().expect("key");
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let cert = rcgen::CertificateParams::new(names)
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    CertificateAndKey {
        certificate: cert.pem(),
        key: key.serialize_pem(),
        ..Default::default()
    }
}

fn fingerprint(certificate: &CertificateAndKey) -> Fingerprint {
    crate::certificate::decode(certificate)
        .expect("decodes")
        .fingerprint
}

fn add_https_listener(address: &str) -> crate::command::Request {
    order(RequestType::AddHttpsListener(HttpsListenerConfig {
        address: wire(address),
        sticky_name: "SOZUBALANCEID".to_owned(),
        ..Default::default()
    }))
}

fn add_certificate(address: &str, certificate: &CertificateAndKey) -> crate::command::Request {
    order(RequestType::AddCertificate(AddCertificate {
        address: wire(address),
        certificate: certificate.clone(),
        expired_at: None,
    }))
}

#[test]
fn certificates_are_kept_by_listener_and_fingerprint() {
    let www = certificate(&["www.example.com"]);
    let api = certificate(&["api.example.com", "*.api.example.com"]);
    let mut state = apply_all(&[
        add_https_listener("127.0.0.1:8443"),
        add_certificate("127.0.0.1:8443", &www),
        add_certificate("127.0.0.1:8443", &api),
    ]);
    let listed: Vec<(Fingerprint, Vec<String>)> = state
        .certificates()
        .map(|(_, f, names, _)| (f, names.to_vec()))
        .collect();
    assert_eq!(listed.len(), 2);
    assert!(listed.contains(&(fingerprint(&www), vec!["www.example.com".to_owned()])));
    // The same certificate again: accepted, nothing changes (as in Sōzu).
    let before = state.clone();
    state
        .dispatch(&add_certificate("127.0.0.1:8443", &www))
        .unwrap();
    assert_eq!(state, before);

    // Queries: by domain (wildcards cover one label), by fingerprint; no key.
    let query = |domain: Option<&str>, fingerprint: Option<String>| {
        state
            .certificates_with_fingerprints(&QueryCertificatesFilters {
                domain: domain.map(str::to_owned),
                fingerprint,
            })
            .certs
    };
    assert_eq!(query(None, None).len(), 2);
    assert!(query(None, None).values().all(|c| c.key.is_empty()));
    let by_domain = query(Some("v1.api.example.com"), None);
    assert_eq!(
        by_domain.keys().collect::<Vec<_>>(),
        [&fingerprint(&api).to_string()]
    );
    assert!(query(Some("example.com"), None).is_empty());
    assert_eq!(query(None, Some(fingerprint(&www).to_string())).len(), 1);
    assert!(query(None, Some("nope".to_owned())).is_empty());
    let by_address = state.certificates_by_address(&QueryCertificatesFilters::default());
    assert_eq!(by_address.certificates.len(), 1);
    assert_eq!(by_address.certificates[0].certificate_summaries.len(), 3);
}

#[test]
fn a_bad_certificate_is_refused_naming_the_field_and_changes_nothing() {
    let good = certificate(&["a.example.com"]);
    let mut state = apply_all(&[add_https_listener("127.0.0.1:8443")]);
    let garbage = CertificateAndKey {
        certificate: "not a certificate".to_owned(),
        ..good.clone()
    };
    assert_refused(
        &mut state,
        add_certificate("127.0.0.1:8443", &garbage),
        &["certificate.certificate", "PEM"],
    );
    let no_key = CertificateAndKey {
        key: "not a key".to_owned(),
        ..good.clone()
    };
    assert_refused(
        &mut state,
        add_certificate("127.0.0.1:8443", &no_key),
        &["certificate.key"],
    );
    assert_refused(
        &mut state,
        add_certificate("127.0.0.1:9443", &good),
        &["no HTTPS listener at 127.0.0.1:9443"],
    );
    assert_eq!(state.certificates().count(), 0);
}

#[test]
fn replace_and_remove_name_the_fingerprint() {
    let old = certificate(&["a.example.com"]);
    let new = certificate(&["a.example.com"]);
    let mut state = apply_all(&[
        add_https_listener("127.0.0.1:8443"),
        add_certificate("127.0.0.1:8443", &old),
    ]);
    let replace = |old_fingerprint: String| {
        order(RequestType::ReplaceCertificate(ReplaceCertificate {
            address: wire("127.0.0.1:8443"),
            new_certificate: new.clone(),
            old_fingerprint,
            new_expired_at: None,
        }))
    };
    assert_refused(
        &mut state,
        replace("abc".to_owned()),
        &["old_fingerprint", "64 hexadecimal digits"],
    );
    assert_refused(
        &mut state,
        replace(fingerprint(&new).to_string()),
        &["old_fingerprint", &fingerprint(&new).to_string()],
    );
    state
        .dispatch(&replace(fingerprint(&old).to_string()))
        .unwrap();
    let now: Vec<Fingerprint> = state.certificates().map(|(_, f, _, _)| f).collect();
    assert_eq!(now, [fingerprint(&new)]);
    let remove = |fingerprint: String| {
        order(RequestType::RemoveCertificate(RemoveCertificate {
            address: wire("127.0.0.1:8443"),
            fingerprint,
        }))
    };
    assert_refused(
        &mut state,
        remove(fingerprint(&old).to_string()),
        &["fingerprint", "no certificate"],
    );
    state
        .dispatch(&remove(fingerprint(&new).to_string()))
        .unwrap();
    assert_eq!(state.certificates().count(), 0);
}

#[test]
fn removing_the_https_listener_removes_its_frontends_and_certificates() {
    let cert = certificate(&["a.example.com"]);
    let mut state = apply_all(&[
        add_https_listener("127.0.0.1:8443"),
        add_cluster("web"),
        add_certificate("127.0.0.1:8443", &cert),
        order(RequestType::AddHttpsFrontend(http_frontend(
            Some("web"),
            "127.0.0.1:8443",
            "a.example.com",
            "/",
        ))),
    ]);
    assert_eq!(state.https_frontends().count(), 1);
    state
        .dispatch(&listener_order(
            ListenerType::Https,
            "127.0.0.1:8443",
            "remove",
        ))
        .unwrap();
    assert_eq!(state, apply_all(&[add_cluster("web")]));
}

#[test]
fn https_state_survives_generate_requests_and_diffs() {
    let a = certificate(&["a.example.com"]);
    let b = certificate(&["b.example.com"]);
    let base = [
        add_https_listener("127.0.0.1:8443"),
        add_cluster("web"),
        add_certificate("127.0.0.1:8443", &a),
        order(RequestType::AddHttpsFrontend(http_frontend(
            Some("web"),
            "127.0.0.1:8443",
            "a.example.com",
            "/",
        ))),
        listener_order(ListenerType::Https, "127.0.0.1:8443", "activate"),
    ];
    let state = apply_all(&base);
    let rebuilt = ConfigState::from_requests(&state.generate_requests()).expect("replays");
    assert_eq!(rebuilt, state);

    // Another certificate, a patched listener, and a replaced one.
    let mut changed = state.clone();
    changed
        .dispatch(&add_certificate("127.0.0.1:8443", &b))
        .unwrap();
    changed
        .dispatch(&order(RequestType::UpdateHttpsListener(
            UpdateHttpsListenerConfig {
                address: wire("127.0.0.1:8443"),
                front_timeout: Some(5),
                ..Default::default()
            },
        )))
        .unwrap();
    let mut patched = state.clone();
    for request in state.diff(&changed) {
        patched
            .dispatch(&request)
            .expect("every diff order applies");
    }
    assert_eq!(patched, changed);
    let mut back = changed.clone();
    for request in changed.diff(&state) {
        back.dispatch(&request).expect("every diff order applies");
    }
    assert_eq!(back, state);
}

#[test]
fn certificate_orders_are_undone_exactly() {
    let old = certificate(&["a.example.com"]);
    let new = certificate(&["a.example.com"]);
    let mut state = apply_all(&[add_https_listener("127.0.0.1:8443")]);
    let orders = [
        add_certificate("127.0.0.1:8443", &old),
        order(RequestType::ReplaceCertificate(ReplaceCertificate {
            address: wire("127.0.0.1:8443"),
            new_certificate: new.clone(),
            old_fingerprint: fingerprint(&old).to_string(),
            new_expired_at: None,
        })),
        order(RequestType::RemoveCertificate(RemoveCertificate {
            address: wire("127.0.0.1:8443"),
            fingerprint: fingerprint(&new).to_string(),
        })),
    ];
    for request in &orders {
        let before = state.clone();
        let undo = state.undo_point(request.request_type.as_ref().unwrap());
        state.dispatch(request).expect("accepted");
        let after = state.clone();
        state.undo(undo);
        assert_eq!(state, before, "undo of {request:?}");
        state = after;
    }
    assert_eq!(state.certificates().count(), 0);
}
