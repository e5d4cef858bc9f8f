//! Certificates and HTTPS listeners in the control plane, through the real
//! binary: added, replaced, listed and removed with the CLI and with Sōzu's
//! orders on the socket; a bad certificate refused with its reason and no
//! trace; kept by `state save/load` and by `sozu upgrade`; loaded from
//! config.toml. These tests check the state the master and every worker
//! keep; serving HTTPS is `https.rs`'s.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sozu_command_lib::certificate::fingerprint_of_pem;
use sozu_command_lib::command::request::RequestType;
use sozu_command_lib::command::{AddCertificate, CertificateAndKey, ResponseStatus};
use sozu_e2e::ports::free_v4;
use sozu_e2e::{Sozu, SozuConfig};

/// A self-signed certificate for `names`, written as `<stem>.pem` and
/// `<stem>.key` in `dir`; returns the two paths and the fingerprint.
fn certificate(dir: &Path, stem: &str, names: &[&str]) -> (PathBuf, PathBuf, String) {
    let key = rcgen::KeyPair::generate().expect("key");
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let cert = rcgen::CertificateParams::new(names)
        .expect("params")
        .self_signed(&key)
        .expect("certificate");
    let pem = dir.join(format!("{stem}.pem"));
    let key_path = dir.join(format!("{stem}.key"));
    std::fs::write(&pem, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let fingerprint = fingerprint_of_pem("test", &cert.pem()).unwrap().to_string();
    (pem, key_path, fingerprint)
}

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// A master with one HTTPS listener (from config.toml) and `workers`
/// workers; the files of `a.example.com` and `b.example.com` in its dir.
struct Fixture {
    sozu: Sozu,
    listener: String,
    a: (PathBuf, PathBuf, String),
    b: (PathBuf, PathBuf, String),
}

fn fixture(workers: u32) -> Fixture {
    let dir = Sozu::temp_dir();
    let a = certificate(dir.path(), "a", &["a.example.com"]);
    let b = certificate(dir.path(), "b", &["b.example.com", "*.b.example.com"]);
    let listener = free_v4().to_string();
    let config = SozuConfig {
        worker_count: workers,
        extra: format!("\n[[listeners]]\nprotocol = \"https\"\naddress = \"{listener}\"\n"),
        ..SozuConfig::default()
    };
    let sozu = Sozu::start_in(dir, config);
    Fixture {
        sozu,
        listener,
        a,
        b,
    }
}

/// The fingerprints `certificate list --json` shows.
fn listed(sozu: &Sozu) -> Vec<String> {
    let out = sozu.cli_ok(&["--json", "certificate", "list"]);
    let json = out.json();
    let certs = &json["content"]["certificates_with_fingerprints"]["certs"];
    let Some(map) = certs.as_object() else {
        return Vec::new();
    };
    for certificate in map.values() {
        assert_eq!(certificate["key"], "", "an answer never carries a key");
    }
    map.keys().cloned().collect()
}

/// The fingerprints every worker holds, from `--query-workers`.
fn listed_by_workers(sozu: &Sozu, workers: usize) -> Vec<Vec<String>> {
    let out = sozu.cli_ok(&["--json", "certificate", "list", "--query-workers"]);
    let json = out.json();
    let map = json["content"]["worker_responses"]["map"]
        .as_object()
        .unwrap_or_else(|| panic!("worker answers: {json}"))
        .clone();
    assert_eq!(map.len(), workers, "{json}");
    map.values()
        .map(|answer| {
            let mut fingerprints: Vec<String> = answer["content_type"]["certificates_by_address"]
                ["certificates"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|by_address| {
                    by_address["certificate_summaries"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                })
                .filter_map(|s| s["fingerprint"].as_str().map(str::to_owned))
                .collect();
            fingerprints.sort();
            fingerprints.dedup();
            fingerprints
        })
        .collect()
}

fn assert_fails(out: &sozu_e2e::CliOutput, needle: &str) {
    assert_eq!(
        out.code, 1,
        "stdout: {}\nstderr: {}",
        out.stdout, out.stderr
    );
    assert!(
        out.stderr.contains(needle),
        "stderr should name {needle:?}: {}",
        out.stderr
    );
}

#[test]
fn certificates_are_added_replaced_listed_and_removed_through_the_cli() {
    let f = fixture(2);
    let (a_pem, a_key, a_fp) = &f.a;
    let (b_pem, b_key, b_fp) = &f.b;
    let l = f.listener.as_str();
    assert!(listed(&f.sozu).is_empty());

    f.sozu.cli_ok(&[
        "certificate",
        "add",
        "-a",
        l,
        "--certificate",
        path(a_pem),
        "--key",
        path(a_key),
    ]);
    assert_eq!(listed(&f.sozu), vec![a_fp.clone()]);
    let table = f.sozu.cli_ok(&["certificate", "list"]).stdout;
    assert!(
        table.contains(a_fp.as_str()) && table.contains("a.example.com"),
        "{table}"
    );
    assert_eq!(
        listed_by_workers(&f.sozu, 2),
        [vec![a_fp.clone()], vec![a_fp.clone()]]
    );

    // Filters: by a name the wildcard covers, by fingerprint.
    f.sozu.cli_ok(&[
        "certificate",
        "add",
        "-a",
        l,
        "--certificate",
        path(b_pem),
        "--key",
        path(b_key),
    ]);
    let by_domain = f
        .sozu
        .cli_ok(&[
            "--json",
            "certificate",
            "list",
            "--domain",
            "x.b.example.com",
        ])
        .json();
    let certs = by_domain["content"]["certificates_with_fingerprints"]["certs"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    assert_eq!(certs.keys().collect::<Vec<_>>(), [b_fp]);
    f.sozu
        .cli_ok(&["certificate", "remove", "-a", l, "--fingerprint", b_fp]);

    // Replace a by b, named by a's fingerprint, then remove b by its file.
    f.sozu.cli_ok(&[
        "certificate",
        "replace",
        "-a",
        l,
        "--fingerprint",
        a_fp,
        "--new-certificate",
        path(b_pem),
        "--new-key",
        path(b_key),
    ]);
    assert_eq!(listed(&f.sozu), vec![b_fp.clone()]);
    assert_eq!(
        listed_by_workers(&f.sozu, 2),
        [vec![b_fp.clone()], vec![b_fp.clone()]]
    );
    f.sozu.cli_ok(&[
        "certificate",
        "remove",
        "-a",
        l,
        "--certificate",
        path(b_pem),
    ]);
    assert!(listed(&f.sozu).is_empty());
    assert_eq!(
        listed_by_workers(&f.sozu, 2),
        [Vec::<String>::new(), Vec::new()]
    );

    // Removing what is not there names the fingerprint.
    let out = f
        .sozu
        .cli(&["certificate", "remove", "-a", l, "--fingerprint", b_fp]);
    assert_fails(&out, b_fp);
    f.sozu.cli_ok(&["state", "check"]);
}

#[test]
fn a_bad_certificate_is_refused_with_its_reason_and_the_state_is_unchanged() {
    let f = fixture(2);
    let (a_pem, a_key, a_fp) = &f.a;
    let (_, b_key, _) = &f.b;
    let l = f.listener.as_str();
    f.sozu.cli_ok(&[
        "certificate",
        "add",
        "-a",
        l,
        "--certificate",
        path(a_pem),
        "--key",
        path(a_key),
    ]);

    // a's certificate with b's key.
    let out = f.sozu.cli(&[
        "certificate",
        "add",
        "-a",
        l,
        "--certificate",
        path(a_pem),
        "--key",
        path(b_key),
    ]);
    assert_fails(
        &out,
        "certificate.key: does not match the certificate's public key",
    );
    // Not PEM at all.
    let garbage = f.sozu.dir().join("garbage.pem");
    std::fs::write(&garbage, "this is not a certificate\n").unwrap();
    let out = f.sozu.cli(&[
        "certificate",
        "add",
        "-a",
        l,
        "--certificate",
        path(&garbage),
        "--key",
        path(a_key),
    ]);
    assert_fails(&out, "certificate.certificate: not a PEM CERTIFICATE");
    // No HTTPS listener there.
    let elsewhere = free_v4().to_string();
    let out = f.sozu.cli(&[
        "certificate",
        "add",
        "-a",
        &elsewhere,
        "--certificate",
        path(a_pem),
        "--key",
        path(a_key),
    ]);
    assert_fails(&out, &format!("no HTTPS listener at {elsewhere}"));
    // The same refusal for Sōzu's order on the socket.
    let pem = std::fs::read_to_string(a_pem).unwrap();
    let wrong_key = std::fs::read_to_string(b_key).unwrap();
    let response = f
        .sozu
        .request(RequestType::AddCertificate(AddCertificate {
            address: l.parse::<std::net::SocketAddr>().unwrap().into(),
            certificate: CertificateAndKey {
                certificate: pem,
                key: wrong_key,
                ..Default::default()
            },
            expired_at: None,
        }))
        .expect("an answer");
    assert_eq!(
        response.status(),
        ResponseStatus::Failure,
        "{}",
        response.message
    );
    assert!(
        response.message.contains("certificate.key: does not match"),
        "{}",
        response.message
    );

    assert_eq!(listed(&f.sozu), vec![a_fp.clone()], "only the good one");
    assert_eq!(
        listed_by_workers(&f.sozu, 2),
        [vec![a_fp.clone()], vec![a_fp.clone()]]
    );
    f.sozu.cli_ok(&["state", "check"]);
}

#[test]
fn certificates_are_kept_by_state_save_load_and_by_upgrade() {
    let f = fixture(1);
    let (a_pem, a_key, a_fp) = &f.a;
    let l = f.listener.as_str();
    f.sozu.cli_ok(&[
        "certificate",
        "add",
        "-a",
        l,
        "--certificate",
        path(a_pem),
        "--key",
        path(a_key),
    ]);
    let saved = f.sozu.dir().join("saved.state");
    f.sozu.cli_ok(&["state", "save", "-f", path(&saved)]);
    f.sozu
        .cli_ok(&["certificate", "remove", "-a", l, "--fingerprint", a_fp]);
    assert!(listed(&f.sozu).is_empty());
    f.sozu.cli_ok(&["state", "load", "-f", path(&saved)]);
    assert_eq!(listed(&f.sozu), vec![a_fp.clone()]);

    let old_pids = f.sozu.worker_pids();
    f.sozu.cli_ok(&["upgrade"]);
    f.sozu
        .wait_ready(Duration::from_secs(20))
        .expect("ready after the upgrade");
    f.sozu.wait_new_workers(&old_pids, Duration::from_secs(20));
    assert_eq!(
        listed(&f.sozu),
        vec![a_fp.clone()],
        "the new master's state"
    );
    assert_eq!(
        listed_by_workers(&f.sozu, 1),
        [vec![a_fp.clone()]],
        "the new worker's state"
    );
    f.sozu.cli_ok(&["state", "check"]);
}

#[test]
fn config_toml_with_an_https_listener_and_certificate_files_loads() {
    let dir = Sozu::temp_dir();
    let (default_pem, default_key, _) = certificate(dir.path(), "default", &["default.test"]);
    let (site_pem, site_key, site_fp) = certificate(dir.path(), "site", &["www.example.com"]);
    let listener = free_v4().to_string();
    let backend = free_v4().to_string();
    let extra = format!(
        r#"
[[listeners]]
protocol = "https"
address = "{listener}"
certificate = "{}"
key = "{}"
tls_versions = ["TLS_V12", "TLS_V13"]
cipher_list = ["TLS_AES_128_GCM_SHA256", "ECDHE-ECDSA-AES128-GCM-SHA256"]

[clusters.site]
protocol = "http"
frontends = [{{ address = "{listener}", hostname = "www.example.com", certificate = "{}", key = "{}" }}]
backends = [{{ address = "{backend}" }}]
"#,
        path(&default_pem),
        path(&default_key),
        path(&site_pem),
        path(&site_key),
    );
    let config = SozuConfig {
        extra,
        ..SozuConfig::default()
    };
    let sozu = Sozu::start_in(dir, config);
    let listeners = sozu.cli_ok(&["--json", "https", "listener", "list"]).json();
    let https = &listeners["content"]["listeners_list"]["https_listeners"];
    assert!(https.get(&listener).is_some(), "{listeners}");
    // The table says it is active, and it is: the address accepts.
    let table = sozu.cli_ok(&["https", "listener", "list"]).stdout;
    let row = table
        .lines()
        .find(|l| l.contains(&listener))
        .unwrap_or_default();
    assert!(
        row.split_whitespace().any(|c| c == "yes") && !row.contains("not served"),
        "{table}"
    );
    std::net::TcpStream::connect_timeout(
        &listener.parse().expect("listener address"),
        Duration::from_secs(5),
    )
    .expect("an active HTTPS listener accepts");
    assert_eq!(listed(&sozu), vec![site_fp.clone()]);
    assert_eq!(
        listed_by_workers(&sozu, 2),
        [vec![site_fp.clone()], vec![site_fp.clone()]]
    );
    let frontends = sozu.cli_ok(&["--json", "https", "frontend", "list"]).json();
    assert_eq!(
        frontends["content"]["frontend_list"]["https_frontends"][0]["hostname"], "www.example.com",
        "{frontends}"
    );
    assert!(
        !sozu.log().contains("not served yet"),
        "the log still says HTTPS is not served"
    );

    // The file's frontend certificate renewed, then `sozu reload`: the
    // diff replaces it on the master and on every worker.
    let (renewed_pem, renewed_key, renewed_fp) =
        certificate(sozu.dir(), "renewed", &["www.example.com"]);
    let text = std::fs::read_to_string(sozu.config_path())
        .unwrap()
        .replace(path(&site_pem), path(&renewed_pem))
        .replace(path(&site_key), path(&renewed_key));
    std::fs::write(sozu.config_path(), text).unwrap();
    let preview = sozu.cli_ok(&["reload", "--dry-run"]).stdout;
    assert!(
        preview.contains(&format!("- certificate {site_fp}"))
            && preview.contains(&format!("+ certificate {renewed_fp}")),
        "{preview}"
    );
    sozu.cli_ok(&["reload"]);
    assert_eq!(listed(&sozu), vec![renewed_fp.clone()]);
    assert_eq!(
        listed_by_workers(&sozu, 2),
        [vec![renewed_fp.clone()], vec![renewed_fp]]
    );
    sozu.cli_ok(&["state", "check"]);
}

#[test]
fn tls_knobs_rustls_cannot_honour_stop_the_start_naming_the_value() {
    let dir = Sozu::temp_dir();
    let listener = free_v4().to_string();
    let text = format!(
        "command_socket = \"{}\"\nworker_count = 1\n\n[[listeners]]\nprotocol = \"https\"\naddress = \"{listener}\"\ntls_versions = [\"TLS_V10\"]\n",
        dir.path().join("sozu.sock").display()
    );
    let config_path = dir.path().join("config.toml");
    std::fs::write(&config_path, text).unwrap();
    let mut child = std::process::Command::new(sozu_e2e::binary::sozu_binary())
        .args(["start", "-c", path(&config_path)])
        .current_dir(dir.path())
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("sozu start runs");
    let exited =
        sozu_e2e::wait::poll_until(Duration::from_secs(20), || child.try_wait().ok().flatten());
    if exited.is_none() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("sozu start kept running with TLS_V10");
    }
    let out = child.wait_with_output().expect("its output");
    assert!(!out.status.success());
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        printed.contains("versions: \"TLS_V1_0\" cannot be used"),
        "{printed}"
    );
}
